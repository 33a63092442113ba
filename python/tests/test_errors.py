"""The exception hierarchy (docs/ERRORS.md): each failure raises its own class under
``VantixError``, and the builtin class a Python user would catch (``FileNotFoundError``,
``ValueError``, ...) where one fits. Every test checks the class, not just "some VantixError"."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image_folder
from PIL import Image

import vantix
from vantix import VantixDataset, VantixLoader

#: Every public exception class and the builtin classes it must also be.
CLASSES = {
    "VantixError": (Exception,),
    "VantixValueError": (ValueError,),
    "VantixTypeError": (TypeError,),
    "VantixOSError": (OSError,),
    "VantixFileNotFoundError": (FileNotFoundError,),
    "VantixFileExistsError": (FileExistsError,),
    "VantixPermissionError": (PermissionError,),
    "VantixIsADirectoryError": (IsADirectoryError,),
    "VantixNotADirectoryError": (NotADirectoryError,),
    "VantixMemoryError": (MemoryError,),
    "CorruptDataError": (),
    "ChecksumMismatchError": (),
    "DataChangedError": (),
    "BadImageError": (),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("src") / "src", 24, size=(16, 16))


@pytest.fixture
def packed(folder, tmp_path):
    """A fresh raw pack of 24 16x16 images in 3 shards (each test may damage its own)."""
    out = tmp_path / "d.vtx"
    vantix.pack(folder, out, size=16, shard_size=8 * 16 * 16 * 3, num_threads=1)
    return out


def _shard(packed: Path, k: int = 0) -> Path:
    return sorted(packed.glob("shard-*.vxs"))[k]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_every_class_is_a_vantix_error_exported_and_documented():
    docs = (Path(__file__).parents[2] / "docs" / "ERRORS.md").read_text()
    for name, builtins in CLASSES.items():
        cls = getattr(vantix, name)
        assert cls is getattr(vantix._native, name) and name in vantix.__all__
        assert issubclass(cls, vantix.VantixError), name
        for b in builtins:
            assert issubclass(cls, b), (name, b)
        assert cls.__module__ == "vantix" and cls.__doc__, name
        assert f"`{name}`" in docs, name
    for name in ("CorruptDataError", "ChecksumMismatchError", "DataChangedError", "BadImageError"):
        assert not issubclass(getattr(vantix, name), (ValueError, OSError)), name
    assert issubclass(vantix.ChecksumMismatchError, vantix.CorruptDataError)
    for name in ("FileNotFound", "FileExists", "Permission", "IsADirectory", "NotADirectory"):
        assert issubclass(getattr(vantix, f"Vantix{name}Error"), vantix.VantixOSError)
    # The names the Python checks raise are the public classes.
    from vantix import data

    assert data._ArgumentValueError is vantix.VantixValueError
    assert data._ArgumentTypeError is vantix.VantixTypeError
    assert issubclass(data._NoBatchSampler, (vantix.VantixError, AttributeError))


def test_missing_dataset_is_file_not_found_with_errno_and_filename(tmp_path):
    missing = tmp_path / "nope.vtx"
    for open_it in (VantixDataset, VantixLoader):
        with pytest.raises(FileNotFoundError, match="does not exist") as e:
            open_it(missing)
        assert type(e.value) is vantix.VantixFileNotFoundError
        assert e.value.errno == errno.ENOENT and e.value.filename == str(missing)
    a_file = tmp_path / "file.vtx"
    a_file.write_text("not a dataset")
    with pytest.raises(NotADirectoryError) as e:
        VantixDataset(a_file)
    assert type(e.value) is vantix.VantixNotADirectoryError
    assert e.value.errno == errno.ENOTDIR and e.value.filename == str(a_file)
    # The packer's missing source folder too.
    with pytest.raises(FileNotFoundError) as e:
        vantix.pack(tmp_path / "no-src", tmp_path / "o.vtx", size=16)
    assert type(e.value) is vantix.VantixFileNotFoundError
    assert e.value.errno == errno.ENOENT and e.value.filename == str(tmp_path / "no-src")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_manifest_is_permission_error(packed):
    manifest = packed / "manifest.json"
    os.chmod(manifest, 0)
    try:
        with pytest.raises(PermissionError) as e:
            VantixDataset(packed)
    finally:
        os.chmod(manifest, 0o644)
    assert type(e.value) is vantix.VantixPermissionError
    assert e.value.errno == errno.EACCES and e.value.filename == str(manifest)


def test_bad_option_value_is_value_error(packed, folder, tmp_path):
    for bad in (dict(prefetch=0), dict(num_threads=0), dict(rank=2, world_size=2)):
        with pytest.raises(ValueError) as e:
            VantixLoader(packed, **bad)
        assert type(e.value) is vantix.VantixValueError, bad
    # Raised by Rust (Error::Invalid) through the binding.
    with pytest.raises(ValueError, match="out of range") as e:
        VantixDataset(packed)._native.get(10**6)
    assert type(e.value) is vantix.VantixValueError
    with pytest.raises(ValueError, match="num_threads must be at least 1") as e:
        vantix.pack(folder, tmp_path / "o.vtx", size=16, num_threads=0)
    assert type(e.value) is vantix.VantixValueError


def test_wrong_option_type_is_type_error(packed):
    for bad in (dict(batch_size=8.0), dict(shuffle=1), dict(seed="3")):
        with pytest.raises(TypeError) as e:
            VantixLoader(packed, **bad)
        assert type(e.value) is vantix.VantixTypeError, bad


def test_corrupt_manifest_and_shard_are_corrupt_data_not_value_errors(packed):
    manifest = packed / "manifest.json"
    good = manifest.read_bytes()
    manifest.write_text('{"not": "a vantix manifest"}')
    with pytest.raises(vantix.CorruptDataError) as e:
        VantixDataset(packed)
    assert type(e.value) is vantix.CorruptDataError and not isinstance(e.value, ValueError)
    assert e.value.filename == str(manifest)
    manifest.write_bytes(good)
    shard = _shard(packed)
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(vantix.CorruptDataError, match=r"shard-00000\.vxs") as e:
        VantixDataset(packed)
    assert type(e.value) is vantix.CorruptDataError and not isinstance(e.value, ValueError)
    assert Path(e.value.filename).name == "shard-00000.vxs"


def test_checksum_mismatch_is_its_own_corrupt_data_error(packed):
    shard = _shard(packed)
    _flip(shard, os.path.getsize(shard) - 7)  # inside the shard's last record's pixels
    ds = VantixDataset(packed)  # lengths are intact: opening works
    with pytest.raises(vantix.ChecksumMismatchError, match=r"shard-00000\.vxs") as e:
        vantix.verify(packed)
    assert isinstance(e.value, vantix.CorruptDataError) and not isinstance(e.value, ValueError)
    assert Path(e.value.filename).name == "shard-00000.vxs"
    with pytest.raises(vantix.ChecksumMismatchError):
        ds.verify()
    with pytest.raises(vantix.ChecksumMismatchError):
        VantixDataset(packed, verify="record")[7]


def test_shard_changed_while_open_is_data_changed(packed):
    ds = VantixDataset(packed)
    # Batches 4 and 5 read the last shard; with prefetch=1 they are not assembled yet.
    it = iter(VantixLoader(packed, batch_size=4, shuffle=False, prefetch=1))
    next(it)
    shard = _shard(packed, 2)
    st = os.stat(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    with pytest.raises(vantix.DataChangedError, match="modification time changed") as e:
        ds[20]
    assert type(e.value) is vantix.DataChangedError and not isinstance(e.value, ValueError)
    assert Path(e.value.filename).name == "shard-00002.vxs"
    with pytest.raises(vantix.DataChangedError, match="shard-00002"):
        for _ in it:
            pass


def test_bad_image_in_strict_mode_is_bad_image_error(folder, tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "a" / "0.png")
    (src / "a" / "empty.jpg").write_bytes(b"")
    with pytest.raises(vantix.BadImageError, match="empty.jpg") as e:
        vantix.pack(src, tmp_path / "o.vtx", size=8, strict=True)
    assert type(e.value) is vantix.BadImageError and not isinstance(e.value, ValueError)
    assert e.value.filename == str(src / "a" / "empty.jpg")


def test_exceptions_pickle_to_the_same_class(tmp_path):
    """A DataLoader worker or a multiprocessing pool sends exceptions back pickled."""
    with pytest.raises(vantix.VantixError) as e:
        VantixDataset(tmp_path / "nope.vtx")
    back = pickle.loads(pickle.dumps(e.value))
    assert type(back) is vantix.VantixFileNotFoundError
    assert (back.errno, back.filename, str(back)) == (e.value.errno, e.value.filename, str(e.value))
    err = vantix.CorruptDataError("x: bad")
    assert type(pickle.loads(pickle.dumps(err))) is vantix.CorruptDataError
