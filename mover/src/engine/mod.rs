//! The io_uring engine shared by sender and receiver workers.

pub mod cache;
pub mod ring;

pub use ring::STALL_TIMEOUT;

use crate::error::{Error, Result};
use std::path::Path;
use std::thread::JoinHandle;

/// What one worker moved, merged per session. Both sides count the same things so the
/// receiver can check the sender's Commit against its own numbers.
#[derive(Debug, Default, Clone)]
pub struct FrameStats {
    pub frames: u64,
    pub data_bytes: u64,
    pub wire_bytes: u64,
    /// Checksums of the data-bearing frames, for the session's content digest.
    pub checksums: Vec<u64>,
    /// Sender only, with a manifest: (entry, first block, 4 KiB block hashes) per Data frame.
    pub block_hashes: Vec<(crate::units::EntryId, u64, Vec<u64>)>,
    /// Sender only: file bytes read through the page cache, and with O_DIRECT from the device.
    pub read_buffered: u64,
    pub read_direct: u64,
    /// Sender only: files read whole whose stat once read was not the walk's.
    pub changed: Vec<crate::units::EntryId>,
}

impl FrameStats {
    pub(crate) fn absorb(&mut self, o: FrameStats) {
        self.frames += o.frames;
        self.data_bytes += o.data_bytes;
        self.wire_bytes += o.wire_bytes;
        self.checksums.extend(o.checksums);
        self.block_hashes.extend(o.block_hashes);
        self.changed.extend(o.changed);
        self.read_buffered += o.read_buffered;
        self.read_direct += o.read_direct;
    }
}

/// Which of a side's worker handles failed first. When one worker fails, the side (or its
/// peer) ends the session and the others fail with errors that only echo it; a join returns
/// the first handle's error among equals, so the first failure's handle is put first.
#[derive(Debug)]
pub struct FirstFailure(std::sync::atomic::AtomicUsize);

impl Default for FirstFailure {
    fn default() -> Self {
        FirstFailure(std::sync::atomic::AtomicUsize::new(usize::MAX))
    }
}

impl FirstFailure {
    /// Passes the result of the worker at `handle` (its index in the handles) through,
    /// noting the worker if it failed first.
    pub fn noted<T>(&self, handle: usize, r: Result<T>) -> Result<T> {
        if r.is_err() {
            let _ = self.0.compare_exchange(
                usize::MAX,
                handle,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            );
        }
        r
    }

    /// Moves the handle of the first failure to the front (once every worker has ended or
    /// been stopped).
    pub fn put_first<T>(&self, handles: &mut [T]) {
        let first = self.0.load(std::sync::atomic::Ordering::Acquire);
        if first < handles.len() {
            handles.swap(0, first);
        }
    }
}

/// Joins every worker (none is left running) and merges their stats, or returns the first
/// error; a panicked worker counts as an error.
pub fn join_workers(
    handles: Vec<JoinHandle<Result<FrameStats>>>,
    side: &str,
) -> Result<FrameStats> {
    join_workers_preferring(handles, side, |_| false)
}

/// As `join_workers`, but an error for which `cause` holds wins over earlier ones: when one
/// worker's failure (a full disk) makes the peer drop the others, their errors only echo it.
pub fn join_workers_preferring(
    handles: Vec<JoinHandle<Result<FrameStats>>>,
    side: &str,
    cause: impl Fn(&Error) -> bool,
) -> Result<FrameStats> {
    join_workers_ranked(handles, side, |e| u8::from(cause(e)))
}

/// As `join_workers`, but the error of the highest `rank` wins (the earliest among equals).
pub fn join_workers_ranked(
    handles: Vec<JoinHandle<Result<FrameStats>>>,
    side: &str,
    rank: impl Fn(&Error) -> u8,
) -> Result<FrameStats> {
    let mut all = FrameStats::default();
    let mut first_err: Option<Error> = None;
    for h in handles {
        // Named by its thread: the handles' order is not the workers' (`FirstFailure`).
        let worker = h.thread().name().unwrap_or("unnamed").to_string();
        match h.join() {
            Ok(Ok(s)) => all.absorb(s),
            Ok(Err(e)) => {
                // Only one error is returned: the others are logged, as one of them may be
                // the cause the returned one echoes.
                tracing::info!(side, worker, error = %e, "worker failed");
                if first_err.as_ref().is_none_or(|f| rank(&e) > rank(f)) {
                    first_err = Some(e);
                }
            }
            Err(_) => {
                first_err.get_or_insert(Error::Panicked(format!("{side} worker {worker}")));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(all),
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
        let _ = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        );
    }
}

/// fd table slots a process reserves before it starts threads (`reserve_fd_table`): twice
/// the most a receiver of 20,000 small files was seen to hold open at once (2,048).
pub const FD_TABLE_RESERVE: u64 = 4096;

/// Lifts the fd limit (`raise_fd_limit`) and grows this process's fd table to
/// `FD_TABLE_RESERVE` slots (or the limit) now. Linux grows the table by doubling as fds are
/// opened, and once the process has a second thread every growth waits for an RCU grace period
/// (`expand_fdtable`): every worker of a small-file session stalled 10-40 ms on it, several
/// times a session. With one thread the growth costs nothing, so the binary calls this first
/// thing. Failure is harmless: the table then grows as before.
pub fn reserve_fd_table() {
    use rustix::process::{getrlimit, Resource};
    raise_fd_limit();
    let limit = getrlimit(Resource::Nofile)
        .current
        .unwrap_or(FD_TABLE_RESERVE);
    let top = FD_TABLE_RESERVE.min(limit).saturating_sub(1);
    let Ok(top) = i32::try_from(top) else {
        return;
    };
    if let Ok(fd) = rustix::fs::open(
        "/",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        // The duplicate lands at `top` or above, which grows the table; both close at once.
        let _ = rustix::io::fcntl_dupfd_cloexec(&fd, top);
    }
}

/// Where one worker runs, from the pinning plan.
#[derive(Debug, Clone, Default)]
pub struct WorkerPlace {
    /// The CPU it is pinned to (None: unpinned).
    pub cpu: Option<hw::CpuId>,
    /// The RDMA device and port the plan gives it (an active port on its CPU's NUMA node,
    /// spread by worker index; what `mover hw` shows), if any port is active.
    pub rdma: Option<crate::transport::select::DeviceSpec>,
}

/// Where each of `n` workers runs, from the pinning plan (near the block device holding
/// `near`), or unpinned with no planned RDMA port for all if the topology cannot be read
/// (with a warning).
pub fn worker_places(n: usize, near: Option<&Path>) -> Vec<WorkerPlace> {
    let plan = (|| -> std::result::Result<hw::PinningPlan, hw::Error> {
        let sys = Path::new("/sys");
        let topo = hw::Topology::from_sysfs(sys)?;
        let allowed = hw::allowed_cpus()?;
        let dev = near.and_then(|p| hw::block_device_for_path(sys, p));
        hw::PinningPlan::plan(&topo, &allowed, n as u32, dev.as_deref())
    })();
    match plan {
        Ok(p) => p
            .workers
            .iter()
            .map(|w| WorkerPlace {
                cpu: Some(w.cpu),
                rdma: w.rdma.as_deref().and_then(|r| r.parse().ok()),
            })
            .collect(),
        Err(e) => {
            tracing::warn!("no pinning plan ({e}); workers run unpinned");
            vec![WorkerPlace::default(); n]
        }
    }
}

/// Number of CPUs in this process's affinity mask (the default worker count).
pub fn default_threads() -> usize {
    hw::allowed_cpus().map(|c| c.len()).unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_worker_to_fail_is_joined_first_and_its_error_returned() {
        let first = FirstFailure::default();
        let mut order = vec![0, 1, 2];
        first.put_first(&mut order);
        assert_eq!(order, [0, 1, 2], "nothing failed: the order stays");
        // Worker 2 fails first, then worker 0 echoes it (the session ended).
        let r2 = first.noted::<FrameStats>(2, Err(Error::Verify("the cause".into())));
        let r0 = first.noted::<FrameStats>(0, Err(Error::PeerLost("an echo".into())));
        assert!(first.noted(1, Ok(FrameStats::default())).is_ok());
        first.put_first(&mut order);
        assert_eq!(order, [2, 1, 0]);
        let mut results = [Some(r0), None, Some(r2)];
        let handles: Vec<_> = order
            .iter()
            .map(|&k| {
                let r = results[k]
                    .take()
                    .unwrap_or_else(|| Ok(FrameStats::default()));
                std::thread::spawn(move || r)
            })
            .collect();
        match join_workers(handles, "receiver") {
            Err(Error::Verify(m)) => assert_eq!(m, "the cause"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_fd_table_is_grown_to_its_reserve_at_once() {
        reserve_fd_table();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let size: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .expect("FDSize in /proc/self/status")
            .trim()
            .parse()
            .unwrap();
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(FD_TABLE_RESERVE);
        assert!(
            size >= FD_TABLE_RESERVE.min(limit),
            "fd table of {size} slots, limit {limit}"
        );
    }
}
