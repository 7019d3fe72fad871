//! Point-in-time sources on real file systems (loop-mounted btrfs and XFS images): a btrfs
//! read-only snapshot, a reflink clone, and the plain provider's detection of files that change
//! while being read. Needs root, mkfs.btrfs, btrfs and mkfs.xfs (scripts/install-deps.sh).

mod common;

use common::*;
use mover::gen::{generate, TreeSpec};
use mover::sender::{send, send_with_retry, SendOptions};
use mover::snapshot::Provider;
use mover::Progress;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run scripts/install-deps.sh as root)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loop-mounted file system image, unmounted on drop.
struct Mounted {
    dir: PathBuf,
    _t: tempfile::TempDir,
}

impl Mounted {
    fn new(fs: &str, size: u64) -> Mounted {
        assert!(
            rustix::process::geteuid().is_root(),
            "snapshot tests need root (loop mounts)"
        );
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("fs.img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        run(Command::new(format!("mkfs.{fs}")).arg("-q").arg(&img));
        let dir = t.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&dir));
        Mounted { dir, _t: t }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // A receiver thread the test did not join may still hold a file open in it, and a
        // busy file system is not unmounted: detached then, it goes when that file closes
        // (else every run would leave a loop mount behind).
        let done = Command::new("umount").arg(&self.dir).status();
        if !done.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("--lazy").arg(&self.dir).status();
        }
    }
}

fn opts(src: &Path, addr: std::net::SocketAddr, state: &Path, snapshot: Provider) -> SendOptions {
    SendOptions {
        snapshot: Some(snapshot),
        ..send_options(src, addr, 2, Some(state))
    }
}

/// The source, destination and state directory of a test in `t` (none created).
fn src_dst_state(t: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (t.join("src"), t.join("dst"), t.join("state"))
}

fn scratch_is_empty(src: &Path) -> bool {
    std::fs::read_dir(src.join(".mover-state"))
        .map(|d| d.count() == 0)
        .unwrap_or(true)
}

/// Rewrites `f` whole, again and again, each version one repeated byte, until `stop`: in place
/// (a reader can catch it half-written), or `atomic`ally by writing a temp file and renaming it
/// over (as careful applications do; any point in time then holds one whole version).
fn writer(
    f: PathBuf,
    size: usize,
    stop: Arc<AtomicBool>,
    atomic: bool,
) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let tmp = f.with_extension("tmp-version");
        let mut v = 0u32;
        while !stop.load(Ordering::SeqCst) {
            v += 1;
            let target = if atomic { &tmp } else { &f };
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(target)
                .unwrap();
            let chunk = vec![v as u8; 1 << 20];
            for off in (0..size).step_by(1 << 20) {
                file.write_all_at(&chunk, off as u64).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            if atomic {
                std::fs::rename(&tmp, &f).unwrap();
            }
        }
        v
    })
}

fn one_version(p: &Path) -> bool {
    let d = std::fs::read(p).unwrap();
    d.iter().all(|&b| b == d[0])
}

#[test]
fn btrfs_snapshot_is_one_point_in_time_and_keeps_identities() {
    let m = Mounted::new("btrfs", 512 << 20);
    let src = m.dir.join("src");
    run(Command::new("btrfs")
        .args(["-q", "subvolume", "create"])
        .arg(&src));
    assert!(mover::snapshot::is_btrfs_subvolume(&src));
    assert_eq!(mover::snapshot::auto(&src), Provider::Btrfs);
    generate(
        &src,
        &TreeSpec {
            small_files: 80,
            large_files: 2,
            large_size: 2 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::write(src.join("busy.bin"), vec![0u8; 8 << 20]).unwrap();
    let t = tempfile::tempdir().unwrap();
    let (dst, state) = (t.path().join("dst"), t.path().join("state"));
    std::fs::create_dir(&dst).unwrap();
    let (addr, _reports) = start_serving(&dst);

    // A writer replaces busy.bin throughout the job: the snapshot holds one version of it.
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(src.join("busy.bin"), 8 << 20, stop.clone(), true);
    let rep = send(
        &opts(&src, addr, &state, Provider::Btrfs),
        &Arc::new(Progress::default()),
    )
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    assert!(w.join().unwrap() > 0);
    assert_eq!(rep.snapshot, Provider::Btrfs);
    assert!(
        one_version(&dst.join("busy.bin")),
        "the target holds one version of a file written during the job"
    );
    assert_eq!(
        std::fs::read_dir(src.join(".mover-state")).unwrap().count(),
        1,
        "only the job's snapshot is kept, as the next base"
    );

    // The live tree at rest now: the next job is incremental against snapshot-era identities.
    let _ = std::fs::remove_file(src.join("busy.tmp-version"));
    std::fs::rename(src.join("dir000"), src.join("dir000-renamed")).unwrap();
    let rep = send(
        &opts(&src, addr, &state, Provider::Btrfs),
        &Arc::new(Progress::default()),
    )
    .unwrap();
    assert!(rep.incremental, "manifest matched");
    assert!(
        rep.bytes <= 8 << 20,
        "only busy.bin's last version may travel, not the renamed directory: {}",
        rep.bytes
    );
    assert_same_tree(&src, &dst);
}

#[test]
fn reflink_clone_on_xfs_reads_consistent_files_and_keeps_live_identities() {
    let m = Mounted::new("xfs", 600 << 20);
    let src = m.dir.join("src");
    generate(
        &src,
        &TreeSpec {
            small_files: 80,
            large_files: 2,
            large_size: 2 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let t = tempfile::tempdir().unwrap();
    let (dst, state) = (t.path().join("dst"), t.path().join("state"));
    std::fs::create_dir(&dst).unwrap();
    let (addr, _reports) = start_serving(&dst);
    let rep = send(
        &opts(&src, addr, &state, Provider::Reflink),
        &Arc::new(Progress::default()),
    )
    .unwrap();
    assert_eq!(rep.snapshot, Provider::Reflink);
    assert_same_tree(&src, &dst);
    assert!(scratch_is_empty(&src), "the clone is removed");

    std::fs::create_dir(src.join("moved-here")).unwrap();
    std::fs::rename(
        src.join("large0.bin"),
        src.join("moved-here/large0-moved.bin"),
    )
    .unwrap();
    let rep = send(
        &opts(&src, addr, &state, Provider::Reflink),
        &Arc::new(Progress::default()),
    )
    .unwrap();
    assert!(rep.incremental);
    assert_eq!(
        rep.bytes, 0,
        "a moved file is a rename, even read through clones"
    );
    assert_same_tree(&src, &dst);
}

/// Sends with retries (plain provider) while a writer runs, which `stop` ends after 1.5 s;
/// every failed session must be a source change. Returns the report and the retries.
fn send_while_written(
    src: &Path,
    addr: std::net::SocketAddr,
    state: &Path,
    stop: &Arc<AtomicBool>,
) -> (mover::sender::SendReport, u32) {
    let stopper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            stop.store(true, Ordering::SeqCst);
        })
    };
    let mut changed = 0;
    let rep = send_with_retry(
        &opts(src, addr, state, Provider::Plain),
        &Arc::new(Progress::default()),
        40,
        |_, e, _| {
            assert!(
                matches!(e, mover::Error::SourceChanged { .. }),
                "only source changes expected: {e}"
            );
            changed += 1;
        },
    )
    .unwrap();
    stopper.join().unwrap();
    (rep, changed)
}

/// After `send_while_written`: the pinned copies are gone, and as the recovery point may hold
/// a version copied aside while the writer went on, the next job brings the last one.
fn brings_the_last_version(src: &Path, dst: &Path, addr: std::net::SocketAddr, state: &Path) {
    assert!(scratch_is_empty(src), "pinned copies are removed");
    send(
        &opts(src, addr, state, Provider::Plain),
        &Arc::new(Progress::default()),
    )
    .unwrap();
    assert_same_tree(src, dst);
}

#[test]
fn plain_provider_retries_a_file_changed_while_read() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = src_dst_state(t.path());
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(src.join("busy.bin"), vec![0u8; 8 << 20]).unwrap();
    let (addr, _reports) = start_serving(&dst);
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(src.join("busy.bin"), 8 << 20, stop.clone(), false);
    let (rep, changed) = send_while_written(&src, addr, &state, &stop);
    w.join().unwrap();
    assert!(changed > 0, "the writer was caught at least once");
    assert!(rep.attempts > 1);
    assert!(
        one_version(&dst.join("busy.bin")),
        "never a torn file in a recovery point"
    );
    brings_the_last_version(&src, &dst, addr, &state);
}

#[test]
fn plain_provider_catches_small_files_rewritten_while_read_and_commits_none_torn() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = src_dst_state(t.path());
    std::fs::create_dir_all(src.join("quiet")).unwrap();
    std::fs::create_dir_all(src.join("busy")).unwrap();
    std::fs::create_dir(&dst).unwrap();
    // Small files travel in batches, read whole by the workers, which check each one as soon
    // as it is read; the session's own check after the data skips them.
    for i in 0..300 {
        std::fs::write(src.join(format!("quiet/q{i:03}")), vec![i as u8; 4096]).unwrap();
    }
    let busy: Vec<PathBuf> = (0..16).map(|i| src.join(format!("busy/b{i:02}"))).collect();
    for p in &busy {
        std::fs::write(p, vec![0u8; 4096]).unwrap();
    }
    let (addr, _reports) = start_serving(&dst);
    let stop = Arc::new(AtomicBool::new(false));
    // Rewrites every busy file in place, half by half, so a read between the halves is torn.
    let writer = {
        let (busy, stop) = (busy.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut v = 0u8;
            while !stop.load(Ordering::SeqCst) {
                v = v.wrapping_add(1);
                for p in &busy {
                    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                    f.write_all_at(&[v; 2048], 0).unwrap();
                    std::thread::sleep(std::time::Duration::from_micros(300));
                    f.write_all_at(&[v; 2048], 2048).unwrap();
                }
            }
        })
    };
    let (rep, changed) = send_while_written(&src, addr, &state, &stop);
    writer.join().unwrap();
    assert!(changed > 0, "the writer was caught at least once");
    assert!(rep.attempts > 1);
    for p in &busy {
        let rel = p.strip_prefix(&src).unwrap();
        assert!(
            one_version(&dst.join(rel)),
            "{} is torn in the recovery point",
            rel.display()
        );
    }
    brings_the_last_version(&src, &dst, addr, &state);
}

#[test]
fn a_log_appended_all_the_time_does_not_stall_plain_jobs_and_arrives_whole() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = src_dst_state(t.path());
    std::fs::create_dir_all(src.join("logs")).unwrap();
    std::fs::create_dir(&dst).unwrap();
    let (addr, _reports) = start_serving(&dst);
    let log = src.join("logs/app.log");
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            let mut n = 0u64;
            // Fifty lines a second, five times the ten of a busy log.
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                std::io::Write::write_all(&mut f, format!("line {n}\n").as_bytes()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    // As the daemon does after a session named the log in SourceChanged: pinned at once.
    let opts = SendOptions {
        pin: vec![b"logs/app.log".to_vec()],
        ..opts(&src, addr, &state, Provider::Plain)
    };
    for _job in 0..4 {
        let rep = send(&opts, &Arc::new(Progress::default()))
            .expect("a job completes although its log is written all the time");
        assert_eq!(rep.attempts, 1);
        let got = std::fs::read(dst.join("logs/app.log")).unwrap();
        let live = std::fs::read(&log).unwrap();
        assert!(
            live.starts_with(&got) && got.ends_with(b"\n") && !got.is_empty(),
            "the recovery point holds a complete earlier state of the log"
        );
        assert!(scratch_is_empty(&src));
    }
    stop.store(true, Ordering::SeqCst);
    appender.join().unwrap();
    // Unpinned, a SourceChanged names the file, and the retry pins it.
    let e = mover::Error::SourceChanged {
        message: String::new(),
        paths: vec![b"logs/app.log".to_vec()],
    };
    assert!(mover::sender::retryable(&e));
}

#[test]
fn btrfs_finds_changed_blocks_from_shared_extents_without_reading_the_file() {
    let m = Mounted::new("btrfs", 512 << 20);
    let src = m.dir.join("src");
    run(Command::new("btrfs")
        .args(["-q", "subvolume", "create"])
        .arg(&src));
    let mut data = vec![0u8; 32 << 20];
    mover::gen::Rng(3).fill(&mut data);
    std::fs::write(src.join("big.bin"), &data).unwrap();
    let t = tempfile::tempdir().unwrap();
    let (dst, state) = (t.path().join("dst"), t.path().join("state"));
    std::fs::create_dir(&dst).unwrap();
    let (addr, _reports) = start_serving(&dst);
    send(
        &opts(&src, addr, &state, Provider::Btrfs),
        &Arc::new(Progress::default()),
    )
    .unwrap();
    let kept: Vec<_> = std::fs::read_dir(src.join(".mover-state"))
        .unwrap()
        .collect();
    assert_eq!(
        kept.len(),
        1,
        "the job's snapshot is kept as the next job's base"
    );

    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("big.bin"))
        .unwrap();
    for k in 0..16u64 {
        f.write_all_at(&[k as u8 + 1; 4096], (k * 509 + 7) * 4096)
            .unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let rep = send(
        &opts(&src, addr, &state, Provider::Btrfs),
        &Arc::new(Progress::default()),
    )
    .unwrap();
    assert_same_tree(&src, &dst);
    assert_eq!(rep.files_delta, 1);
    assert_eq!(rep.bytes, 16 * 4096, "only the rewritten blocks travel");
    assert!(
        rep.hashed_bytes <= 1 << 20,
        "read {} bytes of a 32 MiB file to find 64 KiB of changes",
        rep.hashed_bytes
    );
    let kept: Vec<_> = std::fs::read_dir(src.join(".mover-state"))
        .unwrap()
        .collect();
    assert_eq!(kept.len(), 1, "the older base is deleted");
}

#[test]
fn a_provider_the_file_system_cannot_serve_is_refused_naming_the_file_system() {
    let btrfs = Mounted::new("btrfs", 512 << 20);
    let xfs = Mounted::new("xfs", 512 << 20);
    let plain_dir = btrfs.dir.join("dir");
    std::fs::create_dir(&plain_dir).unwrap();
    let subvol = btrfs.dir.join("subvol");
    run(Command::new("btrfs")
        .args(["-q", "subvolume", "create"])
        .arg(&subvol));
    let shm = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    let unsupported = mover::snapshot::unsupported;

    // What each file system can do is accepted.
    assert_eq!(unsupported(&subvol, Provider::Btrfs), None);
    assert_eq!(unsupported(&plain_dir, Provider::Reflink), None);
    assert_eq!(unsupported(&xfs.dir, Provider::Reflink), None);
    assert_eq!(unsupported(shm.path(), Provider::Plain), None);
    // What it cannot is refused, naming the file system and what it lacks.
    let why = unsupported(&plain_dir, Provider::Btrfs).expect("not a subvolume");
    assert!(
        why.contains("btrfs") && why.contains("not a btrfs subvolume"),
        "{why}"
    );
    let why = unsupported(&xfs.dir, Provider::Btrfs).expect("XFS has no subvolumes");
    assert!(why.contains("XFS"), "{why}");
    let why = unsupported(shm.path(), Provider::Reflink).expect("tmpfs has no reflinks");
    assert!(
        why.contains("tmpfs") && why.contains("no reflinks"),
        "{why}"
    );
}

/// A target at `dst` served by a receiver holding one recovery point of `src`; returns the
/// handle to ask it for drills.
fn served_target(src: &Path, dst: &Path) -> mover::receiver::DrillHandle {
    let (addr, reports, drills) = serve_drillable(dst);
    send_state(src, addr, &dst.with_extension("state")).unwrap();
    assert!(reports.recv().unwrap().ok);
    drills
}

fn serve_drillable(
    dst: &Path,
) -> (
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<mover::SessionReport>,
    mover::receiver::DrillHandle,
) {
    let r = mover::receiver::Receiver::bind(
        "127.0.0.1:0".parse().unwrap(),
        mover::receiver::ReceiveOptions {
            root: dst.to_path_buf(),
            insecure_plaintext: true,
            policy: every_kind(),
            ..Default::default()
        },
        Arc::new(Progress::default()),
    )
    .unwrap();
    let addr = r.local_addr().unwrap();
    let drills = r.drill_handle();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = r.serve(|rep| {
            let _ = tx.send(rep.clone());
        });
    });
    (addr, rx, drills)
}

fn drill(
    h: &mover::receiver::DrillHandle,
    into: &Path,
    allow_copy: bool,
) -> mover::Result<mover::receiver::drill::DrillReport> {
    h.make(
        mover::receiver::drill::DrillRequest {
            keep: None,
            into: into.to_path_buf(),
            allow_copy,
        },
        std::time::Duration::from_secs(30),
    )
}

#[test]
fn a_drill_is_a_verified_writable_copy_of_the_recovery_point_by_snapshot_reflink_or_copy() {
    use mover::receiver::drill::DrillMethod;
    let btrfs = Mounted::new("btrfs", 512 << 20);
    let xfs = Mounted::new("xfs", 512 << 20);
    let shm = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("src");
    generate(&src, &TreeSpec::default()).unwrap();

    let on_btrfs = btrfs.dir.join("dst");
    run(Command::new("btrfs")
        .args(["-q", "subvolume", "create"])
        .arg(&on_btrfs));
    for (dst, method) in [
        (on_btrfs, DrillMethod::Snapshot),
        (xfs.dir.join("dst"), DrillMethod::Reflink),
        (shm.path().join("dst"), DrillMethod::Copy),
    ] {
        std::fs::create_dir_all(&dst).unwrap();
        let h = served_target(&src, &dst);
        let into = dst.with_extension("drill");
        if method == DrillMethod::Copy {
            let e = drill(&h, &into, false).unwrap_err();
            assert!(e.to_string().contains("full copy"), "{e}");
            assert!(!into.exists(), "a refused drill leaves nothing");
        }
        let r = drill(&h, &into, true).unwrap();
        assert_eq!(r.method, method, "{}", dst.display());
        assert!(r.entries > 10 && r.data_age_seconds >= 0.0, "{r:?}");
        assert!(!into.join(".mover-state").exists());
        assert_same_tree(&src, &into);
        // Writable, and apart from the target: the target stays its recovery point.
        std::fs::write(into.join("drill-was-here"), b"x").unwrap();
        assert!(!dst.join("drill-was-here").exists());
        // A drill goes into a new directory only.
        let e = drill(&h, &into, true).unwrap_err();
        assert!(e.to_string().contains("exists"), "{e}");
        mover::receiver::drill::release(&into).unwrap();
        assert!(!into.exists());
    }
}

#[test]
fn btrfs_narrowed_jobs_take_unchanged_entries_from_the_previous_snapshots_list() {
    let m = Mounted::new("btrfs", 256 << 20);
    let src = m.dir.join("src");
    run(Command::new("btrfs")
        .args(["-q", "subvolume", "create"])
        .arg(&src));
    for d in ["a", "b"] {
        std::fs::create_dir(src.join(d)).unwrap();
        for k in 0..10 {
            std::fs::write(src.join(d).join(format!("f{k}")), vec![b'x'; 50 + k]).unwrap();
        }
    }
    let t = tempfile::tempdir().unwrap();
    let (dst, state) = (t.path().join("dst"), t.path().join("state"));
    std::fs::create_dir(&dst).unwrap();
    let (addr, reports) = start_serving(&dst);
    let cache = Arc::new(mover::sender::ManifestCache::new());
    let job = |dirs: &[&str]| {
        let o = SendOptions {
            changed: Some(mover::tree::narrow::ChangedDirs {
                dirs: dirs.iter().map(|d| d.as_bytes().to_vec()).collect(),
            }),
            cache: Some(cache.clone()),
            ..opts(&src, addr, &state, Provider::Btrfs)
        };
        let rep = send(&o, &Arc::new(Progress::default())).unwrap();
        assert!(reports.recv().unwrap().ok);
        assert_same_tree(&src, &dst);
        rep
    };
    assert!(!job(&[]).walk_narrowed, "no manifest yet");
    std::fs::write(src.join("a/f1"), b"changed").unwrap();
    std::fs::write(src.join("b/new"), b"created").unwrap();
    let rep = job(&["", "a", "b"]);
    assert!(rep.walk_narrowed && rep.incremental, "{rep:?}");
    assert_eq!(rep.files, 2);
    std::fs::write(src.join("b/f2"), b"changed too").unwrap();
    let rep = job(&["b"]);
    assert!(rep.walk_narrowed, "{rep:?}");
    assert_eq!(rep.files, 1);
    // Each snapshot is a new device: the entries taken from the last list are the same items.
    assert_eq!(rep.renames, 0);
    assert_eq!(rep.walk_fresh, 1 + 11, "the root and b's children");
}

#[test]
fn a_btrfs_subvolume_and_xfs_are_watched_for_changes() {
    use mover::watch::{Changes, Watcher};
    let btrfs = Mounted::new("btrfs", 256 << 20);
    let sub = btrfs.dir.join("vol");
    run(Command::new("btrfs")
        .args(["-q", "subvolume", "create"])
        .arg(&sub));
    let xfs = Mounted::new("xfs", 320 << 20);
    let plain = xfs.dir.join("src");
    for root in [&sub, &plain] {
        std::fs::create_dir_all(root.join("d")).unwrap();
        // Whichever backend is allowed here (fanotify refuses a file-system mark on a btrfs
        // subvolume that is not the file system's root; inotify then).
        let mut w = Watcher::new(root, None).expect("a watch");
        std::fs::write(root.join("d/f"), b"x").unwrap();
        let mut c = Changes::default();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !c.dirs.contains(&b"d"[..]) && std::time::Instant::now() < end {
            if w.wait(std::time::Duration::from_millis(200)).unwrap() {
                w.drain(&mut c).unwrap();
            }
        }
        assert!(
            c.dirs.contains(&b"d"[..]) && !c.rescan,
            "{} ({}): {c:?}",
            root.display(),
            w.backend()
        );
    }
}
