//! Entry points for fuzzing (feature `testkit`): each feeds arbitrary bytes to the decoders a
//! peer or a damaged disk can reach. None may panic, loop or allocate beyond the limits; errors
//! are the expected outcome. The cargo-fuzz targets in `fuzz/` call these, and the corpus
//! replay test (`tests/fuzz_corpus.rs`) runs every committed input through them in CI.

use crate::tree::entry::StructureChecker;
use crate::wire::frame::{decode_frame, FrameHeader, FRAME_HEADER_LEN};
use crate::wire::message::*;
use crate::wire::seal::{Direction, Opener, SessionSecret, SECRET_LEN};

/// Every frame decoder on a stream of frames, then the payload decoders on the raw bytes.
pub fn frames(data: &[u8]) {
    let mut rest = data;
    while let Ok((_, payload, used)) = decode_frame(rest) {
        payload_decoders(payload);
        rest = &rest[used..];
    }
    payload_decoders(data);
}

/// The list passes the structure checks a receiver applies to every list.
fn checked(es: &[crate::tree::entry::Entry]) -> bool {
    let mut c = StructureChecker::new();
    es.iter().all(|e| c.push(e).is_ok())
}

fn payload_decoders(p: &[u8]) {
    let _ = Hello::decode(p);
    let _ = HelloAck::decode(p);
    if let Ok(es) = decode_entries(p) {
        // As the receiver does: paths are measured only of a list that passed the checker.
        if checked(&es) {
            let _ = crate::tree::entry::path_bytes(&es);
        }
    }
    let _ = decode_hints(p);
    if let Ok(ops) = decode_delta(p) {
        // Against a small base, the way a receiver applies them.
        let base = [crate::tree::entry::Entry {
            parent: crate::units::EntryId(0),
            name: Vec::new(),
            kind: crate::tree::entry::EntryKind::Dir,
            meta: Default::default(),
            xattrs: Vec::new(),
        }];
        let mut a = crate::tree::diff::DeltaApplier::new(base.len());
        let mut c = StructureChecker::new();
        for op in ops {
            let r = a.apply(
                &base,
                op,
                |e| -> Result<(), crate::tree::diff::DeltaError> {
                    let _ = c.push(&e);
                    Ok(())
                },
            );
            if r.is_err() {
                break;
            }
        }
    }
    let _ = BaseOffer::decode(p);
    let _ = BaseAnswer::decode(p);
    let _ = decode_need(p);
    let _ = decode_need_sparse(p);
    let _ = decode_expect(p);
    let _ = decode_batch(p);
    let _ = decode_data_prefix(p);
    let _ = decode_worker_done(p);
    let _ = crate::wire::message::decode_rest(p);
    let _ = decode_error(p);
    let _ = Commit::decode(p);
    let _ = Verified::decode(p);
}

/// A sealed frame (header and payload) opened with a fixed secret: authentication must fail
/// cleanly on anything the fuzzer makes.
pub fn sealed_frame(data: &[u8]) {
    if data.len() < FRAME_HEADER_LEN {
        return;
    }
    let mut h = [0u8; FRAME_HEADER_LEN];
    h.copy_from_slice(&data[..FRAME_HEADER_LEN]);
    let Ok(header) = FrameHeader::decode(&h) else {
        return;
    };
    let mut payload = data[FRAME_HEADER_LEN..].to_vec();
    let secret = SessionSecret::from_bytes([7u8; SECRET_LEN]);
    let mut o = Opener::new(&secret, Direction::ToReceiver, 0);
    let _ = o.open(&header, &mut payload);
}

/// The files a receiver and a sender keep on disk: the recovery point record, the recovery
/// point's entry list, the undo journal (its log and `inplace` records) and the workers' logs
/// of durable ranges beside it, and the sender's manifest.
pub fn state_files(data: &[u8]) {
    let _ = crate::receiver::state::RecoveryPoint::decode(data);
    let (recs, _) = crate::durable::parse_records(data);
    for r in &recs {
        let _ = crate::receiver::journal::Undo::decode(r);
        let _ = crate::receiver::journal::InPlace::decode(r);
        let _ = crate::receiver::resume::Written::decode(r);
        if let Ok(es) = decode_entries(r) {
            if checked(&es) {
                let _ = crate::tree::entry::path_bytes(&es);
            }
        }
    }
    let _ = crate::sender::manifest::Manifest::decode_body(data);
    let _ = crate::sender::manifest::Manifest::decode_head(data);
    let _ = crate::receiver::scrub::ScrubReport::decode(data);
}

/// Valid inputs for each target, built from the tree at `root` (a few files are enough): the
/// fuzzers start from these and mutate. Returns (target, name, bytes).
pub fn seeds(root: &std::path::Path) -> crate::Result<Vec<(&'static str, String, Vec<u8>)>> {
    use crate::receiver::journal::Undo;
    use crate::receiver::state::{RecoveryPoint, RecoveryPointId};
    use crate::units::{EntryId, SessionId, WorkerIndex};
    use crate::wire::codec::Enc;
    use crate::wire::frame::{encode_frame, FrameKind};
    use crate::wire::seal::Sealer;

    let walked = crate::tree::walk::walk(root, true)?;
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut frame = |name: &str, kind: FrameKind, payload: Vec<u8>| {
        out.push((
            "frame_decoder",
            name.to_string(),
            encode_frame(kind, &payload),
        ));
    };
    let hello = Hello {
        min_version: PROTOCOL_VERSION_MIN,
        max_version: PROTOCOL_VERSION_MAX,
        software: software_version().to_string(),
        capabilities: CAP_OWNERS | CAP_USER_XATTRS | CAP_SEALED,
        session: SessionId(0x1234),
        role: Role::Control { workers: 2 },
    };
    frame("hello", FrameKind::Hello, hello.encode());
    let worker = Hello {
        role: Role::Worker {
            index: WorkerIndex(1),
        },
        ..hello
    };
    frame("hello-worker", FrameKind::Hello, worker.encode());
    let ack = HelloAck {
        version: PROTOCOL_VERSION_MAX,
        software: software_version().to_string(),
        capabilities: CAP_OWNERS,
        recovery_point: 7,
        job_pending: true,
    };
    frame("hello-ack", FrameKind::HelloAck, ack.encode());
    let mut e = Enc::new();
    for x in &walked.entries {
        encode_entry(&mut e, x);
    }
    frame("entries", FrameKind::Entries, e.buf.clone());
    let mut h = Enc::new();
    encode_hint(
        &mut h,
        &Hint::Rename {
            entry: EntryId(1),
            from: b"old/name".to_vec(),
        },
    );
    encode_hint(
        &mut h,
        &Hint::Delta {
            entry: EntryId(1),
            base_size: 1 << 20,
            base_mtime: (1_700_000_000, 5),
            ranges: vec![(0, 4096), (65536, 8192)],
        },
    );
    encode_hint(
        &mut h,
        &Hint::Blocks {
            entry: EntryId(1),
            first: 0,
            hashes: vec![0x1234, 0x5678],
        },
    );
    frame("hints", FrameKind::Hints, h.buf);
    let offer = BaseOffer {
        recovery_point: 9,
        list_digest: 4,
        entries: walked.entries.len() as u64,
    };
    frame("base-offer", FrameKind::BaseOffer, offer.encode());
    let answer = BaseAnswer {
        accepted: true,
        recovery_point: 9,
        list_digest: 4,
    };
    frame("base-answer", FrameKind::BaseAnswer, answer.encode());
    let mut delta = Enc::new();
    for op in [
        DeltaOp::Keep(2),
        DeltaOp::Skip(1),
        DeltaOp::Replace(walked.entries[1].clone()),
        DeltaOp::Put(walked.entries[2].clone()),
    ] {
        encode_delta_op(&mut delta, &op);
    }
    frame("entries-delta", FrameKind::EntriesDelta, delta.buf);
    frame(
        "need-sparse",
        FrameKind::NeedSparse,
        encode_need_sparse(true, &[(EntryId(1), Need::Full), (EntryId(3), Need::Delta)]),
    );
    let needs = vec![Need::Nothing, Need::Full, Need::Delta];
    frame("need", FrameKind::NeedList, encode_need(0, true, &needs));
    frame(
        "expect",
        FrameKind::Expect,
        encode_expect(true, &[(EntryId(1), 1 << 20)]),
    );
    let mut batch = Enc::new();
    batch.u32(2).u32(1).u32(3);
    batch.buf.extend_from_slice(b"abc");
    batch.u32(2).u32(0);
    frame("batch", FrameKind::FileBatch, batch.buf);
    let mut data = Enc::new();
    data.u32(1).u64(4096);
    data.buf.extend_from_slice(&[0x5a; 100]);
    frame("data", FrameKind::Data, data.buf);
    frame(
        "worker-done",
        FrameKind::WorkerDone,
        encode_worker_done(3, 300),
    );
    frame(
        "error",
        FrameKind::Error,
        encode_error(ErrorCode::DiskFull, "the destination file system is full"),
    );
    let commit = Commit {
        tree_hash: 1,
        content_digest: 2,
        data_frames: 3,
        data_bytes: 4,
        source_time_ns: 5,
    };
    frame("commit", FrameKind::Commit, commit.encode());
    let verified = Verified {
        ok: true,
        message: "verified".into(),
        tree_hash: 1,
        recovery_point: 2,
    };
    frame("verified", FrameKind::Verified, verified.encode());
    // A sealed frame under the fuzz target's fixed secret, so mutations reach the opener.
    let secret = SessionSecret::from_bytes([7u8; SECRET_LEN]);
    let mut payload = b"sealed payload".to_vec();
    let (sh, tag) =
        Sealer::new(&secret, Direction::ToReceiver, 0).seal(FrameKind::Data, &mut payload);
    let mut sealed = sh.encode().to_vec();
    sealed.extend_from_slice(&payload);
    sealed.extend_from_slice(&tag);
    out.push(("frame_decoder", "sealed".into(), sealed));

    let rp = RecoveryPoint {
        id: RecoveryPointId(9),
        committed_ns: 1,
        source_time_ns: 2,
        tree_hash: 3,
        entries: walked.entries.len() as u64,
        hash_owners: true,
        list_digest: 4,
        policy: Default::default(),
    };
    out.push(("state_files", "recovery-point".into(), rp.encode()));
    let mut list = Vec::new();
    crate::durable::frame_record(&e.buf, &mut list);
    out.push(("state_files", "rp-entries".into(), list));
    let mut journal = Vec::new();
    for u in [
        Undo::Header {
            base: RecoveryPointId(9),
        },
        Undo::Created {
            path: b"a/b".to_vec(),
        },
        Undo::Moved {
            path: b"c".to_vec(),
            obj: 1,
        },
        Undo::Renamed {
            from: b"d".to_vec(),
            to: b"e".to_vec(),
        },
        Undo::PreImage {
            path: b"f".to_vec(),
            offset: 0,
            len: 4096,
            file: 0,
            file_off: 0,
        },
        Undo::Resized {
            path: b"f".to_vec(),
            old_size: 8192,
        },
    ] {
        crate::durable::frame_record(&u.encode(), &mut journal);
    }
    out.push(("state_files", "journal".into(), journal));
    // The journal's side file (`journal/inplace`): which inode each file changed in place was.
    let mut in_place = Vec::new();
    let marker = crate::receiver::journal::InPlace::identity_marker(RecoveryPointId(9));
    crate::durable::frame_record(&marker.encode(), &mut in_place);
    for (at, path, ino) in [(1u64, &b"f"[..], 12u64), (3, b"g/h", 13)] {
        let r = crate::receiver::journal::InPlace {
            base: RecoveryPointId(9),
            at,
            path: path.to_vec(),
            ino,
            btime: Some((1_700_000_000, ino as u32)),
            grant: ino == 13,
        };
        crate::durable::frame_record(&r.encode(), &mut in_place);
    }
    out.push(("state_files", "in-place".into(), in_place));
    let mut written = Vec::new();
    let w = crate::receiver::resume::Written {
        path: b"f".to_vec(),
        version: crate::receiver::resume::Version {
            ino: 12,
            btime: Some((1_700_000_000, 7)),
            size: 1 << 20,
            mtime: (1_700_000_000, 5),
        },
        ranges: vec![(0, 65536), (131072, 4096)],
    };
    crate::durable::frame_record(&w.encode(), &mut written);
    out.push(("state_files", "written-log".into(), written));
    let mut m = crate::sender::hints::build_manifest(&walked, 9, Default::default());
    m.entries = walked.entries.clone();
    m.list_digest = 4;
    out.push(("state_files", "manifest".into(), m.encode_body()));
    out.push(("state_files", "manifest-head".into(), m.encode_head()));
    let scrub = crate::receiver::scrub::ScrubReport {
        at_ns: 1,
        ok: false,
        recovery_point: format!("{:032x}", 9),
        entries: 3,
        difference: Some("destination differs from source at a".into()),
        by: crate::receiver::scrub::ScrubBy::Scrub,
    };
    out.push(("state_files", "scrub".into(), scrub.encode()));
    Ok(out)
}
