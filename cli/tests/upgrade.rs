//! Upgrading a single node (`--roles all`) onto a new release while it replicates: the
//! package is staged and checked by its SHA-256, the daemon restarts onto it, and the job it
//! was running resumes. Needs root (the target is protected with a read-only bind mount).

mod node;

use node::{create, fill, need_root, s, sha256, stderr, synced, tree_hash, Node, Scratch};

#[test]
fn single_node_restarts_onto_a_checked_package_and_its_running_job_resumes() {
    need_root();
    let t = Scratch::new();
    // The daemon runs from a copy of the build's binary: the upgrade replaces it.
    let (bin, pkg) = (t.path().join("bin/mover"), t.path().join("pkg/mover-0.1.1"));
    let sum = node::package_pair(&bin, &pkg);
    let mut a = Node::start_from(&t.path().join("a"), &bin, "0.1.0");
    let b = Node::start_as_version(
        &t.path().join("b"),
        node::free_port(),
        node::free_port(),
        "0.1.0",
    );
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    fill(&src, 40, 250_000, 7);
    std::fs::create_dir(&dst).unwrap();
    // 10 MB at 1 MB/s: the upgrade lands mid-job.
    let id = create(&a, &b, &src, &dst, &["--bandwidth-limit", "1000000"]);
    b.cli_ok(&["relationship", "authorize", &id]);
    a.wait_for("source", &id, "the initial sync to be under way", |v| {
        v["job"]["bytes_done"].as_u64().is_some_and(|n| n > 0)
    });

    // A package that is not what the operator checked is refused; nothing is staged.
    let bad = a.cli(&[
        "upgrade",
        "start",
        "--to",
        "0.1.1",
        "--package",
        s(&pkg),
        "--sha256",
        &"0".repeat(64),
    ]);
    assert_eq!(bad.status.code(), Some(9), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("nothing was staged"),
        "{}",
        stderr(&bad)
    );
    let out = a.cli(&[
        "upgrade", "start", "--to", "0.1.1", "--sha256", &sum, "--phase", "restart",
    ]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(stderr(&out).contains("not staged"), "{}", stderr(&out));

    // Distribute alone, then restart alone (each phase runs by itself).
    let v = a.cli_ok(&[
        "upgrade",
        "start",
        "--to",
        "0.1.1",
        "--package",
        s(&pkg),
        "--sha256",
        &sum,
        "--phase",
        "distribute",
        "--json",
    ]);
    assert_eq!(v["phase"], "distributed", "{v}");
    assert_eq!(a.get("/v1/node").1["version"], "0.1.0");
    let v = a.view("source", &id);
    assert!(
        v["job"].is_object(),
        "the job must still run when the restart begins: {v}"
    );
    let v = a.cli_ok(&[
        "upgrade", "start", "--to", "0.1.1", "--sha256", &sum, "--phase", "restart", "--json",
    ]);
    assert_eq!(v["phase"], "done", "{v}");

    // The node runs the new release from the binary's own path; the old one is kept.
    let (code, n) = a.get("/v1/node");
    assert_eq!((code, n["version"].as_str()), (200, Some("0.1.1")), "{n}");
    assert_eq!(sha256(&bin), sum);
    assert!(a.dir.join("data/releases/0.1.0/mover").is_file());
    let st = a.cli_ok(&["upgrade", "status", "--json"]);
    assert_eq!(st["containers"][0]["version"], "0.1.1", "{st}");
    assert_eq!(st["containers"][0]["role"], "all", "{st}");
    assert_eq!(st["upgrade"]["phase"], "done", "{st}");

    // The job the restart stopped resumes and ends with the source's tree.
    let v = a.wait_for("source", &id, "the resumed initial sync", synced);
    assert!(v["recovery_point"]["time"].is_string(), "{v}");
    assert_eq!(tree_hash(&src), tree_hash(&dst));
    assert!(a.log().contains("restarting for an upgrade"), "{}", a.log());
    a.kill();
}
