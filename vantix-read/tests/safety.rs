//! The reader's promise around its core path (issue 14): labels and tables that cannot fault,
//! change detection that tells content from metadata, no descriptor per shard, record sizes
//! bounded by the files, verification that decompresses, the dataset identity, and output
//! sizes bounded with an error that names the option.

use std::path::Path;

use vantix_read::format::{ShardHeader, MANIFEST_NAME};
use vantix_read::testing::{tiny_dataset, TinyDataset};
use vantix_read::{Codec, Dataset, Error, Filter, Manifest, Transform, Verify};

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vantix-safety-")
        .tempdir()
        .unwrap()
}

fn zstd() -> Codec {
    Codec::Zstd {
        level: 3,
        filter: Filter::None,
    }
}

fn written(t: &TinyDataset) -> tempfile::TempDir {
    let dir = scratch();
    t.write_to(dir.path()).unwrap();
    dir
}

/// Descriptors of this process open on files inside `dir` (counting only those: the other
/// tests of this binary open and close files in parallel threads).
fn fds_into(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Rewrite every shard header and the manifest for another geometry (the frames, tables and
/// CRCs stay those of the 5x4x3 records), with the manifest's checksums made to match, as a
/// hand-made dataset would have them.
fn relabel_geometry(dir: &Path, t: &TinyDataset, width: u32, height: u32, channels: u32) {
    let mut manifest = Manifest::parse(&t.files[0].1, "m").unwrap();
    manifest.geometry.width = width;
    manifest.geometry.height = height;
    manifest.geometry.channels = channels;
    manifest.channel_order = match channels {
        1 => "L",
        3 => "RGB",
        _ => "RGBA",
    }
    .into();
    for (k, (name, bytes)) in t.files[1..].iter().enumerate() {
        let mut bytes = bytes.clone();
        let mut h = ShardHeader::decode(&bytes, bytes.len() as u64, name).unwrap();
        h.geometry = manifest.geometry;
        bytes[..128].copy_from_slice(&h.encode());
        manifest.shards[k].xxh3 = vantix_read::format::xxh3_hex(&bytes);
        std::fs::write(dir.join(name), &bytes).unwrap();
    }
    std::fs::write(dir.join(MANIFEST_NAME), manifest.to_json()).unwrap();
}

#[test]
fn a_small_file_cannot_declare_huge_zstd_records() {
    // 65536 x 65536 x 4 = 16 GiB per record, in frames of a few dozen bytes: before, this opened
    // and verified, and the first read asked for 16 GiB (an abort when the allocation failed).
    let t = tiny_dataset(zstd());
    let dir = written(&t);
    relabel_geometry(dir.path(), &t, 65536, 65536, 4);
    let size: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let e = Dataset::open(dir.path())
        .err()
        .expect("a dataset of 16 GiB records in a few KB opened");
    println!("{size}-byte dataset declaring 65536x65536x4 zstd records: {e}");
    assert!(
        matches!(e, Error::Corrupt { .. }) && e.to_string().contains("cannot hold a record"),
        "{e}"
    );
    assert!(e.to_string().contains("shard-00000.vxs"), "{e}");
}

#[test]
fn verify_decompresses_every_zstd_frame_to_the_record_size() {
    // The frames hold 60-byte records but the dataset says 120 (10x4x3): the checksums match
    // (they cover the stored bytes), so only decompression can tell.
    let t = tiny_dataset(zstd());
    let dir = written(&t);
    relabel_geometry(dir.path(), &t, 10, 4, 3);
    let ds = Dataset::open(dir.path()).expect("opens: the frames are large enough");
    let e = ds
        .verify()
        .expect_err("verify passed frames of the wrong size");
    println!("{e}");
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("decompresses to 60 bytes"), "{e}");
    // Reading one is an error too (it always was), never wrong pixels.
    let mut buf = vec![0u8; ds.record_bytes()];
    assert!(ds.read_into(0, &mut buf).is_err());
    // A valid zstd dataset still verifies.
    let good = written(&t);
    Dataset::open(good.path()).unwrap().verify().unwrap();
}

#[test]
fn no_descriptor_is_held_per_shard() {
    let t = tiny_dataset(Codec::Raw);
    let dir = written(&t);
    let ds = Dataset::open(dir.path()).unwrap();
    let held = fds_into(dir.path());
    println!(
        "descriptors held by an open dataset of {} shards: {held}",
        ds.shards().len()
    );
    assert_eq!(held, 0);
    ds.check_before_read(&[0, 6], Verify::Shard).unwrap();
    assert_eq!(fds_into(dir.path()), 0);
}

#[test]
fn labels_are_copied_at_open() {
    let t = tiny_dataset(zstd());
    let dir = written(&t);
    let ds = Dataset::open(dir.path()).unwrap();
    assert_eq!(ds.labels(), &t.labels[..]);
    // The shard is cut to its header: labels and tables come from the copy, pixels are refused.
    let shard = dir.path().join("shard-00000.vxs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(128)
        .unwrap();
    assert_eq!(ds.labels(), &t.labels[..]);
    assert_eq!(ds.label(3).unwrap(), t.labels[3]);
    let e = ds.check_before_read(&[0], Verify::None).unwrap_err();
    assert!(e.to_string().contains("it is now 128 bytes"), "{e}");
    // `will_need` reads the offsets table (the copy) and only advises the kernel.
    ds.will_need(&[0, 1, 2, 3]);
}

fn set_mtime(path: &Path, secs: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
        0
    );
}

#[test]
fn metadata_changes_are_not_content_changes() {
    use std::os::unix::fs::PermissionsExt;
    let t = tiny_dataset(Codec::Raw);
    let dir = written(&t);
    let ds = Dataset::open(dir.path()).unwrap();
    let all: Vec<u64> = (0..7).collect();
    let shard = dir.path().join("shard-00000.vxs");
    // chmod, a hard link (cp -al, rsync --link-dest): only the change time moves.
    std::fs::set_permissions(&shard, std::fs::Permissions::from_mode(0o444)).unwrap();
    ds.check_before_read(&all, Verify::None).unwrap();
    let backup = scratch();
    std::fs::hard_link(&shard, backup.path().join("link.vxs")).unwrap();
    ds.check_before_read(&all, Verify::None).unwrap();
    // An extended attribute, where the file system has them.
    let c = std::ffi::CString::new(shard.as_os_str().as_encoded_bytes()).unwrap();
    let xattr = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"user.vantix-test".as_ptr(),
            b"1".as_ptr().cast(),
            1,
            0,
        )
    };
    println!(
        "setxattr: {}",
        if xattr == 0 { "set" } else { "not supported" }
    );
    ds.check_before_read(&all, Verify::None).unwrap();
    // Replaced by rename with identical bytes, and by rename with other bytes: the open
    // dataset keeps the old, complete file.
    let other = dir.path().join(".replacement");
    std::fs::write(&other, &t.files[1].1).unwrap();
    std::fs::rename(&other, &shard).unwrap();
    ds.check_before_read(&all, Verify::Shard).unwrap();
    let mut changed = t.files[1].1.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(&other, &changed).unwrap();
    std::fs::rename(&other, &shard).unwrap();
    ds.check_before_read(&all, Verify::Record).unwrap();
    let mut px = vec![0u8; ds.record_bytes()];
    ds.read_into(3, &mut px).unwrap();
    assert_eq!(px, t.images[3], "the open dataset serves the old file");

    // Content changes in place are errors that say what changed.
    let ds = Dataset::open(dir.path()).unwrap();
    set_mtime(&shard, 1_000_000_000);
    let e = ds.check_before_read(&all, Verify::None).unwrap_err();
    println!("{e}");
    assert!(
        matches!(e, Error::Changed { .. }) && e.to_string().contains("modification time"),
        "{e}"
    );
    let ds = Dataset::open(dir.path()).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&shard)
        .unwrap()
        .set_len(changed.len() as u64 + 10)
        .unwrap();
    let e = ds.check_before_read(&all, Verify::None).unwrap_err();
    assert!(e.to_string().contains("bytes"), "{e}");
}

#[test]
fn the_identity_is_stored_checked_and_changes_with_the_content() {
    let t = tiny_dataset(Codec::Raw);
    let text = String::from_utf8(t.files[0].1.clone()).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&text).unwrap();
    let dir = written(&t);
    let ds = Dataset::open(dir.path()).unwrap();
    assert_eq!(stored["identity"], ds.identity());
    assert_eq!(ds.identity().len(), 32);
    assert_eq!(ds.identity(), ds.manifest().identity());
    // The informational fields are not part of it.
    let mut m = ds.manifest().clone();
    m.pack.source = "/elsewhere".into();
    assert_eq!(m.identity(), ds.identity());
    // A class renamed by hand: the stored identity no longer matches.
    let edited = text.replace("\"dog\"", "\"wolf\"");
    std::fs::write(dir.path().join(MANIFEST_NAME), &edited).unwrap();
    let e = Dataset::open(dir.path()).err().expect("an edited manifest");
    assert!(e.to_string().contains("identity"), "{e}");
    // Without the field (a dataset packed before it existed), it is computed at open.
    let mut v: serde_json::Value = serde_json::from_str(&edited).unwrap();
    v.as_object_mut().unwrap().remove("identity");
    std::fs::write(dir.path().join(MANIFEST_NAME), v.to_string()).unwrap();
    let old = Dataset::open(dir.path()).unwrap();
    assert_ne!(old.identity(), ds.identity());
    assert_eq!(old.identity(), old.manifest().identity());
    // Another content (another shard checksum) has another identity.
    let mut m = ds.manifest().clone();
    m.shards[1].xxh3 = "0000000000000000".into();
    assert_ne!(m.identity(), ds.identity());
}

#[test]
fn output_sizes_are_bounded_with_an_error_naming_the_option() {
    let center = Transform {
        center_crop: Some((65536, 65536)),
        ..Transform::default()
    };
    let e = center
        .prepare(224, 224, 3)
        .err()
        .expect("a 12 GiB output image");
    println!("{e}");
    assert!(e.to_string().contains("center_crop=(65536, 65536)"), "{e}");
    let rrc = Transform {
        random_resized_crop: Some((4096, 4096)),
        ..Transform::default()
    };
    let p = rrc.prepare(224, 224, 3).unwrap();
    let e = p.check_batch_memory(256, 5).expect_err("12 GiB batches");
    println!("{e}");
    assert!(
        e.to_string().contains("random_resized_crop=(4096, 4096)")
            && e.to_string().contains("batch_size=256"),
        "{e}"
    );
    p.check_batch_memory(1, 5).unwrap();
    // Float output counts its element size.
    let float = Transform {
        center_crop: Some((16384, 16384)),
        dtype: vantix_read::DType::Float32,
        ..Transform::default()
    };
    assert!(float.prepare(224, 224, 4).is_err());
}
