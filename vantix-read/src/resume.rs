//! The resume key: a fingerprint of everything that decides which samples a pass yields, in
//! which order, and with which pixels, apart from the epoch and the position in it. A loader's
//! `state_dict` stores it; resuming refuses a state whose key differs, because the rest of that
//! epoch would then not be the rest of the interrupted one.
//!
//! The key is XXH3-128 (32 lower-case hex digits) of a canonical text, one field per line,
//! specified in `docs/FORMAT.md` §7.11 with a test vector. It covers the dataset's identity, the
//! seed, the order (with the block settings; for `order="auto"` the order it resolved to on
//! this machine, so that a resume where it resolves otherwise is refused), the subset of indices, and the augmentation and
//! output options. It does not cover `batch_size`, `world_size`, `rank`, `drop_last`, the DDP
//! remainder policy, `prefetch`, `num_threads` or `verify`: a resume may change those (the ranks
//! split what is left of the same permutation).

use std::fmt::Write;

use crate::loader::Loader;
use crate::sampler::Order;
use crate::transform::Transform;

/// What the resume key is computed from.
#[derive(Clone, Copy, Debug)]
pub struct ResumeInputs<'a> {
    /// [`crate::Dataset::identity`] of the dataset read.
    pub dataset: &'a str,
    /// The sampler's seed.
    pub seed: u64,
    /// The epoch order, with its block settings.
    pub order: Order,
    /// The subset of dataset indices drawn from (`None`: every sample).
    pub indices: Option<&'a [u64]>,
    /// The augmentation and output options.
    pub transform: &'a Transform,
}

impl<'a> ResumeInputs<'a> {
    /// The inputs of `loader`'s key.
    pub fn of(loader: &'a Loader) -> Self {
        let (c, s) = (loader.config(), loader.sampler());
        ResumeInputs {
            dataset: loader.dataset().identity(),
            seed: s.seed,
            order: s.order,
            indices: s.indices.as_deref(),
            transform: &c.augment,
        }
    }

    /// The canonical text hashed by [`ResumeInputs::key`].
    pub fn text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "vantix-resume 1");
        let _ = writeln!(t, "dataset {}", self.dataset);
        let _ = writeln!(t, "seed {}", self.seed);
        let _ = match self.order {
            Order::Sequential => writeln!(t, "order sequential"),
            Order::Random => writeln!(t, "order random"),
            Order::Block { block_size, window } => {
                writeln!(t, "order block {block_size} {window}")
            }
            // A loader resolves `Auto` when it is built: its key holds the order taken.
            Order::Auto { block_size, window } => {
                writeln!(t, "order auto {block_size} {window}")
            }
        };
        let _ = match self.indices {
            None => writeln!(t, "indices all"),
            Some(idx) => {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                idx.iter().for_each(|i| h.update(&i.to_le_bytes()));
                writeln!(t, "indices {} {:016x}", idx.len(), h.digest())
            }
        };
        self.transform.write_resume_text(&mut t);
        t
    }

    /// The resume key: XXH3-128 of [`ResumeInputs::text`], as 32 lower-case hex digits.
    pub fn key(&self) -> String {
        format!(
            "{:032x}",
            xxhash_rust::xxh3::xxh3_128(self.text().as_bytes())
        )
    }
}

/// `loader`'s resume key ([`ResumeInputs::key`]).
pub fn resume_key(loader: &Loader) -> String {
    ResumeInputs::of(loader).key()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of `docs/FORMAT.md` §7.11.
    #[test]
    fn test_vector() {
        let tr = Transform {
            random_resized_crop: Some((224, 224)),
            horizontal_flip: 0.5,
            ..Transform::default()
        };
        let inputs = ResumeInputs {
            dataset: "0123456789abcdef0123456789abcdef",
            seed: 7,
            order: Order::Block {
                block_size: 256,
                window: 16,
            },
            indices: Some(&[2, 4, 6]),
            transform: &tr,
        };
        let text = inputs.text();
        let expect = "vantix-resume 1\n\
                      dataset 0123456789abcdef0123456789abcdef\n\
                      seed 7\n\
                      order block 256 16\n\
                      indices 3 ";
        assert!(text.starts_with(expect), "{text}");
        println!("{text}{}", inputs.key());
        assert_eq!(inputs.key(), RESUME_VECTOR);
        // Every input changes the key.
        let mut other = inputs;
        other.order = Order::Block {
            block_size: 128,
            window: 16,
        };
        assert_ne!(other.key(), inputs.key());
        let mut other = inputs;
        other.order = Order::Block {
            block_size: 256,
            window: 8,
        };
        assert_ne!(other.key(), inputs.key());
        let mut other = inputs;
        other.indices = Some(&[2, 4, 7]);
        assert_ne!(other.key(), inputs.key());
        let mut other = inputs;
        other.dataset = "0123456789abcdef0123456789abcdee";
        assert_ne!(other.key(), inputs.key());
        let mut other = inputs;
        other.seed = 8;
        assert_ne!(other.key(), inputs.key());
        let flip = Transform {
            horizontal_flip: 0.25,
            ..tr.clone()
        };
        let mut other = inputs;
        other.transform = &flip;
        assert_ne!(other.key(), inputs.key());
    }

    const RESUME_VECTOR: &str = "3c3893d0d9749c066a5760d3aaa39f18";
}
