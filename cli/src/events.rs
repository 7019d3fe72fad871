//! `mover events` and `mover audit`: what the daemon says an operator must notice, and its
//! record of mutating API calls (docs/api.md "Events and audit"). `--follow` asks again every
//! FOLLOW_EVERY for what came after the last id shown, until Ctrl-C.

use crate::api::{Api, ApiArgs};
use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;
use std::time::Duration;

const EVENTS: &str = "/v1/events";
const AUDIT: &str = "/v1/audit";
/// How often `--follow` asks for new entries.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// Hex digits of a relationship id shown in text output (as `mover status` shows them).
const SHORT_ID: usize = 8;

/// `mover events --help`; set on the subcommand in main.rs, where its one-line doc comment
/// would otherwise replace it.
pub const EVENTS_HELP: &str =
    "List what an operator must notice on this node: authorization requested \
(a source proposed a relationship), authorized, job retried, job failed, job recovered (a \
recovery point after a failed job), made writable, peer unreachable and reachable again, peer \
incompatible (a release this one may not replicate with), blackout entered and left, relationship \
deleted, relationship ended (by the target). Oldest first; without --since, the newest --limit.\n\n\
Any token with a read privilege may list them; it sees the relationships of the roles it may \
read.\n\nExamples:\n  mover events\n  mover events --follow --json >> events.log\n\n\
With --json, one JSON object per line.";

#[derive(Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub list: ListArgs,
}

/// `mover audit --help` (as EVENTS_HELP).
pub const AUDIT_HELP: &str = "List the audit log: every mutating API call (POST, PATCH, PUT, DELETE) \
with its time, token name, method, route, relationship, HTTP status and, when refused, why. \
Admin only. Oldest first; without --since, the newest --limit.\n\nExample:\n  mover audit --json\n\n\
With --json, one JSON object per line.";

#[derive(Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub list: ListArgs,
}

/// What `mover events` and `mover audit` both take.
#[derive(Args)]
pub struct ListArgs {
    /// Keep printing new entries as they come, until Ctrl-C.
    #[arg(long)]
    pub follow: bool,
    /// Only entries after this id.
    #[arg(long, value_name = "ID")]
    pub since: Option<u64>,
    /// At most this many entries per request (the daemon caps it at 1000).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub limit: u32,
    #[command(flatten)]
    pub api: ApiArgs,
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

fn short(v: &Value) -> String {
    text(v, "relationship").chars().take(SHORT_ID).collect()
}

fn event_line(e: &Value) -> String {
    format!(
        "{:>6}  {}  {:<23} {:<6} {:<8}  {}",
        e.get("id").and_then(Value::as_i64).unwrap_or(0),
        text(e, "time"),
        text(e, "kind"),
        text(e, "role"),
        short(e),
        text(e, "message")
    )
}

fn audit_line(a: &Value) -> String {
    let caller = a.get("caller").unwrap_or(&Value::Null);
    let who = match text(caller, "kind") {
        "token" => text(caller, "name").to_string(),
        other => format!("({other})"),
    };
    let reason = a
        .get("reason")
        .and_then(Value::as_str)
        .map(|r| format!("  {r}"))
        .unwrap_or_default();
    format!(
        "{:>6}  {}  {:<16} {:<6} {} {:<8} {}{reason}",
        a.get("id").and_then(Value::as_i64).unwrap_or(0),
        text(a, "time"),
        who,
        text(a, "method"),
        a.get("status").and_then(Value::as_u64).unwrap_or(0),
        short(a),
        text(a, "route"),
    )
}

/// Prints pages of `path` (after `since`, or the newest), again every FOLLOW_EVERY with
/// `follow`: one JSON object per line with `json`, else `line` of each.
fn list(a: &ListArgs, path: &str, line: fn(&Value) -> String) -> Result<()> {
    let api: Api = a.api.client();
    let (mut since, limit) = (a.since, a.limit);
    loop {
        let q = match since {
            Some(s) => format!("{path}?since={s}&limit={limit}"),
            None => format!("{path}?limit={limit}"),
        };
        let page = api.get(&q).with_context(|| format!("reading {path}"))?;
        let page = page.as_array().cloned().unwrap_or_default();
        for e in &page {
            if a.api.json {
                println!("{}", serde_json::to_string(e)?);
            } else {
                println!("{}", line(e));
            }
        }
        let last = page
            .last()
            .and_then(|e| e.get("id"))
            .and_then(Value::as_u64);
        // Following: from the last one shown, or from the start if there was none yet.
        since = last.or(since).or(Some(0));
        if !a.follow {
            return Ok(());
        }
        // A full page means more are waiting: ask again at once.
        if page.len() < limit as usize {
            std::thread::sleep(FOLLOW_EVERY);
        }
    }
}

pub fn run_events(a: EventsArgs) -> Result<()> {
    list(&a.list, EVENTS, event_line)
}

pub fn run_audit(a: AuditArgs) -> Result<()> {
    list(&a.list, AUDIT, audit_line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_lines_show_kind_relationship_and_message_or_caller_status_and_reason() {
        let e = json!({"id": 7, "time": "2026-01-01T00:00:00.000Z", "unix": 1, "kind": "job_failed",
            "relationship": "ab".repeat(16), "role": "source", "message": "job failed: boom"});
        let l = event_line(&e);
        assert!(
            l.contains("job_failed") && l.contains("abababab ") && l.ends_with("job failed: boom"),
            "{l}"
        );
        let a = json!({"id": 3, "time": "t", "caller": {"kind": "token", "name": "ops"}, "method": "POST",
            "route": "/v1/tokens", "relationship": null, "status": 403, "reason": "lacks ADMIN"});
        let l = audit_line(&a);
        assert!(
            l.contains("ops") && l.contains("403") && l.ends_with("lacks ADMIN"),
            "{l}"
        );
        let a = json!({"id": 4, "time": "t", "caller": {"kind": "no_token"}, "method": "DELETE",
            "route": "/v1/tokens/{name}", "status": 401});
        assert!(audit_line(&a).contains("(no_token)"));
    }
}
