//! Snapshot policies and the policy snapshots a node keeps (the snapshot modes of a
//! relationship).
//!
//! - On the source, a policy that fires keeps a read-only point in time of every source tree
//!   whose relationship links it, under `<source>/.snapshot/<id>_<policy>/` (`mover::keep`),
//!   and queues it. The scheduler replicates queued snapshots one by one, oldest first, before
//!   any continuous job (`queued`), from the kept copy rather than the live tree.
//! - When such a job has committed its recovery point, the source asks the target to keep it
//!   (`PeerRequest::KeepSnapshot`): the target's receiver copies that recovery point, between
//!   two sessions, to `<target>/.snapshot/<id>_<policy>/`, read-only, verified against the
//!   recovery point's entry list (`keep`).
//! - Both sides expire their snapshots at the time recorded with each (`tick`); a source
//!   snapshot still queued is kept until replicated, as its data exists nowhere else.

use super::{peer_call, target, Node};
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::model::{Relationship, RelationshipId, Role};
use crate::policy::{Policy, PolicyEdit, PolicyName, Snapshot, SnapshotId};
use serde::Serialize;
use std::os::fd::AsFd;
use std::time::Duration;

mod owed;
pub(crate) use owed::Owed;
use NotTaken::{Failing, Owing};

/// How often policies are checked for a fire and snapshots for expiry.
pub const POLICY_TICK: Duration = Duration::from_secs(1);
/// Keeping a snapshot on the target waits this long for a running session to end.
pub const KEEP_WAIT: Duration = Duration::from_secs(60);

/// A policy as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PolicyView {
    pub name: PolicyName,
    pub schedule: crate::policy::Schedule,
    /// The schedule in words ("every 15 min", "daily at 02:00 UTC").
    pub schedule_text: String,
    pub expiry: String,
    pub enabled: bool,
    pub last_fired: String,
    pub next_fire: Option<String>,
    /// Source relationships linking it.
    pub relationships: Vec<String>,
}

/// A kept snapshot as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SnapshotView {
    pub relationship: String,
    pub role: Role,
    pub id: SnapshotId,
    pub policy: PolicyName,
    /// `<id>_<policy>`, its directory under `.snapshot`.
    pub name: String,
    pub path: String,
    /// The source's point in time it holds.
    pub taken: String,
    pub expires: Option<String>,
    /// Source: "queued" (not yet replicated) or "replicated"; target: "kept".
    pub state: &'static str,
}

fn snapshot_view(r: &Relationship, s: &Snapshot) -> SnapshotView {
    let root = match r.role {
        Role::Source => &r.spec.source_path,
        Role::Target => &r.spec.target_path,
    };
    SnapshotView {
        relationship: r.id.to_string(),
        role: r.role,
        id: s.id,
        policy: s.policy.clone(),
        name: s.name(),
        path: source_of(std::path::Path::new(root), s)
            .display()
            .to_string(),
        taken: rfc3339(s.taken_ns),
        expires: s.expires_ns.map(rfc3339),
        state: match (r.role, s.replicated) {
            (Role::Target, _) => "kept",
            (Role::Source, true) => "replicated",
            (Role::Source, false) => "queued",
        },
    }
}

fn policy_view(node: &Node, p: Policy, last_ns: i64) -> Result<PolicyView> {
    // A relationship this release cannot read is not shown linked (deleting a policy, which
    // must know every link, still reads them all).
    let linked = node
        .store()
        .list_readable(Some(Role::Source))?
        .rows
        .into_iter()
        .filter(|r| r.spec.policies.contains(&p.name))
        .map(|r| r.id.to_string())
        .collect();
    let last = chrono::DateTime::from_timestamp_nanos(last_ns);
    let now = node.clock.now();
    Ok(PolicyView {
        schedule_text: p.schedule.to_string(),
        expiry: p.expiry.to_string(),
        next_fire: p
            .enabled
            .then(|| p.schedule.next_after(last.max(now)))
            .flatten()
            .map(|t| rfc3339(t.timestamp_nanos_opt().unwrap_or(i64::MAX))),
        last_fired: rfc3339(last_ns),
        enabled: p.enabled,
        relationships: linked,
        schedule: p.schedule,
        name: p.name,
    })
}

pub fn create_policy(node: &Node, p: Policy) -> Result<PolicyView> {
    let now = node.clock.now_ns();
    node.store().insert_policy(&p, now)?;
    tracing::info!(policy = %p.name, schedule = %p.schedule, "snapshot policy created");
    policy_view(node, p, now)
}

pub fn list_policies(node: &Node) -> Result<Vec<PolicyView>> {
    let all = node.store().policies()?;
    all.into_iter()
        .map(|(p, last)| policy_view(node, p, last))
        .collect()
}

pub fn get_policy(node: &Node, name: &PolicyName) -> Result<PolicyView> {
    let (p, last) = node.store().policy(name)?;
    policy_view(node, p, last)
}

pub fn modify_policy(node: &Node, name: &PolicyName, e: &PolicyEdit) -> Result<PolicyView> {
    let (p, last) = node.store().policy(name)?;
    let p = p.edited(e)?;
    node.store().update_policy(&p)?;
    policy_view(node, p, last)
}

/// Deletes a policy no relationship links (its snapshots stay, and expire as recorded).
pub fn delete_policy(node: &Node, name: &PolicyName) -> Result<()> {
    let linked: Vec<String> = node
        .store()
        .list(Some(Role::Source))?
        .into_iter()
        .filter(|r| r.spec.policies.contains(name))
        .map(|r| r.id.to_string())
        .collect();
    if !linked.is_empty() {
        return Err(Error::Conflict(format!(
            "snapshot policy {name} is linked by relationship(s) {}: unlink it first (mover relationship modify ID --policy ...)",
            linked.join(", ")
        )));
    }
    node.store().delete_policy(name)
}

/// Refuses a spec whose snapshot mode the source cannot serve: a policy it links does not
/// exist, or the source can keep no snapshots (`mover::keep::unsupported`).
pub(crate) fn check_spec(
    node: &Node,
    spec: &crate::model::Spec,
    src: &std::path::Path,
) -> Result<()> {
    if !spec.mode.keeps_snapshots() {
        return Ok(());
    }
    for p in &spec.policies {
        node.store().policy(p).map_err(|_| {
            Error::Invalid(format!(
                "no snapshot policy {p} on this node: create it first (mover policy create {p} ...)"
            ))
        })?;
    }
    match mover::keep::unsupported(src) {
        Some(why) => Err(Error::Invalid(format!(
            "mode {} is refused: {why}",
            spec.mode.name()
        ))),
        None => Ok(()),
    }
}

/// Takes the snapshots of policy `name` now, as if it fired (`mover policy run`): those
/// taken, or the first failure. Snapshots owed (`owed::OWED_FOR`) are logged and taken later; if
/// nothing was taken and some are owed, that is the answer (409), so a caller that tries
/// again never doubles a snapshot taken already.
pub fn run_policy(node: &Node, name: &PolicyName) -> Result<Vec<SnapshotView>> {
    let (p, _) = node.store().policy(name)?;
    let mut out = Vec::new();
    let mut owed = None;
    for t in take_for(node, &p) {
        match t {
            Ok(s) => out.push(s),
            Err(Owing(why)) => owed = owed.or(Some(why)),
            Err(Failing(e)) => return Err(e),
        }
    }
    match owed {
        Some(why) if out.is_empty() => Err(Error::Conflict(why)),
        _ => Ok(out),
    }
}

/// Why a policy snapshot was not taken: owed (to be taken later, why), or failed.
enum NotTaken {
    Owing(String),
    Failing(Error),
}

/// Whether relationship `r` takes policy `p`'s snapshots.
pub(super) fn links(r: &Relationship, p: &Policy) -> bool {
    !r.ended && r.spec.mode.keeps_snapshots() && r.spec.policies.contains(&p.name)
}

/// What trying one policy snapshot came to.
pub(super) enum Tried {
    Taken(SnapshotView),
    /// Not this node's (another node of the cluster holds the relationship).
    NotHere,
    /// To try again (`owed::OWED_FOR`), and why.
    Owed(String),
    Failed(Error),
}

/// Takes a snapshot for every relationship linking `p`; one failing does not stop the others.
/// In a cluster, only the node that holds a relationship snapshots it (the source is shared:
/// another node's copy, stale or taken over, would snapshot it twice); one this node cannot
/// tell yet is owed, and answered as an error saying so.
fn take_for(node: &Node, p: &Policy) -> Vec<std::result::Result<SnapshotView, NotTaken>> {
    // A row this release cannot read is left out (the scheduler says so): it takes no
    // snapshot, and keeps none of the others from theirs.
    let rels = match node.store().list_readable(Some(Role::Source)) {
        Ok(listed) => listed.rows,
        Err(e) => return vec![Err(Failing(e))],
    };
    let now = node.clock.instant();
    let mut out = Vec::new();
    for r in rels.into_iter().filter(|r| links(r, p)) {
        match try_take(node, &r, p) {
            Tried::Taken(s) => out.push(Ok(s)),
            Tried::NotHere => {}
            Tried::Owed(why) => out.push(Err(Owing(owed::owe(node, &r, p, &why, now)))),
            Tried::Failed(e) => out.push(Err(Failing(e))),
        }
    }
    out
}

/// One policy snapshot of `r` now, if this node takes them, logged.
pub(super) fn try_take(node: &Node, r: &Relationship, p: &Policy) -> Tried {
    use super::owners::Snapshots;
    match super::owners::snapshots_here(node, &r.id) {
        Snapshots::Here => {}
        Snapshots::Elsewhere => return Tried::NotHere,
        Snapshots::NotYet(why) => return Tried::Owed(why.to_string()),
    }
    match take(node, r, p) {
        Ok(Some(s)) => {
            tracing::info!(id = %r.id, snapshot = %s.name, "policy snapshot taken");
            Tried::Taken(s)
        }
        Ok(None) => Tried::Owed(
            "its snapshot ids in etcd are being renewed, or another node holds it now".into(),
        ),
        Err(e) => {
            tracing::error!(id = %r.id, policy = %p.name, "policy snapshot failed: {e}");
            Tried::Failed(e)
        }
    }
}

/// Keeps a point in time of `r`'s source for policy `p`, and queues it; `None` if the next
/// snapshot id is past what this node holds in etcd (its next pass reserves more within a
/// second, unless another node holds the relationship by now).
fn take(node: &Node, r: &Relationship, p: &Policy) -> Result<Option<SnapshotView>> {
    let src = super::paths::source_dir(node, r)?;
    let now = node.clock.now_ns();
    // Looked at before an id is given too, so a snapshot owed for a while uses none meanwhile.
    let next = node.store().last_snapshot_id(&r.id)?.saturating_add(1);
    if !super::owners::may_use_snapshot_id(node, &r.id, next) {
        return Ok(None);
    }
    let id = node.store().next_snapshot_id(&r.id)?;
    if !super::owners::may_use_snapshot_id(node, &r.id, id.0) {
        return Ok(None);
    }
    let s = Snapshot {
        id,
        policy: p.name.clone(),
        taken_ns: now,
        expires_ns: p.expiry.at(now),
        target_expires_ns: r.spec.target_expiry.at(p.expiry, now),
        replicated: false,
    };
    mover::keep::take(src.fd(), &s.name())?;
    node.store().put_snapshot(&r.id, Role::Source, &s)?;
    node.watches.wake.notify_one();
    Ok(Some(snapshot_view(r, &s)))
}

/// The oldest snapshot of `r` still to replicate, if any. One whose copy is gone from the
/// source's `.snapshot` (removed by hand) leaves the queue with a warning, so it cannot fail
/// every job after it.
pub(crate) fn queued(node: &Node, r: &Relationship) -> Option<Snapshot> {
    let all = match node.store().snapshots(Some(&r.id), Role::Source) {
        Ok(all) => all,
        Err(e) => {
            tracing::error!(id = %r.id, "reading the snapshot queue: {e}");
            return None;
        }
    };
    for (_, s) in all.into_iter().filter(|(_, s)| !s.replicated) {
        let copy = source_of(std::path::Path::new(&r.spec.source_path), &s);
        if std::fs::symlink_metadata(&copy).is_ok() {
            return Some(s);
        }
        tracing::warn!(id = %r.id, snapshot = %s.name(), "the queued snapshot's copy is gone: dropped from the queue");
        if let Err(e) = node.store().delete_snapshot(&r.id, Role::Source, s.id) {
            tracing::error!(id = %r.id, "dropping a lost snapshot: {e}");
            return None;
        }
    }
    None
}

/// The job of snapshot `s` committed and the target kept it.
pub(crate) fn replicated(node: &Node, id: &RelationshipId, mut s: Snapshot) -> Result<()> {
    s.replicated = true;
    node.store().put_snapshot(id, Role::Source, &s)?;
    // The live tree's changes since the last continuous job are relative to another point in
    // time than the one the target holds now.
    node.watches
        .walk_whole(id, "a policy snapshot was replicated");
    Ok(())
}

/// Target: keeps the recovery point `recovery_point` of `id` as policy snapshot `s`.
pub fn keep(
    node: &Node,
    id: &RelationshipId,
    s: &Snapshot,
    recovery_point: &str,
) -> Result<SnapshotView> {
    let r = node.get(id, Role::Target)?;
    if r.ended || !r.authorized {
        return Err(Error::Conflict(format!(
            "relationship {id} is not replicating here: no snapshot is kept"
        )));
    }
    let view = snapshot_view(&r, s);
    let handle = target::drill_handle(node, id)?;
    handle
        .make(
            mover::receiver::drill::DrillRequest {
                into: view.path.clone().into(),
                allow_copy: false,
                keep: Some(mover::receiver::drill::KeepRequest {
                    name: s.name(),
                    recovery_point: recovery_point.to_string(),
                }),
            },
            KEEP_WAIT,
        )
        .map_err(|e| match e {
            mover::Error::Busy(m) => Error::Conflict(m),
            other => Error::from(other),
        })?;
    let mut kept = s.clone();
    kept.expires_ns = s.target_expires_ns;
    kept.replicated = true;
    node.store().put_snapshot(id, Role::Target, &kept)?;
    tracing::info!(%id, snapshot = %view.name, "policy snapshot kept");
    Ok(snapshot_view(&r, &kept))
}

/// Every snapshot kept on this node (of one relationship, or all), both roles.
pub fn list(node: &Node, only: Option<&RelationshipId>) -> Result<Vec<SnapshotView>> {
    let mut out = Vec::new();
    for role in [Role::Source, Role::Target] {
        // Read first: the store's lock must not be held across `node.get`.
        let all = node.store().snapshots(only, role)?;
        for (id, s) in all {
            // A record left by a relationship gone from this role is not listed.
            if let Ok(r) = node.get(&id, role) {
                out.push(snapshot_view(&r, &s));
            }
        }
    }
    Ok(out)
}

/// Deletes snapshot `sid` of `id` on this node, queued or not.
pub fn release(node: &Node, id: &RelationshipId, sid: SnapshotId) -> Result<SnapshotView> {
    for role in [Role::Source, Role::Target] {
        let found = node.store().snapshot(id, role, sid)?;
        if let Some(s) = found {
            let r = node.get(id, role)?;
            remove(node, &r, &s)?;
            return Ok(snapshot_view(&r, &s));
        }
    }
    Err(Error::Missing(format!(
        "no snapshot {sid} of relationship {id} on this node"
    )))
}

fn remove(node: &Node, r: &Relationship, s: &Snapshot) -> Result<()> {
    match r.role {
        Role::Source => {
            let src = super::paths::source_dir(node, r)?;
            mover::keep::release(src.fd(), &s.name())?;
        }
        Role::Target => {
            let root = target::writable_root_fd(node, r)?;
            mover::keep::release(root.as_fd(), &s.name())?;
        }
    }
    node.store().delete_snapshot(&r.id, r.role, s.id)?;
    tracing::info!(id = %r.id, snapshot = %s.name(), "policy snapshot released");
    Ok(())
}

/// One pass: fires the policies due, then expires what is due on both sides.
pub fn tick(node: &Node) {
    let now = node.clock.now();
    let policies = match node.store().policies() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("reading snapshot policies: {e}");
            return;
        }
    };
    for (p, last) in policies {
        let last = chrono::DateTime::from_timestamp_nanos(last);
        if p.fired(last, now).is_some() {
            let at = now.timestamp_nanos_opt().unwrap_or(i64::MAX);
            if let Err(e) = node.store().policy_fired(&p.name, at) {
                tracing::error!(policy = %p.name, "recording a fire: {e}");
                continue;
            }
            take_for(node, &p);
        }
    }
    owed::take_owed(node);
    expire(node);
}

fn expire(node: &Node) {
    let now = node.clock.now_ns();
    for role in [Role::Source, Role::Target] {
        let all = match node.store().snapshots(None, role) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("reading kept snapshots: {e}");
                return;
            }
        };
        for (id, s) in all {
            // A queued snapshot holds data the target does not have yet: kept until sent,
            // unless its relationship no longer replicates snapshots (it never will be).
            let queue_dead = || {
                node.get(&id, role)
                    .map_or(true, |r| r.ended || !r.spec.mode.keeps_snapshots())
            };
            let due = s.expires_ns.is_some_and(|t| t <= now) && (s.replicated || queue_dead());
            if !due {
                continue;
            }
            let removed = match node.get(&id, role) {
                Ok(r) => remove(node, &r, &s),
                // A record left by a relationship gone from this role (another node of the
                // cluster took it over, and this one forgot its copy): its copy is not this
                // node's to release any more, and without the record nothing would try
                // again at every pass.
                Err(Error::NotFound(_)) => node.store().delete_snapshot(&id, role, s.id),
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                tracing::warn!(%id, snapshot = %s.name(), "expiring a policy snapshot: {e}");
            }
        }
    }
}

/// Runs `tick` every POLICY_TICK until the node shuts down (on its own thread: taking a
/// snapshot clones a tree).
pub fn run(node: std::sync::Arc<Node>) {
    while !node.shutting_down() {
        tick(&node);
        std::thread::sleep(POLICY_TICK);
    }
}

/// Where snapshot `s` is kept under the tree at `root` (`.snapshot/<id>_<policy>`): what a job
/// of a queued policy snapshot reads on the source.
pub(crate) fn source_of(root: &std::path::Path, s: &Snapshot) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    root.join(std::ffi::OsStr::from_bytes(mover::tree::SNAPSHOT_DIR))
        .join(s.name())
}

/// Asks the target to keep the recovery point the job of `s` committed.
pub(crate) async fn keep_on_target(
    node: &Node,
    r: &Relationship,
    s: &Snapshot,
    recovery_point: &str,
) -> Result<()> {
    let req = crate::peer::PeerRequest::KeepSnapshot {
        id: r.id.clone(),
        epoch: r.epoch,
        snapshot: s.clone(),
        recovery_point: recovery_point.to_string(),
    };
    match peer_call::call(node, r, &req).await? {
        crate::peer::PeerAnswer::Ok => Ok(()),
        other => Err(peer_call::refused(r, other)),
    }
}

/// A source relationship is deleted on this node (or becomes a target): it releases its
/// snapshots, as a queue of them means nothing without the relationship. A target keeps its
/// replicated ones as data (`target::forget_snapshots`).
pub(crate) fn forget(node: &Node, id: &RelationshipId) {
    node.forget_snapshots(id, Role::Source, |r, s| remove(node, r, s));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_snapshot_record_of_a_relationship_gone_from_this_node_is_dropped_once() {
        let dir = tempfile::tempdir().unwrap();
        let (node, _clock) = crate::daemon::test_node(dir.path());
        // Left by a relationship this node forgot (another node of the cluster holds it).
        let gone = RelationshipId::new_random();
        let s = Snapshot {
            id: SnapshotId(3),
            policy: PolicyName::parse("daily").unwrap(),
            taken_ns: 1,
            expires_ns: Some(2),
            target_expires_ns: None,
            replicated: false,
        };
        node.store().put_snapshot(&gone, Role::Source, &s).unwrap();
        expire(&node);
        let left = node.store().snapshots(Some(&gone), Role::Source).unwrap();
        assert!(left.is_empty(), "{left:?}");
    }
}
