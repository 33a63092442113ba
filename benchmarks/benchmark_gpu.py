"""Feeding a GPU: correctness, host-to-device bandwidth, images/s into the GPU, copy/compute
overlap and training epochs, Vantix against torchvision's ``DataLoader``, in one run.

On a machine with CUDA the script

1. checks that ``VantixLoader(pin_memory=True)`` yields pinned batches and that
   ``device="cuda"`` yields the CPU path's batches (uint8: equal; float: the largest difference,
   expected 0: the device conversion is the Rust float path's arithmetic, see
   ``vantix/_device.py``);
2. measures the host-to-device bandwidth ``torch`` reaches copying one pinned batch-sized tensor
   again and again (the limit) and the bandwidth Vantix reaches moving uint8 batches;
3. measures images/s into the GPU for Vantix uint8, Vantix normalised float32 converted on the
   GPU (the default with ``device=``), Vantix normalised float32 converted on the CPU
   (``convert_on_device=False``), and ``DataLoader(ImageFolder, num_workers=os.cpu_count(),
   pin_memory=True)`` with the same augmentation (``RandomResizedCrop`` + flip + ``Normalize``);
4. measures copy/compute overlap: the time per training step of a model with Vantix batches
   against the same steps on one batch already on the GPU;
5. trains one epoch of ``Small_MLP``, ``Medium_CNN`` and ``Large_MobileNetV3`` (the models of
   ``benchmark_training.py``) with both loaders after a warm-up epoch, and reports seconds per
   epoch and the fraction of the epoch the GPU spent computing (CUDA events around every step:
   the rest is the GPU waiting for data or for the host).

It writes ``--out`` (default ``assets/benchmark_gpu.json``) and a chart of images/s into the GPU
(``ASSETS/gpu_rates.png``); ``update_readme.py`` renders the JSON. Without CUDA it prints one
line and exits 0, writing nothing. ``--smoke`` runs what needs no GPU on tiny data, on the CPU:
the device conversion on CPU tensors against the Rust float path, every measurement on the CPU
"device", the JSON and the chart (into ``--out``/``--assets-dir``, e.g. a temporary folder);
``make test`` runs it (python/tests/test_benchmarks.py).

Usage::

    python benchmarks/benchmark_gpu.py                      # on a machine with CUDA
    python benchmarks/benchmark_gpu.py --smoke --out /tmp/g.json --assets-dir /tmp/a
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

GOALS = {
    "overlap_step_ratio": 1.05,  # at most: step time with Vantix / with the batch resident
    "float_vs_cpu_float": 3.0,  # at least: device-converted float32 / CPU-converted float32
    "float_vs_uint8": 0.9,  # at least: device-converted float32 / uint8
    "small_mlp_speedup": 10.0,  # at least: Small_MLP epoch, DataLoader / Vantix
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from common import REPO

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny data on the CPU (no CUDA needed)")
    p.add_argument("--out", type=Path, default=REPO / "assets" / "benchmark_gpu.json")
    p.add_argument("--assets-dir", type=Path, default=REPO / "assets")
    p.add_argument("--data-dir", type=Path, default=REPO / "data" / "bench")
    p.add_argument("--num-images", type=int, help="images of the rate pack (default 4000)")
    p.add_argument("--torchvision-images", type=int, help="images DataLoader reads per epoch")
    p.add_argument("--batch-size", type=int, default=None, help="rate batches (default 256)")
    p.add_argument("--image-size", type=int, default=None, help="crop side (default 224)")
    p.add_argument(
        "--models", nargs="+", default=None, help="training models (default all; smoke: Small_MLP)"
    )
    p.add_argument("--epochs", type=int, default=None, help="timed training epochs (default 2)")
    p.add_argument("--steps", type=int, default=None, help="overlap steps (default 50)")
    args = p.parse_args(argv)
    args.num_images = args.num_images or (48 if args.smoke else 4000)
    args.torchvision_images = args.torchvision_images or (16 if args.smoke else 1024)
    args.batch_size = args.batch_size or (8 if args.smoke else 256)
    args.image_size = args.image_size or (32 if args.smoke else 224)
    args.epochs = args.epochs or (1 if args.smoke else 2)
    args.steps = args.steps or (3 if args.smoke else 50)
    args.models = args.models or (["Small_MLP"] if args.smoke else None)
    # What benchmark_training's data and optimizer helpers read.
    args.cifar_root, args.repack, args.optimizer = None, False, "sgd"
    args.lr, args.weight_decay = 0.05, 5e-4
    return args


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def vantix_options(recipe: dict[str, Any], dtype: str) -> dict[str, Any]:
    norm = {"mean": MEAN, "std": STD} if dtype != "uint8" else {}
    return {**recipe, "dtype": dtype, "layout": "NCHW", **norm}


def vantix_loader(pack: Path, device: Any, batch: int, options: dict[str, Any], **extra: Any):
    """A ``VantixLoader`` whose batches land on ``device`` (the CPU path on a CPU device)."""
    import vantix

    on = {"device": device} if device.type == "cuda" else {}
    if device.type != "cuda":
        extra.pop("convert_on_device", None)
    return vantix.VantixLoader(pack, batch_size=batch, shuffle=True, **options, **on, **extra)


# ==============================================================================================
# 1. Correctness
# ==============================================================================================


def check_correctness(pack: Path, device: Any, batch: int, recipe: dict[str, Any]) -> dict:
    """Pinned batches, and device batches equal to the CPU path's (largest difference)."""
    import torch

    import vantix
    from vantix._device import DeviceConversion

    result: dict[str, Any] = {}
    if device.type == "cuda":
        pinned = vantix.VantixLoader(pack, batch_size=batch, pin_memory=True)
        result["pin_memory_pinned"] = bool(next(iter(pinned))[0].is_pinned())
    else:
        result["pin_memory_pinned"] = None  # nothing to pin for
    diffs = {}
    for dtype in ("uint8", "float32", "float16", "bfloat16"):
        options = vantix_options(recipe, dtype)
        cpu = vantix.VantixLoader(pack, batch_size=batch, shuffle=True, **options)
        cpu_images, cpu_labels = next(iter(cpu))
        if device.type == "cuda":
            dev = vantix_loader(pack, device, batch, options)
            dev_images, dev_labels = next(iter(dev))
            if not torch.equal(dev_labels.cpu(), cpu_labels):
                raise RuntimeError(f"{dtype}: labels on the device differ from the CPU path")
            got = dev_images.cpu()
        else:  # the device conversion on CPU tensors against the Rust float path
            raw = vantix.VantixLoader(
                pack,
                batch_size=batch,
                shuffle=True,
                **{**vantix_options(recipe, "uint8"), "layout": "NHWC"},
            )
            norm = (MEAN, STD) if dtype != "uint8" else (None, None)
            got = DeviceConversion(dtype, "NCHW", *norm)(next(iter(raw))[0])
        if got.shape != cpu_images.shape or got.dtype != cpu_images.dtype:
            raise RuntimeError(f"{dtype}: {got.dtype} {tuple(got.shape)} != CPU path's")
        diffs[dtype] = float((got.float() - cpu_images.float()).abs().max())
    result["max_abs_difference"] = diffs
    if diffs["uint8"] != 0:
        raise RuntimeError(f"uint8 batches on the device differ from the CPU path: {diffs}")
    return result


# ==============================================================================================
# 2. Bandwidth
# ==============================================================================================


def torch_bandwidth(device: Any, nbytes: int, repeats: int) -> float:
    """GB/s of ``repeats`` copies of one pinned ``nbytes`` tensor to ``device`` (the limit)."""
    import torch

    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=device.type == "cuda")
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dev.copy_(host, non_blocking=True)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        dev.copy_(host, non_blocking=True)
    sync(device)
    return nbytes * repeats / (time.perf_counter() - t0) / 1e9


# ==============================================================================================
# 3. Images/s into the GPU
# ==============================================================================================


def epochs_rate(make: Callable[[], Iterable[Any]], device: Any, epochs: int) -> dict[str, Any]:
    """Images/s of ``epochs`` passes after a warm-up pass, every batch on ``device``."""
    seconds, images_seen, nbytes = [], 0, 0
    for e in range(epochs + 1):
        loader = make()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(e)
        sync(device)
        t0 = time.perf_counter()
        n = 0
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            n += images.shape[0]
            if e == 1:
                nbytes = images.element_size() * images[0].numel()
        sync(device)
        if e:
            seconds.append(time.perf_counter() - t0)
            images_seen += n
    return {
        "images_per_s": images_seen / sum(seconds),
        "epoch_seconds": seconds,
        "bytes_per_image_on_device": nbytes,
    }


def torchvision_loader(root: Path, num: int, batch: int, size: int, dtype: str) -> Any:
    import torch
    import torchvision
    import torchvision.transforms as T

    tail = [T.ToTensor(), T.Normalize(MEAN, STD)] if dtype != "uint8" else [T.PILToTensor()]
    transform = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *tail])
    folder = torchvision.datasets.ImageFolder(root, transform=transform)
    subset = torch.utils.data.Subset(folder, range(min(num, len(folder))))
    return torch.utils.data.DataLoader(
        subset,
        batch_size=batch,
        shuffle=True,
        num_workers=os.cpu_count() or 1,
        pin_memory=True,
    )


def measure_rates(
    pack: Path, root: Path, device: Any, args: argparse.Namespace, recipe: dict[str, Any]
) -> dict[str, Any]:
    b = args.batch_size
    rates = {
        "vantix_uint8": epochs_rate(
            lambda: vantix_loader(pack, device, b, vantix_options(recipe, "uint8")),
            device,
            args.epochs,
        ),
        "vantix_float32_device": epochs_rate(
            lambda: vantix_loader(pack, device, b, vantix_options(recipe, "float32")),
            device,
            args.epochs,
        ),
        "vantix_float32_cpu": epochs_rate(
            lambda: vantix_loader(
                pack, device, b, vantix_options(recipe, "float32"), convert_on_device=False
            ),
            device,
            args.epochs,
        ),
        "torchvision_float32": epochs_rate(
            lambda: torchvision_loader(
                root, args.torchvision_images, b, args.image_size, "float32"
            ),
            device,
            1,
        ),
    }
    for r in rates.values():
        r["gb_per_s"] = r["images_per_s"] * r["bytes_per_image_on_device"] / 1e9
    return rates


# ==============================================================================================
# 4. Overlap
# ==============================================================================================


def overlap(pack: Path, device: Any, args: argparse.Namespace, recipe: dict[str, Any]) -> dict:
    """Seconds per training step of MobileNetV3 with Vantix batches against the same number of
    steps on one batch already on the device."""
    import torch
    import torch.nn.functional as F
    from benchmark_training import large_mobilenet_v3

    model = large_mobilenet_v3(10, args.image_size).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(images: Any, labels: Any) -> None:
        loss = F.cross_entropy(model(images), labels % 10)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    loader = vantix_loader(pack, device, args.batch_size, vantix_options(recipe, "float32"))
    resident = [(i.to(device), lab.to(device)) for i, lab in [next(iter(loader))]][0]
    for _ in range(2):  # warm-up: cuDNN autotuning, allocator
        step(*resident)

    def timed(batches: Iterable[Any]) -> tuple[float, int]:
        sync(device)
        t0 = time.perf_counter()
        n = 0
        for images, labels in batches:
            step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
            n += 1
            if n == args.steps:
                break
        sync(device)
        return (time.perf_counter() - t0) / n, n

    def vantix_batches() -> Iterable[Any]:
        epoch = 0
        while True:  # as many epochs as the steps need, each chosen (set_epoch)
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    with_vantix, n = timed(vantix_batches())
    resident_s, _ = timed(resident for _ in range(n))
    return {
        "steps": n,
        "step_seconds_vantix": with_vantix,
        "step_seconds_resident": resident_s,
        "ratio": with_vantix / resident_s,
    }


# ==============================================================================================
# 5. Training epochs
# ==============================================================================================


def train_epoch(model: Any, opt: Any, loader: Any, device: Any, epoch: int) -> dict[str, Any]:
    """One epoch; the GPU's busy fraction from CUDA events around every step (on the CPU: the
    fraction of the epoch not spent waiting for the next batch)."""
    import torch
    import torch.nn.functional as F

    model.train()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    events, waited, steps = [], 0.0, 0
    sync(device)
    t0 = time.perf_counter()
    batches = iter(loader)
    while True:
        tw = time.perf_counter()
        try:
            images, labels = next(batches)
        except StopIteration:
            break
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        waited += time.perf_counter() - tw
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            end.record()
            events.append((start, end))
        steps += 1
    sync(device)
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        busy = sum(s.elapsed_time(e) for s, e in events) / 1e3
    else:
        busy = seconds - waited
    return {"seconds": seconds, "steps": steps, "busy_fraction": min(1.0, busy / seconds)}


def train_models(device: Any, args: argparse.Namespace) -> dict[str, Any]:
    import copy

    import torch
    import torchvision
    from benchmark_training import MODELS, make_optimizer, make_recipe, prepare, settings_for
    from benchmark_training import torchvision_loader as training_loader

    out = {}
    for name in args.models or list(MODELS):
        spec = MODELS[name]
        # The models' own workloads (benchmark_training's defaults, or its --smoke sizes).
        own = argparse.Namespace(
            profile=None,
            image_size=None,
            num_images=None,
            batch_size=None,
            epochs=args.epochs,
            smoke=args.smoke,
        )
        s = settings_for(spec, own)
        recipe = make_recipe(s.profile, s.image_size, None)
        data = prepare(s.profile, s.num_images, recipe.pack_size, args)
        folder = torchvision.datasets.ImageFolder(data["root"], recipe.torchvision_train())
        classes = len(folder.classes)
        torch.manual_seed(0)
        models = {"torchvision": spec.build(classes, s.image_size).to(device)}
        models["vantix"] = copy.deepcopy(models["torchvision"])
        opts = {k: make_optimizer(m, args) for k, m in models.items()}
        loaders = {
            "torchvision": training_loader(
                folder, s.batch_size, train=True, seed=0, persistent=False
            ),
            "vantix": vantix_loader(
                data["pack"], device, s.batch_size, recipe.vantix_train(), drop_last=True
            ),
        }
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in loaders}
        for epoch in range(args.epochs + 1):
            order = list(loaders) if epoch % 2 == 0 else list(loaders)[::-1]
            for k in order:
                runs[k].append(train_epoch(models[k], opts[k], loaders[k], device, epoch))
        summary = {}
        for k, rs in runs.items():
            timed = rs[1:]
            summary[k] = {
                "mean_epoch_seconds": statistics.fmean(r["seconds"] for r in timed),
                "epoch_seconds": [r["seconds"] for r in timed],
                "steps_per_epoch": timed[0]["steps"],
                "busy_fraction": statistics.fmean(r["busy_fraction"] for r in timed),
            }
        tv, vx = summary["torchvision"], summary["vantix"]
        out[name] = {
            "profile": s.profile,
            "image_size": s.image_size,
            "batch_size": s.batch_size,
            "num_images": s.num_images,
            "loaders": summary,
            "speedup": tv["mean_epoch_seconds"] / vx["mean_epoch_seconds"],
        }
        print(
            f"  {name:18s} DataLoader {tv['mean_epoch_seconds']:7.2f} s/epoch"
            f" (busy {tv['busy_fraction']:.0%}), Vantix {vx['mean_epoch_seconds']:7.2f} s/epoch"
            f" (busy {vx['busy_fraction']:.0%}): {out[name]['speedup']:.2f}x"
        )
    return out


# ==============================================================================================
# Report
# ==============================================================================================


def goals(report: dict[str, Any]) -> dict[str, Any]:
    rates = report["rates"]
    float_dev = rates["vantix_float32_device"]["images_per_s"]
    values = {
        "overlap_step_ratio": report["overlap"]["ratio"],
        "float_vs_cpu_float": float_dev / rates["vantix_float32_cpu"]["images_per_s"],
        "float_vs_uint8": float_dev / rates["vantix_uint8"]["images_per_s"],
    }
    if "Small_MLP" in report["training"]:
        values["small_mlp_speedup"] = report["training"]["Small_MLP"]["speedup"]
    from common import check_goals

    return check_goals(values, GOALS, at_most=["overlap_step_ratio"])


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "vantix_uint8": "Vantix\nuint8",
        "vantix_float32_device": "Vantix float32\n(on the device)",
        "vantix_float32_cpu": "Vantix float32\n(on the CPU)",
        "torchvision_float32": "DataLoader\nfloat32",
    }
    rates = report["rates"]
    values = [rates[k]["images_per_s"] for k in labels]
    fig, ax = plt.subplots(figsize=(7.0, 4.4), dpi=100)
    bars = ax.bar(list(labels.values()), values, color=["#2b7bba", "#2b7bba", "#7fb2d9", "#999"])
    for bar, v in zip(bars, values):
        ax.annotate(
            f"{v:,.0f}",
            (bar.get_x() + bar.get_width() / 2, v),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=9,
        )
    ax.set_ylabel("images/s into the device")
    m = report["machine"]
    ax.set_title(f"Batches into {report['parameters']['device']} ({m.get('cuda') or 'CPU'})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("benchmark_gpu: no CUDA device (torch.cuda.is_available() is False): nothing run")
        return 0
    from common import command, ensure_pack, rel, report_head, report_machine, write_report

    import prepare_data

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    machine = report_machine()
    root = args.data_dir / "gpu" / f"imagenet-std-{args.num_images}" / "train"
    prepare_data.make_image_folder(root, "imagenet-std", args.num_images)
    pack_size = round(args.image_size * 256 / 224)
    pack = ensure_pack(root, args.num_images, pack_size, "raw", False).path
    recipe = {"random_resized_crop": args.image_size, "horizontal_flip": 0.5}
    report: dict[str, Any] = {
        **report_head("gpu", machine),
        "parameters": {
            "device": str(device),
            "smoke": args.smoke,
            "num_images": args.num_images,
            "torchvision_images": args.torchvision_images,
            "batch_size": args.batch_size,
            "image_size": args.image_size,
            "pack_size": pack_size,
            "epochs": args.epochs,
            "num_workers": os.cpu_count(),
            "command": command(argv),
        },
    }
    print(f"device {device}: checks")
    report["checks"] = check_correctness(pack, device, args.batch_size, recipe)
    batch_bytes = args.batch_size * 3 * args.image_size**2
    report["bandwidth"] = {
        "torch_pinned_gb_per_s": torch_bandwidth(device, batch_bytes, 20 if args.smoke else 200)
    }
    print("images/s into the device")
    report["rates"] = measure_rates(pack, root, device, args, recipe)
    uint8 = report["rates"]["vantix_uint8"]
    report["bandwidth"]["vantix_uint8_gb_per_s"] = (
        uint8["images_per_s"] * 3 * args.image_size**2 / 1e9
    )
    for k, r in report["rates"].items():
        print(f"  {k:24s} {r['images_per_s']:12,.0f} images/s {r['gb_per_s']:7.2f} GB/s")
    print("overlap")
    report["overlap"] = overlap(pack, device, args, recipe)
    print("training")
    report["training"] = train_models(device, args)
    report["goals"] = goals(report)
    chart = args.assets_dir / "gpu_rates.png"
    plot(report, chart)
    report["chart"] = rel(chart)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
