//! Early write-back: while the workers write a job's data, a helper thread syncs the
//! destination's file system every `INTERVAL`, so the write-back that the recovery point waits
//! for (its `syncfs`) mostly happened on the CPU the workers left idle.
//!
//! Why: 20,000 new 4 KiB files on this VM's ext4 took 0.16 s of `syncfs` after the last byte
//! arrived, a quarter of the job. With this thread, paired over 7 runs each: 0.673 s -> 0.625 s
//! (median). Each `syncfs` also flushes the device's cache, as the receiver's checkpoints of
//! large files already do (one per `--checkpoint-mib` per file), so the interval is kept well
//! above a device's flush time. A tmpfs has nothing to write back; the calls cost microseconds.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Pause between two write-backs of the destination while data arrives.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);

/// The running helper; stopped (and joined) by `stop` or on drop.
pub(crate) struct EarlyWriteback {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    /// Write-backs done so far.
    rounds: Arc<AtomicU64>,
}

impl EarlyWriteback {
    /// Starts writing back the file system holding `root`. Best effort: without a thread or a
    /// descriptor there is simply no early write-back (the recovery point's `syncfs` does it
    /// all), so failures are logged, not returned.
    pub(crate) fn start(root: BorrowedFd<'_>) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let rounds = Arc::new(AtomicU64::new(0));
        let thread = match rustix::io::fcntl_dupfd_cloexec(root, 0) {
            Ok(fd) => {
                let (s, n) = (stop.clone(), rounds.clone());
                std::thread::Builder::new()
                    .name("mover-writeback".into())
                    .spawn(move || run(&fd, &s, &n))
                    .map_err(|e| tracing::debug!(error = %e, "no early write-back thread"))
                    .ok()
            }
            Err(e) => {
                tracing::debug!(error = %e, "no descriptor for early write-back");
                None
            }
        };
        EarlyWriteback {
            stop,
            thread,
            rounds,
        }
    }

    /// Stops the helper and waits for a write-back in progress (work the recovery point's
    /// `syncfs` would otherwise do).
    pub(crate) fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let (flag, wake) = &*self.stop;
        // A poisoned flag only means the helper panicked; it is stopping anyway.
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            tracing::debug!(
                rounds = self.rounds.load(Ordering::Relaxed),
                "early write-back stopped"
            );
        }
    }
}

impl Drop for EarlyWriteback {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(root: &OwnedFd, stop: &(Mutex<bool>, Condvar), rounds: &AtomicU64) {
    let (flag, wake) = stop;
    let mut stopped = flag.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let (s, _) = wake
            .wait_timeout_while(stopped, INTERVAL, |s| !*s)
            .unwrap_or_else(|p| p.into_inner());
        stopped = s;
        if *stopped {
            return;
        }
        drop(stopped);
        // An error here (EIO) is the recovery point's syncfs to report, not this helper's.
        let _ = rustix::fs::syncfs(root.as_fd());
        rounds.fetch_add(1, Ordering::Relaxed);
        stopped = flag.lock().unwrap_or_else(|p| p.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_early_write_back_syncs_every_interval_and_stops_at_once_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::File::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("f"), vec![7u8; 1 << 20]).unwrap();
        let wb = EarlyWriteback::start(root.as_fd());
        assert!(wb.thread.is_some(), "the helper thread started");
        let rounds = wb.rounds.clone();
        let t = Instant::now();
        while rounds.load(Ordering::Relaxed) < 2 {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "two write-backs within 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Just after a write-back, the helper is in its pause: stopping wakes it rather than
        // waiting the pause out.
        let t = Instant::now();
        wb.stop();
        assert!(t.elapsed() < INTERVAL, "stopping took {:?}", t.elapsed());
        let done = rounds.load(Ordering::Relaxed);
        std::thread::sleep(INTERVAL * 2);
        assert_eq!(
            rounds.load(Ordering::Relaxed),
            done,
            "no write-back after stop"
        );
    }
}
