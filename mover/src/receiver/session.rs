//! One receive session, driven by its control connection: entry list -> apply phase -> need list
//! -> workers -> commit -> finalize -> verify. Any failure is reported to the sender as an Error
//! frame and returned.

use super::apply::{apply_entries, Applied, Baseline};
use super::conns::{collect_workers, data_frame_budget, watch_workers, WORKER_POLL};
use super::finalize::{finalize, first_difference};
use super::journal::{self, Journal};
use super::space;
use super::state::{Held, RecoveryPoint, RecoveryPointId, State};
use super::table::RecvTable;
use super::verify::{dirs_to_check, verify_dirs, Before};
use super::worker::RecvWorker;
use crate::clock::now_ns;
use crate::engine::content_digest;
use crate::engine::{join_workers_preferring, FrameStats};
use crate::error::{Error, IoContext, Result};
use crate::job::Progress;
use crate::transport::select::Used;
use crate::tree::diff::DeltaApplier;
use crate::tree::entry::{Entry, StructureChecker};
use crate::tree::hash::{merkle, tree_hash, HashOptions};
use crate::units::{EntryId, SessionId};
use crate::wire::frame::{FrameKind, FRAME_HEADER_LEN};
use crate::wire::io::Link;
use crate::wire::message::{
    decode_delta, decode_entries, decode_error, decode_expect, decode_hints, encode_need,
    encode_need_sparse, encode_rest, entry_len, is_inline, BaseAnswer, BaseOffer, Commit,
    ErrorCode, Hint, Need, Verified, MAX_NEED_SPARSE, NEED_CHUNK_BYTES,
};
use crate::wire::WireError;
use serde::Serialize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

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
    /// Files updated in place from a delta, and their bytes received.
    pub files_delta: u64,
    /// Renames the sender asked for that were carried out.
    pub renamed: u64,
    /// This session continued an interrupted job's journal.
    pub resumed: bool,
    /// Files an interrupted session left unfinished of which this one received only the
    /// ranges not yet durable.
    pub files_resumed: u64,
    /// The recovery point committed (empty if none).
    pub recovery_point: String,
    /// The session's frames were sealed (encrypted and authenticated).
    pub encrypted: bool,
    /// What its worker connections used, as negotiated in the Hello ("tcp" or "rdma").
    pub transport: Used,
    /// Files whose setuid/setgid bits the replica policy cleared, and device nodes it did not
    /// create.
    pub setid_cleared: u64,
    pub devices_skipped: u64,
    /// The entry list came as a delta against the recovery point's list.
    pub delta_list: bool,
    /// The job compared every entry with the disk and walked the whole target to verify it
    /// (resumed, `--verify full`, after a failed scrub, or no usable recovery point list);
    /// otherwise it touched and verified only what differs from its recovery point.
    pub full_verify: bool,
    /// Entries the verification looked at on disk.
    pub verified_entries: u64,
}

/// Default of `SessionLimits::entry_list_bytes`: room for tens of millions of entries.
pub const DEFAULT_ENTRY_LIST_BYTES: u64 = 4 << 30;
/// The receiver holds every entry's full path: at most this many times the entry list's bytes
/// (ordinary trees need a few; a deep chain of long names needs hundreds)...
pub const PATH_BYTES_PER_LIST_BYTE: u64 = 64;
/// ...or this much, whichever is more.
pub const PATH_BYTES_FLOOR: u64 = 64 << 20;
/// Default of `SessionLimits::hint_bytes`.
pub const DEFAULT_HINT_BYTES: u64 = 1 << 30;

/// Per-session bounds on what a sender can make the receiver hold in memory before any data
/// flows, besides the protocol's count limits (MAX_ENTRIES, twice as many hints as entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Encoded bytes of the entry list (all Entries frames).
    pub entry_list_bytes: u64,
    /// Encoded bytes of the hints (all Hints frames).
    pub hint_bytes: u64,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits {
            entry_list_bytes: DEFAULT_ENTRY_LIST_BYTES,
            hint_bytes: DEFAULT_HINT_BYTES,
        }
    }
}

/// Counts bytes against one of the limits; the error names the limit.
fn charge(used: &mut u64, add: usize, limit: u64, what: &str) -> Result<()> {
    *used = used.saturating_add(add as u64);
    if *used > limit {
        return Err(Error::Limit(format!(
            "the sender's {what} exceeds this receiver's limit of {limit} bytes"
        )));
    }
    Ok(())
}

pub struct Session {
    pub id: SessionId,
    pub workers: u16,
    pub owners: bool,
    /// The process umask, applied by the kernel to files the workers create.
    pub umask: u32,
    pub root: OwnedFd,
    pub worker_conns: Receiver<super::WorkerConn>,
    pub limits: SessionLimits,
    pub policy: super::policy::ReplicaPolicy,
    pub cpus: Vec<Option<hw::CpuId>>,
    pub progress: Arc<Progress>,
    /// The sender takes `Need::Rest` (CAP_RESUME_RANGES): a resumed job asks only for what an
    /// interrupted session did not make durable.
    pub resume_ranges: bool,
    /// This side asked for block hashes (CAP_BLOCK_HASHES, a repairing job): without it a
    /// `Hint::Blocks` is a protocol error, not a reason to read and hash target files.
    pub block_hashes: bool,
    /// Workers flush and log a large file's written ranges every this many bytes.
    pub checkpoint_bytes: u64,
    pub verify: Verify,
    /// What the worker connections use (negotiated on the control connection's Hello).
    pub transport: Used,
    /// The session's secret (None: in clear), for the write places' shares.
    pub secret: Option<crate::wire::seal::SessionSecret>,
    /// The other write places the ticket named (their data-plane addresses), and what runs
    /// them.
    pub write_places: Vec<std::net::SocketAddr>,
    pub writers: Option<Arc<dyn super::share::Writers>>,
}

/// How a session verifies the target before committing a recovery point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Verify {
    /// Touch and check only what differs from the recovery point's list (on disk: the
    /// directories the job changed); a resumed job still checks everything.
    #[default]
    Changed,
    /// Compare every entry with the disk (fixing what differs) and walk the whole target.
    Full,
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
            files_delta: 0,
            renamed: 0,
            resumed: false,
            files_resumed: 0,
            recovery_point: String::new(),
            encrypted: false,
            transport: Used::Tcp,
            setid_cleared: 0,
            devices_skipped: 0,
            delta_list: false,
            full_verify: false,
            verified_entries: 0,
        }
    }
}

impl Session {
    pub fn run(self, mut ctl: Link) -> SessionReport {
        let start = Instant::now();
        let id = self.id;
        let mut report = SessionReport::failed(id, "");
        report.error = None;
        report.encrypted = ctl.is_sealed();
        report.transport = self.transport;
        // drive() hands the root fd to the workers' table, which is gone when it fails: a dup
        // lets a disk-full job be explained and reverted afterwards.
        let root = rustix::io::fcntl_dupfd_cloexec(&self.root, 0);
        let progress = self.progress.clone();
        // Set while a failure should log what the workers finished and held (`log_held`).
        let mut held = None;
        match self.drive(&mut ctl, &mut report, &mut held) {
            Ok(()) => report.ok = true,
            Err(e) if space::is_full(&e) => {
                // The apply phase sets the totals; 0 means it failed before knowing them.
                let needed = Some(
                    progress
                        .bytes_total
                        .load(std::sync::atomic::Ordering::Relaxed),
                )
                .filter(|&n| n > 0);
                let msg = match &root {
                    Ok(root) => disk_full(root.as_fd(), e, needed, &mut ctl, id),
                    Err(dup) => {
                        // Without the root there is nothing to measure or revert with; the
                        // journal stays and the next job resumes.
                        let msg = format!(
                            "{e} (not reverted: dup of the destination root failed: {dup})"
                        );
                        tracing::error!(session = %id, "session failed: {msg}");
                        ctl.send_error(ErrorCode::DiskFull, &msg);
                        msg
                    }
                };
                report.error = Some(msg);
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(session = %id, "session failed: {msg}");
                ctl.send_error(e.code(), &msg);
                report.error = Some(msg);
                // After the sender has the reason; not on a full disk, whose job is reverted.
                if let Some(t) = held.take() {
                    t.log_held(&|| true);
                }
            }
        }
        report.seconds = start.elapsed().as_secs_f64();
        report
    }

    /// Reads the entry list (whole, or as a delta against the recovery point's list if the
    /// sender offered it and it is the one kept here), its hints and its end.
    fn read_list(
        &self,
        ctl: &mut Link,
        report: &mut SessionReport,
        state: &State,
    ) -> Result<ListIn> {
        let mut buf = Vec::new();
        let mut checker = StructureChecker::new();
        let mut entries: Vec<Entry> = Vec::new();
        let mut hints: Vec<Hint> = Vec::new();
        // Hints other than block hashes, which are bounded by their count (below).
        let mut counted_hints = 0usize;
        let (mut list_bytes, mut hint_bytes) = (0u64, 0u64);
        let limits = self.limits;
        // The base of a delta: the recovery point and its stored list, once accepted.
        let mut base: Option<(RecoveryPoint, Vec<Entry>)> = None;
        let mut applier: Option<DeltaApplier> = None;
        let mut offered = false;
        let mut push = |e: Entry, entries: &mut Vec<Entry>, list_bytes: &mut u64| -> Result<()> {
            charge(
                list_bytes,
                entry_len(&e),
                limits.entry_list_bytes,
                "entry list",
            )?;
            checker.push(&e)?;
            if !entries.is_empty() && e.parent.0 == 0 && crate::tree::reserved_at_top(&e.name) {
                return Err(Error::Verify(format!(
                    "entry list names the receiver's reserved {}",
                    crate::error::show(&e.name)
                )));
            }
            entries.push(e);
            Ok(())
        };
        loop {
            let h = ctl.read_frame(&mut buf)?;
            report.wire_bytes += (FRAME_HEADER_LEN + h.len as usize) as u64;
            match h.kind {
                FrameKind::BaseOffer => {
                    if offered || !entries.is_empty() || !hints.is_empty() {
                        return Err(Error::Verify("BaseOffer after the entry list began".into()));
                    }
                    offered = true;
                    let offer = BaseOffer::decode(&buf)?;
                    let rp = state.recovery_point()?;
                    let (id, digest) = rp.as_ref().map_or((0, 0), |r| (r.id.0, r.list_digest));
                    if let Some(rp) = rp.filter(|_| {
                        digest != 0 && id == offer.recovery_point && digest == offer.list_digest
                    }) {
                        match state.rp_entries(rp.id) {
                            Ok(list) if list.len() as u64 == offer.entries => {
                                applier = Some(DeltaApplier::new(list.len()));
                                base = Some((rp, list));
                            }
                            Ok(list) => tracing::warn!(
                                kept = list.len(),
                                offered = offer.entries,
                                "the recovery point's stored list has another length than the sender's: asking for the whole list"
                            ),
                            Err(e) => tracing::warn!(
                                "the recovery point's stored list cannot be read ({e}): asking for the whole list"
                            ),
                        }
                    }
                    let answer = BaseAnswer {
                        accepted: base.is_some(),
                        recovery_point: id,
                        list_digest: digest,
                    };
                    ctl.write_frame(FrameKind::BaseAnswer, &answer.encode())?;
                }
                FrameKind::Entries if base.is_none() => {
                    for e in decode_entries(&buf)? {
                        push(e, &mut entries, &mut list_bytes)?;
                    }
                }
                FrameKind::EntriesDelta => {
                    let (Some((_, list)), Some(a)) = (&base, applier.as_mut()) else {
                        return Err(Error::Verify(
                            "EntriesDelta frame without an accepted base".into(),
                        ));
                    };
                    // Charged as the entries it rebuilds (each op yields or consumes one).
                    for op in decode_delta(&buf)? {
                        a.apply(list, op, |e| push(e, &mut entries, &mut list_bytes))?;
                    }
                }
                FrameKind::Hints => {
                    // A frame costs its header at least: empty ones are not free.
                    let cost = FRAME_HEADER_LEN + buf.len();
                    charge(&mut hint_bytes, cost, limits.hint_bytes, "hint list")?;
                    let hs = decode_hints(&buf)?;
                    if !self.block_hashes && hs.iter().any(|h| matches!(h, Hint::Blocks { .. })) {
                        return Err(Error::Verify(
                            "block hashes that this receiver did not ask for (it asks only \
                             when it repairs)"
                                .into(),
                        ));
                    }
                    // Block hashes are bounded by `hint_bytes` (a long file takes many).
                    counted_hints += hs
                        .iter()
                        .filter(|h| !matches!(h, Hint::Blocks { .. }))
                        .count();
                    if counted_hints > entries.len() * 2 {
                        return Err(Error::Verify("more hints than entries".into()));
                    }
                    hints.extend(hs);
                }
                FrameKind::EntriesEnd => {
                    let n = u64::from_le_bytes(buf.as_slice().try_into().map_err(|_| {
                        WireError::BadField {
                            field: "entry count",
                        }
                    })?);
                    if n != entries.len() as u64 || entries.is_empty() {
                        return Err(Error::Verify(format!(
                            "sender announced {n} entries, sent {}",
                            entries.len()
                        )));
                    }
                    break;
                }
                FrameKind::Error => {
                    let (code, message) = decode_error(&buf)?;
                    return Err(Error::Peer { code, message });
                }
                other => {
                    return Err(WireError::Unexpected {
                        expected: if base.is_some() {
                            FrameKind::EntriesDelta
                        } else {
                            FrameKind::Entries
                        },
                        got: other,
                    }
                    .into())
                }
            }
        }
        Ok(ListIn {
            entries,
            hints,
            list_bytes,
            delta: base.is_some(),
            base,
        })
    }

    fn drive(
        self,
        ctl: &mut Link,
        report: &mut SessionReport,
        held: &mut Option<Arc<RecvTable>>,
    ) -> Result<()> {
        let mut buf = Vec::new();
        let root = std::os::fd::AsFd::as_fd(&self.root);
        let state = State::open(root)?;
        let ListIn {
            mut entries,
            hints,
            list_bytes,
            base,
            delta,
        } = self.read_list(ctl, report, &state)?;
        report.entries = entries.len() as u64;
        report.delta_list = delta;
        let t0 = Instant::now();
        tracing::debug!(entries = entries.len(), delta, "entry list received");
        let (mut journal, resumed) = open_job(root, &state, self.owners)?;
        report.resumed = resumed;
        if !self.resume_ranges {
            journal.durable.clear();
        }
        let rp = state.recovery_point()?.ok_or_else(|| {
            Error::Corrupt("the destination has no recovery point after opening the job".into())
        })?;
        let path_budget = list_bytes
            .saturating_mul(PATH_BYTES_PER_LIST_BYTE)
            .max(PATH_BYTES_FLOOR);
        let need = crate::tree::entry::path_bytes(&entries);
        if need > path_budget {
            return Err(Error::Limit(format!(
                "the entry list's paths take {need} bytes, more than this receiver holds for \
                 {list_bytes} bytes of entries ({path_budget}): directories nested too deep"
            )));
        }
        let opts = HashOptions {
            owners: self.owners,
        };
        // The sender's tree hash covers the list as sent; the target holds it as the policy
        // lets it in. The digest (with owners) names the list as a base for the next delta.
        let digest = merkle(&entries, &[], HashOptions { owners: true }).root;
        let sent_hash = if self.owners {
            digest
        } else {
            tree_hash(&entries, opts)
        };
        let sent = self.policy.changes(&entries).then(|| entries.clone());
        let filtered = self.policy.apply(&mut entries);
        report.setid_cleared = filtered.setid_cleared;
        report.devices_skipped = filtered.devices_skipped;
        let skip = filtered.skip;
        let paths = crate::tree::entry::relative_paths(&entries);
        // What the target holds, if this job can trust it: a job starting from its recovery
        // point (not resumed: an interrupted session changed the disk beyond the list), with
        // owners counted as they were, not asked to compare everything.
        let full = self.verify == Verify::Full || super::scrub::failed(&state);
        let before = if resumed || full || rp.hash_owners != self.owners {
            None
        } else {
            match base {
                Some((brp, mut list)) if brp.id == rp.id => {
                    let skip = rp.policy.apply(&mut list).skip;
                    Some(Held {
                        entries: list,
                        skip,
                    })
                }
                _ => match state.held(&rp) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        tracing::warn!("the recovery point's list cannot be read ({e}): comparing every entry with the disk");
                        None
                    }
                },
            }
        };
        report.full_verify = before.is_none();
        tracing::debug!(secs = t0.elapsed().as_secs_f64(), "baseline loaded");
        let matched = before
            .as_ref()
            .map(|b| crate::tree::diff::match_paths(&entries, &skip, &b.entries, &b.skip));
        let baseline = before
            .as_ref()
            .zip(matched.as_ref())
            .map(|(b, m)| Baseline::of(b, m));
        // A job that compares every entry with the disk still vouches for a file it keeps in
        // place by the recovery point's list, where its owner or set-id bits change (grant.rs):
        // an interrupted `chown -R` resumes without sending the files again. Not by a list whose
        // owners are not the target's (the recovery point was made without them).
        let guard = journal.guarded;
        let held_rp = if guard && baseline.is_none() && rp.hash_owners == self.owners {
            state.held(&rp).ok()
        } else {
            None
        };
        let held_matched = held_rp
            .as_ref()
            .map(|h| crate::tree::diff::match_paths(&entries, &skip, &h.entries, &h.skip));
        let vouch = baseline.or_else(|| {
            held_rp
                .as_ref()
                .zip(held_matched.as_ref())
                .map(|(h, m)| Baseline::of(h, m))
        });
        tracing::debug!(secs = t0.elapsed().as_secs_f64(), "matched by path");
        let Applied {
            need,
            fresh,
            mut deltas,
            rests,
            resizes,
            files,
            stats,
            finish,
            mut touched,
        } = apply_entries(
            root,
            &entries,
            &paths,
            &hints,
            self.owners,
            &skip,
            (baseline.as_ref(), vouch.as_ref(), guard),
            &mut journal,
        )?;
        report.files_unchanged = stats.files_unchanged;
        report.removed = stats.removed;
        report.files_delta = deltas.len() as u64;
        report.files_resumed = rests.len() as u64;
        let mut rest_list: Vec<(EntryId, Vec<(u64, u64)>)> =
            rests.into_iter().map(|(e, r)| (EntryId(e), r)).collect();
        rest_list.sort_unstable_by_key(|x| x.0 .0);
        report.renamed = hints
            .iter()
            .filter(|h| matches!(h, Hint::Rename { .. }))
            .count() as u64;
        self.progress
            .set_totals(stats.files_needed, stats.bytes_needed);
        // Every pre-image and undo record is durable before the first byte is written in place.
        journal.sync()?;
        super::apply::resize_deltas(root, &resizes)?;
        send_need(ctl, &need)?;
        if !rest_list.is_empty() {
            for p in encode_rest(&rest_list) {
                ctl.write_frame(FrameKind::Rest, &p)?;
            }
        }
        // From here on the table treats the rest of a resumed file like a delta's ranges.
        deltas.extend(rest_list.into_iter().map(|(e, r)| (e.0, r)));
        tracing::info!(
            secs = t0.elapsed().as_secs_f64(),
            needed = stats.files_needed,
            "apply phase done"
        );

        let expected = read_expect(ctl, &need, &entries, &deltas)?;
        let frame_budget = data_frame_budget(&need, &entries, &expected);
        let remaining = expected
            .iter()
            .map(|(k, v)| (*k, std::sync::atomic::AtomicU64::new(*v)))
            .collect();
        // A job that needs no data gets no worker connection (the sender opens none).
        let data = !need.iter().all(|n| *n == Need::Nothing);
        let creator = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        // The workers check the files they finish for a verification that lists directories
        // (below); a resumed or full one walks the whole target and reads no checks.
        let checked = if data && before.is_some() && finish.is_some() {
            let dev = rustix::fs::fstat(&self.root)
                .ctx(|| "stat of the destination root".to_string())?
                .st_dev;
            super::checked::Checked::new(dev, entries.len())
        } else {
            super::checked::Checked::off()
        };
        let table = Arc::new(RecvTable {
            root: self.root,
            entries,
            paths,
            need,
            deltas,
            owners: self.owners,
            fresh_dir: fresh,
            claims: super::claims::Claims::new(expected.keys().copied()),
            files,
            remaining,
            expected,
            frame_budget: std::sync::atomic::AtomicU64::new(frame_budget),
            creator,
            umask: self.umask,
            skip,
            journal: rustix::io::fcntl_dupfd_cloexec(journal.dir(), 0)
                .ctx(|| "dup of the journal directory".to_string())?,
            checkpoint_bytes: self.checkpoint_bytes,
            checked,
            syncs: Arc::default(),
            held: Default::default(),
        });
        // Until the recovery point's syncfs, a failure logs what the workers finished and held.
        *held = Some(table.clone());
        // The other write places start first: the sender's workers connect to all at once.
        let places = Places {
            id: self.id,
            workers: self.workers,
            secret: self.secret.as_ref(),
            at: &self.write_places,
            writers: self.writers.as_ref(),
            failed: Arc::default(),
        };
        // Write-back overlaps the data's arrival (writeback.rs); stopped on every way out.
        let writeback = data.then(|| {
            super::writeback::EarlyWriteback::start(
                std::os::fd::AsFd::as_fd(&table.root),
                table.syncs.clone(),
            )
        });
        let started = places.start(&table, data)?;
        let local = places.run_local(
            &table,
            &self.worker_conns,
            data,
            ctl,
            &self.cpus,
            &self.progress,
        );
        let (all, elsewhere) = join_places(&table, started, local)?;
        if let Some(w) = writeback {
            w.stop();
        }
        report.bytes = all.data_bytes;
        report.wire_bytes += all.wire_bytes;
        report.files_received = stats.files_needed;

        ctl.expect_frame(FrameKind::Commit, &mut buf)?;
        let commit = Commit::decode(&buf)?;
        let mut all = all;
        let digest_data = content_digest(&mut all.checksums);
        if commit.data_frames != all.frames
            || commit.data_bytes != all.data_bytes
            || commit.content_digest != digest_data
        {
            return Err(Error::Verify(format!(
                "content mismatch: sender sent {} frames / {} bytes, received {} / {}{}",
                commit.data_frames,
                commit.data_bytes,
                all.frames,
                all.data_bytes,
                if commit.content_digest != digest_data {
                    " (content digest differs)"
                } else {
                    ""
                }
            )));
        }
        tracing::info!(secs = t0.elapsed().as_secs_f64(), "workers done");
        journal.sync()?;
        finalize(
            &table,
            &mut journal,
            finish.as_deref(),
            &mut touched,
            &elsewhere,
        )?;
        tracing::info!(secs = t0.elapsed().as_secs_f64(), "finalized");
        if sent_hash != commit.tree_hash {
            return Err(Error::Verify(
                "sender's tree hash does not match the entry list it sent".into(),
            ));
        }
        let root = std::os::fd::AsFd::as_fd(&table.root);
        let tree = merkle(&table.entries, &table.skip, opts);
        let want = tree.root;
        report.tree_hash = format!("{want:032x}");
        match (&before, &matched, finish.is_some()) {
            (Some(b), Some(m), true) => {
                let old = merkle(&b.entries, &b.skip, opts);
                let was = Before {
                    entries: &b.entries,
                    merkle: &old,
                    matched: m,
                };
                let check = dirs_to_check(&table.entries, &table.skip, &tree, &was, &touched);
                report.verified_entries = verify_dirs(
                    root,
                    &table.entries,
                    &table.skip,
                    &table.paths,
                    &check,
                    self.owners,
                    Some(&table.checked),
                )
                .map_err(|e| match e {
                    Error::Verify(m) => Error::Verify(format!(
                        "{m} (changed behind the receiver's back? The next job resumes this \
                         one and compares every entry with the disk)"
                    )),
                    e => e,
                })?;
            }
            _ => {
                let walked = crate::tree::walk::walk_fd(root, true)?;
                report.verified_entries = walked.entries.len() as u64;
                if tree_hash(&walked.entries, opts) != want {
                    let (kept, kept_paths) =
                        super::policy::without(&table.entries, &table.paths, &table.skip);
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
                    return Err(first_difference(
                        &norm(&kept),
                        &norm(&walked.entries),
                        &kept_paths,
                    ));
                }
            }
        }
        tracing::info!(
            secs = t0.elapsed().as_secs_f64(),
            checked = report.verified_entries,
            "verified"
        );
        // The new recovery point: data durable first, then the record, then the journal goes.
        // Not after a failure of this syncfs: it took the write-back error, which the held
        // files' own syncfs would then not see.
        *held = None;
        rustix::fs::syncfs(root).ctx(|| "syncing the destination file system".to_string())?;
        tracing::debug!(secs = t0.elapsed().as_secs_f64(), "synced");
        let held = table.skip.iter().filter(|s| !**s).count() as u64;
        let new_rp = RecoveryPoint {
            id: new_rp_id()?,
            committed_ns: now_ns(),
            source_time_ns: commit.source_time_ns,
            tree_hash: want,
            entries: held,
            hash_owners: self.owners,
            list_digest: digest,
            policy: self.policy,
        };
        // A job that changed nothing links the recovery point's list instead of writing it.
        let same_list = rp.list_digest == digest
            && before
                .as_ref()
                .is_some_and(|b| b.entries == table.entries && b.skip == table.skip);
        if same_list {
            state.commit_same_list(&new_rp, rp.id)?;
        } else {
            state.commit(&new_rp, sent.as_deref().unwrap_or(&table.entries))?;
        }
        drop(journal);
        journal::discard(&state)?;
        if full {
            super::scrub::verified_by_job(&state, &new_rp, report.verified_entries);
        }
        report.recovery_point = new_rp.id.to_string();
        tracing::info!(secs = t0.elapsed().as_secs_f64(), rp = %new_rp.id, "recovery point committed");
        // The sender's hash, confirmed: the target holds that tree as the replica policy admits
        // it (which the verification just checked).
        let v = Verified {
            ok: true,
            message: "verified".into(),
            tree_hash: sent_hash,
            recovery_point: new_rp.id.0,
        };
        ctl.write_frame(FrameKind::Verified, &v.encode())?;
        Ok(())
    }
}

/// The session's write places other than this receiver, as its ticket named them.
struct Places<'a> {
    id: SessionId,
    workers: u16,
    secret: Option<&'a crate::wire::seal::SessionSecret>,
    at: &'a [std::net::SocketAddr],
    writers: Option<&'a Arc<dyn super::share::Writers>>,
    /// Set when a place fails: the local workers are stopped rather than run to the end of
    /// a session that cannot commit.
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl Places<'_> {
    /// The worker indices this receiver serves itself.
    fn workers_here(&self) -> Vec<u16> {
        super::share::workers_at(0, self.workers, 1 + self.at.len())
    }

    /// Publishes the share of every other write place and has `writers` run each on its own
    /// thread; their answers are joined by `join_places`.
    fn start(&self, table: &RecvTable, data: bool) -> Result<Vec<PlaceRun>> {
        if !data || self.at.is_empty() {
            return Ok(Vec::new());
        }
        let writers = self.writers.cloned().ok_or_else(|| {
            Error::Unsupported("the ticket names write places but this receiver has none".into())
        })?;
        let n = 1 + self.at.len();
        // Everything that can fail before a place runs is done first: no place is left
        // running when this returns an error.
        let file = super::share::publish(table, self.id)?;
        let shares: Vec<_> = self
            .at
            .iter()
            .enumerate()
            .filter_map(|(k, at)| {
                let workers = super::share::workers_at(k + 1, self.workers, n);
                (!workers.is_empty()).then(|| {
                    let s = super::share::share_for(&file, self.id, self.secret, k + 1, workers);
                    (*at, s)
                })
            })
            .collect();
        let mut runs = Vec::new();
        for (at, share) in shares {
            let (w, s, failed) = (writers.clone(), share.clone(), self.failed.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("mover-place-{}", share.place))
                .spawn(move || {
                    let r = w.run(at, s);
                    if r.is_err() {
                        failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    r
                });
            match spawned {
                Ok(handle) => runs.push(PlaceRun { at, share, handle }),
                Err(e) => {
                    for r in runs {
                        let _ = r.handle.join();
                    }
                    return Err(e).ctx(|| "spawning a write place's runner".to_string());
                }
            }
        }
        Ok(runs)
    }
}

impl Places<'_> {
    /// Runs the workers this receiver serves itself until they are done.
    fn run_local(
        &self,
        table: &Arc<RecvTable>,
        worker_conns: &Receiver<super::WorkerConn>,
        data: bool,
        ctl: &Link,
        cpus: &[Option<hw::CpuId>],
        progress: &Progress,
    ) -> Result<FrameStats> {
        let mine = self.workers_here();
        let place_failed = &*self.failed;
        let conns = if data && !mine.is_empty() {
            collect_workers(worker_conns, &mine, Some(&*ctl.conn))?
        } else {
            Vec::new()
        };
        // While the workers run, a sender that ends the session (it half-closes the control
        // connection when one of its places failed) gets it ended here too: the workers'
        // connections are shut, so every worker, here and at the sender's places, stops now.
        let streams: Vec<std::net::TcpStream> = conns
            .iter()
            .filter_map(|(_, l)| l.conn.tcp_stream().ok().flatten())
            .collect();
        let (ended, workers_ended) = std::sync::mpsc::channel::<()>();
        let mut handles = Vec::new();
        // The sender ends the session when one of its workers fails, so the others here
        // then fail too, echoing this side's first failure, which is what gets reported.
        let first = Arc::new(crate::engine::FirstFailure::default());
        for (index, conn) in conns {
            let i = usize::from(index.0);
            let ended = ended.clone();
            let (first, handle) = (first.clone(), handles.len());
            let w = RecvWorker {
                index: i,
                cpu: cpus.get(i).copied().flatten(),
                table: table.clone(),
                link: conn,
                progress: progress.bytes.clone(),
                fence: None,
            };
            let h = std::thread::Builder::new()
                .name(format!("mover-recv-{i}"))
                .spawn(move || {
                    let r = first.noted(handle, w.run());
                    let _ = ended.send(());
                    r
                })
                .ctx(|| "spawning receiver worker".to_string())?;
            handles.push(h);
        }
        drop(ended);
        // The sender ends the session by closing its control connection (it gave up, or it
        // was stopped); a failed place fails it too: the workers then stop at once.
        watch_workers(&workers_ended, handles.len(), WORKER_POLL, &streams, || {
            let place = place_failed.load(std::sync::atomic::Ordering::SeqCst);
            let stop = place || ctl.conn.peer_closed();
            if stop {
                tracing::info!(
                    place,
                    "the sender ended the session, or a write place failed: stopping the workers"
                );
            }
            stop
        });
        first.put_first(&mut handles);
        join_workers_preferring(handles, "receiver", space::is_full)
    }
}

/// A write place's share being run.
struct PlaceRun {
    at: std::net::SocketAddr,
    share: super::share::WriteShare,
    handle: std::thread::JoinHandle<Result<()>>,
}

/// Waits for every place (whatever the local workers did, so no place of this session writes
/// on under the next one) and folds their results into the local workers'; returns the totals
/// and the large files finished across places.
fn join_places(
    table: &RecvTable,
    places: Vec<PlaceRun>,
    local: Result<FrameStats>,
) -> Result<(FrameStats, std::collections::HashSet<u32>)> {
    let mut first: Option<Error> = None;
    let mut all = FrameStats::default();
    let mut elsewhere = std::collections::HashSet::new();
    let answers: Vec<_> = places
        .into_iter()
        .map(|p| {
            let r = p
                .handle
                .join()
                .unwrap_or_else(|_| Err(Error::Corrupt("a write place's runner panicked".into())));
            (p.at, p.share, r)
        })
        .collect();
    // The local workers' error is only an echo when a place failed first and stopped them.
    let mut local_echo = false;
    match local {
        Ok(s) => all.absorb(s),
        Err(e) => {
            local_echo = answers.iter().any(|(_, _, r)| r.is_err());
            first = Some(e)
        }
    }
    for (at, share, r) in answers {
        let folded = r
            .and_then(|()| super::share::result(table, &share))
            .and_then(|done| super::share::fold(table, done, &mut all));
        match folded {
            Ok(f) => elsewhere.extend(f.into_iter().map(|e| e.0)),
            // A full disk is the cause whatever else failed with it (the disk-full path then
            // explains it and reverts); otherwise the first error, which a place's failure
            // is only when nothing failed here (it stopped the workers here).
            Err(e)
                if space::is_full(&e)
                    || first
                        .as_ref()
                        .is_none_or(|f| !space::is_full(f) && local_echo) =>
            {
                first = Some(match e {
                    Error::PeerLost(_) => e,
                    e if space::is_full(&e) => e,
                    e => Error::PeerLost(format!("write place {at}: {e}")),
                });
                local_echo = false;
            }
            Err(e) => tracing::warn!(%at, "write place: {e}"),
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok((all, elsewhere)),
    }
}

/// The entry list a session received.
struct ListIn {
    entries: Vec<Entry>,
    hints: Vec<Hint>,
    /// What the list is charged against the entry-list budget.
    list_bytes: u64,
    /// The recovery point and its stored list, if the list came as a delta against it.
    base: Option<(RecoveryPoint, Vec<Entry>)>,
    delta: bool,
}

fn new_rp_id() -> Result<RecoveryPointId> {
    let id = SessionId::random().ctx(|| "random recovery point id".to_string())?;
    Ok(RecoveryPointId(id.0))
}

/// A job failed because the destination is full: the error is completed with the free space and
/// what the job needed, the sender is told, and the job is reverted so the target is back at its
/// recovery point and the space the job took is free again (a resumed job would only hit the same
/// wall; network failures, by contrast, keep the journal so the next job resumes). Returns the
/// session's error text.
fn disk_full(
    root: BorrowedFd<'_>,
    e: Error,
    needed: Option<u64>,
    ctl: &mut Link,
    id: SessionId,
) -> String {
    let msg = space::explain(root, e, needed).to_string();
    tracing::error!(session = %id, "session failed: {msg}");
    let state = match State::find(root) {
        Ok(Some(s)) => s,
        Ok(None) => {
            // Failed before the state directory existed: the job changed nothing yet.
            ctl.send_error(ErrorCode::DiskFull, &msg);
            return msg;
        }
        Err(se) => {
            let msg = format!("{msg}; the target could not be reverted: {se}");
            ctl.send_error(ErrorCode::DiskFull, &msg);
            return msg;
        }
    };
    let rp = match state.recovery_point() {
        Ok(Some(rp)) => rp.id.to_string(),
        Ok(None) => "(none yet)".to_string(),
        Err(se) => format!("(unreadable: {se})"),
    };
    // The sender is told before the revert: it waits only briefly for the reason after its data
    // connections broke, and a revert walks and syncs the whole destination.
    ctl.send_error(
        ErrorCode::DiskFull,
        &format!("{msg}; reverting the target to recovery point {rp}"),
    );
    // On a file system with no block left the revert's own progress log could not be written:
    // the files the job created go first (the revert removes them anyway).
    match space::release_created(root, &state) {
        Ok(n) => {
            tracing::info!(session = %id, "released {} of files the failed job created", space::bytes(n))
        }
        Err(re) => {
            tracing::warn!(session = %id, "releasing the failed job's files before the revert: {re}")
        }
    }
    match super::revert::revert(root, &state) {
        Ok(r) => {
            let rp = r.recovery_point.map(|rp| rp.id.to_string()).unwrap_or(rp);
            let free = space::free_bytes(root)
                .map(space::bytes)
                .unwrap_or_else(|fe| format!("unknown ({fe})"));
            tracing::info!(session = %id, undone = r.undone, "disk full: target reverted to recovery point {rp}; {free} free now");
            format!("{msg}; the target was reverted to recovery point {rp} ({} changes undone, {free} free now)", r.undone)
        }
        Err(re) => {
            tracing::error!(session = %id, "reverting after the disk-full failure: {re}");
            format!("{msg}; reverting the target to recovery point {rp} failed: {re} (the journal is kept: free space, then rerun the job or `mover receive --revert`)")
        }
    }
}

/// Gets the journal for this session's job: a live interrupted job's journal is continued (its
/// records stay valid: undo in reverse order still reaches the same recovery point); a revert
/// that was interrupted is finished first; a stale journal is dropped. A destination with no
/// recovery point yet gets one for its current state, so a first job can be reverted too.
fn open_job(
    root: std::os::fd::BorrowedFd<'_>,
    state: &State,
    owners: bool,
) -> Result<(Journal, bool)> {
    let rp = state.recovery_point()?;
    let mut resumed = false;
    if let Some(ex) = journal::read_existing(state)? {
        let live = matches!((ex.base, &rp), (Some(b), Some(rp)) if b == rp.id);
        if live && ex.reverting {
            super::revert::revert(root, state)?;
        } else if live {
            resumed = true;
        } else {
            journal::discard(state)?;
        }
    }
    let base = match rp {
        Some(rp) => rp.id,
        None => {
            // What the destination holds, as it holds it: admitted under a policy that allows
            // everything.
            let walked = crate::tree::walk::walk_fd(root, true)?;
            let rp = RecoveryPoint {
                id: new_rp_id()?,
                committed_ns: now_ns(),
                source_time_ns: 0,
                tree_hash: tree_hash(&walked.entries, HashOptions { owners }),
                entries: walked.entries.len() as u64,
                hash_owners: owners,
                list_digest: tree_hash(&walked.entries, HashOptions { owners: true }),
                policy: super::policy::ReplicaPolicy {
                    allow_setid: true,
                    allow_devices: true,
                },
            };
            state.commit(&rp, &walked.entries)?;
            rp.id
        }
    };
    // Whether the job guards identity (grant.rs), decided once for the journal: a resumed
    // session and a revert go by what its first session decided, not by the disk now.
    let guard = match super::grant::reachable(root) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("whether other users can reach the target is unknown ({e}): guarding as if they can");
            true
        }
    };
    Ok((Journal::open(root, state, base, guard)?, resumed))
}

/// Reads the sender's Expect list: one record for every large file the need list asked for, its
/// byte count bounded by the file's size (or equal to its accepted delta).
fn read_expect(
    ctl: &mut Link,
    need: &[Need],
    entries: &[Entry],
    deltas: &std::collections::HashMap<u32, Vec<(u64, u64)>>,
) -> Result<std::collections::HashMap<u32, u64>> {
    use crate::tree::entry::EntryKind;
    let mut out = std::collections::HashMap::new();
    let mut buf = Vec::new();
    loop {
        ctl.expect_frame(FrameKind::Expect, &mut buf)?;
        let (last, recs) = decode_expect(&buf)?;
        for (e, bytes) in recs {
            let ok = match (need.get(e.index()), entries.get(e.index()).map(|x| &x.kind)) {
                (Some(Need::Full), Some(EntryKind::File { size })) => {
                    !is_inline(*size) && bytes <= *size
                }
                (Some(Need::Delta | Need::Rest), Some(EntryKind::File { .. })) => deltas
                    .get(&e.0)
                    .is_some_and(|r| r.iter().map(|x| x.1).sum::<u64>() == bytes),
                _ => false,
            };
            if !ok || out.insert(e.0, bytes).is_some() {
                return Err(Error::Verify(format!(
                    "Expect record for entry {} does not match the need list",
                    e.0
                )));
            }
        }
        if last {
            break;
        }
    }
    let wanted = need.iter().enumerate().filter(|(i, n)| {
        **n != Need::Nothing
            && matches!(entries[*i].kind, EntryKind::File { size } if !is_inline(size))
    });
    if wanted.count() != out.len() {
        return Err(Error::Verify(
            "Expect list does not cover every large file of the need list".into(),
        ));
    }
    Ok(out)
}

/// Sends the need list, dense or sparse, whichever is shorter.
fn send_need(ctl: &mut Link, need: &[Need]) -> Result<()> {
    let wanted: Vec<(EntryId, Need)> = need
        .iter()
        .enumerate()
        .filter(|(_, n)| **n != Need::Nothing)
        .map(|(i, n)| (EntryId(i as u32), *n))
        .collect();
    // Five bytes per entry that needs data, against one per entry.
    if wanted.len().saturating_mul(5) < need.len() {
        let chunks: Vec<&[(EntryId, Need)]> = if wanted.is_empty() {
            vec![&[][..]]
        } else {
            wanted.chunks(MAX_NEED_SPARSE).collect()
        };
        for (k, c) in chunks.iter().enumerate() {
            ctl.write_frame(
                FrameKind::NeedSparse,
                &encode_need_sparse(k + 1 == chunks.len(), c),
            )?;
        }
        return Ok(());
    }
    let chunks: Vec<&[Need]> = need.chunks(NEED_CHUNK_BYTES).collect();
    for (k, c) in chunks.iter().enumerate() {
        let first = (k * NEED_CHUNK_BYTES) as u32;
        ctl.write_frame(
            FrameKind::NeedList,
            &encode_need(first, k + 1 == chunks.len(), c),
        )?;
    }
    Ok(())
}
