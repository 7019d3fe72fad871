//! Rolling upgrade of a three-node cluster on loopback (issue 15): each node runs as
//! containers by role (`mover node run`) from its own copy of the build, joined to a real
//! etcd; a relationship from n1 to n2 replicates a churning tree while `mover upgrade start`
//! distributes the package, then restarts the control containers (with the data plane) one
//! node at a time and the API containers after them. Test builds report the release a test
//! sets (`TEST_VERSION_ENV`): the "new" package is a copy of the same build that reports
//! 0.1.1 once installed. Needs root (the target is protected with a read-only bind mount).

mod node;

use assert_cmd::cargo::cargo_bin;
use node::etcd::Etcd;
use node::{create, fill, need_root, sha256, stderr, synced, tree_hash, Node, Scratch};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const UPGRADE_WITHIN: Duration = Duration::from_secs(300);

struct Cluster {
    t: Scratch,
    etcd: Etcd,
    nodes: Vec<Node>,
    pkg: PathBuf,
    sum: String,
}

fn node_dir(t: &Scratch, i: usize) -> PathBuf {
    t.path().join(format!("n{i}"))
}

fn start_node(t: &Scratch, etcd: &Etcd, i: usize) -> Node {
    let cfg = format!("cluster = \"{}\"\nnode_name = \"n{i}\"\n", etcd.url());
    Node::start_containers_from(
        &node_dir(t, i),
        &t.path().join(format!("bin{i}/mover")),
        &cfg,
        Some("0.1.0"),
    )
}

fn cluster() -> Cluster {
    need_root();
    let t = Scratch::new();
    let etcd = Etcd::start(&t.path().join("etcd"));
    // Every node runs its own copy (an upgrade replaces it); the package sits on the path
    // every node sees.
    let pkg = t.path().join("pkg/mover-0.1.1");
    for p in (1..=3)
        .map(|i| t.path().join(format!("bin{i}/mover")))
        .chain([pkg.clone()])
    {
        node::lean_copy(&p);
    }
    let sum = sha256(&pkg);
    let nodes: Vec<Node> = (1..=3).map(|i| start_node(&t, &etcd, i)).collect();
    let c = Cluster {
        t,
        etcd,
        nodes,
        pkg,
        sum,
    };
    wait(&c.nodes[2], "three members up", |v| {
        v["containers"].as_array().is_some_and(|cs| {
            let nodes: BTreeSet<&str> = cs.iter().filter_map(|c| c["node"].as_str()).collect();
            nodes.len() == 3
        })
    });
    c
}

/// Polls `GET /v1/upgrade/status` on `n` (tolerating restarts) until `ok`.
fn wait(n: &Node, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    let mut last = Value::Null;
    loop {
        if let Some((200, v)) = n.try_get("/v1/upgrade/status") {
            if ok(&v) {
                return v;
            }
            last = v;
        }
        assert!(
            t0.elapsed() < UPGRADE_WITHIN,
            "waited {UPGRADE_WITHIN:?} for {what}; last status {last:#}\nlog:\n{}",
            n.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn all_on(v: &Value, version: &str) -> bool {
    v["containers"].as_array().is_some_and(|cs| {
        cs.len() == 9
            && cs
                .iter()
                .all(|c| c["version"] == version && c["health"] == "ok")
    })
}

fn upgrade(n: &Node, c: &Cluster, extra: &[&str]) -> Command {
    let mut cmd = Command::new(cargo_bin("mover"));
    cmd.args([
        "upgrade",
        "start",
        "--to",
        "0.1.1",
        "--package",
        c.pkg.to_str().unwrap(),
        "--sha256",
        &c.sum,
        "--wait-secs",
        "300",
    ])
    .args(extra)
    .args(["--api", &n.url()])
    .env("MOVER_TOKEN", &n.token);
    cmd
}

/// The control container's pid on each node, from their published containers.
fn control_pids(v: &Value) -> Vec<(String, u64)> {
    let mut p: Vec<(String, u64)> = v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == "control")
        .map(|c| {
            (
                c["node"].as_str().unwrap().to_string(),
                c["pid"].as_u64().unwrap(),
            )
        })
        .collect();
    p.sort();
    p
}

#[test]
fn a_cluster_upgrades_container_by_container_while_a_relationship_replicates() {
    let c = cluster();
    let (n1, n2, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let (src, dst) = (c.t.path().join("src"), c.t.path().join("dst"));
    fill(&src, 30, 40_000, 3);
    std::fs::create_dir(&dst).unwrap();
    let id = create(n1, n2, &src, &dst, &[]);
    n2.cli_ok(&["relationship", "authorize", &id]);
    n1.wait_for("source", &id, "the initial sync", synced);

    // Churn: files rewritten and added all along.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, src) = (stop.clone(), src.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                std::fs::write(
                    src.join(format!("churn-{}", i % 50)),
                    i.to_le_bytes().repeat(512),
                )
                .unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let before = wait(n3, "every container on 0.1.0", |v| all_on(v, "0.1.0"));
    let mut upgrading = upgrade(n3, &c, &["--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut states, mut points) = (BTreeSet::new(), BTreeSet::new());
    let t0 = Instant::now();
    let status = loop {
        if let Some((200, v)) = n1.try_get(&format!("/v1/replication/source-relationships/{id}")) {
            states.insert(v["state"].as_str().unwrap_or("?").to_string());
            if let Some(t) = v["recovery_point"]["time"].as_str() {
                points.insert(t.to_string());
            }
        }
        if let Some(s) = upgrading.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < UPGRADE_WITHIN, "the upgrade did not end");
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = upgrading.wait_with_output().unwrap();
    assert!(
        status.success(),
        "upgrade failed: {}\n{}",
        stderr(&out),
        n3.log()
    );
    let end: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(end["rolling"]["state"], "done", "{end:#}");

    // Every container of every node ends on the new release, each control container having
    // restarted once (the upgrade), onto the binary the package installed.
    let after = wait(n3, "every container on 0.1.1", |v| all_on(v, "0.1.1"));
    let (old, new) = (control_pids(&before), control_pids(&after));
    assert_eq!(old.len(), 3);
    for ((n, a), (m, b)) in old.iter().zip(&new) {
        assert_eq!(n, m);
        // exec in place: the same pid runs the new binary.
        assert_eq!(
            a, b,
            "{n}'s control container was replaced, not restarted in place"
        );
    }
    for i in 1..=3 {
        assert_eq!(sha256(&c.t.path().join(format!("bin{i}/mover"))), c.sum);
        let steps = &end["steps"][format!("n{i}")]["done"];
        assert_eq!(steps.as_array().map(Vec::len), Some(4), "n{i}: {steps}");
    }

    // Each member shows its containers and figures, in the cluster view and in /metrics.
    let t0 = Instant::now();
    loop {
        let (code, v) = n2.get("/v1/cluster");
        assert_eq!(code, 200, "{v}");
        let ok = v["members"].as_array().unwrap().iter().all(|m| {
            m["report"]["containers"]
                .as_array()
                .is_some_and(|cs| cs.len() == 3 && cs.iter().all(|c| c["version"] == "0.1.1"))
                && m["report"]["throughput_bytes_per_sec"].is_number()
        });
        if ok {
            break;
        }
        assert!(t0.elapsed() < UPGRADE_WITHIN, "members' reports: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, metrics) = n2.get("/metrics");
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    for want in [
        "mover_cluster_container_up{node=\"n1\",roles=\"api\",version=\"0.1.1\"} 1",
        "mover_cluster_container_up{node=\"n3\",roles=\"control\",version=\"0.1.1\"} 1",
        "mover_cluster_node_throughput_bytes_per_second{node=\"n1\"}",
        "mover_cluster_node_jobs_running{node=\"n2\"} 0",
    ] {
        assert!(metrics.contains(want), "no {want} in\n{metrics}");
    }
    let members = n1.cli(&["cluster", "members"]);
    let text = String::from_utf8_lossy(&members.stdout);
    assert_eq!(text.matches("container control").count(), 3, "{text}");
    assert_eq!(text.matches("container data").count(), 3, "{text}");

    // Nothing worse than a transient retry, and the recovery point moved on meanwhile.
    let allowed: BTreeSet<String> = ["running", "idle", "job_incomplete_will_retry"]
        .into_iter()
        .map(String::from)
        .collect();
    assert!(states.is_subset(&allowed), "states seen: {states:?}");
    assert!(
        points.len() >= 2,
        "the recovery point did not advance: {points:?}"
    );

    // Churn stops; the next job brings the target to the source's tree.
    stop.store(true, Ordering::SeqCst);
    churn.join().unwrap();
    // (The job that carries the last change may have ended already: no new recovery point is
    // awaited, only a settled relationship whose target equals the source.)
    let t0 = Instant::now();
    loop {
        let v = n1.view("source", &id);
        if synced(&v) && tree_hash(&src) == tree_hash(&dst) {
            break;
        }
        assert!(
            t0.elapsed() < UPGRADE_WITHIN,
            "target never caught up: source {:?}, target {:?}; {v:#}\nsource node's log:\n{}",
            tree_hash(&src),
            tree_hash(&dst),
            n1.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(c.etcd);
}

#[test]
fn an_upgrade_killed_in_its_data_phase_resumes_when_run_again() {
    let mut c = cluster();
    let before = wait(&c.nodes[2], "every container on 0.1.0", |v| {
        all_on(v, "0.1.0")
    });
    let mut first = upgrade(&c.nodes[2], &c, &["--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Mid data phase: one node restarted onto the new release, another asked.
    let mid = wait(&c.nodes[2], "one node through its data phase", |v| {
        let done = v["steps"].as_object().map_or(0, |o| {
            o.values()
                .filter(|s| {
                    s["done"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|p| p == "data"))
                })
                .count()
        });
        done == 1
    });
    // The command is killed, and so is a node that has not restarted yet (its supervisor with
    // its containers), as if the machine went down.
    first.kill().unwrap();
    first.wait().unwrap();
    let done_node = mid["steps"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, s)| s["done"].as_array().unwrap().iter().any(|p| p == "data"))
        .map(|(n, _)| n.clone())
        .unwrap();
    let victim = (1..=3)
        .find(|i| format!("n{i}") != done_node && *i != 3)
        .unwrap();
    c.nodes[victim - 1].kill();
    // It comes back (as a machine would); the rerun resumes the same plan.
    c.nodes[victim - 1] = start_node(&c.t, &c.etcd, victim);
    let out = upgrade(&c.nodes[2], &c, &[]).output().unwrap();
    assert!(
        out.status.success(),
        "rerun failed: {}\n{}",
        stderr(&out),
        c.nodes[2].log()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("resumed"), "{text}");
    wait(&c.nodes[2], "every container on 0.1.1", |v| {
        all_on(v, "0.1.1")
    });
    // The node that was through its data phase before the kill was not restarted again.
    let i: usize = done_node[1..].parse().unwrap();
    let restarts = c.nodes[i - 1]
        .log()
        .matches("restarting onto the new release")
        .count();
    assert_eq!(restarts, 1, "{done_node} restarted {restarts} times");
    assert!(all_on(&before, "0.1.0"));
}
