//! inotify backend: one watch per directory of the tree, added as directories appear.
//!
//! A watch is keyed by the directory's path when it was added; a directory renamed inside the
//! tree keeps its watch under the old path, so a directory rename makes the next drain a rescan
//! and rebuilds every watch (rare next to file changes, and always safe).

use super::{unsupported, Changes, RootName, MAX_READS_PER_DRAIN, READ_BUF};
use crate::error::{show, IoContext, Result};
use crate::tree::walk::join;
use rustix::fs::inotify::{self as ino, ReadFlags, WatchFlags};
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Directories watched at most: past it the tree is too big for inotify's per-user budget.
const MAX_WATCHES: usize = 1 << 20;

pub(super) struct Inotify {
    fd: OwnedFd,
    root: OwnedFd,
    name: RootName,
    /// Watch descriptor -> directory path relative to the root.
    dirs: HashMap<i32, Vec<u8>>,
    buf: Vec<MaybeUninit<u8>>,
}

fn flags() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::DELETE_SELF
        | WatchFlags::ONLYDIR
        | WatchFlags::DONT_FOLLOW
        | WatchFlags::EXCL_UNLINK
}

impl Inotify {
    pub(super) fn new(root: OwnedFd) -> Result<Inotify> {
        let fd = ino::init(ino::CreateFlags::CLOEXEC | ino::CreateFlags::NONBLOCK)
            .map_err(|e| unsupported("inotify_init", e))?;
        let name = RootName::of(&root)?;
        let mut me = Inotify {
            fd,
            root,
            name,
            dirs: HashMap::new(),
            buf: vec![MaybeUninit::uninit(); READ_BUF],
        };
        me.watch_tree(Vec::new())?;
        Ok(me)
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Watches the directory at `rel` and every directory below it.
    fn watch_tree(&mut self, rel: Vec<u8>) -> Result<()> {
        let mut todo = vec![rel];
        while let Some(rel) = todo.pop() {
            if self.dirs.len() >= MAX_WATCHES {
                return Err(unsupported(
                    "inotify",
                    format!("more than {MAX_WATCHES} directories"),
                ));
            }
            let mut abs = self.name.path.clone();
            if !rel.is_empty() {
                abs.push(b'/');
                abs.extend_from_slice(&rel);
            }
            let wd = match ino::add_watch(&self.fd, abs.as_slice(), flags()) {
                Ok(wd) => wd,
                // Gone or replaced since it was listed: its parent's event covers it.
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => continue,
                Err(e) => {
                    return Err(unsupported(
                        &format!("an inotify watch on {}", show(&abs)),
                        e,
                    ))
                }
            };
            let dir = crate::beneath::open_dir(self.root.as_fd(), &rel);
            self.dirs.insert(wd, rel.clone());
            let Ok(dir) = dir else { continue };
            let names = crate::beneath::dir_names(dir.as_fd())
                .ctx(|| format!("reading directory {}", show(&rel)))?;
            for name in names {
                if rel.is_empty() && crate::tree::reserved_at_top(&name) {
                    continue;
                }
                let st = rustix::fs::statat(
                    &dir,
                    name.as_slice(),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                );
                if st.is_ok_and(|s| rustix::fs::FileType::from_raw_mode(s.st_mode).is_dir()) {
                    todo.push(join(&rel, &name));
                }
            }
        }
        Ok(())
    }

    pub(super) fn drain(&mut self, into: &mut Changes) -> Result<()> {
        let mut rebuild = false;
        let mut new_dirs = Vec::new();
        let mut empty = false;
        for _ in 0..MAX_READS_PER_DRAIN {
            let mut r = ino::Reader::new(&self.fd, &mut self.buf);
            loop {
                let ev = match r.next() {
                    Ok(ev) => ev,
                    Err(rustix::io::Errno::AGAIN) => {
                        empty = true;
                        break;
                    }
                    Err(rustix::io::Errno::INTR) => break,
                    Err(e) => return Err(e).ctx(|| "reading inotify events".to_string()),
                };
                let flags = ev.events();
                if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                    into.rescan = true;
                    continue;
                }
                if flags.contains(ReadFlags::IGNORED) {
                    self.dirs.remove(&ev.wd());
                    continue;
                }
                let Some(dir) = self.dirs.get(&ev.wd()) else {
                    continue;
                };
                let name = ev.file_name().map(|n| n.to_bytes()).unwrap_or(b"");
                if name.is_empty() {
                    // The watched directory's own inode: an event of its parent.
                    let (parent, own) = crate::beneath::split_parent(dir);
                    into.record(parent.to_vec(), own);
                    continue;
                }
                into.record(dir.clone(), name);
                if flags.contains(ReadFlags::ISDIR) {
                    if flags.intersects(ReadFlags::MOVED_FROM) {
                        rebuild = true;
                    } else if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                        new_dirs.push(join(dir, name));
                    }
                }
            }
            if empty {
                break;
            }
        }
        // Still events after the bound on reads: they come faster than they are read.
        into.rescan |= !empty;
        self.after(into, rebuild, new_dirs)
    }

    /// Watches directories that appeared; rebuilds every watch after a directory moved.
    fn after(&mut self, into: &mut Changes, rebuild: bool, new_dirs: Vec<Vec<u8>>) -> Result<()> {
        if rebuild {
            for wd in self.dirs.keys().copied().collect::<Vec<_>>() {
                let _ = ino::remove_watch(&self.fd, wd);
            }
            self.dirs.clear();
            into.rescan = true;
            return self.watch_tree(Vec::new());
        }
        for d in new_dirs {
            self.watch_tree(d)?;
        }
        Ok(())
    }
}
