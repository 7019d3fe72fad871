//! Parts of the API description that the handlers name: the error sets of their responses,
//! and the schemas of types the API carries but defines elsewhere (blackout windows, policy
//! names, a scrub's origin). Below the handlers and the description that lists them both.

use super::api_common;
use crate::blackout::{ClockTime, Days};
use crate::policy::PolicyName;
use std::collections::BTreeMap;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{IntoResponses, PartialSchema, ToSchema};

/// What each error status means (docs/api.md); the body is always `ErrorBody`.
fn meaning(status: u16) -> &'static str {
    match status {
        400 => "the request is malformed or invalid (the message says which field and why)",
        401 => "no token, or a token the node does not know",
        403 => "the token's role lacks the privilege (the message names it)",
        404 => "no such relationship, policy, snapshot, drill or token",
        409 => "the request conflicts with the current state",
        502 => "the peer daemon could not be reached or refused",
        503 => "the token could not be checked now: not one of this node's own, and etcd is out of reach (or, behind an API container, its control container is down); or etcd, which the call needs, is out of reach or this node has no session with it: try again",
        _ => "anything else (the message says what)",
    }
}

fn errors(statuses: &[u16]) -> BTreeMap<String, RefOr<Response>> {
    let body = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(api_common::ErrorBody::name())))
        .build();
    // Every call that checks a token may meet one it cannot check now.
    let unavailable = statuses.contains(&401).then_some(503);
    statuses
        .iter()
        .copied()
        .chain(unavailable)
        .map(|s| {
            let r = ResponseBuilder::new()
                .description(meaning(s))
                .content("application/json", body.clone());
            (s.to_string(), r.into())
        })
        .collect()
}

/// The sets of error statuses the handlers answer, each named for what kind of call it is;
/// a handler's `responses(...)` lists its successes and one of these.
macro_rules! error_sets {
    ($($(#[$doc:meta])* $name:ident: $($status:literal),+;)+) => {
        $(
            $(#[$doc])*
            pub(super) struct $name;

            impl IntoResponses for $name {
                fn responses() -> BTreeMap<String, RefOr<Response>> {
                    errors(&[$($status),+])
                }
            }
        )+
    };
}

error_sets! {
    /// `/metrics`: no token.
    ServerError: 500;
    /// Any valid token, nothing to parse.
    AnyToken: 401, 500;
    /// A privilege, nothing to parse.
    Privileged: 401, 403, 500;
    /// Any valid token and a query.
    TokenInput: 400, 401, 500;
    /// A privilege and something to check: a body, a query, or a drill id (an unknown drill
    /// is 400 too, which the CLI's exit code for it has always said).
    PrivilegedInput: 400, 401, 403, 500;
    /// Reads one thing by its name or id.
    Lookup: 400, 401, 403, 404, 500;
    /// Changes one thing, which its state may not allow.
    Change: 400, 401, 403, 404, 409, 500;
    /// Changes one thing and asks the peer.
    PeerChange: 400, 401, 403, 404, 409, 502, 500;
    /// Creates a thing whose name may be taken.
    Create: 400, 401, 403, 409, 500;
    /// Creates a relationship: asks the target.
    PeerCreate: 400, 401, 403, 409, 502, 500;
    /// Deletes a token by its name (and an optional scope).
    Removal: 400, 401, 403, 404, 409, 500;
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

/// Days serialize as short names, Monday first; reading also takes full names in any case.
impl PartialSchema for Days {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(string().examples(["mon", "sat"]))
            .min_items(Some(1))
            .max_items(Some(7))
            .description(Some("days of the week: mon, tue, wed, thu, fri, sat, sun"))
            .into()
    }
}

impl ToSchema for Days {}

impl PartialSchema for ClockTime {
    fn schema() -> RefOr<Schema> {
        string()
            .description(Some("time of day on a 24-hour clock, HH:MM"))
            .examples(["22:00"])
            .into()
    }
}

impl ToSchema for ClockTime {}

impl PartialSchema for PolicyName {
    fn schema() -> RefOr<Schema> {
        string()
            .description(Some(
                "1-64 letters, digits, '-' or '.', not starting with '.'",
            ))
            .pattern(Some("^[A-Za-z0-9-][A-Za-z0-9.-]{0,63}$"))
            .into()
    }
}

impl ToSchema for PolicyName {}

/// What last verified a target (`mover::receiver::scrub::ScrubBy`, a data-plane type).
pub(super) fn scrub_by() -> ObjectBuilder {
    string().enum_values(Some(["scrub", "job"]))
}
