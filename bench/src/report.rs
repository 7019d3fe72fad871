//! Results: raw samples plus per-dataset medians, ratios against rsync and percent of the
//! machine's limits, written as JSON and as a markdown table.

use crate::dataset::Dataset;
use anyhow::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Tool {
    /// mover as deployed: sessions sealed (AES-256-GCM), certificates pinned.
    Mover,
    /// mover with --insecure-plaintext on both sides: what encryption costs is the difference.
    MoverPlain,
    Rsync,
}

impl Tool {
    pub fn label(self) -> &'static str {
        match self {
            Tool::Mover => "mover (encrypted)",
            Tool::MoverPlain => "mover --insecure-plaintext",
            Tool::Rsync => "rsync (daemon)",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub tool: Tool,
    pub rep: usize,
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub wire_bytes: u64,
    pub cache_dropped: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub tool: Tool,
    pub median_seconds: f64,
    pub mb_per_s: f64,
    pub files_per_s: f64,
    pub cpu_s_per_gb: f64,
    pub wire_bytes: u64,
    pub percent_of_limit: f64,
    pub throughput_vs_rsync: Option<f64>,
    pub cpu_vs_rsync: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetResult {
    pub dataset: Dataset,
    pub sequential_read_mb_s: f64,
    pub limit_mb_s: f64,
    pub rows: Vec<Row>,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub machine: serde_json::Value,
    pub mover_version: String,
    pub rsync_version: String,
    pub scale: f64,
    pub loopback_tcp_mb_s: f64,
    /// Where the data comes from and goes to in this run.
    pub regime: String,
    pub note: &'static str,
    pub datasets: Vec<DatasetResult>,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

pub fn cmd_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// CPUs, kernel, CPU model and memory of this machine, for the reports.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": cmd_line("uname", &["-r"]),
        "cpu": cpu,
        "mem": cmd_line("sh", &["-c", "grep MemTotal /proc/meminfo"]),
    })
}

pub fn today() -> String {
    cmd_line("date", &["-u", "+%Y-%m-%d"])
}

impl Report {
    pub fn new(mover: &Path, scale: f64, tcp: f64) -> Report {
        Report {
            date: today(),
            machine: machine(),
            mover_version: cmd_line(&mover.display().to_string(), &["--version"]),
            rsync_version: crate::rsync::version(),
            scale,
            loopback_tcp_mb_s: tcp,
            regime: String::new(),
            note: "MB = 10^6 bytes. Medians of the reps; tool order rotates every rep. Initial sync into a new, empty destination directory (in the work dir, removed only after a dataset's last run; with --dst-dir, removed right after its run). Cold runs drop the page cache before every run; hot runs read the dataset into it before every run, and mover reads through it (--no-direct). \
                   rsync: -aHX --numeric-ids to an rsync daemon on 127.0.0.1 (in clear). mover: receive --once + send, default threads, sessions encrypted with certificates pinned; the plaintext row runs both with --insecure-plaintext. \
                   mover's receiver syncfs's before committing each recovery point (a job is durable when acknowledged); rsync does not fsync. CPU = sender + receiver user+sys.",
            datasets: Vec::new(),
        }
    }

    pub fn add(&mut self, ds: Dataset, read: f64, samples: Vec<Sample>) {
        let limit = read.min(self.loopback_tcp_mb_s);
        let row = |tool: Tool| -> Option<Row> {
            let s: Vec<&Sample> = samples.iter().filter(|x| x.tool == tool).collect();
            if s.is_empty() {
                return None;
            }
            let secs = median(s.iter().map(|x| x.seconds).collect());
            let cpu = median(s.iter().map(|x| x.cpu_seconds).collect());
            let mbs = ds.bytes as f64 / secs / 1e6;
            Some(Row {
                tool,
                median_seconds: secs,
                mb_per_s: mbs,
                files_per_s: ds.files as f64 / secs,
                cpu_s_per_gb: cpu / (ds.bytes as f64 / 1e9),
                wire_bytes: median(s.iter().map(|x| x.wire_bytes as f64).collect()) as u64,
                percent_of_limit: 100.0 * mbs / limit,
                throughput_vs_rsync: None,
                cpu_vs_rsync: None,
            })
        };
        let mut rows: Vec<Row> = [Tool::Mover, Tool::MoverPlain, Tool::Rsync]
            .into_iter()
            .filter_map(row)
            .collect();
        if let Some(r) = rows.iter().find(|r| r.tool == Tool::Rsync).cloned() {
            for x in rows.iter_mut() {
                x.throughput_vs_rsync = Some(r.median_seconds / x.median_seconds);
                x.cpu_vs_rsync = Some(x.cpu_s_per_gb / r.cpu_s_per_gb);
            }
        }
        self.datasets.push(DatasetResult {
            dataset: ds,
            sequential_read_mb_s: read,
            limit_mb_s: limit,
            rows,
            samples,
        });
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# mover vs rsync, {}\n\n{} CPUs, kernel {}, {}; loopback TCP {:.0} MB/s; scale {}\n\nRegime: {}.\n\n{}\n\n",
            self.date, self.machine["nproc"], self.machine["kernel"].as_str().unwrap_or(""), self.rsync_version, self.loopback_tcp_mb_s, self.scale, self.regime, self.note
        );
        s.push_str("| dataset | tool | median s | MB/s | files/s | CPU s/GB | wire bytes | % of limit | speed vs rsync | CPU vs rsync |\n");
        s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for d in &self.datasets {
            for r in &d.rows {
                let f =
                    |v: Option<f64>| v.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into());
                s.push_str(&format!(
                    "| {} ({} files, limit {:.0} MB/s) | {} | {:.2} | {:.0} | {:.0} | {:.2} | {} | {:.0}% | {} | {} |\n",
                    d.dataset.kind.name(),
                    d.dataset.files,
                    d.limit_mb_s,
                    r.tool.label(),
                    r.median_seconds,
                    r.mb_per_s,
                    r.files_per_s,
                    r.cpu_s_per_gb,
                    r.wire_bytes,
                    r.percent_of_limit,
                    f(r.throughput_vs_rsync),
                    f(r.cpu_vs_rsync)
                ));
            }
        }
        s
    }

    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join(format!("{}-{name}.json", self.date));
        let md = dir.join(format!("{}-{name}.md", self.date));
        std::fs::write(&json, serde_json::to_string_pretty(self)?)?;
        std::fs::write(&md, self.markdown())?;
        Ok((json, md))
    }
}
