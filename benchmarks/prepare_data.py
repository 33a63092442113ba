"""Write benchmark image datasets as torchvision ImageFolder trees: ROOT/<class>/<file>.

Profiles (``--profile``), each written to ``OUT/<profile>/train``:

* ``cifar-like``: 32x32 PNG, CIFAR-10 class names. With ``--cifar-root`` at a
  torchvision CIFAR-10 copy (``cifar-10-batches-py``) the real images are written; if it
  is missing or unreadable they are generated. Nothing is ever downloaded.
* ``imagenet-std``: JPEG q90 around 500x375 with ImageNet-like variety (long side
  300-640, aspect 1:1 to 16:9, one in five portrait).
* ``4k-medical``: radiograph-like images with a 2048-px long side, stored as 8-bit
  grayscale (mode L): 80% JPEG q95, 20% PNG.
* ``4k-photo``: colour photographs with a 2048-px long side (aspect 1:1 to 3:2), JPEG
  q90: the large-photograph case (phone and camera pictures), where decoding at a reduced
  DCT scale saves the most. Used by ``benchmark_pack.py``.

Synthetic images come from :func:`photo_like` (and :func:`medical_like`): numpy + Pillow
only, deterministic in the generator passed in, and built to *cost* what photographs
cost to store and decode: smooth low-frequency colour fields and gradients, shapes with
hard and soft edges at power-law sizes, band-limited texture with a ~1/f spectrum whose
strength varies by region, an illumination gradient and mild sensor noise.

Realism check, done once by hand (scikit-image installed for it, then removed). Its
bundled colour photographs (astronaut, coffee, chelsea, rocket) were resized to 500x375
(bicubic) and saved as JPEG q90 by Pillow, as were 32 ``photo_like(rng, 500, 375)``
images (seeds 0-31). Decode time is Pillow ``open`` + ``convert("RGB")`` from memory,
median of 25 repeats per image, real and generated interleaved in the same run; the
figures are medians over images::

    JPEG q90, 500x375            real photos    generated      generated / real
    bytes per pixel              0.249          0.246          0.99
      range over images          0.181-0.297    0.185-0.337
    decode time, ns per pixel    4.79           4.87           1.02   (one run)
      ratio over six runs                                      0.92-1.02, median 0.95

The machine was a shared 2-core VM, busy compiling: absolute decode times drifted from
4.8 to 8.8 ns per pixel between runs, the ratio within one run stayed within 0.92-1.02.
The same photos reduced to 32x32 PNG: 2.51 KB median, the cifar-like images 2.17 KB
(0.86). ``medical_like`` was not compared with real radiographs (none at hand).
Generating takes ~12 ms for 500x375 and ~190 ms for 2048x1536 on one core there.

Usage::

    python benchmarks/prepare_data.py --profile all --out data
    python benchmarks/prepare_data.py --profile imagenet-std --num-images 500 --out d

or, from Python::

    sys.path.insert(0, "benchmarks")
    from prepare_data import make_image_folder, photo_like
    make_image_folder(tmp / "train", "cifar-like", num_images=40, num_classes=4)
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import pickle
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# ======================================================================================
# Synthetic images
# ======================================================================================

Colour = tuple[int, int, int]
Box = tuple[int, int, int, int]
# A flat RGB colour, a grey level, or the 2x2x3 uint8 corner colours of a gradient.
Fill = Colour | int | np.ndarray

_TEXTURE_SIGMA = 15.0  # std (grey levels) of the band-limited texture at full strength
_SENSOR_NOISE = 2.0  # half-width (grey levels) of the per-pixel sensor noise
_LIGHT_RANGE = 60.0  # peak-to-peak grey levels of the illumination gradient
_MIN_SHAPES, _MAX_SHAPES = 12, 40
_SOFT_FRACTION = 0.35  # shapes blended through a blurred mask; the rest have hard edges


def _palette(rng: np.random.Generator, hue: float | None, size: int = 6) -> np.ndarray:
    """A coherent set of natural-looking colours (size x 3, float32 0..255)."""
    h = ((rng.random() if hue is None else hue) + rng.normal(0.0, 0.08, size)) % 1.0
    # A few off-hue colours: scenes are not monochrome.
    outliers = rng.random(size) < 0.3
    h[outliers] = rng.random(int(outliers.sum()))
    s = np.clip(rng.beta(2.0, 3.0, size), 0.05, 0.95)
    v = np.clip(rng.beta(3.0, 2.0, size), 0.12, 0.98)
    hsv = (np.stack([h, s, v], -1)[None] * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"), np.float32)[0]


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float = 18.0) -> Colour:
    """One palette colour with a little random variation."""
    c = palette[rng.integers(len(palette))] + rng.normal(0.0, jitter, 3)
    c = np.clip(c, 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def _smooth_field(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1]: a tiny random grid upsampled (float32, HxW)."""
    shape = (max(2, round(cells * height / width)), max(2, cells))
    grid = rng.random(shape, dtype=np.float32)
    img = Image.fromarray(grid, "F").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(img)


def _fractal_noise(rng: np.random.Generator, width: int, height: int, slope: float) -> np.ndarray:
    """Band-limited noise with a ~1/f amplitude spectrum and std ~1 (float32, HxW).

    Uniform noise is added at every octave of a pyramid, coarsest first, upsampling the
    sum by two between octaves. Equal energy per octave is the 1/f law of natural
    images; ``slope`` > 0 tilts the spectrum towards coarse scales.
    """
    levels = [(width, height)]
    while min(levels[-1]) >= 8:
        w, h = levels[-1]
        levels.append(((w + 1) // 2, (h + 1) // 2))
    levels.reverse()
    gains = 2.0 ** (-slope * np.arange(len(levels))[::-1])
    # Normalise to std 1; uniform(-.5, .5) noise has std 1/3.46.
    gains *= 3.46 / math.sqrt(float((gains**2).sum()))
    acc = np.zeros((levels[0][1], levels[0][0]), dtype=np.float32)
    for (w, h), gain in zip(levels, gains.tolist(), strict=True):
        if acc.shape != (h, w):
            up = Image.fromarray(acc, "F").resize((w, h), Image.Resampling.BILINEAR)
            acc = np.array(up)
        noise = rng.random((h, w), dtype=np.float32)
        noise -= 0.5
        noise *= gain
        acc += noise
    return acc


def _outline(rng: np.random.Generator, w: float, h: float, kind: int | None = None) -> np.ndarray:
    """Vertices (n x 2, centred on 0) of a rotated shape of a w x h box.

    ``kind``: 0 ellipse, 1 blob, 2 polygon, 3 thin bar; random when None.
    """
    kind = int(rng.integers(0, 4)) if kind is None else kind
    if kind == 3:  # thin bars: branches, poles, wires, frames
        h = max(1.5, h * rng.uniform(0.02, 0.1))
        angles = np.array([0.25, 0.75, 1.25, 1.75]) * math.pi
    elif kind == 0:
        angles = np.linspace(0, 2 * math.pi, 32, endpoint=False)
    else:
        n = 16 if kind == 1 else 3 + int(rng.integers(0, 6))
        angles = np.sort(rng.random(n)) * (2 * math.pi)
    radius = np.ones(len(angles))
    if kind == 1:
        radius -= 0.45 * rng.random(len(angles))
    theta = rng.uniform(0, math.pi)
    ex, ey = 0.5 * w * radius * np.cos(angles), 0.5 * h * radius * np.sin(angles)
    c, s = math.cos(theta), math.sin(theta)
    return np.stack([ex * c - ey * s, ex * s + ey * c], 1)


def _clipped_box(pts: np.ndarray, margin: int, width: int, height: int) -> Box | None:
    """Bounding box of ``pts`` plus ``margin``, clipped to the image; None if tiny."""
    lo = np.floor(pts.min(0)).astype(int) - margin
    hi = np.ceil(pts.max(0)).astype(int) + margin + 1
    x0, y0 = max(0, int(lo[0])), max(0, int(lo[1]))
    box = (x0, y0, min(width, int(hi[0])), min(height, int(hi[1])))
    return box if box[2] - box[0] >= 2 and box[3] - box[1] >= 2 else None


def _soft_mask(pts: np.ndarray, box: Box, blur: float) -> Image.Image:
    """L mask of polygon ``pts`` over ``box``: drawn ``blur``x smaller, upsampled."""
    x0, y0, x1, y1 = box
    mw, mh = max(2, math.ceil((x1 - x0) / blur)), max(2, math.ceil((y1 - y0) / blur))
    mask = Image.new("L", (mw, mh), 0)
    local = (pts - (x0, y0)) / blur
    ImageDraw.Draw(mask).polygon([tuple(p) for p in local.tolist()], fill=255)
    # Blurring at low resolution removes the staircase before upsampling, cheaply.
    mask = mask.filter(ImageFilter.GaussianBlur(0.8))
    return mask.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)


def _fill_image(fill: Fill, size: tuple[int, int]) -> Image.Image | Colour | int:
    """What ``Image.paste`` takes for ``fill``; gradients stretched over ``size``."""
    if isinstance(fill, np.ndarray):
        return Image.fromarray(fill, "RGB").resize(size, Image.Resampling.BILINEAR)
    return fill


def _paint(
    canvas: Image.Image,
    amp: Image.Image,
    pts: np.ndarray,
    fill: Fill,
    texture: int,
    blur: float,
) -> None:
    """Paint one polygon onto ``canvas`` and its texture strength onto ``amp``.

    ``blur`` 0 draws a hard edge straight onto the canvas (cheap); otherwise the shape
    is blended through a mask softened over ~``blur`` pixels.
    """
    if blur <= 0:
        outline = [tuple(p) for p in pts.tolist()]
        if isinstance(fill, np.ndarray):  # hard shapes are flat: use the first corner
            fill = (int(fill[0, 0, 0]), int(fill[0, 0, 1]), int(fill[0, 0, 2]))
        ImageDraw.Draw(canvas).polygon(outline, fill=fill)
        ImageDraw.Draw(amp).polygon(outline, fill=texture)
        return
    box = _clipped_box(pts, math.ceil(3 * blur), *canvas.size)
    if box is not None:
        mask = _soft_mask(pts, box, blur)
        canvas.paste(_fill_image(fill, (box[2] - box[0], box[3] - box[1])), box, mask)
        amp.paste(texture, box, mask)


def _background(
    rng: np.random.Generator, width: int, height: int, palette: np.ndarray
) -> Image.Image:
    """Low-frequency colour fields: palette colours on a coarse grid, blended."""
    gw = int(rng.integers(2, 6))
    gh = max(2, round(gw * height / width))
    grid = palette[rng.integers(len(palette), size=(gh, gw))]
    grid += rng.normal(0.0, 12.0, (gh, gw, 3))
    if rng.random() < 0.6:  # a horizon: the rows above and below share a tint
        split = int(rng.integers(1, gh))
        grid[:split] = 0.6 * grid[:split] + 0.4 * palette[rng.integers(len(palette))]
        grid[split:] = 0.6 * grid[split:] + 0.4 * palette[rng.integers(len(palette))]
    small = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8), "RGB")
    return small.resize((width, height), Image.Resampling.BICUBIC)


def _draw_shapes(
    rng: np.random.Generator, canvas: Image.Image, amp: Image.Image, palette: np.ndarray
) -> None:
    """Random objects at power-law sizes (few large, many small), largest first.

    Most have hard edges and a flat colour; some are soft-edged, flat or shaded.
    """
    width, height = canvas.size
    n = int(rng.integers(_MIN_SHAPES, _MAX_SHAPES + 1))
    sizes = max(width, height) * (0.015 + 0.75 * rng.random(n) ** 2.5)
    for size in np.sort(sizes)[::-1]:
        aspect = math.exp(rng.normal(0.0, 0.5))
        pts = _outline(rng, size * aspect, size / aspect)
        pts += (rng.uniform(0, width), rng.uniform(0, height))
        texture = int(255 * rng.beta(1.2, 1.5))
        blur = float(rng.uniform(2.0, 8.0)) if rng.random() < _SOFT_FRACTION else 0.0
        fill: Fill = _pick(rng, palette)
        if blur and rng.random() < 0.5:  # shading: a gradient between four colours
            corners = [[fill, _pick(rng, palette)], [_pick(rng, palette)] * 2]
            fill = np.array(corners, np.uint8)
        _paint(canvas, amp, pts, fill, texture, blur)


def _finish(
    rng: np.random.Generator,
    base: np.ndarray,
    amp: Image.Image,
    sigma: float,
    noise: float,
) -> np.ndarray:
    """Add illumination, texture and noise to ``base`` (HxW or HxWx3 uint8)."""
    height, width = base.shape[:2]
    luma = _fractal_noise(rng, width, height, slope=float(rng.uniform(0.0, 0.5)))
    luma *= np.asarray(amp, dtype=np.float32)
    luma *= sigma / 255.0
    luma += _smooth_field(rng, width, height, 2) * _LIGHT_RANGE - _LIGHT_RANGE / 2
    grain = rng.random((height, width), dtype=np.float32)
    grain -= 0.5
    grain *= 2 * noise
    luma += grain
    out = base.astype(np.int16)
    out += luma.astype(np.int16)[..., None] if base.ndim == 3 else luma.astype(np.int16)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def photo_like(
    rng: np.random.Generator, width: int, height: int, *, hue: float | None = None
) -> np.ndarray:
    """A photograph-like RGB image (height x width x 3 uint8), deterministic in ``rng``.

    Smooth colour fields and gradients, shapes with hard and soft edges, ~1/f texture
    whose strength varies by region, an illumination gradient and mild sensor noise.
    ``hue`` (0..1) biases the palette, e.g. to make synthetic classes separable.
    """
    palette = _palette(rng, hue)
    canvas = _background(rng, width, height, palette)
    amp_field = _smooth_field(rng, width, height, 3) * 200
    amp = Image.fromarray(amp_field.astype(np.uint8), "L")
    _draw_shapes(rng, canvas, amp, palette)
    return _finish(rng, np.asarray(canvas), amp, _TEXTURE_SIGMA, _SENSOR_NOISE)


def medical_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A radiograph-like grey image (height x width uint8), deterministic in ``rng``.

    A dark field, a large soft-edged body, bright elongated "bones" and dark "air"
    regions with soft edges, fine texture and stronger (quantum-like) noise.
    """
    canvas = Image.new("L", (width, height), int(rng.integers(5, 35)))
    amp = Image.new("L", (width, height), 30)
    side = min(width, height)
    centre = np.array([width / 2, height / 2]) + rng.normal(0, 0.05 * side, 2)
    body = _outline(rng, side * rng.uniform(0.7, 1.1), max(width, height) * 1.2, kind=1)
    tissue = int(rng.integers(80, 130))
    _paint(canvas, amp, body + centre, tissue, 160, side / 60)
    for _ in range(int(rng.integers(15, 40))):
        size = side * (0.03 + 0.4 * rng.random() ** 2)
        aspect = math.exp(rng.normal(0.0, 0.8))
        kind = int(rng.choice([0, 1, 3]))
        pts = _outline(rng, size * aspect, size / aspect, kind)
        pts += centre + rng.normal(0, 0.22 * side, 2)
        bone = rng.random() < 0.6
        level = int(rng.integers(150, 235) if bone else rng.integers(35, 80))
        blur = float(rng.uniform(2.0, 12.0)) if rng.random() < 0.8 else 0.0
        _paint(canvas, amp, pts, level, int(rng.integers(60, 255)), blur)
    # The lead L/R marker of a radiograph.
    marker = (width // 20, height // 20, width * 2 // 25, height * 9 // 100)
    ImageDraw.Draw(canvas).rectangle(marker, fill=235)
    return _finish(rng, np.asarray(canvas), amp, 10.0, 4.0)


# ======================================================================================
# Profiles
# ======================================================================================

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IMAGENET_CLASSES = (  # the ImageNet synsets of Imagenette
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888605",
)  # fmt: skip
MEDICAL_CLASSES = (
    "abdomen", "chest", "elbow", "foot", "hand",
    "head", "knee", "pelvis", "shoulder", "spine",
)  # fmt: skip


@dataclass(frozen=True)
class Profile:
    """One benchmark dataset shape."""

    name: str
    class_names: tuple[str, ...]
    default_images: int
    render: Callable[[np.random.Generator, int, int], tuple[Image.Image, str]]


def _render_cifar(
    rng: np.random.Generator, class_index: int, num_classes: int
) -> tuple[Image.Image, str]:
    # Real CIFAR images are downsampled photographs: generate at 3x and reduce.
    big = photo_like(rng, 96, 96, hue=(class_index + 0.5) / num_classes)
    return Image.fromarray(big).resize((32, 32), Image.Resampling.LANCZOS), "png"


def _imagenet_size(rng: np.random.Generator) -> tuple[int, int]:
    long_side = 500 if rng.random() < 0.6 else int(rng.integers(300, 641))
    aspect = float(rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9], p=[0.1, 0.5, 0.25, 0.15]))
    short_side = round(long_side / aspect)
    return (short_side, long_side) if rng.random() < 0.2 else (long_side, short_side)


def _render_imagenet(
    rng: np.random.Generator, class_index: int, num_classes: int
) -> tuple[Image.Image, str]:
    width, height = _imagenet_size(rng)
    pixels = photo_like(rng, width, height, hue=(class_index + 0.5) / num_classes)
    return Image.fromarray(pixels), "jpg"


def _render_large_photo(
    rng: np.random.Generator, class_index: int, num_classes: int
) -> tuple[Image.Image, str]:
    aspect = float(rng.choice([1.0, 4 / 3, 3 / 2]))
    short_side = round(2048 / aspect)
    width, height = (short_side, 2048) if rng.random() < 0.3 else (2048, short_side)
    pixels = photo_like(rng, width, height, hue=(class_index + 0.5) / num_classes)
    return Image.fromarray(pixels), "jpg"


def _render_medical(
    rng: np.random.Generator, class_index: int, num_classes: int
) -> tuple[Image.Image, str]:
    aspect = float(rng.choice([1.0, 1.25, 4 / 3]))
    short_side = round(2048 / aspect)
    width, height = (short_side, 2048) if rng.random() < 0.5 else (2048, short_side)
    ext = "png" if rng.random() < 0.2 else "jpg"
    return Image.fromarray(medical_like(rng, width, height), "L"), ext


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("cifar-like", CIFAR10_CLASSES, 5000, _render_cifar),
        Profile("imagenet-std", IMAGENET_CLASSES, 2000, _render_imagenet),
        Profile("4k-medical", MEDICAL_CLASSES, 200, _render_medical),
        Profile("4k-photo", IMAGENET_CLASSES, 200, _render_large_photo),
    )
}
_SAVE_OPTIONS: dict[tuple[str, str], dict[str, object]] = {
    ("imagenet-std", "jpg"): {"quality": 90},
    ("4k-medical", "jpg"): {"quality": 95},
    ("4k-photo", "jpg"): {"quality": 90},
}


def class_names(profile: str, num_classes: int) -> list[str]:
    """Folder names of ``num_classes`` classes (``class_NN`` past the known names)."""
    names = list(PROFILES[profile].class_names[:num_classes])
    width = len(str(num_classes - 1))
    names += [f"class_{i:0{width}d}" for i in range(len(names), num_classes)]
    return names


def _class_of(index: int, num_classes: int) -> int:
    """Images are spread evenly over classes: counts differ by at most one."""
    return index % num_classes


# ======================================================================================
# Writing an ImageFolder tree
# ======================================================================================

_Task = tuple[str, str, int, int, int]  # (folder, profile, seed, index, num_classes)


def _write_one(task: _Task) -> int:
    """Render and save one image; returns its size in bytes. Runs in workers."""
    folder, profile, seed, index, num_classes = task
    profile_id = list(PROFILES).index(profile)
    rng = np.random.default_rng([seed, profile_id, index])
    class_index = _class_of(index, num_classes)
    image, ext = PROFILES[profile].render(rng, class_index, num_classes)
    class_name = class_names(profile, num_classes)[class_index]
    path = Path(folder) / class_name / f"{index:06d}.{ext}"
    image.save(path, **_SAVE_OPTIONS.get((profile, ext), {}))
    return path.stat().st_size


def _run_tasks(tasks: Sequence[_Task], jobs: int) -> int:
    """Run ``tasks`` on ``jobs`` processes (inline if 1); returns bytes written."""
    if jobs <= 1 or len(tasks) < 2:
        return sum(_write_one(t) for t in tasks)
    chunk = max(1, len(tasks) // (jobs * 8))
    with multiprocessing.Pool(jobs) as pool:
        return sum(pool.imap_unordered(_write_one, tasks, chunksize=chunk))


def _find_cifar(cifar_root: Path) -> Path | None:
    """The ``cifar-10-batches-py`` folder under (or at) ``cifar_root``, if complete."""
    names = ["batches.meta"] + [f"data_batch_{i}" for i in range(1, 6)]
    for candidate in (cifar_root / "cifar-10-batches-py", cifar_root):
        if all((candidate / n).is_file() for n in names):
            return candidate
    return None


def _load_cifar(folder: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """CIFAR-10's training set from its pickled batches: NHWC uint8, labels, names."""
    images, labels = [], []
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], np.int64))
    with open(folder / "batches.meta", "rb") as f:
        names = [n.decode() for n in pickle.load(f, encoding="bytes")[b"label_names"]]
    return np.concatenate(images).transpose(0, 2, 3, 1), np.concatenate(labels), names


def _write_real_cifar(
    folder: Path, source: Path, num_images: int, num_classes: int
) -> tuple[int, int]:
    """Write the first images of the first ``num_classes`` CIFAR-10 classes as PNG.

    Returns (images written, bytes written): fewer than asked if the batches run short.
    """
    images, labels, names = _load_cifar(source)
    count = total = 0
    for c in range(num_classes):
        wanted = len(range(c, num_images, num_classes))  # as _class_of spreads them
        if wanted:
            (folder / names[c]).mkdir()
        for idx in np.flatnonzero(labels == c)[:wanted].tolist():
            path = folder / names[c] / f"{idx:05d}.png"
            Image.fromarray(images[idx]).save(path)
            count, total = count + 1, total + path.stat().st_size
    return count, total


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in _IMAGE_SUFFIXES and path.is_file()


def count_images(root: Path) -> int:
    """Image files in the class folders of ``root`` (0 if it does not exist)."""
    return sum(1 for p in root.glob("*/*") if _is_image(p)) if root.is_dir() else 0


def _owned(root: Path) -> bool:
    """True if ``root`` holds only class folders of images: safe to replace."""
    if not root.is_dir():
        return False
    folders = list(root.iterdir())
    return all(d.is_dir() and all(map(_is_image, d.iterdir())) for d in folders)


@dataclass(frozen=True)
class FolderSummary:
    """What :func:`make_image_folder` did."""

    root: Path
    profile: str
    num_images: int
    bytes_on_disk: int
    seconds: float
    source: str  # "generated", "cifar-10" or "existing"


def _folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("*/*") if p.is_file())


def _is_complete(root: Path, num_images: int, num_classes: int) -> bool:
    """Whether ``root`` holds ``num_images`` images in ``num_classes`` folders."""
    if not root.is_dir():
        return False
    folders = sum(1 for p in root.iterdir() if p.is_dir())
    # Classes that get no image have no folder: ImageFolder rejects empty ones.
    return folders == min(num_classes, num_images) and count_images(root) == num_images


def make_image_folder(
    root: str | os.PathLike[str],
    profile: str,
    num_images: int,
    num_classes: int = 10,
    seed: int = 0,
    jobs: int | None = None,
    *,
    force: bool = False,
    cifar_root: str | os.PathLike[str] | None = None,
) -> FolderSummary:
    """Write an ImageFolder tree ``root/<class>/<file>`` of ``num_images`` images.

    Images are spread evenly over ``num_classes`` classes and are a pure function of
    (``seed``, ``profile``, image index), whatever ``jobs`` (default: all CPUs) is. A
    ``root`` that already holds ``num_images`` images in ``num_classes`` folders is kept
    unless ``force``. The tree is built in a temporary sibling and renamed into place;
    an existing ``root`` is replaced only if it holds nothing but class folders of
    images. Returns what was done.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; one of {', '.join(PROFILES)}")
    if num_images < 1 or num_classes < 1:
        raise ValueError("num_images and num_classes must be at least 1")
    start = time.perf_counter()
    root = Path(root)
    if not force and _is_complete(root, num_images, num_classes):
        elapsed = time.perf_counter() - start
        size = _folder_bytes(root)
        return FolderSummary(root, profile, num_images, size, elapsed, "existing")
    if root.exists() and not _owned(root):
        raise FileExistsError(f"{root} holds more than class folders of images")

    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        real = None
        if profile == "cifar-like" and cifar_root is not None:
            real = _try_real_cifar(tmp, Path(cifar_root), num_images, num_classes)
        if real is None:
            source, count = "generated", num_images
            size = _generate(tmp, profile, num_images, num_classes, seed, jobs)
        else:
            source, (count, size) = "cifar-10", real
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - start
    return FolderSummary(root, profile, count, size, elapsed, source)


def _generate(
    folder: Path,
    profile: str,
    num_images: int,
    num_classes: int,
    seed: int,
    jobs: int | None,
) -> int:
    """Fill an empty ``folder`` with synthetic images; returns the bytes written."""
    for name in class_names(profile, num_classes)[:num_images]:
        (folder / name).mkdir()
    tasks = [(str(folder), profile, seed, i, num_classes) for i in range(num_images)]
    return _run_tasks(tasks, jobs or os.cpu_count() or 1)


def _try_real_cifar(
    folder: Path, cifar_root: Path, num_images: int, num_classes: int
) -> tuple[int, int] | None:
    """Fill ``folder`` from a local CIFAR-10: (images, bytes), or None and a note."""
    source = _find_cifar(cifar_root)
    if source is None:
        print(f"note: no CIFAR-10 batches under {cifar_root}; generating images")
        return None
    if num_classes > len(CIFAR10_CLASSES):
        print(f"note: CIFAR-10 has 10 classes, not {num_classes}; generating images")
        return None
    try:
        count, size = _write_real_cifar(folder, source, num_images, num_classes)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
        print(f"note: cannot read CIFAR-10 at {source} ({e}); generating images")
        for child in folder.iterdir():
            shutil.rmtree(child)
        return None
    if count < num_images:
        print(f"note: CIFAR-10 at {source} has only {count} of the images asked for")
    return count, size


# ======================================================================================
# Command line
# ======================================================================================


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=[*PROFILES, "all"], default="all")
    parser.add_argument(
        "--out", type=Path, default=Path("data"), help="output root (default: data)"
    )
    defaults = ", ".join(f"{p.name} {p.default_images}" for p in PROFILES.values())
    parser.add_argument(
        "--num-images", type=int, default=None, help=f"images per profile ({defaults})"
    )
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--force", action="store_true", help="regenerate even if already there")
    parser.add_argument(
        "--cifar-root",
        type=Path,
        default=None,
        help="torchvision CIFAR-10 root (with cifar-10-batches-py): use real images",
    )
    return parser.parse_args(argv)


def _human(n: float) -> str:
    """Bytes as a short human-readable size."""
    units = ["B", "KiB", "MiB", "GiB"]
    while n >= 1024 and len(units) > 1:
        n /= 1024
        units.pop(0)
    return f"{n:.1f} {units[0]}"


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write the requested profiles, print a summary line for each."""
    args = _parse_args(argv)
    profiles = list(PROFILES) if args.profile == "all" else [args.profile]
    for name in profiles:
        summary = make_image_folder(
            args.out / name / "train",
            name,
            args.num_images or PROFILES[name].default_images,
            args.num_classes,
            args.seed,
            args.jobs,
            force=args.force,
            cifar_root=args.cifar_root,
        )
        print(
            f"{name:13s} {summary.num_images:6d} images"
            f"  {_human(summary.bytes_on_disk):>10s}  {summary.seconds:6.1f} s"
            f"  ({summary.source})  {summary.root}"
        )


if __name__ == "__main__":
    main()
