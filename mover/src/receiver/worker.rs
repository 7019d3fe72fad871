//! One receiver worker: pinned, owns an io_uring, registered buffers and one accepted
//! connection. Frames are received straight into a registered buffer (header, then payload),
//! verified against their checksum, and only then written to files from the same buffer: a
//! Data frame's extent with io_uring writes, so several buffers let writes run while the next
//! frame is received; a FileBatch's small files with `pwrite` once the batch's files are
//! created (a ring write into a tmpfs goes to a kernel worker thread, which costs more than
//! the 4 KiB copy).

use super::fence::Fence;
use super::meta::apply_new_file;
use super::resume::{self, Pending, Version};
use super::table::RecvTable;
use crate::beneath;
use crate::engine::ring::{tag, Completion, Dir, OpFd, Transfer, Uring, BUF_ALIGN, STALL_TIMEOUT};
use crate::engine::FrameStats;
use crate::error::{show, Error, IoContext, Result};
use crate::transport::Connection;
use crate::units::EntryId;
use crate::wire::frame::{FrameHeader, FrameKind, FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD};
use crate::wire::io::Link;
use crate::wire::message::{
    decode_batch, decode_data_prefix, decode_error, decode_worker_done, DATA_PREFIX_LEN,
};
use crate::wire::seal::Opener;
use crate::wire::WireError;
use rustix::fs::{Mode, OFlags};
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Frames are received at this offset so that a Data frame's file bytes land on an
/// O_DIRECT-aligned address (BASE + header + Data prefix = BUF_ALIGN).
const BASE: usize = BUF_ALIGN - DATA_PREFIX_LEN - FRAME_HEADER_LEN;
const DATA_OFF: usize = BUF_ALIGN;
pub const BUF_SIZE: usize =
    (BASE + FRAME_HEADER_LEN + MAX_FRAME_PAYLOAD).div_ceil(BUF_ALIGN) * BUF_ALIGN;
/// Extent files at least this large are written with O_DIRECT where the file system allows:
/// the data goes from the registered buffer to the device without a page-cache copy, and the
/// receiver does not fill its page cache with data nobody reads back.
const DIRECT_WRITE_MIN: u64 = 4 * 1024 * 1024;
pub const BUFFERS: usize = 8;
/// Ring writes of one Data frame at most: its block-aligned head (O_DIRECT) and its unaligned
/// tail (buffered). A FileBatch's files are written without the ring.
const WRITES_PER_FRAME: usize = 2;
/// Every buffer may hold a Data frame being written while the next frame is received: the ring
/// has a slot for each of those operations and the flushes (the ring refuses more). Small, so
/// the ring's creation maps little memory: it is on every job's path.
const RING_ENTRIES: u32 = 64;

/// A FileBatch asks the fence again after this many files created, and written.
const FENCE_EVERY_FILES: usize = 64;
/// Longest a failed worker waits for a write-back round to cover the files it finished last.
const FINISHED_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Bound on completion rounds while draining after a failure (each reaps at least one).
const DRAIN_ROUNDS: usize = 4096;
/// Flushes of written ranges in flight at once (more wait: their ranges stay pending).
const MAX_FLUSHING: usize = 4;
const _: () = assert!(BUFFERS * WRITES_PER_FRAME + MAX_FLUSHING + 1 < RING_ENTRIES as usize);
/// Operation kinds in the ring's tags (with the write's index in its buffer, or the flush's
/// slot).
const OP_RECV: u32 = 1;
const OP_WRITE: u32 = 2;
const OP_SYNC: u32 = 3;

/// One write of a buffer's frame, and the file it belongs to.
struct WriteOp {
    io: Transfer,
    entry: EntryId,
    /// Inline files are written with `pwrite` (not through the ring) once their FileBatch's
    /// files are created, then get their metadata, and are closed with the frame's writes.
    inline: bool,
}

#[derive(PartialEq, Eq, Debug, Clone, Copy)]
enum State {
    Free,
    /// Receiving the header (payload None) or the payload.
    Receiving {
        payload: Option<FrameHeader>,
        got: usize,
    },
    Writing,
}

struct Buf {
    state: State,
    writes: Vec<WriteOp>,
    pending: usize,
}

pub struct RecvWorker {
    /// The worker's number in its session (names its log of durable ranges).
    pub index: usize,
    pub cpu: Option<hw::CpuId>,
    pub table: Arc<RecvTable>,
    /// The worker connection, past its handshake; sealed if the session is.
    pub link: Link,
    pub progress: Arc<AtomicU64>,
    /// A write place's fence (`fence::Fence`), checked before each frame's writes start;
    /// `None` for the committing receiver's own workers.
    pub fence: Option<Arc<dyn Fence>>,
}

/// The worker's state apart from its ring and buffers, so frames can be handled while a
/// buffer is borrowed.
struct Ctx<'a> {
    t: &'a RecvTable,
    stats: FrameStats,
    cache: Option<ExtentFds>,
    direct_ok: bool,
    progress: &'a AtomicU64,
    /// Opens the sealed frames of this connection, in order.
    opener: Option<&'a mut Opener>,
    /// The large file being written and what of it was written since its last flush.
    pending: Option<Pending>,
    /// Flushes in flight, by slot.
    flushing: [Option<Pending>; MAX_FLUSHING],
    /// Where flushed ranges are logged (resume.rs).
    log: crate::durable::Log,
    /// Files finished and not yet known durable, logged once a write-back round covers them.
    finished: resume::Finished,
    /// The directory small files are being created in.
    dirs: beneath::DirCache,
    fence: Option<&'a dyn Fence>,
    /// The fence refused: nothing more is submitted, not even the flush after a failure.
    fenced: bool,
}

impl RecvWorker {
    /// Receives and writes frames until the sender's WorkerDone. On failure, writes already
    /// submitted are let land (and counted) before the ring is dropped, so a file whose last
    /// bytes were in flight is finished, and logged once a write-back covers it (at most
    /// `FINISHED_WAIT` later): a resumed job then does not resend it.
    pub fn run(self) -> Result<FrameStats> {
        if let Some(cpu) = self.cpu {
            hw::pin_current_thread(cpu).map_err(|source| Error::Pinning { cpu: cpu.0, source })?;
        }
        let mut ring =
            Uring::new(RING_ENTRIES, BUFFERS, BUF_SIZE).ctx(|| "creating io_uring".to_string())?;
        let mut link = self.link;
        let (conn, _, opener) = link.parts();
        let sock: Option<OpFd> = conn
            .uring_socket()
            .ctx(|| "duplicating the socket".to_string())?
            .map(Rc::new);
        let mut bufs: Vec<Buf> = (0..BUFFERS)
            .map(|_| Buf {
                state: State::Free,
                writes: Vec::new(),
                pending: 0,
            })
            .collect();
        // Opening the log of durable ranges truncates it: a write too.
        super::fence::fence_ok(self.fence.as_deref())?;
        let log = resume::open_log(self.table.journal.as_fd(), self.index)?;
        let mut cx = Ctx {
            t: &self.table,
            stats: FrameStats::default(),
            cache: None,
            direct_ok: true,
            progress: &self.progress,
            opener,
            pending: None,
            flushing: Default::default(),
            log,
            finished: resume::Finished::default(),
            dirs: beneath::DirCache::default(),
            fence: self.fence.as_deref(),
            fenced: false,
        };
        let mut cqes = Vec::with_capacity(RING_ENTRIES as usize);
        let result = (|| -> Result<()> {
            let mut receiving: Option<usize> = None;
            let mut done = false;
            loop {
                if receiving.is_none() && !done {
                    if let Some(b) = bufs.iter().position(|b| b.state == State::Free) {
                        match &sock {
                            Some(sock) => {
                                bufs[b].state = State::Receiving {
                                    payload: None,
                                    got: 0,
                                };
                                submit_recv(&mut ring, &bufs[b], b, sock)?;
                                receiving = Some(b);
                            }
                            None => {
                                // No kernel socket: the frame comes through the connection,
                                // then the writes it started run while the next one arrives.
                                let h = recv_frame(conn, &mut ring, b)?;
                                cx.stats.wire_bytes += (FRAME_HEADER_LEN + h.len as usize) as u64;
                                done |= on_frame(&mut ring, &mut bufs[b], b, h, &mut cx)?;
                                ring.reap(0, STALL_TIMEOUT, &mut cqes)
                                    .ctx(|| "reaping writes".to_string())?;
                                for c in cqes.drain(..) {
                                    on_completion(&mut ring, &mut bufs, c, &mut cx, None)?;
                                }
                                continue;
                            }
                        }
                    }
                }
                if ring.inflight() == 0 {
                    if done {
                        // What is still held waits for the recovery point's syncfs.
                        return log_finished(&mut cx);
                    }
                    // Invariant: not done and nothing in flight means a free buffer was
                    // available and a receive was just submitted (or a frame just received).
                    unreachable!("receiver worker idle with nothing in flight");
                }
                ring.reap(1, STALL_TIMEOUT, &mut cqes)
                    .ctx(|| "waiting for the peer and the disk".to_string())?;
                for c in cqes.drain(..) {
                    let b = c.buf;
                    if c.op() != OP_RECV {
                        on_completion(&mut ring, &mut bufs, c, &mut cx, None)?;
                        continue;
                    }
                    let Some(sock) = &sock else {
                        unreachable!("a receive completed on a worker without a socket")
                    };
                    if c.result < 0 {
                        return Err(Error::Io {
                            context: "receiving from sender".into(),
                            source: std::io::Error::from_raw_os_error(-c.result),
                        });
                    }
                    if c.result == 0 {
                        return Err(Error::PeerLost(
                            "sender closed a data connection mid-stream".into(),
                        ));
                    }
                    cx.stats.wire_bytes += c.result as u64;
                    let State::Receiving { payload, got } = bufs[b].state else {
                        unreachable!("recv completion for a buffer not receiving")
                    };
                    let got = got + c.result as usize;
                    let want = payload.map(|h| h.len as usize).unwrap_or(0) + FRAME_HEADER_LEN;
                    bufs[b].state = State::Receiving { payload, got };
                    if got < want {
                        submit_recv(&mut ring, &bufs[b], b, sock)?;
                        continue;
                    }
                    let h = match payload {
                        Some(h) => h,
                        None => {
                            let h = header_in(&ring, b)?;
                            bufs[b].state = State::Receiving {
                                payload: Some(h),
                                got,
                            };
                            if h.len != 0 {
                                submit_recv(&mut ring, &bufs[b], b, sock)?;
                                continue;
                            }
                            h
                        }
                    };
                    receiving = None;
                    done |= on_frame(&mut ring, &mut bufs[b], b, h, &mut cx)?;
                }
            }
        })();
        if result.is_err() {
            // Unblock a pending receive so the ring drains promptly.
            conn.shutdown();
            // The place's watch may have refused first and shut the connection: a refusal
            // stays (`Fence::check`), so this sees it and marks `cx.fenced`.
            let _ = fence(&mut cx);
        }
        // Let writes already submitted land and count (a Data frame's: a FileBatch's files are
        // written without the ring): a file whose last bytes were in flight is then finished,
        // and (below) logged, so a resumed job does not resend it. A fenced
        // place does none of that (it may no longer be waited for): what it had in flight
        // lands or is cancelled as the ring goes.
        if result.is_err() && !cx.fenced {
            let mut rounds = 0;
            while ring.inflight() > 0 && rounds < DRAIN_ROUNDS {
                rounds += 1;
                // A place's fence may refuse while it drains: it stops there.
                if fence(&mut cx).is_err() {
                    break;
                }
                if ring.reap(1, STALL_TIMEOUT, &mut cqes).is_err() {
                    break;
                }
                for c in cqes.drain(..) {
                    if c.op() == OP_WRITE && bufs[c.buf].state == State::Writing {
                        let b = c.buf;
                        if on_completion(&mut ring, &mut bufs, c, &mut cx, Some(())).is_err() {
                            bufs[b].state = State::Free;
                        }
                    } else if c.op() == OP_SYNC {
                        let _ = on_completion(&mut ring, &mut bufs, c, &mut cx, Some(()));
                    }
                }
                // Once the writes have landed, what was written of the unfinished file is
                // flushed and logged too: the next session need not send it again.
                if ring.inflight() == 0 && cx.pending.is_some() {
                    let _ = flush(&mut ring, &mut cx);
                }
            }
        }
        // The ring cancels and drains whatever is left before its fds and buffers go.
        drop(ring);
        // Files finished just before the failure are logged once the next write-back covers
        // them (a round or two), so the resumed job need not send them again.
        if result.is_err() && !cx.fenced {
            let until = std::time::Instant::now() + FINISHED_WAIT;
            while !cx.finished.is_empty()
                && cx.t.syncs.coming()
                && std::time::Instant::now() < until
            {
                std::thread::sleep(super::writeback::INTERVAL / 10);
                if log_finished(&mut cx).is_err() {
                    break;
                }
            }
        }
        // What is still held goes to the session, which logs it if the session fails after
        // all (`RecvTable::log_held`); a committed job needs none of it.
        if !cx.finished.is_empty() && !cx.fenced {
            let held = std::mem::take(&mut cx.finished);
            let mut all = cx.t.held.lock().unwrap_or_else(|p| p.into_inner());
            all.push((self.index, held));
        }
        result.map(|()| cx.stats)
    }
}

/// The frame header just received into buffer `b`.
fn header_in(ring: &Uring, b: usize) -> Result<FrameHeader> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h.copy_from_slice(&ring.buf(b)[BASE..BASE + FRAME_HEADER_LEN]);
    Ok(FrameHeader::decode(&h)?)
}

/// Receives one whole frame into buffer `b` through the connection (transports without a
/// kernel socket).
fn recv_frame(conn: &mut dyn Connection, ring: &mut Uring, b: usize) -> Result<FrameHeader> {
    let lost = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            Error::PeerLost("sender closed a data connection mid-stream".into())
        }
        _ => Error::Io {
            context: "receiving from sender".into(),
            source: e,
        },
    };
    let s = ring.buf_mut(b);
    conn.recv_exact(&mut s[BASE..BASE + FRAME_HEADER_LEN])
        .map_err(lost)?;
    let h = header_in(ring, b)?;
    let end = BASE + FRAME_HEADER_LEN + h.len as usize;
    conn.recv_exact(&mut ring.buf_mut(b)[BASE + FRAME_HEADER_LEN..end])
        .map_err(lost)?;
    Ok(h)
}

/// A write completed (or, while draining after a failure, `draining` is set and only writes
/// are handled).
fn on_completion(
    ring: &mut Uring,
    bufs: &mut [Buf],
    c: Completion,
    cx: &mut Ctx<'_>,
    draining: Option<()>,
) -> Result<()> {
    match c.op() {
        OP_WRITE => on_write(ring, &mut bufs[c.buf], c.buf, c.index(), c.result, cx),
        OP_SYNC => on_flushed(c.index(), c.result, cx),
        OP_RECV if draining.is_some() => Ok(()),
        other => unreachable!("unexpected operation kind {other} in tag {:#x}", c.tag),
    }
}

fn submit_recv(ring: &mut Uring, buf: &Buf, b: usize, sock: &OpFd) -> Result<()> {
    let State::Receiving { payload, got } = buf.state else {
        unreachable!("submit_recv on idle buffer")
    };
    let want = FRAME_HEADER_LEN + payload.map(|h| h.len as usize).unwrap_or(0);
    // BASE + want <= BUF_SIZE: the header was bounds checked against MAX_FRAME_PAYLOAD.
    debug_assert!(got < want && BASE + want <= BUF_SIZE);
    ring.recv(sock, b, BASE + got..BASE + want, tag(OP_RECV, 0))
        .ctx(|| "submitting recv".to_string())
}

/// A whole frame is in buffer b. Verifies it and starts its writes; returns true on WorkerDone.
fn on_frame(
    ring: &mut Uring,
    buf: &mut Buf,
    b: usize,
    h: FrameHeader,
    cx: &mut Ctx<'_>,
) -> Result<bool> {
    let t = cx.t;
    buf.writes.clear();
    fence(cx)?;
    {
        // Nothing of the payload is used before it is verified (plain) or authenticated and
        // decrypted in place (sealed).
        let body = BASE + FRAME_HEADER_LEN..BASE + FRAME_HEADER_LEN + h.len as usize;
        let len = match cx.opener.as_deref_mut() {
            Some(o) => o.open(&h, &mut ring.buf_mut(b)[body.clone()])?,
            None => {
                h.verify(&ring.buf(b)[body.clone()])?;
                h.len as usize
            }
        };
        let payload = &ring.buf(b)[body.start..body.start + len];
        match h.kind {
            FrameKind::WorkerDone => {
                let (frames, bytes) = decode_worker_done(payload)?;
                if frames != cx.stats.frames || bytes != cx.stats.data_bytes {
                    return Err(Error::Verify(format!(
                        "worker stream ended with {frames} frames / {bytes} bytes announced, \
                         {} / {} received",
                        cx.stats.frames, cx.stats.data_bytes
                    )));
                }
                buf.state = State::Free;
                return Ok(true);
            }
            FrameKind::Error => {
                let (code, message) = decode_error(payload)?;
                return Err(Error::Peer { code, message });
            }
            FrameKind::Data => {
                let (entry, offset, data) = decode_data_prefix(payload)?;
                data_writes(buf, entry, offset, data.len(), cx)?;
            }
            FrameKind::FileBatch => {
                for (k, (entry, range)) in decode_batch(payload)?.into_iter().enumerate() {
                    // Creating a file writes to the target too.
                    if k > 0 && k % FENCE_EVERY_FILES == 0 {
                        fence(cx)?;
                    }
                    if !t.is_needed_inline(entry)
                        || t.needed_size(entry) != Some(range.len() as u64)
                    {
                        return Err(Error::Verify(format!(
                            "FileBatch record for entry {} does not match the entry list",
                            entry.0
                        )));
                    }
                    let p = &t.paths[entry.index()];
                    // O_EXCL: the control phase removed whatever stood here; anything there now
                    // was planted mid-session and is not written through.
                    let mode = t.entries[entry.index()].meta.mode & 0o777;
                    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
                    let fd = cx
                        .dirs
                        .open_file(t.root.as_fd(), p, flags, Mode::from_raw_mode(mode))
                        .ctx(|| format!("creating {}", show(p)))?;
                    let at = BASE + FRAME_HEADER_LEN + range.start;
                    buf.writes.push(WriteOp {
                        io: Transfer::new(Rc::new(fd), 0, at, range.len()),
                        entry,
                        inline: true,
                    });
                }
            }
            other => {
                return Err(WireError::Unexpected {
                    expected: FrameKind::Data,
                    got: other,
                }
                .into())
            }
        }
    }
    // Asked again before the writes go out: the files' creation took a while.
    fence(cx)?;
    t.take_frame()?;
    cx.stats.frames += 1;
    cx.stats.data_bytes += buf.writes.iter().map(|w| w.io.len as u64).sum::<u64>();
    cx.stats.checksums.push(h.checksum);
    buf.pending = 0;
    buf.state = State::Writing;
    // Small files are written here, before any write of this buffer is queued: a ring write
    // into a file system without non-blocking buffered writes (tmpfs) is handed to a kernel
    // worker thread, which costs more than the 4 KiB copy itself.
    for (k, w) in buf.writes.iter().filter(|w| w.inline).enumerate() {
        // As while creating them: writing a batch takes a while too.
        if k > 0 && k % FENCE_EVERY_FILES == 0 {
            fence(cx)?;
        }
        write_inline(ring.buf(b), w, cx)?;
        finish_inline(w, t)?;
    }
    // The batch's files are finished: each is logged once a write-back covers it. A small
    // file's size can reach the disk before its bytes too (ext4 with dioread_nolock commits
    // the size as the write-back is submitted, the written extent when it completes).
    if buf.writes.iter().any(|w| w.inline) {
        let ticket = t.syncs.ticket();
        for w in buf.writes.iter().filter(|w| w.inline) {
            let version = version_of(t, w.entry, &w.io.fd)?;
            cx.finished
                .push(t.paths[w.entry.index()].clone(), version, ticket);
        }
        log_finished(cx)?;
    }
    for i in 0..buf.writes.len() {
        if buf.writes[i].inline {
            continue;
        }
        buf.pending += 1;
        submit_write(ring, buf, b, i)?;
    }
    if buf.pending == 0 {
        buf.writes.clear();
        buf.state = State::Free;
    }
    Ok(false)
}

/// Ok while this worker's fence (if any) lets it write; marks it fenced otherwise.
fn fence(cx: &mut Ctx<'_>) -> Result<()> {
    let ok = super::fence::fence_ok(cx.fence);
    cx.fenced |= ok.is_err();
    ok
}

/// The writes of a Data frame for `len` bytes of `entry` at `offset`, checked against what the
/// session asked for.
fn data_writes(
    buf: &mut Buf,
    entry: EntryId,
    offset: u64,
    len: usize,
    cx: &mut Ctx<'_>,
) -> Result<()> {
    let t = cx.t;
    if !t.is_needed_extent_file(entry) {
        return Err(Error::Verify(format!(
            "Data frame for entry {} which this session does not transfer",
            entry.0
        )));
    }
    let size = t.needed_size(entry).unwrap_or(0);
    let inside = offset
        .checked_add(len as u64)
        .is_some_and(|end| end <= size);
    if len == 0 || !inside || !t.allows(entry, offset, len as u64) {
        return Err(Error::Verify(format!(
            "Data frame for {} at offset {offset} len {len} runs past its size {size} or \
             outside its delta",
            show(&t.paths[entry.index()]),
        )));
    }
    if !t.claims.claim(entry, offset, len as u64) {
        return Err(Error::Verify(format!(
            "Data frame for {} at offset {offset} len {len} overlaps bytes already received",
            show(&t.paths[entry.index()]),
        )));
    }
    let fds = match &cx.cache {
        Some(c) if c.entry == entry => c.clone(),
        _ => {
            let c = open_extent_file(t, entry, size, &mut cx.direct_ok)?;
            cx.cache = Some(c.clone());
            c
        }
    };
    // The block-aligned head goes O_DIRECT straight from the buffer; an unaligned tail (end of
    // file) goes through the page cache.
    let aligned = match &fds.direct {
        Some(_) if offset.is_multiple_of(BUF_ALIGN as u64) => len & !(BUF_ALIGN - 1),
        _ => 0,
    };
    if let (Some(d), true) = (&fds.direct, aligned > 0) {
        buf.writes.push(WriteOp {
            io: Transfer::new(d.clone(), offset, DATA_OFF, aligned),
            entry,
            inline: false,
        });
    }
    if aligned < len {
        let tail = Transfer::new(
            fds.buffered.clone(),
            offset + aligned as u64,
            DATA_OFF + aligned,
            len - aligned,
        );
        buf.writes.push(WriteOp {
            io: tail,
            entry,
            inline: false,
        });
    }
    debug_assert!(buf.writes.len() <= WRITES_PER_FRAME);
    Ok(())
}

/// Open fds of the extent file a worker is currently writing.
#[derive(Clone)]
struct ExtentFds {
    entry: EntryId,
    direct: Option<OpFd>,
    buffered: OpFd,
}

fn open_extent_file(
    t: &RecvTable,
    entry: EntryId,
    size: u64,
    direct_ok: &mut bool,
) -> Result<ExtentFds> {
    let p = &t.paths[entry.index()];
    let open = |extra: OFlags| {
        beneath::open_file(t.root.as_fd(), p, OFlags::WRONLY | extra, Mode::empty())
            .ctx(|| format!("opening {} for writing", show(p)))
    };
    // Opened by path, twice: each must be the file the apply phase created or checked.
    let Some(file) = t.files.get(&entry.0).copied() else {
        return Err(Error::Corrupt(format!(
            "the session table names no file for {}",
            show(p)
        )));
    };
    let buffered = Rc::new(open(OFlags::empty())?);
    file.check(buffered.as_fd(), p)?;
    let mut direct = None;
    if *direct_ok && size >= DIRECT_WRITE_MIN {
        match open(OFlags::DIRECT) {
            Ok(fd) => {
                file.check(fd.as_fd(), p)?;
                direct = Some(Rc::new(fd))
            }
            // The file system refuses O_DIRECT (tmpfs): buffered from now on.
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                *direct_ok = false
            }
            Err(e) => return Err(e),
        }
    }
    Ok(ExtentFds {
        entry,
        direct,
        buffered,
    })
}

fn submit_write(ring: &mut Uring, buf: &Buf, b: usize, i: usize) -> Result<()> {
    ring.transfer(Dir::Write, &buf.writes[i].io, b, tag(OP_WRITE, i))
        .ctx(|| "submitting write".to_string())
}

fn on_write(
    ring: &mut Uring,
    buf: &mut Buf,
    b: usize,
    i: usize,
    res: i32,
    cx: &mut Ctx<'_>,
) -> Result<()> {
    let t = cx.t;
    let w = &mut buf.writes[i];
    if res <= 0 {
        return Err(write_failed(t, w.entry, -res));
    }
    w.io.done += res as usize;
    cx.progress.fetch_add(res as u64, Ordering::Relaxed);
    if w.io.done < w.io.len {
        return submit_write(ring, buf, b, i);
    }
    // Inline files are written by `write_inline`, never through the ring.
    debug_assert!(!w.inline);
    let finished = t.written(w.entry, w.io.len as u64, w.io.fd.as_fd())?;
    let (entry, off, len, fd) = (w.entry, w.io.file_off, w.io.len as u64, w.io.fd.clone());
    note_written(ring, cx, entry, (off, len), &fd, finished)?;
    log_finished(cx)?;
    buf.pending -= 1;
    if buf.pending == 0 {
        buf.writes.clear();
        buf.state = State::Free;
    }
    Ok(())
}

/// Counts a completed write of large file `entry` towards its next flush: a file finished
/// needs none (it waits, whole, for a write-back to cover it: `resume::Finished`); one
/// unfinished is flushed and logged every `checkpoint_bytes`, and when the worker moves on to
/// another file.
fn note_written(
    ring: &mut Uring,
    cx: &mut Ctx<'_>,
    entry: EntryId,
    (off, len): (u64, u64),
    fd: &OpFd,
    finished: bool,
) -> Result<()> {
    if cx.pending.as_ref().is_some_and(|p| p.entry != entry) {
        flush(ring, cx)?;
        // With every flush slot busy the other file's ranges are dropped: it is resent whole
        // if the job is interrupted, as without resumption.
        cx.pending = None;
    }
    let t = cx.t;
    if finished {
        // Its unflushed ranges go: the whole file is logged once a write-back covers it.
        let version = match cx.pending.take() {
            Some(p) => p.version,
            None => version_of(t, entry, fd)?,
        };
        let ticket = t.syncs.ticket();
        cx.finished
            .push(t.paths[entry.index()].clone(), version, ticket);
        return Ok(());
    }
    if cx.pending.is_none() {
        cx.pending = Some(Pending {
            fd: fd.clone(),
            entry,
            path: t.paths[entry.index()].clone(),
            version: version_of(t, entry, fd)?,
            ranges: Vec::new(),
            bytes: 0,
        });
    }
    let Some(p) = cx.pending.as_mut() else {
        unreachable!("pending set above")
    };
    p.add(off, len);
    if p.bytes >= t.checkpoint_bytes {
        flush(ring, cx)?;
    }
    Ok(())
}

/// The version of file `entry` being written through `fd`.
fn version_of(t: &RecvTable, entry: EntryId, fd: &OpFd) -> Result<Version> {
    let e = &t.entries[entry.index()];
    let size = t.needed_size(entry).unwrap_or(0);
    let mtime = (e.meta.mtime_sec, e.meta.mtime_nsec);
    resume::version_at(fd.as_fd(), b"", size, mtime)
        .ctx(|| format!("stat {}", show(&t.paths[entry.index()])))
}

/// Logs the finished files a write-back round has covered since (resume.rs).
fn log_finished(cx: &mut Ctx<'_>) -> Result<()> {
    if !cx.finished.any_covered(&cx.t.syncs) {
        return Ok(());
    }
    // The log is in the shared target's journal: a write like any other.
    fence(cx)?;
    cx.finished.log_covered(&mut cx.log, &cx.t.syncs)
}

/// Starts an fdatasync of the pending file; its ranges are logged when it completes. With
/// every flush slot busy the ranges stay pending (and grow) until one frees.
fn flush(ring: &mut Uring, cx: &mut Ctx<'_>) -> Result<()> {
    fence(cx)?;
    let Some(k) = cx.flushing.iter().position(Option::is_none) else {
        return Ok(());
    };
    let Some(p) = cx.pending.take() else {
        return Ok(());
    };
    if p.ranges.is_empty() {
        return Ok(());
    }
    ring.datasync(&p.fd, tag(OP_SYNC, k))
        .ctx(|| "submitting fdatasync".to_string())?;
    cx.flushing[k] = Some(p);
    Ok(())
}

fn on_flushed(k: usize, res: i32, cx: &mut Ctx<'_>) -> Result<()> {
    let Some(p) = cx.flushing.get_mut(k).and_then(Option::take) else {
        unreachable!("flush completion for an idle slot {k}")
    };
    if res < 0 {
        return Err(Error::Io {
            context: format!("flushing {}", show(&p.path)),
            source: std::io::Error::from_raw_os_error(-res),
        });
    }
    // The log is in the shared target's journal: a write like any other.
    fence(cx)?;
    resume::log_batch(&mut cx.log, p)
}

/// Writes inline file `w` whole from `data` (the frame's buffer) with `pwrite`.
fn write_inline(data: &[u8], w: &WriteOp, cx: &mut Ctx<'_>) -> Result<()> {
    debug_assert!(w.inline && w.io.done == 0);
    let mut done = 0;
    // Each round writes at least one byte or fails, so this ends within `len` rounds.
    while done < w.io.len {
        let from = w.io.buf_off + done;
        let part = &data[from..w.io.buf_off + w.io.len];
        match rustix::io::pwrite(w.io.fd.as_fd(), part, (w.io.file_off + done as u64) as _) {
            Ok(n) if n > 0 => done += n,
            Err(e) if e == rustix::io::Errno::INTR => {}
            Ok(_) => return Err(write_failed(cx.t, w.entry, 0)),
            Err(e) => return Err(write_failed(cx.t, w.entry, e.raw_os_error())),
        }
    }
    cx.progress.fetch_add(done as u64, Ordering::Relaxed);
    Ok(())
}

/// The error of a write of `entry` that failed with errno `code` (0: it wrote nothing, EIO).
/// A disk-full error keeps its errno: the session adds the free space and reverts the job
/// (space.rs), which it recognises by ENOSPC.
fn write_failed(t: &RecvTable, entry: EntryId, code: i32) -> Error {
    let code = if code == 0 { libc::EIO } else { code };
    Error::Io {
        context: format!("writing {}", show(&t.paths[entry.index()])),
        source: std::io::Error::from_raw_os_error(code),
    }
}

fn finish_inline(w: &WriteOp, t: &RecvTable) -> Result<()> {
    let e = &t.entries[w.entry.index()];
    apply_new_file(
        w.io.fd.as_fd(),
        e,
        t.owners,
        t.owner_is_default(w.entry),
        t.umask,
    )
    .ctx(|| format!("setting metadata of {}", show(&t.paths[w.entry.index()])))?;
    t.check(w.entry, w.io.fd.as_fd());
    Ok(())
}
