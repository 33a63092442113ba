//! File and class names as the file system's bytes.
//!
//! Linux names are bytes, not text: `caf\xe9.png` (Latin-1) is a valid name that is not
//! UTF-8. Vantix compares, sorts and labels by those bytes, never by a lossy conversion, and
//! writes them into JSON losslessly (docs/FORMAT.md, "Names that are not UTF-8"):
//! - in `sources.json`, an entry is the path as a JSON string when it is UTF-8, else the object
//!   `{"hex": "<the path's bytes in lower-case hex>"}`;
//! - in the manifest, a name keeps its string field, holding a readable form ([`display`]:
//!   each byte that is not part of valid UTF-8 written as `\xNN`), and the exact bytes go in a
//!   sibling field (`class_bytes`, `skipped[].path_hex`) in hex.

use serde_json::Value;
use std::io::Read;
use vantix_read::codec::SOURCES_NAME;
use vantix_read::{Error, Result};

use crate::outdir::Dir;

/// A readable, distinct form of `bytes`: valid UTF-8 as it is, every other byte as `\xNN`
/// (Python's `backslashreplace`).
pub fn display(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `bytes` in lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a lower-case (or upper-case) hex string; `None` if it is not one.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The hex of `bytes` when they are not UTF-8 (the manifest's exact-bytes fields).
pub fn hex_if_not_utf8(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).is_err().then(|| hex(bytes))
}

/// One `sources.json` entry for a path of `bytes`.
pub fn source_entry(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => serde_json::json!({ "hex": hex(bytes) }),
    }
}

/// The path bytes of one `sources.json` entry.
pub fn entry_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Object(o) if o.len() == 1 => unhex(o.get("hex")?.as_str()?),
        _ => None,
    }
}

/// `sources.json` bytes for `paths`.
pub fn sources_json(paths: &[Vec<u8>]) -> Vec<u8> {
    let v: Vec<Value> = paths.iter().map(|p| source_entry(p)).collect();
    serde_json::to_vec(&v).expect("a list of names serialises")
}

/// The first `num_samples` entries of the `sources.json` in `dir` (entries past them belong
/// to an append that did not commit), as path bytes. `why` says, in a read error, what needs
/// the list.
pub(crate) fn read_sources(dir: &Dir, num_samples: u64, why: &str) -> Result<Vec<Vec<u8>>> {
    let path = dir.show(SOURCES_NAME);
    let mut bytes = Vec::new();
    dir.open_file(SOURCES_NAME)
        .and_then(|mut f| f.read_to_end(&mut bytes).map_err(|e| Error::io(&path, e)))
        .map_err(|e| match e {
            // Still an I/O error (with its kind), now saying what needs the file.
            Error::Io { path, source } => {
                let msg = format!("cannot read it ({source}); {why}");
                Error::Io {
                    path,
                    source: std::io::Error::new(source.kind(), msg),
                }
            }
            e => e,
        })?;
    let corrupt = |msg: String| Error::corrupt(path.display().to_string(), msg);
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(format!("not a JSON list of file names: {e}")))?;
    if (entries.len() as u64) < num_samples {
        return Err(corrupt(format!(
            "lists {} files but the dataset holds {num_samples} records",
            entries.len()
        )));
    }
    entries[..num_samples as usize]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            entry_bytes(v).ok_or_else(|| {
                corrupt(format!(
                    "entry {i} is neither a string nor {{\"hex\": ...}}: {v}"
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_stay_distinct() {
        for name in [
            &b"cat/1.png"[..],
            b"caf\xe9.png",
            b"caf\xe8.png",
            b"r\xc3\xa9d/x.jpg",
        ] {
            assert_eq!(entry_bytes(&source_entry(name)).unwrap(), name);
        }
        assert_eq!(display(b"r\xe9d"), "r\\xe9d");
        assert_ne!(display(b"r\xe9d"), display(b"r\xe8d"));
        assert_eq!(display("réd".as_bytes()), "réd");
        assert_eq!(
            source_entry(b"caf\xe9"),
            serde_json::json!({"hex": "636166e9"})
        );
        assert_eq!(hex_if_not_utf8(b"ok"), None);
        assert_eq!(unhex("zz"), None);
    }
}
