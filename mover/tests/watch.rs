//! Change detection on real file systems (ext4 under the temp dir, tmpfs under /dev/shm), with
//! both backends: the directories reported are those whose listing or entries changed, nothing
//! outside the root, never the state directory, and a lost event queue asks for a rescan.

use mover::watch::{Backend, Changes, Watcher};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a test waits for events that should come at once.
const SETTLE: Duration = Duration::from_millis(300);

fn drain_until_quiet(w: &mut Watcher) -> Changes {
    let mut c = Changes::default();
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if !w.wait(SETTLE).expect("wait") {
            break;
        }
        w.drain(&mut c).expect("drain");
    }
    c
}

fn set(v: &[&str]) -> BTreeSet<Vec<u8>> {
    v.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn tree(root: &Path) {
    for d in ["a/b", "c", "d", "x/y", "z", "e/f/g"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("d/f"), b"one").unwrap();
    std::fs::write(root.join("e/f/g/h"), b"h").unwrap();
    std::fs::write(root.join("x/m"), b"m").unwrap();
}

/// Makes one change of each kind and returns the directories they must report.
fn change(root: &Path) -> BTreeSet<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(root.join("a/b/new"), b"n").unwrap(); // create: a/b
    std::fs::set_permissions(root.join("c"), std::fs::Permissions::from_mode(0o700)).unwrap(); // c's inode: root
    std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("d/f"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"two"))
        .unwrap(); // data: d
    std::fs::rename(root.join("x/m"), root.join("z/m")).unwrap(); // move: x and z
    rustix::fs::setxattr(
        root.join("e/f/g/h"),
        "user.k",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap(); // xattr: e/f/g
               // The tree's own scratch is not part of it.
    std::fs::create_dir_all(root.join(".mover-state/snap-1")).unwrap();
    std::fs::write(root.join(".mover-state/snap-1/f"), b"s").unwrap();
    set(&["", "a/b", "d", "x", "z", "e/f/g"])
}

fn reports_the_changed_directories(base: &Path, backend: Backend) {
    let dir = tempfile::tempdir_in(base).unwrap();
    let root = dir.path().join("src");
    tree(&root);
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let mut w = Watcher::new(&root, Some(backend)).expect("watcher");
    assert_eq!(w.backend(), backend);
    let want = change(&root);
    std::fs::write(outside.join("f"), b"elsewhere on the file system").unwrap();
    let got = drain_until_quiet(&mut w);
    assert!(!got.rescan, "{backend}: no rescan for a handful of events");
    assert_eq!(got.dirs, want, "{backend}");
}

#[test]
fn fanotify_reports_the_directories_whose_entries_changed_on_ext4() {
    reports_the_changed_directories(&std::env::temp_dir(), Backend::Fanotify);
}

#[test]
fn fanotify_reports_the_directories_whose_entries_changed_on_tmpfs() {
    reports_the_changed_directories(Path::new("/dev/shm"), Backend::Fanotify);
}

#[test]
fn inotify_reports_the_directories_whose_entries_changed() {
    reports_the_changed_directories(&std::env::temp_dir(), Backend::Inotify);
}

#[test]
fn fanotify_reports_a_moved_directory_in_both_parents_and_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    tree(&root);
    let mut w = Watcher::new(&root, Some(Backend::Fanotify)).expect("watcher");
    std::fs::rename(root.join("x/y"), root.join("z/y")).unwrap();
    assert_eq!(drain_until_quiet(&mut w).dirs, set(&["x", "z"]));
    std::fs::write(root.join("z/y/new"), b"x").unwrap();
    assert_eq!(drain_until_quiet(&mut w).dirs, set(&["z/y"]));
}

#[test]
fn inotify_watches_directories_created_after_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    std::fs::create_dir(&root).unwrap();
    let mut w = Watcher::new(&root, Some(Backend::Inotify)).expect("watcher");
    std::fs::create_dir_all(root.join("n/m")).unwrap();
    let first = drain_until_quiet(&mut w);
    assert!(first.dirs.contains(&b""[..]), "{first:?}");
    std::fs::write(root.join("n/m/f"), b"x").unwrap();
    let second = drain_until_quiet(&mut w);
    assert_eq!(second.dirs, set(&["n/m"]), "{second:?}");
}

#[test]
fn a_moved_directory_under_inotify_asks_for_a_rescan_and_is_watched_at_its_new_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    tree(&root);
    let mut w = Watcher::new(&root, Some(Backend::Inotify)).expect("watcher");
    std::fs::rename(root.join("e"), root.join("c/e")).unwrap();
    assert!(drain_until_quiet(&mut w).rescan);
    std::fs::write(root.join("c/e/f/g/new"), b"x").unwrap();
    assert_eq!(drain_until_quiet(&mut w).dirs, set(&["c/e/f/g"]));
}

fn overflow_asks_for_a_rescan(backend: Backend) {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let root = dir.path().join("src");
    std::fs::create_dir(&root).unwrap();
    let mut w = Watcher::new(&root, Some(backend)).expect("watcher");
    // Both queues hold 16,384 events by default; distinct files are distinct events.
    for i in 0..20_000 {
        std::fs::write(root.join(format!("f{i}")), b"").unwrap();
    }
    let got = drain_until_quiet(&mut w);
    assert!(
        got.rescan,
        "{backend}: an overflowed queue must ask for a rescan"
    );
    assert!(got.dirs.is_empty());
}

#[test]
fn an_overflowed_fanotify_queue_asks_for_a_rescan() {
    overflow_asks_for_a_rescan(Backend::Fanotify);
}

#[test]
fn an_overflowed_inotify_queue_asks_for_a_rescan() {
    overflow_asks_for_a_rescan(Backend::Inotify);
}

#[test]
fn auto_chooses_fanotify_when_running_as_root() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        rustix::process::geteuid().is_root(),
        "the tests run as root (.ci/run)"
    );
    let w = Watcher::new(dir.path(), None).expect("watcher");
    assert_eq!(w.backend(), Backend::Fanotify);
}
