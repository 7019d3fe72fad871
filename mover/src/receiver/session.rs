//! One receive session, driven by its control connection: entry list -> apply phase -> need list
//! -> workers -> commit -> finalize -> verify. Any failure is reported to the sender as an Error
//! frame and returned.

use super::apply::{apply_entries, ApplyStats};
use super::finalize::{finalize, first_difference};
use super::table::RecvTable;
use super::worker::RecvWorker;
use crate::engine::join_workers;
use crate::error::{Error, IoContext, Result};
use crate::transport::tcp::TcpConn;
use crate::tree::entry::{Entry, StructureChecker};
use crate::tree::hash::{tree_hash, HashOptions};
use crate::units::{SessionId, WorkerIndex};
use crate::wire::frame::{FrameKind, FRAME_HEADER_LEN};
use crate::wire::io::{expect_frame, read_frame, write_frame};
use crate::wire::message::{decode_entries, decode_message, encode_message, encode_need, Commit, Verified, NEED_CHUNK_BYTES};
use crate::wire::WireError;
use crate::{content_digest, Progress};
use serde::Serialize;
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the session waits for its worker connections after sending the need list.
const WORKER_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize)]
pub struct SessionReport {
    pub session: String,
    pub ok: bool,
    pub error: Option<String>,
    pub entries: u64,
    pub files_received: u64,
    pub files_unchanged: u64,
    pub bytes: u64,
    pub wire_bytes: u64,
    pub removed: u64,
    pub seconds: f64,
    pub tree_hash: String,
}

pub struct Session {
    pub id: SessionId,
    pub workers: u16,
    pub owners: bool,
    /// syncfs the destination before verifying and acknowledging.
    pub fsync: bool,
    /// The process umask, applied by the kernel to files the workers create.
    pub umask: u32,
    pub root: OwnedFd,
    pub worker_conns: Receiver<(WorkerIndex, TcpStream)>,
    pub cpus: Vec<Option<hw::CpuId>>,
    pub progress: Arc<Progress>,
}

impl SessionReport {
    pub fn failed(id: SessionId, error: &str) -> SessionReport {
        SessionReport {
            session: id.to_string(),
            ok: false,
            error: Some(error.to_string()),
            entries: 0,
            files_received: 0,
            files_unchanged: 0,
            bytes: 0,
            wire_bytes: 0,
            removed: 0,
            seconds: 0.0,
            tree_hash: String::new(),
        }
    }
}

impl Session {
    pub fn run(self, mut ctl: TcpConn) -> SessionReport {
        let start = Instant::now();
        let id = self.id;
        let mut report = SessionReport::failed(id, "");
        report.error = None;
        match self.drive(&mut ctl, &mut report) {
            Ok(()) => report.ok = true,
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(session = %id, "session failed: {msg}");
                // Best effort: the sender may already be gone.
                let _ = write_frame(&mut ctl, FrameKind::Error, &encode_message(&msg));
                report.error = Some(msg);
            }
        }
        report.seconds = start.elapsed().as_secs_f64();
        report
    }

    fn drive(self, ctl: &mut TcpConn, report: &mut SessionReport) -> Result<()> {
        let mut buf = Vec::new();
        let mut checker = StructureChecker::new();
        let mut entries: Vec<Entry> = Vec::new();
        loop {
            let h = read_frame(ctl, &mut buf)?;
            report.wire_bytes += (FRAME_HEADER_LEN + buf.len()) as u64;
            match h.kind {
                FrameKind::Entries => {
                    for e in decode_entries(&buf)? {
                        checker.push(&e)?;
                        entries.push(e);
                    }
                }
                FrameKind::EntriesEnd => {
                    let n = u64::from_le_bytes(buf.as_slice().try_into().map_err(|_| WireError::BadField { field: "entry count" })?);
                    if n != entries.len() as u64 || entries.is_empty() {
                        return Err(Error::Verify(format!("sender announced {n} entries, sent {}", entries.len())));
                    }
                    break;
                }
                FrameKind::Error => return Err(Error::Peer(decode_message(&buf)?)),
                other => return Err(WireError::Unexpected { expected: FrameKind::Entries, got: other }.into()),
            }
        }
        report.entries = entries.len() as u64;
        let t0 = Instant::now();
        let paths = crate::tree::entry::relative_paths(&entries);
        let (need, fresh_dir, stats): (Vec<bool>, Vec<bool>, ApplyStats) = apply_entries(std::os::fd::AsFd::as_fd(&self.root), &entries, &paths, self.owners)?;
        report.files_unchanged = stats.files_unchanged;
        report.removed = stats.removed;
        self.progress.set_totals(stats.files_needed, stats.bytes_needed);
        send_need(ctl, &need)?;
        tracing::info!(secs = t0.elapsed().as_secs_f64(), needed = stats.files_needed, "apply phase done");

        let conns = collect_workers(&self.worker_conns, self.workers)?;
        let creator = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
        let table = Arc::new(RecvTable { root: self.root, entries, paths, need, owners: self.owners, fresh_dir, creator, umask: self.umask });
        let mut handles = Vec::new();
        for (i, sock) in conns.into_iter().enumerate() {
            let w = RecvWorker {
                cpu: self.cpus.get(i).copied().flatten(),
                table: table.clone(),
                sock,
                progress: self.progress.bytes.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("mover-recv-{i}"))
                .spawn(move || w.run())
                .ctx(|| "spawning receiver worker".to_string())?;
            handles.push(h);
        }
        let mut all = join_workers(handles, "receiver")?;
        report.bytes = all.data_bytes;
        report.wire_bytes += all.wire_bytes;
        report.files_received = stats.files_needed;

        expect_frame(ctl, FrameKind::Commit, &mut buf)?;
        let commit = Commit::decode(&buf)?;
        let digest = content_digest(&mut all.checksums);
        if commit.data_frames != all.frames || commit.data_bytes != all.data_bytes || commit.content_digest != digest {
            return Err(Error::Verify(format!(
                "content mismatch: sender sent {} frames / {} bytes, received {} / {}{}",
                commit.data_frames,
                commit.data_bytes,
                all.frames,
                all.data_bytes,
                if commit.content_digest != digest { " (content digest differs)" } else { "" }
            )));
        }
        tracing::info!(secs = t0.elapsed().as_secs_f64(), "workers done");
        finalize(&table, self.fsync)?;
        tracing::info!(secs = t0.elapsed().as_secs_f64(), "finalized");
        let opts = HashOptions { owners: self.owners };
        let walked = crate::tree::walk::walk_fd(std::os::fd::AsFd::as_fd(&table.root), true)?;
        let got = tree_hash(&walked.entries, opts);
        let want = tree_hash(&table.entries, opts);
        report.tree_hash = format!("{got:032x}");
        if want != commit.tree_hash {
            return Err(Error::Verify("sender's tree hash does not match the entry list it sent".into()));
        }
        if got != want {
            let norm = |v: &[Entry]| -> Vec<Entry> {
                v.iter()
                    .cloned()
                    .map(|mut e| {
                        if !self.owners {
                            e.meta.uid = 0;
                            e.meta.gid = 0;
                        }
                        e
                    })
                    .collect()
            };
            return Err(first_difference(&norm(&table.entries), &norm(&walked.entries), &table.paths));
        }
        tracing::info!(secs = t0.elapsed().as_secs_f64(), "verified");
        let v = Verified { ok: true, message: "verified".into(), tree_hash: got };
        write_frame(ctl, FrameKind::Verified, &v.encode())?;
        Ok(())
    }
}

fn send_need(ctl: &mut TcpConn, need: &[bool]) -> Result<()> {
    let mut bits = vec![0u8; need.len().div_ceil(8)];
    for (i, &n) in need.iter().enumerate() {
        if n {
            bits[i / 8] |= 1 << (i % 8);
        }
    }
    let chunks: Vec<&[u8]> = bits.chunks(NEED_CHUNK_BYTES).collect();
    for (k, c) in chunks.iter().enumerate() {
        let first = (k * NEED_CHUNK_BYTES * 8) as u32;
        write_frame(ctl, FrameKind::NeedList, &encode_need(first, k + 1 == chunks.len(), c))?;
    }
    Ok(())
}

fn collect_workers(rx: &Receiver<(WorkerIndex, TcpStream)>, n: u16) -> Result<Vec<TcpStream>> {
    let mut slots: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let deadline = Instant::now() + WORKER_CONNECT_TIMEOUT;
    let mut have = 0;
    while have < n as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        let (idx, s) = rx
            .recv_timeout(left)
            .map_err(|_| Error::Peer(format!("only {have} of {n} worker connections arrived within {WORKER_CONNECT_TIMEOUT:?}")))?;
        let slot = slots
            .get_mut(idx.0 as usize)
            .ok_or_else(|| Error::Peer(format!("worker index {} out of range", idx.0)))?;
        if slot.is_some() {
            return Err(Error::Peer(format!("worker {} connected twice", idx.0)));
        }
        *slot = Some(s);
        have += 1;
    }
    Ok(slots.into_iter().flatten().collect())
}
