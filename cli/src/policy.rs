//! `mover policy ...` (snapshot policies, on the source node) and `mover snapshot ...` (the
//! policy snapshots kept on either node); docs/api.md "Snapshot policies".

use crate::api::ApiArgs;
use crate::sides::full_id;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use control::blackout::{parse_timezone, ClockTime, Days};
use control::policy::{parse_duration, Expiry, Policy, PolicyEdit, PolicyName, Schedule};
use serde_json::Value;

const POLICIES: &str = "/v1/snapshot-policies";
const SNAPSHOTS: &str = "/v1/snapshots";

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Create a snapshot policy: when the source keeps a read-only point in time of the
    /// relationships linking it, and for how long.
    #[command(
        long_about = "Create a snapshot policy on the source node. When it fires, every relationship linking it (--mode snapshot-policy or snapshot-policy-with-continuous, --policy NAME) keeps a read-only point in time of its source under SOURCE/.snapshot/<id>_<policy>/ and queues it; the queue is replicated in order, before continuous jobs, and each snapshot is kept read-only on the target under TARGET/.snapshot/<id>_<policy>/.

Examples:
  mover policy create every-15m --every 15m --expire-after 1d
  mover policy create nightly --at 02:00 --time-zone Europe/Berlin --expire-after 30d
  mover policy create weekly --days sat --at 03:30 --expire-after never"
    )]
    Create {
        /// 1-64 letters, digits, '-' or '.'.
        name: String,
        #[command(flatten)]
        when: When,
        /// How long each snapshot is kept on the source: a duration (90m, 7d, 2w) or never.
        #[arg(long, value_name = "DURATION|never", default_value = "never", value_parser = parse_expiry)]
        expire_after: Expiry,
        /// Create it without letting it fire yet.
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the policies, with their next fire and the relationships linking them.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Change a policy's schedule, expiry, or whether it fires.
    Modify {
        name: String,
        #[command(flatten)]
        when: When,
        #[arg(long, value_name = "DURATION|never", value_parser = parse_expiry)]
        expire_after: Option<Expiry>,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a policy no relationship links (its snapshots stay until they expire).
    Delete {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Take the policy's snapshots now, as if it fired.
    Run {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// When a policy fires: `--every`, or `--at` (with `--days` and `--time-zone`).
#[derive(Args)]
pub struct When {
    /// Fire every DURATION (1m to 7d, whole minutes), aligned to the clock: 15m fires at
    /// :00, :15, :30 and :45.
    #[arg(long, value_name = "DURATION", conflicts_with_all = ["at", "days", "time_zone"])]
    every: Option<String>,
    /// Fire at this time of day (HH:MM, 24-hour clock). Repeatable.
    #[arg(long, value_name = "HH:MM")]
    at: Vec<String>,
    /// The days --at fires on: comma-separated mon..sun (default: every day).
    #[arg(long, value_name = "DAYS", requires = "at")]
    days: Option<String>,
    /// Whose clock --at is read on: an IANA name such as Europe/Berlin (default UTC).
    #[arg(long, value_name = "TZ", requires = "at")]
    time_zone: Option<String>,
}

impl When {
    fn schedule(&self) -> Result<Option<Schedule>> {
        if let Some(e) = &self.every {
            let secs = parse_duration(e)?;
            if secs % 60 != 0 {
                bail!("--every {e}: a policy fires every whole number of minutes");
            }
            return Ok(Some(Schedule::Every {
                minutes: u32::try_from(secs / 60).unwrap_or(u32::MAX),
            }));
        }
        if self.at.is_empty() {
            return Ok(None);
        }
        let times = self
            .at
            .iter()
            .map(|t| t.parse::<ClockTime>())
            .collect::<Result<Vec<_>, _>>()?;
        let days = match &self.days {
            Some(d) => Days::parse_names(d.split(',').map(str::trim))?,
            None => Days::ALL,
        };
        let timezone = parse_timezone(self.time_zone.as_deref().unwrap_or("UTC"))?;
        Ok(Some(Schedule::At {
            days,
            times,
            timezone,
        }))
    }
}

fn parse_expiry(s: &str) -> Result<Expiry, String> {
    if s == "never" {
        return Ok(Expiry::Never);
    }
    parse_duration(s)
        .map(Expiry::AfterSecs)
        .map_err(|e| e.to_string())
}

fn name(s: &str) -> Result<PolicyName> {
    Ok(PolicyName::parse(s)?)
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// List the policy snapshots kept on this node: on a source, queued (not yet replicated)
    /// or replicated; on a target, kept. Each is read-only under <root>/.snapshot/<id>_<policy>/.
    List {
        /// Only this relationship's (id or unique prefix).
        #[arg(long, value_name = "ID")]
        relationship: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a kept snapshot on this node before it expires (a queued one is then not
    /// replicated).
    Release {
        /// Relationship id, or a unique prefix of it.
        relationship: String,
        /// Snapshot id, as `mover snapshot list` shows it.
        snapshot: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

fn print(api: &ApiArgs, v: &Value, line: impl Fn(&Value) -> String) -> Result<()> {
    if api.json {
        println!("{}", serde_json::to_string(v)?);
        return Ok(());
    }
    match v.as_array() {
        Some(all) if all.is_empty() => println!("none"),
        Some(all) => all.iter().for_each(|x| println!("{}", line(x))),
        None => println!("{}", line(v)),
    }
    Ok(())
}

fn policy_line(p: &Value) -> String {
    let linked: Vec<&str> = p
        .get("relationships")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| &s[..8.min(s.len())])
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{}  {}  keep {}  {}  next {}  linked by {}",
        text(p, "name"),
        text(p, "schedule_text"),
        text(p, "expiry"),
        if p.get("enabled").and_then(Value::as_bool) == Some(false) {
            "disabled"
        } else {
            "enabled"
        },
        text(p, "next_fire"),
        if linked.is_empty() {
            "none".to_string()
        } else {
            linked.join(",")
        },
    )
}

fn snapshot_line(s: &Value) -> String {
    let rel = text(s, "relationship");
    format!(
        "{}  {}  {} {}  taken {}  expires {}  {}",
        &rel[..8.min(rel.len())],
        s.get("id").and_then(Value::as_u64).unwrap_or(0),
        text(s, "role"),
        text(s, "state"),
        text(s, "taken"),
        s.get("expires").and_then(Value::as_str).unwrap_or("never"),
        text(s, "path"),
    )
}

pub fn run_policy(cmd: PolicyCmd) -> Result<()> {
    match cmd {
        PolicyCmd::Create {
            name: n,
            when,
            expire_after,
            disabled,
            api,
        } => {
            let Some(schedule) = when.schedule()? else {
                bail!("say when it fires: --every DURATION, or --at HH:MM (with --days and --time-zone)");
            };
            let p = Policy {
                name: name(&n)?,
                schedule,
                expiry: expire_after,
                enabled: !disabled,
            };
            let v = api
                .client()
                .post(POLICIES, &p)
                .with_context(|| format!("creating snapshot policy {n}"))?;
            print(&api, &v, policy_line)
        }
        PolicyCmd::List { api } => {
            let v = api
                .client()
                .get(POLICIES)
                .context("listing snapshot policies")?;
            print(&api, &v, policy_line)
        }
        PolicyCmd::Modify {
            name: n,
            when,
            expire_after,
            enable,
            disable,
            api,
        } => {
            let e = PolicyEdit {
                schedule: when.schedule()?,
                expiry: expire_after,
                enabled: (enable || disable).then_some(enable),
            };
            if e == PolicyEdit::default() {
                bail!("nothing to change: give --every or --at, --expire-after, --enable or --disable");
            }
            let v = api
                .client()
                .patch(&format!("{POLICIES}/{}", name(&n)?), &e)
                .with_context(|| format!("modifying snapshot policy {n}"))?;
            print(&api, &v, policy_line)
        }
        PolicyCmd::Delete { name: n, api } => {
            api.client()
                .delete(&format!("{POLICIES}/{}", name(&n)?))
                .with_context(|| format!("deleting snapshot policy {n}"))?;
            if api.json {
                println!("{}", serde_json::json!({ "deleted": n }));
            } else {
                println!("snapshot policy {n} deleted");
            }
            Ok(())
        }
        PolicyCmd::Run { name: n, api } => {
            let v = api
                .client()
                .post_empty(&format!("{POLICIES}/{}/run", name(&n)?))
                .with_context(|| format!("taking the snapshots of policy {n}"))?;
            print(&api, &v, snapshot_line)
        }
    }
}

pub fn run_snapshot(cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::List { relationship, api } => {
            let c = api.client();
            let path = match relationship {
                Some(r) => format!(
                    "{SNAPSHOTS}?relationship={}",
                    full_id(&c, None, &r).with_context(|| format!("relationship {r}"))?
                ),
                None => SNAPSHOTS.to_string(),
            };
            let v = c.get(&path).context("listing policy snapshots")?;
            print(&api, &v, snapshot_line)
        }
        SnapshotCmd::Release {
            relationship,
            snapshot,
            api,
        } => {
            let c = api.client();
            let full = full_id(&c, None, &relationship)
                .with_context(|| format!("relationship {relationship}"))?;
            let v = c
                .delete(&format!("{SNAPSHOTS}/{full}/{snapshot}"))
                .with_context(|| format!("releasing snapshot {snapshot} of {full}"))?;
            if api.json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!(
                    "snapshot {} released: {} removed",
                    snapshot,
                    text(&v, "path")
                );
            }
            Ok(())
        }
    }
}
