//! What of the source a target lets into its replica. Setuid and setgid bits on files and
//! device nodes are privileges on the target's machine: they are dropped unless the target's
//! operator allowed them (for a daemon, at authorization). Dropped devices are not created
//! (and anything at their names is removed); the verifying walk expects the tree without them.

use crate::tree::entry::{Entry, EntryKind};
use crate::units::EntryId;

const SETID_BITS: u32 = libc::S_ISUID | libc::S_ISGID;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaPolicy {
    /// Keep setuid and setgid bits of files.
    pub allow_setid: bool,
    /// Create character and block devices.
    pub allow_devices: bool,
}

/// What the policy did to one entry list.
#[derive(Debug, Default)]
pub struct Filtered {
    /// Entries not to create (device nodes the policy drops).
    pub skip: Vec<bool>,
    pub setid_cleared: u64,
    pub devices_skipped: u64,
}

fn is_device(e: &Entry) -> bool {
    matches!(e.kind, EntryKind::Special { file_type, .. }
        if file_type == libc::S_IFCHR || file_type == libc::S_IFBLK)
}

impl ReplicaPolicy {
    fn clears_setid(&self, e: &Entry) -> bool {
        !self.allow_setid
            && matches!(e.kind, EntryKind::File { .. })
            && e.meta.mode & SETID_BITS != 0
    }

    /// Whether `apply` would change any entry's fields (rather than only mark entries to skip).
    pub fn changes(&self, entries: &[Entry]) -> bool {
        entries.iter().any(|e| self.clears_setid(e))
    }

    /// Clears what is not allowed in place and marks the entries not to create.
    pub fn apply(&self, entries: &mut [Entry]) -> Filtered {
        let mut out = Filtered {
            skip: vec![false; entries.len()],
            ..Default::default()
        };
        for (i, e) in entries.iter_mut().enumerate() {
            if self.clears_setid(e) {
                e.meta.mode &= !SETID_BITS;
                out.setid_cleared += 1;
            }
            if !self.allow_devices && is_device(e) {
                out.skip[i] = true;
                out.devices_skipped += 1;
            }
        }
        out
    }
}

/// The entries (and their paths) without the skipped ones, renumbered: what the target holds
/// when the job is done. Skipped entries are devices, which have no children and are no
/// hard link's target, so every kept reference stays valid.
pub fn without(entries: &[Entry], paths: &[Vec<u8>], skip: &[bool]) -> (Vec<Entry>, Vec<Vec<u8>>) {
    debug_assert_eq!(entries.len(), skip.len());
    let mut new_id = vec![0u32; entries.len()];
    let mut kept = Vec::with_capacity(entries.len());
    let mut kept_paths = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        if skip[i] {
            continue;
        }
        new_id[i] = kept.len() as u32;
        let mut e = e.clone();
        e.parent = EntryId(new_id[e.parent.index()]);
        if let EntryKind::HardLink { target } = e.kind {
            e.kind = EntryKind::HardLink {
                target: EntryId(new_id[target.index()]),
            };
        }
        kept.push(e);
        kept_paths.push(paths[i].clone());
    }
    (kept, kept_paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::entry::Meta;

    fn entry(parent: u32, name: &str, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            parent: EntryId(parent),
            name: name.as_bytes().to_vec(),
            kind,
            meta: Meta {
                mode,
                ..Meta::default()
            },
            xattrs: vec![],
        }
    }

    #[test]
    fn setid_bits_and_devices_are_dropped_unless_allowed() {
        let list = vec![
            entry(0, "", EntryKind::Dir, 0o2755),
            entry(0, "su", EntryKind::File { size: 1 }, 0o4755),
            entry(
                0,
                "null",
                EntryKind::Special {
                    file_type: libc::S_IFCHR,
                    rdev: 0x103,
                },
                0o666,
            ),
            entry(
                0,
                "fifo",
                EntryKind::Special {
                    file_type: libc::S_IFIFO,
                    rdev: 0,
                },
                0o644,
            ),
            entry(
                0,
                "link",
                EntryKind::HardLink { target: EntryId(1) },
                0o4755,
            ),
        ];
        let paths: Vec<Vec<u8>> = list.iter().map(|e| e.name.clone()).collect();
        let mut es = list.clone();
        let f = ReplicaPolicy::default().apply(&mut es);
        assert_eq!((f.setid_cleared, f.devices_skipped), (1, 1));
        assert_eq!(es[0].meta.mode, 0o2755, "a set-gid directory is kept");
        assert_eq!(es[1].meta.mode, 0o755);
        assert_eq!(f.skip, vec![false, false, true, false, false]);
        let (kept, kp) = without(&es, &paths, &f.skip);
        assert_eq!(kept.len(), 4);
        assert_eq!(kp[2], b"fifo".to_vec());
        assert_eq!(kept[3].kind, EntryKind::HardLink { target: EntryId(1) });
        let mut all = list.clone();
        let f = ReplicaPolicy {
            allow_setid: true,
            allow_devices: true,
        }
        .apply(&mut all);
        assert_eq!(all, list);
        assert!(f.skip.iter().all(|s| !s));
    }
}
