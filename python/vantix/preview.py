"""Contact sheets: look at packed records, or at a batch as the loader yields it.

The sheet is drawn and written as PNG by the Rust packer (no Pillow needed). Layout: tiles of
``W*scale x H*scale`` pixels (nearest-neighbour upscaling), 4 pixels apart and from the border,
each with a 16-pixel caption strip below it, ``columns`` tiles per row; tile ``k``'s top-left
corner is at ``x = 4 + (k % columns) * (W*scale + 4)``, ``y = 4 + (k // columns) * (H*scale + 20)``.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _native

_ArgumentValueError = _native.VantixValueError

PathLike = Union[str, "os.PathLike[str]"]


def _to_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy array or a (possibly CUDA) torch tensor."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _channels(name: str, value: Any, n: int) -> np.ndarray:
    v = np.atleast_1d(np.asarray(value, dtype=np.float32))
    if v.shape not in ((1,), (n,)):
        raise _ArgumentValueError(f"{name} must have 1 or {n} values, got {value!r}")
    return np.broadcast_to(v, (n,))


def batch_to_uint8(
    images: Any,
    mean: Union[float, Sequence[float], None] = None,
    std: Union[float, Sequence[float], None] = None,
    layout: Optional[str] = None,
) -> np.ndarray:
    """A batch as ``uint8`` ``[B, H, W, C]`` numpy pixels, undoing the loader's output conversion.

    Args:
        images: a batch as :class:`VantixLoader` (or a ``DataLoader``) yields it: a numpy array
            or torch tensor (any device) of shape ``[B, H, W, C]`` or ``[B, C, H, W]``, with
            ``C`` = 1 (grey), 3 (RGB) or 4 (RGBA: drawn over a checkerboard on the sheet).
            ``uint8`` is taken as pixel values; floating point as
            ``ToTensor()`` output (0-1), or as ``Normalize(mean, std)`` output when ``mean``
            and ``std`` are given.
        mean: ``Normalize``'s mean per channel (0-1 scale) to undo: ``x * std + mean``.
        std: ``Normalize``'s std per channel (0-1 scale).
        layout: ``"NHWC"`` or ``"NCHW"``; by default ``NCHW`` when dimension 1 has 1, 3 or 4
            entries and the last one does not, else ``NHWC``.

    Returns:
        A C-contiguous ``uint8`` array ``[B, H, W, C]``; float values are scaled by 255,
        rounded and clipped to 0-255.

    Raises:
        VantixError: the batch is not 4-D, ``C`` is not 1, 3 or 4, or only one of ``mean``/``std``
            is given.
    """
    arr = _to_numpy(images)
    if arr.ndim != 4:
        raise _ArgumentValueError(f"expected a batch [B, H, W, C] or [B, C, H, W], got {arr.shape}")
    if layout is None:
        layout = "NCHW" if arr.shape[1] in (1, 3, 4) and arr.shape[3] not in (1, 3, 4) else "NHWC"
    layout = layout.upper()
    if layout == "NCHW":
        arr = arr.transpose(0, 2, 3, 1)
    elif layout != "NHWC":
        raise _ArgumentValueError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
    c = arr.shape[3]
    if c not in (1, 3, 4):
        raise _ArgumentValueError(f"images must have 1, 3 or 4 channels, got shape {arr.shape}")
    if (mean is None) != (std is None):
        raise _ArgumentValueError("give both mean and std (to undo Normalize), or neither")
    if arr.dtype == np.uint8:
        if mean is not None:
            raise _ArgumentValueError("mean/std are for float batches; this batch is uint8")
        return np.ascontiguousarray(arr)
    x = arr.astype(np.float32)
    if mean is not None:
        x = x * _channels("std", std, c) + _channels("mean", mean, c)
    return np.ascontiguousarray(np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8))


def save_batch_grid(
    images: Any,
    labels: Any,
    path: PathLike,
    classes: Optional[Sequence[str]] = None,
    mean: Union[float, Sequence[float], None] = None,
    std: Union[float, Sequence[float], None] = None,
    layout: Optional[str] = None,
    columns: Optional[int] = None,
    scale: Optional[int] = None,
) -> tuple[int, int]:
    """Write a batch as a contact-sheet PNG, each image captioned with its class name.

    Use it to check an augmentation recipe by eye: pass a batch exactly as the loader yields it
    (see :meth:`VantixLoader.preview`, which does this for you).

    Args:
        images: the batch, ``[B, H, W, C]`` or ``[B, C, H, W]``, ``uint8`` or float, numpy or
            torch (see :func:`batch_to_uint8`).
        labels: ``B`` class indices (a sequence, numpy array or tensor).
        path: the PNG file to write.
        classes: class names in label order (e.g. ``loader.classes``); the caption is then
            ``"<label> <name>"``, else the label alone.
        mean: ``Normalize``'s mean to undo (float batches).
        std: ``Normalize``'s std to undo (float batches).
        layout: ``"NHWC"`` or ``"NCHW"`` (default: guessed from the shape).
        columns: tiles per row (default: a near-square grid).
        scale: integer upscaling of every tile (default: tiles at least 96 pixels wide).

    Returns:
        ``(width, height)`` of the PNG in pixels.

    Raises:
        VantixError: bad shapes or options, or the file cannot be written (naming it).
    """
    pixels = batch_to_uint8(images, mean, std, layout)
    label_list = [int(v) for v in _to_numpy(labels).reshape(-1)]
    if len(label_list) != len(pixels):
        raise _ArgumentValueError(f"{len(pixels)} images but {len(label_list)} labels")
    if classes is not None:
        captions = [f"{v} {classes[v]}" if 0 <= v < len(classes) else f"{v} ?" for v in label_list]
    else:
        captions = [str(v) for v in label_list]
    return _native.write_contact_sheet(pixels, captions, os.fspath(path), columns, scale)
