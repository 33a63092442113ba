//! Train-loop shaped reading of a Vantix dataset from Rust, without Python.
//!
//! ```text
//! vantix-pack ./train --size 224 -o train.vtx
//! cargo run --release -p vantix-read --example read_batches -- train.vtx [BATCH_SIZE] [EPOCHS]
//! ```
//!
//! Opens (and validates) the dataset, then iterates shuffled batches for a few epochs with a
//! torchvision-style augmentation (random crop with padding, horizontal flip) and float32 NCHW
//! output normalised with ImageNet's mean and std, exactly what `vantix.VantixLoader` does
//! from Python. Prints per-epoch images/s and a checksum of the labels seen.

use std::sync::Arc;
use std::time::Instant;

use vantix_read::{DType, Dataset, Layout, Loader, LoaderConfig, Order, Sampler, Transform};

fn main() {
    if let Err(e) = run() {
        eprintln!("read_batches: error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: read_batches DATASET [BATCH_SIZE] [EPOCHS]")?;
    let batch_size: usize = args.next().map_or(Ok(256), |s| s.parse())?;
    let epochs: u64 = args.next().map_or(Ok(2), |s| s.parse())?;

    let ds = Arc::new(Dataset::open(&path)?);
    let g = ds.geometry();
    println!(
        "{path}: {} images, {} classes, {}x{}x{} ({})",
        ds.len(),
        ds.classes().len(),
        g.height,
        g.width,
        g.channels,
        ds.codec().name()
    );
    let config = LoaderConfig {
        batch_size,
        sampler: Sampler {
            order: Order::Random,
            seed: 0,
            ..Sampler::default()
        },
        augment: Transform {
            // RandomCrop(size, padding=4) + RandomHorizontalFlip() + ToTensor() + Normalize().
            random_crop: Some((g.height, g.width)),
            padding: 4,
            horizontal_flip: 0.5,
            // ImageNet's statistics for RGB; 0.5 per channel for grey or RGBA records.
            mean: match g.channels {
                3 => vec![0.485, 0.456, 0.406],
                c => vec![0.5; c as usize],
            },
            std: match g.channels {
                3 => vec![0.229, 0.224, 0.225],
                c => vec![0.5; c as usize],
            },
            dtype: DType::Float32,
            layout: Layout::Nchw,
            ..Transform::default()
        },
        ..LoaderConfig::default()
    };
    let loader = Loader::new(Arc::clone(&ds), config)?;
    for epoch in 0..epochs {
        let t = Instant::now();
        let (mut images, mut label_sum) = (0usize, 0i64);
        for batch in loader.epoch(epoch, 0) {
            let batch = batch?;
            // batch.images(): batch.shape = [B, 3, H, W] float32 values (as bytes).
            images += batch.len();
            label_sum += batch.labels.iter().sum::<i64>();
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "epoch {epoch}: {images} images in {} batches, {:.0} images/s, sum of labels {label_sum}",
            loader.num_batches(),
            images as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}
