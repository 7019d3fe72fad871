//! The replicated tree as data: entries, the canonical walk, xattrs and the tree hash.

pub mod entry;
pub mod hash;
pub mod walk;
pub mod xattr;
