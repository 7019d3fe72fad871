//! Failback: a source about to become the target of its own relationship (`mover relationship
//! reverse`) goes back to the last recovery point both sides hold, without losing what it
//! wrote since. Its tree is compared with that recovery point's entry list (the list the sender
//! kept in its manifest); every item created or changed since is moved, by rename(2) on the
//! same file system, into `.mover-state/discarded/<name>/` (outside the replicated tree, never
//! walked), items removed since are listed (the first job of the new direction brings them
//! back), and a report of each path and what happened is written next to them. Its receiver
//! state is then forgotten, so the first job in the new direction takes the tree as it is and
//! the sender sends only what differs.
//!
//! Items whose content is the recovery point's and only metadata changed (mode, owners,
//! extended attributes, a directory's times) stay: the next job sets their metadata back, and
//! the report lists them with what they had.

use super::state::State;
use crate::error::{show, Error, IoContext, Result};
use crate::tree::entry::{relative_paths, Entry, EntryKind};
use crate::tree::STATE_DIR;
use rustix::fs::{AtFlags, Mode};
use serde::Serialize;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

/// Where set-aside items go, under the root's state directory.
pub const DISCARDED_DIR: &str = "discarded";
/// The report written beside the set-aside items.
pub const REPORT_JSON: &str = "report.json";
pub const REPORT_TEXT: &str = "report.txt";
/// Longest name accepted for one set-aside directory (it is one path component).
const MAX_ASIDE_NAME: usize = 128;

/// What happened to a path since the common recovery point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Created since: moved aside (the recovery point has nothing there).
    Added,
    /// Content or kind changed since: moved aside; the recovery point's version comes back.
    Modified,
    /// Removed since: nothing to keep; the recovery point's version comes back.
    Deleted,
    /// Only metadata changed (mode, owners, extended attributes, a directory's times): left in
    /// place; the recovery point's metadata comes back.
    Metadata,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Modified => "modified",
            Change::Deleted => "deleted",
            Change::Metadata => "metadata",
        }
    }
}

/// One path of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AsideItem {
    /// Relative to the root.
    pub path: String,
    pub change: Change,
    /// Moved into the set-aside directory (itself, or with a directory above it).
    pub kept_aside: bool,
}

/// What going back to the common recovery point did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AsideReport {
    /// The set-aside directory relative to the root (`.mover-state/discarded/<name>`); None when
    /// nothing had to be kept.
    pub dir: Option<String>,
    pub added: u64,
    pub modified: u64,
    pub deleted: u64,
    pub metadata: u64,
    /// Every path, in tree order.
    pub items: Vec<AsideItem>,
}

/// What to do with one path (pure; `classify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub path: Vec<u8>,
    pub change: Change,
    /// Rename this path aside (false for items inside a directory that moves, and for
    /// deletions and metadata changes).
    pub moves: bool,
    pub kept_aside: bool,
}

/// Content of an entry as the recovery point holds it: what a change of means the item's data
/// differs (moved aside), as opposed to its metadata (left and set back).
fn same_content(a: &Entry, a_paths: &[Vec<u8>], b: &Entry, b_paths: &[Vec<u8>]) -> bool {
    match (&a.kind, &b.kind) {
        (EntryKind::Dir, EntryKind::Dir) => true,
        (EntryKind::File { size: x }, EntryKind::File { size: y }) => {
            x == y && a.meta.mtime_sec == b.meta.mtime_sec && a.meta.mtime_nsec == b.meta.mtime_nsec
        }
        (EntryKind::Symlink { target: x }, EntryKind::Symlink { target: y }) => x == y,
        (EntryKind::HardLink { target: x }, EntryKind::HardLink { target: y }) => {
            a_paths.get(x.index()) == b_paths.get(y.index())
        }
        (
            EntryKind::Special {
                file_type: f,
                rdev: r,
            },
            EntryKind::Special {
                file_type: g,
                rdev: s,
            },
        ) => f == g && r == s,
        _ => false,
    }
}

/// Compares the live tree (`live`, a canonical walk) with the recovery point's list (`point`):
/// every path created, changed or removed since, in live-tree order then the removals.
pub(crate) fn classify(point: &[Entry], live: &[Entry]) -> Vec<Decision> {
    let (pp, lp) = (relative_paths(point), relative_paths(live));
    let at: HashMap<&[u8], usize> = pp
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, p)| (p.as_slice(), i))
        .collect();
    let mut out = Vec::new();
    // Per live entry: it moves with a directory above it.
    let mut carried = vec![false; live.len()];
    let mut seen = vec![false; point.len()];
    for (i, e) in live.iter().enumerate().skip(1) {
        let parent = e.parent.index();
        if carried.get(parent).copied().unwrap_or(false) {
            carried[i] = true;
            let change = if at.contains_key(lp[i].as_slice()) {
                Change::Modified
            } else {
                Change::Added
            };
            if let Some(&j) = at.get(lp[i].as_slice()) {
                seen[j] = true;
            }
            out.push(Decision {
                path: lp[i].clone(),
                change,
                moves: false,
                kept_aside: true,
            });
            continue;
        }
        let change = match at.get(lp[i].as_slice()) {
            None => Some(Change::Added),
            Some(&j) => {
                seen[j] = true;
                let was = &point[j];
                if !same_content(was, &pp, e, &lp) {
                    Some(Change::Modified)
                } else if was.meta != e.meta || was.xattrs != e.xattrs {
                    Some(Change::Metadata)
                } else {
                    None
                }
            }
        };
        match change {
            None => {}
            Some(Change::Metadata) => out.push(Decision {
                path: lp[i].clone(),
                change: Change::Metadata,
                moves: false,
                kept_aside: false,
            }),
            Some(c) => {
                carried[i] = matches!(e.kind, EntryKind::Dir);
                out.push(Decision {
                    path: lp[i].clone(),
                    change: c,
                    moves: true,
                    kept_aside: true,
                });
            }
        }
    }
    for (j, p) in pp.iter().enumerate().skip(1) {
        if !seen[j] {
            out.push(Decision {
                path: p.clone(),
                change: Change::Deleted,
                moves: false,
                kept_aside: false,
            });
        }
    }
    out
}

/// Creates (or opens) directory `rel` beneath `base`, one component at a time, never following
/// a symlink.
fn mkdirs(base: BorrowedFd<'_>, rel: &[u8]) -> Result<std::os::fd::OwnedFd> {
    let mut cur = crate::beneath::open_dir(base, b"")
        .ctx(|| "opening the set-aside directory".to_string())?;
    for name in rel.split(|&b| b == b'/').filter(|n| !n.is_empty()) {
        match rustix::fs::mkdirat(&cur, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e).ctx(|| format!("creating {} aside", show(rel))),
        }
        cur = crate::beneath::open_dir(cur.as_fd(), name)
            .ctx(|| format!("opening {} aside", show(rel)))?;
    }
    Ok(cur)
}

/// Goes back to the recovery point whose entry list is `point`: moves what was created or
/// changed since into `.mover-state/discarded/<name>/` (same relative paths), writes the report
/// there (`report.json`, `report.txt`), and forgets the receiver state the root held, so the
/// next job takes the tree as it is. Holds the receiver's lock meanwhile.
pub fn set_aside(root: &Path, point: &[Entry], name: &str) -> Result<AsideReport> {
    if name.is_empty()
        || name.len() > MAX_ASIDE_NAME
        || crate::tree::entry::validate_name(name.as_bytes()).is_err()
    {
        return Err(Error::Revert(format!(
            "{name:?} cannot name a set-aside directory"
        )));
    }
    if point.is_empty() {
        return Err(Error::Revert(
            "the common recovery point has no entry list to compare with".into(),
        ));
    }
    let fd = crate::beneath::open_root(root, "root")?;
    let state = State::open(fd.as_fd())?;
    let _lock = state.lock(root)?;
    let walked = crate::tree::walk::walk_fd(fd.as_fd(), true)?;
    let decisions = classify(point, &walked.entries);
    let mut report = AsideReport::default();
    let rel_dir = format!("{}/{DISCARDED_DIR}/{name}", show(STATE_DIR));
    let moving = decisions.iter().any(|d| d.moves);
    let aside = if moving {
        let d = mkdirs(
            state.dir.as_fd(),
            format!("{DISCARDED_DIR}/{name}").as_bytes(),
        )?;
        report.dir = Some(rel_dir.clone());
        Some(d)
    } else {
        None
    };
    for d in &decisions {
        if let (true, Some(aside)) = (d.moves, &aside) {
            let (parent, leaf) = crate::beneath::split_parent(&d.path);
            let from = crate::beneath::open_dir(fd.as_fd(), parent)
                .ctx(|| format!("opening {}", show(parent)))?;
            let to = mkdirs(aside.as_fd(), parent)?;
            // A large file changed in place is kept aside as a copy (a reflink where the file
            // system has them) and stays: the first job then sends only the blocks that differ
            // from the recovery point's version (CAP_BLOCK_HASHES), not the whole file again
            // over the network.
            let large = d.change == Change::Modified
                && crate::beneath::stat_opt(from.as_fd(), leaf)
                    .ctx(|| format!("stat {}", show(&d.path)))?
                    .is_some_and(|s| {
                        rustix::fs::FileType::from_raw_mode(s.st_mode)
                            == rustix::fs::FileType::RegularFile
                            && !crate::wire::message::is_inline(s.st_size as u64)
                            && s.st_nlink == 1
                    });
            let kept = large
                && crate::snapshot::clone_or_copy(from.as_fd(), to.as_fd(), leaf, leaf, &d.path)
                    .is_ok();
            if !kept {
                rustix::fs::renameat(&from, leaf, &to, leaf)
                    .ctx(|| format!("moving {} aside", show(&d.path)))?;
            }
        }
        match d.change {
            Change::Added => report.added += 1,
            Change::Modified => report.modified += 1,
            Change::Deleted => report.deleted += 1,
            Change::Metadata => report.metadata += 1,
        }
        report.items.push(AsideItem {
            path: show(&d.path),
            change: d.change,
            kept_aside: d.kept_aside,
        });
    }
    if let Some(aside) = &aside {
        rustix::fs::fsync(aside).ctx(|| "fsync of the set-aside directory".to_string())?;
        let json = serde_json::to_vec_pretty(&report)
            .map_err(|e| Error::Corrupt(format!("the set-aside report: {e}")))?;
        crate::durable::write_atomic(aside.as_fd(), REPORT_JSON, &json)?;
        crate::durable::write_atomic(aside.as_fd(), REPORT_TEXT, text(&report).as_bytes())?;
    }
    // The tree moved under the stored recovery point: forgotten, so the next job compares
    // every entry with the disk ("takes the destination as it is") instead of trusting it.
    forget_receiver_state(&state)?;
    rustix::fs::fsync(&fd).ctx(|| "fsync of the root".to_string())?;
    Ok(report)
}

/// The report as an operator reads it: one line per path.
pub fn text(r: &AsideReport) -> String {
    let mut s = format!(
        "{} added, {} modified, {} deleted, {} with changed metadata since the common recovery point\n",
        r.added, r.modified, r.deleted, r.metadata
    );
    if let Some(d) = &r.dir {
        s.push_str(&format!("kept aside in {d}\n"));
    }
    for i in &r.items {
        let what = match (i.change, i.kept_aside) {
            (Change::Added, _) => "added, kept aside",
            (Change::Modified, _) => {
                "modified, kept aside; the recovery point's version comes back"
            }
            (Change::Deleted, _) => "deleted; the recovery point's version comes back",
            (Change::Metadata, _) => "metadata changed; the recovery point's metadata comes back",
        };
        s.push_str(&format!("{:<9} {}  ({what})\n", i.change.name(), i.path));
    }
    s
}

/// Drops the recovery point record (first: without it nothing trusts the rest), its lists, the
/// last scrub and any journal.
fn forget_receiver_state(state: &State) -> Result<()> {
    let gone = |name: &str| match rustix::fs::unlinkat(&state.dir, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e).ctx(|| format!("removing .mover-state/{name}")),
    };
    gone(super::state::RP_FILE)?;
    rustix::fs::fsync(&state.dir).ctx(|| "fsync of .mover-state".to_string())?;
    super::journal::discard(state)?;
    gone(super::scrub::SCRUB_FILE)?;
    let names =
        crate::beneath::dir_names(state.dir.as_fd()).ctx(|| "listing .mover-state".to_string())?;
    for n in names {
        if n.starts_with(b"rp-") && n.ends_with(b".entries") {
            gone(&String::from_utf8_lossy(&n))?;
        }
    }
    Ok(())
}

/// The recovery point a sender's state directory (`mover send --state`, the daemon's per
/// relationship state) says its receiver holds, with the entry list it sent for it: the common
/// point of a failback. None: no manifest, or one without its list.
pub fn sent_point(state_dir: &Path) -> Result<Option<(u128, Vec<Entry>)>> {
    if !state_dir.exists() {
        return Ok(None);
    }
    Ok(crate::sender::manifest::Manifest::load(state_dir)?
        .filter(|m| !m.entries.is_empty())
        .map(|m| (m.rp, m.entries)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::entry::Meta;
    use crate::units::EntryId;

    fn e(parent: u32, name: &str, kind: EntryKind, mtime: i64, mode: u32) -> Entry {
        Entry {
            parent: EntryId(parent),
            name: name.as_bytes().to_vec(),
            kind,
            meta: Meta {
                mode,
                uid: 0,
                gid: 0,
                mtime_sec: mtime,
                mtime_nsec: 0,
            },
            xattrs: vec![],
        }
    }

    fn file(parent: u32, name: &str, size: u64, mtime: i64) -> Entry {
        e(parent, name, EntryKind::File { size }, mtime, 0o644)
    }

    fn dir(parent: u32, name: &str) -> Entry {
        e(parent, name, EntryKind::Dir, 1, 0o755)
    }

    fn found(d: &[Decision]) -> Vec<(String, Change, bool)> {
        d.iter()
            .map(|x| (show(&x.path), x.change, x.moves))
            .collect()
    }

    #[test]
    fn what_changed_since_the_point_moves_and_what_was_removed_is_listed() {
        let point = vec![
            dir(0, ""),
            dir(0, "a"),
            file(1, "keep", 10, 5),
            file(1, "edit", 10, 5),
            file(1, "gone", 10, 5),
            file(1, "chmod", 10, 5),
            file(0, "was-file", 3, 5),
        ];
        let mut chmod = file(1, "chmod", 10, 5);
        chmod.meta.mode = 0o600;
        let live = vec![
            dir(0, ""),
            dir(0, "a"),
            chmod,
            file(1, "edit", 12, 6),
            file(1, "keep", 10, 5),
            file(1, "new", 1, 9),
            dir(0, "new-dir"),
            file(6, "inside", 1, 9),
            dir(0, "was-file"),
            file(8, "x", 1, 9),
        ];
        let d = classify(&point, &live);
        assert_eq!(
            found(&d),
            vec![
                ("a/chmod".into(), Change::Metadata, false),
                ("a/edit".into(), Change::Modified, true),
                ("a/new".into(), Change::Added, true),
                ("new-dir".into(), Change::Added, true),
                ("new-dir/inside".into(), Change::Added, false),
                ("was-file".into(), Change::Modified, true),
                ("was-file/x".into(), Change::Added, false),
                ("a/gone".into(), Change::Deleted, false),
            ]
        );
        assert!(d
            .iter()
            .filter(|x| x.path.starts_with(b"new-dir"))
            .all(|x| x.kept_aside));
        assert!(classify(&point, &point).is_empty(), "the point itself");
    }

    #[test]
    fn a_tree_set_aside_is_its_recovery_point_again_and_the_report_names_every_path() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/keep"), b"keep").unwrap();
        std::fs::write(root.join("d/edit"), b"before").unwrap();
        std::fs::write(root.join("gone"), b"gone").unwrap();
        let fd = crate::beneath::open_root(root, "root").unwrap();
        let point = crate::tree::walk::walk_fd(fd.as_fd(), true)
            .unwrap()
            .entries;
        // A stale receiver state that must not survive.
        let state = State::open(fd.as_fd()).unwrap();
        crate::durable::write_atomic(state.dir.as_fd(), super::super::state::RP_FILE, b"x")
            .unwrap();
        std::fs::write(root.join("d/edit"), b"after, longer").unwrap();
        std::fs::remove_file(root.join("gone")).unwrap();
        std::fs::create_dir_all(root.join("new/sub")).unwrap();
        std::fs::write(root.join("new/sub/f"), b"f").unwrap();
        let r = set_aside(root, &point, "1-test").unwrap();
        assert_eq!((r.added, r.modified, r.deleted), (3, 1, 1), "{r:?}");
        let aside = root.join(".mover-state/discarded/1-test");
        assert_eq!(r.dir.as_deref(), Some(".mover-state/discarded/1-test"));
        assert_eq!(
            std::fs::read(aside.join("d/edit")).unwrap(),
            b"after, longer"
        );
        assert_eq!(std::fs::read(aside.join("new/sub/f")).unwrap(), b"f");
        assert!(!root.join("new").exists() && !root.join("d/edit").exists());
        assert_eq!(std::fs::read(root.join("d/keep")).unwrap(), b"keep");
        let listed = std::fs::read_to_string(aside.join(REPORT_TEXT)).unwrap();
        for p in ["d/edit", "new/sub/f", "gone"] {
            assert!(listed.contains(p), "{p} not in {listed}");
        }
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(aside.join(REPORT_JSON)).unwrap()).unwrap();
        assert_eq!(json["items"].as_array().unwrap().len(), r.items.len());
        assert!(
            state.recovery_point().unwrap().is_none(),
            "receiver state forgotten"
        );
        // Nothing changed since: nothing moves, no directory is made.
        let now = crate::tree::walk::walk_fd(fd.as_fd(), true)
            .unwrap()
            .entries;
        let again = set_aside(root, &now, "2-test").unwrap();
        assert_eq!(again, AsideReport::default());
        assert!(!root.join(".mover-state/discarded/2-test").exists());
        assert!(set_aside(root, &now, "../x").is_err());
    }
}
