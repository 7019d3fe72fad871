//! The receiver's last phase, after every worker has finished: metadata of large files, hard
//! links, symlink and special-file metadata, then directories from the deepest up (so creating
//! children does not disturb a parent's mtime once set). In a job from a recovery point only
//! what the first phase marked is finished (`finish`), plus the directories whose listing the
//! job changed (`touched`); a resumed job finishes everything.

use super::journal::Journal;
use super::meta::{apply_fd, apply_link_or_special};
use super::table::RecvTable;
use crate::beneath::{self, split_parent};
use crate::error::{show, Error, IoContext, Result};
use crate::tree::entry::EntryKind;
use crate::wire::message::is_inline;
use crate::wire::message::Need;
use rustix::fs::{statat, AtFlags, Mode, OFlags};
use std::os::fd::AsFd;

pub fn finalize(
    t: &RecvTable,
    j: &mut Journal,
    finish: Option<&[bool]>,
    touched: &mut [bool],
    elsewhere: &std::collections::HashSet<u32>,
) -> Result<()> {
    let root = t.root.as_fd();
    let marked = |i: usize| finish.is_none_or(|f| f[i]);
    for (i, e) in t.entries.iter().enumerate() {
        if t.skip[i] {
            continue;
        }
        let path = &t.paths[i];
        match &e.kind {
            EntryKind::File { size } if t.need[i] != Need::Nothing && !is_inline(*size) => {
                // Files that received data were finished by the worker that wrote their last
                // byte; the rest (all holes, a delta of metadata only, or written by several
                // write places: `elsewhere`) are finished here.
                match t
                    .remaining
                    .get(&(i as u32))
                    .map(|r| r.load(std::sync::atomic::Ordering::Acquire))
                {
                    Some(0)
                        if t.expected.get(&(i as u32)) != Some(&0)
                            && !elsewhere.contains(&(i as u32)) =>
                    {
                        continue
                    }
                    Some(0) => {}
                    left => {
                        return Err(Error::Verify(format!(
                            "{} is missing {} bytes of data",
                            show(path),
                            left.unwrap_or(*size)
                        )));
                    }
                }
                // Its metadata is set again here: a check a worker took before does not stand
                // for what this leaves.
                t.checked.forget(i);
                let fd = beneath::open_file(root, path, OFlags::RDONLY, Mode::empty())
                    .ctx(|| format!("opening {}", show(path)))?;
                if let Some(file) = t.files.get(&(i as u32)) {
                    file.check(fd.as_fd(), path)?;
                }
                apply_fd(fd.as_fd(), e, t.owners)
                    .ctx(|| format!("setting metadata of {}", show(path)))?;
            }
            EntryKind::HardLink { .. } | EntryKind::Symlink { .. } | EntryKind::Special { .. }
                if !marked(i) => {}
            EntryKind::HardLink { target } => {
                let tpath = &t.paths[target.index()];
                let (tp, tn) = split_parent(tpath);
                let (lp, ln) = split_parent(path);
                let tdir = beneath::open_dir(root, tp)
                    .ctx(|| format!("opening directory of {}", show(tpath)))?;
                let ldir = beneath::open_dir(root, lp)
                    .ctx(|| format!("opening directory of {}", show(path)))?;
                let tst = statat(&tdir, tn, AtFlags::SYMLINK_NOFOLLOW)
                    .ctx(|| format!("stat {}", show(tpath)))?;
                let same = matches!(statat(&ldir, ln, AtFlags::SYMLINK_NOFOLLOW),
                    Ok(s) if s.st_ino == tst.st_ino && s.st_dev == tst.st_dev);
                if !same {
                    touched[e.parent.index()] = true;
                    j.move_away(ldir.as_fd(), ln, path)?;
                    j.created(path)?;
                    rustix::fs::linkat(&tdir, tn, &ldir, ln, AtFlags::empty())
                        .ctx(|| format!("hard link {} -> {}", show(path), show(tpath)))?;
                }
            }
            EntryKind::Symlink { .. } | EntryKind::Special { .. } => {
                let (p, n) = split_parent(path);
                let dir = beneath::open_dir(root, p)
                    .ctx(|| format!("opening directory of {}", show(path)))?;
                apply_link_or_special(dir.as_fd(), n, e, t.owners)
                    .ctx(|| format!("setting metadata of {}", show(path)))?;
            }
            _ => {}
        }
    }
    // Children have larger ids than their parents: reverse order is deepest first.
    for (i, e) in t.entries.iter().enumerate().rev() {
        if e.kind != EntryKind::Dir || !(marked(i) || touched[i]) {
            continue;
        }
        let path = &t.paths[i];
        let fd =
            beneath::open_dir(root, path).ctx(|| format!("opening directory {}", show(path)))?;
        apply_fd(fd.as_fd(), e, t.owners)
            .ctx(|| format!("setting metadata of directory {}", show(path)))?;
    }
    Ok(())
}

/// Names the first entry where two lists differ, for a useful verification error.
pub fn first_difference(
    want: &[crate::tree::entry::Entry],
    got: &[crate::tree::entry::Entry],
    paths: &[Vec<u8>],
) -> Error {
    for (i, (a, b)) in want.iter().zip(got).enumerate() {
        if a != b {
            return Error::Verify(format!(
                "destination differs from source at {}: {}",
                show(&paths[i]),
                crate::tree::entry::describe_difference(a, b)
            ));
        }
    }
    Error::Verify(format!(
        "destination has {} entries, source {}",
        got.len(),
        want.len()
    ))
}
