//! `mover upgrade check|start|status`: what stands between this node and a release, and
//! upgrading a single node onto it (docs/api.md "Upgrades").

use crate::api::ApiArgs;
use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand)]
pub enum UpgradeCmd {
    /// Report green, yellow and red items before upgrading this node to VERSION, each with its
    /// remedy; exit 1 when an item is red (it blocks the upgrade).
    #[command(
        long_about = "Report what stands between this node and a release: the caller's privilege, the version step (only newer, no skipped major), the nodes of its relationships online, shards being reassigned, relationships needing attention, 4 GiB free where the release is staged, running jobs, and whether every peer's release replicates with the new one (else which relationships to make writable and reconnect after). Green is fine, yellow is worth a look, red blocks the upgrade (exit 1).

Examples:
  mover upgrade check --to 0.2.0
  mover upgrade check --to 0.2.0 --staging /srv/stage --json"
    )]
    Check {
        /// The release to upgrade to.
        #[arg(long, value_name = "VERSION")]
        to: String,
        /// Where the new release would be staged (default: the daemon's data directory).
        #[arg(long, value_name = "DIR")]
        staging: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Upgrade this node (a single `--roles all` daemon) to VERSION: stage the package checked
    /// by its SHA-256, then restart the daemon onto it; its jobs resume.
    #[command(
        long_about = "Upgrade this node to a new release without losing replication progress.

Phase `distribute` copies PACKAGE (the new `mover` binary, a path on the daemon's node) into the daemon's data directory and checks it against the SHA-256 you give (from the release's checksum file): a mismatch stages nothing. Phase `restart` runs the upgrade checker (a red item refuses), keeps the running binary for a rollback, installs the staged one at the running binary's path, stops the daemon as SIGTERM does (running jobs stop at a chunk boundary and keep their progress) and starts the new release in its place; the jobs resume. Without --phase both run; each phase can be run or rerun alone, and an interrupted upgrade is rerun where it stopped. The command waits until the node reports the new release (exit 0) or the restart failed (exit 1).

Examples:
  sha256sum mover-0.2.0
  mover upgrade start --to 0.2.0 --package /tmp/mover-0.2.0 --sha256 <hex>
  mover upgrade start --to 0.2.0 --package /tmp/mover-0.2.0 --sha256 <hex> --phase distribute
  mover upgrade start --to 0.2.0 --sha256 <hex> --phase restart"
    )]
    Start {
        #[arg(long, value_name = "VERSION")]
        to: String,
        /// The new `mover` binary, as a path on the daemon's node.
        #[arg(long, value_name = "PATH")]
        package: Option<String>,
        /// The package's SHA-256 (64 hex digits), from a source you trust.
        #[arg(long, value_name = "HEX")]
        sha256: String,
        /// Run one phase only (a single node: distribute or restart; a cluster: distribute,
        /// data, control, api, or restart for the last three).
        #[arg(long, value_enum)]
        phase: Option<Phase>,
        /// In a cluster: nodes restarted at once in the data, control and api phases.
        #[arg(long, value_name = "N", default_value_t = 1)]
        batch_size: usize,
        /// In a cluster: upgrade only these nodes (comma-separated names).
        #[arg(long, value_name = "NAMES", value_delimiter = ',')]
        only: Vec<String>,
        /// In a cluster: leave these nodes out (comma-separated names).
        #[arg(long, value_name = "NAMES", value_delimiter = ',')]
        skip: Vec<String>,
        /// How long to wait for the upgrade to finish (default: 120 s for a node, 900 s for a
        /// cluster).
        #[arg(long, value_name = "SECS")]
        wait_secs: Option<u64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show this node's containers (release, health) and its latest upgrade's phase.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Phase {
    Distribute,
    Restart,
    Data,
    Control,
    Api,
}

/// How often `start` asks whether the restarted node is back.
const POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Exit code when the report has a red item.
pub const BLOCKED: i32 = 1;

pub fn run(cmd: UpgradeCmd) -> Result<i32> {
    match cmd {
        UpgradeCmd::Check { to, staging, api } => {
            let mut path = format!("/v1/upgrade/check?to={}", encode(&to));
            if let Some(s) = &staging {
                path.push_str(&format!("&staging={}", encode(s)));
            }
            let v = api
                .client()
                .get(&path)
                .with_context(|| format!("checking an upgrade to {to}"))?;
            let blocked = v["blocked"].as_bool().unwrap_or(true);
            if api.json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!(
                    "upgrade {} -> {}: {}",
                    v["from"].as_str().unwrap_or("?"),
                    v["to"].as_str().unwrap_or("?"),
                    if blocked { "BLOCKED" } else { "ready" }
                );
                for i in v["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
                    print_item(i);
                }
            }
            Ok(if blocked { BLOCKED } else { 0 })
        }
        UpgradeCmd::Start {
            to,
            package,
            sha256,
            phase,
            batch_size,
            only,
            skip,
            wait_secs,
            api,
        } => {
            let client = api.client();
            let package = package.map(|p| absolute(&p));
            let phase_name = match phase {
                Some(Phase::Distribute) => "distribute",
                Some(Phase::Restart) => "restart",
                Some(Phase::Data) => "data",
                Some(Phase::Control) => "control",
                Some(Phase::Api) => "api",
                None => "all",
            };
            if client.get("/v1/cluster").is_ok() {
                let body = serde_json::json!({
                    "to": to,
                    "package": package,
                    "sha256": sha256,
                    "phase": phase_name,
                    "batch_size": batch_size,
                    "only": only,
                    "skip": skip,
                });
                return rolling(&api, &client, &body, &to, wait_secs.unwrap_or(900));
            }
            if batch_size != 1 || !only.is_empty() || !skip.is_empty() {
                anyhow::bail!(
                    "--batch-size, --only and --skip are for a cluster; this node is not in one"
                );
            }
            let wait_secs = wait_secs.unwrap_or(120);
            // A single node restarts whole: its data and control phases are the restart.
            let phase_name = match phase_name {
                "data" | "control" => "restart",
                "api" => anyhow::bail!("a single node's API restarts with it: use --phase restart"),
                p => p,
            };
            let body = serde_json::json!({
                "to": to,
                "package": package,
                "sha256": sha256,
                "phase": phase_name,
            });
            let rec = client
                .post("/v1/upgrade/start", &body)
                .with_context(|| format!("starting the upgrade to {to}"))?;
            if rec["phase"] == "distributed" {
                report(&api, &rec, "staged and checked")?;
                return Ok(0);
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_secs);
            let mut last_error = String::new();
            while std::time::Instant::now() < deadline {
                std::thread::sleep(POLL);
                // The node is down between its stop and the new release's start.
                match client.get("/v1/upgrade/status") {
                    Ok(v) if v["upgrade"]["phase"] == "done" => {
                        report(&api, &v["upgrade"], "done: the node runs the new release")?;
                        return Ok(0);
                    }
                    Ok(v) if v["upgrade"]["phase"] == "failed" => {
                        report(&api, &v["upgrade"], "FAILED")?;
                        return Ok(BLOCKED);
                    }
                    Ok(_) => {}
                    Err(e) => last_error = e.to_string(),
                }
            }
            anyhow::bail!(
                "the node did not come back on {to} within {wait_secs} s (last: {last_error}); \
                 `mover upgrade status` shows where it stands, and rerunning resumes"
            )
        }
        UpgradeCmd::Status { api } => {
            let v = api
                .client()
                .get("/v1/upgrade/status")
                .context("reading the upgrade status")?;
            if api.json {
                println!("{}", serde_json::to_string(&v)?);
                return Ok(0);
            }
            println!(
                "{:<22} {:<6} {:<10} {:<8} UPTIME",
                "NODE", "ROLE", "VERSION", "HEALTH"
            );
            for c in v["containers"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                println!(
                    "{:<22} {:<6} {:<10} {:<8} {} s",
                    c["node"].as_str().unwrap_or("?"),
                    c["role"].as_str().unwrap_or("?"),
                    c["version"].as_str().unwrap_or("?"),
                    c["health"].as_str().unwrap_or("?"),
                    c["uptime_secs"]
                );
            }
            match v["upgrade"].as_object() {
                None => println!("no upgrade recorded"),
                Some(u) => println!(
                    "upgrade {} -> {}: {}{}",
                    u["from"].as_str().unwrap_or("?"),
                    u["to"].as_str().unwrap_or("?"),
                    u["phase"].as_str().unwrap_or("?"),
                    u.get("error")
                        .and_then(Value::as_str)
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
            }
            Ok(0)
        }
    }
}

/// A cluster's rolling upgrade: planned (or resumed) on the leader, then followed until it is
/// done (exit 0) or failed (exit 1). Nodes restart meanwhile, the one asked too: errors from
/// its API in between are waited out.
fn rolling(
    api: &ApiArgs,
    client: &crate::api::Api,
    body: &Value,
    to: &str,
    wait_secs: u64,
) -> Result<i32> {
    let started = client
        .post("/v1/upgrade/rolling", body)
        .with_context(|| format!("starting the rolling upgrade to {to}"))?;
    if !api.json {
        println!(
            "rolling upgrade to {to} {} on {} nodes",
            if started["resumed"] == true {
                "resumed"
            } else {
                "planned"
            },
            started["plan"]["nodes"].as_array().map_or(0, Vec::len)
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_secs);
    let (mut last_error, mut last_line) = (String::new(), String::new());
    while std::time::Instant::now() < deadline {
        std::thread::sleep(POLL);
        let v = match client.get("/v1/upgrade/status") {
            Ok(v) => v,
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        let state = v["rolling"]["state"].as_str().unwrap_or("?").to_string();
        if !api.json {
            let line = progress_line(&v);
            if line != last_line {
                println!("  {line}");
                last_line = line;
            }
        }
        match state.as_str() {
            "done" | "failed" => {
                if api.json {
                    println!("{}", serde_json::to_string(&v)?);
                } else if state == "failed" {
                    println!(
                        "FAILED: {}",
                        v["rolling"]["error"].as_str().unwrap_or("no reason given")
                    );
                } else {
                    println!("done: every container runs {to}");
                }
                return Ok(if state == "done" { 0 } else { BLOCKED });
            }
            _ => {}
        }
    }
    anyhow::bail!(
        "the rolling upgrade to {to} did not finish within {wait_secs} s (last error: \
         {last_error}); `mover upgrade status` shows where it stands, and rerunning the same \
         command resumes it"
    )
}

/// Each node's step, one line: `a: data requested, b: distribute done, ...`.
fn progress_line(v: &Value) -> String {
    v["steps"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(n, s)| {
                    format!(
                        "{n}: {} {}",
                        s["phase"].as_str().unwrap_or("-"),
                        s["state"].as_str().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn report(api: &ApiArgs, rec: &Value, what: &str) -> Result<()> {
    if api.json {
        println!("{}", serde_json::to_string(rec)?);
    } else {
        println!(
            "upgrade {} -> {}: {what}",
            rec["from"].as_str().unwrap_or("?"),
            rec["to"].as_str().unwrap_or("?")
        );
        if let Some(e) = rec["error"].as_str() {
            println!("  {e}");
        }
    }
    Ok(())
}

/// The package path as the daemon must see it (it does not share the CLI's directory).
fn absolute(p: &str) -> String {
    std::path::absolute(p)
        .map(|a| a.display().to_string())
        .unwrap_or_else(|_| p.to_string())
}

fn print_item(i: &Value) {
    let level = i["level"].as_str().unwrap_or("?");
    println!(
        "  [{:<6}] {:<18} {}",
        level,
        i["check"].as_str().unwrap_or("?"),
        i["detail"].as_str().unwrap_or("")
    );
    if let Some(r) = i["remedy"].as_str() {
        println!("  {:8} {:<18} fix: {r}", "", "");
    }
}

/// Percent-encodes a query value (versions and paths: everything but unreserved bytes).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
