"""A dataset on a shared read-only file system: several processes open and read it at once, each
gets the same data, and none of them writes anything or takes a lock (docs/PACKING.md, "Reading
from a shared read-only file system")."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import vantix
from vantix import VantixDataset, VantixLoader

try:  # imported here: a reader that dropped its privileges cannot import later
    import torch  # noqa: F401
except ImportError:  # pragma: no cover
    pass

NOBODY = 65534
READERS = 4


def _fd_flags(fd: str) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return int(re.search(r"flags:\s*([0-7]+)", f.read()).group(1), 8)


def _read_everything(path: str, uid: int | None) -> dict:
    """One reader process: open the dataset with VantixDataset and VantixLoader, read an epoch
    of each, and report a digest of the data, the open flags of its dataset file descriptors,
    the permissions of its dataset mappings, and whether it could create a file there."""
    if uid is not None:
        os.setgid(uid)
        os.setuid(uid)
        # Changing uid makes a process non-dumpable, which hides its own /proc/self/fdinfo.
        import ctypes

        ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    ds = VantixDataset(path)
    loader = VantixLoader(path, batch_size=7, shuffle=True, seed=5, num_threads=2)
    digest = hashlib.sha256()
    for images, labels in loader:
        digest.update(np.asarray(images).tobytes())
        digest.update(np.asarray(labels).tobytes())
    for i in range(len(ds)):
        image, label = ds[i]
        digest.update(np.asarray(image).tobytes())
        digest.update(str(label).encode())
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(path):
            fds[os.path.basename(target)] = _fd_flags(fd)
    with open("/proc/self/maps") as f:
        maps = [line.split()[1] for line in f if path in line]
    try:
        with open(os.path.join(path, "probe"), "w"):
            pass
        could_write = True
    except OSError:
        could_write = False
    return {
        "pid": os.getpid(),
        "uid": os.getuid(),
        "digest": digest.hexdigest(),
        "fds": fds,
        "maps": maps,
        "could_write": could_write,
        "n": len(ds),
    }


def _reader(path: str, uid: int | None, queue) -> None:
    try:
        result = _read_everything(path, uid)
    except BaseException as e:  # report it to the test instead of dying silently
        result = {"error": repr(e)}
    queue.put(result)


def _state(path: Path) -> dict[str, tuple[int, int, int]]:
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ctime_ns)
        for p in sorted(path.iterdir())
    }


@pytest.fixture
def shared(tmp_path):
    src = tmp_path / "train"
    rng = np.random.default_rng(0)
    from PIL import Image

    for i in range(30):
        d = src / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    # Outside pytest's private (0700) temporary folder, so that an unprivileged reader can
    # reach it.
    top = Path(tempfile.mkdtemp(prefix="vantix-shared-"))
    path = top / "train.vtx"
    vantix.pack(src, path, size=16, codec="zstd", shard_size=2000)
    for p in [path, *path.iterdir()]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    top.chmod(0o555)
    yield path
    top.chmod(0o755)
    path.chmod(0o755)
    shutil.rmtree(top)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_many_processes_read_a_read_only_dataset_without_writing(shared):
    before = _state(shared)
    # As root, chmod does not stop writes: the readers then run as an unprivileged user.
    uid = NOBODY if os.geteuid() == 0 else None
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_reader, args=(str(shared), uid, queue)) for _ in range(READERS)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all("error" not in r for r in results), results
    assert len({r["pid"] for r in results}) == READERS
    assert _state(shared) == before  # no file changed, none appeared (no lock files)
    assert {r["digest"] for r in results} == {results[0]["digest"]}
    shards = {p.name for p in shared.iterdir() if p.name.startswith("shard-")}
    assert len(shards) > 1
    for r in results:
        assert r["n"] == 30 and not r["could_write"]
        if uid is not None:
            assert r["uid"] == uid
        # Every shard is mapped without write permission; no shard descriptor stays open (it
        # is closed once the mapping exists, issue 14), and any held would be read-only.
        assert not set(r["fds"]) & shards, r["fds"]
        assert all(flags & os.O_ACCMODE == os.O_RDONLY for flags in r["fds"].values())
        assert r["maps"] and all("w" not in perms for perms in r["maps"]), r["maps"]


def test_the_reader_takes_no_locks_and_opens_read_only():
    """The reader's source: files are opened read(true) only, and no flock/fcntl lock exists."""
    src = Path(__file__).resolve().parents[2] / "vantix-read" / "src"
    text = "\n".join(p.read_text() for p in src.glob("*.rs"))
    for needle in ("flock", "F_SETLK", "lockf", "O_RDWR", "O_WRONLY", ".write(true)", "MmapMut"):
        assert needle not in text, needle
    assert ".read(true)" in text
