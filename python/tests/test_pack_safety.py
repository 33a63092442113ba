"""The packer never destroys data and never packs garbage (issue 13).

Each test reproduces one observed defect with the real thing: real FIFOs, a real symlink to
``/dev/zero``, real truncated JPEG/PNG files made with Pillow, real PID namespaces
(``unshare --pid --fork``), real concurrent processes. Anything that could hang runs in a child
process with a timeout, so a regression is reported instead of hanging the suite.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, write_image_folder
from PIL import Image

import vantix
from vantix import VantixDataset, VantixError

TIMEOUT = 120


def _cli(*args: object, preexec_fn=None, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "vantix-pack"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256): what must survive untouched."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _skipped(out: Path) -> dict[str, str]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {s["path"]: s["reason"] for s in manifest["skipped"]}


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "train", 12, size=(20, 16), num_classes=2, seed=3)


# --- 1. the overwrite guard -----------------------------------------------------------------


def test_overwrite_never_replaces_the_source_tree_or_a_folder_around_it(src, tmp_path):
    before = _tree_digest(tmp_path)
    for out in (src, tmp_path):
        proc = _cli(src, "--size", "16", "-o", out, "--overwrite")
        assert proc.returncode == 1, proc.stderr
        assert "source tree" in proc.stderr and "nothing was changed" in proc.stderr, proc.stderr
        assert str(out) in proc.stderr
        with pytest.raises(VantixError, match="source tree"):
            vantix.pack(src, out, size=16, overwrite=True)
    assert _tree_digest(tmp_path) == before
    assert _hidden(tmp_path) == [] and _hidden(src) == []


def test_overwrite_never_replaces_what_is_not_a_vantix_dataset(src, tmp_path):
    thesis = tmp_path / "thesis"
    (thesis / "chapters").mkdir(parents=True)
    (thesis / "chapters" / "1.tex").write_text("years of work")
    (thesis / "manifest.json").write_text('{"not": "a vantix manifest"}')
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    real = tmp_path / "real.vtx"
    vantix.pack(src, real, size=16)
    link = tmp_path / "link.vtx"
    link.symlink_to(real)
    before = _tree_digest(tmp_path)
    for out, why in (
        (thesis, "not a Vantix dataset"),
        (a_file, "not a directory"),
        (link, "symbolic link"),
    ):
        proc = _cli(src, "--size", "16", "-o", out, "--overwrite")
        assert proc.returncode == 1 and why in proc.stderr, proc.stderr
        assert "nothing was changed" in proc.stderr and str(out) in proc.stderr
        with pytest.raises(VantixError, match=why):
            vantix.pack(src, out, size=16, overwrite=True)
    # merge --overwrite is guarded the same way.
    parts = [tmp_path / f"p{i}.vtx" for i in range(2)]
    for i, p in enumerate(parts):
        vantix.pack(src, p, size=16, part=(i, 2))
    with pytest.raises(VantixError, match="not a Vantix dataset"):
        vantix.merge(parts, thesis, overwrite=True)
    with pytest.raises(VantixError, match="a part being merged"):
        vantix.merge(parts, parts[0], overwrite=True)
    for p in parts:
        vantix.verify(p)
        shutil.rmtree(p)
    assert _tree_digest(tmp_path) == before
    # A real dataset is still replaced.
    vantix.pack(src, real, size=24, overwrite=True)
    assert VantixDataset(real).shape == (24, 24, 3)


def test_output_inside_the_source_tree_is_refused_up_front(src):
    before = _tree_digest(src)
    proc = _cli(src, "--size", "16", "-o", src / "out.vtx")
    assert proc.returncode == 1
    assert "lies inside the source tree" in proc.stderr and "outside" in proc.stderr, proc.stderr
    assert "empty" not in proc.stderr  # not the old "no valid file for the classes .out.vtx..."
    assert _tree_digest(src) == before and _hidden(src) == []
    assert not (src / "out.vtx").exists()


# --- 2. append racing pack --overwrite ------------------------------------------------------


@pytest.fixture(scope="module")
def race_trees(tmp_path_factory):
    """``half``: 150 images; ``full``: the same 150 plus 150 more, so an append from ``full``
    to a pack of ``half`` has work to do while a ``pack --overwrite`` of ``full`` runs."""
    root = tmp_path_factory.mktemp("race")
    full = write_image_folder(root / "full", 300, size=(48, 40), num_classes=3, seed=11)
    half = root / "half"
    for p in sorted(full.rglob("*.png")):
        if int(p.stem) < 150:
            (half / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, half / p.parent.name / p.name)
    return half, full


def _verify_listed(out: Path) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    for s in manifest["shards"]:
        assert (out / s["file"]).exists(), f"{s['file']} listed but gone"
    vantix.verify(out)


def test_append_racing_overwrite_always_leaves_one_valid_dataset(race_trees, tmp_path):
    half, full = race_trees
    out = tmp_path / "ds.vtx"
    common = ("--shard-size", "4K", "-j", "1", "-q")
    outcomes = []
    for delay in (0.0, 0.15, 0.4, 0.8, 1.2, 2.0):
        shutil.rmtree(out, ignore_errors=True)
        assert _cli(half, "--size", "24", "-o", out, *common).returncode == 0
        pack = subprocess.Popen(
            [str(BIN / "vantix-pack"), str(full), "--size", "24", "-o", str(out), "--overwrite"]
            + list(common),
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(delay)
        app = subprocess.run(
            [str(BIN / "vantix-pack"), "append", str(full), "-o", str(out), *common],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        _, pack_err = pack.communicate(timeout=TIMEOUT)
        assert pack.returncode == 0, pack_err
        assert app.returncode == 0 or "lock" in app.stderr, app.stderr
        _verify_listed(out)
        ds = VantixDataset(out)
        assert len(ds) == 300  # the overwrite's 300, or the old 150 + 150 appended
        outcomes.append((delay, app.returncode))
        del ds
        assert _hidden(tmp_path) == []
    print(f"append vs --overwrite: (delay s, append exit) = {outcomes}")


# --- 3. two packers with the same PID ---------------------------------------------------------


def test_two_packers_as_pid_1_in_separate_pid_namespaces_never_publish_a_broken_dataset(
    race_trees, tmp_path
):
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "sh", "-c", "echo $$"], capture_output=True, text=True
    )
    if probe.returncode != 0 or probe.stdout.strip() != "1":
        pytest.skip(f"cannot make a PID namespace here: {probe.stderr.strip()}")
    _, full = race_trees
    out = tmp_path / "ds.vtx"
    cmd = ["unshare", "--pid", "--fork", str(BIN / "vantix-pack"), str(full), "--size", "24"]
    cmd += ["-o", str(out), "--overwrite", "--shard-size", "4K", "-j", "1", "-q"]
    for delay in (0.0, 0.3, 0.8):
        shutil.rmtree(out, ignore_errors=True)
        first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
        _, err = first.communicate(timeout=TIMEOUT)
        # Both are PID 1: with PID-named staging folders they shared one and deleted each
        # other's shards. Each must succeed on its own folder.
        assert first.returncode == 0, err
        assert second.returncode == 0, second.stderr
        _verify_listed(out)
        assert len(VantixDataset(out)) == 300
        assert _hidden(tmp_path) == []


# --- 4. special files and hostile inputs ------------------------------------------------------


def _iccp_bomb(path: Path, inflated: int = 1 << 30) -> None:
    """A small PNG whose iCCP chunk inflates to ``inflated`` bytes (~1 MB on disk)."""
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    z = zlib.compressobj(9)
    block = bytes(1 << 20)
    stream = b"".join(z.compress(block) for _ in range(inflated >> 20)) + z.flush()
    data = b"bomb\0\0" + stream
    chunk = struct.pack(">I", len(data)) + b"iCCP" + data
    chunk += struct.pack(">I", zlib.crc32(b"iCCP" + data) & 0xFFFFFFFF)
    ihdr_end = 8 + 8 + 13 + 4
    path.write_bytes(png[:ihdr_end] + chunk + png[ihdr_end:])


def _run_measured(args: list[str], timeout: int = TIMEOUT):
    """Run ``args``; returns (exit status, stderr, peak RSS in MiB of that command alone)."""
    # A fresh wrapper process runs the command, so its RUSAGE_CHILDREN holds only this
    # command's peak RSS (this test process's own counts every child the suite ever ran).
    wrapper = (
        "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
        "print('RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
        "file=sys.stderr); sys.exit(rc)"
    )
    args = [sys.executable, "-c", wrapper, *args]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(
            f"{args} still running after {timeout} s (hung on an input?)"
        ) from None
    lines = err.splitlines()
    assert lines and lines[-1].startswith("RSS_KIB "), err
    rss = int(lines[-1].split()[1]) / 1024
    return proc.returncode, "\n".join(lines[:-1]), rss


def test_fifo_dev_zero_and_iccp_bomb_are_skipped_promptly_with_bounded_memory(tmp_path):
    root = write_image_folder(tmp_path / "hostile", 6, size=(20, 20), num_classes=2, seed=1)
    os.mkfifo(root / "c0" / "pipe.jpg")
    (root / "c0" / "zero.jpg").symlink_to("/dev/zero")
    (root / "c1" / "null.png").symlink_to("/dev/null")
    _iccp_bomb(root / "c1" / "bomb.png")
    with pytest.raises((ValueError, OSError)):  # Pillow refuses the bomb too
        Image.open(root / "c1" / "bomb.png").load()
    out = tmp_path / "out.vtx"
    t0 = time.monotonic()
    rc, err, rss = _run_measured(
        [str(BIN / "vantix-pack"), str(root), "--size", "16", "-o", str(out), "-j", "2"]
    )
    seconds = time.monotonic() - t0
    assert rc == 0, err
    print(f"hostile tree: {seconds:.2f} s, peak RSS {rss:.0f} MiB")
    assert rss < 400, f"peak RSS {rss:.0f} MiB"
    reasons = _skipped(out)
    assert "FIFO" in reasons["c0/pipe.jpg"]
    assert "character device" in reasons["c0/zero.jpg"]
    assert "character device" in reasons["c1/null.png"]
    assert "iCCP" in reasons["c1/bomb.png"] and "MAX_TEXT_CHUNK" in reasons["c1/bomb.png"]
    assert len(VantixDataset(out)) == 6


def test_a_file_over_max_file_size_is_not_read(src, tmp_path):
    r = vantix.pack(src, tmp_path / "out.vtx", size=16, max_file_size=100)
    assert r.num_samples == 0 or all("over the limit" in why for _, why in r.skipped)
    assert len(r.skipped) == 12 and "--max-file-size" in r.skipped[0][1]


# --- 5. truncated images ----------------------------------------------------------------------


def _noise(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    base = np.stack([x * 4, y * 4, (x + y) * 2], -1) % 256
    return (base + rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)


@pytest.fixture
def truncated_tree(tmp_path):
    root = tmp_path / "trunc"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        Image.fromarray(_noise(seed=1)).save(root / c / "good.png")
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png")):
        buf = io.BytesIO()
        Image.fromarray(_noise(seed=2)).save(buf, fmt)
        data = buf.getvalue()
        (root / "a" / f"cut.{ext}").write_bytes(data[: int(len(data) * 0.6)])
    return root


def test_truncated_jpeg_and_png_are_skipped_by_default_as_pillow_refuses_them(
    truncated_tree, tmp_path
):
    for name in ("cut.jpg", "cut.png"):
        with pytest.raises(OSError, match="truncated"):
            Image.open(truncated_tree / "a" / name).load()
    r = vantix.pack(truncated_tree, tmp_path / "out.vtx", size=16)
    assert r.num_samples == 2 and r.truncated == []
    reasons = dict(r.skipped)
    for name in ("a/cut.jpg", "a/cut.png"):
        assert reasons[name].startswith("truncated"), reasons
        assert "--allow-truncated" in reasons[name]
    assert "truncated" not in json.loads((tmp_path / "out.vtx" / "manifest.json").read_text())


def test_allow_truncated_packs_the_truncated_jpeg_and_records_it(truncated_tree, tmp_path):
    out = tmp_path / "out.vtx"
    r = vantix.pack(truncated_tree, out, size=16, allow_truncated=True)
    sources = json.loads((out / "sources.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert "a/cut.jpg" in sources
    assert r.truncated == manifest["truncated"]
    assert [sources[i] for i in manifest["truncated"]] == [
        s for s in sources if s.startswith("a/cut.")
    ]
    assert len(r.truncated) >= 1
    # The CLI says so, too.
    proc = _cli(truncated_tree, "--size", "16", "-o", tmp_path / "cli.vtx", "--allow-truncated")
    assert proc.returncode == 0 and "truncated" in proc.stderr, proc.stderr


# --- 6. empty classes ------------------------------------------------------------------------


def test_empty_class_error_names_it_and_allow_empty_matches_torchvision(tmp_path):
    datasets = pytest.importorskip("torchvision.datasets")
    root = write_image_folder(tmp_path / "tree", 9, size=(12, 12), num_classes=3, seed=4)
    (root / "b_empty").mkdir()
    (root / "b_empty" / "readme.txt").write_text("no images")
    (root / "z_empty").mkdir()
    out = tmp_path / "out.vtx"
    proc = _cli(root, "--size", "8", "-o", out)
    assert proc.returncode == 1
    assert "b_empty" in proc.stderr and "z_empty" in proc.stderr and "--allow-empty" in proc.stderr
    with pytest.raises(VantixError, match="allow_empty=True"):
        vantix.pack(root, out, size=8)
    r = vantix.pack(root, out, size=8, allow_empty=True)
    ref = datasets.ImageFolder(str(root), allow_empty=True)
    ds = VantixDataset(out)
    assert r.classes == ds.classes == ref.classes
    assert ds.class_to_idx == ref.class_to_idx
    assert ds.targets == ref.targets


# --- 7. names that are not UTF-8 -------------------------------------------------------------


def _save(path: bytes, seed: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(_noise(10, 12, seed)).save(buf, "PNG")
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def test_names_that_are_not_utf8_are_appended_and_labelled_by_their_bytes(tmp_path):
    root = os.fsencode(tmp_path / "tree")
    _save(root + b"/r\xe9d/caf\xe9.png", 1)
    _save(root + b"/r\xe9d/plain.png", 2)
    _save(root + b"/r\xe8d/one.png", 3)
    out = tmp_path / "out.vtx"
    vantix.pack(os.fsdecode(root), out, size=8)
    ds = VantixDataset(out)
    assert len(ds.classes) == 2 and ds.classes[0] != ds.classes[1]
    # New: caf\xe8.png next to caf\xe9.png, and one more image in r\xe8d.
    _save(root + b"/r\xe9d/caf\xe8.png", 4)
    _save(root + b"/r\xe8d/two.png", 5)
    r = vantix.append(os.fsdecode(root), out)
    assert r.num_samples == 2
    ds = VantixDataset(out)
    assert len(ds) == 5 and len(ds.classes) == 2
    sources = json.loads((out / "sources.json").read_text())

    def path_of(entry):
        return entry.encode() if isinstance(entry, str) else bytes.fromhex(entry["hex"])

    paths = [path_of(s) for s in sources]
    assert paths[3:] == [b"r\xe8d/two.png", b"r\xe9d/caf\xe8.png"]
    label = {b"r\xe8d": 0, b"r\xe9d": 1}  # sorted by bytes, as ImageFolder sorts them
    assert [ds[i][1] for i in range(len(ds))] == [label[p.split(b"/")[0]] for p in paths]
    # The pixels are those of the new file, not a copy of caf\xe9.png.
    assert not np.array_equal(ds[4][0], ds[paths.index(b"r\xe9d/caf\xe9.png")][0])
    # Packing again finds nothing new.
    assert vantix.append(os.fsdecode(root), out).num_samples == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["class_bytes"] == {"0": "72e864", "1": "72e964"}
    assert sys.getfilesystemencoding() == "utf-8"
