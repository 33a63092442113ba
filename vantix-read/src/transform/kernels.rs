//! The pixel kernels of a [`Prepared`] transform: crop with zero fill, flips, the
//! antialiased resize of a random-resized-crop, and the conversion of finished uint8 rows into
//! the output type and layout. Which crop and flip a sample gets is decided in the parent
//! module ([`Prepared::params`]); nothing here draws random numbers.

use std::cell::RefCell;

use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::{Layout, Params, Prepared};
use crate::error::{Error, Result};

/// Conversion of a finished uint8 HWC row into the output element type: one table per channel.
pub(super) enum Lut {
    /// uint8 NHWC: rows are written straight into the output.
    Direct,
    U8(Vec<[u8; 256]>),
    F32(Vec<[f32; 256]>),
    /// float16 or bfloat16 bit patterns.
    Bits16(Vec<[u16; 256]>),
}

thread_local! {
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
    /// One output row (uint8 HWC) before conversion.
    static ROW: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// A resized crop (uint8 HWC) before conversion.
    static RESIZED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Prepared {
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
        // Output row `y` comes from row `crop_row(y)` of the (resized) crop.
        let crop_row = |y: usize| if p.vertical_flip { oh - 1 - y } else { y };
        if let Lut::Direct = self.lut {
            if rrc && !p.flip && !p.vertical_flip {
                resize_crop(src, (sh, sw, c), p, out, (oh as u32, ow as u32))?;
            } else if rrc {
                RESIZED.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    buf.resize(oh * row_bytes, 0);
                    resize_crop(src, (sh, sw, c), p, &mut buf, (oh as u32, ow as u32))?;
                    for (y, d) in out.chunks_exact_mut(row_bytes).enumerate() {
                        let s = &buf[crop_row(y) * row_bytes..][..row_bytes];
                        if p.flip {
                            copy_reversed(d, s, c);
                        } else {
                            d.copy_from_slice(s);
                        }
                    }
                    Ok::<_, Error>(())
                })?;
            } else {
                for (y, row) in out.chunks_exact_mut(row_bytes).enumerate() {
                    let sy = p.top + crop_row(y) as i64;
                    fill_row(src, (sh, sw, c), sy, p.left, p.flip, row);
                }
            }
            return Ok(());
        }
        ROW.with(|row| {
            let mut row = row.borrow_mut();
            row.resize(row_bytes, 0);
            let mut emit = |img: &[u8], (ih, iw): (u32, u32), top: i64, left: i64| {
                for y in 0..oh {
                    let sy = top + crop_row(y) as i64;
                    fill_row(img, (ih, iw, c), sy, left, p.flip, &mut row[..]);
                    match &self.lut {
                        Lut::Direct => unreachable!(),
                        Lut::U8(t) => store(t, &row, y, oh, self.transform.layout, &mut *out),
                        Lut::F32(t) => {
                            store(t, &row, y, oh, self.transform.layout, cast(&mut *out))
                        }
                        Lut::Bits16(t) => {
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
pub(super) fn cast<T: Copy>(out: &mut [u8]) -> &mut [T] {
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
        Layout::Nhwc | Layout::ChannelsLast => {
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
        Layout::Nhwc | Layout::ChannelsLast => {
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
}
