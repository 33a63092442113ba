"""The byte format, pinned: packs of one fixed generated tree must keep these exact shard bytes.

A refactor of the codec, the shard table writer or the packer must leave every byte of a shard
as it was (docs/FORMAT.md is normative, and datasets packed by an earlier version must stay
readable and identical). The hashes were taken right after the codec moved into
``vantix-read/src/codec.rs``, a version whose packs were checked byte-identical to the previous
version's (raw, zstd with every filter, trained dictionaries, grey, appends and merged parts).
A deliberate format change updates them in the same commit, with a new format version
(docs/FORMAT.md §9). Shards hold no paths or times, so the hashes do not depend on where the
test runs.
"""

import hashlib

import pytest
from conftest import write_image_folder

import vantix

CONFIGS = {
    "raw": dict(codec="raw"),
    "zstd_up": dict(codec="zstd", filter="up", dictionary="off"),
    "zstd_paeth_dictionary": dict(codec="zstd", filter="paeth", dictionary="on"),
    "grey_zstd_left": dict(codec="zstd", filter="left", channels=1, dictionary="off"),
}

SHARD_SHA256 = {
    ("raw", "shard-00000.vxs"): "0698d50d0dea21f07b613c3fcd02093fe358d861b40a175658244279cad96bf4",
    (
        "zstd_up",
        "shard-00000.vxs",
    ): "939283afea58118592534872929290168f73ec91190d80e0cae631837154bf7c",
    (
        "zstd_paeth_dictionary",
        "shard-00000.vxs",
    ): "f2c9713d82078d98c2424d423be3f0a3761ac2eb146225ad1488e40f214ceb92",
    (
        "grey_zstd_left",
        "shard-00000.vxs",
    ): "46d02c195eba6b5ad6a563a79fe32b6484f992f25d741e3afe928a2e9c9c31b7",
}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return write_image_folder(
        tmp_path_factory.mktemp("golden") / "train", 24, size=(23, 19), seed=7
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shard_bytes_are_pinned(src, tmp_path, name):
    out = tmp_path / f"{name}.vtx"
    vantix.pack(src, out, size=(16, 20), num_threads=2, progress=False, **CONFIGS[name])
    got = {(name, f.name): hashlib.sha256(f.read_bytes()).hexdigest() for f in out.glob("shard-*")}
    want = {k: v for k, v in SHARD_SHA256.items() if k[0] == name}
    assert got == want
