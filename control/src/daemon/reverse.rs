//! Failback on this node: `mover relationship reverse` driven from either end, and the steps
//! the other end asks for (`crate::reverse` has the protocol and its rules). The node that
//! becomes the target goes back to the common recovery point through the data plane
//! (`mover::receiver::aside`), which keeps what it changed since aside and lists it.

use super::api_common::{check, id, optional_body, Answer, ApiError, Ctx};
use super::{api_schemas, lock, paths, peer_call, source, target, view, Node};
use crate::auth::Privilege;
use crate::model::{Relationship, RelationshipId, ReplicaOptions, Role};
use crate::peer::{PeerAnswer, PeerRequest};
use crate::reverse::{
    aside_name, epochs_agree, host_port, next_epoch, reversed_spec, Discarded, DiscardedItem,
    ReverseAsk, ReverseBody, ReverseReply, MAX_LISTED,
};
use crate::tls::Fingerprint;
use crate::{Error, Result};
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long the node becoming the target waits for a job of its own to stop (its target was
/// released, so the job fails at its next exchange).
const JOB_STOP_WAIT: Duration = Duration::from_secs(30);

/// What `reverse` answers: this node's view of the relationship after it, the common
/// recovery point, and what the node that became the target kept aside.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Reversed {
    pub relationship: view::View,
    pub epoch: u64,
    /// The common recovery point (32 hex digits) and the source time it holds.
    pub common_recovery_point: String,
    pub common_recovery_point_time: Option<String>,
    /// The changes the old source made after the common point: kept aside on that node
    /// (`discarded_on`: `this_node` or `peer`), listed.
    pub discarded_on: &'static str,
    pub discarded: Discarded,
}

/// Claims the relationship for a reverse on this node (one at a time), released on drop.
struct Claim<'a>(&'a Node, RelationshipId);

impl<'a> Claim<'a> {
    fn take(node: &'a Node, id: &RelationshipId) -> Result<Claim<'a>> {
        if !lock(&node.reversing).insert(id.clone()) {
            return Err(Error::Conflict(format!(
                "relationship {id} is being reversed already"
            )));
        }
        Ok(Claim(node, id.clone()))
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        lock(&self.0.reversing).remove(&self.1);
    }
}

fn blocking_err(e: tokio::task::JoinError) -> Error {
    Error::Conflict(format!("reverse task failed: {e}"))
}

/// Reverse changes both roles of this node's side: a token needs both write privileges.
fn both_privileges(node: &Node, h: &HeaderMap) -> Answer<()> {
    check(node, h, Privilege::SourceWrite)?;
    check(node, h, Privilege::TargetWrite)?;
    Ok(())
}

/// `POST /v1/replication/source-relationships/{id}/reverse`.
#[utoipa::path(
    post,
    path = "/v1/replication/source-relationships/{id}/reverse",
    params(("id" = String, Path, description = "relationship id: 32 lowercase hex digits", pattern = "^[0-9a-f]{32}$")),
    tag = "source",
    responses(
        (status = 200, description = "reversed: this node is now the target", body = Reversed),
        api_schemas::PeerChange,
    )
)]
pub(super) async fn from_source(
    axum::extract::State(node): Ctx,
    h: HeaderMap,
    Path(i): Path<String>,
) -> Answer<Json<Reversed>> {
    both_privileges(&node, &h)?;
    let id = id(&i)?;
    super::owners::check_held(&node, &id)?;
    Ok(Json(drive_from_source(&node, &id).await?))
}

/// `POST /v1/replication/target-relationships/{id}/reverse`, body `ReverseBody`.
#[utoipa::path(
    post,
    path = "/v1/replication/target-relationships/{id}/reverse",
    params(("id" = String, Path, description = "relationship id: 32 lowercase hex digits", pattern = "^[0-9a-f]{32}$")),
    request_body = Option<ReverseBody>,
    tag = "target",
    responses(
        (status = 200, description = "reversed: this node is now the source", body = Reversed),
        api_schemas::PeerChange,
    )
)]
pub(super) async fn from_target(
    axum::extract::State(node): Ctx,
    h: HeaderMap,
    Path(i): Path<String>,
    b: Bytes,
) -> Answer<Json<Reversed>> {
    both_privileges(&node, &h)?;
    let id = id(&i)?;
    let b: ReverseBody = optional_body(&b, "reverse")?;
    let Some(addr) = b.source_address else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "a target does not know where its source's daemon listens: give source_address \
             (host or host:port of its peer port; `--source-address` on the command line)"
                .into(),
        ));
    };
    let (host, port) = host_port(&addr)?;
    Ok(Json(drive_from_target(&node, &id, host, port).await?))
}

fn job_running_here(node: &Node, id: &RelationshipId) -> bool {
    lock(&node.jobs).get(id).is_some_and(|j| !j.finished())
}

fn mid_job(id: &RelationshipId) -> Error {
    Error::Conflict(format!(
        "a job of relationship {id} is running; wait until it ends (or abort it) and reverse again"
    ))
}

fn unexpected(r: &Relationship, a: PeerAnswer) -> Error {
    match a {
        a @ (PeerAnswer::Refused { .. } | PeerAnswer::NotFound) => peer_call::refused(r, a),
        other => peer_call::refused(
            r,
            PeerAnswer::Refused {
                message: format!("unexpected answer {other:?}"),
            },
        ),
    }
}

/// Run on the source: the target is released (made writable if it was not), this node goes
/// back to the common point and becomes the target, then the old target becomes the source.
async fn drive_from_source(node: &Arc<Node>, id: &RelationshipId) -> Result<Reversed> {
    let r = node.get(id, Role::Source)?;
    if !r.authorized {
        return Err(Error::Conflict(format!(
            "relationship {id} is awaiting authorization; there is nothing to reverse"
        )));
    }
    if job_running_here(node, id) {
        return Err(mid_job(id));
    }
    let _claim = Claim::take(node, id)?;
    // No job starts from here on (the scheduler starts none for an ended relationship).
    lock(&node.wanted).remove(id);
    let was_ended = r.ended;
    node.modify(id, Role::Source, |x| x.ended = true)?;
    let undo = || {
        if let Err(e) = node.modify(id, Role::Source, |x| x.ended = was_ended) {
            tracing::warn!(%id, "putting back the relationship after a failed reverse: {e}");
        }
    };
    let ask = PeerRequest::Reverse(ReverseAsk::Release {
        id: id.clone(),
        epoch: r.epoch,
    });
    let (rp, rp_ns, their_epoch) = match peer_call::call(node, &r, &ask).await {
        Ok(PeerAnswer::Reversed(ReverseReply::Released {
            recovery_point: Some(rp),
            recovery_point_ns,
            epoch,
        })) => (rp, recovery_point_ns, epoch),
        Ok(PeerAnswer::Reversed(ReverseReply::Released { .. })) => {
            undo();
            return Err(Error::Conflict(format!(
                "the target of relationship {id} holds no recovery point: there is no common point to go back to"
            )));
        }
        Ok(other) => {
            undo();
            return Err(unexpected(&r, other));
        }
        Err(e) => {
            undo();
            return Err(e);
        }
    };
    // The target is released from here: a failure below leaves it writable and ended, as
    // after make-writable (reverse again, or reconnect).
    let epoch = next_epoch(r.epoch, their_epoch);
    let discarded = become_target(node, id, &rp, epoch).await?;
    let commit = PeerRequest::Reverse(ReverseAsk::Commit {
        id: id.clone(),
        epoch,
        port: node.opts.listen.port(),
    });
    // This node is the target now: the peer must take the source role. A lost answer or a
    // peer down for a moment is tried again; past that, the operator finishes it there.
    let mut attempt = 1;
    loop {
        match peer_call::call(node, &r, &commit).await {
            Ok(PeerAnswer::Reversed(ReverseReply::Source)) => break,
            Ok(other) => return Err(finish_hint(node, id, epoch, unexpected(&r, other))),
            Err(e) if attempt >= COMMIT_ATTEMPTS => return Err(finish_hint(node, id, epoch, e)),
            Err(e) => {
                tracing::warn!(%id, attempt, "the peer did not take the source role yet: {e}");
                attempt += 1;
                tokio::time::sleep(COMMIT_RETRY_PAUSE).await;
            }
        }
    }
    tracing::info!(%id, epoch, "reversed: this node is the target now");
    Ok(Reversed {
        relationship: view::view(node, node.get(id, Role::Target)?),
        epoch,
        common_recovery_point: rp,
        common_recovery_point_time: rp_ns.map(crate::clock::rfc3339),
        discarded_on: "this_node",
        discarded,
    })
}

/// Tries of the last step of a reverse run on the source (the peer becoming the source).
const COMMIT_ATTEMPTS: u32 = 5;
const COMMIT_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// The error of a reverse whose last step failed, saying how to finish it: this node is the
/// target at `epoch`; run on the peer, a reverse naming this node finds it so and completes.
fn finish_hint(node: &Node, id: &RelationshipId, epoch: u64, e: Error) -> Error {
    Error::Conflict(format!(
        "this node is the target of relationship {id} now (epoch {epoch}), but the peer did not \
         take the source role: {e}. Finish the reverse on the peer: `mover relationship reverse \
         {id} --source-address <this node's address>:{}`",
        node.opts.listen.port()
    ))
}

/// Run on the target: it is released (made writable if it was not), the source (at `host`,
/// `port`) goes back to the common point and becomes the target, then this node becomes the
/// source and starts a job.
async fn drive_from_target(
    node: &Arc<Node>,
    id: &RelationshipId,
    host: String,
    port: u16,
) -> Result<Reversed> {
    let r = node.get(id, Role::Target)?;
    if !r.authorized {
        return Err(Error::Conflict(format!(
            "relationship {id} was never authorized here; there is nothing to reverse"
        )));
    }
    if !r.ended && r.job_running {
        return Err(mid_job(id));
    }
    let _claim = Claim::take(node, id)?;
    let n = node.clone();
    let i = id.clone();
    let (rp, rp_ns, r) = tokio::task::spawn_blocking(move || release(&n, &i))
        .await
        .map_err(blocking_err)??;
    let rp = rp.ok_or_else(|| {
        Error::Conflict(format!(
            "this target holds no recovery point of relationship {id}: there is no common point to go back to"
        ))
    })?;
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Invalid(format!("source address {host}:{port} does not resolve")))?;
    let pin = r.peer_fingerprint.clone().map(Fingerprint);
    let ask = PeerRequest::Reverse(ReverseAsk::BecomeTarget {
        id: id.clone(),
        epoch: r.epoch,
        recovery_point: rp.clone(),
    });
    let peer = |message: String| Error::Peer {
        peer: format!("{host}:{port}"),
        message,
    };
    let (answer, _) = crate::peer_wire::call(addr, &node.identity, pin.as_ref(), &ask).await?;
    let (discarded, epoch) = match answer {
        PeerAnswer::Reversed(ReverseReply::Target { discarded, epoch }) => (discarded, epoch),
        PeerAnswer::Refused { message } => return Err(peer(message)),
        PeerAnswer::NotFound => {
            return Err(peer(format!(
                "the node at {host}:{port} is not the source of relationship {id}"
            )))
        }
        other => return Err(peer(format!("unexpected answer {other:?}"))),
    };
    let n = node.clone();
    let i = id.clone();
    let h = host.clone();
    let now = tokio::task::spawn_blocking(move || become_source(&n, &i, h, port, epoch))
        .await
        .map_err(blocking_err)??;
    tracing::info!(%id, epoch, "reversed: this node is the source now");
    Ok(Reversed {
        relationship: view::view(node, now),
        epoch,
        common_recovery_point: rp,
        common_recovery_point_time: rp_ns.map(crate::clock::rfc3339),
        discarded_on: "peer",
        discarded,
    })
}

/// Target side, first step: made writable unless it is already (an unfinished job reverted to
/// the last recovery point, the protection lifted, ended: the source stops), checked as a
/// source directory, and its last recovery point read. Blocking.
fn release(
    node: &Node,
    id: &RelationshipId,
) -> Result<(Option<String>, Option<i64>, Relationship)> {
    let r = node.get(id, Role::Target)?;
    let r = if r.ended {
        if r.read_only.is_some() {
            return Err(Error::Conflict(format!(
                "making the target of relationship {id} writable did not finish; it finishes at the daemon's next start"
            )));
        }
        r
    } else {
        target::make_writable(node, id)?
    };
    let dir = paths::target_identity(node, &r)?;
    paths::check_source(node, dir.path())?;
    let rp = mover::receiver::recovery_point(&dir.proc_path())
        .map_err(|e| Error::Conflict(format!("reading the target's recovery point: {e}")))?;
    Ok((rp.map(|p| p.id.to_string()), r.recovery_point_ns, r))
}

/// Source side: stops replicating, goes back to recovery point `rp` (what changed since is
/// kept aside and listed), protects the directory and becomes the target at `epoch`.
async fn become_target(
    node: &Arc<Node>,
    id: &RelationshipId,
    rp: &str,
    epoch: u64,
) -> Result<Discarded> {
    lock(&node.wanted).remove(id);
    node.modify(id, Role::Source, |x| x.ended = true)?;
    if !source::stop_job(node, id, JOB_STOP_WAIT).await {
        return Err(Error::Conflict(format!(
            "the job of relationship {id} did not stop within {}s; reverse again",
            JOB_STOP_WAIT.as_secs()
        )));
    }
    let (n, i, rp) = (node.clone(), id.clone(), rp.to_string());
    tokio::task::spawn_blocking(move || become_target_blocking(&n, &i, &rp, epoch))
        .await
        .map_err(blocking_err)?
}

fn become_target_blocking(
    node: &Node,
    id: &RelationshipId,
    rp: &str,
    epoch: u64,
) -> Result<Discarded> {
    let r = node.get(id, Role::Source)?;
    // The manifest written in the background is the one compared with.
    super::source::settle_manifest(node, id, false).map_err(|e| {
        Error::Conflict(format!(
            "the data container did not write this source's manifest ({e}); try again"
        ))
    })?;
    let (sent, point) = mover::receiver::aside::sent_point(&node.state_dir(id))
        .map_err(|e| Error::Conflict(format!("reading what this source last sent: {e}")))?
        .ok_or_else(|| {
            Error::Conflict(format!(
                "this source keeps no record of what its target holds (relationship {id}): no common recovery point to go back to"
            ))
        })?;
    let sent = format!("{sent:032x}");
    if sent != rp {
        return Err(Error::Conflict(format!(
            "the target's last recovery point {rp} is not the one this source last sent ({sent}): \
             they have no common point to go back to; `mover relationship reconnect {id}` on this \
             node replicates to it again instead"
        )));
    }
    let dir = paths::source_dir(node, &r)?;
    let mut t = r.clone();
    t.role = Role::Target;
    // Where the new source reaches this node is its business: its polls bring its spec, and
    // with it the address, within seconds.
    t.spec = reversed_spec(
        &r.spec,
        node.opts.listen.ip().to_string(),
        node.opts.listen.port(),
    );
    paths::check_target(node, &t, dir.path())?;
    let backing = node.mount_dir(id);
    let (mode, via) = node
        .host
        .protect(id, dir.pin(), &backing, ReplicaOptions::default())?;
    let name = aside_name(epoch, node.clock.now_ns());
    let report = match mover::receiver::aside::set_aside(&via, &point, &name) {
        Ok(rep) => rep,
        Err(e) => {
            if let Err(u) = node.host.release(id, dir.path(), &backing) {
                tracing::error!(%id, "lifting the protection after a failed reverse: {u}");
            }
            return Err(Error::Conflict(format!(
                "going back to the common recovery point: {e}"
            )));
        }
    };
    t.authorized = true;
    t.ended = false;
    t.job_running = false;
    t.last_attempt = None;
    t.peer_unreachable = false;
    t.read_only = Some(mode);
    t.pinned = Some(dir.pin().clone());
    t.path_error = None;
    t.replica = ReplicaOptions::default();
    t.epoch = epoch;
    // Its policy snapshots belong to the direction that ends (the queue would never go).
    super::snapshots::forget(node, id);
    node.store().set_role(&t)?;
    // What this node kept as a source is about a direction that no longer exists.
    lock(&node.jobs).remove(id);
    if let Err(e) = super::source::settle_manifest(node, id, true) {
        tracing::warn!(%id, "the data container's manifest of a reversed relationship: {e}");
    }
    lock(&node.hot_files).remove(id);
    // Nothing else uses it; one left behind is only disk space.
    let _ = std::fs::remove_dir_all(node.state_dir(id));
    lock(&node.last_contact).insert(id.clone(), node.clock.instant());
    lock(&node.reconnecting).insert(id.clone(), node.clock.now_ns());
    tracing::info!(%id, epoch, added = report.added, modified = report.modified, deleted = report.deleted, "back at the common recovery point; this node is the target now");
    let aside = report
        .dir
        .as_deref()
        .map(|d| format!(", kept aside in {d}"))
        .unwrap_or_default();
    node.event(
        crate::events::EventKind::RelationshipReversed,
        Some((id, Role::Target)),
        format!(
            "reversed (failback, epoch {epoch}): this node is the target now, back at the common recovery point; what it changed since ({} added, {} modified, {} deleted) was set aside{aside}",
            report.added, report.modified, report.deleted
        ),
    );
    Ok(discarded(&dir.pin().path, report))
}

fn discarded(root: &str, r: mover::receiver::aside::AsideReport) -> Discarded {
    let truncated = r.items.len() > MAX_LISTED;
    Discarded {
        directory: r.dir.map(|d| format!("{}/{d}", root.trim_end_matches('/'))),
        added: r.added,
        modified: r.modified,
        deleted: r.deleted,
        metadata: r.metadata,
        items: r
            .items
            .into_iter()
            .take(MAX_LISTED)
            .map(|i| DiscardedItem {
                path: i.path,
                change: i.change.name().to_string(),
                kept_aside: i.kept_aside,
            })
            .collect(),
        truncated,
    }
}

/// Target side, last step: the released target becomes the source at `epoch`, replicating
/// to `host:port`, and starts a job now. Blocking.
fn become_source(
    node: &Node,
    id: &RelationshipId,
    host: String,
    port: u16,
    epoch: u64,
) -> Result<Relationship> {
    let r = node.get(id, Role::Target)?;
    if !r.ended || r.read_only.is_some() {
        return Err(Error::Conflict(format!(
            "relationship {id} is not released on this target; it cannot become the source"
        )));
    }
    let dir = paths::target_identity(node, &r)?;
    paths::check_source(node, dir.path())?;
    let mut s = r.clone();
    s.role = Role::Source;
    s.spec = reversed_spec(&r.spec, host, port);
    s.authorized = true;
    s.ended = false;
    s.job_running = true;
    s.last_attempt = None;
    s.peer_unreachable = false;
    s.read_only = None;
    s.pinned = Some(dir.pin().clone());
    s.path_error = None;
    s.replica = ReplicaOptions::default();
    s.epoch = epoch;
    // The kept policy snapshots stay as data, writable, outside the tree it now sends.
    target::forget_snapshots(node, id);
    node.store().set_role(&s)?;
    lock(&node.reported).remove(id);
    lock(&node.last_contact).remove(id);
    lock(&node.routes).retain(|_, (rid, _)| rid != id);
    lock(&node.reconnecting).insert(id.clone(), node.clock.now_ns());
    lock(&node.wanted).insert(id.clone());
    node.event(
        crate::events::EventKind::RelationshipReversed,
        Some((id, Role::Source)),
        format!(
            "reversed (failback, epoch {epoch}): this node is the source now, replicating to {}",
            s.spec.target_address
        ),
    );
    Ok(s)
}

/// The relationship `id` in `role` here, if `fp` is the certificate pinned for it.
fn pinned_as(
    node: &Node,
    id: &RelationshipId,
    role: Role,
    fp: &Fingerprint,
) -> std::result::Result<Relationship, PeerAnswer> {
    let r = match node.get(id, role) {
        Ok(r) => r,
        Err(Error::NotFound(_)) => return Err(PeerAnswer::NotFound),
        Err(e) => return Err(PeerAnswer::refusal(e)),
    };
    if r.peer_fingerprint.as_deref() != Some(fp.0.as_str()) {
        return Err(PeerAnswer::refused(format!(
            "peer not authorized for relationship {id}: its certificate {fp} is not the one pinned for it"
        )));
    }
    Ok(r)
}

/// Refuses a peer whose epoch does not agree with this node's (split brain).
fn agree(r: &Relationship, theirs: u64) -> std::result::Result<(), PeerAnswer> {
    if epochs_agree(r.epoch, theirs, r.role == Role::Target) {
        Ok(())
    } else {
        Err(PeerAnswer::refused(r.split_brain(theirs).unwrap_or_else(
            || format!("split brain refused: relationship {} epochs disagree", r.id),
        )))
    }
}

/// Serves a reverse step the peer asks for; `from`: the address its connection came from
/// (where a node that becomes the source replicates to).
pub(super) async fn serve(
    node: &Arc<Node>,
    fp: &Fingerprint,
    from: Option<IpAddr>,
    ask: ReverseAsk,
) -> PeerAnswer {
    match step(node, fp, from, ask).await {
        Ok(a) | Err(a) => a,
    }
}

async fn step(
    node: &Arc<Node>,
    fp: &Fingerprint,
    from: Option<IpAddr>,
    ask: ReverseAsk,
) -> std::result::Result<PeerAnswer, PeerAnswer> {
    let fail = PeerAnswer::refusal;
    match ask {
        ReverseAsk::Release { id, epoch } => {
            let r = pinned_as(node, &id, Role::Target, fp)?;
            agree(&r, epoch)?;
            let _claim = Claim::take(node, &id).map_err(fail)?;
            let (n, i) = (node.clone(), id.clone());
            let (rp, rp_ns, r) = tokio::task::spawn_blocking(move || release(&n, &i))
                .await
                .map_err(|e| fail(blocking_err(e)))?
                .map_err(fail)?;
            Ok(PeerAnswer::Reversed(ReverseReply::Released {
                recovery_point: rp,
                recovery_point_ns: rp_ns,
                epoch: r.epoch,
            }))
        }
        ReverseAsk::BecomeTarget {
            id,
            epoch,
            recovery_point,
        } => {
            // Already the target from a reverse whose last step (the peer taking the source
            // role) was lost: done, so the peer can finish it (`finish_hint`).
            if let Ok(t) = pinned_as(node, &id, Role::Target, fp) {
                if t.epoch > epoch && t.authorized && !t.ended {
                    tracing::info!(%id, epoch = t.epoch, "reverse finished by the peer");
                    return Ok(PeerAnswer::Reversed(ReverseReply::Target {
                        discarded: Discarded::default(),
                        epoch: t.epoch,
                    }));
                }
            }
            let r = pinned_as(node, &id, Role::Source, fp)?;
            // In a cluster, only the node holding the relationship may give it up (a stale
            // copy on a node back after a takeover must not).
            super::owners::check_held(node, &id).map_err(fail)?;
            agree(&r, epoch)?;
            let _claim = Claim::take(node, &id).map_err(fail)?;
            let new = next_epoch(r.epoch, epoch);
            let was_ended = r.ended;
            match become_target(node, &id, &recovery_point, new).await {
                Ok(discarded) => Ok(PeerAnswer::Reversed(ReverseReply::Target {
                    discarded,
                    epoch: new,
                })),
                Err(e) => {
                    // Still the source: it replicates again as before (unless it had ended).
                    let _ = node.modify(&id, Role::Source, |x| x.ended = was_ended);
                    Err(fail(e))
                }
            }
        }
        ReverseAsk::Commit { id, epoch, port } => {
            let r = pinned_as(node, &id, Role::Target, fp)?;
            if epoch <= r.epoch {
                return Err(PeerAnswer::refused(r.split_brain(epoch).unwrap_or_else(
                    || format!("relationship {id} is at epoch {epoch} here already"),
                )));
            }
            let ip =
                from.ok_or_else(|| PeerAnswer::refused("the peer's address is unknown".into()))?;
            let _claim = Claim::take(node, &id).map_err(fail)?;
            let n = node.clone();
            tokio::task::spawn_blocking(move || {
                become_source(&n, &id, ip.to_string(), port, epoch)
            })
            .await
            .map_err(|e| fail(blocking_err(e)))?
            .map_err(fail)?;
            Ok(PeerAnswer::Reversed(ReverseReply::Source))
        }
    }
}

/// A request for relationship `id` as a target, to a node where it is the source: the asker
/// is an old target or source from before a reverse (restored from a backup, say). Refused as
/// split brain, saying this node is newer.
pub(super) fn stale_peer(
    node: &Node,
    id: &RelationshipId,
    fp: &Fingerprint,
    theirs: Option<u64>,
) -> Option<PeerAnswer> {
    let r = node
        .get(id, Role::Source)
        .ok()
        .filter(|r| r.peer_fingerprint.as_deref() == Some(fp.0.as_str()))?;
    let asked = theirs.map_or_else(|| "an older epoch".to_string(), |e| format!("epoch {e}"));
    Some(PeerAnswer::refused(format!(
        "split brain refused: relationship {id} was reversed and this node is its source now \
         (epoch {}); the peer asked as its source at {asked}, so this side is newer. On the \
         peer (its state is from before the reverse, e.g. restored from a backup): delete the \
         relationship there, and create it again from this node",
        r.epoch
    )))
}
