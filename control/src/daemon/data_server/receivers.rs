//! The target side of the data container: the receiver of each target relationship the
//! control container asks for (`ToData::Receive`), fed with the data-plane sockets the peer
//! port accepted (`ToData::Deliver`), with the tickets control issued (`ToData::Ticket`).
//! Control keeps the routing (session id to relationship) and the authorization; this
//! process keeps only what the receiver itself needs.
//!
//! Invariant: at most one receiver per relationship runs here. A receiver whose control
//! connection ended (control killed or restarted) takes no new session and ends with its
//! running one, which is not cut: the source's session goes on. A new control container's
//! receiver for the same relationship waits for it (`HANDOVER_WAIT`) or is refused as busy,
//! and a delete first waits until none runs (`ToData::Quiesce`), so nothing writes into a
//! target being made writable.

use super::data_wire::{self, FromData, ReceiveJob, RemoteError, Ticker};
use super::Shared;
use mover::receiver::{ReceiveOptions, Receiver, Tickets};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a new receiver waits for the previous one of its relationship (left by a control
/// container that went away) to end its running session before it is refused as busy.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);
/// Receivers one data container runs at once: each holds one of its `MAX_SESSIONS`
/// connections for as long as it runs, and half of them stay for sessions and calls.
pub(super) const MAX_RECEIVERS: usize = super::MAX_SESSIONS / 2;
/// How often a receiver's last scrub is looked at, to report a new one.
const SCRUB_REPORT_EVERY: Duration = Duration::from_secs(1);

/// The receivers running here, by the key their control connection was given, and the
/// relationships whose receiver is being started.
#[derive(Default)]
pub(super) struct Receivers(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    running: HashMap<u64, Arc<Entry>>,
    starting: HashSet<String>,
}

pub(super) struct Entry {
    id: String,
    inbox: mpsc::Sender<Box<dyn mover::Connection>>,
    tickets: Arc<Tickets>,
    stop: Arc<AtomicBool>,
    drills: mover::receiver::DrillHandle,
}

impl Receivers {
    fn get(&self, key: u64) -> Option<Arc<Entry>> {
        super::super::lock(&self.0).running.get(&key).cloned()
    }

    /// Waits up to `wait` until no receiver of `id` runs or starts (stopping those that run);
    /// `claim`: then marks `id` as starting, in the same step, so no other can start and no
    /// quiesce can pass until `started` or `unclaim` (refused when `MAX_RECEIVERS` run).
    fn quiet(&self, id: &str, wait: Duration, claim: bool) -> Result<bool, RemoteError> {
        let until = Instant::now() + wait;
        loop {
            {
                let mut all = super::super::lock(&self.0);
                let mut busy = all.starting.contains(id);
                for e in all.running.values().filter(|e| e.id == id) {
                    e.stop.store(true, Ordering::SeqCst);
                    busy = true;
                }
                if !busy {
                    if claim {
                        if all.running.len() + all.starting.len() >= MAX_RECEIVERS {
                            return Err(RemoteError::Busy(format!(
                                "this node's data container runs {MAX_RECEIVERS} receivers \
                                 already"
                            )));
                        }
                        all.starting.insert(id.to_string());
                    }
                    return Ok(true);
                }
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            std::thread::sleep(mover::GATE_POLL);
        }
    }

    /// The claimed relationship's receiver runs as `key`.
    fn started(&self, key: u64, e: Arc<Entry>) {
        let mut all = super::super::lock(&self.0);
        all.starting.remove(&e.id);
        all.running.insert(key, e);
    }

    fn unclaim(&self, id: &str) {
        super::super::lock(&self.0).starting.remove(id);
    }

    fn remove(&self, key: u64) {
        super::super::lock(&self.0).running.remove(&key);
    }

    /// On SIGTERM: every receiver ends with its running session.
    pub(super) fn stop_all(&self) {
        for e in super::super::lock(&self.0).running.values() {
            e.stop.store(true, Ordering::SeqCst);
        }
    }
}

fn busy(id: &str) -> RemoteError {
    RemoteError::Busy(format!(
        "a session of relationship {id} is still running in the data container, under a \
         control container that went away; the next attempt starts when it ends"
    ))
}

/// Runs one receiver for as long as its control connection `conn` asks, writing into the
/// directory `root`.
pub(super) fn run(
    conn: UnixStream,
    shared: &Arc<Shared>,
    root: OwnedFd,
    job: ReceiveJob,
) -> mover::Result<()> {
    let out = Arc::new(Mutex::new(conn));
    let say = |msg: &FromData| data_wire::write_msg(&mut *super::super::lock(&out), msg);
    match shared.receivers.quiet(&job.id, HANDOVER_WAIT, true) {
        Ok(true) => {}
        Ok(false) => return say(&FromData::Receiving(Err(busy(&job.id)))),
        Err(e) => return say(&FromData::Receiving(Err(e))),
    }
    let started = start(shared, root.as_raw_fd(), &job);
    let (rx, key, stop) = match started {
        Ok(s) => s,
        Err(e) => {
            shared.receivers.unclaim(&job.id);
            return say(&FromData::Receiving(Err(RemoteError::from(&e))));
        }
    };
    if shared.stopping.load(Ordering::SeqCst) {
        stop.store(true, Ordering::SeqCst);
    }
    let served = say(&FromData::Receiving(Ok(key))).and_then(|()| {
        let read = super::super::lock(&out)
            .try_clone()
            .map_err(|e| data_wire::io("cloning", e))?;
        let s = stop.clone();
        std::thread::Builder::new()
            .name("mover-data-rxctl".into())
            .spawn(move || read_control(read, &s))
            .map_err(|e| data_wire::io("starting a receiver's control thread", e))?;
        let (scrub, o) = (rx.scrub_status(), out.clone());
        let mut said = None;
        // Without the thread the receiver still runs; only its scrubs go unreported.
        let ticker = Ticker::start("mover-data-scrub", SCRUB_REPORT_EVERY, move || {
            let last = scrub.last();
            if last == said {
                return true;
            }
            said.clone_from(&last);
            last.is_none_or(|r| {
                data_wire::write_msg(&mut *super::super::lock(&o), &FromData::Scrubbed(r)).is_ok()
            })
        });
        let id = job.id.clone();
        let served = rx.serve(|rep| {
            tracing::info!(%id, ok = rep.ok, error = ?rep.error, "receiver session ended");
        });
        if let Ok(t) = ticker {
            t.stop();
        }
        Ok(served)
    });
    shared.receivers.remove(key);
    drop(root);
    let outcome = match served {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            tracing::error!(id = %job.id, "receiver stopped: {e}");
            Err(RemoteError::from(&e))
        }
        Err(e) => Err(RemoteError::from(&e)),
    };
    let said = say(&FromData::Received(outcome));
    // The control thread ends when its connection does.
    let _ = super::super::lock(&out).shutdown(std::net::Shutdown::Both);
    said
}

/// Builds the claimed relationship's receiver over the root `root` and registers it: the
/// receiver, its key and its stop flag.
fn start(
    shared: &Shared,
    root: std::os::fd::RawFd,
    job: &ReceiveJob,
) -> mover::Result<(Receiver, u64, Arc<AtomicBool>)> {
    let tickets = Arc::new(Tickets::default());
    let stop = Arc::new(AtomicBool::new(false));
    let opts = ReceiveOptions {
        // The control side's name for the directory means nothing here; its descriptor does.
        root: PathBuf::from(format!("/proc/self/fd/{root}")),
        once: false,
        tickets: Some(tickets.clone()),
        stop: Some(stop.clone()),
        insecure_plaintext: job.insecure_plaintext,
        policy: mover::receiver::policy::ReplicaPolicy {
            allow_setid: job.allow_setid,
            allow_devices: job.allow_devices,
        },
        checkpoint_bytes: job.checkpoint_bytes,
        scrub_every: job.scrub_every,
        rdma: job.rdma.then(|| {
            mover::transport::select::RdmaPolicy::new(mover::transport::select::Choice::Auto, None)
        }),
        ..Default::default()
    };
    let (inbox, incoming) = mpsc::channel();
    let rx = Receiver::from_inbox(incoming, opts, Arc::new(mover::Progress::default()))?;
    // Random, not counted: a key a control container kept from an earlier data container
    // must name no receiver of this one.
    let key = mover::units::SessionId::random()
        .map_err(|e| data_wire::io("a random receiver key", e))?
        .0 as u64;
    let entry = Arc::new(Entry {
        id: job.id.clone(),
        inbox,
        tickets,
        stop: stop.clone(),
        drills: rx.drill_handle(),
    });
    shared.receivers.started(key, entry);
    Ok((rx, key, stop))
}

/// A receiver stops when control asks, or when control's connection ends.
fn read_control(mut conn: UnixStream, stop: &AtomicBool) {
    loop {
        match data_wire::read_msg::<super::ToData>(&mut conn) {
            Ok(Some(super::ToData::StopReceiver)) => stop.store(true, Ordering::SeqCst),
            Ok(Some(other)) => {
                tracing::warn!("receiver control: unexpected {}; stopping it", other.name());
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    stop.store(true, Ordering::SeqCst);
}

fn unknown(key: u64) -> RemoteError {
    RemoteError::Busy(format!(
        "receiver {key} does not run in the data container (it stopped or the container restarted)"
    ))
}

pub(super) fn ticket(shared: &Shared, key: u64, secret: Option<Vec<u8>>) -> FromData {
    let Some(e) = shared.receivers.get(key) else {
        return FromData::Ticket(Err(unknown(key)));
    };
    let id = secret
        .map(data_wire::secret)
        .transpose()
        .and_then(|s| e.tickets.issue_with(s));
    FromData::Ticket(id.map(|s| s.0).map_err(|e| RemoteError::from(&e)))
}

pub(super) fn deliver(shared: &Shared, key: u64, socket: OwnedFd) -> FromData {
    let Some(e) = shared.receivers.get(key) else {
        return FromData::Delivered(false);
    };
    let conn = match mover::transport::tcp::TcpConn::new(std::net::TcpStream::from(socket)) {
        Ok(c) => c,
        Err(err) => {
            tracing::warn!("a delivered data-plane socket: {err}");
            return FromData::Delivered(false);
        }
    };
    FromData::Delivered(e.inbox.send(Box::new(conn)).is_ok())
}

pub(super) fn drill(
    shared: &Shared,
    key: u64,
    req: mover::receiver::drill::DrillRequest,
    wait: Duration,
) -> FromData {
    let Some(e) = shared.receivers.get(key) else {
        return FromData::Drilled(Err(unknown(key)));
    };
    FromData::Drilled(e.drills.make(req, wait).map_err(|e| RemoteError::from(&e)))
}

pub(super) fn quiesce(shared: &Shared, id: &str, wait: Duration) -> FromData {
    FromData::Quiet(
        if matches!(shared.receivers.quiet(id, wait, false), Ok(true)) {
            Ok(())
        } else {
            Err(RemoteError::Busy(format!(
                "a job of relationship {id} is still writing in the data container; try again \
             when the source has stopped it"
            )))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> ReceiveJob {
        ReceiveJob {
            id: id.into(),
            insecure_plaintext: false,
            allow_setid: false,
            allow_devices: false,
            checkpoint_bytes: None,
            scrub_every: None,
            rdma: false,
        }
    }

    /// Starts a receiver of relationship `id` over a socket pair: its control end, its key and
    /// the thread serving it.
    fn start(
        shared: &Arc<Shared>,
        root: &std::path::Path,
        id: &str,
    ) -> (UnixStream, u64, std::thread::JoinHandle<mover::Result<()>>) {
        let (ctl, srv) = UnixStream::pair().unwrap();
        let fd = OwnedFd::from(std::fs::File::open(root).unwrap());
        let (s, j) = (shared.clone(), job(id));
        let served = std::thread::spawn(move || run(srv, &s, fd, j));
        match data_wire::read_msg::<FromData>(&mut &ctl).unwrap() {
            Some(FromData::Receiving(Ok(key))) => (ctl, key, served),
            other => panic!("{other:?}"),
        }
    }

    fn received(ctl: &UnixStream) {
        let mut ctl = ctl;
        match data_wire::read_msg::<FromData>(&mut ctl).unwrap() {
            Some(FromData::Received(Ok(()))) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_new_receiver_of_a_relationship_ends_the_one_left_running_and_quiesce_leaves_none() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("target");
        std::fs::create_dir(&root).unwrap();
        let shared = Arc::new(Shared::default());
        let (first, key, served) = start(&shared, &root, "r1");
        assert!(matches!(
            ticket(&shared, key, Some(vec![7; mover::wire::seal::SECRET_LEN])),
            FromData::Ticket(Ok(_))
        ));
        assert!(matches!(
            ticket(&shared, key, Some(vec![7; 3])),
            FromData::Ticket(Err(RemoteError::Corrupt(_)))
        ));
        // Another relationship's receiver runs beside it.
        let other = root.join("other");
        std::fs::create_dir(&other).unwrap();
        let (beside, key_beside, _beside) = start(&shared, &other, "r2");

        // A control container that restarted starts the relationship's receiver again: the
        // one the old control left (idle here) ends, and its key names nothing any more.
        let (second, key2, served2) = start(&shared, &root, "r1");
        assert_ne!(key, key2);
        received(&first);
        served.join().unwrap().unwrap();
        assert!(matches!(
            ticket(&shared, key, None),
            FromData::Ticket(Err(RemoteError::Busy(_)))
        ));
        let (a, _) = UnixStream::pair().unwrap();
        assert!(matches!(
            deliver(&shared, key, OwnedFd::from(a)),
            FromData::Delivered(false)
        ));

        // Before its target is made writable: none of the relationship's receivers runs.
        assert!(matches!(
            quiesce(&shared, "r1", Duration::from_secs(10)),
            FromData::Quiet(Ok(()))
        ));
        received(&second);
        served2.join().unwrap().unwrap();
        assert!(matches!(
            ticket(&shared, key_beside, None),
            FromData::Ticket(Ok(_))
        ));
        drop(beside);
    }
}
