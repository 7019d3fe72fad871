//! Keeping an authorized target directory read-only to everyone but the daemon.
//!
//! How: the daemon first bind-mounts the target directory onto a private path in its data dir
//! (`<data-dir>/mnt/<id>`, under a 0700 directory), then bind-mounts the target directory onto
//! itself and remounts that read-only. Every process using the target path, root included, now
//! sees a read-only file system (EROFS); the receiver writes through the private mount, which is
//! the same file system mounted read-write. Deleting the relationship removes both mounts, and
//! the directory is writable again with its data in place.
//!
//! Fallback: where mounting is not permitted (no CAP_SYS_ADMIN, e.g. an unprivileged
//! container), nothing is mounted, the receiver writes the target path directly and the
//! relationship reports `read_only: not_enforced`; operators then rely on permissions.
//!
//! Mounts outlive a killed daemon; `protect` is idempotent and rebuilds what is missing.

use crate::error::IoContext;
use crate::{Error, Result};
use rustix::mount::{
    mount_bind, mount_change, mount_remount, unmount, MountFlags, MountPropagationFlags,
    UnmountFlags,
};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    BindMount,
    NotEnforced,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::BindMount => "bind_mount",
            Mode::NotEnforced => "not_enforced",
        }
    }
}

/// One line of /proc/self/mountinfo that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountAt {
    read_only: bool,
}

/// Mountinfo escapes space, tab, newline and backslash in paths as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts whose mount point is `path`, bottom first.
fn mounts_at(path: &Path) -> Result<Vec<MountAt>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .ctx(|| "reading /proc/self/mountinfo".to_string())?;
    let want = path.to_string_lossy();
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 5 && unescape(f[4]) == want).then(|| MountAt {
                read_only: f[5].split(',').any(|o| o == "ro"),
            })
        })
        .collect())
}

fn canonical(p: &Path, what: &str) -> Result<PathBuf> {
    let c = p.canonicalize().ctx(|| format!("{what} {}", p.display()))?;
    if !c.is_dir() {
        return Err(Error::Invalid(format!(
            "{what} {} is not a directory",
            c.display()
        )));
    }
    Ok(c)
}

fn permission_denied(e: &rustix::io::Errno) -> bool {
    *e == rustix::io::Errno::PERM || *e == rustix::io::Errno::ACCESS
}

fn mnt_err(what: String) -> impl FnOnce(rustix::io::Errno) -> Error {
    move |e| Error::Io {
        context: what,
        source: e.into(),
    }
}

/// Makes `target` read-only with a writable view at `backing` (created if missing); returns
/// how it is enforced and the directory the receiver must write through.
pub fn protect(target: &Path, backing: &Path) -> Result<(Mode, PathBuf)> {
    let target = canonical(target, "target directory")?;
    std::fs::create_dir_all(backing).ctx(|| format!("creating {}", backing.display()))?;
    let backing = canonical(backing, "private mount point")?;
    let overlay = mounts_at(&target)?.last().is_some_and(|m| m.read_only);
    let backed = !mounts_at(&backing)?.is_empty();
    if overlay && backed {
        return Ok((Mode::BindMount, backing));
    }
    if overlay {
        // The private view must be taken of the writable directory, not of the read-only
        // overlay; drop the overlay and build both again.
        unmount(&target, UnmountFlags::DETACH)
            .map_err(mnt_err(format!("unmounting {}", target.display())))?;
    }
    if !backed {
        match mount_bind(&target, &backing) {
            Ok(()) => {}
            Err(e) if permission_denied(&e) => {
                tracing::warn!(target = %target.display(), "cannot mount ({e}); the target directory is not protected against writes");
                return Ok((Mode::NotEnforced, target));
            }
            Err(e) => {
                return Err(mnt_err(format!(
                    "bind-mounting {} on {}",
                    target.display(),
                    backing.display()
                ))(e))
            }
        }
        mount_change(&backing, MountPropagationFlags::PRIVATE)
            .map_err(mnt_err(format!("making {} private", backing.display())))?;
    }
    let overlay = (|| {
        mount_bind(&target, &target)?;
        mount_change(&target, MountPropagationFlags::PRIVATE)?;
        mount_remount(&target, MountFlags::BIND | MountFlags::RDONLY, "")
    })();
    if let Err(e) = overlay {
        let _ = release(&target, &backing);
        return Err(mnt_err(format!("mounting {} read-only", target.display()))(
            e,
        ));
    }
    Ok((Mode::BindMount, backing))
}

/// Undoes `protect`: the target directory is writable again (its data stays), the private
/// view is gone. Safe to call when nothing is mounted.
pub fn release(target: &Path, backing: &Path) -> Result<()> {
    if let Ok(target) = target.canonicalize() {
        while mounts_at(&target)?.last().is_some_and(|m| m.read_only) {
            unmount(&target, UnmountFlags::DETACH)
                .map_err(mnt_err(format!("unmounting {}", target.display())))?;
        }
    }
    if let Ok(b) = backing.canonicalize() {
        while !mounts_at(&b)?.is_empty() {
            unmount(&b, UnmountFlags::DETACH)
                .map_err(mnt_err(format!("unmounting {}", b.display())))?;
        }
        let _ = std::fs::remove_dir(&b);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need_root() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test mounts: run it as root (CI does)"
        );
    }

    #[test]
    fn target_is_read_only_and_the_private_view_writable_until_released() {
        need_root();
        let t = tempfile::tempdir().unwrap();
        let (target, backing) = (t.path().join("target"), t.path().join("mnt/rel"));
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("kept"), b"data").unwrap();
        let (mode, via) = protect(&target, &backing).unwrap();
        assert_eq!(mode, Mode::BindMount);
        let e = std::fs::write(target.join("x"), b"no").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        std::fs::write(via.join("y"), b"yes").unwrap();
        assert_eq!(std::fs::read(target.join("y")).unwrap(), b"yes");
        // Idempotent, also after the private view vanished (e.g. a reboot kept neither).
        assert_eq!(protect(&target, &backing).unwrap().0, Mode::BindMount);
        unmount(&via, UnmountFlags::DETACH).unwrap();
        let (_, via) = protect(&target, &backing).unwrap();
        std::fs::write(via.join("z"), b"again").unwrap();
        assert!(std::fs::write(target.join("x"), b"no").is_err());
        release(&target, &backing).unwrap();
        std::fs::write(target.join("x"), b"now").unwrap();
        assert_eq!(std::fs::read(target.join("kept")).unwrap(), b"data");
        assert_eq!(std::fs::read(target.join("z")).unwrap(), b"again");
        assert!(!backing.exists());
        release(&target, &backing).unwrap();
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape(r"/srv/with\040space"), "/srv/with space");
        assert_eq!(unescape(r"/a\134b"), r"/a\b");
        assert_eq!(unescape(r"/plain\04"), r"/plain\04");
    }
}
