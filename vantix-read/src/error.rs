//! The one error type of the Vantix crates. Every message names the file (or record) and what is
//! wrong. The Python binding maps each variant to one class of a hierarchy under
//! `vantix.VantixError` (python/src/errors.rs; docs/ERRORS.md lists the classes): `Io` to an
//! `OSError` with its errno, `Invalid` to a `ValueError`, `Corrupt`/`Checksum`/`Changed`/
//! `BadImage` to their own classes, `Alloc` to a `MemoryError`.

use std::path::Path;

/// `Result` with the crate's [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure of `vantix-read` and `vantix-pack`: one variant per kind of cause, each
/// mapped to one Python exception class.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error while touching `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory the operation was on, as displayed.
        path: String,
        /// The operating system's error (its kind and errno reach Python).
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not a valid Vantix file.
    #[error("{file}: {msg}")]
    Corrupt {
        /// The file whose content is not valid.
        file: String,
        /// What is wrong with it and what was expected.
        msg: String,
    },
    /// A stored checksum does not match the data.
    #[error("{file}: checksum mismatch: {msg}")]
    Checksum {
        /// The damaged file.
        file: String,
        /// Which record, or which whole-file hash, does not match.
        msg: String,
    },
    /// A file changed on disk while a dataset was open (it must not be modified in place).
    #[error("{file}: {msg}")]
    Changed {
        /// The file that changed.
        file: String,
        /// What changed (its size or modification time) since the dataset was opened.
        msg: String,
    },
    /// The work was interrupted (e.g. Ctrl-C) before it finished; nothing was left behind.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// The caller asked for something invalid (bad option, index out of range, ...). Only for
    /// what the caller can fix by passing something else; failures inside Vantix or the
    /// system are `Internal` or `Alloc`.
    #[error("{0}")]
    Invalid(String),
    /// Memory (or a buffer from the caller's allocator) could not be allocated.
    #[error("{0}")]
    Alloc(String),
    /// A failure that is neither the caller's input nor the data: a thread that could not
    /// start, a compressor that failed.
    #[error("{0}")]
    Internal(String),
    /// A source image could not be packed (only raised in strict mode).
    #[error("{path}: cannot pack image: {reason}")]
    BadImage {
        /// The source image's path (the source directory joined with its relative path).
        path: String,
        /// Why it could not be packed (it does not decode, is too large, ...).
        reason: String,
    },
}

impl Error {
    /// An [`Error::Io`] on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
    /// An [`Error::Corrupt`]: `file` is not valid because `msg`.
    pub fn corrupt(file: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Corrupt {
            file: file.into(),
            msg: msg.into(),
        }
    }
    /// An [`Error::Invalid`]: `msg` names the argument, what it must be, and what it got.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
    /// An [`Error::Alloc`]: `msg` says how many bytes were asked for, and for what.
    pub fn alloc(msg: impl Into<String>) -> Self {
        Error::Alloc(msg.into())
    }
    /// An [`Error::Internal`].
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }
}

/// Parse `s` as one of `choices` (`(name, value)` pairs): the one `FromStr` rule of every option
/// enum, used by the CLI, the binding and the library alike. The error names the option and
/// lists every choice: `order must be one of 'random', 'block' or 'sequential', got "x"`.
pub fn parse_choice<T: Copy>(what: &str, s: &str, choices: &[(&str, T)]) -> Result<T> {
    if let Some(&(_, value)) = choices.iter().find(|(name, _)| *name == s) {
        return Ok(value);
    }
    let names: Vec<String> = choices.iter().map(|(n, _)| format!("'{n}'")).collect();
    let listed = match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(Error::invalid(format!(
        "{what} must be one of {listed}, got {s:?}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_choice_lists_every_choice() {
        let choices = [("a", 1), ("b", 2), ("c", 3)];
        assert_eq!(parse_choice("x", "b", &choices).unwrap(), 2);
        let e = parse_choice("x", "d", &choices).unwrap_err().to_string();
        assert_eq!(e, "x must be one of 'a', 'b' or 'c', got \"d\"");
    }
}
