//! Target side: authorization (empty-directory check, read-only protection), the data-plane
//! receiver of each authorized relationship (started on the first ticket, accepting only the
//! session ids it issued), and deletion (revert an interrupted job, make the directory
//! writable again, keep the data).

use super::{lock, paths, Node};
use crate::api_types::Authorize;
use crate::events::EventKind;
use crate::model::{Attempt, Relationship, RelationshipId, Role};
use crate::pinned::OpenDir;
use crate::readonly;
use crate::store::Fenced;
use crate::{Error, Result};
use mover::receiver::{ReceiveOptions, Tickets};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a delete waits for a running session to end (the source stops its job when it
/// sees the relationship gone, within a few seconds) before giving up with an error.
pub const STOP_WAIT: Duration = Duration::from_secs(60);

pub struct Rx {
    /// The receiver, fed the data-plane connections the peer port routes to this relationship.
    /// Shared so a delivery (a call on the data socket, for a split node) runs outside the
    /// receivers lock.
    receiving: Arc<dyn super::host::Receiving>,
    /// The checked target directory, open while the receiver lives (an unprotected target is
    /// written through its descriptor's path).
    _root: OpenDir,
    /// Started with this node's write places (`writes`).
    writes: bool,
}

/// At start: re-establish the read-only protection of every authorized target (mounts do not
/// survive a reboot; after a crash they are still there and this is a no-op), after checking
/// that each target path still leads to the directory that was authorized.
/// One relationship that cannot be protected (a missing volume, say) is logged and left for
/// the operator; it does not keep the daemon, and so the API to delete it, from starting.
pub fn restore(node: &Node) -> Result<()> {
    // Listed first: the store lock must not be held across `release`, which writes.
    let listed = node.store().list_readable(Some(Role::Target))?;
    for u in listed.unreadable {
        // Its directory's protection is left as it is: a stale mount stays read-only.
        tracing::error!("{}; its target is not checked or protected again", u.error);
    }
    for r in listed.rows {
        if r.ended && r.read_only.is_some() {
            // Stopped while making it writable: finish that (revert, unmount) now.
            if let Err(e) = release(node, &r.id) {
                tracing::error!(id = %r.id, target = %r.spec.target_path, "cannot finish making the target writable: {e}");
            }
            continue;
        }
        if r.authorized && !r.ended && r.read_only == Some(readonly::Mode::BindMount) {
            if let Err(e) = writable_root(node, &r) {
                tracing::error!(id = %r.id, target = %r.spec.target_path, "cannot protect the target directory; its jobs are refused until it can be: {e}");
            }
        }
    }
    Ok(())
}

/// The directory the receiver must write through, checked now: the target path must still
/// lead to the authorized directory (else nothing is mounted or written there), and a
/// protected target's private view must really be mounted and show it (else the data would
/// land in the data dir, or elsewhere).
pub(crate) fn writable_root(node: &Node, r: &Relationship) -> Result<(PathBuf, OpenDir)> {
    let dir = paths::target_dir(node, r)?;
    match r.read_only {
        Some(readonly::Mode::BindMount) => {
            let (mode, via) =
                node.host
                    .protect(&r.id, dir.pin(), &node.mount_dir(&r.id), r.replica)?;
            if mode != readonly::Mode::BindMount {
                return Err(Error::Conflict(format!(
                    "target {} was protected by a bind mount that can no longer be made; delete and recreate the relationship",
                    r.spec.target_path
                )));
            }
            if !node.host.shows(&r.id, &via, dir.pin()) {
                return Err(Error::Conflict(format!(
                    "the private view {} does not show target {}",
                    via.display(),
                    dir.pin().path
                )));
            }
            Ok((via, dir))
        }
        _ => Ok((dir.proc_path(), dir)),
    }
}

/// `writable_root`, open: the target directory as this daemon writes it.
pub(crate) fn writable_root_fd(node: &Node, r: &Relationship) -> Result<std::os::fd::OwnedFd> {
    let (via, _dir) = writable_root(node, r)?;
    Ok(mover::beneath::open_root(
        &via,
        "the target's writable view",
    )?)
}

/// A target relationship is deleted on this node (or becomes a source): the policy snapshots
/// it kept stay as its data, made writable again as the target directory itself becomes, and
/// are forgotten. (A source releases its own: `snapshots::forget`.)
pub(crate) fn forget_snapshots(node: &Node, id: &RelationshipId) {
    node.forget_snapshots(id, Role::Target, |r, s| {
        let root = writable_root_fd(node, r)?;
        Ok(mover::keep::unlock(root.as_fd(), &s.name())?)
    });
}

/// The operator accepts a proposed relationship, with what it accepts for the replica.
pub fn authorize(node: &Node, id: &RelationshipId, a: &Authorize) -> Result<Relationship> {
    // One authorization at a time: the overlap check and the protection it guards are one step.
    let _one = lock(&node.authorizing);
    let r = node.get(id, Role::Target)?;
    if r.ended {
        return Err(Error::Conflict(format!("relationship {id} has ended")));
    }
    if r.authorized {
        return Err(Error::Conflict(format!(
            "relationship {id} is already authorized"
        )));
    }
    let dir = crate::pinned::pin(Path::new(&r.spec.target_path), "target directory")?;
    paths::check_target(node, &r, dir.path())?;
    if r.spec.mode.keeps_snapshots() {
        if let Some(why) = mover::keep::unsupported(dir.path()) {
            return Err(Error::Invalid(format!(
                "mode {} is refused on this target: {why}",
                r.spec.mode.name()
            )));
        }
    }
    let mut entries = std::fs::read_dir(dir.proc_path())
        .map_err(|e| Error::Invalid(format!("target directory {}: {e}", dir.pin().path)))?;
    if !a.allow_non_empty_target && entries.next().is_some() {
        return Err(Error::Conflict(format!(
            "target directory {} is not empty; replication would replace its contents (pass allow_non_empty_target to accept that)",
            dir.pin().path
        )));
    }
    let replica = a.replica();
    let (mode, _) = node
        .host
        .protect(id, dir.pin(), &node.mount_dir(id), replica)?;
    let pin = dir.pin().clone();
    let r = node.modify(id, Role::Target, |x| {
        x.authorized = true;
        x.read_only = Some(mode);
        x.pinned = Some(pin);
        x.path_error = None;
        x.replica = replica;
    })?;
    // "Disconnected" means not heard from the source for DISCONNECTED_AFTER since it became
    // due to talk to us: an authorization made long after the proposal (or the daemon's start)
    // is not a silent source, and it polls again within seconds.
    lock(&node.last_contact).insert(id.clone(), node.clock.instant());
    node.event(
        EventKind::Authorized,
        Some((id, Role::Target)),
        format!(
            "authorized; {} is read-only ({mode}) and receives the source's jobs",
            r.spec.target_path,
            mode = mode.name()
        ),
    );
    Ok(r)
}

/// A one-time session for the relationship's receiver, starting the receiver if needed:
/// sealed with `secret` (the id returned is its handle), or in clear with a random id.
///
/// `term` is the owner term its source node holds the relationship at (0 outside a source
/// cluster): one below the highest seen is refused, and a higher one voids the sessions
/// granted before, so a replaced owner's job, still under way, never commits after its
/// successor's and moves the recovery point back.
pub fn ticket(
    node: &Node,
    r: &Relationship,
    secret: Option<mover::SessionSecret>,
    term: u64,
    write_places: bool,
) -> Result<(u16, u128, Vec<super::writes::Place>)> {
    // Checked under the receivers lock, so a delete that stopped the receiver cannot race a
    // ticket that starts a new one. Read again here: `r` was read when the request arrived,
    // and a release (which stops the receiver under this lock) may have finished since.
    let mut rxs = lock(&node.receivers);
    // Bound first: the store's guard must not live on into the arms (which lock routes).
    let fenced = node.store().fence(&r.id, r.epoch, term)?;
    match fenced {
        Fenced::Stale(seen) => {
            return Err(Error::Conflict(format!(
                "relationship {id}: the source node asking holds it at term {term}, but another \
                 node of the source cluster has taken it over since (term {seen}); this node's \
                 job of it stops. If the source cluster's etcd was rebuilt or restored from a \
                 backup (its terms went back), run `mover relationship reconnect {id}` on the \
                 source",
                id = r.id
            )))
        }
        // Sessions granted to the replaced owner: one not yet begun never begins, nor does
        // any worker of one under way that has not joined yet (that session fails, and
        // commits nothing). One whose workers all joined goes on: the receiver takes one
        // session at a time, so it ends, and commits, before the new owner's begins. Voided
        // before anything below can fail: the term is stored already.
        Fenced::Raised => lock(&node.routes).retain(|_, (id, _)| *id != r.id),
        Fenced::Current => {}
    }
    let rx = running_receiver(node, &mut rxs, &r.id)?;
    // Only to a source that connects its workers where the answer says, and only when the
    // receiver started with this node's write places (one process, `--spread-writes`).
    let places = if write_places && rx.writes {
        super::writes::places_for(node, &r.id)
    } else {
        Vec::new()
    };
    let t = rx
        .receiving
        .issue_spread(secret, places.iter().map(|(_, a)| *a).collect())?;
    let mut routes = lock(&node.routes);
    // A relationship's receiver holds at most MAX_TICKETS tickets; routes of older ones are
    // void (one session runs at a time, and its workers join right after its control
    // connection).
    let mut mine: Vec<(u128, Instant)> = routes
        .iter()
        .filter(|(_, (id, _))| *id == r.id)
        .map(|(t, (_, at))| (*t, *at))
        .collect();
    if mine.len() >= mover::receiver::MAX_TICKETS {
        // Oldest first; equal times by ticket, so which go never depends on the map's order.
        mine.sort_by_key(|(t, at)| (*at, *t));
        for (t, _) in &mine[..=mine.len() - mover::receiver::MAX_TICKETS] {
            routes.remove(t);
        }
    }
    let now = node.clock.instant();
    routes.retain(|_, (_, at)| now.saturating_duration_since(*at) < mover::receiver::TICKET_TTL);
    if routes.len() >= MAX_ROUTES {
        return Err(Error::Conflict(
            "too many data-plane sessions pending on this node; try again".into(),
        ));
    }
    routes.insert(t.0, (r.id.clone(), now));
    // The data plane shares the replication port: the source connects where it sent this.
    Ok((node.opts.listen.port(), t.0, places))
}

/// The relationship's receiver, started if none runs, under the receivers lock. The
/// relationship is read again here: a release (which stops the receiver under this lock) may
/// have finished since the caller's request arrived.
fn running_receiver<'a>(
    node: &Node,
    rxs: &'a mut std::collections::HashMap<RelationshipId, Rx>,
    id: &RelationshipId,
) -> Result<&'a Rx> {
    let r = &node.get(id, Role::Target)?;
    if lock(&node.reverting).contains(&r.id) || r.ended {
        return Err(Error::Conflict(format!(
            "relationship {} is being deleted on the target",
            r.id
        )));
    }
    if !r.authorized {
        return Err(Error::Conflict(format!(
            "relationship {} is awaiting authorization on the target",
            r.id
        )));
    }
    if rxs.get(&r.id).is_some_and(|rx| rx.receiving.is_finished()) {
        rxs.remove(&r.id);
    }
    if rxs.contains_key(&r.id) {
        // Every use of the target directory is checked again, even though the running
        // receiver writes through the view it was started with.
        paths::target_dir(node, r)?;
    } else {
        let rx = start_receiver(node, r)?;
        rxs.insert(r.id.clone(), rx);
    }
    match rxs.get(&r.id) {
        Some(rx) => Ok(rx),
        None => unreachable!("inserted above"),
    }
}

/// Where to ask relationship `id`'s receiver for a DR drill (started if none runs).
pub fn drill_handle(node: &Node, id: &RelationshipId) -> Result<Arc<dyn super::host::Drills>> {
    let mut rxs = lock(&node.receivers);
    running_receiver(node, &mut rxs, id)?
        .receiving
        .drills()
        .ok_or_else(|| Error::Conflict("this node's receivers make no drills".into()))
}

/// Session routes kept at most: MAX_TICKETS per relationship, bounded overall whatever
/// sources ask.
pub const MAX_ROUTES: usize = 65536;

/// Hands a data-plane connection to the receiver whose ticket its session id is; `false` if
/// no receiver issued it (the caller closes the connection).
pub fn route(node: &Node, session: u128, conn: std::net::TcpStream) -> bool {
    routed(node, session).is_some_and(|r| r.deliver_tcp(conn))
}

/// The receiver that issued `session` as a ticket, taken out of the receivers lock: a
/// delivery (a call on the data socket, for a split node) runs without it.
fn routed(node: &Node, session: u128) -> Option<Arc<dyn super::host::Receiving>> {
    // Both read under the receivers lock (before the routes lock, as `ticket` takes them),
    // so a route `ticket` voids is either seen before it did or not at all.
    let rxs = lock(&node.receivers);
    let id = lock(&node.routes).get(&session).map(|(id, _)| id.clone())?;
    rxs.get(&id).map(|rx| rx.receiving.clone())
}

/// `route` for a connection of any transport (the simulation's).
#[cfg(test)]
pub(crate) fn deliver(node: &Node, session: u128, conn: Box<dyn mover::Connection>) -> bool {
    routed(node, session).is_some_and(|r| r.deliver(conn))
}

fn start_receiver(node: &Node, r: &Relationship) -> Result<Rx> {
    let (root, dir) = writable_root(node, r)?;
    let opts = ReceiveOptions {
        root,
        once: false,
        tickets: Some(Arc::new(Tickets::default())),
        stop: Some(Arc::new(AtomicBool::new(false))),
        limits: Default::default(),
        insecure_plaintext: node.opts.insecure_plaintext,
        // What the target's operator accepted at authorization reaches the data too: without
        // it, setuid/setgid bits are cleared and device nodes not created, so nothing stays
        // dangerous once the replica is made writable.
        policy: mover::receiver::policy::ReplicaPolicy {
            allow_setid: r.replica.allow_setuid,
            allow_devices: r.replica.allow_devices,
        },
        checkpoint_bytes: None,
        scrub_every: node.opts.scrub_interval,
        // Offered when this node has an active RDMA port for the connection's address (and
        // the build has it); the source's relationship decides whether to ask.
        rdma: Some(mover::transport::select::RdmaPolicy::new(
            mover::transport::select::Choice::Auto,
            None,
        )),
        writers: super::writes::writers(node, &r.id, PathBuf::from(&dir.pin().path)),
        ..Default::default()
    };
    let writers = opts.writers.is_some();
    let receiving = Arc::from(node.host.start_receiver(&r.id, opts)?);
    tracing::info!(id = %r.id, writes = writers, "data-plane receiver started");
    Ok(Rx {
        receiving,
        _root: dir,
        writes: writers,
    })
}

/// Before a target row this release cannot read is forgotten: its receiver, if one still runs
/// (the row was damaged under it), stops, and what this process kept of it goes. Nothing is
/// released or reverted: what to release (the target directory) is in the row.
pub(crate) fn quiesce_unreadable(node: &Node, id: &RelationshipId) -> Result<()> {
    stop_receiver(node, id, STOP_WAIT)?;
    lock(&node.routes).retain(|_, (rid, _)| rid != id);
    lock(&node.reported).remove(id);
    lock(&node.last_contact).remove(id);
    super::writes::withdraw(node, id);
    Ok(())
}

/// Stops the relationship's receiver and waits (bounded) until its session, if any, ended.
fn stop_receiver(node: &Node, id: &RelationshipId, wait: Duration) -> Result<()> {
    let Some(rx) = lock(&node.receivers).remove(id) else {
        // None started by this process; one an earlier control container started in the data
        // container may still run.
        return node.host.quiesce(id, wait);
    };
    rx.receiving.stop();
    let until = Instant::now() + wait;
    while !rx.receiving.is_finished() {
        if Instant::now() >= until {
            lock(&node.receivers).insert(id.clone(), rx);
            return Err(Error::Conflict(format!("a job of relationship {id} is still writing; try again when the source has stopped it")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    rx.receiving.join();
    // Finished as this process sees it; in a data container its session may still be
    // ending (its connection broke, or its control container was an earlier one).
    node.host
        .quiesce(id, until.saturating_duration_since(Instant::now()))
}

/// Deletes a target relationship: reverts an interrupted job to the last recovery point, lifts
/// the read-only protection, forgets the relationship. The directory keeps its data.
/// Blocking (waits for a running session); call from a blocking thread.
pub fn delete(node: &Node, id: &RelationshipId) -> Result<()> {
    let r = node.get(id, Role::Target)?;
    forget_snapshots(node, id);
    // A target already made writable has nothing left to revert or release.
    let res = if r.ended && r.read_only.is_none() {
        Ok(())
    } else {
        release(node, id)
    };
    let res = res.and_then(|()| node.forget(id, Role::Target));
    if res.is_ok() {
        // `release` dropped its routes and reported progress already.
        lock(&node.last_contact).remove(id);
        node.event(
            EventKind::RelationshipDeleted,
            Some((id, Role::Target)),
            format!(
                "deleted; {} is writable and keeps its data",
                r.spec.target_path
            ),
        );
    }
    res
}

/// Makes the target directory writable while keeping the relationship (as `ended`): an
/// interrupted job is reverted to the last recovery point, the read-only protection is lifted
/// and no further job is accepted. The source sees the relationship ended at its next poll.
/// What a failover does to the target; the record stays so operators see what happened.
pub fn make_writable(node: &Node, id: &RelationshipId) -> Result<Relationship> {
    let r = node.get(id, Role::Target)?;
    if r.ended {
        return Err(Error::Conflict(format!(
            "relationship {id} has already ended; its target directory is writable"
        )));
    }
    if !r.authorized {
        return Err(Error::Conflict(format!(
            "relationship {id} was never authorized; its target directory was never protected"
        )));
    }
    if r.read_only.is_some() {
        // What is at the path now is not ours to make writable (delete forgets it instead).
        paths::target_identity(node, &r).map_err(|e| {
            Error::Conflict(format!(
                "{e}; nothing was changed (delete the relationship to end it)"
            ))
        })?;
    }
    release(node, id)?;
    // A new epoch: a source that did not see this failover is refused from now on.
    let r = node.modify(id, Role::Target, |x| x.epoch += 1)?;
    node.event(
        EventKind::MadeWritable,
        Some((id, Role::Target)),
        format!(
            "{} made writable at its last recovery point; the relationship has ended",
            r.spec.target_path
        ),
    );
    Ok(r)
}

/// After a failover (`make_writable`), the source asks to replicate again: the directory is
/// made read-only again (the same protection as at authorization) and checked against its
/// last recovery point. A difference is recorded as a failed scrub, so the next job compares
/// every entry with the disk: what was written here meanwhile is reverted (files removed,
/// changed ones sent again) and only what differs travels. Returns the last recovery point
/// this node recorded and the first difference found.
/// Blocking (checks the whole directory); call from a blocking thread.
pub fn reconnect(node: &Node, id: &RelationshipId) -> Result<(Option<i64>, Option<String>, u64)> {
    if !lock(&node.reverting).insert(id.clone()) {
        return Err(Error::Conflict(format!(
            "relationship {id} is already being made writable, deleted or reconnected"
        )));
    }
    let res = (|| {
        let r = node.get(id, Role::Target)?;
        if !r.ended || !r.authorized || r.read_only.is_some() {
            return Err(Error::Conflict(format!(
                "relationship {id} was not made writable here (it is {}); only a target made writable reconnects",
                crate::model::status(&r, node.clock.now()).name()
            )));
        }
        let dir = paths::target_identity(node, &r)
            .map_err(|e| Error::Conflict(format!("{e}; nothing was changed")))?;
        let (mode, via) = node
            .host
            .protect(id, dir.pin(), &node.mount_dir(id), r.replica)?;
        // Checked through the private view while the target path is read-only again: nothing
        // writes to it meanwhile.
        let difference = match mover::receiver::scrub_root(&via) {
            Ok(Some(rep)) => rep.difference.filter(|_| !rep.ok),
            Ok(None) => Some("no recovery point to compare with".into()),
            Err(e) => Some(format!("cannot be compared ({e})")),
        };
        let r = node.modify(id, Role::Target, |x| {
            x.ended = false;
            x.peer_unreachable = false;
            x.read_only = Some(mode);
            x.job_running = false;
            x.path_error = None;
            x.epoch += 1;
        })?;
        lock(&node.last_contact).insert(id.clone(), node.clock.instant());
        lock(&node.reconnecting).insert(id.clone(), node.clock.now_ns());
        tracing::info!(%id, difference = ?difference, "target read-only again; the next job reverts it to the source's state");
        Ok((r.recovery_point_ns, difference, r.epoch))
    })();
    lock(&node.reverting).remove(id);
    res
}

/// Ends the relationship on this node and gives the directory back: no new ticket is issued,
/// the source is told (polls answer "ended"), the receiver is stopped (waiting for a running
/// session, bounded), an interrupted job is reverted, the mounts are removed, and then the
/// relationship is recorded ended and unprotected. One release per relationship at a time.
/// Every step can be repeated after a crash: `restore` finishes a release that was cut.
fn release(node: &Node, id: &RelationshipId) -> Result<()> {
    if !lock(&node.reverting).insert(id.clone()) {
        return Err(Error::Conflict(format!(
            "relationship {id} is already being made writable or deleted"
        )));
    }
    let res = (|| {
        // Read after claiming it, so a release that just finished is seen.
        let r = node.get(id, Role::Target)?;
        stop_receiver(node, id, STOP_WAIT)?;
        // Recorded before anything is undone: from here on the source must not come back,
        // even if a later step fails (it is retried, by the operator or at the next start).
        node.modify(id, Role::Target, |x| x.ended = true)?;
        // Only what was protected is released. A proposal nobody authorized (or a target
        // released already) has nothing of ours to revert or unmount, and the paths it names
        // are a peer's words.
        if r.authorized && r.read_only.is_some() {
            unprotect(node, &r)?;
        }
        node.modify(id, Role::Target, |x| {
            x.job_running = false;
            x.read_only = None;
        })?;
        Ok(())
    })();
    lock(&node.reverting).remove(id);
    lock(&node.reported).remove(id);
    if res.is_ok() {
        lock(&node.routes).retain(|_, (rid, _)| rid != id);
        // Ended: no session follows to replace what the last ones announced.
        super::writes::withdraw(node, id);
    }
    res
}

/// Reverts an interrupted job and removes the protection of an authorized target, if its path
/// still leads to the authorized directory. If it does not, nothing is done at the path: only
/// the private view in the data dir goes (after the revert, if it still shows the authorized
/// directory); a read-only view that moved away with the directory stays where it went.
fn unprotect(node: &Node, r: &Relationship) -> Result<()> {
    let backing = node.mount_dir(&r.id);
    match paths::target_identity(node, r) {
        Ok(dir) => {
            // The journal is reverted through the private writable view (rebuilt if a reboot
            // took it), while the target path is still read-only to everyone else.
            let root = match r.read_only {
                Some(readonly::Mode::BindMount) => {
                    node.host.protect(&r.id, dir.pin(), &backing, r.replica)?.1
                }
                _ => dir.proc_path(),
            };
            revert(node, r, &root)?;
            node.host.release(&r.id, dir.path(), &backing)
        }
        Err(e) => {
            tracing::error!(id = %r.id, "{e}: leaving it alone; if the directory was moved, its read-only mount went with it (unmount it there by hand)");
            if let Some(pin) = r
                .pinned
                .as_ref()
                .filter(|p| node.host.shows(&r.id, &backing, p))
            {
                tracing::info!(id = %r.id, "reverting through the private view, which still shows {}", pin.path);
                revert(node, r, &backing)?;
            }
            node.host.release_backing(&r.id, &backing)
        }
    }
}

fn revert(node: &Node, r: &Relationship, root: &Path) -> Result<()> {
    if let Some(undone) = node.host.revert(&r.id, root)? {
        tracing::info!(id = %r.id, undone, "reverted the interrupted job to the last recovery point");
    }
    Ok(())
}

/// The source's report about its job (progress while running, the outcome when done).
pub fn record_report(
    node: &Node,
    id: &RelationshipId,
    running: bool,
    job: Option<crate::peer::JobView>,
    last: Option<Attempt>,
    rp: Option<i64>,
) -> Result<()> {
    let r = node.get(id, Role::Target)?;
    if r.ended || lock(&node.reverting).contains(id) {
        // Nothing runs into an ended target; its view keeps no job.
        return Err(Error::NotFound(id.to_string()));
    }
    if !r.authorized {
        // No ticket, so no job, before authorization: whatever the proposer says of one
        // (running, an outcome, a recovery point) is not taken.
        return Err(Error::Conflict(format!(
            "relationship {id} is awaiting authorization on the target; no job runs before"
        )));
    }
    match job {
        Some(j) if running => {
            lock(&node.reported).insert(id.clone(), j);
        }
        _ => {
            lock(&node.reported).remove(id);
        }
    }
    // A reconnect is over once a job after it succeeded: the target is the source's again.
    if let Some(a) = last.as_ref().filter(|a| a.ok && !running) {
        let mut rc = lock(&node.reconnecting);
        if rc.get(id).is_some_and(|since| a.at_ns >= *since) {
            rc.remove(id);
        }
    }
    if r.job_running != running
        || r.last_attempt != last
        || (rp.is_some() && r.recovery_point_ns != rp)
        || r.peer_unreachable
    {
        // The end of an outage `silence::check` recorded: compared and said under the store's
        // lock, so said once, and after its start.
        node.modify_noting(id, Role::Target, |x| {
            if x.ended {
                return Vec::new();
            }
            let heard_again = x.peer_unreachable;
            x.job_running = running;
            x.peer_unreachable = false;
            // Outcomes and recovery points only move forward (a late message is older).
            if last.as_ref().map(|a| a.at_ns) >= x.last_attempt.as_ref().map(|a| a.at_ns) {
                x.last_attempt = last;
            }
            if rp > x.recovery_point_ns {
                x.recovery_point_ns = rp;
            }
            if !heard_again {
                return Vec::new();
            }
            vec![(
                EventKind::PeerReachable,
                format!(
                    "the source of {} reaches this node again",
                    x.spec.target_path
                ),
            )]
        })?;
    }
    Ok(())
}

/// The last scrub of a target relationship's directory, as its receiver knows it (None: never
/// scrubbed, or no receiver since the daemon started: it starts with the first job).
pub fn scrub(node: &Node, id: &RelationshipId) -> Option<mover::receiver::ScrubReport> {
    lock(&node.receivers)
        .get(id)
        .and_then(|rx| rx.receiving.scrub())
}

/// At shutdown: receivers stop taking sessions. A session still running is cut when the
/// process exits, and its journal lets the next one resume; in a data container it goes on
/// to its end.
pub fn stop_all(node: &Node) {
    for rx in lock(&node.receivers).values() {
        rx.receiving.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::host::{Host, Receiving};
    use crate::model::{PinnedDir, ReplicaOptions};
    use crate::peer::{PeerAnswer, PeerRequest};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A machine nothing may be done to: counts the attempts, refuses them.
    #[derive(Default)]
    struct Untouchable(AtomicUsize);

    impl Untouchable {
        fn no(&self) -> Error {
            self.0.fetch_add(1, Ordering::SeqCst);
            Error::Conflict("nothing may be done to this machine".into())
        }
    }

    impl Host for Untouchable {
        fn protect(
            &self,
            _: &RelationshipId,
            _: &PinnedDir,
            _: &Path,
            _: ReplicaOptions,
        ) -> Result<(readonly::Mode, PathBuf)> {
            Err(self.no())
        }
        fn shows(&self, _: &RelationshipId, _: &Path, _: &PinnedDir) -> bool {
            self.no();
            false
        }
        fn revert(&self, _: &RelationshipId, _: &Path) -> Result<Option<u64>> {
            Err(self.no())
        }
        fn release(&self, _: &RelationshipId, _: &Path, _: &Path) -> Result<()> {
            Err(self.no())
        }
        fn release_backing(&self, _: &RelationshipId, _: &Path) -> Result<()> {
            Err(self.no())
        }
        fn start_receiver(
            &self,
            _: &RelationshipId,
            _: ReceiveOptions,
        ) -> Result<Box<dyn Receiving>> {
            Err(self.no())
        }
    }

    /// A target relationship as a source proposed it, stored on `node`.
    fn proposed(node: &Node, dir: &Path, peer: &str) -> Relationship {
        let target = dir.join("replica");
        std::fs::create_dir_all(&target).unwrap();
        let mut spec = crate::model::tests::spec();
        spec.target_path = target.to_str().unwrap().to_string();
        let id = RelationshipId::new_random();
        let r = Relationship::new(id, Role::Target, spec, 0, Some(peer.into()));
        node.store().insert(&r).unwrap();
        r
    }

    #[test]
    fn a_ticket_asked_before_a_release_finished_starts_nothing_after_it() {
        // Found by the simulation (seed in sim::tests): a ticket request was checked, its
        // blocking part ran after make-writable had released the target, and started a
        // receiver (protecting the directory again) on the released target.
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(Untouchable::default());
        let (node, _clock) = crate::daemon::test_node_on(dir.path(), host.clone());
        let r = proposed(&node, dir.path(), "sha256:source");
        let pin = crate::pinned::pin(Path::new(&r.spec.target_path), "target")
            .unwrap()
            .pin()
            .clone();
        // Authorized and protected when the request arrived...
        let asked = node
            .modify(&r.id, Role::Target, |x| {
                x.authorized = true;
                x.read_only = Some(readonly::Mode::BindMount);
                x.pinned = Some(pin);
            })
            .unwrap();
        // ...released (ended, unprotected) before its blocking part ran.
        node.modify(&r.id, Role::Target, |x| {
            x.ended = true;
            x.read_only = None;
        })
        .unwrap();
        let res = ticket(&node, &asked, None, 0, false);
        assert!(matches!(res, Err(Error::Conflict(_))), "{res:?}");
        assert_eq!(host.0.load(Ordering::SeqCst), 0, "the machine was touched");
        assert!(lock(&node.receivers).is_empty());
        assert!(lock(&node.routes).is_empty());
        // Deleted meanwhile: the same.
        node.forget(&r.id, Role::Target).unwrap();
        assert!(matches!(
            ticket(&node, &asked, None, 0, false),
            Err(Error::NotFound(_))
        ));
        assert_eq!(host.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_replaced_source_owners_sessions_are_void_and_its_later_requests_refused() {
        assert!(
            rustix::process::geteuid().is_root(),
            "authorizing mounts: run this test as root (CI does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let (node, _clock) = crate::daemon::test_node(dir.path());
        let fp = crate::tls::Fingerprint("sha256:source".into());
        let r = proposed(&node, dir.path(), &fp.0);
        authorize(&node, &r.id, &Default::default()).unwrap();
        let mut n = 0u8;
        // A ticket request at `term`: the route it made (its secret's handle), or the refusal.
        let mut ask = |term| {
            n += 1;
            let secret = mover::SessionSecret::from_bytes([n; 32]);
            let handle = secret.handle().0;
            let req = PeerRequest::Ticket {
                id: r.id.clone(),
                plaintext: false,
                epoch: 0,
                software: None,
                term,
                write_places: false,
            };
            use super::super::peer_server::{finish, respond, Handled};
            let answer = match respond(&node, &fp, req, (mover::units::SessionId(n.into()), secret))
            {
                Handled::Blocking(work) => finish(&node, work),
                Handled::Answer(a) => a,
            };
            match answer {
                PeerAnswer::Ticket { .. } => Ok(handle),
                PeerAnswer::Refused { message } => Err(message),
                other => panic!("{other:?}"),
            }
        };
        let routed = |h: u128| lock(&node.routes).contains_key(&h);
        // The first owner (term 1) has a session granted and not yet begun...
        let old = ask(1).unwrap();
        assert!(routed(old));
        // ...when the node that took over (term 2) asks: the old session is void.
        let new = ask(2).unwrap();
        assert!(
            routed(new) && !routed(old),
            "the replaced owner's session stays"
        );
        // The old owner asks again: refused, saying why and what to do.
        let refused = ask(1).unwrap_err();
        assert!(refused.contains("taken it over"), "{refused}");
        assert!(refused.contains("reconnect"), "{refused}");
        // The new owner's next session leaves its first.
        let again = ask(2).unwrap();
        assert!(routed(again) && routed(new));
        // Kept in the store (a restart forgets nothing).
        assert_eq!(node.store().fence(&r.id, 0, 1).unwrap(), Fenced::Stale(2));
        // No term (a node of an earlier release took it over) is not fenced, and starts the
        // terms again: that node, upgraded, asks at term 1.
        let unfenced = ask(0).unwrap();
        assert!(routed(unfenced) && routed(again));
        assert!(ask(1).is_ok());
        // A request read before a reconnect moved the epoch on is refused; the new epoch
        // (a reconnect, the way back for a source cluster whose etcd was rebuilt) starts again.
        node.modify(&r.id, Role::Target, |x| x.epoch = 1).unwrap();
        assert!(matches!(
            node.store().fence(&r.id, 0, 9),
            Err(Error::Conflict(_))
        ));
        assert_eq!(node.store().fence(&r.id, 1, 1).unwrap(), Fenced::Raised);
        assert_eq!(node.store().fence(&r.id, 1, 1).unwrap(), Fenced::Current);
        delete(&node, &r.id).unwrap();
    }

    #[test]
    fn a_request_from_another_epoch_is_refused_as_split_brain() {
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(Untouchable::default());
        let (node, _clock) = crate::daemon::test_node_on(dir.path(), host.clone());
        let fp = crate::tls::Fingerprint("sha256:source".into());
        let r = proposed(&node, dir.path(), &fp.0);
        // Made writable once and reconnected once: epoch 2 on both sides.
        node.modify(&r.id, Role::Target, |x| {
            x.authorized = true;
            x.read_only = Some(readonly::Mode::BindMount);
            x.epoch = 2;
        })
        .unwrap();
        let grant = || {
            (
                mover::units::SessionId(1),
                mover::SessionSecret::from_bytes([7; 32]),
            )
        };
        let ask = |epoch| {
            let req = PeerRequest::Ticket {
                id: r.id.clone(),
                plaintext: false,
                epoch,
                software: None,
                term: 0,
                write_places: false,
            };
            super::super::peer_server::respond(&node, &fp, req, grant())
        };
        use super::super::peer_server::Handled;
        match ask(1) {
            Handled::Answer(PeerAnswer::Refused { message }) => {
                assert!(message.contains("split brain"), "{message}");
                assert!(
                    message.contains("this target is newer")
                        || message.contains("its side is newer"),
                    "{message}"
                );
                assert!(
                    message.contains("mover relationship reconnect"),
                    "{message}"
                );
            }
            _ => panic!("a source of an older epoch got a session"),
        }
        match ask(3) {
            Handled::Answer(PeerAnswer::Refused { message }) => {
                assert!(message.contains("split brain"), "{message}");
                assert!(message.contains("the source is newer"), "{message}");
            }
            _ => panic!("a target of an older epoch granted a session"),
        }
        assert!(
            matches!(ask(2), Handled::Blocking(_)),
            "the same epoch gets its session"
        );
        assert_eq!(host.0.load(Ordering::SeqCst), 0, "nothing was touched");
    }

    #[test]
    fn a_proposal_awaiting_authorization_takes_no_job_report_but_takes_edits() {
        // Found by the simulation (seed in sim::tests): a peer's report about its own
        // unauthorized proposal was recorded (running, an outcome, a recovery point it made up).
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(Untouchable::default());
        let (node, _clock) = crate::daemon::test_node_on(dir.path(), host);
        let fp = crate::tls::Fingerprint("sha256:proposer".into());
        let r = proposed(&node, dir.path(), &fp.0);
        let attempt = Attempt {
            at_ns: 5,
            ok: true,
            message: "made up".into(),
        };
        let grant = || {
            (
                mover::units::SessionId(1),
                mover::SessionSecret::from_bytes([7; 32]),
            )
        };
        let report = PeerRequest::Report {
            id: r.id.clone(),
            running: true,
            job: Some(Default::default()),
            last_attempt: Some(attempt.clone()),
            recovery_point_ns: Some(i64::MAX),
            epoch: 0,
        };
        let answer = match super::super::peer_server::respond(&node, &fp, report, grant()) {
            super::super::peer_server::Handled::Answer(a) => a,
            super::super::peer_server::Handled::Blocking(_) => panic!("a report does not block"),
        };
        assert!(matches!(answer, PeerAnswer::Refused { .. }), "{answer:?}");
        assert_eq!(node.get(&r.id, Role::Target).unwrap(), r);
        // A poll carrying the same is answered, and only its settings are taken.
        let mut spec = r.spec.clone();
        spec.enabled = false;
        let poll = PeerRequest::State {
            id: r.id.clone(),
            source: Some(crate::peer::SourceState {
                spec: spec.clone(),
                running: true,
                job: None,
                last_attempt: Some(attempt),
                recovery_point_ns: Some(i64::MAX),
                software: None,
            }),
        };
        let answer = match super::super::peer_server::respond(&node, &fp, poll, grant()) {
            super::super::peer_server::Handled::Answer(a) => a,
            super::super::peer_server::Handled::Blocking(_) => panic!("a poll does not block"),
        };
        assert!(matches!(
            answer,
            PeerAnswer::State {
                authorized: false,
                ended: false,
                ..
            }
        ));
        let now = node.get(&r.id, Role::Target).unwrap();
        assert_eq!(
            (
                now.job_running,
                now.last_attempt,
                now.recovery_point_ns,
                now.spec
            ),
            (false, None, None, spec)
        );
    }
}
