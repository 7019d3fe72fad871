//! Source side: the scheduler decides when a relationship's job starts, pauses (blackout
//! window) or stops (abort, delete, shutdown); each job runs the data plane's sender on its own
//! threads, one session per attempt, each attempt with a fresh ticket from the target.

use super::{lock, now_ns, Node};
use crate::blackout;
use crate::model::{Attempt, Relationship, RelationshipId, Role};
use crate::peer::{JobView, PeerAnswer, PeerRequest};
use crate::tls::Fingerprint;
use crate::{Error, Result};
use mover::units::SessionId;
use mover::Progress;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Scheduler tick: bounds how late a pause, resume or start happens.
const TICK: Duration = Duration::from_millis(200);
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

    pub fn view(&self) -> JobView {
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
        let mut v = JobView::from_counts(
            p.control.is_paused(),
            self.started.elapsed().as_secs_f64(),
            files,
            bytes,
        );
        if scanning {
            // Totals of this session are not known yet: no percentages to claim.
            v.scanning = true;
            (v.percent_files, v.percent_bytes, v.percent) = (0.0, 0.0, 0.0);
        }
        let mut rate = lock(&self.rate);
        let dt = rate.0.elapsed();
        if dt >= RATE_WINDOW {
            let moved = v.bytes_done.saturating_sub(rate.1);
            *rate = (
                Instant::now(),
                v.bytes_done,
                moved as f64 / dt.as_secs_f64(),
            );
        }
        v.throughput_bytes_per_sec = if v.paused {
            0.0
        } else if self.started.elapsed() < RATE_WINDOW {
            v.throughput_bytes_per_sec
        } else {
            rate.2
        };
        v
    }
}

/// Resolves the target's peer address.
pub async fn peer_addr(r: &Relationship) -> Result<SocketAddr> {
    let (host, port) = (r.spec.target_address.as_str(), r.spec.target_port);
    let mut it = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::Peer {
            peer: format!("{host}:{port}"),
            message: format!("cannot resolve: {e}"),
        })?;
    it.next().ok_or_else(|| Error::Peer {
        peer: format!("{host}:{port}"),
        message: "no address".into(),
    })
}

/// One request to the relationship's target, with its pinned certificate.
pub async fn call(node: &Node, r: &Relationship, req: &PeerRequest) -> Result<PeerAnswer> {
    let addr = peer_addr(r).await?;
    let pin = r
        .peer_fingerprint
        .as_deref()
        .map(|f| Fingerprint(f.to_string()));
    let (a, _) = crate::peer_wire::call(addr, &node.identity, pin.as_ref(), req).await?;
    Ok(a)
}

pub fn refused(r: &Relationship, a: PeerAnswer) -> Error {
    let message = match a {
        PeerAnswer::Refused { message } => message,
        PeerAnswer::NotFound => format!("the target does not know relationship {}", r.id),
        other => format!("unexpected answer {other:?}"),
    };
    Error::Peer {
        peer: format!("{}:{}", r.spec.target_address, r.spec.target_port),
        message,
    }
}

/// The scheduler: runs forever, one pass per tick over the source relationships.
pub async fn schedule(node: Arc<Node>) {
    let mut last_poll: std::collections::HashMap<RelationshipId, Instant> = Default::default();
    let mut last_end: std::collections::HashMap<RelationshipId, (Instant, bool)> =
        Default::default();
    let mut last_report = Instant::now();
    let polling: Arc<std::sync::Mutex<std::collections::HashSet<RelationshipId>>> =
        Default::default();
    let reporting: Arc<std::sync::Mutex<std::collections::HashSet<RelationshipId>>> =
        Default::default();
    // At most one progress report in flight per relationship: a slow target must not pile
    // them up. The final one (job ended) is sent even if a progress report is still out.
    let report_once = |node: &Arc<Node>, id: &RelationshipId, always: bool| {
        if lock(&reporting).insert(id.clone()) || always {
            let (node, id, reporting) = (node.clone(), id.clone(), reporting.clone());
            tokio::spawn(async move {
                report_progress(node, id.clone()).await;
                lock(&reporting).remove(&id);
            });
        }
    };
    loop {
        tokio::time::sleep(TICK).await;
        if node.shutting_down() {
            return;
        }
        let rels = match node.store().list(Some(Role::Source)) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("reading relationships: {e}");
                continue;
            }
        };
        // Forget deleted relationships.
        last_poll.retain(|id, _| rels.iter().any(|r| r.id == *id));
        last_end.retain(|id, _| rels.iter().any(|r| r.id == *id));
        let report = last_report.elapsed() >= REPORT_EVERY;
        if report {
            last_report = Instant::now();
        }
        for r in rels {
            if r.ended {
                continue;
            }
            let due_poll = if r.authorized {
                POLL_AUTHORIZED
            } else {
                POLL_UNAUTHORIZED
            };
            // One poll in flight per relationship: a slow target must not pile them up.
            if last_poll.get(&r.id).is_none_or(|t| t.elapsed() >= due_poll)
                && lock(&polling).insert(r.id.clone())
            {
                last_poll.insert(r.id.clone(), Instant::now());
                let (node, r, polling) = (node.clone(), r.clone(), polling.clone());
                tokio::spawn(async move {
                    let id = r.id.clone();
                    poll_target(node, r).await;
                    lock(&polling).remove(&id);
                });
            }
            if !r.authorized {
                continue;
            }
            let blackout = blackout::in_blackout(&r.spec.blackout_windows, chrono::Utc::now());
            let running = lock(&node.jobs)
                .get(&r.id)
                .map(|j| (j.progress.clone(), j.done.load(Ordering::SeqCst)));
            match running {
                Some((p, false)) => {
                    p.control.set_paused(blackout);
                    // A long window ends the session (config::DEFAULT_MAX_PAUSE_IN_SESSION).
                    if p.control
                        .paused_for()
                        .is_some_and(|d| d > node.opts.max_pause_in_session)
                    {
                        p.control.suspend();
                    }
                    if report {
                        report_once(&node, &r.id, false);
                    }
                }
                Some((_, true)) => {
                    let ok = lock(&node.jobs).remove(&r.id).is_some();
                    debug_assert!(ok);
                    let failed = node
                        .store()
                        .get(&r.id)
                        .is_ok_and(|r| r.last_attempt.is_some_and(|a| !a.ok));
                    last_end.insert(r.id.clone(), (Instant::now(), failed));
                    report_once(&node, &r.id, true);
                }
                None => {
                    let wanted = lock(&node.wanted).contains(&r.id);
                    let continuous = r.spec.enabled
                        && last_end.get(&r.id).is_none_or(|(t, failed)| {
                            t.elapsed()
                                >= if *failed {
                                    FAILED_JOB_PAUSE.max(node.opts.continuous_interval)
                                } else {
                                    node.opts.continuous_interval
                                }
                        });
                    // `job_running` still set: the daemon stopped mid-job; resume it now.
                    if !blackout && (wanted || continuous || r.job_running) {
                        lock(&node.wanted).remove(&r.id);
                        start_job(&node, &r);
                    }
                }
            }
        }
    }
}

/// Asks the target about the relationship: learns authorization, notices a target-side
/// delete (the relationship ends here too) or an unreachable target (disconnected).
async fn poll_target(node: Arc<Node>, r: Relationship) {
    let r = node.get(&r.id, Role::Source).unwrap_or(r);
    let source = source_state(&node, &r);
    let answer = call(
        &node,
        &r,
        &PeerRequest::State {
            id: r.id.clone(),
            source: Some(source),
        },
    )
    .await;
    let (authorized, ended, unreachable) = match answer {
        Ok(PeerAnswer::State { authorized, ended }) => (authorized, ended, false),
        Ok(PeerAnswer::NotFound) => (r.authorized, true, false),
        Ok(other) => {
            tracing::warn!(id = %r.id, "target refused a status request: {}", refused(&r, other));
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
        // meanwhile (a delete in progress) is never undone here.
        let res = node.modify(&r.id, |x| {
            x.authorized = x.authorized || authorized;
            x.ended = x.ended || ended;
            x.peer_unreachable = unreachable;
            if ended {
                x.job_running = false;
            }
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
        .map(|j| j.view());
    crate::peer::SourceState {
        spec: r.spec.clone(),
        running: job.is_some(),
        job,
        last_attempt: r.last_attempt.clone(),
        recovery_point_ns: r.recovery_point_ns,
    }
}

async fn report_progress(node: Arc<Node>, id: RelationshipId) {
    let Ok(r) = node.get(&id, Role::Source) else {
        return;
    };
    let s = source_state(&node, &r);
    let req = PeerRequest::Report {
        id: id.clone(),
        running: s.running,
        job: s.job,
        last_attempt: s.last_attempt,
        recovery_point_ns: s.recovery_point_ns,
    };
    match call(&node, &r, &req).await {
        Ok(PeerAnswer::Ok) => {}
        Ok(PeerAnswer::NotFound) => {
            if let Some(j) = lock(&node.jobs).get(&id) {
                j.progress.control.cancel();
            }
        }
        Ok(other) => tracing::debug!(%id, "progress report refused: {}", refused(&r, other)),
        Err(e) => tracing::debug!(%id, "progress report: {e}"),
    }
}

fn start_job(node: &Arc<Node>, r: &Relationship) {
    let progress = Arc::new(Progress::default());
    progress.control.set_rate(r.spec.bandwidth_limit);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let carried = Arc::new(Carried::default());
    let job = Job {
        progress: progress.clone(),
        carried: carried.clone(),
        started: Instant::now(),
        done: done.clone(),
        rate: std::sync::Mutex::new((Instant::now(), 0, 0.0)),
    };
    {
        // `r` was read at the start of the scheduler's pass. A delete marks the relationship
        // ended and then looks for its job under this lock: checking `ended` here, under the
        // same lock, means either the delete finds this job and stops it, or no job starts.
        let mut jobs = lock(&node.jobs);
        match node.get(&r.id, Role::Source) {
            Ok(now) if !now.ended && now.authorized => {}
            _ => return,
        }
        if jobs.contains_key(&r.id) {
            return;
        }
        jobs.insert(r.id.clone(), job);
    }
    if let Err(e) = node.modify(&r.id, |x| x.job_running = true) {
        tracing::error!(id = %r.id, "recording the job start: {e}");
    }
    tracing::info!(id = %r.id, source = %r.spec.source_path, "job started");
    let (n, id, rt) = (
        node.clone(),
        r.id.clone(),
        tokio::runtime::Handle::current(),
    );
    let spawned = std::thread::Builder::new()
        .name("mover-job".into())
        .spawn(move || {
            let node = n;
            let started = Instant::now();
            let source_time = now_ns();
            let result = run_job(&node, &rt, &id, &progress, &carried);
            carried.roll(&progress);
            finish_job(
                &node,
                &id,
                &carried,
                progress.control.is_cancelled(),
                result,
                (source_time, started.elapsed()),
            );
            done.store(true, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        tracing::error!("spawning a job thread: {e}");
        lock(&node.jobs).remove(&r.id);
    }
}

/// Sessions until one verifies, the job is stopped, or attempts run out.
fn run_job(
    node: &Node,
    rt: &tokio::runtime::Handle,
    id: &RelationshipId,
    progress: &Arc<Progress>,
    carried: &Carried,
) -> Result<mover::sender::SendReport> {
    let mut pause = RETRY_BACKOFF_START;
    let mut attempt = 1;
    loop {
        // No session starts once the job is stopped, nor inside a blackout window (a retry or
        // a resume after a long window waits it out here).
        wait_until_allowed(node, id, progress)?;
        let r = node.get(id, Role::Source)?;
        carried.roll(progress);
        progress.control.set_rate(r.spec.bandwidth_limit);
        let res = rt.block_on(ticket(node, &r)).and_then(|(to, session)| {
            let opts = mover::sender::SendOptions {
                src: r.spec.source_path.clone().into(),
                to,
                threads: node.opts.threads,
                direct: true,
                state: Some(node.state_dir(id)),
                snapshot: None,
                session: Some(session),
                id_map: r.spec.map_ids.as_ref().map(|m| mover::sender::IdMap {
                    uid: m.uid.iter().copied().collect(),
                    gid: m.gid.iter().copied().collect(),
                }),
            };
            Ok(mover::sender::send(&opts, progress)?)
        });
        match res {
            Ok(mut rep) => {
                rep.attempts = attempt;
                return Ok(rep);
            }
            Err(_) if progress.control.take_suspended() && !progress.control.is_cancelled() => {
                // A long blackout window: the next pass waits it out and resumes in a new
                // session. Not a failed attempt.
                tracing::info!(%id, "session suspended for a long blackout window; the job resumes after it");
                pause = RETRY_BACKOFF_START;
            }
            Err(e) => {
                if progress.control.is_cancelled() || attempt >= JOB_ATTEMPTS || !worth_retrying(&e)
                {
                    return Err(e);
                }
                tracing::warn!(%id, attempt, "session failed, retrying in {pause:?}: {e}");
                let until = Instant::now() + pause;
                while Instant::now() < until && !progress.control.is_cancelled() {
                    std::thread::sleep(mover::GATE_POLL);
                }
                pause = (pause * 2).min(RETRY_BACKOFF_MAX);
                attempt += 1;
            }
        }
    }
}

/// Returns once a session may start: the job is not stopped, the relationship is not in a
/// blackout window and the scheduler has lifted its pause. Clears a suspension left from the
/// window (the scheduler asks for one on every tick of a long pause), so the next session is
/// not cut at its first chunk.
fn wait_until_allowed(node: &Node, id: &RelationshipId, progress: &Progress) -> Result<()> {
    let mut said = false;
    loop {
        if progress.control.is_cancelled() {
            return Err(Error::Conflict(format!("job of relationship {id} stopped")));
        }
        let r = node.get(id, Role::Source)?;
        if r.ended {
            return Err(Error::Conflict(format!("relationship {id} has ended")));
        }
        let blackout = blackout::in_blackout(&r.spec.blackout_windows, chrono::Utc::now());
        if !blackout && !progress.control.is_paused() {
            progress.control.take_suspended();
            return Ok(());
        }
        if !said {
            tracing::info!(%id, "waiting for the blackout window to end before the next session");
            said = true;
        }
        std::thread::sleep(TICK);
    }
}

/// Data-plane failures as the data plane judges them; an unreachable or refusing target is
/// worth another try too (it may be restarting).
fn worth_retrying(e: &Error) -> bool {
    match e {
        Error::DataPlane(d) => mover::sender::retryable(d),
        Error::Peer { .. } | Error::Io { .. } => true,
        _ => false,
    }
}

async fn ticket(node: &Node, r: &Relationship) -> Result<(SocketAddr, SessionId)> {
    match call(node, r, &PeerRequest::Ticket { id: r.id.clone() }).await? {
        PeerAnswer::Ticket { port: _, ticket } => {
            let t = u128::from_str_radix(&ticket, 16).map_err(|_| Error::Peer {
                peer: r.spec.target_address.clone(),
                message: "malformed ticket".into(),
            })?;
            // The data plane shares the peer port; the configured one is what reaches the
            // target through NAT or port forwarding, whatever port it listens on itself.
            Ok((peer_addr(r).await?, SessionId(t)))
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
                    at_ns: now_ns(),
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
                    at_ns: now_ns(),
                    ok: false,
                    message: msg,
                },
                None,
            )
        }
    };
    tracing::info!(%id, ok = attempt.ok, "job ended: {}", attempt.message);
    let attempt_failed = !attempt.ok;
    let res = node.modify(id, |x| {
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
}

/// Stops every running job at a chunk boundary and waits (bounded) for their threads to
/// record it.
pub async fn stop_all(node: &Node, grace: Duration) {
    for j in lock(&node.jobs).values() {
        j.progress.control.cancel();
    }
    let until = Instant::now() + grace;
    while Instant::now() < until
        && lock(&node.jobs)
            .values()
            .any(|j| !j.done.load(Ordering::SeqCst))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Aborts a relationship's running job and waits (bounded) until it has stopped.
pub async fn stop_job(node: &Node, id: &RelationshipId, grace: Duration) -> bool {
    let Some(done) = lock(&node.jobs).get(id).map(|j| {
        j.progress.control.cancel();
        j.done.clone()
    }) else {
        return true;
    };
    let until = Instant::now() + grace;
    while Instant::now() < until && !done.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.load(Ordering::SeqCst)
}
