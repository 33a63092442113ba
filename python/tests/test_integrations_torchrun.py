"""VantixLoader under torchrun (2 ranks, gloo, CPU): plain DDP with a peek on rank 0 only, and
Hugging Face Accelerate (disjoint ranks, the OneCycleLR recipe, exact resume through
``save_state`` / ``load_state``). The scripts are in ``integration_apps/torchrun_app.py``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_image_folder

import vantix

N = 30
APP = Path(__file__).parent / "integration_apps" / "torchrun_app.py"


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    if exe.exists():
        return [str(exe)]
    if shutil.which("torchrun"):
        return [shutil.which("torchrun")]  # type: ignore[list-item]
    return [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = write_image_folder(tmp_path_factory.mktemp("src") / "train", N, seed=21)
    out = tmp_path_factory.mktemp("out") / "ds.vtx"
    vantix.pack(root, out, size=16)
    return out


def _run(packed, out: Path, *args: str) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), PYTHONWARNINGS="ignore")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS"):
        env.pop(k, None)
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node=2", str(APP), *args]
    cmd += ["--data", str(packed), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_torchrun_peek_on_rank_0_keeps_ranks_on_one_permutation(packed, tmp_path):
    ranks = _run(packed, tmp_path, "peek")
    for e in range(2):
        a, b = ranks[0]["epochs"][e], ranks[1]["epochs"][e]
        assert len(a) == len(b) == N // 2
        assert not set(a) & set(b), f"epoch {e}: the ranks overlap"
        assert sorted(a + b) == list(range(N)), f"epoch {e}: samples never seen"
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]
    for r in ranks:
        want = max(1, r["cores"] // 2)  # usable cores / LOCAL_WORLD_SIZE
        print(
            f"rank {r['rank']}: {r['cores']} cores, LOCAL_WORLD_SIZE={r['local_world_size']}, "
            f"assembly threads {r['threads_seen']} (num_threads_used {r['num_threads_used']})"
        )
        assert r["local_world_size"] == 2
        assert r["num_threads_used"] == r["threads_seen"] == want


def _accelerate_steps(ranks: list[dict]) -> list[list[tuple]]:
    return [[(s["epoch"], tuple(s["indices"]), s["lr"]) for s in r["steps"]] for r in ranks]


def _one_cycle_as_accelerate_steps_it(
    optimizer_steps: int, processes: int, steps: int = 0
) -> list[float]:
    """The LR after each of `steps` optimizer steps of a OneCycleLR sized for
    `optimizer_steps * processes`, stepped `processes` times per optimizer step, as a prepared
    scheduler is (accelerate/scheduler.py: never past `total_steps`)."""
    import torch

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    total = optimizer_steps * processes
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total)
    out = []
    for _ in range(steps or optimizer_steps):
        opt.step()
        for _ in range(processes):
            if sched._step_count <= sched.total_steps:
                sched.step()
        out.append(sched.get_last_lr()[0])
    return out


def test_accelerate_disjoint_ranks_lr_recipe_and_exact_resume(packed, tmp_path):
    pytest.importorskip("accelerate")
    epochs, save_at = 3, 6
    state_dir = tmp_path / "state"
    full = _run(
        packed,
        tmp_path / "full",
        "accelerate",
        "--epochs",
        str(epochs),
        "--save-at",
        str(save_at),
        "--state-dir",
        str(state_dir),
    )
    per_rank_len = full[0]["len"]
    assert per_rank_len == -(-(N // 2) // 4)  # len(loader) is per rank: 4
    assert [(r["loader_rank"], r["loader_world_size"]) for r in full] == [(0, 2), (1, 2)]
    steps = _accelerate_steps(full)
    for e in range(epochs):
        seen = [[i for ep, idx, _ in rank if ep == e for i in idx] for rank in steps]
        assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(N))
    # The OneCycleLR recipe: the schedule spans the whole run (peak ~30% in, near its minimum
    # at the last step). Without "* num_processes" it would be over at half the run.
    lrs = [lr for _, _, lr in steps[0]]
    total = epochs * per_rank_len
    assert len(lrs) == total
    assert lrs == pytest.approx(_one_cycle_as_accelerate_steps_it(total, processes=2))
    peak = max(range(total), key=lambda i: lrs[i])  # recorded after the step: 1 step early
    assert abs(peak + 1 - 0.3 * total) <= 1.5, (peak, total)
    assert lrs[total // 2] > 0.5 * 0.1  # still high at half the run
    assert lrs[-1] < 0.01 * 0.1 and lrs[-1] <= lrs[-2]  # the end of the schedule at the end
    naive = _one_cycle_as_accelerate_steps_it(total // 2, processes=2, steps=total)
    # the pitfall the recipe avoids: that schedule is over (flat, low) for the second half
    assert len(set(naive[total // 2 :])) == 1 and naive[-1] < 0.05 * 0.1
    # Exact resume: a new run loads the state saved after `save_at` steps and takes exactly
    # the steps (batches and learning rates) the uninterrupted run took after it.
    resumed = _run(
        packed,
        tmp_path / "resumed",
        "accelerate",
        "--epochs",
        str(epochs),
        "--resume",
        str(state_dir),
    )
    for r, (got, want) in enumerate(zip(_accelerate_steps(resumed), steps)):
        print(f"rank {r}: resumed {len(got)} steps, the full run had {len(want) - save_at} left")
        assert [(e, i) for e, i, _ in got] == [(e, i) for e, i, _ in want[save_at:]]
        assert [lr for *_, lr in got] == pytest.approx([lr for *_, lr in want[save_at:]])
