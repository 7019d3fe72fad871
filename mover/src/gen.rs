//! Seeded tree generator for the demo and the tests: a mix of everything the data plane
//! replicates (small, empty, large and sparse files, nested directories, symlinks, hard links,
//! `user.*` xattrs, non-UTF-8 names, odd modes and mtimes). Deterministic for a seed.

use crate::error::{IoContext, Result};
use rustix::fs::{Mode, OFlags};
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct TreeSpec {
    pub seed: u64,
    pub small_files: usize,
    /// Largest small-file size.
    pub small_max: usize,
    pub large_files: usize,
    pub large_size: usize,
    pub fanout: usize,
    /// Add symlinks, hard links, xattrs, a sparse file, odd names and an empty file.
    pub extras: bool,
}

impl Default for TreeSpec {
    fn default() -> Self {
        TreeSpec {
            seed: 1,
            small_files: 200,
            small_max: 8192,
            large_files: 2,
            large_size: 3 << 20,
            fanout: 8,
            extras: true,
        }
    }
}

/// Tiny deterministic PRNG (splitmix64): generation must not depend on a crate's version.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn write_file(p: &Path, data: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(p).ctx(|| format!("creating {}", p.display()))?;
    f.write_all(data).ctx(|| format!("writing {}", p.display()))
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) -> Result<()> {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .ctx(|| format!("utimensat {}", p.display()))
}

/// Generates the tree under `root` (created if missing). Returns the number of regular files.
pub fn generate(root: &Path, spec: &TreeSpec) -> Result<usize> {
    let mut rng = Rng(spec.seed);
    std::fs::create_dir_all(root).ctx(|| format!("creating {}", root.display()))?;
    let mut dirs: Vec<PathBuf> = vec![root.to_path_buf()];
    for i in 0..spec.fanout {
        let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let d = parent.join(format!("dir{i:03}"));
        std::fs::create_dir_all(&d).ctx(|| format!("mkdir {}", d.display()))?;
        dirs.push(d);
    }
    // The extras write 1 MiB into a sparse file whatever the other sizes are.
    let mut buf = vec![0u8; spec.small_max.max(spec.large_size).max(1 << 20)];
    let mut files = 0;
    for i in 0..spec.small_files {
        let d = &dirs[rng.below(dirs.len() as u64) as usize];
        let n = rng.below(spec.small_max as u64 + 1) as usize;
        rng.fill(&mut buf[..n]);
        let p = d.join(format!("f{i:05}.dat"));
        write_file(&p, &buf[..n])?;
        std::fs::set_permissions(
            &p,
            std::fs::Permissions::from_mode(0o600 | (rng.below(8) as u32) << 3),
        )
        .ctx(|| format!("chmod {}", p.display()))?;
        set_mtime(
            &p,
            1_600_000_000 + rng.below(100_000_000) as i64,
            rng.below(1_000_000_000) as i64,
        )?;
        files += 1;
    }
    for i in 0..spec.large_files {
        rng.fill(&mut buf[..spec.large_size]);
        let p = root.join(format!("large{i}.bin"));
        write_file(&p, &buf[..spec.large_size])?;
        files += 1;
    }
    if spec.extras {
        let x = root.join("extras");
        std::fs::create_dir_all(&x).ctx(|| "mkdir extras".to_string())?;
        write_file(&x.join("empty"), b"")?;
        // A 64 MiB file holding 1 MiB of data in its middle: holes must stay holes.
        let sp = x.join("sparse.img");
        let f = std::fs::File::create(&sp).ctx(|| "creating sparse file".to_string())?;
        f.set_len(64 << 20)
            .ctx(|| "sizing sparse file".to_string())?;
        rng.fill(&mut buf[..1 << 20]);
        std::os::unix::fs::FileExt::write_all_at(&f, &buf[..1 << 20], 32 << 20)
            .ctx(|| "writing sparse data".to_string())?;
        drop(f);
        files += 2;
        let weird = x.join(OsStr::from_bytes(b"caf\xe9-not-utf8 \n\t name"));
        write_file(&weird, b"latin-1 name")?;
        files += 1;
        symlink("../large0.bin", x.join("link-to-large")).ctx(|| "symlink".to_string())?;
        symlink("/nonexistent/absolute/target", x.join("dangling"))
            .ctx(|| "symlink".to_string())?;
        let h = x.join("hard-a");
        write_file(&h, b"shared inode")?;
        std::fs::hard_link(&h, x.join("hard-b")).ctx(|| "hard link".to_string())?;
        files += 1;
        rustix::fs::setxattr(
            &h,
            "user.mover.test",
            b"value-1",
            rustix::fs::XattrFlags::empty(),
        )
        .ctx(|| "setxattr".to_string())?;
        rustix::fs::setxattr(
            &x,
            "user.dir.attr",
            b"on a directory",
            rustix::fs::XattrFlags::empty(),
        )
        .ctx(|| "setxattr".to_string())?;
        // A deep path longer than PATH_MAX, built with *at calls since no single path reaches it.
        let mut fd = rustix::fs::open(&x, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .ctx(|| "open extras".to_string())?;
        for i in 0..40 {
            let name = format!("{:0>120}", i);
            rustix::fs::mkdirat(&fd, name.as_str(), Mode::from_raw_mode(0o755))
                .ctx(|| "deep mkdir".to_string())?;
            fd = rustix::fs::openat(
                &fd,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .ctx(|| "deep open".to_string())?;
        }
        let f = rustix::fs::openat(
            &fd,
            "bottom.txt",
            OFlags::WRONLY | OFlags::CREATE,
            Mode::from_raw_mode(0o644),
        )
        .ctx(|| "deep file".to_string())?;
        std::fs::File::from(f)
            .write_all(b"at the bottom")
            .ctx(|| "deep write".to_string())?;
        files += 1;
        std::fs::set_permissions(&x, std::fs::Permissions::from_mode(0o750))
            .ctx(|| "chmod".to_string())?;
    }
    Ok(files)
}
