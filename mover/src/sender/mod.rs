//! `mover send`: walk the source, negotiate with the receiver, learn what it needs, then stream
//! the data over one connection per pinned worker and commit with the tree hash.

pub(crate) mod extents;
pub(crate) mod hints;
pub(crate) mod list;
pub(crate) mod manifest;
pub(crate) mod pin;
pub use pin::MAX_PINS;
pub mod plan;
pub mod pool;
pub mod shard;
pub(crate) mod worker;

use crate::engine::content_digest;
use crate::engine::{join_workers_ranked, FrameStats};
use crate::error::{show, Error, IoContext, Result};
use crate::job::Progress;
use crate::transport::select::{self, Used};
use crate::transport::tcp::TcpTransport;
use crate::transport::Transport;
use crate::tree::entry::EntryKind;
use crate::tree::hash::{tree_hash, HashOptions};
use crate::tree::walk::{FileId, Known};
use crate::units::{EntryId, SessionId, WorkerIndex};
use crate::wire::codec::Enc;
use crate::wire::frame::FrameKind;
use crate::wire::io::{write_frame, Link};
use crate::wire::message::is_inline;
use crate::wire::message::software_version;
use crate::wire::message::{
    decode_need, decode_need_sparse, encode_expect, encode_hint, encode_worker_done, hint_len,
    Commit, ErrorCode, Hello, HelloAck, Need, Role, Verified, CAP_BLOCK_HASHES, CAP_OWNERS,
    CAP_RDMA, CAP_RESUME_RANGES, CAP_SEALED, CAP_USER_XATTRS, MAX_EXPECT_RECORDS, MAX_WORKERS,
    PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN,
};
use crate::wire::seal::{SessionSecret, CONTROL_CONN};
use crate::wire::WireError;
use hints::{build_manifest, carried_hashes, hash_files, plan_hints, Planned};
use list::{ListOut, ENTRIES_FRAME_BYTES};
use manifest::Manifest;
pub use manifest::ManifestCache;
use plan::{data_regions, plan, FileToSend};
use serde::Serialize;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use worker::{SendTable, SendWorker};

/// How long the sender waits on the control connection (the receiver's apply phase and final
/// verification of a large tree can take a while).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(3600);
/// After a data connection failed, how long to wait for the receiver's explanation.
const PEER_REASON_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct SendOptions {
    pub src: PathBuf,
    pub to: SocketAddr,
    pub threads: usize,
    /// Use O_DIRECT for large files where the file system allows it.
    pub direct: bool,
    /// The stream's state directory (holds the manifest of the receiver's recovery point);
    /// without it every job compares by size and mtime only and resends changed files whole.
    pub state: Option<PathBuf>,
    /// How the job gets one point in time of the source (None: btrfs snapshot where the
    /// source is a subvolume, else plain).
    pub snapshot: Option<crate::snapshot::Provider>,
    /// The session id to use: a one-time ticket from a daemon-run receiver (which accepts only
    /// the ids it issued); `None` picks a random one.
    pub session: Option<SessionId>,
    /// Numeric owners to replicate as other ids (the target's users differ).
    pub id_map: Option<IdMap>,
    /// The secret shared with the receiver for this session: every frame after the Hello is
    /// sealed with it (AES-256-GCM), and the Hello carries only its handle. `None` sends in
    /// clear, which a receiver accepts only when it too was told to (`insecure_plaintext`).
    pub secret: Option<SessionSecret>,
    /// Files (relative paths) to copy aside before the walk and read from the copy: those a
    /// failed session named in `Error::SourceChanged` (plain provider only; `pin::MAX_PINS`).
    pub pin: Vec<Vec<u8>>,
    /// The directories that changed since the last job that succeeded (a watcher's report):
    /// the walk then reads only those and takes the rest from that job's list, kept in the
    /// manifest. None, or a job that cannot narrow (no matching manifest, Reflink snapshots,
    /// hard links, an id map), walks the whole tree. The set must be complete: what it does
    /// not name is not looked at.
    pub changed: Option<crate::tree::narrow::ChangedDirs>,
    /// The stream's manifest kept in memory between jobs and saved in the background (one
    /// cache per state directory); None reads and writes it on the job's path.
    pub cache: Option<Arc<ManifestCache>>,
    /// Other nodes that take a share of the session's workers (`shard`): they read the source
    /// at the same path, so it must be on a file system they share. None: every worker here.
    pub spread: Option<Arc<dyn shard::Spread>>,
    /// The receiver's other write places (`receiver::share`), as its ticket named them:
    /// worker `i` of `n` connects to place `write_place(i, n, write_places.len() + 1)`, place
    /// 0 being `to`. Empty: every worker connects to `to`.
    pub write_places: Vec<SocketAddr>,
}

/// Where worker `i` of a session of `n` workers connects: `to`, or the write place its index
/// falls to.
pub(crate) fn worker_to(
    to: SocketAddr,
    write_places: &[SocketAddr],
    i: usize,
    n: usize,
) -> SocketAddr {
    // No places, or a worker count that cannot be right (a shard from an older release
    // carries none): every worker to `to`, whose receiver refuses what it does not serve.
    if write_places.is_empty() || i >= n {
        return to;
    }
    match crate::wire::message::write_place(i, n, write_places.len() + 1) {
        0 => to,
        k => write_places.get(k - 1).copied().unwrap_or(to),
    }
}

/// Source id -> target id, for uids and gids; an id not listed is sent as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct IdMap {
    pub uid: std::collections::HashMap<u32, u32>,
    pub gid: std::collections::HashMap<u32, u32>,
}

impl IdMap {
    /// Rewrites the owners of walked entries; the tree hash both sides verify is then the
    /// mapped tree's.
    pub fn apply(&self, entries: &mut [crate::tree::entry::Entry]) {
        for e in entries {
            if let Some(&u) = self.uid.get(&e.meta.uid) {
                e.meta.uid = u;
            }
            if let Some(&g) = self.gid.get(&e.meta.gid) {
                e.meta.gid = g;
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SendReport {
    pub session: String,
    pub entries: u64,
    /// Files whose data was sent.
    pub files: u64,
    /// File data bytes sent.
    pub bytes: u64,
    /// Bytes the sender put on the wire (frames, handshakes, entry list).
    pub wire_bytes: u64,
    pub seconds: f64,
    pub files_total: u64,
    pub bytes_total: u64,
    pub files_unchanged: u64,
    pub threads: usize,
    pub tree_hash: String,
    pub receiver_version: String,
    /// Large files sent as block deltas, and renames sent instead of data.
    pub files_delta: u64,
    pub renames: u64,
    /// The manifest matched the receiver's recovery point and hints were sent.
    pub incremental: bool,
    /// The receiver continued an interrupted job.
    pub resumed: bool,
    /// The recovery point the receiver committed.
    pub recovery_point: String,
    /// Sessions it took (1 unless a connection failed and the job was retried).
    pub attempts: u32,
    /// How the point in time was taken.
    pub snapshot: crate::snapshot::Provider,
    /// Source bytes read to find which blocks of changed files changed (btrfs extent sharing
    /// with the previous job's snapshot avoids most of them).
    pub hashed_bytes: u64,
    /// The session's frames were sealed (encrypted and authenticated).
    pub encrypted: bool,
    /// File bytes read through the page cache (data found there, or small files), and read
    /// from the device with O_DIRECT (large files' ranges that were not cached).
    pub read_buffered_bytes: u64,
    pub read_direct_bytes: u64,
    /// The entry list went as a delta against the receiver's recovery point's list.
    pub delta_list: bool,
    /// Entries the delta put or replaced (0 when the whole list was sent).
    pub list_changed: u64,
    /// The walk read only the changed directories (`SendOptions::changed`).
    pub walk_narrowed: bool,
    /// Entries the walk read from the file system (every one unless narrowed).
    pub walk_fresh: u64,
    /// What the session's worker connections used ("tcp" or "rdma"), as negotiated in the
    /// Hello (after an RDMA failure the retried session uses TCP).
    pub transport: Used,
}

/// Who this session is to the receiver: the id its Hellos carry, and the secret its frames are
/// sealed with (None: in clear).
#[derive(Clone)]
struct Identity {
    session: SessionId,
    secret: Option<SessionSecret>,
}

fn hello(id: &Identity, role: Role, rdma: bool) -> Vec<u8> {
    let sealed = if id.secret.is_some() { CAP_SEALED } else { 0 };
    let rdma = if rdma { CAP_RDMA } else { 0 };
    Hello {
        min_version: PROTOCOL_VERSION_MIN,
        max_version: PROTOCOL_VERSION_MAX,
        software: software_version().to_string(),
        capabilities: CAP_OWNERS
            | CAP_USER_XATTRS
            | CAP_RESUME_RANGES
            | CAP_BLOCK_HASHES
            | sealed
            | rdma,
        session: id.session,
        role,
    }
    .encode()
}

/// Opens one connection of the session: Hello in clear, then a link sealed with the session's
/// secret (if any) on which the receiver's HelloAck is the first frame. Where both sides
/// offered RDMA, a worker connection then moves onto a queue pair set up over it.
fn connect(
    transport: &dyn Transport,
    to: SocketAddr,
    id: &Identity,
    role: Role,
    planned: Option<&select::DeviceSpec>,
    wire: &mut u64,
) -> Result<(Link, HelloAck, Used)> {
    let mut c = transport
        .connect(to)
        .ctx(|| format!("connecting to receiver at {to}"))?;
    c.set_timeout(Some(CONTROL_TIMEOUT))
        .ctx(|| "socket timeout".to_string())?;
    let policy = transport.rdma();
    let offer = match policy {
        Some(p) => p
            .offer_for(select::local_ip(&*c), planned)
            .map_err(|e| Error::Unsupported(e.to_string()))?,
        None => None,
    };
    *wire += write_frame(&mut *c, FrameKind::Hello, &hello(id, role, offer.is_some()))?;
    let conn_no = match role {
        Role::Control { .. } => CONTROL_CONN,
        Role::Worker { index } => u32::from(index.0),
    };
    let mut link = match &id.secret {
        Some(s) => Link::sealed(c, s, true, conn_no),
        None => Link::plain(c),
    };
    let mut buf = Vec::new();
    link.expect_frame(FrameKind::HelloAck, &mut buf)?;
    let ack = HelloAck::decode(&buf)?;
    if let Some(why) = crate::compat::refuse_peer(software_version(), &ack.software, "receiver") {
        return Err(Error::Refused {
            code: ErrorCode::Version,
            message: why,
        });
    }
    if (ack.capabilities & CAP_SEALED != 0) != id.secret.is_some() {
        return Err(WireError::BadField {
            field: "HelloAck sealed capability (the receiver answered another kind of session)",
        }
        .into());
    }
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&ack.version) {
        return Err(WireError::VersionMismatch {
            peer_min: ack.version,
            peer_max: ack.version,
            ours_min: PROTOCOL_VERSION_MIN,
            ours_max: PROTOCOL_VERSION_MAX,
        }
        .into());
    }
    let choice = policy.map_or(select::Choice::Tcp, |p| p.choice);
    let used = select::settle(choice, offer.is_some(), ack.capabilities & CAP_RDMA != 0)
        .map_err(|e| Error::Unsupported(e.to_string()))?;
    if let (Used::Rdma, Role::Worker { .. }, Some(port), Some(p)) = (used, role, &offer, policy) {
        link.conn = select::upgrade(&*link.conn, port, Some(p.failure_flag()))
            .ctx(|| format!("setting up RDMA on {}:{}", port.device, port.port))?;
    }
    Ok((link, ack, used))
}

/// One worker connection of a session: connect, send the worker's units, WorkerDone.
fn run_worker(
    transport: &dyn Transport,
    to: SocketAddr,
    id: &Identity,
    index: WorkerIndex,
    place: &crate::engine::WorkerPlace,
    worker: SendWorker,
) -> Result<FrameStats> {
    let mut w = 0;
    let (mut link, ..) = connect(
        transport,
        to,
        id,
        Role::Worker { index },
        place.rdma.as_ref(),
        &mut w,
    )?;
    link.conn
        .set_timeout(None)
        .ctx(|| "socket timeout".to_string())?;
    let mut stats = worker.run(&mut link)?;
    stats.wire_bytes += w + link.write_frame(
        FrameKind::WorkerDone,
        &encode_worker_done(stats.frames, stats.data_bytes),
    )?;
    // The connection closes when this returns: WorkerDone must have left by then.
    link.conn
        .flush_sent()
        .ctx(|| "sending the worker's last frame".to_string())?;
    Ok(stats)
}

/// One other place's share of a session (place `k + 1`).
struct PlaceShare {
    k: usize,
    spread: Arc<dyn shard::Spread>,
    table: Arc<SendTable>,
    src: PathBuf,
    root: PathBuf,
    session: SessionId,
    secret: Option<SessionSecret>,
    to: SocketAddr,
    /// The receiver's other write places, and the session's worker count.
    write_places: Vec<SocketAddr>,
    n: usize,
    direct: bool,
    workers: Vec<(u16, Vec<plan::Unit>)>,
    share: Option<u64>,
}

/// Publishes a place's plan on the shared source, has the session's `Spread` run it there and
/// collects its result (the place's failure is this session's lost peer).
fn run_place(p: PlaceShare) -> Result<FrameStats> {
    let k = p.k;
    let shared = p.spread.source().unwrap_or_else(|| p.src.clone());
    let mut r = shard::publish(
        &p.src,
        &shared,
        p.session,
        p.secret.as_ref(),
        p.to,
        k + 1,
        &p.root,
        p.direct,
        p.workers,
        &p.table,
        p.share,
    )?;
    r.write_places = p.write_places;
    r.session_workers = p.n as u16;
    let ran = p.spread.run(k, r.clone());
    match ran.and_then(|()| shard::collect(&r)) {
        Ok(stats) => Ok(stats),
        // Another node's failure is this session's lost peer: retried, and
        // the receiver resumes from what is durable.
        Err(e) => {
            shard::forget(&r);
            Err(match e {
                Error::PeerLost(_) => e,
                e => Error::PeerLost(format!("place {}: {e}", k + 1)),
            })
        }
    }
}

/// One session over TCP.
pub fn send(opts: &SendOptions, progress: &Arc<Progress>) -> Result<SendReport> {
    let tcp: Arc<dyn Transport> = Arc::new(TcpTransport);
    send_over(opts, progress, &tcp)
}

/// One session over `transport`: walk, handshake, entry list and hints, need list, Expect, the
/// workers' data, Commit, and the manifest of the recovery point the receiver verified.
pub fn send_over(
    opts: &SendOptions,
    progress: &Arc<Progress>,
    transport: &Arc<dyn Transport>,
) -> Result<SendReport> {
    let start = Instant::now();
    let source_time_ns = crate::clock::now_ns();
    crate::engine::raise_fd_limit();
    // With other places, each runs `per_place` workers of the session.
    let per_place = opts.threads.clamp(1, MAX_WORKERS as usize);
    let others = opts.spread.as_ref().map_or(0, |s| {
        s.places()
            .min(shard::MAX_PLACES)
            .min(MAX_WORKERS as usize / per_place - 1)
    });
    let threads = per_place * (1 + others);
    if others > 0 {
        shard::shards_dir(&opts.src)?;
    }
    let provider = opts
        .snapshot
        .unwrap_or_else(|| crate::snapshot::auto(&opts.src));
    let mut frozen = crate::snapshot::freeze(&opts.src, provider)?;
    let id = Identity {
        session: match (&opts.secret, opts.session) {
            (Some(secret), _) => secret.handle(),
            (None, Some(s)) => s,
            (None, None) => SessionId::random().ctx(|| "random session id".to_string())?,
        },
        secret: opts.secret.clone(),
    };
    let session = id.session;
    let mut wire = 0u64;
    // Connected before the walk: the entry list goes out while the walk runs.
    let (mut ctl, ack, used) = connect(
        &**transport,
        opts.to,
        &id,
        Role::Control {
            workers: threads as u16,
        },
        None,
        &mut wire,
    )?;
    let owners = ack.capabilities & CAP_OWNERS != 0;
    let root = crate::beneath::open_root(&frozen.root, "source directory")?;
    // Files that changed while the last session read them are copied aside first.
    let pinned = match provider {
        crate::snapshot::Provider::Plain => pin::pin(root.as_fd(), &opts.pin)?,
        _ => None,
    };
    let rp_now = ack.recovery_point;
    let mut manifest: Option<Arc<Manifest>> = match (&opts.state, &opts.cache) {
        (Some(dir), Some(cache)) => cache.load(dir, rp_now)?.filter(|m| m.rp != 0),
        (Some(dir), None) => Manifest::load(dir)?
            .filter(|m| m.rp != 0 && m.rp == rp_now)
            .map(Arc::new),
        (None, _) => None,
    };
    tracing::debug!(
        items = manifest.as_ref().map_or(0, |m| m.items.len()),
        secs = start.elapsed().as_secs_f64(),
        "manifest loaded"
    );
    // The list travels as a delta if the receiver still keeps the list the manifest recorded.
    let delta = match &manifest {
        Some(m) if !m.entries.is_empty() && m.list_digest != 0 => {
            list::offer_base(&mut ctl, m, &mut wire)?
        }
        _ => false,
    };
    let mut out = ListOut::new(
        manifest
            .as_ref()
            .filter(|_| delta)
            .map(|m| m.entries.as_slice()),
    );
    // What the manifest knows of an item whose inode did not change since (xattrs, a
    // symlink's target) is not read again.
    let known = |path: &[u8], id: &FileId, tag: u8| -> Option<Known> {
        if let Some(k) = pinned.as_ref().and_then(|p| p.known(path)) {
            return Some(k);
        }
        let m = manifest.as_ref()?;
        let k = m.position(path)?;
        let it = &m.items[k];
        // The device is left out: a btrfs snapshot is a new one each job with the same inodes.
        let same = it.kind == tag
            && it.ino == id.ino
            && it.btime == id.btime
            && it.ctime == (id.ctime_sec, id.ctime_nsec);
        let e = m.entry_of(k).filter(|_| same)?;
        Some(Known {
            stat: None,
            xattrs: e.xattrs.clone(),
            target: match &e.kind {
                EntryKind::Symlink { target } => Some(target.clone()),
                _ => None,
            },
        })
    };
    let narrowed = match (
        &opts.changed,
        manifest.as_deref().and_then(Manifest::previous),
    ) {
        // A Reflink freeze clones the whole tree anyway; the manifest's entries went through
        // the id map of their job, which it does not record, so a job with a map (which could
        // have changed since) walks the whole tree.
        (Some(changed), Some(prev))
            if provider != crate::snapshot::Provider::Reflink && opts.id_map.is_none() =>
        {
            crate::tree::narrow::narrow(root.as_fd(), &prev, changed, true, Some(&known))?
        }
        _ => None,
    };
    let (mut walked, walk_fresh) = match narrowed {
        Some(n) => {
            let fresh = n.fresh_count();
            out.push(&n.walked.entries, &mut ctl)?;
            (n.walked, Some(fresh))
        }
        None => {
            let w = crate::tree::walk::walk_fd_streaming(
                root.as_fd(),
                true,
                Some(&known),
                &mut |es| {
                    if let Some(m) = &opts.id_map {
                        m.apply(es);
                    }
                    out.push(es, &mut ctl)
                },
            )?;
            (w, None)
        }
    };
    let list_changed = out.finish(&mut ctl)?;
    wire += out.wire;
    if let Some(ids) = &frozen.ids {
        for (i, p) in walked.paths.iter().enumerate() {
            if let Some(id) = ids.get(p) {
                walked.ids[i] = *id;
            }
        }
    }
    // Items on the source root's own file system are keyed by inode alone: a btrfs snapshot
    // is a new device each time but keeps the live inode numbers.
    let root_dev = walked.ids[0].dev;
    for id in walked.ids.iter_mut() {
        if id.dev == root_dev {
            id.dev = 0;
        }
    }
    let stable = provider != crate::snapshot::Provider::Plain;
    let walked = walked;
    let entries = &walked.entries;
    let n_entries = entries.len();
    tracing::info!(
        entries = entries.len(),
        delta = delta,
        narrowed = walk_fresh.is_some(),
        fresh = walk_fresh.unwrap_or(entries.len()),
        secs = start.elapsed().as_secs_f64(),
        "walked source and sent the entry list"
    );
    let base = manifest
        .as_ref()
        .and_then(|m| m.base_snapshot.as_deref())
        .filter(|_| provider == crate::snapshot::Provider::Btrfs)
        .and_then(|name| {
            crate::beneath::open_root(
                &crate::snapshot::kept_path(&opts.src, name),
                "base snapshot",
            )
            .ok()
        });
    let planned = match &manifest {
        Some(m) => plan_hints(
            &walked,
            m,
            root.as_fd(),
            threads,
            stable,
            base.as_ref().map(|b| b.as_fd()),
        )?,
        None => Planned {
            old: vec![None; entries.len()],
            ..Default::default()
        },
    };
    tracing::info!(
        hints = planned.hints.len(),
        secs = start.elapsed().as_secs_f64(),
        "hints planned"
    );
    let blocks = if ack.capabilities & CAP_BLOCK_HASHES != 0 {
        let b = hints::block_hints(
            &walked,
            manifest.as_deref(),
            &planned,
            root.as_fd(),
            threads,
            stable,
        )?;
        tracing::info!(
            hints = b.len(),
            secs = start.elapsed().as_secs_f64(),
            "block hashes for a repairing receiver"
        );
        b
    } else {
        Vec::new()
    };
    let planned_renames = planned
        .hints
        .iter()
        .filter(|h| matches!(h, crate::wire::message::Hint::Rename { .. }))
        .count() as u64;

    let mut enc = Enc::new();
    for h in planned.hints.iter().chain(&blocks) {
        if !enc.buf.is_empty() && enc.buf.len() + hint_len(h) > ENTRIES_FRAME_BYTES {
            wire += ctl.write_frame(FrameKind::Hints, &enc.buf)?;
            enc.buf.clear();
        }
        encode_hint(&mut enc, h);
    }
    if !enc.buf.is_empty() {
        wire += ctl.write_frame(FrameKind::Hints, &enc.buf)?;
    }
    wire += ctl.write_frame(FrameKind::EntriesEnd, &(entries.len() as u64).to_le_bytes())?;

    let need = read_need(&mut ctl, entries.len())?;
    let mut rests = if need.contains(&Need::Rest) {
        if ack.capabilities & CAP_RESUME_RANGES == 0 {
            return Err(WireError::BadField {
                field: "need list asks for the rest of a file without CAP_RESUME_RANGES",
            }
            .into());
        }
        read_rest(&mut ctl, &need, entries)?
    } else {
        std::collections::HashMap::new()
    };
    tracing::info!(secs = start.elapsed().as_secs_f64(), "need list received");
    let mut files = Vec::new();
    let (mut files_total, mut bytes_total, mut files_delta) = (0u64, 0u64, 0u64);
    for (i, e) in entries.iter().enumerate() {
        let EntryKind::File { size } = e.kind else {
            continue;
        };
        files_total += 1;
        bytes_total += size;
        let regions = match need[i] {
            Need::Nothing => continue,
            Need::Delta => {
                files_delta += 1;
                planned.deltas.get(&i).cloned().ok_or(WireError::BadField {
                    field: "delta need for a file without a delta hint",
                })?
            }
            Need::Rest => rests.remove(&i).ok_or(WireError::BadField {
                field: "rest need without its ranges",
            })?,
            Need::Full if is_inline(size) || size == 0 => vec![(0, size)],
            Need::Full => {
                let p = &walked.paths[i];
                let fd = crate::beneath::open_file(
                    root.as_fd(),
                    p,
                    rustix::fs::OFlags::RDONLY,
                    rustix::fs::Mode::empty(),
                )
                .ctx(|| format!("opening {}", show(p)))?;
                data_regions(fd.as_fd(), size)
                    .ctx(|| format!("finding data regions of {}", show(p)))?
            }
        };
        if need[i] == Need::Delta && is_inline(size) {
            return Err(WireError::BadField {
                field: "delta need for a small file",
            }
            .into());
        }
        files.push(FileToSend {
            entry: EntryId(i as u32),
            size,
            regions,
        });
    }
    let expect: Vec<(EntryId, u64)> = files
        .iter()
        .filter(|f| !is_inline(f.size))
        .map(|f| (f.entry, f.regions.iter().map(|r| r.1).sum()))
        .collect();
    let chunks: Vec<&[(EntryId, u64)]> = if expect.is_empty() {
        vec![&[][..]]
    } else {
        expect.chunks(MAX_EXPECT_RECORDS).collect()
    };
    for (k, c) in chunks.iter().enumerate() {
        wire += ctl.write_frame(FrameKind::Expect, &encode_expect(k + 1 == chunks.len(), c))?;
    }
    let sent_files = files.len() as u64;
    let send_bytes: u64 = files
        .iter()
        .map(|f| {
            if is_inline(f.size) {
                f.size
            } else {
                f.regions.iter().map(|r| r.1).sum()
            }
        })
        .sum();
    progress.set_totals(sent_files, send_bytes);
    // A large file with no byte to send (all holes; a delta or a resumed file with no range
    // left) has no unit to count it when sent: it is done now.
    let no_data = files
        .iter()
        .filter(|f| !is_inline(f.size) && f.regions.iter().all(|r| r.1 == 0))
        .count() as u64;
    progress.files.fetch_add(no_data, Ordering::Relaxed);
    // A job that needs no data opens no worker connection (the receiver expects none).
    let plans = if need.iter().all(|n| *n == Need::Nothing) {
        Vec::new()
    } else {
        plan(&files, threads)
    };
    let is_pinned = |p: &[u8]| pinned.as_ref().is_some_and(|x| x.files.contains_key(p));
    let table = Arc::new(SendTable {
        root,
        // A pinned file is read from its copy.
        paths: walked
            .paths
            .iter()
            .map(|p| match pinned.as_ref().and_then(|x| x.files.get(p)) {
                Some(pin) => pin.at.clone(),
                None => p.clone(),
            })
            .collect(),
        sizes: entries
            .iter()
            .map(|e| {
                if let EntryKind::File { size } = e.kind {
                    size
                } else {
                    0
                }
            })
            .collect(),
        stamps: if stable {
            Vec::new()
        } else {
            // A pinned file is read from its copy, which nothing writes.
            (0..walked.entries.len())
                .map(|i| {
                    let file = matches!(walked.entries[i].kind, EntryKind::File { .. });
                    (file && !is_pinned(&walked.paths[i])).then(|| walked.stamp(i))
                })
                .collect()
        },
    });
    // The job's bandwidth limit is split evenly between the places (this one included) for
    // the session, and given back after it unless someone changed it meanwhile.
    let job_rate = progress.control.rate();
    let share = job_rate
        .filter(|_| others > 0)
        .map(|r| (r / (1 + others) as u64).max(1));
    if share.is_some() {
        progress.control.set_rate(share);
    }
    let places = crate::engine::worker_places(per_place, Some(&opts.src));
    let mut handles = Vec::new();
    let mut shards: Vec<Vec<(u16, Vec<plan::Unit>)>> = vec![Vec::new(); others];
    // Files a worker here reads whole and checks once read (SendWorker::check_batch).
    let mut read_whole = vec![false; if stable { 0 } else { walked.entries.len() }];
    let mut local: Vec<(usize, SocketAddr)> = Vec::new();
    let mut spans: Vec<(SocketAddr, Vec<plan::Unit>)> = Vec::new();
    for (i, units) in plans.into_iter().enumerate() {
        let at = shard::place_of(i, per_place);
        if at > 0 {
            shards[at - 1].push((i as u16, units));
            continue;
        }
        for u in &units {
            if let plan::Unit::Batch { files } = u {
                // An empty file has no read, so no check by the worker: the pass stats it.
                for (e, size) in files {
                    if *size > 0 && table.stamps.get(e.index()).is_some_and(Option::is_some) {
                        read_whole[e.index()] = true;
                    }
                }
            }
        }
        let to = worker_to(opts.to, &opts.write_places, i, threads);
        local.push((i, to));
        spans.push((to, units));
    }
    // This place's workers to the same write place share their units: one that ends early
    // takes over the rest of a slower one's span (`sender::pool`).
    let pools = pool::pools_by_destination(spans);
    // A worker or a place that fails ends the session at once (below), rather than when every
    // other worker is done or the receiver gives up waiting for connections that will not
    // come (a worker whose connection was refused leaves the others blocked on the receiver,
    // which holds a session's connections until all have arrived).
    let (failing, failures) = std::sync::mpsc::channel::<()>();
    // The handle of the local worker that failed first: its error is the cause, and the
    // others' (their connections dropped when the session ends) only echo it.
    let first_failed = Arc::new(crate::engine::FirstFailure::default());
    for ((i, to), (pool, slot)) in local.into_iter().zip(pools) {
        let (transport, id) = (transport.clone(), id.clone());
        let (failed, first, handle) = (failing.clone(), first_failed.clone(), handles.len());
        let place = places.get(i).cloned().unwrap_or_default();
        let worker = SendWorker {
            cpu: place.cpu,
            table: table.clone(),
            pool,
            slot,
            direct: opts.direct,
            progress: progress.clone(),
            hash_blocks: opts.state.is_some(),
        };
        let h = std::thread::Builder::new()
            .name(format!("mover-send-{i}"))
            .spawn(move || {
                let r = run_worker(&*transport, to, &id, WorkerIndex(i as u16), &place, worker);
                let r = first.noted(handle, r);
                if r.is_err() {
                    let _ = failed.send(());
                }
                r
            })
            .ctx(|| "spawning sender worker".to_string())?;
        handles.push(h);
    }
    // Each other place's plan goes out as a file on the shared source; a thread per place
    // waits for it as for a worker.
    if let Some(spread) = &opts.spread {
        for (k, workers) in shards.into_iter().enumerate() {
            if workers.is_empty() {
                continue;
            }
            let (spread, table, src, root) = (
                spread.clone(),
                table.clone(),
                opts.src.clone(),
                frozen.root.clone(),
            );
            let (secret, to, direct) = (opts.secret.clone(), opts.to, opts.direct);
            let write_places = opts.write_places.clone();
            let failed = failing.clone();
            let h = std::thread::Builder::new()
                .name(format!("mover-place-{}", k + 1))
                .spawn(move || {
                    let r = run_place(PlaceShare {
                        k,
                        spread,
                        table,
                        src,
                        root,
                        session,
                        secret,
                        to,
                        write_places,
                        n: threads,
                        direct,
                        workers,
                        share,
                    });
                    if r.is_err() {
                        let _ = failed.send(());
                    }
                    r
                })
                .ctx(|| "spawning a place's waiter".to_string())?;
            handles.push(h);
        }
    }
    drop(failing);
    // Returns when a worker or a place failed, or when every one is done. Half-closed, the
    // control connection tells the receiver the session is over (it drops the session's
    // connections, so the workers here stop too) while the receiver's explanation of a
    // failure of its own can still be read.
    if failures.recv().is_ok() {
        if let Ok(Some(s)) = ctl.conn.tcp_stream() {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
    }
    // Among errors of one rank the first handle's wins: the first local failure goes first.
    first_failed.put_first(&mut handles);
    // A spread session that failed because of a place says so: a node gone or unable to
    // read the source first, then a failed share; the errors of the workers the ended
    // session stopped (here and at other places) only echo it.
    let joined = join_workers_ranked(handles, "sender", |e| match e {
        Error::PeerLost(m) if m.starts_with("node ") && !m.contains("'s shard failed") => 2,
        Error::PeerLost(m) if m.starts_with("node ") => 1,
        _ => 0,
    });
    if share.is_some() && progress.control.rate() == share {
        progress.control.set_rate(job_rate);
    }
    tracing::info!(secs = start.elapsed().as_secs_f64(), "workers done");
    let mut all = match joined {
        Ok(all) => all,
        Err(e) => return Err(explain_worker_failure(e, &mut ctl)),
    };
    wire += all.wire_bytes;
    if !stable {
        check_unchanged(
            table.root.as_fd(),
            &walked,
            &need,
            &is_pinned,
            &read_whole,
            &all.changed,
        )?;
    }
    // The digest names this list as the base of the next job's delta.
    let digest = tree_hash(entries, HashOptions { owners: true });
    let th = if owners {
        digest
    } else {
        tree_hash(entries, HashOptions { owners })
    };
    let commit = Commit {
        tree_hash: th,
        content_digest: content_digest(&mut all.checksums),
        data_frames: all.frames,
        data_bytes: all.data_bytes,
        source_time_ns,
    };
    wire += ctl.write_frame(FrameKind::Commit, &commit.encode())?;
    let mut buf = Vec::new();
    ctl.expect_frame(FrameKind::Verified, &mut buf)?;
    let v = Verified::decode(&buf)?;
    if !v.ok || v.tree_hash != th {
        return Err(Error::Verify(format!(
            "receiver did not verify the tree: {}",
            v.message
        )));
    }
    tracing::debug!(secs = start.elapsed().as_secs_f64(), "receiver verified");
    let hashed_bytes = planned.hashed_bytes;
    let incremental = manifest.is_some();
    if let Some(dir) = &opts.state {
        // A btrfs snapshot outlives the job as the next job's base; the previous base goes.
        let kept = frozen.keep();
        let old_base = manifest.as_ref().and_then(|m| m.base_snapshot.clone());
        drop(base);
        let streamed = streamed_hashes(&files, std::mem::take(&mut all.block_hashes));
        let next = next_manifest(
            &walked,
            &table.root,
            manifest.as_deref(),
            planned,
            &need,
            streamed,
            v.recovery_point,
            threads,
            stable,
            kept.clone(),
            digest,
            list_changed == Some(0)
                && manifest
                    .as_ref()
                    .is_some_and(|m| m.entries.len() == entries.len()),
        );
        // The list moves into the manifest (not copied: it is the size of the tree).
        let next = next.map(|m| {
            m.map(|mut m| {
                m.entries = walked.entries;
                m
            })
        });
        tracing::debug!(secs = start.elapsed().as_secs_f64(), "manifest built");
        let rp = v.recovery_point;
        // With a cache the manifest is the next job's at once and reaches the disk in the
        // background; without, it is written now.
        let saved = next.and_then(|next| match (next, manifest.take(), &opts.cache) {
            (Some(m), _, Some(c)) => c.save(dir, m),
            (Some(mut m), _, None) => m.save(dir),
            (None, Some(old), Some(c)) => c.save_head(dir, old, rp, kept.clone()),
            (None, Some(old), None) => old.save_head_as(dir, rp, kept.clone()),
            // next_manifest answers None only for an old manifest.
            (None, None, _) => Ok(()),
        });
        match (&saved, kept, old_base) {
            (Ok(()), _, Some(old)) => crate::snapshot::drop_kept(&opts.src, &old),
            (Err(_), Some(new), _) => crate::snapshot::drop_kept(&opts.src, &new),
            _ => {}
        }
        saved?;
        tracing::debug!(secs = start.elapsed().as_secs_f64(), "manifest saved");
    }
    Ok(SendReport {
        session: session.to_string(),
        entries: n_entries as u64,
        files: sent_files,
        bytes: all.data_bytes,
        wire_bytes: wire,
        seconds: start.elapsed().as_secs_f64(),
        files_total,
        bytes_total,
        files_unchanged: files_total - sent_files,
        threads,
        tree_hash: format!("{th:032x}"),
        receiver_version: ack.software,
        files_delta,
        renames: planned_renames,
        incremental,
        resumed: ack.job_pending,
        recovery_point: format!("{:032x}", v.recovery_point),
        attempts: 1,
        snapshot: provider,
        hashed_bytes,
        encrypted: opts.secret.is_some(),
        read_buffered_bytes: all.read_buffered,
        read_direct_bytes: all.read_direct,
        delta_list: list_changed.is_some(),
        transport: used,
        list_changed: list_changed.unwrap_or(0),
        walk_narrowed: walk_fresh.is_some(),
        walk_fresh: walk_fresh.unwrap_or(n_entries) as u64,
    })
}

/// Assembles the workers' per-frame block hashes into whole-file hash lists for large files
/// sent whole; blocks in holes (not sent) hash as zeros. A file with any block unaccounted for
/// is left out (it is hashed from disk instead).
fn streamed_hashes(
    files: &[FileToSend],
    frames: Vec<(EntryId, u64, Vec<u64>)>,
) -> std::collections::HashMap<usize, Vec<u64>> {
    use manifest::{zero_hash, BLOCK};
    let mut partial: std::collections::HashMap<u32, Vec<Option<u64>>> =
        std::collections::HashMap::new();
    let sizes: std::collections::HashMap<u32, &FileToSend> = files
        .iter()
        .filter(|f| !is_inline(f.size))
        .map(|f| (f.entry.0, f))
        .collect();
    for (e, first, hs) in frames {
        let Some(f) = sizes.get(&e.0) else { continue };
        let v = partial.entry(e.0).or_insert_with(|| {
            let mut v = vec![None; f.size.div_ceil(BLOCK) as usize];
            // Blocks wholly outside the data regions are holes: zeros, never sent.
            let mut covered = vec![false; v.len()];
            for &(o, l) in &f.regions {
                for k in (o / BLOCK)..(o + l).div_ceil(BLOCK) {
                    if let Some(c) = covered.get_mut(k as usize) {
                        *c = true;
                    }
                }
            }
            for (k, c) in covered.iter().enumerate() {
                if !c {
                    let len = (f.size - k as u64 * BLOCK).min(BLOCK) as usize;
                    v[k] = Some(zero_hash(len));
                }
            }
            v
        });
        for (k, h) in hs.into_iter().enumerate() {
            if let Some(slot) = v.get_mut(first as usize + k) {
                *slot = Some(h);
            }
        }
    }
    partial
        .into_iter()
        .filter_map(|(e, v)| {
            v.into_iter()
                .collect::<Option<Vec<u64>>>()
                .map(|h| (e as usize, h))
        })
        .collect()
}

/// Plain provider: a file whose size, mtime or ctime moved since the walk may have been read
/// torn. Failing before Commit keeps the receiver from making a recovery point of it; the retry
/// walks again and resends it. `read_whole` files were checked by the workers once read (their
/// findings are `found`); every other file that needed data is stat'ed here.
fn check_unchanged(
    root: std::os::fd::BorrowedFd<'_>,
    w: &crate::tree::walk::Walked,
    need: &[Need],
    pinned: &dyn Fn(&[u8]) -> bool,
    read_whole: &[bool],
    found: &[crate::units::EntryId],
) -> Result<()> {
    let mut changed: Vec<usize> = found.iter().map(|e| e.index()).collect();
    let mut dirs = crate::beneath::DirCache::default();
    for (i, e) in w.entries.iter().enumerate() {
        if !matches!(e.kind, EntryKind::File { .. }) || need[i] == Need::Nothing {
            continue;
        }
        if read_whole.get(i) == Some(&true) {
            continue;
        }
        let p = &w.paths[i];
        if pinned(p) {
            continue; // read from its copy, which nothing writes
        }
        let (dir, name) = crate::beneath::split_parent(p);
        let st = dirs
            .dir(root, dir)
            .ok()
            .and_then(|d| rustix::fs::statat(d, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).ok());
        if !st.is_some_and(|s| w.unchanged_since(i, &s)) {
            changed.push(i);
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    changed.sort_unstable();
    changed.dedup();
    let mut changed: Vec<Vec<u8>> = changed.into_iter().map(|i| w.paths[i].clone()).collect();
    let n = changed.len();
    changed.truncate(pin::MAX_PINS);
    let some: Vec<String> = changed.iter().take(5).map(|p| show(p)).collect();
    Err(Error::SourceChanged {
        message: format!(
            "{n} file(s) changed while being sent, e.g. {}",
            some.join(", ")
        ),
        paths: changed,
    })
}

/// First pause before retrying a failed session; doubles up to RETRY_BACKOFF_MAX.
pub const RETRY_BACKOFF_START: Duration = Duration::from_millis(200);
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Upper bound on `attempts` whatever the caller asks.
pub const MAX_ATTEMPTS: u32 = 100;

/// Whether a failed session is worth retrying: the network or the peer failed (the receiver
/// keeps its journal and the next session resumes), the receiver was busy, or a file changed
/// while being read. Protocol violations, verification failures, a version mismatch and a full
/// target would fail the same way again.
pub fn retryable(e: &Error) -> bool {
    match e {
        // A full target reverted the job; the same job would fill it again.
        Error::Peer { code, .. } => !matches!(code, ErrorCode::DiskFull | ErrorCode::Version),
        Error::Io { .. } | Error::PeerLost(_) | Error::SourceChanged { .. } => true,
        _ => false,
    }
}

/// Runs `send` up to `attempts` times with bounded exponential backoff between failures.
/// `on_retry(attempt, error, pause)` is told about each retry (for logs).
pub fn send_with_retry(
    opts: &SendOptions,
    progress: &Arc<Progress>,
    attempts: u32,
    on_retry: impl FnMut(u32, &Error, Duration),
) -> Result<SendReport> {
    let tcp: Arc<dyn Transport> = Arc::new(TcpTransport);
    send_with_retry_over(opts, progress, attempts, &tcp, on_retry)
}

/// `send_with_retry` over `transport`.
pub fn send_with_retry_over(
    opts: &SendOptions,
    progress: &Arc<Progress>,
    attempts: u32,
    transport: &Arc<dyn Transport>,
    on_retry: impl FnMut(u32, &Error, Duration),
) -> Result<SendReport> {
    send_with_retry_each(opts, progress, attempts, transport, |_| Ok(()), on_retry)
}

/// `send_with_retry_over`, calling `before` on the options of each session before it starts:
/// a session that needs a fresh ticket and secret (they are one-time) gets them there. An
/// error from `before` counts as the session's.
pub fn send_with_retry_each(
    opts: &SendOptions,
    progress: &Arc<Progress>,
    attempts: u32,
    transport: &Arc<dyn Transport>,
    mut before: impl FnMut(&mut SendOptions) -> Result<()>,
    mut on_retry: impl FnMut(u32, &Error, Duration),
) -> Result<SendReport> {
    let attempts = attempts.clamp(1, MAX_ATTEMPTS);
    let mut pause = RETRY_BACKOFF_START;
    let mut attempt = 1;
    let mut session = opts.clone();
    loop {
        progress.reset();
        let res = before(&mut session).and_then(|()| send_over(&session, progress, transport));
        match res {
            Ok(mut r) => {
                r.attempts = attempt;
                return Ok(r);
            }
            Err(e) if attempt < attempts && retryable(&e) => {
                if transport.rdma().is_some_and(|p| p.fell_back()) {
                    tracing::warn!("the RDMA transport failed: this job continues over TCP");
                }
                on_retry(attempt, &e, pause);
                if let Error::SourceChanged { paths, .. } = &e {
                    session.pin = paths.clone();
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(RETRY_BACKOFF_MAX);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The manifest of the recovery point the receiver just committed, but for its entry list (the
/// walk's, which the caller moves in); None if `old` (then Some) still describes it and only
/// needs a head naming that point. Block hashes come from the old
/// manifest (unchanged files), the delta pass, or are computed now for files sent whole or
/// found complete at the receiver; a file that changed since the walk gets none.
#[allow(clippy::too_many_arguments)]
fn next_manifest(
    walked: &crate::tree::walk::Walked,
    root: &std::os::fd::OwnedFd,
    old: Option<&Manifest>,
    planned: Planned,
    need: &[Need],
    streamed: std::collections::HashMap<usize, Vec<u64>>,
    rp: u128,
    threads: usize,
    stable: bool,
    base_snapshot: Option<String>,
    list_digest: u128,
    list_same: bool,
) -> Result<Option<Manifest>> {
    // Nothing changed (the list, every item's identity and times, no block hash to add): the
    // body stays, the head names the new recovery point.
    if old.is_some_and(|m| {
        list_same
            && m.list_digest == list_digest
            && planned.hashes.is_empty()
            && streamed.is_empty()
            && need.iter().all(|n| *n == Need::Nothing)
            && same_items(walked, m)
    }) {
        return Ok(None);
    }
    let mut hashes = match old {
        Some(m) => carried_hashes(walked, m, &planned.old),
        None => Default::default(),
    };
    for (i, h) in planned.hashes {
        if need[i] != Need::Full {
            hashes.insert(i, h);
        }
    }
    // Whole files sent: hashed by the workers as they went, if every block was seen.
    let streamed_ok = streamed.len();
    for (i, h) in streamed {
        if need[i] == Need::Full {
            hashes.insert(i, h);
        }
    }
    tracing::debug!(streamed_ok, "block hashes taken from the data stream");
    let todo: Vec<(usize, u64)> = walked
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e.kind {
            EntryKind::File { size }
                if !is_inline(size) && (need[i] == Need::Full || !hashes.contains_key(&i)) =>
            {
                Some((i, size))
            }
            _ => None,
        })
        .collect();
    let todo: Vec<(usize, u64)> = todo
        .into_iter()
        .filter(|(i, _)| !(need[*i] == Need::Full && hashes.contains_key(i)))
        .collect();
    hashes.extend(hash_files(root.as_fd(), walked, &todo, threads, stable)?);
    let mut m = build_manifest(walked, rp, hashes);
    m.base_snapshot = base_snapshot;
    m.list_digest = list_digest;
    Ok(Some(m))
}

/// Every item the walk makes is the manifest's, in order, with the same identity, size and
/// times, and every large file already has its block hashes.
fn same_items(w: &crate::tree::walk::Walked, m: &Manifest) -> bool {
    let mut k = 0usize;
    for (i, e) in w.entries.iter().enumerate().skip(1) {
        let size = match e.kind {
            EntryKind::HardLink { .. } => continue,
            EntryKind::File { size } => size,
            _ => 0,
        };
        let Some(it) = m.items.get(k) else {
            return false;
        };
        let id = &w.ids[i];
        let same = it.path == w.paths[i]
            && it.kind == e.kind.tag()
            && (it.dev, it.ino, it.btime) == (id.dev, id.ino, id.btime)
            && it.size == size
            && it.mtime == (e.meta.mtime_sec, e.meta.mtime_nsec)
            && it.ctime == (id.ctime_sec, id.ctime_nsec)
            && (it.hashes.is_some()
                || !matches!(e.kind, EntryKind::File { .. })
                || is_inline(size));
        if !same {
            return false;
        }
        k += 1;
    }
    k == m.items.len()
}

/// When a worker's socket failed, the receiver closed it and usually says why on the control
/// connection: prefer its message. Any other failure (source changed, unreadable file) is ours.
fn explain_worker_failure(e: Error, ctl: &mut Link) -> Error {
    let socket_failed = matches!(&e, Error::Io { context, .. } if context.starts_with("sending"));
    if socket_failed {
        let mut buf = Vec::new();
        ctl.conn.set_timeout(Some(PEER_REASON_WAIT)).ok();
        if let Err(peer @ Error::Peer { .. }) = ctl.expect_frame(FrameKind::Verified, &mut buf) {
            return peer;
        }
    }
    e
}

/// Reads the Rest frames: the ranges still needed of every `Need::Rest` file, each inside its
/// file, each file once.
fn read_rest(
    ctl: &mut Link,
    need: &[Need],
    entries: &[crate::tree::entry::Entry],
) -> Result<std::collections::HashMap<usize, Vec<(u64, u64)>>> {
    let mut out = std::collections::HashMap::new();
    let mut buf = Vec::new();
    loop {
        ctl.expect_frame(FrameKind::Rest, &mut buf)?;
        let (last, records) = crate::wire::message::decode_rest(&buf)?;
        for (e, ranges) in records {
            let i = e.index();
            let size = match entries.get(i).map(|x| &x.kind) {
                Some(EntryKind::File { size }) if need[i] == Need::Rest && !is_inline(*size) => {
                    *size
                }
                _ => {
                    return Err(WireError::BadField {
                        field: "rest ranges for an entry not resumed",
                    }
                    .into())
                }
            };
            if ranges.last().is_some_and(|&(o, l)| o + l > size) || out.insert(i, ranges).is_some()
            {
                return Err(WireError::BadField {
                    field: "rest ranges past the file or repeated",
                }
                .into());
            }
        }
        if last {
            break;
        }
    }
    if out.len() != need.iter().filter(|n| **n == Need::Rest).count() {
        return Err(WireError::BadField {
            field: "rest ranges missing for a resumed file",
        }
        .into());
    }
    Ok(out)
}

/// The receiver's need list: dense (one byte per entry, NeedList frames) or sparse (only the
/// entries that need data, NeedSparse frames), whichever it chose.
fn read_need(ctl: &mut Link, n: usize) -> Result<Vec<Need>> {
    let mut buf = Vec::new();
    let h = ctl.read_frame(&mut buf)?;
    match h.kind {
        FrameKind::NeedSparse => return read_need_sparse(ctl, n, buf),
        FrameKind::NeedList => {}
        FrameKind::Error => {
            let (code, message) = crate::wire::message::decode_error(&buf)?;
            return Err(Error::Peer { code, message });
        }
        got => {
            return Err(WireError::Unexpected {
                expected: FrameKind::NeedList,
                got,
            }
            .into())
        }
    }
    let mut need = Vec::with_capacity(n);
    loop {
        let (first, last, chunk) = decode_need(&buf)?;
        if first as usize != need.len() || need.len() + chunk.len() > n {
            return Err(WireError::BadField {
                field: "need list offset",
            }
            .into());
        }
        need.extend(chunk);
        if last {
            if need.len() != n {
                return Err(WireError::BadField {
                    field: "need list length",
                }
                .into());
            }
            return Ok(need);
        }
        ctl.expect_frame(FrameKind::NeedList, &mut buf)?;
    }
}

fn read_need_sparse(ctl: &mut Link, n: usize, mut buf: Vec<u8>) -> Result<Vec<Need>> {
    let mut need = vec![Need::Nothing; n];
    let mut next = 0usize;
    loop {
        let (last, recs) = decode_need_sparse(&buf)?;
        for (e, x) in recs {
            // Increasing entry numbers, each inside the list: every entry said at most once.
            if e.index() < next || e.index() >= n {
                return Err(WireError::BadField {
                    field: "sparse need list entry",
                }
                .into());
            }
            need[e.index()] = x;
            next = e.index() + 1;
        }
        if last {
            return Ok(need);
        }
        ctl.expect_frame(FrameKind::NeedSparse, &mut buf)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pass after the data stats every needed file the workers did not check once read.
    /// An empty file has no read, so a write into it during the job is the pass's to catch.
    #[test]
    fn the_pass_after_the_data_catches_an_empty_file_written_during_the_job() {
        let t = tempfile::tempdir().unwrap();
        for name in ["empty", "read", "pinned", "quiet"] {
            std::fs::write(t.path().join(name), b"").unwrap();
        }
        std::fs::write(t.path().join("read"), vec![1u8; 4096]).unwrap();
        let w = crate::tree::walk::walk(t.path(), false).unwrap();
        let at = |name: &[u8]| w.paths.iter().position(|p| p == name).unwrap();
        let root = std::fs::File::open(t.path()).unwrap();
        let need = vec![Need::Full; w.entries.len()];
        let read_whole: Vec<bool> = (0..w.entries.len()).map(|i| i == at(b"read")).collect();
        let pinned = |p: &[u8]| p == b"pinned";
        assert!(
            check_unchanged(root.as_fd(), &w, &need, &pinned, &read_whole, &[]).is_ok(),
            "nothing changed since the walk"
        );

        // Written after the walk: the empty file and the pinned one (read from its copy), and
        // the file a worker read whole (its own check reports it, through `found`). Each
        // grows, so its size differs from the walk's even within one timestamp tick.
        for name in ["empty", "read", "pinned"] {
            let f = std::fs::OpenOptions::new()
                .append(true)
                .open(t.path().join(name))
                .unwrap();
            std::io::Write::write_all(&mut &f, b"written during the job").unwrap();
        }
        let changed = |found: &[EntryId]| -> Vec<Vec<u8>> {
            match check_unchanged(root.as_fd(), &w, &need, &pinned, &read_whole, found) {
                Err(Error::SourceChanged { paths, .. }) => paths,
                other => panic!("expected SourceChanged, got {other:?}"),
            }
        };
        assert_eq!(changed(&[]), vec![b"empty".to_vec()]);
        let read = EntryId(at(b"read") as u32);
        assert_eq!(
            changed(&[read]),
            vec![b"empty".to_vec(), b"read".to_vec()],
            "the workers' findings are reported with the pass's, in list order"
        );

        // A file the job does not send is not the pass's concern.
        let mut need = need;
        need[at(b"empty")] = Need::Nothing;
        assert!(check_unchanged(root.as_fd(), &w, &need, &pinned, &read_whole, &[]).is_ok());
    }
}
