//! `bench rpo`: the recovery point objective of continuous replication, as an application on
//! the source would see it. Two daemons on 127.0.0.1 (source node, target node) replicate a tree
//! of many small files; once its initial sync has a recovery point, the bench writes one small
//! file on the source every interval and measures, per write, the time until the target
//! directory holds that content. Only the CLI and the file system are used, so the figures hold
//! for any way the daemon decides when to replicate (fixed interval, file-system events, ...);
//! the source daemon's config can be extended on the command line to tune it.

use crate::daemons::{clear, Configs, Pair, Ports};
use crate::measure::Target;
use crate::{dataset, proc};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the target copy of each file with a write in flight is read.
pub const POLL: Duration = Duration::from_millis(2);
/// A write not on the target this long after it was made is a miss.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Files the writes rotate over: the first ROTATE writes create them, later ones rewrite them
/// in place (open with O_TRUNC, write), so both kinds of change are measured.
pub const ROTATE: usize = 8;
/// The directory of the written files, in the source tree (present, empty, before the initial
/// sync, so every write lands in a directory the target already has).
pub const PROBE_DIR: &str = "rpo-probe";
/// Slack on the measurement's deadline (the schedule plus the last write's timeout) for polls
/// slowed down by a busy machine.
const DEADLINE_SLACK: Duration = Duration::from_secs(5);
/// The goal for each tree size.
pub const GOAL_P99_SECONDS: f64 = 1.0;

pub struct Opts<'a> {
    pub work: &'a Path,
    pub mover: &'a Path,
    /// Files in each tree, one run per entry.
    pub sizes: Vec<usize>,
    pub writes: usize,
    pub interval: Duration,
    /// Both daemons' CPU is also measured over this long with no writes, before the writes.
    pub idle: Duration,
    pub configs: &'a Configs,
}

#[derive(Debug, Clone, Serialize)]
pub struct WriteSample {
    pub seq: usize,
    /// Index of the rotating file written (rpo-probe/pN).
    pub file: usize,
    /// Whether the write created the file (else it rewrote it).
    pub created: bool,
    /// When the write returned, seconds after the first write began.
    pub at_seconds: f64,
    /// From the write's return until the target held its content (or a later write's to the
    /// same file); None: a miss (not within WRITE_TIMEOUT).
    pub latency_seconds: Option<f64>,
}

/// CPU seconds (user + system) per minute of wall time.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cpu {
    pub source: f64,
    pub target: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RpoResult {
    pub files: u64,
    pub dirs: u64,
    pub spec: String,
    /// From the target's authorization until the source shows the initial sync's recovery point.
    pub initial_sync_seconds: f64,
    pub writes: usize,
    pub interval_ms: u64,
    /// Nearest-rank percentiles over every write, misses counted as infinitely late: None
    /// when the rank falls on a miss.
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub misses: usize,
    pub idle_seconds: f64,
    pub idle_cpu_per_minute: Cpu,
    /// From the first write until the last was on the target (or timed out).
    pub writing_seconds: f64,
    pub writing_cpu_per_minute: Cpu,
    pub configs: Configs,
    pub samples: Vec<WriteSample>,
}

impl RpoResult {
    pub fn target(&self) -> Target {
        Target {
            area: format!("RPO, {} files", self.files),
            target: format!("p99 < {GOAL_P99_SECONDS} s from a write on the source to its content on the target (a miss fails it)"),
            measured: format!(
                "p99 {}, {} miss(es) of {}",
                secs(self.p99),
                self.misses,
                self.writes
            ),
            met: Some(self.p99.is_some_and(|p| p < GOAL_P99_SECONDS)),
        }
    }
}

/// Nearest-rank percentile `p` (0-100] of `v`, None entries (misses) ranking last; None if the
/// rank falls on a miss or `v` is empty.
pub fn percentile(v: &[Option<f64>], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut done: Vec<f64> = v.iter().flatten().copied().collect();
    done.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len());
    done.get(rank - 1).copied()
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.3} s"))
        .unwrap_or_else(|| format!("miss (> {} s)", WRITE_TIMEOUT.as_secs()))
}

/// What write `seq` puts in file `seq % ROTATE`: unique per write, so the target's copy says
/// which write it holds.
fn content(seq: usize) -> Vec<u8> {
    format!("mover rpo bench: write {seq}, file p{}\n", seq % ROTATE).into_bytes()
}

/// Which write of file `file` `got` is, among the first `written` writes; None if none (not
/// there yet, or caught half-written).
fn which_write(got: &[u8], file: usize, written: usize) -> Option<usize> {
    (file..written)
        .step_by(ROTATE)
        .rev()
        .find(|&j| content(j) == got)
}

pub fn run(o: &Opts, ports: &mut Ports) -> Result<Vec<RpoResult>> {
    let mut out = Vec::new();
    for &n in &o.sizes {
        let r = one(o, ports, n)?;
        eprintln!(
            "bench: rpo {} files: initial sync {:.1} s; p50 {}, p90 {}, p99 {}, max {}, {} miss(es); CPU/min idle {:.2}/{:.2}, writing {:.2}/{:.2} (source/target)",
            r.files,
            r.initial_sync_seconds,
            secs(r.p50),
            secs(r.p90),
            secs(r.p99),
            secs(r.max),
            r.misses,
            r.idle_cpu_per_minute.source,
            r.idle_cpu_per_minute.target,
            r.writing_cpu_per_minute.source,
            r.writing_cpu_per_minute.target,
        );
        out.push(r);
    }
    Ok(out)
}

fn one(o: &Opts, ports: &mut Ports, n: usize) -> Result<RpoResult> {
    let tree = dataset::ensure_files(o.work, n)?;
    let probe = tree.dir.join(PROBE_DIR);
    clear(o.work, &probe)?;
    std::fs::create_dir(&probe).with_context(|| format!("creating {}", probe.display()))?;
    let run_dir = o.work.join("rpo").join(n.to_string());
    clear(o.work, &run_dir)?;
    let dst = run_dir.join("target");
    proc::quiesce(&[o.work]);
    eprintln!("bench: rpo {n} files: initial sync");
    let (pair, initial) = Pair::start(o.mover, &run_dir, ports, o.configs, (&tree.dir, &dst))?;
    let (got, _, _) = dataset::count_all(&dst)?;
    if got != tree.files {
        bail!(
            "after the initial sync the target holds {got} files, the source {}",
            tree.files
        );
    }
    let cpu =
        |p: &Pair| -> Result<(f64, f64)> { Ok((p.source.cpu_seconds()?, p.target.cpu_seconds()?)) };
    let per_minute = |a: (f64, f64), b: (f64, f64), s: f64| Cpu {
        source: (b.0 - a.0) / s * 60.0,
        target: (b.1 - a.1) / s * 60.0,
    };
    eprintln!(
        "bench: rpo {n} files: initial sync {initial:.1} s; {} s idle",
        o.idle.as_secs()
    );
    let (c0, t0) = (cpu(&pair)?, Instant::now());
    std::thread::sleep(o.idle);
    let (c1, idle_seconds) = (cpu(&pair)?, t0.elapsed().as_secs_f64());
    eprintln!(
        "bench: rpo {n} files: {} writes, one every {} ms",
        o.writes,
        o.interval.as_millis()
    );
    let samples = measure(&probe, &dst.join(PROBE_DIR), o.writes, o.interval)?;
    let (c2, writing_seconds) = (cpu(&pair)?, t0.elapsed().as_secs_f64() - idle_seconds);
    pair.finish();
    clear(o.work, &run_dir)?;
    clear(o.work, &probe)?;
    let lat: Vec<Option<f64>> = samples.iter().map(|s| s.latency_seconds).collect();
    Ok(RpoResult {
        files: tree.files,
        dirs: tree.dirs,
        spec: tree.spec,
        initial_sync_seconds: initial,
        writes: o.writes,
        interval_ms: o.interval.as_millis() as u64,
        p50: percentile(&lat, 50.0),
        p90: percentile(&lat, 90.0),
        p99: percentile(&lat, 99.0),
        max: percentile(&lat, 100.0),
        misses: lat.iter().filter(|l| l.is_none()).count(),
        idle_seconds,
        idle_cpu_per_minute: per_minute(c0, c1, idle_seconds),
        writing_seconds,
        writing_cpu_per_minute: per_minute(c1, c2, writing_seconds),
        configs: o.configs.clone(),
        samples,
    })
}

/// Writes `writes` files into `src` one per `interval` (on a fixed schedule from the first),
/// polling the copies in `dst` every POLL meanwhile; returns when every write is on the target
/// or timed out.
fn measure(src: &Path, dst: &Path, writes: usize, interval: Duration) -> Result<Vec<WriteSample>> {
    let path = |dir: &Path, f: usize| -> PathBuf { dir.join(format!("p{f}")) };
    let start = Instant::now();
    // The loop's bound: the schedule, then the last write's timeout, then slack for a slow poll.
    let deadline = start + interval * writes as u32 + WRITE_TIMEOUT + DEADLINE_SLACK;
    let mut at: Vec<Instant> = Vec::with_capacity(writes);
    let mut latency: Vec<Option<f64>> = vec![None; writes];
    // Writes neither seen on the target nor timed out, oldest first.
    let mut pending: Vec<usize> = Vec::new();
    loop {
        let now = Instant::now();
        if at.len() < writes && now >= start + interval * at.len() as u32 {
            let seq = at.len();
            std::fs::write(path(src, seq % ROTATE), content(seq))
                .with_context(|| format!("writing {}", path(src, seq % ROTATE).display()))?;
            at.push(Instant::now());
            pending.push(seq);
        }
        // One read per file with writes in flight; what it holds settles every pending write of
        // that file up to the write it is.
        let mut files: Vec<usize> = pending.iter().map(|s| s % ROTATE).collect();
        files.sort_unstable();
        files.dedup();
        for f in files {
            let Ok(got) = std::fs::read(path(dst, f)) else {
                continue;
            };
            let seen = Instant::now();
            if let Some(j) = which_write(&got, f, at.len()) {
                for &k in pending.iter().filter(|&&k| k % ROTATE == f && k <= j) {
                    latency[k] = Some(seen.duration_since(at[k]).as_secs_f64());
                }
            }
        }
        let now = Instant::now();
        pending.retain(|&k| latency[k].is_none() && now.duration_since(at[k]) < WRITE_TIMEOUT);
        if at.len() == writes && pending.is_empty() {
            break;
        }
        if now > deadline {
            bail!("the measurement ran past its deadline (a poll took too long?)");
        }
        std::thread::sleep(POLL);
    }
    Ok((0..writes)
        .map(|k| WriteSample {
            seq: k,
            file: k % ROTATE,
            created: k < ROTATE,
            at_seconds: at[k].duration_since(start).as_secs_f64(),
            latency_seconds: latency[k],
        })
        .collect())
}

/// The report's section.
pub fn markdown(results: &[RpoResult]) -> String {
    let Some(first) = results.first() else {
        return String::new();
    };
    let mut s = format!(
        "Two `mover daemon` processes on 127.0.0.1 (source node, target node; each its own data dir), one relationship created and authorized with the CLI. \
         After the initial sync's recovery point and {:.0} s idle, one small file (~40 bytes) is written on the source every {} ms, {} writes, rotating over {ROTATE} files \
         (the first {ROTATE} writes create them, later ones rewrite them in place); no fsync. Per write: time from the write's return until the target directory holds its content \
         (or a later write's to the same file), the target's copy read every {} ms; a write not there within {} s is a miss. \
         Percentiles are nearest-rank over all writes, a miss ranking last. CPU: user + system of each daemon from /proc/PID/stat, per minute of wall time.\n\n",
        first.idle_seconds,
        first.interval_ms,
        first.writes,
        POLL.as_millis(),
        WRITE_TIMEOUT.as_secs(),
    );
    let cfg = |l: &[String]| {
        if l.is_empty() {
            "defaults".to_string()
        } else {
            format!("`{}`", l.join("; "))
        }
    };
    s.push_str(&format!(
        "Daemon config: source {}, target {}.\n\n",
        cfg(&first.configs.source),
        cfg(&first.configs.target)
    ));
    s.push_str("| tree | initial sync s | writes | p50 | p90 | p99 | max | misses | CPU s/min idle, source / target | CPU s/min writing, source / target |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        s.push_str(&format!(
            "| {} files of {} bytes in {} dirs | {:.1} | {} | {} | {} | {} | {} | {} | {:.2} / {:.2} | {:.2} / {:.2} |\n",
            r.files,
            dataset::FILES_SIZE,
            r.dirs,
            r.initial_sync_seconds,
            r.writes,
            secs(r.p50),
            secs(r.p90),
            secs(r.p99),
            secs(r.max),
            r.misses,
            r.idle_cpu_per_minute.source,
            r.idle_cpu_per_minute.target,
            r.writing_cpu_per_minute.source,
            r.writing_cpu_per_minute.target,
        ));
    }
    s.push_str(&format!(
        "\nGoal: p99 < {GOAL_P99_SECONDS} s for every tree size, no misses.\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_with_misses_last() {
        let v: Vec<Option<f64>> = (1..=100).map(|i| Some(i as f64)).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        let mut w = vec![Some(0.2), Some(0.1), None];
        assert_eq!(percentile(&w, 50.0), Some(0.2));
        assert_eq!(percentile(&w, 99.0), None, "a miss ranks last");
        w.pop();
        assert_eq!(percentile(&w, 100.0), Some(0.2));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_file_names_the_write_it_holds() {
        // Writes 3 and 3 + ROTATE go to the same file; 20 writes made so far.
        assert_eq!(which_write(&content(3), 3, 20), Some(3));
        assert_eq!(which_write(&content(3 + ROTATE), 3, 20), Some(3 + ROTATE));
        assert_eq!(
            which_write(&content(3 + ROTATE), 3, 3 + ROTATE),
            None,
            "not yet written"
        );
        assert_eq!(
            which_write(b"", 3, 20),
            None,
            "caught between truncate and write"
        );
        assert_eq!(which_write(&content(4), 3, 20), None, "another file's");
    }
}
