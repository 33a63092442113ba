//! How long does opening (and fully validating) a dataset of a million records take?
//!
//! `cargo run --release -p vantix-pack --example open_million`
//!
//! Writes a dataset of 1,000,000 tiny records (4x4 RGB, raw) to a temporary directory, then
//! times `Dataset::open`, which checks every header, table, label and length.

use std::time::Instant;

use vantix_pack::writer::ShardWriter;
use vantix_read::format::{Codec, Geometry, Manifest, PackSettings};
use vantix_read::Dataset;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |s| s.parse())?;
    let dir = std::env::temp_dir().join(format!("vantix-open-million-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let geometry = Geometry {
        width: 4,
        height: 4,
        channels: 3,
    };
    let t = Instant::now();
    let mut w = ShardWriter::new(
        std::sync::Arc::new(vantix_pack::outdir::Dir::open(&dir)?),
        geometry,
        Codec::Raw,
        16 << 20,
    );
    let record = vec![7u8; geometry.record_bytes()];
    for i in 0..n {
        w.push(&record, (i % 1000) as u32)?;
    }
    let shards = w.finish()?;
    let manifest = Manifest {
        format: "vantix".into(),
        version: Codec::Raw.format_version(),
        geometry,
        dtype: "uint8".into(),
        layout: "HWC".into(),
        channel_order: "RGB".into(),
        codec: Codec::Raw,
        classes: (0..1000).map(|c| format!("class{c:04}")).collect(),
        num_samples: n,
        shards,
        pack: PackSettings {
            resize: "squash".into(),
            interpolation: "bilinear".into(),
            pad_color: [0; 3],
            exif_orientation: false,
            source: "synthetic".into(),
            source_files: n,
            source_list_xxh3: String::new(),
            vantix_version: env!("CARGO_PKG_VERSION").into(),
            exact_decode: false,
            max_pixels: None,
        },
        skipped: vec![],
        part: None,
        appends: Vec::new(),
        truncated: Vec::new(),
        class_bytes: Default::default(),
    };
    std::fs::write(dir.join("manifest.json"), manifest.to_json())?;
    println!("wrote {n} records in {:.2}s", t.elapsed().as_secs_f64());
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let ds = Dataset::open(&dir)?;
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(ds.len() as u64, n);
    }
    println!(
        "Dataset::open of {n} records in {} shards: {:.1} ms (best of 5)",
        manifest.shards.len(),
        best * 1e3
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
