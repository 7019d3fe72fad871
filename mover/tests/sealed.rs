//! Sealed sessions over real sockets: a proxy on 127.0.0.1 records every byte between sender and
//! receiver. With a session secret (as a daemon or the standalone key exchange gives), the
//! capture holds no file content, no file name and not the secret, and the target is verified;
//! without one (both sides agreeing to plaintext) the same content is plainly visible, which
//! shows the capture would have caught a leak. A tampered byte in flight ends the session
//! instead of reaching the target.

mod common;

use common::*;
use mover::{send, Progress, ReceiveOptions, Receiver, SessionSecret, Tickets};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

const CANARY: &[u8] = b"CANARY-file-content-that-must-not-cross-in-clear";
const NAME: &str = "canary-secret-file-name.txt";

/// A proxy forwarding every connection to `target`, appending what crosses (both directions) to
/// the capture. With `flip_at`, the byte at that offset of the client-to-server stream of the
/// last connection is inverted on its way.
struct Capture {
    addr: SocketAddr,
    bytes: Arc<Mutex<Vec<u8>>>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, cap: Arc<Mutex<Vec<u8>>>, flip_at: Option<usize>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut seen = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(at) = flip_at {
            if (seen..seen + n).contains(&at) {
                buf[at - seen] ^= 0xff;
            }
        }
        seen += n;
        cap.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Capture {
    fn start(target: SocketAddr, flip_on_conn: Option<(usize, usize)>) -> Capture {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let bytes: Arc<Mutex<Vec<u8>>> = Arc::default();
        let cap = bytes.clone();
        std::thread::spawn(move || {
            for (k, c) in l.incoming().enumerate() {
                let Ok(client) = c else { break };
                let Ok(server) = TcpStream::connect(target) else {
                    break;
                };
                let flip = flip_on_conn
                    .filter(|(conn, _)| *conn == k)
                    .map(|(_, at)| at);
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (a, b) = (cap.clone(), cap.clone());
                std::thread::spawn(move || pump(client, server, a, flip));
                std::thread::spawn(move || pump(s2, c2, b, None));
            }
        });
        Capture { addr, bytes }
    }

    fn contains(&self, needle: &[u8]) -> bool {
        self.bytes
            .lock()
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    }
}

fn tree(src: &Path) {
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join(NAME), CANARY.repeat(100)).unwrap();
    std::fs::write(src.join("sub/big"), CANARY.repeat(40_000)).unwrap();
}

/// A receiver for one session at `dst`; returns its address, its tickets and its report.
fn receiver(
    dst: &Path,
    plaintext: bool,
) -> (
    SocketAddr,
    Arc<Tickets>,
    std::thread::JoinHandle<mover::SessionReport>,
) {
    let tickets = Arc::new(Tickets::default());
    let r = Receiver::bind(
        "127.0.0.1:0".parse().unwrap(),
        ReceiveOptions {
            root: dst.to_path_buf(),
            once: true,
            tickets: (!plaintext).then(|| tickets.clone()),
            insecure_plaintext: plaintext,
            ..Default::default()
        },
        Arc::new(Progress::default()),
    )
    .unwrap();
    let addr = r.local_addr().unwrap();
    (
        addr,
        tickets,
        std::thread::spawn(move || r.serve(|_| {}).unwrap()),
    )
}

#[test]
fn a_sealed_session_shows_no_content_name_or_secret_on_the_wire() {
    let d = dirs();
    tree(&d.src);
    let (addr, tickets, h) = receiver(&d.dst, false);
    let secret = SessionSecret::random().unwrap();
    let handle = tickets.issue_sealed(secret.clone());
    let cap = Capture::start(addr, None);
    let opts = mover::SendOptions {
        secret: Some(secret.clone()),
        ..send_options(&d.src, cap.addr, 2, None)
    };
    let rep = send(&opts, &Arc::new(Progress::default())).expect("sealed session");
    assert!(rep.encrypted);
    let r = h.join().unwrap();
    assert!(r.ok && r.encrypted, "{:?}", r.error);
    assert_same_tree(&d.src, &d.dst);

    assert!(
        cap.bytes.lock().unwrap().len() as u64 > rep.bytes,
        "the data crossed the proxy"
    );
    assert!(
        !cap.contains(&CANARY[..24]),
        "file content in clear on the wire"
    );
    assert!(
        !cap.contains(NAME.as_bytes()),
        "a file name in clear on the wire"
    );
    // The session's public handle is in the Hellos; the secret it came from is not.
    assert!(cap.contains(&handle.0.to_le_bytes()));
    let dbg = format!("{secret:?}");
    assert!(!dbg.contains("CANARY"));
}

#[test]
fn a_plaintext_session_shows_the_content_the_sealed_one_hides() {
    let d = dirs();
    tree(&d.src);
    let (addr, _tickets, h) = receiver(&d.dst, true);
    let cap = Capture::start(addr, None);
    let opts = send_options(&d.src, cap.addr, 2, None);
    let rep = send(&opts, &Arc::new(Progress::default())).expect("plaintext session");
    assert!(!rep.encrypted);
    assert!(h.join().unwrap().ok);
    assert!(cap.contains(&CANARY[..24]) && cap.contains(NAME.as_bytes()));
}

#[test]
fn a_byte_changed_in_flight_ends_a_sealed_session_and_the_target_keeps_its_recovery_point() {
    let d = dirs();
    tree(&d.src);
    let (addr, tickets, h) = receiver(&d.dst, false);
    let secret = SessionSecret::random().unwrap();
    tickets.issue_sealed(secret.clone());
    // Connection 1 is the first worker's (0 is the control connection): flip a byte well
    // inside its data frames.
    let cap = Capture::start(addr, Some((1, 200_000)));
    let opts = mover::SendOptions {
        secret: Some(secret),
        ..send_options(&d.src, cap.addr, 1, None)
    };
    let err = send(&opts, &Arc::new(Progress::default())).expect_err("tampered session fails");
    let r = h.join().unwrap();
    assert!(!r.ok);
    let why = r.error.unwrap_or_default();
    assert!(
        why.contains("failed authentication"),
        "receiver: {why} (sender: {err})"
    );
    // Nothing the tampered frame carried was written: the job reverts to the (empty) recovery
    // point the target had.
    mover::revert_root(&d.dst).expect("revert");
    let left: Vec<_> = std::fs::read_dir(&d.dst)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".mover-state")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn by_default_a_receiver_clears_setuid_bits_and_leaves_device_nodes_out() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = dirs();
    std::fs::create_dir_all(&d.src).unwrap();
    std::fs::write(d.src.join("tool"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(d.src.join("tool"), std::fs::Permissions::from_mode(0o6755)).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        d.src.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    // Something already standing at the device's name goes too: the replica mirrors what the
    // policy lets in.
    std::fs::write(d.dst.join("null"), b"planted").unwrap();
    let (addr, tickets, h) = receiver(&d.dst, false);
    let secret = SessionSecret::random().unwrap();
    tickets.issue_sealed(secret.clone());
    let opts = mover::SendOptions {
        secret: Some(secret),
        ..send_options(&d.src, addr, 1, None)
    };
    send(&opts, &Arc::new(Progress::default())).expect("session verifies");
    let r = h.join().unwrap();
    assert!(r.ok, "{:?}", r.error);
    assert_eq!((r.setid_cleared, r.devices_skipped), (1, 1));
    let mode = std::fs::metadata(d.dst.join("tool")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o755);
    assert!(std::fs::symlink_metadata(d.dst.join("null")).is_err());
}
