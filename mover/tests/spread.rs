//! A session's workers spread over places (`sender::shard`): other "nodes" here are threads
//! that know only the `ShardRef` they are handed and read the plan from the shared source, as a
//! cluster member does; real sockets, a real receiver, real files.

mod common;

use common::{assert_same_tree, dirs, send_options, start_serving};
use mover::gen::{generate, TreeSpec};
use mover::sender::shard::{run_shard, ShardRef, Spread};
use mover::sender::{send, send_with_retry};
use mover::{Progress, Transport};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Places that run their shards on threads of this process, each over its own TCP connections.
struct Threads {
    places: usize,
    /// File bytes each place sent.
    sent: Vec<AtomicU64>,
    /// Place 0's first shard stops itself (cancelled) once it has sent this many bytes.
    die_after: Option<u64>,
    died: AtomicBool,
}

impl Threads {
    fn new(places: usize, die_after: Option<u64>) -> Threads {
        Threads {
            places,
            sent: (0..places).map(|_| AtomicU64::new(0)).collect(),
            die_after,
            died: AtomicBool::new(false),
        }
    }
}

impl Spread for Threads {
    fn places(&self) -> usize {
        self.places
    }

    fn run(&self, place: usize, shard: ShardRef) -> mover::Result<()> {
        // What a cluster member gets: the reference, as the control store carries it.
        let shard: ShardRef =
            serde_json::from_str(&serde_json::to_string(&shard).unwrap()).unwrap();
        let tcp: Arc<dyn Transport> = Arc::new(mover::transport::tcp::TcpTransport);
        let progress = Arc::new(Progress::default());
        let dies =
            place == 0 && self.die_after.is_some() && !self.died.swap(true, Ordering::SeqCst);
        if dies {
            // Slowed, so the shard is still running when the watcher sees its limit passed
            // however late it is scheduled on a loaded machine: its share (about 8 MiB) takes
            // about half a second, and the limit comes in the first 200 ms.
            progress.control.set_rate(Some(DYING_RATE));
        }
        let watcher = dies.then(|| {
            let (p, limit) = (progress.clone(), self.die_after.unwrap_or(0));
            std::thread::spawn(move || {
                while p.bytes.load(Ordering::Relaxed) < limit {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                p.control.cancel();
            })
        });
        let r = run_shard(&shard, &tcp, &progress);
        if let Some(w) = watcher {
            // A cancelled shard ends its watcher; one that finished first leaves it waiting.
            if r.is_err() {
                w.join().unwrap();
            }
        }
        let bytes = r?;
        self.sent[place].fetch_add(bytes, Ordering::SeqCst);
        Ok(())
    }
}

/// Bytes per second the place that dies sends at.
const DYING_RATE: u64 = 16 << 20;

fn tree(src: &std::path::Path) {
    generate(
        src,
        &TreeSpec {
            small_files: 300,
            large_files: 4,
            large_size: 6 << 20,
            ..Default::default()
        },
    )
    .unwrap();
}

#[test]
fn a_session_spread_over_three_places_commits_one_verified_recovery_point() {
    let d = dirs();
    tree(&d.src);
    let (addr, reports) = start_serving(&d.dst);
    let places = Arc::new(Threads::new(2, None));
    let mut opts = send_options(&d.src, addr, 2, Some(&d.state));
    opts.spread = Some(places.clone());
    let rep = send(&opts, &Arc::new(Progress::default())).expect("spread send");
    let r = reports.recv().unwrap();
    assert!(r.ok, "receiver: {:?}", r.error);
    assert_eq!(
        rep.threads, 6,
        "two workers here and two at each of two places"
    );
    assert_same_tree(&d.src, &d.dst);
    for (k, s) in places.sent.iter().enumerate() {
        assert!(s.load(Ordering::SeqCst) > 0, "place {k} sent nothing");
    }
    let elsewhere: u64 = places.sent.iter().map(|s| s.load(Ordering::SeqCst)).sum();
    assert!(
        elsewhere < rep.bytes,
        "the owner's own workers sent a share too"
    );
    // The plans and results on the shared source are gone.
    let shards = d.src.join(".mover-state/shards");
    let left: Vec<_> = std::fs::read_dir(&shards).unwrap().collect();
    assert!(left.is_empty(), "shard files left: {left:?}");
}

#[test]
fn a_place_that_dies_mid_shard_fails_the_session_and_the_retry_resends_only_what_was_not_durable() {
    let d = dirs();
    tree(&d.src);
    let (addr, reports) = start_serving(&d.dst);
    let places = Arc::new(Threads::new(2, Some(3 << 20)));
    let mut opts = send_options(&d.src, addr, 1, Some(&d.state));
    opts.spread = Some(places.clone());
    let progress = Arc::new(Progress::default());
    let mut failures = Vec::new();
    let rep = send_with_retry(&opts, &progress, 4, |_, e, _| failures.push(e.to_string()))
        .expect("the retried session completes");
    assert!(places.died.load(Ordering::SeqCst));
    assert_eq!(failures.len(), 1, "one failed session: {failures:?}");
    // Every session's report; the last is the one that committed.
    let mut last = reports.recv().unwrap();
    while !last.ok {
        last = reports.recv().unwrap();
    }
    assert_same_tree(&d.src, &d.dst);
    assert!(rep.resumed, "the retry resumed the job");
    assert!(
        rep.bytes < rep.bytes_total,
        "the retry sent {} of {} bytes: what was durable went once",
        rep.bytes,
        rep.bytes_total
    );
}
