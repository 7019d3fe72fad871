//! The record of this node's latest upgrade (`<data-dir>/upgrade.json`): written by the
//! upgrade before each step (`self_upgrade`), read by the status API, the rolling upgrade
//! (`rolling`) and the supervisor. Below all of them.

use crate::error::IoContext;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record of the latest upgrade, in the data directory.
const RECORD: &str = "upgrade.json";

/// Where the record of `data_dir`'s node is.
pub(super) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(RECORD)
}

/// Where an upgrade of this node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The package is staged and checked; the node still runs the old release.
    Distributed,
    /// The node is stopping to run the new release.
    Restarting,
    /// The node runs the new release.
    Done,
    /// The new process does not report the release asked for (`error` says what it reports).
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Record {
    pub from: String,
    pub to: String,
    pub sha256: String,
    #[schema(value_type = String)]
    pub staged: PathBuf,
    pub phase: Phase,
    pub updated_ns: i64,
    pub error: Option<String>,
}

pub fn read_record(data_dir: &Path) -> Result<Option<Record>> {
    let p = path(data_dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).ctx(|| format!("reading {}", p.display())),
    }
}

/// Whether an upgrade record on this node says it finished `to` (the supervisor's test-build
/// version override reads the same record).
pub fn record_done(data_dir: &Path) -> Option<String> {
    read_record(data_dir)
        .ok()
        .flatten()
        .filter(|r| r.phase == Phase::Done)
        .map(|r| r.to)
}
