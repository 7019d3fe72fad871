//! Two entry lists of one tree at two points in time, compared by path: which entry of the
//! base (a recovery point's list) sits at the path of each entry of the new list, and the edit
//! script that turns the base into the new list (the delta entry list of protocol.md). Pure.
//!
//! Both lists are canonical (pre-order, children sorted by name), so the entries they share by
//! path appear in the same relative order in both: the script walks the base once, keeping,
//! dropping or replacing its entries and putting new ones in between.

use super::entry::{Entry, EntryKind};
use crate::units::EntryId;
use crate::wire::message::DeltaOp;
use std::collections::HashMap;

/// A base list's entries by (parent, name), so a new list's entries find their counterparts
/// as they arrive, in any order a walk produces them.
pub struct BaseIndex<'a> {
    children: HashMap<(u32, &'a [u8]), u32>,
}

impl<'a> BaseIndex<'a> {
    /// Indexes `base`, leaving out entries marked in `skip` (empty: none).
    pub fn new(base: &'a [Entry], skip: &[bool]) -> BaseIndex<'a> {
        let children = base
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(i, _)| !skip.get(*i).copied().unwrap_or(false))
            .map(|(i, e)| ((e.parent.0, e.name.as_slice()), i as u32))
            .collect();
        BaseIndex { children }
    }

    pub fn child(&self, parent: u32, name: &[u8]) -> Option<u32> {
        self.children.get(&(parent, name)).copied()
    }
}

/// For each entry of `new` (entries marked in `skip_new` get None), the entry of `base` at the
/// same path, if any (never one marked in `skip_base`).
pub fn match_paths(
    new: &[Entry],
    skip_new: &[bool],
    base: &[Entry],
    skip_base: &[bool],
) -> Vec<Option<u32>> {
    let mut m = PathMatcher::new(base);
    for e in new {
        m.next(e);
    }
    let mut out = m.matched;
    for (i, x) in out.iter_mut().enumerate() {
        let skipped = |k: usize| skip_base.get(k).copied().unwrap_or(false);
        if skip_new.get(i).copied().unwrap_or(false) || x.is_some_and(|k| skipped(k as usize)) {
            *x = None;
        }
    }
    out
}

/// Finds, for each entry of a new list as it arrives in canonical order, the entry of a
/// canonical base list at the same path: a merge of the two walks, directory by directory, by
/// name (no hashing, so nothing a peer names can make it slow). Entries out of canonical order
/// simply find nothing.
pub struct PathMatcher<'a> {
    base: &'a [Entry],
    ends: Vec<u32>,
    /// Open directories of the new list along the current path: (new id, the base directory
    /// at its path, the next child of that base directory not yet passed).
    open: Vec<(u32, Option<u32>, u32)>,
    /// The base entry at the path of each new entry so far.
    pub matched: Vec<Option<u32>>,
}

impl<'a> PathMatcher<'a> {
    pub fn new(base: &'a [Entry]) -> PathMatcher<'a> {
        PathMatcher {
            base,
            ends: subtree_ends(base),
            open: Vec::new(),
            matched: Vec::new(),
        }
    }

    /// The base entry at the path of `e`, the next entry of the new list.
    pub fn next(&mut self, e: &Entry) -> Option<u32> {
        let i = self.matched.len() as u32;
        let b = if i == 0 {
            self.base.first().map(|_| 0)
        } else {
            self.child(e.parent.0, &e.name)
        };
        self.matched.push(b);
        if e.kind == EntryKind::Dir {
            let bd = b.filter(|&b| self.base[b as usize].kind == EntryKind::Dir);
            self.open.push((i, bd, bd.map_or(0, |b| b + 1)));
        }
        b
    }

    fn child(&mut self, parent: u32, name: &[u8]) -> Option<u32> {
        let k = self.open.iter().rposition(|(n, _, _)| *n == parent)?;
        self.open.truncate(k + 1);
        let (_, bd, next) = self.open.last_mut()?;
        let bd = (*bd)?;
        let end = self.ends[bd as usize];
        // Children come in name order on both sides: base children named before this one
        // are not in the new list.
        while *next < end {
            let c = &self.base[*next as usize];
            match c.name.as_slice().cmp(name) {
                std::cmp::Ordering::Less => *next = self.ends[*next as usize],
                std::cmp::Ordering::Equal if c.parent.0 == bd => {
                    let found = *next;
                    *next = self.ends[found as usize];
                    return Some(found);
                }
                _ => return None,
            }
        }
        None
    }
}

/// One past the last entry of each entry's subtree (pre-order: an entry's descendants follow it
/// contiguously).
pub fn subtree_ends(entries: &[Entry]) -> Vec<u32> {
    let n = entries.len();
    let mut end: Vec<u32> = (1..=n as u32).collect();
    // Children come after their parents: a reverse pass carries each end up to its parent.
    for i in (1..n).rev() {
        let p = entries[i].parent.index();
        if p < i {
            end[p] = end[p].max(end[i]);
        }
    }
    end
}

/// Builds the delta of a new list against `base` as the new list's entries arrive in order
/// (the sender streams it while its walk runs).
pub struct DeltaEncoder<'a> {
    base: &'a [Entry],
    paths: PathMatcher<'a>,
    /// Next base entry not yet kept, replaced or skipped.
    cursor: u32,
    /// Keeps not yet emitted (runs are merged).
    keep: u32,
    /// Entries put or replaced so far (what the delta costs beyond a few bytes).
    pub changed: u64,
}

impl<'a> DeltaEncoder<'a> {
    pub fn new(base: &'a [Entry]) -> DeltaEncoder<'a> {
        DeltaEncoder {
            base,
            paths: PathMatcher::new(base),
            cursor: 0,
            keep: 0,
            changed: 0,
        }
    }

    fn flush_keep(&mut self, out: &mut Vec<DeltaOp>) {
        if self.keep > 0 {
            out.push(DeltaOp::Keep(self.keep));
            self.keep = 0;
        }
    }

    /// The next entry of the new list (ids are the new list's); appends the ops it takes.
    pub fn push(&mut self, e: &Entry, out: &mut Vec<DeltaOp>) {
        let b = self.paths.next(e);
        // Shared paths come in the same order in both canonical lists; a base entry behind the
        // cursor (a list out of order) is simply not used.
        let b = b.filter(|&b| b >= self.cursor);
        if b.is_none() {
            if let Some(m) = self.paths.matched.last_mut() {
                *m = None;
            }
        }
        match b {
            Some(b) => {
                if b > self.cursor {
                    self.flush_keep(out);
                    out.push(DeltaOp::Skip(b - self.cursor));
                }
                if self.same(e, &self.base[b as usize]) {
                    self.keep += 1;
                } else {
                    self.flush_keep(out);
                    out.push(DeltaOp::Replace(e.clone()));
                    self.changed += 1;
                }
                self.cursor = b + 1;
            }
            None => {
                self.flush_keep(out);
                out.push(DeltaOp::Put(e.clone()));
                self.changed += 1;
            }
        }
    }

    /// Ends the script: base entries after the last one used are dropped implicitly.
    pub fn finish(&mut self, out: &mut Vec<DeltaOp>) {
        self.flush_keep(out);
    }

    /// `e` (new numbering) equals base entry `b` in every field; a hard link's target must be
    /// the base entry its own target replaced or kept.
    fn same(&self, e: &Entry, b: &Entry) -> bool {
        let kind = match (&e.kind, &b.kind) {
            (EntryKind::HardLink { target: t }, EntryKind::HardLink { target: bt }) => {
                self.paths.matched.get(t.index()).copied().flatten() == Some(bt.0)
            }
            (EntryKind::HardLink { .. }, _) | (_, EntryKind::HardLink { .. }) => false,
            (a, b) => a == b,
        };
        kind && e.name == b.name && e.meta == b.meta && e.xattrs == b.xattrs
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaError {
    #[error("delta entry list keeps or skips past the end of the base list")]
    PastBase,
    #[error("delta entry list keeps or skips nothing")]
    Empty,
    #[error("delta entry list keeps base entry {0} whose parent or link target it dropped")]
    Orphan(u32),
}

impl From<DeltaError> for crate::error::Error {
    fn from(e: DeltaError) -> Self {
        crate::error::Error::Verify(format!("invalid entry list from peer: {e}"))
    }
}

/// Rebuilds the new list from a base list and the delta's ops, one op at a time (the base is
/// passed to each call, so its owner may keep it elsewhere).
pub struct DeltaApplier {
    cursor: u32,
    /// New id of each base entry kept or replaced.
    new_id: Vec<Option<u32>>,
    len: u32,
}

impl DeltaApplier {
    /// An applier for a base list of `base_len` entries.
    pub fn new(base_len: usize) -> DeltaApplier {
        DeltaApplier {
            cursor: 0,
            new_id: vec![None; base_len],
            len: 0,
        }
    }

    fn take(&mut self, n: u32) -> Result<std::ops::Range<usize>, DeltaError> {
        if n == 0 {
            return Err(DeltaError::Empty);
        }
        let end = self
            .cursor
            .checked_add(n)
            .filter(|&e| e as usize <= self.new_id.len())
            .ok_or(DeltaError::PastBase)?;
        let r = self.cursor as usize..end as usize;
        self.cursor = end;
        Ok(r)
    }

    /// Applies one op to `base` (the list this applier was made for); `emit` gets each entry
    /// of the new list it yields, in order (and may refuse it: the caller structure-checks and
    /// budgets every entry).
    pub fn apply<E: From<DeltaError>>(
        &mut self,
        base: &[Entry],
        op: DeltaOp,
        mut emit: impl FnMut(Entry) -> Result<(), E>,
    ) -> Result<(), E> {
        match op {
            DeltaOp::Keep(n) => {
                for b in self.take(n)? {
                    let Some(src) = base.get(b) else {
                        return Err(DeltaError::PastBase.into());
                    };
                    let mut e = src.clone();
                    let remap = |id: EntryId| -> Option<EntryId> {
                        self.new_id.get(id.index()).copied().flatten().map(EntryId)
                    };
                    if b != 0 {
                        e.parent = remap(e.parent).ok_or(DeltaError::Orphan(b as u32))?;
                    }
                    if let EntryKind::HardLink { target } = e.kind {
                        e.kind = EntryKind::HardLink {
                            target: remap(target).ok_or(DeltaError::Orphan(b as u32))?,
                        };
                    }
                    self.new_id[b] = Some(self.len);
                    self.len += 1;
                    emit(e)?;
                }
            }
            DeltaOp::Skip(n) => {
                self.take(n)?;
            }
            DeltaOp::Put(e) => {
                self.len += 1;
                emit(e)?;
            }
            DeltaOp::Replace(e) => {
                let b = self.take(1)?.start;
                self.new_id[b] = Some(self.len);
                self.len += 1;
                emit(e)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::entry::{Meta, StructureChecker};
    use proptest::prelude::*;

    /// A canonical list from (depth-first) paths: each path's parent must precede it.
    fn list(paths: &[(&str, u8)]) -> Vec<Entry> {
        let mut out = vec![Entry {
            parent: EntryId(0),
            name: vec![],
            kind: EntryKind::Dir,
            meta: Meta::default(),
            xattrs: vec![],
        }];
        let mut ids: HashMap<String, u32> = HashMap::from([(String::new(), 0)]);
        let mut sorted: Vec<&(&str, u8)> = paths.iter().collect();
        // Canonical pre-order: compare component by component.
        sorted.sort_by(|a, b| a.0.split('/').cmp(b.0.split('/')));
        for (p, v) in sorted {
            if ids.contains_key(*p) {
                continue;
            }
            let (parent, name) = p.rsplit_once('/').unwrap_or(("", p));
            let Some(&pid) = ids.get(parent) else {
                continue;
            };
            if out[pid as usize].kind != EntryKind::Dir {
                continue;
            }
            let kind = match v % 3 {
                0 => EntryKind::Dir,
                1 => EntryKind::File { size: *v as u64 },
                _ => match out
                    .iter()
                    .position(|e| matches!(e.kind, EntryKind::File { .. }))
                {
                    Some(t) => EntryKind::HardLink {
                        target: EntryId(t as u32),
                    },
                    None => EntryKind::File { size: 0 },
                },
            };
            ids.insert(p.to_string(), out.len() as u32);
            out.push(Entry {
                parent: EntryId(pid),
                name: name.as_bytes().to_vec(),
                kind,
                meta: Meta {
                    mtime_sec: (*v / 7) as i64,
                    ..Meta::default()
                },
                xattrs: vec![],
            });
        }
        out
    }

    fn delta(base: &[Entry], new: &[Entry]) -> Vec<DeltaOp> {
        let mut enc = DeltaEncoder::new(base);
        let mut ops = Vec::new();
        for e in new {
            enc.push(e, &mut ops);
        }
        enc.finish(&mut ops);
        ops
    }

    fn rebuild(base: &[Entry], ops: Vec<DeltaOp>) -> Result<Vec<Entry>, DeltaError> {
        let mut a = DeltaApplier::new(base.len());
        let mut out = Vec::new();
        for op in ops {
            a.apply(base, op, |e| -> Result<(), DeltaError> {
                out.push(e);
                Ok(())
            })?;
        }
        Ok(out)
    }

    fn name() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(str::to_string)
    }

    fn paths() -> impl Strategy<Value = Vec<(String, u8)>> {
        prop::collection::vec(
            (
                prop::collection::vec(name(), 1..4).prop_map(|v| v.join("/")),
                any::<u8>(),
            ),
            0..40,
        )
    }

    proptest! {
        #[test]
        fn a_delta_rebuilds_the_new_list_exactly(base in paths(), new in paths()) {
            let b: Vec<(&str, u8)> = base.iter().map(|(p, v)| (p.as_str(), *v)).collect();
            let n: Vec<(&str, u8)> = new.iter().map(|(p, v)| (p.as_str(), *v)).collect();
            let (base, new) = (list(&b), list(&n));
            let mut c = StructureChecker::new();
            for e in &new {
                prop_assert!(c.push(e).is_ok(), "generator made a non-canonical list");
            }
            prop_assert_eq!(rebuild(&base, delta(&base, &new)).unwrap(), new.clone());
            // The merge finds what a lookup by path finds.
            let index = BaseIndex::new(&base, &[]);
            let mut by_path: Vec<Option<u32>> = Vec::new();
            for (i, e) in new.iter().enumerate() {
                let m = if i == 0 { Some(0) } else {
                    by_path[e.parent.index()].and_then(|bp| index.child(bp, &e.name))
                };
                by_path.push(m);
            }
            prop_assert_eq!(match_paths(&new, &[], &base, &[]), by_path);
            // Against itself a list is one keep.
            prop_assert_eq!(delta(&new, &new), vec![DeltaOp::Keep(new.len() as u32)]);
        }
    }

    #[test]
    fn a_keep_whose_parent_was_dropped_is_refused() {
        let base = list(&[("a", 0), ("a/f", 1)]);
        let ops = vec![DeltaOp::Keep(1), DeltaOp::Skip(1), DeltaOp::Keep(1)];
        assert_eq!(rebuild(&base, ops), Err(DeltaError::Orphan(2)));
        let past = vec![DeltaOp::Keep(4)];
        assert_eq!(rebuild(&base, past), Err(DeltaError::PastBase));
        assert_eq!(
            rebuild(&base, vec![DeltaOp::Skip(0)]),
            Err(DeltaError::Empty)
        );
    }

    #[test]
    fn paths_match_across_renumbering() {
        let base = list(&[("a", 0), ("a/f", 1), ("b", 0), ("b/g", 4)]);
        let new = list(&[("a", 0), ("a/e", 1), ("a/f", 1), ("b", 0), ("b/g", 4)]);
        let m = match_paths(&new, &[], &base, &[]);
        assert_eq!(m, vec![Some(0), Some(1), None, Some(2), Some(3), Some(4)]);
        assert_eq!(subtree_ends(&new), vec![6, 4, 3, 4, 6, 6]);
    }
}
