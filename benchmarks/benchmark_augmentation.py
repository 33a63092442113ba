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
import functools
import inspect
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from common import (
    PAGE,
    REPO,
    EpochFn,
    add_loader_options,
    add_output_options,
    check_at_least_one,
    command,
    loader_epochs,
    loader_parameters,
    loader_result,
    measure_torchvision,
    prepare_packs,
    print_loaders,
    report_head,
    report_machine,
    time_epochs,
    write_report,
)

import vantix

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
    info = prepare_packs(data_dir / PROFILE / "train", PROFILE, num_images, SIZE, ("raw",), repack)
    info["pack"] = info.pop("packs")["raw"]
    return info


# ==============================================================================================
# Loaders: each is a function of the epoch that runs one epoch, touching every batch, and
# returns (samples, checksum). The caller times it.
# ==============================================================================================


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
    return loader_epochs(loader, functools.partial(touch, name), name)


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


# ==============================================================================================
# Measuring
# ==============================================================================================


def _sample_bytes(name: str) -> int:
    shape, dtype = EXPECTED[name]
    return shape[0] * shape[1] * shape[2] * {"uint8": 1, "float32": 4}[dtype]


def _result(name: str, samples: int, seconds: float, **extra: Any) -> dict[str, Any]:
    output = {"shape": list(EXPECTED[name][0]), "dtype": EXPECTED[name][1]}
    return loader_result(samples, seconds, _sample_bytes(name), output=output, **extra)


def measure_fast(loaders: dict[str, EpochFn], epochs: int) -> dict[str, Any]:
    """Warm-up epoch 0 for every loader, then epochs 1..``epochs`` interleaved."""
    seconds, samples = time_epochs(loaders, epochs, width=30)
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
    n, s = measure_torchvision(
        root,
        torchvision_transform(),
        args.batch_size,
        tv_images,
        functools.partial(touch, "torchvision_rrc_flip_norm_f32"),
        name="torchvision_rrc_flip_norm_f32",
        width=30,
        seed=args.seed,
    )
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
    print_loaders(name, result, rows)
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
    add_loader_options(
        parser,
        epochs=10,
        epochs_help="timed epochs per Vantix loader (after 1 warm-up)",
        torchvision_images=TORCHVISION_IMAGES,
        seed_help="shuffle and augmentation seed",
    )
    add_output_options(parser, "augmentation")
    args = parser.parse_args(argv)
    check_at_least_one(parser, args, ("num_images", "batch_size", "epochs", "torchvision_images"))
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    check_api()
    machine = report_machine()
    report: dict[str, Any] = {
        **report_head("augmentation", machine),
        "parameters": {
            **loader_parameters(args),
            "size": SIZE,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "touch": f"sum of one element per {PAGE} bytes of every batch, samples counted,"
            " shape and dtype checked",
            "command": command(argv),
        },
        "profiles": {PROFILE: run_profile(args)},
    }
    for name, result in report["profiles"].items():
        print_table(name, result)
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
