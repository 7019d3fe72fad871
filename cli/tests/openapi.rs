//! The API against its own description: schemathesis (pinned in
//! scripts/api-test-requirements.txt, installed by scripts/install-deps.sh) generates requests
//! from `GET /v1/openapi.json` and checks every answer. Needs root (a network namespace).
//!
//! Generated requests name arbitrary peer addresses, and the daemon calls its peers, so the
//! daemon and schemathesis run in a network namespace this test makes with only loopback in it:
//! no packet can leave the machine. Source paths are arbitrary too: the daemon only accepts
//! sources under a directory of the test (`allowed_source_roots`), and target relationships
//! come only from a peer, which no generated request can become.
//!
//! So that the calls on one relationship or policy reach past "not found", the test makes a
//! synced relationship (towards a second daemon in the namespace) and a policy first, and hands
//! their id and name to schemathesis for those operations. A reverse can make the node that
//! relationship's target, so `POST .../drills` is left out: its `into` names any directory of
//! the node, where the drill's copy would be written (an operator's choice by design).
//! `POST /v1/upgrade/start` is in: it copies only a regular file, into the data directory,
//! and replaces the daemon's binary only with a package whose SHA-256 the request names,
//! which a generated one cannot.

mod node;

use node::netns::Netns;
use node::{fill, free_port, need_root, s, synced, Node, Scratch};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Test cases per operation and phase: enough to reach every documented answer, few enough
/// for the whole run to take well under the 3 minutes it is allowed.
const MAX_EXAMPLES: &str = "30";
/// A request unanswered this long fails the run (a hang is a bug).
const REQUEST_TIMEOUT_SECS: &str = "20";
/// The whole schemathesis run; past it the test fails rather than waits.
const RUN_BUDGET: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(200);
/// What each answer is checked for.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance";
/// Fixed, so a failure reproduces; change it to explore.
const SEED: &str = "1";
/// The one operation left out (see the module comment).
const EXCLUDED: &str = "/[{]id[}]/drills$";
/// The seeded policy.
const POLICY: &str = "hourly";

fn require_schemathesis() {
    let ok = Command::new("schemathesis")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "schemathesis is required: pip install -r scripts/api-test-requirements.txt \
         (scripts/install-deps.sh does)"
    );
}

#[test]
fn schemathesis_finds_no_server_error_hang_or_undocumented_answer() {
    need_root();
    require_schemathesis();
    let _ns = Netns::enter("api");
    let scratch = Scratch::new();
    let sources = scratch.path().join("sources");
    std::fs::create_dir(&sources).unwrap();
    let n = Node::start_configured(
        &scratch.path().join("a"),
        free_port(),
        free_port(),
        &format!("allowed_source_roots = [{:?}]\n", s(&sources)),
    );
    let only_lo = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&only_lo.stdout).into_owned();
    assert_eq!(links.lines().count(), 1, "more than loopback: {links}");
    let target = Node::start(&scratch.path().join("b"));
    let id = seed(&n, &target, &sources, &scratch.path().join("replica"));
    std::fs::write(scratch.path().join("schemathesis.toml"), config(&id)).unwrap();

    let url = format!("{}/v1/openapi.json", n.url());
    let auth = format!("Authorization: Bearer {}", n.token);
    let log = scratch.path().join("schemathesis.log");
    let mut child = Command::new("schemathesis")
        .args(["run", &url, "-H", &auth, "--checks", CHECKS])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
        .args(["--request-timeout", REQUEST_TIMEOUT_SECS, "--no-color"])
        .args(["--exclude-path-regex", EXCLUDED])
        // Where it finds schemathesis.toml, and where Hypothesis keeps its example database.
        .current_dir(scratch.path())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > RUN_BUDGET {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis ran past {RUN_BUDGET:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(POLL);
    };
    let report = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "schemathesis failed ({status}):\n{report}\ndaemon log:\n{}\ntarget's log:\n{}",
        n.log(),
        target.log()
    );
    eprintln!("schemathesis passed in {:?}:\n{report}", t0.elapsed());

    // Whatever it sent, the node still answers its admin, and no directory of this node
    // outside the test's became part of a relationship (a reverse may have made the seeded one
    // a target here: its directory on this node is then the target path).
    let (code, all) = n.get("/v1/replication/status");
    assert_eq!(code, 200, "{all}");
    for r in all.as_array().unwrap() {
        let here = match r["role"].as_str() {
            Some("source") => &r["source_path"],
            _ => &r["target_path"],
        };
        let p = here.as_str().unwrap();
        assert!(
            p.starts_with(s(scratch.path())),
            "a relationship of {p}: {r}"
        );
    }
}

/// A relationship from `a` to `b` through its initial sync, and a policy on `a`; the
/// relationship's id.
fn seed(a: &Node, b: &Node, sources: &std::path::Path, replica: &std::path::Path) -> String {
    let data = sources.join("data");
    fill(&data, 3, 1000, 7);
    std::fs::create_dir(replica).unwrap();
    let spec = json!({"source_path": s(&data), "target_address": "127.0.0.1",
                      "target_port": b.listen, "target_path": s(replica)});
    let (code, v) = a.call("POST", "/v1/replication/source-relationships", Some(&spec));
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let authorize = format!("/v1/replication/target-relationships/{id}/authorize");
    let (code, v) = b.call("POST", &authorize, Some(&json!({})));
    assert_eq!(code, 200, "{v}");
    a.wait_for("source", &id, "initial sync", synced);
    let policy = json!({"name": POLICY, "schedule": {"kind": "every", "minutes": 60},
                        "expiry": {"after_secs": 86400}});
    let (code, v) = a.call("POST", "/v1/snapshot-policies", Some(&policy));
    assert_eq!(code, 201, "{v}");
    id
}

/// schemathesis.toml: the operations on one relationship or policy get the seeded ones.
fn config(id: &str) -> String {
    format!(
        r#"# 502 is the API's answer when the peer daemon cannot be reached or refuses (documented
# for the operations that ask it; status_code_conformance holds the others to theirs).
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "502"]

[[operations]]
include-path-regex = "^/v1/replication/(source|target)-relationships/[{{]id[}}]"
parameters = {{ "path.id" = "{id}" }}

[[operations]]
include-path-regex = "^/v1/snapshots/"
parameters = {{ "path.relationship" = "{id}" }}

[[operations]]
include-path-regex = "^/v1/snapshot-policies/[{{]name[}}]"
parameters = {{ "path.name" = "{POLICY}" }}
"#
    )
}

#[test]
fn a_node_refuses_a_relationship_to_itself() {
    need_root();
    let scratch = Scratch::new();
    let n = Node::start(&scratch.path().join("a"));
    let data = scratch.path().join("data");
    fill(&data, 1, 10, 1);
    let spec = json!({"source_path": s(&data), "target_address": "127.0.0.1",
                      "target_port": n.listen, "target_path": s(&scratch.path().join("x"))});
    let (code, v) = n.call("POST", "/v1/replication/source-relationships", Some(&spec));
    // Refused by the peer, which is itself: 502 as any refusal of the target.
    assert_eq!(code, 502, "{v}");
    assert!(v["error"].as_str().unwrap().contains("to itself"), "{v}");
    let (_, all) = n.get("/v1/replication/status");
    assert_eq!(all, json!([]), "nothing recorded");
}
