"""The benchmark scripts, run end to end on tiny data so they cannot rot.

Each script runs as users run it (a subprocess with its command line), into a temporary folder;
the test checks the JSON it writes (every loader measured, the ratios computed from the rates,
the charts written) and that ``update_readme.py`` renders the README results block from it. The
figures themselves are meaningless at this size and nothing here asserts a speed: the full runs
(README) are for people.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"


def run_script(name: str, *args: object, timeout: float = 600) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / name), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def assert_chart(path: Path) -> None:
    assert path.exists(), f"chart {path} not written"
    width, height = png_size(path)
    assert width >= 600 and height >= 300, (path, width, height)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


def test_prepare_data_writes_every_profile(out: Path) -> None:
    run_script("prepare_data.py", "--profile", "all", "--num-images", 12, "--out", out / "prep")
    for profile, suffixes in (
        ("cifar-like", {".png"}),
        ("imagenet-std", {".jpg"}),
        ("4k-medical", {".jpg", ".png"}),
        ("4k-photo", {".jpg"}),
    ):
        files = sorted((out / "prep" / profile).rglob("*.*"))
        images = [f for f in files if f.suffix in suffixes]
        assert len(images) == 12, (profile, files)
        # An ImageFolder: one folder per class, every image in a class folder.
        assert len({f.parent for f in images}) > 1


def test_pack_benchmark_smoke(out: Path) -> None:
    report_path = out / "assets" / "benchmark_pack.json"
    run_script(
        "benchmark_pack.py",
        *("--tiny", "--num-images", 4, "--data-dir", out / "pack-data", "--out", report_path),
    )
    report = json.loads(report_path.read_text())
    assert set(report["profiles"]) == {"imagenet-std", "4k-medical", "4k-photo"}
    for name, prof in report["profiles"].items():
        packers = prof["packers"]
        assert set(packers) == {"vantix", "vantix_exact_decode", "pillow_pool"}, name
        for packer in packers.values():
            assert len(packer["seconds"]) == 1 and packer["peak_rss_kib"] > 0
            assert packer["images_per_s"] == pytest.approx(4 / packer["median_seconds"])
        assert prof["speedup_vs_pillow"] == pytest.approx(
            packers["vantix"]["images_per_s"] / packers["pillow_pool"]["images_per_s"]
        )
        floor = prof["libjpeg_turbo"]
        assert floor["jpeg_files"] > 0 and floor["full_ms"] > 0 and floor["draft_ms"] > 0
    assert [row["num_images"] for row in report["memory"]] == [2, 4]


def test_throughput_smoke(out: Path) -> None:
    report_path = out / "assets" / "benchmark_throughput.json"
    run_script(
        "benchmark_throughput.py",
        *("--num-images", 16, "--torchvision-images", 8, "--batch-size", 8),
        *("--epochs", 1, "--trials", 2, "--data-dir", out / "data"),
        *("--assets-dir", out / "assets", "--out", report_path),
    )
    report = json.loads(report_path.read_text())
    assert set(report["profiles"]) == {"cifar-like", "imagenet-std", "4k-medical"}
    for name, prof in report["profiles"].items():
        loaders = prof["loaders"]
        for key in ("vantix_raw", "vantix_zstd", "numpy_gather", "torchvision"):
            assert key in loaders, (name, key)
            trials = loaders[key]["images_per_s_stats"]["trials"]
            assert len(trials) == 2 and all(r > 0 for r in trials), (name, key, trials)
        raw, tv = loaders["vantix_raw"], loaders["torchvision"]
        want = raw["images_per_s_stats"]["mean"] / tv["images_per_s_stats"]["mean"]
        got = prof["ratios"]["vantix_raw/torchvision"]["value"]
        assert got == pytest.approx(want, rel=1e-6)
        packs = prof["dataset"]["packs"]
        assert packs["raw"]["bytes"] > 0 and packs["zstd"]["bytes"] > 0
        assert prof["dataset"]["source_bytes"] > 0
        assert "epochs" in prof["break_even"]["raw"]
    assert_chart(out / "assets" / "benchmark_throughput.png")
    assert_chart(out / "assets" / "benchmark_rigorous.png")


def test_compression_smoke(out: Path) -> None:
    report_path = out / "assets" / "benchmark_compression.json"
    run_script(
        "benchmark_compression.py",
        *("--tiny", "--epochs", 1, "--batch-size", 8, "--num-threads", 2),
        *("--data-dir", out / "comp", "--out", report_path),
    )
    report = json.loads(report_path.read_text())
    assert set(report["profiles"]) == {"cifar-like", "imagenet-std", "4k-medical"}
    for name, prof in report["profiles"].items():
        packs = prof["packs"]
        want = {"raw", "zstd 1", "zstd 3", "zstd 9"}
        if name == "cifar-like":
            want.add("zstd 3 + dictionary")
            assert packs["zstd 3 + dictionary"]["pack_arguments"]["dictionary"] == "on"
        assert set(packs) == want, name
        raw = packs["raw"]
        for label, p in packs.items():
            assert p["bytes"] > 0 and p["images"] > 0 and p["images_per_s"] > 0, (name, label)
            assert p["vs_raw"] == pytest.approx(p["bytes"] / raw["bytes"], rel=1e-9)
            want_ips = p["images_per_s"] / raw["images_per_s"]
            assert p["images_per_s_vs_raw"] == pytest.approx(want_ips, rel=1e-9)
            assert p["vs_source"] == pytest.approx(p["bytes"] / prof["source_bytes"], rel=1e-9)
        assert packs["zstd 3"]["bytes"] < raw["bytes"], name


def test_training_smoke(out: Path) -> None:
    report_path = out / "assets" / "benchmark_training.json"
    run_script(
        "benchmark_training.py",
        *("--smoke", "--data-dir", out / "data"),
        *("--assets-dir", out / "assets", "--out", report_path),
    )
    report = json.loads(report_path.read_text())
    assert list(report["models"]) == ["Small_MLP", "Medium_CNN", "Large_MobileNetV3"]
    for name, m in report["models"].items():
        tv, vx = m["loaders"]["torchvision"], m["loaders"]["vantix"]
        # The same work for both loaders: steps and samples per epoch.
        assert tv["steps_per_epoch"] == vx["steps_per_epoch"] > 0, name
        assert tv["samples_per_epoch"] == vx["samples_per_epoch"], name
        assert m["speedup"] == pytest.approx(
            tv["mean_epoch_seconds"] / vx["mean_epoch_seconds"], rel=1e-6
        )
        for acc in (tv["val_accuracy"], vx["val_accuracy"]):
            assert 0.0 <= acc <= 1.0
        assert_chart(out / "assets" / f"time_savings_{name}.png")


def test_gpu_smoke(out: Path) -> None:
    """Without CUDA, benchmark_gpu.py's smoke mode runs every measurement on the CPU "device",
    including the device conversion against the Rust float path (equal), and writes its
    report and chart; its plain mode without CUDA writes nothing."""
    import torch

    report_path = out / "assets" / "benchmark_gpu.json"
    run_script(
        "benchmark_gpu.py",
        *("--smoke", "--data-dir", out / "data"),
        *("--assets-dir", out / "assets", "--out", report_path),
    )
    report = json.loads(report_path.read_text())
    assert report["checks"]["max_abs_difference"] == {
        "uint8": 0,
        "float32": 0,
        "float16": 0,
        "bfloat16": 0,
    }
    rates = report["rates"]
    assert set(rates) == {
        "vantix_uint8",
        "vantix_float32_device",
        "vantix_float32_cpu",
        "torchvision_float32",
    }
    assert all(r["images_per_s"] > 0 for r in rates.values())
    assert rates["vantix_float32_device"]["bytes_per_image_on_device"] == (
        4 * rates["vantix_uint8"]["bytes_per_image_on_device"]
    )
    assert report["overlap"]["ratio"] > 0 and report["training"]["Small_MLP"]["speedup"] > 0
    assert set(report["goals"]) == {
        "overlap_step_ratio",
        "float_vs_cpu_float",
        "float_vs_uint8",
        "small_mlp_speedup",
    }
    assert_chart(out / "assets" / "gpu_rates.png")
    if not torch.cuda.is_available():
        plain = out / "plain" / "gpu.json"
        stdout = run_script("benchmark_gpu.py", "--out", plain, "--assets-dir", out / "plain")
        assert "no CUDA device" in stdout and not (out / "plain").exists()


def test_larger_than_ram_smoke(out: Path) -> None:
    """benchmark_larger_than_ram.py's smoke mode: where it can make a memory cgroup (root), every
    configuration runs in it and the report has its goals and the order ``auto`` took; where it
    cannot, it says why, exits 0 and writes nothing."""
    report_path = out / "assets" / "benchmark_larger_than_ram.json"
    stdout = run_script(
        "benchmark_larger_than_ram.py",
        *("--smoke", "--data-dir", out / "ltr-data", "--out", report_path),
    )
    if "nothing run" in stdout:
        assert not report_path.exists()
        return
    report = json.loads(report_path.read_text())
    assert set(report["results"]) == {
        "raw_random",
        "raw_random_no_readahead",
        "raw_block",
        "raw_auto",
        "zstd_random",
    }
    for name, r in report["results"].items():
        assert "error" not in r, (name, r)
        assert len(r["epochs"]) == report["parameters"]["epochs"]
        assert all(e["images"] == report["parameters"]["num_images"] for e in r["epochs"])
        assert r["images_per_s"] > 0 and r["read_amplification"] >= 0
    res = report["results"]
    assert res["raw_random_no_readahead"]["readahead_bytes"] == 0
    assert res["raw_block"]["resolved_order"] == "block"
    assert res["raw_auto"]["resolved_order"] in ("block", "random")
    assert res["raw_auto"]["resolved_order"] == (
        "random" if res["raw_auto"]["memory_fit"]["fits"] else "block"
    )
    assert set(report["goals"]) == {
        "random_vs_no_readahead",
        "random_vs_block",
        "block_vs_disk",
        "random_read_amplification",
    }


def test_readme_block_renders_from_fresh_results(out: Path) -> None:
    """``update_readme.py`` turns the JSON the smoke runs wrote into a results block."""
    assert (out / "assets" / "benchmark_training.json").exists(), "run the whole module"
    readme = out / "README.md"
    readme.write_text("# x\n\n<!-- results:begin -->\n<!-- results:end -->\n")
    run_script("update_readme.py", "--assets", out / "assets", "--readme", readme)
    text = readme.read_text()
    for heading in (
        "### Training",
        "Small_MLP",
        "Large_MobileNetV3",
        "imagenet-std",
        "### GPU",
        "### Packing",
    ):
        assert heading in text, heading
    if (out / "assets" / "benchmark_larger_than_ram.json").exists():
        assert "### Data larger than RAM" in text and 'raw, `order="auto"`' in text
    run_script("update_readme.py", "--assets", out / "assets", "--readme", readme, "--check")


def test_ranks_smoke(out: Path) -> None:
    """Two ranks with the default threads against explicit counts: one report, every setting."""
    report_path = out / "ranks.json"
    run_script("benchmark_ranks.py", "--tiny", "--out", report_path)
    report = json.loads(report_path.read_text())
    settings = {r["num_threads"] for r in report["results"]}
    assert "default" in settings and len(settings) >= 2
    for r in report["results"]:
        assert r["images"] > 0 and r["images_per_s"] > 0
        if r["num_threads"] == "default":
            assert r["num_threads_used"] == [max(1, len(os.sched_getaffinity(0)) // 2)] * 2
    assert report["summary"] and all(s["explicit_vs_default"] > 0 for s in report["summary"])
