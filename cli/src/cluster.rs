//! `mover cluster members|status`: the etcd cluster as the node's daemon sees it (docs/api.md
//! "Cluster").

use crate::api::ApiArgs;
use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Every node that joined: roles, release, up, drained (`drain`) or down, which one leads,
    /// running jobs and throughput, its API address.
    Members {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// This node's link to etcd, the leader, and how many nodes are up; exit 1 when the node
    /// has no link to etcd or a node is down.
    #[command(
        long_about = "This node's link to etcd, the leader, and how many nodes are up. A node that stops heartbeating is shown down within the bound printed (its lease's life plus one renewal). Exit 1 when this node has no link to etcd or some node is down, so scripts can wait on it.

Example:
  mover cluster status --json"
    )]
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Exit code of `status` when the cluster is not whole.
pub const DEGRADED: i32 = 1;

fn members(v: &Value) -> &[Value] {
    v["members"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

pub fn run(cmd: ClusterCmd) -> Result<i32> {
    match cmd {
        ClusterCmd::Members { api } => {
            let v = api
                .client()
                .get("/v1/cluster")
                .context("reading the cluster")?;
            if api.json {
                println!("{}", serde_json::to_string(&v["members"])?);
                return Ok(0);
            }
            println!(
                "{:<20} {:<14} {:<10} {:<6} {:<7} {:>5} {:>12}  API",
                "NODE", "ROLES", "VERSION", "STATE", "LEADER", "JOBS", "MB/s"
            );
            for m in members(&v) {
                let roles: Vec<&str> = m["roles"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let r = &m["report"];
                println!(
                    "{:<20} {:<14} {:<10} {:<6} {:<7} {:>5} {:>12}  {}",
                    m["name"].as_str().unwrap_or("?"),
                    roles.join(","),
                    m["version"].as_str().unwrap_or("?"),
                    match (m["up"] == true, m["drain"]["drained"] == true) {
                        (true, false) => "up",
                        (true, true) => "drain",
                        (false, _) => "down",
                    },
                    if m["leader"] == true { "*" } else { "" },
                    r["jobs_running"]
                        .as_u64()
                        .map_or("-".into(), |n| n.to_string()),
                    r["throughput_bytes_per_sec"]
                        .as_f64()
                        .map_or("-".into(), |b| format!("{:.1}", b / 1e6)),
                    m["api"].as_str().unwrap_or("?"),
                );
                // Its containers, one line each, under a node run as containers.
                for c in r["containers"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    if c["roles"] == "all" {
                        continue;
                    }
                    println!(
                        "  container {:<14} {:<10} {:<6} pid {} restarts {}",
                        c["roles"].as_str().unwrap_or("?"),
                        c["version"].as_str().unwrap_or("?"),
                        if c["healthy"] == true { "ok" } else { "down" },
                        c["pid"],
                        c["restarts"]
                    );
                }
            }
            Ok(0)
        }
        ClusterCmd::Status { api } => {
            let v = api
                .client()
                .get("/v1/cluster")
                .context("reading the cluster")?;
            let all = members(&v).len();
            let up = members(&v).iter().filter(|m| m["up"] == true).count();
            let whole = v["connected"] == true && up == all;
            if api.json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!(
                    "node {}: {}",
                    v["this_node"].as_str().unwrap_or("?"),
                    if v["connected"] == true {
                        "connected to etcd".to_string()
                    } else {
                        format!(
                            "NOT connected to etcd ({})",
                            v["last_error"].as_str().unwrap_or("no answer yet")
                        )
                    }
                );
                println!("leader: {}", v["leader"].as_str().unwrap_or("none"));
                println!(
                    "nodes: {up} of {all} up (a node that stops is shown down within {} s)",
                    v["down_bound_secs"]
                );
                let held = v["relationships"].as_array().cloned().unwrap_or_default();
                let orphaned = held.iter().filter(|r| r["owner_up"] != true).count();
                println!(
                    "source relationships: {} held, {orphaned} on a node down (the leader takes those over when it can run them)",
                    held.len()
                );
                for r in held.iter().filter(|r| r["owner_up"] != true) {
                    println!(
                        "  {} held by {} (down)",
                        r["id"].as_str().unwrap_or("?"),
                        r["owner"].as_str().unwrap_or("?")
                    );
                }
            }
            Ok(if whole { 0 } else { DEGRADED })
        }
    }
}
