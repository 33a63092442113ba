//! Contact sheets: a PNG grid of images with a caption under each, so a user can see what was
//! packed (`vantix-pack preview`) or what a loader yields after augmentation
//! (`vantix.save_batch_grid` in Python, which calls [`contact_sheet`]).
//!
//! The layout is fixed and documented so that tests (and users) can find every tile:
//! tiles of `width*scale x height*scale` pixels (nearest-neighbour upscaling), [`GAP`] pixels
//! apart and from the border, each followed by a [`CAPTION_H`]-pixel caption strip; `columns`
//! tiles per row. Tile `k` has its top-left corner at
//! `(GAP + (k % columns) * (width*scale + GAP), GAP + (k / columns) * (height*scale + CAPTION_H + GAP))`.

use std::path::Path;

use vantix_read::sampler::Sampler;
use vantix_read::{Dataset, Error, Result};

use crate::font::{CELL_H, CELL_W, GLYPHS};

/// Pixels between tiles and around the sheet.
pub const GAP: usize = 4;
/// Height of the caption strip under each tile.
pub const CAPTION_H: usize = CELL_H + 4;
/// Largest contact sheet, in pixels (2^28: 768 MiB of RGB).
pub const MAX_SHEET_PIXELS: usize = 1 << 28;

/// The automatic scale makes tiles at least this wide, so captions stay readable.
pub const MIN_TILE_WIDTH: usize = 96;
/// Sheet background (dark grey) and caption colour.
pub const BACKGROUND: [u8; 3] = [32, 32, 32];
const TEXT: [u8; 3] = [240, 240, 240];
/// Side of a checkerboard square behind RGBA tiles, in sheet pixels.
pub const CHECKER: usize = 8;
/// The two greys of the checkerboard's squares, light first.
pub const CHECKER_GREYS: [u8; 2] = [204, 153];

/// `rgba` composited over the checkerboard at tile pixel `(tx, ty)`, rounded:
/// `(c * a + g * (255 - a) + 127) / 255`.
fn over_checker(rgba: &[u8], tx: usize, ty: usize) -> [u8; 3] {
    let g = u32::from(CHECKER_GREYS[(tx / CHECKER + ty / CHECKER) % 2]);
    let a = u32::from(rgba[3]);
    std::array::from_fn(|c| ((u32::from(rgba[c]) * a + g * (255 - a) + 127) / 255) as u8)
}

/// Images laid out as a sheet: `count` images of `height x width x channels` (HWC, uint8,
/// channels 1 = grey (shown grey), 3 = RGB or 4 = RGBA, shown composited over a light
/// checkerboard of [`CHECKER`]-pixel squares so that transparency is visible).
#[derive(Debug, Clone, Copy)]
pub struct SheetGeometry {
    /// Number of images (tiles) on the sheet.
    pub count: usize,
    /// Height of one image in pixels, before scaling.
    pub height: usize,
    /// Width of one image in pixels, before scaling.
    pub width: usize,
    /// Channels per pixel of the images: 1, 3 or 4.
    pub channels: usize,
    /// Tiles per row.
    pub columns: usize,
    /// Integer upscaling factor of every tile.
    pub scale: usize,
}

impl SheetGeometry {
    /// The layout for `count` images: `columns` default to a near-square grid
    /// (`ceil(sqrt(count))`), `scale` to the smallest factor that makes a tile at least
    /// [`MIN_TILE_WIDTH`] pixels wide.
    pub fn new(
        count: usize,
        height: usize,
        width: usize,
        channels: usize,
        columns: Option<usize>,
        scale: Option<usize>,
    ) -> Result<Self> {
        if count == 0 {
            return Err(Error::invalid("a contact sheet needs at least one image"));
        }
        if height == 0 || width == 0 || !matches!(channels, 1 | 3 | 4) {
            return Err(Error::invalid(format!(
                "contact sheet: images must be HxWxC with C = 1, 3 or 4, got {height}x{width}x{channels}"
            )));
        }
        let columns = match columns {
            Some(0) => return Err(Error::invalid("columns must be at least 1")),
            Some(c) => c.min(count),
            None => (count as f64).sqrt().ceil() as usize,
        };
        let scale = match scale {
            Some(0) => return Err(Error::invalid("scale must be at least 1")),
            Some(s) => s,
            None => MIN_TILE_WIDTH.div_ceil(width).max(1),
        };
        let g = SheetGeometry {
            count,
            height,
            width,
            channels,
            columns,
            scale,
        };
        // Checked: a huge scale (or image count) must not wrap round to a small sheet.
        let too_large = || {
            Error::invalid(format!(
                "contact sheet of {count} images of {width}x{height} at scale {scale} in \
                 {columns} columns is too large (over {} pixels): show fewer images or a \
                 smaller scale",
                MAX_SHEET_PIXELS
            ))
        };
        let rows = count.div_ceil(columns);
        let tw = width.checked_mul(scale).ok_or_else(too_large)?;
        let th = height.checked_mul(scale).ok_or_else(too_large)?;
        let w = (tw.checked_add(GAP))
            .and_then(|t| t.checked_mul(columns))
            .and_then(|t| t.checked_add(GAP));
        let h = (th.checked_add(CAPTION_H + GAP))
            .and_then(|t| t.checked_mul(rows))
            .and_then(|t| t.checked_add(GAP));
        match (w, h) {
            (Some(w), Some(h)) if w.checked_mul(h).is_some_and(|p| p <= MAX_SHEET_PIXELS) => Ok(g),
            _ => Err(too_large()),
        }
    }

    /// Rows of tiles: `count / columns`, rounded up.
    pub fn rows(&self) -> usize {
        self.count.div_ceil(self.columns)
    }

    /// `(width, height)` of one tile on the sheet.
    pub fn tile_size(&self) -> (usize, usize) {
        (self.width * self.scale, self.height * self.scale)
    }

    /// `(width, height)` of the whole sheet in pixels.
    pub fn sheet_size(&self) -> (usize, usize) {
        let (tw, th) = self.tile_size();
        (
            GAP + self.columns * (tw + GAP),
            GAP + self.rows() * (th + CAPTION_H + GAP),
        )
    }

    /// `(x, y)` of the top-left pixel of tile `k`.
    pub fn tile_origin(&self, k: usize) -> (usize, usize) {
        let (tw, th) = self.tile_size();
        (
            GAP + (k % self.columns) * (tw + GAP),
            GAP + (k / self.columns) * (th + CAPTION_H + GAP),
        )
    }
}

/// An RGB image, row-major, 3 bytes per pixel.
pub struct Sheet {
    /// Width of the sheet in pixels.
    pub width: usize,
    /// Height of the sheet in pixels.
    pub height: usize,
    /// The pixels: `height * width * 3` bytes, RGB.
    pub pixels: Vec<u8>,
}

impl Sheet {
    /// Write the sheet as a PNG file.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        image::save_buffer_with_format(
            path,
            &self.pixels,
            self.width as u32,
            self.height as u32,
            image::ExtendedColorType::Rgb8,
            image::ImageFormat::Png,
        )
        .map_err(|e| match e {
            image::ImageError::IoError(io) => Error::io(path, io),
            other => Error::internal(format!("{}: cannot write PNG: {other}", path.display())),
        })
    }

    fn put(&mut self, x: usize, y: usize, rgb: [u8; 3]) {
        let o = (y * self.width + x) * 3;
        self.pixels[o..o + 3].copy_from_slice(&rgb);
    }

    fn blend(&mut self, x: usize, y: usize, rgb: [u8; 3], coverage: u32) {
        let o = (y * self.width + x) * 3;
        for (c, &t) in rgb.iter().enumerate() {
            let b = u32::from(self.pixels[o + c]);
            self.pixels[o + c] = ((b * (15 - coverage) + u32::from(t) * coverage + 7) / 15) as u8;
        }
    }

    /// Draw `text` (printable ASCII; other characters show as `?`) with its top-left corner at
    /// `(x, y)`, clipped to `max_width` pixels: a caption that does not fit ends in `~`.
    fn text(&mut self, x: usize, y: usize, text: &str, max_width: usize) {
        let fit = max_width / CELL_W;
        let chars: Vec<char> = text.chars().collect();
        let shown: Vec<char> = if chars.len() > fit && fit > 0 {
            chars[..fit - 1].iter().copied().chain(['~']).collect()
        } else {
            chars.into_iter().take(fit).collect()
        };
        for (i, ch) in shown.into_iter().enumerate() {
            let code = if (' '..='~').contains(&ch) { ch } else { '?' } as usize;
            let glyph = GLYPHS[code - 32].as_bytes();
            for gy in 0..CELL_H {
                for gx in 0..CELL_W {
                    let v = (glyph[gy * CELL_W + gx] as char).to_digit(16).unwrap_or(0);
                    let (px, py) = (x + i * CELL_W + gx, y + gy);
                    if v > 0 && px < self.width && py < self.height {
                        self.blend(px, py, TEXT, v);
                    }
                }
            }
        }
    }
}

/// Lay out `images` (`g.count` HWC uint8 images, back to back) with one caption each.
pub fn contact_sheet(images: &[u8], captions: &[String], g: &SheetGeometry) -> Result<Sheet> {
    let record = g.height * g.width * g.channels;
    if images.len() != g.count * record {
        return Err(Error::invalid(format!(
            "contact sheet: expected {} images of {}x{}x{} ({} bytes), got {} bytes",
            g.count,
            g.height,
            g.width,
            g.channels,
            g.count * record,
            images.len()
        )));
    }
    if captions.len() != g.count {
        return Err(Error::invalid(format!(
            "contact sheet: {} images but {} captions",
            g.count,
            captions.len()
        )));
    }
    let (width, height) = g.sheet_size();
    let mut sheet = Sheet {
        width,
        height,
        pixels: BACKGROUND.repeat(width * height),
    };
    let (tw, th) = g.tile_size();
    for (k, (img, caption)) in images.chunks_exact(record).zip(captions).enumerate() {
        let (x0, y0) = g.tile_origin(k);
        for ty in 0..th {
            for tx in 0..tw {
                let p = ((ty / g.scale) * g.width + tx / g.scale) * g.channels;
                let rgb = match g.channels {
                    1 => [img[p]; 3],
                    4 => over_checker(&img[p..p + 4], tx, ty),
                    _ => [img[p], img[p + 1], img[p + 2]],
                };
                sheet.put(x0 + tx, y0 + ty, rgb);
            }
        }
        sheet.text(x0, y0 + th + 2, caption, tw);
    }
    Ok(sheet)
}

/// The records a preview shows when none are named: `num` distinct indices drawn at random
/// with `seed` (the loader's permutation of epoch 0), in ascending order so the sheet follows
/// the class order. All records when `num >= len`.
pub fn sample_indices(len: usize, num: usize, seed: u64) -> Vec<u64> {
    let mut idx: Vec<u64> = Sampler::new(len as u64, true, seed)
        .permutation(0)
        .into_iter()
        .take(num)
        .collect();
    idx.sort_unstable();
    idx
}

/// A contact sheet of the dataset's records `indices`, each captioned `#index class`.
pub fn dataset_sheet(
    ds: &Dataset,
    indices: &[u64],
    columns: Option<usize>,
    scale: Option<usize>,
) -> Result<Sheet> {
    let geo = ds.geometry();
    let g = SheetGeometry::new(
        indices.len(),
        geo.height as usize,
        geo.width as usize,
        geo.channels as usize,
        columns,
        scale,
    )?;
    let record = ds.record_bytes();
    if let Some(&i) = indices.iter().find(|&&i| i >= ds.len() as u64) {
        return Err(Error::invalid(format!(
            "{}: record {i} is out of range (the dataset has {} records)",
            ds.root().display(),
            ds.len()
        )));
    }
    let bytes = record.checked_mul(indices.len()).ok_or_else(|| {
        Error::invalid(format!(
            "{}: {} records are too many for a contact sheet",
            ds.root().display(),
            indices.len()
        ))
    })?;
    let mut images = vantix_read::try_zeroed(bytes, "the contact sheet's records")?;
    let mut captions = Vec::with_capacity(indices.len());
    // As every read path: the shards must not have changed on disk since open (a truncated
    // mapping would kill the process with SIGBUS), checked before and after the copy.
    ds.check_before_read(indices, vantix_read::Verify::None)?;
    for (&i, dst) in indices.iter().zip(images.chunks_exact_mut(record)) {
        let i = i as usize;
        ds.read_into(i, dst)?;
        let label = ds.label(i)? as usize;
        let class = ds.classes().get(label).map_or("?", String::as_str);
        captions.push(format!("#{i} {class}"));
    }
    ds.check_after_read(indices)?;
    contact_sheet(&images, &captions, &g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_pixels() {
        let g = SheetGeometry::new(5, 2, 3, 3, Some(2), Some(2)).unwrap();
        assert_eq!(g.rows(), 3);
        assert_eq!(g.tile_size(), (6, 4));
        assert_eq!(
            g.sheet_size(),
            (GAP + 2 * (6 + GAP), GAP + 3 * (4 + CAPTION_H + GAP))
        );
        let images: Vec<u8> = (0..5 * 2 * 3 * 3).map(|v| v as u8).collect();
        let captions: Vec<String> = (0..5)
            .map(|i| format!("#{i} a very long class name"))
            .collect();
        let s = contact_sheet(&images, &captions, &g).unwrap();
        assert_eq!(s.pixels.len(), s.width * s.height * 3);
        // Tile 3, source pixel (row 1, col 2) covers the 2x2 block at (x0+4.., y0+2..).
        let (x0, y0) = g.tile_origin(3);
        let src = 3 * 18 + (3 + 2) * 3;
        let o = ((y0 + 3) * s.width + x0 + 5) * 3;
        assert_eq!(&s.pixels[o..o + 3], &images[src..src + 3]);
        // The border stays background.
        assert_eq!(&s.pixels[0..3], &BACKGROUND);
    }

    #[test]
    fn grey_is_grey_and_rgba_is_composited_on_a_checkerboard() {
        let g = SheetGeometry::new(2, 1, 2, 4, Some(2), Some(CHECKER * 2)).unwrap();
        // Opaque red, then a half-transparent pixel, then two fully transparent ones.
        let images = [255, 0, 0, 255, 0, 0, 255, 128, 9, 9, 9, 0, 9, 9, 9, 0];
        let s = contact_sheet(&images, &["a".into(), "b".into()], &g).unwrap();
        let at = |k: usize, x: usize, y: usize| {
            let (x0, y0) = g.tile_origin(k);
            let o = ((y0 + y) * s.width + x0 + x) * 3;
            [s.pixels[o], s.pixels[o + 1], s.pixels[o + 2]]
        };
        assert_eq!(at(0, 0, 0), [255, 0, 0]);
        // Blue at alpha 128 over 204 (square (2, 0) of the checkerboard is the first grey).
        let x = 2 * CHECKER;
        let mix = |c: u32, g: u32| ((c * 128 + g * 127 + 127) / 255) as u8;
        assert_eq!(at(0, x, 0), [mix(0, 204), mix(0, 204), mix(255, 204)]);
        assert_eq!(at(1, 0, 0), [204; 3]);
        assert_eq!(at(1, CHECKER, 0), [153; 3]);
        let grey = SheetGeometry::new(1, 1, 1, 1, None, Some(1)).unwrap();
        let s = contact_sheet(&[77], &["g".into()], &grey).unwrap();
        let (x0, y0) = grey.tile_origin(0);
        let o = (y0 * s.width + x0) * 3;
        assert_eq!(&s.pixels[o..o + 3], &[77, 77, 77]);
    }

    #[test]
    fn automatic_geometry_and_errors() {
        let g = SheetGeometry::new(10, 32, 32, 3, None, None).unwrap();
        assert_eq!((g.columns, g.scale), (4, 3));
        assert_eq!(
            SheetGeometry::new(1, 224, 224, 1, None, None)
                .unwrap()
                .scale,
            1
        );
        assert!(SheetGeometry::new(0, 2, 2, 3, None, None).is_err());
        assert!(SheetGeometry::new(1, 2, 2, 2, None, None).is_err());
        let g = SheetGeometry::new(2, 2, 2, 3, None, Some(1)).unwrap();
        assert!(contact_sheet(&[0; 5], &["a".into(), "b".into()], &g).is_err());
    }

    #[test]
    fn sampled_indices_are_distinct_sorted_and_reproducible() {
        let a = sample_indices(100, 10, 7);
        assert_eq!(a, sample_indices(100, 10, 7));
        assert_ne!(a, sample_indices(100, 10, 8));
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a.len() == 10);
        assert_eq!(sample_indices(3, 10, 0), vec![0, 1, 2]);
    }
}
