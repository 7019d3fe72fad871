//! Which bytes of each large file a session's Data frames have claimed, so that no byte is
//! accepted twice. A file is finished when its announced byte count has been written
//! (`RecvTable::written`); without this, a sender that sent one range twice and another not at
//! all would finish a file with a hole, which the recovery point's metadata-only verification
//! does not see.
//!
//! A write place claims for its own workers and reports its ranges; the committing receiver
//! claims them in its table when it folds the place's result, so a range sent to two places
//! is refused as well.
//!
//! One lock per file, taken once per Data frame (up to `DATA_CHUNK`, 1 MiB) before its writes
//! are submitted: uncontended unless two workers carry extents of one file at that instant, and
//! held for a map lookup. The ranges merge as they meet, so a file written in order holds one.

use crate::units::EntryId;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Claimed byte ranges of one file: start -> end, disjoint, none adjacent to another.
#[derive(Debug, Default)]
pub struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    /// Claims [start, end); false (and nothing claimed) if any of it was claimed before.
    pub fn claim(&mut self, start: u64, end: u64) -> bool {
        debug_assert!(start < end, "empty claim {start}..{end}");
        // The last range that starts before `end` is the only one that can overlap: those
        // before it end at or before its start.
        let before = self.0.range(..end).next_back().map(|(s, e)| (*s, *e));
        let (mut start, mut end) = (start, end);
        if let Some((s, e)) = before {
            if e > start {
                return false;
            }
            if e == start {
                self.0.remove(&s);
                start = s;
            }
        }
        if let Some(e) = self.0.remove(&end) {
            end = e;
        }
        self.0.insert(start, end);
        true
    }

    /// The claimed ranges as (offset, length), in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(s, e)| (*s, e - s))
    }
}

/// The claims of every large file a session carries data for.
#[derive(Debug, Default)]
pub struct Claims(HashMap<u32, Mutex<Ranges>>);

impl Claims {
    pub fn new(files: impl IntoIterator<Item = u32>) -> Claims {
        Claims(files.into_iter().map(|k| (k, Mutex::default())).collect())
    }

    /// Claims [off, off + len) of file `e`: false if the file is not one this session
    /// carries, or if a byte of the range was claimed before.
    pub fn claim(&self, e: EntryId, off: u64, len: u64) -> bool {
        let Some(end) = off.checked_add(len).filter(|_| len > 0) else {
            return false;
        };
        let Some(m) = self.0.get(&e.0) else {
            return false;
        };
        // A poisoned lock means a worker panicked mid-claim: the map is still well formed (a
        // claim mutates it only after its checks), and the session fails on that panic anyway.
        m.lock().unwrap_or_else(|p| p.into_inner()).claim(off, end)
    }

    /// Every file's claimed ranges, (offset, length) in order, for the files with any: what a
    /// write place reports, so the committing receiver claims them too (share.rs `fold`).
    pub fn taken(&self) -> Vec<(u32, Vec<(u64, u64)>)> {
        let mut all: Vec<_> = self
            .0
            .iter()
            .map(|(k, m)| {
                (
                    *k,
                    m.lock().unwrap_or_else(|p| p.into_inner()).iter().collect(),
                )
            })
            .filter(|(_, r): &(u32, Vec<_>)| !r.is_empty())
            .collect();
        all.sort_unstable_by_key(|(k, _)| *k);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Number of disjoint ranges and claimed bytes in all.
    fn shape(r: &Ranges) -> (usize, u64) {
        (r.0.len(), r.0.iter().map(|(s, e)| e - s).sum())
    }

    #[test]
    fn a_range_claimed_twice_or_overlapped_is_refused() {
        let mut r = Ranges::default();
        assert!(r.claim(100, 200));
        for (s, e) in [(100, 200), (150, 160), (50, 101), (199, 300), (0, 1000)] {
            assert!(!r.claim(s, e), "{s}..{e}");
        }
        assert!(r.claim(200, 300) && r.claim(0, 100));
        assert_eq!(shape(&r), (1, 300), "adjacent ranges merge");
    }

    proptest! {
        /// Against a byte map: a claim succeeds exactly when none of its bytes is taken, and
        /// the ranges stay merged.
        #[test]
        fn claims_agree_with_a_byte_map(ops in prop::collection::vec((0u64..256, 1u64..64), 1..80)) {
            let mut r = Ranges::default();
            let mut taken = [false; 320];
            for (s, l) in ops {
                let (s, e) = (s as usize, (s + l) as usize);
                let free = taken[s..e].iter().all(|t| !t);
                prop_assert_eq!(r.claim(s as u64, e as u64), free);
                if free {
                    taken[s..e].iter_mut().for_each(|t| *t = true);
                }
                let runs = taken.windows(2).filter(|w| w[1] && !w[0]).count() + usize::from(taken[0]);
                prop_assert_eq!(shape(&r), (runs, taken.iter().filter(|t| **t).count() as u64));
            }
        }
    }
}
