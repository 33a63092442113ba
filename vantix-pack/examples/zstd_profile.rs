//! Where the time of reading a zstd record goes, one thread, on real records:
//!
//! ```text
//! cargo run --release -p vantix-pack --example zstd_profile -- RAW.vtx [--n N] [--seconds S]
//! ```
//!
//! Takes the first `N` records (default 300) of a raw dataset, and for each zstd level and
//! prediction filter compresses them as the packer does, then times on one thread: a plain
//! copy of a record (the raw reader's work), zstd decompression alone, undoing the filter
//! alone, and `Dataset::read_into`-equivalent work (decompress into the slot, undo in place).
//! Prints the compressed size over raw and the output bytes/s of each step, which bound what a
//! zstd pack can read at per core.

use std::time::Instant;

use vantix_read::{filter, Codec, Dataset, Filter};

/// Run `f` over and over for about `seconds`; returns calls per second.
fn rate(seconds: f64, mut f: impl FnMut()) -> f64 {
    f(); // warm
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < seconds {
        f();
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut path, mut n, mut seconds) = (None, 300usize, 1.0f64);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--n" => n = args.next().and_then(|s| s.parse().ok()).expect("--n N"),
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds S")
            }
            _ => path = Some(a),
        }
    }
    let ds = Dataset::open(path.expect("usage: zstd_profile RAW.vtx [--n N] [--seconds S]"))
        .expect("open");
    assert_eq!(ds.codec(), Codec::Raw, "give a raw dataset");
    let g = ds.geometry();
    let (row, bpp) = ((g.width * g.channels) as usize, g.channels as usize);
    let rb = ds.record_bytes();
    let n = n.min(ds.len());
    let records: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut v = vec![0u8; rb];
            ds.read_into(i, &mut v).unwrap();
            v
        })
        .collect();
    let total = (n * rb) as f64;
    println!(
        "{n} records of {}x{}x{} ({rb} bytes), one thread, output MB/s (1 MB = 1e6 bytes)",
        g.height, g.width, g.channels
    );
    let mut dst = vec![0u8; rb];
    let copy = rate(seconds, || {
        for r in &records {
            dst.copy_from_slice(r);
            std::hint::black_box(&dst);
        }
    }) * total
        / 1e6;
    println!("copy (raw read): {copy:.0} MB/s");
    println!("| level | filter | size vs raw | decompress MB/s | undo filter MB/s | read (both) MB/s | read vs copy |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let mut dctx = zstd::bulk::Decompressor::new().unwrap();
    for level in [1, 3, 9] {
        for f in Filter::ALL {
            if level != 3 && !matches!(f, Filter::None | Filter::Up) {
                continue;
            }
            let mut c = zstd::bulk::Compressor::new(level).unwrap();
            let frames: Vec<Vec<u8>> = records
                .iter()
                .map(|r| {
                    let mut fl = vec![0u8; rb];
                    filter::apply(f, r, &mut fl, row, bpp);
                    c.compress(&fl).unwrap()
                })
                .collect();
            let size: usize = frames.iter().map(|f| f.len()).sum();
            let dec = rate(seconds, || {
                for fr in &frames {
                    dctx.decompress_to_buffer(fr, &mut dst[..]).unwrap();
                }
            }) * total
                / 1e6;
            let undo = rate(seconds, || {
                for _ in 0..n {
                    filter::undo(f, &mut dst, row, bpp);
                    std::hint::black_box(&dst);
                }
            }) * total
                / 1e6;
            let both = rate(seconds, || {
                for fr in &frames {
                    dctx.decompress_to_buffer(fr, &mut dst[..]).unwrap();
                    filter::undo(f, &mut dst, row, bpp);
                }
            }) * total
                / 1e6;
            // Check the round trip on the last record.
            dctx.decompress_to_buffer(&frames[n - 1], &mut dst[..])
                .unwrap();
            filter::undo(f, &mut dst, row, bpp);
            assert_eq!(dst, records[n - 1]);
            let undo = if f.is_none() {
                "-".to_string()
            } else {
                format!("{undo:.0}")
            };
            println!(
                "| {level} | {} | {:.3} | {dec:.0} | {undo} | {both:.0} | {:.3}x |",
                f.name(),
                size as f64 / total,
                both / copy
            );
        }
    }
    // Trained dictionaries (zstd 3, filter up): trained on the first half of the records,
    // measured on the second half.
    let (train, test) = records.split_at(n / 2);
    let up = |r: &Vec<u8>| {
        let mut fl = vec![0u8; rb];
        filter::apply(Filter::Up, r, &mut fl, row, bpp);
        fl
    };
    let train: Vec<Vec<u8>> = train.iter().map(up).collect();
    let test_total = (test.len() * rb) as f64;
    println!(
        "\nzstd 3 + up with a trained dictionary: trained on {} records, measured on {}",
        train.len(),
        test.len()
    );
    println!("| dictionary | train s | size vs raw (with one dictionary) | decompress MB/s |");
    println!("|---:|---:|---:|---:|");
    for dict_kib in [0usize, 8, 16, 32, 64, 110] {
        let t = Instant::now();
        let dict = if dict_kib == 0 {
            Vec::new()
        } else {
            match zstd::dict::from_samples(&train, dict_kib << 10) {
                Ok(d) => d,
                Err(e) => {
                    println!("| {dict_kib} KiB | training failed: {e} | | |");
                    continue;
                }
            }
        };
        let train_s = t.elapsed().as_secs_f64();
        let mut c = zstd::bulk::Compressor::with_dictionary(3, &dict).unwrap();
        let frames: Vec<Vec<u8>> = test.iter().map(|r| c.compress(&up(r)).unwrap()).collect();
        let size: usize = frames.iter().map(|f| f.len()).sum::<usize>() + dict.len();
        let mut d = zstd::bulk::Decompressor::with_dictionary(&dict).unwrap();
        let dec = rate(seconds, || {
            for fr in &frames {
                d.decompress_to_buffer(fr, &mut dst[..]).unwrap();
            }
        }) * test_total
            / 1e6;
        println!(
            "| {dict_kib} KiB | {train_s:.2} | {:.3} | {dec:.0} |",
            size as f64 / test_total
        );
    }
    // For comparison: blocks of consecutive records in one frame (what a reader would have to
    // decompress whole to serve one record of it).
    let mut c = zstd::bulk::Compressor::new(3).unwrap();
    for block in [16usize, 64, 256] {
        let size: usize = test
            .chunks(block)
            .map(|b| {
                c.compress(&b.iter().flat_map(up).collect::<Vec<u8>>())
                    .unwrap()
                    .len()
            })
            .sum();
        println!(
            "blocks of {block} records (zstd 3 + up, no dictionary): {:.3} of raw",
            size as f64 / test_total
        );
    }
}
