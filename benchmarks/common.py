"""What the benchmark scripts share: machine information, the JSON report, the results table,
the cached source ImageFolder and its packs, and the loader timing helpers.

The scripts are run as ``python benchmarks/<script>.py``, which puts ``benchmarks/`` on
``sys.path``; they import from here with ``from common import ...``.

Only the standard library at module level: ``benchmark_memory.py`` imports this module in its
measuring child process, which must import nothing but what it measures (numpy, torch, vantix).
Everything else (numpy, torch, torchvision, PIL, vantix, prepare_data) is imported where it is
used.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
PAGE = 4096  # touch one byte (element) per 4 KiB page of every batch

# A loader: a function of the epoch that runs one epoch, touching every batch, and returns
# (samples, checksum). The caller times it.
EpochFn = Callable[[int], "tuple[int, float]"]
Touch = Callable[[Any], "int | float"]


# ==============================================================================================
# Data: the source ImageFolder and its packs, reused between runs
# ==============================================================================================


def rel(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (for the JSON report)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def pack_matches(dst: Path, src: Path, num_images: int, size: int, codec: str) -> bool:
    """Whether ``dst`` is a pack of ``src`` with this size and codec, newer than the source."""
    import vantix

    try:
        summary = vantix.inspect(dst)
    except (OSError, vantix.VantixError):
        return False
    return (
        summary["num_samples"] == num_images
        and summary["width"] == size
        and summary["height"] == size
        and summary["codec"] == codec
        and Path(summary["source"]).resolve() == src.resolve()
        and (dst / "manifest.json").stat().st_mtime >= src.stat().st_mtime
    )


class Pack(NamedTuple):  # not a dataclass: that import adds ~1 MB to the memory child at start
    """A pack of a source ImageFolder, as :func:`ensure_pack` left it."""

    path: Path
    nbytes: int
    seconds: Optional[float]  # None: reused, not packed in this run

    @property
    def how(self) -> str:
        return "reused" if self.seconds is None else f"packed in {self.seconds:.1f} s"


def ensure_pack(src: Path, num_images: int, size: int, codec: str, repack: bool) -> Pack:
    """``src`` packed at ``size`` with ``codec`` into its sibling ``train-<size>-<codec>.vtx``,
    reused while it matches the source unless ``repack``."""
    import vantix

    dst = src.with_name(f"train-{size}-{codec}.vtx")
    if not repack and pack_matches(dst, src, num_images, size, codec):
        seconds = None  # reused: not packed in this run
    else:
        seconds = vantix.pack(src, dst, size=size, codec=codec, overwrite=True).seconds
    nbytes = sum(p.stat().st_size for p in dst.iterdir() if p.is_file())
    return Pack(dst, nbytes, seconds)


def timed_pack(src: Path, num_images: int, size: int, codec: str, repack: bool) -> Pack:
    """Like :func:`ensure_pack`, but always packs ``src`` afresh (into a temporary sibling of
    ``src``, same file system) and times it: the one-off cost of packing. The fresh pack
    replaces the cached one unless that one matches and not ``repack`` (then it is deleted).
    ``seconds`` is the wall-clock time of ``vantix.pack``."""
    import shutil
    import tempfile

    import vantix

    dst = src.with_name(f"train-{size}-{codec}.vtx")
    keep_cache = not repack and pack_matches(dst, src, num_images, size, codec)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.timing-", dir=src.parent))
    try:
        fresh = tmp / dst.name
        t0 = time.perf_counter()
        vantix.pack(src, fresh, size=size, codec=codec)
        seconds = time.perf_counter() - t0
        if not keep_cache:
            if dst.exists():
                shutil.rmtree(dst)
            fresh.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    nbytes = sum(p.stat().st_size for p in dst.iterdir() if p.is_file())
    return Pack(dst, nbytes, seconds)


def prepare_packs(
    root: Path,
    profile: str,
    num_images: int,
    size: int,
    codecs: Sequence[str],
    repack: bool,
    *,
    time_packing: bool = False,
) -> dict[str, Any]:
    """The ImageFolder ``root`` of ``profile`` (written unless present) and its packs at
    ``size``, one per codec, printed as they are made; returns their description. With
    ``time_packing`` every pack is made afresh and timed (:func:`timed_pack`), cache or not."""
    import prepare_data

    folder = prepare_data.make_image_folder(root, profile, num_images)
    print(
        f"  source  {rel(root)}: {folder.num_images} images, {folder.bytes_on_disk / 1e6:.1f} MB"
        f" ({folder.source}, {folder.seconds:.1f} s)"
    )
    info: dict[str, Any] = {
        "source": rel(root),
        "num_images": folder.num_images,
        "source_bytes": folder.bytes_on_disk,
        "size": size,
        "record_bytes": size * size * 3,
        "packs": {},
    }
    for codec in codecs:
        make = timed_pack if time_packing else ensure_pack
        pack = make(root, folder.num_images, size, codec, repack)
        info["packs"][codec] = {
            "path": rel(pack.path),
            "bytes": pack.nbytes,
            "pack_seconds": pack.seconds,
        }
        if pack.seconds is not None:
            info["packs"][codec]["pack_images_per_s"] = folder.num_images / pack.seconds
        print(f"  {codec:5s}   {rel(pack.path)}: {pack.nbytes / 1e6:.1f} MB ({pack.how})")
    return info


# ==============================================================================================
# Loaders and timing
# ==============================================================================================


def touch_pages(images: Any) -> int:
    """Sum one byte of every 4 KiB page of a contiguous uint8 batch (every page is read)."""
    return int(images.view(-1)[::PAGE].sum())


def loader_epochs(loader: Any, touch: Touch, what: str) -> EpochFn:
    """One epoch of ``loader`` (a ``VantixLoader``) per call, every batch touched by ``touch``;
    raises unless it delivers every sample once."""
    expected = loader.num_samples

    def run(epoch: int) -> tuple[int, float]:
        loader.set_epoch(epoch)
        samples, checksum = 0, 0
        for images, labels in loader:
            checksum += touch(images)
            samples += int(labels.shape[0])
        if samples != expected:
            raise RuntimeError(f"{what} gave {samples} samples, not {expected}")
        return samples, checksum

    return run


def print_warmup(name: str, width: int, seconds: float) -> None:
    print(f"  warm-up {name:{width}s} {seconds:6.2f} s")


def time_epochs(
    loaders: dict[str, EpochFn],
    epochs: int,
    width: int,
    *,
    warmup: bool = True,
    first_epoch: int = 1,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Warm-up epoch 0 for every loader (unless not ``warmup``), then ``epochs`` epochs from
    ``first_epoch`` on, interleaved (within each epoch every loader runs once, in turn);
    returns the seconds of every timed epoch and the samples of all of them, per loader."""
    if warmup:
        for name, run in loaders.items():
            t0 = time.perf_counter()
            run(0)
            print_warmup(name, width, time.perf_counter() - t0)
    seconds: dict[str, list[float]] = {name: [] for name in loaders}
    samples = dict.fromkeys(loaders, 0)
    for epoch in range(first_epoch, first_epoch + epochs):
        for name, run in loaders.items():
            t0 = time.perf_counter()
            n, _ = run(epoch)
            seconds[name].append(time.perf_counter() - t0)
            samples[name] += n
    return seconds, samples


def torchvision_pass(
    root: str, transform: Any, batch_size: int, max_images: int, touch: Touch
) -> tuple[int, float]:
    """One shuffled pass of ImageFolder + DataLoader, stopped after the batch that reaches
    ``max_images``; returns (samples, seconds), timed from creating the iterator."""
    import torch
    from torchvision.datasets import ImageFolder

    loader = torch.utils.data.DataLoader(
        ImageFolder(root, transform=transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=os.cpu_count() or 1,
        pin_memory=True,  # as the baseline is specified; a no-op (and a warning) without a GPU
    )
    samples, checksum = 0, 0
    t0 = time.perf_counter()
    it = iter(loader)
    for images, labels in it:
        checksum += touch(images)
        samples += int(labels.shape[0])
        if samples >= max_images:
            break
    seconds = time.perf_counter() - t0
    del it  # stop the workers before anything else is measured
    return samples, seconds


def measure_torchvision(
    root: str,
    transform: Any,
    batch_size: int,
    max_images: int,
    touch: Touch,
    *,
    name: str,
    width: int,
    seed: Optional[int] = None,
) -> tuple[int, float]:
    """One untimed warm-up :func:`torchvision_pass` (its time printed as ``name``, in a column
    ``width`` wide), then the timed one; ``seed`` (if given) seeds torch first."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        if seed is not None:
            import torch

            torch.manual_seed(seed)
        t0 = time.perf_counter()
        torchvision_pass(root, transform, batch_size, max_images, touch)
        print_warmup(name, width, time.perf_counter() - t0)
        return torchvision_pass(root, transform, batch_size, max_images, touch)


def loader_result(samples: int, seconds: float, sample_bytes: int, **extra: Any) -> dict[str, Any]:
    """A loader's figures: images/s, and GB/s of ``sample_bytes`` per image."""
    ips = samples / seconds
    return {
        "images": samples,
        "seconds": seconds,
        "images_per_s": ips,
        "gb_per_s": ips * sample_bytes / 1e9,
        **extra,
    }


# ==============================================================================================
# Command line
# ==============================================================================================


def add_loader_options(
    parser: argparse.ArgumentParser,
    *,
    epochs: int,
    epochs_help: str,
    torchvision_images: int,
    seed_help: str,
) -> None:
    """``--batch-size``, ``--epochs``, ``--torchvision-images`` and ``--seed``."""
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=epochs, help=epochs_help)
    parser.add_argument(
        "--torchvision-images",
        type=int,
        default=None,
        help="images in the timed torchvision pass, rounded up to whole batches"
        f" (default {torchvision_images})",
    )
    parser.add_argument("--seed", type=int, default=0, help=seed_help)


def add_output_options(parser: argparse.ArgumentParser, benchmark: str) -> None:
    """``--data-dir``, ``--repack`` and ``--out`` (``assets/benchmark_<benchmark>.json``)."""
    parser.add_argument(
        "--data-dir", type=Path, default=REPO / "data" / "bench", help="dataset cache"
    )
    parser.add_argument("--repack", action="store_true", help="pack again even if cached")
    parser.add_argument("--out", type=Path, default=REPO / "assets" / f"benchmark_{benchmark}.json")


def check_at_least_one(
    parser: argparse.ArgumentParser, args: argparse.Namespace, names: Sequence[str]
) -> None:
    """Exit with a usage error if one of the options ``names`` (when given) is below 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")


# ==============================================================================================
# Report
# ==============================================================================================


def _elf_has_debug_info(path: str) -> Optional[bool]:
    """Whether a 64-bit ELF file has a .debug_info section (None if it cannot tell)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                return None
            end = "<" if head[5] == 1 else ">"
            (shoff,) = struct.unpack_from(end + "Q", head, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", head, 0x3A)
            f.seek(shoff + shstrndx * shentsize)
            offset, size = struct.unpack_from(end + "QQ", f.read(shentsize), 0x18)
            f.seek(offset)
            return b".debug_info\0" in f.read(size)
    except (OSError, struct.error):
        return None


def machine_info() -> dict[str, Any]:
    """CPU, memory, software versions: what a reader needs to compare runs."""
    import numpy as np
    import PIL
    import torch
    import torchvision

    import vantix

    cpu = platform.processor() or platform.machine()
    mem = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    native = vantix._native.__file__
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": mem,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "vantix": vantix.__version__,
        "vantix_native": rel(Path(native)),
        "vantix_native_debug_info": _elf_has_debug_info(native),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": commit,
    }


def report_machine(*, warn_debug: bool = True) -> dict[str, Any]:
    """:func:`machine_info`, after printing its summary line and, with ``warn_debug``, a
    warning when the native extension is a debug build."""
    machine = machine_info()
    print(f"{machine['cpu_model']}, {machine['cpu_count']} cores, torch {machine['torch']}")
    if warn_debug and machine["vantix_native_debug_info"]:
        print(
            "warning: vantix._native carries debug info (a dev build?); build it in release"
            " mode for representative numbers"
        )
    return machine


def report_head(benchmark: str, machine: dict[str, Any]) -> dict[str, Any]:
    """The first keys of every report: the benchmark, the schema, when and where it ran."""
    return {
        "benchmark": benchmark,
        "schema": 1,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
    }


def loader_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters the throughput and augmentation reports share, in their order."""
    return {
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "warmup_epochs": 1,
        "shuffle": True,
        "seed": args.seed,
        "num_images": args.num_images,
        "torchvision_images": args.torchvision_images,
    }


def command(argv: Optional[Sequence[str]]) -> list[str]:
    """The command line, for the report: the script's name and its arguments."""
    return [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]


def print_loaders(name: str, result: dict[str, Any], rows: Sequence[tuple[str, str]]) -> None:
    """The table of loaders of one profile: ``rows`` are (key, label), absent keys skipped."""
    print(f"\n{name}: {result['dataset']['num_images']} images, batch {result['batch_size']}")
    print(f"  {'loader':36s} {'images':>8s} {'seconds':>8s} {'images/s':>10s} {'GB/s':>7s}")
    for key, label in rows:
        r = result["loaders"].get(key)
        if r is not None:
            print(
                f"  {label:36s} {r['images']:8d} {r['seconds']:8.3f}"
                f" {r['images_per_s']:10,.0f} {r['gb_per_s']:7.2f}"
            )


def check_goals(
    values: dict[str, float], targets: dict[str, float], at_most: Sequence[str] = ()
) -> dict[str, Any]:
    """``{goal: {value, target, met}}`` for each measured goal: ``value >= target``, or
    ``value <= target`` for the goals named in ``at_most``."""
    out = {}
    for key, value in values.items():
        target = targets[key]
        met = value <= target if key in at_most else value >= target
        out[key] = {"value": value, "target": target, "met": met}
    return out


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
