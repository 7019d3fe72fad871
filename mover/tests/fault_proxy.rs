//! Self-tests of the fault-injecting proxy (tests/common/faults.rs) against a tiny echo/sink
//! server on 127.0.0.1.

#![allow(dead_code)]

mod common;

use common::faults::{random_schedule, Fault, FaultProxy, MAX_HOLD_MS};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Writes every byte back.
    Echo,
    /// Reads and discards.
    Sink,
}

/// What the server saw on one connection.
#[derive(Clone, Debug)]
struct ConnLog {
    accepted_at: Instant,
    /// First bytes received (up to 64), to tell connections apart.
    head: Vec<u8>,
    bytes: u64,
    /// (when, cumulative bytes) after each read.
    arrivals: Vec<(Instant, u64)>,
    closed: bool,
}

/// An echo or sink server on 127.0.0.1 that logs every connection in accept order.
struct TestServer {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<ConnLog>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(mode: Mode) -> TestServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let log: Arc<Mutex<Vec<ConnLog>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                        let idx = {
                            let mut g = log2.lock().unwrap();
                            g.push(ConnLog {
                                accepted_at: Instant::now(),
                                head: vec![],
                                bytes: 0,
                                arrivals: vec![],
                                closed: false,
                            });
                            g.len() - 1
                        };
                        let (log3, stop3) = (log2.clone(), stop2.clone());
                        std::thread::spawn(move || serve(s, idx, mode, log3, stop3));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TestServer {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> Vec<ConnLog> {
        self.log.lock().unwrap().clone()
    }

    /// Polls the log until `pred` holds; panics after 10 s.
    fn wait_for(&self, what: &str, pred: impl Fn(&[ConnLog]) -> bool) -> Vec<ConnLog> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.snapshot();
            if pred(&log) {
                return log;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for: {what}; server log: {log:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

fn serve(
    mut s: TcpStream,
    idx: usize,
    mode: Mode,
    log: Arc<Mutex<Vec<ConnLog>>>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                {
                    let mut g = log.lock().unwrap();
                    let c = &mut g[idx];
                    let room = 64usize.saturating_sub(c.head.len()).min(n);
                    c.head.extend_from_slice(&buf[..room]);
                    c.bytes += n as u64;
                    let total = c.bytes;
                    c.arrivals.push((Instant::now(), total));
                }
                if mode == Mode::Echo && s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    log.lock().unwrap()[idx].closed = true;
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// The peer closed or reset the connection: a read ends with EOF or an error, not a timeout.
fn assert_closed(c: &mut TcpStream, what: &str) {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue, // data forwarded before the fault; drain it
            Err(e) => {
                assert!(
                    !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                    "{what}: still open: {e}"
                );
                return;
            }
        }
    }
}

fn echo_roundtrip(c: &mut TcpStream, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

#[test]
fn proxy_forwards_bytes_intact() {
    let srv = TestServer::start(Mode::Echo);
    let proxy = FaultProxy::start(srv.addr, vec![]);
    assert!(proxy.addr.ip().is_loopback());
    let data = pattern(1 << 20, 42);
    let mut c = connect(proxy.addr);
    let (mut w, d2) = (c.try_clone().unwrap(), data.clone());
    let writer = std::thread::spawn(move || {
        w.write_all(&d2).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");
    assert_eq!(proxy.forwarded(), 1 << 20);
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.faults_fired(), 0);
    let log = srv.wait_for("upstream closed", |l| l.len() == 1 && l[0].closed);
    assert_eq!(log[0].bytes, 1 << 20);
}

#[test]
fn cut_closes_every_connection_after_budget() {
    const BUDGET: u64 = 100_000;
    let srv = TestServer::start(Mode::Sink);
    let proxy = FaultProxy::start(
        srv.addr,
        vec![Fault::Cut {
            after_bytes: BUDGET,
        }],
    );
    let (mut a, mut b) = (connect(proxy.addr), connect(proxy.addr));
    a.write_all(&pattern(30_000, 1)).unwrap();
    b.write_all(&pattern(30_000, 2)).unwrap();
    srv.wait_for("60 kB below the budget", |l| {
        l.len() == 2 && l.iter().map(|c| c.bytes).sum::<u64>() == 60_000
    });
    assert_eq!(proxy.faults_fired(), 0);
    assert_eq!(proxy.forwarded(), 60_000);

    // Keep writing on `a` until the cut makes writes fail (bounded).
    a.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let chunk = pattern(16 * 1024, 3);
    let mut sent = 30_000u64;
    while sent < 8 << 20 {
        if a.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len() as u64;
        if proxy.faults_fired() == 1 {
            // Give the proxy a moment to close its sockets, then see the writes fail.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(
        sent > BUDGET - 30_000,
        "client wrote enough to reach the budget"
    );
    assert_closed(&mut a, "connection a");
    assert_closed(&mut b, "connection b (idle, still cut)");
    assert_eq!(proxy.faults_fired(), 1);
    assert_eq!(proxy.forwarded(), BUDGET, "exactly the budget passes");
    let log = srv.wait_for("both upstream connections closed", |l| {
        l.len() == 2 && l.iter().all(|c| c.closed)
    });
    assert_eq!(
        log.iter().map(|c| c.bytes).sum::<u64>(),
        BUDGET,
        "server received exactly the budget"
    );

    // The partition heals: a new connection gets through.
    let mut c = connect(proxy.addr);
    c.write_all(b"after the cut").unwrap();
    let log = srv.wait_for("third connection's bytes", |l| {
        l.len() == 3 && l[2].bytes == 13
    });
    assert_eq!(log[2].head, b"after the cut");
    assert_eq!(proxy.forwarded(), BUDGET + 13);
    assert_eq!(proxy.connections(), 3);
}

#[test]
fn stall_pauses_then_resumes() {
    const STALL: Duration = Duration::from_millis(400);
    let srv = TestServer::start(Mode::Echo);
    let proxy = FaultProxy::start(
        srv.addr,
        vec![Fault::Stall {
            after_bytes: 1000,
            for_ms: STALL.as_millis() as u64,
        }],
    );
    let mut c = connect(proxy.addr);
    let data = pattern(2000, 7);
    let t0 = Instant::now();
    c.write_all(&data).unwrap();
    let mut back = vec![0u8; 2000];
    c.read_exact(&mut back).unwrap();
    let rtt = t0.elapsed();
    assert_eq!(back, data, "bytes intact across the stall");
    assert!(rtt >= STALL, "round trip {rtt:?} shorter than the stall");
    assert_eq!(proxy.faults_fired(), 1);
    assert_eq!(proxy.forwarded(), 2000);
    // Upstream: the first 1000 bytes passed, byte 1001 only after the stall.
    let log = srv.snapshot();
    assert_eq!(log.len(), 1, "the stall kept the one connection open");
    let (late, _) = *log[0]
        .arrivals
        .iter()
        .find(|(_, total)| *total > 1000)
        .unwrap();
    assert!(
        late >= t0 + STALL,
        "byte 1001 arrived {:?} after the start, before the stall ended",
        late - t0
    );
    // Then the link continues normally on the same connection.
    echo_roundtrip(&mut c, b"still here");
    assert_eq!(proxy.forwarded(), 2010);
    assert_eq!(proxy.faults_fired(), 1, "a fault fires once");
}

#[test]
fn byte_faults_fire_in_order_with_fresh_budgets() {
    let srv = TestServer::start(Mode::Sink);
    let faults = vec![
        Fault::Stall {
            after_bytes: 1000,
            for_ms: 100,
        },
        Fault::Cut { after_bytes: 1500 },
    ];
    let proxy = FaultProxy::start(srv.addr, faults);
    let mut c = connect(proxy.addr);
    c.write_all(&pattern(5000, 9)).unwrap();
    assert_closed(&mut c, "cut connection");
    assert_eq!(proxy.faults_fired(), 2);
    assert_eq!(
        proxy.forwarded(),
        2500,
        "the cut counts from when the stall fired"
    );
    let log = srv.wait_for("upstream closed", |l| l.len() == 1 && l[0].closed);
    assert_eq!(log[0].bytes, 2500);
}

#[test]
fn delayed_connection_is_held() {
    const HOLD: Duration = Duration::from_millis(800);
    let srv = TestServer::start(Mode::Echo);
    let proxy = FaultProxy::start(
        srv.addr,
        vec![Fault::DelayConnect {
            conn_index: 1,
            ms: HOLD.as_millis() as u64,
        }],
    );
    let mut c0 = connect(proxy.addr);
    echo_roundtrip(&mut c0, b"zero");
    let t1 = Instant::now();
    let mut c1 = connect(proxy.addr);
    c1.write_all(b"one!").unwrap();
    let mut c2 = connect(proxy.addr);
    echo_roundtrip(&mut c2, b"two!");
    let mut back = [0u8; 4];
    c1.read_exact(&mut back).unwrap();
    let held = t1.elapsed();
    assert_eq!(&back, b"one!");
    assert!(held >= HOLD, "held connection answered after {held:?}");
    assert_eq!(proxy.connections(), 3);
    assert_eq!(proxy.faults_fired(), 1);
    let log = srv.snapshot();
    let pos = |h: &[u8]| log.iter().position(|c| c.head == h).unwrap();
    assert_eq!(log.len(), 3);
    assert!(
        pos(b"two!") < pos(b"one!"),
        "the held connection reached the server after a later one"
    );
    assert!(
        log[pos(b"one!")].accepted_at >= t1 + HOLD,
        "connected upstream before the hold ended"
    );
}

#[test]
fn close_early_drops_that_connection() {
    let srv = TestServer::start(Mode::Echo);
    let proxy = FaultProxy::start(srv.addr, vec![Fault::CloseEarly { conn_index: 0 }]);
    let mut c0 = connect(proxy.addr);
    assert_closed(&mut c0, "closed-early connection");
    let mut c1 = connect(proxy.addr);
    echo_roundtrip(&mut c1, b"hi");
    assert_eq!(proxy.connections(), 2);
    assert_eq!(proxy.faults_fired(), 1);
    assert_eq!(proxy.forwarded(), 2);
    let log = srv.snapshot();
    assert_eq!(
        log.len(),
        1,
        "the closed-early connection never reached the server"
    );
    assert_eq!(log[0].head, b"hi");
}

#[test]
fn drop_closes_open_connections() {
    let srv = TestServer::start(Mode::Echo);
    let proxy = FaultProxy::start(srv.addr, vec![]);
    let mut c = connect(proxy.addr);
    echo_roundtrip(&mut c, b"ping");
    let t = Instant::now();
    drop(proxy);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "drop joined its threads promptly"
    );
    assert_closed(&mut c, "client side after drop");
    srv.wait_for("upstream side closed after drop", |l| {
        l.len() == 1 && l[0].closed
    });
}

#[test]
fn random_schedule_is_seeded_and_bounded() {
    let mut distinct = std::collections::HashSet::new();
    for seed in 0..200u64 {
        let s = random_schedule(seed, 1 << 20);
        assert_eq!(
            s,
            random_schedule(seed, 1 << 20),
            "same seed, same schedule"
        );
        assert!((1..=3).contains(&s.len()), "{s:?}");
        let mut idx = Vec::new();
        for f in &s {
            match *f {
                Fault::Cut { after_bytes } => assert!((1..=1 << 20).contains(&after_bytes)),
                Fault::Stall {
                    after_bytes,
                    for_ms,
                } => {
                    assert!((1..=1 << 20).contains(&after_bytes));
                    assert!(for_ms <= MAX_HOLD_MS);
                }
                Fault::DelayConnect { conn_index, ms } => {
                    assert!(ms <= MAX_HOLD_MS);
                    idx.push(conn_index);
                }
                Fault::CloseEarly { conn_index } => idx.push(conn_index),
            }
        }
        let n = idx.len();
        idx.sort_unstable();
        idx.dedup();
        assert_eq!(
            idx.len(),
            n,
            "connection faults target distinct connections: {s:?}"
        );
        distinct.insert(format!("{s:?}"));
    }
    assert!(
        distinct.len() > 150,
        "seeds give varied schedules ({} distinct)",
        distinct.len()
    );
    let kinds = (0..200u64)
        .flat_map(|s| random_schedule(s, 1000))
        .map(|f| std::mem::discriminant(&f));
    assert_eq!(
        kinds.collect::<std::collections::HashSet<_>>().len(),
        4,
        "every kind of fault occurs"
    );
}
