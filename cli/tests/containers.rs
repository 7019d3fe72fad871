//! A node run as containers by role under `mover node run` (issue 14): the control container,
//! the data container (the data plane: sends, shares and receivers) and the API container are
//! processes of their own. Killing the API container leaves the running job alone; killing the data
//! container breaks the job's session, and the same job resumes on the restarted one; killing
//! the control container stops the job, and the restarted one resumes it. The supervisor
//! reports each container and stops them on SIGTERM.
//! Needs root (the target is protected with a read-only bind mount).

mod node;

use node::{create, fill, need_root, stderr, synced, tree_hash, Node, Scratch, WAIT};
use serde_json::Value;
use std::time::{Duration, Instant};

/// `mover node containers --json`, retried while the node's API does not answer (a container
/// restarting): the first answer `ok` accepts.
fn containers_when(n: &Node, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let out = n.cli(&["node", "containers", "--json"]);
        let v = if out.status.success() {
            serde_json::from_slice(&out.stdout).unwrap()
        } else {
            Value::String(stderr(&out))
        };
        if out.status.success() && ok(&v) {
            return v;
        }
        assert!(
            t0.elapsed() < WAIT,
            "waited {WAIT:?} for {what}; last answer {v:#}\nlog:\n{}",
            n.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn container<'a>(v: &'a Value, roles: &str) -> &'a Value {
    v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["roles"] == roles)
        .unwrap_or_else(|| panic!("no {roles} container in {v:#}"))
}

fn pid(c: &Value) -> u32 {
    c["pid"].as_u64().unwrap() as u32
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn sigkill(pid: u32) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
}

fn all_up(v: &Value) -> bool {
    v["containers"].as_array().is_some_and(|cs| {
        cs.len() == 3
            && cs
                .iter()
                .all(|c| c["state"] == "running" && c["healthy"] == true)
    })
}

#[test]
fn containers_by_role_restart_alone_and_the_job_goes_on() {
    need_root();
    let t = Scratch::new();
    let mut a = Node::start_containers(&t.path().join("a"));
    let b = Node::start(&t.path().join("b"));
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    fill(&src, 60, 250_000, 11);
    std::fs::create_dir(&dst).unwrap();

    let v = containers_when(&a, "the three containers up", all_up);
    assert!(
        v["supervisor_pid"].as_u64() == Some(u64::from(a.pid())),
        "{v:#}"
    );
    let (ctl, data, api) = (
        container(&v, "control"),
        container(&v, "data"),
        container(&v, "api"),
    );
    let version = a.get("/v1/node").1["version"].clone();
    assert!(version.is_string());
    for c in [ctl, data, api] {
        assert_eq!(c["version"], version, "{c}");
        assert_eq!(c["restarts"], 0, "{c}");
        assert_ne!(pid(c), a.pid());
    }
    let (ctl_pid, data_pid, api_pid) = (pid(ctl), pid(data), pid(api));
    assert!(ctl_pid != api_pid && ctl_pid != data_pid && data_pid != api_pid);
    let text = a.cli(&["node", "containers"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("control") && text.contains("data") && text.contains("api"),
        "{text}"
    );
    // Health needs no token; it names the process that answered (the control container).
    let (code, h) = a.call_as(None, "GET", "/v1/health", None);
    assert_eq!(
        (code, &h["status"], &h["roles"]),
        (200, &Value::from("ok"), &Value::from("control")),
        "{h}"
    );

    // 15 MB at 1 MB/s: the restarts land mid-job.
    let id = create(&a, &b, &src, &dst, &["--bandwidth-limit", "1000000"]);
    b.cli_ok(&["relationship", "authorize", &id]);
    let before = a.wait_for("source", &id, "the initial sync to be under way", |v| {
        v["job"]["bytes_done"].as_u64().is_some_and(|n| n > 0)
    });

    // The API container dies: the job, in the control container, goes on untouched.
    sigkill(api_pid);
    let v = containers_when(&a, "the API container restarted", |v| {
        all_up(v) && container(v, "api")["restarts"] == 1
    });
    assert_eq!(pid(container(&v, "control")), ctl_pid, "{v:#}");
    assert_eq!(container(&v, "control")["restarts"], 0, "{v:#}");
    assert_eq!(pid(container(&v, "data")), data_pid, "{v:#}");
    assert!(container(&v, "api")["last_exit"]
        .as_str()
        .is_some_and(|e| e.contains("SIGKILL")));
    let during = a.view("source", &id);
    // The same job, still running: its run time went on from where it was.
    assert!(
        during["job"]["run_seconds"].as_f64() > before["job"]["run_seconds"].as_f64(),
        "the job must be the same one: {before:#} then {during:#}"
    );
    assert!(
        during["job"]["bytes_done"].as_u64() >= before["job"]["bytes_done"].as_u64(),
        "{during:#}"
    );
    assert!(alive(ctl_pid));

    // The data container dies mid-job: the job's session breaks, and the same job, in the
    // control container, resumes on the restarted data container.
    sigkill(data_pid);
    let v = containers_when(&a, "the data container restarted", |v| {
        all_up(v) && container(v, "data")["restarts"] == 1
    });
    assert_eq!(pid(container(&v, "control")), ctl_pid, "{v:#}");
    let resumed = a.wait_for(
        "source",
        &id,
        "the job to send again after the data container died",
        |v| {
            v["job"]["bytes_done"].as_u64() > during["job"]["bytes_done"].as_u64()
                && v["job"]["run_seconds"].as_f64() > during["job"]["run_seconds"].as_f64()
        },
    );
    assert!(
        a.log().contains("the data container ended the session"),
        "the broken session was retried: {resumed:#}\nlog:\n{}",
        a.log()
    );

    // The control container dies mid-job: restarted, it resumes the job to its end.
    sigkill(ctl_pid);
    let v = containers_when(&a, "the control container restarted", |v| {
        all_up(v) && container(v, "control")["restarts"] == 1
    });
    assert_ne!(pid(container(&v, "control")), ctl_pid);
    let done = a.wait_for("source", &id, "the resumed initial sync", synced);
    assert!(done["recovery_point"]["time"].is_string(), "{done}");
    assert_eq!(tree_hash(&src), tree_hash(&dst));

    // SIGTERM stops the containers, then the supervisor, cleanly.
    let now = containers_when(&a, "the three containers up", all_up);
    let pids = [
        pid(container(&now, "control")),
        pid(container(&now, "data")),
        pid(container(&now, "api")),
    ];
    let status = a.terminate();
    assert!(status.success(), "{status}");
    for p in pids {
        assert!(!alive(p), "container {p} outlived its supervisor");
    }
    let file: Value =
        serde_json::from_slice(&std::fs::read(t.path().join("a/data/containers.json")).unwrap())
            .unwrap();
    assert!(
        file["containers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "stopped"),
        "{file:#}"
    );
}

/// Whether process `pid` holds a descriptor of the directory `dir` (the same inode: a target
/// protected by a bind mount is written through its private view).
fn holds_dir(pid: u32, dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let want = std::fs::metadata(dir).unwrap();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
        .any(|m| m.is_dir() && m.dev() == want.dev() && m.ino() == want.ino())
}

/// `Node::wait_for` on source `a`'s view, failing with the target `b`'s log as well.
fn wait_both(a: &Node, b: &Node, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    node::eventually(what, WAIT, || {
        let v = a.view("source", id);
        if ok(&v) {
            return Ok(v);
        }
        Err(format!(
            "last view {v:#}\nsource log:\n{}\ntarget log:\n{}",
            a.log(),
            b.log()
        ))
    })
}

#[test]
fn a_target_run_as_containers_receives_in_its_data_container_through_kills_of_both() {
    need_root();
    let t = Scratch::new();
    let a = Node::start(&t.path().join("a"));
    let b = Node::start_containers(&t.path().join("b"));
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    fill(&src, 60, 250_000, 12);
    std::fs::create_dir(&dst).unwrap();
    let v = containers_when(&b, "the target's three containers up", all_up);
    let (ctl_pid, data_pid) = (pid(container(&v, "control")), pid(container(&v, "data")));

    // 15 MB at 1 MB/s: the kills land mid-job.
    let id = create(&a, &b, &src, &dst, &["--bandwidth-limit", "1000000"]);
    b.cli_ok(&["relationship", "authorize", &id]);
    let before = a.wait_for("source", &id, "the initial sync to be under way", |v| {
        v["job"]["bytes_done"].as_u64().is_some_and(|n| n > 0)
    });
    // The receiver runs in the data container, writing through the root it was handed.
    assert!(
        holds_dir(data_pid, &dst),
        "the target's data container holds no descriptor of {}",
        dst.display()
    );

    // The target's data container dies mid-job: the session breaks, and the source's retry
    // is received by the restarted container.
    sigkill(data_pid);
    let v = containers_when(&b, "the target's data container restarted", |v| {
        all_up(v) && container(v, "data")["restarts"] == 1
    });
    assert_eq!(pid(container(&v, "control")), ctl_pid, "{v:#}");
    let data_pid = pid(container(&v, "data"));
    wait_both(
        &a,
        &b,
        &id,
        "the job to send again after the target's data container died",
        |v| v["job"]["bytes_done"].as_u64() > before["job"]["bytes_done"].as_u64(),
    );
    let t0 = Instant::now();
    while !holds_dir(data_pid, &dst) {
        assert!(
            t0.elapsed() < WAIT,
            "the restarted data container took no receiver"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The target's control container dies mid-job: the data container's receiver keeps
    // the running session, and the restarted control takes the relationship on.
    assert!(
        !synced(&a.view("source", &id)),
        "the job ended before the kill"
    );
    sigkill(ctl_pid);
    containers_when(&b, "the target's control container restarted", |v| {
        all_up(v) && container(v, "control")["restarts"] == 1
    });
    wait_both(&a, &b, &id, "the initial sync", synced);
    assert_eq!(tree_hash(&src), tree_hash(&dst));
    // A later job goes through the restarted control's own receiver.
    std::fs::write(src.join("after-the-kills"), b"new").unwrap();
    a.cli_ok(&["relationship", "replicate", &id]);
    let t0 = Instant::now();
    while !dst.join("after-the-kills").exists() {
        assert!(
            t0.elapsed() < WAIT,
            "the change never reached the target\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    a.wait_for("source", &id, "the second job", synced);

    // A drill is made by the data container's receiver.
    let shm = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    let into = shm.path().join("drill");
    let d = b.cli_ok(&[
        "drill",
        "start",
        &id,
        "--into",
        node::s(&into),
        "--allow-copy",
        "--json",
    ]);
    assert_eq!(d["method"], "copy", "{d}");
    assert_eq!(
        tree_hash(&into),
        tree_hash(&dst),
        "the drill is the recovery point"
    );

    // Made writable: no receiver writes any more, and the directory is the operator's.
    b.cli_ok(&["relationship", "make-writable", &id]);
    std::fs::write(dst.join("written-after-failover"), b"x").unwrap();
    assert_eq!(
        std::fs::read(src.join("after-the-kills")).unwrap(),
        std::fs::read(dst.join("after-the-kills")).unwrap()
    );
}

#[test]
fn a_killed_supervisor_takes_its_containers_with_it() {
    need_root();
    let t = Scratch::new();
    let mut a = Node::start_containers(&t.path().join("a"));
    let v = containers_when(&a, "the three containers up", all_up);
    let pids = [
        pid(container(&v, "control")),
        pid(container(&v, "data")),
        pid(container(&v, "api")),
    ];
    a.kill();
    let t0 = Instant::now();
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            t0.elapsed() < WAIT,
            "containers {pids:?} outlived their SIGKILLed supervisor"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A new supervisor starts them again on the same node (its ports and socket are free).
    let a = Node::start_containers(&t.path().join("a"));
    containers_when(&a, "the three containers up again", all_up);
}

#[test]
fn a_node_run_as_containers_upgrades_them_all_onto_a_checked_package() {
    need_root();
    let t = Scratch::new();
    let (bin, pkg) = (t.path().join("bin/mover"), t.path().join("pkg/mover-0.1.1"));
    let sum = node::package_pair(&bin, &pkg);
    let a = Node::start_containers_from(&t.path().join("a"), &bin, "", Some("0.1.0"));
    let before = containers_when(&a, "the three containers up on 0.1.0", |v| {
        all_up(v)
            && v["containers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["version"] == "0.1.0")
    });
    let v = a.cli_ok(&[
        "upgrade",
        "start",
        "--to",
        "0.1.1",
        "--package",
        pkg.to_str().unwrap(),
        "--sha256",
        &sum,
        "--json",
    ]);
    assert_eq!(v["phase"], "done", "{v}");
    // The control container restarted in place onto the new binary, and the data and API
    // containers followed it (stopped and started again by the supervisor, not counted as
    // crashes).
    let after = containers_when(&a, "the three containers on 0.1.1", |v| {
        all_up(v)
            && v["containers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["version"] == "0.1.1")
    });
    let (c0, c1) = (container(&before, "control"), container(&after, "control"));
    assert_eq!(pid(c0), pid(c1), "{after:#}");
    for roles in ["data", "api"] {
        let c = container(&after, roles);
        assert_ne!(pid(c), pid(container(&before, roles)), "{after:#}");
        assert_eq!(c["restarts"], 0, "{after:#}");
    }
    let st = a.cli_ok(&["upgrade", "status", "--json"]);
    let roles: Vec<&str> = st["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["control", "data", "api"], "{st}");
    assert!(st["containers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["version"] == "0.1.1" && c["health"] == "ok"));
}
