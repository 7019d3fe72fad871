//! One io_uring, the slab of buffers it reads into and writes from, and the one owner of every
//! operation in flight.
//!
//! Ownership rule: an operation holds its file descriptor (an `Rc<OwnedFd>` clone) and its
//! buffer from the moment it is queued until its completion has been reaped, or until `Drop`
//! has drained it. Workers never build submission entries themselves, so no worker can close
//! an fd, or touch or free a buffer, while the kernel may still use it:
//! - the fd of a queued or running operation stays open (its `Rc` lives in the slot table);
//! - a buffer is handed out as a slice only while no operation refers to it (`buf`, `buf_mut`
//!   assert it), and the borrow checker keeps that slice from outliving the next submission;
//! - the slab is freed only after every operation completed; if the ring cannot be drained its
//!   memory and fds are leaked instead.

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Buffers are aligned for O_DIRECT on any logical block size up to a page.
pub const BUF_ALIGN: usize = 4096;
/// A huge page on x86-64 and arm64 with 4 KiB pages: `SlabPages::Huge` mappings are a
/// multiple of it.
const HUGE_PAGE: usize = 2 << 20;
/// How long `Drop` waits for cancelled operations before giving up and leaking the slab.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// io-wq threads per ring for file I/O (see `Uring::new`).
const IOWQ_BOUNDED_WORKERS: u32 = 1;
/// A worker that sees no completion at all for this long reports its peer or disk as stalled
/// instead of waiting forever (a peer that stops reading but keeps its socket open).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// user_data of cancel requests; slot indices stay far below it.
const CANCEL_USER_DATA: u64 = u64::MAX;
/// Buffers per slab at most (buffer indices travel as u16 in fixed reads and writes; the
/// largest u16 means no buffer).
pub const MAX_BUFFERS: usize = u16::MAX as usize - 1;

/// A file descriptor an operation keeps open until it completes.
pub type OpFd = Rc<OwnedFd>;

/// `Completion::buf` of an operation that uses no buffer (a file sync).
pub const NO_BUF: usize = u16::MAX as usize;
const _: () = assert!(MAX_BUFFERS < NO_BUF);

/// A reaped completion: the caller's tag, the buffer the operation used (`NO_BUF` for none),
/// and the kernel's result (bytes, or a negated errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub tag: u64,
    pub buf: usize,
    pub result: i32,
}

/// A tag of operation kind `op` (the worker's own numbering) and index `idx` within its buffer.
pub fn tag(op: u32, idx: usize) -> u64 {
    debug_assert!(idx <= u32::MAX as usize);
    (u64::from(op) << 32) | idx as u64
}

impl Completion {
    /// The operation kind of a tag made by `tag`.
    pub fn op(&self) -> u32 {
        (self.tag >> 32) as u32
    }
    /// The index within its buffer of a tag made by `tag`.
    pub fn index(&self) -> usize {
        (self.tag & 0xffff_ffff) as usize
    }
}

/// Which way a file transfer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Read,
    Write,
}

/// A file read or write between `fd` at `file_off` and the buffer range starting at `buf_off`,
/// `len` bytes of which `done` have completed (a short completion is resubmitted from there).
/// The worker keeps it for resubmitting; the ring keeps its own reference to the fd while a
/// submission is in flight.
pub struct Transfer {
    pub fd: OpFd,
    pub file_off: u64,
    pub buf_off: usize,
    pub len: usize,
    pub done: usize,
    /// A buffered read that must not wait for the device (`RWF_NOWAIT`): it completes with
    /// what the page cache holds, or EAGAIN, and the caller reads the rest another way.
    pub nowait: bool,
}

impl Transfer {
    pub fn new(fd: OpFd, file_off: u64, buf_off: usize, len: usize) -> Transfer {
        Transfer {
            fd,
            file_off,
            buf_off,
            len,
            done: 0,
            nowait: false,
        }
    }
}

/// An address range of this process's memory (a slab), as a device registers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemSpan {
    pub addr: usize,
    pub len: usize,
}

impl MemSpan {
    /// Whether `buf` lies wholly inside the span.
    pub fn holds(&self, buf: &[u8]) -> bool {
        self.holds_range(buf.as_ptr() as usize, buf.len())
    }

    fn holds_range(&self, start: usize, len: usize) -> bool {
        start >= self.addr && start.saturating_add(len) <= self.addr.saturating_add(self.len)
    }
}

/// The pages a slab asks for.
///
/// Huge pages (MADV_HUGEPAGE, advice only) put a 1 MiB O_DIRECT read into one or two
/// physically contiguous runs instead of 256 pages, and registering the slab faults in about
/// 17 pages instead of about 8,300. Paired in the same minutes, the cold 1 GiB initial sync to
/// this VM's disk took 1.25 s against 1.32 s without this session's engine changes
/// (results/2026-12-05-engine-ab.md). But where the kernel compacts memory to find them on
/// request (transparent_hugepage/defrag = madvise, the default) a fault can stall for tens of
/// ms: a 20,000-small-file job took 0.31 or 0.44 s by turns. So only a sender worker that reads
/// files large enough for O_DIRECT asks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlabPages {
    Small,
    Huge,
}

pub struct Slab {
    ptr: NonNull<u8>,
    len: usize,
    buf_size: usize,
    count: usize,
}

impl Slab {
    /// Maps the slab anonymously rather than allocating it zeroed: the kernel hands out zeroed
    /// pages as they are first touched (or pinned, when the ring registers them), where a
    /// zeroed heap allocation of this alignment is written over once more by `memset` (a
    /// tenth of a small-file sender's CPU went there, for a 33 MiB slab per worker).
    fn new(count: usize, buf_size: usize, pages: SlabPages) -> io::Result<Slab> {
        assert!(
            count > 0 && count <= MAX_BUFFERS,
            "slab buffer count out of range"
        );
        assert!(
            buf_size > 0 && buf_size.is_multiple_of(BUF_ALIGN),
            "slab buffer size must be a positive multiple of BUF_ALIGN"
        );
        let buffers = count
            .checked_mul(buf_size)
            .ok_or_else(|| io::Error::other("slab size overflow"))?;
        // A whole number of huge pages, so the kernel places the mapping on a huge-page
        // boundary; the tail past the buffers is never used.
        let len = match pages {
            SlabPages::Small => buffers,
            SlabPages::Huge => buffers
                .checked_next_multiple_of(HUGE_PAGE)
                .ok_or_else(|| io::Error::other("slab size overflow"))?,
        };
        // SAFETY: a fresh private anonymous mapping of `len` (> 0) bytes names no existing
        // memory; its result is checked before use.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if pages == SlabPages::Huge {
            // SAFETY: advice on the mapping just made, over its exact range.
            let _ = unsafe { libc::madvise(raw, len, libc::MADV_HUGEPAGE) };
        }
        let ptr = NonNull::new(raw.cast::<u8>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // Mappings are page-aligned, which is what O_DIRECT needs of every buffer.
        debug_assert!((ptr.as_ptr() as usize).is_multiple_of(BUF_ALIGN));
        Ok(Slab {
            ptr,
            len,
            buf_size,
            count,
        })
    }

    /// Start of buffer `i`.
    fn ptr(&self, i: usize) -> *mut u8 {
        assert!(i < self.count, "buffer {i} out of range");
        // SAFETY: i < count, so the offset stays inside the allocation.
        unsafe { self.ptr.as_ptr().add(i * self.buf_size) }
    }

    fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count)
            .map(|i| libc::iovec {
                iov_base: self.ptr(i).cast(),
                iov_len: self.buf_size,
            })
            .collect()
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this exact length; `Uring::drop` guarantees the kernel
        // no longer references it (or forgets the slab instead of dropping it). munmap can
        // still fail (ENOMEM: splitting a merged mapping past vm.max_map_count); the slab is
        // then leaked, which is harmless.
        let rc = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        debug_assert_eq!(rc, 0, "unmapping the slab");
    }
}

/// What an in-flight operation owns until its completion.
struct Slot {
    /// Held, not read (but by the debug audit): it keeps the fd open until the completion.
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    fd: OpFd,
    buf: u16,
    tag: u64,
}

pub struct Uring {
    ring: IoUring,
    /// Option so that Drop can leak it if the kernel might still write into it.
    slab: Option<Slab>,
    /// Whether the slab is registered (ReadFixed/WriteFixed usable). Registration can fail
    /// under a small RLIMIT_MEMLOCK; the engine then uses plain Read/Write on the same memory.
    fixed: bool,
    /// In-flight operations by user_data; `free` lists the empty slots.
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// In-flight operations per buffer.
    busy: Vec<u16>,
    inflight: usize,
    /// Queued cancel requests whose completions have not been reaped.
    cancels: usize,
    /// Slots pushed since the last submit (checked by the debug audit before the kernel sees
    /// them).
    #[cfg(debug_assertions)]
    unsubmitted: Vec<(u32, (u64, u64))>,
}

impl Uring {
    /// A ring of `entries` submission slots (at most that many operations in flight) and a slab
    /// of `nbuf` buffers of `buf_size` bytes.
    pub fn new(entries: u32, nbuf: usize, buf_size: usize) -> io::Result<Uring> {
        Uring::with_pages(entries, nbuf, buf_size, SlabPages::Small)
    }

    /// `new`, with the slab's pages chosen (`SlabPages`).
    pub fn with_pages(
        entries: u32,
        nbuf: usize,
        buf_size: usize,
        pages: SlabPages,
    ) -> io::Result<Uring> {
        assert!(entries > 0 && entries.is_power_of_two(), "ring entries");
        // Room for every operation's completion plus a cancel per operation.
        let ring = IoUring::builder()
            .setup_cqsize(entries * 2)
            .build(entries)?;
        // Buffered file I/O that cannot complete inline is punted to io-wq threads. Unbounded,
        // several of them end up spinning on the same inode's i_rwsem; a small bound keeps the
        // file I/O of one worker in one or two kernel threads and leaves the CPUs to the rings.
        let mut max = [IOWQ_BOUNDED_WORKERS, 0];
        if let Err(e) = ring.submitter().register_iowq_max_workers(&mut max) {
            tracing::debug!("cannot bound io-wq workers: {e}");
        }
        let slab = Slab::new(nbuf, buf_size, pages)?;
        let iov = slab.iovecs();
        // SAFETY: the iovecs describe `slab`'s allocation, which outlives the registration: the
        // ring is dropped (and so unregistered) before the slab is freed, or the slab is leaked.
        let fixed = unsafe { ring.submitter().register_buffers(&iov) }.is_ok();
        if !fixed {
            tracing::warn!(
                "could not register io_uring buffers (RLIMIT_MEMLOCK?); using unregistered I/O"
            );
        }
        let cap = entries as usize;
        Ok(Uring {
            ring,
            slab: Some(slab),
            fixed,
            slots: Vec::with_capacity(cap),
            free: Vec::with_capacity(cap),
            busy: vec![0; nbuf],
            inflight: 0,
            cancels: 0,
            #[cfg(debug_assertions)]
            unsubmitted: Vec::new(),
        })
    }

    fn slab(&self) -> &Slab {
        match &self.slab {
            Some(s) => s,
            // Invariant: the slab is only taken in Drop.
            None => unreachable!("slab used after drop"),
        }
    }

    /// Where the slab lies: what a transport registers with its device so that frames go out
    /// of the slab without a copy (`Connection::send_from_region`). Only an address range: it
    /// grants no access to the buffers.
    pub fn slab_span(&self) -> MemSpan {
        let s = self.slab();
        MemSpan {
            addr: s.ptr.as_ptr() as usize,
            len: s.len,
        }
    }

    /// Buffers in the slab.
    pub fn buffers(&self) -> usize {
        self.busy.len()
    }

    /// Operations queued or running.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Whether an operation still refers to buffer `b`.
    pub fn is_busy(&self, b: usize) -> bool {
        self.busy[b] != 0
    }

    /// Buffer `b`, which no operation may be using.
    pub fn buf(&self, b: usize) -> &[u8] {
        assert!(
            !self.is_busy(b),
            "buffer {b} read while an operation uses it"
        );
        let s = self.slab();
        // SAFETY: no in-flight operation refers to buffer b (asserted above), and none can be
        // queued while this shared borrow of the ring lives (queueing takes `&mut self`).
        unsafe { std::slice::from_raw_parts(s.ptr(b), s.buf_size) }
    }

    /// Buffer `b` for writing, which no operation may be using.
    pub fn buf_mut(&mut self, b: usize) -> &mut [u8] {
        assert!(
            !self.is_busy(b),
            "buffer {b} written while an operation uses it"
        );
        let s = self.slab();
        // SAFETY: as in `buf`; the exclusive borrow of the ring makes this the only slice.
        unsafe { std::slice::from_raw_parts_mut(s.ptr(b), s.buf_size) }
    }

    /// Queues the rest of file transfer `t` (from `t.done` on) between its fd and buffer `b`.
    pub fn transfer(&mut self, dir: Dir, t: &Transfer, b: usize, tag: u64) -> io::Result<()> {
        debug_assert!(t.done < t.len, "transfer already complete");
        let (ptr, len) = self.span(b, &(t.buf_off + t.done..t.buf_off + t.len));
        let off = t.file_off + t.done as u64;
        let fd = types::Fd(t.fd.as_raw_fd());
        let idx = b as u16;
        debug_assert!(!t.nowait || dir == Dir::Read, "RWF_NOWAIT is for reads");
        let rw_flags = if t.nowait { libc::RWF_NOWAIT } else { 0 };
        let sqe = match (dir, self.fixed) {
            (Dir::Read, true) => opcode::ReadFixed::new(fd, ptr, len, idx)
                .offset(off)
                .rw_flags(rw_flags)
                .build(),
            (Dir::Read, false) => opcode::Read::new(fd, ptr, len)
                .offset(off)
                .rw_flags(rw_flags)
                .build(),
            (Dir::Write, true) => opcode::WriteFixed::new(fd, ptr, len, idx)
                .offset(off)
                .build(),
            (Dir::Write, false) => opcode::Write::new(fd, ptr, len).offset(off).build(),
        };
        self.queue(sqe, &t.fd, b, tag)
    }

    /// Queues an fdatasync of `fd` (its data and the metadata needed to read it back).
    pub fn datasync(&mut self, fd: &OpFd, tag: u64) -> io::Result<()> {
        let sqe = opcode::Fsync::new(types::Fd(fd.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        self.queue(sqe, fd, NO_BUF, tag)
    }

    /// Queues a send of `range` of buffer `b` on socket `sock` (all of it unless the socket
    /// fails; no SIGPIPE).
    pub fn send(&mut self, sock: &OpFd, b: usize, range: Range<usize>, tag: u64) -> io::Result<()> {
        let (ptr, len) = self.span(b, &range);
        let sqe = opcode::Send::new(types::Fd(sock.as_raw_fd()), ptr, len)
            .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
            .build();
        self.queue(sqe, sock, b, tag)
    }

    /// Queues a receive into `range` of buffer `b` from socket `sock` (all of it unless the
    /// peer closes or the socket fails).
    pub fn recv(&mut self, sock: &OpFd, b: usize, range: Range<usize>, tag: u64) -> io::Result<()> {
        let (ptr, len) = self.span(b, &range);
        let sqe = opcode::Recv::new(types::Fd(sock.as_raw_fd()), ptr, len)
            .flags(libc::MSG_WAITALL)
            .build();
        self.queue(sqe, sock, b, tag)
    }

    /// The address and length of `range` inside buffer `b`, bounds-checked.
    fn span(&self, b: usize, range: &Range<usize>) -> (*mut u8, u32) {
        let s = self.slab();
        assert!(
            range.start < range.end && range.end <= s.buf_size,
            "operation range {range:?} outside a {}-byte buffer",
            s.buf_size
        );
        // SAFETY: range.start < buf_size, so the pointer stays inside buffer b.
        let ptr = unsafe { s.ptr(b).add(range.start) };
        (ptr, (range.end - range.start) as u32)
    }

    /// Takes ownership of one operation until its completion and queues its entry.
    fn queue(&mut self, sqe: squeue::Entry, fd: &OpFd, b: usize, tag: u64) -> io::Result<()> {
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = self.slots.len();
                // Invariant: each worker sizes its ring for the most operations it can have in
                // flight (checked at compile time next to its RING_ENTRIES).
                assert!(
                    i < self.ring.params().sq_entries() as usize,
                    "more operations in flight than the ring has entries"
                );
                self.slots.push(None);
                i as u32
            }
        };
        debug_assert!(self.slots[slot as usize].is_none());
        let sqe = sqe.user_data(u64::from(slot));
        while self.ring.submission().is_full() {
            self.submit()?;
        }
        // SAFETY: the entry names `fd` and a range of buffer b. The slot stored below keeps an
        // `Rc` of the fd open and counts buffer b busy (so `buf`/`buf_mut` refuse it) until the
        // operation's completion is reaped, or Drop drained or leaked everything.
        let pushed = unsafe { self.ring.submission().push(&sqe) };
        if pushed.is_err() {
            // Invariant: the queue was just found not full and nothing else pushes.
            self.free.push(slot);
            return Err(io::Error::other("io_uring submission queue full"));
        }
        self.slots[slot as usize] = Some(Slot {
            fd: fd.clone(),
            buf: b as u16,
            tag,
        });
        if b != NO_BUF {
            self.busy[b] += 1;
        }
        self.inflight += 1;
        #[cfg(debug_assertions)]
        self.unsubmitted.push((slot, audit::identity(fd)));
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        #[cfg(debug_assertions)]
        self.audit_unsubmitted();
        self.ring.submit()?;
        Ok(())
    }

    /// Submits queued operations and waits for at least `want` completions (0: don't wait),
    /// appending every available completion to `out` (cleared first). Waiting longer than
    /// `stall` without any completion is an error of kind `TimedOut`.
    pub fn reap(
        &mut self,
        want: usize,
        stall: Duration,
        out: &mut Vec<Completion>,
    ) -> io::Result<()> {
        out.clear();
        #[cfg(debug_assertions)]
        self.audit_unsubmitted();
        // One deadline for the whole wait. A wait can end early without a completion: EINTR
        // (io-wq's own task work interrupts it every few seconds while a worker blocks in a
        // send to a peer that stopped reading), or the count of SQEs it submitted returned in
        // place of ETIME. Either way it goes on with the time left, so a stalled peer is
        // noticed after `stall`, not never.
        let deadline = std::time::Instant::now() + stall;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ts = types::Timespec::new()
                .sec(left.as_secs())
                .nsec(left.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(want, &args) {
                Ok(_) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EINTR)
                        || e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) => return Err(e),
            }
            if want == 0 || !self.ring.completion().is_empty() {
                break;
            }
            if left.is_zero() {
                return Err(stalled(stall));
            }
        }
        for c in self.ring.completion() {
            let c: cqueue::Entry = c;
            let (ud, result) = (c.user_data(), c.result());
            if ud == CANCEL_USER_DATA {
                self.cancels -= 1;
                continue;
            }
            let Some(slot) = self.slots.get_mut(ud as usize).and_then(Option::take) else {
                // Invariant: the kernel completes each queued user_data exactly once.
                unreachable!("completion for unknown operation {ud}");
            };
            if slot.buf as usize != NO_BUF {
                self.busy[slot.buf as usize] -= 1;
            }
            self.inflight -= 1;
            self.free.push(ud as u32);
            out.push(Completion {
                tag: slot.tag,
                buf: slot.buf as usize,
                result,
            });
            // The operation's fd reference is released here, after its completion.
        }
        Ok(())
    }

    /// Asks the kernel to cancel every operation in flight; their completions (usually
    /// `-ECANCELED`, or the result if they finished first) still arrive through `reap`.
    pub fn cancel_all(&mut self) -> io::Result<()> {
        let live: Vec<u64> = (0..self.slots.len() as u64)
            .filter(|&i| self.slots[i as usize].is_some())
            .collect();
        for ud in live {
            let sqe = opcode::AsyncCancel::new(ud)
                .build()
                .user_data(CANCEL_USER_DATA);
            while self.ring.submission().is_full() {
                self.submit()?;
            }
            // SAFETY: a cancel request refers to no buffer or fd, only to a user_data.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                self.cancels += 1;
            }
        }
        self.submit()
    }

    /// Cancels what is in flight and waits (at most `timeout`) until every operation has
    /// completed; returns whether the ring is idle.
    pub fn drain(&mut self, timeout: Duration) -> bool {
        if self.inflight == 0 {
            return true;
        }
        if let Err(e) = self.cancel_all() {
            tracing::warn!("cancelling in-flight io_uring operations: {e}");
        }
        let start = Instant::now();
        let mut out = Vec::new();
        while self.inflight > 0 {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() || self.reap(1, left, &mut out).is_err() {
                break;
            }
        }
        self.inflight == 0
    }

    /// Debug builds: every operation about to reach the kernel still names the file it named
    /// when it was queued (no fd closed, or closed and reused, while its entry waited).
    #[cfg(debug_assertions)]
    fn audit_unsubmitted(&mut self) {
        for (slot, id) in std::mem::take(&mut self.unsubmitted) {
            if let Some(Some(s)) = self.slots.get(slot as usize) {
                audit::check(&s.fd, id);
            }
        }
    }
}

fn stalled(stall: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no I/O completed for {stall:?}"),
    )
}

impl Drop for Uring {
    fn drop(&mut self) {
        if self.drain(DRAIN_TIMEOUT) {
            return;
        }
        // The kernel may still use the slab and the fds: leaking both is the only sound choice.
        tracing::error!(
            inflight = self.inflight,
            "io_uring did not drain; leaking its buffers and fds"
        );
        std::mem::forget(self.slab.take());
        std::mem::forget(std::mem::take(&mut self.slots));
    }
}

/// Debug-build check that the ownership rule holds: counts operations submitted against an fd
/// that no longer names the file it named when queued.
#[cfg(debug_assertions)]
pub mod audit {
    use std::os::fd::{AsFd, OwnedFd};
    use std::sync::atomic::{AtomicU64, Ordering};

    static VIOLATIONS: AtomicU64 = AtomicU64::new(0);

    /// Operations that reached the kernel naming a closed or reused fd, in this process.
    #[cfg(test)]
    pub fn violations() -> u64 {
        VIOLATIONS.load(Ordering::SeqCst)
    }

    pub(super) fn identity(fd: &OwnedFd) -> (u64, u64) {
        match rustix::fs::fstat(fd.as_fd()) {
            Ok(st) => (st.st_dev, st.st_ino),
            Err(_) => (u64::MAX, u64::MAX),
        }
    }

    pub(super) fn check(fd: &OwnedFd, queued: (u64, u64)) {
        if identity(fd) != queued {
            VIOLATIONS.fetch_add(1, Ordering::SeqCst);
            tracing::error!(
                "io_uring operation submitted against an fd closed since it was queued"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pipe() -> (OpFd, std::io::PipeWriter) {
        let (r, w) = std::io::pipe().expect("pipe");
        (Rc::new(OwnedFd::from(r)), w)
    }

    #[test]
    fn a_send_to_a_peer_that_stopped_reading_is_a_stall_after_the_stall_time() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let sock = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (_peer, _) = l.accept().expect("accept"); // open, never read
        let sock: OpFd = Rc::new(OwnedFd::from(sock));
        const CHUNK: usize = 1 << 20;
        let mut ring = Uring::new(8, 1, CHUNK).expect("ring");
        let stall = Duration::from_secs(8);
        let t0 = std::time::Instant::now();
        let mut out = Vec::new();
        // Fill the socket's buffers, then one send blocks in an io-wq worker for good.
        let err = loop {
            assert!(t0.elapsed() < stall * 4, "the send never stalled");
            ring.send(&sock, 0, 0..CHUNK, 1).expect("queue send");
            match ring.reap(1, stall, &mut out) {
                Ok(()) => assert!(out.len() == 1 && out[0].result > 0, "{out:?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        // Interrupted waits (io-wq's task work) do not restart the stall time.
        assert!(t0.elapsed() < stall * 2, "noticed after {:?}", t0.elapsed());
    }

    #[test]
    fn the_slab_span_holds_every_buffer_and_nothing_past_it() {
        let ring = Uring::new(8, 4, BUF_ALIGN).expect("ring");
        let span = ring.slab_span();
        assert_eq!(span.len, 4 * BUF_ALIGN);
        for b in 0..4 {
            assert!(span.holds(ring.buf(b)), "buffer {b}");
            assert!(span.holds(&ring.buf(b)[1..7]));
        }
        let outside = vec![0u8; 16];
        assert!(!span.holds(&outside));
        // Ranges that start before it, or run past its end, are not held.
        let end = span.addr + span.len;
        assert!(span.holds_range(end - 8, 8));
        assert!(!span.holds_range(end - 8, 9));
        assert!(!span.holds_range(span.addr - 1, 2));
        assert!(!span.holds_range(usize::MAX - 2, 8));
    }

    #[test]
    fn an_operation_keeps_its_fd_open_until_its_completion() {
        let mut ring = Uring::new(8, 2, BUF_ALIGN).expect("ring");
        let (r, mut w) = pipe();
        let raw = r.as_raw_fd();
        ring.transfer(Dir::Read, &Transfer::new(r.clone(), 0, 0, 16), 1, 7)
            .expect("queue read");
        drop(r);
        let mut out = Vec::new();
        // Submitted and blocked on the empty pipe: the caller's fd is gone, the ring's is not.
        ring.reap(0, Duration::from_millis(10), &mut out)
            .expect("submit");
        assert!(out.is_empty());
        assert!(rustix::io::fcntl_getfd(unsafe_free_borrow(raw)).is_ok());
        assert!(ring.is_busy(1));
        w.write_all(b"0123456789abcdef").expect("write pipe");
        ring.reap(1, Duration::from_secs(5), &mut out)
            .expect("reap");
        assert_eq!(
            out,
            vec![Completion {
                tag: 7,
                buf: 1,
                result: 16
            }]
        );
        assert!(!ring.is_busy(1));
        assert_eq!(&ring.buf(1)[..16], b"0123456789abcdef");
        // Reaped: the ring let go of the last reference, so the fd is closed now.
        assert!(rustix::io::fcntl_getfd(unsafe_free_borrow(raw)).is_err());
    }

    #[test]
    fn dropping_a_ring_cancels_and_drains_a_read_that_would_never_complete() {
        let mut ring = Uring::new(8, 1, BUF_ALIGN).expect("ring");
        let (r, _w) = pipe();
        ring.transfer(Dir::Read, &Transfer::new(r, 0, 0, BUF_ALIGN), 0, 1)
            .expect("queue read");
        let mut out = Vec::new();
        ring.reap(0, Duration::from_millis(10), &mut out)
            .expect("submit");
        let start = Instant::now();
        assert!(ring.drain(Duration::from_secs(5)));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(ring.inflight(), 0);
        assert!(!ring.is_busy(0));
    }

    #[test]
    #[should_panic(expected = "operation uses it")]
    fn a_busy_buffer_is_not_handed_out() {
        let mut ring = Uring::new(8, 1, BUF_ALIGN).expect("ring");
        let (r, _w) = pipe();
        ring.transfer(Dir::Read, &Transfer::new(r, 0, 0, 8), 0, 1)
            .expect("queue read");
        let _ = ring.buf(0);
    }

    /// A borrowed view of a raw fd number for fcntl probes; it may be closed, which is what
    /// the probe asks.
    fn unsafe_free_borrow(raw: std::os::fd::RawFd) -> std::os::fd::BorrowedFd<'static> {
        // SAFETY: only used for F_GETFD, which is harmless on a closed or reused fd number.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) }
    }
}
