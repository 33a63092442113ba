"""Augmentation cost: VantixLoader's in-Rust crop/flip/normalise against plain batches and
against torchvision doing the same on the source JPEGs, in one run.

On the ``imagenet-std`` profile (photo-like JPEGs around 500x375, packed raw to 224x224) the
script:

1. writes (or reuses) the synthetic ImageFolder ``DATA/imagenet-std/train`` with
   ``prepare_data.make_image_folder`` (default ``data/bench``, git-ignored) and packs it raw at
   224x224 (``DATA/imagenet-std/train-224-raw.vtx``, the pack ``benchmark_throughput.py`` uses;
   reused while it matches the source, ``--repack`` forces a new one);
2. measures three ``VantixLoader`` configurations on the raw pack, all shuffled, batch
   ``--batch-size``, on a warm page cache: one untimed warm-up epoch each, then ``--epochs``
   timed epochs, interleaved (within each epoch every configuration runs once, in turn) so that
   drift on a shared, noisy machine hits them alike:

   * ``vantix_uint8``: plain ``uint8`` NHWC batches (no augmentation);
   * ``vantix_crop_flip_uint8``: ``random_crop=224, padding=4, horizontal_flip=0.5``, ``uint8``
     NHWC (torchvision's ``RandomCrop(224, padding=4)`` + ``RandomHorizontalFlip()``);
   * ``vantix_rrc_flip_norm_f32``: ``random_resized_crop=224, horizontal_flip=0.5``, ImageNet
     ``mean``/``std``, ``dtype="float32"``, ``layout="NCHW"``: what the training step gets from
     the torchvision recipe below, ready to use. The crop is taken from the packed 224x224 image.

3. measures torchvision ``ImageFolder`` with ``Compose([RandomResizedCrop(224),
   RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)])`` + ``DataLoader(batch_size,
   shuffle=True, num_workers=os.cpu_count(), pin_memory=True)`` on the source JPEGs
   (``torchvision_rrc_flip_norm_f32``): one warm-up pass, then one timed pass of at least
   ``--torchvision-images`` images (whole batches; it is slow). Its time includes starting the
   workers, as every epoch of that configuration does.

What is timed: from creating an epoch's iterator to the end of its last batch. Every batch is
touched the same way: one element of every 4 KiB page of the batch is summed (so every page of
every image is read) and the samples are counted (each must be delivered once per epoch); the
batch's shape and dtype are checked. images/s = samples / seconds; GB/s = images/s x the bytes
of one output image (224*224*3 x 1 for uint8, x 4 for float32).

Ratios (the targets of the issue): ``vantix_rrc_flip_norm_f32 / torchvision_rrc_flip_norm_f32``
in images/s (target >= 10), and ``time(vantix_crop_flip_uint8) / time(vantix_uint8)``, the cost
of crop + flip over plain batches (target <= 1.5). Results, with machine information and
parameters, go to ``--out`` as JSON (default ``assets/benchmark_augmentation.json``).

Usage::

    python benchmarks/benchmark_augmentation.py                    # defaults
    python benchmarks/benchmark_augmentation.py --num-images 500 --epochs 5
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import benchmark_throughput as bt  # noqa: E402

import prepare_data  # noqa: E402
import vantix  # noqa: E402

PAGE = bt.PAGE  # touch one element per 4 KiB page of every batch
PROFILE = "imagenet-std"
SIZE = 224  # packed to SIZE x SIZE (center-crop); every configuration outputs SIZE x SIZE
DEFAULT_IMAGES = 1000
TORCHVISION_IMAGES = 768
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> VantixLoader options, and the (per-sample shape, dtype) each must yield.
VANTIX_CONFIGS: dict[str, dict[str, Any]] = {
    "vantix_uint8": {},
    "vantix_crop_flip_uint8": {"random_crop": SIZE, "padding": 4, "horizontal_flip": 0.5},
    "vantix_rrc_flip_norm_f32": {
        "random_resized_crop": SIZE,
        "horizontal_flip": 0.5,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "dtype": "float32",
        "layout": "NCHW",
    },
}
EXPECTED = {
    "vantix_uint8": ((SIZE, SIZE, 3), "uint8"),
    "vantix_crop_flip_uint8": ((SIZE, SIZE, 3), "uint8"),
    "vantix_rrc_flip_norm_f32": ((3, SIZE, SIZE), "float32"),
    "torchvision_rrc_flip_norm_f32": ((3, SIZE, SIZE), "float32"),
}
# The targets: key -> (numerator, denominator, measure, comparison, target). "speed"
# is a ratio of images/s (higher is better), "time" of seconds per image (lower is better).
TARGETS = {
    "vantix_rrc_flip_norm_f32/torchvision_rrc_flip_norm_f32": (
        "vantix_rrc_flip_norm_f32",
        "torchvision_rrc_flip_norm_f32",
        "speed",
        ">=",
        10.0,
    ),
    "time(vantix_crop_flip_uint8)/time(vantix_uint8)": (
        "vantix_crop_flip_uint8",
        "vantix_uint8",
        "time",
        "<=",
        1.5,
    ),
}


# ==============================================================================================
# Data
# ==============================================================================================


def prepare(data_dir: Path, num_images: int, repack: bool) -> dict[str, Any]:
    """Source ImageFolder and its raw pack at ``SIZE``; returns their description."""
    root = data_dir / PROFILE / "train"
    folder = prepare_data.make_image_folder(root, PROFILE, num_images)
    print(
        f"  source  {bt._rel(root)}: {folder.num_images} images,"
        f" {folder.bytes_on_disk / 1e6:.1f} MB ({folder.source}, {folder.seconds:.1f} s)"
    )
    dst = root.with_name(f"train-{SIZE}-raw.vtx")
    if not repack and bt._pack_matches(dst, root, folder.num_images, SIZE, "raw"):
        seconds = None  # reused: not packed in this run
    else:
        seconds = vantix.pack(root, dst, size=SIZE, codec="raw", overwrite=True).seconds
    nbytes = sum(p.stat().st_size for p in dst.iterdir() if p.is_file())
    how = "reused" if seconds is None else f"packed in {seconds:.1f} s"
    print(f"  raw     {bt._rel(dst)}: {nbytes / 1e6:.1f} MB ({how})")
    return {
        "source": bt._rel(root),
        "num_images": folder.num_images,
        "source_bytes": folder.bytes_on_disk,
        "size": SIZE,
        "record_bytes": SIZE * SIZE * 3,
        "pack": {"path": bt._rel(dst), "bytes": nbytes, "pack_seconds": seconds},
    }


# ==============================================================================================
# Loaders: each is a function of the epoch that runs one epoch, touching every batch, and
# returns (samples, checksum). The caller times it.
# ==============================================================================================

EpochFn = Callable[[int], "tuple[int, float]"]


def touch(name: str, images: Any) -> float:
    """Sum one element of every 4 KiB page of ``images`` (a contiguous tensor) after checking
    its shape and dtype against ``EXPECTED[name]``."""
    shape, dtype = EXPECTED[name]
    if tuple(images.shape[1:]) != shape or str(images.dtype) != f"torch.{dtype}":
        raise RuntimeError(
            f"{name}: got a batch of {tuple(images.shape)} {images.dtype}, expected"
            f" [B, {', '.join(map(str, shape))}] {dtype}"
        )
    return float(images.view(-1)[:: PAGE // images.element_size()].sum())


def vantix_epochs(name: str, path: str, batch_size: int, seed: int) -> EpochFn:
    """One shuffled epoch of ``VantixLoader`` with the options of ``name`` per call."""
    loader = vantix.VantixLoader(
        path, batch_size=batch_size, shuffle=True, seed=seed, **VANTIX_CONFIGS[name]
    )
    expected = loader.num_samples

    def run(epoch: int) -> tuple[int, float]:
        loader.set_epoch(epoch)
        samples, checksum = 0, 0.0
        for images, labels in loader:
            checksum += touch(name, images)
            samples += int(labels.shape[0])
        if samples != expected:
            raise RuntimeError(f"{name} gave {samples} samples, not {expected}")
        return samples, checksum

    return run


def torchvision_transform() -> Any:
    import torchvision.transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(SIZE),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def torchvision_pass(root: str, batch_size: int, max_images: int) -> tuple[int, float]:
    """One shuffled pass of ImageFolder + DataLoader with the RandomResizedCrop recipe, stopped
    after the batch that reaches ``max_images``; returns (samples, seconds), timed from creating
    the iterator."""
    import torch
    from torchvision.datasets import ImageFolder

    loader = torch.utils.data.DataLoader(
        ImageFolder(root, transform=torchvision_transform()),
        batch_size=batch_size,
        shuffle=True,
        num_workers=os.cpu_count() or 1,
        pin_memory=True,  # as the baseline is specified; a no-op (and a warning) without a GPU
    )
    samples, checksum = 0, 0.0
    t0 = time.perf_counter()
    it = iter(loader)
    for images, labels in it:
        checksum += touch("torchvision_rrc_flip_norm_f32", images)
        samples += int(labels.shape[0])
        if samples >= max_images:
            break
    seconds = time.perf_counter() - t0
    del it  # stop the workers before anything else is measured
    return samples, seconds


# ==============================================================================================
# Measuring
# ==============================================================================================


def _sample_bytes(name: str) -> int:
    shape, dtype = EXPECTED[name]
    return shape[0] * shape[1] * shape[2] * {"uint8": 1, "float32": 4}[dtype]


def _result(name: str, samples: int, seconds: float, **extra: Any) -> dict[str, Any]:
    ips = samples / seconds
    return {
        "images": samples,
        "seconds": seconds,
        "images_per_s": ips,
        "gb_per_s": ips * _sample_bytes(name) / 1e9,
        "output": {"shape": list(EXPECTED[name][0]), "dtype": EXPECTED[name][1]},
        **extra,
    }


def measure_fast(loaders: dict[str, EpochFn], epochs: int) -> dict[str, Any]:
    """Warm-up epoch 0 for every loader, then epochs 1..``epochs`` interleaved."""
    for name, run in loaders.items():
        t0 = time.perf_counter()
        run(0)
        print(f"  warm-up {name:30s} {time.perf_counter() - t0:6.2f} s")
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
            name,
            samples[name],
            sum(s),
            epochs=epochs,
            median_epoch_seconds=statistics.median(s),
            epoch_seconds=s,
            options=_jsonable(VANTIX_CONFIGS[name]),
        )
        for name, s in seconds.items()
    }


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def _ratio(key: str, results: dict[str, Any]) -> dict[str, Any]:
    """A ``TARGETS`` entry's value from the totals, and the same from the median epochs where
    both sides have epochs (less sensitive to a noisy neighbour)."""
    num, den, measure, comparison, target = TARGETS[key]
    a, b = results[num], results[den]
    speed = a["images_per_s"] / b["images_per_s"]
    value = speed if measure == "speed" else 1.0 / speed
    out: dict[str, Any] = {
        "value": value,
        "measure": measure,
        "comparison": comparison,
        "target": target,
        "met": value >= target if comparison == ">=" else value <= target,
    }
    if "median_epoch_seconds" in a and "median_epoch_seconds" in b:
        # Both sides run the same number of images per epoch.
        time_ratio = a["median_epoch_seconds"] / b["median_epoch_seconds"]
        out["value_median_epochs"] = time_ratio if measure == "time" else 1.0 / time_ratio
    return out


def check_api() -> None:
    """Exit with a clear message when ``VantixLoader`` cannot take the augmentation options
    yet (the Python API or the native extension predates them)."""
    params = inspect.signature(vantix.VantixLoader).parameters
    missing = sorted({k for opts in VANTIX_CONFIGS.values() for k in opts} - set(params))
    if missing or not hasattr(vantix._native, "Transform"):
        what = f"VantixLoader options {missing}" if missing else "vantix._native.Transform"
        sys.exit(
            f"error: this vantix build lacks the augmentation API ({what} missing);"
            " rebuild the extension (maturin develop --release) and run again"
        )


def run_profile(args: argparse.Namespace) -> dict[str, Any]:
    """Everything measured, as a JSON-ready dict."""
    import torch

    num_images = args.num_images or DEFAULT_IMAGES
    print(f"{PROFILE}: {num_images} images -> {SIZE}x{SIZE}")
    data = prepare(args.data_dir, num_images, args.repack)
    raw = str(REPO / data["pack"]["path"])

    loaders = {
        name: vantix_epochs(name, raw, args.batch_size, args.seed) for name in VANTIX_CONFIGS
    }
    results = measure_fast(loaders, args.epochs)

    tv_images = min(args.torchvision_images or TORCHVISION_IMAGES, num_images)
    root = str(args.data_dir / PROFILE / "train")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        torchvision_pass(root, args.batch_size, tv_images)
        print(f"  warm-up {'torchvision_rrc_flip_norm_f32':30s} {time.perf_counter() - t0:6.2f} s")
        n, s = torchvision_pass(root, args.batch_size, tv_images)
    results["torchvision_rrc_flip_norm_f32"] = _result(
        "torchvision_rrc_flip_norm_f32",
        n,
        s,
        images_asked=tv_images,
        num_workers=os.cpu_count(),
        pin_memory=True,
        transform=repr(torchvision_transform()),
    )
    ratios = {key: _ratio(key, results) for key in TARGETS}
    return {"batch_size": args.batch_size, "dataset": data, "loaders": results, "ratios": ratios}


# ==============================================================================================
# Report
# ==============================================================================================


def print_table(name: str, result: dict[str, Any]) -> None:
    rows = [
        ("vantix_uint8", "Vantix uint8 NHWC (plain)"),
        ("vantix_crop_flip_uint8", "Vantix crop(pad 4)+flip, uint8"),
        ("vantix_rrc_flip_norm_f32", "Vantix RRC+flip+norm, f32 NCHW"),
        ("torchvision_rrc_flip_norm_f32", "torchvision RRC+flip+norm, f32"),
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
        median = r.get("value_median_epochs")
        extra = f"; median epoch {median:.2f}x" if median is not None else ""
        print(
            f"  {key}: {r['value']:.2f}x"
            f"   (target {r['comparison']} {r['target']:g}: {verdict}{extra})"
        )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--num-images", type=int, default=None, help=f"images (default {DEFAULT_IMAGES})"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--epochs", type=int, default=10, help="timed epochs per Vantix loader (after 1 warm-up)"
    )
    parser.add_argument(
        "--torchvision-images",
        type=int,
        default=None,
        help="images in the timed torchvision pass, rounded up to whole batches"
        f" (default {TORCHVISION_IMAGES})",
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffle and augmentation seed")
    parser.add_argument(
        "--data-dir", type=Path, default=REPO / "data" / "bench", help="dataset cache"
    )
    parser.add_argument("--repack", action="store_true", help="pack again even if cached")
    parser.add_argument("--out", type=Path, default=REPO / "assets" / "benchmark_augmentation.json")
    args = parser.parse_args(argv)
    for name in ("num_images", "batch_size", "epochs", "torchvision_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    check_api()
    machine = bt.machine_info()
    print(f"{machine['cpu_model']}, {machine['cpu_count']} cores, torch {machine['torch']}")
    if machine["vantix_native_debug_info"]:
        print(
            "warning: vantix._native carries debug info (a dev build?); build it in release"
            " mode for representative numbers"
        )
    report: dict[str, Any] = {
        "benchmark": "augmentation",
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
            "size": SIZE,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "touch": f"sum of one element per {PAGE} bytes of every batch, samples counted,"
            " shape and dtype checked",
            "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        },
        "profiles": {PROFILE: run_profile(args)},
    }
    for name, result in report["profiles"].items():
        print_table(name, result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
