"""The packer and its command line: bad files, strict mode, atomic output, inspect, verify,
and damaged datasets that must fail with a clear VantixError."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, run_cli
from PIL import Image

import vantix
from vantix import VantixDataset, VantixError


def _folder(root: Path, n_per_class=6, size=(48, 36)) -> Path:
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def _add_bad_files(root: Path) -> list[str]:
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "text.jpg").write_text("this is not an image")
    good = (root / "a" / "0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 3])
    return ["a/empty.jpg", "a/text.jpg", "b/truncated.png"]


@pytest.fixture
def src(tmp_path):
    return _folder(tmp_path / "train")


def test_cli_seed_command_and_size_wxh(src, tmp_path):
    run_cli(src, "--size", "24", "-o", tmp_path / "sq.vtx")
    assert VantixDataset(tmp_path / "sq.vtx").shape == (24, 24, 3)
    run_cli(src, "--size", "32x16", "-o", tmp_path / "wh.vtx")  # W x H
    ds = VantixDataset(tmp_path / "wh.vtx")
    assert ds.shape == (16, 32, 3) and len(ds) == 12


def test_cli_help_and_usage_errors(tmp_path):
    out = run_cli("--help").stdout
    for flag in ("--size", "--output", "--mode", "--codec", "--strict", "--shard-size", "inspect"):
        assert flag in out
    bad = run_cli(tmp_path, "--size", "0", "-o", tmp_path / "x.vtx", check=False)
    assert bad.returncode == 2 and "invalid size" in bad.stderr


def test_bad_files_are_skipped_and_reported(src, tmp_path):
    bad = _add_bad_files(src)
    proc = run_cli(src, "--size", "16", "-o", tmp_path / "out.vtx")
    for rel in bad:
        assert str(src / rel) in proc.stderr, proc.stderr
    manifest = json.loads((tmp_path / "out.vtx" / "manifest.json").read_text())
    assert sorted(s["path"] for s in manifest["skipped"]) == sorted(bad)
    assert all(s["reason"] for s in manifest["skipped"])
    assert manifest["num_samples"] == 12
    report = vantix.pack(src, tmp_path / "py.vtx", size=16)
    assert sorted(p for p, _ in report.skipped) == sorted(bad)
    assert report.num_samples == 12


def test_strict_fails_on_first_bad_file_and_leaves_nothing(src, tmp_path):
    _add_bad_files(src)
    out = tmp_path / "out.vtx"
    proc = run_cli(src, "--size", "16", "-o", out, "--strict", check=False)
    assert proc.returncode == 1
    assert "empty.jpg" in proc.stderr and "cannot pack image" in proc.stderr
    with pytest.raises(VantixError, match="empty.jpg"):
        vantix.pack(src, out, size=16, strict=True)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_existing_output_is_refused_unless_overwrite(src, tmp_path):
    out = tmp_path / "out.vtx"
    vantix.pack(src, out, size=16)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(VantixError, match="already exists"):
        vantix.pack(src, out, size=24)
    assert (out / "manifest.json").read_bytes() == before
    vantix.pack(src, out, size=24, overwrite=True)
    assert VantixDataset(out).shape == (24, 24, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.vtx", "train"]


def test_stale_partial_output_of_a_killed_packer_is_cleaned(src, tmp_path):
    # As a killed packer leaves it: its marker, no lock held (test_reliability.py kills real
    # packers at random moments and checks the rerun leaves nothing either).
    stale = tmp_path / ".out.vtx.partial-Zq8xk2PaL0vB"
    stale.mkdir()
    (stale / ".vantix-staging").write_bytes(b"")
    (stale / "shard-00000.vxs.data").write_bytes(b"half")
    # Not proven to be a packer's (no marker, no manifest, not empty): left alone.
    unknown = tmp_path / ".out.vtx.partial-999999999"
    unknown.mkdir()
    (unknown / "mine.txt").write_text("not vantix-pack's")
    vantix.pack(src, tmp_path / "out.vtx", size=16)
    assert not stale.exists()
    assert (unknown / "mine.txt").read_text() == "not vantix-pack's"


def test_shard_size_splits_and_zstd_round_trips(src, tmp_path):
    raw = vantix.pack(src, tmp_path / "raw.vtx", size=16, shard_size=3 * 16 * 16 * 3)
    assert raw.num_shards == 4
    zst = vantix.pack(src, tmp_path / "z.vtx", size=16, codec="zstd", level=5, shard_size="2K")
    assert zst.num_shards > 1
    a, b = VantixDataset(tmp_path / "raw.vtx"), VantixDataset(tmp_path / "z.vtx")
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i][0], b[i][0])
        assert a[i][1] == b[i][1]


def test_inspect_and_verify_commands(src, tmp_path):
    out = tmp_path / "out.vtx"
    vantix.pack(src, out, size=16, codec="zstd")
    text = run_cli("inspect", out).stdout
    assert "samples      12" in text and "zstd (level 3)" in text and "16x16x3" in text
    info = json.loads(run_cli("inspect", out, "--json").stdout)
    assert info["num_samples"] == 12 and [c["count"] for c in info["classes"]] == [6, 6]
    assert info == vantix.inspect(out)
    assert info["compression_ratio"] > 0
    assert "OK: 12 records" in run_cli("verify", out).stdout
    vantix.verify(out)


def _shard(out: Path) -> Path:
    return sorted(out.glob("shard-*.vxs"))[0]


def _flip(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


@pytest.fixture
def packed(src, tmp_path):
    out = tmp_path / "out.vtx"
    vantix.pack(src, out, size=16)
    return out


def test_truncated_shard_fails_at_open_naming_the_file(packed):
    shard = _shard(packed)
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(VantixError, match=r"shard-00000\.vxs.*(truncated|bytes)"):
        VantixDataset(packed)


def test_flipped_header_byte_fails_at_open(packed):
    shard = _shard(packed)
    for offset in (0, 9, 20, 33, 75, 100):
        shutil.copy(shard, shard.with_suffix(".bak"))
        _flip(shard, offset)
        with pytest.raises(VantixError, match=r"shard-00000\.vxs"):
            VantixDataset(packed)
        shutil.move(shard.with_suffix(".bak"), shard)
    VantixDataset(packed)


def test_damaged_manifest_fails_at_open(packed):
    manifest = packed / "manifest.json"
    good = manifest.read_text()
    cases = [
        good[: len(good) // 2],  # truncated JSON
        good.replace('"num_samples": 12', '"num_samples": 13'),
        good.replace('"shard-00000.vxs"', '"../shard-00000.vxs"'),
        good.replace('"format": "vantix"', '"format": "other"'),
        "",
    ]
    for text in cases:
        manifest.write_text(text)
        with pytest.raises(VantixError, match="manifest.json|shard"):
            VantixDataset(packed)
    manifest.unlink()
    with pytest.raises(VantixError, match="manifest.json"):
        VantixDataset(packed)


def test_verify_detects_one_flipped_pixel_byte(packed, tmp_path):
    vantix.verify(packed)
    shard = _shard(packed)
    _flip(shard, os.path.getsize(shard) - 7)  # inside the last record's pixels
    VantixDataset(packed)  # lengths are intact: opening still works...
    with pytest.raises(VantixError, match=r"shard-00000\.vxs.*record 11"):
        vantix.verify(packed)  # ...but verification names the shard and the record
    proc = run_cli("verify", packed, check=False)
    assert proc.returncode == 1 and "shard-00000.vxs" in proc.stderr


def test_not_an_image_folder(tmp_path):
    with pytest.raises(VantixError, match="not a directory"):
        vantix.pack(tmp_path / "missing", tmp_path / "o.vtx")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(VantixError, match="no class folders"):
        vantix.pack(tmp_path / "flat", tmp_path / "o.vtx")
    (tmp_path / "flat" / "empty_class").mkdir()
    with pytest.raises(VantixError, match="no valid file for the classes empty_class"):
        vantix.pack(tmp_path / "flat", tmp_path / "o.vtx")


def _peak_rss_kib(*args) -> int:
    """Peak resident memory of one `vantix-pack` run (its own rusage, via wait4)."""
    proc = subprocess.Popen([str(BIN / "vantix-pack"), *map(str, args)], stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, proc.stderr.read()
    return usage.ru_maxrss


def test_packer_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """4x the images must not mean more memory: records are written as chunks complete."""
    small = _folder(tmp_path / "small", n_per_class=60, size=(160, 120))
    large = _folder(tmp_path / "large", n_per_class=240, size=(160, 120))
    args = ("--size", "128", "-j", "2", "-q")
    rss_small = _peak_rss_kib(small, *args, "-o", tmp_path / "s.vtx")
    rss_large = _peak_rss_kib(large, *args, "-o", tmp_path / "l.vtx")
    packed_growth_kib = (480 - 120) * 128 * 128 * 3 // 1024  # what keeping records would cost
    print(f"peak RSS: {rss_small} KiB (120 images), {rss_large} KiB (480 images)")
    assert rss_large - rss_small < packed_growth_kib / 3, (rss_small, rss_large)


# --- options: one parser, one set of defaults (issue 15) ---------------------------------------

CHOICES = {
    "mode": "'center-crop', 'squash' or 'pad'",
    "interpolation": "'nearest', 'bilinear', 'bicubic', 'lanczos', 'box' or 'hamming'",
    "codec": "'raw' or 'zstd'",
    "filter": "'none', 'left', 'up', 'avg' or 'paeth'",
    "dictionary": "'auto', 'on' or 'off'",
}


@pytest.mark.parametrize("option", sorted(CHOICES))
def test_an_invalid_choice_lists_the_choices_in_python_and_on_the_cli(src, tmp_path, option):
    """The same Rust ``FromStr`` parses the option for ``vantix.pack`` and ``vantix-pack``; its
    error names the option and lists every choice, and nothing is written."""
    want = f'{option} must be one of {CHOICES[option]}, got "bogus"'
    with pytest.raises(VantixError, match=re.escape(want)):
        vantix.pack(src, tmp_path / "py.vtx", size=16, **{"codec": "zstd", option: "bogus"})
    proc = run_cli(
        src, "--size", "16", "-o", tmp_path / "cli.vtx", f"--{option}", "bogus", check=False
    )
    assert proc.returncode == 2 and want in proc.stderr, proc.stderr
    assert not (tmp_path / "py.vtx").exists() and not (tmp_path / "cli.vtx").exists()
    assert f"--{option}" in proc.stderr


def test_an_invalid_verify_lists_the_choices():
    with pytest.raises(VantixError, match="verify must be one of 'none', 'shard' or 'record'"):
        vantix._native.Dataset("missing.vtx", verify="crc")


def test_pack_defaults_are_the_native_ones(src, tmp_path):
    """Every default of ``vantix.pack`` (and ``append``'s shard size and threads) is the one the
    native module exports from ``PackOptions::default()``, which the CLI's flags show too."""
    import inspect

    native = vantix._native.pack_defaults()
    params = inspect.signature(vantix.pack).parameters
    assert set(native) == set(params) - {"src", "dst"}
    for name, value in native.items():
        assert params[name].default == value, name
    append = inspect.signature(vantix.append).parameters
    for name in (
        "shard_size",
        "num_threads",
        "strict",
        "progress",
        "allow_truncated",
        "allow_empty",
    ):
        assert append[name].default == native[name], name
    assert vantix.packing.DEFAULT_MAX_PIXELS == vantix._native.DEFAULT_MAX_PIXELS == 178_956_970
    assert native["max_pixels"] == vantix._native.DEFAULT_MAX_PIXELS
    assert native["shard_size"] == vantix._native.DEFAULT_SHARD_SIZE == 512 << 20
    assert native["max_file_size"] == vantix._native.DEFAULT_MAX_FILE_SIZE == 1 << 30
    assert (native["size"], native["mode"], native["codec"], native["filter"]) == (
        (224, 224),
        "center-crop",
        "raw",
        "up",
    )
    help_text = run_cli("--help").stdout
    for flag, value in (("mode", native["mode"]), ("level", native["level"])):
        assert f"[default: {value}]" in help_text, flag
    # A default pack records the native defaults in its manifest, as the CLI's does.
    vantix.pack(src, tmp_path / "py.vtx", size=16)
    run_cli(src, "--size", "16", "-o", tmp_path / "cli.vtx")
    py, cli = (
        json.loads((tmp_path / n / "manifest.json").read_text()) for n in ("py.vtx", "cli.vtx")
    )
    assert py["pack"]["max_pixels"] == native["max_pixels"]
    assert py["codec"] == cli["codec"]
    keep = lambda p: {k: v for k, v in p.items() if k not in ("vantix_version",)}  # noqa: E731
    assert keep(py["pack"]) == keep(cli["pack"])


def test_one_name_per_option(src, tmp_path):
    """``num_threads``/``--num-threads`` (``-j``, ``--jobs`` kept), ``dictionary``/``--dictionary``
    (``--zstd-dict`` kept), and ``--size WxH`` against ``size=(height, width)``."""
    for flag in ("-j", "--jobs", "--num-threads"):
        run_cli(src, "--size", "16", "-o", tmp_path / "j.vtx", flag, "1", "--overwrite")
    for flag in ("--zstd-dict", "--dictionary"):
        run_cli(
            src,
            "--size",
            "16",
            "-o",
            tmp_path / "d.vtx",
            "--codec",
            "zstd",
            flag,
            "off",
            "--overwrite",
        )
    help_text = run_cli("--help").stdout
    assert "--num-threads" in help_text and "--jobs" in help_text and "--dictionary" in help_text
    assert "(height, width)" in " ".join(help_text.split())
    assert "(height, width)" in " ".join(vantix.pack.__doc__.split())
    run_cli(src, "--size", "32x16", "-o", tmp_path / "wh.vtx")
    vantix.pack(src, tmp_path / "hw.vtx", size=(16, 32))
    assert (
        VantixDataset(tmp_path / "wh.vtx").shape
        == VantixDataset(tmp_path / "hw.vtx").shape
        == (16, 32, 3)
    )
