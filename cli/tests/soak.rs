//! Fault soak on real processes: two `mover daemon`s on 127.0.0.1 with one relationship whose
//! peer traffic (TLS requests and the sealed data plane) passes a fault proxy. Each run churns
//! the source (seeded), starts a job, and at a seeded moment injects one fault: SIGKILL of the
//! source daemon, SIGKILL of the target daemon, a cut of every connection, or a stall of a few
//! seconds. Killed daemons are restarted; the relationship must then reach a verified
//! recovery point equal to the source, and the target's recorded recovery point must describe
//! exactly what the target holds. A target found at a mix of two states, or a verified job that
//! lost data, counts as a failure.
//!
//! CI runs `MOVER_SOAK_RUNS` runs (default 3) so the harness stays sound;
//! `bash scripts/soak.sh 1000` runs a thousand and writes the figures to results/.

mod node;

use mover::churn::{churn, ChurnSpec};
use mover::gen::{generate, Rng, TreeSpec};
use node::{need_root, tree_hash, Node, Scratch};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a run may take to get back to a verified recovery point after its fault.
const RECOVERY: Duration = Duration::from_secs(120);
/// Longest stall injected.
const MAX_STALL: Duration = Duration::from_secs(4);

/// A proxy on 127.0.0.1 forwarding to `target`, which can cut every connection or hold all
/// traffic for a while.
struct FaultProxy {
    port: u16,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stalled: Arc<AtomicBool>,
}

impl FaultProxy {
    fn start(target: u16) -> FaultProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stalled = Arc::new(AtomicBool::new(false));
        let (c, st) = (conns.clone(), stalled.clone());
        std::thread::spawn(move || {
            for a in l.incoming() {
                let Ok(client) = a else { break };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                {
                    let mut all = c.lock().unwrap();
                    all.retain(|s| s.peer_addr().is_ok());
                    all.push(client.try_clone().unwrap());
                    all.push(server.try_clone().unwrap());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (st1, st2) = (st.clone(), st.clone());
                std::thread::spawn(move || pump(client, server, st1));
                std::thread::spawn(move || pump(s2, c2, st2));
            }
        });
        FaultProxy {
            port,
            conns,
            stalled,
        }
    }

    fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn stall(&self, d: Duration) {
        self.stalled.store(true, Ordering::SeqCst);
        std::thread::sleep(d);
        self.stalled.store(false, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, stalled: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillSource,
    KillTarget,
    Cut,
    Stall,
}

#[derive(Debug, Default)]
struct Tally {
    runs: u64,
    faults: [u64; 4],
    recovery_points_checked: u64,
    mixed: u64,
    lost: u64,
    jobs_done_before_the_fault: u64,
}

/// The last attempt succeeded, no job runs, and the attempt is the one asked for at `asked`
/// or later (the view gives attempt times to the second).
fn synced_since(v: &Value, asked: &str) -> bool {
    v["last_attempt"]["ok"] == true
        && v["job"].is_null()
        && v["last_attempt"]["time"]
            .as_str()
            .is_some_and(|t| t >= asked)
}

/// Now, as the view writes attempt times (RFC 3339, to the second), and rounded down so an
/// attempt that ends within this second counts.
fn now_stamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The recovery point the target records (tree hash, hex) and the tree hash of what it holds.
fn recorded_and_held(dst: &Path) -> (String, String) {
    let rp = mover::recovery_point(dst)
        .expect("the recovery point is readable")
        .expect("the target has a recovery point");
    let (t, c, _) =
        mover::tree::hash::hash_dir(dst, mover::tree::hash::HashOptions { owners: true }, false)
            .unwrap();
    let _ = c;
    (format!("{:032x}", rp.tree_hash), format!("{t:032x}"))
}

#[test]
fn daemons_recover_from_seeded_kills_cuts_and_stalls_to_a_verified_recovery_point() {
    need_root();
    let runs: u64 = std::env::var("MOVER_SOAK_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let first: u64 = std::env::var("MOVER_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let t = Scratch::new();
    let (da, db) = (t.path().join("a"), t.path().join("b"));
    let (a_ports, b_ports) = (
        (node::free_port(), node::free_port()),
        (node::free_port(), node::free_port()),
    );
    let mut a = Node::start_on(&da, a_ports.0, a_ports.1);
    let mut b = Node::start_on(&db, b_ports.0, b_ports.1);
    let proxy = FaultProxy::start(b.listen);
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    generate(
        &src,
        &TreeSpec {
            seed: first,
            small_files: 120,
            large_files: 2,
            large_size: 3 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::create_dir(&dst).unwrap();
    let port = proxy.port.to_string();
    let v = a.cli_ok(&[
        "relationship",
        "create",
        "--source-path",
        src.to_str().unwrap(),
        "--target-address",
        "127.0.0.1",
        "--target-port",
        &port,
        "--target-path",
        dst.to_str().unwrap(),
        "--json",
    ]);
    let id = v["id"].as_str().unwrap().to_string();
    b.cli_ok(&["relationship", "authorize", &id]);
    a.wait_for("source", &id, "initial sync", |v| synced_since(v, ""));
    assert_eq!(
        tree_hash(&src),
        tree_hash(&dst),
        "the initial sync replicated the source"
    );
    // Jobs run when asked (replicate), not on their own, so each run has one job to disturb,
    // and at 4 MiB/s, so a run's changes take about a second to send and the fault lands
    // inside the job more often than not.
    a.cli_ok(&[
        "relationship",
        "modify",
        &id,
        "--disable",
        "--bandwidth-limit",
        "4194304",
        "--json",
    ]);

    let mut tally = Tally::default();
    let started = Instant::now();
    let mut previous = tree_hash(&src).0;
    for seed in first..first + runs {
        let mut rng = Rng(seed);
        churn(
            &src,
            &ChurnSpec {
                seed,
                ops: 12,
                max_files: 200,
                large_max: 2 << 20,
            },
        )
        .unwrap();
        // A few MiB of new data per run, so the job is still sending when the fault comes.
        let mut bulk = vec![0u8; (2 << 20) + rng.below(4 << 20) as usize];
        rng.fill(&mut bulk);
        // The churn may have renamed a directory or a symlink (dangling, perhaps) to this name:
        // the bulk file takes its place.
        let bulk_path = src.join(format!("bulk-{}", seed % 5));
        match std::fs::symlink_metadata(&bulk_path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&bulk_path).unwrap(),
            Ok(m) if !m.is_file() => std::fs::remove_file(&bulk_path).unwrap(),
            _ => {}
        }
        std::fs::write(&bulk_path, &bulk).unwrap();
        let want = tree_hash(&src);
        let fault = match rng.below(4) {
            0 => Fault::KillSource,
            1 => Fault::KillTarget,
            2 => Fault::Cut,
            _ => Fault::Stall,
        };
        // An attempt of the previous run may end within this second: wait into the next.
        std::thread::sleep(Duration::from_millis(
            1000 - u64::from(chrono::Utc::now().timestamp_subsec_millis().min(999)),
        ));
        let before = now_stamp();
        a.cli_ok(&["relationship", "replicate", &id, "--json"]);
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        if synced_since(&a.view("source", &id), &before) {
            tally.jobs_done_before_the_fault += 1;
        }
        match fault {
            Fault::KillSource => {
                a.kill();
                a = Node::start_on(&da, a_ports.0, a_ports.1);
            }
            Fault::KillTarget => {
                b.kill();
                // Dead mid-job: the recovery point on disk is the last verified state or the
                // new one, never anything in between.
                let rp = mover::recovery_point(&dst)
                    .expect("the recovery point is readable")
                    .expect("the target has a recovery point");
                tally.recovery_points_checked += 1;
                if rp.tree_hash != previous && rp.tree_hash != want.0 {
                    tally.mixed += 1;
                    eprintln!("seed {seed}: after the kill the recovery point is neither state");
                }
                b = Node::start_on(&db, b_ports.0, b_ports.1);
            }
            Fault::Cut => proxy.cut(),
            Fault::Stall => proxy.stall(Duration::from_millis(
                rng.below(MAX_STALL.as_millis() as u64),
            )),
        }
        tally.faults[fault as usize] += 1;
        // The job resumes on its own (a killed source resumes at restart, a failed session
        // retries); a run whose job died with its daemon before reporting gets asked again.
        let t0 = Instant::now();
        loop {
            let v = a.view("source", &id);
            if synced_since(&v, &before) {
                break;
            }
            if v["job"].is_null() && v["last_attempt"]["ok"] == false {
                a.cli_ok(&["relationship", "replicate", &id, "--json"]);
            }
            assert!(
                t0.elapsed() < RECOVERY,
                "seed {seed} ({fault:?}): no verified recovery point within {RECOVERY:?}; view {v:#}\nsource log:\n{}\ntarget log:\n{}\nsource threads:\n{}\ntarget threads:\n{}",
                a.log(),
                b.log(),
                a.threads(),
                b.threads()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        tally.runs += 1;
        let held = tree_hash(&dst);
        if held != want {
            tally.lost += 1;
            eprintln!("seed {seed} ({fault:?}): verified, yet the target differs from the source");
        }
        previous = want.0;
        let (recorded, now) = recorded_and_held(&dst);
        tally.recovery_points_checked += 1;
        if recorded != now {
            tally.mixed += 1;
            eprintln!(
                "seed {seed} ({fault:?}): the target holds {now}, its recovery point says {recorded}"
            );
        }
        if seed % 50 == 0 {
            eprintln!(
                "soak: {} runs, {tally:?}, {:?}",
                tally.runs,
                started.elapsed()
            );
        }
    }
    let line = format!(
        "runs {} faults kill_source {} kill_target {} cut {} stall {} done_before_fault {} recovery_points_checked {} mixed {} lost {} seconds {:.0}",
        tally.runs,
        tally.faults[0],
        tally.faults[1],
        tally.faults[2],
        tally.faults[3],
        tally.jobs_done_before_the_fault,
        tally.recovery_points_checked,
        tally.mixed,
        tally.lost,
        started.elapsed().as_secs_f64()
    );
    println!("SOAK {line}");
    if let Ok(p) = std::env::var("MOVER_SOAK_REPORT") {
        std::fs::write(p, format!("{line}\n")).unwrap();
    }
    assert_eq!(tally.runs, runs);
    assert_eq!((tally.mixed, tally.lost), (0, 0), "{tally:?}");
}
