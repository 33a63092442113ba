"""Data larger than RAM: readahead never changes the batches, the fit check and its warning,
``order="auto"``, and the resume key of an order resolved from memory.

``VANTIX_MEMORY_LIMIT`` (bytes) lowers the memory the process is taken to have, so a tiny
dataset "does not fit" deterministically; without it a tiny dataset always fits.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_image_folder

import vantix
from vantix import _native
from vantix.data import DataLargerThanMemoryWarning

ENV = "VANTIX_MEMORY_LIMIT"


def _smooth(rng, w, h):
    base = rng.integers(0, 256, (1, w, 3)).astype(np.uint8)
    return np.repeat(base, h, axis=0)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    src = tmp_path_factory.mktemp("src") / "train"
    # Smooth images (zstd compresses them), 39 of them over 3 classes, shards of a few records.
    write_image_folder(src, 39, size=(20, 16), image=lambda rng, w, h: _smooth(rng, w, h))
    out = tmp_path_factory.mktemp("out")
    raw = vantix.pack(src, out / "raw.vtx", size=(16, 20), mode="squash", shard_size=4096)
    zst = vantix.pack(src, out / "zstd.vtx", size=(16, 20), mode="squash", codec="zstd")
    return {"raw": Path(raw.path), "zstd": Path(zst.path)}


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget which datasets this process already warned about."""
    monkeypatch.setattr(vantix.data, "_WARNED_LARGER", set())


def _epoch(loader, epoch=1):
    loader.set_epoch(epoch)
    return [(np.asarray(x).copy(), np.asarray(y).copy()) for x, y in loader]


@pytest.mark.parametrize("codec", ["raw", "zstd"])
@pytest.mark.parametrize("order", ["random", "block", "sequential"])
def test_readahead_never_changes_the_batches(packed, codec, order, monkeypatch):
    shuffle = order != "sequential"
    opts = dict(batch_size=5, seed=3, shuffle=shuffle, order=order if shuffle else "random")
    opts.update(block_size=4, block_window=2)
    off = vantix.VantixLoader(packed[codec], readahead=0, **opts)
    assert off.readahead == 0
    want = _epoch(off) + _epoch(off, 2)
    for readahead in (1, 100, "1M", 2**30, None):
        if readahead is None:  # the default where the raw pack does not fit
            monkeypatch.setenv(ENV, "80K")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataLargerThanMemoryWarning)
            loader = vantix.VantixLoader(packed[codec], readahead=readahead, **opts)
        if readahead is None:
            fit = loader._native.memory_fit()  # what is left beside the batch buffers
            assert fit["reserved_bytes"] == 5 * 16 * 20 * 3 * (loader.prefetch + 2)
            assert loader.readahead == (0 if fit["fits"] else fit["usable_bytes"] // 4)
            assert fit["fits"] == (codec == "zstd"), fit
        else:
            assert loader.readahead > 0
        # Two epochs: in random order with the raw pack not fitting (None), the records beyond
        # the resident set are given back once copied, and read again from the file.
        got = _epoch(loader) + _epoch(loader, 2)
        assert len(got) == len(want)
        for (gx, gy), (wx, wy) in zip(got, want):
            assert np.array_equal(gx, wx) and np.array_equal(gy, wy), (codec, order, readahead)


def test_readahead_default_and_bad_values(packed, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert vantix.VantixLoader(packed["raw"]).readahead == 0  # it fits: no hints
    assert vantix.VantixLoader(packed["raw"], readahead="2M").readahead == 2 << 20
    with pytest.raises(vantix.VantixValueError, match=r"readahead must be an int in \[0, "):
        vantix.VantixLoader(packed["raw"], readahead=2**41)
    with pytest.raises(vantix.VantixValueError, match="readahead"):
        vantix.VantixLoader(packed["raw"], readahead=-1)
    with pytest.raises(vantix.VantixTypeError, match="readahead"):
        vantix.VantixLoader(packed["raw"], readahead=1.5)
    with pytest.raises(vantix.VantixValueError, match="invalid size"):
        vantix.VantixLoader(packed["raw"], readahead="lots")


def test_memory_fit_reports_the_numbers(packed, monkeypatch):
    ds = vantix.VantixDataset(packed["raw"])
    monkeypatch.delenv(ENV, raising=False)
    fit = _native.memory_fit(ds._native)
    assert fit["fits"] and fit["dataset_bytes"] == sum(
        p.stat().st_size for p in packed["raw"].glob("shard-*")
    )
    assert fit["env_limit"] is None and fit["zstd_bytes"] is None
    monkeypatch.setenv(ENV, "1K")
    fit = _native.memory_fit(ds._native)
    assert not fit["fits"] and fit["usable_bytes"] == 1024 and fit["env_limit"] == 1024
    assert fit["zstd_estimated"] and fit["zstd_bytes"] > 0
    monkeypatch.setenv(ENV, "lots")
    with pytest.raises(vantix.VantixValueError, match=ENV):
        _native.memory_fit(ds._native)
    with pytest.raises(vantix.VantixValueError, match=ENV):
        vantix.VantixLoader(packed["raw"])


def test_a_full_shuffle_over_data_larger_than_memory_warns_once(
    packed, monkeypatch, fresh_warnings
):
    monkeypatch.setenv(ENV, "1K")
    with pytest.warns(DataLargerThanMemoryWarning) as caught:
        vantix.VantixLoader(packed["raw"])
    (w,) = caught
    text = str(w.message)
    for needle in (
        "(raw) does not fit in the 0 B of memory this process can use",
        f"{ENV} 1.0 KiB, less 1.2 MiB of the loader's batch buffers",
        "--codec zstd (about",
        'order="block"',
        'order="auto"',
        "more memory",
    ):
        assert needle in text, (needle, text)
    assert issubclass(DataLargerThanMemoryWarning, RuntimeWarning)
    assert vantix.DataLargerThanMemoryWarning is DataLargerThanMemoryWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vantix.VantixLoader(packed["raw"])  # once per process and dataset
        vantix.VantixLoader(packed["zstd"], order="block")  # block order: nothing to say
        vantix.VantixLoader(packed["zstd"], shuffle=False)
    with pytest.warns(DataLargerThanMemoryWarning) as caught:
        vantix.VantixLoader(packed["zstd"])
    text = str(caught[0].message)
    assert "(zstd) does not fit" in text and "--codec zstd" not in text, text
    monkeypatch.delenv(ENV)
    monkeypatch.setattr(vantix.data, "_WARNED_LARGER", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vantix.VantixLoader(packed["raw"])  # fits: silent


def test_inspect_prints_the_same_memory_line(packed, monkeypatch):
    def without_machine(text):  # MemAvailable moves between two reads
        return re.sub(r"\(MemAvailable[^)]*\)", "(...)", text)

    monkeypatch.setenv(ENV, "1K")
    out = run_cli("inspect", packed["raw"]).stdout
    (line,) = [x for x in out.splitlines() if x.startswith("memory ")]
    fit = _native.memory_fit(vantix.VantixDataset(packed["raw"])._native)
    assert without_machine(line.split(None, 1)[1]) == without_machine(fit["message"])
    assert "does not fit" in line
    monkeypatch.delenv(ENV)
    out = run_cli("inspect", packed["raw"]).stdout
    assert "fits in the" in out and "does not fit" not in out
    assert "memory" not in vantix.inspect(packed["raw"])  # the JSON describes the dataset


def test_auto_order_takes_block_order_only_when_the_data_does_not_fit(
    packed, monkeypatch, fresh_warnings
):
    opts = dict(batch_size=4, seed=1, block_size=4, block_window=2)
    monkeypatch.delenv(ENV, raising=False)
    auto = vantix.VantixLoader(packed["raw"], order="auto", **opts)
    assert (auto.order, auto.resolved_order) == ("auto", "random")
    random = vantix.VantixLoader(packed["raw"], order="random", **opts)
    assert np.array_equal(auto.epoch_indices(2), random.epoch_indices(2))
    monkeypatch.setenv(ENV, "1K")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # block order was taken: no warning
        auto = vantix.VantixLoader(packed["raw"], order="auto", **opts)
    assert (auto.order, auto.resolved_order) == ("auto", "block")
    block = vantix.VantixLoader(packed["raw"], order="block", **opts)
    assert np.array_equal(auto.epoch_indices(2), block.epoch_indices(2))
    assert vantix.VantixLoader(packed["raw"], order="auto", shuffle=False).resolved_order == (
        "sequential"
    )
    with pytest.raises(vantix.VantixValueError, match="'random', 'block', 'auto' or 'sequential'"):
        vantix.VantixLoader(packed["raw"], order="smart")


def test_a_resume_where_auto_resolves_otherwise_is_refused(packed, monkeypatch, fresh_warnings):
    opts = dict(batch_size=4, seed=1, order="auto")
    monkeypatch.setenv(ENV, "1K")
    small = vantix.VantixLoader(packed["raw"], **opts)
    it = iter(small)
    next(it)
    state = small.state_dict()
    assert state["order"] == "block"
    rest = [np.asarray(y).copy() for _, y in it]
    again = vantix.VantixLoader(packed["raw"], **opts)  # the same machine: same order
    again.load_state_dict(state)
    assert all(np.array_equal(a, np.asarray(b)) for a, (_, b) in zip(rest, again))
    monkeypatch.delenv(ENV)
    large = vantix.VantixLoader(packed["raw"], **opts)  # a machine where the data fits
    with pytest.raises(
        vantix.VantixValueError, match="order='auto' resolved to 'random' here"
    ) as e:
        large.load_state_dict(state)
    assert "order='block'" in str(e.value)
    # Told the order explicitly, the resume is exact again.
    explicit = vantix.VantixLoader(packed["raw"], batch_size=4, seed=1, order="block")
    explicit.load_state_dict(state)
    assert all(np.array_equal(a, np.asarray(b)) for a, (_, b) in zip(rest, explicit))
    # The resume key itself differs too (a state without the "order" field is still refused).
    legacy = {k: v for k, v in state.items() if k != "order"}
    with pytest.raises(vantix.VantixValueError, match="resume key differs"):
        large.load_state_dict(legacy)
