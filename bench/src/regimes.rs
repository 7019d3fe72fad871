//! Initial syncs in every regime: for each dataset, destination (the work dir's disk or a
//! tmpfs) and source cache state (hot or cold), `reps` rotating reps of mover, rsync and
//! `cp -a` + `sync`, each into its own new destination directory.
//!
//! Destination scheme: a run's destination is created empty before the run is prepared, and
//! deleted after the run (once its copy is checked); then the work dir's and the destination's
//! file systems are syncfs'ed and the bench waits until the work dir's device is idle
//! (`proc::quiesce`). Only then is the next run prepared (cache dropped or source read) and
//! timed. Deleting a destination right before a timed run would put the deletion's journal
//! commit, discards and write-back inside that run; keeping every destination until the end
//! instead would need reps x tools copies of the dataset on disk (and in RAM for a tmpfs,
//! where they would crowd a hot source out of the page cache).
//!
//! One exception: the disk destinations of a dataset of many files are moved into the trash
//! after their run and deleted when every regime is done (trash.rs), because ext4 without a
//! journal scans past every inode freed in the last minute for each file it creates.

use crate::dataset::{self, Dataset};
use crate::measure::{rotation, Cache, Dest, Tool};
use crate::mover_run::{self, Keys};
use crate::proc;
use crate::report::{CellResult, Limits, Sample};
use crate::trash::{self, Trash};
use crate::{cp, rsync};
use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

pub struct Opts {
    pub work: PathBuf,
    pub tmpfs_dir: PathBuf,
    pub mover: PathBuf,
    pub sealed: Keys,
    pub plain: Keys,
    /// mover's workers, passed as `--threads`.
    pub threads: usize,
    pub reps: usize,
    /// The tools in their rep-0 order.
    pub tools: Vec<Tool>,
    pub caches: Vec<Cache>,
    pub dests: Vec<Dest>,
}

impl Opts {
    /// Where destinations of `kind` go for `dest`.
    pub fn dest_root(&self, kind: dataset::Kind, dest: Dest) -> PathBuf {
        match dest {
            Dest::Disk => self.work.join(kind.name()).join("dst"),
            Dest::Tmpfs => self.tmpfs_dir.join(kind.name()),
        }
    }
}

fn check_copy(src: &Path, dst: &Path, tool: Tool) -> Result<()> {
    let (a, b) = (dataset::count(src)?, dataset::count(dst)?);
    if a != b {
        bail!(
            "{tool:?} left {} files / {} bytes in {}, source has {} / {}",
            b.0,
            b.1,
            dst.display(),
            a.0,
            a.1
        );
    }
    Ok(())
}

/// Runs every cell for `datasets`; `limits` gives each cell its bound.
pub fn run(o: &Opts, datasets: &[Dataset], limits: Option<&Limits>) -> Result<Vec<CellResult>> {
    let trash = Trash::new(&o.work);
    // With limits measured just before (main.rs), what an interrupted bench left is gone and
    // the creation runs' files wait here with the regimes' destinations.
    if limits.is_none() {
        trash.empty()?;
    }
    let mut cells = Vec::new();
    for ds in datasets {
        for &dest in &o.dests {
            for &cache in &o.caches {
                let c = cell(o, &trash, ds, cache, dest, limits)?;
                let med = |t: Tool| {
                    c.rows
                        .iter()
                        .find(|r| r.tool == t)
                        .map(|r| format!("{:.3}s", r.median_seconds))
                        .unwrap_or_else(|| "-".into())
                };
                eprintln!(
                    "bench: {} {} -> {}: mover {}, rsync {}, cp {}",
                    ds.kind.name(),
                    cache.name(),
                    dest.name(),
                    med(Tool::Mover),
                    med(Tool::Rsync),
                    med(Tool::Cp)
                );
                cells.push(c);
            }
        }
    }
    trash.empty()?;
    Ok(cells)
}

fn cell(
    o: &Opts,
    trash: &Trash,
    ds: &Dataset,
    cache: Cache,
    dest: Dest,
    limits: Option<&Limits>,
) -> Result<CellResult> {
    let root = o.dest_root(ds.kind, dest);
    // Left over from an interrupted bench: gone, and the disk quiet, before anything is timed.
    let keep = dest == Dest::Disk && trash::keeps(ds.files, ds.bytes);
    if keep && root.exists() {
        trash.take(&root, &format!("{}-leftover", ds.kind.name()))?;
        trash.empty()?;
    }
    dataset::remove(&root)?;
    if keep {
        trash.wait_out();
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let mut quiet = proc::quiesce(&[&o.work, &root]);
    let rsyncd = o.work.join(ds.kind.name()).join("rsyncd");
    std::fs::create_dir_all(&rsyncd)?;
    let daemon = if o.tools.contains(&Tool::Rsync) {
        Some(rsync::Daemon::start(&rsyncd, &root)?)
    } else {
        None
    };
    let threads = o.threads.to_string();
    let mover_args = [OsStr::new("--threads"), OsStr::new(&threads)];
    let mut samples = Vec::new();
    for r in 0..o.reps {
        for (position, tool) in rotation(&o.tools, r).into_iter().enumerate() {
            let sub = format!("{}-{tool:?}-{r}", cache.name());
            let dst = root.join(&sub);
            std::fs::create_dir(&dst).with_context(|| format!("creating {}", dst.display()))?;
            let cache_dropped = match cache {
                Cache::Cold => proc::drop_caches(),
                Cache::Hot => {
                    proc::warm(&ds.dir).with_context(|| format!("reading {}", ds.dir.display()))?;
                    false
                }
            };
            let lo = proc::loopback_bytes();
            let (seconds, cpu_seconds, wire_bytes) = match tool {
                Tool::Rsync => {
                    let d = daemon.as_ref().context("rsync daemon")?;
                    let x = d.run(&ds.dir, &sub)?;
                    (x.seconds, x.cpu_seconds, Some(x.wire_bytes))
                }
                Tool::Cp => {
                    let x = cp::run(&ds.dir, &dst)?;
                    (x.seconds, x.cpu_seconds, None)
                }
                Tool::Mover | Tool::MoverPlain => {
                    let keys = if tool == Tool::Mover {
                        &o.sealed
                    } else {
                        &o.plain
                    };
                    let x = mover_run::run_with(&o.mover, &ds.dir, &dst, &mover_args, keys)?;
                    if x.files != ds.files {
                        bail!(
                            "mover sent {} files into an empty destination, dataset has {}",
                            x.files,
                            ds.files
                        );
                    }
                    let sealed = x.report["encrypted"].as_bool();
                    if sealed != Some(tool == Tool::Mover) {
                        bail!("{tool:?}: mover's report says encrypted = {sealed:?}");
                    }
                    if x.report["threads"].as_u64() != Some(o.threads as u64) {
                        bail!(
                            "mover ran {} workers, the bench asked for {}",
                            x.report["threads"],
                            o.threads
                        );
                    }
                    (x.seconds, x.cpu_seconds, Some(x.wire_bytes))
                }
            };
            let loopback_bytes = lo.zip(proc::loopback_bytes()).map(|(a, b)| b - a);
            check_copy(&ds.dir, &dst, tool)?;
            eprintln!(
                "bench: {} {} -> {} {tool:?} rep {r}: {seconds:.3}s, cpu {cpu_seconds:.2}s, wire {}",
                ds.kind.name(),
                cache.name(),
                dest.name(),
                wire_bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into())
            );
            samples.push(Sample {
                tool,
                rep: r,
                position,
                seconds,
                cpu_seconds,
                wire_bytes,
                loopback_bytes,
                cache_dropped,
                quiet_before: quiet,
            });
            // After the run, never before one: see the module's documentation.
            if keep {
                trash.take(&dst, &format!("{}-{sub}", ds.kind.name()))?;
            } else {
                dataset::remove(&dst)?;
            }
            quiet = proc::quiesce(&[&o.work, &root]);
            if quiet.timed_out {
                eprintln!(
                    "bench: the disk did not go quiet within {:?}; the next run starts anyway",
                    proc::QUIESCE_TIMEOUT
                );
            }
        }
    }
    drop(daemon);
    // The next cell quiesces before its first run.
    dataset::remove(&root)?;
    Ok(CellResult::new(ds, cache, dest, root, limits, samples))
}
