//! `vantix._native`: the thin PyO3 layer. It converts types and errors and releases the GIL
//! around every blocking or heavy call; all logic lives in `vantix-read` and `vantix-pack`.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::ndarray::ArrayView4;
use numpy::{PyArray1, PyArray3, PyArray4, PyArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use vantix_pack::{Interpolation, PackOptions, ResizeMode, ResizeSpec};
use vantix_read::{Codec, EpochIter, LoaderConfig, PooledBuffer};

create_exception!(
    vantix,
    VantixError,
    PyException,
    "Raised for every Vantix failure: damaged or missing files, invalid options, unreadable images in strict mode. The message names the file and the problem."
);

fn err(e: vantix_read::Error) -> PyErr {
    VantixError::new_err(e.to_string())
}

/// An opened, validated dataset (memory-mapped shards).
#[pyclass(frozen, module = "vantix._native")]
struct Dataset {
    inner: Arc<vantix_read::Dataset>,
}

#[pymethods]
impl Dataset {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let ds = py
            .detach(|| vantix_read::Dataset::open(&path))
            .map_err(err)?;
        Ok(Dataset {
            inner: Arc::new(ds),
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
        let mut buf = vec![0u8; self.inner.record_bytes()];
        py.detach(|| self.inner.read_into(i, &mut buf))
            .map_err(err)?;
        let label = self.inner.label(i).map_err(err)?;
        let (h, w, c) = self.shape();
        let arr = PyArray1::from_vec(py, buf).reshape([h, w, c])?;
        Ok((arr, label as i64))
    }

    /// Labels of all samples (int64).
    fn labels<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let v = (0..self.inner.len())
            .map(|i| self.inner.label(i).map(i64::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok(PyArray1::from_vec(py, v))
    }

    /// Recompute all checksums; raises VantixError naming the damaged shard and record.
    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.verify()).map_err(err)
    }
}

/// Owns a pooled batch buffer for as long as a numpy array views it; dropping it returns the
/// buffer to the pool.
#[pyclass(frozen, module = "vantix._native")]
struct BatchBuffer {
    _buf: PooledBuffer,
}

#[pyclass(frozen, module = "vantix._native")]
struct Loader {
    inner: Arc<vantix_read::Loader>,
}

#[pymethods]
impl Loader {
    #[new]
    #[pyo3(signature = (dataset, batch_size, shuffle, seed, drop_last, prefetch, num_threads, rank, world_size, drop_remainder))]
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
        drop_remainder: bool,
    ) -> PyResult<Self> {
        let config = LoaderConfig {
            batch_size,
            shuffle,
            seed,
            drop_last,
            prefetch,
            num_threads,
            rank,
            world_size,
            drop_remainder,
        };
        let loader = vantix_read::Loader::new(Arc::clone(&dataset.inner), config).map_err(err)?;
        Ok(Loader {
            inner: Arc::new(loader),
        })
    }

    fn __len__(&self) -> usize {
        self.inner.num_batches()
    }

    /// This rank's sample indices for `epoch` entered `start` samples into its permutation,
    /// in the order the batches yield them.
    #[pyo3(signature = (epoch, start=0))]
    fn epoch_indices<'py>(
        &self,
        py: Python<'py>,
        epoch: u64,
        start: u64,
    ) -> Bound<'py, PyArray1<i64>> {
        let v: Vec<i64> = py.detach(|| {
            let idx = self.inner.epoch_indices(epoch, start);
            idx.into_iter().map(|i| i as i64).collect()
        });
        PyArray1::from_vec(py, v)
    }

    /// Batches this rank yields in an epoch entered `start` samples into its permutation.
    fn num_batches_from(&self, start: u64) -> usize {
        self.inner.num_batches_from(start)
    }

    /// Start the prefetch thread for `epoch`, `start` samples (all ranks) into its permutation.
    fn iter_epoch(&self, py: Python<'_>, epoch: u64, start: u64) -> EpochIterator {
        let it = py.detach(|| self.inner.epoch(epoch, start));
        let (h, w, c) = {
            let g = self.inner.dataset().geometry();
            (g.height as usize, g.width as usize, g.channels as usize)
        };
        EpochIterator {
            it: Some(it),
            shape: (h, w, c),
        }
    }

    /// Buffers currently waiting in the pool (for tests of buffer recycling).
    fn free_buffers(&self) -> usize {
        self.inner.buffers().free_count()
    }
}

/// Iterator over one epoch: `(images [B,H,W,C] uint8, labels [B] int64, indices [B] int64)`.
#[pyclass(module = "vantix._native")]
struct EpochIterator {
    it: Option<EpochIter>,
    shape: (usize, usize, usize),
}

type BatchArrays<'py> = (
    Bound<'py, PyArray4<u8>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
);

#[pymethods]
impl EpochIterator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<BatchArrays<'py>>> {
        let Some(it) = self.it.as_mut() else {
            return Ok(None);
        };
        let next = py.detach(|| it.next());
        let batch = match next {
            None => {
                self.close(py);
                return Ok(None);
            }
            Some(Err(e)) => {
                self.close(py);
                return Err(err(e));
            }
            Some(Ok(b)) => b,
        };
        let (h, w, c) = self.shape;
        let n = batch.len();
        let ptr = batch.images.as_ptr();
        let labels = PyArray1::from_vec(py, batch.labels);
        let indices = PyArray1::from_vec(py, batch.indices.into_iter().map(|i| i as i64).collect());
        let owner = Bound::new(py, BatchBuffer { _buf: batch.images })?;
        // SAFETY: `ptr` points into the heap allocation owned by `owner`, which is not resized
        // or freed while it lives; numpy keeps `owner` alive as the array's base object, so the
        // buffer returns to the pool only after the last view of it is gone.
        let images = unsafe {
            let view = ArrayView4::from_shape_ptr([n, h, w, c], ptr);
            PyArray4::borrow_from_array(&view, owner.into_any())
        };
        Ok(Some((images, labels, indices)))
    }

    /// Stop the prefetch thread now (also done when the iterator is garbage collected).
    fn close(&mut self, py: Python<'_>) {
        if let Some(it) = self.it.take() {
            py.detach(move || drop(it));
        }
    }
}

/// Pack an ImageFolder (see `vantix.pack`). Returns a dict report.
#[pyfunction]
#[pyo3(signature = (src, dst, width, height, mode, interpolation, pad_color, codec, level, shard_size, num_threads, strict, overwrite, progress, max_pixels))]
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
) -> PyResult<Bound<'py, PyDict>> {
    let mode = ResizeMode::parse(mode).ok_or_else(|| {
        VantixError::new_err(format!(
            "mode must be 'center-crop', 'squash' or 'pad', got {mode:?}"
        ))
    })?;
    let interpolation = Interpolation::parse(interpolation).ok_or_else(|| {
        VantixError::new_err(format!(
            "interpolation must be nearest, bilinear, bicubic, lanczos, box or hamming, got {interpolation:?}"
        ))
    })?;
    let codec = match codec {
        "raw" => Codec::Raw,
        "zstd" => Codec::Zstd { level },
        other => {
            return Err(VantixError::new_err(format!(
                "codec must be 'raw' or 'zstd', got {other:?}"
            )))
        }
    };
    let opts = PackOptions {
        spec: ResizeSpec {
            width,
            height,
            mode,
            interpolation,
            pad_color: [pad_color.0, pad_color.1, pad_color.2],
            max_pixels,
        },
        codec,
        shard_size,
        jobs: num_threads,
        strict,
        overwrite,
        progress,
        report_skipped: true,
    };
    let report = py
        .detach(|| vantix_pack::pack(&src, &dst, &opts))
        .map_err(err)?;
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

/// Parse a byte size such as `512M`, `1G` or `4096` (binary multiples).
#[pyfunction]
fn parse_bytes(text: &str) -> PyResult<u64> {
    vantix_pack::cli::parse_bytes(text).map_err(VantixError::new_err)
}

#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("VantixError", m.py().get_type::<VantixError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Dataset>()?;
    m.add_class::<Loader>()?;
    m.add_class::<EpochIterator>()?;
    m.add_class::<BatchBuffer>()?;
    m.add_function(wrap_pyfunction!(pack, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(parse_bytes, m)?)?;
    Ok(())
}
