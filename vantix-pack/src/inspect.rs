//! What `vantix-pack inspect` shows: counts per class, geometry, codec, sizes and ratio.

use serde::Serialize;
pub use vantix_read::memory::human_bytes;
use vantix_read::{Codec, Dataset, MemoryFit, Result};

/// The number of samples of one class.
#[derive(Clone, Debug, Serialize)]
pub struct ClassCount {
    /// Class index (the label).
    pub index: usize,
    /// Class name, in the manifest's readable form.
    pub name: String,
    /// Samples with this label.
    pub count: u64,
}

/// What `vantix-pack inspect` prints about a dataset (as text through `Display`, or as JSON).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The dataset directory.
    pub path: String,
    /// Format version of the manifest.
    pub format_version: u32,
    /// Number of samples.
    pub num_samples: u64,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Channels per pixel: 1, 3 or 4.
    pub channels: u32,
    /// `"L"`, `"RGB"` or `"RGBA"`.
    pub channel_order: String,
    /// Codec name: `"raw"` or `"zstd"`.
    pub codec: String,
    /// The zstd compression level; `None` for raw.
    pub zstd_level: Option<i32>,
    /// Prediction filter undone after zstd (`none` for raw).
    pub filter: String,
    /// Number of shards that store a trained zstd dictionary.
    pub dictionary_shards: usize,
    /// Size in bytes of the dictionary of the first shard that stores one; `None` when none does.
    pub dictionary_bytes: Option<u32>,
    /// Number of shard files.
    pub num_shards: usize,
    /// Total size of the shard files in bytes (the manifest and `sources.json` not counted).
    pub size_on_disk: u64,
    /// Size of the decoded pixels in bytes: `num_samples * height * width * channels`.
    pub raw_size: u64,
    /// `raw_size / size_on_disk` (1.0 for an empty dataset).
    pub compression_ratio: f64,
    /// Resize mode of the pack (`pack.resize`).
    pub resize: String,
    /// Resampling filter of the pack (`pack.interpolation`).
    pub interpolation: String,
    /// The source directory the dataset was packed from.
    pub source: String,
    /// Number of source files that could not be packed.
    pub skipped: usize,
    /// Per-class sample counts, in class-index order.
    pub classes: Vec<ClassCount>,
    /// How the dataset compares with the memory this process can use, and what to do when it
    /// does not fit ([`MemoryFit::message`], the text of the Python loader's warning). Printed
    /// as the `memory` line; not in the JSON, which describes the dataset, not the machine.
    #[serde(skip)]
    pub memory: String,
}

/// Summarize `ds`: reads every label to count the samples per class, no pixels.
pub fn summarize(ds: &Dataset) -> Result<Summary> {
    let m = ds.manifest();
    let mut counts = vec![0u64; m.classes.len()];
    for i in 0..ds.len() {
        counts[ds.label(i)? as usize] += 1;
    }
    let size_on_disk: u64 = ds.shards().iter().map(|s| s.size_bytes()).sum();
    let raw_size = ds.len() as u64 * ds.record_bytes() as u64;
    let memory = MemoryFit::of(ds)?.message();
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
        memory,
    })
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
        writeln!(f, "memory       {}", self.memory)?;
        writeln!(f, "source       {}", self.source)?;
        writeln!(f, "skipped      {} file(s) at pack time", self.skipped)?;
        writeln!(f, "classes      {}", self.classes.len())?;
        for c in &self.classes {
            writeln!(f, "  {:>5}  {:<30} {}", c.index, c.name, c.count)?;
        }
        Ok(())
    }
}
