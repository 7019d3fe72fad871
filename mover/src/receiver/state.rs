//! The receiver's durable state, kept inside the destination root under `.mover-state` (same
//! file system, so replaced and deleted items can be moved into the journal with rename(2)):
//!
//! ```text
//! .mover-state/recovery-point        the last recovery point: id, times, tree hash
//! .mover-state/rp-<id>.entries       its canonical entry list (metadata for a revert)
//! .mover-state/journal/               the undo journal of a job in progress (journal.rs)
//! ```
//!
//! The walks on both sides skip `.mover-state` at the top level, so it is never replicated, and
//! the receiver refuses entries and renames that name it.

use crate::durable::{self, read_opt, write_atomic};
use crate::error::{Error, IoContext, Result};
use crate::tree::entry::Entry;
use crate::tree::STATE_DIR;
use crate::wire::codec::{Dec, Enc};
use crate::wire::message::{decode_entries, encode_entry};
use rustix::fs::{Mode, OFlags};
use serde::Serialize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

const RP_FILE: &str = "recovery-point";
/// What an operator can do about a state file that cannot be read.
pub const CORRUPT_STATE_ADVICE: &str = "move .mover-state out of the destination (keep it for \
    inspection); the next job then takes the destination as it is as its starting point and \
    sends whatever differs, and `mover receive --revert` has nothing to undo";

/// The receiver's lock (see `State::lock`).
const LOCK_FILE: &str = "lock";
const RP_MAGIC: u32 = u32::from_le_bytes(*b"MVRP");
const RP_VERSION: u16 = 1;
/// Entry-list records are cut at this size.
const ENTRIES_RECORD: usize = 1024 * 1024;

/// Identifies a recovery point. 0 is "no recovery point yet" on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct RecoveryPointId(pub u128);

impl std::fmt::Display for RecoveryPointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryPoint {
    pub id: RecoveryPointId,
    /// When the receiver committed it (ns since the epoch).
    pub committed_ns: i64,
    /// The source's point in time this recovery point holds (ns since the epoch, sender clock).
    pub source_time_ns: i64,
    pub tree_hash: u128,
    pub entries: u64,
    /// The tree hash covers numeric owners (the receiver ran as root and the sender asked).
    pub hash_owners: bool,
}

impl RecoveryPoint {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(RP_MAGIC)
            .u16(RP_VERSION)
            .u128(self.id.0)
            .i64(self.committed_ns)
            .i64(self.source_time_ns);
        e.u128(self.tree_hash)
            .u64(self.entries)
            .u8(self.hash_owners as u8);
        let mut out = Vec::new();
        durable::frame_record(&e.buf, &mut out);
        out
    }

    pub(crate) fn decode(raw: &[u8]) -> Result<RecoveryPoint> {
        let bad = || {
            Error::Corrupt(format!(
                "{}/{RP_FILE} is corrupt: {CORRUPT_STATE_ADVICE}",
                crate::error::show(STATE_DIR)
            ))
        };
        let (recs, _) = durable::parse_records(raw);
        let body = recs.first().ok_or_else(bad)?;
        let mut d = Dec::new(body);
        let fields = (|| -> std::result::Result<RecoveryPoint, crate::wire::WireError> {
            if d.u32()? != RP_MAGIC || d.u16()? != RP_VERSION {
                return Err(crate::wire::WireError::BadField { field: "magic" });
            }
            let rp = RecoveryPoint {
                id: RecoveryPointId(d.u128()?),
                committed_ns: d.i64()?,
                source_time_ns: d.i64()?,
                tree_hash: d.u128()?,
                entries: d.u64()?,
                hash_owners: d.u8()? != 0,
            };
            d.finish()?;
            Ok(rp)
        })();
        fields.map_err(|_| bad())
    }
}

fn entries_name(id: RecoveryPointId) -> String {
    format!("rp-{id}.entries")
}

/// The open state directory of one destination root.
pub struct State {
    pub dir: OwnedFd,
}

impl State {
    /// Opens (creating) `.mover-state` in `root`, refusing a symlink or non-directory there.
    pub fn open(root: BorrowedFd<'_>) -> Result<State> {
        match rustix::fs::mkdirat(root, STATE_DIR, Mode::from_raw_mode(0o700)) {
            Ok(()) => {
                rustix::fs::fsync(root).ctx(|| "fsync of the destination root".to_string())?
            }
            Err(e) if e == rustix::io::Errno::EXIST => {}
            Err(e) => {
                return Err(e).ctx(|| "creating .mover-state in the destination root".to_string())
            }
        }
        let dir = rustix::fs::openat(
            root,
            STATE_DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ctx(|| "opening .mover-state (it must be a directory)".to_string())?;
        Ok(State { dir })
    }

    /// Takes the destination's lock for the caller's lifetime: `.mover-state/lock`, an flock
    /// that only the receiver's own user can reach (the directory is 0700), unlike the root
    /// itself, which any reader of a read-only target could lock.
    pub fn lock(&self, what: &std::path::Path) -> Result<OwnedFd> {
        rustix::fs::fchmod(&self.dir, Mode::from_raw_mode(0o700))
            .ctx(|| "restricting .mover-state to its owner".to_string())?;
        let fd = rustix::fs::openat(
            &self.dir,
            LOCK_FILE,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .ctx(|| "opening .mover-state/lock".to_string())?;
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                Error::Busy(format!(
                    "{} is in use by another mover receiver (or a revert); stop it first",
                    what.display()
                ))
            },
        )?;
        Ok(fd)
    }

    /// Opens `.mover-state` if it exists, creating nothing (for read-only questions).
    pub fn find(root: BorrowedFd<'_>) -> Result<Option<State>> {
        match rustix::fs::openat(
            root,
            STATE_DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(dir) => Ok(Some(State { dir })),
            Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
            Err(e) => Err(e).ctx(|| "opening .mover-state (it must be a directory)".to_string()),
        }
    }

    pub fn recovery_point(&self) -> Result<Option<RecoveryPoint>> {
        match read_opt(self.dir.as_fd(), RP_FILE)? {
            None => Ok(None),
            Some(raw) => RecoveryPoint::decode(&raw).map(Some),
        }
    }

    /// The entry list stored with a recovery point.
    pub fn rp_entries(&self, id: RecoveryPointId) -> Result<Vec<Entry>> {
        let name = entries_name(id);
        let raw = read_opt(self.dir.as_fd(), &name)?.ok_or_else(|| {
            Error::Corrupt(format!(
                ".mover-state/{name} is missing: the recovery point cannot be restored"
            ))
        })?;
        let (recs, valid) = durable::parse_records(&raw);
        if valid != raw.len() {
            return Err(Error::Corrupt(format!(
                ".mover-state/{name} is corrupt: {CORRUPT_STATE_ADVICE}"
            )));
        }
        let mut out = Vec::new();
        for r in recs {
            out.extend(decode_entries(r)?);
        }
        Ok(out)
    }

    /// Makes `rp` (with its entry list) the recovery point, durably and atomically: the entry
    /// list first, then the record by rename. The caller has already synced the data.
    pub fn commit(&self, rp: &RecoveryPoint, entries: &[Entry]) -> Result<()> {
        let mut raw = Vec::new();
        let mut e = Enc::new();
        for x in entries {
            encode_entry(&mut e, x);
            if e.buf.len() >= ENTRIES_RECORD {
                durable::frame_record(&e.buf, &mut raw);
                e.buf.clear();
            }
        }
        if !e.buf.is_empty() {
            durable::frame_record(&e.buf, &mut raw);
        }
        let old = self.recovery_point().ok().flatten();
        write_atomic(self.dir.as_fd(), &entries_name(rp.id), &raw)?;
        write_atomic(self.dir.as_fd(), RP_FILE, &rp.encode())?;
        if let Some(old) = old.filter(|o| o.id != rp.id) {
            let _ = rustix::fs::unlinkat(
                &self.dir,
                entries_name(old.id).as_str(),
                rustix::fs::AtFlags::empty(),
            );
        }
        Ok(())
    }
}
