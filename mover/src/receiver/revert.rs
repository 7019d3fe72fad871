//! Rolling a destination back to its last recovery point: undo the journal's records newest
//! first, restore metadata from the recovery point's entry list, check the tree hash, drop the
//! journal. Progress is logged after each record so an interrupted revert resumes where it
//! stopped (each undo step is also idempotent for the record being undone when it was killed).
//! The target is synced before each step that puts an item back, so a power loss never reruns
//! a removal or a data restore over what a later step put back; a file's restored bytes are
//! synced before their step is logged done (the tree hash compares no content).

use super::grant;
use super::journal::{self, obj_path, Undo, JOURNAL_DIR, REVERT_LOG};
use super::meta::{apply_fd, apply_link_or_special};
use super::state::{RecoveryPoint, State};
use crate::beneath::remove_any;
use crate::beneath::{self, split_parent};
use crate::durable::Log;
use crate::error::{show, Error, IoContext, Result};
use crate::tree::entry::{Entry, EntryKind};
use crate::tree::hash::{tree_hash, HashOptions};
use crate::wire::codec::{Dec, Enc};
use rustix::fs::{AtFlags, Mode, OFlags};
use serde::Serialize;
use std::os::fd::{AsFd, BorrowedFd};

#[derive(Debug, Clone, Serialize)]
pub struct RevertReport {
    /// Undo records applied by this call.
    pub undone: u64,
    pub recovery_point: Option<RecoveryPoint>,
    /// False when there was nothing to revert.
    pub reverted: bool,
}

fn exists(root: BorrowedFd<'_>, path: &[u8]) -> bool {
    let (p, n) = split_parent(path);
    match beneath::open_dir(root, p) {
        Ok(d) => rustix::fs::statat(&d, n, AtFlags::SYMLINK_NOFOLLOW).is_ok(),
        Err(_) => false,
    }
}

fn parent_of(root: BorrowedFd<'_>, path: &[u8]) -> Result<Option<std::os::fd::OwnedFd>> {
    match beneath::open_dir(root, split_parent(path).0) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e).ctx(|| format!("opening directory of {}", show(path))),
    }
}

/// `path` opened for writing; None if it is not there and `may_be_gone`.
fn open_if_there(
    root: BorrowedFd<'_>,
    path: &[u8],
    may_be_gone: bool,
) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    match beneath::open_file(root, path, OFlags::WRONLY, Mode::empty()) {
        Ok(f) => Ok(Some(f)),
        Err(e) if may_be_gone && e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Undoes `u`. `made` tells whether the job made a path before `u` (a `Created` at it or an
/// ancestor): a data or size restore skips such a file when a rerun has removed it already.
/// `ino`: the inode the job wrote in place at `u`'s path (`journal::InPlace`, before `u`),
/// the only file a data or size restore may write into.
fn undo_one(
    root: BorrowedFd<'_>,
    u: &Undo,
    made: &dyn Fn(&[u8]) -> bool,
    ino: Option<(u64, Option<(i64, u32)>)>,
) -> Result<()> {
    match u {
        Undo::Header { .. } => {}
        Undo::Created { path } => {
            if let Some(d) = parent_of(root, path)? {
                remove_any(d.as_fd(), split_parent(path).1, 0)
                    .ctx(|| format!("removing {} (created by the job)", show(path)))?;
            }
        }
        Undo::Moved { path, obj } => {
            let from = obj_path(*obj);
            if !exists(root, &from) {
                return Ok(()); // already restored
            }
            let d = parent_of(root, path)?.ok_or_else(|| {
                Error::Revert(format!(
                    "cannot restore {}: its directory is gone",
                    show(path)
                ))
            })?;
            let n = split_parent(path).1;
            remove_any(d.as_fd(), n, 0).ctx(|| format!("clearing {}", show(path)))?;
            let od = beneath::open_dir(root, split_parent(&from).0)
                .ctx(|| "opening journal objects".to_string())?;
            rustix::fs::renameat(&od, split_parent(&from).1, &d, n)
                .ctx(|| format!("restoring {}", show(path)))?;
        }
        Undo::Renamed { from, to } => {
            if !exists(root, to) {
                return Ok(());
            }
            let fd = parent_of(root, from)?.ok_or_else(|| {
                Error::Revert(format!(
                    "cannot move back to {}: its directory is gone",
                    show(from)
                ))
            })?;
            let td = beneath::open_dir(root, split_parent(to).0)
                .ctx(|| format!("opening directory of {}", show(to)))?;
            remove_any(fd.as_fd(), split_parent(from).1, 0)
                .ctx(|| format!("clearing {}", show(from)))?;
            rustix::fs::renameat(&td, split_parent(to).1, &fd, split_parent(from).1)
                .ctx(|| format!("moving {} back to {}", show(to), show(from)))?;
        }
        Undo::PreImage {
            path,
            offset,
            len,
            file,
            file_off,
        } => {
            // Gone, and the job made it: a later step of a rerun removed it already.
            let Some(f) = open_if_there(root, path, made(path))
                .ctx(|| format!("opening {} to restore its data", show(path)))?
            else {
                return Ok(());
            };
            same_inode(f.as_fd(), ino, path)?;
            let pre = format!(".mover-state/{JOURNAL_DIR}/pre-{file}");
            let p = beneath::open_file(root, pre.as_bytes(), OFlags::RDONLY, Mode::empty())
                .ctx(|| format!("opening {pre}"))?;
            journal::copy_range(p.as_fd(), *file_off, f.as_fd(), *offset, *len)
                .ctx(|| format!("restoring data of {}", show(path)))?;
            // On disk before the step is logged done: a rerun would not restore it again, and
            // the tree hash compares no content.
            rustix::fs::fdatasync(&f).ctx(|| format!("syncing {}", show(path)))?;
        }
        Undo::Resized { path, old_size } => {
            let Some(f) = open_if_there(root, path, made(path))
                .ctx(|| format!("opening {} to restore its size", show(path)))?
            else {
                return Ok(());
            };
            same_inode(f.as_fd(), ino, path)?;
            rustix::fs::ftruncate(&f, *old_size)
                .ctx(|| format!("restoring the size of {}", show(path)))?;
        }
    }
    Ok(())
}

/// Ok unless `f`, opened at `path`, is not inode `ino` (when the journal named one), with its
/// birth time (when the journal has it: a deletion can free the number for a planted file).
fn same_inode(
    f: BorrowedFd<'_>,
    ino: Option<(u64, Option<(i64, u32)>)>,
    path: &[u8],
) -> Result<()> {
    let Some((ino, btime)) = ino else {
        return Ok(()); // journaled by a release that did not record it
    };
    // The journal records the inode only: a device number need not survive a remount, a
    // reboot or another node's mount of a shared target.
    let file = super::table::FileId { dev: None, ino };
    let born = |b| grant::identity_of(f, path).map(|id| grant::same_birth(id.1, b));
    if !file.is_at(f, path)? || btime.map(born).transpose()? == Some(false) {
        return Err(Error::Revert(format!(
            "cannot restore {}: it is no longer the file the job wrote in place (replaced \
             since, by a hard link to another file?); nothing was written to it. Put the \
             recovery point's file back there from another copy and revert again, or drop the \
             interrupted job (remove .mover-state/journal) and let the next job repair the \
             target",
            show(path)
        )));
    }
    Ok(())
}

/// Whether undoing `u` puts an item back at a path (a moved item restored, a renamed one
/// moved back) rather than removing one or restoring bytes.
fn puts_back(root: BorrowedFd<'_>, u: &Undo) -> bool {
    match u {
        Undo::Moved { obj, .. } => exists(root, &obj_path(*obj)),
        Undo::Renamed { to, .. } => exists(root, to),
        _ => false,
    }
}

/// Applies the journal (if any) so the destination is back at its recovery point. The caller
/// holds the root's lock.
pub fn revert(root: BorrowedFd<'_>, state: &State) -> Result<RevertReport> {
    let rp = state.recovery_point()?;
    let Some(existing) = journal::read_existing(state)? else {
        return Ok(RevertReport {
            undone: 0,
            recovery_point: rp,
            reverted: false,
        });
    };
    let rp = match (existing.base, rp) {
        (Some(b), Some(rp)) if b == rp.id => rp,
        _ => {
            // Headerless, or left over from a job that committed: nothing of it is live.
            journal::discard(state)?;
            return Ok(RevertReport {
                undone: 0,
                recovery_point: state.recovery_point()?,
                reverted: false,
            });
        }
    };
    let jdir = rustix::fs::openat(
        &state.dir,
        JOURNAL_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "opening the journal".to_string())?;
    let (mut progress, done) = Log::open(jdir.as_fd(), REVERT_LOG)?;
    let mut undone_before = 0u64;
    if let Some(last) = done.last() {
        undone_before = Dec::new(last).u64()?;
    }
    let records = &existing.records;
    // Where the job created each path first (record index).
    let mut created: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    for (k, u) in records.iter().enumerate() {
        if let Undo::Created { path } = u {
            created.entry(path.as_slice()).or_insert(k);
        }
    }
    // Which inode the job wrote in place at each path, from which record on.
    type Inode = (u64, Option<(i64, u32)>);
    let mut in_place: std::collections::HashMap<&[u8], Vec<(usize, Inode)>> =
        std::collections::HashMap::new();
    for r in &existing.in_place {
        in_place
            .entry(r.path.as_slice())
            .or_default()
            .push((r.at as usize, (r.ino, r.btime)));
    }
    // The inode written in place at `p` as of record `k` (the last one named before it).
    let ino_at = |p: &[u8], k: usize| {
        let v = in_place.get(p)?;
        let n = v.partition_point(|&(at, _)| at <= k);
        n.checked_sub(1).map(|n| v[n].1)
    };
    // Whether the item at `p` is one the job made before record `k`.
    let made = |p: &[u8], k: usize| {
        journal::ancestors_and_self(p).any(|q| created.get(q).is_some_and(|&c| c < k))
    };
    let mut undone = 0;
    // Steps undone since the target was last synced; a killed earlier run's progress may not
    // be on disk either.
    let mut unsynced = u64::from(undone_before > 0);
    for (k, u) in records
        .iter()
        .enumerate()
        .rev()
        .skip(undone_before as usize)
    {
        // Re-running a removal or a data restore after a later step put a recovery-point item
        // back at its path would destroy that item, and a power loss can keep the renames and
        // lose the progress records: both are synced before anything is put back (the whole
        // file system: on btrfs an fdatasync of the log would not carry the renames).
        if unsynced > 0 && puts_back(root, u) {
            rustix::fs::syncfs(root).ctx(|| "syncing the revert's progress".to_string())?;
            progress.sync()?; // in case .mover-state is another mount
            unsynced = 0;
        }
        let ino = match u {
            Undo::PreImage { path, .. } | Undo::Resized { path, .. } => ino_at(path, k),
            _ => None,
        };
        undo_one(root, u, &|p| made(p, k), ino)?;
        undone += 1;
        unsynced += 1;
        let mut e = Enc::new();
        e.u64((records.len() - k) as u64);
        progress.append(&e.buf)?;
    }
    // What the target held at its recovery point: the stored list as its replica policy
    // admitted it (set-id bits cleared, devices not created), as the job and a scrub see it,
    // not as the sender sent it.
    let (want, _) = state.admitted(&rp)?;
    // Where the job guarded identity (grant.rs), only to inodes it journaled.
    let journaled = existing
        .in_place
        .iter()
        .any(|r| r.is_identity_marker())
        .then(|| {
            let granted = existing.in_place.iter().filter(|r| r.grant);
            granted.filter_map(|r| Some((r.ino, r.btime?))).collect()
        });
    restore_metadata(root, &want, rp.hash_owners, journaled.as_ref())?;
    let got = crate::tree::walk::walk_fd(root, true)?;
    let opts = HashOptions {
        owners: rp.hash_owners,
    };
    // Compared with the stored list's own hash: a record written before the tree hash became
    // a Merkle tree holds the older hash.
    if tree_hash(&got.entries, opts) != tree_hash(&want, opts) {
        let paths = crate::tree::entry::relative_paths(&want);
        return Err(
            match super::finalize::first_difference(&want, &got.entries, &paths) {
                Error::Verify(m) => Error::Verify(format!(
                    "revert did not reach recovery point {}: {m}",
                    rp.id
                )),
                e => e,
            },
        );
    }
    rustix::fs::syncfs(root).ctx(|| "syncing the destination file system".to_string())?;
    journal::discard(state)?;
    Ok(RevertReport {
        undone,
        recovery_point: Some(rp),
        reverted: true,
    })
}

/// Sets owner, mode, xattrs and mtime of every entry whose metadata differs from `want`, the
/// recovery point's list; the tree's shape must already match it.
pub fn restore_metadata(
    root: BorrowedFd<'_>,
    want: &[Entry],
    owners: bool,
    journaled: Option<&grant::Journaled>,
) -> Result<()> {
    let got = crate::tree::walk::walk_fd(root, true)?;
    let paths = crate::tree::entry::relative_paths(want);
    let shape = |e: &Entry| (e.parent, e.name.clone(), e.kind.clone());
    if got.entries.len() != want.len()
        || got
            .entries
            .iter()
            .zip(want)
            .any(|(g, w)| shape(g) != shape(w))
    {
        return Err(super::finalize::first_difference(
            want,
            &got.entries,
            &paths,
        ));
    }
    let differs = |g: &Entry, w: &Entry| {
        g.meta.mode != w.meta.mode
            || (owners && (g.meta.uid, g.meta.gid) != (w.meta.uid, w.meta.gid))
            || (g.meta.mtime_sec, g.meta.mtime_nsec) != (w.meta.mtime_sec, w.meta.mtime_nsec)
            || g.xattrs != w.xattrs
    };
    // Non-directories first, then directories deepest first: fixing a child does not touch its
    // directory's mtime, but restoring xattrs would bump nothing either; order is for safety.
    for pass_dirs in [false, true] {
        let order: Box<dyn Iterator<Item = usize>> = if pass_dirs {
            Box::new((0..want.len()).rev())
        } else {
            Box::new(0..want.len())
        };
        for i in order {
            let (g, w) = (&got.entries[i], &want[i]);
            if (w.kind == EntryKind::Dir) != pass_dirs || !differs(g, w) {
                continue;
            }
            let path = &paths[i];
            match &w.kind {
                EntryKind::Dir | EntryKind::File { .. } => {
                    let flags = grant::OPEN_FOUND;
                    let fd = if w.kind == EntryKind::Dir {
                        beneath::open_dir(root, path)
                    } else {
                        beneath::open_file(root, path, flags, Mode::empty())
                    }
                    .ctx(|| format!("opening {}", show(path)))?;
                    if w.kind != EntryKind::Dir {
                        // What was walked, so what was compared, is what is changed.
                        let file = super::table::FileId {
                            dev: None,
                            ino: got.ids[i].ino,
                        };
                        file.check(fd.as_fd(), path)?;
                        let (mode, owner) = (g.meta.mode, (g.meta.uid, g.meta.gid));
                        if grant::grants(mode, owner, w, owners) {
                            grant::check_revert(fd.as_fd(), path, journaled)?;
                        }
                    }
                    apply_fd(fd.as_fd(), w, owners)
                        .ctx(|| format!("restoring metadata of {}", show(path)))?;
                }
                EntryKind::HardLink { .. } => {}
                EntryKind::Symlink { .. } | EntryKind::Special { .. } => {
                    let (p, n) = split_parent(path);
                    let dir = beneath::open_dir(root, p)
                        .ctx(|| format!("opening directory of {}", show(path)))?;
                    apply_link_or_special(dir.as_fd(), n, w, owners)
                        .ctx(|| format!("restoring metadata of {}", show(path)))?;
                }
            }
        }
    }
    Ok(())
}
