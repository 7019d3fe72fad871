//! `mover daemon` (its flags, shared with `mover node run`) and `mover node`: this node's
//! details, its containers by role, and the supervisor that runs them.

use crate::api::ApiArgs;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use control::daemon::config as cfg;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Directory for the state database, certificate, tokens and private mounts (created, mode 0700).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// TOML config file (default: /etc/mover/mover.toml if it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Peer address other daemons connect to (replication port).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// REST API address.
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// Allow source paths in this directory (repeat for more); replaces the default, which
    /// allows anything but system directories (/etc, /root, /proc, /usr, ...) and overrides
    /// allowed_source_roots in the config file.
    #[arg(long = "allowed-source-root", value_name = "DIR")]
    pub allowed_source_roots: Vec<PathBuf>,
    /// Run data-plane sessions in clear (checksummed, not encrypted): trusted networks only.
    /// A session runs in clear only when both nodes are set so (insecure_plaintext in the
    /// config file also sets it).
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Serve the REST API over TLS 1.3 with this node's certificate (node.crt, named
    /// mover-node; clients pass it with --api-cert). Needed for an --api address off
    /// loopback.
    #[arg(long)]
    pub api_tls: bool,
    /// Serve the REST API over TLS with this certificate (PEM) instead, for the names
    /// clients use; with --api-key.
    #[arg(long, value_name = "FILE", requires = "api_key")]
    pub api_cert: Option<PathBuf>,
    /// The private key (PEM) of --api-cert.
    #[arg(long, value_name = "FILE", requires = "api_cert")]
    pub api_key: Option<PathBuf>,
    /// Join the cluster whose state is in this etcd (etcd://HOST:PORT[,HOST:PORT...]):
    /// membership with a heartbeat lease and leader election (`mover cluster members`).
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// This node's name in the cluster (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// What this process runs: `all` (the default: one process, as a single node runs), or
    /// containers by role that restart alone: `control` (relationships, scheduling,
    /// authorization and the peer port; the API on a local socket), `data` (the data plane:
    /// the sessions and receivers control hands it) and `api` (the REST API, UI and metrics,
    /// forwarded to control). `control,data` runs both in one process. `mover node run`
    /// starts the three and restarts a crashed one.
    #[arg(long, value_name = "ROLES")]
    pub roles: Option<String>,
    /// With --cluster: spread this node's jobs over the members that also set it, and run
    /// shards of theirs. Every such member must see each relationship's source at the same
    /// path (one shared file system); the target sees one session as before.
    #[arg(long)]
    pub spread_jobs: bool,
    /// With --cluster: spread the writes of this node's target relationships over the members
    /// that also set it, and write shares of theirs. Every such member must see each target
    /// directory at the same path (one shared file system) and run as one process.
    #[arg(long)]
    pub spread_writes: bool,
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Run this node's daemon as containers by role (control,data and api), restarting a
    /// crashed one; takes the flags of `mover daemon` but --roles.
    #[command(long_about = RUN_HELP)]
    Run(DaemonArgs),
    /// This node's containers: roles, state, pid, version, health, restarts.
    Containers(ApiArgs),
    /// Take a cluster node out of service: it starts no job; running ones finish.
    #[command(long_about = DRAIN_HELP)]
    Drain(DrainArgs),
    /// Put a drained cluster node back in service: it starts jobs again.
    Undrain(DrainArgs),
}

const DRAIN_HELP: &str = "Take a node of the cluster out of service for maintenance. A \
drained node starts no job of its relationships: no scheduled or continuous job, no \
\"replicate now\" (refused, saying so), no resumed job. The jobs running when it was drained \
finish, so with --wait-secs the command returns once the node runs none and it can be stopped \
without interrupting a job. It still receives as a target. The drain is kept in etcd: it \
holds while the node is down and across its restarts, until `mover node undrain NODE`. Any \
node of the cluster can drain any other (ADMIN token).

Exit 1 if --wait-secs passed and the node still runs a job.

Example:
  mover node drain n2 --wait-secs 600
  mover node undrain n2";

#[derive(Args, Debug)]
pub struct DrainArgs {
    /// The node's name in the cluster (`mover cluster members` lists them).
    pub node: String,
    /// Drain: wait up to this many seconds until the node runs no job (as it last reported).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub wait_secs: u64,
    #[command(flatten)]
    pub api: ApiArgs,
}

const RUN_HELP: &str = "Run this node's daemon as containers by role, each a process that \
restarts alone: the control container (`mover daemon --roles control,data`: relationships, \
scheduling, the peer port and the data plane; it serves the API on <data-dir>/control.sock) and \
the API container (`mover daemon --roles api`: the REST API, UI and metrics on --api, forwarded \
to the control container). The supervisor restarts a container that exits (backoff from 0.5 s \
doubling to 30 s), probes each one's health (GET /v1/health) and writes what it sees to \
<data-dir>/containers.json, shown by `mover node containers`. Restarting the API container \
leaves jobs running; restarting the control container stops them at a chunk boundary and \
resumes them. SIGTERM stops both containers as it stops the daemon, then the supervisor. If \
the supervisor is killed, its containers stop too.

Takes the same flags and config file as `mover daemon`, except --roles.

Example:
  mover node run --data-dir /var/lib/mover
  export MOVER_TOKEN=$(cat /var/lib/mover/admin.token)
  mover node containers";

fn resolve(a: DaemonArgs) -> Result<control::daemon::DaemonOptions> {
    let explicit = a.config.is_some();
    let path = a
        .config
        .unwrap_or_else(|| PathBuf::from(cfg::DEFAULT_CONFIG));
    let file = cfg::ConfigFile::load(&path, explicit)?;
    let flags = cfg::Flags {
        data_dir: a.data_dir,
        listen: a.listen,
        api: a.api,
        allowed_source_roots: a.allowed_source_roots,
        insecure_plaintext: a.insecure_plaintext,
        api_tls: a.api_tls,
        api_cert: a.api_cert,
        api_key: a.api_key,
        cluster: a.cluster,
        node_name: a.node_name,
        roles: a.roles,
        spread_jobs: a.spread_jobs,
        spread_writes: a.spread_writes,
    };
    Ok(cfg::resolve(file, flags)?)
}

pub fn daemon(a: DaemonArgs) -> Result<()> {
    control::daemon::run(resolve(a)?)?;
    Ok(())
}

pub fn run(cmd: Option<NodeCmd>, api: ApiArgs) -> Result<()> {
    match cmd {
        None => show(&api),
        Some(NodeCmd::Run(a)) => supervise(a),
        Some(NodeCmd::Containers(api)) => containers(&api),
        Some(NodeCmd::Drain(a)) => drain(&a, true),
        Some(NodeCmd::Undrain(a)) => drain(&a, false),
    }
}

/// How often `drain --wait-secs` reads the cluster.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_secs(1);

fn drain(a: &DrainArgs, drained: bool) -> Result<()> {
    let api = a.api.client();
    let what = if drained { "drain" } else { "undrain" };
    let mut m = api
        .post_empty(&format!("/v1/cluster/nodes/{}/{what}", a.node))
        .with_context(|| format!("{what}ing node {}", a.node))?;
    let running = |m: &serde_json::Value| m["report"]["jobs_running"].as_u64().unwrap_or(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(a.wait_secs);
    while drained && running(&m) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(DRAIN_POLL);
        let v = api.get("/v1/cluster").context("reading the cluster")?;
        if let Some(now) = v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["name"] == a.node.as_str())
        {
            m = now.clone();
        }
    }
    if a.api.json {
        println!("{}", serde_json::to_string(&m)?);
    } else if drained {
        println!(
            "node {} drained: it starts no job; {} running (as it last reported)",
            a.node,
            running(&m)
        );
    } else {
        println!("node {} undrained: it starts jobs again", a.node);
    }
    if drained && a.wait_secs > 0 && running(&m) > 0 {
        anyhow::bail!(
            "node {} still runs {} job(s) after {} s",
            a.node,
            running(&m),
            a.wait_secs
        );
    }
    Ok(())
}

fn show(api: &ApiArgs) -> Result<()> {
    let v = api
        .client()
        .get("/v1/node")
        .context("reading the node's details")?;
    if api.json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        for k in ["version", "fingerprint", "listen", "api"] {
            println!(
                "{k:<12} {}",
                v.get(k).and_then(serde_json::Value::as_str).unwrap_or("-")
            );
        }
    }
    Ok(())
}

fn supervise(a: DaemonArgs) -> Result<()> {
    if a.roles.is_some() {
        anyhow::bail!("`mover node run` runs the containers itself: drop --roles");
    }
    // The containers get the operator's flags as given (everything after `run`), so a config
    // file keeps meaning the same; resolved here only to know where to look.
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip_while(|a| a != "run")
        .skip(1)
        .collect();
    let opts = resolve(a)?;
    let exe = std::env::current_exe().context("finding the mover binary")?;
    control::supervisor::run(control::supervisor::SupervisorOptions {
        exe,
        daemon_args: args,
        data_dir: opts.data_dir,
        api: opts.api,
        api_tls: opts.api_tls.is_some(),
    })?;
    Ok(())
}

fn containers(api: &ApiArgs) -> Result<()> {
    let v = api
        .client()
        .get("/v1/containers")
        .context("reading the node's containers")?;
    if api.json {
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!(
        "{:<14} {:<11} {:>8} {:<12} {:<8} {:>8}  last exit",
        "roles", "state", "pid", "version", "health", "restarts"
    );
    let s = |c: &serde_json::Value, k: &str| match c.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => "-".into(),
        Some(v) => v.to_string(),
    };
    for c in v["containers"].as_array().into_iter().flatten() {
        let health = if c["healthy"].as_bool() == Some(true) {
            "ok"
        } else {
            "down"
        };
        println!(
            "{:<14} {:<11} {:>8} {:<12} {:<8} {:>8}  {}",
            s(c, "roles"),
            s(c, "state"),
            s(c, "pid"),
            s(c, "version"),
            health,
            s(c, "restarts"),
            s(c, "last_exit")
        );
    }
    Ok(())
}
