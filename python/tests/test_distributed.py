"""DDP partitioning across real processes, and exact mid-epoch resume."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import write_image_folder

import vantix
from vantix import VantixDataset, VantixError, VantixLoader

N = 61  # prime: never splits evenly over 2 or 3 ranks
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = write_image_folder(tmp_path_factory.mktemp("src") / "train", N, seed=5)
    out = tmp_path_factory.mktemp("out") / "ds.vtx"
    vantix.pack(root, out, size=16)
    return out


def _batches(it):
    return [(x.numpy().copy(), y.numpy().copy()) for x, y in it]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


# ---------------------------------------------------------------------------------------
# Partition


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("remainder", ["pad", "drop"])
def test_ranks_split_each_epoch_evenly(packed, world_size, remainder):
    loaders = [
        VantixLoader(packed, batch_size=4, rank=r, world_size=world_size, ddp_remainder=remainder)
        for r in range(world_size)
    ]
    per_rank = -(-N // world_size) if remainder == "pad" else N // world_size
    assert len({len(lo) for lo in loaders}) == 1
    assert len(loaders[0]) == -(-per_rank // 4)
    previous = None
    for epoch in range(3):
        parts = [lo.epoch_indices(epoch) for lo in loaders]
        assert all(len(p) == per_rank for p in parts)
        flat = np.concatenate(parts)
        unique = set(flat.tolist())
        if remainder == "pad":
            assert unique == set(range(N))  # everything, a few padded twice
            assert len(flat) - len(unique) == per_rank * world_size - N
        else:
            assert len(unique) == len(flat) == per_rank * world_size  # nothing twice
        order = np.stack(parts, axis=1).reshape(-1)  # interleaved = the epoch's permutation
        assert previous is None or not np.array_equal(order, previous)
        previous = order


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, path, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        loader = VantixLoader(path, batch_size=5, shuffle=True, seed=3)  # rank/world from dist
        ds = VantixDataset(path)
        seen = []
        for epoch in range(3):
            expected = loader.epoch_indices(epoch)
            batches = 0
            images = []
            for x, _ in loader:
                images.append(x.numpy().copy())
                batches += 1
            got = np.concatenate(images)
            want = np.stack([ds[int(i)][0] for i in expected])
            assert np.array_equal(got, want), f"rank {rank} epoch {epoch}: wrong images"
            seen.append({"indices": expected.tolist(), "batches": batches, "len": len(loader)})
        gathered = [None] * world_size
        dist.all_gather_object(gathered, {"rank": loader.rank, "world": loader.world_size})
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump({"seen": seen, "gathered": gathered}, f)
    finally:
        dist.destroy_process_group()


def test_real_ddp_processes_see_disjoint_shares(packed, tmp_path):
    """Two gloo processes: rank/world_size from torch.distributed, 3 epochs each."""
    world = 2
    mp.spawn(_ddp_worker, args=(world, _free_port(), str(packed), str(tmp_path)), nprocs=world)
    results = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(world)]
    assert results[0]["gathered"] == [{"rank": 0, "world": 2}, {"rank": 1, "world": 2}]
    orders = []
    for epoch in range(3):
        parts = [r["seen"][epoch]["indices"] for r in results]
        batches = {r["seen"][epoch]["batches"] for r in results}
        lens = {r["seen"][epoch]["len"] for r in results}
        assert batches == lens == {7}  # ceil(ceil(61 / 2) / 5) on every rank
        a, b = set(parts[0]), set(parts[1])
        assert len(parts[0]) == len(parts[1]) == 31
        assert a | b == set(range(N))
        assert len(a & b) == 1  # the documented padding: 62 places for 61 samples
        orders.append(parts[0] + parts[1])
    assert orders[0] != orders[1] != orders[2]


def test_ddp_example_trains_with_torchrun(packed, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun comes with torch"
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "examples" / "ddp_train.py"),
        "--data",
        str(packed),
        "--epochs",
        "2",
        "--batch-size",
        "8",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr[-3000:]
    assert "epoch 0: 62 samples on 2 ranks" in proc.stdout, log
    assert "epoch 1: 62 samples on 2 ranks" in proc.stdout, log


# ---------------------------------------------------------------------------------------
# Resume


def _interrupted(path, stop_after, epochs_after=1, **kw):
    """Run until `stop_after` batches into epoch 1, return (state, uninterrupted reference)."""
    reference = VantixLoader(path, **kw)
    ref = [_batches(reference) for _ in range(2 + epochs_after)]
    run = VantixLoader(path, **kw)
    _batches(run)  # epoch 0
    it = iter(run)
    for _ in range(stop_after):
        next(it)
    state = run.state_dict()
    del it
    return state, ref


@pytest.mark.parametrize("shuffle", [True, False])
def test_resume_mid_epoch_is_byte_identical(packed, shuffle):
    kw = dict(batch_size=4, shuffle=shuffle, seed=9)
    state, ref = _interrupted(packed, stop_after=6, **kw)
    assert state["epoch"] == 1 and state["samples_seen"] == 24
    resumed = VantixLoader(packed, **kw)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # survives serialisation
    assert len(iter(resumed)) == len(ref[1]) - 6
    resumed.load_state_dict(state)
    _assert_same(_batches(resumed), ref[1][6:])
    _assert_same(_batches(resumed), ref[2])  # and the epochs after it
    assert resumed.state_dict()["epoch"] == 3


def test_resume_in_a_new_process(packed, tmp_path):
    kw = dict(batch_size=5, shuffle=True, seed=1)
    state, ref = _interrupted(packed, stop_after=3, **kw)
    script = f"""
import json, sys, numpy as np
from vantix import VantixLoader
loader = VantixLoader({str(packed)!r}, **{kw!r})
loader.load_state_dict(json.loads(sys.argv[1]))
out = []
for _ in range(2):
    for x, y in loader:
        out.append(np.concatenate([x.numpy().reshape(-1), y.numpy().astype(np.uint8)]))
np.save({str(tmp_path / "out.npy")!r}, np.concatenate(out))
"""
    subprocess.run([sys.executable, "-c", script, json.dumps(state)], check=True, timeout=120)
    want = np.concatenate(
        [np.concatenate([x.reshape(-1), y.astype(np.uint8)]) for x, y in ref[1][3:] + ref[2]]
    )
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), want)


def test_resume_one_rank_of_a_ddp_run(packed):
    kw = dict(batch_size=3, seed=4, rank=1, world_size=2)
    state, ref = _interrupted(packed, stop_after=4, **kw)
    assert state["samples_seen"] == 4 * 3 * 2
    resumed = VantixLoader(packed, **kw)
    resumed.load_state_dict(state)
    _assert_same(_batches(resumed), ref[1][4:])
    _assert_same(_batches(resumed), ref[2])


def test_state_at_an_epoch_boundary_resumes_at_the_next_epoch(packed):
    loader = VantixLoader(packed, batch_size=8)
    it = iter(loader)
    for _ in range(len(loader)):  # every batch taken, StopIteration not yet seen
        next(it)
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["samples_seen"] == 0
    fresh = VantixLoader(packed, batch_size=8)
    assert fresh.state_dict()["epoch"] == 0


def test_resume_with_another_world_size_sees_every_sample_once(packed):
    """2 ranks run 3 batches of epoch 0, then 3 ranks finish it (ddp_remainder='drop')."""
    seen = []
    states = []
    for rank in range(2):
        lo = VantixLoader(packed, batch_size=4, rank=rank, world_size=2, ddp_remainder="drop")
        lo.set_epoch(0)
        idx = lo.epoch_indices(0)
        it = iter(lo)
        for _ in range(3):
            next(it)
        seen.extend(idx[:12].tolist())
        states.append(lo.state_dict())
    assert states[0] == states[1]  # any rank's state serves all ranks
    for rank in range(3):
        lo = VantixLoader(packed, batch_size=4, rank=rank, world_size=3, ddp_remainder="drop")
        lo.load_state_dict(states[0])
        ds = lo.dataset
        rest = lo.epoch_indices(0, states[0]["samples_seen"])
        got = np.concatenate([x.numpy() for x, _ in lo])
        np.testing.assert_array_equal(got, np.stack([ds[int(i)][0] for i in rest]))
        seen.extend(rest.tolist())
    assert len(seen) == len(set(seen)) == 24 + (N - 24) // 3 * 3


def test_load_state_dict_rejects_another_permutation(packed):
    state = VantixLoader(packed, batch_size=4, seed=1).state_dict()
    with pytest.raises(VantixError, match="seed"):
        VantixLoader(packed, batch_size=4, seed=2).load_state_dict(state)
    with pytest.raises(VantixError, match="shuffle"):
        VantixLoader(packed, batch_size=4, seed=1, shuffle=False).load_state_dict(state)
    with pytest.raises(VantixError, match="state_dict"):
        VantixLoader(packed, batch_size=4).load_state_dict({"epoch": 1})


def test_rank_and_world_size_from_torchrun_environment(packed, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    lo = VantixLoader(packed, batch_size=4)
    assert (lo.rank, lo.world_size) == (1, 3)
    assert (VantixLoader(packed, rank=0, world_size=1).world_size) == 1
