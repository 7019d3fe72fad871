//! Incremental replication against real trees on real sockets: block deltas, renames by inode,
//! recovery points, revert and resume of interrupted jobs.

mod common;

use common::*;
use mover::churn::{churn, ChurnSpec};
use mover::gen::{generate, Rng, TreeSpec};
use mover::tree::hash::hash_dir;
use std::path::Path;

/// Churn rounds, each followed by a job and a check of both trees.
const ROUNDS: u64 = 24;

fn tree_hash(p: &Path) -> (u128, Option<u128>) {
    let (t, c, _) = hash_dir(p, owners(), true).unwrap();
    (t, c)
}

fn setup(t: &Path, spec: TreeSpec) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (src, dst, state) = (t.join("src"), t.join("dst"), t.join("state"));
    std::fs::create_dir_all(&dst).unwrap();
    generate(&src, &spec).unwrap();
    (src, dst, state)
}

/// Rewrites `n` distinct seeded 4 KiB blocks of the file of `size` bytes at the top of `dir`
/// with random data.
fn rewrite_blocks(dir: &Path, size: u64, n: usize, seed: u64) {
    let big = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.metadata().unwrap().len() == size)
        .unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    let mut rng = Rng(seed);
    let mut block = vec![0u8; 4096];
    let mut blocks = std::collections::BTreeSet::new();
    while blocks.len() < n {
        blocks.insert(rng.next_u64() % (size / 4096));
    }
    for b in &blocks {
        rng.fill(&mut block);
        std::os::unix::fs::FileExt::write_all_at(&f, &block, b * 4096).unwrap();
    }
}

#[test]
fn churn_rounds_keep_target_equal_to_source() {
    let t = tempfile::tempdir().unwrap();
    let spec = TreeSpec {
        small_files: 60,
        large_files: 3,
        large_size: 1 << 20,
        ..Default::default()
    };
    let (src, dst, state) = setup(t.path(), spec);
    let (addr, reports) = start_serving(&dst);
    let first = send_state(&src, addr, &state).unwrap();
    assert!(!first.incremental, "no manifest yet");
    assert_same_tree(&src, &dst);
    let (mut deltas, mut incremental) = (0, 0);
    for round in 0..ROUNDS {
        churn(
            &src,
            &ChurnSpec {
                seed: 1000 + round,
                ops: 30,
                ..Default::default()
            },
        )
        .unwrap();
        let rep = send_state(&src, addr, &state).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let r = reports.recv().unwrap();
        assert!(r.ok, "round {round}: {:?}", r.error);
        assert_same_tree(&src, &dst);
        deltas += rep.files_delta;
        incremental += rep.incremental as u32;
        assert!(rep.delta_list, "round {round}: the list went as a delta");
        assert!(
            !r.full_verify,
            "round {round}: only what changed was verified"
        );
    }
    assert_eq!(
        incremental, ROUNDS as u32,
        "every later job used the manifest"
    );
    assert!(deltas > 0, "some changed large files went as block deltas");
}

#[test]
fn rewriting_a_few_blocks_sends_only_those_blocks() {
    let t = tempfile::tempdir().unwrap();
    let spec = TreeSpec {
        small_files: 5,
        large_files: 1,
        large_size: 16 << 20,
        extras: false,
        ..Default::default()
    };
    let (src, dst, state) = setup(t.path(), spec);
    let (addr, _reports) = start_serving(&dst);
    send_state(&src, addr, &state).unwrap();
    rewrite_blocks(&src, 16 << 20, 40, 5);
    let rep = send_state(&src, addr, &state).unwrap();
    assert_same_tree(&src, &dst);
    let changed = 40 * 4096;
    assert_eq!(rep.files_delta, 1);
    assert_eq!(rep.bytes, changed, "exactly the rewritten blocks");
    assert!(
        rep.wire_bytes as f64 <= changed as f64 * 1.2 + 64.0 * 1024.0,
        "wire {} for {changed} changed",
        rep.wire_bytes
    );
}

#[test]
fn renamed_directory_is_sent_as_a_rename() {
    let t = tempfile::tempdir().unwrap();
    let spec = TreeSpec {
        small_files: 200,
        large_files: 4,
        large_size: 4 << 20,
        ..Default::default()
    };
    let (src, dst, state) = setup(t.path(), spec);
    let (addr, _reports) = start_serving(&dst);
    send_state(&src, addr, &state).unwrap();
    std::fs::create_dir(src.join("moved-here")).unwrap();
    std::fs::rename(src.join("dir000"), src.join("moved-here/renamed")).unwrap();
    std::fs::rename(
        src.join("large0.bin"),
        src.join("moved-here/large0-renamed.bin"),
    )
    .unwrap();
    let rep = send_state(&src, addr, &state).unwrap();
    assert_same_tree(&src, &dst);
    assert!(rep.incremental);
    assert_eq!(rep.bytes, 0, "no file data for moves");
    assert!(rep.wire_bytes < 1 << 20, "wire bytes {}", rep.wire_bytes);
}

#[test]
fn interrupted_job_reverts_to_the_previous_recovery_point() {
    let t = tempfile::tempdir().unwrap();
    let spec = TreeSpec {
        small_files: 100,
        large_files: 3,
        large_size: 2 << 20,
        ..Default::default()
    };
    let (src, dst, state) = setup(t.path(), spec);
    let (addr, h) = start_receiver(&dst);
    send_state(&src, addr, &state).unwrap();
    assert!(h.join().unwrap().ok);
    let before = tree_hash(&dst);
    churn(
        &src,
        &ChurnSpec {
            seed: 77,
            ops: 60,
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::write(src.join("new-large.bin"), vec![7u8; 3 << 20]).unwrap();
    // Cut the job a little way into its data.
    let (addr, h) = start_receiver(&dst);
    let proxy = CutProxy::start(addr, 1 << 20);
    assert!(
        send_state(&src, proxy.addr, &state).is_err(),
        "the cut job fails"
    );
    assert!(!h.join().unwrap().ok);
    assert_ne!(
        tree_hash(&dst),
        before,
        "the cut job changed the target in place"
    );
    let rep = mover::receiver::revert_root(&dst).unwrap();
    assert!(rep.reverted && rep.undone > 0, "{rep:?}");
    assert_eq!(
        tree_hash(&dst),
        before,
        "back at the previous recovery point, data included"
    );
    let again = mover::receiver::revert_root(&dst).unwrap();
    assert!(!again.reverted, "nothing left to revert");
    // The next job starts from the restored recovery point and completes.
    let (addr, h) = start_receiver(&dst);
    send_state(&src, addr, &state).unwrap();
    assert!(h.join().unwrap().ok);
    assert_same_tree(&src, &dst);
}

#[test]
fn interrupted_job_resumes_with_less_than_a_full_resend() {
    let t = tempfile::tempdir().unwrap();
    let spec = TreeSpec {
        small_files: 50,
        large_files: 4,
        large_size: 4 << 20,
        ..Default::default()
    };
    let (src, dst, state) = setup(t.path(), spec);
    let (addr, reports) = start_serving(&dst);
    send_state(&src, addr, &state).unwrap();
    reports.recv().unwrap();
    // New large files (one frame each, so each finishes as its frame lands): a full resend
    // would carry all 16 MiB.
    let mut spec2 = TreeSpec {
        seed: 9,
        small_files: 0,
        large_files: 16,
        large_size: 1 << 20,
        extras: false,
        ..Default::default()
    };
    spec2.fanout = 1;
    generate(&src.join("new"), &spec2).unwrap();
    let proxy = CutProxy::start(addr, 10 << 20);
    assert!(send_state(&src, proxy.addr, &state).is_err());
    assert!(!reports.recv().unwrap().ok);
    let rep = send_state(&src, addr, &state).unwrap();
    assert!(rep.resumed, "the receiver continued the interrupted job");
    assert_same_tree(&src, &dst);
    assert!(
        rep.bytes <= 12 << 20,
        "resume sent {} bytes of 16 MiB",
        rep.bytes
    );
}

/// A target that already holds another version of a large file (written while it was
/// writable, or a copy made before replication began) and no recovery point: the receiver asks
/// for block hashes, compares its own blocks and receives only those that differ.
#[test]
fn a_target_holding_another_version_of_a_large_file_gets_only_the_blocks_that_differ() {
    let t = tempfile::tempdir().unwrap();
    let spec = TreeSpec {
        small_files: 5,
        large_files: 1,
        large_size: 16 << 20,
        extras: false,
        ..Default::default()
    };
    let (src, dst, state) = setup(t.path(), spec);
    std::fs::remove_dir(&dst).unwrap();
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(cp.success());
    rewrite_blocks(&dst, 16 << 20, 40, 9);
    let (addr, _reports) = start_serving(&dst);
    let rep = send_state(&src, addr, &state).unwrap();
    assert_same_tree(&src, &dst);
    assert_eq!(
        rep.bytes,
        40 * 4096,
        "exactly the blocks written on the target"
    );
}
