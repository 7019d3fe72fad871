//! `mover daemon`: one per node. It serves the REST API (routes.rs), talks to peer daemons over
//! mutual TLS (peer_server.rs answers, peer_call.rs asks), schedules and runs the source side of jobs on the data
//! plane's threads (source.rs), keeps target directories read-only and hands out data-plane
//! tickets (target.rs). State lives in SQLite; the node's certificate and the first admin token
//! in the data dir. It never reads or writes file data itself.

pub mod api;
mod api_common;
mod api_containers;
mod api_drain;
mod api_events;
mod api_proxy;
mod api_rolling;
mod api_schemas;
mod api_snapshots;
mod api_unreadable;
mod assigned;
pub mod config;
mod data_client;
mod data_host;
pub mod data_server;
pub mod data_wire;
pub mod drill;
mod host;
mod http;
mod metrics;
mod openapi;
pub mod owners;
mod paths;
mod peer_call;
mod peer_server;
mod reverse;
pub mod roles;
pub mod rolling;
mod routes;
mod self_upgrade;
mod silence;
#[cfg(test)]
mod sim;
pub mod snapshots;
mod source;
mod spread;
mod target;
mod tokens;
mod ui;
mod upgrade;
pub(crate) mod upgrade_record;
mod view;
mod watch;
mod writes;

use crate::clock::{Clock, SystemClock};
use crate::error::IoContext;
use crate::events::{EventKind, NewEvent};
use crate::model::{Relationship, RelationshipId, Role};
use crate::peer::JobView;
use crate::store::Store;
use crate::tls::Identity;
use crate::{Error, Result};
pub use config::DaemonOptions;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
pub use watch::Detection;

/// A target that has not heard from its source for this long shows it as disconnected (the
/// source polls every few seconds).
pub const DISCONNECTED_AFTER: Duration = Duration::from_secs(30);

/// How long SIGTERM waits for running jobs to reach a chunk boundary and record their state.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Everything the daemon's tasks share. Locks are held for map lookups and SQLite statements
/// only, never across an await or a network call.
pub struct Node {
    pub opts: DaemonOptions,
    /// Every time the daemon reads goes through this (tests pass a simulated one).
    pub clock: Arc<dyn Clock>,
    store: Mutex<Store>,
    pub identity: Identity,
    /// Mounts, reverts and receiver threads (`host::System`; the simulation's fake in tests).
    host: Arc<dyn host::Host>,
    /// Source side: jobs running now.
    jobs: Mutex<HashMap<RelationshipId, source::Job>>,
    /// Source side: "replicate now" requests not yet started.
    wanted: Mutex<HashSet<RelationshipId>>,
    /// Target side: data-plane receivers, one per authorized relationship that ran a job.
    receivers: Mutex<HashMap<RelationshipId, target::Rx>>,
    /// Target side: progress the source reported for its running job.
    reported: Mutex<HashMap<RelationshipId, JobView>>,
    /// Target side: relationships being reverted and released (delete, make-writable).
    reverting: Mutex<HashSet<RelationshipId>>,
    /// Target side: held while authorizing (overlap check, then protection).
    authorizing: Mutex<()>,
    /// Target side: session id (ticket) -> relationship, to route data-plane connections that
    /// arrive on the replication port.
    routes: Mutex<HashMap<u128, (RelationshipId, Instant)>>,
    /// Target side: when the pinned source last reached us, per relationship.
    last_contact: Mutex<HashMap<RelationshipId, Instant>>,
    started: Instant,
    metrics: metrics::Metrics,
    /// Source side: watchers of the sources that replicate on events.
    watches: watch::Watches,
    /// Both sides: relationships reconnected after a failover whose first job has not
    /// succeeded yet (state `reverting_to_last_recovery_point`), with when (wall ns).
    reconnecting: Mutex<HashMap<RelationshipId, i64>>,
    /// Source side: each relationship's sender manifest, in memory between jobs.
    manifests: Mutex<HashMap<RelationshipId, Arc<mover::sender::ManifestCache>>>,
    /// Source side: files that changed while a session read them, and when (`remember_hot`).
    hot_files: Mutex<HashMap<RelationshipId, HashMap<Vec<u8>, Instant>>>,
    /// Both sides: each relationship's peer release as the last exchange told it, and the
    /// refusal when this release may not replicate with it (`mover::compat`; state
    /// `incompatible_peer_version` while there).
    peer_releases: Mutex<HashMap<RelationshipId, (String, Option<String>)>>,
    /// Source side: the transport each relationship's last session used (`tcp`, `rdma`).
    transports: Mutex<HashMap<RelationshipId, String>>,
    /// Both sides: relationships a reverse (failback) is changing on this node.
    reversing: Mutex<HashSet<RelationshipId>>,
    /// Source side (cluster): policy snapshots due that this node could not take yet
    /// (`snapshots::owed`).
    snapshots_owed: Mutex<Vec<snapshots::Owed>>,
    /// The cluster's API tokens by hash (`tokens::Index`).
    token_index: Mutex<tokens::Index>,
    shutting_down: AtomicBool,
    /// Set by an upgrade's restart phase: the binary to execute, and the release it is, once
    /// the daemon has stopped as on SIGTERM (`self_upgrade`).
    exec_next: Mutex<Option<(PathBuf, mover::compat::Version)>>,
    /// Wakes the API server's graceful shutdown for that restart.
    restart: tokio::sync::Notify,
    /// Membership in an etcd cluster (`--cluster`), if this node joined one.
    pub cluster: Option<Arc<crate::cluster::Membership>>,
    /// Target side (cluster, `--spread-writes`): the write shares of other nodes' sessions
    /// this node runs, and the members left out of each relationship's write places.
    share_host: Arc<mover::receiver::share::ShareHost>,
    writes_left_out: Arc<writes::LeftOut>,
    /// Committing side (cluster, `--spread-writes`): the announcement records each
    /// relationship's sessions left, which its next announcement deletes (`writes::announce`).
    announced: Mutex<HashMap<RelationshipId, Vec<String>>>,
}

impl Node {
    /// Stops the daemon as SIGTERM does, then executes `exe` (release `to`) in its place.
    pub(crate) fn restart_into(&self, exe: PathBuf, to: mover::compat::Version) {
        *lock(&self.exec_next) = Some((exe, to));
        self.restart.notify_one();
    }

    /// Records what the last exchange learned of `id`'s peer release (`theirs`, as `who` the
    /// peer is): the refusal if it is incompatible.
    pub(crate) fn peer_release(
        &self,
        id: &RelationshipId,
        theirs: &str,
        who: &str,
    ) -> Option<String> {
        let refusal = mover::compat::refuse_peer(mover::software_version(), theirs, who);
        let was =
            lock(&self.peer_releases).insert(id.clone(), (theirs.to_string(), refusal.clone()));
        if let (Some(why), None | Some((_, None))) = (&refusal, was) {
            tracing::error!(%id, "{why}");
            // The peer is the other end: a target's release is checked on the source.
            let mine = if who == "target" {
                Role::Source
            } else {
                Role::Target
            };
            self.event(EventKind::PeerIncompatible, Some((id, mine)), why.clone());
        }
        refusal
    }

    /// Why `id`'s peer is refused for its release, if it is.
    pub(crate) fn incompatible_peer(&self, id: &RelationshipId) -> Option<String> {
        lock(&self.peer_releases).get(id).and_then(|p| p.1.clone())
    }

    /// The release `id`'s peer reported at the last exchange.
    pub(crate) fn peer_version(&self, id: &RelationshipId) -> Option<String> {
        lock(&self.peer_releases).get(id).map(|p| p.0.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks left plain data behind, still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    pub fn get(&self, id: &RelationshipId, role: Role) -> Result<Relationship> {
        let r = self.store().get(id)?;
        if r.role != role {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(r)
    }

    /// Applies `f` to the stored relationship `id` of this role and writes it back (one
    /// transaction's worth). Of this role: what a node reads before a peer call may be gone
    /// when the answer comes, and its id taken meanwhile by a relationship of the other role
    /// (any peer may propose any free id), which must not get the answer's effects.
    pub fn modify(
        &self,
        id: &RelationshipId,
        role: Role,
        f: impl FnOnce(&mut Relationship),
    ) -> Result<Relationship> {
        self.modify_noting(id, role, |r| {
            f(r);
            Vec::new()
        })
    }

    /// `modify`, recording the events `f` returns about the relationship under the same hold
    /// of the store's lock: an event about a transition of the row (an outage and its end)
    /// is then ordered with the transition, never after a later one another thread made.
    pub(crate) fn modify_noting(
        &self,
        id: &RelationshipId,
        role: Role,
        f: impl FnOnce(&mut Relationship) -> Vec<(EventKind, String)>,
    ) -> Result<Relationship> {
        let s = self.store();
        let mut r = s.get(id)?;
        if r.role != role {
            return Err(Error::NotFound(id.to_string()));
        }
        let events = f(&mut r);
        s.update(&r)?;
        for (kind, message) in events {
            self.record_event(&s, kind, Some((id, role)), message);
        }
        Ok(r)
    }

    /// Deletes the stored relationship `id` of this role (as `modify`, never one of the other).
    fn forget(&self, id: &RelationshipId, role: Role) -> Result<()> {
        let s = self.store();
        if s.get(id)?.role != role {
            return Err(Error::NotFound(id.to_string()));
        }
        s.delete(id)
    }

    /// Forgets the policy snapshots `id` kept in `role` on this node, once `release` did to
    /// each what the role asks (a source releases them, a target keeps them as writable
    /// data). One that fails is logged and left as it is; the rows go in any case.
    fn forget_snapshots(
        &self,
        id: &RelationshipId,
        role: Role,
        release: impl Fn(&Relationship, &crate::policy::Snapshot) -> Result<()>,
    ) {
        let all = match self.store().snapshots(Some(id), role) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%id, "reading kept snapshots: {e}");
                return;
            }
        };
        for (_, s) in &all {
            if let Err(e) = self.get(id, role).and_then(|r| release(&r, s)) {
                tracing::warn!(%id, snapshot = %s.name(), "leaving a policy snapshot as it is: {e}");
            }
        }
        if let Err(e) = self.store().delete_snapshots(id, role) {
            tracing::warn!(%id, "forgetting kept snapshots: {e}");
        }
    }

    fn state_dir(&self, id: &RelationshipId) -> PathBuf {
        self.opts.data_dir.join("state").join(id.as_str())
    }

    fn mount_dir(&self, id: &RelationshipId) -> PathBuf {
        self.opts.data_dir.join("mnt").join(id.as_str())
    }

    /// Records an event about `about` (a relationship and this node's role in it), or about the
    /// node. Storing it failing is logged, never the caller's failure: what it reports
    /// happened anyway. Takes the store lock: never call it while holding it.
    pub(crate) fn event(
        &self,
        kind: EventKind,
        about: Option<(&RelationshipId, Role)>,
        message: impl Into<String>,
    ) {
        self.record_event(&self.store(), kind, about, message)
    }

    /// `event` through the store `s` the caller holds.
    fn record_event(
        &self,
        s: &Store,
        kind: EventKind,
        about: Option<(&RelationshipId, Role)>,
        message: impl Into<String>,
    ) {
        let e = NewEvent {
            kind,
            relationship: about.map(|(id, _)| id.clone()),
            role: about.map(|(_, role)| role),
            message: crate::events::truncated(&message.into(), crate::events::MAX_MESSAGE),
        };
        tracing::info!(kind = kind.name(), id = ?e.relationship, "event: {}", e.message);
        if let Err(err) = s.insert_event(self.clock.now_ns(), &e) {
            tracing::error!(kind = kind.name(), "recording an event: {err}");
        }
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Opens the data dir (0700: it holds the key, tokens and the private mounts), the database
/// and the node identity; creates the first admin token.
fn open_node(opts: DaemonOptions, clock: Arc<dyn Clock>) -> Result<Node> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(&opts.data_dir)
        .ctx(|| format!("creating data dir {}", opts.data_dir.display()))?;
    std::fs::set_permissions(&opts.data_dir, std::fs::Permissions::from_mode(0o700))
        .ctx(|| format!("restricting {}", opts.data_dir.display()))?;
    let store = Store::open(&opts.data_dir.join("mover.db"))?;
    let identity = Identity::load_or_create(&opts.data_dir)?;
    if store.tokens()?.is_empty() {
        let token = crate::auth::new_token()?;
        store.insert_token(
            "admin",
            crate::auth::TokenRole::Admin.name(),
            &crate::auth::hash(&token),
            clock.now_ns(),
        )?;
        let path = opts.data_dir.join("admin.token");
        crate::private_file::write_private(&path, format!("{token}\n").as_bytes())?;
        tracing::info!(path = %path.display(), "created the admin token");
    }
    // Split from its data container, the node's receivers run there.
    let host: Arc<dyn host::Host> = if opts.roles.data {
        Arc::new(host::System)
    } else {
        Arc::new(data_host::DataHost::new(&opts.data_dir))
    };
    Ok(Node::new(opts, clock, store, identity, host))
}

impl Node {
    /// A node with nothing running yet: what a start begins with, whatever its store holds.
    fn new(
        opts: DaemonOptions,
        clock: Arc<dyn Clock>,
        store: Store,
        identity: Identity,
        host: Arc<dyn host::Host>,
    ) -> Node {
        let started = clock.instant();
        let cluster = opts.cluster.clone().map(|c| {
            let me = crate::cluster::Member {
                name: c.name.clone(),
                roles: opts.roles.names(),
                version: mover::software_version().to_string(),
                pid: std::process::id(),
                api: opts.api.to_string(),
                listen: opts.listen.to_string(),
                started_unix: clock.now_ns() / 1_000_000_000,
                spread: c.spread,
                writes: c.writes,
            };
            if c.writes && opts.listen.ip().is_unspecified() {
                tracing::warn!(
                    listen = %opts.listen,
                    "--spread-writes: this node listens on every address, so no other node \
                     can name it to a source as a write place; listen on the address sources \
                     reach"
                );
            }
            crate::cluster::Membership::new(c, me)
        });
        Node {
            cluster,
            opts,
            clock,
            store: Mutex::new(store),
            identity,
            host,
            jobs: Mutex::default(),
            wanted: Mutex::default(),
            receivers: Mutex::default(),
            reported: Mutex::default(),
            reverting: Mutex::default(),
            authorizing: Mutex::default(),
            routes: Mutex::default(),
            last_contact: Mutex::default(),
            started,
            metrics: metrics::Metrics::default(),
            watches: watch::Watches::default(),
            hot_files: Mutex::default(),
            peer_releases: Mutex::default(),
            reversing: Mutex::default(),
            snapshots_owed: Mutex::default(),
            token_index: Mutex::default(),
            share_host: Arc::new(mover::receiver::share::ShareHost::new()),
            writes_left_out: Arc::default(),
            announced: Mutex::default(),
            transports: Mutex::default(),
            manifests: Mutex::default(),
            reconnecting: Mutex::default(),
            shutting_down: AtomicBool::new(false),
            exec_next: Mutex::default(),
            restart: tokio::sync::Notify::new(),
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT: then running jobs stop at a chunk boundary, their
/// relationships stay marked running (the next start resumes them) and it exits. After an
/// upgrade's restart phase it stops the same way and executes the new binary instead.
pub fn run(opts: DaemonOptions) -> Result<()> {
    crate::supervisor::orphan_guard();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("mover-control")
        .build()
        .ctx(|| "starting the async runtime".to_string())?;
    let next = rt.block_on(serve(opts))?;
    drop(rt);
    let Some((exe, to)) = next else {
        return Ok(());
    };
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1));
    // Test builds report the version a test set (`TEST_VERSION_ENV`); the restarted one then
    // reports the release it was upgraded to, as a real new binary would.
    if cfg!(debug_assertions) && std::env::var_os(mover::wire::message::TEST_VERSION_ENV).is_some()
    {
        cmd.env(mover::wire::message::TEST_VERSION_ENV, to.to_string());
    }
    tracing::info!(exe = %exe.display(), "executing the new release");
    // `exec` returns only if it failed; every descriptor is close-on-exec, so the new process
    // binds the same ports afresh.
    let e = cmd.exec();
    Err(Error::Io {
        context: format!("executing the new release {}", exe.display()),
        source: e,
    })
}

async fn serve(opts: DaemonOptions) -> Result<Option<(PathBuf, mover::compat::Version)>> {
    if !opts.roles.control && opts.roles.data {
        data_server::serve(&opts.data_dir, shutdown_signal()?).await?;
        return Ok(None);
    }
    if !opts.roles.control {
        api_proxy::serve(opts, shutdown_signal()?).await?;
        return Ok(None);
    }
    let node = Arc::new(open_node(opts, Arc::new(SystemClock))?);
    if let Err(e) = self_upgrade::finish(&node) {
        tracing::error!("cannot finish the upgrade record: {e}");
    }
    target::restore(&node)?;
    let peer = tokio::net::TcpListener::bind(node.opts.listen)
        .await
        .ctx(|| format!("listening for peers on {}", node.opts.listen))?;
    // Split (`--roles control,data`), the API is served on a local socket for the api
    // container to forward to. After the peer port: a second control container for this node
    // fails on that port before it could take the first one's socket.
    let api = if node.opts.roles.api {
        ApiListener::Tcp(
            tokio::net::TcpListener::bind(node.opts.api)
                .await
                .ctx(|| format!("listening for the API on {}", node.opts.api))?,
        )
    } else {
        ApiListener::Local(control_socket(&node.opts.data_dir)?)
    };
    tracing::info!(listen = %node.opts.listen, api = %node.opts.api, roles = %node.opts.roles, fingerprint = %node.identity.fingerprint, "mover daemon ready");
    tokio::spawn(peer_server::serve(node.clone(), peer));
    if node.cluster.is_none() && !(node.opts.roles.api && node.opts.roles.data) {
        // A single node's upgrade restarted this control container onto the new release; its
        // data and API containers follow.
        tokio::spawn(rolling::others_catch_up(node.clone()));
    }
    if let Some(m) = &node.cluster {
        tokio::spawn(m.clone().run());
        tokio::spawn(rolling::lead(node.clone(), m.clone()));
        tokio::spawn(rolling::follow(node.clone(), m.clone()));
        tokio::spawn(owners::run(node.clone(), m.clone()));
        if m.takes_shards() {
            tokio::spawn(spread::run_assigned(node.clone(), m.clone()));
        }
        if m.takes_writes() {
            tokio::spawn(writes::run_assigned(node.clone(), m.clone()));
            tokio::spawn(writes::sweep_announced(m.clone()));
        }
    }
    tokio::spawn(source::schedule(node.clone()));
    tokio::spawn(silence::watch(node.clone()));
    let policies = node.clone();
    std::thread::Builder::new()
        .name("mover-policies".into())
        .spawn(move || snapshots::run(policies))
        .ctx(|| "starting the snapshot policy thread".to_string())?;
    let app = routes::router(node.clone());
    let tls = match &node.opts.api_tls {
        None => None,
        Some(config::ApiTls::NodeCertificate) => Some(node.identity.api_server_config()?),
        Some(config::ApiTls::Files { cert, key }) => {
            Some(crate::tls::Identity::from_files(cert, key)?.api_server_config()?)
        }
    };
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let stop = shutdown_signal()?;
    let restarting = node.clone();
    let stopped = async move {
        tokio::select! {
            _ = stop => {},
            _ = restarting.restart.notified() => {
                tracing::info!("restarting for an upgrade: stopping jobs at a chunk boundary");
            },
        }
    };
    crate::systemd::sd_notify("READY=1");
    match api {
        ApiListener::Tcp(api) => axum::serve(http::Limited::new(api, tls), app)
            .with_graceful_shutdown(stopped)
            .await
            .ctx(|| "serving the API".to_string())?,
        ApiListener::Local(sock) => axum::serve(sock, app)
            .with_graceful_shutdown(stopped)
            .await
            .ctx(|| "serving the API on the control socket".to_string())?,
    }
    crate::systemd::sd_notify("STOPPING=1");
    node.shutting_down.store(true, Ordering::SeqCst);
    source::stop_all(&node, SHUTDOWN_GRACE).await;
    target::stop_all(&node);
    tracing::info!("mover daemon stopped");
    let next = lock(&node.exec_next).take();
    Ok(next)
}

/// Where the control container serves the REST API: its own port, or, with the API in a
/// container of its own, the local socket that container forwards to.
enum ApiListener {
    Tcp(tokio::net::TcpListener),
    Local(tokio::net::UnixListener),
}

/// Binds `roles::CONTROL_SOCKET` in the data dir (0700, so only the node's own user reaches
/// it), replacing the socket file a killed control container left.
fn control_socket(data_dir: &std::path::Path) -> Result<tokio::net::UnixListener> {
    let path = data_dir.join(roles::CONTROL_SOCKET);
    remove_stale_socket(&path)?;
    tokio::net::UnixListener::bind(&path).ctx(|| format!("listening on {}", path.display()))
}

/// Removes the socket file a killed container left at `path`, so its successor can bind.
fn remove_stale_socket(path: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
            context: format!("removing the stale socket {}", path.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Installs the SIGTERM/SIGINT handlers now (before readiness is announced, so a stop request
/// right after READY=1 is not lost) and returns the future that completes on either.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).ctx(|| "installing the SIGTERM handler".to_string())?;
    let mut int =
        signal(SignalKind::interrupt()).ctx(|| "installing the SIGINT handler".to_string())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutting down: stopping jobs at a chunk boundary");
    })
}

/// A node on a simulated clock with its data in `dir`, for tests of the daemon's parts.
#[cfg(test)]
pub(crate) fn test_node(dir: &std::path::Path) -> (Node, Arc<crate::clock::SimClock>) {
    let clock = Arc::new(crate::clock::SimClock::new(chrono::Utc::now()));
    let opts = DaemonOptions {
        data_dir: dir.join("data"),
        listen: "127.0.0.1:0".parse().expect("an address"),
        api: "127.0.0.1:0".parse().expect("an address"),
        continuous_interval: Duration::from_secs(10),
        threads: 1,
        max_pause_in_session: Duration::from_secs(40),
        allowed_source_roots: None,
        insecure_plaintext: false,
        api_tls: None,
        scrub_interval: None,
        change_detection: watch::Detection::Interval,
        settle: Duration::from_millis(100),
        rescan_interval: Duration::from_secs(3600),
        watch_max_dirs: 1024,
        cluster: None,
        roles: crate::daemon::roles::Roles::ALL,
    };
    let node = open_node(opts, clock.clone()).expect("a test node");
    (node, clock)
}

/// A test node whose machine is `host` and whose store is in memory.
#[cfg(test)]
pub(crate) fn test_node_on(
    dir: &std::path::Path,
    host: Arc<dyn host::Host>,
) -> (Node, Arc<crate::clock::SimClock>) {
    let (node, clock) = test_node(dir);
    let node = Node::new(
        node.opts,
        clock.clone(),
        Store::open_in_memory().expect("a store in memory"),
        node.identity,
        host,
    );
    (node, clock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PeerAnswer;

    /// A relationship of this role with a fixed id, pinned to `peer`.
    fn stored(node: &Node, role: Role, authorized: bool, peer: &str) -> Relationship {
        let id = RelationshipId::parse(&"5e".repeat(16)).unwrap();
        let mut r = Relationship::new(id, role, crate::model::tests::spec(), 1, Some(peer.into()));
        r.authorized = authorized;
        node.store().insert(&r).unwrap();
        r
    }

    #[test]
    fn changes_meant_for_one_role_never_reach_a_relationship_of_the_other_with_the_same_id() {
        // Found by the simulation (seed in sim::tests): a source's poll was answered after the
        // relationship was deleted here and its id proposed to this node by another peer; the
        // answer ("authorized") made that unauthorized proposal authorized.
        let dir = tempfile::tempdir().unwrap();
        let (node, _clock) = test_node(dir.path());
        let mut was = stored(&node, Role::Target, false, "sha256:intruder");
        let proposal = was.clone();
        was.role = Role::Source;
        was.authorized = true;
        let answer = Ok(PeerAnswer::State {
            authorized: true,
            ended: false,
            scrub_failed: false,
            software: None,
        });
        source::polled(&node, &was, answer);
        assert_eq!(node.get(&was.id, Role::Target).unwrap(), proposal);
        let err = node.modify(&was.id, Role::Source, |x| x.authorized = true);
        assert!(matches!(err, Err(Error::NotFound(_))), "{err:?}");
        assert!(matches!(
            node.forget(&was.id, Role::Source),
            Err(Error::NotFound(_))
        ));
        assert_eq!(node.get(&was.id, Role::Target).unwrap(), proposal);
    }

    #[test]
    fn an_incompatible_peer_is_one_event_until_its_release_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (node, _clock) = test_node(dir.path());
        let id = RelationshipId::parse(&"5e".repeat(16)).unwrap();
        for theirs in [
            "not-a-version",
            "not-a-version",
            mover::software_version(),
            "nope",
        ] {
            node.peer_release(&id, theirs, "target");
        }
        let all = crate::store::Visible {
            source: true,
            target: true,
        };
        let seen = node.store().events(None, 10, all).unwrap();
        let kinds: Vec<(EventKind, Option<Role>)> =
            seen.iter().map(|e| (e.what.kind, e.what.role)).collect();
        let once = (EventKind::PeerIncompatible, Some(Role::Source));
        assert_eq!(kinds, vec![once, once], "{seen:#?}");
        assert!(seen[0].what.message.contains("incompatible peer version"));
    }

    #[test]
    fn a_target_whose_scrub_failed_gets_a_repairing_job_without_a_source_change() {
        let dir = tempfile::tempdir().unwrap();
        let (node, _clock) = test_node(dir.path());
        let r = stored(&node, Role::Source, true, "sha256:target");
        let r = node
            .modify(&r.id, Role::Source, |x| {
                x.last_attempt = Some(crate::model::Attempt {
                    at_ns: 1,
                    ok: true,
                    message: "ok".into(),
                })
            })
            .unwrap();
        let answer = |scrub_failed| {
            Ok(PeerAnswer::State {
                authorized: true,
                ended: false,
                scrub_failed,
                software: None,
            })
        };
        source::polled(&node, &r, answer(false));
        assert!(!lock(&node.wanted).contains(&r.id));
        source::polled(&node, &r, answer(true));
        assert!(
            lock(&node.wanted).contains(&r.id),
            "a job (walking everything) is wanted"
        );
    }
}
