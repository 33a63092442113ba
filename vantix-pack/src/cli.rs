//! The `vantix-pack` command line. Shared by the Rust binary and the Python console script, so
//! both behave identically.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use vantix_read::{Codec, Dataset, Filter};

use crate::imaging::{Interpolation, ResizeMode, ResizeSpec, DEFAULT_MAX_PIXELS};
use crate::inspect::{human_bytes, summarize};
use crate::pack::{pack, PackOptions};
use crate::preview;
use crate::writer::DictionaryMode;

const EXAMPLES: &str = "\
Examples:
  vantix-pack ./train --size 224 -o train.vtx                  ImageFolder -> 224x224 records
  vantix-pack ./train --size 256x192 --mode squash -o train.vtx   W x H, no crop
  vantix-pack ./train --size 64 --codec zstd --level 9 -o small.vtx
  vantix-pack inspect train.vtx                                  classes, counts, geometry, sizes
  vantix-pack verify train.vtx                                   recompute every checksum
  vantix-pack preview train.vtx -o sheet.png --num 64            look at 64 packed images

Then, in Python:
  from vantix import VantixLoader
  loader = VantixLoader(\"train.vtx\", batch_size=256, shuffle=True)
  for images, labels in loader:   # uint8 [B, H, W, 3], int64 [B]
      ...

Run `vantix-pack <COMMAND> --help` for the options of inspect, verify and preview.";

#[derive(Parser, Debug)]
#[command(
    name = "vantix-pack",
    version,
    about = "Pack a torchvision ImageFolder into a Vantix dataset (decode and resize once, read fast forever).",
    long_about = "Pack a torchvision ImageFolder (SRC/<class>/**/<image>, one sub-folder per class) into \
a Vantix dataset: every image is decoded (JPEG, PNG, BMP, TIFF, WebP, GIF, PPM, by content), converted to \
RGB and resized once, in parallel, and written to fixed-size records in memory-mappable shards. Classes, \
files and labels are exactly those torchvision.datasets.ImageFolder(SRC) finds. Unreadable images are \
skipped and reported (or fail the pack with --strict). The output directory appears atomically. \
Read it from Python with vantix.VantixLoader(\"OUT.vtx\").",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    pack: PackArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what a packed dataset holds: samples per class, geometry, codec, sizes.
    #[command(
        after_help = "Examples:\n  vantix-pack inspect train.vtx\n  vantix-pack inspect train.vtx --json | python -m json.tool"
    )]
    Inspect {
        /// The dataset directory (OUT.vtx).
        dataset: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Recompute every checksum and name the damaged shard and record, if any.
    #[command(
        after_help = "Exit status 0 when every shard and record checks out, 1 (with the damaged file and record named) otherwise.\n\nExample:\n  vantix-pack verify train.vtx"
    )]
    Verify {
        /// The dataset directory (OUT.vtx).
        dataset: PathBuf,
    },
    /// Write a contact sheet: a PNG grid of packed images, each captioned "#index class".
    #[command(
        long_about = "Write a contact sheet: a PNG grid of packed images as they are stored (after the \
resize, before any augmentation), each captioned \"#index class\", so you can see what was packed. \
Without --indices, --num records are drawn at random (reproducibly, with --seed) and shown in index \
order, which is class order. To look at batches after augmentation, use \
vantix.VantixLoader(...).preview(\"batch.png\") in Python.",
        after_help = "Examples:\n  vantix-pack preview train.vtx -o sheet.png\n  vantix-pack preview train.vtx -o sheet.png --num 100 --seed 3 --columns 20\n  vantix-pack preview train.vtx -o first.png --indices 0,1,2,3"
    )]
    Preview {
        /// The dataset directory (OUT.vtx).
        dataset: PathBuf,
        /// The PNG file to write.
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// Number of records drawn at random (ignored with --indices).
        #[arg(short = 'n', long, default_value_t = 64)]
        num: usize,
        /// Show exactly these records, in this order, e.g. 0,5,17.
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["num", "seed"])]
        indices: Option<Vec<u64>>,
        /// Seed of the random draw: the same seed shows the same records.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Tiles per row [default: a near-square grid].
        #[arg(long)]
        columns: Option<usize>,
        /// Integer upscaling of every tile (nearest neighbour) [default: the smallest factor
        /// making tiles at least 96 pixels wide].
        #[arg(long)]
        scale: Option<usize>,
    },
}

#[derive(Args, Debug)]
struct PackArgs {
    /// The ImageFolder to pack: SRC/<class>/**/<image>, as torchvision.datasets.ImageFolder reads it.
    #[arg(required = true)]
    src: Option<PathBuf>,
    /// Output size: N (N x N) or WxH, e.g. 224 or 256x192.
    #[arg(long, required = true, value_parser = parse_size)]
    size: Option<(u32, u32)>,
    /// Output dataset directory, e.g. train.vtx.
    #[arg(short = 'o', long, required = true)]
    output: Option<PathBuf>,
    /// How to reach the output size: center-crop (shorter side to the size, then centre crop,
    /// torchvision's evaluation transform), squash (straight to WxH) or pad (fit inside, pad).
    #[arg(long, default_value = "center-crop", value_parser = ["center-crop", "squash", "pad"])]
    mode: String,
    /// Resampling filter (antialiased, as Pillow and torchvision): bilinear is torchvision's default.
    #[arg(long, default_value = "bilinear",
          value_parser = ["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"])]
    interpolation: String,
    /// Padding colour for --mode pad, as R,G,B.
    #[arg(long, default_value = "0,0,0", value_parser = parse_color)]
    pad_color: [u8; 3],
    /// Record codec: raw (fixed stride, fastest reads) or zstd (smaller).
    #[arg(long, default_value = "raw", value_parser = ["raw", "zstd"])]
    codec: String,
    /// zstd compression level (1-22), with --codec zstd.
    #[arg(long, default_value_t = 3)]
    level: i32,
    /// Prediction filter applied to each record before zstd (PNG's filter types), undone by
    /// the reader: photographs compress about twice as well after it. With --codec zstd.
    #[arg(long, default_value = "up", value_parser = ["none", "left", "up", "avg", "paeth"])]
    filter: String,
    /// Compress zstd records with a dictionary trained at pack time and stored in each shard:
    /// auto uses one for records of at most 16 KiB (small images), on always, off never.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    zstd_dict: String,
    /// Target size of a shard file, e.g. 512M, 1G or a byte count.
    #[arg(long, default_value = "512M", value_parser = parse_bytes)]
    shard_size: u64,
    /// Worker threads (default: all cores).
    #[arg(short = 'j', long)]
    jobs: Option<usize>,
    /// Fail on the first unreadable image instead of skipping and reporting it.
    #[arg(long)]
    strict: bool,
    /// Replace the output dataset if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Largest accepted source image, in pixels (guards against decompression bombs).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Decode every JPEG at full size. By default a large JPEG is decoded at 1/2, 1/4 or 1/8
    /// scale in the DCT domain when that still leaves at least twice the resize target per axis
    /// (much faster; pixels within the parity tolerance of a full-size decode + resize).
    #[arg(long)]
    exact_decode: bool,
    /// No progress bar and no summary.
    #[arg(short, long)]
    quiet: bool,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let num = |t: &str| {
        t.trim()
            .parse::<u32>()
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| format!("invalid size {s:?}: expected N or WxH"))
    };
    match s.split_once(['x', 'X']) {
        Some((w, h)) => Ok((num(w)?, num(h)?)),
        None => num(s).map(|n| (n, n)),
    }
}

fn parse_color(s: &str) -> Result<[u8; 3], String> {
    let parts: Vec<_> = s.split(',').map(|p| p.trim().parse::<u8>()).collect();
    match parts.as_slice() {
        [Ok(r), Ok(g), Ok(b)] => Ok([*r, *g, *b]),
        _ => Err(format!(
            "invalid colour {s:?}: expected R,G,B with values 0-255"
        )),
    }
}

/// `123`, `64K`, `512M`, `1G`, `1GiB`, `2GB` (binary multiples).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.trim_end_matches("IB").trim_end_matches('B');
    let (digits, mult) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|v| v.checked_mul(mult))
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("invalid size {s:?}: expected e.g. 512M, 1G or a byte count"))
}

impl PackArgs {
    fn options(&self) -> PackOptions {
        let (width, height) = self.size.expect("required");
        PackOptions {
            spec: ResizeSpec {
                width,
                height,
                mode: ResizeMode::parse(&self.mode).expect("validated by clap"),
                interpolation: Interpolation::parse(&self.interpolation)
                    .expect("validated by clap"),
                pad_color: self.pad_color,
                max_pixels: self.max_pixels,
                exact_decode: self.exact_decode,
            },
            codec: if self.codec == "zstd" {
                Codec::Zstd {
                    level: self.level,
                    filter: Filter::parse(&self.filter).expect("validated by clap"),
                }
            } else {
                Codec::Raw
            },
            shard_size: self.shard_size,
            jobs: self.jobs,
            strict: self.strict,
            overwrite: self.overwrite,
            progress: !self.quiet && std::io::stderr().is_terminal(),
            report_skipped: true,
            interrupt: None,
            zstd_dictionary: DictionaryMode::parse(&self.zstd_dict).expect("validated by clap"),
        }
    }
}

/// Run the command line; returns the process exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let result = match cli.command {
        Some(Command::Inspect { dataset, json }) => Dataset::open(&dataset).and_then(|ds| {
            let s = summarize(&ds)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).expect("summary serialises")
                );
            } else {
                print!("{s}");
            }
            Ok(())
        }),
        Some(Command::Preview {
            dataset,
            output,
            num,
            indices,
            seed,
            columns,
            scale,
        }) => Dataset::open(&dataset).and_then(|ds| {
            let indices = indices.unwrap_or_else(|| preview::sample_indices(ds.len(), num, seed));
            let sheet = preview::dataset_sheet(&ds, &indices, columns, scale)?;
            sheet.save_png(&output)?;
            println!(
                "wrote {} ({}x{} pixels, {} records)",
                output.display(),
                sheet.width,
                sheet.height,
                indices.len()
            );
            Ok(())
        }),
        Some(Command::Verify { dataset }) => Dataset::open(&dataset).and_then(|ds| {
            ds.verify()?;
            println!(
                "OK: {} records in {} shard(s) verified ({})",
                ds.len(),
                ds.shards().len(),
                human_bytes(ds.shards().iter().map(|s| s.size_bytes()).sum())
            );
            Ok(())
        }),
        None => {
            let a = &cli.pack;
            let (src, out) = (
                a.src.clone().expect("required"),
                a.output.clone().expect("required"),
            );
            pack(&src, &out, &a.options()).map(|r| {
                if !a.quiet {
                    eprintln!(
                        "vantix-pack: packed {} images ({} classes, {} skipped) into {} in {:.1}s ({:.0} images/s), {} in {} shard(s)",
                        r.num_samples,
                        r.classes.len(),
                        r.skipped.len(),
                        r.output.display(),
                        r.seconds,
                        (r.num_samples + r.skipped.len() as u64) as f64 / r.seconds.max(1e-9),
                        human_bytes(r.bytes_written),
                        r.shards.len()
                    );
                }
            })
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vantix-pack: error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_bytes() {
        assert_eq!(parse_size("224"), Ok((224, 224)));
        assert_eq!(parse_size("256x192"), Ok((256, 192)));
        assert!(parse_size("0").is_err());
        assert!(parse_size("axb").is_err());
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("-1").is_err());
        assert_eq!(parse_color("1,2,3"), Ok([1, 2, 3]));
    }

    #[test]
    fn seed_command_line_parses() {
        let c = Cli::try_parse_from(["vantix-pack", "./train", "--size", "224", "-o", "train.vtx"])
            .unwrap();
        assert!(c.command.is_none());
        assert_eq!(c.pack.size, Some((224, 224)));
        let c = Cli::try_parse_from(["vantix-pack", "verify", "train.vtx"]).unwrap();
        assert!(matches!(c.command, Some(Command::Verify { .. })));
    }
}
