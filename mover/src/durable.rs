//! Durable files for state that must survive a crash: whole files replaced atomically (temp,
//! fsync, rename, fsync of the directory) and append-only logs of checksummed records whose torn
//! tail is ignored. Used by the receiver's recovery point and undo journal and by the sender's
//! manifest.

use crate::error::{IoContext, Result};
use rustix::fs::{Mode, OFlags};
use std::io::Write;
use std::os::fd::{BorrowedFd, OwnedFd};

/// Longest record a log accepts; a longer length field means a torn or foreign file.
pub const MAX_RECORD: usize = 4 * 1024 * 1024;
/// Record header: body length u32, xxh3-64 of the body seeded with the length.
const RECORD_HEADER: usize = 12;

fn record_checksum(body: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(body, body.len() as u64)
}

/// Frames one record for appending to a log.
pub fn frame_record(body: &[u8], out: &mut Vec<u8>) {
    assert!(
        body.len() <= MAX_RECORD,
        "record of {} bytes exceeds MAX_RECORD",
        body.len()
    );
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&record_checksum(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// Splits a log into its valid records, stopping at the first torn or corrupt one (a crash can
/// leave a partial record only at the end). Returns the records and the valid length.
pub fn parse_records(buf: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= RECORD_HEADER {
        let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let mut c = [0u8; 8];
        c.copy_from_slice(&buf[at + 4..at + 12]);
        if len > MAX_RECORD || buf.len() - at - RECORD_HEADER < len {
            break;
        }
        let body = &buf[at + RECORD_HEADER..at + RECORD_HEADER + len];
        if record_checksum(body) != u64::from_le_bytes(c) {
            break;
        }
        out.push(body);
        at += RECORD_HEADER + len;
    }
    (out, at)
}

/// Reads a whole file relative to `dir`; `None` if it does not exist.
pub fn read_opt(dir: BorrowedFd<'_>, name: &str) -> Result<Option<Vec<u8>>> {
    read_head_opt(dir, name, u64::MAX)
}

/// Reads at most the first `limit` bytes of a file relative to `dir`; `None` if it does not
/// exist.
pub fn read_head_opt(dir: BorrowedFd<'_>, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
    let fd = match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) if e == rustix::io::Errno::NOENT => return Ok(None),
        Err(e) => return Err(e).ctx(|| format!("opening {name}")),
    };
    let mut v = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::from(fd), limit),
        &mut v,
    )
    .ctx(|| format!("reading {name}"))?;
    Ok(Some(v))
}

/// Replaces `name` in `dir` with `data` so that after a crash it holds either the old or the new
/// content, never a mix: write a temp file, fsync it, rename over, fsync the directory.
pub fn write_atomic(dir: BorrowedFd<'_>, name: &str, data: &[u8]) -> Result<()> {
    let tmp = format!("{name}.tmp");
    let fd = rustix::fs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )
    .ctx(|| format!("creating {tmp}"))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(data).ctx(|| format!("writing {tmp}"))?;
    f.sync_all().ctx(|| format!("fsync {tmp}"))?;
    drop(f);
    rustix::fs::renameat(dir, tmp.as_str(), dir, name)
        .ctx(|| format!("renaming {tmp} to {name}"))?;
    rustix::fs::fsync(dir).ctx(|| format!("fsync of the directory holding {name}"))?;
    Ok(())
}

/// Creates directory `name` in `dir` if missing and opens it.
pub fn ensure_dir(dir: BorrowedFd<'_>, name: &str) -> Result<OwnedFd> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => rustix::fs::fsync(dir).ctx(|| format!("fsync after creating {name}"))?,
        Err(e) if e == rustix::io::Errno::EXIST => {}
        Err(e) => return Err(e).ctx(|| format!("creating directory {name}")),
    }
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("opening directory {name}"))
}

/// An append-only log of records.
pub struct Log {
    file: std::fs::File,
    name: String,
    buf: Vec<u8>,
}

impl Log {
    /// Opens (creating) `name` in `dir` for appending, cutting off a torn tail first so new
    /// records follow the last valid one. Returns the log and its valid records' bodies.
    pub fn open(dir: BorrowedFd<'_>, name: &str) -> Result<(Log, Vec<Vec<u8>>)> {
        let existing = read_opt(dir, name)?.unwrap_or_default();
        let (records, valid) = parse_records(&existing);
        let records: Vec<Vec<u8>> = records.into_iter().map(|r| r.to_vec()).collect();
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .ctx(|| format!("opening log {name}"))?;
        rustix::fs::ftruncate(&fd, valid as u64).ctx(|| format!("trimming log {name}"))?;
        let file = std::fs::File::from(fd);
        let mut log = Log {
            file,
            name: name.to_string(),
            buf: Vec::new(),
        };
        std::io::Seek::seek(&mut log.file, std::io::SeekFrom::End(0))
            .ctx(|| format!("seeking log {name}"))?;
        Ok((log, records))
    }

    /// Appends one record with a single write(2): once it returns, the kernel holds the record,
    /// so a process killed afterwards leaves it in the file.
    pub fn append(&mut self, body: &[u8]) -> Result<()> {
        self.buf.clear();
        frame_record(body, &mut self.buf);
        self.file
            .write_all(&self.buf)
            .ctx(|| format!("appending to {}", self.name))
    }

    /// Appends several records with a single write(2) (all or, if the process dies during
    /// it, a valid prefix: a torn tail is cut off when the log is next opened).
    pub fn append_many<'a>(&mut self, bodies: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
        self.buf.clear();
        for b in bodies {
            frame_record(b, &mut self.buf);
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.buf)
            .ctx(|| format!("appending to {}", self.name))
    }

    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_data().ctx(|| format!("fsync {}", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn torn_tail_is_ignored_and_trimmed() {
        let t = tempfile::tempdir().unwrap();
        let dir =
            rustix::fs::open(t.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let (mut log, recs) = Log::open(dir.as_fd(), "log").unwrap();
        assert!(recs.is_empty());
        log.append(b"one").unwrap();
        log.append(b"two").unwrap();
        drop(log);
        let mut raw = std::fs::read(t.path().join("log")).unwrap();
        raw.extend_from_slice(&[7, 0, 0, 0, 1, 2]); // a torn third record
        std::fs::write(t.path().join("log"), &raw).unwrap();
        let (mut log, recs) = Log::open(dir.as_fd(), "log").unwrap();
        assert_eq!(recs, vec![b"one".to_vec(), b"two".to_vec()]);
        log.append(b"three").unwrap();
        drop(log);
        let (_, recs) = Log::open(dir.as_fd(), "log").unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[2], b"three");
    }

    #[test]
    fn corrupt_record_ends_the_log() {
        let mut buf = Vec::new();
        frame_record(b"good", &mut buf);
        let at = buf.len();
        frame_record(b"flipped", &mut buf);
        buf[at + 13] ^= 1;
        let (recs, valid) = parse_records(&buf);
        assert_eq!(recs, vec![&b"good"[..]]);
        assert_eq!(valid, at);
    }

    #[test]
    fn write_atomic_replaces_whole_file() {
        let t = tempfile::tempdir().unwrap();
        let dir =
            rustix::fs::open(t.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        write_atomic(dir.as_fd(), "rp", b"first").unwrap();
        write_atomic(dir.as_fd(), "rp", b"second").unwrap();
        assert_eq!(read_opt(dir.as_fd(), "rp").unwrap().unwrap(), b"second");
        assert!(read_opt(dir.as_fd(), "missing").unwrap().is_none());
        assert!(!t.path().join("rp.tmp").exists());
    }
}
