"""Loader throughput: Vantix against a memory-copy yardstick and torchvision, in one run.

For each profile (for now ``imagenet-std``: photo-like JPEGs around 500x375, packed to 224x224)
the script:

1. writes a synthetic ImageFolder with ``prepare_data.make_image_folder`` into
   ``DATA/<profile>/train`` (default ``data/bench``, git-ignored; kept between runs) and packs it
   with ``vantix.pack`` twice, raw and zstd (``DATA/<profile>/train-<size>-<codec>.vtx``, reused
   while it matches the source; ``--repack`` forces a new pack);
2. measures the fast loaders, all shuffled, on a warm page cache: one untimed warm-up epoch each,
   then ``--epochs`` timed epochs, interleaved (within each epoch every loader runs once, in
   turn) so that drift on a shared, noisy machine hits them alike:

   * ``vantix_raw``: ``VantixLoader(raw pack, batch_size, shuffle=True)``;
   * ``vantix_zstd``: the same on the zstd pack;
   * ``numpy_take`` and ``numpy_loop``, the memory-copy yardstick: the raw shards are
     memory-mapped with numpy (layout from docs/FORMAT.md) and, for each batch of the very
     indices ``VantixLoader`` visits in that epoch (``epoch_indices``), the records are copied
     into one preallocated ``[B, H, W, 3]`` uint8 array, by ``np.take(..., out=buf)`` and by a
     Python loop ``buf[k] = records[i]``. ``numpy_gather`` is the faster of the two. It runs on
     one core; Vantix uses all of them.

3. measures torchvision ``ImageFolder`` + ``DataLoader(num_workers=os.cpu_count(),
   pin_memory=True, shuffle=True)`` with ``Resize(size)``, ``CenterCrop(size)`` and
   ``PILToTensor()`` on the source JPEGs: one warm-up pass, then one timed pass of at least
   ``--torchvision-images`` images (whole batches; it is roughly a hundred times slower). Its
   time includes starting the workers, as every epoch of that configuration does.

What is timed: from creating an epoch's iterator to the end of its last batch. Every loader
touches every batch the same way: it sums one byte of every 4 KiB page of the batch
(``images.view(-1)[::4096].sum()``), so every page of every image is read, and it counts the
samples (a fast loader must deliver each sample once per epoch). images/s = samples / seconds;
GB/s = images/s x H*W*3 bytes / 1e9, the decoded image bytes delivered.

Ratios: ``vantix_raw / numpy_gather`` (target >= 0.6) and ``vantix_raw / torchvision`` (target
>= 20). Results, with machine information and parameters, go to ``--out`` as JSON (default
``assets/benchmark_throughput.json``).

Usage::

    python benchmarks/benchmark_throughput.py                      # defaults
    python benchmarks/benchmark_throughput.py --num-images 500 --epochs 5
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import prepare_data  # noqa: E402
import vantix  # noqa: E402

PAGE = 4096  # touch one byte per page of every batch
TARGETS = {"vantix_raw/numpy_gather": 0.6, "vantix_raw/torchvision": 20.0}


@dataclass(frozen=True)
class BenchProfile:
    """One dataset shape: what prepare_data writes and the size it is packed to."""

    name: str  # a prepare_data profile
    size: int  # packed to size x size (center-crop), torchvision Resize+CenterCrop(size)
    default_images: int
    torchvision_images: int  # images in the timed torchvision pass (at least)


PROFILES = {
    p.name: p
    for p in (BenchProfile("imagenet-std", size=224, default_images=1000, torchvision_images=512),)
}


# ==============================================================================================
# Data
# ==============================================================================================


def _rel(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (for the JSON report)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _pack_matches(dst: Path, src: Path, num_images: int, size: int, codec: str) -> bool:
    """Whether ``dst`` is a pack of ``src`` with this size and codec, newer than the source."""
    try:
        manifest = json.loads((dst / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        manifest.get("num_samples") == num_images
        and manifest.get("width") == size
        and manifest.get("height") == size
        and manifest.get("codec", {}).get("name") == codec
        and Path(manifest.get("pack", {}).get("source", "")).resolve() == src.resolve()
        and (dst / "manifest.json").stat().st_mtime >= src.stat().st_mtime
    )


def prepare(profile: BenchProfile, data_dir: Path, num_images: int, repack: bool) -> dict:
    """Source ImageFolder and raw + zstd packs of ``profile``; returns their description."""
    root = data_dir / profile.name / "train"
    folder = prepare_data.make_image_folder(root, profile.name, num_images)
    print(
        f"  source  {_rel(root)}: {folder.num_images} images, {folder.bytes_on_disk / 1e6:.1f} MB"
        f" ({folder.source}, {folder.seconds:.1f} s)"
    )
    info: dict[str, Any] = {
        "source": _rel(root),
        "num_images": folder.num_images,
        "source_bytes": folder.bytes_on_disk,
        "size": profile.size,
        "record_bytes": profile.size * profile.size * 3,
        "packs": {},
    }
    for codec in ("raw", "zstd"):
        dst = root.with_name(f"train-{profile.size}-{codec}.vtx")
        if not repack and _pack_matches(dst, root, folder.num_images, profile.size, codec):
            seconds = None  # reused: not packed in this run
        else:
            report = vantix.pack(root, dst, size=profile.size, codec=codec, overwrite=True)
            seconds = report.seconds
        nbytes = sum(p.stat().st_size for p in dst.iterdir() if p.is_file())
        info["packs"][codec] = {"path": _rel(dst), "bytes": nbytes, "pack_seconds": seconds}
        how = "reused" if seconds is None else f"packed in {seconds:.1f} s"
        print(f"  {codec:5s}   {_rel(dst)}: {nbytes / 1e6:.1f} MB ({how})")
    return info


# ==============================================================================================
# Loaders: each is a function of the epoch that runs one epoch, touching every batch, and
# returns (samples, checksum). The caller times it.
# ==============================================================================================

EpochFn = Callable[[int], "tuple[int, int]"]


def vantix_epochs(path: str, batch_size: int, seed: int) -> EpochFn:
    """One shuffled epoch of ``VantixLoader`` per call."""
    loader = vantix.VantixLoader(path, batch_size=batch_size, shuffle=True, seed=seed)
    expected = loader.num_samples

    def run(epoch: int) -> tuple[int, int]:
        loader.set_epoch(epoch)
        samples = checksum = 0
        for images, labels in loader:
            checksum += int(images.view(-1)[::PAGE].sum())
            samples += int(labels.shape[0])
        if samples != expected:
            raise RuntimeError(f"VantixLoader gave {samples} samples, not {expected}")
        return samples, checksum

    return run


_SHARD_HEADER = struct.Struct("<8sIIIIIIQQQQQQQQ")  # docs/FORMAT.md 3.1, bytes 0..96


def map_raw_records(path: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Memory-map the records of a raw pack: per shard an ``[n, H, W, C]`` uint8 view, and
    the global index of every shard's first record."""
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    if manifest["codec"]["name"] != "raw":
        raise ValueError(f"{path} is not a raw pack")
    h, w, c = manifest["height"], manifest["width"], manifest["channels"]
    shards, firsts = [], []
    for entry in manifest["shards"]:
        file = Path(path) / entry["file"]
        with open(file, "rb") as f:
            header = _SHARD_HEADER.unpack(f.read(_SHARD_HEADER.size))
        magic, codec, n, stride = header[0], header[6], header[7], header[8]
        data_offset, first = header[12], header[14]
        if magic != b"VTXSHARD" or codec != 0:
            raise ValueError(f"{file}: not a raw Vantix shard")
        if n == 0:
            continue
        rows = np.memmap(file, np.uint8, "r", offset=data_offset, shape=(n, stride))
        shards.append(rows[:, : h * w * c].reshape(n, h, w, c))
        firsts.append(first)
    return shards, np.asarray(firsts, np.int64)


def numpy_epochs(raw_path: str, batch_size: int, seed: int, method: str) -> EpochFn:
    """The yardstick: copy the records of every batch of VantixLoader's order into one
    preallocated array, with ``np.take`` (``method="take"``) or a per-record loop (``"loop"``)."""
    shards, firsts = map_raw_records(raw_path)
    if method == "take" and len(shards) != 1:
        raise ValueError("numpy_take needs a single-shard pack")
    order = vantix.VantixLoader(raw_path, batch_size=batch_size, shuffle=True, seed=seed)
    buf = np.zeros((batch_size, *shards[0].shape[1:]), np.uint8)  # zeros: pages touched now
    flat = buf.reshape(-1)

    def run(epoch: int) -> tuple[int, int]:
        indices = order.epoch_indices(epoch)  # the permutation VantixLoader uses (cheap)
        samples = checksum = 0
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            b = len(idx)
            if method == "take":
                # mode="clip" writes straight into out (mode="raise" buffers it).
                np.take(shards[0], idx, axis=0, out=buf[:b], mode="clip")
            else:
                shard_of = np.searchsorted(firsts, idx, side="right") - 1
                local = idx - firsts[shard_of]
                for k, (s, j) in enumerate(zip(shard_of.tolist(), local.tolist())):
                    buf[k] = shards[s][j]
            checksum += int(flat[: b * buf[0].size : PAGE].sum())
            samples += b
        return samples, checksum

    return run


def torchvision_pass(root: str, size: int, batch_size: int, max_images: int) -> tuple[int, float]:
    """One shuffled pass of ImageFolder + DataLoader, stopped after the batch that reaches
    ``max_images``; returns (samples, seconds), timed from creating the iterator."""
    import torch
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    transform = T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()])
    loader = torch.utils.data.DataLoader(
        ImageFolder(root, transform=transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=os.cpu_count() or 1,
        pin_memory=True,  # as the baseline is specified; a no-op (and a warning) without a GPU
    )
    samples = checksum = 0
    t0 = time.perf_counter()
    it = iter(loader)
    for images, labels in it:
        checksum += int(images.reshape(-1)[::PAGE].sum())
        samples += int(labels.shape[0])
        if samples >= max_images:
            break
    seconds = time.perf_counter() - t0
    del it  # stop the workers before anything else is measured
    return samples, seconds


# ==============================================================================================
# Measuring
# ==============================================================================================


def _result(samples: int, seconds: float, record_bytes: int, **extra: Any) -> dict[str, Any]:
    ips = samples / seconds
    return {
        "images": samples,
        "seconds": seconds,
        "images_per_s": ips,
        "gb_per_s": ips * record_bytes / 1e9,
        **extra,
    }


def measure_fast(loaders: dict[str, EpochFn], epochs: int, record_bytes: int) -> dict[str, Any]:
    """Warm-up epoch 0 for every loader, then epochs 1..``epochs`` interleaved."""
    for name, run in loaders.items():
        t0 = time.perf_counter()
        run(0)
        print(f"  warm-up {name:12s} {time.perf_counter() - t0:6.2f} s")
    seconds: dict[str, list[float]] = {name: [] for name in loaders}
    samples = dict.fromkeys(loaders, 0)
    for epoch in range(1, epochs + 1):
        for name, run in loaders.items():
            t0 = time.perf_counter()
            n, _ = run(epoch)
            seconds[name].append(time.perf_counter() - t0)
            samples[name] += n
    return {
        name: _result(
            samples[name], sum(seconds[name]), record_bytes, epochs=epochs, epoch_seconds=s
        )
        for name, s in seconds.items()
    }


def run_profile(profile: BenchProfile, args: argparse.Namespace) -> dict[str, Any]:
    """Everything measured for one profile, as a JSON-ready dict."""
    num_images = args.num_images or profile.default_images
    print(f"{profile.name}: {num_images} images -> {profile.size}x{profile.size}")
    data = prepare(profile, args.data_dir, num_images, args.repack)
    record_bytes = data["record_bytes"]
    root = args.data_dir / profile.name
    raw, zstd = (str(root / f"train-{profile.size}-{c}.vtx") for c in ("raw", "zstd"))

    loaders = {
        "vantix_raw": vantix_epochs(raw, args.batch_size, args.seed),
        "vantix_zstd": vantix_epochs(zstd, args.batch_size, args.seed),
        "numpy_loop": numpy_epochs(raw, args.batch_size, args.seed, "loop"),
    }
    if len(map_raw_records(raw)[0]) == 1:
        loaders["numpy_take"] = numpy_epochs(raw, args.batch_size, args.seed, "take")
    results = measure_fast(loaders, args.epochs, record_bytes)
    best = max(
        (n for n in results if n.startswith("numpy_")), key=lambda n: results[n]["images_per_s"]
    )
    results["numpy_gather"] = {**results[best], "method": best}

    tv_images = min(args.torchvision_images or profile.torchvision_images, num_images)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        t0 = time.perf_counter()
        torchvision_pass(str(root / "train"), profile.size, args.batch_size, tv_images)
        print(f"  warm-up {'torchvision':12s} {time.perf_counter() - t0:6.2f} s")
        n, s = torchvision_pass(str(root / "train"), profile.size, args.batch_size, tv_images)
    results["torchvision"] = _result(
        n, s, record_bytes, images_asked=tv_images, num_workers=os.cpu_count(), pin_memory=True
    )

    ratios = {}
    for key, target in TARGETS.items():
        num, den = key.split("/")
        value = results[num]["images_per_s"] / results[den]["images_per_s"]
        ratios[key] = {"value": value, "target": target, "met": value >= target}
    return {"batch_size": args.batch_size, "dataset": data, "loaders": results, "ratios": ratios}


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
    import PIL
    import torch
    import torchvision

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
        "vantix_native": _rel(Path(native)),
        "vantix_native_debug_info": _elf_has_debug_info(native),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": commit,
    }


def print_table(name: str, result: dict[str, Any]) -> None:
    rows = [
        ("vantix_raw", "VantixLoader, raw pack"),
        ("vantix_zstd", "VantixLoader, zstd pack"),
        ("numpy_gather", f"numpy gather ({result['loaders']['numpy_gather']['method']})"),
        ("numpy_loop", "  per-record loop"),
        ("numpy_take", "  np.take"),
        ("torchvision", "torchvision ImageFolder+DataLoader"),
    ]
    print(f"\n{name}: {result['dataset']['num_images']} images, batch {result['batch_size']}")
    print(f"  {'loader':36s} {'images':>8s} {'seconds':>8s} {'images/s':>10s} {'GB/s':>7s}")
    for key, label in rows:
        r = result["loaders"].get(key)
        if r is not None:
            print(
                f"  {label:36s} {r['images']:8d} {r['seconds']:8.3f}"
                f" {r['images_per_s']:10,.0f} {r['gb_per_s']:7.2f}"
            )
    for key, r in result["ratios"].items():
        verdict = "met" if r["met"] else "NOT met"
        print(f"  {key:36s} {r['value']:8.2f}x   (target >= {r['target']:g}: {verdict})")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profile", choices=[*PROFILES, "all"], default="all", help="dataset profile"
    )
    parser.add_argument(
        "--num-images", type=int, default=None, help="images per profile (imagenet-std: 1000)"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--epochs", type=int, default=20, help="timed epochs per fast loader (after 1 warm-up)"
    )
    parser.add_argument(
        "--torchvision-images",
        type=int,
        default=None,
        help="images in the timed torchvision pass, rounded up to whole batches (default 512)",
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed")
    parser.add_argument(
        "--data-dir", type=Path, default=REPO / "data" / "bench", help="dataset cache"
    )
    parser.add_argument("--repack", action="store_true", help="pack again even if cached")
    parser.add_argument("--out", type=Path, default=REPO / "assets" / "benchmark_throughput.json")
    args = parser.parse_args(argv)
    for name in ("num_images", "batch_size", "epochs", "torchvision_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = machine_info()
    print(f"{machine['cpu_model']}, {machine['cpu_count']} cores, torch {machine['torch']}")
    if machine["vantix_native_debug_info"]:
        print(
            "warning: vantix._native carries debug info (a dev build?); build it in release"
            " mode for representative numbers"
        )
    names = list(PROFILES) if args.profile == "all" else [args.profile]
    report: dict[str, Any] = {
        "benchmark": "throughput",
        "schema": 1,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "parameters": {
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "warmup_epochs": 1,
            "shuffle": True,
            "seed": args.seed,
            "num_images": args.num_images,
            "torchvision_images": args.torchvision_images,
            "touch": f"sum of one byte per {PAGE} bytes of every batch, samples counted",
            "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        },
        "profiles": {},
    }
    for name in names:
        report["profiles"][name] = run_profile(PROFILES[name], args)
    for name, result in report["profiles"].items():
        print_table(name, result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
