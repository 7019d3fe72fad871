//! `mover drill ...` on a target node: DR drills, writable copies of a relationship's latest
//! recovery point made while replication goes on (docs/api.md "Drills").

use crate::api::ApiArgs;
use crate::sides::{full_id, Role, TARGET};
use anyhow::{Context, Result};
use clap::Subcommand;
use control::api_types::StartDrill;
use serde_json::Value;

const DRILLS: &str = "/v1/replication/drills";

#[derive(Subcommand)]
pub enum DrillCmd {
    /// On the target node: copy the latest recovery point into a writable directory, verify it,
    /// and report the time to writable and the age of the data.
    #[command(
        long_about = "On the target node: make a DR drill of a relationship, a writable copy of its latest recovery point, while replication goes on. The copy is a btrfs snapshot where the target is a btrfs subvolume, else a reflink clone of every file (XFS, btrfs), else, with --allow-copy only, a full copy of the data (it takes the time and the space of the data). It is made between two jobs (a running job is waited for), then walked and compared with the recovery point; one that differs is removed and the command fails. The report gives the time to writable and the data's age.

Examples:
  mover drill start 4f0c1a2b
  mover drill start 4f0c1a2b --into /srv/drill --allow-copy --json"
    )]
    Start {
        /// Relationship id (target side), or a unique prefix of it.
        id: String,
        /// Where the copy goes, a directory that does not exist yet (default: beside the target
        /// directory, <target>.drill-<drill id>).
        #[arg(long, value_name = "DIR")]
        into: Option<String>,
        /// Make a full copy of the data where neither a snapshot nor reflinks are possible.
        #[arg(long)]
        allow_copy: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List this node's drills.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a drill's copy (all changes made in it are lost) and its record.
    Release {
        /// Drill id, as `mover drill list` shows it.
        drill: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("?")
}

fn num(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

pub fn run(cmd: DrillCmd) -> Result<()> {
    match cmd {
        DrillCmd::Start {
            id,
            into,
            allow_copy,
            api,
        } => {
            let c = api.client();
            let full = full_id(&c, Some(Role::Target), &id)
                .with_context(|| format!("drilling relationship {id}"))?;
            let v = c
                .post(
                    &format!("{TARGET}/{full}/drills"),
                    &StartDrill { into, allow_copy },
                )
                .with_context(|| format!("drilling relationship {full}"))?;
            if api.json {
                println!("{}", serde_json::to_string(&v)?);
                return Ok(());
            }
            println!(
                "drill {}: {} is writable, verified as recovery point {} ({} entries, by {}); \
                 writable after {:.2} s, data {:.1} s old (source time {})",
                text(&v, "id"),
                text(&v, "path"),
                text(&v, "recovery_point"),
                v.get("entries").and_then(Value::as_u64).unwrap_or(0),
                text(&v, "method"),
                num(&v, "seconds_to_writable"),
                num(&v, "data_age_seconds"),
                text(&v, "recovery_point_time"),
            );
        }
        DrillCmd::List { api } => {
            let v = api.client().get(DRILLS).context("listing drills")?;
            if api.json {
                println!("{}", serde_json::to_string(&v)?);
                return Ok(());
            }
            let all = v.as_array().map(Vec::as_slice).unwrap_or_default();
            if all.is_empty() {
                println!("no drills");
            }
            for d in all {
                println!(
                    "{}  {}  relationship {}  {}  data of {}",
                    text(d, "id"),
                    text(d, "path"),
                    text(d, "relationship"),
                    text(d, "method"),
                    text(d, "recovery_point_time"),
                );
            }
        }
        DrillCmd::Release { drill, api } => {
            let d = drill.trim().to_ascii_lowercase();
            if d.is_empty() || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                anyhow::bail!("{drill:?} is not a drill id (as `mover drill list` shows it)");
            }
            let v = api
                .client()
                .delete(&format!("{DRILLS}/{d}"))
                .with_context(|| format!("releasing drill {d}"))?;
            if api.json {
                println!("{}", serde_json::to_string(&v)?);
                return Ok(());
            }
            println!("drill {d} released: {} removed", text(&v, "path"));
        }
    }
    Ok(())
}
