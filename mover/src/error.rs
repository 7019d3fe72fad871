//! The data plane's error type. Every variant says what was being done and to which path or
//! peer, because an operator reading it at 3 a.m. has nothing else. Variants are categories a
//! caller can act on (retry, exit code, revert), not one per message.

use crate::tree::entry::StructureError;
use crate::wire::message::ErrorCode;
use crate::wire::WireError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    #[error("invalid entry list from peer: {0}")]
    Structure(#[from] StructureError),
    /// The peer ended the session with an Error frame; `code` says what kind of failure.
    #[error("peer reported: {message}")]
    Peer { code: ErrorCode, message: String },
    /// This side refused the peer (and told it so with an Error frame of `code`).
    #[error("refused the peer: {message}")]
    Refused { code: ErrorCode, message: String },
    /// The peer went away or broke off mid-session (closed a connection early, never
    /// connected its workers).
    #[error("peer failed: {0}")]
    PeerLost(String),
    #[error("verification failed: {0}")]
    Verify(String),
    /// Files changed while being read (plain provider): the session cannot commit them. The
    /// next session copies `paths` aside before reading (`SendOptions::pin`).
    #[error("source changed while being read: {message}")]
    SourceChanged {
        message: String,
        /// The files that changed, relative to the source root (a bounded sample).
        paths: Vec<Vec<u8>>,
    },
    /// The destination root is being served (or reverted) by another process.
    #[error("{0}")]
    Busy(String),
    /// A state file (recovery point, entry list, journal, manifest) cannot be used; the
    /// message says which and how to recover.
    #[error("{0}")]
    Corrupt(String),
    /// The journal cannot be undone as recorded.
    #[error("cannot revert: {0}")]
    Revert(String),
    /// A bound of this implementation was reached.
    #[error("limit reached: {0}")]
    Limit(String),
    /// The file system or transport cannot do what was asked.
    #[error("{0}")]
    Unsupported(String),
    #[error("pinning a worker to CPU {cpu}: {source}")]
    Pinning {
        cpu: u32,
        #[source]
        source: hw::Error,
    },
    /// A worker or helper thread panicked (a bug: the message names the thread).
    #[error("{0} panicked")]
    Panicked(String),
    /// A write place lost its right to write (`receiver::share::Fence`: its node can no
    /// longer vouch for its cluster lease) and stopped, so the node holding the session may
    /// give up on it without it writing on.
    #[error("write place stopped writing: {0}")]
    Fenced(String),
    /// Whoever runs the job asked it to stop (an operator's abort).
    #[error("job aborted: {0}")]
    Cancelled(String),
}

impl Error {
    /// The code this error travels under in an Error frame to the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                ErrorCode::DiskFull
            }
            Error::Wire(WireError::VersionMismatch { .. }) => ErrorCode::Version,
            Error::Busy(_) => ErrorCode::Busy,
            Error::Refused { code, .. } | Error::Peer { code, .. } => *code,
            _ => ErrorCode::Other,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches what we were doing to an `io::Error`.
pub trait IoContext<T> {
    fn ctx<F: FnOnce() -> String>(self, what: F) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, what: F) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: what(),
            source,
        })
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, what: F) -> Result<T> {
        self.map_err(|e| Error::Io {
            context: what(),
            source: e.into(),
        })
    }
}

/// Renders a path of raw bytes for messages (names need not be UTF-8).
pub fn show(path: &[u8]) -> String {
    let s = String::from_utf8_lossy(path);
    if s.is_empty() {
        ".".to_string()
    } else {
        s.into_owned()
    }
}
