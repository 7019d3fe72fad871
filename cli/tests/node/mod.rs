//! Test harness: real `mover daemon` processes on 127.0.0.1, driven through the REST API and
//! the `mover` CLI. Each node gets its own data dir and free ports; dropping a node SIGKILLs it
//! and removes the mounts it left under the test's directory.

#![allow(dead_code)]

pub mod etcd;
pub mod netns;

use assert_cmd::cargo::cargo_bin;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(60);

/// How often `eventually` looks again.
const POLL: Duration = Duration::from_millis(100);

/// Polls `probe` until it gives a value, for at most `within`; then fails saying that `what`
/// did not happen, with what the last look saw (`probe`'s `Err`).
pub fn eventually<T>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let t0 = Instant::now();
    loop {
        match probe() {
            Ok(v) => return v,
            Err(seen) => assert!(
                t0.elapsed() < within,
                "{what}: not within {within:?}:\n{seen}"
            ),
        }
        std::thread::sleep(POLL);
    }
}

/// A path as the CLI takes it.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The last job succeeded and none runs.
pub fn synced(v: &Value) -> bool {
    v["last_attempt"]["ok"] == true && v["job"].is_null()
}

/// Runs a setup command that must succeed (mkfs, mount, btrfs).
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", stderr(&out));
}

/// Two new nodes `a` and `b` in `t`, and the paths of a source and a target directory there
/// (neither made yet).
pub fn pair(t: &Scratch) -> (Node, Node, PathBuf, PathBuf) {
    (
        Node::start(&t.path().join("a")),
        Node::start(&t.path().join("b")),
        t.path().join("src"),
        t.path().join("dst"),
    )
}

/// A relationship from `a` to `b` created, authorized and through its initial sync; its id.
pub fn synced_relationship(a: &Node, b: &Node, from: &Path, to: &Path) -> String {
    let id = create(a, b, from, to, &[]);
    b.cli_ok(&["relationship", "authorize", &id]);
    a.wait_for("source", &id, "initial sync", synced);
    id
}

/// Failover: once the target `b` recorded the source's last recovery point, it is made
/// writable and the source `a` sees the relationship ended.
pub fn fail_over(a: &Node, b: &Node, id: &str) {
    let rp = a.view("source", id)["recovery_point"]["time"].clone();
    b.wait_for("target", id, "the target to record it", |v| {
        v["recovery_point"]["time"] == rp
    });
    b.cli_ok(&["relationship", "make-writable", id]);
    a.wait_for("source", id, "the source to see the end", |v| {
        v["state"] == "ended"
    });
}

/// `mover relationship create` on `src` towards `dst` (port `port`), whatever it answers.
pub fn try_create(src: &Node, port: u16, from: &Path, to: &Path, extra: &[&str]) -> Output {
    try_create_at(src, "127.0.0.1", port, from, to, extra)
}

/// `try_create` towards an address other than loopback.
pub fn try_create_at(
    src: &Node,
    host: &str,
    port: u16,
    from: &Path,
    to: &Path,
    extra: &[&str],
) -> Output {
    let port = port.to_string();
    let mut args = vec![
        "relationship",
        "create",
        "--source-path",
        s(from),
        "--target-address",
        host,
        "--target-port",
        &port,
        "--target-path",
        s(to),
    ];
    args.extend_from_slice(extra);
    src.cli(&args)
}

/// Creates a relationship on `src` towards `dst` with the CLI; returns its id.
pub fn create(src: &Node, dst: &Node, from: &Path, to: &Path, extra: &[&str]) -> String {
    let out = try_create_at(
        src,
        &dst.host,
        dst.listen,
        from,
        to,
        &[&["--json"], extra].concat(),
    );
    assert!(out.status.success(), "create failed: {}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "awaiting_authorization", "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// Damages relationship `id`'s stored row on `n` as a downgrade would meet it: a column this
/// release cannot read. The daemon keeps running: a write of its that read the row just
/// before may put a readable value back, so the damage is made again until it stays.
pub fn damage_row(n: &Node, id: &str) {
    let db = rusqlite::Connection::open(n.dir.join("data/mover.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let damaged = || -> bool {
        db.query_row(
            "SELECT last_attempt = '[' FROM relationships WHERE id = ?1",
            [id],
            |r| r.get::<_, Option<bool>>(0),
        )
        .unwrap()
        .unwrap_or(false)
    };
    for _ in 0..5 {
        let changed = db
            .execute(
                "UPDATE relationships SET last_attempt = '[' WHERE id = ?1",
                [id],
            )
            .unwrap();
        assert_eq!(
            changed,
            1,
            "relationship {id} is stored on {}",
            n.dir.display()
        );
        // Longer than a read-then-write of the daemon takes.
        std::thread::sleep(Duration::from_millis(300));
        if damaged() {
            return;
        }
    }
    panic!("the damage to {id} on {} did not stay", n.dir.display());
}

pub fn need_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "daemon tests mount target directories read-only: run them as root (CI does)"
    );
}

/// A port free on 127.0.0.1 for a daemon to listen on. Taken below the kernel's ephemeral
/// range (32768 and up by default), where a port the kernel hands out (port 0, as this did
/// before) can also become the local port of any process's outgoing connection before the
/// daemon binds it; a CI run lost a test to that. A counter keeps this process's choices
/// apart, and the process id spreads test binaries over the range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let p = (LOW + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port on 127.0.0.1 in {LOW}..{}", LOW + SPAN);
}

pub struct Node {
    pub dir: PathBuf,
    /// The address its peer port listens on (`listen` is the port).
    pub host: String,
    pub listen: u16,
    pub api: u16,
    pub token: String,
    /// The network namespace it runs in, when not the test thread's: its API (on that
    /// namespace's loopback) is called from a thread moved into it.
    pub netns: Option<String>,
    child: Option<Child>,
}

/// Where a daemon runs and listens.
pub struct At {
    pub netns: Option<String>,
    pub host: String,
    pub listen: u16,
    pub api: u16,
}

impl At {
    /// The test thread's namespace, on loopback.
    pub fn local(listen: u16, api: u16) -> At {
        At {
            netns: None,
            host: "127.0.0.1".into(),
            listen,
            api,
        }
    }
}

impl Node {
    /// Starts a daemon with its data in `dir` (a new node, or a restart of one).
    pub fn start(dir: &Path) -> Node {
        Self::start_on(dir, free_port(), free_port())
    }

    pub fn start_on(dir: &Path, listen: u16, api: u16) -> Node {
        Self::start_configured(dir, listen, api, "")
    }

    /// `start_on` with more lines for the daemon's TOML config.
    pub fn start_configured(dir: &Path, listen: u16, api: u16, extra_config: &str) -> Node {
        Self::spawn(dir, listen, api, extra_config, None)
    }

    /// A daemon (debug build) that reports `version` as its release, as another build would.
    pub fn start_as_version(dir: &Path, listen: u16, api: u16, version: &str) -> Node {
        Self::spawn(dir, listen, api, "", Some(version))
    }

    /// `start_as_version` from a binary of its own (`exe`, a copy of the build's), for tests
    /// that replace the running binary (an upgrade).
    pub fn start_from(dir: &Path, exe: &Path, version: &str) -> Node {
        staging_room(dir);
        Self::spawn_exe(exe, dir, free_port(), free_port(), "", Some(version))
    }

    /// A daemon in a mount namespace of its own in which `hidden` is an empty tmpfs: a node
    /// that does not see that directory as the others do (not on their shared file system).
    pub fn start_not_seeing(dir: &Path, hidden: &Path, extra_config: &str) -> Node {
        let script = format!(
            "mount -t tmpfs -o size=1m mover-hidden '{}' && exec '{}' daemon \"$@\"",
            s(hidden),
            s(&cargo_bin("mover"))
        );
        Self::spawn_as(
            Path::new("unshare"),
            &[
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
                "sh",
            ],
            dir,
            At::local(free_port(), free_port()),
            extra_config,
            None,
        )
    }

    /// A daemon in a mount namespace of its own (a copy of the test's, private from then on):
    /// a node whose mounts are its own, as on another machine. Mounts other nodes make later
    /// (a target's read-only view) are not seen here.
    pub fn start_own_mounts(dir: &Path, extra_config: &str) -> Node {
        let exe = cargo_bin("mover");
        Self::spawn_as(
            Path::new("unshare"),
            &["--mount", "--propagation", "private", s(&exe), "daemon"],
            dir,
            At::local(free_port(), free_port()),
            extra_config,
            None,
        )
    }

    /// `start_own_mounts`, placed as `at` says (a network namespace of its own, say): a
    /// target node on another machine that sees the shared target directory.
    pub fn start_own_mounts_at(dir: &Path, at: At, extra_config: &str) -> Node {
        let exe = cargo_bin("mover");
        Self::spawn_as(
            Path::new("unshare"),
            &["--mount", "--propagation", "private", s(&exe), "daemon"],
            dir,
            at,
            extra_config,
            None,
        )
    }

    /// The node as containers by role under their supervisor (`mover node run`); `kill` and
    /// `terminate` act on the supervisor.
    pub fn start_containers(dir: &Path) -> Node {
        Self::start_containers_configured(dir, "")
    }

    /// `start_containers` with more config lines.
    pub fn start_containers_configured(dir: &Path, extra_config: &str) -> Node {
        Self::spawn_as(
            &cargo_bin("mover"),
            &["node", "run"],
            dir,
            At::local(free_port(), free_port()),
            extra_config,
            None,
        )
    }

    /// `start_containers` from a binary of its own (`exe`, a copy of the build's: an upgrade
    /// replaces it), with more config lines and, if given, the release it reports.
    pub fn start_containers_from(
        dir: &Path,
        exe: &Path,
        extra_config: &str,
        version: Option<&str>,
    ) -> Node {
        staging_room(dir);
        Self::spawn_as(
            exe,
            &["node", "run"],
            dir,
            At::local(free_port(), free_port()),
            extra_config,
            version,
        )
    }

    /// A GET that tolerates a node that does not answer (restarting): `None` then.
    pub fn try_get(&self, path: &str) -> Option<(u16, Value)> {
        let url = format!("{}{path}", self.url());
        let auth = format!("Bearer {}", self.token);
        netns::within(self.netns.as_deref(), || {
            let agent = agent(Duration::from_secs(10));
            let mut res = agent.get(&url).header("Authorization", &auth).call().ok()?;
            let status = res.status().as_u16();
            let text = res.body_mut().read_to_string().unwrap_or_default();
            Some((
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            ))
        })
    }

    /// The supervisor's (or the one daemon's) pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    fn spawn(dir: &Path, listen: u16, api: u16, extra_config: &str, version: Option<&str>) -> Node {
        Self::spawn_exe(&cargo_bin("mover"), dir, listen, api, extra_config, version)
    }

    fn spawn_exe(
        exe: &Path,
        dir: &Path,
        listen: u16,
        api: u16,
        extra_config: &str,
        version: Option<&str>,
    ) -> Node {
        Self::spawn_as(
            exe,
            &["daemon"],
            dir,
            At::local(listen, api),
            extra_config,
            version,
        )
    }

    /// A daemon placed as `at` says (its peer port on `at.host`, the test thread's namespace
    /// unless `at.netns`), with more config lines.
    pub fn start_at(dir: &Path, at: At, extra_config: &str) -> Node {
        Self::spawn_as(
            &cargo_bin("mover"),
            &["daemon"],
            dir,
            at,
            extra_config,
            None,
        )
    }

    fn spawn_as(
        exe: &Path,
        how: &[&str],
        dir: &Path,
        at: At,
        extra_config: &str,
        version: Option<&str>,
    ) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let cfg = dir.with_extension("toml");
        std::fs::write(
            &cfg,
            // A test that sets the interval itself overrides the default's 2 s.
            if extra_config.contains("continuous_interval_secs") {
                format!("threads = 2\n{extra_config}")
            } else {
                format!("continuous_interval_secs = 2\nthreads = 2\n{extra_config}")
            },
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .unwrap();
        let child = netns::command(at.netns.as_deref(), exe)
            .args(how)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--config")
            .arg(&cfg)
            .args([
                "--listen",
                &format!("{}:{}", at.host, at.listen),
                "--api",
                &format!("127.0.0.1:{}", at.api),
            ])
            .env("MOVER_LOG", "info")
            .envs(version.map(|v| (mover::wire::message::TEST_VERSION_ENV, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut n = Node {
            dir: dir.to_path_buf(),
            host: at.host,
            listen: at.listen,
            api: at.api,
            token: String::new(),
            netns: at.netns,
            child: Some(child),
        };
        let t0 = Instant::now();
        loop {
            if let Ok(t) = std::fs::read_to_string(dir.join("data/admin.token")) {
                n.token = t.trim().to_string();
                if netns::within(n.netns.as_deref(), || {
                    std::net::TcpStream::connect(("127.0.0.1", n.api)).is_ok()
                }) && n.get("/v1/node").0 == 200
                {
                    return n;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "daemon in {} did not come up; log:\n{}",
                dir.display(),
                n.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every thread of the daemon with what it waits in (from /proc: name, wchan, kernel
    /// stack), for a test that times out waiting for it.
    pub fn threads(&self) -> String {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return "not running".into();
        };
        let mut out = String::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return format!("pid {pid} is gone");
        };
        for t in tasks.flatten() {
            let p = t.path();
            let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
            out.push_str(&format!(
                "{} {} wchan={}\n{}",
                t.file_name().to_string_lossy(),
                read("comm").trim(),
                read("wchan"),
                read("stack")
            ));
        }
        out
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api)
    }

    /// One REST call with `token` (None: no Authorization header): (status, JSON body).
    pub fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.url());
        let auth = token.map(|t| format!("Bearer {t}"));
        netns::within(self.netns.as_deref(), || {
            let agent = agent(Duration::from_secs(90));
            let res =
                match (method, body) {
                    ("GET", _) => with_auth(agent.get(&url), &auth).call(),
                    ("DELETE", _) => with_auth(agent.delete(&url), &auth).call(),
                    ("POST", b) => with_auth(agent.post(&url), &auth)
                        .send_json(b.cloned().unwrap_or(Value::Null)),
                    ("PATCH", b) => with_auth(agent.patch(&url), &auth)
                        .send_json(b.cloned().unwrap_or(Value::Null)),
                    _ => panic!("method {method}"),
                };
            let mut res = res.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let status = res.status().as_u16();
            let text = res.body_mut().read_to_string().unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        })
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.call_as(Some(&self.token.clone()), method, path, body)
    }

    /// A new API token named `name` with `role` (the admin token makes it); its secret.
    pub fn new_token(&self, name: &str, role: &str) -> String {
        let (code, v) = self.call(
            "POST",
            "/v1/tokens",
            Some(&serde_json::json!({"name": name, "role": role})),
        );
        assert_eq!(code, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None)
    }

    /// The `mover` CLI against this node's API with its admin token.
    pub fn cli(&self, args: &[&str]) -> Output {
        netns::command(self.netns.as_deref(), &cargo_bin("mover"))
            .args(args)
            .args(["--api", &self.url()])
            .env("MOVER_TOKEN", &self.token)
            .output()
            .unwrap()
    }

    /// `cli` that must succeed; its stdout as JSON when it is JSON.
    pub fn cli_ok(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "mover {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(&s).unwrap_or(Value::String(s.into_owned()))
    }

    pub fn view(&self, role: &str, id: &str) -> Value {
        let (code, v) = self.get(&format!("/v1/replication/{role}-relationships/{id}"));
        assert_eq!(code, 200, "{v}");
        v
    }

    /// Polls the relationship's view until `ok` holds; panics with the last view and log.
    pub fn wait_for(&self, role: &str, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        eventually(what, WAIT, || {
            let v = self.view(role, id);
            if ok(&v) {
                Ok(v)
            } else {
                Err(format!("last view {v:#}\nlog:\n{}", self.log()))
            }
        })
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&c),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        c.wait().unwrap()
    }
}

fn with_auth<B>(r: ureq::RequestBuilder<B>, auth: &Option<String>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => r.header("Authorization", a),
        None => r,
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The SHA-256 of a file, as an operator takes it from `sha256sum`.
pub fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// A package to upgrade a node with: its binary `bin` and the new release `pkg`, both lean
/// copies of the build (the test version setting makes the new one report another release),
/// and the package's SHA-256.
pub fn package_pair(bin: &Path, pkg: &Path) -> String {
    lean_copy(bin);
    lean_copy(pkg);
    sha256(pkg)
}

/// A copy of the build's `mover` at `to` without its debug info (binutils' `strip`, which
/// `scripts/install-deps.sh` brings with gcc): a test that stages, hashes and installs
/// packages copies tens of MB instead of hundreds.
pub fn lean_copy(to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(cargo_bin("mover"), to).unwrap();
    let out = Command::new("strip")
        .arg("--strip-debug")
        .arg(to)
        .output()
        .expect("strip (binutils) is needed: scripts/install-deps.sh installs it");
    assert!(out.status.success(), "strip: {}", stderr(&out));
}

/// Space the upgrade checker asks for (4 GiB where a release is staged: the data dir),
/// whatever the machine's temp dir has free: a tmpfs of 8 GiB over `dir/data`. A tmpfs takes
/// memory only for what is written (a stripped binary or two). A restarted node keeps its mount.
pub fn staging_room(dir: &Path) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = Command::new("mountpoint")
        .arg("-q")
        .arg(&data)
        .status()
        .expect("mountpoint (util-linux) is needed");
    if !mounted.success() {
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8g,mode=0700", "tmpfs"])
            .arg(&data));
    }
}

/// Removes every mount under `dir` (deepest first) so the test's temp dir can go.
pub fn unmount_under(dir: &Path) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.canonicalize().unwrap_or(dir.to_path_buf());
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(&prefix))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = rustix::mount::unmount(p.as_str(), rustix::mount::UnmountFlags::DETACH);
    }
}

/// A test's directory; unmounts what daemons left mounted inside before it is removed.
pub struct Scratch(pub tempfile::TempDir);

impl Scratch {
    pub fn new() -> Scratch {
        Scratch(tempfile::tempdir().unwrap())
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        unmount_under(self.0.path());
    }
}

pub fn tree_hash(p: &Path) -> (u128, Option<u128>) {
    let (t, c, _) =
        mover::tree::hash::hash_dir(p, mover::tree::hash::HashOptions { owners: true }, true)
            .unwrap();
    (t, c)
}

/// Random content, `n` files of `size` bytes under `dir`.
pub fn fill(dir: &Path, n: usize, size: usize, seed: u64) {
    let mut rng = mover::gen::Rng(seed);
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let mut b = vec![0u8; size];
        rng.fill(&mut b);
        std::fs::write(dir.join(format!("f{i:04}")), b).unwrap();
    }
}

/// An HTTP client that hands back every status (the tests assert on them) and gives up on a
/// call after `timeout`.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// A loop-mounted file system of `kind` (btrfs, xfs, ext4) at `<t>/<kind>`.
pub fn mount(t: &Scratch, kind: &str) -> PathBuf {
    let img = t.path().join(format!("{kind}.img"));
    std::fs::File::create(&img)
        .unwrap()
        .set_len(400 << 20)
        .unwrap();
    let mkfs = format!("mkfs.{kind}");
    let mut c = Command::new(&mkfs);
    match kind {
        "xfs" => c.args(["-q", "-m", "reflink=1"]),
        "ext4" => c.args(["-q", "-F"]),
        _ => c.arg("-q"),
    };
    run(c.arg(&img));
    let at = t.path().join(kind);
    std::fs::create_dir(&at).unwrap();
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&at));
    at
}
