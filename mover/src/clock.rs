//! The one place that reads the clocks. Wall time is stored (recovery points, job times) as
//! nanoseconds since the Unix epoch in an `i64`; monotonic time measures pauses and rates.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock nanoseconds since the Unix epoch. A clock set before 1970 reads 0 and one past
/// the year 2262 reads `i64::MAX`, so stored times never wrap.
pub fn now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Monotonic nanoseconds since the first call in this process (never 0 after the first call
/// returns, so callers may use 0 as "unset").
pub fn mono_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let e = EPOCH.get_or_init(Instant::now);
    u64::try_from(e.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_is_after_2020_and_monotonic_clock_moves_forward() {
        assert!(now_ns() > 1_577_836_800_000_000_000);
        let a = mono_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(mono_ns() > a);
    }
}
