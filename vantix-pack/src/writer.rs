//! Writing shards. Records arrive in dataset order, already encoded (raw pixels or one zstd
//! frame each). A shard's data is streamed to a scratch file while its tables grow in memory;
//! when the shard is full the final file is written as header, tables, padding and data, and
//! hashed on the way.
//!
//! With a trained zstd dictionary ([`ShardWriter::with_dictionary`]) records arrive filtered
//! but not compressed: the first ones are held back, a dictionary is trained on them, and
//! every record is then compressed with it here. Each shard stores a copy of the dictionary,
//! so a shard stays readable on its own.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vantix_read::format::{Codec, Geometry, ShardHeader, ShardInfo, DICTIONARY_VERSION};
use vantix_read::{Error, Result};
use xxhash_rust::xxh3::Xxh3;

use crate::outdir::Dir;

/// File name of shard `k`.
pub fn shard_name(k: usize) -> String {
    format!("shard-{k:05}.vxs")
}

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
    dict: Option<DictState>,
}

/// When to compress zstd records with a dictionary trained at pack time (`--zstd-dict`).
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
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "on" => Some(Self::On),
            "off" => Some(Self::Off),
            _ => None,
        }
    }
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

/// Records a dictionary is trained on: the first this many records...
pub const DICT_TRAIN_RECORDS: usize = 4096;
/// ...or as many as fit in this many bytes, whichever comes first.
pub const DICT_TRAIN_BYTES: usize = 16 << 20;
/// Fewest records a dictionary is trained on: a pack of fewer gets none.
pub const DICT_MIN_RECORDS: usize = 32;
/// Size of a trained dictionary (bytes): large enough to hold the common patterns of small
/// images, small next to a shard (see docs/COMPRESSION.md for the measurements behind it).
pub const DICT_BYTES: usize = 16 << 10;

/// A dictionary being trained, then used.
struct DictState {
    level: i32,
    /// Records held back until the dictionary is trained: (filtered pixels, label).
    pending: Vec<(Vec<u8>, u32)>,
    pending_bytes: usize,
    trained: bool,
    /// The dictionary (`None` after training when zstd could not train one: too few or too
    /// uniform records; records are then compressed without one).
    dictionary: Option<Vec<u8>>,
    compressor: zstd::bulk::Compressor<'static>,
}

struct OpenShard {
    scratch_name: String,
    scratch_path: PathBuf,
    scratch: BufWriter<File>,
    first_index: u64,
    data_len: u64,
    labels: Vec<u32>,
    crcs: Vec<u32>,
    offsets: Vec<u64>,
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
            dict: None,
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
    pub fn with_trained_dictionary(self, dictionary: Vec<u8>) -> Result<Self> {
        let mut w = self.with_dictionary()?;
        let d = w.dict.as_mut().expect("with_dictionary sets it");
        d.compressor = zstd::bulk::Compressor::with_dictionary(d.level, &dictionary)
            .map_err(|e| Error::invalid(format!("zstd dictionary: {e}")))?;
        d.trained = true;
        d.dictionary = Some(dictionary);
        Ok(w)
    }

    /// Whether records given to [`push`](Self::push) are filtered pixels that the writer
    /// compresses (with a dictionary), rather than encoded records.
    pub fn compresses(&self) -> bool {
        self.dict.is_some()
    }

    /// Compress records with a zstd dictionary trained on the first records. Records given to
    /// [`push`](Self::push) are then the filtered, uncompressed pixels; `codec` must be zstd.
    pub fn with_dictionary(mut self) -> Result<Self> {
        let Codec::Zstd { level, .. } = self.codec else {
            return Err(Error::invalid("a zstd dictionary needs the zstd codec"));
        };
        let compressor =
            zstd::bulk::Compressor::new(level).map_err(|e| Error::invalid(format!("zstd: {e}")))?;
        self.dict = Some(DictState {
            level,
            pending: Vec::new(),
            pending_bytes: 0,
            trained: false,
            dictionary: None,
            compressor,
        });
        Ok(self)
    }

    /// The format version of the shards written: 3 with a dictionary, else the codec's.
    /// Known once [`finish`](Self::finish) has run.
    pub fn format_version(&self) -> u32 {
        match &self.dict {
            Some(DictState {
                dictionary: Some(_),
                ..
            }) => DICTIONARY_VERSION,
            _ => self.codec.format_version(),
        }
    }

    /// The trained dictionary, once there is one.
    pub fn dictionary(&self) -> Option<&[u8]> {
        self.dict.as_ref()?.dictionary.as_deref()
    }

    /// Append one record with its label: encoded (raw pixels or one zstd frame), or with a
    /// dictionary, filtered pixels that are compressed here.
    pub fn push(&mut self, record: &[u8], label: u32) -> Result<()> {
        let Some(d) = self.dict.as_mut() else {
            return self.push_stored(record, label);
        };
        if !d.trained {
            d.pending.push((record.to_vec(), label));
            d.pending_bytes += record.len();
            if d.pending.len() >= DICT_TRAIN_RECORDS || d.pending_bytes >= DICT_TRAIN_BYTES {
                self.train()?;
            }
            return Ok(());
        }
        let frame = d
            .compressor
            .compress(record)
            .map_err(|e| Error::invalid(format!("zstd: {e}")))?;
        self.push_stored(&frame, label)
    }

    /// Train the dictionary on the records held back, then compress and write them.
    fn train(&mut self) -> Result<()> {
        let Some(d) = self.dict.as_mut() else {
            return Ok(());
        };
        if d.trained {
            return Ok(());
        }
        d.trained = true;
        let samples: Vec<&[u8]> = d.pending.iter().map(|(r, _)| r.as_slice()).collect();
        // zstd refuses to train on too few or too uniform samples: then there is no dictionary.
        d.dictionary = (samples.len() >= DICT_MIN_RECORDS)
            .then(|| zstd::dict::from_samples(&samples, DICT_BYTES).ok())
            .flatten()
            .filter(|dict| !dict.is_empty());
        if let Some(dict) = &d.dictionary {
            d.compressor = zstd::bulk::Compressor::with_dictionary(d.level, dict)
                .map_err(|e| Error::invalid(format!("zstd dictionary: {e}")))?;
        }
        let pending = std::mem::take(&mut d.pending);
        d.pending_bytes = 0;
        for (record, label) in pending {
            self.push(&record, label)?;
        }
        Ok(())
    }

    /// Append one stored record (raw pixels or one zstd frame) with its label.
    fn push_stored(&mut self, stored: &[u8], label: u32) -> Result<()> {
        let padded = match self.codec {
            Codec::Raw => {
                debug_assert_eq!(stored.len(), self.geometry.record_bytes());
                self.geometry.raw_stride()
            }
            Codec::Zstd { .. } => stored.len() as u64,
        };
        let full = self
            .current
            .as_ref()
            .is_some_and(|c| !c.labels.is_empty() && c.data_len + padded > self.shard_size);
        if full {
            self.finish_shard()?;
        }
        if self.current.is_none() {
            let scratch_name = format!("{}.data", shard_name(self.first_shard + self.shards.len()));
            let scratch_path = self.dir.show(&scratch_name);
            let f = self.dir.create(&scratch_name)?;
            self.current = Some(OpenShard {
                scratch: BufWriter::with_capacity(1 << 20, f),
                scratch_name,
                scratch_path,
                first_index: self.next_index,
                data_len: 0,
                labels: Vec::new(),
                crcs: Vec::new(),
                offsets: vec![0],
            });
        }
        let cur = self.current.as_mut().unwrap();
        write_all(&mut cur.scratch, stored, &cur.scratch_path)?;
        let pad = padded - stored.len() as u64;
        if pad > 0 {
            write_all(
                &mut cur.scratch,
                &vec![0u8; pad as usize],
                &cur.scratch_path,
            )?;
        }
        cur.data_len += padded;
        cur.labels.push(label);
        cur.crcs.push(crc32fast::hash(stored));
        cur.offsets.push(cur.data_len);
        self.next_index += 1;
        Ok(())
    }

    fn finish_shard(&mut self) -> Result<()> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let OpenShard {
            scratch_name,
            scratch_path,
            scratch,
            first_index,
            data_len,
            labels,
            crcs,
            offsets,
        } = cur;
        let scratch = scratch
            .into_inner()
            .map_err(|e| Error::io(&scratch_path, e.into_error()))?;
        drop(scratch);
        let n = labels.len() as u64;
        let dictionary = self.dictionary().map(<[u8]>::to_vec);
        let header = ShardHeader::layout_with_dictionary(
            self.geometry,
            self.codec,
            n,
            data_len,
            first_index,
            dictionary.as_deref(),
        );
        let name = shard_name(self.first_shard + self.shards.len());
        let path = self.dir.show(&name);
        let file = self.dir.create(&name)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut hash = Xxh3::new();
        let mut emit = |bytes: &[u8], out: &mut BufWriter<File>| -> Result<()> {
            hash.update(bytes);
            write_all(out, bytes, &path)
        };
        let mut tables = Vec::with_capacity((header.data_offset as usize).max(128));
        tables.extend_from_slice(&header.encode());
        labels
            .iter()
            .for_each(|l| tables.extend_from_slice(&l.to_le_bytes()));
        crcs.iter()
            .for_each(|c| tables.extend_from_slice(&c.to_le_bytes()));
        if header.offsets_offset != 0 {
            offsets
                .iter()
                .for_each(|o| tables.extend_from_slice(&o.to_le_bytes()));
        }
        if let Some(d) = &dictionary {
            debug_assert_eq!(tables.len() as u64, header.dict_offset);
            tables.extend_from_slice(d);
        }
        tables.resize(header.data_offset as usize, 0);
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
            num_records: n,
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
        opts.zstd_dictionary = mode;
        opts.shard_size = shard;
        opts.report_skipped = false;
        pack(src, dst, &opts).unwrap();
    }

    fn all_batches(ds: Arc<Dataset>) -> Vec<(Vec<u8>, Vec<i64>)> {
        let config = LoaderConfig {
            batch_size: 64,
            order: Order::Random,
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
            zstd_dictionary: DictionaryMode::On,
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
