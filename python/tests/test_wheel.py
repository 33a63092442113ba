"""The wheel users install: built by maturin, abi3, installed into a fresh virtual environment
(no system site packages, so no torch) with no Rust toolchain on the PATH; the `vantix-pack`
console script packs an ImageFolder and the loader reads it as numpy arrays."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import write_image_folder

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

SMOKE = r"""
import json, sys
import numpy as np
import vantix
from vantix import VantixLoader, VantixDataset
try:
    import torch  # noqa: F401
    has_torch = True
except ImportError:
    has_torch = False
loader = VantixLoader(sys.argv[1], batch_size=4, shuffle=True, seed=1,
                      horizontal_flip=0.5, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                      dtype="float32", layout="NCHW")
batches = [(type(x).__module__, x.shape, str(x.dtype), y.tolist()) for x, y in loader]
ds = VantixDataset(sys.argv[1])
loader.preview(sys.argv[2])
print(json.dumps({
    "file": vantix.__file__, "version": vantix.__version__, "torch": has_torch,
    "batches": batches, "classes": ds.classes, "n": len(ds),
}))
"""


def _run(cmd, env, cwd, timeout=600):
    proc = subprocess.run(
        [str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _path_without_rust() -> str:
    """The PATH minus every directory that holds cargo or rustc."""
    keep = [
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d
        and not (Path(d) / "cargo").exists()
        and not (Path(d) / "rustc").exists()
        and Path(d).resolve() != BIN.resolve()
    ]
    return os.pathsep.join(keep)


def test_wheel_installs_and_runs_without_rust_or_torch(tmp_path):
    # 1. Build the wheel as a release would (the dev profile, reusing the build of the tests).
    dist = tmp_path / "dist"
    maturin = BIN / "maturin" if (BIN / "maturin").exists() else shutil.which("maturin")
    assert maturin, "maturin is not installed (requirements-dev.txt)"
    _run([maturin, "build", "--out", dist], dict(os.environ), ROOT)
    wheels = list(dist.glob("vantix-*.whl"))
    assert len(wheels) == 1, wheels
    wheel = wheels[0]
    assert "-cp39-abi3-" in wheel.name  # one wheel for every CPython >= 3.9
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = z.read(entry_points).decode().replace(" ", "")
        assert "[console_scripts]\nvantix-pack=vantix.cli:main" in scripts
    for f in ("vantix/__init__.py", "vantix/py.typed", "vantix/_native.pyi", "vantix/data.py"):
        assert f in names, f
    assert any(n.startswith("vantix/_native.") and n.endswith((".so", ".pyd")) for n in names)

    # 2. A fresh virtual environment without system site packages; nothing from this one.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], dict(os.environ), tmp_path)
    vbin = venv / ("Scripts" if os.name == "nt" else "bin")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CARGO_HOME", "RUSTUP_HOME")
    }
    env["PATH"] = os.pathsep.join([str(vbin), _path_without_rust()])
    assert shutil.which("cargo", path=env["PATH"]) is None
    assert shutil.which("rustc", path=env["PATH"]) is None
    _run([vbin / "python", "-m", "pip", "install", "--quiet", wheel], env, tmp_path)

    # 3. The console script packs an ImageFolder; the package loads it (numpy, no torch).
    src = write_image_folder(tmp_path / "train", 10, size=(24, 20), num_classes=2)
    help_text = _run([vbin / "vantix-pack", "--help"], env, tmp_path).stdout
    assert "Examples:" in help_text and "preview" in help_text
    _run(
        [vbin / "vantix-pack", src, "--size", "16", "-o", tmp_path / "train.vtx", "-q"],
        env,
        tmp_path,
    )
    out = _run([vbin / "vantix-pack", "verify", tmp_path / "train.vtx"], env, tmp_path).stdout
    assert "OK: 10 records" in out
    _run(
        [vbin / "vantix-pack", "preview", tmp_path / "train.vtx", "-o", tmp_path / "sheet.png"],
        env,
        tmp_path,
    )
    assert (tmp_path / "sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    script = tmp_path / "smoke.py"
    script.write_text(SMOKE)
    proc = _run(
        [vbin / "python", script, tmp_path / "train.vtx", tmp_path / "batch.png"], env, tmp_path
    )
    r = json.loads(proc.stdout)
    assert Path(r["file"]).resolve().is_relative_to(venv.resolve())
    assert r["torch"] is False and r["n"] == 10 and r["classes"] == ["c0", "c1"]
    assert [b[:3] for b in r["batches"]] == [
        ["numpy", [4, 3, 16, 16], "float32"],
        ["numpy", [4, 3, 16, 16], "float32"],
        ["numpy", [2, 3, 16, 16], "float32"],
    ]
    assert sorted(sum((b[3] for b in r["batches"]), [])) == [0] * 5 + [1] * 5
    assert (tmp_path / "batch.png").stat().st_size > 0
