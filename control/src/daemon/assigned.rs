//! The loop a node runs over the records other members assign to it in etcd (spread jobs'
//! shards, `spread.rs`; spread writes' shares, `writes.rs`): start each new one once on a
//! thread of its own, and remove those left over.

use crate::cluster::{Membership, NodeName};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// An answered record, or one assigned by a node now down (which this node does not start),
/// still there this long after this node first saw it, is left over (its assigner died or
/// lost etcd before deleting it); this node deletes it.
const ANSWERED_KEPT: Duration = Duration::from_secs(60);

/// What the loop needs of a record.
pub(crate) trait Assignment: serde::de::DeserializeOwned + Send + 'static {
    /// The node that assigned it and waits for its answer.
    fn assigner(&self) -> &NodeName;
    /// Not answered yet.
    fn is_assigned(&self) -> bool;
}

/// Every `poll`, starts `run(key, record, record as etcd held it)` on a thread named
/// `thread` for each record under `prefix` assigned by a live node and not started yet, for
/// as long as the daemon runs. `what` names the records in the log.
pub(crate) async fn run<R: Assignment>(
    m: Arc<Membership>,
    prefix: String,
    poll: Duration,
    (what, thread): (&'static str, &'static str),
    run: impl Fn(String, R, Vec<u8>) + Clone + Send + 'static,
) {
    let mut started: HashSet<String> = HashSet::new();
    let mut answered: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(poll);
    loop {
        tick.tick().await;
        let assigned = m.shared(&prefix);
        // Forget what the assigners removed (the sets stay the size of the live records).
        started.retain(|k| assigned.iter().any(|(a, _)| a == k));
        answered.retain(|k, _| assigned.iter().any(|(a, _)| a == k));
        for (k, v) in assigned {
            let Ok(record) = serde_json::from_slice::<R>(&v) else {
                // Said once (the set forgets it with the record).
                if started.insert(k.clone()) {
                    tracing::warn!("{what} record {k} is not one this release reads");
                }
                continue;
            };
            // Assigned by a node that is down: its session died with it, and nobody waits
            // for the answer (a new session starts elsewhere or when it is back); left over.
            let orphan = record.is_assigned() && !m.up(record.assigner());
            if !record.is_assigned() || orphan {
                let seen = *answered
                    .entry(k.clone())
                    .or_insert_with(tokio::time::Instant::now);
                if seen.elapsed() > ANSWERED_KEPT {
                    tracing::info!(record = %k, assigner = %record.assigner(), "removing a {what} record its assigner left");
                    if let Err(e) = m.delete(&k).await {
                        tracing::warn!("removing {what} record {k}: {e}");
                    }
                }
                continue;
            }
            // Assigned by a live node: not left over (it may have been down a moment).
            answered.remove(&k);
            if !started.insert(k.clone()) {
                continue;
            }
            let run = run.clone();
            let spawned = std::thread::Builder::new()
                .name(thread.into())
                .spawn(move || run(k, record, v));
            if let Err(e) = spawned {
                tracing::warn!("starting a {what}: {e}");
            }
        }
    }
}

/// The assigner's side: waits, polling its watch-fed view every `poll`, for `node` to answer
/// record `k` (a `what`, for errors), and returns the answered record. Errors when
/// `stop` says why the wait is over, or when the node goes down, the record goes, or `max`
/// passes; while etcd is away (a restart) the view is stale and it waits on.
pub(crate) fn wait<R: Assignment>(
    m: &Membership,
    (node, k): (&NodeName, &str),
    (poll, max): (Duration, Duration),
    what: &str,
    stop: impl Fn() -> Option<mover::Error>,
) -> mover::Result<R> {
    let lost = mover::Error::PeerLost;
    let start = std::time::Instant::now();
    loop {
        std::thread::sleep(poll);
        if let Some(e) = stop() {
            return Err(e);
        }
        let record = m
            .shared(k)
            .into_iter()
            .find(|(key, _)| key == k)
            .and_then(|(_, v)| serde_json::from_slice::<R>(&v).ok());
        match record {
            Some(r) if !r.is_assigned() => return Ok(r),
            _ if !m.connected() => {}
            _ if !m.up(node) => {
                return Err(lost(format!("node {node} went down while it ran a {what}")));
            }
            None => return Err(lost(format!("the {what} record of {node} went away"))),
            Some(_) => {}
        }
        if start.elapsed() > max {
            return Err(lost(format!(
                "node {node} ran a {what} for longer than {max:?}"
            )));
        }
    }
}

/// The assigner's side of one record: puts `record` at `k` for `node`, lets `wait` read its
/// answer, and removes the record whatever happened (a failed delete, etcd away, leaves it to
/// `node`, which removes it once answered and old).
pub(crate) fn assign<T>(
    rt: &tokio::runtime::Handle,
    m: &Membership,
    (node, k): (&NodeName, &str),
    record: &impl serde::Serialize,
    what: &str,
    wait: impl FnOnce() -> mover::Result<T>,
) -> mover::Result<T> {
    let lost = mover::Error::PeerLost;
    let body = serde_json::to_vec(record).map_err(|e| lost(e.to_string()))?;
    rt.block_on(m.put(k, body))
        .map_err(|e| lost(format!("assigning a {what} to {node}: {e}")))?;
    let outcome = wait();
    if let Err(e) = rt.block_on(m.delete(k)) {
        tracing::warn!("removing {what} record {k}: {e}");
    }
    outcome
}

/// Tries to write an answer while etcd is away (a restart), `crate::cluster::RETRY` apart.
const MAX_ANSWER_TRIES: u32 = 600;

/// The assigned node's side: writes `answer` into record `k`, only over the record as
/// `assigned` (had the assigner given up on it and removed it, an answer would bring back a
/// record nobody reads), retrying while etcd is away.
pub(crate) fn answer(
    rt: &tokio::runtime::Handle,
    m: &Membership,
    (k, assigned): (&str, &[u8]),
    answer: &impl serde::Serialize,
    what: &str,
) {
    let Ok(body) = serde_json::to_vec(answer) else {
        return;
    };
    for _ in 0..MAX_ANSWER_TRIES {
        match rt.block_on(m.put_if(k, Some(assigned), body.clone(), None)) {
            Ok(true) => return,
            Ok(false) => {
                tracing::debug!(
                    record = k,
                    "its assigner removed it meanwhile: not answered"
                );
                return;
            }
            Err(e) => tracing::warn!(record = k, "answering a {what}: {e}"),
        }
        std::thread::sleep(crate::cluster::RETRY);
    }
}
