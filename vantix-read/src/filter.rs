//! Reversible prediction filters applied to a record's pixels before compression (PNG's filter
//! types, one filter for every row of every record of a dataset).
//!
//! Each byte is replaced by its difference (mod 256) from a prediction made from neighbours
//! already seen: the byte `bpp` positions to the left (`a`, same channel of the previous pixel),
//! the byte above (`b`) and the one above-left (`c`); neighbours outside the image are 0.
//! Photographs are smooth, so the differences cluster around 0 and zstd compresses them far
//! better than the pixels themselves. The reader undoes the filter after decompressing.

use crate::format::Filter;

/// PNG's Paeth predictor: whichever of `a`, `b`, `c` is closest to `a + b - c`.
#[inline(always)]
fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = a as i16 + b as i16 - c as i16;
    let pa = (p - a as i16).abs();
    let pb = (p - b as i16).abs();
    let pc = (p - c as i16).abs();
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

#[inline(always)]
fn predict(filter: Filter, a: u8, b: u8, c: u8) -> u8 {
    match filter {
        Filter::None => 0,
        Filter::Left => a,
        Filter::Up => b,
        Filter::Avg => ((a as u16 + b as u16) / 2) as u8,
        Filter::Paeth => paeth(a, b, c),
    }
}

/// Filter `src` (an image of rows of `row` bytes, `bpp` bytes per pixel) into `dst`.
pub fn apply(filter: Filter, src: &[u8], dst: &mut [u8], row: usize, bpp: usize) {
    assert_eq!(src.len(), dst.len());
    assert!(row > 0 && bpp > 0 && src.len().is_multiple_of(row) && row.is_multiple_of(bpp));
    if filter == Filter::None {
        dst.copy_from_slice(src);
        return;
    }
    for (y, (srow, drow)) in src
        .chunks_exact(row)
        .zip(dst.chunks_exact_mut(row))
        .enumerate()
    {
        let up = (y > 0).then(|| &src[(y - 1) * row..y * row]);
        for x in 0..row {
            let a = if x >= bpp { srow[x - bpp] } else { 0 };
            let (b, c) = match up {
                Some(u) => (u[x], if x >= bpp { u[x - bpp] } else { 0 }),
                None => (0, 0),
            };
            drow[x] = srow[x].wrapping_sub(predict(filter, a, b, c));
        }
    }
}

/// Undo [`apply`] in place.
pub fn undo(filter: Filter, buf: &mut [u8], row: usize, bpp: usize) {
    assert!(row > 0 && bpp > 0 && buf.len().is_multiple_of(row) && row.is_multiple_of(bpp));
    let rows = buf.len() / row;
    match filter {
        Filter::None => {}
        // The common cases get tight loops the compiler can keep in registers.
        Filter::Left => {
            for r in buf.chunks_exact_mut(row) {
                for x in bpp..row {
                    r[x] = r[x].wrapping_add(r[x - bpp]);
                }
            }
        }
        Filter::Up => {
            for y in 1..rows {
                let (done, rest) = buf.split_at_mut(y * row);
                let up = &done[(y - 1) * row..];
                for (v, &u) in rest[..row].iter_mut().zip(up) {
                    *v = v.wrapping_add(u);
                }
            }
        }
        Filter::Avg | Filter::Paeth => {
            for y in 0..rows {
                let (done, rest) = buf.split_at_mut(y * row);
                let cur = &mut rest[..row];
                let up = (y > 0).then(|| &done[(y - 1) * row..]);
                for x in 0..row {
                    let a = if x >= bpp { cur[x - bpp] } else { 0 };
                    let (b, c) = match up {
                        Some(u) => (u[x], if x >= bpp { u[x - bpp] } else { 0 }),
                        None => (0, 0),
                    };
                    cur[x] = cur[x].wrapping_add(predict(filter, a, b, c));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: usize, h: usize, c: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..w * h * c)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((i / c) as u64 * 3 + (s >> 60)) as u8
            })
            .collect()
    }

    #[test]
    fn every_filter_round_trips() {
        for filter in [
            Filter::None,
            Filter::Left,
            Filter::Up,
            Filter::Avg,
            Filter::Paeth,
        ] {
            for (w, h, c) in [(1, 1, 3), (7, 5, 3), (16, 3, 1), (5, 9, 4), (1, 6, 3)] {
                let src = image(w, h, c, (w * h * c) as u64);
                let mut f = vec![0; src.len()];
                apply(filter, &src, &mut f, w * c, c);
                undo(filter, &mut f, w * c, c);
                assert_eq!(f, src, "{filter:?} {w}x{h}x{c}");
            }
        }
    }

    #[test]
    fn png_reference_values() {
        // Paeth of (a, b, c) from the PNG specification's definition.
        assert_eq!(paeth(10, 20, 15), 15); // p = 15: pc = 0
        assert_eq!(paeth(10, 20, 10), 20); // p = 20: pb = 0
        assert_eq!(paeth(10, 20, 20), 10); // p = 10: pa = 0
        assert_eq!(paeth(5, 5, 5), 5);
        // Left filter of one RGB row: differences from the same channel one pixel back.
        let src = [10, 20, 30, 11, 22, 33];
        let mut dst = [0; 6];
        apply(Filter::Left, &src, &mut dst, 6, 3);
        assert_eq!(dst, [10, 20, 30, 1, 2, 3]);
    }
}
