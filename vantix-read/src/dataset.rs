//! Opening a packed dataset: the manifest is parsed, every shard is memory-mapped, and every
//! length, offset and count is checked against the real file sizes before a single record is
//! served. After `Dataset::open` succeeds, reading record `i` is bounds-safe by construction.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::Mmap;

use crate::codec::{DecodeError, RecordDecoder};
use crate::error::{Error, Result};
use crate::format::{
    table_u32, table_u64, Codec, Geometry, Manifest, ShardHeader, ShardInfo, MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
};

/// What identifies a shard file and its content on disk: the file (device and inode), its length
/// and its modification time (s, ns). Taken at open; a shard whose file at its path still is
/// the mapped one but has another length or modification time has been modified under the
/// reader. The change time is left out on purpose: `chmod`, a hard link, an extended attribute
/// or a rename change it without touching the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
    fn same_file(&self, other: &Stamp) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// A modification time `(s, ns)` as seconds since the epoch, for messages.
fn time_text((s, ns): (i64, i64)) -> String {
    format!("{s}.{ns:09}")
}

/// Smallest number of bytes a zstd frame can take to decompress to `n` bytes: a frame holds
/// blocks of at most 128 KiB of output each, and every block has a 3-byte header (plus at
/// least the 4-byte magic number). Bounding each frame from below bounds the record size by
/// the file size, so a small file cannot declare records that no allocation can hold.
pub fn min_zstd_frame(n: usize) -> u64 {
    4 + 3 * (n as u64).div_ceil(128 * 1024)
}

/// A zeroed buffer of `len` bytes, or an error naming `what` when the allocation fails (never
/// an abort).
pub fn try_zeroed(len: usize, what: &str) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        Error::alloc(format!(
            "cannot allocate {len} bytes for {what}: not enough memory"
        ))
    })?;
    v.resize(len, 0);
    Ok(v)
}

/// How a pass will read the shards ([`Dataset::advise`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No particular order: the kernel's default readahead (`MADV_NORMAL`).
    Normal,
    /// Records in random order, each asked for ahead by the loader: no kernel readahead
    /// (`MADV_RANDOM`).
    Random,
    /// Records in file order: aggressive kernel readahead (`MADV_SEQUENTIAL`).
    Sequential,
}

/// One memory-mapped, validated shard. Its file descriptor is closed once the mapping exists
/// (a dataset of any number of shards holds none), and changes are checked by path.
pub struct Shard {
    name: String,
    path: PathBuf,
    stamp: Stamp,
    mmap: Mmap,
    header: ShardHeader,
    /// The offsets table (zstd), copied at open: it is read for every record and must not
    /// fault if the file is truncated.
    offsets: Vec<u64>,
    /// Set once the whole shard has passed verification (checked-read mode `shard`).
    verified: AtomicBool,
    /// Decodes its records (with the shard's zstd dictionary, format version 3).
    decoder: RecordDecoder,
}

impl Shard {
    fn table(&self, offset: u64, len: u64) -> &[u8] {
        &self.mmap[offset as usize..(offset + len) as usize]
    }
    fn labels(&self) -> &[u8] {
        self.table(self.header.labels_offset, 4 * self.header.num_records)
    }
    fn crcs(&self) -> &[u8] {
        self.table(self.header.crc_offset, 4 * self.header.num_records)
    }
    fn mapped_offsets(&self) -> &[u8] {
        self.table(
            self.header.offsets_offset,
            8 * (self.header.num_records + 1),
        )
    }
    /// The stored bytes of local record `j` (raw pixels or one zstd frame).
    fn stored(&self, j: usize, record_bytes: usize) -> &[u8] {
        let h = &self.header;
        let (start, end) = if h.offsets_offset == 0 {
            let s = h.data_offset as usize + j * h.stride as usize;
            (s, s + record_bytes)
        } else {
            let base = h.data_offset as usize;
            (
                base + self.offsets[j] as usize,
                base + self.offsets[j + 1] as usize,
            )
        };
        &self.mmap[start..end]
    }
    /// The shard's file name inside the dataset directory, as the manifest lists it.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Number of records in the shard.
    pub fn num_records(&self) -> u64 {
        self.header.num_records
    }
    /// Size of the shard file in bytes (the length of its mapping).
    pub fn size_bytes(&self) -> u64 {
        self.mmap.len() as u64
    }
    /// Format version of this shard's header.
    pub fn version(&self) -> u32 {
        self.header.version
    }
    /// Size in bytes of the zstd dictionary stored in this shard (0: none).
    pub fn dictionary_size(&self) -> u32 {
        self.header.dict_size
    }
    /// The zstd dictionary stored in this shard, if any.
    pub fn dictionary(&self) -> Option<&[u8]> {
        dictionary_in(&self.mmap, &self.header)
    }

    /// Check that the file behind the mapping still has the length and modification time it
    /// had at open (`lstat` of its path: one system call, no descriptor kept).
    ///
    /// Reading a page of a mapping past the end of a truncated file kills the process with
    /// `SIGBUS`, so the loader calls this before (and after) copying from a shard: a shard that
    /// is truncated, extended or rewritten in place while open becomes an error that names it
    /// and what changed. Metadata changes (`chmod`, hard links, extended attributes: the change
    /// time) are not changes. A path that now holds another file (a shard replaced by a rename,
    /// or removed) is not a change to the open dataset either: the mapping keeps the old file,
    /// complete, alive. What cannot be caught this way: a truncation that races with the copy
    /// itself, and a truncation of the old file, after its path was replaced, through another
    /// hard link or a descriptor opened before (see `docs/FORMAT.md`, "Concurrent changes").
    pub fn check_unchanged(&self) -> Result<()> {
        let meta = match std::fs::symlink_metadata(&self.path) {
            Ok(m) => m,
            // Removed: the mapping keeps the old file alive, as after a replacement.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&self.name, e)),
        };
        let now = Stamp::of(&meta);
        if now == self.stamp || !now.same_file(&self.stamp) {
            return Ok(());
        }
        let what = if now.len != self.stamp.len {
            format!(
                "it is now {} bytes, it was {} bytes when the dataset was opened",
                now.len, self.stamp.len
            )
        } else {
            format!(
                "it was rewritten in place (same size, but its modification time changed from \
                 {} to {})",
                time_text(self.stamp.mtime),
                time_text(now.mtime)
            )
        };
        Err(Error::Changed {
            file: self.name.clone(),
            msg: format!(
                "shard changed on disk while the dataset was open: {what}; a packed dataset must \
                 not be modified in place (repack to a new path, then reopen)"
            ),
        })
    }
}

impl Shard {
    /// Open the shard `info` of `manifest` (in the dataset directory `root`, whose manifest
    /// file `mfile` names errors): a plain file name, a regular file (no symlink) of the size
    /// the manifest gives, mapped, with a header, dictionary and tables that fit the manifest;
    /// its first record must have the global index `first_index`. Its labels, each checked to
    /// name a class, are appended to `labels`.
    fn open(
        root: &Path,
        info: &ShardInfo,
        manifest: &Manifest,
        mfile: &str,
        first_index: u64,
        labels: &mut Vec<u32>,
    ) -> Result<Shard> {
        check_shard_name(&info.file, mfile)?;
        let spath = root.join(&info.file);
        let sname = spath.display().to_string();
        let meta = std::fs::symlink_metadata(&spath).map_err(|e| Error::io(&spath, e))?;
        if !meta.file_type().is_file() {
            return Err(Error::corrupt(
                &sname,
                "shard is not a regular file (symlinks are refused)",
            ));
        }
        // Opened without following symlinks: a link swapped in after the check above is
        // refused too.
        let (file, meta) = open_regular(&spath, "shard")?;
        let stamp = Stamp::of(&meta);
        let len = meta.len();
        if len != info.size_bytes {
            return Err(Error::corrupt(
                &sname,
                format!(
                    "file is {len} bytes, the manifest says {} (truncated or replaced)",
                    info.size_bytes
                ),
            ));
        }
        // SAFETY: the mapping is read-only; a file changed underneath by another process is
        // outside what a mapping can guard against (see docs/FORMAT.md, "Concurrent changes").
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&spath, e))?;
        if mmap.len() as u64 != len {
            return Err(Error::corrupt(
                &sname,
                "file changed while it was being opened",
            ));
        }
        let header = ShardHeader::decode(&mmap, len, &sname)?;
        check_header(&header, info, manifest, first_index, &sname)?;
        // The mapping does not need its descriptor: closing it here lets any number of
        // shards open under a small `ulimit -n`; changes are checked by path.
        drop(file);
        let decoder = load_decoder(dictionary_in(&mmap, &header), &header, manifest, &sname)?;
        let mut shard = Shard {
            name: sname,
            path: spath,
            stamp,
            mmap,
            header,
            offsets: Vec::new(),
            verified: AtomicBool::new(false),
            decoder,
        };
        // The tables are copied: their size is bounded by the file's (checked by
        // `ShardHeader::decode`), and the allocation is fallible.
        shard.copy_labels(manifest.classes.len() as u64, labels)?;
        if header.offsets_offset != 0 {
            shard.offsets = shard.copy_offsets(manifest.geometry)?;
        }
        Ok(shard)
    }

    fn alloc_error(&self) -> Error {
        Error::corrupt(&self.name, "not enough memory for the shard's tables")
    }

    /// Append the shard's labels to `labels`, each checked to be below `num_classes`.
    fn copy_labels(&self, num_classes: u64, labels: &mut Vec<u32>) -> Result<()> {
        let n = self.header.num_records as usize;
        labels.try_reserve(n).map_err(|_| self.alloc_error())?;
        let table = self.labels();
        for j in 0..n {
            let label = table_u32(table, j);
            if label as u64 >= num_classes {
                return Err(Error::corrupt(
                    &self.name,
                    format!("record {j} has label {label} but there are {num_classes} classes"),
                ));
            }
            labels.push(label);
        }
        Ok(())
    }

    /// The offsets table (zstd), checked: it starts at 0, ascends, ends at the data size, and
    /// every frame is at least the smallest that can hold a record and at most a bound.
    fn copy_offsets(&self, geometry: Geometry) -> Result<Vec<u64>> {
        let (n, sname) = (self.header.num_records as usize, &self.name);
        let record_bytes = geometry.record_bytes();
        let o = self.mapped_offsets();
        let mut offsets = Vec::new();
        offsets
            .try_reserve_exact(n + 1)
            .map_err(|_| self.alloc_error())?;
        let mut prev = table_u64(o, 0);
        if prev != 0 {
            return Err(Error::corrupt(sname, "offsets table does not start at 0"));
        }
        offsets.push(prev);
        let min_frame = min_zstd_frame(record_bytes);
        for j in 1..=n {
            let cur = table_u64(o, j);
            if cur < prev || cur - prev > (record_bytes as u64) * 2 + 1024 {
                return Err(Error::corrupt(
                    sname,
                    format!("offsets table entry {j} is invalid"),
                ));
            }
            if cur - prev < min_frame {
                return Err(Error::corrupt(
                    sname,
                    format!(
                        "record {}: a zstd frame of {} bytes cannot hold a record of \
                         {record_bytes} bytes ({}x{}x{}; at least {min_frame} bytes)",
                        j - 1,
                        cur - prev,
                        geometry.height,
                        geometry.width,
                        geometry.channels
                    ),
                ));
            }
            offsets.push(cur);
            prev = cur;
        }
        if prev != self.header.data_size {
            return Err(Error::corrupt(
                sname,
                "offsets table does not end at the data size",
            ));
        }
        Ok(offsets)
    }

    /// Decode local record `j` into `dst` (`record_bytes` long).
    fn decode_into(&self, j: usize, dst: &mut [u8]) -> Result<()> {
        self.decoder
            .decode_into(self.stored(j, dst.len()), dst)
            .map_err(|e| {
                let msg = match e {
                    DecodeError::Frame(why) => format!("record {j}: zstd frame is damaged: {why}"),
                    DecodeError::Size(n) => format!(
                        "record {j}: decompressed to {n} bytes, expected {}",
                        dst.len()
                    ),
                };
                Error::corrupt(&self.name, msg)
            })
    }
}

/// The dictionary bytes of a shard whose (decoded, so in-bounds) header is `header`.
fn dictionary_in<'a>(mmap: &'a [u8], header: &ShardHeader) -> Option<&'a [u8]> {
    let (offset, size) = (header.dict_offset as usize, header.dict_size as usize);
    (size > 0).then(|| &mmap[offset..offset + size])
}

/// The record decoder of a shard, with its `dictionary` (checked against the header's CRC-32).
fn load_decoder(
    dictionary: Option<&[u8]>,
    header: &ShardHeader,
    manifest: &Manifest,
    sname: &str,
) -> Result<RecordDecoder> {
    if let Some(d) = dictionary {
        if crc32fast::hash(d) != header.dict_crc {
            return Err(Error::corrupt(
                sname,
                "zstd dictionary is damaged (its CRC-32 does not match the header)",
            ));
        }
    }
    RecordDecoder::new(manifest.codec, manifest.geometry, dictionary)
        .ok_or_else(|| Error::corrupt(sname, "zstd dictionary cannot be loaded (it is damaged)"))
}

/// Check a shard's decoded header against the manifest's description of the dataset and of
/// the shard (`info`), and its place (`first_index`).
fn check_header(
    header: &ShardHeader,
    info: &ShardInfo,
    manifest: &Manifest,
    first_index: u64,
    sname: &str,
) -> Result<()> {
    if header.geometry != manifest.geometry {
        return Err(Error::corrupt(
            sname,
            "image geometry differs from the manifest",
        ));
    }
    // A shard is written at the oldest version that describes it, so the shards of a merged
    // dataset can differ (a small part without a dictionary is version 2 in a version 3
    // dataset): each must be at least what the codec needs and at most the manifest's version.
    if header.version > manifest.version || header.version < manifest.codec.format_version() {
        return Err(Error::corrupt(
            sname,
            format!(
                "shard version {} does not fit the manifest's version {} (codec {:?} needs at least {})",
                header.version,
                manifest.version,
                manifest.codec.name(),
                manifest.codec.format_version()
            ),
        ));
    }
    if header.codec_id != manifest.codec.id() || header.filter_id != manifest.codec.filter().id() {
        return Err(Error::corrupt(
            sname,
            "codec or filter differs from the manifest",
        ));
    }
    if header.num_records != info.num_records {
        return Err(Error::corrupt(
            sname,
            format!(
                "holds {} records, the manifest says {}",
                header.num_records, info.num_records
            ),
        ));
    }
    if header.first_index != first_index {
        return Err(Error::corrupt(
            sname,
            "shard is out of order (first record index)",
        ));
    }
    Ok(())
}

/// How much a reader checks the stored checksums before serving a record (`verify=` in
/// Python). Opening always validates lengths and offsets; this adds the checksums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verify {
    /// Serve records as they are (the default; run [`Dataset::verify`] once to check a copy).
    #[default]
    None,
    /// Verify each shard (every record CRC and the shard's xxh3) the first time a record of it
    /// is served; a shard is verified once per opened dataset.
    Shard,
    /// Check the CRC-32 of each record every time it is served.
    Record,
}

impl Verify {
    /// Every level, from least to most checking (the order `FromStr`'s error lists them in).
    pub const ALL: [Verify; 3] = [Verify::None, Verify::Shard, Verify::Record];
    /// The name `verify=` takes in Python.
    pub fn name(self) -> &'static str {
        match self {
            Verify::None => "none",
            Verify::Shard => "shard",
            Verify::Record => "record",
        }
    }
}

impl std::str::FromStr for Verify {
    type Err = Error;
    /// A verify level by its [`name`](Verify::name); the error lists every level.
    fn from_str(s: &str) -> Result<Self> {
        crate::parse_choice("verify", s, &Self::ALL.map(|v| (v.name(), v)))
    }
}

/// Open a file read-only without following a symlink and without blocking (a FIFO put in
/// place of a file would otherwise hang `open`), and check that it is a regular file.
fn open_regular(path: &Path, what: &str) -> Result<(File, std::fs::Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Error::corrupt(
                    path.display().to_string(),
                    format!("{what} is a symlink (refused: it could point outside the dataset)"),
                )
            } else {
                Error::io(path, e)
            }
        })?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::corrupt(
            path.display().to_string(),
            format!("{what} is not a regular file"),
        ));
    }
    Ok((file, meta))
}

/// A packed dataset, opened and validated.
pub struct Dataset {
    root: PathBuf,
    manifest: Manifest,
    /// [`Manifest::identity`], checked against the stored one at open.
    identity: String,
    /// Every sample's label, copied (and range-checked) at open, so that reading labels never
    /// touches a mapping that may have been truncated since.
    labels: Vec<u32>,
    shards: Vec<Shard>,
    /// `starts[k]` is the global index of shard `k`'s first record; `starts[len]` = total.
    starts: Vec<u64>,
}

thread_local! {
    /// A decompressed record, for [`Dataset::with_record`].
    static RECORD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A shard file name must be a plain name inside the dataset directory.
fn check_shard_name(name: &str, manifest: &str) -> Result<()> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\\', '\0'])
        || name.starts_with('~');
    if bad {
        return Err(Error::corrupt(
            manifest,
            format!("shard file name {name:?} is not a plain file name inside the dataset"),
        ));
    }
    Ok(())
}

impl Dataset {
    /// Open `path` (a `.vtx` directory, or its `manifest.json`) and validate everything.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let root = if path.file_name().is_some_and(|n| n == MANIFEST_NAME) && path.is_file() {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            path.to_path_buf()
        };
        if !root.is_dir() {
            let (kind, what) = if root.exists() {
                (std::io::ErrorKind::NotADirectory, "is not a directory")
            } else {
                (std::io::ErrorKind::NotFound, "does not exist")
            };
            let why = format!("{what} (a Vantix dataset is a directory made by vantix-pack)");
            return Err(Error::io(&root, std::io::Error::new(kind, why)));
        }
        let manifest_path = root.join(MANIFEST_NAME);
        let mfile = manifest_path.display().to_string();
        let (manifest, stored_identity) = read_manifest(&manifest_path)?;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut starts = Vec::with_capacity(manifest.shards.len() + 1);
        let mut all_labels: Vec<u32> = Vec::new();
        let mut total = 0u64;
        for info in &manifest.shards {
            let shard = Shard::open(&root, info, &manifest, &mfile, total, &mut all_labels)?;
            starts.push(total);
            total += shard.header.num_records;
            shards.push(shard);
        }
        starts.push(total);
        if total != manifest.num_samples {
            return Err(Error::corrupt(
                &mfile,
                format!(
                    "num_samples is {} but the shards hold {total} records",
                    manifest.num_samples
                ),
            ));
        }
        // Last, so that every other error in an edited manifest is reported as itself.
        let identity = manifest.identity();
        if let Some(stored) = stored_identity {
            if stored != identity {
                return Err(Error::corrupt(
                    &mfile,
                    format!(
                        "its identity {stored:?} does not match its content (identity \
                         {identity:?}): the manifest was edited after packing (remove the \
                         \"identity\" field to accept the edit)"
                    ),
                ));
            }
        }
        Ok(Dataset {
            root,
            manifest,
            identity,
            labels: all_labels,
            shards,
            starts,
        })
    }

    /// The dataset's identity ([`Manifest::identity`]): 32 hex digits that change whenever
    /// what the dataset serves changes (a repack, an append, a merge).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Every sample's label, in dataset order (copied at open).
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The dataset directory: the path given to [`Dataset::open`], or the folder of the
    /// `manifest.json` it was given.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The parsed, validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// The shards, in manifest (global record) order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }
    /// Geometry of every image in the dataset.
    pub fn geometry(&self) -> Geometry {
        self.manifest.geometry
    }
    /// How the records are stored.
    pub fn codec(&self) -> Codec {
        self.manifest.codec
    }
    /// Class names in class-index order: label `k` means `classes()[k]`.
    pub fn classes(&self) -> &[String] {
        &self.manifest.classes
    }
    /// Number of samples (the manifest's `num_samples`).
    pub fn len(&self) -> usize {
        self.manifest.num_samples as usize
    }
    /// Whether the dataset holds no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes of one decoded image (`H * W * C`).
    pub fn record_bytes(&self) -> usize {
        self.manifest.geometry.record_bytes()
    }

    /// Shard number and record number within it of sample `i`.
    fn position(&self, i: usize) -> Result<(usize, usize)> {
        if i >= self.len() {
            return Err(Error::invalid(format!(
                "index {i} is out of range for a dataset of {} samples",
                self.len()
            )));
        }
        let k = self.starts.partition_point(|&s| s <= i as u64) - 1;
        Ok((k, i - self.starts[k] as usize))
    }

    fn locate(&self, i: usize) -> Result<(&Shard, usize)> {
        let (k, j) = self.position(i)?;
        Ok((&self.shards[k], j))
    }

    /// Class index of sample `i` (from the copy made at open: never touches a mapping).
    pub fn label(&self, i: usize) -> Result<u32> {
        self.labels.get(i).copied().ok_or_else(|| {
            Error::invalid(format!(
                "index {i} is out of range for a dataset of {} samples",
                self.len()
            ))
        })
    }

    /// Decode sample `i` into `dst` (exactly `record_bytes()` long, HWC uint8).
    pub fn read_into(&self, i: usize, dst: &mut [u8]) -> Result<()> {
        let rb = self.record_bytes();
        if dst.len() != rb {
            return Err(Error::invalid(format!(
                "destination is {} bytes, a record is {rb}",
                dst.len()
            )));
        }
        let (shard, j) = self.locate(i)?;
        shard.decode_into(j, dst)
    }

    /// Tell the kernel that the records of `indices` will be read soon (`madvise(WILLNEED)`),
    /// so that it starts reading them from disk now. Neighbouring records are merged into one
    /// range; this is a hint, and errors are ignored.
    pub fn will_need(&self, indices: &[u64]) {
        self.advise_records(indices, |mmap, page, len| {
            let _ = mmap.advise_range(memmap2::Advice::WillNeed, page, len);
        });
    }

    /// Give the pages of the records of `indices` back to the kernel once they have been
    /// copied (`madvise(MADV_PAGEOUT)`: clean file pages only this process maps are dropped
    /// from the page cache at once, in bulk). In a full shuffle over data larger than memory a
    /// record is read once per epoch: its pages are the least likely to be needed soon, and
    /// dropping them here keeps free room for the readahead, so that no page read waits for
    /// reclaim. A hint; errors are ignored, and the bytes served never change (a later read
    /// faults them in again from the file).
    pub fn done_with(&self, indices: &[u64]) {
        self.advise_records(indices, |mmap, page, len| {
            // SAFETY: `page .. page + len` lies within the mapping (advise_records); PAGEOUT
            // on a read-only shared file mapping only drops clean page-cache pages, which a
            // later access reads from the file again. It neither frees nor changes memory.
            unsafe {
                libc::madvise(
                    mmap.as_ptr().add(page) as *mut libc::c_void,
                    len,
                    libc::MADV_PAGEOUT,
                );
            }
        });
    }

    /// Call `advise(mapping, page-aligned offset, length)` for the stored bytes of the records
    /// of `indices`, neighbouring records merged into one range.
    fn advise_records(&self, indices: &[u64], advise: impl Fn(&Mmap, usize, usize)) {
        let rb = self.record_bytes();
        let mut spans: Vec<(usize, usize, usize)> = indices
            .iter()
            .filter_map(|&i| self.position(i as usize).ok())
            .map(|(k, j)| {
                let shard = &self.shards[k];
                let rec = shard.stored(j, rb);
                let start = rec.as_ptr() as usize - shard.mmap.as_ptr() as usize;
                (k, start, start + rec.len())
            })
            .collect();
        spans.sort_unstable();
        let mut merged: Vec<(usize, usize, usize)> = Vec::new();
        for (k, lo, hi) in spans {
            match merged.last_mut() {
                Some((mk, _, mhi)) if *mk == k && lo <= *mhi + 4096 => *mhi = (*mhi).max(hi),
                _ => merged.push((k, lo, hi)),
            }
        }
        for (k, lo, hi) in merged {
            let page = lo & !4095;
            advise(&self.shards[k].mmap, page, hi - page);
        }
    }

    /// Bytes stored for the records of `indices` (the pixels for raw records, the zstd frames
    /// otherwise): what reading them takes from disk. Indices out of range count for nothing.
    pub fn stored_bytes(&self, indices: &[u64]) -> u64 {
        let rb = self.record_bytes();
        indices
            .iter()
            .filter_map(|&i| self.position(i as usize).ok())
            .map(|(k, j)| self.shards[k].stored(j, rb).len() as u64)
            .sum()
    }

    /// Bytes of every shard file together (what the page cache holds for a cached epoch).
    pub fn size_bytes(&self) -> u64 {
        self.shards.iter().map(Shard::size_bytes).sum()
    }

    /// Tell the kernel how the shards will be read (`madvise` on every shard mapping), so
    /// that its own readahead fits: [`Access::Random`] stops it reading neighbours that a full
    /// shuffle will not ask for, [`Access::Sequential`] makes it read further ahead. The hint
    /// belongs to the mapping, so it is shared by every loader of this dataset (the last one
    /// set holds); it changes only speed, never what is read. Errors are ignored.
    pub fn advise(&self, access: Access) {
        let advice = match access {
            Access::Normal => memmap2::Advice::Normal,
            Access::Random => memmap2::Advice::Random,
            Access::Sequential => memmap2::Advice::Sequential,
        };
        for shard in &self.shards {
            let _ = shard.mmap.advise(advice);
        }
    }

    /// Call `f` with the decoded pixels of sample `i` (`record_bytes()`, HWC uint8): the mapped
    /// bytes themselves for raw records (no copy), a per-thread buffer for compressed ones.
    pub fn with_record<R>(&self, i: usize, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        if self.manifest.codec == Codec::Raw {
            let (shard, j) = self.locate(i)?;
            return Ok(f(shard.stored(j, self.record_bytes())));
        }
        RECORD.with(|cell| {
            let mut buf = cell.borrow_mut();
            let rb = self.record_bytes();
            if buf.len() != rb {
                buf.clear();
                buf.try_reserve_exact(rb).map_err(|_| {
                    Error::alloc(format!(
                        "cannot allocate {rb} bytes for a record of {}: not enough memory",
                        self.root.display()
                    ))
                })?;
                buf.resize(rb, 0);
            }
            self.read_into(i, &mut buf)?;
            Ok(f(&buf))
        })
    }

    /// Recompute every checksum: each shard's xxh3 against the manifest and each record's
    /// CRC-32 against the shard's table. The error names the damaged shard (and record).
    pub fn verify(&self) -> Result<()> {
        (0..self.shards.len()).try_for_each(|k| self.verify_shard(k))
    }

    /// Verify shard `k` (every record's CRC-32, then the whole file's xxh3); on success the
    /// shard is remembered as verified.
    pub fn verify_shard(&self, k: usize) -> Result<()> {
        let (shard, info) = (&self.shards[k], &self.manifest.shards[k]);
        shard.check_unchanged()?;
        let rb = self.record_bytes();
        let crcs = shard.crcs();
        for j in 0..shard.header.num_records as usize {
            if crc32fast::hash(shard.stored(j, rb)) != table_u32(crcs, j) {
                return Err(Error::Checksum {
                    file: shard.name.clone(),
                    msg: format!(
                        "record {j} (sample {}) is damaged",
                        shard.header.first_index + j as u64
                    ),
                });
            }
        }
        if self.manifest.codec != Codec::Raw {
            self.verify_frames(shard)?;
        }
        let got = crate::format::xxh3_hex(&shard.mmap);
        if got != info.xxh3 {
            return Err(Error::Checksum {
                file: shard.name.clone(),
                msg: format!(
                    "xxh3 is {got}, the manifest says {} (shard is damaged)",
                    info.xxh3
                ),
            });
        }
        shard.check_unchanged()?;
        shard.verified.store(true, Ordering::Release);
        Ok(())
    }

    /// Decompress every zstd frame of `shard` (into one scratch record): each must decompress,
    /// to exactly the record size. Checksums only say that the frames are the ones packed; a
    /// dataset made by hand can have checksums that match frames no reader can serve.
    fn verify_frames(&self, shard: &Shard) -> Result<()> {
        let rb = self.record_bytes();
        let mut scratch = try_zeroed(rb, "verifying a zstd record")?;
        for j in 0..shard.header.num_records as usize {
            let sample = shard.header.first_index + j as u64;
            let why = match shard
                .decoder
                .decompress_into(shard.stored(j, rb), &mut scratch[..])
            {
                Ok(n) if n == rb => continue,
                Ok(n) | Err(DecodeError::Size(n)) => format!(
                    "record {j} (sample {sample}): zstd frame decompresses to {n} bytes, a \
                     record is {rb}"
                ),
                Err(DecodeError::Frame(name)) => format!(
                    "record {j} (sample {sample}): zstd frame does not decompress to the \
                     {rb}-byte record: {name}"
                ),
            };
            return Err(Error::Checksum {
                file: shard.name.clone(),
                msg: why,
            });
        }
        Ok(())
    }

    /// Index of the shard that holds sample `i`.
    pub fn shard_of(&self, i: usize) -> Result<usize> {
        Ok(self.position(i)?.0)
    }

    /// The distinct shards (ascending) that hold `indices`.
    fn shards_of(&self, indices: &[u64]) -> Result<Vec<usize>> {
        let mut ks = indices
            .iter()
            .map(|&i| self.shard_of(i as usize))
            .collect::<Result<Vec<_>>>()?;
        ks.sort_unstable();
        ks.dedup();
        Ok(ks)
    }

    /// Check, before serving from the shards of `indices`, that none of them has changed on
    /// disk since open ([`Shard::check_unchanged`]) and, as `verify` asks, that their checksums
    /// hold: `Shard` verifies each shard once, `Record` checks each record's CRC-32.
    pub fn check_before_read(&self, indices: &[u64], verify: Verify) -> Result<()> {
        let ks = self.shards_of(indices)?;
        for &k in &ks {
            let shard = &self.shards[k];
            shard.check_unchanged()?;
            if verify == Verify::Shard && !shard.verified.load(Ordering::Acquire) {
                self.verify_shard(k)?;
            }
        }
        if verify == Verify::Record {
            indices
                .iter()
                .try_for_each(|&i| self.check_record(i as usize))?;
        }
        Ok(())
    }

    /// Check, after serving from the shards of `indices`, that none of them changed while the
    /// records were copied (a rewrite in place would have given a torn batch).
    pub fn check_after_read(&self, indices: &[u64]) -> Result<()> {
        let ks = self.shards_of(indices)?;
        ks.iter()
            .try_for_each(|&k| self.shards[k].check_unchanged())
    }

    /// Read from the shards of `indices` safely: [`check_before_read`](Self::check_before_read)
    /// (unchanged on disk since open, checksums as `verify` asks), then `read` (which copies
    /// the records of `indices`), then [`check_after_read`](Self::check_after_read) (nothing
    /// changed during the copy). A shard truncated under a mapping would kill the process with
    /// `SIGBUS` when read; this sequence turns every change it can see into an error instead.
    pub fn read_checked<R>(
        &self,
        indices: &[u64],
        verify: Verify,
        read: impl FnOnce() -> Result<R>,
    ) -> Result<R> {
        self.check_before_read(indices, verify)?;
        let out = read()?;
        self.check_after_read(indices)?;
        Ok(out)
    }

    /// Check the CRC-32 of sample `i`'s stored bytes against its shard's table.
    pub fn check_record(&self, i: usize) -> Result<()> {
        let (shard, j) = self.locate(i)?;
        if crc32fast::hash(shard.stored(j, self.record_bytes())) != table_u32(shard.crcs(), j) {
            return Err(Error::Checksum {
                file: shard.name.clone(),
                msg: format!("record {j} (sample {i}) is damaged"),
            });
        }
        Ok(())
    }
}

/// The parsed manifest and the identity stored in it (if any).
fn read_manifest(path: &Path) -> Result<(Manifest, Option<String>)> {
    let name = path.display().to_string();
    // The manifest may be a symlink (the shards may not), but it must lead to a regular file:
    // opening a FIFO or a device would block or read forever.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::corrupt(&name, "manifest is not a regular file"));
    }
    let len = meta.len();
    if len > MAX_MANIFEST_BYTES {
        return Err(Error::corrupt(
            &name,
            format!("manifest is {len} bytes, over the {MAX_MANIFEST_BYTES}-byte limit"),
        ));
    }
    let mut text = Vec::with_capacity(len as usize);
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::corrupt(&name, format!("cannot read manifest: {e}")))?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(Error::corrupt(
            &name,
            "manifest grew over the size limit while read",
        ));
    }
    let manifest = Manifest::parse(&text, &name)?;
    let identity = Manifest::stored_identity(&text, &name)?;
    Ok((manifest, identity))
}
