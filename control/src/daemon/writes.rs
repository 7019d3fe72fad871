//! A target relationship's writes spread over nodes (`--spread-writes`): the daemon's side of
//! `mover::receiver::share`.
//!
//! The node holding a target relationship (the committing node: its receiver, journal and
//! recovery point) names, in each ticket it grants, the other members that write shares now
//! (up, `--spread-writes`, one process, not drained, not left out of this relationship after
//! a failure) by their data-plane addresses; the source connects each worker to the place its
//! index falls to. Once the session's table is built, each place's share is a record in etcd,
//! `/mover/v1/writes/<node>/<share file>`, holding the `WriteShare` and the target's path (the
//! table itself is a file in the job's journal on the shared target); the node named runs it
//! (`run_assigned`: its peer port hands it the session's worker connections) into its own
//! view of that path and answers in the same record; the committing node, which waits on it,
//! then deletes it. A place that fails, or goes down, fails the session, which the source
//! retries; the receiver resumes the job from what every place made durable.

use super::Node;
use crate::cluster::{Membership, NodeName};
use crate::model::RelationshipId;
use mover::receiver::share::WriteShare;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the committing node looks at a share's record, and a node at the shares assigned
/// to it (in the node's watch-fed view of etcd: no request to etcd, a map lookup). Every
/// session of a spread target waits for two of these (the place sees its share, then the
/// committing node its answer), so they are short: the hand-off is a fixed cost of every job.
const WRITE_POLL: Duration = Duration::from_millis(20);
/// Longest the committing node waits for one share whose node stays up.
const MAX_WRITE_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Worker connections of unknown sessions a node holds at once, waiting for their share.
pub(crate) const MAX_HELD: usize = mover::wire::message::MAX_WORKERS as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    Assigned,
    Done,
    Failed,
}

/// The record of one write share in etcd.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// The committing node.
    owner: NodeName,
    share: WriteShare,
    /// The target directory, as every place names it.
    target: PathBuf,
    state: State,
    /// Why it failed.
    error: Option<String>,
    /// File bytes its workers wrote.
    bytes: u64,
    /// It failed before writing anything because this node cannot open the target or the
    /// share (not on the shared file system, say): left out of the relationship's sessions.
    #[serde(default)]
    unreadable: bool,
    /// It stopped because this node could no longer vouch for its cluster lease (etcd away or
    /// out of reach, `crate::lease`): not left out, since a node seen up again has a new one.
    #[serde(default)]
    fenced: bool,
}

fn lost(what: String) -> mover::Error {
    mover::Error::PeerLost(what)
}

/// The write places a ticket of relationship `id` names now (their addresses), if this node
/// spreads its writes; none otherwise.
pub(crate) fn places_for(node: &Node, id: &RelationshipId) -> Vec<SocketAddr> {
    let Some(m) = node.cluster.as_ref().filter(|m| m.takes_writes()) else {
        return Vec::new();
    };
    if !node.opts.roles.is_all() {
        return Vec::new();
    }
    let left_out: HashSet<NodeName> = {
        let mut all = super::lock(&node.writes_left_out);
        let mine = all.entry(id.clone()).or_default();
        mine.retain(|_, since| since.elapsed() < LEFT_OUT_FOR);
        let names = mine.keys().cloned().collect();
        if mine.is_empty() {
            all.remove(id);
        }
        names
    };
    // One place per address: the source and the receiver must map workers onto the same
    // list (a member advertising another's address is left out).
    let mut seen = HashSet::new();
    m.write_places()
        .into_iter()
        .filter(|(n, a)| !left_out.contains(n) && seen.insert(*a))
        .take(mover::receiver::share::MAX_WRITE_PLACES)
        .map(|(_, a)| a)
        .collect()
}

/// The receiver's `Writers` for relationship `id` on this node, if it spreads its writes.
pub(crate) fn writers(
    node: &Node,
    id: &RelationshipId,
    target: PathBuf,
) -> Option<Arc<dyn mover::receiver::share::Writers>> {
    // A receiver in a data container has no cluster client to hand shares with.
    let m = node.cluster.clone().filter(|m| m.takes_writes())?;
    if !node.opts.roles.is_all() {
        return None;
    }
    let rt = tokio::runtime::Handle::try_current().ok()?;
    Some(Arc::new(Places {
        left_out: node.writes_left_out.clone(),
        m,
        rt,
        id: id.clone(),
        target,
    }))
}

/// The committing node's side for one relationship.
struct Places {
    left_out: Arc<LeftOut>,
    m: Arc<Membership>,
    rt: tokio::runtime::Handle,
    id: RelationshipId,
    target: PathBuf,
}

impl mover::receiver::share::Writers for Places {
    fn run(&self, at: SocketAddr, share: WriteShare) -> mover::Result<()> {
        let name = self
            .m
            .write_places()
            .into_iter()
            .find(|(_, a)| *a == at)
            .map(|(n, _)| n)
            .ok_or_else(|| lost(format!("no write place at {at} is up now")))?;
        let k = format!("writes/{name}/{}", share.file);
        let record = Record {
            owner: self.m.name().clone(),
            share,
            target: self.target.clone(),
            state: State::Assigned,
            error: None,
            bytes: 0,
            unreadable: false,
            fenced: false,
        };
        super::assigned::assign(
            &self.rt,
            &self.m,
            (&name, &k),
            &record,
            "write share",
            || self.wait(&name, &k),
        )
    }
}

impl Places {
    fn wait(&self, node: &NodeName, k: &str) -> mover::Result<()> {
        let r: Record = super::assigned::wait(
            &self.m,
            (node, k),
            (WRITE_POLL, MAX_WRITE_WAIT),
            "write share",
            || None,
        )?;
        if r.state == State::Done {
            return Ok(());
        }
        if r.fenced {
            return Err(lost(format!(
                "node {node} stopped writing its share: {}",
                r.error.unwrap_or_default()
            )));
        }
        super::lock(&self.left_out)
            .entry(self.id.clone())
            .or_default()
            .insert(node.clone(), std::time::Instant::now());
        Err(lost(format!(
            "node {node}'s write share failed{}; it is left out of this relationship's \
             sessions for {} s: {}",
            if r.unreadable {
                " (it cannot open the shared target)"
            } else {
                ""
            },
            LEFT_OUT_FOR.as_secs(),
            r.error.unwrap_or_default()
        )))
    }
}

/// Hands a worker connection no receiver here issued to the write shares this node runs (it
/// waits there for its session's share, up to `ShareHost`'s bound); `keep` lives as long as it
/// is held. False if this node writes no shares or too many are held already.
pub(crate) fn hold(node: &Arc<Node>, conn: std::net::TcpStream, keep: Box<dyn Send>) -> bool {
    if !node.cluster.as_ref().is_some_and(|m| m.takes_writes()) {
        return false;
    }
    static HELD: AtomicUsize = AtomicUsize::new(0);
    if HELD.fetch_add(1, Ordering::SeqCst) >= MAX_HELD {
        HELD.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    let host = node.share_host.clone();
    let spawned = std::thread::Builder::new()
        .name("mover-place-accept".into())
        .spawn(move || {
            match mover::transport::tcp::TcpConn::new(conn) {
                Ok(c) => {
                    if let Err(e) = host.accept(Box::new(c)) {
                        tracing::info!("write place: a worker connection refused: {e}");
                    }
                }
                Err(e) => tracing::warn!("write place: socket: {e}"),
            }
            HELD.fetch_sub(1, Ordering::SeqCst);
            drop(keep);
        });
    if spawned.is_err() {
        HELD.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    true
}

/// Runs the write shares other members assign to this node, for as long as the daemon runs.
pub(crate) async fn run_assigned(node: Arc<Node>, m: Arc<Membership>) {
    let prefix = format!("writes/{}/", m.name());
    let rt = tokio::runtime::Handle::current();
    let m2 = m.clone();
    super::assigned::run(
        m,
        prefix,
        WRITE_POLL,
        ("write share", "mover-write-share"),
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

/// Runs write share `k` (`assigned`: its record as etcd held it) and answers in its record.
fn run_one(
    node: &Node,
    m: &Membership,
    rt: &tokio::runtime::Handle,
    k: &str,
    mut record: Record,
    assigned: Vec<u8>,
) {
    tracing::info!(share = k, owner = %record.owner, target = %record.target.display(), "writing a share");
    // A node that does not see the share file where the committing node wrote it is not on
    // the shared file system (or sees another directory at that path).
    let file = record
        .target
        .join(".mover-state/journal")
        .join(&record.share.file);
    // The share writes only under the lease this node holds now (crate::lease).
    let fence = match m.lease().fence(std::time::Instant::now()) {
        Ok(f) => Arc::new(f),
        Err(why) => {
            tracing::warn!(share = k, "write share not run: {why}");
            record.state = State::Failed;
            record.error = Some(format!("this write place did not start: {why}"));
            record.fenced = true;
            node.metrics.write_share_done(false, 0);
            super::assigned::answer(rt, m, (k, &assigned), &record, "write share");
            return;
        }
    };
    let ran = match mover::beneath::open_root(&record.target, "shared target") {
        // Named as the committing node pinned it: absolute, and a directory itself.
        Ok(_) if !record.target.is_absolute() || record.target.is_symlink() => {
            record.unreadable = true;
            Err(mover::Error::Corrupt(format!(
                "{} is not an absolute path to a directory",
                record.target.display()
            )))
        }
        Ok(_) if record.share.file.contains('/') || !file.is_file() => {
            record.unreadable = true;
            Err(mover::Error::Corrupt(format!(
                "{} is not here: this node does not see the target's shared file system",
                file.display()
            )))
        }
        Ok(root) => node.share_host.run(
            std::os::fd::AsFd::as_fd(&root),
            &record.share,
            Some(fence.clone()),
        ),
        Err(e) => {
            record.unreadable = true;
            Err(e)
        }
    };
    match ran {
        Ok(bytes) => {
            record.state = State::Done;
            record.bytes = bytes;
            node.metrics.write_share_done(true, record.bytes);
        }
        Err(e) => {
            tracing::warn!(share = k, "write share failed: {e}");
            record.state = State::Failed;
            record.error = Some(e.to_string());
            record.fenced = matches!(e, mover::Error::Fenced(_)) && !record.unreadable;
            node.metrics.write_share_done(false, 0);
        }
    }
    super::assigned::answer(rt, m, (k, &assigned), &record, "write share");
}

/// Members left out of each target relationship's write places after their share failed,
/// and since when: a member that cannot open the target, or that the source cannot reach,
/// costs the relationship one session, not every one, and is offered again `LEFT_OUT_FOR`
/// later (its mount fixed, its network back).
pub(crate) type LeftOut = Mutex<HashMap<RelationshipId, HashMap<NodeName, std::time::Instant>>>;
/// How long a member whose write share failed is left out of that relationship's sessions.
const LEFT_OUT_FOR: Duration = Duration::from_secs(600);
