//! The per-file limit of a dataset of many small files: how fast this machine's file system
//! takes the dataset's files as new files, with nothing else in the way. Bandwidth limits say
//! nothing about 20,000 files of 4 KiB (they sit at a few percent of every one of them); what
//! bounds such a copy is creating, writing and closing each file, then writing it all back.
//!
//! Measured as the least any replicator must do for a durable, faithful copy: the dataset's
//! directories made, then each file created (`O_CREAT | O_EXCL`), its bytes written, its mtime
//! set and closed, by N threads that each own whole directories (no two threads
//! contend for one directory's lock), and one `syncfs` at the end, as mover's recovery point
//! and `cp -a` + `sync` have. Timed from the first `mkdir` to the end of the `syncfs`. The
//! best of `REPS` runs, each into a new directory: a limit is what the machine can do at best.

use anyhow::{Context, Result};
use mover::gen::Rng;
use serde::Serialize;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

/// Runs per measurement; the fastest counts.
pub const REPS: usize = 3;
/// A dataset gets a creation limit when it has more files than this ...
pub const MIN_FILES: u64 = 1_000;
/// ... of at most this mean size: beyond it, bytes weigh more than files.
pub const MAX_MEAN_SIZE: u64 = 64 << 10;
/// Largest write of one `write(2)`: bigger files are written in pieces.
const PIECE: usize = 1 << 20;

/// Whether a dataset of `files` files and `bytes` bytes gets a creation limit: many small files.
pub fn applies(files: u64, bytes: u64) -> bool {
    files > MIN_FILES && bytes / files.max(1) <= MAX_MEAN_SIZE
}

/// One dataset's creation limit on one destination.
#[derive(Debug, Clone, Serialize)]
pub struct Creation {
    pub dataset: String,
    /// "disk" or "tmpfs".
    pub dest: String,
    pub files: u64,
    pub bytes: u64,
    pub threads: usize,
    /// Best of the runs, and every run's seconds.
    pub seconds: f64,
    pub runs: Vec<f64>,
    /// The dataset's bytes over `seconds`, MB/s (10^6 bytes), to compare with other bounds.
    pub mb_s: f64,
}

/// A directory of a dataset (relative to its root) with its files' names and sizes.
pub type Dir = (PathBuf, Vec<(PathBuf, u64)>);

/// The files of the dataset under `src` by directory, directories and the files in each sorted
/// by name, so every run creates them in one order.
pub fn layout(src: &Path) -> Result<Vec<Dir>> {
    let mut files = Vec::new();
    crate::limits::files_under(src, &mut files)?;
    let mut dirs: std::collections::BTreeMap<PathBuf, Vec<(PathBuf, u64)>> = Default::default();
    for f in files {
        let rel = f.strip_prefix(src).context("a file outside its dataset")?;
        let size = std::fs::symlink_metadata(&f)
            .with_context(|| format!("stat {}", f.display()))?
            .len();
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let name = rel.file_name().context("a file without a name")?;
        dirs.entry(parent).or_default().push((name.into(), size));
    }
    for files in dirs.values_mut() {
        files.sort();
    }
    Ok(dirs.into_iter().collect())
}

/// Creates the files of `layout` under `dir` (which must not exist yet) with `threads`
/// threads, then syncs its file system; returns the seconds taken.
pub fn create_once(layout: &[Dir], dir: &Path, threads: usize) -> Result<f64> {
    let threads = threads.max(1);
    let layout = Arc::new(layout.to_vec());
    let go = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (layout, go, dir) = (layout.clone(), go.clone(), dir.to_path_buf());
            std::thread::spawn(move || -> Result<()> {
                let mut rng = Rng(0xc4ea7e + t as u64);
                let mut buf = vec![0u8; PIECE];
                rng.fill(&mut buf);
                // Any fixed time: what counts is that each file's mtime is set, as a copy must.
                let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
                go.wait();
                for (k, (sub, files)) in layout.iter().enumerate() {
                    if k % threads != t {
                        continue;
                    }
                    for (i, (name, size)) in files.iter().enumerate() {
                        let p = dir.join(sub).join(name);
                        let mut f = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o644)
                            .open(&p)
                            .with_context(|| format!("creating {}", p.display()))?;
                        // Each file's first bytes differ (a thread's files share the rest):
                        // no two files are the same for a layer below to deduplicate.
                        buf[..8].copy_from_slice(&((k << 32 | i) as u64).to_le_bytes());
                        let mut left = *size as usize;
                        while left > 0 {
                            let n = left.min(PIECE);
                            f.write_all(&buf[..n])
                                .with_context(|| format!("writing {}", p.display()))?;
                            left -= n;
                        }
                        f.set_modified(mtime)
                            .with_context(|| format!("setting the mtime of {}", p.display()))?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    let start = Instant::now();
    let made = layout.iter().try_for_each(|(sub, _)| {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))
    });
    // The threads start once the directories exist (or with nothing to do after a failure,
    // which they then report as missing directories; the mkdir error is the one returned).
    go.wait();
    let mut err = made.err();
    for w in workers {
        match w
            .join()
            .map_err(|_| anyhow::anyhow!("creating thread panicked"))
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => {
                err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = err {
        return Err(e);
    }
    let root = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    rustix::fs::syncfs(&root).with_context(|| format!("syncfs of {}", dir.display()))?;
    Ok(start.elapsed().as_secs_f64())
}

/// The limit from `runs` (seconds) of creating a dataset of `files` files and `bytes` bytes: the fastest run.
pub fn summarize(
    dataset: &str,
    dest: &str,
    files: u64,
    bytes: u64,
    threads: usize,
    runs: Vec<f64>,
) -> Creation {
    assert!(!runs.is_empty(), "a creation limit needs at least one run");
    let seconds = runs.iter().copied().fold(f64::INFINITY, f64::min);
    Creation {
        dataset: dataset.into(),
        dest: dest.into(),
        files,
        bytes,
        threads,
        seconds,
        mb_s: bytes as f64 / seconds / 1e6,
        runs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_copies_the_layout_of_a_dataset_and_times_it() {
        let src = tempfile::tempdir().unwrap();
        for d in ["a", "b/c", "e"] {
            std::fs::create_dir_all(src.path().join(d)).unwrap();
        }
        std::fs::write(src.path().join("top"), vec![1u8; 10]).unwrap();
        for (i, d) in ["a", "b/c", "e"].iter().enumerate() {
            for j in 0..5 {
                let size = 1000 * i + j;
                std::fs::write(src.path().join(d).join(format!("f{j}")), vec![2u8; size]).unwrap();
            }
        }
        let want: u64 = 10
            + (0..3)
                .flat_map(|i| (0..5).map(move |j| 1000 * i + j))
                .sum::<usize>() as u64;
        let l = layout(src.path()).unwrap();
        assert_eq!(l.len(), 4, "the root and three directories: {l:?}");
        let dst = tempfile::tempdir().unwrap();
        let out = dst.path().join("run");
        create_once(&l, &out, 2).unwrap();
        let mut made = Vec::new();
        crate::limits::files_under(&out, &mut made).unwrap();
        assert_eq!(made.len(), 16, "every file, and no other");
        let got: u64 = made
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(got, want, "every file at its size");
        let m = std::fs::metadata(out.join("b/c/f3")).unwrap();
        assert_eq!(
            m.modified().unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            "the mtime is set"
        );
        let a = std::fs::read(out.join("b/c/f3")).unwrap();
        let b = std::fs::read(out.join("b/c/f4")).unwrap();
        assert!(a.iter().any(|&x| x != 0), "data is written");
        assert_ne!(a[..8], b[..8], "each file's bytes differ");
        assert!(
            create_once(&l, &out, 2).is_err(),
            "a run never writes over existing files"
        );
        // A directory that cannot be made fails the run, promptly (no thread waits forever).
        let file = dst.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let err = create_once(&l, &file.join("run"), 2).unwrap_err();
        assert!(format!("{err:#}").contains("creating"), "{err:#}");
        assert!(applies(20_000, 80_000_000));
        assert!(!applies(2, 1 << 30), "two large files");
        assert!(!applies(5_000, 5_000 << 20), "files of 1 MiB");
        let c = summarize("small", "disk", 16, want, 2, vec![0.5, 0.25, 0.4]);
        assert_eq!(c.seconds, 0.25, "the best run counts");
        assert!((c.mb_s - want as f64 / 0.25 / 1e6).abs() < 1e-12);
    }
}
