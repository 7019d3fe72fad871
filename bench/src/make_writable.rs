//! `bench make-writable`: failover time. Per rep: a fresh pair of daemons on 127.0.0.1, one
//! relationship through its initial sync of a tree of small files, then `mover relationship
//! make-writable ID` on the target node, timed from the CLI's start until a file could be
//! created in the target directory. The target must then hold the source's files.

use crate::daemons::{clear, Configs, Pair, Ports};
use crate::measure::{median, Target};
use crate::{dataset, proc};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// The goal: the target is writable this soon after the operator asks.
pub const GOAL_SECONDS: f64 = 2.0;
/// The file created in the target directory to prove it writable.
const CHECK_FILE: &str = "bench-writable-check";

pub struct Opts<'a> {
    pub work: &'a Path,
    pub mover: &'a Path,
    pub files: usize,
    pub reps: usize,
    pub configs: &'a Configs,
}

#[derive(Debug, Clone, Serialize)]
pub struct MwRep {
    pub rep: usize,
    pub initial_sync_seconds: f64,
    /// The source's relationship state just before the call (whether a job was running).
    pub source_state_before: String,
    /// `mover relationship make-writable ID --json`, from its start to its exit.
    pub cli_seconds: f64,
    /// From the CLI's start until CHECK_FILE was created in the target directory.
    pub writable_seconds: f64,
    pub quiet_before: proc::Quiet,
}

#[derive(Debug, Clone, Serialize)]
pub struct MwResult {
    pub files: u64,
    pub dirs: u64,
    pub spec: String,
    pub median_cli_seconds: f64,
    pub median_writable_seconds: f64,
    pub configs: Configs,
    pub reps: Vec<MwRep>,
}

impl MwResult {
    pub fn target(&self) -> Target {
        Target {
            area: format!("make-writable, {} files", self.files),
            target: format!(
                "target writable < {GOAL_SECONDS} s after `mover relationship make-writable` starts (median)"
            ),
            measured: format!("{:.3} s", self.median_writable_seconds),
            met: Some(self.median_writable_seconds < GOAL_SECONDS),
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Per rep: a fresh pair of daemons on 127.0.0.1 and a fresh relationship; after its initial sync of {} files ({} bytes each, {} dirs) has a recovery point \
             and the disk is quiet, `mover relationship make-writable ID --json` runs on the target node, timed from its start to its exit (CLI) and until a new file \
             is created in the target directory (writable). Then the target must hold the source's {} files. Medians of {} reps.\n\n",
            self.files,
            dataset::FILES_SIZE,
            self.dirs,
            self.files,
            self.reps.len()
        );
        s.push_str("| rep | initial sync s | source state before | CLI s | writable s |\n|---:|---:|---|---:|---:|\n");
        for r in &self.reps {
            s.push_str(&format!(
                "| {} | {:.1} | {} | {:.3} | {:.3} |\n",
                r.rep,
                r.initial_sync_seconds,
                r.source_state_before,
                r.cli_seconds,
                r.writable_seconds
            ));
        }
        s.push_str(&format!(
            "| median | | | {:.3} | {:.3} |\n\nGoal: writable in under {GOAL_SECONDS} s.\n",
            self.median_cli_seconds, self.median_writable_seconds
        ));
        s
    }
}

pub fn run(o: &Opts, ports: &mut Ports) -> Result<MwResult> {
    let tree = dataset::ensure_files(o.work, o.files)?;
    let mut reps = Vec::new();
    for rep in 0..o.reps {
        let r = one(o, ports, &tree, rep)?;
        eprintln!(
            "bench: make-writable {} files rep {rep}: CLI {:.3} s, writable {:.3} s (source {} before; initial sync {:.1} s)",
            tree.files, r.cli_seconds, r.writable_seconds, r.source_state_before, r.initial_sync_seconds
        );
        reps.push(r);
    }
    Ok(MwResult {
        files: tree.files,
        dirs: tree.dirs,
        spec: tree.spec,
        median_cli_seconds: median(reps.iter().map(|r| r.cli_seconds).collect()),
        median_writable_seconds: median(reps.iter().map(|r| r.writable_seconds).collect()),
        configs: o.configs.clone(),
        reps,
    })
}

fn one(o: &Opts, ports: &mut Ports, tree: &dataset::FilesTree, rep: usize) -> Result<MwRep> {
    let run_dir = o.work.join("make-writable").join(format!("rep-{rep}"));
    clear(o.work, &run_dir)?;
    let dst = run_dir.join("target");
    let (pair, initial) = Pair::start(o.mover, &run_dir, ports, o.configs, (&tree.dir, &dst))?;
    // The initial sync's write-back is not the failover's cost.
    let quiet_before = proc::quiesce(&[o.work]);
    let before = pair.source.view("source", &pair.id)?;
    let t0 = Instant::now();
    let out = pair
        .target
        .cli(&["relationship", "make-writable", &pair.id, "--json"])?;
    let cli_seconds = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "mover relationship make-writable failed ({}): {}\ntarget log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            pair.target.log()
        );
    }
    let check = dst.join(CHECK_FILE);
    std::fs::write(&check, b"failover writes").with_context(|| {
        format!(
            "the target is not writable after make-writable: {}",
            check.display()
        )
    })?;
    let writable_seconds = t0.elapsed().as_secs_f64();
    std::fs::remove_file(&check).with_context(|| format!("removing {}", check.display()))?;
    let (got, _, _) = dataset::count_all(&dst)?;
    if got != tree.files {
        bail!(
            "after make-writable the target holds {got} files, the source {}",
            tree.files
        );
    }
    pair.finish();
    clear(o.work, &run_dir)?;
    Ok(MwRep {
        rep,
        initial_sync_seconds: initial,
        source_state_before: before["state"].as_str().unwrap_or("?").to_string(),
        cli_seconds,
        writable_seconds,
        quiet_before,
    })
}
