//! `vantix._native`: the thin PyO3 layer. It converts types and errors and releases the GIL
//! around every blocking or heavy call; all logic lives in `vantix-read` and `vantix-pack`.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::ndarray::ArrayView4;
use numpy::{
    PyArray1, PyArray3, PyArray4, PyArrayMethods, PyReadonlyArray4, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use vantix_pack::{
    AppendOptions, DictionaryMode, Interpolation, Interrupt, MergeOptions, PackOptions, PackReport,
    ResizeMode, ResizeSpec,
};
use vantix_read::{
    Allocator, Codec, DType, ExternalMemory, Layout, LoaderConfig, Next, Order, PooledBuffer,
    Remainder, Sampler, Stopper, Verify,
};

/// How long a wait for a batch (or a pack) goes without checking for Ctrl-C.
const SIGNAL_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// `verify=`: `None` or a [`Verify`] name (its `FromStr`, whose error lists the names).
fn parse_verify(verify: Option<&str>) -> PyResult<Verify> {
    verify.map_or(Ok(Verify::None), |v| v.parse().map_err(err))
}

mod errors;
// `err` maps every `vantix_read::Error` to its class of the hierarchy under `VantixError`.
use errors::{err, VantixError};

/// An opened, validated dataset (memory-mapped shards).
#[pyclass(frozen, module = "vantix._native")]
struct Dataset {
    inner: Arc<vantix_read::Dataset>,
    /// Checksums checked by `get` (see `Verify`).
    verify: Verify,
}

#[pymethods]
impl Dataset {
    #[new]
    #[pyo3(signature = (path, verify=None))]
    fn new(py: Python<'_>, path: PathBuf, verify: Option<&str>) -> PyResult<Self> {
        let verify = parse_verify(verify)?;
        let ds = py
            .detach(|| vantix_read::Dataset::open(&path))
            .map_err(err)?;
        Ok(Dataset {
            inner: Arc::new(ds),
            verify,
        })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Root directory of the dataset.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.root().to_path_buf()
    }

    /// The dataset's identity: 32 hex digits of XXH3-128 over its manifest's content and shard
    /// checksums (docs/FORMAT.md §2.7); another pack at the same path has another identity.
    #[getter]
    fn identity(&self) -> String {
        self.inner.identity().to_string()
    }

    /// Class names, in label order.
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.inner.classes().to_vec()
    }

    /// `(height, width, channels)` of every image.
    #[getter]
    fn shape(&self) -> (usize, usize, usize) {
        let g = self.inner.geometry();
        (g.height as usize, g.width as usize, g.channels as usize)
    }

    /// The manifest as JSON text.
    fn manifest_json(&self) -> String {
        self.inner.manifest().to_json()
    }

    /// `vantix-pack inspect`'s summary as JSON text.
    fn summary_json(&self, py: Python<'_>) -> PyResult<String> {
        let s = py
            .detach(|| vantix_pack::inspect::summarize(&self.inner))
            .map_err(err)?;
        Ok(serde_json::to_string(&s).expect("summary serialises"))
    }

    /// Image `i` (HWC uint8, a new array) and its label.
    fn get<'py>(&self, py: Python<'py>, i: usize) -> PyResult<(Bound<'py, PyArray3<u8>>, i64)> {
        let mut buf =
            vantix_read::try_zeroed(self.inner.record_bytes(), "an image").map_err(err)?;
        let idx = [i as u64];
        py.detach(|| {
            // The shard must not have changed on disk since open (a truncated mapping would
            // SIGBUS), before and after the copy.
            self.inner
                .read_checked(&idx, self.verify, || self.inner.read_into(i, &mut buf))
        })
        .map_err(err)?;
        let label = self.inner.label(i).map_err(err)?;
        let (h, w, c) = self.shape();
        let arr = PyArray1::from_vec(py, buf).reshape([h, w, c])?;
        Ok((arr, label as i64))
    }

    /// Labels of all samples (int64; copied at open, so reading them never faults).
    fn labels<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let v = self.inner.labels().iter().map(|&l| i64::from(l)).collect();
        Ok(PyArray1::from_vec(py, v))
    }

    /// Recompute all checksums; raises VantixError naming the damaged shard and record.
    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.verify()).map_err(err)
    }

    /// Write a contact sheet PNG of the records `indices` (default: `num` drawn at random with
    /// `seed`, in index order), each captioned `#index class`; returns the indices shown.
    #[pyo3(signature = (path, indices=None, num=64, seed=0, columns=None, scale=None))]
    #[allow(clippy::too_many_arguments)]
    fn preview<'py>(
        &self,
        py: Python<'py>,
        path: PathBuf,
        indices: Option<Vec<u64>>,
        num: usize,
        seed: u64,
        columns: Option<usize>,
        scale: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let shown = py
            .detach(|| {
                let indices = indices.unwrap_or_else(|| {
                    vantix_pack::preview::sample_indices(self.inner.len(), num, seed)
                });
                vantix_pack::preview::dataset_sheet(&self.inner, &indices, columns, scale)?
                    .save_png(&path)?;
                Ok(indices)
            })
            .map_err(err)?;
        Ok(PyArray1::from_vec(
            py,
            shown.into_iter().map(|i| i as i64).collect(),
        ))
    }
}

/// Owns a pooled batch buffer for as long as a numpy array views it; dropping it returns the
/// buffer to the pool.
#[pyclass(frozen, module = "vantix._native")]
struct BatchBuffer {
    _buf: PooledBuffer,
}

/// Augmentation and output conversion done by the assembler (see `vantix_read::Transform`);
/// sizes are `(height, width)`. Every value is checked in Rust: the option strings here, the
/// rest against the images by `validate` (a loader calls it).
#[pyclass(frozen, module = "vantix._native")]
struct Transform {
    inner: vantix_read::Transform,
}

#[pymethods]
impl Transform {
    #[new]
    #[pyo3(signature = (*, random_crop=None, padding=0, random_resized_crop=None, scale=vantix_read::DEFAULT_SCALE, ratio=vantix_read::DEFAULT_RATIO, center_crop=None, horizontal_flip=0.0, vertical_flip=0.0, mean=None, std=None, dtype="uint8", layout="NHWC", channels_last=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        random_crop: Option<(u32, u32)>,
        padding: u32,
        random_resized_crop: Option<(u32, u32)>,
        scale: (f64, f64),
        ratio: (f64, f64),
        center_crop: Option<(u32, u32)>,
        horizontal_flip: f64,
        vertical_flip: f64,
        mean: Option<Vec<f32>>,
        std: Option<Vec<f32>>,
        dtype: &str,
        layout: &str,
        channels_last: bool,
    ) -> PyResult<Self> {
        let dtype: DType = dtype.parse().map_err(err)?;
        let layout = layout
            .parse::<Layout>()
            .and_then(|l| l.with_channels_last(channels_last))
            .map_err(err)?;
        Ok(Transform {
            inner: vantix_read::Transform {
                random_crop,
                padding,
                random_resized_crop,
                scale,
                ratio,
                center_crop,
                horizontal_flip,
                vertical_flip,
                mean: mean.unwrap_or_default(),
                std: std.unwrap_or_default(),
                dtype,
                layout,
            },
        })
    }

    /// True when batches are the packed records unchanged (the plain-copy fast path).
    #[getter]
    fn is_identity(&self) -> bool {
        self.inner.is_identity()
    }

    /// Check the options against images of `height x width x channels`.
    #[pyo3(signature = (height, width, channels=3))]
    fn validate(&self, height: u32, width: u32, channels: u32) -> PyResult<()> {
        self.inner.validate(height, width, channels).map_err(err)
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}

/// Batch buffers from a Python callable `allocate(nbytes) -> tensor` (a torch tensor of at
/// least `nbytes` bytes, e.g. `torch.empty(n, dtype=torch.uint8, pin_memory=True)`). The tensor
/// stays alive, owned by the buffer, for as long as the buffer exists.
struct PyAllocator(Py<PyAny>);

impl Allocator for PyAllocator {
    fn allocate(&self, len: usize) -> vantix_read::Result<ExternalMemory> {
        Python::attach(|py| {
            let fail = |e: PyErr| {
                vantix_read::Error::alloc(format!("batch buffer allocation failed: {e}"))
            };
            let t = self.0.call1(py, (len,)).map_err(fail)?;
            let ptr: usize = t
                .call_method0(py, "data_ptr")
                .and_then(|p| p.extract(py))
                .map_err(fail)?;
            let nbytes: usize = t
                .getattr(py, "nbytes")
                .and_then(|n| n.extract(py))
                .map_err(fail)?;
            // SAFETY: `t` is a tensor of `nbytes` bytes at `ptr`; it is owned by the buffer from
            // now on and used by nothing else.
            unsafe { ExternalMemory::new(ptr as *mut u8, nbytes, Box::new(t)) }
        })
    }
}

#[pyclass(frozen, module = "vantix._native")]
struct Loader {
    inner: Arc<vantix_read::Loader>,
}

#[pymethods]
impl Loader {
    #[new]
    #[pyo3(signature = (dataset, batch_size=vantix_read::DEFAULT_BATCH_SIZE, shuffle=true, seed=0, drop_last=false, prefetch=vantix_read::DEFAULT_PREFETCH, num_threads=None, rank=0, world_size=1, ddp_remainder="pad", augment=None, order="random", block_size=vantix_read::DEFAULT_BLOCK_SIZE, block_window=vantix_read::DEFAULT_BLOCK_WINDOW, indices=None, allocator=None, verify=None, consumer_batches=0, readahead=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        dataset: &Dataset,
        batch_size: usize,
        shuffle: bool,
        seed: u64,
        drop_last: bool,
        prefetch: usize,
        num_threads: Option<usize>,
        rank: usize,
        world_size: usize,
        ddp_remainder: &str,
        augment: Option<PyRef<'_, Transform>>,
        order: &str,
        block_size: u64,
        block_window: u64,
        indices: Option<Vec<u64>>,
        allocator: Option<Py<PyAny>>,
        verify: Option<&str>,
        consumer_batches: usize,
        readahead: Option<u64>,
    ) -> PyResult<Self> {
        let verify = parse_verify(verify)?;
        let sampler = Sampler {
            indices: indices.map(Arc::from),
            order: Order::from_options(shuffle, order, block_size, block_window).map_err(err)?,
            seed,
            rank,
            world_size,
            ddp_remainder: ddp_remainder.parse::<Remainder>().map_err(err)?,
            ..Sampler::default()
        };
        let config = LoaderConfig {
            batch_size,
            sampler,
            drop_last,
            prefetch,
            consumer_batches,
            num_threads,
            augment: augment.map(|t| t.inner.clone()).unwrap_or_default(),
            verify,
            readahead,
        };
        let allocator = allocator.map(|f| Arc::new(PyAllocator(f)) as Arc<dyn Allocator>);
        let loader =
            vantix_read::Loader::with_allocator(Arc::clone(&dataset.inner), config, allocator)
                .map_err(err)?;
        Ok(Loader {
            inner: Arc::new(loader),
        })
    }

    fn __len__(&self) -> usize {
        self.inner.num_batches()
    }

    /// This rank's sample indices for `epoch` entered `samples_seen` samples into its
    /// permutation, in the order the batches yield them (`rank`/`world_size`: the
    /// constructor's when None).
    #[pyo3(signature = (epoch, samples_seen=0, rank=None, world_size=None))]
    fn epoch_indices<'py>(
        &self,
        py: Python<'py>,
        epoch: u64,
        samples_seen: u64,
        rank: Option<usize>,
        world_size: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let loader = self.ranked(rank, world_size)?;
        let v: Vec<i64> = py.detach(|| {
            let idx = loader.epoch_indices(epoch, samples_seen);
            idx.into_iter().map(|i| i as i64).collect()
        });
        Ok(PyArray1::from_vec(py, v))
    }

    /// Batches this rank yields in an epoch entered `samples_seen` samples into its
    /// permutation.
    #[pyo3(signature = (samples_seen, rank=None, world_size=None))]
    fn num_batches_from(
        &self,
        samples_seen: u64,
        rank: Option<usize>,
        world_size: Option<usize>,
    ) -> PyResult<usize> {
        Ok(self
            .ranked(rank, world_size)?
            .num_batches_from(samples_seen))
    }

    /// Where an epoch entered `samples_seen` samples into its permutation stands after
    /// `batches` batches on each of `world_size` ranks (the `samples_seen` of a state_dict).
    #[pyo3(signature = (samples_seen, batches, world_size=None))]
    fn samples_seen_after(
        &self,
        samples_seen: u64,
        batches: u64,
        world_size: Option<usize>,
    ) -> PyResult<u64> {
        let loader = self.ranked(None, world_size)?;
        let batch_size = loader.config().batch_size as u64;
        Ok(loader
            .sampler()
            .samples_seen_after(samples_seen, batches, batch_size))
    }

    /// Start the prefetch thread for `epoch`, `samples_seen` samples (all ranks) into its
    /// permutation, as rank `rank` of `world_size` (the constructor's when None).
    #[pyo3(signature = (epoch, samples_seen, rank=None, world_size=None))]
    fn iter_epoch(
        &self,
        py: Python<'_>,
        epoch: u64,
        samples_seen: u64,
        rank: Option<usize>,
        world_size: Option<usize>,
    ) -> PyResult<EpochIterator> {
        let loader = self.ranked(rank, world_size)?;
        let it = py.detach(|| loader.epoch(epoch, samples_seen));
        Ok(EpochIterator::new(it))
    }

    /// Assembly threads a pass uses in this process (the default: usable cores divided by
    /// `LOCAL_WORLD_SIZE`).
    #[getter]
    fn num_threads(&self) -> usize {
        self.inner.num_threads()
    }

    /// The order each epoch follows: `"random"`, `"block"` or `"sequential"` (`order="auto"`
    /// resolved when the loader was built).
    #[getter]
    fn order(&self) -> &'static str {
        self.inner.order().name()
    }

    /// Bytes of the coming batches a pass asks the kernel to read ahead (0: none).
    #[getter]
    fn readahead(&self) -> u64 {
        self.inner.readahead()
    }

    /// `memory_fit(dataset)` less this loader's batch buffers (`reserved_bytes`): what the
    /// loader decided `order="auto"` and the default readahead from.
    fn memory_fit<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let fit = py.detach(|| self.inner.memory_fit()).map_err(err)?;
        fit_dict(py, fit)
    }

    /// The augmentation drawn for dataset sample `index` in `epoch`:
    /// `(top, left, height, width, flip)`, the crop in packed-image pixels (negative inside the
    /// zero padding), as `torchvision.transforms.functional.crop` takes it.
    fn transform_params(&self, epoch: u64, index: u64) -> (i64, i64, u32, u32, bool) {
        let p = self.inner.transform_params(epoch, index);
        (p.top, p.left, p.height, p.width, p.flip)
    }

    /// Shape of a batch of `n` images as the loader yields it.
    fn batch_shape(&self, n: usize) -> [usize; 4] {
        self.inner.batch_shape(n)
    }

    /// The resume key: 32 hex digits over everything that decides what a pass yields besides
    /// the epoch and the position in it (docs/FORMAT.md §7.11). With `augment`, the key of
    /// this loader with that augmentation instead of its own: a loader that assembles uint8 for
    /// a conversion on the GPU keys the output options the user asked for, so a checkpoint
    /// resumes whichever side converts.
    #[pyo3(signature = (augment=None))]
    fn resume_key(&self, augment: Option<PyRef<'_, Transform>>) -> String {
        match augment {
            None => vantix_read::resume_key(&self.inner),
            Some(t) => vantix_read::ResumeInputs {
                transform: &t.inner,
                ..vantix_read::ResumeInputs::of(&self.inner)
            }
            .key(),
        }
    }

    /// Buffers currently waiting in the pool (for tests of buffer recycling).
    fn free_buffers(&self) -> usize {
        self.inner.buffers().free_count()
    }
}

impl Loader {
    /// The loader as rank `rank` of `world_size` (the constructor's partition when None).
    fn ranked(
        &self,
        rank: Option<usize>,
        world_size: Option<usize>,
    ) -> PyResult<Arc<vantix_read::Loader>> {
        let c = self.inner.sampler();
        let (r, w) = (rank.unwrap_or(c.rank), world_size.unwrap_or(c.world_size));
        if (r, w) == (c.rank, c.world_size) {
            return Ok(Arc::clone(&self.inner));
        }
        Ok(Arc::new(self.inner.for_rank(r, w).map_err(err)?))
    }
}

/// Iterator over one epoch: `(images, labels [B] int64, indices [B] int64)`, images
/// `[B,H,W,C]` uint8 without a transform, else in the transform's layout and dtype.
///
/// Safe to share between threads: `close()` works from any thread (also while another one waits
/// in `__next__`), and threads that call `__next__` at once are served one after the other,
/// each batch to one of them.
#[pyclass(frozen, module = "vantix._native")]
struct EpochIterator {
    /// The pass; `None` once it is over or closed. Locked only without the GIL, and never for
    /// longer than one `SIGNAL_CHECK` wait.
    it: std::sync::Mutex<Option<vantix_read::EpochIterator>>,
    stopper: Stopper,
    /// Set by `close()`: a pass stopped that way ends (an error it reports is the stop's).
    closed: std::sync::atomic::AtomicBool,
    /// The process that started the pass (a forked child must not touch the lock above).
    pid: u32,
}

impl EpochIterator {
    fn new(it: vantix_read::EpochIterator) -> Self {
        EpochIterator {
            stopper: it.stopper(),
            closed: std::sync::atomic::AtomicBool::new(false),
            it: std::sync::Mutex::new(Some(it)),
            pid: std::process::id(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<vantix_read::EpochIterator>> {
        // A panic while locked leaves nothing half-done that matters here.
        self.it.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for EpochIterator {
    /// Join the prefetch thread without holding the GIL: the thread may need the GIL to
    /// allocate a buffer through a Python allocator.
    fn drop(&mut self) {
        let it = self.it.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(it) = it {
            Python::attach(|py| py.detach(move || drop(it)));
        }
    }
}

/// What one wait in `EpochIterator.__next__` found.
enum Step {
    Batch(vantix_read::Batch),
    Failed(vantix_read::Error),
    Waiting,
    End,
}

type BatchArrays<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
);

#[pymethods]
impl EpochIterator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<BatchArrays<'py>>> {
        if self.pid != std::process::id() {
            return Err(VantixError::new_err(format!(
                "this pass was started in process {} and cannot continue in a forked child \
                 (its prefetch thread did not survive the fork); start a new pass (iter(loader)) \
                 in this process",
                self.pid
            )));
        }
        let batch = loop {
            // Wait without the GIL, but come back often enough to let Ctrl-C (or any signal
            // handler that raises) interrupt a wait for a slow batch, and to let `close()`
            // from another thread in; the iterator stays usable, and dropping it stops the
            // prefetch thread.
            let step = py.detach(|| {
                let mut guard = self.lock();
                let Some(it) = guard.as_mut() else {
                    return Step::End;
                };
                let step = match it.next_timeout(SIGNAL_CHECK) {
                    Next::Waiting => return Step::Waiting,
                    Next::Batch(Ok(b)) => return Step::Batch(b),
                    Next::End => Step::End,
                    Next::Batch(Err(e)) => Step::Failed(e),
                };
                drop(guard.take()); // the pass is over: join its thread now
                step
            });
            match step {
                Step::Waiting => py.check_signals()?,
                Step::End => return Ok(None),
                Step::Failed(_) if self.closed.load(std::sync::atomic::Ordering::Acquire) => {
                    return Ok(None); // the interruption `close()` asked for
                }
                Step::Failed(e) => return Err(err(e)),
                Step::Batch(b) => break b,
            }
        };
        let (dtype, layout) = (batch.dtype, batch.layout);
        // Channels-last batches are NHWC memory served as an NCHW-shaped view (no copy).
        let [n, d1, d2, d3] = batch.shape;
        let shape = match layout {
            Layout::ChannelsLast => [n, d2, d3, d1],
            _ => batch.shape,
        };
        let axes = match layout {
            Layout::ChannelsLast => [0, 3, 1, 2],
            _ => [0, 1, 2, 3],
        };
        let ptr = batch.images.as_ptr();
        let labels = PyArray1::from_vec(py, batch.labels);
        let indices = PyArray1::from_vec(py, batch.indices.into_iter().map(|i| i as i64).collect());
        let owner = Bound::new(py, BatchBuffer { _buf: batch.images })?.into_any();
        // SAFETY: `ptr` points into the heap allocation owned by `owner`, which is not resized
        // or freed while it lives; numpy keeps `owner` alive as the array's base object, so the
        // buffer returns to the pool only after the last view of it is gone. The buffer holds
        // exactly `shape` elements of `dtype` and is 64-byte aligned (the pool's storage).
        let images = unsafe {
            match dtype {
                DType::Uint8 => {
                    let view = ArrayView4::from_shape_ptr(shape, ptr).permuted_axes(axes);
                    PyArray4::borrow_from_array(&view, owner).into_any()
                }
                DType::Float32 => {
                    let view =
                        ArrayView4::from_shape_ptr(shape, ptr.cast::<f32>()).permuted_axes(axes);
                    PyArray4::borrow_from_array(&view, owner).into_any()
                }
                DType::Float16 => {
                    let view = ArrayView4::from_shape_ptr(shape, ptr.cast::<half::f16>())
                        .permuted_axes(axes);
                    PyArray4::borrow_from_array(&view, owner).into_any()
                }
                // numpy has no bfloat16: the bit patterns, which Python views as torch.bfloat16.
                DType::BFloat16 => {
                    let view =
                        ArrayView4::from_shape_ptr(shape, ptr.cast::<u16>()).permuted_axes(axes);
                    PyArray4::borrow_from_array(&view, owner).into_any()
                }
            }
        };
        Ok(Some((images, labels, indices)))
    }

    /// Stop the prefetch thread now (also done when the iterator is garbage collected); from
    /// any thread, also while another thread waits in `__next__` (which then ends the pass).
    fn close(&self, py: Python<'_>) {
        if self.pid != std::process::id() {
            return; // the parent's pass: nothing of it runs here
        }
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.stopper.stop();
        py.detach(|| drop(self.lock().take()));
    }
}

/// Pack an ImageFolder (see `vantix.pack`). Returns a dict report. Option strings are parsed
/// by their enums' `FromStr` and the options checked by `PackOptions::validate` (in `pack`),
/// as for the CLI.
#[pyfunction]
#[pyo3(signature = (src, dst, width, height, mode, interpolation, pad_color, codec, level, shard_size, num_threads, strict, overwrite, progress, max_pixels, exact_decode=false, filter=Codec::DEFAULT_FILTER.name(), part=None, channels=3, exif_orientation=false, dictionary="auto", allow_truncated=false, allow_empty=false, max_file_size=vantix_pack::DEFAULT_MAX_FILE_BYTES))]
#[allow(clippy::too_many_arguments)]
fn pack<'py>(
    py: Python<'py>,
    src: PathBuf,
    dst: PathBuf,
    width: u32,
    height: u32,
    mode: &str,
    interpolation: &str,
    pad_color: (u8, u8, u8),
    codec: &str,
    level: i32,
    shard_size: u64,
    num_threads: Option<usize>,
    strict: bool,
    overwrite: bool,
    progress: bool,
    max_pixels: u64,
    exact_decode: bool,
    filter: &str,
    part: Option<(u64, u64)>,
    channels: u32,
    exif_orientation: bool,
    dictionary: &str,
    allow_truncated: bool,
    allow_empty: bool,
    max_file_size: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let dictionary: DictionaryMode = dictionary.parse().map_err(err)?;
    let filter: vantix_read::Filter = filter.parse().map_err(err)?;
    let mode: ResizeMode = mode.parse().map_err(err)?;
    let interpolation: Interpolation = interpolation.parse().map_err(err)?;
    let codec = codec.parse::<Codec>().map_err(err)?;
    let codec = codec.with_zstd_settings(level, filter);
    let opts = PackOptions {
        spec: ResizeSpec {
            width,
            height,
            mode,
            interpolation,
            pad_color: [pad_color.0, pad_color.1, pad_color.2],
            max_pixels,
            exact_decode,
            channels,
            exif_orientation,
        },
        codec,
        shard_size,
        num_threads,
        strict,
        overwrite,
        progress,
        report_skipped: true,
        interrupt: None,
        part,
        dictionary,
        allow_truncated,
        allow_empty,
        max_file_bytes: max_file_size,
    };
    // Ctrl-C: the packing thread (this one, with the GIL released) asks Python between chunks
    // of images whether a signal handler raised; the pack then stops, removes its temporary
    // output, and the handler's exception (KeyboardInterrupt) is raised here.
    let raised: Raised = Arc::default();
    let opts = PackOptions {
        interrupt: Some(interrupt_on_signal(&raised)),
        ..opts
    };
    let result = py.detach(|| vantix_pack::pack(&src, &dst, &opts));
    if let Some(e) = raised.lock().unwrap().take() {
        return Err(e);
    }
    report_dict(py, result.map_err(err)?)
}

/// The exception a signal handler raised while Rust worked with the GIL released.
type Raised = Arc<std::sync::Mutex<Option<PyErr>>>;

/// An interrupt check that runs Python's signal handlers and keeps what they raise.
fn interrupt_on_signal(raised: &Raised) -> Interrupt {
    let raised = Arc::clone(raised);
    Interrupt(Arc::new(move || {
        Python::attach(|py| match py.check_signals() {
            Ok(()) => false,
            Err(e) => {
                *raised.lock().unwrap() = Some(e);
                true
            }
        })
    }))
}

/// Join the parts of a pack (see `vantix.merge`). Returns a dict report.
#[pyfunction]
#[pyo3(signature = (parts, dst, overwrite=false, progress=false))]
fn merge<'py>(
    py: Python<'py>,
    parts: Vec<PathBuf>,
    dst: PathBuf,
    overwrite: bool,
    progress: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = MergeOptions {
        overwrite,
        progress,
    };
    let report = py
        .detach(|| vantix_pack::merge(&parts, &dst, &opts))
        .map_err(err)?;
    report_dict(py, report)
}

/// Add new images to a dataset (see `vantix.append`). Returns a dict report.
#[pyfunction]
#[pyo3(signature = (src, dst, shard_size, num_threads, strict, new_classes, progress, allow_truncated=false, allow_empty=false))]
#[allow(clippy::too_many_arguments)]
fn append<'py>(
    py: Python<'py>,
    src: PathBuf,
    dst: PathBuf,
    shard_size: u64,
    num_threads: Option<usize>,
    strict: bool,
    new_classes: bool,
    progress: bool,
    allow_truncated: bool,
    allow_empty: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let raised: Raised = Arc::default();
    let opts = AppendOptions {
        shard_size,
        num_threads,
        strict,
        new_classes,
        progress,
        report_skipped: true,
        interrupt: Some(interrupt_on_signal(&raised)),
        allow_truncated,
        allow_empty,
    };
    let result = py.detach(|| vantix_pack::append(&src, &dst, &opts));
    if let Some(e) = raised.lock().unwrap().take() {
        return Err(e);
    }
    report_dict(py, result.map_err(err)?)
}

fn report_dict(py: Python<'_>, report: PackReport) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("path", report.output)?;
    d.set_item("num_samples", report.num_samples)?;
    d.set_item("classes", report.classes)?;
    let skipped: Vec<(String, String)> = report
        .skipped
        .into_iter()
        .map(|s| (s.path, s.reason))
        .collect();
    d.set_item("skipped", skipped)?;
    d.set_item("truncated", report.truncated)?;
    d.set_item("num_shards", report.shards.len())?;
    d.set_item("bytes_written", report.bytes_written)?;
    d.set_item("seconds", report.seconds)?;
    Ok(d)
}

/// Run the `vantix-pack` command line with `argv` (including the program name); returns the
/// exit code. The GIL is released for the whole run.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| vantix_pack::cli::run(argv))
}

/// A reproducible `(train, val)` split of sample indices (see `vantix.train_val_split`).
#[pyfunction]
fn train_val_split<'py>(
    py: Python<'py>,
    labels: Vec<u32>,
    fraction: f64,
    seed: u64,
    stratify: bool,
) -> (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>) {
    let (train, val) = vantix_read::train_val_split(&labels, fraction, seed, stratify);
    let to_i64 = |v: Vec<u64>| v.into_iter().map(|i| i as i64).collect::<Vec<_>>();
    (
        PyArray1::from_vec(py, to_i64(train)),
        PyArray1::from_vec(py, to_i64(val)),
    )
}

/// Write a contact sheet PNG of `images` (`[N, H, W, C]` uint8, C-contiguous, C = 1, 3 or 4),
/// one caption per image; returns the sheet's `(width, height)` in pixels.
#[pyfunction]
#[pyo3(signature = (images, captions, path, columns=None, scale=None))]
fn write_contact_sheet(
    py: Python<'_>,
    images: PyReadonlyArray4<'_, u8>,
    captions: Vec<String>,
    path: PathBuf,
    columns: Option<usize>,
    scale: Option<usize>,
) -> PyResult<(usize, usize)> {
    let [n, h, w, c] = <[usize; 4]>::try_from(images.shape()).expect("4-D array");
    let pixels = images
        .as_slice()
        .map_err(|_| errors::value_error("contact sheet: images must be C-contiguous"))?;
    py.detach(|| {
        let g = vantix_pack::preview::SheetGeometry::new(n, h, w, c, columns, scale)?;
        let sheet = vantix_pack::preview::contact_sheet(pixels, &captions, &g)?;
        sheet.save_png(&path)?;
        Ok((sheet.width, sheet.height))
    })
    .map_err(err)
}

/// The default of every `vantix.pack` option, by its Python name: what `PackOptions::default()`
/// holds (with zstd's level and filter for `codec="zstd"`), so that Python states no default
/// of its own. `size` is `(height, width)`, torchvision's order.
#[pyfunction]
fn pack_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let o = PackOptions::default();
    let (level, filter) = match o.codec {
        Codec::Zstd { level, filter } => (level, filter),
        Codec::Raw => (Codec::DEFAULT_LEVEL, Codec::DEFAULT_FILTER),
    };
    let d = PyDict::new(py);
    d.set_item("size", (o.spec.height, o.spec.width))?;
    d.set_item("mode", o.spec.mode.name())?;
    d.set_item("interpolation", o.spec.interpolation.name())?;
    d.set_item(
        "pad_color",
        (
            o.spec.pad_color[0],
            o.spec.pad_color[1],
            o.spec.pad_color[2],
        ),
    )?;
    d.set_item("codec", o.codec.name())?;
    d.set_item("level", level)?;
    d.set_item("filter", filter.name())?;
    d.set_item("dictionary", o.dictionary.name())?;
    d.set_item("shard_size", o.shard_size)?;
    d.set_item("num_threads", o.num_threads)?;
    d.set_item("strict", o.strict)?;
    d.set_item("overwrite", o.overwrite)?;
    d.set_item("progress", o.progress)?;
    d.set_item("max_pixels", o.spec.max_pixels)?;
    d.set_item("exact_decode", o.spec.exact_decode)?;
    d.set_item("part", o.part)?;
    d.set_item("channels", o.spec.channels)?;
    d.set_item("exif_orientation", o.spec.exif_orientation)?;
    d.set_item("allow_truncated", o.allow_truncated)?;
    d.set_item("allow_empty", o.allow_empty)?;
    d.set_item("max_file_size", o.max_file_bytes)?;
    Ok(d)
}

/// How `dataset` compares with the memory this process can use (`vantix_read::MemoryFit`):
/// `dataset_bytes`, `usable_bytes` (None when unknown; less `reserved_bytes`), `fits`,
/// `mem_available`, `cgroup_limit`, `cgroup_anon`, `env_limit` (VANTIX_MEMORY_LIMIT), `zstd`,
/// `zstd_bytes` (estimated for a raw pack that does not fit), `zstd_estimated` and `message`
/// (the text of the warning and of `vantix-pack inspect`'s memory line).
#[pyfunction]
fn memory_fit<'py>(py: Python<'py>, dataset: &Dataset) -> PyResult<Bound<'py, PyDict>> {
    let fit = py
        .detach(|| vantix_read::MemoryFit::of(&dataset.inner))
        .map_err(err)?;
    fit_dict(py, fit)
}

fn fit_dict(py: Python<'_>, fit: vantix_read::MemoryFit) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("reserved_bytes", fit.reserved)?;
    d.set_item("dataset_bytes", fit.dataset_bytes)?;
    d.set_item("usable_bytes", fit.usable)?;
    d.set_item("fits", fit.fits)?;
    d.set_item("mem_available", fit.limits.mem_available)?;
    d.set_item("cgroup_limit", fit.limits.cgroup_limit)?;
    d.set_item("cgroup_anon", fit.limits.cgroup_anon)?;
    d.set_item("env_limit", fit.limits.env_limit)?;
    d.set_item("zstd", fit.zstd)?;
    d.set_item("zstd_bytes", fit.zstd_bytes)?;
    d.set_item("zstd_estimated", fit.zstd_estimated)?;
    d.set_item("message", fit.message())?;
    Ok(d)
}

/// Parse a byte size such as `512M`, `1G` or `4096` (binary multiples).
#[pyfunction]
fn parse_bytes(text: &str) -> PyResult<u64> {
    vantix_pack::cli::parse_bytes(text).map_err(errors::value_error)
}

#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Loader defaults, so that the Python signatures show the Rust values.
    m.add("DEFAULT_BATCH_SIZE", vantix_read::DEFAULT_BATCH_SIZE)?;
    m.add("DEFAULT_PREFETCH", vantix_read::DEFAULT_PREFETCH)?;
    m.add("DEFAULT_BLOCK_SIZE", vantix_read::DEFAULT_BLOCK_SIZE)?;
    m.add("DEFAULT_BLOCK_WINDOW", vantix_read::DEFAULT_BLOCK_WINDOW)?;
    m.add("DEFAULT_SCALE", vantix_read::DEFAULT_SCALE)?;
    m.add("DEFAULT_RATIO", vantix_read::DEFAULT_RATIO)?;
    m.add_class::<Dataset>()?;
    m.add_class::<Loader>()?;
    m.add_class::<Transform>()?;
    m.add_class::<EpochIterator>()?;
    m.add_class::<BatchBuffer>()?;
    m.add_function(wrap_pyfunction!(pack, m)?)?;
    m.add_function(wrap_pyfunction!(merge, m)?)?;
    m.add_function(wrap_pyfunction!(append, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(parse_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(memory_fit, m)?)?;
    m.add("MEMORY_LIMIT_ENV", vantix_read::MEMORY_LIMIT_ENV)?;
    m.add_function(wrap_pyfunction!(pack_defaults, m)?)?;
    m.add("DEFAULT_MAX_PIXELS", vantix_pack::DEFAULT_MAX_PIXELS)?;
    m.add("DEFAULT_SHARD_SIZE", vantix_pack::DEFAULT_SHARD_SIZE)?;
    m.add("DEFAULT_MAX_FILE_SIZE", vantix_pack::DEFAULT_MAX_FILE_BYTES)?;
    m.add_function(wrap_pyfunction!(write_contact_sheet, m)?)?;
    m.add_function(wrap_pyfunction!(train_val_split, m)?)?;
    Ok(())
}
