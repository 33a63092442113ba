"""Render the benchmark JSON in ``assets/`` into README.md's results block.

The block lies between ``<!-- results:begin -->`` and ``<!-- results:end -->`` in README.md and is
generated, never typed: every number comes from ``assets/benchmark_throughput.json``,
``assets/benchmark_augmentation.json``, ``assets/benchmark_memory.json``,
``assets/benchmark_training.json``, ``assets/benchmark_gpu.json``, ``assets/benchmark_pack.json``
and ``assets/benchmark_larger_than_ram.json`` (each section appears when its JSON exists).

Usage::

    python benchmarks/update_readme.py          # rewrite the block from the JSON
    python benchmarks/update_readme.py --check  # exit 1, with a diff, if the block is stale
    python benchmarks/update_readme.py --assets /tmp/a --readme /tmp/R.md  # elsewhere (tests)

Standard library only.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
README = ROOT / "README.md"
BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"

LOADER_NAMES = {
    "vantix_raw": "Vantix (raw pack)",
    "vantix_zstd": "Vantix (zstd pack)",
    "numpy_gather": "numpy gather (memory-copy limit)",
    "torchvision": "torchvision ImageFolder + DataLoader",
}


def load(name: str, assets: Path = ASSETS) -> Optional[dict[str, Any]]:
    path = assets / name
    if not path.exists():
        return None
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def rate(x: float) -> str:
    """Images/s with thousands separators; one decimal below 100."""
    if x < 100:
        return f"{x:,.1f}"
    return f"{x:,.0f}"


def ratio(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}x"
    if x >= 10:
        return f"{x:.1f}x"
    if x >= 0.1:
        return f"{x:.2f}x"
    return f"{x:.2g}x"


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def met(flag: bool) -> str:
    return "yes" if flag else "**no**"


def goals_table(goals: dict[str, Any], at_most: str) -> list[str]:
    """The goals ``common.check_goals`` wrote, one row each: ``at_most`` names the goal met at
    or below its target, every other one is met at or above it."""
    out = ["", "| Goal | value | target | met |", "|---|---:|---:|---|"]
    for key, g in goals.items():
        sign = "<=" if key == at_most else ">="
        out.append(f"| `{key}` | {g['value']:.2f} | {sign} {g['target']:g} | {met(g['met'])} |")
    return out + [""]


def command(data: dict[str, Any]) -> str:
    args = list(data.get("parameters", {}).get("command") or [])
    if not args:
        return f"python benchmarks/benchmark_{data['benchmark']}.py"
    script = Path(args[0]).name
    return " ".join(["python", f"benchmarks/{script}", *args[1:]])


def run_of(data: dict[str, Any]) -> str:
    """The command, the date and the commit a benchmark JSON was written by."""
    commit = data["machine"].get("git_commit")
    return f"`{command(data)}` ({data['timestamp'][:10]}, commit `{commit}`)"


def machine_line(data: dict[str, Any]) -> str:
    m = data["machine"]
    cores = m.get("cpus_usable") or m.get("cpu_count")
    mem = m.get("memory_bytes")
    parts = [
        f"{m.get('cpu_model', 'unknown CPU')}, {cores} cores",
        f"{mem / 2**30:.0f} GiB RAM" if mem else None,
        f"Python {m.get('python')}",
        f"torch {m.get('torch')}",
        f"torchvision {m.get('torchvision')}",
        "CUDA " + str(m["cuda"]) if m.get("cuda") else "no GPU",
    ]
    return ", ".join(p for p in parts if p)


def render_throughput(data: dict[str, Any]) -> list[str]:
    out = [
        "### Throughput",
        "",
        f"{run_of(data)}: "
        f"{data['parameters'].get('trials')} trials of "
        f"{data['parameters'].get('epochs_per_trial')} epochs, images/s as mean ± sample std over "
        "trials; ratios are of means.",
        "",
    ]
    for name, prof in data["profiles"].items():
        ds = prof["dataset"]
        loaders = prof["loaders"]
        ratios = prof["ratios"]
        be = prof["break_even"]
        raw = ds["packs"]["raw"]
        tv = loaders.get("torchvision", {}).get("images_per_s_stats", {}).get("mean")
        gather = loaders.get("numpy_gather", {}).get("images_per_s_stats", {}).get("mean")
        out += [
            f"**{name}**: {ds['num_images']:,} images packed to {ds['size']}x{ds['size']}, "
            f"batch {prof['batch_size']}; source {mb(ds['source_bytes'])}, raw pack "
            f"{mb(raw['bytes'])} (packed in {raw['pack_seconds']:.2f} s), "
            f"zstd pack {mb(ds['packs']['zstd']['bytes'])} "
            f"(packed in {ds['packs']['zstd']['pack_seconds']:.2f} s).",
            "",
            "| Loader | images/s | GB/s | vs numpy gather | vs torchvision |",
            "|---|---:|---:|---:|---:|",
        ]
        for key, label in LOADER_NAMES.items():
            if key not in loaders:
                continue
            lo = loaders[key]
            st = lo["images_per_s_stats"]
            gb = lo.get("gb_per_s_stats", {}).get("mean", lo.get("gb_per_s"))
            if key == "numpy_gather" and lo.get("method"):
                label += f" (`{lo['method']}`)"
            if key == "torchvision" and lo.get("num_workers") is not None:
                label += f", {lo['num_workers']} workers"
            vs_g = ratio(st["mean"] / gather) if gather else "n/a"
            vs_t = ratio(st["mean"] / tv) if tv else "n/a"
            out.append(
                f"| {label} | {rate(st['mean'])} ± {rate(st['std'])} | {gb:.2f} | {vs_g} | {vs_t} |"
            )
        targets = []
        for key, r in ratios.items():
            targets.append(
                f"`{key}` = {ratio(r['value'])} (target ≥ {r['target']:g}x, met: {met(r['met'])})"
            )
        out += [
            "",
            "Targets: " + "; ".join(targets) + ".",
            "",
            f"Break-even (pack time / time saved per epoch against torchvision): raw "
            f"{be['raw']['epochs']:.2f} epochs, zstd {be['zstd']['epochs']:.2f} epochs.",
            "",
        ]
    return out


def render_augmentation(data: dict[str, Any]) -> list[str]:
    out = [
        "### Augmentation",
        "",
        f"{run_of(data)}.",
        "",
    ]
    for name, prof in data["profiles"].items():
        ds = prof["dataset"]
        out += [
            f"**{name}**: {ds['num_images']:,} images at {ds['size']}x{ds['size']}, "
            f"batch {prof['batch_size']}.",
            "",
            "| Configuration | output | images/s | GB/s |",
            "|---|---|---:|---:|",
        ]
        for key, lo in prof["loaders"].items():
            dtype = lo.get("output", {}).get("dtype", "")
            out.append(f"| `{key}` | {dtype} | {rate(lo['images_per_s'])} | {lo['gb_per_s']:.2f} |")
        out += ["", "| Ratio | value | target | met |", "|---|---:|---:|---|"]
        for key, r in prof["ratios"].items():
            unit = "x" if r.get("measure") == "speed" else ""
            out.append(
                f"| `{key}` ({r.get('measure', '')}) | {r['value']:.2f}{unit} | "
                f"{r.get('comparison', '')} {r['target']:g}{unit} | {met(r['met'])} |"
            )
        out.append("")
    return out


def render_memory(data: dict[str, Any]) -> list[str]:
    p = data["parameters"]
    res = data["results"]
    out = [
        "### Memory",
        "",
        f"{run_of(data)}: "
        f"loader overhead = peak anonymous RSS minus the baseline after imports and open, "
        f"profile {p['profile']} at {p['size']}x{p['size']}, batch {p['batch_size']} "
        f"({mb(res['batch_bytes'])} per batch), prefetch {p['prefetch']}, {p['epochs']} epochs, "
        f"a fresh process per run; `held` = batches kept alive by the training loop.",
        "",
        "| Images | held | overhead | in batches | bound | bound (batches) | within bound |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["runs"]:
        out.append(
            f"| {r['num_images']:,} | {r['held']} | {r['loader_overhead_mb']:.1f} MB | "
            f"{r['loader_overhead_batches']:.2f} | {r['bound_mb']:.1f} MB | "
            f"{r['bound_buffers']} | {met(r['within_bound'])} |"
        )
    growth = []
    for key, g in res.get("growth", {}).items():
        growth.append(
            f"{key}: {g['large/small']:.3f} (target {g['target']:g} ± {g['tolerance']:g}, "
            f"met: {met(g['met'])})"
        )
    if growth:
        out += ["", "Overhead, largest over smallest dataset: " + "; ".join(growth) + "."]
    out.append("")
    return out


def load_note(data: dict[str, Any]) -> str:
    """The machine's 1-minute load average when the run started, when it was busy."""
    load = (data["machine"].get("load_average") or [0.0])[0]
    cores = data["machine"].get("cpus_usable") or data["machine"].get("cpu_count") or 1
    if load <= cores:
        return ""
    return (
        f" The machine was shared: load average {load:.1f} on {cores} cores when the run "
        f"started, so these times carry other jobs' noise."
    )


def render_training(data: dict[str, Any]) -> list[str]:
    p = data["parameters"]
    out = [
        "### Training",
        "",
        f"{run_of(data)}: seconds per training epoch on `{p['device']}` with torchvision "
        f"`ImageFolder` + `DataLoader(num_workers={p['num_workers']}, "
        f"pin_memory={p['pin_memory']})` and with `VantixLoader`, the same model, initial "
        f"weights, optimizer ({p['optimizer']}, lr {p['lr']:g}), batch size, number of steps "
        f"and augmentation recipe; mean ± std over the timed epochs (one warm-up epoch "
        f"excluded). Validation accuracy of each trained model on its own pipeline; "
        f"`±3 SE` is three standard errors of the difference of two accuracies on that "
        f"many validation images." + load_note(data),
        "",
        "| Model | Data | Batch x steps | DataLoader s/epoch | Vantix s/epoch | Saved s/epoch "
        "| Speed-up | Val acc DataLoader | Val acc Vantix | ±3 SE |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in data["models"].items():
        s = m["settings"]
        tv, vx = m["loaders"]["torchvision"], m["loaders"]["vantix"]
        out.append(
            f"| {name} | {s['profile']}, {m['split']['train']:,} train / "
            f"{m['split']['val']:,} val, {s['image_size']}px | "
            f"{s['batch_size']} x {vx['steps_per_epoch']} | "
            f"{tv['mean_epoch_seconds']:.2f} ± {tv['std_epoch_seconds']:.2f} | "
            f"{vx['mean_epoch_seconds']:.2f} ± {vx['std_epoch_seconds']:.2f} | "
            f"{m['time_saved_per_epoch_s']:.2f} | {ratio(m['speedup'])} | "
            f"{tv['val_accuracy']:.1%} | {vx['val_accuracy']:.1%} | "
            f"{m['accuracy_3se']:.1%} |"
        )
    out.append("")
    for name, m in data["models"].items():
        chart = m.get("chart")
        if chart and (ROOT / chart).exists():
            chart = rel_link(ROOT / chart)
            out += [f"![Time per epoch, {name}]({chart})", ""]
    return out


GPU_RATES = {
    "vantix_uint8": "Vantix, uint8",
    "vantix_float32_device": "Vantix, float32 normalised on the GPU",
    "vantix_float32_cpu": "Vantix, float32 normalised on the CPU",
    "torchvision_float32": "DataLoader(ImageFolder), float32",
}


def render_gpu(data: dict[str, Any]) -> list[str]:
    p, bw, ov = data["parameters"], data["bandwidth"], data["overlap"]
    diffs = data["checks"]["max_abs_difference"]
    out = [
        "### GPU",
        "",
        f"{run_of(data)}: batches into `{p['device']}` ({data['machine'].get('cuda') or 'CPU'}), "
        f"`RandomResizedCrop({p['image_size']})` + flip, batch {p['batch_size']}; DataLoader with "
        f"`num_workers={p['num_workers']}, pin_memory=True`. Device batches equal the CPU path's "
        f"(largest difference: "
        + ", ".join(f"{k} {v:g}" for k, v in diffs.items())
        + f"). Host-to-device: torch copying a pinned tensor {bw['torch_pinned_gb_per_s']:.1f} "
        f"GB/s (the limit), Vantix uint8 {bw['vantix_uint8_gb_per_s']:.1f} GB/s. Copy/compute "
        f"overlap: a MobileNetV3 step takes {ov['ratio']:.3f}x the time it takes on a batch "
        f"already on the device." + load_note(data),
        "",
        "| Into the GPU | images/s | GB/s |",
        "|---|---:|---:|",
    ]
    for key, label in GPU_RATES.items():
        r = data["rates"][key]
        out.append(f"| {label} | {rate(r['images_per_s'])} | {r['gb_per_s']:.2f} |")
    out += [
        "",
        "| Model | DataLoader s/epoch | Vantix s/epoch | Speed-up | GPU busy DataLoader "
        "| GPU busy Vantix |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in data["training"].items():
        tv, vx = m["loaders"]["torchvision"], m["loaders"]["vantix"]
        out.append(
            f"| {name} | {tv['mean_epoch_seconds']:.2f} | {vx['mean_epoch_seconds']:.2f} | "
            f"{ratio(m['speedup'])} | {tv['busy_fraction']:.0%} | {vx['busy_fraction']:.0%} |"
        )
    out += goals_table(data["goals"], at_most="overlap_step_ratio")
    chart = data.get("chart")
    if chart and (ROOT / chart).exists():
        out += [f"![Images/s into the GPU]({rel_link(ROOT / chart)})", ""]
    return out


LARGER_THAN_RAM_NAMES = {
    "raw_random": 'raw, `order="random"`',
    "raw_random_no_readahead": 'raw, `order="random"`, `readahead=0` (no hints)',
    "raw_block": 'raw, `order="block"`',
    "raw_auto": 'raw, `order="auto"`',
    "zstd_random": 'zstd, `order="random"`',
}


def render_larger_than_ram(data: dict[str, Any]) -> list[str]:
    p, packs, disk = data["parameters"], data["packs"], data["disk"]
    out = [
        "### Data larger than RAM",
        "",
        f"{run_of(data)}: {p['num_images']:,} images packed at {p['size']} (raw "
        f"{mb(packs['raw']['bytes'])}, zstd {mb(packs['zstd']['bytes'])}), the loader in a memory "
        f"cgroup (v{data['cgroup_version']}) leaving {mb(p['page_cache_budget_bytes'])} of page "
        f"cache (the raw pack / {p['oversize']:g}), page cache dropped before each row, "
        f"{p['epochs']} epochs of batch {p['batch_size']}"
        + (f", `block_window={p['block_window']}`" if "block_window" in p else "")
        + "; rates over the epochs after the first. "
        f"The disk reads one shard sequentially at {disk['mb_per_s']:,.0f} MB/s. `read` is the "
        "bytes the process read from disk per epoch over the pack's size "
        "([TRADEOFFS.md](docs/TRADEOFFS.md#5-data-larger-than-ram))." + load_note(data),
        "",
        "| Pack, order | order taken | readahead | images/s | MB/s | read per epoch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, label in LARGER_THAN_RAM_NAMES.items():
        r = data["results"].get(key)
        if r is None:
            continue
        if "error" in r:
            out.append(f"| {label} | not run: {r['error']} | | | | |")
            continue
        out.append(
            f"| {label} | {r['resolved_order']} | {r['readahead_bytes'] / 2**20:,.0f} MiB | "
            f"{rate(r['images_per_s'])} | {r['mb_per_s']:,.0f} | "
            f"{r['read_amplification']:.2f}x |"
        )
    out += goals_table(data["goals"], at_most="random_read_amplification")
    return out


def render_pack(data: dict[str, Any]) -> list[str]:
    p = data["parameters"]
    out = [
        "### Packing",
        "",
        f"{run_of(data)}: `vantix-pack` ({p['vantix_pack']}), `vantix-pack --exact-decode` and a "
        f"Pillow packer on a `multiprocessing.Pool` of {p['workers']} workers (decode, "
        f'`convert("RGB")`, torchvision\'s `Resize({p["size"]})` + `CenterCrop({p["size"]})`, '
        f"one numpy array) pack the same folder in turn, {p['trials']} trials, median wall time. "
        "`libjpeg-turbo draft` is how much faster libjpeg-turbo decodes the profile's JPEGs at "
        "vantix-pack's DCT scale than at full size: the most a scaled decode saves when "
        "entropy decoding is as fast as it gets ([PACKING.md](docs/PACKING.md))." + load_note(data),
        "",
        "| Profile | Images | vantix-pack img/s | --exact-decode img/s | Pillow pool img/s "
        "| vs Pillow | vs --exact-decode | libjpeg-turbo draft | Peak RSS vantix / Pillow |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, prof in data["profiles"].items():
        pk = prof["packers"]
        lj = prof.get("libjpeg_turbo")
        out.append(
            f"| {name} | {prof['source']['num_images']:,} | "
            f"{rate(pk['vantix']['images_per_s'])} | "
            f"{rate(pk['vantix_exact_decode']['images_per_s'])} | "
            f"{rate(pk['pillow_pool']['images_per_s'])} | "
            f"{ratio(prof['speedup_vs_pillow'])} | {ratio(prof['speedup_vs_exact_decode'])} | "
            f"{ratio(lj['draft_speedup']) if lj else 'n/a'} | "
            f"{pk['vantix']['peak_rss_kib'] / 1024:.1f} / "
            f"{pk['pillow_pool']['peak_rss_kib'] / 1024:.1f} MiB |"
        )
    rows = data.get("memory") or []
    if rows:
        out += [
            "",
            "Peak RSS of vantix-pack by dataset size: "
            + ", ".join(
                f"{r['num_images']:,} images {r['peak_rss_kib'] / 1024:.1f} MiB" for r in rows
            )
            + ".",
        ]
    out.append("")
    return out


def render(assets: Path = ASSETS) -> str:
    throughput = load("benchmark_throughput.json", assets)
    augmentation = load("benchmark_augmentation.json", assets)
    memory = load("benchmark_memory.json", assets)
    training = load("benchmark_training.json", assets)
    gpu = load("benchmark_gpu.json", assets)
    pack = load("benchmark_pack.json", assets)
    larger = load("benchmark_larger_than_ram.json", assets)
    present = [
        d for d in (throughput, augmentation, memory, training, gpu, pack, larger) if d is not None
    ]
    if not present:
        raise SystemExit("update_readme: no benchmark JSON in assets/")

    lines = [
        "<!-- Generated by `python benchmarks/update_readme.py` from assets/*.json; "
        "do not edit. -->",
        "",
    ]
    machines = []
    for d in present:
        m = machine_line(d)
        if m not in machines:
            machines.append(m)
    lines.append("Machine: " + "; ".join(machines) + ".")
    lines.append("")
    lines += ["To reproduce:", "", "```bash", "make build-release"]
    lines += [command(d) for d in present]
    lines += ["python benchmarks/update_readme.py", "```", ""]
    for png, alt in (
        ("benchmark_throughput.png", "Throughput per loader and profile"),
        ("benchmark_rigorous.png", "Throughput benchmark, per-trial detail"),
    ):
        if (assets / png).exists():
            lines += [f"![{alt}]({rel_link(assets / png)})", ""]
    if throughput:
        lines += render_throughput(throughput)
    if augmentation:
        lines += render_augmentation(augmentation)
    if memory:
        lines += render_memory(memory)
    if training:
        lines += render_training(training)
    if gpu:
        lines += render_gpu(gpu)
    if pack:
        lines += render_pack(pack)
    if larger:
        lines += render_larger_than_ram(larger)
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def rel_link(path: Path) -> str:
    """``path`` relative to the repository (as README links are), else absolute."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def split_readme(text: str) -> tuple[str, str, str]:
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(f"update_readme: README.md needs exactly one {BEGIN} and one {END}")
    head, rest = text.split(BEGIN, 1)
    body, tail = rest.split(END, 1)
    if body.startswith("\n"):
        body = body[1:]
    return head, body, tail


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 with a diff if README.md's block differs from the JSON",
    )
    parser.add_argument(
        "--assets", type=Path, default=ASSETS, help="folder of the benchmark JSON (assets/)"
    )
    parser.add_argument("--readme", type=Path, default=README, help="file to update (README.md)")
    args = parser.parse_args(argv)

    text = args.readme.read_text(encoding="utf-8")
    head, body, tail = split_readme(text)
    want = render(args.assets)
    if args.check:
        if body == want:
            print("update_readme: README.md results match assets/*.json")
            return 0
        diff = difflib.unified_diff(
            body.splitlines(keepends=True),
            want.splitlines(keepends=True),
            fromfile="README.md (results block)",
            tofile="rendered from assets/*.json",
        )
        sys.stdout.write("".join(diff))
        print(
            "update_readme: README.md's results block is out of date with assets/*.json; "
            "run `python benchmarks/update_readme.py`",
            file=sys.stderr,
        )
        return 1
    new = head + BEGIN + "\n" + want + END + tail
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
        print("update_readme: README.md updated")
    else:
        print("update_readme: README.md already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
