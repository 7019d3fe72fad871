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

/// Gives `name` in `dir` the permission bits `mode`, never following it: fchmodat follows a
/// final symlink, so one planted where the target held a file (between jobs, by anyone who
/// can write there) would take the mode, set-id bits too, to whatever it names, outside the
/// root. A symlink found there is an error (ELOOP): the target is not what its recovery point
/// says, and a symlink has no mode of its own to set.
pub fn chmod_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    static MISSING: AtomicBool = AtomicBool::new(false);
    let planted = || {
        io::Error::other(format!(
            "{} is a symlink where the recovery point holds a file (not followed): {}",
            String::from_utf8_lossy(name),
            io::Error::from_raw_os_error(libc::ELOOP)
        ))
    };
    if !MISSING.load(Ordering::Relaxed) {
        let cname =
            std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: fchmodat2(dirfd, path, mode, flags) (Linux 6.6+) only reads the NUL-terminated
        // `cname`, which outlives the call; `dir` is a borrowed, open descriptor.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                dir.as_raw_fd() as libc::c_long,
                cname.as_ptr(),
                mode as libc::c_long,
                libc::AT_SYMLINK_NOFOLLOW as libc::c_long,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOSYS) => MISSING.store(true, Ordering::Relaxed),
            // EOPNOTSUPP: what the kernel says to a mode change of a symlink itself, or a file
            // system that takes none (the fallback tells which); EPERM: also what a seccomp
            // profile that does not know the call says.
            Some(libc::EOPNOTSUPP | libc::EPERM) => {}
            _ => return Err(e),
        }
    }
    chmod_opened(dir, name, mode).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => planted(),
        _ => e,
    })
}

/// `chmod_at` on kernels without fchmodat2: the inode itself, opened without following it,
/// then changed through its /proc/self/fd link (which names that inode, not a path resolved
/// again). ELOOP on a symlink.
fn chmod_opened(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    use rustix::fs::OFlags;
    use std::os::fd::AsFd;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    if rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode)
        == rustix::fs::FileType::Symlink
    {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    rustix::fs::chmod(
        crate::beneath::proc_path(fd.as_fd(), b"").as_slice(),
        rustix::fs::Mode::from_raw_mode(mode),
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
    use rustix::fs::AtFlags;
    if owners {
        chown_at(dir, name, e)?;
    }
    if matches!(e.kind, crate::tree::entry::EntryKind::Special { .. }) {
        chmod_at(dir, name, e.meta.mode)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_mode_is_set_on_the_entry_itself_and_never_through_a_symlink_with_or_without_fchmodat2() {
        let t = tempfile::tempdir().unwrap();
        let dir = crate::beneath::open_root(t.path(), "test dir").unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"x").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join("link")).unwrap();
        std::fs::write(t.path().join("file"), b"x").unwrap();
        let mode = |p: &str| {
            std::fs::symlink_metadata(t.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        for (i, set) in [chmod_at, chmod_opened].into_iter().enumerate() {
            let want = 0o640 + i as u32;
            set(dir.as_fd(), b"file", want).unwrap();
            assert_eq!(mode("file"), want);
            let e = set(dir.as_fd(), b"link", 0o4777).unwrap_err();
            assert!(
                e.raw_os_error() == Some(libc::ELOOP) || e.to_string().contains("symlink"),
                "{e}"
            );
            assert_eq!(mode("victim"), 0o600);
        }
    }
}
