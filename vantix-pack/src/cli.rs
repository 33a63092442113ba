//! The `vantix-pack` command line. Shared by the Rust binary and the Python console script, so
//! both behave identically.

use std::ffi::{OsStr, OsString};
use std::io::IsTerminal;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::str::FromStr;

use clap::builder::{PossibleValue, StringValueParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use vantix_read::{Codec, Dataset, Filter};

use crate::append::{append, AppendOptions};
use crate::imaging::{Interpolation, ResizeMode, ResizeSpec, DEFAULT_MAX_PIXELS};
use crate::inspect::{human_bytes, summarize};
use crate::merge::{merge, MergeOptions};
use crate::pack::{check_part, pack, PackOptions, PackReport};
use crate::preview;
use crate::writer::DictionaryMode;

const EXAMPLES: &str = "\
Examples:
  vantix-pack ./train --size 224 -o train.vtx                  ImageFolder -> 224x224 records
  vantix-pack ./train --size 256x192 --mode squash -o train.vtx   width 256, height 192, no crop
  vantix-pack ./train --size 64 --codec zstd --level 9 -o small.vtx
  vantix-pack ./scans --size 256 --channels 1 -o scans.vtx       grayscale records (4: RGBA)
  vantix-pack ./photos --size 224 --exif-orientation -o p.vtx    rotate as EXIF says first
  vantix-pack inspect train.vtx                                  classes, counts, geometry, sizes
  vantix-pack verify train.vtx                                   recompute every checksum
  vantix-pack preview train.vtx -o sheet.png --num 64            look at 64 packed images
  vantix-pack ./train --size 224 -o part-3.vtx --part 3/64      part 3 of 64 (0-based), one per machine
  vantix-pack merge part-*.vtx -o train.vtx                      join the 64 parts into one dataset
  vantix-pack append ./train -o train.vtx                        add the images train.vtx lacks

Then, in Python:
  from vantix import VantixLoader
  loader = VantixLoader(\"train.vtx\", batch_size=256, shuffle=True)
  for images, labels in loader:   # uint8 [B, H, W, 3], int64 [B]
      ...

Run `vantix-pack <COMMAND> --help` for the options of inspect, verify, preview, merge and append.";

#[derive(Parser, Debug)]
#[command(
    name = "vantix-pack",
    version,
    about = "Pack a torchvision ImageFolder into a Vantix dataset (decode and resize once, read fast forever).",
    long_about = "Pack a torchvision ImageFolder (SRC/<class>/**/<image>, one sub-folder per class) into \
a Vantix dataset: every image is decoded (JPEG, PNG, BMP, TIFF, WebP, GIF, PPM, by content), converted to \
RGB (or grayscale/RGBA with --channels) and resized once, in parallel, and written to fixed-size records in memory-mappable shards. Classes, \
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
    /// Join the parts of a pack made with --part I/N (on many machines) into one dataset.
    #[command(
        long_about = "Join the N parts of a pack made with --part I/N into one dataset whose records, \
labels, classes, skipped files and sources.json are exactly those of a single-machine pack of the same \
tree. Parts may be given in any order; merge checks that every part of the pack is given once and that \
all come from the same tree with the same settings, and names the offending part otherwise. Shards are \
copied (the parts stay valid) and their checksums checked on the way; the output appears atomically.",
        after_help = "Examples:\n  vantix-pack merge parts/part-*.vtx -o train.vtx\n  vantix-pack merge p0.vtx p1.vtx p2.vtx -o train.vtx --overwrite"
    )]
    Merge {
        /// The part datasets (every part of one pack, any order).
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        /// Output dataset directory, e.g. train.vtx.
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// Replace the output if it is a Vantix dataset (never one of the parts, nor anything
        /// that is not a dataset).
        #[arg(long)]
        overwrite: bool,
        /// No progress bar and no summary.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Add the images of SRC that a dataset does not hold yet, as new shards.
    #[command(
        long_about = "Add to an existing dataset the images of the ImageFolder SRC that it does not \
hold yet: those whose path relative to SRC is neither packed (sources.json) nor in the manifest's \
skipped list. They are packed with the dataset's own size, resize mode, interpolation, codec and \
filter, in ImageFolder order, after the existing records, into new shard files; then sources.json and \
manifest.json are replaced atomically. Existing records keep their indices and their shards are not \
touched. A class folder that is not a class of the dataset is an error unless --new-classes: new \
classes go at the end of the class list (existing labels never change, so they can differ from the \
index ImageFolder(SRC) would give them).",
        after_help = "Examples:\n  vantix-pack append ./train -o train.vtx\n  vantix-pack append ./train -o train.vtx --new-classes"
    )]
    Append {
        /// The ImageFolder holding the new images (usually the one the dataset was packed from).
        src: PathBuf,
        /// The dataset to add to, in place (e.g. train.vtx).
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// Accept class folders the dataset lacks: they are added at the end of the class list.
        #[arg(long)]
        new_classes: bool,
        /// Target size of a new shard file, e.g. 512M, 1G or a byte count.
        #[arg(long, default_value = "512M", value_parser = parse_bytes)]
        shard_size: u64,
        /// Worker threads (default: all cores); `num_threads` in Python.
        #[arg(short = 'j', long, value_name = "N", visible_alias = "jobs")]
        num_threads: Option<usize>,
        /// Fail on the first unreadable image instead of skipping and reporting it.
        #[arg(long)]
        strict: bool,
        /// Pack truncated images (see the pack option of that name) instead of skipping them.
        #[arg(long)]
        allow_truncated: bool,
        /// Accept class folders without images (see the pack option of that name).
        #[arg(long)]
        allow_empty: bool,
        /// No progress bar and no summary.
        #[arg(short, long)]
        quiet: bool,
    },
}

#[derive(Args, Debug)]
struct PackArgs {
    /// The ImageFolder to pack: SRC/<class>/**/<image>, as torchvision.datasets.ImageFolder reads it.
    #[arg(required = true)]
    src: Option<PathBuf>,
    /// Output size: N (N x N) or WxH, width first as image tools write it, e.g. 224 or 256x192
    /// (256 wide, 192 high). Python's vantix.pack takes size=(height, width), torchvision's
    /// order: --size 256x192 is size=(192, 256) there.
    #[arg(long, required = true, value_parser = parse_size)]
    size: Option<(u32, u32)>,
    /// Output dataset directory, e.g. train.vtx.
    #[arg(short = 'o', long, required = true)]
    output: Option<PathBuf>,
    /// How to reach the output size: center-crop (shorter side to the size, then centre crop,
    /// torchvision's evaluation transform), squash (straight to WxH) or pad (fit inside, pad).
    #[arg(long, default_value = defaults().spec.mode.name(),
          value_parser = choice::<ResizeMode>(ResizeMode::ALL.map(ResizeMode::name)))]
    mode: ResizeMode,
    /// Resampling filter (antialiased, as Pillow and torchvision): bilinear is torchvision's default.
    #[arg(long, default_value = defaults().spec.interpolation.name(),
          value_parser = choice::<Interpolation>(Interpolation::ALL.map(Interpolation::name)))]
    interpolation: Interpolation,
    /// Padding colour for --mode pad, as R,G,B (with --channels 1 its luma, with 4 opaque).
    #[arg(long, default_value = "0,0,0", value_parser = parse_color)]
    pad_color: [u8; 3],
    /// Record codec: raw (fixed stride, fastest reads) or zstd (smaller).
    #[arg(long, default_value = defaults().codec.name(), value_parser = choice::<Codec>(Codec::NAMES))]
    codec: Codec,
    /// zstd compression level (1-22), with --codec zstd.
    #[arg(long, default_value_t = Codec::DEFAULT_LEVEL)]
    level: i32,
    /// Prediction filter applied to each record before zstd (PNG's filter types), undone by
    /// the reader: photographs compress about twice as well after it. With --codec zstd.
    #[arg(long, default_value = Codec::DEFAULT_FILTER.name(),
          value_parser = choice::<Filter>(Filter::ALL.map(Filter::name)))]
    filter: Filter,
    /// Compress zstd records with a dictionary trained at pack time and stored in each shard:
    /// auto uses one for records of at most 16 KiB (small images), on always, off never.
    /// With --codec zstd; `dictionary` in Python (--zstd-dict is the old spelling).
    #[arg(long, default_value = defaults().dictionary.name(), alias = "zstd-dict",
          value_parser = choice::<DictionaryMode>(DictionaryMode::ALL.map(DictionaryMode::name)))]
    dictionary: DictionaryMode,
    /// Target size of a shard file, e.g. 512M, 1G or a byte count.
    #[arg(long, default_value = "512M", value_parser = parse_bytes)]
    shard_size: u64,
    /// Worker threads (default: all cores); `num_threads` in Python. The output is
    /// byte-identical for any number.
    #[arg(short = 'j', long, value_name = "N", visible_alias = "jobs")]
    num_threads: Option<usize>,
    /// Fail on the first unreadable image instead of skipping and reporting it.
    #[arg(long)]
    strict: bool,
    /// Replace the output if it is a Vantix dataset (never the source tree, a folder that
    /// holds it, or anything that is not a dataset).
    #[arg(long)]
    overwrite: bool,
    /// Pack truncated images (data ending before the image does: a JPEG without its EOI, a
    /// PNG cut inside a chunk) as the decoder fills them in, like Pillow's
    /// LOAD_TRUNCATED_IMAGES, and list their records in the manifest ("truncated"). By default
    /// they are skipped with the reason "truncated", as Pillow and torchvision refuse them.
    #[arg(long)]
    allow_truncated: bool,
    /// Keep class folders without any image (with their index, no samples), as torchvision's
    /// ImageFolder(root, allow_empty=True). By default an empty class is an error.
    #[arg(long)]
    allow_empty: bool,
    /// Largest source file read, e.g. 1G: a larger file is skipped without being read.
    #[arg(long, default_value = "1G", value_parser = parse_bytes)]
    max_file_size: u64,
    /// Largest accepted source image, in pixels (guards against decompression bombs).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Decode every JPEG at full size. By default a large JPEG is decoded at 1/2, 1/4 or 1/8
    /// scale in the DCT domain when that still leaves at least twice the resize target per axis
    /// (much faster; pixels within the parity tolerance of a full-size decode + resize).
    #[arg(long)]
    exact_decode: bool,
    /// Pack only part I of N (I counts from 0: 0/N .. N-1/N), e.g. --part $SLURM_ARRAY_TASK_ID/64.
    /// Every part scans the whole tree (classes and labels are the whole tree's) and packs the
    /// I-th of N contiguous slices of the sorted file list; join the parts with
    /// `vantix-pack merge`.
    #[arg(long, value_name = "I/N", value_parser = parse_part)]
    part: Option<(u64, u64)>,
    /// Channels of the packed images: 3 (RGB, Pillow's convert("RGB")), 1 (grayscale,
    /// convert("L"): ITU-R 601-2 luma) or 4 (RGBA, convert("RGBA"): images without alpha get
    /// an opaque 255; resized with premultiplied alpha, as Pillow).
    #[arg(long, default_value_t = 3, value_parser = clap::builder::PossibleValuesParser::new(["1", "3", "4"]).map(|s| s.parse::<u32>().unwrap()))]
    channels: u32,
    /// Apply the EXIF Orientation tag (rotate/flip as Pillow's ImageOps.exif_transpose) before
    /// resizing. Off by default, as torchvision, which ignores it.
    #[arg(long)]
    exif_orientation: bool,
    /// No progress bar and no summary.
    #[arg(short, long)]
    quiet: bool,
}

/// The library's defaults, which the flags' defaults show.
fn defaults() -> PackOptions {
    PackOptions::default()
}

/// A value parser for an option enum: the enum's `FromStr` (the one parser the library and the
/// Python binding use too) parses the value and words the error, which lists the choices;
/// clap shows `names` in the help.
#[derive(Clone)]
struct Choice<T> {
    names: Vec<&'static str>,
    parsed: PhantomData<fn() -> T>,
}

fn choice<T>(names: impl IntoIterator<Item = &'static str>) -> Choice<T> {
    Choice {
        names: names.into_iter().collect(),
        parsed: PhantomData,
    }
}

impl<T> TypedValueParser for Choice<T>
where
    T: FromStr<Err = vantix_read::Error> + Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        StringValueParser::new()
            .try_map(|s| s.parse::<T>())
            .parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(self.names.iter().map(|&n| PossibleValue::new(n))))
    }
}

/// `I/N`: part `I` (0-based) of `N`.
fn parse_part(s: &str) -> Result<(u64, u64), String> {
    let (i, n) = s
        .split_once('/')
        .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)))
        .ok_or_else(|| format!("invalid part {s:?}: expected I/N, e.g. 0/64 (I counts from 0)"))?;
    check_part(i, n).map_err(|e| e.to_string())?;
    Ok((i, n))
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

/// `123`, `64K`, `512M`, `1G`, `1GiB`, `2GB` (binary multiples; the reader's parser, which
/// also reads `VANTIX_MEMORY_LIMIT`).
pub use vantix_read::memory::parse_bytes;

impl PackArgs {
    fn options(&self) -> PackOptions {
        let (width, height) = self.size.expect("required");
        PackOptions {
            spec: ResizeSpec {
                width,
                height,
                mode: self.mode,
                interpolation: self.interpolation,
                pad_color: self.pad_color,
                max_pixels: self.max_pixels,
                exact_decode: self.exact_decode,
                channels: self.channels,
                exif_orientation: self.exif_orientation,
            },
            codec: self.codec.with_zstd_settings(self.level, self.filter),
            shard_size: self.shard_size,
            num_threads: self.num_threads,
            strict: self.strict,
            overwrite: self.overwrite,
            progress: !self.quiet && std::io::stderr().is_terminal(),
            report_skipped: true,
            interrupt: None,
            part: self.part,
            dictionary: self.dictionary,
            allow_truncated: self.allow_truncated,
            allow_empty: self.allow_empty,
            max_file_bytes: self.max_file_size,
        }
    }
}

fn print_report(verb: &str, r: &PackReport) {
    let truncated = if r.truncated.is_empty() {
        String::new()
    } else {
        format!(", {} of them truncated", r.truncated.len())
    };
    eprintln!(
        "vantix-pack: {verb} {} images ({} classes, {} skipped{truncated}) into {} in {:.1}s ({:.0} images/s), {} in {} shard(s)",
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
        Some(Command::Merge {
            parts,
            output,
            overwrite,
            quiet,
        }) => {
            let opts = MergeOptions {
                overwrite,
                progress: !quiet && std::io::stderr().is_terminal(),
            };
            merge(&parts, &output, &opts).map(|r| {
                if !quiet {
                    print_report(&format!("merged {} parts:", parts.len()), &r);
                }
            })
        }
        Some(Command::Append {
            src,
            output,
            new_classes,
            shard_size,
            num_threads,
            strict,
            allow_truncated,
            allow_empty,
            quiet,
        }) => {
            let opts = AppendOptions {
                shard_size,
                num_threads,
                strict,
                new_classes,
                progress: !quiet && std::io::stderr().is_terminal(),
                report_skipped: true,
                interrupt: None,
                allow_truncated,
                allow_empty,
            };
            append(&src, &output, &opts).map(|r| {
                if !quiet {
                    print_report("appended", &r);
                }
            })
        }
        None => {
            let a = &cli.pack;
            let (src, out) = (
                a.src.clone().expect("required"),
                a.output.clone().expect("required"),
            );
            pack(&src, &out, &a.options()).map(|r| {
                if !a.quiet {
                    let verb = match a.part {
                        Some((i, n)) => format!("packed part {i}/{n}:"),
                        None => "packed".to_string(),
                    };
                    print_report(&verb, &r);
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
    use crate::pack::DEFAULT_SHARD_SIZE;
    use clap::CommandFactory;

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

    /// A pack command line with `args` (and `--size 8` unless they give a size).
    fn parse(args: &[&str]) -> Result<Cli, String> {
        let size: &[&str] = if args.contains(&"--size") {
            &[]
        } else {
            &["--size", "8"]
        };
        let argv = ["vantix-pack", "./t", "-o", "t.vtx"]
            .iter()
            .chain(size)
            .chain(args);
        Cli::try_parse_from(argv).map_err(|e| e.to_string())
    }

    #[test]
    fn every_option_enum_parses_its_names_and_lists_them_when_wrong() {
        fn check<T: FromStr<Err = vantix_read::Error> + PartialEq + std::fmt::Debug + Copy>(
            all: &[T],
            name: fn(T) -> &'static str,
            listed: &str,
        ) {
            for &v in all {
                assert_eq!(name(v).parse::<T>().unwrap(), v);
            }
            let e = "bogus".parse::<T>().unwrap_err();
            assert!(matches!(e, vantix_read::Error::Invalid(_)));
            assert_eq!(e.to_string(), format!("{listed}, got \"bogus\""));
        }
        check(
            &ResizeMode::ALL,
            ResizeMode::name,
            "mode must be one of 'center-crop', 'squash' or 'pad'",
        );
        check(
            &Interpolation::ALL,
            Interpolation::name,
            "interpolation must be one of 'nearest', 'bilinear', 'bicubic', 'lanczos', 'box' or 'hamming'",
        );
        check(
            &Filter::ALL,
            Filter::name,
            "filter must be one of 'none', 'left', 'up', 'avg' or 'paeth'",
        );
        check(
            &DictionaryMode::ALL,
            DictionaryMode::name,
            "dictionary must be one of 'auto', 'on' or 'off'",
        );
        check(
            &vantix_read::Verify::ALL,
            vantix_read::Verify::name,
            "verify must be one of 'none', 'shard' or 'record'",
        );
        let zstd = Codec::Zstd {
            level: Codec::DEFAULT_LEVEL,
            filter: Codec::DEFAULT_FILTER,
        };
        check(
            &[Codec::Raw, zstd],
            Codec::name,
            "codec must be one of 'raw' or 'zstd'",
        );
        assert_eq!(Codec::NAMES, [Codec::Raw.name(), zstd.name()]);
        assert_eq!(
            "center_crop".parse::<ResizeMode>().unwrap(),
            ResizeMode::CenterCrop
        );
        assert_eq!(Codec::Raw.with_zstd_settings(9, Filter::Avg), Codec::Raw);
        assert_eq!(
            zstd.with_zstd_settings(9, Filter::Avg),
            Codec::Zstd {
                level: 9,
                filter: Filter::Avg
            }
        );
    }

    #[test]
    fn an_invalid_choice_on_the_command_line_lists_the_choices() {
        for (flag, listed) in [
            (
                "--mode",
                "mode must be one of 'center-crop', 'squash' or 'pad', got \"bogus\"",
            ),
            (
                "--interpolation",
                "interpolation must be one of 'nearest', 'bilinear'",
            ),
            (
                "--codec",
                "codec must be one of 'raw' or 'zstd', got \"bogus\"",
            ),
            (
                "--filter",
                "filter must be one of 'none', 'left', 'up', 'avg' or 'paeth'",
            ),
            (
                "--dictionary",
                "dictionary must be one of 'auto', 'on' or 'off', got \"bogus\"",
            ),
            (
                "--zstd-dict",
                "dictionary must be one of 'auto', 'on' or 'off'",
            ),
        ] {
            let e = parse(&[flag, "bogus"]).unwrap_err();
            assert!(e.contains(listed) && e.contains("'bogus'"), "{flag}: {e}");
        }
        // The help still lists them.
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("[possible values: center-crop, squash, pad]"),
            "{help}"
        );
        assert!(help.contains("[possible values: raw, zstd]"), "{help}");
    }

    /// Debug of `PackOptions` without the terminal-dependent progress flag.
    fn shown(o: &PackOptions) -> String {
        format!(
            "{:?}",
            PackOptions {
                progress: false,
                ..o.clone()
            }
        )
    }

    #[test]
    fn the_flags_defaults_are_the_library_defaults() {
        let c = parse(&["--size", "224"]).unwrap();
        assert_eq!(shown(&c.pack.options()), shown(&PackOptions::default()));
        assert_eq!(parse_bytes("512M"), Ok(DEFAULT_SHARD_SIZE));
        assert_eq!(parse_bytes("1G"), Ok(crate::DEFAULT_MAX_FILE_BYTES));
        // --codec zstd alone: zstd's default level and filter.
        let c = parse(&["--codec", "zstd"]).unwrap();
        assert_eq!(
            c.pack.options().codec,
            Codec::Zstd {
                level: Codec::DEFAULT_LEVEL,
                filter: Codec::DEFAULT_FILTER
            }
        );
        let c = Cli::try_parse_from(["vantix-pack", "append", "./t", "-o", "t.vtx"]).unwrap();
        let Some(Command::Append {
            shard_size,
            num_threads,
            ..
        }) = c.command
        else {
            panic!("append")
        };
        let d = AppendOptions::default();
        assert_eq!((shard_size, num_threads), (d.shard_size, d.num_threads));
    }

    #[test]
    fn old_spellings_still_parse() {
        for flag in ["-j", "--jobs", "--num-threads"] {
            assert_eq!(
                parse(&[flag, "2"]).unwrap().pack.num_threads,
                Some(2),
                "{flag}"
            );
        }
        for flag in ["--zstd-dict", "--dictionary"] {
            let c = parse(&["--codec", "zstd", flag, "on"]).unwrap();
            assert_eq!(c.pack.options().dictionary, DictionaryMode::On, "{flag}");
        }
        let c = Cli::try_parse_from(["vantix-pack", "append", "./t", "-o", "t.vtx", "--jobs", "3"])
            .unwrap();
        assert!(matches!(
            c.command,
            Some(Command::Append {
                num_threads: Some(3),
                ..
            })
        ));
        // WxH: width first.
        let o = parse(&["--size", "256x192"]).unwrap().pack.options();
        assert_eq!((o.spec.width, o.spec.height), (256, 192));
    }

    #[test]
    fn part_merge_and_append_parse() {
        assert_eq!(parse_part("0/64"), Ok((0, 64)));
        assert_eq!(parse_part("63/64"), Ok((63, 64)));
        assert!(parse_part("64/64").unwrap_err().contains("from 0"));
        assert!(parse_part("0/0").unwrap_err().contains("at least 1"));
        assert!(parse_part("3").is_err() && parse_part("a/b").is_err());
        let c = Cli::try_parse_from([
            "vantix-pack",
            "./t",
            "--size",
            "8",
            "-o",
            "p.vtx",
            "--part",
            "2/3",
        ])
        .unwrap();
        assert_eq!(c.pack.part, Some((2, 3)));
        let c =
            Cli::try_parse_from(["vantix-pack", "merge", "a.vtx", "b.vtx", "-o", "t.vtx"]).unwrap();
        assert!(matches!(c.command, Some(Command::Merge { ref parts, .. }) if parts.len() == 2));
        let c = Cli::try_parse_from(["vantix-pack", "append", "./t", "-o", "t.vtx"]).unwrap();
        assert!(
            matches!(c.command, Some(Command::Append { shard_size, .. }) if shard_size == DEFAULT_SHARD_SIZE)
        );
    }
}
