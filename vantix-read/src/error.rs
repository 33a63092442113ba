//! The one error type of the Vantix crates. Every message names the file (or record) and what is
//! wrong; the Python binding maps every variant to `vantix.VantixError`.

use std::path::Path;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error while touching `path`.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not a valid Vantix file.
    #[error("{file}: {msg}")]
    Corrupt { file: String, msg: String },
    /// A stored checksum does not match the data.
    #[error("{file}: checksum mismatch: {msg}")]
    Checksum { file: String, msg: String },
    /// A file changed on disk while a dataset was open (it must not be modified in place).
    #[error("{file}: {msg}")]
    Changed { file: String, msg: String },
    /// The work was interrupted (e.g. Ctrl-C) before it finished; nothing was left behind.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// The caller asked for something invalid (bad option, index out of range, ...).
    #[error("{0}")]
    Invalid(String),
    /// A source image could not be packed (only raised in strict mode).
    #[error("{path}: cannot pack image: {reason}")]
    BadImage { path: String, reason: String },
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
    pub fn corrupt(file: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Corrupt {
            file: file.into(),
            msg: msg.into(),
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}
