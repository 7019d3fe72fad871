//! Tree hash: a Merkle tree over the canonical entry list. Each directory has a content hash
//! over its children in name order (each child's name, kind and its fields, metadata and
//! xattrs, and for a subdirectory its own content hash); the tree hash covers the root's own
//! record and its content hash. Equal hashes mean equal shape and metadata; equal directory
//! hashes mean equal subtrees, so a receiver that knows which directories a job changed can
//! verify just those on disk and take the rest from its recovery point.
//!
//! Nothing in a record depends on entry numbering: a hard link names its target by path, so
//! inserting an entry elsewhere in the tree leaves every unrelated directory's hash alone.
//! File contents are checked separately (the session's content digest, and `content_hash` for
//! tests and `mover hash --content`).

use super::entry::{Entry, EntryKind, MAX_DEPTH};
use crate::error::{show, IoContext, Result};
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;
use xxhash_rust::xxh3::Xxh3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashOptions {
    /// Include numeric uid/gid (only when the receiver can set them).
    pub owners: bool,
}

/// Domain of the tree hash, so it can never equal a directory hash or a hash of the older
/// flat layout.
const TREE_DOMAIN: &[u8] = b"mover-tree-v2";
/// Mixed into the root of a list that is not in canonical pre-order (which no walk produces
/// and a receiver refuses), so it can never match a tree.
const DISORDER_DOMAIN: &[u8] = b"mover-tree-not-preorder";

fn put_bytes(h: &mut Xxh3, b: &[u8]) {
    h.update(&(b.len() as u64).to_le_bytes());
    h.update(b);
}

/// Relative path of entry `id`, from its parent links. Bounded by MAX_DEPTH components (a
/// list that claims more is cut there: it fails structure checks anyway).
pub fn path_of(entries: &[Entry], id: usize) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut cur = id;
    while cur != 0 && parts.len() <= MAX_DEPTH {
        let Some(e) = entries.get(cur) else { break };
        parts.push(&e.name);
        let p = e.parent.index();
        if p >= cur {
            break;
        }
        cur = p;
    }
    let mut out = Vec::new();
    for (k, part) in parts.iter().rev().enumerate() {
        if k > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(part);
    }
    out
}

/// Feeds one entry's own record: everything the tree hash covers about it except what lies
/// below it.
fn record(h: &mut Xxh3, entries: &[Entry], i: usize, opts: HashOptions) {
    let e = &entries[i];
    put_bytes(h, &e.name);
    h.update(&[e.kind.tag()]);
    match &e.kind {
        EntryKind::Dir => {}
        EntryKind::File { size } => h.update(&size.to_le_bytes()),
        EntryKind::Symlink { target } => put_bytes(h, target),
        EntryKind::HardLink { target } => put_bytes(h, &path_of(entries, target.index())),
        EntryKind::Special { file_type, rdev } => {
            h.update(&file_type.to_le_bytes());
            h.update(&rdev.to_le_bytes());
        }
    }
    let m = &e.meta;
    // Symlink permission bits cannot be set on Linux and hard links share their target's
    // inode, so neither contributes mode of its own.
    let has_mode = !matches!(
        e.kind,
        EntryKind::Symlink { .. } | EntryKind::HardLink { .. }
    );
    h.update(&(if has_mode { m.mode } else { 0 }).to_le_bytes());
    if opts.owners {
        h.update(&m.uid.to_le_bytes());
        h.update(&m.gid.to_le_bytes());
    }
    if !matches!(e.kind, EntryKind::HardLink { .. }) {
        h.update(&m.mtime_sec.to_le_bytes());
        h.update(&m.mtime_nsec.to_le_bytes());
    }
    h.update(&(e.xattrs.len() as u32).to_le_bytes());
    for (k, v) in &e.xattrs {
        put_bytes(h, k);
        put_bytes(h, v);
    }
}

/// Whether two entries agree on everything their records hash (names, kinds and fields,
/// metadata as `opts` counts it, xattrs); hard-link targets are compared as entry ids, so the
/// caller compares entries of one numbering. The rule the tree hash applies, for callers that
/// compare entries one by one.
pub fn same_record(a: &Entry, b: &Entry, opts: HashOptions) -> bool {
    a.name == b.name && same_but_name(a, b, opts)
}

/// `same_record` without the names: for a caller that found the item through the other's name.
pub fn same_but_name(a: &Entry, b: &Entry, opts: HashOptions) -> bool {
    let link = matches!(a.kind, EntryKind::HardLink { .. });
    let has_mode = !matches!(
        a.kind,
        EntryKind::Symlink { .. } | EntryKind::HardLink { .. }
    );
    a.kind == b.kind
        && (!has_mode || a.meta.mode == b.meta.mode)
        && (!opts.owners || (a.meta.uid, a.meta.gid) == (b.meta.uid, b.meta.gid))
        && (link || (a.meta.mtime_sec, a.meta.mtime_nsec) == (b.meta.mtime_sec, b.meta.mtime_nsec))
        && a.xattrs == b.xattrs
}

/// The Merkle tree of an entry list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merkle {
    /// The tree hash.
    pub root: u128,
    /// Content hash of each directory entry (its children and, through theirs, everything
    /// below it); 0 for other entries and skipped ones.
    pub dirs: Vec<u128>,
}

/// The Merkle tree of `entries` (canonical pre-order), leaving out entries marked in `skip`
/// (empty: none), which must be leaves: what the replica policy keeps out of a target.
pub fn merkle(entries: &[Entry], skip: &[bool], opts: HashOptions) -> Merkle {
    let mut dirs = vec![0u128; entries.len()];
    // Open directories along the current pre-order path: (entry, hasher of its content,
    // children fed so far).
    let mut stack: Vec<(usize, Xxh3, u64)> = Vec::new();
    let mut in_order = true;
    let finish = |stack: &mut Vec<(usize, Xxh3, u64)>, dirs: &mut [u128]| {
        if let Some((id, mut h, n)) = stack.pop() {
            h.update(&n.to_le_bytes());
            let d = h.digest128();
            dirs[id] = d;
            if let Some((_, parent, _)) = stack.last_mut() {
                parent.update(&d.to_le_bytes());
            }
        }
    };
    if entries.first().is_some_and(|e| e.kind == EntryKind::Dir) {
        stack.push((0, Xxh3::new(), 0));
    }
    for i in 1..entries.len() {
        if skip.get(i).copied().unwrap_or(false) {
            continue;
        }
        let p = entries[i].parent.index();
        match stack.iter().rposition(|(id, _, _)| *id == p) {
            Some(k) => {
                while stack.len() > k + 1 {
                    finish(&mut stack, &mut dirs);
                }
            }
            None => {
                in_order = false;
                continue;
            }
        }
        if let Some((_, h, n)) = stack.last_mut() {
            record(h, entries, i, opts);
            *n += 1;
        }
        if entries[i].kind == EntryKind::Dir {
            stack.push((i, Xxh3::new(), 0));
        }
    }
    while !stack.is_empty() {
        finish(&mut stack, &mut dirs);
    }
    let mut h = Xxh3::new();
    h.update(TREE_DOMAIN);
    if !entries.is_empty() {
        record(&mut h, entries, 0, opts);
        h.update(&dirs[0].to_le_bytes());
    }
    if !in_order {
        h.update(DISORDER_DOMAIN);
    }
    Merkle {
        root: h.digest128(),
        dirs,
    }
}

pub fn tree_hash(entries: &[Entry], opts: HashOptions) -> u128 {
    merkle(entries, &[], opts).root
}

/// Hash of every regular file's bytes, in entry order (holes read as zeros). Reads everything:
/// meant for tests, the demo and `mover hash --content`, not for the data path.
pub fn content_hash(root: &Path, entries: &[Entry], paths: &[Vec<u8>]) -> Result<u128> {
    let root_fd = rustix::fs::open(
        root,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .ctx(|| format!("opening {}", root.display()))?;
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    for (e, p) in entries.iter().zip(paths) {
        if let EntryKind::File { .. } = e.kind {
            let fd = crate::beneath::open_file(
                root_fd.as_fd(),
                p,
                rustix::fs::OFlags::RDONLY,
                rustix::fs::Mode::empty(),
            )
            .ctx(|| format!("opening {}", show(p)))?;
            let mut f = std::fs::File::from(fd);
            let mut fh = Xxh3::new();
            loop {
                let n = f.read(&mut buf).ctx(|| format!("reading {}", show(p)))?;
                if n == 0 {
                    break;
                }
                fh.update(&buf[..n]);
            }
            h.update(&fh.digest128().to_le_bytes());
        }
    }
    Ok(h.digest128())
}

/// Tree hash and (optionally) content hash of a directory, as `mover hash` prints them.
pub fn hash_dir(
    root: &Path,
    opts: HashOptions,
    content: bool,
) -> Result<(u128, Option<u128>, usize)> {
    let w = super::walk::walk(root, true)?;
    let t = tree_hash(&w.entries, opts);
    let c = if content {
        Some(content_hash(root, &w.entries, &w.paths)?)
    } else {
        None
    };
    Ok((t, c, w.entries.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::entry::Meta;
    use crate::units::EntryId;

    fn e(parent: u32, name: &str, kind: EntryKind, mtime: i64) -> Entry {
        Entry {
            parent: EntryId(parent),
            name: name.as_bytes().to_vec(),
            kind,
            meta: Meta {
                mode: 0o644,
                mtime_sec: mtime,
                ..Meta::default()
            },
            xattrs: vec![],
        }
    }

    const OPTS: HashOptions = HashOptions { owners: true };

    /// root { a { f, g }, b { h -> a/f } }
    fn tree() -> Vec<Entry> {
        vec![
            e(0, "", EntryKind::Dir, 1),
            e(0, "a", EntryKind::Dir, 1),
            e(1, "f", EntryKind::File { size: 3 }, 1),
            e(1, "g", EntryKind::File { size: 4 }, 1),
            e(0, "b", EntryKind::Dir, 1),
            e(4, "h", EntryKind::HardLink { target: EntryId(2) }, 1),
        ]
    }

    #[test]
    fn a_change_moves_exactly_the_hashes_of_its_ancestors() {
        let t = tree();
        let m = merkle(&t, &[], OPTS);
        let mut t2 = t.clone();
        t2[3].meta.mtime_sec = 2;
        let m2 = merkle(&t2, &[], OPTS);
        assert_ne!(m.root, m2.root);
        assert_ne!(m.dirs[0], m2.dirs[0]);
        assert_ne!(m.dirs[1], m2.dirs[1], "the changed file's directory");
        assert_eq!(m.dirs[4], m2.dirs[4], "an unrelated directory");
        assert_eq!(tree_hash(&t, OPTS), m.root);
    }

    #[test]
    fn numbering_does_not_enter_directory_hashes() {
        // A new entry before `b` renumbers b and the hard link's target stays a/f by path.
        let t = tree();
        let mut t2 = t.clone();
        t2.insert(3, e(1, "ff", EntryKind::File { size: 1 }, 1));
        for x in t2.iter_mut().skip(4) {
            if x.parent.0 >= 3 {
                x.parent.0 += 1;
            }
        }
        let (m, m2) = (merkle(&t, &[], OPTS), merkle(&t2, &[], OPTS));
        assert_eq!(m.dirs[4], m2.dirs[5], "b's content is unchanged");
        assert_ne!(m.dirs[1], m2.dirs[1]);
    }

    #[test]
    fn skipped_leaves_hash_as_if_absent_and_disorder_never_matches() {
        let t = tree();
        let mut with_dev = t.clone();
        with_dev.insert(
            4,
            e(
                1,
                "zdev",
                EntryKind::Special {
                    file_type: libc::S_IFCHR,
                    rdev: 1,
                },
                1,
            ),
        );
        for x in with_dev.iter_mut().skip(5) {
            if x.parent.0 >= 4 {
                x.parent.0 += 1;
            }
        }
        let mut skip = vec![false; with_dev.len()];
        skip[4] = true;
        assert_eq!(merkle(&with_dev, &skip, OPTS).root, tree_hash(&t, OPTS));
        let mut disorder = t.clone();
        disorder.swap(4, 5); // the link comes before its directory
        disorder[4].parent = EntryId(5);
        assert_ne!(tree_hash(&disorder, OPTS), tree_hash(&t, OPTS));
    }

    #[test]
    fn owners_count_only_when_asked() {
        let t = tree();
        let mut t2 = t.clone();
        t2[2].meta.uid = 7;
        let no = HashOptions { owners: false };
        assert_eq!(tree_hash(&t, no), tree_hash(&t2, no));
        assert_ne!(tree_hash(&t, OPTS), tree_hash(&t2, OPTS));
        assert!(same_record(&t[2], &t2[2], no) && !same_record(&t[2], &t2[2], OPTS));
    }
}
