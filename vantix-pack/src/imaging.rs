//! Decode one source file and resize it to the packed geometry, matching what torchvision does
//! with a PIL image (`Image.open(f).convert("RGB")`, then `Resize`/`CenterCrop`; with
//! [`ResizeSpec::channels`] 1 or 4, `convert("L")` or `convert("RGBA")` instead, and with
//! [`ResizeSpec::exif_orientation`], `ImageOps.exif_transpose` first).
//!
//! Deliberate differences from Pillow, documented in the README:
//! - 16-bit images are scaled to 8 bits (`v / 257`, rounded). Pillow's `convert("RGB")` clips
//!   them at 255, which turns most 16-bit photographs white.

use std::cell::{Cell, RefCell};
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

/// How an image is brought to the packed `W x H`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// Resize the shorter side to cover `W x H`, then crop the centre (torchvision's evaluation
    /// transform `Resize(S)` + `CenterCrop(S)` for a square target).
    CenterCrop,
    /// Resize straight to `W x H`, ignoring the aspect ratio.
    Squash,
    /// Resize to fit inside `W x H`, then pad the borders with a colour.
    Pad,
}

impl ResizeMode {
    /// Every mode, in the order `FromStr`'s error lists them.
    pub const ALL: [ResizeMode; 3] = [ResizeMode::CenterCrop, ResizeMode::Squash, ResizeMode::Pad];
    /// The mode's name on the CLI, in Python and in the manifest's `pack.resize`: `"center-crop"`,
    /// `"squash"` or `"pad"`.
    pub fn name(self) -> &'static str {
        match self {
            ResizeMode::CenterCrop => "center-crop",
            ResizeMode::Squash => "squash",
            ResizeMode::Pad => "pad",
        }
    }
}

impl std::str::FromStr for ResizeMode {
    type Err = vantix_read::Error;
    /// A mode by its [`name`](ResizeMode::name) (`center_crop` is accepted for `center-crop`);
    /// the error lists every mode.
    fn from_str(s: &str) -> vantix_read::Result<Self> {
        let s = if s == "center_crop" { "center-crop" } else { s };
        vantix_read::parse_choice("mode", s, &Self::ALL.map(|m| (m.name(), m)))
    }
}

/// Resampling filter, in torchvision's `InterpolationMode` words. All but `nearest` are
/// antialiased convolutions, as Pillow's `resize` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// Nearest neighbour, not antialiased: every output pixel is a copy of a source pixel.
    Nearest,
    /// Triangle (linear) filter, Pillow's `BILINEAR`.
    Bilinear,
    /// Cubic convolution with `a = -0.5` (Catmull-Rom), Pillow's `BICUBIC`.
    Bicubic,
    /// Lanczos with 3 lobes, Pillow's `LANCZOS`.
    Lanczos,
    /// Box filter (each output pixel the mean of the source pixels it covers), Pillow's `BOX`.
    Box,
    /// Hamming-windowed filter, Pillow's `HAMMING`.
    Hamming,
}

impl Interpolation {
    /// Every filter, in the order `FromStr`'s error lists them.
    pub const ALL: [Interpolation; 6] = [
        Interpolation::Nearest,
        Interpolation::Bilinear,
        Interpolation::Bicubic,
        Interpolation::Lanczos,
        Interpolation::Box,
        Interpolation::Hamming,
    ];
    /// The filter's name on the CLI, in Python and in the manifest's `pack.interpolation`, in lower
    /// case (`"bilinear"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Interpolation::Nearest => "nearest",
            Interpolation::Bilinear => "bilinear",
            Interpolation::Bicubic => "bicubic",
            Interpolation::Lanczos => "lanczos",
            Interpolation::Box => "box",
            Interpolation::Hamming => "hamming",
        }
    }
    fn alg(self) -> ResizeAlg {
        match self {
            Interpolation::Nearest => ResizeAlg::Nearest,
            Interpolation::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
            // Pillow's BICUBIC is the a = -0.5 cubic, i.e. Catmull-Rom.
            Interpolation::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
            Interpolation::Lanczos => ResizeAlg::Convolution(FilterType::Lanczos3),
            Interpolation::Box => ResizeAlg::Convolution(FilterType::Box),
            Interpolation::Hamming => ResizeAlg::Convolution(FilterType::Hamming),
        }
    }
}

impl std::str::FromStr for Interpolation {
    type Err = vantix_read::Error;
    /// A filter by its [`name`](Interpolation::name); the error lists every one.
    fn from_str(s: &str) -> vantix_read::Result<Self> {
        vantix_read::parse_choice("interpolation", s, &Self::ALL.map(|m| (m.name(), m)))
    }
}

/// Everything that decides the pixels of a packed record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResizeSpec {
    /// Width of a packed record in pixels.
    pub width: u32,
    /// Height of a packed record in pixels.
    pub height: u32,
    /// How the source is brought to `width x height`.
    pub mode: ResizeMode,
    /// Resampling filter used when resizing.
    pub interpolation: Interpolation,
    /// RGB fill colour of [`ResizeMode::Pad`]'s borders (a grey record gets its luma, an RGBA one
    /// alpha 255).
    pub pad_color: [u8; 3],
    /// Largest accepted `width * height` of a source image (decompression-bomb guard).
    pub max_pixels: u64,
    /// Decode JPEGs at full size even when a DCT-scaled decode (1/2, 1/4, 1/8) would do.
    pub exact_decode: bool,
    /// Channels of a packed record: 1 (grey, Pillow's `convert("L")`), 3 (RGB,
    /// `convert("RGB")`) or 4 (RGBA, `convert("RGBA")`, resized with premultiplied alpha).
    pub channels: u32,
    /// Apply the EXIF Orientation tag (1-8) before anything else, as Pillow's
    /// `ImageOps.exif_transpose`; off by default, as torchvision (which ignores it).
    pub exif_orientation: bool,
}

impl ResizeSpec {
    /// The pad colour as one pixel of the packed channel order: RGB as given, grey = its luma
    /// ([`luma`]), RGBA = RGB with an opaque alpha (255).
    pub fn pad_pixel(&self) -> Vec<u8> {
        let [r, g, b] = self.pad_color;
        match self.channels {
            1 => vec![luma(r, g, b)],
            4 => vec![r, g, b, 255],
            _ => vec![r, g, b],
        }
    }

    /// The manifest's `channel_order` for [`Self::channels`].
    pub fn channel_order(&self) -> &'static str {
        channel_order(self.channels)
    }
}

/// `channel_order` of a record with `channels` channels: `"L"`, `"RGB"` or `"RGBA"`.
pub fn channel_order(channels: u32) -> &'static str {
    match channels {
        1 => "L",
        4 => "RGBA",
        _ => "RGB",
    }
}

/// Pillow's `convert("L")` of one RGB pixel: ITU-R 601-2 luma `L = R * 299/1000 + G * 587/1000
/// + B * 114/1000`, computed as Pillow computes it, in 16-bit fixed point with rounding:
/// `(19595 R + 38470 G + 7471 B + 0x8000) >> 16` (checked against Pillow 13 on all 2^24 colours).
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Luma of every pixel of interleaved RGB (`stride` 3) or RGBA (`stride` 4, alpha ignored, as
/// Pillow's `RGBA -> L`).
fn to_luma(px: &[u8], stride: usize) -> Vec<u8> {
    px.chunks_exact(stride)
        .map(|p| luma(p[0], p[1], p[2]))
        .collect()
}

/// Pillow's `RGBA -> RGBa`: every colour multiplied by alpha / 255, rounded as Pillow's
/// `MULDIV255` (`t = c * a + 128; ((t >> 8) + t) >> 8`, exact rounding of `c * a / 255`).
fn premultiply(rgba: &mut [u8]) {
    for p in rgba.chunks_exact_mut(4) {
        let a = p[3] as u32;
        for c in &mut p[..3] {
            let t = *c as u32 * a + 128;
            *c = (((t >> 8) + t) >> 8) as u8;
        }
    }
}

/// Pillow's `RGBa -> RGBA`: colours divided by alpha / 255, truncated and clipped at 255;
/// alpha 0 and 255 leave the colours as they are (checked against Pillow 13 on every
/// colour/alpha pair).
fn unpremultiply(rgba: &mut [u8]) {
    for p in rgba.chunks_exact_mut(4) {
        let a = p[3] as u32;
        if a != 0 && a != 255 {
            for c in &mut p[..3] {
                *c = (255 * *c as u32 / a).min(255) as u8;
            }
        }
    }
}

/// Memory a decoder may use besides the pixels of the image (headers, tables, metadata).
pub const DECODE_SLACK_BYTES: u64 = 64 << 20;

/// Largest decompressed ICC profile or compressed text chunk of a PNG: Pillow's
/// `PngImagePlugin.MAX_TEXT_CHUNK` (1 MiB), past which Pillow refuses the file.
pub const MAX_PNG_ANCILLARY_BYTES: usize = 1 << 20;

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Where a PNG's data ends early: inside a chunk header, or inside a chunk of this type.
enum PngCut {
    Header,
    Chunk([u8; 4]),
}

/// The chunks of a PNG (`(type, data)`) as far as they are complete, and where the data ended
/// early, if it did (before IEND).
type PngChunks<'a> = (Vec<([u8; 4], &'a [u8])>, Option<PngCut>);

fn png_chunks(b: &[u8]) -> PngChunks<'_> {
    let mut out = Vec::new();
    let mut i = PNG_SIGNATURE.len();
    while i < b.len() {
        if i + 8 > b.len() {
            return (out, Some(PngCut::Header));
        }
        let len = u32::from_be_bytes(b[i..i + 4].try_into().unwrap()) as usize;
        let kind: [u8; 4] = b[i + 4..i + 8].try_into().unwrap();
        if len > b.len() - i - 8 || b.len() - i - 8 - len < 4 {
            return (out, Some(PngCut::Chunk(kind)));
        }
        out.push((kind, &b[i + 8..i + 8 + len]));
        if &kind == b"IEND" {
            break;
        }
        i += 12 + len;
    }
    (out, None)
}

/// Why the encoded image `bytes` is truncated, if it is: the data ends before the image does.
/// JPEG: the data ends before the EOI marker (inside the entropy-coded data or a segment);
/// PNG: it ends inside an IDAT chunk or before the image data; WebP: the RIFF container is
/// shorter than its header says. As Pillow, a PNG whose data ends after its last complete IDAT
/// chunk (IEND cut or missing) is left to the decoder, which finds whether the image data is
/// complete; other codecs' short data is found by their decoders ([`process`]).
pub fn truncation(bytes: &[u8]) -> Option<String> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return jpeg_truncation(bytes);
    }
    if bytes.starts_with(PNG_SIGNATURE) {
        let (chunks, cut) = png_chunks(bytes);
        let has_idat = chunks.iter().any(|(k, _)| k == b"IDAT");
        return match cut {
            Some(PngCut::Chunk(kind)) if &kind == b"IDAT" => {
                Some("the PNG data ends inside an IDAT chunk (the image data is short)".into())
            }
            Some(_) if !has_idat => {
                Some("the PNG data ends before its image data (no complete IDAT chunk)".into())
            }
            None if !has_idat => Some("the PNG has no image data (no IDAT chunk)".into()),
            _ => None,
        };
    }
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        let size = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as u64 + 8;
        if (bytes.len() as u64) < size {
            return Some(format!(
                "the WebP file is {} bytes, its RIFF header says {size}",
                bytes.len()
            ));
        }
    }
    None
}

/// [`truncation`] for a JPEG: walk the marker segments and the entropy-coded data after each
/// SOS to the EOI marker.
fn jpeg_truncation(b: &[u8]) -> Option<String> {
    let n = b.len();
    let mut i = 2;
    let mut scans = 0;
    let ends = |scans: i32, where_: &str| {
        Some(if scans == 0 {
            format!("the JPEG data ends {where_}, before any image data")
        } else {
            format!(
                "the JPEG data ends {where_}, before its EOI marker (premature end of the data)"
            )
        })
    };
    loop {
        // The next marker (bytes between segments are skipped, as decoders do).
        match b[i.min(n)..].iter().position(|&x| x == 0xFF) {
            Some(k) => i += k,
            None => return ends(scans, "after a segment"),
        }
        while i < n && b[i] == 0xFF {
            i += 1;
        }
        if i >= n {
            return ends(scans, "inside a marker");
        }
        let marker = b[i];
        i += 1;
        match marker {
            0xD9 => return None,
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        if i + 2 > n {
            return ends(scans, "inside a marker segment");
        }
        let len = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
        if len < 2 || i + len > n {
            return ends(scans, "inside a marker segment");
        }
        i += len;
        if marker != 0xDA {
            continue;
        }
        scans += 1;
        // Entropy-coded data: up to a marker other than a stuffed 0xFF00 or a restart.
        loop {
            match b[i..].iter().position(|&x| x == 0xFF) {
                Some(k) => i += k,
                None => return ends(scans, "inside the compressed image data"),
            }
            if i + 1 >= n {
                return ends(scans, "inside the compressed image data");
            }
            match b[i + 1] {
                0x00 | 0xD0..=0xD7 => i += 2,
                0xFF => i += 1,
                _ => break,
            }
        }
    }
}

/// Refuse a PNG whose ICC profile or compressed text decompresses to more than
/// [`MAX_PNG_ANCILLARY_BYTES`] (Pillow refuses those; decompressing them costs memory the
/// image does not need). The decompression itself is bounded.
fn check_png_ancillary(bytes: &[u8]) -> Result<(), String> {
    if !bytes.starts_with(PNG_SIGNATURE) {
        return Ok(());
    }
    for (kind, data) in png_chunks(bytes).0 {
        // iCCP: name \0 method stream; zTXt: keyword \0 method stream; iTXt: keyword \0 flag
        // method language \0 translated \0 text (compressed when flag is 1).
        let stream = match &kind {
            b"iCCP" | b"zTXt" => data
                .iter()
                .position(|&c| c == 0)
                .and_then(|z| data.get(z + 2..)),
            b"iTXt" => {
                let z = data.iter().position(|&c| c == 0);
                match z.and_then(|z| data.get(z + 1..)) {
                    Some([1, _, rest @ ..]) => {
                        let mut rest = rest;
                        for _ in 0..2 {
                            rest = rest
                                .iter()
                                .position(|&c| c == 0)
                                .and_then(|z| rest.get(z + 1..))
                                .unwrap_or(&[]);
                        }
                        Some(rest)
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(stream) = stream else { continue };
        if let Err(fdeflate::BoundedDecompressionError::OutputTooLarge { .. }) =
            fdeflate::decompress_to_vec_bounded(stream, MAX_PNG_ANCILLARY_BYTES)
        {
            return Err(format!(
                "its {} chunk ({}) decompresses to more than {} bytes, Pillow's MAX_TEXT_CHUNK \
                 limit (Pillow refuses it too; a decompression bomb?)",
                String::from_utf8_lossy(&kind),
                if &kind == b"iCCP" {
                    "ICC profile"
                } else {
                    "text"
                },
                MAX_PNG_ANCILLARY_BYTES
            ));
        }
    }
    Ok(())
}

/// Pillow's `Image.MAX_IMAGE_PIXELS * 2`, the size at which Pillow refuses to open an image.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// Python's `round()` of `x / 2`: halves go to the even neighbour, as `CenterCrop` does.
fn half_round_even(x: u32) -> u32 {
    (x as f64 / 2.0).round_ties_even() as u32
}

/// Size of the intermediate resize for `mode`, torchvision's rule: the side that is fixed gets
/// exactly its target, the other `int(target * other / side)` (truncated).
pub fn resized_size(src_w: u32, src_h: u32, spec: &ResizeSpec) -> (u32, u32) {
    let (tw, th) = (spec.width as u64, spec.height as u64);
    let (w, h) = (src_w as u64, src_h as u64);
    // Compare tw/w against th/h without floating point.
    let width_bound = tw * h >= th * w; // scaling by tw/w reaches at least th in height
    let (nw, nh) = match spec.mode {
        ResizeMode::Squash => (tw, th),
        ResizeMode::CenterCrop if width_bound => (tw, tw * h / w),
        ResizeMode::CenterCrop => (th * w / h, th),
        ResizeMode::Pad if width_bound => (th * w / h, th),
        ResizeMode::Pad => (tw, tw * h / w),
    };
    (nw.max(1) as u32, nh.max(1) as u32)
}

thread_local! {
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

fn pixel_type(channels: usize) -> Result<PixelType, String> {
    match channels {
        1 => Ok(PixelType::U8),
        3 => Ok(PixelType::U8x3),
        4 => Ok(PixelType::U8x4),
        c => Err(format!("cannot resize an image with {c} channels")),
    }
}

/// One resize of an 8-bit image with `fast_image_resize` (1, 3 or 4 interleaved channels, each
/// resized on its own: 4 channels must already be premultiplied, see [`resize_pixels`]).
fn resize_once(
    src: Vec<u8>,
    (src_w, src_h): (u32, u32),
    (dst_w, dst_h): (u32, u32),
    channels: usize,
    interpolation: Interpolation,
) -> Result<Vec<u8>, String> {
    let pt = pixel_type(channels)?;
    let src_img = Image::from_vec_u8(src_w, src_h, src, pt).map_err(|e| e.to_string())?;
    let mut dst = Image::new(dst_w, dst_h, pt);
    let opts = ResizeOptions::new()
        .resize_alg(interpolation.alg())
        .use_alpha(false);
    RESIZER
        .with(|r| r.borrow_mut().resize(&src_img, &mut dst, &opts))
        .map_err(|e| e.to_string())?;
    Ok(dst.into_vec())
}

/// Resize an image from `src_size` to `dst_size` as Pillow's `Image.resize` does.
///
/// A convolution resize is two one-axis passes, and the intermediate image is rounded (and
/// clipped) to 8 bits, so the order of the passes changes the result: by ~0.2 levels on average
/// and by up to ~10 levels where bicubic/Lanczos overshoot is clipped. `fast_image_resize` always
/// runs the vertical pass first for 8-bit images. Pillow runs the horizontal pass first, except
/// (since Pillow 13, python-pillow/Pillow#9549) when the height shrinks by more than twice as
/// many pixels as the width, where it runs the vertical pass first (rule checked against Pillow
/// 13.0 on 1,600 random size pairs). The passes are run here as two one-axis resizes in Pillow
/// 13's order, which then matches Pillow but for rare pixels one or two levels off (the fixed-
/// point weights of `fast_image_resize` are coarser). Older Pillow versions always go
/// horizontal first and differ from this in the vertical-first cases only. Cost: one more
/// intermediate image; ~10% more time per image for a 500x375 centre crop from BMP, much less
/// from JPEG, where decoding dominates.
fn resample(
    src: Vec<u8>,
    src_size: (u32, u32),
    dst_size: (u32, u32),
    channels: usize,
    interpolation: Interpolation,
) -> Result<Vec<u8>, String> {
    let ((src_w, src_h), (dst_w, dst_h)) = (src_size, dst_size);
    if src_size == dst_size {
        return Ok(src);
    }
    if interpolation == Interpolation::Nearest || src_w == dst_w || src_h == dst_h {
        return resize_once(src, src_size, dst_size, channels, interpolation);
    }
    let height_shrink = src_h as i64 - dst_h as i64;
    let width_shrink = src_w as i64 - dst_w as i64;
    let mid = if height_shrink > 0 && height_shrink > 2 * width_shrink {
        (src_w, dst_h)
    } else {
        (dst_w, src_h)
    };
    let first = resize_once(src, src_size, mid, channels, interpolation)?;
    resize_once(first, mid, dst_size, channels, interpolation)
}

/// Decoded pixels: 8-bit, interleaved, `channels` per pixel (1 grey, 3 RGB, 4 RGBA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pixels {
    /// The pixels, row-major, `height * width * channels` bytes.
    pub data: Vec<u8>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Channels per pixel: 1, 3 or 4.
    pub channels: usize,
}

/// Grey to RGB, as Pillow's `convert("RGB")` of an `L` image: the value is replicated.
fn grey_to_rgb(grey: &[u8]) -> Vec<u8> {
    grey.iter().flat_map(|&v| [v, v, v]).collect()
}

/// Pixels of `from` channels (1 or 3, opaque) as `to` channels, for the conversions that are
/// exact after a resize (channels are resized independently, and an opaque image is resized
/// with alpha 255 everywhere, which premultiplying leaves unchanged): grey is replicated, an
/// opaque alpha (255) is appended.
fn expand_channels(px: Vec<u8>, from: usize, to: usize) -> Result<Vec<u8>, String> {
    Ok(match (from, to) {
        (f, t) if f == t => px,
        (1, 3) => grey_to_rgb(&px),
        (1, 4) => px.iter().flat_map(|&v| [v, v, v, 255]).collect(),
        (3, 4) => px
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        (f, t) => return Err(format!("cannot pack an image with {f} channels as {t}")),
    })
}

/// Resize an RGB image to `spec` (HWC uint8, `width * height * spec.channels` bytes).
pub fn resize_rgb(
    src: Vec<u8>,
    src_w: u32,
    src_h: u32,
    spec: &ResizeSpec,
) -> Result<Vec<u8>, String> {
    let px = Pixels {
        data: src,
        width: src_w,
        height: src_h,
        channels: 3,
    };
    resize_pixels(to_channels(px, spec.channels), (src_w, src_h), spec)
}

/// Bring decoded pixels (already in the colour space of [`to_channels`]) to the packed `spec`
/// geometry as `spec.channels` channels (HWC uint8, `W * H * C` bytes).
///
/// The resize geometry (torchvision's truncation rule, the crop offsets) comes from the
/// `original` size of the file, so an image decoded at a reduced DCT scale lands on exactly the
/// same intermediate size as a full-size decode. A grey image is resized as one channel and
/// replicated afterwards: the same pixels as replicating first (channels are resized
/// independently), at a third of the cost; an opaque image packed as RGBA is resized without
/// its (constant) alpha, which is appended afterwards. An image with an alpha channel is
/// resized as Pillow resizes RGBA: premultiplied (`RGBa`), resized, divided back, with Pillow's
/// rounding at both ends; `nearest` and a resize to the same size leave it as it is.
pub fn resize_pixels(
    mut px: Pixels,
    original: (u32, u32),
    spec: &ResizeSpec,
) -> Result<Vec<u8>, String> {
    let (nw, nh) = resized_size(original.0, original.1, spec);
    let premultiplied = px.channels == 4
        && (px.width, px.height) != (nw, nh)
        && spec.interpolation != Interpolation::Nearest;
    if premultiplied {
        premultiply(&mut px.data);
    }
    let mut resized = resample(
        px.data,
        (px.width, px.height),
        (nw, nh),
        px.channels,
        spec.interpolation,
    )?;
    if premultiplied {
        unpremultiply(&mut resized);
    }
    let c = spec.channels as usize;
    let resized = expand_channels(resized, px.channels, c)?;
    let (tw, th) = (spec.width, spec.height);
    if (nw, nh) == (tw, th) {
        return Ok(resized);
    }
    let row = c * tw as usize;
    let mut out = Vec::with_capacity(row * th as usize);
    match spec.mode {
        ResizeMode::Squash => unreachable!("squash always resizes to the target"),
        ResizeMode::CenterCrop => {
            let top = half_round_even(nh - th) as usize;
            let left = half_round_even(nw - tw) as usize;
            let src_row = c * nw as usize;
            for y in top..top + th as usize {
                let s = y * src_row + c * left;
                out.extend_from_slice(&resized[s..s + row]);
            }
        }
        ResizeMode::Pad => {
            let top = half_round_even(th - nh) as usize;
            let left = half_round_even(tw - nw) as usize;
            let fill: Vec<u8> = spec.pad_pixel().into_iter().cycle().take(row).collect();
            let src_row = c * nw as usize;
            for y in 0..th as usize {
                if y < top || y >= top + nh as usize {
                    out.extend_from_slice(&fill);
                } else {
                    let s = (y - top) * src_row;
                    out.extend_from_slice(&fill[..c * left]);
                    out.extend_from_slice(&resized[s..s + src_row]);
                    out.extend_from_slice(&fill[..row - c * left - src_row]);
                }
            }
        }
    }
    Ok(out)
}

/// Decode an encoded image (format from its content, not its name) to 8-bit RGB, as Pillow's
/// `convert("RGB")`: grey is replicated, alpha is dropped (not composited), palettes are
/// expanded, CMYK is converted, 16-bit is scaled.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<(Vec<u8>, u32, u32), String> {
    let px = decode(bytes, max_pixels)?;
    let data = match px.channels {
        1 => grey_to_rgb(&px.data),
        _ => px.data,
    };
    Ok((data, px.width, px.height))
}

/// Decode an encoded image (format from its content) to 8-bit grey or RGB [`Pixels`]: grey
/// (with or without alpha, 8 or 16 bits) stays one channel, everything else is converted to
/// RGB as Pillow's `convert("RGB")` does. The EXIF orientation is not applied (but a TIFF's
/// is, as Pillow does: see [`decode_with`]).
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Pixels, String> {
    decode_with(bytes, max_pixels, false, false)
}

/// [`decode`], keeping the alpha channel of an image that has one (as RGBA, 4 channels) when
/// `keep_alpha`, and applying the EXIF orientation when `exif_orientation`.
///
/// A TIFF's Orientation tag is applied either way: Pillow applies it when it loads a TIFF
/// (`TiffImagePlugin` calls `exif_transpose` on load; checked with Pillow 13), so that is what
/// torchvision sees.
pub fn decode_with(
    bytes: &[u8],
    max_pixels: u64,
    keep_alpha: bool,
    exif_orientation: bool,
) -> Result<Pixels, String> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let format = reader.format();
    if format.is_none() {
        return Err("not a recognised image format".into());
    }
    check_png_ancillary(bytes)?;
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(format!("image has an empty size {w}x{h}"));
    }
    if w as u64 * h as u64 > max_pixels {
        return Err(format!(
            "image is {w}x{h} = {} pixels, over the limit of {max_pixels} (possible decompression bomb; raise --max-pixels to allow)",
            w as u64 * h as u64
        ));
    }
    // Bounded by what this image needs (up to 16 bytes a pixel: 16-bit RGBA, decoded and
    // converted), not by the largest image allowed, so that an ancillary chunk (an ICC
    // profile, compressed text) cannot make a small image cost gigabytes.
    let mut limits = Limits::default();
    limits.max_alloc = Some(w as u64 * h as u64 * 16 + DECODE_SLACK_BYTES);
    decoder.set_limits(limits).map_err(|e| e.to_string())?;
    // Pillow's `exif_transpose` ignores an Orientation it cannot read: so does this.
    let orientation = if exif_orientation || format == Some(ImageFormat::Tiff) {
        decoder.orientation().unwrap_or(Orientation::NoTransforms)
    } else {
        Orientation::NoTransforms
    };
    let img = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    Ok(orient(to_pixels(img, keep_alpha), orientation))
}

/// A decoder's error as a skip reason: one that comes from the data ending early (an
/// `UnexpectedEof` anywhere in its chain) is reported as "truncated", as [`truncation`] does.
fn decode_error(e: image::ImageError) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut eof = false;
    while let Some(err) = source {
        eof |= err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof);
        source = err.source();
    }
    let text = e.to_string();
    eof |= text.contains("Unexpected End of File") || text.contains("failed to fill whole buffer");
    if eof {
        format!("truncated: the data ends before the image does ({text})")
    } else {
        text
    }
}

/// 8-bit grey (alpha dropped) or RGB, as `convert("RGB")` sees it before replicating grey; with
/// `keep_alpha`, an image with an alpha channel becomes RGBA (grey replicated), as
/// `convert("RGBA")`.
fn to_pixels(img: DynamicImage, keep_alpha: bool) -> Pixels {
    let (width, height) = (img.width(), img.height());
    let (data, channels) = match img {
        DynamicImage::ImageRgba8(i) if keep_alpha => (i.into_raw(), 4),
        a if keep_alpha && a.color().has_alpha() => (a.to_rgba8().into_raw(), 4),
        DynamicImage::ImageRgb8(i) => (i.into_raw(), 3),
        DynamicImage::ImageLuma8(i) => (i.into_raw(), 1),
        g @ (DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_)) => (g.to_luma8().into_raw(), 1),
        other => (other.to_rgb8().into_raw(), 3),
    };
    Pixels {
        data,
        width,
        height,
        channels,
    }
}

/// Decoded pixels (grey, RGB or RGBA) brought to the colour space a record of `channels`
/// channels is resized in: colour to grey by [`luma`] for 1 channel (before the resize, as
/// `convert("L")` comes before `Resize`); alpha dropped for 3. Grey stays grey (replicated
/// after the resize) and an opaque image stays without alpha (added after the resize).
pub fn to_channels(px: Pixels, channels: u32) -> Pixels {
    let data = match (px.channels, channels) {
        (3 | 4, 1) => to_luma(&px.data, px.channels),
        (4, 3) => px
            .data
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        _ => return px,
    };
    Pixels {
        channels: if channels == 1 { 1 } else { 3 },
        data,
        ..px
    }
}

/// `true` for the EXIF orientations that swap width and height (5 to 8).
fn transposes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Apply an EXIF orientation to interleaved pixels (any channel count), as Pillow's
/// `ImageOps.exif_transpose`: 2 `FLIP_LEFT_RIGHT`, 3 `ROTATE_180`, 4 `FLIP_TOP_BOTTOM`,
/// 5 `TRANSPOSE`, 6 `ROTATE_270` (90 degrees clockwise), 7 `TRANSVERSE`, 8 `ROTATE_90`.
pub fn orient(px: Pixels, o: Orientation) -> Pixels {
    if o == Orientation::NoTransforms {
        return px;
    }
    let (w, h, c) = (px.width as usize, px.height as usize, px.channels);
    let (ow, oh) = if transposes(o) { (h, w) } else { (w, h) };
    let mut data = vec![0u8; px.data.len()];
    // Source (column, row) of output pixel (x, y).
    let src = |x: usize, y: usize| -> (usize, usize) {
        match o {
            Orientation::NoTransforms => (x, y),
            Orientation::FlipHorizontal => (w - 1 - x, y),
            Orientation::Rotate180 => (w - 1 - x, h - 1 - y),
            Orientation::FlipVertical => (x, h - 1 - y),
            Orientation::Rotate90FlipH => (y, x),
            Orientation::Rotate90 => (y, h - 1 - x),
            Orientation::Rotate270FlipH => (w - 1 - y, h - 1 - x),
            Orientation::Rotate270 => (w - 1 - y, x),
        }
    };
    for (y, row) in data.chunks_exact_mut(ow * c).enumerate() {
        for (x, d) in row.chunks_exact_mut(c).enumerate() {
            let (sx, sy) = src(x, y);
            let s = (sy * w + sx) * c;
            d.copy_from_slice(&px.data[s..s + c]);
        }
    }
    Pixels {
        data,
        width: ow as u32,
        height: oh as u32,
        channels: c,
    }
}

/// The largest JPEG DCT scale-down (8 = full size, 4 = 1/2, 2 = 1/4, 1 = 1/8, in eighths) whose
/// output still has at least [`DCT_REDUCING_GAP`] times the resize target on both axes, so that
/// the antialiased resize that follows still averages over several decoded pixels per output
/// pixel (Pillow's `reducing_gap` rule for `draft` + `resize`), and that divides both sides
/// exactly. `None`: decode at full size.
pub fn dct_scale(src_w: u32, src_h: u32, spec: &ResizeSpec) -> Option<u32> {
    if spec.exact_decode || spec.interpolation == Interpolation::Nearest {
        return None;
    }
    let (nw, nh) = resized_size(src_w, src_h, spec);
    let scaled = |len: u32, eighths: u32| (len as u64 * eighths as u64).div_ceil(8);
    // Only scales that divide both sides exactly: jpeg-decoder rounds a partial block up
    // (300 px at 1/8 gives 38 rows for 37.5), which would shift the resize's sampling grid.
    let exact = |len: u32, eighths: u32| (len as u64 * eighths as u64).is_multiple_of(8);
    [1u32, 2, 4].into_iter().find(|&e| {
        exact(src_w, e)
            && exact(src_h, e)
            && scaled(src_w, e) >= DCT_REDUCING_GAP * nw as u64
            && scaled(src_h, e) >= DCT_REDUCING_GAP * nh as u64
    })
}

/// How many decoded pixels per output pixel (per axis) a DCT-scaled decode must keep at least.
pub const DCT_REDUCING_GAP: u64 = 2;

/// Pixels decoded at a reduced scale, and the full size of the file they came from.
type ScaledJpeg = (Pixels, (u32, u32));

/// The EXIF orientation recorded in a JPEG's APP1 segment (1 when there is none or it cannot
/// be read).
fn jpeg_orientation<R: std::io::Read>(dec: &jpeg_decoder::Decoder<R>) -> Orientation {
    dec.exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms)
}

/// Decode a JPEG at `eighths`/8 of its size with the IDCT scaled (`jpeg-decoder`), to RGB
/// (oriented when `spec.exif_orientation`; the returned full size is then the oriented one).
/// `None` when this path does not apply (not a JPEG it handles: 12-bit, CMYK, or a header it
/// rejects); the caller then decodes at full size as usual, so nothing is lost.
fn decode_jpeg_scaled(bytes: &[u8], spec: &ResizeSpec) -> Option<Result<ScaledJpeg, String>> {
    if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return None;
    }
    let mut dec = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    dec.read_info().ok()?;
    let info = dec.info()?;
    let (w, h) = (info.width as u32, info.height as u32);
    if w == 0 || h == 0 || w as u64 * h as u64 > spec.max_pixels {
        return None; // the full-size path reports these with its own messages
    }
    // Colour only: for a grey JPEG, Huffman decoding dominates and `jpeg-decoder`'s is slower
    // than zune-jpeg's, so a scaled decode saves nothing there (measured with the
    // `decode_speed` example: 2048x2048 q95 grey, 39 ms scaled against 38 ms full-size + a
    // one-channel resize), while a colour JPEG also skips full-size chroma upsampling and
    // colour conversion (2048x1536 q90: 20-34 ms against 44 ms).
    let channels = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => 3,
        _ => return None,
    };
    // The EXIF segment normally comes before the frame header, so `read_info` has seen it;
    // it is checked again after decoding, and a late one sends the file to the full-size path.
    let orientation = if spec.exif_orientation {
        jpeg_orientation(&dec)
    } else {
        Orientation::NoTransforms
    };
    let (ow, oh) = if transposes(orientation) {
        (h, w)
    } else {
        (w, h)
    };
    let eighths = dct_scale(ow, oh, spec)?;
    let want = |len: u32| ((len as u64 * eighths as u64).div_ceil(8)) as u16;
    let (sw, sh) = match dec.scale(want(w), want(h)) {
        Ok((sw, sh)) if (sw, sh) == (want(w), want(h)) => (sw as u32, sh as u32),
        _ => return None,
    };
    dec.set_max_decoding_buffer_size((spec.max_pixels as usize).saturating_mul(4));
    let pixels = match dec.decode() {
        Ok(p) => p,
        Err(e) => return Some(Err(format!("JPEG: {e}"))),
    };
    if pixels.len() != sw as usize * sh as usize * channels {
        return Some(Err(format!(
            "JPEG: decoded {} bytes for a {sw}x{sh} image",
            pixels.len()
        )));
    }
    if spec.exif_orientation && jpeg_orientation(&dec) != orientation {
        return None;
    }
    let px = Pixels {
        data: pixels,
        width: sw,
        height: sh,
        channels,
    };
    Some(Ok((orient(px, orientation), (ow, oh))))
}

/// Decode and resize one file's bytes into a packed record. A panic inside a decoder (they can
/// panic on hostile input) is caught and reported as an error for this file only.
///
/// Large JPEGs are decoded at a reduced scale when [`dct_scale`] allows it; everything else
/// (and any JPEG that path declines) is decoded at full size.
pub fn process(bytes: &[u8], spec: &ResizeSpec) -> Result<Vec<u8>, String> {
    isolate(|| {
        let (px, original) = match decode_jpeg_scaled(bytes, spec) {
            Some(decoded) => decoded?,
            None => {
                let px = decode_with(
                    bytes,
                    spec.max_pixels,
                    spec.channels == 4,
                    spec.exif_orientation,
                )?;
                let size = (px.width, px.height);
                (px, size)
            }
        };
        resize_pixels(to_channels(px, spec.channels), original, spec)
    })
}

/// Decode a truncated JPEG as far as its data goes (`--allow-truncated`): `jpeg-decoder`
/// fills the missing part as libjpeg does for Pillow's `LOAD_TRUNCATED_IMAGES`; then resize as
/// [`process`] does. Grey and RGB JPEGs only.
pub fn process_truncated_jpeg(bytes: &[u8], spec: &ResizeSpec) -> Result<Vec<u8>, String> {
    isolate(|| {
        let mut dec = jpeg_decoder::Decoder::new(Cursor::new(bytes));
        dec.read_info().map_err(|e| format!("JPEG: {e}"))?;
        let info = dec.info().ok_or("JPEG: no frame header")?;
        let (w, h) = (info.width as u32, info.height as u32);
        if w == 0 || h == 0 || w as u64 * h as u64 > spec.max_pixels {
            return Err(format!("JPEG: size {w}x{h} is empty or over --max-pixels"));
        }
        let channels = match info.pixel_format {
            jpeg_decoder::PixelFormat::RGB24 => 3,
            jpeg_decoder::PixelFormat::L8 => 1,
            _ => return Err("JPEG: only grey and RGB truncated JPEGs are decoded".into()),
        };
        dec.set_max_decoding_buffer_size((spec.max_pixels as usize).saturating_mul(4));
        let data = dec.decode().map_err(|e| format!("JPEG: {e}"))?;
        if data.len() != w as usize * h as usize * channels {
            return Err(format!("JPEG: decoded {} bytes for {w}x{h}", data.len()));
        }
        let px = Pixels {
            data,
            width: w,
            height: h,
            channels,
        };
        resize_pixels(to_channels(px, spec.channels), (w, h), spec)
    })
}

thread_local! {
    /// Set while [`isolate`] runs on this thread: its panics are caught and reported as a
    /// skipped file, so the panic hook stays quiet and records where the panic happened.
    static ISOLATED: Cell<bool> = const { Cell::new(false) };
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Install (once) a panic hook that is silent for panics inside [`isolate`] and hands every
/// other panic to the hook that was there before.
fn install_quiet_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if ISOLATED.with(Cell::get) {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()));
                PANIC_AT.with(|p| *p.borrow_mut() = at);
            } else {
                previous(info);
            }
        }));
    });
}

/// Run `f`, turning a panic into an error that carries the panic message (and nothing on
/// stderr: the caller reports the file as skipped with this reason).
pub fn isolate<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    install_quiet_panic_hook();
    let was = ISOLATED.with(|i| i.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    ISOLATED.with(|i| i.set(was));
    match result {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let at = PANIC_AT.with(|p| p.borrow_mut().take());
            Err(match at {
                Some(at) => format!("decoder panicked: {msg} (at {at})"),
                None => format!("decoder panicked: {msg}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(w: u32, h: u32, mode: ResizeMode) -> ResizeSpec {
        ResizeSpec {
            width: w,
            height: h,
            mode,
            interpolation: Interpolation::Bilinear,
            pad_color: [1, 2, 3],
            max_pixels: DEFAULT_MAX_PIXELS,
            exact_decode: false,
            channels: 3,
            exif_orientation: false,
        }
    }

    #[test]
    fn torchvision_resize_rule() {
        // Resize(224) on 500x375: short side 224, long int(224 * 500 / 375) = 298.
        assert_eq!(
            resized_size(500, 375, &spec(224, 224, ResizeMode::CenterCrop)),
            (298, 224)
        );
        assert_eq!(
            resized_size(375, 500, &spec(224, 224, ResizeMode::CenterCrop)),
            (224, 298)
        );
        assert_eq!(
            resized_size(500, 375, &spec(224, 224, ResizeMode::Pad)),
            (224, 168)
        );
        assert_eq!(
            resized_size(500, 375, &spec(100, 50, ResizeMode::Squash)),
            (100, 50)
        );
        assert_eq!(half_round_even(1), 0);
        assert_eq!(half_round_even(3), 2);
        assert_eq!(half_round_even(5), 2);
    }

    #[test]
    fn dct_scale_keeps_twice_the_resize_target() {
        let s = spec(224, 224, ResizeMode::CenterCrop);
        // 2048x1536 -> 298x224: 1/4 gives 512x384 (>= 596x448? no: 512 < 596), so 1/2.
        assert_eq!(dct_scale(2048, 1536, &s), Some(4));
        // 2048x2048 -> 224x224: 1/4 gives 512x512 >= 448x448.
        assert_eq!(dct_scale(2048, 2048, &s), Some(2));
        // 4000x4000: 1/8 gives 500x500 >= 448x448.
        assert_eq!(dct_scale(4000, 4000, &s), Some(1));
        // ImageNet-sized sources are decoded at full size.
        assert_eq!(dct_scale(500, 375, &s), None);
        // 7000x300 -> 16 px: 1/8 would give 37.5 rows, so 1/4 (1750x75).
        let small = spec(16, 16, ResizeMode::CenterCrop);
        assert_eq!(dct_scale(7000, 300, &small), Some(2));
        let exact = ResizeSpec {
            exact_decode: true,
            ..s
        };
        assert_eq!(dct_scale(4000, 4000, &exact), None);
        let nearest = ResizeSpec {
            interpolation: Interpolation::Nearest,
            ..s
        };
        assert_eq!(dct_scale(4000, 4000, &nearest), None);
    }

    #[test]
    fn grey_resized_as_one_channel_equals_rgb_resize() {
        let grey: Vec<u8> = (0..40 * 30).map(|i| ((i * 37) % 251) as u8).collect();
        let rgb = grey_to_rgb(&grey);
        let s = spec(12, 10, ResizeMode::CenterCrop);
        let px = Pixels {
            data: grey,
            width: 40,
            height: 30,
            channels: 1,
        };
        assert_eq!(
            resize_pixels(px, (40, 30), &s).unwrap(),
            resize_rgb(rgb, 40, 30, &s).unwrap()
        );
    }

    #[test]
    fn pad_fills_borders() {
        let src = vec![200u8; 4 * 2 * 3];
        let out = resize_rgb(src, 4, 2, &spec(4, 4, ResizeMode::Pad)).unwrap();
        assert_eq!(out.len(), 4 * 4 * 3);
        assert_eq!(&out[..3], &[1, 2, 3]);
        assert_eq!(&out[4 * 3..4 * 3 + 3], &[200, 200, 200]);
    }

    #[test]
    fn luma_is_pillows_rounded_fixed_point() {
        assert_eq!(luma(0, 0, 0), 0);
        assert_eq!(luma(255, 255, 255), 255);
        // 0.299 * 255 = 76.245, 0.587 * 255 = 149.685, 0.114 * 255 = 29.07.
        assert_eq!(
            (luma(255, 0, 0), luma(0, 255, 0), luma(0, 0, 255)),
            (76, 150, 29)
        );
        for v in 0..=255u8 {
            assert_eq!(luma(v, v, v), v);
        }
    }

    #[test]
    fn pad_colour_in_every_channel_order() {
        let s = |channels| ResizeSpec {
            channels,
            pad_color: [255, 0, 0],
            ..spec(4, 4, ResizeMode::Pad)
        };
        assert_eq!(s(1).pad_pixel(), vec![76]);
        assert_eq!(s(3).pad_pixel(), vec![255, 0, 0]);
        assert_eq!(s(4).pad_pixel(), vec![255, 0, 0, 255]);
        let px = Pixels {
            data: vec![200; 4 * 2],
            width: 4,
            height: 2,
            channels: 1,
        };
        let out = resize_pixels(px.clone(), (4, 2), &s(4)).unwrap();
        assert_eq!(out.len(), 4 * 4 * 4);
        assert_eq!(&out[..4], &[255, 0, 0, 255]);
        assert_eq!(&out[16..20], &[200, 200, 200, 255]);
        let out = resize_pixels(px, (4, 2), &s(1)).unwrap();
        assert_eq!((out[0], out[4], out.len()), (76, 200, 16));
    }

    #[test]
    fn opaque_rgba_resizes_as_rgb_with_alpha_255() {
        let rgb: Vec<u8> = (0..37 * 23 * 3).map(|i| ((i * 53) % 256) as u8).collect();
        let rgba: Vec<u8> = rgb
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect();
        let s = ResizeSpec {
            channels: 4,
            interpolation: Interpolation::Bicubic,
            ..spec(11, 9, ResizeMode::CenterCrop)
        };
        let as_rgb = resize_rgb(rgb, 37, 23, &s).unwrap();
        let px = Pixels {
            data: rgba,
            width: 37,
            height: 23,
            channels: 4,
        };
        assert_eq!(resize_pixels(px, (37, 23), &s).unwrap(), as_rgb);
        assert_eq!(as_rgb.len(), 11 * 9 * 4);
    }

    #[test]
    fn premultiply_round_trip_is_pillows() {
        let mut px = vec![200, 100, 0, 128, 10, 20, 30, 0, 7, 8, 9, 255];
        premultiply(&mut px);
        // 200 * 128 / 255 = 100.4 -> 100; 100 * 128 / 255 = 50.2 -> 50.
        assert_eq!(px, vec![100, 50, 0, 128, 0, 0, 0, 0, 7, 8, 9, 255]);
        unpremultiply(&mut px);
        // 255 * 100 / 128 = 199.2 -> 199 (truncated, as Pillow).
        assert_eq!(px, vec![199, 99, 0, 128, 0, 0, 0, 0, 7, 8, 9, 255]);
    }

    #[test]
    fn exif_orientations() {
        // 3 x 2 image, pixel value = 10 * row + column.
        let px = Pixels {
            data: vec![0, 1, 2, 10, 11, 12],
            width: 3,
            height: 2,
            channels: 1,
        };
        let o = |k: u8| {
            let r = orient(px.clone(), Orientation::from_exif(k).unwrap());
            (r.width, r.height, r.data)
        };
        assert_eq!(o(1), (3, 2, vec![0, 1, 2, 10, 11, 12]));
        assert_eq!(o(2), (3, 2, vec![2, 1, 0, 12, 11, 10]));
        assert_eq!(o(3), (3, 2, vec![12, 11, 10, 2, 1, 0]));
        assert_eq!(o(4), (3, 2, vec![10, 11, 12, 0, 1, 2]));
        assert_eq!(o(5), (2, 3, vec![0, 10, 1, 11, 2, 12])); // transpose
        assert_eq!(o(6), (2, 3, vec![10, 0, 11, 1, 12, 2])); // 90 degrees clockwise
        assert_eq!(o(7), (2, 3, vec![12, 2, 11, 1, 10, 0])); // transverse
        assert_eq!(o(8), (2, 3, vec![2, 12, 1, 11, 0, 10])); // 90 degrees anticlockwise
        let rgb = Pixels {
            data: (0..24).collect(),
            width: 4,
            height: 2,
            channels: 3,
        };
        let back = orient(
            orient(rgb.clone(), Orientation::Rotate90),
            Orientation::Rotate270,
        );
        assert_eq!(back, rgb);
    }

    #[test]
    fn a_panic_becomes_an_error_for_that_file() {
        let r: Result<(), String> = isolate(|| panic!("boom at row {}", 7));
        let msg = r.unwrap_err();
        assert!(
            msg.starts_with("decoder panicked: boom at row 7 (at "),
            "{msg}"
        );
        assert!(msg.contains("imaging.rs:"), "{msg}");
        assert_eq!(isolate(|| Ok(3)), Ok(3));
    }

    #[test]
    fn truncated_jpeg_png_and_webp_are_found() {
        let img = image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x * y) % 256) as u8])
        });
        for fmt in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP] {
            let mut buf = Cursor::new(Vec::new());
            img.write_to(&mut buf, fmt).unwrap();
            let b = buf.into_inner();
            assert_eq!(truncation(&b), None, "{fmt:?}");
            let mut cuts = vec![b.len() * 6 / 10, 30];
            if fmt != ImageFormat::Png {
                cuts.push(b.len() - 1); // Pillow accepts a PNG whose IEND is cut
            }
            for cut in cuts {
                let why = truncation(&b[..cut]);
                assert!(why.is_some(), "{fmt:?} cut at {cut} of {}", b.len());
            }
            // Trailing bytes after the end are not a truncation.
            let mut longer = b.clone();
            longer.extend_from_slice(b"trailing");
            assert_eq!(truncation(&longer), None, "{fmt:?}");
        }
    }

    #[test]
    fn a_png_with_an_iccp_bomb_is_refused_with_bounded_work() {
        let mut png = Cursor::new(Vec::new());
        image::RgbImage::new(4, 4)
            .write_to(&mut png, ImageFormat::Png)
            .unwrap();
        let png = png.into_inner();
        // 64 MiB of zeros, compressed small: over Pillow's 1 MiB MAX_TEXT_CHUNK.
        let stream = {
            let zeros = vec![0u8; 64 << 20];
            let mut c = fdeflate::Compressor::new(Vec::new()).unwrap();
            c.write_data(&zeros).unwrap();
            c.finish().unwrap()
        };
        let mut data = b"icc\0\0".to_vec();
        data.extend_from_slice(&stream);
        let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
        chunk.extend_from_slice(b"iCCP");
        chunk.extend_from_slice(&data);
        let crc = crc32fast::hash(&chunk[4..]);
        chunk.extend_from_slice(&crc.to_be_bytes());
        let at = 8 + 25; // after the signature and IHDR
        let bomb = [&png[..at], &chunk, &png[at..]].concat();
        let e = decode(&bomb, DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(e.contains("iCCP") && e.contains("MAX_TEXT_CHUNK"), "{e}");
        assert_eq!(truncation(&bomb), None);
        decode(&png, DEFAULT_MAX_PIXELS).unwrap();
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(process(b"", &spec(8, 8, ResizeMode::Squash)).is_err());
        assert!(process(b"hello world", &spec(8, 8, ResizeMode::Squash)).is_err());
        assert!(process(
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
            &spec(8, 8, ResizeMode::Squash)
        )
        .is_err());
    }
}
