//! Writing shards. Records arrive in dataset order as pixels; the writer encodes them with the
//! record codec ([`vantix_read::codec`]: filter, zstd, dictionary), in parallel on the caller's
//! rayon pool, and lays each shard out with [`ShardTable`]. A shard's data is streamed to a
//! scratch file while its tables grow in memory; when the shard is full the final file is
//! written as header, tables, padding and data, and hashed on the way.
//!
//! With a trained zstd dictionary ([`ShardWriter::with_dictionary`]) the first records are
//! held back, a dictionary is trained on them (filtered), and every record is then compressed
//! with it. Each shard stores a copy of the dictionary, so a shard stays readable on its own.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use vantix_read::codec::{RecordEncoder, ShardTable, SCRATCH_SUFFIX};
use vantix_read::format::{Codec, Geometry, ShardInfo, DICTIONARY_VERSION};
use vantix_read::{Error, Result};
use xxhash_rust::xxh3::Xxh3;

use crate::outdir::Dir;

/// File name of shard `k` (the record codec's, [`vantix_read::codec::shard_name`]).
pub use vantix_read::codec::shard_name;

/// Writes records, in order, into shard files of about `shard_size` bytes of data each
/// ([`shard_name`]s in the output directory), each record encoded with the dataset's codec (and
/// dictionary); [`finish`](Self::finish) gives the manifest's description of every shard.
pub struct ShardWriter {
    /// Where shards are written, through its descriptor.
    dir: Arc<Dir>,
    geometry: Geometry,
    codec: Codec,
    shard_size: u64,
    /// Number of the first shard file this writer creates (`shard_name`).
    first_shard: usize,
    next_index: u64,
    shards: Vec<ShardInfo>,
    current: Option<OpenShard>,
    /// Encodes every record written (with the dictionary, once there is one).
    encoder: RecordEncoder,
    /// Set while records are held back to train a dictionary on.
    training: Option<Training>,
}

/// When to compress zstd records with a dictionary trained at pack time (`--dictionary`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DictionaryMode {
    /// For records of at most [`DICT_AUTO_MAX_RECORD`] bytes (small images, where per-record
    /// frames compress worst).
    #[default]
    Auto,
    /// Always (with the zstd codec).
    On,
    /// Never.
    Off,
}

/// Largest record (bytes) that `auto` compresses with a dictionary: 64x64 RGB is 12 KiB.
pub const DICT_AUTO_MAX_RECORD: usize = 16 << 10;

impl DictionaryMode {
    /// Every mode, in the order `FromStr`'s error lists them.
    pub const ALL: [DictionaryMode; 3] = [Self::Auto, Self::On, Self::Off];
    /// The mode's name on the CLI (`--dictionary`) and in Python: `"auto"`, `"on"` or `"off"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        }
    }
    /// Whether a pack with `codec` and records of `record_bytes` bytes uses a dictionary.
    pub fn applies(self, codec: Codec, record_bytes: usize) -> bool {
        matches!(codec, Codec::Zstd { .. })
            && match self {
                Self::Auto => record_bytes <= DICT_AUTO_MAX_RECORD,
                Self::On => true,
                Self::Off => false,
            }
    }
}

impl std::str::FromStr for DictionaryMode {
    type Err = Error;
    /// A mode by its [`name`](DictionaryMode::name); the error lists every mode.
    fn from_str(s: &str) -> Result<Self> {
        vantix_read::parse_choice("dictionary", s, &Self::ALL.map(|m| (m.name(), m)))
    }
}

/// Records a dictionary is trained on: the first this many records...
pub const DICT_TRAIN_RECORDS: usize = 4096;
/// ...or as many as fit in this many bytes, whichever comes first.
pub const DICT_TRAIN_BYTES: usize = 16 << 20;
/// Fewest records a dictionary is trained on: a pack of fewer gets none.
pub const DICT_MIN_RECORDS: usize = 32;
/// Size of a trained dictionary (bytes): large enough to hold the common patterns of small
/// images, small next to a shard (see docs/COMPRESSION.md for the measurements behind it).
pub const DICT_BYTES: usize = 16 << 10;

/// Records held back until a dictionary is trained on them: (pixels, label).
#[derive(Default)]
struct Training {
    pending: Vec<(Vec<u8>, u32)>,
    pending_bytes: usize,
}

impl Training {
    fn full(&self) -> bool {
        self.pending.len() >= DICT_TRAIN_RECORDS || self.pending_bytes >= DICT_TRAIN_BYTES
    }
}

struct OpenShard {
    scratch_name: String,
    scratch_path: PathBuf,
    scratch: BufWriter<File>,
    table: ShardTable,
}

fn write_all(w: &mut impl Write, bytes: &[u8], path: &Path) -> Result<()> {
    w.write_all(bytes).map_err(|e| Error::io(path, e))
}

impl ShardWriter {
    /// `shard_size`: target bytes of data per shard (a shard holds at least one record).
    pub fn new(dir: Arc<Dir>, geometry: Geometry, codec: Codec, shard_size: u64) -> Self {
        ShardWriter {
            dir,
            geometry,
            codec,
            shard_size: shard_size.max(1),
            first_shard: 0,
            next_index: 0,
            shards: Vec::new(),
            current: None,
            encoder: RecordEncoder::new(codec, geometry),
            training: None,
        }
    }

    /// Continue a dataset: the first shard written is `shard_name(first_shard)` and its first
    /// record has the global index `first_index` (`vantix-pack append`).
    pub fn starting_at(mut self, first_shard: usize, first_index: u64) -> Self {
        self.first_shard = first_shard;
        self.next_index = first_index;
        self
    }

    /// Compress with `dictionary`, already trained (appending to a dataset that has one), so
    /// that every shard of the dataset carries the same dictionary and format version.
    pub fn with_trained_dictionary(mut self, dictionary: Vec<u8>) -> Result<Self> {
        self.encoder = RecordEncoder::with_dictionary(self.codec, self.geometry, dictionary)?;
        self.training = None;
        Ok(self)
    }

    /// Compress records with a zstd dictionary trained on the first records; `codec` must be
    /// zstd.
    pub fn with_dictionary(mut self) -> Result<Self> {
        if !matches!(self.codec, Codec::Zstd { .. }) {
            return Err(Error::invalid("a zstd dictionary needs the zstd codec"));
        }
        self.training = Some(Training::default());
        Ok(self)
    }

    /// The format version of the shards written: 3 with a dictionary, else the codec's.
    /// Known once [`finish`](Self::finish) has run.
    pub fn format_version(&self) -> u32 {
        match self.encoder.dictionary() {
            Some(_) => DICTIONARY_VERSION,
            None => self.codec.format_version(),
        }
    }

    /// The trained dictionary, once there is one.
    pub fn dictionary(&self) -> Option<&[u8]> {
        self.encoder.dictionary()
    }

    /// Append one record: its pixels (`geometry.record_bytes()`, HWC uint8) and its label.
    pub fn push(&mut self, pixels: &[u8], label: u32) -> Result<()> {
        if self.training.is_some() {
            return self.push_all(vec![(pixels.to_vec(), label)]);
        }
        let stored = self.encoder.encode(pixels)?;
        self.write_stored(&stored, label)
    }

    /// Append records in order: `(pixels, label)` each. They are encoded in parallel on the
    /// current rayon pool (call it inside `ThreadPool::install` to choose the pool); the
    /// output does not depend on the number of threads.
    pub fn push_all(&mut self, records: Vec<(Vec<u8>, u32)>) -> Result<()> {
        let mut records = records.into_iter();
        while let Some(t) = self.training.as_mut() {
            let Some((pixels, label)) = records.next() else {
                return Ok(());
            };
            t.pending_bytes += pixels.len();
            t.pending.push((pixels, label));
            if t.full() {
                self.train()?;
            }
        }
        self.write_encoded(records.collect())
    }

    /// Encode `records` in parallel, then write them in order.
    fn write_encoded(&mut self, records: Vec<(Vec<u8>, u32)>) -> Result<()> {
        let encoder = &self.encoder;
        let stored: Vec<(Vec<u8>, u32)> = records
            .into_par_iter()
            .map(|(pixels, label)| Ok((encoder.encode_owned(pixels)?, label)))
            .collect::<Result<_>>()?;
        stored
            .iter()
            .try_for_each(|(stored, label)| self.write_stored(stored, *label))
    }

    /// Write one stored record with its label to the current shard, or to a new one when it is
    /// full (a shard holds at least one record).
    fn write_stored(&mut self, stored: &[u8], label: u32) -> Result<()> {
        let cur = self.open_shard(stored.len())?;
        write_all(&mut cur.scratch, stored, &cur.scratch_path)?;
        let pad = cur.table.add(stored, label);
        if pad > 0 {
            write_all(&mut cur.scratch, &vec![0u8; pad], &cur.scratch_path)?;
        }
        self.next_index += 1;
        Ok(())
    }

    /// Train the dictionary on the records held back (filtered, as they are compressed), then
    /// encode and write them. zstd refuses to train on too few or too uniform records: then
    /// records are compressed without a dictionary.
    fn train(&mut self) -> Result<()> {
        let Some(training) = self.training.take() else {
            return Ok(());
        };
        let samples: Vec<std::borrow::Cow<'_, [u8]>> = training
            .pending
            .iter()
            .map(|(pixels, _)| self.encoder.filter(pixels))
            .collect();
        let samples: Vec<&[u8]> = samples.iter().map(|s| &s[..]).collect();
        let dictionary = (samples.len() >= DICT_MIN_RECORDS)
            .then(|| zstd::dict::from_samples(&samples, DICT_BYTES).ok())
            .flatten()
            .filter(|dict| !dict.is_empty());
        if let Some(dictionary) = dictionary {
            self.encoder = RecordEncoder::with_dictionary(self.codec, self.geometry, dictionary)?;
        }
        self.write_encoded(training.pending)
    }

    /// The shard a stored record of `len` bytes goes to: the current one, or a new one.
    fn open_shard(&mut self, len: usize) -> Result<&mut OpenShard> {
        let full = self.current.as_ref().is_some_and(|c| {
            !c.table.is_empty() && c.table.data_size() + c.table.padded_len(len) > self.shard_size
        });
        if full {
            self.finish_shard()?;
        }
        if self.current.is_none() {
            let scratch_name = format!(
                "{}{SCRATCH_SUFFIX}",
                shard_name(self.first_shard + self.shards.len())
            );
            let scratch_path = self.dir.show(&scratch_name);
            let f = self.dir.create(&scratch_name)?;
            self.current = Some(OpenShard {
                scratch: BufWriter::with_capacity(1 << 20, f),
                scratch_name,
                scratch_path,
                table: ShardTable::new(self.geometry, self.codec, self.next_index),
            });
        }
        Ok(self.current.as_mut().expect("opened above"))
    }

    fn finish_shard(&mut self) -> Result<()> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let OpenShard {
            scratch_name,
            scratch_path,
            scratch,
            table,
        } = cur;
        let scratch = scratch
            .into_inner()
            .map_err(|e| Error::io(&scratch_path, e.into_error()))?;
        drop(scratch);
        let (header, tables) = table.encode(self.encoder.dictionary());
        let name = shard_name(self.first_shard + self.shards.len());
        let path = self.dir.show(&name);
        let file = self.dir.create(&name)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut hash = Xxh3::new();
        let mut emit = |bytes: &[u8], out: &mut BufWriter<File>| -> Result<()> {
            hash.update(bytes);
            write_all(out, bytes, &path)
        };
        emit(&tables, &mut out)?;
        let mut src = self.dir.open_file(&scratch_name)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = src
                .read(&mut buf)
                .map_err(|e| Error::io(&scratch_path, e))?;
            if k == 0 {
                break;
            }
            emit(&buf[..k], &mut out)?;
        }
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&path, e))?;
        self.dir
            .remove_file(std::ffi::OsStr::new(&scratch_name))
            .map_err(|e| Error::io(&scratch_path, e))?;
        self.shards.push(ShardInfo {
            file: name,
            num_records: table.len() as u64,
            size_bytes: header.file_size(),
            xxh3: format!("{:016x}", hash.digest()),
        });
        Ok(())
    }

    /// Close the last shard and return the description of every shard written (with a
    /// dictionary, use [`finish_with_version`](Self::finish_with_version) for the version).
    pub fn finish(self) -> Result<Vec<ShardInfo>> {
        Ok(self.finish_with_version()?.0)
    }

    /// [`finish`](Self::finish), also returning the format version of the shards written.
    pub fn finish_with_version(mut self) -> Result<(Vec<ShardInfo>, u32)> {
        self.train()?;
        self.finish_shard()?;
        let version = self.format_version();
        Ok((std::mem::take(&mut self.shards), version))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vantix_read::{Dataset, Filter, Loader, LoaderConfig, Order};

    use super::*;
    use crate::{pack, PackOptions};

    /// `n` smooth 32x32 PNGs with a little noise in two classes (photo-like enough for zstd to
    /// train a dictionary on).
    fn folder(root: &Path, n: u32) {
        let mut s = 7u64;
        for i in 0..n {
            let dir = root.join(["a", "b"][(i % 2) as usize]);
            std::fs::create_dir_all(&dir).unwrap();
            let img = image::RgbImage::from_fn(32, 32, |x, y| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                let noise = (s >> 61) as u32;
                image::Rgb([
                    ((x * 5 + i * 3) % 256 + noise) as u8,
                    ((y * 7 + i) % 256) as u8,
                    ((x + y + i * 11) % 256 + noise) as u8,
                ])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }

    fn pack_with(src: &Path, dst: &Path, codec: Codec, mode: DictionaryMode, shard: u64) {
        let mut opts = PackOptions::default();
        (opts.spec.width, opts.spec.height) = (32, 32);
        opts.codec = codec;
        opts.dictionary = mode;
        opts.shard_size = shard;
        opts.report_skipped = false;
        pack(src, dst, &opts).unwrap();
    }

    fn all_batches(ds: Arc<Dataset>) -> Vec<(Vec<u8>, Vec<i64>)> {
        let config = LoaderConfig {
            batch_size: 64,
            sampler: vantix_read::Sampler {
                order: Order::Random,
                ..Default::default()
            },
            num_threads: Some(2),
            ..LoaderConfig::default()
        };
        let loader = Loader::new(ds, config).unwrap();
        loader
            .epoch(1, 0)
            .map(|b| {
                let b = b.unwrap();
                (b.images().to_vec(), b.labels.clone())
            })
            .collect()
    }

    #[test]
    fn a_dictionary_pack_reads_back_the_raw_pixels() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        folder(&src, 300);
        let raw = tmp.path().join("raw.vtx");
        pack_with(&src, &raw, Codec::Raw, DictionaryMode::Auto, 1 << 30);
        let zstd = Codec::Zstd {
            level: 3,
            filter: Filter::Up,
        };
        let raw = Arc::new(Dataset::open(&raw).unwrap());
        // auto: 32x32 records (3 KiB) get a dictionary; small shards each hold a copy.
        for (name, mode, shard, dict) in [
            ("auto.vtx", DictionaryMode::Auto, 200 << 10, true),
            ("on.vtx", DictionaryMode::On, 1 << 30, true),
            ("off.vtx", DictionaryMode::Off, 200 << 10, false),
        ] {
            let out = tmp.path().join(name);
            pack_with(&src, &out, zstd, mode, shard);
            let ds = Arc::new(Dataset::open(&out).unwrap());
            let want = if dict { DICTIONARY_VERSION } else { 2 };
            assert_eq!(ds.manifest().version, want, "{name}");
            assert!(!dict || ds.shards().len() > 1 || mode == DictionaryMode::On);
            for s in ds.shards() {
                assert_eq!(s.version(), want, "{name}");
                assert_eq!(s.dictionary_size() > 0, dict, "{name}");
                assert!(s.dictionary_size() as usize <= DICT_BYTES);
            }
            assert_eq!(
                ds.shards()[0].dictionary(),
                ds.shards().last().unwrap().dictionary()
            );
            ds.verify().unwrap();
            let (mut a, mut b) = (vec![0u8; 3072], vec![0u8; 3072]);
            for i in 0..ds.len() {
                raw.read_into(i, &mut a).unwrap();
                ds.read_into(i, &mut b).unwrap();
                assert_eq!(a, b, "{name}: record {i}");
            }
            assert_eq!(
                all_batches(Arc::clone(&raw)),
                all_batches(ds),
                "{name}: loader batches"
            );
        }
        // A dictionary is for zstd only.
        let opts = PackOptions {
            dictionary: DictionaryMode::On,
            ..PackOptions::default()
        };
        let e = pack(&src, &tmp.path().join("x.vtx"), &opts).unwrap_err();
        assert!(e.to_string().contains("zstd"), "{e}");
    }

    #[test]
    fn too_few_records_to_train_means_no_dictionary() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        folder(&src, 3);
        let out = tmp.path().join("z.vtx");
        let zstd = Codec::Zstd {
            level: 3,
            filter: Filter::Up,
        };
        pack_with(&src, &out, zstd, DictionaryMode::On, 1 << 30);
        let ds = Dataset::open(&out).unwrap();
        assert_eq!(
            (ds.manifest().version, ds.shards()[0].dictionary_size()),
            (2, 0)
        );
        assert_eq!(ds.len(), 3);
    }
}
