//! Jobs that cost what changed, on real trees and real sockets: a rerun with nothing changed
//! touches no target inode and sends kilobytes; the entry list travels as a delta only against
//! the very list the receiver keeps; the verification of what a job changed catches a change
//! made behind the receiver's back there, and a full verification or a scrub anywhere.

mod common;

use common::*;
use mover::gen::{generate, TreeSpec};
use mover::receiver::{ReceiveOptions, Verify};
use mover::SessionReport;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A receiver serving sessions into `root` with the given verification.
fn serve(root: &Path, verify: Verify) -> (SocketAddr, std::sync::mpsc::Receiver<SessionReport>) {
    let (addr, rx, _) = serve_with(ReceiveOptions {
        root: root.to_path_buf(),
        insecure_plaintext: true,
        policy: every_kind(),
        verify,
        ..Default::default()
    });
    (addr, rx)
}

/// A copy of `from` at `to`, as `cp -a` makes it.
fn copy_tree(from: &Path, to: &Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// Inode number, ctime and mtime of every entry of a tree (by path), through the same walk
/// the data plane uses (it reaches paths longer than PATH_MAX and skips `.mover-state`).
fn inodes(root: &Path) -> BTreeMap<Vec<u8>, (u64, i64, u32, i64, u32)> {
    let w = mover::tree::walk::walk(root, true).unwrap();
    w.paths
        .iter()
        .zip(w.ids.iter().zip(&w.entries))
        .map(|(p, (id, e))| {
            (
                p.clone(),
                (
                    id.ino,
                    id.ctime_sec,
                    id.ctime_nsec,
                    e.meta.mtime_sec,
                    e.meta.mtime_nsec,
                ),
            )
        })
        .collect()
}

/// Where the generator put directory `name` (its directories nest at random).
fn find_dir(root: &Path, name: &str) -> std::path::PathBuf {
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        if d.file_name().is_some_and(|n| n == name) {
            return d;
        }
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() && e.file_name() != ".mover-state" {
                todo.push(e.path());
            }
        }
    }
    panic!("no directory {name} under {}", root.display())
}

/// A TCP proxy on 127.0.0.1 that counts every byte it forwards, both ways.
struct CountingProxy {
    addr: SocketAddr,
    bytes: Arc<AtomicU64>,
}

impl CountingProxy {
    fn start(target: SocketAddr) -> CountingProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let bytes = Arc::new(AtomicU64::new(0));
        let b = bytes.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(client) = c else { break };
                let Ok(server) = TcpStream::connect(target) else {
                    break;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (b1, b2) = (b.clone(), b.clone());
                std::thread::spawn(move || pump(client, server, b1));
                std::thread::spawn(move || pump(s2, c2, b2));
            }
        });
        CountingProxy { addr, bytes }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, count: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        count.fetch_add(n as u64, Ordering::SeqCst);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

#[test]
fn a_noop_job_changes_no_target_inode_ctime() {
    let (_t, d) = dirs_in_memory();
    generate(
        &d.src,
        &TreeSpec {
            small_files: 1500,
            small_max: 512,
            large_files: 2,
            large_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let (addr, reports) = serve(&d.dst, Verify::Changed);
    send_state(&d.src, addr, &d.state).unwrap();
    assert!(reports.recv().unwrap().ok);
    // The second job starts from a recovery point whose list came from the first.
    send_state(&d.src, addr, &d.state).unwrap();
    assert!(reports.recv().unwrap().ok);
    let before = inodes(&d.dst);
    // ctime has nanoseconds, but a coarse clock could hide a change made in the same tick.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let rep = send_state(&d.src, addr, &d.state).unwrap();
    let r = reports.recv().unwrap();
    assert!(r.ok, "{:?}", r.error);
    assert!(rep.delta_list, "the list went as a delta");
    assert_eq!((rep.list_changed, rep.files, rep.bytes), (0, 0, 0));
    assert!(!r.full_verify);
    assert_eq!(r.verified_entries, 1, "only the root was looked at");
    let after = inodes(&d.dst);
    assert_eq!(before.len(), after.len());
    for (p, a) in &before {
        assert_eq!(
            after.get(p),
            Some(a),
            "{} changed (ino, ctime, mtime)",
            String::from_utf8_lossy(p)
        );
    }
    assert_same_tree(&d.src, &d.dst);
}

/// Scratch directories in memory where there is a tmpfs: creating and removing 20,000 files
/// on a VM's disk takes longer than the test itself.
fn dirs_in_memory() -> (tempfile::TempDir, Dirs) {
    let shm = Path::new("/dev/shm");
    let t = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let d = Dirs {
        src: t.path().join("src"),
        dst: t.path().join("dst"),
        state: t.path().join("state"),
    };
    std::fs::create_dir_all(&d.dst).unwrap();
    (t, d)
}

struct Dirs {
    src: std::path::PathBuf,
    dst: std::path::PathBuf,
    state: std::path::PathBuf,
}

#[test]
fn a_noop_job_sends_kilobytes_not_the_tree() {
    let (_t, d) = dirs_in_memory();
    generate(
        &d.src,
        &TreeSpec {
            small_files: 20_000,
            small_max: 64,
            large_files: 0,
            extras: false,
            ..Default::default()
        },
    )
    .unwrap();
    let (addr, reports) = serve(&d.dst, Verify::Changed);
    let first = send_state(&d.src, addr, &d.state).unwrap();
    assert!(reports.recv().unwrap().ok);
    assert!(first.wire_bytes > 1 << 20, "the first list is the tree");
    let proxy = CountingProxy::start(addr);
    let rep = send_state(&d.src, proxy.addr, &d.state).unwrap();
    let r = reports.recv().unwrap();
    assert!(r.ok, "{:?}", r.error);
    assert!(rep.delta_list);
    let wire = proxy.bytes.load(Ordering::SeqCst);
    eprintln!(
        "a no-op over {} entries: {wire} bytes on the wire",
        rep.entries
    );
    assert!(
        wire <= 64 * 1024,
        "a no-op over {} entries took {wire} bytes on the wire",
        rep.entries
    );
    // A few changes cost about their own entries.
    std::fs::write(find_dir(&d.src, "dir003").join("added.dat"), b"new").unwrap();
    let f = std::fs::read_dir(find_dir(&d.src, "dir001"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
    let before = proxy.bytes.load(Ordering::SeqCst);
    let rep = send_state(&d.src, proxy.addr, &d.state).unwrap();
    assert!(reports.recv().unwrap().ok);
    let wire = proxy.bytes.load(Ordering::SeqCst) - before;
    // The new file, its directory, the changed file and the directory it is in (mtime).
    assert!(
        rep.list_changed <= 4,
        "{} entries changed",
        rep.list_changed
    );
    assert!(wire <= 64 * 1024 + 100 * rep.list_changed, "{wire} bytes");
    assert_same_tree(&d.src, &d.dst);
}

#[test]
fn the_list_goes_whole_when_the_base_does_not_match() {
    let (_t, d) = dirs_in_memory();
    // No extras: `cp -a` cannot copy their path longer than PATH_MAX.
    let spec = TreeSpec {
        small_files: 300,
        large_files: 1,
        large_size: 1 << 20,
        extras: false,
        ..Default::default()
    };
    generate(&d.src, &spec).unwrap();
    let (addr, reports) = serve(&d.dst, Verify::Changed);
    send_state(&d.src, addr, &d.state).unwrap();
    assert!(reports.recv().unwrap().ok);
    let old_state = d.state.with_extension("old");
    copy_tree(&d.state, &old_state);
    let old_dst = d.dst.with_extension("old");
    copy_tree(&d.dst, &old_dst);

    // The sender's manifest names an older recovery point than the receiver's.
    std::fs::write(d.src.join("dir000/one.dat"), b"one").unwrap();
    assert!(send_state(&d.src, addr, &d.state).unwrap().delta_list);
    assert!(reports.recv().unwrap().ok);
    std::fs::write(d.src.join("dir000/two.dat"), b"two").unwrap();
    let stale = old_state.join("..").join("stale-state");
    copy_tree(&old_state, &stale);
    let rep = send_state(&d.src, addr, &stale).unwrap();
    assert!(reports.recv().unwrap().ok);
    assert!(
        !rep.delta_list && !rep.incremental,
        "a stale manifest is no base"
    );
    assert_same_tree(&d.src, &d.dst);

    // The receiver was rolled back to an older recovery point (target and state together).
    let (addr2, reports2) = serve(&old_dst, Verify::Changed);
    let rep = send_state(&d.src, addr2, &d.state).unwrap();
    assert!(reports2.recv().unwrap().ok);
    assert!(!rep.delta_list, "the receiver is at another recovery point");
    assert_same_tree(&d.src, &old_dst);

    // Same recovery point, but the receiver no longer has its list: it says so.
    let rp_list = std::fs::read_dir(old_dst.join(".mover-state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "entries"))
        .unwrap();
    std::fs::remove_file(rp_list).unwrap();
    std::fs::write(d.src.join("dir000/three.dat"), b"three").unwrap();
    let rep = send_state(&d.src, addr2, &d.state).unwrap();
    let r = reports2.recv().unwrap();
    assert!(r.ok, "{:?}", r.error);
    assert!(
        rep.incremental && !rep.delta_list,
        "no list kept: the whole list"
    );
    assert!(r.full_verify, "nothing to compare with: everything checked");
    assert_same_tree(&d.src, &old_dst);
    // And the next job has a base again.
    std::fs::write(d.src.join("dir000/four.dat"), b"four").unwrap();
    assert!(send_state(&d.src, addr2, &d.state).unwrap().delta_list);
    assert!(reports2.recv().unwrap().ok);
    assert_same_tree(&d.src, &old_dst);
}

/// A file of the target's directory `dir` changed behind the receiver's back (its mode).
fn tamper(dst: &Path, dir: &str) -> std::path::PathBuf {
    let f = std::fs::read_dir(find_dir(dst, dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .min()
        .unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o604)).unwrap();
    f
}

#[test]
fn the_verification_of_a_job_catches_a_change_behind_its_back_in_a_directory_it_changed() {
    let (_t, d) = dirs_in_memory();
    generate(&d.src, &TreeSpec::default()).unwrap();
    let (addr, reports) = serve(&d.dst, Verify::Changed);
    send_state(&d.src, addr, &d.state).unwrap();
    assert!(reports.recv().unwrap().ok);
    let f = tamper(&d.dst, "dir002");
    std::fs::write(find_dir(&d.src, "dir002").join("new.dat"), b"new").unwrap();
    let e = send_state(&d.src, addr, &d.state).unwrap_err();
    let r = reports.recv().unwrap();
    assert!(!r.ok);
    let name = f.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        e.to_string().contains(&name) && e.to_string().contains("differs"),
        "{e}"
    );
    // The next job resumes that one, compares every entry with the disk and repairs it.
    let rep = send_state(&d.src, addr, &d.state).unwrap();
    let r = reports.recv().unwrap();
    assert!(r.ok && r.resumed && r.full_verify, "{r:?}");
    assert!(rep.delta_list);
    assert_same_tree(&d.src, &d.dst);
}

#[test]
fn a_full_verification_and_a_scrub_catch_a_change_in_a_directory_no_job_changed() {
    let (_t, d) = dirs_in_memory();
    let spec = TreeSpec {
        extras: false,
        ..Default::default()
    };
    generate(&d.src, &spec).unwrap();
    let (addr, reports) = serve(&d.dst, Verify::Changed);
    send_state(&d.src, addr, &d.state).unwrap();
    assert!(reports.recv().unwrap().ok);
    // Neither directory holds the other (the generator nests them at random).
    let (a, b) = (find_dir(&d.dst, "dir002"), find_dir(&d.src, "dir007"));
    let b_rel = b.strip_prefix(&d.src).unwrap();
    assert!(!b_rel.starts_with(a.strip_prefix(&d.dst).unwrap()));
    let f = tamper(&d.dst, "dir002");
    std::fs::write(b.join("new.dat"), b"new").unwrap();
    // A job checks what it changed: dir002 is none of it.
    send_state(&d.src, addr, &d.state).unwrap();
    assert!(reports.recv().unwrap().ok);
    assert_eq!(
        f.metadata().unwrap().permissions().mode() & 0o7777,
        0o604,
        "left alone"
    );
    drop(reports);

    // A scrub of the target at rest finds it (the receiver above still holds the target's
    // lock: the scrub runs on a copy).
    let copy = d.dst.with_extension("copy");
    copy_tree(&d.dst, &copy);
    let s = mover::receiver::scrub_root(&copy).unwrap().unwrap();
    let name = f.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        !s.ok && s.difference.as_deref().unwrap().contains(&name),
        "{s:?}"
    );
    // ... and the next job, after that failed scrub, compares everything and repairs it.
    let (addr_c, reports_c) = serve(&copy, Verify::Changed);
    send_state(&d.src, addr_c, &d.state.with_extension("fresh")).unwrap();
    let r = reports_c.recv().unwrap();
    assert!(r.ok && r.full_verify, "{r:?}");
    assert_same_tree(&d.src, &copy);

    // A receiver verifying everything catches (and repairs) it too. The first receiver still
    // serves (and locks) the original target: this one gets a copy of it as it was.
    let again = d.dst.with_extension("again");
    copy_tree(&d.dst, &again);
    let (addr_f, reports_f) = serve(&again, Verify::Full);
    std::fs::write(b.join("newer.dat"), b"newer").unwrap();
    send_state(&d.src, addr_f, &d.state).unwrap();
    let r = reports_f.recv().unwrap();
    assert!(r.ok && r.full_verify, "{r:?}");
    assert_same_tree(&d.src, &again);
    let _ = addr;
}

#[test]
fn a_serving_receiver_scrubs_its_target_between_sessions_and_the_next_job_repairs_it() {
    let (_t, d) = dirs_in_memory();
    generate(&d.src, &TreeSpec::default()).unwrap();
    let (addr, reports, status) = serve_with(ReceiveOptions {
        root: d.dst.clone(),
        insecure_plaintext: true,
        policy: every_kind(),
        scrub_every: Some(std::time::Duration::from_millis(200)),
        ..Default::default()
    });
    send_state(&d.src, addr, &d.state).unwrap();
    assert!(reports.recv().unwrap().ok);
    // Scrubs between sessions find the target as committed...
    let wait_for = |want_ok: bool| {
        for _ in 0..200 {
            if let Some(s) = status.last().filter(|s| s.ok == want_ok) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "no scrub with ok={want_ok} within 10 s: {:?}",
            status.last()
        );
    };
    assert!(wait_for(true).entries > 1);
    // ... and then a change made behind the receiver's back, by name.
    let f = tamper(&d.dst, "dir002");
    let bad = wait_for(false);
    let name = f.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        bad.difference.as_deref().unwrap_or("").contains(&name),
        "{bad:?}"
    );
    // The next job, though nothing changed at the source, compares everything and repairs.
    send_state(&d.src, addr, &d.state).unwrap();
    let r = reports.recv().unwrap();
    assert!(r.ok && r.full_verify, "{r:?}");
    assert_same_tree(&d.src, &d.dst);
    assert!(wait_for(true).ok);
}

/// A job that changes only a file's mode (a mode change that needs no stat: the recovery
/// point says what the target holds) must not follow a symlink planted at that path since.
#[test]
fn a_mode_change_does_not_follow_a_symlink_planted_where_the_file_was() {
    // A regular file's mode is set in the apply phase, a special file's when the job
    // finishes: one of each, each in a target of its own.
    for name in ["notes", "fifo"] {
        let (t, d) = dirs_in_memory();
        std::fs::create_dir_all(&d.src).unwrap();
        let planted = d.src.join(name);
        if name == "fifo" {
            let made = std::process::Command::new("mkfifo")
                .arg(&planted)
                .status()
                .unwrap();
            assert!(made.success());
        } else {
            std::fs::write(&planted, b"notes").unwrap();
        }
        let (addr, reports) = serve(&d.dst, Verify::Changed);
        send_state(&d.src, addr, &d.state).unwrap();
        assert!(reports.recv().unwrap().ok);

        // Outside the root: what the planted link names.
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"secret").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(d.dst.join(name)).unwrap();
        std::os::unix::fs::symlink(&victim, d.dst.join(name)).unwrap();
        // Mode only: same size and mtime, so the receiver sets the mode without a stat.
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o4777)).unwrap();
        let _ = send_state(&d.src, addr, &d.state);
        let r = reports.recv().unwrap();
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode, 0o600,
            "{name}: the mode went through a planted symlink"
        );
        assert!(
            !r.ok,
            "{name}: a job over a planted symlink reported success"
        );
        let why = r.error.unwrap_or_default();
        assert!(why.contains("symlink"), "{name}: {why}");
    }
}

/// A file written in place (a delta) must have no name but those the list gives it: its link
/// count alone would let a name outside the root, made on the target, be written through.
#[test]
fn a_delta_never_writes_through_a_hard_link_that_leads_out_of_the_root() {
    let (t, d) = dirs_in_memory();
    std::fs::create_dir_all(&d.src).unwrap();
    let mut data = vec![0u8; 1 << 20];
    mover::gen::Rng(5).fill(&mut data);
    std::fs::write(d.src.join("f"), &data).unwrap();
    std::fs::hard_link(d.src.join("f"), d.src.join("g")).unwrap();
    let (addr, reports) = serve(&d.dst, Verify::Changed);
    send_state(&d.src, addr, &d.state).unwrap();
    assert!(reports.recv().unwrap().ok);

    // On the target, g is gone and a name outside the root takes its place: f still has two.
    let victim = t.path().join("victim");
    std::fs::remove_file(d.dst.join("g")).unwrap();
    std::fs::hard_link(d.dst.join("f"), &victim).unwrap();
    let before = std::fs::read(&victim).unwrap();
    // A few blocks of f change in place on the source: the next job sends them as a delta.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.src.join("f"))
            .unwrap();
        f.write_all_at(&[0xAB; 8192], 4096 * 10).unwrap();
    }
    let _ = send_state(&d.src, addr, &d.state);
    let _ = reports.recv().unwrap();
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        before,
        "the delta was written through a name outside the root"
    );
}

/// A job that compares every entry with the disk (`--verify full`) changes the owner of a file
/// it keeps in place without the file's bytes: the recovery point's list vouches that the file
/// found is its own (receiver/grant.rs). One a local writer planted there is sent anew.
#[test]
fn a_full_verify_changes_owners_in_place_and_sends_only_a_planted_file() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test chowns files: run it as root"
    );
    let chown = |p: &Path, uid: u32| std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
    let (t, d) = dirs_in_memory();
    // Other users can reach it: else the receiver needs no guard against what they plant.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(&d.src).unwrap();
    for name in ["kept", "planted"] {
        std::fs::write(d.src.join(name), vec![name.len() as u8; 3000]).unwrap();
    }
    let (addr, reports) = serve(&d.dst, Verify::Full);
    send_state(&d.src, addr, &d.state).unwrap();
    assert!(reports.recv().unwrap().ok);
    for name in ["kept", "planted"] {
        chown(&d.src.join(name), 2000);
    }
    // A local writer's own file, with the size and mtime the quick check looks at.
    let at = d.dst.join("planted");
    let mtime = std::fs::metadata(&at).unwrap().modified().unwrap();
    std::fs::remove_file(&at).unwrap();
    std::fs::write(&at, vec![b'!'; 3000]).unwrap();
    chown(&at, 1000);
    set_modified(&at, mtime);
    send_state(&d.src, addr, &d.state).unwrap();
    let r = reports.recv().unwrap();
    assert!(r.ok && r.full_verify, "{r:?}");
    assert_eq!(r.files_received, 1, "only the planted file is sent: {r:?}");
    assert_same_tree(&d.src, &d.dst);
}
