//! `bench incremental`: mover's incremental jobs (`send --state`) against rsync's delta
//! algorithm (daemon on 127.0.0.1) on the same change of the same source, same run. Per
//! scenario: untimed initial sync of both tools into their own destinations; then per rep one
//! seeded change of the source, then one timed job of each tool (order alternating, the page
//! cache prepared as the scenario says before each), each destination verified against the
//! source afterwards. Destinations and mover's state persist across reps: every rep is an
//! incremental job.

use crate::inc_report::{IncSample, ScenarioResult};
use crate::measure::{met, Tool};
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
            Scenario::Noop => "noop-tree",
            Scenario::Rename => "rename-dir",
        }
    }

    /// How the page cache is prepared before each timed job. The issue measures the rewrite
    /// and the no-op with the source warm: continuous replication runs while the data is in
    /// use. A rewrite's destination is left cold (the target node's cache is its own); a no-op
    /// job leaves both trees as the previous job left them (in memory), the steady state of
    /// frequent jobs. The rename keeps the cold regime it was introduced with.
    fn cache(self) -> CachePrep {
        match self {
            Scenario::Rewrite => CachePrep::DropThenWarmSource,
            Scenario::Noop => CachePrep::WarmSource,
            Scenario::Rename => CachePrep::Drop,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CachePrep {
    /// Page cache dropped.
    Drop,
    /// Page cache dropped, then the source read into it.
    DropThenWarmSource,
    /// Nothing dropped; the source read (already in memory after the first rep).
    WarmSource,
}

impl CachePrep {
    fn describe(self) -> &'static str {
        match self {
            CachePrep::Drop => "page cache dropped before each timed job (source cold)",
            CachePrep::DropThenWarmSource => {
                "before each timed job the page cache is dropped, then the source read into it (source warm, destinations cold)"
            }
            CachePrep::WarmSource => {
                "page cache not dropped; the source is read before each timed job (source and destinations warm)"
            }
        }
    }
}

pub struct Opts {
    pub work: PathBuf,
    pub mover: PathBuf,
    /// mover's workers (`--threads`).
    pub threads: usize,
    pub scale: f64,
    pub reps: usize,
    pub run_mover: bool,
    pub run_rsync: bool,
    /// Put each source in a btrfs subvolume on a loop-mounted image.
    pub btrfs_source: bool,
    /// Certificates of mover's receiver and sender.
    pub keys: mover_run::Keys,
}

pub fn run(o: &Opts, scenarios: &[Scenario]) -> Result<Vec<ScenarioResult>> {
    let mut out = Vec::new();
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
        out.push(r);
    }
    Ok(out)
}

/// `mover hash --content` of `dir`: (tree hash, content hash). Owners count only as root (both
/// tools then keep them: rsync daemon as uid root with --numeric-ids, mover's receiver).
pub fn hash(mover: &Path, dir: &Path) -> Result<(String, String)> {
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

/// One timed job: page cache prepared first (`prep`, from `src`), loopback traffic counted
/// around it. `job` runs the tool, verifies its destination (after its own timing ends) and
/// returns (seconds, CPU seconds, wire bytes, details).
fn timed(
    (tool, rep, changed): (Tool, usize, u64),
    prep: CachePrep,
    (work, src): (&Path, &Path),
    job: impl FnOnce() -> Result<(f64, f64, u64, serde_json::Value)>,
) -> Result<IncSample> {
    // The previous job's write-back (rsync does not fsync: a rewrite leaves a whole new file
    // dirty) and the rep's change of the source are flushed first, so they are nobody's cost.
    let quiet_before = proc::quiesce(&[work, src]);
    let cache_dropped = prep != CachePrep::WarmSource && proc::drop_caches();
    if prep != CachePrep::Drop {
        proc::warm(src).with_context(|| format!("reading {} into the cache", src.display()))?;
    }
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
        quiet_before,
        detail,
    })
}

struct Dirs {
    src: PathBuf,
    mover_dst: PathBuf,
    state: PathBuf,
}

fn mover_job(o: &Opts, d: &Dirs) -> Result<mover_run::MoverRun> {
    let threads = o.threads.to_string();
    mover_run::run_with(
        &o.mover,
        &d.src,
        &d.mover_dst,
        &[
            OsStr::new("--threads"),
            OsStr::new(&threads),
            OsStr::new("--state"),
            d.state.as_os_str(),
        ],
        &o.keys,
    )
}

/// Rewrite's source: one file of 1 GiB (at scale 1) of seeded pseudo-random data in `dir`.
fn write_rewrite_source(dir: &Path, scale: f64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let size = ((REWRITE_FILE_BYTES as f64 * scale).round() as usize).max(mutate::BLOCK as usize);
    dataset::write_file(
        &dir.join("big.bin"),
        &mut mover::gen::Rng(0x5eed_1919),
        size,
        &mut Vec::new(),
    )
}

/// The rewrite scenario's file, at scale 1 (the "1 GiB file").
const REWRITE_FILE_BYTES: u64 = 1 << 30;

/// Builds the scenario's source under `dir`; returns it and a description. With
/// `--source-fs btrfs` the source is a subvolume of a loop-mounted image (returned to be kept
/// mounted for the scenario).
fn source(o: &Opts, sc: Scenario, dir: &Path) -> Result<(PathBuf, String, Option<btrfs::Mount>)> {
    let rewrite = "one file of 1 GiB at scale 1 (seeded pseudo-random data); each rep rewrites 1% of its 4 KiB blocks in place with random data (distinct blocks drawn uniformly, seeded)";
    if o.btrfs_source {
        let data = match sc {
            Scenario::Noop => Some(dataset::ensure(&o.work, dataset::Kind::Tree, o.scale)?),
            Scenario::Rewrite | Scenario::Rename => None,
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
        let what = match (sc, &data) {
            (_, Some(d)) => {
                btrfs::copy_into(&d.dir, &src)?;
                format!(
                    "the generated tree ({}), unchanged: each rep is a no-op job",
                    d.spec
                )
            }
            (Scenario::Rewrite, None) => {
                write_rewrite_source(&src, o.scale)?;
                rewrite.to_string()
            }
            (_, None) => {
                mutate::build_rename_tree(&src, o.scale)?;
                "the rename tree; each rep renames blob-N to blob-N+1".to_string()
            }
        };
        return Ok((
            src,
            format!("{what}; in a btrfs subvolume on a loop-mounted image"),
            Some(m),
        ));
    }
    Ok(match sc {
        Scenario::Rewrite => {
            let src = dir.join("src");
            write_rewrite_source(&src, o.scale)?;
            (
                src,
                format!("{rewrite}; on the work dir's file system"),
                None,
            )
        }
        // Nothing changes, so the tools read the dataset itself.
        Scenario::Noop => {
            let ds = dataset::ensure(&o.work, dataset::Kind::Tree, o.scale)?;
            (
                ds.dir,
                format!(
                    "the generated tree ({}), unchanged: each rep is a no-op job",
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
        crate::trash::Trash::new(&o.work).note_freed()?;
    }
    std::fs::create_dir_all(&dir)?;
    let (src, description, mount) = source(o, sc, &dir)?;
    let description = format!("{description}; {}", sc.cache().describe());
    next_second();
    let (files, entries, bytes) = dataset::count_all(&src)?;
    eprintln!(
        "bench: {}: {entries} entries, {files} files, {bytes} bytes",
        sc.name()
    );
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
                (Tool::Mover, _) if o.run_mover => {
                    timed((tool, r, changed), sc.cache(), (&o.work, &d.src), || {
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
                    })?
                }
                (Tool::Rsync, Some(dm)) => {
                    timed((tool, r, changed), sc.cache(), (&o.work, &d.src), || {
                        let x = dm.run_with(&d.src, "dst", &RSYNC_EXTRA)?;
                        verify(&o.mover, &want, &rsync_dst, tool, &format!("rep {r}"))?;
                        let f = |n: &str| rsync::stat_field(&x.stats, n).ok();
                        let detail = serde_json::json!({
                            "literal_bytes": f("Literal data:"),
                            "matched_bytes": f("Matched data:"),
                            "files_transferred": f("Number of regular files transferred:"),
                        });
                        Ok((x.seconds, x.cpu_seconds, x.wire_bytes, detail))
                    })?
                }
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
    // Frees the copies (up to 3x the data) before the next scenario, and lets the disk finish
    // with the deletion before anything else is timed.
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    crate::trash::Trash::new(&o.work).note_freed()?;
    proc::quiesce(&[&o.work]);
    Ok(ScenarioResult::new(
        sc.name(),
        description,
        (files, entries, bytes),
        samples,
    ))
}
