//! The REST API's handlers of relationships, tokens, drills, the node, the cluster and the
//! metrics (docs/api.md; `routes.rs` routes them). Each checks the caller's token first
//! (`api_common`); none holds a lock across a peer call; peer failures come back as 502 with
//! the peer's words.

use super::api_common::{
    body, caller, check, id, optional_body, query, Answer, ApiError, Ctx, ErrorBody, STOP_GRACE,
};
use super::view::View;
use super::{api_schemas, drill, paths, peer_call, source, target, tokens, view, Node};
use crate::api_types::{Authorize, NewRelationship, NewToken, StartDrill, TokenScope};
use crate::auth::{Privilege, TokenRole};
use crate::model::{Edit, Relationship, RelationshipId, Role};
use crate::peer::{PeerAnswer, PeerRequest};
use crate::Error;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

/// `GET /v1/node`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct NodeInfo {
    /// This daemon's release.
    pub version: String,
    /// Its peer certificate's: "sha256:" and 64 hex digits.
    pub fingerprint: String,
    /// Where it listens for peers.
    pub listen: String,
    /// Where it serves this API.
    pub api: String,
}

/// A token as `GET /v1/tokens` lists it (never the token itself).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub name: String,
    pub role: String,
    /// `node`: this node's own; `cluster`: kept in etcd, valid on every node.
    pub scope: TokenScope,
}

/// `POST /v1/tokens`: the only time the token is shown.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    pub name: String,
    pub role: TokenRole,
    pub scope: TokenScope,
    pub token: String,
}

/// `GET /v1/cluster` (any token): the etcd cluster as this node sees it.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "cluster",
    responses(
        (status = 200, description = "members, leader, this node's link to etcd", body = crate::cluster::ClusterView),
        (status = 404, description = "this node is not in a cluster", body = ErrorBody),
        super::api_schemas::AnyToken,
    )
)]
pub(super) async fn cluster(
    State(node): Ctx,
    h: HeaderMap,
) -> Answer<Json<crate::cluster::ClusterView>> {
    caller(&node, &h)?;
    let m = node.cluster.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "this node is not in a cluster (start its daemon with --cluster etcd://HOST:PORT)"
                .into(),
        )
    })?;
    Ok(Json(m.view()))
}

fn show(node: &Node, r: Relationship) -> Json<view::View> {
    Json(view::view(node, r))
}

#[utoipa::path(
    get,
    path = "/v1/node",
    responses(
        (status = 200, description = "this node", body = NodeInfo),
        api_schemas::AnyToken,
    )
)]
pub(super) async fn node_info(State(node): Ctx, h: HeaderMap) -> Answer<Json<NodeInfo>> {
    caller(&node, &h)?;
    Ok(Json(NodeInfo {
        version: mover::software_version().to_string(),
        fingerprint: node.identity.fingerprint.to_string(),
        listen: node.opts.listen.to_string(),
        api: node.opts.api.to_string(),
    }))
}

#[utoipa::path(
    post,
    path = "/v1/tokens",
    request_body = NewToken,
    tag = "tokens",
    responses(
        (status = 201, description = "the token, shown this once (503: scope cluster while etcd is out of reach)", body = CreatedToken),
        api_schemas::Create,
    )
)]
pub(super) async fn create_token(
    State(node): Ctx,
    h: HeaderMap,
    b: Bytes,
) -> Answer<(StatusCode, Json<CreatedToken>)> {
    check(&node, &h, Privilege::Admin)?;
    let t: NewToken = body(&b, "token")?;
    let scope = t
        .scope
        .unwrap_or_else(|| tokens::default_scope(node.cluster.is_some()));
    let token = tokens::create(&node, &t.name, t.role, scope).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            name: t.name,
            role: t.role,
            scope,
            token,
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "tokens",
    responses(
        (status = 200, description = "every token's name and role", body = [TokenInfo]),
        api_schemas::Privileged,
    )
)]
pub(super) async fn list_tokens(State(node): Ctx, h: HeaderMap) -> Answer<Json<Vec<TokenInfo>>> {
    check(&node, &h, Privilege::Admin)?;
    Ok(Json(
        tokens::list(&node)?
            .into_iter()
            .map(|(name, role, scope)| TokenInfo { name, role, scope })
            .collect(),
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/tokens/{name}",
    params(("name" = String, Path, description = "the token's name"), ScopeQuery),
    tag = "tokens",
    responses(
        (status = 204, description = "deleted"),
        api_schemas::Removal,
    )
)]
pub(super) async fn delete_token(
    State(node): Ctx,
    h: HeaderMap,
    Path(name): Path<String>,
    q: Result<axum::extract::Query<ScopeQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<StatusCode> {
    check(&node, &h, Privilege::Admin)?;
    let scope = query(q)?.scope;
    tokens::delete(&node, &name, scope).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/tokens/{name}?scope=node|cluster`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ScopeQuery {
    /// Which token, when a node token and a cluster token share the name.
    scope: Option<TokenScope>,
}

#[utoipa::path(
    get,
    path = "/v1/replication/status",
    responses(
        (status = 200, description = "every relationship the token may read that this release can read", body = [View], headers(("mover-unreadable-relationships" = u64, description = "how many stored relationships of these roles this release cannot read, when there are any (listed at /v1/replication/unreadable)"))),
        api_schemas::Privileged,
    )
)]
pub(super) async fn status_all(State(node): Ctx, h: HeaderMap) -> Answer<Listing> {
    let role = caller(&node, &h)?;
    let (s, t) = (
        role.has(Privilege::SourceRead),
        role.has(Privilege::TargetRead),
    );
    if !s && !t {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "the token's role ({}) lacks SOURCE_READ and TARGET_READ",
                role.name()
            ),
        ));
    }
    let roles: Vec<Role> = [(s, Role::Source), (t, Role::Target)]
        .into_iter()
        .filter_map(|(ok, r)| ok.then_some(r))
        .collect();
    listing(&node, &roles)
}

/// A relationship list: the views, and the header counting what this release cannot read.
pub(super) type Listing = (HeaderMap, Json<Vec<view::View>>);

/// The relationships of `roles` this release can read, oldest first within each role; those
/// it cannot are counted in `api_unreadable::HEADER` and listed at /v1/replication/unreadable.
fn listing(node: &Node, roles: &[Role]) -> Answer<Listing> {
    let (headers, all) = super::api_unreadable::readable(node, roles)?;
    let views = all.into_iter().map(|r| view::view(node, r)).collect();
    Ok((headers, Json(views)))
}

#[utoipa::path(
    get,
    path = "/v1/replication/source-relationships",
    tag = "source",
    responses(
        (status = 200, description = "the source relationships", body = [View], headers(("mover-unreadable-relationships" = u64, description = "how many stored relationships of these roles this release cannot read, when there are any (listed at /v1/replication/unreadable)"))),
        api_schemas::Privileged,
    )
)]
pub(super) async fn list_source(State(node): Ctx, h: HeaderMap) -> Answer<Listing> {
    check(&node, &h, Privilege::SourceRead)?;
    listing(&node, &[Role::Source])
}

#[utoipa::path(
    get,
    path = "/v1/replication/target-relationships",
    tag = "target",
    responses(
        (status = 200, description = "the target relationships", body = [View], headers(("mover-unreadable-relationships" = u64, description = "how many stored relationships of these roles this release cannot read, when there are any (listed at /v1/replication/unreadable)"))),
        api_schemas::Privileged,
    )
)]
pub(super) async fn list_target(State(node): Ctx, h: HeaderMap) -> Answer<Listing> {
    check(&node, &h, Privilege::TargetRead)?;
    listing(&node, &[Role::Target])
}

#[utoipa::path(
    get,
    path = "/v1/replication/source-relationships/{id}",
    params(("id" = String, Path, description = "relationship id: 32 lowercase hex digits", pattern = "^[0-9a-f]{32}$")),
    tag = "source",
    responses(
        (status = 200, description = "the relationship", body = View),
        api_schemas::Lookup,
    )
)]
pub(super) async fn get_source(
    State(node): Ctx,
    h: HeaderMap,
    Path(i): Path<String>,
) -> Answer<Json<view::View>> {
    check(&node, &h, Privilege::SourceRead)?;
    Ok(show(&node, node.get(&id(&i)?, Role::Source)?))
}

#[utoipa::path(
    get,
    path = "/v1/replication/target-relationships/{id}",
    params(("id" = String, Path, description = "relationship id: 32 lowercase hex digits", pattern = "^[0-9a-f]{32}$")),
    tag = "target",
    responses(
        (status = 200, description = "the relationship", body = View),
        api_schemas::Lookup,
    )
)]
pub(super) async fn get_target(
    State(node): Ctx,
    h: HeaderMap,
    Path(i): Path<String>,
) -> Answer<Json<view::View>> {
    check(&node, &h, Privilege::TargetRead)?;
    Ok(show(&node, node.get(&id(&i)?, Role::Target)?))
}

#[utoipa::path(
    post,
    path = "/v1/replication/source-relationships",
    request_body = NewRelationship,
    tag = "source",
    responses(
        (status = 201, description = "created; awaiting authorization on the target", body = View),
        api_schemas::PeerCreate,
    )
)]
pub(super) async fn create_source(
    State(node): Ctx,
    h: HeaderMap,
    b: Bytes,
) -> Answer<(StatusCode, Json<view::View>)> {
    check(&node, &h, Privilege::SourceWrite)?;
    let NewRelationship {
        spec,
        target_fingerprint: expect,
    } = NewRelationship::parse(&b)?;
    let r = source::new_relationship(&node, RelationshipId::new_random(), spec)?;
    // First contact: the certificate the target presents (the expected one, if given) is
    // pinned from now on.
    let addr = peer_call::peer_addr(&r).await?;
    let req = source::proposal(&r);
    let (answer, fp) =
        crate::peer_wire::call::<_, PeerAnswer>(addr, &node.identity, expect.as_ref(), &req)
            .await?;
    let r = source::proposed(&node, r, answer, fp)?;
    tracing::info!(id = %r.id, target = %addr, "relationship created; awaiting authorization on the target");
    Ok((StatusCode::CREATED, show(&node, r)))
}

#[utoipa::path(
    patch,
    path = "/v1/replication/source-relationships/{id}",
    params(("id" = String, Path, description = "relationship id: 32 lowercase hex digits", pattern = "^[0-9a-f]{32}$")),
    request_body = Edit,
    tag = "source",
    responses(
        (status = 200, description = "edited (the target is told; if it cannot be reached it learns at the next poll)", body = View),
        api_schemas::Change,
    )
)]
pub(super) async fn modify_source(
    State(node): Ctx,
    h: HeaderMap,
    Path(i): Path<String>,
    b: Bytes,
) -> Answer<Json<view::View>> {
    check(&node, &h, Privilege::SourceWrite)?;
    let id = id(&i)?;
    let edit: Edit = serde_json::from_slice(&b).map_err(|e| {
        let hint = if e.to_string().contains("_path") {
            " (source and target paths cannot be edited: create a new relationship)"
        } else {
            ""
        };
        ApiError(StatusCode::BAD_REQUEST, format!("edit: {e}{hint}"))
    })?;
    super::owners::check_held(&node, &id)?;
    let r = source::edit(&node, &id, &edit)?;
    let spec = r.spec.clone();
    match peer_call::call(
        &node,
        &r,
        &PeerRequest::Update {
            id: id.clone(),
            spec,
        },
    )
    .await
    {
        Ok(PeerAnswer::Ok) => {}
        Ok(other) => {
            tracing::warn!(%id, "target did not take the edit: {}", peer_call::refused(&r, other))
        }
        Err(e) => tracing::warn!(%id, "target did not take the edit: {e}"),
    }
    Ok(show(&node, r))
}

#[utoipa::path(
    delete,
    path = "/v1/replication/source-relationships/{id}",
    params(("id" = String, Path, description = "relationship id: 32 lowercase hex digits", pattern = "^[0-9a-f]{32}$")),
    tag = "source",
    responses(
        (status = 204, description = "deleted"),
        api_schemas::Change,
    )
)]
pub(super) async fn delete_source(
    State(node): Ctx,
    h: HeaderMap,
    Path(i): Path<String>,
) -> Answer<StatusCode> {
    check(&node, &h, Privilege::SourceWrite)?;
    let id = id(&i)?;
    super::owners::check_held(&node, &id)?;
    let r = source::delete_begin(&node, &id)?;
    if !source::stop_job(&node, &id, STOP_GRACE).await {
        source::delete_abandoned(&node, &r);
        return Err(ApiError(
            StatusCode::CONFLICT,
            "the running job did not stop in time; try again".into(),
        ));
    }
    // The target reverts an interrupted job and becomes writable; if it cannot be reached
    // (or already deleted its side) the source still forgets the relationship. Asked even when
    // the relationship ended here: a target whose release failed after the source saw it end
    // must not be left protected with no source.
    match peer_call::call(&node, &r, &PeerRequest::Delete { id: id.clone() }).await {
        Ok(PeerAnswer::Ok | PeerAnswer::NotFound) => {}
        Ok(other) => tracing::warn!(%id, "target kept its side: {}", peer_call::refused(&r, other)),
        Err(e) => tracing::warn!(%id, "target unreachable; delete the relationship there too: {e}"),
    }
    source::delete_end(&node, &id)?;
    super::owners::bury(&node, &r).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/v1/replication/source-relationships/{id}/replicate",
    params(("id" = String, Path, description = "relationship id: 32 lowercase hex digits", pattern = "^[0-9a-f]{32}$")),
    tag = "source",
    responses(
        (status = 202, description = "a job starts", body = View),
        api_schemas::PeerChange,
    )
)]
pub(super) async fn replicate(
    State(node): Ctx,
    h: HeaderMap,
    Path(i): Path<String>,
) -> Answer<(StatusCode, Json<view::View>)> {
    check(&node, &h, Privilege::SourceWrite)?;
    let id = id(&i)?;
    let mut r = node.get(&id, Role::Source)?;
    super::owners::check_held(&node, &id)?;
    if !r.authorized && !r.ended {
        // The target may have accepted it since the scheduler last asked.
        let ask = PeerRequest::State {
            id: id.clone(),
            source: None,
        };
        let answer = peer_call::call(&node, &r, &ask).await;
        r = source::learned(&node, r, answer)?;
    }
    source::may_replicate(&r)?;
    if r.path_error.is_some() {
        // Stopped for its source directory: asking again checks it again.
        let (n, stopped) = (node.clone(), r.clone());
        tokio::task::spawn_blocking(move || paths::source_dir(&n, &stopped).map(drop))
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| match e {
                Error::Conflict(m) | Error::Invalid(m) => ApiError(StatusCode::CONFLICT, m),
                e => e.into(),
            })?;
        r = node.get(&id, Role::Source)?;
    }
    source::replicate_now(&node, &r)?;
    Ok((StatusCode::ACCEPTED, show(&node, r)))
}

#[utoipa::path(
    post,
    path = "/v1/replication/source-relationships/{id}/abort",
    params(("id" = String, Path, description = "relationship id: 32 lowercase hex digits", pattern = "^[0-9a-f]{32}$")),
    tag = "source",
    responses(
        (status = 202, description = "the running job, if any, is stopped", body = View),
        api_schemas::Change,
    )
)]
pub(super) async fn abort(
    State(node): Ctx,
    h: HeaderMap,
    Path(i): Path<String>,
) -> Answer<(StatusCode, Json<view::View>)> {
    check(&node, &h, Privilege::SourceWrite)?;
    let id = id(&i)?;
    let r = node.get(&id, Role::Source)?;
    if !source::abort(&node, &id)? {
        return Ok((StatusCode::ACCEPTED, show(&node, r)));
    }
    source::stop_job(&node, &id, STOP_GRACE).await;
    Ok((
        StatusCode::ACCEPTED,
        show(&node, node.get(&id, Role::Source).unwrap_or(r)),
    ))
}

#[utoipa::path(
    post,
    path = "/v1/replication/source-relationships/{id}/reconnect",
    params(("id" = String, Path, description = "relationship id: 32 lowercase hex digits", pattern = "^[0-9a-f]{32}$")),
    tag = "source",
    responses(
        (status = 202, description = "replicating again after a failover", body = source::Reconnected),
        api_schemas::PeerChange,
    )
)]
pub(super) async fn reconnect(
    State(node): Ctx,
    h: HeaderMap,
    Path(i): Path<String>,
) -> Answer<(StatusCode, Json<source::Reconnected>)> {
    check(&node, &h, Privilege::SourceWrite)?;
    let id = id(&i)?;
    super::owners::check_held(&node, &id)?;
    let done = source::reconnect(&node, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(done)))
}

#[utoipa::path(
    post,
    path = "/v1/replication/target-relationships/{id}/authorize",
    params(("id" = String, Path, description = "relationship id: 32 lowercase hex digits", pattern = "^[0-9a-f]{32}$")),
    request_body = Option<Authorize>,
    tag = "target",
    responses(
        (status = 200, description = "authorized; the target directory is read-only", body = View),
        api_schemas::Change,
    )
)]
pub(super) async fn authorize(
    State(node): Ctx,
    h: HeaderMap,
    Path(i): Path<String>,
    b: Bytes,
) -> Answer<Json<view::View>> {
    check(&node, &h, Privilege::TargetWrite)?;
    let id = id(&i)?;
    let a: Authorize = optional_body(&b, "authorize")?;
    let n = node.clone();
    let r = tokio::task::spawn_blocking(move || target::authorize(&n, &id, &a))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    tracing::info!(id = %r.id, read_only = ?r.read_only, "relationship authorized");
    Ok(show(&node, r))
}

#[utoipa::path(
    delete,
    path = "/v1/replication/target-relationships/{id}",
    params(("id" = String, Path, description = "relationship id: 32 lowercase hex digits", pattern = "^[0-9a-f]{32}$")),
    tag = "target",
    responses(
        (status = 204, description = "deleted; the target directory is writable"),
        api_schemas::Change,
    )
)]
pub(super) async fn delete_target(
    State(node): Ctx,
    h: HeaderMap,
    Path(i): Path<String>,
) -> Answer<StatusCode> {
    check(&node, &h, Privilege::TargetWrite)?;
    let id = id(&i)?;
    let n = node.clone();
    tokio::task::spawn_blocking(move || target::delete(&n, &id))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/v1/replication/target-relationships/{id}/make-writable",
    params(("id" = String, Path, description = "relationship id: 32 lowercase hex digits", pattern = "^[0-9a-f]{32}$")),
    tag = "target",
    responses(
        (status = 200, description = "writable; the relationship has ended", body = View),
        api_schemas::Change,
    )
)]
pub(super) async fn make_writable(
    State(node): Ctx,
    h: HeaderMap,
    Path(i): Path<String>,
) -> Answer<Json<view::View>> {
    check(&node, &h, Privilege::TargetWrite)?;
    let id = id(&i)?;
    let n = node.clone();
    let r = tokio::task::spawn_blocking(move || target::make_writable(&n, &id))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    tracing::info!(id = %r.id, "target made writable; the relationship has ended");
    Ok(show(&node, r))
}

#[utoipa::path(
    post,
    path = "/v1/replication/target-relationships/{id}/drills",
    params(("id" = String, Path, description = "relationship id: 32 lowercase hex digits", pattern = "^[0-9a-f]{32}$")),
    request_body = Option<StartDrill>,
    tag = "target",
    responses(
        (status = 201, description = "a writable copy of the last recovery point", body = drill::Drill),
        api_schemas::Change,
    )
)]
pub(super) async fn start_drill(
    State(node): Ctx,
    h: HeaderMap,
    Path(i): Path<String>,
    b: Bytes,
) -> Answer<(StatusCode, Json<drill::Drill>)> {
    check(&node, &h, Privilege::TargetWrite)?;
    let id = id(&i)?;
    let d: StartDrill = optional_body(&b, "drill")?;
    let n = node.clone();
    let made = tokio::task::spawn_blocking(move || {
        drill::start(&n, &id, d.into.map(std::path::PathBuf::from), d.allow_copy)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok((StatusCode::CREATED, Json(made)))
}

#[utoipa::path(
    get,
    path = "/v1/replication/drills",
    tag = "target",
    responses(
        (status = 200, description = "the drills on this node", body = [drill::Drill]),
        api_schemas::Privileged,
    )
)]
pub(super) async fn list_drills(State(node): Ctx, h: HeaderMap) -> Answer<Json<Vec<drill::Drill>>> {
    check(&node, &h, Privilege::TargetRead)?;
    Ok(Json(drill::list(&node)?))
}

#[utoipa::path(
    delete,
    path = "/v1/replication/drills/{drill}",
    params(("drill" = String, Path, description = "drill id: 16 hex digits", pattern = "^[0-9a-f]{16}$")),
    tag = "target",
    responses(
        (status = 200, description = "the released drill", body = drill::Drill),
        api_schemas::PrivilegedInput,
    )
)]
pub(super) async fn release_drill(
    State(node): Ctx,
    h: HeaderMap,
    Path(d): Path<String>,
) -> Answer<Json<drill::Drill>> {
    check(&node, &h, Privilege::TargetWrite)?;
    let n = node.clone();
    let gone = tokio::task::spawn_blocking(move || drill::release(&n, &d))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(gone))
}

#[utoipa::path(
    get,
    path = "/metrics",
    security(()),
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain; version=0.0.4"),
        api_schemas::ServerError,
    )
)]
pub(super) async fn metrics(
    State(node): Ctx,
) -> Answer<([(axum::http::HeaderName, &'static str); 1], String)> {
    // A row this release cannot read is counted (state "unreadable"), not allowed to take
    // every other series with it.
    let listed = node.store().list_readable(None)?;
    let all = listed.rows;
    let now_ns = node.clock.now_ns();
    let ages: Vec<(String, &str, f64)> = all
        .iter()
        .filter_map(|r| {
            r.recovery_point_ns.map(|ns| {
                let age = (now_ns - ns).max(0) as f64 / 1e9;
                (r.id.to_string(), r.role.name(), age)
            })
        })
        .collect();
    let mut states = std::collections::BTreeMap::new();
    states.insert("unreadable", listed.unreadable.len() as u64);
    let mut scrubs = Vec::new();
    let live = all.iter().filter(|r| r.authorized && !r.ended);
    let peers: Vec<(String, &'static str, bool)> = live
        .clone()
        .map(|r| (r.id.to_string(), r.role.name(), !r.peer_unreachable))
        .collect();
    // A target should be read-only from authorization until it is made writable, whether its
    // protection is a bind mount or was not enforceable (then this reports 0, as it should).
    let targets: Vec<(String, bool)> = live
        .filter(|r| r.role == Role::Target)
        .map(|r| {
            let path = r.pinned.as_ref().map_or(&r.spec.target_path, |p| &p.path);
            let ro = rustix::fs::statvfs(path.as_str())
                .is_ok_and(|v| v.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
            (r.id.to_string(), ro)
        })
        .collect();
    for r in all {
        let v = view::view(&node, r);
        if let Some(s) = &v.scrub {
            scrubs.push((v.id.clone(), s.ok, (now_ns - s.at_ns).max(0) as f64 / 1e9));
        }
        *states.entry(v.state.name()).or_insert(0u64) += 1;
    }
    let mut text = node.metrics.render(&ages, &states);
    text.push_str(&super::metrics::render_scrubs(&scrubs));
    text.push_str(&super::metrics::render_health(&super::metrics::Health {
        peers: &peers,
        targets: &targets,
    }));
    if let Some(c) = &node.cluster {
        text.push_str(&super::metrics::render_cluster(&c.view()));
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn metrics_count_a_stored_relationship_this_release_cannot_read_and_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let (node, _clock) = super::super::test_node(dir.path());
        for _ in 0..2 {
            let r = Relationship::new(
                crate::model::RelationshipId::new_random(),
                Role::Source,
                crate::model::tests::spec(),
                0,
                None,
            );
            node.store().insert(&r).unwrap();
        }
        let one = node.store().list(None).unwrap()[0].id.clone();
        node.store().set_raw(one.as_str(), "last_attempt = '['");
        // Lists that must see every relationship fail, as the server's fault, not the
        // request's.
        let e = ApiError::from(node.store().list(None).unwrap_err());
        assert_eq!(e.0, StatusCode::INTERNAL_SERVER_ERROR, "{}", e.1);
        // etcd out of reach mid-call is the server's trouble too, worth a retry.
        let e = ApiError::from(Error::Unavailable("etcd: writing: no answer".into()));
        assert_eq!(e.0, StatusCode::SERVICE_UNAVAILABLE);
        let Ok((_, text)) = metrics(State(Arc::new(node))).await else {
            panic!("the metrics fail with an unreadable row");
        };
        let states: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("mover_relationships{state="))
            .collect();
        assert!(
            states.contains(&"mover_relationships{state=\"unreadable\"} 1"),
            "{text}"
        );
        // The other one is counted in its state.
        let others: u64 = states
            .iter()
            .filter(|l| !l.contains("unreadable"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(others, 1, "{text}");
    }

    #[test]
    fn an_optional_body_left_out_or_null_is_the_default() {
        for b in ["", "null", "{}"] {
            let a: Answer<Authorize> = optional_body(&Bytes::from(b), "authorize");
            assert!(
                a.as_ref().is_ok_and(|a| *a == Authorize::default()),
                "{b:?}"
            );
        }
        let bad = optional_body::<Authorize>(&Bytes::from("5"), "authorize");
        assert!(bad.is_err_and(|e| e.0 == StatusCode::BAD_REQUEST));
        let set = optional_body::<Authorize>(&Bytes::from(r#"{"allow_exec":true}"#), "x");
        assert!(set.is_ok_and(|a| a.allow_exec));
    }
}
