//! Tree hash: one xxh3-128 over the canonical entry list (names, kinds, metadata, link
//! structure, xattrs). Sender and receiver compute it from their own walks; equal hashes mean the
//! trees have the same shape and metadata. File contents are checked separately (the session's
//! content digest, and `content_hash` for tests and `mover hash --content`).

use super::entry::{Entry, EntryKind};
use crate::error::{show, IoContext, Result};
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;
use xxhash_rust::xxh3::Xxh3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashOptions {
    /// Include numeric uid/gid (only when the receiver can set them).
    pub owners: bool,
}

fn put_bytes(h: &mut Xxh3, b: &[u8]) {
    h.update(&(b.len() as u64).to_le_bytes());
    h.update(b);
}

pub fn tree_hash(entries: &[Entry], opts: HashOptions) -> u128 {
    let mut h = Xxh3::new();
    h.update(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        h.update(&e.parent.0.to_le_bytes());
        put_bytes(&mut h, &e.name);
        h.update(&[e.kind.tag()]);
        match &e.kind {
            EntryKind::Dir => {}
            EntryKind::File { size } => h.update(&size.to_le_bytes()),
            EntryKind::Symlink { target } => put_bytes(&mut h, target),
            EntryKind::HardLink { target } => h.update(&target.0.to_le_bytes()),
            EntryKind::Special { file_type, rdev } => {
                h.update(&file_type.to_le_bytes());
                h.update(&rdev.to_le_bytes());
            }
        }
        let m = &e.meta;
        // Symlink permission bits cannot be set on Linux and hard links share their target's
        // inode, so neither contributes mode of its own.
        let has_mode = !matches!(
            e.kind,
            EntryKind::Symlink { .. } | EntryKind::HardLink { .. }
        );
        h.update(&(if has_mode { m.mode } else { 0 }).to_le_bytes());
        if opts.owners {
            h.update(&m.uid.to_le_bytes());
            h.update(&m.gid.to_le_bytes());
        }
        if !matches!(e.kind, EntryKind::HardLink { .. }) {
            h.update(&m.mtime_sec.to_le_bytes());
            h.update(&m.mtime_nsec.to_le_bytes());
        }
        h.update(&(e.xattrs.len() as u32).to_le_bytes());
        for (k, v) in &e.xattrs {
            put_bytes(&mut h, k);
            put_bytes(&mut h, v);
        }
    }
    h.digest128()
}

/// Hash of every regular file's bytes, in entry order (holes read as zeros). Reads everything:
/// meant for tests, the demo and `mover hash --content`, not for the data path.
pub fn content_hash(root: &Path, entries: &[Entry], paths: &[Vec<u8>]) -> Result<u128> {
    let root_fd = rustix::fs::open(
        root,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .ctx(|| format!("opening {}", root.display()))?;
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    for (e, p) in entries.iter().zip(paths) {
        if let EntryKind::File { .. } = e.kind {
            let fd = crate::beneath::open_file(
                root_fd.as_fd(),
                p,
                rustix::fs::OFlags::RDONLY,
                rustix::fs::Mode::empty(),
            )
            .ctx(|| format!("opening {}", show(p)))?;
            let mut f = std::fs::File::from(fd);
            let mut fh = Xxh3::new();
            loop {
                let n = f.read(&mut buf).ctx(|| format!("reading {}", show(p)))?;
                if n == 0 {
                    break;
                }
                fh.update(&buf[..n]);
            }
            h.update(&fh.digest128().to_le_bytes());
        }
    }
    Ok(h.digest128())
}

/// Tree hash and (optionally) content hash of a directory, as `mover hash` prints them.
pub fn hash_dir(
    root: &Path,
    opts: HashOptions,
    content: bool,
) -> Result<(u128, Option<u128>, usize)> {
    let w = super::walk::walk(root, true)?;
    let t = tree_hash(&w.entries, opts);
    let c = if content {
        Some(content_hash(root, &w.entries, &w.paths)?)
    } else {
        None
    };
    Ok((t, c, w.entries.len()))
}
