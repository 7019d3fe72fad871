//! The destination's file system fills up mid-job: the error names the path and the free space,
//! the receiver reverts the job so the target stays at its last recovery point, and the job
//! succeeds once space is freed. Runs on a real, small ext4 file system (a loop-mounted image),
//! so it needs root, mkfs.ext4 and mount; without them it fails rather than skipping, because a
//! skipped test would hide that disk-full handling went untested (scripts/install-deps.sh).

mod common;

use common::*;
use mover::churn::{churn, ChurnSpec};
use mover::gen::{generate, TreeSpec};
use mover::tree::hash::hash_dir;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of the ext4 image: room for the first job, small enough to fill quickly.
const IMAGE_BYTES: u64 = 48 << 20;
/// Free space left beside the filler file; the second job needs several times this.
const LEFT_FREE: u64 = 6 << 20;

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (run scripts/install-deps.sh)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/sbin", "/usr/sbin"].map(PathBuf::from))
        .any(|d| d.join(tool).is_file());
    assert!(
        found,
        "disk_full needs `{tool}` (run scripts/install-deps.sh); refusing to skip"
    );
}

/// A freshly made ext4 file system mounted on a temporary directory; unmounted on drop (also
/// when the test panics), then the image goes with its temporary directory.
struct Ext4 {
    mnt: tempfile::TempDir,
    _img_dir: tempfile::TempDir,
}

impl Ext4 {
    fn new() -> Ext4 {
        assert!(
            rustix::process::geteuid().is_root(),
            "disk_full must run as root (it loop-mounts an ext4 image); refusing to skip"
        );
        for t in ["mkfs.ext4", "mount", "umount"] {
            require(t);
        }
        let img_dir = tempfile::tempdir().unwrap();
        let img = img_dir.path().join("target.ext4");
        run(Command::new("truncate")
            .arg("-s")
            .arg(IMAGE_BYTES.to_string())
            .arg(&img));
        // -m 0: no blocks reserved for root, so "full" is the same for this root test as for an
        // unprivileged receiver, and statvfs' f_bavail is what can really be written.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&img));
        let mnt = tempfile::tempdir().unwrap();
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(mnt.path()));
        Ext4 {
            mnt,
            _img_dir: img_dir,
        }
    }

    fn path(&self) -> &Path {
        self.mnt.path()
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.mnt.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file open there (a panicking test's threads): detach it
            // so the loop device and image are released once they let go.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.mnt.path())
                .status();
        }
    }
}

fn free_bytes(p: &Path) -> u64 {
    let s = rustix::fs::statvfs(p).unwrap();
    s.f_bavail * s.f_frsize
}

fn tree_hash(p: &Path) -> (u128, Option<u128>) {
    let (t, c, _) = hash_dir(p, owners(), true).unwrap();
    (t, c)
}

/// The byte count in "… (N bytes) free" or "N bytes free".
fn reported_free(msg: &str) -> u64 {
    let at = msg
        .find(" bytes) free")
        .or_else(|| msg.find(" bytes free"))
        .unwrap_or_else(|| panic!("no free space in: {msg}"));
    let digits: String = msg[..at]
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no free space in: {msg}"))
}

/// Relative paths of every regular file in `root` (the generated tree is deeper than PATH_MAX,
/// so through mover's fd-relative walk).
fn files_under(root: &Path) -> Vec<String> {
    let w = mover::tree::walk::walk(root, false).unwrap();
    w.entries
        .iter()
        .zip(&w.paths)
        .filter(|(e, _)| matches!(e.kind, mover::tree::entry::EntryKind::File { .. }))
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// The first job of `src` into `dst` (`state`: the sender's), which fits: the target's tree
/// hash and its recovery point.
fn first_job(
    src: &Path,
    dst: &Path,
    state: &Path,
) -> ((u128, Option<u128>), mover::receiver::state::RecoveryPoint) {
    let (addr, h) = start_receiver(dst);
    send_state(src, addr, state).expect("first job");
    let r = h.join().unwrap();
    assert!(r.ok, "first job: {:?}", r.error);
    assert_same_tree(src, dst);
    let rp = mover::receiver::recovery_point(dst)
        .unwrap()
        .expect("a recovery point after the first job");
    (tree_hash(dst), rp)
}

/// Fills the file system at `fs` (outside the target's root) until `LEFT_FREE` remains; the
/// filler's path.
fn fill(fs: &Path) -> PathBuf {
    let filler = fs.join("filler");
    let f = std::fs::File::create(&filler).unwrap();
    rustix::fs::fallocate(
        &f,
        rustix::fs::FallocateFlags::empty(),
        0,
        free_bytes(fs) - LEFT_FREE,
    )
    .unwrap();
    f.sync_all().unwrap();
    filler
}

/// Removes `filler`, then runs the job again: it goes through.
fn after_freeing(filler: &Path, src: &Path, dst: &Path, state: &Path) -> mover::SendReport {
    std::fs::remove_file(filler).unwrap();
    let (addr, h) = start_receiver(dst);
    let rep = send_state(src, addr, state).expect("job after freeing space");
    let r = h.join().unwrap();
    assert!(r.ok, "job after freeing space: {:?}", r.error);
    assert_same_tree(src, dst);
    rep
}

#[test]
fn disk_full_names_path_and_free_space_and_keeps_the_recovery_point() {
    let fs = Ext4::new();
    let t = tempfile::tempdir().unwrap();
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    let dst = fs.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    generate(
        &src,
        &TreeSpec {
            small_files: 80,
            large_files: 2,
            large_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();

    // Job 1 fits and commits a recovery point.
    let (at_rp, rp) = first_job(&src, &dst, &state);

    // Fill the file system (outside the root) until LEFT_FREE remains, then give the source
    // changes, including new data several times larger than that.
    let filler = fill(fs.path());
    let free_before = free_bytes(fs.path());
    churn(
        &src,
        &ChurnSpec {
            seed: 11,
            ops: 30,
            large_max: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::create_dir(src.join("new")).unwrap();
    for i in 0..4 {
        std::fs::write(
            src.join(format!("new/big{i}.bin")),
            vec![i as u8 + 1; 5 << 20],
        )
        .unwrap();
    }

    // Job 2 runs out of space: both sides say so, naming the file and the free space.
    let (addr, h) = start_receiver(&dst);
    let sent = send_state(&src, addr, &state);
    let r = h.join().unwrap();
    assert!(!r.ok, "the second job cannot fit");
    let msg = r.error.clone().unwrap_or_default();
    eprintln!("receiver: {msg}");
    assert!(
        msg.contains("full"),
        "receiver error does not say the disk is full: {msg}"
    );
    let free = reported_free(&msg);
    assert!(
        free < LEFT_FREE,
        "reported {free} bytes free, but at most {LEFT_FREE} were left: {msg}"
    );
    assert!(msg.contains("this job needs"), "no bytes needed in: {msg}");
    let files = files_under(&src);
    assert!(
        files.iter().any(|p| msg.contains(p.as_str())),
        "the error names no path of the job: {msg}"
    );
    assert!(
        msg.contains(&format!("reverted to recovery point {}", rp.id)),
        "not reverted to {}: {msg}",
        rp.id
    );
    // The sender shows the receiver's reason when its Error frame arrives in time; when the
    // sender fails on its own socket error first, only the failure itself is certain.
    match sent.expect_err("the sender sees the second job fail") {
        mover::Error::Peer { code, message: m } => {
            eprintln!("sender: {m}");
            assert_eq!(
                code,
                mover::wire::message::ErrorCode::DiskFull,
                "the receiver's reason travels as a disk-full code: {m}"
            );
            assert!(!mover::sender::retryable(&mover::Error::Peer {
                code,
                message: m.clone()
            }));
            assert!(
                m.contains("full") && m.contains("free"),
                "sender got a reason that is not disk full: {m}"
            );
        }
        e => eprintln!("sender failed before the receiver's reason arrived: {e}"),
    }

    // The target is exactly at its last recovery point, and the job's space is free again.
    assert_eq!(
        tree_hash(&dst),
        at_rp,
        "target left between recovery points"
    );
    assert_eq!(
        mover::receiver::recovery_point(&dst).unwrap().as_ref(),
        Some(&rp),
        "recovery point changed"
    );
    assert!(
        !dst.join(".mover-state/journal").exists(),
        "the reverted job's journal is still there"
    );
    let free_after = free_bytes(fs.path());
    assert!(
        free_after + (1 << 20) >= free_before,
        "revert left {free_after} bytes free, {free_before} before the job"
    );

    // With space freed the same job goes through.
    let rep = after_freeing(&filler, &src, &dst, &state);
    assert!(!rep.resumed, "nothing to resume after a revert");
}

/// A FileBatch's small files are written with `pwrite` once created, not through the ring:
/// running out of space there is the same disk-full error, and the same revert.
#[test]
fn disk_full_while_writing_small_files_reverts_to_the_recovery_point() {
    let fs = Ext4::new();
    let t = tempfile::tempdir().unwrap();
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    let dst = fs.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    generate(
        &src,
        &TreeSpec {
            small_files: 40,
            large_files: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let (at_rp, rp) = first_job(&src, &dst, &state);
    let filler = fill(fs.path());
    // Twice the space left, all of it in files small enough to travel in FileBatch frames.
    let files = 2 * LEFT_FREE / 4096;
    for d in 0..files / 200 {
        let dir = src.join(format!("small-{d}"));
        std::fs::create_dir(&dir).unwrap();
        for i in 0..200 {
            std::fs::write(dir.join(format!("f{i}")), vec![(d + i) as u8; 4096]).unwrap();
        }
    }
    assert!(
        mover::wire::message::is_inline(4096),
        "4 KiB files go in FileBatch frames"
    );

    let (addr, h) = start_receiver(&dst);
    let sent = send_state(&src, addr, &state);
    let r = h.join().unwrap();
    assert!(sent.is_err(), "the sender sees the second job fail");
    assert!(!r.ok, "the second job cannot fit");
    let msg = r.error.clone().unwrap_or_default();
    eprintln!("receiver: {msg}");
    assert!(msg.contains("full"), "not a disk-full error: {msg}");
    // Its write (ext4 reserves a file's blocks at `pwrite`), or, when the space ran out right
    // at a batch's start, the growth of a directory while the batch's files were created.
    assert!(
        msg.contains("writing small-") || msg.contains("creating small-"),
        "the error names no small file: {msg}"
    );
    assert!(
        msg.contains(&format!("reverted to recovery point {}", rp.id)),
        "not reverted to {}: {msg}",
        rp.id
    );
    assert_eq!(
        tree_hash(&dst),
        at_rp,
        "target left between recovery points"
    );
    assert!(!dst.join(".mover-state/journal").exists());
    after_freeing(&filler, &src, &dst, &state);
}
