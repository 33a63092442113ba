//! How much memory this process can use for the page cache, and whether a dataset fits in it.
//!
//! A memory-mapped dataset is fast while its pages stay cached; once the dataset is larger than
//! the memory the kernel will keep for this process, a full shuffle reads every record from disk
//! (docs/TRADEOFFS.md). The memory usable here is the smaller of the machine's `MemAvailable`
//! and what the process's memory cgroup still allows (cgroup v2 `memory.max`, or v1
//! `memory.limit_in_bytes`, the tightest of the cgroup and its ancestors) minus the cgroup's
//! anonymous memory: page cache charged to the cgroup is reclaimable, so it counts as usable.
//! Linux only; elsewhere nothing is known and every dataset is taken to fit.
//!
//! The environment variable [`MEMORY_LIMIT_ENV`] (`VANTIX_MEMORY_LIMIT`, bytes such as
//! `8589934592` or `8G`) lowers the usable figure further: to plan for a smaller machine (what
//! would the loader choose there, what would it warn about), and in tests.
//!
//! [`MemoryFit`] compares a dataset with that figure; its [`message`](MemoryFit::message) is
//! the one text that the Python loader's warning and `vantix-pack inspect` print.

use std::path::{Path, PathBuf};

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::format::Codec;

/// The environment variable that caps the memory this process is taken to have (bytes, or a
/// size such as `512M` or `8G`): `usable()` is at most its value.
pub const MEMORY_LIMIT_ENV: &str = "VANTIX_MEMORY_LIMIT";

/// What [`usable_memory`] found, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryLimits {
    /// `MemAvailable` of `/proc/meminfo`: memory the machine can give without swapping.
    pub mem_available: Option<u64>,
    /// The tightest memory limit of this process's cgroup and its ancestors, if any is set.
    pub cgroup_limit: Option<u64>,
    /// Anonymous (non-reclaimable) memory charged to that cgroup.
    pub cgroup_anon: Option<u64>,
    /// The cap set by [`MEMORY_LIMIT_ENV`], if set.
    pub env_limit: Option<u64>,
}

impl MemoryLimits {
    /// The bytes of page cache this process can count on: the smallest of `MemAvailable`,
    /// the cgroup's limit minus its anonymous memory and [`MEMORY_LIMIT_ENV`]; `None` when
    /// none is known.
    pub fn usable(&self) -> Option<u64> {
        let cgroup = self
            .cgroup_limit
            .map(|limit| limit.saturating_sub(self.cgroup_anon.unwrap_or(0)));
        [self.mem_available, cgroup, self.env_limit]
            .into_iter()
            .flatten()
            .min()
    }

    /// Where [`usable`](Self::usable) comes from, for messages: `"MemAvailable 12.0 GiB,
    /// cgroup limit 4.0 GiB of which 1.1 GiB in use, VANTIX_MEMORY_LIMIT 2.0 GiB"`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = self.mem_available {
            parts.push(format!("MemAvailable {}", human_bytes(a)));
        }
        if let Some(l) = self.cgroup_limit {
            let anon = self.cgroup_anon.unwrap_or(0);
            parts.push(format!(
                "memory cgroup limit {} of which {} in use",
                human_bytes(l),
                human_bytes(anon)
            ));
        }
        if let Some(e) = self.env_limit {
            parts.push(format!("{MEMORY_LIMIT_ENV} {}", human_bytes(e)));
        }
        if parts.is_empty() {
            "nothing known about this machine's memory".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Read this process's memory limits (see the module documentation); an invalid
/// [`MEMORY_LIMIT_ENV`] is an [`Error::Invalid`] naming it.
pub fn usable_memory() -> Result<MemoryLimits> {
    #[cfg(target_os = "linux")]
    let limits = read_limits(Path::new("/proc"), Path::new("/sys/fs/cgroup"));
    #[cfg(not(target_os = "linux"))]
    let limits = MemoryLimits::default();
    Ok(MemoryLimits {
        env_limit: env_limit()?,
        ..limits
    })
}

/// The value of [`MEMORY_LIMIT_ENV`] in bytes (`None` when unset or empty).
pub fn env_limit() -> Result<Option<u64>> {
    match std::env::var(MEMORY_LIMIT_ENV) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => parse_bytes(&v).map(Some).map_err(|e| {
            Error::invalid(format!("the environment variable {MEMORY_LIMIT_ENV}: {e}"))
        }),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::invalid(format!(
            "the environment variable {MEMORY_LIMIT_ENV} is not valid UTF-8"
        ))),
    }
}

/// Parse a byte size such as `512M`, `1G`, `64KiB` or `4096` (binary multiples; at least 1).
pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.trim_end_matches("IB").trim_end_matches('B');
    let (digits, mult) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|v| v.checked_mul(mult))
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("invalid size {s:?}: expected e.g. 512M, 1G or a byte count"))
}

/// `n` bytes in binary units with one decimal (`1.5 MiB`); below 1 KiB as a whole number (`512 B`).
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Whether `dataset_bytes` fit in `usable` bytes of page cache. A dataset needs all its bytes
/// cached plus the loader's own buffers, so a little headroom (1/16) is kept.
pub fn fits(dataset_bytes: u64, usable: Option<u64>) -> bool {
    match usable {
        Some(usable) => dataset_bytes.saturating_add(dataset_bytes / 16) <= usable,
        None => true,
    }
}

/// Records compressed (evenly spread over the dataset) to estimate the size of a zstd pack of a
/// raw dataset.
pub const ZSTD_ESTIMATE_RECORDS: usize = 16;

/// How a dataset's bytes compare with the memory this process can use, and what a zstd pack
/// of it would take.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryFit {
    /// The dataset directory, for messages.
    pub path: String,
    /// Bytes of the dataset's shard files: what the page cache holds for a cached epoch.
    pub dataset_bytes: u64,
    /// The limits read ([`usable_memory`]).
    pub limits: MemoryLimits,
    /// Bytes the reader itself will take out of that memory (a loader's batch buffers).
    pub reserved: u64,
    /// [`MemoryLimits::usable`] of `limits`, less `reserved`: what is left for the page cache.
    pub usable: Option<u64>,
    /// [`fits`]`(dataset_bytes, usable)`.
    pub fits: bool,
    /// Whether the records are stored with zstd.
    pub zstd: bool,
    /// Bytes of a zstd pack of the dataset: `dataset_bytes` for a zstd pack; for a raw pack
    /// that does not fit, an estimate from [`ZSTD_ESTIMATE_RECORDS`] records compressed with
    /// `--codec zstd`'s level and filter (no dictionary); `None` for a raw pack that fits.
    pub zstd_bytes: Option<u64>,
    /// Whether `zstd_bytes` is an estimate.
    pub zstd_estimated: bool,
}

impl MemoryFit {
    /// Compare `ds` with this process's memory ([`usable_memory`]).
    pub fn of(ds: &Dataset) -> Result<Self> {
        Self::with_limits(ds, usable_memory()?)
    }

    /// Compare `ds` with `limits` (the zstd estimate, which reads a few records, only when
    /// a raw dataset does not fit).
    pub fn with_limits(ds: &Dataset, limits: MemoryLimits) -> Result<Self> {
        Self::with_reserved(ds, limits, 0)
    }

    /// Compare `ds` with what `limits` leave once `reserved` bytes (a loader's batch buffers)
    /// are taken.
    pub fn with_reserved(ds: &Dataset, limits: MemoryLimits, reserved: u64) -> Result<Self> {
        let dataset_bytes = ds.size_bytes();
        let usable = limits.usable().map(|u| u.saturating_sub(reserved));
        let fits = fits(dataset_bytes, usable);
        let zstd = ds.codec() != Codec::Raw;
        let (zstd_bytes, zstd_estimated) = match (zstd, fits) {
            (true, _) => (Some(dataset_bytes), false),
            (false, true) => (None, false),
            (false, false) => (Some(estimate_zstd_bytes(ds)?), true),
        };
        Ok(MemoryFit {
            path: ds.root().display().to_string(),
            dataset_bytes,
            limits,
            reserved,
            usable,
            fits,
            zstd,
            zstd_bytes,
            zstd_estimated,
        })
    }

    /// Usable bytes the dataset needs to fit (its bytes, the 1/16 headroom of [`fits`] and
    /// the `reserved` bytes).
    pub fn needed(&self) -> u64 {
        self.dataset_bytes
            .saturating_add(self.dataset_bytes / 16)
            .saturating_add(self.reserved)
    }

    /// The one text that says how the dataset compares with memory and, when it does not fit,
    /// what to do (the Python loader's warning and `vantix-pack inspect`'s `memory` line).
    pub fn message(&self) -> String {
        let size = human_bytes(self.dataset_bytes);
        let codec = if self.zstd { "zstd" } else { "raw" };
        let Some(usable) = self.usable else {
            return format!(
                "{}: {size} ({codec}); nothing is known about this machine's memory, so it is \
                 taken to fit",
                self.path
            );
        };
        let whence = match self.reserved {
            0 => self.limits.describe(),
            r => format!(
                "{}, less {} of the loader's batch buffers",
                self.limits.describe(),
                human_bytes(r)
            ),
        };
        if self.fits {
            return format!(
                "{}: {size} ({codec}) fits in the {} of memory this process can use ({whence}): \
                 epochs after the first are read from the page cache",
                self.path,
                human_bytes(usable),
            );
        }
        let mut choices = Vec::new();
        if let (false, Some(z)) = (self.zstd, self.zstd_bytes) {
            let verdict = if fits(z, Some(usable)) {
                "which fits"
            } else {
                "which does not fit either"
            };
            choices.push(format!(
                "repack with --codec zstd (about {}, estimated from {ZSTD_ESTIMATE_RECORDS} \
                 records, {verdict}; each epoch then decompresses every record)",
                human_bytes(z)
            ));
        }
        choices.push(
            "order=\"block\" (or order=\"auto\", which takes it only when the data does not \
             fit): large, nearly sequential reads, at the cost of a shuffle within groups of \
             block_size * block_window samples"
                .to_string(),
        );
        choices.push(format!(
            "more memory for this process (at least {} usable)",
            human_bytes(self.needed())
        ));
        let numbered: Vec<String> = choices
            .iter()
            .enumerate()
            .map(|(k, c)| format!("({}) {c}", k + 1))
            .collect();
        format!(
            "{}: {size} ({codec}) does not fit in the {} of memory this process can use \
             ({whence}): a full shuffle (order=\"random\") then reads every epoch from disk at \
             its random-read speed. Choices: {}",
            self.path,
            human_bytes(usable),
            numbered.join("; ")
        )
    }
}

/// The size of a zstd pack of `ds` (raw): its bytes times the ratio of [`ZSTD_ESTIMATE_RECORDS`]
/// records, evenly spread, compressed with `--codec zstd`'s level and filter.
fn estimate_zstd_bytes(ds: &Dataset) -> Result<u64> {
    let n = ds.len();
    if n == 0 {
        return Ok(ds.size_bytes());
    }
    let k = ZSTD_ESTIMATE_RECORDS.min(n);
    let idx: Vec<u64> = (0..k).map(|j| (j * n / k) as u64).collect();
    let codec = Codec::Zstd {
        level: Codec::DEFAULT_LEVEL,
        filter: Codec::DEFAULT_FILTER,
    };
    let encoder = crate::codec::RecordEncoder::new(codec, ds.geometry());
    let (raw, packed) = ds.read_checked(&idx, crate::dataset::Verify::None, || {
        let (mut raw, mut packed) = (0u64, 0u64);
        for &i in &idx {
            let stored = ds.with_record(i as usize, |px| encoder.encode(px).map(|c| c.len()))??;
            raw += ds.record_bytes() as u64;
            packed += stored as u64;
        }
        Ok((raw, packed))
    })?;
    Ok((ds.size_bytes() as f64 * packed as f64 / raw.max(1) as f64).ceil() as u64)
}

/// Limits from a `/proc` and a cgroup mount root (parameters, so tests can use a fake tree).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn read_limits(proc: &Path, cgroup_root: &Path) -> MemoryLimits {
    let mem_available = std::fs::read_to_string(proc.join("meminfo"))
        .ok()
        .and_then(|s| field_kib(&s, "MemAvailable:"));
    let mut out = MemoryLimits {
        mem_available,
        ..Default::default()
    };
    let Ok(cgroups) = std::fs::read_to_string(proc.join("self/cgroup")) else {
        return out;
    };
    for line in cgroups.lines() {
        // "hierarchy-id:controllers:path"; v2 is "0::path", v1 memory is "N:memory:path".
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            let dir = cgroup_root.join("memory").join(rel);
            if let Some((limit, anon)) = v1_limits(&dir, &cgroup_root.join("memory")) {
                out.cgroup_limit = Some(limit);
                out.cgroup_anon = anon;
            }
        } else if controllers.is_empty() && out.cgroup_limit.is_none() {
            for root in [cgroup_root.to_path_buf(), cgroup_root.join("unified")] {
                if let Some((limit, anon)) = v2_limits(&root.join(rel), &root) {
                    out.cgroup_limit = Some(limit);
                    out.cgroup_anon = anon;
                    break;
                }
            }
        }
    }
    out
}

/// `dir` and its ancestors up to `root`, innermost first.
fn ancestors(dir: &Path, root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut d = dir.to_path_buf();
    loop {
        out.push(d.clone());
        if d == root || !d.pop() || !d.starts_with(root) {
            break;
        }
    }
    out
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_field(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
    })
}

/// cgroup v1: `hierarchical_memory_limit` of `memory.stat` is already the tightest limit of
/// the cgroup and its ancestors; an unlimited cgroup reports a huge number (~2^63).
fn v1_limits(dir: &Path, root: &Path) -> Option<(u64, Option<u64>)> {
    let stat = dir.join("memory.stat");
    let limit = stat_field(&stat, "hierarchical_memory_limit").or_else(|| {
        ancestors(dir, root)
            .iter()
            .filter_map(|d| read_u64(&d.join("memory.limit_in_bytes")))
            .min()
    })?;
    if limit >= 1 << 60 {
        return None;
    }
    let anon = stat_field(&stat, "total_rss").or_else(|| stat_field(&stat, "rss"));
    Some((limit, anon))
}

/// cgroup v2: the smallest `memory.max` of the cgroup and its ancestors (`max` = none).
fn v2_limits(dir: &Path, root: &Path) -> Option<(u64, Option<u64>)> {
    if !dir.join("cgroup.controllers").exists() {
        return None;
    }
    let limit = ancestors(dir, root)
        .iter()
        .filter_map(|d| read_u64(&d.join("memory.max")))
        .min()?;
    Some((limit, stat_field(&dir.join("memory.stat"), "anon")))
}

fn field_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?;
        rest.split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn v1_memory_cgroup_limit_minus_anonymous_memory() {
        let t = tempfile::tempdir().unwrap();
        let (proc, cg) = (t.path().join("proc"), t.path().join("cgroup"));
        write(
            &proc.join("meminfo"),
            "MemTotal: 100 kB\nMemAvailable:   8000000 kB\n",
        );
        write(
            &proc.join("self/cgroup"),
            "4:memory:/jobs/a\n1:cpu:/\n0::/\n",
        );
        write(
            &cg.join("memory/jobs/a/memory.stat"),
            "cache 5\nrss 7\nhierarchical_memory_limit 1073741824\ntotal_rss 104857600\n",
        );
        let l = read_limits(&proc, &cg);
        assert_eq!(l.mem_available, Some(8_000_000 * 1024));
        assert_eq!(l.cgroup_limit, Some(1 << 30));
        assert_eq!(l.usable(), Some((1 << 30) - 104_857_600));
        assert!(fits(800 << 20, l.usable()));
        assert!(!fits(1 << 30, l.usable()));
    }

    #[test]
    fn v2_takes_the_tightest_ancestor_and_ignores_max() {
        let t = tempfile::tempdir().unwrap();
        let (proc, cg) = (t.path().join("proc"), t.path().join("cgroup"));
        write(&proc.join("meminfo"), "MemAvailable: 4000000 kB\n");
        write(&proc.join("self/cgroup"), "0::/a/b\n");
        write(&cg.join("cgroup.controllers"), "memory\n");
        write(&cg.join("a/cgroup.controllers"), "memory\n");
        write(&cg.join("a/memory.max"), "2147483648\n");
        write(&cg.join("a/b/cgroup.controllers"), "memory\n");
        write(&cg.join("a/b/memory.max"), "max\n");
        write(&cg.join("a/b/memory.stat"), "anon 1000\nfile 99999\n");
        let l = read_limits(&proc, &cg);
        assert_eq!(l.cgroup_limit, Some(2 << 30));
        assert_eq!(l.cgroup_anon, Some(1000));
        assert_eq!(l.usable(), Some((2 << 30) - 1000));
    }

    #[test]
    fn unlimited_cgroups_leave_mem_available() {
        let t = tempfile::tempdir().unwrap();
        let (proc, cg) = (t.path().join("proc"), t.path().join("cgroup"));
        write(&proc.join("meminfo"), "MemAvailable: 1000 kB\n");
        write(&proc.join("self/cgroup"), "4:memory:/\n");
        write(
            &cg.join("memory/memory.stat"),
            "hierarchical_memory_limit 9223372036854771712\n",
        );
        let l = read_limits(&proc, &cg);
        assert_eq!(l.cgroup_limit, None);
        assert_eq!(l.usable(), Some(1000 * 1024));
        assert!(fits(u64::MAX, None));
    }

    #[test]
    fn this_machine_reports_something_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(usable_memory().unwrap().usable().is_some());
        }
    }

    #[test]
    fn the_environment_limit_lowers_usable_memory() {
        let l = MemoryLimits {
            mem_available: Some(8 << 30),
            cgroup_limit: Some(4 << 30),
            cgroup_anon: Some(1 << 30),
            env_limit: Some(1 << 30),
        };
        assert_eq!(l.usable(), Some(1 << 30));
        let d = l.describe();
        assert!(d.contains("MemAvailable 8.0 GiB"), "{d}");
        assert!(d.contains("limit 4.0 GiB of which 1.0 GiB in use"), "{d}");
        assert!(d.contains("VANTIX_MEMORY_LIMIT 1.0 GiB"), "{d}");
        let only_env = MemoryLimits {
            env_limit: Some(5),
            ..Default::default()
        };
        assert_eq!(only_env.usable(), Some(5));
        assert_eq!(MemoryLimits::default().usable(), None);
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes(" 2GiB "), Ok(2 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("0").is_err() && parse_bytes("lots").is_err());
    }

    fn tiny(codec: Codec) -> (tempfile::TempDir, Dataset) {
        let dir = tempfile::tempdir().unwrap();
        crate::testing::tiny_dataset(codec)
            .write_to(dir.path())
            .unwrap();
        let ds = Dataset::open(dir.path()).unwrap();
        (dir, ds)
    }

    #[test]
    fn a_dataset_that_fits_says_so_and_estimates_nothing() {
        let (_dir, ds) = tiny(Codec::Raw);
        let limits = MemoryLimits {
            mem_available: Some(1 << 30),
            ..Default::default()
        };
        let fit = MemoryFit::with_limits(&ds, limits).unwrap();
        assert!(fit.fits && !fit.zstd && fit.zstd_bytes.is_none());
        assert_eq!(fit.dataset_bytes, ds.size_bytes());
        let m = fit.message();
        assert!(m.contains("fits in the 1.0 GiB of memory"), "{m}");
        let unknown = MemoryFit::with_limits(&ds, MemoryLimits::default()).unwrap();
        assert!(unknown.fits && unknown.message().contains("taken to fit"));
    }

    #[test]
    fn a_raw_dataset_that_does_not_fit_gets_the_numbers_and_the_choices() {
        let (_dir, ds) = tiny(Codec::Raw);
        let limits = MemoryLimits {
            mem_available: Some(1 << 30),
            env_limit: Some(100),
            ..Default::default()
        };
        let fit = MemoryFit::with_limits(&ds, limits).unwrap();
        assert!(!fit.fits && fit.zstd_estimated);
        let z = fit.zstd_bytes.unwrap();
        assert!(z > 0, "{z}");
        assert_eq!(fit.needed(), ds.size_bytes() + ds.size_bytes() / 16);
        let m = fit.message();
        for needle in [
            "does not fit in the 100 B of memory this process can use",
            "VANTIX_MEMORY_LIMIT 100 B",
            "--codec zstd (about",
            "estimated from 16 records",
            "order=\"block\"",
            "order=\"auto\"",
            "more memory for this process",
        ] {
            assert!(m.contains(needle), "{needle:?} not in {m}");
        }
        assert!(m.starts_with(&ds.root().display().to_string()), "{m}");
    }

    #[test]
    fn a_zstd_dataset_knows_its_size_and_is_not_told_to_use_zstd() {
        let (_dir, ds) = tiny(Codec::Zstd {
            level: 3,
            filter: crate::Filter::Up,
        });
        let limits = MemoryLimits {
            env_limit: Some(10),
            ..Default::default()
        };
        let fit = MemoryFit::with_limits(&ds, limits).unwrap();
        assert!(!fit.fits && fit.zstd && !fit.zstd_estimated);
        assert_eq!(fit.zstd_bytes, Some(ds.size_bytes()));
        let m = fit.message();
        assert!(
            !m.contains("--codec zstd") && m.contains("(zstd) does not fit"),
            "{m}"
        );
    }
}
