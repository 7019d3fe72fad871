//! The io_uring engine shared by sender and receiver workers.

pub mod ring;

use crate::error::{Error, Result};
use std::thread::JoinHandle;

/// What one worker moved, merged per session. Both sides count the same things so the
/// receiver can check the sender's Commit against its own numbers.
#[derive(Debug, Default, Clone)]
pub struct FrameStats {
    pub frames: u64,
    pub data_bytes: u64,
    pub wire_bytes: u64,
    /// Checksums of the data-bearing frames, for the session's content digest.
    pub checksums: Vec<u64>,
    /// Sender only, with a manifest: (entry, first block, 4 KiB block hashes) per Data frame.
    pub block_hashes: Vec<(crate::units::EntryId, u64, Vec<u64>)>,
}

impl FrameStats {
    fn absorb(&mut self, o: FrameStats) {
        self.frames += o.frames;
        self.data_bytes += o.data_bytes;
        self.wire_bytes += o.wire_bytes;
        self.checksums.extend(o.checksums);
        self.block_hashes.extend(o.block_hashes);
    }
}

/// Joins every worker (none is left running) and merges their stats, or returns the first
/// error; a panicked worker counts as an error.
pub fn join_workers(
    handles: Vec<JoinHandle<Result<FrameStats>>>,
    side: &str,
) -> Result<FrameStats> {
    join_workers_preferring(handles, side, |_| false)
}

/// As `join_workers`, but an error for which `cause` holds wins over earlier ones: when one
/// worker's failure (a full disk) makes the peer drop the others, their errors only echo it.
pub fn join_workers_preferring(
    handles: Vec<JoinHandle<Result<FrameStats>>>,
    side: &str,
    cause: impl Fn(&Error) -> bool,
) -> Result<FrameStats> {
    let mut all = FrameStats::default();
    let mut first_err: Option<Error> = None;
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => all.absorb(s),
            Ok(Err(e)) => {
                if first_err.as_ref().is_none_or(|f| !cause(f) && cause(&e)) {
                    first_err = Some(e);
                }
            }
            Err(_) => {
                first_err.get_or_insert(Error::Panicked(format!("a {side} worker")));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(all),
    }
}
