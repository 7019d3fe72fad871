//! The source manifest: what the sender knows the receiver's recovery point holds, kept in the
//! stream's state directory (`mover send --state DIR`). Per item: path, kind, inode, size, mtime,
//! ctime and, for large files, one xxh3-64 per 4 KiB block.
//!
//! It lets a job (1) skip files whose inode, size, mtime and ctime are unchanged without reading
//! them, (2) send only the blocks of a changed file whose hash changed, and (3) recognise a moved
//! file or directory by its inode and send a rename instead of its data.
//!
//! Block size: 4 KiB is the page size and the block size of the file systems we run on, so it
//! is the unit applications and the kernel write in; a 4 KiB random write costs 4 KiB on the
//! wire instead of a whole larger block (64 KiB blocks would send 16x the changed bytes). The
//! price is 8 bytes of manifest per 4 KiB of data (0.2%).
//!
//! It also keeps the entry list as sent for that recovery point and its digest: the base the
//! next job's list travels as a delta against, if the receiver still keeps the same list.
//!
//! A manifest is valid only for the recovery point it names: it is written after the receiver
//! verified and committed that point, atomically, and ignored if the receiver reports another.
//! It is two files: the body (`manifest`: items and list, checksummed) and a small head
//! (`manifest.rp`: the recovery point, the kept snapshot, the body's checksum). A job that
//! changed nothing rewrites only the head; a head and body that do not belong together (a crash
//! between the two renames) are an unusable manifest, never a wrong one.

use crate::durable::{read_opt, write_atomic};
use crate::error::{Error, IoContext, Result};
use crate::wire::codec::{Dec, Enc};
use crate::wire::message::MAX_HINT_PATH;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

pub const BLOCK: u64 = 4096;
const MANIFEST_FILE: &str = "manifest";
const HEAD_FILE: &str = "manifest.rp";
const MAGIC: u32 = u32::from_le_bytes(*b"MVMF");
const HEAD_MAGIC: u32 = u32::from_le_bytes(*b"MVMH");
/// Version 4 added the entry list as sent and its digest (an older manifest is set aside: the
/// next job compares by size and mtime and sends the whole list, then writes a new one).
const VERSION: u16 = 4;
/// Bound on items in one manifest (the entry list's own bound).
const MAX_ITEMS: u64 = crate::tree::entry::MAX_ENTRIES as u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub path: Vec<u8>,
    /// `EntryKind::tag()` of the item.
    pub kind: u8,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    /// Birth time: with (dev, ino) the item's identity across renames.
    pub btime: (i64, u32),
    /// Block hashes of a large file whose content is known to equal the target's copy.
    pub hashes: Option<Vec<u64>>,
}

#[derive(Debug, Default, Clone)]
pub struct Manifest {
    /// The receiver's recovery point this manifest describes.
    pub rp: u128,
    /// The source snapshot (under `<src>/.mover-state`) that recovery point was made from, kept
    /// so the next job can find changed extents without reading (btrfs).
    pub base_snapshot: Option<String>,
    pub items: Vec<Item>,
    /// The entry list as sent for that recovery point (empty: none kept).
    pub entries: Vec<crate::tree::entry::Entry>,
    /// Its digest (`list_digest`: tree hash with owners), which the receiver must name.
    pub list_digest: u128,
    /// Checksum of the body as last saved or loaded (the head names it).
    pub body_sum: u128,
    /// Items by a seeded hash of their path (a lookup checks the path: a collision is a miss,
    /// which costs a file's hashing or data, never a wrong answer). Built by `index`.
    by_path: HashMap<u64, u32>,
    by_ino: HashMap<(u64, u64), u32>,
    path_seed: u64,
    /// The entry of `entries` each item was made from (items skip the root and hard links),
    /// when the two lists agree.
    entry_of: Vec<u32>,
}

impl Manifest {
    /// A manifest to be saved (not indexed for lookups).
    pub fn new(rp: u128, items: Vec<Item>) -> Manifest {
        Manifest {
            rp,
            items,
            ..Default::default()
        }
    }

    /// Builds the lookups a job needs (by path, by inode, item to entry).
    fn index(&mut self) {
        let mut seed = [0u8; 8];
        // A fixed seed is only slower under a crafted tree, never wrong.
        let _ = crate::units::fill_random(&mut seed);
        self.path_seed = u64::from_le_bytes(seed);
        self.by_path = HashMap::with_capacity(self.items.len());
        self.by_ino = HashMap::with_capacity(self.items.len());
        for (i, it) in self.items.iter().enumerate() {
            let h = xxhash_rust::xxh3::xxh3_64_with_seed(&it.path, self.path_seed);
            self.by_path.entry(h).or_insert(i as u32);
            self.by_ino.insert((it.dev, it.ino), i as u32);
        }
        let of: Vec<u32> = self
            .entries
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, e)| !matches!(e.kind, crate::tree::entry::EntryKind::HardLink { .. }))
            .map(|(i, _)| i as u32)
            .collect();
        let agree = of.len() == self.items.len()
            && of
                .iter()
                .zip(&self.items)
                .all(|(&e, it)| self.entries[e as usize].kind.tag() == it.kind);
        self.entry_of = if agree { of } else { Vec::new() };
    }

    pub fn position(&self, p: &[u8]) -> Option<usize> {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(p, self.path_seed);
        let k = *self.by_path.get(&h)? as usize;
        (self.items[k].path == p).then_some(k)
    }

    pub fn by_ino_index(&self, dev: u64, ino: u64) -> Option<usize> {
        self.by_ino.get(&(dev, ino)).map(|&i| i as usize)
    }

    /// The entry of the kept list that item `k` describes, if the lists agree.
    pub fn entry_of(&self, k: usize) -> Option<&crate::tree::entry::Entry> {
        self.entry_of.get(k).map(|&e| &self.entries[e as usize])
    }

    /// The kept entry list with each entry's path and identity (the previous job's walk, which
    /// a narrowed walk starts from), if the list and the items agree and every entry but the
    /// root has its item (no hard links: they have none).
    pub fn previous(&self) -> Option<crate::tree::narrow::Previous<'_>> {
        if self.entries.is_empty()
            || self.items.len() + 1 != self.entries.len()
            || self.entry_of.len() != self.items.len()
        {
            return None;
        }
        let root = crate::tree::walk::FileId::default();
        Some(crate::tree::narrow::Previous {
            entries: &self.entries,
            paths: std::iter::once(&[][..])
                .chain(self.items.iter().map(|it| it.path.as_slice()))
                .collect(),
            ids: std::iter::once(root)
                .chain(self.items.iter().map(|it| crate::tree::walk::FileId {
                    dev: it.dev,
                    ino: it.ino,
                    ctime_sec: it.ctime.0,
                    ctime_nsec: it.ctime.1,
                    btime: it.btime,
                }))
                .collect(),
        })
    }

    /// The body: list digest, items, entry list, then its checksum (xxh3-128 of the rest).
    pub(crate) fn encode_body(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(MAGIC).u16(VERSION);
        e.u128(self.list_digest);
        e.u64(self.items.len() as u64);
        for it in &self.items {
            e.bytes(&it.path)
                .u8(it.kind)
                .u64(it.dev)
                .u64(it.ino)
                .u64(it.size);
            e.i64(it.mtime.0)
                .u32(it.mtime.1)
                .i64(it.ctime.0)
                .u32(it.ctime.1)
                .i64(it.btime.0)
                .u32(it.btime.1);
            match &it.hashes {
                None => e.u8(0),
                Some(h) => {
                    e.u8(1).u64(h.len() as u64);
                    for x in h {
                        e.u64(*x);
                    }
                    &mut e
                }
            };
        }
        e.u64(self.entries.len() as u64);
        for x in &self.entries {
            crate::wire::message::encode_entry(&mut e, x);
        }
        let sum = xxhash_rust::xxh3::xxh3_128(&e.buf);
        e.u128(sum);
        e.buf
    }

    /// The head: recovery point, kept snapshot, the body's checksum; then its own checksum.
    pub(crate) fn encode_head(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(HEAD_MAGIC)
            .u16(VERSION)
            .u128(self.rp)
            .bytes(self.base_snapshot.as_deref().unwrap_or("").as_bytes())
            .u128(self.body_sum);
        let sum = xxhash_rust::xxh3::xxh3_128(&e.buf);
        e.u128(sum);
        e.buf
    }

    /// (recovery point, kept snapshot, body checksum) from a head.
    pub(crate) fn decode_head(raw: &[u8]) -> Result<(u128, Option<String>, u128)> {
        let body = checked(raw)?;
        let mut d = Dec::new(body);
        if d.u32()? != HEAD_MAGIC || d.u16()? != VERSION {
            return Err(unusable("unknown format"));
        }
        let rp = d.u128()?;
        let base = String::from_utf8(d.bytes(255, "base snapshot name")?.to_vec())
            .map_err(|_| unusable("base snapshot name"))?;
        let body_sum = d.u128()?;
        d.finish()?;
        Ok((rp, (!base.is_empty()).then_some(base), body_sum))
    }

    /// A manifest from its body (its head's fields left empty).
    pub(crate) fn decode_body(raw: &[u8]) -> Result<Manifest> {
        let body = checked(raw)?;
        let body_sum = u128::from_le_bytes(
            raw[body.len()..]
                .try_into()
                .map_err(|_| unusable("truncated"))?,
        );
        let bad = unusable;
        let mut d = Dec::new(body);
        if d.u32()? != MAGIC || d.u16()? != VERSION {
            return Err(bad("unknown format"));
        }
        let list_digest = d.u128()?;
        let n = d.u64()?;
        if n > MAX_ITEMS {
            return Err(bad("too many items"));
        }
        let mut items = Vec::with_capacity((n as usize).min(d.remaining() / 60));
        for _ in 0..n {
            let path = d.bytes(MAX_HINT_PATH, "manifest path")?.to_vec();
            let kind = d.u8()?;
            let (dev, ino, size) = (d.u64()?, d.u64()?, d.u64()?);
            let mtime = (d.i64()?, d.u32()?);
            let ctime = (d.i64()?, d.u32()?);
            let btime = (d.i64()?, d.u32()?);
            let hashes = match d.u8()? {
                0 => None,
                _ => {
                    let k = d.u64()?;
                    if k != size.div_ceil(BLOCK) {
                        return Err(bad("hash count does not match the size"));
                    }
                    let mut h = Vec::with_capacity((k as usize).min(d.remaining() / 8));
                    for _ in 0..k {
                        h.push(d.u64()?);
                    }
                    Some(h)
                }
            };
            items.push(Item {
                path,
                kind,
                dev,
                ino,
                size,
                mtime,
                ctime,
                btime,
                hashes,
            });
        }
        let k = d.u64()?;
        if k > MAX_ITEMS {
            return Err(bad("too many entries"));
        }
        // No allocation beyond what the file can hold.
        let mut entries = Vec::with_capacity(
            (k as usize).min(d.remaining() / crate::wire::message::MIN_ENTRY_LEN),
        );
        for _ in 0..k {
            entries.push(crate::wire::message::decode_entry(&mut d)?);
        }
        d.finish()?;
        let mut m = Manifest::new(0, items);
        m.entries = entries;
        m.list_digest = list_digest;
        m.body_sum = body_sum;
        Ok(m)
    }

    /// Loads the manifest from a state directory; None if there is none yet. An unreadable
    /// manifest (other format, corrupt) is set aside with a warning: the job then compares by
    /// size and mtime, which is slower but never wrong.
    pub fn load(state: &Path) -> Result<Option<Manifest>> {
        let dir = open_state(state)?;
        let Some(head) = read_opt(dir.as_fd(), HEAD_FILE)? else {
            return Ok(None);
        };
        let body = read_opt(dir.as_fd(), MANIFEST_FILE)?.unwrap_or_default();
        let loaded = Manifest::decode_head(&head).and_then(|(rp, base, sum)| {
            let mut m = Manifest::decode_body(&body)?;
            if m.body_sum != sum {
                return Err(unusable("its head and body are from different jobs"));
            }
            m.rp = rp;
            m.base_snapshot = base;
            Ok(m)
        });
        match loaded {
            Ok(mut m) => {
                m.index();
                Ok(Some(m))
            }
            Err(e) => {
                tracing::warn!("ignoring the manifest in {}: {e}", state.display());
                Ok(None)
            }
        }
    }

    /// Writes body and head (the body first: a head always names a body that was written).
    pub fn save(&mut self, state: &Path) -> Result<()> {
        self.body_sum = self.write(state)?;
        Ok(())
    }

    /// `save` without recording the body's checksum here (which it returns).
    fn write(&self, state: &Path) -> Result<u128> {
        let dir = open_state(state)?;
        let body = self.encode_body();
        let sum = u128::from_le_bytes(
            body[body.len() - 16..]
                .try_into()
                .map_err(|_| unusable("encoding"))?,
        );
        write_atomic(dir.as_fd(), MANIFEST_FILE, &body)?;
        write_head(&dir, self.rp, self.base_snapshot.clone(), sum)?;
        Ok(sum)
    }

    /// Writes only a head naming recovery point `rp` (and kept snapshot `base`) for this
    /// manifest's body, which is the one on disk and still describes the source.
    pub fn save_head_as(&self, state: &Path, rp: u128, base: Option<String>) -> Result<()> {
        write_head(&open_state(state)?, rp, base, self.body_sum)
    }
}

/// The manifest of a stream's last job kept in memory between jobs (the daemon runs them all in
/// one process), so a job reads none from disk and writes its own on a background thread: a
/// job's time is then not that of encoding and writing a manifest the size of the tree.
///
/// One cache per state directory. The disk stays what `Manifest::load` reads (same format): a
/// process that starts again, or a cache that lost its manifest, loads from there. At most one
/// background save runs at a time: each save, and any read from disk, first waits for the
/// previous one. A save that failed is logged and the cache forgets its manifest, so the next
/// job loads from disk (an older manifest, whose recovery point the receiver no longer names,
/// is ignored: that job compares by size and mtime, slower but never wrong).
#[derive(Default)]
pub struct ManifestCache {
    state: std::sync::Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    /// The state directory `manifest` belongs to.
    dir: Option<std::path::PathBuf>,
    /// The last manifest saved (or loaded), indexed; `generation` names its body.
    manifest: Option<std::sync::Arc<Manifest>>,
    /// Where the background save hands over the manifest it was given once it has indexed it
    /// (indexing is the part of a save the next job needs; writing is not).
    indexing: Option<std::sync::mpsc::Receiver<std::sync::Arc<Manifest>>>,
    generation: u64,
    /// The body the state directory holds, as (generation, checksum), set by the background
    /// save; a head-only save can name it. None: unknown (a save failed or none ran yet).
    on_disk: std::sync::Arc<std::sync::Mutex<Option<(u64, u128)>>>,
    saving: Option<std::thread::JoinHandle<Result<()>>>,
}

/// A lock whose holder panicked still guards consistent data here: every update of the
/// cache's state is a plain assignment.
fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl CacheState {
    /// Waits until the manifest of the save in flight is indexed (not until it is written).
    fn settle(&mut self) {
        if let Some(rx) = self.indexing.take() {
            // No manifest if the save died first: the next load reads the disk.
            self.manifest = rx.recv().ok();
        }
    }

    /// Waits for the save in flight; a failed one makes the cache forget its manifest.
    fn join(&mut self) {
        self.settle();
        let Some(h) = self.saving.take() else { return };
        let res = h
            .join()
            .unwrap_or_else(|_| Err(Error::Panicked("the manifest's background save".into())));
        if let Err(e) = res {
            tracing::warn!("saving the manifest failed: {e}; the next job loads it from disk");
            self.manifest = None;
            *locked(&self.on_disk) = None;
        }
    }
}

impl ManifestCache {
    pub fn new() -> ManifestCache {
        ManifestCache::default()
    }

    /// Waits for the background save, if one runs (a failure is logged).
    pub fn flush(&self) {
        locked(&self.state).join();
    }

    /// The manifest of recovery point `rp` for state directory `dir`: the one in memory if it
    /// is that, else the one on disk (after the save in flight); None if neither is.
    pub(crate) fn load(&self, dir: &Path, rp: u128) -> Result<Option<std::sync::Arc<Manifest>>> {
        let mut s = locked(&self.state);
        // A save that already failed is known now, not at the next save.
        if s.saving.as_ref().is_some_and(|h| h.is_finished()) {
            s.join();
        }
        s.settle();
        let ours = s.dir.as_deref() == Some(dir);
        if let Some(m) = s.manifest.as_ref().filter(|m| ours && m.rp == rp) {
            return Ok(Some(m.clone()));
        }
        // A read while the save writes would find a head and body of different jobs.
        s.join();
        let m = Manifest::load(dir)?.map(std::sync::Arc::new);
        s.generation += 1;
        *locked(&s.on_disk) = m.as_ref().map(|m| (s.generation, m.body_sum));
        s.dir = Some(dir.to_path_buf());
        s.manifest = m;
        Ok(s.manifest.clone().filter(|m| m.rp == rp))
    }

    /// Makes `m` the stream's manifest and writes it to `dir` in the background (the next
    /// load waits only until it is indexed).
    pub(crate) fn save(&self, dir: &Path, m: Manifest) -> Result<()> {
        self.store(dir, m, false)
    }

    /// The manifest `m` (loaded by this cache), unchanged but now of recovery point `rp` and
    /// kept snapshot `base`: in the background, only a new head is written if the body on disk
    /// is `m`'s, else the whole manifest.
    pub(crate) fn save_head(
        &self,
        dir: &Path,
        m: std::sync::Arc<Manifest>,
        rp: u128,
        base: Option<String>,
    ) -> Result<()> {
        let mut s = locked(&self.state);
        // Dropped here, the cache's copy leaves `m` the only one (no clone) once the save in
        // flight, which holds another, is done.
        s.join();
        s.manifest = None;
        drop(s);
        let mut m = std::sync::Arc::try_unwrap(m).unwrap_or_else(|a| (*a).clone());
        m.rp = rp;
        m.base_snapshot = base;
        self.store(dir, m, true)
    }

    /// `same_body`: `m` is the cached manifest (indexed) under a new head.
    fn store(&self, dir: &Path, mut m: Manifest, same_body: bool) -> Result<()> {
        let mut s = locked(&self.state);
        s.join(); // one writer per state directory
        if !(same_body && s.dir.as_deref() == Some(dir)) {
            s.generation += 1;
        }
        let generation = s.generation;
        s.dir = Some(dir.to_path_buf());
        s.manifest = None;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        s.indexing = Some(rx);
        let (on_disk, dir) = (s.on_disk.clone(), dir.to_path_buf());
        let h = std::thread::Builder::new()
            .name("mover-manifest".into())
            .spawn(move || {
                if !same_body {
                    m.index();
                }
                let m = std::sync::Arc::new(m);
                // The receiving end goes only with the cache.
                let _ = tx.send(m.clone());
                let claim = *locked(&on_disk);
                let sum = match claim {
                    Some((g, sum)) if g == generation => open_state(&dir)
                        .and_then(|fd| write_head(&fd, m.rp, m.base_snapshot.clone(), sum))
                        .map(|()| sum),
                    _ => m.write(&dir),
                };
                *locked(&on_disk) = sum.as_ref().ok().map(|&sum| (generation, sum));
                sum.map(|_| ())
            })
            .ctx(|| "spawning the manifest's background save".to_string())?;
        s.saving = Some(h);
        Ok(())
    }
}

impl Drop for ManifestCache {
    /// The last save completes before the cache goes (a manifest written is the next
    /// process's).
    fn drop(&mut self) {
        locked(&self.state).join();
    }
}

/// Writes a head naming recovery point `rp`, kept snapshot `base` and the body of checksum
/// `body_sum`.
fn write_head(
    dir: &std::os::fd::OwnedFd,
    rp: u128,
    base: Option<String>,
    body_sum: u128,
) -> Result<()> {
    let head = Manifest {
        rp,
        base_snapshot: base,
        body_sum,
        ..Default::default()
    };
    write_atomic(dir.as_fd(), HEAD_FILE, &head.encode_head())
}

fn unusable(why: &str) -> Error {
    Error::Corrupt(format!(
        "the manifest in the state directory is unusable ({why}); remove it to start over"
    ))
}

/// The part of `raw` its trailing xxh3-128 covers, if it matches.
fn checked(raw: &[u8]) -> Result<&[u8]> {
    if raw.len() < 16 {
        return Err(unusable("truncated"));
    }
    let (body, sum) = raw.split_at(raw.len() - 16);
    if xxhash_rust::xxh3::xxh3_128(body).to_le_bytes() != sum {
        return Err(unusable("checksum mismatch"));
    }
    Ok(body)
}

fn open_state(state: &Path) -> Result<std::os::fd::OwnedFd> {
    std::fs::create_dir_all(state)
        .ctx(|| format!("creating state directory {}", state.display()))?;
    crate::beneath::open_root(state, "state directory")
}

pub fn zero_hash(len: usize) -> u64 {
    static ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];
    xxhash_rust::xxh3::xxh3_64(&ZEROS[..len])
}

/// Hashes every 4 KiB block of an open file of `size` bytes; holes are hashed as zeros without
/// being read.
pub fn hash_file(fd: BorrowedFd<'_>, size: u64) -> std::io::Result<Vec<u64>> {
    let regions = super::plan::data_regions(fd, size)?;
    hash_segment(fd, size, &regions, 0, size)
}

/// Fills `buf` from `off`; a file that ends first shrank under the reader.
pub fn pread_exact(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let n = rustix::io::pread(fd, &mut buf[got..], off + got as u64)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shrank while being hashed",
            ));
        }
        got += n;
    }
    Ok(())
}

/// Hashes blocks [start, end) of a file (`start` block aligned, `end` aligned or the file's
/// size) given its data regions; segments of one file can be hashed by several threads.
pub fn hash_segment(
    fd: BorrowedFd<'_>,
    size: u64,
    regions: &[(u64, u64)],
    start: u64,
    end: u64,
) -> std::io::Result<Vec<u64>> {
    const CHUNK: usize = 1 << 20;
    debug_assert!(
        start.is_multiple_of(BLOCK) && end <= size && (end.is_multiple_of(BLOCK) || end == size)
    );
    let mut out = Vec::with_capacity((end - start).div_ceil(BLOCK) as usize);
    let mut buf = vec![0u8; CHUNK];
    let mut at = start;
    let push_zeros = |out: &mut Vec<u64>, from: u64, to: u64| {
        let mut b = from;
        while b < to {
            let len = (to - b).min(BLOCK) as usize;
            out.push(zero_hash(len));
            b += len as u64;
        }
    };
    for &(off, len) in regions {
        // Regions are block aligned except at the end of the file.
        let rs = (off / BLOCK * BLOCK).max(start);
        let re = (off + len)
            .div_ceil(BLOCK)
            .saturating_mul(BLOCK)
            .min(size)
            .min(end);
        if re <= at || rs >= end {
            continue;
        }
        if rs > at {
            push_zeros(&mut out, at, rs);
        }
        let mut pos = rs.max(at);
        while pos < re {
            let want = ((re - pos) as usize).min(CHUNK);
            pread_exact(fd, &mut buf[..want], pos)?;
            for blk in buf[..want].chunks(BLOCK as usize) {
                out.push(xxhash_rust::xxh3::xxh3_64(blk));
            }
            pos += want as u64;
        }
        at = re;
    }
    if at < end {
        push_zeros(&mut out, at, end);
    }
    debug_assert_eq!(out.len() as u64, (end - start).div_ceil(BLOCK));
    Ok(out)
}

/// Byte ranges of the new file (`new` hashes, `size` bytes) whose blocks differ from `old`,
/// coalesced and merged until at most `max_ranges` remain.
pub fn changed_ranges(old: &[u64], new: &[u64], size: u64, max_ranges: usize) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (k, h) in new.iter().enumerate() {
        if old.get(k) == Some(h) {
            continue;
        }
        let off = k as u64 * BLOCK;
        let len = BLOCK.min(size - off);
        match ranges.last_mut() {
            Some(last) if last.0 + last.1 == off => last.1 += len,
            _ => ranges.push((off, len)),
        }
    }
    // Too many ranges: close the smallest gaps first (sends a little more, stays bounded).
    let mut gap = BLOCK;
    while ranges.len() > max_ranges.max(1) {
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.0 - (last.0 + last.1) <= gap => last.1 = r.0 + r.1 - last.0,
                _ => merged.push(r),
            }
        }
        ranges = merged;
        gap *= 2;
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn manifest_round_trips_and_rejects_corruption() {
        let items = vec![
            Item {
                path: b"a".to_vec(),
                kind: 1,
                dev: 1,
                ino: 2,
                size: 0,
                mtime: (1, 2),
                ctime: (3, 4),
                btime: (5, 6),
                hashes: None,
            },
            Item {
                path: b"a/f".to_vec(),
                kind: 2,
                dev: 1,
                ino: 3,
                size: 5000,
                mtime: (5, 6),
                ctime: (7, 8),
                btime: (0, 0),
                hashes: Some(vec![9, 10]),
            },
        ];
        let mut m = Manifest::new(42, items.clone());
        m.entries = vec![crate::tree::entry::Entry {
            parent: crate::units::EntryId(0),
            name: vec![],
            kind: crate::tree::entry::EntryKind::Dir,
            meta: Default::default(),
            xattrs: vec![],
        }];
        m.list_digest = 77;
        m.base_snapshot = Some("snap".into());
        let t = tempfile::tempdir().unwrap();
        m.save(t.path()).unwrap();
        let back = Manifest::load(t.path()).unwrap().unwrap();
        assert_eq!((back.rp, back.base_snapshot.as_deref()), (42, Some("snap")));
        assert_eq!(back.items, items);
        assert_eq!((&back.entries, back.list_digest), (&m.entries, 77));
        assert_eq!(back.items[back.by_ino_index(1, 3).unwrap()].path, b"a/f");
        // A new head over the same body.
        back.save_head_as(t.path(), 43, None).unwrap();
        assert_eq!(Manifest::load(t.path()).unwrap().unwrap().rp, 43);
        let raw = m.encode_body();
        let mut bad = raw.clone();
        bad[20] ^= 1;
        assert!(Manifest::decode_body(&bad).is_err());
        // A body that is not the one the head names is no manifest.
        m.items.pop();
        std::fs::write(t.path().join(MANIFEST_FILE), m.encode_body()).unwrap();
        assert!(Manifest::load(t.path()).unwrap().is_none());
    }

    fn sample(rp: u128) -> Manifest {
        let mut m = Manifest::new(
            rp,
            vec![Item {
                path: b"f".to_vec(),
                kind: 2,
                dev: 0,
                ino: 9,
                size: 1,
                mtime: (1, 0),
                ctime: (2, 0),
                btime: (0, 0),
                hashes: None,
            }],
        );
        m.entries = vec![
            crate::tree::entry::Entry {
                parent: crate::units::EntryId(0),
                name: vec![],
                kind: crate::tree::entry::EntryKind::Dir,
                meta: Default::default(),
                xattrs: vec![],
            },
            crate::tree::entry::Entry {
                parent: crate::units::EntryId(0),
                name: b"f".to_vec(),
                kind: crate::tree::entry::EntryKind::File { size: 1 },
                meta: Default::default(),
                xattrs: vec![],
            },
        ];
        m.list_digest = 5;
        m
    }

    #[test]
    fn cache_serves_its_manifest_from_memory_and_writes_it_in_the_background() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("st");
        let c = ManifestCache::new();
        assert!(c.load(&dir, 7).unwrap().is_none(), "nothing anywhere yet");
        c.save(&dir, sample(7)).unwrap();
        let a = c.load(&dir, 7).unwrap().unwrap();
        assert!(a.previous().is_some(), "indexed at once");
        assert!(c.load(&dir, 8).unwrap().is_none(), "another recovery point");
        c.flush();
        let disk = Manifest::load(&dir).unwrap().unwrap();
        assert_eq!(
            (disk.rp, &disk.items, &disk.entries),
            (7, &a.items, &a.entries)
        );
        // Nothing changed: a new head over the body on disk.
        let body = std::fs::read(dir.join(MANIFEST_FILE)).unwrap();
        c.save_head(&dir, a, 9, Some("snap".into())).unwrap();
        let b = c.load(&dir, 9).unwrap().unwrap();
        assert_eq!(b.base_snapshot.as_deref(), Some("snap"));
        drop(b);
        drop(c); // completes the save
        assert_eq!(std::fs::read(dir.join(MANIFEST_FILE)).unwrap(), body);
        let disk = Manifest::load(&dir).unwrap().unwrap();
        assert_eq!((disk.rp, disk.base_snapshot.as_deref()), (9, Some("snap")));
        // A new cache (a new process) reads it from disk.
        assert!(ManifestCache::new().load(&dir, 9).unwrap().is_some());
    }

    #[test]
    fn cache_forgets_a_manifest_whose_save_failed() {
        let t = tempfile::tempdir().unwrap();
        // A file where the state directory should be: every write fails.
        let dir = t.path().join("st");
        std::fs::write(&dir, b"not a directory").unwrap();
        let c = ManifestCache::new();
        c.save(&dir, sample(7)).unwrap();
        c.flush();
        assert!(
            c.load(&dir, 7).is_err(),
            "from disk, which cannot be read either"
        );
        std::fs::remove_file(&dir).unwrap();
        assert!(c.load(&dir, 7).unwrap().is_none());
        // A head-only save over a body that never reached the disk writes the whole manifest.
        c.save(&dir, sample(7)).unwrap();
        let a = c.load(&dir, 7).unwrap().unwrap();
        c.flush();
        // The body lost after all (as if its save had failed).
        std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
        std::fs::remove_file(dir.join(HEAD_FILE)).unwrap();
        *locked(&locked(&c.state).on_disk) = None;
        c.save_head(&dir, a, 8, None).unwrap();
        c.flush();
        assert_eq!(Manifest::load(&dir).unwrap().unwrap().rp, 8);
    }

    #[test]
    fn hash_file_matches_block_hashes_and_treats_holes_as_zeros() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.set_len(3 * BLOCK * 64 + 100).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 5000], BLOCK * 64).unwrap();
        let dense: Vec<u8> = std::fs::read(&p).unwrap();
        let want: Vec<u64> = dense
            .chunks(BLOCK as usize)
            .map(xxhash_rust::xxh3::xxh3_64)
            .collect();
        let got = hash_file(f.as_fd(), dense.len() as u64).unwrap();
        assert_eq!(got, want);
    }

    proptest! {
        #[test]
        fn changed_ranges_cover_exactly_the_changed_blocks(old in proptest::collection::vec(0u64..3, 0..64), new in proptest::collection::vec(0u64..3, 1..64), tail in 1u64..=BLOCK) {
            let size = (new.len() as u64 - 1) * BLOCK + tail;
            let r = changed_ranges(&old, &new, size, usize::MAX);
            for (k, h) in new.iter().enumerate() {
                let off = k as u64 * BLOCK;
                let covered = r.iter().any(|&(o, l)| o <= off && off < o + l);
                prop_assert_eq!(covered, old.get(k) != Some(h));
            }
            prop_assert!(r.iter().all(|&(o, l)| l > 0 && o + l <= size));
            let capped = changed_ranges(&old, &new, size, 3);
            prop_assert!(capped.len() <= 3);
            for &(o, l) in &r {
                prop_assert!(capped.iter().any(|&(co, cl)| co <= o && o + l <= co + cl));
            }
        }
    }
}
