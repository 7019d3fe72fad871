//! What a running send shares with whoever runs it: progress counters read by the CLI's
//! progress bar and the daemon's status, and the controls (pause, cancel, suspend, bandwidth
//! limit) its workers look at once per chunk.

use crate::clock::mono_ns;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

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

impl JobControl {
    pub fn set_paused(&self, on: bool) {
        let was = self.paused.swap(on, Ordering::SeqCst);
        if was && !on {
            // Time spent paused is not budget to burst with afterwards.
            self.restart_budget();
        }
    }
    pub fn suspend(&self) {
        self.suspended.store(true, Ordering::SeqCst);
    }
    /// Whether the session was suspended (clearing it for the next session).
    pub fn take_suspended(&self) -> bool {
        self.suspended.swap(false, Ordering::SeqCst)
    }
    /// Whether the session was suspended (the flag stays).
    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::SeqCst)
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
    /// The bandwidth limit in force (None: unlimited).
    pub fn rate(&self) -> Option<u64> {
        Some(self.rate.load(Ordering::SeqCst)).filter(|r| *r > 0)
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
        c.suspend();
        assert_eq!(c.gate(), Gate::Cancel);
        assert!(c.take_suspended() && !c.take_suspended());
        c.set_paused(false);
        assert_eq!(c.gate(), Gate::Go);
        c.cancel();
        assert_eq!(c.gate(), Gate::Cancel);
    }
}
