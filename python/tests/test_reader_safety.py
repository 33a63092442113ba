"""The reader never crashes and never serves the wrong data (issue 14).

Every case that could die by a signal (SIGBUS, SIGABRT) or be killed for memory runs in a child
process, so that the suite reports it instead of dying; the figures (descriptor counts, peak
RSS, samples re-served) are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image_folder

import vantix
from vantix import VantixDataset, VantixError, VantixLoader


def _child(code: str, *args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; a death by signal is a failed test, not a dead
    suite."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    print(proc.stdout, proc.stderr[-2000:], sep="\n")
    if proc.returncode < 0:
        raise AssertionError(
            f"the child died by {signal.Signals(-proc.returncode).name}: {proc.stderr[-2000:]}"
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("src") / "src", 96, size=(16, 16))


@pytest.fixture
def packed(folder, tmp_path):
    """A fresh raw pack of 96 16x16 images in 4 shards (each test may damage its own)."""
    out = tmp_path / "d.vtx"
    vantix.pack(folder, out, size=16, shard_size=24 * 16 * 16 * 3, num_threads=2)
    return out


# 1. -------------------------------------------------------------------------------------------
def test_no_read_path_faults_after_a_shard_is_truncated(packed):
    """Before: ds.targets, train_val_split, preview and the inspect summary read the mapped
    labels unchecked and died with SIGBUS after a truncation. Now labels are copied at open and
    pixels are checked: each is an answer or a VantixError, in a child that must not die."""
    _child(
        """
        import json, os, sys
        import vantix
        from vantix import VantixDataset, VantixError, VantixLoader
        ds = VantixDataset(sys.argv[1])
        loader = VantixLoader(ds, batch_size=8, shuffle=False)
        targets = list(ds.targets)
        ds._targets = None  # read again after the truncation
        shard = os.path.join(sys.argv[1], "shard-00000.vxs")
        os.truncate(shard, 4096)
        results = {}
        def attempt(name, f):
            try:
                f()
                results[name] = "ok"
            except VantixError as e:
                results[name] = "VantixError: " + str(e)
        attempt("targets", lambda: ds.targets == targets or sys.exit("labels changed"))
        attempt("train_val_split", lambda: vantix.train_val_split(ds, 0.25))
        attempt("summary", lambda: json.loads(ds._native.summary_json()))
        attempt("preview", lambda: ds.preview(sys.argv[1] + "-sheet.png", num=8))
        attempt("getitem", lambda: ds[0])
        attempt("loader", lambda: next(iter(loader)))
        for k, v in results.items():
            print(f"{k:16} {v}")
        assert results["targets"] == results["train_val_split"] == results["summary"] == "ok"
        for k in ("preview", "getitem", "loader"):
            assert "shard-00000.vxs" in results[k] and "now 4096 bytes" in results[k], k
        """,
        packed,
    )


# 2. -------------------------------------------------------------------------------------------
def _xattr_supported(path: Path) -> bool:
    try:
        os.setxattr(path, "user.vantix-probe", b"1")
        os.removexattr(path, "user.vantix-probe")
        return True
    except OSError:
        return False


def test_metadata_changes_do_not_abort_an_epoch(packed, tmp_path):
    """Before: chmod, a hard link, setxattr and a rename-replacement with identical bytes
    changed the shard's ctime and killed the epoch ('rewritten in place'). Now only the size,
    the modification time or the file itself count, and a replaced path keeps the old file."""
    shard = packed / "shard-00001.vxs"
    ops = {
        "setxattr": lambda: os.setxattr(shard, "user.backup", b"yes"),
        "chmod 444": lambda: os.chmod(shard, 0o444),
        "hard link": lambda: os.link(shard, tmp_path / "backup.vxs"),
        "rename-replace": lambda: (
            shutil.copyfile(shard, packed / ".new"),
            os.replace(packed / ".new", shard),
        ),
    }
    if not _xattr_supported(shard):
        print("setxattr: not supported on this file system, skipped")
        del ops["setxattr"]
    reference = [x.numpy().copy() for x, _ in VantixLoader(packed, batch_size=8, shuffle=False)]
    loader = VantixLoader(packed, batch_size=8, shuffle=False)
    ds = VantixDataset(packed)
    it = iter(loader)
    got = [next(it)[0].numpy().copy()]
    for name, op in ops.items():
        op()
        got.append(next(it)[0].numpy().copy())
        ds[30]
        print(f"{name}: epoch continues")
    got += [x.numpy().copy() for x, _ in it]
    assert len(got) == len(reference)
    for a, b in zip(got, reference):
        np.testing.assert_array_equal(a, b)
    # A change of content in place is still an error, and says what changed (a dataset opened
    # after the replacement maps the new file).
    ds = VantixDataset(packed)
    st = os.stat(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    with pytest.raises(VantixError, match=r"shard-00001\.vxs.*modification time changed"):
        ds[30]
    os.chmod(shard, 0o644)
    fresh = VantixDataset(packed)
    os.truncate(shard, st.st_size - 100)
    with pytest.raises(VantixError, match=r"it is now \d+ bytes, it was \d+ bytes"):
        fresh[30]


# 3. -------------------------------------------------------------------------------------------
def test_unpickling_a_dataset_whose_path_was_repacked_is_an_error(folder, tmp_path):
    """Before: a pickled VantixDataset reopened its path and silently served whatever was
    there (a DataLoader worker started by spawn after a repack with --overwrite). Now the pickle
    pins the identity."""
    out = tmp_path / "d.vtx"
    vantix.pack(folder, out, size=16, num_threads=2)
    ds = VantixDataset(out)
    blob = pickle.dumps(ds)
    assert pickle.loads(blob).identity == ds.identity  # same dataset: fine
    vantix.pack(folder, out, size=12, num_threads=2, overwrite=True)
    print("old identity", ds.identity, "new", VantixDataset(out).identity)
    with pytest.raises(VantixError, match="another dataset"):
        pickle.loads(blob)
    # The identity is the manifest's field.
    assert (
        json.loads((out / "manifest.json").read_text())["identity"] == VantixDataset(out).identity
    )


# 4. -------------------------------------------------------------------------------------------
def test_resume_refuses_other_block_settings_and_another_dataset(folder, tmp_path):
    """Before: the key covered `order` but not block_size/block_window, and not the dataset.
    Here: how many samples a resume with other block settings would have re-served and never
    served, and the refusal."""
    n = 96
    a, b = tmp_path / "a.vtx", tmp_path / "b.vtx"
    vantix.pack(folder, a, size=16, num_threads=2)
    vantix.pack(folder, b, size=12, num_threads=2)  # another dataset, same num_samples
    kw = dict(batch_size=8, order="block", block_size=8, block_window=2, seed=1)
    run = VantixLoader(a, **kw)
    it = iter(run)
    for _ in range(6):
        next(it)
    state = run.state_dict()
    seen = set(run.epoch_indices(0)[:48].tolist())
    other = VantixLoader(a, **{**kw, "block_size": 4})
    rest = set(other.epoch_indices(0, 48).tolist())
    print(
        f"resumed with block_size 4 instead of 8: {len(seen & rest)} of {n} samples re-served, "
        f"{n - len(seen | rest)} never served"
    )
    with pytest.raises(VantixError, match="block_size"):
        other.load_state_dict(state)
    with pytest.raises(VantixError, match="resume key"):
        VantixLoader(a, **{**kw, "block_window": 3}).load_state_dict(state)
    with pytest.raises(VantixError, match="another dataset"):
        VantixLoader(b, **kw).load_state_dict(state)
    same = VantixLoader(a, **kw)
    same.load_state_dict(state)
    assert len(list(same)) == 6
    # The key is computed in Rust, identical in another process.
    proc = _child(
        "import sys, vantix; print(vantix.VantixLoader(sys.argv[1], batch_size=8, "
        "order='block', block_size=8, block_window=2, seed=1).state_dict()['sampling'])",
        a,
    )
    assert proc.stdout.split()[-1] == state["sampling"]


# 5. -------------------------------------------------------------------------------------------
def _huge_zstd(folder: Path, out: Path) -> int:
    """A real 8x8 zstd pack whose headers and manifest are rewritten to declare 65536x65536x4
    records (16 GiB each): a few KB on disk."""
    vantix.pack(folder, out, size=8, codec="zstd", num_threads=2)
    m = json.loads((out / "manifest.json").read_text())
    m.update(width=65536, height=65536, channels=4, channel_order="RGBA")
    m.pop("identity", None)  # recomputed at open
    for s in m["shards"]:
        p = out / s["file"]
        b = bytearray(p.read_bytes())
        b[16:28] = (65536).to_bytes(4, "little") * 2 + (4).to_bytes(4, "little")
        b[124:128] = zlib.crc32(bytes(b[:124])).to_bytes(4, "little")
        p.write_bytes(bytes(b))
    (out / "manifest.json").write_text(json.dumps(m))
    return sum(f.stat().st_size for f in out.iterdir())


def test_huge_sizes_are_errors_not_aborts(folder, tmp_path):
    """Before: ds[0] of the hand-made dataset aborted ("memory allocation of ... failed",
    SIGABRT), center_crop=65536 aborted (rc 134), random_resized_crop=4096 at batch 256 was
    OOM-killed at 12.9 GB. Now each is a VantixError naming the file or the option; the peak
    RSS of the child is printed, and its growth over the baseline after importing torch (whose
    own size varies with the build: 0.5 GiB here, 1.1 GiB on CI) stays far below a record."""
    out = tmp_path / "huge.vtx"
    size = _huge_zstd(folder, out)
    small = tmp_path / "small.vtx"
    vantix.pack(folder, small, size=16, num_threads=2)
    proc = _child(
        """
        import resource, sys
        import torch  # batches are torch tensors: its import is the baseline, not the test
        from vantix import VantixDataset, VantixError, VantixLoader
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        def refused(what, f, expect):
            try:
                f()
            except VantixError as e:
                assert expect in str(e), (what, str(e))
                print(f"{what}: VantixError: {str(e)[:150]}")
            else:
                sys.exit(f"{what}: accepted")
        def first(**kw):
            return next(iter(VantixLoader(sys.argv[2], **kw)))
        refused("open + ds[0]", lambda: VantixDataset(sys.argv[1])[0], "cannot hold a record")
        refused("center_crop=65536", lambda: first(batch_size=4, center_crop=65536),
                "center_crop=(65536, 65536)")
        refused("random_resized_crop=4096, batch 256",
                lambda: first(batch_size=256, random_resized_crop=4096),
                "random_resized_crop=(4096, 4096)")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print("baseline RSS MiB", base, "peak RSS MiB", peak, "growth MiB", peak - base)
        """,
        out,
        small,
    )
    print(f"hand-made dataset: {size} bytes")
    assert int(proc.stdout.split()[-1]) < 256, proc.stdout


# 7. -------------------------------------------------------------------------------------------
def test_two_thousand_shards_under_ulimit_1024(tmp_path):
    """Before: one descriptor per shard for the dataset's lifetime, so a 2,000-shard dataset
    failed to open under `ulimit -n 1024` ("Too many open files"). Now a mapping keeps no
    descriptor; the child prints how many it holds while iterating."""
    src = write_image_folder(tmp_path / "src", 2000, size=(4, 4), num_classes=2)
    out = tmp_path / "many.vtx"
    vantix.pack(src, out, size=4, shard_size=1, num_threads=2)
    assert len(json.loads((out / "manifest.json").read_text())["shards"]) == 2000
    proc = _child(
        """
        import os, resource, sys
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        import vantix
        fds = lambda: len(os.listdir("/proc/self/fd"))
        before = fds()
        loader = vantix.VantixLoader(sys.argv[1], batch_size=64, verify="shard")
        during, n = [], 0
        for images, labels in loader:
            during.append(fds())
            n += len(labels)
        print(f"fds before open {before}, while iterating max {max(during)}, samples {n}")
        assert n == 2000
        print(max(during) - before)
        """,
        out,
    )
    held = int(proc.stdout.split()[-1])
    print(f"descriptors held beyond the baseline while iterating 2,000 shards: {held}")
    assert held < 16  # the prefetch channel and thread pool's own, not one per shard


# 9. -------------------------------------------------------------------------------------------
def test_integer_options_take_numpy_integers_and_wrong_types_are_clear(packed):
    kw = dict(
        batch_size=np.int64(8),
        prefetch=np.int32(2),
        seed=np.uint64(3),
        num_threads=np.int16(2),
        order="block",
        block_size=np.int64(8),
        block_window=np.uint8(2),
    )
    lo = VantixLoader(packed, **kw)
    ref = VantixLoader(
        packed,
        batch_size=8,
        prefetch=2,
        seed=3,
        num_threads=2,
        order="block",
        block_size=8,
        block_window=2,
    )
    assert lo.state_dict() == ref.state_dict()
    for a, b in zip(lo, ref):
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    for bad, match in (
        (dict(shuffle=1), "shuffle must be True or False"),
        (dict(drop_last="no"), "drop_last must be True or False"),
        (dict(seed="3"), "seed must be an int"),
        (dict(batch_size=8.0), "batch_size must be an int"),
        (dict(batch_size=True), "batch_size must be an int"),
        (dict(prefetch=0), "prefetch must be an int in"),
        (dict(seed=2**64), "seed must be an int in"),
        (dict(num_threads=0), "num_threads"),
        (dict(block_size=2.5), "block_size must be an int"),
    ):
        with pytest.raises(VantixError, match=match) as e:
            VantixLoader(packed, **bad)
        assert isinstance(e.value, (TypeError, ValueError)), bad
    with pytest.raises(VantixError, match="floats are not truncated"):
        VantixLoader(packed, indices=[0.0, 1.5, 2.0])
    with pytest.raises(VantixError, match="floats are not truncated"):
        VantixLoader(packed, indices=np.array([1.0, 2.0]))
    assert len(VantixLoader(packed, indices=np.array([1, 2], dtype=np.uint16), batch_size=1)) == 2
    assert len(VantixLoader(packed, indices=[np.int64(1), 2], batch_size=1)) == 2


def test_preview_refuses_a_huge_scale_and_float_indices(packed, tmp_path):
    ds = VantixDataset(packed)
    for scale in (2**62, 2**40):
        with pytest.raises(VantixError, match="too large"):
            ds.preview(tmp_path / "p.png", num=4, scale=scale)
    assert not (tmp_path / "p.png").exists()
    with pytest.raises(VantixError, match="scale must be an int in"):
        ds.preview(tmp_path / "p.png", num=4, scale=2**64)
    with pytest.raises(VantixError, match="floats are not truncated"):
        ds.preview(tmp_path / "p.png", indices=[0.5, 1.0])
    with pytest.raises(VantixError, match="too large"):
        vantix.save_batch_grid(
            np.zeros((2, 8, 8, 3), np.uint8), [0, 1], tmp_path / "g.png", scale=2**62
        )
    shown = ds.preview(tmp_path / "p.png", indices=np.array([3, 1]), scale=np.int64(2))
    assert shown.tolist() == [3, 1]
