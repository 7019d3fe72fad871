//! mover's data plane: a thread-per-core io_uring engine that replicates a directory tree to a
//! receiver over a framed, versioned, checksummed protocol. See ARCHITECTURE.md for the map and
//! docs/protocol.md for the wire format.
//!
//! The API, for the `mover` binary, the control plane's daemon and tests:
//! - **Send a tree**: [`send`] or [`send_with_retry`] with [`SendOptions`], giving a
//!   [`SendReport`]; the `_over` forms take any [`Transport`] instead of TCP. A running send
//!   is watched and steered through [`Progress`] and its [`JobControl`].
//! - **Receive into a root**: [`Receiver`] (its own listener, or an inbox of connections a
//!   daemon routes to it) with [`ReceiveOptions`]; [`revert_root`] and [`recovery_point`] for a
//!   destination at rest.
//! - **Verify**: [`tree::hash`] hashes a tree the way both sides do.
//! - **The protocol itself**, pure: [`wire`] (frames, messages, limits), for fuzzing and peers.
//! - **Building blocks** a caller may need: [`transport`], [`snapshot::Provider`],
//!   [`beneath`] (path operations that cannot leave a root), [`units`], [`clock`].
//! - Feature `testkit`: seeded tree generation (`gen`), churn (`churn`) and the in-memory
//!   transport (`transport::mem`) for tests and the demo.
//!
//! Everything else (the io_uring engine, the receiver's journal and apply phases, the sender's
//! manifest and hints) is internal.

pub mod beneath;
pub mod clock;
pub(crate) mod durable;
pub(crate) mod engine;
pub mod error;
pub mod receiver;
pub mod sender;
pub mod snapshot;
pub mod transport;
pub mod tree;
pub mod units;
pub mod wire;

#[cfg(feature = "testkit")]
pub mod churn;
#[cfg(feature = "testkit")]
pub mod gen;

pub use engine::ring::STALL_TIMEOUT;
pub use error::{Error, Result};
pub use receiver::{
    recovery_point, revert_root, ReceiveOptions, Receiver, SessionLimits, SessionReport, Tickets,
};
pub use sender::{
    send, send_over, send_with_retry, send_with_retry_over, IdMap, SendOptions, SendReport,
};
pub use transport::{Connection, Transport};

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub fn software_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Progress counters read by the CLI's progress bar and the daemon's status. Workers add to
/// `bytes` and `files` once per frame (relaxed; readers only need approximate, monotonic
/// numbers). `control` carries the daemon's requests to a running send.
#[derive(Default)]
pub struct Progress {
    pub files_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes: Arc<AtomicU64>,
    /// Files whose last data frame has been sent (sender) or written (receiver).
    pub files: AtomicU64,
    pub control: JobControl,
}

impl Progress {
    pub fn set_totals(&self, files: u64, bytes: u64) {
        self.files_total.store(files, Ordering::Relaxed);
        self.bytes_total.store(bytes, Ordering::Relaxed);
    }
    /// Zeroes the counters for a new session; the control requests stay.
    pub fn reset(&self) {
        self.set_totals(0, 0);
        self.bytes.store(0, Ordering::Relaxed);
        self.files.store(0, Ordering::Relaxed);
        self.control.issued.store(0, Ordering::SeqCst);
        self.control.restart_budget();
    }
}

/// What the sender's workers do before starting the next chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// Paused or ahead of the bandwidth limit: start nothing new for (at most) this long.
    Wait(std::time::Duration),
    /// The job was aborted: stop at this chunk boundary.
    Cancel,
}

/// Longest a worker sleeps before looking at the gate again (bounds the reaction to resume,
/// abort and rate changes).
pub const GATE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Requests to a running send from whoever runs it (the daemon): pause at the next chunk
/// boundary (blackout windows), cancel (abort), and a bandwidth limit. Lock-free: workers read
/// it once per chunk.
#[derive(Default)]
pub struct JobControl {
    paused: AtomicBool,
    /// When the current pause began (`mono_ns`), 0 when not paused.
    paused_since_ns: AtomicU64,
    cancelled: AtomicBool,
    /// Stop this session at a chunk boundary but not the job: its runner starts a new session
    /// (which resumes) later. Used for pauses longer than a peer waits on a silent connection.
    suspended: AtomicBool,
    /// Bytes per second of file data; 0 is unlimited.
    rate: AtomicU64,
    /// File data bytes of the chunks workers have started (sent or in flight): the rate
    /// limit counts these, so a worker filling its buffers cannot run ahead of it.
    issued: AtomicU64,
    /// Monotonic time (ns since `mono_ns`'s epoch) and bytes issued when the rate budget began.
    budget_start_ns: AtomicU64,
    budget_base: AtomicU64,
}

use clock::mono_ns;

impl JobControl {
    pub fn set_paused(&self, on: bool) {
        let was = self.paused.swap(on, Ordering::SeqCst);
        if !was && on {
            self.paused_since_ns
                .store(mono_ns().max(1), Ordering::SeqCst);
        }
        if was && !on {
            self.paused_since_ns.store(0, Ordering::SeqCst);
            // Time spent paused is not budget to burst with afterwards.
            self.restart_budget();
        }
    }
    /// How long the current pause has lasted.
    pub fn paused_for(&self) -> Option<std::time::Duration> {
        match self.paused_since_ns.load(Ordering::SeqCst) {
            0 => None,
            t => Some(std::time::Duration::from_nanos(mono_ns().saturating_sub(t))),
        }
    }
    pub fn suspend(&self) {
        self.suspended.store(true, Ordering::SeqCst);
    }
    /// Whether the session was suspended (clearing it for the next session).
    pub fn take_suspended(&self) -> bool {
        self.suspended.swap(false, Ordering::SeqCst)
    }
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
    /// `None` or 0: unlimited.
    pub fn set_rate(&self, bytes_per_sec: Option<u64>) {
        self.rate
            .store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
        self.restart_budget();
    }
    fn restart_budget(&self) {
        self.budget_start_ns.store(mono_ns(), Ordering::SeqCst);
        self.budget_base
            .store(self.issued.load(Ordering::SeqCst), Ordering::SeqCst);
    }
    /// A worker started a chunk of `bytes` file data.
    pub fn issue(&self, bytes: u64) {
        self.issued.fetch_add(bytes, Ordering::Relaxed);
    }
    /// Whether a worker may start another chunk now.
    pub fn gate(&self) -> Gate {
        let sent = self.issued.load(Ordering::Relaxed);
        if self.cancelled.load(Ordering::Relaxed) || self.suspended.load(Ordering::Relaxed) {
            return Gate::Cancel;
        }
        if self.paused.load(Ordering::Relaxed) {
            return Gate::Wait(GATE_POLL);
        }
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return Gate::Go;
        }
        let elapsed = mono_ns().saturating_sub(self.budget_start_ns.load(Ordering::Relaxed));
        let allowed = self.budget_base.load(Ordering::Relaxed) as u128
            + rate as u128 * elapsed as u128 / 1_000_000_000;
        if (sent as u128) <= allowed {
            return Gate::Go;
        }
        let ahead_ns = (sent as u128 - allowed) * 1_000_000_000 / rate as u128;
        Gate::Wait(std::time::Duration::from_nanos(
            ahead_ns.min(GATE_POLL.as_nanos()) as u64,
        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn gate_pauses_cancels_and_keeps_to_the_rate() {
        let c = JobControl::default();
        assert_eq!(c.gate(), Gate::Go);
        c.set_paused(true);
        assert_eq!(c.gate(), Gate::Wait(GATE_POLL));
        c.set_paused(false);
        c.set_rate(Some(1 << 20));
        c.issue(1 << 20);
        // 1 MiB issued at 1 MiB/s just after the budget began: wait, at most one poll.
        assert!(matches!(c.gate(), Gate::Wait(d) if d > Duration::ZERO && d <= GATE_POLL));
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(c.gate(), Gate::Go);
        c.set_rate(None);
        c.issue(1 << 30);
        assert_eq!(c.gate(), Gate::Go);
        c.set_paused(true);
        assert!(c.paused_for().is_some());
        c.suspend();
        assert_eq!(c.gate(), Gate::Cancel);
        assert!(c.take_suspended() && !c.take_suspended());
        c.set_paused(false);
        assert_eq!((c.gate(), c.paused_for()), (Gate::Go, None));
        c.cancel();
        assert_eq!(c.gate(), Gate::Cancel);
    }
}
