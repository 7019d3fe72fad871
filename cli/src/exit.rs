//! Exit codes that mean something to scripts (listed in `mover --help`).

use mover::Error;

pub const UNEXPECTED: i32 = 1;
pub const VERIFY: i32 = 3;
pub const PROTOCOL: i32 = 4;
pub const IO: i32 = 5;
pub const SOURCE_CHANGED: i32 = 6;

/// A receive session that ended without verifying; carries the session's error text.
#[derive(Debug)]
pub struct SessionFailed(pub String);

impl std::fmt::Display for SessionFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "session failed: {}", self.0)
    }
}

impl std::error::Error for SessionFailed {}

pub fn code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<SessionFailed>().is_some() {
        return VERIFY;
    }
    match e.downcast_ref::<Error>() {
        Some(Error::Verify(_)) => VERIFY,
        Some(Error::Wire(_) | Error::Structure(_) | Error::Peer(_)) => PROTOCOL,
        Some(Error::Io { .. }) => IO,
        Some(Error::SourceChanged(_)) => SOURCE_CHANGED,
        Some(Error::Usage(_) | Error::Cancelled(_)) | None => UNEXPECTED,
    }
}
