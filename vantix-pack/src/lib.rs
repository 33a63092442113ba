//! `vantix-pack`: compile a torchvision-style ImageFolder into a Vantix dataset.
//!
//! ```no_run
//! use vantix_pack::{pack, PackOptions};
//! let report = pack("train".as_ref(), "train.vtx".as_ref(), &PackOptions::default())?;
//! println!("{} images packed", report.num_samples);
//! # Ok::<(), vantix_read::Error>(())
//! ```

pub mod append;
pub mod cli;
mod font;
pub mod imaging;
pub mod inspect;
pub mod merge;
pub mod names;
pub mod outdir;
pub mod pack;
pub mod preview;
pub mod walk;
pub mod writer;

pub use append::{append, AppendOptions};
pub use imaging::{Interpolation, ResizeMode, ResizeSpec, DEFAULT_MAX_PIXELS};
pub use merge::{merge, MergeOptions};
pub use pack::{
    pack, part_range, Interrupt, PackOptions, PackReport, DEFAULT_MAX_FILE_BYTES,
    DEFAULT_SHARD_SIZE,
};
pub use walk::{scan, scan_with, ImageFolder, SourceFile, IMG_EXTENSIONS};
pub use writer::DictionaryMode;

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
            codec: vantix_read::Codec::Raw,
            shard_size: DEFAULT_SHARD_SIZE,
            jobs: None,
            strict: false,
            overwrite: false,
            progress: false,
            report_skipped: true,
            interrupt: None,
            part: None,
            zstd_dictionary: writer::DictionaryMode::Auto,
            allow_truncated: false,
            allow_empty: false,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}
