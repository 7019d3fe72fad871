//! Helpers shared by the integration tests: an in-process receiver on 127.0.0.1, an in-process
//! sender, tree comparison and a byte-budget TCP proxy that cuts connections.
#![allow(dead_code)]

pub mod faults;

use mover::receiver::{ReceiveOptions, Receiver};
use mover::sender::{send, SendOptions, SendReport};
use mover::tree::hash::{hash_dir, HashOptions};
use mover::Progress;
use mover::SessionReport;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The tests replicate every kind of item, setuid bits and devices included (a target's
/// operator must allow those; `sealed.rs` and `replicate.rs` check the default).
pub fn every_kind() -> mover::receiver::policy::ReplicaPolicy {
    mover::receiver::policy::ReplicaPolicy {
        allow_setid: true,
        allow_devices: true,
    }
}

pub fn start_receiver(root: &Path) -> (SocketAddr, JoinHandle<SessionReport>) {
    start_receiver_with(root, Default::default())
}

/// `start_receiver` with session limits other than the defaults.
pub fn start_receiver_with(
    root: &Path,
    limits: mover::SessionLimits,
) -> (SocketAddr, JoinHandle<SessionReport>) {
    let r = Receiver::bind(
        "127.0.0.1:0".parse().unwrap(),
        ReceiveOptions {
            root: root.to_path_buf(),
            once: true,
            limits,
            insecure_plaintext: true,
            policy: every_kind(),
            ..Default::default()
        },
        Arc::new(Progress::default()),
    )
    .expect("bind receiver");
    let addr = r.local_addr().unwrap();
    let h = std::thread::spawn(move || r.serve(|_| {}).expect("receiver serve"));
    (addr, h)
}

/// Options of a send from `src` to `to` with `threads` workers, O_DIRECT where it works, and a
/// state directory (manifest) if given; no snapshot provider, session id or id map chosen.
pub fn send_options(
    src: &Path,
    to: SocketAddr,
    threads: usize,
    state: Option<&Path>,
) -> SendOptions {
    SendOptions {
        src: src.to_path_buf(),
        to,
        threads,
        direct: true,
        state: state.map(Path::to_path_buf),
        snapshot: None,
        session: None,
        id_map: None,
        secret: None,
        pin: Vec::new(),
        changed: None,
        cache: None,
        spread: None,
        write_places: Vec::new(),
    }
}

pub fn send_to(src: &Path, addr: SocketAddr, threads: usize) -> mover::Result<SendReport> {
    let opts = send_options(src, addr, threads, None);
    send(&opts, &Arc::new(Progress::default()))
}

/// A receiver that keeps serving sessions (so a retrying sender can resume); each session's
/// report arrives on the channel. The thread ends with the test process.
pub fn start_serving(root: &Path) -> (SocketAddr, std::sync::mpsc::Receiver<SessionReport>) {
    let (addr, rx, _) = serve_with(ReceiveOptions {
        root: root.to_path_buf(),
        once: false,
        insecure_plaintext: true,
        policy: every_kind(),
        ..Default::default()
    });
    (addr, rx)
}

/// `start_serving` with these options; also the receiver's scrub status.
#[allow(dead_code)] // not every test binary scrubs
pub fn serve_with(
    opts: ReceiveOptions,
) -> (
    SocketAddr,
    std::sync::mpsc::Receiver<SessionReport>,
    Arc<mover::receiver::ScrubStatus>,
) {
    let r = Receiver::bind(
        "127.0.0.1:0".parse().unwrap(),
        opts,
        Arc::new(Progress::default()),
    )
    .expect("bind receiver");
    let addr = r.local_addr().unwrap();
    let status = r.scrub_status();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = r.serve(|rep| {
            let _ = tx.send(rep.clone());
        });
    });
    (addr, rx, status)
}

/// Sends with a state directory (manifest), so later jobs are incremental.
pub fn send_state(src: &Path, addr: SocketAddr, state: &Path) -> mover::Result<SendReport> {
    let opts = send_options(src, addr, 2, Some(state));
    send(&opts, &Arc::new(Progress::default()))
}

/// One complete session src -> dst; panics unless both sides report success.
pub fn replicate(src: &Path, dst: &Path, threads: usize) -> SendReport {
    let (addr, h) = start_receiver(dst);
    let rep = send_to(src, addr, threads).expect("send");
    let r = h.join().unwrap();
    assert!(r.ok, "receiver: {:?}", r.error);
    rep
}

pub fn owners() -> HashOptions {
    HashOptions {
        owners: rustix::process::geteuid().is_root(),
    }
}

/// Tree hash and content hash of both trees are equal.
pub fn assert_same_tree(src: &Path, dst: &Path) {
    let (ts, cs, n) = hash_dir(src, owners(), true).unwrap();
    let (td, cd, m) = hash_dir(dst, owners(), true).unwrap();
    assert_eq!(n, m, "entry counts differ");
    assert_eq!(ts, td, "tree hashes differ");
    assert_eq!(cs, cd, "content hashes differ");
}

/// A proxy on 127.0.0.1 that forwards every connection to `target` and, once `budget` bytes
/// have gone from client to server across all connections, shuts every connection down.
pub struct CutProxy {
    pub addr: SocketAddr,
    pub forwarded: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl CutProxy {
    pub fn start(target: SocketAddr, budget: u64) -> CutProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let forwarded = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (f, s) = (forwarded.clone(), stop.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(client) = c else { break };
                if s.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    break;
                };
                conns.lock().unwrap().push(client.try_clone().unwrap());
                conns.lock().unwrap().push(server.try_clone().unwrap());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (f2, stop2, all) = (f.clone(), s.clone(), conns.clone());
                std::thread::spawn(move || pump(client, server, Some((f2, budget, stop2, all))));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        CutProxy {
            addr,
            forwarded,
            stop,
        }
    }
}

type Budget = (
    Arc<AtomicU64>,
    u64,
    Arc<AtomicBool>,
    Arc<Mutex<Vec<TcpStream>>>,
);

fn pump(mut from: TcpStream, mut to: TcpStream, budget: Option<Budget>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((f, limit, stop, all)) = &budget {
            let before = f.fetch_add(n as u64, Ordering::SeqCst);
            if before + n as u64 > *limit {
                let allowed = limit.saturating_sub(before) as usize;
                let _ = to.write_all(&buf[..allowed.min(n)]);
                stop.store(true, Ordering::SeqCst);
                // Shut down and close every connection: a socket left open but unread would
                // only stall the sender, which is a different fault.
                let mut conns = all.lock().unwrap();
                for c in conns.iter() {
                    let _ = c.shutdown(Shutdown::Both);
                }
                conns.clear();
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A scratch directory with a source, an empty destination and a sender state directory.
pub struct Dirs {
    _tmp: tempfile::TempDir,
    pub src: std::path::PathBuf,
    pub dst: std::path::PathBuf,
    pub state: std::path::PathBuf,
}

pub fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, state) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("state"),
    );
    std::fs::create_dir_all(&dst).unwrap();
    Dirs {
        _tmp: tmp,
        src,
        dst,
        state,
    }
}

/// Sets the mtime of the file `p` to `t` (a writer covering its tracks from the quick check).
pub fn set_modified(p: &Path, t: std::time::SystemTime) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.set_modified(t).unwrap();
}
