//! Point-in-time sources: a job replicates one consistent state of the source, never a file
//! torn by a writer. Three providers behind one interface:
//!
//! - `Btrfs`: a read-only snapshot of the source subvolume (one atomic point in time for the
//!   whole tree; inode numbers and ctimes are those of the live files, so the manifest still
//!   recognises unchanged and moved items).
//! - `Reflink`: every regular file is cloned (FICLONE, shared extents: no data copied) into a
//!   private tree and the clone is read. Each file is consistent (its stat is checked around the
//!   clone and the clone retried if it moved); the tree as a whole is as of the walk. The live
//!   files' identities are kept for the manifest.
//! - `Plain`: the live tree is read, and every file sent is stat'ed again after the data went:
//!   one that changed while being read fails the job with `SourceChanged` (retryable), so a
//!   recovery point never holds a torn file.
//!
//! Scratch space (snapshot, clone) lives in `<source>/.mover-state/`, which walks skip: it is on
//! the source's file system, as snapshots and clones must be.

use crate::beneath;
use crate::error::{show, Error, IoContext, Result};
use crate::tree::walk::{file_id, stat_nofollow, FileId};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

const SCRATCH: &str = ".mover-state";
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
/// Inode number of every btrfs subvolume's root directory.
const BTRFS_SUBVOL_ROOT_INO: u64 = 256;
/// A file that keeps changing while it is cloned is given up on after this many tries.
const MAX_CLONE_TRIES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Provider {
    Btrfs,
    Reflink,
    Plain,
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "btrfs" => Ok(Provider::Btrfs),
            "reflink" => Ok(Provider::Reflink),
            "plain" | "none" => Ok(Provider::Plain),
            other => Err(format!(
                "unknown snapshot provider {other:?}: btrfs, reflink or plain"
            )),
        }
    }
}

/// The source as the job reads it.
pub struct Frozen {
    pub provider: Provider,
    /// Directory to walk and read.
    pub root: PathBuf,
    /// Identities of the live items by relative path, where the frozen copy has its own.
    pub ids: Option<HashMap<Vec<u8>, FileId>>,
    cleanup: Option<Cleanup>,
}

enum Cleanup {
    Subvolume { parent: OwnedFd, name: String },
    Tree { parent: OwnedFd, name: String },
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let r = match self.cleanup.take() {
            Some(Cleanup::Subvolume { parent, name }) => btrfs_destroy(parent.as_fd(), &name),
            Some(Cleanup::Tree { parent, name }) => {
                crate::beneath::remove_any(parent.as_fd(), name.as_bytes(), 0)
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            }
            None => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!(
                "could not remove the job's snapshot under {}: {e}",
                self.root.display()
            );
        }
    }
}

impl Frozen {
    /// Keeps a btrfs snapshot after the job (as the next job's base); returns its name.
    pub fn keep(&mut self) -> Option<String> {
        match self.cleanup.take() {
            Some(Cleanup::Subvolume { name, .. }) => Some(name),
            other => {
                self.cleanup = other;
                None
            }
        }
    }
}

/// Path of a kept snapshot of `src`.
pub fn kept_path(src: &Path, name: &str) -> PathBuf {
    src.join(SCRATCH).join(name)
}

/// Deletes a kept snapshot (best effort: a leftover only costs space).
pub fn drop_kept(src: &Path, name: &str) {
    let r = beneath::open_root(&src.join(SCRATCH), "snapshot directory")
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|d| btrfs_destroy(d.as_fd(), name));
    if let Err(e) = r {
        tracing::warn!(
            "could not delete the old snapshot {name} of {}: {e}",
            src.display()
        );
    }
}

/// Is `src` the root of a btrfs subvolume (so it can be snapshotted)?
pub fn is_btrfs_subvolume(src: &Path) -> bool {
    let Ok(fd) = beneath::open_root(src, "source directory") else {
        return false;
    };
    is_btrfs_subvolume_fd(fd.as_fd())
}

/// `is_btrfs_subvolume` of an open directory.
pub(crate) fn is_btrfs_subvolume_fd(fd: BorrowedFd<'_>) -> bool {
    let fs = rustix::fs::fstatfs(fd)
        .map(|s| s.f_type == BTRFS_SUPER_MAGIC)
        .unwrap_or(false);
    fs && rustix::fs::fstat(fd)
        .map(|s| s.st_ino == BTRFS_SUBVOL_ROOT_INO)
        .unwrap_or(false)
}

/// A file system's name from its statfs magic, for messages.
pub(crate) fn fs_name(magic: i64) -> String {
    match magic {
        BTRFS_SUPER_MAGIC => "btrfs".into(),
        XFS_SUPER_MAGIC => "XFS".into(),
        0xEF53 => "ext2/3/4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x6969 => "NFS".into(),
        0x794C_7630 => "overlayfs".into(),
        0x2FC1_2FC1 => "ZFS".into(),
        other => format!("a file system of type {other:#x}"),
    }
}

/// Why `provider` cannot take a point in time of `src` (None: it can, as far as the file
/// system says), so a relationship asking for it is refused when created, not at its first job.
pub fn unsupported(src: &Path, provider: Provider) -> Option<String> {
    if provider == Provider::Plain {
        return None;
    }
    let fd = match beneath::open_root(src, "source directory") {
        Ok(fd) => fd,
        Err(e) => return Some(e.to_string()),
    };
    let magic = match rustix::fs::fstatfs(&fd) {
        Ok(s) => s.f_type,
        Err(e) => return Some(format!("statfs of {}: {e}", src.display())),
    };
    let fs = fs_name(magic);
    match provider {
        Provider::Btrfs if !is_btrfs_subvolume_fd(fd.as_fd()) => Some(format!(
            "{} is on {fs} and is not a btrfs subvolume: a btrfs snapshot needs one (make the \
             source a subvolume with `btrfs subvolume create`, or use reflink or plain)",
            src.display()
        )),
        Provider::Reflink if magic != BTRFS_SUPER_MAGIC && magic != XFS_SUPER_MAGIC => {
            Some(format!(
                "{} is on {fs}, which has no reflinks (FICLONE): a reflink clone needs XFS \
                 (reflink=1) or btrfs; use plain here",
                src.display()
            ))
        }
        _ => None,
    }
}

/// The provider used when none is asked for: a btrfs snapshot where the source is a subvolume,
/// else plain (a reflink clone costs a metadata copy of the whole tree, so it is opt-in).
pub fn auto(src: &Path) -> Provider {
    if is_btrfs_subvolume(src) {
        Provider::Btrfs
    } else {
        Provider::Plain
    }
}

pub(crate) fn random_name(prefix: &str) -> Result<String> {
    let id = crate::units::SessionId::random().ctx(|| "random snapshot name".to_string())?;
    Ok(format!("{prefix}-{id}"))
}

/// The source's scratch directory (`STATE_DIR` at its top), created if missing without moving
/// the root's mtime (it is replicated).
pub(crate) fn scratch_dir(root: BorrowedFd<'_>) -> Result<OwnedFd> {
    reserved_dir(root, SCRATCH)
}

/// The reserved directory `name` at the top of the tree at `root` (`tree::reserved_at_top`),
/// created if missing without moving the root's mtime (it is replicated).
pub(crate) fn reserved_dir(root: BorrowedFd<'_>, name: &str) -> Result<OwnedFd> {
    debug_assert!(crate::tree::reserved_at_top(name.as_bytes()));
    let before = rustix::fs::fstat(root).ctx(|| "stat of the tree's root".to_string())?;
    let scratch = crate::durable::ensure_dir(root, name)?;
    let after = rustix::fs::fstat(root).ctx(|| "stat of the source root".to_string())?;
    if (after.st_mtime, after.st_mtime_nsec) != (before.st_mtime, before.st_mtime_nsec) {
        rustix::fs::futimens(root, &times(&before))
            .ctx(|| "restoring the mtime of the source root".to_string())?;
    }
    Ok(scratch)
}

/// Freezes `src` with `provider`.
pub fn freeze(src: &Path, provider: Provider) -> Result<Frozen> {
    if provider == Provider::Plain {
        return Ok(Frozen {
            provider,
            root: src.to_path_buf(),
            ids: None,
            cleanup: None,
        });
    }
    let root = beneath::open_root(src, "source directory")?;
    let scratch = scratch_dir(root.as_fd())?;
    match provider {
        Provider::Btrfs => {
            if !is_btrfs_subvolume(src) {
                return Err(Error::Unsupported(format!(
                    "{} is not a btrfs subvolume: use --snapshot reflink or plain",
                    src.display()
                )));
            }
            let name = random_name("snap")?;
            btrfs_snapshot(root.as_fd(), scratch.as_fd(), &name, true)
                .ctx(|| format!("creating a read-only btrfs snapshot of {}", src.display()))?;
            let path = src.join(SCRATCH).join(&name);
            Ok(Frozen {
                provider,
                root: path,
                ids: None,
                cleanup: Some(Cleanup::Subvolume {
                    parent: scratch,
                    name,
                }),
            })
        }
        Provider::Reflink => {
            let name = random_name("clone")?;
            rustix::fs::mkdirat(&scratch, name.as_str(), Mode::from_raw_mode(0o700))
                .ctx(|| "creating the clone directory".to_string())?;
            let frozen_root = src.join(SCRATCH).join(&name);
            let mut frozen = Frozen {
                provider,
                root: frozen_root,
                ids: Some(HashMap::new()),
                cleanup: Some(Cleanup::Tree {
                    parent: scratch,
                    name: name.clone(),
                }),
            };
            let dst = match &frozen.cleanup {
                Some(Cleanup::Tree { parent, .. }) => beneath::open_in(
                    parent.as_fd(),
                    name.as_bytes(),
                    OFlags::RDONLY | OFlags::DIRECTORY,
                    Mode::empty(),
                )
                .ctx(|| "opening the clone directory".to_string())?,
                _ => unreachable!("a reflink freeze has a tree to clean up"),
            };
            let ids = frozen.ids.get_or_insert_with(HashMap::new);
            clone_tree(root.as_fd(), dst.as_fd(), ids, CloneHow::Reflink)?;
            Ok(frozen)
        }
        Provider::Plain => unreachable!("handled above"),
    }
}

#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

const BTRFS_IOC_SNAP_CREATE_V2: libc::c_ulong = 0x5000_9417;
const BTRFS_IOC_SNAP_DESTROY: libc::c_ulong = 0x5000_940f;
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;

/// A snapshot of subvolume `subvol` named `name` in directory `into` (same btrfs file system).
pub(crate) fn btrfs_snapshot(
    subvol: BorrowedFd<'_>,
    into: BorrowedFd<'_>,
    name: &str,
    readonly: bool,
) -> std::io::Result<()> {
    assert!(
        !name.is_empty() && name.len() < 4040 && !name.contains('/'),
        "snapshot name is one short component"
    );
    let mut a = VolArgsV2 {
        fd: subvol.as_raw_fd() as i64,
        transid: 0,
        flags: if readonly { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; 4040],
    };
    a.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: BTRFS_IOC_SNAP_CREATE_V2 reads a `struct btrfs_ioctl_vol_args_v2` (this 4096-byte
    // layout, from linux/btrfs.h) during the call only; both fds stay open for the call.
    let r = unsafe {
        libc::ioctl(
            into.as_raw_fd(),
            BTRFS_IOC_SNAP_CREATE_V2 as _,
            &a as *const VolArgsV2,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn btrfs_destroy(parent: BorrowedFd<'_>, name: &str) -> std::io::Result<()> {
    let mut a = VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    a.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: BTRFS_IOC_SNAP_DESTROY reads a `struct btrfs_ioctl_vol_args` (4096 bytes, from
    // linux/btrfs.h) during the call only; the parent fd stays open for the call.
    let r = unsafe {
        libc::ioctl(
            parent.as_raw_fd(),
            BTRFS_IOC_SNAP_DESTROY as _,
            &a as *const VolArgs,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// FICLONE: `dst` shares all of `src`'s extents.
fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> std::io::Result<()> {
    rustix::fs::ioctl_ficlone(dst, src).map_err(std::io::Error::from)
}

/// How `clone_tree` gives each file its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloneHow {
    /// FICLONE: the copy shares the original's extents (instant, no space).
    Reflink,
    /// A full copy of the data (any file system; time and space of the data).
    Copy,
}

/// Clones the tree under `src` (without a `.mover-state` at its top) into the empty directory
/// `dst`, recording the live identities.
pub(crate) fn clone_tree(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    ids: &mut HashMap<Vec<u8>, FileId>,
    how: CloneHow,
) -> Result<()> {
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut dirs: Vec<(Vec<u8>, rustix::fs::Stat)> = Vec::new();
    let root_st = rustix::fs::fstat(src).ctx(|| "stat of the source root".to_string())?;
    ids.insert(Vec::new(), file_id(&root_st, (0, 0)));
    dirs.push((Vec::new(), root_st));
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let sdir = beneath::open_dir(src, &rel).ctx(|| format!("opening {}", show(&rel)))?;
        let ddir =
            beneath::open_dir(dst, &rel).ctx(|| format!("opening clone of {}", show(&rel)))?;
        for name in
            crate::beneath::dir_names(sdir.as_fd()).ctx(|| format!("listing {}", show(&rel)))?
        {
            if rel.is_empty() && crate::tree::reserved_at_top(&name) {
                continue;
            }
            let path = if rel.is_empty() {
                name.clone()
            } else {
                [rel.as_slice(), b"/", name.as_slice()].concat()
            };
            let (st, btime) = match stat_nofollow(sdir.as_fd(), name.as_slice()) {
                Ok(s) => s,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e).ctx(|| format!("stat {}", show(&path))),
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    rustix::fs::mkdirat(&ddir, name.as_slice(), Mode::from_raw_mode(0o700))
                        .ctx(|| format!("mkdir clone {}", show(&path)))?;
                    ids.insert(path.clone(), file_id(&st, btime));
                    dirs.push((path.clone(), st));
                    stack.push(path);
                }
                FileType::RegularFile => {
                    if st.st_nlink > 1 {
                        if let Some(first) = links.get(&(st.st_dev, st.st_ino)) {
                            let (fp, fname) = beneath::split_parent(first);
                            let fdir = beneath::open_dir(dst, fp)
                                .ctx(|| format!("opening clone of {}", show(fp)))?;
                            rustix::fs::linkat(
                                &fdir,
                                fname,
                                &ddir,
                                name.as_slice(),
                                AtFlags::empty(),
                            )
                            .ctx(|| format!("hard link {}", show(&path)))?;
                            ids.insert(path, file_id(&st, btime));
                            continue;
                        }
                        links.insert((st.st_dev, st.st_ino), path.clone());
                    }
                    let live = clone_file(sdir.as_fd(), ddir.as_fd(), (&name, &name), &path, how)?;
                    ids.insert(path, file_id(&live, btime));
                }
                FileType::Symlink => {
                    let t = rustix::fs::readlinkat(&sdir, name.as_slice(), Vec::new())
                        .ctx(|| format!("readlink {}", show(&path)))?;
                    rustix::fs::symlinkat(t.as_bytes(), &ddir, name.as_slice())
                        .ctx(|| format!("symlink clone {}", show(&path)))?;
                    set_meta_at(ddir.as_fd(), &name, &st)
                        .ctx(|| format!("metadata of clone {}", show(&path)))?;
                    ids.insert(path, file_id(&st, btime));
                }
                FileType::Fifo
                | FileType::Socket
                | FileType::CharacterDevice
                | FileType::BlockDevice => {
                    let ft = FileType::from_raw_mode(st.st_mode);
                    rustix::fs::mknodat(
                        &ddir,
                        name.as_slice(),
                        ft,
                        Mode::from_raw_mode(0o600),
                        st.st_rdev,
                    )
                    .ctx(|| format!("mknod clone {}", show(&path)))?;
                    set_meta_at(ddir.as_fd(), &name, &st)
                        .ctx(|| format!("metadata of clone {}", show(&path)))?;
                    ids.insert(path, file_id(&st, btime));
                }
                FileType::Unknown => {}
            }
        }
    }
    // Directories last, deepest first, so creating their children does not move their mtime.
    for (rel, st) in dirs.iter().rev() {
        let s = beneath::open_dir(src, rel).ctx(|| format!("opening {}", show(rel)))?;
        let d = beneath::open_dir(dst, rel).ctx(|| format!("opening clone of {}", show(rel)))?;
        copy_meta_fd(s.as_fd(), d.as_fd(), st)
            .ctx(|| format!("metadata of clone {}", show(rel)))?;
    }
    Ok(())
}

/// Clones one file, retrying while its size, mtime or ctime move during the clone. Returns the
/// live stat the clone matches.
fn clone_file(
    sdir: BorrowedFd<'_>,
    ddir: BorrowedFd<'_>,
    (name, dname): (&[u8], &[u8]),
    path: &[u8],
    how: CloneHow,
) -> Result<rustix::fs::Stat> {
    for _ in 0..MAX_CLONE_TRIES {
        let sf = beneath::open_in(sdir, name, OFlags::RDONLY, Mode::empty())
            .ctx(|| format!("opening {}", show(path)))?;
        let before = rustix::fs::fstat(&sf).ctx(|| format!("stat {}", show(path)))?;
        let df = beneath::open_in(
            ddir,
            dname,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
            Mode::from_raw_mode(0o600),
        )
        .ctx(|| format!("creating clone of {}", show(path)))?;
        match how {
            CloneHow::Reflink => ficlone(df.as_fd(), sf.as_fd()).ctx(|| {
                format!(
                    "cloning {} (the file system must support reflinks)",
                    show(path)
                )
            })?,
            CloneHow::Copy => {
                // std's copy between two files is copy_file_range: in the kernel, no user buffer.
                let mut from = std::fs::File::from(rustix::io::dup(&sf).ctx(|| "dup".to_string())?);
                let mut to = std::fs::File::from(rustix::io::dup(&df).ctx(|| "dup".to_string())?);
                std::io::copy(&mut from, &mut to).ctx(|| format!("copying {}", show(path)))?;
            }
        }
        let after = rustix::fs::fstat(&sf).ctx(|| format!("stat {}", show(path)))?;
        if change_key(&before) == change_key(&after) {
            copy_meta_fd(sf.as_fd(), df.as_fd(), &before)
                .ctx(|| format!("metadata of clone {}", show(path)))?;
            return Ok(before);
        }
    }
    Err(Error::SourceChanged {
        message: format!("{} kept changing while being cloned", show(path)),
        paths: vec![path.to_vec()],
    })
}

/// What moves when a file's data or size is written (the inode's change time moves with any
/// change): equal keys around a read or copy mean nothing wrote to the file meanwhile.
pub(crate) fn change_key(s: &rustix::fs::Stat) -> (i64, i64, u64, i64, u64) {
    (
        s.st_size,
        s.st_mtime,
        s.st_mtime_nsec,
        s.st_ctime,
        s.st_ctime_nsec,
    )
}

/// Copies the file `name` of `sdir` to `dname` in `ddir` as `clone_file` does: a reflink where
/// the file system has them, else a copy of the data. Returns the live stat the copy matches.
pub(crate) fn clone_or_copy(
    sdir: BorrowedFd<'_>,
    ddir: BorrowedFd<'_>,
    name: &[u8],
    dname: &[u8],
    path: &[u8],
) -> Result<rustix::fs::Stat> {
    match clone_file(sdir, ddir, (name, dname), path, CloneHow::Reflink) {
        Err(Error::Io { source, .. })
            if matches!(
                source.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY)
            ) =>
        {
            clone_file(sdir, ddir, (name, dname), path, CloneHow::Copy)
        }
        other => other,
    }
}

/// The mtime of `st`, access time left alone, for futimens/utimensat.
pub(crate) fn times(st: &rustix::fs::Stat) -> rustix::fs::Timestamps {
    rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

fn copy_meta_fd(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    st: &rustix::fs::Stat,
) -> std::io::Result<()> {
    if rustix::process::geteuid().is_root() {
        rustix::fs::fchown(
            dst,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
        )?;
    }
    rustix::fs::fchmod(dst, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    let x = crate::tree::xattr::read_user_xattrs(crate::tree::xattr::On::Fd(src))?;
    crate::tree::xattr::sync_user_xattrs(crate::tree::xattr::On::Fd(dst), &x)?;
    rustix::fs::futimens(dst, &times(st))?;
    Ok(())
}

fn set_meta_at(dir: BorrowedFd<'_>, name: &[u8], st: &rustix::fs::Stat) -> std::io::Result<()> {
    if rustix::process::geteuid().is_root() {
        rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
        crate::receiver::meta::chmod_at(dir, name, st.st_mode & 0o7777)?;
    }
    rustix::fs::utimensat(dir, name, &times(st), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}
