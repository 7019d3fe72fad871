//! Results of the incremental scenarios: raw samples, per-scenario medians, ratios against
//! rsync and the acceptance targets (met or not); rendered as a section of the run's report.

use crate::measure::{median, met, Target, Tool};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct IncSample {
    pub tool: Tool,
    pub rep: usize,
    pub seconds: f64,
    /// Sender + receiver user+sys (rsync: client + daemon with its reaped children).
    pub cpu_seconds: f64,
    /// The tool's own count: mover's sender report; rsync's bytes sent + received.
    pub wire_bytes: u64,
    /// Bytes over `lo` during the run, both directions, headers included (None: unreadable).
    pub loopback_bytes: Option<u64>,
    /// Bytes of the source the rep's change rewrote (0 for no-op and rename).
    pub changed_bytes: u64,
    pub cache_dropped: bool,
    /// The wait for the disk to go quiet before the job was prepared.
    pub quiet_before: crate::proc::Quiet,
    /// Tool details: mover's send and receive reports, rsync's literal and matched data.
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct IncRow {
    pub tool: Tool,
    pub median_seconds: f64,
    pub median_cpu_seconds: f64,
    pub median_wire_bytes: u64,
    pub median_loopback_bytes: Option<u64>,
    pub wire_per_changed_byte: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: &'static str,
    pub description: String,
    /// Regular files in the source.
    pub files: u64,
    /// Every item in the source (files, directories, symlinks), its root excluded.
    pub entries: u64,
    pub bytes: u64,
    pub median_changed_bytes: u64,
    pub rows: Vec<IncRow>,
    /// rsync median seconds / mover median seconds.
    pub speed_vs_rsync: Option<f64>,
    /// mover median CPU seconds / rsync median CPU seconds.
    pub cpu_vs_rsync: Option<f64>,
    pub targets: Vec<Target>,
    pub samples: Vec<IncSample>,
}

impl ScenarioResult {
    pub fn new(
        name: &'static str,
        description: String,
        (files, entries, bytes): (u64, u64, u64),
        samples: Vec<IncSample>,
    ) -> ScenarioResult {
        let med = |v: Vec<f64>| median(v);
        let changed = med(samples.iter().map(|s| s.changed_bytes as f64).collect()) as u64;
        let row = |tool: Tool| -> Option<IncRow> {
            let s: Vec<&IncSample> = samples.iter().filter(|x| x.tool == tool).collect();
            if s.is_empty() {
                return None;
            }
            let wire = med(s.iter().map(|x| x.wire_bytes as f64).collect()) as u64;
            let lo: Option<Vec<f64>> = s
                .iter()
                .map(|x| x.loopback_bytes.map(|b| b as f64))
                .collect();
            Some(IncRow {
                tool,
                median_seconds: med(s.iter().map(|x| x.seconds).collect()),
                median_cpu_seconds: med(s.iter().map(|x| x.cpu_seconds).collect()),
                median_wire_bytes: wire,
                median_loopback_bytes: lo.map(|v| med(v) as u64),
                wire_per_changed_byte: (changed > 0).then(|| wire as f64 / changed as f64),
            })
        };
        let rows: Vec<IncRow> = [Tool::Mover, Tool::Rsync]
            .into_iter()
            .filter_map(row)
            .collect();
        let (m, r) = (
            rows.iter().find(|x| x.tool == Tool::Mover),
            rows.iter().find(|x| x.tool == Tool::Rsync),
        );
        let speed = m.zip(r).map(|(m, r)| r.median_seconds / m.median_seconds);
        let cpu = m
            .zip(r)
            .map(|(m, r)| m.median_cpu_seconds / r.median_cpu_seconds);
        let targets = targets(name, m, speed);
        ScenarioResult {
            name,
            description,
            files,
            entries,
            bytes,
            median_changed_bytes: changed,
            rows,
            speed_vs_rsync: speed,
            cpu_vs_rsync: cpu,
            targets,
            samples,
        }
    }
}

/// The wire budget of a job: NOOP_WIRE_BASE plus NOOP_WIRE_PER_CHANGED per changed entry.
const NOOP_WIRE_BASE: u64 = 64 << 10;
const NOOP_WIRE_PER_CHANGED: u64 = 100;

pub fn wire_budget(changed_entries: u64) -> u64 {
    NOOP_WIRE_BASE + NOOP_WIRE_PER_CHANGED * changed_entries
}

/// The acceptance targets of each scenario, judged on medians.
fn targets(name: &str, mover: Option<&IncRow>, speed: Option<f64>) -> Vec<Target> {
    let t = |target: &str, measured: String, met: Option<bool>| Target {
        area: name.into(),
        target: target.into(),
        measured,
        met,
    };
    let speed_s = speed
        .map(|x| format!("{x:.2}x"))
        .unwrap_or_else(|| "-".into());
    match name {
        "rewrite-1pct" => vec![
            t(
                "mover >= 5x faster than rsync",
                speed_s,
                speed.map(|x| x >= 5.0),
            ),
            t(
                "mover wire <= 1.2x changed bytes",
                mover
                    .and_then(|m| m.wire_per_changed_byte)
                    .map(|x| format!("{x:.3}x"))
                    .unwrap_or_else(|| "-".into()),
                mover
                    .and_then(|m| m.wire_per_changed_byte)
                    .map(|x| x <= 1.2),
            ),
        ],
        "noop-tree" => vec![
            t(
                "mover >= 2x faster than rsync's no-op",
                speed_s,
                speed.map(|x| x >= 2.0),
            ),
            // Nothing changes between jobs: no changed entry adds to the budget.
            t(
                "mover wire <= 64 KiB + 100 bytes per changed entry (none changed)",
                mover
                    .map(|m| format!("{} bytes", m.median_wire_bytes))
                    .unwrap_or_else(|| "-".into()),
                mover.map(|m| m.median_wire_bytes <= wire_budget(0)),
            ),
        ],
        "rename-dir" => vec![t(
            "mover wire < 1 MiB",
            mover
                .map(|m| format!("{} bytes", m.median_wire_bytes))
                .unwrap_or_else(|| "-".into()),
            mover.map(|m| m.median_wire_bytes < 1 << 20),
        )],
        _ => Vec::new(),
    }
}

/// The section of the report for `scenarios`: one row per scenario and tool, then what each
/// scenario is.
pub fn markdown(scenarios: &[ScenarioResult]) -> String {
    let mut s = String::from(
        "Per rep: one seeded change of the source, then one job of each tool (order alternating) into its own destination, \
         kept with mover's --state from the previous rep. rsync: -aHX --numeric-ids --delete to its daemon (delta algorithm). \
         mover: receive --once + send --state --threads N. Wire bytes: mover's sender count, rsync's sent + received; loopback bytes: both directions on lo \
         incl. TCP/IP headers. Speed vs rsync = rsync s / mover s; CPU vs rsync = mover / rsync.\n\n",
    );
    s.push_str(
        "| scenario | tool | median s | CPU s | wire bytes | loopback bytes | wire / changed | speed vs rsync | CPU vs rsync |\n",
    );
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    let x = |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}x")).unwrap_or_else(|| "-".into());
    for sc in scenarios {
        for r in &sc.rows {
            let mover = r.tool == Tool::Mover;
            s.push_str(&format!(
                "| {} ({} entries, {} files, {} bytes; changed {}) | {} | {:.3} | {:.3} | {} | {} | {} | {} | {} |\n",
                sc.name,
                sc.entries,
                sc.files,
                sc.bytes,
                sc.median_changed_bytes,
                r.tool.label(),
                r.median_seconds,
                r.median_cpu_seconds,
                r.median_wire_bytes,
                r.median_loopback_bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
                x(r.wire_per_changed_byte, 3),
                if mover { x(sc.speed_vs_rsync, 2) } else { "1.00x".into() },
                if mover { x(sc.cpu_vs_rsync, 2) } else { "1.00x".into() },
            ));
        }
    }
    s.push_str("\nScenarios:\n\n");
    for sc in scenarios {
        s.push_str(&format!("- {}: {}\n", sc.name, sc.description));
        for t in &sc.targets {
            s.push_str(&format!(
                "  - {}: {} ({})\n",
                t.target,
                t.measured,
                met(t.met)
            ));
        }
    }
    s
}
