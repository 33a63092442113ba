//! The sampler: which samples an epoch visits, in which order, and which of them belong to this
//! rank. Everything is a pure function of `(seed, epoch)`, so every DDP rank computes the same
//! permutation without talking to the others, and a resumed run computes the same order again.
//!
//! The permutation is a Fisher-Yates shuffle driven by SplitMix64 seeded with
//! `mix(seed, epoch)`, with Lemire's unbiased bounded draw. This is part of the documented
//! behaviour (`docs/FORMAT.md`, "Sampling"): changing it changes every user's data order.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast and good enough for shuffling.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose state starts at `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform integer in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let mut m = (self.next_u64() as u128) * (n as u128);
        if (m as u64) < n {
            let t = n.wrapping_neg() % n;
            while (m as u64) < t {
                m = (self.next_u64() as u128) * (n as u128);
            }
        }
        (m >> 64) as u64
    }
    /// Uniform float in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

use std::str::FromStr;
use std::sync::Arc;

use crate::error::{parse_choice, Error, Result};

/// A 64-bit mix of several words, used to derive independent streams (epoch, sample, ...).
pub fn mix(words: &[u64]) -> u64 {
    let mut h = 0x243F_6A88_85A3_08D3u64;
    for &w in words {
        h = SplitMix64::new(h ^ w).next_u64();
    }
    h
}

/// The order of an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Order {
    /// The packed order (no shuffle).
    Sequential,
    /// A uniformly random permutation of the whole epoch (a true global shuffle).
    #[default]
    Random,
    /// For data larger than RAM: the epoch is cut into blocks of `block_size` neighbouring
    /// records, the blocks are shuffled, and samples are shuffled within each group of
    /// `window` consecutive (shuffled) blocks. Reads stay within `window` regions of
    /// `block_size` records at a time, so they are large and nearly sequential; the price is
    /// that a sample can only land near the other samples of its group in the order.
    Block {
        /// Records per block, at least 1.
        block_size: u64,
        /// Blocks shuffled together, at least 1.
        window: u64,
    },
    /// [`Order::Block`] (with these settings) when the dataset does not fit in the memory
    /// this process can use, [`Order::Random`] when it does: resolved once, when a
    /// [`crate::Loader`] is built ([`Order::resolve`]), so the order of a loader never changes
    /// while it lives; its resume key holds the resolved order. A [`Sampler`] used on its own,
    /// without a loader to resolve it, shuffles fully (as `Random`).
    Auto {
        /// Records per block if block order is taken, at least 1.
        block_size: u64,
        /// Blocks shuffled together if block order is taken, at least 1.
        window: u64,
    },
}

/// Records per block of [`Order::Block`] unless told otherwise (`block_size`).
pub const DEFAULT_BLOCK_SIZE: u64 = 256;
/// Blocks shuffled together in [`Order::Block`] unless told otherwise (`block_window`).
pub const DEFAULT_BLOCK_WINDOW: u64 = 16;

/// `"random"`, `"block"`, `"auto"` (both with [`DEFAULT_BLOCK_SIZE`] and
/// [`DEFAULT_BLOCK_WINDOW`]) or `"sequential"`.
impl FromStr for Order {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (block_size, window) = (DEFAULT_BLOCK_SIZE, DEFAULT_BLOCK_WINDOW);
        parse_choice(
            "order",
            s,
            &[
                ("random", Order::Random),
                ("block", Order::Block { block_size, window }),
                ("auto", Order::Auto { block_size, window }),
                ("sequential", Order::Sequential),
            ],
        )
    }
}

impl Order {
    /// The order `VantixLoader` options describe: `order` (see [`FromStr`]) with `shuffle`,
    /// else [`Order::Sequential`]; `block_size` and `block_window` (at least 1 each, checked
    /// whatever the order) set a block order's sizes.
    pub fn from_options(shuffle: bool, order: &str, block_size: u64, window: u64) -> Result<Self> {
        let order: Order = order.parse()?;
        for (name, v) in [("block_size", block_size), ("block_window", window)] {
            if v == 0 {
                return Err(Error::invalid(format!(
                    "{name} must be an int in [1, {}], got 0",
                    u64::MAX
                )));
            }
        }
        Ok(match order {
            _ if !shuffle => Order::Sequential,
            Order::Block { .. } => Order::Block { block_size, window },
            Order::Auto { .. } => Order::Auto { block_size, window },
            other => other,
        })
    }

    /// This order for a dataset that `fits` in memory or not: [`Order::Auto`] becomes block
    /// order (its settings) when it does not fit, random when it does; the others stay.
    pub fn resolve(self, fits: bool) -> Order {
        match self {
            Order::Auto { block_size, window } if !fits => Order::Block { block_size, window },
            Order::Auto { .. } => Order::Random,
            other => other,
        }
    }

    /// The option name of this order: `"random"`, `"block"`, `"auto"` or `"sequential"`.
    pub fn name(&self) -> &'static str {
        match self {
            Order::Sequential => "sequential",
            Order::Random => "random",
            Order::Block { .. } => "block",
            Order::Auto { .. } => "auto",
        }
    }
}

/// How an epoch that does not split evenly over the DDP ranks is made even (`ddp_remainder`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Remainder {
    /// Pad by wrapping around to the start of the permutation: every sample is seen, a few
    /// twice, as `DistributedSampler(drop_last=False)`.
    #[default]
    Pad,
    /// Drop the tail of the permutation: every sample at most once, as
    /// `DistributedSampler(drop_last=True)`.
    Drop,
}

/// `"pad"` or `"drop"`.
impl FromStr for Remainder {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        parse_choice(
            "ddp_remainder",
            s,
            &[("pad", Remainder::Pad), ("drop", Remainder::Drop)],
        )
    }
}

/// Which samples one rank visits in one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sampler {
    /// Samples in the dataset.
    pub num_samples: u64,
    /// A subset of dataset indices to draw from instead of all of them (e.g. a validation
    /// split); the order is computed over positions in this list.
    pub indices: Option<Arc<[u64]>>,
    /// The order of each epoch.
    pub order: Order,
    /// Seed of the permutation; with the epoch number it fixes each epoch's order.
    pub seed: u64,
    /// This process's DDP rank, `0..world_size`.
    pub rank: usize,
    /// Number of DDP ranks that share each epoch, at least 1 (1: no DDP).
    pub world_size: usize,
    /// How an epoch that does not split evenly over the ranks is made even.
    pub ddp_remainder: Remainder,
}

impl Default for Sampler {
    /// No samples (a [`crate::Loader`] sets `num_samples` to its dataset's), random order,
    /// seed 0, one rank.
    fn default() -> Self {
        Sampler::new(0, true, 0)
    }
}

fn fisher_yates(items: &mut [u64], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

impl Sampler {
    /// A sampler for the whole dataset with a full shuffle (or none), one rank.
    pub fn new(num_samples: u64, shuffle: bool, seed: u64) -> Self {
        Sampler {
            num_samples,
            indices: None,
            order: if shuffle {
                Order::Random
            } else {
                Order::Sequential
            },
            seed,
            rank: 0,
            world_size: 1,
            ddp_remainder: Remainder::Pad,
        }
    }

    /// Samples in one epoch over all ranks (before padding or dropping).
    pub fn epoch_len(&self) -> u64 {
        self.indices
            .as_ref()
            .map_or(self.num_samples, |s| s.len() as u64)
    }

    /// The full order of one epoch: dataset indices, each sample of the epoch once.
    pub fn permutation(&self, epoch: u64) -> Vec<u64> {
        let mut order: Vec<u64> = (0..self.epoch_len()).collect();
        let mut rng = SplitMix64::new(mix(&[self.seed, epoch]));
        match self.order {
            Order::Sequential => {}
            Order::Random | Order::Auto { .. } => fisher_yates(&mut order, &mut rng),
            Order::Block { block_size, window } => {
                let bs = block_size.max(1) as usize;
                let mut blocks: Vec<u64> = (0..order.len().div_ceil(bs) as u64).collect();
                fisher_yates(&mut blocks, &mut rng);
                order = blocks
                    .iter()
                    .flat_map(|&b| {
                        let lo = b as usize * bs;
                        lo as u64..(lo + bs).min(order.len()) as u64
                    })
                    .collect();
                // Groups of `window` blocks; a short last block makes group edges drift, so
                // cut the order by sample count instead of block boundaries.
                for group in order.chunks_mut(bs * window.max(1) as usize) {
                    fisher_yates(group, &mut rng);
                }
            }
        }
        if let Some(subset) = &self.indices {
            for o in order.iter_mut() {
                *o = subset[*o as usize];
            }
        }
        order
    }

    /// Samples per rank in an epoch entered `samples_seen` samples into the permutation: every
    /// rank gets the same number.
    pub fn samples_per_rank(&self, samples_seen: u64) -> usize {
        let rest = self.epoch_len().saturating_sub(samples_seen) as usize;
        let w = self.world_size.max(1);
        match self.ddp_remainder {
            Remainder::Drop => rest / w,
            Remainder::Pad => rest.div_ceil(w),
        }
    }

    /// Where an epoch entered `samples_seen` samples into the permutation stands after every
    /// rank took `batches` batches of `batch_size`: `samples_seen + batches * batch_size *
    /// world_size`, the position a resumed pass starts from (the `samples_seen` of a loader's
    /// `state_dict`).
    pub fn samples_seen_after(&self, samples_seen: u64, batches: u64, batch_size: u64) -> u64 {
        let w = self.world_size.max(1) as u64;
        samples_seen.saturating_add(batches.saturating_mul(batch_size).saturating_mul(w))
    }

    /// This rank's samples for `epoch`, skipping the first `samples_seen` samples of the
    /// permutation (already consumed by all ranks together, e.g. before a checkpoint):
    /// positions `samples_seen + rank, samples_seen + rank + world_size, ...`, wrapping around
    /// to the start of the permutation to pad. With `samples_seen = 0` this is
    /// `DistributedSampler`'s split; resuming from [`Sampler::samples_seen_after`] continues an
    /// interrupted epoch exactly, and with another `world_size` still visits every remaining
    /// sample once.
    pub fn rank_indices(&self, epoch: u64, samples_seen: u64) -> Vec<u64> {
        let start = samples_seen;
        let per = self.samples_per_rank(start) as u64;
        if per == 0 {
            return Vec::new();
        }
        let perm = self.permutation(epoch);
        let n = perm.len() as u64;
        let w = self.world_size.max(1) as u64;
        (0..per)
            .map(|k| perm[((start + k * w + self.rank as u64) % n) as usize])
            .collect()
    }
}

/// A reproducible split of `labels.len()` samples into `(train, val)` index lists, both sorted.
/// With `stratify`, each class contributes `round(fraction * class size)` samples to `val`
/// (so class proportions are kept); otherwise `round(fraction * n)` samples are drawn overall.
pub fn train_val_split(
    labels: &[u32],
    fraction: f64,
    seed: u64,
    stratify: bool,
) -> (Vec<u64>, Vec<u64>) {
    let mut rng = SplitMix64::new(mix(&[seed, 0x5B11_7000]));
    let mut groups: Vec<Vec<u64>> = if stratify {
        let classes = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
        let mut g = vec![Vec::new(); classes];
        for (i, &l) in labels.iter().enumerate() {
            g[l as usize].push(i as u64);
        }
        g
    } else {
        vec![(0..labels.len() as u64).collect()]
    };
    let mut val = Vec::new();
    for g in groups.iter_mut() {
        fisher_yates(g, &mut rng);
        let k = ((g.len() as f64) * fraction).round() as usize;
        val.extend_from_slice(&g[..k.min(g.len())]);
    }
    val.sort_unstable();
    let mut is_val = vec![false; labels.len()];
    val.iter().for_each(|&i| is_val[i as usize] = true);
    let train = (0..labels.len() as u64)
        .filter(|&i| !is_val[i as usize])
        .collect();
    (train, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(n: u64, shuffle: bool) -> Sampler {
        Sampler::new(n, shuffle, 7)
    }

    fn ranks(n: u64, world_size: usize, drop_remainder: bool) -> Vec<Sampler> {
        let ddp_remainder = if drop_remainder {
            Remainder::Drop
        } else {
            Remainder::Pad
        };
        (0..world_size)
            .map(|rank| Sampler {
                rank,
                world_size,
                ddp_remainder,
                ..Sampler::new(n, true, 1)
            })
            .collect()
    }

    fn is_permutation(order: &[u64], of: impl Iterator<Item = u64>) -> bool {
        let mut a = order.to_vec();
        a.sort_unstable();
        a == of.collect::<Vec<_>>()
    }

    #[test]
    fn subset_permutes_only_the_subset() {
        let subset: Arc<[u64]> = (0..50).map(|i| i * 3).collect::<Vec<_>>().into();
        let s = Sampler {
            indices: Some(subset),
            ..Sampler::new(150, true, 2)
        };
        let p = s.permutation(0);
        assert!(is_permutation(&p, (0..50).map(|i| i * 3)));
        assert_ne!(p, s.permutation(1));
    }

    #[test]
    fn block_order_is_a_permutation_with_local_reads() {
        let order = Order::Block {
            block_size: 10,
            window: 2,
        };
        let s = Sampler {
            order,
            ..Sampler::new(95, true, 5)
        };
        let p = s.permutation(3);
        assert!(is_permutation(&p, 0..95));
        assert_ne!(p, s.permutation(4));
        // Each group of 20 consecutive positions draws from at most 3 blocks of 10 records
        // (2, or 3 where the short last block shifts the group edges).
        for group in p.chunks(20) {
            let mut blocks: Vec<u64> = group.iter().map(|i| i / 10).collect();
            blocks.sort_unstable();
            blocks.dedup();
            assert!(blocks.len() <= 3, "{blocks:?}");
        }
    }

    #[test]
    fn split_is_reproducible_disjoint_and_stratified() {
        let labels: Vec<u32> = (0..100).map(|i| (i % 4) as u32).collect();
        let (train, val) = train_val_split(&labels, 0.2, 1, true);
        assert_eq!(val.len(), 20);
        assert_eq!(train.len(), 80);
        for c in 0..4 {
            assert_eq!(val.iter().filter(|&&i| labels[i as usize] == c).count(), 5);
        }
        assert_eq!(
            (train.clone(), val.clone()),
            train_val_split(&labels, 0.2, 1, true)
        );
        assert_ne!(val, train_val_split(&labels, 0.2, 2, true).1);
        let all: Vec<u64> = [train, val].concat();
        assert!(is_permutation(&all, 0..100));
    }

    #[test]
    fn permutation_is_a_permutation_and_changes_per_epoch() {
        let s = sampler(1000, true);
        let a = s.permutation(0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(a, s.permutation(1));
        assert_eq!(a, s.permutation(0));
        assert_eq!(
            sampler(10, false).permutation(3),
            (0..10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn ranks_pad_or_drop_evenly() {
        // 10 samples over 3 ranks: padded to 12 (two samples twice) or cut to 9.
        let padded: Vec<Vec<u64>> = ranks(10, 3, false)
            .iter()
            .map(|s| s.rank_indices(2, 0))
            .collect();
        assert!(padded.iter().all(|r| r.len() == 4));
        let mut all: Vec<u64> = padded.concat();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        let perm = ranks(10, 3, false)[0].permutation(2);
        assert_eq!(padded[1][3], perm[0]); // position 10 wraps to 0
        let dropped: Vec<u64> = ranks(10, 3, true)
            .iter()
            .flat_map(|s| s.rank_indices(2, 0))
            .collect();
        assert_eq!(dropped.len(), 9);
        let mut d = dropped.clone();
        d.sort_unstable();
        d.dedup();
        assert_eq!(d.len(), 9);
    }

    #[test]
    fn resuming_continues_the_same_order() {
        for s in ranks(23, 2, false) {
            let full = s.rank_indices(4, 0);
            let k = 3; // batches of 2 consumed on every rank
            assert_eq!(s.rank_indices(4, (k * 2 * 2) as u64), full[k * 2..]);
        }
    }

    #[test]
    fn resuming_with_another_world_size_sees_each_sample_once() {
        let consumed: Vec<u64> = ranks(30, 2, true)
            .iter()
            .flat_map(|s| s.rank_indices(0, 0)[..4].to_vec())
            .collect();
        let rest: Vec<u64> = ranks(30, 3, true)
            .iter()
            .flat_map(|s| s.rank_indices(0, 8))
            .collect();
        let mut all = [consumed, rest].concat();
        assert_eq!(all.len(), 8 + 21);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 29); // 22 remaining over 3 ranks: one dropped, none twice
    }

    #[test]
    fn options_parse_with_every_choice_listed() {
        assert_eq!("random".parse::<Order>().unwrap(), Order::Random);
        assert_eq!("drop".parse::<Remainder>().unwrap(), Remainder::Drop);
        let e = "x".parse::<Order>().unwrap_err().to_string();
        assert!(
            e.contains("'random', 'block', 'auto' or 'sequential'"),
            "{e}"
        );
        let auto = Order::from_options(true, "auto", 8, 2).unwrap();
        assert_eq!(
            auto,
            Order::Auto {
                block_size: 8,
                window: 2
            }
        );
        assert_eq!(auto.resolve(true), Order::Random);
        assert_eq!(
            auto.resolve(false),
            Order::Block {
                block_size: 8,
                window: 2
            }
        );
        assert_eq!(Order::Random.resolve(false), Order::Random);
        assert_eq!(auto.name(), "auto");
        assert_eq!(
            Order::from_options(false, "auto", 8, 2).unwrap(),
            Order::Sequential
        );
        let e = "x".parse::<Remainder>().unwrap_err().to_string();
        assert_eq!(e, "ddp_remainder must be one of 'pad' or 'drop', got \"x\"");
        let block = Order::from_options(true, "block", 8, 2).unwrap();
        assert_eq!(
            block,
            Order::Block {
                block_size: 8,
                window: 2
            }
        );
        assert_eq!(
            Order::from_options(false, "block", 8, 2).unwrap(),
            Order::Sequential
        );
        assert!(Order::from_options(true, "random", 0, 2).is_err());
        assert!(Order::from_options(false, "random", 8, 0).is_err());
    }

    #[test]
    fn samples_seen_counts_every_rank() {
        let s = &ranks(100, 3, false)[1];
        assert_eq!(s.samples_seen_after(12, 2, 4), 12 + 2 * 4 * 3);
    }

    #[test]
    fn below_is_in_range() {
        let mut r = SplitMix64::new(3);
        for n in 1..200 {
            assert!(r.below(n) < n);
        }
    }
}
