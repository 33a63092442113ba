"""The loader: epochs, shuffling, determinism, zero-copy batches, buffer recycling, lifecycle."""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest
import torch
from conftest import prefetch_threads, prefetch_threads_after_join
from PIL import Image

import vantix
from vantix import VantixDataset, VantixError, VantixLoader

N_IMAGES = 103  # not a multiple of any batch size used below
CLASSES = ["ant", "bee", "cat", "dog"]


def _make_folder(root, n=N_IMAGES, size=(40, 30), seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / CLASSES[i % len(CLASSES)]
        d.mkdir(parents=True, exist_ok=True)
        # Smooth random field: unique per image, cheap to make.
        base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize(size, Image.BILINEAR)
        img.save(d / f"img_{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = _make_folder(tmp_path_factory.mktemp("src") / "train")
    out = tmp_path_factory.mktemp("out")
    raw = vantix.pack(root, out / "raw.vtx", size=(24, 32), mode="squash")
    zst = vantix.pack(root, out / "zstd.vtx", size=(24, 32), mode="squash", codec="zstd")
    assert raw.num_samples == zst.num_samples == N_IMAGES
    return {"raw": out / "raw.vtx", "zstd": out / "zstd.vtx", "src": root}


@pytest.fixture(params=["raw", "zstd"])
def path(request, packed):
    return packed[request.param]


def _gather(ds, indices):
    return np.stack([ds[int(i)][0] for i in indices])


def _epoch(loader):
    return [(x.numpy().copy(), y.numpy().copy()) for x, y in loader]


def test_batches_are_torch_tensors_with_the_right_shape(path):
    loader = VantixLoader(path, batch_size=16)
    assert len(loader) == 7
    images, labels = next(iter(loader))
    assert isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (16, 24, 32, 3)
    assert labels.dtype == torch.int64 and tuple(labels.shape) == (16,)
    assert loader.classes == CLASSES
    assert loader.class_to_idx == {c: i for i, c in enumerate(CLASSES)}
    assert loader.num_samples == N_IMAGES


def test_every_epoch_yields_every_sample_once_including_last_partial_batch(path):
    loader = VantixLoader(path, batch_size=16, shuffle=True, seed=3)
    ds = loader.dataset
    for epoch in range(2):
        indices = loader.epoch_indices(epoch)
        assert sorted(indices.tolist()) == list(range(N_IMAGES))
        batches = _epoch(loader)
        assert [len(y) for _, y in batches] == [16] * 6 + [7]
        images = np.concatenate([x for x, _ in batches])
        labels = np.concatenate([y for _, y in batches])
        np.testing.assert_array_equal(images, _gather(ds, indices))
        np.testing.assert_array_equal(labels, np.array(ds.targets)[indices])
    assert loader.epoch == 2


def test_every_batch_equals_a_numpy_gather(path):
    loader = VantixLoader(path, batch_size=10, shuffle=True, seed=11)
    ds = VantixDataset(path)
    loader.set_epoch(5)
    indices = loader.epoch_indices(5)
    for k, (x, y) in enumerate(loader):
        idx = indices[k * 10 : (k + 1) * 10]
        np.testing.assert_array_equal(x.numpy(), _gather(ds, idx))
        np.testing.assert_array_equal(y.numpy(), [ds[int(i)][1] for i in idx])


def test_epochs_differ_and_shuffle_off_keeps_packed_order(path):
    loader = VantixLoader(path, batch_size=32, seed=0)
    a = np.concatenate([y for _, y in _epoch(loader)])
    b = loader.epoch_indices(1)
    assert not np.array_equal(loader.epoch_indices(0), b)
    assert a.shape == (N_IMAGES,)
    plain = VantixLoader(path, batch_size=32, shuffle=False)
    np.testing.assert_array_equal(plain.epoch_indices(0), np.arange(N_IMAGES))
    np.testing.assert_array_equal(plain.epoch_indices(7), np.arange(N_IMAGES))


def test_same_seed_and_epoch_same_batches_for_any_threads_and_prefetch(path):
    runs = []
    for num_threads, prefetch in [(1, 1), (2, 3), (2, 8)]:
        loader = VantixLoader(
            path, batch_size=16, seed=42, num_threads=num_threads, prefetch=prefetch
        )
        loader.set_epoch(3)
        runs.append(_epoch(loader))
    for other in runs[1:]:
        assert len(other) == len(runs[0])
        for (xa, ya), (xb, yb) in zip(runs[0], other):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    seed43 = VantixLoader(path, batch_size=16, seed=43).epoch_indices(3)
    seed42 = VantixLoader(path, batch_size=16, seed=42).epoch_indices(3)
    assert not np.array_equal(seed43, seed42)


def test_set_epoch_overrides_and_epoch_advances(path):
    loader = VantixLoader(path, batch_size=50)
    first = np.concatenate([y for _, y in _epoch(loader)])
    second = np.concatenate([y for _, y in _epoch(loader)])
    loader.set_epoch(0)
    again = np.concatenate([y for _, y in _epoch(loader)])
    np.testing.assert_array_equal(first, again)
    assert loader.epoch == 1
    assert not np.array_equal(first, second)
    with pytest.raises(VantixError):
        loader.set_epoch(-1)


def test_drop_last_and_len(path):
    assert len(VantixLoader(path, batch_size=16, drop_last=True)) == 6
    assert len(VantixLoader(path, batch_size=16, drop_last=False)) == 7
    assert len(VantixLoader(path, batch_size=103)) == 1
    assert len(VantixLoader(path, batch_size=1000, drop_last=True)) == 0
    loader = VantixLoader(path, batch_size=16, drop_last=True)
    sizes = [len(y) for _, y in loader]
    assert sizes == [16] * 6


def test_held_batches_never_change_while_iterating(path):
    """A buffer is reused only once every array/tensor viewing it is gone."""
    ds = VantixDataset(path)
    loader = VantixLoader(path, batch_size=8, prefetch=1, num_threads=2)
    for epoch in range(3):
        indices = loader.epoch_indices(epoch)
        held = [(x, x.numpy(), y) for x, y in loader]  # keep tensors and numpy views alive
        assert len(held) == len(loader)
        # Iterate more epochs while holding: new batches must come from new buffers.
        for _ in VantixLoader(path, batch_size=8, prefetch=1):
            pass
        for k, (tensor, view, _labels) in enumerate(held):
            expect = _gather(ds, indices[k * 8 : (k + 1) * 8])
            np.testing.assert_array_equal(tensor.numpy(), expect)
            np.testing.assert_array_equal(view, expect)
        # Distinct batches own distinct memory.
        ptrs = {t.data_ptr() for t, _, _ in held}
        assert len(ptrs) == len(held)


def test_buffers_are_recycled_after_release(path):
    loader = VantixLoader(path, batch_size=8, prefetch=2)
    assert loader._native.free_buffers() == 0
    for x, _ in loader:
        del x
    gc.collect()
    assert loader._native.free_buffers() > 0
    # And a recycled buffer carries the new batch's data, not the old one.
    ds = VantixDataset(path)
    loader.set_epoch(9)
    idx = loader.epoch_indices(9)
    for k, (x, _) in enumerate(loader):
        np.testing.assert_array_equal(x.numpy(), _gather(ds, idx[k * 8 : (k + 1) * 8]))


def test_numpy_output_without_torch(path, monkeypatch):
    import vantix.data

    monkeypatch.setattr(vantix.data, "_TORCH", False)
    images, labels = next(iter(VantixLoader(path, batch_size=4)))
    assert isinstance(images, np.ndarray) and images.dtype == np.uint8
    assert images.shape == (4, 24, 32, 3)
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int64


def _threads():
    return len(os.listdir("/proc/self/task"))


def _fds():
    return len(os.listdir("/proc/self/fd"))


def test_abandoning_loaders_stops_threads_and_leaks_nothing(path):
    for _ in VantixLoader(path, batch_size=4):  # warm up: lazy imports, pools
        break
    gc.collect()
    time.sleep(0.2)
    threads0, fds0 = _threads(), _fds()
    for i in range(60):
        loader = VantixLoader(path, batch_size=4, prefetch=2, num_threads=2)
        it = iter(loader)
        for k, batch in enumerate(it):
            held = batch  # a live batch while the loader is abandoned
            if k == i % 5:
                break
        del it, loader, held
    gc.collect()
    deadline = time.time() + 30  # rayon workers exit asynchronously after their pool is dropped
    while _threads() > threads0 and time.time() < deadline:
        time.sleep(0.05)
    assert _threads() <= threads0
    assert _fds() <= fds0


def test_break_stops_prefetch_thread_promptly(path):
    gc.collect()
    assert prefetch_threads_after_join() == 0
    loader = VantixLoader(path, batch_size=2, prefetch=4)
    it = iter(loader)
    next(it)
    assert prefetch_threads() == 1  # filling the queue in the background
    it.close()  # returns only once the thread has been joined
    assert prefetch_threads_after_join() == 0
    with pytest.raises(StopIteration):
        next(it)
    for _ in loader:  # a break: dropping the iterator stops its thread the same way
        break
    assert prefetch_threads_after_join() == 0


def test_map_style_dataset(path, packed):
    ds = VantixDataset(path)
    assert len(ds) == N_IMAGES
    img, label = ds[0]
    assert img.shape == (24, 32, 3) and img.dtype == np.uint8
    assert label == 0 and ds[-1][1] == ds.targets[-1]
    assert ds.classes == CLASSES
    with pytest.raises(IndexError):
        ds[N_IMAGES]
    t = VantixDataset(path, transform=lambda a: a[:2], target_transform=lambda y: y + 100)
    assert t[1][0].shape == (2, 32, 3) and t[1][1] == ds.targets[1] + 100
    assert "VantixDataset(" in repr(ds)


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_dataset_in_dataloader_workers(packed, ctx):
    ds = VantixDataset(packed["raw"])
    dl = torch.utils.data.DataLoader(
        ds, batch_size=16, shuffle=False, num_workers=2, multiprocessing_context=ctx
    )
    images = torch.cat([x for x, _ in dl]).numpy()
    labels = torch.cat([y for _, y in dl]).numpy()
    np.testing.assert_array_equal(images, _gather(ds, range(N_IMAGES)))
    np.testing.assert_array_equal(labels, ds.targets)


def test_invalid_options_raise_vantix_error(path):
    for kwargs in [{"batch_size": 0}, {"prefetch": 0}, {"num_threads": 0}, {"seed": -1}]:
        with pytest.raises(VantixError):
            VantixLoader(path, **kwargs)
    with pytest.raises(VantixError, match="rank 2"):
        VantixLoader(path, rank=2, world_size=2)
    with pytest.raises(VantixError, match="does not exist"):
        VantixLoader(path.parent / "nope.vtx")


def test_verify_mode_and_its_deprecated_spelling(path):
    loader = VantixLoader(path, batch_size=4, verify="record")
    assert loader.verify_mode == "record" == VantixDataset(path, verify="record").verify_mode
    with pytest.warns(DeprecationWarning, match="verify_mode"):
        assert loader.verify == "record"
    # The resume position is computed in Rust: samples of every rank together.
    assert loader._native.samples_seen_after(8, 3, 2) == 8 + 3 * 4 * 2
    loader.close()
