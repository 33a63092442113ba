//! Finding the images of an ImageFolder exactly as torchvision does.
//!
//! `torchvision.datasets.ImageFolder(root)`:
//! - classes are the sorted names of the entries of `root` that are directories (symlinks to
//!   directories included, hidden ones included);
//! - the samples of a class are found with `sorted(os.walk(class_dir, followlinks=True))`, then
//!   `sorted(fnames)` in each directory, keeping names whose lower-cased form ends with one of
//!   [`IMG_EXTENSIONS`];
//! - a class without any such file is an error, unless `allow_empty` (torchvision's
//!   `ImageFolder(root, allow_empty=True)`), which keeps it, with its index and no samples.
//!
//! Names are the file system's bytes ([`ImageFolder::class_names`], [`SourceFile::rel`]);
//! [`ImageFolder::classes`] is their readable form (see [`crate::names`]).
//!
//! Python sorts `str` by code point, which for UTF-8 is byte order, so sorting by bytes matches.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use vantix_read::{Error, Result};

/// torchvision's `IMG_EXTENSIONS`, matched case-insensitively.
pub const IMG_EXTENSIONS: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
];

/// One source image: its path relative to the ImageFolder root and its class index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Path relative to the ImageFolder root, as the file system's bytes (`class/.../name.jpg`).
    pub rel: PathBuf,
    /// Class index: the position of its class folder in [`ImageFolder::classes`].
    pub label: u32,
}

/// The classes and files of an ImageFolder, in torchvision's order.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    /// The root directory that was scanned.
    pub root: PathBuf,
    /// Class names in label order, readable form ([`crate::names::display`]).
    pub classes: Vec<String>,
    /// Class folder names in label order, exactly as the file system has them.
    pub class_names: Vec<OsString>,
    /// Every image, class by class in label order, each class's files in torchvision's `os.walk`
    /// order.
    pub files: Vec<SourceFile>,
}

impl ImageFolder {
    /// The manifest's `class_bytes`: the exact bytes of the class names that are not UTF-8.
    pub fn class_bytes(&self) -> std::collections::BTreeMap<u32, String> {
        class_bytes(&self.class_names)
    }
}

/// The manifest's `class_bytes` for `names`.
pub fn class_bytes(names: &[OsString]) -> std::collections::BTreeMap<u32, String> {
    names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((i as u32, crate::names::hex_if_not_utf8(n.as_bytes())?)))
        .collect()
}

/// Whether `name` ends with one of [`IMG_EXTENSIONS`], ignoring ASCII case.
pub fn has_image_extension(name: &[u8]) -> bool {
    IMG_EXTENSIONS.iter().any(|ext| {
        let e = ext.as_bytes();
        name.len() >= e.len() && name[name.len() - e.len()..].eq_ignore_ascii_case(e)
    })
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<(OsString, bool)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        // Like Python's DirEntry.is_dir(): follows symlinks; a broken link is not a directory.
        let is_dir = std::fs::metadata(entry.path())
            .map(|m| m.is_dir())
            .unwrap_or(false);
        out.push((entry.file_name(), is_dir));
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// `os.walk(top, followlinks=True)` collected as `(dir, file names)`, then sorted by dir path.
/// A directory that is its own ancestor (a symlink loop) is not entered again.
fn walk_sorted(top: &Path) -> Result<Vec<(Vec<u8>, Vec<OsString>)>> {
    let mut out = Vec::new();
    let mut ancestors = Vec::new();
    walk_into(top, &mut ancestors, &mut out)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn walk_into(
    dir: &Path,
    ancestors: &mut Vec<(u64, u64)>,
    out: &mut Vec<(Vec<u8>, Vec<OsString>)>,
) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    let id = (meta.dev(), meta.ino());
    if ancestors.contains(&id) {
        return Ok(());
    }
    ancestors.push(id);
    let entries = read_dir_sorted(dir)?;
    let files = entries
        .iter()
        .filter(|(_, d)| !d)
        .map(|(n, _)| n.clone())
        .collect();
    out.push((dir.as_os_str().as_bytes().to_vec(), files));
    for (name, is_dir) in &entries {
        if *is_dir {
            walk_into(&dir.join(name), ancestors, out)?;
        }
    }
    ancestors.pop();
    Ok(())
}

/// Scan an ImageFolder root (a class without images is an error, as torchvision's default).
pub fn scan(root: &Path) -> Result<ImageFolder> {
    scan_with(root, false)
}

/// Scan an ImageFolder root; with `allow_empty`, classes without images are kept (with their
/// index), as torchvision's `ImageFolder(root, allow_empty=True)`.
pub fn scan_with(root: &Path, allow_empty: bool) -> Result<ImageFolder> {
    if !root.is_dir() {
        let kind = match root.exists() {
            true => std::io::ErrorKind::NotADirectory,
            false => std::io::ErrorKind::NotFound,
        };
        let why = "not a directory (expected an ImageFolder: one sub-folder per class)";
        return Err(Error::io(root, std::io::Error::new(kind, why)));
    }
    let classes: Vec<OsString> = read_dir_sorted(root)?
        .into_iter()
        .filter(|(_, d)| *d)
        .map(|(n, _)| n)
        .collect();
    if classes.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no class folders found",
            root.display()
        )));
    }
    let mut files = Vec::new();
    let mut empty = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = root.join(class);
        let before = files.len();
        for (dir, names) in walk_sorted(&class_dir)? {
            let dir = PathBuf::from(OsString::from_vec(dir));
            let rel_dir = dir.strip_prefix(root).unwrap_or(&dir).to_path_buf();
            for name in names {
                if has_image_extension(name.as_bytes()) {
                    files.push(SourceFile {
                        rel: rel_dir.join(&name),
                        label: label as u32,
                    });
                }
            }
        }
        if files.len() == before {
            empty.push(crate::names::display(class.as_bytes()));
        }
    }
    if !empty.is_empty() && !allow_empty {
        return Err(Error::invalid(format!(
            "{}: found no valid file for the classes {} (supported extensions: {}); pass \
             --allow-empty (allow_empty=True, as torchvision's ImageFolder(root, \
             allow_empty=True)) to keep empty classes, with their index and no images",
            root.display(),
            empty.join(", "),
            IMG_EXTENSIONS.join(", ")
        )));
    }
    Ok(ImageFolder {
        root: root.to_path_buf(),
        classes: classes
            .iter()
            .map(|c| crate::names::display(c.as_bytes()))
            .collect(),
        class_names: classes,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_case_insensitive() {
        assert!(has_image_extension(b"a.JPG"));
        assert!(has_image_extension(b".hidden.jpeg"));
        assert!(has_image_extension(b"x.TiFf"));
        assert!(!has_image_extension(b"a.gif"));
        assert!(!has_image_extension(b"jpg"));
        assert!(!has_image_extension(b"notes.txt"));
    }

    #[test]
    fn order_and_labels() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for p in [
            "b/z.png",
            "b/sub/a.png",
            "b/sub b/c.png",
            "a/y.JPG",
            "a/x.txt",
            "c/.h.png",
        ] {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let f = scan(r).unwrap();
        assert_eq!(f.classes, ["a", "b", "c"]);
        let got: Vec<_> = f
            .files
            .iter()
            .map(|s| (s.rel.to_str().unwrap(), s.label))
            .collect();
        // os.walk roots sorted: "b" < "b/sub" < "b/sub b" ("/" < " " is false: ' ' is 0x20)
        assert_eq!(
            got,
            [
                ("a/y.JPG", 0),
                ("b/z.png", 1),
                ("b/sub/a.png", 1),
                ("b/sub b/c.png", 1),
                ("c/.h.png", 2)
            ]
        );
    }

    #[test]
    fn empty_classes_are_an_error_that_names_them_unless_allowed() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for p in ["a/1.png", "c/2.png", "b/notes.txt"] {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        std::fs::create_dir(r.join("d")).unwrap();
        let e = scan(r).unwrap_err().to_string();
        assert!(e.contains("b, d") && e.contains("--allow-empty"), "{e}");
        let f = scan_with(r, true).unwrap();
        assert_eq!(f.classes, ["a", "b", "c", "d"]);
        let labels: Vec<u32> = f.files.iter().map(|s| s.label).collect();
        assert_eq!(labels, [0, 2]);
    }

    #[test]
    fn class_names_are_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let t = tempfile::tempdir().unwrap();
        for class in [&b"r\xe9d"[..], b"r\xe8d"] {
            let d = t.path().join(std::ffi::OsStr::from_bytes(class));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("x.png"), b"x").unwrap();
        }
        let f = scan(t.path()).unwrap();
        assert_eq!(f.classes, ["r\\xe8d", "r\\xe9d"]);
        assert_eq!(f.class_bytes().get(&1).map(String::as_str), Some("72e964"));
    }
}
