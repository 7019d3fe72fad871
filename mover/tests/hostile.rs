//! A receiver fed hostile input over a real socket ends the session with a clear error and
//! touches nothing outside its root.

mod common;

use common::*;
use mover::tree::entry::{Entry, EntryKind, Meta};
use mover::units::{EntryId, SessionId, WorkerIndex};
use mover::wire::codec::Enc;
use mover::wire::frame::{
    encode_frame, FrameHeader, FrameKind, FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD,
};
use mover::wire::message::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

fn hello(session: u128, role: Role, min: u16, max: u16) -> Vec<u8> {
    let h = Hello {
        min_version: min,
        max_version: max,
        software: mover::wire::message::software_version().into(),
        capabilities: CAP_OWNERS,
        session: SessionId(session),
        role,
    };
    encode_frame(FrameKind::Hello, &h.encode())
}

fn read_frame(s: &mut TcpStream) -> Option<(FrameKind, Vec<u8>)> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    s.read_exact(&mut h).ok()?;
    let h = FrameHeader::decode(&h).ok()?;
    let mut p = vec![0u8; h.len as usize];
    s.read_exact(&mut p).ok()?;
    Some((h.kind, p))
}

fn connect_control(addr: SocketAddr) -> TcpStream {
    connect_control_of(addr, 1)
}

/// The control connection of session 1, announcing `workers` worker connections.
fn connect_control_of(addr: SocketAddr, workers: u16) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&hello(
        1,
        Role::Control { workers },
        PROTOCOL_VERSION_MIN,
        PROTOCOL_VERSION_MAX,
    ))
    .unwrap();
    let (k, _) = read_frame(&mut s).expect("HelloAck");
    assert_eq!(k, FrameKind::HelloAck);
    s
}

fn entry(parent: u32, name: &[u8], kind: EntryKind) -> Entry {
    Entry {
        parent: EntryId(parent),
        name: name.to_vec(),
        kind,
        meta: Meta {
            mode: 0o644,
            ..Meta::default()
        },
        xattrs: vec![],
    }
}

fn entries_frame(es: &[Entry]) -> Vec<u8> {
    let mut e = Enc::new();
    for x in es {
        encode_entry(&mut e, x);
    }
    encode_frame(FrameKind::Entries, &e.buf)
}

/// Entries of a receiver's root other than its own state directory.
fn entries_in(root: &Path) -> usize {
    std::fs::read_dir(root)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name() != ".mover-state")
        .count()
}

fn root_entry() -> Entry {
    entry(0, b"", EntryKind::Dir)
}

/// Runs `attack` against a fresh receiver and returns the receiver's error text. Also checks
/// that a sentinel directory beside the root is untouched.
fn attack(
    setup: impl FnOnce(&Path, &Path),
    attack: impl FnOnce(SocketAddr),
) -> (String, tempfile::TempDir) {
    attack_with(Default::default(), setup, attack)
}

/// `attack` against a receiver with the given session limits.
fn attack_with(
    limits: mover::SessionLimits,
    setup: impl FnOnce(&Path, &Path),
    attack: impl FnOnce(SocketAddr),
) -> (String, tempfile::TempDir) {
    let t = tempfile::tempdir().unwrap();
    let (root, outside) = (t.path().join("root"), t.path().join("outside"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"precious").unwrap();
    setup(&root, &outside);
    let (addr, h) = start_receiver_with(&root, limits);
    attack(addr);
    let rep = h.join().unwrap();
    assert!(!rep.ok, "hostile session must fail");
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"precious");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "nothing created outside the root"
    );
    (rep.error.unwrap_or_default(), t)
}

#[test]
fn oversized_frame_is_rejected_naming_the_limit() {
    let (err, _t) = attack(
        |_, _| {},
        |addr| {
            let mut s = connect_control(addr);
            let h = FrameHeader {
                kind: FrameKind::Entries,
                sealed: false,
                len: (MAX_FRAME_PAYLOAD + 1) as u32,
                checksum: 0,
            };
            s.write_all(&h.encode()).unwrap();
            let (k, msg) = read_frame(&mut s).expect("error frame");
            assert_eq!(k, FrameKind::Error);
            assert!(decode_error(&msg).unwrap().1.contains("MAX_FRAME_PAYLOAD"));
        },
    );
    assert!(err.contains("exceeds the limit of 2097152"), "{err}");
}

#[test]
fn corrupted_frame_is_rejected_before_use() {
    let (err, t) = attack(
        |_, _| {},
        |addr| {
            let mut s = connect_control(addr);
            let mut f = entries_frame(&[
                root_entry(),
                entry(0, b"made-by-corrupt-frame", EntryKind::Dir),
            ]);
            let last = f.len() - 1;
            f[last] ^= 0xff;
            s.write_all(&f).unwrap();
            let _ = read_frame(&mut s);
        },
    );
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!t.path().join("root/made-by-corrupt-frame").exists());
}

#[test]
fn truncated_frame_ends_the_session() {
    let (err, _t) = attack(
        |_, _| {},
        |addr| {
            let mut s = connect_control(addr);
            let f = entries_frame(&[root_entry(), entry(0, b"a", EntryKind::Dir)]);
            s.write_all(&f[..f.len() - 3]).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let _ = read_frame(&mut s);
        },
    );
    assert!(err.contains("reading Entries frame"), "{err}");
}

#[test]
fn hostile_names_are_rejected() {
    for bad in [
        &b".."[..],
        b".",
        b"a/b",
        b"",
        b"nul\0byte",
        b"../../outside/victim",
    ] {
        let (err, t) = attack(
            |_, _| {},
            |addr| {
                let mut s = connect_control(addr);
                s.write_all(&entries_frame(&[
                    root_entry(),
                    entry(0, bad, EntryKind::File { size: 1 }),
                ]))
                .unwrap();
                s.write_all(&encode_frame(FrameKind::EntriesEnd, &2u64.to_le_bytes()))
                    .unwrap();
                let (k, _) = read_frame(&mut s).expect("error frame");
                assert_eq!(k, FrameKind::Error);
            },
        );
        assert!(err.contains("bad name"), "{bad:?}: {err}");
        assert_eq!(
            entries_in(&t.path().join("root")),
            0,
            "nothing created for {bad:?}"
        );
    }
}

#[test]
fn parent_that_is_not_a_directory_is_rejected() {
    let (err, _t) = attack(
        |_, _| {},
        |addr| {
            let mut s = connect_control(addr);
            let es = [
                root_entry(),
                entry(0, b"f", EntryKind::File { size: 1 }),
                entry(1, b"under-a-file", EntryKind::Dir),
            ];
            s.write_all(&entries_frame(&es)).unwrap();
            let _ = read_frame(&mut s);
        },
    );
    assert!(
        err.contains("parent 1 is not an earlier directory"),
        "{err}"
    );
}

#[test]
fn symlink_planted_in_destination_does_not_redirect_writes() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, outside) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("outside"),
    );
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/file"), b"from the source").unwrap();
    std::fs::write(src.join("victim"), vec![7u8; 200_000]).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"precious").unwrap();
    // A directory position and a file position both point outside the root.
    std::os::unix::fs::symlink(&outside, dst.join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), dst.join("victim")).unwrap();
    replicate(&src, &dst, 2);
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"precious");
    assert!(!outside.join("file").exists());
    assert!(std::fs::symlink_metadata(dst.join("sub")).unwrap().is_dir());
    assert_same_tree(&src, &dst);
}

#[test]
fn data_frame_for_an_entry_not_in_the_session_is_rejected() {
    let (err, t) = attack(
        |_, _| {},
        |addr| {
            // The small file needs data, so the session takes worker connections (one that
            // needs none opens none).
            let es = [
                root_entry(),
                entry(0, b"d", EntryKind::Dir),
                entry(0, b"f", EntryKind::File { size: 1 }),
            ];
            let (mut s, mut w) = open_session(addr, &es, &[]);
            let mut p = Vec::new();
            p.extend_from_slice(&1u32.to_le_bytes()); // entry 1 is a directory
            p.extend_from_slice(&0u64.to_le_bytes());
            p.extend_from_slice(b"payload aimed at a directory");
            w.write_all(&encode_frame(FrameKind::Data, &p)).unwrap();
            let _ = read_frame(&mut s);
        },
    );
    assert!(err.contains("does not transfer"), "{err}");
    assert_eq!(
        std::fs::read_dir(t.path().join("root/d")).unwrap().count(),
        0
    );
}

#[test]
fn version_mismatch_is_refused_with_both_ranges() {
    let t = tempfile::tempdir().unwrap();
    let (addr, _h) = start_receiver(t.path());
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&hello(5, Role::Control { workers: 1 }, 90, 99))
        .unwrap();
    let (k, msg) = read_frame(&mut s).expect("error frame");
    assert_eq!(k, FrameKind::Error);
    let (code, msg) = decode_error(&msg).unwrap();
    assert_eq!(code, ErrorCode::Version);
    let ours = format!("we speak {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION_MAX}");
    assert!(
        msg.contains("peer speaks 90..=99") && msg.contains(&ours),
        "{msg}"
    );
}

#[test]
fn bad_magic_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (addr, _h) = start_receiver(t.path());
    let mut s = TcpStream::connect(addr).unwrap();
    let mut p = hello(
        5,
        Role::Control { workers: 1 },
        PROTOCOL_VERSION_MIN,
        PROTOCOL_VERSION_MAX,
    )[FRAME_HEADER_LEN..]
        .to_vec();
    p[0] = b'X';
    s.write_all(&encode_frame(FrameKind::Hello, &p)).unwrap();
    let (k, msg) = read_frame(&mut s).expect("error frame");
    assert_eq!(k, FrameKind::Error);
    assert!(decode_error(&msg).unwrap().1.contains("bad magic"));
}

#[test]
fn expect_list_that_does_not_match_the_need_list_is_rejected() {
    let (err, t) = attack(
        |_, _| {},
        |addr| {
            let mut s = connect_control(addr);
            s.write_all(&entries_frame(&[
                root_entry(),
                entry(0, b"small", EntryKind::File { size: 10 }),
            ]))
            .unwrap();
            s.write_all(&encode_frame(FrameKind::EntriesEnd, &2u64.to_le_bytes()))
                .unwrap();
            let (k, _) = read_frame(&mut s).expect("need list");
            assert_eq!(k, FrameKind::NeedList);
            // Announces data for a small (inline) file, which travels in FileBatch frames only.
            s.write_all(&encode_frame(
                FrameKind::Expect,
                &encode_expect(true, &[(EntryId(1), 10)]),
            ))
            .unwrap();
            let _ = read_frame(&mut s);
        },
    );
    assert!(err.contains("does not match the need list"), "{err}");
    assert!(
        !t.path().join("root/small").exists()
            || std::fs::metadata(t.path().join("root/small"))
                .unwrap()
                .len()
                == 0
    );
}

#[test]
fn rename_hint_out_of_the_root_or_into_state_is_rejected() {
    for from in [
        &b"../outside/victim"[..],
        b"/etc/passwd",
        b".mover-state/recovery-point",
        b"a//b",
        b"",
    ] {
        let (err, t) = attack(
            |_, _| {},
            |addr| {
                let mut s = rename_hint(addr, b"stolen", from);
                s.write_all(&encode_frame(FrameKind::EntriesEnd, &2u64.to_le_bytes()))
                    .unwrap();
                let _ = read_frame(&mut s);
            },
        );
        assert!(err.contains("rename hint"), "{from:?}: {err}");
        assert!(!t.path().join("root/stolen").exists(), "{from:?}");
        assert_eq!(
            std::fs::read(t.path().join("outside/victim")).unwrap(),
            b"precious",
            "{from:?}"
        );
    }
}

/// Opens a session whose entry list is one small file `name`, then sends a hint that it was
/// renamed from `from`.
fn rename_hint(addr: SocketAddr, name: &[u8], from: &[u8]) -> TcpStream {
    let es = [root_entry(), entry(0, name, EntryKind::File { size: 8 })];
    let hint = Hint::Rename {
        entry: EntryId(1),
        from: from.to_vec(),
    };
    list_with_hints(addr, &es, &[hint])
}

/// Opens a session and sends the entry list `es` and one Hints frame of `hints` (no
/// EntriesEnd yet).
fn list_with_hints(addr: SocketAddr, es: &[Entry], hints: &[Hint]) -> TcpStream {
    let mut s = connect_control(addr);
    s.write_all(&entries_frame(es)).unwrap();
    let mut e = Enc::new();
    for h in hints {
        encode_hint(&mut e, h);
    }
    s.write_all(&encode_frame(FrameKind::Hints, &e.buf))
        .unwrap();
    s
}

/// `open_session` for one large file `big` of `size` bytes (entry 1), announced whole.
fn open_big_file_session(addr: SocketAddr, size: u64) -> (TcpStream, TcpStream) {
    let es = [root_entry(), entry(0, b"big", EntryKind::File { size })];
    open_session(addr, &es, &[(EntryId(1), size)])
}

/// Connects worker `index` of session 1 and returns its socket.
fn connect_worker_at(addr: SocketAddr, index: u16) -> TcpStream {
    let mut w = TcpStream::connect(addr).unwrap();
    w.write_all(&hello(
        1,
        Role::Worker {
            index: WorkerIndex(index),
        },
        PROTOCOL_VERSION_MIN,
        PROTOCOL_VERSION_MAX,
    ))
    .unwrap();
    let (k, _) = read_frame(&mut w).expect("ack");
    assert_eq!(k, FrameKind::HelloAck);
    w
}

/// Sends `es` and EntriesEnd, reads the need list, sends `expect` as the whole Expect list and
/// connects the worker.
fn open_session(
    addr: SocketAddr,
    es: &[Entry],
    expect: &[(EntryId, u64)],
) -> (TcpStream, TcpStream) {
    let (s, mut ws) = open_session_of(addr, es, expect, 1);
    (s, ws.remove(0))
}

/// `open_session` with `workers` worker connections, returned in index order.
fn open_session_of(
    addr: SocketAddr,
    es: &[Entry],
    expect: &[(EntryId, u64)],
    workers: u16,
) -> (TcpStream, Vec<TcpStream>) {
    let mut s = connect_control_of(addr, workers);
    s.write_all(&entries_frame(es)).unwrap();
    s.write_all(&encode_frame(
        FrameKind::EntriesEnd,
        &(es.len() as u64).to_le_bytes(),
    ))
    .unwrap();
    let (k, _) = read_frame(&mut s).expect("need list");
    assert_eq!(k, FrameKind::NeedList);
    s.write_all(&encode_frame(
        FrameKind::Expect,
        &encode_expect(true, expect),
    ))
    .unwrap();
    let ws = (0..workers).map(|i| connect_worker_at(addr, i)).collect();
    (s, ws)
}

#[test]
fn an_empty_file_batch_is_refused() {
    let (err, t) = attack(
        |_, _| {},
        |addr| {
            let es = [
                root_entry(),
                entry(0, b"small", EntryKind::File { size: 10 }),
            ];
            let (mut s, mut w) = open_session(addr, &es, &[]);
            // A FileBatch of zero records: nothing to write, but it would count as a frame.
            w.write_all(&encode_frame(FrameKind::FileBatch, &0u32.to_le_bytes()))
                .unwrap();
            let _ = read_frame(&mut s);
        },
    );
    assert!(err.contains("batch file count (0)"), "{err}");
    assert!(!t.path().join("root/small").exists());
}

#[test]
fn an_entry_list_over_its_byte_budget_is_refused() {
    let limits = mover::SessionLimits {
        entry_list_bytes: 4096,
        ..Default::default()
    };
    let (err, t) = attack_with(
        limits,
        |_, _| {},
        |addr| {
            let mut s = connect_control(addr);
            // 64 directories with 200-byte names: about 14 KiB, well under the count limit.
            let mut es = vec![root_entry()];
            for i in 0..64 {
                es.push(entry(0, format!("{i:0200}").as_bytes(), EntryKind::Dir));
            }
            s.write_all(&entries_frame(&es)).unwrap();
            let _ = read_frame(&mut s);
        },
    );
    assert!(
        err.contains("entry list exceeds this receiver's limit of 4096 bytes"),
        "{err}"
    );
    assert_eq!(entries_in(&t.path().join("root")), 0);
}

#[test]
fn hints_over_their_byte_budget_are_refused() {
    let limits = mover::SessionLimits {
        hint_bytes: 1024,
        ..Default::default()
    };
    let (err, t) = attack_with(
        limits,
        |_, _| {},
        |addr| {
            // One rename hint with a 2000-byte source: within the count and path limits.
            let mut s = rename_hint(addr, b"f", &[b'x'; 2000]);
            let _ = read_frame(&mut s);
        },
    );
    assert!(
        err.contains("hint list exceeds this receiver's limit of 1024 bytes"),
        "{err}"
    );
    assert_eq!(entries_in(&t.path().join("root")), 0);
}

#[test]
fn empty_hint_frames_are_not_free() {
    // Each Hints frame was charged its payload only: empty ones cost nothing, and each
    // counted every hint so far again.
    let limits = mover::SessionLimits {
        hint_bytes: 1024,
        ..Default::default()
    };
    let (err, _t) = attack_with(
        limits,
        |_, _| {},
        |addr| {
            let mut s = connect_control(addr);
            // Refused at once when they are counted; never answered when they are not.
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            s.write_all(&entries_frame(&[root_entry()])).unwrap();
            let empty = encode_frame(FrameKind::Hints, &Enc::new().buf);
            for _ in 0..1000 {
                if s.write_all(&empty).is_err() {
                    break;
                }
            }
            let _ = read_frame(&mut s);
        },
    );
    assert!(
        err.contains("hint list exceeds this receiver's limit of 1024 bytes"),
        "{err}"
    );
}

#[test]
fn more_data_frames_than_the_expect_totals_allow_are_refused() {
    // A 200 KiB file announced whole: the plan could cut it into at most
    // max_data_frames(204800) frames. One more, each carrying one byte (so the byte count
    // stays under what was announced), ends the session.
    const SIZE: u64 = 200 * 1024;
    let budget = max_data_frames(SIZE);
    assert!(
        budget < SIZE,
        "the frame budget binds before the byte count"
    );
    let (err, _t) = attack(
        |_, _| {},
        |addr| {
            let (mut s, mut w) = open_big_file_session(addr, SIZE);
            let mut out = Vec::with_capacity(64 << 10);
            for k in 0..=budget {
                out.extend_from_slice(&data_frame(1, k, 1, b'x'));
                if out.len() >= 60 << 10 {
                    if w.write_all(&out).is_err() {
                        break;
                    }
                    out.clear();
                }
            }
            let _ = w.write_all(&out);
            let _ = read_frame(&mut s);
        },
    );
    assert!(
        err.contains("more data frames than the need list and the Expect totals allow"),
        "{err}"
    );
}

#[test]
fn a_deep_chain_whose_paths_outgrow_the_entry_list_is_refused_before_it_is_built() {
    // 900 nested directories with 255-byte names: 270 KB of entries, 100 MB of full paths.
    let (err, t) = attack(
        |_, _| {},
        |addr| {
            let mut s = connect_control(addr);
            let mut es = vec![root_entry()];
            for i in 0..900u32 {
                let name = format!("{i:0255}");
                es.push(entry(i, name.as_bytes(), EntryKind::Dir));
            }
            for chunk in es.chunks(1000) {
                s.write_all(&entries_frame(chunk)).unwrap();
            }
            s.write_all(&encode_frame(
                FrameKind::EntriesEnd,
                &(es.len() as u64).to_le_bytes(),
            ))
            .unwrap();
            let _ = read_frame(&mut s);
        },
    );
    assert!(err.contains("directories nested too deep"), "{err}");
    assert_eq!(entries_in(&t.path().join("root")), 0);
}

/// A worker Hello of index `index` of session 1; the receiver's answer (kind and payload).
fn worker_hello(addr: SocketAddr, index: u16) -> (FrameKind, Vec<u8>) {
    let mut w = TcpStream::connect(addr).unwrap();
    w.write_all(&hello(
        1,
        Role::Worker {
            index: WorkerIndex(index),
        },
        PROTOCOL_VERSION_MIN,
        PROTOCOL_VERSION_MAX,
    ))
    .unwrap();
    read_frame(&mut w).expect("an answer")
}

#[test]
fn a_worker_index_is_taken_once_and_only_if_the_session_has_it() {
    // Each worker's HelloAck is sealed from counter 0 of its index's key: a second one would
    // reuse the nonce. Anyone who saw the session's handle (in clear in every Hello) could
    // ask for it, and have every such connection held until the session ends.
    let mut answers = Vec::new();
    let (err, _t) = attack(
        |_, _| {},
        |addr| {
            let es = [
                root_entry(),
                entry(0, b"big", EntryKind::File { size: 1 << 20 }),
            ];
            // Worker 0 of the session's one worker connects, as the session expects.
            let (s, _w) = open_session(addr, &es, &[(EntryId(1), 1 << 20)]);
            answers.push(worker_hello(addr, 0));
            answers.push(worker_hello(addr, 1));
            drop(s.shutdown(std::net::Shutdown::Both));
        },
    );
    assert!(!err.is_empty());
    let said = |(k, p): &(FrameKind, Vec<u8>)| {
        assert_eq!(
            *k,
            FrameKind::Error,
            "a repeated worker Hello was acknowledged"
        );
        String::from_utf8_lossy(p).into_owned()
    };
    assert!(said(&answers[0]).contains("worker 0 of this session has connected already"));
    assert!(said(&answers[1]).contains("worker 1 is not one of this session's"));
}

#[test]
fn two_rename_hints_for_one_entry_or_from_one_place_are_refused() {
    // Of two, only the last would be placed: the other item, staged aside, would be in no
    // path of the recovery point and go with the job's journal.
    for hints in [[(1, &b"a"[..]), (1, b"b")], [(1, b"a"), (2, b"a")]] {
        let (err, t) = attack(
            |root, _| {
                std::fs::write(root.join("a"), b"12345678").unwrap();
                std::fs::write(root.join("b"), b"12345678").unwrap();
            },
            |addr| {
                let es = [
                    root_entry(),
                    entry(0, b"x", EntryKind::File { size: 8 }),
                    entry(0, b"y", EntryKind::File { size: 8 }),
                ];
                let hs = hints.map(|(i, from)| Hint::Rename {
                    entry: EntryId(i),
                    from: from.to_vec(),
                });
                let mut s = list_with_hints(addr, &es, &hs);
                s.write_all(&encode_frame(FrameKind::EntriesEnd, &3u64.to_le_bytes()))
                    .unwrap();
                let _ = read_frame(&mut s);
            },
        );
        assert!(err.contains("a second rename hint"), "{hints:?}: {err}");
        for name in ["a", "b"] {
            assert!(t.path().join("root").join(name).exists(), "{name} moved");
        }
    }
}

#[test]
fn a_hello_sent_a_byte_at_a_time_holds_up_no_other_connection() {
    // One accept loop takes every connection, workers of running sessions too: a peer that
    // sends its Hello a byte a second (each within the read timeout) would hold it for as
    // long as its Hello lasts, and every sender behind it until they time out.
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    for i in 0..20 {
        std::fs::create_dir_all(src.join(format!("d{}", i % 3))).unwrap();
        std::fs::write(src.join(format!("d{}/f{i}", i % 3)), vec![i as u8; 5000]).unwrap();
    }
    std::fs::create_dir_all(&dst).unwrap();
    let (addr, reports) = start_serving(&dst);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let frame = hello(7, Role::Control { workers: 1 }, 1, 1);
            for b in frame {
                if stop.load(std::sync::atomic::Ordering::SeqCst) || s.write_all(&[b]).is_err() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    let sent = send_to(&src, addr, 2);
    let took = t0.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    trickle.join().unwrap();
    sent.expect("the job behind the slow Hello");
    assert!(reports.recv().unwrap().ok);
    // The trickle lasts its frame's length in half-seconds (over 30 s): the job is not
    // waiting for it.
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
    assert_same_tree(&src, &dst);
}

#[test]
fn block_hashes_the_receiver_did_not_ask_for_are_refused() {
    // A job that does not repair never asks for them: unasked, they would make the receiver
    // read and hash target files and rewrite them in place.
    let size = 4 * INLINE_MAX;
    let (err, t) = attack(
        |root, _| std::fs::write(root.join("big"), vec![7u8; size as usize]).unwrap(),
        |addr| {
            let es = [root_entry(), entry(0, b"big", EntryKind::File { size })];
            let hint = Hint::Blocks {
                entry: EntryId(1),
                first: 0,
                hashes: vec![0; 1],
            };
            let mut s = list_with_hints(addr, &es, &[hint]);
            s.write_all(&encode_frame(FrameKind::EntriesEnd, &2u64.to_le_bytes()))
                .unwrap();
            let _ = read_frame(&mut s);
        },
    );
    assert!(err.contains("did not ask for"), "{err}");
    assert_eq!(
        std::fs::read(t.path().join("root/big")).unwrap(),
        vec![7u8; size as usize]
    );
}

/// A Data frame of `len` bytes `byte` for entry `entry` at `offset`.
fn data_frame(entry: u32, offset: u64, len: u64, byte: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(DATA_PREFIX_LEN + len as usize);
    p.extend_from_slice(&entry.to_le_bytes());
    p.extend_from_slice(&offset.to_le_bytes());
    p.resize(DATA_PREFIX_LEN + len as usize, byte);
    encode_frame(FrameKind::Data, &p)
}

#[test]
fn a_data_frame_over_bytes_already_received_is_refused() {
    // Its first half twice, as many bytes as announced: without a check of which bytes came,
    // the file would count as finished with its second half a hole.
    const SIZE: u64 = 4 * INLINE_MAX;
    let (err, _t) = attack(
        |_, _| {},
        |addr| {
            let (mut s, mut w) = open_big_file_session(addr, SIZE);
            for (at, byte) in [(0u64, b'a'), (SIZE / 4, b'b'), (0, b'c'), (SIZE / 4, b'd')] {
                if w.write_all(&data_frame(1, at, SIZE / 4, byte)).is_err() {
                    break;
                }
            }
            let _ = read_frame(&mut s);
        },
    );
    assert!(err.contains("overlaps bytes already received"), "{err}");
}

#[test]
fn a_worker_failure_is_reported_not_the_echo_of_the_others_stopped_after_it() {
    // Worker 1 of 2 is refused (bytes sent twice) while worker 0 waits for data. A sender
    // then ends the session (it half-closes the control connection), so worker 0 fails too,
    // only because the session ended: the report must give worker 1's cause, although
    // worker 0's handle is joined first.
    const SIZE: u64 = 4 * INLINE_MAX;
    let (err, _t) = attack(
        |_, _| {},
        |addr| {
            let es = [
                root_entry(),
                entry(0, b"big", EntryKind::File { size: SIZE }),
            ];
            let (mut s, mut ws) = open_session_of(addr, &es, &[(EntryId(1), SIZE)], 2);
            let mut w1 = ws.pop().unwrap();
            for byte in [b'a', b'b'] {
                if w1.write_all(&data_frame(1, 0, SIZE / 4, byte)).is_err() {
                    break;
                }
            }
            // Until the receiver drops worker 1's connection.
            let _ = w1.read_to_end(&mut Vec::new());
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let _ = s.read_to_end(&mut Vec::new());
            drop(ws);
        },
    );
    assert!(err.contains("overlaps bytes already received"), "{err}");
}

#[test]
fn a_file_swapped_for_a_hard_link_mid_job_is_not_written_through() {
    // A local writer in a standalone receiver's target replaces a large file the job created
    // with a hard link to a file outside the root, before the job's worker opens it again by
    // path to write its data: nothing may reach the file outside.
    swap_mid_job(|src| {
        std::fs::write(src.join("big.bin"), vec![b's'; 1 << 20]).unwrap();
    });
}

#[test]
fn a_file_of_holes_swapped_for_a_hard_link_mid_job_is_not_chowned() {
    // All holes: no data comes for it, and the last phase sets its metadata by path.
    swap_mid_job(|src| {
        std::fs::File::create(src.join("big.bin"))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        // Some data, so the session has a worker connection to hold back.
        std::fs::write(src.join("small"), b"data").unwrap();
    });
}

/// Fills a source with `fill` (a large file `big.bin` among its files) and sends it to a
/// standalone receiver, whose one worker connection is held back while the test replaces
/// the target's `big.bin`, once the apply phase made it, with a hard link to a file outside
/// the root. The session must fail, naming the replaced file, and leave the outside file as
/// it was (bytes, mode, mtime).
fn swap_mid_job(fill: impl FnOnce(&Path)) {
    use common::faults::{Fault, FaultProxy};
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let (src, root, outside) = (
        t.path().join("src"),
        t.path().join("root"),
        t.path().join("outside"),
    );
    for d in [&src, &root, &outside] {
        std::fs::create_dir_all(d).unwrap();
    }
    fill(&src);
    let size = std::fs::metadata(src.join("big.bin")).unwrap().len();
    let victim = outside.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = std::fs::metadata(&victim).unwrap();
    let (addr, h) = start_receiver(&root);
    // Connection 0 is the control connection, 1 the one worker's: held back until the swap.
    let proxy = FaultProxy::start(
        addr,
        vec![Fault::DelayConnect {
            conn_index: 1,
            ms: 2000,
        }],
    );
    let to = proxy.addr;
    let sender = std::thread::spawn(move || send_to(&src, to, 1));
    let planted = root.join("big.bin");
    let t0 = std::time::Instant::now();
    // The apply phase creates the file at its full size before any data comes.
    while std::fs::metadata(&planted).map_or(true, |m| m.len() != size) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "never created"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::fs::remove_file(&planted).unwrap();
    std::fs::hard_link(&victim, &planted).unwrap();
    // The worker is held for 2 s from when it connects, which is after t0.
    assert!(
        t0.elapsed() < std::time::Duration::from_millis(1500),
        "swapped too late"
    );
    let rep = h.join().unwrap();
    assert!(!rep.ok, "the session must fail");
    let err = rep.error.unwrap_or_default();
    assert!(
        err.contains("was replaced while this job wrote it"),
        "{err}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let after = std::fs::metadata(&victim).unwrap();
    assert_eq!(after.permissions().mode(), before.permissions().mode());
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());
    assert!(sender.join().unwrap().is_err());
}
