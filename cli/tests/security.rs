//! Regression tests of the control-plane holes a hostile probe found (issue 12): real `mover
//! daemon` processes on 127.0.0.1, hostile clients on other loopback addresses, real mounts.
//! Needs root (targets are protected with bind mounts; tests mount tmpfs and create devices).

mod node;

use node::{fill, need_root, Node, Scratch};
use std::io::{Read, Write};
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

#[test]
fn the_api_closes_slow_and_idle_connections_and_bounds_how_many_are_open() {
    need_root();
    let t = Scratch::new();
    let a = Node::start(&t.path().join("a"));
    let api: SocketAddr = ([127, 0, 0, 1], a.api).into();

    // Slowloris: a request head that never ends, one header line a second.
    let mut slow = TcpStream::connect(api).unwrap();
    slow.write_all(b"GET /v1/node HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut cut = false;
    while t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_secs(1));
        if slow.write_all(b"X-Slow: 1\r\n").is_err() {
            cut = true;
            break;
        }
        slow.set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let mut b = [0u8; 64];
        match slow.read(&mut b) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            _ => {
                cut = true;
                break;
            }
        }
    }
    assert!(
        cut,
        "a slowloris request head was still being read after 20 s"
    );

    // Idle connections: beyond the cap closed at once, the rest once the head timeout passes.
    let idle: Vec<TcpStream> = (0..400).map(|_| TcpStream::connect(api).unwrap()).collect();
    let shut = idle
        .iter()
        .rev()
        .take(50)
        .filter(|c| closed_within(c, Duration::from_millis(200)))
        .count();
    assert!(shut > 0, "400 idle API connections were all kept open");
    std::thread::sleep(Duration::from_secs(12));
    let open = idle
        .iter()
        .filter(|c| !closed_within(c, Duration::from_millis(1)))
        .count();
    assert_eq!(open, 0, "idle API connections still open after 12 s");
    // The API still serves.
    assert_eq!(a.get("/v1/node").0, 200);
}
