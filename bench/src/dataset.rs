//! Benchmark datasets, generated once per spec under the work directory and reused (a marker
//! file records the spec). Data is pseudo-random (incompressible) from a fixed seed.

use anyhow::{Context, Result};
use mover::gen::Rng;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Kind {
    Large,
    Small,
    Mixed,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Large => "large",
            Kind::Small => "small",
            Kind::Mixed => "mixed",
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
        Kind::Large => (4, s(512.0 * 1048576.0), 0, 0, 0, 1),
        Kind::Small => (0, 0, s(50_000.0), 4096, 4096, s(250.0)),
        Kind::Mixed => (8, s(64.0 * 1048576.0), s(20_000.0), 1024, 65536, s(100.0)),
    };
    let spec = format!("v1 {kind:?} large={nl}x{ls} small={ns}x{smin}..{smax} dirs={dirs}");
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
    let _ = std::fs::remove_dir_all(work.join(kind.name()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng = Rng(0x5eed ^ kind as u64);
    let mut buf = Vec::new();
    for i in 0..nl {
        write_file(&dir.join(format!("large{i}.bin")), &mut rng, ls, &mut buf)?;
    }
    for i in 0..ns {
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
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e?;
            let m = e.path().symlink_metadata()?;
            if m.is_dir() && e.file_name() == ".mover-state" {
                continue; // mover's scratch in a btrfs source, not data
            }
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                files += 1;
                bytes += m.len();
            }
        }
    }
    Ok((files, bytes))
}
