//! Event-driven continuous replication end to end: two `mover daemon` processes on 127.0.0.1,
//! driven through the CLI. The interval is an hour, so every job here was started by a change
//! the source's watch saw.

mod node;

use node::{create, fill, free_port, need_root, tree_hash, Node, Scratch};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest wait for the target to catch up with the source.
const CONVERGE: Duration = Duration::from_secs(90);

/// A source node watching with `detection`, and a target node; the interval is an hour.
fn nodes(t: &Scratch, detection: &str, extra: &str) -> (Node, Node) {
    let cfg = format!(
        "continuous_interval_secs = 3600\nchange_detection = \"{detection}\"\nsettle_ms = 100\n{extra}"
    );
    let a = Node::start_configured(&t.path().join("a"), free_port(), free_port(), &cfg);
    let b = Node::start(&t.path().join("b"));
    (a, b)
}

/// A relationship from `a` to `b`, authorized, after its first job.
fn replicating(a: &Node, b: &Node, src: &Path, dst: &Path) -> String {
    std::fs::create_dir_all(dst).unwrap();
    let id = create(a, b, src, dst, &[]);
    b.cli_ok(&["relationship", "authorize", &id, "--json"]);
    // The watch is placed as replication begins and its first job walks everything: changes
    // a test makes after that job are the ones events must carry. The log is read before the
    // view: a job that logged its whole walk was claimed by then, so an idle view means it ended.
    let t0 = Instant::now();
    loop {
        let placed = plain(&a.log()).contains("walking the whole tree: the watch was just placed");
        let v = a.view("source", &id);
        if placed && v["recovery_point"].is_object() && v["job"].is_null() {
            break;
        }
        assert!(
            t0.elapsed() < CONVERGE,
            "waited for the initial sync and the watch's first walk; view {v}\nlog:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    id
}

/// The daemon's log without its colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut it = log.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for c in it.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits until the target's tree equals the source's.
fn converges(a: &Node, id: &str, src: &Path, dst: &Path) {
    let t0 = Instant::now();
    loop {
        let v = a.view("source", id);
        if v["job"].is_null() && tree_hash(dst) == tree_hash(src) {
            return;
        }
        assert!(
            t0.elapsed() < CONVERGE,
            "the target did not converge; view {v}\nlog:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn churn_converges(detection: &str, seed: u64) {
    need_root();
    let t = Scratch::new();
    let (a, b) = nodes(&t, detection, "");
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    fill(&src.join("d"), 30, 3000, seed);
    fill(&src.join("e/f"), 30, 100, seed + 1);
    let id = replicating(&a, &b, &src, &dst);
    let v: Value = a.view("source", &id);
    assert_eq!(v["change_detection"], detection, "{v}");
    for round in 0..6u64 {
        mover::churn::churn(
            &src,
            &mover::churn::ChurnSpec {
                seed: seed * 100 + round,
                ops: 25,
                ..Default::default()
            },
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    converges(&a, &id, &src, &dst);
    // A single small change after the churn arrives too (a job that narrows to one directory).
    std::fs::create_dir_all(src.join("g")).unwrap();
    std::fs::write(src.join("g/late"), b"late").unwrap();
    converges(&a, &id, &src, &dst);
    assert_eq!(std::fs::read(dst.join("g/late")).unwrap(), b"late");
}

#[test]
fn a_small_change_is_replicated_by_a_walk_of_its_directory_only() {
    need_root();
    let t = Scratch::new();
    let (a, b) = nodes(&t, "auto", "");
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    for d in 0..20 {
        fill(&src.join(format!("d{d:02}")), 50, 100, d);
    }
    let id = replicating(&a, &b, &src, &dst);
    std::fs::write(src.join("d07/f0003"), b"changed").unwrap();
    converges(&a, &id, &src, &dst);
    let log = plain(&a.log());
    let walked: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("walked source and sent the entry list"))
        .collect();
    let last = walked.last().expect("a job ran");
    assert!(
        last.contains("narrowed=true") && last.contains("fresh=51"),
        "the job walked d07 (50 files and itself) and took the other 19 directories from the last list: {last}"
    );
}

#[test]
fn a_seeded_churn_converges_with_jobs_started_by_fanotify_events() {
    churn_converges("fanotify", 11);
}

#[test]
fn a_seeded_churn_converges_with_jobs_started_by_inotify_events() {
    churn_converges("inotify", 12);
}

#[test]
fn changes_beyond_the_bound_on_remembered_directories_converge_through_a_full_walk() {
    need_root();
    let t = Scratch::new();
    let (a, b) = nodes(&t, "auto", "watch_max_dirs = 2\n");
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    for d in 0..8 {
        fill(&src.join(format!("d{d}")), 3, 100, d);
    }
    let id = replicating(&a, &b, &src, &dst);
    for d in 0..8 {
        std::fs::write(src.join(format!("d{d}/new")), d.to_string()).unwrap();
    }
    converges(&a, &id, &src, &dst);
    assert!(
        a.log()
            .contains("walking the whole tree: changes were lost"),
        "the job after the overflow walked everything; log:\n{}",
        a.log()
    );
}

#[test]
fn a_log_appended_ten_times_a_second_does_not_hold_jobs_back() {
    need_root();
    let t = Scratch::new();
    let (a, b) = nodes(&t, "auto", "");
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    fill(&src.join("d"), 5, 1000, 7);
    std::fs::create_dir_all(src.join("logs")).unwrap();
    let id = replicating(&a, &b, &src, &dst);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let (log, stop) = (src.join("logs/app.log"), stop.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                std::io::Write::write_all(&mut f, format!("line {n}\n").as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Other changes keep arriving while the log is written.
    for i in 0..5 {
        let marker = format!("marker-{i}");
        std::fs::write(src.join(&marker), i.to_string()).unwrap();
        let t0 = Instant::now();
        while !dst.join(&marker).exists() {
            assert!(
                t0.elapsed() < CONVERGE,
                "{marker} never arrived; view {}\nlog:\n{}",
                a.view("source", &id),
                a.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let got = std::fs::read(dst.join("logs/app.log")).unwrap_or_default();
        let live = std::fs::read(src.join("logs/app.log")).unwrap();
        assert!(
            live.starts_with(&got) && (got.is_empty() || got.ends_with(b"\n")),
            "the target holds a complete earlier state of the log"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    appender.join().unwrap();
    converges(&a, &id, &src, &dst);
}
