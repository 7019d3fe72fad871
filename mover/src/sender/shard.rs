//! A session's workers spread over several nodes that see the source at the same path (a
//! shared file system): scale-out jobs of a cluster.
//!
//! The sender that owns the session keeps everything but the data: the walk, the control
//! connection, the need list, the plan and the commit. It cuts the plan's worker lists into
//! places: its own workers, then `opts.threads` more per place its `Spread` offers. Each other
//! place gets a **shard**: the workers' unit lists, the paths and sizes they read, and the
//! frozen root they read from, written as a file under `<src>/STATE_DIR/shards/` (on the
//! shared file system: a plan is the size of the files it names, too big for a control
//! store's record), and a small `ShardRef` (session id, secret, receiver, plan file, digest)
//! that the `Spread` hands to that place however it likes (the daemon: through etcd). The
//! place runs `run_shard`: it opens those workers' connections to the receiver from its own
//! node, exactly as the owner's workers do (the receiver routes worker connections by session
//! id and index, whatever host they come from), and writes the frame checksums the content
//! digest needs next to the plan.
//!
//! A place that fails, or dies, fails the session like any broken worker connection: the
//! owner retries it (with the places its `Spread` offers then), and the receiver resumes the
//! job from its journal and durable ranges, so nothing already durable is sent again. The
//! commit stays one record on the owner's control connection after every worker of every
//! place is done, so the target never holds a mix of two recovery points.

use super::plan::Unit;
use super::worker::SendTable;
use crate::engine::FrameStats;
use crate::error::{Error, IoContext, Result};
use crate::job::Progress;
use crate::transport::Transport;
use crate::tree::STATE_DIR;
use crate::units::{SessionId, WorkerIndex};
use crate::wire::seal::SessionSecret;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Most places (other than the owner) one session spreads over.
pub const MAX_PLACES: usize = 16;
/// Largest shard plan or result file read back (a plan names at most the session's files).
const MAX_SHARD_FILE: u64 = 1 << 30;
/// Where plans and results live, below `<src>/STATE_DIR`.
const SHARDS_DIR: &str = "shards";

/// What runs a session's other places. The daemon's implementation assigns each to a node of
/// its cluster through etcd and waits for that node's answer.
pub trait Spread: Send + Sync {
    /// How many places besides the owner take a share of this session, decided once when it
    /// starts (at most `MAX_PLACES`; 0 runs every worker here).
    fn places(&self) -> usize;
    /// Runs the shard at `place` (< `places()`) and blocks until its workers are done. An
    /// error fails the session (which the owner retries).
    fn run(&self, place: usize, shard: ShardRef) -> Result<()>;
    /// The source as the other places name it, where `SendOptions::src` is a name only this
    /// process can use (the daemon's `/proc/self/fd/N` of a pinned directory). None: the same.
    fn source(&self) -> Option<PathBuf> {
        None
    }
}

/// A shard as it travels to its place: small, the plan itself is a file on the shared source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardRef {
    /// The session (hex), for the Hellos.
    pub session: String,
    /// The session secret (hex), or None for a session in clear.
    pub secret: Option<String>,
    /// The receiver's data-plane address.
    pub to: SocketAddr,
    /// The plan file (absolute, on the shared file system).
    pub plan: PathBuf,
    /// xxh3 of the plan file, so a place never runs a plan other than the one assigned.
    pub digest: u64,
    /// The place's share of the job's bandwidth limit (bytes a second), as it was when the
    /// session started.
    #[serde(default)]
    pub rate_limit: Option<u64>,
    /// The receiver's other write places and the session's worker count: a worker connects to
    /// the place its index falls to (`sender::worker_to`). Empty: every worker to `to`.
    #[serde(default)]
    pub write_places: Vec<SocketAddr>,
    #[serde(default)]
    pub session_workers: u16,
}

/// What a place does: these workers' units, read from `root`.
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    root: PathBuf,
    direct: bool,
    /// Worker index and its units.
    workers: Vec<(u16, Vec<Unit>)>,
    /// (entry, path relative to `root` in hex, size) of every file the units read.
    files: Vec<(u32, String, u64)>,
}

/// What a place reports back, next to its plan.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Done {
    frames: u64,
    data_bytes: u64,
    wire_bytes: u64,
    checksums: Vec<u64>,
    read_buffered: u64,
    read_direct: u64,
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    let bad = || Error::Corrupt(format!("shard: {s:.40} is not hex"));
    if !s.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

/// Makes the directory plans go to, before the session's walk: made later, it would change the
/// source root's mtime under the walk's list.
pub(crate) fn shards_dir(src: &Path) -> Result<std::os::fd::OwnedFd> {
    let root = crate::beneath::open_root(src, "source directory")?;
    let state = crate::durable::ensure_dir(root.as_fd(), &String::from_utf8_lossy(STATE_DIR))?;
    crate::durable::ensure_dir(state.as_fd(), SHARDS_DIR)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).ctx(|| format!("opening shard file {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_SHARD_FILE + 1)
        .read_to_end(&mut buf)
        .ctx(|| format!("reading shard file {}", path.display()))?;
    if buf.len() as u64 > MAX_SHARD_FILE {
        return Err(Error::Corrupt(format!(
            "shard file {} is larger than {MAX_SHARD_FILE} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

fn file_name(session: SessionId, place: usize) -> String {
    format!("{session}-{place}")
}

/// Writes the plan of `place` for the owner and returns the reference its place needs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn publish(
    src: &Path,
    shared: &Path,
    session: SessionId,
    secret: Option<&SessionSecret>,
    to: SocketAddr,
    place: usize,
    root: &Path,
    direct: bool,
    workers: Vec<(u16, Vec<Unit>)>,
    table: &SendTable,
    rate_limit: Option<u64>,
) -> Result<ShardRef> {
    let mut entries: Vec<u32> = workers
        .iter()
        .flat_map(|(_, units)| units.iter())
        .flat_map(|u| match u {
            Unit::Chunk { entry, .. } => vec![entry.0],
            Unit::Batch { files } => files.iter().map(|f| f.0 .0).collect(),
        })
        .collect();
    entries.sort_unstable();
    entries.dedup();
    let files = entries
        .iter()
        .map(|&e| {
            let i = e as usize;
            (e, hex(&table.paths[i]), table.sizes[i])
        })
        .collect();
    // Named as the places name the source.
    let root = match root.strip_prefix(src) {
        Ok(rest) => shared.join(rest),
        Err(_) => {
            return Err(Error::Corrupt(format!(
                "the frozen source {} is not below the source {}",
                root.display(),
                src.display()
            )))
        }
    };
    let plan = Plan {
        root,
        direct,
        workers,
        files,
    };
    let body = serde_json::to_vec(&plan).map_err(|e| Error::Corrupt(format!("shard: {e}")))?;
    let dir = shards_dir(src)?;
    let name = file_name(session, place);
    crate::durable::write_atomic(dir.as_fd(), &name, &body)?;
    Ok(ShardRef {
        session: format!("{:032x}", session.0),
        secret: secret.map(|s| hex(s.expose())),
        to,
        plan: shared
            .join(String::from_utf8_lossy(STATE_DIR).as_ref())
            .join(SHARDS_DIR)
            .join(name),
        digest: xxhash_rust::xxh3::xxh3_64(&body),
        rate_limit,
        write_places: Vec::new(),
        session_workers: 0,
    })
}

/// The owner's view of a place that finished: its workers' stats, read from its result file;
/// both files are removed.
pub(crate) fn collect(shard: &ShardRef) -> Result<FrameStats> {
    let done_path = done_path(&shard.plan);
    let body = read_bounded(&done_path)?;
    let d: Done = serde_json::from_slice(&body)
        .map_err(|e| Error::Corrupt(format!("shard result {}: {e}", done_path.display())))?;
    forget(shard);
    Ok(FrameStats {
        frames: d.frames,
        data_bytes: d.data_bytes,
        wire_bytes: d.wire_bytes,
        checksums: d.checksums,
        block_hashes: Vec::new(),
        read_buffered: d.read_buffered,
        read_direct: d.read_direct,
        changed: Vec::new(),
    })
}

/// Removes a shard's plan and result (after it was collected, or its session failed).
pub(crate) fn forget(shard: &ShardRef) {
    for p in [shard.plan.clone(), done_path(&shard.plan)] {
        if let Err(e) = std::fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing shard file {}: {e}", p.display());
            }
        }
    }
}

fn done_path(plan: &Path) -> PathBuf {
    let mut p = plan.as_os_str().to_owned();
    p.push(".done");
    PathBuf::from(p)
}

/// Runs a shard at its place: opens its workers' connections to the receiver and sends their
/// units, then writes the result next to the plan for the owner. Returns the bytes sent.
pub fn run_shard(
    shard: &ShardRef,
    transport: &Arc<dyn Transport>,
    progress: &Arc<Progress>,
) -> Result<u64> {
    open_shard(shard)?.run(transport, progress)
}

/// A shard whose plan was read and checked and whose source root is open: nothing has been
/// sent yet. A place that cannot get this far cannot read the shared source at all.
pub struct OpenShard {
    shard: ShardRef,
    id: super::Identity,
    root: PathBuf,
    direct: bool,
    workers: Vec<(u16, Vec<Unit>)>,
    table: Arc<SendTable>,
}

/// Reads and checks a shard's plan and opens the source root it names.
/// `run_shard` for a place that reports to the owner: the bytes it sent, or its error and
/// whether its plan or source could not be read (its owner then leaves this place out of the
/// job).
pub fn run_assigned(
    shard: &ShardRef,
    transport: &Arc<dyn Transport>,
    progress: &Arc<Progress>,
) -> (Result<u64>, bool) {
    match open_shard(shard) {
        Ok(open) => (open.run(transport, progress), false),
        Err(e) => (Err(e), true),
    }
}

pub fn open_shard(shard: &ShardRef) -> Result<OpenShard> {
    let body = read_bounded(&shard.plan)?;
    if xxhash_rust::xxh3::xxh3_64(&body) != shard.digest {
        return Err(Error::Corrupt(format!(
            "shard plan {} is not the one assigned (digest differs)",
            shard.plan.display()
        )));
    }
    let plan: Plan = serde_json::from_slice(&body)
        .map_err(|e| Error::Corrupt(format!("shard plan {}: {e}", shard.plan.display())))?;
    let (session, secret) = identity(&shard.session, shard.secret.as_deref())?;
    let id = super::Identity { session, secret };
    let last = plan.files.iter().map(|f| f.0).max().unwrap_or(0) as usize;
    if last as u64 >= u64::from(crate::tree::entry::MAX_ENTRIES) {
        return Err(Error::Corrupt(format!("shard plan names entry {last}")));
    }
    let mut paths = vec![Vec::new(); last + 1];
    let mut sizes = vec![0u64; last + 1];
    for (e, p, size) in &plan.files {
        paths[*e as usize] = unhex(p)?;
        sizes[*e as usize] = *size;
    }
    let table = Arc::new(SendTable {
        root: crate::beneath::open_root(&plan.root, "shard's source root")?,
        paths,
        sizes,
        // The session's own check covers this place's files (it stats them all).
        stamps: Vec::new(),
    });
    for (_, units) in &plan.workers {
        for u in units {
            let known = match u {
                Unit::Chunk { entry, .. } => table.sizes.get(entry.0 as usize).is_some(),
                Unit::Batch { files } => files
                    .iter()
                    .all(|(e, _)| table.sizes.get(e.0 as usize).is_some()),
            };
            if !known {
                return Err(Error::Corrupt("shard plan: a unit names no file".into()));
            }
        }
    }
    Ok(OpenShard {
        shard: shard.clone(),
        id,
        root: plan.root,
        direct: plan.direct,
        workers: plan.workers,
        table,
    })
}

impl OpenShard {
    /// Sends the shard's units over its workers' connections; returns the bytes sent.
    pub fn run(self, transport: &Arc<dyn Transport>, progress: &Arc<Progress>) -> Result<u64> {
        let OpenShard {
            shard,
            id,
            root,
            direct,
            workers,
            table,
        } = self;
        if shard.rate_limit.is_some() {
            progress.control.set_rate(shard.rate_limit);
        }
        let places = crate::engine::worker_places(workers.len(), Some(&root));
        let dests: Vec<(u16, std::net::SocketAddr)> = workers
            .iter()
            .map(|&(index, _)| {
                let to = super::worker_to(
                    shard.to,
                    &shard.write_places,
                    usize::from(index),
                    usize::from(shard.session_workers),
                );
                (index, to)
            })
            .collect();
        // The place's workers share its units as the owner's do (`sender::pool`).
        let pools = super::pool::pools_by_destination(
            dests
                .iter()
                .zip(workers)
                .map(|(&(_, to), (_, units))| (to, units))
                .collect(),
        );
        let mut handles = Vec::new();
        for (k, ((index, to), (pool, slot))) in dests.into_iter().zip(pools).enumerate() {
            let (table, progress, transport, id) = (
                table.clone(),
                progress.clone(),
                transport.clone(),
                id.clone(),
            );
            let place = places.get(k).cloned().unwrap_or_default();
            let h = std::thread::Builder::new()
                .name(format!("mover-shard-{index}"))
                .spawn(move || {
                    super::run_worker(
                        &*transport,
                        to,
                        &id,
                        WorkerIndex(index),
                        &place,
                        super::worker::SendWorker {
                            cpu: place.cpu,
                            table,
                            pool,
                            slot,
                            direct,
                            progress,
                            hash_blocks: false,
                        },
                    )
                })
                .ctx(|| "spawning shard worker".to_string())?;
            handles.push(h);
        }
        let all = crate::engine::join_workers(handles, "shard")?;
        let done = Done {
            frames: all.frames,
            data_bytes: all.data_bytes,
            wire_bytes: all.wire_bytes,
            checksums: all.checksums,
            read_buffered: all.read_buffered,
            read_direct: all.read_direct,
        };
        let body = serde_json::to_vec(&done).map_err(|e| Error::Corrupt(format!("shard: {e}")))?;
        let dir = shard
            .plan
            .parent()
            .ok_or_else(|| Error::Corrupt("shard plan has no directory".into()))?;
        let dirfd = crate::beneath::open_root(dir, "shard directory")?;
        let name = done_path(&shard.plan);
        let name = name
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        crate::durable::write_atomic(dirfd.as_fd(), &name, &body)?;
        Ok(done.data_bytes)
    }
}

/// A session id and secret as a shard or a write share carries them (hex).
pub(crate) fn identity(
    session: &str,
    secret: Option<&str>,
) -> Result<(SessionId, Option<SessionSecret>)> {
    let id = u128::from_str_radix(session, 16)
        .map(SessionId)
        .map_err(|_| Error::Corrupt(format!("session {session:.40}")))?;
    let secret = match secret {
        None => None,
        Some(s) => {
            let b: [u8; crate::wire::seal::SECRET_LEN] = unhex(s)?
                .try_into()
                .map_err(|_| Error::Corrupt("session secret length".into()))?;
            Some(SessionSecret::from_bytes(b))
        }
    };
    Ok((id, secret))
}

/// Which place runs worker `index` of a session of `threads` workers per place.
pub(crate) fn place_of(index: usize, threads: usize) -> usize {
    debug_assert!(threads > 0);
    index / threads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_any_path_and_refuses_what_is_not_hex() {
        let p = b"a/\xff\x00b".to_vec();
        assert_eq!(unhex(&hex(&p)).unwrap(), p);
        assert!(unhex("abc").is_err() && unhex("zz").is_err());
    }

    #[test]
    fn workers_go_to_places_in_contiguous_runs_of_threads() {
        let t = 2;
        let got: Vec<usize> = (0..6).map(|i| place_of(i, t)).collect();
        assert_eq!(got, vec![0, 0, 1, 1, 2, 2]);
    }
}
