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
    "write_contact_sheet",
    "train_val_split",
]

__version__: str

_Path = Union[str, os.PathLike[str]]
_Batch = tuple[npt.NDArray[Any], npt.NDArray[np.int64], npt.NDArray[np.int64]]

class VantixError(Exception):
    """Raised for every Vantix failure: damaged or missing files, invalid options, unreadable
    images in strict mode. The message names the file and the problem."""

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
        hflip: float = 0.0,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        dtype: str = "uint8",
        layout: str = "NHWC",
    ) -> Transform: ...
    def validate(self, height: int, width: int, channels: int = 3) -> None: ...

@final
class Loader:
    """The Rust loader behind ``vantix.VantixLoader``."""

    def __new__(
        cls,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        prefetch: int,
        num_threads: Optional[int],
        rank: int,
        world_size: int,
        drop_remainder: bool,
        transform: Optional[Transform] = None,
        order: str = "random",
        block_size: int = 256,
        block_window: int = 16,
        indices: Optional[Sequence[int]] = None,
        allocator: Optional[Callable[[int], Any]] = None,
        verify: Optional[str] = None,
    ) -> Loader: ...
    def __len__(self) -> int: ...
    def epoch_indices(
        self,
        epoch: int,
        start: int = 0,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ) -> npt.NDArray[np.int64]: ...
    def num_batches_from(
        self, start: int, rank: Optional[int] = None, world_size: Optional[int] = None
    ) -> int: ...
    def iter_epoch(
        self, epoch: int, start: int, rank: Optional[int] = None, world_size: Optional[int] = None
    ) -> EpochIterator: ...
    @property
    def num_threads(self) -> int: ...
    def transform_params(self, epoch: int, index: int) -> tuple[int, int, int, int, bool]: ...
    def batch_shape(self, n: int) -> list[int]: ...
    def free_buffers(self) -> int: ...
    def resume_key(self) -> str: ...

@final
class EpochIterator:
    """One epoch of ``(images, labels, indices)``; images ``[B, H, W, C]`` uint8 without a
    transform, else in the transform's layout and dtype."""

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
    filter: str = "up",
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
def write_contact_sheet(
    images: npt.NDArray[np.uint8],
    captions: Sequence[str],
    path: _Path,
    columns: Optional[int] = None,
    scale: Optional[int] = None,
) -> tuple[int, int]: ...
