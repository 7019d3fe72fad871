//! The REST API of snapshot policies and kept snapshots (docs/api.md "Snapshot policies").
//! Policies are the source's: reading them takes SOURCE_READ, changing them SOURCE_WRITE.
//! Snapshots are kept on both sides: listing takes either read privilege, releasing the
//! write privilege of the side that keeps it.

use super::api_common::{body, check, id, query, Answer, ApiError, Ctx};
use super::snapshots::{self, PolicyView, SnapshotView};
use super::{api_schemas, Node};
use crate::auth::Privilege;
use crate::model::Role;
use crate::policy::{Policy, PolicyEdit, PolicyName, SnapshotId};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/snapshot-policies", get(list).post(create))
        .route(
            "/v1/snapshot-policies/{name}",
            get(show).patch(modify).delete(delete),
        )
        .route("/v1/snapshot-policies/{name}/run", post(run))
        .route("/v1/snapshots", get(list_snapshots))
        .route(
            "/v1/snapshots/{relationship}/{id}",
            axum::routing::delete(release),
        )
}

fn name(s: &str) -> Answer<PolicyName> {
    Ok(PolicyName::parse(s)?)
}

fn join_error(e: tokio::task::JoinError) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

#[utoipa::path(
    get,
    path = "/v1/snapshot-policies",
    tag = "snapshots",
    responses(
        (status = 200, description = "the snapshot policies", body = [PolicyView]),
        api_schemas::Privileged,
    )
)]
pub(super) async fn list(State(node): Ctx, h: HeaderMap) -> Answer<Json<Vec<PolicyView>>> {
    check(&node, &h, Privilege::SourceRead)?;
    Ok(Json(snapshots::list_policies(&node)?))
}

#[utoipa::path(
    post,
    path = "/v1/snapshot-policies",
    request_body = Policy,
    tag = "snapshots",
    responses(
        (status = 201, description = "created", body = PolicyView),
        api_schemas::Create,
    )
)]
pub(super) async fn create(
    State(node): Ctx,
    h: HeaderMap,
    b: Bytes,
) -> Answer<(StatusCode, Json<PolicyView>)> {
    check(&node, &h, Privilege::SourceWrite)?;
    let p: Policy = body(&b, "snapshot policy")?;
    Ok((
        StatusCode::CREATED,
        Json(snapshots::create_policy(&node, p)?),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/snapshot-policies/{name}",
    params(("name" = String, Path, description = "policy name: 1-64 letters, digits, '-' or '.', not starting with '.'", pattern = "^[A-Za-z0-9-][A-Za-z0-9.-]{0,63}$")),
    tag = "snapshots",
    responses(
        (status = 200, description = "the policy", body = PolicyView),
        api_schemas::Lookup,
    )
)]
pub(super) async fn show(
    State(node): Ctx,
    h: HeaderMap,
    Path(n): Path<String>,
) -> Answer<Json<PolicyView>> {
    check(&node, &h, Privilege::SourceRead)?;
    Ok(Json(snapshots::get_policy(&node, &name(&n)?)?))
}

#[utoipa::path(
    patch,
    path = "/v1/snapshot-policies/{name}",
    params(("name" = String, Path, description = "policy name: 1-64 letters, digits, '-' or '.', not starting with '.'", pattern = "^[A-Za-z0-9-][A-Za-z0-9.-]{0,63}$")),
    request_body = PolicyEdit,
    tag = "snapshots",
    responses(
        (status = 200, description = "edited", body = PolicyView),
        api_schemas::Change,
    )
)]
pub(super) async fn modify(
    State(node): Ctx,
    h: HeaderMap,
    Path(n): Path<String>,
    b: Bytes,
) -> Answer<Json<PolicyView>> {
    check(&node, &h, Privilege::SourceWrite)?;
    let e: PolicyEdit = body(&b, "policy edit")?;
    Ok(Json(snapshots::modify_policy(&node, &name(&n)?, &e)?))
}

#[utoipa::path(
    delete,
    path = "/v1/snapshot-policies/{name}",
    params(("name" = String, Path, description = "policy name: 1-64 letters, digits, '-' or '.', not starting with '.'", pattern = "^[A-Za-z0-9-][A-Za-z0-9.-]{0,63}$")),
    tag = "snapshots",
    responses(
        (status = 204, description = "deleted"),
        api_schemas::Change,
    )
)]
pub(super) async fn delete(
    State(node): Ctx,
    h: HeaderMap,
    Path(n): Path<String>,
) -> Answer<StatusCode> {
    check(&node, &h, Privilege::SourceWrite)?;
    snapshots::delete_policy(&node, &name(&n)?)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Takes the policy's snapshots now (each relationship linking it), as if it fired.
#[utoipa::path(
    post,
    path = "/v1/snapshot-policies/{name}/run",
    params(("name" = String, Path, description = "policy name: 1-64 letters, digits, '-' or '.', not starting with '.'", pattern = "^[A-Za-z0-9-][A-Za-z0-9.-]{0,63}$")),
    tag = "snapshots",
    responses(
        (status = 201, description = "the snapshots taken", body = [SnapshotView]),
        api_schemas::Change,
    )
)]
pub(super) async fn run(
    State(node): Ctx,
    h: HeaderMap,
    Path(n): Path<String>,
) -> Answer<(StatusCode, Json<Vec<SnapshotView>>)> {
    check(&node, &h, Privilege::SourceWrite)?;
    let p = name(&n)?;
    let taken = tokio::task::spawn_blocking(move || snapshots::run_policy(&node, &p))
        .await
        .map_err(join_error)??;
    Ok((StatusCode::CREATED, Json(taken)))
}

#[derive(serde::Deserialize)]
pub(super) struct Only {
    relationship: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/snapshots",
    params(("relationship" = Option<String>, Query, description = "only this relationship's")),
    tag = "snapshots",
    responses(
        (status = 200, description = "the kept and queued snapshots the token may read", body = [SnapshotView]),
        api_schemas::PrivilegedInput,
    )
)]
pub(super) async fn list_snapshots(
    State(node): Ctx,
    h: HeaderMap,
    q: Result<Query<Only>, QueryRejection>,
) -> Answer<Json<Vec<SnapshotView>>> {
    let source = check(&node, &h, Privilege::SourceRead).is_ok();
    let target = check(&node, &h, Privilege::TargetRead).is_ok();
    if !source && !target {
        check(&node, &h, Privilege::SourceRead)?;
    }
    let only = query(q)?.relationship.as_deref().map(id).transpose()?;
    let all = snapshots::list(&node, only.as_ref())?;
    Ok(Json(
        all.into_iter()
            .filter(|s| match s.role {
                Role::Source => source,
                Role::Target => target,
            })
            .collect(),
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/snapshots/{relationship}/{id}",
    params(("relationship" = String, Path, description = "relationship id: 32 lowercase hex digits", pattern = "^[0-9a-f]{32}$"), ("id" = u64, Path, description = "snapshot id")),
    tag = "snapshots",
    responses(
        (status = 200, description = "the released snapshot", body = SnapshotView),
        api_schemas::Change,
    )
)]
pub(super) async fn release(
    State(node): Ctx,
    h: HeaderMap,
    Path((rel, sid)): Path<(String, String)>,
) -> Answer<Json<SnapshotView>> {
    let rid = id(&rel)?;
    // Parsed here, not by the extractor, whose refusal would be text rather than the API's
    // JSON error.
    let sid: u64 = sid.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("snapshot id {sid:?} is not a number"),
        )
    })?;
    let role = if node.get(&rid, Role::Source).is_ok() {
        Privilege::SourceWrite
    } else {
        Privilege::TargetWrite
    };
    check(&node, &h, role)?;
    let gone =
        tokio::task::spawn_blocking(move || snapshots::release(&node, &rid, SnapshotId(sid)))
            .await
            .map_err(join_error)??;
    Ok(Json(gone))
}
