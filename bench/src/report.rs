//! Results of one `bench` run: the machine, the limits measured in the run, the initial-sync
//! regimes (one cell per dataset, source cache state and destination), the incremental
//! scenarios and the resume case, with the issue's acceptance targets judged on medians.
//! Written as JSON (every raw sample) and as markdown.

use crate::inc_report::ScenarioResult;
pub use crate::measure::{median, met, rotation, Cache, Dest, Target, Tool};
use crate::resume::ResumeResult;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn cmd_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn today() -> String {
    cmd_line("date", &["-u", "+%Y-%m-%d"])
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    /// CPUs online.
    pub cores: usize,
    /// CPUs in this process's affinity mask (what mover's default worker count is).
    pub usable_cpus: usize,
    pub kernel: String,
    pub mem_gib: f64,
    pub work_dir: PathBuf,
    /// "FSTYPE SOURCE (OPTIONS)" of the work dir's mount.
    pub work_fs: String,
    /// Whether the kernel calls the work dir's device rotational (None: no block device).
    pub work_rotational: Option<bool>,
    pub tmpfs_dir: Option<PathBuf>,
    pub tmpfs_fs: Option<String>,
}

/// "FSTYPE on SOURCE (OPTIONS)" of the mount holding `p`.
fn mount_of(p: &Path) -> String {
    let line = cmd_line(
        "findmnt",
        &[
            "-n",
            "-f",
            "-o",
            "FSTYPE,SOURCE,OPTIONS",
            "-T",
            &p.display().to_string(),
        ],
    );
    match line.split_whitespace().collect::<Vec<_>>()[..] {
        [fs, src, opts] => format!("{fs} on {src} ({opts})"),
        _ => line,
    }
}

fn rotational(p: &Path) -> Option<bool> {
    let stat = crate::proc::device_stat_file(p)?;
    let queue = stat.parent()?.join("queue/rotational");
    // A partition's queue is its disk's.
    let queue = if queue.exists() {
        queue
    } else {
        stat.parent()?.join("../queue/rotational")
    };
    Some(std::fs::read_to_string(queue).ok()?.trim() == "1")
}

impl Machine {
    pub fn probe(work_dir: &Path, tmpfs_dir: Option<&Path>) -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        let online = std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
            .unwrap_or(0);
        let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: online,
            usable_cpus: mover::default_threads(),
            kernel: cmd_line("uname", &["-r"]),
            mem_gib: mem_kib / 1048576.0,
            work_dir: work_dir.to_path_buf(),
            work_fs: mount_of(work_dir),
            work_rotational: rotational(work_dir),
            tmpfs_dir: tmpfs_dir.map(Path::to_path_buf),
            tmpfs_fs: tmpfs_dir.map(mount_of),
        }
    }
}

/// The machine's limits in MB/s (10^6 bytes), measured in this run.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// Streams and threads of the `_n` figures: mover's worker count in this run.
    pub workers: usize,
    pub tcp_1: f64,
    pub tcp_n: f64,
    pub memcpy_1: f64,
    pub memcpy_n: f64,
    /// Per dataset: reading its files cold, O_DIRECT, `workers` streams.
    pub read: BTreeMap<String, f64>,
    /// Per destination kind ("disk", "tmpfs"): writing new files, `workers` streams, fsync.
    pub write: BTreeMap<String, f64>,
    /// Per dataset of many small files and destination: creating its files (creation.rs).
    pub create: Vec<crate::creation::Creation>,
}

/// What bounds a regime: the smallest of its components.
#[derive(Debug, Clone, Serialize)]
pub struct Bound {
    pub mb_s: f64,
    /// The component that is the bound.
    pub by: String,
    /// Every component considered, (name, MB/s).
    pub components: Vec<(String, f64)>,
}

/// The name of the per-file component of a bound (creation.rs).
const CREATION: &str = "creating its files,";

/// Whether `b` has no per-file component (a run that did not measure the creation limit).
fn lacks_per_file_bound(b: &Bound) -> bool {
    !b.components.iter().any(|(n, _)| n.contains(CREATION))
}

/// The bound of initial syncs of `dataset` in regime (`cache`, `dest`): the source side (page
/// cache = memory copy, the better of 1 and N threads; cold = the dataset's disk read), loopback TCP with all
/// workers' streams, and the destination's write rate. Cold to disk reads and writes the same
/// device (the work dir holds sources and disk destinations), whose time is shared between
/// them: 1 / (1/read + 1/write). A dataset of many small files adds creating its files on the
/// destination (creation.rs), when measured (cold to disk: shared with the read, likewise).
/// None when a component was not measured.
pub fn bound(l: &Limits, dataset: &str, cache: Cache, dest: Dest) -> Option<Bound> {
    // Two rates of one device that does both, one after the other.
    let one_device = |a: f64, b: f64| 1.0 / (1.0 / a + 1.0 / b);
    let n = l.workers;
    let read = *l.read.get(dataset)?;
    let write = *l.write.get(dest.name())?;
    let mut c: Vec<(String, f64)> = vec![(format!("loopback TCP, {n} streams"), l.tcp_n)];
    match (cache, dest) {
        (Cache::Cold, Dest::Disk) => c.push((
            "disk read + write, one device".into(),
            one_device(read, write),
        )),
        (cache, dest) => {
            c.push(match cache {
                // A bound is what the machine can do at best: on a memory-bound VM one thread
                // may copy faster than N.
                Cache::Hot => (
                    format!("memory copy (best of 1 and {n} threads)"),
                    l.memcpy_1.max(l.memcpy_n),
                ),
                Cache::Cold => ("disk read (O_DIRECT)".into(), read),
            });
            c.push(match dest {
                Dest::Disk => ("disk write + fsync".into(), write),
                Dest::Tmpfs => ("tmpfs write".into(), write),
            });
        }
    }
    if let Some(k) = l
        .create
        .iter()
        .find(|k| k.dataset == dataset && k.dest == dest.name())
    {
        let name = format!("{CREATION} {} threads, + syncfs", k.threads);
        c.push(match (cache, dest) {
            // The same device reads the files and takes the new ones.
            (Cache::Cold, Dest::Disk) => (
                format!("disk read + {name}, one device"),
                one_device(read, k.mb_s),
            ),
            _ => (name, k.mb_s),
        });
    }
    let (by, mb_s) = c
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .cloned()
        .expect("components are never empty");
    Some(Bound {
        mb_s,
        by,
        components: c,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub tool: Tool,
    pub rep: usize,
    /// Place in the rep's rotated order (0 = first).
    pub position: usize,
    pub seconds: f64,
    /// Sender + receiver (rsync: client + daemon; cp: cp + sync) user+sys.
    pub cpu_seconds: f64,
    /// The tool's own count (mover's sender report; rsync's sent + received); None for cp.
    pub wire_bytes: Option<u64>,
    /// Bytes over `lo` during the run, both directions, headers and other traffic included.
    pub loopback_bytes: Option<u64>,
    pub cache_dropped: bool,
    /// The wait for the disk to go quiet after the previous run's destination was deleted.
    pub quiet_before: crate::proc::Quiet,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolRow {
    pub tool: Tool,
    pub runs: usize,
    pub median_seconds: f64,
    pub mb_per_s: f64,
    pub median_cpu_seconds: f64,
    pub cpu_s_per_gb: f64,
    pub median_wire_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    pub dataset: String,
    pub spec: String,
    pub files: u64,
    pub bytes: u64,
    pub cache: Cache,
    pub dest: Dest,
    pub dest_dir: PathBuf,
    pub bound: Option<Bound>,
    pub rows: Vec<ToolRow>,
    /// rsync median seconds / mover median seconds.
    pub speed_vs_rsync: Option<f64>,
    /// cp median seconds / mover median seconds.
    pub speed_vs_cp: Option<f64>,
    /// mover's MB/s as a percentage of the regime's bound.
    pub percent_of_limit: Option<f64>,
    /// mover's MB/s as a percentage of loopback TCP with as many streams as workers.
    pub percent_of_tcp: Option<f64>,
    /// Runs that started although the disk had not gone quiet within QUIESCE_TIMEOUT.
    pub quiesce_timeouts: usize,
    pub samples: Vec<Sample>,
}

impl CellResult {
    pub fn new(
        ds: &crate::dataset::Dataset,
        cache: Cache,
        dest: Dest,
        dest_dir: PathBuf,
        limits: Option<&Limits>,
        samples: Vec<Sample>,
    ) -> CellResult {
        let gb = ds.bytes as f64 / 1e9;
        let row = |tool: Tool| -> Option<ToolRow> {
            let s: Vec<&Sample> = samples.iter().filter(|x| x.tool == tool).collect();
            if s.is_empty() {
                return None;
            }
            let secs = median(s.iter().map(|x| x.seconds).collect());
            let cpu = median(s.iter().map(|x| x.cpu_seconds).collect());
            let wire: Option<Vec<f64>> = s.iter().map(|x| x.wire_bytes.map(|b| b as f64)).collect();
            Some(ToolRow {
                tool,
                runs: s.len(),
                median_seconds: secs,
                mb_per_s: ds.bytes as f64 / secs / 1e6,
                median_cpu_seconds: cpu,
                cpu_s_per_gb: cpu / gb,
                median_wire_bytes: wire.map(|w| median(w) as u64),
            })
        };
        let rows: Vec<ToolRow> = [Tool::Mover, Tool::MoverPlain, Tool::Rsync, Tool::Cp]
            .into_iter()
            .filter_map(row)
            .collect();
        let get = |t: Tool| rows.iter().find(|r| r.tool == t);
        let vs = |t: Tool| {
            get(Tool::Mover)
                .zip(get(t))
                .map(|(m, o)| o.median_seconds / m.median_seconds)
        };
        let bound = limits.and_then(|l| bound(l, ds.kind.name(), cache, dest));
        let mover_mbs = get(Tool::Mover).map(|m| m.mb_per_s);
        CellResult {
            dataset: ds.kind.name().into(),
            spec: ds.spec.clone(),
            files: ds.files,
            bytes: ds.bytes,
            cache,
            dest,
            dest_dir,
            percent_of_limit: mover_mbs
                .zip(bound.as_ref())
                .map(|(m, b)| 100.0 * m / b.mb_s),
            percent_of_tcp: mover_mbs.zip(limits).map(|(m, l)| 100.0 * m / l.tcp_n),
            bound,
            speed_vs_rsync: vs(Tool::Rsync),
            speed_vs_cp: vs(Tool::Cp),
            quiesce_timeouts: samples.iter().filter(|s| s.quiet_before.timed_out).count(),
            rows,
            samples,
        }
    }

    fn row(&self, t: Tool) -> Option<&ToolRow> {
        self.rows.iter().find(|r| r.tool == t)
    }
}

fn x(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into())
}

/// A ratio judged against a threshold: one more digit, so 0.898 does not read as 0.90.
fn x3(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}x")).unwrap_or_else(|| "-".into())
}

/// The initial-sync targets of the issue that `cells` can judge.
pub fn initial_targets(cells: &[CellResult]) -> Vec<Target> {
    let find = |ds: &str, c: Cache, d: Dest| {
        cells
            .iter()
            .find(|x| x.dataset == ds && x.cache == c && x.dest == d)
    };
    let mut out = Vec::new();
    let t = |area: String, target: &str, measured: String, met: Option<bool>| Target {
        area,
        target: target.into(),
        measured,
        met,
    };
    if let Some(c) = find("large", Cache::Hot, Dest::Tmpfs) {
        let area = "large, hot, tmpfs".to_string();
        out.push(t(
            area.clone(),
            "mover >= 3x rsync",
            x3(c.speed_vs_rsync),
            c.speed_vs_rsync.map(|v| v >= 3.0),
        ));
        out.push(t(
            area,
            "mover >= 70% of loopback TCP with as many streams as workers",
            c.percent_of_tcp
                .map(|p| format!("{p:.0}%"))
                .unwrap_or_else(|| "-".into()),
            c.percent_of_tcp.map(|p| p >= 70.0),
        ));
    }
    for ds in ["large", "small"] {
        if let Some(c) = find(ds, Cache::Cold, Dest::Disk) {
            out.push(t(
                format!("{ds}, cold, disk"),
                "mover >= 90% of cp -a + sync (cp s / mover s >= 0.9)",
                x3(c.speed_vs_cp),
                c.speed_vs_cp.map(|v| v >= 0.9),
            ));
        }
    }
    for d in [Dest::Tmpfs, Dest::Disk] {
        if let Some(c) = find("small", Cache::Hot, d) {
            out.push(t(
                format!("small, hot, {}", d.name()),
                "mover >= 3x rsync",
                x3(c.speed_vs_rsync),
                c.speed_vs_rsync.map(|v| v >= 3.0),
            ));
        }
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub name: String,
    pub machine: Machine,
    pub mover_version: String,
    pub rsync_version: String,
    pub scale: f64,
    pub reps: usize,
    /// mover's workers (--threads) and the streams of the `_n` limits.
    pub workers: usize,
    /// How runs are prepared and timed, one statement per entry (the report's header).
    pub scheme: Vec<String>,
    pub limits: Option<Limits>,
    pub initial: Vec<CellResult>,
    pub incremental: Vec<ScenarioResult>,
    pub resume: Option<ResumeResult>,
    /// Continuous replication's recovery point objective, one entry per tree size.
    pub rpo: Vec<crate::rpo::RpoResult>,
    pub make_writable: Option<crate::make_writable::MwResult>,
    /// Failback after a failover: reconnect, its seconds and bytes.
    pub reconnect: Option<crate::reconnect::RcResult>,
    /// Failback by reverse and back: the markdown section (`bench reverse`).
    #[serde(default)]
    pub reverse: Option<String>,
    /// The receiver's way of creating small files, measured alone (`bench create-path`).
    pub create_path: Option<crate::create_path::CreateResult>,
    pub targets: Vec<Target>,
}

/// How every initial-sync run is prepared, timed and cleaned up (the report's header).
pub fn initial_scheme(tools: &[Tool]) -> Vec<String> {
    let orders: Vec<String> = (0..tools.len().max(1))
        .map(|r| {
            rotation(tools, r)
                .iter()
                .map(|t| t.label())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    vec![
        format!("Tool order rotates every rep: {}; then again.", orders.join("; ")),
        format!("Each run syncs into its own new, empty destination directory, created before the run's preparation. \
         After the run (untimed): its copy is checked (files and bytes), the destination is deleted, the file systems of the work dir and the destination are syncfs'ed, \
         and the bench waits until the work dir's block device has written and discarded at most {} MiB within {} ms \
         (at most {} s; runs that started after such a timeout are counted below). \
         Only then is the next run prepared. So no run starts while a deletion's journal commit, discards or write-back are in progress: a destination is never deleted right before a timed run.",
         crate::proc::QUIET_BYTES >> 20, crate::proc::IDLE_WINDOW.as_millis(), crate::proc::QUIESCE_TIMEOUT.as_secs()),
        "Source cold: page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) just before the run. Source hot: every file of the dataset read just before the run. \
         mover chooses by itself how to read (no --no-direct).".into(),
        "mover: `mover receive --once` and `mover send --threads N` as two processes on 127.0.0.1, sessions encrypted (AES-256-GCM, certificates pinned with --peer-fingerprint), \
         timed from the sender's start to its exit; the receiver syncfs's before it commits the recovery point, so a job is durable when it ends.".into(),
        "rsync: -aHX --numeric-ids to an rsync daemon on 127.0.0.1 (in clear; it does not fsync). cp: `cp -a SRC/. DST/` then `sync -f DST`, timed together.".into(),
        "CPU = user + sys of sender and receiver (rsync: client and daemon with its children; cp: cp and sync). MB = 10^6 bytes. \
         Ratios: other tool's median seconds / mover's median seconds (above 1: mover is faster).".into(),
    ]
}

fn opt_bytes(v: Option<u64>) -> String {
    v.map(|b| b.to_string()).unwrap_or_else(|| "-".into())
}

impl Report {
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = format!("# mover benchmark: {}, {}\n\n", self.name, self.date);
        s.push_str("| | |\n|---|---|\n");
        s.push_str(&format!(
            "| machine | {}, {} cores ({} usable by the bench), {:.1} GiB RAM, kernel {} |\n",
            m.cpu, m.cores, m.usable_cpus, m.mem_gib, m.kernel
        ));
        s.push_str(&format!(
            "| work dir (sources, disk destinations) | {}: {}{} |\n",
            m.work_dir.display(),
            m.work_fs,
            match m.work_rotational {
                Some(true) => ", rotational",
                Some(false) => ", non-rotational",
                None => "",
            }
        ));
        if let (Some(d), Some(f)) = (&m.tmpfs_dir, &m.tmpfs_fs) {
            s.push_str(&format!("| tmpfs destinations | {}: {f} |\n", d.display()));
        }
        s.push_str(&format!(
            "| mover | {}; encrypted sessions; {} workers (--threads {}) |\n",
            self.mover_version, self.workers, self.workers
        ));
        // The daemon benchmarks (rpo, make-writable, reconnect) run neither rsync nor rotating reps.
        let tools_compared =
            !self.initial.is_empty() || !self.incremental.is_empty() || self.resume.is_some();
        if tools_compared {
            s.push_str(&format!("| rsync | {} |\n", self.rsync_version));
            s.push_str(&format!(
                "| reps | {} per tool and regime; medians; ratios within this run |\n",
                self.reps
            ));
        }
        s.push_str(&format!("| scale | {} |\n\n", self.scale));
        for line in &self.scheme {
            s.push_str(&format!("- {line}\n"));
        }
        if !self.scheme.is_empty() {
            s.push('\n');
        }
        if let Some(l) = &self.limits {
            s.push_str("## Limits, measured in this run\n\n| limit | MB/s |\n|---|---:|\n");
            let n = l.workers;
            s.push_str(&format!("| loopback TCP, 1 stream | {:.0} |\n", l.tcp_1));
            s.push_str(&format!("| loopback TCP, {n} streams | {:.0} |\n", l.tcp_n));
            s.push_str(&format!("| memory copy, 1 thread | {:.0} |\n", l.memcpy_1));
            s.push_str(&format!(
                "| memory copy, {n} threads | {:.0} |\n",
                l.memcpy_n
            ));
            for (k, v) in &l.read {
                s.push_str(&format!(
                    "| disk read of the {k} dataset, cold, O_DIRECT, {n} streams | {v:.0} |\n"
                ));
            }
            for (k, v) in &l.write {
                s.push_str(&format!(
                    "| sequential write to the {k} destination, {n} files, fsync | {v:.0} |\n"
                ));
            }
            for k in &l.create {
                s.push_str(&format!(
                    "| creating the {} dataset's {} files in the {} destination, {} threads, + syncfs: {:.3} s (best of {}) | {:.0} |\n",
                    k.dataset,
                    k.files,
                    k.dest,
                    k.threads,
                    k.seconds,
                    k.runs.len(),
                    k.mb_s
                ));
            }
            s.push('\n');
        }
        if !self.initial.is_empty() {
            s.push_str("## Initial sync\n\n");
            s.push_str("| dataset | source | destination | mover s | rsync s | cp -a + sync s | mover vs rsync | mover vs cp | mover % of limit | limit (bound) | CPU s/GB mover / rsync / cp | wire bytes mover / rsync |\n");
            s.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|\n");
            let secs = |c: &CellResult, t: Tool| {
                c.row(t)
                    .map(|r| format!("{:.3}", r.median_seconds))
                    .unwrap_or_else(|| "-".into())
            };
            let cpu = |c: &CellResult, t: Tool| {
                c.row(t)
                    .map(|r| format!("{:.2}", r.cpu_s_per_gb))
                    .unwrap_or_else(|| "-".into())
            };
            for c in &self.initial {
                s.push_str(&format!(
                    "| {} ({} files, {} bytes) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} / {} |\n",
                    c.dataset,
                    c.files,
                    c.bytes,
                    c.cache.name(),
                    c.dest.name(),
                    secs(c, Tool::Mover),
                    secs(c, Tool::Rsync),
                    secs(c, Tool::Cp),
                    x(c.speed_vs_rsync),
                    x(c.speed_vs_cp),
                    c.percent_of_limit
                        .map(|p| format!("{p:.0}%"))
                        .unwrap_or_else(|| "-".into()),
                    c.bound
                        .as_ref()
                        .map(|b| format!("{:.0} MB/s: {}", b.mb_s, b.by))
                        .unwrap_or_else(|| "-".into()),
                    cpu(c, Tool::Mover),
                    cpu(c, Tool::Rsync),
                    cpu(c, Tool::Cp),
                    opt_bytes(c.row(Tool::Mover).and_then(|r| r.median_wire_bytes)),
                    opt_bytes(c.row(Tool::Rsync).and_then(|r| r.median_wire_bytes)),
                ));
            }
            if self
                .initial
                .iter()
                .any(|c| c.row(Tool::MoverPlain).is_some())
            {
                s.push_str("\n| dataset | source | destination | mover --insecure-plaintext s | encrypted / plaintext seconds |\n|---|---|---|---:|---:|\n");
                for c in &self.initial {
                    if let (Some(p), Some(e)) = (c.row(Tool::MoverPlain), c.row(Tool::Mover)) {
                        s.push_str(&format!(
                            "| {} | {} | {} | {:.3} | {:.2} |\n",
                            c.dataset,
                            c.cache.name(),
                            c.dest.name(),
                            p.median_seconds,
                            e.median_seconds / p.median_seconds
                        ));
                    }
                }
            }
            s.push_str("\nWhat bounds each regime (the limit is the smallest component):\n\n");
            for c in &self.initial {
                if let Some(b) = &c.bound {
                    let comps: Vec<String> = b
                        .components
                        .iter()
                        .map(|(n, v)| format!("{n} {v:.0}"))
                        .collect();
                    s.push_str(&format!(
                        "- {} {} → {}: {:.0} MB/s, {} (the least of: {}){}\n",
                        c.dataset,
                        c.cache.name(),
                        c.dest.name(),
                        b.mb_s,
                        b.by,
                        comps.join("; "),
                        if c.dataset == "small" && lacks_per_file_bound(b) {
                            " (a bandwidth bound; 4 KiB files are bound by per-file work, for which cp -a + sync is the reference)"
                        } else {
                            ""
                        }
                    ));
                }
            }
            let timeouts: usize = self.initial.iter().map(|c| c.quiesce_timeouts).sum();
            if timeouts > 0 {
                s.push_str(&format!(
                    "\n{timeouts} run(s) started after the disk had not gone quiet within {} s (another user of the machine?).\n",
                    crate::proc::QUIESCE_TIMEOUT.as_secs()
                ));
            }
            s.push('\n');
        }
        if !self.incremental.is_empty() {
            s.push_str("## Incremental jobs\n\n");
            s.push_str(&crate::inc_report::markdown(&self.incremental));
            s.push('\n');
        }
        if let Some(r) = &self.resume {
            s.push_str("## Resume after the receiver is killed\n\n");
            s.push_str(&r.markdown());
            s.push('\n');
        }
        if !self.rpo.is_empty() {
            s.push_str("## Continuous replication: recovery point objective\n\n");
            s.push_str(&crate::rpo::markdown(&self.rpo));
            s.push('\n');
        }
        if let Some(m) = &self.make_writable {
            s.push_str("## Failover: make-writable\n\n");
            s.push_str(&m.markdown());
            s.push('\n');
        }
        if let Some(r) = &self.reverse {
            s.push_str(r);
            s.push('\n');
        }
        if let Some(r) = &self.reconnect {
            s.push_str("## Failback: reconnect after churn on the target\n\n");
            s.push_str(&r.markdown());
            s.push('\n');
        }
        if let Some(c) = &self.create_path {
            s.push_str("## Creating small files: syscalls or io_uring\n\n");
            s.push_str(&c.markdown());
            s.push('\n');
        }
        if !self.targets.is_empty() {
            s.push_str("## Acceptance targets, on this run's figures\n\n| area | target | measured | result |\n|---|---|---|---|\n");
            for t in &self.targets {
                s.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    t.area,
                    t.target,
                    t.measured,
                    met(t.met)
                ));
            }
        }
        s
    }

    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join(format!("{}-{}.json", self.date, self.name));
        let md = dir.join(format!("{}-{}.md", self.date, self.name));
        std::fs::write(&json, serde_json::to_string_pretty(self)?)?;
        std::fs::write(&md, self.markdown())?;
        Ok((json, md))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![7.0]), 7.0);
    }

    #[test]
    fn rotation_puts_each_tool_in_each_place_once_per_cycle() {
        let t = [Tool::Mover, Tool::Rsync, Tool::Cp];
        assert_eq!(rotation(&t, 0), vec![Tool::Mover, Tool::Rsync, Tool::Cp]);
        assert_eq!(rotation(&t, 1), vec![Tool::Rsync, Tool::Cp, Tool::Mover]);
        assert_eq!(rotation(&t, 2), vec![Tool::Cp, Tool::Mover, Tool::Rsync]);
        assert_eq!(rotation(&t, 3), rotation(&t, 0));
        for pos in 0..3 {
            let mut seen: Vec<Tool> = (0..3).map(|r| rotation(&t, r)[pos]).collect();
            seen.sort_by_key(|t| *t as u8);
            assert_eq!(seen, t.to_vec());
        }
        assert!(rotation::<Tool>(&[], 4).is_empty());
    }

    fn limits() -> Limits {
        Limits {
            workers: 2,
            tcp_1: 3000.0,
            tcp_n: 4000.0,
            memcpy_1: 8000.0,
            memcpy_n: 12000.0,
            read: [("large".to_string(), 600.0)].into(),
            write: [("disk".to_string(), 400.0), ("tmpfs".to_string(), 5000.0)].into(),
            create: Vec::new(),
        }
    }

    #[test]
    fn bounds_name_the_smallest_component() {
        let l = limits();
        let b = bound(&l, "large", Cache::Hot, Dest::Tmpfs).unwrap();
        assert_eq!((b.mb_s, b.by.as_str()), (4000.0, "loopback TCP, 2 streams"));
        let b = bound(&l, "large", Cache::Cold, Dest::Tmpfs).unwrap();
        assert_eq!((b.mb_s, b.by.as_str()), (600.0, "disk read (O_DIRECT)"));
        let b = bound(&l, "large", Cache::Hot, Dest::Disk).unwrap();
        assert_eq!((b.mb_s, b.by.as_str()), (400.0, "disk write + fsync"));
        // One device reads and writes every byte: 1 / (1/600 + 1/400) = 240.
        let b = bound(&l, "large", Cache::Cold, Dest::Disk).unwrap();
        assert!((b.mb_s - 240.0).abs() < 1e-9, "{}", b.mb_s);
        assert_eq!(b.by, "disk read + write, one device");
        assert!(bound(&l, "small", Cache::Hot, Dest::Tmpfs).is_none());
    }

    #[test]
    fn many_small_files_are_bound_by_creating_them_where_measured() {
        let mut l = limits();
        l.read.insert("small".into(), 60.0);
        l.create.push(crate::creation::summarize(
            "small",
            "disk",
            20_000,
            80_000_000,
            2,
            vec![0.6, 0.5],
        ));
        let b = bound(&l, "small", Cache::Hot, Dest::Disk).unwrap();
        assert_eq!(b.mb_s, 160.0, "80 MB in 0.5 s, the faster run");
        assert_eq!(b.by, "creating its files, 2 threads, + syncfs");
        assert!(!lacks_per_file_bound(&b));
        // Cold, the one device reads the bytes and creates the files: 1/(1/60 + 1/160).
        let b = bound(&l, "small", Cache::Cold, Dest::Disk).unwrap();
        assert_eq!(
            b.by,
            "disk read + creating its files, 2 threads, + syncfs, one device"
        );
        assert!((b.mb_s - 1.0 / (1.0 / 60.0 + 1.0 / 160.0)).abs() < 1e-9);
        assert_eq!(b.components.len(), 3, "{:?}", b.components);
        // No creation measured for the tmpfs: bandwidth components only.
        let b = bound(&l, "small", Cache::Hot, Dest::Tmpfs).unwrap();
        assert_eq!(b.by, "loopback TCP, 2 streams");
        assert!(lacks_per_file_bound(&b));
    }

    fn sample(tool: Tool, rep: usize, seconds: f64) -> Sample {
        Sample {
            tool,
            rep,
            position: 0,
            seconds,
            cpu_seconds: seconds / 2.0,
            wire_bytes: (tool != Tool::Cp).then_some(1_000_000),
            loopback_bytes: None,
            cache_dropped: false,
            quiet_before: Default::default(),
        }
    }

    #[test]
    fn cell_ratios_targets_and_markdown() {
        let ds = crate::dataset::Dataset {
            kind: crate::dataset::Kind::Large,
            dir: "/x".into(),
            files: 2,
            bytes: 1_000_000_000,
            spec: "test".into(),
        };
        let mut samples = Vec::new();
        for r in 0..5 {
            samples.push(sample(Tool::Mover, r, 0.30 + r as f64 * 0.01));
            samples.push(sample(Tool::Rsync, r, 1.2));
            samples.push(sample(Tool::Cp, r, 0.5));
        }
        let l = limits();
        let c = CellResult::new(
            &ds,
            Cache::Hot,
            Dest::Tmpfs,
            "/dev/shm/x".into(),
            Some(&l),
            samples,
        );
        // Median mover 0.32 s: 1e9 B / 0.32 s = 3125 MB/s, 78% of 4000.
        assert!((c.speed_vs_rsync.unwrap() - 1.2 / 0.32).abs() < 1e-9);
        assert!((c.speed_vs_cp.unwrap() - 0.5 / 0.32).abs() < 1e-9);
        assert!((c.percent_of_tcp.unwrap() - 78.125).abs() < 1e-9);
        let t = initial_targets(std::slice::from_ref(&c));
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].met, Some(true)); // 3.75x rsync
        assert_eq!(t[1].met, Some(true)); // 78% of TCP
        let rep = Report {
            date: "2025-01-01".into(),
            name: "test".into(),
            machine: Machine::probe(Path::new("/"), None),
            mover_version: "mover 0".into(),
            rsync_version: "rsync 0".into(),
            scale: 1.0,
            reps: 5,
            workers: 2,
            scheme: initial_scheme(&[Tool::Mover, Tool::Rsync, Tool::Cp]),
            limits: Some(l),
            initial: vec![c],
            incremental: Vec::new(),
            resume: None,
            rpo: Vec::new(),
            make_writable: None,
            reconnect: None,
            reverse: None,
            create_path: None,
            targets: t,
        };
        let md = rep.markdown();
        assert!(md.contains(
            "| large (2 files, 1000000000 bytes) | hot | tmpfs | 0.320 | 1.200 | 0.500 | 3.75x | 1.56x | 78% | 4000 MB/s: loopback TCP, 2 streams |"
        ), "{md}");
        assert!(md.contains("mover (encrypted), rsync (daemon), cp -a + sync; rsync (daemon), cp -a + sync, mover (encrypted);"));
        assert!(md.contains("| large, hot, tmpfs | mover >= 3x rsync | 3.750x | met |"));
    }
}
