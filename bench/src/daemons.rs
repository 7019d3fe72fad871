//! Two `mover daemon` processes on 127.0.0.1, a source node and a target node, each with its own
//! data dir and config file, driven only through the `mover` CLI (as an operator would) and
//! the file system. Used by the benchmarks of continuous replication (`rpo`), failover
//! (`make-writable`) and failback (`reconnect`), which must not depend on how the daemon
//! decides when to replicate.

use crate::proc;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a daemon may take to write its admin token and answer on its API.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a daemon may take to exit after SIGTERM (it stops jobs at a chunk boundary) before
/// it is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a daemon's readiness, or a relationship's view, is polled while waiting.
const POLL: Duration = Duration::from_millis(50);
/// Longest the initial sync of a benchmark's tree may take (200,000 files on a slow disk).
pub const INITIAL_SYNC_TIMEOUT: Duration = Duration::from_secs(1200);
/// Lowest and highest port the bench's daemons may use (the project's benchmarks keep to
/// 393xx-394xx).
const PORT_MIN: u16 = 39300;
const PORT_MAX: u16 = 39499;

/// One `mover daemon` on 127.0.0.1.
pub struct Node {
    /// Where its data dir, config file and log are.
    pub dir: PathBuf,
    pub listen: u16,
    pub api: u16,
    token: String,
    mover: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts a daemon in `dir` listening on 127.0.0.1:`listen` (peers) and :`api` (REST), with
    /// `config` as its whole config file; returns once its API answers the CLI.
    pub fn start(
        mover: &Path,
        dir: &Path,
        (listen, api): (u16, u16),
        config: &str,
    ) -> Result<Node> {
        for p in [listen, api] {
            // A port held by someone else would make the daemon fail after a wait; say so now.
            std::net::TcpListener::bind(("127.0.0.1", p))
                .with_context(|| format!("port 127.0.0.1:{p} is in use (try --port-base)"))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Always an explicit config file: without --config the daemon would read the host's
        // /etc/mover/mover.toml.
        let cfg = dir.join("mover.toml");
        std::fs::write(&cfg, config).with_context(|| format!("writing {}", cfg.display()))?;
        let log = std::fs::File::create(dir.join("daemon.log")).context("creating daemon log")?;
        let child = Command::new(mover)
            .arg("daemon")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--config")
            .arg(&cfg)
            .arg("--listen")
            .arg(format!("127.0.0.1:{listen}"))
            .arg("--api")
            .arg(format!("127.0.0.1:{api}"))
            .env("MOVER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting mover daemon")?;
        let mut n = Node {
            dir: dir.to_path_buf(),
            listen,
            api,
            token: String::new(),
            mover: mover.to_path_buf(),
            child: Some(child),
        };
        let t0 = Instant::now();
        loop {
            if let Some(c) = n.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!(
                        "mover daemon in {} exited ({st}); log:\n{}",
                        dir.display(),
                        n.log()
                    );
                }
            }
            if let Ok(t) = std::fs::read_to_string(dir.join("data/admin.token")) {
                n.token = t.trim().to_string();
                if n.cli(&["node", "--json"])?.status.success() {
                    return Ok(n);
                }
            }
            if t0.elapsed() > START_TIMEOUT {
                bail!(
                    "mover daemon in {} did not answer within {START_TIMEOUT:?}; log:\n{}",
                    dir.display(),
                    n.log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's CPU seconds so far (user + system, all threads and reaped children).
    pub fn cpu_seconds(&self) -> Result<f64> {
        proc::daemon_cpu(self.pid().context("daemon not running")?)
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        // The end says why; a long log would bury the error it is printed with.
        let tail: Vec<&str> = text.lines().rev().take(LOG_TAIL_LINES).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// `mover ARGS --api URL` with this node's admin token.
    pub fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        Command::new(&self.mover)
            .args(args)
            .arg("--api")
            .arg(format!("http://127.0.0.1:{}", self.api))
            .env("MOVER_TOKEN", &self.token)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running mover {}", args.join(" ")))
    }

    /// `cli` that must succeed; its stdout as JSON.
    pub fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "mover {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("mover {}: output is not JSON", args.join(" ")))
    }

    /// The relationship `id` as this node shows it in `role` ("source" or "target").
    pub fn view(&self, role: &str, id: &str) -> Result<Value> {
        self.cli_json(&["relationship", "show", id, "--role", role, "--json"])
    }

    /// Polls the view until `ok` holds, for at most `timeout`.
    pub fn wait_for(
        &self,
        (role, id): (&str, &str),
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let t0 = Instant::now();
        loop {
            let v = self.view(role, id)?;
            if ok(&v) {
                return Ok(v);
            }
            if t0.elapsed() > timeout {
                bail!(
                    "waited {timeout:?} for {what}; last view {v:#}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM, then SIGKILL after STOP_TIMEOUT; waits for the exit.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Lines of a daemon's log shown with an error.
const LOG_TAIL_LINES: usize = 40;

impl Drop for Node {
    fn drop(&mut self) {
        // On an error path: nothing may outlive the bench.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Hands out (peer, API) port pairs from `base` upwards, within PORT_MIN-PORT_MAX.
pub struct Ports {
    next: u16,
}

impl Ports {
    pub fn new(base: u16) -> Result<Ports> {
        if !(PORT_MIN..=PORT_MAX).contains(&base) {
            bail!("--port-base must be within {PORT_MIN}-{PORT_MAX}");
        }
        Ok(Ports { next: base })
    }

    pub fn pair(&mut self) -> Result<(u16, u16)> {
        let p = self.next;
        if p >= PORT_MAX {
            bail!("out of ports: the bench's daemons keep to {PORT_MIN}-{PORT_MAX}");
        }
        self.next += 2;
        Ok((p, p + 1))
    }
}

/// Extra config lines for each node (appended to its config file), as the operator passed them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Configs {
    pub source: Vec<String>,
    pub target: Vec<String>,
}

fn config_text(lines: &[String]) -> String {
    let mut s =
        String::from("# written by bench; the lines below were passed on its command line\n");
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// A source node and a target node with one relationship from `src` into `dst`, authorized
/// and through its initial sync. Dropping it stops both daemons and lifts the target's
/// read-only mount.
pub struct Pair {
    pub source: Node,
    pub target: Node,
    pub id: String,
    /// The run's directory (nodes' dirs, the target directory): mounts under it are lifted.
    dir: PathBuf,
    ended: bool,
}

impl Pair {
    /// Starts both daemons under `dir`, creates the relationship on the source with the CLI,
    /// authorizes it on the target, and waits for the recovery point of the initial sync.
    /// Returns the pair and the seconds from the authorization to that recovery point.
    pub fn start(
        mover: &Path,
        dir: &Path,
        ports: &mut Ports,
        configs: &Configs,
        (src, dst): (&Path, &Path),
    ) -> Result<(Pair, f64)> {
        std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
        let source = Node::start(
            mover,
            &dir.join("source-node"),
            ports.pair()?,
            &config_text(&configs.source),
        )?;
        let target = Node::start(
            mover,
            &dir.join("target-node"),
            ports.pair()?,
            &config_text(&configs.target),
        )?;
        let path = |p: &Path| -> Result<String> {
            p.canonicalize()
                .with_context(|| format!("resolving {}", p.display()))?
                .to_str()
                .map(str::to_string)
                .context("paths must be UTF-8")
        };
        let port = target.listen.to_string();
        let v = source.cli_json(&[
            "relationship",
            "create",
            "--source-path",
            &path(src)?,
            "--target-address",
            "127.0.0.1",
            "--target-port",
            &port,
            "--target-path",
            &path(dst)?,
            "--json",
        ])?;
        let id = v["id"]
            .as_str()
            .with_context(|| format!("no id in the created relationship: {v}"))?
            .to_string();
        let pair = Pair {
            source,
            target,
            id,
            dir: dir.to_path_buf(),
            ended: false,
        };
        // The target learns of the relationship from the source's peer connection: until then
        // `show` answers "not found", which is no error here.
        let t0 = Instant::now();
        while !pair
            .target
            .cli(&[
                "relationship",
                "show",
                &pair.id,
                "--role",
                "target",
                "--json",
            ])?
            .status
            .success()
        {
            if t0.elapsed() > START_TIMEOUT {
                bail!(
                    "the target node did not list relationship {} within {START_TIMEOUT:?}; source log:\n{}",
                    pair.id,
                    pair.source.log()
                );
            }
            std::thread::sleep(POLL);
        }
        let t0 = Instant::now();
        pair.target
            .cli_json(&["relationship", "authorize", &pair.id, "--json"])?;
        pair.source.wait_for(
            ("source", &pair.id),
            "the initial sync's recovery point",
            INITIAL_SYNC_TIMEOUT,
            |v| v["recovery_point"]["time"].is_string() && v["job"].is_null(),
        )?;
        let initial = t0.elapsed().as_secs_f64();
        Ok((pair, initial))
    }

    /// Ends the relationship on both nodes (the target writable again, data kept), then stops
    /// both daemons. Errors are reported, not fatal: the run's figures are already taken.
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        for (node, role) in [(&self.target, "target"), (&self.source, "source")] {
            if let Err(e) =
                node.cli_json(&["relationship", "delete", &self.id, "--role", role, "--json"])
            {
                eprintln!("bench: deleting the {role} side of {}: {e:#}", self.id);
            }
        }
        self.target.stop();
        self.source.stop();
        unmount_under(&self.dir);
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.end();
    }
}

/// Removes `dir` under work dir `work` (after lifting mounts a killed daemon may have left in
/// it), and notes the deletion in the work dir's trash: a later small-file run waits out
/// ext4's inode-reuse window after it (trash.rs).
pub fn clear(work: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        unmount_under(dir);
    }
    crate::trash::Trash::new(work).delete(dir)
}

/// Lifts every mount under `dir` (deepest first): a target's read-only bind mount outlives a
/// daemon that was killed, and the directory could not be deleted under it.
pub fn unmount_under(dir: &Path) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(&prefix))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p) else {
            continue;
        };
        // SAFETY: c is a valid NUL-terminated path; MNT_DETACH has no other preconditions.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}
