//! The machine as a control container split from its data container (`--roles control`) sees
//! it: mounts and reverts are done here as on a single process (`host::System`), receivers
//! run in the data container (`data_server::receivers`). Each receiver is one connection on
//! the data socket, carrying the target root's descriptor; tickets, delivered data-plane
//! sockets (passed with `SCM_RIGHTS`, their Hello still unread) and drills are calls of
//! their own that name it by the key the data container gave it.

use super::data_wire::{self, FromData, ReceiveJob, ToData, DATA_SOCKET};
use super::host::{Drills, Host, Receiving, System};
use crate::model::{PinnedDir, RelationshipId, ReplicaOptions};
use crate::readonly::Mode;
use crate::Result;
use mover::receiver::drill::{DrillReport, DrillRequest};
use mover::receiver::{ReceiveOptions, ScrubReport};
use mover::units::SessionId;
use mover::SessionSecret;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long starting a receiver waits for the data container's socket (a container the
/// supervisor is restarting is back within its first backoff, 0.5 s).
const SOCKET_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for a receiver to start: the data container first waits up to 5 s for one an
/// earlier control container left (`receivers::HANDOVER_WAIT`), then opens and locks the root.
/// Started under the receivers lock, so kept short.
const START_WAIT: Duration = Duration::from_secs(15);
/// Longest wait for a ticket or a delivered socket to be taken.
const CALL_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for a drill beyond the wait for the running session: a full copy of a large
/// target takes hours, and a hung data container must not hold the API forever.
const DRILL_CALL_WAIT: Duration = Duration::from_secs(24 * 3600);

/// `host::System`, with the receivers in the data container whose socket is in `data_dir`.
pub struct DataHost {
    socket: PathBuf,
}

impl DataHost {
    pub fn new(data_dir: &Path) -> DataHost {
        DataHost {
            socket: data_dir.join(DATA_SOCKET),
        }
    }
}

fn unexpected(what: &str, got: &FromData) -> crate::Error {
    crate::Error::from(mover::Error::Corrupt(format!(
        "the data container answered {what} with {}",
        got.name()
    )))
}

impl DataHost {
    /// Whether a data container process holds this data dir (its lock), socket or not.
    fn container_runs(&self) -> bool {
        let Some(dir) = self.socket.parent() else {
            return false;
        };
        let Ok(f) = std::fs::File::open(dir.join(super::data_server::LOCK_FILE)) else {
            return false;
        };
        // Shared and non-blocking: taken only if no container holds it exclusively; dropped
        // at once with the file.
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
    }
}

impl Host for DataHost {
    fn protect(
        &self,
        id: &RelationshipId,
        target: &PinnedDir,
        backing: &Path,
        replica: ReplicaOptions,
    ) -> Result<(Mode, PathBuf)> {
        System.protect(id, target, backing, replica)
    }

    fn shows(&self, id: &RelationshipId, view: &Path, target: &PinnedDir) -> bool {
        System.shows(id, view, target)
    }

    fn revert(&self, id: &RelationshipId, root: &Path) -> Result<Option<u64>> {
        System.revert(id, root)
    }

    fn release(&self, id: &RelationshipId, target: &Path, backing: &Path) -> Result<()> {
        System.release(id, target, backing)
    }

    fn release_backing(&self, id: &RelationshipId, backing: &Path) -> Result<()> {
        System.release_backing(id, backing)
    }

    fn start_receiver(
        &self,
        id: &RelationshipId,
        opts: ReceiveOptions,
    ) -> Result<Box<dyn Receiving>> {
        Ok(Box::new(Remote::start(&self.socket, id, &opts)?))
    }

    fn quiesce(&self, id: &RelationshipId, wait: Duration) -> Result<()> {
        let msg = ToData::Quiesce {
            id: id.to_string(),
            wait,
        };
        match data_wire::call(&self.socket, Some(wait + CALL_WAIT), None, &msg) {
            Ok(FromData::Quiet(r)) => r.map_err(|e| crate::Error::from(mover::Error::from(e))),
            Ok(other) => Err(unexpected("a quiesce", &other)),
            // No data container: no receiver runs in it.
            Err(e) if data_wire::not_running(&e) && !self.container_runs() => Ok(()),
            // Stopping, it removed its socket first while its receivers end their sessions.
            Err(e) if data_wire::not_running(&e) => Err(mover::Error::Busy(
                "the data container is stopping while a session of this relationship ends; \
                 try again in a few seconds"
                    .into(),
            )
            .into()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A receiver in the data container, and the thread reading its connection.
struct Remote {
    socket: PathBuf,
    key: u64,
    out: Mutex<UnixStream>,
    finished: Arc<AtomicBool>,
    scrub: Arc<Mutex<Option<ScrubReport>>>,
    /// None once joined.
    reader: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Remote {
    fn start(socket: &Path, id: &RelationshipId, opts: &ReceiveOptions) -> Result<Remote> {
        let root = std::fs::File::open(&opts.root).map_err(|e| crate::Error::Io {
            context: format!("opening the target root {}", opts.root.display()),
            source: e,
        })?;
        let conn = connect(socket)?;
        conn.set_read_timeout(Some(START_WAIT))
            .map_err(|e| data_wire::io("setting a timeout", e))?;
        data_wire::open(&conn, Some(root.as_fd()))?;
        let job = ReceiveJob {
            id: id.to_string(),
            insecure_plaintext: opts.insecure_plaintext,
            allow_setid: opts.policy.allow_setid,
            allow_devices: opts.policy.allow_devices,
            checkpoint_bytes: opts.checkpoint_bytes,
            scrub_every: opts.scrub_every,
            rdma: opts.rdma.is_some(),
        };
        data_wire::write_msg(&mut &conn, &ToData::Receive(job))?;
        let first = data_wire::read_msg::<FromData>(&mut &conn).map_err(|e| {
            if data_wire::timed_out(&e) {
                mover::Error::Busy(format!(
                    "the data container did not start the receiver within {START_WAIT:?}"
                ))
            } else {
                e
            }
        })?;
        let key = match first {
            Some(FromData::Receiving(r)) => r.map_err(mover::Error::from)?,
            Some(other) => return Err(unexpected("a receiver", &other)),
            None => {
                return Err(mover::Error::PeerLost(
                    "the data container closed a receiver's connection as it started".into(),
                )
                .into())
            }
        };
        conn.set_read_timeout(None)
            .map_err(|e| data_wire::io("setting a timeout", e))?;
        let read = conn.try_clone().map_err(|e| data_wire::io("cloning", e))?;
        let finished = Arc::new(AtomicBool::new(false));
        let scrub = Arc::new(Mutex::new(None));
        let (f, s, rid) = (finished.clone(), scrub.clone(), id.clone());
        let reader = std::thread::Builder::new()
            .name("mover-rx-remote".into())
            .spawn(move || read_receiver(read, &rid, &s, &f))
            .map_err(|e| data_wire::io("starting a receiver's reader thread", e))?;
        Ok(Remote {
            socket: socket.to_path_buf(),
            key,
            out: Mutex::new(conn),
            finished,
            scrub,
            reader: Mutex::new(Some(reader)),
        })
    }
}

/// The data container's socket, waiting (bounded) for a restarting container to bind it.
fn connect(socket: &Path) -> mover::Result<UnixStream> {
    let until = Instant::now() + SOCKET_WAIT;
    loop {
        match data_wire::connect(socket) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= until => return Err(e),
            Err(_) => std::thread::sleep(mover::GATE_POLL),
        }
    }
}

/// Keeps the receiver's last scrub; the receiver is finished when its connection ends. A
/// connection that says what this release cannot read is ended here, which stops the
/// receiver in the data container too (its session may still be ending: `quiesce` waits).
fn read_receiver(
    mut conn: UnixStream,
    id: &RelationshipId,
    scrub: &Mutex<Option<ScrubReport>>,
    finished: &AtomicBool,
) {
    loop {
        match data_wire::read_msg::<FromData>(&mut conn) {
            Ok(Some(FromData::Scrubbed(r))) => *super::lock(scrub) = Some(r),
            Ok(Some(FromData::Received(Err(e)))) => {
                tracing::error!(%id, "receiver in the data container stopped: {e:?}");
            }
            Ok(Some(FromData::Received(Ok(())))) => {}
            Ok(Some(other)) => {
                tracing::warn!(%id, "receiver connection: unexpected {}", other.name());
                let _ = conn.shutdown(std::net::Shutdown::Both);
                break;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(%id, "receiver connection: {e}");
                let _ = conn.shutdown(std::net::Shutdown::Both);
                break;
            }
        }
    }
    finished.store(true, Ordering::SeqCst);
}

impl Receiving for Remote {
    /// Only sockets cross to another process.
    fn deliver(&self, _: Box<dyn mover::Connection>) -> bool {
        false
    }

    /// `false` only when the socket surely did not reach the receiver: the caller then
    /// answers the sender on it, which must not happen while a receiver reads it.
    fn deliver_tcp(&self, conn: std::net::TcpStream) -> bool {
        let msg = ToData::Deliver { key: self.key };
        let asked = match data_wire::ask(&self.socket, Some(CALL_WAIT), Some(conn.as_fd()), &msg) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("handing a data-plane connection to the data container: {e}");
                return false;
            }
        };
        match data_wire::answer(asked) {
            Ok(FromData::Delivered(taken)) => taken,
            // It crossed; whether a receiver took it is unknown. Said nothing here, the
            // sender sees the connection end if nobody serves it.
            Ok(other) => {
                tracing::warn!("{}", unexpected("a delivered socket", &other));
                true
            }
            Err(e) => {
                tracing::warn!("a data-plane connection handed to the data container: {e}");
                true
            }
        }
    }

    fn issue(&self, secret: Option<SessionSecret>) -> Result<SessionId> {
        let msg = ToData::Ticket {
            key: self.key,
            secret: secret.map(|s| s.expose().to_vec()),
        };
        match data_wire::call(&self.socket, Some(CALL_WAIT), None, &msg)? {
            FromData::Ticket(r) => Ok(SessionId(r.map_err(mover::Error::from)?)),
            other => Err(unexpected("a ticket", &other)),
        }
    }

    fn stop(&self) {
        // A connection that cannot take it has ended, which stops the receiver too.
        let _ = data_wire::write_msg(&mut *super::lock(&self.out), &ToData::StopReceiver);
    }

    fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    fn join(&self) {
        if let Some(t) = super::lock(&self.reader).take() {
            let _ = t.join();
        }
    }

    fn scrub(&self) -> Option<ScrubReport> {
        super::lock(&self.scrub).clone()
    }

    fn drills(&self) -> Option<Arc<dyn Drills>> {
        Some(Arc::new(RemoteDrills {
            socket: self.socket.clone(),
            key: self.key,
        }))
    }
}

struct RemoteDrills {
    socket: PathBuf,
    key: u64,
}

impl Drills for RemoteDrills {
    fn make(&self, req: DrillRequest, wait: Duration) -> mover::Result<DrillReport> {
        let msg = ToData::Drill {
            key: self.key,
            req,
            wait,
        };
        match data_wire::call(&self.socket, Some(wait + DRILL_CALL_WAIT), None, &msg)? {
            FromData::Drilled(r) => r.map_err(mover::Error::from),
            other => Err(mover::Error::Corrupt(format!(
                "the data container answered a drill with {}",
                other.name()
            ))),
        }
    }
}
