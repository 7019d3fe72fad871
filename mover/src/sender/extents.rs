//! Changed blocks without reading: on btrfs the previous job's read-only snapshot is kept, and a
//! block whose extent in the new snapshot is the very extent (same physical address for the same
//! logical offset) it had in the old one cannot have changed. Only the other blocks are read and
//! hashed; the rest keep their manifest hashes. FIEMAP reports the mappings.

use super::manifest::BLOCK;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Extents asked for per FIEMAP call.
const BATCH: usize = 256;
/// Bound on FIEMAP calls for one file (BATCH extents each).
const MAX_CALLS: usize = 1 << 16;
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// Flags under which an extent's physical address says nothing reliable about its content.
/// UNWRITTEN too: a preallocated extent can be written in place.
const UNRELIABLE: u32 = 0x2 /* UNKNOWN */ | 0x4 /* DELALLOC */ | 0x100 /* NOT_ALIGNED */ | 0x200 /* DATA_INLINE */ | 0x400 /* DATA_TAIL */ | 0x800 /* UNWRITTEN */;
const ENCODED: u32 = 0x8;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped: u32,
    count: u32,
    reserved: u32,
    extents: [FiemapExtent; BATCH],
}

/// (logical, physical, length, flags) of every extent of an open file.
fn extents(fd: BorrowedFd<'_>) -> std::io::Result<Vec<(u64, u64, u64, u32)>> {
    let mut out = Vec::new();
    let mut start = 0u64;
    for _ in 0..MAX_CALLS {
        let mut m = Fiemap {
            start,
            length: u64::MAX - start,
            flags: FIEMAP_FLAG_SYNC,
            mapped: 0,
            count: BATCH as u32,
            reserved: 0,
            extents: [FiemapExtent::default(); BATCH],
        };
        // SAFETY: FS_IOC_FIEMAP reads the header and writes at most `count` (= BATCH) extents
        // into `m.extents`, which has room for exactly BATCH; `m` outlives the call.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FIEMAP as _, &mut m as *mut Fiemap) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = (m.mapped as usize).min(BATCH);
        if n == 0 {
            return Ok(out);
        }
        for e in &m.extents[..n] {
            out.push((e.logical, e.physical, e.length, e.flags));
        }
        let last = m.extents[n - 1];
        if last.flags & FIEMAP_EXTENT_LAST != 0 {
            return Ok(out);
        }
        start = last.logical + last.length;
    }
    Err(std::io::Error::other("file has too many extents to map"))
}

/// For each 4 KiB block of the new file (`new_size` bytes), whether it provably holds what the
/// old file's block at the same offset held: both holes, or both on the same physical bytes.
/// None when the file system cannot tell (no FIEMAP), so the caller hashes everything.
pub fn unchanged_blocks(
    old: BorrowedFd<'_>,
    old_size: u64,
    new: BorrowedFd<'_>,
    new_size: u64,
) -> Option<Vec<bool>> {
    let (o, n) = (extents(old).ok()?, extents(new).ok()?);
    let blocks = new_size.div_ceil(BLOCK) as usize;
    let common = old_size.min(new_size);
    let lookup = |ex: &[(u64, u64, u64, u32)], off: u64| -> Option<(u64, u64, u64, u32)> {
        let k = ex.partition_point(|e| e.0 <= off);
        (k > 0 && off < ex[k - 1].0 + ex[k - 1].2).then(|| ex[k - 1])
    };
    let mut out = vec![false; blocks];
    for (b, slot) in out.iter_mut().enumerate() {
        let off = b as u64 * BLOCK;
        let end = (off + BLOCK).min(new_size);
        // A block past the old end, or one the old file had only partly, changed.
        if end > common || (end == new_size && new_size != old_size) {
            continue;
        }
        *slot = match (lookup(&o, off), lookup(&n, off)) {
            (None, None) => true,
            (Some(a), Some(c)) => {
                let reliable = (a.3 | c.3) & UNRELIABLE == 0;
                let same = if (a.3 | c.3) & ENCODED != 0 {
                    a.0 == c.0 && a.1 == c.1 && a.2 == c.2
                } else {
                    a.1.wrapping_sub(a.0) == c.1.wrapping_sub(c.0)
                };
                // The whole block must lie in both extents.
                reliable && same && end <= a.0 + a.2 && end <= c.0 + c.2
            }
            _ => false,
        };
    }
    Some(out)
}

/// Hashes of the new file: old hashes where the block is unchanged, read and hashed elsewhere.
/// Returns the hashes and the bytes read.
pub fn hash_with_basis(
    fd: BorrowedFd<'_>,
    size: u64,
    old: &[u64],
    unchanged: &[bool],
) -> std::io::Result<(Vec<u64>, u64)> {
    let blocks = size.div_ceil(BLOCK) as usize;
    let mut out = Vec::with_capacity(blocks);
    let mut buf = vec![0u8; BLOCK as usize];
    let mut read = 0u64;
    // Ask for every block to be read up front: the kernel queues them all at once, and the
    // preads below find them cached instead of waiting on one random read after another.
    for b in (0..blocks).filter(|&b| !unchanged.get(b).copied().unwrap_or(false)) {
        let off = b as u64 * BLOCK;
        let _ = rustix::fs::fadvise(
            fd,
            off,
            std::num::NonZeroU64::new(BLOCK),
            rustix::fs::Advice::WillNeed,
        );
    }
    for b in 0..blocks {
        if unchanged.get(b).copied().unwrap_or(false) {
            if let Some(h) = old.get(b) {
                out.push(*h);
                continue;
            }
        }
        let off = b as u64 * BLOCK;
        let len = (size - off).min(BLOCK) as usize;
        super::manifest::pread_exact(fd, &mut buf[..len], off)?;
        read += len as u64;
        out.push(xxhash_rust::xxh3::xxh3_64(&buf[..len]));
    }
    Ok((out, read))
}
