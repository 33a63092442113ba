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
//! * `RandomHorizontalFlip(p)` and `RandomVerticalFlip(p)`, of the crop (after its resize);
//! * `ToTensor()` + `Normalize(mean, std)`: `(x / 255 - mean) / std` in float32 arithmetic
//!   (float16 and bfloat16 output round that float32 value to nearest even). A float dtype without normalisation
//!   gives `x / 255`, as `ToTensor` alone; uint8 output keeps the pixel values.
//!
//! Output is `[B, H, W, C]` (NHWC) or `[B, C, H, W]` (NCHW) in uint8, float32, float16 or bfloat16, with
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
//! `left = below(W - w + 1)`), then, when `horizontal_flip > 0`, `flip = next_f64() <
//! horizontal_flip`, then, when `vertical_flip > 0`, `vertical_flip = next_f64() <
//! vertical_flip`. A sample is
//! therefore augmented the same way whatever the thread count, batch size or rank, and
//! differently in another epoch.

mod kernels;

use std::str::FromStr;

use crate::error::{parse_choice, Error, Result};
use crate::sampler::{mix, SplitMix64};
use kernels::Lut;

/// Fourth word of the per-sample seed, keeping augmentation draws apart from every other stream.
pub const TRANSFORM_STREAM: u64 = u64::from_be_bytes(*b"vtxaugmt");

/// Largest output image (after crop and conversion) a loader assembles: 1 GiB (e.g. 16384 x
/// 16384 RGBA uint8, or 8192 x 8192 RGBA float32). Larger is a `VantixError` naming the option.
pub const MAX_SAMPLE_BYTES: u64 = 1 << 30;
/// Largest batch buffer (`batch_size` output images): 8 GiB. On top of it, the batch buffers a
/// loader can hold ([`crate::LoaderConfig::buffers_held`]) must fit in half the memory of the machine (or of its
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
    /// The packed bytes, 0-255 (the default; no normalisation).
    #[default]
    Uint8,
    /// 32-bit floats: `x / 255`, then `(x - mean) / std` when `mean`/`std` are given.
    Float32,
    /// 16-bit (IEEE half) floats: the float32 values rounded to the nearest half.
    Float16,
    /// bfloat16 (the upper half of a float32): the float32 values rounded to nearest, ties to
    /// even, as `torch.Tensor.to(torch.bfloat16)` rounds. numpy has no such type: the binding
    /// serves the bit patterns as uint16, which Python views as `torch.bfloat16`.
    BFloat16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Uint8 => 1,
            DType::Float32 => 4,
            DType::Float16 | DType::BFloat16 => 2,
        }
    }
    /// numpy's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            DType::Uint8 => "uint8",
            DType::Float32 => "float32",
            DType::Float16 => "float16",
            DType::BFloat16 => "bfloat16",
        }
    }
}

/// numpy's (and torch's) names: `"uint8"`, `"float32"`, `"float16"` or `"bfloat16"`.
impl FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let choices = [
            DType::Uint8,
            DType::Float32,
            DType::Float16,
            DType::BFloat16,
        ]
        .map(|d| (d.name(), d));
        parse_choice("dtype", s, &choices)
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
    /// `[B, C, H, W]`-shaped batches in NHWC memory: what `torch.channels_last` calls
    /// contiguous. The pixels are assembled as for [`Layout::Nhwc`]; the batch's shape is NCHW
    /// and its strides are NHWC's ([`Layout::memory`]), so a binding serves an NCHW view of
    /// NHWC memory without a copy (`VantixLoader(layout="NCHW", channels_last=True)`).
    ChannelsLast,
}

impl Layout {
    /// The option's spelling (`"NHWC"`, `"NCHW"`; `"channels_last"`).
    pub fn name(self) -> &'static str {
        match self {
            Layout::Nhwc => "NHWC",
            Layout::Nchw => "NCHW",
            Layout::ChannelsLast => "channels_last",
        }
    }
    /// The order of the bytes in memory: [`Layout::Nhwc`] for [`Layout::ChannelsLast`].
    pub fn memory(self) -> Layout {
        match self {
            Layout::ChannelsLast => Layout::Nhwc,
            other => other,
        }
    }
    /// `layout` with `channels_last` (`VantixLoader`'s two options): NCHW-shaped batches in
    /// channels-last memory, which only NCHW can be.
    pub fn with_channels_last(self, channels_last: bool) -> Result<Layout> {
        match (self, channels_last) {
            (layout, false) => Ok(layout),
            (Layout::Nchw | Layout::ChannelsLast, true) => Ok(Layout::ChannelsLast),
            (Layout::Nhwc, true) => Err(Error::invalid(
                "channels_last=True gives NCHW-shaped batches in channels-last memory: use it \
                 with layout='NCHW'",
            )),
        }
    }
}

/// `"NHWC"` or `"NCHW"` in any case, or `"channels_last"`.
impl FromStr for Layout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let choices = [("NHWC", Layout::Nhwc), ("NCHW", Layout::Nchw)];
        if s == "channels_last" {
            return Ok(Layout::ChannelsLast);
        }
        parse_choice("layout", &s.to_ascii_uppercase(), &choices)
            .or_else(|_| parse_choice("layout", s, &choices))
    }
}

/// `RandomResizedCrop`'s default `scale`.
pub const DEFAULT_SCALE: (f64, f64) = (0.08, 1.0);
/// `RandomResizedCrop`'s default `ratio`.
pub const DEFAULT_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

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
    pub horizontal_flip: f64,
    /// Probability of a vertical flip (`RandomVerticalFlip(p)`).
    pub vertical_flip: f64,
    /// `Normalize`'s mean, one per channel (in the packed channel order), on the 0-1 scale
    /// (float output only). Empty: 0 for every channel (no normalisation).
    pub mean: Vec<f32>,
    /// `Normalize`'s std, one per channel, on the 0-1 scale (float output only). Empty: 1 for
    /// every channel.
    pub std: Vec<f32>,
    /// Element type of the output images.
    pub dtype: DType,
    /// Memory layout of the output batches.
    pub layout: Layout,
}

impl Default for Transform {
    fn default() -> Self {
        Transform {
            random_crop: None,
            padding: 0,
            random_resized_crop: None,
            scale: DEFAULT_SCALE,
            ratio: DEFAULT_RATIO,
            center_crop: None,
            horizontal_flip: 0.0,
            vertical_flip: 0.0,
            mean: Vec::new(),
            std: Vec::new(),
            dtype: DType::Uint8,
            layout: Layout::Nhwc,
        }
    }
}

/// The parameters drawn for one sample. Reproduce them with torchvision's functional ops on the
/// packed image: `F.crop(img, top, left, height, width)` (zero fill outside the image), then
/// `F.resize(..., size, antialias=True)` for a random-resized-crop, then `F.hflip` if `flip`,
/// then `F.vflip` if `vertical_flip`.
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
    /// `F.hflip` of the (resized) crop: whether it is mirrored left to right.
    pub flip: bool,
    /// `F.vflip` of the (resized) crop.
    pub vertical_flip: bool,
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
            && self.horizontal_flip <= 0.0
            && self.vertical_flip <= 0.0
            && self.dtype == DType::Uint8
            && self.layout.memory() == Layout::Nhwc
    }

    /// `Normalize` was asked for (`mean` and `std` given), whatever their values.
    fn has_normalize(&self) -> bool {
        !self.mean.is_empty() || !self.std.is_empty()
    }

    /// Append this transform's lines of the resume key's text (`docs/FORMAT.md` §7.11) to
    /// `t`: every option that changes the pixels a sample gets. They live here, beside the
    /// options, so that a new option extends the key where it is defined.
    pub fn write_resume_text(&self, t: &mut String) {
        use std::fmt::Write;
        let f64s = |(a, b): (f64, f64)| format!("{:016x} {:016x}", a.to_bits(), b.to_bits());
        let _ = if let Some((h, w)) = self.random_crop {
            writeln!(t, "crop random {h} {w} {}", self.padding)
        } else if let Some((h, w)) = self.random_resized_crop {
            writeln!(
                t,
                "crop random_resized {h} {w} {} {}",
                f64s(self.scale),
                f64s(self.ratio)
            )
        } else if let Some((h, w)) = self.center_crop {
            writeln!(t, "crop center {h} {w}")
        } else {
            writeln!(t, "crop none")
        };
        let _ = writeln!(t, "hflip {:016x}", self.horizontal_flip.to_bits());
        // Only when on, so that the keys of loaders without it stay what they were.
        if self.vertical_flip > 0.0 {
            let _ = writeln!(t, "vflip {:016x}", self.vertical_flip.to_bits());
        }
        let f32s = |v: &[f32]| {
            v.iter()
                .map(|x| format!(" {:08x}", x.to_bits()))
                .collect::<String>()
        };
        let _ = writeln!(t, "mean{}", f32s(&self.mean));
        let _ = writeln!(t, "std{}", f32s(&self.std));
        // The memory layout: `channels_last` batches are NHWC memory seen as NCHW, the same
        // bytes.
        let layout = self.layout.memory().name();
        let _ = writeln!(t, "output {} {layout}", self.dtype.name());
    }

    /// Check the options against images of `height x width x channels`.
    pub fn validate(&self, height: u32, width: u32, channels: u32) -> Result<()> {
        if channels == 0 || channels > crate::format::MAX_CHANNELS {
            return Err(Error::invalid(format!(
                "images with {channels} channels are not supported"
            )));
        }
        if self.mean.is_empty() != self.std.is_empty() {
            return Err(Error::invalid(
                "give both mean and std (Normalize), or neither",
            ));
        }
        for (name, values) in [("mean", &self.mean), ("std", &self.std)] {
            if !values.is_empty() && values.len() != channels as usize {
                let s = if channels == 1 { "" } else { "s" };
                let order = match channels {
                    1 => "L",
                    3 => "R, G, B",
                    4 => "R, G, B, A",
                    _ => "?",
                };
                return Err(Error::invalid(format!(
                    "{name} has {} values but the images have {channels} channel{s}: {name} \
                     must be {channels} finite number{s}, one per channel of the packed images \
                     ({order}), or a single number for all",
                    values.len(),
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
                        "{name} size ({h}, {w}) is out of range: at least 1 pixel per side, at \
                         most {}",
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
        if !(0.0..=1.0).contains(&self.vertical_flip) {
            return Err(Error::invalid(format!(
                "vertical_flip is a probability in [0, 1], got {}",
                self.vertical_flip
            )));
        }
        if !(0.0..=1.0).contains(&self.horizontal_flip) {
            return Err(Error::invalid(format!(
                "horizontal_flip is a probability in [0, 1], got {}",
                self.horizontal_flip
            )));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::invalid(format!(
                "mean must be finite, got {:?}",
                self.mean
            )));
        }
        if self.std.iter().any(|s| !s.is_finite()) {
            return Err(Error::invalid(format!(
                "std must be finite, got {:?}",
                self.std
            )));
        }
        if self.std.contains(&0.0) {
            return Err(Error::invalid(format!(
                "std must not contain 0, got {:?}",
                self.std
            )));
        }
        if self.has_normalize() && self.dtype == DType::Uint8 {
            return Err(Error::invalid(
                "mean/std normalisation needs dtype float32, float16 or bfloat16 (uint8 output is the raw \
                 pixel values)",
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

    /// The parameters drawn for dataset sample `index` of `epoch` (images of `height x width`;
    /// [`Prepared::params`] is the public form).
    fn params(&self, height: u32, width: u32, seed: u64, epoch: u64, index: u64) -> Params {
        let (hh, ww) = (height as i64, width as i64);
        let mut rng = SplitMix64::new(mix(&[seed, epoch, index, TRANSFORM_STREAM]));
        let mut p = Params {
            top: 0,
            left: 0,
            height,
            width,
            flip: false,
            vertical_flip: false,
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
                vertical_flip: false,
            };
        } else if self.random_resized_crop.is_some() {
            let (top, left, h, w) = self.rrc_params(&mut rng, height, width);
            p = Params {
                top,
                left,
                height: h,
                width: w,
                flip: false,
                vertical_flip: false,
            };
        } else if let Some((h, w)) = self.center_crop {
            p = Params {
                top: center_offset(hh, h as i64),
                left: center_offset(ww, w as i64),
                height: h,
                width: w,
                flip: false,
                vertical_flip: false,
            };
        }
        if self.horizontal_flip > 0.0 {
            p.flip = rng.next_f64() < self.horizontal_flip;
        }
        if self.vertical_flip > 0.0 {
            p.vertical_flip = rng.next_f64() < self.vertical_flip;
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
            DType::Uint8 if self.layout.memory() == Layout::Nhwc => Lut::Direct,
            DType::Uint8 => Lut::U8(vec![std::array::from_fn(|v| v as u8); c]),
            DType::Float32 => Lut::F32(self.float_lut(c)),
            DType::Float16 => Lut::Bits16(
                self.float_lut(c)
                    .iter()
                    .map(|t| std::array::from_fn(|v| half::f16::from_f32(t[v]).to_bits()))
                    .collect(),
            ),
            DType::BFloat16 => Lut::Bits16(
                self.float_lut(c)
                    .iter()
                    .map(|t| std::array::from_fn(|v| half::bf16::from_f32(t[v]).to_bits()))
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

impl Prepared {
    /// Check that batches of `batch_size` images fit: one batch at most [`MAX_BATCH_BYTES`],
    /// and the `buffers` batches a loader can hold at once
    /// ([`crate::LoaderConfig::buffers_held`]: the queue, the one being assembled, those the
    /// consumer holds) at most half of [`memory_limit`]. An error
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
                     + 2, + device_prefetch + 1 with a device), {}, over half of this machine's memory ({} of {}); lower \
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

    /// The transform this was compiled from.
    pub fn transform(&self) -> &Transform {
        &self.transform
    }
    /// True when records are copied unchanged.
    pub fn is_identity(&self) -> bool {
        self.identity
    }
    /// Bytes of one output image.
    pub fn sample_bytes(&self) -> usize {
        self.out_h as usize * self.out_w as usize * self.channels as usize * self.dtype().size()
    }
    /// Element type of the output images.
    pub fn dtype(&self) -> DType {
        self.transform.dtype
    }
    /// Layout of the output batches.
    pub fn layout(&self) -> Layout {
        self.transform.layout
    }
    /// Shape of a batch of `n` output images in the output layout: `[n, H, W, C]` (NHWC) or
    /// `[n, C, H, W]` (NCHW, and channels-last, whose memory is NHWC's).
    pub fn batch_shape(&self, n: usize) -> [usize; 4] {
        let (h, w, c) = (
            self.out_h as usize,
            self.out_w as usize,
            self.channels as usize,
        );
        match self.transform.layout {
            Layout::Nhwc => [n, h, w, c],
            Layout::Nchw | Layout::ChannelsLast => [n, c, h, w],
        }
    }
    /// Parameters drawn for dataset sample `index` of `epoch`.
    pub fn params(&self, seed: u64, epoch: u64, index: u64) -> Params {
        self.transform
            .params(self.src_h, self.src_w, seed, epoch, index)
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
                horizontal_flip: 0.5,
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
                        horizontal_flip: 0.5,
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
                        _ => assert_eq!(shape, [2, c, 4, 5]),
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
                                _ => k * 20 + pix,
                            };
                            if float {
                                let f: &[f32] = kernels::cast(bytes);
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
                horizontal_flip: 0.5,
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
            let f: &[f32] = kernels::cast(bytes);
            for y in 0..sh as usize {
                for x in 0..sw as usize {
                    for c in 0..3 {
                        let v = src[(y * sw as usize + x) * 3 + c] as f32;
                        let want = (v / 255.0 - mean[c]) / std[c];
                        let at = match layout {
                            Layout::Nhwc => (y * sw as usize + x) * 3 + c,
                            _ => c * (sh * sw) as usize + y * sw as usize + x,
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
            horizontal_flip: 0.5,
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
    fn option_strings_parse_with_every_choice_listed() {
        assert_eq!("float16".parse::<DType>().unwrap(), DType::Float16);
        assert_eq!("bfloat16".parse::<DType>().unwrap(), DType::BFloat16);
        let e = "float64".parse::<DType>().unwrap_err().to_string();
        assert_eq!(
            e,
            "dtype must be one of 'uint8', 'float32', 'float16' or 'bfloat16', got \"float64\""
        );
        assert_eq!("nchw".parse::<Layout>().unwrap(), Layout::Nchw);
        let e = "CHW".parse::<Layout>().unwrap_err().to_string();
        assert!(e.contains("layout must be one of 'NHWC' or 'NCHW'"), "{e}");
        let cl = Layout::Nchw.with_channels_last(true).unwrap();
        assert_eq!((cl, cl.memory()), (Layout::ChannelsLast, Layout::Nhwc));
        assert!(Layout::Nhwc.with_channels_last(true).is_err());
    }

    #[test]
    fn channels_last_is_nhwc_memory_in_an_nchw_shape() {
        let t = Transform {
            layout: Layout::ChannelsLast,
            ..Default::default()
        };
        assert!(t.is_identity());
        let prep = t.prepare(4, 5, 3).unwrap();
        assert_eq!(prep.batch_shape(2), [2, 3, 4, 5]);
        let mut key = String::new();
        t.write_resume_text(&mut key);
        assert!(key.ends_with("output uint8 NHWC\n"), "{key}");
    }

    #[test]
    fn vertical_flip_mirrors_the_rows_of_the_crop() {
        let (sh, sw) = (5, 7);
        let src = image(sh, sw);
        for rrc in [false, true] {
            let t = Transform {
                random_crop: (!rrc).then_some((3, 4)),
                padding: if rrc { 0 } else { 2 },
                random_resized_crop: rrc.then_some((3, 3)),
                scale: (0.1, 0.2),
                ratio: (1.0, 1.0),
                horizontal_flip: 0.5,
                vertical_flip: 0.5,
                ..Default::default()
            };
            let plain = Transform {
                vertical_flip: 0.0,
                ..t.clone()
            };
            let (prep, plain) = (
                t.prepare(sh, sw, 3).unwrap(),
                plain.prepare(sh, sw, 3).unwrap(),
            );
            let mut flips = 0;
            for i in 0..200 {
                let p = prep.params(3, 1, i);
                // The flip draws after everything else: the crop and the horizontal flip stay.
                let q = plain.params(3, 1, i);
                assert_eq!(
                    (p.top, p.left, p.height, p.width, p.flip),
                    (q.top, q.left, q.height, q.width, q.flip)
                );
                flips += p.vertical_flip as u32;
                let (mut a, mut b) = (
                    vec![0u8; prep.sample_bytes()],
                    vec![0u8; prep.sample_bytes()],
                );
                prep.apply(&src, &p, &mut a).unwrap();
                plain.apply(&src, &q, &mut b).unwrap();
                let row = 3 * prep.batch_shape(1)[2]; // output pixels per row
                let mut want: Vec<&[u8]> = b.chunks(row).collect();
                if p.vertical_flip {
                    want.reverse();
                }
                assert_eq!(a, want.concat(), "{p:?}");
            }
            assert!((60..140).contains(&flips), "{flips} flips of 200");
        }
        let bad = Transform {
            vertical_flip: -0.5,
            ..Default::default()
        };
        assert!(bad
            .validate(8, 8, 3)
            .unwrap_err()
            .to_string()
            .contains("vertical_flip"));
        let on = Transform {
            vertical_flip: 0.5,
            ..Default::default()
        };
        assert!(!on.is_identity());
        let (mut a, mut b) = (String::new(), String::new());
        on.write_resume_text(&mut a);
        Transform::default().write_resume_text(&mut b);
        assert!(a.contains("vflip 3fe0000000000000") && !b.contains("vflip"));
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
                horizontal_flip: 1.5,
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
