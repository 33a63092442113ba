"""Grayscale and RGBA datasets (``channels=1`` / ``4``) and the EXIF orientation option.

References are Pillow's and torchvision's: ``Image.open(p).convert("L" | "RGB" | "RGBA")`` (after
``ImageOps.exif_transpose`` when the option is on), then ``Resize`` + ``CenterCrop`` on the PIL
image. Pixel differences are the mean and largest absolute difference in levels (0-255).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torchvision.transforms as T
from PIL import Image, ImageOps

import vantix
from vantix import VantixDataset, VantixError, VantixLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from prepare_data import photo_like  # noqa: E402

BIN = Path(sys.executable).parent
MODES = {1: "L", 3: "RGB", 4: "RGBA"}
SIZE = 24


def _diff(got: np.ndarray, ref: np.ndarray) -> tuple[float, int]:
    assert got.shape == ref.shape, f"shape {got.shape} != reference {ref.shape}"
    d = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    return float(d.mean()), int(d.max())


def _reference(path: Path, mode: str, size=SIZE, exif: bool = False) -> np.ndarray:
    img = Image.open(path)
    if exif:
        img = ImageOps.exif_transpose(img)
    img = T.CenterCrop(size)(T.Resize(size)(img.convert(mode)))
    arr = np.asarray(img)
    return arr[..., None] if arr.ndim == 2 else arr


def _records(out: Path) -> dict[str, np.ndarray]:
    ds = VantixDataset(out)
    sources = json.loads((out / "sources.json").read_text())
    return {s: ds[i][0] for i, s in enumerate(sources)}


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """Colour, grey, RGBA, grey+alpha, palette+transparency and JPEG sources, 2 classes."""
    root = tmp_path_factory.mktemp("mixed") / "train"
    rng = np.random.default_rng(5)
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    rgb = photo_like(rng, 61, 47)
    Image.fromarray(rgb).save(root / "a" / "rgb.png")
    Image.fromarray(photo_like(rng, 40, 52)).save(root / "a" / "photo.jpg", quality=92)
    Image.fromarray(rgb[..., 1]).save(root / "a" / "grey.png")
    # Alpha: a smooth ramp with a fully transparent and a fully opaque band.
    alpha = np.tile(np.linspace(0, 255, 61).astype(np.uint8), (47, 1))
    alpha[:8] = 0
    alpha[-8:] = 255
    Image.fromarray(np.dstack([photo_like(rng, 61, 47), alpha]), "RGBA").save(root / "b" / "a.png")
    Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA").save(root / "b" / "la.png")
    pal = Image.fromarray(photo_like(rng, 33, 45)).quantize(16)
    pal.info["transparency"] = 3
    pal.save(root / "b" / "pal.png", transparency=3)
    return root


@pytest.fixture(scope="module")
def packed(mixed_folder, tmp_path_factory) -> dict[int, Path]:
    out = tmp_path_factory.mktemp("packed")
    return {
        c: vantix.pack(mixed_folder, out / f"c{c}.vtx", size=SIZE, channels=c, num_threads=1).path
        for c in (1, 3, 4)
    }


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_pack_matches_pillow_convert_then_torchvision(mixed_folder, packed, channels):
    out = Path(packed[channels])
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["channels"], manifest["channel_order"]) == (channels, MODES[channels])
    assert manifest["version"] == 1  # no format version bump for grey or RGBA records
    records = _records(out)
    assert len(records) == 6
    for rel, got in records.items():
        assert got.shape == (SIZE, SIZE, channels), rel
        ref = _reference(mixed_folder / rel, MODES[channels])
        if channels == 4:
            # Compare what is seen: colours weighted by alpha (where alpha is small, Pillow's
            # own division by alpha amplifies one level of rounding into many).
            mean_a, max_a = _diff(got[..., 3], ref[..., 3])
            assert mean_a <= 0.05 and max_a <= 2, f"{rel} alpha: mean {mean_a:.3f}, max {max_a}"
            a = ref[..., 3:].astype(np.float64) / 255
            seen = np.abs(got[..., :3] * a - ref[..., :3] * a)
            mean, worst = float(seen.mean()), float(seen.max())
            opaque = ref[..., 3] == 255
            if not rel.endswith(".jpg"):
                opaque_mean, _ = _diff(got[..., :3][opaque], ref[..., :3][opaque])
                assert opaque_mean <= 0.05, f"{rel}: opaque pixels mean {opaque_mean:.3f}"
        else:
            mean, worst = _diff(got, ref)
        if channels == 4 and rel == "b/a.png":
            # The bound sees the difference premultiplication makes: a straight resize of each
            # channel (what a naive RGBA resize does) is far outside it.
            rgba = np.asarray(Image.open(mixed_folder / rel).convert("RGBA"))
            planes = [Image.fromarray(np.ascontiguousarray(rgba[..., k])) for k in range(4)]
            straight = np.dstack(
                [np.asarray(T.CenterCrop(SIZE)(T.Resize(SIZE)(p))) for p in planes]
            )
            assert float(np.abs(straight[..., :3] * a - ref[..., :3] * a).mean()) > 0.2
        lossy = rel.endswith(".jpg")
        msg = f"{rel} ({MODES[channels]}): mean {mean:.4f}, max {worst}"
        if lossy:
            assert mean <= 1.5 and worst <= 16, msg
        else:
            assert mean <= 0.05 and worst <= 2, msg


def test_conversions_are_pillows_exactly(tmp_path):
    """Without a resize (squash to the source size) the records are ``convert(mode)`` exactly."""
    rng = np.random.default_rng(1)
    root = tmp_path / "src"
    (root / "x").mkdir(parents=True)
    # Every channel value in random combinations, with random alpha.
    rgba = rng.integers(0, 256, (64, 96, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "x" / "rgba.png")
    Image.fromarray(rgba[..., :3]).save(root / "x" / "rgb.png")
    Image.fromarray(rgba[..., 0]).save(root / "x" / "grey.png")
    Image.fromarray(rgba[..., :3]).quantize(200).save(root / "x" / "pal.png")
    for c, mode in MODES.items():
        out = vantix.pack(root, tmp_path / f"{c}.vtx", size=(64, 96), mode="squash", channels=c)
        for rel, got in _records(Path(out.path)).items():
            ref = np.asarray(Image.open(root / rel).convert(mode)).reshape(64, 96, c)
            assert np.array_equal(got, ref), f"{rel} as {mode}: {_diff(got, ref)}"


def test_pad_colour_for_grey_and_rgba(tmp_path):
    root = tmp_path / "src"
    (root / "x").mkdir(parents=True)
    Image.new("RGB", (40, 20), (10, 200, 30)).save(root / "x" / "wide.png")
    for c, pad in ((1, [round(0.299 * 250 + 0.587 * 100 + 0.114 * 5)]), (4, [250, 100, 5, 255])):
        out = vantix.pack(
            root, tmp_path / f"{c}.vtx", size=20, mode="pad", pad_color=(250, 100, 5), channels=c
        )
        img = VantixDataset(out.path)[0][0]
        assert img.shape == (20, 20, c)
        assert img[0, 0].tolist() == pad
        inside = np.asarray(Image.new("RGB", (1, 1), (10, 200, 30)).convert(MODES[c]))
        assert img[10, 10].tolist() == inside.reshape(-1).tolist()


@pytest.mark.parametrize("channels", [1, 4])
def test_loader_layouts_and_dtypes(packed, channels):
    out = packed[channels]
    ds = VantixDataset(out)
    assert ds.shape == (SIZE, SIZE, channels)
    ref = np.stack([ds[i][0] for i in range(len(ds))])
    mean = [0.2, 0.4, 0.6, 0.8][:channels]
    std = [0.5, 0.25, 0.2, 0.1][:channels]
    for layout in ("NHWC", "NCHW"):
        for dtype in ("uint8", "float32", "float16"):
            norm = {} if dtype == "uint8" else {"mean": mean, "std": std}
            loader = VantixLoader(
                out, batch_size=len(ds), shuffle=False, dtype=dtype, layout=layout, **norm
            )
            images, labels = next(iter(loader))
            images = images.numpy()
            want = ref.astype(np.float32)
            if dtype != "uint8":
                want = (want / 255 - np.float32(mean)) / np.float32(std)
            if layout == "NCHW":
                want = want.transpose(0, 3, 1, 2)
            assert images.shape == want.shape and images.dtype == np.dtype(dtype)
            tol = 1e-2 if dtype == "float16" else 1e-5
            np.testing.assert_allclose(images.astype(np.float32), want, rtol=tol, atol=tol)
            loader.close()
    # Crops and flips: a centre crop of 16 with every image flipped, NCHW.
    loader = VantixLoader(
        out, batch_size=len(ds), shuffle=False, center_crop=16, horizontal_flip=1.0, layout="NCHW"
    )
    images, _ = next(iter(loader))
    want = ref[:, 4:20, 4:20][:, :, ::-1].transpose(0, 3, 1, 2)
    assert np.array_equal(images.numpy(), want)
    loader.close()
    # Random crops and random-resized crops give the packed channel count.
    for kw in ({"random_crop": 20, "padding": 2}, {"random_resized_crop": 12}):
        loader = VantixLoader(out, batch_size=4, dtype="float32", layout="NCHW", **kw)
        images, _ = next(iter(loader))
        assert tuple(images.shape)[:2] == (4, channels)
        loader.close()


@pytest.mark.parametrize("channels", [1, 4])
def test_normalisation_needs_one_value_per_channel(packed, channels):
    out = packed[channels]
    imagenet = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    with pytest.raises(VantixError, match=rf"mean must be {channels} finite number"):
        VantixLoader(out, dtype="float32", **imagenet)
    with pytest.raises(VantixError, match="std must be"):
        VantixLoader(out, dtype="float32", mean=[0.5] * channels, std=[0.5, 0.5])
    # The native transform refuses it too (a caller that bypasses the Python checks).
    t = vantix._native.Transform(mean=[0.5] * 3, std=[0.5] * 3, dtype="float32")
    with pytest.raises(VantixError, match=rf"mean has 3 values but the images have {channels}"):
        t.validate(SIZE, SIZE, channels)
    # One number is used for every channel; no implicit ImageNet statistics without mean/std.
    with VantixLoader(out, batch_size=2, shuffle=False, dtype="float32", mean=0.5, std=0.5) as ld:
        images, _ = next(iter(ld))
        first = VantixDataset(out)[0][0].astype(np.float32)
        np.testing.assert_allclose(images[0].numpy(), (first / 255 - 0.5) / 0.5, atol=1e-6)
    with VantixLoader(out, batch_size=2, shuffle=False, dtype="float32") as ld:
        images, _ = next(iter(ld))
        np.testing.assert_allclose(images[0].numpy(), first / 255, atol=1e-6)


def test_inspect_verify_and_previews(packed, tmp_path):
    for c in (1, 4):
        out = packed[c]
        summary = vantix.inspect(out)
        assert (summary["channels"], summary["channel_order"]) == (c, MODES[c])
        vantix.verify(out)
        ds = VantixDataset(out)
        png = tmp_path / f"sheet{c}.png"
        shown = ds.preview(png, indices=[0, 1], columns=2, scale=1)
        assert list(shown) == [0, 1]
        sheet = np.asarray(Image.open(png).convert("RGB")).astype(int)
        tile = sheet[4 : 4 + SIZE, 4 : 4 + SIZE]
        img = ds[0][0].astype(int)
        if c == 1:  # grey shows as grey
            assert (tile == img).all()
        else:  # RGBA over the checkerboard; opaque pixels as they are
            opaque = img[..., 3] == 255
            assert (tile[opaque] == img[..., :3][opaque]).all()
            grey = np.where(
                ((np.arange(SIZE)[:, None] // 8 + np.arange(SIZE) // 8) % 2) == 0, 204, 153
            )
            a = img[..., 3:]
            want = (img[..., :3] * a + grey[..., None] * (255 - a) + 127) // 255
            assert (tile == want).all()
        with VantixLoader(
            out, batch_size=4, dtype="float32", layout="NCHW", mean=0.5, std=0.5
        ) as ld:
            assert len(ld.preview(tmp_path / f"batch{c}.png")) == 4
        proc = subprocess.run(
            [str(BIN / "vantix-pack"), "preview", str(out), "-o", str(tmp_path / "cli.png")],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr


def test_cli_channels_flag(mixed_folder, tmp_path):
    run = [str(BIN / "vantix-pack"), str(mixed_folder), "--size", "16", "--quiet"]
    proc = subprocess.run(
        [*run, "--channels", "1", "-o", str(tmp_path / "g.vtx")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert VantixDataset(tmp_path / "g.vtx").shape == (16, 16, 1)
    proc = subprocess.run(
        [*run, "--channels", "2", "-o", str(tmp_path / "x.vtx")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "--channels" in proc.stderr
    assert not (tmp_path / "x.vtx").exists()
    with pytest.raises(VantixError, match="channels must be 1"):
        vantix.pack(mixed_folder, tmp_path / "y.vtx", size=16, channels=2)


def test_old_manifest_rules(packed, tmp_path):
    """Manifest::parse accepts exactly L/1, RGB/3, RGBA/4."""
    import shutil

    out = tmp_path / "copy.vtx"
    shutil.copytree(packed[4], out)
    manifest = json.loads((out / "manifest.json").read_text())
    for order, channels in (("RGB", 4), ("L", 3), ("BGR", 3), ("RGBA", 1)):
        bad = dict(manifest, channel_order=order, channels=channels)
        (out / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(VantixError, match="channel order"):
            VantixDataset(out)


# --------------------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oriented_folder(tmp_path_factory) -> Path:
    """One non-square photo saved with each EXIF orientation 1-8, as JPEG (large enough for
    the DCT-scaled decode), PNG (``eXIf``), TIFF (the Orientation tag) and lossless WebP."""
    root = tmp_path_factory.mktemp("exif") / "train"
    (root / "x").mkdir(parents=True)
    pixels = photo_like(np.random.default_rng(9), 128, 80)
    for k in range(1, 9):
        img = Image.fromarray(pixels)
        exif = Image.Exif()
        exif[0x0112] = k
        img.save(root / "x" / f"o{k}.jpg", exif=exif, quality=95)
        img.save(root / "x" / f"o{k}.png", exif=exif)
        img.save(root / "x" / f"o{k}.tif", exif=exif)
        img.save(root / "x" / f"o{k}.webp", exif=exif, lossless=True)
    return root


@pytest.mark.parametrize("exact_decode", [False, True])
def test_exif_orientation_matches_exif_transpose(oriented_folder, tmp_path, exact_decode):
    size = 16  # 128x80 landscape -> 25x16, crop the width; rotated 80x128 -> 16x25, crop the height
    on = vantix.pack(
        oriented_folder,
        tmp_path / "on.vtx",
        size=size,
        exif_orientation=True,
        exact_decode=exact_decode,
    )
    off = vantix.pack(oriented_folder, tmp_path / "off.vtx", size=size, exact_decode=exact_decode)
    assert json.loads((Path(on.path) / "manifest.json").read_text())["pack"]["exif_orientation"]
    assert (
        "exif_orientation" not in json.loads((Path(off.path) / "manifest.json").read_text())["pack"]
    )
    got_on, got_off = _records(Path(on.path)), _records(Path(off.path))
    report = []
    for rel in sorted(got_on):
        path = oriented_folder / rel
        lossy = rel.endswith(".jpg")
        for got, exif in ((got_on[rel], True), (got_off[rel], False)):
            ref = _reference(path, "RGB", size=size, exif=exif)
            mean, worst = _diff(got, ref)
            report.append(f"{rel} exif={exif}: mean {mean:.3f} max {worst}")
            ok = mean <= 1.5 if lossy else (mean <= 0.05 and worst <= 2)
            assert ok, report[-1]
        k = int(Path(rel).stem[1:])
        if rel.endswith(".tif"):
            # Pillow applies a TIFF's orientation when it loads the file, so Vantix always does.
            assert np.array_equal(got_on[rel], got_off[rel]), report[-2:]
        elif k != 1:  # the option really changed the pixels
            assert _diff(got_on[rel], got_off[rel])[0] > 5, report[-2:]
