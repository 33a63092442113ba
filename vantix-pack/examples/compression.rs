//! Size on disk and read speed of every codec, measured in one run:
//!
//! ```text
//! cargo run --release -p vantix-pack --example compression -- SRC [--size N] [--epochs E]
//! ```
//!
//! Packs the ImageFolder `SRC` to `N x N` (default 224) once per codec (raw; zstd levels 1, 3
//! and 9 without a filter and with the paeth filter; zstd 3 with the other filters), then reads
//! each pack with the `Loader` (shuffled, batch 256, all cores, every batch touched) for `E`
//! epochs (default 3) after one warm-up epoch. Prints a Markdown table (size on disk, ratio to
//! raw, images/s, ratio to raw's images/s) and the same figures as JSON lines.

use std::path::{Path, PathBuf};
use std::time::Instant;

use vantix_pack::{pack, PackOptions};
use vantix_read::{Codec, Dataset, Filter, Loader, LoaderConfig};

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_size(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

fn read_speed(path: &Path, epochs: u64) -> f64 {
    let ds = std::sync::Arc::new(Dataset::open(path).unwrap());
    let loader = Loader::new(ds, LoaderConfig::default()).unwrap();
    let mut sink = 0u64;
    let mut run = |e: u64| {
        let mut n = 0usize;
        for b in loader.epoch(e, 0) {
            let b = b.unwrap();
            sink += b
                .images()
                .iter()
                .step_by(4096)
                .map(|&v| v as u64)
                .sum::<u64>();
            n += b.len();
        }
        n
    };
    run(0);
    let t = Instant::now();
    let n: usize = (1..=epochs).map(&mut run).sum();
    std::hint::black_box(sink);
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut src, mut size, mut epochs) = (None, 224, 3);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size" => size = args.next().and_then(|s| s.parse().ok()).expect("--size N"),
            "--epochs" => {
                epochs = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--epochs E")
            }
            _ => src = Some(PathBuf::from(a)),
        }
    }
    let src = src.expect("usage: compression SRC [--size N] [--epochs E]");
    let tmp = std::env::temp_dir().join(format!("vantix-compression-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let source_bytes = dir_size(&src);
    let zstd = |level, filter| Codec::Zstd { level, filter };
    let mut codecs = vec![(Codec::Raw, "raw".to_string())];
    for filter in [Filter::None, Filter::Paeth] {
        for level in [1, 3, 9] {
            codecs.push((
                zstd(level, filter),
                format!("zstd {level}, filter {}", filter.name()),
            ));
        }
    }
    for filter in [Filter::Left, Filter::Up, Filter::Avg] {
        codecs.push((zstd(3, filter), format!("zstd 3, filter {}", filter.name())));
    }
    let mut rows = Vec::new();
    for (codec, name) in codecs {
        let mut opts = PackOptions::default();
        (opts.spec.width, opts.spec.height) = (size, size);
        opts.codec = codec;
        // Filters only: the dictionary has its own measurements (zstd_profile, and
        // benchmarks/benchmark_compression.py).
        opts.dictionary = vantix_pack::DictionaryMode::Off;
        opts.report_skipped = false;
        let out = tmp.join("pack.vtx");
        let _ = std::fs::remove_dir_all(&out);
        let t = Instant::now();
        let r = pack(&src, &out, &opts).unwrap();
        let pack_s = t.elapsed().as_secs_f64();
        let speed = read_speed(&out, epochs);
        let bytes = dir_size(&out);
        rows.push((name, bytes, speed, r.num_samples, pack_s));
        std::fs::remove_dir_all(&out).unwrap();
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let (raw_bytes, raw_speed) = (rows[0].1 as f64, rows[0].2);
    println!(
        "{} images from {} ({:.1} MiB of source files), {size}x{size}",
        rows[0].3,
        src.display(),
        source_bytes as f64 / 1048576.0
    );
    println!("| codec | size on disk | vs raw | vs source | loader images/s | vs raw |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, bytes, speed, _, _) in &rows {
        println!(
            "| {name} | {:.1} MiB | {:.2}x | {:.2}x | {:.0} | {:.2}x |",
            *bytes as f64 / 1048576.0,
            *bytes as f64 / raw_bytes,
            *bytes as f64 / source_bytes as f64,
            speed,
            speed / raw_speed
        );
    }
    for (name, bytes, speed, n, pack_s) in &rows {
        println!(
            "{{\"codec\": \"{name}\", \"bytes\": {bytes}, \"source_bytes\": {source_bytes}, \"images\": {n}, \"images_per_s\": {speed:.1}, \"pack_seconds\": {pack_s:.3}}}"
        );
    }
}
