//! Event-driven continuous replication: one watcher thread per replicating source relationship
//! (`mover::watch`: fanotify, else inotify) gathers the directories that changed, waits for them
//! to settle, and wakes the scheduler, whose next job walks only those directories.
//!
//! Why a full walk still happens: the first job after a watch is placed (changes before it were
//! not seen), after an overflowed queue or a watch error, after a failed job (its changes were
//! taken and not replicated), on "replicate now", and after `rescan_interval` without a job.
//! Everything else narrows.

use super::{lock, Node};
use crate::model::{Relationship, RelationshipId};
use mover::watch::{Backend, Changes, Watcher};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a node notices source changes (`change_detection` in mover.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Detection {
    /// fanotify where allowed, else inotify.
    Auto,
    Fanotify,
    Inotify,
    /// No watcher: a job every `continuous_interval`, each walking the whole tree.
    Interval,
}

/// A batch of changes is handed to the scheduler at most this many settle delays after its
/// first event, even while events keep coming (a log appended all the time must not hold
/// jobs back).
const MAX_BATCH_SETTLES: u32 = 5;
/// Longest wait for events between looks at the stop flag.
const LOOK_EVERY: Duration = Duration::from_millis(200);
/// After a watch could not be placed or failed: wait before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// What a job walks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Walk {
    /// The whole tree, and why.
    Whole(&'static str),
    /// Only these directories (relative paths; the root is empty), all else as last time.
    Changed(BTreeSet<Vec<u8>>),
}

/// What the scheduler sees of a relationship's watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// No watch in place: the interval decides.
    Interval,
    /// A watch is in place; `ready`: settled changes wait for a job.
    Events { ready: bool },
}

/// The changes gathered for one relationship, shared by its watcher thread and the scheduler.
#[derive(Debug, Default)]
struct Pending {
    /// The backend in use; `None` until the watch is placed, and after it failed.
    backend: Option<Backend>,
    changes: Changes,
    /// First and last event of the batch not settled yet.
    first: Option<Instant>,
    last: Option<Instant>,
    /// Settled changes wait for a job.
    ready: bool,
    /// Why the next job must walk the whole tree whatever the changes say.
    whole: Option<&'static str>,
    error: Option<String>,
}

impl Pending {
    /// When the batch being gathered is handed over: `settle` after its last event, and no
    /// later than `max_batch` after its first.
    fn due(&self, settle: Duration, max_batch: Duration) -> Option<Instant> {
        match (self.first, self.last) {
            (Some(f), Some(l)) => Some((l + settle).min(f + max_batch)),
            _ => None,
        }
    }
}

struct Shared {
    stop: AtomicBool,
    pending: Mutex<Pending>,
}

struct Watch {
    path: String,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Not joined: the thread looks at the flag within LOOK_EVERY and owns nothing the
        // daemon still needs.
        drop(self.thread.take());
    }
}

/// The node's watches, by relationship.
#[derive(Default)]
pub(crate) struct Watches {
    map: Mutex<HashMap<RelationshipId, Watch>>,
    /// Tells the scheduler that a batch settled (it also looks every tick).
    pub(crate) wake: Arc<tokio::sync::Notify>,
}

/// Whether `r` should be watched on this node.
fn wanted(node: &Node, r: &Relationship) -> bool {
    node.opts.change_detection != Detection::Interval
        && r.spec.enabled
        && r.authorized
        && !r.ended
        && r.path_error.is_none()
}

impl Watches {
    /// Starts watches for the source relationships in `rels` that replicate continuously,
    /// stops the others' (and those of relationships gone or moved to another path).
    pub(crate) fn sync(&self, node: &Node, rels: &[Relationship]) {
        let mut map = lock(&self.map);
        map.retain(|id, w| {
            rels.iter()
                .any(|r| r.id == *id && wanted(node, r) && r.spec.source_path == w.path)
        });
        for r in rels.iter().filter(|r| wanted(node, r)) {
            if map.contains_key(&r.id) {
                continue;
            }
            match self.start(node, r) {
                Ok(w) => {
                    map.insert(r.id.clone(), w);
                }
                Err(e) => tracing::warn!(id = %r.id, "cannot start watching the source: {e}"),
            }
        }
    }

    fn start(&self, node: &Node, r: &Relationship) -> std::io::Result<Watch> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
        });
        let backend = match node.opts.change_detection {
            Detection::Fanotify => Some(Backend::Fanotify),
            Detection::Inotify => Some(Backend::Inotify),
            Detection::Auto | Detection::Interval => None,
        };
        let job = Job {
            id: r.id.clone(),
            path: PathBuf::from(&r.spec.source_path),
            backend,
            settle: node.opts.settle,
            max_dirs: node.opts.watch_max_dirs,
            shared: shared.clone(),
            wake: self.wake.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("mover-watch".into())
            .spawn(move || job.run())?;
        Ok(Watch {
            path: r.spec.source_path.clone(),
            shared,
            thread: Some(thread),
        })
    }

    /// What the scheduler sees of `id`'s watch.
    pub(crate) fn seen(&self, id: &RelationshipId) -> Seen {
        let map = lock(&self.map);
        let Some(w) = map.get(id) else {
            return Seen::Interval;
        };
        let p = lock(&w.shared.pending);
        match p.backend {
            Some(_) => Seen::Events { ready: p.ready },
            None => Seen::Interval,
        }
    }

    /// The backend watching `id` now, if any, and why the last watch failed (for the
    /// relationship's view).
    pub(crate) fn status(&self, id: &RelationshipId) -> (Option<Backend>, Option<String>) {
        let map = lock(&self.map);
        map.get(id).map_or((None, None), |w| {
            let p = lock(&w.shared.pending);
            (p.backend, p.error.clone())
        })
    }

    /// A job of `id` starts: takes the changes gathered so far, and says what the job walks.
    /// `full`: the job was not started by settled changes.
    pub(crate) fn take(&self, id: &RelationshipId, full: bool) -> Walk {
        let map = lock(&self.map);
        let Some(w) = map.get(id) else {
            return Walk::Whole("no watch in place");
        };
        let mut p = lock(&w.shared.pending);
        let changes = std::mem::take(&mut p.changes);
        (p.first, p.last, p.ready) = (None, None, false);
        let whole = p.whole.take();
        if p.backend.is_none() {
            Walk::Whole("no watch in place")
        } else if let Some(why) = whole {
            Walk::Whole(why)
        } else if changes.rescan {
            Walk::Whole("changes were lost (an event queue overflowed, or more directories changed than watch_max_dirs)")
        } else if full {
            Walk::Whole(
                "not started by a change (replicate now, the rescan interval, a resumed job)",
            )
        } else {
            Walk::Changed(changes.dirs)
        }
    }

    /// The next job of `id` walks the whole tree, for `why` (a job of a policy snapshot
    /// replicated another point in time than the live tree its changes are relative to).
    pub(crate) fn walk_whole(&self, id: &RelationshipId, why: &'static str) {
        if let Some(w) = lock(&self.map).get(id) {
            lock(&w.shared.pending).whole = Some(why);
        }
    }

    /// A job of `id` failed: what it took was not replicated, so the next one walks it all,
    /// and is due without waiting for another change.
    pub(crate) fn failed(&self, id: &RelationshipId) {
        if let Some(w) = lock(&self.map).get(id) {
            let mut p = lock(&w.shared.pending);
            p.whole = Some("the last job failed");
            p.ready = true;
        }
    }
}

/// One watcher thread's work.
struct Job {
    id: RelationshipId,
    path: PathBuf,
    backend: Option<Backend>,
    settle: Duration,
    max_dirs: usize,
    shared: Arc<Shared>,
    wake: Arc<tokio::sync::Notify>,
}

impl Job {
    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    fn run(self) {
        while !self.stopped() {
            let err = match Watcher::new(&self.path, self.backend) {
                Ok(w) => {
                    tracing::info!(id = %self.id, backend = %w.backend(), "watching the source for changes");
                    {
                        // Changes before the watch was placed were not seen: the next job
                        // walks everything.
                        let mut p = lock(&self.shared.pending);
                        p.backend = Some(w.backend());
                        p.whole = Some("the watch was just placed");
                        p.ready = true;
                        p.error = None;
                    }
                    self.wake.notify_one();
                    match self.watch(w) {
                        Ok(()) => return,
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            tracing::warn!(id = %self.id, "watching the source: {err}; continuous replication runs on its interval meanwhile");
            {
                let mut p = lock(&self.shared.pending);
                p.backend = None;
                p.whole = Some("the watch failed");
                p.error = Some(err.to_string());
            }
            let until = Instant::now() + RETRY_AFTER;
            while Instant::now() < until && !self.stopped() {
                std::thread::sleep(LOOK_EVERY);
            }
        }
    }

    /// Gathers events until stopped (Ok) or the watch fails.
    fn watch(&self, mut w: Watcher) -> mover::Result<()> {
        let max_batch = self.settle * MAX_BATCH_SETTLES;
        while !self.stopped() {
            let due = lock(&self.shared.pending).due(self.settle, max_batch);
            let now = Instant::now();
            let timeout = due.map_or(LOOK_EVERY, |d| d.saturating_duration_since(now));
            if w.wait(timeout.min(LOOK_EVERY))? {
                let mut got = Changes::default();
                w.drain(&mut got)?;
                if !got.is_empty() {
                    let now = Instant::now();
                    let mut p = lock(&self.shared.pending);
                    p.changes.merge(got);
                    p.changes.bound(self.max_dirs);
                    p.first.get_or_insert(now);
                    p.last = Some(now);
                }
            }
            let settled = {
                let mut p = lock(&self.shared.pending);
                let settled = p
                    .due(self.settle, max_batch)
                    .is_some_and(|d| Instant::now() >= d);
                if settled {
                    (p.first, p.last, p.ready) = (None, None, true);
                }
                settled
            };
            if settled {
                self.wake.notify_one();
            }
        }
        Ok(())
    }
}
