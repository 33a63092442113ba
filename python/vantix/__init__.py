"""Vantix: pack an image dataset once, then feed PyTorch from memory-mapped, shuffled batches.

>>> import vantix
>>> vantix.pack("train", "train.vtx", size=224)            # once
>>> loader = vantix.VantixLoader("train.vtx", batch_size=256, shuffle=True)
>>> for images, labels in loader:                            # uint8 [B, H, W, 3], int64 [B]
...     ...
>>> loader.preview("batch.png")                              # look at a batch as a PNG grid

Main objects: :class:`VantixLoader` (shuffled, augmented, prefetched batches),
:class:`VantixDataset` (map-style), :func:`pack`, :func:`merge`, :func:`append`,
:func:`inspect`, :func:`verify`, :func:`train_val_split`, :func:`save_batch_grid`,
:class:`VantixError` and its subclasses (``docs/ERRORS.md``: ``VantixValueError``,
``VantixOSError``, ``CorruptDataError``, ...), :class:`DataLargerThanMemoryWarning`. Each has a
complete docstring (``help(vantix.VantixLoader)``); the guides are in the repository's ``docs/``.
Supported: CPython >= 3.9 (one abi3 wheel); torch >= 2.0 optional (numpy arrays without it).
"""

from ._native import (
    BadImageError,
    ChecksumMismatchError,
    CorruptDataError,
    DataChangedError,
    VantixError,
    VantixFileExistsError,
    VantixFileNotFoundError,
    VantixIsADirectoryError,
    VantixMemoryError,
    VantixNotADirectoryError,
    VantixOSError,
    VantixPermissionError,
    VantixTypeError,
    VantixValueError,
    __version__,
)
from .data import DataLargerThanMemoryWarning, VantixDataset, VantixLoader, train_val_split
from .packing import PackReport, append, inspect, merge, pack, verify
from .preview import save_batch_grid

__all__ = [
    "BadImageError",
    "ChecksumMismatchError",
    "CorruptDataError",
    "DataChangedError",
    "DataLargerThanMemoryWarning",
    "PackReport",
    "VantixDataset",
    "VantixError",
    "VantixFileExistsError",
    "VantixFileNotFoundError",
    "VantixIsADirectoryError",
    "VantixLoader",
    "VantixMemoryError",
    "VantixNotADirectoryError",
    "VantixOSError",
    "VantixPermissionError",
    "VantixTypeError",
    "VantixValueError",
    "__version__",
    "append",
    "inspect",
    "merge",
    "pack",
    "save_batch_grid",
    "train_val_split",
    "verify",
]
