//! The loader's contract, checked in Rust (no Python build needed): every sample exactly once
//! per epoch (shuffled or not, with and without `drop_last`, several ranks together), a pass
//! dropped mid-epoch stops its prefetch thread and a new pass works, an error is delivered
//! once and ends the pass, and an epoch resumed from a position yields exactly the rest of the
//! uninterrupted epoch. Data: `testing::tiny_dataset` (7 records of 5x4 RGB in 2 shards).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vantix_read::testing::{self, TinyDataset};
use vantix_read::{
    Batch, Codec, Dataset, EpochIterator, Error, Loader, LoaderConfig, Order, Remainder, Sampler,
};

/// The tests that count this process's prefetch threads must not see another test's: every
/// test of this file holds this lock (they are small; serial costs nothing).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The orders every test runs over.
const ORDERS: [Order; 3] = [
    Order::Sequential,
    Order::Random,
    Order::Block {
        block_size: 2,
        window: 2,
    },
];

/// The one place that builds a loader configuration (so a renamed field changes one line).
fn config(batch_size: usize, order: Order, seed: u64, drop_last: bool) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        sampler: Sampler {
            order,
            seed,
            ..Default::default()
        },
        drop_last,
        prefetch: 2,
        num_threads: Some(1),
        ..Default::default()
    }
}

/// `world_size` DDP ranks of `config`; `drop_remainder`: drop the uneven tail instead of
/// padding.
fn ranks(
    ds: &Arc<Dataset>,
    mut config: LoaderConfig,
    world_size: usize,
    drop_remainder: bool,
) -> Vec<Loader> {
    config.sampler.ddp_remainder = if drop_remainder {
        Remainder::Drop
    } else {
        Remainder::Pad
    };
    let loader = Loader::new(Arc::clone(ds), config).unwrap();
    (0..world_size)
        .map(|r| loader.for_rank(r, world_size).unwrap())
        .collect()
}

fn open(codec: Codec) -> (TinyDataset, tempfile::TempDir, Arc<Dataset>) {
    let tiny = testing::tiny_dataset(codec);
    let dir = tempfile::tempdir().unwrap();
    tiny.write_to(dir.path()).unwrap();
    let ds = Arc::new(Dataset::open(dir.path()).unwrap());
    (tiny, dir, ds)
}

/// A pass's batches, every one checked against the packed images and labels.
fn batches(pass: EpochIterator, tiny: &TinyDataset) -> Vec<Batch> {
    let all: Vec<Batch> = pass.map(|b| b.expect("a batch")).collect();
    for b in &all {
        assert_eq!(b.labels.len(), b.indices.len());
        let rb = tiny.images[0].len();
        for (k, &i) in b.indices.iter().enumerate() {
            assert_eq!(
                b.labels[k],
                i64::from(tiny.labels[i as usize]),
                "label of {i}"
            );
            let px = &b.images()[k * rb..(k + 1) * rb];
            assert_eq!(px, &tiny.images[i as usize][..], "pixels of {i}");
        }
    }
    all
}

fn indices(batches: &[Batch]) -> Vec<u64> {
    batches.iter().flat_map(|b| b.indices.clone()).collect()
}

/// Threads of this process named `vantix-prefetch`.
fn prefetch_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "vantix-prefetch")
        .count()
}

/// Wait up to 1 s for the count of prefetch threads to be `n` (a joined thread may stay
/// listed in /proc for a moment).
fn wait_for_prefetch_threads(n: usize) -> usize {
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        let now = prefetch_threads();
        if now == n || Instant::now() > until {
            return now;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn every_sample_exactly_once_per_epoch() {
    let _serial = serial();
    let (tiny, _dir, ds) = open(Codec::Raw);
    let n = ds.len();
    let everything: Vec<u64> = (0..n as u64).collect();
    for order in ORDERS {
        for batch_size in [1, 2, 3, 7, 8] {
            let mut orders = BTreeSet::new();
            for (seed, epoch) in [(0, 0), (0, 1), (0, 2), (5, 0)] {
                let loader =
                    Loader::new(Arc::clone(&ds), config(batch_size, order, seed, false)).unwrap();
                let all = batches(loader.epoch(epoch, 0), &tiny);
                assert_eq!(
                    all.len(),
                    n.div_ceil(batch_size),
                    "{order:?} bs={batch_size}"
                );
                assert!(all[..all.len() - 1].iter().all(|b| b.len() == batch_size));
                let seen = indices(&all);
                let mut sorted = seen.clone();
                sorted.sort_unstable();
                assert_eq!(
                    sorted, everything,
                    "{order:?} bs={batch_size} epoch {epoch}"
                );
                // The same epoch again: the same order (the order is a function of seed, epoch).
                assert_eq!(indices(&batches(loader.epoch(epoch, 0), &tiny)), seen);
                orders.insert(seen);

                // drop_last: only full batches, each sample at most once.
                let loader =
                    Loader::new(Arc::clone(&ds), config(batch_size, order, seed, true)).unwrap();
                let full = batches(loader.epoch(epoch, 0), &tiny);
                assert_eq!(full.len(), n / batch_size);
                assert!(full.iter().all(|b| b.len() == batch_size));
                let kept = indices(&full);
                assert_eq!(kept.iter().collect::<BTreeSet<_>>().len(), kept.len());
                assert_eq!(kept.len(), n / batch_size * batch_size);
            }
            let expected = if order == Order::Sequential { 1 } else { 2 };
            assert!(
                orders.len() >= expected,
                "{order:?}: epochs are not reshuffled"
            );
        }
    }
}

#[test]
fn ranks_together_cover_the_epoch() {
    let _serial = serial();
    let (tiny, _dir, ds) = open(Codec::Raw);
    let n = ds.len();
    for order in ORDERS {
        for world_size in [2, 3] {
            for batch_size in [1, 2] {
                for drop_remainder in [false, true] {
                    let what = format!(
                        "{order:?} world_size={world_size} bs={batch_size} \
                         drop_remainder={drop_remainder}"
                    );
                    let loaders = ranks(
                        &ds,
                        config(batch_size, order, 3, false),
                        world_size,
                        drop_remainder,
                    );
                    let per_rank: Vec<Vec<Batch>> = loaders
                        .iter()
                        .map(|l| batches(l.epoch(1, 0), &tiny))
                        .collect();
                    // Every rank yields as many batches (DDP needs it), as it announces.
                    for (l, b) in loaders.iter().zip(&per_rank) {
                        assert_eq!(b.len(), per_rank[0].len(), "{what}");
                        assert_eq!(b.len(), l.num_batches(), "{what}");
                    }
                    let seen: Vec<u64> = per_rank.iter().flat_map(|b| indices(b)).collect();
                    let distinct: BTreeSet<u64> = seen.iter().copied().collect();
                    if drop_remainder {
                        // The tail is dropped: every sample at most once, all but < world_size.
                        assert_eq!(distinct.len(), seen.len(), "{what}");
                        assert_eq!(seen.len(), n / world_size * world_size, "{what}");
                    } else {
                        // Padded: every sample seen, the fewest possible twice.
                        assert_eq!(distinct.len(), n, "{what}");
                        assert_eq!(seen.len(), n.div_ceil(world_size) * world_size, "{what}");
                    }
                }
            }
        }
    }
}

#[test]
fn a_pass_dropped_mid_epoch_stops_its_thread_and_a_new_pass_works() {
    let _serial = serial();
    let (tiny, _dir, ds) = open(Codec::Zstd {
        level: 1,
        filter: vantix_read::Filter::None,
    });
    let loader = Loader::new(Arc::clone(&ds), config(1, Order::Random, 0, false)).unwrap();
    let want = indices(&batches(loader.epoch(0, 0), &tiny));
    assert_eq!(
        wait_for_prefetch_threads(0),
        0,
        "a finished pass left its thread"
    );

    let mut pass = loader.epoch(0, 0);
    let first = pass.next().unwrap().unwrap();
    assert_eq!(first.indices, want[..1]);
    // The thread has filled the queue (prefetch 2) and waits to send the next batch.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(prefetch_threads(), 1);
    // Dropped while its producer is blocked: the drop returns (it joins the thread).
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(pass);
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("dropping a pass mid-epoch hangs");
    assert_eq!(
        wait_for_prefetch_threads(0),
        0,
        "the prefetch thread outlived its pass"
    );
    drop(first); // a batch outlives its pass

    // A new pass of the same loader yields the whole epoch, unchanged.
    assert_eq!(indices(&batches(loader.epoch(0, 0), &tiny)), want);
    // Stopped from another thread (a `Stopper`): the pass ends early, without an error that
    // is not an interruption, and the thread ends.
    let mut pass = loader.epoch(0, 0);
    pass.next().unwrap().unwrap();
    pass.stopper().stop();
    let rest: Vec<_> = pass.by_ref().collect();
    assert!(
        rest.len() <= 3,
        "the pass went on after stop: {} more",
        rest.len()
    );
    for r in &rest {
        if let Err(e) = r {
            assert!(matches!(e, Error::Interrupted(_)), "{e}");
        }
    }
    drop(pass);
    assert_eq!(wait_for_prefetch_threads(0), 0);
    assert_eq!(indices(&batches(loader.epoch(0, 0), &tiny)), want);
}

/// Grow `path` by a few bytes (safe for a mapping: no page of it disappears).
fn grow(path: &Path) {
    let f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len + 10).unwrap();
}

#[test]
fn an_error_is_delivered_once_then_the_pass_ends() {
    let _serial = serial();
    let (tiny, dir, ds) = open(Codec::Raw);
    // Sequential, one sample per batch, prefetch 1: when the first batch arrives, at most
    // samples 1 and 2 (shard 0) are assembled; samples 4.. (shard 1) are not read yet.
    let mut cfg = config(1, Order::Sequential, 0, false);
    cfg.prefetch = 1;
    let loader = Loader::new(Arc::clone(&ds), cfg).unwrap();
    let mut pass = loader.epoch(0, 0);
    let first = pass.next().unwrap().unwrap();
    assert_eq!(first.indices, [0]);
    grow(&dir.path().join("shard-00001.vxs"));
    let rest: Vec<_> = pass.by_ref().collect();
    let (last, ok) = rest.split_last().expect("the pass ends with the error");
    let e = last.as_ref().err().expect("the last item is the error");
    assert!(matches!(e, Error::Changed { .. }), "{e}");
    assert!(e.to_string().contains("shard-00001.vxs"), "{e}");
    // Before it, the batches of shard 0, in order and intact.
    let served: Vec<u64> = ok
        .iter()
        .map(|b| b.as_ref().expect("only one error").indices[0])
        .collect();
    assert_eq!(served, (1..=served.len() as u64).collect::<Vec<_>>());
    assert!(
        served.len() <= 3,
        "a record of the changed shard was served"
    );
    for b in ok.iter().flatten() {
        let i = b.indices[0] as usize;
        assert_eq!(b.images(), &tiny.images[i][..]);
    }
    // Once: the pass is over, and stays over.
    assert!(pass.next().is_none());
    assert!(pass.next().is_none());
    drop(pass);
    assert_eq!(wait_for_prefetch_threads(0), 0);
    // A new pass over the changed dataset fails the same way, at its first batch of shard 1.
    let items: Vec<_> = loader.epoch(0, 0).collect();
    assert_eq!(items.iter().filter(|r| r.is_err()).count(), 1);
    assert!(items.last().unwrap().is_err());
}

#[test]
fn a_resumed_epoch_yields_exactly_the_rest_of_the_uninterrupted_one() {
    let _serial = serial();
    let (tiny, _dir, ds) = open(Codec::Raw);
    for order in ORDERS {
        for world_size in [1, 2, 3] {
            for batch_size in [1, 2, 3] {
                for (drop_last, drop_remainder) in [(false, false), (true, false), (false, true)] {
                    let cfg = config(batch_size, order, 11, drop_last);
                    let loaders = ranks(&ds, cfg, world_size, drop_remainder);
                    for epoch in [0, 3] {
                        let full: Vec<Vec<Batch>> = loaders
                            .iter()
                            .map(|l| batches(l.epoch(epoch, 0), &tiny))
                            .collect();
                        // After `k` batches on every rank, `start = k * batch_size * world_size`.
                        for k in 0..=full[0].len() {
                            let start = (k * batch_size * world_size) as u64;
                            for (r, l) in loaders.iter().enumerate() {
                                let rest = batches(l.epoch(epoch, start), &tiny);
                                let what = format!(
                                    "{order:?} world_size={world_size} rank={r} \
                                     bs={batch_size} drop_last={drop_last} \
                                     drop_remainder={drop_remainder} epoch={epoch} k={k}"
                                );
                                assert_eq!(rest.len(), full[r].len() - k, "{what}");
                                assert_eq!(l.num_batches_from(start), rest.len(), "{what}");
                                for (a, b) in rest.iter().zip(&full[r][k..]) {
                                    assert_eq!(a.indices, b.indices, "{what}");
                                    assert_eq!(a.labels, b.labels, "{what}");
                                    assert_eq!(a.images(), b.images(), "{what}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Readahead changes when bytes are read, never what is served: every pass, raw and zstd, in
/// every order, yields the same batches with the hints off, with budgets below, at and above
/// a batch, and with the default.
#[test]
fn readahead_never_changes_the_batches() {
    let _g = serial();
    for codec in [
        Codec::Raw,
        Codec::Zstd {
            level: 3,
            filter: vantix_read::Filter::Up,
        },
    ] {
        let (tiny, _dir, ds) = open(codec);
        for order in ORDERS {
            let mut cfg = config(2, order, 3, false);
            cfg.readahead = Some(0);
            let off = Loader::new(Arc::clone(&ds), cfg.clone()).unwrap();
            assert_eq!(off.readahead(), 0);
            let want: Vec<Vec<u8>> = batches(off.epoch(1, 0), &tiny)
                .iter()
                .map(|b| b.images().to_vec())
                .collect();
            for readahead in [Some(1), Some(60), Some(1 << 20), None] {
                cfg.readahead = readahead;
                let loader = Loader::new(Arc::clone(&ds), cfg.clone()).unwrap();
                assert_eq!(loader.readahead() > 0, readahead.is_some());
                let got: Vec<Vec<u8>> = batches(loader.epoch(1, 0), &tiny)
                    .iter()
                    .map(|b| b.images().to_vec())
                    .collect();
                assert_eq!(got, want, "{codec:?} {order:?} readahead {readahead:?}");
                // Resumed mid-epoch: the hints start from the resumed batch.
                let rest = batches(loader.epoch(1, 2), &tiny);
                assert_eq!(rest.len(), want.len() - 1);
            }
        }
    }
}

/// `readahead` above [`vantix_read::MAX_READAHEAD`] is refused, naming the option; the
/// default is none for data that fits in memory, else a few batches' worth, at least 64 MiB
/// and at most a quarter of the usable memory.
#[test]
fn readahead_is_validated_and_defaults_to_a_few_batches() {
    let _g = serial();
    let (_tiny, _dir, ds) = open(Codec::Raw);
    let mut cfg = config(2, Order::Random, 0, false);
    cfg.readahead = Some(vantix_read::MAX_READAHEAD + 1);
    let e = Loader::new(Arc::clone(&ds), cfg).err().unwrap().to_string();
    assert!(
        e.starts_with("readahead must be an int in [0, 1099511627776]"),
        "{e}"
    );
    let loader = Loader::new(Arc::clone(&ds), config(2, Order::Random, 0, false)).unwrap();
    assert_eq!(loader.readahead(), 0, "a tiny dataset fits");
    assert_eq!(loader.access(), vantix_read::Access::Normal);
    let d = vantix_read::default_readahead;
    assert_eq!(d(&ds, 256, None), 0);
    assert_eq!(d(&ds, 256, Some(1 << 40)), 0);
    assert_eq!(d(&ds, 256, Some(100)), 25);
    let small = ds.size_bytes() / 2; // does not fit
    assert_eq!(d(&ds, 256, Some(small)), small / 4);
    let mut cfg = config(2, Order::Random, 0, false);
    cfg.readahead = Some(1000);
    let loader = Loader::new(Arc::clone(&ds), cfg).unwrap();
    assert_eq!(loader.readahead(), 1000);
    assert_eq!(loader.access(), vantix_read::Access::Random);
}

/// `order="auto"` is resolved when the loader is built: a tiny dataset fits, so it is a full
/// shuffle, the same permutation (and resume key) as `order="random"`; the loader remembers
/// what was asked for.
#[test]
fn auto_order_resolves_to_random_when_the_data_fits() {
    let _g = serial();
    let (_tiny, _dir, ds) = open(Codec::Raw);
    let auto = Order::Auto {
        block_size: 2,
        window: 2,
    };
    let a = Loader::new(Arc::clone(&ds), config(2, auto, 5, false)).unwrap();
    let r = Loader::new(Arc::clone(&ds), config(2, Order::Random, 5, false)).unwrap();
    assert_eq!(a.order(), Order::Random);
    assert_eq!(a.requested_order(), auto);
    assert_eq!(a.for_rank(1, 2).unwrap().requested_order(), auto);
    assert_eq!(a.epoch_indices(3, 0), r.epoch_indices(3, 0));
    assert_eq!(vantix_read::resume_key(&a), vantix_read::resume_key(&r));
    let bad = Order::Auto {
        block_size: 0,
        window: 2,
    };
    assert!(Loader::new(Arc::clone(&ds), config(2, bad, 5, false)).is_err());
}
