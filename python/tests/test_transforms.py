"""Augmentation and output conversion in the loader, checked against torchvision.

Each transform's parameters for a sample come from the loader (``_native.transform_params``);
torchvision's functional ops apply the same parameters to the same packed image, and the
results must agree: exactly for crops, padding and flips; within ``RRC_MEAN_TOLERANCE`` levels
(mean absolute difference; no pixel more than 2 levels off) for the resize of a
random-resized-crop, against Pillow's bilinear (measured: at most 0.24 mean, 1 max);
within float rounding for normalisation. The random draws are checked for determinism (threads,
batch size, rank) and, statistically, against torchvision's own sampling rule.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from conftest import write_image_folder
from PIL import Image
from torchvision.transforms import InterpolationMode

import vantix
from vantix import VantixDataset, VantixError, VantixLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from prepare_data import photo_like  # noqa: E402

N_IMAGES = 61
H, W = 40, 52  # packed size
#: Random-resized-crop against Pillow's bilinear resize: mean absolute difference in levels.
RRC_MEAN_TOLERANCE = 1.5
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = write_image_folder(
        tmp_path_factory.mktemp("src") / "train",
        N_IMAGES,
        size=(70, 56),
        image=photo_like,
        name="{i:03d}.png",
    )
    out = tmp_path_factory.mktemp("out")
    raw = vantix.pack(root, out / "raw.vtx", size=(H, W), mode="squash")
    vantix.pack(root, out / "zstd.vtx", size=(H, W), mode="squash", codec="zstd")
    assert raw.num_samples == N_IMAGES
    return {"raw": out / "raw.vtx", "zstd": out / "zstd.vtx"}


@pytest.fixture(params=["raw", "zstd"])
def path(request, packed):
    return packed[request.param]


@pytest.fixture(scope="module")
def chw(packed):
    """Every packed image as a CHW uint8 tensor, by dataset index."""
    ds = VantixDataset(packed["raw"])
    return [torch.from_numpy(ds[i][0]).permute(2, 0, 1).contiguous() for i in range(len(ds))]


def _samples(loader, epoch):
    """``{dataset index: image tensor}`` for one epoch of ``loader``, plus the batches seen."""
    loader.set_epoch(epoch)
    order = loader.epoch_indices(epoch)
    out, k = {}, 0
    for images, _labels in loader:
        for img in images:
            out[int(order[k])] = img.clone()
            k += 1
    assert k == len(order)
    return out


def _reference(img, params, *, resize=None, pil=False):
    """torchvision applying ``params = (top, left, height, width, flip)`` to a CHW uint8 image."""
    top, left, h, w, flip = params
    if resize is None:
        out = F.crop(img, top, left, h, w)  # zero fill outside the image, as RandomCrop's pad
    elif pil:
        pil_img = Image.fromarray(img.permute(1, 2, 0).numpy())
        out = F.resized_crop(pil_img, top, left, h, w, list(resize), InterpolationMode.BILINEAR)
        out = torch.from_numpy(np.array(out)).permute(2, 0, 1)
    else:
        out = F.resized_crop(img, top, left, h, w, list(resize), antialias=True)
    return F.hflip(out) if flip else out


def _diff(a, b):
    d = (a.to(torch.int16) - b.to(torch.int16)).abs().to(torch.float64)
    return float(d.mean()), int(d.max())


# --------------------------------------------------------------------------------------
# exact transforms: random crop with padding, centre crop, flip
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(32, 44), (H, W), (47, 59)])
def test_random_crop_with_padding_and_flip_is_torchvisions(path, chw, size):
    loader = VantixLoader(
        path, batch_size=16, seed=3, random_crop=size, padding=4, horizontal_flip=0.5
    )
    got = _samples(loader, epoch=2)
    assert len(got) == N_IMAGES
    flips = 0
    for i, img in got.items():
        assert tuple(img.shape) == (*size, 3) and img.dtype == torch.uint8
        top, left, h, w, flip = params = loader._native.transform_params(2, i)
        assert (h, w) == size
        # torchvision's RandomCrop.get_params on the padded image: i, j in [0, H + 2p - h].
        assert 0 <= top + 4 <= H + 8 - h and 0 <= left + 4 <= W + 8 - w
        padded = F.pad(chw[i], 4)  # RandomCrop(size, padding=4), literally
        expect = F.crop(padded, top + 4, left + 4, h, w)
        expect = F.hflip(expect) if flip else expect
        assert torch.equal(img.permute(2, 0, 1), expect), f"sample {i}, params {params}"
        assert torch.equal(img.permute(2, 0, 1), _reference(chw[i], params))
        flips += flip
    assert 0 < flips < N_IMAGES


@pytest.mark.parametrize("size", [(20, 25), (21, 52), (H, W), (45, 58)])
def test_center_crop_is_torchvisions(path, chw, size):
    loader = VantixLoader(path, batch_size=10, center_crop=size)
    got = _samples(loader, epoch=0)
    for i, img in got.items():
        assert loader._native.transform_params(0, i)[2:] == (*size, False)
        assert torch.equal(img.permute(2, 0, 1), F.center_crop(chw[i], list(size))), i
    # Deterministic: the same in every epoch.
    assert loader._native.transform_params(0, 5) == loader._native.transform_params(9, 5)


def test_horizontal_flip_is_torchvisions(packed, chw):
    always = _samples(VantixLoader(packed["raw"], batch_size=8, horizontal_flip=1.0), epoch=1)
    for i, img in always.items():
        assert torch.equal(img.permute(2, 0, 1), F.hflip(chw[i]))
    loader = VantixLoader(packed["raw"], batch_size=8, horizontal_flip=0.5, seed=1)
    for i, img in _samples(loader, epoch=4).items():
        flip = loader._native.transform_params(4, i)[4]
        assert torch.equal(img.permute(2, 0, 1), F.hflip(chw[i]) if flip else chw[i])


def test_vertical_flip_is_torchvisions(packed, chw):
    """``vertical_flip`` is ``RandomVerticalFlip(p)`` of the same crop: ``F.vflip`` of what the
    loader gives without it (the flip draws last, so the crop and horizontal flip stay)."""
    always = _samples(VantixLoader(packed["raw"], batch_size=8, vertical_flip=1.0), epoch=1)
    for i, img in always.items():
        assert torch.equal(img.permute(2, 0, 1), F.vflip(chw[i]))
    kw = {"batch_size": 8, "seed": 2, "random_crop": (30, 40), "padding": 3, "horizontal_flip": 0.5}
    for extra in ({}, {"dtype": "float32", "layout": "NCHW"}):
        plain = _samples(VantixLoader(packed["raw"], **kw, **extra), epoch=3)
        flipped = _samples(VantixLoader(packed["raw"], **kw, **extra, vertical_flip=0.5), epoch=3)
        hw = (1, 2) if extra else (0, 1)  # the image's (H, W) axes
        flips = 0
        for i, img in flipped.items():
            same, mirrored = torch.equal(img, plain[i]), torch.equal(img, plain[i].flip(hw[0]))
            assert same or mirrored, f"sample {i}"
            flips += mirrored and not same
        assert 0 < flips < N_IMAGES
    # torchvision's own op on the loader's crop: the full reference.
    loader = VantixLoader(packed["raw"], **kw, vertical_flip=0.5)
    for i, img in _samples(loader, epoch=3).items():
        top, left, h, w, flip = loader._native.transform_params(3, i)
        expect = F.crop(F.pad(chw[i], 3), top + 3, left + 3, h, w)
        expect = F.hflip(expect) if flip else expect
        got = img.permute(2, 0, 1)
        assert torch.equal(got, F.vflip(expect)) or torch.equal(got, expect), f"sample {i}"
    with pytest.raises(VantixError, match="vertical_flip is a probability"):
        VantixLoader(packed["raw"], vertical_flip=2)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_flip_probability(packed, p):
    loader = VantixLoader(packed["raw"], horizontal_flip=p, seed=7)
    n = 20_000
    flips = sum(loader._native.transform_params(e, i)[4] for e in range(4) for i in range(n // 4))
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(flips / n - p) < 5 * sigma, f"{flips / n:.4f} flipped, p = {p}"


# --------------------------------------------------------------------------------------
# random-resized-crop
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(36, 44), (64, 64), (16, 24)])
def test_random_resized_crop_matches_pillow(path, chw, size):
    loader = VantixLoader(
        path, batch_size=16, seed=5, random_resized_crop=size, horizontal_flip=0.5
    )
    got = _samples(loader, epoch=1)
    worst_pil, worst_tensor = (0.0, 0), (0.0, 0)
    for i, img in got.items():
        params = loader._native.transform_params(1, i)
        top, left, h, w, _ = params
        assert 0 <= top <= H - h and 0 <= left <= W - w
        img = img.permute(2, 0, 1)
        pil = _diff(img, _reference(chw[i], params, resize=size, pil=True))
        tensor = _diff(img, _reference(chw[i], params, resize=size))
        worst_pil, worst_tensor = max(worst_pil, pil), max(worst_tensor, tensor)
        assert pil[0] <= RRC_MEAN_TOLERANCE, f"sample {i} {params}: mean/max diff {pil}"
        assert pil[1] <= 2, f"sample {i} {params}: mean/max diff {pil}"
        assert tensor[0] <= 2 * RRC_MEAN_TOLERANCE, f"sample {i} {params}: tensor path {tensor}"
    print(f"RRC {size}: worst (mean, max) vs Pillow {worst_pil}, vs tensor {worst_tensor}")


def test_random_resized_crop_sampling_follows_torchvision(packed):
    """Bounds always hold, and the distribution agrees with torchvision's get_params."""
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    loader = VantixLoader(packed["raw"], random_resized_crop=32, seed=11)
    n = 4000
    ours = np.array([loader._native.transform_params(0, i)[:4] for i in range(n)], dtype=float)
    torch.manual_seed(0)
    img = torch.zeros(3, H, W)
    ref = np.array([T.RandomResizedCrop.get_params(img, scale, ratio) for _ in range(n)], float)
    for params in (ours, ref):
        top, left, h, w = params.T
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + h <= H).all() and (left + w <= W).all()
        # w, h are rounded: bounds hold up to half a pixel per side.
        area = h * w / (H * W)
        assert (area >= scale[0] * 0.8).all() and (area <= 1.0).all()
    our_area, ref_area = (p[:, 2] * p[:, 3] / (H * W) for p in (ours, ref))
    our_ratio, ref_ratio = (np.log(p[:, 3] / p[:, 2]) for p in (ours, ref))
    # Same distribution: means within 4 standard errors, deciles close.
    for a, b in ((our_area, ref_area), (our_ratio, ref_ratio)):
        se = math.sqrt(a.var() / n + b.var() / n)
        assert abs(a.mean() - b.mean()) < 4 * se, (a.mean(), b.mean())
        qa, qb = np.quantile(a, np.linspace(0.1, 0.9, 9)), np.quantile(b, np.linspace(0.1, 0.9, 9))
        assert np.abs(qa - qb).max() < 0.06, (qa, qb)
    # Crops that are accepted draw ratio within the bounds (up to rounding of w and h).
    inside = (our_area > 0.3) & (our_area < 0.99)
    assert (np.abs(our_ratio[inside]) <= math.log(4 / 3) + 0.1).all()


@pytest.mark.parametrize(
    "scale, ratio",
    [((2.0, 3.0), (3 / 4, 4 / 3)), ((2.0, 3.0), (2.0, 3.0)), ((5.0, 5.0), (0.2, 0.5))],
)
def test_random_resized_crop_fallback_is_torchvisions(packed, scale, ratio):
    """When all ten attempts fail, get_params' central crop is deterministic: compare it."""
    loader = VantixLoader(packed["raw"], random_resized_crop=8, scale=scale, ratio=ratio)
    expect = T.RandomResizedCrop.get_params(torch.zeros(3, H, W), list(scale), list(ratio))
    for i in range(20):
        assert loader._native.transform_params(0, i)[:4] == tuple(expect)


# --------------------------------------------------------------------------------------
# normalisation, dtype, layout
# --------------------------------------------------------------------------------------


def test_float32_normalised_nchw_is_to_tensor_then_normalize(path, chw):
    loader = VantixLoader(
        path,
        batch_size=16,
        center_crop=(32, 48),
        mean=MEAN,
        std=STD,
        dtype="float32",
        layout="NCHW",
    )
    for i, img in _samples(loader, epoch=0).items():
        assert img.dtype == torch.float32 and tuple(img.shape) == (3, 32, 48)
        ref = F.center_crop(chw[i], [32, 48])
        ref = F.normalize(F.convert_image_dtype(ref, torch.float32), MEAN, STD)
        torch.testing.assert_close(img, ref, atol=1e-5, rtol=0)
        # Bit for bit ToTensor's arithmetic, too: (x / 255 - mean) / std in float32.
        exact = F.normalize(F.center_crop(chw[i], [32, 48]).float() / 255, MEAN, STD)
        assert torch.equal(img, exact)


def test_float_without_normalisation_is_to_tensor(packed, chw):
    loader = VantixLoader(packed["raw"], batch_size=16, dtype=torch.float32, layout="NCHW")
    for i, img in _samples(loader, epoch=0).items():
        to_tensor = F.to_tensor(chw[i].permute(1, 2, 0).numpy())
        assert torch.equal(img, to_tensor)


def test_float16_rounds_the_float32_result(packed, chw):
    kwargs = dict(random_crop=32, padding=2, horizontal_flip=0.5, mean=MEAN, std=STD, seed=9)
    f16 = VantixLoader(packed["raw"], batch_size=16, dtype=np.float16, **kwargs)
    f32 = VantixLoader(packed["raw"], batch_size=16, dtype="float32", **kwargs)
    a, b = _samples(f16, epoch=3), _samples(f32, epoch=3)
    for i in a:
        assert a[i].dtype == torch.float16 and a[i].shape == (32, 32, 3)
        assert torch.equal(a[i], b[i].half())  # float16 of the float32 value, to nearest
        ref = F.normalize(F.crop(chw[i], *f32._native.transform_params(3, i)[:4]) / 255, MEAN, STD)
        ref = F.hflip(ref) if f32._native.transform_params(3, i)[4] else ref
        torch.testing.assert_close(a[i].permute(2, 0, 1).float(), ref, atol=4e-3, rtol=1e-3)


def test_float_random_resized_crop_is_the_uint8_one_normalised(packed):
    kwargs = dict(batch_size=16, seed=8, random_resized_crop=(30, 34), horizontal_flip=0.5)
    u8 = _samples(VantixLoader(packed["raw"], **kwargs), epoch=1)
    f32 = VantixLoader(packed["raw"], mean=MEAN, std=STD, dtype="float32", layout="NCHW", **kwargs)
    for i, img in _samples(f32, epoch=1).items():
        assert tuple(img.shape) == (3, 30, 34)
        assert torch.equal(img, F.normalize(u8[i].permute(2, 0, 1).float() / 255, MEAN, STD))


@pytest.mark.parametrize(
    "dtype, expect",
    [
        ("uint8", torch.uint8),
        ("float32", torch.float32),
        (np.float16, torch.float16),
        (torch.float32, torch.float32),
        (np.dtype("uint8"), torch.uint8),
    ],
)
def test_dtype_layout_and_channels_last_shapes_and_strides(packed, dtype, expect):
    kwargs = dict(batch_size=5, shuffle=False, center_crop=(24, 36), dtype=dtype)
    nhwc = next(iter(VantixLoader(packed["raw"], **kwargs)))[0]
    nchw = next(iter(VantixLoader(packed["raw"], layout="NCHW", **kwargs)))[0]
    cl = next(iter(VantixLoader(packed["raw"], layout="NCHW", channels_last=True, **kwargs)))[0]
    assert nhwc.dtype == nchw.dtype == cl.dtype == expect
    assert tuple(nhwc.shape) == (5, 24, 36, 3) and nhwc.is_contiguous()
    assert tuple(nchw.shape) == (5, 3, 24, 36) and nchw.is_contiguous()
    assert tuple(cl.shape) == (5, 3, 24, 36)
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert cl.stride() == (24 * 36 * 3, 1, 36 * 3, 3)
    assert torch.equal(nchw, nhwc.permute(0, 3, 1, 2)) and torch.equal(cl, nchw)
    for t in (nhwc, nchw, cl):
        assert t.data_ptr() % 64 == 0  # pool buffers are 64-byte aligned
    # channels_last is a view of the batch buffer, not a copy.
    assert cl.untyped_storage().data_ptr() == cl.data_ptr()


def test_numpy_output_without_torch(packed, monkeypatch):
    import vantix.data

    monkeypatch.setattr(vantix.data, "_TORCH", False)
    kwargs = dict(batch_size=4, shuffle=False, mean=MEAN, std=STD, dtype="float16")
    images, labels = next(iter(VantixLoader(packed["raw"], layout="NCHW", **kwargs)))
    assert isinstance(images, np.ndarray) and images.dtype == np.float16
    assert images.shape == (4, 3, H, W) and images.flags.c_contiguous
    cl, _ = next(iter(VantixLoader(packed["raw"], layout="NCHW", channels_last=True, **kwargs)))
    assert cl.shape == (4, 3, H, W) and cl.strides == (H * W * 3 * 2, 2, W * 3 * 2, 3 * 2)
    np.testing.assert_array_equal(cl, images)


def test_held_float_batches_never_change(packed):
    kwargs = dict(batch_size=8, prefetch=1, random_resized_crop=24, dtype="float32", seed=2)
    loader = VantixLoader(packed["raw"], **kwargs)
    held = [(x, x.clone()) for x, _ in loader]
    for _ in VantixLoader(packed["raw"], **kwargs):
        pass
    for _ in loader:  # the next epoch, other crops
        pass
    for x, copy in held:
        assert torch.equal(x, copy)
    assert len({x.data_ptr() for x, _ in held}) == len(held)


# --------------------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------------------


def test_same_sample_same_augmentation_for_any_threads_batch_size_and_rank(path):
    kwargs = dict(seed=4, random_resized_crop=(30, 30), horizontal_flip=0.5, dtype="float16")
    runs = [
        _samples(VantixLoader(path, batch_size=bs, num_threads=nt, **kwargs), epoch=1)
        for bs, nt in [(8, 1), (13, 2), (8, 2)]
    ]
    by_rank: dict[int, torch.Tensor] = {}
    for rank in range(2):
        loader = VantixLoader(path, batch_size=5, rank=rank, world_size=2, **kwargs)
        by_rank.update(_samples(loader, epoch=1))
    for other in [*runs[1:], by_rank]:
        assert set(other) == set(runs[0])
        for i, img in other.items():
            assert torch.equal(img, runs[0][i]), f"sample {i}"
    # Another epoch: other crops for (nearly) every sample; another seed too.
    epoch2 = _samples(VantixLoader(path, batch_size=8, **kwargs), epoch=2)
    same = sum(torch.equal(epoch2[i], runs[0][i]) for i in epoch2)
    assert same <= 2
    loader = VantixLoader(path, **{**kwargs, "seed": 5})
    other_seed = [loader._native.transform_params(1, i) for i in range(N_IMAGES)]
    loader = VantixLoader(path, **kwargs)
    assert other_seed != [loader._native.transform_params(1, i) for i in range(N_IMAGES)]


def test_plain_options_are_the_plain_fast_path(packed):
    plain = VantixLoader(packed["raw"], batch_size=16, seed=1)
    same = VantixLoader(packed["raw"], batch_size=16, seed=1, dtype="uint8", layout="nhwc")
    assert plain._augment.is_identity and same._augment.is_identity
    a, b = _samples(plain, 0), _samples(same, 0)
    assert all(torch.equal(a[i], b[i]) for i in a)
    ds = VantixDataset(packed["raw"])
    assert all(np.array_equal(a[i].numpy(), ds[i][0]) for i in a)


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"random_crop": 32, "center_crop": 32}, "at most one"),
        ({"random_resized_crop": 32, "center_crop": 32}, "at most one"),
        ({"random_crop": (H + 1, W)}, "larger than the image"),
        ({"random_crop": (H + 9, W), "padding": 4}, "larger than the padded image"),
        ({"padding": 4}, "only used with random_crop"),
        ({"random_crop": 0}, "at least 1"),
        ({"random_crop": (3, 4, 5)}, "int or \\(height, width\\)"),
        ({"random_crop": 2.5}, "int or \\(height, width\\)"),
        ({"random_crop": 8, "padding": -1}, "padding"),
        ({"mean": MEAN, "std": (0.2, 0.0, 0.2), "dtype": "float32"}, "std must not contain 0"),
        ({"mean": MEAN}, "both mean and std"),
        ({"mean": MEAN, "std": STD}, "needs dtype float32, float16 or bfloat16"),
        ({"mean": (1, 2), "std": STD, "dtype": "float32"}, "3 finite numbers"),
        ({"dtype": "float64"}, "dtype must be"),
        ({"dtype": torch.int32}, "dtype must be"),
        ({"layout": "CHW"}, "layout must be"),
        ({"channels_last": True}, "layout='NCHW'"),
        ({"horizontal_flip": 1.5}, "probability"),
        ({"random_resized_crop": 8, "scale": (0.5, 0.1)}, "scale"),
        ({"random_resized_crop": 8, "ratio": (0, 1)}, "ratio"),
    ],
)
def test_invalid_transform_options_raise_vantix_error(packed, kwargs, match):
    with pytest.raises(VantixError, match=match):
        VantixLoader(packed["raw"], **kwargs)
