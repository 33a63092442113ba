//! The record codec and the shard writer's half of the format: how a record's pixels become
//! the bytes stored in a shard and back ([`RecordEncoder`], [`RecordDecoder`]: prediction
//! filter, zstd, dictionary), how a shard's tables are laid out in front of its data
//! ([`ShardTable`]), and the names of the files of a dataset ([`shard_name`],
//! [`SOURCES_NAME`]).
//!
//! The byte layouts themselves (header fields, offsets, versions) are in [`crate::format`];
//! this module is the one implementation of writing and reading them that the packer
//! (`vantix-pack`'s shard writer, `append`, `merge`), the reader ([`crate::Dataset`]) and the
//! test helpers ([`crate::testing`]) share, so they cannot disagree.
//!
//! ```
//! use vantix_read::codec::{RecordDecoder, RecordEncoder};
//! use vantix_read::{Codec, Filter, Geometry};
//! let g = Geometry { width: 4, height: 2, channels: 3 };
//! let codec = Codec::Zstd { level: 3, filter: Filter::Up };
//! let pixels: Vec<u8> = (0..24).collect();
//! let stored = RecordEncoder::new(codec, g).encode(&pixels).unwrap();
//! let mut back = vec![0u8; 24];
//! RecordDecoder::new(codec, g, None).unwrap().decode_into(&stored, &mut back).unwrap();
//! assert_eq!(back, pixels);
//! ```

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use zstd::zstd_safe;

use crate::error::{Error, Result};
use crate::format::{Codec, Geometry, ShardHeader};

// ---------------------------------------------------------------------------------------------
// File names.

/// Name of the informational list of source files (`vantix-pack`), in record order, next to
/// the manifest. A reader never needs it.
pub const SOURCES_NAME: &str = "sources.json";

/// Suffix of the scratch file a shard's data is streamed to before the shard is assembled
/// (`shard-00000.vxs.data`); never part of a finished dataset.
pub const SCRATCH_SUFFIX: &str = ".data";

/// File name of shard `k` of a dataset written by `vantix-pack`: `shard-00000.vxs`, ...
pub fn shard_name(k: usize) -> String {
    format!("shard-{k:05}.vxs")
}

/// The number `k` of a file named by [`shard_name`] (`None` for any other name).
pub fn shard_number(name: &str) -> Option<usize> {
    name.strip_prefix("shard-")?
        .strip_suffix(".vxs")?
        .parse()
        .ok()
}

/// Whether `name` has the form of a shard file or of a shard's scratch file, as `vantix-pack`
/// writes them (`shard-*.vxs`, `shard-*.vxs.data`).
pub fn is_shard_file_name(name: &str) -> bool {
    name.starts_with("shard-") && (name.ends_with(".vxs") || name.ends_with(".vxs.data"))
}

// ---------------------------------------------------------------------------------------------
// Encoding.

/// Turns a record's pixels (`geometry.record_bytes()`, HWC uint8) into the bytes a shard stores
/// for it: the pixels themselves (raw), or one zstd frame of the pixels passed through the
/// codec's prediction filter, compressed with the dictionary when there is one.
///
/// It is `Sync`: [`encode`](Self::encode) may run on many threads at once (each keeps its own
/// zstd context), and the result does not depend on the thread.
pub struct RecordEncoder {
    codec: Codec,
    geometry: Geometry,
    dictionary: Option<Vec<u8>>,
    /// Distinguishes this encoder's zstd contexts from another's in the per-thread cache.
    id: u64,
}

thread_local! {
    /// This thread's zstd compressor, and the encoder (`RecordEncoder::id`) it was made for.
    static COMPRESSOR: RefCell<Option<(u64, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    /// This thread's zstd decompression context, reused for every record.
    static DCTX: RefCell<Option<zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

static NEXT_ENCODER: AtomicU64 = AtomicU64::new(0);

fn zstd_error(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("zstd: {e}"))
}

impl RecordEncoder {
    /// An encoder for `codec` without a dictionary (a zstd level zstd refuses is an error of
    /// [`encode`](Self::encode)).
    pub fn new(codec: Codec, geometry: Geometry) -> Self {
        RecordEncoder {
            codec,
            geometry,
            dictionary: None,
            id: NEXT_ENCODER.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// An encoder that compresses with the zstd `dictionary` (format version 3; `codec` must
    /// be zstd, and zstd must accept the dictionary and level: checked here).
    pub fn with_dictionary(codec: Codec, geometry: Geometry, dictionary: Vec<u8>) -> Result<Self> {
        let Codec::Zstd { level, .. } = codec else {
            return Err(Error::invalid("a zstd dictionary needs the zstd codec"));
        };
        let encoder = RecordEncoder {
            dictionary: Some(dictionary),
            ..Self::new(codec, geometry)
        };
        encoder
            .compressor(level)
            .map_err(|e| Error::internal(format!("zstd dictionary: {e}")))?;
        Ok(encoder)
    }

    fn compressor(&self, level: i32) -> std::io::Result<zstd::bulk::Compressor<'static>> {
        match &self.dictionary {
            Some(d) => zstd::bulk::Compressor::with_dictionary(level, d),
            None => zstd::bulk::Compressor::new(level),
        }
    }

    /// The codec records are encoded with.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Geometry of the records this encoder takes.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The zstd dictionary records are compressed with, if any.
    pub fn dictionary(&self) -> Option<&[u8]> {
        self.dictionary.as_deref()
    }

    /// The pixels passed through the codec's prediction filter, not compressed (what a
    /// dictionary is trained on). Borrowed when the codec has no filter.
    pub fn filter<'a>(&self, pixels: &'a [u8]) -> Cow<'a, [u8]> {
        let filter = self.codec.filter();
        if filter.is_none() {
            return Cow::Borrowed(pixels);
        }
        let bpp = self.geometry.channels as usize;
        let mut filtered = vec![0u8; pixels.len()];
        crate::filter::apply(
            filter,
            pixels,
            &mut filtered,
            self.geometry.width as usize * bpp,
            bpp,
        );
        Cow::Owned(filtered)
    }

    /// The stored bytes of a record with these pixels: the pixels themselves (borrowed) for raw
    /// records, else one zstd frame.
    pub fn encode<'a>(&self, pixels: &'a [u8]) -> Result<Cow<'a, [u8]>> {
        if pixels.len() != self.geometry.record_bytes() {
            return Err(Error::invalid(format!(
                "a record of {}x{}x{} is {} bytes, got {}",
                self.geometry.height,
                self.geometry.width,
                self.geometry.channels,
                self.geometry.record_bytes(),
                pixels.len()
            )));
        }
        let Codec::Zstd { level, .. } = self.codec else {
            return Ok(Cow::Borrowed(pixels));
        };
        let filtered = self.filter(pixels);
        COMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(id, _)| *id != self.id) {
                *slot = Some((self.id, self.compressor(level).map_err(zstd_error)?));
            }
            let (_, c) = slot.as_mut().expect("set above");
            c.compress(&filtered).map(Cow::Owned).map_err(zstd_error)
        })
    }

    /// [`encode`](Self::encode) taking the pixels by value: raw records keep their buffer.
    pub fn encode_owned(&self, pixels: Vec<u8>) -> Result<Vec<u8>> {
        match self.encode(&pixels)? {
            Cow::Borrowed(_) => Ok(pixels),
            Cow::Owned(stored) => Ok(stored),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding.

/// Why stored bytes did not decode to a record (the caller names the file and record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The zstd frame is damaged (zstd's error name).
    Frame(&'static str),
    /// The frame decompressed to this many bytes instead of a record's.
    Size(usize),
}

/// Turns the stored bytes of a record back into its pixels: the inverse of [`RecordEncoder`]
/// for the records of one shard (which may hold its own dictionary).
pub struct RecordDecoder {
    codec: Codec,
    geometry: Geometry,
    /// The shard's zstd dictionary, prepared for decompression.
    dict: Option<zstd_safe::DDict<'static>>,
}

impl RecordDecoder {
    /// A decoder for records stored with `codec` (its filter; the level does not matter) and
    /// `dictionary`. `None` when zstd cannot load the dictionary (it is damaged).
    pub fn new(codec: Codec, geometry: Geometry, dictionary: Option<&[u8]>) -> Option<Self> {
        let dict = match dictionary {
            Some(d) => Some(zstd_safe::DDict::try_create(d)?),
            None => None,
        };
        Some(RecordDecoder {
            codec,
            geometry,
            dict,
        })
    }

    /// Decompress a zstd frame into `dst` (no filter undone); returns the decompressed size.
    /// Raw records are copied (`stored` must be `dst`'s length).
    pub fn decompress_into(
        &self,
        stored: &[u8],
        dst: &mut [u8],
    ) -> std::result::Result<usize, DecodeError> {
        if self.codec == Codec::Raw {
            dst.copy_from_slice(stored);
            return Ok(dst.len());
        }
        // Straight into the caller's slot: no scratch buffer, no second copy.
        DCTX.with(|cell| {
            let mut slot = cell.borrow_mut();
            let dctx = slot.get_or_insert_with(zstd_safe::DCtx::create);
            match &self.dict {
                Some(ddict) => dctx.decompress_using_ddict(dst, stored, ddict),
                None => dctx.decompress(dst, stored),
            }
            .map_err(|code| DecodeError::Frame(zstd_safe::get_error_name(code)))
        })
    }

    /// Decode the stored bytes of one record into `dst` (exactly `record_bytes()` long): copy,
    /// or decompress, check the size and undo the prediction filter.
    pub fn decode_into(
        &self,
        stored: &[u8],
        dst: &mut [u8],
    ) -> std::result::Result<(), DecodeError> {
        let n = self.decompress_into(stored, dst)?;
        if n != dst.len() {
            return Err(DecodeError::Size(n));
        }
        let filter = self.codec.filter();
        if !filter.is_none() {
            let bpp = self.geometry.channels as usize;
            crate::filter::undo(filter, dst, self.geometry.width as usize * bpp, bpp);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Shard tables.

/// The tables of one shard as its records are added: labels, record CRCs and (zstd) the
/// offsets of the frames in the data section. [`encode`](Self::encode) gives the bytes in front
/// of the data section: header, tables, dictionary and padding to [`crate::format::DATA_ALIGN`].
///
/// The data section is the stored records in order, each followed by
/// [`padding`](Self::add)'s zero bytes (raw records sit at a fixed, aligned stride).
#[derive(Clone, Debug)]
pub struct ShardTable {
    geometry: Geometry,
    codec: Codec,
    first_index: u64,
    labels: Vec<u32>,
    crcs: Vec<u32>,
    /// `offsets[j]` is where record `j` starts in the data section; the last entry is its size.
    offsets: Vec<u64>,
}

impl ShardTable {
    /// An empty shard whose first record has the global index `first_index`.
    pub fn new(geometry: Geometry, codec: Codec, first_index: u64) -> Self {
        ShardTable {
            geometry,
            codec,
            first_index,
            labels: Vec::new(),
            crcs: Vec::new(),
            offsets: vec![0],
        }
    }

    /// Bytes a stored record of `len` bytes takes in the data section (raw: the stride).
    pub fn padded_len(&self, len: usize) -> u64 {
        match self.codec {
            Codec::Raw => self.geometry.raw_stride(),
            Codec::Zstd { .. } => len as u64,
        }
    }

    /// Add a stored record with its label; returns the number of zero bytes to write after it.
    pub fn add(&mut self, stored: &[u8], label: u32) -> usize {
        debug_assert!(self.codec != Codec::Raw || stored.len() == self.geometry.record_bytes());
        let padded = self.padded_len(stored.len());
        self.labels.push(label);
        self.crcs.push(crc32fast::hash(stored));
        self.offsets.push(self.data_size() + padded);
        (padded - stored.len() as u64) as usize
    }

    /// Records added.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether no record has been added yet.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Size of the data section so far.
    pub fn data_size(&self) -> u64 {
        *self.offsets.last().expect("offsets start with 0")
    }

    /// Global index of the shard's first record.
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// The header of the shard as it stands, storing `dictionary` (its records were compressed
    /// with it).
    pub fn header(&self, dictionary: Option<&[u8]>) -> ShardHeader {
        ShardHeader::layout_with_dictionary(
            self.geometry,
            self.codec,
            self.len() as u64,
            self.data_size(),
            self.first_index,
            dictionary,
        )
    }

    /// The header, and the bytes of the shard in front of its data section: header, labels,
    /// CRCs, offsets (zstd), `dictionary`, zero padding up to the data offset.
    pub fn encode(&self, dictionary: Option<&[u8]>) -> (ShardHeader, Vec<u8>) {
        let header = self.header(dictionary);
        let mut b = Vec::with_capacity(header.data_offset as usize);
        b.extend_from_slice(&header.encode());
        debug_assert_eq!(b.len() as u64, header.labels_offset);
        self.labels
            .iter()
            .for_each(|l| b.extend_from_slice(&l.to_le_bytes()));
        debug_assert_eq!(b.len() as u64, header.crc_offset);
        self.crcs
            .iter()
            .for_each(|c| b.extend_from_slice(&c.to_le_bytes()));
        if header.offsets_offset != 0 {
            debug_assert_eq!(b.len() as u64, header.offsets_offset);
            self.offsets
                .iter()
                .for_each(|o| b.extend_from_slice(&o.to_le_bytes()));
        }
        if let Some(d) = dictionary {
            debug_assert_eq!(b.len() as u64, header.dict_offset);
            b.extend_from_slice(d);
        }
        b.resize(header.data_offset as usize, 0);
        (header, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Filter;

    fn geometry() -> Geometry {
        Geometry {
            width: 7,
            height: 5,
            channels: 3,
        }
    }

    fn pixels(seed: u32) -> Vec<u8> {
        let g = geometry();
        (0..g.record_bytes() as u32)
            .map(|b| ((b / 3) * 2 + (b % 3) * 40 + seed * 13) as u8)
            .collect()
    }

    fn round_trip(codec: Codec, dictionary: Option<Vec<u8>>) {
        let g = geometry();
        let enc = match &dictionary {
            Some(d) => RecordEncoder::with_dictionary(codec, g, d.clone()).unwrap(),
            None => RecordEncoder::new(codec, g),
        };
        let dec = RecordDecoder::new(codec, g, dictionary.as_deref()).unwrap();
        for seed in 0..4 {
            let px = pixels(seed);
            let stored = enc.encode(&px).unwrap();
            match codec {
                Codec::Raw => assert!(matches!(stored, Cow::Borrowed(_)) && *stored == px[..]),
                Codec::Zstd { level, .. } => {
                    // The frame is exactly zstd's of the filtered pixels (what older packers
                    // wrote), with the dictionary when there is one.
                    let filtered = enc.filter(&px);
                    let want = match &dictionary {
                        Some(d) => zstd::bulk::Compressor::with_dictionary(level, d)
                            .and_then(|mut c| c.compress(&filtered)),
                        None => zstd::bulk::compress(&filtered, level),
                    }
                    .unwrap();
                    assert_eq!(*stored, want[..], "{codec:?}");
                }
            }
            let mut back = vec![0u8; px.len()];
            dec.decode_into(&stored, &mut back).unwrap();
            assert_eq!(back, px, "{codec:?} dictionary {}", dictionary.is_some());
            assert_eq!(enc.encode_owned(px.clone()).unwrap(), *stored);
        }
        // The same bytes from another thread (each has its own zstd context).
        let px = pixels(9);
        let here = enc.encode(&px).unwrap().into_owned();
        let there = std::thread::scope(|s| {
            s.spawn(|| enc.encode(&px).unwrap().into_owned())
                .join()
                .unwrap()
        });
        assert_eq!(here, there);
    }

    #[test]
    fn records_round_trip_raw_zstd_every_filter_and_dictionary() {
        round_trip(Codec::Raw, None);
        let dict: Vec<u8> = (0..512u32).map(|b| (b * 7 % 253) as u8).collect();
        for filter in Filter::ALL {
            let codec = Codec::Zstd { level: 3, filter };
            round_trip(codec, None);
            round_trip(codec, Some(dict.clone()));
        }
        assert!(RecordEncoder::with_dictionary(Codec::Raw, geometry(), dict).is_err());
        assert!(RecordEncoder::new(Codec::Raw, geometry())
            .encode(&[0; 3])
            .is_err());
    }

    #[test]
    fn damaged_frames_are_errors() {
        let g = geometry();
        let codec = Codec::Zstd {
            level: 3,
            filter: Filter::Paeth,
        };
        let stored = RecordEncoder::new(codec, g)
            .encode(&pixels(1))
            .unwrap()
            .into_owned();
        let dec = RecordDecoder::new(codec, g, None).unwrap();
        let mut dst = vec![0u8; g.record_bytes()];
        assert!(matches!(
            dec.decode_into(&stored[..stored.len() - 2], &mut dst),
            Err(DecodeError::Frame(_))
        ));
        let mut small = vec![0u8; g.record_bytes() + 1];
        assert_eq!(
            dec.decode_into(&stored, &mut small),
            Err(DecodeError::Size(g.record_bytes()))
        );
    }

    #[test]
    fn shard_table_lays_out_what_the_header_describes() {
        let g = geometry();
        for codec in [
            Codec::Raw,
            Codec::Zstd {
                level: 1,
                filter: Filter::Up,
            },
        ] {
            let enc = RecordEncoder::new(codec, g);
            let mut t = ShardTable::new(g, codec, 10);
            let mut data = Vec::new();
            for seed in 0..3 {
                let px = pixels(seed);
                let stored = enc.encode(&px).unwrap();
                let pad = t.add(&stored, seed);
                data.extend_from_slice(&stored);
                data.resize(data.len() + pad, 0);
            }
            assert_eq!(t.data_size(), data.len() as u64);
            let (h, mut bytes) = t.encode(None);
            assert_eq!(bytes.len() as u64, h.data_offset);
            bytes.extend_from_slice(&data);
            let back = ShardHeader::decode(&bytes, bytes.len() as u64, "s").unwrap();
            assert_eq!((back.num_records, back.first_index), (3, 10));
            let labels = &bytes[h.labels_offset as usize..h.crc_offset as usize];
            assert_eq!(labels, [0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0]);
        }
    }

    #[test]
    fn names() {
        assert_eq!(shard_name(7), "shard-00007.vxs");
        assert_eq!(shard_name(123456), "shard-123456.vxs");
        assert_eq!(shard_number(&shard_name(42)), Some(42));
        assert_eq!(shard_number("shard-.vxs"), None);
        assert_eq!(shard_number("x.vxs"), None);
        assert!(is_shard_file_name("shard-00001.vxs.data"));
        assert!(!is_shard_file_name(SOURCES_NAME));
    }
}
