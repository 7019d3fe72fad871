//! The control plane's errors: what was refused and why, in words an operator can act on.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    /// The request is valid but the relationship's state does not allow it now.
    #[error("{0}")]
    Conflict(String),
    #[error("relationship {0} not found")]
    NotFound(String),
    /// Something other than a relationship is not there (a policy, a snapshot): the message
    /// says what.
    #[error("{0}")]
    Missing(String),
    #[error("state database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A stored row this release cannot read (a setting a later release stored, a damaged
    /// column): the message names the row and the column. Not the caller's fault, and not a
    /// path problem of the relationships checked against it.
    #[error("{0}")]
    Unreadable(String),
    #[error("state database {path}: schema version {found} is newer than this mover understands ({supported})")]
    SchemaTooNew {
        path: String,
        found: i64,
        supported: i64,
    },
    /// The cluster's shared state (etcd) could not be reached or did not answer in time:
    /// not the request's fault, and worth trying again.
    #[error("{0}")]
    Unavailable(String),
    /// Certificates, keys and TLS handshakes between daemons.
    #[error("tls: {0}")]
    Tls(String),
    /// The peer daemon refused, misbehaved or could not be reached.
    #[error("peer {peer}: {message}")]
    Peer { peer: String, message: String },
    /// A job's data-plane session failed.
    #[error("{0}")]
    DataPlane(#[from] mover::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds what was being done to an I/O error.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: what(),
            source,
        })
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Io {
            context: what(),
            source: e.into(),
        })
    }
}
