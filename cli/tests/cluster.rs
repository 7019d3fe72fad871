//! Cluster membership on a real etcd (127.0.0.1): three daemons join, elect one leader, and a
//! killed one is shown down, with a new leader, within the stated bound; an etcd restart is
//! survived.

mod node;

use node::etcd::Etcd;
use node::{free_port, Node, Scratch};
use serde_json::Value;
use std::time::{Duration, Instant};

/// `control::cluster::DOWN_BOUND` (5 s) plus the time a loaded 2-core test machine may add
/// to a daemon's watch and the test's polls.
const DOWN_WITHIN: Duration = Duration::from_secs(5 + 5);

fn cluster(n: &Node) -> Value {
    let (code, v) = n.get("/v1/cluster");
    assert_eq!(code, 200, "{v}");
    v
}

fn up(v: &Value) -> Vec<String> {
    let mut names: Vec<String> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["up"] == true)
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Polls `n`'s view until `ok`, for at most `within`; the view that satisfied it.
fn until(n: &Node, what: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let v = cluster(n);
        if ok(&v) {
            return v;
        }
        assert!(
            t0.elapsed() < within,
            "{what}: not within {within:?}:\n{v:#}\n{}",
            n.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_nodes_elect_one_leader_and_a_killed_leader_is_down_and_replaced_within_the_bound() {
    let t = Scratch::new();
    let mut etcd = Etcd::start(&t.path().join("etcd"));
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| {
            let cfg = format!("cluster = \"{}\"\nnode_name = \"n{i}\"\n", etcd.url());
            Node::start_configured(
                &t.path().join(format!("n{i}")),
                free_port(),
                free_port(),
                &cfg,
            )
        })
        .collect();
    let all = vec!["n1".to_string(), "n2".into(), "n3".into()];
    let join = Duration::from_secs(30);
    for n in &nodes {
        until(n, "all three up with a leader", join, |v| {
            up(v) == all && v["leader"].is_string() && v["connected"] == true
        });
    }
    // One leader, the same for all.
    let leaders: Vec<Value> = nodes.iter().map(|n| cluster(n)["leader"].clone()).collect();
    assert!(leaders.iter().all(|l| *l == leaders[0]), "{leaders:?}");
    let leader = leaders[0].as_str().unwrap().to_string();
    let v = cluster(&nodes[0]);
    let flagged: Vec<&Value> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["leader"] == true)
        .collect();
    assert_eq!(flagged.len(), 1, "{v:#}");
    assert_eq!(flagged[0]["version"], "0.1.0");
    let out = nodes[0].cli(&["cluster", "members"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("n3") && text.contains("up"),
        "{text}"
    );
    assert_eq!(nodes[0].cli(&["cluster", "status"]).status.code(), Some(0));
    // Per-node figures on any node's /metrics.
    let (code, m) = nodes[1].call_as(None, "GET", "/metrics", None);
    let m = m.as_str().unwrap().to_string();
    assert_eq!(code, 200);
    assert!(m.contains("mover_cluster_connected{node=\"n2\"} 1"), "{m}");
    for n in &all {
        assert!(
            m.contains(&format!(
                "mover_cluster_member_up{{node=\"{n}\",version=\"0.1.0\"}} 1"
            )),
            "{m}"
        );
    }
    assert!(
        m.contains(&format!("mover_cluster_leader{{node=\"{leader}\"}} 1")),
        "{m}"
    );

    // SIGKILL the leader: the others see it down and elect another, within the bound.
    let i = all.iter().position(|n| *n == leader).unwrap();
    nodes[i].kill();
    let t0 = Instant::now();
    let watcher = &nodes[(i + 1) % 3];
    let v = until(
        watcher,
        "the killed leader down, a new leader",
        DOWN_WITHIN,
        |v| !up(v).contains(&leader) && v["leader"].is_string() && v["leader"] != leader.as_str(),
    );
    eprintln!("leader {leader} down and replaced after {:?}", t0.elapsed());
    assert_eq!(up(&v).len(), 2, "{v:#}");
    // Listed down, not forgotten; `status` says the cluster is not whole (exit 1).
    assert_eq!(v["members"].as_array().unwrap().len(), 3, "{v:#}");
    let out = watcher.cli(&["cluster", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 of 3 up"));
    // The upgrade checker's nodes_online item names the member that is down (red).
    let out = watcher.cli(&["upgrade", "check", "--to", "0.2.0", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", node::stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let item = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["check"] == "nodes_online")
        .unwrap()
        .clone();
    assert_eq!(item["level"], "red", "{r:#}");
    assert!(item["detail"].as_str().unwrap().contains(&leader), "{item}");

    // etcd killed and started again: the survivors join again and keep one leader.
    etcd.restart();
    for (j, n) in nodes.iter().enumerate().filter(|(j, _)| *j != i) {
        let v = until(n, "rejoined after the etcd restart", join, |v| {
            v["connected"] == true && up(v).len() == 2 && v["leader"].is_string()
        });
        assert!(up(&v).contains(&format!("n{}", j + 1)), "{v:#}");
    }
}

#[test]
fn a_node_outside_a_cluster_says_how_to_join_one() {
    let t = Scratch::new();
    let n = Node::start(&t.path().join("solo"));
    let (code, v) = n.get("/v1/cluster");
    assert_eq!(code, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("--cluster"), "{v}");
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("mover"))
        .args([
            "daemon",
            "--data-dir",
            "/nonexistent",
            "--cluster",
            "http://x:1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        node::stderr(&out).contains("etcd://HOST:PORT"),
        "{}",
        node::stderr(&out)
    );
}

/// The member `name` in `v` (a `GET /v1/cluster` answer).
fn member<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no member {name}: {v:#}"))
}

#[test]
fn a_drained_node_finishes_its_running_job_then_starts_none_until_undrained() {
    node::need_root();
    let t = Scratch::new();
    let etcd = Etcd::start(&t.path().join("etcd"));
    let cfg = |i: u32| format!("cluster = \"{}\"\nnode_name = \"n{i}\"\n", etcd.url());
    let (l1, a1) = (free_port(), free_port());
    let mut n1 = Node::start_configured(&t.path().join("n1"), l1, a1, &cfg(1));
    let n2 = Node::start_configured(&t.path().join("n2"), free_port(), free_port(), &cfg(2));
    let names = vec!["n1".to_string(), "n2".into()];
    until(&n2, "both up", Duration::from_secs(30), |v| up(v) == names);

    // 6 MB at 1 MB/s: the drain lands mid-job.
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    node::fill(&src, 6, 1_000_000, 7);
    std::fs::create_dir_all(&dst).unwrap();
    let id = node::create(&n1, &n2, &src, &dst, &["--bandwidth-limit", "1000000"]);
    n2.cli_ok(&["relationship", "authorize", &id]);
    n1.wait_for("source", &id, "the initial sync to be under way", |v| {
        v["job"]["bytes_done"].as_u64().is_some_and(|n| n > 0)
    });
    until(&n2, "n1 reports its job", Duration::from_secs(15), |v| {
        member(v, "n1")["report"]["jobs_running"] == 1
    });

    // Drained from the other node, waiting: the running job finishes, whole.
    let out = n2.cli(&["node", "drain", "n1", "--wait-secs", "60", "--json"]);
    assert!(out.status.success(), "{}", node::stderr(&out));
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&m["drain"]["drained"], &m["report"]["jobs_running"]),
        (&Value::from(true), &Value::from(0)),
        "{m:#}"
    );
    assert!(m["drain"]["by"].is_string(), "{m:#}");
    let v = n1.view("source", &id);
    assert!(node::synced(&v), "the running job must finish: {v:#}");
    let rp = v["recovery_point"]["time"].clone();
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst));

    // Drained: a change starts no job, "replicate now" is refused saying why, and the node
    // shows drained everywhere.
    std::fs::write(src.join("after-drain"), b"new").unwrap();
    let out = n1.cli(&["relationship", "replicate", &id]);
    assert_eq!(out.status.code(), Some(9), "{}", node::stderr(&out));
    assert!(
        node::stderr(&out).contains("n1 is drained"),
        "{}",
        node::stderr(&out)
    );
    let text = n1.cli(&["cluster", "members"]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    let line = text.lines().find(|l| l.starts_with("n1 ")).unwrap_or("");
    assert!(line.contains(" drain "), "{text}");
    let (_, metrics) = n1.call_as(None, "GET", "/metrics", None);
    let metrics = metrics.as_str().map(str::to_string).unwrap_or_default();
    assert!(
        metrics.contains("mover_cluster_node_drained{node=\"n1\"} 1")
            && metrics.contains("mover_cluster_node_drained{node=\"n2\"} 0"),
        "{metrics}"
    );
    // Three continuous intervals (2 s each) and a restart of the node: still nothing starts.
    std::thread::sleep(Duration::from_secs(3));
    n1.terminate();
    let n1 = Node::start_configured(&t.path().join("n1"), l1, a1, &cfg(1));
    until(
        &n1,
        "n1 back, still drained",
        Duration::from_secs(30),
        |v| up(v) == names && member(v, "n1")["drain"]["drained"] == true,
    );
    std::thread::sleep(Duration::from_secs(4));
    let v = n1.view("source", &id);
    assert!(
        v["job"].is_null() && v["recovery_point"]["time"] == rp,
        "a drained node must start no job: {v:#}"
    );
    assert!(!dst.join("after-drain").exists());

    // Undrained: the change goes over.
    let out = n1.cli_ok(&["node", "undrain", "n1", "--json"]);
    assert_eq!(out["drain"]["drained"], false, "{out:#}");
    n1.wait_for("source", &id, "a job after the undrain", |v| {
        node::synced(v) && v["recovery_point"]["time"] != rp
    });
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst));

    // Only a node that joined can be drained.
    let out = n1.cli(&["node", "drain", "n9"]);
    assert_eq!(out.status.code(), Some(8), "{}", node::stderr(&out));
}
