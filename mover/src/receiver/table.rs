//! What a receiver's workers need to know about a session, built once by the control thread
//! before any data frame is accepted and then shared: read-only but for atomic counters and
//! the per-file claims (claims.rs), whose lock is taken once per Data frame.

use crate::error::{show, Error, IoContext, Result};
use crate::tree::entry::{Entry, EntryKind};
use crate::units::EntryId;
use crate::wire::message::is_inline;
use crate::wire::message::Need;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct RecvTable {
    pub root: OwnedFd,
    pub entries: Vec<Entry>,
    pub paths: Vec<Vec<u8>>,
    /// What data this session transfers for each entry.
    pub need: Vec<Need>,
    /// Ranges of files updated in place (`Need::Delta`) or resumed (`Need::Rest`), sorted and
    /// disjoint.
    pub deltas: HashMap<u32, Vec<(u64, u64)>>,
    pub owners: bool,
    /// Directories created by this session's apply phase (no set-gid parent can be involved).
    pub fresh_dir: Vec<bool>,
    /// The file each needed large file must be when a worker opens it (`Applied::files`).
    pub files: HashMap<u32, FileId>,
    /// Data bytes still to be written per needed large file (from the sender's Expect list).
    /// The worker whose write brings a file to zero sets its metadata: the file is finished.
    pub remaining: HashMap<u32, AtomicU64>,
    /// The bytes of each large file that Data frames have claimed: none is accepted twice.
    pub claims: super::claims::Claims,
    /// The announced byte count per large file.
    pub expected: HashMap<u32, u64>,
    /// Data frames the workers may still accept (all workers together), from the need list
    /// and the Expect totals.
    pub frame_budget: AtomicU64,
    /// Owner the kernel gives files this process creates in a fresh directory.
    pub creator: (u32, u32),
    pub umask: u32,
    /// Entries the replica policy keeps out (not created, no metadata).
    pub skip: Vec<bool>,
    /// The job's journal directory: workers log the ranges they made durable there.
    pub journal: OwnedFd,
    /// Flush and log a large file's written ranges every this many bytes (resume.rs).
    pub checkpoint_bytes: u64,
    /// Files the workers compared with their entries when they finished them (checked.rs).
    pub checked: super::checked::Checked,
    /// The target's write-back rounds: when a finished file is durable (writeback.rs).
    pub syncs: std::sync::Arc<super::writeback::SyncRounds>,
    /// Finished files the workers ended with unlogged, by worker index (`log_held`).
    pub held: std::sync::Mutex<Vec<(usize, super::resume::Finished)>>,
}

/// One file of the target, as a stat names it: what a path must still lead to when the
/// session opens it again. A local writer in a standalone receiver's target could otherwise
/// swap a file the job is writing for a hard link to one outside the root between two opens,
/// and the job would write into (and chown) that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// None at a write place: its mount of the shared target numbers devices its own way
    /// (inode numbers are the file system's).
    pub dev: Option<u64>,
    pub ino: u64,
}

impl FileId {
    pub fn of(st: &rustix::fs::Stat) -> FileId {
        FileId {
            dev: Some(st.st_dev),
            ino: st.st_ino,
        }
    }

    /// Whether `fd`, just opened at `path`, is this file.
    pub fn is_at(self, fd: BorrowedFd<'_>, path: &[u8]) -> Result<bool> {
        let st = rustix::fs::fstat(fd).ctx(|| format!("stat of {}", show(path)))?;
        Ok(st.st_ino == self.ino && self.dev.is_none_or(|d| d == st.st_dev))
    }

    /// Ok if `fd`, just opened at `path`, is this file.
    pub fn check(self, fd: BorrowedFd<'_>, path: &[u8]) -> Result<()> {
        if !self.is_at(fd, path)? {
            return Err(Error::Verify(format!(
                "{} was replaced while this job wrote it: it is no longer the file the job \
                 created or checked (another writer in the target?); nothing was written to \
                 the file found there",
                show(path)
            )));
        }
        Ok(())
    }
}

/// Longest a failed session waits for the syncfs that lets it log its workers' held files.
pub const HELD_SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl RecvTable {
    /// Logs the finished files the workers ended with unlogged, once a syncfs begun after
    /// they ended completes (within `HELD_SYNC_WAIT`, on a thread of its own: a stuck device
    /// must not hold the session's error). For a session that fails after some worker ended:
    /// a resumed job then does not send those files again. Nothing when a write-back round
    /// failed, and each log is written only while `may_write` (a write place's fence) allows.
    pub fn log_held(&self, may_write: &dyn Fn() -> bool) {
        let none = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        if none || self.syncs.failed() {
            return;
        }
        // Through the session's own open file, which has had no syncfs (the recovery point's
        // comes after this is no longer asked for): it reports every write-back error since
        // the session opened the root, even one another process's syncfs saw first. Not on a
        // full disk, whose revert syncs through this file too.
        let Ok(root) = rustix::io::fcntl_dupfd_cloexec(&self.root, 0) else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("mover-held-sync".into())
            .spawn(move || {
                let _ = tx.send(rustix::fs::syncfs(&root));
            });
        if spawned.is_err() || !matches!(rx.recv_timeout(HELD_SYNC_WAIT), Ok(Ok(()))) {
            return;
        }
        self.log_held_synced(may_write);
    }

    /// `log_held` once a syncfs begun after the workers ended has completed.
    pub fn log_held_synced(&self, may_write: &dyn Fn() -> bool) {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        if self.syncs.failed() {
            return;
        }
        for (index, finished) in held {
            if !may_write() {
                return;
            }
            let logged = super::resume::open_log(self.journal.as_fd(), index)
                .and_then(|mut log| finished.log_all(&mut log));
            if let Err(e) = logged {
                tracing::debug!(index, error = %e, "finished files left unlogged");
            }
        }
    }

    /// Size of `e` if it is a regular file whose data this session carries.
    pub fn needed_size(&self, e: EntryId) -> Option<u64> {
        match self.entries.get(e.index()).map(|x| &x.kind) {
            Some(EntryKind::File { size }) if self.need[e.index()] != Need::Nothing => Some(*size),
            _ => None,
        }
    }

    /// The kernel already gave a file created for `e` its source owner.
    pub fn owner_is_default(&self, e: EntryId) -> bool {
        let x = &self.entries[e.index()];
        self.fresh_dir[x.parent.index()] && (x.meta.uid, x.meta.gid) == self.creator
    }

    pub fn is_needed_inline(&self, e: EntryId) -> bool {
        self.need.get(e.index()) == Some(&Need::Full)
            && matches!(self.needed_size(e), Some(s) if is_inline(s))
    }

    /// A Data frame for [off, off + len) of `e` is one this session asked for: anywhere inside
    /// a whole file, or inside one accepted range of a delta.
    pub fn allows(&self, e: EntryId, off: u64, len: u64) -> bool {
        if !matches!(self.need.get(e.index()), Some(Need::Delta | Need::Rest)) {
            return true;
        }
        let Some(r) = self.deltas.get(&e.0) else {
            return false;
        };
        let k = r.partition_point(|&(o, _)| o <= off);
        k > 0 && off + len <= r[k - 1].0 + r[k - 1].1
    }

    /// Counts `len` bytes written to large file `e`; on its last byte, applies its metadata
    /// through `fd` (mtime last, so a rerun's quick check sees it finished) and returns true.
    pub fn written(&self, e: EntryId, len: u64, fd: BorrowedFd<'_>) -> crate::error::Result<bool> {
        let Some(r) = self.remaining.get(&e.0) else {
            return Err(crate::error::Error::Verify(format!(
                "data for entry {} which expects none",
                e.0
            )));
        };
        let prev = r.fetch_sub(len, Ordering::AcqRel);
        if prev < len {
            return Err(crate::error::Error::Verify(format!(
                "more data for entry {} than the sender announced",
                e.0
            )));
        }
        if prev == len {
            let entry = &self.entries[e.index()];
            super::meta::apply_fd(fd, entry, self.owners).map_err(|source| {
                crate::error::Error::Io {
                    context: format!(
                        "setting metadata of {}",
                        crate::error::show(&self.paths[e.index()])
                    ),
                    source,
                }
            })?;
            self.check(e, fd);
        }
        Ok(prev == len)
    }

    /// Compares file `e`, just finished through `fd`, with its entry (`Checked::check`).
    pub fn check(&self, e: EntryId, fd: BorrowedFd<'_>) {
        let opts = crate::tree::hash::HashOptions {
            owners: self.owners,
        };
        self.checked
            .check(e.index(), fd, &self.entries[e.index()], opts);
    }

    /// Counts one data frame against the session's budget.
    pub fn take_frame(&self) -> crate::error::Result<()> {
        self.frame_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .map(|_| ())
            .map_err(|_| {
                crate::error::Error::Verify(
                    "more data frames than the need list and the Expect totals allow".into(),
                )
            })
    }

    pub fn is_needed_extent_file(&self, e: EntryId) -> bool {
        matches!(self.needed_size(e), Some(s) if !is_inline(s))
    }
}
