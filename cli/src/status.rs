//! `mover status`: the table of all relationships this token may read, once or (`--watch`)
//! until interrupted. On a terminal the table is redrawn in place; into a pipe or file each
//! round is appended, so logs and scripts see every sample.

use crate::api::ApiArgs;
use crate::view;
use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::time::Duration;

const STATUS: &str = "/v1/replication/status";
/// Cursor home + clear screen: one frame replaces the last without scrolling.
const CLEAR: &str = "\x1b[H\x1b[2J";

#[derive(Args)]
#[command(
    long_about = "Show every relationship this token may read (sources first): state, age of the \
last recovery point, the last attempt, and the running job's progress.\n\nExamples:\n  \
mover status --watch                  live view until Ctrl-C\n  \
mover relationship replicate 4f0c1a2b && mover status --watch --until-idle --json > progress.log"
)]
pub struct StatusArgs {
    /// Repeat until Ctrl-C: redraws in place on a terminal, else prints one table (or with --json
    /// one JSON array per line) per interval.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes with --watch (fractions allowed).
    #[arg(long, default_value_t = 1.0, value_name = "SECS", value_parser = parse_interval)]
    pub interval: f64,
    /// With --watch: exit 0 as soon as no relationship is running (for scripts that wait for a
    /// job to end).
    #[arg(long, requires = "watch")]
    pub until_idle: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86400.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400, e.g. 1 or 0.5"
        )),
    }
}

/// True while some relationship has a job in flight (what `--until-idle` waits out), a job
/// paused by a blackout window included.
pub fn any_running(views: &Value) -> bool {
    views.as_array().is_some_and(|a| {
        a.iter().any(|v| {
            v.get("state").and_then(Value::as_str) == Some("running")
                || v.get("job").is_some_and(|j| !j.is_null())
        })
    })
}

/// One round's output: a JSON line, or the table (with a header line when redrawing).
fn frame(views: &Value, json: bool, redraw: bool, interval: f64) -> Result<String> {
    if json {
        return Ok(format!("{}\n", serde_json::to_string(views)?));
    }
    let now = chrono::Utc::now();
    let table = view::table(views, now);
    if redraw {
        let clock = now.with_timezone(&chrono::Local).format("%H:%M:%S");
        return Ok(format!(
            "{CLEAR}mover status  {clock}  every {interval}s  (Ctrl-C to stop)\n\n{table}"
        ));
    }
    Ok(table)
}

pub fn run(a: StatusArgs) -> Result<()> {
    let api = a.api.client();
    let redraw = a.watch && !a.api.json && std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        let views = api.get(STATUS).context("reading the status")?;
        if first {
            crate::unreadable::warn(&api, None);
        }
        let mut out = frame(&views, a.api.json, redraw, a.interval)?;
        if a.watch && !redraw && !a.api.json && !first {
            // Appended tables need a gap to be told apart.
            out.insert(0, '\n');
        }
        first = false;
        let mut stdout = std::io::stdout().lock();
        // A reader that went away (`| head`) ends the watch quietly instead of with a panic.
        if stdout
            .write_all(out.as_bytes())
            .and_then(|_| stdout.flush())
            .is_err()
        {
            return Ok(());
        }
        drop(stdout);
        if !a.watch || (a.until_idle && !any_running(&views)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs_f64(a.interval));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn running_means_state_running() {
        assert!(any_running(
            &json!([{"state": "idle"}, {"state": "running"}])
        ));
        assert!(!any_running(
            &json!([{"state": "idle"}, {"state": "job_incomplete_will_retry"}])
        ));
        assert!(!any_running(&json!([])));
        assert!(
            any_running(&json!([{"state": "in_blackout_window", "job": {"paused": true}}])),
            "a paused job is still in flight"
        );
        assert!(!any_running(
            &json!([{"state": "in_blackout_window", "job": null}])
        ));
    }

    #[test]
    fn interval_must_be_positive_seconds() {
        assert_eq!(parse_interval("0.5"), Ok(0.5));
        for bad in ["0", "-1", "x", "inf", "NaN", "100000"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn frames_for_json_and_terminal() {
        let v = json!([]);
        assert_eq!(frame(&v, true, false, 1.0).unwrap(), "[]\n");
        let f = frame(&v, false, true, 2.0).unwrap();
        assert!(
            f.starts_with(CLEAR) && f.contains("every 2s") && f.ends_with("no relationships\n"),
            "{f}"
        );
        assert_eq!(frame(&v, false, false, 1.0).unwrap(), "no relationships\n");
    }
}
