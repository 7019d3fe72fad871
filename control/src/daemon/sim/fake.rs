//! The parts of a node's world the simulation fakes: its clock (one simulated time, each node
//! reading it with its own skew), its machine (mounts, reverts and receivers, as a record of
//! effects with seeded failures) and data-plane connections (which carry nothing: a simulated
//! session only needs to reach the receiver that issued its ticket).

use super::rng::Rng;
use crate::clock::{Clock, SimClock};
use crate::daemon::host::{Host, Receiving};
use crate::model::{PinnedDir, RelationshipId, ReplicaOptions};
use crate::readonly::Mode;
use crate::{Error, Result};
use mover::receiver::ReceiveOptions;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A node's clocks: the world's simulated time, its wall clock off by a fixed skew (nodes'
/// clocks never agree exactly).
pub(super) struct NodeClock {
    pub(super) world: Arc<SimClock>,
    pub(super) skew_ns: i64,
}

impl Clock for NodeClock {
    fn now_ns(&self) -> i64 {
        self.world.now_ns().saturating_add(self.skew_ns)
    }

    fn instant(&self) -> Instant {
        self.world.instant()
    }
}

/// What was done to a target's machine, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    Protect,
    Revert,
    Release,
    ReleaseBacking,
    StartReceiver,
}

/// A receiver the fake started.
pub(super) struct Rcv {
    pub(super) node: usize,
    pub(super) id: RelationshipId,
    stop: Arc<AtomicBool>,
    /// Its node dropped it (stopped and removed, or the daemon went away).
    gone: bool,
}

impl Rcv {
    /// Whether it still serves sessions.
    pub(super) fn live(&self) -> bool {
        !self.gone && !self.stop.load(Ordering::SeqCst)
    }
}

/// How often the machine's operations fail, per call.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct HostFaults {
    pub(super) protect: f64,
    pub(super) revert: f64,
    pub(super) release: f64,
    pub(super) receiver: f64,
}

/// Both nodes' machines: what is mounted where and which receivers run. It outlives a
/// daemon's restart (mounts stay; a reboot loses them, see `reboot`).
pub(super) struct Machine {
    /// (node, relationship) whose target is read-only with a private writable view.
    pub(super) protected: BTreeSet<(usize, RelationshipId)>,
    pub(super) receivers: BTreeMap<u64, Rcv>,
    next_serial: u64,
    /// Effects since the checker last looked.
    pub(super) effects: Vec<(usize, RelationshipId, Effect)>,
    /// Receivers that took a connection since the simulation last looked.
    pub(super) delivered: Vec<u64>,
    pub(super) faults: HostFaults,
    /// No failures now (the quiet end of a run).
    pub(super) quiet: bool,
    pub(super) injected: u64,
    rng: Rng,
}

impl Machine {
    pub(super) fn new(rng: Rng, faults: HostFaults) -> Machine {
        Machine {
            protected: BTreeSet::new(),
            receivers: BTreeMap::new(),
            next_serial: 0,
            effects: Vec::new(),
            delivered: Vec::new(),
            faults,
            quiet: false,
            injected: 0,
            rng,
        }
    }

    /// A reboot of `node`: its mounts are gone.
    pub(super) fn reboot(&mut self, node: usize) {
        self.protected.retain(|(n, _)| *n != node);
    }

    fn fails(&mut self, p: f64, what: &str) -> Result<()> {
        if self.quiet || !self.rng.chance(p) {
            return Ok(());
        }
        self.injected += 1;
        Err(Error::Io {
            context: format!("simulated {what}"),
            source: std::io::Error::other("injected failure"),
        })
    }
}

pub(super) fn locked(m: &Mutex<Machine>) -> MutexGuard<'_, Machine> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One node's view of the machine.
pub(super) struct FakeHost {
    pub(super) node: usize,
    pub(super) machine: Arc<Mutex<Machine>>,
}

impl FakeHost {
    fn did(&self, m: &mut Machine, id: &RelationshipId, e: Effect) {
        m.effects.push((self.node, id.clone(), e));
    }
}

impl Host for FakeHost {
    fn protect(
        &self,
        id: &RelationshipId,
        _: &PinnedDir,
        backing: &Path,
        _: ReplicaOptions,
    ) -> Result<(Mode, PathBuf)> {
        let mut m = locked(&self.machine);
        let p = m.faults.protect;
        m.fails(p, "bind mount")?;
        m.protected.insert((self.node, id.clone()));
        self.did(&mut m, id, Effect::Protect);
        Ok((Mode::BindMount, backing.to_path_buf()))
    }

    fn shows(&self, id: &RelationshipId, _: &Path, _: &PinnedDir) -> bool {
        locked(&self.machine)
            .protected
            .contains(&(self.node, id.clone()))
    }

    fn revert(&self, id: &RelationshipId, _: &Path) -> Result<Option<u64>> {
        let mut m = locked(&self.machine);
        self.did(&mut m, id, Effect::Revert);
        let p = m.faults.revert;
        m.fails(p, "revert")?;
        Ok(None)
    }

    fn release(&self, id: &RelationshipId, _: &Path, _: &Path) -> Result<()> {
        let mut m = locked(&self.machine);
        self.did(&mut m, id, Effect::Release);
        let p = m.faults.release;
        m.fails(p, "unmount")?;
        m.protected.remove(&(self.node, id.clone()));
        Ok(())
    }

    fn release_backing(&self, id: &RelationshipId, _: &Path) -> Result<()> {
        let mut m = locked(&self.machine);
        self.did(&mut m, id, Effect::ReleaseBacking);
        let p = m.faults.release;
        m.fails(p, "unmount")?;
        m.protected.remove(&(self.node, id.clone()));
        Ok(())
    }

    fn start_receiver(
        &self,
        id: &RelationshipId,
        opts: ReceiveOptions,
    ) -> Result<Box<dyn Receiving>> {
        let mut m = locked(&self.machine);
        let p = m.faults.receiver;
        m.fails(p, "receiver start")?;
        let (Some(stop), Some(tickets)) = (opts.stop, opts.tickets) else {
            return Err(Error::Invalid(
                "a daemon's receiver has a stop flag and tickets".into(),
            ));
        };
        let serial = m.next_serial;
        m.next_serial += 1;
        m.receivers.insert(
            serial,
            Rcv {
                node: self.node,
                id: id.clone(),
                stop: stop.clone(),
                gone: false,
            },
        );
        self.did(&mut m, id, Effect::StartReceiver);
        Ok(Box::new(FakeReceiving {
            serial,
            stop,
            tickets,
            machine: self.machine.clone(),
        }))
    }
}

/// A receiver that serves nothing: it takes connections until stopped.
struct FakeReceiving {
    serial: u64,
    stop: Arc<AtomicBool>,
    tickets: Arc<mover::receiver::Tickets>,
    machine: Arc<Mutex<Machine>>,
}

impl Receiving for FakeReceiving {
    fn deliver(&self, _: Box<dyn mover::Connection>) -> bool {
        if self.stop.load(Ordering::SeqCst) {
            return false;
        }
        locked(&self.machine).delivered.push(self.serial);
        true
    }

    fn issue(&self, secret: Option<mover::SessionSecret>) -> Result<mover::units::SessionId> {
        Ok(self.tickets.issue_with(secret)?)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn is_finished(&self) -> bool {
        // A real receiver ends its running session first; here the session is cut instead
        // (the simulated sender notices at its next chunk).
        self.stop.load(Ordering::SeqCst)
    }

    fn join(&self) {}

    fn scrub(&self) -> Option<mover::receiver::ScrubReport> {
        None
    }

    fn drills(&self) -> Option<Arc<dyn crate::daemon::host::Drills>> {
        None
    }
}

impl Drop for FakeReceiving {
    fn drop(&mut self) {
        if let Some(r) = locked(&self.machine).receivers.get_mut(&self.serial) {
            r.gone = true;
        }
    }
}

/// A data-plane connection that carries nothing (the simulated session is modelled by the
/// simulation, not by frames).
pub(super) struct SimConn;

impl mover::Connection for SimConn {
    fn send_all(&mut self, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other(
            "simulated connection carries no bytes",
        ))
    }

    fn recv_exact(&mut self, _: &mut [u8]) -> std::io::Result<()> {
        Err(std::io::Error::other(
            "simulated connection carries no bytes",
        ))
    }

    fn uring_socket(&self) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
        Ok(None)
    }

    fn set_timeout(&self, _: Option<Duration>) -> std::io::Result<()> {
        Ok(())
    }

    fn shutdown(&self) {}

    fn peer_closed(&self) -> bool {
        false
    }

    fn peer(&self) -> String {
        "simulated peer".into()
    }
}
