//! `POST /v1/upgrade/rolling`: an operator's rolling upgrade of the cluster, checked and
//! written as a plan that the leader drives (`rolling.rs`); `GET /v1/upgrade/status`: the
//! containers' releases, this node's last upgrade (`self_upgrade.rs`) and the rolling one.

use super::api_common::{caller, Answer, Ctx};
use super::rolling::{
    all_containers, plan, start, NodeStep, Plan, RollPhase, Start, MAX_NODES, ORDER,
};
use super::{api_schemas, upgrade_record};
use crate::cluster::NodeName;
use axum::http::HeaderMap;
use axum::Json;
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
        (status = 404, description = "this node is not in a cluster", body = super::api_common::ErrorBody),
        super::api_schemas::Create,
    )
)]
pub(super) async fn start_api(
    axum::extract::State(node): super::api_common::Ctx,
    h: axum::http::HeaderMap,
    b: axum::body::Bytes,
) -> super::api_common::Answer<(axum::http::StatusCode, axum::Json<Started>)> {
    use super::api_common::ApiError;
    use axum::http::StatusCode;
    super::api_common::check(&node, &h, crate::auth::Privilege::Admin)?;
    let m = node.cluster.clone().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "this node is not in a cluster: upgrade it with POST /v1/upgrade/start".into(),
        )
    })?;
    let b: RollingBody = super::api_common::body(&b, "rolling upgrade")?;
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

/// `GET /v1/upgrade/status`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Status {
    /// This node's containers (in a cluster: every node's, as each published them).
    pub containers: Vec<Container>,
    /// This node's latest upgrade record (null before any).
    pub upgrade: Option<upgrade_record::Record>,
    /// In a cluster: the rolling upgrade's plan (null before any).
    pub rolling: Option<Plan>,
    /// In a cluster: each node's step of it, by node name.
    pub steps: std::collections::BTreeMap<String, NodeStep>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Container {
    /// The node's name in the cluster, else its peer address.
    pub node: String,
    /// Its roles (`all`, `control`, `data`, `api`).
    pub role: String,
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    /// `ok`, or `down` when its health probe does not answer.
    pub health: String,
}

fn container(node: String, c: crate::supervisor::ContainerStatus, now_unix: i64) -> Container {
    Container {
        node,
        role: c.roles,
        version: c.version.unwrap_or_else(|| "?".into()),
        pid: c.pid.unwrap_or(0),
        uptime_secs: c
            .started_unix
            .map_or(0, |s| now_unix.saturating_sub(s).max(0) as u64),
        health: if c.healthy { "ok" } else { "down" }.into(),
    }
}

/// `GET /v1/upgrade/status` (any token): the containers, their releases and health, the
/// latest upgrade's record and, in a cluster, the rolling upgrade and each node's step.
#[utoipa::path(
    get,
    path = "/v1/upgrade/status",
    tag = "upgrade",
    responses(
        (status = 200, description = "the containers' releases and the latest upgrade", body = Status),
        api_schemas::AnyToken,
    )
)]
pub(super) async fn status(axum::extract::State(node): Ctx, h: HeaderMap) -> Answer<Json<Status>> {
    caller(&node, &h)?;
    let rec = upgrade_record::read_record(&node.opts.data_dir)?;
    let now_unix = node.clock.now_ns() / 1_000_000_000;
    let here = match &node.cluster {
        Some(m) => m.name().to_string(),
        None => node.opts.listen.to_string(),
    };
    let mut containers = Vec::new();
    let (mut rolling, mut steps) = (None, std::collections::BTreeMap::new());
    if let Some(m) = &node.cluster {
        containers = all_containers(m)
            .into_iter()
            .map(|(n, c)| container(n, c, now_unix))
            .collect();
        rolling = plan(m);
        steps = super::rolling::steps(m)
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
    }
    if containers.is_empty() {
        match crate::supervisor::read_status(&node.opts.data_dir)? {
            Some(s) if !node.opts.roles.is_all() => {
                for c in s.containers {
                    containers.push(container(here.clone(), c, now_unix));
                }
            }
            _ => containers.push(Container {
                node: here,
                role: node.opts.roles.to_string(),
                version: mover::software_version().to_string(),
                pid: std::process::id(),
                uptime_secs: node
                    .clock
                    .instant()
                    .saturating_duration_since(node.started)
                    .as_secs(),
                health: "ok".into(),
            }),
        }
    }
    Ok(Json(Status {
        containers,
        upgrade: rec,
        rolling,
        steps,
    }))
}
