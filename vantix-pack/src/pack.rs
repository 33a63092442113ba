//! The packer: ImageFolder in, dataset directory out.
//!
//! Files are processed in chunks of a bounded size: rayon decodes and resizes a chunk in
//! parallel, then the records are written in dataset order. Memory therefore does not grow with
//! the number of images, and the output does not depend on the number of threads.
//! The dataset is built in a hidden sibling directory and renamed into place at the end.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use vantix_read::format::{
    Codec, Geometry, Manifest, PackSettings, ShardInfo, Skipped, MANIFEST_FORMAT,
};
use vantix_read::{Error, Result};
use xxhash_rust::xxh3::Xxh3;

use crate::imaging::{
    process, truncation, Interpolation, ResizeMode, ResizeSpec, DEFAULT_MAX_PIXELS,
};
use crate::names;
use crate::parts;
pub use crate::parts::{check_part, part_range};
use crate::staging::{explain_partial_error, Input, Staging};
use crate::walk::{scan_with, SourceFile};
use crate::writer::ShardWriter;

/// Name of the informational list of source files, in record order (the codec's).
pub use vantix_read::codec::SOURCES_NAME;

/// Packing options (the CLI's flags and `vantix.pack`'s arguments).
#[derive(Clone, Debug)]
pub struct PackOptions {
    /// Geometry, resize mode and decoding of every record.
    pub spec: ResizeSpec,
    /// How records are stored (raw, or zstd with a level and filter).
    pub codec: Codec,
    /// Target size of one shard's data, in bytes.
    pub shard_size: u64,
    /// Worker threads (`None`: all cores).
    pub num_threads: Option<usize>,
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
    pub dictionary: crate::writer::DictionaryMode,
    /// Pack truncated images (decoded as far as they go, the rest filled in by the decoder, as
    /// Pillow's `LOAD_TRUNCATED_IMAGES`) instead of skipping them with the reason "truncated";
    /// the manifest lists their records (`truncated`).
    pub allow_truncated: bool,
    /// Keep class folders without any image (torchvision's `ImageFolder(allow_empty=True)`)
    /// instead of refusing the tree.
    pub allow_empty: bool,
    /// Largest source file read, in bytes: a larger one is skipped without being read.
    pub max_file_bytes: u64,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            spec: ResizeSpec {
                width: 224,
                height: 224,
                mode: ResizeMode::CenterCrop,
                interpolation: Interpolation::Bilinear,
                pad_color: [0, 0, 0],
                max_pixels: DEFAULT_MAX_PIXELS,
                exact_decode: false,
                channels: 3,
                exif_orientation: false,
            },
            codec: Codec::Raw,
            shard_size: DEFAULT_SHARD_SIZE,
            num_threads: None,
            strict: false,
            overwrite: false,
            progress: false,
            report_skipped: true,
            interrupt: None,
            part: None,
            dictionary: crate::writer::DictionaryMode::Auto,
            allow_truncated: false,
            allow_empty: false,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// Default [`PackOptions::max_file_bytes`]: 1 GiB (a 16-bit RGB TIFF of 178 megapixels, the
/// default `--max-pixels`, is ~1.07 GB uncompressed; compressed formats are far smaller).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;

/// A check for "stop now", called from the packing thread between chunks of images.
#[derive(Clone)]
pub struct Interrupt(pub std::sync::Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interrupt")
    }
}

/// Default target size of one shard's data: 512 MiB.
pub const DEFAULT_SHARD_SIZE: u64 = 512 << 20;

/// What a pack did.
#[derive(Clone, Debug)]
pub struct PackReport {
    /// The dataset directory written.
    pub output: PathBuf,
    /// Class names in label order (the sorted class folders).
    pub classes: Vec<String>,
    /// Number of records packed.
    pub num_samples: u64,
    /// Source files that could not be packed, with the reason.
    pub skipped: Vec<Skipped>,
    /// Indices of records packed from truncated files (with `allow_truncated`).
    pub truncated: Vec<u64>,
    /// The shards written, as the manifest lists them.
    pub shards: Vec<ShardInfo>,
    /// Total size of the shard files in bytes.
    pub bytes_written: u64,
    /// Wall-clock time of the pack, in seconds.
    pub seconds: f64,
}

/// Read a source file for decoding: only a regular file (symlinks followed, as Pillow opens
/// them), at most `max_bytes` of it. A FIFO, socket or device is refused without reading: a
/// FIFO would block for ever, `/dev/zero` never ends. The check is made on the open file, so a
/// file swapped for a FIFO after the walk is refused too (opening does not block: `O_NONBLOCK`).
pub fn read_source(path: &Path, max_bytes: u64) -> std::result::Result<Vec<u8>, String> {
    let kind = |t: std::fs::FileType| {
        if t.is_fifo() {
            "a FIFO (named pipe)"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_char_device() {
            "a character device"
        } else if t.is_block_device() {
            "a block device"
        } else if t.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        }
    };
    let refuse = |t| {
        format!(
            "not a regular file: it is {}; only regular files are read",
            kind(t)
        )
    };
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(refuse(meta.file_type()));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(refuse(meta.file_type()));
    }
    let too_big = |n: u64| {
        format!(
            "file is {n} bytes, over the limit of {max_bytes} (--max-file-size; raise it to \
             read larger files)"
        )
    };
    if meta.len() > max_bytes {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Bounded even if the file grows while it is read.
    f.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
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

impl PackOptions {
    /// Check every option that its type does not already guarantee. This is the one place
    /// they are checked: [`pack`] calls it first, and the CLI and the Python binding only
    /// convert types (each option enum's `FromStr` parses its names).
    pub fn validate(&self) -> Result<()> {
        check_options(self)
    }
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
    if opts.dictionary == crate::writer::DictionaryMode::On && opts.codec == Codec::Raw {
        return Err(Error::invalid("a zstd dictionary needs the zstd codec"));
    }
    if opts.num_threads == Some(0) {
        return Err(Error::invalid("num_threads must be at least 1"));
    }
    if opts.max_file_bytes == 0 {
        return Err(Error::invalid(
            "the largest file size to read must be at least 1 byte",
        ));
    }
    if let Some((index, count)) = opts.part {
        parts::check_part(index, count)?;
    }
    Ok(())
}

/// Pack the ImageFolder at `src` into a new dataset directory `dst`.
///
/// On any error (including a full disk, a file-size limit or an interrupt) the temporary
/// output is removed and nothing appears at `dst`.
pub fn pack(src: &Path, dst: &Path, opts: &PackOptions) -> Result<PackReport> {
    pack_atomically(src, dst, opts).map_err(|e| explain_partial_error(e, dst))
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

/// What [`pack_files`] packed: the relative paths of the packed files in record order, the
/// skipped files, and the indices of records from truncated files (`allow_truncated`).
pub(crate) struct Packed {
    pub sources: Vec<Vec<u8>>,
    pub skipped: Vec<Skipped>,
    pub truncated: Vec<u64>,
}

/// A skipped file as the manifest lists it.
pub(crate) fn skipped(rel: &Path, reason: String) -> Skipped {
    let bytes = rel.as_os_str().as_bytes();
    Skipped {
        path: names::display(bytes),
        reason,
        path_hex: names::hex_if_not_utf8(bytes),
    }
}

/// Read, check, decode and resize one source file; `Ok((pixels, truncated))`.
fn pack_one(path: &Path, opts: &PackOptions) -> std::result::Result<(Vec<u8>, bool), String> {
    let bytes = read_source(path, opts.max_file_bytes)?;
    let damage = truncation(&bytes);
    if let Some(why) = &damage {
        if !opts.allow_truncated {
            return Err(format!(
                "truncated: {why}; Pillow (and so torchvision) refuses it; --allow-truncated \
                 (allow_truncated=True, Pillow's LOAD_TRUNCATED_IMAGES) packs what it holds"
            ));
        }
    }
    let record = match &damage {
        None => process(&bytes, &opts.spec)?,
        Some(why) => {
            // As libjpeg does for Pillow's LOAD_TRUNCATED_IMAGES: end the data with an EOI
            // marker, so the decoder fills in the missing part instead of failing.
            let mut ended = bytes;
            if ended.starts_with(&[0xFF, 0xD8]) {
                ended.extend_from_slice(&[0xFF, 0xD9]);
            }
            process(&ended, &opts.spec)
                .or_else(|e| {
                    if ended.starts_with(&[0xFF, 0xD8]) {
                        crate::imaging::process_truncated_jpeg(&ended, &opts.spec)
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| {
                    format!("truncated: {why}; the decoder cannot decode what it holds ({e})")
                })?
        }
    };
    Ok((record, damage.is_some()))
}

/// Decode and resize `files` (relative to `root`) in parallel chunks with `opts`' spec, and
/// write them in order with `writer` (which encodes them on the same threads); the first record written has the index
/// `first_index`. `stopped` words the interrupt error.
pub(crate) fn pack_files(
    root: &Path,
    files: &[SourceFile],
    opts: &PackOptions,
    writer: &mut ShardWriter,
    first_index: u64,
    stopped: &dyn Fn() -> String,
) -> Result<Packed> {
    let threads = opts
        .num_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("vantix-pack-{i}"))
        .build()
        .map_err(|e| Error::internal(format!("cannot start {threads} threads: {e}")))?;
    let bar = progress_bar(opts.progress, files.len() as u64, "images");
    bar.set_message("packing");

    let mut out = Packed {
        sources: Vec::with_capacity(files.len()),
        skipped: Vec::new(),
        truncated: Vec::new(),
    };
    let chunk = 64 * threads;
    for files in files.chunks(chunk) {
        if opts.interrupt.as_ref().is_some_and(|stop| (stop.0)()) {
            return Err(Error::Interrupted(stopped()));
        }
        let results: Vec<_> = pool.install(|| {
            files
                .par_iter()
                .map(|f| pack_one(&root.join(&f.rel), opts))
                .collect()
        });
        let mut records = Vec::with_capacity(results.len());
        for (f, res) in files.iter().zip(results) {
            match res {
                Ok((pixels, truncated)) => {
                    if truncated {
                        out.truncated.push(first_index + out.sources.len() as u64);
                    }
                    records.push((pixels, f.label));
                    out.sources.push(f.rel.as_os_str().as_bytes().to_vec());
                }
                Err(reason) => {
                    let path = root.join(&f.rel).display().to_string();
                    if opts.strict {
                        return Err(Error::BadImage { path, reason });
                    }
                    if opts.report_skipped {
                        bar.suspend(|| eprintln!("vantix-pack: skipped {path}: {reason}"));
                    }
                    out.skipped.push(skipped(&f.rel, reason));
                }
            }
            bar.inc(1);
        }
        pool.install(|| writer.push_all(records))?;
    }
    bar.finish_and_clear();
    Ok(out)
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
    opts.validate()?;
    let staging = Staging::begin(dst, opts.overwrite, &[Input::Source(src)])?;
    let folder = scan_with(src, opts.allow_empty)?;

    let spec = opts.spec;
    let geometry = Geometry {
        width: spec.width,
        height: spec.height,
        channels: spec.channels,
    };
    // A part packs one contiguous slice of the sorted list; classes, labels and the source
    // list hash stay the whole tree's, so `merge` can check that the parts belong together.
    let (first, end) = parts::slice(opts.part, folder.files.len() as u64);
    let files = &folder.files[first as usize..end as usize];
    let mut writer = ShardWriter::new(
        Arc::clone(staging.dir()),
        geometry,
        opts.codec,
        opts.shard_size,
    );
    if opts.dictionary.applies(opts.codec, geometry.record_bytes()) {
        writer = writer.with_dictionary()?;
    }
    let packed = pack_files(&folder.root, files, opts, &mut writer, 0, &|| {
        format!(
            "packing {} stopped; nothing was written there",
            dst.display()
        )
    })?;
    let (shards, version) = writer.finish_with_version()?;

    let num_samples = packed.sources.len() as u64;
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
        skipped: packed.skipped.clone(),
        part: parts::part_info(opts.part, first, end),
        appends: Vec::new(),
        truncated: packed.truncated.clone(),
        class_bytes: folder.class_bytes(),
    };
    staging.publish(
        &manifest,
        &names::sources_json(&packed.sources),
        opts.overwrite,
    )?;
    Ok(report(
        dst,
        folder.classes,
        num_samples,
        packed.skipped,
        packed.truncated,
        shards,
        start,
    ))
}

pub(crate) fn report(
    dst: &Path,
    classes: Vec<String>,
    num_samples: u64,
    skipped: Vec<Skipped>,
    truncated: Vec<u64>,
    shards: Vec<ShardInfo>,
    start: Instant,
) -> PackReport {
    PackReport {
        output: dst.to_path_buf(),
        classes,
        num_samples,
        skipped,
        truncated,
        bytes_written: shards.iter().map(|s| s.size_bytes).sum(),
        shards,
        seconds: start.elapsed().as_secs_f64(),
    }
}
