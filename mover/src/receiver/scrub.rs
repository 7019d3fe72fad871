//! Scrub: a full verifying walk of a target at rest, compared with its recovery point's list.
//! Jobs verify only what they changed and trust the rest to be the recovery point they
//! verified; a scrub checks that trust (a file changed, added or removed behind the receiver's
//! back anywhere). Its result is kept in `.mover-state/scrub`; a failed one makes the next job
//! compare every entry with the disk (repairing what differs) and walk the whole target, whose
//! success is recorded in its place.
//!
//! What it checks is what the tree hash covers (shape, metadata, xattrs), not file contents:
//! those are checked as they arrive (the session's content digest).

use super::state::{RecoveryPoint, State};
use crate::durable::{frame_record, parse_records, read_opt, write_atomic};
use crate::error::{Error, Result};
use crate::tree::entry::Entry;
use crate::tree::hash::{tree_hash, HashOptions};
use crate::wire::codec::{Dec, Enc};
use crate::wire::message::MAX_MESSAGE_LEN;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Mutex;
use std::time::Duration;

pub(crate) const SCRUB_FILE: &str = "scrub";
const MAGIC: u32 = u32::from_le_bytes(*b"MVSC");
const VERSION: u16 = 1;

/// What checked the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScrubBy {
    /// A scrub of the target at rest.
    Scrub,
    /// A job that compared every entry with the disk and walked the whole target.
    Job,
}

/// The result of the last full verification of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubReport {
    /// When it ended (ns since the epoch).
    pub at_ns: i64,
    /// The target was exactly its recovery point.
    pub ok: bool,
    pub recovery_point: String,
    /// Entries walked.
    pub entries: u64,
    /// The first difference found (its path, what was expected and what was there).
    pub difference: Option<String>,
    pub by: ScrubBy,
}

impl ScrubReport {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(MAGIC)
            .u16(VERSION)
            .i64(self.at_ns)
            .u8(self.ok as u8)
            .u64(self.entries)
            .u8(match self.by {
                ScrubBy::Scrub => 0,
                ScrubBy::Job => 1,
            })
            .bytes(self.recovery_point.as_bytes());
        let d = self.difference.as_deref().unwrap_or("");
        let mut end = d.len().min(MAX_MESSAGE_LEN);
        while !d.is_char_boundary(end) {
            end -= 1;
        }
        e.bytes(&d.as_bytes()[..end]);
        let mut out = Vec::new();
        frame_record(&e.buf, &mut out);
        out
    }

    pub(crate) fn decode(raw: &[u8]) -> Option<ScrubReport> {
        let (recs, _) = parse_records(raw);
        let mut d = Dec::new(recs.first()?);
        if d.u32().ok()? != MAGIC || d.u16().ok()? != VERSION {
            return None;
        }
        let at_ns = d.i64().ok()?;
        let ok = d.u8().ok()? != 0;
        let entries = d.u64().ok()?;
        let by = match d.u8().ok()? {
            0 => ScrubBy::Scrub,
            _ => ScrubBy::Job,
        };
        let rp = String::from_utf8(d.bytes(64, "recovery point").ok()?.to_vec()).ok()?;
        let diff = String::from_utf8_lossy(d.bytes(MAX_MESSAGE_LEN, "difference").ok()?);
        d.finish().ok()?;
        Some(ScrubReport {
            at_ns,
            ok,
            recovery_point: rp,
            entries,
            difference: (!diff.is_empty()).then(|| diff.into_owned()),
            by,
        })
    }
}

/// The last scrub's result kept in the state directory (None: never scrubbed, or unreadable).
pub fn last(state: &State) -> Option<ScrubReport> {
    match read_opt(state.dir.as_fd(), SCRUB_FILE) {
        Ok(Some(raw)) => ScrubReport::decode(&raw),
        _ => None,
    }
}

/// The last full verification found a difference that no job has repaired yet.
pub fn failed(state: &State) -> bool {
    last(state).is_some_and(|r| !r.ok)
}

fn record(state: &State, r: &ScrubReport) -> Result<()> {
    write_atomic(state.dir.as_fd(), SCRUB_FILE, &r.encode())
}

/// A job that walked the whole target and committed `rp` is recorded as a passed check
/// (clearing a failed scrub's alert). A failure to record it is only logged: the job's
/// recovery point stands.
pub fn verified_by_job(state: &State, rp: &RecoveryPoint, entries: u64) {
    let r = ScrubReport {
        at_ns: crate::clock::now_ns(),
        ok: true,
        recovery_point: rp.id.to_string(),
        entries,
        difference: None,
        by: ScrubBy::Job,
    };
    if let Err(e) = record(state, &r) {
        tracing::warn!("recording the job's full verification: {e}");
    }
}

/// Walks the target and compares it with its recovery point's list; records and returns the
/// result. None: nothing to compare with (no recovery point yet) or a job's journal waits (the
/// target is between two recovery points until that job resumes or is reverted).
pub fn scrub_fd(root: BorrowedFd<'_>, state: &State) -> Result<Option<ScrubReport>> {
    let Some(rp) = state.recovery_point()? else {
        return Ok(None);
    };
    if super::journal::read_existing(state)?.is_some_and(|j| j.base == Some(rp.id)) {
        return Ok(None);
    }
    let (ok, difference, entries) = compare(root, state, &rp)?;
    let r = ScrubReport {
        at_ns: crate::clock::now_ns(),
        ok,
        recovery_point: rp.id.to_string(),
        entries,
        difference,
        by: ScrubBy::Scrub,
    };
    record(state, &r)?;
    Ok(Some(r))
}

/// Walks the tree at `root` and compares it with recovery point `rp` of `state` (the list as
/// its replica policy admits it): (equal, the first difference, entries walked). `root` may be
/// another tree than the one `state` belongs to (a drill's clone).
pub(crate) fn compare(
    root: BorrowedFd<'_>,
    state: &State,
    rp: &RecoveryPoint,
) -> Result<(bool, Option<String>, u64)> {
    let (want, want_paths) = state.admitted(rp)?;
    let walked = crate::tree::walk::walk_fd(root, true)?;
    let opts = HashOptions {
        owners: rp.hash_owners,
    };
    let ok = tree_hash(&walked.entries, opts) == tree_hash(&want, opts);
    let difference = (!ok).then(|| {
        let norm = |v: &[Entry]| -> Vec<Entry> {
            v.iter()
                .cloned()
                .map(|mut e| {
                    if !rp.hash_owners {
                        e.meta.uid = 0;
                        e.meta.gid = 0;
                    }
                    e
                })
                .collect()
        };
        match super::finalize::first_difference(&norm(&want), &norm(&walked.entries), &want_paths) {
            Error::Verify(m) => m,
            e => e.to_string(),
        }
    });
    Ok((ok, difference, walked.entries.len() as u64))
}

/// `mover receive --scrub`: scrubs a destination at rest (taking the receiver's lock).
pub fn scrub_root(root: &std::path::Path) -> Result<Option<ScrubReport>> {
    let fd = crate::beneath::open_root(root, "destination root")?;
    match State::find(fd.as_fd())? {
        Some(state) => {
            let _lock = state.lock(root)?;
            scrub_fd(fd.as_fd(), &state)
        }
        None => Ok(None),
    }
}

/// A receiver's scrub schedule and the last result, shared with whoever shows it (the daemon's
/// view and metrics).
#[derive(Debug, Default)]
pub struct ScrubStatus {
    last: Mutex<Option<ScrubReport>>,
}

impl ScrubStatus {
    pub fn last(&self) -> Option<ScrubReport> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set(&self, r: Option<ScrubReport>) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = r;
    }
}

/// Shortest scrub interval accepted (a scrub walks the whole target).
pub const MIN_SCRUB_INTERVAL: Duration = Duration::from_secs(1);
/// When a due scrub could not run (a job's journal waits), it is tried again this much later.
pub const SCRUB_RETRY: Duration = Duration::from_secs(60);

/// When the next scrub is due (ns since the epoch): an interval after the last full
/// verification, or after `now` if there was none (a receiver just started for its first job
/// should not walk the target first).
pub fn next_due(last: Option<&ScrubReport>, every: Duration, now_ns: i64) -> i64 {
    let every = every
        .max(MIN_SCRUB_INTERVAL)
        .as_nanos()
        .min(i64::MAX as u128) as i64;
    last.map_or(now_ns, |r| r.at_ns).saturating_add(every)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_reports_round_trip_and_schedule_from_the_last_one() {
        let r = ScrubReport {
            at_ns: 5_000_000_000,
            ok: false,
            recovery_point: "ab".repeat(16),
            entries: 12,
            difference: Some("destination differs at x".into()),
            by: ScrubBy::Scrub,
        };
        assert_eq!(ScrubReport::decode(&r.encode()), Some(r.clone()));
        assert_eq!(ScrubReport::decode(b"garbage"), None);
        let day = Duration::from_secs(86400);
        assert_eq!(
            next_due(Some(&r), day, 9),
            5_000_000_000 + 86400 * 1_000_000_000
        );
        assert_eq!(next_due(None, day, 7), 7 + 86400 * 1_000_000_000);
        assert_eq!(next_due(None, Duration::ZERO, 0), 1_000_000_000);
    }
}
