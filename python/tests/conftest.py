"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image


def write_image_folder(
    root: Path,
    n: int,
    size: tuple[int, int] = (20, 20),
    num_classes: int = 3,
    seed: int = 0,
    image: Optional[Callable[[np.random.Generator, int, int], np.ndarray]] = None,
    name: str = "{i}.png",
) -> Path:
    """An ImageFolder of `n` PNGs (`size` is width x height) spread round-robin over classes
    `c0, c1, ...`; pixels are uniform noise unless `image(rng, w, h)` makes them."""
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        d = root / f"c{i % num_classes}"
        d.mkdir(parents=True, exist_ok=True)
        pixels = image(rng, w, h) if image else rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(d / name.format(i=i))
    return root
