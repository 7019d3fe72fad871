//! `mover`: the one binary. Parses arguments, calls into the libraries, renders progress and
//! results, maps errors to exit codes. No replication logic lives here.

#![forbid(unsafe_code)]

mod api;
mod cluster;
mod compat;
mod demo;
mod drill;
mod events;
mod exit;
mod keys;
mod node;
mod policy;
mod progress;
mod relationship;
mod reverse;
mod sides;
mod spec;
mod status;
mod token;
mod unreadable;
mod upgrade;
mod view;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mover::receiver::{ReceiveOptions, Receiver};
use mover::sender::{send_with_retry_each, SendOptions};
use mover::Progress;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "mover",
    version,
    about = "Disaster-recovery data mover: replicate directory trees between nodes",
    long_about = "Disaster-recovery data mover: replicates a directory tree from a source node to a target \
node over TCP with a thread-per-core io_uring engine.\n\nAs a service (one daemon per node):\n  \
mover daemon --data-dir /var/lib/mover                 # on both nodes\n  \
export MOVER_TOKEN=$(cat /var/lib/mover/admin.token)\n  \
mover relationship create --source-path /srv/data --target-address TARGET --target-path /srv/replica   # source\n  \
mover relationship authorize ID                        # target\n  \
mover status --watch                                   # either\n\n\
A running daemon is driven over its REST API with `mover relationship`, `mover status`, `mover events`, \
`mover audit`, `mover node` and `mover token` (--api URL or MOVER_API, --token or MOVER_TOKEN).\n\n\
The data plane on its own (two shells; sessions are encrypted, and each side pins the other's \
certificate, which `mover identity` prints):\n  \
mover receive --listen 127.0.0.1:3712 --root /srv/replica --peer-fingerprint <the sender's>\n  \
mover send /srv/data --to 127.0.0.1:3712 --peer-fingerprint <the receiver's>\n\n\
Exit codes: 0 ok, 1 unexpected error, 2 usage, 3 verification failed, 4 protocol or peer error, \
5 I/O error, 6 source changed while being read, 7 not permitted by the daemon (401/403 or no token), \
8 not found (404), 9 refused as invalid or conflicting (400/409), 10 daemon unreachable or failed \
(connection error, 5xx, 502 peer unreachable), 11 target file system full (the job was reverted), \
12 destination busy (another receiver or session), 13 destination state unusable (corrupt \
recovery point or journal)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// `--transport` and `--rdma-device` of `send` and `receive`.
#[derive(clap::Args, Clone)]
struct TransportArgs {
    /// Transport of the data (worker) connections: auto (RDMA when both sides are built with
    /// it and an active RDMA port carries the connection's address, else TCP), tcp, or rdma
    /// (RDMA or an error). After an RDMA failure mid-job the retry uses TCP.
    #[arg(long, value_name = "auto|tcp|rdma", default_value = "auto")]
    transport: mover::transport::select::Choice,
    /// The RDMA device (and port) to use; default: the one whose GID holds the address.
    #[arg(long, value_name = "NAME[:PORT]")]
    rdma_device: Option<mover::transport::select::DeviceSpec>,
}

impl TransportArgs {
    /// The RDMA policy, checked: `--transport rdma` fails here where RDMA cannot work.
    fn policy(&self) -> Result<mover::transport::select::RdmaPolicy> {
        let p = mover::transport::select::RdmaPolicy::new(self.transport, self.rdma_device.clone());
        p.check()?;
        Ok(p)
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum VerifyArg {
    Changed,
    Full,
}

#[derive(Subcommand)]
enum Cmd {
    /// Receive replication sessions into a destination directory.
    Receive {
        /// Address to listen on, e.g. 127.0.0.1:3712 (port 0 picks a free port and prints it).
        #[arg(long, required_unless_present_any = ["revert", "scrub"])]
        listen: Option<SocketAddr>,
        /// Destination root; everything the sender has is mirrored beneath it, nothing outside.
        #[arg(long)]
        root: PathBuf,
        /// Exit after one session: status 0 only if it completed and verified.
        #[arg(long)]
        once: bool,
        /// Accepted for compatibility: every session now ends with syncfs before its recovery
        /// point is committed, so a verified session is always durable.
        #[arg(long, hide = true)]
        fsync: bool,
        /// Roll the destination back to its last recovery point (undo an interrupted job) and
        /// exit; --listen is not needed.
        #[arg(long)]
        revert: bool,
        /// Machine-readable output: one JSON object per line ({"listening":..} first, then one per session).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        peers: keys::PeerArgs,
        /// Keep setuid and setgid bits of replicated files (they are cleared otherwise).
        #[arg(long)]
        allow_setuid: bool,
        /// Create replicated character and block devices (they are left out otherwise).
        #[arg(long)]
        allow_devices: bool,
        /// While a large file is written, flush it and log what is on disk every N MiB, so a
        /// job interrupted inside the file resumes there (smaller: less resent, more fsyncs).
        #[arg(long, value_name = "MIB", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=65536))]
        checkpoint_mib: u64,
        /// How each session verifies the destination: `changed` checks what the job changed
        /// (against the recovery point it started from); `full` compares every entry with the
        /// disk, repairs what differs and walks the whole destination.
        #[arg(long, value_enum, default_value = "changed")]
        verify: VerifyArg,
        /// Compare the destination at rest with its recovery point (a full verifying walk)
        /// and exit: status 0 if it is exactly the recovery point; --listen is not needed.
        #[arg(long, conflicts_with = "revert")]
        scrub: bool,
        #[command(flatten)]
        net: TransportArgs,
    },
    /// Send a directory tree to a receiver; files whose size and mtime match are skipped.
    Send {
        /// Source directory.
        src: PathBuf,
        /// Receiver address, HOST:PORT.
        #[arg(long)]
        to: String,
        /// Worker threads (default: CPUs in this process's affinity mask).
        #[arg(long)]
        threads: Option<usize>,
        /// Print one JSON object with the result instead of a summary.
        #[arg(long)]
        json: bool,
        /// Read large files through the page cache only (default: ranges not in the page cache
        /// are read with O_DIRECT).
        #[arg(long)]
        no_direct: bool,
        /// State directory of this replication stream: keeps the manifest of what the receiver
        /// holds, so later jobs send only changed blocks and renames (created if missing).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Sessions to try before giving up when the connection or the receiver fails; each
        /// retry resumes the interrupted job (backoff from 0.2 s doubling to 30 s).
        #[arg(long, default_value_t = 5)]
        retries: u32,
        /// How to take one point in time of the source: btrfs (read-only snapshot; the source
        /// must be a subvolume), reflink (clone every file, XFS/btrfs), plain (read live files,
        /// retry any that change while read). Default: btrfs for a subvolume, else plain.
        #[arg(long)]
        snapshot: Option<mover::snapshot::Provider>,
        /// Send file data at most this fast, in MiB/s (default: as fast as it goes).
        #[arg(long, value_name = "MIB_PER_SEC", value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
        bwlimit: Option<u64>,
        /// A directory (relative to SRC; "" for SRC itself) that changed since the last job
        /// that succeeded; given at least once, the walk reads only these (see
        /// `SendOptions::changed`). For measurements until a watcher provides the set.
        #[arg(long, value_name = "PATH", hide = true)]
        changed_dir: Vec<PathBuf>,
        /// Run this many jobs in this process, sharing a manifest cache (`SendOptions::cache`),
        /// each after the first when a line arrives on standard input. For measurements of
        /// what a daemon's back-to-back jobs cost.
        #[arg(long, default_value_t = 1, hide = true)]
        repeat: u32,
        #[command(flatten)]
        peers: keys::PeerArgs,
        #[command(flatten)]
        net: TransportArgs,
    },
    /// Print this node's certificate fingerprint (creating the certificate if missing), for a
    /// peer's --peer-fingerprint.
    Identity {
        /// Directory with the certificate and key (node.crt, node.key).
        #[arg(long, env = "MOVER_IDENTITY", default_value = keys::DEFAULT_IDENTITY)]
        identity: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Show CPU / NUMA / device / NIC topology and the worker pinning plan.
    Hw {
        /// sysfs root to read (for inspecting a captured tree).
        #[arg(long, default_value = "/sys")]
        sysfs: PathBuf,
        /// Workers to plan for (default: CPUs in the affinity mask).
        #[arg(long)]
        threads: Option<u32>,
        /// Plan near the block device holding this path.
        #[arg(long)]
        near: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Print the tree hash of a directory (and with --content, a hash of all file data).
    Hash {
        dir: PathBuf,
        /// Also read and hash every file's contents.
        #[arg(long)]
        content: bool,
        /// Leave numeric owners out (as when the receiver is not root).
        #[arg(long)]
        no_owners: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run the node daemon: REST API, relationships, scheduling, peer TLS, data-plane jobs.
    #[command(
        long_about = "Run the node daemon (one per node; it serves both roles: source of some \
relationships, target of others).\n\nIt listens for peer daemons on --listen (mutual TLS, default \
0.0.0.0:3712) and for the REST API on --api (default 127.0.0.1:3713; plain HTTP only on loopback, \
else over TLS with --api-tls or --api-cert/--api-key). State, the node's \
certificate and the first admin token (admin.token) live in --data-dir. Settings come from flags, \
then the TOML file (--config, default /etc/mover/mover.toml when present: keys data_dir, listen, api, \
continuous_interval_secs, threads, max_pause_in_session_secs, allowed_source_roots, insecure_plaintext, \
api_tls, api_cert, api_key, scrub_interval_secs, change_detection, settle_ms, rescan_interval_secs, \
watch_max_dirs, cluster, node_name, roles). \
Continuous replication is event-driven: the source is watched (change_detection = \"auto\", fanotify \
else inotify; \"interval\" turns watching off) and a job starts settle_ms (default 100) after the last \
change, walking only the directories that changed; without a watch a job runs every \
continuous_interval_secs (default 10). \
Data-plane sessions are encrypted (AES-256-GCM, keys from the peers' mutual TLS) unless both nodes run \
with --insecure-plaintext. SIGTERM stops running jobs at a chunk boundary; the next start \
resumes them.\n\nExample:\n  mover daemon --data-dir /var/lib/mover\n  export MOVER_TOKEN=$(cat /var/lib/mover/admin.token)\n  mover status"
    )]
    Daemon(node::DaemonArgs),
    /// Self-contained demo: generate a tree, replicate it between two processes on loopback, verify.
    Demo {
        /// Work directory (default: a temporary directory, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Number of small files to generate.
        #[arg(long, default_value_t = 5000)]
        files: usize,
    },
    // Control-plane commands: clients of a running daemon's REST API (docs/api.md).
    /// Create, inspect, change, authorize and drive replication relationships on a daemon.
    Relationship {
        #[command(subcommand)]
        cmd: relationship::RelationshipCmd,
    },
    /// Table of all relationships: state, recovery point age, last attempt, job progress.
    Status(status::StatusArgs),
    /// What an operator must notice: job failures and retries, authorization requests,
    /// failovers, unreachable peers, blackout windows (--follow to keep watching).
    #[command(long_about = events::EVENTS_HELP)]
    Events(events::EventsArgs),
    /// The audit log of mutating API calls: who, what, result (admin only).
    #[command(long_about = events::AUDIT_HELP)]
    Audit(events::AuditArgs),
    /// This node's daemon: software version, certificate fingerprint, peer and API addresses.
    #[command(
        long_about = "Show this node's daemon: its software version, the fingerprint of its certificate, and its peer and API addresses. Give the target's fingerprint to `mover relationship create --target-fingerprint` on the source, and check the source's against the peer_fingerprint a proposed relationship shows on the target before authorizing it.

`mover node run` runs the daemon as containers by role that restart alone, and `mover node \
containers` shows them.

Example:
  mover node"
    )]
    #[command(args_conflicts_with_subcommands = true)]
    Node {
        #[command(subcommand)]
        cmd: Option<node::NodeCmd>,
        #[command(flatten)]
        api: api::ApiArgs,
    },
    /// Create, list and delete the daemon's API tokens (admin only).
    Token {
        #[command(subcommand)]
        cmd: token::TokenCmd,
    },
    /// DR drills on a target node: writable copies of the latest recovery point, made and
    /// verified while replication goes on.
    Drill {
        #[command(subcommand)]
        cmd: drill::DrillCmd,
    },
    /// Snapshot policies on a source node: schedules that keep read-only points in time of
    /// the relationships linking them, replicated and kept on the target.
    Policy {
        #[command(subcommand)]
        cmd: policy::PolicyCmd,
    },
    /// Policy snapshots kept on this node (source or target): list and release.
    Snapshot {
        #[command(subcommand)]
        cmd: policy::SnapshotCmd,
    },
    /// Which mover releases replicate with which: the matrix, or `check A B` for one pair
    /// (exit 1 when incompatible).
    Compat(compat::CompatArgs),
    /// The etcd cluster this node's daemon joined (`mover daemon --cluster`): members, leader.
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
    },
    /// Before upgrading this node: `check --to VERSION` reports what stands in the way.
    Upgrade {
        #[command(subcommand)]
        cmd: upgrade::UpgradeCmd,
    },
}

/// A `--changed-dir` as the walk names it: components joined by `/`, no `.`, no trailing
/// slash, the source itself empty (a name spelt otherwise would match nothing, and what it
/// names would not be read).
fn relative_dir(p: &std::path::Path) -> Result<Vec<u8>> {
    use std::path::Component;
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(n.as_encoded_bytes());
            }
            _ => anyhow::bail!(
                "--changed-dir {}: a path relative to the source, without `..`",
                p.display()
            ),
        }
    }
    Ok(out)
}

fn resolve(to: &str) -> Result<SocketAddr> {
    to.to_socket_addrs()
        .with_context(|| format!("resolving {to}"))?
        .next()
        .with_context(|| format!("{to} resolves to no address"))
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Receive {
            listen,
            root,
            once,
            fsync: _,
            revert,
            json,
            peers,
            allow_setuid,
            allow_devices,
            checkpoint_mib,
            verify,
            scrub,
            net,
        } => {
            if scrub {
                let rep = mover::receiver::scrub_root(&root)?;
                if json {
                    println!("{}", serde_json::to_string(&rep)?);
                }
                return match rep {
                    None => {
                        if !json {
                            println!("nothing to scrub: no recovery point yet, or an interrupted job waits (resume or --revert it)");
                        }
                        Ok(())
                    }
                    Some(r) if r.ok => {
                        if !json {
                            println!(
                                "scrubbed: {} entries are recovery point {}",
                                r.entries, r.recovery_point
                            );
                        }
                        Ok(())
                    }
                    Some(r) => Err(mover::Error::Verify(format!(
                        "the destination is not its recovery point {}: {}",
                        r.recovery_point,
                        r.difference.unwrap_or_default()
                    ))
                    .into()),
                };
            }
            if revert {
                let rep = mover::receiver::revert_root(&root)?;
                if json {
                    println!("{}", serde_json::to_string(&rep)?);
                } else if rep.reverted {
                    let rp = rep
                        .recovery_point
                        .as_ref()
                        .map(|r| r.id.to_string())
                        .unwrap_or_default();
                    println!(
                        "reverted to recovery point {rp} ({} undo records applied)",
                        rep.undone
                    );
                } else {
                    println!("nothing to revert: the destination is at its last recovery point");
                }
                return Ok(());
            }
            let listen = listen.context("--listen is required")?;
            let progress = Arc::new(Progress::default());
            let mut opts = ReceiveOptions {
                root,
                once,
                policy: mover::receiver::policy::ReplicaPolicy {
                    allow_setid: allow_setuid,
                    allow_devices,
                },
                checkpoint_bytes: Some(checkpoint_mib << 20),
                verify: match verify {
                    VerifyArg::Changed => mover::receiver::Verify::Changed,
                    VerifyArg::Full => mover::receiver::Verify::Full,
                },
                rdma: Some(net.policy()?),
                ..Default::default()
            };
            let (r, addr, fingerprint) = match peers.protection()? {
                keys::Protection::Plaintext => {
                    opts.insecure_plaintext = true;
                    let r = Receiver::bind(listen, opts, progress)?;
                    let addr = r.local_addr()?;
                    (r, addr, None)
                }
                keys::Protection::Sealed { identity, pins } => {
                    // One port: TLS key exchanges go to the key server, data-plane connections
                    // to the receiver's inbox.
                    let tickets = Arc::new(mover::Tickets::default());
                    opts.tickets = Some(tickets.clone());
                    let (inbox, incoming) = std::sync::mpsc::channel();
                    let r = Receiver::from_inbox(incoming, opts, progress)?;
                    let listener = std::net::TcpListener::bind(listen)
                        .with_context(|| format!("listening on {listen}"))?;
                    let addr = listener.local_addr()?;
                    let fp = identity.fingerprint.clone();
                    let server = control::standalone::KeyServer {
                        identity,
                        allowed: pins,
                        tickets,
                    };
                    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    std::thread::Builder::new()
                        .name("mover-accept".into())
                        .spawn(move || {
                            if let Err(e) = server.serve(listener, inbox, stop) {
                                eprintln!("mover: accepting connections failed: {e}");
                            }
                        })
                        .context("starting the accept thread")?;
                    (r, addr, Some(fp))
                }
            };
            let encrypted = fingerprint.is_some();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "listening": addr.to_string(), "encrypted": encrypted, "fingerprint": fingerprint })
                );
            } else {
                match &fingerprint {
                    Some(fp) => {
                        eprintln!("mover: listening on {addr} (encrypted; this node is {fp})")
                    }
                    None => eprintln!("mover: listening on {addr} (INSECURE: sessions in clear)"),
                }
            }
            let rep = r.serve(|rep| {
                // A closed stdout must not turn a verified session into a crash.
                let mut out = std::io::stdout().lock();
                let _ = if json {
                    writeln!(out, "{}", serde_json::to_string(rep).unwrap_or_default())
                } else if rep.ok {
                    writeln!(
                        out,
                        "session {}: verified, {} entries, {} files received ({} bytes), {} unchanged, {} removed, {:.2}s",
                        rep.session, rep.entries, rep.files_received, rep.bytes, rep.files_unchanged, rep.removed, rep.seconds
                    )
                } else {
                    writeln!(out, "session {}: FAILED: {}", rep.session, rep.error.as_deref().unwrap_or("?"))
                };
            })?;
            if !rep.ok {
                return Err(exit::SessionFailed(rep.error.unwrap_or_default()).into());
            }
            Ok(())
        }
        Cmd::Send {
            src,
            to,
            threads,
            json,
            no_direct,
            state,
            retries,
            snapshot,
            bwlimit,
            changed_dir,
            repeat,
            peers,
            net,
        } => {
            let to = resolve(&to)?;
            let protection = peers.protection()?;
            let opts = SendOptions {
                src,
                to,
                threads: threads.unwrap_or_else(mover::default_threads),
                direct: !no_direct,
                state,
                snapshot,
                session: None,
                id_map: None,
                secret: None,
                pin: Vec::new(),
                changed: if changed_dir.is_empty() {
                    None
                } else {
                    Some(mover::tree::narrow::ChangedDirs {
                        dirs: changed_dir
                            .iter()
                            .map(|p| relative_dir(p))
                            .collect::<Result<_>>()?,
                    })
                },
                cache: (repeat > 1).then(|| Arc::new(mover::sender::ManifestCache::new())),
                spread: None,
                write_places: Vec::new(),
            };
            let transport: Arc<dyn mover::Transport> =
                Arc::new(mover::transport::select::Negotiated(net.policy()?));
            let on_retry = |n: u32, e: &mover::Error, pause: std::time::Duration| {
                eprintln!(
                    "mover: attempt {n} failed: {e}; retrying in {:.1}s",
                    pause.as_secs_f64()
                );
            };
            // Each session gets a fresh secret (and ticket) from the receiver.
            let before = |o: &mut SendOptions| -> mover::Result<()> {
                if let keys::Protection::Sealed { identity, pins } = &protection {
                    o.secret = Some(keys::ask_secret(to, identity, &pins[0])?);
                }
                Ok(())
            };
            let mut line = String::new();
            for job in 0..repeat.max(1) {
                if job > 0 {
                    line.clear();
                    if std::io::stdin().read_line(&mut line)? == 0 {
                        break;
                    }
                }
                let progress = Arc::new(Progress::default());
                progress.control.set_rate(bwlimit.map(|m| m << 20));
                let bar = progress::Bar::start(progress.clone(), !json);
                let res = send_with_retry_each(
                    &opts,
                    &progress,
                    retries.max(1),
                    &transport,
                    before,
                    on_retry,
                );
                bar.finish();
                let rep = res?;
                if json {
                    println!("{}", serde_json::to_string(&rep)?);
                } else {
                    let mb = rep.bytes as f64 / 1e6;
                    println!(
                        "sent {} of {} files, {:.1} MB in {:.2}s ({:.1} MB/s), {} bytes on the wire ({}), {} unchanged; verified tree {}",
                        rep.files, rep.files_total, mb, rep.seconds, mb / rep.seconds.max(1e-9), rep.wire_bytes, rep.transport, rep.files_unchanged, rep.tree_hash
                    );
                }
            }
            Ok(())
        }
        Cmd::Identity { identity, json } => {
            let id = keys::load_identity(&identity)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "fingerprint": id.fingerprint, "identity": identity })
                );
            } else {
                println!("{}", id.fingerprint);
            }
            Ok(())
        }
        Cmd::Hw {
            sysfs,
            threads,
            near,
            json,
        } => {
            let topo = hw::Topology::from_sysfs(&sysfs)?;
            let allowed = hw::allowed_cpus()?;
            let n = threads.unwrap_or(allowed.len() as u32);
            let dev = near
                .as_deref()
                .and_then(|p| hw::block_device_for_path(&sysfs, p));
            let plan = hw::PinningPlan::plan(&topo, &allowed, n, dev.as_deref())?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "topology": topo, "allowed_cpus": allowed, "plan": plan })
                );
            } else {
                print!("{}", topo.render_text());
                println!(
                    "allowed CPUs: {:?}",
                    allowed.iter().map(|c| c.0).collect::<Vec<_>>()
                );
                print!("{}", plan.render_text());
            }
            Ok(())
        }
        Cmd::Hash {
            dir,
            content,
            no_owners,
            json,
        } => {
            let opts = mover::tree::hash::HashOptions { owners: !no_owners };
            let (tree, data, n) = mover::tree::hash::hash_dir(&dir, opts, content)?;
            if json {
                let data = data.map(|d| format!("{d:032x}"));
                println!(
                    "{}",
                    serde_json::json!({ "entries": n, "tree_hash": format!("{tree:032x}"), "content_hash": data })
                );
            } else {
                match data {
                    Some(d) => println!("{tree:032x} {d:032x} {n} entries"),
                    None => println!("{tree:032x} {n} entries"),
                }
            }
            Ok(())
        }
        Cmd::Demo { dir, files } => demo::run(dir, files),
        Cmd::Daemon(a) => node::daemon(a),
        Cmd::Relationship { cmd } => relationship::run(cmd),
        Cmd::Status(a) => status::run(a),
        Cmd::Events(a) => events::run_events(a),
        Cmd::Audit(a) => events::run_audit(a),
        Cmd::Token { cmd } => token::run(cmd),
        Cmd::Drill { cmd } => drill::run(cmd),
        Cmd::Policy { cmd } => policy::run_policy(cmd),
        Cmd::Snapshot { cmd } => policy::run_snapshot(cmd),
        Cmd::Compat(a) => exit_with(compat::run(a)?),
        Cmd::Cluster { cmd } => exit_with(cluster::run(cmd)?),
        Cmd::Upgrade { cmd } => exit_with(upgrade::run(cmd)?),
        Cmd::Node { cmd, api } => node::run(cmd, api),
    }
}

/// A command that answered with a verdict: exits with its code (0 returns normally).
fn exit_with(code: i32) -> Result<()> {
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

fn main() {
    // Before any thread exists (see the function).
    mover::reserve_fd_table();
    let cli = Cli::parse();
    // The daemon's log is its operators' record of what happened; one-shot commands stay quiet.
    let level = if matches!(
        cli.cmd,
        Cmd::Daemon(_)
            | Cmd::Node {
                cmd: Some(node::NodeCmd::Run(_)),
                ..
            }
    ) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOVER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("mover: error: {e:#}");
        std::process::exit(exit::code(&e));
    }
}

#[cfg(test)]
mod tests {
    use super::relative_dir;
    use std::path::Path;

    #[test]
    fn changed_dir_is_named_as_the_walk_names_it() {
        for (given, want) in [
            ("", ""),
            (".", ""),
            ("./a/b/", "a/b"),
            ("a//b", "a/b"),
            ("d005", "d005"),
        ] {
            assert_eq!(relative_dir(Path::new(given)).unwrap(), want.as_bytes());
        }
        assert!(relative_dir(Path::new("/abs")).is_err());
        assert!(relative_dir(Path::new("a/../b")).is_err());
    }
}
