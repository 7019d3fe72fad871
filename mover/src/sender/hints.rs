//! Turning the manifest and a fresh walk into hints for the receiver (renames by inode, block
//! deltas of changed large files), and building the next manifest once the job committed.

use super::manifest::{changed_ranges, hash_file, Item, Manifest};
use crate::beneath;
use crate::error::{show, IoContext, Result};
use crate::tree::entry::EntryKind;
use crate::tree::walk::{FileId, Walked};
use crate::units::EntryId;
use crate::wire::message::is_inline;
use crate::wire::message::{Hint, MAX_BLOCK_HASHES_PER_HINT, MAX_DELTA_RANGES};
use rustix::fs::{Mode, OFlags};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
pub struct Planned {
    pub hints: Vec<Hint>,
    /// Ranges to send per entry if the receiver accepts the delta.
    pub deltas: HashMap<usize, Vec<(u64, u64)>>,
    /// Block hashes of the new content of delta candidates (read now).
    pub hashes: HashMap<usize, Vec<u64>>,
    /// Where each entry lived in the recovery point, if it existed there.
    pub old: Vec<Option<usize>>,
    /// Bytes read to find changed blocks.
    pub hashed_bytes: u64,
}

/// `path` is `parent/name` (or `name` under the root), compared without building it.
fn is_join(parent: &[u8], name: &[u8], path: &[u8]) -> bool {
    if parent.is_empty() {
        return path == name;
    }
    path.len() == parent.len() + 1 + name.len()
        && path.starts_with(parent)
        && path[parent.len()] == b'/'
        && path.ends_with(name)
}

fn unchanged(it: &Item, size: u64, mtime: (i64, u32), id: &FileId) -> bool {
    it.size == size && it.mtime == mtime && it.ctime == (id.ctime_sec, id.ctime_nsec)
}

/// Computes hints from `m`, which describes the receiver's current recovery point.
/// `base` is the kept snapshot the recovery point was made from, if any: blocks on extents it
/// shares with the new snapshot are known unchanged without reading them.
pub fn plan_hints(
    w: &Walked,
    m: &Manifest,
    root: BorrowedFd<'_>,
    threads: usize,
    stable: bool,
    base: Option<BorrowedFd<'_>>,
) -> Result<Planned> {
    let n = w.entries.len();
    let mut p = Planned {
        old: vec![None; n],
        ..Default::default()
    };
    // The item each entry was in the recovery point (its "old location"); the root is none.
    let mut old_item: Vec<Option<usize>> = vec![None; n];
    // Every new path, built only when an item is found away from its old path.
    let mut new_at: Option<HashMap<&[u8], usize>> = None;
    let mut candidates: Vec<(usize, u64)> = Vec::new();
    for i in 1..n {
        let e = &w.entries[i];
        if matches!(e.kind, EntryKind::HardLink { .. }) {
            continue;
        }
        let id = &w.ids[i];
        // Same inode number and birth time: the same item (a freed inode number given to a new
        // file has a new birth time).
        let Some((k, it)) = m
            .by_ino_index(id.dev, id.ino)
            .map(|k| (k, &m.items[k]))
            .filter(|(_, it)| it.kind == e.kind.tag() && it.btime == id.btime)
        else {
            // A new inode at an old path (a file replaced by an atomic save): the old content at
            // this path is still a basis for a delta, though not a rename.
            if let (EntryKind::File { size }, Some(k)) = (&e.kind, m.position(&w.paths[i])) {
                if m.items[k].kind == e.kind.tag()
                    && m.items[k].hashes.is_some()
                    && !is_inline(*size)
                {
                    p.old[i] = Some(k);
                    candidates.push((i, *size));
                }
            }
            continue;
        };
        // Where its parent was, plus its name: where it would be had it not moved.
        let parent_was: Option<&[u8]> = match e.parent.index() {
            0 => Some(&[]),
            pi => old_item[pi].map(|pk| m.items[pk].path.as_slice()),
        };
        if !parent_was.is_some_and(|pp| is_join(pp, &e.name, &it.path)) {
            // The inode still at its old path too (a new hard link) is not a move.
            let new_at = new_at.get_or_insert_with(|| {
                w.paths
                    .iter()
                    .enumerate()
                    .map(|(i, q)| (q.as_slice(), i))
                    .collect()
            });
            let still_there = new_at
                .get(it.path.as_slice())
                .is_some_and(|&k| w.ids[k].dev == id.dev && w.ids[k].ino == id.ino);
            if still_there {
                continue;
            }
            p.hints.push(Hint::Rename {
                entry: EntryId(i as u32),
                from: it.path.clone(),
            });
        }
        old_item[i] = Some(k);
        p.old[i] = Some(k);
        if let EntryKind::File { size } = e.kind {
            let mtime = (e.meta.mtime_sec, e.meta.mtime_nsec);
            if !is_inline(size) && it.hashes.is_some() && !unchanged(it, size, mtime, id) {
                candidates.push((i, size));
            }
        }
    }
    // With a base snapshot, map extents first and read only blocks that may differ.
    let mut hashed = HashMap::new();
    if let Some(base) = base {
        candidates.retain(|&(i, size)| {
            let Some(it) = p.old[i].map(|k| &m.items[k]) else {
                return true;
            };
            let Some(old_h) = &it.hashes else { return true };
            let Ok(old_fd) = beneath::open_file(base, &it.path, OFlags::RDONLY, Mode::empty())
            else {
                return true;
            };
            let Ok(new_fd) = beneath::open_file(root, &w.paths[i], OFlags::RDONLY, Mode::empty())
            else {
                return true;
            };
            let Some(same) =
                super::extents::unchanged_blocks(old_fd.as_fd(), it.size, new_fd.as_fd(), size)
            else {
                return true;
            };
            match super::extents::hash_with_basis(new_fd.as_fd(), size, old_h, &same) {
                Ok((h, read)) => {
                    p.hashed_bytes += read;
                    hashed.insert(i, h);
                    false
                }
                Err(_) => true,
            }
        });
    }
    p.hashed_bytes += candidates.iter().map(|c| c.1).sum::<u64>();
    hashed.extend(hash_files(root, w, &candidates, threads, stable)?);
    let mut candidates: Vec<(usize, u64)> = hashed
        .keys()
        .filter_map(|&i| match w.entries[i].kind {
            EntryKind::File { size } => Some((i, size)),
            _ => None,
        })
        .collect();
    candidates.sort_unstable();
    for (i, size) in candidates {
        let Some(new) = hashed.get(&i) else { continue };
        let Some(it) = p.old[i].map(|k| &m.items[k]) else {
            continue;
        };
        let Some(old) = &it.hashes else { continue };
        let ranges = changed_ranges(old, new, size, MAX_DELTA_RANGES);
        p.hints.push(Hint::Delta {
            entry: EntryId(i as u32),
            base_size: it.size,
            base_mtime: it.mtime,
            ranges: ranges.clone(),
        });
        p.deltas.insert(i, ranges);
    }
    p.hashes = hashed;
    Ok(p)
}

/// Most bytes of block hashes one repairing session sends (8 per 4 KiB block: this describes
/// 128 GiB of large files). Files past it get none: compared by size and mtime, they travel
/// whole if they differ.
pub const MAX_BLOCK_HINT_BYTES: u64 = 256 << 20;

/// For a receiver that repairs (CAP_BLOCK_HASHES): the block hashes of every large file's
/// content, from this session's hashing, else from the manifest where the file is unchanged
/// since, else read now. A file that changes while it is read gets none.
pub fn block_hints(
    w: &Walked,
    m: Option<&Manifest>,
    p: &Planned,
    root: BorrowedFd<'_>,
    threads: usize,
    stable: bool,
) -> Result<Vec<Hint>> {
    let mut known: Vec<(usize, &[u64])> = Vec::new();
    let mut to_hash: Vec<FileSize> = Vec::new();
    let mut budget = MAX_BLOCK_HINT_BYTES;
    for (i, e) in w.entries.iter().enumerate() {
        let EntryKind::File { size } = e.kind else {
            continue;
        };
        let cost = size.div_ceil(super::manifest::BLOCK) * 8;
        if is_inline(size) || cost > budget {
            continue;
        }
        budget -= cost;
        let mtime = (e.meta.mtime_sec, e.meta.mtime_nsec);
        let from_manifest = p.old.get(i).copied().flatten().and_then(|k| {
            let it = &m?.items[k];
            it.hashes
                .as_deref()
                .filter(|_| unchanged(it, size, mtime, &w.ids[i]))
        });
        match p.hashes.get(&i).map(Vec::as_slice).or(from_manifest) {
            Some(h) => known.push((i, h)),
            None => to_hash.push((i, size)),
        }
    }
    let read = hash_files(root, w, &to_hash, threads, stable)?;
    let mut all: Vec<(usize, &[u64])> = known;
    all.extend(read.iter().map(|(i, h)| (*i, h.as_slice())));
    all.sort_unstable_by_key(|x| x.0);
    let mut out = Vec::new();
    for (i, hashes) in all {
        for (k, chunk) in hashes.chunks(MAX_BLOCK_HASHES_PER_HINT).enumerate() {
            out.push(Hint::Blocks {
                entry: EntryId(i as u32),
                first: (k * MAX_BLOCK_HASHES_PER_HINT) as u64,
                hashes: chunk.to_vec(),
            });
        }
    }
    Ok(out)
}

/// (entry, size) of a file to hash, and (entry or segment, block hashes) of a result.
type FileSize = (usize, u64);
type Hashed = (usize, Vec<u64>);

/// Files at least this large are hashed by all threads at once, a segment each: one stream of
/// buffered reads does not keep the device busy.
const SPLIT_MIN: u64 = 64 << 20;
const SEGMENT: u64 = 16 << 20;
/// Threads hashing: reads wait on the device, so more than the CPUs help.
const HASH_THREADS_MIN: usize = 4;

/// Hashes files in parallel. Unless the source is a frozen snapshot (`stable`), a file whose
/// size, mtime or ctime differs from the walk (it changed since) is left out: its hashes would
/// not describe what the receiver gets.
pub fn hash_files(
    root: BorrowedFd<'_>,
    w: &Walked,
    files: &[(usize, u64)],
    threads: usize,
    stable: bool,
) -> Result<HashMap<usize, Vec<u64>>> {
    let threads = threads.clamp(HASH_THREADS_MIN, 16);
    let (big, small): (Vec<FileSize>, Vec<FileSize>) = files.iter().partition(|f| f.1 >= SPLIT_MIN);
    let mut map = HashMap::new();
    for (i, size) in big {
        let path = &w.paths[i];
        let fd = beneath::open_file(root, path, OFlags::RDONLY, Mode::empty())
            .ctx(|| format!("opening {}", show(path)))?;
        let regions = super::plan::data_regions(fd.as_fd(), size)
            .ctx(|| format!("finding data regions of {}", show(path)))?;
        let _ = rustix::fs::fadvise(&fd, 0, None, rustix::fs::Advice::Sequential);
        let segs = size.div_ceil(SEGMENT) as usize;
        let next = AtomicUsize::new(0);
        let parts: Vec<Result<Vec<Hashed>>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads.min(segs))
                .map(|_| {
                    s.spawn(|| -> Result<Vec<(usize, Vec<u64>)>> {
                        let mut out = Vec::new();
                        loop {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            if k >= segs {
                                return Ok(out);
                            }
                            let (a, b) = (k as u64 * SEGMENT, ((k as u64 + 1) * SEGMENT).min(size));
                            let h = super::manifest::hash_segment(fd.as_fd(), size, &regions, a, b)
                                .ctx(|| format!("hashing {}", show(path)))?;
                            out.push((k, h));
                        }
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(crate::error::Error::Panicked("a hashing thread".into()))
                    })
                })
                .collect()
        });
        let mut segs_out: Vec<(usize, Vec<u64>)> = Vec::with_capacity(segs);
        for p in parts {
            segs_out.extend(p?);
        }
        segs_out.sort_unstable_by_key(|x| x.0);
        let h: Vec<u64> = segs_out.into_iter().flat_map(|x| x.1).collect();
        if stable || unchanged_since_walk(fd.as_fd(), w, i)? {
            map.insert(i, h);
        }
    }
    let next = AtomicUsize::new(0);
    let results: Vec<Result<Vec<Hashed>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads.min(small.len().max(1)))
            .map(|_| {
                s.spawn(|| -> Result<Vec<(usize, Vec<u64>)>> {
                    let mut out = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(i, size)) = small.get(k) else {
                            return Ok(out);
                        };
                        let path = &w.paths[i];
                        let fd = beneath::open_file(root, path, OFlags::RDONLY, Mode::empty())
                            .ctx(|| format!("opening {}", show(path)))?;
                        let h = hash_file(fd.as_fd(), size)
                            .ctx(|| format!("hashing {}", show(path)))?;
                        if stable || unchanged_since_walk(fd.as_fd(), w, i)? {
                            out.push((i, h));
                        }
                    }
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(crate::error::Error::Panicked("a hashing thread".into()))
                })
            })
            .collect()
    });
    for r in results {
        map.extend(r?);
    }
    Ok(map)
}

fn unchanged_since_walk(fd: BorrowedFd<'_>, w: &Walked, i: usize) -> Result<bool> {
    let st = rustix::fs::fstat(fd).ctx(|| format!("stat {}", show(&w.paths[i])))?;
    Ok(w.unchanged_since(i, &st))
}

/// The manifest of the recovery point just committed. `hashes` holds the block hashes known for
/// large files (carried, pre-hashed or hashed after the job); a large file without them gets
/// none and will be sent whole when it next changes.
pub fn build_manifest(w: &Walked, rp: u128, mut hashes: HashMap<usize, Vec<u64>>) -> Manifest {
    let mut items = Vec::with_capacity(w.entries.len());
    for (i, e) in w.entries.iter().enumerate().skip(1) {
        if matches!(e.kind, EntryKind::HardLink { .. }) {
            continue;
        }
        let id = &w.ids[i];
        let size = if let EntryKind::File { size } = e.kind {
            size
        } else {
            0
        };
        items.push(Item {
            path: w.paths[i].clone(),
            kind: e.kind.tag(),
            dev: id.dev,
            ino: id.ino,
            size,
            mtime: (e.meta.mtime_sec, e.meta.mtime_nsec),
            ctime: (id.ctime_sec, id.ctime_nsec),
            btime: id.btime,
            hashes: hashes.remove(&i),
        });
    }
    Manifest::new(rp, items)
}

/// Hashes carried over from the old manifest for large files that did not change.
pub fn carried_hashes(w: &Walked, m: &Manifest, old: &[Option<usize>]) -> HashMap<usize, Vec<u64>> {
    let mut out = HashMap::new();
    for (i, e) in w.entries.iter().enumerate() {
        let EntryKind::File { size } = e.kind else {
            continue;
        };
        let Some(it) = old.get(i).copied().flatten().map(|k| &m.items[k]) else {
            continue;
        };
        if let Some(h) = &it.hashes {
            if !is_inline(size)
                && unchanged(it, size, (e.meta.mtime_sec, e.meta.mtime_nsec), &w.ids[i])
            {
                out.insert(i, h.clone());
            }
        }
    }
    out
}
