//! What a target node does to its own machine besides keeping its store: the read-only
//! protection of target directories (bind mounts, `readonly`), reverting an interrupted job
//! (`mover::receiver::revert_root`) and running the data-plane receivers (a thread each, or in
//! the node's data container: `data_host::DataHost`).
//! Behind a trait so the deterministic simulation (`sim`) runs the real target logic
//! (authorize, ticket, release, restore) against a fake that records every effect, instead of
//! mounting and spawning threads. Production uses [`System`], or `data_host::DataHost` where
//! a data container of its own runs the receivers; nothing else implements it outside tests.

use crate::model::{PinnedDir, RelationshipId, ReplicaOptions};
use crate::readonly::{self, Mode};
use crate::{Error, Result};
use mover::receiver::drill::{DrillReport, DrillRequest};
use mover::receiver::{ReceiveOptions, Receiver, Tickets};
use mover::units::SessionId;
use mover::{Progress, SessionSecret};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The machine's side of a target relationship `id`. Every method names the relationship, so
/// a fake can tell whose protection an effect touches.
pub trait Host: Send + Sync {
    /// `readonly::protect`: `target` read-only for everyone, writable through `backing`.
    fn protect(
        &self,
        id: &RelationshipId,
        target: &PinnedDir,
        backing: &Path,
        replica: ReplicaOptions,
    ) -> Result<(Mode, PathBuf)>;
    /// `pinned::shows`: whether `view` shows the pinned directory.
    fn shows(&self, id: &RelationshipId, view: &Path, target: &PinnedDir) -> bool;
    /// Reverts an interrupted job under `root` to its last recovery point: how many journal
    /// records were undone, `None` if there was no job to revert.
    fn revert(&self, id: &RelationshipId, root: &Path) -> Result<Option<u64>>;
    /// `readonly::release`: the target writable again, the private view gone.
    fn release(&self, id: &RelationshipId, target: &Path, backing: &Path) -> Result<()>;
    /// `readonly::release_backing`: the private view alone.
    fn release_backing(&self, id: &RelationshipId, backing: &Path) -> Result<()>;
    /// Starts a receiver for `opts` (tickets and stop flag included), serving connections
    /// handed to it with [`Receiving::deliver`].
    fn start_receiver(
        &self,
        id: &RelationshipId,
        opts: ReceiveOptions,
    ) -> Result<Box<dyn Receiving>>;
    /// Waits (at most `wait`) until no receiver of `id` runs, whoever started it: receivers
    /// in another process can outlive the control process that started them. In-process
    /// receivers end with their process, so there is nothing to wait for.
    fn quiesce(&self, _id: &RelationshipId, _wait: Duration) -> Result<()> {
        Ok(())
    }
}

/// A running receiver.
pub trait Receiving: Send + Sync {
    /// Hands it a data-plane connection routed to it; `false` if it takes no more.
    fn deliver(&self, conn: Box<dyn mover::Connection>) -> bool;
    /// `deliver` for a TCP connection the peer port accepted.
    fn deliver_tcp(&self, conn: std::net::TcpStream) -> bool {
        match mover::transport::tcp::TcpConn::new(conn) {
            Ok(c) => self.deliver(Box::new(c)),
            Err(_) => false,
        }
    }
    /// A one-time session for it: sealed with `secret` (the id returned is its handle), or
    /// in clear with a random id.
    fn issue(&self, secret: Option<SessionSecret>) -> Result<SessionId>;
    /// `issue`, for a session whose workers also write at `places` (other write places on
    /// the shared target, `mover::receiver::share`). A receiver that cannot run places
    /// refuses any.
    fn issue_spread(
        &self,
        secret: Option<SessionSecret>,
        places: Vec<std::net::SocketAddr>,
    ) -> Result<SessionId> {
        if places.is_empty() {
            return self.issue(secret);
        }
        Err(Error::Invalid(
            "this receiver runs in a data container: it takes no write places".into(),
        ))
    }
    /// Take no new session; stop once the running one ended.
    fn stop(&self);
    /// Whether it has stopped serving (after `stop`, or on an error).
    fn is_finished(&self) -> bool;
    /// Waits for it to end (called once it has finished, once).
    fn join(&self);
    /// Its last scrub (or full verification) of the target; None: none since it started.
    fn scrub(&self) -> Option<mover::receiver::ScrubReport>;
    /// Where to ask it for DR drills (None: it makes none).
    fn drills(&self) -> Option<Arc<dyn Drills>>;
}

/// Where DR drills (and kept snapshots) are asked for.
pub trait Drills: Send + Sync {
    /// The drill, made between two sessions, waiting at most `wait` for the running one.
    fn make(&self, req: DrillRequest, wait: Duration) -> mover::Result<DrillReport>;
}

impl Drills for mover::receiver::DrillHandle {
    fn make(&self, req: DrillRequest, wait: Duration) -> mover::Result<DrillReport> {
        mover::receiver::DrillHandle::make(self, req, wait)
    }
}

/// The real machine: mounts and receiver threads.
#[derive(Debug, Default, Clone, Copy)]
pub struct System;

impl Host for System {
    fn protect(
        &self,
        _: &RelationshipId,
        target: &PinnedDir,
        backing: &Path,
        replica: ReplicaOptions,
    ) -> Result<(Mode, PathBuf)> {
        readonly::protect(target, backing, replica)
    }

    fn shows(&self, _: &RelationshipId, view: &Path, target: &PinnedDir) -> bool {
        crate::pinned::shows(view, target)
    }

    fn revert(&self, _: &RelationshipId, root: &Path) -> Result<Option<u64>> {
        let rep = mover::receiver::revert_root(root)?;
        Ok(rep.reverted.then_some(rep.undone))
    }

    fn release(&self, _: &RelationshipId, target: &Path, backing: &Path) -> Result<()> {
        readonly::release(target, backing)
    }

    fn release_backing(&self, _: &RelationshipId, backing: &Path) -> Result<()> {
        readonly::release_backing(backing)
    }

    fn start_receiver(
        &self,
        id: &RelationshipId,
        opts: ReceiveOptions,
    ) -> Result<Box<dyn Receiving>> {
        let (inbox, incoming) = std::sync::mpsc::channel();
        let (Some(tickets), Some(stop)) = (opts.tickets.clone(), opts.stop.clone()) else {
            return Err(Error::Invalid(
                "a daemon's receiver has tickets and a stop flag".into(),
            ));
        };
        let rx = Receiver::from_inbox(incoming, opts, Arc::new(Progress::default()))?;
        let scrub = rx.scrub_status();
        let drills = rx.drill_handle();
        let id = id.clone();
        let thread = std::thread::Builder::new()
            .name("mover-receiver".into())
            .spawn(move || {
                let served = rx.serve(|rep| tracing::info!(%id, ok = rep.ok, error = ?rep.error, "receiver session ended"));
                if let Err(e) = served {
                    tracing::error!(%id, "receiver stopped: {e}");
                }
            })
            .map_err(|e| Error::Io {
                context: "spawning the receiver thread".into(),
                source: e,
            })?;
        let thread = std::sync::Mutex::new(Some(thread));
        Ok(Box::new(Threaded {
            inbox,
            thread,
            tickets,
            stop,
            scrub,
            drills,
        }))
    }
}

/// A receiver on its own thread, fed through a channel.
struct Threaded {
    inbox: std::sync::mpsc::Sender<Box<dyn mover::Connection>>,
    /// None once joined.
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    tickets: Arc<Tickets>,
    stop: Arc<AtomicBool>,
    scrub: Arc<mover::receiver::ScrubStatus>,
    drills: mover::receiver::DrillHandle,
}

impl Receiving for Threaded {
    fn deliver(&self, conn: Box<dyn mover::Connection>) -> bool {
        self.inbox.send(conn).is_ok()
    }

    fn issue(&self, secret: Option<SessionSecret>) -> Result<SessionId> {
        Ok(self.tickets.issue_with(secret)?)
    }

    fn issue_spread(
        &self,
        secret: Option<SessionSecret>,
        places: Vec<std::net::SocketAddr>,
    ) -> Result<SessionId> {
        Ok(self.tickets.issue_spread(secret, places)?)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn is_finished(&self) -> bool {
        super::lock(&self.thread)
            .as_ref()
            .is_none_or(|t| t.is_finished())
    }

    fn join(&self) {
        // A receiver that panicked has nothing more to give back; it is gone either way.
        if let Some(t) = super::lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    fn scrub(&self) -> Option<mover::receiver::ScrubReport> {
        self.scrub.last()
    }

    fn drills(&self) -> Option<Arc<dyn Drills>> {
        Some(Arc::new(self.drills.clone()))
    }
}
