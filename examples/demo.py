"""Vantix demo: pack a sample image folder once, then read it far faster than torchvision.

    make demo                                   # builds the extension (release), runs this
    python examples/demo.py --num-images 300    # a quicker run

Steps:

1. Write a sample ImageFolder offline (default ``demo-data/train`` in the repository: 2000
   photo-like JPEGs around 500x375 in 10 classes, made by ``benchmarks/prepare_data.py``).
   An existing folder with the same number of images is reused.
2. Pack it to 224x224 with the ``vantix-pack`` command line, exactly as a user would::

       vantix-pack demo-data/train --size 224 -o demo-data/train.vtx --overwrite

3. Read ``--epochs`` shuffled epochs with ``vantix.VantixLoader``.
4. Read ``--epochs`` shuffled epochs with torchvision's ``ImageFolder`` (``Resize(224)``,
   ``CenterCrop(224)``, ``PILToTensor()``) and ``DataLoader(num_workers=os.cpu_count(),
   pin_memory=True)``: both loaders deliver the same 224x224 uint8 images.

There is no model: this measures the input pipeline alone. For every batch, both loops sum one
byte of every 4 KiB page of the image tensor (``images.view(-1)[::4096].sum()``), so that every
page of every image is really read, and count the samples. An epoch is timed from creating its
iterator to the end of its last batch (for torchvision this includes starting the workers, as it
does in training).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

import prepare_data  # noqa: E402
import vantix  # noqa: E402

SIZE = 224
PAGE = 4096  # one byte of every page of a batch is read


def show(path: Path) -> str:
    """``path`` as short as possible: relative to the working directory when inside it."""
    rel = os.path.relpath(path)
    return path.as_posix() if rel.startswith("..") else Path(rel).as_posix()


def find_vantix_pack() -> str:
    """The ``vantix-pack`` console script: next to this Python, else on PATH."""
    found = shutil.which("vantix-pack", path=str(Path(sys.executable).parent)) or shutil.which(
        "vantix-pack"
    )
    if found is None:
        sys.exit("error: vantix-pack not found; install Vantix first (make, or pip install .)")
    return found


def pack(root: Path, out: Path) -> float:
    """Run ``vantix-pack ROOT --size 224 -o OUT --overwrite``; returns its wall time (s)."""
    exe = find_vantix_pack()
    args = [show(root), "--size", str(SIZE), "-o", show(out), "--overwrite"]
    print("  $ vantix-pack " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run([exe, *args])
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"error: vantix-pack failed (exit status {done.returncode})")
    return seconds


def read_vantix(path: Path, batch_size: int, epochs: int) -> list[float]:
    """Seconds of each shuffled epoch of ``VantixLoader``."""
    loader = vantix.VantixLoader(path, batch_size=batch_size, shuffle=True)
    times = []
    for epoch in range(epochs):
        samples = checksum = 0
        t0 = time.perf_counter()
        for images, labels in loader:  # uint8 [B, 224, 224, 3], int64 [B]
            checksum += int(images.view(-1)[::PAGE].sum())
            samples += len(labels)
        times.append(time.perf_counter() - t0)
        assert samples == loader.num_samples, (samples, loader.num_samples)
        print(f"  vantix       epoch {epoch + 1}: {samples} images in {times[-1]:.3f} s")
    return times


def read_torchvision(root: Path, batch_size: int, epochs: int) -> list[float]:
    """Seconds of each shuffled epoch of torchvision ``ImageFolder`` + ``DataLoader``."""
    transform = T.Compose([T.Resize(SIZE), T.CenterCrop(SIZE), T.PILToTensor()])
    dataset = ImageFolder(root, transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=os.cpu_count() or 1,
        pin_memory=True,  # the usual setting; without a GPU it does nothing (and would warn)
    )
    times = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        for epoch in range(epochs):
            samples = checksum = 0
            t0 = time.perf_counter()
            for images, labels in loader:  # uint8 [B, 3, 224, 224], int64 [B]
                checksum += int(images.view(-1)[::PAGE].sum())
                samples += len(labels)
            times.append(time.perf_counter() - t0)
            assert samples == len(dataset), (samples, len(dataset))
            print(f"  torchvision  epoch {epoch + 1}: {samples} images in {times[-1]:.3f} s")
    return times


def report(num_images: int, vx: list[float], tv: list[float], pack_s: float) -> None:
    """The summary table."""
    workers = os.cpu_count() or 1
    rows = [
        ("vantix.VantixLoader", vx),
        (f"torchvision ImageFolder + DataLoader ({workers} workers)", tv),
    ]
    width = max(len(name) for name, _ in rows)
    epochs = " ".join(f"{f'epoch {i + 1}':>9s}" for i in range(len(vx)))
    print(f"\n  {'loader':{width}s}  {epochs}  {'images/s':>9s}")
    rate = {}
    for name, times in rows:
        rate[name] = num_images * len(times) / sum(times)
        cells = " ".join(f"{t:8.3f}s" for t in times)
        print(f"  {name:{width}s}  {cells}  {rate[name]:9,.0f}")
    vx_rate, tv_rate = rate[rows[0][0]], rate[rows[1][0]]
    print(f"\n  Vantix reads {vx_rate / tv_rate:,.0f}x as many images per second as torchvision.")
    saved = sum(tv) / len(tv) - sum(vx) / len(vx)
    print(f"  Packing took {pack_s:.1f} s, once", end="")
    if saved <= 0:
        print("; on this machine it does not pay for itself.")
    else:
        print(
            f"; it saves {saved:.1f} s per epoch, so it pays for itself after"
            f" {pack_s / saved:.1f} epochs."
        )


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=2000, help="sample images (2000)")
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO / "demo-data" / "train",
        help="sample ImageFolder, written if missing (demo-data/train); packed to ROOT.vtx",
    )
    parser.add_argument("--epochs", type=int, default=2, help="epochs per loader (2)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (64)")
    args = parser.parse_args(argv)
    for name in ("num_images", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    root: Path = args.root
    out = root.with_name(root.name + ".vtx")
    print(f"Vantix {vantix.__version__} demo, {os.cpu_count()} CPU cores\n")

    print(f"1. Sample data: {args.num_images} photo-like JPEGs in 10 classes")
    folder = prepare_data.make_image_folder(root, "imagenet-std", args.num_images)
    what = "reused" if folder.source == "existing" else f"written in {folder.seconds:.1f} s"
    print(f"  {show(root)}: {folder.bytes_on_disk / 2**20:.1f} MiB ({what})\n")

    print(f"2. Pack once to {SIZE}x{SIZE}")
    pack_s = pack(root, out)
    print(f"  packed in {pack_s:.1f} s\n")

    print(f"3. Read {args.epochs} shuffled epochs, batch size {args.batch_size}")
    vx = read_vantix(out, args.batch_size, args.epochs)
    tv = read_torchvision(root, args.batch_size, args.epochs)
    report(folder.num_images, vx, tv, pack_s)


if __name__ == "__main__":
    main()
