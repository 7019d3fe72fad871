//! Stored relationships this release cannot read (docs/api.md "Unreadable relationships"): the
//! relationship lists answer the others and count these in a header; these are listed apart,
//! with why each cannot be read, and can be forgotten one by one. What an operator needs when
//! a downgrade met a setting a later release stored, or a row was damaged, and neither
//! upgrading again nor restoring the state database is possible: every other relationship
//! stays in sight and in reach meanwhile.

use super::api_common::{caller, require, Answer, ApiError, Ctx, STOP_GRACE};
use super::{source, target, Node};
use crate::auth::{Privilege, TokenRole};
use crate::events::EventKind;
use crate::model::{Relationship, RelationshipId, Role};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::routing::{delete, get};
use axum::{Json, Router};
use std::sync::Arc;

/// The relationship lists' header counting the rows of the roles listed that this release
/// cannot read (absent when there are none).
pub(super) const HEADER: HeaderName = HeaderName::from_static("mover-unreadable-relationships");

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/replication/unreadable", get(list))
        .route("/v1/replication/unreadable/{id}", delete(forget))
}

/// A stored relationship this release cannot read.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct UnreadableView {
    /// Its id as stored (32 hex digits unless the id itself is damaged).
    id: String,
    /// This node's role in it; null only if the stored role is damaged too.
    role: Option<Role>,
    /// Why it cannot be read, naming the column.
    error: String,
}

/// The privilege that reads (or, `write`, forgets) a row of `role`; a row of no readable role
/// takes ADMIN.
fn privilege(role: Option<Role>, write: bool) -> Privilege {
    match (role, write) {
        (Some(Role::Source), false) => Privilege::SourceRead,
        (Some(Role::Source), true) => Privilege::SourceWrite,
        (Some(Role::Target), false) => Privilege::TargetRead,
        (Some(Role::Target), true) => Privilege::TargetWrite,
        (None, _) => Privilege::Admin,
    }
}

/// The readable relationships of `roles`, and the header counting the unreadable ones of
/// those roles. For the API's lists: one damaged row must not hide the others from the
/// operator who has to repair it.
pub(super) fn readable(node: &Node, roles: &[Role]) -> Answer<(HeaderMap, Vec<Relationship>)> {
    let mut headers = HeaderMap::new();
    let mut rows = Vec::new();
    let mut unreadable = 0usize;
    for role in roles {
        let listed = node.store().list_readable(Some(*role))?;
        rows.extend(listed.rows);
        unreadable += listed.unreadable.len();
    }
    if unreadable > 0 {
        headers.insert(HEADER, HeaderValue::from(unreadable));
    }
    Ok((headers, rows))
}

#[utoipa::path(
    get,
    path = "/v1/replication/unreadable",
    tag = "relationships",
    responses(
        (status = 200, description = "the stored relationships this release cannot read, of the roles the token may read", body = [UnreadableView]),
        super::api_schemas::AnyToken,
    )
)]
pub(super) async fn list(State(node): Ctx, h: HeaderMap) -> Answer<Json<Vec<UnreadableView>>> {
    let role = caller(&node, &h)?;
    let listed = node.store().list_readable(None)?;
    Ok(Json(visible(role, listed.unreadable)))
}

fn visible(role: TokenRole, all: Vec<crate::store::Unreadable>) -> Vec<UnreadableView> {
    all.into_iter()
        .filter(|u| role.has(privilege(u.role, false)))
        .map(|u| UnreadableView {
            id: u.id,
            role: u.role,
            error: u.error.to_string(),
        })
        .collect()
}

#[utoipa::path(
    delete,
    path = "/v1/replication/unreadable/{id}",
    params(("id" = String, Path, description = "the id as stored (GET /v1/replication/unreadable)")),
    tag = "relationships",
    responses(
        (status = 204, description = "forgotten on this node; nothing was released (see docs/api.md)"),
        super::api_schemas::Change,
    )
)]
pub(super) async fn forget(
    State(node): Ctx,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Answer<StatusCode> {
    let token = caller(&node, &h)?;
    let listed = node.store().list_readable(None)?;
    // A row the token may not read is not there for it, as in the list.
    let found = listed
        .unreadable
        .iter()
        .find(|u| u.id == id)
        .filter(|u| token.has(privilege(u.role, false)));
    let Some(role) = found.map(|u| u.role) else {
        let readable = listed
            .rows
            .iter()
            .any(|r| r.id.as_str() == id && token.has(privilege(Some(r.role), false)));
        return Err(if readable {
            ApiError::from(crate::store::still_readable(&id))
        } else {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no unreadable relationship {id:?} here"),
            )
        });
    };
    require(token, privilege(role, true))?;
    // The roles whose state may be this row's (both when its role is damaged).
    let roles: &[Role] = match role {
        Some(Role::Source) => &[Role::Source],
        Some(Role::Target) => &[Role::Target],
        None => &[Role::Source, Role::Target],
    };
    // What runs, or is kept, by the id alone: a row damaged under a running job.
    let rid = RelationshipId::parse(&id).ok();
    if let Some(rid) = &rid {
        if roles.contains(&Role::Source) {
            if !source::stop_job(&node, rid, STOP_GRACE).await {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    "its running job did not stop in time; try again".into(),
                ));
            }
            // Before the row goes: if the record stayed live, a node of the release that
            // reads it would take the relationship over once this one is down. Without
            // etcd (503) the row stays until it can be done.
            super::owners::bury_unreadable(&node, rid).await?;
        }
        if roles.contains(&Role::Target) {
            let (n, rid) = (node.clone(), rid.clone());
            tokio::task::spawn_blocking(move || target::quiesce_unreadable(&n, &rid))
                .await
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
        }
    }
    let gone = node.store().forget_unreadable(&id)?;
    let mut kept = Vec::new();
    if let Some(rid) = &rid {
        for r in roles {
            kept.extend(snapshots_forgotten(&node, rid, *r));
        }
        if roles.contains(&Role::Source) {
            source::forgotten(&node, rid);
        }
    }
    tracing::warn!(%id, role = ?role, snapshots_left = ?kept, "forgot a stored relationship this release cannot read: {}", gone.error);
    let mut left = String::new();
    if role == Some(Role::Target) {
        left.push_str("; its target directory was not released: if it was protected, unmount its read-only view and the private mount under <data-dir>/mnt to make it writable (docs/api.md)");
    }
    if !kept.is_empty() {
        left.push_str(&format!(
            "; its policy snapshots stay, immutable, under its directories' .snapshot: {}",
            kept.join(", ")
        ));
    }
    // An event of no relationship is every token's to read: only the row's own readers see
    // what it held (the error may quote a stored value).
    let about = rid.as_ref().zip(role);
    let message = match about {
        Some(_) => format!(
            "forgotten, as this release cannot read it ({}){left}",
            gone.error
        ),
        None => "a stored relationship whose id or role is damaged was forgotten".to_string(),
    };
    node.event(EventKind::RelationshipDeleted, about, message);
    Ok(StatusCode::NO_CONTENT)
}

/// Drops the policy snapshot records of a forgotten relationship in `role` (those of a
/// snapshot kept for ever would otherwise stay), returning the snapshots' names: the
/// snapshots themselves stay where they are, as what to release them from is in the row.
fn snapshots_forgotten(node: &Node, id: &RelationshipId, role: Role) -> Vec<String> {
    let names = match node.store().snapshots(Some(id), role) {
        Ok(all) => all.into_iter().map(|(_, s)| s.name()).collect(),
        Err(e) => {
            tracing::warn!(%id, "reading its policy snapshots: {e}");
            Vec::new()
        }
    };
    // Their ids stay taken: the snapshots keep the names they give.
    if let Err(e) = node.store().delete_snapshot_records(id, role) {
        tracing::warn!(%id, "forgetting its policy snapshots: {e}");
    }
    names
}
