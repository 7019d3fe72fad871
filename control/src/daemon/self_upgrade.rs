//! Upgrading a single node (`--roles all`) onto a new release: `POST /v1/upgrade/start`
//! (docs/api.md "Upgrades"; `GET /v1/upgrade/status` is in `api_rolling.rs`).
//!
//! Two phases, each runnable alone and rerunnable:
//! - `distribute`: the package (a `mover` binary on this node) is copied into
//!   `<data-dir>/releases/<to>/mover` and its SHA-256 checked against the one the operator
//!   gives; a mismatch leaves nothing staged.
//! - `restart`: the checker (`crate::upgrade::assess`) must show no red item; the running
//!   binary is kept as `<data-dir>/releases/<from>/mover` (for a rollback), the staged one is
//!   renamed over the binary's path (so a supervisor restarting the daemon later runs the new
//!   release too), the daemon stops as on SIGTERM (running jobs stop at a chunk boundary and
//!   stay marked running, so they resume) and executes the new binary with the same
//!   arguments. The new process finishes the record: `done` when it reports the release
//!   asked for, else `failed` with both versions.
//!
//! The record (`<data-dir>/upgrade.json`) is written before every step, so an interrupted
//! upgrade is seen, and rerun, where it stopped.

use super::api_common::{body, check, Answer, ApiError, Ctx};
use super::upgrade_record::{self, read_record, Phase, Record};
use super::{api_schemas, Node};
use crate::auth::{hex, Privilege};
use crate::error::IoContext;
use crate::{Error, Result};
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use mover::compat::{Train, Version};
use serde::Deserialize;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Staged and kept releases, in the data directory.
const RELEASES: &str = "releases";
/// Copy buffer while hashing the package.
const COPY_CHUNK: usize = 1 << 20;
/// Largest package accepted: a `mover` binary is tens of MiB; anything near this is not one.
const MAX_PACKAGE: u64 = 1 << 30;

/// Which phases `start` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartPhase {
    Distribute,
    Restart,
    /// Distribute (unless already staged with this checksum), then restart.
    All,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct StartBody {
    to: String,
    /// Path of the new `mover` binary on this node (not needed for `phase: restart`).
    package: Option<String>,
    sha256: String,
    phase: Option<StartPhase>,
}

fn record_path(node: &Node) -> PathBuf {
    upgrade_record::path(&node.opts.data_dir)
}

fn write_record(node: &Node, r: &Record) -> Result<()> {
    let text = serde_json::to_vec_pretty(r).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::private_file::write_private(&record_path(node), &text)
}

/// Copies `package` to `dest` (through a temporary name, synced) and returns its SHA-256.
fn copy_hashed(package: &Path, dest: &Path) -> Result<String> {
    // The package path is the request's: what is not there, or not a file, is refused as the
    // request's mistake (it was a 500; and a device such as /dev/zero never ends, so its copy
    // filled the data directory).
    let not_a_package = |why: String| {
        Error::Invalid(format!(
            "package {}: {why} (the path of a mover binary on this node)",
            package.display()
        ))
    };
    let src = std::fs::File::open(package).map_err(|e| not_a_package(e.to_string()))?;
    let meta = src.metadata().ctx(|| package.display().to_string())?;
    if !meta.is_file() {
        return Err(not_a_package("not a regular file".into()));
    }
    let len = meta.len();
    // Bounded all the same: a file growing while it is copied.
    let mut src = src.take(MAX_PACKAGE);
    if len > MAX_PACKAGE {
        return Err(Error::Invalid(format!(
            "package {} is {len} bytes, more than a mover binary can be ({MAX_PACKAGE})",
            package.display()
        )));
    }
    let dir = dest.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let tmp = dest.with_extension("partial");
    let mut out = std::fs::File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let n = src
            .read(&mut buf)
            .ctx(|| format!("reading {}", package.display()))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        out.write_all(&buf[..n])
            .ctx(|| format!("writing {}", tmp.display()))?;
    }
    out.sync_all()
        .ctx(|| format!("syncing {}", tmp.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .ctx(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, dest).ctx(|| format!("renaming into {}", dest.display()))?;
    Ok(hex(ctx.finish().as_ref()))
}

pub(super) fn distribute(
    node: &Node,
    to: &Version,
    package: &Path,
    sha256: &str,
) -> Result<Record> {
    let staged = node
        .opts
        .data_dir
        .join(RELEASES)
        .join(to.to_string())
        .join("mover");
    let got = copy_hashed(package, &staged)?;
    if got != sha256 {
        let _ = std::fs::remove_file(&staged);
        return Err(Error::Invalid(format!(
            "package {} has SHA-256 {got}, not the {sha256} given: nothing was staged",
            package.display()
        )));
    }
    let r = Record {
        from: mover::software_version().to_string(),
        to: to.to_string(),
        sha256: got,
        staged,
        phase: Phase::Distributed,
        updated_ns: node.clock.now_ns(),
        error: None,
    };
    write_record(node, &r)?;
    tracing::info!(to = %r.to, staged = %r.staged.display(), "upgrade: package staged and checked");
    Ok(r)
}

/// Puts the staged binary in place of the running one (the old kept for a rollback) and
/// returns the path to execute.
fn install(node: &Node, r: &Record) -> Result<PathBuf> {
    let exe = std::env::current_exe().ctx(|| "finding the running binary".to_string())?;
    let keep = node
        .opts
        .data_dir
        .join(RELEASES)
        .join(&r.from)
        .join("mover");
    if !keep.exists() {
        copy_hashed(&exe, &keep)?;
    }
    // The staged copy is checked again: it sat in the data directory since `distribute`.
    let next = exe.with_file_name(".mover.upgrade");
    let got = copy_hashed(&r.staged, &next)?;
    if got != r.sha256 {
        let _ = std::fs::remove_file(&next);
        return Err(Error::Conflict(format!(
            "staged {} changed since it was checked (SHA-256 {got}, not {}): distribute again",
            r.staged.display(),
            r.sha256
        )));
    }
    std::fs::rename(&next, &exe).ctx(|| format!("installing {}", exe.display()))?;
    Ok(exe)
}

/// A rolling upgrade's data phase on this node: the release `to` staged with `sha256` is
/// installed and the daemon restarts onto it (as `start`'s restart, without the checker: the
/// plan was checked when it started).
pub(super) fn restart_staged(node: &Node, want: &str, sha256: &str, to: Version) -> Result<()> {
    let rec = read_record(&node.opts.data_dir)?
        .filter(|r| r.to == want && r.sha256 == sha256 && r.staged.exists())
        .ok_or_else(|| {
            Error::Conflict(format!(
                "release {want} with that SHA-256 is not staged on this node: run the \
                 distribute phase first"
            ))
        })?;
    let exe = install(node, &rec)?;
    let rec = Record {
        phase: Phase::Restarting,
        updated_ns: node.clock.now_ns(),
        error: None,
        ..rec
    };
    write_record(node, &rec)?;
    tracing::info!(to = %rec.to, exe = %exe.display(), "upgrade: restarting onto the new release");
    node.restart_into(exe, to);
    Ok(())
}

/// `POST /v1/upgrade/start` (ADMIN): 200 with the record after `distribute`; 202 when the node
/// is restarting onto the new release.
#[utoipa::path(
    post,
    path = "/v1/upgrade/start",
    request_body = StartBody,
    tag = "upgrade",
    responses(
        (status = 200, description = "distributed: the package is staged and checked", body = Record),
        (status = 202, description = "restarting onto the new release", body = Record),
        api_schemas::Create,
    )
)]
pub(super) async fn start(
    AxState(node): Ctx,
    h: HeaderMap,
    b: Bytes,
) -> Answer<(StatusCode, Json<Record>)> {
    check(&node, &h, Privilege::Admin)?;
    // Read here, not by axum's `Json`, whose refusals (415, 422) are text the API does not
    // promise.
    let b: StartBody = body(&b, "upgrade start")?;
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let to: Version = b.to.parse().map_err(bad)?;
    let sha = b.sha256.to_ascii_lowercase();
    if sha.len() != 64 || !sha.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(format!("sha256 {:?} is not 64 hex digits", b.sha256)));
    }
    let phase = b.phase.unwrap_or(StartPhase::All);
    let staged_already = read_record(&node.opts.data_dir)?
        .filter(|r| r.to == to.to_string() && r.sha256 == sha && r.staged.exists());
    let rec = match (phase, staged_already) {
        (StartPhase::Restart, Some(r)) | (StartPhase::All, Some(r)) => r,
        (StartPhase::Restart, None) => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "release {to} with that SHA-256 is not staged: run the distribute phase first"
                ),
            ))
        }
        (StartPhase::Distribute | StartPhase::All, _) => {
            let pkg = b.package.as_deref().ok_or_else(|| {
                bad("package: the path of the new mover binary is required to distribute".into())
            })?;
            let n = node.clone();
            let pkg = PathBuf::from(pkg);
            let sha = sha.clone();
            tokio::task::spawn_blocking(move || distribute(&n, &to, &pkg, &sha))
                .await
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??
        }
    };
    if phase == StartPhase::Distribute {
        return Ok((StatusCode::OK, Json(rec)));
    }
    let f = super::upgrade::facts(&node, to, true, &node.opts.data_dir)?;
    let report = crate::upgrade::assess(&f, Train::builtin());
    if report.blocked {
        let red: Vec<String> = report
            .items
            .iter()
            .filter(|i| i.level == crate::upgrade::Level::Red)
            .map(|i| format!("{}: {}", i.check, i.detail))
            .collect();
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("the upgrade checker blocks it: {}", red.join("; ")),
        ));
    }
    let n = node.clone();
    let r = rec.clone();
    let exe = tokio::task::spawn_blocking(move || install(&n, &r))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let rec = Record {
        phase: Phase::Restarting,
        updated_ns: node.clock.now_ns(),
        error: None,
        ..rec
    };
    write_record(&node, &rec)?;
    tracing::info!(to = %rec.to, exe = %exe.display(), "upgrade: restarting onto the new release");
    node.restart_into(exe, to);
    Ok((StatusCode::ACCEPTED, Json(rec)))
}

/// At start: an upgrade that restarted into this process is done if this is the release it
/// asked for, failed otherwise.
pub fn finish(node: &Node) -> Result<()> {
    let Some(mut r) = read_record(&node.opts.data_dir)? else {
        return Ok(());
    };
    if r.phase != Phase::Restarting {
        return Ok(());
    }
    let now = mover::software_version();
    if now == r.to {
        r.phase = Phase::Done;
        tracing::info!(from = %r.from, to = %r.to, "upgrade done: this node runs the new release");
    } else {
        r.phase = Phase::Failed;
        let e = format!(
            "restarted for release {} but the binary reports {now}; the previous release is kept at {}",
            r.to,
            node.opts.data_dir.join(RELEASES).join(&r.from).join("mover").display()
        );
        tracing::error!("upgrade failed: {e}");
        r.error = Some(e);
    }
    r.updated_ns = node.clock.now_ns();
    write_record(node, &r)
}
