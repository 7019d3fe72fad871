//! A copy of a tree, as a new directory of a given name in a given directory, by the cheapest
//! method the file systems allow: a btrfs snapshot where the tree is a subvolume and that
//! directory is on the same file system, else a reflink clone of every file, else (only when
//! allowed) a full copy. DR drills (`receiver::drill`) and kept policy snapshots (`keep`, on
//! sources and targets) are made with it.

use crate::beneath;
use crate::error::{Error, IoContext, Result};
use crate::snapshot::CloneHow;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, BorrowedFd};

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyMethod {
    /// A writable btrfs snapshot of the tree's subvolume (instant).
    Snapshot,
    /// FICLONE of every file (metadata work per file, no data copied).
    Reflink,
    /// A full copy of the data.
    Copy,
}

/// Removes `name` from `parent`, a copy that failed (logged, not returned: the failure that
/// caused it is what the caller reports).
pub(crate) fn discard(parent: BorrowedFd<'_>, name: &str) {
    if let Err(e) = beneath::remove_any(parent, name.as_bytes(), 0) {
        tracing::warn!("removing the failed copy {name}: {e}");
    }
}

/// The copy of the tree at `root` (without its reserved directories) as `name` in `parent`:
/// the cheapest method that works here, a full copy only if `allow_copy`.
pub(crate) fn copy_tree(
    root: BorrowedFd<'_>,
    parent: BorrowedFd<'_>,
    name: &str,
    allow_copy: bool,
) -> Result<CopyMethod> {
    // The ioctl itself says whether the parent is on the same btrfs file system (EXDEV if not).
    if crate::snapshot::is_btrfs_subvolume_fd(root) {
        match crate::snapshot::btrfs_snapshot(root, parent, name, false) {
            Ok(()) => {
                // The tree's state directory came along; the copy is the tree only (its
                // removal must not move the root's mtime, which the recovery point holds).
                let fd = beneath::open_in(
                    parent,
                    name.as_bytes(),
                    rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                    rustix::fs::Mode::empty(),
                )
                .ctx(|| "opening the snapshot".to_string())?;
                let st = rustix::fs::fstat(&fd).ctx(|| "stat of the snapshot".to_string())?;
                for reserved in [crate::tree::STATE_DIR, crate::tree::SNAPSHOT_DIR] {
                    beneath::remove_any(fd.as_fd(), reserved, 0)
                        .ctx(|| "removing a reserved directory from the copy".to_string())?;
                }
                rustix::fs::futimens(&fd, &crate::snapshot::times(&st))
                    .ctx(|| "restoring the copy's mtime".to_string())?;
                return Ok(CopyMethod::Snapshot);
            }
            // Another file system, or not permitted: a clone below.
            Err(e) => tracing::info!("no btrfs snapshot for {name} ({e}): cloning"),
        }
    }
    for how in [CloneHow::Reflink, CloneHow::Copy] {
        if how == CloneHow::Copy && !allow_copy {
            return Err(Error::Unsupported(format!(
                "{} cannot hold a btrfs snapshot or reflinks of the tree: a copy there would \
                 be a full copy of its data (time and space)",
                name
            )));
        }
        rustix::fs::mkdirat(parent, name, rustix::fs::Mode::from_raw_mode(0o700))
            .ctx(|| format!("creating {}", name))?;
        let dst = beneath::open_in(
            parent,
            name.as_bytes(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .ctx(|| format!("opening {}", name))?;
        let mut ids = std::collections::HashMap::new();
        match crate::snapshot::clone_tree(root, dst.as_fd(), &mut ids, how) {
            Ok(()) if how == CloneHow::Reflink => return Ok(CopyMethod::Reflink),
            Ok(()) => return Ok(CopyMethod::Copy),
            Err(e) if how == CloneHow::Reflink => {
                tracing::info!("no reflinks for {name} ({e})");
                drop(dst);
                discard(parent, name);
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the copy either returned or failed above")
}
