"""Compression that pays: size on disk and loader speed of every codec, against the source folder.

For each profile (CIFAR-like: 32x32 PNG -> 32; ImageNet-Std: ~500x375 JPEG -> 224; 4K-Medical:
2048-px grey JPEG/PNG -> 224) the same source ImageFolder is packed, in one run, as

* ``raw`` (the yardstick),
* ``zstd`` at levels 1, 3 and 9 with the default prediction filter (``up``) and no dictionary,
* for CIFAR-like also ``zstd`` 3 with a dictionary trained at pack time (``dictionary="on"``,
  what ``"auto"`` picks for records of at most 16 KiB),

and each pack is read by ``VantixLoader`` (shuffled, ``--batch-size``, all cores, one byte of
every 4 KiB page of every batch touched): one warm-up epoch each, then ``--epochs`` timed epochs,
interleaved (every pack runs once per epoch, in turn) so that a change of machine load hits every
pack alike. Reported per pack: bytes on disk (shards and manifest), the ratio to the raw pack and
to the source folder, images/s over the timed epochs and the ratio to raw's images/s, all from
the same run.

    python benchmarks/benchmark_compression.py           # a few minutes on 2 cores
    python benchmarks/benchmark_compression.py --tiny    # seconds: CI's smoke run

Writes ``assets/benchmark_compression.json``. Build the extension in release mode first
(``make build-release``) for representative numbers.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from common import (
    REPO,
    check_at_least_one,
    command,
    loader_epochs,
    rel,
    report_head,
    report_machine,
    time_epochs,
    touch_pages,
    write_report,
)

#: (profile, output size, images by default, images with ``--tiny``).
PROFILES = {
    "cifar-like": (32, 5000, 64),
    "imagenet-std": (224, 1000, 12),
    "4k-medical": (224, 100, 6),
}

#: (name, vantix.pack keyword arguments); the first is the yardstick.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("raw", {"codec": "raw"}),
    *(
        (f"zstd {level}", {"codec": "zstd", "level": level, "dictionary": "off"})
        for level in (1, 3, 9)
    ),
]
DICTIONARY = ("zstd 3 + dictionary", {"codec": "zstd", "level": 3, "dictionary": "on"})


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_profile(name: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    import prepare_data
    import vantix

    size, default_images, tiny_images = PROFILES[name]
    num_images = args.num_images or (tiny_images if args.tiny else default_images)
    root = args.data_dir / name / "train"
    folder = prepare_data.make_image_folder(root, name, num_images)
    print(f"\n{name}: {folder.num_images} images, {folder.bytes_on_disk / 1e6:.1f} MB of source")
    variants = [*VARIANTS, DICTIONARY] if size * size * 3 <= 16 << 10 else VARIANTS
    packs: dict[str, dict[str, Any]] = {}
    runs = {}
    for label, kwargs in variants:
        out = scratch / f"{name}-{label.replace(' ', '_').replace('+', 'plus')}.vtx"
        t0 = time.perf_counter()
        vantix.pack(root, out, size=size, filter="up", num_threads=args.num_threads, **kwargs)
        seconds = time.perf_counter() - t0
        info = vantix.inspect(out)
        packs[label] = {
            "pack_arguments": kwargs,
            "bytes": dir_bytes(out),
            "format_version": info["format_version"],
            "dictionary_bytes": info["dictionary_bytes"],
            "pack_seconds": seconds,
        }
        loader = vantix.VantixLoader(out, batch_size=args.batch_size, shuffle=True, seed=0)
        runs[label] = loader_epochs(loader, touch_pages, f"VantixLoader({label})")
        print(f"  packed {label:20s} {packs[label]['bytes'] / 1e6:8.2f} MB in {seconds:.1f} s")
    width = max(len(v) for v, _ in variants)
    seconds, samples = time_epochs(runs, args.epochs, width)
    raw_bytes = packs["raw"]["bytes"]
    raw_ips = samples["raw"] / sum(seconds["raw"])
    for label, p in packs.items():
        ips = samples[label] / sum(seconds[label])
        p.update(
            vs_raw=p["bytes"] / raw_bytes,
            vs_source=p["bytes"] / folder.bytes_on_disk,
            images=samples[label],
            seconds=sum(seconds[label]),
            images_per_s=ips,
            images_per_s_vs_raw=ips / raw_ips,
        )
    return {
        "source": rel(root),
        "source_kind": folder.source,
        "num_images": folder.num_images,
        "source_bytes": folder.bytes_on_disk,
        "size": size,
        "record_bytes": size * size * 3,
        "packs": packs,
    }


def markdown(name: str, prof: dict[str, Any]) -> str:
    lines = [
        f"{name}: {prof['num_images']} images, {prof['size']}x{prof['size']}, source folder"
        f" {prof['source_bytes'] / 2**20:.1f} MiB",
        "",
        "| pack | size on disk | vs raw | vs source | loader images/s | vs raw |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, p in prof["packs"].items():
        lines.append(
            f"| {label} | {p['bytes'] / 2**20:.2f} MiB | {p['vs_raw']:.2f}x"
            f" | {p['vs_source']:.2f}x | {p['images_per_s']:,.0f}"
            f" | {p['images_per_s_vs_raw']:.2f}x |"
        )
    return "\n".join(lines)


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
    defaults = ", ".join(f"{p} {v[1]}" for p, v in PROFILES.items())
    parser.add_argument(
        "--num-images", type=int, default=None, help=f"images of every profile ({defaults})"
    )
    parser.add_argument("--tiny", action="store_true", help="a few images per profile (smoke run)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up")
    parser.add_argument("--num-threads", type=int, default=None, help="packing threads")
    parser.add_argument(
        "--data-dir", type=Path, default=REPO / "data" / "bench-comp", help="source folders"
    )
    parser.add_argument("--out", type=Path, default=REPO / "assets" / "benchmark_compression.json")
    args = parser.parse_args(argv)
    check_at_least_one(parser, args, ("num_images", "batch_size", "epochs"))
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = report_machine()
    names = list(PROFILES) if "all" in args.profiles else list(dict.fromkeys(args.profiles))
    report: dict[str, Any] = {
        **report_head("compression", machine),
        "parameters": {
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "warmup_epochs": 1,
            "shuffle": True,
            "filter": "up",
            "tiny": args.tiny,
            "profiles": names,
            "touch": "sum of one byte per 4096 bytes of every batch",
        },
        "command": command(argv),
        "profiles": {},
    }
    args.data_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".compression-", dir=args.data_dir))
    try:
        for name in names:
            report["profiles"][name] = run_profile(name, args, scratch)
            shutil.rmtree(scratch)
            scratch.mkdir()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name, prof in report["profiles"].items():
        print("\n" + markdown(name, prof))
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
