"""Type stubs of the private native module ``vantix._native`` (built from ``python/src/lib.rs``).

Users call the documented Python API in ``vantix``; these stubs let editors and mypy follow
that API into the native layer. ``make lint`` checks them against the built module with
``python -m mypy.stubtest vantix``.
"""

import os
from typing import Any, Callable, Iterator, Optional, Sequence, Union, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "VantixError",
    "VantixValueError",
    "VantixTypeError",
    "VantixOSError",
    "VantixFileNotFoundError",
    "VantixFileExistsError",
    "VantixPermissionError",
    "VantixIsADirectoryError",
    "VantixNotADirectoryError",
    "VantixMemoryError",
    "CorruptDataError",
    "ChecksumMismatchError",
    "DataChangedError",
    "BadImageError",
    "__version__",
    "Dataset",
    "Loader",
    "Transform",
    "EpochIterator",
    "BatchBuffer",
    "pack",
    "merge",
    "append",
    "cli_main",
    "parse_bytes",
    "memory_fit",
    "MEMORY_LIMIT_ENV",
    "pack_defaults",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_SHARD_SIZE",
    "DEFAULT_MAX_FILE_SIZE",
    "write_contact_sheet",
    "train_val_split",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PREFETCH",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_BLOCK_WINDOW",
    "DEFAULT_SCALE",
    "DEFAULT_RATIO",
]

__version__: str
# Loader defaults (the Rust values; VantixLoader's signature shows them).
DEFAULT_BATCH_SIZE: int
DEFAULT_PREFETCH: int
DEFAULT_BLOCK_SIZE: int
DEFAULT_BLOCK_WINDOW: int
DEFAULT_SCALE: tuple[float, float]
DEFAULT_RATIO: tuple[float, float]

_Path = Union[str, os.PathLike[str]]
_Batch = tuple[npt.NDArray[Any], npt.NDArray[np.int64], npt.NDArray[np.int64]]

# The exception hierarchy (python/src/errors.rs, docs/ERRORS.md).
class VantixError(Exception):
    """Base class of every Vantix exception. Subclasses say what failed: VantixValueError and
    VantixTypeError (bad arguments), VantixOSError (file-system errors, with errno and
    filename), VantixMemoryError, CorruptDataError (and ChecksumMismatchError),
    DataChangedError, BadImageError. The message names the file and the problem."""

class VantixValueError(VantixError, ValueError):
    """An argument with a bad value."""

class VantixTypeError(VantixError, TypeError):
    """An argument of the wrong type."""

class VantixOSError(VantixError, OSError):
    """A file-system error: errno, strerror and filename are set as for OSError."""

class VantixFileNotFoundError(VantixOSError, FileNotFoundError):
    """A path that does not exist (errno ENOENT)."""

class VantixFileExistsError(VantixOSError, FileExistsError):
    """A path that already exists (errno EEXIST)."""

class VantixPermissionError(VantixOSError, PermissionError):
    """Permission denied (errno EACCES or EPERM)."""

class VantixIsADirectoryError(VantixOSError, IsADirectoryError):
    """A directory where a file was expected (errno EISDIR)."""

class VantixNotADirectoryError(VantixOSError, NotADirectoryError):
    """A file where a directory was expected (errno ENOTDIR)."""

class VantixMemoryError(VantixError, MemoryError):
    """Memory could not be allocated."""

class CorruptDataError(VantixError):
    """A file whose content is damaged or not a valid Vantix file; ``filename`` names it."""

    filename: Optional[str]

class ChecksumMismatchError(CorruptDataError):
    """A stored checksum does not match the data; ``filename`` names the shard."""

class DataChangedError(VantixError):
    """A file of an open dataset changed on disk; ``filename`` names it."""

    filename: Optional[str]

class BadImageError(VantixError):
    """A source image that strict packing refuses; ``filename`` names it."""

    filename: Optional[str]

@final
class Dataset:
    """An opened, validated dataset (memory-mapped shards)."""

    def __new__(cls, path: _Path, verify: Optional[str] = None) -> Dataset: ...
    def __len__(self) -> int: ...
    @property
    def path(self) -> str: ...
    @property
    def identity(self) -> str: ...
    @property
    def classes(self) -> list[str]: ...
    @property
    def shape(self) -> tuple[int, int, int]: ...
    def manifest_json(self) -> str: ...
    def summary_json(self) -> str: ...
    def get(self, i: int) -> tuple[npt.NDArray[np.uint8], int]: ...
    def labels(self) -> npt.NDArray[np.int64]: ...
    def verify(self) -> None: ...
    def preview(
        self,
        path: _Path,
        indices: Optional[Sequence[int]] = None,
        num: int = 64,
        seed: int = 0,
        columns: Optional[int] = None,
        scale: Optional[int] = None,
    ) -> npt.NDArray[np.int64]: ...

@final
class BatchBuffer:
    """Owns a pooled batch buffer for as long as a numpy array views it."""

@final
class Transform:
    """Augmentation and output conversion done by the assembler; sizes are ``(height, width)``."""

    def __new__(
        cls,
        *,
        random_crop: Optional[tuple[int, int]] = None,
        padding: int = 0,
        random_resized_crop: Optional[tuple[int, int]] = None,
        scale: tuple[float, float] = ...,
        ratio: tuple[float, float] = ...,
        center_crop: Optional[tuple[int, int]] = None,
        horizontal_flip: float = 0.0,
        vertical_flip: float = 0.0,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        dtype: str = "uint8",
        layout: str = "NHWC",
        channels_last: bool = False,
    ) -> Transform: ...
    @property
    def is_identity(self) -> bool: ...
    def validate(self, height: int, width: int, channels: int = 3) -> None: ...

@final
class Loader:
    """The Rust loader behind ``vantix.VantixLoader``."""

    def __new__(
        cls,
        dataset: Dataset,
        batch_size: int = ...,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        prefetch: int = ...,
        num_threads: Optional[int] = None,
        rank: int = 0,
        world_size: int = 1,
        ddp_remainder: str = "pad",
        augment: Optional[Transform] = None,
        order: str = "random",
        block_size: int = ...,
        block_window: int = ...,
        indices: Optional[Sequence[int]] = None,
        allocator: Optional[Callable[[int], Any]] = None,
        verify: Optional[str] = None,
        consumer_batches: int = 0,
        readahead: Optional[int] = None,
    ) -> Loader: ...
    def __len__(self) -> int: ...
    def epoch_indices(
        self,
        epoch: int,
        samples_seen: int = 0,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ) -> npt.NDArray[np.int64]: ...
    def num_batches_from(
        self, samples_seen: int, rank: Optional[int] = None, world_size: Optional[int] = None
    ) -> int: ...
    def samples_seen_after(
        self, samples_seen: int, batches: int, world_size: Optional[int] = None
    ) -> int: ...
    def iter_epoch(
        self,
        epoch: int,
        samples_seen: int,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ) -> EpochIterator: ...
    @property
    def num_threads(self) -> int: ...
    @property
    def order(self) -> str: ...
    @property
    def readahead(self) -> int: ...
    def memory_fit(self) -> dict[str, Any]: ...
    def transform_params(self, epoch: int, index: int) -> tuple[int, int, int, int, bool]: ...
    def batch_shape(self, n: int) -> list[int]: ...
    def free_buffers(self) -> int: ...
    def resume_key(self, augment: Optional[Transform] = None) -> str: ...

@final
class EpochIterator:
    """One epoch of ``(images, labels, indices)``; images ``[B, H, W, C]`` uint8 without
    augmentation, else in its layout (channels-last: an NCHW-shaped view of NHWC memory) and
    dtype."""

    def __iter__(
        self,
    ) -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[np.int64], npt.NDArray[np.int64]]]: ...
    def __next__(self) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
    def close(self) -> None: ...

def pack(
    src: _Path,
    dst: _Path,
    width: int,
    height: int,
    mode: str,
    interpolation: str,
    pad_color: tuple[int, int, int],
    codec: str,
    level: int,
    shard_size: int,
    num_threads: Optional[int],
    strict: bool,
    overwrite: bool,
    progress: bool,
    max_pixels: int,
    exact_decode: bool = False,
    filter: str = ...,
    part: Optional[tuple[int, int]] = None,
    channels: int = 3,
    exif_orientation: bool = False,
    dictionary: str = "auto",
    allow_truncated: bool = False,
    allow_empty: bool = False,
    max_file_size: int = ...,
) -> dict[str, Any]: ...
def merge(
    parts: Sequence[_Path], dst: _Path, overwrite: bool = False, progress: bool = False
) -> dict[str, Any]: ...
def append(
    src: _Path,
    dst: _Path,
    shard_size: int,
    num_threads: Optional[int],
    strict: bool,
    new_classes: bool,
    progress: bool,
    allow_truncated: bool = False,
    allow_empty: bool = False,
) -> dict[str, Any]: ...
def cli_main(argv: Sequence[str]) -> int: ...
def train_val_split(
    labels: Sequence[int], fraction: float, seed: int, stratify: bool
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
def parse_bytes(text: str) -> int: ...
def memory_fit(dataset: Dataset) -> dict[str, Any]: ...

MEMORY_LIMIT_ENV: str

def pack_defaults() -> dict[str, Any]: ...

DEFAULT_MAX_PIXELS: int
DEFAULT_SHARD_SIZE: int
DEFAULT_MAX_FILE_SIZE: int

def write_contact_sheet(
    images: npt.NDArray[np.uint8],
    captions: Sequence[str],
    path: _Path,
    columns: Optional[int] = None,
    scale: Optional[int] = None,
) -> tuple[int, int]: ...
