//! `GET /v1/health` (no token: what a supervisor or load balancer probes) and
//! `GET /v1/containers` (any token): the node's containers by role, as its supervisor
//! (`mover node run`) last saw them, or the one process of a daemon that runs everything.

use super::api_common::{caller, Answer, ApiError, Ctx};
use super::Node;
use crate::supervisor::{ContainerStatus, Containers};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::sync::Arc;

/// `GET /v1/health`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`: an answer means the control container is up.
    pub status: &'static str,
    pub version: String,
    /// The roles of the process that answered (`all`, or `control`).
    pub roles: String,
}

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/containers", get(containers))
}

#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "node",
    security(()),
    responses((status = 200, description = "the control plane is up", body = Health))
)]
pub(super) async fn health(State(node): Ctx) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: mover::software_version().to_string(),
        roles: node.opts.roles.to_string(),
    })
}

#[utoipa::path(
    get,
    path = "/v1/containers",
    tag = "node",
    responses(
        (status = 200, description = "this node's containers: roles, state, pid, version, health, restarts", body = Containers),
        super::api_schemas::AnyToken,
    )
)]
pub(super) async fn containers(State(node): Ctx, h: HeaderMap) -> Answer<Json<Containers>> {
    caller(&node, &h)?;
    if !node.opts.roles.is_all() {
        let s = crate::supervisor::read_status(&node.opts.data_dir)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if let Some(s) = s {
            return Ok(Json(s));
        }
    }
    // One process (or containers started by hand, without a supervisor): this one.
    let ran = node.clock.instant().saturating_duration_since(node.started);
    Ok(Json(Containers {
        supervisor_pid: 0,
        updated_unix: node.clock.now_ns() / 1_000_000_000,
        containers: vec![ContainerStatus::this_process(
            node.opts.roles,
            Some((node.clock.now_ns() / 1_000_000_000) - ran.as_secs() as i64),
        )],
    }))
}
