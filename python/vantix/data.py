"""``VantixDataset`` (map-style) and ``VantixLoader`` (prefetched, shuffled batches)."""

from __future__ import annotations

import operator
import os
import threading
import warnings
import weakref
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from . import _native

PathLike = Union[str, "os.PathLike[str]"]

_TORCH: Any = None


def _torch() -> Any:
    """``torch`` when it can be imported, else ``None`` (looked up once)."""
    global _TORCH
    if _TORCH is None:
        try:
            import torch
        except ImportError:
            _TORCH = False
        else:
            _TORCH = torch
    return _TORCH or None


class VantixDataset:
    """A packed dataset as a map-style dataset: ``ds[i] -> (image, label)``.

    ``image`` is a new ``numpy.uint8`` array of shape ``(H, W, C)`` (``C`` = 3 for RGB, the
    default; 1 or 4 for datasets packed with ``channels=1`` (grey) or ``4`` (RGBA)) and ``label`` an
    ``int``, unless ``transform`` / ``target_transform`` change them (as in torchvision). It
    works with a plain ``torch.utils.data.DataLoader``, with any number of workers (fork or
    spawn: it pickles as its path and its :attr:`identity`, and reopens the path; if the path
    now holds another dataset, e.g. repacked with ``--overwrite``, unpickling raises
    ``VantixError`` instead of serving other images).

    Args:
        path: the dataset directory made by ``vantix-pack`` (e.g. ``"train.vtx"``).
        transform: optional callable applied to each image (an ``(H, W, C)`` uint8 array, so
            a torchvision ``Compose`` starts with ``PIL.Image.fromarray`` or ``ToTensor()``).
        target_transform: optional callable applied to each label.
        verify: checksums checked before an image is returned: ``None`` (the default: lengths
            and offsets are validated at open, checksums only by :meth:`verify`), ``"shard"``
            (verify a whole shard, its xxh3 and every record CRC, the first time an image of
            it is read) or ``"record"`` (check each image's CRC-32 every time it is read; it
            does not cover labels).

    Attributes:
        classes: class names in label order, as ``ImageFolder.classes``.
        class_to_idx: ``{class name: label}``, as ``ImageFolder.class_to_idx``.
        identity: the dataset's fingerprint (32 hex digits over its manifest and shard
            checksums; another pack at the same path has another identity).

    Raises:
        VantixError: the dataset is missing, truncated or damaged (checked at open); when
            reading, a shard changed on disk since open, or (with ``verify``) damaged data.

    Example::

        ds = VantixDataset("train.vtx")
        image, label = ds[0]                     # uint8 (H, W, C), int
        loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=4)
    """

    def __init__(
        self,
        path: PathLike,
        transform: Optional[Callable[[np.ndarray], Any]] = None,
        target_transform: Optional[Callable[[int], Any]] = None,
        verify: Optional[str] = None,
    ) -> None:
        self.path = os.fspath(path)
        self.transform = transform
        self.target_transform = target_transform
        self.verify_mode = _verify_arg(verify)
        self._native = _native.Dataset(self.path, verify=self.verify_mode)
        self.identity: str = self._native.identity
        self.classes: list[str] = self._native.classes
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self._targets: Optional[list[int]] = None

    def __len__(self) -> int:
        """Number of images in the dataset."""
        return len(self._native)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """``(image, label)`` of sample ``index`` (negative indices count from the end).

        Raises:
            IndexError: ``index`` is out of range.
        """
        n = len(self._native)
        i = _integer(index, "dataset indices must be integers")
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of range for a dataset of {n} samples")
        image, label = self._native.get(i)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    @property
    def num_samples(self) -> int:
        """Number of images."""
        return len(self._native)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of every image."""
        return self._native.shape

    @property
    def targets(self) -> list[int]:
        """The label of every sample, as torchvision's ``ImageFolder.targets``."""
        if self._targets is None:
            self._targets = self._native.labels().tolist()
        return self._targets

    def verify(self) -> None:
        """Recompute all checksums; raises ``VantixError`` naming a damaged shard and record."""
        self._native.verify()

    def preview(
        self,
        path: PathLike,
        num: int = 64,
        indices: Optional[Sequence[int]] = None,
        seed: int = 0,
        columns: Optional[int] = None,
        scale: Optional[int] = None,
    ) -> np.ndarray:
        """Write a contact-sheet PNG of packed records, each captioned ``"#index class"``.

        The images are shown as stored (after the packer's resize, before any augmentation);
        ``vantix-pack preview`` does the same from the command line. The layout is described
        in :mod:`vantix.preview`.

        Args:
            path: the PNG file to write.
            num: how many records to draw at random when ``indices`` is not given; they are
                shown in index order, which is class order.
            indices: exactly these records, in this order.
            seed: seed of the random draw (the same seed shows the same records).
            columns: tiles per row (default: a near-square grid).
            scale: integer upscaling of every tile (default: tiles at least 96 pixels wide).

        Returns:
            The dataset indices shown, in tile order (int64).

        Raises:
            VantixError: an index is out of range or the file cannot be written.
        """
        idx = None if indices is None else _indices_arg("indices", indices).tolist()
        return self._native.preview(
            os.fspath(path),
            idx,
            _index_arg("num", num, 1),
            _index_arg("seed", seed, 0, 2**64 - 1),
            _optional_index_arg("columns", columns, 1),
            _optional_index_arg("scale", scale, 1),
        )

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "identity": self.identity,
            "transform": self.transform,
            "target_transform": self.target_transform,
            "verify": self.verify_mode,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["path"], state["transform"], state["target_transform"], state.get("verify")
        )
        pinned = state.get("identity")
        if pinned is not None and pinned != self.identity:
            raise _native.DataChangedError(
                f"{self.path}: the path now holds another dataset (identity {self.identity}, "
                f"the pickled dataset was {pinned}): it was repacked or replaced after the "
                "dataset was pickled; refusing to serve other images under the same indices"
            )

    def __repr__(self) -> str:
        h, w, c = self.shape
        return (
            f"VantixDataset({self.path!r}, num_samples={len(self)}, "
            f"classes={len(self.classes)}, shape=({h}, {w}, {c}))"
        )


def _verify_arg(verify: Any) -> Optional[str]:
    """``None`` (also for ``"none"`` and ``False``) or the name Rust parses (``"shard"``,
    ``"record"``)."""
    if verify is None or verify is False or verify == "none":
        return None
    if not isinstance(verify, str):
        raise _ArgumentTypeError(f"verify must be None, 'shard' or 'record', got {verify!r}")
    return verify


# The public classes (docs/ERRORS.md) under the names the checks below raise.
#: An option with a value out of range: ``vantix.VantixValueError`` (a ``ValueError``).
_ArgumentValueError = _native.VantixValueError
#: An option of the wrong type: ``vantix.VantixTypeError`` (a ``TypeError``).
_ArgumentTypeError = _native.VantixTypeError


#: Largest value of an integer option (the native side takes 64-bit integers).
_INDEX_MAX = 2**63 - 1


def _integer(value: Any, what: str) -> int:
    """``value`` as an int: anything ``operator.index`` accepts (``int``, numpy integers), but
    not ``bool`` or a float (which would be truncated); else ``_ArgumentTypeError("<what>, got
    ...")``."""
    if isinstance(value, (bool, np.bool_)):
        raise _ArgumentTypeError(f"{what}, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise _ArgumentTypeError(f"{what}, got {type(value).__name__} {value!r}") from None


def _index_arg(name: str, value: Any, low: int, high: int = _INDEX_MAX) -> int:
    """``value`` as an int in ``[low, high]`` (see :func:`_integer`)."""
    v = _integer(value, f"{name} must be an int >= {low}")
    if not low <= v <= high:
        raise _ArgumentValueError(f"{name} must be an int in [{low}, {high}], got {v}")
    return v


def _optional_index_arg(name: str, value: Any, low: int, high: int = _INDEX_MAX) -> Optional[int]:
    """``None`` or :func:`_index_arg`."""
    return None if value is None else _index_arg(name, value, low, high)


def _bool_arg(name: str, value: Any) -> bool:
    """``value`` if it is a ``bool`` (or a numpy bool); ``shuffle=1`` is refused as a likely
    mistake for another option."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise _ArgumentTypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def _indices_arg(name: str, value: Any) -> np.ndarray:
    """A 1-D int64 array of indices >= 0 from a sequence or array of integers; floats (which
    would be truncated) and bools are refused."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise _ArgumentTypeError(f"{name} must be a 1-D sequence of ints, got {value!r}") from None
    if arr.ndim != 1:
        raise _ArgumentValueError(f"{name} must be a 1-D sequence of indices >= 0")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        if arr.dtype == object and all(
            not isinstance(v, (bool, np.bool_)) and hasattr(type(v), "__index__") for v in arr
        ):
            arr = np.array([operator.index(v) for v in arr])
        else:
            raise _ArgumentTypeError(
                f"{name} must hold integers, got {arr.dtype} (floats are not truncated)"
            )
    if arr.min() < 0 or arr.max() > _INDEX_MAX:
        raise _ArgumentValueError(
            f"{name} must be indices in [0, {_INDEX_MAX}], got {arr.min()} to {arr.max()}"
        )
    return arr.astype(np.int64)


def _env_int(name: str) -> Optional[int]:
    """The integer in environment variable ``name`` (``None`` when unset or empty)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise _ArgumentValueError(
            f"the environment variable {name}={value!r} is not an integer"
        ) from None


def _resolve_partition(rank: Optional[int], world_size: Optional[int]) -> tuple[int, int]:
    """``(rank, world_size)`` of this process now: the arguments, else an initialised
    ``torch.distributed``, else the launcher's environment (``RANK``/``WORLD_SIZE``, or
    ``LOCAL_RANK`` with ``NODE_RANK`` and ``LOCAL_WORLD_SIZE`` where ``RANK`` is missing, as
    under Lightning's launcher). Never guessed: with ``WORLD_SIZE > 1`` and no way to know the
    rank, a ``VantixError`` says what to pass."""
    if rank is None or world_size is None:
        torch = _torch()
        dist = None if torch is None else torch.distributed
        if dist is not None and dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
    if world_size is None:
        world_size = _env_int("WORLD_SIZE") or 1
    if rank is None:
        rank = _env_int("RANK")
    if rank is None and world_size == 1:
        rank = 0
    if rank is None:
        local, node = _env_int("LOCAL_RANK"), _env_int("NODE_RANK")
        local_world = _env_int("LOCAL_WORLD_SIZE")
        if node is None:
            node = _env_int("GROUP_RANK")  # torch elastic's name for the node rank
        if local is not None and (node == 0 or (node is None and local_world == world_size)):
            rank = local  # the first (or only) node: global rank = local rank
        elif local is not None and node is not None and local_world is not None:
            rank = node * local_world + local
    if rank is None:
        raise _native.VantixError(
            f"VantixLoader cannot tell this process's rank: WORLD_SIZE={world_size} but RANK is "
            "not set (nor LOCAL_RANK with NODE_RANK and LOCAL_WORLD_SIZE) and torch.distributed "
            "is not initialised. Pass rank= and world_size= to VantixLoader, or call "
            "torch.distributed.init_process_group() before iterating."
        )
    if not (world_size >= 1 and 0 <= rank < world_size):
        raise _ArgumentValueError(f"rank {rank} is not valid for world_size {world_size}")
    return rank, world_size


def _uint_arg(name: str, value: Any, bits: int = 64) -> int:
    """``value`` as an int that fits the native unsigned type of ``bits`` bits (see
    :func:`_integer`); the option's own limits are checked in Rust."""
    return _index_arg(name, value, 0, 2**bits - 1)


def _str_arg(name: str, value: Any) -> str:
    """``value`` if it is a ``str`` (the native side parses it and lists the choices)."""
    if not isinstance(value, str):
        raise _ArgumentTypeError(f"{name} must be a str, got {type(value).__name__} {value!r}")
    return value


def _size_arg(name: str, value: Any) -> Optional[tuple[int, int]]:
    """``None``, an int ``s`` (``(s, s)``) or ``(h, w)`` (or ``(s,)``), as torchvision takes."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        size: tuple[Any, ...] = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) in (1, 2):
        size = tuple(value) * (3 - len(value))
    else:
        raise _ArgumentTypeError(f"{name} must be an int or (height, width), got {value!r}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size):
        raise _ArgumentTypeError(f"{name} must be an int or (height, width), got {value!r}")
    h, w = (_uint_arg(f"{name} (height, width)", v, 32) for v in size)
    return h, w


def _range_arg(name: str, value: Any) -> tuple[float, float]:
    """``(low, high)`` as two floats (their values are checked in Rust)."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise _ArgumentTypeError(f"{name} must be a pair (low, high), got {value!r}") from None
    return low, high


def _float_arg(name: str, value: Any, what: str) -> float:
    """``value`` as a float; ``what`` says what it must be."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _ArgumentTypeError(f"{name} is {what}, got {value!r}") from None


def _channels_arg(name: str, value: Any, channels: int) -> Optional[list[float]]:
    """``None``, or one float per channel of the packed images: a single number is used for
    every channel (Rust checks the count and the values)."""
    if value is None:
        return None
    try:
        values = [float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64))]
    except (TypeError, ValueError):
        raise _ArgumentTypeError(
            f"{name} must be a number or a sequence of numbers, one per channel; got {value!r}"
        ) from None
    return values * channels if len(values) == 1 else values


def _dtype_arg(dtype: Any) -> str:
    """The name of ``dtype`` (a name, a numpy or a torch dtype), which Rust parses."""
    torch = _torch()
    if torch is not None and isinstance(dtype, torch.dtype):
        names = {
            torch.uint8: "uint8",
            torch.float32: "float32",
            torch.float16: "float16",
            torch.bfloat16: "bfloat16",
        }
        return names.get(dtype, str(dtype))
    try:
        return str(np.dtype(dtype).name)
    except TypeError:
        return str(dtype)


def _bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16, numpy has no bfloat16) as the float32 values they are."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _make_augment(
    random_crop: Any,
    padding: Any,
    random_resized_crop: Any,
    scale: Any,
    ratio: Any,
    center_crop: Any,
    horizontal_flip: Any,
    vertical_flip: Any,
    mean: Any,
    std: Any,
    dtype: Any,
    layout: Any,
    channels_last: Any,
    channels: int = 3,
) -> Any:
    """The native augmentation for :class:`VantixLoader`'s options: Python types adapted to
    the native ones, every value checked in Rust (``Transform::validate``)."""
    return _native.Transform(
        random_crop=_size_arg("random_crop", random_crop),
        padding=_uint_arg("padding", padding, 32),
        random_resized_crop=_size_arg("random_resized_crop", random_resized_crop),
        scale=_range_arg("scale", scale),
        ratio=_range_arg("ratio", ratio),
        center_crop=_size_arg("center_crop", center_crop),
        horizontal_flip=_float_arg("horizontal_flip", horizontal_flip, "a probability in [0, 1]"),
        vertical_flip=_float_arg("vertical_flip", vertical_flip, "a probability in [0, 1]"),
        mean=_channels_arg("mean", mean, channels),
        std=_channels_arg("std", std, channels),
        dtype=_dtype_arg(dtype),
        layout=str(layout),
        channels_last=bool(channels_last),
    )


def _device_arg(device: Any, pin_memory: bool) -> tuple[Any, bool]:
    """``(torch.device or None, pin)``: CUDA needs torch and a GPU; it implies pinned memory."""
    torch = _torch()
    if device is None or str(device) == "cpu":
        if pin_memory and (torch is None or not torch.cuda.is_available()):
            warnings.warn(
                "pin_memory=True but no CUDA device is available: batches are not pinned "
                "(as torch.utils.data.DataLoader does)",
                stacklevel=3,
            )
            return None, False
        return None, bool(pin_memory)
    if torch is None:
        raise _native.VantixError(f"device={device!r} needs torch, which cannot be imported")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise _ArgumentValueError(f"invalid device {device!r}: {e}") from None
    if dev.type != "cuda":
        raise _ArgumentValueError(f"device must be 'cpu' or a CUDA device, got {device!r}")
    if not torch.cuda.is_available():
        raise _native.VantixError(
            f"device={device!r} was asked for, but CUDA is not available "
            f"(torch {torch.__version__}: torch.cuda.is_available() is False)"
        )
    return dev, True  # asynchronous copies need page-locked memory


def _pinned_allocator() -> Callable[[int], Any]:
    """Batch buffers in page-locked memory allocated by torch (filled directly by Rust)."""
    torch = _torch()

    def allocate(nbytes: int) -> Any:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    return allocate


def train_val_split(
    dataset: Union[PathLike, VantixDataset],
    val_fraction: float = 0.1,
    seed: int = 0,
    stratify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """A reproducible split of a dataset's indices into ``(train, val)`` (sorted int64 arrays).

    Args:
        dataset: the dataset directory or an open :class:`VantixDataset`.
        val_fraction: fraction of the samples that go to ``val`` (0 to 1).
        seed: the split is a pure function of ``(seed, labels)``.
        stratify: with ``True`` every class gives ``round(val_fraction * its size)`` samples
            to ``val``, so class proportions are kept; else ``round(val_fraction * n)`` samples
            are drawn from all of them.

    Pass the results as ``indices=`` to two loaders::

        train_idx, val_idx = vantix.train_val_split("train.vtx", val_fraction=0.1, seed=0)
        train = VantixLoader("train.vtx", indices=train_idx, shuffle=True)
        val = VantixLoader("train.vtx", indices=val_idx, shuffle=False)
    """
    if not 0.0 <= float(val_fraction) <= 1.0:
        raise _ArgumentValueError(f"val_fraction must be in [0, 1], got {val_fraction!r}")
    ds = dataset if isinstance(dataset, VantixDataset) else VantixDataset(dataset)
    seed = _index_arg("seed", seed, 0, 2**64 - 1)
    return _native.train_val_split(ds.targets, float(val_fraction), seed, bool(stratify))


def _readahead_arg(value: Any) -> Optional[int]:
    """``None`` (the default), or bytes: an int, or a size such as ``"256M"`` (0 is allowed);
    Rust checks the range."""
    if value is None:
        return None
    if isinstance(value, str):
        return 0 if value.strip() == "0" else int(_native.parse_bytes(value))
    return _uint_arg("readahead", value)


class DataLargerThanMemoryWarning(RuntimeWarning):
    """A :class:`VantixLoader` shuffles fully (``order="random"``) over a dataset larger than
    the memory this process can use: every epoch is then read from disk. The message gives
    the numbers and the choices (a zstd pack, ``order="block"`` or ``"auto"``, more memory);
    it is issued once per process and dataset. ``VANTIX_MEMORY_LIMIT`` (bytes) lowers the
    memory figure, to plan for a smaller machine."""


#: Identities of the datasets already warned about in this process.
_WARNED_LARGER: set[str] = set()


def _warn_if_larger_than_memory(dataset: VantixDataset, loader: Any) -> None:
    """Warn once per dataset (:class:`DataLargerThanMemoryWarning`) when it does not fit in the
    memory the native ``loader`` leaves beside its batch buffers."""
    if dataset.identity in _WARNED_LARGER:
        return
    fit = loader.memory_fit()
    if not fit["fits"]:
        _WARNED_LARGER.add(dataset.identity)
        warnings.warn(fit["message"], DataLargerThanMemoryWarning, stacklevel=3)


class VantixLoader:
    """Shuffled, prefetched batches of a packed dataset, assembled in Rust.

    Iterating yields ``(images, labels)``: images ``uint8`` of shape ``[B, H, W, C]`` (``C`` the
    packed channels: 3 for RGB, 1 for grey, 4 for RGBA) and labels
    ``int64`` of shape ``[B]``, as torch tensors when torch is importable (sharing memory with
    the batch buffer, no copy), numpy arrays otherwise. Optional augmentations and the output
    conversion (crop, flip, normalisation, dtype, layout) run in Rust while the batch is
    assembled; they are torchvision's, named as there, and random per sample as a pure function
    of ``(seed, epoch, sample index)``: the same sample gets the same crop and flip in the same
    epoch whatever ``num_threads``, ``batch_size`` or rank, and a new one each epoch. Each
    complete pass moves the loader to the next epoch (a new permutation); a pass only started or
    abandoned (a peek, a framework's check, a ``break``) does not, and :meth:`set_epoch` chooses
    the epoch (see :meth:`__iter__` and ``docs/DISTRIBUTED.md``, "The epoch rule").

    Args:
        path: dataset directory (or an open :class:`VantixDataset`).
        batch_size: samples per batch.
        shuffle: a new random permutation of the whole dataset every epoch (a true global
            shuffle); ``False`` keeps the packed order.
        seed: the permutation is a pure function of ``(seed, epoch)``.
        drop_last: drop the last incomplete batch of an epoch.
        prefetch: batches kept ready by the background thread.
        num_threads: threads assembling a batch. Default: the usable cores (CPU affinity)
            divided by the ranks on this node (``LOCAL_WORLD_SIZE``, else ``WORLD_SIZE``), at
            least 1; the loaders of a process with the same count share one pool
            (:attr:`num_threads_used` tells what a pass uses).
        rank: this process's rank. Default: decided when a pass starts (and for ``len()``), from
            an initialised ``torch.distributed``, else ``RANK``, else ``LOCAL_RANK`` with
            ``NODE_RANK`` (and ``LOCAL_WORLD_SIZE`` beyond node 0), else 0 when the world size
            is 1. With ``WORLD_SIZE > 1`` and no way to know the rank, a pass raises
            ``VantixError``: the rank is never guessed.
        world_size: number of ranks. Default: decided when a pass starts, from
            ``torch.distributed``, else ``WORLD_SIZE``, else 1. Each rank reads its own share of
            the same permutation: positions ``rank, rank + world_size, ...`` (as
            ``DistributedSampler``), so every rank gets the same number of batches.
        ddp_remainder: when the epoch does not split evenly over the ranks, ``"pad"`` (the
            default) repeats the first samples of the permutation to fill the last places, as
            ``DistributedSampler(drop_last=False)``; ``"drop"`` leaves the last samples of the
            permutation out, as ``DistributedSampler(drop_last=True)``.
        random_crop: ``RandomCrop(size, padding)``: an int or ``(height, width)``; a crop of
            that size at a uniformly random position of the image padded with ``padding`` zeros
            on every side (the CIFAR recipe: ``random_crop=32, padding=4``).
        padding: zeros added on every side before ``random_crop``.
        random_resized_crop: ``RandomResizedCrop(size, scale, ratio)``: an int or
            ``(height, width)``; a crop of random area and aspect ratio drawn with
            torchvision's rule, resized to ``size`` (antialiased bilinear, Pillow's algorithm;
            every channel on its own, alpha included, as a tensor resize does).
        scale: range of the crop's area as a fraction of the packed image's.
        ratio: range of the crop's aspect ratio (width / height), drawn log-uniformly.
        center_crop: ``CenterCrop(size)``: an int or ``(height, width)``, for evaluation
            (zero padding where the crop is larger than the image). At most one of
            ``random_crop``, ``random_resized_crop`` and ``center_crop``.
        horizontal_flip: probability of a horizontal flip (``RandomHorizontalFlip(p)``).
        vertical_flip: probability of a vertical flip (``RandomVerticalFlip(p)``), drawn after
            the horizontal one; both flip the crop (after its resize).
        mean: ``Normalize``'s mean per channel on the 0-1 scale: one number per packed channel
            (3 for RGB, 1 for grey, 4 for RGBA; a single number is used for every channel);
            needs ``std`` and a float ``dtype``. There is no default: without ``mean``/``std``
            float output is ``x / 255``, whatever the channel count (ImageNet's statistics are
            never applied implicitly), and a wrong count is a ``VantixError``.
        std: ``Normalize``'s std per channel on the 0-1 scale (one non-zero number per packed
            channel, or a single number for all).
        dtype: ``"uint8"`` (pixel values), ``"float32"``, ``"float16"`` or ``"bfloat16"``
            (also a numpy or torch dtype; ``bfloat16`` needs torch, numpy has no such type).
            Float output is ``ToTensor()``'s ``x / 255``, then ``(x - mean) / std`` with
            ``mean``/``std``, computed in float32 (float16 and bfloat16 round that value to
            nearest even).
        layout: ``"NHWC"`` (``[B, H, W, C]``, the packed layout) or ``"NCHW"``
            (``[B, C, H, W]``, contiguous channel planes).
        channels_last: with ``layout="NCHW"``, assemble NHWC and return it as an NCHW-shaped
            view (``permute(0, 3, 1, 2)``, no copy) that is contiguous in
            ``torch.channels_last`` memory format (a transposed array without torch).
        indices: draw only from these dataset indices (e.g. one side of
            :func:`train_val_split`), as ``SubsetRandomSampler`` does; the permutation is over
            this list.
        order: with ``shuffle``, ``"random"`` (a full permutation, the default), ``"block"``
            for data larger than RAM, or ``"auto"``. ``"block"``: blocks of ``block_size``
            neighbouring records are shuffled, and samples are shuffled within each group of
            ``block_window`` blocks, so reads are large and nearly sequential. The price: a
            sample only mixes with the ``block_size * block_window`` samples of its group in
            each epoch (4,096 by default), and batches hold samples of a few regions of the
            pack (a pack is in class order, so a batch sees few classes). ``"auto"``: block
            order when the dataset does not fit in the memory this process can use
            (``MemAvailable``, the memory cgroup's limit, ``VANTIX_MEMORY_LIMIT``), a full
            shuffle when it does; decided once, when the loader is built, and shown by
            :attr:`resolved_order`. ``"random"`` stays the default so that results never
            depend on the machine's memory (``docs/TRADEOFFS.md``, "Data larger than RAM").
        block_size: records per block for ``order="block"`` (and ``"auto"``).
        block_window: blocks shuffled together for ``order="block"`` (and ``"auto"``).
        readahead: bytes of the coming batches' records the background thread asks the kernel
            to read from disk ahead of the copy (``madvise(MADV_WILLNEED)``), an int or a size
            such as ``"256M"``. Default (``None``): none when the dataset fits in the memory
            this process can use (its pages stay cached after the first epoch), else four
            batches' worth, at least 64 MiB, at most 1 GiB and a quarter of the usable memory;
            ``0`` turns the hints off (the kernel's own readahead). With readahead on, a full
            shuffle also keeps a fixed resident set cached (the first samples, three quarters
            of the usable memory) and gives the pages of every other record back to the kernel
            once copied (``MADV_PAGEOUT``), so that page reads never wait for reclaim. It
            changes only speed when the data is not in the page cache, never the batches. See
            :attr:`readahead`.
        pin_memory: assemble batches directly into page-locked memory allocated by torch (no
            extra copy), for fast asynchronous copies to a GPU. Without CUDA it warns and does
            nothing, as ``DataLoader`` does.
        device: ``"cuda"`` (or ``"cuda:N"``, a ``torch.device``): return batches on that GPU.
            Batches are assembled in pinned memory and copied ahead on a dedicated CUDA stream
            while the model computes on the previous one; the consumer's stream waits on an
            event before it uses a batch, and a host buffer is refilled only after its copy has
            finished. ``VantixError`` when CUDA is not available.
        device_prefetch: with ``device``, batches copied (and converted) to the GPU ahead of
            the one being consumed, at least 1.
        convert_on_device: with ``device``, assemble uint8 in Rust (crops and flips) and do
            the float conversion, ``mean``/``std``, layout and dtype on the GPU (the default):
            a quarter of float32's bytes cross PCIe and the CPU does no float work. The values
            equal the CPU path's (the same float32 operations, in the same order; see
            ``docs/GPU.md`` for the bound). ``False`` converts on the CPU, in Rust, as without
            ``device``.
        verify: checksums checked before a batch is served, for data you do not trust (a copy
            over a flaky network, a disk with errors): ``None`` (the default: lengths and
            offsets are validated at open, checksums only by ``vantix.verify``), ``"shard"``
            (verify each shard, its xxh3 and every record CRC, the first time a batch reads
            from it: the whole dataset once per loader, as strong as ``vantix.verify``) or
            ``"record"`` (check the CRC-32 of every image of every batch; pixels only, not
            labels). A failed check raises ``VantixError`` naming the shard and record.

    Whatever ``verify`` says, every batch checks (``fstat``) that the shards it reads have not
    been truncated or rewritten since the dataset was opened, and raises ``VantixError`` naming
    the shard instead of reading a changed file (see ``docs/RELIABILITY.md``).

    A loader holds threads and memory-mapped files: :meth:`close` (or ``with VantixLoader(...)
    as loader:``) releases them at once, from any thread; using a closed loader raises
    ``VantixError``. Interrupting an iteration (``break``, an exception, Ctrl-C) stops its
    prefetch thread and leaves the loader usable. A loader pickles as its options and position
    (spawn-based launchers), and one inherited through ``fork()`` starts its own threads in the
    child (a pass started in the parent cannot continue there: ``VantixError``, never a hang).
    ``sampler.set_epoch(e)`` is the hook Lightning and Accelerate call every epoch
    (``docs/INTEGRATIONS.md``).

    Raises:
        VantixError: the dataset cannot be opened or an option is invalid.

    Example::

        loader = VantixLoader("train.vtx", batch_size=256, shuffle=True,
                              random_resized_crop=224, horizontal_flip=0.5,
                              mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                              dtype="float32", layout="NCHW", device="cuda")
        loader.preview("batch.png")       # look at the first batch after augmentation
        for epoch in range(90):           # every pass is the next epoch (a new permutation)
            for images, labels in loader: # float32 [B, 3, 224, 224], int64 [B], on the GPU
                loss = criterion(model(images), labels)
                ...
            torch.save({"loader": loader.state_dict(), ...}, "ckpt.pt")  # exact resume
    """

    def __init__(
        self,
        path: Union[PathLike, VantixDataset],
        batch_size: int = _native.DEFAULT_BATCH_SIZE,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        prefetch: int = _native.DEFAULT_PREFETCH,
        num_threads: Optional[int] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        ddp_remainder: str = "pad",
        random_crop: Union[int, tuple[int, int], None] = None,
        padding: int = 0,
        random_resized_crop: Union[int, tuple[int, int], None] = None,
        scale: tuple[float, float] = _native.DEFAULT_SCALE,
        ratio: tuple[float, float] = _native.DEFAULT_RATIO,
        center_crop: Union[int, tuple[int, int], None] = None,
        horizontal_flip: float = 0.0,
        vertical_flip: float = 0.0,
        mean: Union[float, Sequence[float], None] = None,
        std: Union[float, Sequence[float], None] = None,
        dtype: Any = "uint8",
        layout: str = "NHWC",
        channels_last: bool = False,
        indices: Optional[Sequence[int]] = None,
        order: str = "random",
        block_size: int = _native.DEFAULT_BLOCK_SIZE,
        block_window: int = _native.DEFAULT_BLOCK_WINDOW,
        readahead: Union[int, str, None] = None,
        pin_memory: bool = False,
        device: Any = None,
        device_prefetch: int = 2,
        convert_on_device: bool = True,
        verify: Optional[str] = None,
    ) -> None:
        # What pickling keeps: the options as given (rank and world size are resolved anew).
        self._init_args = {k: v for k, v in locals().items() if k != "self"}
        self._native: Any = None  # set last: a loader that failed to build is closed
        self._iterators: weakref.WeakSet[_EpochIterator] = weakref.WeakSet()
        # Python adapts types (ints, bools, torch dtypes, sizes, arrays); Rust checks every
        # value (LoaderConfig::validate, Transform::validate) when the native loader is built.
        self.verify_mode = _verify_arg(verify)
        self.dataset = path if isinstance(path, VantixDataset) else VantixDataset(path)
        self.batch_size = batch_size = _uint_arg("batch_size", batch_size)
        self.shuffle = shuffle = _bool_arg("shuffle", shuffle)
        self.seed = seed = _uint_arg("seed", seed)
        self.drop_last = drop_last = _bool_arg("drop_last", drop_last)
        self.prefetch = prefetch = _uint_arg("prefetch", prefetch)
        self.num_threads = num_threads = (
            None if num_threads is None else _uint_arg("num_threads", num_threads)
        )
        # Rank and world size are resolved when a pass starts (and for len()): launchers such
        # as Lightning's start the other ranks, and set their environment, after this runs.
        # What is given is checked now (by the native loader, as its partition).
        rank = None if rank is None else _uint_arg("rank", rank)
        world_size = None if world_size is None else _uint_arg("world_size", world_size)
        self._rank_arg, self._world_size_arg = rank, world_size
        self.ddp_remainder = _str_arg("ddp_remainder", ddp_remainder)
        self.channels_last = bool(channels_last)
        self.mean, self.std = mean, std
        self.layout = str(layout).upper()
        crops = (
            random_crop,
            padding,
            random_resized_crop,
            scale,
            ratio,
            center_crop,
            horizontal_flip,
            vertical_flip,
        )
        channels = self.dataset.shape[2]
        self._dtype = _dtype_arg(dtype)
        self._augment = _make_augment(
            *crops, mean, std, self._dtype, layout, self.channels_last, channels
        )
        if self._dtype == "bfloat16" and _torch() is None:
            raise _native.VantixError("dtype='bfloat16' needs torch (numpy has no bfloat16)")
        self.order = _str_arg("order", order)
        self.indices = None if indices is None else _indices_arg("indices", indices)
        self.device, self.pin_memory = _device_arg(device, pin_memory)
        self.device_prefetch = _uint_arg("device_prefetch", device_prefetch)
        if self.device_prefetch < 1:
            raise _ArgumentValueError(f"device_prefetch must be at least 1, got {device_prefetch}")
        self.convert_on_device = _bool_arg("convert_on_device", convert_on_device)
        # With a device and convert_on_device, Rust assembles uint8 NHWC (crops and flips) and
        # DeviceConversion does the rest where the batch lands. The options asked for stay in
        # `_key_augment` (checked in Rust now, and keyed by the resume state, so a checkpoint
        # resumes whichever side converts).
        self._key_augment: Any = None
        self._conversion: Any = None
        if self.device is not None and self.convert_on_device:
            if self._dtype != "uint8" or self.layout != "NHWC":
                from ._device import DeviceConversion

                # The native loader checks only the uint8 augmentation it is given.
                h, w, _c = self.dataset.shape
                self._augment.validate(h, w, channels)
                self._key_augment = self._augment
                self._conversion = DeviceConversion(
                    self._dtype,
                    "channels_last" if self.channels_last else self.layout,
                    _channels_arg("mean", mean, channels),
                    _channels_arg("std", std, channels),
                )
                self._augment = _make_augment(*crops, None, None, "uint8", "NHWC", False, channels)
        # Rust serves bfloat16 as its bit patterns (uint16): seen as torch.bfloat16 here.
        self._bfloat16_bits = self._dtype == "bfloat16" and self._conversion is None
        allocator = _pinned_allocator() if self.pin_memory else None
        self._native = _native.Loader(
            self.dataset._native,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            prefetch=prefetch,
            num_threads=num_threads,
            rank=0 if rank is None or world_size is None else rank,
            world_size=1 if world_size is None else world_size,
            ddp_remainder=self.ddp_remainder,
            augment=self._augment,
            order=self.order,
            block_size=_uint_arg("block_size", block_size),
            block_window=_uint_arg("block_window", block_window),
            indices=None if self.indices is None else self.indices.tolist(),
            allocator=allocator,
            verify=self.verify_mode,
            # A device feeder holds up to device_prefetch + 1 host batches while they copy.
            consumer_batches=0 if self.device is None else self.device_prefetch + 1,
            readahead=_readahead_arg(readahead),
        )
        #: The order epochs follow: ``order`` with ``"auto"`` resolved (``"random"``,
        #: ``"block"``, or ``"sequential"`` without ``shuffle``).
        self.resolved_order: str = self._native.order
        if self.resolved_order == "random":
            _warn_if_larger_than_memory(self.dataset, self._native)
        # Where the next pass starts: its epoch and the samples of it already consumed by all
        # ranks (set by load_state_dict). A pass moves them on only when it is complete (see
        # __iter__); `_progress` is the latest pass, read by state_dict while it runs.
        self._epoch = 0
        self._resume_start = 0
        self._progress: Optional[_Progress] = None
        self._warned_repeat = False
        self._epoch_chosen = False
        self.sampler = _EpochSampler(self)

    @property
    def readahead(self) -> int:
        """Bytes of the coming batches a pass asks the kernel to read ahead (``readahead=``
        resolved; 0: none)."""
        return int(self._open_native().readahead)

    @property
    def verify(self) -> Optional[str]:
        """Deprecated spelling of :attr:`verify_mode` (``loader.verify`` read like the method
        ``VantixDataset.verify()``)."""
        warnings.warn(
            "VantixLoader.verify is deprecated: use verify_mode (as on VantixDataset)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.verify_mode

    def _open_native(self) -> Any:
        """The native loader; ``VantixError`` once the loader is closed."""
        if self._native is None:
            raise _native.VantixError(
                f"this VantixLoader over {self.dataset.path!r} is closed; create a new one"
            )
        return self._native

    def close(self) -> None:
        """Stop every iteration in progress (joining its prefetch thread) and release the
        loader's threads and buffers. Idempotent; using the loader afterwards raises
        ``VantixError``. Batches already handed out stay valid."""
        for it in list(self._iterators):
            it._close(closed_loader=True)
        self._iterators.clear()
        self._native = None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._native is None

    def __enter__(self) -> VantixLoader:
        self._open_native()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def rank(self) -> int:
        """This process's rank, as a pass starting now would use it (see ``rank=``)."""
        return _resolve_partition(self._rank_arg, self._world_size_arg)[0]

    @property
    def world_size(self) -> int:
        """The number of ranks, as a pass starting now would use it (see ``world_size=``)."""
        return _resolve_partition(self._rank_arg, self._world_size_arg)[1]

    def __len__(self) -> int:
        """Batches per epoch on this rank, as ``len(DataLoader)``: the whole epoch, also after
        :meth:`load_state_dict` (Lightning sizes every epoch of a resumed run from it; a
        smaller number would end the later epochs early). ``len(iter(loader))`` is what one
        pass yields: the rest of the epoch after a resume."""
        rank, world = _resolve_partition(self._rank_arg, self._world_size_arg)
        return int(self._open_native().num_batches_from(0, rank, world))

    @property
    def epoch(self) -> int:
        """The epoch being served: that of the pass in progress (until its iterator is
        exhausted, closed or dropped), else the one the next pass will serve."""
        p = self._progress
        return p.epoch if p is not None and p.alive else self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass yield ``epoch`` (as ``DistributedSampler.set_epoch``).

        Lightning and Accelerate call it for you through :attr:`sampler` at the start of every
        epoch, so their epoch counter and the loader's agree. Setting another epoch than a
        resumed state's (:meth:`load_state_dict`) starts that epoch from its beginning.

        Args:
            epoch: the epoch (``0 <= epoch < 2**64``) whose permutation and augmentations the
                next pass uses.
        """
        e = _index_arg("epoch", epoch, 0, 2**64 - 1)
        if e != self._epoch:
            self._resume_start = 0
        self._epoch = e
        self._epoch_chosen = True  # an explicit choice is never warned about

    def epoch_indices(self, epoch: int, samples_seen: int = 0) -> np.ndarray:
        """Dataset indices this rank sees in ``epoch``, in batch order (int64).

        Args:
            epoch: the epoch.
            samples_seen: start that many samples (all ranks together) into the epoch, as a
                pass resumed from a :meth:`state_dict` does.
        """
        rank, world = _resolve_partition(self._rank_arg, self._world_size_arg)
        return self._open_native().epoch_indices(epoch, samples_seen, rank, world)

    @property
    def num_threads_used(self) -> int:
        """Assembly threads a pass uses in this process: ``num_threads``, or by default the
        usable cores (CPU affinity) divided by the ranks on this node (``LOCAL_WORLD_SIZE``,
        else ``WORLD_SIZE``), at least 1. Loaders of one process with the same count share
        their threads."""
        return int(self._open_native().num_threads)

    @property
    def classes(self) -> list[str]:
        """Class names in label order, as ``ImageFolder.classes``."""
        return self.dataset.classes

    @property
    def class_to_idx(self) -> dict[str, int]:
        """``{class name: label}``, as ``ImageFolder.class_to_idx``."""
        return self.dataset.class_to_idx

    @property
    def num_samples(self) -> int:
        """Images in the dataset (all ranks)."""
        return self.dataset.num_samples

    def __iter__(self) -> _EpochIterator:
        """A pass over the next epoch: an iterator over its ``(images, labels)`` batches.

        The epoch rule (``docs/DISTRIBUTED.md``): a pass serves :attr:`epoch` (from where
        :meth:`load_state_dict` left it), and only a **complete** pass moves the loader on to
        the next epoch. A pass that is only started (``iter()`` alone, a peek such as
        ``next(iter(loader))``, a framework's check) or abandoned part-way (``break``, an
        exception) leaves the loader where that pass began, so the next pass serves the same
        epoch again from the same place, and DDP ranks can never drift onto different
        permutations. A plain loop that never calls :meth:`set_epoch` still gets a new
        permutation after every full pass; where a pass would repeat batches an abandoned pass
        already served, a ``RuntimeWarning`` says so once (call :meth:`set_epoch` to choose).

        The background thread starts at the first ``next()`` and assembles batches ahead;
        abandoning the iterator stops it.
        """
        loader = self._open_native()
        rank, world = _resolve_partition(self._rank_arg, self._world_size_arg)
        epoch, start = self._epoch, self._resume_start
        last = self._progress
        if (
            last is not None
            and not last.running
            and not last.complete
            and last.batches > 0
            and (last.epoch, last.start) == (epoch, start)
            and not self._warned_repeat
            and not self._epoch_chosen
        ):
            self._warned_repeat = True
            warnings.warn(
                f"VantixLoader: the previous pass over epoch {epoch} stopped after "
                f"{last.batches} of {last.total} batches; this pass serves epoch {epoch} again "
                "from the same place (an incomplete pass never moves the loader to the next "
                "epoch). Call loader.set_epoch(e) before each pass to choose the epoch yourself.",
                RuntimeWarning,
                stacklevel=2,
            )
        self._epoch_chosen = False
        total = loader.num_batches_from(start, rank, world)
        self._progress = progress = _Progress(self, epoch, start, total, world)

        def start_pass() -> Any:
            return loader.iter_epoch(epoch, start, rank, world)

        it = _EpochIterator(
            start_pass,
            progress,
            self.device,
            self._conversion,
            self.device_prefetch,
            self._bfloat16_bits,
        )
        self._iterators.add(it)
        if total == 0:
            progress.finish()
        return it

    def _pass_complete(self, progress: _Progress) -> None:
        """Called when the last batch of ``progress``'s pass was handed out: move on to the next
        epoch, unless the next pass was set meanwhile (``set_epoch``, ``load_state_dict``)."""
        if (self._epoch, self._resume_start) == (progress.epoch, progress.start):
            self._epoch, self._resume_start = progress.epoch + 1, 0

    def preview(
        self,
        path: PathLike,
        epoch: Optional[int] = None,
        num: Optional[int] = None,
        columns: Optional[int] = None,
        scale: Optional[int] = None,
    ) -> np.ndarray:
        """Write the first batch of an epoch, as this loader yields it, as a contact-sheet PNG.

        The images are shown after augmentation (crops, flips) and with ``Normalize`` undone
        (``mean``/``std``), each captioned ``"<label> <class>"``, so an augmentation recipe can
        be checked by eye. The loader's own epoch counter does not move.

        Args:
            path: the PNG file to write.
            epoch: the epoch whose first batch is shown (default: :attr:`epoch`, the one the
                next pass will yield, so the sheet shows exactly what training will see).
            num: show only the first ``num`` images of the batch (default: all).
            columns: tiles per row (default: a near-square grid).
            scale: integer upscaling of every tile (default: tiles at least 96 pixels wide).

        Returns:
            The dataset indices of the images shown, in tile order (int64).
        """
        from .preview import save_batch_grid

        rank, world = _resolve_partition(self._rank_arg, self._world_size_arg)
        shown = self._epoch if epoch is None else int(epoch)
        it = self._open_native().iter_epoch(shown, 0, rank, world)
        try:
            images, labels, indices = next(it)
        except StopIteration:
            raise _native.VantixError(f"{self.dataset.path}: this rank has no batch") from None
        finally:
            it.close()
        k = len(indices) if num is None else max(1, int(num))
        if self._bfloat16_bits:
            images = _bfloat16_bits_to_float32(images)
        # Batches assembled for a conversion on the device are still uint8 NHWC here.
        normalised = images.dtype != np.uint8
        layout = "NHWC" if self._conversion is not None else self.layout
        save_batch_grid(
            images[:k],
            labels[:k],
            path,
            classes=self.classes,
            mean=self.mean if normalised else None,
            std=self.std if normalised else None,
            layout=layout,
            columns=columns,
            scale=scale,
        )
        return indices[:k]

    def _sampling_key(self) -> str:
        """The resume key, computed in Rust (docs/FORMAT.md §7.11): everything besides the
        epoch and the position in it that decides what a pass yields (dataset identity, seed,
        order with block settings, indices, augmentation and output options)."""
        key: Optional[str] = self.__dict__.get("_resume_key")
        if key is None:
            key = self._resume_key = self._open_native().resume_key(self._key_augment)
        return key

    def _position(self) -> tuple[int, int]:
        """``(epoch, samples_seen)`` where iteration stands: inside the pass in progress, else
        where the next pass starts (an abandoned pass leaves no trace, see :meth:`__iter__`)."""
        p = self._progress
        if p is not None and p.running:
            seen = self._open_native().samples_seen_after(p.start, p.batches, p.world_size)
            return p.epoch, int(seen)
        return self._epoch, self._resume_start

    def state_dict(self) -> dict[str, Any]:
        """Where iteration stands, for an exact resume with :meth:`load_state_dict`.

        Take it between batches (as with a model checkpoint): during a pass it is the position
        inside that pass; between passes it is where the next pass starts (a pass that was
        abandoned part-way counts for nothing, as in :meth:`__iter__`). Under DDP every rank's
        state is the same, so the one saved by rank 0 serves all ranks. ``samples_seen``
        counts the samples of the epoch consumed by all ranks together.

        Lightning saves and restores it by itself (the loader has ``state_dict``); with
        Accelerate call ``accelerator.register_for_checkpointing(loader)`` once, then
        ``save_state`` / ``load_state`` include it.
        """
        epoch, seen = self._position()
        p = self._progress
        world = p.world_size if p is not None and p.running else self.world_size
        return {
            "version": 1,
            "epoch": epoch,
            "samples_seen": seen,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_samples": self.num_samples,
            "dataset": self.dataset.identity,
            "sampling": self._sampling_key(),
            "batch_size": self.batch_size,
            "world_size": world,
            "drop_last": self.drop_last,
            "ddp_remainder": self.ddp_remainder,
            "order": self.resolved_order,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`, also in a new process.

        Args:
            state: a dict returned by :meth:`state_dict` (possibly saved and loaded with
                ``torch.save`` / ``torch.load``).

        The next pass yields exactly the batches the interrupted run had left in that epoch
        (byte-identical, augmentation included), and the epochs after it match too. Resuming
        with another ``world_size`` (or ``batch_size``) is supported: the ranks split what is
        left of the epoch's permutation, so over all ranks every sample of the epoch is still
        seen exactly once (plus the usual ``ddp_remainder`` padding at the end).

        Raises:
            VantixError: the state comes from another dataset, seed or shuffle setting, or a
                loader that read in another order (also ``order="auto"`` resolved otherwise on
                another machine: ``state["order"]`` is the order it took), whose permutation
                would differ.
        """
        try:
            version, epoch, seen = state["version"], state["epoch"], state["samples_seen"]
        except (KeyError, TypeError) as e:
            raise _ArgumentValueError(f"not a VantixLoader state_dict: missing {e}") from None
        if version != 1:
            raise _ArgumentValueError(f"unsupported state_dict version {version!r}")
        if state.get("dataset") != self.dataset.identity:
            raise _ArgumentValueError(
                f"cannot resume: the state_dict comes from another dataset (identity "
                f"{state.get('dataset')!r}, this loader reads {self.dataset.path!r}, identity "
                f"{self.dataset.identity!r})"
            )
        for key in ("seed", "shuffle", "num_samples"):
            if state.get(key) != getattr(self, key):
                raise _ArgumentValueError(
                    f"cannot resume: state_dict has {key}={state.get(key)!r} but this loader has "
                    f"{key}={getattr(self, key)!r}; the epoch's permutation would differ"
                )
        saved_order = state.get("order", self.resolved_order)
        if saved_order != self.resolved_order:
            how = (
                f" (order='auto' resolved to {self.resolved_order!r} here, from this machine's "
                "memory)"
                if self.order == "auto"
                else ""
            )
            raise _ArgumentValueError(
                f"cannot resume: the state_dict was saved by a loader reading in "
                f"{saved_order!r} order, this loader reads in {self.resolved_order!r} "
                f"order{how}; the epoch's permutation would differ. Pass order={saved_order!r} "
                "to continue the same epoch"
            )
        if state.get("sampling") != self._sampling_key():
            raise _ArgumentValueError(
                "cannot resume: the state_dict comes from a loader with other indices, order, "
                "block_size/block_window or augmentation options (its resume key differs); "
                "pass the same options to continue the same epoch"
            )
        if not (isinstance(epoch, int) and epoch >= 0 and isinstance(seen, int) and seen >= 0):
            raise _ArgumentValueError(f"invalid state_dict position: epoch={epoch}, seen={seen}")
        self._epoch, self._resume_start, self._progress = epoch, seen, None
        self._epoch_chosen = True

    @property
    def batch_sampler(self) -> Any:
        """Not available: a ``VantixLoader`` draws its batches in Rust, not through a
        ``BatchSampler``. Raises ``AttributeError`` (so ``getattr(loader, "batch_sampler",
        None)`` is ``None``) with what to use instead, e.g. for Accelerate's
        ``skip_first_batches``."""
        raise _NoBatchSampler(
            "VantixLoader has no batch_sampler, so accelerate's skip_first_batches (and anything "
            "that rebuilds a DataLoader from its sampler) cannot wrap it. To continue mid-epoch, "
            "use loader.state_dict() / loader.load_state_dict(state) (with Accelerate: "
            "accelerator.register_for_checkpointing(loader), then save_state / load_state), "
            "which skip exactly the batches already served without reading them."
        )

    def __getstate__(self) -> dict[str, Any]:
        """Pickled as its options and position (epoch and samples seen), like
        :class:`VantixDataset` by path: the unpickled loader reopens the dataset and continues
        exactly where this one stands (spawn-based launchers, ``ddp_spawn``)."""
        epoch, seen = self._position()
        return {"args": self._init_args, "epoch": epoch, "samples_seen": seen}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["args"])  # type: ignore[misc]
        self._epoch, self._resume_start = state["epoch"], state["samples_seen"]

    def __repr__(self) -> str:
        if self._native is None:
            return f"<closed VantixLoader over {self.dataset.path!r}>"
        try:
            rank, world = _resolve_partition(self._rank_arg, self._world_size_arg)
            where = f"rank={rank}, world_size={world}"
        except _native.VantixError:
            where = "rank=?, world_size=?"
        return (
            f"VantixLoader({self.dataset.path!r}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last}, {where})"
        )


class _NoBatchSampler(_native.VantixError, AttributeError):
    """``VantixLoader.batch_sampler``: there is none (see its docstring)."""


class _EpochSampler:
    """``loader.sampler``: the hook Lightning and Accelerate call at the start of every epoch
    (``sampler.set_epoch(e)``, as on a ``DistributedSampler``), so that their epoch counter and
    the loader's agree. Iterating it yields the dataset indices this rank sees in the next
    pass, in order; ``len()`` is their number."""

    def __init__(self, loader: VantixLoader) -> None:
        self._loader = weakref.ref(loader)

    def _get(self) -> VantixLoader:
        loader = self._loader()
        if loader is None:
            raise _native.VantixError("the VantixLoader of this sampler is gone")
        return loader

    @property
    def epoch(self) -> int:
        """The loader's :attr:`VantixLoader.epoch`."""
        return self._get().epoch

    def set_epoch(self, epoch: int) -> None:
        """``loader.set_epoch(epoch)``."""
        self._get().set_epoch(epoch)

    def _next_pass(self) -> np.ndarray:
        loader = self._get()
        return loader.epoch_indices(loader._epoch, loader._resume_start)

    def __iter__(self) -> Iterator[int]:
        return iter(self._next_pass().tolist())

    def __len__(self) -> int:
        return len(self._next_pass())


class _Progress:
    """How far one pass has got (shared by a loader and its iterator). ``running`` until the
    pass completes (its last batch handed out) or is abandoned (closed or dropped); ``alive``
    until its iterator is exhausted (``StopIteration``), closed or dropped."""

    __slots__ = (
        "alive",
        "batches",
        "complete",
        "epoch",
        "loader",
        "running",
        "start",
        "total",
        "world_size",
    )

    def __init__(
        self, loader: VantixLoader, epoch: int, start: int, total: int, world_size: int
    ) -> None:
        self.loader = weakref.ref(loader)
        self.epoch, self.start, self.total, self.world_size = epoch, start, total, world_size
        self.batches = 0
        self.running, self.complete, self.alive = True, False, True

    def advance(self) -> None:
        self.batches += 1
        if self.batches >= self.total:
            self.finish()

    def finish(self) -> None:
        """The whole pass was handed out: the loader moves on to the next epoch."""
        if self.running:
            self.running, self.complete = False, True
            loader = self.loader()
            if loader is not None:
                loader._pass_complete(self)

    def abandon(self) -> None:
        self.running = self.alive = False


class _EpochIterator:
    """One pass of batches (``iter(loader)``; ``vantix_read::EpochIterator`` behind it). Its
    prefetch thread starts at the first ``next()``; dropping the iterator (or :meth:`close`)
    stops it."""

    def __init__(
        self,
        start: Callable[[], Any],
        progress: _Progress,
        device: Any = None,
        conversion: Any = None,
        device_prefetch: int = 2,
        bfloat16: bool = False,
    ) -> None:
        self._start: Optional[Callable[[], Any]] = start
        self._native: Any = None
        self._progress = progress
        self._device = device
        self._conversion = conversion
        self._device_prefetch = device_prefetch
        self._bfloat16 = bfloat16  # bit patterns from Rust, seen as torch.bfloat16
        # With a device: the side-stream copier (vantix._device.DeviceFeeder), made at the
        # first batch; it holds each pinned host batch until its copy has finished.
        self._feeder: Any = None
        self.epoch = progress.epoch
        self._torch = _torch()
        self._loader_closed = False
        self._closed = False
        self._start_lock = threading.Lock()

    def __len__(self) -> int:
        return self._progress.total - self._progress.batches

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self

    def __next__(self) -> tuple[Any, Any]:
        if self._loader_closed:
            raise _native.VantixError("the VantixLoader of this iterator was closed")
        if self._closed:
            raise StopIteration
        try:
            if self._device is None:
                batch = self._next_host()
            else:
                if self._feeder is None:
                    from ._device import DeviceFeeder

                    self._feeder = DeviceFeeder(
                        self._host_batches(), self._device, self._conversion, self._device_prefetch
                    )
                batch = next(self._feeder)
        except StopIteration:
            self._drain()
            if self._loader_closed:  # closed from another thread while this one waited
                raise _native.VantixError("the VantixLoader of this iterator was closed") from None
            if not self._closed:
                self._progress.finish()
            self._progress.alive = False
            raise
        self._progress.advance()
        return batch

    def _next_host(self) -> tuple[Any, Any]:
        """The next batch from Rust, as torch tensors (numpy arrays without torch);
        StopIteration at the end of the pass."""
        if self._native is None:
            with self._start_lock:  # two threads sharing the iterator start one pass
                if self._native is None:
                    if self._start is None:
                        raise StopIteration
                    self._native, self._start = self._start(), None
        images, labels, _indices = next(self._native)
        torch = self._torch
        if torch is None:
            return images, labels
        # channels_last batches come as an NCHW-shaped view of NHWC memory: torch.channels_last.
        images, labels = torch.from_numpy(images), torch.from_numpy(labels)
        if self._bfloat16:
            images = images.view(torch.bfloat16)
        return images, labels

    def _host_batches(self) -> Iterator[tuple[Any, Any]]:
        """The host batches of the pass, for the device feeder."""
        while True:
            try:
                batch = self._next_host()
            except StopIteration:
                return
            yield batch

    def _drain(self) -> None:
        """Wait for the copies in flight and release their host buffers."""
        if self._feeder is not None:
            self._feeder.drain()

    def close(self) -> None:
        """Stop the background thread now (from any thread). A pass closed before its end
        leaves the loader where the pass began."""
        self._close()

    def _close(self, closed_loader: bool = False) -> None:
        self._loader_closed = self._loader_closed or closed_loader
        self._closed = True
        self._start = None
        self._progress.abandon()
        if self._feeder is not None:
            self._feeder.close()  # the batches not handed out; host buffers once copied
        if self._native is not None:
            self._native.close()

    def __del__(self) -> None:
        try:
            self._progress.abandon()
            self._drain()
        except Exception:
            pass
