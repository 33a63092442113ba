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
    Codec, Geometry, Manifest, PackSettings, ShardInfo, Skipped, MANIFEST_FORMAT, MANIFEST_NAME,
};
use vantix_read::{Error, Result};
use xxhash_rust::xxh3::Xxh3;

use crate::imaging::{process, ResizeSpec};
use crate::walk::{scan, SourceFile};
use crate::writer::ShardWriter;

/// Name of the informational list of source files, in record order.
pub const SOURCES_NAME: &str = "sources.json";

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
struct TempDir(Option<PathBuf>);
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
fn remove_stale_partials(parent: &Path, name: &str) {
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
fn encode(
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

fn source_list_hash(files: &[SourceFile]) -> String {
    let mut h = Xxh3::new();
    for f in files {
        h.update(f.rel.as_os_str().as_bytes());
        h.update(b"\0");
        h.update(f.label.to_string().as_bytes());
        h.update(b"\n");
    }
    format!("{:016x}", h.digest())
}

fn check_options(opts: &PackOptions) -> Result<()> {
    let s = &opts.spec;
    Geometry {
        width: s.width,
        height: s.height,
        channels: 3,
    }
    .validate("--size")?;
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
    Ok(())
}

/// Pack the ImageFolder at `src` into a new dataset directory `dst`.
///
/// On any error (including a full disk, a file-size limit or an interrupt) the temporary
/// output is removed and nothing appears at `dst`.
pub fn pack(src: &Path, dst: &Path, opts: &PackOptions) -> Result<PackReport> {
    pack_atomically(src, dst, opts).map_err(|e| match e {
        // A write error names a file of the (now removed) temporary directory: say so.
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
    })
}

fn pack_atomically(src: &Path, dst: &Path, opts: &PackOptions) -> Result<PackReport> {
    let start = Instant::now();
    check_options(opts)?;
    let dst_name = dst
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
    if dst.exists() && !opts.overwrite {
        return Err(Error::invalid(format!(
            "{}: already exists (pass --overwrite / overwrite=True to replace it)",
            dst.display()
        )));
    }
    let folder = scan(src)?;
    remove_stale_partials(&parent, &dst_name);
    let tmp_path = parent.join(format!(".{dst_name}.partial-{}", std::process::id()));
    if tmp_path.exists() {
        std::fs::remove_dir_all(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?;
    }
    std::fs::create_dir(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?;
    let mut tmp = TempDir(Some(tmp_path.clone()));

    let spec = opts.spec;
    let geometry = Geometry {
        width: spec.width,
        height: spec.height,
        channels: 3,
    };
    let threads = opts
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("vantix-pack-{i}"))
        .build()
        .map_err(|e| Error::invalid(format!("cannot start {threads} threads: {e}")))?;

    let bar = if opts.progress {
        ProgressBar::with_draw_target(
            Some(folder.files.len() as u64),
            ProgressDrawTarget::stderr(),
        )
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} images  {per_sec}  ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message("packing");

    let mut writer = ShardWriter::new(&tmp_path, geometry, opts.codec, opts.shard_size);
    let dictionary = opts
        .zstd_dictionary
        .applies(opts.codec, geometry.record_bytes());
    if dictionary {
        writer = writer.with_dictionary()?;
    }
    let mut skipped = Vec::new();
    let mut packed_sources = Vec::with_capacity(folder.files.len());
    let chunk = 64 * threads;
    for files in folder.files.chunks(chunk) {
        if opts.interrupt.as_ref().is_some_and(|stop| (stop.0)()) {
            return Err(Error::Interrupted(format!(
                "packing {} stopped; nothing was written there",
                dst.display()
            )));
        }
        let results: Vec<_> = pool.install(|| {
            files
                .par_iter()
                .map(|f| {
                    let path = folder.root.join(&f.rel);
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
                    let path = folder.root.join(&f.rel).display().to_string();
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
    let (shards, version) = writer.finish_with_version()?;
    bar.finish_and_clear();

    let num_samples = packed_sources.len() as u64;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version,
        geometry,
        dtype: "uint8".into(),
        layout: "HWC".into(),
        channel_order: "RGB".into(),
        codec: opts.codec,
        classes: folder.classes.clone(),
        num_samples,
        shards: shards.clone(),
        pack: PackSettings {
            resize: spec.mode.name().into(),
            interpolation: spec.interpolation.name().into(),
            pad_color: spec.pad_color,
            source: std::fs::canonicalize(src)
                .unwrap_or_else(|_| src.to_path_buf())
                .display()
                .to_string(),
            source_files: folder.files.len() as u64,
            source_list_xxh3: source_list_hash(&folder.files),
            vantix_version: env!("CARGO_PKG_VERSION").into(),
        },
        skipped: skipped.clone(),
    };
    write_synced(
        &tmp_path.join(SOURCES_NAME),
        serde_json::to_string(&packed_sources).unwrap().as_bytes(),
    )?;
    write_synced(&tmp_path.join(MANIFEST_NAME), manifest.to_json().as_bytes())?;
    sync_dir(&tmp_path)?;

    // Move into place. With --overwrite the new and the old dataset swap places in one atomic
    // step (renameat2 RENAME_EXCHANGE), so the output path always holds a complete dataset;
    // where the file system cannot exchange, the old one is moved aside first.
    if dst.exists() {
        if !opts.overwrite {
            return Err(Error::invalid(format!(
                "{}: appeared while packing; not replaced",
                dst.display()
            )));
        }
        if exchange(&tmp_path, dst).is_err() {
            let old = parent.join(format!(".{dst_name}.old-{}", std::process::id()));
            std::fs::rename(dst, &old).map_err(|e| Error::io(dst, e))?;
            std::fs::rename(&tmp_path, dst).map_err(|e| Error::io(dst, e))?;
            let _ = std::fs::remove_dir_all(&old);
            tmp.0 = None;
        }
        // After an exchange `tmp_path` holds the old dataset: the guard removes it.
    } else {
        std::fs::rename(&tmp_path, dst).map_err(|e| Error::io(dst, e))?;
        tmp.0 = None;
    }
    drop(tmp);
    sync_dir(&parent)?;
    Ok(report(
        dst,
        folder.classes,
        num_samples,
        skipped,
        shards,
        start,
    ))
}

fn report(
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

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

fn sync_dir(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(path, e))
}
