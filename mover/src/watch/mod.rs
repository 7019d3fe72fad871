//! Change detection for continuous replication: which directories of a source tree changed
//! since a point in time, so the next job starts as soon as something changed and walks only
//! what did (`tree::narrow`).
//!
//! Two backends behind one `Watcher`:
//! - **fanotify** with a file-system mark (`FAN_MARK_FILESYSTEM`) reporting the directory's
//!   file handle and the entry's name (`FAN_REPORT_DFID_NAME`): one mark covers the whole tree,
//!   however many directories it has, and no event is lost to a race with a new directory.
//!   Needs CAP_SYS_ADMIN and a file system that gives file handles; events from the rest of the
//!   file system are resolved and dropped.
//! - **inotify**, where fanotify is refused (no privilege, a btrfs subvolume that is not its
//!   file system's root): one watch per directory, added as directories appear.
//!
//! What a watcher promises: once `Watcher::new` returned, every change under the root shows up
//! in a later `drain`, either as its directory in `Changes::dirs` or as `Changes::rescan`
//! (queue overflow, a directory renamed under inotify, more directories than the bound). The
//! caller therefore walks the whole tree once *after* the watcher exists, and narrows walks
//! after that.
//!
//! A directory is reported when its listing changed or one of its entries' inode changed
//! (data, size, mode, owner, times, xattrs): the rule `tree::narrow` relies on. The root's own
//! inode changing reports the root (its event names the root in its parent).

mod fanotify;
mod inotify;

use crate::error::{Error, IoContext, Result};
use std::collections::BTreeSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// Directories remembered between drains, at most: beyond it the caller is told to rescan (a
/// full walk costs less than a set as big as the tree).
pub const MAX_CHANGED_DIRS: usize = 1 << 16;
/// Bytes read from the kernel per `read` of the event queue.
const READ_BUF: usize = 64 * 1024;
/// `read`s per drain at most, so a flood of events cannot keep `drain` from returning.
const MAX_READS_PER_DRAIN: usize = 256;
/// File systems whose changes can come from elsewhere (other clients, a FUSE daemon's own
/// backend): neither fanotify nor inotify sees those, so watching them would miss changes
/// silently. (f_type magic, name.)
const REMOTE_FILE_SYSTEMS: [(i64, &str); 8] = [
    (0x6969, "NFS"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x6573_5546, "FUSE"),
    (0x00C3_6400, "CephFS"),
    (0x0102_1997, "9P"),
    (0x0BD0_0BD0, "Lustre"),
    (0x4750_4653, "GPFS"),
];

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Fanotify,
    Inotify,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Fanotify => "fanotify",
            Backend::Inotify => "inotify",
        })
    }
}

/// What changed under the root since the last drain.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Relative paths of the directories whose listing or entries changed (the root is the
    /// empty path).
    pub dirs: BTreeSet<Vec<u8>>,
    /// Events were lost or cannot be placed: only a full walk is safe.
    pub rescan: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty() && !self.rescan
    }

    /// Adds `other` to these changes.
    pub fn merge(&mut self, other: Changes) {
        self.rescan |= other.rescan;
        if !self.rescan {
            self.dirs.extend(other.dirs);
        }
        self.bound(MAX_CHANGED_DIRS);
    }

    /// Past `max` directories, a rescan (and the set is dropped: a rescan covers it).
    pub fn bound(&mut self, max: usize) {
        if self.rescan || self.dirs.len() > max {
            self.rescan = true;
            self.dirs.clear();
        }
    }

    /// Records a change of the entry `name` in the directory at `dir` (relative to the root),
    /// unless it is one of the tree's reserved directories (state, snapshots) or inside one.
    fn record(&mut self, dir: Vec<u8>, name: &[u8]) {
        if dir.is_empty() && crate::tree::reserved_at_top(name) {
            return;
        }
        let top = dir.split(|&b| b == b'/').next().unwrap_or_default();
        if !dir.is_empty() && crate::tree::reserved_at_top(top) {
            return;
        }
        if !self.rescan {
            self.dirs.insert(dir);
        }
    }
}

/// A watch on one source tree.
pub struct Watcher {
    inner: Inner,
}

enum Inner {
    Fanotify(fanotify::Fanotify),
    Inotify(inotify::Inotify),
}

impl Watcher {
    /// Watches the tree at `root` with `backend`, or with fanotify and else inotify when
    /// `None`.
    pub fn new(root: &Path, backend: Option<Backend>) -> Result<Watcher> {
        let fd = crate::beneath::open_root(root, "source directory")?;
        let magic = rustix::fs::fstatfs(&fd)
            .ctx(|| format!("statfs {}", root.display()))?
            .f_type as i64;
        if let Some(name) = remote(magic) {
            return Err(Error::Unsupported(format!(
                "{} is on {name}, whose changes made elsewhere no local watch sees: replicating on an interval instead",
                root.display()
            )));
        }
        let inner = match backend {
            Some(Backend::Fanotify) => Inner::Fanotify(fanotify::Fanotify::new(root, fd)?),
            Some(Backend::Inotify) => Inner::Inotify(inotify::Inotify::new(fd)?),
            None => match fanotify::Fanotify::new(root, dup(&fd)?) {
                Ok(f) => Inner::Fanotify(f),
                Err(e) => {
                    tracing::info!(root = %root.display(), "fanotify unavailable ({e}); watching with inotify");
                    Inner::Inotify(inotify::Inotify::new(fd)?)
                }
            },
        };
        Ok(Watcher { inner })
    }

    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Fanotify(_) => Backend::Fanotify,
            Inner::Inotify(_) => Backend::Inotify,
        }
    }

    /// Waits up to `timeout` for events; true if some are ready to drain.
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        let fd = match &self.inner {
            Inner::Fanotify(f) => f.fd(),
            Inner::Inotify(i) => i.fd(),
        };
        readable(fd, timeout)
    }

    /// Reads every event queued now into `into`.
    pub fn drain(&mut self, into: &mut Changes) -> Result<()> {
        match &mut self.inner {
            Inner::Fanotify(f) => f.drain(into)?,
            Inner::Inotify(i) => i.drain(into)?,
        }
        into.bound(MAX_CHANGED_DIRS);
        Ok(())
    }
}

/// The name of the file system with magic `magic` if changes to it can be made elsewhere.
fn remote(magic: i64) -> Option<&'static str> {
    REMOTE_FILE_SYSTEMS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name)
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0).ctx(|| "duplicating the root descriptor".to_string())
}

/// Whether `fd` becomes readable within `timeout`.
fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> Result<bool> {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    match rustix::event::poll(&mut fds, Some(&ts)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e).ctx(|| "waiting for change events".to_string()),
    }
}

/// The path of an open descriptor, as the kernel names it (`/proc/self/fd`); `None` for an
/// unlinked one.
fn fd_path(fd: BorrowedFd<'_>) -> Result<Option<Vec<u8>>> {
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let p = rustix::fs::readlink(link.as_str(), Vec::new())
        .ctx(|| "naming a watched directory".to_string())?
        .into_bytes();
    if p.ends_with(b" (deleted)") || !p.starts_with(b"/") {
        return Ok(None);
    }
    Ok(Some(p))
}

/// `path` relative to `root` (both absolute, as `fd_path` gives them), if it is inside it.
fn relative<'p>(root: &[u8], path: &'p [u8]) -> Option<&'p [u8]> {
    if root == b"/" {
        return Some(path.strip_prefix(b"/").unwrap_or(path));
    }
    let rest = path.strip_prefix(root)?;
    match rest {
        [] => Some(rest),
        [b'/', tail @ ..] => Some(tail),
        _ => None,
    }
}

fn unsupported(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unsupported(format!("{what}: {e}"))
}

/// The root as the kernel names it, and its parent and name (an event on the root's own inode
/// names the root inside its parent).
struct RootName {
    path: Vec<u8>,
    parent: Vec<u8>,
    name: Vec<u8>,
}

impl RootName {
    fn of(fd: &OwnedFd) -> Result<RootName> {
        let path = fd_path(fd.as_fd())?
            .ok_or_else(|| Error::Unsupported("the source directory was removed".into()))?;
        let cut = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
        Ok(RootName {
            parent: if cut == 0 {
                b"/".to_vec()
            } else {
                path[..cut].to_vec()
            },
            name: path[cut + 1..].to_vec(),
            path,
        })
    }

    /// Places an event on `name` in the directory named `dir` (absolute). fanotify names an
    /// event on a directory's own inode "." in that directory: it belongs to the parent.
    fn place(&self, dir: &[u8], name: &[u8], into: &mut Changes) {
        if name == b"." {
            let cut = dir.iter().rposition(|&b| b == b'/').unwrap_or(0);
            let parent = if cut == 0 { &b"/"[..] } else { &dir[..cut] };
            return self.place(parent, &dir[cut + 1..], into);
        }
        if let Some(rel) = relative(&self.path, dir) {
            into.record(rel.to_vec(), name);
        } else if dir == self.parent.as_slice() && name == self.name.as_slice() {
            into.record(Vec::new(), b"");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_placed_relative_to_the_root_and_outside_ones_dropped() {
        assert_eq!(relative(b"/a/b", b"/a/b"), Some(&b""[..]));
        assert_eq!(relative(b"/a/b", b"/a/b/c/d"), Some(&b"c/d"[..]));
        assert_eq!(relative(b"/a/b", b"/a/bc"), None);
        assert_eq!(relative(b"/a/b", b"/a"), None);
        assert_eq!(relative(b"/", b"/x"), Some(&b"x"[..]));
    }

    #[test]
    fn the_state_directory_is_never_a_change() {
        let mut c = Changes::default();
        c.record(Vec::new(), b".mover-state");
        c.record(b".mover-state".to_vec(), b"snap-1");
        c.record(b".mover-state/clone-1/a".to_vec(), b"f");
        assert!(c.is_empty());
        c.record(b".mover-statex".to_vec(), b"f");
        c.record(Vec::new(), b"f");
        assert_eq!(c.dirs.len(), 2);
    }

    #[test]
    fn network_and_fuse_file_systems_are_not_watched() {
        assert_eq!(remote(0x6969), Some("NFS"));
        assert_eq!(remote(0x6573_5546), Some("FUSE"));
        assert_eq!(remote(0xEF53), None, "ext4");
        assert_eq!(remote(0x0102_1994), None, "tmpfs");
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Watcher::new(dir.path(), None).is_ok(),
            "a local file system is"
        );
    }

    #[test]
    fn too_many_directories_become_a_rescan() {
        let mut c = Changes::default();
        for i in 0..10u32 {
            c.record(i.to_string().into_bytes(), b"f");
        }
        c.bound(9);
        assert!(c.rescan && c.dirs.is_empty());
        c.record(b"x".to_vec(), b"f");
        assert!(c.dirs.is_empty(), "a rescan covers later changes");
    }
}
