//! One io_uring plus the slab of registered buffers it reads into and writes from.
//!
//! Ownership rule, relied on by every `unsafe` submission in the workers: a buffer is only
//! touched by the CPU while no submitted operation refers to it, and the slab's memory is never
//! freed while any operation is in flight (`Drop` drains the ring first and leaks the memory if
//! it cannot).

use io_uring::{cqueue, squeue, types, IoUring};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

/// Buffers are aligned for O_DIRECT on any logical block size up to a page.
pub const BUF_ALIGN: usize = 4096;
/// How long `Drop` waits for in-flight operations before giving up and leaking the slab.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A worker that sees no completion at all for this long reports its peer or disk as stalled
/// instead of waiting forever (a peer that stops reading but keeps its socket open).
/// io-wq threads per ring for file I/O (see `Uring::new`).
const IOWQ_BOUNDED_WORKERS: u32 = 1;
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Slab {
    ptr: NonNull<u8>,
    layout: Layout,
    pub buf_size: usize,
    pub count: usize,
}

impl Slab {
    pub fn new(count: usize, buf_size: usize) -> io::Result<Slab> {
        assert!(
            count > 0 && count <= u16::MAX as usize,
            "slab buffer count out of range"
        );
        assert!(
            buf_size.is_multiple_of(BUF_ALIGN),
            "slab buffer size must be a multiple of BUF_ALIGN"
        );
        let layout = Layout::from_size_align(count * buf_size, BUF_ALIGN)
            .map_err(|_| io::Error::other("slab layout overflow"))?;
        // SAFETY: layout has non-zero size (count > 0, buf_size >= BUF_ALIGN).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Slab {
            ptr,
            layout,
            buf_size,
            count,
        })
    }

    /// Start of buffer `i`. Raw pointer: callers hand it to the kernel or build slices from it
    /// only while the buffer has no operation in flight.
    pub fn ptr(&self, i: usize) -> *mut u8 {
        assert!(i < self.count);
        // SAFETY: i < count, so the offset stays inside the allocation.
        unsafe { self.ptr.as_ptr().add(i * self.buf_size) }
    }

    /// Buffer `i` as a slice.
    ///
    /// # Safety
    /// No io_uring operation that writes into buffer `i` may be in flight, and no `&mut` slice of
    /// it may be alive.
    pub unsafe fn slice(&self, i: usize) -> &[u8] {
        // SAFETY: the caller guarantees no writer; the range is inside the allocation.
        unsafe { std::slice::from_raw_parts(self.ptr(i), self.buf_size) }
    }

    /// Buffer `i` as a mutable slice.
    ///
    /// # Safety
    /// No io_uring operation on buffer `i` may be in flight, and no other slice of it may be alive.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, i: usize) -> &mut [u8] {
        // SAFETY: the caller guarantees exclusive access; the range is inside the allocation.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(i), self.buf_size) }
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
        // SAFETY: allocated in `new` with this exact layout; `Uring::drop` guarantees the kernel
        // no longer references it (or forgets the slab instead of dropping it).
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

// SAFETY: the slab is plain memory owned by one worker thread; moving it to that thread at spawn
// is fine (it is never shared).
unsafe impl Send for Slab {}

pub struct Uring {
    pub ring: IoUring,
    /// Option so that Drop can leak it if the kernel might still write into it.
    slab: Option<Slab>,
    /// Whether the slab is registered (ReadFixed/WriteFixed usable). Registration can fail
    /// under a small RLIMIT_MEMLOCK; the engine then uses plain Read/Write on the same memory.
    pub fixed: bool,
    pub inflight: usize,
    cqes: Vec<(u64, i32)>,
}

impl Uring {
    pub fn new(entries: u32, nbuf: usize, buf_size: usize) -> io::Result<Uring> {
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
        let slab = Slab::new(nbuf, buf_size)?;
        let iov = slab.iovecs();
        // SAFETY: the iovecs describe `slab`'s allocation, which outlives the registration: the
        // ring is dropped (and so unregistered) in `Uring::drop` before the slab is freed.
        let fixed = unsafe { ring.submitter().register_buffers(&iov) }.is_ok();
        if !fixed {
            tracing::warn!(
                "could not register io_uring buffers (RLIMIT_MEMLOCK?); using unregistered I/O"
            );
        }
        Ok(Uring {
            ring,
            slab: Some(slab),
            fixed,
            inflight: 0,
            cqes: Vec::with_capacity(entries as usize * 2),
        })
    }

    pub fn slab(&self) -> &Slab {
        match &self.slab {
            Some(s) => s,
            // Invariant: slab is only taken in Drop.
            None => unreachable!("slab used after drop"),
        }
    }

    /// Queues one operation, submitting the queue first if it is full.
    ///
    /// # Safety
    /// Every buffer and fd the entry refers to must stay valid and untouched until its completion
    /// is returned by `reap`.
    pub unsafe fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller keeps the entry's buffers and fds valid until its completion.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                self.inflight += 1;
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Submits queued operations and waits for at least `want` completions (0: don't wait),
    /// returning all available completions as (user_data, result). Waiting longer than `stall`
    /// without any completion is an error of kind `TimedOut`.
    pub fn reap_within(&mut self, want: usize, stall: Duration) -> io::Result<&[(u64, i32)]> {
        let ts = types::Timespec::new()
            .sec(stall.as_secs())
            .nsec(stall.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            // ETIME: the wait timed out; it only counts as a stall if nothing completed.
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {
                if self.ring.completion().is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no I/O completed for {stall:?}"),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
        self.cqes.clear();
        for c in self.ring.completion() {
            let c: cqueue::Entry = c;
            self.cqes.push((c.user_data(), c.result()));
        }
        debug_assert!(self.cqes.len() <= self.inflight);
        self.inflight -= self.cqes.len();
        Ok(&self.cqes)
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        let start = Instant::now();
        while self.inflight > 0 && start.elapsed() < DRAIN_TIMEOUT {
            if self.reap_within(1, DRAIN_TIMEOUT).is_err() {
                break;
            }
        }
        if self.inflight > 0 {
            // The kernel may still write into the slab: leaking it is the only sound choice.
            tracing::error!(
                inflight = self.inflight,
                "io_uring did not drain; leaking its buffers"
            );
            std::mem::forget(self.slab.take());
        }
    }
}
