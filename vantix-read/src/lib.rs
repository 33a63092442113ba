//! `vantix-read`: open a dataset packed by `vantix-pack` and iterate shuffled, ready batches.
//!
//! The pipeline is `Sampler -> batches -> assembler (rayon, with the [`Transform`]) -> prefetch
//! queue -> caller`, the batch buffers recycled through a [`BufferPool`]:
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

#![warn(missing_docs)]

pub mod buffer;
pub mod codec;
pub mod dataset;
pub mod error;
pub mod filter;
pub mod format;
pub mod loader;
pub mod memory;
pub mod resume;
pub mod sampler;
#[doc(hidden)]
pub mod testing;
pub mod threads;
pub mod transform;

pub use buffer::{Allocator, BufferPool, ExternalMemory, PooledBuffer};
pub use dataset::{try_zeroed, Access, Dataset, Shard, Verify};
pub use error::{parse_choice, Error, Result};
pub use format::{Codec, Filter, Geometry, Manifest};
#[allow(deprecated)]
pub use loader::EpochIter;
pub use loader::{
    default_readahead, Batch, EpochIterator, Loader, LoaderConfig, Next, Stopper,
    DEFAULT_BATCH_SIZE, DEFAULT_PREFETCH, MAX_NUM_THREADS, MAX_READAHEAD,
};
pub use memory::{MemoryFit, MemoryLimits, MEMORY_LIMIT_ENV};
pub use resume::{resume_key, ResumeInputs};
pub use sampler::{
    train_val_split, Order, Remainder, Sampler, DEFAULT_BLOCK_SIZE, DEFAULT_BLOCK_WINDOW,
};
pub use transform::{DType, Layout, Params, Prepared, Transform, DEFAULT_RATIO, DEFAULT_SCALE};
