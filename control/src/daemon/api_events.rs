//! The REST API of events and the audit log (docs/api.md "Events and audit"), and the
//! middleware that writes the audit log. Events take either read privilege and show the
//! relationships of the roles the token may read (and those of no relationship); the audit
//! log takes ADMIN: it names every token and what each did.

use super::api_common::{caller, check, Answer, ApiError, Ctx};
use super::Node;
use crate::auth::Privilege;
use crate::events::{
    truncated, AuditEntry, AuditId, Caller, Event, EventId, NewAudit, DEFAULT_PAGE, MAX_PAGE,
    MAX_REASON,
};
use crate::model::RelationshipId;
use crate::store::Visible;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

/// A matched route pattern or unmatched path is kept up to this many bytes.
const MAX_ROUTE: usize = 256;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/events", get(events))
        .route("/v1/audit", get(audit_log))
}

/// `?since=ID&limit=N`, both optional; read as text so a bad value gets the API's JSON error.
#[derive(serde::Deserialize)]
pub(super) struct Page {
    since: Option<String>,
    limit: Option<String>,
}

impl Page {
    /// (since, limit): `limit` defaults to DEFAULT_PAGE and is capped at MAX_PAGE.
    fn read(&self) -> Answer<(Option<i64>, usize)> {
        let bad = |what: &str, v: &str| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("{what} must be a non-negative integer, not {v:?}"),
            )
        };
        let since = match &self.since {
            None => None,
            Some(s) => Some(
                s.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| bad("since", s))?,
            ),
        };
        let limit = match &self.limit {
            None => DEFAULT_PAGE,
            Some(s) => s.parse::<usize>().map_err(|_| bad("limit", s))?,
        };
        Ok((since, limit.clamp(1, MAX_PAGE)))
    }
}

/// What an operator must notice on this node, oldest first (docs/api.md "Events").
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(
        ("since" = Option<i64>, Query, description = "the first events after this id; without it, the newest"),
        ("limit" = Option<u32>, Query, description = "at most this many (default 100, at most 1000)"),
    ),
    responses(
        (status = 200, description = "events, oldest first", body = Vec<Event>),
        super::api_schemas::PrivilegedInput,
    )
)]
pub(super) async fn events(
    State(node): Ctx,
    h: HeaderMap,
    p: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<Vec<Event>>> {
    let role = caller(&node, &h)?;
    let v = Visible {
        source: role.has(Privilege::SourceRead),
        target: role.has(Privilege::TargetRead),
    };
    if !v.source && !v.target {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "the token's role ({}) lacks SOURCE_READ and TARGET_READ",
                role.name()
            ),
        ));
    }
    let (since, limit) = super::api_common::query(p)?.read()?;
    Ok(Json(node.store().events(since.map(EventId), limit, v)?))
}

/// Every mutating API call and its answer, oldest first (docs/api.md "Audit log").
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "events",
    params(
        ("since" = Option<i64>, Query, description = "the first entries after this id; without it, the newest"),
        ("limit" = Option<u32>, Query, description = "at most this many (default 100, at most 1000)"),
    ),
    responses(
        (status = 200, description = "audit entries, oldest first", body = Vec<AuditEntry>),
        super::api_schemas::PrivilegedInput,
    )
)]
pub(super) async fn audit_log(
    State(node): Ctx,
    h: HeaderMap,
    p: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Answer<Json<Vec<AuditEntry>>> {
    check(&node, &h, Privilege::Admin)?;
    let (since, limit) = super::api_common::query(p)?.read()?;
    Ok(Json(node.store().audit(since.map(AuditId), limit)?))
}

/// Who the request's `Authorization` header names.
fn who(node: &Node, h: &HeaderMap) -> Caller {
    let Some(token) = super::api_common::bearer(h) else {
        return Caller::NoToken;
    };
    match super::tokens::identify(node, token) {
        Ok(super::tokens::Identity::Known { name, .. }) => Caller::Token(name),
        Ok(super::tokens::Identity::Unknown | super::tokens::Identity::Unchecked) => {
            Caller::UnknownToken
        }
        Err(e) => {
            tracing::error!("audit: looking up the token: {e}");
            Caller::UnknownToken
        }
    }
}

/// The relationship a path names where its route has `{id}` or `{relationship}`.
fn relationship_in(route: &str, path: &str) -> Option<RelationshipId> {
    route
        .split('/')
        .zip(path.split('/'))
        .find(|(pattern, _)| matches!(*pattern, "{id}" | "{relationship}"))
        .and_then(|(_, seg)| RelationshipId::parse(seg).ok())
}

/// Records every mutating request (POST, PATCH, PUT, DELETE) with its answer, refusals
/// (401, 403) included: the token is looked up here, before the handler, since a request may
/// delete the very token it carries.
pub(super) async fn audit(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    if !matches!(
        *req.method(),
        Method::POST | Method::PATCH | Method::PUT | Method::DELETE
    ) {
        return next.run(req).await;
    }
    let at_ns = node.clock.now_ns();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str())
        .unwrap_or_else(|| req.uri().path());
    let route = truncated(route, MAX_ROUTE);
    let relationship = relationship_in(&route, req.uri().path());
    let caller = who(&node, req.headers());
    let resp = next.run(req).await;
    let reason = resp
        .extensions()
        .get::<super::api_common::Refusal>()
        .map(|r| truncated(&r.0, MAX_REASON));
    let entry = NewAudit {
        caller,
        method,
        route,
        relationship,
        status: resp.status().as_u16(),
        reason,
    };
    if let Err(e) = node.store().insert_audit(at_ns, &entry) {
        tracing::error!(route = %entry.route, "recording an audit entry: {e}");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relationship_is_read_from_the_segment_its_route_names() {
        let id = "ab".repeat(16);
        let got = relationship_in(
            "/v1/replication/source-relationships/{id}/abort",
            &format!("/v1/replication/source-relationships/{id}/abort"),
        );
        assert_eq!(got.unwrap().as_str(), id);
        let got = relationship_in(
            "/v1/snapshots/{relationship}/{id}",
            &format!("/v1/snapshots/{id}/7"),
        );
        assert_eq!(got.unwrap().as_str(), id);
        assert!(relationship_in("/v1/tokens/{name}", "/v1/tokens/ops").is_none());
        assert!(relationship_in(
            "/v1/replication/source-relationships/{id}",
            "/v1/replication/source-relationships/nothex"
        )
        .is_none());
    }

    #[test]
    fn pages_default_cap_and_refuse_what_is_not_a_number() {
        let p = |since: Option<&str>, limit: Option<&str>| {
            Page {
                since: since.map(String::from),
                limit: limit.map(String::from),
            }
            .read()
            .map_err(|e| e.1)
        };
        assert_eq!(p(None, None).unwrap(), (None, DEFAULT_PAGE));
        assert_eq!(p(Some("7"), Some("999999")).unwrap(), (Some(7), MAX_PAGE));
        assert_eq!(p(None, Some("0")).unwrap(), (None, 1));
        assert!(p(Some("-1"), None).unwrap_err().contains("since"));
        assert!(p(None, Some("x")).unwrap_err().contains("limit"));
    }
}
