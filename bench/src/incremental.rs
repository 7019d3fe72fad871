//! `bench incremental`: mover's incremental jobs (`send --state`) against rsync's delta
//! algorithm (daemon on 127.0.0.1) on the same change of the same source, same run. Per
//! scenario: untimed initial sync of both tools into their own destinations; then per rep one
//! seeded change of the source, then one timed job of each tool (order alternating, page cache
//! dropped before each), each destination verified against the source afterwards. Destinations
//! and mover's state persist across reps: every rep is an incremental job.

use crate::inc_report::{met, IncReport, IncSample, ScenarioResult};
use crate::report::{cmd_line, machine, today, Tool};
use crate::{btrfs, dataset, mover_run, mutate, proc, rsync};
use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// rsync's flags on top of the initial-sync benchmark's `-aHX --numeric-ids --stats`: --delete
/// so its destination mirrors the source like mover's (a renamed directory's old name goes);
/// the exclude keeps out mover's scratch (btrfs snapshots under the source), absent on ext4.
const RSYNC_EXTRA: [&str; 2] = ["--delete", "--exclude=/.mover-state"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Rewrite,
    Noop,
    Rename,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Rewrite, Scenario::Noop, Scenario::Rename];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Rewrite => "rewrite-1pct",
            Scenario::Noop => "noop-small",
            Scenario::Rename => "rename-dir",
        }
    }

    /// The scenarios `what` names: "incremental" (all) or one scenario's name.
    pub fn select(what: &str) -> Option<Vec<Scenario>> {
        match what {
            "incremental" => Some(Self::ALL.to_vec()),
            w => Self::ALL
                .into_iter()
                .find(|s| s.name() == w)
                .map(|s| vec![s]),
        }
    }
}

pub struct Opts {
    pub work: PathBuf,
    pub mover: PathBuf,
    pub scale: f64,
    pub reps: usize,
    pub run_mover: bool,
    pub run_rsync: bool,
    /// Put each source in a btrfs subvolume on a loop-mounted image.
    pub btrfs_source: bool,
    /// Certificates of mover's receiver and sender.
    pub keys: mover_run::Keys,
}

pub fn run(o: &Opts, scenarios: &[Scenario]) -> Result<IncReport> {
    let mut rep = IncReport {
        date: today(),
        machine: machine(),
        mover_version: cmd_line(&o.mover.display().to_string(), &["--version"]),
        rsync_version: rsync::version(),
        scale: o.scale,
        note: "Medians of the reps; tool order alternates every rep; page cache dropped before every timed job. \
               Each rep changes the source in place once, then both tools sync that same change into their own destination, \
               kept (with mover's --state) from the previous rep. rsync: -aHX --numeric-ids --delete to an rsync daemon on 127.0.0.1 \
               (default delta algorithm). mover: receive --once + send --state (default threads and snapshot provider). \
               mover's receiver syncfs's before committing each recovery point; rsync does not fsync. CPU = sender + receiver user+sys. Wire bytes: mover's sender count, rsync's sent + received; loopback bytes: \
               both directions on lo incl. TCP/IP headers, for both tools. Speed vs rsync = rsync s / mover s; CPU vs rsync = mover / rsync.",
        scenarios: Vec::new(),
    };
    for &sc in scenarios {
        let r = scenario(o, sc)?;
        for t in &r.targets {
            eprintln!(
                "bench: {} target: {}: measured {} -> {}",
                sc.name(),
                t.target,
                t.measured,
                met(t.met)
            );
        }
        rep.scenarios.push(r);
    }
    Ok(rep)
}

/// `mover hash --content` of `dir`: (tree hash, content hash). Owners count only as root (both
/// tools then keep them: rsync daemon as uid root with --numeric-ids, mover's receiver).
fn hash(mover: &Path, dir: &Path) -> Result<(String, String)> {
    let mut c = std::process::Command::new(mover);
    c.arg("hash").arg(dir).args(["--content", "--json"]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        c.arg("--no-owners");
    }
    let out = c.output().context("running mover hash")?;
    if !out.status.success() {
        bail!(
            "mover hash {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("mover hash JSON")?;
    let f = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .with_context(|| format!("no {k} in mover hash output"))
    };
    Ok((f("tree_hash")?, f("content_hash")?))
}

/// Sleeps into the next whole second of the clock. rsync (3.5.0 here) compares directory mtimes
/// to the second: a destination directory it creates or changes in the same second as its
/// source's mtime keeps a wrong sub-second mtime, on this run and every later one. Waiting after
/// each change of the source keeps verification exact for both tools at no cost to either.
fn next_second() {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::thread::sleep(std::time::Duration::from_nanos(
        1_000_000_000 - ns as u64 + 10_000_000,
    ));
}

fn verify(mover: &Path, want: &(String, String), dst: &Path, tool: Tool, when: &str) -> Result<()> {
    let got = hash(mover, dst)?;
    if &got != want {
        bail!(
            "{tool:?} {when}: destination {} (tree {}, content {}) differs from the source (tree {}, content {})",
            dst.display(),
            got.0,
            got.1,
            want.0,
            want.1
        );
    }
    Ok(())
}

/// One timed job: page cache dropped first, loopback traffic counted around it. `job` runs the
/// tool, verifies its destination (after its own timing ends) and returns (seconds, CPU
/// seconds, wire bytes, details).
fn timed(
    tool: Tool,
    rep: usize,
    changed: u64,
    job: impl FnOnce() -> Result<(f64, f64, u64, serde_json::Value)>,
) -> Result<IncSample> {
    let cache_dropped = proc::drop_caches();
    let lo = proc::loopback_bytes();
    let (seconds, cpu_seconds, wire_bytes, detail) = job()?;
    // Read before hashing would add nothing: `mover hash` uses no sockets.
    let loopback_bytes = lo.zip(proc::loopback_bytes()).map(|(a, b)| b - a);
    Ok(IncSample {
        tool,
        rep,
        seconds,
        cpu_seconds,
        wire_bytes,
        loopback_bytes,
        changed_bytes: changed,
        cache_dropped,
        detail,
    })
}

struct Dirs {
    src: PathBuf,
    mover_dst: PathBuf,
    state: PathBuf,
}

fn mover_job(o: &Opts, d: &Dirs) -> Result<mover_run::MoverRun> {
    mover_run::run_with(
        &o.mover,
        &d.src,
        &d.mover_dst,
        &[OsStr::new("--state"), d.state.as_os_str()],
        &o.keys,
    )
}

/// Builds the scenario's source under `dir`; returns it and a description. With
/// `--source-fs btrfs` the source is a subvolume of a loop-mounted image (returned to be kept
/// mounted for the scenario).
fn source(o: &Opts, sc: Scenario, dir: &Path) -> Result<(PathBuf, String, Option<btrfs::Mount>)> {
    if o.btrfs_source {
        let (data, what) = match sc {
            Scenario::Rewrite => (
                Some(dataset::ensure(&o.work, dataset::Kind::Large, o.scale)?),
                "the large dataset",
            ),
            Scenario::Noop => (
                Some(dataset::ensure(&o.work, dataset::Kind::Small, o.scale)?),
                "the small dataset",
            ),
            Scenario::Rename => (None, "the rename tree"),
        };
        let bytes = data
            .as_ref()
            .map(|d| d.bytes)
            .unwrap_or((1.1 * 1073741824.0 * o.scale) as u64);
        let m = btrfs::Mount::new(
            &dir.join("btrfs.img"),
            &dir.join("btrfs"),
            (3 * bytes).max(1 << 30),
        )?;
        let src = m.subvolume("src")?;
        match &data {
            Some(d) => btrfs::copy_into(&d.dir, &src)?,
            None => mutate::build_rename_tree(&src, o.scale)?,
        }
        let change = match sc {
            Scenario::Rewrite => "each rep rewrites 1% of its 4 KiB blocks in place (seeded)",
            Scenario::Noop => "unchanged: each rep is a no-op job",
            Scenario::Rename => "each rep renames blob-N to blob-N+1",
        };
        return Ok((
            src,
            format!("{what} in a btrfs subvolume on a loop-mounted image; {change}"),
            Some(m),
        ));
    }
    Ok(match sc {
        Scenario::Rewrite => {
            let ds = dataset::ensure(&o.work, dataset::Kind::Large, o.scale)?;
            let src = dir.join("src");
            mutate::copy_tree(&ds.dir, &src)?;
            (src, format!("copy of the large dataset ({}); each rep rewrites 1% of its 4 KiB blocks in place with random data (distinct blocks drawn uniformly over all files, seeded)", ds.spec), None)
        }
        // Nothing changes, so the tools read the dataset itself.
        Scenario::Noop => {
            let ds = dataset::ensure(&o.work, dataset::Kind::Small, o.scale)?;
            (
                ds.dir,
                format!(
                    "the small dataset ({}), unchanged: each rep is a no-op job",
                    ds.spec
                ),
                None,
            )
        }
        Scenario::Rename => {
            let src = dir.join("src");
            mutate::build_rename_tree(&src, o.scale)?;
            (src, "keep/ (1,000 x 4 KiB at scale 1) + blob-N/ (4 x 256 MiB at scale 1); each rep renames blob-N to blob-N+1".into(), None)
        }
    })
}

fn scenario(o: &Opts, sc: Scenario) -> Result<ScenarioResult> {
    let dir = o.work.join("incremental").join(sc.name());
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let (src, description, mount) = source(o, sc, &dir)?;
    next_second();
    let (files, bytes) = dataset::count(&src)?;
    eprintln!("bench: {}: {files} files, {bytes} bytes", sc.name());
    let d = Dirs {
        src,
        mover_dst: dir.join("mover-dst"),
        state: dir.join("mover-state"),
    };
    let rsync_root = dir.join("rsync");
    let rsync_dst = rsync_root.join("dst");
    std::fs::create_dir_all(&d.mover_dst)?;
    std::fs::create_dir_all(&rsync_root)?;
    std::fs::create_dir_all(dir.join("rsyncd"))?;
    let daemon = if o.run_rsync {
        Some(rsync::Daemon::start(&dir.join("rsyncd"), &rsync_root)?)
    } else {
        None
    };

    // Initial syncs: untimed, verified.
    let want = hash(&o.mover, &d.src)?;
    if o.run_mover {
        mover_job(o, &d)?;
        verify(&o.mover, &want, &d.mover_dst, Tool::Mover, "initial sync")?;
    }
    if let Some(dm) = &daemon {
        dm.run_with(&d.src, "dst", &RSYNC_EXTRA)?;
        verify(&o.mover, &want, &rsync_dst, Tool::Rsync, "initial sync")?;
    }

    let mut samples = Vec::new();
    for r in 0..o.reps {
        // One change per rep, before both tools run, so both sync the same change.
        let changed = match sc {
            Scenario::Rewrite => mutate::rewrite_blocks(&d.src, 0.01, 0x1ec0_0000 + r as u64)?,
            Scenario::Noop => 0,
            Scenario::Rename => {
                mutate::rename_blob(&d.src, r)?;
                0
            }
        };
        next_second();
        let want = hash(&o.mover, &d.src)?;
        let mut order = [Tool::Mover, Tool::Rsync];
        order.rotate_left(r % 2);
        for tool in order {
            let s = match (tool, &daemon) {
                (Tool::Mover, _) if o.run_mover => timed(tool, r, changed, || {
                    let x = mover_job(o, &d)?;
                    if x.report["incremental"] != serde_json::Value::Bool(true) {
                        bail!(
                            "mover {} rep {r}: job was not incremental (manifest unused): {}",
                            sc.name(),
                            x.report
                        );
                    }
                    verify(&o.mover, &want, &d.mover_dst, tool, &format!("rep {r}"))?;
                    Ok((
                        x.seconds,
                        x.cpu_seconds,
                        x.wire_bytes,
                        serde_json::json!({ "send": x.report, "receive": x.receiver }),
                    ))
                })?,
                (Tool::Rsync, Some(dm)) => timed(tool, r, changed, || {
                    let x = dm.run_with(&d.src, "dst", &RSYNC_EXTRA)?;
                    verify(&o.mover, &want, &rsync_dst, tool, &format!("rep {r}"))?;
                    let f = |n: &str| rsync::stat_field(&x.stats, n).ok();
                    let detail = serde_json::json!({
                        "literal_bytes": f("Literal data:"),
                        "matched_bytes": f("Matched data:"),
                        "files_transferred": f("Number of regular files transferred:"),
                    });
                    Ok((x.seconds, x.cpu_seconds, x.wire_bytes, detail))
                })?,
                _ => continue,
            };
            eprintln!(
                "bench: {} {tool:?} rep {r}: {:.3}s, cpu {:.3}s, wire {} (changed {changed})",
                sc.name(),
                s.seconds,
                s.cpu_seconds,
                s.wire_bytes
            );
            samples.push(s);
        }
    }
    drop(daemon);
    drop(mount);
    // Frees the copies (up to 3x the data) before the next scenario.
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(ScenarioResult::new(
        sc.name(),
        description,
        files,
        bytes,
        samples,
    ))
}
