//! Seeded churn generator for replication tests: applies random changes of every kind a
//! replicator must carry (contents, sizes and holes, renames and moves, deletions, type changes,
//! hard links, modes, owners, xattrs, mtimes, new directories) to a tree, so a test can replicate
//! after each round and compare tree and content hashes.
//!
//! Determinism: the same seed on the same starting tree yields the same tree. Choices come from
//! `gen::Rng` over the canonical (sorted) walk, and every mtime the kernel stamps from the wall
//! clock (new entries, written files, changed directories) is replaced before returning; so any
//! mtime after `WALL_CLOCK` in the tree, older ones included, is rewritten: meant for test trees.
//!
//! Every operation resolves paths through `beneath` (no symlink followed, nothing outside the
//! root) and a top-level `.mover-state` is never touched nor created.

use crate::beneath::{open_dir, open_in, split_parent};
use crate::error::{show, IoContext, Result};
use crate::gen::Rng;
use crate::tree::entry::EntryKind;
use crate::tree::xattr::{read_user_xattrs, On};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What to do in one call of [`churn`].
#[derive(Debug, Clone)]
pub struct ChurnSpec {
    pub seed: u64,
    /// Operations per call (one round).
    pub ops: usize,
    /// Creates and links are skipped once the tree holds this many non-directories.
    pub max_files: usize,
    /// Largest size of a "large" file (at least 100 KiB is used).
    pub large_max: usize,
}

impl Default for ChurnSpec {
    fn default() -> Self {
        ChurnSpec {
            seed: 1,
            ops: 40,
            max_files: 300,
            large_max: 3 << 20,
        }
    }
}

/// What one round did, so tests can check that every kind of change was exercised.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ChurnStats {
    /// Files, directories and symlinks made (type changes count under `type_changed`).
    pub created: u64,
    pub bytes_written: u64,
    /// 4 KiB blocks overwritten in place; an unaligned range counts as one.
    pub overwritten_blocks: u64,
    pub truncated: u64,
    pub renamed: u64,
    /// Names removed, counting every entry of a removed tree.
    pub deleted: u64,
    pub type_changed: u64,
    pub linked: u64,
    pub unlinked: u64,
    /// chmod, chown, xattr set/remove and explicit mtimes.
    pub meta_changed: u64,
}

const RESERVED: &[u8] = b".mover-state";
const BLOCK: u64 = 4096;
const SMALL_MAX: u64 = 16 << 10;
const LARGE_MIN: u64 = 100 << 10;
/// Mtimes from here on are taken to be wall-clock stamps (the clock passed it in 2023) and are
/// rewritten; explicit mtimes are drawn from before it so they survive.
const WALL_CLOCK: i64 = 1_700_000_000;

/// `Other` (specials, anything under `.mover-state`) is never picked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

/// One entry of the walk. `link` is the other name of a hard-linked pair; `alias` marks a later
/// name of an inode listed earlier, whose mtime is the earlier entry's.
struct Node {
    path: Vec<u8>,
    kind: Kind,
    depth: usize,
    size: u64,
    link: Option<usize>,
    alias: bool,
    mtime: i64,
}

/// Applies `spec.ops` random operations to the tree under `root`. Deterministic for a given
/// seed and starting tree; works on an empty root (the first operations create things).
pub fn churn(root: &Path, spec: &ChurnSpec) -> Result<ChurnStats> {
    let root = crate::beneath::open_root(root, "churn root")?;
    let is_root = rustix::process::geteuid().is_root();
    let mut c = Churner {
        root,
        rng: Rng(spec.seed),
        buf: Vec::new(),
        stats: ChurnStats::default(),
        spec: spec.clone(),
        is_root,
    };
    for _ in 0..spec.ops {
        let nodes = c.scan()?;
        if !c.op(&nodes)? {
            c.create(&nodes, false)?; // nothing to act on yet (an empty tree): grow it instead
        }
    }
    c.settle_mtimes()?;
    Ok(c.stats)
}

struct Churner {
    root: OwnedFd,
    rng: Rng,
    buf: Vec<u8>,
    stats: ChurnStats,
    spec: ChurnSpec,
    is_root: bool,
}

impl Churner {
    /// The tree as the replicator will see it, re-read before every operation so choices
    /// depend only on the tree, never on bookkeeping that could drift from it.
    fn scan(&self) -> Result<Vec<Node>> {
        let w = crate::tree::walk::walk_fd(self.root.as_fd(), false)?;
        let mut nodes: Vec<Node> = Vec::with_capacity(w.entries.len());
        for (e, path) in w.entries.iter().zip(w.paths) {
            let (kind, size, link) = match &e.kind {
                _ if path.split(|&b| b == b'/').next() == Some(RESERVED) => (Kind::Other, 0, None),
                EntryKind::Dir => (Kind::Dir, 0, None),
                EntryKind::File { size } => (Kind::File, *size, None),
                EntryKind::HardLink { target } => (Kind::File, 0, Some(target.0 as usize)),
                EntryKind::Symlink { .. } => (Kind::Symlink, 0, None),
                EntryKind::Special { .. } => (Kind::Other, 0, None),
            };
            let depth = if path.is_empty() {
                0
            } else {
                1 + path.iter().filter(|&&b| b == b'/').count()
            };
            nodes.push(Node {
                path,
                kind,
                depth,
                size,
                link,
                alias: link.is_some(),
                mtime: e.meta.mtime_sec,
            });
        }
        for i in 0..nodes.len() {
            if let Some(t) = nodes[i].link.filter(|&t| t < i) {
                nodes[i].size = nodes[t].size;
                nodes[t].link = Some(i);
            }
        }
        Ok(nodes)
    }

    fn pick(&mut self, nodes: &[Node], ok: impl Fn(&Node) -> bool) -> Option<usize> {
        let c: Vec<usize> = (0..nodes.len()).filter(|&i| ok(&nodes[i])).collect();
        (!c.is_empty()).then(|| c[self.rng.below(c.len() as u64) as usize])
    }

    /// A directory, mostly a shallow one: deep chains would otherwise draw most new entries.
    fn pick_dir(&mut self, nodes: &[Node], ok: impl Fn(&Node) -> bool) -> Option<usize> {
        let max = if self.rng.below(4) == 0 {
            usize::MAX
        } else {
            4
        };
        self.pick(nodes, |n| n.kind == Kind::Dir && n.depth <= max && ok(n))
            .or_else(|| self.pick(nodes, |n| n.kind == Kind::Dir && ok(n)))
    }

    /// Creates and links stop at `max_files` non-directories.
    fn room(&self, nodes: &[Node]) -> bool {
        nodes
            .iter()
            .filter(|n| matches!(n.kind, Kind::File | Kind::Symlink))
            .count()
            < self.spec.max_files
    }

    fn dir(&self, path: &[u8]) -> Result<OwnedFd> {
        open_dir(self.root.as_fd(), path).ctx(|| format!("opening directory {}", show(path)))
    }

    /// Parent directory fd and final name of `path`; the root is `.` in itself.
    fn at(&self, path: &[u8]) -> Result<(OwnedFd, Vec<u8>)> {
        let (parent, name) = if path.is_empty() {
            (path, &b"."[..])
        } else {
            split_parent(path)
        };
        Ok((self.dir(parent)?, name.to_vec()))
    }

    /// Opens `path` without following a symlink (for I/O, fchmod and fsetxattr).
    fn open(&self, path: &[u8], flags: OFlags) -> Result<OwnedFd> {
        let (d, name) = self.at(path)?;
        open_in(d.as_fd(), &name, flags, Mode::empty()).ctx(|| format!("opening {}", show(path)))
    }

    /// A name not present in `dir`; now and then with bytes that are not UTF-8 or printable.
    fn fresh(&mut self, dir: BorrowedFd<'_>, prefix: &str) -> Vec<u8> {
        loop {
            let mut name = format!("{prefix}{:06x}", self.rng.below(1 << 24)).into_bytes();
            name.extend_from_slice(if self.rng.below(16) == 0 {
                b" \xe9\n"
            } else {
                b""
            });
            if rustix::fs::statat(dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW).is_err() {
                return name;
            }
        }
    }

    fn random(&mut self, len: u64) -> &[u8] {
        self.buf.resize(len as usize, 0);
        self.rng.fill(&mut self.buf);
        &self.buf
    }

    /// A new file of `len` random bytes, a directory or a symlink (dangling or not: never followed).
    fn make(&mut self, dir: BorrowedFd<'_>, name: &[u8], kind: Kind, len: u64) -> Result<()> {
        let what = || format!("creating {}", show(name));
        match kind {
            Kind::Dir => rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)).ctx(what),
            Kind::Symlink => {
                let base = ["", "../", "/nonexistent/"][self.rng.below(3) as usize];
                let target = format!("{base}churn-target-{:x}", self.rng.next_u64());
                rustix::fs::symlinkat(target.as_str(), dir, name).ctx(what)
            }
            _ => {
                let fd = open_in(
                    dir,
                    name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                    Mode::from_raw_mode(0o644),
                )
                .ctx(what)?;
                std::fs::File::from(fd)
                    .write_all(self.random(len))
                    .ctx(what)?;
                self.stats.bytes_written += len;
                Ok(())
            }
        }
    }

    fn create(&mut self, nodes: &[Node], large: bool) -> Result<bool> {
        let Some(d) = self
            .room(nodes)
            .then(|| self.pick_dir(nodes, |_| true))
            .flatten()
        else {
            return Ok(false);
        };
        let dir = self.dir(&nodes[d].path)?;
        let name = self.fresh(dir.as_fd(), "f");
        let max = (self.spec.large_max as u64).max(LARGE_MIN);
        let len = if large {
            LARGE_MIN + self.rng.below(max - LARGE_MIN + 1)
        } else {
            self.rng.below(SMALL_MAX + 1)
        };
        let kind = if !large && self.rng.below(6) == 0 {
            Kind::Symlink
        } else {
            Kind::File
        };
        self.make(dir.as_fd(), &name, kind, len)?;
        self.stats.created += 1;
        Ok(true)
    }

    /// One random operation; false when the tree holds nothing it applies to.
    fn op(&mut self, nodes: &[Node]) -> Result<bool> {
        let entry = |n: &Node| !n.path.is_empty() && n.kind != Kind::Other;
        let file = |n: &Node| n.kind == Kind::File;
        match self.rng.below(73) {
            0..=9 => return self.create(nodes, false),
            10..=11 => return self.create(nodes, true),
            12..=15 => {
                let Some(d) = self.pick_dir(nodes, |_| true) else {
                    return Ok(false);
                };
                let dir = self.dir(&nodes[d].path)?;
                // Nested: the levels below the fresh name are new, so any names do.
                let mut rel = self.fresh(dir.as_fd(), "d");
                for level in 0..=self.rng.below(3) {
                    rel.extend_from_slice(if level > 0 { b"/n" } else { b"" });
                    self.make(dir.as_fd(), &rel, Kind::Dir, 0)?;
                    self.stats.created += 1;
                }
            }
            16..=33 => {
                let Some(i) = self.pick(nodes, file) else {
                    return Ok(false);
                };
                let (size, path) = (nodes[i].size, &nodes[i].path);
                let f = std::fs::File::from(self.open(path, OFlags::WRONLY)?);
                let what = || format!("changing contents of {}", show(path));
                let how = self.rng.below(9);
                if how < 2 {
                    // Extending by at least a block leaves a hole the replica must keep reading as zeros.
                    let new = if size > 0 && self.rng.below(2) == 0 {
                        self.rng.below(size)
                    } else {
                        size + BLOCK + self.rng.below(1 << 20)
                    };
                    f.set_len(new).ctx(what)?;
                    self.stats.truncated += 1;
                    return Ok(true);
                }
                // An append, whole aligned blocks (a receiver's O_DIRECT path) or a small unaligned range.
                let (off, len, blocks) = if how < 4 || size == 0 {
                    let max = if self.rng.below(8) == 0 {
                        1 << 20
                    } else {
                        64 << 10
                    };
                    (size, 1 + self.rng.below(max), 0)
                } else if how < 7 && size >= BLOCK {
                    let blocks = 1 + self.rng.below(4);
                    (self.rng.below(size / BLOCK) * BLOCK, blocks * BLOCK, blocks)
                } else {
                    (self.rng.below(size), 1 + self.rng.below(1000), 1)
                };
                f.write_all_at(self.random(len), off).ctx(what)?;
                self.stats.overwritten_blocks += blocks;
                self.stats.bytes_written += len;
            }
            34..=42 => {
                let dir = self.rng.below(3) == 0;
                let Some(i) = self.pick(nodes, |n| entry(n) && (n.kind == Kind::Dir) == dir) else {
                    return Ok(false);
                };
                let p = &nodes[i].path;
                // A directory never into itself or below itself: the kernel refuses that (EINVAL).
                let outside = |n: &Node| {
                    !dir || !n.path.starts_with(p)
                        || n.path.get(p.len()).is_some_and(|&b| b != b'/')
                };
                let Some(d) = self.pick_dir(nodes, outside) else {
                    return Ok(false);
                };
                let dst = self.dir(&nodes[d].path)?;
                // Sometimes a file goes over an existing non-directory, which rename replaces atomically.
                let over = self.pick(nodes, |n| {
                    entry(n) && n.kind != Kind::Dir && split_parent(&n.path).0 == &nodes[d].path[..]
                });
                let name = match over.filter(|&o| !dir && o != i && self.rng.below(3) == 0) {
                    Some(o) => split_parent(&nodes[o].path).1.to_vec(),
                    None => self.fresh(dst.as_fd(), "r"),
                };
                let (src, old) = self.at(p)?;
                rustix::fs::renameat(&src, old.as_slice(), &dst, name.as_slice())
                    .ctx(|| format!("renaming {}", show(p)))?;
                self.stats.renamed += 1;
            }
            43..=52 => {
                // Deleting a name (sometimes a whole tree), or replacing it by another type at the
                // same name, which a replica must apply as remove-then-make.
                let (retype, tree) = (self.rng.below(5) < 2, self.rng.below(6) == 0);
                let Some(i) = self.pick(nodes, |n| {
                    entry(n) && (retype || (n.kind == Kind::Dir) == tree)
                }) else {
                    return Ok(false);
                };
                let (d, name) = self.at(&nodes[i].path)?;
                let removed = remove_tree(d.as_fd(), &name)?;
                if retype {
                    let kinds: Vec<Kind> = [Kind::Dir, Kind::File, Kind::Symlink]
                        .into_iter()
                        .filter(|&k| k != nodes[i].kind)
                        .collect();
                    let (kind, len) = (
                        kinds[self.rng.below(2) as usize],
                        self.rng.below(SMALL_MAX + 1),
                    );
                    self.make(d.as_fd(), &name, kind, len)?;
                    self.stats.type_changed += 1;
                } else {
                    self.stats.deleted += removed;
                }
            }
            53..=55 => {
                let Some(i) = self.pick(nodes, file).filter(|_| self.room(nodes)) else {
                    return Ok(false);
                };
                let Some(d) = self.pick_dir(nodes, |_| true) else {
                    return Ok(false);
                };
                let ((src, old), dst) = (self.at(&nodes[i].path)?, self.dir(&nodes[d].path)?);
                let name = self.fresh(dst.as_fd(), "h");
                rustix::fs::linkat(
                    &src,
                    old.as_slice(),
                    &dst,
                    name.as_slice(),
                    AtFlags::empty(),
                )
                .ctx(|| format!("linking {}", show(&nodes[i].path)))?;
                self.stats.linked += 1;
            }
            56..=57 => {
                let Some(i) = self.pick(nodes, |n| entry(n) && n.link.is_some()) else {
                    return Ok(false);
                };
                let (d, name) = self.at(&nodes[i].path)?;
                rustix::fs::unlinkat(&d, name.as_slice(), AtFlags::empty())
                    .ctx(|| format!("unlinking {}", show(&nodes[i].path)))?;
                self.stats.unlinked += 1;
            }
            58..=64 => {
                // Owners only as root; the root directory keeps its owner. Symlink modes cannot be set.
                let chown = self.is_root && self.rng.below(7) < 3;
                let ok = |n: &Node| {
                    n.kind != Kind::Other
                        && if chown {
                            entry(n)
                        } else {
                            n.kind != Kind::Symlink
                        }
                };
                let Some(i) = self.pick(nodes, ok) else {
                    return Ok(false);
                };
                let n = &nodes[i];
                if chown {
                    let uid = rustix::process::Uid::from_raw(1000 + self.rng.below(60_000) as u32);
                    let gid = rustix::process::Gid::from_raw(1000 + self.rng.below(60_000) as u32);
                    let (d, name) = self.at(&n.path)?;
                    rustix::fs::chownat(
                        &d,
                        name.as_slice(),
                        Some(uid),
                        Some(gid),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .ctx(|| format!("chown {}", show(&n.path)))?;
                } else {
                    // The owner keeps rw(x) so the churn itself and a non-root walk can go on.
                    let keep = if n.kind == Kind::Dir { 0o700 } else { 0o600 };
                    let mode = Mode::from_raw_mode(keep | self.rng.below(0o1000) as u32);
                    rustix::fs::fchmod(self.open(&n.path, OFlags::RDONLY)?, mode)
                        .ctx(|| format!("chmod {}", show(&n.path)))?;
                }
                self.stats.meta_changed += 1;
            }
            65..=68 => {
                // `user.*` xattrs are not allowed on symlinks.
                let Some(i) = self.pick(nodes, |n| matches!(n.kind, Kind::File | Kind::Dir)) else {
                    return Ok(false);
                };
                let fd = self.open(&nodes[i].path, OFlags::RDONLY)?;
                let what = || format!("changing xattrs of {}", show(&nodes[i].path));
                let have = read_user_xattrs(On::Fd(fd.as_fd())).ctx(what)?;
                if !have.is_empty() && self.rng.below(3) == 0 {
                    let k = &have[self.rng.below(have.len() as u64) as usize].0;
                    rustix::fs::fremovexattr(&fd, k.as_slice()).ctx(what)?;
                } else {
                    let (k, len) = (
                        format!("user.churn.{}", self.rng.below(4)),
                        self.rng.below(200),
                    );
                    rustix::fs::fsetxattr(
                        &fd,
                        k.as_str(),
                        self.random(len),
                        rustix::fs::XattrFlags::empty(),
                    )
                    .ctx(what)?;
                }
                self.stats.meta_changed += 1;
            }
            _ => {
                let Some(i) = self.pick(nodes, |n| n.kind != Kind::Other) else {
                    return Ok(false);
                };
                self.set_mtime(&nodes[i].path)?;
                self.stats.meta_changed += 1;
            }
        }
        Ok(true)
    }

    /// An explicit mtime with nanoseconds, from before `WALL_CLOCK`.
    fn set_mtime(&mut self, path: &[u8]) -> Result<()> {
        let t = Timespec {
            tv_sec: 1_000_000_000 + self.rng.below(600_000_000) as i64,
            tv_nsec: self.rng.below(1_000_000_000) as _,
        };
        let (d, name) = self.at(path)?;
        rustix::fs::utimensat(
            &d,
            name.as_slice(),
            &Timestamps {
                last_access: t,
                last_modification: t,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .ctx(|| format!("setting mtime of {}", show(path)))
    }

    /// Replaces every wall-clock mtime (which would differ between two runs) by a seeded one.
    /// Setting an entry's times does not touch its directory's, so one pass suffices.
    fn settle_mtimes(&mut self) -> Result<()> {
        for n in self.scan()? {
            if n.kind != Kind::Other && !n.alias && n.mtime >= WALL_CLOCK {
                self.set_mtime(&n.path)?;
            }
        }
        Ok(())
    }
}

/// Removes `name` in `dir`, recursively if a directory; fd-relative so depth is not bounded by
/// PATH_MAX. Returns the number of names removed.
fn remove_tree(dir: BorrowedFd<'_>, name: &[u8]) -> Result<u64> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ctx(|| format!("stat {}", show(name)))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())
            .ctx(|| format!("unlinking {}", show(name)))?;
        return Ok(1);
    }
    let sub = open_in(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
        .ctx(|| format!("opening {}", show(name)))?;
    let mut n = 1;
    for child in crate::beneath::dir_names(sub.as_fd()).ctx(|| format!("reading {}", show(name)))? {
        n += remove_tree(sub.as_fd(), &child)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
        .ctx(|| format!("removing directory {}", show(name)))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::hash::{hash_dir, HashOptions};

    fn start(dir: &Path) {
        // `extras` (a path longer than PATH_MAX, links, xattrs, a sparse file) needs large_size of
        // at least 1 MiB: gen sizes its buffer by small_max and large_size but writes 1 MiB of sparse data.
        let spec = crate::gen::TreeSpec {
            small_files: 30,
            large_files: 1,
            large_size: 1 << 20,
            ..Default::default()
        };
        crate::gen::generate(dir, &spec).unwrap();
    }

    #[test]
    fn same_seed_same_tree() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let opts = HashOptions {
            owners: rustix::process::geteuid().is_root(),
        };
        start(a.path());
        start(b.path());
        for round in 0..5 {
            let spec = ChurnSpec {
                seed: 100 + round,
                large_max: 1 << 20,
                ..Default::default()
            };
            let (sa, sb) = (
                churn(a.path(), &spec).unwrap(),
                churn(b.path(), &spec).unwrap(),
            );
            assert_eq!(format!("{sa:?}"), format!("{sb:?}"), "round {round}");
            assert_eq!(
                hash_dir(a.path(), opts, true).unwrap(),
                hash_dir(b.path(), opts, true).unwrap(),
                "round {round}"
            );
        }
    }

    #[test]
    fn churn_exercises_every_kind_of_change() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(".mover-state");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("keep"), b"x").unwrap();
        // An otherwise empty root grows from the first operations.
        assert!(
            churn(
                dir.path(),
                &ChurnSpec {
                    seed: 99,
                    ..Default::default()
                }
            )
            .unwrap()
            .created
                > 0
        );
        start(dir.path());
        let mut sum = std::collections::BTreeMap::<String, u64>::new();
        for round in 0..30 {
            let s = churn(
                dir.path(),
                &ChurnSpec {
                    seed: round,
                    large_max: 512 << 10,
                    ..Default::default()
                },
            )
            .unwrap();
            for (k, v) in serde_json::to_value(&s).unwrap().as_object().unwrap() {
                *sum.entry(k.clone()).or_default() += v.as_u64().unwrap();
            }
        }
        assert_eq!(sum.len(), 10);
        assert!(
            sum.values().all(|&v| v > 0),
            "a kind of change was never made: {sum:?}"
        );
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 1);
        assert_eq!(std::fs::read(state.join("keep")).unwrap(), b"x");
        // No wall-clock mtime is left behind (they would differ between two runs).
        let w = crate::tree::walk::walk(dir.path(), false).unwrap();
        assert!(w.entries.iter().all(|e| e.meta.mtime_sec < WALL_CLOCK));
    }
}
