//! Transport selection with real sessions on 127.0.0.1 (issue 17). Both sides look RDMA ports
//! up in a fake sysfs whose `rxe0` port carries 127.0.0.1, so each believes RDMA could work:
//! - without the `rdma` feature, neither offers it (`auto` means TCP) and `rdma` is an error;
//! - with it (on a host without that device), both offer it, the Hello negotiates it, and the
//!   queue pair setup fails for real (no such device): the sender falls back to TCP, and the
//!   retried session resumes and completes over TCP.
//!
//! The soft-RoCE guest (scripts/rdma-vm.sh) runs the same over a real device.

mod common;

use common::{assert_same_tree, dirs, every_kind, send_options, serve_with};
use mover::receiver::ReceiveOptions;
use mover::sender::send_with_retry_over;
use mover::transport::select::{fake_port, Choice, Negotiated, RdmaPolicy, Used, BUILT};
use mover::{Progress, Transport};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

/// Sessions a test may take: the fallback needs two; the rest is slack for a receiver still
/// closing the failed session ("busy").
const ATTEMPTS: u32 = 6;

fn fake_sysfs() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let lo = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
    fake_port(t.path(), "rxe0", 1, "4: ACTIVE", &[(lo, "RoCE v2")]).unwrap();
    t
}

fn tree(src: &Path) {
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("big"), vec![7u8; 3 << 20]).unwrap();
    for i in 0..20u8 {
        std::fs::write(
            src.join("d").join(format!("f{i}")),
            vec![i; 100 * i as usize],
        )
        .unwrap();
    }
}

fn receiver(root: &Path, rdma: Option<RdmaPolicy>) -> std::net::SocketAddr {
    serve_with(ReceiveOptions {
        root: root.to_path_buf(),
        insecure_plaintext: true,
        policy: every_kind(),
        rdma,
        ..Default::default()
    })
    .0
}

#[test]
fn auto_on_both_sides_uses_rdma_where_built_and_falls_back_to_tcp_when_it_fails() {
    let sys = fake_sysfs();
    let d = dirs();
    tree(&d.src);
    let policy = || RdmaPolicy::new(Choice::Auto, None).with_sysfs(sys.path());
    let addr = receiver(&d.dst, Some(policy()));
    let transport: Arc<dyn Transport> = Arc::new(Negotiated(policy()));
    let opts = send_options(&d.src, addr, 2, None);
    let rep = send_with_retry_over(
        &opts,
        &Arc::new(Progress::default()),
        ATTEMPTS,
        &transport,
        |_, _, _| {},
    )
    .expect("the job completes");
    assert_eq!(rep.transport, Used::Tcp);
    let fell_back = transport.rdma().unwrap().fell_back();
    if BUILT {
        // The first session negotiated RDMA and could not set its queue pairs up.
        assert!(fell_back, "the failed RDMA setup marks the fallback");
        assert!(rep.attempts >= 2, "attempts {}", rep.attempts);
    } else {
        assert!(!fell_back);
        assert_eq!(rep.attempts, 1, "TCP from the start");
    }
    assert_same_tree(&d.src, &d.dst);
}

#[test]
fn rdma_required_fails_without_retrying_where_it_cannot_be_had() {
    let sys = fake_sysfs();
    let d = dirs();
    tree(&d.src);
    // The receiver offers nothing (TCP only).
    let addr = receiver(&d.dst, None);
    let policy = RdmaPolicy::new(Choice::Rdma, None).with_sysfs(sys.path());
    let transport: Arc<dyn Transport> = Arc::new(Negotiated(policy));
    let opts = send_options(&d.src, addr, 2, None);
    let mut retries = 0;
    let err = send_with_retry_over(
        &opts,
        &Arc::new(Progress::default()),
        ATTEMPTS,
        &transport,
        |_, _, _| retries += 1,
    )
    .expect_err("RDMA cannot be had");
    let msg = err.to_string();
    if BUILT {
        assert!(msg.contains("receiver does not offer it"), "{msg}");
    } else {
        assert!(msg.contains("built without it"), "{msg}");
    }
    assert_eq!(retries, 0, "a refused transport is not retried: {msg}");
}
