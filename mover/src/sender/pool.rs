//! The units of one process's workers, shared so that none of them idles while another still
//! has work. The plan gives each worker a contiguous span of the units; a worker takes units
//! from the front of its own span and, once that is empty, takes the back half of the span with
//! the most left and goes on from there.
//!
//! Why: the plan balances bytes, not time. On a 2-CPU VM the same 512 MiB cost one CPU's
//! sender/receiver pair up to 1.5 times what it cost the other's, so one CPU idled for the
//! last third of a hot job. Whoever ends first now takes over the rest of the slower one's
//! span, and a thief still reads a run of consecutive units (the same file, or neighbouring
//! directories) front to back.
//!
//! Each span is one `AtomicU64` (front index in the low half, back in the high half). The owner
//! moves its front up by compare-and-swap; a thief moves a victim's back down the same way,
//! claiming the first unit it moved, then stores the rest into its own span, which is empty
//! and which nobody else fills. A span's value says all there is to it, so a value that comes
//! back (ABA) is harmless, and every unit is claimed exactly once.

use super::plan::Unit;
use crate::units::EntryId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Pools for workers that may share work: those that send to the same address (a session
/// spread over write places keeps each place's share at that place). For each worker, in
/// order: its pool and its span's number in it.
pub fn pools_by_destination<K: PartialEq>(
    workers: Vec<(K, Vec<Unit>)>,
) -> Vec<(Arc<UnitPool>, usize)> {
    let mut groups: Vec<(K, Vec<Vec<Unit>>)> = Vec::new();
    let mut at = Vec::with_capacity(workers.len());
    for (key, units) in workers {
        let g = match groups.iter().position(|g| g.0 == key) {
            Some(g) => g,
            None => {
                groups.push((key, Vec::new()));
                groups.len() - 1
            }
        };
        at.push((g, groups[g].1.len()));
        groups[g].1.push(units);
    }
    let pools: Vec<Arc<UnitPool>> = groups
        .into_iter()
        .map(|(_, spans)| Arc::new(UnitPool::new(spans)))
        .collect();
    at.into_iter()
        .map(|(g, slot)| (pools[g].clone(), slot))
        .collect()
}

pub struct UnitPool {
    units: Vec<Unit>,
    /// Per worker: `front | back << 32`, its span of `units` still to claim.
    spans: Vec<AtomicU64>,
    /// Per worker: its span as planned.
    planned: Vec<(u32, u32)>,
    /// Chunks not yet sent of each large file whose last chunk is in this pool: the file
    /// counts as sent (progress) when they are all sent, whichever workers sent them. A file
    /// whose last chunk another place sends is counted there.
    left: HashMap<EntryId, AtomicU32>,
}

fn pack(front: u32, back: u32) -> u64 {
    u64::from(front) | (u64::from(back) << 32)
}

fn unpack(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

impl UnitPool {
    /// One span per worker, in order (the plan's contiguous shares).
    pub fn new(per_worker: Vec<Vec<Unit>>) -> UnitPool {
        let total: usize = per_worker.iter().map(Vec::len).sum();
        assert!(
            u32::try_from(total).is_ok(),
            "more units than a span can index"
        );
        let mut units = Vec::with_capacity(total);
        let mut spans = Vec::with_capacity(per_worker.len());
        let mut planned = Vec::with_capacity(per_worker.len());
        for w in per_worker {
            let front = units.len() as u32;
            units.extend(w);
            planned.push((front, units.len() as u32));
            spans.push(AtomicU64::new(pack(front, units.len() as u32)));
        }
        // Per large file: its chunks here, and whether its final one is among them.
        let mut chunks: HashMap<EntryId, (u32, bool)> = HashMap::new();
        for u in &units {
            if let Unit::Chunk { entry, last, .. } = *u {
                let c = chunks.entry(entry).or_default();
                c.0 += 1;
                c.1 |= last;
            }
        }
        let left = chunks
            .into_iter()
            .filter(|(_, (_, last))| *last)
            .map(|(e, (n, _))| (e, AtomicU32::new(n)))
            .collect();
        UnitPool {
            units,
            spans,
            planned,
            left,
        }
    }

    /// One chunk of `entry` is sent: 1 if that was the last of them to go (the file counts
    /// as sent), else 0. A thief may send a file's final chunk before its owner sends the
    /// rest, so the chunk marked `last` does not say it.
    pub fn chunk_sent(&self, entry: EntryId) -> u64 {
        self.left.get(&entry).map_or(0, |n| {
            let before = n.fetch_sub(1, Ordering::AcqRel);
            debug_assert!(before > 0, "more chunks of a file sent than planned");
            u64::from(before == 1)
        })
    }

    pub fn workers(&self) -> usize {
        self.spans.len()
    }

    /// The units planned for worker `w` (its span before any stealing), to size its buffers
    /// as before the pool: a stolen unit fits any worker's buffers.
    pub fn planned(&self, w: usize) -> &[Unit] {
        let (front, back) = self.planned[w];
        &self.units[front as usize..back as usize]
    }

    /// The next unit for worker `w`: from its own span, else the first of the back half of
    /// the fullest other span (the rest of that half becomes `w`'s). None when every span
    /// is empty.
    pub fn next(&self, w: usize) -> Option<&Unit> {
        let i = self.take_front(w).or_else(|| self.steal(w))?;
        Some(&self.units[i as usize])
    }

    /// Bound of every compare-and-swap loop. A swap on a span fails only because the span
    /// changed since it was read, and every change goes with a claim: the owner's take, a
    /// thief's swap (which claims the first unit it moves), and that thief's store into its
    /// own span. So there are at most 2 changes per unit.
    fn retries(&self) -> usize {
        2 * self.units.len() + 2
    }

    fn take_front(&self, w: usize) -> Option<u32> {
        let span = &self.spans[w];
        let mut cur = span.load(Ordering::Acquire);
        for _ in 0..self.retries() {
            let (front, back) = unpack(cur);
            if front >= back {
                return None;
            }
            match span.compare_exchange(
                cur,
                pack(front + 1, back),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(front),
                Err(now) => cur = now,
            }
        }
        unreachable!("a span changed more often than there are units")
    }

    /// Claims the first unit of the back half of the fullest other span and moves the rest
    /// of that half into `w`'s (empty) span. None when no other span has anything left.
    fn steal(&self, w: usize) -> Option<u32> {
        for _ in 0..self.retries() {
            let (v, cur) = (0..self.spans.len())
                .filter(|&v| v != w)
                .map(|v| (v, self.spans[v].load(Ordering::Acquire)))
                .max_by_key(|&(_, s)| {
                    let (f, b) = unpack(s);
                    b.saturating_sub(f)
                })?;
            let (front, back) = unpack(cur);
            if front >= back {
                return None;
            }
            // At least one unit; the victim keeps the front half it is reading.
            let mid = front + (back - front) / 2;
            if self.spans[v]
                .compare_exchange(cur, pack(front, mid), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // Only `w` fills its own span, and only when it is empty: nobody claims
                // from it meanwhile, so a plain store cannot lose a claim.
                debug_assert!({
                    let (f, b) = unpack(self.spans[w].load(Ordering::Acquire));
                    f >= b
                });
                self.spans[w].store(pack(mid + 1, back), Ordering::Release);
                return Some(mid);
            }
        }
        unreachable!("spans changed more often than there are units")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn chunk(e: u32) -> Unit {
        Unit::Chunk {
            entry: EntryId(e),
            offset: 0,
            len: 1,
            last: true,
        }
    }

    fn entry(u: &Unit) -> u32 {
        match u {
            Unit::Chunk { entry, .. } => entry.0,
            Unit::Batch { .. } => unreachable!("only chunks here"),
        }
    }

    #[test]
    fn a_worker_alone_takes_its_span_in_order_then_steals_the_back_half() {
        let pool = UnitPool::new(vec![
            (0..4).map(chunk).collect(),
            (4..12).map(chunk).collect(),
        ]);
        let mine: Vec<u32> = (0..4)
            .map(|_| entry(pool.next(0).expect("own unit")))
            .collect();
        assert_eq!(mine, vec![0, 1, 2, 3]);
        // Worker 1 has not started: worker 0 takes the back half of its 8, front to back.
        let stolen: Vec<u32> = (0..4)
            .map(|_| entry(pool.next(0).expect("stolen unit")))
            .collect();
        assert_eq!(stolen, vec![8, 9, 10, 11]);
        assert_eq!(entry(pool.next(1).expect("own")), 4);
    }

    #[test]
    fn every_unit_is_claimed_exactly_once_by_racing_workers() {
        for workers in [1usize, 2, 3, 8] {
            let per: Vec<Vec<Unit>> = (0..workers)
                .map(|w| {
                    let n = 1 + 997 * (w % 3);
                    (0..n as u32)
                        .map(|i| chunk(w as u32 * 10_000 + i))
                        .collect()
                })
                .collect();
            let expected: HashSet<u32> = per.iter().flatten().map(entry).collect();
            let pool = UnitPool::new(per);
            let got: Vec<Vec<u32>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..workers)
                    .map(|w| {
                        let pool = &pool;
                        s.spawn(move || {
                            let mut mine = Vec::new();
                            while let Some(u) = pool.next(w) {
                                mine.push(entry(u));
                            }
                            mine
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("worker"))
                    .collect()
            });
            let all: Vec<u32> = got.into_iter().flatten().collect();
            let unique: HashSet<u32> = all.iter().copied().collect();
            assert_eq!(all.len(), unique.len(), "a unit claimed twice");
            assert_eq!(unique, expected, "a unit never claimed");
        }
    }

    #[test]
    fn workers_to_different_places_never_take_each_others_units() {
        let pools = pools_by_destination(vec![
            ("a", (0..2).map(chunk).collect()),
            ("b", (2..10).map(chunk).collect()),
            ("a", (10..12).map(chunk).collect()),
        ]);
        let (a0, s0) = &pools[0];
        let mut got = Vec::new();
        while let Some(u) = a0.next(*s0) {
            got.push(entry(u));
        }
        // Its own span, then the other worker to "a"'s; none of "b"'s.
        assert_eq!(got, vec![0, 1, 11, 10]);
        let (b, sb) = &pools[1];
        assert_eq!(b.workers(), 1);
        assert_eq!(entry(b.next(*sb).expect("b keeps its units")), 2);
        assert!(Arc::ptr_eq(&pools[0].0, &pools[2].0));
    }

    /// Few units and many thieves: a steal claims what it moves, so a unit cannot pass from
    /// thief to thief unclaimed, and nobody runs out of rounds.
    #[test]
    fn a_lone_unit_among_many_thieves_is_claimed_once() {
        for round in 0..200u32 {
            let workers = 2 + (round % 7) as usize;
            let mut per: Vec<Vec<Unit>> = vec![Vec::new(); workers];
            per[round as usize % workers] = (0..1 + round % 3).map(chunk).collect();
            let pool = UnitPool::new(per);
            let claimed: usize = std::thread::scope(|s| {
                let hs: Vec<_> = (0..workers)
                    .map(|w| {
                        let pool = &pool;
                        s.spawn(move || std::iter::from_fn(|| pool.next(w)).count())
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().expect("worker")).sum()
            });
            assert_eq!(claimed as u32, 1 + round % 3, "round {round}");
        }
    }

    #[test]
    fn a_file_counts_as_sent_when_its_last_chunk_to_go_is_sent_not_its_final_one() {
        let part = |off: u64, last: bool| Unit::Chunk {
            entry: EntryId(7),
            offset: off,
            len: 1,
            last,
        };
        let pool = UnitPool::new(vec![
            vec![part(0, false), part(1, false)],
            vec![part(2, true)],
        ]);
        // The final chunk goes first (a thief took it): the file is not sent yet.
        assert_eq!(pool.chunk_sent(EntryId(7)), 0);
        assert_eq!(pool.chunk_sent(EntryId(7)), 0);
        assert_eq!(pool.chunk_sent(EntryId(7)), 1);
        // A file whose final chunk another place sends is counted there.
        let front = UnitPool::new(vec![vec![part(0, false)]]);
        assert_eq!(front.chunk_sent(EntryId(7)), 0);
    }

    #[test]
    fn an_empty_pool_gives_nothing() {
        let pool = UnitPool::new(vec![Vec::new(), Vec::new()]);
        assert!(pool.next(0).is_none());
        assert!(pool.next(1).is_none());
    }
}
