//! A session's worker connections, at the committing receiver and at a write place alike:
//! collected by index once they arrive (`collect_workers`), watched while the workers run so
//! that they stop when told to (the sender ended the session, a place failed, a place's fence
//! refused: `watch_workers`), and how many data frames they may carry (`data_frame_budget`).

use crate::error::{Error, Result};
use crate::transport::Connection;
use crate::tree::entry::Entry;
use crate::units::WorkerIndex;
use crate::wire::io::Link;
use crate::wire::message::{is_inline, Need};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// How often the wait for worker connections checks that the sender is still there.
pub(crate) const WORKER_POLL: Duration = Duration::from_millis(50);
/// How long the session waits for its worker connections after sending the need list.
pub(crate) const WORKER_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Until `n` workers have sent their end on `ended`: every `poll`, asks `stop`; once it says
/// so, shuts `streams` (a worker blocked in a receive then returns) and returns.
pub(crate) fn watch_workers(
    ended: &Receiver<()>,
    n: usize,
    poll: Duration,
    streams: &[std::net::TcpStream],
    mut stop: impl FnMut() -> bool,
) {
    let mut left = n;
    while left > 0 {
        match ended.recv_timeout(poll) {
            Ok(()) => left -= 1,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if stop() {
                    for s in streams {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                    }
                    return;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The connections of workers `want` (ascending indices), in that order. `ctl`: the session's
/// control connection, whose closing ends the wait (a place has none).
pub(crate) fn collect_workers(
    rx: &Receiver<super::WorkerConn>,
    want: &[u16],
    ctl: Option<&dyn Connection>,
) -> Result<Vec<super::WorkerConn>> {
    debug_assert!(want.windows(2).all(|w| w[0] < w[1]));
    let n = want.len();
    let mut slots: Vec<Option<Link>> = (0..n).map(|_| None).collect();
    let deadline = Instant::now() + WORKER_CONNECT_TIMEOUT;
    let mut have = 0;
    while have < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::PeerLost(format!(
                "only {have} of {n} worker connections arrived within {WORKER_CONNECT_TIMEOUT:?}"
            )));
        }
        let (idx, s) = match rx.recv_timeout(left.min(WORKER_POLL)) {
            Ok(x) => x,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // A sender that gave up (one of its connections was lost) closes its control
                // connection: end the session now rather than keep the root busy for the
                // rest of the timeout while it retries.
                if ctl.is_some_and(|c| c.peer_closed()) {
                    return Err(Error::PeerLost(format!("sender closed the session while {have} of {n} worker connections had arrived")));
                }
                continue;
            }
            Err(e) => {
                return Err(Error::PeerLost(format!(
                    "waiting for worker connections: {e}"
                )))
            }
        };
        let k = want
            .binary_search(&idx.0)
            .map_err(|_| Error::PeerLost(format!("worker index {} is not served here", idx.0)))?;
        if slots[k].is_some() {
            return Err(Error::PeerLost(format!("worker {} connected twice", idx.0)));
        }
        slots[k] = Some(s);
        have += 1;
    }
    Ok(want
        .iter()
        .zip(slots)
        .filter_map(|(i, s)| Some((WorkerIndex(*i), s?)))
        .collect())
}

/// Most data frames this session can legitimately receive: one FileBatch per inline file at
/// most (empty batches are refused), and for each large file what the sender's plan can cut
/// its announced bytes into. Bounds the per-frame state (checksums) a sender can make the
/// workers keep.
pub(crate) fn data_frame_budget(
    need: &[Need],
    entries: &[Entry],
    expected: &std::collections::HashMap<u32, u64>,
) -> u64 {
    use crate::tree::entry::EntryKind;
    let inline = need
        .iter()
        .zip(entries)
        .filter(|(n, e)| {
            **n == Need::Full && matches!(e.kind, EntryKind::File { size } if is_inline(size))
        })
        .count() as u64;
    expected
        .values()
        .map(|&bytes| crate::wire::message::max_data_frames(bytes))
        .fold(inline, u64::saturating_add)
}
