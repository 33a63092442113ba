//! Per-sample augmentation and output conversion, applied by the assembler while it writes a
//! record into its slot of the batch buffer (no intermediate batch, no second pass).
//!
//! The operations and their words are torchvision's:
//!
//! * `RandomCrop(size, padding=p)`: pad every side by `p` zeros, crop `size` at a uniformly
//!   random position;
//! * `RandomResizedCrop(size, scale, ratio)`: `RandomResizedCrop.get_params`'s sampling rule,
//!   then an antialiased bilinear resize of the crop to `size` (Pillow's algorithm, by
//!   `fast_image_resize`);
//! * `CenterCrop(size)`: torchvision's placement (`int(round((H - h) / 2))`, halves to even;
//!   zero padding where the crop is larger than the image);
//! * `RandomHorizontalFlip(p)`;
//! * `ToTensor()` + `Normalize(mean, std)`: `(x / 255 - mean) / std` in float32 arithmetic
//!   (float16 output rounds that float32 value to nearest). A float dtype without normalisation
//!   gives `x / 255`, as `ToTensor` alone; uint8 output keeps the pixel values.
//!
//! Output is `[B, H, W, C]` (NHWC) or `[B, C, H, W]` (NCHW) in uint8, float32 or float16, with
//! `C` the packed channel count (1 grey, 3 RGB, 4 RGBA). Every operation treats the channels
//! alike and independently, as torchvision's tensor ops do: a random-resized-crop of RGBA
//! records resizes the alpha channel as a fourth channel (no premultiplication), and
//! `Normalize` takes one mean and one std per channel.
//!
//! Randomness is a pure function of `(seed, epoch, sample index)`: sample `i` of epoch `e` draws
//! from `SplitMix64(mix([seed, e, i, TRANSFORM_STREAM]))`, in this order: the crop (random crop:
//! `top = below(H + 2p - h + 1)`, then `left = below(W + 2p - w + 1)`; random-resized-crop: up to
//! ten attempts of `area = H * W * (s0 + (s1 - s0) * next_f64())`, `ratio = exp(log r0 +
//! (log r1 - log r0) * next_f64())`, then on success `top = below(H - h + 1)`,
//! `left = below(W - w + 1)`), then, when `hflip > 0`, `flip = next_f64() < hflip`. A sample is
//! therefore augmented the same way whatever the thread count, batch size or rank, and
//! differently in another epoch.

use std::cell::RefCell;

use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::error::{Error, Result};
use crate::sampler::{mix, SplitMix64};

/// Fourth word of the per-sample seed, keeping augmentation draws apart from every other stream.
pub const TRANSFORM_STREAM: u64 = u64::from_be_bytes(*b"vtxaugmt");

/// Largest output image (after crop and conversion) a loader assembles: 1 GiB (e.g. 16384 x
/// 16384 RGBA uint8, or 8192 x 8192 RGBA float32). Larger is a `VantixError` naming the option.
pub const MAX_SAMPLE_BYTES: u64 = 1 << 30;
/// Largest batch buffer (`batch_size` output images): 8 GiB. On top of it, the batch buffers a
/// loader can hold (`prefetch + 2`) must fit in half the memory of the machine (or of its
/// cgroup), see [`Prepared::check_batch_memory`].
pub const MAX_BATCH_BYTES: u64 = 8 << 30;

/// `n` bytes in binary units, for messages.
fn gib(n: u128) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    }
}

/// Memory this process can use: the physical memory, or the cgroup's limit when lower
/// (`memory.max` of cgroup v2, `memory.limit_in_bytes` of v1). `None` when unknown.
pub fn memory_limit() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGE_SIZE),
        )
    };
    let physical = (pages > 0 && page > 0).then(|| pages as u64 * page as u64);
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|t| t.trim().parse::<u64>().ok())
    .min();
    match (physical, cgroup) {
        (Some(p), Some(c)) => Some(p.min(c)),
        (p, c) => p.or(c),
    }
}

/// Element type of the output images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DType {
    #[default]
    Uint8,
    Float32,
    Float16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Uint8 => 1,
            DType::Float32 => 4,
            DType::Float16 => 2,
        }
    }
    /// numpy's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            DType::Uint8 => "uint8",
            DType::Float32 => "float32",
            DType::Float16 => "float16",
        }
    }
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "uint8" => Some(DType::Uint8),
            "float32" => Some(DType::Float32),
            "float16" => Some(DType::Float16),
            _ => None,
        }
    }
}

/// Memory layout of the output images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// `[B, H, W, C]`, the packed layout (channels last).
    #[default]
    Nhwc,
    /// `[B, C, H, W]`, PyTorch's default layout (channel planes).
    Nchw,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Nhwc => "NHWC",
            Layout::Nchw => "NCHW",
        }
    }
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "NHWC" | "nhwc" => Some(Layout::Nhwc),
            "NCHW" | "nchw" => Some(Layout::Nchw),
            _ => None,
        }
    }
}

/// What the assembler does to every image. The default is the identity: the packed uint8 NHWC
/// records, copied as they are.
#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    /// `RandomCrop((h, w), padding)`: output `(height, width)`.
    pub random_crop: Option<(u32, u32)>,
    /// Zeros added on every side before a random crop (`RandomCrop`'s `padding`).
    pub padding: u32,
    /// `RandomResizedCrop((h, w), scale, ratio)`: output `(height, width)`.
    pub random_resized_crop: Option<(u32, u32)>,
    /// Range of the crop's area as a fraction of the image's (`RandomResizedCrop`'s `scale`).
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio `w / h`, drawn log-uniformly (`ratio`).
    pub ratio: (f64, f64),
    /// `CenterCrop((h, w))`: output `(height, width)`.
    pub center_crop: Option<(u32, u32)>,
    /// Probability of a horizontal flip (`RandomHorizontalFlip(p)`).
    pub hflip: f64,
    /// `Normalize`'s mean, one per channel (in the packed channel order), on the 0-1 scale
    /// (float output only). Empty: 0 for every channel (no normalisation).
    pub mean: Vec<f32>,
    /// `Normalize`'s std, one per channel, on the 0-1 scale (float output only). Empty: 1 for
    /// every channel.
    pub std: Vec<f32>,
    pub dtype: DType,
    pub layout: Layout,
}

impl Default for Transform {
    fn default() -> Self {
        Transform {
            random_crop: None,
            padding: 0,
            random_resized_crop: None,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            center_crop: None,
            hflip: 0.0,
            mean: Vec::new(),
            std: Vec::new(),
            dtype: DType::Uint8,
            layout: Layout::Nhwc,
        }
    }
}

/// The parameters drawn for one sample. Reproduce them with torchvision's functional ops on the
/// packed image: `F.crop(img, top, left, height, width)` (zero fill outside the image), then
/// `F.resize(..., size, antialias=True)` for a random-resized-crop, then `F.hflip` if `flip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Top row of the crop in the packed image; negative inside the zero padding (a random
    /// crop's torchvision `i` on the padded image is `top + padding`).
    pub top: i64,
    /// Left column of the crop in the packed image; negative inside the zero padding.
    pub left: i64,
    /// Crop height in packed-image pixels.
    pub height: u32,
    /// Crop width in packed-image pixels.
    pub width: u32,
    pub flip: bool,
}

fn round_half_even(x: f64) -> i64 {
    x.round_ties_even() as i64
}

impl Transform {
    /// True when the output is the packed records unchanged (the plain-copy fast path).
    pub fn is_identity(&self) -> bool {
        self.random_crop.is_none()
            && self.random_resized_crop.is_none()
            && self.center_crop.is_none()
            && self.hflip <= 0.0
            && self.dtype == DType::Uint8
            && self.layout == Layout::Nhwc
    }

    fn is_normalizing(&self) -> bool {
        self.mean.iter().any(|&m| m != 0.0) || self.std.iter().any(|&s| s != 1.0)
    }

    /// Check the options against images of `height x width x channels`.
    pub fn validate(&self, height: u32, width: u32, channels: u32) -> Result<()> {
        if channels == 0 || channels > crate::format::MAX_CHANNELS {
            return Err(Error::invalid(format!(
                "images with {channels} channels are not supported"
            )));
        }
        for (name, values) in [("mean", &self.mean), ("std", &self.std)] {
            if !values.is_empty() && values.len() != channels as usize {
                return Err(Error::invalid(format!(
                    "{name} has {} values but the images have {channels} channel{}: give one \
                     value per channel",
                    values.len(),
                    if channels == 1 { "" } else { "s" }
                )));
            }
        }
        let crops = [
            self.random_crop.is_some(),
            self.random_resized_crop.is_some(),
            self.center_crop.is_some(),
        ];
        if crops.iter().filter(|&&c| c).count() > 1 {
            return Err(Error::invalid(
                "at most one of random_crop, random_resized_crop and center_crop can be given",
            ));
        }
        for (name, size) in [
            ("random_crop", self.random_crop),
            ("random_resized_crop", self.random_resized_crop),
            ("center_crop", self.center_crop),
        ] {
            if let Some((h, w)) = size {
                if h == 0 || w == 0 || h > crate::format::MAX_SIDE || w > crate::format::MAX_SIDE {
                    return Err(Error::invalid(format!(
                        "{name} size ({h}, {w}) is out of range (1 to {} per side)",
                        crate::format::MAX_SIDE
                    )));
                }
            }
        }
        if self.padding > 0 && self.random_crop.is_none() {
            return Err(Error::invalid("padding is only used with random_crop"));
        }
        let (oh, ow) = self.output_size(height, width);
        let sample = oh as u128 * ow as u128 * channels as u128 * self.dtype.size() as u128;
        if sample > MAX_SAMPLE_BYTES as u128 {
            return Err(Error::invalid(format!(
                "{} gives output images of {oh}x{ow}x{channels} {} = {} each, over the limit of \
                 {} per image; choose a smaller size",
                self.size_option(height, width),
                self.dtype.name(),
                gib(sample),
                gib(MAX_SAMPLE_BYTES as u128)
            )));
        }
        if let Some((h, w)) = self.random_crop {
            let (ph, pw) = (
                height as u64 + 2 * self.padding as u64,
                width as u64 + 2 * self.padding as u64,
            );
            if h as u64 > ph || w as u64 > pw {
                return Err(Error::invalid(format!(
                    "random_crop size ({h}, {w}) is larger than the {}image ({ph}, {pw}); \
                     pack larger images or add padding",
                    if self.padding > 0 { "padded " } else { "" }
                )));
            }
        }
        let finite_pos = |(a, b): (f64, f64)| a.is_finite() && b.is_finite() && 0.0 < a && a <= b;
        if !finite_pos(self.scale) {
            return Err(Error::invalid(format!(
                "scale must be (low, high) with 0 < low <= high, got {:?}",
                self.scale
            )));
        }
        if !finite_pos(self.ratio) {
            return Err(Error::invalid(format!(
                "ratio must be (low, high) with 0 < low <= high, got {:?}",
                self.ratio
            )));
        }
        if !(0.0..=1.0).contains(&self.hflip) {
            return Err(Error::invalid(format!(
                "horizontal_flip is a probability in [0, 1], got {}",
                self.hflip
            )));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::invalid(format!(
                "mean must be finite, got {:?}",
                self.mean
            )));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err(Error::invalid(format!(
                "std must be finite and non-zero, got {:?}",
                self.std
            )));
        }
        if self.is_normalizing() && self.dtype == DType::Uint8 {
            return Err(Error::invalid(
                "mean/std normalisation needs a float dtype (float32 or float16)",
            ));
        }
        Ok(())
    }

    /// The option that decides the output size, for messages: `center_crop (h, w)` and the
    /// like, or the packed size.
    fn size_option(&self, height: u32, width: u32) -> String {
        [
            ("random_crop", self.random_crop),
            ("random_resized_crop", self.random_resized_crop),
            ("center_crop", self.center_crop),
        ]
        .into_iter()
        .find_map(|(name, s)| s.map(|(h, w)| format!("{name}=({h}, {w})")))
        .unwrap_or_else(|| format!("the packed image size ({height}, {width})"))
    }

    /// `(height, width)` of the output images for packed images of `height x width`.
    pub fn output_size(&self, height: u32, width: u32) -> (u32, u32) {
        self.random_crop
            .or(self.random_resized_crop)
            .or(self.center_crop)
            .unwrap_or((height, width))
    }

    /// Shape of a batch of `n` output images of `channels` channels, in the output layout.
    pub fn batch_shape(&self, n: usize, height: u32, width: u32, channels: u32) -> [usize; 4] {
        let (h, w) = self.output_size(height, width);
        let (h, w, c) = (h as usize, w as usize, channels as usize);
        match self.layout {
            Layout::Nhwc => [n, h, w, c],
            Layout::Nchw => [n, c, h, w],
        }
    }

    /// Bytes of one output image of `channels` channels.
    pub fn sample_bytes(&self, height: u32, width: u32, channels: u32) -> usize {
        let (h, w) = self.output_size(height, width);
        h as usize * w as usize * channels as usize * self.dtype.size()
    }

    /// The parameters drawn for dataset sample `index` of `epoch` (images of `height x width`).
    pub fn params(&self, height: u32, width: u32, seed: u64, epoch: u64, index: u64) -> Params {
        let (hh, ww) = (height as i64, width as i64);
        let mut rng = SplitMix64::new(mix(&[seed, epoch, index, TRANSFORM_STREAM]));
        let mut p = Params {
            top: 0,
            left: 0,
            height,
            width,
            flip: false,
        };
        if let Some((h, w)) = self.random_crop {
            let pad = self.padding as i64;
            let top = rng.below((hh + 2 * pad - h as i64 + 1) as u64) as i64;
            let left = rng.below((ww + 2 * pad - w as i64 + 1) as u64) as i64;
            p = Params {
                top: top - pad,
                left: left - pad,
                height: h,
                width: w,
                flip: false,
            };
        } else if self.random_resized_crop.is_some() {
            let (top, left, h, w) = self.rrc_params(&mut rng, height, width);
            p = Params {
                top,
                left,
                height: h,
                width: w,
                flip: false,
            };
        } else if let Some((h, w)) = self.center_crop {
            p = Params {
                top: center_offset(hh, h as i64),
                left: center_offset(ww, w as i64),
                height: h,
                width: w,
                flip: false,
            };
        }
        if self.hflip > 0.0 {
            p.flip = rng.next_f64() < self.hflip;
        }
        p
    }

    /// `RandomResizedCrop.get_params`: `(top, left, height, width)`.
    fn rrc_params(&self, rng: &mut SplitMix64, height: u32, width: u32) -> (i64, i64, u32, u32) {
        let (hh, ww) = (height as i64, width as i64);
        let area = hh as f64 * ww as f64;
        let (s0, s1) = self.scale;
        let (r0, r1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * (s0 + (s1 - s0) * rng.next_f64());
            let aspect = (r0 + (r1 - r0) * rng.next_f64()).exp();
            let w = round_half_even((target_area * aspect).sqrt());
            let h = round_half_even((target_area / aspect).sqrt());
            if 0 < w && w <= ww && 0 < h && h <= hh {
                let top = rng.below((hh - h + 1) as u64) as i64;
                let left = rng.below((ww - w + 1) as u64) as i64;
                return (top, left, h as u32, w as u32);
            }
        }
        // Fallback: a central crop, clamped to the ratio bounds.
        let in_ratio = ww as f64 / hh as f64;
        let (lo, hi) = self.ratio;
        let (w, h) = if in_ratio < lo {
            (ww, round_half_even(ww as f64 / lo))
        } else if in_ratio > hi {
            (round_half_even(hh as f64 * hi), hh)
        } else {
            (ww, hh)
        };
        let (w, h) = (w.clamp(1, ww), h.clamp(1, hh));
        ((hh - h) / 2, (ww - w) / 2, h as u32, w as u32)
    }

    /// Compile this transform for packed images of `height x width x channels` (checks it
    /// first).
    pub fn prepare(&self, height: u32, width: u32, channels: u32) -> Result<Prepared> {
        self.validate(height, width, channels)?;
        let c = channels as usize;
        let lut = match self.dtype {
            DType::Uint8 if self.layout == Layout::Nhwc => Lut::Direct,
            DType::Uint8 => Lut::U8(vec![std::array::from_fn(|v| v as u8); c]),
            DType::Float32 => Lut::F32(self.float_lut(c)),
            DType::Float16 => Lut::F16(
                self.float_lut(c)
                    .iter()
                    .map(|t| std::array::from_fn(|v| half::f16::from_f32(t[v]).to_bits()))
                    .collect(),
            ),
        };
        let (out_h, out_w) = self.output_size(height, width);
        Ok(Prepared {
            transform: self.clone(),
            identity: self.is_identity(),
            src_h: height,
            src_w: width,
            channels,
            out_h,
            out_w,
            lut,
        })
    }

    /// `(v / 255 - mean) / std` for every byte value and each of `channels` channels, in
    /// float32 as torchvision computes it (`ToTensor`'s `div(255)`, then `Normalize`'s
    /// `sub_(mean).div_(std)`).
    fn float_lut(&self, channels: usize) -> Vec<[f32; 256]> {
        (0..channels)
            .map(|c| {
                let mean = self.mean.get(c).copied().unwrap_or(0.0);
                let std = self.std.get(c).copied().unwrap_or(1.0);
                std::array::from_fn(|v| (v as f32 / 255.0 - mean) / std)
            })
            .collect()
    }
}

/// torchvision `CenterCrop`'s top (or left) for a crop of `crop` inside `size`; negative (zero
/// padding, `(crop - size) // 2` before) when the crop is larger.
fn center_offset(size: i64, crop: i64) -> i64 {
    if crop > size {
        -((crop - size) / 2)
    } else {
        round_half_even((size - crop) as f64 / 2.0)
    }
}

/// Conversion of a finished uint8 HWC row into the output element type: one table per channel.
enum Lut {
    /// uint8 NHWC: rows are written straight into the output.
    Direct,
    U8(Vec<[u8; 256]>),
    F32(Vec<[f32; 256]>),
    /// float16 bit patterns.
    F16(Vec<[u16; 256]>),
}

/// A [`Transform`] compiled for one image geometry: conversion tables computed once.
pub struct Prepared {
    transform: Transform,
    identity: bool,
    src_h: u32,
    src_w: u32,
    channels: u32,
    out_h: u32,
    out_w: u32,
    lut: Lut,
}

thread_local! {
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
    /// One output row (uint8 HWC) before conversion.
    static ROW: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// A resized crop (uint8 HWC) before conversion.
    static RESIZED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Prepared {
    /// Check that batches of `batch_size` images fit: one batch at most [`MAX_BATCH_BYTES`],
    /// and the `buffers` batches a loader can hold at once (`prefetch + 2`: the queue, the one
    /// being assembled, the one the consumer holds) at most half of [`memory_limit`]. An error
    /// names the options instead of an abort or an out-of-memory kill at the first batch.
    pub fn check_batch_memory(&self, batch_size: usize, buffers: usize) -> Result<()> {
        let sample = self.sample_bytes() as u128;
        let batch = sample * batch_size as u128;
        let total = batch * buffers as u128;
        let what = || {
            format!(
                "batch_size={batch_size} images of {}x{}x{} {} ({}, {} each)",
                self.out_h,
                self.out_w,
                self.channels,
                self.transform.dtype.name(),
                self.transform.size_option(self.src_h, self.src_w),
                gib(sample)
            )
        };
        if batch > MAX_BATCH_BYTES as u128 {
            return Err(Error::invalid(format!(
                "{} make batches of {}, over the limit of {} per batch; lower batch_size or \
                 the output size",
                what(),
                gib(batch),
                gib(MAX_BATCH_BYTES as u128)
            )));
        }
        if let Some(limit) = memory_limit() {
            if total > limit as u128 / 2 {
                return Err(Error::invalid(format!(
                    "{} make batches of {}; the loader holds up to {buffers} of them (prefetch \
                     + 2), {}, over half of this machine's memory ({} of {}); lower \
                     batch_size, prefetch or the output size",
                    what(),
                    gib(batch),
                    gib(total),
                    gib(limit as u128 / 2),
                    gib(limit as u128)
                )));
            }
        }
        Ok(())
    }

    pub fn transform(&self) -> &Transform {
        &self.transform
    }
    /// True when records are copied unchanged.
    pub fn is_identity(&self) -> bool {
        self.identity
    }
    /// Bytes of one output image.
    pub fn sample_bytes(&self) -> usize {
        self.transform
            .sample_bytes(self.src_h, self.src_w, self.channels)
    }
    /// Shape of a batch of `n` output images, in the output layout.
    pub fn batch_shape(&self, n: usize) -> [usize; 4] {
        self.transform
            .batch_shape(n, self.src_h, self.src_w, self.channels)
    }
    /// Parameters drawn for dataset sample `index` of `epoch`.
    pub fn params(&self, seed: u64, epoch: u64, index: u64) -> Params {
        self.transform
            .params(self.src_h, self.src_w, seed, epoch, index)
    }

    /// Write the transformed image of `src` (one packed record) into `out` (`sample_bytes()`
    /// long, aligned for the output type).
    pub fn apply(&self, src: &[u8], p: &Params, out: &mut [u8]) -> Result<()> {
        let (sh, sw) = (self.src_h, self.src_w);
        let (oh, ow) = (self.out_h as usize, self.out_w as usize);
        let c = self.channels as usize;
        if src.len() != sh as usize * sw as usize * c || out.len() != self.sample_bytes() {
            return Err(Error::invalid(
                "transform: record or output slot has the wrong size",
            ));
        }
        let rrc = self.transform.random_resized_crop.is_some();
        let row_bytes = c * ow;
        if let Lut::Direct = self.lut {
            if rrc && !p.flip {
                resize_crop(src, (sh, sw, c), p, out, (oh as u32, ow as u32))?;
            } else if rrc {
                RESIZED.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    buf.resize(oh * row_bytes, 0);
                    resize_crop(src, (sh, sw, c), p, &mut buf, (oh as u32, ow as u32))?;
                    let rows = out
                        .chunks_exact_mut(row_bytes)
                        .zip(buf.chunks_exact(row_bytes));
                    rows.for_each(|(d, s)| copy_reversed(d, s, c));
                    Ok::<_, Error>(())
                })?;
            } else {
                for (y, row) in out.chunks_exact_mut(row_bytes).enumerate() {
                    fill_row(src, (sh, sw, c), p.top + y as i64, p.left, p.flip, row);
                }
            }
            return Ok(());
        }
        ROW.with(|row| {
            let mut row = row.borrow_mut();
            row.resize(row_bytes, 0);
            let mut emit = |img: &[u8], (ih, iw): (u32, u32), top: i64, left: i64| {
                for y in 0..oh {
                    fill_row(img, (ih, iw, c), top + y as i64, left, p.flip, &mut row[..]);
                    match &self.lut {
                        Lut::Direct => unreachable!(),
                        Lut::U8(t) => store(t, &row, y, oh, self.transform.layout, &mut *out),
                        Lut::F32(t) => {
                            store(t, &row, y, oh, self.transform.layout, cast(&mut *out))
                        }
                        Lut::F16(t) => {
                            store(t, &row, y, oh, self.transform.layout, cast(&mut *out))
                        }
                    }
                }
            };
            if rrc {
                RESIZED.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    buf.resize(oh * row_bytes, 0);
                    resize_crop(src, (sh, sw, c), p, &mut buf, (oh as u32, ow as u32))?;
                    emit(&buf, (oh as u32, ow as u32), 0, 0);
                    Ok(())
                })
            } else {
                emit(src, (sh, sw), p.top, p.left);
                Ok(())
            }
        })
    }
}

/// View an output slot as elements of `T` (the pool's buffers and slot sizes keep it aligned).
fn cast<T: Copy>(out: &mut [u8]) -> &mut [T] {
    // SAFETY: `T` is only ever `f32` or `u16`, for which every bit pattern is valid.
    let (head, body, tail) = unsafe { out.align_to_mut::<T>() };
    assert!(
        head.is_empty() && tail.is_empty(),
        "output buffer is not aligned for its element type"
    );
    body
}

/// Resize the crop `p` of `src` (HWC, `sh x sw x c`) to `dst` (`oh x ow`): antialiased
/// bilinear, Pillow's convolution resize, on the crop alone (as `F.resized_crop` crops, then
/// resizes), every channel on its own (alpha included, as a tensor resize does).
fn resize_crop(
    src: &[u8],
    (sh, sw, c): (u32, u32, usize),
    p: &Params,
    dst: &mut [u8],
    (oh, ow): (u32, u32),
) -> Result<()> {
    let bad = |e: &dyn std::fmt::Display| Error::invalid(format!("random_resized_crop: {e}"));
    let pt = match c {
        1 => PixelType::U8,
        2 => PixelType::U8x2,
        3 => PixelType::U8x3,
        _ => PixelType::U8x4,
    };
    let src = ImageRef::new(sw, sh, src, pt).map_err(|e| bad(&e))?;
    let crop = CroppedImage::new(&src, p.left as u32, p.top as u32, p.width, p.height)
        .map_err(|e| bad(&e))?;
    let mut dst = Image::from_slice_u8(ow, oh, dst, pt).map_err(|e| bad(&e))?;
    let opts = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .use_alpha(false);
    RESIZER
        .with(|r| r.borrow_mut().resize(&crop, &mut dst, &opts))
        .map_err(|e| bad(&e))
}

/// Output row (uint8 HWC, `dst.len() / c` pixels) taken from row `sy` of `src` (HWC,
/// `sh x sw x c`) starting at column `left`, zeros outside the image, mirrored if `flip`.
fn fill_row(
    src: &[u8],
    (sh, sw, c): (u32, u32, usize),
    sy: i64,
    left: i64,
    flip: bool,
    dst: &mut [u8],
) {
    let ow = (dst.len() / c) as i64;
    // Output columns [x0, x1) read source columns left + x.
    let x0 = (-left).clamp(0, ow);
    let x1 = (sw as i64 - left).clamp(x0, ow);
    if sy < 0 || sy >= sh as i64 || x0 == x1 {
        dst.fill(0);
        return;
    }
    let row = &src[sy as usize * sw as usize * c..][..sw as usize * c];
    let seg = &row[c * (left + x0) as usize..c * (left + x1) as usize];
    let (a, b) = if flip { (ow - x1, ow - x0) } else { (x0, x1) };
    let (a, b) = (c * a as usize, c * b as usize);
    dst[..a].fill(0);
    if flip {
        copy_reversed(&mut dst[a..b], seg, c);
    } else {
        dst[a..b].copy_from_slice(seg);
    }
    dst[b..].fill(0);
}

/// `dst` = the `c`-channel pixels of `src` in reverse order (same length).
fn copy_reversed(dst: &mut [u8], src: &[u8], c: usize) {
    match c {
        3 => copy_reversed_rgb(dst, src),
        1 => dst
            .iter_mut()
            .zip(src.iter().rev())
            .for_each(|(d, s)| *d = *s),
        4 => {
            let pixels = dst.chunks_exact_mut(4).zip(src.chunks_exact(4).rev());
            pixels.for_each(|(d, s)| d.copy_from_slice(s));
        }
        _ => {
            let pixels = dst.chunks_exact_mut(c).zip(src.chunks_exact(c).rev());
            pixels.for_each(|(d, s)| d.copy_from_slice(s));
        }
    }
}

/// `dst` = the RGB pixels of `src` in reverse order (same length).
fn copy_reversed_rgb(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("ssse3") {
        // SAFETY: the CPU has SSSE3 (checked just above).
        let done = unsafe { copy_reversed_rgb_ssse3(dst, src) };
        // The first `done` pixels of `dst` are the last `done` of `src`.
        let n = src.len() - 3 * done;
        copy_reversed_rgb_scalar(&mut dst[3 * done..], &src[..n]);
        return;
    }
    copy_reversed_rgb_scalar(dst, src);
}

/// Five pixels per step with one byte shuffle; returns the pixels done (a multiple of 5, the
/// rest is left to the caller). Loads and stores 16 bytes for 15, so it stops while both stay
/// inside the slices.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3")]
unsafe fn copy_reversed_rgb_ssse3(dst: &mut [u8], src: &[u8]) -> usize {
    use std::arch::x86_64::_mm_storeu_si128;
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_setr_epi8, _mm_shuffle_epi8};
    // Register byte 1 + 3 * (4 - q) + c (source pixel 4 - q of the block, loaded from one byte
    // before it) goes to byte 3 * q + c; byte 15 is junk, overwritten by the next store.
    let mask = _mm_setr_epi8(13, 14, 15, 10, 11, 12, 7, 8, 9, 4, 5, 6, 1, 2, 3, 0);
    let n = src.len() / 3;
    let mut k = 0;
    while k + 6 <= n {
        // Source pixels n-5-k .. n-1-k, loaded from the byte before the first.
        let from = 3 * (n - 5 - k) - 1;
        // SAFETY: both slices are `3 * n` bytes; `k + 6 <= n` gives `from >= 2`,
        // `from + 16 = 3 * (n - k) <= 3 * n` and `3 * k + 16 <= 3 * n`. Unaligned accesses.
        unsafe {
            let v = _mm_loadu_si128(src.as_ptr().add(from) as *const __m128i);
            let r = _mm_shuffle_epi8(v, mask);
            _mm_storeu_si128(dst.as_mut_ptr().add(3 * k) as *mut __m128i, r);
        }
        k += 5;
    }
    k
}

fn copy_reversed_rgb_scalar(dst: &mut [u8], src: &[u8]) {
    // Four pixels (12 bytes) per step: fixed-size moves the compiler turns into plain loads.
    let mut d = dst.chunks_exact_mut(12);
    let mut s = src.rchunks_exact(12);
    for (d, s) in (&mut d).zip(&mut s) {
        d[0..3].copy_from_slice(&s[9..12]);
        d[3..6].copy_from_slice(&s[6..9]);
        d[6..9].copy_from_slice(&s[3..6]);
        d[9..12].copy_from_slice(&s[0..3]);
    }
    let (d, s) = (d.into_remainder(), s.remainder());
    for (d, s) in d.chunks_exact_mut(3).zip(s.rchunks_exact(3)) {
        d.copy_from_slice(s);
    }
}

/// Convert one uint8 HWC row (`y` of `oh`) through `lut` (one table per channel) into `out`
/// (one output image).
fn store<T: Copy>(
    lut: &[[T; 256]],
    row: &[u8],
    y: usize,
    oh: usize,
    layout: Layout,
    out: &mut [T],
) {
    match lut.len() {
        3 => store_rgb(lut.try_into().unwrap(), row, y, oh, layout, out),
        1 => store_n::<T, 1>(lut.try_into().unwrap(), row, y, oh, layout, out),
        4 => store_n::<T, 4>(lut.try_into().unwrap(), row, y, oh, layout, out),
        2 => store_n::<T, 2>(lut.try_into().unwrap(), row, y, oh, layout, out),
        c => unreachable!("{c} channels"),
    }
}

/// [`store`] for `C` channels.
fn store_n<T: Copy, const C: usize>(
    lut: &[[T; 256]; C],
    row: &[u8],
    y: usize,
    oh: usize,
    layout: Layout,
    out: &mut [T],
) {
    let ow = row.len() / C;
    match layout {
        Layout::Nhwc => {
            let o = &mut out[y * ow * C..][..ow * C];
            for (d, s) in o.chunks_exact_mut(C).zip(row.chunks_exact(C)) {
                for k in 0..C {
                    d[k] = lut[k][s[k] as usize];
                }
            }
        }
        Layout::Nchw => {
            let plane = oh * ow;
            for (k, t) in lut.iter().enumerate() {
                let o = &mut out[k * plane + y * ow..][..ow];
                for (d, s) in o.iter_mut().zip(row.chunks_exact(C)) {
                    *d = t[s[k] as usize];
                }
            }
        }
    }
}

/// [`store`] for RGB.
fn store_rgb<T: Copy>(
    lut: &[[T; 256]; 3],
    row: &[u8],
    y: usize,
    oh: usize,
    layout: Layout,
    out: &mut [T],
) {
    let ow = row.len() / 3;
    match layout {
        Layout::Nhwc => {
            let o = &mut out[y * ow * 3..][..ow * 3];
            for (d, s) in o.chunks_exact_mut(3).zip(row.chunks_exact(3)) {
                d[0] = lut[0][s[0] as usize];
                d[1] = lut[1][s[1] as usize];
                d[2] = lut[2][s[2] as usize];
            }
        }
        Layout::Nchw => {
            let plane = oh * ow;
            let (r, rest) = out.split_at_mut(plane);
            let (g, b) = rest.split_at_mut(plane);
            let (r, g, b) = (
                &mut r[y * ow..][..ow],
                &mut g[y * ow..][..ow],
                &mut b[y * ow..][..ow],
            );
            for (x, s) in row.chunks_exact(3).enumerate() {
                r[x] = lut[0][s[0] as usize];
                g[x] = lut[1][s[1] as usize];
                b[x] = lut[2][s[2] as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 5 x 4 RGB image whose pixel (y, x) is (10y + x, 100 + 10y + x, 200 + y + x).
    fn image(h: u32, w: u32) -> Vec<u8> {
        let mut v = Vec::new();
        for y in 0..h {
            for x in 0..w {
                v.extend([
                    (10 * y + x) as u8,
                    (100 + 10 * y + x) as u8,
                    (200 + y + x) as u8,
                ]);
            }
        }
        v
    }

    /// The reference: crop with zero fill, then flip, pixel by pixel.
    fn naive(src: &[u8], (sh, sw): (u32, u32), p: &Params) -> Vec<u8> {
        let mut out = Vec::new();
        for y in 0..p.height as i64 {
            for x in 0..p.width as i64 {
                let xx = if p.flip { p.width as i64 - 1 - x } else { x };
                let (sy, sx) = (p.top + y, p.left + xx);
                for c in 0..3 {
                    let inside = (0..sh as i64).contains(&sy) && (0..sw as i64).contains(&sx);
                    out.push(if inside {
                        src[(sy as usize * sw as usize + sx as usize) * 3 + c]
                    } else {
                        0
                    });
                }
            }
        }
        out
    }

    #[test]
    fn crops_with_padding_and_flip_match_a_naive_reference() {
        let (sh, sw) = (5, 7);
        let src = image(sh, sw);
        for size in [(3, 4), (5, 7), (9, 2), (2, 11), (1, 1)] {
            let t = Transform {
                random_crop: Some(size),
                padding: 3,
                hflip: 0.5,
                ..Default::default()
            };
            let prep = t.prepare(sh, sw, 3).unwrap();
            let mut flips = 0;
            for i in 0..200 {
                let p = prep.params(9, 1, i);
                assert!(p.top >= -3 && p.top + size.0 as i64 <= sh as i64 + 3);
                assert!(p.left >= -3 && p.left + size.1 as i64 <= sw as i64 + 3);
                flips += p.flip as u32;
                let mut out = vec![0u8; prep.sample_bytes()];
                prep.apply(&src, &p, &mut out).unwrap();
                assert_eq!(out, naive(&src, (sh, sw), &p), "size {size:?}, {p:?}");
            }
            assert!((60..140).contains(&flips), "{flips} flips of 200");
        }
    }

    /// `naive` for `c` channels.
    fn naive_c(src: &[u8], (sh, sw, c): (u32, u32, usize), p: &Params) -> Vec<u8> {
        let mut out = Vec::new();
        for y in 0..p.height as i64 {
            for x in 0..p.width as i64 {
                let xx = if p.flip { p.width as i64 - 1 - x } else { x };
                let (sy, sx) = (p.top + y, p.left + xx);
                let inside = (0..sh as i64).contains(&sy) && (0..sw as i64).contains(&sx);
                for k in 0..c {
                    out.push(if inside {
                        src[(sy as usize * sw as usize + sx as usize) * c + k]
                    } else {
                        0
                    });
                }
            }
        }
        out
    }

    #[test]
    fn grey_and_rgba_crops_flips_and_float_layouts() {
        let (sh, sw) = (6u32, 9u32);
        for c in [1usize, 4] {
            let src: Vec<u8> = (0..sh as usize * sw as usize * c)
                .map(|i| (i * 29 % 256) as u8)
                .collect();
            let mean: Vec<f32> = (0..c).map(|k| 0.1 * k as f32 + 0.3).collect();
            let std: Vec<f32> = (0..c).map(|k| 0.2 + 0.05 * k as f32).collect();
            for layout in [Layout::Nhwc, Layout::Nchw] {
                for dtype in [DType::Uint8, DType::Float32] {
                    let float = dtype == DType::Float32;
                    let t = Transform {
                        random_crop: Some((4, 5)),
                        padding: 2,
                        hflip: 0.5,
                        mean: if float { mean.clone() } else { vec![] },
                        std: if float { std.clone() } else { vec![] },
                        dtype,
                        layout,
                        ..Default::default()
                    };
                    let prep = t.prepare(sh, sw, c as u32).unwrap();
                    let shape = prep.batch_shape(2);
                    match layout {
                        Layout::Nhwc => assert_eq!(shape, [2, 4, 5, c]),
                        Layout::Nchw => assert_eq!(shape, [2, c, 4, 5]),
                    }
                    for i in 0..40 {
                        let p = prep.params(1, 0, i);
                        let want = naive_c(&src, (sh, sw, c), &p);
                        let mut out = vec![0f32; prep.sample_bytes() / 4 + 1];
                        // SAFETY: any bytes are valid f32 storage; the slice is in bounds.
                        let bytes = unsafe {
                            std::slice::from_raw_parts_mut(
                                out.as_mut_ptr() as *mut u8,
                                prep.sample_bytes(),
                            )
                        };
                        prep.apply(&src, &p, bytes).unwrap();
                        for (j, &v) in want.iter().enumerate() {
                            let (pix, k) = (j / c, j % c);
                            let at = match layout {
                                Layout::Nhwc => j,
                                Layout::Nchw => k * 20 + pix,
                            };
                            if float {
                                let f: &[f32] = cast(bytes);
                                assert_eq!(f[at], (v as f32 / 255.0 - mean[k]) / std[k]);
                            } else {
                                assert_eq!(bytes[at], v, "c {c} {layout:?} {p:?}");
                            }
                        }
                    }
                }
            }
            // Random-resized-crop to the crop's own size is a copy of the crop.
            let t = Transform {
                random_resized_crop: Some((3, 3)),
                scale: (0.1, 0.2),
                ratio: (1.0, 1.0),
                hflip: 0.5,
                ..Default::default()
            };
            let prep = t.prepare(sh, sw, c as u32).unwrap();
            for i in 0..20 {
                let p = prep.params(0, 0, i);
                let mut out = vec![0u8; prep.sample_bytes()];
                prep.apply(&src, &p, &mut out).unwrap();
                if (p.height, p.width) == (3, 3) {
                    assert_eq!(out, naive_c(&src, (sh, sw, c), &p));
                }
            }
        }
    }

    #[test]
    fn mean_and_std_need_one_value_per_channel() {
        let t = Transform {
            mean: vec![0.5; 3],
            std: vec![0.5; 3],
            dtype: DType::Float32,
            ..Default::default()
        };
        assert!(t.validate(8, 8, 3).is_ok());
        for c in [1, 4] {
            let e = t.validate(8, 8, c).unwrap_err().to_string();
            assert!(
                e.contains("mean has 3 values") && e.contains(&format!("{c} channel")),
                "{e}"
            );
        }
        assert!(Transform::default().validate(8, 8, 1).is_ok());
        assert!(Transform::default().validate(8, 8, 5).is_err());
    }

    #[test]
    fn reversed_copy_of_every_length() {
        for n in 0..70usize {
            let src: Vec<u8> = (0..3 * n).map(|b| (b * 7 + 1) as u8).collect();
            let mut dst = vec![0u8; 3 * n];
            copy_reversed_rgb(&mut dst, &src);
            let want: Vec<u8> = src.chunks(3).rev().flatten().copied().collect();
            assert_eq!(dst, want, "{n} pixels");
        }
    }

    #[test]
    fn center_crop_placement_is_torchvisions() {
        let t = |h, w| Transform {
            center_crop: Some((h, w)),
            ..Default::default()
        };
        // (H - h) / 2 = 1.5 -> 2 (half to even); 0.5 -> 0; larger crops pad (crop - size) // 2.
        assert_eq!(t(2, 4).params(5, 5, 0, 0, 0).top, 2);
        assert_eq!(t(4, 4).params(5, 5, 0, 0, 0).top, 0);
        assert_eq!(t(3, 3).params(4, 6, 0, 0, 0), t(3, 3).params(4, 6, 1, 2, 3));
        let p = t(8, 9).params(5, 6, 0, 0, 0);
        assert_eq!((p.top, p.left), (-1, -1));
    }

    #[test]
    fn float_output_is_normalised_in_both_layouts() {
        let (sh, sw) = (3, 4);
        let src = image(sh, sw);
        let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
        for layout in [Layout::Nhwc, Layout::Nchw] {
            let t = Transform {
                mean: mean.to_vec(),
                std: std.to_vec(),
                dtype: DType::Float32,
                layout,
                ..Default::default()
            };
            let prep = t.prepare(sh, sw, 3).unwrap();
            assert!(!prep.is_identity());
            let mut out = vec![0f32; prep.sample_bytes() / 4];
            // SAFETY: any f32 storage is valid as bytes; the length is the same.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, out.len() * 4)
            };
            let p = prep.params(0, 0, 0);
            prep.apply(&src, &p, bytes).unwrap();
            let f: &[f32] = cast(bytes);
            for y in 0..sh as usize {
                for x in 0..sw as usize {
                    for c in 0..3 {
                        let v = src[(y * sw as usize + x) * 3 + c] as f32;
                        let want = (v / 255.0 - mean[c]) / std[c];
                        let at = match layout {
                            Layout::Nhwc => (y * sw as usize + x) * 3 + c,
                            Layout::Nchw => c * (sh * sw) as usize + y * sw as usize + x,
                        };
                        assert_eq!(f[at], want);
                    }
                }
            }
        }
    }

    #[test]
    fn params_depend_on_seed_epoch_and_index_only() {
        let t = Transform {
            random_resized_crop: Some((8, 8)),
            hflip: 0.5,
            ..Default::default()
        };
        let a = t.params(40, 30, 1, 2, 3);
        assert_eq!(a, t.params(40, 30, 1, 2, 3));
        let others = [
            t.params(40, 30, 1, 3, 3),
            t.params(40, 30, 1, 2, 4),
            t.params(40, 30, 2, 2, 3),
        ];
        assert!(others.iter().all(|o| *o != a));
        for i in 0..2000 {
            let p = t.params(40, 30, 0, 0, i);
            assert!(p.top >= 0 && p.top + p.height as i64 <= 40);
            assert!(p.left >= 0 && p.left + p.width as i64 <= 30);
        }
    }

    #[test]
    fn invalid_options_are_refused() {
        let bad = [
            Transform {
                random_crop: Some((4, 4)),
                center_crop: Some((4, 4)),
                ..Default::default()
            },
            Transform {
                random_crop: Some((40, 4)),
                ..Default::default()
            },
            Transform {
                padding: 2,
                ..Default::default()
            },
            Transform {
                std: vec![1.0, 0.0, 1.0],
                dtype: DType::Float32,
                ..Default::default()
            },
            Transform {
                mean: vec![0.5; 3],
                ..Default::default()
            },
            Transform {
                hflip: 1.5,
                ..Default::default()
            },
            Transform {
                random_resized_crop: Some((4, 4)),
                scale: (0.5, 0.1),
                ..Default::default()
            },
        ];
        for t in bad {
            assert!(t.validate(10, 10, 3).is_err(), "{t:?}");
        }
        assert!(Transform::default().validate(10, 10, 3).is_ok());
        assert!(Transform::default().is_identity());
    }
}
