//! Assembly threads that fit the node and survive `fork()`.
//!
//! Every loader of a process draws its rayon pool from one registry, so a train and a val loader
//! share threads instead of each starting one per core. The default size is the cores this
//! process may run on (CPU affinity and cgroup quota, as `available_parallelism` reports them)
//! divided by the ranks on this node (`LOCAL_WORLD_SIZE`, set by torchrun; else `WORLD_SIZE`,
//! an upper bound), at least 1.
//!
//! Threads do not survive `fork()`: a child sees the parent's pools and locks, but none of the
//! threads that run or hold them. State that owns threads or locks taken by other threads is
//! therefore kept in a [`ProcessLocal`], which notices a new process id and builds fresh state
//! there, never touching (only leaking) what the parent left behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::error::{Error, Result};

/// A value that belongs to one process: in a forked child, [`ProcessLocal::get`] builds a new
/// one instead of handing out the parent's (whose threads are gone and whose locks may be held
/// for ever by a thread that no longer exists).
pub struct ProcessLocal<T> {
    slot: AtomicPtr<Entry<T>>,
}

struct Entry<T> {
    pid: u32,
    value: Arc<T>,
}

impl<T> Default for ProcessLocal<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ProcessLocal<T> {
    /// An empty cell (usable in a `static`).
    pub const fn new() -> Self {
        ProcessLocal {
            slot: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// This process's value, made by `init` the first time it is asked for in this process.
    pub fn get(&self, init: impl Fn() -> Result<Arc<T>>) -> Result<Arc<T>> {
        let pid = std::process::id();
        loop {
            let cur = self.slot.load(Ordering::Acquire);
            // SAFETY: a non-null pointer came from `Box::into_raw` below and is freed only by
            // `drop` (which has `&mut self`), so it is valid while `&self` lives.
            if let Some(e) = unsafe { cur.as_ref() } {
                if e.pid == pid {
                    return Ok(Arc::clone(&e.value));
                }
            }
            let new = Box::into_raw(Box::new(Entry {
                pid,
                value: init()?,
            }));
            match self
                .slot
                .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                // The parent's entry (if any) is leaked on purpose: dropping it could join
                // threads or take locks that do not exist in this process.
                Ok(_) => {
                    // SAFETY: `new` is now the published entry, valid as above.
                    return Ok(Arc::clone(unsafe { &(*new).value }));
                }
                Err(_) => {
                    // Another thread of this process published first: use its value.
                    // SAFETY: `new` was never published.
                    drop(unsafe { Box::from_raw(new) });
                }
            }
        }
    }

    /// Whether this process has made its value (false in a child until it asks for one).
    pub fn is_set_here(&self) -> bool {
        let cur = self.slot.load(Ordering::Acquire);
        // SAFETY: as in `get`.
        unsafe { cur.as_ref() }.is_some_and(|e| e.pid == std::process::id())
    }
}

impl<T> Drop for ProcessLocal<T> {
    fn drop(&mut self) {
        let cur = *self.slot.get_mut();
        if !cur.is_null() {
            // SAFETY: we own the entry; one made in another process is leaked (see `get`).
            let e = unsafe { Box::from_raw(cur) };
            if e.pid != std::process::id() {
                std::mem::forget(e);
            }
        }
    }
}

// SAFETY: the cell hands out `Arc<T>` clones only; it is as thread-safe as `Arc<T>`.
unsafe impl<T: Send + Sync> Send for ProcessLocal<T> {}
unsafe impl<T: Send + Sync> Sync for ProcessLocal<T> {}

/// Pools by thread count, held weakly: a pool lives while a loader (or a pass) uses it.
type Registry = Mutex<HashMap<usize, Weak<rayon::ThreadPool>>>;

static POOLS: ProcessLocal<Registry> = ProcessLocal::new();

/// Ranks sharing this node, from the launcher's environment: `LOCAL_WORLD_SIZE` (torchrun,
/// torch elastic), else `WORLD_SIZE` (Lightning's launcher sets only that; on several nodes it
/// overestimates, which gives fewer threads, never too many), else 1.
pub fn ranks_on_node() -> usize {
    ["LOCAL_WORLD_SIZE", "WORLD_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.trim().parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// Default number of assembly threads: usable cores / ranks on this node, at least 1.
pub fn default_num_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / ranks_on_node()).max(1)
}

/// The process's pool of `n` assembly threads, started on first use (and again in a forked
/// child).
pub fn pool(n: usize) -> Result<Arc<rayon::ThreadPool>> {
    if n == 0 {
        return Err(Error::invalid("num_threads must be at least 1"));
    }
    let registry = POOLS.get(|| Ok(Arc::new(Mutex::new(HashMap::new()))))?;
    let mut map = registry.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = map.get(&n).and_then(Weak::upgrade) {
        return Ok(p);
    }
    let p = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("vantix-assemble-{i}"))
            .build()
            .map_err(|e| Error::internal(format!("cannot start {n} threads: {e}")))?,
    );
    map.retain(|_, w| w.strong_count() > 0);
    map.insert(n, Arc::downgrade(&p));
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaders_of_one_process_share_a_pool() {
        let a = pool(3).unwrap();
        let b = pool(3).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &pool(2).unwrap()));
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none(), "a pool nobody uses is released");
    }

    #[test]
    fn process_local_makes_one_value_per_process() {
        let cell: ProcessLocal<u32> = ProcessLocal::new();
        assert!(!cell.is_set_here());
        let a = cell.get(|| Ok(Arc::new(7))).unwrap();
        let b = cell.get(|| Ok(Arc::new(8))).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(cell.is_set_here());
    }
}
