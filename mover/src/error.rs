//! The data plane's error type. Every variant says what was being done and to which path or
//! peer, because an operator reading it at 3 a.m. has nothing else.

use crate::tree::entry::StructureError;
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
    #[error("peer reported: {0}")]
    Peer(String),
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("source changed while being read: {0}")]
    SourceChanged(String),
    #[error("{0}")]
    Usage(String),
    /// Whoever runs the job asked it to stop (an operator's abort).
    #[error("job aborted: {0}")]
    Cancelled(String),
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
