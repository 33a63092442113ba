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
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from common import (
    PAGE,
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
    touch_pages,
    write_report,
)

import vantix

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


def prepare(profile: BenchProfile, data_dir: Path, num_images: int, repack: bool) -> dict:
    """Source ImageFolder and raw + zstd packs of ``profile``; returns their description."""
    root = data_dir / profile.name / "train"
    return prepare_packs(root, profile.name, num_images, profile.size, ("raw", "zstd"), repack)


# ==============================================================================================
# Loaders: each is a function of the epoch that runs one epoch, touching every batch, and
# returns (samples, checksum). The caller times it.
# ==============================================================================================


def vantix_epochs(path: str, batch_size: int, seed: int) -> EpochFn:
    """One shuffled epoch of ``VantixLoader`` per call."""
    loader = vantix.VantixLoader(path, batch_size=batch_size, shuffle=True, seed=seed)
    return loader_epochs(loader, touch_pages, "VantixLoader")


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


def torchvision_transform(size: int) -> Any:
    """Resize, center-crop and convert the source JPEGs as they are packed."""
    import torchvision.transforms as T

    return T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()])


# ==============================================================================================
# Measuring
# ==============================================================================================


def measure_fast(loaders: dict[str, EpochFn], epochs: int, record_bytes: int) -> dict[str, Any]:
    """Warm-up epoch 0 for every loader, then epochs 1..``epochs`` interleaved."""
    seconds, samples = time_epochs(loaders, epochs, width=12)
    return {
        name: loader_result(samples[name], sum(s), record_bytes, epochs=epochs, epoch_seconds=s)
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
    n, s = measure_torchvision(
        str(root / "train"),
        torchvision_transform(profile.size),
        args.batch_size,
        tv_images,
        lambda images: int(images.reshape(-1)[::PAGE].sum()),
        name="torchvision",
        width=12,
    )
    results["torchvision"] = loader_result(
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


def print_table(name: str, result: dict[str, Any]) -> None:
    rows = [
        ("vantix_raw", "VantixLoader, raw pack"),
        ("vantix_zstd", "VantixLoader, zstd pack"),
        ("numpy_gather", f"numpy gather ({result['loaders']['numpy_gather']['method']})"),
        ("numpy_loop", "  per-record loop"),
        ("numpy_take", "  np.take"),
        ("torchvision", "torchvision ImageFolder+DataLoader"),
    ]
    print_loaders(name, result, rows)
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
    add_loader_options(
        parser,
        epochs=20,
        epochs_help="timed epochs per fast loader (after 1 warm-up)",
        torchvision_images=PROFILES["imagenet-std"].torchvision_images,
        seed_help="shuffle seed",
    )
    add_output_options(parser, "throughput")
    args = parser.parse_args(argv)
    check_at_least_one(parser, args, ("num_images", "batch_size", "epochs", "torchvision_images"))
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = report_machine()
    names = list(PROFILES) if args.profile == "all" else [args.profile]
    report: dict[str, Any] = {
        **report_head("throughput", machine),
        "parameters": {
            **loader_parameters(args),
            "touch": f"sum of one byte per {PAGE} bytes of every batch, samples counted",
            "command": command(argv),
        },
        "profiles": {},
    }
    for name in names:
        report["profiles"][name] = run_profile(PROFILES[name], args)
    for name, result in report["profiles"].items():
        print_table(name, result)
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
