//! `vantix-read`: open a dataset packed by `vantix-pack` and iterate shuffled, ready batches.
//!
//! The pipeline is `Sampler -> Batcher -> assembler (rayon) -> prefetch queue -> caller`:
//!
//! ```no_run
//! use std::sync::Arc;
//! use vantix_read::{Dataset, Loader, LoaderConfig};
//! let ds = Arc::new(Dataset::open("train.vtx")?);
//! let loader = Loader::new(ds, LoaderConfig { batch_size: 256, ..Default::default() })?;
//! for batch in loader.epoch(0, 0) {
//!     let batch = batch?;
//!     let (images, labels) = (batch.images(), &batch.labels); // [B, H, W, C] uint8, [B]
//!     # let _ = (images, labels);
//! }
//! # Ok::<(), vantix_read::Error>(())
//! ```
//! Nothing here knows about Python; the binding lives in `python/`.

pub mod dataset;
pub mod error;
pub mod filter;
pub mod format;
pub mod loader;
pub mod resume;
pub mod sampler;
#[doc(hidden)]
pub mod testing;
pub mod threads;
pub mod transform;

pub use dataset::{try_zeroed, Dataset, Shard, Verify};
pub use error::{Error, Result};
pub use format::{Codec, Filter, Geometry, Manifest};
pub use loader::{
    Allocator, Batch, BufferPool, EpochIter, ExternalMemory, Loader, LoaderConfig, Next,
    PooledBuffer, Stopper,
};
pub use resume::{resume_key, ResumeInputs};
pub use sampler::{train_val_split, Order, Sampler};
pub use transform::{DType, Layout, Params, Transform};
