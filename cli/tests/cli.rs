//! The `mover` binary as users and scripts meet it: help, JSON, exit codes, the demo, and an
//! strace of a send showing data moving through io_uring from pinned workers.

mod peers;

use assert_cmd::cargo::cargo_bin;
use assert_cmd::Command;
use peers::{peers, Peers};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

fn mover() -> Command {
    Command::cargo_bin("mover").unwrap()
}

fn start_receiver(root: &std::path::Path, p: &Peers) -> (Child, String) {
    start_receiver_with(root, p, &[], None)
}

#[test]
fn help_explains_commands_and_exit_codes() {
    let out = mover().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for w in ["receive", "send", "hw", "hash", "demo", "Exit codes"] {
        assert!(text.contains(w), "--help lacks {w}");
    }
}

#[test]
fn send_to_a_closed_port_fails_with_the_io_exit_code() {
    let t = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = peers(t.path());
    let out = mover()
        .arg("send")
        .arg(t.path())
        .args(["--to", &format!("127.0.0.1:{port}"), "--retries", "1"])
        .args(&p.send)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connecting") && err.contains("refused"),
        "{err}"
    );
}

#[test]
fn send_without_a_peer_to_trust_says_how_to_give_one() {
    let t = tempfile::tempdir().unwrap();
    let out = mover()
        .arg("send")
        .arg(t.path())
        .args(["--to", "127.0.0.1:9", "--identity"])
        .arg(t.path().join("id"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--peer-fingerprint") && err.contains("mover identity"),
        "{err}"
    );
}

#[test]
fn an_encrypted_receiver_refuses_a_sender_in_clear_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::write(src.join("a"), b"secret").unwrap();
    let p = peers(t.path());
    let (mut recv, addr) = start_receiver(&dst, &p);
    let out = mover()
        .arg("send")
        .arg(&src)
        .args(["--to", &addr, "--retries", "1", "--insecure-plaintext"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("accepts only encrypted sessions"), "{err}");
    let _ = recv.kill();
    let _ = recv.wait();
    let written: Vec<_> = std::fs::read_dir(&dst)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".mover-state")
        .collect();
    assert!(written.is_empty(), "{written:?}");
}

/// The data plane checks releases too: a sender of a release outside the receiver's window
/// is refused at the handshake with the versions, the rule and the way out; nothing is written.
#[test]
fn a_sender_of_an_incompatible_release_is_refused_at_the_handshake() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::write(src.join("a"), b"data").unwrap();
    let p = peers(t.path());
    let (mut recv, addr) = start_receiver(&dst, &p);
    let out = mover()
        .env(mover::wire::message::TEST_VERSION_ENV, "2.3.0")
        .arg("send")
        .arg(&src)
        .args(["--to", &addr, "--retries", "1"])
        .args(&p.send)
        .output()
        .unwrap();
    let _ = recv.kill();
    let _ = recv.wait();
    assert_eq!(out.status.code(), Some(4), "a refusal by the peer");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("incompatible peer version")
            && err.contains("the sender mover 2.3.0")
            && err.contains("upgrade the mover 0.1.0 side"),
        "{err}"
    );
    assert!(!dst.join("a").exists());
}

#[test]
fn send_json_reports_files_bytes_wire_bytes_and_seconds() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::write(src.join("a"), vec![1u8; 100_000]).unwrap();
    std::fs::write(src.join("b"), b"bee").unwrap();
    let p = peers(t.path());
    let (mut recv, addr) = start_receiver(&dst, &p);
    let out = mover()
        .arg("send")
        .arg(&src)
        .args(["--to", &addr, "--json"])
        .args(&p.send)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["files"], 2);
    assert_eq!(v["bytes"], 100_003);
    assert!(v["wire_bytes"].as_u64().unwrap() > 100_003);
    assert!(v["seconds"].as_f64().unwrap() > 0.0);
    // `--transport auto` (the default) on loopback: no RDMA port carries 127.0.0.1.
    assert_eq!(v["transport"], "tcp");
    assert!(
        recv.wait().unwrap().success(),
        "receiver --once exits 0 after a verified session"
    );
    assert_eq!(std::fs::read(dst.join("b")).unwrap(), b"bee");
}

#[test]
fn transport_rdma_where_rdma_cannot_work_is_a_clear_error_and_a_bad_value_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let rdma_host = cfg!(feature = "rdma")
        && std::fs::read_dir("/sys/class/infiniband").is_ok_and(|mut d| d.next().is_some());
    if rdma_host {
        // Here `--transport rdma` works (a receiver would listen): scripts/rdma-vm.sh tests it.
        eprintln!("this host has RDMA ports: only the bad value is checked here");
    } else {
        // Without the `rdma` feature, or with it but no active RDMA port: both commands
        // refuse before doing anything, naming why.
        let send = mover()
            .arg("send")
            .arg(t.path())
            .args(["--to", "127.0.0.1:9", "--insecure-plaintext"])
            .args(["--transport", "rdma"])
            .output()
            .unwrap();
        let recv = mover()
            .args(["receive", "--listen", "127.0.0.1:0", "--insecure-plaintext"])
            .args(["--transport", "rdma", "--root"])
            .arg(t.path())
            .output()
            .unwrap();
        for out in [send, recv] {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{err}");
            let why = err.contains("feature `rdma`") || err.contains("no active RDMA port");
            assert!(err.contains("RDMA was asked for") && why, "{err}");
        }
    }
    let bad = mover()
        .arg("send")
        .arg(t.path())
        .args(["--to", "127.0.0.1:9", "--transport", "udp"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("auto, tcp or rdma"));
}

#[test]
fn receive_refuses_a_root_that_is_not_a_directory() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("file"), b"x").unwrap();
    let out = mover()
        .args([
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--once",
            "--insecure-plaintext",
        ])
        .arg("--root")
        .arg(t.path().join("file"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("opening destination root"));
}

#[test]
fn hw_json_has_topology_and_a_plan() {
    let out = mover()
        .args(["hw", "--json", "--threads", "3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v["topology"]["cpus"].as_array().unwrap().is_empty());
    assert_eq!(v["plan"]["workers"].as_array().unwrap().len(), 3);
}

#[test]
fn demo_replicates_and_verifies_between_two_processes() {
    let t = tempfile::tempdir().unwrap();
    let out = mover()
        .args(["demo", "--files", "300", "--dir"])
        .arg(t.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("demo OK") && text.contains("incremental"));
}

/// strace must be installed (.ci/run installs it); this test fails loudly without it.
#[test]
fn strace_shows_data_moving_through_io_uring_from_pinned_workers() {
    let strace = which("strace")
        .expect("strace is required for this test: apt-get install strace (done by .ci/run)");
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let mut data = vec![0u8; 16 << 20];
    mover::gen::Rng(3).fill(&mut data);
    std::fs::write(src.join("big1"), &data).unwrap();
    std::fs::write(src.join("big2"), &data[..8 << 20]).unwrap();
    let p = peers(t.path());
    let (mut recv, addr) = start_receiver(&dst, &p);
    let log = t.path().join("strace.log");
    let st = std::process::Command::new(strace)
        // -ff: one file per thread, so concurrent syscalls are never split into
        // "<unfinished ...>" / "resumed" halves.
        .args(["-ff", "-qq", "-e", "trace=read,write,pread64,pwrite64,readv,writev,sendto,sendmsg,io_uring_enter,sched_setaffinity", "-o"])
        .arg(&log)
        .arg(cargo_bin("mover"))
        .arg("send")
        .arg(&src)
        .args(["--to", &addr, "--threads", "2"])
        .args(&p.send)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(recv.wait().unwrap().success());
    let mut log_text = String::new();
    for e in std::fs::read_dir(t.path()).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("strace.log.")
        {
            log_text.push_str(&std::fs::read_to_string(&p).unwrap());
        }
    }
    let log = log_text;
    let uring = log
        .lines()
        .filter(|l| l.contains("io_uring_enter("))
        .count();
    // A syscall that moved a data-sized block (>= 64 KiB) outside io_uring.
    let big_copies: Vec<&str> = log
        .lines()
        .filter(|l| {
            [
                "read(",
                "write(",
                "pread64(",
                "pwrite64(",
                "sendto(",
                "sendmsg(",
                "readv(",
                "writev(",
            ]
            .iter()
            .any(|c| l.contains(c))
        })
        .filter(|l| {
            l.rsplit(" = ")
                .next()
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<i64>().ok())
                .unwrap_or(0)
                >= 65536
        })
        .collect();
    assert!(
        uring >= 4,
        "expected the data to move through io_uring_enter, saw {uring} calls"
    );
    assert!(
        big_copies.is_empty(),
        "data moved outside io_uring: {big_copies:?}"
    );
    let pins: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sched_setaffinity(0,") && l.ends_with("= 0"))
        .collect();
    assert_eq!(pins.len(), 2, "one pin per worker: {pins:?}");
    for p in &pins {
        let mask = &p[p.find('[').unwrap() + 1..p.find(']').unwrap()];
        assert!(
            mask.parse::<u32>().is_ok(),
            "worker pinned to a single CPU, got [{mask}]"
        );
    }
}

/// `mover receive --once` with `extra` arguments, run under `wrap` (a command and its
/// arguments, e.g. strace) if given; returns the process and the address it listens on.
fn start_receiver_with(
    root: &std::path::Path,
    p: &Peers,
    extra: &[&str],
    wrap: Option<Vec<std::ffi::OsString>>,
) -> (Child, String) {
    let mut cmd = match &wrap {
        Some(w) => {
            let mut c = std::process::Command::new(&w[0]);
            c.args(&w[1..]).arg(cargo_bin("mover"));
            // cargo points the loader at every build script's output directory (the binary,
            // statically linked but for libc, needs none): its probes there grow with the build
            // tree, not with what a traced receiver does.
            c.env_remove("LD_LIBRARY_PATH");
            c
        }
        None => std::process::Command::new(cargo_bin("mover")),
    };
    let mut c = cmd
        .args([
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--once",
            "--json",
            "--root",
        ])
        .arg(root)
        .args(extra)
        .args(&p.receive)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    (c, v["listening"].as_str().unwrap().to_string())
}

fn send_json(
    src: &std::path::Path,
    addr: &str,
    state: &std::path::Path,
    p: &Peers,
) -> serde_json::Value {
    let out = mover()
        .arg("send")
        .arg(src)
        .args(["--to", addr, "--json", "--state"])
        .arg(state)
        .args(&p.send)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (inode, ctime) of every entry of a tree but the receiver's state.
/// Each target entry's path, inode and ctime (seconds, nanoseconds).
type Ctimes = Vec<(Vec<u8>, u64, i64, u32)>;

fn ctimes(root: &std::path::Path) -> Ctimes {
    let w = mover::tree::walk::walk(root, true).unwrap();
    w.paths
        .into_iter()
        .zip(w.ids)
        .map(|(p, id)| (p, id.ino, id.ctime_sec, id.ctime_nsec))
        .collect()
}

/// A tree of `files` small files synced twice (the second a no-op), then a third no-op job
/// with the receiver under `strace -c`: (stat calls, target ctimes before, the send's JSON).
fn noop_receiver_stats(
    strace: &std::path::Path,
    dir: &std::path::Path,
    files: usize,
) -> (u64, Ctimes, serde_json::Value) {
    let (src, dst, state) = (dir.join("src"), dir.join("dst"), dir.join("state"));
    std::fs::create_dir_all(&dst).unwrap();
    mover::gen::generate(
        &src,
        &mover::gen::TreeSpec {
            small_files: files,
            small_max: 256,
            large_files: 1,
            large_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let p = peers(dir);
    for _ in 0..2 {
        let (mut recv, addr) = start_receiver_with(&dst, &p, &[], None);
        send_json(&src, &addr, &state, &p);
        assert!(recv.wait().unwrap().success());
    }
    let before = ctimes(&dst);
    let log = dir.join("strace.txt");
    let wrap = vec![
        strace.as_os_str().to_owned(),
        "-f".into(),
        "-c".into(),
        "-e".into(),
        "trace=stat,lstat,fstat,newfstatat,statx".into(),
        "-o".into(),
        log.clone().into_os_string(),
    ];
    let (mut recv, addr) = start_receiver_with(&dst, &p, &[], Some(wrap));
    let v = send_json(&src, &addr, &state, &p);
    assert!(recv.wait().unwrap().success());
    assert_eq!(before, ctimes(&dst), "a no-op job changed a target inode");
    // `strace -c` ends with a total line: "100.00 <secs> <usecs/call> <calls> [errors] total".
    let summary = std::fs::read_to_string(&log).unwrap();
    let calls: u64 = summary
        .lines()
        .find(|l| l.trim_end().ends_with("total"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no total in the strace summary:\n{summary}"));
    (calls, before, v)
}

/// strace must be installed (.ci/run installs it); this test fails loudly without it.
#[test]
fn a_noop_rerun_changes_no_target_ctime_and_stats_no_target_entry() {
    let strace = which("strace")
        .expect("strace is required for this test: apt-get install strace (done by .ci/run)");
    let t = tempfile::tempdir().unwrap();
    // The process's own start (libraries, certificates, the state directory, and the machine's
    // topology from sysfs, which grows with its block devices: every loop device a test made)
    // costs the same for any tree: measured on a tree of one file, then on one of 2,000.
    let (base, _, _) = noop_receiver_stats(&strace, &t.path().join("one"), 1);
    let (calls, before, v) = noop_receiver_stats(&strace, &t.path().join("many"), 2000);
    assert_eq!(v["delta_list"], true);
    assert_eq!(v["files"], 0);
    // About 2,100 entries: none stat'ed (a few calls of slack for the process's own noise).
    assert!(
        calls <= base + 20,
        "a no-op receiver made {calls} stat calls for {} entries, {base} for one",
        before.len()
    );
}

#[test]
fn receive_scrub_and_verify_full_find_a_change_behind_the_receivers_back() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("state"),
    );
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::write(src.join("a/file"), b"in a").unwrap();
    std::fs::write(src.join("b/file"), b"in b").unwrap();
    let p = peers(t.path());
    let (mut recv, addr) = start_receiver_with(&dst, &p, &[], None);
    send_json(&src, &addr, &state, &p);
    assert!(recv.wait().unwrap().success());
    let scrub = || {
        mover()
            .args(["receive", "--scrub", "--json", "--root"])
            .arg(&dst)
            .output()
            .unwrap()
    };
    let out = scrub();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);

    std::fs::write(dst.join("a/file"), b"xx").unwrap();
    let out = scrub();
    assert_eq!(
        out.status.code(),
        Some(3),
        "a difference is a verification failure"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("a/file"));

    // A job into b leaves a/ alone unless told to verify everything, which repairs it.
    std::fs::write(src.join("b/new"), b"new").unwrap();
    std::fs::remove_file(dst.join(".mover-state/scrub")).unwrap();
    let (mut recv, addr) = start_receiver_with(&dst, &p, &[], None);
    send_json(&src, &addr, &state, &p);
    assert!(recv.wait().unwrap().success());
    assert_eq!(std::fs::read(dst.join("a/file")).unwrap(), b"xx");
    std::fs::write(src.join("b/newer"), b"newer").unwrap();
    let (mut recv, addr) = start_receiver_with(&dst, &p, &["--verify", "full"], None);
    send_json(&src, &addr, &state, &p);
    assert!(recv.wait().unwrap().success());
    assert_eq!(std::fs::read(dst.join("a/file")).unwrap(), b"in a");
    assert!(scrub().status.success());
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(cmd))
        .find(|p| p.exists())
}

/// Port 1 on loopback: nothing listens there, so the connection is refused at once.
#[test]
fn relationship_list_without_a_daemon_names_the_address_and_exits_10() {
    let out = mover()
        .args([
            "relationship",
            "list",
            "--api",
            "http://127.0.0.1:1",
            "--token",
            "x",
        ])
        .env_remove("MOVER_API")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(10), "{err}");
    assert!(
        err.contains("cannot reach the mover daemon at http://127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn relationship_list_without_a_token_says_how_to_give_one() {
    let out = mover()
        .args(["relationship", "list", "--api", "http://127.0.0.1:1"])
        .env_remove("MOVER_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(
        err.contains("--token") && err.contains("MOVER_TOKEN") && err.contains("admin.token"),
        "{err}"
    );
}

#[test]
fn hw_lists_rdma_devices_from_the_given_sysfs_root_and_plans_near_them() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    let put = |rel: &str, text: &str| {
        let p = r.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put("devices/system/cpu/cpu0/topology/core_id", "0\n");
    put("devices/system/node/node0/cpulist", "0\n");
    put("class/net/eth0/device/numa_node", "0\n");
    put("class/infiniband/rxe0/parent", "eth0\n");
    put("class/infiniband/rxe0/ports/1/state", "4: ACTIVE\n");
    put("class/infiniband/rxe0/ports/1/link_layer", "Ethernet\n");
    let out = mover()
        .args(["hw", "--json", "--threads", "1", "--sysfs"])
        .arg(r)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dev = &v["topology"]["rdma_devices"][0];
    assert_eq!(dev["name"], "rxe0");
    assert_eq!(dev["netdev"], "eth0");
    assert_eq!(dev["numa_node"], 0);
    assert_eq!(dev["ports"][0]["state"], "ACTIVE");
    assert_eq!(v["plan"]["workers"][0]["rdma"], "rxe0:1");
    let out = mover()
        .args(["hw", "--threads", "1", "--sysfs"])
        .arg(r)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rxe0") && text.contains("RDMA rxe0:1"),
        "{text}"
    );
}

/// A receiver that is not root cannot open its own exec-only file (mode 0111) for the checked
/// change of its set-id bits, nor its write-only file (0200) for the change that lets others
/// write it: a job that compares every entry with the disk sends each anew instead of failing
/// on that open.
#[test]
fn a_receiver_that_is_not_root_sends_anew_the_files_it_cannot_open_whose_identity_changes() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(
        std::fs::metadata("/proc/self").unwrap().uid(),
        0,
        "this test runs the receiver as nobody (65534) with setpriv: run it as root"
    );
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (src, dst, state) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("state"),
    );
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    std::os::unix::fs::chown(&dst, Some(65534), Some(65534)).unwrap();
    let tool = src.join("tool");
    std::fs::write(&tool, b"#!/bin/sh\necho tool\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o111)).unwrap();
    let drop = src.join("drop");
    std::fs::write(&drop, b"for anyone to write").unwrap();
    std::fs::set_permissions(&drop, std::fs::Permissions::from_mode(0o200)).unwrap();
    let p = peers(t.path());
    let ids = t.path().join("receiver-identity");
    for e in std::iter::once(ids.clone())
        .chain(std::fs::read_dir(&ids).unwrap().map(|e| e.unwrap().path()))
    {
        std::os::unix::fs::chown(&e, Some(65534), Some(65534)).unwrap();
    }
    let nobody: Vec<std::ffi::OsString> = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ]
    .iter()
    .map(Into::into)
    .collect();
    let (mut recv, addr) = start_receiver_with(&dst, &p, &["--allow-setuid"], Some(nobody.clone()));
    send_json(&src, &addr, &state, &p);
    assert!(recv.wait().unwrap().success());
    let at = dst.join("tool");
    assert_eq!(
        (mode(&at), std::fs::metadata(&at).unwrap().uid()),
        (0o111, 65534)
    );
    assert_eq!(mode(&dst.join("drop")), 0o200);

    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o4111)).unwrap();
    std::fs::set_permissions(&drop, std::fs::Permissions::from_mode(0o222)).unwrap();
    let extra = ["--allow-setuid", "--verify", "full"];
    let (mut recv, addr) = start_receiver_with(&dst, &p, &extra, Some(nobody.clone()));
    let v = send_json(&src, &addr, &state, &p);
    assert!(recv.wait().unwrap().success(), "{v}");
    assert_eq!(v["files"], 2, "both sent anew: {v}");
    let got = |name: &str| {
        (
            mode(&dst.join(name)),
            std::fs::read(dst.join(name)).unwrap(),
        )
    };
    let want = |p: &std::path::Path| (mode(p), std::fs::read(p).unwrap());
    assert_eq!((got("tool"), got("drop")), (want(&tool), want(&drop)));
    assert_eq!((mode(&tool), mode(&drop)), (0o4111, 0o222));

    // Back again, in a job that compares with its recovery point (not the disk): the same.
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o111)).unwrap();
    std::fs::set_permissions(&drop, std::fs::Permissions::from_mode(0o200)).unwrap();
    let (mut recv, addr) = start_receiver_with(&dst, &p, &["--allow-setuid"], Some(nobody));
    let v = send_json(&src, &addr, &state, &p);
    assert!(recv.wait().unwrap().success(), "{v}");
    assert_eq!(v["files"], 2, "both sent anew: {v}");
    assert_eq!((got("tool"), got("drop")), (want(&tool), want(&drop)));
}
