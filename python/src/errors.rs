//! The Python exception hierarchy: one class per kind of `vantix_read::Error`, all under
//! `vantix.VantixError` (as polars maps its one Rust error enum under `PolarsError`).
//!
//! ```text
//! VantixError(Exception)                 base; also a failure inside Vantix (a thread that
//! │                                      could not start), an interrupted pack
//! ├── VantixValueError(ValueError)       an argument with a bad value (Error::Invalid)
//! ├── VantixTypeError(TypeError)         an argument of the wrong type (raised by Python)
//! ├── VantixOSError(OSError)             Error::Io, with errno, strerror and filename
//! │   ├── VantixFileNotFoundError(FileNotFoundError)     ENOENT
//! │   ├── VantixFileExistsError(FileExistsError)         EEXIST
//! │   ├── VantixPermissionError(PermissionError)         EACCES, EPERM
//! │   ├── VantixIsADirectoryError(IsADirectoryError)     EISDIR
//! │   └── VantixNotADirectoryError(NotADirectoryError)   ENOTDIR
//! ├── VantixMemoryError(MemoryError)     an allocation failed (Error::Alloc)
//! ├── CorruptDataError                   a damaged file (Error::Corrupt)
//! │   └── ChecksumMismatchError          a stored checksum does not match (Error::Checksum)
//! ├── DataChangedError                   a file changed on disk while open (Error::Changed)
//! └── BadImageError                      a source image that strict packing refuses
//! ```
//!
//! A class with two bases cannot be made by `create_exception!` (one base), so the classes are
//! made at first use by calling Python's `type(name, bases, namespace)`, kept for the life of
//! the interpreter, and added to the module at init. The OSError subclass is the one Python
//! itself picks for the errno (`type(OSError(errno, ""))`), so `except PermissionError` works
//! as it does for `open()`. docs/ERRORS.md documents the hierarchy for users.

use pyo3::create_exception;
use pyo3::exceptions::{
    PyException, PyFileExistsError, PyFileNotFoundError, PyIsADirectoryError, PyMemoryError,
    PyNotADirectoryError, PyOSError, PyPermissionError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use vantix_read::Error;

create_exception!(
    vantix,
    VantixError,
    PyException,
    "Base class of every Vantix exception. Subclasses say what failed: VantixValueError and VantixTypeError (bad arguments), VantixOSError (file-system errors, with errno and filename), VantixMemoryError, CorruptDataError (and ChecksumMismatchError), DataChangedError, BadImageError. The message names the file and the problem."
);

/// The classes made at first use, in the order they are added to the module.
struct Classes {
    value: Py<PyType>,
    os: Py<PyType>,
    /// (the builtin OSError subclass Python picks for an errno, ours deriving from it)
    os_by_builtin: Vec<(Py<PyType>, Py<PyType>)>,
    memory: Py<PyType>,
    corrupt: Py<PyType>,
    checksum: Py<PyType>,
    changed: Py<PyType>,
    bad_image: Py<PyType>,
    /// Every class above, by its public name.
    all: Vec<(&'static str, Py<PyType>)>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

/// `type(name, bases, {"__module__": "vantix", "__doc__": doc})`. The classes whose instances name a file (not OSErrors, which have their own) get a
/// `filename` attribute, `None` until set.
fn new_class<'py>(
    py: Python<'py>,
    name: &str,
    bases: &[&Bound<'py, PyType>],
    doc: &str,
) -> PyResult<Bound<'py, PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", "vantix")?;
    namespace.set_item("__doc__", doc)?;
    if matches!(
        name,
        "CorruptDataError" | "DataChangedError" | "BadImageError"
    ) {
        namespace.set_item("filename", py.None())?;
    }
    let bases = PyTuple::new(py, bases)?;
    Ok(py
        .get_type::<PyType>()
        .call1((name, bases, namespace))?
        .cast_into::<PyType>()?)
}

fn make_classes<'py>(py: Python<'py>) -> PyResult<Classes> {
    let base = py.get_type::<VantixError>();
    let mut all = Vec::new();
    let mut add = |name: &'static str, bases: &[&Bound<'py, PyType>], doc: &str| {
        let class = new_class(py, name, bases, doc)?;
        all.push((name, class.clone().unbind()));
        PyResult::Ok(class)
    };
    let value = add(
        "VantixValueError",
        &[&base, &py.get_type::<PyValueError>()],
        "An argument with a bad value (an unknown option name, a number out of range, an \
         index past the end, a rank not below world_size).",
    )?;
    // Raised from Python only (python/vantix/data.py: a wrong argument type); registered here
    // with the rest of the hierarchy.
    add(
        "VantixTypeError",
        &[&base, &py.get_type::<PyTypeError>()],
        "An argument of the wrong type (a float where an int is needed, a string for a bool).",
    )?;
    let os = add(
        "VantixOSError",
        &[&base, &py.get_type::<PyOSError>()],
        "A file-system error: errno, strerror and filename are set as for OSError. The \
         subclass is the one Python picks for the errno (VantixFileNotFoundError, ...).",
    )?;
    let mut os_by_builtin = Vec::new();
    for (name, builtin, doc) in [
        (
            "VantixFileNotFoundError",
            py.get_type::<PyFileNotFoundError>(),
            "A path that does not exist (errno ENOENT).",
        ),
        (
            "VantixFileExistsError",
            py.get_type::<PyFileExistsError>(),
            "A path that already exists (errno EEXIST).",
        ),
        (
            "VantixPermissionError",
            py.get_type::<PyPermissionError>(),
            "Permission denied (errno EACCES or EPERM).",
        ),
        (
            "VantixIsADirectoryError",
            py.get_type::<PyIsADirectoryError>(),
            "A directory where a file was expected (errno EISDIR).",
        ),
        (
            "VantixNotADirectoryError",
            py.get_type::<PyNotADirectoryError>(),
            "A file where a directory was expected (errno ENOTDIR).",
        ),
    ] {
        let ours = add(name, &[&os, &builtin], doc)?;
        os_by_builtin.push((builtin.unbind(), ours.unbind()));
    }
    let memory = add(
        "VantixMemoryError",
        &[&base, &py.get_type::<PyMemoryError>()],
        "Memory for a batch, a record or a table could not be allocated (or the allocator \
         given to the loader failed).",
    )?;
    let corrupt = add(
        "CorruptDataError",
        &[&base],
        "A file exists but its content is damaged or not a valid Vantix file (truncated, \
         wrong magic or version, inconsistent tables). `filename` names the file. Not a \
         ValueError: the arguments were fine, the data is not.",
    )?;
    let checksum = add(
        "ChecksumMismatchError",
        &[&corrupt],
        "A stored checksum does not match the data (found by verify, or by verify='shard' / \
         'record' while reading). `filename` names the shard; the message names the record.",
    )?;
    let changed = add(
        "DataChangedError",
        &[&base],
        "A file of an open dataset changed on disk (its size, modification time or content), \
         which Vantix never serves: datasets must not be modified in place. Open it again.",
    )?;
    let bad_image = add(
        "BadImageError",
        &[&base],
        "A source image that could not be packed (unreadable, truncated, too large), raised \
         in strict mode only. `filename` names the image.",
    )?;
    Ok(Classes {
        value: value.unbind(),
        os: os.unbind(),
        os_by_builtin,
        memory: memory.unbind(),
        corrupt: corrupt.unbind(),
        checksum: checksum.unbind(),
        changed: changed.unbind(),
        bad_image: bad_image.unbind(),
        all,
    })
}

fn classes(py: Python<'_>) -> PyResult<&'static Classes> {
    CLASSES.get_or_try_init(py, || make_classes(py))
}

/// Add `VantixError` and every subclass to the module (called once, at init).
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("VantixError", py.get_type::<VantixError>())?;
    for (name, class) in &classes(py)?.all {
        m.add(*name, class.bind(py))?;
    }
    Ok(())
}

/// The errno of an I/O error: the OS's, or for an error made by Vantix (which has only a kind),
/// the errno of that kind; EIO where there is none.
fn errno(e: &std::io::Error) -> i32 {
    use std::io::ErrorKind as K;
    if let Some(n) = e.raw_os_error() {
        return n;
    }
    match e.kind() {
        K::NotFound => libc::ENOENT,
        K::PermissionDenied => libc::EACCES,
        K::AlreadyExists => libc::EEXIST,
        K::NotADirectory => libc::ENOTDIR,
        K::IsADirectory => libc::EISDIR,
        K::DirectoryNotEmpty => libc::ENOTEMPTY,
        K::ReadOnlyFilesystem => libc::EROFS,
        K::StorageFull => libc::ENOSPC,
        K::FileTooLarge => libc::EFBIG,
        K::Interrupted => libc::EINTR,
        K::WouldBlock => libc::EAGAIN,
        K::TimedOut => libc::ETIMEDOUT,
        K::OutOfMemory => libc::ENOMEM,
        K::InvalidInput => libc::EINVAL,
        K::CrossesDevices => libc::EXDEV,
        _ => libc::EIO,
    }
}

/// The OS's description without Rust's " (os error N)" suffix (Python's `strerror`).
fn strerror(e: &std::io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(n) => text
            .strip_suffix(&format!(" (os error {n})"))
            .map_or(text.clone(), str::to_string),
        None => text,
    }
}

fn to_pyerr(py: Python<'_>, c: &Classes, e: Error) -> PyResult<PyErr> {
    let (class, filename) = match &e {
        Error::Io { path, source } => {
            let errno = errno(source);
            // The subclass Python itself picks for this errno (OSError.__new__ does that only
            // for OSError itself, so ours is chosen here).
            let builtin = py.get_type::<PyOSError>().call1((errno, ""))?.get_type();
            let class = c
                .os_by_builtin
                .iter()
                .find(|(b, _)| b.bind(py).is(&builtin))
                .map_or(&c.os, |(_, ours)| ours);
            let args = (errno, strerror(source), path.clone());
            return Ok(PyErr::from_type(class.bind(py).clone(), args));
        }
        Error::Invalid(_) => (&c.value, None),
        Error::Alloc(_) => (&c.memory, None),
        Error::Corrupt { file, .. } => (&c.corrupt, Some(file)),
        Error::Checksum { file, .. } => (&c.checksum, Some(file)),
        Error::Changed { file, .. } => (&c.changed, Some(file)),
        Error::BadImage { path, .. } => (&c.bad_image, Some(path)),
        Error::Interrupted(_) | Error::Internal(_) => {
            return Ok(VantixError::new_err(e.to_string()));
        }
    };
    let err = PyErr::from_type(class.bind(py).clone(), e.to_string());
    if let Some(file) = filename {
        err.value(py).setattr("filename", file)?;
    }
    Ok(err)
}

/// The Python exception for `e`: the class of its kind, its message the error's text.
pub fn err(e: Error) -> PyErr {
    Python::attach(|py| match classes(py) {
        Ok(c) => to_pyerr(py, c, e).unwrap_or_else(|failed| failed),
        Err(failed) => failed,
    })
}

/// A `VantixValueError` (a bad argument value) raised by the binding itself.
pub fn value_error(msg: impl Into<String>) -> PyErr {
    err(Error::invalid(msg))
}
