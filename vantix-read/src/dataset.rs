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
use zstd::zstd_safe;

use crate::error::{Error, Result};
use crate::format::{
    table_u32, table_u64, Codec, Geometry, Manifest, ShardHeader, MANIFEST_NAME, MAX_MANIFEST_BYTES,
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
        Error::invalid(format!(
            "cannot allocate {len} bytes for {what}: not enough memory"
        ))
    })?;
    v.resize(len, 0);
    Ok(v)
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
    /// The shard's zstd dictionary, prepared for decompression (format version 3).
    dict: Option<zstd_safe::DDict<'static>>,
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
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn num_records(&self) -> u64 {
        self.header.num_records
    }
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
        (self.header.dict_size > 0)
            .then(|| self.table(self.header.dict_offset, self.header.dict_size as u64))
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
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Verify::None),
            "shard" => Some(Verify::Shard),
            "record" => Some(Verify::Record),
            _ => None,
        }
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
    /// This thread's zstd decompression context, reused for every record.
    static ZSTD: RefCell<Option<zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
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
            let what = if root.exists() {
                "is not a directory"
            } else {
                "does not exist"
            };
            return Err(Error::invalid(format!(
                "{}: {what} (a Vantix dataset is a directory made by vantix-pack)",
                root.display()
            )));
        }
        let manifest_path = root.join(MANIFEST_NAME);
        let mfile = manifest_path.display().to_string();
        let (manifest, stored_identity) = read_manifest(&manifest_path)?;
        let geometry = manifest.geometry;
        let record_bytes = geometry.record_bytes();
        let num_classes = manifest.classes.len() as u64;

        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut starts = Vec::with_capacity(manifest.shards.len() + 1);
        let mut all_labels: Vec<u32> = Vec::new();
        let mut total = 0u64;
        for info in &manifest.shards {
            check_shard_name(&info.file, &mfile)?;
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
            if header.geometry != geometry {
                return Err(Error::corrupt(
                    &sname,
                    "image geometry differs from the manifest",
                ));
            }
            // A shard is written at the oldest version that describes it, so the shards of a
            // merged dataset can differ (a small part without a dictionary is version 2 in a
            // version 3 dataset): each must be at least what the codec needs and at most the
            // manifest's version.
            if header.version > manifest.version || header.version < manifest.codec.format_version()
            {
                return Err(Error::corrupt(
                    &sname,
                    format!(
                        "shard version {} does not fit the manifest's version {} (codec {:?} needs at least {})",
                        header.version,
                        manifest.version,
                        manifest.codec.name(),
                        manifest.codec.format_version()
                    ),
                ));
            }
            if header.codec_id != manifest.codec.id()
                || header.filter_id != manifest.codec.filter().id()
            {
                return Err(Error::corrupt(
                    &sname,
                    "codec or filter differs from the manifest",
                ));
            }
            if header.num_records != info.num_records {
                return Err(Error::corrupt(
                    &sname,
                    format!(
                        "holds {} records, the manifest says {}",
                        header.num_records, info.num_records
                    ),
                ));
            }
            if header.first_index != total {
                return Err(Error::corrupt(
                    &sname,
                    "shard is out of order (first record index)",
                ));
            }
            // The mapping does not need its descriptor: closing it here lets any number of
            // shards open under a small `ulimit -n`; changes are checked by path.
            drop(file);
            let mut shard = Shard {
                name: sname.clone(),
                path: spath.clone(),
                stamp,
                mmap,
                header,
                offsets: Vec::new(),
                verified: AtomicBool::new(false),
                dict: None,
            };
            if let Some(d) = shard.dictionary() {
                if crc32fast::hash(d) != header.dict_crc {
                    return Err(Error::corrupt(
                        &sname,
                        "zstd dictionary is damaged (its CRC-32 does not match the header)",
                    ));
                }
                let ddict = zstd_safe::DDict::try_create(d).ok_or_else(|| {
                    Error::corrupt(&sname, "zstd dictionary cannot be loaded (it is damaged)")
                })?;
                shard.dict = Some(ddict);
            }
            // The tables are copied: their size is bounded by the file's (checked by
            // `ShardHeader::decode`), and the allocation is fallible.
            let n = header.num_records as usize;
            let alloc_err = || Error::corrupt(&sname, "not enough memory for the shard's tables");
            all_labels.try_reserve(n).map_err(|_| alloc_err())?;
            let labels = shard.labels();
            for j in 0..n {
                let label = table_u32(labels, j);
                if label as u64 >= num_classes {
                    return Err(Error::corrupt(
                        &sname,
                        format!("record {j} has label {label} but there are {num_classes} classes"),
                    ));
                }
                all_labels.push(label);
            }
            if header.offsets_offset != 0 {
                let o = shard.mapped_offsets();
                let mut offsets = Vec::new();
                offsets.try_reserve_exact(n + 1).map_err(|_| alloc_err())?;
                let mut prev = table_u64(o, 0);
                if prev != 0 {
                    return Err(Error::corrupt(&sname, "offsets table does not start at 0"));
                }
                offsets.push(prev);
                let min_frame = min_zstd_frame(record_bytes);
                for j in 1..=n {
                    let cur = table_u64(o, j);
                    if cur < prev || cur - prev > (record_bytes as u64) * 2 + 1024 {
                        return Err(Error::corrupt(
                            &sname,
                            format!("offsets table entry {j} is invalid"),
                        ));
                    }
                    if cur - prev < min_frame {
                        return Err(Error::corrupt(
                            &sname,
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
                if prev != header.data_size {
                    return Err(Error::corrupt(
                        &sname,
                        "offsets table does not end at the data size",
                    ));
                }
                shard.offsets = offsets;
            }
            starts.push(total);
            total += header.num_records;
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

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }
    pub fn geometry(&self) -> Geometry {
        self.manifest.geometry
    }
    pub fn codec(&self) -> Codec {
        self.manifest.codec
    }
    pub fn classes(&self) -> &[String] {
        &self.manifest.classes
    }
    pub fn len(&self) -> usize {
        self.manifest.num_samples as usize
    }
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
        let src = shard.stored(j, rb);
        match self.manifest.codec {
            Codec::Raw => dst.copy_from_slice(src),
            Codec::Zstd { .. } => {
                // Straight into the caller's slot: no scratch buffer, no second copy.
                let n = ZSTD.with(|cell| {
                    let mut slot = cell.borrow_mut();
                    let dctx = slot.get_or_insert_with(zstd_safe::DCtx::create);
                    match &shard.dict {
                        Some(ddict) => dctx.decompress_using_ddict(dst, src, ddict),
                        None => dctx.decompress(dst, src),
                    }
                    .map_err(|code| {
                        Error::corrupt(
                            &shard.name,
                            format!(
                                "record {j}: zstd frame is damaged: {}",
                                zstd_safe::get_error_name(code)
                            ),
                        )
                    })
                })?;
                if n != rb {
                    return Err(Error::corrupt(
                        &shard.name,
                        format!("record {j}: decompressed to {n} bytes, expected {rb}"),
                    ));
                }
                let filter = self.manifest.codec.filter();
                if !filter.is_none() {
                    let g = self.manifest.geometry;
                    let bpp = g.channels as usize;
                    crate::filter::undo(filter, dst, g.width as usize * bpp, bpp);
                }
            }
        }
        Ok(())
    }

    /// Tell the kernel that the records of `indices` will be read soon (`madvise(WILLNEED)`),
    /// so that it starts reading them from disk now. Neighbouring records are merged into one
    /// range; this is a hint, and errors are ignored.
    pub fn will_need(&self, indices: &[u64]) {
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
            let _ = self.shards[k]
                .mmap
                .advise_range(memmap2::Advice::WillNeed, page, hi - page);
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
                    Error::invalid(format!(
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
        let mut dctx = zstd_safe::DCtx::create();
        for j in 0..shard.header.num_records as usize {
            let src = shard.stored(j, rb);
            let sample = shard.header.first_index + j as u64;
            let n = match &shard.dict {
                Some(ddict) => dctx.decompress_using_ddict(&mut scratch[..], src, ddict),
                None => dctx.decompress(&mut scratch[..], src),
            }
            .map_err(|code| Error::Checksum {
                file: shard.name.clone(),
                msg: format!(
                    "record {j} (sample {sample}): zstd frame does not decompress to the \
                     {rb}-byte record: {}",
                    zstd_safe::get_error_name(code)
                ),
            })?;
            if n != rb {
                return Err(Error::Checksum {
                    file: shard.name.clone(),
                    msg: format!(
                        "record {j} (sample {sample}): zstd frame decompresses to {n} bytes, \
                         a record is {rb}"
                    ),
                });
            }
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
