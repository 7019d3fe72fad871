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

/// Reserved name at the top of every tree: kept policy snapshots (`<id>_<policy>/`), on the
/// source as taken and on the target as replicated. They are outside the mirrored tree and its
/// hash, as `.snapshot` is on the filers whose behaviour mover follows.
pub const SNAPSHOT_DIR: &[u8] = b".snapshot";

/// Whether `name`, at the top of a tree, is one of the reserved names that are never part of it.
pub fn reserved_at_top(name: &[u8]) -> bool {
    name == STATE_DIR || name == SNAPSHOT_DIR
}
