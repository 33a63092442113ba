//! Batch assembly and prefetch.
//!
//! A background thread walks this rank's order for one epoch, takes a recycled buffer from the
//! pool, lets rayon copy (or decompress) every record of the batch into it, and sends the batch
//! down a bounded channel of `prefetch` slots. A buffer goes back to the pool only when the last
//! owner drops its [`PooledBuffer`] (in Python: when the last array or tensor viewing it dies), so
//! a batch that is still referenced is never overwritten.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver};
use rayon::prelude::*;

use crate::dataset::{Dataset, Verify};
use crate::error::{Error, Result};
use crate::sampler::{Order, Sampler};
use crate::threads::{self, ProcessLocal};
use crate::transform::{DType, Params, Prepared, Transform};

/// Loader settings; the names follow `torch.utils.data.DataLoader`.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Epoch order: random (a full shuffle), sequential, or block-shuffled.
    pub order: Order,
    /// Draw only from these dataset indices (`None`: all).
    pub indices: Option<Arc<[u64]>>,
    pub seed: u64,
    pub drop_last: bool,
    /// Batches kept ready ahead of the consumer.
    pub prefetch: usize,
    /// Threads that assemble a batch (`None`: [`threads::default_num_threads`], the usable
    /// cores divided by the ranks on this node). Loaders of a process with the same count share
    /// one pool.
    pub num_threads: Option<usize>,
    pub rank: usize,
    pub world_size: usize,
    /// Make an uneven split over ranks even by dropping the tail instead of padding
    /// (see [`Sampler::drop_remainder`]).
    pub drop_remainder: bool,
    /// Augmentation and output conversion applied while assembling (default: none, the packed
    /// uint8 NHWC records as they are).
    pub transform: Transform,
    /// Checksums checked before a record is served (default: none; lengths are always
    /// validated at open, and every batch checks that its shards did not change on disk).
    pub verify: Verify,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 256,
            order: Order::Random,
            indices: None,
            seed: 0,
            drop_last: false,
            prefetch: 3,
            num_threads: None,
            rank: 0,
            world_size: 1,
            drop_remainder: false,
            transform: Transform::default(),
            verify: Verify::None,
        }
    }
}

/// One 64-byte line of buffer storage: the alignment every output element type (and SIMD) needs.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Memory for batch buffers from outside this crate, e.g. page-locked ("pinned") memory
/// allocated by torch, so that batches can be copied to a GPU asynchronously without another
/// copy on the host.
pub trait Allocator: Send + Sync {
    /// At least `len` bytes, 64-byte aligned.
    fn allocate(&self, len: usize) -> Result<ExternalMemory>;
}

/// A block of memory owned by something else (`owner` keeps it alive).
pub struct ExternalMemory {
    ptr: std::ptr::NonNull<u8>,
    capacity: usize,
    _owner: Box<dyn std::any::Any + Send + Sync>,
}

// SAFETY: the memory is plain bytes, valid while `_owner` lives; the pool hands each block to
// one user at a time.
unsafe impl Send for ExternalMemory {}
unsafe impl Sync for ExternalMemory {}

impl ExternalMemory {
    /// # Safety
    /// `ptr .. ptr + capacity` must be writable memory that stays valid, and is used by nothing
    /// else, for as long as `owner` lives.
    pub unsafe fn new(
        ptr: *mut u8,
        capacity: usize,
        owner: Box<dyn std::any::Any + Send + Sync>,
    ) -> Result<Self> {
        let ptr = std::ptr::NonNull::new(ptr)
            .ok_or_else(|| Error::invalid("allocator returned a null pointer"))?;
        if !(ptr.as_ptr() as usize).is_multiple_of(64) {
            return Err(Error::invalid(
                "allocator returned memory that is not 64-byte aligned",
            ));
        }
        Ok(ExternalMemory {
            ptr,
            capacity,
            _owner: owner,
        })
    }
}

/// Where a buffer's bytes live.
enum Memory {
    /// 64-byte-aligned lines on our heap.
    Heap(Vec<Line>),
    External(ExternalMemory),
}

/// Storage of a batch buffer: `len` bytes at the start of 64-byte-aligned memory.
struct Storage {
    mem: Memory,
    len: usize,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            mem: Memory::Heap(Vec::new()),
            len: 0,
        }
    }
}

impl Storage {
    fn capacity(&self) -> usize {
        match &self.mem {
            Memory::Heap(lines) => lines.len() * 64,
            Memory::External(e) => e.capacity,
        }
    }
    /// Make the buffer `len` bytes long, keeping (and not rewriting) the memory it has.
    /// External memory cannot grow: the pool only hands it out when it is large enough.
    fn set_len(&mut self, len: usize) {
        if let Memory::Heap(lines) = &mut self.mem {
            let need = len.div_ceil(64);
            if lines.len() < need {
                lines.resize(need, Line([0; 64]));
            }
        }
        assert!(len <= self.capacity(), "buffer too small");
        self.len = len;
    }
    fn ptr(&self) -> *const u8 {
        match &self.mem {
            Memory::Heap(lines) => lines.as_ptr().cast::<u8>(),
            Memory::External(e) => e.ptr.as_ptr(),
        }
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: the memory holds at least `len` initialised bytes (`set_len`; external memory
        // comes from an allocated tensor).
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr().cast_mut(), self.len) }
    }
}

/// Free buffers waiting for reuse. Buffers are 64-byte-aligned allocations (from the heap, or
/// from an [`Allocator`]) that stay warm (already faulted in), which is what makes a recycled
/// batch cheaper than a fresh one.
pub struct BufferPool {
    free: Mutex<Vec<Storage>>,
    max_free: usize,
    allocator: Option<Arc<dyn Allocator>>,
}

impl BufferPool {
    pub fn new(max_free: usize) -> Arc<Self> {
        Self::with_allocator(max_free, None)
    }

    /// A pool whose new buffers come from `allocator` (the heap when `None`).
    pub fn with_allocator(max_free: usize, allocator: Option<Arc<dyn Allocator>>) -> Arc<Self> {
        Arc::new(BufferPool {
            free: Mutex::new(Vec::new()),
            max_free,
            allocator,
        })
    }

    /// A buffer of exactly `len` bytes, 64-byte aligned (contents unspecified), recycled when
    /// possible.
    pub fn get(self: &Arc<Self>, len: usize) -> Result<PooledBuffer> {
        let recycled = {
            let mut free = self.free.lock().unwrap();
            let pos = free.iter().position(|b| b.capacity() >= len);
            pos.map(|p| free.swap_remove(p))
        };
        let mut buf = match (recycled, &self.allocator) {
            (Some(buf), _) => buf,
            (None, Some(alloc)) => {
                let mem = alloc.allocate(len)?;
                if mem.capacity < len {
                    return Err(Error::invalid(format!(
                        "allocator returned {} bytes, {len} were asked for",
                        mem.capacity
                    )));
                }
                Storage {
                    mem: Memory::External(mem),
                    len: 0,
                }
            }
            (None, None) => Storage::default(),
        };
        buf.set_len(len);
        Ok(PooledBuffer {
            buf,
            pool: Arc::clone(self),
        })
    }

    fn put(&self, buf: Storage) {
        let mut free = self.free.lock().unwrap();
        if free.len() < self.max_free {
            free.push(buf);
        }
    }

    /// Number of buffers waiting for reuse.
    pub fn free_count(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

/// A buffer on loan from a [`BufferPool`]; returns itself to the pool when dropped.
pub struct PooledBuffer {
    buf: Storage,
    pool: Arc<BufferPool>,
}

impl Deref for PooledBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.as_slice()
    }
}

impl DerefMut for PooledBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut_slice()
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

/// One assembled batch: `len` images, contiguous, of shape `shape` and element type `dtype`
/// (`[len, H, W, C]` uint8 without a transform).
pub struct Batch {
    pub images: PooledBuffer,
    /// Shape of `images` in its layout: `[len, H, W, C]` (NHWC) or `[len, C, H, W]` (NCHW).
    pub shape: [usize; 4],
    pub dtype: DType,
    pub labels: Vec<i64>,
    /// Dataset index of each image, in batch order.
    pub indices: Vec<u64>,
    /// Position of this batch within this iteration (from the `start` it began at).
    pub batch_index: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
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
/// the child the first time it is used there; a pass ([`EpochIter`]) started in the parent
/// cannot be continued in the child (it reports an error instead of waiting on threads that do
/// not exist there), and the parent's pass is not disturbed.
pub struct Loader {
    dataset: Arc<Dataset>,
    config: LoaderConfig,
    shared: Arc<Shared>,
    transform: Arc<Prepared>,
}

impl Loader {
    pub fn new(dataset: Arc<Dataset>, config: LoaderConfig) -> Result<Self> {
        Self::with_allocator(dataset, config, None)
    }

    /// A loader whose batch buffers come from `allocator` (e.g. pinned memory from torch).
    pub fn with_allocator(
        dataset: Arc<Dataset>,
        config: LoaderConfig,
        allocator: Option<Arc<dyn Allocator>>,
    ) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(Error::invalid("batch_size must be at least 1"));
        }
        if config.prefetch == 0 {
            return Err(Error::invalid("prefetch must be at least 1"));
        }
        if config.world_size == 0 || config.rank >= config.world_size {
            return Err(Error::invalid(format!(
                "rank {} is not valid for world_size {}",
                config.rank, config.world_size
            )));
        }
        if let Some(idx) = &config.indices {
            if let Some(&bad) = idx.iter().find(|&&i| i >= dataset.len() as u64) {
                return Err(Error::invalid(format!(
                    "indices contains {bad}, out of range for a dataset of {} samples",
                    dataset.len()
                )));
            }
        }
        if config.num_threads == Some(0) {
            return Err(Error::invalid("num_threads must be at least 1"));
        }
        let g = dataset.geometry();
        let transform = Arc::new(config.transform.prepare(g.height, g.width, g.channels)?);
        transform.check_batch_memory(config.batch_size, config.prefetch.saturating_add(2))?;
        let shared = Arc::new(Shared {
            buffers: ProcessLocal::new(),
            threads: ProcessLocal::new(),
            allocator,
            max_free: config.prefetch + 2,
        });
        Ok(Loader {
            dataset,
            config,
            shared,
            transform,
        })
    }

    /// The same loader for rank `rank` of `world_size`, sharing this one's threads and buffers
    /// (the rank is often known only when an epoch starts: launchers start ranks after the
    /// loader is built).
    pub fn for_rank(&self, rank: usize, world_size: usize) -> Result<Loader> {
        if world_size == 0 || rank >= world_size {
            return Err(Error::invalid(format!(
                "rank {rank} is not valid for world_size {world_size}"
            )));
        }
        Ok(Loader {
            dataset: Arc::clone(&self.dataset),
            config: LoaderConfig {
                rank,
                world_size,
                ..self.config.clone()
            },
            shared: Arc::clone(&self.shared),
            transform: Arc::clone(&self.transform),
        })
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

    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.dataset
    }
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

    pub fn sampler(&self) -> Sampler {
        Sampler {
            num_samples: self.dataset.len() as u64,
            indices: self.config.indices.clone(),
            order: self.config.order,
            seed: self.config.seed,
            rank: self.config.rank,
            world_size: self.config.world_size,
            drop_remainder: self.config.drop_remainder,
        }
    }

    /// Batches per epoch for this rank.
    pub fn num_batches(&self) -> usize {
        self.num_batches_from(0)
    }

    /// Batches this rank yields in an epoch entered `start` samples into the permutation.
    pub fn num_batches_from(&self, start: u64) -> usize {
        let per = self.sampler().samples_per_rank(start);
        if self.config.drop_last {
            per / self.config.batch_size
        } else {
            per.div_ceil(self.config.batch_size)
        }
    }

    /// This rank's sample order for `epoch`, starting `start` samples into the permutation
    /// (all ranks together; 0 for a whole epoch), cut to the batches the epoch yields.
    pub fn epoch_indices(&self, epoch: u64, start: u64) -> Vec<u64> {
        let mut idx = self.sampler().rank_indices(epoch, start);
        idx.truncate((self.num_batches_from(start) * self.config.batch_size).min(idx.len()));
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
        self.transform.params(self.config.seed, epoch, index)
    }

    /// Assemble the images of `indices` as `epoch` sees them into `out`
    /// (`indices.len() * sample_bytes()`, aligned for the output type), in parallel.
    pub fn assemble(&self, epoch: u64, indices: &[u64], out: &mut [u8]) -> Result<()> {
        let seed = self.config.seed;
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

    /// Start iterating `epoch`, `start` samples into its permutation (all ranks together: after
    /// `k` batches on each of `world_size` ranks, `start = k * batch_size * world_size`), with a
    /// prefetch thread.
    pub fn epoch(&self, epoch: u64, start: u64) -> EpochIter {
        let (tx, rx) = bounded(self.config.prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = match self.threads() {
            Ok(t) => t,
            Err(e) => {
                let _ = tx.send(Err(e)); // delivered as the pass's first (and only) item
                return EpochIter::new(rx, stop, None);
            }
        };
        let dataset = Arc::clone(&self.dataset);
        let buffers = self.buffers();
        let order = self.epoch_indices(epoch, start);
        let bs = self.config.batch_size;
        let transform = Arc::clone(&self.transform);
        let seed = self.config.seed;
        let verify = self.config.verify;
        let stop2 = Arc::clone(&stop);
        // Block order is for data larger than RAM: ask the kernel to read ahead.
        let hint_ahead = matches!(self.config.order, Order::Block { .. });
        let handle = std::thread::Builder::new()
            .name("vantix-prefetch".into())
            .spawn(move || {
                let batches: Vec<&[u64]> = order.chunks(bs).collect();
                for (b, indices) in batches.iter().copied().enumerate() {
                    if stop2.load(Ordering::Relaxed) {
                        return;
                    }
                    if let (true, Some(next)) = (hint_ahead, batches.get(b + 1)) {
                        dataset.will_need(next); // start reading the next batch's blocks
                    }
                    let key = (seed, epoch);
                    let res = dataset
                        .check_before_read(indices, verify)
                        .and_then(|()| buffers.get(indices.len() * transform.sample_bytes()))
                        .and_then(|mut images| {
                            assemble(
                                &dataset,
                                &threads,
                                &transform,
                                key,
                                indices,
                                &mut images,
                                Some(&stop2),
                            )?;
                            dataset.check_after_read(indices)?;
                            let labels = indices
                                .iter()
                                .map(|&i| dataset.label(i as usize).map(i64::from))
                                .collect::<Result<Vec<_>>>()?;
                            Ok(Batch {
                                images,
                                shape: transform.batch_shape(indices.len()),
                                dtype: transform.transform().dtype,
                                labels,
                                indices: indices.to_vec(),
                                batch_index: b,
                            })
                        });
                    let failed = res.is_err();
                    if tx.send(res).is_err() || failed {
                        return; // consumer gone, or error delivered
                    }
                }
            })
            .expect("spawn prefetch thread");
        EpochIter::new(rx, stop, Some(handle))
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
pub struct EpochIter {
    rx: Option<Receiver<Result<Batch>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// The process that started the pass: its prefetch thread exists only there.
    pid: u32,
}

/// Stops a pass from any thread (see [`EpochIter::stopper`]).
#[derive(Clone)]
pub struct Stopper(Arc<AtomicBool>);

impl Stopper {
    /// Ask the prefetch thread to stop at its next check (within one record).
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Iterator for EpochIter {
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

/// What [`EpochIter::next_timeout`] found.
pub enum Next {
    Batch(Result<Batch>),
    /// The epoch is over.
    End,
    /// No batch was ready within the timeout (the caller can check for Ctrl-C and wait again).
    Waiting,
}

impl EpochIter {
    fn new(
        rx: Receiver<Result<Batch>>,
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
    ) -> Self {
        EpochIter {
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

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_recycles_only_after_drop() {
        let pool = BufferPool::new(2);
        let a = pool.get(100).unwrap();
        let pa = a.as_ptr();
        let b = pool.get(100).unwrap();
        assert_ne!(pa, b.as_ptr());
        assert_eq!((pa as usize % 64, b.as_ptr() as usize % 64), (0, 0));
        assert_eq!((a.len(), b.len()), (100, 100));
        drop(a);
        assert_eq!(pool.free_count(), 1);
        let c = pool.get(100).unwrap();
        assert_eq!(c.as_ptr(), pa);
        drop((b, c));
        assert_eq!(pool.free_count(), 2);
    }
}
