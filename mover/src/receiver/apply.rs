//! The receiver's first phase, run by the session's control thread before any data arrives:
//! make the destination's shape match the entry list (directories, symlinks, special files,
//! removal of what is in the way or no longer in the source), decide which files need data, and
//! create the large ones at full (sparse) size so workers only ever open existing files.
//!
//! Every operation is relative to a directory fd resolved beneath the root; final components are
//! never followed. Nothing is deleted: what is replaced or no longer in the source moves into the
//! undo journal, and every creation and in-place change is journaled first (journal.rs).
//!
//! Hints from the sender's manifest are checked here before they are trusted: a rename source
//! must exist, and a delta applies only if the file still has the size and mtime the sender
//! believes (otherwise the whole file is asked for).
//!
//! A job that starts from a recovery point (not a resumed one) knows what the target holds: the
//! recovery point's entry list. It then touches an entry only where the new list differs from
//! that one (by path): an unchanged entry costs no system call at all, a change of metadata
//! only the calls that make it, and only what changed otherwise is looked at on disk (one stat)
//! and handled as below. What the recovery point held and the new list does not is moved into
//! the journal by name, without listing directories. What the target may have been made to hold
//! behind the receiver's back is found by the verification of what the job changed, by a full
//! verifying job, or by a scrub; a resumed job (whose interrupted session changed the disk in
//! ways the list does not say) compares every entry with the disk.

use super::grant;
use super::journal::{Journal, Origin};
use super::meta::times;
use super::space;
use super::table::FileId;
use crate::beneath;
use crate::beneath::{dir_names, stat_opt};
use crate::error::{show, Error, IoContext, Result};
use crate::sender::manifest::BLOCK;
use crate::tree::entry::{validate_name, Entry, EntryKind};
use crate::tree::xattr::{sync_user_xattrs, On};
use crate::units::EntryId;
use crate::wire::message::is_inline;
use crate::wire::message::{Hint, Need, MAX_DELTA_RANGES};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

#[derive(Debug, Default, Clone, Copy)]
pub struct ApplyStats {
    pub files_needed: u64,
    pub bytes_needed: u64,
    pub files_unchanged: u64,
    pub removed: u64,
}

fn ftype(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Directory fds along the current pre-order path, so most entries resolve their parent for free.
struct DirStack {
    stack: Vec<(EntryId, OwnedFd)>,
}

impl DirStack {
    fn parent(
        &mut self,
        root: BorrowedFd<'_>,
        p: EntryId,
        paths: &[Vec<u8>],
    ) -> Result<BorrowedFd<'_>> {
        while let Some((id, _)) = self.stack.last() {
            if *id == p {
                break;
            }
            self.stack.pop();
        }
        if self.stack.is_empty() {
            let fd = beneath::open_dir(root, &paths[p.index()])
                .ctx(|| format!("opening directory {}", show(&paths[p.index()])))?;
            self.stack.push((p, fd));
        }
        match self.stack.last() {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => unreachable!("stack was just filled"),
        }
    }
}

/// Sets owner/mode/xattrs/mtime on an existing file found unchanged, where they differ.
fn fix_unchanged_meta(
    dir: BorrowedFd<'_>,
    name: &[u8],
    st: &Stat,
    e: &Entry,
    owners: bool,
) -> std::io::Result<()> {
    if owners && (st.st_uid != e.meta.uid || st.st_gid != e.meta.gid) {
        super::meta::chown_at(dir, name, e)?;
    }
    if st.st_mode & 0o7777 != e.meta.mode || owners && st.st_uid != e.meta.uid {
        super::meta::chmod_at(dir, name, e.meta.mode)?;
    }
    sync_user_xattrs(On::At(dir, name), &e.xattrs)?;
    // Nothing above moves mtime (ownership, mode and xattrs change ctime only): it is set only
    // where it differs, so an unchanged file's inode is not touched at all.
    if (st.st_mtime, st.st_mtime_nsec as u32) != (e.meta.mtime_sec, e.meta.mtime_nsec) {
        rustix::fs::utimensat(dir, name, &times(&e.meta), AtFlags::SYMLINK_NOFOLLOW)?;
    }
    Ok(())
}

/// Sets what differs between a file's recovery-point entry `was` (which the target holds) and
/// its new entry `e`, the content being unchanged (same size and mtime): no stat needed.
fn fix_meta_from(
    dir: BorrowedFd<'_>,
    name: &[u8],
    was: &Entry,
    e: &Entry,
    owners: bool,
) -> std::io::Result<()> {
    let chown = owners && (was.meta.uid, was.meta.gid) != (e.meta.uid, e.meta.gid);
    if chown {
        super::meta::chown_at(dir, name, e)?;
    }
    // chown clears set-id bits: the mode is set again after it.
    if chown || was.meta.mode != e.meta.mode {
        super::meta::chmod_at(dir, name, e.meta.mode)?;
    }
    if was.xattrs != e.xattrs {
        sync_user_xattrs(On::At(dir, name), &e.xattrs)?;
    }
    Ok(())
}

/// Journals that `path` is about to be created. The journal's own errors name only its log
/// file; on a full disk the operator needs the item the job was at.
fn journal_created(j: &mut Journal, path: &[u8]) -> Result<()> {
    j.created(path).map_err(space::naming(|| {
        format!("journaling the creation of {}", show(path))
    }))
}

/// What the first phase decided.
pub struct Applied {
    pub need: Vec<Need>,
    /// Directories this phase created.
    pub fresh: Vec<bool>,
    /// Accepted delta ranges per entry (`need == Delta`).
    pub deltas: HashMap<u32, Vec<(u64, u64)>>,
    /// Ranges still needed of files an interrupted session left unfinished (`need == Rest`).
    pub rests: HashMap<u32, Vec<(u64, u64)>>,
    /// New sizes of delta files, applied only once the journal (with the pre-images of any
    /// tail a shrink cuts off) is durable: see `resize_deltas`. With the file each must be.
    pub resizes: Vec<(Vec<u8>, u64, FileId)>,
    /// The file each large file the data phase writes must be (created or checked here): the
    /// workers reopen it by path and refuse another (`FileId::check`).
    pub files: HashMap<u32, FileId>,
    pub stats: ApplyStats,
    /// Entries finalize still has to finish in a job from a recovery point: directories,
    /// symlinks and special files whose metadata it sets, hard links it checks. None (a
    /// resumed job): every one of them.
    pub finish: Option<Vec<bool>>,
    /// Directories whose listing this phase changed (created, removed, moved or renamed
    /// something in them): their mtime is set again, and they are verified.
    pub touched: Vec<bool>,
}

/// What the target holds before the job (a recovery point's list, its policy applied), and
/// where each new entry was in it: lets the first phase touch only what differs.
#[derive(Clone, Copy)]
pub struct Baseline<'a> {
    pub entries: &'a [Entry],
    pub skip: &'a [bool],
    /// For each new entry, the baseline entry at the same path.
    pub matched: &'a [Option<u32>],
}

impl<'a> Baseline<'a> {
    /// What the target holds at a recovery point, with where each new entry was in it.
    pub fn of(held: &'a super::state::Held, matched: &'a [Option<u32>]) -> Baseline<'a> {
        Baseline {
            entries: &held.entries,
            skip: &held.skip,
            matched,
        }
    }
}

/// How a new entry relates to the baseline entry at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Equal in everything the target holds: nothing to do.
    Same,
    /// Same item (kind, and for a file size, mtime and links; for a symlink its target; for a
    /// special file its type and device), other metadata.
    MetaOnly,
    /// Anything else (new, another kind, new content, moved away by a rename): looked at on disk.
    Changed,
}

fn meta_equal(a: &Entry, b: &Entry, owners: bool) -> bool {
    let symlink = matches!(a.kind, EntryKind::Symlink { .. });
    (symlink || a.meta.mode == b.meta.mode)
        && (!owners || (a.meta.uid, a.meta.gid) == (b.meta.uid, b.meta.gid))
        && (a.meta.mtime_sec, a.meta.mtime_nsec) == (b.meta.mtime_sec, b.meta.mtime_nsec)
        && a.xattrs == b.xattrs
}

/// Whether each of `names` (entries of the new list, hard links to one file) is a name of
/// the inode `st` here. An in-place write reaches every name of an inode: the link count
/// alone, which the sender's list explains with links it may make up, would let one name
/// outside the root (a target seeded with `cp -al`, say) be written through.
fn links_here(root: BorrowedFd<'_>, paths: &[Vec<u8>], names: &[usize], st: &Stat) -> bool {
    names.iter().all(|&k| {
        let (parent, name) = beneath::split_parent(&paths[k]);
        beneath::open_dir(root, parent)
            .ok()
            .and_then(|d| rustix::fs::statat(&d, name, AtFlags::SYMLINK_NOFOLLOW).ok())
            .is_some_and(|l| (l.st_dev, l.st_ino) == (st.st_dev, st.st_ino))
    })
}

fn links(entries: &[Entry]) -> Vec<u32> {
    let mut n = vec![0u32; entries.len()];
    for e in entries {
        if let EntryKind::HardLink { target } = e.kind {
            n[target.index()] += 1;
        }
    }
    n
}

/// Classifies every new entry against the baseline (before renames: see `apply_entries`).
pub fn classify(entries: &[Entry], skip: &[bool], base: &Baseline<'_>, owners: bool) -> Vec<Class> {
    let (links_new, links_base) = (links(entries), links(base.entries));
    let mut class = vec![Class::Changed; entries.len()];
    for (i, e) in entries.iter().enumerate() {
        if skip[i] {
            continue;
        }
        let Some(b) = base.matched.get(i).copied().flatten() else {
            continue;
        };
        let be = &base.entries[b as usize];
        let same_item = match (&e.kind, &be.kind) {
            (EntryKind::Dir, EntryKind::Dir) => true,
            (EntryKind::File { size }, EntryKind::File { size: bs }) => {
                size == bs
                    && (e.meta.mtime_sec, e.meta.mtime_nsec)
                        == (be.meta.mtime_sec, be.meta.mtime_nsec)
                    && links_new[i] == links_base[b as usize]
            }
            (EntryKind::Symlink { target }, EntryKind::Symlink { target: bt }) => target == bt,
            (
                EntryKind::Special { file_type, rdev },
                EntryKind::Special {
                    file_type: bf,
                    rdev: br,
                },
            ) => file_type == bf && rdev == br,
            (EntryKind::HardLink { target }, EntryKind::HardLink { target: bt }) => {
                // Another name for the same item; its metadata is its target's.
                class[i] = if base.matched.get(target.index()).copied().flatten() == Some(bt.0) {
                    Class::Same
                } else {
                    Class::Changed
                };
                continue;
            }
            _ => false,
        };
        class[i] = match (same_item, meta_equal(e, be, owners)) {
            (false, _) => Class::Changed,
            (true, true) => Class::Same,
            (true, false) => Class::MetaOnly,
        };
    }
    class
}

/// The entry of `entries` at relative path `p`, found by name from the root.
fn find_path(index: &crate::tree::diff::BaseIndex<'_>, p: &[u8]) -> Option<u32> {
    let mut cur = 0u32;
    for c in p.split(|&b| b == b'/') {
        cur = index.child(cur, c)?;
    }
    Some(cur)
}

/// A delta hint's base size and mtime, and its ranges.
type DeltaBase<'a> = (u64, (i64, u32), &'a [(u64, u64)]);

/// A rename source: a relative path of valid names, outside the receiver's state.
fn check_source_path(p: &[u8]) -> Result<()> {
    let bad = |why: String| {
        Err(Error::Verify(format!(
            "rename hint from {}: {why}",
            show(p)
        )))
    };
    if p.is_empty() {
        return bad("empty path".into());
    }
    for (k, c) in p.split(|&b| b == b'/').enumerate() {
        if let Err(e) = validate_name(c) {
            return bad(e.to_string());
        }
        if k == 0 && crate::tree::reserved_at_top(c) {
            return bad("names a reserved directory (.mover-state, .snapshot)".into());
        }
    }
    Ok(())
}

fn depth(p: &[u8]) -> usize {
    p.iter().filter(|&&b| b == b'/').count()
}

/// Runs the first phase. With a `base` (a job starting from a recovery point) only what
/// differs from it is touched; without (a resumed job), every entry is compared with the disk.
/// `vouch`: the recovery point's list (the base, if any), by which a file kept in place is
/// known to be the recovery point's own (grant.rs); `guard`: whether other users can reach the
/// target (`grant::reachable`), so those checks are needed at all.
#[allow(clippy::too_many_arguments)]
pub fn apply_entries(
    root: BorrowedFd<'_>,
    entries: &[Entry],
    paths: &[Vec<u8>],
    hints: &[Hint],
    owners: bool,
    skip: &[bool],
    (base, vouch, guard): (Option<&Baseline<'_>>, Option<&Baseline<'_>>, bool),
    j: &mut Journal,
) -> Result<Applied> {
    let mut need = vec![Need::Nothing; entries.len()];
    let mut stats = ApplyStats::default();
    let links_to = links(entries);
    // The hard links to each linked file, by the file's index.
    let mut link_names: HashMap<usize, Vec<usize>> = HashMap::new();
    for (k, e) in entries.iter().enumerate() {
        if let EntryKind::HardLink { target } = e.kind {
            link_names.entry(target.index()).or_default().push(k);
        }
    }
    let mut class = base.map(|b| classify(entries, skip, b, owners));
    let mut finish = base.map(|_| vec![false; entries.len()]);
    let mut touched = vec![false; entries.len()];
    if let (Some(c), Some(f)) = (&class, finish.as_mut()) {
        // The root is no one's child: its own metadata is set if it differs.
        f[0] = c.first().is_some_and(|c| *c != Class::Same);
    }
    let mut renames: Vec<(usize, &[u8])> = Vec::new();
    // Each entry is renamed from one place, and each place to one entry: of two, only the
    // last would be placed, and the other item, staged, would be neither placed nor verified
    // (its old path unchanged in the new list is not looked at), and go with the journal.
    let (mut renamed, mut renamed_from) = (HashSet::new(), HashSet::new());
    let mut delta_hint: HashMap<usize, DeltaBase<'_>> = HashMap::new();
    // A repairing job's block hashes of large files (`Hint::Blocks`), by entry.
    let mut blocks: HashMap<usize, Vec<u64>> = HashMap::new();
    for h in hints {
        match h {
            Hint::Rename { entry, from } => {
                let i = entry.index();
                if i == 0
                    || i >= entries.len()
                    || matches!(entries[i].kind, EntryKind::HardLink { .. })
                {
                    return Err(Error::Verify(format!(
                        "rename hint for entry {} which cannot be renamed",
                        entry.0
                    )));
                }
                check_source_path(from)?;
                if !renamed.insert(i) || !renamed_from.insert(from.as_slice()) {
                    return Err(Error::Verify(format!(
                        "a second rename hint for entry {} or from {}",
                        entry.0,
                        String::from_utf8_lossy(from)
                    )));
                }
                // The item moved here is the sender's word on content the metadata cannot tell
                // (two files of one size and mtime swapped): the entry is a change.
                if let Some(c) = class.as_mut() {
                    c[i] = Class::Changed;
                }
                renames.push((i, from.as_slice()));
            }
            Hint::Delta {
                entry,
                base_size,
                base_mtime,
                ranges,
            } => {
                let i = entry.index();
                let Some(EntryKind::File { size }) = entries.get(i).map(|e| &e.kind) else {
                    return Err(Error::Verify(format!(
                        "delta hint for entry {} which is not a regular file",
                        entry.0
                    )));
                };
                if ranges.last().is_some_and(|&(o, l)| o + l > *size) {
                    return Err(Error::Verify(format!(
                        "delta hint for {} runs past its size {size}",
                        show(&paths[i])
                    )));
                }
                delta_hint.insert(i, (*base_size, *base_mtime, ranges.as_slice()));
            }
            Hint::Blocks {
                entry,
                first,
                hashes,
            } => {
                let i = entry.index();
                let size = match entries.get(i).map(|e| &e.kind) {
                    Some(EntryKind::File { size }) if !is_inline(*size) => *size,
                    _ => {
                        return Err(Error::Verify(format!(
                            "block hashes for entry {} which is not a large file",
                            entry.0
                        )))
                    }
                };
                let have = blocks.entry(i).or_default();
                if *first != have.len() as u64
                    || (have.len() + hashes.len()) as u64 > size.div_ceil(BLOCK)
                {
                    return Err(Error::Verify(format!(
                        "block hashes of {} out of order or past its size {size}",
                        show(&paths[i])
                    )));
                }
                have.extend_from_slice(hashes);
            }
        }
    }
    // Stage every rename source first, deepest first, so no source path is disturbed by another
    // rename before it is taken; each is put in place when the walk below reaches its entry.
    renames.sort_by_key(|(i, from)| (std::cmp::Reverse(depth(from)), *i));
    let rename_from: HashMap<usize, &[u8]> = renames.iter().map(|(i, f)| (*i, *f)).collect();
    let mut staged: HashMap<usize, Vec<u8>> = HashMap::new();
    for (i, from) in &renames {
        if let Some(s) = j.stage(from)? {
            staged.insert(*i, s);
        }
    }
    // What was staged is no longer where the baseline says: entries at or below a staged path
    // are looked at on disk, the baseline's items there are not moved away again, and the
    // directory a source left is verified.
    let mut moved_base = vec![false; base.map_or(0, |b| b.entries.len())];
    if let (Some(b), Some(class), false) = (base, class.as_mut(), staged.is_empty()) {
        let base_index = crate::tree::diff::BaseIndex::new(b.entries, b.skip);
        let new_index = crate::tree::diff::BaseIndex::new(entries, skip);
        let ends = crate::tree::diff::subtree_ends(b.entries);
        for i in staged.keys() {
            let from = rename_from[i];
            if let Some(k) = find_path(&base_index, from) {
                for m in &mut moved_base[k as usize..ends[k as usize] as usize] {
                    *m = true;
                }
            }
            let (parent, _) = beneath::split_parent(from);
            let p = if parent.is_empty() {
                Some(0)
            } else {
                find_path(&new_index, parent)
            };
            if let Some(p) = p {
                touched[p as usize] = true;
            }
        }
        for (i, m) in b.matched.iter().enumerate() {
            if m.is_some_and(|k| moved_base[k as usize]) {
                class[i] = Class::Changed;
            }
        }
    }
    let mut deltas = HashMap::new();
    let mut rests = HashMap::new();
    let mut resizes = Vec::new();
    let mut files = HashMap::new();
    // Directories this phase created: nothing can exist inside them yet (the root is locked
    // against other receivers), so their children need no lookup and no extraneous pass.
    let mut fresh = vec![false; entries.len()];
    let mut dirs = DirStack { stack: Vec::new() };
    let mut pending = grant::Pending::default();
    // What becomes of the file `st` found at entry `i` whose owner or set-id bits change:
    // judged by the recovery point's entry at its path (grant.rs).
    let vouch_links = vouch.map(|b| links(b.entries));
    let keep = |i: usize, st: &Stat| {
        let was = vouch.zip(vouch_links.as_ref()).and_then(|(b, n)| {
            let k = b.matched.get(i).copied().flatten()? as usize;
            Some((&b.entries[k], n[k]))
        });
        grant::keep(st, was, &entries[i], owners)
    };
    for (i, e) in entries.iter().enumerate().skip(1) {
        if skip[i] {
            // Not created; whatever stands at its name goes with the extraneous pass below.
            continue;
        }
        // Found not to be the recovery point's item: set aside, never kept.
        let mut distrust = false;
        if let (Some(class), Some(b), Some(finish)) = (&class, base, finish.as_mut()) {
            let is_file = matches!(e.kind, EntryKind::File { .. });
            match class[i] {
                Class::Same => {
                    stats.files_unchanged += u64::from(is_file);
                    continue;
                }
                Class::MetaOnly if is_file => {
                    let was = &b.entries[b.matched[i].map_or(0, |k| k as usize)];
                    let dir = dirs.parent(root, e.parent, paths)?;
                    let (mode, owner) = (was.meta.mode, (was.meta.uid, was.meta.gid));
                    if !guard || !grant::sensitive(mode, owner, e, owners) {
                        fix_meta_from(dir, &e.name, was, e, owners)
                            .ctx(|| format!("updating metadata of {}", show(&paths[i])))?;
                        stats.files_unchanged += 1;
                        continue;
                    }
                    // Its owner or set-id bits change: only if it is the recovery point's file
                    // (grant.rs), else it is set aside and sent anew like a changed file.
                    let found = grant::open_found(dir, &e.name)
                        .ctx(|| format!("opening {}", show(&paths[i])))?;
                    if let Some((fd, st)) = found {
                        match keep(i, &st) {
                            grant::Keep::InPlace => {
                                pending.add(j, (root, entries, paths), i, fd.as_fd(), owners)?;
                                stats.files_unchanged += 1;
                                continue;
                            }
                            grant::Keep::Copy => {
                                let here = (dir, e.name.as_slice());
                                let at = (root, entries, paths);
                                pending.copy_aside(j, at, here, i, fd.as_fd(), owners)?;
                                touched[e.parent.index()] = true;
                                stats.files_unchanged += 1;
                                continue;
                            }
                            grant::Keep::Send => {}
                        }
                    }
                    distrust = true;
                    touched[e.parent.index()] = true;
                    finish[i] = true;
                }
                Class::MetaOnly => {
                    finish[i] = true;
                    continue;
                }
                Class::Changed => {
                    // Whatever happens below may add or remove a name in the directory.
                    touched[e.parent.index()] = true;
                    finish[i] = true;
                }
            }
        }
        let path = &paths[i];
        let dir = dirs.parent(root, e.parent, paths)?;
        let name = e.name.as_slice();
        let mut st = if fresh[e.parent.index()] {
            None
        } else {
            stat_opt(dir, name).ctx(|| format!("stat {}", show(path)))?
        };
        if let Some(s) = staged.remove(&i) {
            if st.is_some() {
                stats.removed += j.move_away(dir, name, path)?;
            }
            j.place(&s, dir, name, path)?;
            st = stat_opt(dir, name).ctx(|| format!("stat {}", show(path)))?;
        } else if st.is_some() {
            // An interrupted session of this job put a recovery-point item here from `from`;
            // unless this session's hints move that same item here, it is not what the entry
            // means (the source may have moved things back): set it aside, never trust it.
            if let Origin::PlacedHere { from } = j.map.origin(path) {
                if rename_from.get(&i).copied() != Some(from.as_slice()) {
                    stats.removed += j.move_away(dir, name, path)?;
                    st = None;
                }
            }
        }
        if distrust && st.is_some() {
            stats.removed += j.move_away(dir, name, path)?;
            st = None;
        }
        let ft = st.as_ref().map(ftype);
        let clear = |j: &mut Journal, stats: &mut ApplyStats| -> Result<()> {
            stats.removed += j.move_away(dir, name, path)?;
            Ok(())
        };
        match &e.kind {
            EntryKind::Dir => {
                if ft != Some(FileType::Directory) {
                    if st.is_some() {
                        clear(j, &mut stats)?;
                    }
                    journal_created(j, path)?;
                    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
                        .ctx(|| format!("mkdir {}", show(path)))?;
                    fresh[i] = true;
                }
                let sub =
                    beneath::open_in(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
                        .ctx(|| format!("opening directory {}", show(path)))?;
                dirs.stack.push((EntryId(i as u32), sub));
            }
            EntryKind::File { size } => {
                let is_file = matches!(&st, Some(s) if ftype(s) == FileType::RegularFile);
                let links_ok = matches!(&st, Some(s) if s.st_nlink == 1 + links_to[i] as u64
                    && link_names.get(&i).is_none_or(|names| links_here(root, paths, names, s)));
                let same = |s: &Stat, sz: u64, m: (i64, u32)| {
                    s.st_size as u64 == sz && (s.st_mtime, s.st_mtime_nsec as u32) == m
                };
                let mtime = (e.meta.mtime_sec, e.meta.mtime_nsec);
                // A file an interrupted session of this job wrote is complete only if it logged
                // it so: its size and mtime may have reached the disk without its bytes.
                let complete = is_file
                    && links_ok
                    && st.as_ref().is_some_and(|s| same(s, *size, mtime))
                    && (!j.written_by_job(path)
                        || logged_finished(j, path, (dir, name), (*size, mtime)));
                // Left unfinished by an interrupted session of this job: what it made durable
                // of this version need not come again (resume.rs).
                let mut rest = None;
                if !complete && is_file && !is_inline(*size) {
                    rest = resumable(
                        j,
                        path,
                        st.as_ref(),
                        (*size, mtime),
                        links_ok,
                        delta_hint.get(&i),
                        (dir, name),
                    );
                }
                let delta_fits = delta_hint.get(&i).is_some_and(|&(bsize, bmtime, _)| {
                    st.as_ref().is_some_and(|s| same(s, bsize, bmtime))
                });
                // Another version of this file is here (the target was written while writable,
                // or held a tree already) and the sender gave the blocks of its content: only
                // the blocks that differ travel, written in place with pre-images, as a delta.
                if rest.is_none()
                    && !complete
                    && is_file
                    && links_ok
                    && !delta_fits
                    && !j.touched.contains(path)
                    && st
                        .as_ref()
                        .is_some_and(|s| !guard || !grant::sensitive_from(s, e, owners))
                    && writable(dir, name)
                {
                    if let (Some(theirs), Some(s)) = (blocks.get(&i), &st) {
                        if theirs.len() as u64 == size.div_ceil(BLOCK) {
                            let old = s.st_size as u64;
                            let ranges = repair_ranges(dir, name, path, old, *size, theirs)?;
                            let file = FileId::of(s);
                            prepare_delta((dir, name), path, file, (old, *size), &ranges, j)?;
                            if old != *size {
                                resizes.push((path.clone(), *size, file));
                            }
                            rest = Some(ranges);
                        }
                    }
                }
                let decision = match delta_hint.get(&i) {
                    _ if rest.is_some() => Need::Rest,
                    Some(_) if is_inline(*size) => {
                        if complete {
                            Need::Nothing
                        } else {
                            Need::Full
                        }
                    }
                    Some(&(bsize, bmtime, _)) if j.touched.contains(path) => {
                        // Written in place by an interrupted session of this job: complete only if
                        // it visibly reached the new version, else its content is unknown.
                        if complete && (*size, mtime) != (bsize, bmtime) {
                            Need::Nothing
                        } else {
                            Need::Full
                        }
                    }
                    Some(&(bsize, bmtime, _))
                        if is_file
                            && links_ok
                            && st.as_ref().is_some_and(|s| same(s, bsize, bmtime))
                            && writable(dir, name) =>
                    {
                        Need::Delta
                    }
                    _ => {
                        if complete {
                            Need::Nothing
                        } else {
                            Need::Full
                        }
                    }
                };
                // Kept only if it may take its new identity (grant.rs); one whose content and
                // identity both change is sent whole, so a revert gives no identity back to
                // a file it wrote bytes into; one handed over is copied, unless hard-linked.
                let sensitive = st
                    .as_ref()
                    .filter(|s| guard && grant::sensitive_from(s, e, owners));
                let kept = sensitive.map(|s| keep(i, s));
                // A kept file changes through a descriptor of it; one this user cannot open (a
                // non-root receiver's own exec-only or write-only file), or gone since its
                // stat, is sent anew instead.
                let found = match (decision, kept) {
                    (Need::Nothing, Some(grant::Keep::InPlace | grant::Keep::Copy)) => {
                        grant::open_found(dir, name)
                            .ctx(|| format!("opening {}", show(path)))?
                            .map(|(fd, _)| fd)
                    }
                    _ => None,
                };
                let decision = match (decision, sensitive) {
                    (Need::Nothing, Some(_)) if found.is_none() => Need::Full,
                    (Need::Delta, Some(_)) => Need::Full,
                    (Need::Rest, Some(s))
                        if !grant::may_finish(s, e, owners, j.map.origin(path) == Origin::Job) =>
                    {
                        Need::Full
                    }
                    (d, _) => d,
                };
                match decision {
                    Need::Rest => {
                        if let Some(s) = sensitive.filter(|_| j.map.origin(path) != Origin::Job) {
                            // A recovery-point file written in place takes new identity when
                            // complete: a revert may give the old back (durable with the
                            // journal's sync before the first byte).
                            let id = super::resume::identity(dir, name)
                                .ctx(|| format!("statx of {}", show(path)))?;
                            if id.0 != s.st_ino {
                                return Err(Error::Verify(format!(
                                    "{} was replaced while this job looked at it",
                                    show(path)
                                )));
                            }
                            j.granted(path, id)?;
                        }
                        let r = rest.take().unwrap_or_default();
                        if let Some(s) = &st {
                            files.insert(i as u32, FileId::of(s));
                        }
                        stats.files_needed += 1;
                        stats.bytes_needed += r.iter().map(|x| x.1).sum::<u64>();
                        rests.insert(i as u32, r);
                    }
                    Need::Nothing => {
                        if let (Some(s), Some(kept), Some(fd)) = (sensitive, kept, found) {
                            // Vouched for (`keep`) by its stat: the inode opened must be it.
                            FileId::of(s).check(fd.as_fd(), path)?;
                            if kept == grant::Keep::Copy {
                                let at = (root, entries, paths);
                                pending.copy_aside(j, at, (dir, name), i, fd.as_fd(), owners)?;
                                touched[e.parent.index()] = true;
                            } else {
                                pending.add(j, (root, entries, paths), i, fd.as_fd(), owners)?;
                            }
                        } else if let Some(s) = &st {
                            fix_unchanged_meta(dir, name, s, e, owners)
                                .ctx(|| format!("updating metadata of {}", show(path)))?;
                        }
                        stats.files_unchanged += 1;
                    }
                    Need::Delta => {
                        let (bsize, _, ranges) = delta_hint[&i];
                        // Delta is decided only for a regular file found here.
                        let Some(file) = st.as_ref().map(FileId::of) else {
                            unreachable!("a delta's file was found by its stat")
                        };
                        prepare_delta((dir, name), path, file, (bsize, *size), ranges, j)?;
                        files.insert(i as u32, file);
                        if bsize != *size {
                            resizes.push((path.clone(), *size, file));
                        }
                        stats.files_needed += 1;
                        stats.bytes_needed += ranges.iter().map(|r| r.1).sum::<u64>();
                        deltas.insert(i as u32, ranges.to_vec());
                    }
                    Need::Full => {
                        if st.is_some() {
                            // Never write into the old inode: it may be hard-linked elsewhere.
                            clear(j, &mut stats)?;
                        }
                        if is_inline(*size) {
                            // Created by a worker: journaled with the others in one write.
                            j.created_later(path);
                        } else {
                            journal_created(j, path)?;
                        }
                        stats.files_needed += 1;
                        stats.bytes_needed += size;
                        if !is_inline(*size) {
                            let fd = beneath::open_in(
                                dir,
                                name,
                                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                                Mode::from_raw_mode(0o600),
                            )
                            .ctx(|| format!("creating {}", show(path)))?;
                            rustix::fs::ftruncate(&fd, *size)
                                .ctx(|| format!("sizing {} to {size} bytes", show(path)))?;
                            let st =
                                rustix::fs::fstat(&fd).ctx(|| format!("stat of {}", show(path)))?;
                            files.insert(i as u32, FileId::of(&st));
                        }
                    }
                }
                need[i] = decision;
            }
            EntryKind::Symlink { target } => {
                let same = ft == Some(FileType::Symlink)
                    && rustix::fs::readlinkat(dir, name, Vec::new())
                        .map(|t| t.as_bytes() == target.as_slice())
                        .unwrap_or(false);
                if !same {
                    if st.is_some() {
                        clear(j, &mut stats)?;
                    }
                    journal_created(j, path)?;
                    rustix::fs::symlinkat(target.as_slice(), dir, name)
                        .ctx(|| format!("symlink {}", show(path)))?;
                }
            }
            EntryKind::HardLink { .. } => {} // in finalize, once the target file is complete
            EntryKind::Special { file_type, rdev } => {
                let same = matches!(&st, Some(s) if s.st_mode & libc::S_IFMT == *file_type && s.st_rdev == *rdev);
                if !same {
                    if st.is_some() {
                        clear(j, &mut stats)?;
                    }
                    journal_created(j, path)?;
                    let ft = FileType::from_raw_mode(*file_type);
                    rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(0o600), *rdev)
                        .ctx(|| format!("mknod {}", show(path)))?;
                }
            }
        }
    }
    drop(dirs);
    pending.flush(j, (root, entries, paths), owners)?;
    j.flush_deferred().map_err(space::naming(|| {
        "journaling the creation of small files".to_string()
    }))?;
    match (base, &class, finish.as_mut()) {
        (Some(b), Some(class), Some(finish)) => {
            stats.removed += remove_gone(root, paths, b, class, &moved_base, &mut touched, j)?;
            // A directory that is not the baseline's at its path but was found on disk (moved
            // here by a rename, or inside one) may hold what the new list does not.
            let scan = |i: usize| class[i] == Class::Changed;
            stats.removed +=
                remove_extraneous(root, entries, paths, skip, &fresh, scan, &mut touched, j)?;
            // A hard link is checked where it or its target is not the baseline's item in
            // place (a target sent whole is a new inode the link must follow).
            for (i, e) in entries.iter().enumerate() {
                if let EntryKind::HardLink { target } = e.kind {
                    let t = target.index();
                    if class[i] != Class::Same
                        || need[t] != Need::Nothing
                        || class[t] == Class::Changed
                    {
                        finish[i] = true;
                        touched[e.parent.index()] = true;
                    }
                }
            }
            for (i, f) in fresh.iter().enumerate() {
                if *f {
                    finish[i] = true;
                }
            }
        }
        _ => {
            stats.removed += remove_extraneous(
                root,
                entries,
                paths,
                skip,
                &fresh,
                |_| true,
                &mut touched,
                j,
            )?
        }
    }
    Ok(Applied {
        need,
        fresh,
        deltas,
        rests,
        resizes,
        files,
        stats,
        finish,
        touched,
    })
}

/// Whether an interrupted session logged the file at `path` (`name` in `dir`, this very inode)
/// as finished at version (`size`, `mtime`), after a write-back that made it durable
/// (resume.rs).
fn logged_finished(
    j: &Journal,
    path: &[u8],
    (dir, name): (BorrowedFd<'_>, &[u8]),
    (size, mtime): (u64, (i64, u32)),
) -> bool {
    super::resume::version_at(dir, name, size, mtime)
        .is_ok_and(|v| super::resume::logged_finished(&j.durable, path, v))
}

/// The ranges a resumed session still needs of large file `path` (entry version `size`,
/// `mtime`), found unfinished as `st`: None unless an interrupted session of this job wrote it
/// and made ranges of this very version durable. A file the job created must still be that
/// inode, at its full size, not yet hard-linked; a file updated in place must still be that
/// inode, with no name but those the list gives it (`links_ok`), and every range of its delta must have its pre-image in the journal (so revert stays
/// exact without saving anything again).
fn resumable(
    j: &Journal,
    path: &[u8],
    st: Option<&Stat>,
    (size, mtime): (u64, (i64, u32)),
    links_ok: bool,
    delta: Option<&DeltaBase<'_>>,
    (dir, name): (BorrowedFd<'_>, &[u8]),
) -> Option<Vec<(u64, u64)>> {
    let st = st?;
    let durable = j.durable.get(path)?;
    // The birth time tells this inode from one the job unlinked whose number came back.
    let version = super::resume::version_at(dir, name, size, mtime).ok()?;
    if version.ino != st.st_ino {
        return None;
    }
    if st.st_size as u64 != size {
        return None;
    }
    match delta {
        Some(&(_, _, ranges)) if j.touched.contains(path) => {
            let saved = j.preimaged.get(path)?;
            (links_ok && super::resume::covers(saved, ranges))
                .then(|| super::resume::rest(durable, version, ranges))
                .flatten()
        }
        _ if j.map.created_here(path) && st.st_nlink == 1 => {
            super::resume::rest(durable, version, &[(0, size)])
        }
        _ => None,
    }
}

/// Moves what the baseline holds and the new list does not into the journal, by name: each
/// item whose parent is still the baseline's directory in place (the rest went with an
/// ancestor, or with a rename's staging).
fn remove_gone(
    root: BorrowedFd<'_>,
    paths: &[Vec<u8>],
    b: &Baseline<'_>,
    class: &[Class],
    moved: &[bool],
    touched: &mut [bool],
    j: &mut Journal,
) -> Result<u64> {
    let mut new_of = vec![None; b.entries.len()];
    for (i, m) in b.matched.iter().enumerate() {
        if let Some(k) = m {
            new_of[*k as usize] = Some(i);
        }
    }
    let mut removed = 0;
    let mut open: Option<(usize, OwnedFd)> = None;
    for (k, e) in b.entries.iter().enumerate().skip(1) {
        if b.skip[k] || new_of[k].is_some() || moved[k] {
            continue;
        }
        // The parent must be the baseline's directory, still in place at its new entry.
        let Some(p) = new_of[e.parent.index()] else {
            continue;
        };
        if class[p] == Class::Changed {
            continue;
        }
        if open.as_ref().is_none_or(|(q, _)| *q != p) {
            let fd = beneath::open_dir(root, &paths[p])
                .ctx(|| format!("opening directory {}", show(&paths[p])))?;
            open = Some((p, fd));
        }
        let Some((_, fd)) = &open else {
            unreachable!("opened above")
        };
        let mut path = paths[p].clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&e.name);
        removed += j.move_away(fd.as_fd(), &e.name, &path)?;
        touched[p] = true;
    }
    Ok(removed)
}

/// Bound on read-ahead hints per delta file (each is one syscall).
const MAX_READAHEAD_HINTS: usize = 1 << 16;

/// An in-place update needs write access to the old inode (a receiver that is not root may find
/// a read-only file there; it is then replaced whole instead).
fn writable(dir: BorrowedFd<'_>, name: &[u8]) -> bool {
    rustix::process::geteuid().is_root()
        || rustix::fs::accessat(dir, name, rustix::fs::Access::WRITE_OK, AtFlags::EACCESS).is_ok()
}

/// The ranges of the sender's version of a file (`size` bytes, block hashes `theirs`) that the
/// file here (`old` bytes) does not hold: its blocks are hashed and compared. Never empty (the
/// last block comes again when every block is equal), so the file's metadata is applied when
/// its last byte is written.
fn repair_ranges(
    dir: BorrowedFd<'_>,
    name: &[u8],
    path: &[u8],
    old: u64,
    size: u64,
    theirs: &[u64],
) -> Result<Vec<(u64, u64)>> {
    let fd = beneath::open_in(dir, name, OFlags::RDONLY, Mode::empty())
        .ctx(|| format!("opening {} to compare its blocks", show(path)))?;
    let mine = crate::sender::manifest::hash_file(fd.as_fd(), old)
        .ctx(|| format!("hashing the blocks of {}", show(path)))?;
    let mut ranges = crate::sender::manifest::changed_ranges(&mine, theirs, size, MAX_DELTA_RANGES);
    if ranges.is_empty() && size > 0 {
        let last = (size - 1) / BLOCK * BLOCK;
        ranges.push((last, size - last));
    }
    debug_assert!(ranges.iter().all(|&(o, l)| l > 0 && o + l <= size));
    Ok(ranges)
}

/// Saves pre-images of every range the delta will overwrite (and of a tail a shrink cuts off),
/// then sets the new size. Data frames later write the ranges in place.
fn prepare_delta(
    (dir, name): (BorrowedFd<'_>, &[u8]),
    path: &[u8],
    file: FileId,
    (old, new): (u64, u64),
    ranges: &[(u64, u64)],
    j: &mut Journal,
) -> Result<()> {
    let fd = beneath::open_in(dir, name, OFlags::RDWR, Mode::empty())
        .ctx(|| format!("opening {} for an in-place update", show(path)))?;
    file.check(fd.as_fd(), path)?;
    let id = grant::identity_of(fd.as_fd(), path)?;
    debug_assert_eq!(id.0, file.ino);
    j.in_place(path, id).map_err(space::naming(|| {
        format!("journaling the update in place of {}", show(path))
    }))?;
    // Ask for every range up front: the kernel reads them with a deep queue while the copies
    // below go one by one (random 4 KiB reads otherwise wait on the device one at a time).
    for &(o, l) in ranges.iter().take(MAX_READAHEAD_HINTS) {
        let _ = rustix::fs::fadvise(
            &fd,
            o,
            std::num::NonZeroU64::new(l),
            rustix::fs::Advice::WillNeed,
        );
    }
    for &(o, l) in ranges {
        if o < old.min(new) {
            j.preimage(fd.as_fd(), path, o, l.min(old.min(new) - o))?;
        }
    }
    if new < old {
        j.preimage(fd.as_fd(), path, new, old - new)?;
    }
    if new != old {
        j.resized(path, old).map_err(space::naming(|| {
            format!("journaling the new size of {}", show(path))
        }))?;
    }
    Ok(())
}

/// Gives delta files their new sizes; called after the journal was synced, so a shrink never
/// reaches the disk before the pre-image of the tail it cuts.
pub fn resize_deltas(root: BorrowedFd<'_>, resizes: &[(Vec<u8>, u64, FileId)]) -> Result<()> {
    for (path, size, file) in resizes {
        let fd = beneath::open_file(root, path, OFlags::WRONLY, Mode::empty())
            .ctx(|| format!("opening {}", show(path)))?;
        file.check(fd.as_fd(), path)?;
        rustix::fs::ftruncate(&fd, *size)
            .ctx(|| format!("resizing {} to {size} bytes", show(path)))?;
    }
    Ok(())
}

/// Moves what the directories `scan` selects hold that the source does not into the journal
/// (the target is a mirror); the receiver's state directory at the top is never touched.
#[allow(clippy::too_many_arguments)]
fn remove_extraneous(
    root: BorrowedFd<'_>,
    entries: &[Entry],
    paths: &[Vec<u8>],
    skip: &[bool],
    fresh: &[bool],
    scan: impl Fn(usize) -> bool,
    touched: &mut [bool],
    j: &mut Journal,
) -> Result<u64> {
    let scanned = |i: usize| entries[i].kind == EntryKind::Dir && !fresh[i] && !skip[i] && scan(i);
    // The names the list has in the directories to scan.
    let names: HashSet<(u32, &[u8])> = entries
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, e)| !skip[*i] && scanned(e.parent.index()))
        .map(|(_, e)| (e.parent.0, e.name.as_slice()))
        .collect();
    let mut removed = 0;
    for i in 0..entries.len() {
        if !scanned(i) {
            continue;
        }
        let fd = beneath::open_dir(root, &paths[i])
            .ctx(|| format!("opening directory {}", show(&paths[i])))?;
        let listed = dir_names(fd.as_fd()).ctx(|| format!("listing {}", show(&paths[i])))?;
        for n in listed
            .into_iter()
            .filter(|n| !names.contains(&(i as u32, n.as_slice())))
        {
            if i == 0 && crate::tree::reserved_at_top(&n) {
                continue;
            }
            let mut p = paths[i].clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&n);
            removed += j.move_away(fd.as_fd(), &n, &p)?;
            touched[i] = true;
        }
    }
    Ok(removed)
}
