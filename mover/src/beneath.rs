//! Path operations that cannot leave a root directory.
//!
//! Every lookup goes through `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS`: `..` that would climb out, absolute paths and symlinks anywhere in the
//! path (including ones planted in the destination) are refused by the kernel itself. Final
//! components are then acted on relative to the resolved parent fd with `*at` calls that do not
//! follow them. Long paths are resolved a chunk of components at a time, so depth is not bounded
//! by PATH_MAX.

use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Longest path handed to one openat2 call; PATH_MAX is 4096.
const RESOLVE_CHUNK: usize = 3072;

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Splits `a/b/c` into (`a/b`, `c`); a bare name has an empty parent.
pub fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[][..], rel),
    }
}

/// Opens directory `rel` beneath `root` (empty `rel` = the root itself) as an O_PATH-free,
/// readable directory fd usable as a base for `*at` calls.
pub fn open_dir(root: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if rel.is_empty() {
        return Ok(openat2(root, ".", flags, Mode::empty(), resolve_flags())?);
    }
    if rel.len() <= RESOLVE_CHUNK {
        return Ok(openat2(root, rel, flags, Mode::empty(), resolve_flags())?);
    }
    // Walk chunk by chunk, each chunk ending at a component boundary.
    let mut cur: Option<OwnedFd> = None;
    let mut rest = rel;
    while !rest.is_empty() {
        let cut = if rest.len() <= RESOLVE_CHUNK {
            rest.len()
        } else {
            match rest[..RESOLVE_CHUNK].iter().rposition(|&b| b == b'/') {
                Some(i) if i > 0 => i,
                _ => return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG)),
            }
        };
        let (chunk, tail) = rest.split_at(cut);
        let base = match &cur {
            Some(fd) => fd.as_fd(),
            None => root,
        };
        let next = openat2(base, chunk, flags, Mode::empty(), resolve_flags())?;
        cur = Some(next);
        rest = tail.strip_prefix(b"/").unwrap_or(tail);
    }
    match cur {
        Some(fd) => Ok(fd),
        None => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// Opens `name` (one component) inside `dir` without following a symlink there.
pub fn open_in(dir: BorrowedFd<'_>, name: &[u8], flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    debug_assert!(!name.contains(&b'/'));
    Ok(openat2(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        mode,
        resolve_flags(),
    )?)
}

/// The directory of the last file opened through it: files come in walk order, so most share
/// their parent with the one before, and opening relative to it resolves one name instead of
/// the whole path (the directory itself was resolved beneath the root).
#[derive(Default)]
pub struct DirCache {
    parent: Vec<u8>,
    fd: Option<OwnedFd>,
}

impl DirCache {
    /// Opens file `rel` beneath `root`, like `open_file`.
    pub fn open_file(
        &mut self,
        root: BorrowedFd<'_>,
        rel: &[u8],
        flags: OFlags,
        mode: Mode,
    ) -> io::Result<OwnedFd> {
        let (parent, name) = split_parent(rel);
        open_in(self.dir(root, parent)?, name, flags, mode)
    }

    /// Directory `parent` beneath `root` (empty: the root), opened unless it is the last one.
    pub fn dir(&mut self, root: BorrowedFd<'_>, parent: &[u8]) -> io::Result<BorrowedFd<'_>> {
        if self.fd.is_none() || self.parent != parent {
            self.fd = None;
            let fd = open_dir(root, parent)?;
            self.parent.clear();
            self.parent.extend_from_slice(parent);
            self.fd = Some(fd);
        }
        match &self.fd {
            Some(fd) => Ok(fd.as_fd()),
            None => unreachable!("set above"),
        }
    }
}

/// Opens file `rel` beneath `root`.
pub fn open_file(
    root: BorrowedFd<'_>,
    rel: &[u8],
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let (parent, name) = split_parent(rel);
    if rel.len() <= RESOLVE_CHUNK {
        return Ok(openat2(
            root,
            rel,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            mode,
            resolve_flags(),
        )?);
    }
    let dir = open_dir(root, parent)?;
    open_in(dir.as_fd(), name, flags, mode)
}

/// `/proc/self/fd/N/name`: lets path-only calls (l*xattr) act on `name` inside an already
/// resolved directory fd without resolving the directory path again.
pub fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let mut p = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if !name.is_empty() {
        p.push(b'/');
        p.extend_from_slice(name);
    }
    p
}

/// Opens the root of a tree (`what` names it in errors: "source directory", "destination
/// root"). O_DIRECTORY makes anything but a directory fail here.
pub fn open_root(root: &std::path::Path, what: &str) -> crate::error::Result<OwnedFd> {
    use crate::error::IoContext;
    rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("opening {what} {}", root.display()))
}

/// Names in directory `fd` except `.` and `..`, sorted by bytes.
pub fn dir_names(fd: BorrowedFd<'_>) -> rustix::io::Result<Vec<Vec<u8>>> {
    Ok(dir_listing(fd)?.into_iter().map(|l| l.name).collect())
}

/// One name of a directory listing, with what the listing itself says of its item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: Vec<u8>,
    pub ino: u64,
    /// `Unknown` where the file system does not give types in listings.
    pub file_type: rustix::fs::FileType,
}

/// `dir_names` with the inode number and type the listing gives each name.
pub fn dir_listing(fd: BorrowedFd<'_>) -> rustix::io::Result<Vec<Listed>> {
    let mut dir = rustix::fs::Dir::read_from(fd)?;
    let mut names = Vec::new();
    while let Some(ent) = dir.read() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(Listed {
                name: n.to_vec(),
                ino: ent.ino(),
                file_type: ent.file_type(),
            });
        }
    }
    names.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(names)
}

/// `name` in `dir`, not following a final symlink; None if there is nothing there.
pub fn stat_opt(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes `name` in `dir`, recursively for directories, never following symlinks.
pub fn remove_any(dir: BorrowedFd<'_>, name: &[u8], depth: usize) -> rustix::io::Result<u64> {
    let st = match stat_opt(dir, name)? {
        Some(s) => s,
        None => return Ok(0),
    };
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
        rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty())?;
        return Ok(1);
    }
    if depth > crate::tree::entry::MAX_DEPTH {
        return Err(rustix::io::Errno::LOOP);
    }
    let sub = open_in(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))?;
    let mut removed = 0;
    for n in dir_names(sub.as_fd())? {
        removed += remove_any(sub.as_fd(), &n, depth + 1)?;
    }
    rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::REMOVEDIR)?;
    Ok(removed + 1)
}
