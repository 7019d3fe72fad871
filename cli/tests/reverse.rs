//! Failback end to end: two `mover daemon`s on 127.0.0.1 driven through the CLI. Needs root
//! (targets are protected with read-only bind mounts).

mod node;

use node::{fail_over, fill, need_root, synced, synced_relationship, tree_hash, Node, Scratch};
use serde_json::Value;
use std::path::Path;

/// Bytes the last job sent, from its outcome ("completed, N bytes ...").
fn sent(v: &Value) -> u64 {
    let m = v["last_attempt"]["message"].as_str().unwrap();
    m.split(", ")
        .nth(1)
        .and_then(|b| b.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {m:?}"))
}

/// The paths of a reverse's report with what happened to each.
fn listed(v: &Value) -> Vec<(String, String)> {
    v["discarded"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["path"].as_str().unwrap().to_string(),
                i["change"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn has(v: &Value, path: &str, change: &str) -> bool {
    listed(v).contains(&(path.to_string(), change.to_string()))
}

/// Failback after a failover, then back: each direction's first job sends only what changed
/// since the common recovery point; what the old source changed after it is reverted there,
/// listed and kept aside; and a node whose state is from an older epoch is refused.
#[test]
fn reverse_and_back_send_only_differences_and_keep_the_old_sources_changes_aside() {
    need_root();
    let t = Scratch::new();
    let (a, b) = (
        Node::start(&t.path().join("a")),
        Node::start(&t.path().join("b")),
    );
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    fill(&src.join("big"), 8, 512 * 1024, 31);
    fill(&src.join("small"), 40, 2000, 32);
    std::fs::create_dir(&dst).unwrap();
    let id = synced_relationship(&a, &b, &src, &dst);

    // Failover: b takes writes. The old source, cut off, went on writing too.
    fail_over(&a, &b, &id);
    std::fs::write(dst.join("written-on-b"), vec![7u8; 3000]).unwrap();
    std::fs::write(dst.join("small/f0003"), vec![9u8; 2000]).unwrap();
    std::fs::remove_file(dst.join("small/f0005")).unwrap();
    // 8 KiB written inside a large file on b: only the blocks around it travel to a.
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new()
            .write(true)
            .open(dst.join("big/f0001"))
            .unwrap(),
        &[4u8; 8192],
        200_000,
    )
    .unwrap();
    let on_b = 3000 + 2000 + 3 * 4096;
    std::fs::write(src.join("late-on-a"), b"late").unwrap();
    std::fs::write(src.join("small/f0010"), vec![5u8; 2000]).unwrap();
    std::fs::remove_file(src.join("small/f0011")).unwrap();
    std::fs::create_dir_all(src.join("late-dir/sub")).unwrap();
    std::fs::write(src.join("late-dir/sub/x"), b"x").unwrap();
    // Come back from a: its f0010 and f0011 as they were at the recovery point.
    let on_a = 2 * 2000;

    // Failback, run on b (the target, which does not know a's address).
    let out = b.cli(&["relationship", "reverse", &id]);
    assert_eq!(out.status.code(), Some(9), "no source address: refused");
    let source_address = format!("127.0.0.1:{}", a.listen);
    let v = b.cli_ok(&[
        "relationship",
        "reverse",
        &id[..8],
        "--source-address",
        &source_address,
        "--json",
    ]);
    assert_eq!(v["discarded_on"], "peer", "{v}");
    assert_eq!(v["epoch"], 2, "make-writable and reverse: {v}");
    assert_eq!(v["relationship"]["role"], "source", "{v}");
    // Each side records the reverse under its new role.
    for (n, role) in [(&b, "source"), (&a, "target")] {
        let (_, events) = n.get("/v1/events?limit=1000");
        let reversed = events.as_array().unwrap().iter().any(|e| {
            e["kind"] == "relationship_reversed" && e["role"] == role && e["relationship"] == id
        });
        assert!(reversed, "{role}: {events:#}");
    }
    for (p, c) in [
        ("late-on-a", "added"),
        ("small/f0010", "modified"),
        ("small/f0011", "deleted"),
        ("late-dir", "added"),
        ("late-dir/sub/x", "added"),
    ] {
        assert!(has(&v, p, c), "{p} {c} not listed: {v:#}");
    }
    assert_eq!(
        (
            v["discarded"]["added"].clone(),
            v["discarded"]["modified"].clone()
        ),
        (Value::from(4), Value::from(1)),
        "nothing else changed on a: {v:#}"
    );
    let aside = Path::new(v["discarded"]["directory"].as_str().unwrap()).to_path_buf();
    assert!(
        aside.starts_with(src.join(".mover-state/discarded")),
        "{aside:?}"
    );
    assert_eq!(std::fs::read(aside.join("late-on-a")).unwrap(), b"late");
    assert_eq!(
        std::fs::read(aside.join("small/f0010")).unwrap(),
        vec![5u8; 2000]
    );
    assert_eq!(std::fs::read(aside.join("late-dir/sub/x")).unwrap(), b"x");
    let report = std::fs::read_to_string(aside.join("report.txt")).unwrap();
    assert!(
        report.contains("small/f0011") && report.contains("late-on-a"),
        "{report}"
    );
    assert!(
        std::fs::write(src.join("y"), b"y").is_err(),
        "a is a read-only target at once"
    );
    let av = a.view("target", &id);
    assert_eq!(
        (av["epoch"].clone(), av["read_only"].clone()),
        (Value::from(2), Value::from("bind_mount"))
    );

    b.wait_for("source", &id, "the first job from b", |v| {
        synced(v) && v["state"] == "idle"
    });
    assert_eq!(tree_hash(&src), tree_hash(&dst), "a holds b's tree");
    let sent_b = sent(&b.view("source", &id));
    let changed = on_a + on_b;
    assert!(
        sent_b as f64 <= 1.2 * changed as f64 + (1 << 20) as f64 && sent_b <= changed + 8192,
        "reverse sent {sent_b} bytes for {changed} changed"
    );
    a.wait_for("target", &id, "a to see it", |v| {
        v["state"] == "idle" && v["epoch"] == 2
    });

    // And back, as a planned switch run on the source (b). What b wrote since the last job
    // (replication off) is kept aside there, on b.
    b.cli_ok(&["relationship", "modify", &id, "--disable"]);
    std::fs::write(dst.join("unsent-on-b"), b"unsent").unwrap();
    let w = b.cli_ok(&["relationship", "reverse", &id, "--json"]);
    // A planned switch releases a's target the way make-writable does: two epochs.
    assert_eq!(
        (w["discarded_on"].clone(), w["epoch"].clone()),
        (Value::from("this_node"), Value::from(4)),
        "{w}"
    );
    assert!(has(&w, "unsent-on-b", "added"), "{w:#}");
    let aside_b = Path::new(w["discarded"]["directory"].as_str().unwrap()).to_path_buf();
    assert!(
        aside_b.starts_with(dst.join(".mover-state/discarded")),
        "{aside_b:?}"
    );
    assert_eq!(
        std::fs::read(aside_b.join("unsent-on-b")).unwrap(),
        b"unsent"
    );
    assert!(!dst.join("unsent-on-b").exists());
    a.wait_for("source", &id, "the first job from a again", |v| {
        synced(v) && v["state"] == "continuous_replication_disabled"
    });
    assert_eq!(tree_hash(&src), tree_hash(&dst));
    let sent_a = sent(&a.view("source", &id));
    assert!(
        sent_a < 64 * 1024,
        "nothing differed, yet {sent_a} bytes were sent"
    );
    a.cli_ok(&["relationship", "modify", &id, "--enable"]);
    std::fs::write(src.join("after-back"), b"new").unwrap();
    a.wait_for("source", &id, "the next change", |_| {
        dst.join("after-back").exists()
    });

    // a's state from before the last reverse (restored from a backup, say): its ticket
    // requests are refused as split brain, saying b is newer.
    let mut a = a;
    a.terminate();
    {
        let db = control::store::Store::open(&a.dir.join("data/mover.db")).unwrap();
        let mut r = db
            .get(&control::model::RelationshipId::parse(&id).unwrap())
            .unwrap();
        assert_eq!(r.epoch, 4);
        r.epoch = 3;
        db.update(&r).unwrap();
    }
    let (dir, listen, api) = (a.dir.clone(), a.listen, a.api);
    drop(a);
    let a = Node::start_on(&dir, listen, api);
    a.cli_ok(&["relationship", "replicate", &id]);
    let v = a.wait_for("source", &id, "the refusal", |v| {
        v["last_attempt"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("split brain"))
    });
    let m = v["last_attempt"]["message"].as_str().unwrap();
    assert!(
        m.contains("this target is newer") || m.contains("its side is newer"),
        "{m}"
    );
}
