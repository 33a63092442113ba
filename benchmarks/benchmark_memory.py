"""Loader memory: VantixLoader's own memory is a few batches, whatever the dataset size.

The packed shards are memory-mapped, so the pages of the dataset that have been read count in
a process's RSS as *file-backed* pages: page cache that the kernel can drop at any time, and that
grows with the dataset. What the loader itself costs is its *anonymous* memory: the batch
buffers of its pool, the prefetch thread, the assembling threads. This script measures that as
``RssAnon`` (from ``/proc/self/status``) and checks that it stays within

    (prefetch + 2 + held) x batch_bytes + fixed

(``prefetch`` batches waiting in the channel, one being assembled, one in the training step,
plus any batch the training loop keeps alive longer; ``fixed`` = 32 MiB for threads, label
arrays, allocator slack), for two dataset sizes, and that it does not grow with the dataset.

For each dataset size (``--sizes``, default 1500 and 6000 images, so that even the smaller one
has more batches per epoch than the pipeline holds: ``prefetch + 2``) the script writes a
synthetic ``cifar-like`` ImageFolder with ``prepare_data.make_image_folder`` and packs it raw at
224x224 (``DATA/memory/cifar-like-<n>/``, default ``data/bench``, git-ignored, reused; what
matters is the record size, 224*224*3 bytes, and the count). Then, for each variant, a FRESH
Python process (so that allocator state and imported modules do not carry over):

1. samples ``RssAnon`` at start, after ``import numpy, torch, vantix`` and after opening
   ``VantixLoader(pack, batch_size, shuffle=True, prefetch)`` (the *baseline*);
2. iterates ``--epochs`` shuffled epochs; each batch is touched (one byte per 4 KiB page), kept
   for a simulated training step (``--step-ms`` of sleep, default 100 ms, so that the prefetch
   thread fills its queue: the worst case for memory; long enough for the queue to fill even
   while the pool's buffers are still being faulted in), then ``RssAnon`` is sampled and the
   batch is dropped before the next one is asked for. ``RssAnon`` is also sampled every 5 ms by
   a background thread;
3. the peak is the largest sample of either kind, and ``loader_overhead = peak - baseline``.

Variants: ``held=0`` drops every batch before the next (``del images, labels``); ``held=1``
keeps the previous batch alive while the next is fetched (as a plain ``for images, labels in
loader`` loop does until the names are rebound), which needs one more buffer.

Reported per run: the overhead in MB (1e6 bytes) and in batches (``batch_bytes`` = batch_size x
record bytes), the bound, whether it is met, and per variant the ratio of the overhead on the
larger dataset to that on the smaller one (target about 1: it must not grow with the dataset).
``RssFile`` (the mapped shards) is reported alongside to show what ``RssAnon`` leaves out.
Results, with machine information and parameters, go to ``--out`` as JSON (default
``assets/benchmark_memory.json``).

Usage::

    python benchmarks/benchmark_memory.py                          # defaults
    python benchmarks/benchmark_memory.py --sizes 2000 8000 --prefetch 2
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional, Sequence

# Only the standard library at module level (common too): the measuring child process imports
# exactly what it measures (numpy, torch, vantix), and nothing of the parent's (PIL, the data
# generator).
from common import (
    REPO,
    add_output_options,
    check_at_least_one,
    command,
    ensure_pack,
    rel,
    report_head,
    report_machine,
    touch_pages,
    write_report,
)

PROFILE = "cifar-like"  # cheap to generate; records are packed at --size whatever the source
FIXED_BYTES = 32 * 2**20  # allowance for threads, label arrays, allocator slack
SAMPLE_PERIOD_S = 0.005  # background RssAnon sampling
RATIO_TOLERANCE = 0.1  # large/small overhead within 1 +- this counts as "does not grow"


# ==============================================================================================
# The measuring child (a fresh process per measurement)
# ==============================================================================================


def read_status() -> dict[str, int]:
    """``RssAnon``, ``RssFile``, ``RssShmem``, ``VmRSS``, ``VmHWM`` of this process, in bytes."""
    wanted = {"RssAnon", "RssFile", "RssShmem", "VmRSS", "VmHWM"}
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in wanted:
                out[key] = int(value.split()[0]) * 1024  # kB
    return out


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux >= 4.5 needed)")


class _Sampler(threading.Thread):
    """Samples ``RssAnon`` every ``period`` seconds until stopped; keeps the maximum."""

    def __init__(self, period: float) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.peak = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_anon())
            self.samples += 1
            self._stop_event.wait(self.period)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process; returns it as a JSON-ready dict."""
    start = read_status()
    import numpy  # noqa: F401
    import torch

    import vantix

    gc.collect()
    after_imports = read_status()
    loader = vantix.VantixLoader(
        spec["path"],
        batch_size=spec["batch_size"],
        shuffle=True,
        seed=0,
        prefetch=spec["prefetch"],
    )
    gc.collect()
    after_open = read_status()

    held: deque = deque(maxlen=max(spec["held"], 1))
    step_s = spec["step_ms"] / 1000
    per_batch: list[int] = []
    samples = checksum = 0
    sampler = _Sampler(SAMPLE_PERIOD_S)
    sampler.start()
    t0 = time.perf_counter()
    for _ in range(spec["epochs"]):
        for images, labels in loader:
            checksum += touch_pages(images)
            samples += int(labels.shape[0])
            time.sleep(step_s)  # the training step: the prefetch thread fills its queue
            per_batch.append(rss_anon())
            if spec["held"]:
                held.append((images, labels))
            del images, labels  # nothing but `held` keeps the batch alive past this point
    seconds = time.perf_counter() - t0
    sampler.stop()
    end = read_status()
    held.clear()
    gc.collect()
    released = read_status()
    expected = loader.num_samples * spec["epochs"]
    if samples != expected:
        raise RuntimeError(f"got {samples} samples, not {expected}")
    return {
        "torch": torch.__version__,
        "rss_start": start,
        "rss_after_imports": after_imports,
        "rss_after_open": after_open,
        "rss_end": end,
        "rss_after_release": released,
        "peak_rss_anon_per_batch": max(per_batch),
        "peak_rss_anon_sampler": sampler.peak,
        "sampler_samples": sampler.samples,
        "per_batch_rss_anon": per_batch,
        "batches": len(per_batch),
        "samples": samples,
        "seconds": seconds,
        "free_buffers_after": loader._native.free_buffers(),
        "checksum": checksum,
    }


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`child` in a new interpreter and return its result."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measuring process failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ==============================================================================================
# Data (parent)
# ==============================================================================================


def prepare(data_dir: Path, num_images: int, size: int, repack: bool) -> dict[str, Any]:
    """A ``PROFILE`` ImageFolder of ``num_images`` images packed raw at ``size``."""
    import prepare_data

    root = data_dir / "memory" / f"{PROFILE}-{num_images}" / "train"
    folder = prepare_data.make_image_folder(root, PROFILE, num_images)
    pack = ensure_pack(root, folder.num_images, size, "raw", repack)
    print(
        f"  {folder.num_images:6d} images: {rel(pack.path)}, {pack.nbytes / 1e6:.1f} MB"
        f" ({pack.how}); source {folder.source}"
    )
    return {
        "source": rel(root),
        "num_images": folder.num_images,
        "pack": rel(pack.path),
        "pack_bytes": pack.nbytes,
        "pack_seconds": pack.seconds,
    }


# ==============================================================================================
# Measuring (parent)
# ==============================================================================================


def measure(
    pack: str, num_images: int, held: int, args: argparse.Namespace, batch_bytes: int
) -> dict[str, Any]:
    """One fresh-process run, reduced to the figures the report needs."""
    spec = {
        "path": str(REPO / pack),
        "batch_size": args.batch_size,
        "prefetch": args.prefetch,
        "epochs": args.epochs,
        "held": held,
        "step_ms": args.step_ms,
    }
    r = run_child(spec)
    baseline = r["rss_after_open"]["RssAnon"]
    peak = max(r["peak_rss_anon_per_batch"], r["peak_rss_anon_sampler"])
    overhead = peak - baseline
    buffers = args.prefetch + 2 + held
    bound = buffers * batch_bytes + FIXED_BYTES
    return {
        "num_images": num_images,
        "held": held,
        "batches_per_epoch": r["batches"] // args.epochs,
        "rss_anon_start": r["rss_start"]["RssAnon"],
        "rss_anon_after_imports": r["rss_after_imports"]["RssAnon"],
        "rss_anon_baseline": baseline,
        "rss_anon_peak": peak,
        "rss_anon_peak_per_batch": r["peak_rss_anon_per_batch"],
        "rss_anon_peak_sampler": r["peak_rss_anon_sampler"],
        "rss_anon_end": r["rss_end"]["RssAnon"],
        "rss_anon_after_release": r["rss_after_release"]["RssAnon"],
        "retained_after_epochs_bytes": r["rss_after_release"]["RssAnon"] - baseline,
        "rss_file_baseline": r["rss_after_open"]["RssFile"],
        "rss_file_end": r["rss_end"]["RssFile"],
        "vm_hwm": r["rss_end"]["VmHWM"],
        "loader_overhead_bytes": overhead,
        "loader_overhead_mb": overhead / 1e6,
        "loader_overhead_batches": overhead / batch_bytes,
        "fixed_part_bytes": overhead - buffers * batch_bytes,
        "bound_buffers": buffers,
        "bound_bytes": bound,
        "bound_mb": bound / 1e6,
        "within_bound": overhead <= bound,
        "free_buffers_after": r["free_buffers_after"],
        "per_batch_rss_anon": r["per_batch_rss_anon"],
        "sampler_samples": r["sampler_samples"],
        "samples": r["samples"],
        "seconds": r["seconds"],
    }


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    print(f"datasets ({PROFILE}, packed raw {args.size}x{args.size}):")
    data = {n: prepare(args.data_dir, n, args.size, args.repack) for n in args.sizes}
    record_bytes = args.size * args.size * 3
    batch_bytes = args.batch_size * record_bytes
    runs = []
    for held in args.held:
        for n in args.sizes:
            t0 = time.perf_counter()
            run = measure(data[n]["pack"], n, held, args, batch_bytes)
            runs.append(run)
            print(
                f"  measured {n:6d} images, held={held}: overhead"
                f" {run['loader_overhead_mb']:7.1f} MB ({time.perf_counter() - t0:.1f} s)"
            )
    growth = {}
    small, large = min(args.sizes), max(args.sizes)
    for held in args.held:
        by_n = {r["num_images"]: r for r in runs if r["held"] == held}
        value = by_n[large]["loader_overhead_bytes"] / by_n[small]["loader_overhead_bytes"]
        growth[f"held={held}"] = {
            "large/small": value,
            "sizes": [small, large],
            "target": 1.0,
            "tolerance": RATIO_TOLERANCE,
            "met": abs(value - 1.0) <= RATIO_TOLERANCE,
        }
    return {
        "record_bytes": record_bytes,
        "batch_bytes": batch_bytes,
        "fixed_allowance_bytes": FIXED_BYTES,
        "datasets": data,
        "runs": runs,
        "growth": growth,
    }


# ==============================================================================================
# Report
# ==============================================================================================


def print_table(result: dict[str, Any], args: argparse.Namespace) -> None:
    bb = result["batch_bytes"]
    print(
        f"\nVantixLoader anonymous memory: batch {args.batch_size} x {args.size}x{args.size}x3"
        f" = {bb / 1e6:.1f} MB, prefetch {args.prefetch}, {args.epochs} epochs,"
        f" step {args.step_ms:g} ms"
    )
    print(
        f"  {'images':>7s} {'held':>4s} {'baseline':>9s} {'peak':>9s} {'overhead':>9s}"
        f" {'batches':>7s} {'bound':>9s} {'':4s} {'kept':>9s} {'RssFile':>9s}"
    )
    for r in result["runs"]:
        verdict = "ok" if r["within_bound"] else "OVER"
        print(
            f"  {r['num_images']:7d} {r['held']:4d} {r['rss_anon_baseline'] / 1e6:6.1f} MB"
            f" {r['rss_anon_peak'] / 1e6:6.1f} MB {r['loader_overhead_mb']:6.1f} MB"
            f" {r['loader_overhead_batches']:7.2f} {r['bound_mb']:6.1f} MB {verdict:4s}"
            f" {r['retained_after_epochs_bytes'] / 1e6:6.1f} MB {r['rss_file_end'] / 1e6:6.1f} MB"
        )
    print(
        f"  bound = (prefetch + 2 + held) x {bb / 1e6:.1f} MB"
        f" + {FIXED_BYTES / 2**20:.0f} MiB; kept: RssAnon over the baseline after the epochs"
        " (the pool's warm buffers); RssFile (mapped shards, page cache) is not counted"
    )
    for key, g in result["growth"].items():
        verdict = "met" if g["met"] else "NOT met"
        small, large = g["sizes"]
        print(
            f"  overhead {large}/{small} images, {key}: {g['large/small']:.3f}x"
            f"   (target 1 +- {g['tolerance']:g}: {verdict})"
        )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs=2, default=[1500, 6000], help="the two dataset sizes"
    )
    parser.add_argument("--size", type=int, default=224, help="packed image side")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--prefetch", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement")
    parser.add_argument(
        "--held", type=int, nargs="+", default=[0, 1], help="batches kept alive (variants)"
    )
    parser.add_argument(
        "--step-ms", type=float, default=100.0, help="simulated training step per batch"
    )
    add_output_options(parser, "memory")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is None:
        check_at_least_one(parser, args, ("size", "batch_size", "prefetch", "epochs"))
        if min(args.sizes) < 1 or args.sizes[0] == args.sizes[1]:
            parser.error("--sizes must be two different positive counts")
        if min(args.held) < 0 or args.step_ms < 0:
            parser.error("--held and --step-ms must be >= 0")
        args.sizes = sorted(args.sizes)
    return args


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict[str, Any]]:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return None
    machine = report_machine(warn_debug=False)
    report: dict[str, Any] = {
        **report_head("memory", machine),
        "parameters": {
            "sizes": args.sizes,
            "profile": PROFILE,
            "size": args.size,
            "batch_size": args.batch_size,
            "prefetch": args.prefetch,
            "epochs": args.epochs,
            "held": args.held,
            "step_ms": args.step_ms,
            "shuffle": True,
            "seed": 0,
            "metric": "RssAnon from /proc/self/status; baseline after imports and open,"
            " peak over per-batch samples and a 5 ms background sampler",
            "fresh_process_per_run": True,
            "command": command(argv),
        },
        "results": run_all(args),
    }
    print_table(report["results"], args)
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
