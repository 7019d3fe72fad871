//! Source side: the scheduler decides when a relationship's job starts, pauses (blackout
//! window) or stops (abort, delete, shutdown); each job runs the data plane's sender on its own
//! threads, one session per attempt, each attempt with a fresh ticket from the target.

use super::peer_call::{call, peer_addr, refused};
use super::watch::{Seen, Walk};
use super::{lock, Node};
use crate::blackout;
use crate::clock::Clock;
use crate::events::EventKind;
use crate::model::{Attempt, Relationship, RelationshipId, Role, SnapshotChoice};
use crate::peer::{JobView, PeerAnswer, PeerRequest};
use crate::tls::Fingerprint;
use crate::{Error, Result};
use chrono::{DateTime, Utc};
use mover::units::SessionId;
use mover::Progress;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Scheduler tick: bounds how late a pause, resume or start happens.
pub(crate) const TICK: Duration = Duration::from_millis(200);
/// How often an unauthorized relationship asks the target whether it was authorized, and an
/// authorized idle one checks the target is still there.
const POLL_UNAUTHORIZED: Duration = Duration::from_secs(1);
const POLL_AUTHORIZED: Duration = Duration::from_secs(3);
/// Progress reports to the target while a job runs.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Sessions per job before it is recorded as failed (the scheduler tries again later).
const JOB_ATTEMPTS: u32 = 5;
const RETRY_BACKOFF_START: Duration = Duration::from_millis(500);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// After a failed job, wait this long before the next one.
const FAILED_JOB_PAUSE: Duration = Duration::from_secs(5);

/// Throughput is measured over at least this long (a sliding sample, so a pause or a slow
/// start does not drag the figure down for the rest of the job).
const RATE_WINDOW: Duration = Duration::from_secs(2);

pub struct Job {
    pub progress: Arc<Progress>,
    /// Files and bytes that earlier sessions of this job sent (each session's counters start
    /// at zero; the job's progress goes on from where the last session ended).
    carried: Arc<Carried>,
    pub started: Instant,
    done: Arc<std::sync::atomic::AtomicBool>,
    /// (when, job bytes then, bytes per second measured up to then).
    rate: std::sync::Mutex<(Instant, u64, f64)>,
}

#[derive(Default)]
struct Carried {
    files: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

impl Carried {
    /// Between sessions: moves what the last one sent from its counters (zeroed for the next)
    /// to the job's. Zeroed first, so a reader never counts the same bytes twice.
    fn roll(&self, p: &Progress) {
        let files = p
            .files
            .load(Ordering::Relaxed)
            .min(p.files_total.load(Ordering::Relaxed));
        let bytes = p
            .bytes
            .load(Ordering::Relaxed)
            .min(p.bytes_total.load(Ordering::Relaxed));
        p.reset();
        self.files.fetch_add(files, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Job {
    /// The job's thread has recorded its outcome (the scheduler drops it on its next tick).
    pub fn finished(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// The job's progress at `now` (the node clock's monotonic time).
    pub fn view(&self, now: Instant) -> JobView {
        let (p, c) = (&self.progress, &self.carried);
        let (cf, cb) = (
            c.files.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed),
        );
        let files = (
            cf + p.files.load(Ordering::Relaxed),
            cf + p.files_total.load(Ordering::Relaxed),
        );
        let bytes = (
            cb + p.bytes.load(Ordering::Relaxed),
            cb + p.bytes_total.load(Ordering::Relaxed),
        );
        let scanning = p.files_total.load(Ordering::Relaxed) == 0
            && p.bytes_total.load(Ordering::Relaxed) == 0;
        let run = now.saturating_duration_since(self.started);
        let mut v = JobView::from_counts(p.control.is_paused(), run.as_secs_f64(), files, bytes);
        if scanning {
            // Totals of this session are not known yet: no percentages to claim.
            v.scanning = true;
            (v.percent_files, v.percent_bytes, v.percent) = (0.0, 0.0, 0.0);
        }
        let mut rate = lock(&self.rate);
        let dt = now.saturating_duration_since(rate.0);
        if dt >= RATE_WINDOW {
            let moved = v.bytes_done.saturating_sub(rate.1);
            *rate = (now, v.bytes_done, moved as f64 / dt.as_secs_f64());
        }
        v.throughput_bytes_per_sec = if v.paused {
            0.0
        } else if run < RATE_WINDOW {
            v.throughput_bytes_per_sec
        } else {
            rate.2
        };
        v
    }
}

/// This node's source jobs running now and their summed throughput (bytes per second), for
/// the cluster's per-node figures.
pub(crate) fn throughput(node: &Node) -> (u32, f64) {
    let now = node.clock.instant();
    lock(&node.jobs)
        .values()
        .filter(|j| !j.finished())
        .fold((0, 0.0), |(n, b), j| {
            (n + 1, b + j.view(now).throughput_bytes_per_sec)
        })
}

/// The time of a scheduling decision, read once from the node's clock: wall time for blackout
/// windows, monotonic time for intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Now {
    wall: DateTime<Utc>,
    mono: Instant,
}

impl Now {
    fn read(clock: &dyn Clock) -> Now {
        Now {
            wall: clock.now(),
            mono: clock.instant(),
        }
    }
}

/// What the scheduler remembers of one relationship between ticks, and the decisions that
/// depend on time. Pure: the time is an argument, as in `blackout`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Timing {
    /// When the target was last asked about the relationship.
    last_poll: Option<Instant>,
    /// When the last job ended, and whether it failed.
    last_end: Option<(Instant, bool)>,
    /// When the running job was paused for a blackout window; `None` while it is not.
    paused_since: Option<Instant>,
    /// Whether a blackout window was open at the last pass (false before the first: a daemon
    /// started inside one says so once).
    in_blackout: bool,
}

/// When continuous replication wants a job: what the relationship's watch saw, and the
/// node's intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Due {
    seen: Seen,
    interval: Duration,
    rescan: Duration,
}

impl Due {
    fn of(node: &Node, id: &RelationshipId) -> Due {
        Due {
            seen: node.watches.seen(id),
            interval: node.opts.continuous_interval,
            rescan: node.opts.rescan_interval,
        }
    }

    /// Without a watch, every `interval`.
    #[cfg(test)]
    fn interval(interval: Duration) -> Due {
        Due {
            seen: Seen::Interval,
            interval,
            rescan: interval,
        }
    }
}

/// What to do with a running job at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pause {
    paused: bool,
    /// End the session at its chunk boundary; the job goes on in a new one after the window.
    suspend: bool,
}

impl Timing {
    /// Whether the target is due another poll.
    fn poll_due(&self, authorized: bool, now: Instant) -> bool {
        let every = if authorized {
            POLL_AUTHORIZED
        } else {
            POLL_UNAUTHORIZED
        };
        self.last_poll
            .is_none_or(|t| now.saturating_duration_since(t) >= every)
    }

    /// Whether continuous replication wants the next job: `interval` after the last one ended,
    /// and after a failed one not before FAILED_JOB_PAUSE either.
    fn job_due(&self, interval: Duration, now: Instant) -> bool {
        self.last_end.is_none_or(|(t, failed)| {
            let wait = if failed {
                FAILED_JOB_PAUSE.max(interval)
            } else {
                interval
            };
            now.saturating_duration_since(t) >= wait
        })
    }

    /// Whether an idle relationship's next job starts now: never inside a blackout window;
    /// otherwise on "replicate now" (`wanted`), when continuous replication is due, or to resume
    /// a job the daemon was stopped in the middle of (`job_running` still set).
    /// Continuous replication is due `interval` after the last job without a watch; with one,
    /// as soon as changes settled, or `rescan` after the last job whatever happened.
    /// A relationship stopped for its source directory (`path_error`) starts nothing until a
    /// "replicate now" finds the directory again (the API checks it before queueing).
    /// A policy snapshot waiting in the queue (`queued`) starts a job like a settled change,
    /// in every mode that keeps them.
    fn job_starts(&self, r: &Relationship, wanted: bool, due: Due, queued: bool, now: Now) -> bool {
        let blackout = blackout::in_blackout(&r.spec.blackout_windows, now.wall);
        let due = match due.seen {
            Seen::Interval => self.job_due(due.interval, now.mono),
            Seen::Events { ready } => {
                (ready && self.job_due(Duration::ZERO, now.mono))
                    || self.job_due(due.rescan, now.mono)
            }
        };
        let continuous = r.spec.enabled && due && r.spec.mode.replicates_changes();
        let queued = r.spec.enabled && queued && self.job_due(Duration::ZERO, now.mono);
        r.path_error.is_none() && !blackout && (wanted || continuous || queued || r.job_running)
    }

    /// Records an event when a blackout window opened or closed since the last pass.
    fn blackout_transition(&mut self, node: &Node, r: &Relationship, now: DateTime<Utc>) {
        let inside = blackout::in_blackout(&r.spec.blackout_windows, now);
        if inside == self.in_blackout {
            return;
        }
        self.in_blackout = inside;
        let until = blackout::next_change_any(&r.spec.blackout_windows, now)
            .map(|t| format!(" until {}", t.to_rfc3339()))
            .unwrap_or_default();
        let (kind, message) = if inside {
            (
                EventKind::BlackoutEntered,
                format!("blackout window open{until}: no job starts, a running one pauses"),
            )
        } else {
            (
                EventKind::BlackoutLeft,
                "blackout window closed: jobs run again".to_string(),
            )
        };
        node.event(kind, Some((&r.id, Role::Source)), message);
    }

    fn job_ended(&mut self, failed: bool, now: Instant) {
        self.last_end = Some((now, failed));
        self.paused_since = None;
    }

    /// A running job is paused while a blackout window is open; a pause longer than
    /// `max_pause` (config::DEFAULT_MAX_PAUSE_IN_SESSION) suspends its session, asked again on
    /// every tick until the window ends.
    fn running(&mut self, r: &Relationship, max_pause: Duration, now: Now) -> Pause {
        if !blackout::in_blackout(&r.spec.blackout_windows, now.wall) {
            self.paused_since = None;
            return Pause {
                paused: false,
                suspend: false,
            };
        }
        let since = *self.paused_since.get_or_insert(now.mono);
        Pause {
            paused: true,
            suspend: now.mono.saturating_duration_since(since) > max_pause,
        }
    }
}

/// The waits between failed sessions of a job: doubling from RETRY_BACKOFF_START up to
/// RETRY_BACKOFF_MAX.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: RETRY_BACKOFF_START,
        }
    }

    /// After a failed session (the `attempt`th): the wait before the next one, or `None` if
    /// the job gives up (stopped, out of attempts, or an error another session would not fix).
    fn after_failure(&mut self, attempt: u32, stopped: bool, retryable: bool) -> Option<Duration> {
        if stopped || attempt >= JOB_ATTEMPTS || !retryable {
            return None;
        }
        let wait = self.next;
        self.next = (wait * 2).min(RETRY_BACKOFF_MAX);
        Some(wait)
    }
}

/// What a scheduler pass asks its runner to do. The daemon spawns a task for each peer
/// exchange and a thread for each job; the simulation (`sim`) turns them into events.
pub(crate) enum Task {
    /// Ask the target about the relationship (`poll_request`, then `polled`); then
    /// `Scheduler::polling.end`.
    Poll(Box<Relationship>),
    /// Tell the target about the running or just ended job (`report_request`, then
    /// `reported`); then `Scheduler::reporting.end`.
    Report(RelationshipId),
    /// Run the claimed job: sessions until one verifies or the job stops (`run_job` on a
    /// thread), then `conclude`.
    Run(Claimed),
}

/// Relationships with a peer exchange of one kind in flight, shared with whoever runs them.
#[derive(Clone, Default)]
pub(crate) struct InFlight(Arc<std::sync::Mutex<HashSet<RelationshipId>>>);

impl InFlight {
    /// Whether `id` had none in flight (it has one now).
    fn begin(&self, id: &RelationshipId) -> bool {
        lock(&self.0).insert(id.clone())
    }

    /// The exchange of `id` ended, answered or not.
    pub(crate) fn end(&self, id: &RelationshipId) {
        lock(&self.0).remove(id);
    }
}

/// What the scheduler remembers between passes.
pub(crate) struct Scheduler {
    timings: HashMap<RelationshipId, Timing>,
    last_report: Instant,
    /// Polls in flight: one at most per relationship, so a slow target does not pile them up.
    pub(crate) polling: InFlight,
    /// Progress reports in flight (one at most per relationship, but the final report of a
    /// job goes out even while one is).
    pub(crate) reporting: InFlight,
    /// Stored relationships this release could not read, said once each.
    unreadable: HashSet<String>,
}

impl Scheduler {
    pub(crate) fn new(now: Instant) -> Scheduler {
        Scheduler {
            timings: HashMap::new(),
            last_report: now,
            polling: InFlight::default(),
            reporting: InFlight::default(),
            unreadable: HashSet::new(),
        }
    }

    /// One pass over the source relationships: pauses, suspends or resumes running jobs,
    /// claims the jobs that start now, and says which polls, reports and jobs to run.
    pub(crate) fn pass(&mut self, node: &Node) -> Vec<Task> {
        let clock = node.clock.clone();
        let mut tasks = Vec::new();
        let rels = match node.store().list_readable(Some(Role::Source)) {
            Ok(listed) => {
                // Said once per row and per daemon: one row this release cannot read stops
                // its own jobs, not the others' (`mover_relationships{state="unreadable"}`
                // counts it).
                for u in listed.unreadable {
                    if self.unreadable.insert(u.id) {
                        tracing::error!("{}; its jobs do not run", u.error);
                    }
                }
                listed.rows
            }
            Err(e) => {
                tracing::error!("reading relationships: {e}");
                return tasks;
            }
        };
        // Forget deleted relationships.
        self.timings
            .retain(|id, _| rels.iter().any(|r| r.id == *id));
        node.watches.sync(node, &rels);
        let pass = clock.instant();
        let report = pass.saturating_duration_since(self.last_report) >= REPORT_EVERY;
        if report {
            self.last_report = pass;
        }
        let report_once = |tasks: &mut Vec<Task>, id: &RelationshipId, always: bool| {
            if self.reporting.begin(id) || always {
                tasks.push(Task::Report(id.clone()));
            }
        };
        for r in rels {
            if r.ended {
                continue;
            }
            let t = self.timings.entry(r.id.clone()).or_default();
            let now = clock.instant();
            // In a cluster, only the node holding the relationship talks to its target about
            // it (a poll carries this node's spec and job state, which the target adopts).
            let held = super::owners::held_here(node, &r.id);
            if held && t.poll_due(r.authorized, now) && self.polling.begin(&r.id) {
                t.last_poll = Some(now);
                tasks.push(Task::Poll(Box::new(r.clone())));
            }
            if !r.authorized {
                continue;
            }
            t.blackout_transition(node, &r, clock.now());
            let running = lock(&node.jobs)
                .get(&r.id)
                .map(|j| (j.progress.clone(), j.done.load(Ordering::SeqCst)));
            match running {
                Some((p, false)) => {
                    let pause = t.running(&r, node.opts.max_pause_in_session, Now::read(&*clock));
                    p.control.set_paused(pause.paused);
                    if pause.suspend {
                        p.control.suspend();
                    }
                    if report && held {
                        report_once(&mut tasks, &r.id, false);
                    }
                }
                Some((_, true)) => {
                    let ok = lock(&node.jobs).remove(&r.id).is_some();
                    debug_assert!(ok);
                    let failed = node
                        .store()
                        .get(&r.id)
                        .is_ok_and(|r| r.last_attempt.is_some_and(|a| !a.ok));
                    t.job_ended(failed, clock.instant());
                    if held {
                        report_once(&mut tasks, &r.id, true);
                    }
                }
                // No job while the target runs a release this one may not replicate with (it
                // would refuse every session): polls go on and lift this once it is upgraded.
                None if node.incompatible_peer(&r.id).is_some() => {}
                // A drained node (`mover node drain`) starts nothing; what it owes waits for
                // its undrain.
                None if node.cluster.as_ref().is_some_and(|c| c.drained()) => {}
                // In a cluster, a job starts only where the relationship's owner record
                // points, and only while this node's etcd session is live (`owners`).
                None if !held => {}
                None => {
                    let wanted = lock(&node.wanted).contains(&r.id);
                    let due = Due::of(node, &r.id);
                    // Policy snapshots go first, oldest first, as the seeds say.
                    let queued = r
                        .spec
                        .mode
                        .keeps_snapshots()
                        .then(|| super::snapshots::queued(node, &r))
                        .flatten();
                    if t.job_starts(&r, wanted, due, queued.is_some(), Now::read(&*clock)) {
                        if queued.is_none() {
                            lock(&node.wanted).remove(&r.id);
                        }
                        // Settled changes narrow the walk; anything else walks it all.
                        let full = wanted || due.seen != (Seen::Events { ready: true });
                        if let Some(mut c) = claim_job(node, &r) {
                            if queued.is_some() {
                                // The live tree's changes stay for the job after.
                                c.walk = Walk::Whole("a policy snapshot");
                                c.policy = queued;
                            } else {
                                c.walk = node.watches.take(&r.id, full);
                            }
                            tasks.push(Task::Run(c));
                        }
                    }
                }
            }
        }
        tasks
    }
}

/// The scheduler: runs forever, one pass per tick over the source relationships.
pub async fn schedule(node: Arc<Node>) {
    let mut s = Scheduler::new(node.clock.instant());
    let wake = node.watches.wake.clone();
    loop {
        // A settled batch of changes starts its job now, not at the next tick.
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = wake.notified() => {}
        }
        if node.shutting_down() {
            return;
        }
        for task in s.pass(&node) {
            match task {
                Task::Poll(r) => {
                    let (node, polling) = (node.clone(), s.polling.clone());
                    tokio::spawn(async move {
                        let id = r.id.clone();
                        poll_target(&node, *r).await;
                        polling.end(&id);
                    });
                }
                Task::Report(id) => {
                    let (node, reporting) = (node.clone(), s.reporting.clone());
                    tokio::spawn(async move {
                        report_progress(&node, &id).await;
                        reporting.end(&id);
                    });
                }
                Task::Run(c) => spawn_job(&node, c),
            }
        }
    }
}

/// Asks the target about the relationship: learns authorization, notices a target-side
/// delete (the relationship ends here too) or an unreachable target (disconnected).
async fn poll_target(node: &Node, r: Relationship) {
    let (r, req) = poll_request(node, r);
    let answer = call(node, &r, &req).await;
    polled(node, &r, answer);
}

/// A poll of the target: the relationship as stored now, and the request carrying this
/// node's view of it.
pub(crate) fn poll_request(node: &Node, r: Relationship) -> (Relationship, PeerRequest) {
    let r = node.get(&r.id, Role::Source).unwrap_or(r);
    let source = source_state(node, &r);
    let req = PeerRequest::State {
        id: r.id.clone(),
        source: Some(source),
    };
    (r, req)
}

/// Takes the target's answer to a poll (`r` as `poll_request` read it).
pub(crate) fn polled(node: &Node, r: &Relationship, answer: Result<PeerAnswer>) {
    let (authorized, ended, unreachable) = match answer {
        Ok(PeerAnswer::State {
            authorized,
            ended,
            scrub_failed,
            software,
        }) => {
            if let Some(s) = &software {
                node.peer_release(&r.id, s, "target");
            }
            // After a failed job the usual retry comes anyway (and not at every poll).
            let last_ok = r.last_attempt.as_ref().is_some_and(|a| a.ok);
            if scrub_failed && authorized && !ended && r.spec.enabled && last_ok {
                let running = lock(&node.jobs).contains_key(&r.id);
                if !running && lock(&node.wanted).insert(r.id.clone()) {
                    tracing::info!(id = %r.id, "the target's scrub found a difference: a job repairs it");
                }
            }
            (authorized, ended, false)
        }
        Ok(PeerAnswer::NotFound) => (r.authorized, true, false),
        Ok(other) => {
            tracing::warn!(id = %r.id, "target refused a status request: {}", refused(r, other));
            (r.authorized, false, true)
        }
        Err(e) => {
            tracing::debug!(id = %r.id, "target unreachable: {e}");
            (r.authorized, false, true)
        }
    };
    if ended {
        if let Some(j) = lock(&node.jobs).get(&r.id) {
            j.progress.control.cancel();
        }
    }
    if (authorized, ended, unreachable) != (r.authorized, r.ended, r.peer_unreachable) {
        // Written over the stored row, not `r` (read before the call): an end recorded
        // meanwhile (a delete in progress) is never undone here. The events are of the
        // stored transitions, compared and said under the store's lock: one per outage
        // however many polls it lasts, in the order of the transitions.
        let target = format!("{}:{}", r.spec.target_address, r.spec.target_port);
        let res = node.modify_noting(&r.id, Role::Source, |x| {
            let (was_unreachable, was_ended) = (x.peer_unreachable, x.ended);
            x.authorized = x.authorized || authorized;
            x.ended = x.ended || ended;
            x.peer_unreachable = unreachable;
            if ended {
                x.job_running = false;
            }
            let mut events = Vec::new();
            if was_unreachable != unreachable {
                events.push(if unreachable {
                    (
                        EventKind::PeerUnreachable,
                        format!("target {target} does not answer"),
                    )
                } else {
                    (
                        EventKind::PeerReachable,
                        format!("target {target} answers again"),
                    )
                });
            }
            // Ended here first (a delete on this side) is the operator's own doing.
            if ended && !was_ended {
                events.push((
                    EventKind::RelationshipEnded,
                    "the target ended the relationship (deleted there, or made writable): no \
                     job runs"
                        .to_string(),
                ));
            }
            events
        });
        if let Err(e) = res {
            tracing::debug!(id = %r.id, "recording target status: {e}");
        }
    }
}

/// What this node tells the target about the relationship: its settings, its running job and
/// the last outcome (polls carry all of it, progress reports all but the settings).
fn source_state(node: &Node, r: &Relationship) -> crate::peer::SourceState {
    let job = lock(&node.jobs)
        .get(&r.id)
        .filter(|j| !j.finished())
        .map(|j| j.view(node.clock.instant()));
    crate::peer::SourceState {
        spec: r.spec.clone(),
        running: job.is_some(),
        job,
        last_attempt: r.last_attempt.clone(),
        recovery_point_ns: r.recovery_point_ns,
        software: Some(mover::software_version().to_string()),
    }
}

async fn report_progress(node: &Node, id: &RelationshipId) {
    let Some((r, req)) = report_request(node, id) else {
        return;
    };
    let answer = call(node, &r, &req).await;
    reported(node, &r, answer);
}

/// A progress report: the relationship and the request carrying its job's state, if it is
/// still a source relationship here.
pub(crate) fn report_request(
    node: &Node,
    id: &RelationshipId,
) -> Option<(Relationship, PeerRequest)> {
    let r = node.get(id, Role::Source).ok()?;
    let s = source_state(node, &r);
    let req = PeerRequest::Report {
        id: id.clone(),
        running: s.running,
        job: s.job,
        last_attempt: s.last_attempt,
        recovery_point_ns: s.recovery_point_ns,
        epoch: r.epoch,
    };
    Some((r, req))
}

/// Takes the target's answer to a progress report.
pub(crate) fn reported(node: &Node, r: &Relationship, answer: Result<PeerAnswer>) {
    let id = &r.id;
    match answer {
        Ok(PeerAnswer::Ok) => {}
        Ok(PeerAnswer::NotFound) => {
            if let Some(j) = lock(&node.jobs).get(id) {
                j.progress.control.cancel();
            }
        }
        Ok(other) => tracing::debug!(%id, "progress report refused: {}", refused(r, other)),
        Err(e) => tracing::debug!(%id, "progress report: {e}"),
    }
}

/// A job the scheduler claimed: what its runner (a thread in the daemon, the event loop in
/// the simulation) shares with the scheduler and the API.
pub(crate) struct Claimed {
    pub(crate) id: RelationshipId,
    pub(crate) progress: Arc<Progress>,
    carried: Arc<Carried>,
    done: Arc<std::sync::atomic::AtomicBool>,
    /// What the job's first session walks (`watch::Watches::take`); later sessions walk it
    /// all (changes after the job began are not in it).
    pub(crate) walk: Walk,
    /// The queued policy snapshot the job replicates (None: the live tree).
    pub(crate) policy: Option<crate::policy::Snapshot>,
}

/// Claims the relationship's next job, recording it running; `None` if the relationship ended
/// or is not authorized (as stored now) or a job of it is already there.
pub(crate) fn claim_job(node: &Node, r: &Relationship) -> Option<Claimed> {
    let progress = Arc::new(Progress::default());
    progress.control.set_rate(r.spec.bandwidth_limit);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let carried = Arc::new(Carried::default());
    let now = node.clock.instant();
    let job = Job {
        progress: progress.clone(),
        carried: carried.clone(),
        started: now,
        done: done.clone(),
        rate: std::sync::Mutex::new((now, 0, 0.0)),
    };
    {
        // `r` was read at the start of the scheduler's pass. A delete marks the relationship
        // ended and then looks for its job under this lock: checking `ended` here, under the
        // same lock, means either the delete finds this job and stops it, or no job starts.
        let mut jobs = lock(&node.jobs);
        match node.get(&r.id, Role::Source) {
            Ok(now) if !now.ended && now.authorized => {}
            _ => return None,
        }
        // Checked again under the lock `owners::drop_moved` forgets a copy under.
        if !super::owners::held_here(node, &r.id) {
            return None;
        }
        if jobs.contains_key(&r.id) {
            return None;
        }
        jobs.insert(r.id.clone(), job);
    }
    if let Err(e) = node.modify(&r.id, Role::Source, |x| x.job_running = true) {
        tracing::error!(id = %r.id, "recording the job start: {e}");
    }
    tracing::info!(id = %r.id, source = %r.spec.source_path, "job started");
    Some(Claimed {
        id: r.id.clone(),
        progress,
        carried,
        done,
        walk: Walk::Whole("no watch in place"),
        policy: None,
    })
}

/// Runs a claimed job on its own thread.
fn spawn_job(node: &Arc<Node>, c: Claimed) {
    let (n, id, rt) = (
        node.clone(),
        c.id.clone(),
        tokio::runtime::Handle::current(),
    );
    let spawned = std::thread::Builder::new()
        .name("mover-job".into())
        .spawn(move || {
            let node = n;
            let start = JobStart::now(&*node.clock);
            let result = run_job(&node, &rt, &c);
            conclude(&node, &c, start, result);
        });
    if let Err(e) = spawned {
        tracing::error!("spawning a job thread: {e}");
        lock(&node.jobs).remove(&id);
    }
}

/// When a job began running, on the node's clocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobStart {
    pub(crate) mono: Instant,
    /// The source's point in time the job replicates (it runs from then on): what a
    /// successful job records as the recovery point.
    pub(crate) wall_ns: i64,
}

impl JobStart {
    pub(crate) fn now(clock: &dyn Clock) -> JobStart {
        JobStart {
            mono: clock.instant(),
            wall_ns: clock.now_ns(),
        }
    }
}

/// Records a job's end: its outcome in the store, its counters, and that it is done (the
/// scheduler drops it on its next pass).
pub(crate) fn conclude(
    node: &Node,
    c: &Claimed,
    start: JobStart,
    result: Result<mover::sender::SendReport>,
) {
    c.carried.roll(&c.progress);
    if result.is_err() {
        node.watches.failed(&c.id);
    } else {
        lock(&node.reconnecting).remove(&c.id);
    }
    let took = node.clock.instant().saturating_duration_since(start.mono);
    finish_job(
        node,
        &c.id,
        &c.carried,
        c.progress.control.is_cancelled(),
        result,
        (start.wall_ns, took),
    );
    c.done.store(true, Ordering::SeqCst);
}

/// Sessions until one verifies, the job is stopped, or attempts run out.
fn run_job(
    node: &Node,
    rt: &tokio::runtime::Handle,
    c: &Claimed,
) -> Result<mover::sender::SendReport> {
    let (id, progress) = (&c.id, &c.progress);
    let mut sessions = Sessions::new();
    // One policy for the job: an RDMA failure mid-job sends its retried sessions over TCP.
    let policy = mover::transport::select::RdmaPolicy::new(
        node.get(id, Role::Source)?.spec.transport.choice(),
        None,
    );
    let transport: Arc<dyn mover::Transport> =
        Arc::new(mover::transport::select::Negotiated(policy.clone()));
    let mut walk = Some(c.walk.clone());
    // In a cluster whose members spread their jobs, each session offers them a share.
    let places = node.cluster.as_ref().filter(|m| m.takes_shards()).map(|m| {
        Arc::new(super::spread::Places::new(
            m.clone(),
            rt.clone(),
            progress.clone(),
        ))
    });
    let spread = places
        .clone()
        .map(|p| p as Arc<dyn mover::sender::shard::Spread>);
    loop {
        // No session starts once the job is stopped, nor inside a blackout window (a retry or
        // a resume after a long window waits it out here).
        wait_until_allowed(node, id, progress)?;
        let (r, src) = prepare_session(node, c)?;
        if let Some(p) = &places {
            p.set_source(src.path().to_path_buf());
        }
        if !node.opts.roles.data {
            // A data container restarting (or not yet on this release) would fail the
            // session: its ticket and attempt wait for it instead.
            super::data_client::wait_ready(node, progress);
        }
        let res = match rt.block_on(ticket(node, &r)) {
            Ok(_) if !ticket_usable(node, id, progress)? => continue,
            other => other,
        };
        // Only the first session may narrow: changes made after the job began are not in
        // its set, and a later session walks again.
        let changed = match walk.take() {
            Some(Walk::Changed(dirs)) => {
                tracing::info!(%id, dirs = dirs.len(), "walking the changed directories");
                Some(dirs)
            }
            Some(Walk::Whole(why)) => {
                tracing::info!(%id, "walking the whole tree: {why}");
                None
            }
            None => {
                tracing::info!(%id, "walking the whole tree: a later session of the job");
                None
            }
        };
        let from = match &c.policy {
            Some(s) => super::snapshots::source_of(&src.proc_path(), s),
            None => src.proc_path(),
        };
        let res = res.and_then(|granted| {
            let Granted {
                to,
                session,
                secret,
                write_places,
            } = granted;
            let opts = mover::sender::SendOptions {
                src: from,
                to,
                threads: node.opts.threads,
                direct: true,
                state: Some(node.state_dir(id)),
                // A kept policy snapshot is read-only already.
                snapshot: match c.policy {
                    Some(_) => Some(mover::snapshot::Provider::Plain),
                    None => provider(r.spec.snapshot),
                },
                session: Some(session),
                secret,
                id_map: r.spec.map_ids.as_ref().map(|m| mover::sender::IdMap {
                    uid: m.uid.iter().copied().collect(),
                    gid: m.gid.iter().copied().collect(),
                }),
                pin: if c.policy.is_some() {
                    Vec::new()
                } else {
                    hot_pins(node, id)
                },
                changed: changed.map(|dirs| mover::tree::narrow::ChangedDirs { dirs }),
                // Kept between jobs: the next one does not read it from disk, and this one
                // does not wait for it to be written.
                cache: node.opts.roles.data.then(|| manifest_cache(node, id)),
                // A kept policy snapshot is read-only: its plan files could not be written.
                spread: spread.clone().filter(|_| c.policy.is_none()),
                write_places,
            };
            let report = if node.opts.roles.data {
                mover::sender::send_over(&opts, progress, &transport)?
            } else {
                // The data plane runs in the node's data container, which keeps the
                // manifest between jobs.
                let below = super::data_client::below(&src.proc_path(), &opts.src)?;
                super::data_client::send(node, &opts, src.fd(), &below, progress, &policy)?
            };
            lock(&node.transports).insert(id.clone(), report.transport.to_string());
            Ok(report)
        });
        if let Err(Error::DataPlane(mover::Error::SourceChanged { paths, .. })) = &res {
            remember_hot(node, id, paths);
        }
        let failed = res.as_ref().err().map(Error::to_string);
        let attempt = sessions.attempt;
        match sessions.ended(id, progress, res) {
            AfterSession::Done(res) => {
                return match (*res, &c.policy) {
                    (Ok(report), Some(s)) => {
                        // Kept on the target before the job counts as done: the next job
                        // would move the target past this recovery point.
                        rt.block_on(super::snapshots::keep_on_target(
                            node,
                            &r,
                            s,
                            &report.recovery_point,
                        ))?;
                        super::snapshots::replicated(node, id, s.clone())?;
                        Ok(report)
                    }
                    (res, _) => res,
                };
            }
            AfterSession::Again => {}
            AfterSession::Retry(pause) => {
                node.event(
                    EventKind::JobRetried,
                    Some((id, Role::Source)),
                    format!(
                        "attempt {attempt} failed, retrying in {:.1} s: {}",
                        pause.as_secs_f64(),
                        failed.unwrap_or_default()
                    ),
                );
                let until = node.clock.instant() + pause;
                while node.clock.instant() < until && !progress.control.is_cancelled() {
                    std::thread::sleep(mover::GATE_POLL);
                }
            }
        }
    }
}

/// Writes the manifest of `id` kept in memory between its jobs, wherever it is kept (here,
/// or in the node's data container), and with `forget` drops it: before its state directory
/// is read or removed (a save still running would leave it stale, or make it again).
pub(crate) fn settle_manifest(node: &Node, id: &RelationshipId, forget: bool) -> mover::Result<()> {
    let here = if forget {
        lock(&node.manifests).remove(id)
    } else {
        lock(&node.manifests).get(id).cloned()
    };
    if let Some(c) = here {
        c.flush();
    }
    if node.opts.roles.data {
        return Ok(());
    }
    super::data_client::manifest(node, &node.state_dir(id), forget)
}

/// The relationship's manifest kept in memory between its jobs.
fn manifest_cache(node: &Node, id: &RelationshipId) -> Arc<mover::sender::ManifestCache> {
    lock(&node.manifests)
        .entry(id.clone())
        .or_insert_with(|| Arc::new(mover::sender::ManifestCache::new()))
        .clone()
}

/// How long a file that changed while a session read it is copied aside by later sessions
/// and jobs (plain provider): a log written all the time keeps being, and each of its jobs
/// would otherwise fail once before copying it.
const HOT_FOR: Duration = Duration::from_secs(600);

/// The files the next session of `id` copies aside (`SendOptions::pin`): those that changed
/// while read within HOT_FOR, at most `MAX_PINS`.
fn hot_pins(node: &Node, id: &RelationshipId) -> Vec<Vec<u8>> {
    let now = node.clock.instant();
    let mut hot = lock(&node.hot_files);
    let Some(files) = hot.get_mut(id) else {
        return Vec::new();
    };
    files.retain(|_, at| now.saturating_duration_since(*at) < HOT_FOR);
    files
        .keys()
        .take(mover::sender::MAX_PINS)
        .cloned()
        .collect()
}

/// Files of `id` that changed while a session read them.
fn remember_hot(node: &Node, id: &RelationshipId, paths: &[Vec<u8>]) {
    let now = node.clock.instant();
    let mut hot = lock(&node.hot_files);
    let files = hot.entry(id.clone()).or_default();
    for p in paths {
        files.insert(p.clone(), now);
    }
    // Bounded: the least recently changed go first.
    while files.len() > mover::sender::MAX_PINS {
        let Some(oldest) = files
            .iter()
            .min_by_key(|(_, at)| **at)
            .map(|(p, _)| p.clone())
        else {
            break;
        };
        files.remove(&oldest);
    }
}

/// What a job does after one of its sessions ended.
#[derive(Debug)]
pub(crate) enum AfterSession {
    /// The job is over, with this outcome.
    Done(Box<Result<mover::sender::SendReport>>),
    /// Another session, as soon as one is allowed (a long blackout window suspended this one).
    Again,
    /// Another session after this wait, unless the job is stopped meanwhile.
    Retry(Duration),
}

/// A job's sessions: which attempt this is and the wait before the next.
#[derive(Debug)]
pub(crate) struct Sessions {
    attempt: u32,
    backoff: Backoff,
}

impl Sessions {
    pub(crate) fn new() -> Sessions {
        Sessions {
            attempt: 1,
            backoff: Backoff::new(),
        }
    }

    /// What follows a session that ended with `res`.
    pub(crate) fn ended(
        &mut self,
        id: &RelationshipId,
        progress: &Progress,
        res: Result<mover::sender::SendReport>,
    ) -> AfterSession {
        match res {
            Ok(mut rep) => {
                rep.attempts = self.attempt;
                AfterSession::Done(Box::new(Ok(rep)))
            }
            Err(_) if progress.control.take_suspended() && !progress.control.is_cancelled() => {
                // A long blackout window: the next pass waits it out and resumes in a new
                // session. Not a failed attempt.
                tracing::info!(%id, "session suspended for a long blackout window; the job resumes after it");
                self.backoff = Backoff::new();
                AfterSession::Again
            }
            Err(e) => {
                let stopped = progress.control.is_cancelled();
                let Some(pause) =
                    self.backoff
                        .after_failure(self.attempt, stopped, worth_retrying(&e))
                else {
                    return AfterSession::Done(Box::new(Err(e)));
                };
                tracing::warn!(%id, attempt = self.attempt, "session failed, retrying in {pause:?}: {e}");
                self.attempt += 1;
                AfterSession::Retry(pause)
            }
        }
    }
}

/// Before a session: the relationship as stored now and its source directory, checked for
/// this session and read through the descriptor checked (the data plane opens
/// `/proc/self/fd/<n>`, exactly the pinned directory, whatever the path shows by then). A
/// directory that is not the pinned one stops the relationship (not retried). Moves what the
/// last session sent to the job's counters and applies the current bandwidth limit.
pub(crate) fn prepare_session(
    node: &Node,
    c: &Claimed,
) -> Result<(Relationship, crate::pinned::OpenDir)> {
    let r = node.get(&c.id, Role::Source)?;
    let src = super::paths::source_dir(node, &r)?;
    c.carried.roll(&c.progress);
    c.progress.control.set_rate(r.spec.bandwidth_limit);
    Ok((r, src))
}

/// Returns once a session may start (see `session_allowed`), looking every tick.
fn wait_until_allowed(node: &Node, id: &RelationshipId, progress: &Progress) -> Result<()> {
    let mut said = false;
    while !session_allowed(node, id, progress)? {
        if !said {
            tracing::info!(%id, "waiting for the blackout window to end before the next session");
            said = true;
        }
        std::thread::sleep(TICK);
    }
    Ok(())
}

/// Whether a session may start now: an error if the job is stopped or its relationship has
/// ended; `false` while a blackout window is open or the scheduler has not lifted its pause.
/// When it may, clears a suspension left from the window (the scheduler asks for one on every
/// tick of a long pause), so the next session is not cut at its first chunk.
pub(crate) fn session_allowed(
    node: &Node,
    id: &RelationshipId,
    progress: &Progress,
) -> Result<bool> {
    if progress.control.is_cancelled() {
        return Err(Error::Conflict(format!("job of relationship {id} stopped")));
    }
    let r = node.get(id, Role::Source)?;
    if r.ended {
        return Err(Error::Conflict(format!("relationship {id} has ended")));
    }
    if let Some(why) = super::owners::lost_here(node, id) {
        return Err(Error::Conflict(why));
    }
    let blackout = blackout::in_blackout(&r.spec.blackout_windows, node.clock.now());
    if !blackout && !progress.control.is_paused() {
        progress.control.take_suspended();
        return Ok(true);
    }
    Ok(false)
}

/// Whether the session of a ticket just granted may start: asking for it can take up to
/// `PEER_TIMEOUT`, and a blackout window may have opened meanwhile, or the job been paused or
/// stopped (an error then, as `session_allowed`). If not, the ticket goes unused (tickets are
/// bounded and expire) and the job waits for the next session as before.
pub(crate) fn ticket_usable(node: &Node, id: &RelationshipId, progress: &Progress) -> Result<bool> {
    session_allowed(node, id, progress)
}

/// Data-plane failures as the data plane judges them; an unreachable or refusing target is
/// worth another try too (it may be restarting).
pub(crate) fn worth_retrying(e: &Error) -> bool {
    match e {
        Error::DataPlane(d) => mover::sender::retryable(d),
        Error::Peer { .. } | Error::Io { .. } => true,
        _ => false,
    }
}

/// A session from the target: where to send, its id, and the secret its frames are sealed
/// with (derived from the ticket request's TLS session; `None` when this node runs in clear).
async fn ticket(node: &Node, r: &Relationship) -> Result<Granted> {
    let addr = peer_addr(r).await?;
    let pin = r
        .peer_fingerprint
        .as_deref()
        .map(|f| Fingerprint(f.to_string()));
    let req = ticket_request(node, r)?;
    let plaintext = node.opts.insecure_plaintext;
    // A sealed session's secret is derived from this TLS session for the ticket it answers.
    let derive = |conn: &rustls::ClientConnection, a: &PeerAnswer| match a {
        PeerAnswer::Ticket { ticket, .. } if !plaintext => {
            let t = u128::from_str_radix(ticket, 16).map_err(|_| Error::Peer {
                peer: r.spec.target_address.clone(),
                message: "malformed ticket".into(),
            })?;
            crate::tls::session_secret(conn, &t.to_le_bytes()).map(Some)
        }
        _ => Ok(None),
    };
    let (answer, _, secret) =
        crate::peer_wire::call_then(addr, &node.identity, pin.as_ref(), &req, derive).await?;
    // The data plane shares the peer port; the configured one is what reaches the target
    // through NAT or port forwarding, whatever port it listens on itself.
    let write_places = match &answer {
        PeerAnswer::Ticket { write_places, .. } => write_places.clone(),
        _ => Vec::new(),
    };
    if write_places.len() > mover::receiver::share::MAX_WRITE_PLACES {
        return Err(Error::Peer {
            peer: r.spec.target_address.clone(),
            message: format!("{} write places named", write_places.len()),
        });
    }
    Ok(Granted {
        to: addr,
        session: ticket_session(r, answer)?,
        secret,
        write_places,
    })
}

/// A session the target granted: where to send, its id, the secret its frames are sealed
/// with, and the target's other write places.
struct Granted {
    to: SocketAddr,
    session: SessionId,
    secret: Option<mover::SessionSecret>,
    write_places: Vec<SocketAddr>,
}

/// The request for a session of `r`: sealed unless this node runs in clear; in a cluster,
/// only while this node holds `r` (the request carries the term it holds it at).
pub(crate) fn ticket_request(node: &Node, r: &Relationship) -> Result<PeerRequest> {
    Ok(PeerRequest::Ticket {
        id: r.id.clone(),
        plaintext: node.opts.insecure_plaintext,
        epoch: r.epoch,
        software: Some(mover::software_version().to_string()),
        term: super::owners::term_here(node, &r.id)?,
        // A session spread over members of an earlier release would send their workers to
        // the target whatever the places: it asks for none then (a rolling upgrade).
        write_places: node
            .cluster
            .as_ref()
            .is_none_or(|m| !m.takes_shards() || m.shard_places_run(mover::software_version())),
    })
}

/// The session id the target's answer to a ticket request grants.
pub(crate) fn ticket_session(r: &Relationship, answer: PeerAnswer) -> Result<SessionId> {
    match answer {
        PeerAnswer::Ticket { ticket, .. } => {
            let t = u128::from_str_radix(&ticket, 16).map_err(|_| Error::Peer {
                peer: r.spec.target_address.clone(),
                message: "malformed ticket".into(),
            })?;
            Ok(SessionId(t))
        }
        other => Err(refused(r, other)),
    }
}

/// Records a job's outcome; `when` is the source's point in time the job replicated and how
/// long the job took.
fn finish_job(
    node: &Node,
    id: &RelationshipId,
    carried: &Carried,
    cancelled: bool,
    result: Result<mover::sender::SendReport>,
    when: (i64, Duration),
) {
    let (source_time, took) = when;
    let shutdown = node.shutting_down();
    let (attempt, rp) = match &result {
        Ok(rep) => {
            // Every session's files and bytes (a resumed job's earlier sessions too).
            node.metrics.job_done(
                id,
                carried.bytes.load(Ordering::Relaxed),
                carried.files.load(Ordering::Relaxed),
                took,
                true,
            );
            let msg = format!(
                "completed: {} files, {} bytes sent in {:.1} s",
                rep.files, rep.bytes, rep.seconds
            );
            (
                Attempt {
                    at_ns: node.clock.now_ns(),
                    ok: true,
                    message: msg,
                },
                Some(source_time),
            )
        }
        Err(e) => {
            node.metrics.job_done(
                id,
                carried.bytes.load(Ordering::Relaxed),
                carried.files.load(Ordering::Relaxed),
                took,
                false,
            );
            let msg = if shutdown {
                "interrupted by daemon shutdown; resumes when it starts again".to_string()
            } else if cancelled {
                "aborted".to_string()
            } else {
                e.to_string()
            };
            (
                Attempt {
                    at_ns: node.clock.now_ns(),
                    ok: false,
                    message: msg,
                },
                None,
            )
        }
    };
    tracing::info!(%id, ok = attempt.ok, "job ended: {}", attempt.message);
    let attempt_failed = !attempt.ok;
    // A stop (abort, delete, shutdown) is the operator's or the daemon's doing, not a failure
    // to notice.
    let failure = (attempt_failed && !shutdown && !cancelled).then(|| attempt.message.clone());
    let mut failed_before = false;
    let res = node.modify(id, Role::Source, |x| {
        failed_before = x.last_attempt.as_ref().is_some_and(|a| !a.ok);
        x.last_attempt = Some(attempt);
        if rp.is_some() {
            x.recovery_point_ns = rp;
        }
        // A job stopped by shutdown stays marked running so the next start resumes it; one
        // that completed meanwhile does not run again.
        x.job_running = shutdown && !x.ended && attempt_failed;
    });
    if let Err(e) = res {
        tracing::error!(%id, "recording the job's end: {e}");
    }
    let about = Some((id, Role::Source));
    match failure {
        Some(why) => node.event(EventKind::JobFailed, about, format!("job failed: {why}")),
        None if rp.is_some() && failed_before => node.event(
            EventKind::JobRecovered,
            about,
            "a job committed a recovery point after the previous job failed",
        ),
        None => {}
    }
}

/// Tells every running job to stop at its next chunk boundary.
pub(crate) fn cancel_all(node: &Node) {
    for j in lock(&node.jobs).values() {
        j.progress.control.cancel();
    }
}

/// Stops every running job at a chunk boundary and waits (bounded) for their threads to
/// record it.
pub async fn stop_all(node: &Node, grace: Duration) {
    cancel_all(node);
    let all_done = || lock(&node.jobs).values().all(Job::finished);
    // Past the grace the jobs are left as they are: the caller goes on regardless.
    let _ = tokio::time::timeout(grace, until(all_done)).await;
}

/// Stops the relationship's running job at its next chunk boundary; what says when it has
/// (`None`: no job there).
pub(crate) fn cancel_job(node: &Node, id: &RelationshipId) -> Option<Arc<AtomicBool>> {
    lock(&node.jobs).get(id).map(|j| {
        j.progress.control.cancel();
        j.done.clone()
    })
}

/// "Abort": stops the running job, and drops a queued "replicate now" and the resumption of a
/// job a restart interrupted. `Ok(true)` if a job is stopping (wait for it), `Ok(false)` if
/// only something that would have started one was dropped.
pub(crate) fn abort(node: &Node, id: &RelationshipId) -> Result<bool> {
    let queued = lock(&node.wanted).remove(id);
    let jobs = lock(&node.jobs);
    if jobs.get(id).is_some_and(|j| !j.finished()) {
        drop(jobs);
        cancel_job(node, id);
        return Ok(true);
    }
    // A job the daemon was stopped in the middle of is still marked running: the scheduler
    // resumes it as soon as it may (after a blackout window, say). Dropped here under the jobs
    // lock, under which the scheduler claims jobs, so this is not a job starting right now.
    let resuming = node.get(id, Role::Source)?.job_running;
    if resuming {
        node.modify(id, Role::Source, |x| x.job_running = false)?;
    }
    if queued || resuming {
        return Ok(false);
    }
    Err(Error::Conflict(format!(
        "relationship {id} has no running, queued or interrupted job"
    )))
}

/// Whether "replicate now" may be asked of `r` at all: authorized and not ended.
pub(crate) fn may_replicate(r: &Relationship) -> Result<()> {
    if r.ended {
        return Err(Error::Conflict(format!(
            "relationship {} has ended (deleted on the target)",
            r.id
        )));
    }
    if !r.authorized {
        return Err(Error::Conflict(format!(
            "relationship {} is awaiting authorization on the target",
            r.id
        )));
    }
    Ok(())
}

/// Queues "replicate now" for the scheduler's next pass, unless a blackout window is open.
/// While a job runs, the request queues one more job after it (it picks up what changed since
/// that job's point in time). An accepted request survives the daemon: with no job running it
/// is recorded as a job owed (`job_running`, what a restart resumes), so a daemon killed before
/// the scheduler's next pass still runs it when it comes back.
pub(crate) fn replicate_now(node: &Node, r: &Relationship) -> Result<()> {
    if let Some(c) = node.cluster.as_ref().filter(|c| c.drained()) {
        return Err(Error::Conflict(format!(
            "node {} is drained: it starts no job until `mover node undrain {}`",
            c.name(),
            c.name()
        )));
    }
    let now = node.clock.now();
    if blackout::in_blackout(&r.spec.blackout_windows, now) {
        let until = blackout::next_change_any(&r.spec.blackout_windows, now)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        return Err(Error::Conflict(format!(
            "relationship {} is in a blackout window (until {until}); no job starts inside one",
            r.id
        )));
    }
    lock(&node.wanted).insert(r.id.clone());
    let running = lock(&node.jobs).get(&r.id).is_some_and(|j| !j.finished());
    if !running && !r.job_running {
        node.modify(&r.id, Role::Source, |x| x.job_running = true)?;
    }
    Ok(())
}

/// Takes what the target said when asked directly (before "replicate now"): it may have
/// authorized the relationship since the scheduler last asked.
pub(crate) fn learned(
    node: &Node,
    r: Relationship,
    answer: Result<PeerAnswer>,
) -> Result<Relationship> {
    match answer {
        Ok(PeerAnswer::State {
            authorized: true,
            ended,
            ..
        }) => node.modify(&r.id, Role::Source, |x| {
            x.authorized = true;
            x.ended = x.ended || ended;
        }),
        _ => Ok(r),
    }
}

/// What a reconnect found: the last recovery point of each side, and the target's first
/// difference from its own (what the next job reverts).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Reconnected {
    pub relationship: super::view::View,
    pub source_recovery_point: Option<String>,
    pub target_recovery_point: Option<String>,
    /// Both sides recorded the same last recovery point: the common point the target
    /// returns to. Otherwise the next job compares every entry of the target all the same.
    pub common: bool,
    pub target_difference: Option<String>,
}

/// `mover relationship reconnect`: after the target was made writable (failover), replicate
/// again. The target makes its directory read-only again and checks it against its last
/// recovery point; the job that starts now sends only what differs and reverts what was
/// written on the target meanwhile.
pub(crate) async fn reconnect(node: &Node, id: &RelationshipId) -> Result<Reconnected> {
    let r = node.get(id, Role::Source)?;
    if !r.ended || !r.authorized {
        return Err(Error::Conflict(format!(
            "relationship {id} has not ended; reconnect is for a relationship whose target was made writable"
        )));
    }
    let since = node.clock.now_ns();
    let req = PeerRequest::Reconnect {
        id: id.clone(),
        recovery_point_ns: r.recovery_point_ns,
    };
    let (target_rp, difference, epoch) = match call(node, &r, &req).await? {
        PeerAnswer::Reconnected {
            recovery_point_ns,
            difference,
            epoch,
        } => (recovery_point_ns, difference, epoch),
        other => return Err(refused(&r, other)),
    };
    lock(&node.reconnecting).insert(id.clone(), since);
    let r = node.modify(id, Role::Source, |x| {
        x.ended = false;
        x.peer_unreachable = false;
        x.job_running = true;
        x.epoch = epoch;
    })?;
    lock(&node.wanted).insert(id.clone());
    tracing::info!(%id, ?difference, "reconnected: the next job reverts the target to this source's state");
    let show = |ns: Option<i64>| ns.map(crate::clock::rfc3339);
    Ok(Reconnected {
        source_recovery_point: show(r.recovery_point_ns),
        target_recovery_point: show(target_rp),
        common: r.recovery_point_ns.is_some() && r.recovery_point_ns == target_rp,
        target_difference: difference,
        relationship: super::view::view(node, r),
    })
}

/// Applies an operator's edit; the caller tells the target (`PeerRequest::Update`).
pub(crate) fn edit(
    node: &Node,
    id: &RelationshipId,
    e: &crate::model::Edit,
) -> Result<Relationship> {
    let r = node.get(id, Role::Source)?;
    let spec = r.spec.edited(e)?;
    if let Some(t) = e.transport {
        check_transport(t)?;
    }
    if let Some(pin) = &r.pinned {
        let src = crate::pinned::open(pin, "source path")?;
        if let Some(choice) = e.snapshot {
            check_snapshot(choice, &src.proc_path())?;
        }
        super::snapshots::check_spec(node, &spec, src.path())?;
    }
    let r = node.modify(id, Role::Source, |x| x.spec = spec.clone())?;
    if let Some(j) = lock(&node.jobs).get(id) {
        j.progress.control.set_rate(spec.bandwidth_limit);
    }
    Ok(r)
}

/// A new source relationship `id`, checked and pinned, not yet stored: the caller proposes it
/// to the target (`PeerRequest::Propose`) and stores it with `proposed`.
pub(crate) fn new_relationship(
    node: &Node,
    id: RelationshipId,
    spec: crate::model::Spec,
) -> Result<Relationship> {
    spec.validate()?;
    // Pinned now: every job opens this directory again without following symlinks and must
    // find this one (see `paths`), so what is checked here is what is replicated.
    let src = crate::pinned::pin(std::path::Path::new(&spec.source_path), "source path").map_err(
        |e| {
            Error::Invalid(format!(
                "{e} (it must be an existing directory on this node)"
            ))
        },
    )?;
    super::paths::check_source(node, src.path())?;
    check_snapshot(spec.snapshot, src.path())?;
    check_transport(spec.transport)?;
    super::snapshots::check_spec(node, &spec, src.path())?;
    let mut r = Relationship::new(id, Role::Source, spec, node.clock.now_ns(), None);
    r.pinned = Some(src.pin().clone());
    Ok(r)
}

/// `rdma` is refused where this node cannot use it (built without the feature, or no active
/// RDMA port), when it is asked for rather than at every job.
fn check_transport(t: crate::model::Transport) -> Result<()> {
    mover::transport::select::RdmaPolicy::new(t.choice(), None)
        .check()
        .map_err(|e| Error::Invalid(format!("transport {}: {e}", t.name())))
}

/// The data plane's provider for a relationship's choice (None: auto, decided per job).
fn provider(c: SnapshotChoice) -> Option<mover::snapshot::Provider> {
    match c {
        SnapshotChoice::Auto => None,
        SnapshotChoice::Btrfs => Some(mover::snapshot::Provider::Btrfs),
        SnapshotChoice::Reflink => Some(mover::snapshot::Provider::Reflink),
        SnapshotChoice::Plain => Some(mover::snapshot::Provider::Plain),
    }
}

/// Refuses a provider the source's file system cannot serve, naming the file system and what
/// it lacks.
fn check_snapshot(c: SnapshotChoice, src: &std::path::Path) -> Result<()> {
    match provider(c).and_then(|p| mover::snapshot::unsupported(src, p)) {
        Some(why) => Err(Error::Invalid(format!("--snapshot {}: {why}", c.name()))),
        None => Ok(()),
    }
}

/// The proposal of `r` to its target: what the operator's create sends.
pub(crate) fn proposal(r: &Relationship) -> PeerRequest {
    PeerRequest::Propose {
        id: r.id.clone(),
        spec: r.spec.clone(),
        software: mover::software_version().to_string(),
    }
}

/// The target took (or refused) the proposal of `r`; `fp` is the certificate it presented,
/// pinned from now on.
pub(crate) fn proposed(
    node: &Node,
    mut r: Relationship,
    answer: PeerAnswer,
    fp: Fingerprint,
) -> Result<Relationship> {
    if !matches!(answer, PeerAnswer::Ok) {
        return Err(refused(&r, answer));
    }
    r.peer_fingerprint = Some(fp.0);
    node.store().insert(&r)?;
    Ok(r)
}

/// First step of deleting a source relationship: no job starts from now on (recorded ended; a
/// queued "replicate now" is dropped). Returns the relationship as it was, for
/// `delete_abandoned` if its job does not stop.
pub(crate) fn delete_begin(node: &Node, id: &RelationshipId) -> Result<Relationship> {
    lock(&node.wanted).remove(id);
    // Ended first, so the scheduler starts no job while the target is asked to delete.
    let r = node.get(id, Role::Source)?;
    node.modify(id, Role::Source, |x| x.ended = true)?;
    Ok(r)
}

/// The job did not stop: the relationship goes back to how it was before the delete.
pub(crate) fn delete_abandoned(node: &Node, was: &Relationship) {
    if let Err(e) = node.modify(&was.id, Role::Source, |x| x.ended = was.ended) {
        tracing::warn!(id = %was.id, "putting back the relationship after a failed delete: {e}");
    }
}

/// Last step of deleting a source relationship (its job stopped, the target was asked):
/// forgets it and its state dir.
pub(crate) fn delete_end(node: &Node, id: &RelationshipId) -> Result<()> {
    lock(&node.jobs).remove(id);
    super::snapshots::forget(node, id);
    node.forget(id, Role::Source)?;
    drop_state(node, id);
    node.event(
        EventKind::RelationshipDeleted,
        Some((id, Role::Source)),
        "deleted on the source",
    );
    Ok(())
}

/// After a source row this release could not read was forgotten: what this process kept of
/// it goes, as with a deleted one (`delete_begin` and `delete_end`).
pub(crate) fn forgotten(node: &Node, id: &RelationshipId) {
    lock(&node.wanted).remove(id);
    lock(&node.jobs).remove(id);
    drop_state(node, id);
}

/// A source relationship gone from the store: its hot files and its state dir (the sender's
/// last entry list) go.
fn drop_state(node: &Node, id: &RelationshipId) {
    lock(&node.hot_files).remove(id);
    // A manifest still being written would make the directory again.
    if let Err(e) = settle_manifest(node, id, true) {
        tracing::warn!(%id, "the data container's manifest of a relationship gone: {e}");
    }
    // Nothing else uses it; one left behind is only disk space.
    let _ = std::fs::remove_dir_all(node.state_dir(id));
}

/// Aborts a relationship's running job and waits (bounded) until it has stopped.
pub async fn stop_job(node: &Node, id: &RelationshipId, grace: Duration) -> bool {
    let Some(done) = cancel_job(node, id) else {
        return true;
    };
    let finished = || done.load(Ordering::SeqCst);
    // Timing out is answered below: the job did not stop.
    let _ = tokio::time::timeout(grace, until(&finished)).await;
    finished()
}

/// Resolves once `done` holds, looking every 50 ms (a job thread says nothing when it ends).
async fn until(done: impl Fn() -> bool) {
    while !done() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use crate::model::tests::spec;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// An authorized source relationship with these blackout windows.
    fn relationship(windows: serde_json::Value) -> Relationship {
        let mut s = spec();
        s.blackout_windows = serde_json::from_value(windows).unwrap();
        let mut r = Relationship::new(RelationshipId::new_random(), Role::Source, s, 0, None);
        r.authorized = true;
        r
    }

    /// Scheduler ticks from now until an idle relationship's next job starts (at most `limit`
    /// of simulated time): when it started, on the wall clock.
    fn first_start(
        clock: &SimClock,
        t: &Timing,
        r: &Relationship,
        interval: Duration,
        limit: Duration,
    ) -> Option<DateTime<Utc>> {
        let end = clock.instant() + limit;
        while clock.instant() < end {
            let now = Now::read(clock);
            if t.job_starts(r, false, Due::interval(interval), false, now) {
                return Some(now.wall);
            }
            clock.advance(TICK);
        }
        None
    }

    #[test]
    fn a_stored_relationship_this_release_cannot_read_stops_its_own_jobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let (node, _clock) = super::super::test_node(dir.path());
        let (good, bad) = (
            relationship(serde_json::json!([])),
            relationship(serde_json::json!([])),
        );
        node.store().insert(&bad).unwrap();
        node.store().insert(&good).unwrap();
        node.store()
            .set_raw(bad.id.as_str(), "spec = '{\"from\": \"a later release\"}'");
        // What must see every relationship fails, naming the row.
        let e = node
            .store()
            .list(Some(Role::Source))
            .unwrap_err()
            .to_string();
        assert!(e.contains(bad.id.as_str()) && e.contains("spec"), "{e}");
        let listed = node.store().list_readable(None).unwrap();
        assert_eq!(listed.rows.len(), 1);
        assert_eq!(listed.unreadable.len(), 1);
        assert_eq!(listed.unreadable[0].id, bad.id.as_str());
        // The scheduler runs the other one: its first job starts at once.
        let mut s = Scheduler::new(node.clock.instant());
        let tasks = s.pass(&node);
        let runs: Vec<&RelationshipId> = tasks
            .iter()
            .filter_map(|t| match t {
                Task::Run(c) => Some(&c.id),
                _ => None,
            })
            .collect();
        assert_eq!(runs, [&good.id]);
        assert!(s.unreadable.contains(bad.id.as_str()));
        for t in tasks {
            if let Task::Run(c) = t {
                c.progress.control.cancel();
            }
        }
        // A target's row the same, beside a readable target: the daemon's start goes on,
        // and the other target's directory passes its check at every use, recording no path
        // problem; a new protection (authorizing) is refused while a row is unreadable.
        let mut t = Relationship::new(RelationshipId::new_random(), Role::Target, spec(), 0, None);
        t.authorized = true;
        node.store().insert(&t).unwrap();
        node.store()
            .set_raw(t.id.as_str(), "created_ns = 'not a number'");
        let mut ok = Relationship::new(RelationshipId::new_random(), Role::Target, spec(), 1, None);
        let dir = dir.path().join("target");
        std::fs::create_dir(&dir).unwrap();
        ok.spec.target_path = dir.display().to_string();
        ok.authorized = true;
        node.store().insert(&ok).unwrap();
        let listed = node.store().list_readable(Some(Role::Target)).unwrap();
        assert_eq!(listed.rows.len(), 1);
        let e = listed.unreadable[0].error.to_string();
        assert!(e.contains(t.id.as_str()) && e.contains("row"), "{e}");
        super::super::target::restore(&node).unwrap();
        super::super::silence::check(&node);
        let checked = super::super::paths::target_dir(&node, &ok);
        assert!(checked.is_ok(), "{:?}", checked.err());
        assert_eq!(node.get(&ok.id, Role::Target).unwrap().path_error, None);
        let refused = super::super::paths::check_target(&node, &ok, &dir);
        assert!(refused.is_err_and(|e| e.to_string().contains(t.id.as_str())));
        // The upgrade check lists both rows as alerts instead of failing.
        let to = mover::software_version().parse().unwrap();
        let facts = super::super::upgrade::facts(&node, to, true, dir.as_path()).unwrap();
        for id in [&bad.id, &t.id] {
            let alert = (id.to_string(), "unreadable".to_string());
            assert!(facts.alerts.contains(&alert), "{:?}", facts.alerts);
        }
    }

    #[test]
    fn abort_drops_the_resumption_of_a_job_a_stop_of_the_daemon_interrupted() {
        // Found by the simulation (seed in sim::tests): after a restart inside a blackout
        // window, the job still marked running waits for the window to end; an abort was
        // refused ("nothing to abort") and the job then resumed anyway.
        let dir = tempfile::tempdir().unwrap();
        let (node, _clock) = super::super::test_node(dir.path());
        let mut r = relationship(serde_json::json!([]));
        r.job_running = true;
        node.store().insert(&r).unwrap();
        assert!(!abort(&node, &r.id).unwrap(), "no job to wait for");
        assert!(!node.get(&r.id, Role::Source).unwrap().job_running);
        let again = abort(&node, &r.id);
        assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
        // A queued "replicate now" is dropped the same way; a running job is stopped.
        lock(&node.wanted).insert(r.id.clone());
        assert!(!abort(&node, &r.id).unwrap());
        assert!(lock(&node.wanted).is_empty());
        let c = claim_job(&node, &node.get(&r.id, Role::Source).unwrap()).unwrap();
        assert!(abort(&node, &r.id).unwrap(), "a running job to wait for");
        assert!(c.progress.control.is_cancelled());
    }

    #[test]
    fn a_replicate_now_accepted_before_the_daemon_dies_still_runs_after_its_restart() {
        // Found by the fault soak (seed 87): the source daemon was SIGKILLed right after it
        // accepted "replicate now" and before its scheduler's next pass; the request lived only
        // in memory, so after the restart no job ran.
        let dir = tempfile::tempdir().unwrap();
        let (node, clock) = super::super::test_node(dir.path());
        let mut r = relationship(serde_json::json!([]));
        r.spec.enabled = false;
        node.store().insert(&r).unwrap();
        replicate_now(&node, &r).unwrap();
        drop(node);
        // The restarted daemon knows only what its store says.
        let (again, _) = super::super::test_node(dir.path());
        let r = again.get(&r.id, Role::Source).unwrap();
        assert!(r.job_running, "the accepted request is recorded");
        let t = Timing::default();
        let interval = Duration::from_secs(3600);
        assert!(
            first_start(&clock, &t, &r, interval, Duration::from_secs(1)).is_some(),
            "the restarted scheduler runs the job at once"
        );
    }

    #[test]
    fn a_job_is_due_exactly_the_continuous_interval_after_the_last_one_ended() {
        let clock = SimClock::new(at("2025-06-02T12:00:00Z"));
        let r = relationship(serde_json::json!([]));
        let interval = Duration::from_secs(10);
        let mut t = Timing::default();
        assert!(
            t.job_starts(&r, false, Due::interval(interval), false, Now::read(&clock)),
            "a relationship that never ran starts at once"
        );
        t.job_ended(false, clock.instant());
        clock.advance(interval - Duration::from_nanos(1));
        assert!(!t.job_starts(&r, false, Due::interval(interval), false, Now::read(&clock)));
        clock.advance(Duration::from_nanos(1));
        assert!(t.job_starts(&r, false, Due::interval(interval), false, Now::read(&clock)));
    }

    #[test]
    fn with_a_watch_a_job_starts_when_changes_settled_or_after_the_rescan_interval() {
        let clock = SimClock::new(at("2025-06-02T12:00:00Z"));
        let r = relationship(serde_json::json!([]));
        let (interval, rescan) = (Duration::from_secs(10), Duration::from_secs(3600));
        let due = |ready| Due {
            seen: Seen::Events { ready },
            interval,
            rescan,
        };
        let mut t = Timing::default();
        t.job_ended(false, clock.instant());
        clock.advance(interval * 2);
        assert!(
            !t.job_starts(&r, false, due(false), false, Now::read(&clock)),
            "no change, no job: the interval does not apply under a watch"
        );
        assert!(t.job_starts(&r, false, due(true), false, Now::read(&clock)));
        t.job_ended(false, clock.instant());
        assert!(
            t.job_starts(&r, false, due(true), false, Now::read(&clock)),
            "changes settled during a job start the next one at once"
        );
        t.job_ended(true, clock.instant());
        assert!(!t.job_starts(&r, false, due(true), false, Now::read(&clock)));
        clock.advance(FAILED_JOB_PAUSE);
        assert!(t.job_starts(&r, false, due(true), false, Now::read(&clock)));
        t.job_ended(false, clock.instant());
        clock.advance(rescan);
        assert!(
            t.job_starts(&r, false, due(false), false, Now::read(&clock)),
            "the rescan interval's full walk"
        );
    }

    #[test]
    fn after_a_failed_job_the_next_waits_for_the_failed_job_pause() {
        let clock = SimClock::new(at("2025-06-02T12:00:00Z"));
        let r = relationship(serde_json::json!([]));
        let interval = Duration::from_secs(1);
        let mut t = Timing::default();
        t.job_ended(true, clock.instant());
        let started = first_start(&clock, &t, &r, interval, Duration::from_secs(60));
        assert_eq!(started, Some(at("2025-06-02T12:00:05Z")));
    }

    #[test]
    fn a_relationship_stopped_for_its_source_directory_starts_no_job() {
        let clock = SimClock::new(at("2025-06-02T12:00:00Z"));
        let mut r = relationship(serde_json::json!([]));
        r.job_running = true;
        r.path_error = Some("a symlink now stands in its path".into());
        let (interval, now) = (Duration::from_secs(10), Now::read(&clock));
        assert!(!Timing::default().job_starts(&r, true, Due::interval(interval), false, now));
        r.path_error = None;
        assert!(Timing::default().job_starts(&r, false, Due::interval(interval), false, now));
    }

    #[test]
    fn disabled_relationships_start_only_when_asked_or_resuming() {
        let clock = SimClock::new(at("2025-06-02T12:00:00Z"));
        let mut r = relationship(serde_json::json!([]));
        r.spec.enabled = false;
        let t = Timing::default();
        let (interval, now) = (Duration::from_secs(10), Now::read(&clock));
        assert!(!t.job_starts(&r, false, Due::interval(interval), false, now));
        assert!(
            t.job_starts(&r, true, Due::interval(interval), false, now),
            "replicate now"
        );
        r.job_running = true;
        assert!(
            t.job_starts(&r, false, Due::interval(interval), false, now),
            "a job the daemon was stopped in resumes"
        );
    }

    #[test]
    fn a_blackout_window_is_an_event_when_it_opens_and_when_it_closes_not_at_every_pass() {
        let dir = tempfile::tempdir().unwrap();
        let (node, _clock) = super::super::test_node(dir.path());
        let r = relationship(serde_json::json!([
            {"days": ["wed"], "start": "09:00", "end": "10:30", "timezone": "UTC"}
        ]));
        let mut t = Timing::default();
        for now in [
            "2025-06-04T08:59:00Z",
            "2025-06-04T09:00:00Z",
            "2025-06-04T09:30:00Z",
            "2025-06-04T10:30:00Z",
            "2025-06-04T11:00:00Z",
        ] {
            t.blackout_transition(&node, &r, at(now));
        }
        let all = crate::store::Visible {
            source: true,
            target: true,
        };
        let seen = node.store().events(None, 10, all).unwrap();
        let kinds: Vec<EventKind> = seen.iter().map(|e| e.what.kind).collect();
        assert_eq!(
            kinds,
            vec![EventKind::BlackoutEntered, EventKind::BlackoutLeft]
        );
        assert!(
            seen[0].what.message.contains("until 2025-06-04T10:30:00"),
            "{}",
            seen[0].what.message
        );
        assert_eq!(seen[0].what.relationship.as_ref(), Some(&r.id));
    }

    #[test]
    fn no_job_starts_inside_a_blackout_window_and_the_next_starts_at_its_end() {
        let r = relationship(serde_json::json!([
            {"days": ["wed"], "start": "09:00", "end": "10:30", "timezone": "UTC"}
        ]));
        let clock = SimClock::new(at("2025-06-04T08:59:55Z"));
        let mut t = Timing::default();
        t.job_ended(false, clock.instant());
        let interval = Duration::from_secs(10);
        let started = first_start(&clock, &t, &r, interval, Duration::from_secs(3 * 3600));
        assert_eq!(started, Some(at("2025-06-04T10:30:00Z")));
        // Not even "replicate now" or a resume starts a job inside it.
        let mut resuming = r.clone();
        resuming.job_running = true;
        let inside = Now::read(&SimClock::new(at("2025-06-04T09:30:00Z")));
        assert!(!t.job_starts(&resuming, true, Due::interval(interval), false, inside));
    }

    #[test]
    fn across_daylight_saving_changes_the_next_job_starts_when_the_local_window_ends() {
        // Europe/Berlin, 01:00-04:00 local on Sundays. On 30 March 2025 the clocks skip from
        // 02:00 to 03:00, so the window is two real hours (00:00-02:00 UTC); on 26 October
        // they go back from 03:00 to 02:00, so it is four (23:00 the day before to 03:00 UTC).
        let r = relationship(serde_json::json!([
            {"days": ["sun"], "start": "01:00", "end": "04:00", "timezone": "Europe/Berlin"}
        ]));
        let interval = Duration::from_secs(10);
        for (begin, end) in [
            ("2025-03-30T00:00:00Z", "2025-03-30T02:00:00Z"),
            ("2025-10-25T23:00:00Z", "2025-10-26T03:00:00Z"),
        ] {
            // The last job ended just before the window; the next is due inside it.
            let clock = SimClock::new(at(begin) - chrono::TimeDelta::seconds(2));
            let mut t = Timing::default();
            t.job_ended(false, clock.instant());
            let started = first_start(&clock, &t, &r, interval, Duration::from_secs(6 * 3600));
            assert_eq!(started, Some(at(end)), "window from {begin}");
            assert_eq!(
                blackout::next_change_any(&r.spec.blackout_windows, at(begin)),
                Some(at(end))
            );
        }
    }

    #[test]
    fn a_pause_longer_than_max_pause_in_session_suspends_the_session() {
        // A one-minute window over a running job: paused from its first tick, suspended once
        // the pause is longer than 40 s, running again when it ends.
        let r = relationship(serde_json::json!([
            {"days": ["mon"], "start": "12:00", "end": "12:01", "timezone": "UTC"}
        ]));
        let max = Duration::from_secs(40);
        let clock = SimClock::new(at("2025-06-02T11:59:00Z"));
        let mut t = Timing::default();
        let (mut paused_at, mut suspended_at, mut resumed_at) = (None, None, None);
        for _ in 0..(3 * 60 * 5) {
            let now = Now::read(&clock);
            let p = t.running(&r, max, now);
            assert!(p.paused || !p.suspend, "only a paused job is suspended");
            if p.paused && paused_at.is_none() {
                paused_at = Some(now.wall);
            }
            if p.suspend && suspended_at.is_none() {
                suspended_at = Some(now.wall);
            }
            if !p.paused && paused_at.is_some() && resumed_at.is_none() {
                resumed_at = Some(now.wall);
            }
            clock.advance(TICK);
        }
        assert_eq!(paused_at, Some(at("2025-06-02T12:00:00Z")));
        assert_eq!(
            suspended_at,
            Some(at("2025-06-02T12:00:40.200Z")),
            "the first tick after 40 s of pause"
        );
        assert_eq!(resumed_at, Some(at("2025-06-02T12:01:00Z")));
        assert_eq!(t.paused_since, None);
    }

    #[test]
    fn a_short_pause_keeps_the_session_and_each_window_counts_its_own_pause() {
        let r = relationship(serde_json::json!([
            {"days": ["mon"], "start": "12:00", "end": "12:01", "timezone": "UTC"},
            {"days": ["mon"], "start": "12:02", "end": "12:03", "timezone": "UTC"}
        ]));
        let max = Duration::from_secs(90);
        let clock = SimClock::new(at("2025-06-02T12:00:00Z"));
        let mut t = Timing::default();
        for _ in 0..(4 * 60 * 5) {
            assert!(!t.running(&r, max, Now::read(&clock)).suspend);
            clock.advance(TICK);
        }
    }

    #[test]
    fn polls_are_every_second_until_authorized_then_every_three() {
        let clock = SimClock::new(at("2025-06-02T12:00:00Z"));
        let mut t = Timing::default();
        assert!(t.poll_due(false, clock.instant()), "first poll at once");
        t.last_poll = Some(clock.instant());
        clock.advance(Duration::from_millis(999));
        assert!(!t.poll_due(false, clock.instant()));
        clock.advance(Duration::from_millis(1));
        assert!(t.poll_due(false, clock.instant()));
        assert!(!t.poll_due(true, clock.instant()));
        clock.advance(Duration::from_secs(2));
        assert!(t.poll_due(true, clock.instant()));
    }

    #[test]
    fn failed_sessions_are_retried_with_doubling_waits_until_attempts_run_out() {
        let mut b = Backoff::new();
        let waits: Vec<Option<Duration>> = (1..=JOB_ATTEMPTS)
            .map(|attempt| b.after_failure(attempt, false, true))
            .collect();
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(waits, [ms(500), ms(1000), ms(2000), ms(4000), None]);
        // The waits stop growing at RETRY_BACKOFF_MAX.
        let mut b = Backoff::new();
        let longest = (0..10)
            .filter_map(|_| b.after_failure(1, false, true))
            .last();
        assert_eq!(longest, Some(RETRY_BACKOFF_MAX));
        // A stopped job or an error a new session cannot fix is not retried.
        assert_eq!(Backoff::new().after_failure(1, true, true), None);
        assert_eq!(Backoff::new().after_failure(1, false, false), None);
    }

    #[test]
    fn throughput_is_measured_over_the_last_two_seconds_and_is_zero_while_paused() {
        let clock = SimClock::new(at("2025-06-02T12:00:00Z"));
        let progress = Arc::new(Progress::default());
        progress.bytes_total.store(10_000, Ordering::Relaxed);
        progress.files_total.store(1, Ordering::Relaxed);
        let now = clock.instant();
        let job = Job {
            progress: progress.clone(),
            carried: Arc::default(),
            started: now,
            done: Arc::default(),
            rate: std::sync::Mutex::new((now, 0, 0.0)),
        };
        clock.advance(Duration::from_secs(1));
        progress.bytes.store(1_000, Ordering::Relaxed);
        let v = job.view(clock.instant());
        assert_eq!((v.run_seconds, v.throughput_bytes_per_sec), (1.0, 1_000.0));
        clock.advance(Duration::from_secs(1));
        progress.bytes.store(4_000, Ordering::Relaxed);
        assert_eq!(job.view(clock.instant()).throughput_bytes_per_sec, 2_000.0);
        // A burst within the window does not show until the window is over.
        clock.advance(Duration::from_secs(1));
        progress.bytes.store(9_000, Ordering::Relaxed);
        assert_eq!(job.view(clock.instant()).throughput_bytes_per_sec, 2_000.0);
        clock.advance(Duration::from_secs(1));
        assert_eq!(job.view(clock.instant()).throughput_bytes_per_sec, 2_500.0);
        progress.control.set_paused(true);
        let v = job.view(clock.instant());
        assert_eq!((v.paused, v.throughput_bytes_per_sec), (true, 0.0));
    }
}
