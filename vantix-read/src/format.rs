//! The on-disk format: every byte layout lives here, so the packer (writer) and the reader can
//! never disagree. The normative description is `docs/FORMAT.md`.
//!
//! The format has one home in two files:
//! - here, what the bytes are: constants and versions, the manifest ([`Manifest`], its parsing,
//!   checks and identity), the shard header ([`ShardHeader`]: its fields, layout, encoding and
//!   checks) and the codec and filter enums;
//! - in [`crate::codec`], how records and tables are written and read: record encode and
//!   decode (prediction filter, zstd, dictionary), the shard table writer, and the names of
//!   the files of a dataset (shards, `sources.json`). The filter kernels are
//!   [`crate::filter`]'s.
//!
//! A dataset is a directory (`train.vtx/`) holding `manifest.json` and shard files. A shard is:
//!
//! ```text
//! [header: 128 bytes][labels: n x u32][crc table: n x u32][offsets: (n+1) x u64, zstd only]
//! [zstd dictionary, optional][padding to 4096][data]
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Newest version of the format this library reads and writes (manifest and shard header).
/// Version 2 added the prediction filter (`codec.filter`, header bytes 96..100); version 3 the
/// trained zstd dictionary stored in each shard (header bytes 100..116). A dataset is written
/// as the oldest version that can describe it, so older readers still open what they can read.
pub const FORMAT_VERSION: u32 = 3;
/// The format version of a shard (and dataset) whose records are compressed with a dictionary.
pub const DICTIONARY_VERSION: u32 = 3;
/// Largest zstd dictionary a reader accepts (bytes).
pub const MAX_DICTIONARY_BYTES: u32 = 1 << 20;
/// Oldest version this library reads.
pub const MIN_FORMAT_VERSION: u32 = 1;
/// Name of the manifest inside a dataset directory.
pub const MANIFEST_NAME: &str = "manifest.json";
/// The `format` field of every manifest.
pub const MANIFEST_FORMAT: &str = "vantix";
/// Largest manifest a reader accepts (bytes); a bigger one is treated as corrupt.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;
/// First 8 bytes of every shard.
pub const SHARD_MAGIC: [u8; 8] = *b"VTXSHARD";
/// Size of the fixed shard header.
pub const HEADER_SIZE: usize = 128;
/// Alignment of the data section inside a shard (one page).
pub const DATA_ALIGN: u64 = 4096;
/// Alignment of a raw record's stride.
pub const RECORD_ALIGN: u64 = 64;
/// Largest image width or height accepted from a file, in pixels.
pub const MAX_SIDE: u32 = 1 << 16;
/// Most channels per pixel accepted from a file (`RGBA`).
pub const MAX_CHANNELS: u32 = 4;

/// How records are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Codec {
    /// Uncompressed pixels at a fixed, aligned stride.
    Raw,
    /// One zstd frame per record, found through an offsets table. With a `filter` other than
    /// `none`, each record's pixels were passed through that prediction filter before
    /// compression, and a reader undoes it after decompression.
    Zstd {
        /// The zstd compression level used, `-131072..=22` (informational for reading).
        level: i32,
        /// The prediction filter applied before compression; [`Filter::None`] (absent from the
        /// manifest) needs only format version 1, any other version 2.
        #[serde(default, skip_serializing_if = "Filter::is_none")]
        filter: Filter,
    },
}

/// A reversible prediction filter applied to a record before compression (PNG's filter types;
/// one filter for every row of every record). See [`crate::filter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// Bytes stored as they are.
    #[default]
    None,
    /// Difference from the same channel of the pixel to the left.
    Left,
    /// Difference from the byte above.
    Up,
    /// Difference from the floor of the mean of left and above.
    Avg,
    /// Difference from PNG's Paeth predictor of left, above and above-left.
    Paeth,
}

impl Filter {
    /// Every filter in id order: `ALL[id]` has the header id `id`.
    pub const ALL: [Filter; 5] = [
        Filter::None,
        Filter::Left,
        Filter::Up,
        Filter::Avg,
        Filter::Paeth,
    ];
    /// The filter id in a shard header (offset 96).
    pub fn id(self) -> u32 {
        self as u32
    }
    /// The filter with header id `id` (offset 96), or `None` for an id this reader does not know.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.get(id as usize).copied()
    }
    /// The filter's name in the manifest, the CLI and Python: `"none"`, `"left"`, `"up"`, `"avg"`
    /// or `"paeth"`.
    pub fn name(self) -> &'static str {
        match self {
            Filter::None => "none",
            Filter::Left => "left",
            Filter::Up => "up",
            Filter::Avg => "avg",
            Filter::Paeth => "paeth",
        }
    }
    /// Whether records are stored unfiltered (the manifest then omits `filter`).
    pub fn is_none(&self) -> bool {
        *self == Filter::None
    }
}

impl std::str::FromStr for Filter {
    type Err = Error;
    /// A filter by its [`name`](Filter::name); the error lists every filter.
    fn from_str(s: &str) -> Result<Self> {
        crate::parse_choice("filter", s, &Self::ALL.map(|f| (f.name(), f)))
    }
}

impl Codec {
    /// The codec names, as [`name`](Codec::name) gives them and [`FromStr`](std::str::FromStr)
    /// parses them.
    pub const NAMES: [&'static str; 2] = ["raw", "zstd"];
    /// The zstd level of a codec named `"zstd"` without one (zstd's own default level).
    pub const DEFAULT_LEVEL: i32 = 3;
    /// The filter of a codec named `"zstd"` without one: `up`, which about halves the size of
    /// photographs (docs/COMPRESSION.md).
    pub const DEFAULT_FILTER: Filter = Filter::Up;
    /// This codec with zstd's `level` and `filter` (a raw codec stays raw: they do not apply).
    pub fn with_zstd_settings(self, level: i32, filter: Filter) -> Self {
        match self {
            Codec::Raw => Codec::Raw,
            Codec::Zstd { .. } => Codec::Zstd { level, filter },
        }
    }
    /// The codec id in a shard header (offset 28): `0` raw, `1` zstd.
    pub fn id(self) -> u32 {
        match self {
            Codec::Raw => 0,
            Codec::Zstd { .. } => 1,
        }
    }
    /// The codec's `name` in the manifest: `"raw"` or `"zstd"`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Zstd { .. } => "zstd",
        }
    }
    /// The format version a dataset stored with this codec is written as: the oldest one that
    /// can describe it.
    pub fn format_version(self) -> u32 {
        if self.filter().is_none() {
            1
        } else {
            2
        }
    }
    /// The prediction filter applied before compression (`None` for raw records).
    pub fn filter(self) -> Filter {
        match self {
            Codec::Raw => Filter::None,
            Codec::Zstd { filter, .. } => filter,
        }
    }
}

impl std::str::FromStr for Codec {
    type Err = Error;
    /// A codec by its name, `"raw"` or `"zstd"` (with [`Codec::DEFAULT_LEVEL`] and
    /// [`Codec::DEFAULT_FILTER`]; see [`Codec::with_zstd_settings`]); the error lists the names.
    fn from_str(s: &str) -> Result<Self> {
        let zstd = Codec::Zstd {
            level: Codec::DEFAULT_LEVEL,
            filter: Codec::DEFAULT_FILTER,
        };
        crate::parse_choice("codec", s, &[("raw", Codec::Raw), ("zstd", zstd)])
    }
}

/// Geometry of every image in a dataset: `height x width x channels`, uint8, HWC; the channels
/// are the manifest's `channel_order` (`L` 1, `RGB` 3, `RGBA` 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    /// Image width in pixels, `1..=`[`MAX_SIDE`].
    pub width: u32,
    /// Image height in pixels, `1..=`[`MAX_SIDE`].
    pub height: u32,
    /// Channels per pixel: 1 (`L`), 3 (`RGB`) or 4 (`RGBA`).
    pub channels: u32,
}

impl Geometry {
    /// Bytes of one decoded image.
    pub fn record_bytes(&self) -> usize {
        self.width as usize * self.height as usize * self.channels as usize
    }
    /// Distance between raw records: the record size rounded up to [`RECORD_ALIGN`].
    pub fn raw_stride(&self) -> u64 {
        align_up(self.record_bytes() as u64, RECORD_ALIGN)
    }
    /// Check that both sides are in `1..=`[`MAX_SIDE`] and the channels in `1..=`[`MAX_CHANNELS`];
    /// otherwise an [`Error::Corrupt`] naming `file`.
    pub fn validate(&self, file: &str) -> Result<()> {
        if self.width == 0 || self.height == 0 || self.width > MAX_SIDE || self.height > MAX_SIDE {
            return Err(Error::corrupt(
                file,
                format!("image size {}x{} is out of range", self.width, self.height),
            ));
        }
        if self.channels == 0 || self.channels > MAX_CHANNELS {
            return Err(Error::corrupt(
                file,
                format!("channel count {} is out of range", self.channels),
            ));
        }
        Ok(())
    }
}

/// `x` rounded up to the next multiple of `a` (`a > 0`): `ceil(x / a) * a`.
pub fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// One shard as the manifest describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name inside the dataset directory (no directories).
    pub file: String,
    /// Number of records `n` in the shard; equals its header's `num_records`.
    pub num_records: u64,
    /// Exact size of the shard file in bytes.
    pub size_bytes: u64,
    /// xxh3-64 of the whole shard file, as 16 lower-case hex digits.
    pub xxh3: String,
}

/// A source file that could not be packed, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The path relative to the source root (readable form when it is not UTF-8: each byte
    /// outside valid UTF-8 as `\xNN`).
    pub path: String,
    /// Why it was not packed (e.g. `cannot decode: file is empty`); a reason starting with
    /// `truncated` marks a truncated image, packed only with `--allow-truncated`.
    pub reason: String,
    /// The path's exact bytes in lower-case hex, only when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
}

/// How the dataset was made (informational; a reader does not depend on it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackSettings {
    /// Resize mode used by the packer (`"squash"`, `"center-crop"`, `"pad"`, ...).
    pub resize: String,
    /// Resampling filter used when resizing (e.g. `"bilinear"`).
    pub interpolation: String,
    /// RGB fill colour of the `pad` resize mode (default black): an `L` dataset is padded with its
    /// luma, an `RGBA` one with this colour and alpha 255.
    #[serde(default)]
    pub pad_color: [u8; 3],
    /// The EXIF Orientation tag was applied before resizing (`--exif-orientation`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exif_orientation: bool,
    /// The source directory the dataset was packed from, as given to the packer.
    pub source: String,
    /// Number of source files found (packed + skipped).
    pub source_files: u64,
    /// xxh3-64 over the sorted list of `relative path \0 label \n` of every source file.
    pub source_list_xxh3: String,
    /// Version of the Vantix library that packed the dataset.
    pub vantix_version: String,
    /// Every JPEG was decoded at full size (`--exact-decode`); absent when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub exact_decode: bool,
    /// Largest accepted source image, in pixels (`--max-pixels`); absent in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pixels: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Which slice of the source list a part holds (`vantix-pack --part I/N`, informational).
///
/// The sorted source list of the whole tree (`pack.source_files` files, hash
/// `pack.source_list_xxh3`) is cut into `count` contiguous slices; part `index` (0-based) holds
/// the `num_sources` files starting at position `first_source`: those packed, then
/// `vantix-pack merge` joins the parts into one dataset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// Which part this is, `0..count`.
    pub index: u64,
    /// Number of parts the source list was cut into, at least 1.
    pub count: u64,
    /// Position of the part's first file in the whole sorted source list.
    pub first_source: u64,
    /// Source files of this part (its records plus its skipped files).
    pub num_sources: u64,
}

/// One `vantix-pack append` run: the records `first_index .. first_index + num_samples` came
/// from it (informational).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendInfo {
    /// The folder the new images were taken from.
    pub source: String,
    /// Global index of the first record this run added.
    pub first_index: u64,
    /// Number of records this run added.
    pub num_samples: u64,
    /// New source files found (packed + skipped).
    pub source_files: u64,
    /// xxh3-64 over `relative path \0 label \n` of the new source files, in record order.
    pub source_list_xxh3: String,
    /// Classes this run added at the end of `classes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_classes: Vec<String>,
    /// Version of the Vantix library that appended.
    pub vantix_version: String,
}

/// `manifest.json`: the human-readable index of a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `"vantix"` ([`MANIFEST_FORMAT`]).
    pub format: String,
    /// Format version, [`MIN_FORMAT_VERSION`]`..=`[`FORMAT_VERSION`]: 1, or 2 when the codec has a
    /// filter, or 3 when the shards store a zstd dictionary; at least [`Codec::format_version`].
    pub version: u32,
    /// Image geometry, stored flattened as the top-level `width`, `height` and `channels`.
    #[serde(flatten)]
    pub geometry: Geometry,
    /// Element type of a record: must be `"uint8"`.
    pub dtype: String,
    /// Axis order of a record: must be `"HWC"`.
    pub layout: String,
    /// `"L"` (grey), `"RGB"` or `"RGBA"` (alpha not premultiplied), with 1, 3 or 4 `channels`
    /// respectively.
    pub channel_order: String,
    /// How records are stored.
    pub codec: Codec,
    /// Class names in class-index order: label `k` means `classes[k]`; at most `u32::MAX` entries.
    pub classes: Vec<String>,
    /// Total number of records: the sum of the shards' `num_records`.
    pub num_samples: u64,
    /// The shard files in global record order (empty only when `num_samples` is 0).
    pub shards: Vec<ShardInfo>,
    /// How the dataset was made (informational, but it must be present and well-formed).
    pub pack: PackSettings,
    /// Source files that could not be packed (informational; `[]` when absent).
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// Set in a dataset made with `vantix-pack --part I/N` (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<PartInfo>,
    /// The `vantix-pack append` runs that added records, oldest first (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub appends: Vec<AppendInfo>,
    /// Indices of the records decoded from truncated files, packed only on request
    /// (`--allow-truncated`); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<u64>,
    /// The exact bytes (lower-case hex) of the class names that are not UTF-8, by class index;
    /// `classes` holds their readable form. Absent when every name is UTF-8.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub class_bytes: std::collections::BTreeMap<u32, String>,
}

impl Manifest {
    /// Parse and check `manifest.json` bytes (`name` names the file in errors): the JSON must be
    /// a manifest of a version this reader knows ([`MIN_FORMAT_VERSION`] to [`FORMAT_VERSION`],
    /// at least the one its codec needs) with in-range geometry and codec. Checks against the shard files are
    /// `Dataset::open`'s.
    pub fn parse(bytes: &[u8], name: &str) -> Result<Self> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(Error::corrupt(name, "manifest is over the size limit"));
        }
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(name, format!("manifest is not valid: {e}")))?;
        if m.format != MANIFEST_FORMAT {
            return Err(Error::corrupt(
                name,
                format!("format is {:?}, expected \"vantix\"", m.format),
            ));
        }
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&m.version) {
            return Err(Error::corrupt(
                name,
                format!(
                    "format version {} is not supported (this reader knows {MIN_FORMAT_VERSION} to {FORMAT_VERSION})",
                    m.version
                ),
            ));
        }
        if m.version < m.codec.format_version() {
            return Err(Error::corrupt(
                name,
                format!(
                    "codec {:?} needs format version {}, the manifest says {}",
                    m.codec.filter().name(),
                    m.codec.format_version(),
                    m.version
                ),
            ));
        }
        if m.dtype != "uint8" || m.layout != "HWC" {
            return Err(Error::corrupt(name, "only uint8 HWC records are supported"));
        }
        if !matches!(
            (m.channel_order.as_str(), m.geometry.channels),
            ("L", 1) | ("RGB", 3) | ("RGBA", 4)
        ) {
            return Err(Error::corrupt(
                name,
                format!(
                    "channel order {:?} with {} channels is not supported (L 1, RGB 3 or RGBA 4)",
                    m.channel_order, m.geometry.channels
                ),
            ));
        }
        m.geometry.validate(name)?;
        if m.classes.len() > u32::MAX as usize {
            return Err(Error::corrupt(name, "too many classes"));
        }
        if let Codec::Zstd { level, .. } = m.codec {
            if !(-131072..=22).contains(&level) {
                return Err(Error::corrupt(
                    name,
                    format!("zstd level {level} is out of range"),
                ));
            }
        }
        Ok(m)
    }

    /// The manifest as stored in `manifest.json`: its fields, then `identity`
    /// ([`Manifest::identity`]), so every writer (pack, append, merge) stores the fingerprint.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Stored<'a> {
            #[serde(flatten)]
            manifest: &'a Manifest,
            identity: String,
        }
        let stored = Stored {
            manifest: self,
            identity: self.identity(),
        };
        serde_json::to_string_pretty(&stored).expect("manifest serialises")
    }

    /// The `identity` field stored in `manifest.json` bytes, if any (datasets packed before
    /// it existed have none). A malformed field is an error naming the file.
    pub fn stored_identity(bytes: &[u8], name: &str) -> Result<Option<String>> {
        #[derive(Deserialize)]
        struct Stored {
            #[serde(default)]
            identity: Option<String>,
        }
        let s: Stored = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(name, format!("manifest is not valid: {e}")))?;
        Ok(s.identity)
    }

    /// The dataset's identity: XXH3-128 (32 lower-case hex digits) of the canonical text of
    /// everything that decides what the dataset serves: format version, geometry and channel
    /// order, codec, classes, and every shard's file name, record count, size and XXH3-64
    /// (which covers its labels and pixels). The informational fields (`pack`, `skipped`,
    /// `part`, `appends`) are not part of it. Specified in `docs/FORMAT.md` §2.7.
    pub fn identity(&self) -> String {
        format!(
            "{:032x}",
            xxhash_rust::xxh3::xxh3_128(self.identity_text().as_bytes())
        )
    }

    /// The canonical text hashed by [`Manifest::identity`] (one field per line).
    pub fn identity_text(&self) -> String {
        use std::fmt::Write;
        let json = |s: &str| serde_json::to_string(s).expect("a string serialises");
        let g = self.geometry;
        let level = match self.codec {
            Codec::Zstd { level, .. } => level,
            Codec::Raw => 0,
        };
        let mut t = String::new();
        let _ = writeln!(t, "vantix-identity 1");
        let _ = writeln!(t, "version {}", self.version);
        let _ = writeln!(
            t,
            "geometry {} {} {} {}",
            g.height, g.width, g.channels, self.channel_order
        );
        let _ = writeln!(
            t,
            "codec {} {level} {}",
            self.codec.name(),
            self.codec.filter().name()
        );
        let _ = writeln!(t, "num_samples {}", self.num_samples);
        let _ = writeln!(t, "classes {}", self.classes.len());
        for c in &self.classes {
            let _ = writeln!(t, "{}", json(c));
        }
        let _ = writeln!(t, "shards {}", self.shards.len());
        for s in &self.shards {
            let _ = writeln!(
                t,
                "{} {} {} {}",
                json(&s.file),
                s.num_records,
                s.size_bytes,
                s.xxh3
            );
        }
        t
    }
}

/// The fixed 128-byte little-endian header at the start of every shard.
///
/// | offset | width | field |
/// |---|---|---|
/// | 0 | 8 | magic `VTXSHARD` |
/// | 8 | 4 | version |
/// | 12 | 4 | header size (128) |
/// | 16 | 4 | width |
/// | 20 | 4 | height |
/// | 24 | 4 | channels |
/// | 28 | 4 | codec (0 raw, 1 zstd) |
/// | 32 | 8 | number of records `n` |
/// | 40 | 8 | record stride (raw) or 0 (zstd) |
/// | 48 | 8 | labels offset (n x u32) |
/// | 56 | 8 | record CRC table offset (n x u32, CRC-32 of each stored record) |
/// | 64 | 8 | offsets table offset ((n+1) x u64, zstd) or 0 |
/// | 72 | 8 | data offset (multiple of 4096) |
/// | 80 | 8 | data size |
/// | 88 | 8 | global index of the first record |
/// | 96 | 4 | prediction filter id (0 none, 1 left, 2 up, 3 avg, 4 paeth; zstd only) |
/// | 100 | 4 | zstd dictionary size in bytes, 0 for none (version 3, zstd only) |
/// | 104 | 8 | dictionary offset (right after the tables) or 0 |
/// | 112 | 4 | CRC-32 of the dictionary bytes, or 0 |
/// | 116 | 8 | reserved, zero |
/// | 124 | 4 | CRC-32 of bytes 0..124 |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    /// Format version of this shard (bytes 8..12): at least what the codec needs, at most the
    /// manifest's `version`, and [`DICTIONARY_VERSION`] exactly when the shard stores a dictionary.
    pub version: u32,
    /// Width, height and channels (bytes 16..20, 20..24, 24..28); equal to the manifest's.
    pub geometry: Geometry,
    /// Codec id (bytes 28..32): `0` raw, `1` zstd, as [`Codec::id`].
    pub codec_id: u32,
    /// Prediction filter id (bytes 96..100, version 2 and later), as [`Filter::id`]; non-zero only
    /// with zstd.
    pub filter_id: u32,
    /// Number of records `n` (bytes 32..40).
    pub num_records: u64,
    /// Distance between consecutive raw records (bytes 40..48): `align_up(record_bytes, 64)`;
    /// 0 for zstd.
    pub stride: u64,
    /// Start of the labels table, `n` x u32 (bytes 48..56): always 128.
    pub labels_offset: u64,
    /// Start of the record CRC table, `n` x u32 (bytes 56..64): `128 + 4n`.
    pub crc_offset: u64,
    /// Start of the offsets table, `n + 1` x u64 relative to `data_offset` (bytes 64..72): zstd
    /// `128 + 8n`, raw 0 (no table).
    pub offsets_offset: u64,
    /// Start of the data section (bytes 72..80): the end of the tables aligned up to
    /// [`DATA_ALIGN`].
    pub data_offset: u64,
    /// Length of the data section in bytes (bytes 80..88); `data_offset + data_size` is the file
    /// size.
    pub data_size: u64,
    /// Global index of the shard's first record (bytes 88..96): the sum of the earlier shards'
    /// `num_records`.
    pub first_index: u64,
    /// Start of the zstd dictionary (bytes 104..112, version 3): the end of the offsets table;
    /// 0 without one.
    pub dict_offset: u64,
    /// Size of the zstd dictionary in bytes (bytes 100..104, version 3),
    /// `1..=`[`MAX_DICTIONARY_BYTES`]; 0 without one.
    pub dict_size: u32,
    /// CRC-32 of the dictionary's bytes (bytes 112..116, version 3); 0 without one.
    pub dict_crc: u32,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

impl ShardHeader {
    /// Lay out a shard of `n` records. `data_size` is the byte length of the data section.
    pub fn layout(
        geometry: Geometry,
        codec: Codec,
        num_records: u64,
        data_size: u64,
        first_index: u64,
    ) -> Self {
        Self::layout_with_dictionary(geometry, codec, num_records, data_size, first_index, None)
    }

    /// [`layout`](Self::layout) for a zstd shard that stores `dictionary` (its records are
    /// compressed with it) after its tables; the shard is then format version 3.
    pub fn layout_with_dictionary(
        geometry: Geometry,
        codec: Codec,
        num_records: u64,
        data_size: u64,
        first_index: u64,
        dictionary: Option<&[u8]>,
    ) -> Self {
        let (size, crc) = dictionary.map_or((0, 0), |d| (d.len() as u32, crc32fast::hash(d)));
        Self::layout_parts(
            geometry,
            codec,
            num_records,
            data_size,
            first_index,
            (size, crc),
        )
    }

    /// The layout with a dictionary of `dict_size` bytes whose CRC-32 is `dict_crc`.
    fn layout_parts(
        geometry: Geometry,
        codec: Codec,
        num_records: u64,
        data_size: u64,
        first_index: u64,
        (dict_size, dict_crc): (u32, u32),
    ) -> Self {
        let labels_offset = HEADER_SIZE as u64;
        let crc_offset = labels_offset + 4 * num_records;
        let (offsets_offset, tables_end) = match codec {
            Codec::Raw => (0, crc_offset + 4 * num_records),
            Codec::Zstd { .. } => {
                let o = crc_offset + 4 * num_records;
                (o, o + 8 * (num_records + 1))
            }
        };
        let stride = match codec {
            Codec::Raw => geometry.raw_stride(),
            Codec::Zstd { .. } => 0,
        };
        let (dict_offset, dict_crc, version) = if dict_size > 0 {
            (tables_end, dict_crc, DICTIONARY_VERSION)
        } else {
            (0, 0, codec.format_version())
        };
        let tables_end = tables_end + dict_size as u64;
        ShardHeader {
            version,
            geometry,
            codec_id: codec.id(),
            filter_id: codec.filter().id(),
            num_records,
            stride,
            labels_offset,
            crc_offset,
            offsets_offset,
            data_offset: align_up(tables_end, DATA_ALIGN),
            data_size,
            first_index,
            dict_offset,
            dict_size,
            dict_crc,
        }
    }

    /// Total size of the shard file this header describes.
    pub fn file_size(&self) -> u64 {
        self.data_offset + self.data_size
    }

    /// The 128 header bytes: the fields at their offsets, reserved bytes zero, and the CRC-32 of
    /// bytes 0..124 in bytes 124..128.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&SHARD_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.geometry.width.to_le_bytes());
        b[20..24].copy_from_slice(&self.geometry.height.to_le_bytes());
        b[24..28].copy_from_slice(&self.geometry.channels.to_le_bytes());
        b[28..32].copy_from_slice(&self.codec_id.to_le_bytes());
        b[96..100].copy_from_slice(&self.filter_id.to_le_bytes());
        b[100..104].copy_from_slice(&self.dict_size.to_le_bytes());
        b[104..112].copy_from_slice(&self.dict_offset.to_le_bytes());
        b[112..116].copy_from_slice(&self.dict_crc.to_le_bytes());
        for (i, v) in [
            self.num_records,
            self.stride,
            self.labels_offset,
            self.crc_offset,
            self.offsets_offset,
            self.data_offset,
            self.data_size,
            self.first_index,
        ]
        .iter()
        .enumerate()
        {
            b[32 + 8 * i..40 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parse and check a header against the size of its file. Checks here are the ones that
    /// need nothing but the file; the dataset checks it against the manifest.
    pub fn decode(bytes: &[u8], file_len: u64, file: &str) -> Result<Self> {
        if bytes.len() < HEADER_SIZE || file_len < HEADER_SIZE as u64 {
            return Err(Error::corrupt(
                file,
                format!("file is {file_len} bytes, shorter than the {HEADER_SIZE}-byte header"),
            ));
        }
        let b = &bytes[..HEADER_SIZE];
        if b[0..8] != SHARD_MAGIC {
            return Err(Error::corrupt(file, "bad magic: not a Vantix shard"));
        }
        let version = u32_at(b, 8);
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(Error::corrupt(
                file,
                format!(
                    "unsupported shard version {version} (this reader knows {MIN_FORMAT_VERSION} to {FORMAT_VERSION})"
                ),
            ));
        }
        if u32_at(b, 12) as usize != HEADER_SIZE {
            return Err(Error::corrupt(file, "unexpected header size"));
        }
        let stored_crc = u32_at(b, 124);
        if crc32fast::hash(&b[..124]) != stored_crc {
            return Err(Error::corrupt(
                file,
                "header checksum mismatch (header is damaged)",
            ));
        }
        let reserved = if version < DICTIONARY_VERSION {
            100
        } else {
            116
        };
        if b[reserved..124].iter().any(|&x| x != 0) {
            return Err(Error::corrupt(file, "reserved header bytes are not zero"));
        }
        let geometry = Geometry {
            width: u32_at(b, 16),
            height: u32_at(b, 20),
            channels: u32_at(b, 24),
        };
        geometry.validate(file)?;
        let h = ShardHeader {
            version,
            geometry,
            codec_id: u32_at(b, 28),
            filter_id: u32_at(b, 96),
            num_records: u64_at(b, 32),
            stride: u64_at(b, 40),
            labels_offset: u64_at(b, 48),
            crc_offset: u64_at(b, 56),
            offsets_offset: u64_at(b, 64),
            data_offset: u64_at(b, 72),
            data_size: u64_at(b, 80),
            first_index: u64_at(b, 88),
            dict_offset: u64_at(b, 104),
            dict_size: u32_at(b, 100),
            dict_crc: u32_at(b, 112),
        };
        // Every table must sit where `layout` puts it: this bounds all offsets by the file size
        // with plain arithmetic, before anything is read or allocated.
        if h.num_records > file_len / 4 {
            return Err(Error::corrupt(
                file,
                format!(
                    "record count {} cannot fit in {file_len} bytes",
                    h.num_records
                ),
            ));
        }
        if version < 2 && h.filter_id != 0 {
            return Err(Error::corrupt(file, "reserved header bytes are not zero"));
        }
        let filter = Filter::from_id(h.filter_id).ok_or_else(|| {
            Error::corrupt(
                file,
                format!("unknown prediction filter id {}", h.filter_id),
            )
        })?;
        let codec = match h.codec_id {
            0 if filter.is_none() => Codec::Raw,
            0 => return Err(Error::corrupt(file, "raw records cannot have a filter")),
            1 => Codec::Zstd { level: 0, filter },
            c => return Err(Error::corrupt(file, format!("unknown codec id {c}"))),
        };
        if h.dict_size > MAX_DICTIONARY_BYTES {
            return Err(Error::corrupt(
                file,
                format!(
                    "zstd dictionary of {} bytes is over the {MAX_DICTIONARY_BYTES}-byte limit",
                    h.dict_size
                ),
            ));
        }
        if h.dict_size > 0 && codec == Codec::Raw {
            return Err(Error::corrupt(file, "raw records cannot have a dictionary"));
        }
        if version >= DICTIONARY_VERSION && h.dict_size == 0 {
            return Err(Error::corrupt(
                file,
                format!("a version {version} shard must hold a zstd dictionary"),
            ));
        }
        // The layout of a shard with a dictionary of this size: the dictionary's place is fixed
        // too, so its bounds are checked by the comparison below.
        let expect = ShardHeader::layout_parts(
            geometry,
            codec,
            h.num_records,
            h.data_size,
            h.first_index,
            (h.dict_size, h.dict_crc),
        );
        if (
            h.stride,
            h.labels_offset,
            h.crc_offset,
            h.offsets_offset,
            h.data_offset,
            h.dict_offset,
            h.dict_crc,
        ) != (
            expect.stride,
            expect.labels_offset,
            expect.crc_offset,
            expect.offsets_offset,
            expect.data_offset,
            expect.dict_offset,
            expect.dict_crc,
        ) {
            return Err(Error::corrupt(
                file,
                "header table offsets are inconsistent",
            ));
        }
        let end = h.data_offset.checked_add(h.data_size);
        if end != Some(file_len) {
            return Err(Error::corrupt(
                file,
                format!(
                    "file is {file_len} bytes but its header describes {} bytes (truncated or extended)",
                    h.data_offset as u128 + h.data_size as u128
                ),
            ));
        }
        if codec == Codec::Raw && h.num_records.checked_mul(h.stride) != Some(h.data_size) {
            return Err(Error::corrupt(
                file,
                "raw data size does not equal records x stride",
            ));
        }
        Ok(h)
    }
}

/// xxh3-64 of a byte slice as 16 lower-case hex digits (the manifest's shard checksum).
pub fn xxh3_hex(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Read the `i`-th little-endian u32 of a table.
pub fn table_u32(table: &[u8], i: usize) -> u32 {
    u32_at(table, 4 * i)
}

/// Read the `i`-th little-endian u64 of a table.
pub fn table_u64(table: &[u8], i: usize) -> u64 {
    u64_at(table, 8 * i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let g = Geometry {
            width: 32,
            height: 16,
            channels: 3,
        };
        let h = ShardHeader::layout(g, Codec::Raw, 10, 10 * g.raw_stride(), 5);
        let b = h.encode();
        let len = h.file_size();
        assert_eq!(ShardHeader::decode(&b, len, "s").unwrap(), h);
        assert!(ShardHeader::decode(&b, len - 1, "s").is_err());
        for i in 0..HEADER_SIZE {
            let mut d = b;
            d[i] ^= 0x10;
            assert!(
                ShardHeader::decode(&d, len, "s").is_err(),
                "flip at {i} undetected"
            );
        }
    }

    #[test]
    fn zstd_layout_has_offsets_table() {
        let g = Geometry {
            width: 8,
            height: 8,
            channels: 3,
        };
        let h = ShardHeader::layout(
            g,
            Codec::Zstd {
                level: 3,
                filter: Filter::Paeth,
            },
            3,
            100,
            0,
        );
        assert_eq!(h.filter_id, 4);
        assert_eq!(h.offsets_offset, 128 + 12 + 12);
        assert_eq!(h.data_offset % DATA_ALIGN, 0);
        assert_eq!(
            ShardHeader::decode(&h.encode(), h.file_size(), "s").unwrap(),
            h
        );
    }

    #[test]
    fn dictionary_layout_round_trips_and_is_checked() {
        let g = Geometry {
            width: 32,
            height: 32,
            channels: 3,
        };
        let codec = Codec::Zstd {
            level: 3,
            filter: Filter::Up,
        };
        let dict = vec![7u8; 5000];
        let h = ShardHeader::layout_with_dictionary(g, codec, 10, 1234, 0, Some(&dict));
        assert_eq!(h.version, DICTIONARY_VERSION);
        let tables_end = 128 + 40 + 40 + 88;
        assert_eq!((h.dict_offset, h.dict_size), (tables_end, 5000));
        assert_eq!(h.dict_crc, crc32fast::hash(&dict));
        assert_eq!(h.data_offset, align_up(tables_end + 5000, DATA_ALIGN));
        let b = h.encode();
        assert_eq!(ShardHeader::decode(&b, h.file_size(), "s").unwrap(), h);
        for i in 0..HEADER_SIZE {
            let mut d = b;
            d[i] ^= 0x04;
            assert!(
                ShardHeader::decode(&d, h.file_size(), "s").is_err(),
                "flip at {i} undetected"
            );
        }
        // Layout errors behind a valid header CRC: a version 3 shard without a dictionary, a
        // dictionary offset elsewhere, a dictionary on raw records, one over the limit (the
        // dictionary CRC itself is checked against the bytes by `Dataset::open`).
        let reencode = |f: &dyn Fn(&mut ShardHeader)| {
            let mut x = h;
            f(&mut x);
            ShardHeader::decode(&x.encode(), x.file_size(), "s")
        };
        assert!(reencode(&|x| x.dict_size = 0).is_err());
        assert!(reencode(&|x| x.dict_offset += 8).is_err());
        assert!(reencode(&|x| x.dict_size = MAX_DICTIONARY_BYTES + 1).is_err());
        assert!(reencode(&|x| x.version = 2).is_err());
        let raw = ShardHeader::layout_with_dictionary(g, Codec::Raw, 1, 3072, 0, Some(&dict));
        assert!(ShardHeader::decode(&raw.encode(), raw.file_size(), "s").is_err());
        // No dictionary: the layout of before (version 2 for a filter).
        let plain = ShardHeader::layout_with_dictionary(g, codec, 10, 1234, 0, None);
        assert_eq!(plain, ShardHeader::layout(g, codec, 10, 1234, 0));
        assert_eq!(
            (plain.version, plain.dict_offset, plain.dict_size),
            (2, 0, 0)
        );
    }

    /// The identity test vector of `docs/FORMAT.md` §2.7: the example manifest of §2.5.
    #[test]
    fn identity_test_vector() {
        let m = Manifest::parse(EXAMPLE_MANIFEST.as_bytes(), "example").unwrap();
        let text = m.identity_text();
        assert!(text.starts_with(
            "vantix-identity 1\nversion 1\ngeometry 224 224 3 RGB\ncodec raw 0 none\n\
             num_samples 1500\nclasses 2\n\"cat\"\n\"dog\"\nshards 2\n\
             \"shard-00000.vxs\" 1000 150536192 3f9a0c1e5b7d2468\n"
        ));
        println!("{text}{}", m.identity());
        assert_eq!(m.identity(), IDENTITY_VECTOR);
        // Stored by `to_json`, last, and read back.
        let json = m.to_json();
        assert!(json
            .trim_end()
            .ends_with(&format!("\"identity\": \"{IDENTITY_VECTOR}\"\n}}")));
        assert_eq!(
            Manifest::stored_identity(json.as_bytes(), "m")
                .unwrap()
                .as_deref(),
            Some(IDENTITY_VECTOR)
        );
        assert_eq!(Manifest::parse(json.as_bytes(), "m").unwrap(), m);
    }

    const IDENTITY_VECTOR: &str = "349885f1f9136435a623538ac1495e31";

    const EXAMPLE_MANIFEST: &str = r#"{
  "format": "vantix",
  "version": 1,
  "width": 224,
  "height": 224,
  "channels": 3,
  "dtype": "uint8",
  "layout": "HWC",
  "channel_order": "RGB",
  "codec": {
    "name": "raw"
  },
  "classes": [
    "cat",
    "dog"
  ],
  "num_samples": 1500,
  "shards": [
    {
      "file": "shard-00000.vxs",
      "num_records": 1000,
      "size_bytes": 150536192,
      "xxh3": "3f9a0c1e5b7d2468"
    },
    {
      "file": "shard-00001.vxs",
      "num_records": 500,
      "size_bytes": 75272192,
      "xxh3": "c0ffee0123456789"
    }
  ],
  "pack": {
    "resize": "center-crop",
    "interpolation": "bilinear",
    "pad_color": [
      0,
      0,
      0
    ],
    "source": "/data/pets/train",
    "source_files": 1502,
    "source_list_xxh3": "8d1e4f00a2b3c4d5",
    "vantix_version": "0.1.0"
  },
  "skipped": [
    {
      "path": "cat/broken.jpg",
      "reason": "cannot decode: unexpected end of file"
    },
    {
      "path": "dog/empty.png",
      "reason": "cannot decode: file is empty"
    }
  ]
}
"#;
}
