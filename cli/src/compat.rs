//! `mover compat`: which mover releases replicate with which (`mover::compat`, the release
//! train this build shipped with).

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use mover::compat::{Train, Version};

#[derive(Args)]
#[command(
    args_conflicts_with_subcommands = true,
    long_about = "Which mover releases replicate with which. Without a subcommand: the matrix of the releases in the release train this build shipped with (--from/--to narrow it). Releases of a current line replicate with every release up to eight quarterly releases apart; older lines within narrower windows; any other pair is refused at proposal and at every session.

Examples:
  mover compat
  mover compat --from 0.1.0 --json
  mover compat check 0.1.0 0.1.3"
)]
pub struct CompatArgs {
    #[command(subcommand)]
    cmd: Option<CompatCmd>,
    /// First release of the matrix.
    #[arg(long, value_name = "VERSION", value_parser = version)]
    from: Option<Version>,
    /// Last release of the matrix.
    #[arg(long, value_name = "VERSION", value_parser = version)]
    to: Option<Version>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum CompatCmd {
    /// Whether releases A and B replicate with each other, the rule, why, and the way out.
    Check {
        #[arg(value_parser = version)]
        a: Version,
        #[arg(value_parser = version)]
        b: Version,
        #[arg(long)]
        json: bool,
    },
}

fn version(s: &str) -> Result<Version, String> {
    s.parse()
}

/// Exit code of `check` for an incompatible pair (a verdict, not a failure to answer).
pub const INCOMPATIBLE: i32 = 1;

pub fn run(a: CompatArgs) -> Result<i32> {
    let train = Train::builtin();
    match a.cmd {
        Some(CompatCmd::Check { a, b, json }) => {
            let v = train.check(a, b);
            if json {
                println!("{}", serde_json::json!({ "a": a, "b": b, "verdict": v }));
            } else {
                println!(
                    "mover {a} and {b}: {}\n  rule: {}\n  why: {}",
                    if v.compatible {
                        "compatible"
                    } else {
                        "INCOMPATIBLE (blocked)"
                    },
                    v.rule,
                    v.reason
                );
                if let Some(u) = &v.upgrade {
                    println!("  fix: {u}");
                }
            }
            Ok(if v.compatible { 0 } else { INCOMPATIBLE })
        }
        None => {
            let rel = train.between(a.from, a.to);
            if rel.is_empty() {
                bail!("no release of the train lies in that range");
            }
            if a.json {
                let rows: Vec<_> = rel
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "version": r.version,
                            "kind": r.kind,
                            "date": r.date,
                            "replicates_with": rel.iter()
                                .filter(|o| train.check(r.version, o.version).compatible)
                                .map(|o| o.version.to_string())
                                .collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "lines": train.lines, "releases": rows })
                );
                return Ok(0);
            }
            let label = |r: &mover::compat::Release| match r.kind {
                mover::compat::Kind::Quarterly => format!("{} (q)", r.version),
                mover::compat::Kind::QuarterlyLts => format!("{} (q, LTS)", r.version),
                mover::compat::Kind::Innovation => r.version.to_string(),
            };
            let w = rel.iter().map(|r| label(r).len()).max().unwrap_or(8).max(8);
            print!("{:w$}", "");
            for r in &rel {
                print!("  {:>w$}", label(r));
            }
            println!();
            for r in &rel {
                print!("{:w$}", label(r));
                for o in &rel {
                    let ok = train.check(r.version, o.version).compatible;
                    print!("  {:>w$}", if ok { "yes" } else { "-" });
                }
                println!();
            }
            Ok(0)
        }
    }
}
