"""The GPU path's arithmetic and ordering, checked on CPU tensors (no CUDA needed).

``DeviceConversion`` is the float conversion the loader runs on the GPU; here it runs on CPU
tensors and must equal the Rust float path bit for bit (same IEEE float32 operations in the
same order). ``DeviceFeeder``'s queue (depth batches ahead, host batches released only after
their copy) is checked on a CPU device, where copies are synchronous.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_image_folder

import vantix
from vantix import VantixLoader
from vantix._device import DeviceConversion, DeviceFeeder

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    src = write_image_folder(tmp_path_factory.mktemp("src") / "train", 40, size=(23, 19))
    out = tmp_path_factory.mktemp("packed") / "train.vtx"
    vantix.pack(src, out, size=(19, 23))
    return out


def _first_batch(path, **options):
    loader = VantixLoader(path, batch_size=16, shuffle=False, **options)
    images, labels = next(iter(loader))
    return images.clone(), labels.clone()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("normalise", [True, False])
def test_conversion_equals_the_rust_float_path_bit_for_bit(packed, dtype, layout, normalise):
    norm = {"mean": MEAN, "std": STD} if normalise else {}
    rust, _ = _first_batch(packed, dtype=dtype, layout=layout, **norm)
    raw, _ = _first_batch(packed)
    ours = DeviceConversion(dtype, layout, **norm)(raw)
    assert ours.dtype == rust.dtype and ours.shape == rust.shape
    assert ours.is_contiguous()
    assert torch.equal(ours, rust), (ours.float() - rust.float()).abs().max()


def test_channels_last_is_the_rust_layout_and_memory_format(packed):
    rust, _ = _first_batch(
        packed, dtype="float32", layout="NCHW", channels_last=True, mean=MEAN, std=STD
    )
    raw, _ = _first_batch(packed)
    ours = DeviceConversion("float32", "channels_last", MEAN, STD)(raw)
    assert ours.shape == rust.shape
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ours, rust)


def test_bfloat16_rounds_the_float32_result(packed):
    rust32, _ = _first_batch(packed, dtype="float32", layout="NCHW", mean=MEAN, std=STD)
    raw, _ = _first_batch(packed)
    ours = DeviceConversion("bfloat16", "NCHW", MEAN, STD)(raw)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, rust32.to(torch.bfloat16))


def test_uint8_layouts_are_views_or_copies_of_the_pixels(packed):
    raw, _ = _first_batch(packed)
    assert DeviceConversion("uint8", "NHWC")(raw) is raw
    nchw = DeviceConversion("uint8", "NCHW")(raw)
    assert nchw.is_contiguous() and torch.equal(nchw, raw.permute(0, 3, 1, 2))
    cl = DeviceConversion("uint8", "channels_last")(raw)
    assert cl.data_ptr() == raw.data_ptr()


def test_feeder_copies_depth_batches_ahead_and_releases_every_host_batch(packed):
    loader = VantixLoader(packed, batch_size=4, shuffle=True, seed=3)
    loader.set_epoch(1)
    expected = [(i.clone(), lab.clone()) for i, lab in loader]
    pulled = []

    def host_batches():
        loader.set_epoch(1)
        for images, labels in loader:
            pulled.append(len(pulled))
            yield images, labels

    convert = DeviceConversion("float32", "NCHW", MEAN, STD)
    feeder = DeviceFeeder(host_batches(), "cpu", convert, depth=2)
    got = []
    for k, (images, labels) in enumerate(feeder):
        # Batch k is handed out with batches k+1 and k+2 already issued (while they exist).
        assert len(pulled) == min(k + 3, len(expected))
        assert feeder.in_flight == 0  # CPU copies are complete when issued: released at once
        got.append((images, labels))
    assert len(got) == len(expected)
    for (images, labels), (raw, raw_labels) in zip(got, expected):
        assert torch.equal(images, convert(raw))
        assert torch.equal(labels, raw_labels)
    with pytest.raises(StopIteration):
        next(feeder)


def test_feeder_close_drops_what_was_not_handed_out(packed):
    loader = VantixLoader(packed, batch_size=4, shuffle=False)
    feeder = DeviceFeeder(iter(loader), torch.device("cpu"), None, depth=1)
    first, _ = next(feeder)
    assert np.array_equal(first[0].numpy(), vantix.VantixDataset(packed)[0][0])
    feeder.close()
    assert feeder.in_flight == 0
    with pytest.raises(StopIteration):
        next(feeder)


# The loader's device path (VantixLoader(device=...)): the same code as on a GPU, with the
# device resolved to the CPU. `_device_arg` is what refuses a CPU device (it returns None for
# "cpu"); routing it to torch.device("cpu") while the loader is built runs the real feeder and
# conversion on CPU tensors, and a counting allocator stands where torch's pinned allocator
# would be (pinning needs CUDA).
class _CountingAllocator:
    def __init__(self):
        self.calls = 0

    def __call__(self, nbytes):
        self.calls += 1
        return torch.empty(nbytes, dtype=torch.uint8)


def _device_loader(path, allocator=None, **options):
    import vantix.data

    allocator = allocator or _CountingAllocator()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(vantix.data, "_device_arg", lambda device, pin: (torch.device("cpu"), True))
        m.setattr(vantix.data, "_pinned_allocator", lambda: allocator)
        return VantixLoader(path, device="cuda", **options)


OUTPUTS = [
    {"dtype": "float32", "layout": "NCHW", "mean": MEAN, "std": STD},
    {"dtype": "float16", "layout": "NCHW", "channels_last": True, "mean": MEAN, "std": STD},
    {"dtype": "bfloat16", "layout": "NHWC", "mean": MEAN, "std": STD},
    {"dtype": torch.float32, "layout": "NHWC"},
    {"dtype": "uint8", "layout": "NCHW"},
    {"dtype": "uint8", "layout": "NHWC"},
]


@pytest.mark.parametrize("output", OUTPUTS, ids=lambda o: f"{o['dtype']}-{o['layout']}")
@pytest.mark.parametrize("convert_on_device", [True, False])
def test_device_batches_equal_the_cpu_path(packed, output, convert_on_device):
    """Every batch through the device path (copied ahead, converted on the device or in Rust)
    equals the CPU path's bit for bit, with augmentation; the resume key is the same."""
    options = dict(batch_size=8, seed=5, random_resized_crop=15, horizontal_flip=0.5, **output)
    loader = _device_loader(packed, convert_on_device=convert_on_device, **options)
    on_device = convert_on_device and (output["dtype"] != "uint8" or output["layout"] != "NHWC")
    assert (loader._conversion is not None) == on_device
    reference = VantixLoader(packed, **options)
    got, want = list(loader), list(reference)
    assert len(got) == len(want) == len(loader)
    for (images, labels), (ref_images, ref_labels) in zip(got, want):
        assert images.dtype == ref_images.dtype and images.shape == ref_images.shape
        assert images.stride() == ref_images.stride()  # layout and memory format
        assert torch.equal(images, ref_images)
        assert torch.equal(labels, ref_labels)
    assert loader.state_dict()["sampling"] == reference.state_dict()["sampling"]


def test_device_prefetch_counts_what_was_handed_out_and_resumes(packed):
    """The feeder pulls device_prefetch batches ahead of the consumer; state_dict counts only
    what the consumer took, so a resume (on either side) yields exactly the rest."""
    options = dict(batch_size=4, seed=2, dtype="float32", mean=MEAN, std=STD)
    loader = _device_loader(packed, device_prefetch=3, **options)
    it = iter(loader)
    taken = [next(it) for _ in range(2)]
    assert it._feeder is not None and len(it._feeder._ready) == 3  # batches 3-5, ahead
    state = loader.state_dict()
    assert state["samples_seen"] == 8
    it.close()
    everything = list(VantixLoader(packed, **options))
    for (a, _), (b, _) in zip(taken, everything):
        assert torch.equal(a, b)
    for resumed in (VantixLoader(packed, **options), _device_loader(packed, **options)):
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert len(rest) == len(everything) - 2
        for (a, la), (b, lb) in zip(rest, everything[2:]):
            assert torch.equal(a, b) and torch.equal(la, lb)


def test_host_buffers_are_recycled_through_the_allocator(packed):
    """Host batches go back to the loader's pool once their copy is done: over six epochs
    of 10 batches the allocator is called only for the buffers alive at once (the prefetch
    queue, the batch being assembled, the consumer's and the feeder's), never once per batch,
    and the pool keeps them all (a pool sized for the CPU path alone allocated one more every
    epoch)."""
    allocator = _CountingAllocator()
    loader = _device_loader(
        packed, allocator, batch_size=4, prefetch=2, device_prefetch=2, dtype="float32"
    )
    batches, calls = 0, []
    for _ in range(6):
        it = iter(loader)
        for _images, _labels in it:
            batches += 1
        assert it._feeder.in_flight == 0  # every host batch released at the end of the pass
        calls.append(allocator.calls)
    assert batches == 60
    # prefetch + 2 + (device_prefetch + 1); a pool that kept fewer would allocate every epoch.
    assert calls[-1] <= 2 + 2 + (2 + 1), calls


def test_device_prefetch_must_be_positive(packed):
    with pytest.raises(vantix.VantixError, match="device_prefetch must be at least 1"):
        VantixLoader(packed, device_prefetch=0)


def test_bfloat16_on_the_cpu_path(packed, tmp_path):
    """dtype="bfloat16" (or torch.bfloat16) in Rust: the float32 value rounded to nearest
    even, as torch rounds it; the preview undoes it."""
    options = dict(mean=MEAN, std=STD, layout="NCHW")
    f32, _ = _first_batch(packed, dtype="float32", **options)
    for dtype in ("bfloat16", torch.bfloat16):
        bf16, _ = _first_batch(packed, dtype=dtype, **options)
        assert bf16.dtype == torch.bfloat16 and bf16.shape == f32.shape
        assert torch.equal(bf16, f32.to(torch.bfloat16))
    loader = VantixLoader(packed, batch_size=16, dtype="bfloat16", **options)
    loader.preview(tmp_path / "bf16.png")
    assert (tmp_path / "bf16.png").stat().st_size > 0


def test_preview_of_a_device_loader_shows_the_same_pixels(packed, tmp_path):
    """A loader converting on the device assembles uint8 in Rust: its preview is the uint8
    batch (nothing to undo), the same sheet as the CPU path's with Normalize undone."""
    options = dict(batch_size=8, mean=MEAN, std=STD, dtype="float32", layout="NCHW")
    device_loader = _device_loader(packed, **options)
    assert device_loader._conversion is not None
    a = device_loader.preview(tmp_path / "device.png")
    b = VantixLoader(packed, **options).preview(tmp_path / "cpu.png")
    assert np.array_equal(a, b)
    from PIL import Image

    device_sheet = np.asarray(Image.open(tmp_path / "device.png"))
    cpu_sheet = np.asarray(Image.open(tmp_path / "cpu.png"))
    assert device_sheet.shape == cpu_sheet.shape
    # Undoing Normalize in float32 and rounding can be off by one level.
    assert np.abs(device_sheet.astype(int) - cpu_sheet.astype(int)).max() <= 1
