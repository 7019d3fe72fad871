//! The undo journal: how a job changes the destination in place and can still be rolled back to
//! the last recovery point.
//!
//! Before each destructive step the receiver appends a record saying how to undo it, with one
//! write(2) (so a process killed at any moment leaves the record of every step it began):
//! - `Created`: something new at a path. Undo: remove what is there.
//! - `Moved`: an item replaced or deleted was renamed into `journal/objs/<n>` (nothing is
//!   deleted during a job). Undo: rename it back.
//! - `Renamed`: an item was moved (staged for a rename). Undo: move it back.
//! - `PreImage`: a byte range about to be overwritten was first cloned (FICLONERANGE, where the
//!   file system shares extents) or copied into `journal/pre-<n>`; the record follows the copy.
//!   Undo: write the bytes back.
//! - `Resized`: a file's size is about to change. Undo: truncate to the old size.
//!
//! Beside the log, `inplace` names the inode of each file about to be written in place, and
//! how many log records came before (`InPlace`): revert writes a file's pre-images and old
//! size back only into that inode, so a file swapped since for a hard link to one outside the
//! root is not written through. It is a file of its own so that a release without it (a
//! rollback) still reads the log, and ignores it.
//!
//! Undoing every record in reverse order, then restoring metadata from the recovery point's
//! stored entry list, gives back the recovery point exactly (revert.rs). Every undo step is
//! idempotent and revert progress is logged, so a revert can itself be interrupted and rerun.
//! Metadata changes are not journaled: the entry list restores them.
//!
//! Durability against power loss: the log and pre-image files are fsynced at phase boundaries
//! (before any file data is written, before finalize); against a killed process the kernel's
//! page cache already orders each record before its step.

use super::state::{RecoveryPointId, State};
use crate::beneath::{self, split_parent};
use crate::durable::{ensure_dir, Log};
use crate::error::{show, Error, IoContext, Result};
use crate::wire::codec::{Dec, Enc};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

pub const JOURNAL_DIR: &str = "journal";
const LOG: &str = "log";
/// Beside the log: `InPlace` records.
const INPLACE_LOG: &str = "inplace";
pub const REVERT_LOG: &str = "revert";
/// Bound on one journaled path (a path is at most MAX_DEPTH components of MAX_NAME_LEN).
const MAX_JOURNAL_PATH: usize =
    crate::tree::entry::MAX_DEPTH * (crate::tree::entry::MAX_NAME_LEN + 1);
/// Pre-image copies are placed at this alignment so they can share extents with the file.
const CLONE_ALIGN: u64 = 4096;
/// Largest pre-image file before a new one is started.
const PRE_FILE_MAX: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    Header {
        base: RecoveryPointId,
    },
    Created {
        path: Vec<u8>,
    },
    Moved {
        path: Vec<u8>,
        obj: u64,
    },
    Renamed {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    PreImage {
        path: Vec<u8>,
        offset: u64,
        len: u64,
        file: u32,
        file_off: u64,
    },
    Resized {
        path: Vec<u8>,
        old_size: u64,
    },
}

impl Undo {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        match self {
            Undo::Header { base } => e.u8(1).u128(base.0),
            Undo::Created { path } => e.u8(2).bytes(path),
            Undo::Moved { path, obj } => e.u8(3).bytes(path).u64(*obj),
            Undo::Renamed { from, to } => e.u8(4).bytes(from).bytes(to),
            Undo::PreImage {
                path,
                offset,
                len,
                file,
                file_off,
            } => e
                .u8(5)
                .bytes(path)
                .u64(*offset)
                .u64(*len)
                .u32(*file)
                .u64(*file_off),
            Undo::Resized { path, old_size } => e.u8(6).bytes(path).u64(*old_size),
        };
        e.buf
    }

    pub fn decode(b: &[u8]) -> Result<Undo> {
        let mut d = Dec::new(b);
        let p = |d: &mut Dec<'_>| {
            d.bytes(MAX_JOURNAL_PATH, "journal path")
                .map(|x| x.to_vec())
        };
        let u = match d.u8()? {
            1 => Undo::Header {
                base: RecoveryPointId(d.u128()?),
            },
            2 => Undo::Created { path: p(&mut d)? },
            3 => Undo::Moved {
                path: p(&mut d)?,
                obj: d.u64()?,
            },
            4 => Undo::Renamed {
                from: p(&mut d)?,
                to: p(&mut d)?,
            },
            5 => Undo::PreImage {
                path: p(&mut d)?,
                offset: d.u64()?,
                len: d.u64()?,
                file: d.u32()?,
                file_off: d.u64()?,
            },
            6 => Undo::Resized {
                path: p(&mut d)?,
                old_size: d.u64()?,
            },
            t => {
                return Err(Error::Corrupt(format!(
                    "the undo journal holds an unknown record type {t} (a newer mover wrote it?); revert with the release that wrote it, or remove .mover-state/journal to drop the interrupted job"
                )))
            }
        };
        d.finish()?;
        Ok(u)
    }
}

/// The file at `path`, about to be written in place after the first `at` log records (its
/// pre-images and resize follow), or to have its owner or set-id bits changed in place
/// (grant.rs), is inode `ino` of the job's recovery point `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPlace {
    pub base: RecoveryPointId,
    pub at: u64,
    pub path: Vec<u8>,
    pub ino: u64,
    /// Its birth time ((0, 0) where the file system keeps none): an inode number freed by a
    /// deletion is often given to the next file made. None from a release without it.
    pub btime: Option<(i64, u32)>,
    /// The job gives this file a new owner or set-id bits in place (grant.rs), and a revert may
    /// give its old ones back; else it writes bytes into it.
    pub grant: bool,
}

impl InPlace {
    /// Says that this journal records every file whose owner or set-id bits the job changed
    /// in place (grant.rs): a revert gives them back only to those. A journal of an older
    /// release has none and is trusted as before.
    pub fn identity_marker(base: RecoveryPointId) -> InPlace {
        InPlace {
            base,
            at: 0,
            path: Vec::new(),
            ino: u64::MAX,
            btime: None,
            grant: false,
        }
    }

    pub fn is_identity_marker(&self) -> bool {
        self.path.is_empty() && self.ino == u64::MAX
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u128(self.base.0)
            .u64(self.at)
            .bytes(&self.path)
            .u64(self.ino);
        // Last: a release that reads records without them leaves such a record out (and
        // writes that file back unchecked, as before these records).
        if let Some((sec, nsec)) = self.btime {
            e.i64(sec).u32(nsec);
            if self.grant {
                e.u8(1);
            }
        }
        e.buf
    }

    pub fn decode(b: &[u8]) -> Result<InPlace> {
        let mut d = Dec::new(b);
        let mut r = InPlace {
            base: RecoveryPointId(d.u128()?),
            at: d.u64()?,
            path: d.bytes(MAX_JOURNAL_PATH, "journal path")?.to_vec(),
            ino: d.u64()?,
            btime: None,
            grant: false,
        };
        if d.remaining() > 0 {
            r.btime = Some((d.i64()?, d.u32()?));
        }
        if d.remaining() > 0 {
            if d.u8()? != 1 {
                return Err(Error::Corrupt(
                    "an in-place record of an unknown kind".into(),
                ));
            }
            r.grant = true;
        }
        d.finish()?;
        Ok(r)
    }
}

/// What the job last did at a path (from the journal, in record order).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Created,
    /// An item of the recovery point, which was at `from` there, was moved here; it left
    /// `from` at sequence number `left` (when it was staged).
    Placed {
        from: Vec<u8>,
        left: u64,
    },
    /// What was here was moved away (into the journal or the staging area).
    Gone,
}

/// Where the job has been: the latest event per path, with its sequence number. What a path
/// holds now is decided by the latest event on it or any ancestor (a later move of a directory
/// makes older events below it stale).
#[derive(Default)]
pub struct JobMap {
    /// Per path: the latest event's sequence number, the event, and the first event's
    /// sequence number there.
    events: HashMap<Vec<u8>, (u64, Event, u64)>,
    seq: u64,
    /// Staged path -> the recovery-point path it came from, and when it left it.
    staged: HashMap<Vec<u8>, (Vec<u8>, u64)>,
}

/// Where the item at a path came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Untouched by the job: the recovery point's item for this path.
    RecoveryPoint,
    /// Made by the job (its content is the job's).
    Job,
    /// A recovery-point item the job moved here from `from` (its own path, not an ancestor's).
    PlacedHere { from: Vec<u8> },
    /// Below a moved directory, or where something was moved away: not the recovery point's
    /// item for this path.
    Elsewhere,
}

/// What `JobMap::written` found at a path or an ancestor: the event's sequence number, the
/// length of the path it is on, and for a placement where the item was and when it left.
type Came<'a> = (u64, usize, Option<(&'a Vec<u8>, u64)>);

/// Renames `name` in `dir` to `to` in `into`, which must not exist: a journal object is never
/// replaced. Where the file system or kernel has no RENAME_NOREPLACE, checked first instead.
fn rename_new(
    dir: BorrowedFd<'_>,
    name: &[u8],
    into: BorrowedFd<'_>,
    to: &[u8],
) -> rustix::io::Result<()> {
    use rustix::fs::{renameat, renameat_with, RenameFlags};
    match renameat_with(dir, name, into, to, RenameFlags::NOREPLACE) {
        // No RENAME_NOREPLACE here (EINVAL), or no renameat2 at all (ENOSYS: an old kernel,
        // or a seccomp profile that does not know it).
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            match rustix::fs::statat(into, to, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(_) => Err(rustix::io::Errno::EXIST),
                Err(e) if e == rustix::io::Errno::NOENT => renameat(dir, name, into, to),
                Err(e) => Err(e),
            }
        }
        r => r,
    }
}

/// Most moves `JobMap::written` follows back (a placed item moves once; its ancestors may
/// have moved too).
const MAX_HOPS: usize = 64;

pub(super) fn ancestors_and_self(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let cuts = path
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'/')
        .map(|(i, _)| i)
        .chain(std::iter::once(path.len()));
    cuts.map(move |i| &path[..i])
}

impl JobMap {
    /// Room for `n` more paths.
    fn reserve(&mut self, n: usize) {
        self.events.reserve(n);
    }

    pub fn from_records(records: &[Undo]) -> JobMap {
        let mut m = JobMap::default();
        for r in records {
            m.apply(r);
        }
        m
    }

    fn note(&mut self, path: &[u8], e: Event) {
        self.seq += 1;
        match self.events.get_mut(path) {
            Some(v) => (v.0, v.1) = (self.seq, e),
            None => {
                self.events.insert(path.to_vec(), (self.seq, e, self.seq));
            }
        }
    }

    fn apply(&mut self, u: &Undo) {
        match u {
            Undo::Created { path } => self.note(path, Event::Created),
            Undo::Moved { path, .. } => self.note(path, Event::Gone),
            Undo::Renamed { from, to } => {
                if to.starts_with(STAGE_PREFIX.as_bytes()) {
                    self.note(from, Event::Gone);
                    self.staged.insert(to.clone(), (from.clone(), self.seq));
                } else {
                    let (origin, left) = self
                        .staged
                        .get(from)
                        .cloned()
                        .unwrap_or_else(|| (from.clone(), self.seq + 1));
                    self.note(from, Event::Gone);
                    self.note(to, Event::Placed { from: origin, left });
                }
            }
            Undo::Header { .. } | Undo::PreImage { .. } | Undo::Resized { .. } => {}
        }
    }

    /// Whether the job wrote bytes into the item now at `path`: created it (or an ancestor
    /// of it), or wrote it in place (`touched`), here or, for an item it moved here, where it
    /// was before. Moves are followed at most `MAX_HOPS` times, past which the answer is yes.
    ///
    /// Only the latest event per path is kept, with when the first was. Followed back through
    /// a move, a path's events after the move are not the item's: at the item's old path and
    /// above there were none before (only an item whose path and ancestors the job had not
    /// touched is moved); below it, a path whose first event came after the move had none
    /// either, and one whose latest event replaced an older one is answered yes.
    pub fn written(&self, touched: &HashSet<Vec<u8>>, path: &[u8]) -> bool {
        let mut p = path.to_vec();
        // Events from `bound` on happened after the item left `p` (the Gone it left is
        // `bound` itself); `moved` is the length of the item's own old path within `p`.
        let (mut bound, mut moved) = (u64::MAX, 0);
        for _ in 0..MAX_HOPS {
            if touched.contains(&p) {
                return true;
            }
            let mut latest: Option<Came<'_>> = None;
            for q in ancestors_and_self(&p) {
                let Some((s, e, first)) = self.events.get(q) else {
                    continue;
                };
                if *s >= bound {
                    // Nothing here before the item left, or unknown (replaced).
                    if q.len() <= moved || *first >= bound {
                        continue;
                    }
                    return true;
                }
                let found = match e {
                    Event::Created => (*s, q.len(), None),
                    Event::Placed { from, left } => (*s, q.len(), Some((from, *left))),
                    Event::Gone => continue,
                };
                if latest.is_none_or(|l| l.0 < found.0) {
                    latest = Some(found);
                }
            }
            match latest {
                None => return false,
                Some((_, _, None)) => return true,
                Some((_, at, Some((from, left)))) => {
                    let mut before = from.clone();
                    before.extend_from_slice(&p[at..]);
                    (p, bound, moved) = (before, left, from.len());
                }
            }
        }
        true
    }

    /// Whether the item at `path` is the one the job created there (the latest event on the
    /// path or an ancestor is the creation of the path itself).
    pub fn created_here(&self, path: &[u8]) -> bool {
        let latest = ancestors_and_self(path)
            .filter_map(|p| {
                self.events
                    .get(p)
                    .map(|(s, e, _)| (*s, p.len() == path.len(), e))
            })
            .max_by_key(|x| x.0);
        matches!(latest, Some((_, true, Event::Created)))
    }

    /// Where the item now at `path` came from.
    pub fn origin(&self, path: &[u8]) -> Origin {
        let latest = ancestors_and_self(path)
            .filter_map(|p| {
                self.events
                    .get(p)
                    .map(|(s, e, _)| (*s, p.len() == path.len(), e))
            })
            .max_by_key(|x| x.0);
        match latest {
            None => Origin::RecoveryPoint,
            Some((_, _, Event::Created)) => Origin::Job,
            Some((_, true, Event::Placed { from, .. })) => {
                Origin::PlacedHere { from: from.clone() }
            }
            Some(_) => Origin::Elsewhere,
        }
    }
}

const STAGE_PREFIX: &str = ".mover-state/journal/stage/";

/// Root-relative path of journal object `n`.
pub fn obj_path(n: u64) -> Vec<u8> {
    format!(".mover-state/{JOURNAL_DIR}/objs/{n}").into_bytes()
}

fn stage_path(n: u64) -> Vec<u8> {
    format!("{STAGE_PREFIX}{n}").into_bytes()
}

/// What an existing journal directory holds, read without changing it.
pub struct Existing {
    pub base: Option<RecoveryPointId>,
    pub records: Vec<Undo>,
    /// The `inplace` records of this journal's base (none from a release without them).
    pub in_place: Vec<InPlace>,
    pub reverting: bool,
}

/// The journal directory of `state`, if there is one.
fn open_existing(state: &State) -> Result<Option<OwnedFd>> {
    match rustix::fs::openat(
        &state.dir,
        JOURNAL_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
        Err(e) => Err(e).ctx(|| "opening .mover-state/journal".to_string()),
    }
}

/// Bytes of the log read for its header record (an Undo::Header is a few dozen).
const HEADER_READ: u64 = 4096;

/// The recovery point the job of `state`'s journal started from (its header record), read
/// without the rest of the log, which a large job makes hundreds of MB: every Hello's answer
/// says whether a job is pending, and a session has a Hello per worker. None with no journal,
/// or one without a valid header (garbage, as `read_existing` says).
pub fn read_base(state: &State) -> Result<Option<RecoveryPointId>> {
    let Some(dir) = open_existing(state)? else {
        return Ok(None);
    };
    let Some(head) = crate::durable::read_head_opt(dir.as_fd(), LOG, HEADER_READ)? else {
        return Ok(None);
    };
    let (recs, _) = crate::durable::parse_records(&head);
    Ok(match recs.first().map(|r| Undo::decode(r)) {
        Some(Ok(Undo::Header { base })) => Some(base),
        _ => None,
    })
}

/// Reads the journal of `state`, if there is one. A journal without a valid header is garbage
/// left by a crash while it was being created or dropped.
pub fn read_existing(state: &State) -> Result<Option<Existing>> {
    let Some(dir) = open_existing(state)? else {
        return Ok(None);
    };
    let raw = crate::durable::read_opt(dir.as_fd(), LOG)?.unwrap_or_default();
    let (recs, _) = crate::durable::parse_records(&raw);
    let records = recs
        .into_iter()
        .map(Undo::decode)
        .collect::<Result<Vec<_>>>()
        .map_err(|e| {
            Error::Corrupt(format!(
                "the undo journal .mover-state/{JOURNAL_DIR}/{LOG} cannot be read ({e}): the \
                 interrupted job cannot be undone or resumed; {}",
                super::state::CORRUPT_STATE_ADVICE
            ))
        })?;
    let base = match records.first() {
        Some(Undo::Header { base }) => Some(*base),
        _ => None,
    };
    let reverting =
        crate::durable::read_opt(dir.as_fd(), REVERT_LOG)?.is_some_and(|r| !r.is_empty());
    let in_place = match base {
        Some(b) => read_in_place(dir.as_fd(), b, records.len() as u64)?.0,
        None => Vec::new(),
    };
    Ok(Some(Existing {
        base,
        records,
        in_place,
        reverting,
    }))
}

/// The `inplace` records of base `base` that follow the first `logged` log records at most,
/// in log order. Any other is left out: one a power loss kept while it lost the log's tail
/// (records appended since may have reused its place), or one this release cannot read (the
/// revert then writes that file back unchecked, as before these records). Also says whether
/// any record was left out.
fn read_in_place(
    dir: BorrowedFd<'_>,
    base: RecoveryPointId,
    logged: u64,
) -> Result<(Vec<InPlace>, bool)> {
    let raw = crate::durable::read_opt(dir, INPLACE_LOG)?.unwrap_or_default();
    let mut out = Vec::new();
    let all = crate::durable::parse_records(&raw).0;
    let n = all.len();
    for r in all {
        match InPlace::decode(r) {
            Ok(r)
                if r.base == base
                    && r.at <= logged
                    && out.last().is_none_or(|l: &InPlace| l.at <= r.at) =>
            {
                out.push(r)
            }
            _ => {}
        }
    }
    let left_out = out.len() != n;
    Ok((out, left_out))
}

/// Removes the journal directory: the log first, so a crash halfway leaves a headerless (garbage)
/// journal rather than one that looks live.
pub fn discard(state: &State) -> Result<()> {
    match rustix::fs::openat(
        &state.dir,
        JOURNAL_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(dir) => {
            match rustix::fs::unlinkat(&dir, LOG, AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(e).ctx(|| "removing the journal log".to_string()),
            }
            rustix::fs::fsync(&dir).ctx(|| "fsync of the journal".to_string())?;
        }
        Err(e) if e == rustix::io::Errno::NOENT => return Ok(()),
        Err(e) => return Err(e).ctx(|| "opening .mover-state/journal".to_string()),
    }
    crate::beneath::remove_any(state.dir.as_fd(), JOURNAL_DIR.as_bytes(), 0)
        .ctx(|| "removing the old journal".to_string())?;
    Ok(())
}

/// The journal of the job in progress, open for appending.
pub struct Journal {
    root: OwnedFd,
    dir: OwnedFd,
    objs: OwnedFd,
    stage: OwnedFd,
    log: Log,
    /// Records in the log.
    logged: u64,
    /// `InPlace` records.
    inplace: Log,
    base: RecoveryPointId,
    next_obj: u64,
    pre: Option<(OwnedFd, u32, u64)>,
    next_pre: u32,
    /// Files written in place by this or an interrupted earlier session of the job.
    pub touched: HashSet<Vec<u8>>,
    /// What the job did where, kept current as this session journals.
    pub map: JobMap,
    /// Ranges earlier sessions of the job wrote and flushed, per path and version (resume.rs).
    pub durable: super::resume::Durable,
    /// Ranges of files updated in place whose old bytes the journal holds, per path (merged).
    pub preimaged: HashMap<Vec<u8>, Vec<(u64, u64)>>,
    /// `Created` records of items made later (small files the workers create), written
    /// together by `flush_deferred` before any of them is made.
    deferred: Vec<Undo>,
    /// The job guards identity (grant.rs): decided when the journal was made (other users
    /// could reach the target), kept by its marker for every session and for a revert.
    pub guarded: bool,
}

impl Journal {
    /// Whether the job wrote bytes into the item now at `path` (`JobMap::written`).
    pub fn written_by_job(&self, path: &[u8]) -> bool {
        self.map.written(&self.touched, path)
    }

    /// Opens the journal for a job based on recovery point `base`, continuing an interrupted
    /// job's journal if there is one (the caller has discarded journals of other bases).
    pub fn open(
        root: BorrowedFd<'_>,
        state: &State,
        base: RecoveryPointId,
        guard: bool,
    ) -> Result<Journal> {
        let dir = ensure_dir(state.dir.as_fd(), JOURNAL_DIR)?;
        let objs = ensure_dir(dir.as_fd(), "objs")?;
        let stage = ensure_dir(dir.as_fd(), "stage")?;
        let (mut log, raw) = Log::open(dir.as_fd(), LOG)?;
        let records = raw
            .iter()
            .map(|r| Undo::decode(r))
            .collect::<Result<Vec<_>>>()?;
        let mut logged = records.len() as u64;
        match records.first() {
            None => {
                // A new job: `inplace` records of an earlier one (a discard cut short) go. Its
                // identity marker (if it guards) is durable before the header: a journal with
                // a header and without it is one that does not guard, or an older release's,
                // whose owner changes a revert trusts.
                match rustix::fs::unlinkat(&dir, INPLACE_LOG, AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(e).ctx(|| "removing an old journal file".to_string()),
                }
                if guard {
                    let (mut inplace, _) = Log::open(dir.as_fd(), INPLACE_LOG)?;
                    inplace.append(&InPlace::identity_marker(base).encode())?;
                    inplace.sync()?;
                    rustix::fs::fsync(&dir).ctx(|| "fsync of the journal".to_string())?;
                }
                log.append(&Undo::Header { base }.encode())?;
                log.sync()?;
                logged = 1;
            }
            Some(Undo::Header { base: b }) if *b == base => {}
            Some(_) => {
                return Err(Error::Corrupt(
                    "the undo journal belongs to another recovery point".into(),
                ))
            }
        }
        let mut next_obj = 0u64;
        let mut next_pre = 0u32;
        let mut touched = HashSet::new();
        let mut preimaged: HashMap<Vec<u8>, Vec<(u64, u64)>> = HashMap::new();
        let mut map = JobMap::default();
        let bad =
            || Error::Limit("the undo journal's object numbers are exhausted; revert it".into());
        for r in &records {
            map.apply(r);
            match r {
                Undo::Moved { obj, .. } => {
                    next_obj = next_obj.max(obj.checked_add(1).ok_or_else(bad)?)
                }
                Undo::Renamed { to, .. } => {
                    // Only staged names are numbered; a rename's destination in the tree is not.
                    let n = to
                        .strip_prefix(STAGE_PREFIX.as_bytes())
                        .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u64>().ok());
                    if let Some(n) = n {
                        next_obj = next_obj.max(n.checked_add(1).ok_or_else(bad)?);
                    }
                }
                Undo::PreImage {
                    path,
                    file,
                    offset,
                    len,
                    ..
                } => {
                    next_pre = next_pre.max(file.checked_add(1).ok_or_else(bad)?);
                    touched.insert(path.clone());
                    preimaged
                        .entry(path.clone())
                        .or_default()
                        .push((*offset, *len));
                }
                Undo::Resized { path, .. } => {
                    touched.insert(path.clone());
                }
                _ => {}
            }
        }
        for r in preimaged.values_mut() {
            *r = super::resume::merge(std::mem::take(r));
        }
        // A power loss can keep a move into the journal and lose its record (renames are
        // committed within seconds, the log's appended bytes at write-back): numbers already
        // on disk are not taken again either.
        for d in [&objs, &stage] {
            for name in crate::beneath::dir_names(d.as_fd()).ctx(|| "listing the journal".into())? {
                if let Some(n) = std::str::from_utf8(&name)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    next_obj = next_obj.max(n.checked_add(1).ok_or_else(bad)?);
                }
            }
        }
        let durable = super::resume::read_logs(dir.as_fd())?;
        // Only the records that still fit the log are kept: a resumed session's own follow.
        let (kept, left_out) = read_in_place(dir.as_fd(), base, logged)?;
        if left_out {
            let mut body = Vec::new();
            for r in &kept {
                crate::durable::frame_record(&r.encode(), &mut body);
            }
            crate::durable::write_atomic(dir.as_fd(), INPLACE_LOG, &body)?;
        }
        let (inplace, _) = Log::open(dir.as_fd(), INPLACE_LOG)?;
        let guarded = kept.iter().any(InPlace::is_identity_marker);
        let root = rustix::io::fcntl_dupfd_cloexec(root, 0)
            .ctx(|| "dup of the destination root".to_string())?;
        Ok(Journal {
            root,
            dir,
            objs,
            stage,
            log,
            logged,
            inplace,
            base,
            next_obj,
            pre: None,
            next_pre,
            touched,
            map,
            durable,
            preimaged,
            deferred: Vec::new(),
            guarded,
        })
    }

    /// The journal directory, for the workers' logs of durable ranges.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    fn append(&mut self, u: &Undo) -> Result<()> {
        self.log.append(&u.encode())?;
        self.logged += 1;
        self.map.apply(u);
        Ok(())
    }

    fn take_obj(&mut self) -> Result<u64> {
        let n = self.next_obj;
        self.next_obj = n.checked_add(1).ok_or_else(|| {
            Error::Limit("the undo journal's object numbers are exhausted; revert it".into())
        })?;
        Ok(n)
    }

    /// Records that `path` is about to be created.
    pub fn created(&mut self, path: &[u8]) -> Result<()> {
        self.append(&Undo::Created {
            path: path.to_vec(),
        })
    }

    /// Journals that `path` will be created after `flush_deferred` (by a worker): one write for
    /// all of them instead of one per file. Nothing may be done at `path` before the flush;
    /// whatever stood there must already be moved away (its record comes first, so undoing
    /// newest-first removes the new item before putting the old one back).
    pub fn created_later(&mut self, path: &[u8]) {
        self.deferred.push(Undo::Created {
            path: path.to_vec(),
        });
    }

    /// Writes the deferred records, in bounded batches of one write(2) each.
    pub fn flush_deferred(&mut self) -> Result<()> {
        /// Records per write: bounds the buffer (a record is at most a path and a few bytes).
        const BATCH: usize = 4096;
        let deferred = std::mem::take(&mut self.deferred);
        // Room for them all at once: growing the map record by record rehashes it a dozen
        // times for a 20,000-file job (280 of the receiver's 5,200 page faults; no time
        // measurable on its own).
        self.map.reserve(deferred.len());
        for chunk in deferred.chunks(BATCH) {
            let bodies: Vec<Vec<u8>> = chunk.iter().map(Undo::encode).collect();
            self.log.append_many(bodies.iter().map(Vec::as_slice))?;
            self.logged += bodies.len() as u64;
            for u in chunk {
                self.map.apply(u);
            }
        }
        Ok(())
    }

    /// Moves `name` in `dir` (the item at `path`) into the journal instead of deleting it. A
    /// non-directory the job itself made (an unfinished copy from an interrupted session) is
    /// simply deleted: its `Created` record already undoes it, and keeping it would only fill
    /// the disk with every attempt's partial files.
    pub fn move_away(&mut self, dir: BorrowedFd<'_>, name: &[u8], path: &[u8]) -> Result<u64> {
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(e) if e == rustix::io::Errno::NOENT => return Ok(0),
            Err(e) => return Err(e).ctx(|| format!("stat {}", show(path))),
        };
        if self.map.origin(path) == Origin::Job
            && rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory
        {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())
                .ctx(|| format!("removing the job's unfinished {}", show(path)))?;
            self.map.note(path, Event::Gone);
            return Ok(1);
        }
        let obj = self.take_obj()?;
        self.append(&Undo::Moved {
            path: path.to_vec(),
            obj,
        })?;
        rename_new(dir, name, self.objs.as_fd(), obj.to_string().as_bytes())
            .ctx(|| format!("moving {} into the undo journal", show(path)))?;
        Ok(1)
    }

    /// Moves the item at `path` into the staging area (for a rename); returns its staged path,
    /// or None if the recovery point's item is not there (gone, or an interrupted session of
    /// this job already moved it or put something else there): hints are advice, and the entry
    /// is then sent whole.
    pub fn stage(&mut self, path: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.map.origin(path) != Origin::RecoveryPoint {
            return Ok(None);
        }
        let (p, n) = split_parent(path);
        let Ok(dir) = beneath::open_dir(self.root.as_fd(), p) else {
            return Ok(None);
        };
        if rustix::fs::statat(&dir, n, AtFlags::SYMLINK_NOFOLLOW).is_err() {
            return Ok(None);
        }
        let k = self.take_obj()?;
        let to = stage_path(k);
        self.append(&Undo::Renamed {
            from: path.to_vec(),
            to: to.clone(),
        })?;
        rename_new(dir.as_fd(), n, self.stage.as_fd(), k.to_string().as_bytes())
            .ctx(|| format!("staging {} for a rename", show(path)))?;
        Ok(Some(to))
    }

    /// Moves a staged item to `name` in `dir` (its new place `path`), which must be free.
    pub fn place(
        &mut self,
        staged: &[u8],
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
    ) -> Result<()> {
        let k = split_parent(staged).1;
        self.append(&Undo::Renamed {
            from: staged.to_vec(),
            to: path.to_vec(),
        })?;
        rustix::fs::renameat(&self.stage, k, dir, name)
            .ctx(|| format!("renaming into place at {}", show(path)))
    }

    /// Records which inode the file at `path`, about to be written in place, is (`InPlace`).
    /// Made durable with the log (`sync`), before any byte is written in place.
    pub fn in_place(&mut self, path: &[u8], id: (u64, (i64, u32))) -> Result<()> {
        self.in_place_record(path, id, false)
    }

    /// Records that the file at `path`, inode `id`, gets a new owner or set-id bits in place
    /// (grant.rs); made durable with the log (`sync`) before that change.
    pub fn granted(&mut self, path: &[u8], id: (u64, (i64, u32))) -> Result<()> {
        self.in_place_record(path, id, true)
    }

    fn in_place_record(
        &mut self,
        path: &[u8],
        (ino, btime): (u64, (i64, u32)),
        grant: bool,
    ) -> Result<()> {
        let r = InPlace {
            base: self.base,
            at: self.logged,
            path: path.to_vec(),
            ino,
            btime: Some(btime),
            grant,
        };
        self.inplace.append(&r.encode())
    }

    /// Records that file `path` is about to be resized from `old_size`.
    pub fn resized(&mut self, path: &[u8], old_size: u64) -> Result<()> {
        self.touched.insert(path.to_vec());
        self.append(&Undo::Resized {
            path: path.to_vec(),
            old_size,
        })
    }

    /// Saves bytes [offset, offset+len) of the open file `fd` (at `path`) before they are
    /// overwritten.
    pub fn preimage(
        &mut self,
        fd: BorrowedFd<'_>,
        path: &[u8],
        offset: u64,
        len: u64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.pre.as_ref().is_none_or(|p| p.2 >= PRE_FILE_MAX) {
            // `sync` reaches only the current file: a full one is made durable as it is left,
            // or the data overwriting what it saved could reach the disk before it does.
            if let Some((full, _, _)) = self.pre.take() {
                rustix::fs::fsync(&full).ctx(|| "fsync of a pre-image file".to_string())?;
            }
            let n = self.next_pre;
            self.next_pre += 1;
            let f = rustix::fs::openat(
                &self.dir,
                format!("pre-{n}").as_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o600),
            )
            .ctx(|| "creating a pre-image file in the journal".to_string())?;
            self.pre = Some((f, n, 0));
        }
        let Some((pre, n, at)) = self.pre.as_mut() else {
            unreachable!("pre-image file opened above")
        };
        let dest = at.div_ceil(CLONE_ALIGN) * CLONE_ALIGN;
        copy_range(fd, offset, pre.as_fd(), dest, len)
            .ctx(|| format!("saving a pre-image of {}", show(path)))?;
        *at = dest + len;
        let file = *n;
        self.touched.insert(path.to_vec());
        self.append(&Undo::PreImage {
            path: path.to_vec(),
            offset,
            len,
            file,
            file_off: dest,
        })
    }

    /// Makes every record and pre-image so far durable.
    pub fn sync(&mut self) -> Result<()> {
        if let Some((pre, _, _)) = &self.pre {
            rustix::fs::fsync(pre).ctx(|| "fsync of a pre-image file".to_string())?;
        }
        rustix::fs::fsync(&self.objs).ctx(|| "fsync of the journal".to_string())?;
        rustix::fs::fsync(&self.stage).ctx(|| "fsync of the journal".to_string())?;
        // The names of the pre-image files (and the log's) are entries of the journal itself.
        rustix::fs::fsync(&self.dir).ctx(|| "fsync of the journal".to_string())?;
        self.inplace.sync()?;
        self.log.sync()
    }
}

/// Copies a byte range between files: shared extents where the file system can (btrfs, XFS with
/// reflink), else an in-kernel copy, else read/write.
pub fn copy_range(
    src: BorrowedFd<'_>,
    src_off: u64,
    dst: BorrowedFd<'_>,
    dst_off: u64,
    len: u64,
) -> std::io::Result<()> {
    if clone_range(src, src_off, dst, dst_off, len).is_ok() {
        return Ok(());
    }
    let (mut so, mut dof, mut left) = (src_off, dst_off, len);
    while left > 0 {
        match rustix::fs::copy_file_range(
            src,
            Some(&mut so),
            dst,
            Some(&mut dof),
            left.min(1 << 30) as usize,
        ) {
            Ok(0) => break, // past the source's end: the rest reads as zeros (sparse)
            Ok(n) => left -= n as u64,
            Err(e)
                if left == len
                    && matches!(
                        e,
                        rustix::io::Errno::XDEV
                            | rustix::io::Errno::INVAL
                            | rustix::io::Errno::NOSYS
                            | rustix::io::Errno::OPNOTSUPP
                    ) =>
            {
                return copy_by_hand(src, src_off, dst, dst_off, len);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if left > 0 {
        // A short source: extend the copy with zeros so its length is exact.
        let end = dst_off + len;
        let st = rustix::fs::fstat(dst)?;
        if (st.st_size as u64) < end {
            rustix::fs::ftruncate(dst, end)?;
        }
    }
    Ok(())
}

fn copy_by_hand(
    src: BorrowedFd<'_>,
    src_off: u64,
    dst: BorrowedFd<'_>,
    dst_off: u64,
    len: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; (len as usize).min(1 << 20)];
    let mut done = 0u64;
    while done < len {
        let want = ((len - done) as usize).min(buf.len());
        let n = rustix::io::pread(src, &mut buf[..want], src_off + done)?;
        if n == 0 {
            buf[..want].fill(0);
        }
        let n = if n == 0 { want } else { n };
        let mut w = 0;
        while w < n {
            w += rustix::io::pwrite(dst, &buf[w..n], dst_off + done + w as u64)?;
        }
        done += n as u64;
    }
    Ok(())
}

/// `FICLONERANGE`: makes [dst_off, +len) of `dst` share the extents of `src`'s range.
fn clone_range(
    src: BorrowedFd<'_>,
    src_off: u64,
    dst: BorrowedFd<'_>,
    dst_off: u64,
    len: u64,
) -> std::io::Result<()> {
    #[repr(C)]
    struct FileCloneRange {
        src_fd: i64,
        src_offset: u64,
        src_length: u64,
        dest_offset: u64,
    }
    const FICLONERANGE: libc::c_ulong = 0x4020_940d;
    let arg = FileCloneRange {
        src_fd: src.as_raw_fd() as i64,
        src_offset: src_off,
        src_length: len,
        dest_offset: dst_off,
    };
    // SAFETY: FICLONERANGE reads a `struct file_clone_range` (this layout, from linux/fs.h) through
    // the pointer during the call only; both fds are open for the call's duration.
    let r = unsafe {
        libc::ioctl(
            dst.as_raw_fd(),
            FICLONERANGE as _,
            &arg as *const FileCloneRange,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_records_round_trip() {
        let all = [
            Undo::Header {
                base: RecoveryPointId(7),
            },
            Undo::Created {
                path: b"a/b".to_vec(),
            },
            Undo::Moved {
                path: b"x".to_vec(),
                obj: 3,
            },
            Undo::Renamed {
                from: b"a".to_vec(),
                to: stage_path(4),
            },
            Undo::PreImage {
                path: b"f".to_vec(),
                offset: 4096,
                len: 10,
                file: 1,
                file_off: 8192,
            },
            Undo::Resized {
                path: b"f".to_vec(),
                old_size: 99,
            },
        ];
        for u in all {
            assert_eq!(Undo::decode(&u.encode()).unwrap(), u);
        }
        assert!(Undo::decode(&[9]).is_err());
        let mut r = InPlace {
            base: RecoveryPointId(5),
            at: 3,
            path: b"d/f".to_vec(),
            ino: 77,
            btime: None,
            grant: false,
        };
        assert_eq!(InPlace::decode(&r.encode()).unwrap(), r);
        assert!(InPlace::decode(&r.encode()[1..]).is_err());
        r.btime = Some((1_700_000_000, 5));
        assert_eq!(InPlace::decode(&r.encode()).unwrap(), r);
        r.grant = true;
        assert_eq!(InPlace::decode(&r.encode()).unwrap(), r);
        let m = InPlace::identity_marker(RecoveryPointId(5));
        assert!(InPlace::decode(&m.encode()).unwrap().is_identity_marker());
    }

    #[test]
    fn in_place_records_past_the_log_or_of_another_base_are_left_out() {
        let t = tempfile::tempdir().unwrap();
        let dir =
            rustix::fs::open(t.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let rec = |base, at| InPlace {
            base: RecoveryPointId(base),
            at,
            path: b"f".to_vec(),
            ino: at,
            btime: None,
            grant: false,
        };
        // 9: kept while the log's tail was lost; 3 of base 2: another job's.
        let mut body = Vec::new();
        for r in [rec(1, 1), rec(1, 9), rec(2, 3), rec(1, 4)] {
            crate::durable::frame_record(&r.encode(), &mut body);
        }
        body.extend_from_slice(b"torn");
        std::fs::write(t.path().join(INPLACE_LOG), &body).unwrap();
        let (kept, left_out) = read_in_place(dir.as_fd(), RecoveryPointId(1), 5).unwrap();
        assert_eq!(kept, [rec(1, 1), rec(1, 4)]);
        assert!(left_out);
    }

    #[test]
    fn the_base_read_from_the_header_alone_is_the_whole_journals() {
        let t = tempfile::tempdir().unwrap();
        let root = crate::beneath::open_root(t.path(), "test root").unwrap();
        std::fs::create_dir(t.path().join(".mover-state")).unwrap();
        let state = State::find(root.as_fd()).unwrap().unwrap();
        assert_eq!(read_base(&state).unwrap(), None, "no journal");
        let mut j = Journal::open(root.as_fd(), &state, RecoveryPointId(42), true).unwrap();
        // A log far longer than what is read for its header.
        for k in 0..2000 {
            j.created(format!("dir/file-{k}").as_bytes()).unwrap();
        }
        j.sync().unwrap();
        drop(j);
        let whole = read_existing(&state).unwrap().unwrap();
        assert!(whole.records.len() > 2000);
        assert_eq!(read_base(&state).unwrap(), whole.base);
        assert_eq!(whole.base, Some(RecoveryPointId(42)));
        // Garbage where the header should be: no base, as the whole read says.
        std::fs::write(t.path().join(".mover-state/journal/log"), b"garbage").unwrap();
        assert_eq!(read_base(&state).unwrap(), None);
        assert_eq!(read_existing(&state).unwrap().unwrap().base, None);
    }
}

#[cfg(test)]
mod map_tests {
    use super::*;

    fn p(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn origins_follow_the_latest_event_on_a_path_or_its_ancestors() {
        let mut m = JobMap::default();
        m.apply(&Undo::Created { path: p("X/f") });
        assert_eq!(m.origin(b"X/f"), Origin::Job);
        assert_eq!(m.origin(b"X"), Origin::RecoveryPoint);
        // X moves away and Z takes its place: X/f is now the recovery point's Z/f.
        m.apply(&Undo::Renamed {
            from: p("X"),
            to: stage_path(0),
        });
        m.apply(&Undo::Renamed {
            from: p("Z"),
            to: stage_path(1),
        });
        m.apply(&Undo::Renamed {
            from: stage_path(1),
            to: p("X"),
        });
        assert_eq!(m.origin(b"X"), Origin::PlacedHere { from: p("Z") });
        assert_eq!(m.origin(b"X/f"), Origin::Elsewhere);
        assert_eq!(m.origin(b"Z"), Origin::Elsewhere);
        assert_eq!(m.origin(b"Y"), Origin::RecoveryPoint);
        m.apply(&Undo::Moved {
            path: p("Y"),
            obj: 2,
        });
        m.apply(&Undo::Created { path: p("Y") });
        assert_eq!(m.origin(b"Y/g"), Origin::Job);
    }

    /// A file the job wrote and then moved with its directory, or renamed itself, is still
    /// the job's bytes (a resumed session then trusts it only if it was logged finished).
    #[test]
    fn what_the_job_wrote_is_followed_through_later_renames() {
        let mut m = JobMap::default();
        let mut touched = HashSet::new();
        touched.insert(p("f"));
        m.apply(&Undo::Created { path: p("X/new") });
        for (k, (from, to)) in [("X", "Y"), ("f", "g")].into_iter().enumerate() {
            m.apply(&Undo::Renamed {
                from: p(from),
                to: stage_path(k as u64),
            });
            m.apply(&Undo::Renamed {
                from: stage_path(k as u64),
                to: p(to),
            });
        }
        assert!(
            m.written(&touched, b"Y/new"),
            "created, then its directory moved"
        );
        assert!(m.written(&touched, b"g"), "written in place, then renamed");
        assert!(
            !m.written(&touched, b"Y/old"),
            "a recovery-point file moved along"
        );
        assert!(!m.written(&touched, b"h"), "untouched");
        m.apply(&Undo::Created { path: p("X") });
        assert!(
            m.written(&touched, b"X/any"),
            "inside a directory the job made"
        );
        assert!(
            !m.written(&touched, b"Y/old"),
            "a new directory where the moved one was is not the moved one's"
        );
        m.apply(&Undo::Created { path: p("X/old") });
        assert!(
            !m.written(&touched, b"Y/old"),
            "a file made later at the moved one's old path is not the moved one"
        );
        m.apply(&Undo::Created { path: p("X/new") });
        assert!(
            m.written(&touched, b"Y/new"),
            "its own older record was replaced by a later one: counted as written"
        );
    }
}
