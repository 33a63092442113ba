"""Loader throughput: Vantix against a memory-copy yardstick and torchvision, in one run.

Three profiles (``--profiles``, default all), as ``prepare_data`` writes them: ``cifar-like``
(32x32 PNG, packed at 32), ``imagenet-std`` (JPEGs around 500x375, packed to 224x224) and
``4k-medical`` (2048-px grey JPEG/PNG, packed to 224x224: heavy downscaling). For each the
script:

1. writes a synthetic ImageFolder with ``prepare_data.make_image_folder`` into
   ``DATA/<profile>/train`` (default ``data/bench``, git-ignored; kept between runs) and packs
   it with ``vantix.pack`` twice, raw and zstd (``DATA/<profile>/train-<size>-<codec>.vtx``).
   Packing is always done, and timed, in this run: the fresh pack is written into a temporary
   sibling folder and replaces the cached one unless that one still matches (``--repack``
   forces replacing it). Reported: packing seconds and images/s, bytes on disk of the source
   folder and of both packs;
2. warms up every loader once (untimed: one epoch each, one torchvision pass), then runs
   ``--trials`` trials (default 3). A trial is a full timed measurement of every loader:

   * ``vantix_raw``: ``VantixLoader(raw pack, batch_size, shuffle=True)``, ``--epochs``
     epochs; ``vantix_zstd``: the same on the zstd pack;
   * ``numpy_take`` and ``numpy_loop``, the memory-copy yardstick: the raw shards are
     memory-mapped with numpy (layout from docs/FORMAT.md) and, for each batch of the very
     indices ``VantixLoader`` visits in that epoch (``epoch_indices``), the records are copied
     into one preallocated ``[B, H, W, 3]`` uint8 array, by ``np.take(..., out=buf)`` and by a
     Python loop ``buf[k] = records[i]``. ``numpy_gather`` is the faster of the two (by mean).
     It runs on one core; Vantix uses all of them. The fast loaders' epochs are interleaved
     (within each epoch every loader runs once, in turn) so that drift on a shared machine
     hits them alike;
   * ``torchvision``: ``ImageFolder`` + ``DataLoader(num_workers=os.cpu_count(),
     pin_memory=True, shuffle=True)`` with ``Resize(size)``, ``CenterCrop(size)`` and
     ``PILToTensor()`` on the source files: one pass of at least ``--torchvision-images``
     images (whole batches; per-profile default, capped because it is slow, above all on
     4k-medical). Its time includes starting the workers, as every epoch of that
     configuration does.

   Every loader uses the same batch size (per-profile default, or ``--batch-size``) and
   shuffles. A trial's images/s is its samples over its seconds; the report gives the mean
   and the sample standard deviation over trials, and every trial's figure.

What is timed: from creating an epoch's iterator to the end of its last batch. Every loader
touches every batch the same way: it sums one byte of every 4 KiB page of the batch
(``images.view(-1)[::4096].sum()``), so every page of every image is read, and it counts the
samples (a fast loader must deliver each sample once per epoch). GB/s = images/s x H*W*3
bytes / 1e9, the decoded image bytes delivered.

Break-even: packing pays for itself after ``pack seconds / (torchvision epoch seconds - Vantix
epoch seconds)`` epochs, with epoch seconds = images / mean images/s (torchvision's rate
measured on its capped pass), for the raw and the zstd pack; null if Vantix is not faster.

Ratios: ``vantix_raw / numpy_gather`` (target >= 0.6) and ``vantix_raw / torchvision`` (target
>= 20), of the means. Results, with machine information and parameters, go to ``--out`` as
JSON (default ``ASSETS/benchmark_throughput.json``), and two charts into ``--assets-dir``
(default ``assets/``): ``benchmark_throughput.png`` (images/s per profile and loader) and
``benchmark_rigorous.png`` (means with +-1 std error bars over the trials).

Usage::

    python benchmarks/benchmark_throughput.py                      # defaults (a few minutes)
    python benchmarks/benchmark_throughput.py --profiles imagenet-std --trials 5
    python benchmarks/benchmark_throughput.py --num-images 64 --torchvision-images 32 \\
        --epochs 2 --trials 2 --data-dir /tmp/vtx-bench --assets-dir /tmp/vtx-assets   # tiny
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
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
    prepare_packs,
    print_warmup,
    report_head,
    report_machine,
    time_epochs,
    torchvision_pass,
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
    torchvision_images: int  # images in each timed torchvision pass (at least)
    batch_size: int  # for every loader of the profile


PROFILES = {
    p.name: p
    for p in (
        BenchProfile(
            "cifar-like", 32, default_images=5000, torchvision_images=2560, batch_size=256
        ),
        BenchProfile(
            "imagenet-std", 224, default_images=1000, torchvision_images=512, batch_size=256
        ),
        # 2048-px sources: torchvision decodes ~10 images/s per core; 2 batches, one per worker
        # on 2 cores, keep its passes to seconds.
        BenchProfile("4k-medical", 224, default_images=100, torchvision_images=64, batch_size=32),
    )
}
LOADERS = ("vantix_raw", "vantix_zstd", "numpy_gather", "torchvision")  # in charts and tables
LABELS = {
    "vantix_raw": "Vantix raw",
    "vantix_zstd": "Vantix zstd",
    "numpy_gather": "numpy gather (memcpy yardstick)",
    "torchvision": "torchvision DataLoader",
}
COLOURS = {
    "vantix_raw": "#1f77b4",
    "vantix_zstd": "#6baed6",
    "numpy_gather": "#7f7f7f",
    "torchvision": "#d62728",
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
    the global index of every shard's first record.

    The one place a benchmark reads the manifest and shard headers itself, as docs/FORMAT.md
    specifies them: the yardstick must not use the reader it measures."""
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


def stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and the values."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "trials": list(values)}


def summarize(
    per_trial: list[tuple[int, float]], record_bytes: int, **extra: Any
) -> dict[str, Any]:
    """A loader's figures over all trials (pooled, as :func:`loader_result`), plus images/s
    and GB/s per trial with their mean and standard deviation."""
    ips = [n / s for n, s in per_trial]
    result = loader_result(
        sum(n for n, _ in per_trial), sum(s for _, s in per_trial), record_bytes, **extra
    )
    result["trial_images"] = [n for n, _ in per_trial]
    result["trial_seconds"] = [s for _, s in per_trial]
    result["images_per_s_stats"] = stats(ips)
    result["gb_per_s_stats"] = stats([v * record_bytes / 1e9 for v in ips])
    return result


def mean_ips(result: dict[str, Any]) -> float:
    return result["images_per_s_stats"]["mean"]


def run_trials(
    loaders: dict[str, EpochFn], tv: dict[str, Any], trials: int, epochs: int, seed: int
) -> dict[str, list[tuple[int, float]]]:
    """Warm-up of every loader, then ``trials`` trials; each times ``epochs`` interleaved
    epochs of every fast loader (new shuffles: epochs continue across trials) and one
    torchvision pass. Returns (samples, seconds) per trial, per loader."""
    width = 12
    for name, run in loaders.items():
        t0 = time.perf_counter()
        run(0)
        print_warmup(name, width, time.perf_counter() - t0)
    t0 = time.perf_counter()
    torchvision_pass(**tv)
    print_warmup("torchvision", width, time.perf_counter() - t0)
    out: dict[str, list[tuple[int, float]]] = {name: [] for name in [*loaders, "torchvision"]}
    for trial in range(trials):
        seconds, samples = time_epochs(
            loaders, epochs, width, warmup=False, first_epoch=1 + trial * epochs
        )
        for name in loaders:
            out[name].append((samples[name], sum(seconds[name])))
        import torch

        torch.manual_seed(seed + trial)  # the shuffle of this trial's torchvision pass
        out["torchvision"].append(torchvision_pass(**tv))
        line = "  ".join(f"{n} {k / v:,.0f}" for n, runs in out.items() for k, v in runs[-1:])
        print(f"  trial {trial + 1}/{trials} images/s: {line}")
    return out


def break_even(data: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """Epochs after which packing (per codec) has paid for itself against torchvision."""
    n = data["num_images"]
    tv_epoch = n / mean_ips(results["torchvision"])
    out: dict[str, Any] = {"torchvision_epoch_seconds": tv_epoch}
    for codec in ("raw", "zstd"):
        vx_epoch = n / mean_ips(results[f"vantix_{codec}"])
        saved = tv_epoch - vx_epoch
        pack_s = data["packs"][codec]["pack_seconds"]
        out[codec] = {
            "pack_seconds": pack_s,
            "vantix_epoch_seconds": vx_epoch,
            "seconds_saved_per_epoch": saved,
            "epochs": pack_s / saved if saved > 0 else None,
        }
    return out


def run_profile(profile: BenchProfile, args: argparse.Namespace) -> dict[str, Any]:
    """Everything measured for one profile, as a JSON-ready dict."""
    num_images = args.num_images or profile.default_images
    batch_size = args.batch_size or profile.batch_size
    print(
        f"\n{profile.name}: {num_images} images -> {profile.size}x{profile.size},"
        f" batch {batch_size}"
    )
    root = args.data_dir / profile.name / "train"
    data = prepare_packs(
        root, profile.name, num_images, profile.size, ("raw", "zstd"), args.repack,
        time_packing=True,
    )  # fmt: skip
    num_images = data["num_images"]
    record_bytes = data["record_bytes"]
    raw, zstd = (data_path(data["packs"][c]["path"]) for c in ("raw", "zstd"))

    loaders = {
        "vantix_raw": vantix_epochs(raw, batch_size, args.seed),
        "vantix_zstd": vantix_epochs(zstd, batch_size, args.seed),
        "numpy_loop": numpy_epochs(raw, batch_size, args.seed, "loop"),
    }
    if len(map_raw_records(raw)[0]) == 1:
        loaders["numpy_take"] = numpy_epochs(raw, batch_size, args.seed, "take")
    tv_images = min(args.torchvision_images or profile.torchvision_images, num_images)
    tv = {
        "root": str(root),
        "transform": torchvision_transform(profile.size),
        "batch_size": batch_size,
        "max_images": tv_images,
        "touch": lambda images: int(images.reshape(-1)[::PAGE].sum()),
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        runs = run_trials(loaders, tv, args.trials, args.epochs, args.seed)

    results = {
        name: summarize(runs[name], record_bytes, epochs_per_trial=args.epochs) for name in loaders
    }
    best = max((n for n in results if n.startswith("numpy_")), key=lambda n: mean_ips(results[n]))
    results["numpy_gather"] = {**results[best], "method": best}
    results["torchvision"] = summarize(
        runs["torchvision"],
        record_bytes,
        images_asked=tv_images,
        capped=tv_images < num_images,
        num_workers=os.cpu_count(),
        pin_memory=True,
    )

    ratios = {}
    for key, target in TARGETS.items():
        num, den = key.split("/")
        value = mean_ips(results[num]) / mean_ips(results[den])
        ratios[key] = {"value": value, "target": target, "met": value >= target}
    return {
        "batch_size": batch_size,
        "size": profile.size,
        "dataset": data,
        "loaders": results,
        "ratios": ratios,
        "break_even": break_even(data, results),
    }


def data_path(path: str) -> str:
    """A path of the report (relative to the repository when inside it) as a usable path."""
    return str(REPO / path) if not Path(path).is_absolute() else path


# ==============================================================================================
# Report
# ==============================================================================================


def print_table(name: str, result: dict[str, Any], trials: int) -> None:
    data = result["dataset"]
    print(
        f"\n{name}: {data['num_images']} images at {result['size']}x{result['size']},"
        f" batch {result['batch_size']}, {trials} trials (mean +- std)"
    )
    print(f"  {'loader':36s} {'images/s':>20s} {'GB/s':>7s} {'images/trial':>12s}")
    rows = [
        ("vantix_raw", "VantixLoader, raw pack"),
        ("vantix_zstd", "VantixLoader, zstd pack"),
        ("numpy_gather", f"numpy gather ({result['loaders']['numpy_gather']['method']})"),
        ("numpy_loop", "  per-record loop"),
        ("numpy_take", "  np.take"),
        ("torchvision", "torchvision ImageFolder+DataLoader"),
    ]
    for key, label in rows:
        r = result["loaders"].get(key)
        if r is not None:
            st = r["images_per_s_stats"]
            ips = f"{st['mean']:,.0f} +- {st['std']:,.0f}"
            per_trial = r["images"] // trials
            print(f"  {label:36s} {ips:>20s} {r['gb_per_s_stats']['mean']:7.3f} {per_trial:12d}")
    for key, r in result["ratios"].items():
        verdict = "met" if r["met"] else "NOT met"
        print(f"  {key:36s} {r['value']:8.2f}x   (target >= {r['target']:g}: {verdict})")
    print(f"  source folder {data['source_bytes'] / 1e6:10.1f} MB")
    for codec in ("raw", "zstd"):
        pack = data["packs"][codec]
        be = result["break_even"][codec]["epochs"]
        be_text = f"{be:.2f} epochs" if be is not None else "never (not faster)"
        print(
            f"  {codec:4s} pack     {pack['bytes'] / 1e6:10.1f} MB, packed in"
            f" {pack['pack_seconds']:.3f} s ({pack['pack_images_per_s']:,.0f} images/s),"
            f" pays for itself after {be_text}"
        )


# ==============================================================================================
# Charts
# ==============================================================================================


def caption(report: dict[str, Any]) -> str:
    m, p = report["machine"], report["parameters"]
    tv = ", ".join(
        f"{name} {result['loaders']['torchvision']['trial_images'][0]}"
        for name, result in report["profiles"].items()
    )
    usable = f", {m['cpus_usable']} usable" if m.get("cpus_usable") != m["cpu_count"] else ""
    return (
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores{usable}; torch {m['torch']},"
        f" torchvision {m['torchvision']}, vantix {m['vantix']}. Shuffled, every batch"
        f" touched; {p['trials']} trials, warm-up excluded; torchvision:"
        f" num_workers={m['cpu_count']}, {tv} images per pass."
    )


def short(value: float) -> str:
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if value >= div:
            return f"{value / div:.3g}{unit}"
    return f"{value:.3g}"


def write_charts(report: dict[str, Any], assets: Path) -> list[Path]:
    """``benchmark_throughput.png`` and ``benchmark_rigorous.png`` into ``assets``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = report["profiles"]
    names = list(profiles)
    assets.mkdir(parents=True, exist_ok=True)
    means = {
        n: [mean_ips(profiles[n]["loaders"][k]) for k in LOADERS] for n in names
    }  # fmt: skip
    everything = [v for vs in means.values() for v in vs if v > 0]
    log = max(everything) / min(everything) > 20
    xlabels = [
        f"{n}\n{profiles[n]['dataset']['num_images']} images -> {profiles[n]['size']} px"
        for n in names
    ]
    written = []

    # 1. Bars per profile, one per loader.
    fig, ax = plt.subplots(figsize=(10, 5.6), dpi=100)
    width = 0.8 / len(LOADERS)
    for j, key in enumerate(LOADERS):
        xs = [i + (j - (len(LOADERS) - 1) / 2) * width for i in range(len(names))]
        ys = [means[n][j] for n in names]
        bars = ax.bar(xs, ys, width, label=LABELS[key], color=COLOURS[key])
        ax.bar_label(bars, [short(y) for y in ys], fontsize=7, padding=2)
    ax.set_xticks(range(len(names)), xlabels)
    ax.set_xlabel("dataset profile (source images -> packed size)")
    ax.set_ylabel("images per second" + (" (log scale)" if log else ""))
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.15)
    ax.set_title("Data-loading throughput: images/s per profile and loader (higher is better)")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.text(0.5, 0.01, caption(report), ha="center", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = assets / "benchmark_throughput.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)

    # 2. Means with +-1 std error bars, one panel per profile.
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names) + 0.6, 5.2), dpi=100)
    axes = [axes] if len(names) == 1 else list(axes)
    for ax, n in zip(axes, names):
        loaders = profiles[n]["loaders"]
        st = [loaders[k]["images_per_s_stats"] for k in LOADERS]
        ys, errs = [s["mean"] for s in st], [s["std"] for s in st]
        bars = ax.bar(
            range(len(LOADERS)),
            ys,
            yerr=errs,
            capsize=4,
            color=[COLOURS[k] for k in LOADERS],
            error_kw={"elinewidth": 1},
        )
        ax.bar_label(
            bars, [f"{short(y)}\n±{short(e)}" for y, e in zip(ys, errs)], fontsize=7, padding=3
        )
        ax.set_xticks(range(len(LOADERS)), [LABELS[k].split(" (")[0] for k in LOADERS])
        ax.tick_params(axis="x", labelsize=8)
        plt.setp(ax.get_xticklabels(), rotation=25, ha="right", rotation_mode="anchor")
        if log:
            ax.set_yscale("log")
        ax.margins(y=0.2)
        ax.set_title(f"{n} ({profiles[n]['size']} px, batch {profiles[n]['batch_size']})")
        ax.set_ylabel("images per second" + (" (log scale)" if log else ""))
        ax.grid(axis="y", alpha=0.3)
    trials = report["parameters"]["trials"]
    fig.suptitle(f"Throughput, mean ±1 std over {trials} trials (images/s, higher is better)")
    fig.text(0.5, 0.01, caption(report), ha="center", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = assets / "benchmark_rigorous.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} KB)")
    return written


# ==============================================================================================
# Command line
# ==============================================================================================


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profiles",
        "--profile",
        nargs="+",
        choices=[*PROFILES, "all"],
        metavar="PROFILE",
        default=["all"],
        help=f"dataset profiles: {', '.join(PROFILES)} or all (default all)",
    )
    defaults = ", ".join(f"{p.name} {p.default_images}" for p in PROFILES.values())
    parser.add_argument(
        "--num-images", type=int, default=None, help=f"images of every profile ({defaults})"
    )
    tv_defaults = ", ".join(f"{p.name} {p.torchvision_images}" for p in PROFILES.values())
    add_loader_options(
        parser,
        epochs=5,
        epochs_help="timed epochs per fast loader per trial (after 1 warm-up epoch)",
        torchvision_images=0,
        seed_help="shuffle seed",
    )
    add_output_options(parser, "throughput")
    parser.add_argument("--trials", type=int, default=3, help="timed trials of every loader")
    bs_defaults = ", ".join(f"{p.name} {p.batch_size}" for p in PROFILES.values())
    parser.set_defaults(batch_size=None, out=None)
    for action in parser._actions:
        if action.dest == "batch_size":
            action.help = f"batch size of every loader (default per profile: {bs_defaults})"
        elif action.dest == "torchvision_images":
            action.help = (
                "images in each timed torchvision pass, rounded up to whole batches"
                f" (default per profile: {tv_defaults})"
            )
        elif action.dest == "out":
            action.help = "JSON report (default ASSETS/benchmark_throughput.json)"
    parser.add_argument(
        "--assets-dir", type=Path, default=REPO / "assets", help="where the charts go (ASSETS)"
    )
    parser.add_argument("--no-charts", action="store_true", help="write no charts")
    args = parser.parse_args(argv)
    check_at_least_one(
        parser, args, ("num_images", "batch_size", "epochs", "torchvision_images", "trials")
    )
    if args.out is None:
        args.out = args.assets_dir / "benchmark_throughput.json"
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = report_machine()
    names = list(PROFILES) if "all" in args.profiles else list(dict.fromkeys(args.profiles))
    report: dict[str, Any] = {
        **report_head("throughput", machine),
        "parameters": {
            **loader_parameters(args),
            "trials": args.trials,
            "epochs_per_trial": args.epochs,
            "profiles": names,
            "touch": f"sum of one byte per {PAGE} bytes of every batch, samples counted",
            "std": "sample standard deviation over trials of images/s",
            "break_even": "pack seconds / (torchvision - vantix epoch seconds), epoch seconds"
            " = images / mean images/s (torchvision's rate from its capped passes)",
            "command": command(argv),
        },
        "profiles": {},
    }
    for name in names:
        report["profiles"][name] = run_profile(PROFILES[name], args)
    for name, result in report["profiles"].items():
        print_table(name, result, args.trials)
    write_report(args.out, report)
    if not args.no_charts:
        report["charts"] = [str(p) for p in write_charts(report, args.assets_dir)]
    return report


if __name__ == "__main__":
    main()
