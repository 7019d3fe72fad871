//! The receiver's durable state, kept inside the destination root under `.mover-state` (same
//! file system, so replaced and deleted items can be moved into the journal with rename(2)):
//!
//! ```text
//! .mover-state/recovery-point        the last recovery point: id, times, tree hash, the digest
//!                                    of its entry list and the replica policy it was made under
//! .mover-state/rp-<id>.entries       its canonical entry list as the sender sent it (the base of
//!                                    the next job's delta; with the policy, what the target
//!                                    holds: metadata for a revert, the next job's comparisons)
//! .mover-state/journal/               the undo journal of a job in progress (journal.rs)
//! .mover-state/scrub                  the last scrub's result (scrub.rs)
//! ```
//!
//! The walks on both sides skip `.mover-state` at the top level, so it is never replicated, and
//! the receiver refuses entries and renames that name it.

use super::policy::ReplicaPolicy;
use crate::durable::{self, read_opt, write_atomic};
use crate::error::{Error, IoContext, Result};
use crate::tree::entry::Entry;
use crate::tree::STATE_DIR;
use crate::wire::codec::{Dec, Enc};
use crate::wire::message::{decode_entries, encode_entry};
use rustix::fs::{Mode, OFlags};
use serde::Serialize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

pub(crate) const RP_FILE: &str = "recovery-point";
/// What an operator can do about a state file that cannot be read.
pub const CORRUPT_STATE_ADVICE: &str = "move .mover-state out of the destination (keep it for \
    inspection); the next job then takes the destination as it is as its starting point and \
    sends whatever differs, and `mover receive --revert` has nothing to undo";

/// The receiver's lock (see `State::lock`).
const LOCK_FILE: &str = "lock";
const RP_MAGIC: u32 = u32::from_le_bytes(*b"MVRP");
/// Version 2 added the list digest and the replica policy, and keeps the list as sent (version
/// 1 kept the destination's walk: read as a list admitted under a policy that allows all, with
/// no digest, so it is never a delta's base).
const RP_VERSION: u16 = 2;
const RP_VERSION_1: u16 = 1;
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
    /// Tree hash with owners of the stored list as the sender sent it: what a sender's base
    /// must match for a delta entry list (0: none, the list is not a base).
    pub list_digest: u128,
    /// The replica policy the list was admitted under: applied to the stored list, it gives
    /// what the target holds.
    #[serde(skip)]
    pub policy: ReplicaPolicy,
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
        e.u128(self.list_digest)
            .u8(self.policy.allow_setid as u8)
            .u8(self.policy.allow_devices as u8);
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
            let magic = d.u32()?;
            let version = d.u16()?;
            if magic != RP_MAGIC || !(RP_VERSION_1..=RP_VERSION).contains(&version) {
                return Err(crate::wire::WireError::BadField { field: "magic" });
            }
            let mut rp = RecoveryPoint {
                id: RecoveryPointId(d.u128()?),
                committed_ns: d.i64()?,
                source_time_ns: d.i64()?,
                tree_hash: d.u128()?,
                entries: d.u64()?,
                hash_owners: d.u8()? != 0,
                list_digest: 0,
                policy: ReplicaPolicy {
                    allow_setid: true,
                    allow_devices: true,
                },
            };
            if version >= RP_VERSION {
                rp.list_digest = d.u128()?;
                rp.policy = ReplicaPolicy {
                    allow_setid: d.u8()? != 0,
                    allow_devices: d.u8()? != 0,
                };
            }
            d.finish()?;
            Ok(rp)
        })();
        fields.map_err(|_| bad())
    }
}

fn entries_name(id: RecoveryPointId) -> String {
    format!("rp-{id}.entries")
}

/// What a target holds at a recovery point: the stored list with its policy applied (setid
/// bits cleared in place) and the entries the policy kept out.
pub struct Held {
    pub entries: Vec<Entry>,
    pub skip: Vec<bool>,
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
        // The list was checked when it arrived; checking it again costs one pass and turns a
        // list damaged behind a valid checksum into an error instead of a bad index later.
        let mut c = crate::tree::entry::StructureChecker::new();
        for e in &out {
            c.push(e).map_err(|e| {
                Error::Corrupt(format!(
                    ".mover-state/{name} is not a valid entry list ({e}): {CORRUPT_STATE_ADVICE}"
                ))
            })?;
        }
        Ok(out)
    }

    /// What the target holds at `rp`: its stored list with the policy it was admitted under
    /// applied in place, and the entries that policy kept out.
    pub fn held(&self, rp: &RecoveryPoint) -> Result<Held> {
        let mut entries = self.rp_entries(rp.id)?;
        let skip = rp.policy.apply(&mut entries).skip;
        Ok(Held { entries, skip })
    }

    /// The tree the target holds at `rp`, entry by entry with their paths: `held` without
    /// what the policy kept out (renumbered), as a walk of the target finds it.
    pub fn admitted(&self, rp: &RecoveryPoint) -> Result<(Vec<Entry>, Vec<Vec<u8>>)> {
        let held = self.held(rp)?;
        let paths = crate::tree::entry::relative_paths(&held.entries);
        Ok(super::policy::without(&held.entries, &paths, &held.skip))
    }

    /// Makes `rp` the recovery point with the very list recovery point `same` stored (a job
    /// that changed nothing): the list file is linked, not written again.
    pub fn commit_same_list(&self, rp: &RecoveryPoint, same: RecoveryPointId) -> Result<()> {
        let (old, new) = (entries_name(same), entries_name(rp.id));
        match rustix::fs::linkat(
            &self.dir,
            old.as_str(),
            &self.dir,
            new.as_str(),
            rustix::fs::AtFlags::empty(),
        ) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e).ctx(|| format!("linking .mover-state/{new}")),
        }
        rustix::fs::fsync(&self.dir).ctx(|| "fsync of .mover-state".to_string())?;
        self.commit_record(rp)
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
        write_atomic(self.dir.as_fd(), &entries_name(rp.id), &raw)?;
        self.commit_record(rp)
    }

    /// Writes the record of `rp`, whose list is in place, and drops the previous list.
    fn commit_record(&self, rp: &RecoveryPoint) -> Result<()> {
        let old = self.recovery_point().ok().flatten();
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
