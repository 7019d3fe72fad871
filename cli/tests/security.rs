//! Regression tests of the control-plane holes a hostile probe found (issue 12): real `mover
//! daemon` processes on 127.0.0.1, hostile clients on other loopback addresses, real mounts.
//! Needs root (targets are protected with bind mounts; tests mount tmpfs and create devices).

mod node;

use node::{create, fill, need_root, run, s, stderr, synced, Node, Scratch};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// The per-mount options of the topmost mount at `p` ("ro,nosuid,nodev,noexec,relatime").
fn mount_options(p: &Path) -> Option<String> {
    let want = p.canonicalize().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (Path::new(f[4]) == want).then(|| f[5].to_string())
        })
        .next_back()
}

fn has_option(opts: &str, o: &str) -> bool {
    opts.split(',').any(|x| x == o)
}

/// Runs `cmd` as uid/gid 65534 (nobody): (success, stdout, stderr).
fn as_nobody(cmd: &str) -> (bool, String, String) {
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "sh",
            "-c",
            cmd,
        ])
        .output()
        .expect("setpriv (util-linux) runs commands as another user");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr(&out),
    )
}

/// A source tree with a setuid-root copy of `id` and the character device 1,3.
fn dangerous_source(src: &Path) {
    std::fs::create_dir_all(src).unwrap();
    std::fs::copy("/usr/bin/id", src.join("id")).unwrap();
    std::os::unix::fs::chown(src.join("id"), Some(0), Some(0)).unwrap();
    std::fs::set_permissions(src.join("id"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
}

/// Whether root can open the replicated device node for writing.
fn device_writable(p: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .and_then(|mut f| f.write_all(b"x"))
}

#[test]
fn a_replica_is_nosuid_nodev_noexec_unless_the_target_operator_opts_in() {
    need_root();
    let t = Scratch::new();
    let (a, b) = (
        Node::start(&t.path().join("a")),
        Node::start(&t.path().join("b")),
    );
    let src = t.path().join("src");
    dangerous_source(&src);
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let id = create(&a, &b, &src, &dst, &[]);
    b.cli_ok(&["relationship", "authorize", &id]);
    a.wait_for("source", &id, "initial sync", synced);
    // Not opted in: the data plane drops the setuid bit and the device, so nothing is left to
    // defend even once the replica is made writable; the mount flags hold meanwhile too.
    let mode = std::fs::metadata(dst.join("id")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o755, "the setuid bit was replicated");
    assert!(
        std::fs::symlink_metadata(dst.join("null")).is_err(),
        "the device node was replicated"
    );
    let opts = mount_options(&dst).unwrap();
    for o in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(has_option(&opts, o), "replica mounted {opts}, without {o}");
    }
    let (_, euid, err) = as_nobody(&format!("{}/id -u", s(&dst)));
    assert_ne!(euid, "0", "a replicated setuid binary ran as root ({err})");
    b.cli_ok(&["relationship", "make-writable", &id]);
    let (_, euid, err) = as_nobody(&format!("{}/id -u", s(&dst)));
    assert_ne!(
        euid, "0",
        "after failover, a replicated setuid binary ran as root ({err})"
    );
    let v = b.view("target", &id);
    assert_eq!(v["state"], "ended", "{v}");
    assert_eq!(
        v["replica_options"],
        json!({"allow_exec": false, "allow_setuid": false, "allow_devices": false}),
        "{v}"
    );

    // The target's operator may accept setuid binaries, devices and execution; the source
    // cannot ask for them.
    let dst2 = t.path().join("dst2");
    std::fs::create_dir(&dst2).unwrap();
    let id2 = create(&a, &b, &src, &dst2, &[]);
    b.cli_ok(&[
        "relationship",
        "authorize",
        &id2,
        "--allow-setuid",
        "--allow-devices",
        "--allow-exec",
    ]);
    a.wait_for("source", &id2, "initial sync", synced);
    let opts = mount_options(&dst2).unwrap();
    assert!(has_option(&opts, "ro"), "{opts}");
    for o in ["nosuid", "nodev", "noexec"] {
        assert!(!has_option(&opts, o), "opted in, yet mounted {opts}");
    }
    let (ok, euid, err) = as_nobody(&format!("{}/id -u", s(&dst2)));
    assert!(ok && euid == "0", "opted-in setuid binary: {euid} {err}");
    device_writable(&dst2.join("null")).unwrap();

    // A file system mounted nosuid,nodev,noexec,noatime keeps those flags on the replica, even
    // with every opt-in: protection never makes a target less strict than its file system.
    let fs = t.path().join("fs");
    std::fs::create_dir(&fs).unwrap();
    use rustix::mount::MountFlags as F;
    rustix::mount::mount(
        "tmpfs",
        &fs,
        "tmpfs",
        F::NOSUID | F::NODEV | F::NOEXEC | F::NOATIME,
        c"size=64m",
    )
    .unwrap();
    let dst3 = fs.join("dst");
    std::fs::create_dir(&dst3).unwrap();
    let id3 = create(&a, &b, &src, &dst3, &[]);
    b.cli_ok(&[
        "relationship",
        "authorize",
        &id3,
        "--allow-setuid",
        "--allow-devices",
        "--allow-exec",
    ]);
    a.wait_for("source", &id3, "initial sync", synced);
    let opts = mount_options(&dst3).unwrap();
    for o in ["ro", "nosuid", "nodev", "noexec", "noatime"] {
        assert!(has_option(&opts, o), "replica mounted {opts}, without {o}");
    }
}

#[test]
fn a_source_directory_swapped_for_a_symlink_or_another_directory_stops_the_relationship() {
    need_root();
    let t = Scratch::new();
    let (a, b) = (
        Node::start(&t.path().join("a")),
        Node::start(&t.path().join("b")),
    );
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    fill(&src, 3, 1000, 21);
    std::fs::create_dir(&dst).unwrap();
    let id = create(&a, &b, &src, &dst, &["--disabled"]);
    b.cli_ok(&["relationship", "authorize", &id]);
    a.cli_ok(&["relationship", "replicate", &id]);
    a.wait_for("source", &id, "initial sync", synced);

    // The source directory becomes a symlink to the daemon's data dir (key and tokens).
    let kept = t.path().join("src.orig");
    std::fs::rename(&src, &kept).unwrap();
    std::os::unix::fs::symlink(a.dir.join("data"), &src).unwrap();
    let _ = a.call(
        "POST",
        &format!("/v1/replication/source-relationships/{id}/replicate"),
        None,
    );
    std::thread::sleep(Duration::from_secs(5));
    for leaked in ["node.key", "admin.token", "mover.db"] {
        assert!(!dst.join(leaked).exists(), "{leaked} was replicated");
    }
    let v = a.wait_for("source", &id, "the relationship to stop", |v| {
        v["state"] == "path_changed"
    });
    assert!(
        v["path_error"].as_str().unwrap_or("").contains(s(&src)),
        "{v}"
    );
    // Stopped: no job starts on its own, a replicate request is refused, the CLI says why.
    let (code, e) = a.call(
        "POST",
        &format!("/v1/replication/source-relationships/{id}/replicate"),
        None,
    );
    assert_eq!(code, 409, "{e}");
    let table = a.cli_ok(&["status"]);
    assert!(table.as_str().unwrap().contains("path changed"), "{table}");

    // Another directory renamed into place is not the directory that was checked either.
    std::fs::remove_file(&src).unwrap();
    fill(&src, 1, 10, 22);
    std::fs::write(src.join("secret"), b"not this one").unwrap();
    let (code, e) = a.call(
        "POST",
        &format!("/v1/replication/source-relationships/{id}/replicate"),
        None,
    );
    assert_eq!(code, 409, "{e}");
    assert!(!dst.join("secret").exists());

    // The original directory back in place: replication goes on.
    std::fs::rename(&src, t.path().join("other")).unwrap();
    std::fs::rename(&kept, &src).unwrap();
    std::fs::write(src.join("later"), b"after the fix").unwrap();
    let (code, e) = a.call(
        "POST",
        &format!("/v1/replication/source-relationships/{id}/replicate"),
        None,
    );
    assert_eq!(code, 202, "{e}");
    a.wait_for("source", &id, "replication to go on", |v| {
        synced(v) && dst.join("later").exists()
    });
    assert_eq!(a.view("source", &id)["path_error"], Value::Null);
}

#[test]
fn a_target_whose_parent_became_a_symlink_while_the_daemon_was_down_is_left_alone() {
    need_root();
    let t = Scratch::new();
    let (a, mut b) = (
        Node::start(&t.path().join("a")),
        Node::start(&t.path().join("b")),
    );
    let src = t.path().join("src");
    fill(&src, 3, 1000, 23);
    let parent = t.path().join("p");
    let dst = parent.join("dst");
    std::fs::create_dir_all(&dst).unwrap();
    let id = create(&a, &b, &src, &dst, &[]);
    b.cli_ok(&["relationship", "authorize", &id]);
    a.wait_for("source", &id, "initial sync", synced);

    // The target node goes down and reboots (its mounts are gone); meanwhile the target's
    // parent is replaced by a symlink to a tree holding an unrelated directory of that name.
    b.kill();
    node::unmount_under(&dst);
    node::unmount_under(&b.dir);
    let victim = t.path().join("other/dst");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("precious"), b"unrelated data").unwrap();
    std::fs::rename(&parent, t.path().join("p.orig")).unwrap();
    std::os::unix::fs::symlink(t.path().join("other"), &parent).unwrap();
    let (dir, listen, api) = (b.dir.clone(), b.listen, b.api);
    drop(b);
    let b = Node::start_on(&dir, listen, api);
    std::fs::write(src.join("more"), b"changed").unwrap();
    // Let the source try its continuous jobs (every 2 s) for a while.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        std::fs::read(victim.join("precious")).ok().as_deref(),
        Some(&b"unrelated data"[..]),
        "the unrelated directory was replicated over"
    );
    assert_eq!(
        mount_options(&victim),
        None,
        "the unrelated directory was mounted over"
    );
    let v = b.wait_for("target", &id, "the relationship to stop", |v| {
        v["state"] == "path_changed"
    });
    assert!(v["path_error"].is_string(), "{v}");
    std::fs::write(victim.join("still-writable"), b"yes").unwrap();
    assert!(!victim.join("more").exists());
    // Deleting it leaves the unrelated directory alone too.
    b.cli_ok(&["relationship", "delete", &id, "--role", "target"]);
    assert!(victim.join("precious").exists());
}

#[test]
fn source_paths_in_system_directories_are_refused_unless_configured() {
    need_root();
    let t = Scratch::new();
    let (a, b) = (
        Node::start(&t.path().join("a")),
        Node::start(&t.path().join("b")),
    );
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let path = "/v1/replication/source-relationships";
    let spec = |from: &str| {
        json!({"source_path": from, "target_address": "127.0.0.1", "target_port": b.listen,
               "target_path": s(&dst)})
    };
    for sys in ["/etc", "/root", "/proc", "/", "/usr/share", "/var/run"] {
        let (code, v) = a.call("POST", path, Some(&spec(sys)));
        assert_eq!(code, 400, "{sys}: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("allowed_source_roots"),
            "{sys}: {v}"
        );
    }
    assert_eq!(b.get("/v1/replication/target-relationships").1, json!([]));

    // An explicit list replaces the default: exactly what it names is allowed.
    let c = Node::start_configured(
        &t.path().join("c"),
        node::free_port(),
        node::free_port(),
        "allowed_source_roots = [\"/etc\"]\n",
    );
    let (code, v) = c.call("POST", path, Some(&spec("/etc")));
    assert_eq!(code, 201, "{v}");
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let (code, v) = c.call("POST", path, Some(&spec(s(&src))));
    assert_eq!(code, 400, "{v}");
}

/// A TCP connection to `to` from the loopback address `from` (another "host").
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType};
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    let local = SocketAddr::from((from, 0));
    rustix::net::bind(&fd, &local).unwrap();
    rustix::net::connect(&fd, &to).unwrap();
    TcpStream::from(fd)
}

/// Whether the server closed `c` within `wait` (a read sees EOF or a reset).
fn closed_within(mut c: &TcpStream, wait: Duration) -> bool {
    c.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 256];
    loop {
        match c.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_connections_on_the_peer_port_do_not_keep_genuine_peers_out() {
    need_root();
    let t = Scratch::new();
    let (a, b) = (
        Node::start(&t.path().join("a")),
        Node::start(&t.path().join("b")),
    );
    let peer: SocketAddr = ([127, 0, 0, 1], b.listen).into();
    // Idle sockets from one "host" and a few from many others: more than the old 64 slots.
    let mut idle: Vec<TcpStream> = (0..200)
        .map(|_| connect_from([127, 0, 0, 2], peer))
        .collect();
    for i in 0..8 {
        idle.push(connect_from([127, 0, 1, 10 + i], peer));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    fill(&src, 2, 100, 24);
    std::fs::create_dir(&dst).unwrap();
    let t0 = Instant::now();
    create(&a, &b, &src, &dst, &[]);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the proposal waited {:?} behind idle sockets",
        t0.elapsed()
    );

    // One address gets a bounded number of unauthenticated connections: beyond it, closed at
    // once.
    let flood: Vec<TcpStream> = (0..400)
        .map(|_| connect_from([127, 0, 0, 3], peer))
        .collect();
    let shut = flood
        .iter()
        .rev()
        .take(50)
        .filter(|c| closed_within(c, Duration::from_millis(200)))
        .count();
    assert!(
        shut > 0,
        "none of 400 idle connections from one address was refused"
    );

    // And an unauthenticated connection gets a bounded time in all (peek, TLS, request).
    let t0 = Instant::now();
    let last = idle.pop().unwrap();
    assert!(
        closed_within(&last, Duration::from_secs(15)),
        "an idle connection stayed open for {:?}",
        t0.elapsed()
    );
}

#[test]
fn the_api_closes_slow_and_idle_connections_and_bounds_how_many_are_open() {
    need_root();
    let t = Scratch::new();
    let a = Node::start(&t.path().join("a"));
    let api: SocketAddr = ([127, 0, 0, 1], a.api).into();

    // Slowloris: a request head that never ends, one header line a second.
    let mut slow = TcpStream::connect(api).unwrap();
    slow.write_all(b"GET /v1/node HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut cut = false;
    while t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_secs(1));
        if slow.write_all(b"X-Slow: 1\r\n").is_err() {
            cut = true;
            break;
        }
        slow.set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let mut b = [0u8; 64];
        match slow.read(&mut b) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            _ => {
                cut = true;
                break;
            }
        }
    }
    assert!(
        cut,
        "a slowloris request head was still being read after 20 s"
    );

    // Idle connections: beyond the cap closed at once, the rest once the head timeout passes.
    let idle: Vec<TcpStream> = (0..400).map(|_| TcpStream::connect(api).unwrap()).collect();
    let shut = idle
        .iter()
        .rev()
        .take(50)
        .filter(|c| closed_within(c, Duration::from_millis(200)))
        .count();
    assert!(shut > 0, "400 idle API connections were all kept open");
    std::thread::sleep(Duration::from_secs(12));
    let open = idle
        .iter()
        .filter(|c| !closed_within(c, Duration::from_millis(1)))
        .count();
    assert_eq!(open, 0, "idle API connections still open after 12 s");
    // The API still serves.
    assert_eq!(a.get("/v1/node").0, 200);
}

/// Jobs read the source through the descriptor the daemon checked (`/proc/self/fd/<n>`); the
/// snapshot provider the daemon picks (auto: btrfs for a subvolume) works through it, first and
/// incremental jobs alike.
#[test]
fn a_source_on_a_btrfs_subvolume_is_snapshotted_through_the_checked_descriptor() {
    need_root();
    let t = Scratch::new();
    let (a, b) = (
        Node::start(&t.path().join("a")),
        Node::start(&t.path().join("b")),
    );
    let img = t.path().join("btrfs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    run(std::process::Command::new("mkfs.btrfs").arg("-q").arg(&img));
    let fs = t.path().join("fs");
    std::fs::create_dir(&fs).unwrap();
    run(std::process::Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&fs));
    let src = fs.join("vol");
    run(std::process::Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(&src));
    fill(&src.join("d"), 8, 100_000, 25);
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let id = create(&a, &b, &src, &dst, &["--disabled"]);
    b.cli_ok(&["relationship", "authorize", &id]);
    a.cli_ok(&["relationship", "replicate", &id]);
    a.wait_for("source", &id, "initial sync", synced);
    let kept = || -> Vec<String> {
        std::fs::read_dir(src.join(".mover-state"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with("snap-"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = kept();
    assert_eq!(first.len(), 1, "no btrfs snapshot was taken: {first:?}");
    std::fs::write(src.join("d/f0003"), b"changed").unwrap();
    std::fs::write(src.join("added"), b"new").unwrap();
    a.cli_ok(&["relationship", "replicate", &id]);
    let v = a.wait_for("source", &id, "the incremental job", |v| {
        synced(v) && dst.join("added").exists()
    });
    assert!(
        v["last_attempt"]["message"]
            .as_str()
            .unwrap()
            .starts_with("completed: 2 files, 10 bytes"),
        "{v}"
    );
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst));
    let second = kept();
    assert!(
        second.len() == 1 && second != first,
        "{first:?} -> {second:?}"
    );
    node::unmount_under(&dst);
    node::unmount_under(&b.dir);
}

/// Bytes recorded by the tap, shared with its pump threads.
type Recorded = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// A proxy on 127.0.0.1 in front of `target`: every connection is forwarded, and what the
/// client sends on each (and both directions, all together) is recorded.
struct Tap {
    port: u16,
    all: Recorded,
    sent: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
}

impl Tap {
    fn start(target: u16) -> Tap {
        use std::sync::{Arc, Mutex};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let all: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sent: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let (a, s) = (all.clone(), sent.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(client) = c else { break };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    break;
                };
                let mine: Arc<Mutex<Vec<u8>>> = Arc::default();
                s.lock().unwrap().push(mine.clone());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (a1, a2) = (a.clone(), a.clone());
                std::thread::spawn(move || pump(client, server, a1, Some(mine)));
                std::thread::spawn(move || pump(s2, c2, a2, None));
            }
        });
        Tap { port, all, sent }
    }

    fn contains(&self, needle: &[u8]) -> bool {
        let all = self.all.lock().unwrap();
        all.windows(needle.len()).any(|w| w == needle)
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    all: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    mine: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        all.lock().unwrap().extend_from_slice(&buf[..n]);
        if let Some(m) = &mine {
            m.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// The frames of one data-plane connection as the sender sent them: (kind, flags, payload).
fn frames(mut b: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
        if b.len() < 16 + len {
            break;
        }
        out.push((b[0], b[1], b[16..16 + len].to_vec()));
        b = &b[16 + len..];
    }
    out
}

#[test]
fn a_daemon_job_puts_no_file_content_no_name_and_no_ticket_on_the_wire_in_clear() {
    need_root();
    const CANARY: &[u8] = b"CANARY-content-of-a-replicated-file-0123456789";
    let t = Scratch::new();
    let (a, b) = (
        Node::start(&t.path().join("a")),
        Node::start(&t.path().join("b")),
    );
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::write(src.join("canary-secret-name.txt"), CANARY.repeat(50)).unwrap();
    std::fs::write(src.join("dir/big"), CANARY.repeat(200_000)).unwrap();
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    // Every byte between the nodes (peer requests and the data plane) goes through the tap.
    let tap = Tap::start(b.listen);
    let port = tap.port.to_string();
    let v = a.cli_ok(&[
        "relationship",
        "create",
        "--source-path",
        s(&src),
        "--target-address",
        "127.0.0.1",
        "--target-port",
        &port,
        "--target-path",
        s(&dst),
        "--json",
    ]);
    let id = v["id"].as_str().unwrap().to_string();
    b.cli_ok(&["relationship", "authorize", &id]);
    a.wait_for("source", &id, "initial sync", synced);
    assert_eq!(node::tree_hash(&src), node::tree_hash(&dst));
    assert_eq!(a.view("source", &id)["data_plane"], "encrypted");

    assert!(
        tap.all.lock().unwrap().len() > 9_000_000,
        "the job's data went through the tap"
    );
    assert!(!tap.contains(&CANARY[..20]), "file content in clear");
    assert!(!tap.contains(b"canary-secret-name"), "a file name in clear");
    assert!(!tap.contains(b"ticket"), "a ticket answer in clear");
    // Connections are TLS (peer requests) or the data plane; on the data plane only the Hello
    // is in clear, it announces a sealed session, and every later frame is sealed.
    let conns = tap.sent.lock().unwrap().clone();
    let mut data_plane = 0;
    for c in conns {
        let bytes = c.lock().unwrap().clone();
        match bytes.first() {
            Some(0x16) => continue,
            Some(&k) if k == mover::receiver::DATA_PLANE_FIRST_BYTE => {}
            other => panic!("a connection that is neither TLS nor the data plane: {other:?}"),
        }
        data_plane += 1;
        let fs = frames(&bytes);
        let hello = mover::wire::message::Hello::decode(&fs[0].2).expect("a Hello first");
        assert_ne!(
            hello.capabilities & mover::wire::message::CAP_SEALED,
            0,
            "a data-plane session in clear"
        );
        assert!(fs.len() > 1);
        for (kind, flags, _) in &fs[1..] {
            assert_eq!(
                flags & 1,
                1,
                "a frame of kind {kind} in clear after the Hello"
            );
        }
    }
    assert!(
        data_plane >= 2,
        "the control and worker connections were seen"
    );
}

/// A daemon process killed when the test ends.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mover(args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("mover"));
    c.args(args);
    c
}

/// Starts a daemon serving its API over TLS with `tls` flags: (daemon, API address, token).
fn api_over_tls(data: &Path, tls: &[&str]) -> (Daemon, String, String) {
    let (listen, api) = (node::free_port(), node::free_port());
    let api_addr = format!("127.0.0.1:{api}");
    let child = mover(&["daemon", "--config", "/dev/null"])
        .args(tls)
        .arg("--data-dir")
        .arg(data)
        .args([
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--api",
            &api_addr,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon(child);
    let t0 = Instant::now();
    while !(data.join("admin.token").exists() && TcpStream::connect(&api_addr).is_ok()) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "daemon did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    (daemon, api_addr, token.to_string())
}

#[test]
fn the_api_is_served_over_tls_to_clients_that_trust_the_node_certificate_and_refused_in_clear_off_loopback(
) {
    let t = Scratch::new();
    let data = t.path().join("data");
    let (_daemon, api_addr, token) = api_over_tls(&data, &["--api-tls"]);
    let cert = data.join("node.crt");
    let https = format!("https://{api_addr}");
    let node = |url: &str, cert: Option<&Path>| {
        let mut c = mover(&["node", "--json", "--api", url]);
        c.env("MOVER_TOKEN", &token).env_remove("MOVER_API_CERT");
        if let Some(cert) = cert {
            c.arg("--api-cert").arg(cert);
        }
        c.output().unwrap()
    };

    // A client trusting the node's certificate gets the node's answer.
    let out = node(&https, Some(&cert));
    assert!(
        out.status.success(),
        "mover node over https: {}",
        stderr(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("sha256:")),
        "{v}"
    );

    // Not without a certificate to trust, nor trusting another one, nor in clear.
    let out = node(&https, None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--api-cert"), "{}", stderr(&out));
    let other = t.path().join("other");
    run(mover(&["identity", "--identity"]).arg(&other));
    let out = node(&https, Some(&other.join("node.crt")));
    assert!(
        !out.status.success(),
        "a certificate the daemon does not hold was accepted"
    );
    let out = node(&format!("http://{api_addr}"), None);
    assert!(!out.status.success(), "the TLS API answered plain HTTP");

    // A raw plaintext request gets no HTTP answer: the token would have gone nowhere readable.
    let mut raw = TcpStream::connect(&api_addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = raw.write_all(
        format!(
            "GET /v1/node HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            token
        )
        .as_bytes(),
    );
    let mut b = Vec::new();
    let _ = raw.read_to_end(&mut b);
    assert!(!b.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&b));

    // Off loopback, plain HTTP is refused before anything listens.
    let out = mover(&["daemon", "--config", "/dev/null", "--api", "0.0.0.0:1"])
        .arg("--data-dir")
        .arg(t.path().join("refused"))
        .args(["--listen", &format!("127.0.0.1:{}", node::free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("plain HTTP off loopback"),
        "{}",
        stderr(&out)
    );

    // With certificate files of the operator's choosing, clients trust that certificate.
    let (_d2, api2, token2) = api_over_tls(
        &t.path().join("data2"),
        &[
            "--api-cert",
            s(&other.join("node.crt")),
            "--api-key",
            s(&other.join("node.key")),
        ],
    );
    let as_client = |cert: &Path| {
        mover(&[
            "node",
            "--json",
            "--api",
            &format!("https://{api2}"),
            "--api-cert",
        ])
        .arg(cert)
        .env("MOVER_TOKEN", &token2)
        .output()
        .unwrap()
    };
    let out = as_client(&other.join("node.crt"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(t.path().join("data2/node.crt").exists());
    let out = as_client(&t.path().join("data2/node.crt"));
    assert!(
        !out.status.success(),
        "the API presented the node certificate, not the one given"
    );
}
