//! Disk-full errors on the destination. ENOSPC can surface anywhere a job writes (worker data,
//! files created in the apply phase, journal records and pre-images, the recovery point), so the
//! sites only name what they were writing and the session turns the error into one an operator
//! can act on: the path, the free space of the destination file system and what the job needed.
//! The session then reverts the job (session.rs), which also gives back the space it used.

use super::journal;
use crate::beneath;
use crate::error::{show, Error};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::os::fd::{AsFd, BorrowedFd};

/// Words every disk-full message carries, so callers and tests can recognise one.
pub const FULL: &str = "the destination file system is full";

/// Free bytes of the file system holding `fd`, as an unprivileged writer sees them (blocks
/// reserved for root are not counted: a receiver not running as root cannot use them).
pub fn free_bytes(fd: BorrowedFd<'_>) -> rustix::io::Result<u64> {
    let s = rustix::fs::fstatvfs(fd)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Whether `e` is the destination running out of space.
pub fn is_full(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
}

/// For a disk-full error, puts `what` (the item being processed, for sites whose own context
/// names only an internal file such as the journal log) in front of its context. Other errors
/// pass unchanged.
pub fn naming(what: impl FnOnce() -> String) -> impl FnOnce(Error) -> Error {
    move |e| match e {
        Error::Io { context, source } if source.raw_os_error() == Some(libc::ENOSPC) => Error::Io {
            context: format!("{}: {context}", what()),
            source,
        },
        e => e,
    }
}

/// Adds to a disk-full error the free space of the destination file system (`root`) and the
/// bytes the job needed (`needed`, if the apply phase got far enough to know). Other errors pass
/// unchanged.
pub fn explain(root: BorrowedFd<'_>, e: Error, needed: Option<u64>) -> Error {
    match e {
        Error::Io { context, source } if source.raw_os_error() == Some(libc::ENOSPC) => {
            let free = match free_bytes(root) {
                Ok(b) => format!("{} free", bytes(b)),
                Err(e) => format!("free space unknown: statvfs failed: {e}"),
            };
            let needed = needed
                .map(|n| format!(", this job needs {}", bytes(n)))
                .unwrap_or_default();
            Error::Io {
                context: format!("{context}: {FULL} ({free}{needed})"),
                source,
            }
        }
        e => e,
    }
}

/// "12.5 MiB (13107200 bytes)": readable, and exact for whoever compares numbers.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let (mut v, mut u) = (n as f64 / 1024.0, 0);
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {} ({n} bytes)", UNITS[u])
}

/// Empties the regular files a failed job created, before the job is reverted: on a full file
/// system the revert's own progress log needs a block, and these files are removed by the revert
/// anyway. Only files that are certainly the job's own are touched: the last journal record
/// naming the path is its `Created`, and the inode has no other name (a hard link made by the
/// job points at a file of the recovery point; its data must survive). A process killed after
/// this leaves a journal that still reverts, or a job that resumes and resends those files.
/// Returns the bytes released.
pub fn release_created(
    root: BorrowedFd<'_>,
    state: &super::state::State,
) -> crate::error::Result<u64> {
    use journal::{JobMap, Origin, Undo};
    let Some(existing) = journal::read_existing(state)? else {
        return Ok(0);
    };
    // What a path holds is decided by the latest event on it or an ancestor: a file created at
    // X/f is not the job's any more once X was moved away and a recovery-point item put there.
    let map = JobMap::from_records(&existing.records);
    let created: std::collections::HashSet<&[u8]> = existing
        .records
        .iter()
        .filter_map(|u| match u {
            Undo::Created { path } => Some(path.as_slice()),
            _ => None,
        })
        .filter(|p| map.origin(p) == Origin::Job)
        .collect();
    let mut released = 0;
    for path in created {
        let (p, n) = beneath::split_parent(path);
        let Ok(dir) = beneath::open_dir(root, p) else {
            continue;
        };
        // Checked before opening (opening a FIFO for writing would block) and again on the open
        // fd; a failure anywhere here only means less space is given back early.
        let Ok(st) = rustix::fs::statat(&dir, n, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
            || st.st_nlink != 1
            || st.st_blocks == 0
        {
            continue;
        }
        let Ok(fd) = beneath::open_in(
            dir.as_fd(),
            n,
            OFlags::WRONLY | OFlags::NONBLOCK,
            Mode::empty(),
        ) else {
            continue;
        };
        let Ok(st) = rustix::fs::fstat(&fd) else {
            continue;
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_nlink != 1 {
            continue;
        }
        match rustix::fs::ftruncate(&fd, 0) {
            Ok(()) => released += st.st_blocks as u64 * 512,
            Err(e) => tracing::warn!("emptying {} before the revert: {e}", show(path)),
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_readable_and_exact() {
        assert_eq!(bytes(0), "0 bytes");
        assert_eq!(bytes(1023), "1023 bytes");
        assert_eq!(bytes(1536), "1.5 KiB (1536 bytes)");
        assert_eq!(bytes(48 << 20), "48.0 MiB (50331648 bytes)");
    }

    #[test]
    fn only_enospc_is_explained() {
        let other = Error::Io {
            context: "writing a".into(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        };
        assert!(!is_full(&other));
        let full = Error::Io {
            context: "writing a".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert!(is_full(&full));
        let named = naming(|| "creating b".into())(full);
        assert!(matches!(&named, Error::Io { context, .. } if context == "creating b: writing a"));
    }
}
