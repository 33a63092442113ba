"""Data larger than RAM: the loader in a memory cgroup over a pack 1.5-2x its limit.

For each configuration (raw ``order="random"`` with the default ``readahead`` and with
``readahead=0`` (the loader before readahead), raw ``order="block"``, raw ``order="auto"``
(which must resolve to block order in the cgroup), zstd ``order="random"``) the script drops
the page cache, starts a child process inside a
memory cgroup it creates (cgroup v2 where the memory controller is there, else v1; root only;
removed afterwards) and runs ``--epochs`` shuffled epochs of ``VantixLoader`` there, recording
per epoch the seconds, images/s and the bytes the process read from disk (``read_bytes`` of
``/proc/self/io``). In the same run it measures the disk's sequential read rate of one shard
file, page cache dropped (the limit for block order). The cgroup's limit is the child's own
memory (its heap after importing torch and vantix, and the loader's batch buffers), 64 MiB of
headroom for its kernel memory and the code pages it runs, and a page cache budget of the raw
pack's size / ``--oversize`` (1.75): the raw pack does not fit, and (usually) the zstd pack
does. Every child starts under the cgroup's generous initial limit, not the one the previous
child set. The rest of the libraries a child maps (torch's are ~300 MB) is page cache like the
pack's: under the limit the kernel evicts the cold pages.

Where it cannot run (not root, no memory cgroup, no /proc/sys/vm/drop_caches) it prints why and
exits 0, writing nothing. Outputs ``--out`` (default ``assets/benchmark_larger_than_ram.json``),
rendered into the README by ``update_readme.py``.

Usage::

    python benchmarks/benchmark_larger_than_ram.py
    python benchmarks/benchmark_larger_than_ram.py --num-images 2000 --size 160 --epochs 2
    python benchmarks/benchmark_larger_than_ram.py --smoke --out /tmp/l.json --data-dir /tmp/d
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

CONFIGS = {  # name: (codec, order, readahead: None = the default)
    "raw_random": ("raw", "random", None),
    "raw_random_no_readahead": ("raw", "random", 0),
    "raw_block": ("raw", "block", None),
    "raw_auto": ("raw", "auto", None),
    "zstd_random": ("zstd", "random", None),
}
# Room in the limit beside the pack's page cache budget for the child's kernel memory (page
# tables, thread stacks: v1 charges them) and the code pages it runs (python, numpy, torch,
# vantix). Without it those compete with the pack for the budget; in smoke mode (a budget of
# under 1 MB) the child thrashed on its own code (~90 s a run) and was sometimes OOM-killed.
HEADROOM = 64 << 20
GOALS = {
    "random_vs_no_readahead": 3.0,  # at least: raw random images/s, readahead on / off
    "random_vs_block": 0.8,  # at least: raw random images/s / raw block images/s
    "block_vs_disk": 0.8,  # at least: raw block MB/s / the disk's sequential MB/s
    "random_read_amplification": 1.3,  # at most: bytes read per epoch / the raw pack's bytes
}


# ==============================================================================================
# Memory cgroup
# ==============================================================================================


class MemoryCgroup:
    """A memory cgroup (v2 where possible, else v1), removed by :meth:`remove`. Each child
    enters it under the generous ``limit`` (:meth:`reset`) and sets the real limit itself
    (its own anonymous memory + its batch buffers + ``cache_budget`` bytes of page cache)."""

    def __init__(self, limit: int, cache_budget: int = 0) -> None:
        self.cache_budget = cache_budget
        name = f"vantix-bench-{os.getpid()}"
        v2_root = next(
            (
                r
                for r in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
                if "memory" in _read(r / "cgroup.controllers").split()
            ),
            None,
        )
        if v2_root is not None:
            self.version, self.path = 2, v2_root / name
            self.path.mkdir()
            if (self.path / "memory.swap.max").exists():  # no swapping out instead of evicting
                (self.path / "memory.swap.max").write_text("0")
        elif limit_file(Path("/sys/fs/cgroup/memory"), 1).exists():
            self.version, self.path = 1, Path("/sys/fs/cgroup/memory") / name
            self.path.mkdir()
        else:
            raise OSError("no memory cgroup controller (neither v2 nor v1) is mounted")
        self.limit = limit
        self.reset()

    def reset(self) -> None:
        """Back to the starting limit: the last child's tight limit, set for its own memory,
        would OOM-kill the next child while it imports torch."""
        limit_file(self.path, self.version).write_text(str(self.limit))

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def limit_file(directory: Path, version: int) -> Path:
    """The file that holds a memory cgroup's limit."""
    return directory / ("memory.max" if version == 2 else "memory.limit_in_bytes")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def cannot_run() -> Optional[str]:
    """Why this machine cannot run the benchmark, or None."""
    if os.geteuid() != 0:
        return "needs root (to create a memory cgroup and drop the page cache)"
    if not Path("/proc/sys/vm/drop_caches").exists():
        return "no /proc/sys/vm/drop_caches"
    try:
        MemoryCgroup(1 << 30).remove()
    except OSError as e:
        return f"cannot create a memory cgroup: {e}"
    return None


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# ==============================================================================================
# Measurements
# ==============================================================================================


def disk_read_rate(file: Path, block: int = 8 << 20) -> dict[str, Any]:
    """Sequential read of ``file`` from disk (page cache dropped first), MB/s."""
    drop_caches()
    n = 0
    t0 = time.perf_counter()
    with open(file, "rb", buffering=0) as f:
        while chunk := f.read(block):
            n += len(chunk)
    seconds = time.perf_counter() - t0
    return {"file": file.name, "bytes": n, "seconds": seconds, "mb_per_s": n / seconds / 1e6}


def io_read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no read_bytes")


def cgroup_anon(directory: Path, version: int) -> int:
    """Anonymous memory charged to the cgroup itself (its processes' heaps, not page cache)."""
    key = "anon" if version == 2 else "rss"
    for line in _read(directory / "memory.stat").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    raise RuntimeError(f"{directory}/memory.stat has no {key}")


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs inside the cgroup: enters it, imports vantix (and torch) and opens the dataset,
    limits the cgroup to its own anonymous memory + the loader's batch buffers + the page
    cache budget, then builds the loader (so that ``order="auto"`` and the default
    ``readahead`` see the limit) and runs ``epochs`` shuffled epochs, per epoch seconds and
    disk bytes."""
    cgroup, version = Path(spec["cgroup"]), spec["version"]
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    import warnings

    import vantix
    from vantix import _native

    if vantix.data._torch() is not None:  # import torch now, before its memory is measured
        vantix.data._torch().zeros(1)
    dataset = vantix.VantixDataset(spec["pack"])
    h, w, c = dataset.shape
    buffers = spec["batch_size"] * h * w * c * (_native.DEFAULT_PREFETCH + 3)
    anon = cgroup_anon(cgroup, version)
    limit = anon + buffers + spec["cache_budget"] + HEADROOM
    limit_path = limit_file(cgroup, version)
    for _ in range(256):
        try:  # v1 refuses (EBUSY) a limit below what reclaim can free: the libraries in use
            limit_path.write_text(str(limit))
            break
        except OSError:
            limit += 4 << 20
    else:
        raise RuntimeError(f"the cgroup refused every limit up to {limit} bytes")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = vantix.VantixLoader(
            dataset,
            batch_size=spec["batch_size"],
            shuffle=True,
            order=spec["order"],
            readahead=spec["readahead"],
            block_window=spec["block_window"],
        )
    # What order="auto" and the default readahead were decided from.
    fit = {k: v for k, v in loader._native.memory_fit().items() if k != "message"}
    epochs = []
    for epoch in range(spec["epochs"]):
        loader.set_epoch(epoch)
        read0, t0, n = io_read_bytes(), time.perf_counter(), 0
        for images, _labels in loader:
            n += int(images.shape[0])
        seconds = time.perf_counter() - t0
        epochs.append(
            {
                "seconds": seconds,
                "images": n,
                "images_per_s": n / seconds,
                "read_bytes": io_read_bytes() - read0,
            }
        )
    return {
        "epochs": epochs,
        "resolved_order": loader.resolved_order,
        "readahead_bytes": loader.readahead,
        "memory_fit": fit,
        "memory_limit_bytes": limit,
        "page_cache_bytes_allowed": limit - anon - buffers - HEADROOM,
        "anon_bytes_at_start": anon,
        "anon_bytes_at_end": cgroup_anon(cgroup, version),
        "buffer_bytes": buffers,
        "warnings": [str(w.message) for w in caught],
    }


def run_config(
    pack: Path,
    order: str,
    readahead: Optional[int],
    cgroup: MemoryCgroup,
    args: argparse.Namespace,
) -> dict[str, Any]:
    cgroup.reset()
    drop_caches()
    spec = {
        "pack": str(pack),
        "order": order,
        "readahead": readahead,
        "block_window": args.block_window,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "cgroup": str(cgroup.path),
        "version": cgroup.version,
        "cache_budget": cgroup.cache_budget,
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        return {"error": f"exit status {proc.returncode} {last}".strip()}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _native_default(name: str) -> int:
    from vantix import _native

    return int(getattr(_native, name))


def pack_bytes(pack: Path) -> int:
    return sum(p.stat().st_size for p in pack.iterdir() if p.is_file())


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from common import REPO

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help="tiny data: checks the script runs")
    p.add_argument("--out", type=Path, default=REPO / "assets" / "benchmark_larger_than_ram.json")
    p.add_argument("--data-dir", type=Path, default=REPO / "data" / "bench")
    p.add_argument("--num-images", type=int, help="images (default 5000; smoke 120)")
    p.add_argument("--size", type=int, help="packed side (default 224; smoke 64)")
    p.add_argument("--epochs", type=int, help="epochs per configuration (default 3; smoke 2)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--oversize", type=float, default=1.75, help="raw pack / cache budget")
    p.add_argument(
        "--block-window",
        type=int,
        help="block_window of the block and auto rows (default: the largest <= 16 whose group "
        "of block_size * block_window records takes at most half the page cache budget: a "
        "group larger than the cache is read from disk more than once per epoch)",
    )
    args = p.parse_args(argv)
    args.num_images = args.num_images or (120 if args.smoke else 5000)
    args.size = args.size or (64 if args.smoke else 224)
    args.epochs = args.epochs or (2 if args.smoke else 3)
    if args.smoke:
        args.batch_size = min(args.batch_size, 16)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    why = cannot_run()
    if why:
        print(f"benchmark_larger_than_ram: {why}: nothing run")
        return 0
    from common import command, ensure_pack, rel, report_head, report_machine, write_report

    import prepare_data

    machine = report_machine()
    root = args.data_dir / "larger-than-ram" / f"imagenet-std-{args.num_images}" / "train"
    prepare_data.make_image_folder(root, "imagenet-std", args.num_images)
    packs = {
        c: ensure_pack(root, args.num_images, args.size, c, False).path for c in ("raw", "zstd")
    }
    sizes = {c: pack_bytes(p) for c, p in packs.items()}
    budget = int(sizes["raw"] / args.oversize)
    if args.block_window is None:
        block = _native_default("DEFAULT_BLOCK_SIZE") * args.size * args.size * 3
        most = _native_default("DEFAULT_BLOCK_WINDOW")
        args.block_window = max(1, min(most, budget // 2 // block))
    print(
        f"raw pack {sizes['raw'] / 1e6:.0f} MB, zstd {sizes['zstd'] / 1e6:.0f} MB;"
        f" page cache budget {budget / 2**20:.0f} MiB (+ the process's own memory)"
    )
    shard = max(packs["raw"].glob("shard-*"), key=lambda p: p.stat().st_size)
    report: dict[str, Any] = {
        **report_head("larger_than_ram", machine),
        "parameters": {
            "num_images": args.num_images,
            "size": args.size,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "page_cache_budget_bytes": budget,
            "headroom_bytes": HEADROOM,
            "block_window": args.block_window,
            "oversize": args.oversize,
            "smoke": args.smoke,
            "command": command(argv),
        },
        "packs": {c: {"path": rel(p), "bytes": sizes[c]} for c, p in packs.items()},
        "disk": disk_read_rate(shard),
    }
    print(f"disk: sequential read {report['disk']['mb_per_s']:.0f} MB/s")
    cgroup = MemoryCgroup(64 << 30, budget)
    report["cgroup_version"] = cgroup.version
    results = {}
    try:
        for name, (codec, order, readahead) in CONFIGS.items():
            r = run_config(packs[codec], order, readahead, cgroup, args)
            results[name] = r
            if "error" in r:
                print(f"  {name:24s} not run: {r['error']}")
                continue
            later = r["epochs"][1:] or r["epochs"]
            r["images_per_s"] = sum(e["images"] for e in later) / sum(e["seconds"] for e in later)
            r["read_bytes_per_epoch"] = sum(e["read_bytes"] for e in later) / len(later)
            r["read_amplification"] = r["read_bytes_per_epoch"] / sizes[codec]
            r["mb_per_s"] = r["images_per_s"] * sizes[codec] / args.num_images / 1e6
            print(
                f"  {name:24s} {r['images_per_s']:9,.0f} images/s {r['mb_per_s']:7.0f} MB/s,"
                f" read {r['read_amplification']:.2f}x the pack per epoch"
                f" ({r['resolved_order']} order, readahead {r['readahead_bytes'] >> 20} MiB)"
            )
    finally:
        cgroup.remove()
    report["results"] = results
    report["goals"] = goals(report)
    write_report(args.out, report)
    return 0


def goals(report: dict[str, Any]) -> dict[str, Any]:
    res = report["results"]
    random, block = res.get("raw_random", {}), res.get("raw_block", {})
    before = res.get("raw_random_no_readahead", {})
    values = {}
    if "images_per_s" in random and "images_per_s" in before:
        values["random_vs_no_readahead"] = random["images_per_s"] / before["images_per_s"]
    if "images_per_s" in random and "images_per_s" in block:
        values["random_vs_block"] = random["images_per_s"] / block["images_per_s"]
        values["random_read_amplification"] = random["read_amplification"]
    if "mb_per_s" in block:
        values["block_vs_disk"] = block["mb_per_s"] / report["disk"]["mb_per_s"]
    from common import check_goals

    return check_goals(values, GOALS, at_most=["random_read_amplification"])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
