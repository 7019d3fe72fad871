//! Typed payloads of the frames in `frame.rs`. Encoding is explicit field by field; decoding
//! bounds every length so that hostile input is an error, never an allocation on the peer's word.

use super::codec::{Dec, Enc};
use super::WireError;
use crate::tree::entry::{
    Entry, EntryKind, Meta, MAX_NAME_LEN, MAX_SYMLINK_TARGET, MAX_XATTRS_PER_ENTRY, MAX_XATTR_NAME,
    MAX_XATTR_VALUE, XATTR_PREFIX,
};
use crate::units::{EntryId, SessionId, WorkerIndex};

pub const MAGIC: u32 = u32::from_le_bytes(*b"MOVR");
/// Version 2 added recovery points, hints (renames, deltas) and the per-entry need list;
/// version 3 gave Error frames a code (`ErrorCode`), so a peer acts on the kind of failure
/// instead of searching its text; version 4 sealed frames (the number stayed 3 in code);
/// version 5 made the tree hash a Merkle tree, requires canonical order, and lets the entry
/// list travel as a delta against the receiver's recovery point (BaseOffer, BaseAnswer,
/// EntriesDelta).
pub const PROTOCOL_VERSION_MIN: u16 = 5;
pub const PROTOCOL_VERSION_MAX: u16 = 5;
pub const MAX_SOFTWARE_VERSION_LEN: usize = 64;

/// The software version this build announces in Hello and HelloAck.
pub fn software_version() -> &'static str {
    // Test builds only: a process can report another release, so two builds of different
    // versions meet in tests (the compatibility policy, `mover::compat`).
    #[cfg(debug_assertions)]
    {
        static OVERRIDE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let v = OVERRIDE.get_or_init(|| {
            std::env::var(TEST_VERSION_ENV)
                .ok()
                .filter(|v| !v.is_empty() && v.len() <= MAX_SOFTWARE_VERSION_LEN)
        });
        if let Some(v) = v {
            return v;
        }
    }
    env!("CARGO_PKG_VERSION")
}

/// Debug builds report this variable's value as their version, when it is set.
pub const TEST_VERSION_ENV: &str = "MOVER_TEST_SOFTWARE_VERSION";
const _: () = assert!(env!("CARGO_PKG_VERSION").len() <= MAX_SOFTWARE_VERSION_LEN);
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Most workers (and so connections) one session may open.
pub const MAX_WORKERS: u16 = 256;
/// Which write place takes worker `worker` of a session of `workers` workers spread over
/// `places` places on the target (0: the receiver holding the session; the ticket names the
/// others): contiguous runs, as even as the counts allow. Both sides compute it.
pub fn write_place(worker: usize, workers: usize, places: usize) -> usize {
    debug_assert!(worker < workers && places > 0);
    worker * places / workers.max(1)
}
/// Need lists (one byte per entry) are split into frames of at most this many bytes.
pub const NEED_CHUNK_BYTES: usize = 512 * 1024;
/// Most files one FileBatch frame may carry.
pub const MAX_BATCH_FILES: usize = 1024;

/// Receiver can set numeric owners (it runs as root); otherwise owners are not replicated and
/// both sides leave uid/gid out of the tree hash.
pub const CAP_OWNERS: u64 = 1 << 0;
pub const CAP_USER_XATTRS: u64 = 1 << 1;
/// The session is sealed (see seal.rs): the Hello carries the handle of its secret, every later
/// frame is sealed. A receiver echoes it when it accepts.
pub const CAP_SEALED: u64 = 1 << 2;
/// The sender understands `Need::Rest` and the Rest frames: a resumed job asks only for the
/// ranges of a file an interrupted session did not make durable. A receiver echoes it when it
/// will use them.
pub const CAP_RESUME_RANGES: u64 = 1 << 3;
/// The sender can send `Hint::Blocks`; in the receiver's answer: send them, this job repairs a
/// target that may hold other versions of large files than its recovery point (written while
/// it was writable, or a tree it had before), so it asks only for the blocks that differ.
pub const CAP_BLOCK_HASHES: u64 = 1 << 4;
/// The side offers RDMA for this connection (built with it, an active port carries the
/// connection's address, allowed). A receiver echoes it when it offers too; on worker
/// connections both then set a queue pair up over the TCP connection after the HelloAck and
/// move the rest of the connection's frames over it (`transport::select`).
pub const CAP_RDMA: u64 = 1 << 5;
pub const CAPS_KNOWN: u64 =
    CAP_OWNERS | CAP_USER_XATTRS | CAP_SEALED | CAP_RESUME_RANGES | CAP_BLOCK_HASHES | CAP_RDMA;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Control { workers: u16 },
    Worker { index: WorkerIndex },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
    pub software: String,
    pub capabilities: u64,
    pub session: SessionId,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloAck {
    pub version: u16,
    pub software: String,
    pub capabilities: u64,
    /// The receiver's recovery point (0: none yet); a sender's manifest applies only to it.
    pub recovery_point: u128,
    /// An interrupted job's journal is waiting to be resumed.
    pub job_pending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    pub tree_hash: u128,
    pub content_digest: u128,
    pub data_frames: u64,
    pub data_bytes: u64,
    /// The source's point in time this job replicated (ns since the epoch).
    pub source_time_ns: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub ok: bool,
    pub message: String,
    pub tree_hash: u128,
    /// The recovery point the receiver committed.
    pub recovery_point: u128,
}

/// What the sender knows about an entry from its manifest of the receiver's recovery point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// The item at `from` (a path in the recovery point) is this entry now: move, do not resend.
    Rename { entry: EntryId, from: Vec<u8> },
    /// This large file was `base_size` bytes with mtime `base_mtime` in the recovery point;
    /// only `ranges` (sorted, disjoint, inside the new size) differ.
    Delta {
        entry: EntryId,
        base_size: u64,
        base_mtime: (i64, u32),
        ranges: Vec<(u64, u64)>,
    },
    /// The block hashes (xxh3-64 of each 4 KiB block) of this large file's content from block
    /// `first` on: a repairing receiver compares its own file with them and asks only for the
    /// blocks that differ. A file's hashes come in order, in several hints when long.
    Blocks {
        entry: EntryId,
        first: u64,
        hashes: Vec<u64>,
    },
}

/// Most block hashes one Blocks hint carries (64 MiB of file), so it fits a Hints frame.
pub const MAX_BLOCK_HASHES_PER_HINT: usize = 16_384;

/// Longest rename source path a hint may carry.
pub const MAX_HINT_PATH: usize = 64 * 1024;
/// Most ranges one delta hint may carry (the sender merges nearby ranges to stay under it).
pub const MAX_DELTA_RANGES: usize = MAX_FILE_REGIONS;

/// Most data regions (runs between holes) a sender sends of one file; a file with more is
/// sent whole, holes included.
pub const MAX_FILE_REGIONS: usize = 65536;

/// Most Data frames a large file of `bytes` announced bytes can arrive in: the sender cuts each
/// region (at most MAX_FILE_REGIONS of them, or delta ranges) into chunks of at most
/// DATA_CHUNK that also end on extent boundaries (one extra cut per region at most), and every
/// frame carries at least one byte.
pub fn max_data_frames(bytes: u64) -> u64 {
    let cuts = bytes.div_ceil(super::frame::DATA_CHUNK as u64) + 2 * MAX_FILE_REGIONS as u64;
    cuts.min(bytes)
}

/// The receiver's answer per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Need {
    Nothing = 0,
    /// Send the whole file (it is new or replaced).
    Full = 1,
    /// Send only the delta hint's ranges; the receiver writes them in place.
    Delta = 2,
    /// Send only the ranges the Rest frames list (whole, holes as zeros): an interrupted
    /// session of this job made the rest of this version of the file durable.
    Rest = 3,
}

/// Rest frames carry at most this many bytes of records (one record, MAX_DELTA_RANGES ranges
/// at most, always fits a frame).
pub const REST_FRAME_BYTES: usize = 512 * 1024;
const REST_RECORD_HEADER: usize = 8;
const _: () = assert!(REST_RECORD_HEADER + 16 * MAX_DELTA_RANGES < super::frame::MAX_FRAME_PAYLOAD);

/// Splits `(entry, ranges)` records into Rest payloads: `[last u8] ([entry u32][n u32]
/// ([offset u64][len u64]){n})*`. Always at least one payload (the last), possibly empty.
pub fn encode_rest(records: &[(EntryId, Vec<(u64, u64)>)]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut e = Enc::new();
    e.u8(0);
    for (entry, ranges) in records {
        let len = REST_RECORD_HEADER + 16 * ranges.len();
        if e.buf.len() > 1 && e.buf.len() + len > REST_FRAME_BYTES {
            out.push(std::mem::take(&mut e.buf));
            e.u8(0);
        }
        e.u32(entry.0).u32(ranges.len() as u32);
        for &(o, l) in ranges {
            e.u64(o).u64(l);
        }
    }
    e.buf[0] = 1;
    out.push(e.buf);
    out
}

/// One Rest payload: (last, records). Ranges are checked sorted, disjoint and non-empty; the
/// caller checks them against the files' sizes.
#[allow(clippy::type_complexity)]
pub fn decode_rest(p: &[u8]) -> Result<(bool, Vec<(EntryId, Vec<(u64, u64)>)>), WireError> {
    let mut d = Dec::new(p);
    let last = match d.u8()? {
        0 => false,
        1 => true,
        _ => return Err(WireError::BadField { field: "rest flag" }),
    };
    let mut out = Vec::new();
    while d.remaining() > 0 {
        let entry = EntryId(d.u32()?);
        let n = d.u32()? as usize;
        if n > MAX_DELTA_RANGES || n * 16 > d.remaining() {
            return Err(WireError::BadField {
                field: "rest range count",
            });
        }
        let mut ranges = Vec::with_capacity(n);
        let mut end = 0u64;
        for _ in 0..n {
            let (o, l) = (d.u64()?, d.u64()?);
            let e = o.checked_add(l).ok_or(WireError::BadField {
                field: "rest range",
            })?;
            if l == 0 || (!ranges.is_empty() && o < end) {
                return Err(WireError::BadField {
                    field: "rest range",
                });
            }
            end = e;
            ranges.push((o, l));
        }
        out.push((entry, ranges));
    }
    Ok((last, out))
}

fn string(d: &mut Dec<'_>, limit: usize, what: &'static str) -> Result<String, WireError> {
    let b = d.bytes(limit, what)?;
    String::from_utf8(b.to_vec()).map_err(|_| WireError::NotUtf8 { field: what })
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(MAGIC).u16(self.min_version).u16(self.max_version);
        e.bytes(self.software.as_bytes())
            .u64(self.capabilities)
            .u128(self.session.0);
        match self.role {
            Role::Control { workers } => e.u8(0).u16(workers),
            Role::Worker { index } => e.u8(1).u16(index.0),
        };
        e.buf
    }
    pub fn decode(p: &[u8]) -> Result<Hello, WireError> {
        let mut d = Dec::new(p);
        let magic = d.u32()?;
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let min_version = d.u16()?;
        let max_version = d.u16()?;
        let software = string(&mut d, MAX_SOFTWARE_VERSION_LEN, "software version")?;
        let capabilities = d.u64()?;
        let session = SessionId(d.u128()?);
        let role = match (d.u8()?, d.u16()?) {
            (0, w) if (1..=MAX_WORKERS).contains(&w) => Role::Control { workers: w },
            (1, i) if i < MAX_WORKERS => Role::Worker {
                index: WorkerIndex(i),
            },
            (r, n) => return Err(WireError::BadRole { role: r, n }),
        };
        d.finish()?;
        Ok(Hello {
            min_version,
            max_version,
            software,
            capabilities,
            session,
            role,
        })
    }
}

impl HelloAck {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(MAGIC)
            .u16(self.version)
            .bytes(self.software.as_bytes())
            .u64(self.capabilities);
        e.u128(self.recovery_point).u8(self.job_pending as u8);
        e.buf
    }
    pub fn decode(p: &[u8]) -> Result<HelloAck, WireError> {
        let mut d = Dec::new(p);
        let magic = d.u32()?;
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let version = d.u16()?;
        let software = string(&mut d, MAX_SOFTWARE_VERSION_LEN, "software version")?;
        let capabilities = d.u64()?;
        let recovery_point = d.u128()?;
        let job_pending = d.u8()? != 0;
        d.finish()?;
        Ok(HelloAck {
            version,
            software,
            capabilities,
            recovery_point,
            job_pending,
        })
    }
}

/// Picks the highest version both sides speak, or says why there is none.
pub fn negotiate_version(peer_min: u16, peer_max: u16) -> Result<u16, WireError> {
    let lo = peer_min.max(PROTOCOL_VERSION_MIN);
    let hi = peer_max.min(PROTOCOL_VERSION_MAX);
    if peer_min > peer_max || lo > hi {
        return Err(WireError::VersionMismatch {
            peer_min,
            peer_max,
            ours_min: PROTOCOL_VERSION_MIN,
            ours_max: PROTOCOL_VERSION_MAX,
        });
    }
    Ok(hi)
}

pub fn encode_message(msg: &str) -> Vec<u8> {
    let mut e = Enc::new();
    e.bytes(truncated(msg).as_bytes());
    e.buf
}

pub fn decode_message(p: &[u8]) -> Result<String, WireError> {
    let mut d = Dec::new(p);
    let s = d.bytes(MAX_MESSAGE_LEN, "message")?;
    d.finish()?;
    Ok(String::from_utf8_lossy(s).into_owned())
}

/// What kind of failure an Error frame reports. Unknown codes from a newer peer read as
/// `Other`, which every side treats as a plain failure.
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Other = 0,
    /// The destination file system is full; the receiver reverted the job, and the same job
    /// would fill it again, so the sender does not retry.
    DiskFull = 1,
    /// Another session is writing to the root, or the receiver is stopping: try again later.
    Busy = 2,
    /// The session or worker is not admitted (unknown session id, ticket not issued here).
    Refused = 3,
    /// No protocol version in common.
    Version = 4,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::DiskFull,
            2 => ErrorCode::Busy,
            3 => ErrorCode::Refused,
            4 => ErrorCode::Version,
            _ => ErrorCode::Other,
        }
    }
}

/// Error payload: code u16, message string (<= MAX_MESSAGE_LEN, cut at a character boundary).
pub fn encode_error(code: ErrorCode, msg: &str) -> Vec<u8> {
    let mut e = Enc::new();
    e.u16(code as u16);
    e.bytes(truncated(msg).as_bytes());
    e.buf
}

pub fn decode_error(p: &[u8]) -> Result<(ErrorCode, String), WireError> {
    let mut d = Dec::new(p);
    let code = ErrorCode::from_u16(d.u16()?);
    let s = d.bytes(MAX_MESSAGE_LEN, "message")?;
    d.finish()?;
    Ok((code, String::from_utf8_lossy(s).into_owned()))
}

/// `msg` cut to at most MAX_MESSAGE_LEN bytes without splitting a character.
fn truncated(msg: &str) -> &str {
    if msg.len() <= MAX_MESSAGE_LEN {
        return msg;
    }
    let mut end = MAX_MESSAGE_LEN;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

/// Appends one entry to an Entries payload.
pub fn encode_entry(e: &mut Enc, entry: &Entry) {
    e.u32(entry.parent.0)
        .bytes(&entry.name)
        .u8(entry.kind.tag());
    let m = &entry.meta;
    e.u32(m.mode)
        .u32(m.uid)
        .u32(m.gid)
        .i64(m.mtime_sec)
        .u32(m.mtime_nsec);
    match &entry.kind {
        EntryKind::Dir => {}
        EntryKind::File { size } => {
            e.u64(*size);
        }
        EntryKind::Symlink { target } => {
            e.bytes(target);
        }
        EntryKind::HardLink { target } => {
            e.u32(target.0);
        }
        EntryKind::Special { file_type, rdev } => {
            e.u32(*file_type).u64(*rdev);
        }
    }
    e.u16(entry.xattrs.len() as u16);
    for (k, v) in &entry.xattrs {
        e.bytes(k).bytes(v);
    }
}

/// Decodes all entries of an Entries payload. Names are checked for structure by the receiver's
/// `StructureChecker`; here only lengths and field values are bounded.
pub fn decode_entries(p: &[u8]) -> Result<Vec<Entry>, WireError> {
    let mut d = Dec::new(p);
    let mut out = Vec::new();
    while d.remaining() > 0 {
        out.push(decode_entry(&mut d)?);
    }
    Ok(out)
}

/// The smallest encoded entry (a directory with a one-byte name and nothing else is 36).
pub const MIN_ENTRY_LEN: usize = 35;

/// Encoded size of one entry (what `encode_entry` appends), without encoding it.
pub fn entry_len(e: &Entry) -> usize {
    let kind = match &e.kind {
        EntryKind::Dir => 0,
        EntryKind::File { .. } => 8,
        EntryKind::Symlink { target } => 4 + target.len(),
        EntryKind::HardLink { .. } => 4,
        EntryKind::Special { .. } => 12,
    };
    let xattrs: usize = e.xattrs.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    4 + 4 + e.name.len() + 1 + 24 + kind + 2 + xattrs
}

/// Decodes one entry (as `encode_entry` wrote it) from `d`.
pub fn decode_entry(d: &mut Dec<'_>) -> Result<Entry, WireError> {
    let parent = EntryId(d.u32()?);
    let name = d.bytes(MAX_NAME_LEN, "file name")?.to_vec();
    let tag = d.u8()?;
    let meta = Meta {
        mode: d.u32()?,
        uid: d.u32()?,
        gid: d.u32()?,
        mtime_sec: d.i64()?,
        mtime_nsec: d.u32()?,
    };
    if meta.mode & !0o7777 != 0 || meta.mtime_nsec >= 1_000_000_000 {
        return Err(WireError::BadField {
            field: "mode or mtime",
        });
    }
    // -1 means "leave unchanged" to chown(2); it is never a real owner.
    if meta.uid == u32::MAX || meta.gid == u32::MAX {
        return Err(WireError::BadField {
            field: "uid or gid",
        });
    }
    let kind = match tag {
        1 => EntryKind::Dir,
        2 => EntryKind::File { size: d.u64()? },
        3 => EntryKind::Symlink {
            target: d.bytes(MAX_SYMLINK_TARGET, "symlink target")?.to_vec(),
        },
        4 => EntryKind::HardLink {
            target: EntryId(d.u32()?),
        },
        5 => {
            let file_type = d.u32()?;
            let ok = [libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFCHR, libc::S_IFBLK];
            if !ok.contains(&file_type) {
                return Err(WireError::BadField {
                    field: "special file type",
                });
            }
            EntryKind::Special {
                file_type,
                rdev: d.u64()?,
            }
        }
        other => return Err(WireError::BadEntryKind(other)),
    };
    if let EntryKind::Symlink { target } = &kind {
        if target.is_empty() || target.contains(&0) {
            return Err(WireError::BadField {
                field: "symlink target",
            });
        }
    }
    let n = d.u16()? as usize;
    if n > MAX_XATTRS_PER_ENTRY {
        return Err(WireError::FieldTooLong {
            field: "xattr count",
            len: n,
            limit: MAX_XATTRS_PER_ENTRY,
        });
    }
    let mut xattrs = Vec::with_capacity(n);
    for _ in 0..n {
        let k = d.bytes(MAX_XATTR_NAME, "xattr name")?.to_vec();
        let v = d.bytes(MAX_XATTR_VALUE, "xattr value")?.to_vec();
        if !k.starts_with(XATTR_PREFIX) || k.len() == XATTR_PREFIX.len() || k.contains(&0) {
            return Err(WireError::BadField {
                field: "xattr name",
            });
        }
        xattrs.push((k, v));
    }
    Ok(Entry {
        parent,
        name,
        kind,
        meta,
        xattrs,
    })
}

/// The sender holds the entry list of the receiver's recovery point `recovery_point` (its
/// digest and length given) and offers to send the new list as a delta against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseOffer {
    pub recovery_point: u128,
    /// `list_digest` of the base list: its tree hash with owners, as sent.
    pub list_digest: u128,
    pub entries: u64,
}

/// The receiver's answer to a BaseOffer: it names its current recovery point and the digest of
/// the list it keeps for it (0: none kept), and whether the delta may come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseAnswer {
    pub accepted: bool,
    pub recovery_point: u128,
    pub list_digest: u128,
}

impl BaseOffer {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u128(self.recovery_point)
            .u128(self.list_digest)
            .u64(self.entries);
        e.buf
    }
    pub fn decode(p: &[u8]) -> Result<BaseOffer, WireError> {
        let mut d = Dec::new(p);
        let o = BaseOffer {
            recovery_point: d.u128()?,
            list_digest: d.u128()?,
            entries: d.u64()?,
        };
        d.finish()?;
        Ok(o)
    }
}

impl BaseAnswer {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(self.accepted as u8)
            .u128(self.recovery_point)
            .u128(self.list_digest);
        e.buf
    }
    pub fn decode(p: &[u8]) -> Result<BaseAnswer, WireError> {
        let mut d = Dec::new(p);
        let accepted = match d.u8()? {
            0 => false,
            1 => true,
            _ => {
                return Err(WireError::BadField {
                    field: "base answer",
                })
            }
        };
        let a = BaseAnswer {
            accepted,
            recovery_point: d.u128()?,
            list_digest: d.u128()?,
        };
        d.finish()?;
        Ok(a)
    }
}

/// One step of a delta entry list (`EntriesDelta` frames), applied to the base list in order:
/// keep its next entries (renumbered), skip them (gone), put a new entry, or replace the next
/// base entry with a changed one (its children may still be kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaOp {
    Keep(u32),
    Skip(u32),
    Put(Entry),
    Replace(Entry),
}

/// Appends one op to an EntriesDelta payload.
pub fn encode_delta_op(e: &mut Enc, op: &DeltaOp) {
    match op {
        DeltaOp::Keep(n) => {
            e.u8(1).u32(*n);
        }
        DeltaOp::Skip(n) => {
            e.u8(2).u32(*n);
        }
        DeltaOp::Put(x) => {
            e.u8(3);
            encode_entry(e, x);
        }
        DeltaOp::Replace(x) => {
            e.u8(4);
            encode_entry(e, x);
        }
    }
}

/// Encoded size of one op.
pub fn delta_op_len(op: &DeltaOp) -> usize {
    match op {
        DeltaOp::Keep(_) | DeltaOp::Skip(_) => 5,
        DeltaOp::Put(x) | DeltaOp::Replace(x) => 1 + entry_len(x),
    }
}

/// Decodes an EntriesDelta payload; counts and entries are checked as the base is applied.
pub fn decode_delta(p: &[u8]) -> Result<Vec<DeltaOp>, WireError> {
    let mut d = Dec::new(p);
    let mut out = Vec::new();
    while d.remaining() > 0 {
        out.push(match d.u8()? {
            1 => DeltaOp::Keep(d.u32()?),
            2 => DeltaOp::Skip(d.u32()?),
            3 => DeltaOp::Put(decode_entry(&mut d)?),
            4 => DeltaOp::Replace(decode_entry(&mut d)?),
            _ => return Err(WireError::BadField { field: "delta op" }),
        });
    }
    Ok(out)
}

/// One chunk of the need list: byte i of `needs` is entry `first + i`.
pub fn encode_need(first: u32, last_chunk: bool, needs: &[Need]) -> Vec<u8> {
    let mut e = Enc::new();
    let bytes: Vec<u8> = needs.iter().map(|n| *n as u8).collect();
    e.u32(first).u8(last_chunk as u8).bytes(&bytes);
    e.buf
}

pub fn decode_need(p: &[u8]) -> Result<(u32, bool, Vec<Need>), WireError> {
    let mut d = Dec::new(p);
    let first = d.u32()?;
    let last = d.u8()? != 0;
    let raw = d.bytes(NEED_CHUNK_BYTES, "need list")?;
    d.finish()?;
    let needs = raw
        .iter()
        .map(|b| match b {
            0 => Ok(Need::Nothing),
            1 => Ok(Need::Full),
            2 => Ok(Need::Delta),
            3 => Ok(Need::Rest),
            _ => Err(WireError::BadField {
                field: "need list value",
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((first, last, needs))
}

/// Most records one NeedSparse frame carries (5 bytes each).
pub const MAX_NEED_SPARSE: usize = 65536;

/// NeedSparse payload: `last u8, count u32`, then `count` x (`entry u32, need u8`), entries
/// increasing: the entries that need data (need 1 or 2), every other one needs nothing. The
/// receiver sends it instead of NeedList when it is the shorter (a job that changed little).
pub fn encode_need_sparse(last: bool, recs: &[(EntryId, Need)]) -> Vec<u8> {
    assert!(
        recs.len() <= MAX_NEED_SPARSE,
        "sparse need frame of {} records",
        recs.len()
    );
    let mut e = Enc::new();
    e.u8(last as u8).u32(recs.len() as u32);
    for (id, n) in recs {
        e.u32(id.0).u8(*n as u8);
    }
    e.buf
}

pub fn decode_need_sparse(p: &[u8]) -> Result<(bool, Vec<(EntryId, Need)>), WireError> {
    let mut d = Dec::new(p);
    let last = d.u8()? != 0;
    let n = d.u32()? as usize;
    if n > MAX_NEED_SPARSE {
        return Err(WireError::FieldTooLong {
            field: "sparse need records",
            len: n,
            limit: MAX_NEED_SPARSE,
        });
    }
    let mut out = Vec::with_capacity(n.min(d.remaining() / 5));
    for _ in 0..n {
        let e = EntryId(d.u32()?);
        let need = match d.u8()? {
            1 => Need::Full,
            2 => Need::Delta,
            3 => Need::Rest,
            _ => {
                return Err(WireError::BadField {
                    field: "sparse need value",
                })
            }
        };
        out.push((e, need));
    }
    d.finish()?;
    Ok((last, out))
}

/// Appends one hint to a Hints payload.
pub fn encode_hint(e: &mut Enc, h: &Hint) {
    match h {
        Hint::Rename { entry, from } => {
            e.u8(1).u32(entry.0).bytes(from);
        }
        Hint::Delta {
            entry,
            base_size,
            base_mtime,
            ranges,
        } => {
            assert!(
                ranges.len() <= MAX_DELTA_RANGES,
                "delta hint with {} ranges",
                ranges.len()
            );
            e.u8(2)
                .u32(entry.0)
                .u64(*base_size)
                .i64(base_mtime.0)
                .u32(base_mtime.1)
                .u32(ranges.len() as u32);
            for (o, l) in ranges {
                e.u64(*o).u64(*l);
            }
        }
        Hint::Blocks {
            entry,
            first,
            hashes,
        } => {
            assert!(
                hashes.len() <= MAX_BLOCK_HASHES_PER_HINT,
                "blocks hint with {} hashes",
                hashes.len()
            );
            e.u8(3).u32(entry.0).u64(*first).u32(hashes.len() as u32);
            for h in hashes {
                e.u64(*h);
            }
        }
    }
}

/// Encoded size of a hint, to cut Hints frames under MAX_FRAME_PAYLOAD.
pub fn hint_len(h: &Hint) -> usize {
    match h {
        Hint::Rename { from, .. } => 9 + from.len(),
        Hint::Delta { ranges, .. } => 29 + 16 * ranges.len(),
        Hint::Blocks { hashes, .. } => 17 + 8 * hashes.len(),
    }
}

/// Decodes a Hints payload. Paths are validated by the receiver before use; here lengths,
/// range order and bounds are checked.
pub fn decode_hints(p: &[u8]) -> Result<Vec<Hint>, WireError> {
    let mut d = Dec::new(p);
    let mut out = Vec::new();
    while d.remaining() > 0 {
        match d.u8()? {
            1 => {
                let entry = EntryId(d.u32()?);
                let from = d.bytes(MAX_HINT_PATH, "rename source")?.to_vec();
                out.push(Hint::Rename { entry, from });
            }
            2 => {
                let entry = EntryId(d.u32()?);
                let base_size = d.u64()?;
                let base_mtime = (d.i64()?, d.u32()?);
                let n = d.u32()? as usize;
                if n > MAX_DELTA_RANGES {
                    return Err(WireError::FieldTooLong {
                        field: "delta ranges",
                        len: n,
                        limit: MAX_DELTA_RANGES,
                    });
                }
                let mut ranges = Vec::with_capacity(n.min(d.remaining() / 16));
                let mut end = 0u64;
                for _ in 0..n {
                    let (o, l) = (d.u64()?, d.u64()?);
                    if l == 0 || o < end || o.checked_add(l).is_none() {
                        return Err(WireError::BadField {
                            field: "delta range",
                        });
                    }
                    end = o + l;
                    ranges.push((o, l));
                }
                out.push(Hint::Delta {
                    entry,
                    base_size,
                    base_mtime,
                    ranges,
                });
            }
            3 => {
                let entry = EntryId(d.u32()?);
                let first = d.u64()?;
                let n = d.u32()? as usize;
                if n == 0 || n > MAX_BLOCK_HASHES_PER_HINT {
                    return Err(WireError::BadField {
                        field: "block hash count",
                    });
                }
                let mut hashes = Vec::with_capacity(n.min(d.remaining() / 8));
                for _ in 0..n {
                    hashes.push(d.u64()?);
                }
                out.push(Hint::Blocks {
                    entry,
                    first,
                    hashes,
                });
            }
            t => {
                return Err(WireError::BadField {
                    field: if t == 0 { "hint type 0" } else { "hint type" },
                })
            }
        }
    }
    Ok(out)
}

/// Files up to this size travel whole inside FileBatch frames; larger files are created (sparse,
/// at full size) by the receiver before data flows and filled by Data frames.
pub const INLINE_MAX: u64 = 64 * 1024;

/// Files this small travel whole inside FileBatch frames and are created, written and finished
/// by one receiver worker; larger ones travel as Data frames of extents. Both sides decide by
/// this one rule.
pub fn is_inline(size: u64) -> bool {
    size <= INLINE_MAX
}

/// Prefix of a Data payload: `entry u32, offset u64`, then the file bytes.
pub const DATA_PREFIX_LEN: usize = 12;

pub fn decode_data_prefix(p: &[u8]) -> Result<(EntryId, u64, &[u8]), WireError> {
    let mut d = Dec::new(p);
    let entry = EntryId(d.u32()?);
    let offset = d.u64()?;
    Ok((entry, offset, &p[DATA_PREFIX_LEN..]))
}

/// FileBatch payload: `count u32`, then `count` records of `entry u32, len u32, bytes`.
pub const BATCH_PREFIX_LEN: usize = 4;
pub const BATCH_RECORD_HEADER: usize = 8;

/// Splits a FileBatch payload into (entry, data) records, each `data` a sub-slice of `p`.
pub fn decode_batch(p: &[u8]) -> Result<Vec<(EntryId, std::ops::Range<usize>)>, WireError> {
    let mut d = Dec::new(p);
    let count = d.u32()? as usize;
    // An empty batch carries nothing but would still count as a frame (and a checksum) at the
    // receiver.
    if count == 0 {
        return Err(WireError::BadField {
            field: "batch file count (0)",
        });
    }
    if count > MAX_BATCH_FILES {
        return Err(WireError::FieldTooLong {
            field: "batch file count",
            len: count,
            limit: MAX_BATCH_FILES,
        });
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let entry = EntryId(d.u32()?);
        let len = d.u32()? as usize;
        let start = p.len() - d.remaining();
        d.take(len)?;
        out.push((entry, start..start + len));
    }
    d.finish()?;
    Ok(out)
}

pub fn encode_worker_done(frames: u64, bytes: u64) -> Vec<u8> {
    let mut e = Enc::new();
    e.u64(frames).u64(bytes);
    e.buf
}

pub fn decode_worker_done(p: &[u8]) -> Result<(u64, u64), WireError> {
    let mut d = Dec::new(p);
    let r = (d.u64()?, d.u64()?);
    d.finish()?;
    Ok(r)
}

impl Commit {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u128(self.tree_hash)
            .u128(self.content_digest)
            .u64(self.data_frames)
            .u64(self.data_bytes)
            .i64(self.source_time_ns);
        e.buf
    }
    pub fn decode(p: &[u8]) -> Result<Commit, WireError> {
        let mut d = Dec::new(p);
        let c = Commit {
            tree_hash: d.u128()?,
            content_digest: d.u128()?,
            data_frames: d.u64()?,
            data_bytes: d.u64()?,
            source_time_ns: d.i64()?,
        };
        d.finish()?;
        Ok(c)
    }
}

impl Verified {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(self.ok as u8)
            .u128(self.tree_hash)
            .u128(self.recovery_point);
        let b = self.message.as_bytes();
        e.bytes(&b[..b.len().min(MAX_MESSAGE_LEN)]);
        e.buf
    }
    pub fn decode(p: &[u8]) -> Result<Verified, WireError> {
        let mut d = Dec::new(p);
        let ok = d.u8()? == 1;
        let tree_hash = d.u128()?;
        let recovery_point = d.u128()?;
        let message = string(&mut d, MAX_MESSAGE_LEN, "message")?;
        d.finish()?;
        Ok(Verified {
            ok,
            message,
            tree_hash,
            recovery_point,
        })
    }
}

/// Most records one Expect frame carries (12 bytes each, well under MAX_FRAME_PAYLOAD).
pub const MAX_EXPECT_RECORDS: usize = 65536;

/// Expect payload: `last u8, count u32`, then `count` x (`entry u32, bytes u64`): how many data
/// bytes each large file of the need list will receive, so the receiver can finish a file (set
/// its metadata) the moment its last byte lands, and a resumed job skips finished files.
pub fn encode_expect(last: bool, recs: &[(EntryId, u64)]) -> Vec<u8> {
    assert!(
        recs.len() <= MAX_EXPECT_RECORDS,
        "expect frame of {} records",
        recs.len()
    );
    let mut e = Enc::new();
    e.u8(last as u8).u32(recs.len() as u32);
    for (id, b) in recs {
        e.u32(id.0).u64(*b);
    }
    e.buf
}

pub fn decode_expect(p: &[u8]) -> Result<(bool, Vec<(EntryId, u64)>), WireError> {
    let mut d = Dec::new(p);
    let last = d.u8()? != 0;
    let n = d.u32()? as usize;
    if n > MAX_EXPECT_RECORDS {
        return Err(WireError::FieldTooLong {
            field: "expect records",
            len: n,
            limit: MAX_EXPECT_RECORDS,
        });
    }
    let mut out = Vec::with_capacity(n.min(d.remaining() / 12));
    for _ in 0..n {
        out.push((EntryId(d.u32()?), d.u64()?));
    }
    d.finish()?;
    Ok((last, out))
}
