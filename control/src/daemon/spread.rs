//! Cluster jobs spread over nodes (`--spread-jobs`): the daemon's side of `mover::sender::shard`.
//!
//! The node that runs a relationship's job (the owner) keeps its session; `Places` offers the
//! members that take shards now (up, `--spread-jobs`, not drained) as the session's other
//! places. Each place's shard is a record in etcd, `/mover/v1/shards/<node>/<session>-<n>`,
//! holding the `ShardRef` (the plan itself is a file on the shared source); the node named
//! runs it (`run_assigned`) and writes its outcome into the same record; the owner, which
//! waits on it, then deletes it. A node that goes down, or a shard that fails, fails the
//! owner's session, which the owner retries over the places up then; the receiver resumes the
//! job from what is durable.

use super::Node;
use crate::cluster::{Membership, NodeName};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the owner looks at a shard's record, and a node at the shards assigned to it (in
/// the node's watch-fed view of etcd: no request to etcd).
const SHARD_POLL: Duration = Duration::from_millis(100);
/// Longest an owner waits for one shard whose node stays up.
const MAX_SHARD_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Tries to write a shard's outcome while etcd is away (a restart), `crate::cluster::RETRY`
/// apart.
const MAX_REPORT_TRIES: u32 = 600;
/// An answered shard record, or one assigned by an owner now down (which that node does not
/// start), still there this long after its node first saw it so is left over (its owner died
/// or lost etcd before deleting it); that node deletes it.
const ANSWERED_KEPT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    Assigned,
    Done,
    Failed,
}

/// The record of one shard in etcd.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    owner: NodeName,
    shard: mover::sender::shard::ShardRef,
    state: State,
    /// Why it failed.
    error: Option<String>,
    /// File bytes its workers sent.
    bytes: u64,
    /// It failed before sending anything because the node cannot read the plan or the source
    /// (not on the shared file system, say).
    #[serde(default)]
    unreadable: bool,
}

fn key(node: &NodeName, shard: &mover::sender::shard::ShardRef) -> String {
    let name = shard
        .plan
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("shards/{node}/{name}")
}

/// The owner's `Spread` for one job: the places are chosen when each session starts.
pub(crate) struct Places {
    m: Arc<Membership>,
    rt: tokio::runtime::Handle,
    progress: Arc<mover::Progress>,
    chosen: Mutex<Vec<NodeName>>,
    /// Nodes that could not read a share's plan or source in this job: left out of its later
    /// sessions, so one node not on the shared file system costs the job one session, not all
    /// of them.
    failed: Mutex<HashSet<NodeName>>,
    /// The relationship's source by its canonical path (the owner's own sessions read it
    /// through the pinned directory's `/proc/self/fd` name).
    source: Mutex<Option<std::path::PathBuf>>,
}

impl Places {
    pub(crate) fn new(
        m: Arc<Membership>,
        rt: tokio::runtime::Handle,
        progress: Arc<mover::Progress>,
    ) -> Places {
        Places {
            m,
            rt,
            progress,
            chosen: Mutex::default(),
            failed: Mutex::default(),
            source: Mutex::default(),
        }
    }

    /// Before each session: where the other places find the source.
    pub(crate) fn set_source(&self, path: std::path::PathBuf) {
        *super::lock(&self.source) = Some(path);
    }
}

fn lost(what: String) -> mover::Error {
    mover::Error::PeerLost(what)
}

impl mover::sender::shard::Spread for Places {
    fn places(&self) -> usize {
        let failed = super::lock(&self.failed).clone();
        let places: Vec<NodeName> = self
            .m
            .shard_places()
            .into_iter()
            .filter(|p| !failed.contains(p))
            .collect();
        tracing::info!(places = ?places.iter().map(|p| p.to_string()).collect::<Vec<_>>(), "spreading the session");
        let n = places.len();
        *super::lock(&self.chosen) = places;
        n
    }

    fn source(&self) -> Option<std::path::PathBuf> {
        super::lock(&self.source).clone()
    }

    fn run(&self, place: usize, shard: mover::sender::shard::ShardRef) -> mover::Result<()> {
        let node = super::lock(&self.chosen)
            .get(place)
            .cloned()
            .ok_or_else(|| lost(format!("place {place} was not chosen")))?;
        let k = key(&node, &shard);
        let record = Record {
            owner: self.m.name().clone(),
            shard,
            state: State::Assigned,
            error: None,
            bytes: 0,
            unreadable: false,
        };
        let body = serde_json::to_vec(&record).map_err(|e| lost(e.to_string()))?;
        self.rt
            .block_on(self.m.put(&k, body))
            .map_err(|e| lost(format!("assigning a shard to {node}: {e}")))?;
        let outcome = self.wait(&node, &k);
        // Whatever happened, the record goes; a failed delete (etcd away) leaves it to be
        // ignored: its session is over.
        if let Err(e) = self.rt.block_on(self.m.delete(&k)) {
            tracing::warn!("removing shard record {k}: {e}");
        }
        outcome
    }
}

impl Places {
    fn wait(&self, node: &NodeName, k: &str) -> mover::Result<()> {
        let start = std::time::Instant::now();
        loop {
            std::thread::sleep(SHARD_POLL);
            if self.progress.control.is_cancelled() {
                return Err(mover::Error::Cancelled(format!(
                    "the job stopped while {node} ran a shard"
                )));
            }
            let record = self
                .m
                .shared(k)
                .into_iter()
                .find(|(key, _)| key == k)
                .and_then(|(_, v)| serde_json::from_slice::<Record>(&v).ok());
            match record {
                Some(r) if r.state == State::Done => {
                    self.progress
                        .bytes
                        .fetch_add(r.bytes, std::sync::atomic::Ordering::Relaxed);
                    return Ok(());
                }
                Some(r) if r.state == State::Failed && r.unreadable => {
                    super::lock(&self.failed).insert(node.clone());
                    return Err(lost(format!(
                        "node {node} cannot read the shared source, left out of this job: {}",
                        r.error.unwrap_or_default()
                    )));
                }
                Some(r) if r.state == State::Failed => {
                    return Err(lost(format!(
                        "node {node}'s shard failed: {}",
                        r.error.unwrap_or_default()
                    )));
                }
                // While etcd is away the view is stale: wait for it (an etcd restart).
                _ if !self.m.connected() => {}
                _ if !self.m.up(node) => {
                    return Err(lost(format!("node {node} went down while it ran a shard")));
                }
                None => return Err(lost(format!("the shard record of {node} went away"))),
                Some(_) => {}
            }
            if start.elapsed() > MAX_SHARD_WAIT {
                return Err(lost(format!(
                    "node {node} ran a shard for longer than {MAX_SHARD_WAIT:?}"
                )));
            }
        }
    }
}

/// Runs the shards other members assign to this node, for as long as the daemon runs.
pub(crate) async fn run_assigned(node: Arc<Node>, m: Arc<Membership>) {
    let prefix = format!("shards/{}/", m.name());
    let mut started: HashSet<String> = HashSet::new();
    let mut answered: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(SHARD_POLL);
    loop {
        tick.tick().await;
        let assigned = m.shared(&prefix);
        // Forget what the owners removed (the sets stay the size of the live records).
        started.retain(|k| assigned.iter().any(|(a, _)| a == k));
        answered.retain(|k, _| assigned.iter().any(|(a, _)| a == k));
        for (k, v) in assigned {
            let Ok(record) = serde_json::from_slice::<Record>(&v) else {
                tracing::warn!("shard record {k} is not one this release reads");
                continue;
            };
            // Assigned by an owner that is down: its session died with it, and nobody waits
            // for the answer (a new owner or the owner back starts a new session); left over.
            let orphan = record.state == State::Assigned && !m.up(&record.owner);
            if record.state != State::Assigned || orphan {
                let seen = *answered
                    .entry(k.clone())
                    .or_insert_with(tokio::time::Instant::now);
                if seen.elapsed() > ANSWERED_KEPT {
                    tracing::info!(shard = %k, owner = %record.owner, "removing a shard record its owner left");
                    if let Err(e) = m.delete(&k).await {
                        tracing::warn!("removing shard record {k}: {e}");
                    }
                }
                continue;
            }
            // Assigned by a live owner: not left over (its owner may have been down a moment).
            answered.remove(&k);
            if !started.insert(k.clone()) {
                continue;
            }
            let (node, m, rt) = (node.clone(), m.clone(), tokio::runtime::Handle::current());
            let spawned = std::thread::Builder::new()
                .name("mover-shard".into())
                .spawn(move || run_one(&node, &m, &rt, &k, record, v));
            if let Err(e) = spawned {
                tracing::warn!("starting a shard: {e}");
            }
        }
    }
}

/// Runs shard `k` (`assigned`: its record as etcd held it) and answers in its record.
fn run_one(
    node: &Node,
    m: &Membership,
    rt: &tokio::runtime::Handle,
    k: &str,
    mut record: Record,
    assigned: Vec<u8>,
) {
    tracing::info!(shard = k, owner = %record.owner, "running a shard");
    let transport: Arc<dyn mover::Transport> = Arc::new(mover::transport::tcp::TcpTransport);
    let progress = Arc::new(mover::Progress::default());
    let (ran, unreadable) = if node.opts.roles.data {
        mover::sender::shard::run_assigned(&record.shard, &transport, &progress)
    } else {
        super::data_client::share(node, &record.shard, &progress)
    };
    record.unreadable = unreadable;
    match ran {
        Ok(bytes) => {
            record.state = State::Done;
            record.bytes = bytes;
            node.metrics.shard_done(true, bytes);
        }
        Err(e) => {
            tracing::warn!(shard = k, "shard failed: {e}");
            record.state = State::Failed;
            record.error = Some(e.to_string());
            node.metrics.shard_done(false, 0);
        }
    }
    let Ok(body) = serde_json::to_vec(&record) else {
        return;
    };
    for _ in 0..MAX_REPORT_TRIES {
        // Only over the record as assigned: had the owner given up on it (its session failed)
        // and removed it, an answer would bring back a record nobody reads.
        match rt.block_on(m.put_if(k, Some(&assigned), body.clone(), None)) {
            Ok(true) => return,
            Ok(false) => {
                tracing::debug!(shard = k, "its owner removed it meanwhile: not answered");
                return;
            }
            Err(e) => tracing::warn!(shard = k, "reporting a shard: {e}"),
        }
        std::thread::sleep(crate::cluster::RETRY);
    }
}
