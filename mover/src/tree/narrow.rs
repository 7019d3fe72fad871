//! A walk narrowed to what changed: given the previous job's walk and the set of directories a
//! file-system watcher saw change since, it reads only those directories (and the paths down to
//! them) and copies the rest of the previous list. The result is the list a full walk gives,
//! provided the set is complete; the cost is that of what changed, not of the tree.
//!
//! Trust: an entry copied from the previous list is never looked at again, so a change the set
//! does not name is not seen (the caller's watcher must be complete). What is checked anyway,
//! because it is cheap: every directory the narrowed walk opens on the way down to a changed one
//! must still be the same inode with the same ctime, and a directory read fresh whose ctime or
//! mtime moved is listed again even if the set does not name it. Whatever cannot be answered
//! from the previous list and the directories read (hard links, an inconsistent previous list)
//! makes the walk give up (`None`): the caller then walks the whole tree.

use super::entry::{Entry, EntryKind, MAX_DEPTH};
use super::walk::{
    open_root, open_subdir, read_names, root_names, stat_nofollow, visit, walk_below, FileId,
    Fragment, KnownFn, Walked,
};
use crate::error::{show, Error, IoContext, Result};
use crate::units::EntryId;
use rustix::fs::FileType;
use std::collections::BTreeSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The directories that changed since the previous job's walk, by relative path (as in
/// `Walked::paths`; the root is the empty path). A directory is in the set iff its listing
/// changed or a direct child's inode changed (data, metadata, xattrs) or was created, removed,
/// or renamed in or out.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangedDirs {
    pub dirs: BTreeSet<Vec<u8>>,
}

impl ChangedDirs {
    pub fn contains(&self, path: &[u8]) -> bool {
        self.dirs.contains(path)
    }

    /// A member is `path` or lies below it.
    pub fn at_or_below(&self, path: &[u8]) -> bool {
        if path.is_empty() {
            return !self.dirs.is_empty();
        }
        if self.dirs.contains(path) {
            return true;
        }
        // Paths under `path/` are one contiguous range in byte order.
        let mut under = Vec::with_capacity(path.len() + 1);
        under.extend_from_slice(path);
        under.push(b'/');
        self.dirs
            .range::<[u8], _>((
                std::ops::Bound::Included(under.as_slice()),
                std::ops::Bound::Unbounded,
            ))
            .next()
            .is_some_and(|d| d.starts_with(&under))
    }
}

/// The previous job's walk as the sender keeps it (its manifest): the entry list as sent, and
/// the path and identity of each entry.
pub struct Previous<'a> {
    pub entries: &'a [Entry],
    /// Path of each entry (the root's is empty).
    pub paths: Vec<&'a [u8]>,
    /// Identity of each entry as the sender keeps it after a walk: `dev` 0 stands for the
    /// root's device (the root's own id is not used).
    pub ids: Vec<FileId>,
}

impl<'a> Previous<'a> {
    /// A walk as the sender keeps it: devices equal to the root's are 0.
    pub fn from_walked(w: &'a Walked) -> Previous<'a> {
        let root_dev = w.ids.first().map_or(0, |id| id.dev);
        Previous {
            entries: &w.entries,
            paths: w.paths.iter().map(Vec::as_slice).collect(),
            ids: w
                .ids
                .iter()
                .map(|id| FileId {
                    dev: if id.dev == root_dev { 0 } else { id.dev },
                    ..*id
                })
                .collect(),
        }
    }
}

/// What a narrowed walk found.
pub struct Narrowed {
    /// What a full walk would have given (ids with their devices, not yet normalised).
    pub walked: Walked,
    /// Entries read from the file system in this walk; the others are copies of the previous
    /// list (which the sender already sent with its id map applied: only fresh ones need it).
    pub fresh: Vec<bool>,
}

impl Narrowed {
    pub fn fresh_count(&self) -> usize {
        self.fresh.iter().filter(|f| **f).count()
    }
}

/// Where the children of a directory being walked come from.
enum Children {
    /// Its listing, read now; `cursor` runs over its previous children (if it had any) in name
    /// order, to find the previous entry of each name.
    Listed {
        names: Vec<Vec<u8>>,
        next: usize,
        cursor: usize,
    },
    /// The previous children of previous entry `of`, in order, up to `end` (the directory did
    /// not change).
    Reused { of: usize, next: usize, end: usize },
}

struct Frame {
    fd: OwnedFd,
    /// The directory in the new list, and in the previous one (None: it is new there).
    id: EntryId,
    prev: Option<usize>,
    /// Directories between the root and this one, itself included (the root is 0).
    depth: usize,
    children: Children,
}

struct Out<'p, 'a> {
    prev: &'p Previous<'a>,
    /// End of each previous entry's subtree (pre-order: a subtree is a contiguous range).
    end: Vec<usize>,
    f: Fragment,
    fresh: Vec<bool>,
    root_dev: u64,
}

impl Out<'_, '_> {
    /// Copies previous entries `lo..hi` (whole subtrees whose parents lie in the range, or are
    /// `old_parent`) under `new_parent`.
    fn copy(&mut self, lo: usize, hi: usize, old_parent: usize, new_parent: EntryId) {
        let base = self.f.entries.len();
        for k in lo..hi {
            let mut e = self.prev.entries[k].clone();
            let p = e.parent.index();
            debug_assert!(p == old_parent || (lo..k).contains(&p));
            e.parent = if p == old_parent {
                new_parent
            } else {
                EntryId((base + p - lo) as u32)
            };
            self.f.entries.push(e);
            self.f.paths.push(self.prev.paths[k].to_vec());
            self.f.link_keys.push(None);
            let id = self.prev.ids[k];
            self.f.ids.push(FileId {
                dev: if id.dev == 0 { self.root_dev } else { id.dev },
                ..id
            });
            self.fresh.push(false);
        }
    }

    /// The entries appended since `from` were read fresh; false if one of them is a regular
    /// file with other links (folding links needs the whole tree: not narrowed).
    fn fresh_since(&mut self, from: usize) -> bool {
        self.fresh.resize(self.f.entries.len(), true);
        self.f.link_keys[from..].iter().all(Option::is_none)
    }

    /// Same inode (number and birth time; the device changes with each btrfs snapshot).
    fn same_inode(&self, k: usize, id: &FileId) -> bool {
        let p = &self.prev.ids[k];
        p.ino == id.ino && p.btime == id.btime
    }
}

/// Walks `root` reading only what `changed` names (see the module's doc). `xattrs` and `known`
/// as for `walk_fd_streaming`. `None`: narrowing cannot be trusted here, walk the whole tree.
pub fn narrow(
    root: BorrowedFd<'_>,
    prev: &Previous<'_>,
    changed: &ChangedDirs,
    xattrs: bool,
    known: Option<KnownFn<'_>>,
) -> Result<Option<Narrowed>> {
    let Some(end) = subtree_ends(prev) else {
        return Ok(None);
    };
    let (root_fd, w) = open_root(root, xattrs)?;
    let root_dev = w.ids[0].dev;
    let mut o = Out {
        prev,
        end,
        f: Fragment {
            link_keys: vec![None],
            entries: w.entries,
            paths: w.paths,
            ids: w.ids,
        },
        fresh: vec![true],
        root_dev,
    };
    let (was, now) = (&prev.entries[0].meta, &o.f.entries[0].meta);
    let listed =
        changed.contains(b"") || (was.mtime_sec, was.mtime_nsec) != (now.mtime_sec, now.mtime_nsec);
    let children = if listed {
        Children::Listed {
            names: root_names(root_fd.as_fd())?,
            next: 0,
            cursor: 1,
        }
    } else {
        Children::Reused {
            of: 0,
            next: 1,
            end: o.end[0],
        }
    };
    let mut stack = vec![Frame {
        fd: root_fd,
        id: EntryId::ROOT,
        prev: Some(0),
        depth: 0,
        children,
    }];
    // Each turn consumes a name or a previous entry of the top frame, or pops it: the loop is
    // bounded by the names listed plus the previous list; frames are at most MAX_DEPTH deep.
    while let Some(top) = stack.last_mut() {
        let push = match &mut top.children {
            Children::Reused { of, next, end } => {
                if *next >= *end {
                    stack.pop();
                    continue;
                }
                let j = *next;
                *next = o.end[j];
                let d = (top.fd.as_fd(), top.id, top.depth);
                match reused_child(&mut o, changed, d, *of, j)? {
                    Step::Push(f) => Some(f),
                    Step::Done => None,
                    Step::GiveUp => return Ok(None),
                }
            }
            Children::Listed {
                names,
                next,
                cursor,
            } => {
                if *next == names.len() {
                    stack.pop();
                    continue;
                }
                let name = std::mem::take(&mut names[*next]);
                *next += 1;
                if top.depth >= MAX_DEPTH {
                    return Err(Error::Limit(format!(
                        "{}: deeper than {MAX_DEPTH} directories",
                        show(&o.f.paths[top.id.index()])
                    )));
                }
                // The previous entry of this name, if the directory had one.
                let mut was = None;
                if let Some(pi) = top.prev {
                    while *cursor < o.end[pi] && prev.entries[*cursor].name < name {
                        *cursor = o.end[*cursor];
                    }
                    if *cursor < o.end[pi] && prev.entries[*cursor].name == name {
                        was = Some(*cursor);
                    }
                }
                let d = (top.fd.as_fd(), top.id, top.depth);
                match listed_child(&mut o, changed, d, name, was, xattrs, known)? {
                    Step::Push(f) => Some(f),
                    Step::Done => None,
                    Step::GiveUp => return Ok(None),
                }
            }
        };
        if let Some(f) = push {
            stack.push(f);
        }
    }
    debug_assert_eq!(o.fresh.len(), o.f.entries.len());
    Ok(Some(Narrowed {
        walked: Walked {
            entries: o.f.entries,
            paths: o.f.paths,
            ids: o.f.ids,
        },
        fresh: o.fresh,
    }))
}

enum Step {
    /// Walk the children of this directory next.
    Push(Frame),
    Done,
    /// Narrowing cannot be trusted.
    GiveUp,
}

/// Previous child `j` of previous directory `pi` (unchanged; `dir`: its fd, new id and depth):
/// copied whole, unless a changed directory lies at or below it.
fn reused_child(
    o: &mut Out<'_, '_>,
    changed: &ChangedDirs,
    dir: (BorrowedFd<'_>, EntryId, usize),
    pi: usize,
    j: usize,
) -> Result<Step> {
    let (fd, id, depth) = dir;
    let e = &o.prev.entries[j];
    let path = o.prev.paths[j];
    if !matches!(e.kind, EntryKind::Dir) || !changed.at_or_below(path) {
        o.copy(j, o.end[j], pi, id);
        return Ok(Step::Done);
    }
    // Its parent did not change, so neither did it: check that cheaply before opening it, as
    // reading children into another directory would make a wrong list, not just a stale one.
    let same = match stat_nofollow(fd, &e.name) {
        Ok((st, btime)) => {
            let now = super::walk::file_id(&st, btime);
            FileType::from_raw_mode(st.st_mode) == FileType::Directory
                && o.same_inode(j, &now)
                && (now.ctime_sec, now.ctime_nsec)
                    == (o.prev.ids[j].ctime_sec, o.prev.ids[j].ctime_nsec)
        }
        Err(err) if err == rustix::io::Errno::NOENT => false,
        Err(err) => return Err(err).ctx(|| format!("stat {}", show(path))),
    };
    if !same {
        tracing::debug!(path = %show(path), "a directory changed outside the changed set");
        return Ok(Step::GiveUp);
    }
    let child = open_subdir(fd, &e.name).ctx(|| format!("opening directory {}", show(path)))?;
    let cid = EntryId(o.f.entries.len() as u32);
    o.copy(j, j + 1, pi, id);
    let children = if changed.contains(path) {
        Children::Listed {
            names: read_names(child.as_fd(), path)?,
            next: 0,
            cursor: j + 1,
        }
    } else {
        Children::Reused {
            of: j,
            next: j + 1,
            end: o.end[j],
        }
    };
    Ok(Step::Push(Frame {
        fd: child,
        id: cid,
        prev: Some(j),
        depth: depth + 1,
        children,
    }))
}

/// `name` of a directory being listed (`dir`: its fd, id and depth), read fresh; `was` is the
/// previous entry of that name in it.
fn listed_child(
    o: &mut Out<'_, '_>,
    changed: &ChangedDirs,
    dir: (BorrowedFd<'_>, EntryId, usize),
    name: Vec<u8>,
    was: Option<usize>,
    xattrs: bool,
    known: Option<KnownFn<'_>>,
) -> Result<Step> {
    let (fd, id, depth) = dir;
    let at = o.f.entries.len();
    let parent_path = o.f.paths[id.index()].clone();
    let child = visit(fd, name, id, &parent_path, &mut o.f, xattrs, known)?;
    if o.f.entries.len() == at {
        return Ok(Step::Done); // gone since the listing
    }
    if !o.fresh_since(at) {
        return Ok(Step::GiveUp);
    }
    let Some(child) = child else {
        return Ok(Step::Done);
    };
    let cid = EntryId(at as u32);
    let now = o.f.ids[at];
    // The same directory as before (not new, not renamed in, not replaced).
    let Some(pj) =
        was.filter(|&k| matches!(o.prev.entries[k].kind, EntryKind::Dir) && o.same_inode(k, &now))
    else {
        walk_below(&mut o.f, child, cid, depth + 1, xattrs, known)?;
        return Ok(if o.fresh_since(at) {
            Step::Done
        } else {
            Step::GiveUp
        });
    };
    let (p, m) = (&o.prev.ids[pj], &o.prev.entries[pj].meta);
    let meta = &o.f.entries[at].meta;
    // A moved ctime or mtime may be a changed listing: read it again whatever the set says.
    let moved = (p.ctime_sec, p.ctime_nsec) != (now.ctime_sec, now.ctime_nsec)
        || (m.mtime_sec, m.mtime_nsec) != (meta.mtime_sec, meta.mtime_nsec);
    let path = o.prev.paths[pj];
    let children = if moved || changed.contains(path) {
        Children::Listed {
            names: read_names(child.as_fd(), path)?,
            next: 0,
            cursor: pj + 1,
        }
    } else if changed.at_or_below(path) {
        Children::Reused {
            of: pj,
            next: pj + 1,
            end: o.end[pj],
        }
    } else {
        o.copy(pj + 1, o.end[pj], pj, cid);
        return Ok(Step::Done);
    };
    Ok(Step::Push(Frame {
        fd: child,
        id: cid,
        prev: Some(pj),
        depth: depth + 1,
        children,
    }))
}

/// End of each entry's subtree in the previous list (one past its last descendant), or None if
/// the list cannot be narrowed from: not a canonical list of a root and its descendants, or it
/// has hard links (which are folded over the whole tree in order).
fn subtree_ends(prev: &Previous<'_>) -> Option<Vec<usize>> {
    let n = prev.entries.len();
    if n == 0
        || prev.paths.len() != n
        || prev.ids.len() != n
        || !matches!(prev.entries[0].kind, EntryKind::Dir)
    {
        return None;
    }
    let mut end: Vec<usize> = (1..=n).collect();
    for i in (1..n).rev() {
        let p = prev.entries[i].parent.index();
        if p >= i
            || !matches!(prev.entries[p].kind, EntryKind::Dir)
            || matches!(prev.entries[i].kind, EntryKind::HardLink { .. })
        {
            return None;
        }
        end[p] = end[p].max(end[i]);
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::walk::walk_fd;
    use std::collections::HashSet;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    /// Seeded trees checked per run, and mutations per tree at most.
    const CASES: u64 = 150;
    const MAX_MUTATIONS: u64 = 10;

    /// splitmix64: a deterministic stream per seed, so a failing case is replayed by its seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
            (!v.is_empty()).then(|| v[self.below(v.len() as u64) as usize].clone())
        }
    }

    fn open(p: &Path) -> OwnedFd {
        crate::beneath::open_root(p, "test root").unwrap()
    }

    fn set_x(p: &Path, v: &[u8]) {
        // A file system without user xattrs just leaves the entry unchanged.
        let _ = rustix::fs::lsetxattr(p, "user.x", v, rustix::fs::XattrFlags::empty());
    }

    fn populate(dir: &Path, rng: &mut Rng, depth: u32) {
        for i in 0..rng.below(6) {
            let p = dir.join(format!("f{i}"));
            std::fs::write(&p, vec![b'a'; rng.below(300) as usize]).unwrap();
            if rng.below(4) == 0 {
                set_x(&p, b"v");
            }
        }
        if rng.below(3) == 0 {
            std::os::unix::fs::symlink("f0", dir.join("ln")).unwrap();
        }
        if depth < 3 {
            for i in 0..rng.below(4) {
                let d = dir.join(format!("d{i}"));
                std::fs::create_dir(&d).unwrap();
                populate(&d, rng, depth + 1);
            }
        }
    }

    /// Everything under `root` (not the root): (path, is a directory).
    fn all(root: &Path) -> Vec<(PathBuf, bool)> {
        let mut out = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let is_dir = e.file_type().unwrap().is_dir();
                if is_dir {
                    todo.push(e.path());
                }
                out.push((e.path(), is_dir));
            }
        }
        out.sort();
        out
    }

    /// Changed directories, by inode (what a watcher of directory inodes sees); their paths
    /// are taken at the end, as a watcher would report them.
    #[derive(Default)]
    struct Changes(HashSet<u64>);
    impl Changes {
        fn dir(&mut self, d: &Path) {
            self.0.insert(std::fs::symlink_metadata(d).unwrap().ino());
        }
        /// `p`'s inode changed: its directory is changed.
        fn inode(&mut self, p: &Path) {
            self.dir(p.parent().unwrap());
        }
        /// `d`'s listing changed: so did `d`'s own inode (its times).
        fn listing(&mut self, root: &Path, d: &Path) {
            self.dir(d);
            if d != root {
                self.inode(d);
            }
        }
        fn paths(&self, root: &Path) -> ChangedDirs {
            let mut dirs = BTreeSet::new();
            if self.0.contains(&std::fs::metadata(root).unwrap().ino()) {
                dirs.insert(Vec::new());
            }
            for (p, is_dir) in all(root) {
                if is_dir
                    && self
                        .0
                        .contains(&std::fs::symlink_metadata(&p).unwrap().ino())
                {
                    let rel = p.strip_prefix(root).unwrap();
                    dirs.insert(rel.as_os_str().as_encoded_bytes().to_vec());
                }
            }
            ChangedDirs { dirs }
        }
    }

    fn mutate(root: &Path, rng: &mut Rng, ch: &mut Changes, n: u64) {
        for k in 0..rng.below(n + 1) {
            let items = all(root);
            let files: Vec<PathBuf> = items
                .iter()
                .filter(|(p, d)| !d && !p.is_symlink())
                .map(|x| x.0.clone())
                .collect();
            let mut dirs: Vec<PathBuf> =
                items.iter().filter(|x| x.1).map(|x| x.0.clone()).collect();
            dirs.push(root.to_path_buf());
            let Some(d) = rng.pick(&dirs) else { continue };
            match rng.below(9) {
                0 => {
                    std::fs::write(d.join(format!("new{k}")), b"new").unwrap();
                    ch.listing(root, &d);
                }
                1 => {
                    if let Some(f) = rng.pick(&files) {
                        std::fs::remove_file(&f).unwrap();
                        ch.listing(root, f.parent().unwrap());
                    }
                }
                2 => {
                    // A file or a directory moved anywhere (not into itself).
                    if let Some((p, _)) = rng.pick(&items) {
                        if !d.starts_with(&p) {
                            let to = d.join(format!("mv{k}"));
                            ch.listing(root, p.parent().unwrap());
                            std::fs::rename(&p, &to).unwrap();
                            ch.listing(root, &d);
                            // A rename moves the inode's ctime.
                            ch.inode(&to);
                        }
                    }
                }
                3 => {
                    if let Some(f) = rng.pick(&files) {
                        let mut x = std::fs::read(&f).unwrap();
                        x.push(b'z');
                        std::fs::write(&f, x).unwrap();
                        ch.inode(&f);
                    }
                }
                4 => {
                    if let Some((p, _)) = rng.pick(&items) {
                        if !p.is_symlink() {
                            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))
                                .unwrap();
                            ch.inode(&p);
                        }
                    }
                }
                5 => {
                    if let Some((p, _)) = rng.pick(&items) {
                        if !p.is_symlink() {
                            set_x(&p, format!("{k}").as_bytes());
                            ch.inode(&p);
                        }
                    }
                }
                6 => {
                    std::os::unix::fs::symlink(format!("t{k}"), d.join(format!("sl{k}"))).unwrap();
                    ch.listing(root, &d);
                }
                7 => {
                    let nd = d.join(format!("nd{k}"));
                    std::fs::create_dir(&nd).unwrap();
                    populate(&nd, rng, 2);
                    ch.listing(root, &d);
                }
                _ => {
                    if let Some(x) = rng.pick(&dirs).filter(|x| x != root) {
                        std::fs::remove_dir_all(&x).unwrap();
                        ch.listing(root, x.parent().unwrap());
                    }
                }
            }
        }
    }

    fn assert_same(got: &Walked, want: &Walked, seed: u64) {
        assert_eq!(got.paths, want.paths, "paths, seed {seed}");
        assert_eq!(got.entries, want.entries, "entries, seed {seed}");
        assert_eq!(got.ids, want.ids, "ids, seed {seed}");
    }

    #[test]
    fn narrowed_walk_equals_a_full_walk_after_random_changes() {
        let (mut reused, mut total) = (0, 0);
        for seed in 0..CASES {
            let t = tempfile::tempdir().unwrap();
            let root = t.path();
            let mut rng = Rng(seed);
            populate(root, &mut rng, 0);
            let fd = open(root);
            let before = walk_fd(fd.as_fd(), true).unwrap();
            let mut ch = Changes::default();
            mutate(root, &mut rng, &mut ch, MAX_MUTATIONS);
            let changed = ch.paths(root);
            let prev = Previous::from_walked(&before);
            let got = narrow(fd.as_fd(), &prev, &changed, true, None)
                .unwrap()
                .unwrap_or_else(|| panic!("seed {seed}: not narrowed"));
            let want = walk_fd(fd.as_fd(), true).unwrap();
            assert_same(&got.walked, &want, seed);
            assert_eq!(got.fresh.len(), want.entries.len());
            reused += got.fresh.len() - got.fresh_count();
            total += got.fresh.len();
            // What the sender keeps after the walk narrows the same way.
            let again = Previous::from_walked(&want);
            let got = narrow(fd.as_fd(), &again, &changed, true, None)
                .unwrap()
                .unwrap();
            assert_same(&got.walked, &want, seed);
        }
        // The cases narrow for real: a good part of the entries are copies (small trees and up
        // to MAX_MUTATIONS changes each touch a large share of their directories).
        assert!(reused * 4 > total, "{reused} of {total} entries reused");
    }

    #[test]
    fn empty_set_reuses_every_entry_below_the_root_without_reading_it() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), b"x").unwrap();
        let fd = open(t.path());
        let before = walk_fd(fd.as_fd(), true).unwrap();
        // Not in the set: the narrowed walk trusts the set and still lists it.
        std::fs::remove_file(t.path().join("d/f")).unwrap();
        let got = narrow(
            fd.as_fd(),
            &Previous::from_walked(&before),
            &ChangedDirs::default(),
            true,
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(got.walked.paths, before.paths);
        assert_eq!(got.walked.entries[1..], before.entries[1..]);
        assert_eq!(got.fresh, vec![true, false, false]);
        assert_eq!(got.fresh_count(), 1);
    }

    #[test]
    fn changed_dir_is_read_and_its_siblings_are_not() {
        let t = tempfile::tempdir().unwrap();
        for d in ["a", "b"] {
            std::fs::create_dir(t.path().join(d)).unwrap();
            std::fs::write(t.path().join(d).join("f"), b"x").unwrap();
        }
        let fd = open(t.path());
        let before = walk_fd(fd.as_fd(), true).unwrap();
        std::fs::write(t.path().join("a/f"), b"xy").unwrap();
        let changed = ChangedDirs {
            dirs: [b"a".to_vec()].into(),
        };
        let got = narrow(
            fd.as_fd(),
            &Previous::from_walked(&before),
            &changed,
            true,
            None,
        )
        .unwrap()
        .unwrap();
        assert_same(&got.walked, &walk_fd(fd.as_fd(), true).unwrap(), 0);
        // The root, and a's file; a itself and b's subtree are copies.
        assert_eq!(got.fresh, vec![true, false, true, false, false]);
    }

    #[test]
    fn hard_links_are_not_narrowed() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), b"x").unwrap();
        let fd = open(t.path());
        let before = walk_fd(fd.as_fd(), true).unwrap();
        // A new second name of a file, in a changed directory.
        std::fs::hard_link(t.path().join("d/f"), t.path().join("d/g")).unwrap();
        let changed = ChangedDirs {
            dirs: [b"d".to_vec()].into(),
        };
        let prev = Previous::from_walked(&before);
        assert!(narrow(fd.as_fd(), &prev, &changed, true, None)
            .unwrap()
            .is_none());
        // A previous list with a hard link in it.
        let linked = walk_fd(fd.as_fd(), true).unwrap();
        assert!(linked
            .entries
            .iter()
            .any(|e| matches!(e.kind, EntryKind::HardLink { .. })));
        let prev = Previous::from_walked(&linked);
        assert!(
            narrow(fd.as_fd(), &prev, &ChangedDirs::default(), true, None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn directory_changed_outside_the_set_gives_up() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        let fd = open(t.path());
        let before = walk_fd(fd.as_fd(), true).unwrap();
        // a/b replaced by another directory, and only a/b named (not a, whose listing changed).
        std::fs::remove_dir(t.path().join("a/b")).unwrap();
        std::fs::create_dir(t.path().join("a/x")).unwrap();
        std::fs::create_dir(t.path().join("a/b")).unwrap();
        std::fs::remove_dir(t.path().join("a/x")).unwrap();
        let changed = ChangedDirs {
            dirs: [b"a/b".to_vec()].into(),
        };
        let prev = Previous::from_walked(&before);
        assert!(narrow(fd.as_fd(), &prev, &changed, true, None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn at_or_below_matches_the_path_and_its_descendants_only() {
        let c = ChangedDirs {
            dirs: [b"a/b".to_vec(), b"ab".to_vec()].into(),
        };
        assert!(c.at_or_below(b""));
        assert!(c.at_or_below(b"a"));
        assert!(c.at_or_below(b"a/b"));
        assert!(!c.at_or_below(b"a/b/c"));
        assert!(!c.at_or_below(b"a/"));
        assert!(c.at_or_below(b"ab"));
        assert!(!c.at_or_below(b"b"));
        assert!(!ChangedDirs::default().at_or_below(b""));
    }
}
