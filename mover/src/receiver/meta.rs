//! Applying an entry's metadata to an inode. Order matters: chown clears set-id bits, so mode
//! comes after owner; anything that writes data or xattrs bumps mtime, so times come last.

use crate::tree::entry::{Entry, Meta};
use rustix::fs::{Gid, Timespec, Timestamps, Uid};
use std::io;
use std::os::fd::BorrowedFd;

pub fn times(m: &Meta) -> Timestamps {
    Timestamps {
        // Access time is not replicated; UTIME_OMIT leaves the target's alone.
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT as _,
        },
        last_modification: Timespec {
            tv_sec: m.mtime_sec,
            tv_nsec: m.mtime_nsec as _,
        },
    }
}

/// Owner, mode, xattrs (exactly `e`'s) and mtime of an open regular file or directory.
/// Gives `name` in `dir` (not followed) the entry's uid and gid.
pub fn chown_at(dir: BorrowedFd<'_>, name: &[u8], e: &Entry) -> io::Result<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(Uid::from_raw(e.meta.uid)),
        Some(Gid::from_raw(e.meta.gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

pub fn apply_fd(fd: BorrowedFd<'_>, e: &Entry, owners: bool) -> io::Result<()> {
    if owners {
        let (u, g) = (Uid::from_raw(e.meta.uid), Gid::from_raw(e.meta.gid));
        rustix::fs::fchown(fd, Some(u), Some(g))?;
    }
    rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(e.meta.mode))?;
    // Sync, not just set: an item updated in place may carry xattrs the source dropped.
    crate::tree::xattr::sync_user_xattrs(crate::tree::xattr::On::Fd(fd), &e.xattrs)?;
    rustix::fs::futimens(fd, &times(&e.meta))?;
    Ok(())
}

/// Owner, mode (special files only: a symlink has none of its own) and mtime of the symlink or
/// special file `name` in `dir`, never following it.
pub fn apply_link_or_special(
    dir: BorrowedFd<'_>,
    name: &[u8],
    e: &Entry,
    owners: bool,
) -> io::Result<()> {
    use rustix::fs::{AtFlags, Mode};
    if owners {
        chown_at(dir, name, e)?;
    }
    if matches!(e.kind, crate::tree::entry::EntryKind::Special { .. }) {
        rustix::fs::chmodat(
            dir,
            name,
            Mode::from_raw_mode(e.meta.mode),
            AtFlags::empty(),
        )?;
    }
    rustix::fs::utimensat(dir, name, &times(&e.meta), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Metadata of an inline file this session just created with `mode & 0o777`: owner only if the
/// kernel did not already assign the right one, mode only if set-id/sticky bits are wanted or
/// the umask cleared some bits, then xattrs and mtime.
pub fn apply_new_file(
    fd: BorrowedFd<'_>,
    e: &Entry,
    owners: bool,
    owner_is_default: bool,
    umask: u32,
) -> io::Result<()> {
    let chowned = owners && !owner_is_default;
    if chowned {
        rustix::fs::fchown(
            fd,
            Some(Uid::from_raw(e.meta.uid)),
            Some(Gid::from_raw(e.meta.gid)),
        )?;
    }
    if e.meta.mode & 0o7000 != 0 || e.meta.mode & umask != 0 {
        rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(e.meta.mode))?;
    }
    for (k, v) in &e.xattrs {
        rustix::fs::fsetxattr(fd, k.as_slice(), v, rustix::fs::XattrFlags::empty())?;
    }
    rustix::fs::futimens(fd, &times(&e.meta))?;
    Ok(())
}
