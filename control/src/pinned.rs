//! Directories checked once and used again later: a source directory at every job, a target
//! directory at every session and every start of the daemon. A check pins the directory (its
//! canonical path, device and inode, [`PinnedDir`]); every use opens that path again from `/`
//! without following any symlink (`openat2` with `RESOLVE_NO_SYMLINKS`) and must find the same
//! device and inode. The caller then works through the descriptor it checked (for path-taking
//! APIs: [`OpenDir::proc_path`], `/proc/self/fd/<n>`), so a directory swapped for a symlink or
//! for another directory is refused instead of used, before or during the use.

use crate::error::IoContext;
use crate::model::PinnedDir;
use crate::{Error, Result};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A directory opened through its pinned path and found to be the pinned one. The descriptor
/// stays open as long as this value lives.
#[derive(Debug)]
pub struct OpenDir {
    fd: OwnedFd,
    pin: PinnedDir,
}

impl OpenDir {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn pin(&self) -> &PinnedDir {
        &self.pin
    }

    /// The canonical path it was opened through.
    pub fn path(&self) -> &Path {
        Path::new(&self.pin.path)
    }

    /// A path naming exactly this directory while this value lives, whatever happens to its
    /// canonical path meanwhile: the kernel resolves it to the open descriptor.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// Opens `path` (absolute) as a directory without following a symlink anywhere in it (the last
/// component included: a symlink there is ELOOP, as for any other).
fn open_no_symlinks(path: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Pins the directory `path` names now. `what` names it in errors ("source path").
pub fn pin(path: &Path, what: &str) -> Result<OpenDir> {
    let invalid = |why: String| Error::Invalid(format!("{what} {}: {why}", path.display()));
    let canonical = path.canonicalize().map_err(|e| invalid(e.to_string()))?;
    let canonical = canonical
        .to_str()
        .ok_or_else(|| invalid("its canonical path is not UTF-8".into()))?
        .to_string();
    let fd = open_no_symlinks(&canonical).map_err(|e| match e {
        rustix::io::Errno::NOTDIR => invalid("not a directory".into()),
        e => invalid(std::io::Error::from(e).to_string()),
    })?;
    let st = rustix::fs::fstat(&fd).ctx(|| format!("stat of {canonical}"))?;
    Ok(OpenDir {
        fd,
        pin: PinnedDir {
            path: canonical,
            dev: st.st_dev,
            ino: st.st_ino,
        },
    })
}

/// Opens the pinned directory again. A path that now has a symlink in it, leads nowhere or to
/// another directory is `Error::Conflict` saying which; `what` names it ("source directory").
pub fn open(pin: &PinnedDir, what: &str) -> Result<OpenDir> {
    let changed = |why: &str| {
        Error::Conflict(format!(
            "{what} {} is not the directory that was checked: {why}",
            pin.path
        ))
    };
    let fd = match open_no_symlinks(&pin.path) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => return Err(changed("a symlink now stands in its path")),
        Err(rustix::io::Errno::NOENT) => return Err(changed("nothing is at its path any more")),
        Err(rustix::io::Errno::NOTDIR) => {
            return Err(changed("its path no longer leads to a directory"))
        }
        Err(e) => {
            return Err(Error::Io {
                context: format!("opening {what} {}", pin.path),
                source: e.into(),
            })
        }
    };
    let st = rustix::fs::fstat(&fd).ctx(|| format!("stat of {}", pin.path))?;
    if (st.st_dev, st.st_ino) != (pin.dev, pin.ino) {
        return Err(changed(&format!(
            "another directory is there now (device {} inode {}, checked: device {} inode {})",
            st.st_dev, st.st_ino, pin.dev, pin.ino
        )));
    }
    Ok(OpenDir {
        fd,
        pin: pin.clone(),
    })
}

/// Whether `path` (a mount point in the data dir, say) shows the pinned directory.
pub fn shows(path: &Path, pin: &PinnedDir) -> bool {
    path.to_str()
        .and_then(|p| open_no_symlinks(p).ok())
        .and_then(|fd| rustix::fs::fstat(&fd).ok())
        .is_some_and(|st| (st.st_dev, st.st_ino) == (pin.dev, pin.ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_directory_is_refused_once_replaced_by_a_symlink_or_another_directory() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("f"), b"x").unwrap();
        // Pinned through a symlink: the canonical path is what is kept.
        std::os::unix::fs::symlink(&dir, t.path().join("link")).unwrap();
        let pinned = pin(&t.path().join("link"), "source path").unwrap();
        assert_eq!(pinned.path(), dir.canonicalize().unwrap());
        let again = open(pinned.pin(), "source directory").unwrap();
        assert!(std::fs::read(again.proc_path().join("f")).is_ok());

        // The fd keeps naming the checked directory after it moved away.
        std::fs::rename(&dir, t.path().join("moved")).unwrap();
        assert_eq!(std::fs::read(again.proc_path().join("f")).unwrap(), b"x");
        let e = open(pinned.pin(), "source directory").unwrap_err();
        assert!(e.to_string().contains("nothing is at its path"), "{e}");

        std::os::unix::fs::symlink(t.path().join("moved"), &dir).unwrap();
        let e = open(pinned.pin(), "source directory").unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");
        assert!(e.to_string().contains("a symlink now stands"), "{e}");

        std::fs::remove_file(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        let e = open(pinned.pin(), "source directory").unwrap_err();
        assert!(e.to_string().contains("another directory is there"), "{e}");

        std::fs::remove_dir(&dir).unwrap();
        std::fs::rename(t.path().join("moved"), &dir).unwrap();
        open(pinned.pin(), "source directory").unwrap();
        assert!(shows(&dir, pinned.pin()));
        assert!(!shows(t.path(), pinned.pin()));
        let e = pin(&dir.join("f"), "source path").unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
