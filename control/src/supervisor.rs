//! `mover node run`: a node's daemon as containers by role, each a process of its own that
//! restarts alone (`daemon::roles`): the control container (`--roles control`: state,
//! scheduling, authorization and the peer port), the data container (`--roles data`: the
//! sessions, shares and receivers) and the API container (`--roles api`). The
//! supervisor starts them, restarts a crashed one after a bounded backoff, checks each one's
//! health, and writes what it sees to `CONTAINERS_FILE` in the data dir, which the API serves
//! (`GET /v1/containers`, `mover node containers`). SIGTERM stops them all as SIGTERM stops the
//! daemon (jobs at a chunk boundary), then the supervisor exits. It holds no state of its own:
//! killed, its containers stop too (parent-death signal) and a new one starts them again.

use crate::daemon::roles::{Roles, CONTROL_SOCKET};
use crate::error::IoContext;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the supervisor last saw of its containers, in the data dir (JSON, `Containers`).
pub const CONTAINERS_FILE: &str = "containers.json";
/// Set in a container's environment to the supervisor's pid: the container asks the kernel to
/// stop it when that process dies (`orphan_guard`).
pub const SUPERVISOR_ENV: &str = "MOVER_SUPERVISOR_PID";
/// How often containers are looked at (exit, health) and the status file written.
const POLL: Duration = Duration::from_millis(500);
/// Restart backoff after a crash: doubles from the first to the last, and starts over once a
/// container has run `STABLE_AFTER`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// A container that exits cleanly sooner than this after its start waits its backoff before
/// it starts again.
const MIN_CLEAN_RUN: Duration = Duration::from_secs(2);
/// One health probe's bound (connect, ask, read the answer).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest health answer read.
const MAX_PROBE_BYTES: u64 = 64 * 1024;
/// After SIGTERM, how long containers get to stop before they are killed: the daemon's own
/// grace for jobs, and a margin.
const STOP_GRACE: Duration = Duration::from_secs(35);

/// How the supervisor runs the containers.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// The `mover` binary the containers run.
    pub exe: PathBuf,
    /// The `mover daemon` flags the operator gave (`--roles` is added per container).
    pub daemon_args: Vec<OsString>,
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    /// The API is served over TLS: its probe only connects.
    pub api_tls: bool,
}

/// One container as `GET /v1/containers` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ContainerStatus {
    /// Its roles, as `--roles` names them (`control`, `data`, `api`, or `all`).
    pub roles: String,
    pub state: ContainerState,
    pub pid: Option<u32>,
    /// The release it reports (from its health answer), once it answered.
    pub version: Option<String>,
    /// Its last health probe answered.
    pub healthy: bool,
    /// Restarts after a crash since the supervisor started.
    pub restarts: u32,
    /// Unix seconds it (last) started.
    pub started_unix: Option<i64>,
    /// How it last ended, if it did.
    pub last_exit: Option<String>,
}

/// Where a container is in its life, as the supervisor last saw it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    Running,
    /// It exited or crashed; started again after its backoff.
    Restarting,
    Stopped,
    /// A state this release does not know, from a later one's report in etcd (a rolling
    /// upgrade runs both): read as such rather than losing the node's whole report.
    #[serde(other)]
    Other,
}

impl ContainerStatus {
    /// A daemon's own process as its one container (no supervisor looks after it).
    pub fn this_process(roles: Roles, started_unix: Option<i64>) -> ContainerStatus {
        ContainerStatus {
            roles: roles.to_string(),
            state: ContainerState::Running,
            pid: Some(std::process::id()),
            version: Some(mover::software_version().to_string()),
            healthy: true,
            restarts: 0,
            started_unix,
            last_exit: None,
        }
    }
}

/// What each node of a cluster publishes about itself (`containers/<name>` in etcd).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct NodeReport {
    pub containers: Vec<ContainerStatus>,
    /// Source jobs running on the node.
    pub jobs_running: u32,
    /// Their summed throughput over the last seconds.
    pub throughput_bytes_per_sec: f64,
}

/// The status file: the supervisor and its containers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Containers {
    pub supervisor_pid: u32,
    pub updated_unix: i64,
    pub containers: Vec<ContainerStatus>,
}

struct Container {
    roles: Roles,
    child: Option<tokio::process::Child>,
    started: Option<Instant>,
    /// When a crashed container starts again.
    due: Option<Instant>,
    backoff: Duration,
    status: ContainerStatus,
}

impl Container {
    fn new(roles: Roles) -> Container {
        Container {
            roles,
            child: None,
            started: None,
            due: Some(Instant::now()),
            backoff: FIRST_BACKOFF,
            status: ContainerStatus {
                roles: roles.to_string(),
                state: ContainerState::Stopped,
                pid: None,
                version: None,
                healthy: false,
                restarts: 0,
                started_unix: None,
                last_exit: None,
            },
        }
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Runs the containers until SIGTERM or SIGINT.
pub fn run(opts: SupervisorOptions) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ctx(|| "starting the supervisor's runtime".to_string())?;
    rt.block_on(supervise(opts))
}

async fn supervise(opts: SupervisorOptions) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).ctx(|| "installing the SIGTERM handler".to_string())?;
    let mut int =
        signal(SignalKind::interrupt()).ctx(|| "installing the SIGINT handler".to_string())?;
    // The control container first: it makes the data dir, the node's identity and the socket
    // the API container forwards to.
    let mut all = [
        Container::new(Roles::CONTROL),
        Container::new(Roles::DATA),
        Container::new(Roles::API),
    ];
    tracing::info!(data_dir = %opts.data_dir.display(), "mover node supervisor started");
    let mut ready = false;
    loop {
        for c in all.iter_mut() {
            look_after(&opts, c).await;
        }
        write_status(&opts.data_dir, &all);
        if !ready && all.iter().all(|c| c.status.healthy) {
            ready = true;
            crate::systemd::sd_notify("READY=1");
            tracing::info!("containers up");
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {},
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping the containers");
    for c in all.iter_mut() {
        if let Some(pid) = c.child.as_ref().and_then(tokio::process::Child::id) {
            signal_pid(pid, rustix::process::Signal::TERM);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for c in all.iter_mut() {
        if let Some(mut child) = c.child.take() {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, child.wait()).await.is_err() {
                tracing::error!(roles = %c.roles, "did not stop within {STOP_GRACE:?}; killing it");
                let _ = child.kill().await;
            }
        }
        c.status.state = ContainerState::Stopped;
        c.status.pid = None;
        c.status.healthy = false;
    }
    write_status(&opts.data_dir, &all);
    tracing::info!("mover node supervisor stopped");
    Ok(())
}

fn signal_pid(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Reaps an exited container and schedules its restart, starts one that is due, probes a
/// running one.
async fn look_after(opts: &SupervisorOptions, c: &mut Container) {
    if let Some(child) = c.child.as_mut() {
        match child.try_wait() {
            Ok(None) => {
                probe(opts, c).await;
                return;
            }
            Ok(Some(status)) if status.success() => {
                // Stopped on request (SIGTERM: an upgrade restarting it onto the new binary,
                // or an operator): started again, not counted as a crash. At once after a
                // while up; one that keeps stopping right after its start waits its backoff,
                // so it is no hot loop.
                let quick = c.started.is_some_and(|s| s.elapsed() < MIN_CLEAN_RUN);
                let wait = if quick { c.backoff } else { Duration::ZERO };
                c.backoff = if quick {
                    (c.backoff * 2).min(MAX_BACKOFF)
                } else {
                    FIRST_BACKOFF
                };
                tracing::info!(roles = %c.roles, "container stopped; starting it again in {wait:?}");
                c.status.last_exit = Some(status.to_string());
                c.child = None;
                c.status.state = ContainerState::Restarting;
                c.status.pid = None;
                c.status.healthy = false;
                c.due = Some(Instant::now() + wait);
                return;
            }
            Ok(Some(status)) => {
                let ran = c.started.map_or(Duration::ZERO, |s| s.elapsed());
                if ran >= STABLE_AFTER {
                    c.backoff = FIRST_BACKOFF;
                }
                tracing::error!(roles = %c.roles, %status, "container exited; restarting it in {:?}", c.backoff);
                c.status.last_exit = Some(status.to_string());
            }
            Err(e) => {
                tracing::error!(roles = %c.roles, "cannot look at the container: {e}");
                c.status.last_exit = Some(format!("lost: {e}"));
            }
        }
        c.child = None;
        c.status.state = ContainerState::Restarting;
        c.status.pid = None;
        c.status.healthy = false;
        c.status.restarts += 1;
        c.due = Some(Instant::now() + c.backoff);
        c.backoff = (c.backoff * 2).min(MAX_BACKOFF);
        return;
    }
    if c.due.is_some_and(|d| Instant::now() >= d) {
        match start(opts, c.roles) {
            Ok(child) => {
                c.status.pid = child.id();
                c.child = Some(child);
                c.started = Some(Instant::now());
                c.status.started_unix = Some(now_unix());
                c.status.state = ContainerState::Running;
                c.due = None;
                tracing::info!(roles = %c.roles, pid = ?c.status.pid, "container started");
            }
            Err(e) => {
                tracing::error!(roles = %c.roles, "cannot start the container: {e}");
                c.status.last_exit = Some(format!("not started: {e}"));
                c.due = Some(Instant::now() + c.backoff);
                c.backoff = (c.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn start(opts: &SupervisorOptions, roles: Roles) -> Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&opts.exe);
    cmd.arg("daemon")
        .args(&opts.daemon_args)
        .arg("--roles")
        .arg(roles.to_string())
        .env(SUPERVISOR_ENV, std::process::id().to_string())
        .kill_on_drop(true);
    // Test builds report the release a test set (`TEST_VERSION_ENV`); once an upgrade of this
    // node is done, a container started from the new binary reports the new one, as a real
    // new binary would.
    let test_version = mover::wire::message::TEST_VERSION_ENV;
    if cfg!(debug_assertions) && std::env::var_os(test_version).is_some() {
        if let Some(to) = crate::daemon::upgrade_record::record_done(&opts.data_dir) {
            cmd.env(test_version, to);
        }
    }
    cmd.spawn()
        .ctx(|| format!("starting {} daemon --roles {roles}", opts.exe.display()))
}

/// Asks the container for its health: the control container on its socket, the API container
/// on its port (plain HTTP; over TLS a connection that is accepted is what is checked).
async fn probe(opts: &SupervisorOptions, c: &mut Container) {
    let answer = if c.roles.api {
        if opts.api_tls {
            tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(opts.api))
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|_| Health {
                    version: api_self_version(&opts.data_dir, c.status.pid),
                })
        } else {
            match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(opts.api))
                .await
            {
                Ok(Ok(s)) => ask(s).await,
                _ => None,
            }
        }
    } else if !c.roles.control {
        ask_data(opts.data_dir.join(crate::daemon::data_wire::DATA_SOCKET)).await
    } else {
        match tokio::time::timeout(
            PROBE_TIMEOUT,
            tokio::net::UnixStream::connect(opts.data_dir.join(CONTROL_SOCKET)),
        )
        .await
        {
            Ok(Ok(s)) => ask(s).await,
            _ => None,
        }
    };
    c.status.healthy = answer.is_some();
    if let Some(v) = answer.and_then(|h| h.version) {
        c.status.version = Some(v);
    }
}

#[derive(Default)]
struct Health {
    version: Option<String>,
}

/// `GET /v1/health` over `s`: the container that answers is up; the version is the one that
/// answered (the API container names its own in `API_VERSION_HEADER`, whatever the control
/// container behind it says).
async fn ask<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) -> Option<Health> {
    let go = async {
        s.write_all(b"GET /v1/health HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_PROBE_BYTES)
            .read_to_end(&mut buf)
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status_line = head.lines().next()?;
        if !status_line.starts_with("HTTP/1.1 ") {
            return None;
        }
        let header = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(API_VERSION_HEADER)
                .then(|| v.trim().to_string())
        });
        let version = header.or_else(|| {
            serde_json::from_str::<serde_json::Value>(body)
                .ok()?
                .get("version")?
                .as_str()
                .map(str::to_string)
        });
        Some(Health { version })
    };
    tokio::time::timeout(PROBE_TIMEOUT, go).await.ok().flatten()
}

/// The data container's health over its socket (`data_wire`): the release it answers with.
async fn ask_data(path: PathBuf) -> Option<Health> {
    use crate::daemon::data_wire::{call, FromData, ToData};
    let answer = tokio::task::spawn_blocking(move || {
        call(&path, Some(PROBE_TIMEOUT), None, &ToData::Health)
    });
    match tokio::time::timeout(PROBE_TIMEOUT, answer).await {
        Ok(Ok(Ok(FromData::Health { version, .. }))) => Some(Health {
            version: Some(version),
        }),
        _ => None,
    }
}

/// What the API container writes about itself at start, in the data dir: its pid and release,
/// for the supervisor's probe when it cannot read the container's answers (TLS).
pub const API_SELF_FILE: &str = "api-container.json";

#[derive(Debug, Serialize, Deserialize)]
pub struct SelfReport {
    pub pid: u32,
    pub version: String,
}

/// The release the API container `pid` wrote about itself, if that file is its own.
fn api_self_version(data_dir: &Path, pid: Option<u32>) -> Option<String> {
    let r: SelfReport =
        serde_json::from_slice(&std::fs::read(data_dir.join(API_SELF_FILE)).ok()?).ok()?;
    (Some(r.pid) == pid).then_some(r.version)
}

/// The header the API container adds to every answer: its own release.
pub const API_VERSION_HEADER: &str = "mover-api-version";

fn write_status(data_dir: &Path, all: &[Container]) {
    let s = Containers {
        supervisor_pid: std::process::id(),
        updated_unix: now_unix(),
        containers: all.iter().map(|c| c.status.clone()).collect(),
    };
    let Ok(json) = serde_json::to_vec_pretty(&s) else {
        return;
    };
    // The data dir is made by the control container; before it exists there is nothing to
    // serve the file either.
    if data_dir.is_dir() {
        if let Err(e) = crate::private_file::write_private(&data_dir.join(CONTAINERS_FILE), &json) {
            tracing::warn!("writing {CONTAINERS_FILE}: {e}");
        }
    }
}

/// The containers of this node as its supervisor last wrote them; `None` when the daemon runs
/// as one process (no supervisor, or a status file its supervisor no longer keeps).
pub fn read_status(data_dir: &Path) -> Result<Option<Containers>> {
    let p = data_dir.join(CONTAINERS_FILE);
    let text = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Io {
                context: format!("reading {}", p.display()),
                source: e,
            })
        }
    };
    let s: Containers = serde_json::from_slice(&text)
        .map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
    // A supervisor that is gone left its last word behind: not what runs now.
    let alive = rustix::process::Pid::from_raw(s.supervisor_pid as i32)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
    Ok(alive.then_some(s))
}

/// In a container (its environment names the supervisor): stop with SIGTERM when the
/// supervisor dies, so a killed supervisor leaves no container behind to hold the node's ports.
pub fn orphan_guard() {
    let Some(sup) = std::env::var(SUPERVISOR_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
    {
        tracing::warn!("cannot ask to be stopped with the supervisor: {e}");
    }
    // The supervisor may have died before the request above took effect.
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(sup) {
        tracing::error!("the supervisor (pid {sup}) is gone; stopping");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_releases_container_state_is_read_as_other_without_losing_the_report() {
        let mut c = ContainerStatus::this_process(Roles::DATA, Some(1));
        let mut v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["state"], "running");
        v["state"] = "draining".into();
        let read: ContainerStatus = serde_json::from_value(v).unwrap();
        c.state = ContainerState::Other;
        assert_eq!(read, c);
    }
}
