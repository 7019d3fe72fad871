//! Resuming inside files: which byte ranges of a file an interrupted session already made
//! durable, so the next session of the same job asks only for the rest.
//!
//! Workers flush what they wrote of a large file in batches (`FLUSH_BYTES`, an fdatasync
//! through the ring) and then log the flushed ranges in the job's journal directory, one log
//! per worker (`written-<worker>`, no lock between workers). A record names the file by path
//! and by what identifies its content: the inode written, by its number and birth time (the
//! job unlinks files it made when it replaces them, and the file system may give the number to
//! the next file it creates), and the size and mtime of the source version being written. A
//! later session trusts the ranges only for a file that is still that inode and whose entry is
//! still that version; anything else is sent again whole, as before. A record without a birth
//! time (an older release's) is not trusted.
//!
//! A finished file, small or large, is logged too, as one range over all of it, once the
//! target's early write-back (writeback.rs) synced a round begun after its last write and its
//! metadata: its size and mtime alone do not say that its bytes reached the disk (a large file
//! is sized in full when it is created; ext4 with dioread_nolock commits a small file's size
//! when its write-back is submitted and its written extent when that completes), so a power
//! loss can leave zeros within the right size. A resumed session trusts a finished file the
//! job wrote only with that record (`apply.rs`). A worker logs what a round covered when it
//! next finishes something, at its end, and (failed) within a second of its failure; what it
//! still holds then goes to the session, which logs it after a syncfs of its own if it fails
//! before its recovery point (`RecvTable::log_held`). Files finished in the last round before
//! a kill or a power loss are sent again.
//!
//! Undo is unaffected: a file the job created is removed by revert, and a file updated in place
//! has its pre-images, which the resumed ranges must lie inside (checked here).

use crate::durable::{parse_records, read_opt, Log};
use crate::error::{Error, Result};
use crate::wire::codec::{Dec, Enc};
use crate::wire::message::MAX_DELTA_RANGES;
use std::collections::HashMap;
use std::os::fd::BorrowedFd;

/// A worker flushes and logs a file's written ranges once this many bytes of it are unlogged
/// (and when it moves on to another file). Smaller: less to resend after a kill (at most this
/// much per file being written, plus one flush in flight), more fdatasyncs; 16 MiB keeps a
/// killed 1 GiB job's loss to a few percent at about 64 fdatasyncs per GiB.
pub const FLUSH_BYTES: u64 = 16 * 1024 * 1024;
/// Smallest checkpoint interval an operator may set (each is an fdatasync).
pub const MIN_FLUSH_BYTES: u64 = 1024 * 1024;
/// Most ranges one record carries (a worker's writes of one file between flushes are mostly
/// one run; a batch with more ranges is logged in several records).
pub const MAX_RECORD_RANGES: usize = 256;
/// Most finished files a worker holds while it waits for a write-back round to cover them
/// (a round's worth of small files at this VM's rate, 20,000 per 0.27 s over two workers);
/// past it a file goes unlogged, and is sent again if the job is interrupted.
pub const MAX_UNLOGGED_FINISHED: usize = 8192;
/// Bound on one logged path (as the undo journal's).
const MAX_PATH: usize = crate::tree::entry::MAX_DEPTH * (crate::tree::entry::MAX_NAME_LEN + 1);
/// Bound on the workers' logs read back (the sender's worker count is at most MAX_WORKERS).
const MAX_LOGS: usize = crate::wire::message::MAX_WORKERS as usize;
const LOG_PREFIX: &str = "written-";

/// The source version a file's bytes belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    pub ino: u64,
    /// The inode's birth time, (0, 0) on a file system that keeps none; None in a record of a
    /// release that did not log it (which then matches no file).
    pub btime: Option<(i64, u32)>,
    pub size: u64,
    pub mtime: (i64, u32),
}

/// Per path, the versions an interrupted session wrote and the ranges of each it made durable.
pub type Durable = HashMap<Vec<u8>, Vec<(Version, Vec<(u64, u64)>)>>;

/// Ranges of one file flushed to disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub path: Vec<u8>,
    pub version: Version,
    pub ranges: Vec<(u64, u64)>,
}

impl Written {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        let v = &self.version;
        e.bytes(&self.path)
            .u64(v.ino)
            .u64(v.size)
            .i64(v.mtime.0)
            .u32(v.mtime.1)
            .u32(self.ranges.len() as u32);
        for &(o, l) in &self.ranges {
            e.u64(o).u64(l);
        }
        // Last, so a release that reads records without it still reads the rest.
        if let Some((sec, nsec)) = v.btime {
            e.i64(sec).u32(nsec);
        }
        e.buf
    }

    pub fn decode(b: &[u8]) -> Result<Written> {
        let mut d = Dec::new(b);
        let path = d.bytes(MAX_PATH, "written path")?.to_vec();
        let mut version = Version {
            ino: d.u64()?,
            btime: None,
            size: d.u64()?,
            mtime: (d.i64()?, d.u32()?),
        };
        let n = d.u32()? as usize;
        if n > MAX_RECORD_RANGES {
            return Err(Error::Corrupt(format!("a written record with {n} ranges")));
        }
        let mut ranges = Vec::with_capacity(n);
        for _ in 0..n {
            let (o, l) = (d.u64()?, d.u64()?);
            if l == 0 || o.checked_add(l).is_none_or(|end| end > version.size) {
                return Err(Error::Corrupt("a written range outside its file".into()));
            }
            ranges.push((o, l));
        }
        if d.remaining() > 0 {
            version.btime = Some((d.i64()?, d.u32()?));
        }
        d.finish()?;
        Ok(Written {
            path,
            version,
            ranges,
        })
    }
}

/// The inode number and birth time ((0, 0) where the file system keeps none) of `name` in
/// `dir`, not followed; of `dir` itself with an empty `name`.
pub fn identity(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<(u64, (i64, u32))> {
    use rustix::fs::{statx, AtFlags, StatxFlags};
    let flags = if name.is_empty() {
        AtFlags::EMPTY_PATH
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    let x = statx(dir, name, flags, StatxFlags::INO | StatxFlags::BTIME)?;
    Ok((x.stx_ino, crate::tree::walk::btime(&x)))
}

/// The version (`size`, `mtime`) of the inode now at `name` in `dir`.
pub fn version_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    size: u64,
    mtime: (i64, u32),
) -> rustix::io::Result<Version> {
    let (ino, btime) = identity(dir, name)?;
    Ok(Version {
        ino,
        btime: Some(btime),
        size,
        mtime,
    })
}

/// Opens worker `index`'s log in the journal directory for appending.
pub fn open_log(journal: BorrowedFd<'_>, index: usize) -> Result<Log> {
    Ok(Log::open(journal, &format!("{LOG_PREFIX}{index}"))?.0)
}

/// Every durable range the workers' logs record, per path and version, merged. A log that
/// cannot be decoded loses only the resumption (its files are sent again whole).
pub fn read_logs(journal: BorrowedFd<'_>) -> Result<Durable> {
    let mut out = Durable::new();
    for index in 0..MAX_LOGS {
        let Some(raw) = read_opt(journal, &format!("{LOG_PREFIX}{index}"))? else {
            continue;
        };
        let (records, _) = parse_records(&raw);
        for r in records {
            let Ok(w) = Written::decode(r) else {
                tracing::warn!(
                    index,
                    "unreadable record in a written log; ignoring the rest"
                );
                break;
            };
            let per = out.entry(w.path).or_default();
            match per.iter_mut().find(|(v, _)| *v == w.version) {
                Some((_, rs)) => rs.extend(w.ranges),
                None => per.push((w.version, w.ranges)),
            }
        }
    }
    for per in out.values_mut() {
        for (_, rs) in per.iter_mut() {
            *rs = merge(std::mem::take(rs));
        }
    }
    Ok(out)
}

/// Sorted, disjoint, adjacent runs joined.
pub fn merge(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.retain(|x| x.1 > 0);
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (o, l) in r {
        match out.last_mut() {
            Some((po, pl)) if *po + *pl >= o => *pl = (*pl).max(o + l - *po),
            _ => out.push((o, l)),
        }
    }
    out
}

/// `want` minus `have` (both sorted and disjoint).
pub fn subtract(want: &[(u64, u64)], have: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(o, l) in want {
        let (mut at, end) = (o, o + l);
        for &(ho, hl) in have {
            let hend = ho + hl;
            if hend <= at || ho >= end {
                continue;
            }
            if ho > at {
                out.push((at, ho - at));
            }
            at = at.max(hend);
            if at >= end {
                break;
            }
        }
        if at < end {
            out.push((at, end - at));
        }
    }
    out
}

/// Whether every range of `inner` lies inside `outer` (both sorted and disjoint).
pub fn covers(outer: &[(u64, u64)], inner: &[(u64, u64)]) -> bool {
    subtract(inner, outer).is_empty()
}

/// What a resumed session still needs of a file: `want` (the whole file, or a delta's ranges)
/// minus what an interrupted session of the job made durable for this exact `version`; None
/// when nothing is known for it (the caller sends it whole, as without resumption), or when
/// the rest would take more ranges than a need may carry.
pub fn rest(
    durable: &[(Version, Vec<(u64, u64)>)],
    version: Version,
    want: &[(u64, u64)],
) -> Option<Vec<(u64, u64)>> {
    let (_, have) = durable.iter().find(|(v, _)| *v == version)?;
    let rest = subtract(want, have);
    (rest.len() <= MAX_DELTA_RANGES).then_some(rest)
}

/// A worker's record of what it wrote of the file it is writing, flushed and logged in batches.
pub struct Pending {
    /// The file, kept open until its flush completes.
    pub fd: crate::engine::ring::OpFd,
    pub entry: crate::units::EntryId,
    pub path: Vec<u8>,
    pub version: Version,
    pub ranges: Vec<(u64, u64)>,
    pub bytes: u64,
}

impl Pending {
    pub fn add(&mut self, off: u64, len: u64) {
        debug_assert!(off + len <= self.version.size);
        self.ranges.push((off, len));
        self.bytes += len;
    }

    /// The records that log this batch.
    pub fn records(self) -> Vec<Written> {
        let merged = merge(self.ranges);
        merged
            .chunks(MAX_RECORD_RANGES)
            .map(|c| Written {
                path: self.path.clone(),
                version: self.version,
                ranges: c.to_vec(),
            })
            .collect()
    }
}

/// Files a worker finished, each with the write-back ticket taken after it
/// (`writeback::SyncRounds`), oldest first, until a round covers them and they are logged.
#[derive(Default)]
pub struct Finished {
    queue: std::collections::VecDeque<(Written, u64)>,
}

impl Finished {
    /// Holds `path`, finished as `version` (its whole size written), until `ticket`'s round.
    pub fn push(&mut self, path: Vec<u8>, version: Version, ticket: u64) {
        if version.size == 0 {
            return;
        }
        // The oldest are the next a round covers: the newest goes unlogged.
        if self.queue.len() >= MAX_UNLOGGED_FINISHED {
            return;
        }
        let ranges = vec![(0, version.size)];
        let w = Written {
            path,
            version,
            ranges,
        };
        self.queue.push_back((w, ticket));
    }

    /// Whether some held file is now known durable.
    pub fn any_covered(&self, rounds: &super::writeback::SyncRounds) -> bool {
        self.queue.front().is_some_and(|(_, t)| rounds.covers(*t))
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Logs, in one write, every held file: a syncfs begun after all were finished completed.
    pub fn log_all(self, log: &mut Log) -> Result<()> {
        let bodies: Vec<Vec<u8>> = self.queue.into_iter().map(|(w, _)| w.encode()).collect();
        log.append_many(bodies.iter().map(Vec::as_slice))
    }

    /// Logs, in one write, every held file a round has covered (tickets only grow, so they
    /// are a prefix of the queue).
    pub fn log_covered(
        &mut self,
        log: &mut Log,
        rounds: &super::writeback::SyncRounds,
    ) -> Result<()> {
        let n = self
            .queue
            .iter()
            .take_while(|(_, t)| rounds.covers(*t))
            .count();
        let bodies: Vec<Vec<u8>> = self.queue.drain(..n).map(|(w, _)| w.encode()).collect();
        log.append_many(bodies.iter().map(Vec::as_slice))
    }
}

/// Whether an interrupted session of the job logged the file now at `path` as finished: this
/// inode (`ino`, `btime`) written whole as this version.
pub fn logged_finished(durable: &Durable, path: &[u8], version: Version) -> bool {
    durable.get(path).is_some_and(|per| {
        per.iter()
            .any(|(v, rs)| *v == version && covers(rs, &[(0, version.size)]))
    })
}

/// Appends a flushed batch to the worker's log.
pub fn log_batch(log: &mut Log, batch: Pending) -> Result<()> {
    for w in batch.records() {
        log.append(&w.encode())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_arithmetic() {
        assert_eq!(
            merge(vec![(10, 5), (0, 10), (20, 1), (15, 0)]),
            vec![(0, 15), (20, 1)]
        );
        assert_eq!(
            subtract(&[(0, 100)], &[(10, 10), (50, 60)]),
            vec![(0, 10), (20, 30)]
        );
        assert_eq!(
            subtract(&[(0, 10), (20, 10)], &[(5, 20)]),
            vec![(0, 5), (25, 5)]
        );
        assert!(covers(&[(0, 50), (60, 10)], &[(0, 10), (62, 3)]));
        assert!(!covers(&[(0, 50)], &[(40, 20)]));
    }

    #[test]
    fn only_the_same_version_of_the_same_inode_resumes() {
        let v = Version {
            ino: 7,
            btime: Some((3, 4)),
            size: 1000,
            mtime: (5, 6),
        };
        let durable = vec![(v, vec![(0, 400)])];
        assert_eq!(rest(&durable, v, &[(0, 1000)]), Some(vec![(400, 600)]));
        for other in [
            Version { ino: 8, ..v },
            // The number given again to a file made since: another birth time.
            Version {
                btime: Some((3, 5)),
                ..v
            },
            Version { size: 999, ..v },
            Version { mtime: (5, 7), ..v },
        ] {
            assert_eq!(rest(&durable, other, &[(0, 1000)]), None);
        }
    }

    #[test]
    fn records_round_trip_and_hostile_ones_are_refused() {
        let w = Written {
            path: b"a/b".to_vec(),
            version: Version {
                ino: 1,
                btime: Some((7, 8)),
                size: 100,
                mtime: (1, 2),
            },
            ranges: vec![(0, 10), (50, 50)],
        };
        assert_eq!(Written::decode(&w.encode()).expect("decode"), w);
        // A record as an older release wrote it (no birth time) reads, and resumes nothing.
        let old = Written {
            version: Version {
                btime: None,
                ..w.version
            },
            ..w.clone()
        };
        let read = Written::decode(&old.encode()).expect("decode");
        assert_eq!(read.version.btime, None);
        assert_eq!(
            rest(&[(read.version, read.ranges)], w.version, &[(0, 100)]),
            None
        );
        let past = Written {
            ranges: vec![(90, 20)],
            ..w.clone()
        };
        assert!(Written::decode(&past.encode()).is_err());
        let empty = Written {
            ranges: vec![(0, 0)],
            ..w
        };
        assert!(Written::decode(&empty.encode()).is_err());
    }
}
