//! The invariants, checked after every step of a simulated run against what the nodes hold
//! (their stores, their running jobs and receivers), what their machines did, and what the
//! step logged (sessions started, tickets issued, intruder requests handled).

use super::fake::{locked, Effect, Machine};
use crate::blackout;
use crate::daemon::{lock, Node};
use crate::model::{self, Relationship, RelationshipId, Role, State};
use crate::store::Store;
use crate::tls::Fingerprint;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// A node as the checker sees it.
pub(super) enum View<'a> {
    Up(Arc<Node>),
    /// Stopped: only its store is left.
    Down(&'a Store),
    Changing,
}

/// What a step did that the stores do not show.
#[derive(Default)]
pub(super) struct StepLog {
    /// Data-plane sessions started: (source node, relationship).
    pub(super) sessions: Vec<(usize, RelationshipId)>,
    /// Relationships with more than one session running now.
    pub(super) doubled: Vec<RelationshipId>,
    /// Tickets issued: (target node, relationship, to whom).
    pub(super) tickets: Vec<(usize, RelationshipId, Fingerprint)>,
    /// Intruder requests handled: (node, relationship named).
    pub(super) intruder: Vec<(usize, RelationshipId)>,
    pub(super) intruder_answers: Vec<(usize, RelationshipId, &'static str)>,
    /// A source-side delete whose job did not stop put `ended` back: (node, relationship).
    pub(super) unended: Vec<(usize, RelationshipId)>,
}

/// What the checker remembers of one node between steps.
#[derive(Default)]
struct Seen {
    /// The store's change counter when last read (unchanged: nothing to read again).
    changes: Option<u64>,
    rows: BTreeMap<RelationshipId, Relationship>,
    /// Relationships deleted from this node, with the peer they were pinned to: they never
    /// come back from that peer (no stale or repeated message revives one). Any peer may
    /// propose an id that is free again, the intruder too: a new proposal, awaiting
    /// authorization like any.
    gone: BTreeMap<RelationshipId, Option<String>>,
    /// Jobs in the node's table.
    jobs: BTreeSet<RelationshipId>,
}

pub(super) struct Checker {
    /// Each node's certificate, and the intruder's.
    fps: Vec<Fingerprint>,
    intruder: Fingerprint,
    seen: Vec<Seen>,
    /// Target relationships that were authorized at some point: (node, relationship).
    ever_authorized: BTreeSet<(usize, RelationshipId)>,
    /// Recovery points the data plane committed, per relationship (the source's point in time
    /// of the job).
    committed: BTreeMap<RelationshipId, BTreeSet<i64>>,
}

type Check = Result<(), String>;

fn fail(what: String) -> Check {
    Err(what)
}

impl Checker {
    pub(super) fn new(fps: Vec<Fingerprint>, intruder: Fingerprint) -> Checker {
        let seen = fps.iter().map(|_| Seen::default()).collect();
        Checker {
            fps,
            intruder,
            seen,
            ever_authorized: BTreeSet::new(),
            committed: BTreeMap::new(),
        }
    }

    /// The data plane committed `at` as the recovery point of `id`.
    pub(super) fn committed(&mut self, id: &RelationshipId, at: i64) {
        self.committed.entry(id.clone()).or_default().insert(at);
    }

    pub(super) fn step(
        &mut self,
        views: &[View<'_>],
        machine: &Mutex<Machine>,
        log: &StepLog,
    ) -> Check {
        if let Some(id) = log.doubled.first() {
            return fail(format!(
                "relationship {id} has two data-plane sessions running"
            ));
        }
        // Rows pinned to a real node, as they were before an intruder's request.
        let before: Option<Vec<BTreeMap<RelationshipId, Relationship>>> =
            (!log.intruder.is_empty()).then(|| self.seen.iter().map(|s| s.rows.clone()).collect());
        for (n, v) in views.iter().enumerate() {
            self.rows(n, v, log)?;
        }
        for (n, v) in views.iter().enumerate() {
            if let View::Up(node) = v {
                self.running(n, node)?;
            } else {
                self.seen[n].jobs.clear();
            }
        }
        self.machine(machine, !log.intruder.is_empty())?;
        for (n, id) in &log.sessions {
            let Some(View::Up(node)) = views.get(*n) else {
                return fail(format!(
                    "a session of {id} started on node{n}, which is not running"
                ));
            };
            let r = self
                .row(*n, id)
                .ok_or(format!("a session started for {id}, unknown on node{n}"))?;
            if r.role != Role::Source || !r.authorized || r.ended {
                return fail(format!(
                    "a session started for {id} on node{n}, which is not an authorized live source relationship there ({r:?})"
                ));
            }
            let now = node.clock.now();
            if blackout::in_blackout(&r.spec.blackout_windows, now) {
                return fail(format!(
                    "a session of {id} started at {now} on node{n}, inside one of its blackout windows {:?}",
                    r.spec.blackout_windows
                ));
            }
        }
        for (n, id, to) in &log.tickets {
            let r = self.row(*n, id).ok_or(format!(
                "node{n} issued a ticket for {id}, which it does not know"
            ))?;
            if r.role != Role::Target || !r.authorized || r.ended {
                return fail(format!(
                    "node{n} issued a ticket for {id}, which is not an authorized live target relationship there (authorized {}, ended {})",
                    r.authorized, r.ended
                ));
            }
            if r.peer_fingerprint.as_deref() != Some(to.0.as_str()) {
                return fail(format!(
                    "node{n} issued a ticket for {id} to a peer not pinned for it"
                ));
            }
        }
        if let Some(before) = before {
            self.intruder_left_others_alone(&before)?;
            for (n, id, answer) in &log.intruder_answers {
                let others = self.row(*n, id).is_some_and(|r| {
                    r.peer_fingerprint.as_deref() != Some(self.intruder.0.as_str())
                });
                if others && !matches!(*answer, "refused" | "not_found") {
                    return fail(format!(
                        "node{n} answered an intruder's request about {id}, which another peer owns: {answer}"
                    ));
                }
            }
        }
        Ok(())
    }

    fn row(&self, n: usize, id: &RelationshipId) -> Option<&Relationship> {
        self.seen.get(n)?.rows.get(id)
    }

    /// Reads the node's store again if it changed and checks every row and every change.
    fn rows(&mut self, n: usize, v: &View<'_>, log: &StepLog) -> Check {
        let read =
            |s: &Store, last: Option<u64>| -> Result<Option<(u64, Vec<Relationship>)>, String> {
                let c = s.changes();
                if last == Some(c) {
                    return Ok(None);
                }
                let rows = s
                    .list(None)
                    .map_err(|e| format!("node{n}'s store cannot be read: {e}"))?;
                Ok(Some((c, rows)))
            };
        let last = self.seen[n].changes;
        let got = match v {
            View::Up(node) => read(&node.store(), last)?,
            View::Down(store) => read(store, last)?,
            View::Changing => None,
        };
        let Some((changes, rows)) = got else {
            return Ok(());
        };
        let mut now = BTreeMap::new();
        for r in rows {
            self.legal(n, &r)?;
            if let Some(was) = self.seen[n].rows.get(&r.id) {
                let unended = log.unended.iter().any(|(m, id)| *m == n && *id == r.id);
                transition(n, was, &r, unended)?;
            } else if self.seen[n].gone.get(&r.id) == Some(&r.peer_fingerprint)
                && r.peer_fingerprint.as_deref() != Some(self.intruder.0.as_str())
            {
                return fail(format!(
                    "relationship {} came back on node{n} from the same peer after it was deleted there: {r:?}",
                    r.id
                ));
            }
            if r.role == Role::Target && r.authorized {
                self.ever_authorized.insert((n, r.id.clone()));
            }
            if let Some(rp) = r.recovery_point_ns {
                if !self.committed.get(&r.id).is_some_and(|c| c.contains(&rp)) {
                    return fail(format!(
                        "node{n} records recovery point {rp} for {}, which the data plane never committed",
                        r.id
                    ));
                }
            }
            now.insert(r.id.clone(), r);
        }
        let seen = &mut self.seen[n];
        for (id, r) in &seen.rows {
            if !now.contains_key(id) {
                seen.gone.insert(id.clone(), r.peer_fingerprint.clone());
            }
        }
        seen.rows = now;
        seen.changes = Some(changes);
        Ok(())
    }

    /// A row on its own: the fields that go together do.
    fn legal(&self, n: usize, r: &Relationship) -> Check {
        let bad = |why: &str| {
            fail(format!(
                "node{n} holds an illegal relationship ({why}): {r:?}"
            ))
        };
        let own = self.fps[n].0.as_str();
        let fp = r.peer_fingerprint.as_deref();
        match r.role {
            Role::Source => {
                if !self.fps.iter().any(|f| Some(f.0.as_str()) == fp) || fp == Some(own) {
                    return bad("a source must pin its target's certificate");
                }
                if r.read_only.is_some() {
                    return bad("a source's directory is not protected");
                }
            }
            Role::Target => {
                let known = self
                    .fps
                    .iter()
                    .chain([&self.intruder])
                    .any(|f| Some(f.0.as_str()) == fp);
                if !known || fp == Some(own) {
                    return bad("a target must pin its proposer's certificate");
                }
                if r.read_only.is_some() && !r.authorized {
                    return bad("protected without authorization");
                }
                if r.authorized && r.pinned.is_none() {
                    return bad("authorized without a checked directory");
                }
            }
        }
        if !r.authorized
            && (r.job_running || r.recovery_point_ns.is_some() || r.last_attempt.is_some())
        {
            return bad("a job ran without authorization");
        }
        if r.path_error.is_some() {
            return bad("nothing in the simulation moves a directory");
        }
        Ok(())
    }

    /// Jobs that appeared since the last step started legally; receivers serve only live,
    /// authorized targets.
    fn running(&mut self, n: usize, node: &Node) -> Check {
        {
            // Most steps start and end no job: nothing to copy then.
            let jobs = lock(&node.jobs);
            let seen = &self.seen[n].jobs;
            if jobs.len() == seen.len() && jobs.keys().all(|id| seen.contains(id)) {
                drop(jobs);
                return self.receivers(n, node);
            }
        }
        let jobs: BTreeSet<RelationshipId> = lock(&node.jobs).keys().cloned().collect();
        for id in jobs.difference(&self.seen[n].jobs) {
            let r = self.row(n, id).ok_or(format!(
                "node{n} started a job for {id}, which it does not know"
            ))?;
            if r.role != Role::Source || !r.authorized || r.ended {
                return fail(format!(
                    "node{n} started a job for {id}, not an authorized live source relationship (authorized {}, ended {})",
                    r.authorized, r.ended
                ));
            }
            let now = node.clock.now();
            if blackout::in_blackout(&r.spec.blackout_windows, now) {
                return fail(format!(
                    "node{n} started a job of {id} at {now}, inside one of its blackout windows {:?}",
                    r.spec.blackout_windows
                ));
            }
        }
        self.seen[n].jobs = jobs;
        self.receivers(n, node)
    }

    fn receivers(&self, n: usize, node: &Node) -> Check {
        for id in lock(&node.receivers).keys() {
            match self.row(n, id) {
                Some(r) if r.role == Role::Target && r.authorized && !r.ended => {}
                r => {
                    return fail(format!(
                        "node{n} runs a receiver for {id}, which is not an authorized live target there: {r:?}"
                    ))
                }
            }
        }
        Ok(())
    }

    /// What the machines hold and did: protection only of authorized targets, releases only
    /// of targets that were authorized, at most one live receiver per relationship.
    fn machine(&mut self, machine: &Mutex<Machine>, intruder: bool) -> Check {
        let mut m = locked(machine);
        let effects = std::mem::take(&mut m.effects);
        if intruder && !effects.is_empty() {
            return fail(format!(
                "an intruder's request had effects on a machine: {effects:?}"
            ));
        }
        // What stays (mounts, receivers) is checked against the records below; every effect,
        // also one undone within its step (a release protects again to revert through the
        // private view), needs a target that was authorized.
        for (n, id, e) in &effects {
            if !self.ever_authorized.contains(&(*n, id.clone())) {
                let what = match e {
                    Effect::Release | Effect::Revert | Effect::ReleaseBacking => "released",
                    Effect::Protect => "protected",
                    Effect::StartReceiver => "started a receiver for",
                };
                return fail(format!(
                    "node{n} {what} {id} ({e:?}), which was never authorized there"
                ));
            }
        }
        for (n, id) in &m.protected {
            match self.row(*n, id) {
                Some(r) if r.authorized && r.read_only.is_some() => {}
                r => {
                    return fail(format!(
                        "node{n} keeps target {id} protected, but its record says otherwise: {r:?}"
                    ))
                }
            }
        }
        let mut live = BTreeSet::new();
        for r in m.receivers.values().filter(|r| r.live()) {
            if !live.insert((r.node, r.id.clone())) {
                return fail(format!("node{} runs two receivers for {}", r.node, r.id));
            }
        }
        Ok(())
    }

    fn intruder_left_others_alone(
        &self,
        before: &[BTreeMap<RelationshipId, Relationship>],
    ) -> Check {
        let mine = Some(self.intruder.0.as_str());
        for (n, rows) in before.iter().enumerate() {
            for (id, was) in rows {
                if was.peer_fingerprint.as_deref() == mine {
                    continue;
                }
                let now = self.seen[n].rows.get(id);
                // Only the target's record of contact moves with a pinned peer's requests, and
                // no field of the row does for anyone else's.
                if now != Some(was) {
                    return fail(format!(
                        "an intruder's request changed relationship {id} on node{n}: {was:?} -> {now:?}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One row's change between two steps: only the moves the design allows.
fn transition(n: usize, was: &Relationship, now: &Relationship, unended: bool) -> Check {
    let bad = |why: &str| {
        fail(format!(
            "node{n}: relationship {} changed illegally ({why}): {was:?} -> {now:?}",
            now.id
        ))
    };
    if was.role != now.role || was.created_ns != now.created_ns {
        return bad("role and creation never change");
    }
    if was.spec.source_path != now.spec.source_path || was.spec.target_path != now.spec.target_path
    {
        return bad("paths never change");
    }
    if was.peer_fingerprint.is_some() && was.peer_fingerprint != now.peer_fingerprint {
        return bad("a pinned certificate never changes");
    }
    if was.authorized && !now.authorized {
        return bad("authorization is never withdrawn");
    }
    if was.ended && !now.ended && !(now.role == Role::Source && unended) {
        return bad("an ended relationship stays ended");
    }
    if now.recovery_point_ns < was.recovery_point_ns {
        return bad("recovery points only move forward");
    }
    if now.role == Role::Target && was.ended && was.read_only.is_none() && now.read_only.is_some() {
        return bad("a released target is never protected again");
    }
    let at = chrono::DateTime::from_timestamp_nanos(0);
    let (s0, s1) = (model::status(was, at), model::status(now, at));
    if s0 != State::AwaitingAuthorization && s1 == State::AwaitingAuthorization {
        return bad("once authorized, never awaiting authorization again");
    }
    Ok(())
}

/// At rest, the two ends of a relationship agree (the source is the truth about jobs and
/// settings; the target about authorization and its end).
pub(super) fn agree(s: Option<&Relationship>, t: Option<&Relationship>) -> Check {
    match (s, t) {
        (Some(s), Some(t)) => {
            if t.ended && !s.ended {
                return fail(format!(
                    "the target ended it but the source still runs it: {s:?}"
                ));
            }
            if s.ended || t.ended {
                return Ok(());
            }
            if s.authorized != t.authorized {
                return fail(format!(
                    "authorized on the target {}, on the source {}",
                    t.authorized, s.authorized
                ));
            }
            if !t.authorized {
                return Ok(());
            }
            if s.job_running || t.job_running {
                return fail(format!(
                    "a job is still shown running after every job stopped (source {}, target {}): {s:?}",
                    s.job_running, t.job_running
                ));
            }
            if s.recovery_point_ns != t.recovery_point_ns || s.last_attempt != t.last_attempt {
                return fail(format!(
                    "the nodes disagree on the last job: source {:?} {:?}, target {:?} {:?}",
                    s.recovery_point_ns, s.last_attempt, t.recovery_point_ns, t.last_attempt
                ));
            }
            if s.spec != t.spec {
                return fail(format!(
                    "the nodes disagree on the settings: {:?} vs {:?}",
                    s.spec, t.spec
                ));
            }
            if s.peer_unreachable {
                return fail("the source still finds its target unreachable".into());
            }
            Ok(())
        }
        (Some(s), None) if !s.ended => fail(format!(
            "the target forgot it but the source still runs it: {s:?}"
        )),
        _ => Ok(()),
    }
}
