//! `bench`: mover vs rsync (daemon mode, 127.0.0.1) on the same data in the same run,
//! alternating, page cache dropped before each run, with the machine's limits measured in the
//! same run. Writes results/<date>-<name>.json and .md.

mod btrfs;
mod dataset;
mod inc_report;
mod incremental;
mod limits;
mod mover_run;
mod mutate;
mod proc;
mod report;
mod rsync;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use dataset::Kind;
use report::{Sample, Tool};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(about = "Benchmark mover against rsync (daemon mode) on 127.0.0.1")]
struct Args {
    /// all | large | small | mixed | limits (initial sync), or incremental | rewrite-1pct |
    /// noop-small | rename-dir (incremental jobs: all three scenarios, or one)
    #[arg(default_value = "all")]
    what: String,
    /// Where datasets and destinations live (default $MOVER_BENCH_DIR or /work/bench-data).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// mover binary (default: target/release/mover beside this binary).
    #[arg(long)]
    mover: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    reps: usize,
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Result file name (default: the dataset argument).
    #[arg(long)]
    name: Option<String>,
    /// Scale dataset sizes (0.01 for a smoke run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    #[arg(long, value_enum, default_value_t = Tools::Both)]
    tools: Tools,
    /// Incremental scenarios only: `native` (the work dir's file system) or `btrfs` (each source
    /// in a subvolume of a loop-mounted image: mover finds changed blocks from shared extents).
    #[arg(long, default_value = "native")]
    source_fs: String,
    /// Initial sync only: `cold` drops the page cache before every run; `hot` reads the
    /// dataset into it instead (and mover reads through it: --no-direct).
    #[arg(long, default_value = "cold")]
    cache: String,
    /// Initial sync only: where the destinations go (e.g. a tmpfs such as /dev/shm/bench),
    /// each removed right after its run; default: beside the dataset in the work dir, all
    /// kept until the dataset's last run.
    #[arg(long)]
    dst_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Tools {
    Both,
    Mover,
    Rsync,
}

fn fresh(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn check_copy(src: &Path, dst: &Path, tool: Tool) -> Result<()> {
    let (a, b) = (dataset::count(src)?, dataset::count(dst)?);
    if a != b {
        bail!(
            "{tool:?} left {} files / {} bytes, source has {} / {}",
            b.0,
            b.1,
            a.0,
            a.1
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let a = Args::parse();
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
    if a.tools != Tools::Rsync && !mover.exists() {
        bail!(
            "mover binary not found at {} (cargo build --release first, or pass --mover)",
            mover.display()
        );
    }
    if a.source_fs != "native" && a.source_fs != "btrfs" {
        bail!("--source-fs must be native or btrfs, not {:?}", a.source_fs);
    }
    let name = a.name.clone().unwrap_or_else(|| a.what.clone());
    if let Some(scenarios) = incremental::Scenario::select(&a.what) {
        // `mover hash` verifies every destination, so the binary is needed even for rsync alone.
        if !mover.exists() {
            bail!(
                "mover binary not found at {} (cargo build --release first, or pass --mover)",
                mover.display()
            );
        }
        let keys = mover_run::Keys::sealed(&mover, &work.join("identities"))?;
        let o = incremental::Opts {
            work,
            mover,
            scale: a.scale,
            reps: a.reps,
            run_mover: a.tools != Tools::Rsync,
            run_rsync: a.tools != Tools::Mover,
            btrfs_source: a.source_fs == "btrfs",
            keys,
        };
        let rep = incremental::run(&o, &scenarios)?;
        let (json, md) = rep.write(&a.results, &name)?;
        println!("{}", rep.markdown());
        eprintln!("bench: wrote {} and {}", json.display(), md.display());
        return Ok(());
    }
    let hot = match a.cache.as_str() {
        "hot" => true,
        "cold" => false,
        other => bail!("--cache must be hot or cold, not {other:?}"),
    };
    let kinds: Vec<Kind> = match a.what.as_str() {
        "all" => vec![Kind::Large, Kind::Small, Kind::Mixed],
        "large" => vec![Kind::Large],
        "small" => vec![Kind::Small],
        "mixed" => vec![Kind::Mixed],
        "limits" => vec![],
        other => bail!("unknown benchmark {other:?}: all, large, small, mixed, limits, incremental or one of its scenarios"),
    };
    std::fs::create_dir_all(&work)?;
    let sealed = mover_run::Keys::sealed(&mover, &work.join("identities"))?;
    let plain = mover_run::Keys::plaintext();
    let tcp = limits::loopback_tcp()?;
    eprintln!("bench: loopback TCP single stream {tcp:.0} MB/s");
    let mut rep = report::Report::new(&mover, a.scale, tcp);
    rep.regime = format!(
        "source {}, destination {}",
        if hot {
            "hot (in the page cache)"
        } else {
            "cold (page cache dropped before every run)"
        },
        a.dst_dir
            .as_ref()
            .map_or("beside it in the work dir".to_string(), |d| d
                .display()
                .to_string())
    );
    for kind in kinds {
        let ds = dataset::ensure(&work, kind, a.scale)?;
        let read = limits::sequential_read(&ds.dir)?;
        eprintln!(
            "bench: {}: {} files, {} bytes; sequential read {read:.0} MB/s",
            kind.name(),
            ds.files,
            ds.bytes
        );
        // Every run gets its own, new destination directory; all are removed only after the
        // dataset's last run. Deleting tens of thousands of inodes right before a run would make
        // ext4 skip them as "recently deleted" (for 60 s) in the next run's inode allocation, a
        // cost no real initial sync into an empty target pays.
        let dsts = match &a.dst_dir {
            Some(d) => d.join(kind.name()),
            None => work.join(kind.name()).join("dst"),
        };
        let tmp = work.join(kind.name()).join("rsyncd");
        std::fs::create_dir_all(&tmp)?;
        fresh(&dsts)?;
        let daemon = if a.tools != Tools::Mover {
            Some(rsync::Daemon::start(&tmp, &dsts)?)
        } else {
            None
        };
        let mut samples = Vec::new();
        for r in 0..a.reps {
            // Rotate the order every rep so no tool always follows the same neighbour (the
            // host's write-back of the previous run's data otherwise lands on one tool).
            let mut order = [Tool::Mover, Tool::MoverPlain, Tool::Rsync];
            order.rotate_left(r % 3);
            for tool in order {
                let is_rsync = tool == Tool::Rsync;
                if (is_rsync && a.tools == Tools::Mover) || (!is_rsync && a.tools == Tools::Rsync) {
                    continue;
                }
                let sub = format!("{tool:?}-{r}");
                let dst = dsts.join(&sub);
                if tool != Tool::Rsync {
                    fresh(&dst)?;
                }
                let dropped = if hot {
                    proc::warm(&ds.dir)?;
                    false
                } else {
                    proc::drop_caches()
                };
                let s = match (tool, &daemon) {
                    (Tool::Rsync, Some(d)) => {
                        let x = d.run(&ds.dir, &sub)?;
                        Sample {
                            tool,
                            rep: r,
                            seconds: x.seconds,
                            cpu_seconds: x.cpu_seconds,
                            wire_bytes: x.wire_bytes,
                            cache_dropped: dropped,
                        }
                    }
                    (Tool::Rsync, None) => continue,
                    _ => {
                        let keys = if tool == Tool::MoverPlain {
                            &plain
                        } else {
                            &sealed
                        };
                        let extra: &[&std::ffi::OsStr] = if hot {
                            &[std::ffi::OsStr::new("--no-direct")]
                        } else {
                            &[]
                        };
                        let x = mover_run::run_with(&mover, &ds.dir, &dst, extra, keys)?;
                        if x.files != ds.files {
                            bail!(
                                "mover sent {} files into an empty destination, dataset has {}",
                                x.files,
                                ds.files
                            );
                        }
                        Sample {
                            tool,
                            rep: r,
                            seconds: x.seconds,
                            cpu_seconds: x.cpu_seconds,
                            wire_bytes: x.wire_bytes,
                            cache_dropped: dropped,
                        }
                    }
                };
                check_copy(&ds.dir, &dst, tool)?;
                if a.dst_dir.is_some() {
                    // A destination in memory (tmpfs) would crowd the hot source out of the
                    // page cache: it goes after its run (the ext4 reason for keeping them, its
                    // recently-deleted inodes, does not apply there).
                    std::fs::remove_dir_all(&dst)
                        .with_context(|| format!("removing {}", dst.display()))?;
                }
                eprintln!(
                    "bench: {} {:?} rep {r}: {:.2}s, cpu {:.2}s, wire {}",
                    kind.name(),
                    tool,
                    s.seconds,
                    s.cpu_seconds,
                    s.wire_bytes
                );
                samples.push(s);
            }
        }
        drop(daemon);
        std::fs::remove_dir_all(&dsts).with_context(|| format!("removing {}", dsts.display()))?;
        rep.add(ds, read, samples);
    }
    let (json, md) = rep.write(&a.results, &name)?;
    println!("{}", rep.markdown());
    eprintln!("bench: wrote {} and {}", json.display(), md.display());
    Ok(())
}
