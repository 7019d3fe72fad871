//! `mover send`: walk the source, negotiate with the receiver, learn what it needs, then stream
//! the data over one connection per pinned worker and commit with the tree hash.

pub mod plan;
pub mod worker;

use crate::error::{show, Error, IoContext, Result};
use crate::transport::tcp::{TcpConn, TcpTransport};
use crate::transport::{Connection, Transport};
use crate::tree::entry::EntryKind;
use crate::tree::hash::{tree_hash, HashOptions};
use crate::tree::walk::walk;
use crate::units::{EntryId, SessionId, WorkerIndex};
use crate::wire::codec::Enc;
use crate::wire::frame::FrameKind;
use crate::wire::io::{expect_frame, write_frame};
use crate::wire::message::{
    decode_need, encode_entry, encode_worker_done, Commit, Hello, HelloAck, Role, Verified, CAP_OWNERS,
    CAP_USER_XATTRS, MAX_WORKERS, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN,
};
use crate::wire::WireError;
use crate::{content_digest, software_version, Progress};
use plan::{data_regions, is_inline, plan, FileToSend};
use serde::Serialize;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use crate::engine::{join_workers, FrameStats};
use worker::{SendTable, SendWorker};

/// Entries frames are flushed at this size (one entry is at most ~300 KiB, so a frame stays
/// under MAX_FRAME_PAYLOAD).
const ENTRIES_FRAME_BYTES: usize = 1024 * 1024;
/// How long the sender waits on the control connection (the receiver's apply phase and final
/// verification of a large tree can take a while).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(3600);
/// After a data connection failed, how long to wait for the receiver's explanation.
const PEER_REASON_WAIT: Duration = Duration::from_secs(2);

pub struct SendOptions {
    pub src: PathBuf,
    pub to: SocketAddr,
    pub threads: usize,
    /// Use O_DIRECT for large files where the file system allows it.
    pub direct: bool,
}

#[derive(Debug, Clone, Serialize)]
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
}

fn hello(session: SessionId, role: Role) -> Vec<u8> {
    Hello {
        min_version: PROTOCOL_VERSION_MIN,
        max_version: PROTOCOL_VERSION_MAX,
        software: software_version().to_string(),
        capabilities: CAP_OWNERS | CAP_USER_XATTRS,
        session,
        role,
    }
    .encode()
}

fn connect(to: SocketAddr, session: SessionId, role: Role, wire: &mut u64) -> Result<(TcpConn, HelloAck)> {
    let mut c = TcpTransport.connect(to).ctx(|| format!("connecting to receiver at {to}"))?;
    c.set_timeout(Some(CONTROL_TIMEOUT)).ctx(|| "socket timeout".to_string())?;
    *wire += write_frame(&mut c, FrameKind::Hello, &hello(session, role))?;
    let mut buf = Vec::new();
    expect_frame(&mut c, FrameKind::HelloAck, &mut buf)?;
    let ack = HelloAck::decode(&buf)?;
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&ack.version) {
        return Err(WireError::VersionMismatch {
            peer_min: ack.version,
            peer_max: ack.version,
            ours_min: PROTOCOL_VERSION_MIN,
            ours_max: PROTOCOL_VERSION_MAX,
        }
        .into());
    }
    Ok((c, ack))
}

pub fn send(opts: &SendOptions, progress: &Arc<Progress>) -> Result<SendReport> {
    let start = Instant::now();
    crate::raise_fd_limit();
    let threads = opts.threads.clamp(1, MAX_WORKERS as usize);
    let walked = walk(&opts.src, true)?;
    let entries = &walked.entries;
    tracing::info!(entries = entries.len(), secs = start.elapsed().as_secs_f64(), "walked source");
    let session = SessionId::random().ctx(|| "random session id".to_string())?;
    let mut wire = 0u64;
    let (mut ctl, ack) = connect(opts.to, session, Role::Control { workers: threads as u16 }, &mut wire)?;
    let owners = ack.capabilities & CAP_OWNERS != 0;

    let mut enc = Enc::new();
    for e in entries {
        encode_entry(&mut enc, e);
        if enc.buf.len() >= ENTRIES_FRAME_BYTES {
            wire += write_frame(&mut ctl, FrameKind::Entries, &enc.buf)?;
            enc.buf.clear();
        }
    }
    if !enc.buf.is_empty() {
        wire += write_frame(&mut ctl, FrameKind::Entries, &enc.buf)?;
    }
    wire += write_frame(&mut ctl, FrameKind::EntriesEnd, &(entries.len() as u64).to_le_bytes())?;

    let need = read_need(&mut ctl, entries.len())?;
    tracing::info!(secs = start.elapsed().as_secs_f64(), "need list received");
    let root = crate::beneath::open_root(&opts.src, "source directory")?;
    let mut files = Vec::new();
    let (mut files_total, mut bytes_total) = (0u64, 0u64);
    for (i, e) in entries.iter().enumerate() {
        let EntryKind::File { size } = e.kind else { continue };
        files_total += 1;
        bytes_total += size;
        if !need[i] {
            continue;
        }
        let regions = if is_inline(size) || size == 0 {
            vec![(0, size)]
        } else {
            let p = &walked.paths[i];
            let fd = crate::beneath::open_file(root.as_fd(), p, rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty())
                .ctx(|| format!("opening {}", show(p)))?;
            data_regions(fd.as_fd(), size).ctx(|| format!("finding data regions of {}", show(p)))?
        };
        files.push(FileToSend { entry: EntryId(i as u32), size, regions });
    }
    let sent_files = files.len() as u64;
    let send_bytes: u64 = files.iter().map(|f| if is_inline(f.size) { f.size } else { f.regions.iter().map(|r| r.1).sum() }).sum();
    progress.set_totals(sent_files, send_bytes);
    let plans = plan(&files, threads);
    let table = Arc::new(SendTable {
        root,
        paths: walked.paths.clone(),
        sizes: entries.iter().map(|e| if let EntryKind::File { size } = e.kind { size } else { 0 }).collect(),
    });
    let cpus = crate::worker_cpus(threads, Some(&opts.src));
    let mut handles = Vec::new();
    for (i, units) in plans.into_iter().enumerate() {
        let (table, progress, to) = (table.clone(), progress.bytes.clone(), opts.to);
        let cpu = cpus.get(i).copied().flatten();
        let direct = opts.direct;
        let h = std::thread::Builder::new()
            .name(format!("mover-send-{i}"))
            .spawn(move || -> Result<FrameStats> {
                let mut w = 0;
                let index = WorkerIndex(i as u16);
                let (conn, _) = connect(to, session, Role::Worker { index }, &mut w)?;
                conn.0.set_write_timeout(None).ctx(|| "socket timeout".to_string())?;
                let sock = conn.0.try_clone().ctx(|| "socket".to_string())?;
                let worker = SendWorker { index, cpu, table, units, sock, direct, progress };
                let mut stats = worker.run()?;
                let mut conn = conn;
                stats.wire_bytes += w + write_frame(&mut conn, FrameKind::WorkerDone, &encode_worker_done(stats.frames, stats.data_bytes))?;
                Ok(stats)
            })
            .ctx(|| "spawning sender worker".to_string())?;
        handles.push(h);
    }
    let joined = join_workers(handles, "sender");
    tracing::info!(secs = start.elapsed().as_secs_f64(), "workers done");
    let mut all = match joined {
        Ok(all) => all,
        Err(e) => return Err(explain_worker_failure(e, &mut ctl)),
    };
    wire += all.wire_bytes;
    let th = tree_hash(entries, HashOptions { owners });
    let commit = Commit {
        tree_hash: th,
        content_digest: content_digest(&mut all.checksums),
        data_frames: all.frames,
        data_bytes: all.data_bytes,
    };
    wire += write_frame(&mut ctl, FrameKind::Commit, &commit.encode())?;
    let mut buf = Vec::new();
    expect_frame(&mut ctl, FrameKind::Verified, &mut buf)?;
    let v = Verified::decode(&buf)?;
    if !v.ok || v.tree_hash != th {
        return Err(Error::Verify(format!("receiver did not verify the tree: {}", v.message)));
    }
    Ok(SendReport {
        session: session.to_string(),
        entries: entries.len() as u64,
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
    })
}

/// When a worker's socket failed, the receiver closed it and usually says why on the control
/// connection: prefer its message. Any other failure (source changed, unreadable file) is ours.
fn explain_worker_failure(e: Error, ctl: &mut TcpConn) -> Error {
    let socket_failed = matches!(&e, Error::Io { context, .. } if context.starts_with("sending to receiver"));
    if socket_failed {
        let mut buf = Vec::new();
        ctl.set_timeout(Some(PEER_REASON_WAIT)).ok();
        if let Err(Error::Peer(msg)) = expect_frame(ctl, FrameKind::Verified, &mut buf) {
            return Error::Peer(msg);
        }
    }
    e
}

fn read_need(ctl: &mut TcpConn, n: usize) -> Result<Vec<bool>> {
    let mut need = vec![false; n];
    let mut buf = Vec::new();
    let mut next = 0usize;
    loop {
        expect_frame(ctl, FrameKind::NeedList, &mut buf)?;
        let (first, last, bits) = decode_need(&buf)?;
        if first as usize != next {
            return Err(WireError::BadField { field: "need list offset" }.into());
        }
        for (k, byte) in bits.iter().enumerate() {
            for bit in 0..8 {
                let i = next + k * 8 + bit;
                if byte & (1 << bit) != 0 {
                    let slot = need.get_mut(i).ok_or(WireError::BadField { field: "need list bit" })?;
                    *slot = true;
                }
            }
        }
        next += bits.len() * 8;
        if last {
            return Ok(need);
        }
    }
}
