//! `bench`: mover against rsync (daemon mode, 127.0.0.1) and `cp -a` + `sync` on the same data
//! in the same run, with the machine's limits measured in that run: initial syncs with the
//! source hot or cold and the destination on disk or in a tmpfs, incremental jobs (no-op rerun,
//! 1% block rewrite, directory rename) and the resume of a killed job. Medians of rotating reps;
//! writes results/<date>-<name>.json and .md.

mod btrfs;
mod cp;
mod create_path;
mod creation;
mod daemons;
mod dataset;
mod inc_report;
mod incremental;
mod limits;
mod make_writable;
mod measure;
mod mover_run;
mod mutate;
mod proc;
mod reconnect;
mod regimes;
mod report;
mod resume;
mod reverse;
mod rpo;
mod rsync;
mod trash;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use dataset::Kind;
use report::{Cache, Dest, Limits, Report, Tool};
use std::path::{Path, PathBuf};
use std::time::Instant;

const ABOUT: &str = "Benchmark mover against rsync (daemon on 127.0.0.1) and cp -a + sync, \
with the machine's limits measured in the same run.

What to run (WHAT):
  full (default; `all` is the same)  everything below, one report
  initial        limits + initial syncs of the large (2 x 512 MiB) and small (20,000 x 4 KiB)
                 sets in every regime: source hot|cold x destination disk|tmpfs
  large | small | mixed   limits + initial syncs of one set in every regime
  limits         loopback TCP and memory copy (1 and N streams), disk read, disk/tmpfs write,
                 and for a set of many small files, creating them with N threads + syncfs
                 (on the disk, first waiting out ext4's inode-reuse window after the bench's
                 last deletion of many files: up to 362 s)
  incremental    noop-tree (no-op rerun on a generated tree of 102,000 entries), rewrite-1pct
                 (1% of a 1 GiB file's 4 KiB blocks), rename-dir; or one of these by name
  resume         initial sync of the large set, receiver SIGKILLed at 35% of the bytes on disk,
                 then rerun: the fraction resent and whether the target equals the source

Not part of full (two `mover daemon` processes on 127.0.0.1, driven with the CLI):
  rpo            continuous replication's recovery point: trees of --rpo-files small files
                 (default 20,000 and 200,000); after the initial sync, one small write on the
                 source every --rpo-interval-ms, timed until the target holds it (p50/p90/p99/max,
                 misses), and both daemons' CPU per minute; goal p99 < 1 s
  make-writable  failover: `mover relationship make-writable` of a target of
                 --make-writable-files (50,000) files, timed until the target is writable;
                 median of --make-writable-reps (3) fresh relationships; goal < 2 s
  reverse        failback and back: as reconnect's tree, --reconnect-churn (1%) churned on
                 both sides after make-writable, `mover relationship reverse` on the target,
                 then churn on the new source and reverse again on it; seconds and bytes
                 sent by the first job of each direction (--reconnect-* options)
  create-path    the receiver's way of creating small files, alone: N threads create
                 20,000 new 4 KiB files with openat2/futimens/close syscalls (as built), with
                 linked io_uring OPENAT2/WRITE/CLOSE chains, or with batched ring opens and
                 closes; into the disk and the tmpfs (--dest), medians of --reps
  reconnect      failover and back: make-writable of a target of --reconnect-files (20,000)
                 1 KiB files and --reconnect-large-files (8) of --reconnect-large-size (8 MiB),
                 --reconnect-churn (1%) of the small files rewritten/deleted/created on the
                 target, then `mover relationship reconnect` on the source, timed until the
                 target equals the source again; bytes the reverting job sent vs the changed
                 bytes; median of --reconnect-reps (3); goal sent <= 1.2 x changed + 1 MiB

Sizes are at --scale 1. Needs root (drops the page cache). mover runs encrypted, with
--threads N (N = --threads, default: the CPUs this process may run on, as mover picks it);
the TCP and memory-copy limits use N streams too.";

#[derive(Parser)]
#[command(about = "Benchmark mover against rsync and cp -a + sync, with the machine's limits", long_about = ABOUT)]
struct Args {
    /// full | all | initial | large | small | mixed | limits | incremental | noop-tree |
    /// rewrite-1pct | rename-dir | resume | rpo | make-writable | reconnect | reverse | create-path (see --help)
    #[arg(default_value = "full")]
    what: String,
    /// Where datasets and disk destinations live (default $MOVER_BENCH_DIR or /work/bench-data).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// mover binary (default: target/release/mover beside this binary).
    #[arg(long)]
    mover: Option<PathBuf>,
    /// Reps per tool and regime (the issue asks for medians of at least 5).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Directory of the report files, <date>-<name>.json (every sample) and .md.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Result file name (default: WHAT).
    #[arg(long)]
    name: Option<String>,
    /// Scale dataset sizes (0.01 for a smoke run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Tools, in their first rep's order (rotated every rep). The incremental scenarios run
    /// mover and rsync only.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "mover,rsync,cp"
    )]
    tools: Vec<ToolArg>,
    /// Initial syncs also run mover with --insecure-plaintext (the cost of encryption).
    #[arg(long)]
    plaintext: bool,
    /// mover's workers (--threads), and the streams of the TCP, memory-copy, read and write
    /// limits (default: as `mover send` picks it, the CPUs in this process's affinity mask).
    #[arg(long)]
    threads: Option<usize>,
    /// Initial syncs: the source cache states to run (hot: read just before each run; cold:
    /// page cache dropped just before each run).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "hot,cold")]
    cache: Vec<Cache>,
    /// Initial syncs: the destinations to run (disk: in the work dir; tmpfs: in --tmpfs-dir).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "disk,tmpfs")]
    dest: Vec<Dest>,
    /// The tmpfs destinations' directory (must be on a tmpfs or other memory file system).
    #[arg(long, alias = "dst-dir", default_value = "/dev/shm/mover-bench")]
    tmpfs_dir: PathBuf,
    /// Incremental scenarios only: `native` (the work dir's file system) or `btrfs` (each source
    /// in a subvolume of a loop-mounted image: mover finds changed blocks from shared extents).
    #[arg(long, default_value = "native")]
    source_fs: String,
    /// rpo: files in each source tree, one run per entry (1 KiB files, 200 to a directory;
    /// scaled by --scale).
    #[arg(long, value_delimiter = ',', default_value = "20000,200000")]
    rpo_files: Vec<usize>,
    /// rpo: writes per tree size.
    #[arg(long, default_value_t = 60)]
    rpo_writes: usize,
    /// rpo: milliseconds between writes.
    #[arg(long, default_value_t = 250)]
    rpo_interval_ms: u64,
    /// rpo: seconds both daemons' CPU is measured with no writes, before the writes.
    #[arg(long, default_value_t = 10)]
    rpo_idle_secs: u64,
    /// make-writable: files in the target (scaled by --scale).
    #[arg(long, default_value_t = 50_000)]
    make_writable_files: usize,
    /// make-writable: reps, each with a fresh pair of daemons and relationship.
    #[arg(long, default_value_t = 3)]
    make_writable_reps: usize,
    /// reconnect: small files (1 KiB) in the tree (scaled by --scale).
    #[arg(long, default_value_t = 20_000)]
    reconnect_files: usize,
    /// reconnect: large files in the tree, besides the small ones.
    #[arg(long, default_value_t = 8)]
    reconnect_large_files: usize,
    /// reconnect: bytes of each large file.
    #[arg(long, default_value_t = 8 << 20)]
    reconnect_large_size: usize,
    /// reconnect: fraction of the small files changed on the target while it is writable.
    #[arg(long, default_value_t = 0.01)]
    reconnect_churn: f64,
    /// reconnect: reps, each with a fresh pair of daemons and relationship.
    #[arg(long, default_value_t = 3)]
    reconnect_reps: usize,
    /// rpo, make-writable, reconnect: a line appended to the source daemon's config file
    /// (TOML), e.g. --daemon-config 'continuous_interval_secs = 1'; repeat for more lines.
    #[arg(long = "daemon-config", value_name = "LINE")]
    daemon_config: Vec<String>,
    /// rpo, make-writable, reconnect: a line appended to the target daemon's config file;
    /// repeatable.
    #[arg(long = "target-daemon-config", value_name = "LINE")]
    target_daemon_config: Vec<String>,
    /// rpo, make-writable, reconnect: the daemons' first port on 127.0.0.1 (each daemon takes
    /// two, each run a new pair of daemons; within 39300-39499).
    #[arg(long, default_value_t = 39300)]
    port_base: u16,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ToolArg {
    Mover,
    Rsync,
    Cp,
}

/// The parts of a run WHAT selects.
struct Parts {
    limits: bool,
    initial: Vec<Kind>,
    incremental: Vec<incremental::Scenario>,
    resume: bool,
    rpo: bool,
    make_writable: bool,
    reconnect: bool,
    reverse: bool,
    create_path: bool,
}

fn parts(what: &str) -> Result<Parts> {
    let none = Parts {
        limits: false,
        initial: Vec::new(),
        incremental: Vec::new(),
        resume: false,
        rpo: false,
        make_writable: false,
        reconnect: false,
        reverse: false,
        create_path: false,
    };
    let issue_sets = vec![Kind::Large, Kind::Small];
    Ok(match what {
        "full" | "all" => Parts {
            limits: true,
            initial: issue_sets,
            incremental: incremental::Scenario::ALL.to_vec(),
            resume: true,
            ..none
        },
        "initial" => Parts {
            limits: true,
            initial: issue_sets,
            ..none
        },
        "large" | "small" | "mixed" => Parts {
            limits: true,
            initial: vec![match what {
                "large" => Kind::Large,
                "small" => Kind::Small,
                _ => Kind::Mixed,
            }],
            ..none
        },
        "limits" => Parts {
            limits: true,
            ..none
        },
        "resume" => Parts {
            resume: true,
            ..none
        },
        "rpo" => Parts { rpo: true, ..none },
        "make-writable" => Parts {
            make_writable: true,
            ..none
        },
        "reconnect" => Parts {
            reconnect: true,
            ..none
        },
        "reverse" => Parts {
            reverse: true,
            ..none
        },
        "create-path" => Parts {
            create_path: true,
            ..none
        },
        w => match incremental::Scenario::select(w) {
            Some(s) => Parts {
                incremental: s,
                ..none
            },
            None => bail!("unknown benchmark {w:?} (see bench --help)"),
        },
    })
}

/// Every limit, measured now with `n` streams where it applies; `read_sets` are the datasets
/// whose cold read is measured.
fn measure_limits(
    n: usize,
    read_sets: &[dataset::Dataset],
    write_dirs: &[(Dest, PathBuf)],
    write_bytes: u64,
    trash: &trash::Trash,
) -> Result<Limits> {
    let tcp_1 = limits::loopback_tcp(1)?;
    let tcp_n = limits::loopback_tcp(n)?;
    eprintln!("bench: loopback TCP {tcp_1:.0} MB/s (1 stream), {tcp_n:.0} MB/s ({n} streams)");
    let memcpy_1 = limits::memcpy(1)?;
    let memcpy_n = limits::memcpy(n)?;
    eprintln!("bench: memory copy {memcpy_1:.0} MB/s (1 thread), {memcpy_n:.0} MB/s ({n} threads)");
    let mut read = std::collections::BTreeMap::new();
    for ds in read_sets {
        let r = limits::sequential_read(&ds.dir, n)?;
        eprintln!("bench: disk read of {}: {r:.0} MB/s", ds.kind.name());
        read.insert(ds.kind.name().to_string(), r);
    }
    let mut write = std::collections::BTreeMap::new();
    let mut create = Vec::new();
    // Each set's files listed once, for every destination.
    let layouts = read_sets
        .iter()
        .filter(|ds| creation::applies(ds.files, ds.bytes))
        .map(|ds| Ok((ds, creation::layout(&ds.dir)?)))
        .collect::<Result<Vec<_>>>()?;
    for (d, dir) in write_dirs {
        let w = limits::sequential_write(dir, write_bytes, n)?;
        eprintln!(
            "bench: write to {} ({}): {w:.0} MB/s",
            d.name(),
            dir.display()
        );
        write.insert(d.name().to_string(), w);
        for (ds, layout) in &layouts {
            let c = creation_limit(ds, layout, *d, dir, trash, n)?;
            eprintln!(
                "bench: creating the {} files of {} in {}: {:.3} s, best of {:?}",
                c.files, c.dataset, c.dest, c.seconds, c.runs
            );
            create.push(c);
        }
    }
    Ok(Limits {
        workers: n,
        tcp_1,
        tcp_n,
        memcpy_1,
        memcpy_n,
        read,
        write,
        create,
    })
}

/// Creates the files of `ds` (as `layout` lists them) in new directories under `dir` (on
/// destination `d`), `REPS` times with `n` threads (creation.rs). On the disk, no earlier deletion's inodes may still be
/// recent (trash.rs), and each run's files go to the trash, deleted with the regimes'
/// destinations (or right after the limits when no regime runs).
fn creation_limit(
    ds: &dataset::Dataset,
    layout: &[creation::Dir],
    d: Dest,
    dir: &Path,
    trash: &trash::Trash,
    n: usize,
) -> Result<creation::Creation> {
    let mut runs = Vec::new();
    for rep in 0..creation::REPS {
        let to = dir.join(format!("create-{}-{rep}", ds.kind.name()));
        match d {
            // An interrupted bench's leftovers on the disk went to the trash, emptied before
            // the limits (main); that deletion, or an earlier one, is waited out.
            Dest::Disk => trash.wait_out(),
            Dest::Tmpfs => dataset::remove(&to)?,
        }
        proc::quiesce(&[dir]);
        runs.push(creation::create_once(layout, &to, n)?);
        match d {
            Dest::Disk => trash.take(&to, &format!("limits-create-{}-{rep}", ds.kind.name()))?,
            Dest::Tmpfs => dataset::remove(&to)?,
        }
    }
    Ok(creation::summarize(
        ds.kind.name(),
        d.name(),
        ds.files,
        ds.bytes,
        n,
        runs,
    ))
}

fn check_tmpfs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if proc::device_stat_file(dir).is_some() {
        bail!(
            "--tmpfs-dir {} is on a block device, not in memory",
            dir.display()
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let a = Args::parse();
    let began = Instant::now();
    let work = a
        .work_dir
        .clone()
        .or_else(|| std::env::var_os("MOVER_BENCH_DIR").map(PathBuf::from))
        .unwrap_or_else(|| "/work/bench-data".into());
    let mover = match &a.mover {
        Some(m) => m.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("mover"),
    };
    // `mover hash` verifies destinations, so the binary is needed even without mover runs.
    if !mover.exists() {
        bail!(
            "mover binary not found at {} (cargo build --release first, or pass --mover)",
            mover.display()
        );
    }
    if a.source_fs != "native" && a.source_fs != "btrfs" {
        bail!("--source-fs must be native or btrfs, not {:?}", a.source_fs);
    }
    if a.reps == 0 || a.make_writable_reps == 0 || a.reconnect_reps == 0 {
        bail!("--reps, --make-writable-reps and --reconnect-reps must be at least 1");
    }
    if !(a.reconnect_churn > 0.0 && a.reconnect_churn <= 1.0) {
        bail!("--reconnect-churn must be a fraction in (0, 1]");
    }
    if a.rpo_writes == 0 || a.rpo_files.is_empty() {
        bail!("--rpo-writes and --rpo-files need at least one");
    }
    let p = parts(&a.what)?;
    let name = a.name.clone().unwrap_or_else(|| a.what.clone());
    let threads = a.threads.unwrap_or_else(mover::default_threads).max(1);
    let mut tools: Vec<Tool> = Vec::new();
    for t in &a.tools {
        let t = match t {
            ToolArg::Mover => Tool::Mover,
            ToolArg::Rsync => Tool::Rsync,
            ToolArg::Cp => Tool::Cp,
        };
        if !tools.contains(&t) {
            tools.push(t);
        }
    }
    if a.plaintext && tools.contains(&Tool::Mover) {
        tools.push(Tool::MoverPlain);
    }
    let tmpfs_used = (!p.initial.is_empty() || p.create_path) && a.dest.contains(&Dest::Tmpfs)
        || p.limits && p.initial.is_empty();
    if tmpfs_used {
        check_tmpfs(&a.tmpfs_dir)?;
    }
    std::fs::create_dir_all(&work)?;
    let sealed = mover_run::Keys::sealed(&mover, &work.join("identities"))?;

    let mut rep = Report {
        date: report::today(),
        name: name.clone(),
        machine: report::Machine::probe(&work, tmpfs_used.then_some(a.tmpfs_dir.as_path())),
        mover_version: report::cmd_line(&mover.display().to_string(), &["--version"]),
        rsync_version: rsync::version(),
        scale: a.scale,
        reps: a.reps,
        workers: threads,
        scheme: Vec::new(),
        limits: None,
        initial: Vec::new(),
        incremental: Vec::new(),
        resume: None,
        rpo: Vec::new(),
        make_writable: None,
        reconnect: None,
        reverse: None,
        create_path: None,
        targets: Vec::new(),
    };

    // Untimed: every dataset this run needs, generated (or reused) before anything is measured.
    let mut sets = Vec::new();
    for &k in &p.initial {
        sets.push(dataset::ensure(&work, k, a.scale)?);
    }
    if p.limits && sets.is_empty() {
        for k in [Kind::Large, Kind::Small] {
            sets.push(dataset::ensure(&work, k, a.scale)?);
        }
    }
    let large = if p.resume {
        Some(dataset::ensure(&work, Kind::Large, a.scale)?)
    } else {
        None
    };
    for ds in &sets {
        eprintln!(
            "bench: {}: {} files, {} bytes ({})",
            ds.kind.name(),
            ds.files,
            ds.bytes,
            ds.spec
        );
    }
    let trash = trash::Trash::new(&work);
    if p.limits {
        // Left over from an interrupted bench (the creation limit's runs too), deleted before
        // anything is measured and before the disk is waited on.
        let scratch = work.join("limits");
        if let Ok(rd) = std::fs::read_dir(&scratch) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("create-") {
                    trash.take(&e.path(), "limits-create-leftover")?;
                }
            }
        }
        trash.empty()?;
    }
    proc::quiesce(&[&work]);

    if p.limits {
        let mut write_dirs = Vec::new();
        let dests: Vec<Dest> = if p.initial.is_empty() {
            vec![Dest::Disk, Dest::Tmpfs]
        } else {
            a.dest.clone()
        };
        for d in dests {
            write_dirs.push((
                d,
                match d {
                    Dest::Disk => work.join("limits"),
                    Dest::Tmpfs => a.tmpfs_dir.join("limits"),
                },
            ));
        }
        let write_bytes = ((limits::WRITE_MAX_BYTES as f64 * a.scale) as u64)
            .clamp(limits::WRITE_MIN_BYTES, limits::WRITE_MAX_BYTES);
        let l = measure_limits(threads, &sets, &write_dirs, write_bytes, &trash)?;
        rep.scheme.push(format!(
            "Limits are measured first, after the datasets exist: loopback TCP (1 and {threads} connections, 3 s each), memory copy (1 and {threads} threads, 128 MiB buffers, 1 s), \
             each dataset read cold with O_DIRECT by {threads} threads, and {write_bytes} bytes written as {threads} new files with fsync to each destination's file system."
        ));
        if !l.create.is_empty() {
            let mut names: Vec<&str> = l.create.iter().map(|c| c.dataset.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            rep.scheme.push(format!(
                "Datasets of many small files ({}) are also created in each destination by {threads} threads ({} runs, the fastest counts): their directories made, each file created, written, given an mtime and closed (each thread owning whole directories), then one syncfs. \
                 That is the least a durable, faithful copy does per file; a copy from the page cache of such a dataset stays far below every bandwidth limit.",
                names.join(", "),
                creation::REPS
            ));
        }
        rep.limits = Some(l);
        if p.initial.is_empty() {
            // No regime follows to empty it (the next bench waits the deletion out).
            trash.empty()?;
        }
    }

    if !p.initial.is_empty() {
        let o = regimes::Opts {
            work: work.clone(),
            tmpfs_dir: a.tmpfs_dir.clone(),
            mover: mover.clone(),
            sealed: sealed.clone(),
            plain: mover_run::Keys::plaintext(),
            threads,
            reps: a.reps,
            tools: tools.clone(),
            caches: a.cache.clone(),
            dests: a.dest.clone(),
        };
        rep.scheme.extend(report::initial_scheme(&tools));
        rep.initial = regimes::run(&o, &sets, rep.limits.as_ref())?;
        rep.targets.extend(report::initial_targets(&rep.initial));
    }

    if !p.incremental.is_empty() {
        let o = incremental::Opts {
            work: work.clone(),
            mover: mover.clone(),
            threads,
            scale: a.scale,
            reps: a.reps,
            run_mover: tools.contains(&Tool::Mover),
            run_rsync: tools.contains(&Tool::Rsync),
            btrfs_source: a.source_fs == "btrfs",
            keys: sealed.clone(),
        };
        rep.incremental = incremental::run(&o, &p.incremental)?;
        for sc in &rep.incremental {
            rep.targets.extend(sc.targets.iter().cloned());
        }
    }

    if let Some(ds) = &large {
        let o = resume::Opts {
            work: &work,
            mover: &mover,
            keys: &sealed,
            threads,
            reps: a.reps,
        };
        let r = resume::run(&o, ds)?;
        rep.targets.extend(r.targets.iter().cloned());
        rep.resume = Some(r);
    }

    let configs = daemons::Configs {
        source: a.daemon_config.clone(),
        target: a.target_daemon_config.clone(),
    };
    let mut ports = daemons::Ports::new(a.port_base)?;
    let scaled = |n: usize| ((n as f64 * a.scale).round() as usize).max(1);
    if p.rpo {
        let o = rpo::Opts {
            work: &work,
            mover: &mover,
            sizes: a.rpo_files.iter().map(|&n| scaled(n)).collect(),
            writes: a.rpo_writes,
            interval: std::time::Duration::from_millis(a.rpo_interval_ms),
            idle: std::time::Duration::from_secs(a.rpo_idle_secs),
            configs: &configs,
        };
        rep.rpo = rpo::run(&o, &mut ports)?;
        rep.targets
            .extend(rep.rpo.iter().map(rpo::RpoResult::target));
    }
    if p.make_writable {
        let o = make_writable::Opts {
            work: &work,
            mover: &mover,
            files: scaled(a.make_writable_files),
            reps: a.make_writable_reps,
            configs: &configs,
        };
        let m = make_writable::run(&o, &mut ports)?;
        rep.targets.push(m.target());
        rep.make_writable = Some(m);
    }
    // Reconnect and reverse share their tree, churn and reps.
    let failback = reconnect::Opts {
        work: &work,
        mover: &mover,
        files: scaled(a.reconnect_files),
        large: (a.reconnect_large_files, a.reconnect_large_size),
        churn: a.reconnect_churn,
        reps: a.reconnect_reps,
        configs: &configs,
    };
    if p.reconnect {
        let r = reconnect::run(&failback, &mut ports)?;
        rep.targets.push(r.target());
        rep.reconnect = Some(r);
    }
    if p.reverse {
        rep.reverse = Some(reverse::run(&failback, &mut ports)?);
    }

    if p.create_path {
        let o = create_path::Opts {
            work: &work,
            tmpfs_dir: &a.tmpfs_dir,
            dests: &a.dest,
            files: scaled(create_path::FILES),
            threads,
            reps: a.reps,
        };
        rep.create_path = Some(create_path::run(&o)?);
    }

    if tmpfs_used {
        // Only what the bench made there: its limits directory, then the directory itself if
        // it is now empty (it may be a shared tmpfs such as /dev/shm).
        let _ = std::fs::remove_dir_all(a.tmpfs_dir.join("limits"));
        let _ = std::fs::remove_dir(&a.tmpfs_dir);
    }
    let (json, md) = rep.write(&a.results)?;
    println!("{}", rep.markdown());
    eprintln!(
        "bench: wrote {} and {} ({:.0} s)",
        json.display(),
        md.display(),
        began.elapsed().as_secs_f64()
    );
    Ok(())
}
