//! Sharding, pure: which worker sends which bytes. Small files are packed many to a frame;
//! large files are cut into extents, and the sequence of batches and extents is split into
//! contiguous spans of equal cost, one per worker, so even one big file keeps every worker busy
//! (a worker that ends its span early takes over part of another's: `pool.rs`). Deterministic
//! for a given input, so tests can check coverage exactly.

use crate::units::EntryId;
use crate::wire::frame::DATA_CHUNK;
use crate::wire::message::{is_inline, BATCH_PREFIX_LEN, BATCH_RECORD_HEADER};

/// Unit of assignment to a worker for large files.
pub const EXTENT_SIZE: u64 = 4 * 1024 * 1024;
/// Most files per FileBatch frame the sender builds (well under the protocol's MAX_BATCH_FILES;
/// bounds io_uring reads in flight per buffer).
pub const SEND_BATCH_MAX_FILES: usize = 128;
// Limits that must agree (checked at compile time):
// - a batch the sender builds is one the receiver accepts;
const _: () = assert!(SEND_BATCH_MAX_FILES <= crate::wire::message::MAX_BATCH_FILES);
// - extents are whole chunks, so chunk offsets stay aligned across extents;
const _: () = assert!(EXTENT_SIZE.is_multiple_of(DATA_CHUNK as u64));
// - a full chunk, or a full batch, plus its prefix fits in one frame.
const _: () = assert!(
    DATA_CHUNK + crate::wire::message::DATA_PREFIX_LEN <= crate::wire::frame::MAX_FRAME_PAYLOAD
);
const _: () = assert!(BATCH_CAPACITY + BATCH_PREFIX_LEN <= crate::wire::frame::MAX_FRAME_PAYLOAD);

/// Per-file cost in the load balance, in byte-equivalents (open + create + metadata).
const PER_FILE_COST: u64 = 32 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileToSend {
    pub entry: EntryId,
    pub size: u64,
    /// Data regions (offset, len), sorted and disjoint; holes between them are not sent.
    /// Ignored for inline files, which travel whole.
    pub regions: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Unit {
    /// `len` <= DATA_CHUNK bytes of one large file, one Data frame; `last` is the file's
    /// final chunk (the pool that holds it counts the file as sent once all of its chunks
    /// there are sent: `UnitPool::chunk_sent`).
    Chunk {
        entry: EntryId,
        offset: u64,
        len: u32,
        last: bool,
    },
    /// Whole small files, one FileBatch frame.
    Batch { files: Vec<(EntryId, u32)> },
}

impl Unit {
    /// Files this unit completes in the plan: a batch its files, a chunk its file if it is
    /// the final one (what is sent first may differ: `UnitPool::chunk_sent`).
    pub fn files_done(&self) -> u64 {
        match self {
            Unit::Chunk { last, .. } => *last as u64,
            Unit::Batch { files } => files.len() as u64,
        }
    }
    pub fn data_bytes(&self) -> u64 {
        match self {
            Unit::Chunk { len, .. } => *len as u64,
            Unit::Batch { files } => files.iter().map(|f| f.1 as u64).sum(),
        }
    }
}

/// Bytes of batch payload available for file data and record headers.
const BATCH_CAPACITY: usize = DATA_CHUNK;

/// Splits the work into per-worker unit lists.
pub fn plan(files: &[FileToSend], workers: usize) -> Vec<Vec<Unit>> {
    assert!(workers > 0, "plan needs at least one worker");
    // Items are groups of units assigned together: one batch, or one extent's chunks.
    let mut items: Vec<(u64, Vec<Unit>)> = Vec::new();
    let mut batch: Vec<(EntryId, u32)> = Vec::new();
    let mut batch_bytes = BATCH_PREFIX_LEN;
    let flush =
        |batch: &mut Vec<(EntryId, u32)>, bytes: &mut usize, items: &mut Vec<(u64, Vec<Unit>)>| {
            if !batch.is_empty() {
                let b = Unit::Batch {
                    files: std::mem::take(batch),
                };
                let cost = b.data_bytes() + PER_FILE_COST * (b_len(&b) as u64);
                items.push((cost, vec![b]));
            }
            *bytes = BATCH_PREFIX_LEN;
        };
    for f in files {
        if is_inline(f.size) {
            let need = BATCH_RECORD_HEADER + f.size as usize;
            if batch.len() == SEND_BATCH_MAX_FILES || batch_bytes + need > BATCH_CAPACITY {
                flush(&mut batch, &mut batch_bytes, &mut items);
            }
            batch.push((f.entry, f.size as u32));
            batch_bytes += need;
            continue;
        }
        let regions = f.regions.len();
        for (ri, &(roff, rlen)) in f.regions.iter().enumerate() {
            let end = roff + rlen;
            let mut off = roff;
            while off < end {
                // Extents end on EXTENT_SIZE boundaries so chunk offsets stay aligned.
                let ext_end = ((off / EXTENT_SIZE) + 1) * EXTENT_SIZE;
                let ext_end = ext_end.min(end);
                let mut units = Vec::new();
                let mut c = off;
                while c < ext_end {
                    let len = (ext_end - c).min(DATA_CHUNK as u64);
                    let last = ri + 1 == regions && c + len == end;
                    units.push(Unit::Chunk {
                        entry: f.entry,
                        offset: c,
                        len: len as u32,
                        last,
                    });
                    c += len;
                }
                items.push((ext_end - off + PER_FILE_COST, units));
                off = ext_end;
            }
        }
    }
    flush(&mut batch, &mut batch_bytes, &mut items);

    // Contiguous spans, balanced by cost: a worker gets whole files (or one long run of a big
    // file) so the receiver's workers seldom write the same inode at once and reads stay
    // sequential per worker; consecutive small files share directories.
    let total: u64 = items.iter().map(|(c, _)| c).sum();
    let mut out: Vec<Vec<Unit>> = vec![Vec::new(); workers];
    let mut acc = 0u64;
    for (cost, units) in items {
        // The worker whose share of the total this item's midpoint falls into.
        let mid = acc + cost / 2;
        let w = if total == 0 {
            0
        } else {
            ((mid as u128 * workers as u128) / total as u128) as usize
        };
        out[w.min(workers - 1)].extend(units);
        acc += cost;
    }
    out
}

fn b_len(u: &Unit) -> usize {
    match u {
        Unit::Batch { files } => files.len(),
        Unit::Chunk { .. } => 1,
    }
}

/// Data regions of an open file via SEEK_DATA/SEEK_HOLE, so holes are never read or sent.
/// Falls back to the whole file if the file system does not report holes or if there are more
/// than `MAX_FILE_REGIONS` regions (the receiver's frame budget counts on that bound).
pub fn data_regions(
    fd: std::os::fd::BorrowedFd<'_>,
    size: u64,
) -> std::io::Result<Vec<(u64, u64)>> {
    use crate::wire::message::MAX_FILE_REGIONS;
    use rustix::fs::{seek, SeekFrom};
    let mut out = Vec::new();
    let mut off = 0u64;
    while off < size {
        let data = match seek(fd, SeekFrom::Data(off)) {
            Ok(d) => d,
            Err(e) if e == rustix::io::Errno::NXIO => break,
            Err(e) if e == rustix::io::Errno::INVAL => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = seek(fd, SeekFrom::Hole(data))?.min(size);
        if hole <= data {
            return Ok(vec![(0, size)]);
        }
        out.push((data, hole - data));
        if out.len() > MAX_FILE_REGIONS {
            return Ok(vec![(0, size)]);
        }
        off = hole;
    }
    Ok(out)
}
