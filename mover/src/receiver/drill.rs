//! DR drills: a writable copy of a target's latest recovery point, for testing a failover
//! without failing over. The receiver makes it between sessions (it holds the target's lock,
//! so no job writes meanwhile, and replication goes on as soon as the copy exists): a btrfs
//! snapshot where the target is a subvolume and the drill's directory is on the same file
//! system, else a reflink clone of every file, else (only when allowed) a full copy. The copy
//! is then walked and compared with the recovery point's list, as a scrub does: a drill that
//! is not exactly the recovery point is removed and reported as failed.

use super::state::State;
use crate::beneath;
use crate::error::{Error, IoContext, Result};
use crate::tree_copy::{copy_tree, discard};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How a drill's copy was made.
pub use crate::tree_copy::CopyMethod as DrillMethod;

/// A drill made and verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    pub path: PathBuf,
    pub method: DrillMethod,
    /// The recovery point it holds.
    pub recovery_point: String,
    /// The source's point in time that recovery point holds (ns since the epoch).
    pub source_time_ns: i64,
    /// Entries walked and found equal to the recovery point's list.
    pub entries: u64,
    /// From the request to a verified, writable copy.
    pub seconds_to_writable: f64,
    /// How old the data is: now minus the source's point in time.
    pub data_age_seconds: f64,
}

/// What to make: where (a directory that must not exist yet, whose parent exists), and
/// whether a full copy is acceptable when neither a snapshot nor reflinks are possible.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillRequest {
    pub into: PathBuf,
    pub allow_copy: bool,
    /// Instead of a drill at `into`, keep the recovery point read-only under the target's
    /// `.snapshot` (`crate::keep`); `into` is then only the path reported.
    pub keep: Option<KeepRequest>,
}

/// A policy snapshot to keep on the target: the copy is made only if the target is still at
/// the recovery point its job committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeepRequest {
    /// `<snapshot-id>_<policy>`.
    pub name: String,
    pub recovery_point: String,
}

/// Makes the drill of the target at `root` (the caller holds the target's lock). Errors leave
/// nothing at `into`.
pub fn make(root: BorrowedFd<'_>, req: &DrillRequest) -> Result<DrillReport> {
    let t0 = Instant::now();
    let state = State::find(root)?.ok_or_else(|| {
        Error::Busy("the target has no recovery point yet: nothing to drill".into())
    })?;
    let rp = state.recovery_point()?.ok_or_else(|| {
        Error::Busy("the target has no recovery point yet: nothing to drill".into())
    })?;
    if super::journal::read_existing(&state)?.is_some_and(|j| j.base == Some(rp.id)) {
        return Err(Error::Busy(
            "an interrupted job waits to be resumed: the target is between two recovery points; \
             try again after the next job"
                .into(),
        ));
    }
    if let Some(k) = &req.keep {
        return keep(root, req, k, &state, &rp, t0);
    }
    let (parent, name) = split(&req.into)?;
    let parent_fd = beneath::open_root(parent, "the drill's parent directory")?;
    if beneath::stat_opt(parent_fd.as_fd(), name.as_bytes())
        .ctx(|| format!("stat {}", req.into.display()))?
        .is_some()
    {
        return Err(Error::Unsupported(format!(
            "{} exists: a drill goes into a new directory",
            req.into.display()
        )));
    }
    let made = copy_tree(root, parent_fd.as_fd(), name, req.allow_copy).map_err(|e| match e {
        Error::Unsupported(m) if !req.allow_copy => {
            Error::Unsupported(format!("{m}; allow the copy to make it anyway"))
        }
        e => e,
    });
    let method = match made {
        Ok(m) => m,
        Err(e) => {
            discard(parent_fd.as_fd(), name);
            return Err(e);
        }
    };
    let verified = beneath::open_root(&req.into, "the drill")
        .and_then(|fd| super::scrub::compare(fd.as_fd(), &state, &rp));
    match verified {
        Ok((true, _, entries)) => Ok(report(req, method, &rp, entries, t0)),
        Ok((false, difference, _)) => {
            discard(parent_fd.as_fd(), name);
            Err(Error::Verify(format!(
                "the drill's copy is not recovery point {}: {}",
                rp.id,
                difference.unwrap_or_default()
            )))
        }
        Err(e) => {
            discard(parent_fd.as_fd(), name);
            Err(e)
        }
    }
}

/// The report of a copy of `rp` verified with `entries` entries.
fn report(
    req: &DrillRequest,
    method: DrillMethod,
    rp: &super::state::RecoveryPoint,
    entries: u64,
    t0: Instant,
) -> DrillReport {
    DrillReport {
        path: req.into.clone(),
        method,
        recovery_point: rp.id.to_string(),
        source_time_ns: rp.source_time_ns,
        entries,
        seconds_to_writable: t0.elapsed().as_secs_f64(),
        data_age_seconds: (crate::clock::now_ns() - rp.source_time_ns).max(0) as f64 / 1e9,
    }
}

/// A kept policy snapshot of recovery point `rp`, verified like a drill.
fn keep(
    root: BorrowedFd<'_>,
    req: &DrillRequest,
    k: &KeepRequest,
    state: &State,
    rp: &super::state::RecoveryPoint,
    t0: Instant,
) -> Result<DrillReport> {
    if rp.id.to_string() != k.recovery_point {
        return Err(Error::Verify(format!(
            "the target is at recovery point {}, not {}: the policy snapshot {} is not kept",
            rp.id, k.recovery_point, k.name
        )));
    }
    let method = crate::keep::take(root, &k.name)?;
    let dir = crate::keep::snapshot_dir(root)?;
    let verified = beneath::open_in(
        dir.as_fd(),
        k.name.as_bytes(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .ctx(|| format!("opening .snapshot/{}", k.name))
    .and_then(|fd| super::scrub::compare(fd.as_fd(), state, rp));
    match verified {
        Ok((true, _, entries)) => Ok(report(req, method, rp, entries, t0)),
        other => {
            crate::keep::release(root, &k.name)?;
            match other {
                Ok((_, difference, _)) => Err(Error::Verify(format!(
                    "the kept snapshot {} is not recovery point {}: {}",
                    k.name,
                    rp.id,
                    difference.unwrap_or_default()
                ))),
                Err(e) => Err(e),
            }
        }
    }
}

/// Removes a drill's directory (a btrfs snapshot too: as root, a subvolume is removed like a
/// directory once empty).
pub fn release(path: &Path) -> Result<()> {
    let (parent, name) = split(path)?;
    let parent_fd = beneath::open_root(parent, "the drill's parent directory")?;
    beneath::remove_any(parent_fd.as_fd(), name.as_bytes(), 0)
        .ctx(|| format!("removing the drill {}", path.display()))?;
    Ok(())
}

fn split(p: &Path) -> Result<(&Path, &str)> {
    match (p.parent(), p.file_name().and_then(|n| n.to_str())) {
        (Some(parent), Some(name)) if p.is_absolute() && name != ".." => Ok((parent, name)),
        _ => Err(Error::Unsupported(format!(
            "{} is not an absolute path to a new directory",
            p.display()
        ))),
    }
}
