//! `bench reverse`: failback and back. Per rep: a fresh pair of daemons on 127.0.0.1 and a
//! relationship through its initial sync of a copy of the reconnect tree; make-writable on the
//! target, 1% of the small files churned on the target (the failed-over application) and 1%
//! on the source (writes the old source made after the recovery point, which the reverse keeps
//! aside); `mover relationship reverse ID --source-address ...` on the target, timed until the
//! old target, now the source, shows its first job done and both trees hash equal. Then back:
//! replication disabled, 1% churned on the new source, `mover relationship reverse ID` on it
//! (a planned switch run on the source), timed the same way. Bytes sent by each first job are
//! compared with the bytes that had to travel.

use crate::daemons::{clear, Pair, Ports, INITIAL_SYNC_TIMEOUT};
use crate::measure::median;
use crate::reconnect::{churn_seeded, hash, sent_by_last_job, target_recorded, Churn, Opts};
use crate::{dataset, proc};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Seeds of the three churns (different files on each side).
const SEED_TARGET: u64 = 0x7a11_0001;
const SEED_SOURCE: u64 = 0x7a11_0002;
const SEED_BACK: u64 = 0x7a11_0003;

/// One direction's figures.
#[derive(Debug, Clone, Default)]
pub struct Leg {
    pub cli_seconds: f64,
    /// Until the new source's first job succeeded.
    pub synced_seconds: f64,
    /// Until both trees hash equal.
    pub verified_seconds: f64,
    pub sent_files: u64,
    pub sent_bytes: u64,
    /// Bytes the first job had to send: rewritten and deleted files of the side that was set
    /// aside (they come back), plus rewritten and new files of the new source.
    pub to_send: u64,
    pub loopback_bytes: Option<u64>,
    pub kept_aside: u64,
}

pub struct Rep {
    pub initial_sync_seconds: f64,
    pub churn_target: Churn,
    pub churn_source: Churn,
    pub churn_back: Churn,
    pub reverse: Leg,
    pub back: Leg,
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .context("cp -a")?;
    if !st.success() {
        bail!("cp -a {} {} failed", from.display(), to.display());
    }
    Ok(())
}

/// Waits for the first job of `node`'s new source role after a reverse; returns its view.
fn first_job(node: &crate::daemons::Node, id: &str, what: &str) -> Result<Value> {
    node.wait_for(("source", id), what, INITIAL_SYNC_TIMEOUT, |v| {
        v["state"] != "reverting_to_last_recovery_point"
            && v["job"].is_null()
            && v["last_attempt"]["ok"] == true
    })
}

fn leg(
    o: &Opts,
    run: impl FnOnce() -> Result<Value>,
    new_source: &crate::daemons::Node,
    id: &str,
    dirs: (&Path, &Path),
) -> Result<Leg> {
    let lo0 = proc::loopback_bytes();
    let t0 = Instant::now();
    let answer = run()?;
    let cli_seconds = t0.elapsed().as_secs_f64();
    let done = first_job(new_source, id, "the first job after the reverse")?;
    let synced_seconds = t0.elapsed().as_secs_f64();
    let loopback_bytes = match (lo0, proc::loopback_bytes()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let (a, b) = (hash(o.mover, dirs.0)?, hash(o.mover, dirs.1)?);
    let verified_seconds = t0.elapsed().as_secs_f64();
    if a != b {
        bail!("after the reverse the trees differ: {a} vs {b}");
    }
    let (sent_files, sent_bytes) = sent_by_last_job(&done)?;
    let d = &answer["discarded"];
    Ok(Leg {
        cli_seconds,
        synced_seconds,
        verified_seconds,
        sent_files,
        sent_bytes,
        to_send: 0,
        loopback_bytes,
        kept_aside: d["added"].as_u64().unwrap_or(0) + d["modified"].as_u64().unwrap_or(0),
    })
}

fn one(o: &Opts, ports: &mut Ports, tree: &dataset::FilesTree, rep: usize) -> Result<Rep> {
    let run_dir = o.work.join("reverse").join(format!("rep-{rep}"));
    clear(o.work, &run_dir)?;
    std::fs::create_dir_all(&run_dir)?;
    let src = run_dir.join("source");
    copy_tree(&tree.dir, &src)?;
    let dst = run_dir.join("target");
    let (pair, initial_sync_seconds) =
        Pair::start(o.mover, &run_dir, ports, o.configs, (&src, &dst))?;
    let id = pair.id.clone();
    target_recorded(&pair)?;
    pair.target
        .cli_json(&["relationship", "make-writable", &id, "--json"])?;
    pair.source.wait_for(
        ("source", &id),
        "the source to see the end",
        INITIAL_SYNC_TIMEOUT,
        |v| v["state"] == "ended",
    )?;
    let churn_target = churn_seeded(&dst, o.files, o.churn, SEED_TARGET)?;
    let churn_source = churn_seeded(&src, o.files, o.churn, SEED_SOURCE)?;
    proc::quiesce(&[o.work]);

    // Failback, run on the target.
    let addr = format!("127.0.0.1:{}", pair.source.listen);
    let mut reverse = leg(
        o,
        || {
            pair.target.cli_json(&[
                "relationship",
                "reverse",
                &id,
                "--source-address",
                &addr,
                "--json",
            ])
        },
        &pair.target,
        &id,
        (&src, &dst),
    )?;
    reverse.to_send = churn_source.restored_bytes()
        + churn_target.rewritten_bytes
        + churn_target.created_bytes
        + churn_target.large_blocks_bytes;

    // And back, a planned switch run on the (new) source after churn there.
    pair.target
        .cli_json(&["relationship", "modify", &id, "--disable", "--json"])?;
    let churn_back = churn_seeded(&dst, o.files, o.churn, SEED_BACK)?;
    proc::quiesce(&[o.work]);
    let mut back = leg(
        o,
        || {
            pair.target
                .cli_json(&["relationship", "reverse", &id, "--json"])
        },
        &pair.source,
        &id,
        (&src, &dst),
    )?;
    back.to_send = churn_back.restored_bytes();
    pair.finish();
    clear(o.work, &run_dir)?;
    Ok(Rep {
        initial_sync_seconds,
        churn_target,
        churn_source,
        churn_back,
        reverse,
        back,
    })
}

/// Runs the reps and returns the markdown section.
pub fn run(o: &Opts, ports: &mut Ports) -> Result<String> {
    let tree = dataset::ensure_files_large(o.work, o.files, o.large)?;
    let mut reps = Vec::new();
    for rep in 0..o.reps {
        let r = one(o, ports, &tree, rep)?;
        eprintln!(
            "bench: reverse rep {rep}: reverse {:.3} s CLI, {:.3} s synced, sent {} for {}; back {:.3} s CLI, {:.3} s synced, sent {} for {}",
            r.reverse.cli_seconds,
            r.reverse.synced_seconds,
            r.reverse.sent_bytes,
            r.reverse.to_send,
            r.back.cli_seconds,
            r.back.synced_seconds,
            r.back.sent_bytes,
            r.back.to_send
        );
        reps.push(r);
    }
    Ok(markdown(o, &tree, &reps))
}

fn markdown(o: &Opts, tree: &dataset::FilesTree, reps: &[Rep]) -> String {
    let mut s = format!(
        "## Failback: reverse and back after {}% churn on either side\n\n\
         Per rep: a fresh pair of daemons on 127.0.0.1 and a fresh relationship through its initial sync of {} files \
         ({} small of {} bytes, {} x {} bytes). `make-writable` on the target; then {}% of the small files churned on \
         the target (rewritten; one in 10 deleted, one in 10 new) and {}% of other small files churned the same way on \
         the old source (its writes after the recovery point); each time, the same fraction of the 4 KiB blocks of          every large file is rewritten in place too. **Reverse**: `mover relationship reverse ID \
         --source-address ... --json` on the target, timed to its exit (CLI), until the old target, now the source, \
         shows its first job succeeded (synced), and until `mover hash --content` of both trees is equal (verified). \
         **Back**: replication disabled on the new source, {}% churned there, `mover relationship reverse ID --json` \
         on it (planned switch), timed the same way. Sent = file data bytes of the first job in the new direction; \
         to send = bytes of the rewritten and deleted files and large-file blocks of the side reverted (they come \
         back) plus the rewritten and new files and large-file blocks of the new source; kept aside = files set \
         aside on the side reverted (a changed large file is copied aside and repaired block by block in place).\n\n",
        o.churn * 100.0,
        tree.files,
        o.files,
        dataset::FILES_SIZE,
        o.large.0,
        o.large.1,
        o.churn * 100.0,
        o.churn * 100.0,
        o.churn * 100.0,
    );
    s.push_str(
        "| rep | initial sync s | leg | churn (rewritten / deleted / new) | reverse CLI s | synced s | verified s | kept aside | sent files | sent bytes | to send | sent / to send | loopback bytes |\n\
         |---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let churn = |c: &Churn| {
        format!(
            "{} / {} / {}",
            c.rewritten_files, c.deleted_files, c.created_files
        )
    };
    for (i, r) in reps.iter().enumerate() {
        for (name, l, c) in [
            (
                "reverse (run on the target)",
                &r.reverse,
                format!(
                    "target {}, source {}",
                    churn(&r.churn_target),
                    churn(&r.churn_source)
                ),
            ),
            ("back (run on the source)", &r.back, churn(&r.churn_back)),
        ] {
            s.push_str(&format!(
                "| {i} | {:.1} | {name} | {c} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {:.2} | {} |\n",
                r.initial_sync_seconds,
                l.cli_seconds,
                l.synced_seconds,
                l.verified_seconds,
                l.kept_aside,
                l.sent_files,
                l.sent_bytes,
                l.to_send,
                l.sent_bytes as f64 / l.to_send.max(1) as f64,
                l.loopback_bytes.map_or("-".into(), |b| b.to_string()),
            ));
        }
    }
    let m = |f: fn(&Rep) -> f64| median(reps.iter().map(f).collect());
    s.push_str(&format!(
        "\nMedians: reverse {:.3} s CLI, {:.3} s to synced, {:.0} bytes sent for {:.0} to send; back {:.3} s CLI, {:.3} s to synced, {:.0} bytes sent for {:.0} to send.\n",
        m(|r| r.reverse.cli_seconds),
        m(|r| r.reverse.synced_seconds),
        m(|r| r.reverse.sent_bytes as f64),
        m(|r| r.reverse.to_send as f64),
        m(|r| r.back.cli_seconds),
        m(|r| r.back.synced_seconds),
        m(|r| r.back.sent_bytes as f64),
        m(|r| r.back.to_send as f64),
    ));
    s
}
