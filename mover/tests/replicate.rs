//! End-to-end replication over real sockets on 127.0.0.1 into real directories.

mod common;

use common::*;
use mover::gen::{generate, Rng, TreeSpec};
use mover::sender::send;
use mover::Progress;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[test]
fn replicates_every_kind_of_item() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir(&dst).unwrap();
    generate(&src, &TreeSpec::default()).unwrap();
    // Numeric owners that exist in no passwd file, and a set-gid directory.
    std::os::unix::fs::chown(src.join("extras/hard-a"), Some(4321), Some(8765)).unwrap();
    std::os::unix::fs::lchown(src.join("extras/dangling"), Some(77), Some(88)).unwrap();
    std::fs::set_permissions(
        src.join("extras/empty"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4751),
    )
    .unwrap();
    let rep = replicate(&src, &dst, 2);
    assert_same_tree(&src, &dst);

    let x = dst.join("extras");
    let m = std::fs::symlink_metadata(x.join("dangling")).unwrap();
    assert!(m.file_type().is_symlink(), "symlink kept as a link");
    assert_eq!((m.uid(), m.gid()), (77, 88), "symlink owner");
    assert_eq!(
        std::fs::read_link(x.join("link-to-large")).unwrap(),
        Path::new("../large0.bin")
    );
    let (a, b) = (
        std::fs::metadata(x.join("hard-a")).unwrap(),
        std::fs::metadata(x.join("hard-b")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "hard links stay one inode");
    assert_eq!((a.uid(), a.gid()), (4321, 8765));
    assert_eq!(
        std::fs::metadata(x.join("empty")).unwrap().mode() & 0o7777,
        0o4751
    );
    assert_eq!(std::fs::metadata(x.join("empty")).unwrap().len(), 0);
    let s = std::fs::metadata(x.join("sparse.img")).unwrap();
    assert_eq!(s.len(), 64 << 20);
    assert!(
        s.blocks() * 512 <= 4 << 20,
        "holes stay holes: {} bytes allocated",
        s.blocks() * 512
    );
    let src_m = std::fs::metadata(src.join("large0.bin")).unwrap();
    let dst_m = std::fs::metadata(dst.join("large0.bin")).unwrap();
    assert_eq!(
        (src_m.mtime(), src_m.mtime_nsec()),
        (dst_m.mtime(), dst_m.mtime_nsec()),
        "mtime in ns"
    );
    assert_eq!(
        rustix::fs::getxattr(x.join("hard-a"), "user.mover.test", &mut [0u8; 64][..]).unwrap(),
        7
    );
    assert!(
        rustix::fs::getxattr(&x, "user.dir.attr", &mut [0u8; 64][..]).is_ok(),
        "directory xattr"
    );
    let weird = x.join(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
            b"caf\xe9-not-utf8 \n\t name",
        ),
    );
    assert_eq!(std::fs::read(weird).unwrap(), b"latin-1 name");
    assert!(rep.files > 200 && rep.wire_bytes > rep.bytes);
}

#[test]
fn sparse_file_of_4_gib_with_1_mib_of_data_sends_about_1_mib() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir(&dst).unwrap();
    let f = std::fs::File::create(src.join("big.img")).unwrap();
    f.set_len(4 << 30).unwrap();
    let mut data = vec![0u8; 1 << 20];
    Rng(9).fill(&mut data);
    std::os::unix::fs::FileExt::write_all_at(&f, &data, 3 << 30).unwrap();
    drop(f);
    let rep = replicate(&src, &dst, 2);
    assert_eq!(rep.bytes, 1 << 20, "only the data region is sent");
    assert!(
        rep.wire_bytes < (1 << 20) + (64 << 10),
        "wire bytes {}",
        rep.wire_bytes
    );
    let m = std::fs::metadata(dst.join("big.img")).unwrap();
    assert_eq!(m.len(), 4 << 30);
    assert!(m.blocks() * 512 <= 2 << 20, "destination stays sparse");
    assert_same_tree(&src, &dst);
}

#[test]
fn progress_counts_every_file_sent_including_one_that_is_all_holes() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir(&dst).unwrap();
    // Large enough to travel as chunks, not in a batch of small files.
    std::fs::File::create(src.join("holes.img"))
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mut data = vec![0u8; 5 << 20];
    Rng(3).fill(&mut data);
    std::fs::write(src.join("data.bin"), &data).unwrap();
    std::fs::write(src.join("small"), b"small").unwrap();
    let (addr, h) = start_receiver(&dst);
    let progress = Arc::new(Progress::default());
    let rep = send(&send_options(&src, addr, 2, None), &progress).expect("send");
    assert!(h.join().unwrap().ok);
    assert_eq!(rep.bytes, (5 << 20) + 5, "the all-hole file sends no byte");
    assert_eq!(progress.files_total.load(Ordering::Relaxed), 3);
    assert_eq!(
        progress.files.load(Ordering::Relaxed),
        3,
        "a finished job's progress counts every file, the all-hole one too"
    );
    assert_same_tree(&src, &dst);
}

#[test]
fn rerun_transfers_only_files_whose_size_or_mtime_differ() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir(&dst).unwrap();
    generate(
        &src,
        &TreeSpec {
            extras: false,
            ..TreeSpec::default()
        },
    )
    .unwrap();
    for n in ["alpha.txt", "beta.txt", "gamma.txt"] {
        std::fs::write(src.join(n), n.repeat(100)).unwrap();
    }
    let first = replicate(&src, &dst, 2);
    let again = replicate(&src, &dst, 2);
    assert_eq!(again.files, 0, "nothing changed, nothing sent");
    assert_eq!(again.bytes, 0);
    assert!(again.wire_bytes < first.wire_bytes / 20);

    std::fs::write(src.join("alpha.txt"), b"new content, new size").unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("large1.bin"))
        .unwrap();
    f.set_modified(
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_234_567_890),
    )
    .unwrap();
    std::fs::remove_file(src.join("beta.txt")).unwrap();
    std::fs::create_dir(src.join("fresh")).unwrap();
    let third = replicate(&src, &dst, 2);
    assert_eq!(third.files, 2, "one resized file and one touched file");
    assert_same_tree(&src, &dst);
    assert!(
        !dst.join("beta.txt").exists(),
        "deleted in the source, removed in the target"
    );
}

#[test]
fn interrupted_send_is_rerun_without_resending_completed_files() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir(&dst).unwrap();
    let spec = TreeSpec {
        small_files: 2000,
        small_max: 60 * 1024,
        large_files: 0,
        extras: false,
        ..TreeSpec::default()
    };
    generate(&src, &spec).unwrap();
    let total: u64 = walkdir_bytes(&src);

    let (addr, h) = start_receiver(&dst);
    let proxy = CutProxy::start(addr, total / 2);
    let err = send_to(&src, proxy.addr, 2).expect_err("the cut must fail the send");
    let r = h.join().unwrap();
    assert!(!r.ok, "receiver must not verify a cut session");
    eprintln!("cut send failed as expected: {err}");

    let rerun = replicate(&src, &dst, 2);
    assert!(
        rerun.files > 0 && rerun.files < 2000,
        "rerun sent {} of 2000 files",
        rerun.files
    );
    assert!(
        rerun.bytes < total * 3 / 4,
        "rerun sent {} of {total} bytes",
        rerun.bytes
    );
    assert_same_tree(&src, &dst);
}

fn walkdir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            walkdir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

#[test]
fn type_changes_in_the_destination_are_replaced() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(src.join("was-file")).unwrap();
    std::fs::write(src.join("was-dir"), b"now a file").unwrap();
    std::os::unix::fs::symlink("target", src.join("was-file-too")).unwrap();
    std::fs::create_dir_all(dst.join("was-dir/sub")).unwrap();
    std::fs::write(dst.join("was-dir/sub/x"), b"x").unwrap();
    std::fs::write(dst.join("was-file"), b"old").unwrap();
    std::fs::write(dst.join("was-file-too"), b"old").unwrap();
    std::fs::write(dst.join("extraneous"), b"not in source").unwrap();
    replicate(&src, &dst, 1);
    assert_same_tree(&src, &dst);
}

#[test]
fn id_map_replicates_owners_as_the_target_ids() {
    assert!(
        rustix::process::geteuid().is_root(),
        "owners are set only by a root receiver: run as root (CI does)"
    );
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(src.path().join("a"), b"a").unwrap();
    std::fs::write(src.path().join("b"), b"b").unwrap();
    std::os::unix::fs::chown(src.path().join("b"), Some(4321), Some(4321)).unwrap();
    let (addr, h) = start_receiver(dst.path());
    let map = mover::sender::IdMap {
        uid: [(0, 1000)].into(),
        gid: [(0, 2000), (4321, 4322)].into(),
    };
    let opts = mover::sender::SendOptions {
        id_map: Some(map),
        ..send_options(src.path(), addr, 2, None)
    };
    mover::sender::send(&opts, &std::sync::Arc::new(mover::Progress::default())).unwrap();
    assert!(h.join().unwrap().ok);
    let (a, b) = (
        std::fs::metadata(dst.path().join("a")).unwrap(),
        std::fs::metadata(dst.path().join("b")).unwrap(),
    );
    assert_eq!((a.uid(), a.gid()), (1000, 2000), "mapped ids");
    assert_eq!(
        (b.uid(), b.gid()),
        (4321, 4322),
        "unmapped uid passes, mapped gid changes"
    );
    assert_eq!(
        std::fs::metadata(dst.path()).unwrap().uid(),
        1000,
        "the root directory too"
    );
}

#[test]
fn a_lock_anyone_takes_on_the_root_does_not_stop_the_receiver_or_a_revert() {
    // Any reader of a (read-only) target can flock its root directory; the receiver's own lock
    // lives in .mover-state (0700), which only the receiver's user can reach.
    let d = dirs();
    generate(
        &d.src,
        &TreeSpec {
            small_files: 20,
            large_files: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let squatter = std::fs::File::open(&d.dst).unwrap();
    rustix::fs::flock(
        &squatter,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .unwrap();
    replicate(&d.src, &d.dst, 2);
    assert_same_tree(&d.src, &d.dst);
    let rep = mover::revert_root(&d.dst).expect("revert despite the squatter's lock");
    assert!(!rep.reverted, "nothing to revert after a verified job");
    let state = std::fs::metadata(d.dst.join(".mover-state")).unwrap();
    assert_eq!(state.mode() & 0o777, 0o700);

    // The receiver's own lock still keeps a second receiver out while the first one runs.
    let (_addr, _h) = start_receiver(&d.dst);
    let second = mover::Receiver::bind(
        "127.0.0.1:0".parse().unwrap(),
        mover::ReceiveOptions {
            root: d.dst.clone(),
            ..Default::default()
        },
        std::sync::Arc::new(mover::Progress::default()),
    );
    assert!(matches!(second, Err(mover::Error::Busy(_))));
    drop(squatter);
}
