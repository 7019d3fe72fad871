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
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the owner looks at a shard's record, and a node at the shards assigned to it (in
/// the node's watch-fed view of etcd: no request to etcd).
const SHARD_POLL: Duration = Duration::from_millis(100);
/// Longest an owner waits for one shard whose node stays up.
const MAX_SHARD_WAIT: Duration = Duration::from_secs(24 * 3600);

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
        super::assigned::assign(&self.rt, &self.m, (&node, &k), &record, "shard", || {
            self.wait(&node, &k)
        })
    }
}

impl Places {
    fn wait(&self, node: &NodeName, k: &str) -> mover::Result<()> {
        let r: Record = super::assigned::wait(
            &self.m,
            (node, k),
            (SHARD_POLL, MAX_SHARD_WAIT),
            "shard",
            || {
                self.progress.control.is_cancelled().then(|| {
                    mover::Error::Cancelled(format!("the job stopped while {node} ran a shard"))
                })
            },
        )?;
        match r.state {
            State::Done => {
                self.progress
                    .bytes
                    .fetch_add(r.bytes, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            _ if r.unreadable => {
                super::lock(&self.failed).insert(node.clone());
                Err(lost(format!(
                    "node {node} cannot read the shared source, left out of this job: {}",
                    r.error.unwrap_or_default()
                )))
            }
            _ => Err(lost(format!(
                "node {node}'s shard failed: {}",
                r.error.unwrap_or_default()
            ))),
        }
    }
}

/// Runs the shards other members assign to this node, for as long as the daemon runs.
pub(crate) async fn run_assigned(node: Arc<Node>, m: Arc<Membership>) {
    let prefix = format!("shards/{}/", m.name());
    let rt = tokio::runtime::Handle::current();
    let m2 = m.clone();
    super::assigned::run(
        m,
        prefix,
        SHARD_POLL,
        ("shard", "mover-shard"),
        move |k: String, record: Record, v| run_one(&node, &m2, &rt, &k, record, v),
    )
    .await
}

impl super::assigned::Assignment for Record {
    fn assigner(&self) -> &NodeName {
        &self.owner
    }
    fn is_assigned(&self) -> bool {
        self.state == State::Assigned
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
    super::assigned::answer(rt, m, (k, &assigned), &record, "shard");
}
