//! openat2-based resolution refuses every way out of the root.

use mover::beneath::{open_dir, open_file};
use rustix::fs::{Mode, OFlags};
use std::os::fd::AsFd;

#[test]
fn resolution_never_leaves_the_root() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(t.path().join("outside"), b"x").unwrap();
    std::os::unix::fs::symlink("../../outside", root.join("a/escape")).unwrap();
    std::os::unix::fs::symlink(".", root.join("a/self")).unwrap();
    let fd = rustix::fs::open(&root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    let r = fd.as_fd();
    for p in [
        &b"../outside"[..],
        b"a/../../outside",
        b"/etc/passwd",
        b"a/escape",
        b"a/self/escape",
    ] {
        assert!(
            open_file(r, p, OFlags::RDONLY, Mode::empty()).is_err(),
            "{:?} resolved",
            String::from_utf8_lossy(p)
        );
    }
    assert!(
        open_dir(r, b"a/self").is_err(),
        "symlinked directory followed"
    );
    assert!(open_dir(r, b"a").is_ok());
}

#[test]
fn paths_longer_than_path_max_resolve_in_chunks() {
    let t = tempfile::tempdir().unwrap();
    let mut fd =
        rustix::fs::open(t.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    let root =
        rustix::fs::open(t.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    let mut rel = Vec::new();
    for i in 0..50 {
        let name = format!("{:0>150}", i);
        rustix::fs::mkdirat(&fd, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        fd = rustix::fs::openat(
            &fd,
            name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
    }
    assert!(rel.len() > 7000);
    assert!(open_dir(root.as_fd(), &rel).is_ok());
}
