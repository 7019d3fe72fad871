//! Walks a directory tree into the canonical entry list: pre-order, children sorted by name
//! bytes, never following symlinks, hard links folded into `HardLink` entries. Sender, receiver
//! (to verify) and tests all use this one walk, so equal trees give equal lists.

use super::entry::{Entry, EntryKind, Meta, MAX_DEPTH};
use super::xattr::{read_user_xattrs, On};
use crate::beneath::proc_path;
use crate::error::{show, Error, IoContext, Result};
use crate::units::EntryId;
use rustix::fs::{statat, AtFlags, Dir, FileType, Mode, OFlags, Stat};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// What a walk found, plus what the sender needs to read files back.
pub struct Walked {
    pub entries: Vec<Entry>,
    /// Relative path of each entry.
    pub paths: Vec<Vec<u8>>,
    /// Inode change time of each regular file (0 otherwise), to detect files changing under us.
    pub ctimes: Vec<(i64, i64)>,
}

struct Frame {
    fd: OwnedFd,
    id: EntryId,
    names: Vec<Vec<u8>>,
    next: usize,
}

pub fn meta_of(st: &Stat) -> Meta {
    Meta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_sec: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
    }
}

fn read_names(fd: BorrowedFd<'_>, what: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut dir = Dir::read_from(fd).ctx(|| format!("reading directory {}", show(what)))?;
    let mut names = Vec::new();
    while let Some(ent) = dir.read() {
        let ent = ent.ctx(|| format!("reading directory {}", show(what)))?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort_unstable();
    Ok(names)
}

fn open_subdir(parent: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Walks `root`. `xattrs` = read `user.*` xattrs of files and directories.
pub fn walk(root: &Path, xattrs: bool) -> Result<Walked> {
    let root_fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .ctx(|| format!("opening source directory {}", root.display()))?;
    walk_fd(root_fd.as_fd(), xattrs)
}

pub fn walk_fd(root: BorrowedFd<'_>, xattrs: bool) -> Result<Walked> {
    let root_fd = open_subdir(root, b".").ctx(|| "reopening root directory".to_string())?;
    let st = rustix::fs::fstat(&root_fd).ctx(|| "stat of root directory".to_string())?;
    let mut w = Walked { entries: Vec::new(), paths: Vec::new(), ctimes: Vec::new() };
    let root_x = if xattrs { read_user_xattrs(On::Fd(root_fd.as_fd())).ctx(|| "xattrs of root".into())? } else { Vec::new() };
    w.entries.push(Entry { parent: EntryId::ROOT, name: Vec::new(), kind: EntryKind::Dir, meta: meta_of(&st), xattrs: root_x });
    w.paths.push(Vec::new());
    w.ctimes.push((0, 0));
    let mut links: HashMap<(u64, u64), EntryId> = HashMap::new();
    let names = read_names(root_fd.as_fd(), b"")?;
    let mut stack = vec![Frame { fd: root_fd, id: EntryId::ROOT, names, next: 0 }];

    loop {
        let depth = stack.len();
        let Some(top) = stack.last_mut() else { break };
        if top.next == top.names.len() {
            stack.pop();
            continue;
        }
        let name = std::mem::take(&mut top.names[top.next]);
        top.next += 1;
        let parent = top.id;
        let dirfd = top.fd.as_fd();
        let path = {
            let pp = &w.paths[parent.index()];
            let mut p = Vec::with_capacity(pp.len() + 1 + name.len());
            p.extend_from_slice(pp);
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&name);
            p
        };
        let st = match statat(dirfd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Deleted since the directory was listed: it is not part of this walk.
            Err(e) if e == rustix::io::Errno::NOENT => continue,
            Err(e) => return Err(e).ctx(|| format!("stat {}", show(&path))),
        };
        let id = EntryId(w.entries.len() as u32);
        let ft = FileType::from_raw_mode(st.st_mode);
        let mut ctime = (0, 0);
        let mut child: Option<OwnedFd> = None;
        let kind = match ft {
            FileType::Directory => {
                if depth >= MAX_DEPTH {
                    return Err(Error::Usage(format!("{}: deeper than {MAX_DEPTH} directories", show(&path))));
                }
                child = Some(open_subdir(dirfd, &name).ctx(|| format!("opening directory {}", show(&path)))?);
                EntryKind::Dir
            }
            FileType::RegularFile => {
                let key = (st.st_dev, st.st_ino);
                match (st.st_nlink > 1).then(|| links.get(&key).copied()).flatten() {
                    Some(target) => EntryKind::HardLink { target },
                    None => {
                        if st.st_nlink > 1 {
                            links.insert(key, id);
                        }
                        ctime = (st.st_ctime, st.st_ctime_nsec as i64);
                        EntryKind::File { size: st.st_size as u64 }
                    }
                }
            }
            FileType::Symlink => {
                let t = rustix::fs::readlinkat(dirfd, name.as_slice(), Vec::new())
                    .ctx(|| format!("readlink {}", show(&path)))?;
                EntryKind::Symlink { target: t.into_bytes() }
            }
            FileType::Fifo | FileType::Socket | FileType::CharacterDevice | FileType::BlockDevice => {
                EntryKind::Special { file_type: st.st_mode & libc::S_IFMT, rdev: st.st_rdev }
            }
            FileType::Unknown => continue,
        };
        let xa = match (&kind, xattrs) {
            (EntryKind::Dir | EntryKind::File { .. }, true) => {
                read_user_xattrs(On::Path(&proc_path(dirfd, &name))).ctx(|| format!("xattrs of {}", show(&path)))?
            }
            _ => Vec::new(),
        };
        w.entries.push(Entry { parent, name, kind, meta: meta_of(&st), xattrs: xa });
        w.paths.push(path);
        w.ctimes.push(ctime);
        if let Some(fd) = child {
            let names = read_names(fd.as_fd(), &w.paths[id.index()])?;
            stack.push(Frame { fd, id, names, next: 0 });
        }
    }
    Ok(w)
}
