//! `user.*` extended attributes, read and written by path relative to a directory fd.

use super::entry::{MAX_XATTRS_PER_ENTRY, MAX_XATTR_NAME, MAX_XATTR_VALUE, XATTR_PREFIX};
use std::io;
use std::os::fd::BorrowedFd;

/// What an xattr call acts on: an open fd (directories reached only through an fd, where
/// `/proc/self/fd/N` itself would be the symlink acted on), or a name inside a directory fd
/// (final symlink not followed; value calls go through `/proc/self/fd/N/name`).
#[derive(Clone, Copy)]
pub enum On<'a> {
    Fd(BorrowedFd<'a>),
    /// `name` inside directory `dir`, never following a final symlink.
    At(BorrowedFd<'a>, &'a [u8]),
}

/// listxattrat(2), Linux 6.13+: lists by (dirfd, name) without resolving a /proc path.
/// Returns None where the kernel lacks it (ENOSYS) so the caller falls back.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn listxattrat(
    dir: BorrowedFd<'_>,
    name: &[u8],
    buf: &mut [u8],
) -> Option<rustix::io::Result<usize>> {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Same number on x86_64 and the generic table (aarch64).
    const SYS_LISTXATTRAT: libc::c_long = 465;
    static MISSING: AtomicBool = AtomicBool::new(false);
    if MISSING.load(Ordering::Relaxed) {
        return None;
    }
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: listxattrat(dfd, path, at_flags, list, size) reads the NUL-terminated `cname` and
    // writes at most `buf.len()` bytes into `buf`; both outlive the call.
    let r = unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir.as_raw_fd() as libc::c_long,
            cname.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW as libc::c_long,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if r >= 0 {
        return Some(Ok(r as usize));
    }
    let errno = rustix::io::Errno::from_raw_os_error(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    );
    if errno == rustix::io::Errno::NOSYS {
        MISSING.store(true, Ordering::Relaxed);
        return None;
    }
    Some(Err(errno))
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn listxattrat(_: BorrowedFd<'_>, _: &[u8], _: &mut [u8]) -> Option<rustix::io::Result<usize>> {
    None
}

impl On<'_> {
    fn list(self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            On::Fd(fd) => rustix::fs::flistxattr(fd, buf),
            On::At(dir, name) => match listxattrat(dir, name, buf) {
                Some(r) => r,
                None => {
                    rustix::fs::llistxattr(crate::beneath::proc_path(dir, name).as_slice(), buf)
                }
            },
        }
    }
    fn get(self, name: &[u8], buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            On::At(dir, n) => {
                rustix::fs::lgetxattr(crate::beneath::proc_path(dir, n).as_slice(), name, buf)
            }
            On::Fd(fd) => rustix::fs::fgetxattr(fd, name, buf),
        }
    }
    fn set(self, name: &[u8], v: &[u8]) -> rustix::io::Result<()> {
        match self {
            On::At(dir, n) => rustix::fs::lsetxattr(
                crate::beneath::proc_path(dir, n).as_slice(),
                name,
                v,
                rustix::fs::XattrFlags::empty(),
            ),
            On::Fd(fd) => rustix::fs::fsetxattr(fd, name, v, rustix::fs::XattrFlags::empty()),
        }
    }
    fn remove(self, name: &[u8]) -> rustix::io::Result<()> {
        match self {
            On::At(dir, n) => {
                rustix::fs::lremovexattr(crate::beneath::proc_path(dir, n).as_slice(), name)
            }
            On::Fd(fd) => rustix::fs::fremovexattr(fd, name),
        }
    }
}

/// Upper bound on the name list buffer (names of all xattrs, any namespace).
const MAX_LIST_BYTES: usize = 64 * 1024;

fn is_unsupported(e: &rustix::io::Errno) -> bool {
    *e == rustix::io::Errno::NOTSUP || *e == rustix::io::Errno::PERM
}

/// Reads the `user.*` xattrs of `on`, sorted by name.
/// File systems without xattr support yield an empty list.
pub fn read_user_xattrs(on: On<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut list = vec![0u8; 4096];
    let n = loop {
        match on.list(&mut list[..]) {
            Ok(n) => break n,
            Err(e) if e == rustix::io::Errno::RANGE && list.len() < MAX_LIST_BYTES => {
                list.resize(MAX_LIST_BYTES, 0);
            }
            Err(e) if is_unsupported(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in list[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        if !name.starts_with(XATTR_PREFIX) || name.len() > MAX_XATTR_NAME {
            continue;
        }
        if out.len() == MAX_XATTRS_PER_ENTRY {
            return Err(io::Error::other(format!(
                "more than {MAX_XATTRS_PER_ENTRY} user xattrs"
            )));
        }
        let mut val = vec![0u8; MAX_XATTR_VALUE];
        let len = match on.get(name, &mut val[..]) {
            Ok(len) => len,
            // Removed between list and get: it is simply not there any more.
            Err(e) if e == rustix::io::Errno::NODATA => continue,
            Err(e) => return Err(e.into()),
        };
        val.truncate(len);
        out.push((name.to_vec(), val));
    }
    out.sort();
    Ok(out)
}

/// Makes the `user.*` xattrs of `on` exactly `want` (sorted by name).
pub fn sync_user_xattrs(on: On<'_>, want: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
    let have = read_user_xattrs(on)?;
    if have == want {
        return Ok(());
    }
    for (k, _) in &have {
        if !want.iter().any(|(w, _)| w == k) {
            on.remove(k)?;
        }
    }
    for (k, v) in want {
        if !have.iter().any(|(hk, hv)| hk == k && hv == v) {
            on.set(k, v)?;
        }
    }
    Ok(())
}
