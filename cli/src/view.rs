//! Text rendering of the daemon's relationship views (docs/api.md "View"): the status table
//! and the one-field-per-line `show`. Works on `serde_json::Value` and treats every field as
//! optional, so a daemon of a newer version still renders (unknown fields are shown as JSON).

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Longest last-attempt message in the table; `show` prints it whole.
const MESSAGE_WIDTH: usize = 30;

/// "12s ago", "3m ago", "5h ago", "2d ago": one unit is enough to judge a recovery point.
pub fn age(secs: f64) -> String {
    let s = if secs.is_finite() {
        secs.max(0.0) as u64
    } else {
        0
    };
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// Binary units; one decimal below 10 so small values keep their precision.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = if n.is_finite() { n.max(0.0) } else { 0.0 };
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v >= 10.0 {
        format!("{} {}", v.round() as u64, UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn percent(p: f64) -> String {
    format!("{p:.1}%")
}

fn num(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

pub fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

/// Seconds from an RFC 3339 time to `now` (the view gives the last attempt only as a time).
fn since(time: &str, now: DateTime<Utc>) -> Option<f64> {
    let t = DateTime::parse_from_rfc3339(time).ok()?;
    Some((now - t.with_timezone(&Utc)).num_milliseconds() as f64 / 1000.0)
}

/// "45.2% 120/400 files 100 MiB/400 MiB 31 MiB/s", or "-" without a job.
pub fn progress(job: &Value) -> String {
    if !job.is_object() {
        return "-".into();
    }
    // Totals arrive once the source is walked and the target said what it needs.
    let scanning = job.get("scanning").and_then(Value::as_bool) == Some(true);
    let mut s = if scanning || (num(job, "files_total") == 0.0 && num(job, "bytes_total") == 0.0) {
        "preparing (scanning the source)".to_string()
    } else {
        format!(
            "{} {}/{} files {}/{} {}/s",
            percent(num(job, "percent")),
            num(job, "files_done") as u64,
            num(job, "files_total") as u64,
            bytes(num(job, "bytes_done")),
            bytes(num(job, "bytes_total")),
            bytes(num(job, "throughput_bytes_per_sec"))
        )
    };
    if job.get("paused").and_then(Value::as_bool) == Some(true) {
        s.push_str(" paused");
    }
    s
}

pub fn recovery_point(rp: &Value) -> String {
    match rp.get("age_seconds").and_then(Value::as_f64) {
        Some(a) => age(a),
        None => "-".into(),
    }
}

/// "ok 2m ago" / "failed 5s ago" from a `last_attempt` object.
fn outcome(la: &Value, now: DateTime<Utc>) -> (bool, String) {
    let ok = la.get("ok").and_then(Value::as_bool) == Some(true);
    let when = la
        .get("time")
        .and_then(Value::as_str)
        .and_then(|t| since(t, now))
        .map(age)
        .unwrap_or_else(|| "at ?".into());
    (ok, format!("{} {when}", if ok { "ok" } else { "failed" }))
}

/// "ok 2m ago" / "failed 5s ago: message" (message cut to `width` characters).
pub fn last_attempt(la: &Value, now: DateTime<Utc>, width: usize) -> String {
    if !la.is_object() {
        return "-".into();
    }
    let (ok, mut s) = outcome(la, now);
    if !ok {
        let msg = text(la, "message");
        let cut: String = msg.chars().take(width).collect();
        s.push_str(": ");
        s.push_str(&cut);
        if cut.len() < msg.len() {
            s.push_str("...");
        }
    }
    s
}

pub fn target(v: &Value) -> String {
    let port = v
        .get("target_port")
        .map(|p| p.to_string())
        .unwrap_or_else(|| "?".into());
    format!(
        "{}:{port}:{}",
        text(v, "target_address"),
        text(v, "target_path")
    )
}

/// The table of `mover status` and `mover relationship list`.
pub fn table(views: &Value, now: DateTime<Utc>) -> String {
    let empty = Vec::new();
    let views = views.as_array().unwrap_or(&empty);
    if views.is_empty() {
        return "no relationships\n".into();
    }
    let head = [
        "ID",
        "ROLE",
        "STATE",
        "RECOVERY POINT",
        "LAST ATTEMPT",
        "SOURCE",
        "TARGET",
        "PROGRESS",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|h| h.to_string()).collect()];
    for v in views {
        rows.push(vec![
            text(v, "id").chars().take(8).collect(),
            text(v, "role").into(),
            text(v, "state_text").into(),
            recovery_point(&v["recovery_point"]),
            last_attempt(&v["last_attempt"], now, MESSAGE_WIDTH),
            text(v, "source_path").into(),
            target(v),
            progress(&v["job"]),
        ]);
    }
    let mut widths = vec![0; head.len()];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                line.extend(std::iter::repeat_n(' ', w - c.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A blackout window in the syntax `--blackout` takes, so it can be pasted back.
pub fn blackout(w: &Value) -> String {
    let days: Vec<&str> = w
        .get("days")
        .and_then(Value::as_array)
        .map(|d| d.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    format!(
        "{} {}-{} {}",
        days.join(","),
        text(w, "start"),
        text(w, "end"),
        text(w, "timezone")
    )
}

fn id_pairs(m: &Value, k: &str) -> String {
    let pairs: Vec<String> = m
        .get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| Some(format!("{}:{}", p.get(0)?, p.get(1)?)))
                .collect()
        })
        .unwrap_or_default();
    if pairs.is_empty() {
        "-".into()
    } else {
        pairs.join(",")
    }
}

/// What a target's operator accepted for the replica, in words ("-" where none applies).
fn replica_options(o: &Value) -> String {
    if !o.is_object() {
        return "-".into();
    }
    let said = |k: &str, what: &str| {
        let yes = o.get(k).and_then(Value::as_bool).unwrap_or(false);
        format!("{what} {}", if yes { "allowed" } else { "inert" })
    };
    [
        said("allow_setuid", "setuid/setgid"),
        said("allow_devices", "devices"),
        said("allow_exec", "exec"),
    ]
    .join(", ")
}

/// Every field of one view, one per line, known ones in words and the rest as JSON.
pub fn show(v: &Value, now: DateTime<Utc>) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, s: String| lines.push((k.to_string(), s));
    let plain = |k: &str| match v.get(k) {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(x) => x.to_string(),
    };
    for k in ["id", "role", "state", "state_text", "source_path"] {
        add(k, plain(k));
    }
    add("target", target(v));
    for k in [
        "enabled",
        "authorized",
        "peer_fingerprint",
        "read_only",
        "data_plane",
        "path_error",
    ] {
        add(k, plain(k));
    }
    add("replica_options", replica_options(&v["replica_options"]));
    add(
        "bandwidth_limit",
        match v.get("bandwidth_limit").and_then(Value::as_f64) {
            Some(b) => format!("{}/s ({b} bytes/s)", bytes(b)),
            None => "unlimited".into(),
        },
    );
    let wins = v
        .get("blackout_windows")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if wins.is_empty() {
        add("blackout_windows", "-".into());
    }
    for w in &wins {
        add("blackout_window", blackout(w));
    }
    let m = &v["map_ids"];
    add(
        "map_ids",
        if m.is_object() {
            format!("uid {} gid {}", id_pairs(m, "uid"), id_pairs(m, "gid"))
        } else {
            "-".into()
        },
    );
    let rp = &v["recovery_point"];
    add(
        "recovery_point",
        if rp.is_object() {
            format!("{} ({})", text(rp, "time"), recovery_point(rp))
        } else {
            "-".into()
        },
    );
    let la = &v["last_attempt"];
    add(
        "last_attempt",
        if la.is_object() {
            format!(
                "{} ({}): {}",
                outcome(la, now).1,
                text(la, "time"),
                text(la, "message")
            )
        } else {
            "-".into()
        },
    );
    let job = &v["job"];
    add(
        "job",
        if job.is_object() {
            progress(job)
        } else {
            "-".into()
        },
    );
    if let Some(j) = job.as_object() {
        let (f, b) = (|k: &str| num(job, k), |k: &str| bytes(num(job, k)));
        add(
            "job.files",
            format!(
                "{} of {} done, {} to go ({})",
                f("files_done"),
                f("files_total"),
                f("files_remaining"),
                percent(f("percent_files"))
            ),
        );
        add(
            "job.bytes",
            format!(
                "{} of {} done, {} to go ({})",
                b("bytes_done"),
                b("bytes_total"),
                b("bytes_remaining"),
                percent(f("percent_bytes"))
            ),
        );
        add("job.rate", format!("{}/s", b("throughput_bytes_per_sec")));
        add("job.run_time", format!("{:.1}s", f("run_seconds")));
        add(
            "job.paused",
            j.get("paused").map_or("-".into(), Value::to_string),
        );
        const SHOWN: [&str; 12] = [
            "files_done",
            "files_total",
            "files_remaining",
            "percent_files",
            "bytes_done",
            "bytes_total",
            "bytes_remaining",
            "percent_bytes",
            "throughput_bytes_per_sec",
            "run_seconds",
            "paused",
            "percent",
        ];
        for (k, x) in j.iter().filter(|(k, _)| !SHOWN.contains(&k.as_str())) {
            add(&format!("job.{k}"), x.to_string());
        }
    }
    let known = [
        "id",
        "role",
        "state",
        "state_text",
        "source_path",
        "target_address",
        "target_port",
        "target_path",
        "enabled",
        "authorized",
        "peer_fingerprint",
        "read_only",
        "data_plane",
        "path_error",
        "replica_options",
        "bandwidth_limit",
        "blackout_windows",
        "map_ids",
        "recovery_point",
        "last_attempt",
        "job",
    ];
    if let Some(o) = v.as_object() {
        for (k, x) in o.iter().filter(|(k, _)| !known.contains(&k.as_str())) {
            add(k, x.to_string());
        }
    }
    let w = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, s)| format!("{k:<w$}  {s}\n"))
        .collect()
}

/// One JSON value on a line of its own (`--json`).
pub(crate) fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T06:42:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// One view of each kind the table must handle: a running job, an idle relationship with a
    /// recovery point and a failed attempt, and a fresh one awaiting authorization (all nulls).
    fn sample() -> Value {
        json!([
            {"id": "4f0c1a2b3c4d5e6f708192a3b4c5d6e7", "role": "source", "state": "running", "state_text": "running",
             "source_path": "/srv/data", "target_address": "127.0.0.1", "target_port": 3712, "target_path": "/srv/replica",
             "recovery_point": {"time": "2026-11-25T06:41:48Z", "age_seconds": 12.5},
             "last_attempt": {"time": "2026-11-25T06:40:00Z", "ok": true, "message": "completed"},
             "job": {"paused": false, "files_done": 120, "files_total": 400, "bytes_done": 104857600, "bytes_total": 419430400,
                     "percent": 45.2, "throughput_bytes_per_sec": 32768000.0}},
            {"id": "99990000aaaabbbbccccddddeeeeffff", "role": "target", "state": "idle", "state_text": "idle",
             "source_path": "/a", "target_address": "10.0.0.1", "target_port": 3712, "target_path": "/b",
             "recovery_point": {"time": "2026-11-25T06:39:00Z", "age_seconds": 180.0},
             "last_attempt": {"time": "2026-11-25T06:41:55Z", "ok": false, "message": "peer refused: target directory is not empty and was not authorized as such"},
             "job": null},
            {"id": "0123456789abcdef0123456789abcdef", "role": "target", "state": "awaiting_authorization",
             "state_text": "awaiting authorization", "source_path": "/x", "target_address": "10.0.0.1", "target_port": 3712,
             "target_path": "/y", "recovery_point": null, "last_attempt": null, "job": null, "read_only": null}
        ])
    }

    #[test]
    fn ages_pick_one_unit() {
        assert_eq!(age(12.5), "12s ago");
        assert_eq!(age(59.9), "59s ago");
        assert_eq!(age(180.0), "3m ago");
        assert_eq!(age(7200.0), "2h ago");
        assert_eq!(age(3.0 * 86400.0), "3d ago");
        assert_eq!(age(-4.0), "0s ago", "a clock ahead of the daemon's");
        assert_eq!(age(f64::NAN), "0s ago");
    }

    #[test]
    fn bytes_in_binary_units() {
        assert_eq!(bytes(0.0), "0 B");
        assert_eq!(bytes(1023.0), "1023 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(104857600.0), "100 MiB");
        assert_eq!(bytes(32768000.0), "31 MiB");
        assert_eq!(bytes(5.0 * (1u64 << 40) as f64), "5.0 TiB");
    }

    #[test]
    fn percent_and_progress() {
        assert_eq!(percent(27.5), "27.5%");
        assert_eq!(percent(100.0), "100.0%");
        let v = sample();
        assert_eq!(
            progress(&v[0]["job"]),
            "45.2% 120/400 files 100 MiB/400 MiB 31 MiB/s"
        );
        assert_eq!(progress(&Value::Null), "-");
        assert!(progress(&json!({"paused": true})).ends_with(" paused"));
        assert_eq!(
            progress(&json!({"files_total": 0, "bytes_total": 0, "paused": false})),
            "preparing (scanning the source)"
        );
    }

    #[test]
    fn last_attempts() {
        assert_eq!(
            last_attempt(
                &json!({"time": "2026-11-25T06:40:00Z", "ok": true, "message": "completed"}),
                now(),
                40
            ),
            "ok 2m ago"
        );
        let failed = json!({"time": "2026-11-25T06:41:55+00:00", "ok": false, "message": "connection refused"});
        assert_eq!(
            last_attempt(&failed, now(), 40),
            "failed 5s ago: connection refused"
        );
        assert_eq!(
            last_attempt(&failed, now(), 10),
            "failed 5s ago: connection..."
        );
        assert_eq!(last_attempt(&Value::Null, now(), 40), "-");
    }

    #[test]
    fn table_of_running_idle_and_awaiting() {
        let t = table(&sample(), now());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        for h in [
            "ID",
            "ROLE",
            "STATE",
            "RECOVERY POINT",
            "LAST ATTEMPT",
            "SOURCE",
            "TARGET",
            "PROGRESS",
        ] {
            assert!(lines[0].contains(h), "{h}: {t}");
        }
        assert!(lines[1].starts_with("4f0c1a2b  source  running"), "{t}");
        assert!(
            lines[1].contains("12s ago") && lines[1].contains("ok 2m ago"),
            "{t}"
        );
        assert!(lines[1].contains("127.0.0.1:3712:/srv/replica"), "{t}");
        assert!(
            lines[1].ends_with("45.2% 120/400 files 100 MiB/400 MiB 31 MiB/s"),
            "{t}"
        );
        assert!(
            lines[2].contains("3m ago")
                && lines[2].contains("failed 5s ago: peer refused: target directory...  /a"),
            "{t}"
        );
        assert!(lines[2].ends_with('-'), "{t}");
        assert!(
            lines[3].starts_with("01234567  target  awaiting authorization"),
            "{t}"
        );
        // Columns line up: every row has its STATE where the header has it.
        let col = lines[0].find("STATE").unwrap();
        assert!(
            lines[1..]
                .iter()
                .all(|l| l[col - 2..col] == *"  " && l.as_bytes()[col] != b' '),
            "{t}"
        );
        assert_eq!(table(&json!([]), now()), "no relationships\n");
    }

    #[test]
    fn show_prints_every_field() {
        let mut v = sample()[0].clone();
        v["blackout_windows"] = json!([{"days": ["mon", "tue"], "start": "22:00", "end": "06:00", "timezone": "Europe/Berlin"}]);
        v["map_ids"] = json!({"uid": [[1000, 2000]], "gid": []});
        v["bandwidth_limit"] = json!(104857600);
        v["future_field"] = json!({"x": 1});
        let s = show(&v, now());
        for want in [
            "id                4f0c1a2b3c4d5e6f708192a3b4c5d6e7",
            "blackout_window   mon,tue 22:00-06:00 Europe/Berlin",
            "map_ids           uid 1000:2000 gid -",
            "bandwidth_limit   100 MiB/s (104857600 bytes/s)",
            "recovery_point    2026-11-25T06:41:48Z (12s ago)",
            "last_attempt      ok 2m ago (2026-11-25T06:40:00Z): completed",
            "job.files         120 of 400 done, 0 to go (0.0%)",
            "job.rate          31 MiB/s",
            "future_field      {\"x\":1}",
            "peer_fingerprint  -",
        ] {
            assert!(s.contains(want), "{want:?} missing from\n{s}");
        }
        let s = show(&sample()[2], now());
        assert!(
            s.contains("recovery_point    -")
                && s.contains("job               -")
                && s.contains("bandwidth_limit   unlimited"),
            "{s}"
        );
    }
}
