//! The replicated tree as data: entries, the canonical walk, xattrs and the tree hash.

pub mod diff;
pub mod entry;
pub mod hash;
pub mod narrow;
pub mod walk;
pub mod xattr;

/// Reserved name at the top of every tree: the receiver's state directory (recovery point,
/// journal) and a source's scratch (snapshots). Walks skip it; the receiver refuses entries and
/// hints that name it.
pub const STATE_DIR: &[u8] = b".mover-state";
