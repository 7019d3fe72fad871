//! Files that keep changing under the plain provider. A job reads the live tree and fails with
//! `SourceChanged` when a file moved while it was read (the receiver must not commit a torn
//! file); a log appended ten times a second would fail every job. The caller names such files
//! (`SendOptions::pin`, from the last `SourceChanged`) and the next session copies each aside
//! before the walk: a reflink where the file system has them, else a copy, checked against the
//! file's stat before and after (`snapshot::clone_file`). The walk then describes the copy and
//! the workers read it, so the recovery point holds a complete, earlier state of the file.
//!
//! The copies live in `<src>/STATE_DIR/pin-<id>/<n>` (on the source's file system, as reflinks
//! must be) and are removed when the session ends.

use crate::beneath;
use crate::error::{show, IoContext, Result};
use crate::tree::walk::Known;
use crate::tree::xattr::{read_user_xattrs, On};
use rustix::fs::{FileType, Stat};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Files pinned in one session at most (a bounded sample of what changed; the rest are
/// retried as before).
pub const MAX_PINS: usize = 64;
/// A file is copied only once it was left alone this long before the copy (and during it):
/// a writer rewriting a file in place, block after block, is caught between two versions
/// rather than in the middle of one. An appending log is quiet for most of its time.
const QUIET: std::time::Duration = std::time::Duration::from_millis(5);
/// Tries to find a quiet moment per file; then the file is left to the live read (and its
/// session to the check after sending).
const QUIET_TRIES: usize = 8;

/// One file copied aside.
pub(crate) struct Pin {
    /// The live file's stat the copy matches.
    pub stat: Stat,
    /// Where the copy is, relative to the source root.
    pub at: Vec<u8>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The files copied aside for one session, by their path in the tree; removed on drop.
pub(crate) struct Pinned {
    pub files: HashMap<Vec<u8>, Pin>,
    scratch: OwnedFd,
    name: String,
}

impl Pinned {
    /// What the walk uses instead of the live file at `path`.
    pub fn known(&self, path: &[u8]) -> Option<Known> {
        self.files.get(path).map(|p| Known {
            xattrs: p.xattrs.clone(),
            target: None,
            stat: Some(p.stat),
        })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Err(e) = beneath::remove_any(self.scratch.as_fd(), self.name.as_bytes(), 2) {
            tracing::warn!("removing pinned copies {}: {e}", self.name);
        }
    }
}

/// Copies `file` of `sdir` to `copy` in `dir` once it was unchanged for QUIET before and during
/// the copy; the live stat the copy matches, or None if it never was.
fn quiet_copy(
    sdir: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    file: &[u8],
    copy: &[u8],
    path: &[u8],
) -> Result<Option<Stat>> {
    let key = crate::snapshot::change_key;
    for _ in 0..QUIET_TRIES {
        let Some(before) = beneath::stat_opt(sdir, file).ctx(|| format!("stat {}", show(path)))?
        else {
            return Ok(None);
        };
        std::thread::sleep(QUIET);
        match crate::snapshot::clone_or_copy(sdir, dir, file, copy, path) {
            Ok(st) if key(&st) == key(&before) => return Ok(Some(st)),
            Ok(_) | Err(crate::error::Error::SourceChanged { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Copies the regular files among `paths` (relative to `root`) aside. A path that is gone or
/// not a regular file is skipped (the walk sees it as it is).
pub(crate) fn pin(root: BorrowedFd<'_>, paths: &[Vec<u8>]) -> Result<Option<Pinned>> {
    let paths = &paths[..paths.len().min(MAX_PINS)];
    if paths.is_empty() {
        return Ok(None);
    }
    let scratch = crate::snapshot::scratch_dir(root)?;
    let name = crate::snapshot::random_name("pin")?;
    rustix::fs::mkdirat(
        &scratch,
        name.as_str(),
        rustix::fs::Mode::from_raw_mode(0o700),
    )
    .ctx(|| "creating the directory of pinned copies".to_string())?;
    let dir = beneath::open_dir(scratch.as_fd(), name.as_bytes())
        .ctx(|| "opening the directory of pinned copies".to_string())?;
    let mut pinned = Pinned {
        files: HashMap::new(),
        scratch,
        name,
    };
    for (n, p) in paths.iter().enumerate() {
        let (parent, file) = beneath::split_parent(p);
        let Ok(sdir) = beneath::open_dir(root, parent) else {
            continue;
        };
        match beneath::stat_opt(sdir.as_fd(), file) {
            Ok(Some(st)) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
            _ => continue,
        }
        let copy = n.to_string();
        let Some(stat) = quiet_copy(sdir.as_fd(), dir.as_fd(), file, copy.as_bytes(), p)? else {
            tracing::info!(path = %show(p), "never quiet for {QUIET:?}: read live");
            continue;
        };
        let xattrs = read_user_xattrs(On::At(sdir.as_fd(), file))
            .ctx(|| format!("xattrs of {}", show(p)))?;
        let mut at = crate::tree::STATE_DIR.to_vec();
        for part in [pinned.name.as_bytes(), copy.as_bytes()] {
            at.push(b'/');
            at.extend_from_slice(part);
        }
        pinned.files.insert(p.clone(), Pin { stat, at, xattrs });
    }
    tracing::info!(
        files = pinned.files.len(),
        "copied files that changed while read aside"
    );
    Ok(Some(pinned))
}
