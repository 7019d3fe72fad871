//! What one replicated item is, independent of where it came from (a source walk, the wire or a
//! destination walk). The same type feeds the tree hash on both sides.

use crate::units::EntryId;

/// Longest file name component Linux file systems accept.
pub const MAX_NAME_LEN: usize = 255;
/// PATH_MAX - 1: the longest symlink target the kernel stores.
pub const MAX_SYMLINK_TARGET: usize = 4095;
pub const MAX_XATTR_NAME: usize = 255;
pub const MAX_XATTR_VALUE: usize = 64 * 1024;
pub const MAX_XATTRS_PER_ENTRY: usize = 64;
/// Bound on one session's entry list; keeps receiver memory bounded (about 100 bytes each).
pub const MAX_ENTRIES: u32 = 64 * 1024 * 1024;
/// Deepest directory nesting accepted. Paths are resolved a chunk of components at a time, so
/// depth is bounded by this, not by PATH_MAX.
pub const MAX_DEPTH: usize = 2048;

/// Only the `user.` namespace is replicated: it needs no privilege and carries no security labels.
pub const XATTR_PREFIX: &[u8] = b"user.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File {
        size: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// Another name for the file entry `target` (which precedes it in the list).
    HardLink {
        target: EntryId,
    },
    /// FIFO, socket, character or block device: `file_type` is the S_IFMT bits.
    Special {
        file_type: u32,
        rdev: u64,
    },
}

impl EntryKind {
    pub fn tag(&self) -> u8 {
        match self {
            EntryKind::Dir => 1,
            EntryKind::File { .. } => 2,
            EntryKind::Symlink { .. } => 3,
            EntryKind::HardLink { .. } => 4,
            EntryKind::Special { .. } => 5,
        }
    }
}

/// Metadata applied to an inode. `mode` holds permission bits only (07777).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

/// What differs between the entry a list expects (`want`) and the one found (`got`) at the same
/// place, in words for an operator ("size 12 bytes, expected 10"); every difference, `; `
/// separated.
pub fn describe_difference(want: &Entry, got: &Entry) -> String {
    let kind = |k: &EntryKind| match k {
        EntryKind::Dir => "a directory",
        EntryKind::File { .. } => "a file",
        EntryKind::Symlink { .. } => "a symlink",
        EntryKind::HardLink { .. } => "a hard link",
        EntryKind::Special { .. } => "a special file",
    };
    let mut d = Vec::new();
    if want.name != got.name {
        d.push(format!(
            "found {} there (an entry was added or removed)",
            // A name, never empty (only the root's is, and both lists start with it).
            String::from_utf8_lossy(&got.name)
        ));
    }
    match (&want.kind, &got.kind) {
        (EntryKind::File { size: a }, EntryKind::File { size: b }) if a != b => {
            d.push(format!("size {b} bytes, expected {a}"))
        }
        (EntryKind::Symlink { .. }, EntryKind::Symlink { .. }) if want.kind != got.kind => {
            d.push("the symlink's target differs".into())
        }
        (a, b) if a.tag() != b.tag() => d.push(format!("{}, expected {}", kind(b), kind(a))),
        (a, b) if a != b => d.push("the link or device differs".into()),
        _ => {}
    }
    let (a, b) = (&want.meta, &got.meta);
    if a.mode != b.mode {
        d.push(format!("mode {:o}, expected {:o}", b.mode, a.mode));
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        d.push(format!(
            "owner {}:{}, expected {}:{}",
            b.uid, b.gid, a.uid, a.gid
        ));
    }
    if (a.mtime_sec, a.mtime_nsec) != (b.mtime_sec, b.mtime_nsec) {
        d.push(format!(
            "modified at {}.{:09}, expected {}.{:09}",
            b.mtime_sec, b.mtime_nsec, a.mtime_sec, a.mtime_nsec
        ));
    }
    if want.xattrs != got.xattrs {
        d.push("extended attributes differ".into());
    }
    if d.is_empty() {
        d.push("its place in the tree differs".into());
    }
    d.join("; ")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub parent: EntryId,
    /// One path component; empty only for the root (entry 0).
    pub name: Vec<u8>,
    pub kind: EntryKind,
    pub meta: Meta,
    /// `user.*` extended attributes sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("empty file name")]
    Empty,
    #[error("file name is `.` or `..`")]
    Dots,
    #[error("file name contains `/`")]
    Slash,
    #[error("file name contains NUL")]
    Nul,
    #[error("file name is {0} bytes, longer than {MAX_NAME_LEN}")]
    TooLong(usize),
}

/// A name is one path component: any bytes but `/` and NUL, not `.`/`..`, not empty. This is the
/// first of the receiver's two walls (the second is openat2 with RESOLVE_BENEATH).
pub fn validate_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name == b"." || name == b".." {
        return Err(NameError::Dots);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if name.contains(&b'/') {
        return Err(NameError::Slash);
    }
    if name.contains(&0) {
        return Err(NameError::Nul);
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StructureError {
    #[error("entry {id}: first entry must be the root directory with an empty name")]
    BadRoot { id: u32 },
    #[error("entry {id}: bad name {name:?}: {err}")]
    BadName {
        id: u32,
        name: String,
        err: NameError,
    },
    #[error("entry {id}: parent {parent} is not an earlier directory")]
    BadParent { id: u32, parent: u32 },
    #[error("entry {id}: hard link target {target} is not an earlier regular file")]
    BadLinkTarget { id: u32, target: u32 },
    #[error("entry {id}: directory nesting deeper than {MAX_DEPTH}")]
    TooDeep { id: u32 },
    #[error("entry {id}: duplicate name {name:?} in directory {parent}")]
    Duplicate { id: u32, parent: u32, name: String },
    #[error("entry {id}: {name:?} is out of canonical order (pre-order, children sorted by name)")]
    OutOfOrder { id: u32, name: String },
    #[error("more than {MAX_ENTRIES} entries")]
    TooMany,
}

/// Checks entries as they arrive, in order, so a receiver can reject a hostile list before
/// acting on the bad entry: names, parents, hard-link targets, depth, and canonical order
/// (pre-order, children sorted by name bytes, which also rules out duplicates). Pure: it only
/// remembers kinds, depths and the last name seen in each directory of the current path.
#[derive(Default)]
pub struct StructureChecker {
    kinds: Vec<u8>,
    depth: Vec<u16>,
    /// Directories along the current pre-order path, each with its last child's name.
    open: Vec<(u32, Option<Vec<u8>>)>,
}

impl StructureChecker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    pub fn push(&mut self, e: &Entry) -> Result<EntryId, StructureError> {
        let id = self.kinds.len() as u32;
        if id >= MAX_ENTRIES {
            return Err(StructureError::TooMany);
        }
        if id == 0 {
            if !e.name.is_empty() || e.kind != EntryKind::Dir || e.parent != EntryId::ROOT {
                return Err(StructureError::BadRoot { id });
            }
            self.kinds.push(e.kind.tag());
            self.depth.push(0);
            self.open.push((0, None));
            return Ok(EntryId(0));
        }
        validate_name(&e.name).map_err(|err| StructureError::BadName {
            id,
            name: String::from_utf8_lossy(&e.name).into_owned(),
            err,
        })?;
        let p = e.parent.0;
        if p >= id || self.kinds[p as usize] != EntryKind::Dir.tag() {
            return Err(StructureError::BadParent { id, parent: p });
        }
        let depth = self.depth[p as usize] + 1;
        if depth as usize > MAX_DEPTH {
            return Err(StructureError::TooDeep { id });
        }
        if let EntryKind::HardLink { target } = e.kind {
            if target.0 >= id || self.kinds[target.index()] != (EntryKind::File { size: 0 }).tag() {
                return Err(StructureError::BadLinkTarget {
                    id,
                    target: target.0,
                });
            }
        }
        let name = || String::from_utf8_lossy(&e.name).into_owned();
        // Pre-order: the parent is on the current path (anything deeper is finished).
        let Some(k) = self.open.iter().rposition(|(d, _)| *d == p) else {
            return Err(StructureError::OutOfOrder { id, name: name() });
        };
        self.open.truncate(k + 1);
        let last = &mut self.open[k].1;
        match last.as_deref().map(|l| l.cmp(e.name.as_slice())) {
            Some(std::cmp::Ordering::Equal) => {
                return Err(StructureError::Duplicate {
                    id,
                    parent: p,
                    name: name(),
                })
            }
            Some(std::cmp::Ordering::Greater) => {
                return Err(StructureError::OutOfOrder { id, name: name() })
            }
            _ => *last = Some(e.name.clone()),
        }
        if e.kind == EntryKind::Dir {
            self.open.push((id, None));
        }
        self.kinds.push(e.kind.tag());
        self.depth.push(depth);
        Ok(EntryId(id))
    }
}

/// Total bytes of the paths `relative_paths` would build, computed without building them (an
/// entry list of a few hundred kilobytes can describe a chain whose paths take gigabytes).
/// The list must have passed `StructureChecker` (every parent an earlier entry).
pub fn path_bytes(entries: &[Entry]) -> u64 {
    let mut len: Vec<u64> = Vec::with_capacity(entries.len());
    let mut total = 0u64;
    for (i, e) in entries.iter().enumerate() {
        let l = if i == 0 {
            0
        } else {
            let parent = len[e.parent.index()];
            parent + u64::from(parent > 0) + e.name.len() as u64
        };
        len.push(l);
        total = total.saturating_add(l);
    }
    total
}

/// Full relative path of every entry (root = empty), built from parent links; the list must
/// have passed `StructureChecker`.
pub fn relative_paths(entries: &[Entry]) -> Vec<Vec<u8>> {
    let mut paths: Vec<Vec<u8>> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        if i == 0 {
            paths.push(Vec::new());
            continue;
        }
        let parent = &paths[e.parent.index()];
        let mut p = Vec::with_capacity(parent.len() + 1 + e.name.len());
        p.extend_from_slice(parent);
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(&e.name);
        paths.push(p);
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, mode: u32) -> Entry {
        Entry {
            parent: EntryId::ROOT,
            name: b"f".to_vec(),
            kind: EntryKind::File { size },
            meta: Meta {
                mode,
                uid: 0,
                gid: 0,
                mtime_sec: 5,
                mtime_nsec: 0,
            },
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn a_difference_is_told_in_words_naming_every_attribute_that_differs() {
        let want = file(10, 0o644);
        let mut got = file(12, 0o600);
        got.meta.mtime_sec = 6;
        assert_eq!(
            describe_difference(&want, &got),
            "size 12 bytes, expected 10; mode 600, expected 644; modified at 6.000000000, expected 5.000000000"
        );
        got = want.clone();
        got.kind = EntryKind::Dir;
        got.name = b"g".to_vec();
        assert_eq!(
            describe_difference(&want, &got),
            "found g there (an entry was added or removed); a directory, expected a file"
        );
    }
}
