//! The packer: ImageFolder in, dataset directory out.
//!
//! Files are processed in chunks of a bounded size: rayon decodes and resizes a chunk in
//! parallel, then the records are written in dataset order. Memory therefore does not grow with
//! the number of images, and the output does not depend on the number of threads.
//! The dataset is built in a hidden sibling directory and renamed into place at the end.

use std::cell::RefCell;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use vantix_read::format::{
    Codec, Geometry, Manifest, PackSettings, PartInfo, ShardInfo, Skipped, MANIFEST_FORMAT,
    MANIFEST_NAME,
};
use vantix_read::{Error, Result};
use xxhash_rust::xxh3::Xxh3;

use crate::imaging::{process, ResizeSpec};
use crate::walk::{scan, SourceFile};
use crate::writer::ShardWriter;

/// Name of the informational list of source files, in record order.
pub const SOURCES_NAME: &str = "sources.json";

/// The first `num_samples` entries of a dataset's `sources.json` (entries past them belong to
/// an append that did not commit). `why` says, in a read error, what needs the list.
pub(crate) fn read_sources(dataset: &Path, num_samples: u64, why: &str) -> Result<Vec<String>> {
    let path = dataset.join(SOURCES_NAME);
    let bytes = std::fs::read(&path)
        .map_err(|e| Error::invalid(format!("{}: cannot read it ({e}); {why}", path.display())))?;
    let mut sources: Vec<String> = serde_json::from_slice(&bytes).map_err(|e| {
        Error::corrupt(
            path.display().to_string(),
            format!("not a JSON list of file names: {e}"),
        )
    })?;
    if (sources.len() as u64) < num_samples {
        return Err(Error::corrupt(
            path.display().to_string(),
            format!(
                "lists {} files but the dataset holds {num_samples} records",
                sources.len()
            ),
        ));
    }
    sources.truncate(num_samples as usize);
    Ok(sources)
}

/// Packing options (the CLI's flags and `vantix.pack`'s arguments).
#[derive(Clone, Debug)]
pub struct PackOptions {
    pub spec: ResizeSpec,
    pub codec: Codec,
    /// Target size of one shard's data, in bytes.
    pub shard_size: u64,
    /// Worker threads (`None`: all cores).
    pub jobs: Option<usize>,
    /// Fail on the first unreadable file instead of skipping it.
    pub strict: bool,
    /// Replace an existing dataset at the output path.
    pub overwrite: bool,
    /// Draw a progress bar (only on an interactive terminal).
    pub progress: bool,
    /// Print each skipped file to stderr.
    pub report_skipped: bool,
    /// Asked between chunks of images: when it returns true the pack stops with
    /// [`Error::Interrupted`] and leaves nothing behind (Python's Ctrl-C uses it).
    pub interrupt: Option<Interrupt>,
    /// Pack only part `index` of `count` (0-based, `--part I/N`): the contiguous slice
    /// [`part_range`] of the sorted source list, labelled with the whole tree's classes.
    /// `vantix-pack merge` joins the parts into one dataset.
    pub part: Option<(u64, u64)>,
    /// When zstd records are compressed with a dictionary trained at pack time.
    pub zstd_dictionary: crate::writer::DictionaryMode,
}

/// A check for "stop now", called from the packing thread between chunks of images.
#[derive(Clone)]
pub struct Interrupt(pub std::sync::Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interrupt")
    }
}

pub const DEFAULT_SHARD_SIZE: u64 = 512 << 20;

/// What a pack did.
#[derive(Clone, Debug)]
pub struct PackReport {
    pub output: PathBuf,
    pub classes: Vec<String>,
    pub num_samples: u64,
    pub skipped: Vec<Skipped>,
    pub shards: Vec<ShardInfo>,
    pub bytes_written: u64,
    pub seconds: f64,
}

/// Removes the temporary directory unless the pack completed.
pub(crate) struct TempDir(pub(crate) Option<PathBuf>);
impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Remove `.NAME.partial-PID` (and `.NAME.old-PID`) siblings left by packers that were killed.
pub(crate) fn remove_stale_partials(parent: &Path, name: &str) {
    let prefixes = [format!(".{name}.partial-"), format!(".{name}.old-")];
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let fname = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = prefixes
            .iter()
            .find_map(|p| fname.strip_prefix(p.as_str()))
            .and_then(|p| p.parse::<u32>().ok())
        {
            if !pid_alive(pid) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Encode one record as `codec` stores it; with `compress` false (a dictionary compresses in
/// the writer) the record is only filtered.
pub(crate) fn encode(
    record: Vec<u8>,
    codec: Codec,
    geometry: Geometry,
    compress: bool,
) -> std::result::Result<Vec<u8>, String> {
    thread_local! {
        static ZSTD: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    }
    match codec {
        Codec::Raw => Ok(record),
        Codec::Zstd { level, filter } => ZSTD.with(|cell| {
            let record = if filter.is_none() {
                record
            } else {
                let bpp = geometry.channels as usize;
                let mut filtered = vec![0u8; record.len()];
                vantix_read::filter::apply(
                    filter,
                    &record,
                    &mut filtered,
                    geometry.width as usize * bpp,
                    bpp,
                );
                filtered
            };
            if !compress {
                return Ok(record);
            }
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                let c = zstd::bulk::Compressor::new(level).map_err(|e| e.to_string())?;
                *slot = Some((level, c));
            }
            slot.as_mut()
                .unwrap()
                .1
                .compress(&record)
                .map_err(|e| format!("zstd: {e}"))
        }),
    }
}

pub(crate) fn source_list_hash(files: &[SourceFile]) -> String {
    let mut h = Xxh3::new();
    for f in files {
        h.update(f.rel.as_os_str().as_bytes());
        h.update(b"\0");
        h.update(f.label.to_string().as_bytes());
        h.update(b"\n");
    }
    format!("{:016x}", h.digest())
}

/// The slice `[first, end)` of a sorted source list of `len` files that part `index` of `count`
/// packs: `[floor(index * len / count), floor((index + 1) * len / count))`. The slices of all
/// parts are contiguous, in order, and cover the list; a part is empty when `count > len`
/// leaves it nothing.
pub fn part_range(index: u64, count: u64, len: u64) -> (u64, u64) {
    let at = |i: u64| (i as u128 * len as u128 / count as u128) as u64;
    (at(index), at(index + 1))
}

/// Check a `--part I/N` request.
pub fn check_part(index: u64, count: u64) -> Result<()> {
    if count == 0 {
        return Err(Error::invalid(format!(
            "--part {index}/{count}: the number of parts must be at least 1"
        )));
    }
    if index >= count {
        return Err(Error::invalid(format!(
            "--part {index}/{count}: parts are numbered from 0, so the index must be below {count} \
             (0/{count} .. {}/{count})",
            count - 1
        )));
    }
    Ok(())
}

fn check_options(opts: &PackOptions) -> Result<()> {
    let s = &opts.spec;
    Geometry {
        width: s.width,
        height: s.height,
        channels: 3,
    }
    .validate("--size")?;
    if !matches!(s.channels, 1 | 3 | 4) {
        return Err(Error::invalid(format!(
            "channels must be 1 (grayscale), 3 (RGB) or 4 (RGBA), got {}",
            s.channels
        )));
    }
    if let Codec::Zstd { level, .. } = opts.codec {
        if !(1..=22).contains(&level) {
            return Err(Error::invalid(format!(
                "zstd level must be 1..=22, got {level}"
            )));
        }
    }
    if opts.zstd_dictionary == crate::writer::DictionaryMode::On && opts.codec == Codec::Raw {
        return Err(Error::invalid("a zstd dictionary needs the zstd codec"));
    }
    if opts.jobs == Some(0) {
        return Err(Error::invalid("jobs must be at least 1"));
    }
    if let Some((index, count)) = opts.part {
        check_part(index, count)?;
    }
    Ok(())
}

/// A write error names a file of the (now removed) temporary directory: say so.
pub(crate) fn explain_partial_error(e: Error, dst: &Path) -> Error {
    match e {
        Error::Io { path, source } if path.contains(".partial-") => Error::Io {
            path: dst.display().to_string(),
            source: std::io::Error::new(
                source.kind(),
                format!(
                    "cannot write the dataset: {source} (writing {path}); the partial output \
                     was removed and nothing was written at the output path"
                ),
            ),
        },
        e => e,
    }
}

/// Pack the ImageFolder at `src` into a new dataset directory `dst`.
///
/// On any error (including a full disk, a file-size limit or an interrupt) the temporary
/// output is removed and nothing appears at `dst`.
pub fn pack(src: &Path, dst: &Path, opts: &PackOptions) -> Result<PackReport> {
    pack_atomically(src, dst, opts).map_err(|e| explain_partial_error(e, dst))
}

/// A dataset directory being written: the hidden sibling `.NAME.partial-PID` of the output
/// path, moved into place by [`Staging::publish`] and removed if dropped before that.
pub(crate) struct Staging {
    dst: PathBuf,
    parent: PathBuf,
    name: String,
    tmp: TempDir,
}

impl Staging {
    /// Check the output path (its folder exists; it does not, unless `overwrite`), remove
    /// what killed writers left next to it, and create the temporary directory.
    pub(crate) fn begin(dst: &Path, overwrite: bool) -> Result<Self> {
        let name = dst
            .file_name()
            .ok_or_else(|| Error::invalid(format!("{}: not a valid output path", dst.display())))?
            .to_string_lossy()
            .into_owned();
        let parent = match dst.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(Error::invalid(format!(
                "{}: output folder does not exist",
                parent.display()
            )));
        }
        if dst.exists() && !overwrite {
            return Err(Error::invalid(format!(
                "{}: already exists (pass --overwrite / overwrite=True to replace it)",
                dst.display()
            )));
        }
        remove_stale_partials(&parent, &name);
        let tmp_path = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if tmp_path.exists() {
            std::fs::remove_dir_all(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?;
        }
        std::fs::create_dir(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?;
        Ok(Staging {
            dst: dst.to_path_buf(),
            parent,
            name,
            tmp: TempDir(Some(tmp_path)),
        })
    }

    /// The temporary directory the dataset is written to.
    pub(crate) fn dir(&self) -> &Path {
        self.tmp.0.as_deref().expect("staging directory")
    }

    /// Write `sources.json` and `manifest.json` (each synced), then move the dataset into
    /// place. With `overwrite` the new and the old dataset swap places in one atomic step
    /// (renameat2 RENAME_EXCHANGE), so the output path always holds a complete dataset; where
    /// the file system cannot exchange, the old one is moved aside first.
    pub(crate) fn publish(
        self,
        manifest: &Manifest,
        sources: &[String],
        overwrite: bool,
    ) -> Result<()> {
        let Staging {
            dst,
            parent,
            name,
            mut tmp,
        } = self;
        let tmp_path = tmp.0.clone().expect("staging directory");
        write_synced(
            &tmp_path.join(SOURCES_NAME),
            serde_json::to_string(sources).unwrap().as_bytes(),
        )?;
        write_synced(&tmp_path.join(MANIFEST_NAME), manifest.to_json().as_bytes())?;
        sync_dir(&tmp_path)?;
        if dst.exists() {
            if !overwrite {
                return Err(Error::invalid(format!(
                    "{}: appeared while writing; not replaced",
                    dst.display()
                )));
            }
            if exchange(&tmp_path, &dst).is_err() {
                let old = parent.join(format!(".{name}.old-{}", std::process::id()));
                std::fs::rename(&dst, &old).map_err(|e| Error::io(&dst, e))?;
                std::fs::rename(&tmp_path, &dst).map_err(|e| Error::io(&dst, e))?;
                let _ = std::fs::remove_dir_all(&old);
                tmp.0 = None;
            }
            // After an exchange `tmp_path` holds the old dataset: the guard removes it.
        } else {
            std::fs::rename(&tmp_path, &dst).map_err(|e| Error::io(&dst, e))?;
            tmp.0 = None;
        }
        drop(tmp);
        sync_dir(&parent)
    }
}

/// A progress bar over `len` items (hidden unless `show`).
pub(crate) fn progress_bar(show: bool, len: u64, what: &str) -> ProgressBar {
    let bar = if show {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {what}  {{per_sec}}  ETA {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Decode, resize and encode `files` (relative to `root`) in parallel chunks with `opts`' spec
/// and codec, and write them in order with `writer`. Returns the relative paths of the packed
/// files, in record order, and the skipped ones. `stopped` words the interrupt error.
pub(crate) fn pack_files(
    root: &Path,
    files: &[SourceFile],
    opts: &PackOptions,
    writer: &mut ShardWriter,
    stopped: &dyn Fn() -> String,
) -> Result<(Vec<String>, Vec<Skipped>)> {
    let spec = opts.spec;
    let geometry = Geometry {
        width: spec.width,
        height: spec.height,
        channels: spec.channels,
    };
    let threads = opts
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("vantix-pack-{i}"))
        .build()
        .map_err(|e| Error::invalid(format!("cannot start {threads} threads: {e}")))?;
    let bar = progress_bar(opts.progress, files.len() as u64, "images");
    bar.set_message("packing");

    // With a dictionary the writer compresses: records are only filtered here.
    let dictionary = writer.compresses();
    let mut skipped = Vec::new();
    let mut packed_sources = Vec::with_capacity(files.len());
    let chunk = 64 * threads;
    for files in files.chunks(chunk) {
        if opts.interrupt.as_ref().is_some_and(|stop| (stop.0)()) {
            return Err(Error::Interrupted(stopped()));
        }
        let results: Vec<_> = pool.install(|| {
            files
                .par_iter()
                .map(|f| {
                    let path = root.join(&f.rel);
                    let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
                    encode(process(&bytes, &spec)?, opts.codec, geometry, !dictionary)
                })
                .collect()
        });
        for (f, res) in files.iter().zip(results) {
            match res {
                Ok(stored) => {
                    writer.push(&stored, f.label)?;
                    packed_sources.push(f.rel.to_string_lossy().into_owned());
                }
                Err(reason) => {
                    let path = root.join(&f.rel).display().to_string();
                    if opts.strict {
                        return Err(Error::BadImage { path, reason });
                    }
                    if opts.report_skipped {
                        bar.suspend(|| eprintln!("vantix-pack: skipped {path}: {reason}"));
                    }
                    skipped.push(Skipped {
                        path: f.rel.to_string_lossy().into_owned(),
                        reason,
                    });
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok((packed_sources, skipped))
}

/// The `pack` block of a manifest for a dataset made from `root` with `opts`.
pub(crate) fn pack_settings(root: &Path, opts: &PackOptions, files: &[SourceFile]) -> PackSettings {
    let spec = opts.spec;
    PackSettings {
        resize: spec.mode.name().into(),
        interpolation: spec.interpolation.name().into(),
        pad_color: spec.pad_color,
        source: std::fs::canonicalize(root)
            .unwrap_or_else(|_| root.to_path_buf())
            .display()
            .to_string(),
        source_files: files.len() as u64,
        source_list_xxh3: source_list_hash(files),
        vantix_version: env!("CARGO_PKG_VERSION").into(),
        exact_decode: spec.exact_decode,
        max_pixels: Some(spec.max_pixels),
        exif_orientation: spec.exif_orientation,
    }
}

fn pack_atomically(src: &Path, dst: &Path, opts: &PackOptions) -> Result<PackReport> {
    let start = Instant::now();
    check_options(opts)?;
    let staging = Staging::begin(dst, opts.overwrite)?;
    let folder = scan(src)?;
    let tmp_path = staging.dir().to_path_buf();

    let spec = opts.spec;
    let geometry = Geometry {
        width: spec.width,
        height: spec.height,
        channels: spec.channels,
    };
    // A part packs one contiguous slice of the sorted list; classes, labels and the source
    // list hash stay the whole tree's, so `merge` can check that the parts belong together.
    let (first, end) = match opts.part {
        Some((index, count)) => part_range(index, count, folder.files.len() as u64),
        None => (0, folder.files.len() as u64),
    };
    let files = &folder.files[first as usize..end as usize];
    let mut writer = ShardWriter::new(&tmp_path, geometry, opts.codec, opts.shard_size);
    if opts
        .zstd_dictionary
        .applies(opts.codec, geometry.record_bytes())
    {
        writer = writer.with_dictionary()?;
    }
    let (packed_sources, skipped) = pack_files(&folder.root, files, opts, &mut writer, &|| {
        format!(
            "packing {} stopped; nothing was written there",
            dst.display()
        )
    })?;
    let (shards, version) = writer.finish_with_version()?;

    let num_samples = packed_sources.len() as u64;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version,
        geometry,
        dtype: "uint8".into(),
        layout: "HWC".into(),
        channel_order: spec.channel_order().into(),
        codec: opts.codec,
        classes: folder.classes.clone(),
        num_samples,
        shards: shards.clone(),
        pack: pack_settings(src, opts, &folder.files),
        skipped: skipped.clone(),
        part: opts.part.map(|(index, count)| PartInfo {
            index,
            count,
            first_source: first,
            num_sources: end - first,
        }),
        appends: Vec::new(),
    };
    staging.publish(&manifest, &packed_sources, opts.overwrite)?;
    Ok(report(
        dst,
        folder.classes,
        num_samples,
        skipped,
        shards,
        start,
    ))
}

pub(crate) fn report(
    dst: &Path,
    classes: Vec<String>,
    num_samples: u64,
    skipped: Vec<Skipped>,
    shards: Vec<ShardInfo>,
    start: Instant,
) -> PackReport {
    PackReport {
        output: dst.to_path_buf(),
        classes,
        num_samples,
        skipped,
        bytes_written: shards.iter().map(|s| s.size_bytes).sum(),
        shards,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// Swap the directory entries `a` and `b` atomically (Linux `renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths, relative to the current directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(path, e))
}
