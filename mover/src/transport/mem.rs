//! An in-process network for tests (feature `testkit`): whole sessions, sender and receiver
//! with all their workers, run over bounded in-memory pipes instead of sockets. The network is
//! seeded: each `send_all` is cut into pieces of seeded sizes (so frames arrive split at
//! arbitrary points), and a reset of every connection can be armed for when a given number of
//! bytes more has crossed, which a test picks from its seed to replay the same schedule.
//!
//! Connections have no kernel fd, so the engine moves data frames through `send_all` and
//! `recv_exact`, the path a transport without sockets (RDMA) takes.

use super::{Connection, Transport};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Bytes one direction of a connection buffers before `send_all` blocks.
pub const PIPE_CAPACITY: usize = 4 << 20;
/// Largest piece a send is cut into before the reader can see it.
const MAX_PIECE: usize = 256 << 10;

/// What goes wrong on the network from the start.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemFaults {
    /// Once this many bytes have crossed the network (both directions, all connections),
    /// every connection open then is reset; later connections work (`MemNet::reset_after`
    /// arms the next one).
    pub reset_after_bytes: Option<u64>,
}

struct Pipe {
    state: Mutex<PipeState>,
    cv: Condvar,
}

#[derive(Default)]
struct PipeState {
    data: VecDeque<u8>,
    /// The writer shut down: the reader gets EOF once it drained `data`.
    closed: bool,
    /// The connection was reset: both ends fail at once.
    reset: bool,
}

impl Pipe {
    fn new() -> Arc<Pipe> {
        Arc::new(Pipe {
            state: Mutex::new(PipeState::default()),
            cv: Condvar::new(),
        })
    }
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }
    fn reset(&self) {
        self.lock().reset = true;
        self.cv.notify_all();
    }
}

struct NetState {
    bytes: AtomicU64,
    /// Byte count at which the armed reset happens (u64::MAX: none armed).
    trip_at: AtomicU64,
    resets: AtomicU64,
    /// Pipes of every connection made so far, for the reset.
    pipes: Mutex<Vec<Weak<Pipe>>>,
    rng: Mutex<u64>,
}

impl NetState {
    /// Counts `n` bytes crossing; resets every connection when the fault plan says so.
    fn count(&self, n: usize) -> io::Result<()> {
        let before = self.bytes.fetch_add(n as u64, Ordering::SeqCst);
        let at = self.trip_at.load(Ordering::SeqCst);
        let crossed = before.saturating_add(n as u64) > at;
        if crossed
            && self
                .trip_at
                .compare_exchange(at, u64::MAX, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.resets.fetch_add(1, Ordering::SeqCst);
            let pipes = std::mem::take(&mut *lock(&self.pipes));
            for p in pipes.iter().filter_map(Weak::upgrade) {
                p.reset();
            }
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        Ok(())
    }

    /// A piece size in 1..=max from the network's seeded generator (splitmix64).
    fn piece(&self, max: usize) -> usize {
        let mut s = lock(&self.rng);
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        1 + (z % max as u64) as usize
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The network: listeners by address, and the connections made to them.
pub struct MemNet {
    listeners: Mutex<HashMap<SocketAddr, mpsc::Sender<Box<dyn Connection>>>>,
    state: Arc<NetState>,
}

impl MemNet {
    pub fn new(seed: u64, faults: MemFaults) -> Arc<MemNet> {
        Arc::new(MemNet {
            listeners: Mutex::new(HashMap::new()),
            state: Arc::new(NetState {
                bytes: AtomicU64::new(0),
                trip_at: AtomicU64::new(faults.reset_after_bytes.unwrap_or(u64::MAX)),
                resets: AtomicU64::new(0),
                pipes: Mutex::new(Vec::new()),
                rng: Mutex::new(seed),
            }),
        })
    }

    /// Connections made to `addr` arrive on the returned channel (feed it to
    /// `Receiver::from_inbox`). A second listen on the same address replaces the first.
    pub fn listen(&self, addr: SocketAddr) -> mpsc::Receiver<Box<dyn Connection>> {
        let (tx, rx) = mpsc::channel();
        lock(&self.listeners).insert(addr, tx);
        rx
    }

    /// Bytes that crossed the network so far.
    pub fn bytes(&self) -> u64 {
        self.state.bytes.load(Ordering::SeqCst)
    }

    /// Arms a reset of every open connection for when `more` bytes more have crossed
    /// (replacing one armed before).
    pub fn reset_after(&self, more: u64) {
        let at = self.bytes().saturating_add(more);
        self.state.trip_at.store(at, Ordering::SeqCst);
    }

    /// Resets that happened so far.
    pub fn resets(&self) -> u64 {
        self.state.resets.load(Ordering::SeqCst)
    }
}

impl Transport for MemNet {
    fn connect(&self, peer: SocketAddr) -> io::Result<Box<dyn Connection>> {
        let listeners = lock(&self.listeners);
        let Some(tx) = listeners.get(&peer) else {
            return Err(io::ErrorKind::ConnectionRefused.into());
        };
        let (a, b) = (Pipe::new(), Pipe::new());
        lock(&self.state.pipes).extend([Arc::downgrade(&a), Arc::downgrade(&b)]);
        let near = MemConn::new(a.clone(), b.clone(), &self.state, format!("mem:{peer}"));
        let far = MemConn::new(b, a, &self.state, "mem:client".to_string());
        tx.send(Box::new(far))
            .map_err(|_| io::Error::from(io::ErrorKind::ConnectionRefused))?;
        Ok(Box::new(near))
    }
}

/// One end of an in-memory connection.
pub struct MemConn {
    tx: Arc<Pipe>,
    rx: Arc<Pipe>,
    net: Arc<NetState>,
    timeout: Mutex<Option<Duration>>,
    peer: String,
}

impl MemConn {
    fn new(tx: Arc<Pipe>, rx: Arc<Pipe>, net: &Arc<NetState>, peer: String) -> MemConn {
        MemConn {
            tx,
            rx,
            net: net.clone(),
            timeout: Mutex::new(None),
            peer,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        lock(&self.timeout).map(|t| Instant::now() + t)
    }
}

/// Waits on `pipe` until `ready` holds, the pipe is reset, or the deadline passes.
fn wait<'a>(
    pipe: &'a Pipe,
    mut g: MutexGuard<'a, PipeState>,
    deadline: Option<Instant>,
    ready: impl Fn(&PipeState) -> bool,
) -> io::Result<MutexGuard<'a, PipeState>> {
    while !ready(&g) && !g.reset {
        g = match deadline {
            None => pipe.cv.wait(g).unwrap_or_else(|p| p.into_inner()),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                pipe.cv
                    .wait_timeout(g, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
    }
    if g.reset {
        return Err(io::ErrorKind::ConnectionReset.into());
    }
    Ok(g)
}

impl Connection for MemConn {
    fn send_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        let deadline = self.deadline();
        while !buf.is_empty() {
            let piece = self.net.piece(buf.len().min(MAX_PIECE));
            let g = wait(&self.tx, self.tx.lock(), deadline, |s| {
                s.closed || s.data.len() < PIPE_CAPACITY
            })?;
            let mut g = g;
            if g.closed {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = piece.min(PIPE_CAPACITY - g.data.len());
            g.data.extend(&buf[..n]);
            drop(g);
            self.tx.cv.notify_all();
            self.net.count(n)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    fn recv_exact(&mut self, mut buf: &mut [u8]) -> io::Result<()> {
        let deadline = self.deadline();
        while !buf.is_empty() {
            let mut g = wait(&self.rx, self.rx.lock(), deadline, |s| {
                s.closed || !s.data.is_empty()
            })?;
            if g.data.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let n = buf.len().min(g.data.len());
            for (d, s) in buf[..n].iter_mut().zip(g.data.drain(..n)) {
                *d = s;
            }
            drop(g);
            self.rx.cv.notify_all();
            buf = &mut buf[n..];
        }
        Ok(())
    }

    fn uring_socket(&self) -> io::Result<Option<OwnedFd>> {
        Ok(None)
    }

    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        *lock(&self.timeout) = t;
        Ok(())
    }

    fn shutdown(&self) {
        self.tx.close();
        self.rx.close();
    }

    fn peer_closed(&self) -> bool {
        let g = self.rx.lock();
        g.reset || (g.closed && g.data.is_empty())
    }

    fn peer(&self) -> String {
        self.peer.clone()
    }
}

impl Drop for MemConn {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    #[test]
    fn bytes_arrive_in_order_across_seeded_pieces_and_eof_follows_shutdown() {
        let net = MemNet::new(7, MemFaults::default());
        let inbox = net.listen(addr());
        let mut a = net.connect(addr()).expect("connect");
        let mut b = inbox.recv().expect("accepted");
        let data: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let t = std::thread::spawn(move || {
            a.send_all(&sent).expect("send");
            a.shutdown();
        });
        let mut got = vec![0u8; data.len()];
        b.recv_exact(&mut got).expect("recv");
        t.join().expect("sender thread");
        assert_eq!(got, data);
        let mut one = [0u8; 1];
        let eof = b.recv_exact(&mut one).expect_err("eof");
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
        assert!(b.peer_closed());
    }

    #[test]
    fn the_fault_plan_resets_open_connections_once_and_later_ones_work() {
        let net = MemNet::new(
            1,
            MemFaults {
                reset_after_bytes: Some(1000),
            },
        );
        let inbox = net.listen(addr());
        let mut a = net.connect(addr()).expect("connect");
        let mut b = inbox.recv().expect("accepted");
        let e = a.send_all(&[0u8; 4000]).expect_err("reset");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        let e = b
            .recv_exact(&mut [0u8; 4000])
            .expect_err("reset seen by the peer");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(net.resets(), 1);
        let mut c = net.connect(addr()).expect("reconnect");
        let mut d = inbox.recv().expect("accepted again");
        c.send_all(b"after").expect("send after reset");
        let mut got = [0u8; 5];
        d.recv_exact(&mut got).expect("recv after reset");
        assert_eq!(&got, b"after");
    }

    #[test]
    fn a_receive_times_out_when_asked_to() {
        let net = MemNet::new(3, MemFaults::default());
        let inbox = net.listen(addr());
        let _a = net.connect(addr()).expect("connect");
        let mut b = inbox.recv().expect("accepted");
        b.set_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let e = b.recv_exact(&mut [0u8; 1]).expect_err("timed out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(net.connect(SocketAddr::from(([127, 0, 0, 1], 10))).is_err());
    }
}
