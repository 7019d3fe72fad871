//! One receiver worker: pinned, owns an io_uring, registered buffers and one accepted
//! connection. Frames are received straight into a registered buffer (header, then payload),
//! verified against their checksum, and only then written to files with io_uring writes from
//! the same buffer. Several buffers let writes run while the next frame is received.

use super::meta::apply_new_file;
use super::table::RecvTable;
use crate::beneath;
use crate::engine::ring::{Uring, BUF_ALIGN, STALL_TIMEOUT};
use crate::engine::{split_user_data, user_data, FrameStats};
use crate::error::{show, Error, IoContext, Result};
use crate::units::EntryId;
use crate::wire::frame::{FrameHeader, FrameKind, FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD};
use crate::wire::message::{
    decode_batch, decode_data_prefix, decode_message, decode_worker_done, DATA_PREFIX_LEN,
};
use crate::wire::WireError;
use io_uring::{opcode, types};
use rustix::fs::{Mode, OFlags};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
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
const RING_ENTRIES: u32 = 2048;

/// Bound on completion rounds while draining after a failure (each reaps at least one).
const DRAIN_ROUNDS: usize = 4096;
const OP_RECV: u64 = 1;
const OP_WRITE: u64 = 2;

struct WriteOp {
    fd: Rc<OwnedFd>,
    entry: EntryId,
    file_off: u64,
    buf_off: usize,
    len: usize,
    done: usize,
    /// Inline files get their metadata and are closed once written.
    inline: bool,
}

#[derive(PartialEq, Eq, Debug, Clone, Copy)]
enum State {
    Free,
    /// Receiving the header (payload_len None) or the payload.
    Receiving {
        payload: Option<(FrameHeader, usize)>,
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
    pub cpu: Option<hw::CpuId>,
    pub table: Arc<RecvTable>,
    pub sock: std::net::TcpStream,
    pub progress: Arc<AtomicU64>,
}

impl RecvWorker {
    pub fn run(self) -> Result<FrameStats> {
        if let Some(cpu) = self.cpu {
            hw::pin_current_thread(cpu)
                .map_err(|e| Error::Usage(format!("pinning worker to CPU {}: {e}", cpu.0)))?;
        }
        let mut ring =
            Uring::new(RING_ENTRIES, BUFFERS, BUF_SIZE).ctx(|| "creating io_uring".to_string())?;
        let sock = self.sock.as_raw_fd();
        let t = &*self.table;
        let mut bufs: Vec<Buf> = (0..BUFFERS)
            .map(|_| Buf {
                state: State::Free,
                writes: Vec::new(),
                pending: 0,
            })
            .collect();
        let mut stats = FrameStats::default();
        let mut receiving: Option<usize> = None;
        let mut done = false;
        let mut cache: Option<ExtentFds> = None;
        let mut direct_ok = true;
        let result = (|| -> Result<()> {
            loop {
                if receiving.is_none() && !done {
                    if let Some(b) = bufs.iter().position(|b| b.state == State::Free) {
                        bufs[b].state = State::Receiving {
                            payload: None,
                            got: 0,
                        };
                        submit_recv(&mut ring, &bufs[b], b, sock)?;
                        receiving = Some(b);
                    }
                }
                if ring.inflight == 0 {
                    if done {
                        return Ok(());
                    }
                    // Invariant: not done and nothing in flight means a free buffer was available
                    // and a receive was just submitted.
                    unreachable!("receiver worker idle with nothing in flight");
                }
                let cqes: Vec<(u64, i32)> = ring
                    .reap_within(1, STALL_TIMEOUT)
                    .ctx(|| "waiting for the peer and the disk".to_string())?
                    .to_vec();
                for (u, res) in cqes {
                    let (op, b, idx) = split_user_data(u);
                    match op {
                        OP_RECV => {
                            if res < 0 {
                                let e = std::io::Error::from_raw_os_error(-res);
                                return Err(Error::Io {
                                    context: "receiving from sender".into(),
                                    source: e,
                                });
                            }
                            if res == 0 {
                                return Err(Error::Peer(
                                    "sender closed a data connection mid-stream".into(),
                                ));
                            }
                            stats.wire_bytes += res as u64;
                            let State::Receiving { payload, got } = bufs[b].state else {
                                unreachable!("recv completion for a buffer not receiving")
                            };
                            let got = got + res as usize;
                            let want = payload.map(|(h, _)| h.len as usize).unwrap_or(0)
                                + FRAME_HEADER_LEN;
                            bufs[b].state = State::Receiving { payload, got };
                            if got < want {
                                submit_recv(&mut ring, &bufs[b], b, sock)?;
                                continue;
                            }
                            match payload {
                                None => {
                                    // SAFETY: the header recv into buffer b completed; nothing in flight.
                                    let s = unsafe { ring.slab().slice(b) };
                                    let mut h = [0u8; FRAME_HEADER_LEN];
                                    h.copy_from_slice(&s[BASE..BASE + FRAME_HEADER_LEN]);
                                    let h = FrameHeader::decode(&h)?;
                                    bufs[b].state = State::Receiving {
                                        payload: Some((h, 0)),
                                        got,
                                    };
                                    if h.len == 0 {
                                        receiving = None;
                                        done |= on_frame(
                                            &mut ring,
                                            &mut bufs[b],
                                            b,
                                            h,
                                            t,
                                            &mut stats,
                                            &mut cache,
                                            &mut direct_ok,
                                        )?;
                                    } else {
                                        submit_recv(&mut ring, &bufs[b], b, sock)?;
                                    }
                                }
                                Some((h, _)) => {
                                    receiving = None;
                                    done |= on_frame(
                                        &mut ring,
                                        &mut bufs[b],
                                        b,
                                        h,
                                        t,
                                        &mut stats,
                                        &mut cache,
                                        &mut direct_ok,
                                    )?;
                                }
                            }
                        }
                        OP_WRITE => {
                            on_write(&mut ring, &mut bufs[b], b, idx, res, t, &self.progress)?
                        }
                        _ => unreachable!("unknown op in user_data {u:#x}"),
                    }
                }
            }
        })();
        if result.is_err() {
            // Unblock a pending recv so the ring drains promptly.
            let _ = rustix::net::shutdown(&self.sock, rustix::net::Shutdown::Both);
            // Let writes already submitted land and count: a file whose last bytes were in
            // flight is then finished (metadata set), and a resumed job does not resend it.
            let mut rounds = 0;
            while ring.inflight > 0 && rounds < DRAIN_ROUNDS {
                rounds += 1;
                let Ok(cqes) = ring.reap_within(1, STALL_TIMEOUT).map(|c| c.to_vec()) else {
                    break;
                };
                for (u, res) in cqes {
                    let (op, b, idx) = split_user_data(u);
                    if op == OP_WRITE
                        && bufs[b].state == State::Writing
                        && on_write(&mut ring, &mut bufs[b], b, idx, res, t, &self.progress)
                            .is_err()
                    {
                        bufs[b].state = State::Free;
                    }
                }
            }
        }
        drop(ring);
        result.map(|()| stats)
    }
}

fn submit_recv(ring: &mut Uring, buf: &Buf, b: usize, sock: RawFd) -> Result<()> {
    let State::Receiving { payload, got } = buf.state else {
        unreachable!("submit_recv on idle buffer")
    };
    let want = FRAME_HEADER_LEN + payload.map(|(h, _)| h.len as usize).unwrap_or(0);
    debug_assert!(got < want && BASE + want <= BUF_SIZE);
    // SAFETY: [BASE + got, BASE + want) lies inside buffer b (BASE + want <= BUF_SIZE because the
    // header was bounds checked against MAX_FRAME_PAYLOAD); the buffer is untouched until this
    // CQE arrives.
    let dst = unsafe { ring.slab().ptr(b).add(BASE + got) };
    let sqe = opcode::Recv::new(types::Fd(sock), dst, (want - got) as u32)
        .flags(libc::MSG_WAITALL)
        .build()
        .user_data(user_data(OP_RECV, b, 0));
    // SAFETY: see above; the socket is owned by the worker and outlives the ring.
    unsafe { ring.push(&sqe) }.ctx(|| "submitting recv".to_string())
}

/// A whole frame is in buffer b. Verifies it and starts its writes; returns true on WorkerDone.
#[allow(clippy::too_many_arguments)] // the worker's state, split so buffers can be borrowed apart
fn on_frame(
    ring: &mut Uring,
    buf: &mut Buf,
    b: usize,
    h: FrameHeader,
    t: &RecvTable,
    stats: &mut FrameStats,
    cache: &mut Option<ExtentFds>,
    direct_ok: &mut bool,
) -> Result<bool> {
    // SAFETY: the payload recv completed; no operation refers to buffer b.
    let s = unsafe { ring.slab().slice(b) };
    let payload = &s[BASE + FRAME_HEADER_LEN..BASE + FRAME_HEADER_LEN + h.len as usize];
    h.verify(payload)?;
    buf.writes.clear();
    match h.kind {
        FrameKind::WorkerDone => {
            let (frames, bytes) = decode_worker_done(payload)?;
            if frames != stats.frames || bytes != stats.data_bytes {
                return Err(Error::Verify(format!(
                    "worker stream ended with {frames} frames / {bytes} bytes announced, {} / {} received",
                    stats.frames, stats.data_bytes
                )));
            }
            buf.state = State::Free;
            return Ok(true);
        }
        FrameKind::Error => return Err(Error::Peer(decode_message(payload)?)),
        FrameKind::Data => {
            let (entry, offset, data) = decode_data_prefix(payload)?;
            if !t.is_needed_extent_file(entry) {
                return Err(Error::Verify(format!(
                    "Data frame for entry {} which this session does not transfer",
                    entry.0
                )));
            }
            let size = t.needed_size(entry).unwrap_or(0);
            if data.is_empty()
                || offset
                    .checked_add(data.len() as u64)
                    .is_none_or(|end| end > size)
                || !t.allows(entry, offset, data.len() as u64)
            {
                return Err(Error::Verify(format!(
                    "Data frame for {} at offset {offset} len {} runs past its size {size} or outside its delta",
                    show(&t.paths[entry.index()]),
                    data.len()
                )));
            }
            let fds = match cache {
                Some(c) if c.entry == entry => c.clone(),
                _ => {
                    let c = open_extent_file(t, entry, size, direct_ok)?;
                    *cache = Some(c.clone());
                    c
                }
            };
            // The block-aligned head goes O_DIRECT straight from the buffer; an unaligned tail
            // (end of file) goes through the page cache.
            let aligned = match &fds.direct {
                Some(_) if offset % BUF_ALIGN as u64 == 0 => data.len() & !(BUF_ALIGN - 1),
                _ => 0,
            };
            if let (Some(d), true) = (&fds.direct, aligned > 0) {
                buf.writes.push(WriteOp {
                    fd: d.clone(),
                    entry,
                    file_off: offset,
                    buf_off: DATA_OFF,
                    len: aligned,
                    done: 0,
                    inline: false,
                });
            }
            if aligned < data.len() {
                let op = WriteOp {
                    fd: fds.buffered.clone(),
                    entry,
                    file_off: offset + aligned as u64,
                    buf_off: DATA_OFF + aligned,
                    len: data.len() - aligned,
                    done: 0,
                    inline: false,
                };
                buf.writes.push(op);
            }
        }
        FrameKind::FileBatch => {
            for (entry, range) in decode_batch(payload)? {
                if !t.is_needed_inline(entry) || t.needed_size(entry) != Some(range.len() as u64) {
                    return Err(Error::Verify(format!(
                        "FileBatch record for entry {} does not match the entry list",
                        entry.0
                    )));
                }
                let p = &t.paths[entry.index()];
                // O_EXCL: the control phase removed whatever stood here; anything there now was
                // planted mid-session and is not written through.
                let mode = t.entries[entry.index()].meta.mode & 0o777;
                let fd = beneath::open_file(
                    t.root.as_fd(),
                    p,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                    Mode::from_raw_mode(mode),
                )
                .ctx(|| format!("creating {}", show(p)))?;
                let op = WriteOp {
                    fd: Rc::new(fd),
                    entry,
                    file_off: 0,
                    buf_off: BASE + FRAME_HEADER_LEN + range.start,
                    len: range.len(),
                    done: 0,
                    inline: true,
                };
                buf.writes.push(op);
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
    stats.frames += 1;
    stats.data_bytes += buf.writes.iter().map(|w| w.len as u64).sum::<u64>();
    stats.checksums.push(h.checksum);
    buf.pending = 0;
    buf.state = State::Writing;
    for i in 0..buf.writes.len() {
        if buf.writes[i].len == 0 {
            finish_inline(&buf.writes[i], t)?;
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

/// Open fds of the extent file a worker is currently writing.
#[derive(Clone)]
struct ExtentFds {
    entry: EntryId,
    direct: Option<Rc<OwnedFd>>,
    buffered: Rc<OwnedFd>,
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
    let buffered = Rc::new(open(OFlags::empty())?);
    let mut direct = None;
    if *direct_ok && size >= DIRECT_WRITE_MIN {
        match open(OFlags::DIRECT) {
            Ok(fd) => direct = Some(Rc::new(fd)),
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
    let w = &buf.writes[i];
    // SAFETY: the source range lies in buffer b (validated against the frame length); the buffer
    // stays in state Writing, untouched, until every write's CQE has arrived.
    let src = unsafe { ring.slab().ptr(b).add(w.buf_off + w.done) };
    let n = (w.len - w.done) as u32;
    let off = w.file_off + w.done as u64;
    let fd = types::Fd(w.fd.as_raw_fd());
    let sqe = if ring.fixed {
        opcode::WriteFixed::new(fd, src, n, b as u16)
            .offset(off)
            .build()
    } else {
        opcode::Write::new(fd, src, n).offset(off).build()
    };
    // SAFETY: see above; the fd is kept open by the Rc in buf.writes until the buffer is freed.
    unsafe { ring.push(&sqe.user_data(user_data(OP_WRITE, b, i))) }
        .ctx(|| "submitting write".to_string())
}

fn on_write(
    ring: &mut Uring,
    buf: &mut Buf,
    b: usize,
    i: usize,
    res: i32,
    t: &RecvTable,
    progress: &AtomicU64,
) -> Result<()> {
    let w = &mut buf.writes[i];
    if res <= 0 {
        let p = show(&t.paths[w.entry.index()]);
        let code = if res == 0 { libc::EIO } else { -res };
        let e = std::io::Error::from_raw_os_error(code);
        // A disk-full error keeps its errno: the session adds the free space and reverts the job
        // (space.rs), which it recognises by ENOSPC.
        return Err(Error::Io {
            context: format!("writing {p}"),
            source: e,
        });
    }
    w.done += res as usize;
    progress.fetch_add(res as u64, Ordering::Relaxed);
    if w.done < w.len {
        return submit_write(ring, buf, b, i);
    }
    if w.inline {
        finish_inline(w, t)?;
    } else {
        t.written(w.entry, w.len as u64, w.fd.as_fd())?;
    }
    buf.pending -= 1;
    if buf.pending == 0 {
        buf.writes.clear();
        buf.state = State::Free;
    }
    Ok(())
}

fn finish_inline(w: &WriteOp, t: &RecvTable) -> Result<()> {
    let e = &t.entries[w.entry.index()];
    apply_new_file(
        w.fd.as_fd(),
        e,
        t.owners,
        t.owner_is_default(w.entry),
        t.umask,
    )
    .ctx(|| format!("setting metadata of {}", show(&t.paths[w.entry.index()])))
}
