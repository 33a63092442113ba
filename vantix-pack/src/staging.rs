//! How a new dataset appears at its output path, whole or not at all (`pack`, `merge`).
//!
//! - [`Staging`]: the hidden sibling `.NAME.partial-RANDOM` a dataset is built in, locked by
//!   its packer, published by an atomic rename (or exchange, [`Dir::exchange`]). Leftovers of
//!   killed packers are removed only when their lock is free, and only the files vantix-pack
//!   writes.
//! - The overwrite guard: `--overwrite` replaces only a Vantix dataset, never the source tree,
//!   a folder around it or inside it ([`check_clear_of_inputs`]), or anything else.
//! - [`explain_partial_error`]: a write error names the output path, not the removed staging
//!   folder.
//!
//! The directory primitives and the writer lock are [`crate::outdir`]'s. See
//! docs/RELIABILITY.md for what this guarantees on local file systems and on NFS.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, FileType};
use rustix::io::Errno;
use vantix_read::codec::{is_shard_file_name, SOURCES_NAME};
use vantix_read::format::{Manifest, MANIFEST_NAME};
use vantix_read::{Error, Result};

use crate::outdir::{io, write_synced, Dir};

/// The file a packer creates in its staging folder as soon as it holds the folder's lock: a
/// folder without it (and without a manifest) is never taken for a packer's leftovers.
pub const STAGING_MARKER: &str = ".vantix-staging";

/// Whether `name` is a file vantix-pack writes in a dataset or staging folder.
pub(crate) fn is_vantix_file(name: &[u8]) -> bool {
    let s = match std::str::from_utf8(name) {
        Ok(s) => s,
        Err(_) => return false,
    };
    s == MANIFEST_NAME
        || s == SOURCES_NAME
        || s == STAGING_MARKER
        || is_shard_file_name(s)
        || s.starts_with(&format!(".{MANIFEST_NAME}.tmp-"))
        || s.starts_with(&format!(".{SOURCES_NAME}.tmp-"))
}

/// Remove the files vantix-pack writes from `dir` (the child `name` of `parent`), then the
/// folder itself. Files it did not write are left, and so the folder: returns false then.
fn remove_vantix_dir(parent: &Dir, name: &OsStr, dir: &Dir) -> bool {
    if let Ok(entries) = dir.entries() {
        for (n, t) in entries {
            if t == FileType::RegularFile && is_vantix_file(n.as_bytes()) {
                let _ = dir.remove_file(&n);
            }
        }
    }
    rfs::unlinkat(parent, name, AtFlags::REMOVEDIR).is_ok()
}

/// What `dir` is, if vantix-pack made it: `Ok(())` for a dataset (its `manifest.json` parses)
/// or a staging folder (it holds the marker); otherwise why not.
fn vantix_made(dir: &Dir) -> std::result::Result<(), String> {
    if dir.has(STAGING_MARKER) {
        return Ok(());
    }
    let mut f = dir
        .open_file(MANIFEST_NAME)
        .map_err(|_| format!("it has no {MANIFEST_NAME}"))?;
    let mut bytes = Vec::new();
    use std::io::Read;
    (&mut f)
        .take(vantix_read::format::MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("its {MANIFEST_NAME} cannot be read ({e})"))?;
    Manifest::parse(&bytes, MANIFEST_NAME)
        .map(|_| ())
        .map_err(|e| format!("its {MANIFEST_NAME} is not a Vantix manifest ({e})"))
}

/// `path` made absolute with its folder's symlinks resolved (the last component kept as is).
fn absolute(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(parent).ok()?.join(name))
}

/// An input an output path must keep clear of: the source tree of a pack or append, a part of
/// a merge.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Input<'a> {
    Source(&'a Path),
    Part(&'a Path),
}

/// Refuse an output path that is, contains or lies inside one of `inputs`.
pub(crate) fn check_clear_of_inputs(dst: &Path, inputs: &[Input<'_>]) -> Result<()> {
    let Some(out) = absolute(dst) else {
        return Ok(()); // the output folder's check reports it
    };
    // Resolve the output itself too when it exists (a symlink to the source tree).
    let out_real = std::fs::canonicalize(&out).unwrap_or_else(|_| out.clone());
    for input in inputs {
        let (path, what) = match input {
            Input::Source(p) => (*p, "the source tree"),
            Input::Part(p) => (*p, "a part being merged"),
        };
        let Ok(inp) = std::fs::canonicalize(path) else {
            continue; // a missing input is reported by whoever reads it
        };
        for o in [&out, &out_real] {
            if *o == inp || inp.starts_with(o) {
                let how = if *o == inp { "is" } else { "contains" };
                return Err(Error::invalid(format!(
                    "{}: {how} {what} {}; vantix-pack never replaces or writes into its input, \
                     so nothing was changed. Write the dataset to a path outside it",
                    dst.display(),
                    path.display()
                )));
            }
            if o.starts_with(&inp) {
                return Err(Error::invalid(format!(
                    "{}: lies inside {what} {}; a dataset written there would be read back as \
                     part of it (a class folder) and could replace its files, so it is refused. \
                     Write the dataset to a path outside {}",
                    dst.display(),
                    path.display(),
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// Check an existing output path for `--overwrite`: it must be a Vantix dataset (a valid
/// manifest) or a staging folder vantix-pack made, a real directory, not a symlink.
fn check_replaceable(parent: &Dir, name: &OsStr, dst: &Path) -> Result<()> {
    let refuse = |why: String| {
        Error::invalid(format!(
            "{}: {why}; --overwrite (overwrite=True) replaces only a dataset vantix-pack made, so \
             nothing was changed. Choose another output path, or move it away yourself if it \
             really is meant to go",
            dst.display()
        ))
    };
    match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) if FileType::from_raw_mode(s.st_mode) == FileType::Symlink => {
            return Err(refuse(
                "is a symbolic link (give the dataset's real path)".into(),
            ))
        }
        Ok(s) if FileType::from_raw_mode(s.st_mode) != FileType::Directory => {
            return Err(refuse("exists and is not a directory".into()))
        }
        Ok(_) => {}
        Err(e) => return Err(Error::io(dst, io(e))),
    }
    let dir = parent.open_child(name).map_err(|e| Error::io(dst, e))?;
    vantix_made(&dir).map_err(|why| refuse(format!("exists and is not a Vantix dataset ({why})")))
}

fn exists(parent: &Dir, name: &OsStr) -> std::io::Result<bool> {
    match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(io(e)),
    }
}

/// Remove the staging (`.NAME.partial-*`) and set-aside (`.NAME.old-*`) folders that killed
/// writers left next to `NAME`: only those whose lock is free and that vantix-pack made (they
/// hold the staging marker or a valid manifest), and in them only vantix-pack's files.
pub(crate) fn remove_stale(parent: &Dir, name: &OsStr) {
    let mut prefixes = Vec::new();
    for kind in [".partial-", ".old-"] {
        let mut p = b".".to_vec();
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(kind.as_bytes());
        prefixes.push(p);
    }
    let Ok(entries) = parent.entries() else {
        return;
    };
    for (n, t) in entries {
        if t != FileType::Directory || !prefixes.iter().any(|p| n.as_bytes().starts_with(p)) {
            continue;
        }
        let Ok(dir) = parent.open_child(&n) else {
            continue;
        };
        // A live writer holds the lock; a file system without flock proves nothing.
        if !matches!(dir.try_lock(), Ok(true)) || !dir.is_at(parent, &n) {
            continue;
        }
        if vantix_made(&dir).is_ok() {
            remove_vantix_dir(parent, &n, &dir);
        } else {
            // An empty folder (a packer killed between mkdir and its marker) holds nothing to
            // lose: rmdir removes only an empty one. A packer that just made it retries.
            let _ = rfs::unlinkat(parent, &n, AtFlags::REMOVEDIR);
        }
    }
}

/// A dataset being written: the hidden, locked sibling `.NAME.partial-RANDOM` of the output
/// path, moved into place by [`Staging::publish`] and removed if dropped before that.
pub(crate) struct Staging {
    dst: PathBuf,
    parent: Dir,
    name: OsString,
    tmp_name: String,
    dir: Option<Arc<Dir>>,
}

/// Create a staging folder `PREFIX` + random characters in `parent`, lock it, then mark it.
fn create_staging(parent: &Dir, parent_path: &Path, prefix: &str) -> Result<(String, Dir)> {
    let created = tempfile::Builder::new()
        .prefix(prefix)
        .rand_bytes(RANDOM_CHARS)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .disable_cleanup(true)
        .tempdir_in(parent_path)
        .map_err(|e| Error::io(parent_path.join(prefix), e))?;
    let tmp_name = created
        .path()
        .file_name()
        .expect("a staging name")
        .to_string_lossy()
        .into_owned();
    drop(created);
    let dir = parent
        .open_child(OsStr::new(&tmp_name))
        .map_err(|e| Error::io(parent.show(&tmp_name), e))?;
    // Locked before the marker exists: a cleaner that finds the folder unlocked and marked
    // knows its packer is gone; one that finds it unmarked removes it only if it is empty.
    let _ = dir.lock();
    if !dir.is_at(parent, OsStr::new(&tmp_name)) {
        return Err(Error::invalid(format!(
            "{}: removed while it was being created",
            parent.show(&tmp_name).display()
        )));
    }
    drop(dir.create(STAGING_MARKER)?);
    Ok((tmp_name, dir))
}

/// Random part of staging names: 12 characters of [A-Za-z0-9] (tempfile's generator).
const RANDOM_CHARS: usize = 12;

fn name_str(name: &OsStr) -> String {
    crate::names::display(name.as_bytes())
}

impl Staging {
    /// Check the output path (its folder exists; it does not exist, or with `overwrite` it is
    /// a Vantix dataset; it keeps clear of `inputs`), remove what killed writers left next to
    /// it, and create and lock the staging folder.
    pub(crate) fn begin(dst: &Path, overwrite: bool, inputs: &[Input<'_>]) -> Result<Self> {
        let name = dst
            .file_name()
            .ok_or_else(|| Error::invalid(format!("{}: not a valid output path", dst.display())))?
            .to_os_string();
        let parent_path = match dst.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let parent = match Dir::open(&parent_path) {
            Ok(d) => d,
            Err(_) => {
                return Err(Error::invalid(format!(
                    "{}: output folder does not exist",
                    parent_path.display()
                )))
            }
        };
        check_clear_of_inputs(dst, inputs)?;
        if exists(&parent, &name).map_err(|e| Error::io(dst, e))? {
            if !overwrite {
                return Err(Error::invalid(format!(
                    "{}: already exists (pass --overwrite / overwrite=True to replace it)",
                    dst.display()
                )));
            }
            check_replaceable(&parent, &name, dst)?;
        }
        remove_stale(&parent, &name);
        let prefix = format!(".{}.partial-", name_str(&name));
        let mut attempt = 0;
        let (tmp_name, dir) = loop {
            attempt += 1;
            match create_staging(&parent, &parent_path, &prefix) {
                Ok(made) => break made,
                // Another packer's clean-up removed it while it was still empty: make another.
                Err(_) if attempt < 4 => continue,
                Err(e) => return Err(e),
            }
        };
        let staging = Staging {
            dst: dst.to_path_buf(),
            parent,
            name,
            tmp_name,
            dir: Some(Arc::new(dir)),
        };
        Ok(staging)
    }

    /// The staging folder the dataset is written to.
    pub(crate) fn dir(&self) -> &Arc<Dir> {
        self.dir.as_ref().expect("staging directory")
    }

    /// Write `sources.json` and `manifest.json` (each synced), then move the dataset into
    /// place. With `overwrite`, the dataset there is locked (waiting for an append that holds
    /// it), checked again, and the two swap places in one atomic step ([`Dir::exchange`]:
    /// renameat2 RENAME_EXCHANGE on Linux), so the output path always holds a complete
    /// dataset; where the system or file system cannot exchange, the old one is moved aside
    /// first. The old one is then removed.
    pub(crate) fn publish(
        mut self,
        manifest: &Manifest,
        sources: &[u8],
        overwrite: bool,
    ) -> Result<()> {
        let dir = self.dir();
        write_synced(dir, SOURCES_NAME, sources)?;
        write_synced(dir, MANIFEST_NAME, manifest.to_json().as_bytes())?;
        // The manifest now marks it as vantix-pack's.
        dir.remove_file(OsStr::new(STAGING_MARKER))
            .map_err(|e| Error::io(dir.show(STAGING_MARKER), e))?;
        dir.sync()?;
        let (parent, name, tmp) = (&self.parent, self.name.as_os_str(), self.tmp_name.as_str());
        let mut warned = false;
        for _ in 0..64 {
            if !exists(parent, name).map_err(|e| Error::io(&self.dst, e))? {
                match parent.rename_dir_noreplace(tmp, name) {
                    Ok(true) => return self.published(),
                    Ok(false) => continue, // appeared meanwhile: look again
                    Err(e) => return Err(Error::io(&self.dst, e)),
                }
            }
            if !overwrite {
                return Err(Error::invalid(format!(
                    "{}: appeared while writing; not replaced",
                    self.dst.display()
                )));
            }
            check_replaceable(parent, name, &self.dst)?;
            let old = parent
                .open_child(name)
                .map_err(|e| Error::io(&self.dst, e))?;
            if let Ok(false) = old.try_lock() {
                if !warned {
                    eprintln!(
                        "vantix-pack: {}: waiting for the writer that holds its lock (an append?)",
                        self.dst.display()
                    );
                    warned = true;
                }
                let _ = old.lock();
            }
            if !old.is_at(parent, name) {
                continue; // replaced while we waited: look again
            }
            // Checked again under the lock: the append it waited for may have changed it.
            check_replaceable(parent, name, &self.dst)?;
            match parent.exchange(tmp, name) {
                Ok(true) => {
                    // `tmp` now names the old dataset, still locked by `old`.
                    self.dir = None;
                    if !remove_vantix_dir(parent, OsStr::new(tmp), &old) {
                        kept_warning(&parent.show(tmp));
                    }
                    return self.published();
                }
                // No atomic exchange (not Linux, or a file system without it): move the old one
                // aside, then the new one in. Each rename is atomic, so a reader of the path
                // sees the old dataset, for an instant nothing, then the new one: never a part
                // of either. The old one stays locked by `old` throughout (an append waits),
                // and a dataset that another writer renames into the gap makes the second
                // rename fail (a directory is never replaced unless empty), so it is kept.
                Ok(false) => {
                    let aside = format!(
                        ".{}.old-{}",
                        name_str(name),
                        &tmp[tmp.len() - RANDOM_CHARS..]
                    );
                    rfs::renameat(parent, name, parent, aside.as_str())
                        .map_err(|e| Error::io(&self.dst, io(e)))?;
                    rfs::renameat(parent, tmp, parent, name)
                        .map_err(|e| Error::io(&self.dst, io(e)))?;
                    self.dir = None;
                    if !remove_vantix_dir(parent, OsStr::new(&aside), &old) {
                        kept_warning(&parent.show(&aside));
                    }
                    return self.published();
                }
                Err(e) => return Err(Error::io(&self.dst, e)),
            }
        }
        Err(Error::invalid(format!(
            "{}: kept changing while vantix-pack tried to replace it",
            self.dst.display()
        )))
    }

    fn published(mut self) -> Result<()> {
        self.dir = None;
        self.parent.sync()
    }
}

fn kept_warning(path: &Path) {
    eprintln!(
        "vantix-pack: kept {}: the replaced dataset held files vantix-pack did not write; \
         they are there",
        path.display()
    );
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            remove_vantix_dir(&self.parent, OsStr::new(&self.tmp_name), &dir);
        }
    }
}

/// A write error names a file of the (now removed) temporary directory: say so.
pub(crate) fn explain_partial_error(e: Error, dst: &Path) -> Error {
    match e {
        Error::Io { path, source } if path.contains(".partial-") => Error::Io {
            path: dst.display().to_string(),
            source: std::io::Error::new(
                source.kind(),
                format!(
                    "cannot write the dataset: {source} (writing {path}); the partial output \
                     was removed and nothing was written at the output path"
                ),
            ),
        },
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_kept_clear_of() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("a")).unwrap();
        let e = |dst: &Path| {
            check_clear_of_inputs(dst, &[Input::Source(&src)])
                .unwrap_err()
                .to_string()
        };
        assert!(e(&src).contains("is the source tree"), "{}", e(&src));
        assert!(e(t.path()).contains("contains the source tree"));
        assert!(e(&src.join("out.vtx")).contains("lies inside the source tree"));
        assert!(e(&src.join("a/../x.vtx")).contains("lies inside"));
        check_clear_of_inputs(&t.path().join("out.vtx"), &[Input::Source(&src)]).unwrap();
    }

    #[test]
    fn a_live_staging_folder_is_left_alone_and_a_dead_one_removed() {
        let t = tempfile::tempdir().unwrap();
        let parent = Dir::open(t.path()).unwrap();
        let live = Staging::begin(&t.path().join("x.vtx"), false, &[]).unwrap();
        std::fs::write(live.dir().path().join("shard-00000.vxs.data"), b"x").unwrap();
        // Another packer of the same output, in this process (same PID): the live one stays.
        let other = Staging::begin(&t.path().join("x.vtx"), false, &[]).unwrap();
        assert!(live.dir().path().join("shard-00000.vxs.data").exists());
        // A dead one (marker, no lock) goes; an unmarked one, and a user's file, stay.
        let dead = t.path().join(".x.vtx.partial-dead");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(STAGING_MARKER), b"").unwrap();
        std::fs::write(dead.join("shard-00001.vxs"), b"x").unwrap();
        let unmarked = t.path().join(".x.vtx.partial-unmarked");
        std::fs::create_dir(&unmarked).unwrap();
        std::fs::write(unmarked.join("notes.txt"), b"mine").unwrap();
        let empty = t.path().join(".x.vtx.partial-empty");
        std::fs::create_dir(&empty).unwrap();
        let mixed = t.path().join(".x.vtx.old-mixed");
        std::fs::create_dir(&mixed).unwrap();
        std::fs::write(mixed.join(STAGING_MARKER), b"").unwrap();
        std::fs::write(mixed.join("thesis.tex"), b"mine").unwrap();
        remove_stale(&parent, OsStr::new("x.vtx"));
        assert!(!dead.exists());
        assert!(unmarked.join("notes.txt").exists());
        assert!(!empty.exists()); // nothing in it to lose
        assert_eq!(std::fs::read(mixed.join("thesis.tex")).unwrap(), b"mine");
        assert!(live.dir().path().exists() && other.dir().path().exists());
        let (a, b) = (
            live.dir().path().to_path_buf(),
            other.dir().path().to_path_buf(),
        );
        drop(live);
        drop(other);
        assert!(!a.exists() && !b.exists());
    }
}
