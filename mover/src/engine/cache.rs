//! Is a file range in the page cache? Data already in RAM is read through the cache (a memory
//! copy); the rest with O_DIRECT (no copy, and no eviction of pages somebody else wants).
//!
//! `cachestat(2)` (Linux 6.5+) answers for a range without reading it. Kernels without it (or a
//! seccomp filter refusing it) make `Probe::resident` answer `Unknown`; callers then try a
//! buffered read with `RWF_NOWAIT`, which fails with EAGAIN instead of going to the disk.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU8, Ordering};

/// `cachestat` is 451 on every architecture (it came after the syscall tables were unified).
const SYS_CACHESTAT: libc::c_long = 451;
/// Pages as `cachestat` counts them.
const PAGE: u64 = 4096;

/// Whether `cachestat` works here: unknown until tried, then remembered for the process.
static SUPPORT: AtomicU8 = AtomicU8::new(UNTRIED);
const UNTRIED: u8 = 0;
const WORKS: u8 = 1;
const MISSING: u8 = 2;

/// `struct cachestat_range` of the kernel's uapi.
#[repr(C)]
struct Range {
    off: u64,
    len: u64,
}

/// `struct cachestat` of the kernel's uapi.
#[repr(C)]
#[derive(Default)]
struct Stat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Where a range's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Half of its pages or more are cached: read it through the cache.
    Cached,
    /// Less than half: read it from the device.
    Uncached,
    /// This kernel cannot tell (no `cachestat`).
    Unknown,
}

/// Residency of `len` bytes at `off` of `fd` (a regular file).
pub fn resident(fd: BorrowedFd<'_>, off: u64, len: u64) -> Residency {
    #[cfg(test)]
    if len > 0 && NO_CACHESTAT.with(|c| c.get()) {
        return Residency::Unknown;
    }
    if SUPPORT.load(Ordering::Relaxed) == MISSING || len == 0 {
        return if len == 0 {
            Residency::Cached
        } else {
            Residency::Unknown
        };
    }
    match cached_pages(fd, off, len) {
        Ok(n) => {
            SUPPORT.store(WORKS, Ordering::Relaxed);
            let pages = (off + len).div_ceil(PAGE) - off / PAGE;
            if n * 2 >= pages {
                Residency::Cached
            } else {
                Residency::Uncached
            }
        }
        Err(e) => {
            // ENOSYS: an older kernel; EPERM: a seccomp filter. Either holds for the process.
            // Anything else (EBADF on a file the kernel cannot stat this way) is this call only.
            if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) {
                SUPPORT.store(MISSING, Ordering::Relaxed);
            }
            Residency::Unknown
        }
    }
}

/// Pages of the range that are in the page cache.
fn cached_pages(fd: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<u64> {
    let range = Range { off, len };
    let mut st = Stat::default();
    // SAFETY: `range` and `st` are live, properly laid out (repr(C), the uapi structs) for the
    // duration of the call, which only reads the first and writes the second; flags must be 0.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd.as_raw_fd(),
            &range as *const Range,
            &mut st as *mut Stat,
            0u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.nr_cache)
}

#[cfg(test)]
thread_local! {
    /// Tests: this thread behaves as on a kernel without `cachestat`.
    static NO_CACHESTAT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
pub fn pretend_no_cachestat(on: bool) {
    NO_CACHESTAT.with(|c| c.set(on));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    /// A file whose data is certainly cached (just written) can be told apart from one whose
    /// pages were dropped with `posix_fadvise(DONTNEED)` after an fsync.
    #[test]
    fn a_file_just_written_is_cached_and_one_dropped_from_the_cache_is_not() {
        // /var/tmp: a disk file system (tmpfs keeps its pages whatever we advise).
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir in /var/tmp");
        let p = dir.path().join("f");
        let mut f = std::fs::File::create(&p).expect("create");
        f.write_all(&vec![7u8; 4 << 20]).expect("write");
        f.sync_all().expect("fsync");
        assert_eq!(resident(f.as_fd(), 0, 4 << 20), Residency::Cached);
        let fs = rustix::fs::fstatfs(f.as_fd()).expect("fstatfs");
        assert_ne!(
            fs.f_type,
            libc::TMPFS_MAGIC,
            "/var/tmp is a tmpfs here: this test needs a disk file system"
        );
        rustix::fs::fadvise(f.as_fd(), 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
        assert_eq!(resident(f.as_fd(), 0, 4 << 20), Residency::Uncached);
        assert_eq!(resident(f.as_fd(), 0, 0), Residency::Cached);
    }
}
