//! End to end: peers of different releases (debug builds reporting another version) are
//! accepted when the compatibility policy allows the pair and refused otherwise, at proposal
//! and at every exchange after, with the state `incompatible_peer_version` on both sides.

mod node;

use node::{
    fill, free_port, need_root, s, stderr, synced_relationship, tree_hash, try_create, Node,
    Scratch,
};
use std::time::Duration;

fn incompatible(v: &serde_json::Value) -> bool {
    v["state"] == "incompatible_peer_version"
        && v["peer_version_error"]
            .as_str()
            .is_some_and(|e| e.contains("2.3.0") && e.contains("0.1.0") && e.contains("upgrade"))
}

#[test]
fn peers_of_incompatible_releases_are_refused_at_proposal_and_at_every_exchange() {
    need_root();
    let t = Scratch::new();
    let b = Node::start(&t.path().join("b"));
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    fill(&src.join("d"), 5, 1000, 1);
    std::fs::create_dir(&dst).unwrap();
    let a_dir = t.path().join("a");

    // 2.3.0 is ten quarterly releases after 0.1.0: the target refuses the proposal.
    let mut a = Node::start_as_version(&a_dir, free_port(), free_port(), "2.3.0");
    let out = try_create(&a, b.listen, &src, &dst, &[]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("incompatible peer version")
            && e.contains("mover 0.1.0, the source mover 2.3.0")
            && e.contains("up to 8 quarterly releases apart")
            && e.contains("upgrade the mover 0.1.0 side to"),
        "{e}"
    );
    assert_eq!(
        a.cli_ok(&["relationship", "list", "--json"]),
        serde_json::json!([])
    );

    // 0.3.1 is within the window: accepted, and it replicates.
    a.kill();
    let mut a = Node::start_as_version(&a_dir, free_port(), free_port(), "0.3.1");
    let id = synced_relationship(&a, &b, &src, &dst);
    assert_eq!(tree_hash(&src), tree_hash(&dst));

    // The source comes back as 2.3.0: both sides refuse each other and say why; no job runs.
    a.kill();
    let mut a = Node::start_as_version(&a_dir, free_port(), free_port(), "2.3.0");
    a.wait_for(
        "source",
        &id,
        "the source to see the target's release",
        incompatible,
    );
    b.wait_for(
        "target",
        &id,
        "the target to see the source's release",
        incompatible,
    );
    std::fs::write(src.join("while-incompatible"), b"x").unwrap();
    a.cli_ok(&["relationship", "replicate", &id]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !dst.join("while-incompatible").exists(),
        "a job ran across incompatible releases"
    );

    // Back on this build's release: replication goes on.
    a.kill();
    let a = Node::start(&a_dir);
    a.wait_for("source", &id, "the change to replicate", |v| {
        v["state"] != "incompatible_peer_version" && dst.join("while-incompatible").exists()
    });
    b.wait_for("target", &id, "the target to accept it again", |v| {
        v["peer_version_error"].is_null()
    });
}

fn item<'a>(r: &'a serde_json::Value, check: &str) -> &'a serde_json::Value {
    r["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["check"] == check)
        .unwrap_or_else(|| panic!("no {check} item in {r}"))
}

/// A tmpfs of `size` at a new directory (its free space is what statvfs reports).
fn tmpfs(t: &Scratch, name: &str, size: &str) -> std::path::PathBuf {
    let at = t.path().join(name);
    std::fs::create_dir(&at).unwrap();
    node::run(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at),
    );
    at
}

/// The upgrade checker's items turn yellow or red from real conditions: a full staging area,
/// a token without the admin privilege, a peer whose release the new one may not replicate
/// with, a skipped major version, a stopped peer node.
#[test]
fn the_upgrade_checker_reports_real_conditions_with_their_remedies() {
    need_root();
    let t = Scratch::new();
    let (a, mut b, src, dst) = node::pair(&t);
    fill(&src.join("d"), 3, 1000, 2);
    std::fs::create_dir(&dst).unwrap();
    let id = synced_relationship(&a, &b, &src, &dst);
    let (big, full) = (tmpfs(&t, "big", "8g"), tmpfs(&t, "full", "1m"));
    let check = |to: &str, staging: &std::path::Path| {
        let out = a.cli(&[
            "upgrade",
            "check",
            "--to",
            to,
            "--staging",
            s(staging),
            "--json",
        ]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
        assert_eq!(
            out.status.code(),
            Some(if v["blocked"] == true { 1 } else { 0 }),
            "{v}"
        );
        v
    };

    let ok = check("0.2.0", &big);
    assert_eq!(ok["blocked"], false, "{ok:#}");
    assert!(
        ok["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["level"] == "green"),
        "{ok:#}"
    );

    let r = check("0.2.0", &full);
    assert_eq!(
        (
            r["blocked"].clone(),
            item(&r, "staging_space")["level"].clone()
        ),
        (true.into(), "red".into()),
        "{r:#}"
    );
    assert!(item(&r, "staging_space")["remedy"].is_string());

    let (code, tok) = a.call(
        "POST",
        "/v1/tokens",
        Some(&serde_json::json!({"name": "watcher", "role": "observer"})),
    );
    assert_eq!(code, 201, "{tok}");
    let (code, r) = a.call_as(
        tok["token"].as_str(),
        "GET",
        &format!("/v1/upgrade/check?to=0.2.0&staging={}", s(&big)),
        None,
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(item(&r, "privilege")["level"], "red", "{r:#}");

    let r = check("2.3.0", &big);
    assert_eq!(item(&r, "version_step")["level"], "red", "{r:#}");
    let peers = item(&r, "peer_compatibility");
    assert_eq!(peers["level"], "red", "{r:#}");
    assert!(
        peers["detail"].as_str().unwrap().contains(&id[..8]),
        "{r:#}"
    );
    assert!(
        peers["remedy"].as_str().unwrap().contains("reconnect"),
        "{r:#}"
    );

    b.kill();
    a.wait_for("source", &id, "the target to be unreachable", |v| {
        v["state"] == "disconnected"
    });
    let r = check("0.2.0", &big);
    assert_eq!(item(&r, "nodes_online")["level"], "red", "{r:#}");
}
