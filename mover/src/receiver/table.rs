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
    /// Directories created by this session's apply phase (no set-gid parent can be involved).
    pub fresh_dir: Vec<bool>,
    /// Owner the kernel gives files this process creates in a fresh directory.
    pub creator: (u32, u32),
    pub umask: u32,
}

impl RecvTable {
    /// Size of `e` if it is a regular file whose data this session carries.
    pub fn needed_size(&self, e: EntryId) -> Option<u64> {
        match self.entries.get(e.index()).map(|x| &x.kind) {
            Some(EntryKind::File { size }) if self.need[e.index()] => Some(*size),
            _ => None,
        }
    }

    /// The kernel already gave a file created for `e` its source owner.
    pub fn owner_is_default(&self, e: EntryId) -> bool {
        let x = &self.entries[e.index()];
        self.fresh_dir[x.parent.index()] && (x.meta.uid, x.meta.gid) == self.creator
    }

    pub fn is_needed_inline(&self, e: EntryId) -> bool {
        matches!(self.needed_size(e), Some(s) if is_inline(s))
    }

    pub fn is_needed_extent_file(&self, e: EntryId) -> bool {
        matches!(self.needed_size(e), Some(s) if !is_inline(s))
    }
}
