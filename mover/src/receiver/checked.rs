//! The checks a receiver's workers take of the files they finish, which spare the
//! verification (verify.rs) looking at those files again by name.

use crate::tree::entry::{Entry, EntryKind};
use crate::tree::hash::{same_but_name, HashOptions};
use crate::tree::walk::meta_of;
use crate::tree::xattr::{read_user_xattrs, On};
use rustix::fs::FileType;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// Regular files the session's own workers compared with their entries once they had finished
/// them: the inode each one checked (0: none). A worker has the file open when it sets the
/// last of its metadata, so it takes the stat and the user xattrs through that descriptor, as
/// the verification would take them through the name. The verification then looks only at
/// what the directory's listing says of the name: if it is a regular file with the inode
/// checked, nothing is asked again; else (another item put there, a file system whose listing
/// gives no types or other numbers than its stats) the name is looked at as any other.
///
/// What this leaves out is what another process does to a checked file, or at its name,
/// between the worker's check and the verification (a window as long as the rest of the job):
/// a change of the inode in place, a new file that happens to get the deleted one's inode
/// number, a mount over the name (a listing shows the covered inode). The receiver itself
/// does none of these to a file after checking it; what another process does after the
/// verification was never seen either.
///
/// Written by the workers (each entry by the one that finished it), read by the verifying
/// threads once the workers have ended.
pub struct Checked {
    /// The target's device: a file elsewhere (under a mount inside the target) is not recorded.
    dev: u64,
    ino: Box<[AtomicU64]>,
}

impl Checked {
    /// Room for `entries` entries of a target on device `dev`.
    pub fn new(dev: u64, entries: usize) -> Checked {
        Checked {
            dev,
            ino: (0..entries).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records nothing: for a verification that walks the whole target, and for a write place
    /// (its checks would be in another process than the verification).
    pub fn off() -> Checked {
        Checked::new(0, 0)
    }

    /// Compares the regular file open as `fd`, which this receiver has just finished for entry
    /// `i`, with `want`, and records its inode if they agree. A file that differs is not
    /// recorded: the verification looks at it through its name and reports the difference.
    pub fn check(&self, i: usize, fd: BorrowedFd<'_>, want: &Entry, opts: HashOptions) {
        // A check that cannot be taken is no error: the verification asks the name instead.
        let Some(slot) = self.ino.get(i) else {
            return;
        };
        let Ok(st) = rustix::fs::fstat(fd) else {
            return;
        };
        if st.st_dev != self.dev
            || st.st_ino == 0
            || FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        {
            return;
        }
        let Ok(xattrs) = read_user_xattrs(On::Fd(fd)) else {
            return;
        };
        let got = Entry {
            parent: want.parent,
            name: Vec::new(),
            kind: EntryKind::File {
                size: st.st_size as u64,
            },
            meta: meta_of(&st),
            xattrs,
        };
        if same_but_name(&got, want, opts) {
            slot.store(st.st_ino, Ordering::Release);
        }
    }

    /// Forgets entry `i`'s check: the receiver sets the file's metadata again after it.
    pub fn forget(&self, i: usize) {
        if let Some(slot) = self.ino.get(i) {
            slot.store(0, Ordering::Release);
        }
    }

    /// The device and inode checked for entry `i`, if one was.
    pub(super) fn inode(&self, i: usize) -> Option<(u64, u64)> {
        let ino = self.ino.get(i)?.load(Ordering::Acquire);
        (ino != 0).then_some((self.dev, ino))
    }
}
