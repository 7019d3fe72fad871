//! The control plane's errors: what was refused and why, in words an operator can act on.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("relationship {0} not found")]
    NotFound(String),
    #[error("state database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("state database {path}: schema version {found} is newer than this mover understands ({supported})")]
    SchemaTooNew { path: String, found: i64, supported: i64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
