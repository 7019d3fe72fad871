//! `GET /v1/upgrade/check?to=VERSION[&staging=DIR]`: the facts the upgrade checker
//! (`crate::upgrade::assess`) decides on, gathered from this node and what it last heard of
//! its peers.

use super::api_common::{caller, query, Answer, ApiError, Ctx};
use super::{api_schemas, view, Node};
use crate::auth::Privilege;
use crate::model::{Role, State};
use crate::upgrade::{assess, Facts, Peer, Report};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use mover::compat::{Train, Version};

#[derive(serde::Deserialize)]
pub(super) struct CheckQuery {
    to: String,
    staging: Option<String>,
}

/// Free bytes for an unprivileged writer at `dir`.
fn free_bytes(dir: &std::path::Path) -> Result<u64, String> {
    let s = rustix::fs::statvfs(dir).map_err(|e| e.to_string())?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

pub(super) fn facts(
    node: &Node,
    to: Version,
    admin: bool,
    staging: &std::path::Path,
) -> crate::Result<Facts> {
    let from: Version = mover::software_version()
        .parse()
        .map_err(crate::Error::Invalid)?;
    let (mut peers, mut alerts, mut running) = (Vec::new(), Vec::new(), Vec::new());
    // Read first: the store's lock must not be held across `view`. A relationship this
    // release cannot read is an alert (its peer's version is not known here), not a reason
    // to refuse the check: upgrading may be what repairs it.
    let listed = node.store().list_readable(None)?;
    for u in listed.unreadable {
        alerts.push((u.id, "unreadable".to_string()));
    }
    for r in listed.rows {
        if r.ended {
            continue;
        }
        let id = r.id.to_string();
        let v = view::view(node, r.clone());
        match v.state {
            State::Running => running.push(id.clone()),
            State::PathChanged | State::IncompatiblePeerVersion | State::JobIncompleteWillRetry => {
                alerts.push((id.clone(), v.state.name().to_string()))
            }
            _ if v.scrub.as_ref().is_some_and(|s| !s.ok) => {
                alerts.push((id.clone(), "scrub_failed".to_string()))
            }
            _ => {}
        }
        if !r.authorized {
            continue;
        }
        let (peer_role, address, reachable) = match r.role {
            Role::Source => (
                "target",
                format!("{}:{}", r.spec.target_address, r.spec.target_port),
                !r.peer_unreachable,
            ),
            Role::Target => (
                "source",
                "the source's address".to_string(),
                v.state != State::Disconnected,
            ),
        };
        peers.push(Peer {
            relationship: id,
            peer_role,
            address,
            reachable,
            version: node.peer_version(&r.id),
        });
    }
    Ok(Facts {
        from,
        to,
        admin,
        staging: staging.display().to_string(),
        staging_free: free_bytes(staging),
        peers,
        alerts,
        running,
        cluster: node.cluster.as_ref().map(|c| {
            let v = c.view();
            crate::upgrade::ClusterFacts {
                connected: v.connected,
                members: v.members.len(),
                down: v
                    .members
                    .iter()
                    .filter(|m| !m.up)
                    .map(|m| m.member.name.to_string())
                    .collect(),
            }
        }),
    })
}

/// Any valid token may ask; whether it may upgrade is one of the items.
#[utoipa::path(
    get,
    path = "/v1/upgrade/check",
    params(("to" = String, Query, description = "the release to upgrade to, e.g. 1.5.0", pattern = "^[0-9]+[.][0-9]+[.][0-9]+$"), ("staging" = Option<String>, Query, description = "absolute path where the release is staged (default: the data dir)")),
    tag = "upgrade",
    responses(
        (status = 200, description = "what stands between this node and the release", body = Report),
        api_schemas::TokenInput,
    )
)]
pub(super) async fn check(
    AxState(node): Ctx,
    h: HeaderMap,
    q: Result<Query<CheckQuery>, QueryRejection>,
) -> Answer<Json<Report>> {
    let role = caller(&node, &h)?;
    let q = query(q)?;
    let to: Version =
        q.to.parse()
            .map_err(|e: String| ApiError(StatusCode::BAD_REQUEST, e))?;
    let staging = q
        .staging
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| node.opts.data_dir.clone());
    if !staging.is_absolute() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "staging directory {} must be an absolute path",
                staging.display()
            ),
        ));
    }
    let f = facts(&node, to, role.has(Privilege::Admin), &staging)?;
    Ok(Json(assess(&f, Train::builtin())))
}
