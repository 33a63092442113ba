"""What training stacks rely on, in one process or a few: rank and world size resolved when a
pass starts (never guessed), the epoch rule (a peek never shifts the permutation), the sampler
hook Lightning and Accelerate call, pickling, fork safety, shared threads, and iterators used
from several threads. Lightning and torchrun runs are in ``test_integrations_lightning.py`` and
``test_integrations_torchrun.py``."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from conftest import prefetch_threads_after_join, thread_names, write_image_folder

import vantix
from vantix import VantixError, VantixLoader

N = 40
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = write_image_folder(tmp_path_factory.mktemp("src") / "train", N, seed=31)
    out = tmp_path_factory.mktemp("out") / "ds.vtx"
    vantix.pack(root, out, size=16)
    return out


@pytest.fixture
def clean_env(monkeypatch):
    for k in LAUNCHER_ENV:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _indices(loader, it=None) -> list[int]:
    """The dataset indices a pass over `loader` (or the rest of `it`) yields, from the pixels
    (unique per sample in the test data)."""
    ds = loader.dataset
    table = {ds[i][0].tobytes(): i for i in range(len(ds))}
    source = loader if it is None else it
    return [table[img.numpy().tobytes()] for batch, _ in source for img in batch]


def _run_child(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter, so a hang or a signal is reported, not suffered."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


# ---------------------------------------------------------------------------------------
# Rank and world size: resolved when a pass starts, never guessed


def test_rank_is_resolved_when_a_pass_starts_not_at_construction(packed, clean_env):
    loader = VantixLoader(packed, batch_size=4)  # built before the launcher set anything
    assert (loader.rank, loader.world_size, len(loader)) == (0, 1, 10)
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("RANK", "1")
    assert (loader.rank, loader.world_size, len(loader)) == (1, 2, 5)
    assert len(_indices(loader)) == N // 2
    np.testing.assert_array_equal(
        loader.epoch_indices(0), VantixLoader(packed, rank=1, world_size=2).epoch_indices(0)
    )


def test_lightning_environment_without_rank(packed, clean_env):
    """Lightning's launcher sets WORLD_SIZE, NODE_RANK and LOCAL_RANK, but not RANK."""
    loader = VantixLoader(packed, batch_size=4)
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("NODE_RANK", "0")
    clean_env.setenv("LOCAL_RANK", "1")
    assert (loader.rank, loader.world_size) == (1, 2)
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("NODE_RANK", "1")
    clean_env.setenv("LOCAL_WORLD_SIZE", "2")
    assert (loader.rank, loader.world_size) == (3, 4)  # node 1, local rank 1 of 2


@pytest.mark.parametrize(
    "env",
    [
        {"WORLD_SIZE": "2"},
        {"WORLD_SIZE": "2", "LOCAL_RANK": "1"},  # which node? unknown
        {"WORLD_SIZE": "4", "LOCAL_RANK": "1", "NODE_RANK": "1"},  # ranks per node unknown
    ],
)
def test_unknown_rank_with_world_size_above_one_is_an_error(packed, clean_env, env):
    loader = VantixLoader(packed, batch_size=4)  # construction never fails for this
    for k, v in env.items():
        clean_env.setenv(k, v)
    for use in (lambda: iter(loader), lambda: len(loader), lambda: loader.rank):
        with pytest.raises(VantixError, match="rank= and world_size="):
            use()
    assert len(VantixLoader(packed, batch_size=4, rank=1, world_size=2)) == 5  # explicit wins


def test_explicit_rank_and_world_size_are_checked(packed, clean_env):
    with pytest.raises(VantixError, match="not valid"):
        VantixLoader(packed, rank=2, world_size=2)
    clean_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(VantixError, match="not valid"):
        len(VantixLoader(packed, rank=3))


# ---------------------------------------------------------------------------------------
# The epoch rule


def test_a_peek_or_a_check_never_moves_later_passes(packed, clean_env):
    plain = VantixLoader(packed, batch_size=4, seed=2)
    reference = [_indices(plain) for _ in range(3)]
    loader = VantixLoader(packed, batch_size=4, seed=2)
    iter(loader)  # Lightning's check that the loader is iterable
    next(iter(loader))  # a peek, e.g. to log a batch on rank 0 only
    with pytest.warns(RuntimeWarning, match="stopped after 1 of 10 batches"):
        first = _indices(loader)
    assert [first, _indices(loader), _indices(loader)] == reference
    assert loader.epoch == 3


def test_an_abandoned_pass_repeats_its_epoch_and_warns_once(packed, clean_env):
    loader = VantixLoader(packed, batch_size=4, seed=4)
    whole = loader.epoch_indices(0).tolist()
    for _ in loader:
        break
    assert loader.epoch == 0 and loader.state_dict()["samples_seen"] == 0
    with pytest.warns(RuntimeWarning, match="serves epoch 0 again"):
        it = iter(loader)
        next(it)
        del it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per loader
        assert _indices(loader) == whole
        loader.set_epoch(1)
        for _ in loader:
            break
        loader.set_epoch(1)  # an explicit choice: no warning
        assert _indices(loader) == loader.epoch_indices(1).tolist()
    assert loader.epoch == 2


def test_set_epoch_wins_and_sampler_hook_is_what_lightning_calls(packed, clean_env):
    from lightning.fabric.utilities.data import _set_sampler_epoch

    loader = VantixLoader(packed, batch_size=4)
    _set_sampler_epoch(loader, 5)  # exactly what Lightning's fit loop does every epoch
    assert loader.epoch == loader.sampler.epoch == 5
    assert list(loader.sampler) == loader.epoch_indices(5).tolist()
    assert len(loader.sampler) == N
    assert _indices(loader) == loader.epoch_indices(5).tolist()
    assert getattr(loader, "batch_sampler", None) is None
    for bad in (-1, 2**64, 1.5, "3", True):
        with pytest.raises(VantixError):
            loader.set_epoch(bad)
    assert loader.epoch == 6
    loader.set_epoch(np.uint64(2**64 - 1))  # numpy integers, up to the largest epoch
    assert loader.epoch == 2**64 - 1
    assert len(loader.epoch_indices(loader.epoch)) == N


def test_state_dict_follows_the_epoch_rule(packed, clean_env):
    loader = VantixLoader(packed, batch_size=4, seed=1)
    it = iter(loader)
    next(it)
    next(it)
    assert loader.state_dict()["samples_seen"] == 8  # inside the pass in progress
    del it  # abandoned: nothing of it counts
    assert (loader.state_dict()["epoch"], loader.state_dict()["samples_seen"]) == (0, 0)
    resumed = VantixLoader(packed, batch_size=4, seed=1)
    resumed.load_state_dict({**loader.state_dict(), "epoch": 2, "samples_seen": 12})
    # len(loader) stays the epoch's, as len(DataLoader) (Lightning sizes every later epoch of
    # a resumed run from it); the pass's iterator knows it yields the rest.
    assert len(resumed) == 10 and len(iter(resumed)) == 7
    resumed.sampler.set_epoch(2)  # Lightning's set_epoch of the same epoch keeps the position
    assert len(_indices(resumed)) == 7 * 4
    assert (resumed.epoch, len(resumed)) == (3, 10)


def test_accelerate_skip_first_batches_points_to_state_dict(packed, clean_env):
    from accelerate.data_loader import skip_first_batches

    loader = VantixLoader(packed, batch_size=4)
    with pytest.raises(AttributeError, match="state_dict"):
        skip_first_batches(loader, 2)


# ---------------------------------------------------------------------------------------
# Pickling


def test_pickle_round_trip_yields_the_same_batches(packed, clean_env):
    kw = dict(batch_size=6, seed=9, random_crop=12, padding=2, horizontal_flip=0.5)
    loader = VantixLoader(packed, **kw)
    clone = pickle.loads(pickle.dumps(loader))
    for _ in range(2):
        for (xa, ya), (xb, yb) in zip(loader, clone, strict=True):
            torch.testing.assert_close(xa, xb, rtol=0, atol=0)
            torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    it = iter(loader)
    next(it)
    mid = pickle.loads(pickle.dumps(loader))  # mid-pass: continues where the pass stands
    rest = [x.clone() for x, _ in it]
    assert [torch.equal(a, b) for a, (b, _) in zip(rest, mid, strict=True)] == [True] * len(rest)


# ---------------------------------------------------------------------------------------
# Fork


FORK_SCRIPT = """
import faulthandler, multiprocessing as mp, os, signal, sys
import numpy as np
from vantix import VantixDataset, VantixError, VantixLoader
faulthandler.dump_traceback_later(100, exit=True)  # a hang fails with a traceback
PATH = {path!r}
loader = VantixLoader(PATH, batch_size=4, seed=3, prefetch=2)
ds = VantixDataset(PATH)

def pass_ok(lo, epoch):
    got = np.concatenate([x.numpy() for x, _ in lo])
    want = np.stack([ds[int(i)][0] for i in lo.epoch_indices(epoch)])
    return got.shape == want.shape and bool((got == want).all())

def pool_work(epoch):
    loader.set_epoch(epoch)
    return pass_ok(loader, epoch)

if __name__ == "__main__":
    it = iter(loader)
    first, _ = next(it)  # the parent's pass is in progress, its prefetch thread busy
    pid = os.fork()
    if pid == 0:  # the child: everything under an alarm
        signal.alarm(60)
        try:
            next(it)
            code = 3  # an inherited pass must not continue silently
        except VantixError as e:
            code = 0 if "forked child" in str(e) else 4
        if code == 0 and not pass_ok(loader, 0):  # a new pass: full and correct
            code = 5
        it.close()  # closing or dropping the parent's pass never blocks here
        del it
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    rest = [x.numpy() for x, _ in it]  # the parent's pass was not disturbed
    got = np.concatenate([first.numpy()] + rest)
    want = np.stack([ds[int(i)][0] for i in loader.epoch_indices(0)])
    assert (got == want).all()
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:  # a fork pool over a module-level loader
        assert pool.map_async(pool_work, [1, 2, 3]).get(timeout=60) == [True] * 3
    print("fork ok")
"""


def test_fork_child_runs_a_full_pass_and_never_hangs(packed, tmp_path):
    script = tmp_path / "fork_app.py"
    script.write_text(FORK_SCRIPT.format(path=str(packed)))
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=150,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert proc.returncode == 0 and "fork ok" in proc.stdout, proc.stderr[-4000:]


def test_dataloader_fork_workers_over_an_iterable_wrapping_a_loader(packed):
    _run_child(
        f"""
        import faulthandler, torch
        from torch.utils.data import DataLoader, IterableDataset, get_worker_info
        from vantix import VantixLoader
        faulthandler.dump_traceback_later(100, exit=True)
        loader = VantixLoader({str(packed)!r}, batch_size=5, seed=1)
        next(iter(loader))  # threads started in the parent before the workers fork

        class Shards(IterableDataset):
            def __iter__(self):
                w = get_worker_info()
                loader.set_epoch(w.id)
                for x, y in loader:
                    yield w.id, x, y

        dl = DataLoader(Shards(), batch_size=None, num_workers=2,
                        multiprocessing_context="fork")
        counts = {{0: 0, 1: 0}}
        for wid, x, y in dl:
            counts[wid] += len(y)
        assert counts == {{0: {N}, 1: {N}}}, counts
        print("ok")
        """
    )


# ---------------------------------------------------------------------------------------
# Threads that fit the node


def _assembly_threads() -> int:
    return sum(n.startswith("vantix-assemble") for n in thread_names())


def test_default_threads_divide_the_cores_by_the_ranks_on_the_node(packed, clean_env):
    cores = VantixLoader(packed).num_threads_used  # one rank: every usable core
    assert cores == len(os.sched_getaffinity(0))
    clean_env.setenv("LOCAL_WORLD_SIZE", "2")
    assert VantixLoader(packed).num_threads_used == max(1, cores // 2)
    clean_env.setenv("LOCAL_WORLD_SIZE", str(cores * 4))
    assert VantixLoader(packed).num_threads_used == 1
    assert VantixLoader(packed, num_threads=3).num_threads_used == 3  # explicit wins


def test_loaders_of_one_process_share_their_threads(packed, clean_env):
    gc.collect()
    base = _assembly_threads()
    train = VantixLoader(packed, batch_size=4, num_threads=2)
    val = VantixLoader(packed, batch_size=4, shuffle=False, num_threads=2)
    seen = []
    for _pair in zip(train, val):
        seen.append(_assembly_threads() - base)
    print(f"assembly threads while a train and a val loader run: {max(seen)}")
    assert max(seen) == 2  # one pool of 2, not 2 + 2
    del train, val, _pair
    gc.collect()
    deadline = time.monotonic() + 10  # rayon's threads exit soon after their pool is dropped
    while _assembly_threads() != base and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _assembly_threads() == base  # released with the last loader


# ---------------------------------------------------------------------------------------
# Iterators used from several threads, and dropped on their own prefetch thread


def test_close_from_another_thread_while_next_waits(tmp_path_factory, clean_env):
    src = write_image_folder(tmp_path_factory.mktemp("big") / "b", 16, size=(256, 256), seed=6)
    out = tmp_path_factory.mktemp("bigout") / "b.vtx"
    vantix.pack(src, out, size=256)
    indices = np.arange(40_000) % 16  # a random-resized-crop batch that takes seconds
    loader = VantixLoader(
        out, batch_size=40_000, indices=indices, random_resized_crop=8, num_threads=1
    )
    it = iter(loader)
    errors = []
    timer = threading.Timer(0.3, lambda: errors.append(_try(loader.close)))
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(VantixError, match="closed"):
        next(it)
    timer.join()
    print(f"next() returned {time.monotonic() - t0:.2f} s after start; close errors: {errors}")
    assert errors == [None] and loader.closed
    assert prefetch_threads_after_join() == 0


def _try(f):
    try:
        f()
    except Exception as e:  # reported by the test
        return repr(e)
    return None


def test_two_threads_sharing_one_iterator_are_served_in_turn(packed, clean_env):
    loader = VantixLoader(packed, batch_size=2, seed=6)
    it = iter(loader)
    got: list[list[int]] = [[], []]
    ds = loader.dataset
    table = {ds[i][0].tobytes(): i for i in range(len(ds))}
    errors = []

    def consume(k):
        try:
            for x, _ in it:
                got[k] += [table[img.numpy().tobytes()] for img in x]
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=consume, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(got[0] + got[1]) == sorted(loader.epoch_indices(0).tolist())
    print(f"batches served to the two threads: {len(got[0]) // 2} and {len(got[1]) // 2}")


def test_iterator_dropped_by_gc_on_its_own_prefetch_thread(packed):
    """A pinned-memory allocation runs Python on the prefetch thread; if the garbage collector
    then drops an abandoned iterator of that same thread, its drop must not join itself."""
    proc = _run_child(
        f"""
        import gc, torch, vantix
        from vantix import VantixDataset
        ds = VantixDataset({str(packed)!r})
        calls = []

        def allocate(nbytes):
            calls.append(nbytes)
            gc.collect()  # as an allocation may trigger it; finds the cycle below
            return torch.empty(nbytes, dtype=torch.uint8)

        native = vantix._native.Loader(ds._native, 4, True, 0, False, 2, None, 0, 1, "pad",
                                       allocator=allocate)
        gc.disable()
        it = native.iter_epoch(0, 0)
        cycle = [it]
        cycle.append(cycle)  # only the collector can free it, on whatever thread runs it
        del it, cycle
        import time
        time.sleep(1.0)  # the prefetch thread allocates, collects, drops its own iterator
        gc.enable()
        for _ in native.iter_epoch(1, 0):
            pass
        print("allocations", len(calls))
        """
    )
    assert "allocations" in proc.stdout
    assert "Resource deadlock" not in proc.stderr and "panicked" not in proc.stderr
