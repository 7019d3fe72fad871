//! The API's OpenAPI description, built from the handlers' `#[utoipa::path]` attributes and
//! the `ToSchema` derives of what they read and answer, so it cannot drift from the code
//! unnoticed. Served without a token at `GET /v1/openapi.json` (it holds no secret, and a
//! client needs it before it has a token).

use super::{
    api, api_common, api_containers, api_drain, api_events, api_rolling, api_snapshots,
    api_unreadable, reverse, self_upgrade, ui, upgrade, Node,
};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub(super) const PATH: &str = "/v1/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mover REST API",
        description = "The control plane of a mover node (docs/api.md). Every request but \
                       GET /metrics, GET /v1/health and GET /v1/openapi.json carries `Authorization: Bearer \
                       <token>`; errors are `{\"error\": string}`."
    ),
    paths(
        api::node_info,
        api::list_tokens,
        api::create_token,
        api::delete_token,
        api::status_all,
        api::list_source,
        api::create_source,
        api::get_source,
        api::modify_source,
        api::delete_source,
        api::replicate,
        api::abort,
        api::reconnect,
        reverse::from_source,
        api::list_target,
        api::get_target,
        api::delete_target,
        api::authorize,
        api::make_writable,
        reverse::from_target,
        api::start_drill,
        api::list_drills,
        api::release_drill,
        api_snapshots::list,
        api_snapshots::create,
        api_snapshots::show,
        api_snapshots::modify,
        api_snapshots::delete,
        api_snapshots::run,
        api_snapshots::list_snapshots,
        api_snapshots::release,
        upgrade::check,
        self_upgrade::start,
        api_rolling::start_api,
        api_rolling::status,
        api::metrics,
        api::cluster,
        api_drain::drain,
        api_drain::undrain,
        api_containers::health,
        api_containers::containers,
        api_events::events,
        api_events::audit_log,
        api_unreadable::list,
        api_unreadable::forget,
        ui::whoami,
        openapi_json,
    ),
    components(schemas(api_common::ErrorBody)),
    modifiers(&Bearer),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// The token scheme every operation but the two open ones requires.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "a token from `POST /v1/tokens` or <data-dir>/admin.token",
                        ))
                        .build(),
                ),
            );
    }
}

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new().route(PATH, get(openapi_json))
}

/// This description.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    security(()),
    responses((status = 200, description = "the OpenAPI description of this API", body = Object))
)]
pub(super) async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files whose router functions register the API's routes, with where each function's
    /// route list starts.
    /// (`ui.rs` is counted apart: its page and assets are not API operations, `/v1/whoami` is.)
    const ROUTERS: [(&str, &str); 6] = [
        (include_str!("routes.rs"), "pub fn router("),
        (include_str!("api_containers.rs"), "pub(super) fn routes("),
        (include_str!("api_snapshots.rs"), "pub(super) fn routes("),
        (include_str!("api_events.rs"), "pub(super) fn routes("),
        (include_str!("api_unreadable.rs"), "pub(super) fn routes("),
        (include_str!("openapi.rs"), "pub(super) fn routes("),
    ];
    const METHODS: [&str; 5] = ["get(", "post(", "put(", "patch(", "delete("];

    /// Method handlers registered in the router function starting at `start` in `src`.
    fn registrations(src: &str, start: &str) -> usize {
        let from = src.find(start).unwrap_or_else(|| panic!("no {start}"));
        let body = &src[from..];
        let body = &body[..body.find("\n}\n").unwrap_or(body.len())];
        METHODS.iter().map(|m| body.matches(m).count()).sum()
    }

    fn operations() -> Vec<(String, String)> {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                ops.push((method.clone(), path.clone()));
            }
        }
        ops
    }

    #[test]
    fn every_routed_handler_is_in_the_description() {
        // The UI's three page routes are not operations; its `/v1/whoami` is.
        let ui = registrations(include_str!("ui.rs"), "pub(super) fn routes(") - 3;
        let routed: usize = ROUTERS
            .iter()
            .map(|(s, f)| registrations(s, f))
            .sum::<usize>()
            + ui;
        let ops = operations();
        assert_eq!(
            routed,
            ops.len(),
            "the routers register {routed} handlers, the description has {}: add \
             #[utoipa::path] to the new handler and list it in ApiDoc's paths; documented: {ops:?}",
            ops.len()
        );
    }

    #[test]
    fn every_operation_documents_its_errors_and_token() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (method, path) in operations() {
            let op = &doc["paths"][&path][&method];
            let responses = op["responses"].as_object().unwrap();
            let open = op["security"] == serde_json::json!([{}]);
            assert_eq!(
                open,
                path == "/metrics" || path == PATH || path == "/v1/health",
                "{method} {path}: only /metrics, /v1/health and the description need no token"
            );
            if !open {
                assert!(responses.contains_key("401"), "{method} {path}: no 401");
                assert!(responses.contains_key("500"), "{method} {path}: no 500");
            }
            let params = op["parameters"].as_array().map_or(0, Vec::len);
            assert!(
                path.matches('{').count() <= params,
                "{method} {path}: a path parameter is not described"
            );
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
