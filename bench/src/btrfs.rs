//! `--source-fs btrfs`: the incremental sources live in a btrfs subvolume on a loop-mounted
//! image, where mover snapshots the source for each job and finds changed blocks from the
//! extents the new snapshot shares with the previous one instead of reading whole files (rsync
//! reads them either way). Both tools read the same subvolume in the same run.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(c: &mut Command) -> Result<()> {
    let out = c.output().with_context(|| {
        format!("running {c:?} (scripts/install-bench-deps.sh installs btrfs-progs)")
    })?;
    if !out.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A loop-mounted btrfs image; unmounted (and its image removed) on drop.
pub struct Mount {
    pub dir: PathBuf,
    image: PathBuf,
}

impl Mount {
    /// Creates a sparse image of `size` bytes at `image`, formats and mounts it at `dir`.
    pub fn new(image: &Path, dir: &Path, size: u64) -> Result<Mount> {
        std::fs::File::create(image)?.set_len(size)?;
        run(Command::new("mkfs.btrfs").arg("-q").arg("-f").arg(image))?;
        std::fs::create_dir_all(dir)?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(dir))?;
        Ok(Mount {
            dir: dir.to_path_buf(),
            image: image.to_path_buf(),
        })
    }

    /// Creates subvolume `name` under the mount and returns its path.
    pub fn subvolume(&self, name: &str) -> Result<PathBuf> {
        let p = self.dir.join(name);
        run(Command::new("btrfs")
            .args(["-q", "subvolume", "create"])
            .arg(&p))?;
        Ok(p)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Copies the contents of `from` into the existing directory `to` (own inodes and extents).
pub fn copy_into(from: &Path, to: &Path) -> Result<()> {
    let st = Command::new("cp")
        .arg("-a")
        .arg("--reflink=never")
        .arg(from.join("."))
        .arg(to)
        .status()
        .context("running cp")?;
    if !st.success() {
        bail!("cp -a {}/. {} failed: {st}", from.display(), to.display());
    }
    Ok(())
}
