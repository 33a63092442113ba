//! File-system primitives of the writers: a directory used through its descriptor, the
//! writer lock, and atomic file replacement. How a new dataset is staged and published is
//! [`crate::staging`]'s.
//!
//! - [`Dir`]: a directory opened once and then used through its descriptor (`openat`,
//!   `renameat`, `unlinkat`), so that a folder renamed or swapped after it was opened is never
//!   written to or cleaned by mistake. Its renames are atomic on every system: the Linux-only
//!   `renameat2` flags where they exist, a portable fallback elsewhere
//!   ([`Dir::rename_dir_noreplace`], [`Dir::exchange`]).
//! - The writer lock: an exclusive `flock` on the dataset directory itself. `append` holds it
//!   while it works ([`lock_dataset`]); `pack --overwrite` and `merge --overwrite` take it on
//!   the dataset they replace before the exchange; a staging folder is locked by its packer
//!   from birth to publication. Readers take no lock.
//! - [`write_synced`], [`replace_file`]: a file written and synced; a file replaced by a synced
//!   temporary sibling renamed over it.
//!
//! See docs/RELIABILITY.md for what this guarantees on local file systems and on NFS.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use vantix_read::{Error, Result};

/// The staging marker, [`crate::staging::STAGING_MARKER`] (its first home).
pub use crate::staging::STAGING_MARKER;

/// A directory, used through its descriptor. `path` is what it was opened as, for messages.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

pub(crate) fn io(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

impl Dir {
    /// Open the directory at `path` (symlinks followed).
    pub fn open(path: &Path) -> std::io::Result<Dir> {
        let fd = rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Open the sub-directory `name` of this one, not following a symlink.
    pub fn open_child(&self, name: &OsStr) -> std::io::Result<Dir> {
        let fd = rfs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        Ok(Dir {
            fd,
            path: self.path.join(name),
        })
    }

    /// The path it was opened as (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`, for messages.
    pub fn show(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Create (or truncate) the file `name` for writing; a symlink there is not followed.
    pub fn create(&self, name: &str) -> Result<File> {
        rfs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        )
        .map(File::from)
        .map_err(|e| Error::io(self.show(name), io(e)))
    }

    /// Open the file `name` for reading; a symlink there is not followed.
    pub fn open_file(&self, name: &str) -> Result<File> {
        rfs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| Error::io(self.show(name), io(e)))
    }

    /// Remove the file `name`.
    pub fn remove_file(&self, name: &OsStr) -> std::io::Result<()> {
        rfs::unlinkat(&self.fd, name, AtFlags::empty()).map_err(io)
    }

    /// Rename `from` to `to`, both in this directory.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        rfs::renameat(&self.fd, from, &self.fd, to).map_err(|e| Error::io(self.show(to), io(e)))
    }

    /// Move the directory `from` to `to` (both in this one) unless `to` exists: `Ok(false)`
    /// when it does (nothing moved).
    ///
    /// Atomic everywhere: on Linux by `renameat2(RENAME_NOREPLACE)`; where that is missing
    /// (other systems, some network file systems) by a plain `renameat`, which is atomic too
    /// and, for a directory, never replaces anything but an empty directory (POSIX: a
    /// non-empty target fails with `EEXIST`/`ENOTEMPTY`, reported here as `Ok(false)`). A
    /// dataset always holds its manifest, so no dataset is ever replaced by this call; at
    /// worst an empty folder made in the same instant is.
    pub(crate) fn rename_dir_noreplace(&self, from: &str, to: &OsStr) -> std::io::Result<bool> {
        if let Some(done) = linux::rename_noreplace(self, from, to) {
            return done;
        }
        match rfs::renameat(&self.fd, from, &self.fd, to) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST | Errno::NOTEMPTY) => Ok(false),
            Err(e) => Err(io(e)),
        }
    }

    /// Swap the entries `a` and `b` of this directory in one atomic step: `Ok(false)` where the
    /// system or file system cannot (the caller then moves `b` aside first, see
    /// [`Staging::publish`]).
    ///
    /// Only Linux has it here (`renameat2(RENAME_EXCHANGE)`); macOS's `renameatx_np(RENAME_SWAP)`
    /// is not used because it is not built or tested here.
    pub(crate) fn exchange(&self, a: &str, b: &OsStr) -> std::io::Result<bool> {
        linux::exchange(self, a, b).unwrap_or(Ok(false))
    }

    /// Names and types of the entries (`.` and `..` left out).
    pub fn entries(&self) -> std::io::Result<Vec<(OsString, FileType)>> {
        let mut out = Vec::new();
        for e in rfs::Dir::read_from(&self.fd).map_err(io)? {
            let e = e.map_err(io)?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let mut kind = e.file_type();
            if kind == FileType::Unknown {
                // Some file systems do not say in the directory entry: ask (not following).
                kind = rfs::statat(&self.fd, e.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                    .map(|s| FileType::from_raw_mode(s.st_mode))
                    .unwrap_or(FileType::Unknown);
            }
            out.push((OsString::from_vec(name.to_vec()), kind));
        }
        Ok(out)
    }

    /// fsync the directory (makes renames and new entries durable).
    pub fn sync(&self) -> Result<()> {
        rfs::fsync(&self.fd).map_err(|e| Error::io(&self.path, io(e)))
    }

    /// Take the exclusive writer lock if it is free: `Ok(false)` when another holds it.
    /// `Err` where the file system has no `flock` (see docs/RELIABILITY.md).
    pub fn try_lock(&self) -> std::io::Result<bool> {
        match rfs::flock(&self.fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(true),
            Err(Errno::WOULDBLOCK) => Ok(false),
            Err(e) => Err(io(e)),
        }
    }

    /// Wait for the exclusive writer lock.
    pub fn lock(&self) -> std::io::Result<()> {
        rfs::flock(&self.fd, FlockOperation::LockExclusive).map_err(io)
    }

    fn id(&self) -> std::io::Result<(u64, u64)> {
        let s = rfs::fstat(&self.fd).map_err(io)?;
        Ok((s.st_dev, s.st_ino))
    }

    /// Whether `parent/name` (not following a symlink) is this very directory.
    pub fn is_at(&self, parent: &Dir, name: &OsStr) -> bool {
        match (
            rfs::statat(&parent.fd, name, AtFlags::SYMLINK_NOFOLLOW),
            self.id(),
        ) {
            (Ok(s), Ok(id)) => (s.st_dev, s.st_ino) == id,
            _ => false,
        }
    }

    /// Whether `path` (symlinks followed) is this very directory.
    pub fn is_at_path(&self, path: &Path) -> bool {
        match (rfs::stat(path), self.id()) {
            (Ok(s), Ok(id)) => (s.st_dev, s.st_ino) == id,
            _ => false,
        }
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }
}

/// The Linux-only calls, each `None` where this system or file system does not have it (the
/// caller then takes the portable way).
#[cfg(target_os = "linux")]
mod linux {
    use super::*;

    /// Did the file system refuse the flags themselves (old kernel, NFS, ...)?
    fn unsupported(e: Errno) -> bool {
        matches!(e, Errno::INVAL | Errno::NOSYS | Errno::NOTSUP)
    }

    /// `renameat2(RENAME_NOREPLACE)`: `Ok(false)` when `to` exists.
    pub(super) fn rename_noreplace(
        dir: &Dir,
        from: &str,
        to: &OsStr,
    ) -> Option<std::io::Result<bool>> {
        match rfs::renameat_with(dir, from, dir, to, rfs::RenameFlags::NOREPLACE) {
            Ok(()) => Some(Ok(true)),
            Err(Errno::EXIST) => Some(Ok(false)),
            Err(e) if unsupported(e) => None,
            Err(e) => Some(Err(io(e))),
        }
    }

    /// `renameat2(RENAME_EXCHANGE)`.
    pub(super) fn exchange(dir: &Dir, a: &str, b: &OsStr) -> Option<std::io::Result<bool>> {
        match rfs::renameat_with(dir, a, dir, b, rfs::RenameFlags::EXCHANGE) {
            Ok(()) => Some(Ok(true)),
            Err(e) if unsupported(e) => None,
            Err(e) => Some(Err(io(e))),
        }
    }
}

/// Elsewhere there is no such call: always the portable way.
#[cfg(not(target_os = "linux"))]
mod linux {
    use super::*;

    pub(super) fn rename_noreplace(_: &Dir, _: &str, _: &OsStr) -> Option<std::io::Result<bool>> {
        None
    }

    pub(super) fn exchange(_: &Dir, _: &str, _: &OsStr) -> Option<std::io::Result<bool>> {
        None
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Take the writer lock of the dataset at `path` (for `append`): refused when another writer
/// holds it. The returned directory is the locked one, checked to be the one at `path`.
pub(crate) fn lock_dataset(path: &Path) -> Result<Dir> {
    for _ in 0..8 {
        let dir = Dir::open(path).map_err(|e| Error::io(path, e))?;
        match dir.try_lock() {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::invalid(format!(
                    "{}: another vantix-pack writer (an append, or a pack or merge with \
                     --overwrite replacing it) holds this dataset's lock; wait for it to \
                     finish, then run this again",
                    path.display()
                )))
            }
            // A file system without flock (some network file systems): go on without it.
            Err(_) => return Ok(dir),
        }
        if dir.is_at_path(path) {
            return Ok(dir);
        }
        // Replaced between open and lock: lock the one that is there now.
    }
    Err(Error::invalid(format!(
        "{}: the dataset kept being replaced while vantix-pack tried to lock it",
        path.display()
    )))
}

/// Write `name` in `dir` with `bytes`, synced.
pub(crate) fn write_synced(dir: &Dir, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = dir.create(name)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(dir.show(name), e))
}

fn temp_name(name: &str) -> String {
    format!(".{name}.tmp-{}", std::process::id())
}

/// Replace `dir/name` with `bytes` atomically: a synced temporary sibling renamed over it.
pub(crate) fn replace_file(dir: &Dir, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = temp_name(name);
    write_synced(dir, &tmp, bytes)
        .and_then(|()| dir.rename(&tmp, name))
        .inspect_err(|_| {
            let _ = dir.remove_file(OsStr::new(&tmp));
        })
}
