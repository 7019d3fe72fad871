//! Cluster mode on a real etcd (127.0.0.1): three daemons join, elect one leader, and a
//! killed one is shown down, with a new leader, within the stated bound; an etcd restart is
//! survived. Drain and undrain. Jobs spread over three source nodes (`--spread-jobs`, one
//! shared source directory): a killed node, an etcd restart, a drain, the owner killed, a
//! node that cannot read the source, one frozen and one partitioned away (a network
//! namespace whose link is taken down), and the leader's control container killed (nodes
//! run as containers by role). Two owners spread their jobs over the same nodes into two
//! target nodes. A dead owner's relationship is taken over mid-job by the leader, and the
//! owner, back, drops its copy; its policy snapshots go on under names the old owner never
//! gave. A cluster token works on every node, until deleted on any, and is refused while etcd
//! is away. A target's writes spread over two target nodes sharing the target directory
//! (`--spread-writes`): across an etcd restart, with one of them SIGKILLed mid-share, and
//! with one cut off from etcd but not from the source (it stops writing before it is seen
//! down).

mod node;

use node::etcd::Etcd;
use node::netns::{Link, Netns};
use node::{free_port, At, Node, Scratch};
use serde_json::Value;
use std::path::PathBuf;
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
    node::eventually(what, within, || {
        let v = cluster(n);
        if ok(&v) {
            Ok(v)
        } else {
            Err(format!("{v:#}\n{}", n.log()))
        }
    })
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
    // Each was recorded where it was asked for.
    for (n, kind) in [(&n2, "node_drained"), (&n1, "node_undrained")] {
        let (_, events) = n.get("/v1/events?limit=1000");
        let told = events.as_array().unwrap().iter().any(|e| {
            e["kind"] == kind
                && e["relationship"].is_null()
                && e["message"].as_str().unwrap().contains("node n1")
        });
        assert!(told, "{kind}: {events:#}");
    }
    n1.wait_for("source", &id, "a job after the undrain", |v| {
        node::synced(v) && v["recovery_point"]["time"] != rp
    });
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst));

    // Only a node that joined can be drained.
    let out = n1.cli(&["node", "drain", "n9"]);
    assert_eq!(out.status.code(), Some(8), "{}", node::stderr(&out));
}

/// One metric's value in `n`'s `/metrics` (the first series whose line starts with `series`).
fn metric(n: &Node, series: &str) -> f64 {
    let (_, m) = n.call_as(None, "GET", "/metrics", None);
    let m = m.as_str().map(str::to_string).unwrap_or_default();
    m.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{m}"))
}

/// The bytes the last session of a relationship's job sent, from its report ("completed: N
/// files, B bytes sent in S s"), and the report.
fn last_sent(v: &Value) -> (f64, String) {
    let last = v["last_attempt"]["message"].as_str().unwrap_or_default();
    let sent = last
        .split(", ")
        .nth(1)
        .and_then(|b| b.split(' ').next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no bytes in the last attempt: {v:#}"));
    (sent, last.to_string())
}

/// A node's config lines: in the cluster at `url` as `name`, spreading its jobs or not.
fn spread_cfg(url: &str, name: &str, spread: bool) -> String {
    format!("cluster = \"{url}\"\nnode_name = \"{name}\"\nspread_jobs = {spread}\n")
}

/// A target node's config lines: in the cluster at `url` as `name`, spreading its writes.
fn writes_cfg(url: &str, name: &str) -> String {
    format!("cluster = \"{url}\"\nnode_name = \"{name}\"\nspread_writes = true\n")
}

/// Waits until each node has started at least its count of shares (30 s at most; `owner`'s
/// log on failure), then `ms` more: a moment when their shares are under way.
fn mid_share(nodes: &[(&Node, usize)], owner: &Node, ms: u64) {
    let t0 = Instant::now();
    while nodes.iter().any(|(n, k)| shards_started(n) < *k) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "shares not started:\n{}",
            owner.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(ms));
}

/// Times `n`'s log says it started running a shard.
fn shards_started(n: &Node) -> usize {
    n.log().matches("running a shard").count()
}

#[test]
fn a_job_spreads_over_three_source_nodes_and_a_killed_one_leaves_it_to_the_others() {
    node::need_root();
    let t = Scratch::new();
    let etcd = Etcd::start(&t.path().join("etcd"));
    // Three source nodes that spread their jobs (they share the source: one directory here),
    // and a target node in the same cluster that does not.
    let cfg = |name: &str, spread: bool| spread_cfg(&etcd.url(), name, spread);
    let n1 = Node::start_configured(
        &t.path().join("n1"),
        free_port(),
        free_port(),
        &cfg("n1", true),
    );
    let mut n2 = Node::start_configured(
        &t.path().join("n2"),
        free_port(),
        free_port(),
        &cfg("n2", true),
    );
    let n3 = Node::start_configured(
        &t.path().join("n3"),
        free_port(),
        free_port(),
        &cfg("n3", true),
    );
    let tn = Node::start_configured(
        &t.path().join("t1"),
        free_port(),
        free_port(),
        &cfg("t1", false),
    );
    let all = vec!["n1".to_string(), "n2".into(), "n3".into(), "t1".into()];
    until(&n1, "all up", Duration::from_secs(30), |v| up(v) == all);

    // 12 MB at 3 MB/s for the job, split between its three places.
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    node::fill(&src, 12, 1_000_000, 11);
    std::fs::create_dir_all(&dst).unwrap();
    let id = node::create(&n1, &tn, &src, &dst, &["--bandwidth-limit", "3000000"]);
    tn.cli_ok(&["relationship", "authorize", &id]);
    let v = n1.wait_for("source", &id, "the initial sync", node::synced);
    let rp = v["recovery_point"]["time"].clone();
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst));
    // Every source node sent a share; the target node, which does not spread, none.
    for n in [&n2, &n3] {
        assert_eq!(
            metric(n, "mover_shards_total{outcome=\"done\"}"),
            1.0,
            "{}",
            n.log()
        );
        assert!(metric(n, "mover_shard_bytes_total") > 0.0);
    }
    assert_eq!(shards_started(&tn), 0);
    let first = metric(
        &n1,
        &format!("mover_bytes_moved_total{{relationship=\"{id}\"}}"),
    );
    assert!(
        first >= 12e6,
        "the job's bytes count every place's: {first}"
    );

    // 18 MB more; n2 is killed while it runs its shard. The job ends on n1 and n3 with one
    // verified recovery point, and what was durable before the kill is not sent again.
    node::fill(&src.join("more"), 18, 1_000_000, 12);
    mid_share(&[(&n2, 2)], &n1, 1500);
    n2.kill();
    let v = n1.wait_for("source", &id, "the job after n2 died", |v| {
        node::synced(v) && v["recovery_point"]["time"] != rp
    });
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst), "{v:#}");
    let (_, events) = n1.get("/v1/events?limit=1000");
    assert!(
        events.to_string().contains("n2"),
        "a retry names the node that went: {events:#}"
    );
    let (sent, last) = last_sent(&v);
    assert!(
        sent < 18e6,
        "the retried session sent {sent} bytes of 18 MB: what was durable went again ({last})"
    );
    assert!(
        metric(&n3, "mover_shards_total{outcome=\"done\"}") >= 2.0,
        "{}",
        n3.log()
    );
}

#[test]
fn a_spread_job_survives_an_etcd_restart_a_drain_and_its_owner_killed() {
    node::need_root();
    let t = Scratch::new();
    let mut etcd = Etcd::start(&t.path().join("etcd"));
    let url = etcd.url();
    let cfg = |name: &str| spread_cfg(&url, name, true);
    let start = |name: &str| {
        Node::start_configured(&t.path().join(name), free_port(), free_port(), &cfg(name))
    };
    let (mut n1, n2, n3) = (start("n1"), start("n2"), start("n3"));
    let target = Node::start(&t.path().join("t1"));
    let all = vec!["n1".to_string(), "n2".into(), "n3".into()];
    until(&n1, "all up", Duration::from_secs(30), |v| up(v) == all);

    // 18 MB at 3 MB/s: etcd goes away for 3 s in the middle of the job.
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    node::fill(&src, 18, 1_000_000, 21);
    std::fs::create_dir_all(&dst).unwrap();
    let id = node::create(&n1, &target, &src, &dst, &["--bandwidth-limit", "3000000"]);
    target.cli_ok(&["relationship", "authorize", &id]);
    mid_share(&[(&n2, 1), (&n3, 1)], &n1, 1000);
    etcd.kill();
    std::thread::sleep(Duration::from_secs(3));
    etcd.restart();
    let v = n1.wait_for(
        "source",
        &id,
        "the job across the etcd restart",
        node::synced,
    );
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst), "{v:#}");
    until(&n1, "all up again", Duration::from_secs(30), |v| {
        up(v) == all
    });

    // n3 drained: the next job's session leaves it out and runs on n1 and n2.
    n1.cli_ok(&["node", "drain", "n3", "--json"]);
    until(&n1, "n3 drained", Duration::from_secs(10), |v| {
        member(v, "n3")["drain"]["drained"] == true
    });
    let before = shards_started(&n3);
    let rp = n1.view("source", &id)["recovery_point"]["time"].clone();
    node::fill(&src.join("more"), 6, 1_000_000, 22);
    n1.wait_for("source", &id, "a job after the drain", |v| {
        node::synced(v) && v["recovery_point"]["time"] != rp
    });
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst));
    assert_eq!(shards_started(&n3), before, "a drained node takes no share");
    let log = n1.log();
    let last = log
        .lines()
        .rfind(|l| l.contains("spreading the session"))
        .unwrap_or_default();
    assert!(
        last.contains("[\"n2\"]"),
        "the session after the drain spreads over n2 only:\n{log}"
    );

    // The owner SIGKILLed while n2 and n3 run their shares, and started again: its job
    // resumes from what the target holds and ends with one verified recovery point.
    n1.cli_ok(&["node", "undrain", "n3", "--json"]);
    until(&n1, "n3 undrained", Duration::from_secs(10), |v| {
        member(v, "n3")["drain"]["drained"] == false
    });
    let (s2, s3) = (shards_started(&n2), shards_started(&n3));
    let rp = n1.view("source", &id)["recovery_point"]["time"].clone();
    node::fill(&src.join("last"), 18, 1_000_000, 23);
    mid_share(&[(&n2, s2 + 1), (&n3, s3 + 1)], &n1, 1500);
    let (l1, a1) = (n1.listen, n1.api);
    n1.kill();
    let n1 = Node::start_configured(&t.path().join("n1"), l1, a1, &cfg("n1"));
    let v = n1.wait_for(
        "source",
        &id,
        "the job resumed after the owner's kill",
        |v| node::synced(v) && v["recovery_point"]["time"] != rp,
    );
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst), "{v:#}");
    let (sent, last) = last_sent(&v);
    assert!(
        sent < 18e6,
        "the resumed job sent {sent} bytes of 18 MB: what was durable went again ({last})"
    );
}

#[test]
fn a_node_that_cannot_read_the_source_fails_one_session_and_is_left_out_of_the_job() {
    node::need_root();
    let t = Scratch::new();
    let etcd = Etcd::start(&t.path().join("etcd"));
    let cfg = |name: &str| spread_cfg(&etcd.url(), name, true);
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    node::fill(&src, 8, 1_000_000, 31);
    std::fs::create_dir_all(&dst).unwrap();
    let n1 = Node::start_configured(&t.path().join("n1"), free_port(), free_port(), &cfg("n1"));
    // n2 says it shares the source, but sees an empty directory there.
    let n2 = Node::start_not_seeing(&t.path().join("n2"), &src, &cfg("n2"));
    let target = Node::start(&t.path().join("t1"));
    let all = vec!["n1".to_string(), "n2".into()];
    until(&n1, "both up", Duration::from_secs(30), |v| up(v) == all);

    let id = node::create(&n1, &target, &src, &dst, &[]);
    target.cli_ok(&["relationship", "authorize", &id]);
    let v = n1.wait_for("source", &id, "the initial sync", node::synced);
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst), "{v:#}");
    assert_eq!(
        metric(&n2, "mover_shards_total{outcome=\"failed\"}"),
        1.0,
        "{}",
        n2.log()
    );
    let log = n1.log();
    let spreads: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("spreading the session"))
        .collect();
    assert_eq!(
        spreads.len(),
        2,
        "one failed session, one without n2:\n{log}"
    );
    assert!(
        spreads[0].contains("[\"n2\"]") && spreads[1].contains("[]"),
        "{log}"
    );
    assert!(
        log.contains("opening shard file"),
        "the retry says why:\n{log}"
    );
}

/// A job of 12 MB at 3 MB/s from `n1` (spreading over itself, n2 and `n3`) to `target`;
/// `cut` cuts `n3` off once it has run its share for 1.5 s. The job completes without n3, when
/// it is seen down (`DOWN_BOUND`), not when the receiver gives up on its silent connections (a
/// minute), with the trees equal and a retry that sent less than the job. The relationship,
/// source and target.
fn cut_off_mid_share(
    t: &Scratch,
    n1: &Node,
    n3: &Node,
    target: &Node,
    seed: u64,
    cut: impl FnOnce(),
) -> (String, PathBuf, PathBuf) {
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    node::fill(&src, 12, 1_000_000, seed);
    std::fs::create_dir_all(&dst).unwrap();
    let id = node::create(n1, target, &src, &dst, &["--bandwidth-limit", "3000000"]);
    target.cli_ok(&["relationship", "authorize", &id]);
    mid_share(&[(n3, 1)], n1, 1500);
    cut();
    let at = Instant::now();
    let v = n1.wait_for("source", &id, "the job without n3", node::synced);
    let took = at.elapsed();
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst), "{v:#}");
    let (sent, last) = last_sent(&v);
    assert!(
        sent < 12e6,
        "the retry sent {sent} bytes of 12 MB: n3's share went again whole ({last})"
    );
    let log = n1.log();
    assert!(log.contains("node n3 went down"), "{log}");
    assert!(
        took < DOWN_WITHIN + Duration::from_secs(10),
        "{took:?}\n{log}"
    );
    (id, src, dst)
}

#[test]
fn a_node_cut_off_mid_job_is_left_behind_and_the_job_completes_on_the_others() {
    node::need_root();
    let t = Scratch::new();
    let etcd = Etcd::start(&t.path().join("etcd"));
    let cfg = |name: &str| spread_cfg(&etcd.url(), name, true);
    let start = |name: &str| {
        Node::start_configured(&t.path().join(name), free_port(), free_port(), &cfg(name))
    };
    let (n1, _n2, n3) = (start("n1"), start("n2"), start("n3"));
    let target = Node::start(&t.path().join("t1"));
    let all = vec!["n1".to_string(), "n2".into(), "n3".into()];
    until(&n1, "all up", Duration::from_secs(30), |v| up(v) == all);

    // n3 is frozen (SIGSTOP) while it runs its share: to the others it is a node partitioned
    // away, whose heartbeat stops and whose connections go silent.
    let pid = n3.pid().to_string();
    cut_off_mid_share(&t, &n1, &n3, &target, 41, || {
        node::run(std::process::Command::new("kill").args(["-STOP", &pid]));
    });
    node::run(std::process::Command::new("kill").args(["-CONT", &pid]));
    // Back from the partition, n3 rejoins.
    until(&n1, "n3 back", DOWN_WITHIN, |v| up(v) == all);
}

#[test]
fn a_node_partitioned_away_mid_job_is_left_behind_and_rejoins_when_the_link_mends() {
    node::need_root();
    let t = Scratch::new();
    // Everything runs in namespaces this test makes: n3 alone in one, linked by a veth pair to
    // the one this thread moves into, where etcd, n1, n2 and the target run. Taking that link
    // down drops every packet between n3 and the rest, and resets no connection.
    let _hub = Netns::enter("hub");
    let n3ns = Netns::new("n3");
    let link = Link::new(&n3ns, 0);
    let etcd = Etcd::start_also_on(&t.path().join("etcd"), Some(&link.near));
    let start = |name: &str| {
        Node::start_configured(
            &t.path().join(name),
            free_port(),
            free_port(),
            &spread_cfg(&etcd.url(), name, true),
        )
    };
    let (n1, _n2) = (start("n1"), start("n2"));
    let n3 = Node::start_at(
        &t.path().join("n3"),
        At {
            netns: Some(n3ns.0.clone()),
            ..At::local(free_port(), free_port())
        },
        &spread_cfg(&etcd.url_also(), "n3", true),
    );
    // The target's peer port is on the link's near side, which n1, n2 and n3 all reach.
    let target = Node::start_at(
        &t.path().join("t1"),
        At {
            host: link.near.clone(),
            ..At::local(free_port(), free_port())
        },
        "",
    );
    let all = vec!["n1".to_string(), "n2".into(), "n3".into()];
    until(&n1, "all up", Duration::from_secs(30), |v| up(v) == all);

    let (id, src, dst) = cut_off_mid_share(&t, &n1, &n3, &target, 51, || link.cut());
    // While cut off, n3 sees the others as it is seen: no etcd, so no shares. Mended, it
    // rejoins, and takes a share of the next session.
    link.mend();
    until(&n1, "n3 back", Duration::from_secs(60), |v| up(v) == all);
    let before = shards_started(&n3);
    node::fill(&src.join("more"), 6, 1_000_000, 52);
    let v = n1.wait_for("source", &id, "the job with n3 back", |v| {
        node::synced(v) && node::tree_hash(&src) == node::tree_hash(&dst)
    });
    assert!(
        shards_started(&n3) > before,
        "n3 took no share after it rejoined: {v:#}\n{}",
        n3.log()
    );
    assert!(
        metric(&n3, "mover_shards_total{outcome=\"done\"}") >= 1.0,
        "{}",
        n3.log()
    );
}

/// The pid of `n`'s control container (`GET /v1/containers`), once its three containers run.
fn control_container(n: &Node) -> (u32, Value) {
    container_of(n, "control")
}

/// The pid of `n`'s container of `roles`, once its three containers run.
fn container_of(n: &Node, roles: &str) -> (u32, Value) {
    let what = format!("three containers running on {}", n.dir.display());
    node::eventually(&what, node::WAIT, || match n.try_get("/v1/containers") {
        Some((200, v)) => {
            let cs = v["containers"].as_array().cloned().unwrap_or_default();
            if cs.len() == 3 && cs.iter().all(|c| c["state"] == "running") {
                let c = cs.iter().find(|c| c["roles"] == roles).unwrap();
                Ok((c["pid"].as_u64().unwrap() as u32, v))
            } else {
                Err(format!("{v:#}"))
            }
        }
        other => Err(format!("{other:?}")),
    })
}

/// Three source nodes run as containers by role (`mover node run`), spreading their jobs, and
/// a target node; waits for the cluster to be whole with a leader, whose index it returns.
fn container_cluster(t: &Scratch, etcd: &Etcd) -> (Vec<Node>, Node, usize) {
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|name| {
            Node::start_containers_configured(
                &t.path().join(name),
                &spread_cfg(&etcd.url(), name, true),
            )
        })
        .collect();
    let target = Node::start(&t.path().join("t1"));
    let all = vec!["n1".to_string(), "n2".into(), "n3".into()];
    let v = until(
        &nodes[0],
        "all up, a leader",
        Duration::from_secs(30),
        |v| up(v) == all && v["leader"].is_string(),
    );
    let leader = v["leader"].as_str().unwrap().to_string();
    let li = all.iter().position(|n| *n == leader).unwrap();
    (nodes, target, li)
}

fn sigkill(pid: u32) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
}

/// A job of 12 MB at 3 MB/s owned by `nodes[owner]` towards `target`, spread over the three,
/// once the other two run a share: its id, source and target directories.
fn spread_job_under_way(
    t: &Scratch,
    nodes: &[Node],
    target: &Node,
    owner: usize,
    seed: u64,
) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    node::fill(&src, 12, 1_000_000, seed);
    std::fs::create_dir_all(&dst).unwrap();
    let id = node::create(
        &nodes[owner],
        target,
        &src,
        &dst,
        &["--bandwidth-limit", "3000000"],
    );
    target.cli_ok(&["relationship", "authorize", &id]);
    let others: Vec<(&Node, usize)> = (0..3)
        .filter(|j| *j != owner)
        .map(|j| (&nodes[j], 1))
        .collect();
    mid_share(&others, &nodes[owner], 1500);
    (id, src, dst)
}

/// Waits for `id` on `owner` to be synced, tolerating an API that does not answer meanwhile.
fn synced_through_restarts(owner: &Node, id: &str, what: &str) -> Value {
    let path = format!("/v1/replication/source-relationships/{id}");
    node::eventually(
        &format!("the job after {what}"),
        node::WAIT,
        || match owner.try_get(&path) {
            Some((200, v)) if node::synced(&v) => Ok(v),
            _ => Err(owner.log()),
        },
    )
}

#[test]
fn a_nodes_data_container_killed_mid_share_restarts_alone_and_the_job_completes() {
    node::need_root();
    let t = Scratch::new();
    let etcd = Etcd::start(&t.path().join("etcd"));
    let (nodes, target, li) = container_cluster(&t, &etcd);
    let owner = &nodes[li];
    let victim = &nodes[(li + 1) % 3];

    // Another node's data container dies mid-share.
    let (id, src, dst) = spread_job_under_way(&t, &nodes, &target, li, 67);
    let (data, _) = container_of(victim, "data");
    let (ctl, _) = container_of(victim, "control");
    sigkill(data);

    // The share fails, its session is retried, and the job ends with one verified recovery
    // point; what was durable is not sent again.
    let v = synced_through_restarts(owner, &id, "a node's data container died");
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst), "{v:#}");
    let (sent, last) = last_sent(&v);
    assert!(
        sent < 12e6,
        "the retried session sent {sent} bytes of 12 MB ({last})"
    );
    assert!(
        victim.log().contains("shard failed"),
        "the killed data container's share failed:\n{}",
        victim.log()
    );
    // Its supervisor restarted the data container alone.
    let (now, cs) = container_of(victim, "data");
    assert_ne!(now, data, "{cs:#}");
    assert_eq!(container_of(victim, "control").0, ctl, "{cs:#}");
    for c in cs["containers"].as_array().unwrap() {
        let restarts = if c["roles"] == "data" { 1 } else { 0 };
        assert_eq!(c["restarts"], restarts, "{cs:#}");
    }
}

#[test]
fn the_leaders_control_container_killed_mid_spread_job_restarts_alone_and_the_job_completes() {
    node::need_root();
    let t = Scratch::new();
    let etcd = Etcd::start(&t.path().join("etcd"));
    let (nodes, target, li) = container_cluster(&t, &etcd);
    let all = vec!["n1".to_string(), "n2".into(), "n3".into()];
    let owner = &nodes[li];

    // The leader owns the job.
    let (id, src, dst) = spread_job_under_way(&t, &nodes, &target, li, 61);
    let (ctl, _) = control_container(owner);
    sigkill(ctl);

    // Its supervisor restarts it alone; the job resumes and ends with one verified recovery
    // point, and what was durable is not sent again.
    let v = synced_through_restarts(owner, &id, "the leader's control container died");
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst), "{v:#}");
    let (sent, last) = last_sent(&v);
    assert!(
        sent < 12e6,
        "the resumed session sent {sent} bytes of 12 MB ({last})"
    );
    let (now, cs) = control_container(owner);
    assert_ne!(now, ctl, "{cs:#}");
    for c in cs["containers"].as_array().unwrap() {
        // The control container alone: the data and API containers went on.
        let restarts = if c["roles"] == "control" { 1 } else { 0 };
        assert_eq!(c["restarts"], restarts, "{cs:#}");
    }
    // The cluster is whole again, with a leader.
    until(&nodes[(li + 1) % 3], "all up, a leader", DOWN_WITHIN, |v| {
        up(v) == all && v["leader"].is_string()
    });
}

#[test]
fn two_owners_spread_their_jobs_over_the_same_three_nodes_into_two_target_nodes() {
    node::need_root();
    let t = Scratch::new();
    let etcd = Etcd::start(&t.path().join("etcd"));
    let start = |name: &str, spread: bool| {
        Node::start_configured(
            &t.path().join(name),
            free_port(),
            free_port(),
            &spread_cfg(&etcd.url(), name, spread),
        )
    };
    // Three source nodes and two target nodes, all members of the cluster.
    let (n1, n2, n3) = (start("n1", true), start("n2", true), start("n3", true));
    let (t1, t2) = (start("t1", false), start("t2", false));
    let all: Vec<String> = ["n1", "n2", "n3", "t1", "t2"].map(String::from).to_vec();
    until(&n1, "all up", Duration::from_secs(30), |v| up(v) == all);

    // n1 owns a job towards t1, n2 one towards t2, at the same time: each is spread over the
    // three source nodes, whose shares of the two jobs run side by side.
    let jobs: Vec<(&Node, &Node, PathBuf, PathBuf, String)> = [(&n1, &t1, 71), (&n2, &t2, 72)]
        .into_iter()
        .map(|(owner, target, seed)| {
            let src = t.path().join(format!("src{seed}"));
            let dst = t.path().join(format!("dst{seed}"));
            node::fill(&src, 9, 1_000_000, seed);
            std::fs::create_dir_all(&dst).unwrap();
            let id = node::create(owner, target, &src, &dst, &["--bandwidth-limit", "3000000"]);
            (owner, target, src, dst, id)
        })
        .collect();
    for (_, target, _, _, id) in &jobs {
        target.cli_ok(&["relationship", "authorize", id]);
    }
    for (owner, target, src, dst, id) in &jobs {
        let v = owner.wait_for("source", id, "the spread job", node::synced);
        assert_eq!(node::tree_hash(src), node::tree_hash(dst), "{v:#}");
        // One recovery point on its own target, as the source records it.
        let rp = v["recovery_point"]["time"].clone();
        target.wait_for("target", id, "the target's recovery point", |tv| {
            tv["recovery_point"]["time"] == rp
        });
    }
    // Every source node ran a share of each job: n3 of both, n1 of n2's, n2 of n1's.
    assert_eq!(
        metric(&n3, "mover_shards_total{outcome=\"done\"}"),
        2.0,
        "{}",
        n3.log()
    );
    for n in [&n1, &n2] {
        assert_eq!(
            metric(n, "mover_shards_total{outcome=\"done\"}"),
            1.0,
            "{}",
            n.log()
        );
    }
    for tn in [&t1, &t2] {
        assert_eq!(shards_started(tn), 0);
    }
}

/// n1 and n2 in one cluster (no spread), n2 presenting n1's peer identity (the target pins
/// one certificate for the source cluster), and a target node outside it; both up.
fn one_identity_pair(t: &Scratch, etcd: &Etcd) -> (Node, Node, Node) {
    let cfg = |name: &str| spread_cfg(&etcd.url(), name, false);
    let n1 = Node::start_configured(&t.path().join("n1"), free_port(), free_port(), &cfg("n1"));
    let d2 = t.path().join("n2/data");
    std::fs::create_dir_all(&d2).unwrap();
    for f in ["node.crt", "node.key"] {
        std::fs::copy(t.path().join("n1/data").join(f), d2.join(f)).unwrap();
    }
    let n2 = Node::start_configured(&t.path().join("n2"), free_port(), free_port(), &cfg("n2"));
    let target = Node::start(&t.path().join("t1"));
    let both = vec!["n1".to_string(), "n2".into()];
    until(&n2, "both up", Duration::from_secs(30), |v| up(v) == both);
    (n1, n2, target)
}

/// Waits until `by` holds relationship `id` (its owner `old` down): at most the bound that
/// shows a node down, `TAKEOVER_AFTER`, and 15 s for a loaded machine.
fn wait_taken_over(by: &Node, id: &str, old: &Node) {
    let path = format!("/v1/replication/source-relationships/{id}");
    node::eventually(
        "taken over",
        Duration::from_secs(5 + 10 + 15),
        || match by.get(&path) {
            (200, _) => Ok(()),
            (_, v) => Err(format!("{v}\nnew:\n{}\nold:\n{}", by.log(), old.log())),
        },
    )
}

#[test]
fn a_dead_owners_relationship_is_taken_over_mid_job_and_the_owner_back_drops_its_copy() {
    node::need_root();
    let t = Scratch::new();
    let etcd = Etcd::start(&t.path().join("etcd"));
    let (mut n1, n2, target) = one_identity_pair(&t, &etcd);

    // 12 MB at 3 MB/s; n1, which holds the relationship, is killed mid-job and stays down.
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    node::fill(&src, 12, 1_000_000, 31);
    std::fs::create_dir_all(&dst).unwrap();
    let id = node::create(&n1, &target, &src, &dst, &["--bandwidth-limit", "3000000"]);
    target.cli_ok(&["relationship", "authorize", &id]);
    n1.wait_for("source", &id, "the initial sync under way", |v| {
        v["job"]["bytes_done"]
            .as_u64()
            .is_some_and(|n| n > 2_000_000)
    });
    let (code, _) = n2.get(&format!("/v1/replication/source-relationships/{id}"));
    assert_eq!(code, 404, "n2 does not hold it while n1 is up");
    let held_by = |n: &Node| {
        cluster(n)["relationships"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id.as_str())
            .map(|r| {
                (
                    r["owner"].as_str().unwrap().to_string(),
                    r["owner_up"] == true,
                )
            })
    };
    assert_eq!(held_by(&n2), Some(("n1".to_string(), true)));
    n1.kill();
    let killed = Instant::now();
    let logged = n1.log().len();

    // The leader (n2 now) takes it over once n1 has been down for the stated bound, and the
    // job completes from n2 with the target equal to the source.
    wait_taken_over(&n2, &id, &n1);
    let taken = killed.elapsed();
    assert!(
        taken >= Duration::from_secs(10),
        "taken over after {taken:?}, before n1 was down for TAKEOVER_AFTER"
    );
    assert_eq!(held_by(&n2), Some(("n2".to_string(), true)));
    assert_eq!(
        metric(&n2, "mover_cluster_node_relationships{node=\"n2\"}"),
        1.0
    );
    assert_eq!(
        metric(&n2, "mover_cluster_node_relationships{node=\"n1\"}"),
        0.0
    );
    let v = n2.wait_for("source", &id, "the job taken over", node::synced);
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst), "{v:#}");
    let (sent, last) = last_sent(&v);
    assert!(
        sent < 12e6,
        "the new owner sent {sent} bytes of 12 MB: what was durable went again ({last})"
    );
    let (_, events) = n2.get("/v1/events?limit=1000");
    assert!(
        events.to_string().contains("relationship_taken_over"),
        "{events:#}"
    );

    // n1 comes back: it finds the relationship held by n2, forgets its copy and runs no job
    // of it; the next change goes through n2.
    let cfg = spread_cfg(&etcd.url(), "n1", false);
    let n1 = Node::start_configured(&t.path().join("n1"), free_port(), free_port(), &cfg);
    let path = format!("/v1/replication/source-relationships/{id}");
    node::eventually("n1 forgot its copy", Duration::from_secs(20), || {
        match n1.get(&path).0 {
            404 => Ok(()),
            _ => Err(n1.log()),
        }
    });
    let (_, events) = n1.get("/v1/events?limit=1000");
    assert!(
        events.to_string().contains("relationship_moved"),
        "{events:#}"
    );
    node::fill(&src.join("more"), 2, 100_000, 32);
    // (Recovery point times have whole seconds: the tree itself says the change arrived.)
    n2.wait_for("source", &id, "a job after n1 came back", |v| {
        node::synced(v) && node::tree_hash(&src) == node::tree_hash(&dst)
    });
    let back = n1.log()[logged..].to_string();
    assert!(
        !back.contains("job started"),
        "n1 started no job after coming back:\n{back}"
    );

    // Deleted on n2: its record is ended by the delete call itself, so no node could take
    // the relationship back even if n2 died right after.
    n2.cli_ok(&["relationship", "delete", &id, "--json"]);
    assert_eq!(held_by(&n2), None, "{:#}", cluster(&n2));
}

/// `token` on `n` until it answers `code` to `GET /v1/cluster`, for at most `within`.
fn token_answers(n: &Node, token: &str, code: u16, within: Duration) {
    node::eventually(&format!("the token answering {code}"), within, || {
        match n.call_as(Some(token), "GET", "/v1/cluster", None) {
            (got, _) if got == code => Ok(()),
            (got, v) => Err(format!("answered {got}: {v}\n{}", n.log())),
        }
    })
}

#[test]
fn a_cluster_token_works_on_every_node_until_deleted_on_any_and_is_refused_while_etcd_is_away() {
    let t = Scratch::new();
    let mut etcd = Etcd::start(&t.path().join("etcd"));
    let url = etcd.url();
    let start = |name: &str| {
        let cfg = format!("cluster = \"{url}\"\nnode_name = \"{name}\"\n");
        Node::start_configured(&t.path().join(name), free_port(), free_port(), &cfg)
    };
    let (n1, n2) = (start("n1"), start("n2"));
    let both = vec!["n1".to_string(), "n2".into()];
    until(&n2, "both up", Duration::from_secs(30), |v| up(v) == both);

    // Made on n1 (a cluster token by default on a node in a cluster), honoured on n2 with
    // its role: an observer reads the cluster and may not list tokens.
    let v = n1.cli_ok(&[
        "token", "create", "--name", "ops-ro", "--role", "observer", "--json",
    ]);
    assert_eq!(v["scope"], "cluster", "{v}");
    let tok = v["token"].as_str().unwrap().to_string();
    token_answers(&n2, &tok, 200, Duration::from_secs(10));
    assert_eq!(n2.call_as(Some(&tok), "GET", "/v1/tokens", None).0, 403);

    // A node token is its node's alone, and one name is one token.
    let (code, v) = n1.call(
        "POST",
        "/v1/tokens",
        Some(&serde_json::json!({"name": "n1-only", "role": "observer", "scope": "node"})),
    );
    assert_eq!((code, &v["scope"]), (201, &Value::from("node")), "{v}");
    let own = v["token"].as_str().unwrap().to_string();
    token_answers(&n1, &own, 200, Duration::from_secs(1));
    token_answers(&n2, &own, 401, Duration::from_secs(1));
    let (code, v) = n2.call(
        "POST",
        "/v1/tokens",
        Some(&serde_json::json!({"name": "ops-ro", "role": "admin", "scope": "node"})),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("already exists"),
        "{v}"
    );
    let (code, list) = n2.get("/v1/tokens");
    assert_eq!(code, 200, "{list}");
    let scopes: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().into(),
                t["scope"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        scopes.contains(&("ops-ro".into(), "cluster".into())),
        "{list}"
    );
    assert!(!scopes.iter().any(|(n, _)| n == "n1-only"), "{list}");
    let text = String::from_utf8_lossy(&n2.cli(&["token", "list"]).stdout).into_owned();
    assert!(text.contains("SCOPE") && text.contains("cluster"), "{text}");

    // n2 holds a node token "dup" (say, from before it joined) and n1 makes a cluster one:
    // a delete on n2 must say which.
    let make = |n: &Node, body: Value| {
        let (code, v) = n.call("POST", "/v1/tokens", Some(&body));
        assert_eq!(code, 201, "{v}");
    };
    make(
        &n2,
        serde_json::json!({"name": "dup", "role": "observer", "scope": "node"}),
    );
    make(&n1, serde_json::json!({"name": "dup", "role": "observer"}));
    node::eventually(
        "n2 seeing the cluster's dup",
        Duration::from_secs(10),
        || {
            let (_, v) = n2.get("/v1/tokens");
            let dups = v.as_array().unwrap().iter().filter(|t| t["name"] == "dup");
            if dups.count() >= 2 {
                Ok(())
            } else {
                Err(format!("{v:#}"))
            }
        },
    );
    let (code, v) = n2.call("DELETE", "/v1/tokens/dup", None);
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("scope="), "{v}");
    assert_eq!(
        n2.call("DELETE", "/v1/tokens/dup?scope=cluster", None).0,
        204
    );
    assert_eq!(n2.call("DELETE", "/v1/tokens/dup?scope=bogus", None).0, 400);
    let dups: Vec<Value> = n2
        .get("/v1/tokens")
        .1
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "dup")
        .cloned()
        .collect();
    assert_eq!(dups.len(), 1, "{dups:?}");
    assert_eq!(dups[0]["scope"], "node");

    // etcd away: n2 cannot know whether the token was deleted meanwhile, so it refuses it
    // (503, saying why); its own admin token still works. Back: honoured again.
    etcd.kill();
    token_answers(&n2, &tok, 503, Duration::from_secs(20));
    let (code, v) = n2.call_as(Some(&tok), "GET", "/v1/cluster", None);
    assert!(
        code == 503 && v["error"].as_str().unwrap().contains("etcd"),
        "{code} {v}"
    );
    assert_eq!(n2.get("/v1/cluster").0, 200);
    // Nor can it delete a cluster token, or one it cannot tell from one: 503, try again.
    let (code, v) = n2.call("DELETE", "/v1/tokens/ops-ro", None);
    assert_eq!(code, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("etcd"), "{v}");
    let made = serde_json::json!({"name": "later", "role": "observer", "scope": "cluster"});
    let (code, v) = n2.call("POST", "/v1/tokens", Some(&made));
    assert_eq!(code, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("etcd"), "{v}");
    etcd.restart();
    token_answers(&n2, &tok, 200, Duration::from_secs(30));

    // Deleted on n2: refused on n1 within the watch's delay.
    let v = n2.cli_ok(&["token", "delete", "ops-ro", "--json"]);
    assert_eq!(v["deleted"], true, "{v}");
    token_answers(&n1, &tok, 401, Duration::from_secs(10));
    token_answers(&n2, &tok, 401, Duration::from_secs(1));
    assert_eq!(n1.call("DELETE", "/v1/tokens/ops-ro", None).0, 404);
}

#[test]
fn policy_snapshots_survive_etcd_away_and_a_takeover_under_new_names() {
    node::need_root();
    let t = Scratch::new();
    let mut etcd = Etcd::start(&t.path().join("etcd"));
    let (mut n1, n2, target) = one_identity_pair(&t, &etcd);

    // A shared XFS source and an XFS target (snapshots are reflinked copies under their
    // .snapshot), and the same policy on both nodes (policies are each node's own).
    let xfs = node::mount(&t, "xfs");
    let (src, dst) = (xfs.join("src"), xfs.join("dst"));
    node::fill(&src, 3, 10_000, 41);
    std::fs::create_dir_all(&dst).unwrap();
    for n in [&n1, &n2] {
        n.cli_ok(&["policy", "create", "daily", "--at", "03:00", "--json"]);
    }
    let id = node::create(
        &n1,
        &target,
        &src,
        &dst,
        &["--mode", "snapshot-policy", "--policy", "daily"],
    );
    target.cli_ok(&["relationship", "authorize", &id]);
    until(&n2, "n1 holds it", Duration::from_secs(10), |v| {
        v["relationships"].to_string().contains(&id)
    });
    let first = n1.cli_ok(&["policy", "run", "daily", "--json"]);
    assert_eq!(first[0]["name"], "1_daily", "{first}");
    // n2 does not hold it: its run of the policy snapshots nothing.
    assert_eq!(
        n2.cli_ok(&["policy", "run", "daily", "--json"]),
        Value::Array(vec![])
    );
    kept_on(&target, &id, &["1_daily"]);

    // etcd away when the policy fires: n1 cannot tell whether it still holds the relationship,
    // so the snapshot is owed, not lost; it is taken, and replicated, once etcd is back.
    etcd.kill();
    until(&n1, "n1 without etcd", Duration::from_secs(20), |v| {
        v["connected"] == false
    });
    let out = n1.cli(&["policy", "run", "daily", "--json"]);
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("tried again"), "{said}");
    // Nor does it take a change of the relationship: 503, naming etcd (try again), which the
    // CLI exits 10 for (unavailable), not 9 (refused).
    let (code, v) = n1.call(
        "POST",
        &format!("/v1/replication/source-relationships/{id}/replicate"),
        None,
    );
    assert!(
        code == 503 && v["error"].as_str().unwrap().contains("etcd"),
        "{code} {v}"
    );
    let out = n1.cli(&["relationship", "replicate", &id]);
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    etcd.restart();
    kept_on(&target, &id, &["1_daily", "2_daily"]);

    // n1 dies; n2 takes the relationship over, and its first snapshot is named above every
    // id n1's record reserved, so neither the source's nor the target's first one is replaced.
    n1.kill();
    wait_taken_over(&n2, &id, &n1);
    std::fs::write(src.join("after-takeover"), b"in the second snapshot").unwrap();
    let second = n2.cli_ok(&["policy", "run", "daily", "--json"]);
    let name = second[0]["name"].as_str().unwrap_or_default().to_string();
    let n: u64 = name
        .strip_suffix("_daily")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{second}"));
    assert!(n >= 1024, "the new owner's first snapshot is {name}");
    kept_on(&target, &id, &["1_daily", "2_daily", &name]);
    let kept = src.join(".snapshot");
    assert!(kept.join("1_daily").is_dir() && kept.join(&name).is_dir());
}

/// Waits until `target` keeps snapshots named `names` of relationship `id`.
fn kept_on(target: &Node, id: &str, names: &[&str]) {
    let path = format!("/v1/snapshots?relationship={id}");
    node::eventually(&format!("the target keeping {names:?}"), node::WAIT, || {
        let (_, list) = target.get(&path);
        let kept: Vec<&str> = list
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
            .unwrap_or_default();
        if names.iter().all(|n| kept.contains(n)) {
            Ok(())
        } else {
            Err(format!("kept {kept:?}\n{}", target.log()))
        }
    })
}

/// Times `n`'s log says it started writing a share of another node's target session.
fn write_shares_started(n: &Node) -> usize {
    n.log().matches("writing a share").count()
}

#[test]
fn a_targets_writes_spread_over_two_target_nodes_and_a_killed_one_leaves_them_to_the_other() {
    node::need_root();
    let t = Scratch::new();
    let mut etcd = Etcd::start(&t.path().join("etcd"));
    // Two target nodes that spread their writes (they share the target: one directory here);
    // t2 has mounts of its own, as another machine would, so t1's read-only view of the
    // target is not over its path. The source is a single node.
    let cfg = |name: &str| writes_cfg(&etcd.url(), name);
    let t1 = Node::start_configured(&t.path().join("t1"), free_port(), free_port(), &cfg("t1"));
    let mut t2 = Node::start_own_mounts(&t.path().join("t2"), &cfg("t2"));
    let n1 = Node::start(&t.path().join("n1"));
    let both = vec!["t1".to_string(), "t2".into()];
    until(&t1, "both up", Duration::from_secs(30), |v| up(v) == both);

    // 12 MB at 3 MB/s: the source's two workers write one through t1, one through t2.
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    node::fill(&src, 12, 1_000_000, 91);
    std::fs::create_dir_all(&dst).unwrap();
    let id = node::create(&n1, &t1, &src, &dst, &["--bandwidth-limit", "3000000"]);
    t1.cli_ok(&["relationship", "authorize", &id]);
    let v = n1.wait_for("source", &id, "the initial sync", node::synced);
    let rp = v["recovery_point"]["time"].clone();
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst), "{v:#}");
    t1.wait_for("target", &id, "the target's recovery point", |tv| {
        tv["recovery_point"]["time"] == rp
    });
    assert!(
        metric(&t2, "mover_write_shares_total{outcome=\"done\"}") >= 1.0,
        "{}\n{}",
        t2.log(),
        t1.log()
    );
    let there = metric(&t2, "mover_write_share_bytes_total");
    assert!(
        there > 2e6 && there < 12e6,
        "t2 wrote {there} bytes of 12 MB"
    );

    // 12 MB more; etcd goes away for 3 s while t2 writes its share. The job completes
    // across the restart.
    // Made aside and moved in whole, so the job that takes it starts with all of it.
    let more = |name: &str, n: usize, seed: u64| {
        let aside = t.path().join(format!("aside-{name}"));
        node::fill(&aside, n, 1_000_000, seed);
        std::fs::rename(&aside, src.join(name)).unwrap();
    };
    more("across", 12, 93);
    let t0 = Instant::now();
    while write_shares_started(&t2) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", t1.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1000));
    etcd.kill();
    std::thread::sleep(Duration::from_secs(3));
    etcd.restart();
    let v = n1.wait_for("source", &id, "the job across the etcd restart", |v| {
        node::synced(v) && v["recovery_point"]["time"] != rp
    });
    let rp = v["recovery_point"]["time"].clone();
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst), "{v:#}");
    until(&t1, "both up again", Duration::from_secs(30), |v| {
        up(v) == both
    });

    // 18 MB more; t2 is killed while it writes its share. The job ends on t1 alone with one
    // verified recovery point, and what t2 made durable before the kill is not sent again.
    more("more", 18, 92);
    let t0 = Instant::now();
    let before = write_shares_started(&t2);
    while write_shares_started(&t2) <= before {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", t1.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(2500));
    t2.kill();
    let v = n1.wait_for("source", &id, "the job after t2 died", |v| {
        node::synced(v) && v["recovery_point"]["time"] != rp
    });
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst), "{v:#}");
    let (sent, last) = last_sent(&v);
    assert!(
        sent < 18e6,
        "the retried session sent {sent} bytes of 18 MB: what was durable went again ({last})"
    );
    let log = t1.log();
    assert!(
        log.contains("node t2 went down while it ran a write share")
            || log.contains("no write place at"),
        "{log}"
    );
}

/// A worker's Hello of made-up session `session`, sent from 127.0.0.2 (not the source's
/// address, as an attacker's would be) to a node's peer port `port` (the data plane shares
/// it), and the connection left open as a worker's would be. None if the node refused the
/// connection.
fn made_up_worker(port: u16, session: u128) -> Option<std::net::TcpStream> {
    use mover::wire::message::{Hello, Role, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
    use rustix::net::{AddressFamily, SocketType};
    use std::io::Write;
    use std::net::{Ipv4Addr, SocketAddr};
    let hello = Hello {
        min_version: PROTOCOL_VERSION_MIN,
        max_version: PROTOCOL_VERSION_MAX,
        software: mover::wire::message::software_version().into(),
        capabilities: 0,
        session: mover::units::SessionId(session),
        role: Role::Worker {
            index: mover::units::WorkerIndex(0),
        },
    };
    let frame =
        mover::wire::frame::encode_frame(mover::wire::frame::FrameKind::Hello, &hello.encode());
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).ok()?;
    rustix::net::bind(&fd, &SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 0))).ok()?;
    rustix::net::connect(&fd, &SocketAddr::from((Ipv4Addr::LOCALHOST, port))).ok()?;
    let mut c = std::net::TcpStream::from(fd);
    c.write_all(&frame).ok()?;
    c.set_nonblocking(true).ok()?;
    Some(c)
}

/// Whether the place answered `c` (its refusal, an Error frame) or closed it.
fn answered(c: &std::net::TcpStream) -> bool {
    let mut b = [0u8; 1];
    match c.peek(&mut b) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Runs a job of source relationship `id` on `n` now and waits until it is done and synced
/// (a no-op job where nothing changed since the last one).
fn noop_job(n: &Node, id: &str) {
    let done = |v: &serde_json::Value| v["last_attempt"]["time"].clone();
    let before = done(&n.view("source", id));
    // Attempt times are in whole seconds.
    std::thread::sleep(Duration::from_millis(1100));
    n.cli_ok(&["relationship", "replicate", id]);
    n.wait_for("source", id, "a no-op job", |v| {
        done(v) != before && node::synced(v)
    });
}

#[test]
fn worker_hellos_of_made_up_sessions_do_not_keep_a_write_place_out_of_a_real_session() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    node::need_root();
    let t = Scratch::new();
    let mut etcd = Etcd::start(&t.path().join("etcd"));
    let cfg = |name: &str| writes_cfg(&etcd.url(), name);
    let mut t1 = Node::start_configured(&t.path().join("t1"), free_port(), free_port(), &cfg("t1"));
    let t2 = Node::start_own_mounts(&t.path().join("t2"), &cfg("t2"));
    let n1 = Node::start(&t.path().join("n1"));
    let both = vec!["t1".to_string(), "t2".into()];
    until(&t1, "both up", Duration::from_secs(30), |v| up(v) == both);

    // Anyone who reaches t2's port keeps as many worker Hellos of made-up sessions open at
    // t2 as a place ever held (a worker's index is below MAX_WORKERS), replacing each one
    // t2 answers, for as long as the job runs.
    let flooding = Arc::new(AtomicBool::new(true));
    let refused = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (flooding, refused, port) = (flooding.clone(), refused.clone(), t2.listen);
        std::thread::spawn(move || {
            let n = usize::from(mover::wire::message::MAX_WORKERS);
            let mut next = 0xbad0_0000_u128;
            let mut open: Vec<std::net::TcpStream> = Vec::new();
            while flooding.load(SeqCst) {
                let before = open.len();
                open.retain(|c| !answered(c));
                refused.fetch_add(before - open.len(), SeqCst);
                while open.len() < n {
                    next += 1;
                    match made_up_worker(port, next) {
                        Some(c) => open.push(c),
                        None => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            open
        })
    };
    // The job starts once t2 holds what it will of the flood: it refused the first ones.
    node::eventually(
        "t2 refuses made-up sessions",
        Duration::from_secs(30),
        || match refused.load(SeqCst) {
            0 => Err(t2.log()),
            n => Ok(n),
        },
    );

    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    node::fill(&src, 4, 1_000_000, 97);
    std::fs::create_dir_all(&dst).unwrap();
    let id = node::create(&n1, &t1, &src, &dst, &[]);
    t1.cli_ok(&["relationship", "authorize", &id]);
    n1.wait_for("source", &id, "the initial sync", node::synced);
    // Of the made-up sessions, t2 holds only the few it takes as unannounced (a committing
    // node of an older release announces nothing); it answers the rest, again and again.
    // (The flood goes on until it has seen that: a fast sync ends it sooner.)
    node::eventually(
        "t2 answers 200 made-up sessions",
        Duration::from_secs(30),
        || match refused.load(SeqCst) {
            n if n >= 200 => Ok(()),
            n => Err(format!("{n} answered")),
        },
    );
    flooding.store(false, SeqCst);
    let open = flood.join().unwrap();
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst));
    // t2 took its share of the session: its worker, announced, was held, not refused for
    // want of room.
    let log = plain(&t2.log());
    assert!(
        write_shares_started(&t2) >= 1
            && metric(&t2, "mover_write_shares_total{outcome=\"done\"}") >= 1.0
            && log.contains("announced=true"),
        "t2 wrote no share of an announced session\n{log}\n{}",
        t1.log()
    );
    assert!(
        !t1.log()
            .contains("left out of this relationship's sessions"),
        "{}",
        t1.log()
    );
    // Sessions that give a place no share (no-op jobs here) leave their announcements, and
    // each session's replace the previous one's: etcd holds at most one session's per
    // relationship, not one per job until the places' day-long sweep.
    let expect = format!("{}expect/", control::cluster::KEY_ROOT);
    for _ in 0..3 {
        noop_job(&n1, &id);
        // t2 is the one write place (a committing node writes its own share itself).
        let held = etcd.count(&expect);
        assert_eq!(held, 1, "announcements in etcd");
    }
    // A second relationship's no-op job leaves its own announcement. Deleted, the
    // relationship takes it out of etcd at once (t1 lives on, and so would it, on t1's lease,
    // until t2's day-long sweep), and leaves the first one's.
    let dst2 = t.path().join("dst2");
    std::fs::create_dir_all(&dst2).unwrap();
    let id2 = node::create(&n1, &t1, &src, &dst2, &[]);
    t1.cli_ok(&["relationship", "authorize", &id2]);
    n1.wait_for("source", &id2, "the second initial sync", node::synced);
    noop_job(&n1, &id2);
    assert_eq!(etcd.count(&expect), 2, "each relationship's announcement");
    t1.cli_ok(&["relationship", "delete", &id2, "--role", "target"]);
    assert_eq!(
        etcd.count(&expect),
        1,
        "the deleted relationship's announcement went with it"
    );
    // Once the flood stopped, t2 still holds no more than it takes as unannounced.
    node::eventually(
        "t2 answers all but 16 made-up sessions",
        Duration::from_secs(15),
        || match open.iter().filter(|c| !answered(c)).count() {
            n if n <= 16 => Ok(()),
            n => Err(format!("{n} still held")),
        },
    );
    // etcd away for longer than a lease's life: t1's session ends, and its next one has a new
    // lease, on which it puts the announcement again. The old lease, given a whole life again
    // by etcd's restart, then expires without taking the announcement along.
    etcd.kill();
    until(&t1, "t1 without etcd", Duration::from_secs(20), |v| {
        v["connected"] == false
    });
    std::thread::sleep(Duration::from_secs(4));
    etcd.restart();
    until(&t1, "t1 back with etcd", Duration::from_secs(30), |v| {
        v["connected"] == true
    });
    // etcd restarted gives the old lease its whole life again before it expires.
    std::thread::sleep(Duration::from_secs(2 * control::cluster::MEMBER_TTL as u64));
    assert_eq!(etcd.count(&expect), 1, "the announcement on t1's new lease");
    // The last announcement lives on the committing node's heartbeat lease: killed (a
    // restarted node no longer knows what it announced), t1 takes it with it once etcd
    // expires the lease (3 s), not after the places' day-long sweep.
    t1.kill();
    node::eventually(
        "t1's announcement gone with its lease",
        Duration::from_secs(20),
        || match etcd.count(&expect) {
            0 => Ok(()),
            n => Err(format!("{n} announcements left")),
        },
    );
}

/// The first line of `log` that contains `what` (colours taken out), and its timestamp
/// (tracing's RFC 3339 in UTC with microseconds: one length, so the strings compare as the
/// times do).
fn logged_at(log: &str, what: &str) -> Option<(String, String)> {
    let plain = plain(log.lines().find(|l| l.contains(what))?);
    let at = plain.split_whitespace().next()?.to_string();
    Some((at, plain))
}

/// `log` with its colours taken out.
fn plain(log: &str) -> String {
    let mut plain = String::new();
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

#[test]
fn a_write_place_cut_off_from_etcd_stops_writing_before_it_is_seen_down() {
    node::need_root();
    let t = Scratch::new();
    // t2 in a namespace of its own with two links into this thread's: one to etcd, one that
    // the source's workers reach it by. Cutting the first leaves t2 receiving their frames.
    let _hub = Netns::enter("hub");
    let t2ns = Netns::new("t2");
    let to_etcd = Link::new(&t2ns, 0);
    let data = Link::new(&t2ns, 1);
    let etcd = Etcd::start_also_on(&t.path().join("etcd"), Some(&to_etcd.near));
    let t1 = Node::start_configured(
        &t.path().join("t1"),
        free_port(),
        free_port(),
        &writes_cfg(&etcd.url(), "t1"),
    );
    let t2 = Node::start_own_mounts_at(
        &t.path().join("t2"),
        At {
            netns: Some(t2ns.0.clone()),
            host: data.far.clone(),
            ..At::local(free_port(), free_port())
        },
        &writes_cfg(&etcd.url_also(), "t2"),
    );
    let n1 = Node::start(&t.path().join("n1"));
    let both = vec!["t1".to_string(), "t2".into()];
    until(&t1, "both up", Duration::from_secs(30), |v| up(v) == both);

    // 24 MB at 3 MB/s: the source's two workers write one through t1, one through t2.
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    node::fill(&src, 24, 1_000_000, 95);
    std::fs::create_dir_all(&dst).unwrap();
    let id = node::create(&n1, &t1, &src, &dst, &["--bandwidth-limit", "3000000"]);
    t1.cli_ok(&["relationship", "authorize", &id]);
    let t0 = Instant::now();
    while write_shares_started(&t2) < 1 {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", t1.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1000));
    to_etcd.cut();
    let v = n1.wait_for("source", &id, "the job without t2", node::synced);
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst), "{v:#}");
    // t2's fence refused (its lease could no longer be vouched for) before t1 saw it down and
    // gave its share up, and its share failed for that reason.
    let (t1_log, t2_log) = (t1.log(), t2.log());
    let (fenced, _) = logged_at(&t2_log, "write place fenced")
        .unwrap_or_else(|| panic!("t2 went on writing its share, cut off from etcd:\n{t2_log}"));
    let (_, why) = logged_at(&t2_log, "write share failed")
        .unwrap_or_else(|| panic!("t2's share did not fail:\n{t2_log}"));
    assert!(why.contains("stopped writing"), "{why}");
    let (down, _) = logged_at(&t1_log, "node t2 went down while it ran a write share")
        .unwrap_or_else(|| panic!("t1 never saw t2 down:\n{t1_log}"));
    assert!(
        fenced < down,
        "t2 was fenced at {fenced}, after t1 saw it down at {down}"
    );
    eprintln!("t2 was fenced at {fenced}; t1 saw it down at {down}");

    // Back in reach, t2 rejoins and takes a share of the next session (a lost lease does not
    // leave a place out).
    to_etcd.mend();
    until(&t1, "t2 back", Duration::from_secs(60), |v| up(v) == both);
    let before = write_shares_started(&t2);
    let aside = t.path().join("aside");
    node::fill(&aside, 12, 1_000_000, 96);
    std::fs::rename(&aside, src.join("more")).unwrap();
    let v = n1.wait_for("source", &id, "the job with t2 back", |v| {
        node::synced(v) && node::tree_hash(&src) == node::tree_hash(&dst)
    });
    assert!(
        write_shares_started(&t2) > before,
        "t2 took no share after it rejoined: {v:#}\n{}",
        t2.log()
    );
}

#[test]
fn a_forgotten_unreadable_source_relationship_ends_its_record_in_etcd() {
    node::need_root();
    let t = Scratch::new();
    let etcd = Etcd::start(&t.path().join("etcd"));
    let n1 = Node::start_configured(
        &t.path().join("n1"),
        free_port(),
        free_port(),
        &spread_cfg(&etcd.url(), "n1", false),
    );
    let tgt = Node::start(&t.path().join("tgt"));
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    node::fill(&src, 3, 1000, 41);
    std::fs::create_dir_all(&dst).unwrap();
    let id = node::create(&n1, &tgt, &src, &dst, &[]);
    tgt.cli_ok(&["relationship", "authorize", &id]);
    n1.wait_for("source", &id, "the initial sync", node::synced);
    let key = format!("{}owners/{id}", control::cluster::KEY_ROOT);
    let record = node::eventually("its record in etcd", Duration::from_secs(30), || {
        etcd.get_json(&key).ok_or_else(|| "no record".to_string())
    });
    assert_eq!(record["relationship"]["ended"], false, "{record}");

    // Unreadable here, then forgotten: its record ends before the row goes, so no node (of
    // a release that reads it) takes it over once this one is down.
    node::damage_row(&n1, &id);
    // Not while etcd is away: the row stays, and the call says to try again.
    let mut etcd = etcd;
    etcd.kill();
    let (code, v) = n1.call("DELETE", &format!("/v1/replication/unreadable/{id}"), None);
    assert!(
        code == 503 && v["error"].as_str().unwrap().contains("etcd"),
        "{code} {v}"
    );
    assert_eq!(n1.get("/v1/replication/unreadable").1[0]["id"], id.as_str());
    etcd.restart();
    node::eventually("n1 back with etcd", Duration::from_secs(30), || {
        let v = n1.get("/v1/cluster").1;
        (v["connected"] == true)
            .then_some(())
            .ok_or_else(|| v.to_string())
    });
    n1.cli_ok(&["relationship", "forget", &id]);
    let record = etcd.get_json(&key).unwrap();
    assert_eq!(
        (&record["owner"], &record["relationship"]["ended"]),
        (&Value::from("n1"), &Value::Bool(true)),
        "{record}"
    );
    assert_eq!(record["relationship"]["job_running"], false, "{record}");
    assert_eq!(
        n1.get("/v1/replication/unreadable").1,
        serde_json::json!([])
    );
}
