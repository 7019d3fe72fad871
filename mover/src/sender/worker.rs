//! One sender worker: pinned to a CPU, owns an io_uring, a slab of registered buffers and one
//! TCP connection. It reads its units (planned up front, no shared queue) into buffers with
//! several reads in flight, checksums each frame and streams it with io_uring sends.
//!
//! Buffer layout for a Data frame (data aligned for O_DIRECT):
//! `[.. pad ..][header 16][entry 4][offset 8][data at HEADROOM ..]`
//! For a FileBatch frame: `[header 16][count 4]([entry 4][len 4][data])*`.

use super::plan::Unit;
use crate::beneath;
use crate::engine::ring::{Uring, BUF_ALIGN, STALL_TIMEOUT};
use crate::engine::{split_user_data, user_data, FrameStats};
use crate::error::{show, Error, IoContext, Result};
use crate::units::{EntryId, WorkerIndex};
use crate::wire::frame::{FrameHeader, FrameKind, DATA_CHUNK, FRAME_HEADER_LEN};
use crate::wire::message::{BATCH_PREFIX_LEN, BATCH_RECORD_HEADER, DATA_PREFIX_LEN};
use io_uring::{opcode, types};
use rustix::fs::{Mode, OFlags};
use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Space in front of the data so the frame header and Data prefix fit while the data itself
/// starts on an O_DIRECT-aligned address.
const HEADROOM: usize = BUF_ALIGN;
pub const BUF_SIZE: usize = HEADROOM + DATA_CHUNK;
/// Buffers per worker: reads for many frames in flight while one frame is being sent. Measured
/// on the development VM's virtio disk: 8 -> 16 -> 32 buffers took a 2 GiB O_DIRECT send from
/// ~3.3 s to ~2.4 s (the device wants a deep queue).
pub const BUFFERS: usize = 32;
/// FileBatch buffers reading at once: each holds up to SEND_BATCH_MAX_FILES open files, so this
/// bounds the worker's open fds (8 x 128) whatever BUFFERS is.
const MAX_BATCH_BUFFERS_READING: usize = 8;
const RING_ENTRIES: u32 = 4096;
/// Files at least this large are read with O_DIRECT (when the file system allows): the data
/// is streamed once, so filling the page cache with it only evicts useful pages.
const DIRECT_MIN_SIZE: u64 = 8 * 1024 * 1024;

const OP_READ: u64 = 1;
const OP_SEND: u64 = 2;

pub struct SendTable {
    pub root: OwnedFd,
    pub paths: Vec<Vec<u8>>,
    pub sizes: Vec<u64>,
}

struct ReadOp {
    fd: Rc<OwnedFd>,
    entry: EntryId,
    file_off: u64,
    buf_off: usize,
    /// Bytes wanted, and bytes asked of the kernel (rounded up for O_DIRECT).
    len: usize,
    ask: usize,
    done: usize,
}

#[derive(PartialEq, Eq, Debug)]
enum State {
    Free,
    Reading,
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
    /// Files the frame completes (progress).
    files: u64,
    /// Frame checksum, set once the reads are in (for the session's content digest).
    checksum: u64,
}

pub struct SendWorker {
    pub index: WorkerIndex,
    pub cpu: Option<hw::CpuId>,
    pub table: Arc<SendTable>,
    pub units: Vec<Unit>,
    pub sock: std::net::TcpStream,
    pub direct: bool,
    /// Counters (bytes and files sent) and the controller's gate (pause, abort, rate limit),
    /// looked at once per chunk.
    pub progress: Arc<crate::Progress>,
    /// Hash each 4 KiB block of Data frames for the manifest (saves re-reading sent files).
    pub hash_blocks: bool,
}

struct Cached {
    entry: EntryId,
    fd: Rc<OwnedFd>,
    direct: bool,
}

impl SendWorker {
    pub fn run(self) -> Result<FrameStats> {
        if let Some(cpu) = self.cpu {
            hw::pin_current_thread(cpu)
                .map_err(|e| Error::Usage(format!("pinning worker to CPU {}: {e}", cpu.0)))?;
        }
        let mut ring =
            Uring::new(RING_ENTRIES, BUFFERS, BUF_SIZE).ctx(|| "creating io_uring".to_string())?;
        let sock = self.sock.as_raw_fd();
        let mut bufs: Vec<Buf> = (0..BUFFERS)
            .map(|_| Buf {
                state: State::Free,
                pending: 0,
                reads: Vec::new(),
                kind: FrameKind::Data,
                frame_start: 0,
                frame_end: 0,
                sent: 0,
                data_bytes: 0,
                files: 0,
                checksum: 0,
            })
            .collect();
        let mut stats = FrameStats::default();
        let mut ready: VecDeque<usize> = VecDeque::new();
        let mut sending = false;
        let mut units = self.units.into_iter().peekable();
        let mut more = true;
        let mut cache: Option<Cached> = None;
        let mut direct_ok = self.direct;

        loop {
            // Chunk boundary: the controller may pause, abort or throttle the job here.
            let mut gate = self.progress.control.gate();
            if gate == crate::Gate::Cancel {
                return Err(Error::Cancelled("stopped at a chunk boundary".into()));
            }
            while more && gate == crate::Gate::Go {
                let Some(b) = bufs.iter().position(|b| b.state == State::Free) else {
                    break;
                };
                if matches!(units.peek(), Some(Unit::Batch { .. })) {
                    let reading = bufs
                        .iter()
                        .filter(|x| x.state == State::Reading && x.kind == FrameKind::FileBatch)
                        .count();
                    if reading >= MAX_BATCH_BUFFERS_READING {
                        break;
                    }
                }
                match units.next() {
                    Some(u) => {
                        self.progress.control.issue(u.data_bytes());
                        start_unit(
                            &mut ring,
                            &mut bufs[b],
                            b,
                            u,
                            &self.table,
                            &mut cache,
                            &mut direct_ok,
                        )?;
                    }
                    None => more = false,
                }
                if bufs[b].state == State::Ready {
                    ready.push_back(b);
                }
                gate = self.progress.control.gate();
            }
            if !sending {
                if let Some(&b) = ready.front() {
                    submit_send(&mut ring, &bufs[b], b, sock)?;
                    bufs[b].state = State::Sending;
                    sending = true;
                }
            }
            if ring.inflight == 0 {
                debug_assert!(ready.is_empty() && !sending);
                if !more {
                    break;
                }
                if let crate::Gate::Wait(d) = gate {
                    std::thread::sleep(d);
                }
                continue;
            }
            let cqes: Vec<(u64, i32)> = ring
                .reap_within(1, STALL_TIMEOUT)
                .ctx(|| "waiting for the peer and the disk".to_string())?
                .to_vec();
            for (u, res) in cqes {
                let (op, b, idx) = split_user_data(u);
                match op {
                    OP_READ => {
                        if on_read(&mut ring, &mut bufs[b], b, idx, res, &self.table)? {
                            finish_frame(&mut ring, &mut bufs[b], b)?;
                            if self.hash_blocks && bufs[b].kind == FrameKind::Data {
                                stats.block_hashes.extend(block_hashes(
                                    &mut ring,
                                    &bufs[b],
                                    b,
                                    &self.table,
                                ));
                            }
                            ready.push_back(b);
                        }
                    }
                    OP_SEND => {
                        let buf = &mut bufs[b];
                        if res <= 0 {
                            let e = std::io::Error::from_raw_os_error(if res == 0 {
                                libc::EPIPE
                            } else {
                                -res
                            });
                            return Err(Error::Io {
                                context: "sending to receiver".into(),
                                source: e,
                            });
                        }
                        buf.sent += res as usize;
                        stats.wire_bytes += res as u64;
                        if buf.sent < buf.frame_end - buf.frame_start {
                            submit_send(&mut ring, buf, b, sock)?;
                            continue;
                        }
                        stats.checksums.push(buf.checksum);
                        stats.frames += 1;
                        stats.data_bytes += buf.data_bytes;
                        self.progress
                            .bytes
                            .fetch_add(buf.data_bytes, Ordering::Relaxed);
                        self.progress.files.fetch_add(buf.files, Ordering::Relaxed);
                        buf.state = State::Free;
                        let front = ready.pop_front();
                        debug_assert_eq!(front, Some(b));
                        sending = false;
                    }
                    _ => unreachable!("unknown op in user_data {u:#x}"),
                }
            }
        }
        drop(ring);
        Ok(stats)
    }
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

fn start_unit(
    ring: &mut Uring,
    buf: &mut Buf,
    b: usize,
    unit: Unit,
    table: &SendTable,
    cache: &mut Option<Cached>,
    direct_ok: &mut bool,
) -> Result<()> {
    debug_assert_eq!(buf.state, State::Free);
    buf.reads.clear();
    buf.sent = 0;
    buf.data_bytes = unit.data_bytes();
    buf.files = unit.files_done();
    match unit {
        Unit::Chunk {
            entry, offset, len, ..
        } => {
            let want_direct = *direct_ok
                && table.sizes[entry.index()] >= DIRECT_MIN_SIZE
                && offset % BUF_ALIGN as u64 == 0;
            let reuse = matches!(cache, Some(c) if c.entry == entry && c.direct == want_direct);
            if !reuse {
                let fd = match open_for_read(table, entry, want_direct) {
                    Ok(fd) => (fd, want_direct),
                    // The file system refuses O_DIRECT: read buffered from now on.
                    Err(Error::Io { source, .. })
                        if want_direct && source.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        *direct_ok = false;
                        (open_for_read(table, entry, false)?, false)
                    }
                    Err(e) => return Err(e),
                };
                let st = rustix::fs::fstat(&fd.0)
                    .ctx(|| format!("stat {}", show(&table.paths[entry.index()])))?;
                if st.st_size as u64 != table.sizes[entry.index()] {
                    return Err(Error::SourceChanged(show(&table.paths[entry.index()])));
                }
                *cache = Some(Cached {
                    entry,
                    fd: Rc::new(fd.0),
                    direct: fd.1,
                });
            }
            let Some(c) = cache.as_ref() else {
                unreachable!("cache filled above")
            };
            let len = len as usize;
            let ask = if c.direct {
                len.div_ceil(BUF_ALIGN) * BUF_ALIGN
            } else {
                len
            };
            debug_assert!(HEADROOM + ask <= BUF_SIZE);
            buf.kind = FrameKind::Data;
            buf.frame_start = HEADROOM - DATA_PREFIX_LEN - FRAME_HEADER_LEN;
            buf.frame_end = HEADROOM + len;
            buf.reads.push(ReadOp {
                fd: c.fd.clone(),
                entry,
                file_off: offset,
                buf_off: HEADROOM,
                len,
                ask,
                done: 0,
            });
            // SAFETY: buffer b is Free, so nothing in flight touches it.
            let s = unsafe { ring.slab().slice_mut(b) };
            s[HEADROOM - DATA_PREFIX_LEN..HEADROOM - 8].copy_from_slice(&entry.0.to_le_bytes());
            s[HEADROOM - 8..HEADROOM].copy_from_slice(&offset.to_le_bytes());
        }
        Unit::Batch { files } => {
            buf.kind = FrameKind::FileBatch;
            buf.frame_start = 0;
            // SAFETY: buffer b is Free, so nothing in flight touches it.
            let s = unsafe { ring.slab().slice_mut(b) };
            let mut pos = FRAME_HEADER_LEN;
            s[pos..pos + BATCH_PREFIX_LEN].copy_from_slice(&(files.len() as u32).to_le_bytes());
            pos += BATCH_PREFIX_LEN;
            for (entry, size) in files {
                s[pos..pos + 4].copy_from_slice(&entry.0.to_le_bytes());
                s[pos + 4..pos + 8].copy_from_slice(&size.to_le_bytes());
                pos += BATCH_RECORD_HEADER;
                if size > 0 {
                    let fd = open_for_read(table, entry, false)?;
                    let len = size as usize;
                    buf.reads.push(ReadOp {
                        fd: Rc::new(fd),
                        entry,
                        file_off: 0,
                        buf_off: pos,
                        len,
                        ask: len,
                        done: 0,
                    });
                }
                pos += size as usize;
            }
            assert!(
                pos <= BUF_SIZE,
                "batch overflows its buffer: plan and buffer size disagree"
            );
            buf.frame_end = pos;
        }
    }
    buf.pending = buf.reads.len();
    if buf.pending == 0 {
        finish_frame(ring, buf, b)?;
        return Ok(());
    }
    buf.state = State::Reading;
    for i in 0..buf.reads.len() {
        submit_read(ring, buf, b, i)?;
    }
    Ok(())
}

fn submit_read(ring: &mut Uring, buf: &Buf, b: usize, i: usize) -> Result<()> {
    let r = &buf.reads[i];
    let fd = types::Fd(r.fd.as_raw_fd());
    // SAFETY: the destination lies inside buffer b (buf_off + ask <= BUF_SIZE, checked when the
    // unit was laid out); buffer b stays in state Reading, untouched, until this read's CQE.
    let dst = unsafe { ring.slab().ptr(b).add(r.buf_off + r.done) };
    let n = (r.ask - r.done) as u32;
    let off = r.file_off + r.done as u64;
    let sqe = if ring.fixed {
        opcode::ReadFixed::new(fd, dst, n, b as u16)
            .offset(off)
            .build()
    } else {
        opcode::Read::new(fd, dst, n).offset(off).build()
    };
    // SAFETY: dst is valid for n bytes until the CQE (see above); the fd is kept open by the Rc in
    // buf.reads, which is only cleared once all reads of the buffer completed.
    unsafe { ring.push(&sqe.user_data(user_data(OP_READ, b, i))) }
        .ctx(|| "submitting read".to_string())
}

/// Handles a read completion; returns true when the buffer's last read finished.
fn on_read(
    ring: &mut Uring,
    buf: &mut Buf,
    b: usize,
    i: usize,
    res: i32,
    table: &SendTable,
) -> Result<bool> {
    let r = &mut buf.reads[i];
    let path = || show(&table.paths[r.entry.index()]);
    if res < 0 {
        let e = std::io::Error::from_raw_os_error(-res);
        return Err(Error::Io {
            context: format!("reading {}", path()),
            source: e,
        });
    }
    if res == 0 && r.done < r.len {
        // EOF before the size the walk saw: the file shrank under us.
        return Err(Error::SourceChanged(path()));
    }
    r.done += res as usize;
    if r.done < r.len {
        if r.ask != r.len && !r.done.is_multiple_of(BUF_ALIGN) {
            return Err(Error::SourceChanged(path()));
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
    ring: &mut Uring,
    buf: &Buf,
    b: usize,
    table: &SendTable,
) -> Option<(EntryId, u64, Vec<u64>)> {
    const BLOCK: usize = super::manifest::BLOCK as usize;
    // SAFETY: the frame is finished (state Ready): no operation refers to buffer b until its
    // send is submitted, which happens after this returns.
    let s = unsafe { ring.slab().slice(b) };
    let payload = &s[buf.frame_start + FRAME_HEADER_LEN..buf.frame_end];
    let (entry, offset, data) = crate::wire::message::decode_data_prefix(payload).ok()?;
    if offset % BLOCK as u64 != 0 {
        return None;
    }
    // A short last block counts only at the end of the file (mid-file it would be a block
    // half data, half hole, whose hash covers all 4 KiB).
    let end = offset + data.len() as u64;
    let whole = if data.len() % BLOCK != 0 && table.sizes.get(entry.index()) != Some(&end) {
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
fn finish_frame(ring: &mut Uring, buf: &mut Buf, b: usize) -> Result<()> {
    buf.reads.clear();
    // SAFETY: every read into buffer b has completed; nothing in flight refers to it.
    let s = unsafe { ring.slab().slice_mut(b) };
    let payload = &s[buf.frame_start + FRAME_HEADER_LEN..buf.frame_end];
    let h = FrameHeader::for_payload(buf.kind, payload);
    buf.checksum = h.checksum;
    s[buf.frame_start..buf.frame_start + FRAME_HEADER_LEN].copy_from_slice(&h.encode());
    buf.state = State::Ready;
    Ok(())
}

fn submit_send(ring: &mut Uring, buf: &Buf, b: usize, sock: RawFd) -> Result<()> {
    let total = buf.frame_end - buf.frame_start;
    debug_assert!(buf.sent < total);
    // SAFETY: the range lies inside buffer b; the buffer is in state Sending and untouched until
    // the send's CQE arrives.
    let src = unsafe { ring.slab().ptr(b).add(buf.frame_start + buf.sent) };
    let sqe = opcode::Send::new(types::Fd(sock), src, (total - buf.sent) as u32)
        .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data(OP_SEND, b, 0));
    // SAFETY: see above; the socket outlives the ring (owned by the worker until it returns).
    unsafe { ring.push(&sqe) }.ctx(|| "submitting send".to_string())
}
