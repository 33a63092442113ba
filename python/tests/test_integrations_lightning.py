"""VantixLoader inside PyTorch Lightning: CPU, 2 processes, gloo; the loader is built before
``fit`` and passed to it, as users write it (``integration_apps/lightning_fit.py``).

For ``ddp`` (the script re-executed for rank 1), ``ddp_spawn`` (the loader pickled into spawned
processes) and ``ddp_fork`` (inherited through fork): per epoch the ranks are disjoint and
together complete, take equal step counts, see a new order each epoch, and
``trainer.current_epoch`` equals the loader's epoch. A mid-epoch checkpoint resumed with
``fit(ckpt_path=...)`` serves exactly the batches the uninterrupted run saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_image_folder

import vantix

pytest.importorskip("lightning")

N, BATCH, EPOCHS = 30, 4, 3
APP = Path(__file__).parent / "integration_apps" / "lightning_fit.py"


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = write_image_folder(tmp_path_factory.mktemp("src") / "train", N, seed=12)
    out = tmp_path_factory.mktemp("out") / "ds.vtx"
    vantix.pack(root, out, size=16)
    return out


def _fit(packed, out: Path, strategy: str, *extra: str) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), PYTHONWARNINGS="ignore")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK"):
        env.pop(k, None)
    cmd = [sys.executable, str(APP), "--data", str(packed), "--out", str(out)]
    cmd += ["--strategy", strategy, "--epochs", str(EPOCHS), "--batch-size", str(BATCH), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, f"{strategy} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def _by_epoch(rank: dict) -> dict[int, list[dict]]:
    epochs: dict[int, list[dict]] = {}
    for step in rank["steps"]:
        epochs.setdefault(step["epoch"], []).append(step)
    return epochs


def _check_epochs(ranks: list[dict], epochs: range) -> None:
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert [(r["loader_rank"], r["loader_world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    per_rank = [_by_epoch(r) for r in ranks]
    orders = []
    for e in epochs:
        steps = [p[e] for p in per_rank]
        assert len(steps[0]) == len(steps[1]) == -(-(N // 2) // BATCH), "equal step counts"
        for s in steps[0] + steps[1]:
            assert s["loader_epoch"] == s["epoch"] == e, "trainer.current_epoch == loader epoch"
        seen = [[i for s in rank_steps for i in s["indices"]] for rank_steps in steps]
        assert not set(seen[0]) & set(seen[1]), f"epoch {e}: ranks overlap"
        assert sorted(seen[0] + seen[1]) == list(range(N)), f"epoch {e}: not complete"
        orders.append(seen[0])
    assert len({tuple(o) for o in orders}) == len(orders), "a new order every epoch"


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "ddp_fork"])
def test_lightning_ddp_loader_passed_to_fit(packed, tmp_path, strategy):
    ranks = _fit(packed, tmp_path / strategy, strategy)
    _check_epochs(ranks, range(EPOCHS))


def test_lightning_mid_epoch_checkpoint_resumes_exactly(packed, tmp_path):
    full = _fit(packed, tmp_path / "full", "ddp", "--save-every", "6")
    ckpts = sorted((tmp_path / "full").glob("*step=6.ckpt"))
    assert len(ckpts) == 1, list((tmp_path / "full").iterdir())  # epoch 1, 2 of its 4 batches done
    resumed = _fit(packed, tmp_path / "resumed", "ddp", "--ckpt", str(ckpts[0]))
    for r in range(2):
        want = [(s["epoch"], s["indices"]) for s in full[r]["steps"] if s["global_step"] >= 6]
        got = [(s["epoch"], s["indices"]) for s in resumed[r]["steps"]]
        print(f"rank {r}: resumed run took {len(got)} steps, the rest of the full run {len(want)}")
        assert got == want
