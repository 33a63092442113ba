"""Packing speed: ``vantix-pack`` against a Pillow packer that uses every core.

For each profile (ImageNet-Std: ~500x375 JPEG -> 224; 4K-Medical: 2048-px grey JPEG q95/PNG
-> 224; 4K-Photo: 2048-px colour JPEG q90 -> 224) the same source folder is packed, in the same
run and on the same cores, by

* ``vantix-pack`` with its defaults (DCT-scaled JPEG decoding where the target allows it),
* ``vantix-pack --exact-decode`` (every JPEG decoded at full size),
* a Pillow packer: ``multiprocessing.Pool(os.cpu_count())`` workers each open a file, convert it
  to RGB and apply torchvision's evaluation transform (``Resize(224)`` + ``CenterCrop(224)``,
  bilinear, antialiased: Pillow's own resize), and the parent writes every image, in
  ImageFolder order, into one ``.npy`` array of shape ``[N, 224, 224, 3]`` plus a label array.

Every source file is read once before timing (warm page cache). Each packer runs in its own
process, so its peak resident memory (``ru_maxrss`` from ``wait4``) is measured alone. By
default ``vantix-pack`` is the console script installed with the package, so its figure includes
a Python interpreter; ``--vantix-pack target/release/vantix-pack`` times the Rust binary
instead. The packers run in turn, ``--trials`` times, and the median time per packer is reported
with images/s and the ratio against Pillow. The packer's peak RSS is also measured for a second,
smaller ImageNet-Std folder, to show that memory does not grow with the number of images.

How much a reduced-scale decode can save is bounded by Huffman (entropy) decoding, which no
JPEG decoder can skip. For each profile, the script also times libjpeg-turbo itself (through
Pillow, one process) decoding the profile's JPEGs at full size and with ``draft`` at the scale
``vantix-pack`` picks: their ratio is the most a DCT-scaled decode can gain on those files.

    python benchmarks/benchmark_pack.py                  # a few minutes on 2 cores
    python benchmarks/benchmark_pack.py --tiny           # seconds: CI's smoke run

Writes ``assets/benchmark_pack.json``. Build the extension in release mode first
(``make build-release``) for representative numbers.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from common import (
    REPO,
    check_at_least_one,
    command,
    rel,
    report_head,
    report_machine,
    write_report,
)

#: Images per profile by default and with ``--tiny``.
DEFAULT_IMAGES = {"imagenet-std": 300, "4k-medical": 80, "4k-photo": 80}
TINY_IMAGES = {"imagenet-std": 40, "4k-medical": 6, "4k-photo": 6}
SIZE = 224


# ----------------------------------------------------------------------------------------------
# The Pillow packer (runs as `python benchmark_pack.py --pillow-child SRC OUT`)
# ----------------------------------------------------------------------------------------------


def _pillow_record(path: str) -> bytes:
    """torchvision's ``Resize(224)`` + ``CenterCrop(224)`` of ``path`` with Pillow (bilinear)."""
    from PIL import Image

    with Image.open(path) as im:
        img = im.convert("RGB")
    w, h = img.size
    # Resize(224): the shorter side to 224, the longer int(224 * long / short), truncated.
    if w <= h:
        nw, nh = SIZE, int(SIZE * h / w)
    else:
        nw, nh = int(SIZE * w / h), SIZE
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = round((nw - SIZE) / 2), round((nh - SIZE) / 2)
    img = img.crop((left, top, left + SIZE, top + SIZE))
    return img.tobytes()


#: torchvision's ``IMG_EXTENSIONS``.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_folder_samples(root: Path) -> list[tuple[str, int]]:
    """``torchvision.datasets.ImageFolder(root).samples`` without importing torch (whose
    import would cost the Pillow packer seconds): sorted class folders, sorted walk."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    samples = []
    for label, name in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(root / name, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(dirpath, f), label))
    return samples


def pillow_pack(src: Path, out: Path) -> int:
    """Pack ``src`` with a Pool of ``os.cpu_count()`` Pillow workers; returns the image count."""
    import multiprocessing

    import numpy as np

    samples = image_folder_samples(src)
    paths = [p for p, _ in samples]
    labels = np.array([t for _, t in samples], dtype=np.int64)
    out.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(
        out / "images.npy", mode="w+", dtype=np.uint8, shape=(len(paths), SIZE, SIZE, 3)
    )
    with multiprocessing.Pool(os.cpu_count()) as pool:
        for i, record in enumerate(pool.imap(_pillow_record, paths, chunksize=4)):
            images[i] = np.frombuffer(record, np.uint8).reshape(SIZE, SIZE, 3)
    images.flush()
    del images
    np.save(out / "labels.npy", labels)
    return len(paths)


# ----------------------------------------------------------------------------------------------
# Timing one packer in a child process
# ----------------------------------------------------------------------------------------------


def run_child(argv: list[str]) -> tuple[float, int]:
    """Run ``argv``; returns (wall seconds, peak RSS of its process in KiB). Fails loudly.

    A small helper process starts it: Linux's ``ru_maxrss`` counts what a forked child
    inherited from its parent before ``exec``, so a child forked straight from this process
    (which imported torch) would report this process's size, not its own.
    """
    helper = [sys.executable, __file__, "--measure-child", *argv]
    proc = subprocess.run(helper, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")
    seconds, peak = proc.stdout.split()[-2:]
    return float(seconds), int(peak)


def measure_child(argv: list[str]) -> int:
    """The helper of :func:`run_child`: run ``argv``, print its seconds and peak RSS (KiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stderr.write(proc.stderr.read().decode(errors="replace") if proc.stderr else "")
        return code
    print(f"{seconds:.6f} {usage.ru_maxrss}")
    return 0


def warm_cache(root: Path) -> None:
    """Read every source file once, so that no packer pays for a cold page cache."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            path.read_bytes()


def vantix_pack_command(exe: Optional[Path]) -> list[str]:
    """``exe``, else the console script installed with the package beside this Python."""
    if exe is not None:
        return [str(exe)]
    found = shutil.which("vantix-pack", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "vantix.cli"]


def packers(src: Path, scratch: Path, exe: Optional[Path]) -> dict[str, list[str]]:
    """Command line of every packer, by name."""
    out = scratch / "out"
    vantix = [*vantix_pack_command(exe), str(src), "--size", str(SIZE), "-o", str(out)]
    return {
        "vantix": [*vantix, "--overwrite", "--quiet"],
        "vantix_exact_decode": [*vantix, "--overwrite", "--quiet", "--exact-decode"],
        "pillow_pool": [sys.executable, __file__, "--pillow-child", str(src), str(out)],
    }


def clear(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _dct_draft_size(w: int, h: int) -> tuple[int, int]:
    """The size ``vantix-pack`` decodes a ``w x h`` JPEG at for a 224 centre crop: the smallest
    of 1/2, 1/4, 1/8 keeping twice the intermediate resize on both axes (see ``dct_scale``)."""
    nw, nh = (SIZE, int(SIZE * h / w)) if w <= h else (int(SIZE * w / h), SIZE)
    best = (w, h)
    for d in (2, 4, 8):
        if w % d == 0 and h % d == 0 and w // d >= 2 * nw and h // d >= 2 * nh:
            best = (w // d, h // d)
    return best


def libjpeg_floor(root: Path, limit: int = 24) -> Optional[dict[str, Any]]:
    """libjpeg-turbo (Pillow) full-size decode against ``draft`` at vantix-pack's DCT scale, on
    up to ``limit`` JPEGs of ``root``, one process, best of 3 per file; ``None`` without JPEGs.
    """
    from PIL import Image

    files = sorted(p for p in root.rglob("*.jpg"))[:limit]
    if not files:
        return None

    def best(path: Path, draft: bool) -> float:
        data = path.read_bytes()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            with Image.open(io.BytesIO(data)) as im:
                if draft:
                    im.draft(im.mode, _dct_draft_size(*im.size))
                im.load()
            times.append(time.perf_counter() - start)
        return min(times)

    full = sum(best(p, False) for p in files) / len(files)
    draft = sum(best(p, True) for p in files) / len(files)
    return {
        "jpeg_files": len(files),
        "full_ms": 1e3 * full,
        "draft_ms": 1e3 * draft,
        "draft_speedup": full / draft,
    }


def run_profile(profile: str, num_images: int, args: argparse.Namespace) -> dict[str, Any]:
    from prepare_data import make_image_folder

    src = make_image_folder(args.data_dir / profile / "train", profile, num_images)
    print(
        f"\n{profile}: {src.num_images} images, {src.bytes_on_disk / 2**20:.1f} MiB"
        f" ({src.source}) in {rel(src.root)}"
    )
    warm_cache(src.root)
    times: dict[str, list[float]] = {}
    rss: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="vantix-bench-pack-") as tmp:
        scratch = Path(tmp)
        for trial in range(args.trials):
            for name, argv in packers(src.root, scratch, args.vantix_pack).items():
                clear(scratch / "out")
                seconds, peak = run_child(argv)
                times.setdefault(name, []).append(seconds)
                rss.setdefault(name, []).append(peak)
                print(
                    f"  trial {trial + 1}: {name:20s} {seconds:7.2f} s"
                    f" {src.num_images / seconds:8.1f} images/s  peak RSS {peak / 1024:6.1f} MiB"
                )
        clear(scratch / "out")
    result: dict[str, Any] = {
        "source": {
            "path": rel(src.root),
            "num_images": src.num_images,
            "bytes_on_disk": src.bytes_on_disk,
        },
        "packers": {},
    }
    for name, ts in times.items():
        median = statistics.median(ts)
        result["packers"][name] = {
            "seconds": ts,
            "median_seconds": median,
            "images_per_s": src.num_images / median,
            "peak_rss_kib": max(rss[name]),
        }
    result["libjpeg_turbo"] = libjpeg_floor(src.root)
    p = result["packers"]
    result["speedup_vs_pillow"] = p["vantix"]["images_per_s"] / p["pillow_pool"]["images_per_s"]
    result["speedup_vs_exact_decode"] = (
        p["vantix"]["images_per_s"] / p["vantix_exact_decode"]["images_per_s"]
    )
    print(
        f"  vantix-pack {p['vantix']['images_per_s']:.1f} images/s:"
        f" {result['speedup_vs_pillow']:.2f}x the Pillow pool,"
        f" {result['speedup_vs_exact_decode']:.2f}x --exact-decode"
    )
    if result["libjpeg_turbo"]:
        lj = result["libjpeg_turbo"]
        print(
            f"  libjpeg-turbo on these JPEGs: full {lj['full_ms']:.1f} ms, draft at the DCT scale"
            f" {lj['draft_ms']:.1f} ms ({lj['draft_speedup']:.2f}x: what scaling saves when"
            " entropy decoding is as fast as it gets)"
        )
    return result


def memory_scaling(num_images: Sequence[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Peak RSS of ``vantix-pack`` on ImageNet-Std folders of different sizes."""
    from prepare_data import make_image_folder

    rows = []
    with tempfile.TemporaryDirectory(prefix="vantix-bench-pack-") as tmp:
        for n in num_images:
            src = make_image_folder(
                args.data_dir / f"imagenet-std-{n}" / "train", "imagenet-std", n
            )
            argv = packers(src.root, Path(tmp), args.vantix_pack)["vantix"]
            clear(Path(tmp) / "out")
            seconds, peak = run_child(argv)
            rows.append({"num_images": n, "seconds": seconds, "peak_rss_kib": peak})
            print(f"  vantix-pack on {n:6d} images: peak RSS {peak / 1024:.1f} MiB")
    return rows


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profiles",
        nargs="+",
        choices=list(DEFAULT_IMAGES),
        default=list(DEFAULT_IMAGES),
        help="dataset profiles (default: all three)",
    )
    parser.add_argument(
        "--num-images",
        type=int,
        default=None,
        help="images per profile (default: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_IMAGES.items())
        + ")",
    )
    parser.add_argument("--trials", type=int, default=2, help="runs of every packer (median)")
    parser.add_argument("--tiny", action="store_true", help="a few images, one trial (CI)")
    parser.add_argument(
        "--data-dir", type=Path, default=REPO / "data" / "bench-pack", help="source folders"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "assets" / "benchmark_pack.json", help="JSON report"
    )
    parser.add_argument(
        "--vantix-pack",
        type=Path,
        default=None,
        help="the vantix-pack to time, e.g. target/release/vantix-pack (default: the console"
        " script installed with the vantix package)",
    )
    args = parser.parse_args(argv)
    if args.tiny:
        args.trials = 1
    check_at_least_one(parser, args, ("trials", "num_images"))
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = report_machine()
    sizes = TINY_IMAGES if args.tiny else DEFAULT_IMAGES
    counts = {p: args.num_images or sizes[p] for p in args.profiles}
    report: dict[str, Any] = {
        **report_head("pack", machine),
        "parameters": {
            "size": SIZE,
            "mode": "center-crop (Resize(224) + CenterCrop(224)), bilinear",
            "trials": args.trials,
            "num_images": counts,
            "workers": os.cpu_count(),
            "timing": "wall seconds of each packer's process, median over trials",
            "peak_rss": "ru_maxrss of the packer's process (vantix-pack: the console script,"
            " Python interpreter included)",
            "vantix_pack": " ".join(vantix_pack_command(args.vantix_pack)),
            "command": command(argv),
        },
        "profiles": {},
    }
    for profile in args.profiles:
        report["profiles"][profile] = run_profile(profile, counts[profile], args)
    n = counts.get("imagenet-std", sizes["imagenet-std"])
    print("\nmemory:")
    report["memory"] = memory_scaling(sorted({max(1, n // 2), n}), args)
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--measure-child":
        sys.exit(measure_child(sys.argv[2:]))
    elif len(sys.argv) == 4 and sys.argv[1] == "--pillow-child":
        pillow_pack(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
