//! The shipped Prometheus alert rules (`scripts/alerts.yml`): valid and unit-tested by
//! `promtool` (Debian's `prometheus` package, installed by `scripts/install-deps.sh`), and
//! reading only series that real daemons expose.

mod node;

use node::{fill, need_root, synced_relationship, Node, Scratch};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Series the rules read that an operator provides, not the daemon (documented in the file).
const OPERATOR_SERIES: &[&str] = &["mover_rpo_threshold_seconds"];

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(scripts())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool (Debian package prometheus; scripts/install-deps.sh) must run: {e}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn shipped_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let check = promtool(&["check", "rules", "alerts.yml"]);
    assert!(check.contains("SUCCESS: 6 rules found"), "{check}");
    let test = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(test.contains("SUCCESS"), "{test}");
}

/// The `mover_*` names the rules use.
fn rule_series() -> Vec<String> {
    let text = std::fs::read_to_string(scripts().join("alerts.yml")).unwrap();
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("mover_"))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn metrics(n: &Node) -> String {
    let (code, m) = n.call_as(None, "GET", "/metrics", None);
    assert_eq!(code, 200, "{m}");
    m.as_str().unwrap().to_string()
}

fn sample(m: &str, series: &str) -> Option<f64> {
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[test]
fn alert_rules_read_series_that_live_daemons_expose_with_real_values() {
    need_root();
    let t = Scratch::new();
    let (a, mut b, src, dst) = node::pair(&t);
    fill(&src, 5, 1000, 3);
    std::fs::create_dir(&dst).unwrap();
    let id = synced_relationship(&a, &b, &src, &dst);

    let (ma, mb) = (metrics(&a), metrics(&b));
    let names = rule_series();
    assert!(names.len() >= 4, "{names:?}");
    for name in names
        .iter()
        .filter(|n| !OPERATOR_SERIES.contains(&n.as_str()))
    {
        assert!(
            ma.contains(&format!("\n{name}{{")) || mb.contains(&format!("\n{name}{{")),
            "alerts.yml reads {name}, which neither daemon exposes:\n{ma}\n{mb}"
        );
    }
    let peer = format!("mover_peer_reachable{{relationship=\"{id}\",role=\"source\"}}");
    let ro = format!("mover_target_read_only{{relationship=\"{id}\"}}");
    assert_eq!(sample(&ma, &peer), Some(1.0), "{ma}");
    assert_eq!(sample(&mb, &ro), Some(1.0), "{mb}");

    // The target's read-only bind mount remounted read-write by hand: the next scrape says
    // so (the daemon restores it at its next job, so this reads at once).
    node::run(
        Command::new("mount")
            .args(["-o", "remount,bind,rw"])
            .arg(&dst),
    );
    assert_eq!(sample(&metrics(&b), &ro), Some(0.0));

    // The target daemon gone: once the source's next job fails to reach it, the gauge is 0.
    b.kill();
    std::fs::write(src.join("new"), b"x").unwrap();
    let t0 = Instant::now();
    loop {
        let m = metrics(&a);
        if sample(&m, &peer) == Some(0.0) {
            break;
        }
        assert!(t0.elapsed() < node::WAIT, "peer still reachable:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
