//! The resume case: an initial sync of the large set (2 x 512 MiB at scale 1) whose receiver is
//! SIGKILLed when 30-40% of the bytes are on disk at the destination; then a new receiver on the
//! same destination and a rerun of the sender. Reported: the fraction of the bytes the rerun
//! sent (its `mover send --json` report's `bytes`, file data sent, over the dataset's bytes),
//! its wire bytes, and whether the target then equals the source (`mover hash --content`).

use crate::dataset::{self, Dataset};
use crate::measure::{median, Target};
use crate::mover_run::{self, Keys};
use crate::{incremental, proc};
use anyhow::{Context, Result};
use serde::Serialize;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The receiver is killed at the first poll that sees at least this fraction of the bytes on
/// disk: the middle of the 30-40% window.
pub const KILL_AT: f64 = 0.35;
/// The window the kill must land in for the rep to count as the case.
pub const WINDOW: (f64, f64) = (0.30, 0.40);
/// How often the destination is looked at while the first run goes on: at 1 GB/s, 1% of the
/// large set is 10 ms.
const POLL: Duration = Duration::from_millis(2);
/// The most the rerun may send for the target to be met.
pub const MAX_RESENT: f64 = 0.70;

#[derive(Debug, Clone, Serialize)]
pub struct ResumeRep {
    pub rep: usize,
    /// Whether the receiver was killed before the job ended (false: the first run finished
    /// before KILL_AT was seen, and there was nothing to resume).
    pub interrupted: bool,
    /// Fraction of the dataset's bytes allocated at the destination when the receiver was
    /// killed.
    pub killed_at: f64,
    pub in_window: bool,
    pub first_seconds: f64,
    pub rerun_seconds: f64,
    /// File data the rerun sent, and all it put on the wire.
    pub rerun_bytes: u64,
    pub rerun_wire_bytes: u64,
    /// rerun_bytes / the dataset's bytes.
    pub fraction_sent: f64,
    /// The rerun's report says the receiver continued the interrupted job.
    pub resumed: bool,
    /// The target's tree and content hashes equal the source's after the rerun.
    pub equal: bool,
    pub rerun_report: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResumeResult {
    pub files: u64,
    pub bytes: u64,
    pub kill_at: f64,
    pub window: (f64, f64),
    pub reps: Vec<ResumeRep>,
    /// Over interrupted reps.
    pub median_fraction_sent: Option<f64>,
    pub median_killed_at: Option<f64>,
    pub all_equal: bool,
    pub targets: Vec<Target>,
}

/// Bytes of regular files under `dir` that have blocks allocated (each file counted up to its
/// size: the receiver sizes a new file before writing it, so sizes alone say nothing). The
/// receiver's state directory is not destination data.
pub fn allocated_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_name() == ".mover-state" {
                continue;
            }
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                n += (m.blocks() * 512).min(m.len());
            }
        }
    }
    n
}

pub struct Opts<'a> {
    pub work: &'a Path,
    pub mover: &'a Path,
    pub keys: &'a Keys,
    pub threads: usize,
    pub reps: usize,
}

pub fn run(o: &Opts, ds: &Dataset) -> Result<ResumeResult> {
    let root = o.work.join("resume");
    dataset::remove(&root)?;
    std::fs::create_dir_all(&root)?;
    let want = incremental::hash(o.mover, &ds.dir)?;
    let mut reps = Vec::new();
    for r in 0..o.reps {
        // Before the run: the previous rep's destination is gone and the disk quiet.
        proc::quiesce(&[o.work]);
        let dst = root.join(format!("dst-{r}"));
        std::fs::create_dir(&dst)?;
        let x = one(o, ds, &dst, r, &want)?;
        eprintln!(
            "bench: resume rep {r}: killed at {:.1}%{}, rerun sent {:.1}% of the bytes ({} on the wire) in {:.3}s, resumed {}, target {} the source",
            100.0 * x.killed_at,
            if x.interrupted { "" } else { " (the job had ended)" },
            100.0 * x.fraction_sent,
            x.rerun_wire_bytes,
            x.rerun_seconds,
            x.resumed,
            if x.equal { "equals" } else { "DIFFERS FROM" }
        );
        reps.push(x);
        dataset::remove(&dst)?;
    }
    dataset::remove(&root)?;
    proc::quiesce(&[o.work]);
    Ok(ResumeResult::new(ds, reps))
}

fn one(
    o: &Opts,
    ds: &Dataset,
    dst: &Path,
    rep: usize,
    want: &(String, String),
) -> Result<ResumeRep> {
    let threads = o.threads.to_string();
    // One session each: a retry would hide what the rerun resends.
    let args = [
        OsStr::new("--threads"),
        OsStr::new(&threads),
        OsStr::new("--retries"),
        OsStr::new("1"),
    ];
    // Cold source, as an initial sync of data at rest would be; it also makes the window wide.
    proc::drop_caches();
    let mut recv = mover_run::Receiver::start(o.mover, dst, o.keys)?;
    let start = Instant::now();
    let mut send = mover_run::spawn_send(o.mover, &ds.dir, &recv.addr, &args, o.keys)?;
    let (killed_at, interrupted) = loop {
        let f = allocated_bytes(dst) as f64 / ds.bytes.max(1) as f64;
        if f >= KILL_AT {
            recv.sigkill()?;
            break (f, true);
        }
        if send.try_wait()?.is_some() {
            break (f, false); // ended before KILL_AT was seen
        }
        if start.elapsed() > proc::RUN_TIMEOUT {
            let _ = send.kill();
            let _ = recv.kill();
            anyhow::bail!(
                "the first run reached no {KILL_AT} of the bytes in {:?}",
                proc::RUN_TIMEOUT
            );
        }
        std::thread::sleep(POLL);
    };
    // The receiver is dead (or done): reap it, then the sender, which fails with it.
    let _ = recv.finish();
    let _ = send.kill_on_timeout();
    let first_seconds = start.elapsed().as_secs_f64();
    proc::drop_caches();
    let x = mover_run::run_with(o.mover, &ds.dir, dst, &args, o.keys)
        .with_context(|| format!("resume rep {rep}: the rerun"))?;
    let equal = &incremental::hash(o.mover, dst)? == want;
    let bytes = x.report["bytes"]
        .as_u64()
        .context("bytes in mover's report")?;
    Ok(ResumeRep {
        rep,
        interrupted,
        killed_at,
        in_window: interrupted && (WINDOW.0..=WINDOW.1).contains(&killed_at),
        first_seconds,
        rerun_seconds: x.seconds,
        rerun_bytes: bytes,
        rerun_wire_bytes: x.wire_bytes,
        fraction_sent: bytes as f64 / ds.bytes.max(1) as f64,
        resumed: x.report["resumed"].as_bool().unwrap_or(false),
        equal,
        rerun_report: x.report,
    })
}

/// Waits (bounded) for a child whose peer was killed, killing it if it lingers.
trait KillOnTimeout {
    fn kill_on_timeout(&mut self) -> Result<()>;
}

impl KillOnTimeout for std::process::Child {
    fn kill_on_timeout(&mut self) -> Result<()> {
        let start = Instant::now();
        while self.try_wait()?.is_none() {
            if start.elapsed() > proc::RUN_TIMEOUT {
                self.kill()?;
                self.wait()?;
                break;
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }
}

impl ResumeResult {
    pub fn new(ds: &Dataset, reps: Vec<ResumeRep>) -> ResumeResult {
        let cut: Vec<&ResumeRep> = reps.iter().filter(|r| r.interrupted).collect();
        let med = |f: fn(&ResumeRep) -> f64| {
            (!cut.is_empty()).then(|| median(cut.iter().map(|r| f(r)).collect()))
        };
        let median_fraction_sent = med(|r| r.fraction_sent);
        let median_killed_at = med(|r| r.killed_at);
        let all_equal = !reps.is_empty() && reps.iter().all(|r| r.equal);
        let in_window = cut.iter().filter(|r| r.in_window).count();
        let area = "resume, large, cold, disk".to_string();
        let targets = vec![
            Target {
                area: area.clone(),
                target: "the case itself: receiver killed at 30-40% of the bytes, every rep".into(),
                measured: format!(
                    "{in_window} of {} reps in the window, median {}",
                    reps.len(),
                    median_killed_at
                        .map(|k| format!("{:.1}%", 100.0 * k))
                        .unwrap_or_else(|| "- (no rep interrupted)".into())
                ),
                met: Some(!reps.is_empty() && in_window == reps.len()),
            },
            Target {
                area: area.clone(),
                target: "the rerun sends <= 70% of the bytes".into(),
                measured: median_fraction_sent
                    .map(|f| format!("{:.1}%", 100.0 * f))
                    .unwrap_or_else(|| "-".into()),
                met: median_fraction_sent.map(|f| f <= MAX_RESENT),
            },
            Target {
                area,
                target: "the target equals the source after the rerun".into(),
                measured: format!(
                    "{} of {} reps equal",
                    reps.iter().filter(|r| r.equal).count(),
                    reps.len()
                ),
                met: (!reps.is_empty()).then_some(all_equal),
            },
        ];
        ResumeResult {
            files: ds.files,
            bytes: ds.bytes,
            kill_at: KILL_AT,
            window: WINDOW,
            reps,
            median_fraction_sent,
            median_killed_at,
            all_equal,
            targets,
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "The large set ({} files, {} bytes), page cache dropped, into an empty directory in the work dir: `mover receive` is SIGKILLed at the first poll (every 2 ms) \
             that finds at least {:.0}% of the bytes allocated at the destination; then a new receiver on the same directory and the same `mover send --retries 1` again \
             (cache dropped). Sent = the rerun's `bytes` (file data) over the dataset's bytes. The target is compared with `mover hash --content`.\n\n",
            self.files,
            self.bytes,
            100.0 * self.kill_at
        );
        s.push_str("| rep | killed at | rerun sent | rerun wire bytes | rerun s | resumed | target equals source |\n|---:|---:|---:|---:|---:|---|---|\n");
        for r in &self.reps {
            s.push_str(&format!(
                "| {} | {} | {:.1}% | {} | {:.3} | {} | {} |\n",
                r.rep,
                if r.interrupted {
                    format!(
                        "{:.1}%{}",
                        100.0 * r.killed_at,
                        if r.in_window { "" } else { " (outside 30-40%)" }
                    )
                } else {
                    "not interrupted (job ended first)".into()
                },
                100.0 * r.fraction_sent,
                r.rerun_wire_bytes,
                r.rerun_seconds,
                r.resumed,
                if r.equal { "yes" } else { "NO" }
            ));
        }
        s.push_str(&format!(
            "\nMedian over interrupted reps: killed at {}, rerun sent {}.\n",
            self.median_killed_at
                .map(|k| format!("{:.1}%", 100.0 * k))
                .unwrap_or_else(|| "-".into()),
            self.median_fraction_sent
                .map(|f| format!("{:.1}%", 100.0 * f))
                .unwrap_or_else(|| "-".into()),
        ));
        s
    }
}
