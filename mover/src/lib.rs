//! mover's data plane: a thread-per-core io_uring engine that replicates a directory tree to a
//! receiver over a framed, versioned, checksummed protocol. See ARCHITECTURE.md for the map and
//! docs/protocol.md for the wire format.

pub mod beneath;
pub mod durable;
pub mod engine;
pub mod error;
pub mod gen;
pub mod churn;
pub mod receiver;
pub mod sender;
pub mod snapshot;
pub mod transport;
pub mod tree;
pub mod units;
pub mod wire;

pub use error::{Error, Result};

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub fn software_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Progress counters read by the CLI's progress bar. Workers add to `bytes` once per frame
/// (relaxed; the bar only needs an approximate, monotonic number).
#[derive(Default)]
pub struct Progress {
    pub files_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes: Arc<AtomicU64>,
}

impl Progress {
    pub fn set_totals(&self, files: u64, bytes: u64) {
        self.files_total.store(files, Ordering::Relaxed);
        self.bytes_total.store(bytes, Ordering::Relaxed);
    }
    pub fn reset(&self) {
        self.set_totals(0, 0);
        self.bytes.store(0, Ordering::Relaxed);
    }
}

/// Order-independent digest of all data frames of a session: both sides sort the frame
/// checksums they sent / verified and hash them, so a lost, duplicated or misrouted frame shows.
pub fn content_digest(checksums: &mut [u64]) -> u128 {
    checksums.sort_unstable();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(checksums.len() as u64).to_le_bytes());
    for c in checksums.iter() {
        h.update(&c.to_le_bytes());
    }
    h.digest128()
}

/// Walks hold one fd per directory level and sessions one per worker: lift the soft limit to
/// the hard one. Failure only means deep trees may hit EMFILE, which is reported then.
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        let _ = setrlimit(Resource::Nofile, rustix::process::Rlimit { current: lim.maximum, maximum: lim.maximum });
    }
}

/// CPU for each of `n` workers from the pinning plan (near the block device holding `near`), or
/// `None` for all if the topology cannot be read (workers then run unpinned, with a warning).
pub fn worker_cpus(n: usize, near: Option<&Path>) -> Vec<Option<hw::CpuId>> {
    let plan = (|| -> std::result::Result<hw::PinningPlan, hw::Error> {
        let sys = Path::new("/sys");
        let topo = hw::Topology::from_sysfs(sys)?;
        let allowed = hw::allowed_cpus()?;
        let dev = near.and_then(|p| hw::block_device_for_path(sys, p));
        hw::PinningPlan::plan(&topo, &allowed, n as u32, dev.as_deref())
    })();
    match plan {
        Ok(p) => p.workers.iter().map(|w| Some(w.cpu)).collect(),
        Err(e) => {
            tracing::warn!("no pinning plan ({e}); workers run unpinned");
            vec![None; n]
        }
    }
}

/// Number of CPUs in this process's affinity mask (the default worker count).
pub fn default_threads() -> usize {
    hw::allowed_cpus().map(|c| c.len()).unwrap_or(1).max(1)
}
