//! `vantix-pack --part I/N`: which slice of the sorted source list each part packs, and what
//! its manifest records about it ([`PartInfo`]). `merge` ([`crate::merge`]) joins the parts.

use vantix_read::format::PartInfo;
use vantix_read::{Error, Result};

/// The slice `[first, end)` of a sorted source list of `len` files that part `index` of `count`
/// packs: `[floor(index * len / count), floor((index + 1) * len / count))`. The slices of all
/// parts are contiguous, in order, and cover the list; a part is empty when `count > len`
/// leaves it nothing.
pub fn part_range(index: u64, count: u64, len: u64) -> (u64, u64) {
    let at = |i: u64| (i as u128 * len as u128 / count as u128) as u64;
    (at(index), at(index + 1))
}

/// Check a `--part I/N` request.
pub fn check_part(index: u64, count: u64) -> Result<()> {
    if count == 0 {
        return Err(Error::invalid(format!(
            "--part {index}/{count}: the number of parts must be at least 1"
        )));
    }
    if index >= count {
        return Err(Error::invalid(format!(
            "--part {index}/{count}: parts are numbered from 0, so the index must be below {count} \
             (0/{count} .. {}/{count})",
            count - 1
        )));
    }
    Ok(())
}

/// The slice `[first, end)` of a source list of `len` files that a pack of `part` (`None`: the
/// whole tree) holds.
pub(crate) fn slice(part: Option<(u64, u64)>, len: u64) -> (u64, u64) {
    match part {
        Some((index, count)) => part_range(index, count, len),
        None => (0, len),
    }
}

/// What the manifest of a pack of `part`, holding the sources `[first, end)`, says about it.
pub(crate) fn part_info(part: Option<(u64, u64)>, first: u64, end: u64) -> Option<PartInfo> {
    part.map(|(index, count)| PartInfo {
        index,
        count,
        first_source: first,
        num_sources: end - first,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_list_in_order() {
        for len in [0u64, 1, 7, 100] {
            for count in 1..=9u64 {
                let mut next = 0;
                for index in 0..count {
                    let (first, end) = slice(Some((index, count)), len);
                    assert_eq!(first, next);
                    assert!(end >= first);
                    next = end;
                }
                assert_eq!(next, len);
            }
            assert_eq!(slice(None, len), (0, len));
        }
        assert!(check_part(0, 0).is_err() && check_part(3, 3).is_err());
        check_part(2, 3).unwrap();
        let info = part_info(Some((1, 3)), 4, 9).unwrap();
        assert_eq!((info.first_source, info.num_sources), (4, 5));
    }
}
