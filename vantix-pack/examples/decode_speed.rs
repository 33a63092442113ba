//! Time the decode + resize paths on image files, one image at a time, in one run (the scaled
//! path's `jpeg-decoder` may spread a colour image's components over idle cores):
//!
//! ```text
//! cargo run --release -p vantix-pack --example decode_speed -- DIR_OR_FILE... [--size N]
//! ```
//!
//! - `v0.1 path`: full-size decode converted to RGB, then a three-channel resize (what
//!   vantix-pack 0.1.0 did for every image; `decode_rgb` + `resize_rgb`);
//! - `--exact-decode`: full-size decode, grey images resized as one channel;
//! - `default`: as `--exact-decode`, but colour JPEGs decoded at 1/2, 1/4 or 1/8 scale in the
//!   DCT domain when the target allows it.
//!
//! Prints milliseconds per image for each and the ratios, over every file given (folders are
//! walked), each path run twice in alternation and the faster run kept.

use std::path::{Path, PathBuf};
use std::time::Instant;

use vantix_pack::imaging::{decode_rgb, process, resize_rgb};
use vantix_pack::PackOptions;

fn files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for e in entries {
            files(&e, out);
        }
    } else {
        out.push(p.to_path_buf());
    }
}

fn main() {
    let mut size = 224;
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--size" {
            size = args.next().and_then(|s| s.parse().ok()).expect("--size N");
        } else {
            files(Path::new(&a), &mut paths);
        }
    }
    assert!(
        !paths.is_empty(),
        "usage: decode_speed DIR_OR_FILE... [--size N]"
    );
    let data: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let mut spec = PackOptions::default().spec;
    (spec.width, spec.height) = (size, size);
    let names = ["v0.1 path", "--exact-decode", "default"];
    let mut best = [f64::INFINITY; 3];
    for _round in 0..2 {
        for (k, best) in best.iter_mut().enumerate() {
            spec.exact_decode = k < 2;
            let t = Instant::now();
            for bytes in &data {
                if k == 0 {
                    let (rgb, w, h) = decode_rgb(bytes, spec.max_pixels).unwrap();
                    resize_rgb(rgb, w, h, &spec).unwrap();
                } else {
                    process(bytes, &spec).unwrap();
                }
            }
            *best = best.min(t.elapsed().as_secs_f64() * 1e3 / data.len() as f64);
        }
    }
    println!(
        "{} files, target {size}x{size}, one image at a time:",
        data.len()
    );
    for (name, ms) in names.iter().zip(best) {
        println!(
            "  {name:16} {ms:7.2} ms/image  ({:.2}x the v0.1 path)",
            best[0] / ms
        );
    }
}
