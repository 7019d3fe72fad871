//! fanotify backend: one file-system mark, events naming a directory handle and an entry name.

use super::{fd_path, unsupported, Changes, RootName, MAX_READS_PER_DRAIN, READ_BUF};
use crate::error::{IoContext, Result};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// What changes a tree: entries appearing, going, moving, and any inode change of an entry
/// (data, size, mode, owner, times, xattrs); on directories too.
const MASK: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_MODIFY
    | libc::FAN_ATTRIB
    | libc::FAN_ONDIR;
/// `struct fanotify_event_metadata`: event_len u32, vers u8, reserved u8, metadata_len u16,
/// mask u64, fd i32, pid i32.
const META_LEN: usize = 24;
/// `struct fanotify_event_info_header` (type u8, pad u8, len u16) then `__kernel_fsid_t`.
const INFO_HEAD: usize = 4 + 8;
/// `struct file_handle`'s header: handle_bytes u32, handle_type i32.
const HANDLE_HEAD: usize = 8;
/// The kernel's bound on a file handle (MAX_HANDLE_SZ).
const MAX_HANDLE: usize = 128;
/// Tries of `open_by_handle_at` that fail with ENOMEM before the event is given up for a
/// rescan. A directory whose dentry was evicted is reconnected to the root first (a lookup per
/// level, reading each parent's listing), and that reconnection can fail for a moment.
const HANDLE_TRIES: u32 = 4;
/// Pause between those tries.
const HANDLE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// What a directory handle of an event names now: its descriptor (`with_retries`), then its
/// path (`open_dir`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Found<T> {
    At(T),
    /// Gone since the event (stale handle): its removal is an event in its parent.
    Gone,
    /// It could not be resolved now: only a walk of everything covers its change.
    Unknown,
}

pub(super) struct Fanotify {
    fd: OwnedFd,
    /// An open descriptor on the watched file system: file handles are opened through it.
    root: OwnedFd,
    name: RootName,
    buf: Vec<u8>,
}

impl Fanotify {
    pub(super) fn new(path: &Path, root: OwnedFd) -> Result<Fanotify> {
        // SAFETY: plain syscall with constant flags; the result is checked before use.
        let fd = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_NOTIF
                    | libc::FAN_CLOEXEC
                    | libc::FAN_NONBLOCK
                    | libc::FAN_REPORT_DFID_NAME,
                (libc::O_RDONLY | libc::O_CLOEXEC) as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(unsupported(
                "fanotify_init",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` was just returned by fanotify_init and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `root` is an open descriptor for the duration of the call; a null path marks
        // the object `root` refers to (its file system, with FAN_MARK_FILESYSTEM).
        let rc = unsafe {
            libc::fanotify_mark(
                fd.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                MASK,
                root.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(unsupported(
                &format!("a fanotify file-system mark on {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        let name = RootName::of(&root)?;
        Ok(Fanotify {
            fd,
            root,
            name,
            buf: vec![0; READ_BUF],
        })
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(super) fn drain(&mut self, into: &mut Changes) -> Result<()> {
        // Directories named in this drain, each resolved once: a burst of writes in one
        // directory costs one open_by_handle_at.
        let mut named: HashMap<Vec<u8>, Found<Vec<u8>>> = HashMap::new();
        for _ in 0..MAX_READS_PER_DRAIN {
            let n = match rustix::io::read(&self.fd, &mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(rustix::io::Errno::AGAIN) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e).ctx(|| "reading fanotify events".to_string()),
            };
            let mut at = 0;
            while at + META_LEN <= n {
                let ev = &self.buf[at..n];
                let len = u32_at(ev, 0) as usize;
                let meta_len = u16::from_le_bytes([ev[6], ev[7]]) as usize;
                if len < META_LEN || len > ev.len() || meta_len < META_LEN {
                    // Not the layout this code knows: nothing can be placed; walk everything.
                    into.rescan = true;
                    return Ok(());
                }
                let mask = u64::from_ne_bytes(ev[8..16].try_into().unwrap_or([0; 8]));
                let efd = i32::from_ne_bytes(ev[16..20].try_into().unwrap_or([0; 4]));
                if efd >= 0 {
                    // SAFETY: with FID reporting no descriptor is expected, but one given is
                    // ours to close.
                    drop(unsafe { OwnedFd::from_raw_fd(efd) });
                }
                if mask & libc::FAN_Q_OVERFLOW != 0 {
                    into.rescan = true;
                } else {
                    self.place(&ev[meta_len..len], &mut named, into)?;
                }
                at += len;
            }
        }
        // The bound on reads was hit: events are still coming faster than they are read.
        into.rescan = true;
        Ok(())
    }

    /// Places one event's info records.
    fn place(
        &self,
        mut info: &[u8],
        named: &mut HashMap<Vec<u8>, Found<Vec<u8>>>,
        into: &mut Changes,
    ) -> Result<()> {
        while info.len() >= INFO_HEAD + HANDLE_HEAD {
            let kind = info[0];
            let len = u16::from_ne_bytes([info[2], info[3]]) as usize;
            if len < INFO_HEAD + HANDLE_HEAD || len > info.len() {
                into.rescan = true;
                return Ok(());
            }
            let rec = &info[..len];
            info = &info[len..];
            if kind != libc::FAN_EVENT_INFO_TYPE_DFID_NAME {
                continue;
            }
            let hb = u32_at(rec, INFO_HEAD) as usize;
            let handle_end = INFO_HEAD + HANDLE_HEAD + hb;
            if hb > MAX_HANDLE || handle_end > rec.len() {
                into.rescan = true;
                return Ok(());
            }
            let handle = &rec[INFO_HEAD..handle_end];
            let name = &rec[handle_end..];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            let dir = match named.get(handle) {
                Some(d) => d.clone(),
                None => {
                    let d = self.open_dir(handle)?;
                    named.insert(handle.to_vec(), d.clone());
                    d
                }
            };
            match dir {
                Found::At(dir) => self.name.place(&dir, name, into),
                Found::Gone => {}
                Found::Unknown => into.rescan = true,
            }
        }
        Ok(())
    }

    /// What the directory a file handle (header and bytes) names is now.
    fn open_dir(&self, handle: &[u8]) -> Result<Found<Vec<u8>>> {
        // `struct file_handle` wants 4-byte alignment: copy into u32 words.
        let mut words = [0u32; (HANDLE_HEAD + MAX_HANDLE) / 4];
        for (i, c) in handle.chunks(4).enumerate() {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            words[i] = u32::from_ne_bytes(w);
        }
        let opened = with_retries(HANDLE_RETRY_PAUSE, || {
            // SAFETY: `words` holds a complete `struct file_handle` (header, then handle_bytes
            // bytes, at most MAX_HANDLE, checked by the caller), aligned for it, alive for the
            // call; the kernel only reads it. `root` is an open descriptor on the file system.
            let fd = unsafe {
                libc::open_by_handle_at(
                    self.root.as_raw_fd(),
                    words.as_mut_ptr().cast::<libc::file_handle>(),
                    libc::O_PATH | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `fd` was just returned by open_by_handle_at and is owned by nothing else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })?;
        Ok(match opened {
            Found::At(fd) => fd_path(fd.as_fd())?.map_or(Found::Gone, Found::At),
            Found::Gone => Found::Gone,
            Found::Unknown => Found::Unknown,
        })
    }
}

/// Calls `open` (an `open_by_handle_at`) up to HANDLE_TRIES times while it fails with ENOMEM.
/// A stale handle (ESTALE, ENOENT) names something gone; ENOMEM every time leaves the
/// directory unknown (the caller asks for a rescan); any other error is the watch's failure.
fn with_retries<T>(
    pause: std::time::Duration,
    mut open: impl FnMut() -> std::io::Result<T>,
) -> Result<Found<T>> {
    for attempt in 1..=HANDLE_TRIES {
        let e = match open() {
            Ok(fd) => return Ok(Found::At(fd)),
            Err(e) => e,
        };
        match e.raw_os_error() {
            Some(libc::ESTALE) | Some(libc::ENOENT) => return Ok(Found::Gone),
            Some(libc::ENOMEM) if attempt < HANDLE_TRIES => std::thread::sleep(pause),
            Some(libc::ENOMEM) => {
                tracing::warn!(
                    "a changed directory could not be found by its handle ({e}): the next job \
                     walks everything"
                );
                return Ok(Found::Unknown);
            }
            _ => return Err(e).ctx(|| "opening a directory by its handle".to_string()),
        }
    }
    Ok(Found::Unknown)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `open` failing with `errnos` in turn, then succeeding; counts its calls.
    fn failing(errnos: &[i32]) -> (Result<Found<u32>>, usize) {
        let mut calls = 0;
        let got = with_retries(Duration::ZERO, || {
            calls += 1;
            match errnos.get(calls - 1) {
                Some(&e) => Err(std::io::Error::from_raw_os_error(e)),
                None => Ok(7),
            }
        });
        (got, calls)
    }

    #[test]
    fn a_handle_that_fails_for_lack_of_memory_is_tried_again() {
        let (got, calls) = failing(&[libc::ENOMEM, libc::ENOMEM]);
        assert_eq!(got.unwrap(), Found::At(7));
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_handle_that_keeps_failing_for_lack_of_memory_asks_for_a_rescan() {
        let (got, calls) = failing(&[libc::ENOMEM; HANDLE_TRIES as usize + 2]);
        assert_eq!(got.unwrap(), Found::Unknown);
        assert_eq!(calls, HANDLE_TRIES as usize);
    }

    #[test]
    fn a_stale_handle_names_a_directory_gone_and_other_errors_fail_the_watch() {
        assert_eq!(failing(&[libc::ESTALE]).0.unwrap(), Found::Gone);
        assert_eq!(failing(&[libc::ENOENT]).0.unwrap(), Found::Gone);
        let (got, calls) = failing(&[libc::EACCES]);
        assert!(got.is_err());
        assert_eq!(calls, 1);
    }
}
