//! The data container (`mover daemon --roles data`): the node's data plane in a process of its
//! own: the sending side here, the receivers of its target relationships in `receivers`. It holds no state: the control container decides every session (its
//! ticket, secret, walk and bandwidth) and hands it over `data_wire::DATA_SOCKET`; this
//! process runs it with `mover::sender` and reports counters and the outcome back. Killed, it
//! breaks its sessions as a killed peer does: the control container retries them with fresh
//! tickets once the supervisor has started it again, and the receiver resumes them.
//!
//! Invariant: a session here ends when its control connection does (control restarted or
//! killed): nothing sends for a job no control container runs.

use super::data_wire::{
    self, ControlState, Counters, FromData, RemoteError, SendJob, Ticker, ToData, DATA_SOCKET,
    PROGRESS_EVERY,
};
use crate::{Error, Result};
use mover::sender::shard::{ShardRef, Spread};

mod receivers;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Sessions, shares, receivers and calls one data container serves at once; more connections
/// are closed (their control side retries).
pub const MAX_SESSIONS: usize = 1024;
/// Relationships whose manifest the container keeps in memory between jobs; beyond it, jobs
/// read and write theirs on their path.
pub const MAX_MANIFESTS: usize = 65_536;
/// Longest wait for a new connection's opening byte and first message.
const OPENING_WAIT: Duration = Duration::from_secs(10);
/// How long running sessions get to stop at a chunk boundary after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the connection threads share.
#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    active: AtomicUsize,
    /// The running sessions' controls, to stop them on SIGTERM.
    running: Mutex<HashMap<u64, Arc<mover::Progress>>>,
    next: AtomicUsize,
    /// Manifests kept between jobs, by state directory.
    manifests: Mutex<HashMap<PathBuf, Arc<mover::sender::ManifestCache>>>,
    receivers: receivers::Receivers,
}

impl Shared {
    fn manifest(&self, state: &Path) -> Option<Arc<mover::sender::ManifestCache>> {
        let mut all = super::lock(&self.manifests);
        if let Some(c) = all.get(state) {
            return Some(c.clone());
        }
        if all.len() >= MAX_MANIFESTS {
            return None;
        }
        let c = Arc::new(mover::sender::ManifestCache::new());
        all.insert(state.to_path_buf(), c.clone());
        Some(c)
    }
}

/// Serves the data socket until `stop` resolves, then stops running sessions at a chunk
/// boundary (their control side retries them on the next container).
pub async fn serve(data_dir: &Path, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    let (_lock, listener) = bind(data_dir)?;
    let shared = Arc::new(Shared::default());
    let accepting = shared.clone();
    std::thread::Builder::new()
        .name("mover-data-accept".into())
        .spawn(move || accept_loop(listener, accepting))
        .map_err(|e| Error::Io {
            context: "starting the data container's accept thread".into(),
            source: e,
        })?;
    tracing::info!(socket = %data_dir.join(DATA_SOCKET).display(), "mover data container ready");
    crate::systemd::sd_notify("READY=1");
    stop.await;
    // No new session from here: control waits for the next container instead of spending
    // an attempt on this one (`data_client::wait_ready`).
    let _ = std::fs::remove_file(data_dir.join(DATA_SOCKET));
    shared.stopping.store(true, Ordering::SeqCst);
    for p in super::lock(&shared.running).values() {
        p.control.suspend();
    }
    shared.receivers.stop_all();
    let deadline = Instant::now() + STOP_GRACE;
    while shared.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(mover::GATE_POLL).await;
    }
    tracing::info!(
        left = shared.active.load(Ordering::SeqCst),
        "mover data container stopped"
    );
    Ok(())
}

/// The lock a data container holds on its data dir while it runs.
pub(super) const LOCK_FILE: &str = "data.lock";

/// Binds the socket in the data dir (made 0700 if this container starts first), replacing
/// the file a killed container left. A second data container for the same data dir fails
/// on the lock first, so it cannot take the socket from the one that runs.
fn bind(data_dir: &Path) -> Result<(std::fs::File, UnixListener)> {
    use std::os::unix::fs::DirBuilderExt;
    let path = data_dir.join(DATA_SOCKET);
    let io = |context: String| move |e| Error::Io { context, source: e };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(io(format!("making {}", data_dir.display())))?;
    let lock_path = data_dir.join(LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(format!("opening {}", lock_path.display())))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |e| {
            Error::Conflict(format!(
                "another data container runs for {} ({}: {e})",
                data_dir.display(),
                lock_path.display()
            ))
        },
    )?;
    super::remove_stale_socket(&path)?;
    let listener = UnixListener::bind(&path).map_err(io(format!("binding {}", path.display())))?;
    Ok((lock, listener))
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accepting on the data socket: {e}");
                std::thread::sleep(mover::GATE_POLL);
                continue;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            continue;
        }
        if shared.active.fetch_add(1, Ordering::SeqCst) >= MAX_SESSIONS {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("{MAX_SESSIONS} sessions run already; closing a new one");
            continue;
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("mover-data-session".into())
            .spawn(move || {
                if let Err(e) = connection(conn, &s) {
                    tracing::warn!("data socket: {e}");
                }
                s.active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("starting a data session thread: {e}");
        }
    }
}

fn connection(conn: UnixStream, shared: &Arc<Shared>) -> mover::Result<()> {
    let timeout = |t| {
        conn.set_read_timeout(t)
            .map_err(|e| data_wire::io("setting a timeout", e))
    };
    // A client that says nothing does not hold a session slot for long.
    timeout(Some(OPENING_WAIT))?;
    let passed = data_wire::accept(&conn)?;
    let first = data_wire::read_msg::<ToData>(&mut &conn)?;
    timeout(None)?;
    match (first, passed) {
        (Some(ToData::Health), None) => data_wire::write_msg(
            &mut &conn,
            &FromData::Health {
                version: mover::software_version().to_string(),
                roles: "data".into(),
            },
        ),
        (Some(ToData::Manifest { state, forget }), None) => {
            let kept = if forget {
                super::lock(&shared.manifests).remove(&state)
            } else {
                super::lock(&shared.manifests).get(&state).cloned()
            };
            if let Some(c) = kept {
                c.flush();
            }
            data_wire::write_msg(&mut &conn, &FromData::Manifest)
        }
        (Some(ToData::Send(job)), Some(fd)) => {
            Session::start(conn, shared, job.control)?.send(fd, *job)
        }
        (Some(ToData::Share(shard)), None) => {
            Session::start(conn, shared, ControlState::default())?.share(shard)
        }
        (Some(ToData::Receive(job)), Some(root)) => receivers::run(conn, shared, root, job),
        (Some(ToData::Ticket { key, secret }), None) => {
            data_wire::write_msg(&mut &conn, &receivers::ticket(shared, key, secret))
        }
        (Some(ToData::Deliver { key }), Some(socket)) => {
            data_wire::write_msg(&mut &conn, &receivers::deliver(shared, key, socket))
        }
        (Some(ToData::Drill { key, req, wait }), None) => {
            data_wire::write_msg(&mut &conn, &receivers::drill(shared, key, req, wait))
        }
        (Some(ToData::Quiesce { id, wait }), None) => {
            data_wire::write_msg(&mut &conn, &receivers::quiesce(shared, &id, wait))
        }
        (other, fd) => Err(mover::Error::Corrupt(format!(
            "the data socket opened with {} and {}",
            other.map_or("nothing", |m| m.name()),
            if fd.is_some() { "a descriptor" } else { "none" }
        ))),
    }
}

/// One session or share and the thread that reads its control connection.
struct Session {
    out: Arc<Mutex<UnixStream>>,
    progress: Arc<mover::Progress>,
    places: Arc<Waiting>,
    shared: Arc<Shared>,
    key: u64,
}

/// Shares asked of the control side and not yet answered, by place; None once the control
/// connection ended (no answer can come).
struct Waiting(Mutex<Option<HashMap<usize, Answer>>>);

/// Where the answer to one place's share goes.
type Answer = mpsc::Sender<Result<(), RemoteError>>;

impl Default for Waiting {
    fn default() -> Waiting {
        Waiting(Mutex::new(Some(HashMap::new())))
    }
}

impl Session {
    /// A session whose job's requests start as `initial` (what control sent with it).
    fn start(
        conn: UnixStream,
        shared: &Arc<Shared>,
        initial: ControlState,
    ) -> mover::Result<Session> {
        let read = conn.try_clone().map_err(|e| data_wire::io("cloning", e))?;
        let progress = Arc::new(mover::Progress::default());
        initial.apply(ControlState::default(), &progress.control);
        let places = Arc::new(Waiting::default());
        let (p, w) = (progress.clone(), places.clone());
        std::thread::Builder::new()
            .name("mover-data-control".into())
            .spawn(move || read_control(read, initial, &p, &w))
            .map_err(|e| mover::Error::Io {
                context: "starting a data session's control thread".into(),
                source: e,
            })?;
        let key = shared.next.fetch_add(1, Ordering::SeqCst) as u64;
        super::lock(&shared.running).insert(key, progress.clone());
        // Stopping began while this session opened: it stops at once too.
        if shared.stopping.load(Ordering::SeqCst) {
            progress.control.suspend();
        }
        Ok(Session {
            out: Arc::new(Mutex::new(conn)),
            progress,
            places,
            shared: shared.clone(),
            key,
        })
    }

    fn say(&self, msg: &FromData) -> mover::Result<()> {
        data_wire::write_msg(&mut *super::lock(&self.out), msg)
    }

    /// The outcome as the control side should read it: a session this container stopped
    /// because it is stopping is lost, not aborted, so it is retried. Other errors keep
    /// their kind (a source that changed still names its files).
    fn outcome<T>(&self, r: mover::Result<T>) -> Result<T, RemoteError> {
        r.map_err(|e| match e {
            mover::Error::Cancelled(m) if self.shared.stopping.load(Ordering::SeqCst) => {
                RemoteError::PeerLost(format!("the data container stopped the session: {m}"))
            }
            e => RemoteError::from(&e),
        })
    }

    fn send(self, source: OwnedFd, job: SendJob) -> mover::Result<()> {
        let policy = mover::transport::select::RdmaPolicy::new(job.transport, None);
        if job.fell_back {
            policy.failure_flag().store(true, Ordering::SeqCst);
        }
        let transport: Arc<dyn mover::Transport> =
            Arc::new(mover::transport::select::Negotiated(policy.clone()));
        let report = match self.options(&source, job) {
            Ok(opts) => {
                self.reporting(|| mover::sender::send_over(&opts, &self.progress, &transport))
            }
            Err(e) => Err(e),
        };
        drop(source);
        let outcome = self.outcome(report).map(Box::new);
        self.say(&FromData::Sent {
            outcome,
            fell_back: policy.fell_back(),
        })
    }

    /// The session's `SendOptions`, reading the source through `source`.
    fn options(&self, source: &OwnedFd, job: SendJob) -> mover::Result<mover::sender::SendOptions> {
        let src = PathBuf::from(format!("/proc/self/fd/{}", source.as_raw_fd())).join(&job.below);
        let spread = (job.places > 0).then(|| {
            Arc::new(Remote {
                places: job.places,
                source: job.places_source.clone(),
                out: self.out.clone(),
                waiting: self.places.clone(),
            }) as Arc<dyn Spread>
        });
        let secret = job.secret.map(data_wire::secret).transpose()?;
        let cache = match (&job.state, job.keep_manifest) {
            (Some(state), true) => self.shared.manifest(state),
            _ => None,
        };
        Ok(mover::sender::SendOptions {
            src,
            to: job.to,
            threads: job.threads,
            direct: job.direct,
            state: job.state,
            snapshot: job.snapshot,
            session: Some(mover::units::SessionId(job.session)),
            secret,
            id_map: job.id_map,
            pin: job.pin,
            changed: job.changed,
            cache,
            spread,
            write_places: job.write_places,
        })
    }

    fn share(self, shard: ShardRef) -> mover::Result<()> {
        let transport: Arc<dyn mover::Transport> = Arc::new(mover::transport::tcp::TcpTransport);
        let (ran, unreadable) = self
            .reporting(|| mover::sender::shard::run_assigned(&shard, &transport, &self.progress));
        let outcome = self.outcome(ran);
        self.say(&FromData::Shared {
            outcome,
            unreadable,
        })
    }

    /// Runs `f` while a thread reports the counters every `PROGRESS_EVERY`.
    fn reporting<T>(&self, f: impl FnOnce() -> T) -> T {
        let (out, p) = (self.out.clone(), self.progress.clone());
        // Without the thread the session still runs; only the last counters are reported.
        let ticker = Ticker::start("mover-data-progress", PROGRESS_EVERY, move || {
            let msg = FromData::Progress(Counters::of(&p));
            data_wire::write_msg(&mut *super::lock(&out), &msg).is_ok()
        });
        let r = f();
        if let Ok(t) = ticker {
            t.stop();
        }
        // The last counters before the outcome, so the job's totals are exact.
        let _ = self.say(&FromData::Progress(Counters::of(&self.progress)));
        r
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        super::lock(&self.shared.running).remove(&self.key);
        // The control thread ends when its connection does: shut it now.
        let _ = super::lock(&self.out).shutdown(std::net::Shutdown::Both);
    }
}

/// Applies the control side's requests as they come; a connection that ends (control gone)
/// cancels the session, and leaves no share waiting for an answer.
fn read_control(
    mut conn: UnixStream,
    mut state: ControlState,
    progress: &mover::Progress,
    waiting: &Waiting,
) {
    loop {
        match data_wire::read_msg::<ToData>(&mut conn) {
            Ok(Some(ToData::Control(now))) => {
                now.apply(state, &progress.control);
                state = now;
            }
            Ok(Some(ToData::Placed { place, outcome })) => {
                if let Some(tx) = super::lock(&waiting.0)
                    .as_mut()
                    .and_then(|w| w.remove(&place))
                {
                    let _ = tx.send(outcome);
                }
            }
            Ok(Some(other)) => {
                tracing::warn!("data session: unexpected {}; ending it", other.name());
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    progress.control.cancel();
    *super::lock(&waiting.0) = None;
}

/// The session's other places, run by the control side (which holds the cluster).
struct Remote {
    places: usize,
    source: Option<PathBuf>,
    out: Arc<Mutex<UnixStream>>,
    waiting: Arc<Waiting>,
}

impl Spread for Remote {
    fn places(&self) -> usize {
        self.places
    }

    fn source(&self) -> Option<PathBuf> {
        self.source.clone()
    }

    fn run(&self, place: usize, shard: ShardRef) -> mover::Result<()> {
        let (tx, rx) = mpsc::channel();
        match super::lock(&self.waiting.0).as_mut() {
            Some(w) => w.insert(place, tx),
            None => {
                return Err(mover::Error::PeerLost(
                    "the control connection ended before another node could run a share".into(),
                ))
            }
        };
        data_wire::write_msg(
            &mut *super::lock(&self.out),
            &FromData::Place { place, shard },
        )?;
        match rx.recv() {
            Ok(outcome) => outcome.map_err(mover::Error::from),
            Err(_) => Err(mover::Error::PeerLost(
                "the control container went away while another node ran a share".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_data_container_for_one_data_dir_is_refused_and_the_first_keeps_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (_lock, first) = bind(&data).unwrap();
        let e = bind(&data).unwrap_err().to_string();
        assert!(e.contains("another data container runs"), "{e}");
        // The first one still answers on its socket.
        let c = UnixStream::connect(data.join(DATA_SOCKET)).unwrap();
        let (s, _) = first.accept().unwrap();
        data_wire::open(&c, None).unwrap();
        assert!(data_wire::accept(&s).unwrap().is_none());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
