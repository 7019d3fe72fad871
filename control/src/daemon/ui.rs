//! The web UI (docs/api.md "Web UI"): a page of plain HTML, CSS and JavaScript embedded in the
//! binary and served at `/ui/`, which drives the REST API with the token the operator signs in
//! with. The assets themselves carry no secret, so they are served without a token; every API
//! call the page makes carries one. `GET /v1/whoami` tells the page what its token may do, so
//! it can disable what would be refused.

use super::api_common::{caller_named, Answer, Ctx};
use super::Node;
use crate::auth::Privilege;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

/// The page's assets: (name under `/ui/`, content type, bytes).
const ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("ui/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("ui/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("ui/favicon.svg"),
    ),
];

/// Only the page's own files may run or style it, and it may talk only to its own daemon: an
/// injected string in a relationship's path can never become script. No frames, no forms
/// posted elsewhere.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Every privilege, in the order `whoami` lists them.
const PRIVILEGES: [Privilege; 5] = [
    Privilege::SourceRead,
    Privilege::SourceWrite,
    Privilege::TargetRead,
    Privilege::TargetWrite,
    Privilege::Admin,
];

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(|| async { asset("index.html") }))
        .route(
            "/ui/{name}",
            get(|Path(name): Path<String>| async move { asset(&name) }),
        )
        .route("/v1/whoami", get(whoami))
}

fn asset(name: &str) -> Response {
    let Some((_, kind, bytes)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such file in the UI").into_response();
    };
    let mut res = bytes.into_response();
    let h = res.headers_mut();
    for (k, v) in [
        (header::CONTENT_TYPE, *kind),
        // The assets change with the binary; a stale page against a newer API helps nobody.
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    res
}

/// The caller's token as `GET /v1/whoami` shows it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct WhoAmI {
    name: String,
    /// admin, source-operator, target-operator or observer.
    role: &'static str,
    /// SOURCE_READ, SOURCE_WRITE, TARGET_READ, TARGET_WRITE, ADMIN: those the role carries.
    privileges: Vec<&'static str>,
}

/// `GET /v1/whoami` (any valid token): the token's name, role and privileges.
#[utoipa::path(
    get,
    path = "/v1/whoami",
    tag = "node",
    responses(
        (status = 200, description = "the caller's token", body = WhoAmI),
        super::api_schemas::AnyToken,
    )
)]
pub(super) async fn whoami(axum::extract::State(node): Ctx, h: HeaderMap) -> Answer<Json<WhoAmI>> {
    // Refuses a missing or unknown token with the API's usual 401 words.
    let (name, role) = caller_named(&node, &h)?;
    let privileges: Vec<&'static str> = PRIVILEGES
        .into_iter()
        .filter(|p| role.has(*p))
        .map(Privilege::name)
        .collect();
    Ok(Json(WhoAmI {
        name,
        role: role.name(),
        privileges,
    }))
}

#[cfg(test)]
mod tests {
    use super::ASSETS;

    #[test]
    fn every_file_the_page_names_is_served_and_nothing_comes_from_elsewhere() {
        let page = std::str::from_utf8(ASSETS[0].2).unwrap();
        let mut named = 0;
        for attr in ["src=\"", "href=\""] {
            for (_, rest) in page
                .match_indices(attr)
                .map(|(i, _)| page.split_at(i + attr.len()))
            {
                let target = &rest[..rest.find('"').unwrap()];
                if target.starts_with('#') {
                    continue;
                }
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == target),
                    "index.html names {target:?}, which /ui/ does not serve"
                );
                named += 1;
            }
        }
        assert!(named >= 3, "the page loads its script, style and icon");
        assert!(!page.contains("<script>") && !page.contains(" style="));
    }
}
