//! `vantix-pack`: compile a torchvision-style ImageFolder into a Vantix dataset.
//!
//! ```no_run
//! use vantix_pack::{pack, PackOptions};
//! let report = pack("train".as_ref(), "train.vtx".as_ref(), &PackOptions::default())?;
//! println!("{} images packed", report.num_samples);
//! # Ok::<(), vantix_read::Error>(())
//! ```

#![warn(missing_docs)]

pub mod append;
pub mod cli;
mod font;
pub mod imaging;
pub mod inspect;
pub mod merge;
pub mod names;
pub mod outdir;
pub mod pack;
pub mod parts;
pub mod preview;
pub mod staging;
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
