//! A fault-injecting TCP proxy for integration tests.
//!
//! [`FaultProxy`] listens on 127.0.0.1, forwards every accepted connection to a loopback
//! target and applies a fault schedule: cuts (every open connection is shut down, like a
//! network partition), stalls (nothing moves in either direction for a while, sockets stay
//! open), delayed upstream connects (reorders connection lifetimes) and connections closed
//! right after accept. Each fault fires at most once.
//!
//! Byte-based faults ([`Fault::Cut`], [`Fault::Stall`]) fire in schedule order: the first one
//! counts client->server bytes from the proxy's start, each later one counts from the moment
//! the previous byte-based fault fired. Connection faults ([`Fault::DelayConnect`],
//! [`Fault::CloseEarly`]) fire when the connection with their 0-based index (counted over the
//! proxy's lifetime, every accepted connection included) is accepted.
//!
//! After a cut, the partition "heals": connections accepted later are forwarded normally, so a
//! retrying sender can get through.
//!
//! Everything is bounded: at most [`MAX_CONNS`] connections are open through the proxy at a
//! time (more are closed on accept), holds (stalls, delays) are clamped to [`MAX_HOLD_MS`],
//! forwarding threads use blocking reads with a [`POLL`] timeout so they notice the stop and
//! stall flags without spinning, and dropping the proxy shuts every socket down and joins every
//! thread it started.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Connections open through the proxy at the same time; further ones are closed on accept.
pub const MAX_CONNS: usize = 64;
/// Upper bound for a stall or a delayed connect, in milliseconds.
pub const MAX_HOLD_MS: u64 = 10_000;
/// Read timeout of forwarding threads and sleep granularity of every wait.
pub const POLL: Duration = Duration::from_millis(50);
/// How often the nonblocking listener is polled.
const ACCEPT_POLL: Duration = Duration::from_millis(20);
/// Bound on connecting upstream (the target is on loopback, so this is generous).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BUF: usize = 64 * 1024;

/// One fault; each fires at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Once `after_bytes` client->server bytes have passed since this fault was armed, shut
    /// down every open connection in both directions. Exactly `after_bytes` bytes get through.
    Cut { after_bytes: u64 },
    /// Once `after_bytes` client->server bytes have passed since this fault was armed, forward
    /// nothing in either direction for `for_ms` (at most [`MAX_HOLD_MS`]), keeping sockets open.
    Stall { after_bytes: u64, for_ms: u64 },
    /// Hold the `conn_index`-th accepted connection for `ms` (at most [`MAX_HOLD_MS`]) before
    /// connecting it upstream.
    DelayConnect { conn_index: usize, ms: u64 },
    /// Close the `conn_index`-th accepted connection right away, without forwarding anything.
    CloseEarly { conn_index: usize },
}

impl Fault {
    fn byte_based(&self) -> bool {
        matches!(self, Fault::Cut { .. } | Fault::Stall { .. })
    }
}

/// A fault-injecting proxy on 127.0.0.1; see the module documentation.
pub struct FaultProxy {
    /// Where clients connect (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1:0 and forwards to `target`, which must be a loopback address.
    pub fn start(target: SocketAddr, faults: Vec<Fault>) -> FaultProxy {
        assert!(
            target.ip().is_loopback(),
            "FaultProxy only forwards to loopback, not {target}"
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (byte_faults, conn_faults): (Vec<Fault>, Vec<Fault>) =
            faults.into_iter().partition(Fault::byte_based);
        let shared = Arc::new(Shared {
            target,
            stop: AtomicBool::new(false),
            state: Mutex::new(State {
                byte_faults: byte_faults.into(),
                conn_faults: conn_faults.into_iter().map(|f| (f, false)).collect(),
                ..State::default()
            }),
        });
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("fault-proxy-accept".into())
            .spawn(move || accept_loop(sh, listener))
            .unwrap();
        FaultProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// Client->server bytes forwarded so far, over all connections.
    pub fn forwarded(&self) -> u64 {
        self.shared.lock().forwarded
    }

    /// Connections accepted so far (including ones closed early or refused over the limit).
    pub fn connections(&self) -> usize {
        self.shared.lock().accepted
    }

    /// Faults that have fired so far.
    pub fn faults_fired(&self) -> usize {
        self.shared.lock().fired
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for l in self.shared.lock().live.iter() {
            l.shutdown();
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// A seeded schedule of 1 to 3 faults: byte thresholds in `1..=max_bytes` (0 if `max_bytes`
/// is 0), stalls and delays of 20..=500 ms, connection indices in 0..8 (distinct).
pub fn random_schedule(seed: u64, max_bytes: u64) -> Vec<Fault> {
    let mut s = seed;
    let n = 1 + (splitmix64(&mut s) % 3) as usize;
    let mut used = [false; 8];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = splitmix64(&mut s) % 4;
        let bytes = match max_bytes {
            0 => 0,
            m => 1 + splitmix64(&mut s) % m,
        };
        let ms = 20 + splitmix64(&mut s) % 481;
        let mut idx = (splitmix64(&mut s) % 8) as usize;
        out.push(match kind {
            0 => Fault::Cut { after_bytes: bytes },
            1 => Fault::Stall {
                after_bytes: bytes,
                for_ms: ms,
            },
            _ => {
                while used[idx] {
                    idx = (idx + 1) % 8;
                }
                used[idx] = true;
                if kind == 2 {
                    Fault::DelayConnect {
                        conn_index: idx,
                        ms,
                    }
                } else {
                    Fault::CloseEarly { conn_index: idx }
                }
            }
        });
    }
    out
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Shared {
    target: SocketAddr,
    stop: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Pending byte-based faults, the front one armed.
    byte_faults: VecDeque<Fault>,
    /// `forwarded` when the front byte-based fault was armed.
    armed_at: u64,
    forwarded: u64,
    /// Connection faults and whether each has fired.
    conn_faults: Vec<(Fault, bool)>,
    /// Incremented by each cut; a connection from an older epoch is dead.
    epoch: u64,
    /// Nothing is forwarded before this instant.
    stall_until: Option<Instant>,
    /// Sockets of the connections open through the proxy (clones, for shutting them down).
    live: Vec<Live>,
    next_id: u64,
    accepted: usize,
    fired: usize,
}

struct Live {
    id: u64,
    client: TcpStream,
    server: Option<TcpStream>,
}

impl Live {
    fn shutdown(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(s) = &self.server {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// What a forwarding thread may do with the bytes it has read.
enum Step {
    /// Write this many bytes (client->server: already counted).
    Forward(usize),
    /// Write this many bytes, then shut these connections down (client->server only).
    ForwardThenCut(usize, Vec<Live>),
    /// A stall is in effect: wait and ask again.
    Stalled,
    /// The proxy stopped or a cut killed this connection.
    Dead,
}

impl Shared {
    /// Locks the state, ignoring poisoning (a panicking test thread must not wedge Drop).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// For `n` bytes read by a forwarding thread of a connection from `epoch`; `upstream` is
    /// the client->server direction, which is counted and can fire byte-based faults.
    fn step(&self, epoch: u64, n: usize, upstream: bool) -> Step {
        let mut st = self.lock();
        if self.stopped() || epoch < st.epoch {
            return Step::Dead;
        }
        if st.stall_until.is_some_and(|t| Instant::now() < t) {
            return Step::Stalled;
        }
        if !upstream {
            return Step::Forward(n);
        }
        let Some(&fault) = st.byte_faults.front() else {
            st.forwarded += n as u64;
            return Step::Forward(n);
        };
        let after = match fault {
            Fault::Cut { after_bytes } | Fault::Stall { after_bytes, .. } => after_bytes,
            _ => unreachable!("only byte-based faults are queued"),
        };
        let room = (st.armed_at + after).saturating_sub(st.forwarded);
        if (n as u64) < room {
            st.forwarded += n as u64;
            return Step::Forward(n);
        }
        // The threshold is reached within these bytes: pass exactly up to it, then fire.
        let take = room as usize;
        st.forwarded += room;
        st.armed_at = st.forwarded;
        st.byte_faults.pop_front();
        st.fired += 1;
        match fault {
            Fault::Cut { .. } => {
                st.epoch += 1;
                Step::ForwardThenCut(take, std::mem::take(&mut st.live))
            }
            Fault::Stall { for_ms, .. } => {
                let until = Instant::now() + Duration::from_millis(for_ms.min(MAX_HOLD_MS));
                st.stall_until = Some(st.stall_until.map_or(until, |t| t.max(until)));
                Step::Forward(take)
            }
            _ => unreachable!(),
        }
    }

    /// Sleeps up to `d` in short steps; false if the proxy stopped meanwhile.
    fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        loop {
            if self.stopped() {
                return false;
            }
            let now = Instant::now();
            if now >= end {
                return true;
            }
            std::thread::sleep((end - now).min(POLL));
        }
    }

    fn remove(&self, id: u64) {
        self.lock().live.retain(|l| l.id != id);
    }
}

fn accept_loop(sh: Arc<Shared>, listener: TcpListener) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !sh.stopped() {
        let mut i = 0;
        while i < conns.len() {
            if conns[i].is_finished() {
                let _ = conns.swap_remove(i).join();
            } else {
                i += 1;
            }
        }
        match listener.accept() {
            Ok((client, _)) => {
                if let Some(h) = admit(&sh, client) {
                    conns.push(h);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // WouldBlock, or a transient error such as EMFILE: wait, never spin.
            Err(_) => std::thread::sleep(ACCEPT_POLL),
        }
    }
    drop(listener);
    for h in conns {
        let _ = h.join();
    }
}

/// Applies connection faults to a newly accepted connection and starts its thread.
fn admit(sh: &Arc<Shared>, client: TcpStream) -> Option<JoinHandle<()>> {
    let mut st = sh.lock();
    let index = st.accepted;
    st.accepted += 1;
    let (mut close, mut delay_ms) = (false, 0u64);
    let mut fired = 0;
    for (f, done) in st.conn_faults.iter_mut().filter(|(_, done)| !*done) {
        match *f {
            Fault::CloseEarly { conn_index } if conn_index == index => close = true,
            Fault::DelayConnect { conn_index, ms } if conn_index == index => delay_ms += ms,
            _ => continue,
        }
        *done = true;
        fired += 1;
    }
    st.fired += fired;
    if close || st.live.len() >= MAX_CONNS || sh.stopped() {
        drop(st);
        let _ = client.shutdown(Shutdown::Both);
        return None;
    }
    let (Ok(()), Ok(tracked)) = (client.set_nonblocking(false), client.try_clone()) else {
        drop(st);
        let _ = client.shutdown(Shutdown::Both);
        return None;
    };
    let id = st.next_id;
    st.next_id += 1;
    let epoch = st.epoch;
    st.live.push(Live {
        id,
        client: tracked,
        server: None,
    });
    drop(st);
    let delay = Duration::from_millis(delay_ms.min(MAX_HOLD_MS));
    let sh2 = sh.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("fault-proxy-conn{index}"))
        .spawn(move || {
            connection(&sh2, id, epoch, client, delay);
            sh2.remove(id);
        });
    match spawned {
        Ok(h) => Some(h),
        Err(_) => {
            // The stream moved into the failed closure is already closed; drop our clone too.
            let mut st = sh.lock();
            if let Some(l) = st.live.iter().find(|l| l.id == id) {
                l.shutdown();
            }
            st.live.retain(|l| l.id != id);
            None
        }
    }
}

/// One proxied connection: optional hold, upstream connect, then a forwarding thread per
/// direction until both directions end.
fn connection(sh: &Shared, id: u64, epoch: u64, client: TcpStream, delay: Duration) {
    if !delay.is_zero() && !sh.sleep(delay) {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(server) = TcpStream::connect_timeout(&sh.target, CONNECT_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    // Register the upstream socket unless a cut or the drop already closed this connection
    // (both happen under the same lock, so nothing can slip past them).
    {
        let mut st = sh.lock();
        let alive = !sh.stopped() && epoch == st.epoch;
        let tracked = server.try_clone().ok();
        match (alive, tracked, st.live.iter_mut().find(|l| l.id == id)) {
            (true, Some(t), Some(l)) => l.server = Some(t),
            _ => {
                drop(st);
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                return;
            }
        }
    }
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let clones = (client.try_clone(), server.try_clone());
    let (Ok(c2), Ok(s2)) = clones else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        return;
    };
    if client.set_read_timeout(Some(POLL)).is_err() || server.set_read_timeout(Some(POLL)).is_err()
    {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        return;
    }
    std::thread::scope(|s| {
        s.spawn(|| pump(sh, epoch, s2, c2, false));
        pump(sh, epoch, client, server, true);
    });
}

/// Copies `from` to `to` until EOF, an error, a cut or the proxy's stop. `upstream` is the
/// client->server direction (counted, fires byte-based faults).
fn pump(sh: &Shared, epoch: u64, mut from: TcpStream, mut to: TcpStream, upstream: bool) {
    let mut buf = vec![0u8; BUF];
    'read: loop {
        // Hold reads during a stall so the sender feels backpressure, as on a stalled link.
        match sh.step(epoch, 0, false) {
            Step::Dead => return,
            Step::Stalled => {
                std::thread::sleep(POLL);
                continue;
            }
            _ => {}
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        };
        let mut off = 0;
        while off < n {
            match sh.step(epoch, n - off, upstream) {
                Step::Dead => return,
                Step::Stalled => std::thread::sleep(POLL),
                Step::Forward(k) => {
                    if to.write_all(&buf[off..off + k]).is_err() {
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                        return;
                    }
                    off += k;
                }
                Step::ForwardThenCut(k, victims) => {
                    let _ = to.write_all(&buf[off..off + k]);
                    for v in &victims {
                        v.shutdown();
                    }
                    break 'read;
                }
            }
        }
    }
    // Clean EOF from `from`: pass the half-close on.
    let _ = to.shutdown(Shutdown::Write);
}
