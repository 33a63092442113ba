//! Adding images to an existing dataset (`vantix-pack append SRC -o DATASET`).
//!
//! The images of `SRC` whose relative path is not yet in the dataset (neither packed, per
//! `sources.json`, nor skipped, per the manifest) are packed with the dataset's own settings
//! into new shard files next to the old ones; then `sources.json` and `manifest.json` are
//! replaced (temporary file, fsync, rename; the manifest last). Old shards are never opened
//! for writing, so old records keep their indices and bytes, and a reader that has the dataset
//! open keeps reading the old version undisturbed.
//!
//! The manifest rename is the commit point: a crash before it leaves the old dataset valid
//! (stray new shard files are not listed by the old manifest, so readers ignore them, and the
//! next append removes them). `sources.json` is replaced first; only its first `num_samples`
//! entries count, so a crash between the two renames is harmless too. Two appends to one
//! dataset at once are refused (an exclusive `flock` on the dataset directory, held by the
//! writer only: readers take no lock).

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

use vantix_read::format::{AppendInfo, Geometry, Manifest, MANIFEST_NAME};
use vantix_read::{Dataset, Error, Result};

use crate::imaging::{Interpolation, ResizeMode, ResizeSpec, DEFAULT_MAX_PIXELS};
use crate::pack::{
    pack_files, read_sources, report, source_list_hash, sync_dir, write_synced, Interrupt,
    PackOptions, PackReport, DEFAULT_SHARD_SIZE, SOURCES_NAME,
};
use crate::walk::{scan, SourceFile};
use crate::writer::ShardWriter;

/// `append`'s options. Geometry, resize, interpolation, codec and filter are the dataset's own.
#[derive(Clone, Debug)]
pub struct AppendOptions {
    /// Target size of one new shard's data, in bytes.
    pub shard_size: u64,
    /// Worker threads (`None`: all cores).
    pub jobs: Option<usize>,
    /// Fail on the first unreadable file instead of skipping it.
    pub strict: bool,
    /// Accept class folders that are not classes of the dataset: they are added at the end of
    /// the class list (labels of existing records never change).
    pub new_classes: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Print each skipped file to stderr.
    pub report_skipped: bool,
    /// Asked between chunks of images; see [`PackOptions::interrupt`].
    pub interrupt: Option<Interrupt>,
}

impl Default for AppendOptions {
    fn default() -> Self {
        AppendOptions {
            shard_size: DEFAULT_SHARD_SIZE,
            jobs: None,
            strict: false,
            new_classes: false,
            progress: false,
            report_skipped: true,
            interrupt: None,
        }
    }
}

/// An exclusive `flock` on the dataset directory for as long as it is held.
struct DirLock(#[allow(dead_code)] File);

fn lock_dir(dir: &Path) -> Result<DirLock> {
    let f = File::open(dir).map_err(|e| Error::io(dir, e))?;
    // SAFETY: a valid open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(Error::invalid(format!(
                "{}: another `vantix-pack append` is adding to this dataset; wait for it to finish",
                dir.display()
            )));
        }
        // A file system without flock (some network file systems): go on without the lock.
    }
    Ok(DirLock(f))
}

/// A shard file (or its scratch file) as `ShardWriter` names them.
fn is_shard_file(name: &str) -> bool {
    name.starts_with("shard-") && (name.ends_with(".vxs") || name.ends_with(".vxs.data"))
}

fn temp_name(name: &str) -> String {
    format!(".{name}.tmp-{}", std::process::id())
}

/// Remove what an interrupted append left in `dir`: shard files the manifest does not list and
/// temporary manifest or source lists.
fn remove_strays(dir: &Path, manifest: &Manifest) {
    let listed: HashSet<&str> = manifest.shards.iter().map(|s| s.file.as_str()).collect();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stray = (is_shard_file(&name) && !listed.contains(name.as_str()))
            || name.starts_with(&format!(".{MANIFEST_NAME}.tmp-"))
            || name.starts_with(&format!(".{SOURCES_NAME}.tmp-"));
        if stray && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Removes the new shard files unless the append was committed.
struct StrayGuard<'a> {
    dir: &'a Path,
    old: &'a Manifest,
    armed: bool,
}
impl Drop for StrayGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            remove_strays(self.dir, self.old);
        }
    }
}

/// Replace `dir/name` with `bytes` atomically: a synced temporary sibling renamed over it.
fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(temp_name(name));
    let dst = dir.join(name);
    write_synced(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e)))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// The options `pack` would need to make records like the dataset's.
fn settings_of(m: &Manifest, opts: &AppendOptions, name: &str) -> Result<PackOptions> {
    let bad = |what: &str, v: &str| {
        Error::corrupt(
            name,
            format!("pack.{what} {v:?} is not one this vantix-pack knows"),
        )
    };
    Ok(PackOptions {
        spec: ResizeSpec {
            width: m.geometry.width,
            height: m.geometry.height,
            mode: ResizeMode::parse(&m.pack.resize).ok_or_else(|| bad("resize", &m.pack.resize))?,
            interpolation: Interpolation::parse(&m.pack.interpolation)
                .ok_or_else(|| bad("interpolation", &m.pack.interpolation))?,
            pad_color: m.pack.pad_color,
            max_pixels: m.pack.max_pixels.unwrap_or(DEFAULT_MAX_PIXELS),
            exact_decode: m.pack.exact_decode,
            channels: m.geometry.channels,
            exif_orientation: m.pack.exif_orientation,
        },
        codec: m.codec,
        shard_size: opts.shard_size,
        jobs: opts.jobs,
        strict: opts.strict,
        overwrite: false,
        progress: opts.progress,
        report_skipped: opts.report_skipped,
        interrupt: opts.interrupt.clone(),
        part: None,
        // Not used: the new shards take the dataset's own dictionary, if it has one.
        zstd_dictionary: crate::writer::DictionaryMode::Off,
    })
}

/// Add the images of the ImageFolder `src` that `dataset` does not hold yet, as new shards.
///
/// New images are those whose path relative to `src` is neither among the dataset's packed
/// files (`sources.json`) nor among its skipped files; they are packed in ImageFolder order
/// after the existing records, with the dataset's geometry, resize, codec and filter. The
/// report counts what this call added. On any error the dataset is left as it was.
pub fn append(src: &Path, dataset: &Path, opts: &AppendOptions) -> Result<PackReport> {
    let start = Instant::now();
    if opts.jobs == Some(0) {
        return Err(Error::invalid("jobs must be at least 1"));
    }
    if !dataset.is_dir() {
        return Err(Error::invalid(format!(
            "{}: does not exist or is not a dataset directory (append adds to a dataset made by \
             vantix-pack; make one with `vantix-pack SRC --size N -o {}`)",
            dataset.display(),
            dataset.display()
        )));
    }
    let _lock = lock_dir(dataset)?;
    // Opening validates the dataset as it is: an append never builds on a damaged one.
    let opened = Dataset::open(dataset)?;
    let manifest = opened.manifest().clone();
    // New shards carry the dataset's own zstd dictionary (if it has one), so the whole dataset
    // keeps one dictionary and one format version.
    let dictionary = opened
        .shards()
        .iter()
        .find_map(|s| s.dictionary())
        .map(<[u8]>::to_vec);
    drop(opened);
    let mname = dataset.join(MANIFEST_NAME).display().to_string();
    if let Some(p) = &manifest.part {
        return Err(Error::invalid(format!(
            "{}: is part {}/{} of a pack; merge the parts (vantix-pack merge) and append to the \
             merged dataset",
            dataset.display(),
            p.index,
            p.count
        )));
    }
    let pack_opts = settings_of(&manifest, opts, &mname)?;
    remove_strays(dataset, &manifest);
    let mut sources = read_sources(
        dataset,
        manifest.num_samples,
        "append needs the list of packed files to tell new images from packed ones",
    )?;

    let folder = scan(src)?;
    let mut classes = manifest.classes.clone();
    let mut new_classes = Vec::new();
    let label_of: Vec<u32> = folder
        .classes
        .iter()
        .map(|c| match classes.iter().position(|k| k == c) {
            Some(i) => i as u32,
            None => {
                new_classes.push(c.clone());
                (manifest.classes.len() + new_classes.len() - 1) as u32
            }
        })
        .collect();
    if !new_classes.is_empty() {
        if !opts.new_classes {
            return Err(Error::invalid(format!(
                "{}: class folder(s) {} are not classes of {} (classes: {}); pass --new-classes \
                 (new_classes=True) to add them at the end of the class list: existing labels \
                 never change, so a new class gets the next index even where ImageFolder's \
                 sorted order would put it elsewhere",
                src.display(),
                new_classes.join(", "),
                dataset.display(),
                short_list(&manifest.classes)
            )));
        }
        classes.extend(new_classes.iter().cloned());
    }
    let known: HashSet<&str> = sources
        .iter()
        .map(String::as_str)
        .chain(manifest.skipped.iter().map(|s| s.path.as_str()))
        .collect();
    let files: Vec<SourceFile> = folder
        .files
        .iter()
        .filter(|f| !known.contains(f.rel.to_string_lossy().as_ref()))
        .map(|f| SourceFile {
            rel: f.rel.clone(),
            label: label_of[f.label as usize],
        })
        .collect();
    drop(known);
    if files.is_empty() {
        return Ok(report(
            dataset,
            manifest.classes.clone(),
            0,
            Vec::new(),
            Vec::new(),
            start,
        ));
    }

    let geometry = Geometry {
        width: manifest.geometry.width,
        height: manifest.geometry.height,
        channels: manifest.geometry.channels,
    };
    let next_shard = manifest
        .shards
        .iter()
        .filter_map(|s| {
            s.file
                .strip_prefix("shard-")?
                .strip_suffix(".vxs")?
                .parse::<usize>()
                .ok()
        })
        .map(|k| k + 1)
        .max()
        .unwrap_or(0)
        .max(manifest.shards.len());
    let mut guard = StrayGuard {
        dir: dataset,
        old: &manifest,
        armed: true,
    };
    let mut writer = ShardWriter::new(dataset, geometry, manifest.codec, opts.shard_size)
        .starting_at(next_shard, manifest.num_samples);
    if let Some(dictionary) = dictionary {
        writer = writer.with_trained_dictionary(dictionary)?;
    }
    let (packed, skipped) = pack_files(&folder.root, &files, &pack_opts, &mut writer, &|| {
        format!(
            "appending to {} stopped; the dataset is unchanged",
            dataset.display()
        )
    })?;
    let (shards, version) = writer.finish_with_version()?;

    let added = packed.len() as u64;
    let mut new = manifest.clone();
    new.version = new.version.max(version);
    new.classes = classes.clone();
    new.num_samples += added;
    new.shards.extend(shards.iter().cloned());
    new.skipped.extend(skipped.iter().cloned());
    new.appends.push(AppendInfo {
        source: std::fs::canonicalize(src)
            .unwrap_or_else(|_| src.to_path_buf())
            .display()
            .to_string(),
        first_index: manifest.num_samples,
        num_samples: added,
        source_files: files.len() as u64,
        source_list_xxh3: source_list_hash(&files),
        new_classes,
        vantix_version: env!("CARGO_PKG_VERSION").into(),
    });
    sources.extend(packed);
    replace_file(
        dataset,
        SOURCES_NAME,
        serde_json::to_string(&sources).unwrap().as_bytes(),
    )?;
    // The commit point.
    replace_file(dataset, MANIFEST_NAME, new.to_json().as_bytes())?;
    guard.armed = false;
    sync_dir(dataset)?;
    Ok(report(dataset, classes, added, skipped, shards, start))
}

fn short_list(names: &[String]) -> String {
    if names.len() <= 8 {
        names.join(", ")
    } else {
        format!("{}, ... ({} in all)", names[..8].join(", "), names.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::tests::folder;
    use crate::pack::pack;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn small(root: &Path, class: &str, names: std::ops::Range<u32>) {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in names {
            image::RgbImage::from_fn(10 + i, 12, |x, y| {
                image::Rgb([(x * 7 % 256) as u8, y as u8, (i % 256) as u8])
            })
            .save(root.join(class).join(format!("new{i}.png")))
            .unwrap();
        }
    }

    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                let m = e.metadata().unwrap();
                (
                    e.path(),
                    std::fs::read(e.path()).unwrap(),
                    m.modified().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn append_keeps_old_records_and_adds_new_ones() {
        let t = tempfile::tempdir().unwrap();
        let src = folder(&t.path().join("src"));
        let ds = t.path().join("ds.vtx");
        let mut o = PackOptions::default();
        (o.spec.width, o.spec.height, o.shard_size, o.report_skipped) = (8, 6, 200, false);
        pack(&src, &ds, &o).unwrap();
        let before = snapshot(&ds);
        let old = Dataset::open(&ds).unwrap();
        let old_records: Vec<_> = (0..old.len())
            .map(|i| {
                (
                    old.with_record(i, |b| b.to_vec()).unwrap(),
                    old.label(i).unwrap(),
                )
            })
            .collect();
        drop(old);

        // Nothing new: nothing changes.
        let quiet = AppendOptions {
            report_skipped: false,
            shard_size: 200,
            ..AppendOptions::default()
        };
        assert_eq!(append(&src, &ds, &quiet).unwrap().num_samples, 0);
        assert_eq!(snapshot(&ds), before);

        small(&src, "bee", 0..3);
        small(&src, "ant", 3..4);
        small(&src, "aardvark", 4..6);
        let e = append(&src, &ds, &quiet).unwrap_err().to_string();
        assert!(e.contains("aardvark") && e.contains("--new-classes"), "{e}");
        assert_eq!(snapshot(&ds), before);

        // Interrupted after some new shards were written: the dataset is as it was.
        let calls = Arc::new(AtomicUsize::new(0));
        let stop = {
            let calls = Arc::clone(&calls);
            Interrupt(Arc::new(move || calls.fetch_add(1, Ordering::SeqCst) >= 1))
        };
        let many = AppendOptions {
            jobs: Some(1),
            new_classes: true,
            interrupt: Some(stop),
            shard_size: 1,
            ..quiet.clone()
        };
        small(&src, "cat", 100..170); // more than one chunk of 64
        let e = append(&src, &ds, &many).unwrap_err();
        assert!(matches!(e, Error::Interrupted(_)), "{e}");
        assert_eq!(snapshot(&ds), before);
        std::fs::remove_dir_all(src.join("cat")).unwrap();
        folder(&t.path().join("src")); // restores cat/ (and rewrites identical old files)

        // A crash before the commit left stray files: the next append removes them.
        std::fs::write(ds.join("shard-00077.vxs"), b"half a shard").unwrap();
        std::fs::write(ds.join(".manifest.json.tmp-1"), b"{").unwrap();
        let r = append(
            &src,
            &ds,
            &AppendOptions {
                new_classes: true,
                ..quiet.clone()
            },
        )
        .unwrap();
        assert_eq!(r.num_samples, 6);
        assert!(!ds.join("shard-00077.vxs").exists() && !ds.join(".manifest.json.tmp-1").exists());
        for (path, bytes, mtime) in &before {
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("shard-")
            {
                let m = std::fs::metadata(path).unwrap();
                assert_eq!(&std::fs::read(path).unwrap(), bytes);
                assert_eq!(&m.modified().unwrap(), mtime);
            }
        }
        let ds2 = Dataset::open(&ds).unwrap();
        ds2.verify().unwrap();
        assert_eq!(ds2.classes(), ["ant", "bee", "cat", "aardvark"]);
        assert_eq!(ds2.len(), old_records.len() + 6);
        for (i, rec) in old_records.iter().enumerate() {
            assert_eq!(
                &(
                    ds2.with_record(i, |b| b.to_vec()).unwrap(),
                    ds2.label(i).unwrap()
                ),
                rec
            );
        }
        // New records in ImageFolder order: aardvark (3), ant, bee x3.
        let labels: Vec<u32> = (old_records.len()..ds2.len())
            .map(|i| ds2.label(i).unwrap())
            .collect();
        assert_eq!(labels, [3, 3, 0, 1, 1, 1]);
        let m = ds2.manifest();
        assert_eq!(m.appends.len(), 1);
        assert_eq!(m.appends[0].new_classes, ["aardvark"]);
        let sources: Vec<String> =
            serde_json::from_slice(&std::fs::read(ds.join(SOURCES_NAME)).unwrap()).unwrap();
        assert_eq!(sources.len(), ds2.len());
        assert_eq!(
            &sources[old_records.len()..][..2],
            ["aardvark/new4.png", "aardvark/new5.png"]
        );
        // The unreadable file is not retried.
        assert_eq!(m.skipped.len(), 1);
    }
}
