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

    /// Samples per rank: every rank gets the same number. The permutation is padded by wrapping
    /// around to a multiple of `world_size` (as `torch.utils.data.DistributedSampler` does).
    pub fn samples_per_rank(&self) -> usize {
        (self.num_samples as usize).div_ceil(self.world_size.max(1))
    }

    /// This rank's samples for `epoch`, in order: positions `rank, rank + world_size, ...` of the
    /// padded permutation.
    pub fn rank_indices(&self, epoch: u64) -> Vec<u64> {
        let perm = self.permutation(epoch);
        if self.world_size <= 1 || perm.is_empty() {
            return perm;
        }
        let per = self.samples_per_rank();
        (0..per)
            .map(|k| perm[(k * self.world_size + self.rank) % perm.len()])
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
        }
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
    fn ranks_are_disjoint_and_cover() {
        let mut all = Vec::new();
        for rank in 0..3 {
            let s = Sampler {
                num_samples: 10,
                shuffle: true,
                seed: 1,
                rank,
                world_size: 3,
            };
            let idx = s.rank_indices(2);
            assert_eq!(idx.len(), 4);
            all.extend(idx);
        }
        all.sort_unstable();
        all.dedup();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn below_is_in_range() {
        let mut r = SplitMix64::new(3);
        for n in 1..200 {
            assert!(r.below(n) < n);
        }
    }
}
