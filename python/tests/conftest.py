"""Shared test helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


def prefetch_threads() -> int:
    """How many ``vantix-prefetch`` threads this process has now."""
    return sum(name.startswith("vantix-prefetch") for name in thread_names())


def prefetch_threads_after_join(timeout: float = 1.0) -> int:
    """The ``vantix-prefetch`` count once joined threads have left ``/proc``, waiting up to
    ``timeout`` s for it to reach 0. ``pthread_join`` returns when the kernel clears the
    thread's id, a moment before it removes ``/proc/self/task/<tid>``, so a thread that
    has been joined can still be listed right after the join."""
    deadline = time.monotonic() + timeout
    while (n := prefetch_threads()) and time.monotonic() < deadline:
        time.sleep(0.005)
    return n


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
