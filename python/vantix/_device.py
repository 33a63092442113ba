"""Feeding a GPU: uint8 batches copied ahead on a side stream, converted on the device.

The loader assembles uint8 batches (crop and flip done in Rust) into pinned host memory;
:class:`DeviceFeeder` copies batch *k+1* (and up to ``depth`` batches ahead) host-to-device on a
dedicated CUDA stream while the model computes on batch *k*, converts them there with
:class:`DeviceConversion` (float conversion, ``Normalize``, layout and dtype), and hands each
batch to the consumer's stream only after an event says its copy and conversion are done. A
pinned host buffer goes back to the loader's pool (to be refilled by Rust) only once its copy
has completed. Moving uint8 sends a quarter of float32's bytes over PCIe, and the conversion
costs the GPU a few memory-bound kernels instead of costing the CPU most of its time.

Everything here is plain torch and runs on any device: on CPU tensors the conversion is the
same arithmetic the tests compare with the Rust float path, and the feeder copies
synchronously (there is no stream to overlap with).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterator, Optional, Sequence

#: Output dtypes of :class:`DeviceConversion`, by name.
DTYPES = ("uint8", "float32", "float16", "bfloat16")
#: Output layouts: ``NHWC`` (as packed), ``NCHW`` (contiguous planes), ``channels_last``
#: (NCHW-shaped, ``torch.channels_last`` memory: the packed bytes seen as NCHW, no copy).
LAYOUTS = ("NHWC", "NCHW", "channels_last")


class DeviceConversion:
    """``uint8 [B, H, W, C]`` -> the loader's output, computed where the batch is.

    Float output is ``(x / 255 - mean) / std`` in float32, operation by operation in the same
    order and the same IEEE float32 arithmetic as the Rust float path (which tabulates that
    expression per byte value), then rounded to float16 or bfloat16 when asked. On CPU tensors
    the result is bit-identical to the Rust path (tested). On CUDA every operation is an
    IEEE-rounded float32 operation too (a division by a device tensor, never PyTorch's
    multiply-by-reciprocal shortcut for a CPU scalar divisor), so the result is the same unless
    PyTorch was built with fast-math division; ``benchmarks/benchmark_gpu.py`` reports the
    largest difference it sees (the stated bound: 1 ulp of float32 before the final rounding).

    The options are the loader's, already checked in Rust (``Transform::validate``, with the
    dataset's channel count) before this is built; nothing here checks them again.

    Args:
        dtype: ``"uint8"``, ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        layout: ``"NHWC"``, ``"NCHW"`` or ``"channels_last"``.
        mean: ``Normalize``'s mean per channel on the 0-1 scale (float output only), or None.
        std: ``Normalize``'s std per channel, or None (both or neither).
    """

    def __init__(
        self,
        dtype: str = "float32",
        layout: str = "NCHW",
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
    ) -> None:
        self.dtype = dtype
        self.layout = layout
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        self._constants: dict[Any, tuple[Any, Any, Any]] = {}

    def _constants_on(self, device: Any, channels: int) -> tuple[Any, Any, Any]:
        """255, mean and std as float32 tensors on ``device``, shaped to broadcast over the
        output layout (made once per device)."""
        key = (str(device), channels)
        if key not in self._constants:
            import torch

            shape = (channels,) if self.layout == "NHWC" else (channels, 1, 1)
            c255 = torch.tensor(255.0, dtype=torch.float32, device=device)
            mean = std = None
            if self.mean is not None and self.std is not None:
                mean = torch.tensor(self.mean, dtype=torch.float32).expand(channels)
                std = torch.tensor(self.std, dtype=torch.float32).expand(channels)
                mean, std = mean.reshape(shape).to(device), std.reshape(shape).to(device)
            self._constants[key] = (c255, mean, std)
        return self._constants[key]

    def __call__(self, images: Any) -> Any:
        """Convert ``images`` (a uint8 ``[B, H, W, C]`` tensor) on its own device."""
        import torch

        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 [B, H, W, C], got {images.dtype} {images.shape}")
        nchw = images.permute(0, 3, 1, 2)  # a view: NCHW shape, channels-last memory
        if self.dtype == "uint8":
            if self.layout == "NHWC":
                return images
            return nchw if self.layout == "channels_last" else nchw.contiguous()
        c255, mean, std = self._constants_on(images.device, images.shape[3])
        src = images if self.layout == "NHWC" else nchw
        fmt = torch.contiguous_format if self.layout != "channels_last" else torch.channels_last
        out = torch.empty(src.shape, dtype=torch.float32, device=images.device, memory_format=fmt)
        out.copy_(src)  # uint8 -> float32 and the layout change, one kernel
        out.div_(c255)
        if mean is not None:
            out.sub_(mean).div_(std)
        if self.dtype == "float32":
            return out
        target = torch.float16 if self.dtype == "float16" else torch.bfloat16
        return out.to(target, memory_format=fmt)

    def __repr__(self) -> str:
        return (
            f"DeviceConversion(dtype={self.dtype!r}, layout={self.layout!r}, "
            f"mean={self.mean}, std={self.std})"
        )


class DeviceFeeder:
    """Device batches from an iterator of pinned host ``(images, labels)`` batches.

    ``depth`` batches are copied (and converted) ahead on a side stream: when the consumer
    takes batch *k*, batches *k+1 .. k+depth* are already queued on the copy stream, so their
    transfer overlaps the consumer's kernels on batch *k*. Ordering rules:

    1. A batch is handed out only after the consumer's current stream waits on the event
       recorded after its copy and conversion (``wait_event``): the consumer never reads a
       batch before it is complete, and the host never blocks.
    2. Device tensors made on the copy stream are marked used by the consumer's stream
       (``record_stream``), so the caching allocator does not give their memory to the next
       copy while the consumer's kernels may still read it.
    3. A host batch is released (its pinned buffer returned to the loader's pool, refilled by
       Rust) only when the event of its copy has completed: :meth:`release_completed` on every
       step, and :meth:`drain` (which waits) at the end of a pass or on close.

    On a CPU ``device`` there are no streams: the copy is synchronous and rules 1-3 hold
    trivially (the event is "complete" when the copy returns).
    """

    def __init__(
        self,
        batches: Iterator[tuple[Any, Any]],
        device: Any,
        convert: Optional[DeviceConversion] = None,
        depth: int = 2,
    ) -> None:
        import torch  # depth (the loader's device_prefetch) is at least 1, checked there

        self._batches = batches
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            # "cuda" is the current device when the pass starts (the rank's, under DDP): fixed
            # now, so that the stream, the copies and the consumer's stream agree.
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.convert = convert
        self.depth = depth
        self._cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if self._cuda else None
        # Copies issued, not yet handed out: (event, images, labels) on the device.
        self._ready: deque[tuple[Any, Any, Any]] = deque()
        # Host batches whose copy may still run: (event, host images, host labels).
        self._host_inflight: deque[tuple[Any, Any, Any]] = deque()
        self._exhausted = False

    def __iter__(self) -> DeviceFeeder:
        return self

    @property
    def in_flight(self) -> int:
        """Host batches whose pinned buffers are still held by a copy."""
        return len(self._host_inflight)

    def _issue(self) -> bool:
        """Take the next host batch and queue its copy and conversion; False at the end."""
        if self._exhausted:
            return False
        try:
            images, labels = next(self._batches)
        except StopIteration:
            self._exhausted = True
            return False
        import torch

        if not self._cuda:
            dev_images = images.to(self.device)
            dev_labels = labels.to(self.device)
            if self.convert is not None:
                dev_images = self.convert(dev_images)
            self._ready.append((None, dev_images, dev_labels))
            self._host_inflight.append((None, images, labels))
            return True
        with torch.cuda.stream(self._stream):
            dev_images = images.to(self.device, non_blocking=True)
            dev_labels = labels.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._stream)
            if self.convert is not None:
                dev_images = self.convert(dev_images)
            done = torch.cuda.Event()
            done.record(self._stream)
        self._ready.append((done, dev_images, dev_labels))
        self._host_inflight.append((copied, images, labels))
        return True

    def release_completed(self) -> None:
        """Release the host batches whose copies have finished (rule 3), oldest first."""
        while self._host_inflight:
            event = self._host_inflight[0][0]
            if event is not None and not event.query():
                break
            self._host_inflight.popleft()

    def drain(self) -> None:
        """Wait for every copy issued, then release every host batch."""
        while self._host_inflight:
            event = self._host_inflight.popleft()[0]
            if event is not None:
                event.synchronize()

    def __next__(self) -> tuple[Any, Any]:
        while len(self._ready) <= self.depth and self._issue():
            pass
        self.release_completed()
        if not self._ready:
            self.drain()
            raise StopIteration
        done, images, labels = self._ready.popleft()
        if done is not None:
            import torch

            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_event(done)  # rule 1
            images.record_stream(consumer)  # rule 2
            labels.record_stream(consumer)
        return images, labels

    def close(self) -> None:
        """Drop the batches not handed out and release every host buffer once its copy is done."""
        self._ready.clear()
        self.drain()
        self._exhausted = True
