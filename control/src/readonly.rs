//! Keeping an authorized target directory read-only to everyone but the daemon.
//!
//! How: the daemon first bind-mounts the target directory onto a private path in its data dir
//! (`<data-dir>/mnt/<id>`, under a 0700 directory), then bind-mounts the target directory onto
//! itself and remounts that read-only. Every process using the target path, root included, now
//! sees a read-only file system (EROFS); the receiver writes through the private mount, which is
//! the same file system mounted read-write. Deleting the relationship removes both mounts, and
//! the directory is writable again with its data in place.
//!
//! The read-only view also keeps what the file system under it has (nosuid, nodev, noexec,
//! atime flags) and adds nosuid, nodev and noexec unless the target's operator accepted setuid
//! binaries, devices or executables for the replica (`ReplicaOptions`): a setuid-root binary or
//! a device node replicated from the source is inert on the target.
//!
//! The target directory is the pinned one (`crate::pinned`): both mounts are made from a
//! descriptor checked to be it, never from a path resolved again.
//!
//! Fallback: where mounting is not permitted (no CAP_SYS_ADMIN, e.g. an unprivileged
//! container), nothing is mounted, the receiver writes the target path directly and the
//! relationship reports `read_only: not_enforced`; operators then rely on permissions.
//!
//! Mounts outlive a killed daemon; `protect` is idempotent and rebuilds what is missing.

use crate::error::IoContext;
use crate::model::{PinnedDir, ReplicaOptions};
use crate::pinned;
use crate::{Error, Result};
use rustix::fs::StatVfsMountFlags as Vfs;
use rustix::mount::{
    mount_bind, mount_change, mount_remount, unmount, MountFlags, MountPropagationFlags,
    UnmountFlags,
};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

pub use crate::model::ReadOnlyMode as Mode;

/// What the read-only view must have, whatever is under it: read-only, and nosuid, nodev and
/// noexec unless the operator accepted what each stops.
fn required(opts: ReplicaOptions) -> Vfs {
    let mut f = Vfs::RDONLY | Vfs::NOSUID | Vfs::NODEV | Vfs::NOEXEC;
    if opts.allow_setuid {
        f.remove(Vfs::NOSUID);
    }
    if opts.allow_devices {
        f.remove(Vfs::NODEV);
    }
    if opts.allow_exec {
        f.remove(Vfs::NOEXEC);
    }
    f
}

/// The remount flags of the read-only view over a mount whose flags are `under`: `required`,
/// plus the per-mount flags it already has (a bind remount sets every per-mount flag at once,
/// so one left out is cleared: nosuid, nodev and noexec would be lost, and atime would fall
/// back to relatime).
fn view_flags(under: Vfs, opts: ReplicaOptions) -> MountFlags {
    let want = required(opts) | under;
    let mut f = MountFlags::BIND;
    for (v, m) in [
        (Vfs::RDONLY, MountFlags::RDONLY),
        (Vfs::NOSUID, MountFlags::NOSUID),
        (Vfs::NODEV, MountFlags::NODEV),
        (Vfs::NOEXEC, MountFlags::NOEXEC),
        (Vfs::NOATIME, MountFlags::NOATIME),
        (Vfs::NODIRATIME, MountFlags::NODIRATIME),
        (Vfs::RELATIME, MountFlags::RELATIME),
    ] {
        if want.contains(v) {
            f |= m;
        }
    }
    if !want.intersects(Vfs::NOATIME | Vfs::RELATIME) {
        f |= MountFlags::STRICTATIME;
    }
    f
}

fn mount_flags(fd: BorrowedFd<'_>, what: &Path) -> Result<Vfs> {
    Ok(rustix::fs::fstatvfs(fd)
        .ctx(|| format!("statvfs of {}", what.display()))?
        .f_flag)
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

/// Makes the pinned directory `target` read-only (with the flags `opts` calls for) with a
/// writable view at `backing` (created if missing); returns how it is enforced and the
/// directory the receiver must write through (for `NotEnforced`, the target's own path).
pub fn protect(
    target: &PinnedDir,
    backing: &Path,
    opts: ReplicaOptions,
) -> Result<(Mode, PathBuf)> {
    let path = PathBuf::from(&target.path);
    let dir = pinned::open(target, "target directory")?;
    std::fs::create_dir_all(backing).ctx(|| format!("creating {}", backing.display()))?;
    let backing = canonical(backing, "private mount point")?;
    let overlay = mounts_at(&path)?.last().is_some_and(|m| m.read_only);
    let backed = !mounts_at(&backing)?.is_empty();
    if overlay && backed && pinned::shows(&backing, target) {
        // Opened through the path, `dir` is the read-only view: make sure it has the flags
        // (one made by an older version has none of nosuid, nodev, noexec).
        let has = mount_flags(dir.fd(), &path)?;
        let need = required(opts);
        if !has.contains(need) {
            mount_remount(dir.proc_path(), view_flags(has, opts), "").map_err(mnt_err(format!(
                "hardening the read-only view of {}",
                path.display()
            )))?;
        }
        return Ok((Mode::BindMount, backing));
    }
    // Build both again from the writable directory: a private view taken of the read-only
    // overlay would be read-only itself, and a stale one may show something else.
    let dir = if overlay {
        unmount(&path, UnmountFlags::DETACH)
            .map_err(mnt_err(format!("unmounting {}", path.display())))?;
        pinned::open(target, "target directory")?
    } else {
        dir
    };
    if backed {
        release_backing(&backing)?;
        std::fs::create_dir_all(&backing).ctx(|| format!("creating {}", backing.display()))?;
    }
    match mount_bind(dir.proc_path(), &backing) {
        Ok(()) => {}
        Err(e) if permission_denied(&e) => {
            tracing::warn!(target = %path.display(), "cannot mount ({e}); the target directory is not protected against writes");
            return Ok((Mode::NotEnforced, path));
        }
        Err(e) => {
            return Err(mnt_err(format!(
                "bind-mounting {} on {}",
                path.display(),
                backing.display()
            ))(e))
        }
    }
    mount_change(&backing, MountPropagationFlags::PRIVATE)
        .map_err(mnt_err(format!("making {} private", backing.display())))?;
    let under = mount_flags(dir.fd(), &path)?;
    let overlay = (|| {
        // Mounted on the checked directory itself (the descriptor's place), then found again
        // through the path: the view is what the path shows now.
        mount_bind(dir.proc_path(), dir.proc_path()).map_err(mnt_err(format!(
            "bind-mounting {} on itself",
            path.display()
        )))?;
        let view = pinned::open(target, "target directory")?;
        mount_change(view.proc_path(), MountPropagationFlags::PRIVATE)
            .map_err(mnt_err(format!("making {} private", path.display())))?;
        mount_remount(view.proc_path(), view_flags(under, opts), "")
            .map_err(mnt_err(format!("mounting {} read-only", path.display())))?;
        let has = mount_flags(view.fd(), &path)?;
        if !has.contains(required(opts)) {
            return Err(Error::Conflict(format!(
                "the read-only view of {} lacks flags it was mounted with ({:?} of {:?})",
                path.display(),
                has,
                required(opts)
            )));
        }
        Ok(())
    })();
    if let Err(e) = overlay {
        let _ = release(&path, &backing);
        return Err(e);
    }
    Ok((Mode::BindMount, backing))
}

/// Undoes `protect`: the target directory is writable again (its data stays), the private
/// view is gone. Safe to call when nothing is mounted. `target` must have been checked to be
/// the pinned directory (its read-only views are lifted by path).
pub fn release(target: &Path, backing: &Path) -> Result<()> {
    if let Ok(target) = target.canonicalize() {
        while mounts_at(&target)?.last().is_some_and(|m| m.read_only) {
            unmount(&target, UnmountFlags::DETACH)
                .map_err(mnt_err(format!("unmounting {}", target.display())))?;
        }
    }
    release_backing(backing)
}

/// Removes the private writable view alone (`backing` is in the data dir, named by a checked
/// id), leaving whatever is at the target's path untouched.
pub fn release_backing(backing: &Path) -> Result<()> {
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

    fn flags(p: &Path) -> Vfs {
        rustix::fs::statvfs(p).unwrap().f_flag
    }

    #[test]
    fn a_mode_is_stored_sent_and_read_by_one_name() {
        for m in [Mode::BindMount, Mode::NotEnforced] {
            assert_eq!(Mode::parse(m.name()), Some(m));
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
        }
        assert_eq!(Mode::parse("overlay"), None);
    }

    #[test]
    fn target_is_read_only_and_the_private_view_writable_until_released() {
        need_root();
        let t = tempfile::tempdir().unwrap();
        let (target, backing) = (t.path().join("target"), t.path().join("mnt/rel"));
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("kept"), b"data").unwrap();
        let pin = pinned::pin(&target, "target").unwrap().pin().clone();
        let opts = ReplicaOptions::default();
        let (mode, via) = protect(&pin, &backing, opts).unwrap();
        assert_eq!(mode, Mode::BindMount);
        let e = std::fs::write(target.join("x"), b"no").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        std::fs::write(via.join("y"), b"yes").unwrap();
        assert_eq!(std::fs::read(target.join("y")).unwrap(), b"yes");
        // Idempotent, also after the private view vanished (e.g. a reboot kept neither).
        assert_eq!(protect(&pin, &backing, opts).unwrap().0, Mode::BindMount);
        unmount(&via, UnmountFlags::DETACH).unwrap();
        let (_, via) = protect(&pin, &backing, opts).unwrap();
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
    fn the_read_only_view_is_nosuid_nodev_noexec_unless_accepted_and_keeps_its_file_systems_flags()
    {
        need_root();
        let t = tempfile::tempdir().unwrap();
        let base = t.path().canonicalize().unwrap();
        let strict = Vfs::RDONLY | Vfs::NOSUID | Vfs::NODEV | Vfs::NOEXEC;
        let (target, backing) = (base.join("target"), base.join("mnt/a"));
        std::fs::create_dir(&target).unwrap();
        let pin = pinned::pin(&target, "target").unwrap().pin().clone();
        protect(&pin, &backing, ReplicaOptions::default()).unwrap();
        assert!(flags(&target).contains(strict), "{:?}", flags(&target));
        assert!(
            !flags(&backing).contains(Vfs::RDONLY),
            "the private view stays writable"
        );
        release(&target, &backing).unwrap();

        // Everything accepted: only read-only is added to what the file system has.
        let under = flags(&target);
        let all = ReplicaOptions {
            allow_setuid: true,
            allow_devices: true,
            allow_exec: true,
        };
        protect(&pin, &backing, all).unwrap();
        assert_eq!(flags(&target) & strict, (under & strict) | Vfs::RDONLY);
        release(&target, &backing).unwrap();

        // A file system mounted nosuid,nodev,noexec,noatime keeps those flags on the view.
        let fs = base.join("fs");
        std::fs::create_dir(&fs).unwrap();
        rustix::mount::mount(
            "tmpfs",
            &fs,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::NOATIME,
            c"size=1m",
        )
        .unwrap();
        let inner = fs.join("target");
        std::fs::create_dir(&inner).unwrap();
        let pin2 = pinned::pin(&inner, "target").unwrap().pin().clone();
        let b2 = base.join("mnt/b");
        let kept = protect(&pin2, &b2, all).map(|_| flags(&inner));
        let _ = release(&inner, &b2);
        let _ = unmount(&fs, UnmountFlags::DETACH);
        assert!(kept.unwrap().contains(strict | Vfs::NOATIME));
    }

    #[test]
    fn a_read_only_view_from_an_older_version_gets_its_missing_flags() {
        need_root();
        let t = tempfile::tempdir().unwrap();
        let base = t.path().canonicalize().unwrap();
        let (target, backing) = (base.join("target"), base.join("mnt/rel"));
        std::fs::create_dir_all(&target).unwrap();
        std::fs::create_dir_all(&backing).unwrap();
        // What older versions mounted: a read-only bind that dropped nosuid, nodev and noexec.
        mount_bind(&target, &backing).unwrap();
        mount_bind(&target, &target).unwrap();
        mount_remount(&target, MountFlags::BIND | MountFlags::RDONLY, "").unwrap();
        let weak = flags(&target);
        let pin = pinned::pin(&target, "target").unwrap().pin().clone();
        let hardened = protect(&pin, &backing, ReplicaOptions::default()).map(|_| flags(&target));
        release(&target, &backing).unwrap();
        assert!(!weak.contains(Vfs::NOSUID), "{weak:?}");
        assert!(hardened
            .unwrap()
            .contains(Vfs::RDONLY | Vfs::NOSUID | Vfs::NODEV | Vfs::NOEXEC));
    }

    #[test]
    fn a_target_swapped_for_a_symlink_is_not_protected() {
        need_root();
        let t = tempfile::tempdir().unwrap();
        let base = t.path().canonicalize().unwrap();
        let (target, other) = (base.join("target"), base.join("other"));
        std::fs::create_dir(&target).unwrap();
        std::fs::create_dir(&other).unwrap();
        let pin = pinned::pin(&target, "target").unwrap().pin().clone();
        std::fs::remove_dir(&target).unwrap();
        std::os::unix::fs::symlink(&other, &target).unwrap();
        let e = protect(&pin, &base.join("mnt/x"), ReplicaOptions::default()).unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");
        assert!(mounts_at(&other).unwrap().is_empty());
        std::fs::write(other.join("w"), b"writable").unwrap();
    }

    #[test]
    fn view_flags_keep_the_mounts_own_and_add_what_is_required() {
        let none = ReplicaOptions::default();
        let f = view_flags(Vfs::empty(), none);
        let strict = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV;
        assert!(
            f.contains(MountFlags::BIND | strict | MountFlags::NOEXEC | MountFlags::STRICTATIME)
        );
        let all = ReplicaOptions {
            allow_setuid: true,
            allow_devices: true,
            allow_exec: true,
        };
        let f = view_flags(Vfs::RELATIME, all);
        assert_eq!(
            f,
            MountFlags::BIND | MountFlags::RDONLY | MountFlags::RELATIME
        );
        let f = view_flags(Vfs::NOSUID | Vfs::NOATIME | Vfs::NODIRATIME, all);
        assert_eq!(
            f,
            MountFlags::BIND
                | MountFlags::RDONLY
                | MountFlags::NOSUID
                | MountFlags::NOATIME
                | MountFlags::NODIRATIME
        );
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape(r"/srv/with\040space"), "/srv/with space");
        assert_eq!(unescape(r"/a\134b"), r"/a\b");
        assert_eq!(unescape(r"/plain\04"), r"/plain\04");
    }
}
