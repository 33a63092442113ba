"""``vantix.pack``: the packer as a function (the same engine as the ``vantix-pack`` CLI)."""

from __future__ import annotations

import json
import operator
import os
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

from . import _native
from .data import _ArgumentTypeError, _ArgumentValueError

PathLike = Union[str, "os.PathLike[str]"]

#: The packer's defaults, from the native module (``PackOptions::default()`` in Rust): the
#: signatures below show them and state none of their own. Every option is checked in Rust
#: (``PackOptions::validate``, the same checks as ``vantix-pack``'s); Python only converts types.
_DEFAULTS: dict[str, Any] = _native.pack_defaults()

#: Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS * 2``), the default ``max_pixels``.
DEFAULT_MAX_PIXELS: int = _native.DEFAULT_MAX_PIXELS

#: The largest value of a ``u32`` option (``channels``).
_U32_MAX = 2**32 - 1


@dataclass(frozen=True)
class PackReport:
    """What :func:`pack` did.

    Attributes:
        path: the dataset directory written.
        num_samples: images packed.
        classes: class names in label order (as ``ImageFolder.classes``).
        skipped: ``(relative path, reason)`` of every source file that could not be packed.
        num_shards: shard files written.
        truncated: indices of the records packed from truncated files
            (``allow_truncated=True``); also listed in the manifest.
        bytes_written: total size of the dataset on disk, in bytes.
        seconds: wall time of the pack.
    """

    path: str
    num_samples: int
    classes: list[str]
    #: ``(relative path, reason)`` of every source file that could not be packed.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    num_shards: int = 0
    #: indices of the records packed from truncated files (``allow_truncated=True``).
    truncated: list[int] = field(default_factory=list)
    bytes_written: int = 0
    seconds: float = 0.0


def _size_to_wh(size: int | Sequence[int]) -> tuple[int, int]:
    """``(width, height)`` from ``size``: an int (square) or ``(height, width)``, torchvision's
    order (the CLI's ``--size WxH`` is width first)."""
    if isinstance(size, int):
        return size, size
    values = list(size)
    if len(values) == 1:
        return values[0], values[0]
    if len(values) != 2:
        raise _ArgumentValueError(f"size must be an int or (height, width), got {size!r}")
    height, width = values
    return width, height


def _u32(name: str, value: Any) -> int:
    """``value`` as an unsigned 32-bit int (its range is Rust's to check)."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise _ArgumentTypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    v = operator.index(value)
    if not 0 <= v <= _U32_MAX:
        raise _ArgumentValueError(f"{name} must be an int in [0, {_U32_MAX}], got {v}")
    return v


def pack(
    src: PathLike,
    dst: PathLike,
    size: int | Sequence[int] = _DEFAULTS["size"],
    *,
    mode: str = _DEFAULTS["mode"],
    interpolation: str = _DEFAULTS["interpolation"],
    pad_color: Sequence[int] = _DEFAULTS["pad_color"],
    codec: str = _DEFAULTS["codec"],
    level: int = _DEFAULTS["level"],
    shard_size: int | str = _DEFAULTS["shard_size"],
    num_threads: int | None = _DEFAULTS["num_threads"],
    strict: bool = _DEFAULTS["strict"],
    overwrite: bool = _DEFAULTS["overwrite"],
    progress: bool = _DEFAULTS["progress"],
    max_pixels: int = _DEFAULTS["max_pixels"],
    exact_decode: bool = _DEFAULTS["exact_decode"],
    filter: str = _DEFAULTS["filter"],
    part: tuple[int, int] | None = _DEFAULTS["part"],
    channels: int = _DEFAULTS["channels"],
    exif_orientation: bool = _DEFAULTS["exif_orientation"],
    dictionary: str = _DEFAULTS["dictionary"],
    allow_truncated: bool = _DEFAULTS["allow_truncated"],
    allow_empty: bool = _DEFAULTS["allow_empty"],
    max_file_size: int | str = _DEFAULTS["max_file_size"],
) -> PackReport:
    """Pack the ImageFolder ``src`` into a new Vantix dataset directory ``dst``.

    Files, classes and labels are exactly those of ``torchvision.datasets.ImageFolder(src)``.
    Every image is decoded (by content, not extension), converted to RGB as Pillow's
    ``convert("RGB")`` does (16-bit images are scaled, not clipped), or to grey or RGBA with
    ``channels``, and resized once.

    The defaults are the packer's own (``vantix-pack``'s, from the native module); every
    option is checked there, and a bad one raises a ``VantixError`` that names it (for a
    choice such as ``mode``, with every valid value).

    Args:
        src: ImageFolder root: ``src/<class>/**/<image>``.
        dst: output directory, e.g. ``"train.vtx"``. Written atomically.
        size: output size, an int (square) or ``(height, width)``: torchvision's order, the
            reverse of the CLI's ``--size WxH`` (``--size 256x192`` is ``size=(192, 256)``).
        mode: ``"center-crop"`` (``Resize(size)`` + ``CenterCrop(size)``, the default),
            ``"squash"`` (straight to the size) or ``"pad"`` (fit inside, pad with ``pad_color``).
        interpolation: ``"bilinear"`` (torchvision's default), ``"bicubic"``, ``"lanczos"``,
            ``"nearest"``, ``"box"`` or ``"hamming"``; antialiased like Pillow.
        pad_color: RGB fill for ``mode="pad"`` (with ``channels=1`` its luma, with
            ``channels=4`` that colour, opaque).
        codec: ``"raw"`` (fastest reads) or ``"zstd"`` (smaller, compressed with ``level``).
        level: zstd level, 1-22.
        filter: with ``codec="zstd"``, the prediction filter applied to each record before
            compression and undone when reading: ``"up"`` (default), ``"paeth"``, ``"avg"``,
            ``"left"`` or ``"none"`` (PNG's filter types).
        dictionary: with ``codec="zstd"``, compress the records with a zstd dictionary trained
            on the first records and stored in every shard: ``"auto"`` (default) for records of
            at most 16 KiB (small images, e.g. 32x32 or 64x64), ``"on"`` always, ``"off"``
            never. A dataset with a dictionary is format version 3.
        shard_size: target bytes per shard file, an int or a string like ``"512M"`` (the
            default, 512 MiB).
        num_threads: worker threads (default: all cores; ``--num-threads``/``-j`` on the
            CLI). The output is byte-identical for any number.
        strict: raise on the first unreadable file instead of skipping and reporting it.
        overwrite: replace ``dst`` if it is a Vantix dataset. Anything else there (a folder
            without a valid manifest, a file, a symlink), the source tree, a folder that
            contains it or one inside it is never replaced: that is an error.
        progress: draw a progress bar on stderr (when it is a terminal).
        allow_truncated: pack truncated images (data ending before the image does: a JPEG
            without its EOI marker, a PNG cut inside a chunk) as the decoder fills them in, like
            Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES = True``; their records are listed in the
            manifest (``truncated``) and the report. By default they are skipped with the reason
            ``"truncated"``, as Pillow (and so torchvision) refuses them.
        allow_empty: keep class folders without any image, with their index and no samples, as
            ``torchvision.datasets.ImageFolder(src, allow_empty=True)``. By default an empty
            class is an error that names it.
        max_file_size: largest source file read, an int or a string like ``"1G"`` (the
            default, 1 GiB); a larger
            file is skipped without being read. Only regular files are read: a FIFO, socket or
            device (or a symlink to one) is skipped with the reason.
        max_pixels: largest accepted source image in pixels (decompression-bomb guard; the
            default is :data:`DEFAULT_MAX_PIXELS`, Pillow's limit).
        exact_decode: decode every JPEG at full size. By default a large JPEG is decoded at
            1/2, 1/4 or 1/8 scale in the DCT domain when that keeps at least twice the resize
            target per axis: much faster, pixels within the parity tolerance of a full decode.
        part: ``(index, count)`` to pack only part ``index`` (0-based) of ``count``, one part
            per machine (``--part I/N``): every part scans the whole tree (classes and labels
            are the whole tree's) and packs one contiguous slice of the sorted file list. Join
            the parts with :func:`merge`. ``None`` (default) packs everything.
        channels: channels of the packed images: ``3`` (RGB, ``convert("RGB")``), ``1``
            (grayscale, Pillow's ``convert("L")``: ITU-R 601-2 luma, bit-exact) or ``4`` (RGBA,
            ``convert("RGBA")``: opaque 255 alpha for images without one; resized with
            premultiplied alpha, as Pillow resizes RGBA). Recorded in the manifest as
            ``channel_order`` ``"L"``, ``"RGB"`` or ``"RGBA"``.
        exif_orientation: apply the EXIF Orientation tag (all eight rotations and flips, as
            Pillow's ``ImageOps.exif_transpose``) before resizing. Off by default, as
            torchvision, which ignores the tag.

    Returns:
        A :class:`PackReport`. Skipped files are also printed to stderr and listed in the
        manifest.

    Raises:
        VantixError: bad options, an unreadable source folder, an existing ``dst`` without
            ``overwrite``, or (with ``strict``) the first unreadable image.
    """
    width, height = _size_to_wh(size)
    colour = [int(v) for v in pad_color]
    if len(colour) != 3:
        raise _ArgumentValueError(f"pad_color must be 3 values (R, G, B), got {pad_color!r}")
    if isinstance(shard_size, str):
        shard_size = _native.parse_bytes(shard_size)
    if isinstance(max_file_size, str):
        max_file_size = _native.parse_bytes(max_file_size)
    r = _native.pack(
        os.fspath(src),
        os.fspath(dst),
        width,
        height,
        mode,
        interpolation,
        (colour[0], colour[1], colour[2]),
        codec,
        level,
        int(shard_size),
        num_threads,
        strict,
        overwrite,
        progress,
        max_pixels,
        exact_decode=exact_decode,
        filter=filter,
        part=None if part is None else _part(part),
        channels=_u32("channels", channels),
        exif_orientation=bool(exif_orientation),
        dictionary=dictionary,
        allow_truncated=bool(allow_truncated),
        allow_empty=bool(allow_empty),
        max_file_size=int(max_file_size),
    )
    return _report(r)


def _part(part: Sequence[int]) -> tuple[int, int]:
    """``(index, count)`` as two unsigned ints (the range is checked in Rust)."""
    values = [int(v) for v in part]
    if len(values) != 2:
        raise _ArgumentValueError(f"part must be (index, count), got {part!r}")
    if values[0] < 0 or values[1] < 0:
        raise _ArgumentValueError(f"part must be (index, count) with index < count, got {part!r}")
    return values[0], values[1]


def _report(r: dict[str, Any]) -> PackReport:
    return PackReport(
        path=os.fspath(r["path"]),
        num_samples=r["num_samples"],
        classes=list(r["classes"]),
        skipped=[tuple(s) for s in r["skipped"]],
        num_shards=r["num_shards"],
        truncated=list(r["truncated"]),
        bytes_written=r["bytes_written"],
        seconds=r["seconds"],
    )


def merge(
    parts: Sequence[PathLike], dst: PathLike, *, overwrite: bool = False, progress: bool = False
) -> PackReport:
    """Join the parts of a pack made with ``pack(..., part=(i, n))`` into one dataset.

    The result's records, labels, classes, skipped files and ``sources.json`` are exactly those
    of a single pack of the same tree (``vantix-pack merge``). The parts are checked to be all
    ``n`` parts of one pack (same tree, same settings, each index once); they are copied, not
    moved, and stay valid.

    Args:
        parts: the part datasets, in any order.
        dst: output directory, e.g. ``"train.vtx"``. Written atomically.
        overwrite: replace ``dst`` if it is a Vantix dataset (never one of the parts, nor
            anything that is not a dataset).
        progress: draw a progress bar on stderr (when it is a terminal).

    Returns:
        A :class:`PackReport` of the merged dataset.

    Raises:
        VantixError: naming the part that is missing, given twice, from another pack or damaged.
    """
    r = _native.merge([os.fspath(p) for p in parts], os.fspath(dst), overwrite, progress)
    return _report(r)


def append(
    src: PathLike,
    dst: PathLike,
    *,
    new_classes: bool = False,
    shard_size: int | str = _DEFAULTS["shard_size"],
    num_threads: int | None = _DEFAULTS["num_threads"],
    strict: bool = False,
    progress: bool = False,
    allow_truncated: bool = False,
    allow_empty: bool = False,
) -> PackReport:
    """Add the images of the ImageFolder ``src`` that the dataset ``dst`` does not hold yet.

    New images are those whose path relative to ``src`` is neither packed (``sources.json``)
    nor in the manifest's skipped list. They are packed with the dataset's own size, resize
    mode, interpolation, codec and filter, in ImageFolder order after the existing records,
    into new shard files; then ``sources.json`` and ``manifest.json`` are replaced atomically
    (``vantix-pack append``). Existing records keep their indices and their shards are not
    modified; on any error the dataset is left as it was.

    Args:
        src: ImageFolder root, usually the one the dataset was packed from.
        dst: the dataset directory to add to, in place.
        new_classes: accept class folders the dataset lacks; they are added at the end of the
            class list, so existing labels never change (a new class can then get another index
            than ``ImageFolder(src)`` would give it). Without it such folders are an error.
        shard_size: target bytes per new shard file, an int or a string like ``"512M"`` (the
            default, 512 MiB).
        num_threads: worker threads (default: all cores; ``--num-threads``/``-j`` on the CLI).
        strict: raise on the first unreadable file instead of skipping and reporting it.
        progress: draw a progress bar on stderr (when it is a terminal).
        allow_truncated: pack truncated images instead of skipping them (see :func:`pack`).
        allow_empty: accept class folders without images (see :func:`pack`).

    Returns:
        A :class:`PackReport` of what was added (``num_samples`` new records, the new
        shards); ``classes`` is the dataset's whole class list.

    Raises:
        VantixError: an unknown class folder without ``new_classes``, a damaged dataset, a
            part of a pack, or (with ``strict``) the first unreadable image.
    """
    if isinstance(shard_size, str):
        shard_size = _native.parse_bytes(shard_size)
    r = _native.append(
        os.fspath(src),
        os.fspath(dst),
        int(shard_size),
        num_threads,
        strict,
        new_classes,
        progress,
        allow_truncated=bool(allow_truncated),
        allow_empty=bool(allow_empty),
    )
    return _report(r)


def verify(path: PathLike) -> None:
    """Recompute every checksum of the dataset at ``path``.

    Args:
        path: the dataset directory.

    Raises:
        VantixError: naming the damaged shard (and record) or the file that fails to open.
    """
    _native.Dataset(os.fspath(path)).verify()


def inspect(path: PathLike) -> dict[str, Any]:
    """Summary of a dataset: samples per class, geometry, codec, sizes (``vantix-pack inspect``).

    Args:
        path: the dataset directory.

    Returns:
        A dict as ``vantix-pack inspect --json`` prints it (``num_samples``, ``width``,
        ``height``, ``channels``, ``codec``, ``size_on_disk``, ``classes`` with per-class
        counts, ...).
    """
    return json.loads(_native.Dataset(os.fspath(path)).summary_json())
