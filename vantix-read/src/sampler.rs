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
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
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

/// A 64-bit mix of several words, used to derive independent streams (epoch, sample, ...).
pub fn mix(words: &[u64]) -> u64 {
    let mut h = 0x243F_6A88_85A3_08D3u64;
    for &w in words {
        h = SplitMix64::new(h ^ w).next_u64();
    }
    h
}

/// Which samples one rank visits in one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sampler {
    pub num_samples: u64,
    pub shuffle: bool,
    pub seed: u64,
    pub rank: usize,
    pub world_size: usize,
    /// How an epoch that does not split evenly over the ranks is made even: `false` pads by
    /// wrapping around to the start of the permutation (every sample is seen, a few twice, as
    /// `DistributedSampler(drop_last=False)`); `true` drops the tail of the permutation (every
    /// sample at most once, as `DistributedSampler(drop_last=True)`).
    pub drop_remainder: bool,
}

impl Sampler {
    /// The full order of one epoch: a permutation of `0..num_samples` (identity without shuffle).
    pub fn permutation(&self, epoch: u64) -> Vec<u64> {
        let mut order: Vec<u64> = (0..self.num_samples).collect();
        if self.shuffle {
            let mut rng = SplitMix64::new(mix(&[self.seed, epoch]));
            for i in (1..order.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                order.swap(i, j);
            }
        }
        order
    }

    /// Samples per rank in an epoch that starts `start` samples into the permutation: every
    /// rank gets the same number.
    pub fn samples_per_rank(&self, start: u64) -> usize {
        let rest = self.num_samples.saturating_sub(start) as usize;
        let w = self.world_size.max(1);
        if self.drop_remainder {
            rest / w
        } else {
            rest.div_ceil(w)
        }
    }

    /// This rank's samples for `epoch`, skipping the first `start` samples of the permutation
    /// (already consumed by all ranks together, e.g. before a checkpoint): positions
    /// `start + rank, start + rank + world_size, ...`, wrapping around to the start of the
    /// permutation to pad. With `start = 0` this is `DistributedSampler`'s split; resuming
    /// from `start = k * batch_size * world_size` continues an interrupted epoch exactly, and
    /// with another `world_size` still visits every remaining sample once.
    pub fn rank_indices(&self, epoch: u64, start: u64) -> Vec<u64> {
        let perm = self.permutation(epoch);
        let n = perm.len() as u64;
        let w = self.world_size.max(1) as u64;
        (0..self.samples_per_rank(start) as u64)
            .map(|k| perm[((start + k * w + self.rank as u64) % n) as usize])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(n: u64, shuffle: bool) -> Sampler {
        Sampler {
            num_samples: n,
            shuffle,
            seed: 7,
            rank: 0,
            world_size: 1,
            drop_remainder: false,
        }
    }

    fn ranks(n: u64, world_size: usize, drop_remainder: bool) -> Vec<Sampler> {
        (0..world_size)
            .map(|rank| Sampler {
                num_samples: n,
                shuffle: true,
                seed: 1,
                rank,
                world_size,
                drop_remainder,
            })
            .collect()
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
    fn below_is_in_range() {
        let mut r = SplitMix64::new(3);
        for n in 1..200 {
            assert!(r.below(n) < n);
        }
    }
}
