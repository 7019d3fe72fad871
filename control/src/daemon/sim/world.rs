//! The simulated world: two daemons (real `Node`s with in-memory stores and fake machines),
//! the network between them, their operators, an intruder, and the faults, driven by one
//! queue of events in simulated time. See the module documentation of `sim` for what is real.

use super::check::{Checker, StepLog};
use super::fake::{locked, FakeHost, HostFaults, Machine, NodeClock, SimConn};
use super::rng::Rng;
use crate::api_types::Authorize;
use crate::blackout::BlackoutWindow;
use crate::clock::{Clock, SimClock};
use crate::daemon::peer_server::{self, Blocking, Handled};
use crate::daemon::source::{self, AfterSession, Claimed, JobStart, Sessions, Task, TICK};
use crate::daemon::{target, DaemonOptions, Node};
use crate::model::{Edit, Relationship, RelationshipId, Role, Spec};
use crate::peer::{PeerAnswer, PeerRequest};
use crate::peer_wire::PEER_TIMEOUT;
use crate::store::Store;
use crate::tls::{Fingerprint, Identity};
use crate::{Error, Result};
use chrono::{DateTime, Utc};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Simulated time a seed runs with operators and faults at work.
pub(super) const RUN: Duration = Duration::from_secs(120);
/// Then this long with the network healed, every daemon up, no faults and every job stopped,
/// before the checks that the two nodes agree.
const SETTLE: Duration = Duration::from_secs(15);
/// How often a simulated session passes a chunk boundary (where it looks at its job's
/// controls, as sender workers do before every chunk).
const CHUNK: Duration = Duration::from_millis(250);
/// Most chunks one job has to send.
const MAX_CHUNKS: u64 = 100;
/// How often a graceful stop and a source-side delete look whether jobs have stopped (the
/// daemon's `until`).
const STOP_POLL: Duration = Duration::from_millis(50);
/// Mean times between operator actions, intruder requests, daemon restarts and partitions.
const OP_EVERY: Duration = Duration::from_secs(6);
const INTRUDER_EVERY: Duration = Duration::from_secs(15);
/// A step count no run comes near: a schedule that loops is a failure, not a hang.
const MAX_STEPS: u64 = 1_000_000;
/// How far a node's wall clock is off, either way at most.
const MAX_SKEW: Duration = Duration::from_secs(120);
/// Blackout windows a relationship gets at most in a run (the spec allows `MAX_WINDOWS`).
const MAX_SIM_WINDOWS: u64 = 2;
/// Time zones windows are written in: fixed, whole-hour, half-hour and DST-keeping ones.
const ZONES: [&str; 4] = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"];

/// Rates of the faults one seed runs with.
#[derive(Debug, Clone, Copy)]
struct Faults {
    /// Per peer message (request or answer): lost.
    drop: f64,
    /// Per request: delivered twice.
    dup: f64,
    /// Per message: slow (up to longer than the caller waits).
    slow: f64,
    /// Per blocking part of a request (ticket, delete): late on a busy blocking pool.
    late_hop: f64,
    /// Per session chunk: the connection is cut (retryable) or the target fails for good.
    cut: f64,
    fatal: f64,
    /// Mean time between restarts of each daemon, and between partitions; `None`: none.
    restart_every: Option<Duration>,
    partition_every: Option<Duration>,
    host: HostFaults,
}

/// Counts of what a run did and injected.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stats {
    pub(crate) steps: u64,
    pub(crate) messages: u64,
    pub(crate) dropped: u64,
    pub(crate) duplicated: u64,
    pub(crate) delayed: u64,
    pub(crate) late_hops: u64,
    pub(crate) partitions: u64,
    pub(crate) crashes: u64,
    pub(crate) reboots: u64,
    pub(crate) graceful: u64,
    pub(crate) host_faults: u64,
    pub(crate) cuts: u64,
    pub(crate) fatal: u64,
    pub(crate) ops: u64,
    pub(crate) intruder: u64,
    pub(crate) jobs: u64,
    pub(crate) sessions: u64,
    pub(crate) completed: u64,
    pub(crate) suspended: u64,
    pub(crate) releases: u64,
}

impl Stats {
    /// Faults injected, all kinds.
    pub(crate) fn faults(&self) -> u64 {
        self.dropped
            + self.duplicated
            + self.delayed
            + self.late_hops
            + self.partitions
            + self.crashes
            + self.reboots
            + self.graceful
            + self.host_faults
            + self.cuts
            + self.fatal
    }

    pub(crate) fn add(&mut self, o: &Stats) {
        let fields = [
            (&mut self.steps, o.steps),
            (&mut self.messages, o.messages),
            (&mut self.dropped, o.dropped),
            (&mut self.duplicated, o.duplicated),
            (&mut self.delayed, o.delayed),
            (&mut self.late_hops, o.late_hops),
            (&mut self.partitions, o.partitions),
            (&mut self.crashes, o.crashes),
            (&mut self.reboots, o.reboots),
            (&mut self.graceful, o.graceful),
            (&mut self.host_faults, o.host_faults),
            (&mut self.cuts, o.cuts),
            (&mut self.fatal, o.fatal),
            (&mut self.ops, o.ops),
            (&mut self.intruder, o.intruder),
            (&mut self.jobs, o.jobs),
            (&mut self.sessions, o.sessions),
            (&mut self.completed, o.completed),
            (&mut self.suspended, o.suspended),
            (&mut self.releases, o.releases),
        ];
        for (a, b) in fields {
            *a += b;
        }
    }
}

/// What one seed's run gave.
pub(crate) struct Outcome {
    pub(crate) seed: u64,
    pub(crate) stats: Stats,
    /// The first invariant that did not hold, with when and where.
    pub(crate) violation: Option<String>,
    /// A digest of every step (its time and kind) and of the run's counts: equal for equal
    /// schedules.
    pub(crate) digest: u64,
    /// Every step, described, when asked for (`trace`).
    pub(crate) trace: Vec<String>,
}

/// A daemon as the world holds it: running, or stopped with what survives a stop.
enum Daemon {
    Up {
        node: Arc<Node>,
        sched: source::Scheduler,
        /// SIGTERM received: jobs are stopping, no more passes.
        stopping: bool,
    },
    Down {
        store: Store,
        identity: Identity,
    },
    /// Only while changing from one to the other.
    Changing,
}

struct SimNode {
    addr: String,
    opts: DaemonOptions,
    clock: Arc<NodeClock>,
    fp: Fingerprint,
    host: Arc<FakeHost>,
    /// Counts starts: events and connections of an earlier run of the daemon are void.
    inc: u32,
    daemon: Daemon,
}

/// Who sent a peer request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Node(usize, u32),
    Intruder,
}

/// What the caller does with the answer (the code after the `.await` of its call).
enum Cont {
    Poll(Relationship),
    Report(Relationship),
    Ticket {
        job: u64,
        r: Relationship,
    },
    /// Answers only logged (an edit's Update).
    Ignore,
    /// The API's direct ask before "replicate now".
    Replicate(Relationship),
    Propose(Relationship),
    /// The last step of a source-side delete.
    Delete(RelationshipId),
    Intruder,
}

struct Call {
    from: Caller,
    to: usize,
    /// The callee's run the connection was made to (a restart resets it).
    to_inc: u32,
    /// The request as it crosses the wire: JSON, as `peer_wire` sends it.
    bytes: Vec<u8>,
    cont: Option<Cont>,
    /// The caller still waits for the answer.
    open: bool,
    /// What a ticket request is granted: the ticket and the secret both ends derive from
    /// the TLS session (drawn when the request is made, so the schedule fixes them).
    ticket: u128,
    secret: [u8; mover::wire::seal::SECRET_LEN],
}

enum Phase {
    /// Claimed; its thread has not run yet.
    Starting,
    /// Waiting for a session to be allowed (blackout window, pause).
    Waiting,
    Ticket,
    Session {
        target: usize,
        target_inc: u32,
        receiver: u64,
    },
    Backoff {
        until: Instant,
    },
}

/// A job as its thread would run it (`source::run_job`), one step per event.
struct SimJob {
    node: usize,
    inc: u32,
    c: Claimed,
    start: Option<JobStart>,
    sessions: Sessions,
    phase: Phase,
    /// Chunks still to send (a session after a cut resumes: the receiver keeps its journal).
    left: u64,
}

/// A source-side delete waiting for its job to stop (the API's `stop_job`).
struct DeleteOp {
    node: usize,
    inc: u32,
    was: Relationship,
    done: Arc<AtomicBool>,
    deadline: u64,
}

/// A relationship the operators made, with its directories.
#[derive(Clone)]
struct Rel {
    id: RelationshipId,
    source: usize,
    target: usize,
    src: PathBuf,
    tgt: PathBuf,
}

enum Ev {
    Tick(usize, u32),
    Deliver(u64, bool),
    Finish(u64),
    Answer(u64, std::result::Result<Vec<u8>, String>),
    Timeout(u64),
    Job(u64),
    Op,
    Create(usize),
    Authorize(RelationshipId),
    DeleteWait(u64),
    Intrude,
    Stop(usize),
    GraceCheck(usize, u32, u64),
    Start(usize),
    Partition,
    Heal(usize, usize),
    Settle,
    Quiesce,
    End,
}

impl Ev {
    /// Which kind of event, and where: for the run's digest.
    fn code(&self) -> u64 {
        let (kind, arg) = match self {
            Ev::Tick(n, _) => (0, *n as u64),
            Ev::Deliver(c, dup) => (1, c << 1 | u64::from(*dup)),
            Ev::Finish(k) => (2, *k),
            Ev::Answer(c, res) => (3, c << 1 | u64::from(res.is_ok())),
            Ev::Timeout(c) => (4, *c),
            Ev::Job(k) => (5, *k),
            Ev::Op => (6, 0),
            Ev::Create(i) => (7, *i as u64),
            Ev::Authorize(_) => (8, 0),
            Ev::DeleteWait(k) => (9, *k),
            Ev::Intrude => (10, 0),
            Ev::Stop(n) => (11, *n as u64),
            Ev::GraceCheck(n, _, _) => (12, *n as u64),
            Ev::Start(n) => (13, *n as u64),
            Ev::Partition => (14, 0),
            Ev::Heal(..) => (15, 0),
            Ev::Settle => (16, 0),
            Ev::Quiesce => (17, 0),
            Ev::End => (18, 0),
        };
        kind << 56 ^ arg
    }
}

struct Queued {
    at: u64,
    tie: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Queued) -> bool {
        (self.at, self.tie, self.seq) == (o.at, o.tie, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Queued) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Queued) -> std::cmp::Ordering {
        (self.at, self.tie, self.seq).cmp(&(o.at, o.tie, o.seq))
    }
}

/// A relationship as first planned: who replicates to whom, with which windows.
struct Plan {
    source: usize,
    windows: u64,
    create_at: Duration,
}

pub(super) struct World {
    rng: Rng,
    clock: Arc<SimClock>,
    /// Nanoseconds of simulated time since the start.
    now: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    nodes: Vec<SimNode>,
    machine: Arc<Mutex<Machine>>,
    intruder: Fingerprint,
    calls: BTreeMap<u64, Call>,
    next_call: u64,
    blocking: BTreeMap<u64, (u64, usize, u32, bool, Blocking)>,
    next_blocking: u64,
    jobs: BTreeMap<u64, SimJob>,
    next_job: u64,
    deletes: BTreeMap<u64, DeleteOp>,
    next_delete: u64,
    rels: Vec<Rel>,
    plans: Vec<Plan>,
    partitions: BTreeSet<(usize, usize)>,
    faults: Faults,
    quiet: bool,
    stats: Stats,
    checker: Checker,
    log: StepLog,
    trace: Option<Vec<String>>,
    digest: u64,
    violation: Option<String>,
    dir: tempfile::TempDir,
}

/// Runs one seed: the whole schedule, checking the invariants after every step.
pub(crate) fn run(seed: u64, trace: bool) -> Outcome {
    let mut w = match World::new(seed, trace) {
        Ok(w) => w,
        Err(e) => {
            return Outcome {
                seed,
                stats: Stats::default(),
                violation: Some(format!("setting up the world: {e}")),
                digest: 0,
                trace: Vec::new(),
            }
        }
    };
    w.run();
    w.stats.host_faults = locked(&w.machine).injected;
    Outcome {
        seed,
        stats: w.stats,
        violation: w.violation.take(),
        digest: w.digest,
        trace: w.trace.take().unwrap_or_default(),
    }
}

/// Nanoseconds, as simulated time counts.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A simulated transport failure as the caller sees it.
fn peer_error(addr: &str, message: &str) -> Error {
    Error::Peer {
        peer: addr.to_string(),
        message: message.to_string(),
    }
}

fn answer_name(a: &PeerAnswer) -> &'static str {
    match a {
        PeerAnswer::Ok => "ok",
        PeerAnswer::State { .. } => "state",
        PeerAnswer::Ticket { .. } => "ticket",
        PeerAnswer::NotFound => "not_found",
        PeerAnswer::Refused { .. } => "refused",
        PeerAnswer::Reconnected { .. } => "reconnected",
        PeerAnswer::Reversed(_) => "reversed",
    }
}

fn request_name(r: &PeerRequest) -> &'static str {
    match r {
        PeerRequest::Propose { .. } => "propose",
        PeerRequest::State { .. } => "state",
        PeerRequest::Ticket { .. } => "ticket",
        PeerRequest::Report { .. } => "report",
        PeerRequest::Update { .. } => "update",
        PeerRequest::Delete { .. } => "delete",
        PeerRequest::Reconnect { .. } => "reconnect",
        PeerRequest::KeepSnapshot { .. } => "keep_snapshot",
        PeerRequest::Reverse(_) => "reverse",
    }
}

fn request_id(r: &PeerRequest) -> &RelationshipId {
    match r {
        PeerRequest::Propose { id, .. }
        | PeerRequest::State { id, .. }
        | PeerRequest::Ticket { id, .. }
        | PeerRequest::Report { id, .. }
        | PeerRequest::Update { id, .. }
        | PeerRequest::Delete { id }
        | PeerRequest::Reconnect { id, .. }
        | PeerRequest::KeepSnapshot { id, .. } => id,
        PeerRequest::Reverse(ask) => ask.id(),
    }
}

fn short(id: &RelationshipId) -> &str {
    &id.as_str()[..6]
}

impl World {
    fn new(seed: u64, trace: bool) -> Result<World> {
        let mut rng = Rng::new(seed);
        let dir = tempfile::tempdir().map_err(|e| Error::Io {
            context: "simulation dir".into(),
            source: e,
        })?;
        // Most seeds start anywhere in 2025; some just before a daylight-saving change in
        // Europe, where windows on local time stretch or shrink.
        let start = if rng.chance(0.1) {
            let edge = if rng.chance(0.5) {
                "2025-03-30T00:55:00Z"
            } else {
                "2025-10-26T00:55:00Z"
            };
            DateTime::parse_from_rfc3339(edge)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| Error::Invalid(e.to_string()))?
        } else {
            let base = DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| Error::Invalid(e.to_string()))?;
            base + chrono::TimeDelta::seconds(rng.below(364 * 24 * 3600) as i64)
        };
        let clock = Arc::new(SimClock::new(start));
        let clean = rng.chance(0.15);
        let p = |rng: &mut Rng, max: f64| if clean { 0.0 } else { rng.unit() * max };
        let faults = Faults {
            drop: p(&mut rng, 0.08),
            dup: p(&mut rng, 0.05),
            slow: p(&mut rng, 0.05),
            late_hop: p(&mut rng, 0.05),
            cut: p(&mut rng, 0.02),
            fatal: p(&mut rng, 0.0005),
            restart_every: (!clean && rng.chance(0.85))
                .then(|| rng.between(Duration::from_secs(30), Duration::from_secs(200))),
            partition_every: (!clean && rng.chance(0.7))
                .then(|| rng.between(Duration::from_secs(20), Duration::from_secs(120))),
            host: HostFaults {
                protect: p(&mut rng, 0.05),
                revert: p(&mut rng, 0.1),
                release: p(&mut rng, 0.05),
                receiver: p(&mut rng, 0.03),
            },
        };
        let machine = Arc::new(Mutex::new(Machine::new(rng.fork(), faults.host)));
        let mut nodes = Vec::new();
        let mut fps = Vec::new();
        for i in 0..2usize {
            let identity = Identity::ephemeral()?;
            let fp = identity.fingerprint.clone();
            fps.push(fp.clone());
            let skew = rng.between(Duration::ZERO, 2 * MAX_SKEW);
            let opts = DaemonOptions {
                data_dir: dir.path().join(format!("node{i}")),
                listen: std::net::SocketAddr::from(([10, 0, 0, i as u8 + 1], 3712)),
                api: std::net::SocketAddr::from(([127, 0, 0, 1], 3713)),
                continuous_interval: rng.between(Duration::from_secs(1), Duration::from_secs(20)),
                threads: 1,
                max_pause_in_session: rng.between(Duration::from_secs(3), Duration::from_secs(40)),
                allowed_source_roots: None,
                insecure_plaintext: false,
                api_tls: None,
                scrub_interval: None,
                change_detection: crate::daemon::watch::Detection::Interval,
                settle: Duration::from_millis(100),
                rescan_interval: Duration::from_secs(3600),
                watch_max_dirs: 1024,
                cluster: None,
                roles: crate::daemon::roles::Roles::ALL,
            };
            nodes.push(SimNode {
                addr: format!("10.0.0.{}", i + 1),
                opts,
                clock: Arc::new(NodeClock {
                    world: clock.clone(),
                    skew_ns: nanos(skew) as i64 - nanos(MAX_SKEW) as i64,
                }),
                fp,
                host: Arc::new(FakeHost {
                    node: i,
                    machine: machine.clone(),
                }),
                inc: 0,
                daemon: Daemon::Down {
                    store: Store::open_in_memory()?,
                    identity,
                },
            });
        }
        let intruder = Identity::ephemeral()?.fingerprint;
        let plans = (0..1 + rng.below(3))
            .map(|_| Plan {
                source: rng.below(2) as usize,
                windows: rng.below(MAX_SIM_WINDOWS + 1),
                create_at: rng.between(Duration::ZERO, Duration::from_secs(3)),
            })
            .collect();
        let checker = Checker::new(fps, intruder.clone());
        let mut w = World {
            rng,
            clock,
            now: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            nodes,
            machine,
            intruder,
            calls: BTreeMap::new(),
            next_call: 0,
            blocking: BTreeMap::new(),
            next_blocking: 0,
            jobs: BTreeMap::new(),
            next_job: 0,
            deletes: BTreeMap::new(),
            next_delete: 0,
            rels: Vec::new(),
            plans,
            partitions: BTreeSet::new(),
            faults,
            quiet: false,
            stats: Stats::default(),
            checker,
            log: StepLog::default(),
            trace: trace.then(Vec::new),
            digest: 0xcbf2_9ce4_8422_2325,
            violation: None,
            dir,
        };
        w.mix(seed);
        w.mix(u64::try_from(start.timestamp()).unwrap_or(0));
        Ok(w)
    }

    fn at(&mut self, after: Duration, ev: Ev) {
        let tie = self.rng.next();
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at: self.now.saturating_add(nanos(after)),
            tie,
            seq: self.seq,
            ev,
        }));
    }

    fn mix(&mut self, x: u64) {
        // FNV-1a over the bytes: enough to tell two schedules apart.
        for b in x.to_le_bytes() {
            self.digest ^= u64::from(b);
            self.digest = self.digest.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn tracing(&self) -> bool {
        self.trace.is_some()
    }

    /// Describes what a step did, when tracing (formatting every step costs more than
    /// running it).
    fn note(&mut self, what: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(format!("{:>10.3}s {}", self.now as f64 / 1e9, what()));
        }
    }

    fn run(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
        for i in 0..self.plans.len() {
            let at = self.plans[i].create_at;
            self.at(at, Ev::Create(i));
        }
        let op = self.rng.exp(OP_EVERY);
        self.at(op, Ev::Op);
        let intrude = self.rng.exp(INTRUDER_EVERY);
        self.at(intrude, Ev::Intrude);
        for n in 0..self.nodes.len() {
            if let Some(every) = self.faults.restart_every {
                let d = self.rng.exp(every);
                self.at(d, Ev::Stop(n));
            }
        }
        if let Some(every) = self.faults.partition_every {
            let d = self.rng.exp(every);
            self.at(d, Ev::Partition);
        }
        self.at(RUN, Ev::Settle);
        self.at(RUN + SETTLE, Ev::End);
        self.check();
        while let Some(Reverse(q)) = self.queue.pop() {
            if self.violation.is_some() {
                return;
            }
            if self.stats.steps >= MAX_STEPS {
                self.violation = Some(format!("more than {MAX_STEPS} steps: the schedule loops"));
                return;
            }
            self.clock.advance(Duration::from_nanos(q.at - self.now));
            self.now = q.at;
            self.stats.steps += 1;
            self.mix(q.at);
            self.mix(q.ev.code());
            let end = matches!(q.ev, Ev::End);
            self.step(q.ev);
            self.check();
            if end {
                self.converged();
                let s = self.stats;
                for x in [s.messages, s.jobs, s.sessions, s.completed, s.releases] {
                    self.mix(x);
                }
                return;
            }
        }
    }

    fn check(&mut self) {
        if self.violation.is_some() {
            return;
        }
        let mut log = std::mem::take(&mut self.log);
        let mut sessions: BTreeMap<&RelationshipId, usize> = BTreeMap::new();
        for j in self.jobs.values() {
            if let Phase::Session { .. } = j.phase {
                *sessions.entry(&j.c.id).or_default() += 1;
            }
        }
        log.doubled = sessions
            .into_iter()
            .filter(|(_, k)| *k > 1)
            .map(|(id, _)| id.clone())
            .collect();
        let mut views = Vec::new();
        for n in &self.nodes {
            views.push(match &n.daemon {
                Daemon::Up { node, .. } => super::check::View::Up(node.clone()),
                Daemon::Down { store, .. } => super::check::View::Down(store),
                Daemon::Changing => super::check::View::Changing,
            });
        }
        let res = self.checker.step(&views, &self.machine, &log);
        drop(views);
        if let Err(v) = res {
            self.violation = Some(format!(
                "step {} at {:.3}s: {v}",
                self.stats.steps,
                self.now as f64 / 1e9
            ));
        }
    }

    fn up(&self, n: usize) -> Option<(Arc<Node>, u32)> {
        match &self.nodes[n].daemon {
            Daemon::Up {
                node,
                stopping: false,
                ..
            } => Some((node.clone(), self.nodes[n].inc)),
            _ => None,
        }
    }

    /// The node if it still runs as `inc` (a stopping daemon still finishes its work).
    fn running(&self, n: usize, inc: u32) -> Option<Arc<Node>> {
        match &self.nodes[n].daemon {
            Daemon::Up { node, .. } if self.nodes[n].inc == inc => Some(node.clone()),
            _ => None,
        }
    }

    fn node_at(&self, addr: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    fn cut_off(&self, a: usize, b: usize) -> bool {
        self.partitions.contains(&(a.min(b), a.max(b)))
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(n, inc) => self.tick(n, inc),
            Ev::Deliver(call, dup) => self.deliver(call, dup),
            Ev::Finish(key) => self.finish(key),
            Ev::Answer(call, res) => self.answer(call, res),
            Ev::Timeout(call) => self.timeout(call),
            Ev::Job(key) => self.job(key),
            Ev::Op => self.op(),
            Ev::Create(i) => self.create(i),
            Ev::Authorize(id) => self.authorize(&id),
            Ev::DeleteWait(key) => self.delete_wait(key),
            Ev::Intrude => self.intrude(),
            Ev::Stop(n) => self.stop(n),
            Ev::GraceCheck(n, inc, deadline) => self.grace_check(n, inc, deadline),
            Ev::Start(n) => self.start(n),
            Ev::Partition => self.partition(),
            Ev::Heal(a, b) => {
                self.partitions.remove(&(a, b));
                self.note(|| format!("heal {a}-{b}"));
            }
            Ev::Settle => self.settle(),
            Ev::Quiesce => self.quiesce(),
            Ev::End => self.note(|| "end".into()),
        }
    }

    // ---- daemons ------------------------------------------------------------------------

    /// Starts a stopped daemon on what survived: its store and identity (and the mounts, unless
    /// the machine rebooted). Then `target::restore`, as `serve` does.
    fn start(&mut self, n: usize) {
        let sn = &mut self.nodes[n];
        let (store, identity) = match std::mem::replace(&mut sn.daemon, Daemon::Changing) {
            Daemon::Down { store, identity } => (store, identity),
            running => {
                sn.daemon = running;
                return;
            }
        };
        sn.inc += 1;
        let clock: Arc<dyn Clock> = sn.clock.clone();
        let host: Arc<dyn crate::daemon::host::Host> = sn.host.clone();
        let node = Arc::new(Node::new(sn.opts.clone(), clock, store, identity, host));
        let restored = target::restore(&node);
        let sched = source::Scheduler::new(node.clock.instant());
        let inc = sn.inc;
        sn.daemon = Daemon::Up {
            node,
            sched,
            stopping: false,
        };
        self.note(|| format!("start node{n}#{inc} restore={}", restored.is_ok()));
        let first = self.rng.between(Duration::ZERO, TICK);
        self.at(first, Ev::Tick(n, inc));
    }

    /// A fault: the daemon stops. Crash (its memory is gone, the mounts stay), reboot (the
    /// mounts go too) or SIGTERM (jobs stop at a chunk boundary first).
    fn stop(&mut self, n: usize) {
        if self.quiet {
            return;
        }
        if let Some(every) = self.faults.restart_every {
            let d = self.rng.exp(every);
            self.at(d, Ev::Stop(n));
        }
        // The world holds the only reference to a node it stops.
        let Some(inc) = self.up(n).map(|(_, inc)| inc) else {
            return;
        };
        let down = self
            .rng
            .between(Duration::from_millis(100), Duration::from_secs(15));
        match self.rng.below(3) {
            0 => {
                self.stats.crashes += 1;
                self.note(|| format!("crash node{n}#{inc}"));
                self.teardown(n, false);
                self.at(down, Ev::Start(n));
            }
            1 => {
                self.stats.reboots += 1;
                self.note(|| format!("reboot node{n}#{inc}"));
                self.teardown(n, true);
                self.at(down, Ev::Start(n));
            }
            _ => {
                self.stats.graceful += 1;
                self.note(|| format!("sigterm node{n}#{inc}"));
                let Some((node, _)) = self.up(n) else {
                    return;
                };
                // As `serve` does after the API stops: jobs are told to stop, receivers too.
                node.shutting_down.store(true, Ordering::SeqCst);
                source::cancel_all(&node);
                target::stop_all(&node);
                drop(node);
                if let Daemon::Up { stopping, .. } = &mut self.nodes[n].daemon {
                    *stopping = true;
                }
                let deadline = self.now + nanos(crate::daemon::SHUTDOWN_GRACE);
                self.at(STOP_POLL, Ev::GraceCheck(n, inc, deadline));
            }
        }
    }

    /// A stopping daemon exits once its jobs recorded their end, or after the grace.
    fn grace_check(&mut self, n: usize, inc: u32, deadline: u64) {
        if self.running(n, inc).is_none() {
            return;
        }
        let busy = self.jobs.values().any(|j| j.node == n && j.inc == inc);
        if busy && self.now < deadline {
            self.at(STOP_POLL, Ev::GraceCheck(n, inc, deadline));
            return;
        }
        self.note(|| format!("exit node{n}#{inc} jobs_left={busy}"));
        self.teardown(n, false);
        let down = self
            .rng
            .between(Duration::from_millis(100), Duration::from_secs(10));
        self.at(down, Ev::Start(n));
    }

    /// The daemon's process is gone: everything in its memory with it.
    fn teardown(&mut self, n: usize, reboot: bool) {
        // Its jobs' threads, blocking work and API requests die with it.
        self.jobs.retain(|_, j| j.node != n);
        self.blocking.retain(|_, b| b.1 != n);
        self.deletes.retain(|_, d| d.node != n);
        let sn = &mut self.nodes[n];
        let Daemon::Up { node, sched, .. } = std::mem::replace(&mut sn.daemon, Daemon::Changing)
        else {
            return;
        };
        drop(sched);
        let node = match Arc::try_unwrap(node) {
            Ok(node) => node,
            Err(_) => {
                self.violation = Some("the simulation kept a node alive past its stop".into());
                return;
            }
        };
        let store = node.store.into_inner().unwrap_or_else(|p| p.into_inner());
        sn.daemon = Daemon::Down {
            store,
            identity: node.identity,
        };
        if reboot {
            locked(&self.machine).reboot(n);
        }
    }

    fn partition(&mut self) {
        if self.quiet {
            return;
        }
        if let Some(every) = self.faults.partition_every {
            let d = self.rng.exp(every);
            self.at(d, Ev::Partition);
        }
        let len = self
            .rng
            .between(Duration::from_secs(1), Duration::from_secs(45));
        if self.partitions.insert((0, 1)) {
            self.stats.partitions += 1;
            self.note(|| format!("partition 0-1 for {len:?}"));
            self.at(len, Ev::Heal(0, 1));
        }
    }

    /// The end of the faults: the network heals, every daemon runs, nothing fails any more.
    fn settle(&mut self) {
        self.quiet = true;
        locked(&self.machine).quiet = true;
        self.partitions.clear();
        self.note(|| "settle".into());
        for n in 0..self.nodes.len() {
            let stopping = matches!(self.nodes[n].daemon, Daemon::Up { stopping: true, .. });
            if stopping {
                self.teardown(n, false);
            }
            self.start(n);
        }
        self.at(Duration::from_secs(2), Ev::Quiesce);
    }

    /// The operators stop continuous replication and abort every job, so the checks at the end
    /// compare two nodes at rest.
    fn quiesce(&mut self) {
        self.note(|| "quiesce".into());
        for rel in self.rels.clone() {
            let Some((node, inc)) = self.up(rel.source) else {
                continue;
            };
            let edit = Edit {
                enabled: Some(false),
                ..Edit::default()
            };
            if let Ok(r) = source::edit(&node, &rel.id, &edit) {
                self.update(rel.source, inc, &r);
            }
            // A 409 (nothing to abort) is fine: the point is that nothing runs.
            let aborted = source::abort(&node, &rel.id);
            self.note(|| {
                format!(
                    "node{} abort {} -> {}",
                    rel.source,
                    short(&rel.id),
                    aborted.is_ok()
                )
            });
        }
    }

    // ---- the scheduler --------------------------------------------------------------------

    fn tick(&mut self, n: usize, inc: u32) {
        let sn = &mut self.nodes[n];
        if sn.inc != inc {
            return;
        }
        let Daemon::Up {
            node,
            sched,
            stopping: false,
        } = &mut sn.daemon
        else {
            return;
        };
        if node.shutting_down() {
            return;
        }
        let tasks = sched.pass(node);
        let node = node.clone();
        let tracing = self.tracing();
        let mut said = Vec::new();
        for task in tasks {
            match task {
                Task::Poll(r) => {
                    if tracing {
                        said.push(format!("poll {}", short(&r.id)));
                    }
                    let (r, req) = source::poll_request(&node, *r);
                    self.send(Caller::Node(n, inc), &r, req, Cont::Poll(r.clone()));
                }
                Task::Report(id) => match source::report_request(&node, &id) {
                    Some((r, req)) => {
                        if tracing {
                            said.push(format!("report {}", short(&id)));
                        }
                        self.send(Caller::Node(n, inc), &r, req, Cont::Report(r.clone()));
                    }
                    None => {
                        if let Daemon::Up { sched, .. } = &self.nodes[n].daemon {
                            sched.reporting.end(&id);
                        }
                    }
                },
                Task::Run(c) => {
                    if tracing {
                        said.push(format!("job {}", short(&c.id)));
                    }
                    self.stats.jobs += 1;
                    let key = self.next_job;
                    self.next_job += 1;
                    let left = 1 + self.rng.below(MAX_CHUNKS);
                    self.jobs.insert(
                        key,
                        SimJob {
                            node: n,
                            inc,
                            c,
                            start: None,
                            sessions: Sessions::new(),
                            phase: Phase::Starting,
                            left,
                        },
                    );
                    let d = self.rng.between(Duration::ZERO, Duration::from_millis(1));
                    self.at(d, Ev::Job(key));
                }
            }
        }
        if !said.is_empty() {
            self.note(|| format!("tick node{n}: {}", said.join(", ")));
        }
        self.at(TICK, Ev::Tick(n, inc));
    }

    // ---- the network ----------------------------------------------------------------------

    /// A message's one-way delay: LAN-short, or (a fault) long enough to outlast the caller.
    fn latency(&mut self) -> Duration {
        if !self.quiet && self.rng.chance(self.faults.slow) {
            self.stats.delayed += 1;
            return self
                .rng
                .between(Duration::from_millis(100), Duration::from_secs(12));
        }
        self.rng
            .between(Duration::from_micros(200), Duration::from_millis(5))
    }

    fn lost(&mut self) -> bool {
        if !self.quiet && self.rng.chance(self.faults.drop) {
            self.stats.dropped += 1;
            return true;
        }
        false
    }

    /// Sends `req` about `r` to its target, as `peer_call::call` would: over a connection pinned
    /// to the target's certificate, answered or timed out within `PEER_TIMEOUT`.
    fn send(&mut self, from: Caller, r: &Relationship, req: PeerRequest, cont: Cont) -> u64 {
        let to = self.node_at(&r.spec.target_address);
        let pin = r.peer_fingerprint.clone();
        self.send_to(from, to, pin, req, cont)
    }

    fn send_to(
        &mut self,
        from: Caller,
        to: Option<usize>,
        pin: Option<String>,
        req: PeerRequest,
        cont: Cont,
    ) -> u64 {
        self.stats.messages += 1;
        let key = self.next_call;
        self.next_call += 1;
        let bytes = match serde_json::to_vec(&req) {
            Ok(b) => b,
            Err(e) => {
                self.violation = Some(format!("a peer request does not encode: {e}"));
                return key;
            }
        };
        let mut secret = [0u8; mover::wire::seal::SECRET_LEN];
        for chunk in secret.chunks_mut(8) {
            chunk.copy_from_slice(&self.rng.next().to_le_bytes()[..chunk.len()]);
        }
        let ticket = self.rng.u128();
        let Some(to) = to else {
            self.calls.insert(
                key,
                Call {
                    from,
                    to: 0,
                    to_inc: u32::MAX,
                    bytes,
                    cont: Some(cont),
                    open: true,
                    ticket,
                    secret,
                },
            );
            let d = self.latency();
            self.at(d, Ev::Answer(key, Err("cannot resolve".into())));
            return key;
        };
        let to_inc = self.nodes[to].inc;
        self.calls.insert(
            key,
            Call {
                from,
                to,
                to_inc,
                bytes,
                cont: Some(cont),
                open: true,
                ticket,
                secret,
            },
        );
        let from_node = match from {
            Caller::Node(n, _) => Some(n),
            Caller::Intruder => None,
        };
        self.at(PEER_TIMEOUT, Ev::Timeout(key));
        if self.up_or_stopping(to).is_none() {
            let d = self.latency();
            self.at(d, Ev::Answer(key, Err("connection refused".into())));
            return key;
        }
        if from_node.is_some_and(|f| self.cut_off(f, to)) {
            return key;
        }
        if pin.is_some_and(|p| p != self.nodes[to].fp.0) {
            let d = self.latency();
            self.at(
                d,
                Ev::Answer(key, Err("TLS: certificate does not match the pin".into())),
            );
            return key;
        }
        if self.lost() {
            return key;
        }
        let d = self.latency();
        // Past the server's own deadline (PRE_AUTH_TIMEOUT) the request is never read.
        if d < PEER_TIMEOUT {
            self.at(d, Ev::Deliver(key, false));
        }
        if !self.quiet && self.rng.chance(self.faults.dup) {
            self.stats.duplicated += 1;
            let d2 = d + self.latency();
            if d2 < PEER_TIMEOUT {
                self.at(d2, Ev::Deliver(key, true));
            }
        }
        key
    }

    fn up_or_stopping(&self, n: usize) -> Option<Arc<Node>> {
        match &self.nodes[n].daemon {
            Daemon::Up { node, .. } => Some(node.clone()),
            _ => None,
        }
    }

    fn caller_fp(&self, c: Caller) -> Fingerprint {
        match c {
            Caller::Node(n, _) => self.nodes[n].fp.clone(),
            Caller::Intruder => self.intruder.clone(),
        }
    }

    /// A request reaches its callee, which answers it (`peer_server::respond`), or starts its
    /// blocking part.
    fn deliver(&mut self, key: u64, dup: bool) {
        let Some(c) = self.calls.get(&key) else {
            return;
        };
        let (from, to, to_inc) = (c.from, c.to, c.to_inc);
        let (ticket, secret) = (c.ticket, c.secret);
        let req: PeerRequest = match serde_json::from_slice(&c.bytes) {
            Ok(r) => r,
            Err(e) => {
                self.violation = Some(format!("a peer request does not decode: {e}"));
                return;
            }
        };
        let node = match self.up_or_stopping(to) {
            Some(node) if self.nodes[to].inc == to_inc => node,
            _ => {
                // The daemon the connection was made to is gone: the caller sees a reset.
                if !dup {
                    let d = self.latency();
                    self.at(d, Ev::Answer(key, Err("connection reset".into())));
                }
                return;
            }
        };
        if let Caller::Node(f, _) = from {
            if self.cut_off(f, to) {
                return;
            }
        }
        let fp = self.caller_fp(from);
        let (what, id) = (request_name(&req), request_id(&req).clone());
        if from == Caller::Intruder {
            self.log.intruder.push((to, id.clone()));
        }
        let handled = peer_server::respond(
            &node,
            &fp,
            req,
            (
                mover::units::SessionId(ticket),
                mover::SessionSecret::from_bytes(secret),
            ),
        );
        match handled {
            Handled::Answer(a) => {
                self.note(|| {
                    format!(
                        "node{to} handles {what} {}{} -> {}",
                        short(&id),
                        if dup { " (duplicate)" } else { "" },
                        answer_name(&a)
                    )
                });
                self.reply(key, to, &id, a, dup);
            }
            Handled::Blocking(work) => {
                self.note(|| format!("node{to} handles {what} {} -> blocking", short(&id)));
                let k = self.next_blocking;
                self.next_blocking += 1;
                self.blocking.insert(k, (key, to, to_inc, dup, work));
                let hop = if !self.quiet && self.rng.chance(self.faults.late_hop) {
                    self.stats.late_hops += 1;
                    self.rng
                        .between(Duration::from_millis(50), Duration::from_secs(3))
                } else {
                    self.rng
                        .between(Duration::from_micros(10), Duration::from_millis(2))
                };
                self.at(hop, Ev::Finish(k));
            }
        }
    }

    /// The blocking part of a request runs (`peer_server::finish`) and answers it.
    fn finish(&mut self, k: u64) {
        let Some((key, to, to_inc, dup, work)) = self.blocking.remove(&k) else {
            return;
        };
        let Some(node) = self
            .up_or_stopping(to)
            .filter(|_| self.nodes[to].inc == to_inc)
        else {
            return;
        };
        let from = self.calls.get(&key).map(|c| c.from);
        let (what, id) = match &work {
            Blocking::Ticket { r, .. } => ("ticket", r.id.clone()),
            Blocking::Delete(id) => ("delete", id.clone()),
            Blocking::Reconnect(id) => ("reconnect", id.clone()),
            Blocking::Keep { id, .. } => ("keep snapshot", id.clone()),
        };
        let a = peer_server::finish(&node, work);
        if let PeerAnswer::Ticket { .. } = a {
            if let Some(from) = from {
                self.log
                    .tickets
                    .push((to, id.clone(), self.caller_fp(from)));
            }
        }
        if from == Some(Caller::Intruder) {
            self.log.intruder.push((to, id.clone()));
        }
        self.note(|| {
            format!(
                "node{to} finishes {what} {} -> {}",
                short(&id),
                answer_name(&a)
            )
        });
        self.reply(key, to, &id, a, dup);
    }

    fn reply(&mut self, key: u64, to: usize, id: &RelationshipId, a: PeerAnswer, dup: bool) {
        let Some(c) = self.calls.get(&key) else {
            return;
        };
        let from = c.from;
        if from == Caller::Intruder {
            self.log
                .intruder_answers
                .push((to, id.clone(), answer_name(&a)));
        }
        if dup {
            // A second connection the caller does not know of: its answer goes nowhere.
            return;
        }
        if let Caller::Node(f, _) = from {
            if self.cut_off(f, to) {
                return;
            }
        }
        if self.lost() {
            return;
        }
        let bytes = match serde_json::to_vec(&a) {
            Ok(b) => b,
            Err(e) => {
                self.violation = Some(format!("a peer answer does not encode: {e}"));
                return;
            }
        };
        let d = self.latency();
        self.at(d, Ev::Answer(key, Ok(bytes)));
    }

    fn answer(&mut self, key: u64, res: std::result::Result<Vec<u8>, String>) {
        let Some((from, to, cont)) = self.close_call(key) else {
            return;
        };
        let addr = self.nodes[to].addr.clone();
        let answer = match res {
            Ok(bytes) => match serde_json::from_slice::<PeerAnswer>(&bytes) {
                Ok(a) => Ok(a),
                Err(e) => {
                    self.violation = Some(format!("a peer answer does not decode: {e}"));
                    return;
                }
            },
            Err(m) => Err(peer_error(&addr, &m)),
        };
        self.resume(key, from, to, cont, answer);
    }

    /// Closes an open call: its caller, callee and continuation (None: unknown or closed).
    fn close_call(&mut self, key: u64) -> Option<(Caller, usize, Cont)> {
        let c = self.calls.get_mut(&key)?;
        if !c.open {
            return None;
        }
        c.open = false;
        let (from, to) = (c.from, c.to);
        c.cont.take().map(|cont| (from, to, cont))
    }

    fn timeout(&mut self, key: u64) {
        let Some((from, to, cont)) = self.close_call(key) else {
            return;
        };
        let addr = self.nodes[to].addr.clone();
        let e = peer_error(
            &addr,
            &format!("no answer within {}s", PEER_TIMEOUT.as_secs()),
        );
        self.resume(key, from, to, cont, Err(e));
    }

    /// The caller goes on with the answer (or the failure) of its call.
    fn resume(
        &mut self,
        key: u64,
        from: Caller,
        to: usize,
        cont: Cont,
        answer: Result<PeerAnswer>,
    ) {
        let Caller::Node(n, inc) = from else {
            return;
        };
        let Some(node) = self.running(n, inc) else {
            return;
        };
        let said = match &answer {
            Ok(a) => answer_name(a).to_string(),
            Err(_) => "error".to_string(),
        };
        match cont {
            Cont::Poll(r) => {
                self.note(|| format!("node{n} polled {} -> {said}", short(&r.id)));
                source::polled(&node, &r, answer);
                if let Daemon::Up { sched, .. } = &self.nodes[n].daemon {
                    sched.polling.end(&r.id);
                }
            }
            Cont::Report(r) => {
                self.note(|| format!("node{n} reported {} -> {said}", short(&r.id)));
                source::reported(&node, &r, answer);
                if let Daemon::Up { sched, .. } = &self.nodes[n].daemon {
                    sched.reporting.end(&r.id);
                }
            }
            Cont::Ticket { job, r } => {
                self.note(|| format!("node{n} ticket {} -> {said}", short(&r.id)));
                self.ticketed(job, key, to, &r, answer);
            }
            Cont::Ignore => self.note(|| format!("node{n} update -> {said}")),
            Cont::Replicate(r) => {
                self.note(|| format!("node{n} asked {} -> {said}", short(&r.id)));
                if self.quiet {
                    return;
                }
                // Refusals (409s) are answers to the operator, not failures of the run.
                let queued = source::learned(&node, r, answer)
                    .and_then(|r| source::may_replicate(&r).map(|()| r))
                    .and_then(|r| source::replicate_now(&node, &r));
                self.note(|| format!("node{n} queued {}", queued.is_ok()));
            }
            Cont::Propose(r) => {
                let fp = self.nodes[to].fp.clone();
                let id = r.id.clone();
                let made = answer.and_then(|a| source::proposed(&node, r, a, fp));
                self.note(|| format!("node{n} proposed {} -> {}", short(&id), made.is_ok()));
                if made.is_ok() && self.rng.chance(0.9) {
                    let d = self
                        .rng
                        .between(Duration::from_millis(200), Duration::from_secs(20));
                    self.at(d, Ev::Authorize(id));
                }
            }
            Cont::Delete(id) => {
                let gone = source::delete_end(&node, &id);
                self.note(|| format!("node{n} deleted {} -> {}", short(&id), gone.is_ok()));
            }
            Cont::Intruder => {}
        }
    }

    // ---- jobs -----------------------------------------------------------------------------

    fn job(&mut self, key: u64) {
        let Some(j) = self.jobs.get(&key) else {
            return;
        };
        let Some(node) = self.running(j.node, j.inc) else {
            self.jobs.remove(&key);
            return;
        };
        match j.phase {
            Phase::Starting => {
                if let Some(j) = self.jobs.get_mut(&key) {
                    // The thread's first reading: the job's point in time.
                    j.start = Some(JobStart::now(&*node.clock));
                }
                self.try_session(key, &node);
            }
            Phase::Waiting => self.try_session(key, &node),
            Phase::Backoff { until } => {
                if node.clock.instant() >= until || j.c.progress.control.is_cancelled() {
                    self.try_session(key, &node);
                } else {
                    self.at(mover::GATE_POLL, Ev::Job(key));
                }
            }
            Phase::Session { .. } => self.chunk(key, &node),
            Phase::Ticket => {}
        }
    }

    /// `run_job`'s loop head: wait until a session is allowed, then ask for a ticket.
    fn try_session(&mut self, key: u64, node: &Arc<Node>) {
        let Some(j) = self.jobs.get_mut(&key) else {
            return;
        };
        let n = j.node;
        let inc = j.inc;
        match source::session_allowed(node, &j.c.id, &j.c.progress) {
            Err(e) => self.conclude(key, node, Err(e)),
            Ok(false) => {
                j.phase = Phase::Waiting;
                self.at(TICK, Ev::Job(key));
            }
            Ok(true) => match source::prepare_session(node, &j.c) {
                Err(e) => self.conclude(key, node, Err(e)),
                Ok((r, _src)) => {
                    j.phase = Phase::Ticket;
                    let req = match source::ticket_request(node, &r) {
                        Ok(req) => req,
                        Err(e) => return self.conclude(key, node, Err(e)),
                    };
                    self.send(
                        Caller::Node(n, inc),
                        &r,
                        req,
                        Cont::Ticket {
                            job: key,
                            r: r.clone(),
                        },
                    );
                }
            },
        }
    }

    /// The ticket's answer: the session starts (the data plane connects to the target's port
    /// and is routed to the receiver that issued the ticket), or the attempt failed.
    fn ticketed(
        &mut self,
        key: u64,
        call: u64,
        to: usize,
        r: &Relationship,
        answer: Result<PeerAnswer>,
    ) {
        let Some(j) = self.jobs.get(&key) else {
            return;
        };
        let Some(node) = self.running(j.node, j.inc) else {
            return;
        };
        let session = answer.and_then(|a| source::ticket_session(r, a));
        if let Err(e) = session {
            return self.session_ended(key, &node, Err(e));
        }
        match source::ticket_usable(&node, &r.id, &j.c.progress) {
            Ok(true) => {}
            Ok(false) => return self.try_session(key, &node),
            Err(e) => return self.conclude(key, &node, Err(e)),
        }
        let Some(j) = self.jobs.get(&key) else {
            return;
        };
        // Sealed: the sender's Hellos carry the handle of the secret both ends derived.
        let Some(secret) = self.calls.get(&call).map(|c| c.secret) else {
            return;
        };
        let handle = mover::SessionSecret::from_bytes(secret).handle();
        let source = j.node;
        let reachable = self
            .up_or_stopping(to)
            .filter(|_| !self.cut_off(source, to));
        let Some(target_node) = reachable else {
            let e = Error::DataPlane(mover::Error::PeerLost("cannot connect".into()));
            return self.session_ended(key, &node, Err(e));
        };
        let routed = target::deliver(&target_node, handle.0, Box::new(SimConn));
        let serial = locked(&self.machine).delivered.pop();
        let (true, Some(receiver)) = (routed, serial) else {
            let e = Error::DataPlane(mover::Error::Peer {
                code: mover::wire::message::ErrorCode::Refused,
                message: "session not authorized: its id is not a ticket this node issued".into(),
            });
            return self.session_ended(key, &node, Err(e));
        };
        self.stats.sessions += 1;
        let target_inc = self.nodes[to].inc;
        self.log.sessions.push((source, r.id.clone()));
        if let Some(j) = self.jobs.get_mut(&key) {
            let total = j.left;
            j.c.progress.set_totals(total, total << 20);
            j.phase = Phase::Session {
                target: to,
                target_inc,
                receiver,
            };
        }
        self.note(|| format!("node{source} session {} to node{to}", short(&r.id)));
        self.at(CHUNK, Ev::Job(key));
    }

    /// One chunk boundary of a running session.
    fn chunk(&mut self, key: u64, node: &Arc<Node>) {
        let Some(j) = self.jobs.get(&key) else {
            return;
        };
        let Phase::Session {
            target,
            target_inc,
            receiver,
        } = j.phase
        else {
            return;
        };
        let linked = self.nodes[target].inc == target_inc
            && self.up_or_stopping(target).is_some()
            && !self.cut_off(j.node, target)
            && locked(&self.machine)
                .receivers
                .get(&receiver)
                .is_some_and(|r| r.live());
        if !linked {
            let e = Error::DataPlane(mover::Error::PeerLost("connection reset".into()));
            return self.session_ended(key, node, Err(e));
        }
        let control = &j.c.progress.control;
        // As a sender worker before each chunk: cancel or suspend end the session here, a
        // pause sends nothing (the bandwidth limit is not simulated).
        if matches!(control.gate(), mover::Gate::Cancel) {
            let e = Error::DataPlane(mover::Error::Cancelled(
                "stopped at a chunk boundary".into(),
            ));
            return self.session_ended(key, node, Err(e));
        }
        if control.is_paused() {
            self.at(CHUNK, Ev::Job(key));
            return;
        }
        if !self.quiet && self.rng.chance(self.faults.cut) {
            self.stats.cuts += 1;
            let e = Error::DataPlane(mover::Error::PeerLost("connection cut".into()));
            return self.session_ended(key, node, Err(e));
        }
        if !self.quiet && self.rng.chance(self.faults.fatal) {
            self.stats.fatal += 1;
            let e = Error::DataPlane(mover::Error::Peer {
                code: mover::wire::message::ErrorCode::DiskFull,
                message: "no space left on the target".into(),
            });
            return self.session_ended(key, node, Err(e));
        }
        let Some(j) = self.jobs.get_mut(&key) else {
            return;
        };
        j.left = j.left.saturating_sub(1);
        j.c.progress.bytes.fetch_add(1 << 20, Ordering::Relaxed);
        if j.left > 0 {
            self.at(CHUNK, Ev::Job(key));
            return;
        }
        // Verified and committed on the target: its recovery point is this job's point in time.
        let id = j.c.id.clone();
        let Some(start) = j.start else {
            return;
        };
        self.checker.committed(&id, start.wall_ns);
        self.stats.completed += 1;
        let files = j.c.progress.files_total.load(Ordering::Relaxed);
        let report = mover::sender::SendReport {
            session: "simulated".into(),
            entries: files,
            files,
            bytes: files << 20,
            wire_bytes: files << 20,
            seconds: 0.0,
            files_total: files,
            bytes_total: files << 20,
            files_unchanged: 0,
            threads: 1,
            tree_hash: String::new(),
            receiver_version: String::new(),
            files_delta: 0,
            renames: 0,
            incremental: false,
            resumed: false,
            recovery_point: String::new(),
            attempts: 0,
            snapshot: mover::snapshot::Provider::Plain,
            hashed_bytes: 0,
            encrypted: true,
            read_buffered_bytes: files << 20,
            read_direct_bytes: 0,
            delta_list: false,
            list_changed: 0,
            walk_narrowed: false,
            walk_fresh: files,
            transport: mover::transport::select::Used::Tcp,
        };
        self.session_ended(key, node, Ok(report));
    }

    /// `run_job` after a session: done, again, or again after a wait.
    fn session_ended(
        &mut self,
        key: u64,
        node: &Arc<Node>,
        res: Result<mover::sender::SendReport>,
    ) {
        let Some(j) = self.jobs.get_mut(&key) else {
            return;
        };
        match j.sessions.ended(&j.c.id, &j.c.progress, res) {
            AfterSession::Done(res) => self.conclude(key, node, *res),
            AfterSession::Again => {
                self.stats.suspended += 1;
                self.try_session(key, node);
            }
            AfterSession::Retry(pause) => {
                j.phase = Phase::Backoff {
                    until: node.clock.instant() + pause,
                };
                self.at(mover::GATE_POLL, Ev::Job(key));
            }
        }
    }

    fn conclude(&mut self, key: u64, node: &Arc<Node>, res: Result<mover::sender::SendReport>) {
        let Some(j) = self.jobs.remove(&key) else {
            return;
        };
        let ok = res.is_ok();
        let start = j.start.unwrap_or_else(|| JobStart::now(&*node.clock));
        source::conclude(node, &j.c, start, res);
        self.note(|| format!("node{} job {} ended ok={ok}", j.node, short(&j.c.id)));
    }

    // ---- operators ------------------------------------------------------------------------

    fn windows(&mut self, n: usize, count: u64) -> Vec<BlackoutWindow> {
        let now = self.nodes[n].clock.now();
        (0..count)
            .filter_map(|_| {
                let zone = *self.rng.pick(&ZONES)?;
                let tz: chrono_tz::Tz = zone.parse().ok()?;
                let begin = now + chrono::TimeDelta::seconds(self.rng.below(150) as i64 - 20);
                let len = 1 + self.rng.below(3) as i64;
                let local = begin.with_timezone(&tz);
                let end = local + chrono::TimeDelta::minutes(len);
                // On the day it starts (a window past midnight ends the day after).
                let day = local.format("%a").to_string();
                let w = serde_json::json!({
                    "days": [day],
                    "start": local.format("%H:%M").to_string(),
                    "end": end.format("%H:%M").to_string(),
                    "timezone": zone,
                });
                serde_json::from_value(w).ok()
            })
            .collect()
    }

    fn create(&mut self, i: usize) {
        let (source, windows) = (self.plans[i].source, self.plans[i].windows);
        if self.up(source).is_none() {
            // The operator tries again when the daemon is back.
            let d = self
                .rng
                .between(Duration::from_secs(1), Duration::from_secs(5));
            self.at(d, Ev::Create(i));
            return;
        }
        let k = i;
        let (src, tgt) = (
            self.dir.path().join(format!("src{k}")),
            self.dir.path().join(format!("tgt{k}")),
        );
        if std::fs::create_dir(&src)
            .and_then(|()| std::fs::create_dir(&tgt))
            .is_err()
        {
            self.violation = Some("creating the directories of a relationship".into());
            return;
        }
        let rel = Rel {
            id: self.new_id(),
            source,
            target: 1 - source,
            src,
            tgt,
        };
        let windows = self.windows(source, windows);
        self.propose(rel, windows);
    }

    fn new_id(&mut self) -> RelationshipId {
        let x = self.rng.u128();
        RelationshipId::parse(&format!("{x:032x}"))
            .unwrap_or_else(|_| unreachable!("32 hex digits"))
    }

    /// The operator creates a relationship on its source (`create_source`).
    fn propose(&mut self, rel: Rel, windows: Vec<BlackoutWindow>) {
        let Some((node, inc)) = self.up(rel.source) else {
            return;
        };
        let spec = Spec {
            source_path: rel.src.to_string_lossy().into_owned(),
            target_address: self.nodes[rel.target].addr.clone(),
            target_port: 3712,
            target_path: rel.tgt.to_string_lossy().into_owned(),
            blackout_windows: windows,
            map_ids: None,
            enabled: true,
            bandwidth_limit: None,
            snapshot: Default::default(),
            mode: Default::default(),
            policies: Vec::new(),
            target_expiry: Default::default(),
            transport: Default::default(),
        };
        let r = match source::new_relationship(&node, rel.id.clone(), spec) {
            Ok(r) => r,
            Err(e) => {
                self.violation = Some(format!("a valid relationship was refused: {e}"));
                return;
            }
        };
        self.rels.push(rel.clone());
        let req = source::proposal(&r);
        self.note(|| format!("node{} creates {}", rel.source, short(&rel.id)));
        // First contact: no pin; the certificate presented is pinned from then on.
        self.send_to(
            Caller::Node(rel.source, inc),
            Some(rel.target),
            None,
            req,
            Cont::Propose(r),
        );
    }

    fn authorize(&mut self, id: &RelationshipId) {
        if self.quiet {
            return;
        }
        let Some(rel) = self.rels.iter().find(|r| r.id == *id).cloned() else {
            return;
        };
        let Some((node, _)) = self.up(rel.target) else {
            // The operator tries again later.
            let d = self
                .rng
                .between(Duration::from_secs(1), Duration::from_secs(10));
            self.at(d, Ev::Authorize(id.clone()));
            return;
        };
        self.stats.ops += 1;
        let res = target::authorize(&node, id, &Authorize::default());
        self.note(|| {
            format!(
                "node{} authorizes {} -> {:?}",
                rel.target,
                short(id),
                res.as_ref().map(|_| ()).map_err(|e| e.to_string())
            )
        });
    }

    /// One operator action, chosen at random.
    fn op(&mut self) {
        if self.quiet {
            return;
        }
        let next = self.rng.exp(OP_EVERY);
        self.at(next, Ev::Op);
        let Some(rel) = self.rng.pick(&self.rels).cloned() else {
            return;
        };
        self.stats.ops += 1;
        let roll = self.rng.below(100);
        let (s, t) = (rel.source, rel.target);
        let id = rel.id.clone();
        match roll {
            0..25 => {
                let Some((node, inc)) = self.up(s) else {
                    return;
                };
                let Ok(r) = node.get(&id, Role::Source) else {
                    return;
                };
                self.note(|| format!("node{s} replicate-now {}", short(&id)));
                if !r.authorized && !r.ended {
                    let ask = PeerRequest::State {
                        id: id.clone(),
                        source: None,
                    };
                    self.send(Caller::Node(s, inc), &r, ask, Cont::Replicate(r.clone()));
                } else {
                    let _ =
                        source::may_replicate(&r).and_then(|()| source::replicate_now(&node, &r));
                }
            }
            25..40 => {
                let count = self.rng.below(MAX_SIM_WINDOWS + 1);
                let windows = self.windows(s, count);
                self.edit(
                    s,
                    &id,
                    Edit {
                        blackout_windows: Some(windows),
                        ..Edit::default()
                    },
                );
            }
            40..50 => {
                let on = self.rng.chance(0.6);
                self.edit(
                    s,
                    &id,
                    Edit {
                        enabled: Some(on),
                        ..Edit::default()
                    },
                );
            }
            50..55 => {
                let limit = self.rng.chance(0.5).then(|| 1 + self.rng.below(1 << 30));
                self.edit(
                    s,
                    &id,
                    Edit {
                        bandwidth_limit: Some(limit),
                        ..Edit::default()
                    },
                );
            }
            55..65 => {
                let Some((node, _)) = self.up(s) else { return };
                let res = source::abort(&node, &id);
                self.note(|| format!("node{s} abort {} -> {}", short(&id), res.is_ok()));
            }
            65..70 => self.authorize(&id),
            70..73 => {
                let Some((node, _)) = self.up(t) else { return };
                self.stats.releases += 1;
                let res = target::make_writable(&node, &id);
                self.note(|| format!("node{t} make-writable {} -> {}", short(&id), res.is_ok()));
            }
            73..75 => {
                let Some((node, _)) = self.up(t) else { return };
                self.stats.releases += 1;
                let res = target::delete(&node, &id);
                self.note(|| format!("node{t} delete {} -> {}", short(&id), res.is_ok()));
            }
            75..78 => self.delete_source(s, &id),
            78..83 => {
                // Replicate the same directories again under a new relationship, if the
                // old one has ended (on the target, or deleted).
                let ended = |n: usize, role| match self.up(n) {
                    Some((node, _)) => node.get(&id, role).map_or(true, |r| r.ended),
                    None => false,
                };
                if ended(s, Role::Source) && ended(t, Role::Target) && self.rels.len() < 6 {
                    let mut again = rel.clone();
                    again.id = self.new_id();
                    let count = self.rng.below(MAX_SIM_WINDOWS + 1);
                    let windows = self.windows(s, count);
                    self.propose(again, windows);
                }
            }
            _ => {}
        }
    }

    fn edit(&mut self, n: usize, id: &RelationshipId, e: Edit) {
        let Some((node, inc)) = self.up(n) else {
            return;
        };
        let res = source::edit(&node, id, &e);
        self.note(|| {
            format!(
                "node{n} edit {} {} -> {}",
                short(id),
                serde_json::to_string(&e).unwrap_or_default(),
                res.is_ok()
            )
        });
        if let Ok(r) = res {
            self.update(n, inc, &r);
        }
    }

    /// Tells the target about an edit (`modify_source`).
    fn update(&mut self, n: usize, inc: u32, r: &Relationship) {
        let req = PeerRequest::Update {
            id: r.id.clone(),
            spec: r.spec.clone(),
        };
        self.send(Caller::Node(n, inc), r, req, Cont::Ignore);
    }

    /// `delete_source`: ended first, the job stopped (bounded wait), the target asked, then
    /// forgotten.
    fn delete_source(&mut self, n: usize, id: &RelationshipId) {
        let Some((node, inc)) = self.up(n) else {
            return;
        };
        let Ok(was) = source::delete_begin(&node, id) else {
            return;
        };
        self.note(|| format!("node{n} delete {}", short(id)));
        let done = source::cancel_job(&node, id).unwrap_or_else(|| Arc::new(AtomicBool::new(true)));
        let key = self.next_delete;
        self.next_delete += 1;
        self.deletes.insert(
            key,
            DeleteOp {
                node: n,
                inc,
                was,
                done,
                deadline: self.now + nanos(crate::daemon::api_common::STOP_GRACE),
            },
        );
        self.delete_wait(key);
    }

    fn delete_wait(&mut self, key: u64) {
        let Some(d) = self.deletes.get(&key) else {
            return;
        };
        let Some(node) = self.running(d.node, d.inc) else {
            self.deletes.remove(&key);
            return;
        };
        if !d.done.load(Ordering::SeqCst) {
            if self.now < d.deadline {
                self.at(STOP_POLL, Ev::DeleteWait(key));
                return;
            }
            let Some(d) = self.deletes.remove(&key) else {
                return;
            };
            source::delete_abandoned(&node, &d.was);
            self.log.unended.push((d.node, d.was.id.clone()));
            return;
        }
        let Some(d) = self.deletes.remove(&key) else {
            return;
        };
        let id = d.was.id.clone();
        let req = PeerRequest::Delete { id: id.clone() };
        self.send(Caller::Node(d.node, d.inc), &d.was, req, Cont::Delete(id));
    }

    /// A peer that holds a certificate but was never pinned asks about a relationship it
    /// knows the id of (ids are not secret: they appear in logs and metrics).
    fn intrude(&mut self) {
        if self.quiet {
            return;
        }
        let next = self.rng.exp(INTRUDER_EVERY);
        self.at(next, Ev::Intrude);
        self.stats.intruder += 1;
        let to = self.rng.below(2) as usize;
        let id = match self.rng.pick(&self.rels) {
            Some(r) if self.rng.chance(0.8) => r.id.clone(),
            _ => self.new_id(),
        };
        let spec = Spec {
            source_path: "/srv/data".into(),
            target_address: self.nodes[to].addr.clone(),
            target_port: 3712,
            target_path: format!("/srv/intruded-{}", self.rng.below(4)),
            blackout_windows: Vec::new(),
            map_ids: None,
            enabled: true,
            bandwidth_limit: None,
            snapshot: Default::default(),
            mode: Default::default(),
            policies: Vec::new(),
            target_expiry: Default::default(),
            transport: Default::default(),
        };
        let req = match self.rng.below(6) {
            0 => PeerRequest::Propose {
                id,
                spec,
                software: "intruder".into(),
            },
            1 => PeerRequest::State { id, source: None },
            2 => PeerRequest::Ticket {
                id,
                plaintext: false,
                epoch: 0,
                software: None,
                term: 0,
                write_places: false,
            },
            3 => PeerRequest::Report {
                id,
                running: true,
                job: None,
                last_attempt: None,
                recovery_point_ns: Some(i64::MAX),
                epoch: 0,
            },
            4 => PeerRequest::Update { id, spec },
            _ => PeerRequest::Delete { id },
        };
        self.note(|| format!("intruder {} to node{to}", request_name(&req)));
        self.send_to(Caller::Intruder, Some(to), None, req, Cont::Intruder);
    }

    /// At the end, with the network healed and jobs stopped for a while: the two nodes agree.
    fn converged(&mut self) {
        if self.violation.is_some() {
            return;
        }
        let rows = |w: &World, n: usize, id: &RelationshipId, role: Role| -> Option<Relationship> {
            let (node, _) = w.up(n)?;
            node.get(id, role).ok()
        };
        let intruder = Some(self.intruder.0.as_str());
        for rel in &self.rels {
            let s = rows(self, rel.source, &rel.id, Role::Source);
            let t = rows(self, rel.target, &rel.id, Role::Target);
            if t.as_ref()
                .is_some_and(|t| t.peer_fingerprint.as_deref() == intruder)
            {
                // Deleted on the target, and the intruder proposed the freed id before the
                // source learned of the delete: the target answers the source "not pinned"
                // (as it must answer a source whose certificate changed), so the source shows
                // its target unreachable rather than ended. Known; see the module docs.
                continue;
            }
            if let Err(v) = super::check::agree(s.as_ref(), t.as_ref()) {
                self.violation = Some(format!("after settling, relationship {}: {v}", rel.id));
                return;
            }
        }
    }
}
