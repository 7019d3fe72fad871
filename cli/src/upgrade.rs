//! `mover upgrade check`: what stands between this node and a release (docs/api.md
//! "Upgrades").

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
}

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
    }
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
