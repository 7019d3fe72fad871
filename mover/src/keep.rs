//! Kept policy snapshots: read-only point-in-time copies of a tree under its reserved
//! `.snapshot/<id>_<policy>/` directory (`tree::SNAPSHOT_DIR`), which walks, hashes and the
//! receiver's clean-up all skip. A source keeps one when a snapshot policy fires; a target
//! keeps one of the recovery point a policy snapshot's job just committed.
//!
//! A copy is a btrfs snapshot where the tree is a subvolume (made read-only with the subvolume
//! flag), else a reflink clone of every file with the immutable flag on every file and
//! directory. There is no full-copy fallback: a policy that silently doubled the data at every
//! fire would fill the disk, so a file system with neither is refused (`unsupported`).

use crate::beneath;
use crate::error::{Error, IoContext, Result};
use crate::tree_copy::CopyMethod;
use rustix::fs::{FileType, IFlags, Mode, OFlags};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Longest kept snapshot name (`<id>_<policy>`).
pub const MAX_NAME_LEN: usize = 200;
/// Directories deep a read-only flag is set or cleared through (a tree deeper than this is not
/// one mover replicated: its walks have the same bound).
const MAX_DEPTH: usize = 4096;

const BTRFS_IOC_SUBVOL_GETFLAGS: libc::c_ulong = 0x8008_9419;
const BTRFS_IOC_SUBVOL_SETFLAGS: libc::c_ulong = 0x4008_941a;
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;

/// Whether `name` can name a kept snapshot: one short component of printable ASCII.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Why `root` cannot keep snapshots (None: it can): it is neither a btrfs subvolume nor on a
/// file system with reflinks. Names the file system, for the operator's error.
pub fn unsupported(root: &std::path::Path) -> Option<String> {
    if crate::snapshot::is_btrfs_subvolume(root) {
        return None;
    }
    crate::snapshot::unsupported(root, crate::snapshot::Provider::Reflink)?;
    let fs = rustix::fs::statfs(root)
        .map(|s| crate::snapshot::fs_name(s.f_type))
        .unwrap_or_else(|_| "an unknown file system".into());
    Some(format!(
        "{} is on {fs}, which has neither snapshots nor reflinks: policy snapshots need a \
         btrfs subvolume or a file system with reflinks (XFS with reflink=1, btrfs)",
        root.display()
    ))
}

/// `root`'s `.snapshot`, created if missing without moving the root's mtime (it is replicated).
pub fn snapshot_dir(root: BorrowedFd<'_>) -> Result<OwnedFd> {
    let name = std::str::from_utf8(crate::tree::SNAPSHOT_DIR).unwrap_or(".snapshot");
    let dir = crate::snapshot::reserved_dir(root, name)?;
    rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o755))
        .ctx(|| "chmod of .snapshot".to_string())?;
    Ok(dir)
}

/// Makes `.snapshot/<name>` a read-only copy of the tree at `root` (without its reserved
/// directories). A copy of that name left by an earlier try is replaced.
pub fn take(root: BorrowedFd<'_>, name: &str) -> Result<CopyMethod> {
    check_name(name)?;
    let dir = snapshot_dir(root)?;
    release_in(dir.as_fd(), name)?;
    let method = crate::tree_copy::copy_tree(root, dir.as_fd(), name, false)?;
    if let Err(e) = set_read_only(dir.as_fd(), name, true) {
        release_in(dir.as_fd(), name)?;
        return Err(e);
    }
    Ok(method)
}

/// Removes `.snapshot/<name>` of `root` (nothing if it is not there).
pub fn release(root: BorrowedFd<'_>, name: &str) -> Result<()> {
    check_name(name)?;
    match existing_dir(root)? {
        Some(dir) => release_in(dir.as_fd(), name),
        None => Ok(()),
    }
}

/// `root`'s `.snapshot`, if it has one.
fn existing_dir(root: BorrowedFd<'_>) -> Result<Option<OwnedFd>> {
    match open_dir(root, crate::tree::SNAPSHOT_DIR) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).ctx(|| "opening .snapshot".to_string()),
    }
}

/// Makes `.snapshot/<name>` of `root` writable again, keeping it (its relationship was
/// deleted: what was replicated is the operator's data now).
pub fn unlock(root: BorrowedFd<'_>, name: &str) -> Result<()> {
    check_name(name)?;
    let dir = open_dir(root, crate::tree::SNAPSHOT_DIR).ctx(|| "opening .snapshot".to_string())?;
    set_read_only(dir.as_fd(), name, false)
}

fn check_name(name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::Unsupported(format!(
            "{name:?} is not a kept snapshot's name"
        )))
    }
}

fn release_in(dir: BorrowedFd<'_>, name: &str) -> Result<()> {
    if beneath::stat_opt(dir, name.as_bytes())
        .ctx(|| format!("stat .snapshot/{name}"))?
        .is_none()
    {
        return Ok(());
    }
    set_read_only(dir, name, false)?;
    beneath::remove_any(dir, name.as_bytes(), 0).ctx(|| format!("removing .snapshot/{name}"))?;
    Ok(())
}

fn open_dir(parent: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<OwnedFd> {
    beneath::open_in(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
}

/// Makes the copy `name` in `parent` read-only (`on`) or writable again.
fn set_read_only(parent: BorrowedFd<'_>, name: &str, on: bool) -> Result<()> {
    let fd = open_dir(parent, name.as_bytes()).ctx(|| format!("opening .snapshot/{name}"))?;
    if crate::snapshot::is_btrfs_subvolume_fd(fd.as_fd()) {
        return subvol_read_only(fd.as_fd(), on).ctx(|| format!("btrfs flags of .snapshot/{name}"));
    }
    immutable_tree(fd.as_fd(), on, 0).ctx(|| format!("immutable flags of .snapshot/{name}"))
}

fn subvol_read_only(fd: BorrowedFd<'_>, on: bool) -> std::io::Result<()> {
    let mut flags: u64 = 0;
    // SAFETY: BTRFS_IOC_SUBVOL_GETFLAGS writes one u64 into `flags`, which outlives the call.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            BTRFS_IOC_SUBVOL_GETFLAGS as _,
            &mut flags as *mut u64,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let want = if on {
        flags | BTRFS_SUBVOL_RDONLY
    } else {
        flags & !BTRFS_SUBVOL_RDONLY
    };
    if want == flags {
        return Ok(());
    }
    // SAFETY: BTRFS_IOC_SUBVOL_SETFLAGS reads one u64 from `want` during the call only.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            BTRFS_IOC_SUBVOL_SETFLAGS as _,
            &want as *const u64,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets or clears the immutable flag on every regular file and directory under `dir` and on
/// `dir` itself: a directory's flag is set after its entries' and cleared before them (an
/// immutable directory's entries cannot change, but their own flags can). Symlinks, devices,
/// sockets and fifos cannot carry it (they cannot be opened for the ioctl without side
/// effects); the immutable directory holding them keeps them from being replaced or removed.
fn immutable_tree(dir: BorrowedFd<'_>, on: bool, depth: usize) -> std::io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(rustix::io::Errno::LOOP.into());
    }
    if !on {
        set_flag(dir, false)?;
    }
    for name in beneath::dir_names(dir)? {
        let Some(st) = beneath::stat_opt(dir, &name)? else {
            continue;
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let sub = open_dir(dir, &name)?;
                immutable_tree(sub.as_fd(), on, depth + 1)?;
            }
            FileType::RegularFile => {
                let f = beneath::open_in(dir, &name, OFlags::RDONLY, Mode::empty())?;
                set_flag(f.as_fd(), on)?;
            }
            _ => {}
        }
    }
    if on {
        set_flag(dir, true)?;
    }
    Ok(())
}

fn set_flag(fd: BorrowedFd<'_>, on: bool) -> std::io::Result<()> {
    let flags = rustix::fs::ioctl_getflags(fd)?;
    let want = if on {
        flags | IFlags::IMMUTABLE
    } else {
        flags - IFlags::IMMUTABLE
    };
    if want != flags {
        rustix::fs::ioctl_setflags(fd, want)?;
    }
    Ok(())
}
