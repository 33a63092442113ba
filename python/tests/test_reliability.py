"""Reliability (docs/RELIABILITY.md): hostile input images, a packer killed or starved of disk,
Ctrl-C, shards changed under a running loader, checked reads, and loaders in threads and
processes created and abandoned many times. Each test states the figure it measures."""

from __future__ import annotations

import gc
import io
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import prefetch_threads_after_join, write_image_folder
from PIL import Image
from torchvision.transforms import functional as TF

import vantix
from vantix import VantixDataset, VantixError, VantixLoader

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def _cli(*args, timeout=120, **kw):
    return subprocess.run(
        [str(BIN / "vantix-pack"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,  # a hang is a failure
        **kw,
    )


# --- hostile input images ------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def _png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares `width x height` (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    sig = b"\x89PNG\r\n\x1a\n"
    return sig + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _jpeg_bomb() -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to declare 65000 x 65000 pixels."""
    data = bytearray(_jpeg_bytes(Image.new("RGB", (16, 16), (9, 99, 199))))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def _photo(rng, w, h):
    base = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.BILINEAR)


def _hostile_tree(root: Path) -> dict[str, str]:
    """An ImageFolder of nasty but plausible files; returns {relative path: expectation}, where
    the expectation is "packed", "skipped" or "either" (Pillow refuses it, a tolerant decoder
    may recover it), or "absent" (not a source file for torchvision either)."""
    rng = np.random.default_rng(5)
    a, b = root / "class a", root / "ünïcode b"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    expect = {}

    def put(rel: str, data: bytes, what: str) -> None:
        (root / rel).write_bytes(data)
        expect[rel] = what

    good_png = io.BytesIO()
    _photo(rng, 40, 30).save(good_png, "PNG")
    good_jpg = _jpeg_bytes(_photo(rng, 64, 48))
    put("class a/zero-byte.jpg", b"", "skipped")
    put("class a/zero-byte.png", b"", "skipped")
    put("class a/truncated.jpg", good_jpg[: len(good_jpg) // 2], "either")
    put("class a/truncated.png", good_png.getvalue()[: len(good_png.getvalue()) // 3], "skipped")
    put("class a/text.jpg", b"this is not an image, just text\n" * 10, "skipped")
    put("class a/png named.jpg", good_png.getvalue(), "packed")
    put("class a/header only.png", good_png.getvalue()[:33], "skipped")
    put("class a/bomb.png", _png_bomb(100_000, 100_000), "skipped")
    put("class a/bomb.jpg", _jpeg_bomb(), "skipped")
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 10, 30)).save(buf, "PNG")
    put("class a/one pixel.png", buf.getvalue(), "packed")
    put("class a/wide 7000x300.jpg", _jpeg_bytes(_photo(rng, 7000, 300)), "packed")
    buf = io.BytesIO()
    deep = (rng.integers(0, 65536, (24, 32), dtype=np.uint16)).astype(np.uint16)
    Image.fromarray(deep).save(buf, "PNG")
    put("class a/16-bit.png", buf.getvalue(), "packed")
    put("ünïcode b/cmyk.jpg", _jpeg_bytes(_photo(rng, 40, 40).convert("CMYK")), "packed")
    buf = io.BytesIO()
    pal = _photo(rng, 30, 20).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(buf, "PNG", transparency=3)
    put("ünïcode b/palette+transparency.png", buf.getvalue(), "packed")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display (not applied, like torchvision)
    put("ünïcode b/exif-rotated.jpg", _jpeg_bytes(_photo(rng, 48, 32), exif=exif), "packed")
    frames = [Image.fromarray(np.full((20, 20, 3), v, np.uint8)) for v in (10, 120, 240)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    put("ünïcode b/animated.gif", buf.getvalue(), "absent")  # .gif: not an ImageFolder file
    put("ünïcode b/animated gif.png", buf.getvalue(), "packed")  # first frame, as Pillow
    put("ünïcode b/été à la plage 日本.png", good_png.getvalue(), "packed")
    # Symlinks inside a class folder: to a file of another class (read twice, as torchvision
    # does), dangling, and a loop back to the class folder (not entered twice).
    os.symlink("../class a/png named.jpg", b / "link to a.png")
    expect["ünïcode b/link to a.png"] = "packed"
    os.symlink("does-not-exist.png", b / "dangling link.png")
    expect["ünïcode b/dangling link.png"] = "skipped"
    os.symlink(".", b / "loop")
    return expect


def _reference(path: Path, size: int) -> np.ndarray:
    """What torchvision makes of a file: PIL convert("RGB") (16-bit scaled, as Vantix
    documents), Resize(size) + CenterCrop(size)."""
    img = Image.open(path)
    if img.mode in ("I;16", "I"):
        img = Image.fromarray(np.round(np.asarray(img, np.float64) / 257).astype(np.uint8))
    img = img.convert("RGB")
    img = TF.center_crop(TF.resize(img, size), size)
    return np.asarray(img)


def test_hostile_images_are_packed_or_skipped_with_a_reason(tmp_path):
    root = tmp_path / "hostile"
    expect = _hostile_tree(root)
    out = tmp_path / "h.vtx"
    proc = _cli(root, "--size", "16", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "panicked" not in proc.stderr and "RUST_BACKTRACE" not in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    packed = json.loads((out / "sources.json").read_text())
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    # Every file torchvision's ImageFolder would list is packed or skipped with a reason.
    tv = torchvision.datasets.ImageFolder(str(root), loader=lambda p: p)
    # torchvision's os.walk(followlinks=True) runs round the loop until the path is too long;
    # Vantix does not enter a folder that is its own ancestor.
    listed = sorted(os.path.relpath(p, root) for p, _ in tv.samples if "/loop/" not in p)
    assert sorted(packed + list(skipped)) == listed
    assert all(reason.strip() for reason in skipped.values())
    for rel, what in expect.items():
        if what == "absent":
            assert rel not in listed
        elif what == "packed":
            assert rel in packed, (rel, skipped.get(rel))
        elif what == "skipped":
            assert rel in skipped, rel
            assert f"skipped {root / rel}" in proc.stderr
        else:
            assert (rel in packed) != (rel in skipped)
    assert "decompression bomb" in skipped["class a/bomb.png"]
    assert "decompression bomb" in skipped["class a/bomb.jpg"]
    # Packed images are what torchvision sees, labels included.
    ds = VantixDataset(out)
    tv_labels = {os.path.relpath(p, root): y for p, y in tv.samples}
    for i, rel in enumerate(packed):
        image, label = ds[i]
        assert label == tv_labels[rel]
        if expect.get(rel) == "packed":
            ref = _reference(root / rel, 16)
            diff = np.abs(image.astype(int) - ref.astype(int)).mean()
            assert diff < 2.0, (rel, diff)
    vantix.verify(out)
    print(f"hostile inputs: {len(listed)} files, {len(packed)} packed, {len(skipped)} skipped")


def test_decoded_size_limit_is_an_option_with_a_safe_default(tmp_path):
    root = tmp_path / "big"
    (root / "c").mkdir(parents=True)
    _photo(np.random.default_rng(0), 400, 300).save(root / "c" / "big.png")
    _photo(np.random.default_rng(1), 40, 30).save(root / "c" / "small.png")
    report = vantix.pack(root, tmp_path / "a.vtx", size=8, max_pixels=100_000)
    assert [p for p, _ in report.skipped] == ["c/big.png"]
    assert "over the limit of 100000" in report.skipped[0][1]
    assert vantix.pack(root, tmp_path / "b.vtx", size=8).num_samples == 2  # default allows it


# --- interruption and resources ------------------------------------------------------------


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """600 small PNGs: a pack that takes long enough to be interrupted."""
    root = tmp_path_factory.mktemp("many") / "train"
    return write_image_folder(root, 600, size=(48, 48), num_classes=4, seed=3)


@pytest.fixture(scope="module")
def slow_images(tmp_path_factory):
    """400 larger PNGs: one-thread packing takes seconds, so a signal sent once packing has
    begun always lands before it ends, even on a loaded machine."""
    root = tmp_path_factory.mktemp("slow") / "train"
    return write_image_folder(root, 400, size=(256, 192), num_classes=4, seed=5)


def _partials(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_sigkill_at_random_moments_leaves_nothing_or_a_verified_dataset(many_images, tmp_path):
    out = tmp_path / "out.vtx"
    args = (many_images, "--size", "32", "--shard-size", "64K", "-j", "1", "-q", "-o", out)
    t0 = time.monotonic()
    assert _cli(*args).returncode == 0
    duration = time.monotonic() - t0  # only used to spread the kill moments
    reference = VantixDataset(out)
    reference_images = np.stack([reference[i][0] for i in range(len(reference))])
    del reference
    rng = random.Random(7)
    kills = complete = absent = 0
    for _ in range(10):
        proc = subprocess.Popen([str(BIN / "vantix-pack"), *map(str, args), "--overwrite"])
        time.sleep(rng.uniform(0.0, duration))
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
        kills += rc == -signal.SIGKILL
        if out.exists():  # the old dataset, or a complete new one: never a partial one
            vantix.verify(out)
            ds = VantixDataset(out)
            np.testing.assert_array_equal(
                np.stack([ds[i][0] for i in range(len(ds))]), reference_images
            )
            complete += 1
        else:  # killed between moving the old dataset aside and renaming the new one in
            absent += 1
        rerun = _cli(*args, "--overwrite")  # a rerun succeeds and cleans up the remains
        assert rerun.returncode == 0, rerun.stderr
        vantix.verify(out)
        assert _partials(tmp_path) == []
    # And from an empty output path: nothing, or a complete dataset.
    for _ in range(5):
        target = tmp_path / "fresh.vtx"
        proc = subprocess.Popen([str(BIN / "vantix-pack"), *map(str, args[:-1]), target])
        time.sleep(rng.uniform(0.0, duration))
        proc.send_signal(signal.SIGKILL)
        kills += proc.wait() == -signal.SIGKILL
        if target.exists():
            vantix.verify(target)
        assert _cli(*args[:-1], target, "--overwrite").returncode == 0
        vantix.verify(target)
        assert _partials(tmp_path) == []
    print(f"SIGKILL: {kills} packers killed mid-run, {complete} complete, {absent} absent")
    assert kills >= 5  # most kills land while the packer runs


def _limit_file_size(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_file_size_limit_is_a_clear_error_and_leaves_no_output(many_images, tmp_path):
    out = tmp_path / "out.vtx"
    proc = _cli(many_images, "--size", "32", "-o", out, preexec_fn=_limit_file_size(256 << 10))
    assert proc.returncode == 1
    assert f"{out}: cannot write the dataset: File too large" in proc.stderr, proc.stderr
    assert "nothing was written at the output path" in proc.stderr
    assert not out.exists() and _partials(tmp_path) == []


_PACK_SCRIPT = """
import sys, vantix
vantix.pack(sys.argv[1], sys.argv[2], size=32, num_threads=1, shard_size="64K")
print("finished")
"""


@pytest.fixture
def ctrl_c():
    """Ctrl-C raises KeyboardInterrupt in this process (Python's own handler), whatever the
    test runner inherited: a shell without job control starts background jobs, and so a CI
    script run with `&`, with SIGINT ignored, and an ignored signal stays ignored in children."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _sigint_by_default() -> None:
    """In a child before exec: SIGINT's default action, so the child's Python installs its
    KeyboardInterrupt handler (it leaves an inherited SIG_IGN alone)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_interrupts_vantix_pack(slow_images, tmp_path):
    out = tmp_path / "out.vtx"
    proc = subprocess.Popen(
        [sys.executable, "-c", _PACK_SCRIPT, str(slow_images), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_by_default,
    )
    while not _partials(tmp_path) and proc.poll() is None:
        time.sleep(0.005)  # wait until packing has begun
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    # An uncaught KeyboardInterrupt ends Python with status 1, or (3.8+) by SIGINT itself.
    assert proc.returncode in (1, -signal.SIGINT) and "KeyboardInterrupt" in stderr, stderr
    assert "finished" not in stdout
    assert not out.exists() and _partials(tmp_path) == []


# --- shards changed under a loader, checked reads ------------------------------------------


@pytest.fixture
def three_shards(tmp_path):
    """120 images of 16x16 in three shards of 40 records (a raw record is 768 bytes)."""
    src = write_image_folder(tmp_path / "src", 120, size=(16, 16), num_classes=3, seed=9)
    out = tmp_path / "three.vtx"
    report = vantix.pack(src, out, size=16, shard_size=40 * 768)
    assert report.num_shards == 3
    return out


def test_shard_truncated_mid_iteration_raises_vantix_error(three_shards):
    loader = VantixLoader(three_shards, batch_size=4, shuffle=False, prefetch=1, num_threads=1)
    it = iter(loader)
    next(it)  # the prefetch thread is at most two batches ahead: still in shard 0
    shard = three_shards / "shard-00002.vxs"
    os.truncate(shard, shard.stat().st_size // 2)
    seen = 1
    with pytest.raises(VantixError, match=r"shard-00002\.vxs: shard changed on disk.*bytes"):
        for _ in it:
            seen += 1
    assert seen == 20  # every batch of shards 0 and 1, then the error: the process lives on
    with pytest.raises(VantixError, match=r"shard-00002\.vxs.*(truncated|bytes)"):
        VantixDataset(three_shards)  # and a new open refuses the damaged dataset


def test_shard_rewritten_in_place_raises_vantix_error(three_shards):
    ds = VantixDataset(three_shards)
    ds[0]
    loader = VantixLoader(ds, batch_size=8, shuffle=True)
    time.sleep(0.05)  # let the coarse file clock tick past the pack's last write
    shard = three_shards / "shard-00000.vxs"
    with open(shard, "r+b") as f:  # same length, same bytes, but written: mtime changes
        data = f.read()
        f.seek(0)
        f.write(data)
    with pytest.raises(VantixError, match=r"shard-00000\.vxs: shard changed on disk.*in place"):
        ds[1]
    with pytest.raises(VantixError, match=r"shard-00000\.vxs: shard changed"):
        for _ in loader:
            pass
    ds[45]  # shard 1 is untouched
    VantixDataset(three_shards)[1]  # reopening sees the new (here identical) content


def _flip(path: Path, offset: int, mask: int = 0x40) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def test_checked_reads_detect_damage_before_serving(three_shards):
    shard = three_shards / "shard-00001.vxs"
    _flip(shard, shard.stat().st_size - 5)  # a pixel of sample 79, the shard's last record
    for verify in ("record", "shard"):
        loader = VantixLoader(three_shards, batch_size=10, shuffle=False, verify=verify)
        with pytest.raises(VantixError, match=r"shard-00001\.vxs: checksum mismatch"):
            for _ in loader:
                pass
    quiet = VantixLoader(three_shards, batch_size=10, shuffle=False)
    assert sum(1 for _ in quiet) == 12  # unchecked reads serve the damaged pixel silently
    ds = VantixDataset(three_shards, verify="record")
    ds[78]
    with pytest.raises(VantixError, match=r"record 39 \(sample 79\) is damaged"):
        ds[79]
    # A label is covered by the shard hash, not by the record CRC.
    _flip(shard, shard.stat().st_size - 5)  # repair the pixel
    _flip(three_shards / "shard-00002.vxs", 128, 0x02)  # label of sample 80: class 2 -> 0
    assert sum(1 for _ in VantixLoader(three_shards, batch_size=10, verify="record")) == 12
    with pytest.raises(VantixError, match=r"shard-00002\.vxs"):
        for _ in VantixLoader(three_shards, batch_size=10, verify="shard"):
            pass
    with pytest.raises(VantixError, match="verify must be"):
        VantixLoader(three_shards, verify="crc")


# --- concurrency and lifecycle -------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    src = write_image_folder(tmp_path_factory.mktemp("src") / "s", 90, size=(16, 16), seed=4)
    out = tmp_path_factory.mktemp("out") / "s.vtx"
    vantix.pack(src, out, size=16, shard_size=30 * 768)
    return out


def _epoch_digest(loader) -> str:
    import hashlib

    h = hashlib.sha256()
    for images, labels in loader:
        h.update(np.asarray(images).tobytes())
        h.update(np.asarray(labels).tobytes())
    return h.hexdigest()


def test_loaders_in_threads_and_processes_agree(small):
    def digests(seed):
        loader = VantixLoader(small, batch_size=7, seed=seed, num_threads=1, prefetch=2)
        return [_epoch_digest(loader) for _ in range(2)]

    want = {seed: digests(seed) for seed in range(4)}
    got: dict[int, list[str]] = {}
    errors = []

    def work(seed):
        try:
            got[seed] = digests(seed)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and got == want
    script = (
        "import sys; sys.modules['torch'] = None\n"  # numpy output, a fast start
        "from vantix import VantixLoader\n"
        "import hashlib, numpy as np\n"
        "seed = int(sys.argv[2])\n"
        "loader = VantixLoader(sys.argv[1], batch_size=7, seed=seed, num_threads=1, prefetch=2)\n"
        "for _ in range(2):\n"
        "    h = hashlib.sha256()\n"
        "    for x, y in loader:\n"
        "        h.update(np.asarray(x).tobytes()); h.update(np.asarray(y).tobytes())\n"
        "    print(h.hexdigest())\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(small), str(s)], stdout=subprocess.PIPE, text=True
        )
        for s in range(4)
    ]
    for s, p in enumerate(procs):
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0 and out.split() == want[s]


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def _settle(threads0: int) -> None:
    gc.collect()
    deadline = time.time() + 30  # rayon workers exit asynchronously after their pool drops
    while _threads() > threads0 and time.time() < deadline:
        time.sleep(0.02)


def test_a_thousand_abandoned_loaders_leak_no_threads_fds_or_memory(small):
    def churn(n: int) -> None:
        for i in range(n):
            loader = VantixLoader(small, batch_size=4, prefetch=2, num_threads=1)
            if i % 10 == 0:  # some closed explicitly, some as context managers
                with loader:
                    next(iter(loader))
                continue
            it = iter(loader)
            held = next(it)  # a live batch while the loader is abandoned
            for k, _ in enumerate(it):
                if k == i % 4:
                    break
            if i % 3 == 0:
                loader.close()
            del it, loader, held

    churn(100)  # warm up: imports, allocator pools
    _settle(0)
    threads0, fds0, rss0 = _threads(), _fds(), _rss_kib()
    churn(1000)
    _settle(threads0)
    threads1, fds1, rss1 = _threads(), _fds(), _rss_kib()
    print(
        f"1000 abandoned loaders: threads {threads0} -> {threads1}, fds {fds0} -> {fds1}, "
        f"RSS {rss0} -> {rss1} KiB"
    )
    assert threads1 <= threads0 and fds1 <= fds0
    assert rss1 - rss0 < 16 * 1024  # a leak of one batch buffer per loader would be ~3 MiB


def test_an_exception_in_the_loop_stops_the_prefetch_thread_and_keeps_the_loader(small):
    loader = VantixLoader(small, batch_size=4, prefetch=3)
    with pytest.raises(RuntimeError):
        for k, _ in enumerate(loader):
            if k == 2:
                raise RuntimeError("training step failed")
    gc.collect()
    assert prefetch_threads_after_join() == 0
    assert sum(1 for _ in loader) == len(loader)  # usable: the next epoch is whole


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    """16 images of 256x256: a random-resized-crop batch of 40,000 takes many seconds."""
    src = write_image_folder(tmp_path_factory.mktemp("src") / "b", 16, size=(256, 256), seed=6)
    out = tmp_path_factory.mktemp("out") / "b.vtx"
    vantix.pack(src, out, size=256)
    return out


def test_ctrl_c_interrupts_a_wait_for_a_batch_and_the_loader_stays_usable(slow, ctrl_c):
    indices = np.arange(40_000) % 16
    loader = VantixLoader(
        slow, batch_size=40_000, indices=indices, random_resized_crop=8, num_threads=1
    )
    it = iter(loader)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            next(it)  # waits for a batch that takes seconds: Ctrl-C must not wait for it
    finally:
        timer.cancel()
    assert loader.state_dict()["samples_seen"] == 0  # interrupted while waiting, not after
    it.close()  # stops the batch in the middle and joins the thread
    assert prefetch_threads_after_join() == 0
    quick = VantixLoader(slow, batch_size=4, shuffle=False)
    assert [len(y) for _, y in quick] == [4, 4, 4, 4]


def test_close_and_context_manager(small):
    with VantixLoader(small, batch_size=8) as loader:
        it = iter(loader)
        images, _ = next(it)
        kept = images.clone()
    assert loader.closed and prefetch_threads_after_join() == 0
    torch.testing.assert_close(images, kept)  # handed-out batches stay valid
    for use in (lambda: iter(loader), lambda: len(loader), lambda: next(it)):
        with pytest.raises(VantixError, match="closed"):
            use()
    loader.close()  # idempotent
    assert "closed" in repr(loader)
