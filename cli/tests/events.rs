//! End to end: events and the audit log (docs/api.md "Events and audit") on real daemons on
//! 127.0.0.1. The replication test needs root (targets are protected with read-only bind
//! mounts).

mod node;

use node::{fail_over, fill, need_root, synced_relationship, Node, Scratch, WAIT};
use serde_json::{json, Value};
use std::io::BufRead;
use std::process::{Command, Stdio};

/// Every event the node's admin token may read (all of them), oldest first.
fn events(n: &Node) -> Vec<Value> {
    let (code, v) = n.get("/v1/events?since=0&limit=1000");
    assert_eq!(code, 200, "{v}");
    v.as_array().unwrap().clone()
}

fn of_kind<'a>(all: &'a [Value], kind: &str, id: &str) -> Vec<&'a Value> {
    all.iter()
        .filter(|e| e["kind"] == kind && e["relationship"] == id)
        .collect()
}

fn message(e: &Value) -> &str {
    e["message"].as_str().unwrap()
}

/// Waits until the node has an event of `kind` about `id`; returns it.
fn wait_event(n: &Node, kind: &str, id: &str) -> Value {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(e) = of_kind(&events(n), kind, id).first() {
            return (*e).clone();
        }
        assert!(
            t0.elapsed() < WAIT,
            "no {kind} event for {id}: {:#?}\nlog:\n{}",
            events(n),
            n.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_failed_job_its_retries_and_an_unreachable_peer_are_events_read_by_api_and_cli() {
    need_root();
    let t = Scratch::new();
    let (a, mut b, src, dst) = node::pair(&t);
    fill(&src, 5, 10_000, 1);
    std::fs::create_dir(&dst).unwrap();
    let id = synced_relationship(&a, &b, &src, &dst);

    // The target was asked to authorize, and was authorized.
    let asked = wait_event(&b, "authorization_requested", &id);
    assert_eq!(asked["role"], "target");
    assert!(message(&asked).contains(node::s(&dst)), "{asked}");
    let authorized = wait_event(&b, "authorized", &id);
    assert!(authorized["id"].as_i64() > asked["id"].as_i64());

    // The target goes away: the job's sessions fail, are retried, and the job fails.
    let (listen, api) = (b.listen, b.api);
    b.kill();
    std::fs::write(src.join("new"), b"x").unwrap();
    a.cli_ok(&["relationship", "replicate", &id]);
    a.wait_for("source", &id, "the job to fail", |v| {
        v["last_attempt"]["ok"] == false && v["job"].is_null()
    });
    let failed = wait_event(&a, "job_failed", &id);
    assert_eq!(failed["role"], "source");
    assert!(message(&failed).starts_with("job failed: "), "{failed}");
    assert!(failed["time"].as_str().unwrap().ends_with('Z'), "{failed}");
    assert!(failed["unix"].as_i64().unwrap() > 1_600_000_000, "{failed}");
    let all = events(&a);
    assert!(
        !of_kind(&all, "job_retried", &id).is_empty(),
        "sessions were retried first: {all:#?}"
    );
    // Polls went on failing all along; the outage is one event, not one per poll.
    wait_event(&a, "peer_unreachable", &id);
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(
        of_kind(&events(&a), "peer_unreachable", &id).len(),
        1,
        "{:#?}",
        events(&a)
    );

    // The CLI reads the same event, one JSON object per line, and from an id on.
    let out = a.cli(&["events", "--json"]);
    assert!(out.status.success(), "{}", node::stderr(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.contains(&failed), "{lines:#?}");
    let before = (failed["id"].as_i64().unwrap() - 1).to_string();
    let out = a.cli(&["events", "--json", "--since", &before, "--limit", "1"]);
    let first: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first, failed);
    let text = a.cli(&["events"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("job_failed") && l.contains(&id[..8])),
        "{text}"
    );

    // The target comes back: reachable again, once.
    let b = Node::start_on(&t.path().join("b"), listen, api);
    wait_event(&a, "peer_reachable", &id);

    // `--follow` prints what happens after it started: the failover on the target.
    let mut follow = Command::new(assert_cmd::cargo::cargo_bin("mover"))
        .args(["events", "--follow", "--json", "--api", &b.url()])
        .env("MOVER_TOKEN", &b.token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    a.cli_ok(&["relationship", "replicate", &id]);
    a.wait_for("source", &id, "a job to succeed again", node::synced);
    wait_event(&a, "job_recovered", &id);
    fail_over(&a, &b, &id);
    let t0 = std::time::Instant::now();
    let writable = loop {
        let left = WAIT.saturating_sub(t0.elapsed());
        let l = rx
            .recv_timeout(left)
            .expect("a made_writable line from --follow");
        let e: Value = serde_json::from_str(&l).unwrap();
        if e["kind"] == "made_writable" {
            break e;
        }
    };
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(writable["relationship"], id.as_str());
    assert_eq!(writable["role"], "target");
    // The source learns of it at its next poll.
    wait_event(&a, "relationship_ended", &id);
}

#[test]
fn a_target_says_once_when_its_source_went_silent_and_when_it_is_heard_again() {
    need_root();
    let t = Scratch::new();
    let (mut a, b, src, dst) = node::pair(&t);
    fill(&src, 3, 1_000, 2);
    std::fs::create_dir(&dst).unwrap();
    let id = synced_relationship(&a, &b, &src, &dst);
    assert!(of_kind(&events(&b), "peer_unreachable", &id).is_empty());

    // The source's node dies (SIGKILL): 30 s later the target shows it disconnected, and
    // says so once.
    let (listen, api) = (a.listen, a.api);
    a.kill();
    let silent = wait_event(&b, "peer_unreachable", &id);
    assert_eq!(silent["role"], "target", "{silent}");
    assert!(message(&silent).contains(node::s(&dst)), "{silent}");
    assert_eq!(b.view("target", &id)["state"], "disconnected");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(
        of_kind(&events(&b), "peer_unreachable", &id).len(),
        1,
        "{:#?}",
        events(&b)
    );

    // Back: its first poll reaches the target, which says so once.
    let a = Node::start_on(&t.path().join("a"), listen, api);
    let back = wait_event(&b, "peer_reachable", &id);
    assert_eq!(back["role"], "target", "{back}");
    assert!(back["id"].as_i64() > silent["id"].as_i64());
    b.wait_for("target", &id, "the source heard from again", |v| {
        v["state"] != "disconnected"
    });
    // And replicates again.
    std::fs::write(src.join("after"), b"y").unwrap();
    a.cli_ok(&["relationship", "replicate", &id]);
    node::eventually("a job after the outage", WAIT, || {
        std::fs::read(dst.join("after"))
            .ok()
            .filter(|d| d == b"y")
            .ok_or_else(|| format!("no {}/after yet; log:\n{}", dst.display(), a.log()))
    });
    let all = events(&b);
    assert_eq!(of_kind(&all, "peer_reachable", &id).len(), 1, "{all:#?}");
    assert_eq!(of_kind(&all, "peer_unreachable", &id).len(), 1, "{all:#?}");
}

#[test]
fn a_refused_request_is_in_the_audit_log_which_only_admins_read() {
    let t = Scratch::new();
    let a = Node::start(&t.path().join("a"));
    let (code, v) = a.call(
        "POST",
        "/v1/tokens",
        Some(&json!({ "name": "watcher", "role": "observer" })),
    );
    assert_eq!(code, 201, "{v}");
    let observer = v["token"].as_str().unwrap().to_string();

    // The observer may not create relationships: 403, and audited with its name.
    let spec = json!({
        "source_path": t.path().join("src"),
        "target_address": "127.0.0.1",
        "target_path": "/srv/replica",
    });
    let (code, v) = a.call_as(
        Some(&observer),
        "POST",
        "/v1/replication/source-relationships",
        Some(&spec),
    );
    assert_eq!(code, 403, "{v}");
    // No token, and an unknown one: 401, audited too.
    let some_id = "ab".repeat(16);
    let rel = format!("/v1/replication/source-relationships/{some_id}");
    assert_eq!(a.call_as(None, "DELETE", &rel, None).0, 401);
    assert_eq!(a.call_as(Some("mvr_nope"), "DELETE", &rel, None).0, 401);
    // Reads are not audited.
    assert_eq!(a.call_as(Some(&observer), "GET", "/v1/events", None).0, 200);

    let (code, log) = a.get("/v1/audit");
    assert_eq!(code, 200, "{log}");
    let log = log.as_array().unwrap();
    let refused = log
        .iter()
        .find(|e| e["status"] == 403)
        .unwrap_or_else(|| panic!("no 403 entry: {log:#?}"));
    assert_eq!(
        refused["caller"],
        json!({ "kind": "token", "name": "watcher" })
    );
    assert_eq!(refused["method"], "POST");
    assert_eq!(refused["route"], "/v1/replication/source-relationships");
    assert!(
        refused["reason"].as_str().unwrap().contains("SOURCE_WRITE"),
        "{refused}"
    );
    assert!(
        refused["time"].as_str().unwrap().ends_with('Z'),
        "{refused}"
    );
    // The admin's token creation came first, and succeeded.
    assert_eq!(
        log[0]["caller"],
        json!({ "kind": "token", "name": "admin" })
    );
    assert_eq!(log[0]["route"], "/v1/tokens");
    assert_eq!(log[0]["status"], 201);
    let unauthenticated: Vec<&Value> = log.iter().filter(|e| e["status"] == 401).collect();
    assert_eq!(unauthenticated.len(), 2, "{log:#?}");
    assert_eq!(unauthenticated[0]["caller"], json!({ "kind": "no_token" }));
    assert_eq!(
        unauthenticated[1]["caller"],
        json!({ "kind": "unknown_token" })
    );
    for e in &unauthenticated {
        assert_eq!(e["route"], "/v1/replication/source-relationships/{id}");
        assert_eq!(e["relationship"], some_id.as_str());
    }
    assert_eq!(log.len(), 4, "only the mutating calls: {log:#?}");

    // Only an admin reads it, through the API and the CLI.
    let (code, v) = a.call_as(Some(&observer), "GET", "/v1/audit", None);
    assert_eq!(code, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("ADMIN"), "{v}");
    let out = a.cli(&["audit", "--json"]);
    assert!(out.status.success(), "{}", node::stderr(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.contains(refused), "{lines:#?}");
    let out = Command::new(assert_cmd::cargo::cargo_bin("mover"))
        .args(["audit", "--api", &a.url()])
        .env("MOVER_TOKEN", &observer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", node::stderr(&out));
}
