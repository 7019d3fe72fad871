//! Regression tests of the control-plane holes a hostile probe found (issue 12): real `mover
//! daemon` processes on 127.0.0.1, hostile clients on other loopback addresses, real mounts.
//! Needs root (targets are protected with bind mounts; tests mount tmpfs and create devices).

mod node;

use node::{fill, need_root, Node, Scratch};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Creates a relationship on `src` towards `dst` with the CLI; returns its id.
fn create(src: &Node, dst: &Node, from: &Path, to: &Path, extra: &[&str]) -> String {
    let port = dst.listen.to_string();
    let mut args = vec![
        "relationship",
        "create",
        "--source-path",
        s(from),
        "--target-address",
        "127.0.0.1",
        "--target-port",
        &port,
        "--target-path",
        s(to),
        "--json",
    ];
    args.extend_from_slice(extra);
    let v = src.cli_ok(&args);
    assert_eq!(v["state"], "awaiting_authorization", "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// A TCP connection to `to` from the loopback address `from` (another "host").
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType};
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    let local = SocketAddr::from((from, 0));
    rustix::net::bind(&fd, &local).unwrap();
    rustix::net::connect(&fd, &to).unwrap();
    TcpStream::from(fd)
}

/// Whether the server closed `c` within `wait` (a read sees EOF or a reset).
fn closed_within(mut c: &TcpStream, wait: Duration) -> bool {
    c.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 256];
    loop {
        match c.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_connections_on_the_peer_port_do_not_keep_genuine_peers_out() {
    need_root();
    let t = Scratch::new();
    let (a, b) = (
        Node::start(&t.path().join("a")),
        Node::start(&t.path().join("b")),
    );
    let peer: SocketAddr = ([127, 0, 0, 1], b.listen).into();
    // Idle sockets from one "host" and a few from many others: more than the old 64 slots.
    let mut idle: Vec<TcpStream> = (0..200)
        .map(|_| connect_from([127, 0, 0, 2], peer))
        .collect();
    for i in 0..8 {
        idle.push(connect_from([127, 0, 1, 10 + i], peer));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    fill(&src, 2, 100, 24);
    std::fs::create_dir(&dst).unwrap();
    let t0 = Instant::now();
    create(&a, &b, &src, &dst, &[]);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the proposal waited {:?} behind idle sockets",
        t0.elapsed()
    );

    // One address gets a bounded number of unauthenticated connections: beyond it, closed at
    // once.
    let flood: Vec<TcpStream> = (0..400)
        .map(|_| connect_from([127, 0, 0, 3], peer))
        .collect();
    let shut = flood
        .iter()
        .rev()
        .take(50)
        .filter(|c| closed_within(c, Duration::from_millis(200)))
        .count();
    assert!(
        shut > 0,
        "none of 400 idle connections from one address was refused"
    );

    // And an unauthenticated connection gets a bounded time in all (peek, TLS, request).
    let t0 = Instant::now();
    let last = idle.pop().unwrap();
    assert!(
        closed_within(&last, Duration::from_secs(15)),
        "an idle connection stayed open for {:?}",
        t0.elapsed()
    );
}
