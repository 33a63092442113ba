//! Mutations of a valid dataset (raw, zstd, or zstd with a dictionary in each shard; manifest
//! and two shards) driven by the fuzzer's bytes: the first byte picks the codec, then every 6 bytes are one mutation (bit flip, byte
//! set, truncation, extension, insertion, deletion, extreme u32/u64, extreme number in the
//! JSON; see `vantix_read::testing::mutate`). The damaged dataset is written to a scratch
//! directory, opened, read (every record, copied, zero-copy and checked), and verified: it must
//! fail with an error or read back exactly the packed data. A panic is a finding.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vantix_read::testing::{
    exercise_files, mutate, tiny_dataset, tiny_dataset_with_dictionary, TinyDataset,
};
use vantix_read::{Codec, Filter};

struct Fixture {
    dir: tempfile::TempDir,
    raw: TinyDataset,
    zstd: TinyDataset,
    dictionary: TinyDataset,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let f = FIXTURE.get_or_init(|| Fixture {
        // In memory when possible: every input rewrites the dataset's files.
        dir: tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("scratch directory"),
        raw: tiny_dataset(Codec::Raw),
        zstd: tiny_dataset(Codec::Zstd {
            level: 3,
            filter: Filter::Paeth,
        }),
        dictionary: tiny_dataset_with_dictionary(3, Filter::Up),
    });
    let Some((&codec, ops)) = data.split_first() else {
        return;
    };
    let pristine = match codec % 3 {
        0 => &f.raw,
        1 => &f.zstd,
        _ => &f.dictionary,
    };
    let mut files = pristine.files.clone();
    mutate(&mut files, ops);
    exercise_files(f.dir.path(), &files, pristine).expect("scratch directory is writable");
});
