//! Replication through a faulty network: a fault-injecting TCP proxy (tests/common/faults.rs)
//! sits between a retrying sender and a receiver that keeps serving, on 127.0.0.1 with real
//! trees. Cuts, stalls, delayed and refused connections must all end with the target equal to
//! the source (tree hash and content hash), the interrupted job resumed by a later session.

mod common;

use common::faults::{random_schedule, Fault, FaultProxy};
use common::*;
use mover::churn::{churn, ChurnSpec};
use mover::gen::{generate, TreeSpec};
use mover::sender::{send_with_retry, SendOptions, SendReport};
use mover::Progress;
use mover::SessionReport;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sender threads in every test (connection indices at the proxy: the control connection of a
/// session, then its `THREADS` worker connections).
const THREADS: usize = 2;

fn options(src: &Path, to: SocketAddr, state: &Path) -> SendOptions {
    send_options(src, to, THREADS, Some(state))
}

/// `send_with_retry` through `to`; returns the result and the error of every failed attempt.
fn send_retrying(
    src: &Path,
    to: SocketAddr,
    state: &Path,
    attempts: u32,
) -> (mover::Result<SendReport>, Vec<String>) {
    let mut failures = Vec::new();
    let r = send_with_retry(
        &options(src, to, state),
        &Arc::new(Progress::default()),
        attempts,
        |n, e, pause| {
            failures.push(format!("attempt {n}: {e} (retry in {pause:?})"));
        },
    );
    (r, failures)
}

/// Session reports that have arrived so far, once the last one is ok (`want_ok_last`) or
/// failed (waits up to 10 s for it: the receiver sends it after acknowledging the sender, and
/// a failed session's only once it has logged what its workers finished, so a test that then
/// plays a power loss on the target is not raced by those logs).
fn drain(reports: &mpsc::Receiver<SessionReport>, want_ok_last: bool) -> Vec<SessionReport> {
    let mut out: Vec<SessionReport> = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match reports.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => out.push(r),
            Err(_) if out.last().is_none_or(|r| r.ok != want_ok_last) && Instant::now() < end => {}
            Err(_) => return out,
        }
    }
}

#[test]
fn sender_retries_after_cuts_and_resumes() {
    let d = dirs();
    generate(
        &d.src,
        &TreeSpec {
            small_files: 120,
            large_files: 3,
            large_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let (addr, reports) = start_serving(&d.dst);
    // The first cut lands in the first session's data; the second counts from the first and
    // lands in the resumed session's data.
    let faults = vec![
        Fault::Cut {
            after_bytes: 1 << 20,
        },
        Fault::Cut {
            after_bytes: 900 << 10,
        },
    ];
    let proxy = FaultProxy::start(addr, faults);
    let (r, failures) = send_retrying(&d.src, proxy.addr, &d.state, 6);
    let rep = r.unwrap_or_else(|e| panic!("send failed after {failures:?}: {e}"));
    assert_eq!(proxy.faults_fired(), 2, "both cuts fired");
    assert!(rep.attempts > 1, "the cuts forced retries: {rep:?}");
    assert_eq!(rep.attempts as usize, failures.len() + 1);
    assert!(
        rep.resumed,
        "the last session continued the interrupted job"
    );
    assert_same_tree(&d.src, &d.dst);
    let sessions = drain(&reports, true);
    assert!(sessions.last().is_some_and(|s| s.ok), "{sessions:?}");
    assert!(
        sessions.iter().filter(|s| !s.ok).count() >= 1,
        "a cut session failed at the receiver: {sessions:?}"
    );
    // The next job through the healed link has nothing to send.
    let (again, _) = send_retrying(&d.src, proxy.addr, &d.state, 2);
    let again = again.unwrap();
    assert_eq!(
        (again.attempts, again.bytes, again.resumed),
        (1, 0, false),
        "{again:?}"
    );
    assert_same_tree(&d.src, &d.dst);
}

#[test]
fn stalled_link_pauses_and_completes() {
    let d = dirs();
    generate(
        &d.src,
        &TreeSpec {
            small_files: 100,
            large_files: 3,
            large_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let (addr, reports) = start_serving(&d.dst);
    let proxy = FaultProxy::start(
        addr,
        vec![Fault::Stall {
            after_bytes: 1 << 20,
            for_ms: 1500,
        }],
    );
    let t = Instant::now();
    let (r, failures) = send_retrying(&d.src, proxy.addr, &d.state, 3);
    let took = t.elapsed();
    let rep = r.unwrap_or_else(|e| panic!("send failed after {failures:?}: {e}"));
    assert_eq!(proxy.faults_fired(), 1, "the stall fired");
    assert_eq!(rep.attempts, 1, "a stall is not a failure: {failures:?}");
    assert!(failures.is_empty());
    assert!(
        took >= Duration::from_millis(1400),
        "the job went through the stall, took {took:?}"
    );
    assert!(
        rep.bytes > 3 << 20,
        "whole tree in one session: {}",
        rep.bytes
    );
    assert_same_tree(&d.src, &d.dst);
    let sessions = drain(&reports, true);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert!(sessions[0].ok);
}

/// A refused worker connection fails the sender's session at once; the receiver's session,
/// waiting for that worker, notices the closed control connection and ends too, so the retry
/// is not told "receiver busy" (it once was, for the whole 60 s worker-connect timeout).
#[test]
fn reordered_and_refused_connections_are_survived() {
    refused_worker_connection_is_survived(1 << 20);
}

/// The same with more data than the sockets hold: the other worker blocks, writing to a
/// receiver that holds its connection until all have arrived, so the sender must end the
/// session when one worker fails rather than when all are done (it once waited for the
/// receiver's 60 s timeout).
#[test]
fn a_refused_worker_connection_ends_a_session_whose_other_worker_is_blocked() {
    refused_worker_connection_is_survived(32 << 20);
}

/// A job of two large files of `large_size` whose first session has one worker connection
/// refused by the network and the other held back.
fn refused_worker_connection_is_survived(large_size: usize) {
    let d = dirs();
    generate(
        &d.src,
        &TreeSpec {
            small_files: 100,
            large_files: 2,
            large_size,
            ..Default::default()
        },
    )
    .unwrap();
    let (addr, reports) = start_serving(&d.dst);
    // Session 1: connection 0 is its control connection, 1 and 2 its workers (in whichever
    // order they connect): one worker is held back so it reaches the receiver last, the other
    // is closed by the "network" right after accept.
    let faults = vec![
        Fault::DelayConnect {
            conn_index: 1,
            ms: 700,
        },
        Fault::CloseEarly { conn_index: 2 },
    ];
    let proxy = FaultProxy::start(addr, faults);
    let t = Instant::now();
    let (r, failures) = send_retrying(&d.src, proxy.addr, &d.state, 6);
    let rep =
        r.unwrap_or_else(|e| panic!("send failed after {:?} and {failures:?}: {e}", t.elapsed()));
    assert_eq!(proxy.faults_fired(), 2);
    assert!(
        rep.attempts > 1,
        "the refused worker failed the first session"
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "recovery took {:?}: {failures:?}",
        t.elapsed()
    );
    assert_same_tree(&d.src, &d.dst);
    let sessions = drain(&reports, true);
    assert!(sessions.last().is_some_and(|s| s.ok), "{sessions:?}");
}

/// The same bug through a cut instead of a refusal: one worker's connection is held at the
/// proxy while the other's data passes the cut, so the held connection dies before it reaches
/// the receiver, which then waits 60 s for it, answering "receiver busy" to every retry.
#[test]
fn cut_while_a_worker_connection_is_held_is_survived() {
    let d = dirs();
    generate(
        &d.src,
        &TreeSpec {
            small_files: 100,
            large_files: 2,
            large_size: 2 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let (addr, reports) = start_serving(&d.dst);
    let faults = vec![
        Fault::DelayConnect {
            conn_index: 2,
            ms: 3000,
        },
        Fault::Cut {
            after_bytes: 256 << 10,
        },
    ];
    let proxy = FaultProxy::start(addr, faults);
    let t = Instant::now();
    let (r, failures) = send_retrying(&d.src, proxy.addr, &d.state, 6);
    let rep =
        r.unwrap_or_else(|e| panic!("send failed after {:?} and {failures:?}: {e}", t.elapsed()));
    assert_eq!(proxy.faults_fired(), 2);
    assert!(rep.attempts > 1);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "recovery took {:?}: {failures:?}",
        t.elapsed()
    );
    assert_same_tree(&d.src, &d.dst);
    let sessions = drain(&reports, true);
    assert!(sessions.last().is_some_and(|s| s.ok), "{sessions:?}");
}

/// A cut in the first session's data, a refused control connection (the first retry's) and a
/// delayed worker connection in the session after it, so that session's workers reach the
/// receiver in the opposite order.
#[test]
fn reordered_connections_and_a_refused_control_connection_are_survived() {
    let d = dirs();
    generate(
        &d.src,
        &TreeSpec {
            small_files: 100,
            large_files: 2,
            large_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let (addr, reports) = start_serving(&d.dst);
    // Connections: 0 control and 1-2 workers of session 1, cut in its data; 3 the control
    // connection of session 2, refused (so it opens no workers); 4 control and 5-6 workers of
    // session 3, the first worker connection held back 700 ms.
    let faults = vec![
        Fault::Cut {
            after_bytes: 1 << 20,
        },
        Fault::CloseEarly { conn_index: 3 },
        Fault::DelayConnect {
            conn_index: 5,
            ms: 700,
        },
    ];
    let proxy = FaultProxy::start(addr, faults);
    let t = Instant::now();
    let (r, failures) = send_retrying(&d.src, proxy.addr, &d.state, 6);
    let rep = r.unwrap_or_else(|e| panic!("send failed after {failures:?}: {e}"));
    assert_eq!(proxy.faults_fired(), 3, "{failures:?}");
    assert_eq!(proxy.connections(), 7, "{failures:?}");
    assert_eq!(
        rep.attempts, 3,
        "cut, then refused control connection: {failures:?}"
    );
    assert!(rep.resumed, "the last session continued the cut job");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "recovery took {:?}: {failures:?}",
        t.elapsed()
    );
    assert_same_tree(&d.src, &d.dst);
    let sessions = drain(&reports, true);
    assert!(sessions.last().is_some_and(|s| s.ok), "{sessions:?}");
}

/// Byte thresholds of the random schedules are drawn from 1..=this: churn jobs of 25 operations
/// put roughly 0.1 to 3 MiB on the wire, so most byte-based faults fire inside a job.
const SCHEDULE_BYTES: u64 = 512 << 10;

fn random_schedules_converge(keep: impl Fn(&Fault) -> bool) {
    let d = dirs();
    generate(
        &d.src,
        &TreeSpec {
            small_files: 120,
            large_files: 2,
            large_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let (addr, reports) = start_serving(&d.dst);
    send_state(&d.src, addr, &d.state).expect("first job, no faults");
    assert_same_tree(&d.src, &d.dst);
    drain(&reports, true);
    for seed in 1..=6u64 {
        churn(
            &d.src,
            &ChurnSpec {
                seed,
                ops: 25,
                ..Default::default()
            },
        )
        .unwrap();
        let schedule: Vec<Fault> = random_schedule(seed, SCHEDULE_BYTES)
            .into_iter()
            .filter(|f| keep(f))
            .collect();
        let proxy = FaultProxy::start(addr, schedule.clone());
        let t = Instant::now();
        let (r, failures) = send_retrying(&d.src, proxy.addr, &d.state, 6);
        let rep = r.unwrap_or_else(|e| {
            panic!(
                "seed {seed}, schedule {schedule:?}: failed after {:?} and {failures:?}: {e}",
                t.elapsed()
            )
        });
        eprintln!(
            "seed {seed}: {schedule:?}: {} attempt(s), {} bytes, {:?}, {} fault(s) fired",
            rep.attempts,
            rep.bytes,
            t.elapsed(),
            proxy.faults_fired()
        );
        assert_eq!(rep.attempts as usize, failures.len() + 1);
        assert!(
            rep.incremental,
            "seed {seed}: the manifest names the receiver's recovery point"
        );
        assert_same_tree(&d.src, &d.dst);
        let sessions = drain(&reports, true);
        assert!(
            sessions.last().is_some_and(|s| s.ok),
            "seed {seed}: {sessions:?}"
        );
    }
}

#[test]
fn seeded_random_fault_schedules_converge() {
    random_schedules_converge(|_| true);
}

/// The same seeded schedules without their CloseEarly faults: cuts, stalls and delayed
/// connects at random points of incremental jobs.
#[test]
fn seeded_random_fault_schedules_without_refusals_converge() {
    random_schedules_converge(|f| !matches!(f, Fault::CloseEarly { .. }));
}

/// Twelve new 1 MiB files under `src/new`; returns their bytes.
fn new_large_files(src: &Path, seed: u64) -> u64 {
    const NEW: u64 = 12;
    let spec = TreeSpec {
        seed,
        small_files: 0,
        large_files: NEW as usize,
        large_size: 1 << 20,
        extras: false,
        fanout: 1,
        ..Default::default()
    };
    generate(&src.join("new"), &spec).unwrap();
    NEW << 20
}

#[test]
fn resumed_job_sends_less_than_a_full_resend() {
    let d = dirs();
    generate(
        &d.src,
        &TreeSpec {
            small_files: 40,
            large_files: 1,
            large_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let (addr, reports) = start_serving(&d.dst);
    send_state(&d.src, addr, &d.state).expect("first job, no faults");
    drain(&reports, true);
    let total = new_large_files(&d.src, 11);
    let proxy = FaultProxy::start(
        addr,
        vec![Fault::Cut {
            after_bytes: 8 << 20,
        }],
    );
    let (r, failures) = send_retrying(&d.src, proxy.addr, &d.state, 4);
    let rep = r.unwrap_or_else(|e| panic!("send failed after {failures:?}: {e}"));
    assert_eq!(proxy.faults_fired(), 1);
    assert_eq!(rep.attempts, 2, "one cut, one retry: {failures:?}");
    assert!(rep.resumed, "the retry continued the cut job");
    assert!(
        rep.bytes > 0 && rep.bytes < total,
        "the retry sent {} bytes of {total} new",
        rep.bytes
    );
    assert_same_tree(&d.src, &d.dst);
}

/// The job's large files under `new/` that the target holds finished: the source's size and
/// mtime.
fn finished_on_target(src: &Path, dst: &Path) -> Vec<std::path::PathBuf> {
    finished_of_size(&src.join("new"), &dst.join("new"), |n| n >= 1 << 20)
}

/// The files in source directory `src` whose size `keep` takes that target directory `dst`
/// holds finished.
fn finished_of_size(src: &Path, dst: &Path, keep: fn(u64) -> bool) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let (s, t) = (e.metadata().unwrap(), dst.join(e.file_name()));
        let Ok(d) = std::fs::symlink_metadata(&t) else {
            continue;
        };
        if keep(s.len()) && d.len() == s.len() && d.modified().unwrap() == s.modified().unwrap() {
            out.push(t);
        }
    }
    out
}

/// A job of `NEW` new 1 MiB files into a target that holds a recovery point, cut after
/// `cut` bytes; returns the dirs, the address of the receiver (still serving) and the total.
fn cut_job(cut: u64) -> (Dirs, SocketAddr, u64) {
    cut_job_with(cut, 0)
}

/// `cut_job`, the job also creating `small` small files in `new/`.
fn cut_job_with(cut: u64, small: usize) -> (Dirs, SocketAddr, u64) {
    let d = dirs();
    generate(
        &d.src,
        &TreeSpec {
            small_files: 10,
            ..Default::default()
        },
    )
    .unwrap();
    // `new` is a directory of the recovery point: the job creates its large files in it.
    std::fs::create_dir(d.src.join("new")).unwrap();
    std::fs::write(d.src.join("new/old"), b"of the recovery point").unwrap();
    let (addr, reports) = start_serving(&d.dst);
    send_state(&d.src, addr, &d.state).expect("first job, no faults");
    drain(&reports, true);
    let total = new_large_files(&d.src, 12);
    if small > 0 {
        let spec = TreeSpec {
            seed: 13,
            small_files: small,
            large_files: 0,
            extras: false,
            fanout: 0,
            ..Default::default()
        };
        generate(&d.src.join("new/small"), &spec).unwrap();
    }
    let proxy = FaultProxy::start(addr, vec![Fault::Cut { after_bytes: cut }]);
    let (r, _) = send_retrying(&d.src, proxy.addr, &d.state, 1);
    assert!(r.is_err(), "the cut job failed");
    assert_eq!(proxy.faults_fired(), 1);
    let sessions = drain(&reports, false);
    assert!(
        sessions.last().is_some_and(|r| !r.ok),
        "the receiver reported the cut session failed"
    );
    (d, addr, total)
}

#[test]
fn files_finished_before_a_cut_are_not_sent_again() {
    let (d, addr, total) = cut_job(8 << 20);
    let finished = finished_on_target(&d.src, &d.dst);
    assert!(
        !finished.is_empty(),
        "some files were finished before the cut"
    );
    let (r, failures) = send_retrying(&d.src, addr, &d.state, 1);
    let rep = r.unwrap_or_else(|e| panic!("resumed job failed after {failures:?}: {e}"));
    assert!(rep.resumed, "the job was resumed");
    // The failed workers logged what they had finished once a write-back covered it.
    let left = total - ((finished.len() as u64) << 20);
    assert!(
        rep.bytes <= left,
        "the resumed job sent {} bytes; {} files ({left} bytes) were unfinished",
        rep.bytes,
        (total >> 20) - finished.len() as u64
    );
    assert_same_tree(&d.src, &d.dst);
}

/// A power loss can keep a finished file's size and mtime and lose its bytes (a large file is
/// sized in full when created), and lose the log records written after the last sync. Here:
/// every log of written ranges is gone and a finished file reads as zeros. With `rename`, the
/// source renames the file's directory before the job resumes.
fn lose_a_finished_file_then_resume(rename: bool) {
    let (d, addr, _) = cut_job(8 << 20);
    let finished = finished_on_target(&d.src, &d.dst);
    lose_then_resume(&d, addr, &finished, rename);
}

/// Zeroes the first of `finished` (size and mtime kept) and drops every log of written
/// ranges, renames `new` in the source if `rename`, then resumes the job: the target must end
/// equal to the source.
fn lose_then_resume(d: &Dirs, addr: SocketAddr, finished: &[std::path::PathBuf], rename: bool) {
    let victim = finished.first().expect("a file finished before the cut");
    let meta = std::fs::metadata(victim).unwrap();
    std::fs::write(victim, vec![0u8; meta.len() as usize]).unwrap();
    let f = std::fs::File::options().write(true).open(victim).unwrap();
    f.set_modified(meta.modified().unwrap()).unwrap();
    drop(f);
    let journal = d.dst.join(".mover-state/journal");
    let mut logs = 0;
    for e in std::fs::read_dir(&journal).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("written-") {
            std::fs::remove_file(e.path()).unwrap();
            logs += 1;
        }
    }
    assert!(logs > 0, "the workers kept logs of what they wrote");
    if rename {
        std::fs::rename(d.src.join("new"), d.src.join("renamed")).unwrap();
    }
    let (r, failures) = send_retrying(&d.src, addr, &d.state, 1);
    let rep = r.unwrap_or_else(|e| panic!("resumed job failed after {failures:?}: {e}"));
    assert!(rep.resumed, "the job was resumed");
    assert!(rep.bytes >= meta.len(), "the zeroed file was sent again");
    assert_same_tree(&d.src, &d.dst);
}

#[test]
fn a_finished_file_whose_bytes_were_lost_is_sent_again_after_a_power_loss() {
    lose_a_finished_file_then_resume(false);
}

#[test]
fn a_lost_finished_file_is_sent_again_after_its_directory_was_renamed() {
    lose_a_finished_file_then_resume(true);
}

#[test]
fn a_lost_finished_small_file_is_sent_again_after_a_power_loss() {
    // Which files the cut leaves finished depends on how the two workers' streams interleave
    // before it: about one setup in eighty has no small file written yet (every connection
    // is cut at once). The case needs one, so such a setup is made again, at most SETUPS
    // times.
    const SETUPS: usize = 4;
    for _ in 0..SETUPS {
        let (d, addr, _) = cut_job_with((12 << 20) + (700 << 10), 300);
        let small = d.src.join("new/small");
        let finished = finished_of_size(&small, &d.dst.join("new/small"), |n| n > 0 && n < 1 << 16);
        if !finished.is_empty() {
            lose_then_resume(&d, addr, &finished, false);
            return;
        }
    }
    panic!("none of {SETUPS} cut jobs had finished a small file before the cut");
}
