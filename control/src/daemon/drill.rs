//! DR drills on a target node: a verified, writable copy of a relationship's latest recovery
//! point, made by its receiver between two jobs (`mover::receiver::drill`), so replication
//! goes on. Each drill is recorded in `<data-dir>/drills/<drill-id>.json` so that it can be
//! listed and released after a restart; the copy itself is beside the target directory
//! (`<target>.drill-<drill-id>`, on the target's file system, where a btrfs snapshot or
//! reflinks can make it) unless the operator names another place.

use super::Node;
use crate::error::{Error, IoContext, Result};
use crate::model::{RelationshipId, Role};
use mover::receiver::drill::{DrillMethod, DrillRequest};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A drill asked while a job runs waits this long for it to end, then is refused as busy.
pub const DRILL_WAIT: Duration = Duration::from_secs(20);
/// Drills kept on a node at most (each may hold a full copy of a target).
pub const MAX_DRILLS: usize = 64;
/// Largest drill record read.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// A drill as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Drill {
    pub id: String,
    pub relationship: String,
    /// The writable copy.
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// `snapshot` (btrfs), `reflink` or `copy`.
    pub method: String,
    pub recovery_point: String,
    /// The source's point in time the copy holds.
    pub recovery_point_time: String,
    /// Its age when the drill was made.
    pub data_age_seconds: f64,
    pub seconds_to_writable: f64,
    pub entries: u64,
    pub started: String,
}

fn dir(node: &Node) -> PathBuf {
    node.opts.data_dir.join("drills")
}

fn is_drill_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Makes a drill of target relationship `id` into `into` (default: beside the target).
pub fn start(
    node: &Node,
    id: &RelationshipId,
    into: Option<PathBuf>,
    allow_copy: bool,
) -> Result<Drill> {
    let r = node.get(id, Role::Target)?;
    if list(node)?.len() >= MAX_DRILLS {
        return Err(Error::Conflict(format!(
            "{MAX_DRILLS} drills exist on this node: release some first"
        )));
    }
    let mut raw = [0u8; 8];
    mover::units::fill_random(&mut raw).map_err(|e| Error::Io {
        context: "drawing a drill id".into(),
        source: e,
    })?;
    let drill_id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let into = match into {
        Some(p) => {
            if !p.is_absolute() || p.components().any(|c| c.as_os_str() == "..") {
                return Err(Error::Invalid(format!(
                    "the drill directory must be an absolute path without `..`, not {}",
                    p.display()
                )));
            }
            p
        }
        None => PathBuf::from(format!("{}.drill-{drill_id}", r.spec.target_path)),
    };
    let handle = super::target::drill_handle(node, id)?;
    let started = node.clock.now_ns();
    let made = handle
        .make(
            DrillRequest {
                into,
                allow_copy,
                keep: None,
            },
            DRILL_WAIT,
        )
        .map_err(|e| match e {
            mover::Error::Busy(m) => Error::Conflict(m),
            mover::Error::Unsupported(m) => Error::Invalid(m),
            other => Error::from(other),
        })?;
    let d = Drill {
        id: drill_id,
        relationship: id.to_string(),
        path: made.path,
        method: match made.method {
            DrillMethod::Snapshot => "snapshot",
            DrillMethod::Reflink => "reflink",
            DrillMethod::Copy => "copy",
        }
        .into(),
        recovery_point: made.recovery_point,
        recovery_point_time: crate::clock::rfc3339(made.source_time_ns),
        data_age_seconds: made.data_age_seconds,
        seconds_to_writable: made.seconds_to_writable,
        entries: made.entries,
        started: crate::clock::rfc3339(started),
    };
    let dir = dir(node);
    std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let body = serde_json::to_vec_pretty(&d).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::private_file::write_private(&dir.join(format!("{}.json", d.id)), &body)?;
    tracing::info!(drill = %d.id, relationship = %id, path = %d.path.display(), method = %d.method, "drill made");
    Ok(d)
}

/// Every drill recorded on this node, oldest first.
pub fn list(node: &Node) -> Result<Vec<Drill>> {
    let dir = dir(node);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let p = e.ctx(|| format!("listing {}", dir.display()))?.path();
        let Some(stem) = p.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if p.extension().is_some_and(|x| x == "json") && is_drill_id(stem) {
            out.push(read(&p)?);
        }
    }
    out.sort_by(|a, b| (&a.started, &a.id).cmp(&(&b.started, &b.id)));
    Ok(out)
}

fn read(p: &Path) -> Result<Drill> {
    let len = std::fs::metadata(p)
        .ctx(|| format!("stat {}", p.display()))?
        .len();
    if len > MAX_RECORD_BYTES {
        return Err(Error::Invalid(format!(
            "{} is not a drill record",
            p.display()
        )));
    }
    let raw = std::fs::read(p).ctx(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&raw)
        .map_err(|e| Error::Invalid(format!("{} is not a drill record: {e}", p.display())))
}

/// Removes a drill's copy and its record.
pub fn release(node: &Node, drill_id: &str) -> Result<Drill> {
    if !is_drill_id(drill_id) {
        return Err(Error::Invalid(format!(
            "{drill_id:?} is not a drill id (16 hex digits, as `mover drill list` shows)"
        )));
    }
    let rec = dir(node).join(format!("{drill_id}.json"));
    if !rec.exists() {
        return Err(Error::Invalid(format!("no drill {drill_id} on this node")));
    }
    let d = read(&rec)?;
    mover::receiver::drill::release(&d.path)?;
    std::fs::remove_file(&rec).ctx(|| format!("removing {}", rec.display()))?;
    tracing::info!(drill = %d.id, path = %d.path.display(), "drill released");
    Ok(d)
}
