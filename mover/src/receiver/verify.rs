//! Verifying a job on disk. A job from a recovery point checks what it could have changed: the
//! directories whose content hash (tree/hash.rs) differs from the recovery point's, those whose
//! listing the job changed for any other reason, and all their ancestors. Each is listed and
//! every child is looked at once (one stat, its xattrs, a symlink's target) and compared with
//! the new list; an unchanged subdirectory's content is the recovery point's, which was
//! verified when it was committed. Together that is the tree hash of the new list. A resumed
//! job, a full verification (`--verify full`) and a scrub walk the whole target instead.

use super::checked::Checked;
use crate::beneath::{self, split_parent};
use crate::error::{show, Error, IoContext, Result};
use crate::tree::entry::{Entry, EntryKind};
use crate::tree::hash::{same_record, HashOptions, Merkle};
use crate::tree::walk::meta_of;
use crate::tree::xattr::{read_user_xattrs, On};
use rustix::fs::{AtFlags, FileType, Stat};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

/// What the receiver compares the new list with: the recovery point's list (its policy
/// applied), its Merkle tree, and the baseline entry at each new entry's path.
pub struct Before<'a> {
    pub entries: &'a [Entry],
    pub merkle: &'a Merkle,
    pub matched: &'a [Option<u32>],
}

/// Directories of the new list to verify: new ones, those whose content hash differs from the
/// recovery point's directory at their path, those marked `touched`, and their ancestors.
pub fn dirs_to_check(
    entries: &[Entry],
    skip: &[bool],
    merkle: &Merkle,
    before: &Before<'_>,
    touched: &[bool],
) -> Vec<bool> {
    let mut check = vec![false; entries.len()];
    for (i, e) in entries.iter().enumerate() {
        if e.kind != EntryKind::Dir || skip[i] {
            continue;
        }
        let same = before.matched.get(i).copied().flatten().is_some_and(|b| {
            let b = b as usize;
            before.entries[b].kind == EntryKind::Dir && before.merkle.dirs[b] == merkle.dirs[i]
        });
        check[i] = !same || touched[i];
    }
    // Children follow their parents: one reverse pass carries a mark to every ancestor.
    for i in (1..entries.len()).rev() {
        if check[i] {
            check[entries[i].parent.index()] = true;
        }
    }
    check
}

fn differs(path: &[u8], want: &Entry, got: Option<&Entry>) -> Error {
    Error::Verify(match got {
        Some(got) => format!(
            "destination differs from source at {}: {}",
            show(path),
            crate::tree::entry::describe_difference(want, got)
        ),
        None => format!("destination lacks {}", show(path)),
    })
}

/// The entry `name` in `dir` as a walk would record it, given the entry the list has there (a
/// regular file is a hard link of `want`'s target if it is that target's inode).
fn on_disk(
    dir: BorrowedFd<'_>,
    name: &[u8],
    st: &Stat,
    want: &Entry,
    inode_of: &mut dyn FnMut(usize) -> Result<(u64, u64)>,
) -> Result<Entry> {
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => EntryKind::Dir,
        FileType::RegularFile => match want.kind {
            EntryKind::HardLink { target }
                if inode_of(target.index())? == (st.st_dev, st.st_ino) =>
            {
                EntryKind::HardLink { target }
            }
            _ => EntryKind::File {
                size: st.st_size as u64,
            },
        },
        FileType::Symlink => EntryKind::Symlink {
            target: rustix::fs::readlinkat(dir, name, Vec::new())
                .ctx(|| format!("readlink {}", show(name)))?
                .into_bytes(),
        },
        _ => EntryKind::Special {
            file_type: st.st_mode & libc::S_IFMT,
            rdev: st.st_rdev,
        },
    };
    let xattrs = match kind {
        EntryKind::Dir | EntryKind::File { .. } | EntryKind::HardLink { .. } => {
            read_user_xattrs(On::At(dir, name)).ctx(|| format!("xattrs of {}", show(name)))?
        }
        _ => Vec::new(),
    };
    Ok(Entry {
        parent: want.parent,
        name: name.to_vec(),
        kind,
        meta: meta_of(st),
        xattrs,
    })
}

/// Most threads one verification lists directories on.
pub const VERIFY_THREADS: usize = 8;
/// Directories per thread below which a verification does not start another thread.
const DIRS_PER_THREAD: usize = 64;

/// Lists every directory marked in `check` and compares each child on disk with the list;
/// the root's own record is always compared. A child the workers `checked` is taken as looked
/// at if the listing shows its inode at its name. Returns the number of entries looked at.
///
/// The directories are shared out over one thread per CPU, at most `VERIFY_THREADS` and one
/// per `DIRS_PER_THREAD` directories, each taking the next as it finishes one: the session's
/// workers are done by now, and on one thread this was the longest stretch of an initial
/// small-file job that kept one CPU busy and the others idle. Of several differences, the one
/// in the first directory in list order is reported, as one thread going in that order would.
pub fn verify_dirs(
    root: BorrowedFd<'_>,
    entries: &[Entry],
    skip: &[bool],
    paths: &[Vec<u8>],
    check: &[bool],
    owners: bool,
    checked: Option<&Checked>,
) -> Result<u64> {
    let opts = HashOptions { owners };
    let mut kids: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate().skip(1) {
        if !skip[i] && check[e.parent.index()] {
            kids.entry(e.parent.index()).or_default().push(i);
        }
    }
    let st = rustix::fs::fstat(root).ctx(|| "stat of the destination root".to_string())?;
    let root_x = read_user_xattrs(On::Fd(root)).ctx(|| "xattrs of the root".to_string())?;
    let top = Entry {
        parent: entries[0].parent,
        name: Vec::new(),
        kind: EntryKind::Dir,
        meta: meta_of(&st),
        xattrs: root_x,
    };
    if !same_record(&top, &entries[0], opts) {
        return Err(differs(b"(the root)", &entries[0], Some(&top)));
    }
    let dirs: Vec<usize> = (0..check.len()).filter(|&d| check[d]).collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(VERIFY_THREADS)
        .min(dirs.len().div_ceil(DIRS_PER_THREAD))
        .max(1);
    let job = Listing {
        root,
        entries,
        paths,
        kids: &kids,
        checked,
        opts,
        dirs: &dirs,
        next: AtomicUsize::new(0),
        first_failed: AtomicUsize::new(usize::MAX),
    };
    // This thread lists too, so a thread that cannot be started only means fewer of them.
    let results: Vec<ListingResult> = std::thread::scope(|s| {
        let running: Vec<_> = (1..threads)
            .filter_map(|k| {
                let job = &job;
                std::thread::Builder::new()
                    .name(format!("mover-verify-{k}"))
                    .spawn_scoped(s, move || job.run())
                    .map_err(|e| tracing::warn!("verifying on fewer threads: {e}"))
                    .ok()
            })
            .collect();
        let mut results = vec![job.run()];
        results.extend(running.into_iter().map(|h| {
            h.join()
                .unwrap_or_else(|_| Err((0, Error::Panicked("a verifying thread".into()))))
        }));
        results
    });
    let mut looked = 1u64;
    let mut first: Option<(usize, Error)> = None;
    for r in results {
        match r {
            Ok(n) => looked += n,
            // A panic is a bug, not a difference: it is reported whatever else was found.
            Err((_, e @ Error::Panicked(_))) => return Err(e),
            Err((at, e)) => {
                if first.as_ref().is_none_or(|(k, _)| at < *k) {
                    first = Some((at, e));
                }
            }
        }
    }
    match first {
        Some((_, e)) => Err(e),
        None => Ok(looked),
    }
}

/// Entries a thread looked at, or the position in the directory order of its first
/// difference and the difference.
type ListingResult = std::result::Result<u64, (usize, Error)>;

/// The directories of one verification and how far its threads are through them.
struct Listing<'a> {
    root: BorrowedFd<'a>,
    entries: &'a [Entry],
    paths: &'a [Vec<u8>],
    kids: &'a HashMap<usize, Vec<usize>>,
    checked: Option<&'a Checked>,
    opts: HashOptions,
    dirs: &'a [usize],
    /// The next position in `dirs` a thread takes.
    next: AtomicUsize,
    /// The lowest position in `dirs` where a thread found a difference (usize::MAX: none).
    first_failed: AtomicUsize,
}

impl Listing<'_> {
    /// Takes directories until none are left, or until the next lies past a difference found
    /// already (no later one would be reported).
    fn run(&self) -> ListingResult {
        // Inodes of hard-link targets: seen while checking their directory, else looked up.
        let mut inodes: HashMap<usize, (u64, u64)> = HashMap::new();
        let mut looked = 0u64;
        loop {
            let k = self.next.fetch_add(1, Ordering::Relaxed);
            if k >= self.dirs.len() || k > self.first_failed.load(Ordering::Relaxed) {
                return Ok(looked);
            }
            match self.dir(self.dirs[k], &mut inodes) {
                Ok(n) => looked += n,
                Err(e) => {
                    self.first_failed.fetch_min(k, Ordering::Relaxed);
                    return Err((k, e));
                }
            }
        }
    }

    /// Lists directory `d` and compares each of its children with the list.
    fn dir(&self, d: usize, inodes: &mut HashMap<usize, (u64, u64)>) -> Result<u64> {
        let (root, entries, paths) = (self.root, self.entries, self.paths);
        let fd = beneath::open_dir(root, &paths[d])
            .ctx(|| format!("opening directory {}", show(&paths[d])))?;
        let mut names =
            beneath::dir_listing(fd.as_fd()).ctx(|| format!("listing {}", show(&paths[d])))?;
        if d == 0 {
            names.retain(|l| !crate::tree::reserved_at_top(&l.name));
        }
        let want = self.kids.get(&d).map(Vec::as_slice).unwrap_or(&[]);
        let join = |n: &[u8]| {
            let mut p = paths[d].clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(n);
            p
        };
        // Both sorted by name: the first name that is not the list's is extra or missing.
        for k in 0..names.len().max(want.len()) {
            let (got, w) = (
                names.get(k).map(|l| &l.name),
                want.get(k).map(|&c| &entries[c]),
            );
            match (got, w) {
                (Some(g), Some(w)) if *g == w.name => {}
                (Some(g), Some(w)) if *g < w.name => {
                    return Err(Error::Verify(format!(
                        "destination has {}, which the source does not",
                        show(&join(g))
                    )))
                }
                (None, Some(w)) | (Some(_), Some(w)) => {
                    return Err(differs(&join(&w.name), w, None))
                }
                (Some(g), None) => {
                    return Err(Error::Verify(format!(
                        "destination has {}, which the source does not",
                        show(&join(g))
                    )))
                }
                (None, None) => {}
            }
        }
        let mut looked = 0u64;
        // Past the loop above, the k-th name is the k-th child's.
        for (&c, listed) in want.iter().zip(&names) {
            if let Some((dev, ino)) = self.checked.and_then(|x| x.inode(c)) {
                if ino == listed.ino && listed.file_type == FileType::RegularFile {
                    inodes.insert(c, (dev, ino));
                    looked += 1;
                    continue;
                }
            }
            let w = &entries[c];
            let st = rustix::fs::statat(&fd, w.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .ctx(|| format!("stat {}", show(&paths[c])))?;
            if matches!(w.kind, EntryKind::File { .. }) {
                inodes.insert(c, (st.st_dev, st.st_ino));
            }
            let mut inode_of = |t: usize| -> Result<(u64, u64)> {
                if let Some(x) = inodes.get(&t) {
                    return Ok(*x);
                }
                let (p, n) = split_parent(&paths[t]);
                let d = beneath::open_dir(root, p)
                    .ctx(|| format!("opening directory of {}", show(&paths[t])))?;
                let s = rustix::fs::statat(&d, n, AtFlags::SYMLINK_NOFOLLOW)
                    .ctx(|| format!("stat {}", show(&paths[t])))?;
                inodes.insert(t, (s.st_dev, s.st_ino));
                Ok((s.st_dev, s.st_ino))
            };
            let got = on_disk(fd.as_fd(), &w.name, &st, w, &mut inode_of)?;
            if !same_record(&got, w, self.opts) {
                return Err(differs(&paths[c], w, Some(&got)));
            }
            looked += 1;
        }
        Ok(looked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// 300 directories of two files each: more than one thread's share.
    fn tree(root: &std::path::Path) {
        for d in 0..300 {
            let dir = root.join(format!("d{d:03}"));
            std::fs::create_dir(&dir).unwrap();
            for f in 0..2 {
                std::fs::write(dir.join(format!("f{f}")), [d as u8; 10]).unwrap();
            }
        }
    }

    fn verify(root: &std::path::Path, w: &crate::tree::walk::Walked) -> Result<u64> {
        let fd = std::fs::File::open(root).unwrap();
        let check: Vec<bool> = w.entries.iter().map(|e| e.kind == EntryKind::Dir).collect();
        let skip = vec![false; w.entries.len()];
        verify_dirs(fd.as_fd(), &w.entries, &skip, &w.paths, &check, false, None)
    }

    #[test]
    fn a_verification_over_several_threads_looks_at_every_entry_once_and_reports_the_first_difference(
    ) {
        let t = tempfile::tempdir().unwrap();
        tree(t.path());
        let w = crate::tree::walk::walk(t.path(), true).unwrap();
        assert!(
            w.entries
                .iter()
                .filter(|e| e.kind == EntryKind::Dir)
                .count()
                > 2 * DIRS_PER_THREAD
        );
        assert_eq!(verify(t.path(), &w).unwrap(), w.entries.len() as u64);
        // Two differences: the one in the directory first in list order is the one reported,
        // however the threads happened to share the directories out.
        for f in ["d007/f1", "d290/f0"] {
            let p = t.path().join(f);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode ^ 0o100)).unwrap();
        }
        for _ in 0..20 {
            let e = verify(t.path(), &w).unwrap_err().to_string();
            assert!(e.contains("d007/f1") && e.contains("differs"), "{e}");
        }
        // A file added in d150 moves d150's mtime, which the root's listing (first) sees.
        std::fs::write(t.path().join("d150/extra"), b"x").unwrap();
        let e = verify(t.path(), &w).unwrap_err().to_string();
        assert!(e.contains("at d150: modified"), "{e}");
    }

    #[test]
    fn a_file_its_worker_checked_is_not_looked_at_again_unless_another_inode_stands_at_its_name() {
        let t = tempfile::tempdir().unwrap();
        tree(t.path());
        // A hard link beside its checked target: the link is compared with the inode checked.
        std::fs::hard_link(t.path().join("d000/f0"), t.path().join("d000/g0")).unwrap();
        let w = crate::tree::walk::walk(t.path(), true).unwrap();
        assert!(w
            .entries
            .iter()
            .any(|e| matches!(e.kind, EntryKind::HardLink { .. })));
        let opts = HashOptions { owners: false };
        let root = std::fs::File::open(t.path()).unwrap();
        let dev = rustix::fs::fstat(&root).unwrap().st_dev;
        let checked = Checked::new(dev, w.entries.len());
        let files: Vec<usize> = (0..w.entries.len())
            .filter(|&i| matches!(w.entries[i].kind, EntryKind::File { .. }))
            .collect();
        for &i in &files {
            let f = std::fs::File::open(t.path().join(show(&w.paths[i]))).unwrap();
            checked.check(i, f.as_fd(), &w.entries[i], opts);
            assert!(checked.inode(i).is_some(), "{}", show(&w.paths[i]));
        }
        let check: Vec<bool> = w.entries.iter().map(|e| e.kind == EntryKind::Dir).collect();
        let skip = vec![false; w.entries.len()];
        let run = |c: &Checked| {
            verify_dirs(
                root.as_fd(),
                &w.entries,
                &skip,
                &w.paths,
                &check,
                false,
                Some(c),
            )
        };
        assert_eq!(run(&checked).unwrap(), w.entries.len() as u64);
        // The window this leaves: a checked file's mode changed in place (its inode stays at
        // its name) is taken as checked; without the checks the verification sees it.
        let p = t.path().join("d001/f1");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode ^ 0o100)).unwrap();
        assert_eq!(run(&checked).unwrap(), w.entries.len() as u64);
        let e = run(&Checked::off()).unwrap_err().to_string();
        assert!(e.contains("d001/f1") && e.contains("differs"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();

        // Another file put at d005/f0 (same size and mtime, another mode), its directory's
        // mtime put back: the listing shows another inode, so the name is looked at and the
        // difference reported.
        let at = |p: &str| t.path().join(p);
        let dir_times = std::fs::metadata(at("d005")).unwrap().modified().unwrap();
        let old = std::fs::metadata(at("d005/f0")).unwrap();
        std::fs::write(at("d005/new"), [5u8; 10]).unwrap();
        std::fs::set_permissions(at("d005/new"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(at("d005/new"))
            .unwrap();
        f.set_modified(old.modified().unwrap()).unwrap();
        std::fs::rename(at("d005/new"), at("d005/f0")).unwrap();
        std::fs::File::open(at("d005"))
            .unwrap()
            .set_modified(dir_times)
            .unwrap();
        let e = run(&checked).unwrap_err().to_string();
        assert!(e.contains("d005/f0") && e.contains("differs"), "{e}");

        // A file that differs from its entry when checked is not recorded, nor one forgotten.
        let i = files[0];
        let mut other = w.entries[i].clone();
        other.meta.mode ^= 0o100;
        let fresh = Checked::new(dev, w.entries.len());
        let f = std::fs::File::open(t.path().join(show(&w.paths[i]))).unwrap();
        fresh.check(i, f.as_fd(), &other, opts);
        assert_eq!(fresh.inode(i), None);
        fresh.check(i, f.as_fd(), &w.entries[i], opts);
        assert!(fresh.inode(i).is_some());
        fresh.forget(i);
        assert_eq!(fresh.inode(i), None);
        // Nor a file of another device than the target's.
        let elsewhere = Checked::new(dev + 1, w.entries.len());
        elsewhere.check(i, f.as_fd(), &w.entries[i], opts);
        assert_eq!(elsewhere.inode(i), None);
    }
}
