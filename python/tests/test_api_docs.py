"""Every public class, function, method and parameter of `vantix` is documented, and the
command line's help is complete: `help()` and `vantix-pack --help` are enough to use Vantix."""

from __future__ import annotations

import inspect
import pydoc
import subprocess
import sys
from pathlib import Path

import pytest

import vantix

BIN = Path(sys.executable).parent


def _public_callables():
    for name in vantix.__all__:
        obj = getattr(vantix, name)
        if inspect.isclass(obj):
            yield name, obj, obj
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr not in ("__init__", "__iter__", "__len__"):
                    continue
                if attr in ("__init__",):
                    continue  # documented by the class docstring
                if isinstance(member, property) or callable(member):
                    yield f"{name}.{attr}", member, obj
        elif callable(obj):
            yield name, obj, None


@pytest.mark.parametrize("name,obj,owner", list(_public_callables()), ids=lambda v: str(v))
def test_public_objects_have_docstrings(name, obj, owner):
    target = obj.fget if isinstance(obj, property) else obj
    doc = inspect.getdoc(target)
    assert doc and len(doc) > 15, f"{name} has no docstring"
    if inspect.isclass(obj):
        target, doc = obj.__init__, inspect.getdoc(obj)
    if isinstance(obj, property) or not callable(target):
        return
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return
    missing = [
        p
        for p in params
        if p not in ("self", "cls", "args", "kwargs")
        and f"{p}:" not in doc
        and f"``{p}``" not in doc
    ]
    assert not missing, f"{name}: parameters not described in the docstring: {missing}"


def test_help_of_the_loader_is_a_reference():
    text = pydoc.render_doc(vantix.VantixLoader, renderer=pydoc.plaintext)
    for needle in (
        "batch_size",
        "shuffle",
        "drop_last",
        "random_resized_crop",
        "state_dict",
        "set_epoch",
        "preview",
        "Example",
        "VantixError",
    ):
        assert needle in text, needle


@pytest.mark.parametrize(
    "command", [[], ["inspect"], ["verify"], ["preview"], ["merge"], ["append"]]
)
def test_cli_help_is_complete(command):
    proc = subprocess.run(
        [str(BIN / "vantix-pack"), *command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "Example" in proc.stdout, proc.stdout
    if not command:
        for option in ("--size", "--mode", "--codec", "--shard-size", "--jobs", "--strict"):
            assert option in proc.stdout
        assert "[default: center-crop]" in proc.stdout and "[default: 512M]" in proc.stdout
    if command == ["preview"]:
        assert "[default: 64]" in proc.stdout and "--indices" in proc.stdout
