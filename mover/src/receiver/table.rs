//! What a receiver's workers need to know about a session, built once by the control thread
//! before any data frame is accepted and then shared read-only (no locks on the data path).

use crate::sender::plan::is_inline;
use crate::tree::entry::{Entry, EntryKind};
use crate::units::EntryId;
use std::os::fd::OwnedFd;

pub struct RecvTable {
    pub root: OwnedFd,
    pub entries: Vec<Entry>,
    pub paths: Vec<Vec<u8>>,
    /// Entries whose data this session transfers.
    pub need: Vec<bool>,
    pub owners: bool,
}

impl RecvTable {
    /// Size of `e` if it is a regular file whose data this session carries.
    pub fn needed_size(&self, e: EntryId) -> Option<u64> {
        match self.entries.get(e.index()).map(|x| &x.kind) {
            Some(EntryKind::File { size }) if self.need[e.index()] => Some(*size),
            _ => None,
        }
    }

    pub fn is_needed_inline(&self, e: EntryId) -> bool {
        matches!(self.needed_size(e), Some(s) if is_inline(s))
    }

    pub fn is_needed_extent_file(&self, e: EntryId) -> bool {
        matches!(self.needed_size(e), Some(s) if !is_inline(s))
    }
}
