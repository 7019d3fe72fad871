//! Which node holds each source relationship, kept in etcd, and the takeover of a dead
//! owner's relationships by another node of the source cluster.
//!
//! Every node publishes its source relationships as `owners/<id>` records (`Held`: the owner,
//! its peer identity's fingerprint, the relationship as stored), rewritten when what a takeover
//! needs changes (`definition`: a job's start and outcome are not such a change, so a job
//! costs no etcd write here), at most once a `PUBLISH_EVERY`. A relationship deleted, ended or
//! reversed into a target leaves its record as a tombstone (ended), which a stale copy on a
//! node that was down obeys. Of two copies, the higher epoch wins (a failover, reconnect or
//! reverse moved it on), then, at one epoch, the node the record names.
//!
//! The leader takes over the relationships of an owner that has been down for
//! `TAKEOVER_AFTER` (any other node `LEADER_FIRST` later), when it can run them:
//! - it presents the same peer identity (the target pins the source's certificate, so the
//!   nodes of a source cluster that take over each other's relationships share one);
//! - it sees the pinned source directory at the same path and inode (the shared file system;
//!   each client of one has its own device number, so the new owner pins its own);
//! - it is not drained, and no target relationship of that id is stored here.
//!
//! A takeover is one etcd transaction on the record as this node read it and on the owner
//! still having no heartbeat (a second taker, the owner writing meanwhile or coming back
//! make it fail); the relationship then goes into this node's store with a job owed, so the
//! new owner catches up at once. An owner that finds its relationship held by another node
//! (it came back after a takeover) drops its copy.
//!
//! Fencing: a node starts a job of a relationship, polls its target about it, and takes an
//! operator's change to it only while it has a live etcd session and the record names it
//! (`runs_here`, `check_held`; a relationship just created waits for its record). A node cut
//! off from etcd loses its session within a lease's life, well before `TAKEOVER_AFTER`, so
//! the old and the new owner never both start jobs. A job the old owner had under way when it
//! was cut off goes on, and is fenced by term: each record carries its owner's term, raised
//! whenever the record passes to another holder, and every ticket request carries the term
//! its node holds the relationship at (`term_here`). The target refuses a term below the
//! highest it has seen and voids the sessions it granted before a higher one arrived
//! (`target::ticket`); the receiver takes one session at a time and commits each whole. So
//! the old owner's session under way ends (and commits) before the new owner's first begins,
//! and no session of the old owner begins after it: the recovery point never moves back. A
//! job also starts no further session once its node's view names another holder
//! (`lost_here`).

use super::Node;
use crate::cluster::{Holding, Membership, NodeName};
use crate::events::EventKind;
use crate::model::{PinnedDir, Relationship, RelationshipId, Role};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a node compares its relationships with their records (and the leader looks for
/// owners gone down).
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How long an owner must have been down (its heartbeat gone, so `cluster::DOWN_BOUND` after
/// it stopped) before the leader takes over its relationships. Longer than a lease's life, so
/// an owner merely cut off from etcd has stopped starting jobs well before.
pub const TAKEOVER_AFTER: Duration = Duration::from_secs(10);
/// How much longer the other nodes wait than the leader before taking over: the leader goes
/// first, and a relationship the leader cannot run (drained, another identity, not on the
/// shared file system) is still taken by a node that can.
pub const LEADER_FIRST: Duration = Duration::from_secs(10);
/// Longest a pass waits for the source directories of relationships it could take over to
/// be looked at.
const LOOK_WITHIN: Duration = Duration::from_secs(5);
/// Distinct warnings a node remembers having logged (each is logged once until then).
const MAX_TOLD: usize = 1024;
/// Kind of the records, below `cluster::KEY_ROOT`.
const KIND: &str = "owners";
/// Policy snapshot ids a record reserves for its owner ahead of the last it used. A snapshot
/// is named by its id on the shared source and on the target, so a new owner must not give
/// an id its old owner gave: it starts at the reservation. The owner writes a new one before
/// fewer than half a block are left (one etcd write per 512 snapshots), and takes no snapshot
/// past it (`may_use_snapshot_id`).
pub const SNAPSHOT_ID_BLOCK: u64 = 1024;
/// Most writes a delete call tries to end a relationship's record with (`bury`), and how long
/// it waits after a lost one for the watch to bring the write that won.
const BURY_TRIES: usize = 3;
const BURY_WAIT: Duration = Duration::from_millis(200);

/// One relationship's record in etcd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub owner: NodeName,
    /// The owner's peer identity (the target pins it).
    pub fingerprint: String,
    /// As the owner stores it (`published`); a tombstone is ended; in a takeover's record
    /// `job_running` says the new owner owes a job.
    pub relationship: Relationship,
    /// Every policy snapshot id the owner gave, or may give before it writes the record
    /// again, is below this (`SNAPSHOT_ID_BLOCK`). 0 in a record of an earlier release.
    #[serde(default)]
    pub snapshot_ids_below: u64,
    /// The owner's term, from 1 in the live records this release writes: raised each time
    /// the record passes to a holder that did not write it (a takeover, a copy winning it
    /// back), never lowered (but by a takeover given back before its taker asked anything).
    /// The owner's ticket requests carry it, and the target refuses those of a term below
    /// the highest it has seen (`target::ticket`), so an old owner still running a job cannot
    /// commit after its successor. 0 in a record of an earlier release, whose nodes ask with
    /// none (0), which the target does not fence.
    #[serde(default)]
    pub term: u64,
}

/// The reservation a record should carry: the one it has while half a block is left above
/// `last`, else a new one a block and more above it.
fn reserve(last: u64, below: u64) -> u64 {
    if last.saturating_add(SNAPSHOT_ID_BLOCK / 2) <= below {
        below
    } else {
        (last / SNAPSHOT_ID_BLOCK + 2).saturating_mul(SNAPSHOT_ID_BLOCK)
    }
}

fn key(id: &RelationshipId) -> String {
    format!("{KIND}/{id}")
}

/// A relationship as its record carries it (a job owed is the new owner's to decide).
fn published(r: &Relationship) -> Relationship {
    let mut r = r.clone();
    r.job_running = false;
    r
}

/// What must be current in a record for a takeover: everything but a job's outcome and the
/// target's reachability. Those change at every job, which would cost every job an etcd write;
/// a record keeps them as of its last write, so its recovery point is never newer than the
/// target's (a new owner's first job, owed at once, brings them up to date).
fn definition(r: &Relationship) -> Relationship {
    let mut r = published(r);
    r.last_attempt = None;
    r.recovery_point_ns = None;
    r.peer_unreachable = false;
    r
}

/// What one pass saw.
pub struct Seen<'a> {
    pub me: &'a NodeName,
    pub fingerprint: &'a str,
    /// This node is not drained.
    pub may_take: bool,
    /// This node's relationships, both roles.
    pub local: &'a [Relationship],
    /// Ids of relationships stored here that this release cannot read: their records are
    /// left as they are (neither tombstoned nor taken over) until the rows are repaired.
    pub unreadable: &'a BTreeSet<String>,
    /// The last policy snapshot id this node gave each relationship (none: 0).
    pub snapshot_ids: &'a BTreeMap<RelationshipId, u64>,
    /// Every record, with the bytes etcd holds (what a transaction compares).
    pub records: &'a BTreeMap<RelationshipId, (Held, Vec<u8>)>,
    /// Owners down for `TAKEOVER_AFTER` at least (the leader), or that plus `LEADER_FIRST`.
    pub overdue: &'a BTreeSet<NodeName>,
    /// The relationship's source directory as this node sees it (same path, a directory of
    /// the same inode, this node's device), or `None`.
    pub sees: &'a dyn Fn(&Relationship) -> Option<PinnedDir>,
}

#[derive(Debug, PartialEq)]
pub enum Action {
    /// Write this node's record (`expected`: the record etcd holds, `None` for none). A
    /// record whose relationship is ended is a tombstone: the relationship was deleted, ended
    /// or reversed where it was held, and a stale copy elsewhere obeys it.
    Publish {
        id: RelationshipId,
        held: Box<Held>,
        expected: Option<Vec<u8>>,
        /// Raise this node's snapshot id counter to at least this first (0: leave it).
        ids_from: u64,
    },
    /// Another node holds it now, or a newer incarnation of it ended: forget the local copy.
    Drop { id: RelationshipId, owner: NodeName },
    /// Take over a dead owner's relationship (the transaction also checks the owner is
    /// still down).
    Take {
        held: Box<Held>,
        from: NodeName,
        expected: Vec<u8>,
        /// This node's snapshot ids go on above this: the old owner's reservation.
        ids_from: u64,
    },
    /// A dead owner's relationship this node cannot take, and why.
    Cannot {
        id: RelationshipId,
        from: NodeName,
        why: &'static str,
    },
}

/// The record of a relationship this node no longer holds as a live source (deleted, ended,
/// reversed into a target): kept, ended, so a stale copy on a node that was down obeys it
/// instead of claiming the relationship back.
fn tombstone(h: &Held) -> Held {
    let mut h = h.clone();
    h.relationship.ended = true;
    h.relationship.job_running = false;
    h
}

/// The pass's actions: a pure function of what it saw, so tests can play it.
///
/// Which copy of a relationship wins: the higher epoch (a failover, reconnect or reverse
/// moved it on), then, at one epoch, the node the record names.
pub fn decide(s: &Seen) -> Vec<Action> {
    let mut out = Vec::new();
    let sources = s.local.iter().filter(|r| r.role == Role::Source);
    for r in sources {
        let record = s.records.get(&r.id);
        let below = record.map_or(0, |(h, _)| h.snapshot_ids_below);
        // A record this live copy did not write at this epoch (another node's, a tombstone,
        // an older epoch's): ids below its reservation may have been given by another node,
        // or by this one before a reverse, so this node's ids go on above them.
        let foreign = record.is_some_and(|(h, _)| {
            &h.owner != s.me || h.relationship.ended || h.relationship.epoch != r.epoch
        });
        let ids_from = if foreign { below.saturating_sub(1) } else { 0 };
        let last = s
            .snapshot_ids
            .get(&r.id)
            .copied()
            .unwrap_or(0)
            .max(ids_from);
        let mine = Held {
            owner: s.me.clone(),
            fingerprint: s.fingerprint.to_string(),
            relationship: published(r),
            snapshot_ids_below: reserve(last, below),
            // At least 1: a record of an earlier release (0) gets one at this pass.
            term: record
                .map_or(1, |(h, _)| h.term.saturating_add(u64::from(foreign)))
                .max(1),
        };
        let publish = |expected: Option<&Vec<u8>>| Action::Publish {
            id: r.id.clone(),
            held: Box::new(mine.clone()),
            expected: expected.cloned(),
            ids_from,
        };
        match record {
            None if r.ended => {}
            None => out.push(publish(None)),
            // This copy is newer (e.g. the relationship was reversed towards this node).
            Some((h, raw)) if r.epoch > h.relationship.epoch && !r.ended => {
                out.push(publish(Some(raw)))
            }
            Some((h, _)) if r.epoch < h.relationship.epoch || &h.owner != s.me => {
                out.push(Action::Drop {
                    id: r.id.clone(),
                    owner: h.owner.clone(),
                })
            }
            Some((h, raw)) => {
                let same = (
                    &h.fingerprint,
                    definition(&h.relationship),
                    h.snapshot_ids_below,
                    h.term,
                ) == (
                    &mine.fingerprint,
                    definition(&mine.relationship),
                    mine.snapshot_ids_below,
                    mine.term,
                );
                if !same {
                    out.push(publish(Some(raw)));
                }
            }
        }
    }
    for (id, (h, raw)) in s.records {
        if s.unreadable.contains(id.as_str()) {
            if &h.owner != s.me
                && s.may_take
                && s.overdue.contains(&h.owner)
                && !h.relationship.ended
            {
                out.push(Action::Cannot {
                    id: id.clone(),
                    from: h.owner.clone(),
                    why: "a relationship of that id stored on this node cannot be read by this release",
                });
            }
            continue;
        }
        let here = s.local.iter().find(|r| &r.id == id);
        let live_here = here.is_some_and(|r| r.role == Role::Source);
        if &h.owner == s.me {
            if !live_here && !h.relationship.ended {
                out.push(Action::Publish {
                    id: id.clone(),
                    held: Box::new(tombstone(h)),
                    expected: Some(raw.clone()),
                    ids_from: 0,
                });
            }
            continue;
        }
        // A stale copy here is dropped first (above); the next pass may take it.
        if !s.may_take || !s.overdue.contains(&h.owner) || h.relationship.ended || live_here {
            continue;
        }
        let why = if h.fingerprint != s.fingerprint {
            Some("this node presents another peer identity than its owner (the target pins the owner's); give the source cluster's nodes one identity to let them take over each other's relationships")
        } else if here.is_some() {
            Some("a target relationship of that id is stored on this node")
        } else if (s.sees)(&h.relationship).is_none() {
            Some("this node does not see its source directory at the same path and inode (not on the shared file system)")
        } else {
            None
        };
        match why {
            Some(why) => out.push(Action::Cannot {
                id: id.clone(),
                from: h.owner.clone(),
                why,
            }),
            None => {
                let mut r = h.relationship.clone();
                // The new owner catches up at once (a disabled relationship stays idle).
                r.job_running = r.spec.enabled;
                if r.pinned.is_some() {
                    r.pinned = (s.sees)(&r);
                }
                // The directory was just found here: the old owner's complaint about it
                // (which would keep every job from starting) is not this node's.
                r.path_error = None;
                // The new owner's ids start at the old reservation, and its record reserves
                // more at once (a policy firing right after the takeover has ids to use).
                let ids_from = h.snapshot_ids_below.saturating_sub(1);
                out.push(Action::Take {
                    held: Box::new(Held {
                        owner: s.me.clone(),
                        fingerprint: s.fingerprint.to_string(),
                        relationship: r,
                        snapshot_ids_below: reserve(ids_from, h.snapshot_ids_below),
                        term: h.term.saturating_add(1),
                    }),
                    from: h.owner.clone(),
                    expected: raw.clone(),
                    ids_from,
                });
            }
        }
    }
    out
}

/// Whether this node may start a job of relationship `id` now: it has a live etcd session and
/// the relationship's record names it. A relationship just created here waits for its record
/// (`PUBLISH_EVERY`), so no job of it ever ran where the cluster could not find its owner.
pub fn runs_here(m: &Membership, id: &RelationshipId) -> bool {
    m.loaded() && holding(m, id).is_some_and(|h| &h.owner == m.name() && !h.ended())
}

/// Who holds relationship `id` in this node's view (its record read in place, in part).
fn holding(m: &Membership, id: &RelationshipId) -> Option<Holding> {
    m.shared_with(&key(id), Holding::read).flatten()
}

/// `runs_here` for any node: outside a cluster, every relationship runs where it is stored.
pub fn held_here(node: &Node, id: &RelationshipId) -> bool {
    node.cluster.as_ref().is_none_or(|m| runs_here(m, id))
}

/// Whether this node takes relationship `id`'s policy snapshots now (`snapshots::take_for`).
#[derive(Debug, PartialEq, Eq)]
pub enum Snapshots {
    /// It holds the relationship (or is no member of a cluster).
    Here,
    /// Another node holds it, or it ended in the cluster: that node's business.
    Elsewhere,
    /// Not yet known, and why: its etcd session is away, or a relationship just created has
    /// no record yet. A snapshot due meanwhile is owed, and taken once it knows.
    NotYet(&'static str),
}

/// `Snapshots` for relationship `id` on this node.
pub fn snapshots_here(node: &Node, id: &RelationshipId) -> Snapshots {
    let Some(m) = &node.cluster else {
        return Snapshots::Here;
    };
    match holding(m, id) {
        Some(h) if h.ended() || &h.owner != m.name() => Snapshots::Elsewhere,
        _ if !m.loaded() => Snapshots::NotYet("this node has no current etcd session"),
        Some(_) => Snapshots::Here,
        None => Snapshots::NotYet("its record in etcd is not written yet"),
    }
}

/// Why a job of relationship `id` under way here must start no further session: its record
/// now names another node, or is a tombstone. A node whose view is not current (etcd away for
/// a moment) goes on: the target fences its sessions by term (`term_here`).
pub fn lost_here(node: &Node, id: &RelationshipId) -> Option<String> {
    let m = node.cluster.as_ref()?;
    let h = holding(m, id)?;
    if h.ended() {
        Some(format!(
            "relationship {id} was deleted, ended or reversed in the cluster"
        ))
    } else if &h.owner != m.name() {
        Some(format!(
            "relationship {id} is held by node {} now (taken over); this node's job of it stops",
            h.owner
        ))
    } else {
        None
    }
}

/// The term this node holds relationship `id` at, for its ticket requests (0 outside a
/// cluster: no term); an error if its view does not show a live record naming it (no
/// session is asked for then: a term it does not hold would void its holder's sessions). A
/// view gone stale gives the term as it was, never a higher one, so a node cut off cannot
/// outrank the node that took over from it.
pub fn term_here(node: &Node, id: &RelationshipId) -> crate::Result<u64> {
    let Some(m) = &node.cluster else {
        return Ok(0);
    };
    match holding(m, id) {
        Some(h) if &h.owner == m.name() && !h.ended() => Ok(h.term),
        _ => Err(crate::Error::Conflict(lost_here(node, id).unwrap_or_else(
            || format!("relationship {id} has no record in etcd naming this node yet"),
        ))),
    }
}

/// `r`'s source directory as this node sees it: where its owner pinned it, the same inode.
fn sees(r: &Relationship) -> Option<PinnedDir> {
    let (path, ino) = match &r.pinned {
        Some(p) => (&p.path, Some(p.ino)),
        None => (&r.spec.source_path, None),
    };
    let m = std::fs::symlink_metadata(path).ok()?;
    (m.is_dir() && ino.is_none_or(|i| i == m.ino())).then(|| PinnedDir {
        path: path.clone(),
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// Relationships whose source directory was looked at, and those seen here.
type Looked = (BTreeSet<RelationshipId>, HashMap<RelationshipId, PinnedDir>);

/// Looks at each relationship's source directory (blocking: a shared mount may hang).
fn look_at(rels: &[Relationship]) -> Looked {
    let looked = rels.iter().map(|r| r.id.clone()).collect();
    let seen = rels
        .iter()
        .filter_map(|r| Some((r.id.clone(), sees(r)?)))
        .collect();
    (looked, seen)
}

/// Every record in this node's view, parsed (one that does not parse is left alone).
fn records(m: &Membership) -> BTreeMap<RelationshipId, (Held, Vec<u8>)> {
    m.shared(&format!("{KIND}/"))
        .into_iter()
        .filter_map(|(_, raw)| {
            let h: Held = serde_json::from_slice(&raw).ok()?;
            Some((h.relationship.id.clone(), (h, raw)))
        })
        .collect()
}

/// Runs for as long as the daemon does (cluster mode, control role).
pub async fn run(node: Arc<Node>, m: Arc<Membership>) {
    let fingerprint = node.identity.fingerprint.to_string();
    let mut down_since: HashMap<NodeName, Instant> = HashMap::new();
    // Each reason a relationship cannot be taken is logged once, not every pass.
    let mut told: HashSet<(RelationshipId, &'static str)> = HashSet::new();
    let mut failed: HashSet<String> = HashSet::new();
    let mut look: Option<(tokio::task::JoinHandle<Looked>, Instant)> = None;
    loop {
        tokio::time::sleep(PUBLISH_EVERY).await;
        if node.shutting_down() {
            return;
        }
        if !m.loaded() {
            // A view that is not etcd's says nothing of who is down.
            down_since.clear();
            continue;
        }
        // A row this release cannot read stops only what touches its own record (the
        // scheduler and the daemon's start log it, the metrics count it).
        let (local, unreadable) = match node.store().list_readable(None) {
            Ok(l) => {
                let ids: BTreeSet<String> = l.unreadable.into_iter().map(|u| u.id).collect();
                (l.rows, ids)
            }
            Err(e) => {
                tracing::warn!("reading the relationships to publish: {e}");
                continue;
            }
        };
        let snapshot_ids = match node.store().snapshot_ids() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!("reading the snapshot ids to reserve: {e}");
                continue;
            }
        };
        let records = records(&m);
        let now = Instant::now();
        let owners: BTreeSet<&NodeName> = records.values().map(|(h, _)| &h.owner).collect();
        down_since.retain(|n, _| owners.contains(n) && !m.up(n));
        for n in owners {
            if !m.up(n) {
                down_since.entry(n.clone()).or_insert(now);
            }
        }
        let after = if m.is_leader() {
            TAKEOVER_AFTER
        } else {
            TAKEOVER_AFTER + LEADER_FIRST
        };
        let mut overdue: BTreeSet<NodeName> = down_since
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= after)
            .map(|(n, _)| n.clone())
            .collect();
        // The source directories of what could be taken over are looked at off the runtime,
        // one look at a time across passes: a hung shared mount stalls neither the daemon
        // nor this node's own records (it takes nothing over until the look comes back).
        let candidates: Vec<Relationship> = records
            .values()
            .filter(|(h, _)| overdue.contains(&h.owner) && !h.relationship.ended)
            .map(|(h, _)| h.relationship.clone())
            .collect();
        let mut found: Looked = (BTreeSet::new(), HashMap::new());
        if !candidates.is_empty() {
            let (h, since) = look.get_or_insert_with(|| {
                (
                    tokio::task::spawn_blocking(move || look_at(&candidates)),
                    Instant::now(),
                )
            });
            if h.is_finished() {
                if let Some((h, _)) = look.take() {
                    found = h.await.unwrap_or_default();
                }
            } else if since.elapsed() > LOOK_WITHIN && failed.insert("look".into()) {
                tracing::warn!("looking at the source directories of relationships to take over takes more than {LOOK_WITHIN:?} (a hung shared mount?); none is taken over until it comes back");
            }
        }
        // An owner is taken over from only once each of its relationships was looked at.
        overdue.retain(|o| {
            records
                .values()
                .filter(|(h, _)| &h.owner == o && !h.relationship.ended)
                .all(|(h, _)| found.0.contains(&h.relationship.id))
        });
        let found = found.1;
        let seen_here = |r: &Relationship| found.get(&r.id).cloned();
        let actions = decide(&Seen {
            me: m.name(),
            fingerprint: &fingerprint,
            may_take: !m.drained(),
            local: &local,
            unreadable: &unreadable,
            snapshot_ids: &snapshot_ids,
            records: &records,
            overdue: &overdue,
            sees: &seen_here,
        });
        if told.len() + failed.len() > MAX_TOLD {
            // Said again after a while rather than remembered without bound.
            told.clear();
            failed.clear();
        }
        for a in actions {
            if let Action::Cannot { id, from, why } = &a {
                if told.insert((id.clone(), why)) {
                    tracing::warn!(%id, owner = %from, "cannot take over the relationship of a node down: {why}");
                }
                continue;
            }
            if let Err(e) = apply(&node, &m, a).await {
                // Once per message: a record too big to publish would say so every pass.
                if failed.insert(e.to_string()) {
                    tracing::warn!("relationship owners: {e}");
                }
            }
        }
    }
}

fn encode(h: &Held) -> crate::Result<Vec<u8>> {
    serde_json::to_vec(h).map_err(|e| crate::Error::Invalid(e.to_string()))
}

async fn apply(node: &Node, m: &Membership, a: Action) -> crate::Result<()> {
    match a {
        Action::Publish {
            id,
            held,
            expected,
            ids_from,
        } => {
            if ids_from > 0 {
                node.store().raise_snapshot_id(&id, ids_from)?;
            }
            if !m
                .put_if(&key(&id), expected.as_deref(), encode(&held)?, None)
                .await?
            {
                tracing::debug!(%id, "its record changed meanwhile; the next pass looks again");
            }
        }
        Action::Drop { id, owner } => drop_moved(node, &id, &owner),
        Action::Take {
            held,
            from,
            expected,
            ids_from,
        } => {
            let id = held.relationship.id.clone();
            let value = encode(&held)?;
            if !m
                .put_if(&key(&id), Some(&expected), value.clone(), Some(&from))
                .await?
            {
                return Ok(());
            }
            let inserted = {
                let store = node.store();
                store
                    .insert(&held.relationship)
                    .and_then(|()| store.raise_snapshot_id(&id, ids_from))
            };
            if let Err(e) = inserted {
                // Give it back as it was: a record naming this node without the relationship
                // here would become a tombstone, and the relationship lost to the cluster.
                m.put_if(&key(&id), Some(&value), expected, None).await?;
                return Err(e);
            }
            let missing: Vec<String> = held
                .relationship
                .spec
                .policies
                .iter()
                .filter(|p| node.store().policy(p).is_err())
                .map(|p| p.to_string())
                .collect();
            let policies = if missing.is_empty() {
                String::new()
            } else {
                format!(
                    "; its snapshot policies {} are not defined on this node, so none of their snapshots is taken until they are (`mover policy create`)",
                    missing.join(", ")
                )
            };
            node.event(
                EventKind::RelationshipTakenOver,
                Some((&id, Role::Source)),
                format!(
                    "took over relationship {id} from node {from}, down for {}s or more; its jobs run on this node now{policies}",
                    TAKEOVER_AFTER.as_secs()
                ),
            );
        }
        Action::Cannot { .. } => {}
    }
    Ok(())
}

/// Forgets this node's copy of a relationship another node holds now, once no job of it runs
/// here (a running one is cancelled; a later pass drops it). Under the jobs lock, as
/// `source::claim_job` checks `runs_here` under it: no job starts between the check and the
/// forgetting.
fn drop_moved(node: &Node, id: &RelationshipId, owner: &NodeName) {
    {
        let jobs = super::lock(&node.jobs);
        if let Some(j) = jobs.get(id) {
            j.progress.control.cancel();
            return;
        }
        if let Err(e) = node.forget(id, Role::Source) {
            tracing::warn!(%id, "forgetting a relationship held by node {owner}: {e}");
            return;
        }
    }
    // Its policy snapshots' records go too; their copies on the shared source stay, named
    // below the holder's ids (this node no longer expires or releases them).
    if let Err(e) = node.store().delete_snapshot_records(id, Role::Source) {
        tracing::warn!(%id, "forgetting its policy snapshots: {e}");
    }
    super::lock(&node.manifests).remove(id);
    super::lock(&node.wanted).remove(id);
    let _ = std::fs::remove_dir_all(node.state_dir(id));
    node.event(
        EventKind::RelationshipMoved,
        Some((id, Role::Source)),
        format!("relationship {id} is held by node {owner} now (it took it over while this node was down, or moved it on); this node forgot its copy"),
    );
}

/// Refuses a change to a source relationship (edit, delete, replicate now, reconnect,
/// reverse) on a node of a cluster that does not hold it now: another node does, or this one
/// has no session with etcd (it could not publish the change, and another node may have
/// taken the relationship over meanwhile).
pub fn check_held(node: &Node, id: &RelationshipId) -> crate::Result<()> {
    let Some(m) = &node.cluster else {
        return Ok(());
    };
    if !m.loaded() {
        return Err(crate::Error::Unavailable(format!(
            "relationship {id} is not changed from node {} while it has no session with etcd (another node may hold it by now); try again once `mover cluster status` says connected",
            m.name()
        )));
    }
    // No record yet (created here a moment ago): the next pass publishes it, change and all.
    match held(m, id).map(|h| h.owner) {
        Some(o) if &o != m.name() => Err(crate::Error::Conflict(format!(
            "relationship {id} is held by node {o} now: change it there"
        ))),
        _ => Ok(()),
    }
}

/// Writes the tombstone of relationship `r`, which this node held and has just deleted, in
/// the delete call rather than at the next pass: had this node died before that pass, a live
/// record would have stayed, and a takeover would have brought the relationship back. Each
/// write is a transaction on the record read (none, or this node's live one), so it cannot
/// undo a concurrent pass's write; one that lost to a pass (which had read the store before
/// the delete) reads again, at most `BURY_TRIES` times. If etcd is away, the next pass
/// writes it.
pub async fn bury(node: &Node, r: &Relationship) {
    let Some(m) = &node.cluster else {
        return;
    };
    let id = &r.id;
    for _ in 0..BURY_TRIES {
        let found = m.shared_with(&key(id), |v| {
            (serde_json::from_slice::<Held>(v).ok(), v.to_vec())
        });
        let (expected, dead) = match found {
            None => (
                None,
                tombstone(&Held {
                    owner: m.name().clone(),
                    fingerprint: node.identity.fingerprint.to_string(),
                    relationship: published(r),
                    snapshot_ids_below: 0,
                    term: 1,
                }),
            ),
            Some((Some(h), raw)) if &h.owner == m.name() && !h.relationship.ended => {
                (Some(raw), tombstone(&h))
            }
            // Ended already, held by another node, or not a record this release reads.
            Some(_) => return,
        };
        let done = match encode(&dead) {
            Ok(v) => m.put_if(&key(id), expected.as_deref(), v, None).await,
            Err(e) => Err(e),
        };
        match done {
            Ok(true) => return,
            Ok(false) => tokio::time::sleep(BURY_WAIT).await,
            Err(e) => {
                tracing::warn!(%id, "its record is ended at the next pass: {e}");
                return;
            }
        }
    }
    tracing::warn!(%id, "its record changed {BURY_TRIES} times meanwhile; the next pass ends it");
}

/// `bury` for a source relationship about to be forgotten because this release cannot read
/// its row (`api_unreadable`). Its record is likely unreadable here too (a later release's
/// setting is in both), and then no publishing pass ever ends it: a node of that later
/// release would take it over once this one is down. So the record is ended as plain JSON,
/// its `ended` set and `job_running` cleared as `tombstone` does, if it names this node and
/// is live. Fails (the row is then kept) if etcd does not take it.
pub async fn bury_unreadable(node: &Node, id: &RelationshipId) -> crate::Result<()> {
    let Some(m) = &node.cluster else {
        return Ok(());
    };
    // Without a session the view may be empty or stale, and "no record" would be a guess.
    if !m.loaded() {
        return Err(crate::Error::Unavailable(format!(
            "node {} has no session with etcd, where relationship {id}'s record must be ended first; try again once `mover cluster status` says connected",
            m.name()
        )));
    }
    for _ in 0..BURY_TRIES {
        // No record: nothing for another node to take over.
        let Some(raw) = m.shared_with(&key(id), <[u8]>::to_vec) else {
            return Ok(());
        };
        let damaged = |why: String| {
            crate::Error::Conflict(format!(
                "its record in etcd is {why}; end or delete {KIND}/{id} there first"
            ))
        };
        let mut v: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|e| damaged(format!("not JSON ({e})")))?;
        if !v["relationship"].is_object() {
            return Err(damaged("without a relationship".into()));
        }
        let mine = v["owner"] == serde_json::json!(m.name());
        if !mine || v["relationship"]["ended"] == serde_json::Value::Bool(true) {
            return Ok(());
        }
        v["relationship"]["ended"] = serde_json::Value::Bool(true);
        v["relationship"]["job_running"] = serde_json::Value::Bool(false);
        let dead = serde_json::to_vec(&v).map_err(|e| crate::Error::Invalid(e.to_string()))?;
        if m.put_if(&key(id), Some(&raw), dead, None).await? {
            return Ok(());
        }
        tokio::time::sleep(BURY_WAIT).await;
    }
    Err(crate::Error::Conflict(format!(
        "its record in etcd changed {BURY_TRIES} times meanwhile; try again"
    )))
}

/// Whether this node may give policy snapshot id `sid` to relationship `id`: outside a
/// cluster always; in one, only while it holds the relationship and `sid` is below its
/// record's reservation (a node that took it over after this one died starts there).
pub fn may_use_snapshot_id(node: &Node, id: &RelationshipId, sid: u64) -> bool {
    node.cluster.as_ref().is_none_or(|m| {
        m.loaded()
            && held(m, id).is_some_and(|h| {
                &h.owner == m.name() && !h.relationship.ended && sid < h.snapshot_ids_below
            })
    })
}

/// Relationship `id`'s record in this node's view.
fn held(m: &Membership, id: &RelationshipId) -> Option<Held> {
    m.shared_with(&key(id), |v| serde_json::from_slice::<Held>(v).ok())
        .flatten()
}

#[cfg(test)]
mod tests;
