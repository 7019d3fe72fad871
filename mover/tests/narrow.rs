//! Jobs whose walk is narrowed to the directories a watcher reported changed, against a real
//! receiver on loopback: the target must end equal to the source, as after a full walk.

mod common;

use common::*;
use mover::sender::{send, ManifestCache, SendOptions, SendReport};
use mover::tree::narrow::ChangedDirs;
use mover::Progress;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

fn send_changed(src: &Path, addr: SocketAddr, state: &Path, dirs: &[&str]) -> SendReport {
    send_cached(src, addr, state, Some(dirs), None)
}

fn send_cached(
    src: &Path,
    addr: SocketAddr,
    state: &Path,
    dirs: Option<&[&str]>,
    cache: Option<&Arc<ManifestCache>>,
) -> SendReport {
    let opts = SendOptions {
        changed: dirs.map(|dirs| ChangedDirs {
            dirs: dirs.iter().map(|d| d.as_bytes().to_vec()).collect(),
        }),
        cache: cache.cloned(),
        ..send_options(src, addr, 2, Some(state))
    };
    send(&opts, &Arc::new(Progress::default())).expect("send")
}

fn append(p: &Path, what: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
    std::io::Write::write_all(&mut f, what).unwrap();
}

#[test]
fn jobs_with_a_manifest_cache_stay_incremental_and_leave_it_on_disk() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("st"),
    );
    for d in ["a", "b"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
        for f in 0..10 {
            std::fs::write(src.join(d).join(format!("f{f}")), vec![b'x'; 100 + f]).unwrap();
        }
    }
    std::fs::write(src.join("b/big"), vec![3u8; 1 << 20]).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let (addr, reports) = start_serving(&dst);
    let cache = Arc::new(ManifestCache::new());
    let first = send_cached(&src, addr, &state, None, Some(&cache));
    assert!(reports.recv().unwrap().ok && !first.incremental);
    for round in 0..4u8 {
        append(&src.join("a/f1"), &[round]);
        let dirs: &[&str] = if round % 2 == 0 { &["a"] } else { &[] };
        // Odd rounds walk the whole tree, from the cached manifest all the same.
        let dirs = (round % 2 == 0).then_some(dirs);
        let rep = send_cached(&src, addr, &state, dirs, Some(&cache));
        let r = reports.recv().unwrap();
        assert!(r.ok, "round {round}: {:?}", r.error);
        assert_same_tree(&src, &dst);
        assert!(rep.incremental && rep.delta_list, "round {round}");
        assert_eq!(rep.walk_narrowed, round % 2 == 0, "round {round}");
        assert_eq!(rep.files, 1, "round {round}");
    }
    // A job that changed nothing (only a new head), then the cache goes: the disk has it all.
    let rep = send_cached(&src, addr, &state, Some(&[]), Some(&cache));
    assert!(reports.recv().unwrap().ok && rep.walk_narrowed && rep.files == 0);
    drop(cache);
    append(&src.join("b/f2"), b"!");
    let rep = send_state(&src, addr, &state).unwrap();
    assert!(reports.recv().unwrap().ok);
    assert_same_tree(&src, &dst);
    assert!(rep.incremental && rep.delta_list && rep.files == 1);
}

#[test]
fn narrowed_jobs_replicate_the_changed_and_created_files() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("st"),
    );
    for d in ["a", "b", "c/deep"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
        for f in 0..20 {
            std::fs::write(src.join(d).join(format!("f{f}")), vec![b'x'; 100 + f]).unwrap();
        }
    }
    // A large file, so the job also sends a block delta of a narrowed entry.
    std::fs::write(src.join("a/big"), vec![7u8; 1 << 20]).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let (addr, reports) = start_serving(&dst);
    let first = send_state(&src, addr, &state).unwrap();
    assert!(!first.walk_narrowed && !first.incremental);
    assert!(reports.recv().unwrap().ok);

    // One file changed, one created: their directories, and the root (b's listing changed, so
    // b's own times did).
    append(&src.join("a/f1"), b"more");
    std::fs::write(src.join("b/new"), b"new file").unwrap();
    let rep = send_changed(&src, addr, &state, &["", "a", "b"]);
    let r = reports.recv().unwrap();
    assert!(r.ok, "{:?}", r.error);
    assert_same_tree(&src, &dst);
    assert!(rep.walk_narrowed && rep.incremental && rep.delta_list);
    assert_eq!(rep.files, 2, "the changed and the created file");
    // The root's 3 children and a's and b's: c's subtree is copied.
    assert_eq!(rep.walk_fresh, 1 + 3 + 21 + 21);

    // Only a file's data changed: its directory alone is read.
    std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("a/big"))
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 4096))
        .unwrap();
    let rep = send_changed(&src, addr, &state, &["a"]);
    assert!(reports.recv().unwrap().ok);
    assert_same_tree(&src, &dst);
    assert!(rep.walk_narrowed);
    assert_eq!(rep.walk_fresh, 1 + 21, "the root and a's children");
    assert_eq!((rep.files, rep.files_delta), (1, 1));

    // No manifest of the receiver's recovery point: the whole tree is walked.
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(src.join("c/deep/f0"), b"other").unwrap();
    let rep = send_changed(&src, addr, &state, &["c/deep"]);
    assert!(reports.recv().unwrap().ok);
    assert_same_tree(&src, &dst);
    assert!(!rep.walk_narrowed && rep.walk_fresh == rep.entries);
}
