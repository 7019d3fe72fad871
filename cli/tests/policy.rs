//! End to end: snapshot policies and the snapshot modes, with two `mover daemon` processes on
//! 127.0.0.1 driven through the CLI, sources and targets on loop-mounted btrfs, XFS and ext4
//! images. Needs root (mounts, read-only targets).

mod node;

use node::{create, fill, mount, need_root, run, stderr, tree_hash, try_create, Node, Scratch};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Kept snapshots of `role` on node `n`, as `mover snapshot list --json` gives them.
fn snapshots(n: &Node, role: &str) -> Vec<Value> {
    let v = n.cli_ok(&["snapshot", "list", "--json"]);
    v.as_array()
        .unwrap()
        .iter()
        .filter(|x| x["role"] == role)
        .cloned()
        .collect()
}

fn wait(what: &str, ok: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "waited 60 s for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// snapshot-policy mode, btrfs subvolume source (btrfs snapshots) to XFS target (reflink
/// clones): only policy snapshots travel, in order; each is kept read-only under both
/// `.snapshot` directories with exactly the source's state when taken; expiry removes them on
/// each side at its own time.
#[test]
fn policy_snapshots_arrive_in_order_read_only_under_dot_snapshot_and_expire_on_both_sides() {
    need_root();
    let t = Scratch::new();
    let (a, b) = (
        Node::start(&t.path().join("a")),
        Node::start(&t.path().join("b")),
    );
    let (btrfs, xfs) = (mount(&t, "btrfs"), mount(&t, "xfs"));
    let src = btrfs.join("vol");
    run(Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&src));
    fill(&src.join("d"), 10, 30_000, 7);
    let dst = xfs.join("replica");
    std::fs::create_dir(&dst).unwrap();

    // A policy that would fire only weekly: `policy run` fires it now. Source snapshots are
    // kept 12 s, the target's 20 s.
    a.cli_ok(&[
        "policy",
        "create",
        "weekly",
        "--days",
        "sun",
        "--at",
        "03:00",
        "--time-zone",
        "Europe/Berlin",
        "--expire-after",
        "12s",
        "--json",
    ]);
    let out = try_create(&a, b.listen, &src, &dst, &["--mode", "snapshot-policy"]);
    assert_eq!(
        out.status.code(),
        Some(9),
        "a snapshot mode needs a policy: {}",
        stderr(&out)
    );
    let id = create(
        &a,
        &b,
        &src,
        &dst,
        &[
            "--mode",
            "snapshot-policy",
            "--policy",
            "weekly",
            "--target-expiry",
            "20s",
        ],
    );
    let v = a.view("source", &id);
    assert_eq!(
        (v["mode"].as_str(), v["target_expiry"].as_str()),
        (Some("snapshot_policy"), Some("20s")),
        "{v}"
    );
    b.cli_ok(&["relationship", "authorize", &id]);
    let p = a.cli_ok(&["policy", "list", "--json"]);
    assert_eq!(p[0]["relationships"][0], id.as_str(), "{p}");
    assert!(
        p[0]["next_fire"].as_str().unwrap().contains("T02:00:00Z")
            || p[0]["next_fire"].as_str().unwrap().contains("T01:00:00Z"),
        "{p}"
    );

    // No policy snapshot yet: nothing replicates, changes or not.
    std::thread::sleep(Duration::from_secs(2));
    assert!(names(&dst).is_empty(), "{:?}", names(&dst));

    let first = a.cli_ok(&["policy", "run", "weekly", "--json"]);
    assert_eq!(first[0]["name"], "1_weekly", "{first}");
    let state1 = tree_hash(&src);
    // Changed after the first snapshot: in the second, not in the first.
    std::fs::write(src.join("d/f0002"), b"changed between the snapshots").unwrap();
    std::fs::write(src.join("added"), b"added between").unwrap();
    let second = a.cli_ok(&["policy", "run", "weekly", "--json"]);
    assert_eq!(second[0]["name"], "2_weekly", "{second}");
    let state2 = tree_hash(&src);
    // Changed after the last snapshot: never replicated in this mode.
    std::fs::write(src.join("live-only"), b"not in any snapshot").unwrap();

    wait("both snapshots kept on the target", || {
        snapshots(&b, "target").len() == 2
    });
    let kept = snapshots(&b, "target");
    assert_eq!(
        (kept[0]["name"].as_str(), kept[1]["name"].as_str()),
        (Some("1_weekly"), Some("2_weekly")),
        "{kept:?}"
    );
    let snap = dst.join(".snapshot");
    assert_eq!(names(&snap), ["1_weekly", "2_weekly"]);
    assert_eq!(
        tree_hash(&snap.join("1_weekly")),
        state1,
        "the first as taken"
    );
    assert_eq!(
        tree_hash(&snap.join("2_weekly")),
        state2,
        "the second as taken"
    );
    assert_eq!(tree_hash(&dst), state2, "the target is the latest snapshot");
    assert!(!dst.join("live-only").exists());
    assert_eq!(tree_hash(&src.join(".snapshot/1_weekly")), state1);
    // Read-only even for root: the reflink clone's files and directories are immutable.
    for f in [
        snap.join("1_weekly/d/f0001"),
        src.join(".snapshot/2_weekly/d/f0001"),
    ] {
        assert!(
            std::fs::OpenOptions::new().append(true).open(&f).is_err(),
            "{} is writable",
            f.display()
        );
    }
    assert!(std::fs::write(src.join(".snapshot/1_weekly/new"), b"x").is_err());
    let sv = a.cli_ok(&["snapshot", "list", "--json"]);
    assert!(
        sv.as_array()
            .unwrap()
            .iter()
            .all(|x| x["state"] == "replicated"),
        "{sv}"
    );

    // Expiry: the source's go first (12 s), the target's after (20 s).
    wait("the source's snapshots to expire", || {
        snapshots(&a, "source").is_empty()
    });
    assert!(names(&src.join(".snapshot")).is_empty());
    wait("the target's snapshots to expire", || {
        snapshots(&b, "target").is_empty()
    });
    assert!(names(&snap).is_empty(), "{:?}", names(&snap));
    assert_eq!(tree_hash(&dst), state2, "expiry does not touch the replica");

    // Release works before expiry on either side.
    a.cli_ok(&["relationship", "modify", &id, "--target-expiry", "never"]);
    let third = a.cli_ok(&["policy", "run", "weekly", "--json"]);
    assert_eq!(third[0]["name"], "3_weekly", "{third}");
    wait("the third kept on the target", || {
        snapshots(&b, "target").len() == 1
    });
    b.cli_ok(&["snapshot", "release", &id[..8], "3", "--json"]);
    assert!(names(&snap).is_empty());
    a.cli_ok(&["snapshot", "release", &id[..8], "3"]);
    assert!(names(&src.join(".snapshot")).is_empty());
    let out = a.cli(&["policy", "delete", "weekly"]);
    assert_eq!(out.status.code(), Some(9), "linked: {}", stderr(&out));
    node::unmount_under(&dst);
    node::unmount_under(&b.dir);
}

/// snapshot-policy-with-continuous, XFS source to a btrfs subvolume target: a queued policy
/// snapshot is replicated before the continuous job that brings the live changes, and kept
/// as a read-only btrfs snapshot.
#[test]
fn with_continuous_a_queued_snapshot_goes_first_then_live_changes_follow() {
    need_root();
    let t = Scratch::new();
    let (a, b) = (
        Node::start(&t.path().join("a")),
        Node::start(&t.path().join("b")),
    );
    let (xfs, btrfs) = (mount(&t, "xfs"), mount(&t, "btrfs"));
    let src = xfs.join("data");
    fill(&src.join("d"), 10, 20_000, 8);
    let dst = btrfs.join("replica");
    run(Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&dst));
    a.cli_ok(&["policy", "create", "hourly", "--every", "1h"]);
    let id = create(
        &a,
        &b,
        &src,
        &dst,
        &[
            "--mode",
            "snapshot-policy-with-continuous",
            "--policy",
            "hourly",
        ],
    );
    b.cli_ok(&["relationship", "authorize", &id]);
    a.wait_for("source", &id, "the initial continuous job", |v| {
        v["last_attempt"]["ok"] == true && v["job"].is_null()
    });
    assert_eq!(tree_hash(&dst), tree_hash(&src));
    a.cli_ok(&["policy", "run", "hourly"]);
    let taken = tree_hash(&src);
    std::fs::write(src.join("after-the-snapshot"), b"live").unwrap();
    wait("the snapshot kept and the live change replicated", || {
        snapshots(&b, "target").len() == 1 && dst.join("after-the-snapshot").exists()
    });
    let kept = dst.join(".snapshot/1_hourly");
    assert_eq!(
        tree_hash(&kept),
        taken,
        "the snapshot, without the later change"
    );
    assert!(!kept.join("after-the-snapshot").exists());
    a.wait_for("source", &id, "the continuous job to end", |v| {
        v["last_attempt"]["ok"] == true && v["job"].is_null()
    });
    assert_eq!(tree_hash(&dst), tree_hash(&src));
    assert!(
        std::fs::write(kept.join("new"), b"x").is_err(),
        "a read-only btrfs snapshot"
    );
    let v = b.view("target", &id);
    assert_eq!(v["snapshots"]["kept"], 1, "{v}");
    node::unmount_under(&dst);
    node::unmount_under(&b.dir);
}

/// The snapshot modes on a file system with neither snapshots nor reflinks are refused, naming
/// it; continuous mode there is fine.
#[test]
fn snapshot_modes_on_ext4_are_refused_naming_the_file_system() {
    need_root();
    let t = Scratch::new();
    let (a, b) = (
        Node::start(&t.path().join("a")),
        Node::start(&t.path().join("b")),
    );
    let ext4 = mount(&t, "ext4");
    let src = ext4.join("data");
    fill(&src.join("d"), 3, 1000, 9);
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    a.cli_ok(&["policy", "create", "daily", "--at", "01:00"]);
    for mode in ["snapshot-policy", "snapshot-policy-with-continuous"] {
        let out = try_create(
            &a,
            b.listen,
            &src,
            &dst,
            &["--mode", mode, "--policy", "daily"],
        );
        assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
        let e = stderr(&out);
        assert!(
            e.contains("ext2/3/4") && e.contains("neither snapshots nor reflinks"),
            "{e}"
        );
    }
    let id = create(&a, &b, &src, &dst, &[]);
    let out = a.cli(&[
        "relationship",
        "modify",
        &id,
        "--mode",
        "snapshot-policy",
        "--policy",
        "daily",
    ]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert_eq!(a.view("source", &id)["mode"], "continuous");
    node::unmount_under(&b.dir);
}
