//! Joining the parts of a pack made on many machines (`vantix-pack --part I/N`) into one
//! dataset whose records, labels, classes, skipped list and `sources.json` are those a
//! single-machine pack of the same tree gives.
//!
//! Every part is opened and validated, the parts are checked to be the `N` parts of one pack
//! (same source list hash, same settings, every index once, contiguous slices), then their
//! shards are copied, in part order, into a new dataset: renumbered, with the global index of
//! their first record (header bytes 88..96) and the header CRC patched, and their xxh3
//! recomputed. The source shards are checked against their parts' manifests on the way, so a
//! damaged part cannot hide behind a fresh checksum. The inputs are not modified.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use vantix_read::codec::shard_name;
use vantix_read::format::{Manifest, PartInfo, ShardHeader, ShardInfo, HEADER_SIZE};
use vantix_read::{Dataset, Error, Result};
use xxhash_rust::xxh3::Xxh3;

use crate::names;
use crate::names::read_sources;
use crate::outdir::Dir;
use crate::pack::{progress_bar, report, PackReport};
use crate::staging::{explain_partial_error, Input, Staging};

/// What `merge` needs besides the parts and the output path.
#[derive(Clone, Debug, Default)]
pub struct MergeOptions {
    /// Replace an existing dataset at the output path.
    pub overwrite: bool,
    /// Draw a progress bar (bytes copied) on stderr.
    pub progress: bool,
}

struct Part {
    path: PathBuf,
    manifest: Manifest,
    info: PartInfo,
}

/// The manifest fields that must be equal in every part of one pack, as JSON: everything but
/// the per-part fields (`num_samples`, `shards`, `skipped`, `part`) and the source folder's
/// path (each machine may mount the tree elsewhere).
fn pack_identity(m: &Manifest) -> serde_json::Map<String, serde_json::Value> {
    let serde_json::Value::Object(mut v) = serde_json::to_value(m).expect("manifest serialises")
    else {
        unreachable!("a manifest is a JSON object")
    };
    // `version`: a part is written at the oldest version that describes it (a small part may
    // have too few records for a zstd dictionary); the merged dataset takes the newest.
    for key in [
        "num_samples",
        "shards",
        "skipped",
        "part",
        "version",
        "truncated",
    ] {
        v.remove(key);
    }
    if let Some(serde_json::Value::Object(p)) = v.get_mut("pack") {
        p.remove("source");
    }
    v
}

fn short(v: Option<&serde_json::Value>) -> String {
    let s = v.map_or("absent".to_string(), |v| v.to_string());
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(77).collect::<String>())
    } else {
        s
    }
}

/// Check that `parts` are the `N` parts of one pack; returns them sorted by index.
fn check_parts(mut parts: Vec<Part>) -> Result<Vec<Part>> {
    let first = &parts[0];
    let (p0, count) = (first.path.display().to_string(), first.info.count);
    let id0 = pack_identity(&first.manifest);
    for p in &parts[1..] {
        let name = p.path.display();
        if p.info.count != count {
            return Err(Error::invalid(format!(
                "{name}: is part {}/{} but {p0} is part {}/{count}: the parts come from \
                 different packs",
                p.info.index, p.info.count, first.info.index
            )));
        }
        let id = pack_identity(&p.manifest);
        let mut keys: Vec<&String> = id0.keys().chain(id.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let (a, b) = (id0.get(key), id.get(key));
            if a == b {
                continue;
            }
            let field = match (a, b) {
                (Some(serde_json::Value::Object(x)), Some(serde_json::Value::Object(y))) => {
                    let mut sub: Vec<&String> = x.keys().chain(y.keys()).collect();
                    sub.sort();
                    let k = sub.into_iter().find(|k| x.get(*k) != y.get(*k)).unwrap();
                    (format!("{key}.{k}"), short(x.get(k)), short(y.get(k)))
                }
                _ => (key.clone(), short(a), short(b)),
            };
            return Err(Error::invalid(format!(
                "{name}: is not a part of the same pack as {p0}: {} is {} there and {} here \
                 (every part must be packed from the same tree with the same settings and \
                 vantix version)",
                field.0, field.1, field.2
            )));
        }
    }
    parts.sort_by_key(|p| p.info.index);
    for w in parts.windows(2) {
        if w[0].info.index == w[1].info.index {
            return Err(Error::invalid(format!(
                "{} and {} are both part {}/{count}: give each part once",
                w[0].path.display(),
                w[1].path.display(),
                w[0].info.index
            )));
        }
    }
    let missing: Vec<String> = (0..count)
        .filter(|i| parts.binary_search_by_key(i, |p| p.info.index).is_err())
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        let shown = missing.len().min(10);
        return Err(Error::invalid(format!(
            "{} of the {count} parts {} missing: {}{} (merge needs every part of the pack)",
            missing.len(),
            if missing.len() == 1 { "is" } else { "are" },
            missing[..shown].join(", "),
            if missing.len() > shown { ", ..." } else { "" }
        )));
    }
    let total = parts[0].manifest.pack.source_files;
    let mut next = 0u64;
    for p in &parts {
        let m = &p.manifest;
        if p.info.first_source != next
            || m.num_samples + m.skipped.len() as u64 != p.info.num_sources
        {
            return Err(Error::invalid(format!(
                "{}: holds source files {}..{} ({} records, {} skipped) but the parts before \
                 it end at {next}: the parts do not fit together",
                p.path.display(),
                p.info.first_source,
                p.info.first_source + p.info.num_sources,
                m.num_samples,
                m.skipped.len()
            )));
        }
        next += p.info.num_sources;
    }
    if next != total {
        return Err(Error::invalid(format!(
            "the parts hold {next} source files but the tree has {total}: the parts do not \
             fit together"
        )));
    }
    Ok(parts)
}

/// Copy the shard `src` (described by `info` in its part's manifest) to `dst` with its first
/// record's global index set to `first_index`; checks the source's xxh3 on the way and returns
/// the new shard's description.
fn copy_shard(
    src: &Path,
    info: &ShardInfo,
    out_dir: &Dir,
    out_name: &str,
    first_index: u64,
    bar: &indicatif::ProgressBar,
) -> Result<ShardInfo> {
    let sname = src.display().to_string();
    let mut input = File::open(src).map_err(|e| Error::io(src, e))?;
    let len = input.metadata().map_err(|e| Error::io(src, e))?.len();
    let mut head = [0u8; HEADER_SIZE];
    input.read_exact(&mut head).map_err(|e| Error::io(src, e))?;
    let mut header = ShardHeader::decode(&head, len, &sname)?;
    let mut src_hash = Xxh3::new();
    src_hash.update(&head);
    header.first_index = first_index;
    let new_head = header.encode();
    let dst = &out_dir.show(out_name);
    let mut out = BufWriter::with_capacity(1 << 20, out_dir.create(out_name)?);
    let mut dst_hash = Xxh3::new();
    dst_hash.update(&new_head);
    out.write_all(&new_head).map_err(|e| Error::io(dst, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = HEADER_SIZE as u64;
    loop {
        let k = input.read(&mut buf).map_err(|e| Error::io(src, e))?;
        if k == 0 {
            break;
        }
        src_hash.update(&buf[..k]);
        dst_hash.update(&buf[..k]);
        out.write_all(&buf[..k]).map_err(|e| Error::io(dst, e))?;
        copied += k as u64;
        bar.inc(k as u64);
    }
    let got = format!("{:016x}", src_hash.digest());
    if copied != info.size_bytes || got != info.xxh3 {
        return Err(Error::Checksum {
            file: sname,
            msg: format!(
                "{copied} bytes with xxh3 {got}, the part's manifest says {} bytes with xxh3 {} \
                 (the part is damaged or changed while merging; repack it)",
                info.size_bytes, info.xxh3
            ),
        });
    }
    let file = out
        .into_inner()
        .map_err(|e| Error::io(dst, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(dst, e))?;
    Ok(ShardInfo {
        file: out_name.to_string(),
        num_records: info.num_records,
        size_bytes: copied,
        xxh3: format!("{:016x}", dst_hash.digest()),
    })
}

/// Join the datasets `parts` (all `N` parts of one `vantix-pack --part I/N` pack, in any order)
/// into a new dataset `dst`, written atomically like `pack`'s output. The parts are left as
/// they are.
pub fn merge(parts: &[PathBuf], dst: &Path, opts: &MergeOptions) -> Result<PackReport> {
    merge_atomically(parts, dst, opts).map_err(|e| explain_partial_error(e, dst))
}

fn merge_atomically(parts: &[PathBuf], dst: &Path, opts: &MergeOptions) -> Result<PackReport> {
    let start = Instant::now();
    if parts.is_empty() {
        return Err(Error::invalid("merge: no parts given"));
    }
    let mut opened = Vec::with_capacity(parts.len());
    for path in parts {
        // Opening validates every length, offset and label of the part.
        let ds = Dataset::open(path)?;
        let manifest = ds.manifest().clone();
        let info = manifest.part.clone().ok_or_else(|| {
            Error::invalid(format!(
                "{}: is not a part of a pack (it was packed without --part I/N)",
                path.display()
            ))
        })?;
        if !manifest.appends.is_empty() {
            return Err(Error::invalid(format!(
                "{}: images were appended to this part; merge the parts as packed, then append",
                path.display()
            )));
        }
        opened.push(Part {
            path: ds.root().to_path_buf(),
            manifest,
            info,
        });
    }
    let parts = check_parts(opened)?;
    let inputs: Vec<Input<'_>> = parts.iter().map(|p| Input::Part(&p.path)).collect();
    let staging = Staging::begin(dst, opts.overwrite, &inputs)?;
    let total_bytes = parts
        .iter()
        .flat_map(|p| &p.manifest.shards)
        .map(|s| s.size_bytes)
        .sum();
    let bar = progress_bar(opts.progress, total_bytes, "bytes");
    bar.set_message("merging");
    let mut shards = Vec::new();
    let mut sources = Vec::new();
    let mut skipped = Vec::new();
    let mut truncated = Vec::new();
    let mut num_samples = 0u64;
    for p in &parts {
        let dir = Dir::open(&p.path).map_err(|e| Error::io(&p.path, e))?;
        sources.extend(read_sources(
            &dir,
            p.manifest.num_samples,
            "merge joins the parts' lists of packed files",
        )?);
        truncated.extend(p.manifest.truncated.iter().map(|i| i + num_samples));
        for info in &p.manifest.shards {
            let name = shard_name(shards.len());
            shards.push(copy_shard(
                &p.path.join(&info.file),
                info,
                staging.dir(),
                &name,
                num_samples,
                &bar,
            )?);
            num_samples += info.num_records;
        }
        skipped.extend(p.manifest.skipped.iter().cloned());
    }
    bar.finish_and_clear();
    let first = &parts[0].manifest;
    let manifest = Manifest {
        version: parts
            .iter()
            .map(|p| p.manifest.version)
            .max()
            .unwrap_or(first.version),
        num_samples,
        shards: shards.clone(),
        skipped: skipped.clone(),
        part: None,
        truncated: truncated.clone(),
        ..first.clone()
    };
    staging.publish(&manifest, &names::sources_json(&sources), opts.overwrite)?;
    Ok(report(
        dst,
        first.classes.clone(),
        num_samples,
        skipped,
        truncated,
        shards,
        start,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pack::{pack, PackOptions, SOURCES_NAME};

    /// An ImageFolder with classes of 5, 1 and 4 images of varied sizes, plus one unreadable
    /// file; returns its root.
    pub(crate) fn folder(root: &Path) -> PathBuf {
        let mut k = 0u32;
        for (class, n) in [("ant", 5), ("bee", 1), ("cat", 4)] {
            std::fs::create_dir_all(root.join(class)).unwrap();
            for i in 0..n {
                k += 1;
                let img = image::RgbImage::from_fn(9 + k, 7 + 2 * k, |x, y| {
                    image::Rgb([(x * 20 + k) as u8, (y * 9) as u8, (k * 31) as u8])
                });
                img.save(root.join(class).join(format!("{i}.png"))).unwrap();
            }
        }
        std::fs::write(root.join("ant/broken.jpg"), b"not a jpeg").unwrap();
        root.to_path_buf()
    }

    fn opts(codec: vantix_read::Codec) -> PackOptions {
        let mut o = PackOptions::default();
        o.spec.width = 8;
        o.spec.height = 6;
        o.codec = codec;
        o.shard_size = 200;
        o.report_skipped = false;
        o
    }

    fn records(path: &Path) -> (Dataset, Vec<(Vec<u8>, u32)>) {
        let ds = Dataset::open(path).unwrap();
        let recs = (0..ds.len())
            .map(|i| {
                (
                    ds.with_record(i, |b| b.to_vec()).unwrap(),
                    ds.label(i).unwrap(),
                )
            })
            .collect();
        (ds, recs)
    }

    #[test]
    fn merged_parts_equal_a_single_pack() {
        let t = tempfile::tempdir().unwrap();
        let src = folder(&t.path().join("src"));
        for codec in [
            vantix_read::Codec::Raw,
            vantix_read::Codec::Zstd {
                level: 3,
                filter: vantix_read::Filter::Up,
            },
        ] {
            let whole = t.path().join("whole.vtx");
            let o = PackOptions {
                overwrite: true,
                ..opts(codec)
            };
            pack(&src, &whole, &o).unwrap();
            let (wds, want) = records(&whole);
            assert_eq!(want.len(), 10);
            // 15 parts of 11 files: some parts are empty.
            for n in [1u64, 3, 15] {
                let parts: Vec<PathBuf> = (0..n)
                    .rev()
                    .map(|i| {
                        let p = t.path().join(format!("part-{i}-of-{n}.vtx"));
                        let o = PackOptions {
                            part: Some((i, n)),
                            ..o.clone()
                        };
                        pack(&src, &p, &o).unwrap();
                        p
                    })
                    .collect();
                let out = t.path().join(format!("merged-{n}.vtx"));
                let r = merge(
                    &parts,
                    &out,
                    &MergeOptions {
                        overwrite: true,
                        progress: false,
                    },
                )
                .unwrap();
                assert_eq!(r.num_samples, 10);
                let (mds, got) = records(&out);
                assert_eq!(got, want, "records of {n} parts");
                mds.verify().unwrap();
                let (a, b) = (wds.manifest(), mds.manifest());
                assert_eq!(
                    (&a.classes, &a.skipped, &a.pack, a.num_samples, &a.part),
                    (&b.classes, &b.skipped, &b.pack, b.num_samples, &b.part)
                );
                assert_eq!(
                    std::fs::read(whole.join(SOURCES_NAME)).unwrap(),
                    std::fs::read(out.join(SOURCES_NAME)).unwrap()
                );
                // The parts are untouched and still valid.
                for p in &parts {
                    Dataset::open(p).unwrap().verify().unwrap();
                }
            }
        }
    }

    #[test]
    fn merge_refuses_parts_that_do_not_belong_together() {
        let t = tempfile::tempdir().unwrap();
        let src = folder(&t.path().join("src"));
        let part = |i: u64, n: u64, name: &str, o: PackOptions| {
            let p = t.path().join(name);
            pack(
                &src,
                &p,
                &PackOptions {
                    part: Some((i, n)),
                    ..o
                },
            )
            .unwrap();
            p
        };
        let raw = opts(vantix_read::Codec::Raw);
        let p0 = part(0, 3, "p0.vtx", raw.clone());
        let p1 = part(1, 3, "p1.vtx", raw.clone());
        let p2 = part(2, 3, "p2.vtx", raw.clone());
        let out = t.path().join("out.vtx");
        let m = |parts: &[&PathBuf]| {
            let parts: Vec<PathBuf> = parts.iter().map(|p| p.to_path_buf()).collect();
            merge(&parts, &out, &MergeOptions::default())
                .unwrap_err()
                .to_string()
        };
        assert!(m(&[&p0, &p2]).contains("1/3"), "{}", m(&[&p0, &p2]));
        let e = m(&[&p0, &p1, &p1, &p2]);
        assert!(e.contains("both part 1/3"), "{e}");
        let other = part(1, 4, "q1.vtx", raw.clone());
        let e = m(&[&p0, &other, &p2]);
        assert!(e.contains("q1.vtx") && e.contains("different packs"), "{e}");
        let mut squash = raw.clone();
        squash.spec.mode = crate::ResizeMode::Squash;
        let s1 = part(1, 3, "s1.vtx", squash);
        let e = m(&[&p0, &s1, &p2]);
        assert!(e.contains("s1.vtx") && e.contains("pack.resize"), "{e}");
        let whole = t.path().join("whole.vtx");
        pack(&src, &whole, &raw).unwrap();
        let e = m(&[&p0, &whole, &p2]);
        assert!(
            e.contains("whole.vtx") && e.contains("without --part"),
            "{e}"
        );
        assert!(!out.exists());
        // A damaged part is caught while copying, and nothing is written.
        let shard = p1.join(&Dataset::open(&p1).unwrap().manifest().shards[0].file);
        let mut bytes = std::fs::read(&shard).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&shard, bytes).unwrap();
        let e = m(&[&p0, &p1, &p2]);
        assert!(e.contains("xxh3") && e.contains("p1.vtx"), "{e}");
        assert!(!out.exists());
        let leftovers: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
