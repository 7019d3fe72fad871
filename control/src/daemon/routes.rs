//! The API's routes: every handler file's operations, the UI and the API description under
//! one router, behind the audit log and the body limit. The top of the API: it lists the
//! handlers, and none of them names it.

use super::{
    api, api_containers, api_drain, api_events, api_rolling, api_snapshots, api_unreadable,
    openapi, reverse, self_upgrade, ui, upgrade, Node,
};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// Largest request body (a spec with 10 windows and 1024 id mappings is far below).
const MAX_BODY: usize = 256 * 1024;

pub fn router(node: Arc<Node>) -> Router {
    let src = "/v1/replication/source-relationships";
    let tgt = "/v1/replication/target-relationships";
    Router::new()
        .route("/v1/node", get(api::node_info))
        .route("/v1/tokens", get(api::list_tokens).post(api::create_token))
        .route(
            "/v1/tokens/{name}",
            axum::routing::delete(api::delete_token),
        )
        .route("/v1/replication/status", get(api::status_all))
        .route(src, get(api::list_source).post(api::create_source))
        .route(
            &format!("{src}/{{id}}"),
            get(api::get_source)
                .patch(api::modify_source)
                .delete(api::delete_source),
        )
        .route(&format!("{src}/{{id}}/replicate"), post(api::replicate))
        .route(&format!("{src}/{{id}}/abort"), post(api::abort))
        .route(&format!("{src}/{{id}}/reconnect"), post(api::reconnect))
        .route(&format!("{src}/{{id}}/reverse"), post(reverse::from_source))
        .route(tgt, get(api::list_target))
        .route(
            &format!("{tgt}/{{id}}"),
            get(api::get_target).delete(api::delete_target),
        )
        .route(&format!("{tgt}/{{id}}/authorize"), post(api::authorize))
        .route(
            &format!("{tgt}/{{id}}/make-writable"),
            post(api::make_writable),
        )
        .route(&format!("{tgt}/{{id}}/reverse"), post(reverse::from_target))
        .route(&format!("{tgt}/{{id}}/drills"), post(api::start_drill))
        .route("/v1/replication/drills", get(api::list_drills))
        .route(
            "/v1/replication/drills/{drill}",
            axum::routing::delete(api::release_drill),
        )
        .merge(api_snapshots::routes())
        .merge(api_events::routes())
        .merge(api_unreadable::routes())
        .merge(api_containers::routes())
        .merge(ui::routes())
        .route("/v1/upgrade/check", get(upgrade::check))
        .route("/v1/cluster", get(api::cluster))
        .route("/v1/cluster/nodes/{name}/drain", post(api_drain::drain))
        .route("/v1/cluster/nodes/{name}/undrain", post(api_drain::undrain))
        .route("/v1/upgrade/start", post(self_upgrade::start))
        .route("/v1/upgrade/rolling", post(api_rolling::start_api))
        .route("/v1/upgrade/status", get(api_rolling::status))
        .route("/metrics", get(api::metrics))
        .merge(openapi::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            node.clone(),
            api_events::audit,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(node)
}
