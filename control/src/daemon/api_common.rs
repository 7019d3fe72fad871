//! What every API handler shares: its context and answer, the API's error and its JSON body,
//! the caller's token check, and reading a request's path, query and body. Below the handlers
//! and the router (`routes.rs`) both, so a handler file never imports the router that lists
//! it.

use super::{tokens, Node};
use crate::auth::{Privilege, TokenRole};
use crate::model::RelationshipId;
use crate::Error;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use std::time::Duration;

/// Why the API refused a request, carried from `ApiError` to the audit middleware
/// (`api_events::audit`) in the response's extensions.
#[derive(Debug, Clone)]
pub(super) struct Refusal(pub(super) String);

/// How long deleting or aborting waits for a job to reach a chunk boundary.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(30);

pub struct ApiError(pub(super) StatusCode, pub(super) String);

/// Every error's body (docs/api.md).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was refused and why.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.0,
            Json(ErrorBody {
                error: self.1.clone(),
            }),
        )
            .into_response();
        // For the audit log (api_events::audit), which records why a request was refused.
        r.extensions_mut().insert(Refusal(self.1));
        r
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let code = match &e {
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) | Error::Missing(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Peer { .. } => StatusCode::BAD_GATEWAY,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

pub(super) type Answer<T> = Result<T, ApiError>;
pub(super) type Ctx = State<Arc<Node>>;

/// The caller's role, if its token carries `p`.
pub(super) fn check(node: &Node, h: &HeaderMap, p: Privilege) -> Answer<TokenRole> {
    check_named(node, h, p).map(|(_, role)| role)
}

/// The caller's token name and role, if its token carries `p`.
pub(super) fn check_named(node: &Node, h: &HeaderMap, p: Privilege) -> Answer<(String, TokenRole)> {
    let (name, role) = caller_named(node, h)?;
    require(role, p)?;
    Ok((name, role))
}

/// 403 unless `role` carries `p`: for a caller already identified.
pub(super) fn require(role: TokenRole, p: Privilege) -> Answer<()> {
    if role.has(p) {
        return Ok(());
    }
    Err(ApiError(
        StatusCode::FORBIDDEN,
        format!(
            "the token's role ({}) lacks the {} privilege",
            role.name(),
            p.name()
        ),
    ))
}

pub(super) fn caller(node: &Node, h: &HeaderMap) -> Answer<TokenRole> {
    caller_named(node, h).map(|(_, role)| role)
}

/// The bearer token in `Authorization`, if the header is there and well formed.
pub(super) fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The caller's token name and role (401 without a token the node knows).
pub(super) fn caller_named(node: &Node, h: &HeaderMap) -> Answer<(String, TokenRole)> {
    let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, m.to_string());
    if h.get(axum::http::header::AUTHORIZATION).is_none() {
        return Err(unauthorized(
            "no token: send `Authorization: Bearer <token>`",
        ));
    }
    let token = bearer(h).ok_or_else(|| unauthorized("malformed Authorization header"))?;
    match tokens::identify(node, token)? {
        tokens::Identity::Known { name, role, .. } => Ok((name, role)),
        tokens::Identity::Unknown => Err(unauthorized("unknown token")),
        tokens::Identity::Unchecked => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the token is not one of this node's own, and the cluster's tokens cannot be checked while etcd is out of reach; use this node's own token (its <data-dir>/admin.token)".into(),
        )),
    }
}

pub(super) fn id(s: &str) -> Answer<RelationshipId> {
    Ok(RelationshipId::parse(s)?)
}

/// A query string as the handler's type, refused in the API's JSON error (axum's own refusal
/// is text, which the API description does not promise).
pub(super) fn query<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Answer<T> {
    q.map(|axum::extract::Query(t)| t)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))
}

pub(super) fn body<T: serde::de::DeserializeOwned>(b: &Bytes, what: &str) -> Answer<T> {
    serde_json::from_slice(b).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("{what}: {e}")))
}

/// A body that may be left out: none, or JSON null, is the default. Null too, as the API
/// description says (a client that always sends a body sends null for none; it was refused).
pub(super) fn optional_body<T: serde::de::DeserializeOwned + Default>(
    b: &Bytes,
    what: &str,
) -> Answer<T> {
    if b.is_empty() {
        return Ok(T::default());
    }
    Ok(body::<Option<T>>(b, what)?.unwrap_or_default())
}
