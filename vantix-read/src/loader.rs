//! Batch assembly and prefetch.
//!
//! A background thread walks this rank's order for one epoch, takes a recycled buffer from the
//! pool ([`crate::buffer`]), lets rayon copy (or decompress) every record of the batch into it,
//! and sends the batch down a bounded channel of `prefetch` slots.
//!
//! Data larger than the page cache is read from disk as it is copied. The prefetch thread knows
//! the order of the batches to come, so before assembling a batch it asks the kernel for the
//! records of the next ones (`madvise(MADV_WILLNEED)` on each record's stored bytes,
//! neighbouring records merged), up to `readahead` bytes ahead of the copy: the disk then sees
//! many requests at once instead of the two or so the copying threads fault in, and the copy
//! finds its records in memory. A cursor remembers how far the hints have gone, so no batch is
//! advised twice. For the same reason each pass tells the kernel how it reads the shard
//! mappings ([`Dataset::advise`]): `MADV_RANDOM` in random order (the kernel's own readahead
//! would fetch neighbours nobody asked for), `MADV_SEQUENTIAL` in sequential order, the default
//! in block order. The hints change only when bytes are read, never which bytes are served.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver};
use rayon::prelude::*;

use crate::buffer::{Allocator, BufferPool, PooledBuffer};
use crate::dataset::{Access, Dataset, Verify};
use crate::error::{Error, Result};
use crate::sampler::{Order, Sampler};
use crate::threads::{self, ProcessLocal};
use crate::transform::{DType, Layout, Params, Prepared, Transform};

/// Samples per batch unless told otherwise (`batch_size`).
pub const DEFAULT_BATCH_SIZE: usize = 256;
/// Batches kept ready unless told otherwise (`prefetch`).
pub const DEFAULT_PREFETCH: usize = 3;
/// Most assembly threads a loader takes (`num_threads`).
pub const MAX_NUM_THREADS: usize = 65536;
/// Largest `readahead` a loader takes, in bytes (1 TiB).
pub const MAX_READAHEAD: u64 = 1 << 40;
/// The smallest default `readahead` (64 MiB): enough requests to keep a disk busy.
pub const MIN_DEFAULT_READAHEAD: u64 = 64 << 20;
/// The largest default `readahead` (1 GiB).
pub const MAX_DEFAULT_READAHEAD: u64 = 1 << 30;
/// Batches ahead of the copy the default `readahead` covers.
pub const READAHEAD_BATCHES: u64 = 4;

/// The `readahead` a loader takes unless told otherwise. 0 when `dataset` fits in the `usable`
/// bytes of memory ([`crate::memory::fits`]): its pages stay cached after the first epoch, and
/// a hint on cached pages is only a system call per record (measurably slower in memory).
/// Otherwise the stored bytes of [`READAHEAD_BATCHES`] batches of `batch_size` records (their
/// mean size), at least [`MIN_DEFAULT_READAHEAD`] and at most [`MAX_DEFAULT_READAHEAD`], and
/// never more than a quarter of `usable` (hints beyond it would evict each other before the
/// copy reads them).
pub fn default_readahead(dataset: &Dataset, batch_size: usize, usable: Option<u64>) -> u64 {
    if crate::memory::fits(dataset.size_bytes(), usable) {
        return 0;
    }
    let batches = mean_stored_bytes(dataset)
        .saturating_mul(batch_size as u64)
        .saturating_mul(READAHEAD_BATCHES);
    let d = batches.clamp(MIN_DEFAULT_READAHEAD, MAX_DEFAULT_READAHEAD);
    usable.map_or(d, |u| d.min(u / 4))
}

/// Loader settings; the names follow `torch.utils.data.DataLoader`.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Samples per batch, at least 1; an epoch's last batch may be smaller unless `drop_last`.
    pub batch_size: usize,
    /// Which samples an epoch visits, in which order, and which of them are this rank's: the
    /// order, the subset of `indices`, the seed, the rank and world size and the DDP
    /// remainder policy. Its `num_samples` is the dataset's ([`Loader::new`] sets it).
    pub sampler: Sampler,
    /// Drop this rank's last batch of an epoch when it is not full (`DataLoader(drop_last=True)`);
    /// otherwise it is yielded short.
    pub drop_last: bool,
    /// Batches kept ready ahead of the consumer.
    pub prefetch: usize,
    /// Batches the consumer may keep alive besides the one it uses, e.g. a GPU feeder's host
    /// batches whose copies are in flight (`device_prefetch + 1`). The buffer pool keeps that
    /// many more buffers for reuse, and the memory check counts them. Default 0.
    pub consumer_batches: usize,
    /// Threads that assemble a batch (`None`: [`threads::default_num_threads`], the usable
    /// cores divided by the ranks on this node). Loaders of a process with the same count share
    /// one pool.
    pub num_threads: Option<usize>,
    /// Augmentation and output conversion applied while assembling (default: none, the packed
    /// uint8 NHWC records as they are).
    pub augment: Transform,
    /// Checksums checked before a record is served (default: none; lengths are always
    /// validated at open, and every batch checks that its shards did not change on disk).
    pub verify: Verify,
    /// Bytes of the coming batches' records the prefetch thread asks the kernel to read
    /// ahead of the copy (see the module documentation), at most [`MAX_READAHEAD`]; `None`:
    /// [`default_readahead`] (none when the dataset fits in memory); `Some(0)`: no hints, the
    /// kernel's own readahead.
    pub readahead: Option<u64>,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: DEFAULT_BATCH_SIZE,
            sampler: Sampler::default(),
            drop_last: false,
            prefetch: DEFAULT_PREFETCH,
            consumer_batches: 0,
            num_threads: None,
            augment: Transform::default(),
            verify: Verify::None,
            readahead: None,
        }
    }
}

/// `rank` must be below `world_size` (at least 1).
fn check_rank(rank: usize, world_size: usize) -> Result<()> {
    if world_size == 0 || rank >= world_size {
        return Err(Error::invalid(format!(
            "rank {rank} is not valid for world_size {world_size}"
        )));
    }
    Ok(())
}

impl LoaderConfig {
    /// Batch buffers alive at once at most: the `prefetch` queue, the batch being assembled,
    /// the one the consumer uses and its `consumer_batches`.
    pub fn buffers_held(&self) -> usize {
        self.prefetch
            .saturating_add(2)
            .saturating_add(self.consumer_batches)
    }

    /// Check every option against `dataset` (the augmentation against its geometry, the
    /// batches against the memory of this machine) and compile the augmentation.
    pub fn validate(&self, dataset: &Dataset) -> Result<Prepared> {
        for (name, v) in [("batch_size", self.batch_size), ("prefetch", self.prefetch)] {
            if v == 0 {
                return Err(Error::invalid(format!(
                    "{name} must be an int in [1, {}], got 0",
                    u64::MAX
                )));
            }
        }
        if let Some(n) = self.num_threads {
            if !(1..=MAX_NUM_THREADS).contains(&n) {
                return Err(Error::invalid(format!(
                    "num_threads must be in [1, {MAX_NUM_THREADS}], got {n}"
                )));
            }
        }
        if let Some(r) = self.readahead {
            if r > MAX_READAHEAD {
                return Err(Error::invalid(format!(
                    "readahead must be an int in [0, {MAX_READAHEAD}] (bytes), got {r}"
                )));
            }
        }
        let s = &self.sampler;
        check_rank(s.rank, s.world_size)?;
        if let Order::Block { block_size, window } | Order::Auto { block_size, window } = s.order {
            if block_size == 0 || window == 0 {
                return Err(Error::invalid(
                    "block_size and block_window must be at least 1",
                ));
            }
        }
        if let Some(idx) = &s.indices {
            if let Some(&bad) = idx.iter().find(|&&i| i >= dataset.len() as u64) {
                return Err(Error::invalid(format!(
                    "indices contains {bad}, out of range for a dataset of {} samples",
                    dataset.len()
                )));
            }
        }
        let g = dataset.geometry();
        let prepared = self.augment.prepare(g.height, g.width, g.channels)?;
        prepared.check_batch_memory(self.batch_size, self.buffers_held())?;
        Ok(prepared)
    }
}

/// One assembled batch: `len` images, contiguous, of shape `shape` and element type `dtype`
/// (`[len, H, W, C]` uint8 without a transform).
pub struct Batch {
    /// The images: `len * sample_bytes` bytes, read through `shape`, `dtype` and `layout`;
    /// the buffer goes back to the loader's pool when the batch is dropped.
    pub images: PooledBuffer,
    /// Shape of `images` in its layout: `[len, H, W, C]` (NHWC) or `[len, C, H, W]` (NCHW,
    /// and [`Layout::ChannelsLast`], whose memory is `[len, H, W, C]`).
    pub shape: [usize; 4],
    /// Element type of `images`.
    pub dtype: DType,
    /// Memory layout of `images` (see `shape`).
    pub layout: Layout,
    /// Label (class index) of each image, in batch order; `i64`, as torch's class targets.
    pub labels: Vec<i64>,
    /// Dataset index of each image, in batch order.
    pub indices: Vec<u64>,
    /// Position of this batch within this iteration (from the `samples_seen` it began at).
    pub batch_index: usize,
}

impl Batch {
    /// Number of images in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// The bytes of the `images` buffer.
    pub fn images(&self) -> &[u8] {
        &self.images
    }
}

/// What the per-rank views of one loader ([`Loader::for_rank`]) share: the buffer pool and the
/// assembly threads, each made per process so that a forked child builds its own.
struct Shared {
    buffers: ProcessLocal<BufferPool>,
    threads: ProcessLocal<rayon::ThreadPool>,
    allocator: Option<Arc<dyn Allocator>>,
    max_free: usize,
}

/// Yields shuffled batches of a [`Dataset`], assembled in parallel and prefetched.
///
/// Fork-safe: a loader inherited through `fork()` starts new threads and a new buffer pool in
/// the child the first time it is used there; a pass ([`EpochIterator`]) started in the parent
/// cannot be continued in the child (it reports an error instead of waiting on threads that do
/// not exist there), and the parent's pass is not disturbed.
pub struct Loader {
    dataset: Arc<Dataset>,
    config: LoaderConfig,
    shared: Arc<Shared>,
    transform: Arc<Prepared>,
    /// The order asked for (`config.sampler.order` is the resolved one).
    requested_order: Order,
    /// The bytes read ahead (`config.readahead` resolved).
    readahead: u64,
    /// Samples below this index stay in the page cache in a full shuffle with readahead on;
    /// the pages of the others are given back once copied (see [`resident_samples`]).
    resident: u64,
}

impl Loader {
    /// A loader over `dataset` with batch buffers from the heap: `config` is checked once
    /// ([`LoaderConfig::validate`]) and its sampler's `num_samples` set to the dataset's length.
    pub fn new(dataset: Arc<Dataset>, config: LoaderConfig) -> Result<Self> {
        Self::with_allocator(dataset, config, None)
    }

    /// A loader whose batch buffers come from `allocator` (e.g. pinned memory from torch).
    ///
    /// [`Order::Auto`] is resolved here, once, from the memory this process can use now
    /// ([`crate::memory::usable_memory`]) less the loader's batch buffers
    /// ([`Loader::buffer_bytes`]), by [`crate::memory::fits`]: block order when the dataset
    /// does not fit, random otherwise. [`Loader::order`] is the result (and what the
    /// resume key covers), [`Loader::requested_order`] what was asked for.
    pub fn with_allocator(
        dataset: Arc<Dataset>,
        config: LoaderConfig,
        allocator: Option<Arc<dyn Allocator>>,
    ) -> Result<Self> {
        let mut config = config;
        config.sampler.num_samples = dataset.len() as u64;
        let transform = Arc::new(config.validate(&dataset)?);
        let requested_order = config.sampler.order;
        let needs_memory =
            matches!(requested_order, Order::Auto { .. }) || config.readahead.is_none();
        let buffers = buffer_bytes(&config, &transform);
        // Read once. An error matters only where a decision needs the figure (`auto`, the
        // default readahead); the resident set then just keeps everything.
        let limits = crate::memory::usable_memory();
        let limits = if needs_memory {
            Some(limits?)
        } else {
            limits.ok()
        };
        let usable = limits
            .and_then(|l| l.usable())
            .map(|u| u.saturating_sub(buffers));
        let fits = crate::memory::fits(dataset.size_bytes(), usable);
        config.sampler.order = requested_order.resolve(fits);
        let readahead = config
            .readahead
            .unwrap_or_else(|| default_readahead(&dataset, config.batch_size, usable));
        let resident = resident_samples(&dataset, usable, readahead);
        let shared = Arc::new(Shared {
            buffers: ProcessLocal::new(),
            threads: ProcessLocal::new(),
            allocator,
            max_free: config.buffers_held(),
        });
        Ok(Loader {
            dataset,
            config,
            shared,
            transform,
            requested_order,
            readahead,
            resident,
        })
    }

    /// The same loader for rank `rank` of `world_size`, sharing this one's threads and buffers
    /// (the rank is often known only when an epoch starts: launchers start ranks after the
    /// loader is built).
    pub fn for_rank(&self, rank: usize, world_size: usize) -> Result<Loader> {
        check_rank(rank, world_size)?;
        let mut config = self.config.clone();
        config.sampler.rank = rank;
        config.sampler.world_size = world_size;
        Ok(Loader {
            dataset: Arc::clone(&self.dataset),
            config,
            shared: Arc::clone(&self.shared),
            transform: Arc::clone(&self.transform),
            requested_order: self.requested_order,
            readahead: self.readahead,
            resident: self.resident,
        })
    }

    /// Bytes of batch buffers this loader holds at most: [`LoaderConfig::buffers_held`]
    /// batches of `batch_size` output images (the pool keeps that many).
    pub fn buffer_bytes(&self) -> u64 {
        buffer_bytes(&self.config, &self.transform)
    }

    /// How the dataset compares with the memory this process can use now, less this loader's
    /// batch buffers ([`crate::MemoryFit`]; its message is the Python warning's text).
    pub fn memory_fit(&self) -> Result<crate::MemoryFit> {
        let limits = crate::memory::usable_memory()?;
        crate::MemoryFit::with_reserved(&self.dataset, limits, self.buffer_bytes())
    }

    /// The order each epoch follows: the sampler's, with [`Order::Auto`] resolved when the
    /// loader was built.
    pub fn order(&self) -> Order {
        self.config.sampler.order
    }

    /// The order asked for (possibly [`Order::Auto`]; see [`Loader::order`]).
    pub fn requested_order(&self) -> Order {
        self.requested_order
    }

    /// Bytes of the coming batches the prefetch thread asks the kernel for ahead of the copy
    /// (0: none; see [`LoaderConfig::readahead`]).
    pub fn readahead(&self) -> u64 {
        self.readahead
    }

    /// How this loader's passes read the shard mappings ([`Dataset::advise`]): without
    /// readahead the kernel's default; with it, random access in random order (the loader
    /// asks for every record itself), sequential in the packed order over the whole dataset.
    pub fn access(&self) -> Access {
        let s = self.sampler();
        match s.order {
            _ if self.readahead == 0 => Access::Normal,
            Order::Random | Order::Auto { .. } => Access::Random,
            Order::Sequential if s.indices.is_none() => Access::Sequential,
            Order::Sequential | Order::Block { .. } => Access::Normal,
        }
    }

    /// Assembly threads this loader uses in this process (see [`LoaderConfig::num_threads`]).
    pub fn num_threads(&self) -> usize {
        self.config
            .num_threads
            .unwrap_or_else(threads::default_num_threads)
    }

    /// This process's assembly pool (started on first use, again in a forked child).
    fn threads(&self) -> Result<Arc<rayon::ThreadPool>> {
        self.shared
            .threads
            .get(|| threads::pool(self.num_threads()))
    }

    /// The dataset read.
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.dataset
    }
    /// The validated settings (its sampler's `num_samples` is the dataset's length).
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }
    /// This process's buffer pool (a forked child gets a new, empty one).
    pub fn buffers(&self) -> Arc<BufferPool> {
        let s = &self.shared;
        s.buffers
            .get(|| {
                Ok(BufferPool::with_allocator(
                    s.max_free,
                    s.allocator.as_ref().map(Arc::clone),
                ))
            })
            .expect("making a buffer pool cannot fail")
    }

    /// Which samples each epoch visits on this rank, in which order.
    pub fn sampler(&self) -> &Sampler {
        &self.config.sampler
    }

    /// Batches per epoch for this rank.
    pub fn num_batches(&self) -> usize {
        self.num_batches_from(0)
    }

    /// Batches this rank yields in an epoch entered `samples_seen` samples into the
    /// permutation (all ranks together, see [`Sampler::samples_seen_after`]).
    pub fn num_batches_from(&self, samples_seen: u64) -> usize {
        let per = self.sampler().samples_per_rank(samples_seen);
        if self.config.drop_last {
            per / self.config.batch_size
        } else {
            per.div_ceil(self.config.batch_size)
        }
    }

    /// This rank's sample order for `epoch`, starting `start` samples into the permutation
    /// (all ranks together; 0 for a whole epoch), cut to the batches the epoch yields.
    pub fn epoch_indices(&self, epoch: u64, samples_seen: u64) -> Vec<u64> {
        let mut idx = self.sampler().rank_indices(epoch, samples_seen);
        let n = self.num_batches_from(samples_seen) * self.config.batch_size;
        idx.truncate(n.min(idx.len()));
        idx
    }

    /// Bytes of one output image (after the transform).
    pub fn sample_bytes(&self) -> usize {
        self.transform.sample_bytes()
    }

    /// Shape of a batch of `n` output images, in the output layout.
    pub fn batch_shape(&self, n: usize) -> [usize; 4] {
        self.transform.batch_shape(n)
    }

    /// The augmentation parameters of dataset sample `index` in `epoch` (for tests and replay).
    pub fn transform_params(&self, epoch: u64, index: u64) -> Params {
        self.transform
            .params(self.config.sampler.seed, epoch, index)
    }

    /// Assemble the images of `indices` as `epoch` sees them into `out`
    /// (`indices.len() * sample_bytes()`, aligned for the output type), in parallel.
    pub fn assemble(&self, epoch: u64, indices: &[u64], out: &mut [u8]) -> Result<()> {
        let seed = self.config.sampler.seed;
        assemble(
            &self.dataset,
            &*self.threads()?,
            &self.transform,
            (seed, epoch),
            indices,
            out,
            None,
        )
    }

    /// Start iterating `epoch`, `samples_seen` samples into its permutation (all ranks
    /// together: [`Sampler::samples_seen_after`] `k` batches on every rank), with a
    /// prefetch thread.
    pub fn epoch(&self, epoch: u64, samples_seen: u64) -> EpochIterator {
        let (tx, rx) = bounded(self.config.prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = match self.threads() {
            Ok(t) => t,
            Err(e) => {
                let _ = tx.send(Err(e)); // delivered as the pass's first (and only) item
                return EpochIterator::new(rx, stop, None);
            }
        };
        let dataset = Arc::clone(&self.dataset);
        let buffers = self.buffers();
        let order = self.epoch_indices(epoch, samples_seen);
        let bs = self.config.batch_size;
        let transform = Arc::clone(&self.transform);
        let seed = self.config.sampler.seed;
        let verify = self.config.verify;
        let stop2 = Arc::clone(&stop);
        let (readahead, access, resident) = (self.readahead, self.access(), self.resident);
        let handle = std::thread::Builder::new()
            .name("vantix-prefetch".into())
            .spawn(move || {
                // Per pass: the mappings are the dataset's, shared with its other loaders.
                dataset.advise(access);
                let batches: Vec<&[u64]> = order.chunks(bs).collect();
                let mut ahead = Readahead::new(readahead);
                // A full shuffle with readahead on (the data does not fit, or the user asked):
                // the samples from `resident` on give their pages back once copied, so those
                // below stay cached (see resident_samples). Not in block order, whose
                // neighbouring records share pages and come in later batches of the same group
                // (measured: 1.6x the pack read per epoch with it, 1.0x without).
                let release = readahead > 0 && access == Access::Random;
                for (b, indices) in batches.iter().copied().enumerate() {
                    if stop2.load(Ordering::Relaxed) {
                        return;
                    }
                    let size_of = |k: usize| dataset.stored_bytes(batches[k]);
                    for k in ahead.before_batch(b, batches.len(), size_of) {
                        dataset.will_need(batches[k]);
                    }
                    let key = (seed, epoch);
                    let res = dataset
                        .read_checked(indices, verify, || {
                            let mut images =
                                buffers.get(indices.len() * transform.sample_bytes())?;
                            assemble(
                                &dataset,
                                &threads,
                                &transform,
                                key,
                                indices,
                                &mut images,
                                Some(&stop2),
                            )?;
                            Ok(images)
                        })
                        .and_then(|images| {
                            let labels = indices
                                .iter()
                                .map(|&i| dataset.label(i as usize).map(i64::from))
                                .collect::<Result<Vec<_>>>()?;
                            Ok(Batch {
                                images,
                                shape: transform.batch_shape(indices.len()),
                                dtype: transform.dtype(),
                                layout: transform.layout(),
                                labels,
                                indices: indices.to_vec(),
                                batch_index: b,
                            })
                        });
                    if release {
                        let copied: Vec<u64> =
                            indices.iter().copied().filter(|&i| i >= resident).collect();
                        dataset.done_with(&copied); // see Dataset::done_with
                    }
                    let failed = res.is_err();
                    if tx.send(res).is_err() || failed {
                        return; // consumer gone, or error delivered
                    }
                }
            })
            .expect("spawn prefetch thread");
        EpochIterator::new(rx, stop, Some(handle))
    }
}

/// Bytes of [`LoaderConfig::buffers_held`] batches of `batch_size` output images (see
/// [`Loader::buffer_bytes`]).
fn buffer_bytes(config: &LoaderConfig, transform: &Prepared) -> u64 {
    (transform.sample_bytes() as u64)
        .saturating_mul(config.batch_size as u64)
        .saturating_mul(config.buffers_held() as u64)
}

/// How many samples, from index 0, a full shuffle over `dataset` keeps in the page cache: as
/// many as three quarters of the `usable` memory holds once `readahead` is set aside (all of
/// them when the memory is unknown or the dataset fits).
///
/// A buffer manager's answer to a scan that does not fit: in a random permutation every record
/// is read once per epoch, and LRU keeps the ones read last, which the next epoch reads at
/// random times; most are evicted before that, and every page read waits for reclaim. Keeping
/// a fixed resident set instead and dropping every other record once copied serves that set
/// from memory every epoch (the share of reads saved is the share of the data it holds) and
/// leaves free room for the readahead.
fn resident_samples(dataset: &Dataset, usable: Option<u64>, readahead: u64) -> u64 {
    let n = dataset.len() as u64;
    let Some(usable) = usable else {
        return n;
    };
    let per_sample = mean_stored_bytes(dataset).max(1);
    (usable.saturating_sub(readahead) / 4 * 3 / per_sample).min(n)
}

/// Bytes of `dataset`'s files per sample, on average (what reading a sample costs the page
/// cache, its share of the tables included).
fn mean_stored_bytes(dataset: &Dataset) -> u64 {
    dataset.size_bytes() / (dataset.len() as u64).max(1)
}

/// The cursor of the hints one pass gives the kernel: batch `b` is advised when it is about to
/// be assembled if it was not yet, and batches `b + 1..` as long as the bytes advised ahead of
/// it stay within `budget`. Each batch is advised once.
struct Readahead {
    budget: u64,
    /// The first batch not advised yet.
    next: usize,
    /// Stored bytes of the advised batches after the current one, oldest first.
    ahead: VecDeque<u64>,
    /// Their sum.
    in_flight: u64,
    /// Stored bytes of batch `next`, once computed.
    pending: Option<u64>,
}

impl Readahead {
    fn new(budget: u64) -> Self {
        Readahead {
            budget,
            next: 0,
            ahead: VecDeque::new(),
            in_flight: 0,
            pending: None,
        }
    }

    /// Batch `b` of `n` is about to be assembled (batches come in order, `b` = 0, 1, ...;
    /// `size_of(k)`: the stored bytes of batch `k`): the batches to advise now, in order.
    fn before_batch(
        &mut self,
        b: usize,
        n: usize,
        size_of: impl Fn(usize) -> u64,
    ) -> std::ops::Range<usize> {
        if self.budget == 0 || b >= n {
            return b..b;
        }
        let first = self.next.max(b);
        if b < self.next {
            // Advised ahead earlier: it leaves the window now.
            self.in_flight -= self.ahead.pop_front().unwrap_or(0);
        } else {
            // The first batch, or one beyond a budget smaller than a batch: ask for all of
            // its records at once rather than letting the copy fault them in one by one.
            self.next = b + 1;
            self.pending = None;
        }
        while self.next < n {
            let size = *self.pending.get_or_insert_with(|| size_of(self.next));
            if self.in_flight + size > self.budget {
                break;
            }
            self.ahead.push_back(size);
            self.in_flight += size;
            self.next += 1;
            self.pending = None;
        }
        first..self.next
    }
}

/// Write the images of `indices` into `out`, one slot of `transform.sample_bytes()` each: a plain
/// copy (or decompression) without a transform, else the transform drawn for `(seed, epoch, i)`.
fn assemble(
    dataset: &Dataset,
    threads: &rayon::ThreadPool,
    transform: &Prepared,
    (seed, epoch): (u64, u64),
    indices: &[u64],
    out: &mut [u8],
    stop: Option<&AtomicBool>,
) -> Result<()> {
    let sb = transform.sample_bytes();
    // An abandoned iterator stops a batch in the middle: a big batch can take seconds.
    let check_stop = || match stop {
        Some(s) if s.load(Ordering::Relaxed) => Err(Error::Interrupted(
            "the iterator was dropped while its batch was assembled".into(),
        )),
        _ => Ok(()),
    };
    if out.len() != indices.len() * sb {
        return Err(Error::invalid("batch buffer has the wrong size"));
    }
    // Small records: hand out several per task so scheduling does not dominate the copy.
    let min_len = (64 * 1024 / sb.max(1)).max(1);
    threads.install(|| {
        let slots = out
            .par_chunks_mut(sb.max(1))
            .zip(indices.par_iter())
            .with_min_len(min_len);
        if transform.is_identity() {
            slots.try_for_each(|(dst, &i)| {
                check_stop()?;
                dataset.read_into(i as usize, dst)
            })
        } else {
            slots.try_for_each(|(dst, &i)| {
                check_stop()?;
                let p = transform.params(seed, epoch, i);
                dataset.with_record(i as usize, |src| transform.apply(src, &p, dst))?
            })
        }
    })
}

/// Iterator over one epoch's batches. Dropping it stops and joins the prefetch thread.
pub struct EpochIterator {
    rx: Option<Receiver<Result<Batch>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// The process that started the pass: its prefetch thread exists only there.
    pid: u32,
}

/// The former name of [`EpochIterator`].
#[deprecated(note = "renamed EpochIterator (the binding's and the Python package's name)")]
pub type EpochIter = EpochIterator;

/// Stops a pass from any thread (see [`EpochIterator::stopper`]).
#[derive(Clone)]
pub struct Stopper(Arc<AtomicBool>);

impl Stopper {
    /// Ask the prefetch thread to stop at its next check (within one record).
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Iterator for EpochIterator {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if let Some(e) = self.forked() {
            return Some(Err(e));
        }
        let item = self.rx.as_ref()?.recv().ok();
        if item.is_none() {
            self.finish();
        }
        item
    }
}

/// What [`EpochIterator::next_timeout`] found.
pub enum Next {
    /// The next batch, or the error that stopped its assembly.
    Batch(Result<Batch>),
    /// The epoch is over.
    End,
    /// No batch was ready within the timeout (the caller can check for Ctrl-C and wait again).
    Waiting,
}

impl EpochIterator {
    fn new(
        rx: Receiver<Result<Batch>>,
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
    ) -> Self {
        EpochIterator {
            rx: Some(rx),
            stop,
            handle,
            pid: std::process::id(),
        }
    }

    /// A handle that stops this pass from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper(Arc::clone(&self.stop))
    }

    /// In a forked child, the error this inherited pass reports (once; then it is over).
    fn forked(&mut self) -> Option<Error> {
        if self.pid == std::process::id() || self.rx.is_none() {
            return None;
        }
        self.abandon();
        Some(Error::invalid(format!(
            "this pass was started in process {} and cannot continue in a forked child (its \
             prefetch thread did not survive the fork); start a new pass in this process",
            self.pid
        )))
    }

    /// Forget the parent's thread and channel in a forked child without touching them: joining
    /// a thread that does not exist here, or taking a lock it held, could wait for ever.
    fn abandon(&mut self) {
        std::mem::forget(self.rx.take());
        std::mem::forget(self.handle.take());
    }

    /// The next batch, waiting at most `timeout` for it.
    pub fn next_timeout(&mut self, timeout: std::time::Duration) -> Next {
        if let Some(e) = self.forked() {
            return Next::Batch(Err(e));
        }
        let Some(rx) = self.rx.as_ref() else {
            return Next::End;
        };
        match rx.recv_timeout(timeout) {
            Ok(item) => Next::Batch(item),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Next::Waiting,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                self.finish();
                Next::End
            }
        }
    }

    fn finish(&mut self) {
        if self.pid != std::process::id() {
            return self.abandon();
        }
        self.stop.store(true, Ordering::Relaxed);
        self.rx = None; // wakes a producer blocked on a full channel
        if let Some(h) = self.handle.take() {
            // Dropped on its own prefetch thread (e.g. by Python's garbage collector running
            // inside a buffer allocation): the thread sees `stop` and ends by itself; joining
            // it from itself would fail.
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for EpochIterator {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::{resident_samples, Readahead};
    use crate::{Codec, Dataset};

    /// The resident set of a full shuffle: three quarters of what is usable beside the
    /// readahead, in whole samples, never more than the dataset; everything when the memory is
    /// unknown.
    #[test]
    fn resident_samples_take_three_quarters_of_the_memory_left() {
        let dir = tempfile::tempdir().unwrap();
        crate::testing::tiny_dataset(Codec::Raw)
            .write_to(dir.path())
            .unwrap();
        let ds = Dataset::open(dir.path()).unwrap();
        let n = ds.len() as u64;
        let per = ds.size_bytes() / n;
        assert_eq!(resident_samples(&ds, None, 0), n);
        assert_eq!(resident_samples(&ds, Some(u64::MAX), 0), n);
        assert_eq!(resident_samples(&ds, Some(0), 0), 0);
        assert_eq!(resident_samples(&ds, Some(4 * per + 1000), 1000), 3);
        assert_eq!(resident_samples(&ds, Some(1000), 5000), 0); // readahead over the memory
    }

    /// Over a pass, every batch is advised exactly once, never after it is assembled, and the
    /// bytes advised ahead of the batch being assembled stay within the budget.
    #[test]
    fn readahead_advises_each_batch_once_within_its_budget() {
        let sizes = [100u64, 100, 250, 100, 100, 100, 50, 400, 100];
        let n = sizes.len();
        for budget in [1u64, 100, 150, 250, 300, 1000, 10_000] {
            let mut ra = Readahead::new(budget);
            let mut advised = vec![0usize; n];
            for b in 0..n {
                for k in ra.before_batch(b, n, |k| sizes[k]) {
                    assert!(k >= b, "budget {budget}: batch {k} advised after its copy");
                    advised[k] += 1;
                }
                assert!(advised[b] == 1, "budget {budget}: batch {b} not advised");
                let ahead: u64 = (b + 1..n)
                    .filter(|&k| advised[k] > 0)
                    .map(|k| sizes[k])
                    .sum();
                assert!(ahead <= budget, "budget {budget}: {ahead} bytes ahead");
            }
            assert!(
                advised.iter().all(|&c| c == 1),
                "budget {budget}: {advised:?}"
            );
        }
        // A budget of several batches reaches ahead at once.
        let mut ra = Readahead::new(1000);
        assert_eq!(ra.before_batch(0, n, |k| sizes[k]), 0..7);
        assert_eq!(ra.before_batch(1, n, |k| sizes[k]), 7..8); // batch 1 left: room for 7
                                                               // 0 advises nothing.
        let mut off = Readahead::new(0);
        assert!((0..n).all(|b| off.before_batch(b, n, |k| sizes[k]).is_empty()));
    }
}
