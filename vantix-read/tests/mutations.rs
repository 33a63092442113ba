//! Damaged datasets: seeded random mutations of a valid dataset (the bounded version of the
//! `fuzz/` targets), every single-bit flip and every truncation of a shard, and shard paths that
//! try to leave the dataset. A damaged dataset must fail to open or fail verification, with an
//! error, or read back exactly the packed data; never panic or read outside a file.

use std::collections::BTreeMap;
use std::path::Path;

use vantix_read::format::MANIFEST_NAME;
use vantix_read::testing::tiny_dataset_with_dictionary;
use vantix_read::testing::{exercise, exercise_files, mutate, parse_untrusted, tiny_dataset};
use vantix_read::testing::{Outcome, TinyDataset};
use vantix_read::{Codec, Dataset, Error, Filter};

/// Mutations per codec in `random_mutations_never_panic`.
const MUTATIONS: u64 = 10_000;

/// xorshift64*: a fixed, dependency-free stream of test bytes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A scratch directory in memory (`/dev/shm`) when there is one: the tests rewrite small files
/// tens of thousands of times, which a disk file system can make slow.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

fn kind(o: &Outcome) -> &'static str {
    match o {
        Outcome::RejectedAtOpen(_) => "rejected at open",
        Outcome::RejectedByVerify(_) => "rejected by verify",
        Outcome::Intact => "intact",
    }
}

/// `raw`, `zstd` or `zstd+FILTER`: how a test names a codec in what it prints.
fn label(codec: Codec) -> String {
    match codec.filter() {
        Filter::None => codec.name().to_string(),
        f => format!("{}+{}", codec.name(), f.name()),
    }
}

fn codecs() -> [Codec; 3] {
    [
        Codec::Raw,
        Codec::Zstd {
            level: 3,
            filter: Filter::None,
        },
        Codec::Zstd {
            level: 3,
            filter: Filter::Up,
        },
    ]
}

/// Every codec's tiny dataset, and zstd+up with a dictionary: (name, seed, dataset).
fn variants() -> Vec<(String, u64, TinyDataset)> {
    let mut v: Vec<(String, u64, TinyDataset)> = codecs()
        .into_iter()
        .map(|c| (label(c), c.id() as u64, tiny_dataset(c)))
        .collect();
    v.push((
        "zstd+up+dictionary".into(),
        3,
        tiny_dataset_with_dictionary(3, Filter::Up),
    ));
    v
}

#[test]
fn the_tiny_dataset_is_valid() {
    for (_, _, t) in variants() {
        let dir = scratch();
        t.write_to(dir.path()).unwrap();
        assert!(matches!(exercise(dir.path(), &t), Outcome::Intact));
    }
}

#[test]
fn random_mutations_never_panic() {
    for (name, seed, pristine) in variants() {
        let dir = scratch();
        let mut rng = Rng(0x5eed_0000 + seed);
        let mut tally: BTreeMap<&str, u64> = BTreeMap::new();
        for _ in 0..MUTATIONS {
            let mut files = pristine.files.clone();
            let count = 1 + rng.next() as usize % 3;
            let mut ops = rng.bytes(6 * count);
            // Aim half of the offsets at the first 256 bytes (header, tables, JSON head).
            for op in ops.chunks_exact_mut(6) {
                if op[4] & 1 == 0 {
                    op[3] = 0;
                    op[4] = 0;
                }
            }
            mutate(&mut files, &ops);
            let outcome = exercise_files(dir.path(), &files, &pristine).unwrap();
            if files == pristine.files {
                assert!(matches!(outcome, Outcome::Intact));
            }
            *tally.entry(kind(&outcome)).or_default() += 1;
        }
        println!("{MUTATIONS} mutations of a {name} dataset: {tally:?}");
        assert_eq!(tally.values().sum::<u64>(), MUTATIONS);
        assert!(tally["rejected at open"] > MUTATIONS / 4);
    }
}

/// Flip every bit of the header, the tables and the data of a shard, and one bit of every
/// seventh byte of the zero padding between tables and data, one flip at a time.
fn flip_every_bit(path: &Path, dir: &Path, t: &TinyDataset) -> u64 {
    let good = std::fs::read(path).unwrap();
    let ds = Dataset::open(dir).unwrap();
    let h = vantix_read::format::ShardHeader::decode(&good, good.len() as u64, "s").unwrap();
    drop(ds);
    let tables_end = good[..h.data_offset as usize]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |p| p + 1);
    let mut flips = 0;
    for off in 0..good.len() {
        let padding = off >= tables_end && off < h.data_offset as usize;
        let bits = if padding {
            usize::from(off % 7 == 0)
        } else {
            8
        };
        for bit in 0..bits {
            let mut bad = good.clone();
            bad[off] ^= 1 << bit;
            std::fs::write(path, &bad).unwrap();
            match exercise(dir, t) {
                Outcome::Intact => {
                    panic!("{}: flip of bit {bit} at {off} undetected", path.display())
                }
                Outcome::RejectedAtOpen(_) | Outcome::RejectedByVerify(_) => flips += 1,
            }
        }
    }
    std::fs::write(path, &good).unwrap();
    flips
}

#[test]
fn every_single_bit_flip_in_a_shard_is_detected() {
    for (name, _, t) in variants() {
        let dir = scratch();
        t.write_to(dir.path()).unwrap();
        let flips = flip_every_bit(&dir.path().join("shard-00001.vxs"), dir.path(), &t);
        println!("{flips} single-bit flips of a {name} shard, all detected");
    }
}

#[test]
fn every_truncation_and_extension_of_a_shard_fails_at_open() {
    for (_, _, t) in variants() {
        let dir = scratch();
        t.write_to(dir.path()).unwrap();
        let path = dir.path().join("shard-00000.vxs");
        let good = std::fs::read(&path).unwrap();
        for len in (0..good.len()).chain([good.len() + 1, good.len() + 4096]) {
            let mut bad = good.clone();
            bad.resize(len, 0);
            std::fs::write(&path, &bad).unwrap();
            match Dataset::open(dir.path()) {
                Err(e) => assert!(e.to_string().contains("shard-00000.vxs"), "{e}"),
                Ok(_) => panic!("a shard cut to {len} of {} bytes opened", good.len()),
            }
        }
        std::fs::write(&path, &good).unwrap();
        let m = dir.path().join(MANIFEST_NAME);
        let good = std::fs::read(&m).unwrap();
        for len in 0..good.len() {
            std::fs::write(&m, &good[..len]).unwrap();
            assert!(
                Dataset::open(dir.path()).is_err(),
                "manifest cut to {len} opened"
            );
        }
    }
}

#[test]
fn a_damaged_dictionary_is_an_error_naming_the_shard() {
    let t = tiny_dataset_with_dictionary(3, Filter::Up);
    assert_eq!(t.files[2].0, "shard-00001.vxs");
    let shard = &t.files[2].1;
    let h = vantix_read::format::ShardHeader::decode(shard, shard.len() as u64, "s").unwrap();
    assert_eq!((h.version, h.dict_size), (3, 256));
    let dir = scratch();
    t.write_to(dir.path()).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    assert_eq!(ds.shards()[1].dictionary_size(), 256);
    drop(ds);
    // One byte of the dictionary changed: refused at open, by its CRC.
    let path = dir.path().join("shard-00001.vxs");
    let mut bad = shard.clone();
    bad[h.dict_offset as usize + 100] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    let e = Dataset::open(dir.path()).err().expect("damaged dictionary");
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("shard-00001.vxs") && msg.contains("dictionary"),
        "{msg}"
    );
    // A different dictionary with a matching CRC (a shard copied with the wrong dictionary):
    // the records no longer decompress to the packed pixels, and reading says so.
    let other = tiny_dataset_with_dictionary(3, Filter::Up);
    let mut swapped = shard.clone();
    let d = h.dict_offset as usize..h.dict_offset as usize + 256;
    swapped[d.clone()]
        .iter_mut()
        .for_each(|b| *b = b.wrapping_add(1));
    let dict_crc = crc32fast::hash(&swapped[d]);
    swapped[112..116].copy_from_slice(&dict_crc.to_le_bytes());
    let crc = crc32fast::hash(&swapped[..124]);
    swapped[124..128].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &swapped).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    let mut px = vec![0u8; ds.record_bytes()];
    let read = ds.read_into(5, &mut px);
    assert!(
        read.is_err() || px != other.images[5],
        "wrong dictionary went unnoticed"
    );
    assert!(
        ds.verify().is_err(),
        "the manifest's xxh3 covers the dictionary"
    );
}

#[test]
fn arbitrary_bytes_never_panic_the_parsers() {
    let mut rng = Rng(42);
    let t = tiny_dataset(Codec::Raw);
    let shard = &t.files[1].1;
    for i in 0..20_000u64 {
        let n = (rng.next() % 300) as usize;
        let mut bytes = if i % 2 == 0 {
            rng.bytes(n)
        } else {
            shard[..n.min(shard.len())].to_vec()
        };
        if let Some(b) = bytes.get_mut(n / 2) {
            *b ^= rng.next() as u8;
        }
        let _ = parse_untrusted(&bytes);
    }
}

fn set_shard_name(dir: &Path, from: &str, to: &str) {
    let m = dir.join(MANIFEST_NAME);
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replace(&format!("\"{from}\""), &format!("{to:?}"))).unwrap();
}

#[test]
fn shard_paths_cannot_leave_the_dataset() {
    let t = tiny_dataset(Codec::Raw);
    let outside = scratch();
    std::fs::write(outside.path().join("secret.vxs"), &t.files[1].1).unwrap();
    let escapes = [
        "../secret.vxs".to_string(),
        outside.path().join("secret.vxs").display().to_string(),
        "sub/shard-00000.vxs".into(),
        "..".into(),
        ".".into(),
        "".into(),
        "~root".into(),
        "shard\\x.vxs".into(),
    ];
    for name in escapes {
        let dir = scratch();
        t.write_to(dir.path()).unwrap();
        set_shard_name(dir.path(), "shard-00000.vxs", &name);
        let e = Dataset::open(dir.path())
            .err()
            .expect("an escaping shard path opened");
        assert!(e.to_string().contains("plain file name"), "{name}: {e}");
    }
    // A symlink in place of a shard is refused, wherever it points.
    let dir = scratch();
    t.write_to(dir.path()).unwrap();
    let shard = dir.path().join("shard-00000.vxs");
    std::fs::rename(&shard, outside.path().join("real.vxs")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("real.vxs"), &shard).unwrap();
    let e = Dataset::open(dir.path())
        .err()
        .expect("a symlinked shard opened");
    assert!(
        matches!(e, Error::Corrupt { .. }) && e.to_string().contains("symlink"),
        "{e}"
    );
    // So is a directory, and a FIFO (which would block a plain open).
    for make in ["dir", "fifo"] {
        let dir = scratch();
        t.write_to(dir.path()).unwrap();
        let shard = dir.path().join("shard-00000.vxs");
        std::fs::remove_file(&shard).unwrap();
        if make == "dir" {
            std::fs::create_dir(&shard).unwrap();
        } else {
            let c = std::ffi::CString::new(shard.as_os_str().as_encoded_bytes()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }
        let e = Dataset::open(dir.path())
            .err()
            .expect("not a regular file, but opened");
        assert!(e.to_string().contains("regular file"), "{make}: {e}");
    }
}
