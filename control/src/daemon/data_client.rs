//! The control container's side of `data_wire`: a send session or a share run by the node's
//! data container when this process does not run the data role (`--roles control`). The
//! session looks to its caller exactly as `mover::sender::send_over` does: counters land in
//! the job's `Progress`, pause, cancel and bandwidth reach the workers, and the error keeps its
//! kind. A data container that is down or dies mid-session is a lost peer: the job retries.

use super::data_wire::{self, ControlState, FromData, SendJob, ToData, DATA_SOCKET};
use super::Node;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

fn connect(node: &Node) -> mover::Result<UnixStream> {
    let path = node.opts.data_dir.join(DATA_SOCKET);
    UnixStream::connect(&path).map_err(|e| mover::Error::Io {
        context: format!(
            "reaching this node's data container at {} (`mover node run` starts it)",
            path.display()
        ),
        source: e,
    })
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
    let conn = connect(node)?;
    data_wire::open(&conn, Some(source))?;
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
        transport: choice_name(policy.choice).into(),
        fell_back: policy.fell_back(),
        control: ControlState::of(&progress.control),
        keep_manifest: true,
    };
    let out = Arc::new(Mutex::new(conn.try_clone().map_err(|e| {
        mover::Error::Io {
            context: "the data socket".into(),
            source: e,
        }
    })?));
    data_wire::write_msg(&mut *super::lock(&out), &ToData::Send(Box::new(job)))?;
    let answer = forwarding(
        &out,
        progress,
        |msg| match msg {
            FromData::Place { place, shard } => {
                let Some(spread) = spread.cloned() else {
                    return Err(mover::Error::Corrupt(
                        "the data container asked for a share of an unspread session".into(),
                    ));
                };
                let out = out.clone();
                std::thread::Builder::new()
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
    )?;
    answer
}

/// Writes the manifest the data container keeps for `state` (a relationship's state
/// directory) and, with `forget`, drops it: before this process reads the directory or
/// removes it. A data container that does not answer keeps nothing (its saves died with it).
pub(crate) fn manifest(node: &Node, state: &Path, forget: bool) {
    let run = || -> mover::Result<()> {
        let mut conn = connect(node)?;
        conn.set_read_timeout(Some(MANIFEST_WAIT))
            .map_err(|e| mover::Error::Io {
                context: "the data socket".into(),
                source: e,
            })?;
        data_wire::open(&conn, None)?;
        let msg = ToData::Manifest {
            state: state.to_path_buf(),
            forget,
        };
        data_wire::write_msg(&mut conn, &msg)?;
        match data_wire::read_msg::<FromData>(&mut conn)? {
            Some(FromData::Manifest) => Ok(()),
            Some(other) => Err(unexpected(&other)),
            None => Err(lost()),
        }
    };
    if let Err(e) = run() {
        tracing::warn!(state = %state.display(), "the data container's manifest: {e}");
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
        let conn = connect(node)?;
        data_wire::open(&conn, None)?;
        let out = Arc::new(Mutex::new(conn.try_clone().map_err(|e| {
            mover::Error::Io {
                context: "the data socket".into(),
                source: e,
            }
        })?));
        data_wire::write_msg(&mut *super::lock(&out), &ToData::Share(shard.clone()))?;
        forwarding(
            &out,
            progress,
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
    mover::Error::Corrupt(format!("the data container answered {m:.60?}"))
}

fn choice_name(c: mover::transport::select::Choice) -> &'static str {
    use mover::transport::select::Choice;
    match c {
        Choice::Auto => "auto",
        Choice::Tcp => "tcp",
        Choice::Rdma => "rdma",
    }
}

/// Reads the data container's messages until `answer` makes one final, storing counters in
/// `progress` and forwarding its control requests as they change (every `GATE_POLL`).
fn forwarding<T>(
    out: &Arc<Mutex<UnixStream>>,
    progress: &Arc<mover::Progress>,
    mut answer: impl FnMut(FromData) -> mover::Result<Option<T>>,
    conn: &UnixStream,
) -> mover::Result<T> {
    // Dropping `done` wakes the forwarder at once: a short session does not wait out a tick.
    let (done, ended) = std::sync::mpsc::channel::<()>();
    let (o, p) = (out.clone(), progress.clone());
    let forwarder = std::thread::Builder::new()
        .name("mover-data-requests".into())
        .spawn(move || {
            let mut was = ControlState::of(&p.control);
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                ended.recv_timeout(mover::GATE_POLL)
            {
                let now = ControlState::of(&p.control);
                if now != was {
                    if data_wire::write_msg(&mut *super::lock(&o), &ToData::Control(now)).is_err() {
                        return;
                    }
                    was = now;
                }
            }
        })
        .map_err(|e| mover::Error::Io {
            context: "starting the data session's request thread".into(),
            source: e,
        })?;
    let mut read = conn;
    let r = loop {
        match data_wire::read_msg::<FromData>(&mut read) {
            Ok(Some(FromData::Progress(c))) => c.store(progress),
            Ok(Some(msg)) => match answer(msg) {
                Ok(Some(t)) => break Ok(t),
                Ok(None) => {}
                Err(e) => break Err(e),
            },
            Ok(None) => break Err(lost()),
            Err(e) => break Err(e),
        }
    };
    drop(done);
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let _ = forwarder.join();
    r
}

/// `PathBuf` of `from` below `root`, for a session reading a kept snapshot under the pinned
/// source (`Path::new("")` for the source itself).
pub(crate) fn below(root: &Path, from: &Path) -> PathBuf {
    from.strip_prefix(root)
        .map_or_else(|_| PathBuf::new(), Path::to_path_buf)
}
