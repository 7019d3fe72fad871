//! Edge cases of resume and revert found by a review of the receiver's crash safety and the
//! sender's manifest, one scenario per test. The "Finding" sections failed before their fixes
//! (identity by birth time, the journal's map of what the job moved where, staged-name parsing,
//! deleting the job's own unfinished files); the others confirm behaviour the review checked.

mod common;

use common::*;
use mover::tree::hash::hash_dir;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// Tree hash and content hash of a tree (`.mover-state` is skipped by the walk).
fn full_hash(p: &Path) -> (u128, Option<u128>) {
    let (t, c, _) = hash_dir(p, owners(), true).unwrap();
    (t, c)
}

fn dirs(t: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (src, dst, state) = (t.join("src"), t.join("dst"), t.join("state"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    (src, dst, state)
}

fn set_mtime(p: &Path, secs: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

/// Deterministic incompressible bytes.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    mover::gen::Rng(seed).fill(&mut v);
    v
}

/// Writes `data` at `at` inside the existing file `p`, in place.
fn rewrite(p: &Path, data: Vec<u8>, at: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &data, at).unwrap();
}

fn swap(a: &Path, b: &Path) {
    let tmp = a.with_extension("swap-tmp");
    std::fs::rename(a, &tmp).unwrap();
    std::fs::rename(b, a).unwrap();
    std::fs::rename(&tmp, b).unwrap();
}

/// One job through a once-receiver; returns whether the sender succeeded (and checks the
/// receiver agrees).
fn job(src: &Path, dst: &Path, state: &Path) -> bool {
    let (addr, h) = start_receiver(dst);
    let ok = send_state(src, addr, state).is_ok();
    let r = h.join().unwrap();
    assert_eq!(ok, r.ok, "sender and receiver disagree: {:?}", r.error);
    ok
}

/// One job cut by the proxy after `budget` bytes from the sender (apply phase done, data
/// flowing): both sides fail and the receiver keeps the job's journal.
fn cut_job(src: &Path, dst: &Path, state: &Path, budget: u64) {
    let (addr, h) = start_receiver(dst);
    let proxy = CutProxy::start(addr, budget);
    assert!(
        send_state(src, proxy.addr, state).is_err(),
        "the cut job fails"
    );
    let r = h.join().unwrap();
    assert!(!r.ok, "the receiver session failed too");
    assert!(
        dst.join(".mover-state/journal/log").exists(),
        "the job's journal is kept"
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 1: a resumed job trusts path identity although the interrupted session renamed items.
// ---------------------------------------------------------------------------------------------

/// Two small files with the same size and mtime swap names; the job is cut after its apply phase
/// (which carried out the swap as renames); before the retry the source swaps them back. The
/// retry's hints are relative to the recovery point (no renames: every inode is at its old path)
/// and the receiver's quick check accepts the swapped files because size and mtime match.
#[test]
fn resume_after_swap_and_swap_back_small_files() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = dirs(t.path());
    std::fs::create_dir(src.join("d")).unwrap();
    std::fs::write(src.join("d/x"), vec![b'A'; 1000]).unwrap();
    std::fs::write(src.join("d/y"), vec![b'B'; 1000]).unwrap();
    set_mtime(&src.join("d/x"), 1_600_000_000);
    set_mtime(&src.join("d/y"), 1_600_000_000);
    assert!(job(&src, &dst, &state));
    assert_same_tree(&src, &dst);

    swap(&src.join("d/x"), &src.join("d/y"));
    std::fs::write(src.join("big.bin"), bytes(1, 8 << 20)).unwrap();
    cut_job(&src, &dst, &state, 1 << 20);
    assert!(
        std::fs::read(dst.join("d/x")).unwrap() == vec![b'B'; 1000],
        "the cut session carried out the swap"
    );

    swap(&src.join("d/x"), &src.join("d/y"));
    assert!(job(&src, &dst, &state), "the resumed job commits");
    assert!(
        std::fs::read(dst.join("d/x")).unwrap() == vec![b'A'; 1000],
        "d/x holds d/y's data after the resumed job"
    );
    assert_same_tree(&src, &dst);
}

/// As above with large files: the retry sends an (empty) delta relative to the recovery point,
/// and the receiver accepts it on the wrong base because size and mtime match. The manifest then
/// claims block hashes the target does not hold.
#[test]
fn resume_after_swap_and_swap_back_large_files() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = dirs(t.path());
    std::fs::write(src.join("x.bin"), bytes(10, 1 << 20)).unwrap();
    std::fs::write(src.join("y.bin"), bytes(11, 1 << 20)).unwrap();
    set_mtime(&src.join("x.bin"), 1_600_000_000);
    set_mtime(&src.join("y.bin"), 1_600_000_000);
    assert!(job(&src, &dst, &state));

    swap(&src.join("x.bin"), &src.join("y.bin"));
    std::fs::write(src.join("big.bin"), bytes(1, 8 << 20)).unwrap();
    cut_job(&src, &dst, &state, 1 << 20);

    swap(&src.join("x.bin"), &src.join("y.bin"));
    assert!(job(&src, &dst, &state), "the resumed job commits");
    assert_same_tree(&src, &dst);
}

// ---------------------------------------------------------------------------------------------
// Finding 2 (no interruption needed): renames by inode number trust a reused inode number.
// ---------------------------------------------------------------------------------------------

/// A file is deleted and another created with the same size and mtime (a tar extraction, a
/// copy with preserved times) and the file system hands it the freed inode number (ext4 does so
/// at once). The sender sees "the same inode at a new path", sends a rename hint; the receiver
/// moves the deleted file's data there and its quick check accepts it.
#[test]
fn reused_inode_number_is_not_a_rename() {
    use std::os::unix::fs::MetadataExt;
    // Other tests create files concurrently and may take the freed number: try a few times.
    for _ in 0..20 {
        let t = tempfile::tempdir().unwrap();
        let (src, dst, state) = dirs(t.path());
        std::fs::create_dir(src.join("d")).unwrap();
        std::fs::write(src.join("d/old"), vec![b'X'; 100]).unwrap();
        set_mtime(&src.join("d/old"), 1_600_000_000);
        assert!(job(&src, &dst, &state));
        let ino = std::fs::metadata(src.join("d/old")).unwrap().ino();
        std::fs::remove_file(src.join("d/old")).unwrap();
        std::fs::write(src.join("d/new"), vec![b'Y'; 100]).unwrap();
        set_mtime(&src.join("d/new"), 1_600_000_000);
        if std::fs::metadata(src.join("d/new")).unwrap().ino() != ino {
            continue;
        }
        assert!(job(&src, &dst, &state));
        assert_same_tree(&src, &dst);
        return;
    }
    panic!("the file system never reused the inode number: scenario not reached");
}

// ---------------------------------------------------------------------------------------------
// Finding 3: release_created (disk-full revert) empties a recovery-point file.
// ---------------------------------------------------------------------------------------------

/// Session 1 replaces X/f (Created X/f journaled) and is cut. The source then moves X to Y and
/// Z to X; session 2 carries out those renames and is cut too, so X/f is now the recovery
/// point's Z/f. If this session then hits a full disk, `release_created` picks X/f (its last
/// record by path is that Created) and truncates it; the revert cannot bring Z/f back.
#[test]
fn release_created_then_revert_after_renames_across_sessions() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = dirs(t.path());
    for d in ["X", "Z"] {
        std::fs::create_dir(src.join(d)).unwrap();
    }
    std::fs::write(src.join("X/f"), bytes(20, 30_000)).unwrap();
    std::fs::write(src.join("Z/f"), bytes(21, 30_000)).unwrap();
    assert!(job(&src, &dst, &state));
    let rp = full_hash(&dst);

    std::fs::write(src.join("X/f"), bytes(22, 30_000)).unwrap();
    std::fs::write(src.join("big.bin"), bytes(1, 8 << 20)).unwrap();
    cut_job(&src, &dst, &state, 1 << 20);

    std::fs::rename(src.join("X"), src.join("Y")).unwrap();
    std::fs::rename(src.join("Z"), src.join("X")).unwrap();
    cut_job(&src, &dst, &state, 1 << 20);
    assert!(
        std::fs::read(dst.join("X/f")).unwrap() == bytes(21, 30_000),
        "session 2 moved the recovery point's Z to X"
    );

    // What the session's disk-full handler does before it reverts.
    let root = mover::beneath::open_root(&dst, "destination").unwrap();
    let st = mover::receiver::state::State::find(std::os::fd::AsFd::as_fd(&root))
        .unwrap()
        .unwrap();
    mover::receiver::space::release_created(std::os::fd::AsFd::as_fd(&root), &st).unwrap();
    drop(st);
    drop(root);
    let len = std::fs::metadata(dst.join("X/f")).unwrap().len();
    assert_eq!(
        len, 30_000,
        "release_created emptied the recovery point's Z/f (now at X/f)"
    );
    let rep = mover::receiver::revert_root(&dst);
    assert!(rep.as_ref().is_ok_and(|r| r.reverted), "revert: {rep:?}");
    assert_eq!(
        full_hash(&dst),
        rp,
        "back at the recovery point, data included"
    );
}

/// Control for the test above: the same two cut sessions (a Created path, then renames that put
/// another recovery-point item there) revert exactly when nothing empties files in between.
#[test]
fn revert_after_renames_across_two_cut_sessions() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = dirs(t.path());
    for d in ["X", "Z"] {
        std::fs::create_dir(src.join(d)).unwrap();
    }
    std::fs::write(src.join("X/f"), bytes(20, 30_000)).unwrap();
    std::fs::write(src.join("Z/f"), bytes(21, 30_000)).unwrap();
    std::fs::write(src.join("Z/big"), bytes(23, 3 << 20)).unwrap();
    assert!(job(&src, &dst, &state));
    let rp = full_hash(&dst);

    std::fs::write(src.join("X/f"), bytes(22, 30_000)).unwrap();
    rewrite(&src.join("Z/big"), bytes(24, 8192), 4096);
    std::fs::write(src.join("big.bin"), bytes(1, 8 << 20)).unwrap();
    cut_job(&src, &dst, &state, 1 << 20);

    std::fs::rename(src.join("X"), src.join("Y")).unwrap();
    std::fs::rename(src.join("Z"), src.join("X")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("X/big"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    cut_job(&src, &dst, &state, 1 << 20);

    let rep = mover::receiver::revert_root(&dst).unwrap();
    assert!(rep.reverted && rep.undone > 0, "{rep:?}");
    assert_eq!(
        full_hash(&dst),
        rp,
        "back at the recovery point, data included"
    );
    // And the next job from there completes.
    assert!(job(&src, &dst, &state));
    assert_same_tree(&src, &dst);
}

// ---------------------------------------------------------------------------------------------
// Finding 4: a resumed job cannot stage a rename source whose parent the interrupted session
// replaced by a symlink.
// ---------------------------------------------------------------------------------------------

/// The source moves D/sub/x to keep/x and replaces directory D by a symlink. Session 1 stages
/// D/sub/x, then replaces D by the symlink, and is cut. The retry (same source) sends the same
/// rename hint "keep/x from D/sub/x": `Journal::stage` resolves D/sub through the symlink D and
/// gets ELOOP (only ENOENT and ENOTDIR count as "source gone") and fails the session. Every retry
/// fails the same way, so the job can never be resumed (only reverted).
#[test]
fn resume_when_rename_source_parent_became_a_symlink() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = dirs(t.path());
    std::fs::create_dir_all(src.join("D/sub")).unwrap();
    std::fs::create_dir(src.join("keep")).unwrap();
    std::fs::write(src.join("D/sub/x"), bytes(30, 5000)).unwrap();
    assert!(job(&src, &dst, &state));

    std::fs::rename(src.join("D/sub/x"), src.join("keep/x")).unwrap();
    std::fs::remove_dir_all(src.join("D")).unwrap();
    std::os::unix::fs::symlink("keep", src.join("D")).unwrap();
    std::fs::write(src.join("zz-big.bin"), bytes(1, 8 << 20)).unwrap();
    cut_job(&src, &dst, &state, 1 << 20);
    assert!(std::fs::symlink_metadata(dst.join("D"))
        .unwrap()
        .file_type()
        .is_symlink());

    let (addr, h) = start_receiver(&dst);
    let rep = send_state(&src, addr, &state);
    let r = h.join().unwrap();
    assert!(
        rep.is_ok() && r.ok,
        "resumed job failed: sender {:?}, receiver {:?}",
        rep.err(),
        r.error
    );
    assert_same_tree(&src, &dst);
}

// ---------------------------------------------------------------------------------------------
// Finding 5: a resumed rename hint stages what the interrupted session put at the old path.
// ---------------------------------------------------------------------------------------------

/// The source renames A to B and makes a new directory A. Session 1 stages A and puts it at B,
/// makes the new A, and is cut. The retry sends the same hint "B from A": `stage` now takes the
/// new A (made by session 1), the walk moves the correctly placed B into the journal and puts the
/// new A there, so every file of the renamed directory is sent again in full.
#[test]
fn resume_rename_with_new_directory_at_old_path_resends_everything() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = dirs(t.path());
    std::fs::create_dir(src.join("A")).unwrap();
    std::fs::write(src.join("A/big.bin"), bytes(80, 6 << 20)).unwrap();
    assert!(job(&src, &dst, &state));

    std::fs::rename(src.join("A"), src.join("B")).unwrap();
    std::fs::create_dir(src.join("A")).unwrap();
    std::fs::write(src.join("A/note"), bytes(81, 100)).unwrap();
    std::fs::write(src.join("zz-big.bin"), bytes(1, 8 << 20)).unwrap();
    cut_job(&src, &dst, &state, 1 << 20);
    assert!(
        dst.join("B/big.bin").exists(),
        "session 1 carried out the rename"
    );

    let (addr, h) = start_receiver(&dst);
    let rep = send_state(&src, addr, &state).unwrap();
    assert!(h.join().unwrap().ok);
    assert_same_tree(&src, &dst);
    assert!(
        rep.bytes <= (8 << 20) + 4096,
        "the resumed job sent {} bytes: B/big.bin went again although it was in place",
        rep.bytes
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 6: object numbering parsed from rename destinations overflows.
// ---------------------------------------------------------------------------------------------

/// `Journal::open` derives the next object number from the last component of every Renamed
/// record's `to`, including renames into the tree. A file renamed to "18446744073709551614" in an
/// interrupted session makes the resumed session number its next object u64::MAX, and the one
/// after overflows: a panic in debug builds (the session fails every time), a wrap to 0 in
/// release builds (the next object is renamed over journal object 0, an item of the recovery
/// point, which the revert then cannot restore).
#[test]
fn resume_after_rename_to_a_huge_numeric_name() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = dirs(t.path());
    std::fs::write(src.join("a"), bytes(40, 5000)).unwrap();
    std::fs::write(src.join("m"), bytes(41, 5000)).unwrap();
    assert!(job(&src, &dst, &state));
    let rp = full_hash(&dst);

    std::fs::rename(src.join("a"), src.join("18446744073709551614")).unwrap();
    std::fs::write(src.join("m"), bytes(42, 5000)).unwrap(); // journal object 0: the old m
    std::fs::write(src.join("zz-big.bin"), bytes(1, 8 << 20)).unwrap();
    std::fs::write(src.join("zz-big2.bin"), bytes(2, 8 << 20)).unwrap();
    cut_job(&src, &dst, &state, 1 << 20);

    // The retry moves the two half-written big files into the journal: objects MAX and then 0.
    let (addr, h) = start_receiver(&dst);
    let proxy = CutProxy::start(addr, 1 << 20);
    let _ = send_state(&src, proxy.addr, &state);
    let r = h.join().unwrap();
    assert!(
        r.error.as_deref().is_none_or(|e| !e.contains("panicked")),
        "receiver session: {:?}",
        r.error
    );
    let rep = mover::receiver::revert_root(&dst);
    assert!(rep.as_ref().is_ok_and(|r| r.reverted), "revert: {rep:?}");
    assert_eq!(
        full_hash(&dst),
        rp,
        "back at the recovery point, data included"
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 7: each resume keeps the previous session's half-written files in the journal.
// ---------------------------------------------------------------------------------------------

fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    let mut n = m.blocks() * 512;
    if m.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            n += allocated(&e.unwrap().path());
        }
    }
    n
}

/// A large file new in this job is half written when the session is cut. The retry finds it
/// incomplete, "clears" it by moving it into the journal (as if it were a recovery-point item)
/// and creates it again; the copy is useless (the revert deletes it again: the path's earlier
/// record is its Created) but holds its blocks until the job ends. On a link that keeps failing,
/// every attempt adds another partial copy, until the disk fills and the job is reverted.
#[test]
fn resume_does_not_keep_partial_copies_of_job_created_files() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = dirs(t.path());
    std::fs::write(src.join("small"), b"x").unwrap();
    assert!(job(&src, &dst, &state));
    std::fs::write(src.join("big.bin"), bytes(90, 32 << 20)).unwrap();
    // Cut before a checkpoint (resume::FLUSH_BYTES, 16 MiB) makes any range durable, so no
    // attempt can resume far enough to finish.
    for _ in 0..3 {
        cut_job(&src, &dst, &state, 6 << 20);
    }
    let objs = allocated(&dst.join(".mover-state/journal/objs"));
    assert!(
        objs < 1 << 20,
        "{objs} bytes of partial copies of big.bin kept in the journal"
    );
}

// ---------------------------------------------------------------------------------------------
// Behaviour confirmed (these pass).
// ---------------------------------------------------------------------------------------------

/// Large files for the delta tests: a.bin (with hard link h), c.bin (grows), s.bin (shrinks).
fn delta_tree(src: &Path) {
    std::fs::write(src.join("a.bin"), bytes(50, 3 << 20)).unwrap();
    std::fs::hard_link(src.join("a.bin"), src.join("h")).unwrap();
    std::fs::write(src.join("c.bin"), bytes(51, (2 << 20) + 100)).unwrap();
    std::fs::write(src.join("s.bin"), bytes(52, 2 << 20)).unwrap();
}

fn delta_churn(src: &Path, seed: u64) {
    use std::os::unix::fs::FileExt;
    let a = std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("a.bin"))
        .unwrap();
    for k in [0u64, 7, 300, 701] {
        a.write_all_at(&bytes(seed + k, 4096), k * 4096).unwrap();
    }
    let c = std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("c.bin"))
        .unwrap();
    c.write_all_at(&bytes(seed + 1, 5000), 1000).unwrap();
    c.set_len((3 << 20) + 7).unwrap();
    c.write_all_at(&bytes(seed + 2, 3000), (3 << 20) - 2000)
        .unwrap();
    let s = std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("s.bin"))
        .unwrap();
    s.set_len((1 << 20) + 1000).unwrap();
    s.write_all_at(&bytes(seed + 3, 4096), 8192).unwrap();
}

#[test]
fn cut_delta_job_with_hard_link_and_resize_reverts_exactly() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = dirs(t.path());
    delta_tree(&src);
    assert!(job(&src, &dst, &state));
    let rp = full_hash(&dst);
    delta_churn(&src, 100);
    std::fs::write(src.join("zz-big.bin"), bytes(1, 8 << 20)).unwrap();
    cut_job(&src, &dst, &state, 2 << 20);
    assert_eq!(
        std::fs::metadata(dst.join("c.bin")).unwrap().len(),
        std::fs::metadata(src.join("c.bin")).unwrap().len(),
        "the delta resized in place"
    );
    let rep = mover::receiver::revert_root(&dst).unwrap();
    assert!(rep.reverted, "{rep:?}");
    assert_eq!(
        full_hash(&dst),
        rp,
        "back at the recovery point, data included"
    );
    // The manifest still names that recovery point: the next job is incremental and exact.
    let (addr, h) = start_receiver(&dst);
    let rep = send_state(&src, addr, &state).unwrap();
    assert!(h.join().unwrap().ok);
    assert!(rep.incremental && rep.files_delta >= 3, "{rep:?}");
    assert_same_tree(&src, &dst);
}

#[test]
fn cut_delta_job_resumes_and_later_deltas_stay_exact() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = dirs(t.path());
    delta_tree(&src);
    assert!(job(&src, &dst, &state));
    delta_churn(&src, 100);
    std::fs::write(src.join("zz-big.bin"), bytes(1, 8 << 20)).unwrap();
    cut_job(&src, &dst, &state, 2 << 20);
    // Cut again, then change the same files once more before the resume that completes.
    cut_job(&src, &dst, &state, 1 << 20);
    delta_churn(&src, 200);
    assert!(job(&src, &dst, &state));
    assert_same_tree(&src, &dst);
    // Later jobs rely on the manifest written after the resumed job.
    for round in 0..3 {
        delta_churn(&src, 300 + round * 10);
        let (addr, h) = start_receiver(&dst);
        let rep = send_state(&src, addr, &state).unwrap();
        assert!(h.join().unwrap().ok);
        assert!(rep.incremental, "round {round}");
        assert_same_tree(&src, &dst);
    }
}

/// Directories replaced by files and files by directories, cut; the source flips again before
/// the resume. Then the same cut job reverted.
#[test]
fn type_changes_across_cut_sessions_resume_and_revert() {
    for revert in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let (src, dst, state) = dirs(t.path());
        std::fs::create_dir_all(src.join("D/sub")).unwrap();
        std::fs::write(src.join("D/sub/f"), bytes(60, 3000)).unwrap();
        std::fs::write(src.join("D/big.bin"), bytes(61, 1 << 20)).unwrap();
        std::fs::write(src.join("F"), bytes(62, 3000)).unwrap();
        std::fs::write(src.join("G.bin"), bytes(63, 1 << 20)).unwrap();
        assert!(job(&src, &dst, &state));
        let rp = full_hash(&dst);

        std::fs::rename(src.join("D/big.bin"), src.join("moved.bin")).unwrap();
        std::fs::remove_dir_all(src.join("D")).unwrap();
        std::fs::write(src.join("D"), bytes(64, 1 << 20)).unwrap();
        std::fs::remove_file(src.join("F")).unwrap();
        std::fs::create_dir(src.join("F")).unwrap();
        std::fs::write(src.join("F/inner"), bytes(65, 100)).unwrap();
        std::fs::remove_file(src.join("G.bin")).unwrap();
        std::fs::create_dir(src.join("G.bin")).unwrap();
        std::fs::write(src.join("zz-big.bin"), bytes(1, 8 << 20)).unwrap();
        cut_job(&src, &dst, &state, 1 << 20);
        if revert {
            let rep = mover::receiver::revert_root(&dst).unwrap();
            assert!(rep.reverted);
            assert_eq!(
                full_hash(&dst),
                rp,
                "back at the recovery point, data included"
            );
        } else {
            std::fs::remove_file(src.join("D")).unwrap();
            std::fs::create_dir(src.join("D")).unwrap();
            std::fs::write(src.join("D/new"), bytes(66, 70_000)).unwrap();
            std::fs::remove_dir_all(src.join("F")).unwrap();
            std::os::unix::fs::symlink("D", src.join("F")).unwrap();
            assert!(job(&src, &dst, &state));
            assert_same_tree(&src, &dst);
        }
    }
}

/// A renamed directory whose rename the interrupted session already carried out (source gone at
/// its old path on the retry) is found in place; the resumed job is exact.
#[test]
fn rename_already_done_by_interrupted_session() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = dirs(t.path());
    std::fs::create_dir(src.join("A")).unwrap();
    std::fs::write(src.join("A/f.bin"), bytes(70, 1 << 20)).unwrap();
    std::fs::write(src.join("A/s"), bytes(71, 100)).unwrap();
    assert!(job(&src, &dst, &state));
    std::fs::create_dir(src.join("N")).unwrap();
    std::fs::rename(src.join("A"), src.join("N/B")).unwrap();
    rewrite(&src.join("N/B/f.bin"), bytes(72, 4096), 40960);
    std::fs::write(src.join("zz-big.bin"), bytes(1, 8 << 20)).unwrap();
    cut_job(&src, &dst, &state, 1 << 20);
    assert!(
        dst.join("N/B").is_dir() && !dst.join("A").exists(),
        "the cut session did the rename"
    );
    assert!(job(&src, &dst, &state));
    assert_same_tree(&src, &dst);
}

/// The receiver committed but the sender died before saving the manifest (simulated by putting
/// the previous manifest back): the stale manifest names another recovery point and is ignored;
/// the manifest written after that job is exact again for later deltas.
#[test]
fn stale_manifest_after_sender_died_before_saving_is_ignored() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = dirs(t.path());
    delta_tree(&src);
    assert!(job(&src, &dst, &state));
    let saved = std::fs::read(state.join("manifest")).unwrap();
    delta_churn(&src, 100);
    assert!(job(&src, &dst, &state));
    std::fs::write(state.join("manifest"), &saved).unwrap();
    delta_churn(&src, 200);
    let (addr, h) = start_receiver(&dst);
    let rep = send_state(&src, addr, &state).unwrap();
    assert!(h.join().unwrap().ok);
    assert!(
        !rep.incremental,
        "a manifest of another recovery point is not used"
    );
    assert_same_tree(&src, &dst);
    delta_churn(&src, 300);
    let (addr, h) = start_receiver(&dst);
    let rep = send_state(&src, addr, &state).unwrap();
    assert!(h.join().unwrap().ok);
    assert!(rep.incremental && rep.files_delta >= 3, "{rep:?}");
    assert_same_tree(&src, &dst);
}

/// Sets or clears FS_IMMUTABLE_FL on a path (ext4 and most local file systems, as root).
fn immutable(p: &Path, on: bool) {
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
    let f = std::fs::File::open(p).unwrap();
    let mut fl = ioctl_getflags(&f).unwrap();
    fl.set(IFlags::IMMUTABLE, on);
    ioctl_setflags(&f, fl).unwrap();
}

/// Fails the test unless it runs as root (`.ci/run` does): setting FS_IMMUTABLE_FL needs
/// CAP_LINUX_IMMUTABLE.
fn need_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test sets FS_IMMUTABLE_FL and must run as root"
    );
}

struct Unfreeze(PathBuf);
impl Drop for Unfreeze {
    fn drop(&mut self) {
        immutable(&self.0, false);
    }
}

/// A revert killed after undoing its newest record but before logging that progress: the
/// simulation makes the revert fail at its second record (the root is immutable, so the file the
/// job created there cannot be removed), then drops the logged progress, as if the process had
/// died between the undo and its log record. With an empty progress log the journal looks like an
/// interrupted job again: a resumed job must still reach the new source, and a revert the
/// recovery point.
#[test]
fn revert_killed_after_first_undo_then_resume_or_revert() {
    need_root(); // FS_IMMUTABLE_FL needs CAP_LINUX_IMMUTABLE
    for then_revert in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let (src, dst, state) = dirs(t.path());
        std::fs::create_dir(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/e"), bytes(100, 3000)).unwrap();
        std::fs::write(src.join("a.bin"), bytes(101, 1 << 20)).unwrap();
        // Over INLINE_MAX: its records come in walk order (small files' Created records are
        // written together at the end of the apply phase).
        std::fs::write(src.join("b"), bytes(102, 100_000)).unwrap();
        assert!(job(&src, &dst, &state));
        let rp = full_hash(&dst);

        rewrite(&src.join("a.bin"), bytes(103, 8192), 4096);
        std::fs::write(src.join("b"), bytes(104, 100_000)).unwrap();
        // Created first, so it cannot reuse the inode of sub/e (which would make it a rename).
        std::fs::write(src.join("zz-big.bin"), bytes(1, 8 << 20)).unwrap(); // Created{zz-big.bin}
        std::fs::remove_file(src.join("sub/e")).unwrap(); // newest record: Moved{sub/e} (extraneous)
        cut_job(&src, &dst, &state, 1 << 20);

        {
            immutable(&dst, true);
            let _g = Unfreeze(dst.clone());
            let r = mover::receiver::revert_root(&dst);
            assert!(
                r.as_ref()
                    .is_err_and(|e| e.to_string().contains("zz-big.bin")),
                "the revert stops at zz-big.bin: {r:?}"
            );
        }
        let log = dst.join(".mover-state/journal/revert");
        assert_eq!(
            std::fs::metadata(&log).unwrap().len(),
            20,
            "exactly one undo logged"
        );
        assert!(dst.join("sub/e").exists(), "sub/e is back");
        std::fs::write(&log, b"").unwrap(); // the kill came before that log record

        if then_revert {
            let rep = mover::receiver::revert_root(&dst).unwrap();
            assert!(rep.reverted);
            assert_eq!(
                full_hash(&dst),
                rp,
                "back at the recovery point, data included"
            );
        } else {
            assert!(job(&src, &dst, &state), "the job resumes");
            assert_same_tree(&src, &dst);
        }
    }
}

/// The same kill window at every record of a cut job's journal: the revert is stopped after k
/// undos (each logged), then one logged undo is dropped (it was done but not logged). Rerunning
/// the revert redoes that record and must still reach the recovery point exactly.
#[test]
fn revert_is_idempotent_when_killed_between_undo_and_log() {
    need_root();
    let t = tempfile::tempdir().unwrap();
    let (src, _, state) = dirs(t.path());
    std::fs::create_dir_all(src.join("d/sub")).unwrap();
    std::fs::write(src.join("d/sub/e"), bytes(110, 3000)).unwrap();
    std::fs::write(src.join("d/a.bin"), bytes(111, 1 << 20)).unwrap();
    std::fs::write(src.join("b"), bytes(112, 3000)).unwrap();
    std::fs::write(src.join("s.bin"), bytes(113, 1 << 20)).unwrap();
    // Each variant gets its own destination at the same recovery point.
    let mut variants = Vec::new();
    for k in 0..4 {
        let dst = t.path().join(format!("dst{k}"));
        std::fs::create_dir(&dst).unwrap();
        let st = t.path().join(format!("state{k}"));
        assert!(job(&src, &dst, &st));
        variants.push((dst, st));
    }
    let _ = state;
    let rp = full_hash(&variants[0].0);
    rewrite(&src.join("d/a.bin"), bytes(114, 8192), 4096);
    std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("s.bin"))
        .unwrap()
        .set_len(300_000)
        .unwrap();
    std::fs::write(src.join("b"), bytes(115, 3000)).unwrap();
    std::fs::write(src.join("zz-big.bin"), bytes(1, 8 << 20)).unwrap();
    std::fs::rename(src.join("d"), src.join("D2")).unwrap();
    std::fs::remove_file(src.join("D2/sub/e")).unwrap();
    // Freeze points, from the newest record back: the root (zz-big.bin, b cannot be removed),
    // D2/sub (e cannot come back), the delta files (no pre-image restore).
    let freeze: [&dyn Fn(&Path) -> PathBuf; 4] = [
        &|d: &Path| d.join("D2/sub"),
        &|d: &Path| d.to_path_buf(),
        &|d: &Path| d.join("s.bin"),
        &|d: &Path| d.join("D2/a.bin"),
    ];
    for ((dst, st), f) in variants.iter().zip(freeze) {
        cut_job(&src, dst, st, 1 << 20);
        let p = f(dst);
        {
            immutable(&p, true);
            let _g = Unfreeze(p.clone());
            assert!(
                mover::receiver::revert_root(dst).is_err(),
                "{}: the revert stops there",
                p.display()
            );
        }
        let log = dst.join(".mover-state/journal/revert");
        let raw = std::fs::read(&log).unwrap_or_default();
        if raw.len() >= 20 {
            std::fs::write(&log, &raw[..raw.len() - 20]).unwrap();
        }
        let rep =
            mover::receiver::revert_root(dst).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(rep.reverted);
        assert_eq!(
            full_hash(dst),
            rp,
            "{}: back at the recovery point",
            p.display()
        );
    }
}

/// A job through a once-receiver with the default replica policy (no devices, set-id bits
/// cleared), cut after `budget` bytes if given; whether it succeeded.
fn policed_job(src: &Path, dst: &Path, state: &Path, budget: Option<u64>) -> bool {
    let r = mover::receiver::Receiver::bind(
        "127.0.0.1:0".parse().unwrap(),
        mover::receiver::ReceiveOptions {
            root: dst.to_path_buf(),
            once: true,
            insecure_plaintext: true,
            ..Default::default()
        },
        std::sync::Arc::new(mover::Progress::default()),
    )
    .unwrap();
    let addr = r.local_addr().unwrap();
    let h = std::thread::spawn(move || r.serve(|_| {}).unwrap());
    let proxy = budget.map(|b| CutProxy::start(addr, b));
    let ok = send_state(src, proxy.as_ref().map_or(addr, |p| p.addr), state).is_ok();
    assert_eq!(ok, h.join().unwrap().ok, "sender and receiver disagree");
    ok
}

#[test]
fn revert_reaches_the_recovery_point_the_replica_policy_admitted() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = dirs(t.path());
    std::fs::write(src.join("tool"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        src.join("tool"),
        <std::fs::Permissions as PermissionsExt>::from_mode(0o4755),
    )
    .unwrap();
    let dev = rustix::fs::makedev(1, 3);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        dev,
    )
    .expect("mknod (the tests run as root)");
    assert!(policed_job(&src, &dst, &state, None));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dst.join("tool")), 0o755, "set-id bits cleared");
    assert!(!dst.join("null").exists(), "no device created");
    let rp = full_hash(&dst);

    std::fs::write(src.join("zz-big.bin"), bytes(7, 8 << 20)).unwrap();
    assert!(!policed_job(&src, &dst, &state, Some(2 << 20)));
    assert!(dst.join(".mover-state/journal/log").exists());
    // The revert compares the target with the list as the policy admitted it: no device to
    // find, no set-id bit to put back.
    let rep = mover::receiver::revert_root(&dst).unwrap();
    assert!(rep.reverted, "{rep:?}");
    assert_eq!(full_hash(&dst), rp);
    assert_eq!(mode(&dst.join("tool")), 0o755);
    assert!(!dst.join("null").exists());
}

/// The files in the journal's objects directory, by content.
fn journal_objects(dst: &Path) -> Vec<Vec<u8>> {
    std::fs::read_dir(dst.join(".mover-state/journal/objs"))
        .unwrap()
        .filter_map(|e| std::fs::read(e.unwrap().path()).ok())
        .collect()
}

/// A power loss can keep a move into the journal (renames are committed within seconds) and
/// lose its record (the log's appended bytes reach the disk at write-back). The next session
/// must not number its own moves from the surviving records alone: it would move an item over
/// the lost record's object, the recovery point's only copy of it.
#[test]
fn a_resumed_job_never_moves_over_a_journal_object_whose_record_was_lost() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = dirs(t.path());
    let (old_b, old_c) = (bytes(130, 100_000), bytes(131, 5000));
    std::fs::write(src.join("b"), &old_b).unwrap();
    std::fs::write(src.join("c"), &old_c).unwrap();
    assert!(job(&src, &dst, &state));
    // A file replaced by a directory is moved into the journal (never a delta).
    let to_dir = |name: &str, seed: u64| {
        std::fs::remove_file(src.join(name)).unwrap();
        std::fs::create_dir(src.join(name)).unwrap();
        std::fs::write(src.join(name).join("x"), bytes(seed, 100_000)).unwrap();
    };
    to_dir("b", 132);
    std::fs::write(src.join("zz-big.bin"), bytes(133, 8 << 20)).unwrap();
    cut_job(&src, &dst, &state, 1 << 20);
    assert!(
        journal_objects(&dst).contains(&old_b),
        "b moved into the journal"
    );
    // Every record but the header is lost; the move stays.
    let log = dst.join(".mover-state/journal/log");
    let raw = std::fs::read(&log).unwrap();
    let header = 12 + u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
    std::fs::write(&log, &raw[..header]).unwrap();
    to_dir("c", 134);
    cut_job(&src, &dst, &state, 1 << 20);
    let objs = journal_objects(&dst);
    assert!(objs.contains(&old_c), "c moved into the journal");
    assert!(
        objs.contains(&old_b),
        "b's recovery-point version is still in the journal"
    );
}

/// A recovery-point file written in place and gone when the revert comes (removed by hand,
/// or moved into the journal by a move whose record a power loss lost): the revert stops at
/// its bytes, naming it, rather than skipping them and failing only at the end.
#[test]
fn a_revert_stops_at_a_recovery_point_file_whose_bytes_it_cannot_restore() {
    let t = tempfile::tempdir().unwrap();
    let dst = cut_while_a_bin_is_written_in_place(t.path(), 140);
    std::fs::remove_file(dst.join("a.bin")).unwrap();
    let r = mover::receiver::revert_root(&dst);
    assert!(
        r.as_ref()
            .is_err_and(|e| e.to_string().contains("a.bin to restore its data")),
        "{r:?}"
    );
}

/// A file the job wrote in place that a local writer swapped for a hard link to a file
/// outside the root before the revert: its recovery-point bytes are not written through.
#[test]
fn a_revert_never_restores_bytes_into_a_file_swapped_for_a_hard_link() {
    let t = tempfile::tempdir().unwrap();
    let dst = cut_while_a_bin_is_written_in_place(t.path(), 150);
    let victim = t.path().join("victim");
    std::fs::write(&victim, bytes(153, 1 << 20)).unwrap();
    std::fs::remove_file(dst.join("a.bin")).unwrap();
    std::fs::hard_link(&victim, dst.join("a.bin")).unwrap();
    assert_revert_refused(&dst, "no longer the file the job wrote in place");
    assert_eq!(std::fs::read(&victim).unwrap(), bytes(153, 1 << 20));
}

/// The same with a new file in place of `a.bin`: a deletion frees the inode number, and the
/// next file made may get it; the journal's birth time tells them apart.
#[test]
fn a_revert_never_restores_bytes_into_a_new_file_planted_in_place() {
    let t = tempfile::tempdir().unwrap();
    let dst = cut_while_a_bin_is_written_in_place(t.path(), 155);
    std::fs::remove_file(dst.join("a.bin")).unwrap();
    std::fs::write(dst.join("a.bin"), bytes(158, 1 << 20)).unwrap();
    assert_revert_refused(&dst, "no longer the file the job wrote in place");
    assert_eq!(
        std::fs::read(dst.join("a.bin")).unwrap(),
        bytes(158, 1 << 20)
    );
}

/// A job whose `a.bin` (1 MiB) is updated in place, with its pre-images journaled, cut before
/// it ends; returns the target.
fn cut_while_a_bin_is_written_in_place(at: &Path, seed: u64) -> PathBuf {
    let (src, dst, state) = dirs(at);
    std::fs::write(src.join("a.bin"), bytes(seed, 1 << 20)).unwrap();
    assert!(job(&src, &dst, &state));
    rewrite(&src.join("a.bin"), bytes(seed + 1, 8192), 4096);
    std::fs::write(src.join("zz-big.bin"), bytes(seed + 2, 8 << 20)).unwrap();
    cut_job(&src, &dst, &state, 1 << 20);
    dst
}

// ---------------------------------------------------------------------------------------------
// Owners given only to files the receiver can vouch for (receiver/grant.rs).
// ---------------------------------------------------------------------------------------------

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
}

fn uid_of(p: &Path) -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::symlink_metadata(p).unwrap())
}

/// What a local writer of the target (uid 1000) plants at `at`, in place of the file there:
/// bytes of their own, with the size and mtime the quick check looks at. With `link`, a hard
/// link to their own file `outside` the target; else a new file. Returns the planted bytes.
fn plant(at: &Path, outside: &Path, link: bool) -> Vec<u8> {
    let was = std::fs::symlink_metadata(at).unwrap();
    let mine = vec![b'!'; was.len() as usize];
    let file = if link { outside } else { at };
    std::fs::remove_file(at).unwrap();
    std::fs::write(file, &mine).unwrap();
    chown(file, 1000);
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.set_modified(was.modified().unwrap()).unwrap();
    if link {
        std::fs::hard_link(outside, at).unwrap();
    }
    mine
}

/// Root's files whose owner or set-id bits the source changes: a local writer of the target
/// (uid 1000) has put their own bytes in place of two, a hard link and a new file, with the
/// same size and mtime. The job writes the source's bytes anew there; the planted files never
/// become uid 2000's or set-uid. The file nobody touched changes group in place.
#[test]
fn a_job_never_gives_a_new_owner_or_set_id_bits_to_a_file_planted_in_its_place() {
    need_root_to_chown();
    let t = reachable_tempdir();
    let (src, dst, state) = dirs(t.path());
    for (name, seed) in [("linked", 160), ("new", 161), ("kept", 162), ("suid", 163)] {
        std::fs::write(src.join(name), bytes(seed, 3000)).unwrap();
    }
    assert!(job(&src, &dst, &state));
    let kept_ino =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dst.join("kept")).unwrap());
    for name in ["linked", "new"] {
        chown(&src.join(name), 2000);
    }
    std::os::unix::fs::lchown(src.join("kept"), None, Some(3000)).unwrap();
    std::fs::set_permissions(
        src.join("suid"),
        <std::fs::Permissions as PermissionsExt>::from_mode(0o4755),
    )
    .unwrap();
    let outside = t.path().join("mine");
    let mine = plant(&dst.join("linked"), &outside, true);
    plant(&dst.join("new"), &outside.with_extension("2"), false);
    plant(&dst.join("suid"), &outside.with_extension("3"), true);
    assert!(job(&src, &dst, &state));
    assert_eq!(full_hash(&src), full_hash(&dst));
    for name in ["linked", "new"] {
        assert_eq!(uid_of(&dst.join(name)), 2000, "{name}");
    }
    assert_eq!(gid_of(&dst.join("kept")), 3000);
    let kept = std::fs::metadata(dst.join("kept")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&kept),
        kept_ino,
        "kept is changed in place"
    );
    assert_eq!(uid_of(&outside), 1000, "the planted file keeps its owner");
    assert_eq!(std::fs::read(&outside).unwrap(), mine);
    let suid = std::fs::metadata(outside.with_extension("3")).unwrap();
    assert_eq!(
        suid.permissions().mode() & 0o7777,
        0o644,
        "the planted file gets no set-uid bit"
    );
}

/// A file of uid 2000 that the source gives to root: uid 2000 could write its bytes on the
/// target, and did, keeping its size and mtime. Those bytes do not become root's: the job
/// sends the file anew.
#[test]
fn a_job_never_gives_root_the_bytes_of_a_file_its_old_owner_could_write() {
    need_root_to_chown();
    let t = reachable_tempdir();
    let (src, dst, state) = dirs(t.path());
    std::fs::write(src.join("tool"), bytes(165, 3000)).unwrap();
    chown(&src.join("tool"), 2000);
    assert!(job(&src, &dst, &state));
    chown(&src.join("tool"), 0);
    let at = dst.join("tool");
    let mtime = std::fs::metadata(&at).unwrap().modified().unwrap();
    rewrite(&at, vec![b'!'; 100], 0);
    set_modified(&at, mtime);
    assert!(job(&src, &dst, &state));
    assert_eq!(full_hash(&src), full_hash(&dst));
    assert_eq!(std::fs::read(&at).unwrap(), bytes(165, 3000));
}

/// A job that changes root's `tool` with `change` on the source, cut after its apply phase
/// made that change on the target; returns the target.
fn cut_while_tool_changes(at: &Path, change: fn(&Path)) -> PathBuf {
    need_root_to_chown();
    let (src, dst, state) = dirs(at);
    std::fs::write(src.join("tool"), bytes(170, 3000)).unwrap();
    assert!(job(&src, &dst, &state));
    change(&src.join("tool"));
    std::fs::write(src.join("zz-big.bin"), bytes(171, 8 << 20)).unwrap();
    cut_job(&src, &dst, &state, 1 << 20);
    dst
}

fn to_uid_2000(p: &Path) {
    chown(p, 2000);
}

fn to_group_3000(p: &Path) {
    std::os::unix::fs::lchown(p, None, Some(3000)).unwrap();
}

fn gid_of(p: &Path) -> u32 {
    std::os::unix::fs::MetadataExt::gid(&std::fs::symlink_metadata(p).unwrap())
}

/// The revert of a job that changed a file's group in place gives it its old group back.
#[test]
fn a_revert_gives_back_the_group_a_cut_job_changed() {
    let t = reachable_tempdir();
    let dst = cut_while_tool_changes(t.path(), to_group_3000);
    assert_eq!(
        gid_of(&dst.join("tool")),
        3000,
        "the cut job changed the group"
    );
    mover::receiver::revert_root(&dst).unwrap();
    assert_eq!(gid_of(&dst.join("tool")), 0);
    assert_eq!(std::fs::read(dst.join("tool")).unwrap(), bytes(170, 3000));
}

/// A local writer puts their own file where a cut job gave root's `tool` another group: the
/// revert would give it root's group. It stops and names the file instead.
#[test]
fn a_revert_never_gives_an_owner_to_a_file_planted_in_its_place() {
    let t = reachable_tempdir();
    let dst = cut_while_tool_changes(t.path(), to_group_3000);
    let outside = t.path().join("mine");
    plant(&dst.join("tool"), &outside, false);
    assert_revert_refused(&dst, "cannot restore the owner or set-id bits of tool");
    assert_eq!(
        uid_of(&dst.join("tool")),
        1000,
        "the planted file keeps its owner"
    );
}

/// A cut job gave root's `tool` to uid 2000, who then wrote into it. The job handed over a
/// copy: the revert puts back the recovery point's own inode, bytes and owner.
#[test]
fn a_revert_puts_back_the_untouched_file_a_cut_job_handed_over() {
    let t = reachable_tempdir();
    let dst = cut_while_tool_changes(t.path(), to_uid_2000);
    let at = dst.join("tool");
    assert_eq!(uid_of(&at), 2000, "the cut job changed the owner");
    rewrite(&at, vec![b'!'; 100], 0);
    mover::receiver::revert_root(&dst).unwrap();
    assert_eq!(uid_of(&at), 0);
    assert_eq!(std::fs::read(&at).unwrap(), bytes(170, 3000));
}

/// A cut job took the set-gid bit off `tool` of uid 2000, who then wrote into it: the job
/// changed a copy, so the revert puts back the recovery point's own inode, set-gid bit and
/// bytes, never the set-gid bit on what uid 2000 wrote.
#[test]
fn a_revert_never_gives_a_set_gid_bit_back_to_bytes_its_owner_wrote() {
    need_root_to_chown();
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, <std::fs::Permissions as PermissionsExt>::from_mode(m)).unwrap()
    };
    let t = reachable_tempdir();
    let (src, dst, state) = dirs(t.path());
    std::fs::write(src.join("tool"), bytes(175, 3000)).unwrap();
    chown(&src.join("tool"), 2000);
    mode(&src.join("tool"), 0o2755);
    assert!(job(&src, &dst, &state));
    mode(&src.join("tool"), 0o755);
    std::fs::write(src.join("zz-big.bin"), bytes(176, 8 << 20)).unwrap();
    cut_job(&src, &dst, &state, 1 << 20);
    let at = dst.join("tool");
    assert_eq!(
        std::fs::metadata(&at).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    rewrite(&at, vec![b'!'; 100], 0);
    mover::receiver::revert_root(&dst).unwrap();
    assert_eq!(
        std::fs::metadata(&at).unwrap().permissions().mode() & 0o7777,
        0o2755
    );
    assert_eq!(std::fs::read(&at).unwrap(), bytes(175, 3000));
}

/// Fails unless a revert of `dst` stops with an error that says `says`.
fn assert_revert_refused(dst: &Path, says: &str) {
    let r = mover::receiver::revert_root(dst);
    assert!(
        r.as_ref().is_err_and(|e| e.to_string().contains(says)),
        "{r:?}"
    );
}

/// Fails the test unless it runs as root (`.ci/run` does): it chowns files.
fn need_root_to_chown() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test chowns files: run it as root"
    );
}

/// A scratch directory other users can reach (mode 0755, whatever the umask): where none can,
/// the receiver needs no guard against what they plant (receiver/grant.rs).
fn reachable_tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        t.path(),
        <std::fs::Permissions as PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    t
}

/// Where no one but root can reach the target (its parent here is 0700, as the README asks
/// and the daemon's private view is), a `chown` of root's file on the source is a plain chown
/// of the same inode on the target: no guard, no copy.
#[test]
fn a_target_no_one_else_can_reach_changes_owners_in_place() {
    need_root_to_chown();
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        t.path(),
        <std::fs::Permissions as PermissionsExt>::from_mode(0o700),
    )
    .unwrap();
    let (src, dst, state) = dirs(t.path());
    std::fs::write(src.join("tool"), bytes(180, 3000)).unwrap();
    assert!(job(&src, &dst, &state));
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = ino(&dst.join("tool"));
    chown(&src.join("tool"), 2000);
    assert!(job(&src, &dst, &state));
    assert_eq!(uid_of(&dst.join("tool")), 2000);
    assert_eq!(ino(&dst.join("tool")), before, "changed in place");
}

/// Root's file made writable by others on the source (0644 to 0666) is changed on a copy:
/// a revert of the cut job puts back the untouched file, not 0644 on bytes anyone could write.
#[test]
fn a_revert_never_makes_bytes_anyone_could_write_look_like_roots() {
    let t = reachable_tempdir();
    let dst = cut_while_tool_changes(t.path(), |p| {
        std::fs::set_permissions(
            p,
            <std::fs::Permissions as PermissionsExt>::from_mode(0o666),
        )
        .unwrap()
    });
    let at = dst.join("tool");
    assert_eq!(
        std::fs::metadata(&at).unwrap().permissions().mode() & 0o7777,
        0o666
    );
    rewrite(&at, vec![b'!'; 100], 0);
    mover::receiver::revert_root(&dst).unwrap();
    assert_eq!(
        std::fs::metadata(&at).unwrap().permissions().mode() & 0o7777,
        0o644
    );
    assert_eq!(std::fs::read(&at).unwrap(), bytes(170, 3000));
}

/// A job into a target no one else could reach changed owners in place, unguarded; then the
/// target's parent opens up. Its revert goes by what the job decided (its journal has no
/// identity marker), not by the disk now, and gives the owner back.
#[test]
fn a_revert_goes_by_what_its_job_decided_about_other_users() {
    let t = tempfile::tempdir().unwrap();
    let mode = |m: u32| {
        std::fs::set_permissions(
            t.path(),
            <std::fs::Permissions as PermissionsExt>::from_mode(m),
        )
        .unwrap()
    };
    mode(0o700);
    let dst = cut_while_tool_changes(t.path(), to_uid_2000);
    assert_eq!(
        uid_of(&dst.join("tool")),
        2000,
        "the cut job changed the owner"
    );
    mode(0o755);
    mover::receiver::revert_root(&dst).unwrap();
    assert_eq!(uid_of(&dst.join("tool")), 0);
}
