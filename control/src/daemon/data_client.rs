//! The control container's side of `data_wire`: a send session or a share run by the node's
//! data container when this process does not run the data role (`--roles control`). The
//! session looks to its caller exactly as `mover::sender::send_over` does: counters land in
//! the job's `Progress`, pause, cancel and bandwidth reach the workers, and the error keeps its
//! kind. A data container that is down or dies mid-session is a lost peer: the job retries.

use super::data_wire::{self, ControlState, FromData, SendJob, Ticker, ToData, DATA_SOCKET};
use super::Node;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

fn socket(node: &Node) -> PathBuf {
    node.opts.data_dir.join(DATA_SOCKET)
}

/// Opens a session's connection: the opening byte (with `source`) and the first message,
/// already framed. Returns the connection to read and the writing half the session's threads
/// share.
fn session(
    node: &Node,
    source: Option<BorrowedFd<'_>>,
    first: &[u8],
) -> mover::Result<(UnixStream, Arc<Mutex<UnixStream>>)> {
    let conn = data_wire::connect(&socket(node))?;
    data_wire::open(&conn, source)?;
    let mut out = conn.try_clone().map_err(|e| data_wire::io("cloning", e))?;
    out.write_all(first)
        .map_err(|e| data_wire::io("writing", e))?;
    Ok((conn, Arc::new(Mutex::new(out))))
}

fn lost() -> mover::Error {
    mover::Error::PeerLost(
        "the data container ended the session without an answer (stopped or killed)".into(),
    )
}

/// One send session in the data container. `source` is the pinned source directory and
/// `below` the path under it the session reads; `opts.src` is not used.
pub(crate) fn send(
    node: &Node,
    opts: &mover::sender::SendOptions,
    source: BorrowedFd<'_>,
    below: &Path,
    progress: &Arc<mover::Progress>,
    policy: &mover::transport::select::RdmaPolicy,
) -> mover::Result<mover::sender::SendReport> {
    let spread = opts.spread.as_ref();
    let job = SendJob {
        below: below.to_path_buf(),
        to: opts.to,
        threads: opts.threads,
        direct: opts.direct,
        state: opts.state.clone(),
        snapshot: opts.snapshot,
        session: opts.session.map_or(0, |s| s.0),
        secret: opts.secret.as_ref().map(|s| s.expose().to_vec()),
        id_map: opts.id_map.clone(),
        pin: opts.pin.clone(),
        changed: opts.changed.clone(),
        places: spread.map_or(0, |s| s.places()),
        places_source: spread.and_then(|s| s.source()),
        transport: policy.choice,
        fell_back: policy.fell_back(),
        control: ControlState::of(&progress.control),
        keep_manifest: true,
        write_places: opts.write_places.clone(),
    };
    let baseline = job.control;
    let mut msg = ToData::Send(Box::new(job));
    let first = match data_wire::frame(&msg) {
        Err(mover::Error::Limit(m)) => match &mut msg {
            // A set of changed directories too large for one message: the session walks
            // the whole tree instead, as one without a watch does.
            ToData::Send(job) if job.changed.is_some() => {
                tracing::warn!("{m}: walking the whole tree instead of the changed directories");
                job.changed = None;
                data_wire::frame(&msg)?
            }
            _ => return Err(mover::Error::Limit(m)),
        },
        other => other?,
    };
    let (conn, out) = session(node, Some(source), &first)?;
    // The session's other places, joined before it returns, as `send_over` joins its own.
    let mut placing = Vec::new();
    let answer = forwarding(
        &out,
        progress,
        baseline,
        |msg| match msg {
            FromData::Place { place, shard } => {
                let Some(spread) = spread.cloned() else {
                    return Err(mover::Error::Corrupt(
                        "the data container asked for a share of an unspread session".into(),
                    ));
                };
                if placing.len() >= mover::sender::shard::MAX_PLACES {
                    return Err(mover::Error::Corrupt(
                        "the data container asked for more places than a session has".into(),
                    ));
                }
                let out = out.clone();
                let t = std::thread::Builder::new()
                    .name("mover-place".into())
                    .spawn(move || {
                        let outcome = spread
                            .run(place, shard)
                            .map_err(|e| data_wire::RemoteError::from(&e));
                        let msg = ToData::Placed { place, outcome };
                        let _ = data_wire::write_msg(&mut *super::lock(&out), &msg);
                    })
                    .map_err(|e| mover::Error::Io {
                        context: "starting a share's thread".into(),
                        source: e,
                    })?;
                placing.push(t);
                Ok(None)
            }
            FromData::Sent { outcome, fell_back } => {
                if fell_back {
                    policy.failure_flag().store(true, Ordering::SeqCst);
                }
                Ok(Some(outcome.map(|r| *r).map_err(mover::Error::from)))
            }
            other => Err(unexpected(&other)),
        },
        &conn,
    );
    for t in placing {
        let _ = t.join();
    }
    answer?
}

/// Longest wait for this node's data container to answer before a session: it restarts
/// within the supervisor's backoff, and a session started meanwhile would spend an attempt.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits (up to `READY_WAIT`, and not once the job is stopped) until this node's data
/// container answers its health check on this release: restarting, or still on the other
/// side of an upgrade, it would fail the session. After the bound the session goes ahead and
/// its error says what is wrong.
pub(crate) fn wait_ready(node: &Node, progress: &mover::Progress) {
    let until = std::time::Instant::now() + READY_WAIT;
    let mut said = false;
    while std::time::Instant::now() < until && !progress.control.is_cancelled() {
        match health(node) {
            Ok(v) if v == mover::software_version() => return,
            Ok(v) if !said => {
                tracing::info!(data = %v, control = %mover::software_version(), "waiting for the data container to run this release");
                said = true;
            }
            Err(e) if !said => {
                tracing::info!("waiting for the data container: {e}");
                said = true;
            }
            _ => {}
        }
        std::thread::sleep(mover::GATE_POLL * 4);
    }
}

/// The data container's release, from its health answer.
fn health(node: &Node) -> mover::Result<String> {
    match data_wire::call(&socket(node), Some(HEALTH_WAIT), None, &ToData::Health)? {
        FromData::Health { version, .. } => Ok(version),
        other => Err(unexpected(&other)),
    }
}

/// Longest wait for the data container's health answer.
const HEALTH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Writes the manifest the data container keeps for `state` (a relationship's state
/// directory) and, with `forget`, drops it: before this process reads the directory or
/// removes it. A data container that is not running keeps nothing (its saves died with it).
pub(crate) fn manifest(node: &Node, state: &Path, forget: bool) -> mover::Result<()> {
    let msg = ToData::Manifest {
        state: state.to_path_buf(),
        forget,
    };
    match data_wire::call(&socket(node), Some(MANIFEST_WAIT), None, &msg) {
        Ok(FromData::Manifest) => Ok(()),
        Ok(other) => Err(unexpected(&other)),
        Err(e) if data_wire::not_running(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Longest wait for the data container to write a manifest.
const MANIFEST_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// A share another node's owner assigned here, run by the data container: the bytes it sent,
/// or its error and whether its plan or source could not be read.
pub(crate) fn share(
    node: &Node,
    shard: &mover::sender::shard::ShardRef,
    progress: &Arc<mover::Progress>,
) -> (mover::Result<u64>, bool) {
    let run = || -> mover::Result<(mover::Result<u64>, bool)> {
        let first = data_wire::frame(&ToData::Share(shard.clone()))?;
        let (conn, out) = session(node, None, &first)?;
        forwarding(
            &out,
            progress,
            ControlState::of(&progress.control),
            |msg| match msg {
                FromData::Shared {
                    outcome,
                    unreadable,
                } => Ok(Some((outcome.map_err(mover::Error::from), unreadable))),
                other => Err(unexpected(&other)),
            },
            &conn,
        )
    };
    run().unwrap_or_else(|e| (Err(e), false))
}

fn unexpected(m: &FromData) -> mover::Error {
    mover::Error::Corrupt(format!("the data container answered {}", m.name()))
}

/// Reads the data container's messages until `answer` makes one final, storing counters in
/// `progress` and forwarding its control requests as they change (every `GATE_POLL`).
fn forwarding<T>(
    out: &Arc<Mutex<UnixStream>>,
    progress: &Arc<mover::Progress>,
    baseline: ControlState,
    mut answer: impl FnMut(FromData) -> mover::Result<Option<T>>,
    conn: &UnixStream,
) -> mover::Result<T> {
    let (o, p) = (out.clone(), progress.clone());
    // What the session started with: a change made since is sent on the first tick.
    let mut was = baseline;
    let forwarder = Ticker::start("mover-data-requests", mover::GATE_POLL, move || {
        let now = ControlState::of(&p.control);
        if now == was {
            return true;
        }
        was = now;
        data_wire::write_msg(&mut *super::lock(&o), &ToData::Control(now)).is_ok()
    })?;
    let mut read = conn;
    // The job's counters also hold what the session's other places sent (added as each ends):
    // the data container's own counters move them by what changed since its last report.
    let mut last = data_wire::Counters::default();
    let r = loop {
        match data_wire::read_msg::<FromData>(&mut read) {
            Ok(Some(FromData::Progress(c))) => {
                c.add_since(last, progress);
                last = c;
            }
            Ok(Some(msg)) => match answer(msg) {
                Ok(Some(t)) => break Ok(t),
                Ok(None) => {}
                Err(e) => break Err(e),
            },
            Ok(None) => break Err(lost()),
            Err(e) => break Err(e),
        }
    };
    let _ = conn.shutdown(std::net::Shutdown::Both);
    forwarder.stop();
    r
}

/// The path of `from` below `root`, for a session reading a kept snapshot under the pinned
/// source (empty for the source itself).
pub(crate) fn below(root: &Path, from: &Path) -> mover::Result<PathBuf> {
    from.strip_prefix(root).map(Path::to_path_buf).map_err(|_| {
        mover::Error::Unsupported(format!(
            "{} is not below the source {}",
            from.display(),
            root.display()
        ))
    })
}
