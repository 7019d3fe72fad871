//! The directories relationships use, checked when they are first accepted and again at every
//! use: a source directory at create and at every session, a target directory at authorization,
//! at every ticket, at every start of the daemon and when it is released. A check pins the
//! directory (`crate::pinned`) and tests what it may not be: the daemon's data dir, a system
//! directory not allowed as a source, another live target. A use that finds something else at
//! the path records why in `path_error` (state `path_changed`) and does nothing there.

use super::Node;
use crate::model::{Relationship, Role};
use crate::pinned::{self, OpenDir};
use crate::{Error, Result};
use std::path::Path;

/// The data dir holds the node's key and tokens and the private mounts: no relationship may
/// replicate from it or into it, nor from or into a directory holding it.
fn check_data_dir(node: &Node, dir: &Path, what: &str) -> Result<()> {
    let data = node
        .opts
        .data_dir
        .canonicalize()
        .unwrap_or_else(|_| node.opts.data_dir.clone());
    if dir.starts_with(&data) || data.starts_with(dir) {
        return Err(Error::Invalid(format!(
            "{what} {} overlaps the daemon's data dir {} (its key and tokens are not replicated)",
            dir.display(),
            data.display()
        )));
    }
    Ok(())
}

/// What a source directory (canonical) may not be: outside the allowed roots, or the data dir.
pub fn check_source(node: &Node, dir: &Path) -> Result<()> {
    node.opts.source_allowed(dir)?;
    check_data_dir(node, dir, "source path")
}

/// A protected target must not be, hold or sit inside another live relationship's target or
/// this daemon's data dir: two receivers would write one tree, and lifting one protection would
/// lift the other. Compared as canonical paths (the others' pinned ones where they have them).
/// For a new protection (authorizing, reversing): a stored relationship this release cannot
/// read fails it, since its target could be anywhere.
pub fn check_target(node: &Node, r: &Relationship, mine: &Path) -> Result<()> {
    check_data_dir(node, mine, "target directory")?;
    overlapping(r, mine, &node.store().list(Some(Role::Target))?)
}

/// `check_target` at every use of a protected target: a stored relationship this release
/// cannot read is passed over. Its overlap was checked when it was authorized, and while it
/// is unreadable it gets neither a receiver nor a release (reading it fails), so one damaged
/// row does not stop every other target.
fn recheck_target(node: &Node, r: &Relationship, mine: &Path) -> Result<()> {
    check_data_dir(node, mine, "target directory")?;
    overlapping(
        r,
        mine,
        &node.store().list_readable(Some(Role::Target))?.rows,
    )
}

fn overlapping(r: &Relationship, mine: &Path, all: &[Relationship]) -> Result<()> {
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let overlaps = |other: &Path| mine.starts_with(other) || other.starts_with(mine);
    for other in all {
        if other.id == r.id || other.ended || !other.authorized {
            continue;
        }
        let theirs = match &other.pinned {
            Some(p) => Path::new(&p.path).to_path_buf(),
            None => canon(Path::new(&other.spec.target_path)),
        };
        if overlaps(&theirs) {
            return Err(Error::Conflict(format!(
                "target directory {} overlaps {}, the target of relationship {}",
                mine.display(),
                theirs.display(),
                other.id
            )));
        }
    }
    Ok(())
}

/// Opens the relationship's directory (`path` of its spec) as pinned, or, for a relationship
/// of an older version that has no pin yet, pins it now (the same checks follow).
fn open_pinned(node: &Node, r: &Relationship, path: &str, what: &str) -> Result<OpenDir> {
    match &r.pinned {
        Some(pin) => pinned::open(pin, what),
        None => {
            let dir = pinned::pin(Path::new(path), what)?;
            tracing::info!(id = %r.id, path = %dir.pin().path, dev = dir.pin().dev, ino = dir.pin().ino, "pinned the {what} of a relationship made by an older version");
            let pin = dir.pin().clone();
            node.modify(&r.id, r.role, |x| x.pinned = Some(pin))?;
            Ok(dir)
        }
    }
}

/// Records the outcome of a check: why the directory cannot be used, or that it can again.
/// Only path problems (Conflict, Invalid) stop the relationship; an I/O error is the caller's.
fn record(node: &Node, r: &Relationship, res: &Result<OpenDir>) {
    let now = match res {
        Ok(_) => None,
        Err(e @ (Error::Conflict(_) | Error::Invalid(_))) => Some(e.to_string()),
        Err(_) => return,
    };
    if r.path_error == now {
        return;
    }
    match &now {
        Some(why) => tracing::error!(id = %r.id, "relationship stopped: {why}"),
        None => {
            tracing::info!(id = %r.id, "its directory is the checked one again; relationship goes on")
        }
    }
    if let Err(e) = node.modify(&r.id, r.role, |x| x.path_error = now.clone()) {
        tracing::error!(id = %r.id, "recording the directory check: {e}");
    }
}

/// The source directory of `r`, checked for this use: the pinned directory, still not the data
/// dir and still allowed. The job reads through the returned descriptor.
pub fn source_dir(node: &Node, r: &Relationship) -> Result<OpenDir> {
    let res = open_pinned(node, r, &r.spec.source_path, "source directory").and_then(|dir| {
        check_source(node, dir.path())?;
        Ok(dir)
    });
    record(node, r, &res);
    res
}

/// The target directory of `r`, checked for this use: the pinned directory, overlapping
/// nothing it may not.
pub fn target_dir(node: &Node, r: &Relationship) -> Result<OpenDir> {
    let res = target_identity(node, r).and_then(|dir| {
        recheck_target(node, r, dir.path())?;
        Ok(dir)
    });
    record(node, r, &res);
    res
}

/// The target directory of `r` if it is still the pinned one (for releasing it: what it may
/// overlap no longer matters then).
pub fn target_identity(node: &Node, r: &Relationship) -> Result<OpenDir> {
    open_pinned(node, r, &r.spec.target_path, "target directory")
}
