//! `mover receive`: accept connections, run one session at a time into the destination root.

pub(crate) mod apply;
pub mod aside;
pub(crate) mod checked;
pub(crate) mod claims;
pub(crate) mod conns;
pub mod drill;
pub(crate) mod fence;
pub(crate) mod finalize;
pub(crate) mod grant;
mod hellos;
pub(crate) mod journal;
pub(crate) mod meta;
pub mod policy;
pub(crate) mod resume;
pub(crate) mod revert;
pub mod scrub;
pub(crate) mod session;
pub mod share;
pub mod space;
pub mod state;
pub(crate) mod table;
pub(crate) mod verify;
pub(crate) mod worker;
pub(crate) mod writeback;

pub use revert::RevertReport;
pub use scrub::{scrub_root, ScrubReport, ScrubStatus};
pub use session::{SessionReport, Verify};

/// Registered buffers of one receiver worker: at most this many frames of a worker are being
/// written at once.
pub const WORKER_BUFFERS: usize = worker::BUFFERS;

use crate::error::{Error, IoContext, Result};
use crate::job::Progress;
use crate::transport::select::{self, RdmaPolicy};
use crate::transport::tcp::TcpConn;
use crate::transport::Connection;
use crate::units::{SessionId, WorkerIndex};
use crate::wire::frame::FrameKind;
use crate::wire::io::{expect_frame, send_error, Link};
use crate::wire::message::software_version;
use crate::wire::message::{
    negotiate_version, ErrorCode, Hello, HelloAck, Role, CAP_BLOCK_HASHES, CAP_OWNERS, CAP_RDMA,
    CAP_RESUME_RANGES, CAP_SEALED, CAP_USER_XATTRS,
};
use crate::wire::seal::{SessionSecret, CONTROL_CONN};
use session::Session;
pub use session::SessionLimits;
use state::State;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// How long a new connection may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the control connection may sit silent (apply phase of a huge tree, workers running).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a new control connection waits for a finishing session before being told "busy".
const BUSY_GRACE: Duration = Duration::from_secs(2);
/// Poll interval of the accept loop, which also notices finished sessions.
const ACCEPT_POLL: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct ReceiveOptions {
    pub root: PathBuf,
    /// Exit after one session.
    pub once: bool,
    /// Accept only control sessions whose id is a ticket issued here (the daemon hands them to
    /// the authenticated source); `None` accepts any sender (plain `mover receive`).
    pub tickets: Option<Arc<Tickets>>,
    /// Set to make `serve` return once no session is running (the daemon stops the receiver).
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Bounds on the entry list and hints a sender may send.
    pub limits: SessionLimits,
    /// Accept sessions whose frames travel in clear (checksummed, not encrypted). Off, only
    /// sealed sessions of tickets issued with a secret are accepted; the sender must agree to
    /// plaintext too.
    pub insecure_plaintext: bool,
    /// What the replica may hold beyond plain files and directories (setuid/setgid bits,
    /// devices); nothing by default.
    pub policy: policy::ReplicaPolicy,
    /// A large file being written is flushed and its written ranges logged every this many
    /// bytes, so an interrupted job resumes inside it (None: `resume::FLUSH_BYTES`).
    pub checkpoint_bytes: Option<u64>,
    /// How sessions verify the target: what the job changed (default), or everything.
    pub verify: Verify,
    /// Scrub the target (a full verifying walk against its recovery point) this often, between
    /// sessions; `None`: never.
    pub scrub_every: Option<Duration>,
    /// Whether worker connections may move to RDMA when a sender offers it (see
    /// `transport::select`); None: TCP only. A receiver accepts TCP sessions whatever its
    /// policy: a sender falls back to TCP after an RDMA failure.
    pub rdma: Option<RdmaPolicy>,
    /// Runs the other write places of sessions whose tickets name some (`share`).
    pub writers: Option<Arc<dyn share::Writers>>,
}

/// Outstanding tickets at most; issuing more drops the oldest.
pub const MAX_TICKETS: usize = 16;
/// A ticket not redeemed within this long is void. Long: a sender asks for its ticket before
/// it takes its snapshot and walks the tree, which can take hours on a large source; the
/// ticket is a 128-bit secret handed only to the authenticated source, and at most
/// MAX_TICKETS are outstanding.
pub const TICKET_TTL: Duration = Duration::from_secs(24 * 3600);

/// One issued, unredeemed session: its id as Hellos will carry it, and the secret its frames
/// are sealed with (None: a plaintext session).
struct Ticket {
    id: SessionId,
    secret: Option<SessionSecret>,
    issued: std::time::Instant,
    /// The session's other write places (`share`), in the order its workers are given them.
    places: Vec<SocketAddr>,
}

/// One-time sessions handed to an authenticated peer and redeemed by its control connection;
/// worker connections join by the same id while the session runs.
/// - Sealed: the peers share a secret (a daemon derives it from the mutual TLS session that
///   asked for the ticket); Hellos carry only its handle, and every frame after the Hello is
///   sealed with it, so the id is not a capability on its own.
/// - Plain (`--insecure-plaintext`): 128 random bits, carried in clear: the id is the capability.
#[derive(Default)]
pub struct Tickets(std::sync::Mutex<std::collections::VecDeque<Ticket>>);

impl Tickets {
    fn push(&self, ticket: Ticket) -> SessionId {
        let id = ticket.id;
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() == MAX_TICKETS {
            t.pop_front();
        }
        t.push_back(ticket);
        id
    }

    /// A plaintext session: returns its id, which the peer sends in clear.
    pub fn issue(&self) -> Result<SessionId> {
        let id = SessionId::random().ctx(|| "random session ticket".to_string())?;
        Ok(self.push(Ticket {
            id,
            secret: None,
            issued: std::time::Instant::now(),
            places: Vec::new(),
        }))
    }

    /// `issue_sealed` with `secret`, or `issue` without one.
    pub fn issue_with(&self, secret: Option<SessionSecret>) -> Result<SessionId> {
        match secret {
            Some(s) => Ok(self.issue_sealed(s)),
            None => self.issue(),
        }
    }

    /// A sealed session with `secret`: returns its handle, the id its Hellos will carry.
    pub fn issue_sealed(&self, secret: SessionSecret) -> SessionId {
        self.push(Ticket {
            id: secret.handle(),
            secret: Some(secret),
            issued: std::time::Instant::now(),
            places: Vec::new(),
        })
    }

    /// As `issue_with`, for a session whose workers also write at `places` (other write
    /// places on the shared target, `share`): worker `i` of `n` goes to place
    /// `write_place(i, n, places.len() + 1)`, place 0 being this receiver.
    pub fn issue_spread(
        &self,
        secret: Option<SessionSecret>,
        mut places: Vec<SocketAddr>,
    ) -> Result<SessionId> {
        // One share per place: an address named twice would be handed the session twice.
        let mut seen = std::collections::HashSet::new();
        places.retain(|a| seen.insert(*a));
        if places.len() > share::MAX_WRITE_PLACES {
            return Err(Error::Limit(format!(
                "{} write places, at most {} are served",
                places.len(),
                share::MAX_WRITE_PLACES
            )));
        }
        let id = match &secret {
            Some(s) => s.handle(),
            None => SessionId::random().ctx(|| "random session ticket".to_string())?,
        };
        Ok(self.push(Ticket {
            id,
            secret,
            issued: std::time::Instant::now(),
            places,
        }))
    }

    /// Takes the session `id` if it was issued here and is still valid: its secret and write
    /// places.
    fn redeem(&self, id: SessionId) -> Option<(Option<SessionSecret>, Vec<SocketAddr>)> {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.retain(|x| x.issued.elapsed() < TICKET_TTL);
        let i = t.iter().position(|x| x.id == id)?;
        t.remove(i).map(|x| (x.secret, x.places))
    }
}

/// A worker connection that joined a session, with its index.
pub(crate) type WorkerConn = (WorkerIndex, Link);

/// A running session as the accept loop sees it: where its workers go, and its secret.
struct Running {
    workers: mpsc::Sender<WorkerConn>,
    secret: Option<SessionSecret>,
    /// Where each worker runs: a worker connection's RDMA port is the one its plan gives it.
    places: Vec<crate::engine::WorkerPlace>,
    /// The worker indices of the session (those its control Hello announced) and those
    /// acknowledged: each at most once (`take_worker_index`).
    indices: Vec<u16>,
    acked: std::collections::HashSet<u16>,
}

/// Takes worker `index` of a session whose workers are `indices`, once: false (with why) if
/// it is not one of them or was taken already. A worker's HelloAck is sealed with its index's
/// key from counter 0, so a second one (a Hello repeated or replayed by anyone who saw the
/// session's handle, which travels in clear) would seal another plaintext (the HelloAck
/// echoes capabilities the Hello chose) under the same key and nonce, which gives away the
/// authentication key; and each would be held as a connection until the session ends.
fn take_worker_index(
    acked: &mut std::collections::HashSet<u16>,
    indices: &[u16],
    index: WorkerIndex,
) -> std::result::Result<(), String> {
    if !indices.contains(&index.0) {
        return Err(format!("worker {} is not one of this session's", index.0));
    }
    if !acked.insert(index.0) {
        return Err(format!(
            "worker {} of this session has connected already",
            index.0
        ));
    }
    Ok(())
}

enum Accepted {
    Control { session: Session, ctl: Box<Link> },
    Worker,
}

pub struct Receiver {
    /// Where connections come from: its own listener, or (inside the daemon, which owns the one
    /// replication port) a channel of connections already accepted and routed by session id.
    source: Incoming,
    opts: ReceiveOptions,
    /// Worker-connection channels of running sessions, touched only by the accept loop.
    sessions: HashMap<SessionId, Running>,
    progress: Arc<Progress>,
    owners: bool,
    umask: u32,
    /// The destination root; sessions reopen it from this fd so they write into exactly the
    /// directory that is locked.
    root: std::os::fd::OwnedFd,
    /// The root's lock (`.mover-state/lock`), held for the receiver's lifetime.
    _lock: std::os::fd::OwnedFd,
    /// The last scrub's (or full verification's) result.
    scrub: Arc<ScrubStatus>,
    /// Drills asked for, made between sessions.
    drills: (mpsc::Sender<DrillAsk>, mpsc::Receiver<DrillAsk>),
    /// Drills waiting for the running session to end.
    drills_waiting: Vec<DrillAsk>,
    /// Connections on `Incoming::Listener` whose Hello is still arriving.
    hellos: hellos::Hellos,
}

/// Drills waiting for a session to end, at most (more are refused as busy).
const MAX_DRILLS_WAITING: usize = 16;

/// A drill asked of a serving receiver, answered on `reply` unless its asker gave up.
struct DrillAsk {
    req: drill::DrillRequest,
    deadline: std::time::Instant,
    reply: mpsc::Sender<Result<drill::DrillReport>>,
}

/// Asks a serving receiver for DR drills (see `drill`).
#[derive(Clone)]
pub struct DrillHandle(mpsc::Sender<DrillAsk>);

impl DrillHandle {
    /// The drill, made between two sessions, waiting at most `wait` for the running one to
    /// end (a drill not started by then is not made).
    pub fn make(&self, req: drill::DrillRequest, wait: Duration) -> Result<drill::DrillReport> {
        let (reply, answer) = mpsc::channel();
        let deadline = std::time::Instant::now() + wait;
        self.0
            .send(DrillAsk {
                req,
                deadline,
                reply,
            })
            .map_err(|_| Error::Busy("the target's receiver has stopped".into()))?;
        // Answered when made, or dropped unanswered once `wait` is over with a session still
        // running (a copy can take long once begun: no timeout here).
        match answer.recv() {
            Ok(r) => r,
            Err(_) => Err(Error::Busy(format!(
                "a job ran for longer than {wait:?}; no drill was made, try again"
            ))),
        }
    }
}

/// A new connection, and its Hello's payload if it was read already.
type Arrival = (Box<dyn Connection>, Option<Vec<u8>>);

/// A connection on a receiver's own listener whose whole Hello is in, and that Hello.
fn whole_hello(hellos: &mut hellos::Hellos) -> Option<Arrival> {
    let (s, hello) = hellos.take_whole(HELLO_TIMEOUT)?;
    match TcpConn::new(s) {
        Ok(c) => Some((Box::new(c), Some(hello))),
        Err(e) => {
            tracing::warn!("accepted socket options: {e}");
            None
        }
    }
}

enum Incoming {
    Listener(TcpListener),
    Inbox(mpsc::Receiver<Box<dyn Connection>>),
}

/// The session id in a connection's first bytes (a Hello frame), `Ok(None)` while more bytes
/// are needed. Lets a daemon that owns the replication port route data-plane connections to
/// the receiver that issued the session's ticket without consuming anything.
pub fn hello_session(
    first: &[u8],
) -> std::result::Result<Option<SessionId>, crate::wire::WireError> {
    match crate::wire::frame::decode_frame(first) {
        Ok((h, payload, _)) if h.kind == FrameKind::Hello => {
            Ok(Some(Hello::decode(payload)?.session))
        }
        Ok(_) => Err(crate::wire::WireError::BadField {
            field: "first frame (not Hello)",
        }),
        Err(crate::wire::WireError::Truncated { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a connection's first bytes (a whole Hello frame, as `hello_session` found it) are a
/// worker connection's Hello.
pub fn hello_is_worker(first: &[u8]) -> bool {
    matches!(
        crate::wire::frame::decode_frame(first),
        Ok((h, payload, _)) if h.kind == FrameKind::Hello
            && matches!(Hello::decode(payload), Ok(Hello { role: crate::wire::message::Role::Worker { .. }, .. }))
    )
}

/// A connection's first byte is this for a data-plane connection (the Hello frame kind); TLS
/// records start with 0x16, so one port can carry both.
pub const DATA_PLANE_FIRST_BYTE: u8 = FrameKind::Hello as u8;

impl Receiver {
    /// Binds and locks the root so a second receiver cannot interleave writes into it.
    pub fn bind(
        addr: SocketAddr,
        opts: ReceiveOptions,
        progress: Arc<Progress>,
    ) -> Result<Receiver> {
        let locked = Self::lock_root(&opts)?;
        let listener = TcpListener::bind(addr).ctx(|| format!("listening on {addr}"))?;
        listener
            .set_nonblocking(true)
            .ctx(|| "listener".to_string())?;
        Ok(Self::new(
            Incoming::Listener(listener),
            opts,
            progress,
            locked,
        ))
    }

    /// A receiver fed with connections someone else accepted or made (the daemon's replication
    /// port, an in-memory transport); each is checked like an accepted one: Hello, version,
    /// ticket.
    pub fn from_inbox(
        inbox: mpsc::Receiver<Box<dyn Connection>>,
        opts: ReceiveOptions,
        progress: Arc<Progress>,
    ) -> Result<Receiver> {
        let locked = Self::lock_root(&opts)?;
        Ok(Self::new(Incoming::Inbox(inbox), opts, progress, locked))
    }

    /// Opens the root and takes its lock (held as long as the receiver lives).
    fn lock_root(opts: &ReceiveOptions) -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
        let root = crate::beneath::open_root(&opts.root, "destination root")?;
        let lock = State::open(root.as_fd())?.lock(&opts.root)?;
        Ok((root, lock))
    }

    fn new(
        source: Incoming,
        opts: ReceiveOptions,
        progress: Arc<Progress>,
        (root, lock): (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
    ) -> Receiver {
        crate::engine::raise_fd_limit();
        let umask = process_umask();
        let owners = rustix::process::geteuid().is_root();
        let scrub = Arc::new(ScrubStatus::default());
        if let Ok(Some(state)) = State::find(root.as_fd()) {
            scrub.set(scrub::last(&state));
        }
        Receiver {
            source,
            opts,
            sessions: HashMap::new(),
            progress,
            owners,
            umask,
            root,
            _lock: lock,
            scrub,
            drills: mpsc::channel(),
            drills_waiting: Vec::new(),
            hellos: Default::default(),
        }
    }

    /// Where to ask this receiver for drills while it serves.
    pub fn drill_handle(&self) -> DrillHandle {
        DrillHandle(self.drills.0.clone())
    }

    /// Makes the drills asked for when no session runs (the target is its recovery point);
    /// while one runs, drops those whose asker's wait is over (which tells the asker).
    fn run_drills(&mut self, session_running: bool) {
        while let Ok(ask) = self.drills.1.try_recv() {
            if self.drills_waiting.len() >= MAX_DRILLS_WAITING {
                let _ = ask.reply.send(Err(Error::Busy(format!(
                    "{MAX_DRILLS_WAITING} drills already wait for the running job"
                ))));
                continue;
            }
            self.drills_waiting.push(ask);
        }
        let now = std::time::Instant::now();
        self.drills_waiting.retain(|a| a.deadline > now);
        if session_running {
            return;
        }
        for ask in std::mem::take(&mut self.drills_waiting) {
            let made = drill::make(self.root.as_fd(), &ask.req);
            match &made {
                Ok(r) => tracing::info!(path = %r.path.display(), "drill made and verified"),
                Err(e) => tracing::warn!("drill failed: {e}"),
            }
            let _ = ask.reply.send(made);
        }
    }

    /// The last full verification of the target (a scrub, or a job that walked it all), kept
    /// current while the receiver serves.
    pub fn scrub_status(&self) -> Arc<ScrubStatus> {
        self.scrub.clone()
    }

    /// Scrubs the target now (between sessions) and records the result.
    fn run_scrub(&self) {
        let state = match State::open(self.root.as_fd()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("scrub: {e}");
                return;
            }
        };
        match scrub::scrub_fd(self.root.as_fd(), &state) {
            Ok(Some(r)) => {
                if r.ok {
                    tracing::info!(
                        entries = r.entries,
                        "scrub: the target is its recovery point"
                    );
                } else {
                    tracing::error!(
                        "scrub: the target differs from its recovery point: {}",
                        r.difference.as_deref().unwrap_or("")
                    );
                }
                self.scrub.set(Some(r));
            }
            Ok(None) => {
                tracing::info!("scrub skipped: no recovery point, or a job waits to resume")
            }
            Err(e) => tracing::error!("scrub failed: {e}"),
        }
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        match &self.source {
            Incoming::Listener(l) => l.local_addr().ctx(|| "listener address".to_string()),
            Incoming::Inbox(_) => Err(Error::Unsupported(
                "this receiver has no listener of its own".into(),
            )),
        }
    }

    /// The next connection, waiting at most ACCEPT_POLL; `Ok(None)` when none came. One from
    /// this receiver's own listener comes with its Hello's payload, read already (`hellos`).
    fn next_connection(&mut self) -> Result<Option<Arrival>> {
        match &self.source {
            Incoming::Listener(l) => {
                if let Some(a) = whole_hello(&mut self.hellos) {
                    return Ok(Some(a));
                }
                use rustix::event::{PollFd, PollFlags};
                let mut fds: Vec<PollFd<'_>> = std::iter::once(l.as_fd())
                    .chain(self.hellos.fds())
                    .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
                    .collect();
                let ready = rustix::event::poll(
                    &mut fds,
                    Some(&rustix::time::Timespec {
                        tv_sec: 0,
                        tv_nsec: ACCEPT_POLL.as_nanos() as i64,
                    }),
                );
                let listener_ready =
                    matches!(ready, Ok(n) if n > 0) && !fds[0].revents().is_empty();
                drop(fds);
                if listener_ready {
                    match l.accept() {
                        Ok((s, _)) => self.hellos.add(s),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            return Err(Error::Io {
                                context: "accept".into(),
                                source: e,
                            })
                        }
                    }
                }
                Ok(whole_hello(&mut self.hellos))
            }
            Incoming::Inbox(rx) => match rx.recv_timeout(ACCEPT_POLL) {
                Ok(c) => Ok(Some((c, None))),
                Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
                // The daemon dropped the sender: nobody can reach this receiver any more.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(ACCEPT_POLL);
                    Ok(None)
                }
            },
        }
    }

    /// Serves until one session ended (`once`) or forever; calls `on_report` after each session.
    pub fn serve(mut self, mut on_report: impl FnMut(&SessionReport)) -> Result<SessionReport> {
        let (done_tx, done_rx) = mpsc::channel::<(SessionId, SessionReport)>();
        let mut active: Option<SessionId> = None;
        let running = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut started = 0u64;
        let mut scrub_due = self.opts.scrub_every.map(|every| {
            scrub::next_due(self.scrub.last().as_ref(), every, crate::clock::now_ns())
        });
        loop {
            while let Ok((id, rep)) = done_rx.try_recv() {
                self.sessions.remove(&id);
                if active == Some(id) {
                    active = None;
                }
                on_report(&rep);
                if rep.ok && rep.full_verify {
                    // The job walked the whole target: that counts as the last scrub.
                    if let Ok(Some(state)) = State::find(self.root.as_fd()) {
                        self.scrub.set(scrub::last(&state));
                    }
                }
                if self.opts.once {
                    return Ok(rep);
                }
            }
            if let (Some(due), Some(every), None) = (scrub_due, self.opts.scrub_every, active) {
                let now = crate::clock::now_ns();
                if now >= due {
                    self.run_scrub();
                    let last = self.scrub.last().filter(|r| r.at_ns >= now);
                    scrub_due = Some(match last {
                        Some(r) => scrub::next_due(Some(&r), every, now),
                        None => now.saturating_add(scrub::SCRUB_RETRY.as_nanos() as i64),
                    });
                }
            }
            self.run_drills(active.is_some());
            if active.is_none()
                && self
                    .opts
                    .stop
                    .as_ref()
                    .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
            {
                return Ok(SessionReport::failed(SessionId(0), "receiver stopped"));
            }
            let Some((conn, hello)) = self.next_connection()? else {
                continue;
            };
            let peer = conn.peer();
            let stopping = self
                .opts
                .stop
                .as_ref()
                .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
            let refuse_control = (self.opts.once && started > 0) || stopping;
            match self.handshake(conn, hello, &running, refuse_control) {
                Ok(Accepted::Control { session, ctl }) => {
                    let id = session.id;
                    active = Some(id);
                    started += 1;
                    running.store(true, std::sync::atomic::Ordering::SeqCst);
                    let (tx, running) = (done_tx.clone(), running.clone());
                    std::thread::Builder::new()
                        .name("mover-session".into())
                        .spawn(move || {
                            // A panic must still end the session (and `--once`) with a report.
                            let rep =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    session.run(*ctl)
                                }))
                                .unwrap_or_else(|_| {
                                    SessionReport::failed(id, "receiver session panicked")
                                });
                            running.store(false, std::sync::atomic::Ordering::SeqCst);
                            let _ = tx.send((id, rep));
                        })
                        .ctx(|| "spawning session thread".to_string())?;
                }
                Ok(Accepted::Worker) => {}
                Err(e) => tracing::warn!(%peer, "connection refused: {e}"),
            }
        }
    }

    /// The recovery point the destination is at, and whether a job's journal awaits.
    /// Whether the next job repairs the target rather than moving it from its recovery point:
    /// its last scrub found it differs, or it has no recovery point but holds a tree already
    /// (a target made writable and reversed, one authorized non-empty).
    fn repairing(&self) -> Result<bool> {
        let state = State::find(self.root.as_fd())?;
        if let Some(s) = &state {
            if s.recovery_point()?.is_some() {
                return Ok(super::receiver::scrub::failed(s));
            }
        }
        let names = crate::beneath::dir_names(self.root.as_fd())
            .ctx(|| "listing the target's top".to_string())?;
        Ok(names.iter().any(|n| !crate::tree::reserved_at_top(n)))
    }

    fn job_state(&self) -> Result<(u128, bool)> {
        let Some(state) = State::find(self.root.as_fd())? else {
            return Ok((0, false));
        };
        let rp = state.recovery_point()?;
        let pending = journal::read_base(&state)?
            .is_some_and(|base| rp.as_ref().is_some_and(|r| r.id == base));
        Ok((rp.map(|r| r.id.0).unwrap_or(0), pending))
    }

    /// Answers a new connection's Hello: `hello`, its payload if read already, or read here.
    fn handshake(
        &mut self,
        mut conn: Box<dyn Connection>,
        hello: Option<Vec<u8>>,
        running: &std::sync::atomic::AtomicBool,
        once_done: bool,
    ) -> Result<Accepted> {
        let (hello, version) = match hello {
            Some(payload) => {
                conn.set_timeout(Some(HELLO_TIMEOUT))
                    .ctx(|| "socket timeout".to_string())?;
                check_hello(&mut *conn, &payload)?
            }
            None => read_hello(&mut *conn)?,
        };
        let sealed = hello.capabilities & CAP_SEALED != 0;
        if !sealed && !self.opts.insecure_plaintext {
            return refuse(
                &mut *conn,
                ErrorCode::Refused,
                "this receiver accepts only encrypted sessions (the sender has no session \
                 secret); both sides must be started with --insecure-plaintext to send in clear"
                    .into(),
            );
        }
        let resume_ranges = hello.capabilities & CAP_RESUME_RANGES != 0;
        // Block hashes are asked for only when this job repairs (they cost the sender a read
        // of files its manifest does not describe), and answered with Rest ranges.
        let blocks = resume_ranges
            && hello.capabilities & CAP_BLOCK_HASHES != 0
            && matches!(hello.role, Role::Control { .. })
            && self.repairing()?;
        let caps = CAP_USER_XATTRS
            | if self.owners { CAP_OWNERS } else { 0 }
            | if sealed { CAP_SEALED } else { 0 }
            | if resume_ranges { CAP_RESUME_RANGES } else { 0 }
            | if blocks { CAP_BLOCK_HASHES } else { 0 };
        // RDMA when the sender offers it and so does this side, for this connection's address.
        let rdma_port = match &self.opts.rdma {
            Some(p) if hello.capabilities & CAP_RDMA != 0 => {
                let planned = match hello.role {
                    Role::Worker { index } => self
                        .sessions
                        .get(&hello.session)
                        .and_then(|r| r.places.get(usize::from(index.0))?.rdma.as_ref()),
                    Role::Control { .. } => None,
                };
                p.offer_for(select::local_ip(&*conn), planned)
                    .unwrap_or_else(|e| {
                        tracing::warn!(%e, "RDMA not offered");
                        None
                    })
            }
            _ => None,
        };
        let rdma = select::answer(hello.capabilities & CAP_RDMA != 0, rdma_port.is_some());
        let caps = caps | if rdma { CAP_RDMA } else { 0 };
        let (recovery_point, job_pending) = self.job_state()?;
        let ack = HelloAck {
            version,
            software: software_version().to_string(),
            capabilities: caps,
            recovery_point,
            job_pending,
        };
        match hello.role {
            Role::Control { workers } => {
                if once_done {
                    return refuse(
                        &mut *conn,
                        ErrorCode::Busy,
                        "receiver is exiting: it serves one session (--once) or was stopped".into(),
                    );
                }
                let (secret, write_places) =
                    match self.opts.tickets.as_ref().map(|t| t.redeem(hello.session)) {
                        // Plain `mover receive`: any sender, in clear only (checked above).
                        None if !sealed => (None, Vec::new()),
                        Some(Some((secret, places))) if sealed == secret.is_some() => {
                            (secret, places)
                        }
                        _ => return refuse(
                            &mut *conn,
                            ErrorCode::Refused,
                            "session not authorized: its id is not a ticket this receiver issued \
                             (or not one for a session of this kind)"
                                .into(),
                        ),
                    };
                // A session that just acknowledged its sender may still be closing: a sender
                // that starts its next job at once should not be told the receiver is busy.
                let deadline = std::time::Instant::now() + BUSY_GRACE;
                while running.load(std::sync::atomic::Ordering::SeqCst)
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if running.load(std::sync::atomic::Ordering::SeqCst) {
                    return refuse(
                        &mut *conn,
                        ErrorCode::Busy,
                        "receiver busy: another session is writing to this root".into(),
                    );
                }
                let mut ctl = match &secret {
                    Some(s) => Link::sealed(conn, s, false, CONTROL_CONN),
                    None => Link::plain(conn),
                };
                ctl.write_frame(FrameKind::HelloAck, &ack.encode())?;
                ctl.conn
                    .set_timeout(Some(CONTROL_TIMEOUT))
                    .ctx(|| "socket timeout".to_string())?;
                let (tx, rx) = mpsc::channel();
                let places = crate::engine::worker_places(workers as usize, Some(&self.opts.root));
                let cpus = places.iter().map(|p| p.cpu).collect();
                let run = Running {
                    workers: tx,
                    secret: secret.clone(),
                    places,
                    indices: (0..workers).collect(),
                    acked: Default::default(),
                };
                self.sessions.insert(hello.session, run);
                let root = crate::beneath::open_dir(self.root.as_fd(), b"")
                    .ctx(|| format!("reopening {}", self.opts.root.display()))?;
                self.progress.reset();
                let session = Session {
                    id: hello.session,
                    workers,
                    owners: self.owners && hello.capabilities & CAP_OWNERS != 0,
                    umask: self.umask,
                    root,
                    worker_conns: rx,
                    cpus,
                    progress: self.progress.clone(),
                    limits: self.opts.limits,
                    policy: self.opts.policy,
                    resume_ranges,
                    block_hashes: blocks,
                    checkpoint_bytes: self
                        .opts
                        .checkpoint_bytes
                        .unwrap_or(resume::FLUSH_BYTES)
                        .max(resume::MIN_FLUSH_BYTES),
                    verify: self.opts.verify,
                    transport: if rdma {
                        select::Used::Rdma
                    } else {
                        select::Used::Tcp
                    },
                    secret,
                    write_places,
                    writers: self.opts.writers.clone(),
                };
                Ok(Accepted::Control {
                    session,
                    ctl: Box::new(ctl),
                })
            }
            Role::Worker { index } => {
                let Some(run) = self.sessions.get_mut(&hello.session) else {
                    return refuse(
                        &mut *conn,
                        ErrorCode::Refused,
                        format!("unknown session {}", hello.session),
                    );
                };
                if sealed != run.secret.is_some() {
                    return refuse(
                        &mut *conn,
                        ErrorCode::Refused,
                        "worker connection of another kind than its session".into(),
                    );
                }
                if let Err(why) = take_worker_index(&mut run.acked, &run.indices, index) {
                    return refuse(&mut *conn, ErrorCode::Refused, why);
                }
                let mut link = match &run.secret {
                    Some(s) => Link::sealed(conn, s, false, u32::from(index.0)),
                    None => Link::plain(conn),
                };
                link.write_frame(FrameKind::HelloAck, &ack.encode())?;
                let Some(port) = rdma_port.filter(|_| rdma) else {
                    link.conn
                        .set_timeout(None)
                        .ctx(|| "socket timeout".to_string())?;
                    let _ = run.workers.send((index, link));
                    return Ok(Accepted::Worker);
                };
                // The sender sets its queue pair up as soon as it reads the HelloAck. Each
                // setup is a few round trips on its own connection: a session's workers set
                // theirs up side by side, off this accept loop (one short thread each, at
                // most a session's workers at a time).
                let workers = run.workers.clone();
                std::thread::Builder::new()
                    .name(format!("mover-qp-{}", index.0))
                    .spawn(move || {
                        let up = select::upgrade(&*link.conn, &port, None)
                            .and_then(|c| c.set_timeout(None).map(|()| c));
                        match up {
                            Ok(c) => {
                                link.conn = c;
                                let _ = workers.send((index, link));
                            }
                            // The sender's worker fails too; its session is retried (over
                            // TCP if its transport failed).
                            Err(e) => tracing::warn!(
                                worker = index.0,
                                "setting up RDMA on {}:{}: {e}",
                                port.device,
                                port.port
                            ),
                        }
                    })
                    .ctx(|| "spawning a queue-pair setup".to_string())?;
                Ok(Accepted::Worker)
            }
        }
    }
}

/// Refuses `conn` with `code` and `message` (an Error frame), as `Error::Refused`.
pub(crate) fn refuse<T>(conn: &mut dyn Connection, code: ErrorCode, message: String) -> Result<T> {
    send_error(conn, code, &message);
    Err(Error::Refused { code, message })
}

/// Reads a new connection's Hello (within `HELLO_TIMEOUT`) and checks what every receiving
/// end checks before anything else: that it decodes, a protocol version both speak, and a
/// release this one replicates with. Returns it and the version; refuses the peer otherwise.
pub(crate) fn read_hello(conn: &mut dyn Connection) -> Result<(Hello, u16)> {
    conn.set_timeout(Some(HELLO_TIMEOUT))
        .ctx(|| "socket timeout".to_string())?;
    let mut buf = Vec::new();
    expect_frame(conn, FrameKind::Hello, &mut buf)?;
    check_hello(conn, &buf)
}

/// Decodes Hello payload `buf` and checks it as `read_hello` says.
fn check_hello(conn: &mut dyn Connection, buf: &[u8]) -> Result<(Hello, u16)> {
    let hello = match Hello::decode(buf) {
        Ok(h) => h,
        Err(e) => {
            send_error(conn, ErrorCode::Other, &e.to_string());
            return Err(e.into());
        }
    };
    let version = match negotiate_version(hello.min_version, hello.max_version) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                conn,
                ErrorCode::Version,
                format!("{e} (receiver is mover {})", software_version()),
            )
        }
    };
    if let Some(why) = crate::compat::refuse_peer(software_version(), &hello.software, "sender") {
        return refuse(conn, ErrorCode::Version, why);
    }
    Ok((hello, version))
}

/// The process umask: inline files are created with their final permission bits, and fchmod
/// is skipped only where the umask cannot have cleared any. Read from /proc without changing
/// it: the umask(2) call is set-and-restore, and between the two, another session of this
/// process (a daemon serves many) would read 0 and skip an fchmod the real umask needed, and
/// every thread would create files under umask 0.
pub(crate) fn process_umask() -> u32 {
    if let Some(m) = umask_from_proc() {
        return m;
    }
    // Kernels before 4.7 do not show it: set and restore, one reader at a time.
    static READING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = READING.lock().unwrap_or_else(|p| p.into_inner());
    let umask = rustix::process::umask(rustix::fs::Mode::empty());
    rustix::process::umask(umask);
    umask.bits()
}

/// The `Umask:` line of /proc/self/status (Linux 4.7+).
fn umask_from_proc() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let octal = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(octal.trim(), 8).ok()
}

/// `mover receive --revert`: rolls the destination back to its last recovery point (applying
/// the undo journal of an interrupted job). Takes the same lock as a receiver, so it cannot run
/// while one is serving the root.
pub fn revert_root(root: &std::path::Path) -> Result<revert::RevertReport> {
    let fd = crate::beneath::open_root(root, "destination root")?;
    match State::find(fd.as_fd())? {
        Some(state) => {
            let _lock = state.lock(root)?;
            revert::revert(fd.as_fd(), &state)
        }
        None => Ok(revert::RevertReport {
            undone: 0,
            recovery_point: None,
            reverted: false,
        }),
    }
}

/// The recovery point a destination is at, if any (`mover receive --status`).
pub fn recovery_point(root: &std::path::Path) -> Result<Option<state::RecoveryPoint>> {
    let fd = crate::beneath::open_root(root, "destination root")?;
    match State::find(fd.as_fd())? {
        Some(s) => s.recovery_point(),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sessions_reading_the_umask_at_once_all_read_the_real_one() {
        let want = super::umask_from_proc().expect("/proc/self/status shows the umask");
        let set_and_restore = rustix::process::umask(rustix::fs::Mode::empty());
        rustix::process::umask(set_and_restore);
        assert_eq!(want, set_and_restore.bits());
        let readers: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..2000)
                        .map(|_| super::process_umask())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for r in readers {
            let read = r.join().unwrap();
            assert!(read.iter().all(|&m| m == want), "want {want:o}");
        }
    }
}
