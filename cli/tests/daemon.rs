//! End to end: two (or three) `mover daemon` processes on 127.0.0.1, driven only through the
//! `mover` CLI and the REST API. Needs root (targets are protected with read-only bind mounts).

mod node;

use node::{
    create, damage_row, fail_over, fill, need_root, s, stderr, synced, synced_relationship,
    tree_hash, try_create, Node, Scratch,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[test]
fn relationship_lifecycle_through_cli_and_rest() {
    need_root();
    let t = Scratch::new();
    let (a, b, src, dst) = node::pair(&t);
    fill(&src.join("d"), 40, 50_000, 1);
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(dst.join("stray"), b"x").unwrap();
    let id = create(&a, &b, &src, &dst, &[]);

    // The target lists it as awaiting authorization; nothing runs before it is accepted.
    let list = b.cli_ok(&["relationship", "list", "--role", "target", "--json"]);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["state"], "awaiting_authorization");
    let (code, v) = a.call(
        "POST",
        &format!("/v1/replication/source-relationships/{id}/replicate"),
        None,
    );
    assert_eq!(code, 409, "{v}");

    // A non-empty target is refused unless the operator says so.
    let out = b.cli(&["relationship", "authorize", &id]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    std::fs::remove_file(dst.join("stray")).unwrap();
    b.cli_ok(&["relationship", "authorize", &id, "--json"]);

    // Initial sync, verified by tree and content hash; both sides report it.
    let v = a.wait_for("source", &id, "initial sync", synced);
    assert!(v["recovery_point"]["time"].is_string(), "{v}");
    assert_eq!(tree_hash(&src), tree_hash(&dst));
    let v = b.wait_for("target", &id, "target to hear of the sync", |v| {
        v["last_attempt"]["ok"] == true
    });
    assert_eq!(v["authorized"], true);
    assert_eq!(v["read_only"], "bind_mount");
    // Prometheus metrics, without a token: the job's bytes and files, its duration, the
    // recovery point's age, relationships by state.
    let (code, m) = a.call_as(None, "GET", "/metrics", None);
    assert_eq!(code, 200);
    let m = m.as_str().unwrap().to_string();
    let sample = |name: &str| -> f64 {
        let line = m
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{relationship=\"{id}\"")))
            .unwrap_or_else(|| panic!("no {name} in\n{m}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(
        sample("mover_bytes_moved_total") >= (40 * 50_000) as f64,
        "{m}"
    );
    assert!(sample("mover_files_moved_total") >= 40.0, "{m}");
    assert!(sample("mover_recovery_point_age_seconds") >= 0.0, "{m}");
    // Continuous replication may have run another (no-op) job by now.
    let jobs: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("mover_job_duration_seconds_count "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(jobs >= 1 && m.contains("mover_relationships{state="), "{m}");
    let st = a.cli_ok(&["status", "--json"]);
    assert!(
        st.as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str() && r["role"] == "source"),
        "{st}"
    );

    // The authorized target is read-only, to root through its path and to everyone else.
    let e = std::fs::write(dst.join("new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "sh",
            "-c",
        ])
        .arg(format!("echo x > {}/d/f0000", s(&dst)))
        .output()
        .expect("setpriv (util-linux) runs commands as another user");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );

    // Modify: everything but the paths; the target sees the edit.
    let v = a.cli_ok(&[
        "relationship",
        "modify",
        &id,
        "--bandwidth-limit",
        "1000000000",
        "--disable",
        "--json",
    ]);
    assert_eq!(
        (v["enabled"].clone(), v["bandwidth_limit"].clone()),
        (json!(false), json!(1000000000))
    );
    a.wait_for("source", &id, "continuous replication to stop", |v| {
        v["state"] == "continuous_replication_disabled"
    });
    b.wait_for("target", &id, "the edit to reach the target", |v| {
        v["enabled"] == false
    });
    let (code, v) = a.call(
        "PATCH",
        &format!("/v1/replication/source-relationships/{id}"),
        Some(&json!({"target_path": "/elsewhere"})),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("cannot be edited"),
        "{v}"
    );

    // An 11th blackout window is refused with a clear error, and nothing changes.
    let mut args = vec!["relationship", "modify", id.as_str()];
    for _ in 0..11 {
        args.extend(["--blackout", "sat 01:00-02:00 UTC"]);
    }
    let out = a.cli(&args);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("at most 10 blackout windows; 11 given"),
        "{}",
        stderr(&out)
    );
    assert_eq!(a.view("source", &id)["blackout_windows"], json!([]));

    // Replicate now picks up a change even with continuous replication disabled.
    std::fs::write(src.join("d/added"), b"new file").unwrap();
    a.cli_ok(&["relationship", "replicate", &id]);
    a.wait_for("source", &id, "the manual job", |v| {
        synced(v) && dst.join("d/added").exists()
    });
    assert_eq!(tree_hash(&src), tree_hash(&dst));

    // Delete from the target side: writable again, data kept; the source shows it ended.
    b.cli_ok(&["relationship", "delete", &id, "--role", "target"]);
    std::fs::write(dst.join("now-writable"), b"ok").unwrap();
    assert_eq!(std::fs::read(dst.join("d/added")).unwrap(), b"new file");
    a.wait_for("source", &id, "the source to see the end", |v| {
        v["state"] == "ended"
    });
    a.cli_ok(&["relationship", "delete", &id]);
    assert_eq!(
        a.get(&format!("/v1/replication/source-relationships/{id}"))
            .0,
        404
    );

    // Delete from the source side: the target forgets it too and is writable.
    let dst2 = t.path().join("dst2");
    std::fs::create_dir(&dst2).unwrap();
    let id2 = create(&a, &b, &src, &dst2, &[]);
    b.cli_ok(&["relationship", "authorize", &id2]);
    a.wait_for("source", &id2, "second sync", synced);
    assert!(std::fs::write(dst2.join("x"), b"x").is_err());
    a.cli_ok(&["relationship", "delete", &id2]);
    assert_eq!(
        b.get(&format!("/v1/replication/target-relationships/{id2}"))
            .0,
        404
    );
    std::fs::write(dst2.join("x"), b"x").unwrap();
    assert_eq!(tree_hash(&src.join("d")), tree_hash(&dst2.join("d")));
}

#[test]
fn privileges_are_enforced_and_a_refused_request_changes_nothing() {
    need_root();
    let t = Scratch::new();
    let (a, b, src, dst) = node::pair(&t);
    fill(&src, 3, 1000, 2);
    std::fs::create_dir(&dst).unwrap();
    let observer = a.new_token("watcher", "observer");
    let tgt_op = a.new_token("tgt", "target-operator");
    let spec = json!({"source_path": s(&src), "target_address": "127.0.0.1", "target_port": b.listen, "target_path": s(&dst)});
    let path = "/v1/replication/source-relationships";

    let (code, v) = a.call_as(Some(&observer), "POST", path, Some(&spec));
    assert_eq!(code, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("SOURCE_WRITE"), "{v}");
    let (code, _) = a.call_as(Some(&tgt_op), "GET", path, None);
    assert_eq!(code, 403);
    let (code, _) = a.call_as(None, "GET", path, None);
    assert_eq!(code, 401);
    let (code, _) = a.call_as(Some("mvr_not_a_token"), "GET", path, None);
    assert_eq!(code, 401);
    let (code, _) = a.call_as(
        Some(&observer),
        "POST",
        "/v1/tokens",
        Some(&json!({"name": "x", "role": "admin"})),
    );
    assert_eq!(code, 403);
    // Nothing was created by the refused requests, here or on the target.
    assert_eq!(a.get(path).1, json!([]));
    assert_eq!(b.get("/v1/replication/target-relationships").1, json!([]));
    let (code, list) = a.call_as(Some(&observer), "GET", path, None);
    assert_eq!((code, list), (200, json!([])));
    // The daemon's own data dir (key, tokens) cannot be a source, nor a tree holding it.
    for p in [a.dir.join("data"), a.dir.clone()] {
        let mut bad = spec.clone();
        bad["source_path"] = json!(s(&p));
        let (code, v) = a.call("POST", path, Some(&bad));
        assert_eq!(code, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains("data dir"), "{v}");
    }
    // A misspelt setting is an error, not silently dropped.
    let mut typo = spec.clone();
    typo["bandwith_limit"] = json!(5);
    let (code, v) = a.call("POST", path, Some(&typo));
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("bandwith_limit"),
        "{v}"
    );

    // The CLI maps a 403 to exit code 7 and says which privilege is missing.
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("mover"))
        .args([
            "relationship",
            "create",
            "--source-path",
            s(&src),
            "--target-address",
            "127.0.0.1",
            "--target-path",
            s(&dst),
            "--api",
            &a.url(),
        ])
        .args(["--target-port", &b.listen.to_string()])
        .env("MOVER_TOKEN", &observer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("SOURCE_WRITE"), "{}", stderr(&out));

    // A target operator on the target may authorize; a source operator may not.
    let id = create(&a, &b, &src, &dst, &[]);
    let src_op = b.new_token("src", "source-operator");
    let (code, _) = b.call_as(
        Some(&src_op),
        "POST",
        &format!("/v1/replication/target-relationships/{id}/authorize"),
        None,
    );
    assert_eq!(code, 403);
    assert_eq!(b.view("target", &id)["authorized"], false);
    let (code, _) = b.call_as(
        Some(&src_op),
        "DELETE",
        &format!("/v1/replication/target-relationships/{id}"),
        None,
    );
    assert_eq!(code, 403);
    assert_eq!(
        b.get(&format!("/v1/replication/target-relationships/{id}"))
            .0,
        200
    );
}

#[test]
fn unauthenticated_peer_is_refused() {
    need_root();
    let t = Scratch::new();
    let (mut a, b, src, dst) = node::pair(&t);
    fill(&src, 5, 10_000, 3);
    std::fs::create_dir(&dst).unwrap();
    // The source may name the target's certificate up front: another one is refused at the
    // first contact and nothing is created on either side.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = a.cli(&[
        "relationship",
        "create",
        "--source-path",
        s(&src),
        "--target-address",
        "127.0.0.1",
        "--target-port",
        &b.listen.to_string(),
        "--target-path",
        s(&dst),
        "--target-fingerprint",
        &wrong,
    ]);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not match the pinned"),
        "{}",
        stderr(&out)
    );
    assert_eq!(a.get("/v1/replication/source-relationships").1, json!([]));
    assert_eq!(b.get("/v1/replication/target-relationships").1, json!([]));
    let fp = b.cli_ok(&["node", "--json"])["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let id = create(&a, &b, &src, &dst, &["--target-fingerprint", &fp]);
    assert_eq!(a.view("source", &id)["peer_fingerprint"], fp.as_str());
    assert_eq!(
        b.view("target", &id)["peer_fingerprint"],
        a.cli_ok(&["node", "--json"])["fingerprint"]
    );
    b.cli_ok(&["relationship", "authorize", &id]);
    a.wait_for("source", &id, "initial sync", synced);
    let before = tree_hash(&dst);

    // Another machine with a copy of the source's database but its own certificate claims
    // the relationship: the target refuses every request, so no data moves.
    a.kill();
    let c_dir = t.path().join("c");
    std::fs::create_dir_all(c_dir.join("data")).unwrap();
    for f in ["mover.db", "mover.db-wal"] {
        if a.dir.join("data").join(f).exists() {
            std::fs::copy(a.dir.join("data").join(f), c_dir.join("data").join(f)).unwrap();
        }
    }
    std::fs::write(c_dir.join("data/admin.token"), &a.token).unwrap();
    std::fs::write(src.join("change"), b"should not arrive").unwrap();
    let c = Node::start(&c_dir);
    c.cli_ok(&["relationship", "replicate", &id]);
    let v = c.wait_for("source", &id, "the refusal", |v| {
        v["last_attempt"]["ok"] == false
    });
    let msg = v["last_attempt"]["message"].as_str().unwrap();
    assert!(msg.contains("not the one pinned"), "{msg}");
    assert_eq!(tree_hash(&dst), before);
    assert!(!dst.join("change").exists());
    assert_eq!(b.view("target", &id)["authorized"], true);

    // A data-plane sender on the replication port in clear, without a ticket: refused,
    // unwritten.
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("mover"))
        .arg("send")
        .arg(&src)
        .args(["--to", &format!("127.0.0.1:{}", b.listen), "--retries", "1"])
        .arg("--insecure-plaintext")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("session not authorized")
            || stderr(&out).contains("accepts only encrypted sessions"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tree_hash(&dst), before);
}

/// File data bytes the last completed job sent, from its message.
fn sent_by_last_job(v: &Value) -> u64 {
    let m = v["last_attempt"]["message"].as_str().unwrap();
    m.split(", ")
        .nth(1)
        .and_then(|b| b.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {m:?}"))
}

/// Bytes sent by the running job, or None when no job runs.
fn bytes_done(v: &Value) -> Option<u64> {
    v["job"]["bytes_done"].as_u64()
}

#[test]
fn blackout_window_pauses_a_running_job_which_resumes_after_it() {
    blackout_pauses_and_resumes(None);
}

/// A window longer than a session may stay paused (here 3 s): the session ends at its chunk
/// boundary, and after the window the same job goes on in a new session that resumes the
/// target's journal instead of starting over.
#[test]
fn a_long_blackout_window_suspends_the_session_and_the_job_resumes_after_it() {
    blackout_pauses_and_resumes(Some(3));
}

fn blackout_pauses_and_resumes(max_pause_in_session: Option<u64>) {
    need_root();
    let t = Scratch::new();
    let extra = max_pause_in_session
        .map(|s| format!("max_pause_in_session_secs = {s}\n"))
        .unwrap_or_default();
    let a = Node::start_configured(
        &t.path().join("a"),
        node::free_port(),
        node::free_port(),
        &extra,
    );
    let b = Node::start(&t.path().join("b"));
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    fill(&src, 16, 1 << 20, 4);
    std::fs::create_dir(&dst).unwrap();
    // 16 MiB at 2 MiB/s: a job of about 8 s.
    let id = create(
        &a,
        &b,
        &src,
        &dst,
        &["--bandwidth-limit", "2097152", "--disabled"],
    );
    b.cli_ok(&["relationship", "authorize", &id]);
    // The window is the current minute (UTC): start the job 28-40 s into a minute so the
    // pause lasts some 20-30 s.
    while !(28..=40).contains(
        &chrono::Utc::now()
            .format("%S")
            .to_string()
            .parse::<u32>()
            .unwrap(),
    ) {
        std::thread::sleep(Duration::from_millis(200));
    }
    a.cli_ok(&["relationship", "replicate", &id]);
    let v = a.wait_for("source", &id, "the job to move data", |v| {
        bytes_done(v).is_some_and(|b| b > 0)
    });
    let total = v["job"]["bytes_total"].as_u64().unwrap();
    let now = chrono::Utc::now();
    let start = now.format("%H:%M").to_string();
    let end = (now + chrono::TimeDelta::minutes(1))
        .format("%H:%M")
        .to_string();
    let day = now.format("%a").to_string().to_lowercase();
    let spec = format!("{day} {start}-{end} UTC");
    a.cli_ok(&["relationship", "modify", &id, "--blackout", &spec]);

    let v = a.wait_for("source", &id, "the pause", |v| {
        v["state"] == "in_blackout_window" && v["job"]["paused"] == true
    });
    let paused_at = bytes_done(&v).unwrap();
    assert!(paused_at < total, "the job finished before the window: {v}");
    std::thread::sleep(Duration::from_secs(3));
    let v = a.view("source", &id);
    let still = bytes_done(&v).unwrap();
    assert!(
        still <= paused_at + (16 << 20) / 8,
        "data kept moving in the window: {paused_at} -> {still}"
    );
    // No job starts inside a window.
    let (code, e) = a.call(
        "POST",
        &format!("/v1/replication/source-relationships/{id}/replicate"),
        None,
    );
    assert_eq!(code, 409, "{e}");
    let tv = b.view("target", &id);
    assert_eq!(tv["state"], "in_blackout_window", "{tv}");

    // After the window the same job goes on from where it paused, and completes.
    let t0 = Instant::now();
    let v = a.wait_for("source", &id, "the resume", |v| {
        v["state"] == "running" && v["job"]["paused"] == false
    });
    assert!(
        bytes_done(&v).unwrap() >= still,
        "the job started over: {still} -> {v}"
    );
    a.wait_for("source", &id, "the job to complete", synced);
    assert!(t0.elapsed() < Duration::from_secs(50));
    let v = a.view("source", &id);
    assert!(
        v["last_attempt"]["message"]
            .as_str()
            .unwrap()
            .contains("completed"),
        "{v}"
    );
    assert_eq!(tree_hash(&src), tree_hash(&dst));
    if max_pause_in_session.is_some() {
        // The last session sent only what the suspended one had not.
        let sent = sent_by_last_job(&v);
        assert!(
            sent < total,
            "the job started over after the window: {sent} of {total} bytes resent"
        );
        assert!(
            a.log()
                .contains("session suspended for a long blackout window"),
            "{}",
            a.log()
        );
    }
}

#[test]
fn daemon_killed_mid_job_resumes_after_restart_with_its_database_intact() {
    need_root();
    let t = Scratch::new();
    let (mut a, b, src, dst) = node::pair(&t);
    fill(&src, 24, 1 << 20, 5);
    std::fs::create_dir(&dst).unwrap();
    // 24 MiB at 4 MiB/s: a job of about 6 s.
    let id = create(&a, &b, &src, &dst, &["--bandwidth-limit", "4194304"]);
    b.cli_ok(&["relationship", "authorize", &id]);
    a.wait_for("source", &id, "the job to be half way", |v| {
        bytes_done(v).is_some_and(|b| b >= 8 << 20)
    });
    a.kill();
    let (listen, api) = (a.listen, a.api);
    let a = Node::start_on(&a.dir.clone(), listen, api);
    let v = a.wait_for("source", &id, "the resumed job to complete", synced);
    assert!(
        v["last_attempt"]["message"]
            .as_str()
            .unwrap()
            .contains("completed"),
        "{v}"
    );
    assert_eq!(tree_hash(&src), tree_hash(&dst));
    // The receiver continued the interrupted job: no journal left, and fewer bytes than a
    // whole resend went over in the resumed job.
    assert!(!dst.join(".mover-state/journal").exists());
    let sent = sent_by_last_job(&v);
    assert!(sent < 24 << 20, "resumed job resent everything: {sent}");
    let db = control::store::Store::open(&a.dir.join("data/mover.db")).unwrap();
    assert_eq!(db.integrity_check().unwrap(), "ok");
    assert!(
        !db.get(&control::model::RelationshipId::parse(&id).unwrap())
            .unwrap()
            .job_running
    );
    drop(db);

    // SIGTERM: the daemon stops at a chunk boundary and exits 0.
    let mut a = a;
    let st = a.terminate();
    assert!(st.success(), "daemon exited {st} on SIGTERM");
}

#[test]
fn daemon_tells_systemd_it_is_ready_and_exits_cleanly_on_sigterm() {
    need_root();
    let t = Scratch::new();
    let sock_path = t.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let data = t.path().join("n");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("mover"))
        .arg("daemon")
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--listen",
            &format!("127.0.0.1:{}", node::free_port()),
            "--api",
            &format!("127.0.0.1:{}", node::free_port()),
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means the token exists and the API answers.
    assert!(data.join("admin.token").exists());
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
    // The unit file the README points to asks for exactly this protocol.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/mover.service"
    ))
    .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("KillSignal=SIGTERM"));
}

/// Two nodes and a relationship with one recovery point (`first`), then a second job that
/// changes existing files and adds 16 MiB, under way at 2 MiB/s when this returns. Bind `t`
/// first when destructuring, so it drops last: daemons are killed before its mounts go.
struct SecondJob {
    a: Node,
    b: Node,
    dst: std::path::PathBuf,
    id: String,
    first: (u128, Option<u128>),
    t: Scratch,
}

fn second_job_under_way(seed: u64) -> SecondJob {
    need_root();
    let t = Scratch::new();
    let (a, b, src, dst) = node::pair(&t);
    fill(&src.join("old"), 4, 256 << 10, seed);
    std::fs::create_dir(&dst).unwrap();
    let id = create(
        &a,
        &b,
        &src,
        &dst,
        &["--bandwidth-limit", "2097152", "--disabled"],
    );
    b.cli_ok(&["relationship", "authorize", &id]);
    a.cli_ok(&["relationship", "replicate", &id]);
    a.wait_for("source", &id, "the first recovery point", synced);
    let first = tree_hash(&dst);
    fill(&src.join("old"), 4, 256 << 10, seed + 1);
    fill(&src.join("new"), 16, 1 << 20, seed + 2);
    a.cli_ok(&["relationship", "replicate", &id]);
    a.wait_for("source", &id, "the second job to be under way", |v| {
        bytes_done(v).is_some_and(|b| b >= 3 << 20)
    });
    SecondJob {
        a,
        b,
        dst,
        id,
        first,
        t,
    }
}

#[test]
fn deleting_on_the_target_mid_job_reverts_to_the_last_recovery_point() {
    let SecondJob {
        t: _t,
        a,
        b,
        dst,
        id,
        first,
    } = second_job_under_way(6);
    b.cli_ok(&["relationship", "delete", &id, "--role", "target"]);
    assert_eq!(
        tree_hash(&dst),
        first,
        "the target is not at its last recovery point"
    );
    assert!(!dst.join(".mover-state/journal").exists());
    std::fs::write(dst.join("writable"), b"yes").unwrap();
    a.wait_for("source", &id, "the source to see the end", |v| {
        v["state"] == "ended" && v["job"].is_null()
    });
}

#[test]
fn make_writable_mid_job_reverts_exactly_and_reconnect_brings_the_source_state() {
    let SecondJob {
        t,
        a,
        b,
        dst,
        id,
        first,
    } = second_job_under_way(8);
    b.cli_ok(&["relationship", "make-writable", &id]);
    assert_eq!(
        tree_hash(&dst),
        first,
        "exactly the previous recovery point"
    );
    a.wait_for("source", &id, "the source to see the end", |v| {
        v["state"] == "ended" && v["job"].is_null()
    });
    a.cli_ok(&["relationship", "modify", &id, "--no-bandwidth-limit"]);
    a.cli_ok(&["relationship", "reconnect", &id]);
    a.wait_for("source", &id, "the job after the reconnect", |v| {
        synced(v) && v["state"] != "reverting_to_last_recovery_point"
    });
    assert_eq!(tree_hash(&dst), tree_hash(&t.path().join("src")));
}

#[test]
fn sigterm_mid_job_stops_at_a_chunk_boundary_and_the_next_start_resumes() {
    need_root();
    let t = Scratch::new();
    let (mut a, b, src, dst) = node::pair(&t);
    fill(&src, 16, 1 << 20, 9);
    std::fs::create_dir(&dst).unwrap();
    let id = create(&a, &b, &src, &dst, &["--bandwidth-limit", "4194304"]);
    b.cli_ok(&["relationship", "authorize", &id]);
    a.wait_for("source", &id, "the job to be under way", |v| {
        bytes_done(v).is_some_and(|b| b >= 4 << 20)
    });
    let t0 = Instant::now();
    let st = a.terminate();
    assert!(st.success(), "daemon exited {st} on SIGTERM");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}",
        t0.elapsed()
    );
    {
        let db = control::store::Store::open(&a.dir.join("data/mover.db")).unwrap();
        let r = db
            .get(&control::model::RelationshipId::parse(&id).unwrap())
            .unwrap();
        assert!(
            r.job_running,
            "the interrupted job must stay marked running"
        );
        assert!(r.last_attempt.unwrap().message.contains("resumes"));
    }
    let (dir, listen, api) = (a.dir.clone(), a.listen, a.api);
    drop(a);
    let a = Node::start_on(&dir, listen, api);
    let v = a.wait_for("source", &id, "the resumed job to complete", synced);
    let sent = sent_by_last_job(&v);
    assert!(
        sent < 16 << 20,
        "the resumed job started over: {sent} bytes"
    );
    assert_eq!(tree_hash(&src), tree_hash(&dst));
}

#[test]
fn target_daemon_killed_mid_job_comes_back_protected_and_the_job_completes() {
    need_root();
    let t = Scratch::new();
    let (a, mut b, src, dst) = node::pair(&t);
    fill(&src, 16, 1 << 20, 10);
    std::fs::create_dir(&dst).unwrap();
    let id = create(&a, &b, &src, &dst, &["--bandwidth-limit", "4194304"]);
    b.cli_ok(&["relationship", "authorize", &id]);
    a.wait_for("source", &id, "the job to be under way", |v| {
        bytes_done(v).is_some_and(|b| b >= 4 << 20)
    });
    b.kill();
    // The target is still protected while its daemon is down (the mounts outlive it).
    assert!(std::fs::write(dst.join("x"), b"x").is_err());
    let (dir, listen, api) = (b.dir.clone(), b.listen, b.api);
    drop(b);
    let b = Node::start_on(&dir, listen, api);
    let v = a.wait_for(
        "source",
        &id,
        "the job to complete after the target came back",
        synced,
    );
    assert!(
        v["last_attempt"]["message"]
            .as_str()
            .unwrap()
            .contains("completed"),
        "{v}"
    );
    assert_eq!(tree_hash(&src), tree_hash(&dst));
    assert!(std::fs::write(dst.join("x"), b"x").is_err());
    let db = control::store::Store::open(&b.dir.join("data/mover.db")).unwrap();
    assert_eq!(db.integrity_check().unwrap(), "ok");
}

#[test]
fn making_the_target_writable_ends_the_relationship_on_both_sides_and_keeps_the_data() {
    need_root();
    let t = Scratch::new();
    let (a, b, src, dst) = node::pair(&t);
    fill(&src, 6, 20_000, 11);
    std::os::unix::fs::chown(src.join("f0000"), Some(1000), Some(1000)).unwrap();
    std::fs::create_dir(&dst).unwrap();
    // Owners are mapped on the way (uid 1000 -> 2000, gid 1000 -> 3000).
    let id = create(
        &a,
        &b,
        &src,
        &dst,
        &["--map-uid", "1000:2000", "--map-gid", "1000:3000"],
    );
    b.cli_ok(&["relationship", "authorize", &id]);
    a.wait_for("source", &id, "initial sync", synced);
    assert!(std::fs::write(dst.join("x"), b"x").is_err());
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dst.join("f0000")).unwrap();
    assert_eq!((m.uid(), m.gid()), (2000, 3000));
    let m = std::fs::metadata(dst.join("f0001")).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (0, 0),
        "unmapped owners stay as they are"
    );
    // The map can be removed again; the target sees the edit.
    let v = a.cli_ok(&["relationship", "modify", &id, "--clear-id-map", "--json"]);
    assert_eq!(v["map_ids"], Value::Null, "{v}");
    b.wait_for("target", &id, "the edit to reach the target", |v| {
        v["map_ids"].is_null()
    });
    let synced_hash = tree_hash(&dst);

    // A source operator may not do it; a target operator may.
    let (code, v) = b.call(
        "POST",
        "/v1/tokens",
        Some(&json!({"name": "s", "role": "source-operator"})),
    );
    assert_eq!(code, 201, "{v}");
    let (code, _) = b.call_as(
        v["token"].as_str(),
        "POST",
        &format!("/v1/replication/target-relationships/{id}/make-writable"),
        None,
    );
    assert_eq!(code, 403);
    assert!(
        std::fs::write(dst.join("x"), b"x").is_err(),
        "a refused request changed nothing"
    );

    let v = b.cli_ok(&["relationship", "make-writable", &id, "--json"]);
    assert_eq!(
        (v["state"].clone(), v["read_only"].clone()),
        (json!("ended"), Value::Null),
        "{v}"
    );
    assert_eq!(
        tree_hash(&dst),
        synced_hash,
        "the target holds its last recovery point"
    );
    std::fs::write(dst.join("x"), b"failover writes").unwrap();
    // The source stops replicating: ended, and a replicate request is refused.
    a.wait_for("source", &id, "the source to see the end", |v| {
        v["state"] == "ended"
    });
    std::fs::write(src.join("later"), b"not replicated").unwrap();
    let (code, e) = a.call(
        "POST",
        &format!("/v1/replication/source-relationships/{id}/replicate"),
        None,
    );
    assert_eq!(code, 409, "{e}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(!dst.join("later").exists());
    // A second make-writable is a conflict; deleting on both sides forgets it, data kept.
    let out = b.cli(&["relationship", "make-writable", &id]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    b.cli_ok(&["relationship", "delete", &id, "--role", "target"]);
    a.cli_ok(&["relationship", "delete", &id]);
    assert_eq!(std::fs::read(dst.join("x")).unwrap(), b"failover writes");
}

#[test]
fn reconnect_after_make_writable_reverts_the_target_and_sends_only_what_differs() {
    need_root();
    let t = Scratch::new();
    let (a, b, src, dst) = node::pair(&t);
    fill(&src.join("big"), 8, 512 * 1024, 21);
    fill(&src.join("small"), 40, 2000, 22);
    std::fs::create_dir(&dst).unwrap();
    let id = synced_relationship(&a, &b, &src, &dst);
    let synced_hash = tree_hash(&dst);
    // Reconnect is for a relationship whose target was made writable.
    let out = a.cli(&["relationship", "reconnect", &id]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));

    // Both sides know the recovery point (the target learns it from the source's report).
    fail_over(&a, &b, &id);
    // Failover writes on the target: a new file, a changed one, a removed one, a new
    // directory; 3 small files' worth of changed bytes.
    std::fs::write(dst.join("written-on-target"), vec![7u8; 2000]).unwrap();
    std::fs::write(dst.join("small/f0003"), vec![9u8; 2000]).unwrap();
    std::fs::remove_file(dst.join("small/f0004")).unwrap();
    std::fs::create_dir_all(dst.join("new-dir/sub")).unwrap();
    std::fs::write(dst.join("new-dir/sub/x"), b"x").unwrap();
    // And large files changed in part: 8 KiB overwritten inside one, one cut short, one grown.
    {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dst.join("big/f0001"))
            .unwrap();
        f.write_all_at(&[5u8; 8192], 100_000).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dst.join("big/f0002"))
            .unwrap();
        f.set_len(300_000).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(dst.join("big/f0005"))
            .unwrap();
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all(&[6u8; 10_000]).unwrap();
    }
    assert_ne!(tree_hash(&dst), synced_hash);

    let v = a.cli_ok(&["relationship", "reconnect", &id[..8], "--json"]);
    assert_eq!(v["common"], true, "{v}");
    assert_eq!(
        v["relationship"]["epoch"], 2,
        "make-writable and reconnect: {v}"
    );
    assert!(v["target_difference"].is_string(), "{v}");
    assert_eq!(
        v["relationship"]["state"], "reverting_to_last_recovery_point",
        "{v}"
    );
    assert!(
        std::fs::write(dst.join("y"), b"y").is_err(),
        "the target is read-only again at once"
    );
    a.wait_for("source", &id, "the reverting job", |v| {
        synced(v) && v["state"] == "idle"
    });
    b.wait_for("target", &id, "the target to see it", |v| {
        v["state"] == "idle" && v["epoch"] == 2
    });
    assert_eq!(
        tree_hash(&dst),
        tree_hash(&src),
        "the target is the source again"
    );
    assert_eq!(tree_hash(&dst), synced_hash);
    let sent = sent_by_last_job(&a.view("source", &id));
    // Changed on the target: one rewritten and one removed small file (the new ones go), 8 KiB
    // inside a large file, the 224,288 bytes cut off another; the grown one is cut back.
    let changed = 2 * 2000 + 8192 + (512 * 1024 - 300_000);
    assert!(
        sent as f64 <= 1.2 * changed as f64 + (1 << 20) as f64,
        "reconnect sent {sent} bytes for {changed} changed"
    );
    // The blocks around what changed (4 KiB each), never a whole large file again.
    let restore = 2 * 2000 + 3 * 4096 + (512 * 1024 - 300_000) + 2 * 4096;
    assert!(
        sent <= restore,
        "large files travelled whole: {sent} sent, {restore} to restore"
    );
    // And it replicates again.
    std::fs::write(src.join("after-reconnect"), b"new").unwrap();
    a.wait_for("source", &id, "the next change", |_| {
        dst.join("after-reconnect").exists()
    });
}

/// A target daemon killed while making its target writable (here: the database says ended but
/// the directory is still protected and a job's journal is live) finishes the job at its next
/// start: it reverts to the last recovery point, lifts the protection, and still serves its API.
#[test]
fn an_interrupted_make_writable_is_finished_when_the_target_daemon_restarts() {
    let SecondJob {
        t: _t,
        a,
        mut b,
        dst,
        id,
        first,
    } = second_job_under_way(12);
    b.kill();
    assert!(
        dst.join(".mover-state/journal").exists(),
        "the cut job left no journal to revert"
    );
    {
        let db = control::store::Store::open(&b.dir.join("data/mover.db")).unwrap();
        let mut r = db
            .get(&control::model::RelationshipId::parse(&id).unwrap())
            .unwrap();
        assert_eq!(r.read_only, Some(control::readonly::Mode::BindMount));
        r.ended = true;
        db.update(&r).unwrap();
    }
    let (dir, listen, api) = (b.dir.clone(), b.listen, b.api);
    drop(b);
    let b = Node::start_on(&dir, listen, api);
    let v = b.view("target", &id);
    assert_eq!(
        (v["state"].clone(), v["read_only"].clone(), v["job"].clone()),
        (json!("ended"), Value::Null, Value::Null),
        "{v}"
    );
    assert_eq!(
        tree_hash(&dst),
        first,
        "the target is not at its last recovery point"
    );
    assert!(!dst.join(".mover-state/journal").exists());
    std::fs::write(dst.join("writable"), b"yes").unwrap();
    // The source learns of the end and stops its job.
    a.wait_for("source", &id, "the source to see the end", |v| {
        v["state"] == "ended" && v["job"].is_null()
    });
}

#[test]
fn a_snapshot_provider_the_source_cannot_serve_is_refused_and_a_chosen_one_is_kept() {
    need_root();
    let t = Scratch::new();
    let (a, b, src, dst) = node::pair(&t);
    fill(&src.join("d"), 5, 10_000, 2);
    std::fs::create_dir(&dst).unwrap();
    // The scratch directory is a plain directory, not a btrfs subvolume.
    let out = try_create(&a, b.listen, &src, &dst, &["--snapshot", "btrfs"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a btrfs subvolume"),
        "{}",
        stderr(&out)
    );
    let list = a.cli_ok(&["relationship", "list", "--role", "source", "--json"]);
    assert_eq!(list, serde_json::json!([]), "nothing was created");

    let id = create(&a, &b, &src, &dst, &["--snapshot", "plain"]);
    assert_eq!(a.view("source", &id)["snapshot"], "plain");
    b.cli_ok(&["relationship", "authorize", &id, "--json"]);
    a.wait_for("source", &id, "initial sync", synced);
    assert_eq!(tree_hash(&src), tree_hash(&dst));

    // An edit to a provider the source cannot serve changes nothing.
    let out = a.cli(&["relationship", "modify", &id, "--snapshot", "btrfs"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert_eq!(a.view("source", &id)["snapshot"], "plain");
    a.cli_ok(&[
        "relationship",
        "modify",
        &id,
        "--snapshot",
        "auto",
        "--json",
    ]);
    assert_eq!(a.view("source", &id)["snapshot"], "auto");
}

#[test]
fn a_drill_is_a_verified_writable_copy_and_replication_keeps_advancing() {
    need_root();
    let t = Scratch::new();
    let (a, b, src, dst) = node::pair(&t);
    fill(&src.join("d"), 20, 20_000, 3);
    std::fs::create_dir(&dst).unwrap();
    let id = create(&a, &b, &src, &dst, &[]);
    b.cli_ok(&["relationship", "authorize", &id, "--json"]);
    a.wait_for("source", &id, "initial sync", synced);
    let before = tree_hash(&src);

    // Into a tmpfs: another file system than the target's, so neither a snapshot nor
    // reflinks; a full copy only when allowed.
    let shm = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    let into = shm.path().join("drill");
    let into_s = s(&into);
    let out = b.cli(&["drill", "start", &id, "--into", into_s]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(stderr(&out).contains("full copy"), "{}", stderr(&out));
    assert!(!into.exists());
    let d = b.cli_ok(&[
        "drill",
        "start",
        &id[..8],
        "--into",
        into_s,
        "--allow-copy",
        "--json",
    ]);
    assert_eq!(d["method"], "copy", "{d}");
    assert_eq!(d["relationship"], id.as_str());
    assert!(d["seconds_to_writable"].as_f64().unwrap() >= 0.0, "{d}");
    assert!(d["data_age_seconds"].as_f64().unwrap() >= 0.0, "{d}");
    assert!(d["recovery_point_time"].is_string(), "{d}");
    assert_eq!(tree_hash(&into), before, "the drill is the recovery point");
    std::fs::write(into.join("written-in-the-drill"), b"x").unwrap();

    // Replication goes on: a change at the source reaches the target, not the drill.
    std::fs::write(src.join("after-the-drill"), b"new").unwrap();
    a.wait_for("source", &id, "the change to replicate", |_| {
        dst.join("after-the-drill").exists()
    });
    a.wait_for("source", &id, "the job to end", synced);
    assert_eq!(tree_hash(&dst), tree_hash(&src));
    assert!(!into.join("after-the-drill").exists());
    assert!(!dst.join("written-in-the-drill").exists());

    let list = b.cli_ok(&["drill", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], d["id"]);
    let drill_id = d["id"].as_str().unwrap();
    b.cli_ok(&["drill", "release", drill_id, "--json"]);
    assert!(!into.exists());
    assert_eq!(
        b.cli_ok(&["drill", "list", "--json"]),
        serde_json::json!([])
    );
    let out = b.cli(&["drill", "release", drill_id]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
}

#[test]
fn an_unreadable_stored_relationship_is_listed_apart_and_forgotten_while_the_others_go_on() {
    need_root();
    let t = Scratch::new();
    let (a, b, src, dst) = node::pair(&t);
    fill(&src, 5, 2000, 11);
    std::fs::create_dir(&dst).unwrap();
    let kept = synced_relationship(&a, &b, &src, &dst);
    // The damaged one ran too: it has a sender's state here, and a protected target there.
    let (src2, dst2) = (t.path().join("src2"), t.path().join("dst2"));
    fill(&src2, 2, 100, 12);
    std::fs::create_dir(&dst2).unwrap();
    let damaged = synced_relationship(&a, &b, &src2, &dst2);
    let state = a.dir.join("data/state").join(&damaged);
    assert!(state.exists(), "{}", state.display());
    damage_row(&a, &damaged);
    damage_row(&b, &damaged);

    // The lists answer the readable relationship, and say what they leave out.
    for (n, role, id) in [(&a, "source", &kept), (&b, "target", &kept)] {
        let (code, v) = n.get(&format!("/v1/replication/{role}-relationships"));
        assert_eq!(code, 200, "{v}");
        let ids: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [id.as_str()], "{v}");
        let (code, u) = n.get("/v1/replication/unreadable");
        assert_eq!(code, 200, "{u}");
        assert_eq!(u.as_array().unwrap().len(), 1, "{u}");
        assert_eq!(u[0]["id"], json!(damaged), "{u}");
        assert_eq!(u[0]["role"], json!(role), "{u}");
        assert!(
            u[0]["error"].as_str().unwrap().contains("last attempt"),
            "{u}"
        );
    }
    // The header counting what a list leaves out, on the wire.
    let head = |n: &Node, path: &str| -> String {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", n.api)).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            n.token
        )
        .unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase()
    };
    for path in [
        "/v1/replication/status",
        "/v1/replication/source-relationships",
    ] {
        let h = head(&a, path);
        assert!(
            h.contains("mover-unreadable-relationships: 1"),
            "{path}: {h}"
        );
    }
    let out = a.cli(&["relationship", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 stored relationship(s) cannot be read"),
        "{}",
        stderr(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&kept[..8]));

    // The readable relationship keeps replicating.
    std::fs::write(src.join("after-the-damage"), b"new").unwrap();
    a.cli_ok(&["relationship", "replicate", &kept]);
    a.wait_for("source", &kept, "the change replicated", |v| {
        synced(v) && tree_hash(&src) == tree_hash(&dst)
    });

    // Forgetting takes the write privilege of the row's role, and only an unreadable row.
    let observer = a.new_token("watcher", "observer");
    let tgt_op = a.new_token("tgt", "target-operator");
    let forget = |id: &str| format!("/v1/replication/unreadable/{id}");
    let (code, v) = a.call_as(Some(&tgt_op), "GET", "/v1/replication/unreadable", None);
    assert_eq!(
        (code, v),
        (200, json!([])),
        "a source row is not a target operator's"
    );
    // One that may read it but not write is refused; one that may not read it finds none.
    for (tok, want) in [(&observer, 403), (&tgt_op, 404)] {
        let (code, v) = a.call_as(Some(tok), "DELETE", &forget(&damaged), None);
        assert_eq!(code, want, "{v}");
    }
    let (code, v) = a.call("DELETE", &forget(&kept), None);
    assert_eq!(code, 409, "{v}");
    let (code, v) = a.call("DELETE", &forget(&"0".repeat(32)), None);
    assert_eq!(code, 404, "{v}");
    assert_eq!(
        a.get("/v1/replication/unreadable")
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Forgotten on both nodes, through the CLI; the lists are whole again.
    for n in [&a, &b] {
        n.cli_ok(&["relationship", "forget", &damaged]);
        assert_eq!(n.get("/v1/replication/unreadable").1, json!([]));
        let out = n.cli(&["relationship", "list"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!stderr(&out).contains("cannot be read"), "{}", stderr(&out));
        assert!(!head(n, "/v1/replication/status").contains("mover-unreadable"));
        let (_, events) = n.get("/v1/events?limit=1000");
        assert!(
            events
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "relationship_deleted"
                    && e["relationship"] == json!(damaged)
                    && e["message"].as_str().unwrap().contains("forgotten")),
            "{events}"
        );
    }
    let (code, v) = a.call("DELETE", &forget(&damaged), None);
    assert_eq!(code, 404, "{v}");
    // The source's state of it went; the target directory was not released, and is made
    // writable by hand as docs/api.md says.
    assert!(!state.exists(), "{}", state.display());
    assert_eq!(tree_hash(&src2), tree_hash(&dst2));
    let write = || std::fs::write(dst2.join("by-hand"), b"x");
    assert_eq!(
        write().unwrap_err().raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    for m in [dst2.clone(), b.dir.join("data/mnt").join(&damaged)] {
        let out = std::process::Command::new("umount")
            .arg(&m)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "umount {}: {}",
            m.display(),
            stderr(&out)
        );
    }
    write().unwrap();
    // The other relationship is untouched, and the target still holds the source's tree.
    assert!(synced(&a.view("source", &kept)));
    assert_eq!(tree_hash(&src), tree_hash(&dst));
}
