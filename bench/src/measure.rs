//! What every benchmark shares: the tools compared, the regimes' axes (source cache state,
//! destination), the order tools run in (`rotation`), medians, and the acceptance targets
//! judged on them. Below the scenarios and the report, which gathers their results.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Tool {
    /// mover as deployed: sessions sealed (AES-256-GCM), certificates pinned.
    Mover,
    /// mover with --insecure-plaintext on both sides: what encryption costs is the difference.
    MoverPlain,
    Rsync,
    /// `cp -a` then `sync -f` on the destination, timed together: a local copy made durable.
    Cp,
}

impl Tool {
    pub fn label(self) -> &'static str {
        match self {
            Tool::Mover => "mover (encrypted)",
            Tool::MoverPlain => "mover --insecure-plaintext",
            Tool::Rsync => "rsync (daemon)",
            Tool::Cp => "cp -a + sync",
        }
    }
}

/// Whether the source is in the page cache when a timed run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Cache {
    /// Read into the page cache just before the run.
    Hot,
    /// Page cache dropped just before the run.
    Cold,
}

/// Where a run's destination is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dest {
    /// In the work dir, on the same file system (and device) as the sources.
    Disk,
    /// In a tmpfs (--tmpfs-dir).
    Tmpfs,
}

impl Cache {
    pub fn name(self) -> &'static str {
        match self {
            Cache::Hot => "hot",
            Cache::Cold => "cold",
        }
    }
}

impl Dest {
    pub fn name(self) -> &'static str {
        match self {
            Dest::Disk => "disk",
            Dest::Tmpfs => "tmpfs",
        }
    }
}

/// The order tools run in during rep `rep`: `tools` rotated left by `rep`, so each tool runs
/// first, in the middle and last equally often over every `tools.len()` reps and never always
/// follows the same neighbour (the previous run's write-back otherwise lands on one tool).
pub fn rotation<T: Copy>(tools: &[T], rep: usize) -> Vec<T> {
    let mut v = tools.to_vec();
    if !v.is_empty() {
        let n = v.len();
        v.rotate_left(rep % n);
    }
    v
}

/// The median (the mean of the middle two for an even count; 0 for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One acceptance target of the issue, judged on this run's medians.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub area: String,
    pub target: String,
    pub measured: String,
    /// None when what the target needs was not run.
    pub met: Option<bool>,
}

pub fn met(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    }
}
