"""Subsets, splits, block order, resume with augmentation, pinned memory and devices."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from conftest import write_image_folder

import vantix
from vantix import VantixDataset, VantixError, VantixLoader

N = 90


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = write_image_folder(tmp_path_factory.mktemp("src") / "train", N, seed=8)
    out = tmp_path_factory.mktemp("out") / "ds.vtx"
    vantix.pack(root, out, size=16, shard_size=30 * 16 * 16 * 3)  # 3 shards
    return out


def _gather(ds, idx):
    return np.stack([ds[int(i)][0] for i in idx])


def test_indices_draws_only_from_the_subset(packed):
    subset = np.arange(0, N, 4)
    loader = VantixLoader(packed, batch_size=5, indices=subset, seed=2)
    assert len(loader) == -(-len(subset) // 5)
    for epoch in range(2):
        idx = loader.epoch_indices(epoch)
        assert sorted(idx.tolist()) == subset.tolist()
        got = np.concatenate([x.numpy() for x, _ in loader])
        np.testing.assert_array_equal(got, _gather(loader.dataset, idx))
    with pytest.raises(VantixError, match="out of range"):
        VantixLoader(packed, indices=[0, N])


def test_train_val_split_is_stratified_disjoint_and_reproducible(packed):
    train, val = vantix.train_val_split(packed, val_fraction=0.2, seed=1)
    assert len(val) == 18 and len(train) == 72
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(N))
    targets = np.array(VantixDataset(packed).targets)
    assert np.bincount(targets[val]).tolist() == [6, 6, 6]
    again = vantix.train_val_split(packed, val_fraction=0.2, seed=1)
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, vantix.train_val_split(packed, 0.2, seed=2)[1])
    with pytest.raises(VantixError, match="val_fraction"):
        vantix.train_val_split(packed, val_fraction=1.5)


def test_block_order_sees_every_sample_and_reads_locally(packed):
    loader = VantixLoader(packed, batch_size=10, order="block", block_size=10, block_window=2)
    for epoch in range(2):
        idx = loader.epoch_indices(epoch)
        assert sorted(idx.tolist()) == list(range(N))
        for group in idx[:80].reshape(-1, 20):  # N = 90: four whole groups of 20
            assert len(set((group // 10).tolist())) <= 2
        got = np.concatenate([x.numpy() for x, _ in loader])
        np.testing.assert_array_equal(got, _gather(loader.dataset, idx))
    assert not np.array_equal(loader.epoch_indices(0), loader.epoch_indices(1))
    with pytest.raises(VantixError, match="order"):
        VantixLoader(packed, order="shuffled")


def test_resume_with_augmentation_is_byte_identical(packed):
    kw = dict(batch_size=8, seed=3, random_crop=12, padding=2, horizontal_flip=0.5)
    ref = VantixLoader(packed, **kw)
    epochs = [[x.numpy().copy() for x, _ in ref] for _ in range(2)]
    run = VantixLoader(packed, **kw)
    it = iter(run)
    for _ in range(5):
        next(it)
    state = run.state_dict()
    resumed = VantixLoader(packed, **kw)
    resumed.load_state_dict(state)
    rest = [x.numpy() for x, _ in resumed]
    assert len(rest) == len(epochs[0]) - 5
    for a, b in zip(rest, epochs[0][5:]):
        np.testing.assert_array_equal(a, b)
    for a, (b, _) in zip(epochs[1], resumed):
        np.testing.assert_array_equal(a, b.numpy())
    other = VantixLoader(packed, **{**kw, "horizontal_flip": 0.0})
    with pytest.raises(VantixError, match="augmentation"):
        other.load_state_dict(state)


def test_batches_fill_memory_from_a_torch_allocator(packed):
    """The mechanism behind pin_memory: Rust fills tensors that torch allocated."""
    tensors = []

    def allocate(nbytes):
        t = torch.empty(nbytes, dtype=torch.uint8)
        tensors.append(t)
        return t

    ds = VantixDataset(packed)
    native = vantix._native.Loader(
        ds._native, 8, True, 0, False, 2, None, 0, 1, "pad", allocator=allocate
    )
    idx = native.epoch_indices(0)
    for k, (images, _labels, _i) in enumerate(native.iter_epoch(0, 0)):
        start = images.__array_interface__["data"][0]
        owners = [t for t in tensors if t.data_ptr() <= start < t.data_ptr() + t.nbytes]
        assert len(owners) == 1, "each batch lives inside one torch-allocated tensor"
        np.testing.assert_array_equal(images, _gather(ds, idx[k * 8 : (k + 1) * 8]))
        del images
    gc.collect()
    for _ in native.iter_epoch(1, 0):
        pass
    # 24 batches over two epochs, but buffers are recycled: about the queue (prefetch=2), the
    # batch being assembled and the one being read were ever allocated, not one per batch.
    assert len(tensors) <= 6

    def failing(nbytes):
        raise MemoryError("no pinned memory left")

    broken = vantix._native.Loader(
        ds._native, 8, True, 0, False, 2, None, 0, 1, "pad", allocator=failing
    )
    with pytest.raises(VantixError, match="no pinned memory left"):
        next(broken.iter_epoch(0, 0))


def test_pin_memory_and_device_on_this_machine(packed):
    if torch.cuda.is_available():
        loader = VantixLoader(packed, batch_size=8, pin_memory=True)
        x, _ = next(iter(loader))
        assert x.is_pinned()
        ds = loader.dataset
        gpu = VantixLoader(packed, batch_size=8, device="cuda", seed=5)
        idx = gpu.epoch_indices(0)
        for k, (x, y) in enumerate(gpu):
            assert x.is_cuda and y.is_cuda
            np.testing.assert_array_equal(x.cpu().numpy(), _gather(ds, idx[k * 8 : (k + 1) * 8]))
    else:
        with pytest.warns(UserWarning, match="pin_memory"):
            loader = VantixLoader(packed, batch_size=8, pin_memory=True)
        x, _ = next(iter(loader))
        assert x.shape == (8, 16, 16, 3)
        with pytest.raises(VantixError, match="CUDA is not available"):
            VantixLoader(packed, device="cuda")
    with pytest.raises(VantixError, match="device"):
        VantixLoader(packed, device="mps")
