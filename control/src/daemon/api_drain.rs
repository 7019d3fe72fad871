//! `POST /v1/cluster/nodes/{name}/drain` and `.../undrain` (ADMIN): take a node of the cluster
//! out of service for maintenance and put it back. A drained node starts no job of its
//! relationships (scheduled, continuous, "replicate now" or a resumed one); the jobs running
//! when it was drained finish, so it can then be stopped without interrupting one. It still
//! receives. The drain is a record in etcd (`drain/<name>`), so it holds while the node is
//! down and any node of the cluster can set or lift it.

use super::api_common::{check_named, Answer, ApiError, Ctx};
use crate::auth::Privilege;
use crate::cluster::{Drain, MemberView, NodeName};
use crate::events::EventKind;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

/// `POST /v1/cluster/nodes/{name}/drain`.
#[utoipa::path(
    post,
    path = "/v1/cluster/nodes/{name}/drain",
    tag = "cluster",
    params(("name" = String, Path, description = "the node's name in the cluster")),
    responses(
        (status = 200, description = "drained: the node as the cluster now shows it (its running jobs finish; `report.jobs_running` says how many are left)", body = MemberView),
        (status = 404, description = "this node is not in a cluster, or no node of that name joined it", body = super::api_common::ErrorBody),
        (status = 503, description = "no link to etcd now", body = super::api_common::ErrorBody),
        super::api_schemas::Privileged,
    )
)]
pub(super) async fn drain(
    State(node): Ctx,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Answer<Json<MemberView>> {
    set(&node, &h, name, true).await
}

/// `POST /v1/cluster/nodes/{name}/undrain`.
#[utoipa::path(
    post,
    path = "/v1/cluster/nodes/{name}/undrain",
    tag = "cluster",
    params(("name" = String, Path, description = "the node's name in the cluster")),
    responses(
        (status = 200, description = "back in service: the node starts jobs again", body = MemberView),
        (status = 404, description = "this node is not in a cluster, or no node of that name joined it", body = super::api_common::ErrorBody),
        (status = 503, description = "no link to etcd now", body = super::api_common::ErrorBody),
        super::api_schemas::Privileged,
    )
)]
pub(super) async fn undrain(
    State(node): Ctx,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Answer<Json<MemberView>> {
    set(&node, &h, name, false).await
}

async fn set(
    node: &super::Node,
    h: &HeaderMap,
    name: String,
    drained: bool,
) -> Answer<Json<MemberView>> {
    let (by, _) = check_named(node, h, Privilege::Admin)?;
    let m = node.cluster.clone().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "this node is not in a cluster (start its daemon with --cluster etcd://HOST:PORT)"
                .into(),
        )
    })?;
    let name =
        NodeName::try_from(name).map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))?;
    if !m.knows(&name) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no node named {name} joined this cluster (`mover cluster members` lists them)"
            ),
        ));
    }
    let record = Drain {
        drained,
        at: node.clock.now().to_rfc3339(),
        by,
    };
    let bytes = serde_json::to_vec(&record)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    m.put(&format!("drain/{name}"), bytes)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    tracing::info!(%name, drained, "node {}", if drained { "drained" } else { "undrained" });
    let (kind, what) = if drained {
        (
            EventKind::NodeDrained,
            "drained: no new shards or takeovers go to it; its shares under way finish or move",
        )
    } else {
        (EventKind::NodeUndrained, "back in service")
    };
    node.event(kind, None, format!("node {name} {what} (by {})", record.by));
    m.view()
        .members
        .into_iter()
        .find(|v| v.member.name == name)
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("node {name} left the view")))
}
