"""Two DDP ranks on one machine: the default assembly threads (usable cores / LOCAL_WORLD_SIZE,
one pool per process) against explicit ``num_threads`` settings, in the same run.

Each configuration starts 2 processes as torchrun would (``RANK``, ``WORLD_SIZE=2``,
``LOCAL_WORLD_SIZE=2``), each iterates its share of the same augmented epochs (random-resized
crop + flip + normalised float32 NCHW, the CPU-heavy case where threads matter), optionally
with a CPU "training step" per batch (a matmul on 1 torch thread, as torchrun's
``OMP_NUM_THREADS=1`` gives), and the run reports images/s over both ranks and the assembly
threads each rank ran. The ratio of each explicit setting to the default is the figure.

    python benchmarks/benchmark_ranks.py                 # writes assets/benchmark_ranks.json
    python benchmarks/benchmark_ranks.py --tiny --out /tmp/r.json   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from common import REPO, command, report_head, report_machine, write_report

WORKER = r"""
import json, os, sys, time
import torch
from vantix import VantixLoader
path, num_threads, epochs, compute = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
loader = VantixLoader(path, batch_size=64, seed=0, random_resized_crop=96, horizontal_flip=0.5,
                      mean=0.5, std=0.25, dtype="float32", layout="NCHW",
                      num_threads=None if num_threads == "default" else int(num_threads))
w = torch.randn(3 * 96 * 96, 256)
next(iter(loader))  # warm-up (pages, threads)
threads = set()
t0 = time.perf_counter()
n = 0
for epoch in range(epochs):
    loader.set_epoch(epoch)
    for images, labels in loader:
        if compute:
            (images.reshape(len(images), -1) @ w).sum().item()
        n += len(labels)
        for tid in os.listdir("/proc/self/task"):
            try:
                if open(f"/proc/self/task/{tid}/comm").read().startswith("vantix-assemble"):
                    threads.add(tid)
            except OSError:
                pass
print(json.dumps({"images": n, "seconds": time.perf_counter() - t0,
                  "threads": len(threads), "num_threads_used": loader.num_threads_used}))
"""


def pack_dataset(root: Path, num_images: int) -> Path:
    import numpy as np
    from PIL import Image

    import vantix

    rng = np.random.default_rng(0)
    src = root / "src"
    for i in range(num_images):
        d = src / f"c{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (1, 1, 3))
        ramp = np.linspace(0, 1, 160)[None, :, None] * rng.integers(0, 128, (1, 1, 3))
        noise = rng.normal(0, 12, (120, 160, 3))
        img = np.clip(base * 0.5 + ramp + noise, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"{i}.jpg", quality=90)
    out = root / "ranks.vtx"
    vantix.pack(src, out, size=128)
    return out


def run_config(path: Path, num_threads: str, epochs: int, compute: bool) -> dict[str, Any]:
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
        env.update(LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        cmd = [sys.executable, "-c", WORKER, str(path), num_threads, str(epochs), str(int(compute))]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    t0 = time.perf_counter()
    outs = [json.loads(p.communicate(timeout=1800)[0].strip().splitlines()[-1]) for p in procs]
    wall = time.perf_counter() - t0
    images = sum(o["images"] for o in outs)
    return {
        "num_threads": num_threads,
        "compute": compute,
        "images": images,
        "seconds": max(o["seconds"] for o in outs),
        "images_per_s": images / max(o["seconds"] for o in outs),
        "wall_seconds": wall,
        "threads_per_rank": [o["threads"] for o in outs],
        "num_threads_used": [o["num_threads_used"] for o in outs],
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="smoke test: 64 images, 1 trial")
    parser.add_argument("--out", type=Path, default=REPO / "assets" / "benchmark_ranks.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.num_images, args.epochs, args.trials = 64, 1, 1
    machine = report_machine()
    cores = len(os.sched_getaffinity(0))
    settings = ["default", str(cores), str(max(1, cores // 2))]
    settings = list(dict.fromkeys(settings))  # 'default' first, then the explicit counts
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = pack_dataset(Path(tmp), args.num_images)
        for compute in (False, True):
            for trial in range(args.trials):  # alternate settings so drift hits all alike
                for s in settings:
                    r = run_config(path, s, args.epochs, compute)
                    r["trial"] = trial
                    results.append(r)
    summary = []
    print(f"\n2 ranks on {cores} usable cores (LOCAL_WORLD_SIZE=2), load {os.getloadavg()}")
    print(f"  {'num_threads':>12s} {'train step':>10s} {'threads/rank':>12s} {'images/s':>10s}")
    for compute in (False, True):
        rates = {}
        for s in settings:
            rs = [r for r in results if r["num_threads"] == s and r["compute"] == compute]
            rates[s] = sum(r["images_per_s"] for r in rs) / len(rs)
            print(
                f"  {s:>12s} {str(compute):>10s} {rs[0]['threads_per_rank']!s:>12s}"
                f" {rates[s]:10,.0f}"
            )
        for s in settings[1:]:
            summary.append(
                {
                    "compute": compute,
                    "explicit": s,
                    "default_threads_per_rank": max(1, cores // 2),
                    "explicit_vs_default": rates[s] / rates["default"],
                }
            )
    for row in summary:
        print(
            f"  train step {row['compute']!s:5s}: num_threads={row['explicit']} per rank runs at "
            f"{row['explicit_vs_default']:.2f}x the default"
        )
    report = report_head("ranks", machine)
    report.update(
        command=command(argv),
        parameters={"num_images": args.num_images, "epochs": args.epochs, "trials": args.trials},
        results=results,
        summary=summary,
        load_average_after=list(os.getloadavg()),
    )
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
