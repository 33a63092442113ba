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
//! entries count, so a crash between the two renames is harmless too.
//!
//! The writer lock ([`crate::outdir`]): an exclusive `flock` on the dataset directory, taken
//! before anything is read, checked to be on the directory the path names, and held to the
//! end. Another append, or a `pack`/`merge --overwrite` about to replace the dataset, waits
//! for it or is refused. Every file is then written, renamed and removed through the locked
//! directory's descriptor, never by re-resolving the path, so even a dataset swapped under a
//! running append by a writer that ignores the lock is never written or cleaned by it.
//! Readers take no lock. Paths and class names are compared as the file system's bytes.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use vantix_read::codec::shard_number;
use vantix_read::format::{AppendInfo, Geometry, Manifest, MANIFEST_NAME};
use vantix_read::{Dataset, Error, Result};

use crate::imaging::{ResizeSpec, DEFAULT_MAX_PIXELS};
use crate::names;
use crate::names::read_sources;
use crate::outdir::{lock_dataset, replace_file, Dir};
use crate::pack::{
    pack_files, report, source_list_hash, Interrupt, PackOptions, PackReport,
    DEFAULT_MAX_FILE_BYTES, DEFAULT_SHARD_SIZE, SOURCES_NAME,
};
use crate::staging::{check_clear_of_inputs, is_vantix_file, Input};
use crate::walk::{scan_with, SourceFile};
use crate::writer::ShardWriter;

/// `append`'s options. Geometry, resize, interpolation, codec and filter are the dataset's own.
#[derive(Clone, Debug)]
pub struct AppendOptions {
    /// Target size of one new shard's data, in bytes.
    pub shard_size: u64,
    /// Worker threads (`None`: all cores).
    pub num_threads: Option<usize>,
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
    /// Pack truncated images instead of skipping them; see [`PackOptions::allow_truncated`].
    pub allow_truncated: bool,
    /// Accept class folders without images; see [`PackOptions::allow_empty`].
    pub allow_empty: bool,
}

impl Default for AppendOptions {
    fn default() -> Self {
        AppendOptions {
            shard_size: DEFAULT_SHARD_SIZE,
            num_threads: None,
            strict: false,
            new_classes: false,
            progress: false,
            report_skipped: true,
            interrupt: None,
            allow_truncated: false,
            allow_empty: false,
        }
    }
}

/// Remove what an interrupted append left in `dir`: shard files the manifest does not list and
/// temporary manifest or source lists (only names vantix-pack writes, only regular files).
fn remove_strays(dir: &Dir, manifest: &Manifest) {
    let listed: HashSet<&[u8]> = manifest.shards.iter().map(|s| s.file.as_bytes()).collect();
    let Ok(entries) = dir.entries() else {
        return;
    };
    for (name, t) in entries {
        let n = name.as_bytes();
        let stray = is_vantix_file(n)
            && n != MANIFEST_NAME.as_bytes()
            && n != SOURCES_NAME.as_bytes()
            && !listed.contains(n);
        if stray && t == rustix::fs::FileType::RegularFile {
            let _ = dir.remove_file(&name);
        }
    }
}

/// Removes the new shard files unless the append was committed.
struct StrayGuard<'a> {
    dir: &'a Dir,
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
            mode: m
                .pack
                .resize
                .parse()
                .map_err(|_| bad("resize", &m.pack.resize))?,
            interpolation: m
                .pack
                .interpolation
                .parse()
                .map_err(|_| bad("interpolation", &m.pack.interpolation))?,
            pad_color: m.pack.pad_color,
            max_pixels: m.pack.max_pixels.unwrap_or(DEFAULT_MAX_PIXELS),
            exact_decode: m.pack.exact_decode,
            channels: m.geometry.channels,
            exif_orientation: m.pack.exif_orientation,
        },
        codec: m.codec,
        shard_size: opts.shard_size,
        num_threads: opts.num_threads,
        strict: opts.strict,
        overwrite: false,
        progress: opts.progress,
        report_skipped: opts.report_skipped,
        interrupt: opts.interrupt.clone(),
        part: None,
        // Not used: the new shards take the dataset's own dictionary, if it has one.
        dictionary: crate::writer::DictionaryMode::Off,
        allow_truncated: opts.allow_truncated,
        allow_empty: opts.allow_empty,
        max_file_bytes: DEFAULT_MAX_FILE_BYTES,
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
    if opts.num_threads == Some(0) {
        return Err(Error::invalid("num_threads must be at least 1"));
    }
    if !dataset.is_dir() {
        return Err(Error::invalid(format!(
            "{}: does not exist or is not a dataset directory (append adds to a dataset made by \
             vantix-pack; make one with `vantix-pack SRC --size N -o {}`)",
            dataset.display(),
            dataset.display()
        )));
    }
    check_clear_of_inputs(dataset, &[Input::Source(src)])?;
    let dir = Arc::new(lock_dataset(dataset)?);
    // Opening validates the dataset as it is: an append never builds on a damaged one.
    let opened = Dataset::open(dataset)?;
    if !dir.is_at_path(dataset) {
        return Err(Error::invalid(format!(
            "{}: was replaced while vantix-pack opened it (by a writer that ignores the lock?); \
             nothing was appended",
            dataset.display()
        )));
    }
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
    remove_strays(&dir, &manifest);
    let mut sources = read_sources(
        &dir,
        manifest.num_samples,
        "append needs the list of packed files to tell new images from packed ones",
    )?;

    let folder = scan_with(src, opts.allow_empty)?;
    // Classes are matched by the file system's bytes: two names that differ only in bytes that
    // are not UTF-8 are two classes.
    let corrupt = |what: String| Error::corrupt(mname.as_str(), what);
    let known_classes: Vec<Vec<u8>> = (0..manifest.classes.len())
        .map(|i| match manifest.class_bytes.get(&(i as u32)) {
            Some(h) => {
                names::unhex(h).ok_or_else(|| corrupt(format!("class_bytes {i} is not hex: {h:?}")))
            }
            None => Ok(manifest.classes[i].as_bytes().to_vec()),
        })
        .collect::<Result<_>>()?;
    let mut classes = manifest.classes.clone();
    let mut class_bytes = manifest.class_bytes.clone();
    let mut new_classes = Vec::new();
    let label_of: Vec<u32> = folder
        .class_names
        .iter()
        .zip(&folder.classes)
        .map(
            |(raw, shown)| match known_classes.iter().position(|k| k == raw.as_bytes()) {
                Some(i) => i as u32,
                None => {
                    let label = (manifest.classes.len() + new_classes.len()) as u32;
                    if let Some(h) = names::hex_if_not_utf8(raw.as_bytes()) {
                        class_bytes.insert(label, h);
                    }
                    new_classes.push(shown.clone());
                    label
                }
            },
        )
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
    let mut known: HashSet<Vec<u8>> = sources.iter().cloned().collect();
    for s in &manifest.skipped {
        known.insert(match &s.path_hex {
            Some(h) => names::unhex(h)
                .ok_or_else(|| corrupt(format!("skipped path_hex is not hex: {h:?}")))?,
            None => s.path.as_bytes().to_vec(),
        });
    }
    let files: Vec<SourceFile> = folder
        .files
        .iter()
        .filter(|f| !known.contains(f.rel.as_os_str().as_bytes()))
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
        .filter_map(|s| shard_number(&s.file))
        .map(|k| k + 1)
        .max()
        .unwrap_or(0)
        .max(manifest.shards.len());
    let mut guard = StrayGuard {
        dir: &dir,
        old: &manifest,
        armed: true,
    };
    let mut writer = ShardWriter::new(Arc::clone(&dir), geometry, manifest.codec, opts.shard_size)
        .starting_at(next_shard, manifest.num_samples);
    if let Some(dictionary) = dictionary {
        writer = writer.with_trained_dictionary(dictionary)?;
    }
    let packed = pack_files(
        &folder.root,
        &files,
        &pack_opts,
        &mut writer,
        manifest.num_samples,
        &|| {
            format!(
                "appending to {} stopped; the dataset is unchanged",
                dataset.display()
            )
        },
    )?;
    let (shards, version) = writer.finish_with_version()?;

    let added = packed.sources.len() as u64;
    let mut new = manifest.clone();
    new.version = new.version.max(version);
    new.classes = classes.clone();
    new.class_bytes = class_bytes;
    new.num_samples += added;
    new.shards.extend(shards.iter().cloned());
    new.skipped.extend(packed.skipped.iter().cloned());
    new.truncated.extend(packed.truncated.iter().copied());
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
    sources.extend(packed.sources);
    replace_file(&dir, SOURCES_NAME, &names::sources_json(&sources))?;
    // The commit point.
    replace_file(&dir, MANIFEST_NAME, new.to_json().as_bytes())?;
    guard.armed = false;
    dir.sync()?;
    Ok(report(
        dataset,
        classes,
        added,
        packed.skipped,
        packed.truncated,
        shards,
        start,
    ))
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
            num_threads: Some(1),
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
