"""Packing on many machines (`--part I/N` then `merge`) gives exactly a single-machine pack;
appending adds new shards and keeps the old records' indices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

import vantix
from vantix import VantixDataset, VantixError, VantixLoader

SIZE = 12


def _image(rng: np.random.Generator, path: Path) -> None:
    w, h = (int(v) for v in rng.integers(10, 40, 2))
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if path.suffix == ".jpg":
        Image.fromarray(arr).save(path, quality=90)
    else:
        Image.fromarray(arr).save(path)


def _write_tree(root: Path) -> Path:
    """Classes of 20, 2 and 17 images (JPEG and PNG, varied sizes) plus one unreadable file:
    40 source files."""
    rng = np.random.default_rng(7)
    for cls, n in (("ant", 20), ("bee", 2), ("cat", 17)):
        d = root / cls / "sub"
        d.mkdir(parents=True)
        for i in range(n):
            _image(rng, (root / cls if i % 3 else d) / f"{i:02d}.{'jpg' if i % 2 else 'png'}")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return _write_tree(tmp_path_factory.mktemp("parts") / "train")


def _records(path: Path) -> tuple[np.ndarray, np.ndarray]:
    ds = VantixDataset(path)
    images = np.stack([np.asarray(ds[i][0]) for i in range(len(ds))])
    labels = np.array([ds[i][1] for i in range(len(ds))])
    return images, labels


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _pack_parts(tree: Path, out: Path, n: int, codec: str, cli: bool) -> list[Path]:
    parts = []
    for i in range(n):
        p = out / f"part-{i:03d}.vtx"
        if cli:
            run_cli(tree, "--size", SIZE, "--codec", codec, "-o", p, "--part", f"{i}/{n}", "-q")
        else:
            vantix.pack(tree, p, size=SIZE, codec=codec, part=(i, n), shard_size=2000)
        parts.append(p)
    return parts


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_merged_parts_are_identical_to_a_single_pack(tree, tmp_path, codec):
    whole = tmp_path / "whole.vtx"
    vantix.pack(tree, whole, size=SIZE, codec=codec)
    want_images, want_labels = _records(whole)
    want = _manifest(whole)
    assert want["num_samples"] == 39 and len(want["skipped"]) == 1
    # 3 parts through the CLI; 7 (smaller than no class but bigger than "bee"); 45 > 40 files,
    # so some parts are empty.
    for n, cli in ((3, True), (7, False), (45, False)):
        out = tmp_path / f"n{n}"
        out.mkdir()
        parts = _pack_parts(tree, out, n, codec, cli)
        sizes = [VantixDataset(p).num_samples for p in parts]
        assert sum(sizes) == 39
        if n == 45:
            assert 0 in sizes
        m0 = _manifest(parts[0])
        assert m0["part"]["count"] == n and m0["classes"] == want["classes"]
        assert m0["pack"]["source_list_xxh3"] == want["pack"]["source_list_xxh3"]
        merged = out / "train.vtx"
        if cli:
            run_cli("merge", *reversed(parts), "-o", merged, "-q")
            run_cli("verify", merged)
        else:
            report = vantix.merge(parts[::-1], merged)
            assert report.num_samples == 39 and len(report.skipped) == 1
            vantix.verify(merged)
        images, labels = _records(merged)
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)
        got = _manifest(merged)
        for key in ("classes", "num_samples", "skipped", "codec", "width", "height"):
            assert got[key] == want[key], key
        # The version is the newest of the parts' (a zstd dictionary, format 3, is trained per
        # part, and only for parts of at least 32 small records): the pixels are what matter.
        assert got["version"] == max(_manifest(p)["version"] for p in parts)
        assert "part" not in got
        assert {**got["pack"], "source": ""} == {**want["pack"], "source": ""}
        assert (merged / "sources.json").read_bytes() == (whole / "sources.json").read_bytes()
        ds = VantixDataset(merged)
        assert ds.classes == want["classes"] and ds.num_samples == 39
        # Parts are copied, not moved: each is still a valid dataset.
        vantix.verify(parts[-1])


def test_merge_keeps_each_parts_zstd_dictionary(tmp_path):
    """Small zstd records get a dictionary per part (format 3) when the part has at least 32
    records; a part with fewer has none (format 2). The merged dataset holds both kinds of
    shard, reads back exactly what a single pack reads, and appending to it reuses a dictionary
    so every new shard carries one."""
    root = tmp_path / "train"
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:16, 0:16]
    for cls, good, broken in (("a", 33, 0), ("b", 30, 3)):
        (root / cls).mkdir(parents=True)
        for i in range(good):
            base = (xx * (4 + i % 5) + yy * (3 + i % 7)) % 256
            arr = np.stack([base, base[::-1], (base + 40 * i) % 256], -1).astype(np.int16)
            arr = np.clip(arr + rng.integers(-3, 4, arr.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i:02d}.png")
        for i in range(broken):
            (root / cls / f"zz{i}.png").write_bytes(b"not a png")
    whole = tmp_path / "whole.vtx"
    vantix.pack(root, whole, size=SIZE, codec="zstd")
    parts = _pack_parts(root, tmp_path, 2, "zstd", cli=False)
    # Part 0 is class a (33 records: dictionary), part 1 class b (30 packed: none).
    assert [_manifest(p)["version"] for p in parts] == [3, 2]
    merged = tmp_path / "merged.vtx"
    vantix.merge(parts, merged)
    vantix.verify(merged)
    assert _manifest(merged)["version"] == 3
    for got, want in zip(_records(merged), _records(whole)):
        np.testing.assert_array_equal(got, want)
    # Append: the new shard takes the dataset's dictionary (from part 0's shards).
    extra = tmp_path / "extra"
    (extra / "a").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(extra / "a" / "new.png")
    before = _manifest(merged)["shards"]
    vantix.append(extra, merged)
    after = _manifest(merged)
    assert after["version"] == 3 and after["num_samples"] == 64
    new_shard = merged / after["shards"][len(before)]["file"]
    assert int.from_bytes(new_shard.read_bytes()[8:12], "little") == 3
    vantix.verify(merged)
    image, label = VantixDataset(merged)[63]
    assert label == 0 and np.asarray(image).shape == (SIZE, SIZE, 3)


def test_merge_refuses_parts_that_do_not_make_one_pack(tree, tmp_path):
    parts = _pack_parts(tree, tmp_path, 3, "raw", cli=False)
    out = tmp_path / "out.vtx"
    with pytest.raises(VantixError, match=r"1 of the 3 parts is missing: 1/3"):
        vantix.merge([parts[0], parts[2]], out)
    with pytest.raises(VantixError, match=r"both part 2/3"):
        vantix.merge([*parts, parts[2]], out)
    other = tmp_path / "other.vtx"
    vantix.pack(tree, other, size=SIZE + 1, part=(1, 3))
    with pytest.raises(
        VantixError,
        match=r"other\.vtx.*not a part of the same pack.*(width|height) is 12 there and 13 here",
    ):
        vantix.merge([parts[0], other, parts[2]], out)
    four = tmp_path / "four.vtx"
    vantix.pack(tree, four, size=SIZE, part=(1, 4))
    with pytest.raises(VantixError, match=r"four\.vtx.*different packs"):
        vantix.merge([parts[0], four, parts[2]], out)
    proc = run_cli("merge", parts[0], parts[1], "-o", out, check=False)
    assert proc.returncode == 1 and "missing: 2/3" in proc.stderr
    assert not out.exists()
    vantix.merge(parts, out)
    with pytest.raises(VantixError, match="already exists"):
        vantix.merge(parts, out)
    vantix.merge(parts, out, overwrite=True)


def test_part_argument_is_checked(tree, tmp_path):
    for bad, words in (("3/3", "numbered from 0"), ("0/0", "at least 1"), ("x", "I/N")):
        proc = run_cli(tree, "--size", SIZE, "-o", tmp_path / "p.vtx", "--part", bad, check=False)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    with pytest.raises(VantixError, match="numbered from 0"):
        vantix.pack(tree, tmp_path / "p.vtx", size=SIZE, part=(2, 2))
    assert "I counts from 0" in run_cli("--help").stdout.replace("\n", " ")


def _shard_state(path: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(path.iterdir())
        if p.name.startswith("shard-")
    }


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_append_adds_new_shards_and_keeps_old_indices(tmp_path, codec):
    src = _write_tree(tmp_path / "train")
    ds_path = tmp_path / "train.vtx"
    vantix.pack(src, ds_path, size=SIZE, codec=codec, shard_size=3000)
    old_images, old_labels = _records(ds_path)
    old_shards = _shard_state(ds_path)
    old_sources = json.loads((ds_path / "sources.json").read_text())

    rng = np.random.default_rng(3)
    for name in ("bee/new0.png", "ant/sub/new1.jpg", "bee/new2.jpg"):
        _image(rng, src / name)
    (src / "zebra").mkdir()
    _image(rng, src / "zebra" / "z.png")
    proc = run_cli("append", src, "-o", ds_path, check=False)
    assert proc.returncode == 1 and "zebra" in proc.stderr and "--new-classes" in proc.stderr
    assert _shard_state(ds_path) == old_shards

    run_cli("append", src, "-o", ds_path, "--new-classes", "--shard-size", "1", "-q")
    assert _shard_state(ds_path).items() >= old_shards.items()  # old shards: same bytes, mtime
    ds = VantixDataset(ds_path)
    assert ds.classes == ["ant", "bee", "cat", "zebra"]  # "zebra" sorts last: ImageFolder's too
    assert len(ds) == 39 + 4
    images, labels = _records(ds_path)
    np.testing.assert_array_equal(images[:39], old_images)
    np.testing.assert_array_equal(labels[:39], old_labels)
    np.testing.assert_array_equal(labels[39:], [0, 1, 1, 3])  # ImageFolder order of new files
    sources = json.loads((ds_path / "sources.json").read_text())
    assert sources[:39] == old_sources
    assert sources[39:] == ["ant/sub/new1.jpg", "bee/new0.png", "bee/new2.jpg", "zebra/z.png"]
    # Appended records are what a fresh pack of the grown tree makes of the same files.
    fresh = tmp_path / "fresh.vtx"
    vantix.pack(src, fresh, size=SIZE, codec=codec)
    fresh_sources = json.loads((fresh / "sources.json").read_text())
    fresh_ds = VantixDataset(fresh)
    for i, name in enumerate(sources[39:], start=39):
        np.testing.assert_array_equal(images[i], fresh_ds[fresh_sources.index(name)][0])
    vantix.verify(ds_path)
    m = _manifest(ds_path)
    assert m["appends"][0]["first_index"] == 39 and m["appends"][0]["num_samples"] == 4

    loader = VantixLoader(ds_path, batch_size=8, shuffle=True, seed=1)
    seen = np.concatenate([np.asarray(y) for _, y in loader])
    assert sorted(seen.tolist()) == sorted(labels.tolist())

    # Nothing new: nothing changes.
    before = {p.name: p.stat().st_mtime_ns for p in ds_path.iterdir()}
    report = vantix.append(src, ds_path)
    assert report.num_samples == 0
    assert {p.name: p.stat().st_mtime_ns for p in ds_path.iterdir()} == before


def test_append_to_a_part_is_refused(tree, tmp_path):
    part = tmp_path / "p.vtx"
    vantix.pack(tree, part, size=SIZE, part=(0, 2))
    with pytest.raises(VantixError, match="merge the parts"):
        vantix.append(tree, part)
