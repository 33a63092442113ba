//! Support for the mutation tests (`tests/mutations.rs`) and the fuzz targets (`fuzz/`): a tiny
//! valid dataset built in memory, a byte-driven mutator, and a check that a (possibly damaged)
//! dataset either opens and reads exactly the original data or fails with an [`Error`].
//! Not part of the stable API.

use std::path::Path;

use crate::codec::{shard_name, RecordEncoder, ShardTable};
use crate::error::{Error, Result};
use crate::format::{
    xxh3_hex, Codec, Geometry, Manifest, PackSettings, ShardHeader, ShardInfo, MANIFEST_FORMAT,
    MANIFEST_NAME,
};
use crate::{Dataset, Verify};

/// The files of a small dataset and what it holds.
#[derive(Clone, Debug)]
pub struct TinyDataset {
    /// `(file name, bytes)`: `manifest.json` first, then the shards.
    pub files: Vec<(String, Vec<u8>)>,
    /// Decoded pixels of every record, in dataset order.
    pub images: Vec<Vec<u8>>,
    pub labels: Vec<u32>,
}

impl TinyDataset {
    /// Write the files into the directory `dir` (which must exist).
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        for (name, bytes) in &self.files {
            std::fs::write(dir.join(name), bytes)?;
        }
        Ok(())
    }
}

/// A valid dataset of 7 images of 5x4 RGB in 2 classes, in two shards (4 + 3 records).
pub fn tiny_dataset(codec: Codec) -> TinyDataset {
    build_tiny(codec, None)
}

/// [`tiny_dataset`] whose zstd records are compressed with a dictionary stored in each shard
/// (format version 3). The dictionary is raw content (zstd accepts any bytes as one): a
/// trained one needs far more samples than 7 records.
pub fn tiny_dataset_with_dictionary(level: i32, filter: crate::Filter) -> TinyDataset {
    let dict: Vec<u8> = (0..256u32).map(|b| (b * 11 % 251) as u8).collect();
    build_tiny(Codec::Zstd { level, filter }, Some(&dict))
}

fn build_tiny(codec: Codec, dictionary: Option<&[u8]>) -> TinyDataset {
    let geometry = Geometry {
        width: 5,
        height: 4,
        channels: 3,
    };
    let rb = geometry.record_bytes();
    let images: Vec<Vec<u8>> = (0..7u32)
        .map(|i| (0..rb as u32).map(|b| (i * 37 + b * 11) as u8).collect())
        .collect();
    let labels: Vec<u32> = (0..7).map(|i| i % 2).collect();
    let encoder = match dictionary {
        Some(d) => RecordEncoder::with_dictionary(codec, geometry, d.to_vec()).expect("zstd"),
        None => RecordEncoder::new(codec, geometry),
    };
    let mut files = Vec::new();
    let mut shards = Vec::new();
    let mut first = 0usize;
    for (k, n) in [4usize, 3].into_iter().enumerate() {
        let mut table = ShardTable::new(geometry, codec, first as u64);
        let mut data = Vec::new();
        for (image, &label) in images[first..first + n]
            .iter()
            .zip(&labels[first..first + n])
        {
            let stored = encoder.encode(image).expect("zstd");
            let padding = table.add(&stored, label);
            data.extend_from_slice(&stored);
            data.resize(data.len() + padding, 0);
        }
        let (_, mut bytes) = table.encode(dictionary);
        bytes.extend_from_slice(&data);
        let name = shard_name(k);
        shards.push(ShardInfo {
            file: name.clone(),
            num_records: n as u64,
            size_bytes: bytes.len() as u64,
            xxh3: xxh3_hex(&bytes),
        });
        files.push((name, bytes));
        first += n;
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: if dictionary.is_some() {
            crate::format::DICTIONARY_VERSION
        } else {
            codec.format_version()
        },
        geometry,
        dtype: "uint8".into(),
        layout: "HWC".into(),
        channel_order: "RGB".into(),
        codec,
        classes: vec!["cat".into(), "dog".into()],
        num_samples: 7,
        shards,
        pack: PackSettings {
            resize: "squash".into(),
            interpolation: "bilinear".into(),
            pad_color: [0, 0, 0],
            exif_orientation: false,
            source: "/nowhere".into(),
            source_files: 7,
            source_list_xxh3: "0000000000000000".into(),
            vantix_version: "test".into(),
            exact_decode: false,
            max_pixels: None,
        },
        skipped: Vec::new(),
        part: None,
        appends: Vec::new(),
        truncated: Vec::new(),
        class_bytes: Default::default(),
    };
    files.insert(0, (MANIFEST_NAME.into(), manifest.to_json().into_bytes()));
    TinyDataset {
        files,
        images,
        labels,
    }
}

/// Numbers that make parsers and size arithmetic fail in interesting ways.
const EXTREMES: [u64; 8] = [
    0,
    1,
    0x7f,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0xffff_ffff_ffff_ffff,
    4096,
];

/// Apply the mutations encoded by `ops` to `files`: each group of 6 bytes is one mutation
/// `[kind, file, offset (3 bytes LE), value]`; the file is `file % len`, the offset is taken
/// modulo the file length (plus one). Kinds (`kind % 9`): flip bit `value % 8`; set a byte;
/// truncate; extend by `value + 1` bytes; insert a byte; delete a byte; write an extreme u32;
/// write an extreme u64; in a manifest, replace the number (digits) at the offset with an
/// extreme one. Returns how many mutations were applied.
pub fn mutate(files: &mut [(String, Vec<u8>)], ops: &[u8]) -> usize {
    let mut applied = 0;
    for op in ops.chunks_exact(6) {
        let (kind, value) = (op[0] % 9, op[5]);
        let k = op[1] as usize % files.len();
        let (name, bytes) = &mut files[k];
        let raw_off = u32::from_le_bytes([op[2], op[3], op[4], 0]) as usize;
        let off = raw_off % (bytes.len() + 1);
        let extreme = EXTREMES[value as usize % EXTREMES.len()];
        match kind {
            0 if off < bytes.len() => bytes[off] ^= 1 << (value % 8),
            1 if off < bytes.len() => bytes[off] = value,
            2 => bytes.truncate(off),
            3 => bytes.extend(std::iter::repeat_n(value, value as usize + 1)),
            4 => bytes.insert(off, value),
            5 if off < bytes.len() => {
                bytes.remove(off);
            }
            6 if off + 4 <= bytes.len() => {
                bytes[off..off + 4].copy_from_slice(&(extreme as u32).to_le_bytes())
            }
            7 if off + 8 <= bytes.len() => {
                bytes[off..off + 8].copy_from_slice(&extreme.to_le_bytes())
            }
            8 if name == MANIFEST_NAME => {
                // The digits around `off`, replaced by an extreme (possibly negative) number.
                let is_digit = |b: &u8| b.is_ascii_digit();
                let Some(start) = bytes[off.min(bytes.len())..]
                    .iter()
                    .position(is_digit)
                    .map(|p| p + off)
                else {
                    continue;
                };
                let end = bytes[start..]
                    .iter()
                    .position(|b| !is_digit(b))
                    .map_or(bytes.len(), |p| p + start);
                let text = if value & 0x80 != 0 {
                    format!("-{extreme}")
                } else {
                    extreme.to_string()
                };
                bytes.splice(start..end, text.into_bytes());
            }
            _ => continue,
        }
        applied += 1;
    }
    applied
}

/// What happened to a dataset under [`exercise`].
#[derive(Debug)]
pub enum Outcome {
    /// `Dataset::open` refused it.
    RejectedAtOpen(Error),
    /// It opened, but verification found damage.
    RejectedByVerify(Error),
    /// It opened, verified and every record and label read back exactly as packed.
    Intact,
}

/// Open the dataset in `dir`, read every record (copy, zero-copy and checked), every label and
/// every batch check, then verify it. A dataset that verifies must read back exactly
/// `expect`'s images and labels (this panics otherwise, which is a test failure or a fuzzer
/// finding); anything else must be an `Err`, never a panic.
pub fn exercise(dir: &Path, expect: &TinyDataset) -> Outcome {
    let ds = match Dataset::open(dir) {
        Ok(ds) => ds,
        Err(e) => return Outcome::RejectedAtOpen(e),
    };
    let n = ds.len();
    let all: Vec<u64> = (0..n as u64).collect();
    let mut reads: Vec<Result<(Vec<u8>, u32)>> = Vec::with_capacity(n);
    for i in 0..n {
        let mut buf = vec![0u8; ds.record_bytes()];
        reads.push(
            ds.read_into(i, &mut buf)
                .and_then(|()| ds.label(i))
                .map(|l| (buf, l)),
        );
        let _ = ds.with_record(i, |px| px.len());
        let _ = ds.check_record(i);
    }
    let checked = ds.check_before_read(&all, Verify::Record);
    let _ = ds.check_before_read(&all, Verify::Shard);
    ds.will_need(&all);
    match ds.verify() {
        Err(e) => Outcome::RejectedByVerify(e),
        Ok(()) => {
            assert_eq!(n, expect.images.len(), "a verified dataset lost records");
            assert!(checked.is_ok(), "verified but a record check failed");
            for (i, r) in reads.into_iter().enumerate() {
                let (px, label) = r.unwrap_or_else(|e| panic!("verified, but record {i}: {e}"));
                assert_eq!(px, expect.images[i], "verified, but record {i} differs");
                assert_eq!(label, expect.labels[i], "verified, but label {i} differs");
            }
            Outcome::Intact
        }
    }
}

/// Write `files` into `dir` (removing what was there) and [`exercise`] them.
pub fn exercise_files(
    dir: &Path,
    files: &[(String, Vec<u8>)],
    expect: &TinyDataset,
) -> std::io::Result<Outcome> {
    for e in std::fs::read_dir(dir)? {
        std::fs::remove_file(e?.path())?;
    }
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(exercise(dir, expect))
}

/// Parse arbitrary bytes as a manifest and as a shard header: an `Err`, never a panic.
pub fn parse_untrusted(bytes: &[u8]) -> Result<()> {
    let m = Manifest::parse(bytes, "manifest.json");
    let h = ShardHeader::decode(bytes, bytes.len() as u64, "shard");
    if let Ok(h) = h {
        assert_eq!(
            h.file_size(),
            bytes.len() as u64,
            "a decoded header fits its file"
        );
    }
    m.map(|_| ())
}
