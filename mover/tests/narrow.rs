//! Jobs whose walk is narrowed to the directories a watcher reported changed, against a real
//! receiver on loopback: the target must end equal to the source, as after a full walk.

mod common;

use common::*;
use mover::sender::{send, SendOptions, SendReport};
use mover::tree::narrow::ChangedDirs;
use mover::Progress;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

fn send_changed(src: &Path, addr: SocketAddr, state: &Path, dirs: &[&str]) -> SendReport {
    let opts = SendOptions {
        changed: Some(ChangedDirs {
            dirs: dirs.iter().map(|d| d.as_bytes().to_vec()).collect(),
        }),
        ..send_options(src, addr, 2, Some(state))
    };
    send(&opts, &Arc::new(Progress::default())).expect("narrowed send")
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
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("a/f1"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"more").unwrap();
    drop(f);
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
