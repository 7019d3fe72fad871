//! The receiver's first phase, run by the session's control thread before any data arrives:
//! make the destination's shape match the entry list (directories, symlinks, special files,
//! removal of what is in the way or no longer in the source), decide which files need data, and
//! create the large ones at full (sparse) size so workers only ever open existing files.
//!
//! Every operation is relative to a directory fd resolved beneath the root; final components are
//! never followed.

use super::meta::times;
use crate::beneath;
use crate::error::{show, IoContext, Result};
use crate::sender::plan::is_inline;
use crate::tree::entry::{Entry, EntryKind, MAX_DEPTH};
use crate::tree::walk::dir_names;
use crate::tree::xattr::{sync_user_xattrs, On};
use crate::units::EntryId;
use rustix::fs::{statat, AtFlags, FileType, Gid, Mode, OFlags, Stat, Uid};
use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

#[derive(Debug, Default, Clone, Copy)]
pub struct ApplyStats {
    pub files_needed: u64,
    pub bytes_needed: u64,
    pub files_unchanged: u64,
    pub removed: u64,
}

fn stat_opt(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<Option<Stat>> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
        Err(e) => Err(e),
    }
}

fn ftype(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Removes `name` in `dir`, recursively for directories, never following symlinks.
pub fn remove_any(dir: BorrowedFd<'_>, name: &[u8], depth: usize) -> rustix::io::Result<u64> {
    let st = match stat_opt(dir, name)? {
        Some(s) => s,
        None => return Ok(0),
    };
    if ftype(&st) != FileType::Directory {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
        return Ok(1);
    }
    if depth > MAX_DEPTH {
        return Err(rustix::io::Errno::LOOP);
    }
    let sub = beneath::open_in(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))?;
    let mut removed = 0;
    for n in dir_names(sub.as_fd())? {
        removed += remove_any(sub.as_fd(), &n, depth + 1)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(removed + 1)
}

/// Directory fds along the current pre-order path, so most entries resolve their parent for free.
struct DirStack {
    stack: Vec<(EntryId, OwnedFd)>,
}

impl DirStack {
    fn parent(&mut self, root: BorrowedFd<'_>, p: EntryId, paths: &[Vec<u8>]) -> Result<BorrowedFd<'_>> {
        while let Some((id, _)) = self.stack.last() {
            if *id == p {
                break;
            }
            self.stack.pop();
        }
        if self.stack.is_empty() {
            let fd = beneath::open_dir(root, &paths[p.index()]).ctx(|| format!("opening directory {}", show(&paths[p.index()])))?;
            self.stack.push((p, fd));
        }
        match self.stack.last() {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => unreachable!("stack was just filled"),
        }
    }
}

/// Sets owner/mode/xattrs/mtime on an existing file found unchanged, where they differ.
fn fix_unchanged_meta(dir: BorrowedFd<'_>, name: &[u8], st: &Stat, e: &Entry, owners: bool) -> std::io::Result<()> {
    if owners && (st.st_uid != e.meta.uid || st.st_gid != e.meta.gid) {
        rustix::fs::chownat(dir, name, Some(Uid::from_raw(e.meta.uid)), Some(Gid::from_raw(e.meta.gid)), AtFlags::SYMLINK_NOFOLLOW)?;
    }
    if st.st_mode & 0o7777 != e.meta.mode || owners && st.st_uid != e.meta.uid {
        rustix::fs::chmodat(dir, name, Mode::from_raw_mode(e.meta.mode), AtFlags::empty())?;
    }
    sync_user_xattrs(On::At(dir, name), &e.xattrs)?;
    // xattr changes bump ctime only, but restore mtime in case anything above touched it.
    rustix::fs::utimensat(dir, name, &times(&e.meta), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Runs the first phase. Returns which entries need data, and which directories it created.
pub fn apply_entries(root: BorrowedFd<'_>, entries: &[Entry], paths: &[Vec<u8>], owners: bool) -> Result<(Vec<bool>, Vec<bool>, ApplyStats)> {
    let mut need = vec![false; entries.len()];
    let mut stats = ApplyStats::default();
    let mut links_to = vec![0u32; entries.len()];
    for e in entries {
        if let EntryKind::HardLink { target } = e.kind {
            links_to[target.index()] += 1;
        }
    }
    // Directories this phase created: nothing can exist inside them yet (the root is locked
    // against other receivers), so their children need no lookup and no extraneous pass.
    let mut fresh = vec![false; entries.len()];
    let mut dirs = DirStack { stack: Vec::new() };
    for (i, e) in entries.iter().enumerate().skip(1) {
        let path = &paths[i];
        let dir = dirs.parent(root, e.parent, paths)?;
        let name = e.name.as_slice();
        let st = if fresh[e.parent.index()] { None } else { stat_opt(dir, name).ctx(|| format!("stat {}", show(path)))? };
        let ft = st.as_ref().map(ftype);
        let clear = |stats: &mut ApplyStats| -> Result<()> {
            stats.removed += remove_any(dir, name, 0).ctx(|| format!("removing {} (in the way)", show(path)))?;
            Ok(())
        };
        match &e.kind {
            EntryKind::Dir => {
                if ft != Some(FileType::Directory) {
                    if st.is_some() {
                        clear(&mut stats)?;
                    }
                    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)).ctx(|| format!("mkdir {}", show(path)))?;
                    fresh[i] = true;
                }
                let sub = beneath::open_in(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
                    .ctx(|| format!("opening directory {}", show(path)))?;
                dirs.stack.push((EntryId(i as u32), sub));
            }
            EntryKind::File { size } => {
                let unchanged = matches!(&st, Some(s) if ftype(s) == FileType::RegularFile
                    && s.st_size as u64 == *size
                    && s.st_mtime == e.meta.mtime_sec
                    && s.st_mtime_nsec as u32 == e.meta.mtime_nsec
                    && s.st_nlink == 1 + links_to[i] as u64);
                if unchanged {
                    if let Some(s) = &st {
                        fix_unchanged_meta(dir, name, s, e, owners).ctx(|| format!("updating metadata of {}", show(path)))?;
                    }
                    stats.files_unchanged += 1;
                    continue;
                }
                if st.is_some() {
                    // Never write into the old inode: it may be hard-linked elsewhere.
                    clear(&mut stats)?;
                }
                need[i] = true;
                stats.files_needed += 1;
                stats.bytes_needed += size;
                if !is_inline(*size) {
                    let fd = beneath::open_in(dir, name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, Mode::from_raw_mode(0o600))
                        .ctx(|| format!("creating {}", show(path)))?;
                    rustix::fs::ftruncate(&fd, *size).ctx(|| format!("sizing {} to {size} bytes", show(path)))?;
                }
            }
            EntryKind::Symlink { target } => {
                let same = ft == Some(FileType::Symlink)
                    && rustix::fs::readlinkat(dir, name, Vec::new()).map(|t| t.as_bytes() == target.as_slice()).unwrap_or(false);
                if !same {
                    if st.is_some() {
                        clear(&mut stats)?;
                    }
                    rustix::fs::symlinkat(target.as_slice(), dir, name).ctx(|| format!("symlink {}", show(path)))?;
                }
            }
            EntryKind::HardLink { .. } => {} // in finalize, once the target file is complete
            EntryKind::Special { file_type, rdev } => {
                let same = matches!(&st, Some(s) if s.st_mode & libc::S_IFMT == *file_type && s.st_rdev == *rdev);
                if !same {
                    if st.is_some() {
                        clear(&mut stats)?;
                    }
                    let ft = FileType::from_raw_mode(*file_type);
                    rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(0o600), *rdev)
                        .ctx(|| format!("mknod {}", show(path)))?;
                }
            }
        }
    }
    drop(dirs);
    stats.removed += remove_extraneous(root, entries, paths, &fresh)?;
    Ok((need, fresh, stats))
}

/// Removes what the destination holds that the source does not (the target is a mirror).
fn remove_extraneous(root: BorrowedFd<'_>, entries: &[Entry], paths: &[Vec<u8>], fresh: &[bool]) -> Result<u64> {
    let names: HashSet<(u32, &[u8])> = entries.iter().skip(1).map(|e| (e.parent.0, e.name.as_slice())).collect();
    let mut removed = 0;
    for (i, e) in entries.iter().enumerate() {
        if e.kind != EntryKind::Dir || fresh[i] {
            continue;
        }
        let fd = beneath::open_dir(root, &paths[i]).ctx(|| format!("opening directory {}", show(&paths[i])))?;
        let listed = dir_names(fd.as_fd()).ctx(|| format!("listing {}", show(&paths[i])))?;
        for n in listed.into_iter().filter(|n| !names.contains(&(i as u32, n.as_slice()))) {
            removed += remove_any(fd.as_fd(), &n, 0).ctx(|| format!("removing {}/{}", show(&paths[i]), show(&n)))?;
        }
    }
    Ok(removed)
}
