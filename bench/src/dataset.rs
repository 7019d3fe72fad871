//! Benchmark datasets, generated once per spec under the work directory and reused (a marker
//! file records the spec). Data is pseudo-random (incompressible) from a fixed seed. At scale 1:
//! large = 2 x 512 MiB, small = 20,000 x 4 KiB in 100 directories (the two sets),
//! mixed = 8 x 64 MiB + 20,000 files of 1-64 KiB + symlinks, tree = a seeded random tree of
//! 100,000 files (0-4 KiB, random modes and mtimes) in 2,000 directories (the no-op rerun's).

use anyhow::{Context, Result};
use mover::gen::Rng;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Kind {
    Large,
    Small,
    Mixed,
    Tree,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Large => "large",
            Kind::Small => "small",
            Kind::Mixed => "mixed",
            Kind::Tree => "tree",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Dataset {
    pub kind: Kind,
    pub dir: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub spec: String,
}

/// Writes `size` pseudo-random bytes from `rng` to a new file `p`.
pub fn write_file(p: &Path, rng: &mut Rng, size: usize, buf: &mut Vec<u8>) -> Result<()> {
    let mut f = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
    let mut left = size;
    while left > 0 {
        let n = left.min(8 << 20);
        buf.resize(n, 0);
        rng.fill(buf);
        f.write_all(buf)
            .with_context(|| format!("writing {}", p.display()))?;
        left -= n;
    }
    Ok(())
}

/// Creates (or reuses) the dataset under `work/<kind>/src`.
pub fn ensure(work: &Path, kind: Kind, scale: f64) -> Result<Dataset> {
    let s = |n: f64| ((n * scale).round() as usize).max(1);
    // (large files, large size, small files, small min, small max, dirs)
    let (nl, ls, ns, smin, smax, dirs) = match kind {
        Kind::Large => (2, s(512.0 * 1048576.0), 0, 0, 0, 1),
        Kind::Small => (0, 0, s(20_000.0), 4096, 4096, s(100.0)),
        Kind::Mixed => (8, s(64.0 * 1048576.0), s(20_000.0), 1024, 65536, s(100.0)),
        Kind::Tree => (0, 0, s(100_000.0), 0, 4096, s(2_000.0)),
    };
    let spec = format!("v2 {kind:?} large={nl}x{ls} small={ns}x{smin}..{smax} dirs={dirs}");
    let dir = work.join(kind.name()).join("src");
    let marker = work.join(kind.name()).join("spec");
    let files = (nl + ns) as u64;
    let bytes_est = |dir: &Path| -> Result<u64> { Ok(count(dir)?.1) };
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(spec.as_str()) {
        let bytes = bytes_est(&dir)?;
        return Ok(Dataset {
            kind,
            dir,
            files,
            bytes,
            spec,
        });
    }
    eprintln!("bench: generating {} dataset ({spec})", kind.name());
    crate::trash::Trash::new(work).delete(&work.join(kind.name()))?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if kind == Kind::Tree {
        // mover's own seeded generator: random parents, sizes, modes and mtimes. Without its
        // extras (hard links, xattrs, a path beyond PATH_MAX), which rsync cannot all copy.
        let spec = mover::gen::TreeSpec {
            seed: 0x5eed_7733,
            small_files: ns,
            small_max: smax,
            large_files: 0,
            large_size: 0,
            fanout: dirs,
            extras: false,
        };
        mover::gen::generate(&dir, &spec).context("generating the tree")?;
    }
    let mut rng = Rng(0x5eed ^ kind as u64);
    let mut buf = Vec::new();
    for i in 0..nl {
        write_file(&dir.join(format!("large{i}.bin")), &mut rng, ls, &mut buf)?;
    }
    for i in (0..ns).filter(|_| kind != Kind::Tree) {
        let d = dir.join(format!("d{:04}", i % dirs));
        if i < dirs {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let size = smin + rng.below((smax - smin + 1) as u64) as usize;
        write_file(&d.join(format!("f{i:06}")), &mut rng, size, &mut buf)?;
    }
    if kind == Kind::Mixed {
        for i in 0..s(100.0) {
            std::os::unix::fs::symlink(
                format!("../large{}.bin", i % 8),
                dir.join(format!("d{:04}/link{i}", i % dirs)),
            )
            .context("creating symlink")?;
        }
    }
    std::fs::write(&marker, &spec).context("writing dataset marker")?;
    let bytes = bytes_est(&dir)?;
    Ok(Dataset {
        kind,
        dir,
        files,
        bytes,
        spec,
    })
}

/// (regular files, bytes) under `dir`, not following symlinks.
pub fn count(dir: &Path) -> Result<(u64, u64)> {
    let (files, _, bytes) = count_all(dir)?;
    Ok((files, bytes))
}

/// (regular files, every item but `dir` itself, bytes of regular files) under `dir`, not
/// following symlinks.
pub fn count_all(dir: &Path) -> Result<(u64, u64, u64)> {
    let (mut files, mut entries, mut bytes) = (0, 0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e?;
            let m = e.path().symlink_metadata()?;
            if m.is_dir() && e.file_name() == ".mover-state" {
                continue; // mover's scratch in a btrfs source, not data
            }
            entries += 1;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                files += 1;
                bytes += m.len();
            }
        }
    }
    Ok((files, entries, bytes))
}

/// Files per directory of the trees of `ensure_files`.
pub const FILES_PER_DIR: usize = 200;
/// Size of each file of the trees of `ensure_files`: small, so a tree's cost is per file.
pub const FILES_SIZE: usize = 1024;

/// A tree of many small files (the continuous-replication and failover benchmarks' sources).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FilesTree {
    pub dir: PathBuf,
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub spec: String,
}

/// Creates (or reuses) `work/files-<files>/src`: `files` files of FILES_SIZE seeded
/// pseudo-random bytes, FILES_PER_DIR to a directory (d00000/f0000000, ...).
pub fn ensure_files(work: &Path, files: usize) -> Result<FilesTree> {
    ensure_files_large(work, files, (0, 0))
}

/// `ensure_files` plus `large.0` files of `large.1` seeded pseudo-random bytes at the top
/// (large0.bin, ...), in `work/files-<files>-<n>x<size>/src`; without large files the same
/// tree, in the same place, as `ensure_files`.
pub fn ensure_files_large(work: &Path, files: usize, large: (usize, usize)) -> Result<FilesTree> {
    let (nl, ls) = if large.0 == 0 || large.1 == 0 {
        (0, 0)
    } else {
        large
    };
    let dirs = files.div_ceil(FILES_PER_DIR).max(1);
    let (spec, base) = if nl == 0 {
        (
            format!("v1 files={files}x{FILES_SIZE} dirs={dirs}"),
            work.join(format!("files-{files}")),
        )
    } else {
        (
            format!("v1 files={files}x{FILES_SIZE} dirs={dirs} large={nl}x{ls}"),
            work.join(format!("files-{files}-{nl}x{ls}")),
        )
    };
    let (dir, marker) = (base.join("src"), base.join("spec"));
    let tree = FilesTree {
        dir: dir.clone(),
        files: (files + nl) as u64,
        dirs: dirs as u64,
        bytes: (files * FILES_SIZE + nl * ls) as u64,
        spec: spec.clone(),
    };
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(spec.as_str()) {
        return Ok(tree);
    }
    eprintln!("bench: generating {} ({spec})", dir.display());
    crate::trash::Trash::new(work).delete(&base)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng = Rng(0x5eed_f11e ^ files as u64);
    let mut buf = Vec::new();
    for i in 0..files {
        let d = dir.join(format!("d{:05}", i / FILES_PER_DIR));
        if i % FILES_PER_DIR == 0 {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        write_file(&d.join(format!("f{i:07}")), &mut rng, FILES_SIZE, &mut buf)?;
    }
    for i in 0..nl {
        write_file(&dir.join(format!("large{i}.bin")), &mut rng, ls, &mut buf)?;
    }
    std::fs::write(&marker, &spec).context("writing dataset marker")?;
    Ok(tree)
}

/// Path of small file `i` of an `ensure_files` tree, relative to its root.
pub fn small_file(i: usize) -> PathBuf {
    PathBuf::from(format!("d{:05}/f{i:07}", i / FILES_PER_DIR))
}

/// Removes `dir` if it exists.
pub fn remove(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}
