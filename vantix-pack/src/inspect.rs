//! What `vantix-pack inspect` shows: counts per class, geometry, codec, sizes and ratio.

use serde::Serialize;
use vantix_read::{Codec, Dataset, Result};

#[derive(Clone, Debug, Serialize)]
pub struct ClassCount {
    pub index: usize,
    pub name: String,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub path: String,
    pub format_version: u32,
    pub num_samples: u64,
    pub width: u32,
    pub height: u32,
    pub channels: u32,
    /// `"L"`, `"RGB"` or `"RGBA"`.
    pub channel_order: String,
    pub codec: String,
    pub zstd_level: Option<i32>,
    /// Prediction filter undone after zstd (`none` for raw).
    pub filter: String,
    /// Shards that store a trained zstd dictionary, and its size in the first of them.
    pub dictionary_shards: usize,
    pub dictionary_bytes: Option<u32>,
    pub num_shards: usize,
    pub size_on_disk: u64,
    pub raw_size: u64,
    pub compression_ratio: f64,
    pub resize: String,
    pub interpolation: String,
    pub source: String,
    pub skipped: usize,
    pub classes: Vec<ClassCount>,
}

pub fn summarize(ds: &Dataset) -> Result<Summary> {
    let m = ds.manifest();
    let mut counts = vec![0u64; m.classes.len()];
    for i in 0..ds.len() {
        counts[ds.label(i)? as usize] += 1;
    }
    let size_on_disk: u64 = ds.shards().iter().map(|s| s.size_bytes()).sum();
    let raw_size = ds.len() as u64 * ds.record_bytes() as u64;
    Ok(Summary {
        path: ds.root().display().to_string(),
        format_version: m.version,
        num_samples: m.num_samples,
        width: m.geometry.width,
        height: m.geometry.height,
        channels: m.geometry.channels,
        channel_order: m.channel_order.clone(),
        codec: m.codec.name().into(),
        zstd_level: match m.codec {
            Codec::Zstd { level, .. } => Some(level),
            Codec::Raw => None,
        },
        filter: m.codec.filter().name().into(),
        dictionary_shards: ds
            .shards()
            .iter()
            .filter(|s| s.dictionary_size() > 0)
            .count(),
        dictionary_bytes: ds
            .shards()
            .iter()
            .map(|s| s.dictionary_size())
            .find(|&d| d > 0),
        num_shards: ds.shards().len(),
        size_on_disk,
        raw_size,
        compression_ratio: if size_on_disk == 0 {
            1.0
        } else {
            raw_size as f64 / size_on_disk as f64
        },
        resize: m.pack.resize.clone(),
        interpolation: m.pack.interpolation.clone(),
        source: m.pack.source.clone(),
        skipped: m.skipped.len(),
        classes: m
            .classes
            .iter()
            .zip(counts)
            .enumerate()
            .map(|(index, (name, count))| ClassCount {
                index,
                name: name.clone(),
                count,
            })
            .collect(),
    })
}

pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "dataset      {}", self.path)?;
        writeln!(f, "format       vantix v{}", self.format_version)?;
        writeln!(f, "samples      {}", self.num_samples)?;
        writeln!(
            f,
            "image        {}x{}x{} uint8 HWC {} (W x H x C)",
            self.width, self.height, self.channels, self.channel_order
        )?;
        match self.zstd_level {
            Some(l) => {
                writeln!(f, "codec        zstd (level {l})")?;
                writeln!(f, "filter       {}", self.filter)?;
            }
            None => writeln!(f, "codec        raw")?,
        }
        if let Some(d) = self.dictionary_bytes {
            writeln!(
                f,
                "dictionary   {} trained zstd dictionary in {} of {} shard(s)",
                human_bytes(d as u64),
                self.dictionary_shards,
                self.num_shards
            )?;
        } else if self.zstd_level.is_some() {
            writeln!(f, "dictionary   none")?;
        }
        writeln!(f, "resize       {} ({})", self.resize, self.interpolation)?;
        writeln!(f, "shards       {}", self.num_shards)?;
        writeln!(
            f,
            "size         {} on disk, {} of pixels, ratio {:.2}x",
            human_bytes(self.size_on_disk),
            human_bytes(self.raw_size),
            self.compression_ratio
        )?;
        writeln!(f, "source       {}", self.source)?;
        writeln!(f, "skipped      {} file(s) at pack time", self.skipped)?;
        writeln!(f, "classes      {}", self.classes.len())?;
        for c in &self.classes {
            writeln!(f, "  {:>5}  {:<30} {}", c.index, c.name, c.count)?;
        }
        Ok(())
    }
}
