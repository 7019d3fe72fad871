//! Cluster membership and leader election in etcd (`mover daemon --cluster etcd://HOST:PORT`).
//!
//! State in etcd, under `KEY_ROOT`:
//! - `nodes/<name>`: every node that ever joined, as it last registered (no lease: a node that
//!   stops is listed as down, not forgotten);
//! - `alive/<name>`: the node's heartbeat, on a lease of `MEMBER_TTL` kept alive every
//!   `HEARTBEAT`. A node that stops heartbeating (killed, partitioned, hung) loses the key when
//!   the lease expires, so it is shown down within `DOWN_BOUND`;
//! - `leader/…`: etcd's election (`campaign` on the same lease): one node leads the scheduler;
//!   when it goes, its lease expires and the next candidate is elected;
//! - `upgrade/plan`, `upgrade/nodes/<name>`: a rolling upgrade's plan and each node's step
//!   (`daemon/rolling.rs`); `containers/<name>`: each node's containers as its supervisor sees
//!   them; `drain/<name>`: whether the node is drained (`mover node drain`), kept while it is
//!   down, so a node drained for maintenance comes back drained; `shards/<node>/...`: a spread
//!   job's shares (`daemon/spread.rs`); `owners/<id>`: which node holds each source
//!   relationship, and the relationship itself, so another node can take it over
//!   (`daemon/owners.rs`); `tokens/<name>`: the cluster's API tokens (`daemon/tokens.rs`);
//!   `writes/<node>/...`: write shares of target sessions, and `expect/<node>/<session>`: the
//!   sessions a write place is told to expect workers of (`daemon/writes.rs`).
//!
//! Each daemon keeps a view of all of it (but for other nodes' `expect/` records) fed by a
//! watch on `KEY_ROOT` (no polling); on any
//! error (etcd restarted or unreachable) the session starts again after `RETRY`, with a new
//! lease, and registers again.

use crate::{Error, Result};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where mover's keys live in etcd (versioned, so a later layout can sit beside it).
pub const KEY_ROOT: &str = "/mover/v1/";
/// Most operations one transaction carries: etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// Lease of a node's heartbeat key, in seconds.
pub const MEMBER_TTL: i64 = 3;
/// How often the lease is renewed: a third of its life, so two lost renewals are survived.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node that stopped heartbeating is shown down within this: its lease's life plus one
/// renewal period (etcd expires leases within half a second of their deadline).
pub const DOWN_BOUND: Duration = Duration::from_secs(MEMBER_TTL as u64 + 2);
/// Pause before a session starts again after an error.
pub const RETRY: Duration = Duration::from_millis(500);
/// Connecting to etcd, and each request, give up after this.
const ETCD_TIMEOUT: Duration = Duration::from_secs(2);
/// Records on this node's lease it keeps to put again on its next lease (`Membership::leased`);
/// beyond this, the oldest are let go. Announcements are the only such records: a few per
/// relationship whose target this node commits.
const MAX_LEASED_KEPT: usize = 4096;
/// How long a record written on the lease is put again on later leases: an announcement is
/// needed until its session's workers have connected, within a ticket's lifetime.
const LEASED_KEPT_FOR: Duration = mover::receiver::TICKET_TTL;
/// Longest node name; names are also etcd key segments.
pub const MAX_NAME: usize = 64;

/// A node's name in the cluster: 1-64 of `[A-Za-z0-9._-]`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = "^[A-Za-z0-9._-]{1,64}$")]
pub struct NodeName(String);

impl TryFrom<String> for NodeName {
    type Error = Error;
    fn try_from(s: String) -> Result<NodeName> {
        let ok = !s.is_empty()
            && s.len() <= MAX_NAME
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(NodeName(s))
        } else {
            Err(Error::Invalid(format!(
                "node name {s:?}: 1-{MAX_NAME} letters, digits, '.', '_' or '-'"
            )))
        }
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0
    }
}

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a daemon joins a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// etcd client endpoints, `http://HOST:PORT`.
    pub endpoints: Vec<String>,
    pub name: NodeName,
    /// This node's jobs spread over the members that also set it, and it runs their shards
    /// (`--spread-jobs`): they see every relationship's source at the same path.
    pub spread: bool,
    /// The writes of this node's target relationships spread over the members that also set
    /// it, and it writes their shares (`--spread-writes`): they see every target directory at
    /// the same path.
    pub writes: bool,
}

/// Most etcd endpoints in `--cluster`.
pub const MAX_ENDPOINTS: usize = 16;

/// Parses `etcd://HOST:PORT[,HOST:PORT...]`.
pub fn parse_url(url: &str) -> Result<Vec<String>> {
    let bad = |why: &str| Error::Invalid(format!("--cluster {url}: {why}"));
    let rest = url
        .strip_prefix("etcd://")
        .ok_or_else(|| bad("expected etcd://HOST:PORT[,HOST:PORT...]"))?;
    let eps: Vec<String> = rest
        .split(',')
        .map(|hp| {
            let (host, port) = hp
                .rsplit_once(':')
                .ok_or_else(|| bad("each endpoint needs :PORT"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad("each endpoint is HOST:PORT"));
            }
            Ok(format!("http://{hp}"))
        })
        .collect::<Result<_>>()?;
    if eps.is_empty() || eps.len() > MAX_ENDPOINTS {
        return Err(bad(&format!("1-{MAX_ENDPOINTS} endpoints")));
    }
    Ok(eps)
}

/// What a node registers about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    pub name: NodeName,
    /// Roles its daemon runs (`all` for a whole daemon in one process).
    pub roles: Vec<String>,
    pub version: String,
    pub pid: u32,
    pub api: String,
    pub listen: String,
    pub started_unix: i64,
    /// Takes shards of other members' jobs (`--spread-jobs`).
    #[serde(default)]
    pub spread: bool,
    /// Writes shares of other members' target sessions (`--spread-writes`).
    #[serde(default)]
    pub writes: bool,
}

/// A node as the cluster sees it now.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MemberView {
    #[serde(flatten)]
    #[schema(inline)]
    pub member: Member,
    /// Its heartbeat key exists (its lease is alive).
    pub up: bool,
    pub leader: bool,
    /// What the node last published: its containers (roles, release, health), running jobs
    /// and their throughput (null before its first report).
    pub report: Option<crate::supervisor::NodeReport>,
    /// Its last drain or undrain (null if it never was drained).
    pub drain: Option<Drain>,
}

/// A node's drain (`mover node drain|undrain`): a drained node starts no job of its
/// relationships; the jobs running when it was drained finish. Receiving is not affected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Drain {
    pub drained: bool,
    /// When it was drained or undrained (RFC 3339).
    pub at: String,
    /// The name of the token that did it.
    pub by: String,
}

/// This daemon's picture of the cluster, kept current by the watch.
#[derive(Debug, Default)]
struct Known {
    nodes: BTreeMap<NodeName, Member>,
    alive: BTreeSet<NodeName>,
    leader: Option<NodeName>,
    connected: bool,
    /// The whole cluster was read at least once since the daemon started: the shared records
    /// are etcd's, not an empty map.
    loaded: bool,
    last_error: Option<String>,
    /// Other nodes' shared records (`SHARED_KINDS`), by key below `KEY_ROOT`.
    shared: BTreeMap<String, Vec<u8>>,
    /// The etcd revision the view reflects: the full read's, then the last watched event's.
    /// A node's own write goes into the view at once only if it is newer (`own_write`): had
    /// the watch already brought it, and maybe a later change of the key, that stays.
    revision: i64,
    /// Changes made to `shared` since the daemon started, per kind (`Membership::changes`),
    /// and whole reloads (which change every kind).
    changes: BTreeMap<String, u64>,
    reloads: u64,
    /// `expect/<this node>/`: the only announcements (`daemon/writes.rs`) kept in the view,
    /// which every node would otherwise hold for every place. Empty: none kept.
    own_expect: String,
}

/// Whether shared record `key` (below `KEY_ROOT`) stays out of this node's view: another
/// place's announcement.
fn not_kept(k: &Known, key: &str) -> bool {
    key.starts_with("expect/") && (k.own_expect.is_empty() || !key.starts_with(&k.own_expect))
}

/// Counts a change of shared record `key` (below `KEY_ROOT`) in its kind.
fn changed(k: &mut Known, key: &str) {
    let kind = key.split_once('/').map_or(key, |(kind, _)| kind);
    match k.changes.get_mut(kind) {
        Some(n) => *n += 1,
        None => {
            k.changes.insert(kind.to_string(), 1);
        }
    }
}

/// Puts this node's own write of `key` (`None`: a delete), made at etcd revision `at`, into
/// the view, unless the view already reflects that revision (the watch brought the write,
/// and anything after it, first).
fn own_write(k: &mut Known, key: &str, value: Option<Vec<u8>>, at: Option<i64>) {
    if at.is_some_and(|at| at <= k.revision) || not_kept(k, key) {
        return;
    }
    match value {
        Some(v) => k.shared.insert(key.to_string(), v),
        None => k.shared.remove(key),
    };
    changed(k, key);
}

/// Key kinds below `KEY_ROOT` kept in every node's view for the daemon's other parts: the
/// rolling upgrade's plan and steps (`upgrade/...`), each node's containers (`containers/...`),
/// each node's drain (`drain/...`), shards of jobs assigned to a node (`shards/<node>/...`),
/// which node holds each source relationship (`owners/<id>`, `daemon/owners.rs`), the
/// cluster's API tokens (`tokens/<name>`, `daemon/tokens.rs`), write shares of target
/// sessions assigned to a node (`writes/<node>/...`, `daemon/writes.rs`), and the sessions a
/// node is told to expect worker connections of as a write place (`expect/<node>/...`, the
/// same module).
const SHARED_KINDS: [&str; 8] = [
    "upgrade",
    "containers",
    "drain",
    "shards",
    "owners",
    "tokens",
    "writes",
    "expect",
];
/// Largest shared record kept (they are small JSON documents).
const MAX_SHARED_VALUE: usize = 64 * 1024;

/// The cluster as one daemon sees it (`GET /v1/cluster`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    pub this_node: NodeName,
    pub connected: bool,
    pub last_error: Option<String>,
    pub leader: Option<NodeName>,
    pub members: Vec<MemberView>,
    /// A node that stops heartbeating is shown down within this many seconds.
    pub down_bound_secs: u64,
    /// Which node holds each source relationship (`daemon/owners.rs`), by id.
    pub relationships: Vec<Owned>,
}

/// One source relationship and the node that holds it (runs its jobs).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Owned {
    pub id: String,
    pub owner: NodeName,
    /// Whether the owner heartbeats now; a relationship whose owner stays down is taken over
    /// by the leader when it can run it.
    pub owner_up: bool,
}

/// The part of an `owners/<id>` record (`daemon/owners.rs`) that says who holds the
/// relationship: the view lists it, and the scheduler checks it for every relationship at
/// every tick, so the rest of the record (the whole relationship) is skipped, not parsed.
#[derive(Deserialize)]
pub struct Holding {
    pub owner: NodeName,
    relationship: Ending,
    /// The owner's term (`owners::Held::term`).
    #[serde(default)]
    pub term: u64,
}

#[derive(Deserialize)]
struct Ending {
    ended: bool,
}

impl Holding {
    pub fn read(record: &[u8]) -> Option<Holding> {
        serde_json::from_slice(record).ok()
    }

    /// A tombstone: the relationship was deleted, ended or reversed where it was held.
    pub fn ended(&self) -> bool {
        self.relationship.ended
    }
}

/// A daemon's membership: registers it, renews its lease, campaigns for leader and watches.
pub struct Membership {
    opts: Options,
    me: Member,
    known: Mutex<Known>,
    /// The current session's client (`None` between sessions), for `put`.
    client: Mutex<Option<Client>>,
    /// How long this node can vouch for its heartbeat lease (the write shares' fence).
    lease: Arc<crate::lease::LeaseClock>,
    /// The records this node wrote on its lease (`write_all(.., leased: true)`) and has not
    /// deleted or written otherwise since, by key below `KEY_ROOT`, with when. Each new
    /// session puts them again on its new lease (`lease_again`): an etcd session that ends
    /// while the node lives (renewals unanswered for a lease's life, the watch closed) grants a
    /// new lease, and the old one's expiry would take them along.
    leased: Mutex<BTreeMap<String, (Vec<u8>, std::time::Instant)>>,
}

fn key(kind: &str, name: &NodeName) -> String {
    format!("{KEY_ROOT}{kind}/{name}")
}

fn lock(m: &Mutex<Known>) -> std::sync::MutexGuard<'_, Known> {
    // A panic elsewhere while holding it leaves plain data, still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn etcd_err(what: &str) -> impl FnOnce(etcd_client::Error) -> Error + '_ {
    move |e| Error::Unavailable(format!("etcd: {what}: {e}"))
}

/// One etcd request, bounded by `ETCD_TIMEOUT`. (Not the client's own timeout option: that
/// would also end the long-lived calls, the watch, the lease renewals and the campaign,
/// whose cancellation withdraws the candidate.)
async fn within<T>(
    what: &str,
    f: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(ETCD_TIMEOUT, f).await {
        Ok(r) => r.map_err(etcd_err(what)),
        Err(_) => Err(Error::Unavailable(format!(
            "etcd: {what}: no answer within {ETCD_TIMEOUT:?}"
        ))),
    }
}

impl Membership {
    pub fn new(opts: Options, me: Member) -> Arc<Membership> {
        assert_eq!(opts.name, me.name, "a node registers under its own name");
        let known = Known {
            own_expect: format!("expect/{}/", me.name),
            ..Known::default()
        };
        Arc::new(Membership {
            opts,
            me,
            known: Mutex::new(known),
            client: Mutex::default(),
            lease: Arc::default(),
            leased: Mutex::default(),
        })
    }

    /// This node's heartbeat lease, as far as it can vouch for it.
    pub fn lease(&self) -> &Arc<crate::lease::LeaseClock> {
        &self.lease
    }

    pub fn name(&self) -> &NodeName {
        &self.me.name
    }

    /// Whether this node spreads its jobs and runs other members' shards (`--spread-jobs`).
    pub fn takes_shards(&self) -> bool {
        self.me.spread
    }

    /// Whether this node has a working session with etcd now.
    pub fn connected(&self) -> bool {
        lock(&self.known).connected
    }

    /// Whether this node has read the whole cluster since it started (its view of the shared
    /// records is etcd's), and has a working session now.
    pub fn loaded(&self) -> bool {
        let k = lock(&self.known);
        k.loaded && k.connected
    }

    /// The shared records whose key (below `KEY_ROOT`) starts with `prefix`, as the watch
    /// last delivered them.
    pub fn shared(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        lock(&self.known)
            .shared
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// How many times the shared records of `kind` (`tokens`, say) changed in this node's
    /// view: something derived from them (`tokens`' index by hash) is current while this has
    /// not moved since it was read, before the records were.
    pub fn changes(&self, kind: &str) -> u64 {
        let k = lock(&self.known);
        k.reloads + k.changes.get(kind).copied().unwrap_or(0)
    }

    /// `f` of the shared record `key` (below `KEY_ROOT`), as the watch last delivered it,
    /// without copying it out of the view (for checks run per relationship per tick).
    pub fn shared_with<T>(&self, key: &str, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        lock(&self.known).shared.get(key).map(|v| f(v))
    }

    /// The current session's client, or why there is none.
    fn client(&self) -> Result<Client> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                Error::Unavailable("etcd: not connected (the session is starting again)".into())
            })
    }

    /// Writes a shared record (`key` below `KEY_ROOT`, of a `SHARED_KINDS` kind); this node's
    /// view has it at once, the others through their watch.
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        writable(key, &value)?;
        let mut c = self.client()?;
        self.unlease([key]);
        let done = within(
            "writing",
            c.put(format!("{KEY_ROOT}{key}"), value.clone(), None),
        )
        .await?;
        let at = done.header().map(|h| h.revision());
        own_write(&mut lock(&self.known), key, Some(value), at);
        Ok(())
    }

    /// Writes several shared records and deletes others (`deletes`, of the kinds `put`
    /// writes) in one transaction (one round trip), all or none. `leased`: the records live on
    /// this node's heartbeat lease, so etcd deletes them once the node is gone (killed,
    /// restarted); the node's next etcd session puts them again on its new lease
    /// (`lease_again`) if the node lives on. Fails if the node has no lease now.
    pub async fn write_all(
        &self,
        records: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
        leased: bool,
    ) -> Result<()> {
        if records.len() + deletes.len() > MAX_TXN_OPS {
            return Err(Error::Invalid(format!(
                "etcd takes at most {MAX_TXN_OPS} operations in one transaction, not {}",
                records.len() + deletes.len()
            )));
        }
        let on = match (leased, self.lease.current()) {
            (false, _) => None,
            (true, Some(lease)) => Some(PutOptions::new().with_lease(lease)),
            (true, None) => {
                return Err(Error::Unavailable(
                    "this node has no cluster session (etcd away)".into(),
                ))
            }
        };
        let mut ops = Vec::with_capacity(records.len() + deletes.len());
        for (key, value) in &records {
            writable(key, value)?;
            ops.push(TxnOp::put(
                format!("{KEY_ROOT}{key}"),
                value.clone(),
                on.clone(),
            ));
        }
        for key in &deletes {
            assert_shared(key);
            ops.push(TxnOp::delete(format!("{KEY_ROOT}{key}"), None));
        }
        // Out of the list before the request, even one never sent (no client while etcd is
        // away): a record whose deletion fails stays on a lease that is not renewed for it,
        // and goes with that lease, instead of being put again on the next one.
        self.unlease(
            deletes
                .iter()
                .chain(records.iter().map(|(k, _)| k))
                .map(String::as_str),
        );
        let mut c = self.client()?;
        let done = within("writing", c.txn(Txn::new().and_then(ops))).await?;
        let at = done.header().map(|h| h.revision());
        if leased {
            let mut kept = self.kept();
            let now = std::time::Instant::now();
            for (key, value) in &records {
                if kept.len() >= MAX_LEASED_KEPT {
                    let oldest = kept.iter().min_by_key(|(_, (_, at))| *at);
                    if let Some(key) = oldest.map(|(k, _)| k.clone()) {
                        kept.remove(&key);
                    }
                }
                kept.insert(key.clone(), (value.clone(), now));
            }
        }
        let mut k = lock(&self.known);
        for (key, value) in records {
            own_write(&mut k, &key, Some(value), at);
        }
        for key in deletes {
            own_write(&mut k, &key, None, at);
        }
        Ok(())
    }

    /// Writes a shared record only if etcd holds `expected` there now (`None`: no record) and,
    /// with `down`, that member has no heartbeat key; in one transaction; whether it did. What
    /// two nodes may race for (a relationship's owner) is written this way, so the later of
    /// two writers that read the same record loses instead of overwriting, and a member that
    /// came back meanwhile is not written over.
    pub async fn put_if(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        down: Option<&NodeName>,
    ) -> Result<bool> {
        writable(key, &value)?;
        let full = format!("{KEY_ROOT}{key}");
        let mut compare = vec![match expected {
            None => Compare::create_revision(full.clone(), CompareOp::Equal, 0),
            Some(v) => Compare::value(full.clone(), CompareOp::Equal, v.to_vec()),
        }];
        if let Some(n) = down {
            compare.push(Compare::create_revision(
                self::key("alive", n),
                CompareOp::Equal,
                0,
            ));
        }
        let op = TxnOp::put(full, value.clone(), None);
        let mut c = self.client()?;
        self.unlease([key]);
        let answer = within("writing", c.txn(Txn::new().when(compare).and_then([op]))).await?;
        let done = answer.succeeded();
        // Into the view at once (the next pass must see its own write, or it would undo it),
        // unless the watch already brought this write or a later one.
        if done {
            let at = answer.header().map(|h| h.revision());
            own_write(&mut lock(&self.known), key, Some(value), at);
        }
        Ok(done)
    }

    /// Deletes a shared record (`key` below `KEY_ROOT`, of a `SHARED_KINDS` kind).
    pub async fn delete(&self, key: &str) -> Result<()> {
        assert_shared(key);
        let mut c = self.client()?;
        self.unlease([key]);
        let done = within("deleting", c.delete(format!("{KEY_ROOT}{key}"), None)).await?;
        let at = done.header().map(|h| h.revision());
        own_write(&mut lock(&self.known), key, None, at);
        Ok(())
    }

    /// Whether member `name` heartbeats now.
    pub fn up(&self, name: &NodeName) -> bool {
        lock(&self.known).alive.contains(name)
    }

    /// Members (not this node) that take shards now: up, `--spread-jobs`, not drained; by name.
    pub fn shard_places(&self) -> Vec<NodeName> {
        let k = lock(&self.known);
        k.nodes
            .values()
            .filter(|m| m.name != self.me.name && m.spread && k.alive.contains(&m.name))
            .filter(|m| !drain_of(&k, &m.name).is_some_and(|d| d.drained))
            .map(|m| m.name.clone())
            .collect()
    }

    /// Whether every member that takes shards of this node's jobs now runs `release` (a share
    /// from an earlier one ignores what it does not know, such as write places).
    pub fn shard_places_run(&self, release: &str) -> bool {
        let places = self.shard_places();
        let k = lock(&self.known);
        places
            .iter()
            .all(|n| k.nodes.get(n).is_some_and(|m| m.version == release))
    }

    /// Members that write shares of this node's target sessions now (up, `--spread-writes`,
    /// one process, not drained), with the data-plane address they listen on; a member
    /// listening on every address is left out (no address to give a source).
    pub fn write_places(&self) -> Vec<(NodeName, std::net::SocketAddr)> {
        let k = lock(&self.known);
        k.nodes
            .values()
            .filter(|m| m.name != self.me.name && m.writes && k.alive.contains(&m.name))
            .filter(|m| m.roles.iter().any(|r| r == "all"))
            .filter(|m| !drain_of(&k, &m.name).is_some_and(|d| d.drained))
            .filter_map(|m| {
                let a: std::net::SocketAddr = m.listen.parse().ok()?;
                (!a.ip().is_unspecified()).then(|| (m.name.clone(), a))
            })
            .collect()
    }

    /// This node writes shares of other members' target sessions.
    pub fn takes_writes(&self) -> bool {
        self.me.writes
    }

    pub fn view(&self) -> ClusterView {
        let k = lock(&self.known);
        ClusterView {
            this_node: self.me.name.clone(),
            connected: k.connected,
            last_error: k.last_error.clone(),
            leader: k.leader.clone(),
            members: k
                .nodes
                .values()
                .map(|m| MemberView {
                    member: m.clone(),
                    up: k.alive.contains(&m.name),
                    leader: k.leader.as_ref() == Some(&m.name),
                    report: k
                        .shared
                        .get(&format!("containers/{}", m.name))
                        .and_then(|v| serde_json::from_slice(v).ok()),
                    drain: drain_of(&k, &m.name),
                })
                .collect(),
            down_bound_secs: DOWN_BOUND.as_secs(),
            relationships: k
                .shared
                .range("owners/".to_string()..)
                .take_while(|(key, _)| key.starts_with("owners/"))
                .filter_map(|(key, v)| {
                    // A tombstone (deleted, ended, reversed) is held by no one.
                    let o = Holding::read(v).filter(|o| !o.ended())?;
                    Some(Owned {
                        id: key.trim_start_matches("owners/").to_string(),
                        owner_up: k.alive.contains(&o.owner),
                        owner: o.owner,
                    })
                })
                .collect(),
        }
    }

    /// `name`'s last drain or undrain, as the watch last delivered it.
    pub fn drain(&self, name: &NodeName) -> Option<Drain> {
        drain_of(&lock(&self.known), name)
    }

    /// Whether this node is drained: it starts no job.
    pub fn drained(&self) -> bool {
        self.drain(&self.me.name).is_some_and(|d| d.drained)
    }

    /// Whether `name` ever joined the cluster.
    pub fn knows(&self, name: &NodeName) -> bool {
        lock(&self.known).nodes.contains_key(name)
    }

    /// Whether this node leads the cluster's scheduler now.
    pub fn is_leader(&self) -> bool {
        lock(&self.known).leader.as_ref() == Some(&self.me.name)
    }

    /// Runs sessions with etcd for as long as the daemon runs.
    pub async fn run(self: Arc<Self>) {
        loop {
            let e = self.session().await;
            self.lease.ended();
            {
                let mut k = lock(&self.known);
                k.connected = false;
                k.last_error = Some(e.to_string());
            }
            tracing::warn!("cluster session ended, joining again: {e}");
            tokio::time::sleep(RETRY).await;
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Vec<u8>, std::time::Instant)>> {
        // Plain data: a panic elsewhere while holding it leaves it usable.
        self.leased.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `keys` out of the records put again on later leases.
    fn unlease<'k>(&self, keys: impl IntoIterator<Item = &'k str>) {
        let mut kept = self.kept();
        for key in keys {
            kept.remove(key);
        }
    }

    /// Puts the records this node keeps on its lease (`leased`), those younger than
    /// `LEASED_KEPT_FOR`, again on `lease`. Run beside the session's renewals (a slow etcd
    /// must not hold those up), and best effort: a record not put again is what a lost lease
    /// takes, as for a node that died.
    async fn lease_again(&self, mut c: Client, lease: i64) {
        let now = std::time::Instant::now();
        let again: Vec<(String, Vec<u8>)> = {
            let mut kept = self.kept();
            kept.retain(|_, (_, at)| now.saturating_duration_since(*at) < LEASED_KEPT_FOR);
            kept.iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect()
        };
        for part in again.chunks(MAX_TXN_OPS) {
            let on = PutOptions::new().with_lease(lease);
            let ops: Vec<TxnOp> = part
                .iter()
                .map(|(k, v)| TxnOp::put(format!("{KEY_ROOT}{k}"), v.clone(), Some(on.clone())))
                .collect();
            let what = "putting this node's leased records on its new lease";
            if let Err(e) = within(what, c.txn(Txn::new().and_then(ops))).await {
                tracing::warn!("{e}");
                return;
            }
            // A record deleted meanwhile left the list before its deletion went out: deleted
            // again, so this put does not bring it back.
            let gone: Vec<String> = {
                let kept = self.kept();
                part.iter()
                    .filter(|(k, _)| !kept.contains_key(k))
                    .map(|(k, _)| k.clone())
                    .collect()
            };
            for k in gone {
                let deleted = within("deleting", c.delete(format!("{KEY_ROOT}{k}"), None)).await;
                if let Err(e) = deleted {
                    tracing::debug!("{e}");
                }
            }
        }
        if !again.is_empty() {
            tracing::debug!(records = again.len(), "leased records put on the new lease");
        }
    }

    /// One session: returns only with the error that ended it.
    async fn session(&self) -> Error {
        let e = match self.session_inner().await {
            Ok(()) => Error::Unavailable("etcd closed the watch".into()),
            Err(e) => e,
        };
        // No call goes out on the ended session's client (and lease) meanwhile.
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
        e
    }

    async fn session_inner(&self) -> Result<()> {
        let connect = ConnectOptions::new().with_connect_timeout(ETCD_TIMEOUT);
        let mut c = within(
            "connecting",
            Client::connect(&self.opts.endpoints, Some(connect)),
        )
        .await?;
        let ttl = Duration::from_secs(MEMBER_TTL as u64);
        let asked = std::time::Instant::now();
        let lease = within(
            "granting the heartbeat lease",
            c.lease_grant(MEMBER_TTL, None),
        )
        .await?
        .id();
        self.lease.granted(lease, asked, ttl);
        let me = serde_json::to_vec(&self.me).map_err(|e| Error::Invalid(e.to_string()))?;
        within(
            "registering the node",
            c.put(key("nodes", &self.me.name), me.clone(), None),
        )
        .await?;
        within(
            "putting the heartbeat",
            c.put(
                key("alive", &self.me.name),
                me,
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;
        // The keeper's first renewal is answered before it returns.
        let asked = std::time::Instant::now();
        let (mut keeper, mut acks) =
            within("keeping the lease alive", c.lease_keep_alive(lease)).await?;
        self.lease.granted(lease, asked, ttl);
        // Read everything once, then watch from the next revision: nothing is missed between.
        let all = within(
            "reading the cluster",
            c.get(KEY_ROOT, Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let rev = all.header().map_or(0, |h| h.revision());
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        {
            let mut k = lock(&self.known);
            k.nodes.clear();
            k.alive.clear();
            k.shared.clear();
            k.reloads += 1;
            for kv in all.kvs() {
                apply(&mut k, kv.key(), Some(kv.value()));
            }
            k.connected = true;
            k.loaded = true;
            k.last_error = None;
            k.revision = rev;
        }
        self.refresh_leader(&mut c).await?;
        let start = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        let mut events = within("watching the cluster", c.watch(KEY_ROOT, Some(start))).await?;
        // Campaigning blocks until elected: on its own task, on the same lease, so a node that
        // dies loses leadership when its heartbeat goes.
        let mut elect = c.clone();
        let name = self.me.name.to_string();
        let campaign = tokio::spawn(async move {
            elect
                .campaign(format!("{KEY_ROOT}leader"), name, lease)
                .await
                .map(|_| ())
        });
        let _stop_campaign = AbortOnDrop(campaign);
        let mut tick = tokio::time::interval(HEARTBEAT);
        let mut acked = tokio::time::Instant::now();
        let again = self.lease_again(c.clone(), lease);
        tokio::pin!(again);
        let mut put_again = false;
        loop {
            tokio::select! {
                () = &mut again, if !put_again => put_again = true,
                _ = tick.tick() => {
                    // Unanswered for a whole lease life: the lease may be gone; start again.
                    if acked.elapsed() > ttl {
                        return Err(Error::Unavailable("etcd: no lease renewal answered".into()));
                    }
                    self.lease.renewal_sent(std::time::Instant::now());
                    within("renewing the lease", keeper.keep_alive()).await?;
                }
                ack = acks.message() => {
                    match ack.map_err(etcd_err("renewing the lease"))? {
                        Some(a) if a.ttl() > 0 => {
                            acked = tokio::time::Instant::now();
                            self.lease.renewal_answered(Duration::from_secs(a.ttl() as u64));
                        }
                        _ => return Err(Error::Unavailable("etcd: the heartbeat lease expired".into())),
                    }
                }
                ev = events.message() => {
                    let Some(resp) = ev.map_err(etcd_err("watching the cluster"))? else {
                        return Ok(());
                    };
                    if resp.canceled() {
                        return Err(Error::Unavailable("etcd canceled the watch (compacted?)".into()));
                    }
                    let mut leader_changed = false;
                    {
                        let mut k = lock(&self.known);
                        for e in resp.events() {
                            let Some(kv) = e.kv() else { continue };
                            let value = (e.event_type() == EventType::Put).then(|| kv.value());
                            leader_changed |= apply(&mut k, kv.key(), value);
                            k.revision = k.revision.max(kv.mod_revision());
                        }
                    }
                    if leader_changed {
                        self.refresh_leader(&mut c).await?;
                    }
                }
            }
        }
    }

    async fn refresh_leader(&self, c: &mut Client) -> Result<()> {
        let asked = tokio::time::timeout(ETCD_TIMEOUT, c.leader(format!("{KEY_ROOT}leader")))
            .await
            .map_err(|_| Error::Unavailable("etcd: reading the leader: no answer".into()))?;
        let leader = match asked {
            Ok(r) => r
                .kv()
                .and_then(|kv| String::from_utf8(kv.value().to_vec()).ok())
                .and_then(|s| NodeName::try_from(s).ok()),
            // "election: no leader" is an answer, not a failure.
            Err(e) if e.to_string().contains("no leader") => None,
            Err(e) => return Err(etcd_err("reading the leader")(e)),
        };
        let mut k = lock(&self.known);
        if k.leader != leader {
            tracing::info!(leader = ?leader.as_ref().map(|l| l.to_string()), "cluster leader");
        }
        k.leader = leader;
        Ok(())
    }
}

/// A shared record this node may write: of a `SHARED_KINDS` kind (else a bug here), and no
/// larger than every node's view keeps.
fn writable(key: &str, value: &[u8]) -> Result<()> {
    assert_shared(key);
    if value.len() > MAX_SHARED_VALUE {
        return Err(Error::Invalid(format!(
            "{key}: {} bytes is more than a shared record holds ({MAX_SHARED_VALUE})",
            value.len()
        )));
    }
    Ok(())
}

/// Only records of the kinds every node's view keeps are written or deleted through `put` and
/// `delete` (an invariant of the callers: their keys are built in this crate).
fn assert_shared(key: &str) {
    assert!(
        SHARED_KINDS
            .iter()
            .any(|k| key.starts_with(&format!("{k}/"))),
        "{key} is not a shared record"
    );
}

fn drain_of(k: &Known, name: &NodeName) -> Option<Drain> {
    k.shared
        .get(&format!("drain/{name}"))
        .and_then(|v| serde_json::from_slice(v).ok())
}

struct AbortOnDrop(tokio::task::JoinHandle<std::result::Result<(), etcd_client::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Applies one key's new value (`None`: deleted) to the view; true if it was an election key.
fn apply(k: &mut Known, key: &[u8], value: Option<&[u8]>) -> bool {
    let Some(rest) = key.strip_prefix(KEY_ROOT.as_bytes()) else {
        return false;
    };
    let rest = String::from_utf8_lossy(rest);
    let (kind, name) = rest.split_once('/').unwrap_or((&rest, ""));
    if kind == "leader" {
        return true;
    }
    if SHARED_KINDS.contains(&kind) {
        if not_kept(k, &rest) {
            return false;
        }
        changed(k, &rest);
        match value {
            Some(v) if v.len() <= MAX_SHARED_VALUE => {
                k.shared.insert(rest.to_string(), v.to_vec());
            }
            _ => {
                k.shared.remove(rest.as_ref());
            }
        }
        return false;
    }
    let Ok(name) = NodeName::try_from(name.to_string()) else {
        return false;
    };
    match (kind, value) {
        ("nodes", Some(v)) => {
            if let Ok(m) = serde_json::from_slice::<Member>(v) {
                k.nodes.insert(name, m);
            }
        }
        ("nodes", None) => {
            k.nodes.remove(&name);
        }
        ("alive", Some(_)) => {
            k.alive.insert(name);
        }
        ("alive", None) => {
            k.alive.remove(&name);
        }
        _ => {}
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: &str) -> Member {
        Member {
            name: NodeName::try_from(n.to_string()).unwrap(),
            roles: vec!["all".into()],
            version: "0.1.0".into(),
            pid: 1,
            api: "127.0.0.1:1".into(),
            listen: "127.0.0.1:2".into(),
            started_unix: 0,
            spread: false,
            writes: false,
        }
    }

    #[test]
    fn a_change_is_counted_in_its_kind_only() {
        let mut k = Known::default();
        let tokens = |k: &Known| k.changes.get("tokens").copied().unwrap_or(0);
        apply(
            &mut k,
            format!("{KEY_ROOT}owners/x").as_bytes(),
            Some(b"{}"),
        );
        assert_eq!(tokens(&k), 0);
        apply(
            &mut k,
            format!("{KEY_ROOT}tokens/a").as_bytes(),
            Some(b"{}"),
        );
        apply(&mut k, format!("{KEY_ROOT}tokens/a").as_bytes(), None);
        assert_eq!(tokens(&k), 2);
        own_write(&mut k, "tokens/b", Some(b"{}".to_vec()), None);
        assert_eq!(tokens(&k), 3);
    }

    #[test]
    fn a_nodes_own_write_does_not_undo_what_the_watch_brought_after_it() {
        let mut k = Known::default();
        let key = "tokens/a";
        // Written at revision 5; the view is at 3: it goes in at once.
        k.revision = 3;
        own_write(&mut k, key, Some(b"mine".to_vec()), Some(5));
        assert_eq!(k.shared.get(key).unwrap(), b"mine");
        // The watch brought the write (5) and a delete elsewhere (6) before this node took
        // the lock: its own write is not put back.
        k.shared.remove(key);
        k.revision = 6;
        own_write(&mut k, key, Some(b"mine".to_vec()), Some(5));
        assert!(!k.shared.contains_key(key));
        // Nor is a key re-created elsewhere (8) removed by this node's delete (7).
        k.shared.insert(key.into(), b"theirs".to_vec());
        k.revision = 8;
        own_write(&mut k, key, None, Some(7));
        assert_eq!(k.shared.get(key).unwrap(), b"theirs");
        own_write(&mut k, key, None, Some(9));
        assert!(!k.shared.contains_key(key));
    }

    #[test]
    fn cluster_urls_name_etcd_endpoints_and_bad_ones_say_why() {
        assert_eq!(
            parse_url("etcd://127.0.0.1:2379,[::1]:2380").unwrap(),
            vec!["http://127.0.0.1:2379", "http://[::1]:2380"]
        );
        for bad in [
            "http://x:1",
            "etcd://",
            "etcd://host",
            "etcd://h:99999",
            "etcd://:1",
        ] {
            let e = parse_url(bad).unwrap_err().to_string();
            assert!(e.contains("--cluster"), "{bad}: {e}");
        }
    }

    #[test]
    fn node_names_are_safe_key_segments() {
        assert!(NodeName::try_from("node-1.a_b".to_string()).is_ok());
        for bad in ["", "a/b", "..x/", "a b", &"x".repeat(MAX_NAME + 1)] {
            assert!(NodeName::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_node_keeps_only_the_announcements_made_to_it() {
        let mut k = Known {
            own_expect: "expect/n1/".into(),
            ..Known::default()
        };
        apply(&mut k, b"/mover/v1/expect/n1/0a", Some(b"{}"));
        apply(&mut k, b"/mover/v1/expect/n2/0b", Some(b"{}"));
        apply(&mut k, b"/mover/v1/expect/n10/0c", Some(b"{}"));
        own_write(&mut k, "expect/n2/0d", Some(b"{}".to_vec()), None);
        let kept: Vec<&String> = k.shared.keys().collect();
        assert_eq!(kept, ["expect/n1/0a"]);
        apply(&mut k, b"/mover/v1/expect/n1/0a", None);
        assert!(k.shared.is_empty());
        // A view with no name of its own keeps none.
        let mut k = Known::default();
        apply(&mut k, b"/mover/v1/expect/n1/0a", Some(b"{}"));
        assert!(k.shared.is_empty());
    }

    #[test]
    fn a_node_whose_heartbeat_key_goes_is_listed_down_not_forgotten() {
        let mut k = Known::default();
        let m = member("n1");
        let v = serde_json::to_vec(&m).unwrap();
        apply(&mut k, b"/mover/v1/nodes/n1", Some(&v));
        apply(&mut k, b"/mover/v1/alive/n1", Some(&v));
        assert!(k.alive.contains(&m.name));
        apply(&mut k, b"/mover/v1/alive/n1", None);
        assert!(!k.alive.contains(&m.name) && k.nodes.contains_key(&m.name));
        assert!(apply(&mut k, b"/mover/v1/leader/694d7a", Some(b"n1")));
        assert!(!apply(&mut k, b"/other/key", Some(b"x")));
    }
}
