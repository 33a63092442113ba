"""Contact sheets: `vantix-pack preview`, `VantixDataset.preview`, `VantixLoader.preview` and
`vantix.save_batch_grid` write PNGs of the documented size whose tiles are the right records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image_folder
from PIL import Image

import vantix
from vantix import VantixDataset, VantixError, VantixLoader

BIN = Path(sys.executable).parent
GAP, CAPTION_H = 4, 16  # the layout documented in vantix.preview


def sheet_size(n, h, w, columns, scale):
    rows = -(-n // columns)
    return GAP + columns * (w * scale + GAP), GAP + rows * (h * scale + CAPTION_H + GAP)


def tile(sheet: np.ndarray, k: int, h: int, w: int, columns: int, scale: int) -> np.ndarray:
    """Tile `k` of a sheet, downscaled back to `h x w` (every `scale`-th pixel)."""
    x0 = GAP + (k % columns) * (w * scale + GAP)
    y0 = GAP + (k // columns) * (h * scale + CAPTION_H + GAP)
    block = sheet[y0 : y0 + h * scale, x0 : x0 + w * scale]
    # Nearest-neighbour upscaling: every pixel of a scale x scale block is the same.
    assert (block == np.repeat(np.repeat(block[::scale, ::scale], scale, 0), scale, 1)).all()
    return block[::scale, ::scale]


def caption_strip(sheet: np.ndarray, k: int, h: int, w: int, columns: int, scale: int):
    x0 = GAP + (k % columns) * (w * scale + GAP)
    y0 = GAP + (k // columns) * (h * scale + CAPTION_H + GAP) + h * scale
    return sheet[y0 : y0 + CAPTION_H, x0 : x0 + w * scale]


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("preview")
    src = write_image_folder(tmp / "train", 30, size=(20, 20), num_classes=3, seed=5)
    return vantix.pack(src, tmp / "train.vtx", size=(20, 16)).path  # H 20, W 16


def png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im)


def test_cli_preview_shows_the_named_records(packed, tmp_path):
    out = tmp_path / "sheet.png"
    proc = subprocess.run(
        [BIN / "vantix-pack", "preview", packed, "-o", out, "--indices", "7,0,29,13,2"]
        + ["--columns", "2", "--scale", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    sheet = png(out)
    assert (sheet.shape[1], sheet.shape[0]) == sheet_size(5, 20, 16, 2, 3) == (108, 244)
    assert f"{sheet.shape[1]}x{sheet.shape[0]} pixels" in proc.stdout
    ds = VantixDataset(packed)
    for k, i in enumerate([7, 0, 29, 13, 2]):
        np.testing.assert_array_equal(tile(sheet, k, 20, 16, 2, 3), ds[i][0])
        # A caption is drawn in light text on the dark strip.
        assert caption_strip(sheet, k, 20, 16, 2, 3).max() > 200
    # The 6th place of the grid is empty (background).
    x0, y0 = GAP + 1 * (48 + GAP), GAP + 2 * (60 + CAPTION_H + GAP)
    assert (sheet[y0 : y0 + 60, x0 : x0 + 48] == 32).all()


def test_random_preview_is_reproducible_and_matches_python(packed, tmp_path):
    ds = VantixDataset(packed)
    shown = ds.preview(tmp_path / "py.png", num=9, seed=3)
    assert len(shown) == 9 and len(set(shown.tolist())) == 9
    assert (np.diff(shown) > 0).all()  # index order = class order
    assert shown.tolist() != ds.preview(tmp_path / "other.png", num=9, seed=4).tolist()
    subprocess.run(
        [BIN / "vantix-pack", "preview", packed, "-o", tmp_path / "cli.png"]
        + ["--num", "9", "--seed", "3"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert (tmp_path / "cli.png").read_bytes() == (tmp_path / "py.png").read_bytes()
    sheet = png(tmp_path / "py.png")
    scale = 6  # the smallest factor making 16-pixel-wide tiles at least 96 pixels wide
    assert (sheet.shape[1], sheet.shape[0]) == sheet_size(9, 20, 16, 3, scale)
    for k, i in enumerate(shown):
        np.testing.assert_array_equal(tile(sheet, k, 20, 16, 3, scale), ds[int(i)][0])
    # Asking for more records than there are shows them all.
    assert ds.preview(tmp_path / "all.png", num=1000, scale=1).tolist() == list(range(30))


def test_loader_preview_shows_the_augmented_batch(packed, tmp_path):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    loader = VantixLoader(
        packed,
        batch_size=8,
        seed=11,
        horizontal_flip=1.0,
        mean=mean,
        std=std,
        dtype="float32",
        layout="NCHW",
    )
    shown = loader.preview(tmp_path / "batch.png", columns=4, scale=2)
    assert loader.epoch == 0  # previewing does not consume an epoch
    np.testing.assert_array_equal(shown, loader.epoch_indices(0)[:8])
    sheet = png(tmp_path / "batch.png")
    assert (sheet.shape[1], sheet.shape[0]) == sheet_size(8, 20, 16, 4, 2)
    ds = loader.dataset
    for k, i in enumerate(shown):
        flipped = ds[int(i)][0][:, ::-1]  # horizontal_flip=1.0: every image mirrored
        got = tile(sheet, k, 20, 16, 4, 2).astype(int)
        assert np.abs(got - flipped).max() <= 1  # Normalize undone, rounded back to uint8
    # The first batch of the first pass is the one shown.
    images, labels = next(iter(loader))
    assert images.shape == (8, 3, 20, 16)
    first = vantix.preview.batch_to_uint8(images, mean, std)
    for k in range(8):
        np.testing.assert_array_equal(tile(sheet, k, 20, 16, 4, 2), first[k])


def test_save_batch_grid_layouts_and_dtypes(packed, tmp_path):
    ds = VantixDataset(packed)
    nhwc = np.stack([ds[i][0] for i in range(6)])
    labels = torch.tensor([ds[i][1] for i in range(6)])
    size = vantix.save_batch_grid(nhwc, labels, tmp_path / "u8.png", classes=ds.classes, scale=1)
    assert size == sheet_size(6, 20, 16, 3, 1)
    a = png(tmp_path / "u8.png")
    nchw_float = torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 255
    vantix.save_batch_grid(nchw_float, labels, tmp_path / "f.png", classes=ds.classes, scale=1)
    np.testing.assert_array_equal(png(tmp_path / "f.png"), a)
    for k in range(6):
        np.testing.assert_array_equal(tile(a, k, 20, 16, 3, 1), nhwc[k])
    # Grey images are shown as grey.
    grey = nhwc[:, :, :, :1]
    vantix.save_batch_grid(grey, labels, tmp_path / "g.png", scale=1)
    g = png(tmp_path / "g.png")
    np.testing.assert_array_equal(tile(g, 2, 20, 16, 3, 1), np.repeat(grey[2], 3, axis=2))


def test_preview_errors_name_the_problem(packed, tmp_path):
    ds = VantixDataset(packed)
    with pytest.raises(VantixError, match=r"train\.vtx: record 30 is out of range"):
        ds.preview(tmp_path / "x.png", indices=[1, 30])
    with pytest.raises(VantixError, match="no-such-dir"):
        ds.preview(tmp_path / "no-such-dir" / "x.png", num=2)
    proc = subprocess.run(
        [BIN / "vantix-pack", "preview", packed, "-o", tmp_path / "y.png", "--indices", "99"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "record 99 is out of range" in proc.stderr
    assert not (tmp_path / "y.png").exists()
    with pytest.raises(VantixError, match="3 images but 2 labels"):
        vantix.save_batch_grid(np.zeros((3, 4, 4, 3), np.uint8), [0, 1], tmp_path / "z.png")
    with pytest.raises(VantixError, match="1, 3 or 4 channels"):
        vantix.save_batch_grid(np.zeros((3, 5, 5, 2), np.uint8), [0, 1, 2], tmp_path / "z.png")
    with pytest.raises(VantixError, match="both mean and std"):
        vantix.save_batch_grid(np.zeros((1, 4, 4, 3)), [0], tmp_path / "z.png", mean=(0.5,))
