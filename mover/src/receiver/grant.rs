//! Owner and set-id bits are identity, and the receiver hands them out only to files it can
//! vouch for.
//!
//! On a standalone target that untrusted local users can write, one of them may replace a file
//! between jobs with a file of their own (same size and mtime, so the quick check passes), or
//! with a hard link to one. Changing such a file's owner or set-id bits in place would give the
//! recovery point's identity (root, set-uid) to their bytes. So:
//! - a job changes the owner or set-id bits of a file it keeps in place only if the file found
//!   there is the recovery point's own (a regular file with its owner, mode, size, mtime and
//!   link count), and only if no one but root and the receiver could have written its bytes
//!   since, or the change gives them no identity their writers lack (`may_take`); anything
//!   else is set aside with the job and written anew from the source's bytes;
//! - a change that hands bytes only root could write to someone who can write them is made on
//!   a copy, and the recovery point's inode waits in the journal (`Keep::Copy`);
//! - before any other such change in place, the job journals the inode (`journal::InPlace`
//!   with `grant`, made durable in batches), and a revert gives owner or set-id bits back only
//!   to an inode so journaled.
//!
//! Under the daemon the target is a read-only bind mount and the receiver writes through a
//! private view, so no local user can plant anything there; this guards `mover receive` run
//! by hand into a shared tree.

use super::journal::Journal;
use super::meta::apply_fd;
use crate::beneath;
use crate::error::{show, Error, IoContext, Result};
use crate::tree::entry::{Entry, EntryKind};
use rustix::fs::{FileType, Mode, OFlags, Stat};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

const SETID: u32 = libc::S_ISUID | libc::S_ISGID;

/// How a file found in the target is opened to be looked at or changed: never followed,
/// never blocking on a FIFO planted there, never made a controlling terminal.
pub const OPEN_FOUND: OFlags = OFlags::RDONLY.union(OFlags::NONBLOCK).union(OFlags::NOCTTY);

/// The inode `fd` (open at `path`) is.
pub fn identity_of(fd: BorrowedFd<'_>, path: &[u8]) -> Result<Identity> {
    super::resume::identity(fd, b"").ctx(|| format!("statx of {}", show(path)))
}

/// An inode: its number and birth time ((0, 0) where the file system keeps none), as
/// `resume::identity` gives them. The number alone can come back: a deletion frees it and the
/// next file made (a planted one too) may get it.
pub type Identity = (u64, (i64, u32));

/// Changes journaled before one sync makes them durable and they are carried out: bounds the
/// batch's memory, and the fsyncs a `chown -R` on the source costs (one per batch).
pub const GRANT_BATCH: usize = 1024;

/// Whether taking a regular file from `mode` (permission bits) and `owner` to `to`'s metadata
/// changes its owner, changes a mode that has set-id bits before or after, or changes who
/// besides root and the receiver may write it (`trusted`).
pub fn sensitive(mode: u32, owner: (u32, u32), to: &Entry, owners: bool) -> bool {
    let to_uid = if owners { to.meta.uid } else { owner.0 };
    (owners && owner != (to.meta.uid, to.meta.gid))
        || (mode != to.meta.mode && (mode | to.meta.mode) & SETID != 0)
        || trusted(owner.0, mode) != trusted(to_uid, to.meta.mode)
}

/// `sensitive` from what `st` says the file is now.
pub fn sensitive_from(st: &Stat, to: &Entry, owners: bool) -> bool {
    sensitive(st.st_mode & 0o7777, (st.st_uid, st.st_gid), to, owners)
}

/// Whether `st` is the regular file `e` describes, with `links` names: its size, mtime, mode
/// and link count, and its owner (`owners`) or else the receiver's own user, which made every
/// file of a job without owners. A name hard-linked elsewhere (an operator's snapshot made
/// with `cp -al`, or a link planted to another file) is not: changing its owner in place would
/// change the other names' too.
pub fn is_file_of(st: &Stat, e: &Entry, links: u32, owners: bool) -> bool {
    let EntryKind::File { size } = e.kind else {
        return false;
    };
    let owner_ok = if owners {
        (st.st_uid, st.st_gid) == (e.meta.uid, e.meta.gid)
    } else {
        st.st_uid == rustix::process::geteuid().as_raw()
    };
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
        && st.st_size as u64 == size
        && (st.st_mtime, st.st_mtime_nsec as u32) == (e.meta.mtime_sec, e.meta.mtime_nsec)
        && st.st_mode & 0o7777 == e.meta.mode
        && st.st_nlink == 1 + u64::from(links)
        && owner_ok
}

/// Whether taking bytes from `mode` and `owner` to `to`'s owner and mode grants anything: a
/// new owner, a mode with set-id bits that was not the mode before, or trust (bytes others
/// could write become bytes only root could, and a later job takes them as the recovery
/// point's). What a revert checks before it does so.
pub fn grants(mode: u32, owner: (u32, u32), to: &Entry, owners: bool) -> bool {
    let to_uid = if owners { to.meta.uid } else { owner.0 };
    (owners && owner != (to.meta.uid, to.meta.gid))
        || (to.meta.mode & SETID != 0 && to.meta.mode != mode)
        || (!trusted(owner.0, mode) && trusted(to_uid, to.meta.mode))
}

/// Whether only root and the receiver can write a file with owner `uid` and `mode`.
fn trusted(uid: u32, mode: u32) -> bool {
    let me = rustix::process::geteuid().as_raw();
    (uid == 0 || uid == me) && mode & 0o022 == 0
}

/// Whether bytes with owner `from_uid` and mode `from_mode` may take owner `to_uid` and mode
/// `to_mode`: they are the recovery point's only as far as no one but root and the receiver
/// could write them; if anyone else could, they take no identity those writers lack: the owner
/// stays and no set-id bits come.
fn may_take((from_uid, from_mode): (u32, u32), (to_uid, to_mode): (u32, u32)) -> bool {
    trusted(from_uid, from_mode) || (from_uid == to_uid && to_mode & SETID == 0)
}

/// The (owner, mode) of `st` now, and once it takes `to`'s metadata (its owner only with
/// `owners`: else the file keeps the receiver's).
fn before_after(st: &Stat, to: &Entry, owners: bool) -> ((u32, u32), (u32, u32)) {
    let now = (st.st_uid, st.st_mode & 0o7777);
    (
        now,
        (if owners { to.meta.uid } else { st.st_uid }, to.meta.mode),
    )
}

/// What a job does with a file it would keep whose owner or set-id bits change (`sensitive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Journaled (`Pending`), then changed in place: a revert may give its old identity back.
    InPlace,
    /// Its bytes go to someone who can write them: a copy takes the new identity and the
    /// recovery point's inode waits in the journal untouched (`copy_aside`), so a revert puts
    /// it back rather than giving identity to bytes it does not know.
    Copy,
    /// Not vouched for: set aside and sent anew.
    Send,
}

/// Decides for the file `st` at an entry `to` whose recovery-point entry is `was` (with its
/// link count; None: not known).
pub fn keep(st: &Stat, was: Option<(&Entry, u32)>, to: &Entry, owners: bool) -> Keep {
    let Some((was, links)) = was else {
        return Keep::Send;
    };
    let (now, then) = before_after(st, to, owners);
    if !is_file_of(st, was, links, owners) || !may_take(now, then) {
        Keep::Send
    } else if may_give_back(now, then) {
        Keep::InPlace
    } else if st.st_nlink == 1 {
        Keep::Copy
    } else {
        Keep::Send
    }
}

/// Whether a file the job is resuming (`st`, which it `made` or else writes in place) may
/// take `to`'s metadata when it is complete: see `keep`; a file the job made is removed by a
/// revert, never given anything back.
pub fn may_finish(st: &Stat, to: &Entry, owners: bool, made: bool) -> bool {
    let (now, then) = before_after(st, to, owners);
    !sensitive_from(st, to, owners) || (may_take(now, then) && (made || may_give_back(now, then)))
}

/// Whether a revert may give bytes that take `then` (owner, mode) back their `now`: no one
/// but root could write them in between, or `now` gives their writers nothing they lack, nor
/// makes them look like bytes only root could write.
fn may_give_back(now: (u32, u32), then: (u32, u32)) -> bool {
    may_take(then, now) && (trusted(then.0, then.1) || !trusted(now.0, now.1))
}

/// Most directories a walk from the target root up to `/` passes.
const MAX_ANCESTORS: usize = 4096;

/// Whether users other than root and the receiver's can reach the target root: no directory
/// from it up to `/` is closed to them (owned by root or the receiver, searchable by neither
/// group nor others). Where none can, no one can plant anything there, and a job skips these
/// checks: under the daemon, the receiver writes through a private view in such a directory;
/// the README tells a standalone receiver's operator to keep the root's parent so.
pub fn reachable(root: BorrowedFd<'_>) -> Result<bool> {
    let me = rustix::process::geteuid().as_raw();
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let up = |d: BorrowedFd<'_>| {
        rustix::fs::openat(d, "..", flags, Mode::empty())
            .ctx(|| "opening a directory above the target".to_string())
    };
    let mut dir = rustix::fs::openat(root, ".", flags, Mode::empty())
        .ctx(|| "opening the target root".to_string())?;
    for _ in 0..MAX_ANCESTORS {
        let st = rustix::fs::fstat(&dir).ctx(|| "stat of a directory above the target".into())?;
        if (st.st_uid == 0 || st.st_uid == me) && st.st_mode & 0o011 == 0 {
            return Ok(false);
        }
        let parent = up(dir.as_fd())?;
        let ps =
            rustix::fs::fstat(&parent).ctx(|| "stat of a directory above the target".into())?;
        if (ps.st_dev, ps.st_ino) == (st.st_dev, st.st_ino) {
            return Ok(true);
        }
        dir = parent;
    }
    Ok(true)
}

/// Opens what stands at `name` in `dir` without following it, blocking on it (a FIFO planted
/// there) or making it a terminal: None if nothing, or a file this user cannot open, is there.
/// A symlink is an error, as for any change of a file's metadata (`meta::chmod_at`).
pub fn open_found(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<Option<(OwnedFd, Stat)>> {
    match beneath::open_in(dir, name, OPEN_FOUND, Mode::empty()) {
        Ok(fd) => {
            let st = rustix::fs::fstat(&fd)?;
            Ok(Some((fd, st)))
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EACCES)) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(std::io::Error::other(format!(
            "{} is a symlink where the recovery point holds a file (not followed): {e}",
            String::from_utf8_lossy(name)
        ))),
        Err(e) => Err(e),
    }
}

/// Files whose owner or set-id bits the job changes: each journaled when found (kept in place:
/// a grant; copied: the move and the copy's creation), and changed once a sync has made its
/// records durable, through a descriptor that is checked to be the inode found or made.
#[derive(Default)]
pub struct Pending {
    /// (entry index, inode found there or the copy made).
    items: Vec<(usize, Identity)>,
}

impl Pending {
    /// Makes a copy of the file `old` (the recovery point's, at `name` in `dir`, one name
    /// only) in its place for entry `i` (`Keep::Copy`), shared extents where the file system
    /// can; the inode goes into the journal untouched, where no one else can reach it, and a
    /// revert puts it back. The copy takes its metadata with the batch.
    pub fn copy_aside(
        &mut self,
        j: &mut Journal,
        at: (BorrowedFd<'_>, &[Entry], &[Vec<u8>]),
        (dir, name): (BorrowedFd<'_>, &[u8]),
        i: usize,
        old: BorrowedFd<'_>,
        owners: bool,
    ) -> Result<()> {
        debug_assert!(self.items.len() < GRANT_BATCH);
        let path = &at.2[i];
        let size = rustix::fs::fstat(old)
            .ctx(|| format!("stat of {}", show(path)))?
            .st_size as u64;
        j.move_away(dir, name, path)?;
        j.created(path).map_err(super::space::naming(|| {
            format!("journaling the creation of {}", show(path))
        }))?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        let new = beneath::open_in(dir, name, flags, Mode::from_raw_mode(0o600))
            .ctx(|| format!("creating {}", show(path)))?;
        super::journal::copy_range(old, 0, new.as_fd(), 0, size)
            .ctx(|| format!("copying {} for its new owner", show(path)))?;
        let id = identity_of(new.as_fd(), path)?;
        self.push(j, at, (i, id), owners)
    }

    /// Journals that entry `i`, the file `fd` found at its path, gets its new owner or set-id
    /// bits; carries out the batch when it is full.
    pub fn add(
        &mut self,
        j: &mut Journal,
        at: (BorrowedFd<'_>, &[Entry], &[Vec<u8>]),
        i: usize,
        fd: BorrowedFd<'_>,
        owners: bool,
    ) -> Result<()> {
        debug_assert!(self.items.len() < GRANT_BATCH);
        let path = &at.2[i];
        let id = identity_of(fd, path)?;
        j.granted(path, id)?;
        self.push(j, at, (i, id), owners)
    }

    /// Adds an item whose records are journaled; carries out the batch when it is full.
    fn push(
        &mut self,
        j: &mut Journal,
        at: (BorrowedFd<'_>, &[Entry], &[Vec<u8>]),
        item: (usize, Identity),
        owners: bool,
    ) -> Result<()> {
        self.items.push(item);
        if self.items.len() >= GRANT_BATCH {
            self.flush(j, at, owners)?;
        }
        Ok(())
    }

    /// Makes the records durable, then sets each file's metadata.
    pub fn flush(
        &mut self,
        j: &mut Journal,
        (root, entries, paths): (BorrowedFd<'_>, &[Entry], &[Vec<u8>]),
        owners: bool,
    ) -> Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        j.sync()?;
        for (i, id) in self.items.drain(..) {
            let path = &paths[i];
            let fd = beneath::open_file(root, path, OPEN_FOUND, Mode::empty())
                .ctx(|| format!("opening {}", show(path)))?;
            let now = identity_of(fd.as_fd(), path)?;
            if now != id {
                return Err(Error::Verify(format!(
                    "{} was replaced while this job ran: it is no longer the file the job \
                     checked (another writer in the target?); its owner and mode were not \
                     changed",
                    show(path)
                )));
            }
            apply_fd(fd.as_fd(), &entries[i], owners)
                .ctx(|| format!("updating metadata of {}", show(path)))?;
        }
        Ok(())
    }
}

/// The inodes (number, birth time) a journal says the job changed in place, if it says so of
/// every one whose owner or set-id bits it changed (a journal of an older release does not).
pub type Journaled = std::collections::HashMap<u64, (i64, u32)>;

/// Whether two birth times may be one inode's: equal, or one unknown ((0, 0): a kernel that
/// did not report it then, or does not now).
pub fn same_birth(a: (i64, u32), b: (i64, u32)) -> bool {
    a == b || a == (0, 0) || b == (0, 0)
}

/// Revert's check before it gives the file `fd` at `path` back its recovery-point owner or
/// set-id bits: it must be an inode the job journaled (None: a journal of a release that did
/// not record them, trusted as before).
pub fn check_revert(fd: BorrowedFd<'_>, path: &[u8], journaled: Option<&Journaled>) -> Result<()> {
    let Some(journaled) = journaled else {
        return Ok(());
    };
    let st = rustix::fs::fstat(fd).ctx(|| format!("stat of {}", show(path)))?;
    let id = identity_of(fd, path)?;
    let granted = journaled.get(&id.0).is_some_and(|&b| same_birth(b, id.1));
    if id.0 != st.st_ino || !granted {
        return Err(Error::Revert(format!(
            "cannot restore the owner or set-id bits of {}: it is not a file the job changed \
             (inode {}, owner {}:{}, replaced outside mover?), so they were not given to it. \
             Put the recovery point's file back there from another copy and revert again, or \
             drop the interrupted job (remove .mover-state/journal) and run the next job with \
             `--verify full`, which writes anew each file that differs",
            show(path),
            st.st_ino,
            st.st_uid,
            st.st_gid
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::entry::Meta;

    fn file(mode: u32, uid: u32) -> Entry {
        Entry {
            parent: crate::units::EntryId(0),
            name: b"f".to_vec(),
            kind: EntryKind::File { size: 1 },
            meta: Meta {
                mode,
                uid,
                gid: uid,
                ..Default::default()
            },
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn owner_and_set_id_changes_are_sensitive_and_permission_bits_are_not() {
        assert!(!sensitive(0o644, (5, 5), &file(0o600, 5), true));
        assert!(sensitive(0o644, (5, 5), &file(0o644, 0), true));
        assert!(
            !sensitive(0o644, (5, 5), &file(0o644, 0), false),
            "owners not kept"
        );
        assert!(
            sensitive(0o755, (5, 5), &file(0o4755, 5), false),
            "set-uid added"
        );
        assert!(
            sensitive(0o2755, (5, 5), &file(0o755, 5), false),
            "set-gid removed"
        );
        assert!(
            sensitive(0o4755, (5, 5), &file(0o4750, 5), false),
            "a set-uid mode changed"
        );
        assert!(
            !sensitive(0o4755, (5, 5), &file(0o4755, 5), true),
            "nothing changes"
        );
    }
}
