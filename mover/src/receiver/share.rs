//! A session's writes spread over several target nodes that see the target at the same path (a
//! shared file system): the target half of scale-out jobs.
//!
//! The receiver that holds the session (the committing receiver: control connection, journal,
//! apply phase, finalize, verification, commit) keeps everything but the data. Its ticket
//! names the other **write places** (their data-plane addresses), so the sender knows before it
//! connects where each worker goes: worker `i` of `n` goes to place
//! `wire::message::write_place(i, n, places + 1)`, place 0 being the committing receiver. Once
//! its table is built (after the Expect list), the committing receiver writes it as a **share
//! file** into the job's journal directory on the shared target (the size of the entry list,
//! too big for a control store's record) and hands each place a small `WriteShare` (session,
//! secret, file name, digest, worker indices) through its `Writers`, which blocks until that
//! place is done. The place (`ShareHost`) accepts its workers' connections, runs ordinary
//! receiver workers on them into its own view of the target, logs durable ranges in the same
//! journal (per worker index, as the committing receiver's workers do, so a resumed job
//! resends only what no place made durable), syncs the file system and writes what it
//! received (frames, bytes, checksums, bytes per large file) next to the share file.
//!
//! The committing receiver folds every place's result into the content digest and the per-file
//! countdowns, sets the metadata of large files finished across places, and commits one record
//! only after every place is done: the target is never at a mix of two recovery points. A
//! place that fails fails the session, which the sender retries; the committing receiver
//! waits for every place's answer before the session ends, so no place of a failed session
//! writes under the next one.

use super::fence::fence_ok;
pub use super::fence::Fence;
use super::table::{FileId, RecvTable};
use super::worker::RecvWorker;
use super::WorkerConn;
use crate::engine::{join_workers_preferring, FrameStats};
use crate::error::{Error, IoContext, Result};
use crate::transport::Connection;
use crate::units::{EntryId, SessionId};
use crate::wire::codec::{Dec, Enc};
use crate::wire::frame::FrameKind;
use crate::wire::io::Link;
use crate::wire::message::{
    decode_entry, encode_entry, software_version, ErrorCode, HelloAck, Need, Role,
    CAP_RESUME_RANGES, CAP_SEALED,
};
use crate::wire::seal::SessionSecret;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Most write places (other than the committing receiver) one session spreads over.
pub const MAX_WRITE_PLACES: usize = 16;
/// Largest share file read back: the session's entry list (`SessionLimits` lets a receiver
/// take up to 4 GiB of it) with its need list, ranges and sizes.
const MAX_SHARE_FILE: u64 = 8 << 30;
/// Largest result file read back: one checksum per frame the place may receive.
const MAX_DONE_FILE: usize = 1 << 30;
/// Share and result files in the journal directory start with this.
const SHARE_PREFIX: &str = "share-";
/// First bytes of a share file (its format's version).
const SHARE_MAGIC: u32 = 0x6d76_7332;
/// How long a place holds a worker connection of a session it was not yet handed (the sender's
/// workers connect right after the Expect list, before the committing receiver has written
/// the share and the place has been handed it): as long as a receiver waits for its workers.
const ASSIGN_WAIT: Duration = super::conns::WORKER_CONNECT_TIMEOUT;
/// How often a held connection looks for its session.
const ASSIGN_POLL: Duration = Duration::from_millis(10);
/// Sessions a place runs at once (one per target relationship it writes for, at most).
const MAX_HOSTED: usize = 64;

/// Runs a session's other write places. The daemon's implementation hands each share to the
/// target node at that address (through its cluster store) and waits for its answer.
pub trait Writers: Send + Sync {
    /// Runs `share` at the place whose data-plane address is `at` and blocks until its workers
    /// are done and its result file written. An error fails the session.
    fn run(&self, at: SocketAddr, share: WriteShare) -> Result<()>;
}

/// A share as it travels to its place; the table itself is a file in the job's journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriteShare {
    /// The session (hex), as its workers' Hellos carry it.
    pub session: String,
    /// The session secret (hex), or None for a session in clear.
    pub secret: Option<String>,
    /// The share file's name in `.mover-state/journal/`.
    pub file: String,
    /// xxh3 of the share file, so a place never writes by a table other than the one handed.
    pub digest: u64,
    /// The worker indices this place serves.
    pub workers: Vec<u16>,
    /// The place's number in the session (1 and up; names its result file).
    pub place: u16,
}

/// What a place reports back, next to its share file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ShareDone {
    pub frames: u64,
    pub data_bytes: u64,
    pub wire_bytes: u64,
    pub checksums: Vec<u64>,
    /// Bytes the place wrote of each large file (entry, bytes).
    pub written: Vec<(u32, u64)>,
    /// The byte ranges it received of each (entry, [(offset, length)]), which add up to
    /// `written`: the committing receiver claims them too (claims.rs).
    pub claimed: Vec<(u32, Vec<(u64, u64)>)>,
}

fn share_name(session: SessionId) -> String {
    format!("{SHARE_PREFIX}{session}")
}

fn done_name(share: &WriteShare) -> String {
    format!("{}.{}.done", share.file, share.place)
}

/// Writes the session's share file (one for every place) for `t` into the journal; returns
/// its name and digest.
pub(crate) fn publish(t: &RecvTable, session: SessionId) -> Result<(String, u64)> {
    let mut e = Enc::new();
    e.u32(SHARE_MAGIC)
        .u8(u8::from(t.owners))
        .u64(t.checkpoint_bytes)
        .u32(t.entries.len() as u32);
    for x in &t.entries {
        encode_entry(&mut e, x);
    }
    for (i, n) in t.need.iter().enumerate() {
        e.u8(*n as u8)
            .u8(u8::from(t.skip[i]))
            .u8(u8::from(t.fresh_dir[i]));
    }
    let mut deltas: Vec<_> = t.deltas.iter().collect();
    deltas.sort_unstable_by_key(|(k, _)| **k);
    e.u32(deltas.len() as u32);
    for (k, ranges) in deltas {
        e.u32(*k).u32(ranges.len() as u32);
        for (o, l) in ranges {
            e.u64(*o).u64(*l);
        }
    }
    let mut expected: Vec<_> = t.expected.iter().collect();
    expected.sort_unstable_by_key(|(k, _)| **k);
    e.u32(expected.len() as u32);
    for (k, v) in expected {
        e.u32(*k).u64(*v);
    }
    let mut files: Vec<_> = t.files.iter().collect();
    files.sort_unstable_by_key(|(k, _)| **k);
    e.u32(files.len() as u32);
    for (k, f) in files {
        e.u32(*k).u64(f.ino);
    }
    let name = share_name(session);
    crate::durable::write_atomic(t.journal.as_fd(), &name, &e.buf)?;
    Ok((name, xxhash_rust::xxh3::xxh3_64(&e.buf)))
}

/// What place `place` (1 and up) of the session is handed: the share file and its workers.
pub(crate) fn share_for(
    (file, digest): &(String, u64),
    session: SessionId,
    secret: Option<&SessionSecret>,
    place: usize,
    workers: Vec<u16>,
) -> WriteShare {
    assert!(place > 0 && place <= MAX_WRITE_PLACES);
    WriteShare {
        session: format!("{:032x}", session.0),
        secret: secret.map(|s| crate::sender::shard::hex(s.expose())),
        file: file.clone(),
        digest: *digest,
        workers,
        place: place as u16,
    }
}

/// The place's answer to `share`, once its `Writers::run` returned.
pub(crate) fn result(t: &RecvTable, share: &WriteShare) -> Result<ShareDone> {
    let name = done_name(share);
    let body = crate::durable::read_opt(t.journal.as_fd(), &name)?
        .ok_or_else(|| Error::PeerLost(format!("write place left no result ({name})")))?;
    if body.len() > MAX_DONE_FILE {
        return Err(Error::Corrupt(format!("{name} is too large")));
    }
    serde_json::from_slice(&body).map_err(|e| Error::Corrupt(format!("{name}: {e}")))
}

/// The table a place writes by: the committing receiver's, read from the share file, with
/// this process's own creator and umask.
fn open_table(root: BorrowedFd<'_>, share: &WriteShare, umask: u32) -> Result<RecvTable> {
    if share.file.contains('/') || !share.file.starts_with(SHARE_PREFIX) {
        return Err(Error::Corrupt(format!(
            "share file name {:.80}",
            share.file
        )));
    }
    let journal = crate::beneath::open_dir(root, b".mover-state/journal")
        .ctx(|| "opening the job's journal on the shared target".to_string())?;
    let size = rustix::fs::statat(
        &journal,
        share.file.as_str(),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map(|s| s.st_size as u64)
    .map_err(|_| Error::Corrupt(format!("share file {} is missing", share.file)))?;
    if size > MAX_SHARE_FILE {
        return Err(Error::Limit(format!(
            "share file {} holds {size} bytes, more than a place reads ({MAX_SHARE_FILE})",
            share.file
        )));
    }
    let body = crate::durable::read_opt(journal.as_fd(), &share.file)?
        .ok_or_else(|| Error::Corrupt(format!("share file {} is missing", share.file)))?;
    if xxhash_rust::xxh3::xxh3_64(&body) != share.digest {
        return Err(Error::Corrupt(format!(
            "share file {} is not the one handed (digest differs)",
            share.file
        )));
    }
    let bad = |e: crate::wire::WireError| Error::Corrupt(format!("share file {}: {e}", share.file));
    let mut d = Dec::new(&body);
    if d.u32().map_err(bad)? != SHARE_MAGIC {
        return Err(Error::Corrupt(format!(
            "share file {}: unknown format",
            share.file
        )));
    }
    let owners = d.u8().map_err(bad)? != 0;
    let checkpoint_bytes = d.u64().map_err(bad)?;
    let n = d.u32().map_err(bad)?;
    if n == 0 || n >= crate::tree::entry::MAX_ENTRIES {
        return Err(Error::Corrupt(format!(
            "share file {}: {n} entries",
            share.file
        )));
    }
    let mut entries = Vec::new();
    // Checked as the committing receiver checked the list it came from: names, parents,
    // order, depth (relative_paths needs every parent before its child), nothing named
    // where the receiver keeps its state.
    let mut checker = crate::tree::entry::StructureChecker::new();
    for i in 0..n {
        let x = decode_entry(&mut d).map_err(bad)?;
        checker
            .push(&x)
            .map_err(|e| Error::Corrupt(format!("share file {}: {e}", share.file)))?;
        if i > 0 && x.parent.0 == 0 && crate::tree::reserved_at_top(&x.name) {
            return Err(Error::Corrupt(format!(
                "share file {} names the receiver's reserved {}",
                share.file,
                crate::error::show(&x.name)
            )));
        }
        entries.push(x);
    }
    let (mut need, mut skip, mut fresh_dir) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        need.push(match d.u8().map_err(bad)? {
            0 => Need::Nothing,
            1 => Need::Full,
            2 => Need::Delta,
            3 => Need::Rest,
            k => return Err(Error::Corrupt(format!("share file: need {k}"))),
        });
        skip.push(d.u8().map_err(bad)? != 0);
        fresh_dir.push(d.u8().map_err(bad)? != 0);
    }
    let mut deltas = HashMap::new();
    for _ in 0..d.u32().map_err(bad)?.min(n) {
        let k = d.u32().map_err(bad)?;
        let m = d.u32().map_err(bad)? as usize;
        let mut ranges = Vec::new();
        for _ in 0..m.min(d.remaining() / 16) {
            ranges.push((d.u64().map_err(bad)?, d.u64().map_err(bad)?));
        }
        deltas.insert(k, ranges);
    }
    let mut expected = HashMap::new();
    for _ in 0..d.u32().map_err(bad)?.min(n) {
        let (k, v) = (d.u32().map_err(bad)?, d.u64().map_err(bad)?);
        expected.insert(k, v);
    }
    let mut files = HashMap::new();
    for _ in 0..d.u32().map_err(bad)?.min(n) {
        let (k, ino) = (d.u32().map_err(bad)?, d.u64().map_err(bad)?);
        files.insert(k, FileId { dev: None, ino });
    }
    d.finish().map_err(bad)?;
    let paths = crate::tree::entry::relative_paths(&entries);
    let frame_budget = super::conns::data_frame_budget(&need, &entries, &expected);
    Ok(RecvTable {
        root: rustix::io::fcntl_dupfd_cloexec(root, 0).ctx(|| "dup of the target".to_string())?,
        remaining: expected
            .iter()
            .map(|(k, v)| (*k, AtomicU64::new(*v)))
            .collect(),
        claims: super::claims::Claims::new(expected.keys().copied()),
        files,
        entries,
        paths,
        need,
        deltas,
        owners,
        fresh_dir,
        expected,
        frame_budget: AtomicU64::new(frame_budget),
        creator: (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        ),
        umask,
        skip,
        journal,
        checkpoint_bytes,
        checked: super::checked::Checked::off(),
        syncs: Arc::default(),
        held: Default::default(),
    })
}

/// A session handed to this place, as its worker connections find it.
struct Hosted {
    secret: Option<SessionSecret>,
    workers: mpsc::Sender<WorkerConn>,
    /// The worker indices this share takes (`WriteShare::workers`), and those acknowledged:
    /// each at most once (`super::take_worker_index`).
    indices: Vec<u16>,
    acked: std::collections::HashSet<u16>,
}

/// The place side: accepts worker connections of the sessions it was handed and writes them
/// into its view of the shared target.
pub struct ShareHost {
    hosted: Mutex<HashMap<SessionId, Hosted>>,
    /// The process umask, applied by the kernel to files the workers create.
    umask: u32,
    /// Data bytes written here, over every share (for reports and tests).
    pub bytes: Arc<AtomicU64>,
}

impl Default for ShareHost {
    fn default() -> ShareHost {
        ShareHost::new()
    }
}

impl ShareHost {
    pub fn new() -> ShareHost {
        ShareHost {
            hosted: Mutex::new(HashMap::new()),
            umask: super::process_umask(),
            bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    fn hosted(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Hosted>> {
        self.hosted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a worker connection (its Hello not yet read) and hands it to the share of its
    /// session, waiting up to `ASSIGN_WAIT` for that share to be handed here.
    pub fn accept(&self, mut conn: Box<dyn Connection>) -> Result<()> {
        let (hello, version) = super::read_hello(&mut *conn)?;
        let refuse = super::refuse::<()>;
        let Role::Worker { index } = hello.role else {
            return refuse(
                &mut *conn,
                ErrorCode::Refused,
                "a write place takes worker connections only".into(),
            );
        };
        let deadline = Instant::now() + ASSIGN_WAIT;
        let (secret, workers) = loop {
            if let Some(h) = self.hosted().get_mut(&hello.session) {
                if let Err(why) = super::take_worker_index(&mut h.acked, &h.indices, index) {
                    return refuse(&mut *conn, ErrorCode::Refused, why);
                }
                break (h.secret.clone(), h.workers.clone());
            }
            if Instant::now() >= deadline {
                return refuse(
                    &mut *conn,
                    ErrorCode::Refused,
                    format!("unknown session {} at this write place", hello.session),
                );
            }
            std::thread::sleep(ASSIGN_POLL);
        };
        let sealed = hello.capabilities & CAP_SEALED != 0;
        if sealed != secret.is_some() {
            return refuse(
                &mut *conn,
                ErrorCode::Refused,
                "worker connection of another kind than its session".into(),
            );
        }
        let ack = HelloAck {
            version,
            software: software_version().to_string(),
            capabilities: (hello.capabilities & CAP_RESUME_RANGES)
                | if sealed { CAP_SEALED } else { 0 },
            recovery_point: 0,
            job_pending: false,
        };
        let mut link = match &secret {
            Some(s) => Link::sealed(conn, s, false, u32::from(index.0)),
            None => Link::plain(conn),
        };
        link.write_frame(FrameKind::HelloAck, &ack.encode())?;
        link.conn
            .set_timeout(None)
            .ctx(|| "socket timeout".to_string())?;
        // A session already ended drops its receiving end: the connection is then closed.
        let _ = workers.send((index, link));
        Ok(())
    }

    /// Runs `share` into `root` (this place's view of the shared target): waits for its
    /// workers' connections, writes what they carry, syncs, and leaves the result file;
    /// returns the file bytes written. Nothing is written once `fence` refuses (the share
    /// fails with `Error::Fenced`).
    pub fn run(
        &self,
        root: BorrowedFd<'_>,
        share: &WriteShare,
        fence: Option<Arc<dyn Fence>>,
    ) -> Result<u64> {
        fence_ok(fence.as_deref())?;
        let (session, secret) =
            crate::sender::shard::identity(&share.session, share.secret.as_deref())?;
        let sorted = share.workers.windows(2).all(|w| w[0] < w[1]);
        if share.workers.is_empty()
            || !sorted
            || share.workers.len() > usize::from(crate::wire::message::MAX_WORKERS)
        {
            return Err(Error::Corrupt(format!(
                "share of workers {:?} (not ascending, or none, or too many)",
                share.workers
            )));
        }
        // Its workers' connections are taken (and queue) from now on, while the table is
        // read: a large one takes a while.
        let (tx, rx) = mpsc::channel();
        {
            let mut h = self.hosted();
            if h.len() >= MAX_HOSTED || h.contains_key(&session) {
                return Err(Error::Busy(format!(
                    "this write place runs {} sessions (or this one already)",
                    h.len()
                )));
            }
            h.insert(
                session,
                Hosted {
                    secret,
                    workers: tx,
                    indices: share.workers.clone(),
                    acked: Default::default(),
                },
            );
        }
        let table = open_table(root, share, self.umask).map(Arc::new);
        let ran = table.and_then(|t| {
            // Write-back overlaps the data here too, and tells the workers what is durable.
            let writeback = super::writeback::EarlyWriteback::start(root, t.syncs.clone());
            let hosted = self.run_hosted(&t, share, &rx, &fence);
            writeback.stop();
            if hosted.is_err() {
                t.log_held(&|| fence_ok(fence.as_deref()).is_ok());
            }
            Ok((hosted?, t))
        });
        self.hosted().remove(&session);
        let (all, table) = ran?;
        // What this place wrote is durable before it says so.
        rustix::fs::syncfs(root).ctx(|| "syncing the shared target".to_string())?;
        // And what its workers finished and held is logged: the committing session may fail.
        table.log_held_synced(&|| fence_ok(fence.as_deref()).is_ok());
        let written = table
            .expected
            .iter()
            .filter_map(|(k, v)| {
                let left = table
                    .remaining
                    .get(k)?
                    .load(std::sync::atomic::Ordering::Acquire);
                (left < *v).then_some((*k, v - left))
            })
            .collect();
        let done = ShareDone {
            frames: all.frames,
            data_bytes: all.data_bytes,
            wire_bytes: all.wire_bytes,
            checksums: all.checksums,
            written,
            claimed: table.claims.taken(),
        };
        let body = serde_json::to_vec(&done).map_err(|e| Error::Corrupt(format!("share: {e}")))?;
        fence_ok(fence.as_deref())?;
        crate::durable::write_atomic(table.journal.as_fd(), &done_name(share), &body)?;
        Ok(done.data_bytes)
    }

    fn run_hosted(
        &self,
        table: &Arc<RecvTable>,
        share: &WriteShare,
        rx: &mpsc::Receiver<WorkerConn>,
        fence: &Option<Arc<dyn Fence>>,
    ) -> Result<FrameStats> {
        let conns = super::conns::collect_workers(rx, &share.workers, None)?;
        let mut streams = Vec::new();
        for (i, l) in &conns {
            match l.conn.tcp_stream() {
                Ok(Some(s)) => streams.push(s),
                // Not a kernel socket (places take TCP connections only: `ShareHost::accept`'s
                // callers); such a worker still asks the fence before each frame.
                Ok(None) => {}
                // Without it the watch could not stop that worker: no share then.
                Err(e) if fence.is_some() => {
                    return Err(Error::Io {
                        context: format!("a handle on worker {}'s connection for its fence", i.0),
                        source: e,
                    })
                }
                Err(e) => tracing::debug!("worker {}: no socket handle: {e}", i.0),
            }
        }
        // The wait for the workers' connections may have been long.
        fence_ok(fence.as_deref())?;
        let (ended, workers_ended) = mpsc::channel::<()>();
        // Pinned by the worker's index in the session, as the committing receiver pins its
        // own: places that share a machine (or its CPUs' numbering) do not all start at the
        // first CPU.
        let last = conns
            .iter()
            .map(|(i, _)| usize::from(i.0))
            .max()
            .unwrap_or(0);
        let cpus = crate::engine::worker_places(last + 1, None);
        let mut handles = Vec::new();
        // Its first failure is reported, not the others' echoes of it (engine::FirstFailure).
        let first = Arc::new(crate::engine::FirstFailure::default());
        for (index, link) in conns {
            let w = RecvWorker {
                index: usize::from(index.0),
                cpu: cpus.get(usize::from(index.0)).and_then(|p| p.cpu),
                table: table.clone(),
                link,
                progress: self.bytes.clone(),
                fence: fence.clone(),
            };
            let ended = ended.clone();
            let (first, handle) = (first.clone(), handles.len());
            let h = std::thread::Builder::new()
                .name(format!("mover-place-w{}", index.0))
                .spawn(move || {
                    let r = first.noted(handle, w.run());
                    let _ = ended.send(());
                    r
                })
                .ctx(|| "spawning a write place's worker".to_string())?;
            handles.push(h);
        }
        drop(ended);
        let n = handles.len();
        std::thread::scope(|s| {
            if let Some(f) = fence.as_deref() {
                let streams = &streams;
                let watch = std::thread::Builder::new()
                    .name("mover-place-fence".into())
                    .spawn_scoped(s, move || {
                        super::conns::watch_workers(&workers_ended, n, FENCE_POLL, streams, || {
                            refused(f)
                        })
                    });
                if let Err(e) = watch {
                    // The workers still ask before each frame; only a silent one waits longer.
                    tracing::warn!("write place: no thread to watch its fence: {e}");
                }
            }
            first.put_first(&mut handles);
            join_workers_preferring(handles, "write place", super::space::is_full)
        })
        // A worker stopped by the watch reports its connection shut, as a lost peer or as
        // the socket's own error (a send into a shut connection): once the fence refused,
        // that is why. Any other failure (a full disk, a corrupt frame) keeps its own error.
        .map_err(|e| match (e, fence_ok(fence.as_deref())) {
            (e, Err(fenced)) if connection_shut(&e) => {
                tracing::info!("write place: {e} (its connections were shut: fenced)");
                fenced
            }
            (e, _) => e,
        })
    }
}

/// Whether `e` is what a worker meets when its connection is shut under it: the peer gone, or
/// the socket's error for a send or receive on it. By the error's kind: a transport without a
/// kernel socket (RDMA, in-memory) gives kinds without an errno.
fn connection_shut(e: &Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, NotConnected};
    match e {
        Error::PeerLost(_) => true,
        Error::Io { source, .. } => {
            matches!(
                source.kind(),
                BrokenPipe | ConnectionReset | ConnectionAborted | NotConnected
            ) || source.raw_os_error() == Some(libc::ESHUTDOWN)
        }
        _ => false,
    }
}

/// How often a place's fence is asked while its workers run. Once it refuses, the watch
/// shuts the workers' connections, so a worker waiting for a frame stops now, not when the
/// next frame arrives (the workers also ask the fence before each frame's writes, so none
/// starts a write after it refused either way).
const FENCE_POLL: Duration = Duration::from_millis(100);

/// The watch's question: has `fence` refused (said once, when it has)?
fn refused(fence: &dyn Fence) -> bool {
    let why = fence.check().err();
    if let Some(why) = &why {
        tracing::warn!("write place: stopping its workers: {why}");
    }
    why.is_some()
}

/// Worker indices of `workers` that place `place` of `places` (the committing receiver is 0)
/// serves.
pub fn workers_at(place: usize, workers: u16, places: usize) -> Vec<u16> {
    (0..workers)
        .filter(|&i| {
            crate::wire::message::write_place(usize::from(i), usize::from(workers), places) == place
        })
        .collect()
}

/// Folds a place's result into the committing receiver's totals; returns the large files the
/// fold finished (their last bytes were written elsewhere: finalize sets their metadata).
pub(crate) fn fold(t: &RecvTable, done: ShareDone, all: &mut FrameStats) -> Result<Vec<EntryId>> {
    // The place's ranges add up to its byte counts, and none was received anywhere else.
    let mut claimed: HashMap<u32, u64> = HashMap::new();
    for (k, ranges) in &done.claimed {
        let sum = ranges.iter().try_fold(0u64, |a, (_, l)| a.checked_add(*l));
        let c = claimed.entry(*k).or_default();
        *c = c.saturating_add(sum.unwrap_or(u64::MAX));
    }
    let written: HashMap<u32, u64> = done.written.iter().copied().collect();
    if written != claimed {
        return Err(Error::Corrupt(
            "a write place's result: its ranges do not add up to its byte counts".into(),
        ));
    }
    for (k, ranges) in &done.claimed {
        let Some(path) = t.paths.get(*k as usize) else {
            return Err(Error::Verify(format!(
                "a write place received data of entry {k}, which is not in the list"
            )));
        };
        for &(o, l) in ranges {
            if !t.claims.claim(EntryId(*k), o, l) {
                return Err(Error::Verify(format!(
                    "a write place received bytes {o}..{} of {}, which were received elsewhere \
                     too (or which the session does not carry)",
                    o.saturating_add(l),
                    crate::error::show(path)
                )));
            }
        }
    }
    let mut finished = Vec::new();
    for (k, bytes) in done.written {
        let Some(r) = t.remaining.get(&k) else {
            return Err(Error::Verify(format!(
                "a write place wrote entry {k}, which expects no data"
            )));
        };
        let prev = r
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |v| v.checked_sub(bytes),
            )
            .map_err(|_| {
                Error::Verify(format!("more data for entry {k} than the sender announced"))
            })?;
        // The place set the metadata itself only if it wrote the whole file.
        if prev == bytes && t.expected.get(&k) != Some(&bytes) {
            finished.push(EntryId(k));
        }
    }
    all.absorb(FrameStats {
        frames: done.frames,
        data_bytes: done.data_bytes,
        wire_bytes: done.wire_bytes,
        checksums: done.checksums,
        ..FrameStats::default()
    });
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::entry::{Entry, EntryKind, Meta};

    #[test]
    fn a_shut_connection_is_told_apart_by_errno_or_by_kind_and_other_failures_are_not() {
        let io = |source: std::io::Error| Error::Io {
            context: "receiving".into(),
            source,
        };
        let errno = |n| io(std::io::Error::from_raw_os_error(n));
        let kind = |k: std::io::ErrorKind| io(k.into());
        for e in [
            Error::PeerLost("gone".into()),
            errno(libc::EPIPE),
            errno(libc::ECONNRESET),
            errno(libc::ENOTCONN),
            errno(libc::ESHUTDOWN),
            kind(std::io::ErrorKind::ConnectionReset),
            kind(std::io::ErrorKind::BrokenPipe),
        ] {
            assert!(connection_shut(&e), "{e}");
        }
        for e in [
            errno(libc::ENOSPC),
            errno(libc::EIO),
            Error::Corrupt("a bad frame".into()),
        ] {
            assert!(!connection_shut(&e), "{e}");
        }
    }

    /// A committing receiver's table for one large file of `size` bytes (entry 1), at `dir`.
    fn table_of_one_file(dir: &std::path::Path, size: u64) -> RecvTable {
        let open = || {
            rustix::fs::open(
                dir,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap()
        };
        let entry = |parent, name: &[u8], kind| Entry {
            parent: EntryId(parent),
            name: name.to_vec(),
            kind,
            meta: Meta::default(),
            xattrs: vec![],
        };
        let entries = vec![
            entry(0, b"", EntryKind::Dir),
            entry(0, b"big", EntryKind::File { size }),
        ];
        RecvTable {
            root: open(),
            paths: crate::tree::entry::relative_paths(&entries),
            entries,
            need: vec![Need::Nothing, Need::Full],
            deltas: HashMap::new(),
            owners: false,
            fresh_dir: vec![false; 2],
            claims: super::super::claims::Claims::new([1]),
            files: HashMap::new(),
            remaining: [(1, AtomicU64::new(size))].into_iter().collect(),
            expected: [(1, size)].into_iter().collect(),
            frame_budget: AtomicU64::new(u64::MAX),
            creator: (0, 0),
            umask: 0o022,
            skip: vec![false; 2],
            journal: open(),
            checkpoint_bytes: 1 << 20,
            checked: super::super::checked::Checked::off(),
            syncs: Arc::default(),
            held: Default::default(),
        }
    }

    fn done(written: u64, claimed: &[(u64, u64)]) -> ShareDone {
        ShareDone {
            written: vec![(1, written)],
            claimed: vec![(1, claimed.to_vec())],
            ..ShareDone::default()
        }
    }

    #[test]
    fn bytes_a_write_place_received_that_were_received_here_too_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let t = table_of_one_file(d.path(), 300);
        // This receiver's own worker took the first 100 bytes.
        assert!(t.claims.claim(EntryId(1), 0, 100));
        let mut all = FrameStats::default();
        let err = fold(&t, done(100, &[(50, 100)]), &mut all).unwrap_err();
        assert!(err.to_string().contains("received elsewhere too"), "{err}");
        let err = fold(&t, done(100, &[(100, 50)]), &mut all).unwrap_err();
        assert!(err.to_string().contains("do not add up"), "{err}");
        // Its own 200 bytes finish the file (100 came here): the fold reports it finished.
        assert!(fold(&t, done(200, &[(100, 200)]), &mut all).is_ok());
    }

    #[test]
    fn every_worker_has_exactly_one_write_place_and_each_place_a_contiguous_run() {
        for workers in 1..=12u16 {
            for places in 1..=5usize {
                let mut seen = Vec::new();
                for p in 0..places {
                    let at = workers_at(p, workers, places);
                    assert!(at.windows(2).all(|w| w[1] == w[0] + 1), "{at:?}");
                    seen.extend(at);
                }
                seen.sort_unstable();
                assert_eq!(seen, (0..workers).collect::<Vec<_>>());
            }
        }
        assert_eq!(workers_at(0, 4, 2), vec![0, 1]);
        assert_eq!(workers_at(1, 4, 2), vec![2, 3]);
    }
}
