//! The daemon's clocks, passed in rather than read where they are needed, so scheduling
//! decisions (jobs due, blackout windows, pauses, backoff, silent peers) can be tested with
//! simulated time. Wall time is for calendars and records (blackout windows are on the wall
//! clock of their zone; times are stored as nanoseconds since the Unix epoch); monotonic time
//! is for intervals, which must not stretch or shrink when the wall clock is set. A wall time
//! is shown as `rfc3339` says.

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `ns` (since the Unix epoch) as the API and the CLI show a time: RFC 3339 in UTC, to the
/// second.
pub(crate) fn rfc3339(ns: i64) -> String {
    DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Where the daemon reads the time.
pub trait Clock: Send + Sync {
    /// Wall-clock nanoseconds since the Unix epoch, as times are stored.
    fn now_ns(&self) -> i64;

    /// Monotonic time, for intervals.
    fn instant(&self) -> Instant;

    /// Wall-clock time, for calendars: the same instant as [`Clock::now_ns`].
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.now_ns())
    }
}

/// The machine's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        // The data plane's reading, so a clock before 1970 or past 2262 is handled in one place.
        mover::clock::now_ns()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// Simulated time for tests: starts at a given wall time and moves only when advanced, wall
/// and monotonic time together.
#[derive(Debug)]
pub struct SimClock {
    wall_start_ns: i64,
    /// Any real instant: only differences between `instant()` readings mean anything.
    mono_start: Instant,
    advanced_ns: AtomicU64,
}

impl SimClock {
    pub fn new(wall: DateTime<Utc>) -> SimClock {
        SimClock {
            wall_start_ns: wall.timestamp_nanos_opt().unwrap_or(i64::MAX),
            mono_start: Instant::now(),
            advanced_ns: AtomicU64::new(0),
        }
    }

    /// Moves both clocks forward by `d` (saturating after 584 years).
    pub fn advance(&self, d: Duration) {
        let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // fetch_update retries until no other thread advanced meanwhile; the closure never
        // refuses, so the result carries nothing to handle.
        let _ = self
            .advanced_ns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(d))
            });
    }

    fn advanced(&self) -> u64 {
        self.advanced_ns.load(Ordering::SeqCst)
    }
}

impl Clock for SimClock {
    fn now_ns(&self) -> i64 {
        self.wall_start_ns
            .saturating_add(i64::try_from(self.advanced()).unwrap_or(i64::MAX))
    }

    fn instant(&self) -> Instant {
        // Invariant: at most u64::MAX ns (584 years) past a real reading, which an Instant
        // (seconds in an i64) always holds.
        self.mono_start + Duration::from_nanos(self.advanced())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_time_moves_only_when_advanced_and_both_clocks_together() {
        let start = DateTime::parse_from_rfc3339("2025-03-30T00:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = SimClock::new(start);
        let (w, m) = (c.now(), c.instant());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!((c.now(), c.instant()), (w, m), "real time does not leak in");
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now(), start + chrono::TimeDelta::milliseconds(1500));
        assert_eq!(c.instant() - m, Duration::from_millis(1500));
        assert_eq!(c.now_ns(), c.now().timestamp_nanos_opt().unwrap());
    }

    #[test]
    fn system_clock_reads_the_same_wall_time_as_the_data_plane() {
        let c = SystemClock;
        let (before, at, after) = (mover::clock::now_ns(), c.now_ns(), mover::clock::now_ns());
        assert!(before <= at && at <= after);
        let a = c.instant();
        assert!(c.instant() >= a);
        assert!((c.now() - DateTime::from_timestamp_nanos(at)).num_seconds() < 5);
    }
}
