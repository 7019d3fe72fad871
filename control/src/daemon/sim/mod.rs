//! Deterministic simulation of the control plane (issue 12, item 3).
//!
//! Two daemons, each a real [`Node`](super::Node) with its store in memory, run their real
//! control-plane code on a simulated clock: the scheduler's passes (`source::Scheduler`), the
//! source's polls, reports, tickets and job sessions (`source`), the target's request handling
//! (`peer_server::respond` and `finish`), authorization, tickets, releases and restores
//! (`target`), and the operators' actions as the REST handlers perform them. What is simulated:
//!
//! - **Time.** One simulated clock; each node reads it with its own skew. Nothing sleeps.
//! - **The peer network.** Requests and answers cross it as the JSON `peer_wire` sends, pinned
//!   to certificates as TLS would; each can be dropped, delayed (past the caller's
//!   `PEER_TIMEOUT`), or delivered twice; the two nodes can be partitioned. A request's
//!   blocking part (a ticket, a delete) runs as a later step, as on the daemon's blocking
//!   pool, and can be late.
//! - **Daemons.** A daemon crashes, reboots (its mounts go too) or gets SIGTERM (jobs stop at
//!   a chunk boundary first); what survives is its store, its identity and its mounts, and it
//!   starts again as `serve` does (`target::restore`).
//! - **The machine** (`fake`): mounts, reverts and receivers record their effects and fail at
//!   seeded rates; the data plane: a session is a number of chunks sent at simulated speed,
//!   looking at its job's controls before each (pause, suspend, cancel), cut or failed at
//!   seeded rates, and committed on the target when done.
//! - **Operators** create, authorize, edit (windows, enabling, bandwidth), replicate now,
//!   abort, make writable and delete relationships on either side; an **intruder** holding a
//!   certificate nobody pinned sends every kind of request about known ids.
//!
//! A step is what the daemon does between two awaits (or one blocking call): events are
//! ordered by simulated time, ties broken by the seed, and run one at a time on one thread,
//! so a seed is one schedule, replayed exactly. After every step `check` verifies:
//!
//! - rows are legal (a source pins its target, a target its proposer; protected, running, a
//!   recovery point or an outcome only once authorized) and change legally (role, paths and
//!   pins never; authorization and a target's end are never withdrawn; a released target is
//!   never protected again; a relationship deleted never comes back from the same peer);
//! - no job is claimed and no session starts inside a blackout window, nor for a relationship
//!   not authorized or ended; at most one session runs per relationship;
//! - recovery points only move forward, on both nodes, and only to points the data plane
//!   committed;
//! - no release (revert, unmount) of a target that was never authorized; mounts and
//!   receivers only for authorized targets that have not ended, one receiver at most each;
//! - tickets only for authorized, live targets and to the pinned peer; an intruder's request
//!   changes nothing and is refused.
//!
//! At the end, after a quiet spell with every job stopped, both ends of every relationship
//! agree (authorization, end, last outcome, recovery point, settings). One disagreement is
//! known and accepted: if the intruder proposes an id a target has just deleted before its
//! source polls, the source is told "not pinned" (as a source whose certificate changed must
//! be) and shows its target unreachable rather than ended.
//!
//! `cargo test -p control` runs [`CI_SEEDS`] seeds; `scripts/simulate.sh N [FIRST]` runs as
//! many as asked (the ignored test `simulate_seeds_from_the_environment`).

mod check;
mod fake;
mod rng;
mod world;

use std::sync::atomic::{AtomicU64, Ordering};
use world::{Outcome, Stats};

/// Seeds `cargo test` runs.
pub(crate) const CI_SEEDS: u64 = 1000;
/// Failing seeds a report lists by number (all of them with `MOVER_SIM_ALL` set).
const MAX_LISTED: usize = 20;

/// What a batch of seeds gave.
pub(crate) struct Summary {
    pub(crate) seeds: u64,
    pub(crate) stats: Stats,
    /// Failing seeds with what failed, lowest seed first.
    pub(crate) failures: Vec<(u64, String)>,
}

/// Runs `count` seeds from `first` on every core, each single-threaded and independent.
pub(crate) fn simulate(first: u64, count: u64) -> Summary {
    let next = AtomicU64::new(first);
    let end = first.saturating_add(count);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let seed = next.fetch_add(1, Ordering::SeqCst);
                        if seed >= end {
                            return mine;
                        }
                        mine.push(run_one(seed, false));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut summary = Summary {
        seeds: outcomes.len() as u64,
        stats: Stats::default(),
        failures: Vec::new(),
    };
    for o in &outcomes {
        summary.stats.add(&o.stats);
        if let Some(v) = &o.violation {
            summary.failures.push((o.seed, v.clone()));
        }
    }
    summary.failures.sort();
    summary
}

/// One seed; a panic in the code under test is a failure of that seed, not of the batch.
pub(crate) fn run_one(seed: u64, trace: bool) -> Outcome {
    let caught = std::panic::catch_unwind(|| world::run(seed, trace));
    caught.unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Outcome {
            seed,
            stats: Stats::default(),
            violation: Some(format!("panicked: {what}")),
            digest: 0,
            trace: Vec::new(),
        }
    })
}

impl Summary {
    /// The lines `scripts/simulate.sh` prints.
    pub(crate) fn report(&self, first: u64, took: std::time::Duration) -> String {
        let s = &self.stats;
        let mut out = format!(
            "seeds run: {} (from {first}) in {:.1} s\n\
             steps: {}\n\
             faults injected: {} (messages dropped {}, duplicated {}, delayed {}, late blocking work {}, \
             partitions {}, crashes {}, reboots {}, SIGTERMs {}, machine failures {}, sessions cut {}, \
             sessions failed for good {})\n\
             exercised: {} peer messages, {} operator actions, {} intruder requests, {} jobs, {} sessions, \
             {} completed, {} suspended for blackout windows, {} target releases\n\
             invariant violations: {}\n",
            self.seeds,
            took.as_secs_f64(),
            s.steps,
            s.faults(),
            s.dropped,
            s.duplicated,
            s.delayed,
            s.late_hops,
            s.partitions,
            s.crashes,
            s.reboots,
            s.graceful,
            s.host_faults,
            s.cuts,
            s.fatal,
            s.messages,
            s.ops,
            s.intruder,
            s.jobs,
            s.sessions,
            s.completed,
            s.suspended,
            s.releases,
            self.failures.len(),
        );
        match self.failures.first() {
            Some((seed, what)) => {
                let all: Vec<String> = self
                    .failures
                    .iter()
                    .take(MAX_LISTED)
                    .map(|(s, _)| s.to_string())
                    .collect();
                out.push_str(&format!(
                    "failing seeds: {}{}\n\
                     first failing seed: {seed}: {what}\n\
                     replay it: MOVER_SIM_TRACE=1 bash scripts/simulate.sh 1 {seed}\n",
                    all.join(" "),
                    if self.failures.len() > MAX_LISTED {
                        " ..."
                    } else {
                        ""
                    }
                ))
            }
            None => out.push_str("first failing seed: none\n"),
        }
        if std::env::var_os("MOVER_SIM_ALL").is_some() {
            for (seed, what) in &self.failures {
                out.push_str(&format!("seed {seed}: {what}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn env(name: &str) -> Option<u64> {
        std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn the_control_plane_keeps_its_invariants_over_a_thousand_seeds() {
        let t = Instant::now();
        let summary = simulate(0, CI_SEEDS);
        let report = summary.report(0, t.elapsed());
        println!("{report}");
        assert_eq!(summary.seeds, CI_SEEDS);
        assert!(summary.failures.is_empty(), "{report}");
        // Not vacuous: the runs did what they are for.
        let s = &summary.stats;
        for (what, n) in [
            ("dropped messages", s.dropped),
            ("duplicated requests", s.duplicated),
            ("delayed messages", s.delayed),
            ("late blocking work", s.late_hops),
            ("partitions", s.partitions),
            ("crashes", s.crashes),
            ("reboots", s.reboots),
            ("SIGTERMs", s.graceful),
            ("machine failures", s.host_faults),
            ("cut sessions", s.cuts),
            ("intruder requests", s.intruder),
            ("completed jobs", s.completed),
            ("suspended sessions", s.suspended),
            ("target releases", s.releases),
        ] {
            assert!(n > 0, "no {what} in {CI_SEEDS} seeds:\n{report}");
        }
    }

    /// Seeds that broke an invariant until the fix named, each checked to fail without it.
    /// They replay the schedule that found the bug only as long as the simulation draws the
    /// same: a change to what it draws re-deals every seed, and these must be found again
    /// (revert the fix, `scripts/simulate.sh` until a seed fails the same way).
    const FOUND: [(u64, &str); 6] = [
        (
            190,
            "a session started inside a blackout window that opened while its ticket was on the \
             way (source::ticket_usable)",
        ),
        (
            9,
            "an abort left the resumption of a job a restart interrupted, which then ran after \
             the blackout window (source::abort)",
        ),
        (
            217,
            "a target took a proposer's job report before authorizing it (target::record_report)",
        ),
        (
            3461,
            "a ticket checked before make-writable released the target started a receiver after \
             it (target::ticket reads the relationship again)",
        ),
        (4801, "the same, with a delete instead of make-writable"),
        (
            2238,
            "a late poll answer for a deleted source relationship authorized a proposal of the \
             same id from another peer (Node::modify checks the role)",
        ),
    ];

    #[test]
    fn seeds_that_found_bugs_replay_without_breaking_an_invariant() {
        for (seed, what) in FOUND {
            let o = run_one(seed, false);
            assert_eq!(o.violation, None, "seed {seed}, which found: {what}");
            assert!(
                o.stats.steps > 100,
                "seed {seed} ran {} steps",
                o.stats.steps
            );
        }
    }

    #[test]
    fn a_seed_replays_the_same_schedule_and_other_seeds_do_not() {
        let a = run_one(7, false);
        let b = run_one(7, false);
        let c = run_one(8, false);
        assert_eq!(a.violation, None);
        assert_eq!((a.digest, a.stats.steps), (b.digest, b.stats.steps));
        assert_ne!(a.digest, c.digest);
        assert!(a.stats.steps > 1000, "{} steps", a.stats.steps);
        // Traced, step by step: the same again, and the same schedule as untraced.
        let (t1, t2) = (run_one(7, true), run_one(7, true));
        assert!(t1.trace.len() > 100, "{} lines", t1.trace.len());
        assert_eq!(t1.trace, t2.trace);
        assert_eq!((t1.digest, t1.stats.steps), (a.digest, a.stats.steps));
    }

    /// `scripts/simulate.sh`: MOVER_SIM_SEEDS seeds from MOVER_SIM_FIRST_SEED (0); with
    /// MOVER_SIM_TRACE set, every step of the first failing seed (or of the only seed) is
    /// printed.
    #[test]
    #[ignore = "run by scripts/simulate.sh with MOVER_SIM_SEEDS"]
    fn simulate_seeds_from_the_environment() {
        let count = env("MOVER_SIM_SEEDS").expect("MOVER_SIM_SEEDS=<how many seeds>");
        let first = env("MOVER_SIM_FIRST_SEED").unwrap_or(0);
        let t = Instant::now();
        let summary = simulate(first, count);
        let report = summary.report(first, t.elapsed());
        if std::env::var_os("MOVER_SIM_TRACE").is_some() {
            // The same seed again, traced: the same schedule, so the same outcome.
            let (seed, want) = summary
                .failures
                .first()
                .map_or((first, None), |(s, v)| (*s, Some(v.clone())));
            let o = run_one(seed, true);
            for line in &o.trace {
                println!("{line}");
            }
            println!(
                "seed {seed}: {} (replayed {})",
                o.violation.as_deref().unwrap_or("all invariants held"),
                if o.violation == want {
                    "exactly"
                } else {
                    "differently: the simulation is not deterministic"
                }
            );
        }
        println!("{report}");
        assert!(
            summary.failures.is_empty(),
            "{} of {} seeds broke an invariant (report above)",
            summary.failures.len(),
            summary.seeds
        );
    }
}
