//! `bench reconnect`: the failover-and-back cycle. Per rep: a fresh pair of daemons on
//! 127.0.0.1 and one relationship through its initial sync of a tree of small files and a few
//! large ones; then `mover relationship make-writable ID` on the target node (timed), the
//! target directory changed as a failed-over application would (about 1% of the small files
//! rewritten, deleted or created), and `mover relationship reconnect ID` on the source node,
//! timed until the source shows the reverting job done and the target equals the source again.
//! The bytes that job sent are compared with the bytes changed on the target.

use crate::daemons::{clear, Configs, Pair, Ports, INITIAL_SYNC_TIMEOUT};
use crate::measure::{median, Target};
use crate::{dataset, proc};
use anyhow::{bail, Context, Result};
use mover::gen::Rng;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The goal: a reconnect sends at most GOAL_FACTOR x the changed bytes + GOAL_SLACK_BYTES.
pub const GOAL_FACTOR: f64 = 1.2;
pub const GOAL_SLACK_BYTES: u64 = 1 << 20;
/// The source's state until the job after a reconnect has brought the target back.
const REVERTING: &str = "reverting_to_last_recovery_point";
/// Seed of the churn: every rep changes the same files the same way.
const CHURN_SEED: u64 = 0xc4a2_9e5e;
/// Of the churned files (at least CHURN_SPLIT), one in CHURN_SPLIT is deleted and one in
/// CHURN_SPLIT is a new file; the rest are rewritten.
const CHURN_SPLIT: usize = 10;

pub struct Opts<'a> {
    pub work: &'a Path,
    pub mover: &'a Path,
    /// Small files in the tree (FILES_SIZE bytes each).
    pub files: usize,
    /// (count, bytes each) of the large files.
    pub large: (usize, usize),
    /// Fraction of the small files churned on the target.
    pub churn: f64,
    pub reps: usize,
    pub configs: &'a Configs,
}

/// What the bench changed in the target directory while it was writable.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Churn {
    pub rewritten_files: u64,
    pub rewritten_bytes: u64,
    pub deleted_files: u64,
    pub deleted_bytes: u64,
    pub created_files: u64,
    pub created_bytes: u64,
    /// 4 KiB blocks rewritten in place inside the large files (the same fraction of each).
    pub large_blocks_bytes: u64,
}

impl Churn {
    /// Bytes written in rewritten and new files plus bytes of deleted files (which must come
    /// back): the goal's "changed bytes".
    pub fn changed_bytes(&self) -> u64 {
        self.rewritten_bytes + self.deleted_bytes + self.created_bytes + self.large_blocks_bytes
    }

    /// The part of the changed bytes the source has to send again (new files only go).
    pub fn restored_bytes(&self) -> u64 {
        self.rewritten_bytes + self.deleted_bytes + self.large_blocks_bytes
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RcRep {
    pub rep: usize,
    pub initial_sync_seconds: f64,
    /// `mover relationship make-writable ID --json` on the target, from its start to its exit.
    pub make_writable_seconds: f64,
    /// From make-writable's start until the source shows state `ended`.
    pub source_ended_seconds: f64,
    pub churn: Churn,
    /// `mover relationship reconnect ID --json` on the source, from its start to its exit.
    pub reconnect_cli_seconds: f64,
    /// From reconnect's start until the source shows the job after it succeeded and the state
    /// is no longer reverting_to_last_recovery_point.
    pub revert_seconds: f64,
    /// From reconnect's start until `mover hash --content` of the target equals the source's.
    pub verified_seconds: f64,
    /// The reconnect's answer: whether both sides had the same last recovery point, and how
    /// the target differed from it.
    pub common: Option<bool>,
    pub target_difference: Option<String>,
    /// Files and file data bytes the reverting job sent (its `last_attempt.message`).
    pub sent_files: u64,
    pub sent_bytes: u64,
    /// Bytes over the loopback interface from reconnect's start until the revert was seen done
    /// (both directions, headers, API polls: a cross-check only).
    pub loopback_bytes: Option<u64>,
    /// sent_bytes / churn.changed_bytes().
    pub ratio: f64,
    pub goal_met: bool,
    pub quiet_before: proc::Quiet,
}

#[derive(Debug, Clone, Serialize)]
pub struct RcResult {
    pub files: u64,
    pub small_files: u64,
    pub large_files: u64,
    pub large_size: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub spec: String,
    pub churn_fraction: f64,
    pub median_make_writable_seconds: f64,
    pub median_source_ended_seconds: f64,
    pub median_reconnect_cli_seconds: f64,
    pub median_revert_seconds: f64,
    pub median_verified_seconds: f64,
    pub median_sent_bytes: f64,
    pub median_changed_bytes: f64,
    pub median_ratio: f64,
    pub configs: Configs,
    pub reps: Vec<RcRep>,
}

/// Characters of the reconnect's `target_difference` shown in the markdown (the JSON has it all).
const DIFFERENCE_SHOWN: usize = 160;

fn shorten(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// The goal's bound for `changed` bytes.
pub fn goal_bytes(changed: f64) -> f64 {
    GOAL_FACTOR * changed + GOAL_SLACK_BYTES as f64
}

impl RcResult {
    pub fn target(&self) -> Target {
        Target {
            area: format!(
                "reconnect after {}% churn, {} small + {} x {} byte files",
                self.churn_fraction * 100.0,
                self.small_files,
                self.large_files,
                self.large_size
            ),
            target: format!(
                "bytes sent by reconnect <= {GOAL_FACTOR} x the changed bytes + 1 MiB (median)"
            ),
            measured: format!(
                "{:.0} bytes sent for {:.0} changed ({:.2}x; bound {:.0})",
                self.median_sent_bytes,
                self.median_changed_bytes,
                self.median_ratio,
                goal_bytes(self.median_changed_bytes)
            ),
            met: Some(self.median_sent_bytes <= goal_bytes(self.median_changed_bytes)),
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Per rep: a fresh pair of daemons on 127.0.0.1 and a fresh relationship, through its initial sync of {} files ({} of {} bytes in {} dirs, {} of {} bytes; {} bytes). \
             Once the target has recorded the recovery point and the disk is quiet, `mover relationship make-writable ID --json` runs on the target node (timed to its exit, \
             and until the source shows `ended`). Then {}% of the small files are churned in the target directory (rewritten with new content; one in {CHURN_SPLIT} deleted, one in {CHURN_SPLIT} new; \
             the same files every rep) and the same fraction of the 4 KiB blocks of each large file is rewritten in place, and `mover relationship reconnect ID --json` runs on the source node: timed to its exit (CLI), until the source shows the job after it succeeded \
             and no longer `{REVERTING}` (revert), and until `mover hash --content` of the target equals the source's (verified). \
             Sent = file data bytes of that job (its `last_attempt.message`); changed = bytes of rewritten and new files, of deleted files and of rewritten large-file blocks; to restore = its part the source must send again (all but the new files, which are only removed). Medians of {} reps.\n\n",
            self.files,
            self.small_files,
            dataset::FILES_SIZE,
            self.dirs,
            self.large_files,
            self.large_size,
            self.bytes,
            self.churn_fraction * 100.0,
            self.reps.len()
        );
        s.push_str(
            "| rep | initial sync s | make-writable s | source ended s | rewritten / deleted / new files | changed bytes | to restore | reconnect CLI s | revert s | verified s | sent files | sent bytes | sent / changed | loopback bytes | goal |\n\
             |---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for r in &self.reps {
            let c = &r.churn;
            s.push_str(&format!(
                "| {} | {:.1} | {:.3} | {:.3} | {} / {} / {} | {} | {} | {:.3} | {:.3} | {:.3} | {} | {} | {:.2} | {} | {} |\n",
                r.rep,
                r.initial_sync_seconds,
                r.make_writable_seconds,
                r.source_ended_seconds,
                c.rewritten_files,
                c.deleted_files,
                c.created_files,
                c.changed_bytes(),
                c.restored_bytes(),
                r.reconnect_cli_seconds,
                r.revert_seconds,
                r.verified_seconds,
                r.sent_files,
                r.sent_bytes,
                r.ratio,
                r.loopback_bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
                crate::measure::met(Some(r.goal_met)),
            ));
        }
        s.push_str(&format!(
            "| median | | {:.3} | {:.3} | | {:.0} | | {:.3} | {:.3} | {:.3} | | {:.0} | {:.2} | | |\n\n",
            self.median_make_writable_seconds,
            self.median_source_ended_seconds,
            self.median_changed_bytes,
            self.median_reconnect_cli_seconds,
            self.median_revert_seconds,
            self.median_verified_seconds,
            self.median_sent_bytes,
            self.median_ratio
        ));
        if let Some(r) = self.reps.first() {
            s.push_str(&format!(
                "The reconnect answered common = {}, target difference: {}.\n\n",
                r.common
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.target_difference
                    .as_deref()
                    .map(|d| shorten(d, DIFFERENCE_SHOWN))
                    .unwrap_or_else(|| "-".into())
            ));
        }
        s.push_str(&format!(
            "Goal: bytes sent by reconnect at most {GOAL_FACTOR} x the changed bytes plus 1 MiB ({:.0} bytes here).\n",
            goal_bytes(self.median_changed_bytes)
        ));
        s
    }
}

pub fn run(o: &Opts, ports: &mut Ports) -> Result<RcResult> {
    let tree = dataset::ensure_files_large(o.work, o.files, o.large)?;
    // The source is not changed by any rep: its hash is taken once, untimed.
    let source_hash = hash(o.mover, &tree.dir)?;
    let mut reps = Vec::new();
    for rep in 0..o.reps {
        let r = one(o, ports, &tree, &source_hash, rep)?;
        eprintln!(
            "bench: reconnect {} files rep {rep}: make-writable {:.3} s, reconnect CLI {:.3} s, revert {:.3} s, verified {:.3} s; sent {} bytes for {} changed ({:.2}x)",
            tree.files,
            r.make_writable_seconds,
            r.reconnect_cli_seconds,
            r.revert_seconds,
            r.verified_seconds,
            r.sent_bytes,
            r.churn.changed_bytes(),
            r.ratio
        );
        reps.push(r);
    }
    let m = |f: fn(&RcRep) -> f64| median(reps.iter().map(f).collect());
    Ok(RcResult {
        files: tree.files,
        small_files: o.files as u64,
        large_files: if o.large.1 == 0 { 0 } else { o.large.0 as u64 },
        large_size: if o.large.0 == 0 { 0 } else { o.large.1 as u64 },
        dirs: tree.dirs,
        bytes: tree.bytes,
        spec: tree.spec.clone(),
        churn_fraction: o.churn,
        median_make_writable_seconds: m(|r| r.make_writable_seconds),
        median_source_ended_seconds: m(|r| r.source_ended_seconds),
        median_reconnect_cli_seconds: m(|r| r.reconnect_cli_seconds),
        median_revert_seconds: m(|r| r.revert_seconds),
        median_verified_seconds: m(|r| r.verified_seconds),
        median_sent_bytes: m(|r| r.sent_bytes as f64),
        median_changed_bytes: m(|r| r.churn.changed_bytes() as f64),
        median_ratio: m(|r| r.ratio),
        configs: o.configs.clone(),
        reps,
    })
}

fn one(
    o: &Opts,
    ports: &mut Ports,
    tree: &dataset::FilesTree,
    source_hash: &str,
    rep: usize,
) -> Result<RcRep> {
    let run_dir = o.work.join("reconnect").join(format!("rep-{rep}"));
    clear(o.work, &run_dir)?;
    let dst = run_dir.join("target");
    let (pair, initial) = Pair::start(o.mover, &run_dir, ports, o.configs, (&tree.dir, &dst))?;
    let id = pair.id.clone();
    // A reconnect without a shared recovery point would be a full resync: the target must have
    // recorded the initial sync's (it learns it from the source's report).
    target_recorded(&pair)?;
    let quiet_before = proc::quiesce(&[o.work]);

    // Failover.
    let t0 = Instant::now();
    pair.target
        .cli_json(&["relationship", "make-writable", &id, "--json"])
        .with_context(|| format!("target log:\n{}", pair.target.log()))?;
    let make_writable_seconds = t0.elapsed().as_secs_f64();
    pair.source.wait_for(
        ("source", &id),
        "the source to see the relationship ended",
        INITIAL_SYNC_TIMEOUT,
        |v| v["state"] == "ended",
    )?;
    let source_ended_seconds = t0.elapsed().as_secs_f64();

    // What a failed-over application writes (untimed).
    let churn = churn(&dst, o.files, o.churn)?;

    // Failback.
    let before = pair.source.view("source", &id)?;
    let lo0 = proc::loopback_bytes();
    let t0 = Instant::now();
    let answer = pair
        .source
        .cli_json(&["relationship", "reconnect", &id, "--json"])
        .with_context(|| format!("source log:\n{}", pair.source.log()))?;
    let reconnect_cli_seconds = t0.elapsed().as_secs_f64();
    let done = pair.source.wait_for(
        ("source", &id),
        "the job after the reconnect",
        INITIAL_SYNC_TIMEOUT,
        |v| {
            v["state"] != REVERTING
                && v["job"].is_null()
                && v["last_attempt"]["ok"] == true
                && v["last_attempt"] != before["last_attempt"]
        },
    )?;
    let revert_seconds = t0.elapsed().as_secs_f64();
    let loopback_bytes = match (lo0, proc::loopback_bytes()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    if done["state"] == "ended" {
        bail!("the relationship ended again after the reconnect: {done:#}");
    }
    let target_hash = hash(o.mover, &dst)?;
    let verified_seconds = t0.elapsed().as_secs_f64();
    if target_hash != source_hash {
        bail!(
            "after the reconnect the target differs from the source: mover hash {target_hash} vs {source_hash}"
        );
    }
    let (sent_files, sent_bytes) = sent_by_last_job(&done)?;
    pair.finish();
    clear(o.work, &run_dir)?;
    let changed = churn.changed_bytes();
    Ok(RcRep {
        rep,
        initial_sync_seconds: initial,
        make_writable_seconds,
        source_ended_seconds,
        churn,
        reconnect_cli_seconds,
        revert_seconds,
        verified_seconds,
        common: answer["common"].as_bool(),
        target_difference: answer["target_difference"].as_str().map(str::to_string),
        sent_files,
        sent_bytes,
        loopback_bytes,
        ratio: sent_bytes as f64 / changed.max(1) as f64,
        goal_met: sent_bytes as f64 <= goal_bytes(changed as f64),
        quiet_before,
    })
}

/// Waits until the target recorded the source's recovery point (from the source's report).
pub fn target_recorded(pair: &Pair) -> Result<()> {
    let id = &pair.id;
    let rp = pair.source.view("source", id)?["recovery_point"]["time"].clone();
    pair.target.wait_for(
        ("target", id),
        "the target to record the recovery point",
        INITIAL_SYNC_TIMEOUT,
        |v| v["recovery_point"]["time"] == rp,
    )?;
    Ok(())
}

/// (files, bytes) of the source's last job, from its `last_attempt.message`
/// ("completed: N files, B bytes sent in S s").
pub fn sent_by_last_job(v: &Value) -> Result<(u64, u64)> {
    let m = v["last_attempt"]["message"]
        .as_str()
        .with_context(|| format!("no last_attempt.message in {v}"))?;
    parse_sent(m).with_context(|| format!("no file and byte counts in {m:?}"))
}

fn parse_sent(m: &str) -> Option<(u64, u64)> {
    let mut parts = m.split(", ");
    let files = parts.next()?.split(' ').rev().nth(1)?.parse().ok()?;
    let bytes = parts.next()?.split(' ').next()?.parse().ok()?;
    Some((files, bytes))
}

/// Changes `fraction` of the `files` small files of an `ensure_files` tree copied to `dir`:
/// of them one in CHURN_SPLIT is deleted, as many new files are created beside others, the
/// rest are rewritten with new content of the same size.
pub fn churn(dir: &Path, files: usize, fraction: f64) -> Result<Churn> {
    churn_seeded(dir, files, fraction, CHURN_SEED)
}

/// `churn` with its own seed (another set of files).
pub fn churn_seeded(dir: &Path, files: usize, fraction: f64, seed: u64) -> Result<Churn> {
    let n = ((files as f64 * fraction).round() as usize).clamp(1, files.max(1));
    let (deleted, created) = if n >= CHURN_SPLIT {
        (n / CHURN_SPLIT, n / CHURN_SPLIT)
    } else {
        (0, 0)
    };
    let mut rng = Rng(seed);
    let mut picked = BTreeSet::new();
    while picked.len() < (n - created).min(files) {
        picked.insert(rng.below(files as u64) as usize);
    }
    let picked: Vec<usize> = picked.into_iter().collect();
    let mut c = Churn::default();
    let mut buf = Vec::new();
    for (k, &i) in picked.iter().enumerate() {
        let p = dir.join(dataset::small_file(i));
        if k < deleted {
            let len = std::fs::symlink_metadata(&p)
                .with_context(|| format!("churn: {}", p.display()))?
                .len();
            std::fs::remove_file(&p).with_context(|| format!("churn: removing {}", p.display()))?;
            c.deleted_files += 1;
            c.deleted_bytes += len;
        } else {
            // O_TRUNC and a full write, as an application saving a file does.
            dataset::write_file(&p, &mut rng, dataset::FILES_SIZE, &mut buf)?;
            c.rewritten_files += 1;
            c.rewritten_bytes += dataset::FILES_SIZE as u64;
        }
    }
    for j in 0..created {
        let beside = dataset::small_file(picked[j % picked.len()]);
        let p = dir
            .join(beside.parent().unwrap_or(Path::new("")))
            .join(format!("churn-new-{j:05}"));
        dataset::write_file(&p, &mut rng, dataset::FILES_SIZE, &mut buf)?;
        c.created_files += 1;
        c.created_bytes += dataset::FILES_SIZE as u64;
    }
    c.large_blocks_bytes = churn_large(dir, fraction, &mut rng)?;
    Ok(c)
}

/// Rewrites `fraction` of the 4 KiB blocks of every large file (`large*.bin` at the top of
/// `dir`) in place, as a database or VM image is written; returns the bytes rewritten.
fn churn_large(dir: &Path, fraction: f64, rng: &mut Rng) -> Result<u64> {
    const BLOCK: u64 = 4096;
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("churn: listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("large") && n.ends_with(".bin"))
        })
        .collect();
    names.sort();
    let mut total = 0;
    let mut block = vec![0u8; BLOCK as usize];
    for p in names {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .with_context(|| format!("churn: opening {}", p.display()))?;
        let blocks = f.metadata()?.len() / BLOCK;
        let n = ((blocks as f64 * fraction).round() as u64).clamp(1, blocks.max(1));
        let mut picked = BTreeSet::new();
        while (picked.len() as u64) < n.min(blocks) {
            picked.insert(rng.below(blocks));
        }
        for b in &picked {
            for x in block.iter_mut() {
                *x = rng.below(256) as u8;
            }
            std::os::unix::fs::FileExt::write_all_at(&f, &block, b * BLOCK)
                .with_context(|| format!("churn: writing {}", p.display()))?;
        }
        total += picked.len() as u64 * BLOCK;
    }
    Ok(total)
}

/// `mover hash --content --json DIR`: the tree hash and the content hash, as one string.
pub fn hash(mover: &Path, dir: &Path) -> Result<String> {
    let out = Command::new(mover)
        .arg("hash")
        .arg("--content")
        .arg("--json")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .context("running mover hash")?;
    if !out.status.success() {
        bail!(
            "mover hash {} failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("mover hash: not JSON")?;
    Ok(format!(
        "{} {} ({} entries)",
        v["tree_hash"].as_str().unwrap_or("?"),
        v["content_hash"].as_str().unwrap_or("?"),
        v["entries"]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_jobs_message_gives_files_and_bytes() {
        assert_eq!(
            parse_sent("completed: 182 files, 186368 bytes sent in 0.4 s"),
            Some((182, 186368))
        );
        assert_eq!(parse_sent("failed: connection refused"), None);
        assert_eq!(shorten("abcdef", 3), "abc...");
        assert_eq!(shorten("abc", 3), "abc");
    }

    #[test]
    fn churn_changes_the_fraction_asked_and_counts_its_bytes() {
        let dir = std::env::temp_dir().join(format!("bench-churn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut rng = Rng(1);
        let mut buf = Vec::new();
        for i in 0..1000 {
            let p = dir.join(dataset::small_file(i));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            dataset::write_file(&p, &mut rng, dataset::FILES_SIZE, &mut buf).unwrap();
        }
        let large = dir.join("large0.bin");
        dataset::write_file(&large, &mut rng, 1 << 20, &mut buf).unwrap();
        let before = std::fs::read(&large).unwrap();
        let c = churn(&dir, 1000, 0.02).unwrap();
        let after = std::fs::read(&large).unwrap();
        let differ = before
            .chunks(4096)
            .zip(after.chunks(4096))
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!((c.large_blocks_bytes, differ), (5 * 4096, 5));
        assert_eq!(
            (c.rewritten_files, c.deleted_files, c.created_files),
            (16, 2, 2)
        );
        let size = dataset::FILES_SIZE as u64;
        assert_eq!(c.changed_bytes(), 20 * size + 5 * 4096);
        assert_eq!(c.restored_bytes(), 18 * size + 5 * 4096);
        let (files, _, _) = dataset::count_all(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(files, 1001);
    }
}
