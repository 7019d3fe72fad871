//! `user.*` extended attributes, read and written by path relative to a directory fd.

use super::entry::{MAX_XATTRS_PER_ENTRY, MAX_XATTR_NAME, MAX_XATTR_VALUE, XATTR_PREFIX};
use std::io;
use std::os::fd::BorrowedFd;

/// What an xattr call acts on: a path whose final component is not followed, or an open fd
/// (needed for directories reached only through an fd, where `/proc/self/fd/N` itself would be
/// the symlink acted on).
#[derive(Clone, Copy)]
pub enum On<'a> {
    Path(&'a [u8]),
    Fd(BorrowedFd<'a>),
}

impl On<'_> {
    fn list(self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            On::Path(p) => rustix::fs::llistxattr(p, buf),
            On::Fd(fd) => rustix::fs::flistxattr(fd, buf),
        }
    }
    fn get(self, name: &[u8], buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            On::Path(p) => rustix::fs::lgetxattr(p, name, buf),
            On::Fd(fd) => rustix::fs::fgetxattr(fd, name, buf),
        }
    }
    fn set(self, name: &[u8], v: &[u8]) -> rustix::io::Result<()> {
        match self {
            On::Path(p) => rustix::fs::lsetxattr(p, name, v, rustix::fs::XattrFlags::empty()),
            On::Fd(fd) => rustix::fs::fsetxattr(fd, name, v, rustix::fs::XattrFlags::empty()),
        }
    }
    fn remove(self, name: &[u8]) -> rustix::io::Result<()> {
        match self {
            On::Path(p) => rustix::fs::lremovexattr(p, name),
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
            return Err(io::Error::other(format!("more than {MAX_XATTRS_PER_ENTRY} user xattrs")));
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
