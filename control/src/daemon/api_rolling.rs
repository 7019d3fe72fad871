//! `POST /v1/upgrade/rolling`: an operator's rolling upgrade of the cluster, checked and
//! written as a plan that the leader drives (`rolling.rs`).

use super::rolling::{start, Plan, RollPhase, Start, MAX_NODES, ORDER};
use crate::cluster::NodeName;
use serde::{Deserialize, Serialize};

/// `POST /v1/upgrade/rolling`.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct RollingBody {
    to: String,
    /// Path of the new `mover` binary, the same on every node (their shared file system);
    /// needed when the distribute phase runs.
    package: Option<String>,
    sha256: String,
    /// One phase alone (`distribute`, `data`, `control`, `api`), `restart` (data, control and
    /// api), or `all` (the default).
    phase: Option<String>,
    /// Nodes restarted at once in the data, control and api phases (default 1).
    batch_size: Option<usize>,
    /// Only these nodes (default: every member).
    #[serde(default)]
    only: Vec<NodeName>,
    /// Not these nodes.
    #[serde(default)]
    skip: Vec<NodeName>,
}

/// Answer of `POST /v1/upgrade/rolling`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Started {
    pub plan: Plan,
    /// The same plan was there (failed or interrupted): it goes on where it stopped.
    pub resumed: bool,
}

/// `POST /v1/upgrade/rolling` (ADMIN): a rolling upgrade of the cluster this node is in.
#[utoipa::path(
    post,
    path = "/v1/upgrade/rolling",
    request_body = RollingBody,
    tag = "upgrade",
    responses(
        (status = 202, description = "planned (or resumed); the leader drives it", body = Started),
        (status = 404, description = "this node is not in a cluster", body = super::api::ErrorBody),
        super::openapi::Create,
    )
)]
pub(super) async fn start_api(
    axum::extract::State(node): super::api::Ctx,
    h: axum::http::HeaderMap,
    b: axum::body::Bytes,
) -> super::api::Answer<(axum::http::StatusCode, axum::Json<Started>)> {
    use super::api::ApiError;
    use axum::http::StatusCode;
    super::api::check(&node, &h, crate::auth::Privilege::Admin)?;
    let m = node.cluster.clone().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "this node is not in a cluster: upgrade it with POST /v1/upgrade/start".into(),
        )
    })?;
    let b: RollingBody = super::api::body(&b, "rolling upgrade")?;
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let to: mover::compat::Version = b.to.parse().map_err(bad)?;
    let sha = b.sha256.to_ascii_lowercase();
    if sha.len() != 64 || !sha.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(format!("sha256 {:?} is not 64 hex digits", b.sha256)));
    }
    let phases = match b.phase.as_deref().unwrap_or("all") {
        "all" => ORDER.to_vec(),
        "restart" => vec![RollPhase::Data, RollPhase::Control, RollPhase::Api],
        "distribute" => vec![RollPhase::Distribute],
        "data" => vec![RollPhase::Data],
        "control" => vec![RollPhase::Control],
        "api" => vec![RollPhase::Api],
        other => {
            return Err(bad(format!(
                "phase {other:?}: one of all, restart, distribute, data, control, api"
            )))
        }
    };
    let batch_size = b.batch_size.unwrap_or(1);
    if batch_size == 0 || batch_size > MAX_NODES {
        return Err(bad(format!("batch_size must be 1-{MAX_NODES}")));
    }
    if to.to_string() == mover::software_version() && phases.contains(&RollPhase::Distribute) {
        tracing::info!("rolling upgrade to the release this node runs: the others catch up");
    }
    let f = super::upgrade::facts(&node, to, true, &node.opts.data_dir)?;
    let report = crate::upgrade::assess(&f, mover::compat::Train::builtin());
    // The version step is judged against the oldest release still running; this node may be
    // on the new one already when a plan is resumed.
    let red: Vec<String> = report
        .items
        .iter()
        .filter(|i| i.level == crate::upgrade::Level::Red)
        .filter(|i| !(i.check == "version_step" && to.to_string() == mover::software_version()))
        .map(|i| format!("{}: {}", i.check, i.detail))
        .collect();
    if !red.is_empty() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("the upgrade checker blocks it: {}", red.join("; ")),
        ));
    }
    let (plan, resumed) = start(
        &node,
        &m,
        Start {
            to: to.to_string(),
            sha256: sha,
            package: b.package,
            phases,
            batch_size,
            only: b.only,
            skip: b.skip,
        },
    )
    .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(Started { plan, resumed })))
}
