//! Sources of the incremental benchmark and the changes made to them between jobs. Every change
//! is made in place on a working copy (same inodes), as an application would, so mover's
//! manifest sees what changed the way it would in production; all changes are seeded.

use crate::dataset::write_file;
use anyhow::{bail, Context, Result};
use mover::gen::Rng;
use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The unit mover's manifest hashes and the unit the rewrite changes.
pub const BLOCK: u64 = 4096;

/// Overwrites `fraction` of the whole 4 KiB blocks of the regular files under `dir` with
/// random data: distinct blocks drawn uniformly over all files, 4 KiB-aligned, written in
/// place (pwrite). Returns the bytes rewritten.
pub fn rewrite_blocks(dir: &Path, fraction: f64, seed: u64) -> Result<u64> {
    let mut files: Vec<PathBuf> = Vec::new();
    crate::limits::files_under(dir, &mut files)?;
    files.sort();
    let mut ends = Vec::with_capacity(files.len()); // cumulative whole blocks
    let mut total = 0u64;
    for f in &files {
        total += std::fs::metadata(f)?.len() / BLOCK;
        ends.push(total);
    }
    if total == 0 {
        bail!("{} has no whole 4 KiB block to rewrite", dir.display());
    }
    let n = ((total as f64 * fraction).round() as u64).clamp(1, total);
    let mut rng = Rng(seed);
    let mut pick = BTreeSet::new();
    while (pick.len() as u64) < n {
        pick.insert(rng.below(total));
    }
    let mut buf = vec![0u8; BLOCK as usize];
    let (mut fi, mut open): (usize, Option<std::fs::File>) = (0, None);
    for b in pick {
        while b >= ends[fi] {
            fi += 1;
            open = None;
        }
        if open.is_none() {
            open = Some(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&files[fi])
                    .with_context(|| format!("opening {}", files[fi].display()))?,
            );
        }
        let first = if fi == 0 { 0 } else { ends[fi - 1] };
        rng.fill(&mut buf);
        let f = open.as_ref().context("file")?;
        f.write_all_at(&buf, (b - first) * BLOCK)
            .with_context(|| format!("writing {}", files[fi].display()))?;
    }
    Ok(n * BLOCK)
}

/// Name of the big directory of the rename scenario before rep `rep` renames it.
pub fn blob_dir(rep: usize) -> String {
    format!("blob-{rep}")
}

/// The rename scenario's source at `dir`: `blob-0/` with 4 files of 256 MiB (1 GiB at scale 1)
/// beside `keep/` with 1,000 files of 4 KiB that stay put.
pub fn build_rename_tree(dir: &Path, scale: f64) -> Result<()> {
    let s = |n: f64| ((n * scale).round() as usize).max(1);
    let (blob, keep) = (dir.join(blob_dir(0)), dir.join("keep"));
    std::fs::create_dir_all(&blob)?;
    std::fs::create_dir_all(&keep)?;
    let mut rng = Rng(0x5eed_0e0a);
    let mut buf = Vec::new();
    for i in 0..4 {
        write_file(
            &blob.join(format!("big{i}.bin")),
            &mut rng,
            s(256.0 * 1048576.0),
            &mut buf,
        )?;
    }
    for i in 0..s(1000.0) {
        write_file(&keep.join(format!("f{i:04}")), &mut rng, 4096, &mut buf)?;
    }
    Ok(())
}

/// Renames `blob-<rep>` to `blob-<rep+1>` under `dir`; returns the bytes it holds.
pub fn rename_blob(dir: &Path, rep: usize) -> Result<u64> {
    let (from, to) = (dir.join(blob_dir(rep)), dir.join(blob_dir(rep + 1)));
    let bytes = crate::dataset::count(&from)?.1;
    std::fs::rename(&from, &to)
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_changes_exactly_the_drawn_whole_blocks() {
        let dir = std::env::temp_dir().join(format!("bench-mutate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 10 + 30 whole blocks and partial tails, which are never touched.
        let sizes = [10 * BLOCK + 100, 30 * BLOCK + 7];
        let mut rng = Rng(1);
        for (i, &n) in sizes.iter().enumerate() {
            write_file(
                &dir.join(format!("f{i}")),
                &mut rng,
                n as usize,
                &mut Vec::new(),
            )
            .unwrap();
        }
        let read = |i: usize| std::fs::read(dir.join(format!("f{i}"))).unwrap();
        let before: Vec<Vec<u8>> = (0..2).map(read).collect();
        assert_eq!(rewrite_blocks(&dir, 0.25, 7).unwrap(), 10 * BLOCK);
        let mut changed = 0;
        for (i, old) in before.iter().enumerate() {
            let new = read(i);
            assert_eq!(new.len(), old.len());
            let whole = old.len() - old.len() % BLOCK as usize;
            assert_eq!(new[whole..], old[whole..]);
            changed += old[..whole]
                .chunks(BLOCK as usize)
                .zip(new[..whole].chunks(BLOCK as usize))
                .filter(|(a, b)| a != b)
                .count();
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(changed, 10);
    }
}
