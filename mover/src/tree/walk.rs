//! Walks a directory tree into the canonical entry list: pre-order, children sorted by name
//! bytes, never following symlinks, hard links folded into `HardLink` entries. Sender, receiver
//! (to verify) and tests all use this one walk, so equal trees give equal lists.
//!
//! The root's children are walked as independent subtrees by up to `WALK_THREADS` threads (a
//! walk is bound by inode reads, so several in flight help even on few cores), then
//! concatenated in name order as each is done and all before it are; hard links are folded in
//! that order over the merged list, so the result does not depend on thread timing. A caller
//! may see each merged piece as it is added (`walk_fd_streaming`): the sender sends the entry
//! list while the walk goes on.

use super::entry::{Entry, EntryKind, Meta, MAX_DEPTH};
use super::xattr::{read_user_xattrs, On};
use crate::error::{show, Error, IoContext, Result};
use crate::units::EntryId;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Threads walking subtrees of the root in parallel.
const WALK_THREADS: usize = 4;
/// Walked subtrees waiting to be merged, at most (the merge takes them as they come, so this
/// only bounds how far walkers get ahead of a slow consumer of the stream).
const WALK_QUEUE: usize = 256;

/// What a walk found, plus what the sender needs to read files back.
pub struct Walked {
    pub entries: Vec<Entry>,
    /// Relative path of each entry.
    pub paths: Vec<Vec<u8>>,
    /// Identity and change time of each entry (the sender's manifest keys on these).
    pub ids: Vec<FileId>,
}

/// Where an entry lives and when its inode last changed: a rename keeps (dev, ino, btime); any
/// write, chmod, chown, xattr or link change moves ctime. Birth time tells a renamed inode from a
/// new file that was given a freed inode number ((0, 0) where the file system has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
    pub btime: (i64, u32),
}

pub fn file_id(st: &Stat, btime: (i64, u32)) -> FileId {
    FileId {
        dev: st.st_dev,
        ino: st.st_ino,
        ctime_sec: st.st_ctime,
        ctime_nsec: st.st_ctime_nsec as u32,
        btime,
    }
}

/// `stat` of `name` in `dir` without following it, by statx so the birth time comes in the same
/// call.
pub fn stat_nofollow(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<(Stat, (i64, u32))> {
    use rustix::fs::{statx, StatxFlags};
    let x = statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )?;
    // SAFETY: Stat is a plain C struct of integers, for which all-zero is a valid value; every
    // field the walk reads is set below.
    let mut st: Stat = unsafe { std::mem::zeroed() };
    st.st_dev = rustix::fs::makedev(x.stx_dev_major, x.stx_dev_minor) as _;
    st.st_ino = x.stx_ino as _;
    st.st_nlink = x.stx_nlink as _;
    st.st_mode = x.stx_mode as _;
    st.st_uid = x.stx_uid as _;
    st.st_gid = x.stx_gid as _;
    st.st_rdev = rustix::fs::makedev(x.stx_rdev_major, x.stx_rdev_minor) as _;
    st.st_size = x.stx_size as _;
    st.st_blocks = x.stx_blocks as _;
    st.st_mtime = x.stx_mtime.tv_sec as _;
    st.st_mtime_nsec = x.stx_mtime.tv_nsec as _;
    st.st_ctime = x.stx_ctime.tv_sec as _;
    st.st_ctime_nsec = x.stx_ctime.tv_nsec as _;
    st.st_atime = x.stx_atime.tv_sec as _;
    st.st_atime_nsec = x.stx_atime.tv_nsec as _;
    Ok((st, btime(&x)))
}

/// The birth time statx gave, (0, 0) where the file system keeps none.
pub fn btime(x: &rustix::fs::Statx) -> (i64, u32) {
    if x.stx_mask & rustix::fs::StatxFlags::BTIME.bits() != 0 {
        (x.stx_btime.tv_sec, x.stx_btime.tv_nsec)
    } else {
        (0, 0)
    }
}

/// What a caller already knows about an entry the walk reaches (from an earlier walk): its
/// `user.*` xattrs and, for a symlink, its target. Any change to either moves the inode's
/// ctime, so the caller vouches for them only for the same inode (number, birth time) with the
/// same ctime, and the walk then skips reading them (a no-op job's walk is half the calls).
pub struct Known {
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub target: Option<Vec<u8>>,
    /// A regular file copied aside (`sender::pin`): the walk describes it by this stat, the
    /// live file's when the copy was taken.
    pub stat: Option<Stat>,
}

/// Asked for each entry walked: its path, identity and kind tag (`EntryKind::tag`, a regular
/// file being a file); `None` makes the walk read everything.
pub type KnownFn<'a> = &'a (dyn Fn(&[u8], &FileId, u8) -> Option<Known> + Sync);

/// A subtree walked on its own: ids are local (0 = the subtree's top), regular files are not
/// yet folded into hard links.
#[derive(Default)]
pub(super) struct Fragment {
    pub(super) entries: Vec<Entry>,
    pub(super) paths: Vec<Vec<u8>>,
    /// (dev, ino) of regular files with more than one link.
    pub(super) link_keys: Vec<Option<(u64, u64)>>,
    pub(super) ids: Vec<FileId>,
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

pub(super) fn read_names(fd: BorrowedFd<'_>, what: &[u8]) -> Result<Vec<Vec<u8>>> {
    crate::beneath::dir_names(fd).ctx(|| format!("reading directory {}", show(what)))
}

pub(super) fn open_subdir(parent: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

pub(crate) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// An entry's mtime and ctime as the walk saw them, to tell later whether anything wrote to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl Stamp {
    /// Nothing wrote to the entry since the walk: it has `size` and the walk's mtime and ctime.
    pub fn unchanged(&self, size: u64, st: &Stat) -> bool {
        st.st_size as u64 == size
            && (st.st_mtime, st.st_mtime_nsec as u32) == self.mtime
            && (st.st_ctime, st.st_ctime_nsec as u32) == self.ctime
    }
}

/// Walks `root`. `xattrs` = read `user.*` xattrs of files and directories.
impl Walked {
    /// Entry `i`'s times as the walk saw them.
    pub fn stamp(&self, i: usize) -> Stamp {
        let (e, id) = (&self.entries[i], &self.ids[i]);
        Stamp {
            mtime: (e.meta.mtime_sec, e.meta.mtime_nsec),
            ctime: (id.ctime_sec, id.ctime_nsec),
        }
    }

    /// Entry `i` still has the size, mtime and ctime the walk saw: nothing wrote to it since.
    pub fn unchanged_since(&self, i: usize, st: &Stat) -> bool {
        let size = if let EntryKind::File { size } = self.entries[i].kind {
            size
        } else {
            st.st_size as u64
        };
        self.stamp(i).unchanged(size, st)
    }
}

/// Reopens the walk's root and makes the one-entry walk of it (the root is always read fresh).
pub(super) fn open_root(root: BorrowedFd<'_>, xattrs: bool) -> Result<(OwnedFd, Walked)> {
    let root_fd = open_subdir(root, b".").ctx(|| "reopening root directory".to_string())?;
    let st = rustix::fs::fstat(&root_fd).ctx(|| "stat of root directory".to_string())?;
    let root_x = if xattrs {
        read_user_xattrs(On::Fd(root_fd.as_fd())).ctx(|| "xattrs of root".into())?
    } else {
        Vec::new()
    };
    let w = Walked {
        entries: vec![Entry {
            parent: EntryId::ROOT,
            name: Vec::new(),
            kind: EntryKind::Dir,
            meta: meta_of(&st),
            xattrs: root_x,
        }],
        paths: vec![Vec::new()],
        ids: vec![file_id(&st, (0, 0))],
    };
    Ok((root_fd, w))
}

/// The root's names, sorted, without the state directory: the receiver's own state is never
/// part of a tree (a replica can be a source in turn).
pub(super) fn root_names(root_fd: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>> {
    let mut names = read_names(root_fd, b"")?;
    names.retain(|n| !crate::tree::reserved_at_top(n));
    Ok(names)
}

pub fn walk(root: &Path, xattrs: bool) -> Result<Walked> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("opening source directory {}", root.display()))?;
    walk_fd(root_fd.as_fd(), xattrs)
}

pub fn walk_fd(root: BorrowedFd<'_>, xattrs: bool) -> Result<Walked> {
    walk_fd_streaming(root, xattrs, None, &mut |_| Ok(()))
}

/// `walk_fd`, handing each piece of the canonical list to `sink` as soon as it is merged (the
/// root first, then each subtree of the root in name order), before the rest is walked. `sink`
/// may rewrite the entries' metadata (an id map); what it leaves is what the walk returns. An
/// error from `sink` stops the walk.
pub fn walk_fd_streaming(
    root: BorrowedFd<'_>,
    xattrs: bool,
    known: Option<KnownFn<'_>>,
    sink: &mut dyn FnMut(&mut [Entry]) -> Result<()>,
) -> Result<Walked> {
    let (root_fd, mut w) = open_root(root, xattrs)?;
    let names = root_names(root_fd.as_fd())?;
    sink(&mut w.entries[..])?;

    let next = AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let threads = WALK_THREADS.min(names.len()).max(1);
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Result<Fragment>)>(WALK_QUEUE);
    // Fold hard links: the first name in canonical order keeps the data, later ones link to it.
    let mut first: HashMap<(u64, u64), EntryId> = HashMap::new();
    let mut failed: Option<Error> = None;
    std::thread::scope(|s| {
        let mut walkers = Vec::with_capacity(threads);
        for _ in 0..threads {
            let tx = tx.clone();
            let (names, next, stop, root_fd) = (&names, &next, &stop, &root_fd);
            walkers.push(s.spawn(move || loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else { break };
                let f = walk_subtree(root_fd.as_fd(), name, xattrs, known);
                if tx.send((i, f)).is_err() {
                    break;
                }
            }));
        }
        drop(tx);
        // Subtrees done out of order wait here until those before them are merged.
        let mut waiting: HashMap<usize, Result<Fragment>> = HashMap::new();
        let mut merged = 0usize;
        for (i, f) in rx.iter() {
            if failed.is_some() {
                continue; // draining, so no walker stays blocked on the queue
            }
            waiting.insert(i, f);
            while let Some(f) = waiting.remove(&merged) {
                merged += 1;
                let start = w.entries.len();
                let step = f.and_then(|f| {
                    merge(&mut w, f, &mut first);
                    sink(&mut w.entries[start..])
                });
                if let Err(e) = step {
                    stop.store(true, Ordering::Relaxed);
                    failed = Some(e);
                    break;
                }
            }
        }
        // Joined here, so a walker's panic is this error rather than the scope's panic.
        let panicked = walkers.into_iter().any(|h| h.join().is_err());
        if failed.is_none() && (panicked || merged != names.len()) {
            failed = Some(Error::Panicked("a walker thread".into()));
        }
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(w),
    }
}

/// Appends a walked subtree of the root to `w`, renumbering it and folding its regular files
/// into hard links of the first name of their inode seen so far.
fn merge(w: &mut Walked, f: Fragment, first: &mut HashMap<(u64, u64), EntryId>) {
    let base = w.entries.len() as u32;
    w.ids.extend(f.ids);
    for (mut e, (p, k)) in f
        .entries
        .into_iter()
        .zip(f.paths.into_iter().zip(f.link_keys))
    {
        let id = EntryId(w.entries.len() as u32);
        e.parent = if id.0 == base {
            EntryId::ROOT
        } else {
            EntryId(base + e.parent.0)
        };
        if let Some(k) = k {
            match first.get(&k) {
                Some(&t) => e.kind = EntryKind::HardLink { target: t },
                None => {
                    first.insert(k, id);
                }
            }
        }
        w.entries.push(e);
        w.paths.push(p);
    }
}

/// Pre-order walk of `name` inside `parent` (a single entry if it is not a directory).
fn walk_subtree(
    parent: BorrowedFd<'_>,
    name: &[u8],
    xattrs: bool,
    known: Option<KnownFn<'_>>,
) -> Result<Fragment> {
    let mut f = Fragment::default();
    if let Some(fd) = visit(
        parent,
        name.to_vec(),
        EntryId(0),
        &[],
        &mut f,
        xattrs,
        known,
    )? {
        walk_below(&mut f, fd, EntryId(0), 1, xattrs, known)?;
    }
    Ok(f)
}

/// Appends to `f`, in pre-order, everything below its directory entry `id` (open as `fd`),
/// which lies `depth` directories below the walk's root (1 for a child of the root).
pub(super) fn walk_below(
    f: &mut Fragment,
    fd: OwnedFd,
    id: EntryId,
    depth: usize,
    xattrs: bool,
    known: Option<KnownFn<'_>>,
) -> Result<()> {
    let names = read_names(fd.as_fd(), &f.paths[id.index()])?;
    let mut stack: Vec<Frame> = vec![Frame {
        fd,
        id,
        names,
        next: 0,
    }];
    loop {
        let level = depth - 1 + stack.len();
        let Some(top) = stack.last_mut() else { break };
        if top.next == top.names.len() {
            stack.pop();
            continue;
        }
        let name = std::mem::take(&mut top.names[top.next]);
        top.next += 1;
        let pid = top.id;
        if level >= MAX_DEPTH {
            return Err(Error::Limit(format!(
                "{}: deeper than {MAX_DEPTH} directories",
                show(&f.paths[pid.index()])
            )));
        }
        let parent_path = f.paths[pid.index()].clone();
        if let Some(fd) = visit(top.fd.as_fd(), name, pid, &parent_path, f, xattrs, known)? {
            let id = EntryId(f.entries.len() as u32 - 1);
            let names = read_names(fd.as_fd(), &f.paths[id.index()])?;
            stack.push(Frame {
                fd,
                id,
                names,
                next: 0,
            });
        }
    }
    Ok(())
}

/// Records entry `name` of directory `dirfd`; returns an open fd if it is a directory. Records
/// nothing if `name` is gone (deleted since its directory was listed).
pub(super) fn visit(
    dirfd: BorrowedFd<'_>,
    name: Vec<u8>,
    parent: EntryId,
    parent_path: &[u8],
    f: &mut Fragment,
    xattrs: bool,
    known: Option<KnownFn<'_>>,
) -> Result<Option<OwnedFd>> {
    let path = join(parent_path, &name);
    let (st, btime) = match stat_nofollow(dirfd, name.as_slice()) {
        Ok(x) => x,
        // Deleted since the directory was listed: it is not part of this walk.
        Err(e) if e == rustix::io::Errno::NOENT => return Ok(None),
        Err(e) => return Err(e).ctx(|| format!("stat {}", show(&path))),
    };
    let id = file_id(&st, btime);
    let tag = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => EntryKind::Dir.tag(),
        FileType::RegularFile => EntryKind::File { size: 0 }.tag(),
        FileType::Symlink => EntryKind::Symlink { target: Vec::new() }.tag(),
        _ => EntryKind::Special {
            file_type: 0,
            rdev: 0,
        }
        .tag(),
    };
    let mut known = known.and_then(|k| k(&path, &id, tag));
    let (st, id) = match known.as_ref().and_then(|k| k.stat) {
        Some(pinned) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
            (pinned, file_id(&pinned, btime))
        }
        _ => (st, id),
    };
    let mut key = None;
    let mut child: Option<OwnedFd> = None;
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {
            child = Some(
                open_subdir(dirfd, &name).ctx(|| format!("opening directory {}", show(&path)))?,
            );
            EntryKind::Dir
        }
        FileType::RegularFile => {
            if st.st_nlink > 1 {
                key = Some((st.st_dev, st.st_ino));
            }
            EntryKind::File {
                size: st.st_size as u64,
            }
        }
        FileType::Symlink => match known.as_mut().and_then(|k| k.target.take()) {
            Some(target) => EntryKind::Symlink { target },
            None => {
                let t = rustix::fs::readlinkat(dirfd, name.as_slice(), Vec::new())
                    .ctx(|| format!("readlink {}", show(&path)))?;
                EntryKind::Symlink {
                    target: t.into_bytes(),
                }
            }
        },
        FileType::Fifo | FileType::Socket | FileType::CharacterDevice | FileType::BlockDevice => {
            EntryKind::Special {
                file_type: st.st_mode & libc::S_IFMT,
                rdev: st.st_rdev,
            }
        }
        FileType::Unknown => return Ok(None),
    };
    let xa = match (&kind, xattrs, known) {
        (EntryKind::Dir | EntryKind::File { .. }, true, Some(k)) => k.xattrs,
        (EntryKind::Dir | EntryKind::File { .. }, true, None) => {
            read_user_xattrs(On::At(dirfd, &name)).ctx(|| format!("xattrs of {}", show(&path)))?
        }
        _ => Vec::new(),
    };
    f.entries.push(Entry {
        parent,
        name,
        kind,
        meta: meta_of(&st),
        xattrs: xa,
    });
    f.paths.push(path);
    f.link_keys.push(key);
    f.ids.push(id);
    Ok(child)
}
