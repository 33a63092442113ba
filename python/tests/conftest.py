"""Shared test helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

#: Where the venv's console scripts (``vantix-pack``) are.
BIN = Path(sys.executable).parent


def run_cli(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the installed ``vantix-pack`` console script; fail with its stderr unless ``check``
    is false."""
    proc = subprocess.run(
        [str(BIN / "vantix-pack"), *map(str, args)], capture_output=True, text=True, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"vantix-pack failed ({proc.returncode}): {proc.stderr}")
    return proc


def thread_names() -> list[str]:
    """The names of this process's threads (`/proc/self/task/*/comm`)."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return names


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
