//! One sender worker: pinned to a CPU, owns an io_uring, a slab of registered buffers and one
//! TCP connection. It reads its units (planned up front; once its own span is done, taken over
//! from a slower worker's, `pool`) into buffers with several reads in flight, checksums each
//! frame and streams it with io_uring sends.
//!
//! Buffer layout for a Data frame (data aligned for O_DIRECT):
//! `[.. pad ..][header 16][entry 4][offset 8][data at HEADROOM ..]`
//! For a FileBatch frame: `[header 16][count 4]([entry 4][len 4][data])*`.

use super::plan::Unit;
use super::pool::UnitPool;
use crate::beneath;
use crate::engine::cache::Residency;
use crate::engine::ring::{tag, Dir, OpFd, SlabPages, Transfer, Uring, BUF_ALIGN, STALL_TIMEOUT};
use crate::engine::FrameStats;
use crate::error::{show, Error, IoContext, Result};
use crate::transport::Connection;
use crate::tree::walk::Stamp;
use crate::units::EntryId;
use crate::wire::frame::{FrameHeader, FrameKind, DATA_CHUNK, FRAME_HEADER_LEN};
use crate::wire::io::Link;
use crate::wire::message::{BATCH_PREFIX_LEN, BATCH_RECORD_HEADER, DATA_PREFIX_LEN};
use crate::wire::seal::{Sealer, TAG_LEN};
use rustix::fs::{Mode, OFlags};
use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Space in front of the data so the frame header and Data prefix fit while the data itself
/// starts on an O_DIRECT-aligned address.
const HEADROOM: usize = BUF_ALIGN;
/// Room after the data for a sealed frame's tag, keeping buffers whole blocks.
const TAILROOM: usize = BUF_ALIGN;
pub const BUF_SIZE: usize = HEADROOM + DATA_CHUNK + TAILROOM;
const _: () = assert!(TAG_LEN <= TAILROOM);
// The frame header and Data prefix fit in front of the data; a batch frame fits a buffer.
const _: () = assert!(FRAME_HEADER_LEN + DATA_PREFIX_LEN <= HEADROOM);
const _: () = assert!(FRAME_HEADER_LEN + BATCH_PREFIX_LEN + DATA_CHUNK <= BUF_SIZE);
/// Buffers per worker: reads for many frames in flight while one frame is being sent. Measured
/// on the development VM's virtio disk: 8 -> 16 -> 32 buffers took a 2 GiB O_DIRECT send from
/// ~3.3 s to ~2.4 s (the device wants a deep queue).
pub const BUFFERS: usize = 32;
/// Buffers busy at once while chunks come from the page cache: their data is there as soon as
/// the read is submitted, so a deep queue only lets it go cold in the CPU caches before it is
/// sealed and sent (measured: 4 instead of 32 took ~7% off the sender's CPU per hot GiB).
const HOT_AHEAD: usize = 4;
const _: () = assert!(HOT_AHEAD <= BUFFERS);
/// FileBatch buffers reading at once: each holds up to SEND_BATCH_MAX_FILES open files, so this
/// bounds the worker's open fds (8 x 128) whatever BUFFERS is.
const MAX_BATCH_BUFFERS_READING: usize = 8;
/// Buffers of a worker that sends only FileBatch frames: those reading, one being sent and one
/// sealed and waiting for the socket. Every buffer's pages are pinned (so touched) when the
/// ring registers the slab; 32 MiB per worker cost a 20,000-file job about 20 ms (paired,
/// 12 alternating runs into a tmpfs: 0.320 s with BUFFERS, 0.296 s with this).
const BATCH_ONLY_BUFFERS: usize = MAX_BATCH_BUFFERS_READING + 2;
const _: () = assert!(BATCH_ONLY_BUFFERS <= BUFFERS && HOT_AHEAD <= BATCH_ONLY_BUFFERS);
/// A slot for every operation the worker can have in flight: a read per FileBatch file of the
/// batch buffers reading, a read per other buffer, and the send.
const RING_ENTRIES: u32 = 4096;
const _: () = assert!(
    MAX_BATCH_BUFFERS_READING * super::plan::SEND_BATCH_MAX_FILES + BUFFERS < RING_ENTRIES as usize
);
/// Ranges of files at least this large that are not in the page cache are read with O_DIRECT
/// (when the file system allows): the data is streamed once, so filling the page cache with it
/// only evicts useful pages. Ranges that are cached are read through the cache (a memory copy
/// instead of a device read). Smaller files are always read buffered.
const DIRECT_MIN_SIZE: u64 = 8 * 1024 * 1024;

/// Whether `entry`'s chunks may be read with O_DIRECT: direct reads are allowed and the file
/// is at least `DIRECT_MIN_SIZE`.
fn may_read_direct(direct_ok: bool, table: &SendTable, entry: EntryId) -> bool {
    direct_ok && table.sizes[entry.index()] >= DIRECT_MIN_SIZE
}

/// Operation kinds in the ring's tags (with the read's index in its buffer).
const OP_READ: u32 = 1;
const OP_SEND: u32 = 2;

pub struct SendTable {
    pub root: OwnedFd,
    pub paths: Vec<Vec<u8>>,
    pub sizes: Vec<u64>,
    /// What the walk saw of each file read from the live tree (no snapshot), by entry; empty,
    /// or `None` for an entry, where nothing is to be checked. A file a worker reads whole (a
    /// batched small file) is stat'ed through its open descriptor once read, so the session's
    /// check that nothing changed (sender/mod.rs) need not look it up again after the data.
    pub stamps: Vec<Option<Stamp>>,
}

/// One read of a buffer's frame: the transfer asked of the kernel (rounded up to whole blocks
/// for O_DIRECT) and the bytes the frame wants of it.
struct ReadOp {
    io: Transfer,
    entry: EntryId,
    want: usize,
    /// Read with O_DIRECT (else through the page cache).
    direct: bool,
}

#[derive(PartialEq, Eq, Debug)]
enum State {
    Free,
    Reading,
    /// Laid out with nothing to read; to be finished.
    Filled,
    Ready,
    Sending,
}

struct Buf {
    state: State,
    pending: usize,
    reads: Vec<ReadOp>,
    kind: FrameKind,
    frame_start: usize,
    frame_end: usize,
    sent: usize,
    data_bytes: u64,
    /// Files a FileBatch frame completes (progress; a Data frame's file is counted by the
    /// pool, `UnitPool::chunk_sent`).
    files: u64,
    /// The file of a Data frame (kept apart: `finish_frame` clears the reads).
    chunk_of: Option<EntryId>,
    /// Frame checksum, set once the reads are in (for the session's content digest).
    checksum: u64,
}

impl Buf {
    fn new() -> Buf {
        Buf {
            state: State::Free,
            pending: 0,
            reads: Vec::new(),
            kind: FrameKind::Data,
            frame_start: 0,
            frame_end: 0,
            sent: 0,
            data_bytes: 0,
            files: 0,
            chunk_of: None,
            checksum: 0,
        }
    }
}

pub struct SendWorker {
    pub cpu: Option<hw::CpuId>,
    pub table: Arc<SendTable>,
    /// The units of this process's workers, and which span is this worker's.
    pub pool: Arc<UnitPool>,
    pub slot: usize,
    pub direct: bool,
    /// Counters (bytes and files sent) and the controller's gate (pause, abort, rate limit),
    /// looked at once per chunk.
    pub progress: Arc<crate::job::Progress>,
    /// Hash each 4 KiB block of Data frames for the manifest (saves re-reading sent files).
    pub hash_blocks: bool,
}

/// The file a worker is reading: its buffered fd, and an O_DIRECT one once a range of it
/// turned out not to be in the page cache.
struct Cached {
    entry: EntryId,
    buffered: OpFd,
    direct: Option<OpFd>,
}

/// How one chunk is read (`engine::cache`): through the page cache when it holds the data, from
/// the device otherwise, or (a kernel without `cachestat`) through the cache without waiting
/// for the device, and the rest from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadMode {
    Buffered,
    Direct,
    NoWait,
}

/// Where frames go: io_uring sends on the connection's kernel socket, or the connection's
/// own blocking `send_all` for a transport without one.
enum Out<'c> {
    Ring(OpFd),
    Conn(&'c mut dyn Connection),
}

impl SendWorker {
    /// Streams the worker's units over `link`, sealing each frame if the link is sealed.
    /// Returns when every frame is sent, or at the first error; either way every operation it
    /// started has completed or been cancelled before its fds and buffers go (the ring owns
    /// them).
    pub fn run(mut self, link: &mut Link) -> Result<FrameStats> {
        if let Some(cpu) = self.cpu {
            hw::pin_current_thread(cpu).map_err(|source| Error::Pinning { cpu: cpu.0, source })?;
        }
        // Only chunks of files that may be read with O_DIRECT gain from huge pages.
        let direct = |u: &Unit| match u {
            Unit::Chunk { entry, .. } => may_read_direct(self.direct, &self.table, *entry),
            Unit::Batch { .. } => false,
        };
        // Sized for the units planned for this worker: a unit it takes over from another
        // fits its buffers too (only their number and pages differ), and a slab sized for
        // the whole pool would cost small-file workers the huge pages and the pinning that
        // `SlabPages` and `BATCH_ONLY_BUFFERS` spare them.
        let planned = self.pool.planned(self.slot);
        let pages = if planned.iter().any(direct) {
            SlabPages::Huge
        } else {
            SlabPages::Small
        };
        let nbuf = if planned.iter().all(|u| matches!(u, Unit::Batch { .. })) {
            BATCH_ONLY_BUFFERS
        } else {
            BUFFERS
        };
        let mut ring = Uring::with_pages(RING_ENTRIES, nbuf, BUF_SIZE, pages)
            .ctx(|| "creating io_uring".to_string())?;
        let streamed = self.stream(&mut ring, link);
        // The transport may have registered the slab (`send_from_region`): it lets go of it
        // before the ring frees it, so no later send on the connection can name its addresses.
        link.parts().0.release_region();
        streamed
    }

    fn stream(&mut self, ring: &mut Uring, link: &mut Link) -> Result<FrameStats> {
        let (conn, mut sealer, _) = link.parts();
        let mut out = match conn
            .uring_socket()
            .ctx(|| "duplicating the socket".to_string())?
        {
            Some(fd) => Out::Ring(Rc::new(fd)),
            None => {
                // Frames are built in the slab: a transport that can send from it does.
                conn.send_from_region(ring.slab_span())
                    .ctx(|| "registering the slab with the transport".to_string())?;
                Out::Conn(conn)
            }
        };
        let mut bufs: Vec<Buf> = (0..ring.buffers()).map(|_| Buf::new()).collect();
        let mut stats = FrameStats::default();
        let mut ready: VecDeque<usize> = VecDeque::with_capacity(bufs.len());
        let mut sending = false;
        let pool = self.pool.clone();
        // The next unit, claimed but not started (a batch waits for a reading slot).
        let mut held: Option<&Unit> = None;
        let mut more = true;
        let mut cache: Option<Cached> = None;
        let mut direct_ok = self.direct;
        let mut dirs = beneath::DirCache::default();
        let mut hot = false;
        let mut cqes = Vec::with_capacity(RING_ENTRIES as usize);

        loop {
            // Chunk boundary: the controller may pause, abort or throttle the job here.
            let mut gate = self.progress.control.gate();
            if gate == crate::job::Gate::Cancel {
                return Err(Error::Cancelled("stopped at a chunk boundary".into()));
            }
            while more && gate == crate::job::Gate::Go {
                let Some(b) = bufs.iter().position(|b| b.state == State::Free) else {
                    break;
                };
                // Data from the page cache is in the buffer the moment its read is submitted:
                // reading far ahead only lets it go cold in the CPU caches before it is sealed
                // and sent. Deep queues are for the device (O_DIRECT).
                if hot && bufs.iter().filter(|b| b.state != State::Free).count() >= HOT_AHEAD {
                    break;
                }
                if held.is_none() {
                    held = pool.next(self.slot);
                }
                if matches!(held, Some(Unit::Batch { .. })) {
                    let reading = bufs
                        .iter()
                        .filter(|x| x.state == State::Reading && x.kind == FrameKind::FileBatch)
                        .count();
                    if reading >= MAX_BATCH_BUFFERS_READING {
                        break;
                    }
                }
                match held.take() {
                    Some(u) => {
                        self.progress.control.issue(u.data_bytes());
                        let ctx = UnitCtx {
                            table: &self.table,
                            cache: &mut cache,
                            direct_ok: &mut direct_ok,
                            dirs: &mut dirs,
                        };
                        start_unit(ring, &mut bufs[b], b, u, ctx)?;
                        hot = bufs[b].kind == FrameKind::Data
                            && bufs[b].reads.iter().all(|r| !r.direct);
                    }
                    None => more = false,
                }
                if bufs[b].state == State::Filled {
                    // No reads (a batch of empty files): ready at once.
                    finish_frame(ring, &mut bufs[b], b, sealer.as_deref_mut());
                    ready.push_back(b);
                }
                gate = self.progress.control.gate();
            }
            if !sending {
                if let Some(&b) = ready.front() {
                    bufs[b].state = State::Sending;
                    match &mut out {
                        Out::Ring(sock) => {
                            submit_send(ring, &bufs[b], b, sock)?;
                            sending = true;
                        }
                        Out::Conn(c) => {
                            let buf = &bufs[b];
                            c.send_all(&ring.buf(b)[buf.frame_start..buf.frame_end])
                                .ctx(|| "sending to receiver".to_string())?;
                            let n = buf.frame_end - buf.frame_start;
                            self.sent(&mut bufs[b], n, &mut stats);
                            let front = ready.pop_front();
                            debug_assert_eq!(front, Some(b));
                            continue;
                        }
                    }
                }
            }
            if ring.inflight() == 0 {
                debug_assert!(ready.is_empty() && !sending);
                if !more {
                    break;
                }
                if let crate::job::Gate::Wait(d) = gate {
                    std::thread::sleep(d);
                }
                continue;
            }
            ring.reap(1, STALL_TIMEOUT, &mut cqes)
                .ctx(|| "waiting for the peer and the disk".to_string())?;
            for c in cqes.drain(..) {
                let (b, idx) = (c.buf, c.index());
                match c.op() {
                    OP_READ => {
                        let cx = UnitCtx {
                            table: &self.table,
                            cache: &mut cache,
                            direct_ok: &mut direct_ok,
                            dirs: &mut dirs,
                        };
                        if on_read(ring, &mut bufs[b], b, idx, c.result, cx)? {
                            for r in &bufs[b].reads {
                                if r.direct {
                                    stats.read_direct += r.want as u64;
                                } else {
                                    stats.read_buffered += r.want as u64;
                                }
                            }
                            self.check_batch(&bufs[b], &mut stats);
                            // Hashes of the plain data first: sealing encrypts it in place.
                            self.hash_frame(ring, &bufs[b], b, &mut stats);
                            finish_frame(ring, &mut bufs[b], b, sealer.as_deref_mut());
                            ready.push_back(b);
                        }
                    }
                    OP_SEND => {
                        if c.result <= 0 {
                            let errno = if c.result == 0 {
                                libc::EPIPE
                            } else {
                                -c.result
                            };
                            return Err(Error::Io {
                                context: "sending to receiver".into(),
                                source: std::io::Error::from_raw_os_error(errno),
                            });
                        }
                        let buf = &mut bufs[b];
                        buf.sent += c.result as usize;
                        if buf.sent < buf.frame_end - buf.frame_start {
                            if let Out::Ring(sock) = &out {
                                submit_send(ring, buf, b, sock)?;
                            }
                            continue;
                        }
                        let total = buf.sent;
                        self.sent(buf, total, &mut stats);
                        let front = ready.pop_front();
                        debug_assert_eq!(front, Some(b));
                        sending = false;
                    }
                    other => unreachable!("unknown operation kind {other} in tag {:#x}", c.tag),
                }
            }
        }
        Ok(stats)
    }

    /// A frame's data is in: take its block hashes for the manifest while the buffer is
    /// still the worker's alone and in clear.
    fn hash_frame(&self, ring: &Uring, buf: &Buf, b: usize, stats: &mut FrameStats) {
        if self.hash_blocks && buf.kind == FrameKind::Data {
            stats
                .block_hashes
                .extend(block_hashes(ring, buf, b, &self.table));
        }
    }

    /// A batch's files are read: each one whose stat, through the descriptor it was read
    /// from, is not the walk's may have been read torn and is noted, for the session to fail
    /// before Commit as its own check would. Once read, a later write cannot tear what was.
    fn check_batch(&self, buf: &Buf, stats: &mut FrameStats) {
        if buf.kind != FrameKind::FileBatch {
            return;
        }
        let table = &self.table;
        for r in &buf.reads {
            let i = r.entry.index();
            let Some(Some(stamp)) = table.stamps.get(i) else {
                continue;
            };
            let same =
                rustix::fs::fstat(&*r.io.fd).is_ok_and(|st| stamp.unchanged(table.sizes[i], &st));
            if !same {
                stats.changed.push(r.entry);
            }
        }
    }

    /// The whole frame of `buf` (`n` bytes) is on the wire.
    fn sent(&self, buf: &mut Buf, n: usize, stats: &mut FrameStats) {
        debug_assert_eq!(n, buf.frame_end - buf.frame_start);
        stats.wire_bytes += n as u64;
        stats.checksums.push(buf.checksum);
        stats.frames += 1;
        stats.data_bytes += buf.data_bytes;
        self.progress
            .bytes
            .fetch_add(buf.data_bytes, Ordering::Relaxed);
        let files = match buf.chunk_of {
            Some(entry) => self.pool.chunk_sent(entry),
            None => buf.files,
        };
        self.progress.files.fetch_add(files, Ordering::Relaxed);
        buf.state = State::Free;
    }
}

/// What `start_unit` needs of the worker besides the ring and the buffer.
struct UnitCtx<'a> {
    table: &'a SendTable,
    cache: &'a mut Option<Cached>,
    direct_ok: &'a mut bool,
    /// The directory small files are being opened in.
    dirs: &'a mut beneath::DirCache,
}

fn open_for_read(table: &SendTable, entry: EntryId, direct: bool) -> Result<OwnedFd> {
    let p = &table.paths[entry.index()];
    let flags = OFlags::RDONLY
        | if direct {
            OFlags::DIRECT
        } else {
            OFlags::empty()
        };
    beneath::open_file(table.root.as_fd(), p, flags, Mode::empty())
        .ctx(|| format!("opening {} for reading", show(p)))
}

/// The O_DIRECT fd of the file being read, opened on first use; None if the file system
/// refuses O_DIRECT (then the worker reads buffered from now on).
fn direct_fd<'c>(
    table: &SendTable,
    c: &'c mut Cached,
    direct_ok: &mut bool,
) -> Result<Option<&'c OpFd>> {
    if c.direct.is_none() && *direct_ok {
        match open_for_read(table, c.entry, true) {
            Ok(fd) => c.direct = Some(Rc::new(fd)),
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                *direct_ok = false
            }
            Err(e) => return Err(e),
        }
    }
    Ok(c.direct.as_ref())
}

fn start_unit(
    ring: &mut Uring,
    buf: &mut Buf,
    b: usize,
    unit: &Unit,
    cx: UnitCtx<'_>,
) -> Result<()> {
    debug_assert_eq!(buf.state, State::Free);
    let table = cx.table;
    buf.reads.clear();
    buf.sent = 0;
    buf.data_bytes = unit.data_bytes();
    (buf.files, buf.chunk_of) = match *unit {
        Unit::Chunk { entry, .. } => (0, Some(entry)),
        Unit::Batch { ref files } => (files.len() as u64, None),
    };
    match *unit {
        Unit::Chunk {
            entry, offset, len, ..
        } => {
            if !matches!(cx.cache, Some(c) if c.entry == entry) {
                let fd = open_for_read(table, entry, false)?;
                let st = rustix::fs::fstat(&fd)
                    .ctx(|| format!("stat {}", show(&table.paths[entry.index()])))?;
                if st.st_size as u64 != table.sizes[entry.index()] {
                    return Err(changed(table, entry));
                }
                if may_read_direct(*cx.direct_ok, table, entry) {
                    // Each chunk is read from the cache or from the device as its residency
                    // says; kernel readahead would pull the device's share into the cache.
                    // Advice only: a file system that ignores it just reads ahead.
                    let _ = rustix::fs::fadvise(&fd, 0, None, rustix::fs::Advice::Random);
                }
                *cx.cache = Some(Cached {
                    entry,
                    buffered: Rc::new(fd),
                    direct: None,
                });
            }
            let Some(c) = cx.cache.as_mut() else {
                unreachable!("cache filled above")
            };
            let large = may_read_direct(*cx.direct_ok, table, entry)
                && offset.is_multiple_of(BUF_ALIGN as u64);
            let mut mode = if large {
                match crate::engine::cache::resident(c.buffered.as_fd(), offset, u64::from(len)) {
                    Residency::Cached => ReadMode::Buffered,
                    Residency::Uncached => ReadMode::Direct,
                    Residency::Unknown => ReadMode::NoWait,
                }
            } else {
                ReadMode::Buffered
            };
            if mode == ReadMode::Direct && direct_fd(table, c, cx.direct_ok)?.is_none() {
                mode = ReadMode::Buffered;
            }
            let len = len as usize;
            let (fd, ask) = match (mode, &c.direct) {
                (ReadMode::Direct, Some(d)) => (d.clone(), len.div_ceil(BUF_ALIGN) * BUF_ALIGN),
                _ => (c.buffered.clone(), len),
            };
            debug_assert!(HEADROOM + ask <= BUF_SIZE);
            buf.kind = FrameKind::Data;
            buf.frame_start = HEADROOM - DATA_PREFIX_LEN - FRAME_HEADER_LEN;
            buf.frame_end = HEADROOM + len;
            let mut io = Transfer::new(fd, offset, HEADROOM, ask);
            io.nowait = mode == ReadMode::NoWait;
            buf.reads.push(ReadOp {
                io,
                entry,
                want: len,
                direct: matches!((mode, &c.direct), (ReadMode::Direct, Some(_))),
            });
            let s = ring.buf_mut(b);
            s[HEADROOM - DATA_PREFIX_LEN..HEADROOM - 8].copy_from_slice(&entry.0.to_le_bytes());
            s[HEADROOM - 8..HEADROOM].copy_from_slice(&offset.to_le_bytes());
        }
        Unit::Batch { ref files } => {
            buf.kind = FrameKind::FileBatch;
            buf.frame_start = 0;
            let mut pos = FRAME_HEADER_LEN;
            let s = ring.buf_mut(b);
            s[pos..pos + BATCH_PREFIX_LEN].copy_from_slice(&(files.len() as u32).to_le_bytes());
            pos += BATCH_PREFIX_LEN;
            let mut opened = Vec::new();
            for &(entry, size) in files {
                s[pos..pos + 4].copy_from_slice(&entry.0.to_le_bytes());
                s[pos + 4..pos + 8].copy_from_slice(&size.to_le_bytes());
                pos += BATCH_RECORD_HEADER;
                if size > 0 {
                    opened.push((entry, pos, size as usize));
                }
                pos += size as usize;
            }
            assert!(
                pos <= BUF_SIZE,
                "batch overflows its buffer: plan and buffer size disagree"
            );
            buf.frame_end = pos;
            for (entry, buf_off, len) in opened {
                let p = &table.paths[entry.index()];
                let fd = cx
                    .dirs
                    .open_file(table.root.as_fd(), p, OFlags::RDONLY, Mode::empty())
                    .ctx(|| format!("opening {} for reading", show(p)))?;
                buf.reads.push(ReadOp {
                    io: Transfer::new(Rc::new(fd), 0, buf_off, len),
                    entry,
                    want: len,
                    direct: false,
                });
            }
        }
    }
    buf.pending = buf.reads.len();
    if buf.pending == 0 {
        buf.state = State::Filled;
        return Ok(());
    }
    buf.state = State::Reading;
    for i in 0..buf.reads.len() {
        submit_read(ring, buf, b, i)?;
    }
    Ok(())
}

fn submit_read(ring: &mut Uring, buf: &Buf, b: usize, i: usize) -> Result<()> {
    let r = &buf.reads[i].io;
    debug_assert!(r.buf_off + r.len <= BUF_SIZE);
    ring.transfer(Dir::Read, r, b, tag(OP_READ, i))
        .ctx(|| "submitting read".to_string())
}

/// Handles a read completion; returns true when the buffer's last read finished.
/// `entry` changed while being read.
fn changed(table: &SendTable, entry: EntryId) -> Error {
    let p = &table.paths[entry.index()];
    Error::SourceChanged {
        message: show(p),
        paths: vec![p.clone()],
    }
}

fn on_read(
    ring: &mut Uring,
    buf: &mut Buf,
    b: usize,
    i: usize,
    res: i32,
    cx: UnitCtx<'_>,
) -> Result<bool> {
    let table = cx.table;
    let r = &mut buf.reads[i];
    let path = || show(&table.paths[r.entry.index()]);
    if res == -libc::EAGAIN && r.io.nowait {
        // The rest is not in the page cache: read it from the device if the file (still the
        // worker's current one) and the offset allow, else buffered, waiting for it.
        r.io.nowait = false;
        let at = r.io.file_off + r.io.done as u64;
        if let Some(c) = cx.cache.as_mut().filter(|c| c.entry == r.entry) {
            if at.is_multiple_of(BUF_ALIGN as u64) {
                if let Some(d) = direct_fd(table, c, cx.direct_ok)? {
                    r.io.fd = d.clone();
                    r.io.len = r.want.div_ceil(BUF_ALIGN) * BUF_ALIGN;
                    r.direct = true;
                }
            }
        }
        submit_read(ring, buf, b, i)?;
        return Ok(false);
    }
    if res < 0 {
        let e = std::io::Error::from_raw_os_error(-res);
        return Err(Error::Io {
            context: format!("reading {}", path()),
            source: e,
        });
    }
    if res == 0 && r.io.done < r.want {
        // EOF before the size the walk saw: the file shrank under us.
        return Err(changed(table, r.entry));
    }
    r.io.done += res as usize;
    if r.io.done < r.want {
        if r.io.len != r.want && !r.io.done.is_multiple_of(BUF_ALIGN) {
            return Err(changed(table, r.entry));
        }
        submit_read(ring, buf, b, i)?;
        return Ok(false);
    }
    buf.pending -= 1;
    Ok(buf.pending == 0)
}

/// Per-block hashes of a finished Data frame whose data starts on a block boundary: (entry,
/// first block, hashes). The last block of a file may be short, as in the manifest.
fn block_hashes(
    ring: &Uring,
    buf: &Buf,
    b: usize,
    table: &SendTable,
) -> Option<(EntryId, u64, Vec<u64>)> {
    const BLOCK: usize = super::manifest::BLOCK as usize;
    let s = ring.buf(b);
    let payload = &s[buf.frame_start + FRAME_HEADER_LEN..buf.frame_end];
    let (entry, offset, data) = crate::wire::message::decode_data_prefix(payload).ok()?;
    if !offset.is_multiple_of(BLOCK as u64) {
        return None;
    }
    // A short last block counts only at the end of the file (mid-file it would be a block
    // half data, half hole, whose hash covers all 4 KiB).
    let end = offset + data.len() as u64;
    let whole = if !data.len().is_multiple_of(BLOCK) && table.sizes.get(entry.index()) != Some(&end)
    {
        data.len() / BLOCK * BLOCK
    } else {
        data.len()
    };
    Some((
        entry,
        offset / BLOCK as u64,
        data[..whole]
            .chunks(BLOCK)
            .map(xxhash_rust::xxh3::xxh3_64)
            .collect(),
    ))
}

/// All reads are in: checksum the payload and write the header in front of it.
/// All reads are in: checksum or seal the payload in place and write the header in front of
/// it (and a sealed frame's tag after it). Sealed frames must be finished in the order they
/// are sent: the sealer numbers them.
fn finish_frame(ring: &mut Uring, buf: &mut Buf, b: usize, sealer: Option<&mut Sealer>) {
    buf.reads.clear();
    let s = ring.buf_mut(b);
    let body = buf.frame_start + FRAME_HEADER_LEN..buf.frame_end;
    let h = match sealer {
        None => FrameHeader::for_payload(buf.kind, &s[body]),
        Some(sealer) => {
            let (h, tag) = sealer.seal(buf.kind, &mut s[body]);
            debug_assert!(buf.frame_end + TAG_LEN <= BUF_SIZE);
            s[buf.frame_end..buf.frame_end + TAG_LEN].copy_from_slice(&tag);
            buf.frame_end += TAG_LEN;
            h
        }
    };
    buf.checksum = h.checksum;
    s[buf.frame_start..buf.frame_start + FRAME_HEADER_LEN].copy_from_slice(&h.encode());
    buf.state = State::Ready;
}

fn submit_send(ring: &mut Uring, buf: &Buf, b: usize, sock: &OpFd) -> Result<()> {
    debug_assert!(buf.frame_start + buf.sent < buf.frame_end);
    ring.send(
        sock,
        b,
        buf.frame_start + buf.sent..buf.frame_end,
        tag(OP_SEND, 0),
    )
    .ctx(|| "submitting send".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(debug_assertions)]
    use crate::engine::ring::audit;
    use crate::transport::tcp::TcpConn;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::path::Path;

    const FILE_SIZE: usize = 2 << 20;

    /// A tree of `n` 2 MiB files and the table a sender would build for it.
    fn tree(dir: &Path, n: usize) -> Arc<SendTable> {
        let mut paths = Vec::new();
        for i in 0..n {
            let name = format!("f{i:02}");
            std::fs::write(dir.join(&name), vec![i as u8; FILE_SIZE]).expect("write file");
            paths.push(name.into_bytes());
        }
        let root = crate::beneath::open_root(dir, "source").expect("open root");
        let sizes = vec![FILE_SIZE as u64; n];
        Arc::new(SendTable {
            root,
            paths,
            sizes,
            stamps: Vec::new(),
        })
    }

    fn chunks(entries: std::ops::Range<u32>) -> Vec<Unit> {
        let mut units = Vec::new();
        for e in entries {
            for k in 0..(FILE_SIZE / DATA_CHUNK) as u64 {
                units.push(Unit::Chunk {
                    entry: EntryId(e),
                    offset: k * DATA_CHUNK as u64,
                    len: DATA_CHUNK as u32,
                    last: k == 1,
                });
            }
        }
        units
    }

    /// Fds of this process open on files under `dir`.
    fn open_under(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .flatten()
        {
            if let Ok(target) = std::fs::read_link(e.path()) {
                if target.starts_with(dir) && target != dir {
                    out.push(target);
                }
            }
        }
        out
    }

    /// A connected pair on loopback: the worker's end (sealed with a random secret, as a
    /// daemon's job is), and the peer's.
    fn pair() -> (Link, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        let conn = Box::new(TcpConn::new(c).expect("conn"));
        let secret = crate::wire::seal::SessionSecret::random().expect("secret");
        (Link::sealed(conn, &secret, true, 0), s)
    }

    fn worker(table: Arc<SendTable>, units: Vec<Unit>) -> SendWorker {
        SendWorker {
            cpu: None,
            table,
            pool: Arc::new(UnitPool::new(vec![units])),
            slot: 0,
            direct: false,
            progress: Arc::new(crate::job::Progress::default()),
            hash_blocks: false,
        }
    }

    /// The worker fails with reads queued and in flight, once because a planned file vanished
    /// (its reads were queued but not yet submitted when the error returned) and once because
    /// the peer went away (sends fail while reads are in flight). Either way no operation
    /// reaches the kernel naming an fd closed since it was queued (the ring's audit counts
    /// those), and every file fd is closed once the worker returned.
    #[test]
    fn a_sender_failing_mid_flight_closes_no_fd_while_an_operation_names_it() {
        // The submission audit exists in debug builds (CI's tests); release checks the fds.
        #[cfg(debug_assertions)]
        let before = audit::violations();
        let dir = tempfile::tempdir().expect("tempdir");
        let table = tree(dir.path(), 24);
        std::fs::remove_file(dir.path().join("f05")).expect("file vanishes after the plan");

        // 1. A vanished file right after ten queued reads (the first round fills the buffers
        // before anything is submitted); the peer reads everything.
        let (mut conn, mut peer) = pair();
        let drain = std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = peer.read_to_end(&mut sink);
        });
        let units = chunks(0..24);
        let err = worker(table.clone(), units)
            .run(&mut conn)
            .expect_err("the vanished file fails the worker");
        assert!(
            err.to_string().contains("f05"),
            "the error names the vanished file: {err}"
        );
        drop(conn);
        drain.join().expect("drain thread");
        assert_eq!(open_under(dir.path()), Vec::<std::path::PathBuf>::new());

        // 2. The peer closes at once: sends fail while reads of later frames are in flight.
        let (mut conn, peer) = pair();
        drop(peer);
        let err = worker(table, chunks(6..24))
            .run(&mut conn)
            .expect_err("the closed peer fails the worker");
        assert!(
            err.to_string().contains("sending to receiver"),
            "the send failed: {err}"
        );
        assert_eq!(open_under(dir.path()), Vec::<std::path::PathBuf>::new());

        #[cfg(debug_assertions)]
        assert_eq!(
            audit::violations(),
            before,
            "an operation was submitted against a closed fd"
        );
    }

    /// A worker with only small files runs on its smaller slab (BATCH_ONLY_BUFFERS) and still
    /// sends every file whole and once, in order of its batches, while a slow peer keeps its
    /// sealed frames waiting for the socket (every buffer is busy many times over).
    #[test]
    fn a_small_files_only_worker_sends_every_file_once_through_its_smaller_slab() {
        const FILES: usize = 600;
        const PER_BATCH: usize = 5;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut paths = Vec::new();
        let mut sizes = Vec::new();
        for i in 0..FILES {
            let name = format!("s{i:04}");
            let size = 1 + i * 37 % 4000;
            std::fs::write(dir.path().join(&name), vec![(i % 251) as u8; size]).expect("write");
            paths.push(name.into_bytes());
            sizes.push(size as u64);
        }
        let root = crate::beneath::open_root(dir.path(), "source").expect("open root");
        let units: Vec<Unit> = (0..FILES)
            .collect::<Vec<_>>()
            .chunks(PER_BATCH)
            .map(|c| Unit::Batch {
                files: c
                    .iter()
                    .map(|&i| (EntryId(i as u32), sizes[i] as u32))
                    .collect(),
            })
            .collect();
        assert!(units.len() > 10 * BATCH_ONLY_BUFFERS);
        let table = Arc::new(SendTable {
            root,
            paths,
            sizes: sizes.clone(),
            stamps: Vec::new(),
        });
        let (mut link, got) = plain_to_peer(|p| {
            std::thread::sleep(std::time::Duration::from_micros(300));
            crate::wire::message::decode_batch(p)
                .expect("batch")
                .into_iter()
                .map(|(e, r)| (e.0 as usize, p[r].to_vec()))
                .collect::<Vec<_>>()
        });
        let stats = worker(table, units).run(&mut link).expect("send");
        drop(link);
        let files: Vec<_> = got.join().expect("peer").into_iter().flatten().collect();
        assert_eq!(stats.frames as usize, FILES.div_ceil(PER_BATCH));
        assert_eq!(files.len(), FILES, "every file once");
        for (k, (i, data)) in files.iter().enumerate() {
            assert_eq!(*i, k, "files arrive in the order of their batches");
            assert_eq!(data.len() as u64, sizes[k]);
            assert!(
                data.iter().all(|&b| b == (k % 251) as u8),
                "file {k}'s bytes"
            );
        }
    }

    /// Two workers share a pool and the second never starts (a stalled CPU, say): the first
    /// sends its own span, then takes over the other's, and every chunk arrives once.
    #[test]
    fn a_worker_done_with_its_span_sends_the_rest_of_a_stalled_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = tree(dir.path(), 4);
        let pool = Arc::new(UnitPool::new(vec![chunks(0..1), chunks(1..4)]));
        let (mut link, got) = plain_to_peer(|p| {
            let (e, off, data) = crate::wire::message::decode_data_prefix(p).expect("data");
            (e.0, off, data.len())
        });
        let progress = Arc::new(crate::job::Progress::default());
        let w = SendWorker {
            pool: pool.clone(),
            slot: 0,
            progress: progress.clone(),
            ..worker(table, Vec::new())
        };
        let stats = w.run(&mut link).expect("send");
        drop(link);
        let frames = got.join().expect("peer");
        let per_file = (FILE_SIZE / DATA_CHUNK) as u64;
        assert_eq!(stats.frames, 4 * per_file, "every chunk of both spans");
        let mut seen: Vec<(u32, u64)> = frames.iter().map(|&(e, off, _)| (e, off)).collect();
        // (The order of claims is the pool's test; frames go out as their reads complete.)
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len() as u64, 4 * per_file, "each chunk once");
        assert!(frames.iter().all(|f| f.2 == DATA_CHUNK));
        assert!(
            pool.next(1).is_none(),
            "nothing left for the stalled worker"
        );
        assert_eq!(
            progress.files.load(Ordering::Relaxed),
            4,
            "each file counted once, when its last chunk to go is sent"
        );
    }

    /// Reads exactly the first `len` bytes of `path` into the page cache (no readahead).
    fn warm(path: &Path, len: usize) {
        let f = std::fs::File::open(path).expect("open");
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::Random).expect("fadvise");
        let mut b = vec![0u8; len];
        rustix::io::pread(f, &mut b, 0).expect("pread");
    }

    /// Sends every chunk of `file` (entry 0) over a plain link and returns the worker's stats
    /// and the bytes that arrived, reassembled by offset.
    fn send_file(dir: &Path, size: usize) -> (FrameStats, Vec<u8>) {
        let root = crate::beneath::open_root(dir, "source").expect("open root");
        let table = Arc::new(SendTable {
            root,
            paths: vec![b"big".to_vec()],
            sizes: vec![size as u64],
            stamps: Vec::new(),
        });
        let units = (0..size / DATA_CHUNK)
            .map(|k| Unit::Chunk {
                entry: EntryId(0),
                offset: (k * DATA_CHUNK) as u64,
                len: DATA_CHUNK as u32,
                last: k + 1 == size / DATA_CHUNK,
            })
            .collect();
        let (mut link, got) = plain_to_peer(|p| {
            let (_, off, data) = crate::wire::message::decode_data_prefix(p).expect("data prefix");
            (off as usize, data.to_vec())
        });
        let mut w = worker(table, units);
        w.direct = true;
        let stats = w.run(&mut link).expect("send");
        drop(link);
        let mut out = vec![0u8; size];
        for (off, data) in got.join().expect("peer") {
            out[off..off + data.len()].copy_from_slice(&data);
        }
        (stats, out)
    }

    /// A plain link on loopback, and a thread on its other end that checks each frame and
    /// keeps what `each` makes of its payload, until the link is dropped.
    fn plain_to_peer<T: Send + 'static>(
        each: impl Fn(&[u8]) -> T + Send + 'static,
    ) -> (Link, std::thread::JoinHandle<Vec<T>>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (mut peer, _) = l.accept().expect("accept");
        let got = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut h = [0u8; FRAME_HEADER_LEN];
            while peer.read_exact(&mut h).is_ok() {
                let h = FrameHeader::decode(&h).expect("frame header");
                let mut p = vec![0u8; h.len as usize];
                peer.read_exact(&mut p).expect("payload");
                h.verify(&p).expect("checksum");
                out.push(each(&p));
            }
            out
        });
        (Link::plain(Box::new(TcpConn::new(c).expect("conn"))), got)
    }

    /// A 16 MiB file (on a disk file system) whose first half is in the page cache: that half
    /// is read through the cache, the rest with O_DIRECT; and the same on a kernel without
    /// cachestat, where RWF_NOWAIT reads find out. Either way the bytes that arrive are the
    /// file's.
    #[test]
    fn cached_ranges_are_read_through_the_page_cache_and_the_rest_from_the_device() {
        const SIZE: usize = 16 << 20;
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir in /var/tmp");
        let p = dir.path().join("big");
        let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 4096) as u8).collect();
        std::fs::write(&p, &data).expect("write");
        let f = std::fs::File::open(&p).expect("open");
        f.sync_all().expect("fsync");
        let fs = rustix::fs::fstatfs(&f).expect("fstatfs");
        assert_ne!(
            fs.f_type,
            libc::TMPFS_MAGIC,
            "/var/tmp must be a disk file system"
        );
        // The page cache is the machine's: other tests' files can push the warmed half out
        // between warming and sending (seen once in a full run). Each case gets a few
        // attempts; one must split exactly, and every attempt must send the file's bytes.
        const ATTEMPTS: usize = 3;
        for no_cachestat in [false, true] {
            crate::engine::cache::pretend_no_cachestat(no_cachestat);
            let mut splits = Vec::new();
            for _ in 0..ATTEMPTS {
                rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
                warm(&p, SIZE / 2);
                let (stats, got) = send_file(dir.path(), SIZE);
                assert!(got == data, "the bytes sent differ from the file's");
                assert_eq!(stats.read_buffered + stats.read_direct, SIZE as u64);
                splits.push((stats.read_buffered, stats.read_direct));
                if splits.last() == Some(&(SIZE as u64 / 2, SIZE as u64 / 2)) {
                    break;
                }
            }
            assert_eq!(
                splits.last(),
                Some(&(SIZE as u64 / 2, SIZE as u64 / 2)),
                "cached half through the cache, the rest direct (no cachestat: {no_cachestat}); \
                 (buffered, direct) of each attempt: {splits:?}"
            );
        }
        crate::engine::cache::pretend_no_cachestat(false);
    }
}
