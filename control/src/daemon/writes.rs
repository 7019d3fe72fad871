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
//!
//! A place's peer port holds the worker connections of sessions it runs no receiver of until
//! their share arrives. Anyone who reaches the port can send such Hellos with made-up session
//! ids, so the committing node announces each session to its places before the source gets
//! its ticket (`announce`), and a place holds the workers of announced sessions apart from
//! the rest (`hold`).

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
/// Worker connections of announced sessions (`announce`) a node holds at once, waiting for
/// their share.
pub(crate) const MAX_HELD: usize = mover::wire::message::MAX_WORKERS as usize;
/// Worker connections of sessions nobody announced that a node holds at once: those of a
/// committing node of a release that does not announce (during a rolling upgrade), or whose
/// announcement could not be written. Small, because anyone who reaches the port can send
/// Hellos with made-up session ids: they fill this bound, never `MAX_HELD`.
pub(crate) const MAX_HELD_UNANNOUNCED: usize = 16;
/// Announcement records one relationship's next announcement deletes at most: four sessions'
/// places, which with the next session's puts stays below etcd's operations per transaction.
const MAX_ANNOUNCED_LISTED: usize = 4 * mover::receiver::share::MAX_WRITE_PLACES;
const _: () = assert!(
    MAX_ANNOUNCED_LISTED + mover::receiver::share::MAX_WRITE_PLACES <= crate::cluster::MAX_TXN_OPS
);
/// How long a place waits for a session's announcement to reach its view (the committing
/// node writes it before it answers the source, so only the watch's delay is waited for)
/// before it takes the session's worker as unannounced.
pub(crate) const ANNOUNCE_LAG: Duration = Duration::from_secs(2);
/// An announcement is needed until its session's workers have connected, which is after
/// the source's walk and the lists (minutes for a large tree), at most as long as a ticket
/// lives. The committing node removes it once the place's share is done, and with the
/// relationship's next session; it lives on the committing node's heartbeat lease, so etcd
/// removes it when that node dies or restarts; what is left (the last session of a deleted
/// relationship, records of an older release) is removed by the place this long after it
/// first saw it.
const ANNOUNCED_KEPT: Duration = mover::receiver::TICKET_TTL;
/// How often a place looks for announcements to remove.
const ANNOUNCED_SWEEP: Duration = Duration::from_secs(60);
/// How often a Hello waiting for its announcement looks at the view.
const ANNOUNCED_POLL: Duration = Duration::from_millis(50);

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

/// A write place: the member and the data-plane address the source connects to.
pub(crate) type Place = (NodeName, SocketAddr);

/// The write places a ticket of relationship `id` names now, if this node spreads its
/// writes; none otherwise.
pub(crate) fn places_for(node: &Node, id: &RelationshipId) -> Vec<Place> {
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
        let announced = u128::from_str_radix(&share.session, 16)
            .ok()
            .map(|s| announcement(&name, s));
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
        let outcome = super::assigned::assign(
            &self.rt,
            &self.m,
            (&name, &k),
            &record,
            "write share",
            || self.wait(&name, &k),
        );
        // Its workers are in (or never will be): the place needs the announcement no more.
        if let Some(a) = announced {
            if let Err(e) = self.rt.block_on(self.m.delete(&a)) {
                tracing::debug!("removing announcement {a}: {e}");
            }
        }
        outcome
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

/// The record announcing session `session` to write place `place`.
fn announcement(place: &NodeName, session: u128) -> String {
    format!("expect/{place}/{session:032x}")
}

/// What an announcement says (for the log and an operator reading etcd).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Announced {
    /// The committing node.
    owner: NodeName,
    relationship: RelationshipId,
}

/// Tells each write place a ticket names to expect worker connections of `session`, in one
/// etcd transaction, before the ticket goes to the source: a place holds the workers of
/// announced sessions in a bound that Hellos with made-up ids cannot fill. Best effort: a
/// place not told takes the session's workers as unannounced (`MAX_HELD_UNANNOUNCED`), so
/// this never fails a ticket.
///
/// The same transaction deletes what the relationship's previous session announced: a
/// session that gave a place no share (a no-op job, one that failed before its shares) left
/// its announcement there, and a job every few seconds would otherwise pile thousands of
/// them a day into etcd until the places' sweep. A relationship's sessions follow each
/// other, so a place holding a worker of the previous one keeps it (held already).
///
/// The records live on this node's heartbeat lease: a committing node that dies or restarts
/// forgets what it announced (`Node.announced` is in memory), and etcd removes those records
/// once the lease expires instead of the places' day-long sweep. A committing node whose etcd
/// session ends while it lives puts them again on its next lease (`Membership::lease_again`);
/// a worker that comes between the old lease's expiry and that is held as unannounced, as
/// when no announcement could be written.
pub(crate) fn announce(node: &Node, id: &RelationshipId, session: u128, places: &[Place]) {
    let (Some(m), false) = (node.cluster.as_ref(), places.is_empty()) else {
        return;
    };
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(relationship = %id, "no runtime to announce a session to its write places");
        return;
    };
    let body = Announced {
        owner: m.name().clone(),
        relationship: id.clone(),
    };
    let Ok(body) = serde_json::to_vec(&body) else {
        return;
    };
    let keys: Vec<String> = places
        .iter()
        .map(|(name, _)| announcement(name, session))
        .collect();
    let records = keys.iter().map(|k| (k.clone(), body.clone())).collect();
    let previous: Vec<String> = super::lock(&node.announced)
        .get(id)
        .into_iter()
        .flatten()
        .filter(|k| !keys.contains(k))
        .cloned()
        .collect();
    let done = rt.block_on(m.write_all(records, previous.clone(), true));
    if let Err(e) = &done {
        tracing::warn!(relationship = %id, "announcing a session to its write places: {e}");
    }
    let written = if done.is_ok() { previous } else { Vec::new() };
    if !list_announced(node, id, keys, &written) {
        withdraw(node, id);
    }
}

/// Lists `keys`, just announced for relationship `id`, for its next session (or its end) to
/// delete, and drops `deleted`, which the announcing transaction took out. False if the
/// relationship has ended (made writable or deleted) or cannot be read (forgotten) by now:
/// then what is listed has to go at once, as `withdraw` does. An end that came while the
/// announcement was being written withdrew what was listed then, not these keys; it records
/// the end before it withdraws, and this lists the keys before it looks, so whichever of the
/// two comes second finds the other's work done.
fn list_announced(node: &Node, id: &RelationshipId, keys: Vec<String>, deleted: &[String]) -> bool {
    {
        let mut all = super::lock(&node.announced);
        let listed = all.entry(id.clone()).or_default();
        // Merged, not replaced: a ticket of the same relationship at the same time (a source
        // retrying) announced its own. What a failed transaction was to delete stays listed,
        // for the next session, and so do its keys: it may have been taken although its
        // answer was lost.
        listed.retain(|k| !deleted.contains(k));
        listed.extend(keys);
        // Bounded (so is the next transaction): what falls off is left to the places' sweep.
        let over = listed.len().saturating_sub(MAX_ANNOUNCED_LISTED);
        listed.drain(..over);
    }
    // Gone (deleted) or unreadable (being forgotten): withdrawn. Any other failure to read it
    // (the store busy) keeps them: withdrawing a live session's would have its places hold its
    // workers in the small unannounced bound.
    match node.get(id, crate::model::Role::Target) {
        Ok(r) => !r.ended,
        Err(crate::Error::NotFound(_) | crate::Error::Unreadable(_)) => false,
        Err(e) => {
            tracing::debug!(relationship = %id, "announced for a relationship not read: {e}");
            true
        }
    }
}

/// Deletes what the sessions of relationship `id`, ended (made writable or deleted) or
/// forgotten here, announced to their write places. Best effort: with no next session to
/// replace them they would stay until the places' day-long sweep, or until this node's lease
/// ends. What fails to go (etcd away) is left to those: it is no longer put again on this
/// node's next lease (`Membership::write_all`).
pub(crate) fn withdraw(node: &Node, id: &RelationshipId) {
    let Some(keys) = super::lock(&node.announced).remove(id) else {
        return;
    };
    let (Some(m), false) = (node.cluster.as_ref(), keys.is_empty()) else {
        return;
    };
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(relationship = %id, "no runtime to withdraw an ended relationship's announcements");
        return;
    };
    // Within one transaction's bound: `announce` keeps at most MAX_ANNOUNCED_LISTED.
    if let Err(e) = rt.block_on(m.write_all(Vec::new(), keys, false)) {
        tracing::warn!(relationship = %id, "withdrawing an ended relationship's announcements: {e}");
    }
}

/// Whether this node's view holds an announcement of `session` to it, waiting for it until
/// `ANNOUNCE_LAG` from now or `until`, whichever is first. False at once on a node that
/// writes no shares.
pub(crate) async fn announced(node: &Node, session: u128, until: tokio::time::Instant) -> bool {
    let Some(m) = node.cluster.as_ref().filter(|m| m.takes_writes()) else {
        return false;
    };
    let k = announcement(m.name(), session);
    let until = until.min(tokio::time::Instant::now() + ANNOUNCE_LAG);
    loop {
        if m.shared_with(&k, |_| ()).is_some() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(ANNOUNCED_POLL).await;
    }
}

/// Removes the announcements to this node once they are `ANNOUNCED_KEPT` old (as first seen
/// here), for as long as the daemon runs.
pub(crate) async fn sweep_announced(m: Arc<Membership>) {
    let prefix = format!("expect/{}/", m.name());
    let mut seen: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(ANNOUNCED_SWEEP);
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        let there: HashSet<String> = m.shared(&prefix).into_iter().map(|(k, _)| k).collect();
        seen.retain(|k, _| there.contains(k));
        for k in there {
            let first = *seen.entry(k.clone()).or_insert(now);
            if now.saturating_duration_since(first) > ANNOUNCED_KEPT {
                match m.delete(&k).await {
                    Ok(()) => {
                        seen.remove(&k);
                    }
                    Err(e) => tracing::debug!("removing announcement {k}: {e}"),
                }
            }
        }
    }
}

/// Hands a worker connection no receiver here issued to the write shares this node runs (it
/// waits there for its session's share, up to `ShareHost`'s bound); `keep` lives as long as it
/// is held. `announced`: its session was announced to this node (`announced`). False if this
/// node writes no shares or too many of its kind are held already.
pub(crate) fn hold(
    node: &Arc<Node>,
    conn: std::net::TcpStream,
    keep: Box<dyn Send>,
    announced: bool,
) -> bool {
    if !node.cluster.as_ref().is_some_and(|m| m.takes_writes()) {
        return false;
    }
    static HELD: AtomicUsize = AtomicUsize::new(0);
    static UNANNOUNCED: AtomicUsize = AtomicUsize::new(0);
    let (held, max): (&'static AtomicUsize, usize) = if announced {
        (&HELD, MAX_HELD)
    } else {
        (&UNANNOUNCED, MAX_HELD_UNANNOUNCED)
    };
    if held.fetch_add(1, Ordering::SeqCst) >= max {
        held.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    tracing::info!(
        announced,
        "write place: holding a worker connection for its share"
    );
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
            held.fetch_sub(1, Ordering::SeqCst);
            drop(keep);
        });
    if spawned.is_err() {
        held.fetch_sub(1, Ordering::SeqCst);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Relationship, Role};

    fn listed(node: &Node, id: &RelationshipId) -> Vec<String> {
        super::super::lock(&node.announced)
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn an_announcement_written_after_its_relationship_ended_is_not_kept_for_a_next_session() {
        let dir = tempfile::tempdir().unwrap();
        let (node, _clock) = super::super::test_node(dir.path());
        let id = RelationshipId::parse(&"a7".repeat(16)).unwrap();
        let r = Relationship::new(
            id.clone(),
            Role::Target,
            crate::model::tests::spec(),
            1,
            Some("sha256:source".into()),
        );
        node.store().insert(&r).unwrap();
        let keys = |s: u128| {
            vec![announcement(
                &NodeName::try_from("t2".to_string()).unwrap(),
                s,
            )]
        };

        // Live: listed for the next session to delete, merged with what is there, less what
        // the announcing transaction deleted.
        assert!(list_announced(&node, &id, keys(1), &[]));
        assert!(list_announced(&node, &id, keys(2), &[]));
        assert_eq!(listed(&node, &id), [keys(1), keys(2)].concat());
        assert!(list_announced(&node, &id, keys(3), &keys(1)));
        assert_eq!(listed(&node, &id), [keys(2), keys(3)].concat());

        // Ended while a ticket's announcement was being written (release withdrew what was
        // listed then): the late one is not kept for a session that will never come.
        node.modify(&id, Role::Target, |x| x.ended = true).unwrap();
        withdraw(&node, &id);
        assert!(listed(&node, &id).is_empty());
        assert!(!list_announced(&node, &id, keys(4), &[]));
        withdraw(&node, &id);
        assert!(listed(&node, &id).is_empty());

        // Deleted or forgotten (no row to read): the same.
        node.store().delete(&id).unwrap();
        assert!(!list_announced(&node, &id, keys(5), &[]));
    }
}
