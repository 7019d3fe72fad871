//! A relationship's data-plane transport (issue 17): `auto` by default, negotiated per session,
//! with what ran shown in its view; `rdma` refused where the node cannot use it (a build
//! without the `rdma` feature, or a host without an RDMA port, as CI's machine). The RDMA
//! sessions themselves are tested in the soft-RoCE guest (`scripts/rdma-vm.sh`). Needs root
//! (read-only target mounts).

mod node;

use node::{fill, need_root, pair, stderr, synced_relationship, try_create, Scratch};

/// This build has the verbs transport and this host an RDMA port: `--transport rdma` is then
/// accepted, not refused.
fn rdma_host() -> bool {
    mover::transport::select::BUILT
        && std::fs::read_dir("/sys/class/infiniband").is_ok_and(|mut d| d.next().is_some())
}

#[test]
fn a_relationship_negotiates_its_transport_and_shows_what_ran() {
    need_root();
    let t = Scratch::new();
    let (a, b, src, dst) = pair(&t);
    fill(&src, 5, 10_000, 1);
    std::fs::create_dir(&dst).unwrap();

    // Asked for RDMA on a node that cannot use it: refused at once, saying why.
    if rdma_host() {
        eprintln!("this host has RDMA ports: only the edits' answers are checked for rdma here");
    } else {
        let out = try_create(&a, b.listen, &src, &dst, &["--transport", "rdma"]);
        assert!(
            !out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let why = stderr(&out);
        assert!(why.contains("transport rdma"), "{why}");
    }

    // The default negotiates: TCP here, and the view says so.
    let id = synced_relationship(&a, &b, &src, &dst);
    let v = a.view("source", &id);
    assert_eq!(
        (&v["transport"], &v["transport_used"]),
        (&"auto".into(), &"tcp".into()),
        "{v}"
    );

    // Pinned to TCP by an edit; asking for RDMA by an edit is refused the same way.
    a.cli_ok(&["relationship", "modify", &id, "--transport", "tcp"]);
    assert_eq!(a.view("source", &id)["transport"], "tcp");
    let out = a.cli(&["relationship", "modify", &id, "--transport", "rdma"]);
    if rdma_host() {
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(a.view("source", &id)["transport"], "rdma");
    } else {
        assert!(!out.status.success());
        assert!(stderr(&out).contains("transport rdma"), "{}", stderr(&out));
        assert_eq!(a.view("source", &id)["transport"], "tcp");
    }
}
