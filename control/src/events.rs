//! What an operator must notice (events) and who changed what (the audit log): the records
//! `GET /v1/events` and `GET /v1/audit` read (docs/api.md "Events and audit"). Both live in
//! the node's SQLite store (store/events.rs), each bounded by the constants here, so neither
//! grows without bound however long a node runs or however hard its API is hammered.

use crate::model::{RelationshipId, Role};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Events a node keeps: the newest this many (older ones are pruned at each insert). Days of
/// a busy node's failures and transitions; an operator following them reads them in minutes.
pub const MAX_EVENTS: usize = 10_000;
/// Audit entries a node keeps at most (the oldest pruned at each insert).
pub const MAX_AUDIT_ENTRIES: usize = 100_000;
/// Audit entries older than this are pruned (at each insert).
pub const AUDIT_MAX_AGE: Duration = Duration::from_secs(90 * 24 * 3600);
/// Entries one `GET /v1/events` or `GET /v1/audit` returns at most, and without `limit`.
pub const MAX_PAGE: usize = 1_000;
pub const DEFAULT_PAGE: usize = 100;
/// An event's message is kept up to this many bytes (a job's error can quote many paths).
pub const MAX_MESSAGE: usize = 2_048;
/// A refusal's reason is kept up to this many bytes (an error message quoting a large body
/// must not make every audit row large).
pub const MAX_REASON: usize = 1_024;

/// An event's place in the node's sequence: strictly increasing, never reused (the table is
/// AUTOINCREMENT, so pruning the newest ones could not hand their ids out again either).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct EventId(pub i64);

/// An audit entry's place in the node's sequence (as `EventId`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct AuditId(pub i64);

/// What happened. Stored and sent by its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Target: a source proposed a relationship; it waits for an operator to authorize it.
    AuthorizationRequested,
    /// Target: an operator authorized a proposal; the directory is read-only from now on.
    Authorized,
    /// Source: a session of a job failed and another one follows after a pause.
    JobRetried,
    /// Source: a job gave up (out of attempts, or an error another session would not fix).
    JobFailed,
    /// Source: a job committed a recovery point after the previous job had failed.
    JobRecovered,
    /// Target: the directory was made writable (failover); the relationship ended.
    MadeWritable,
    /// Source: the target stopped answering polls. Target: the source of an authorized
    /// relationship has not reached this node for `daemon::DISCONNECTED_AFTER`. Logged once,
    /// at the transition.
    PeerUnreachable,
    /// Either side: the peer is heard from again after being unreachable.
    PeerReachable,
    /// Either side: the peer runs a release this one may not replicate with (at the first
    /// exchange that says so); no job runs until one side is upgraded.
    PeerIncompatible,
    /// Source: a blackout window opened; no job starts and a running one pauses.
    BlackoutEntered,
    /// Source: the blackout window closed; jobs may run again.
    BlackoutLeft,
    /// Either side: the relationship was deleted on this node.
    RelationshipDeleted,
    /// Source: the target ended the relationship (deleted it there, or made it writable).
    RelationshipEnded,
    /// Source (cluster): this node took the relationship over from a node down for
    /// `owners::TAKEOVER_AFTER`; its jobs run here now.
    RelationshipTakenOver,
    /// Source (cluster): another node took the relationship over while this one was down;
    /// this node forgot its copy.
    RelationshipMoved,
    /// Either side: the relationship was reversed (failback); the event's role is this
    /// node's new one.
    RelationshipReversed,
    /// Node (cluster): an operator drained a node (from this node's API): no new shards or
    /// takeovers go to it.
    NodeDrained,
    /// Node (cluster): an operator put a drained node back in service (from this node's API).
    NodeUndrained,
}

impl EventKind {
    pub const ALL: [EventKind; 18] = [
        EventKind::AuthorizationRequested,
        EventKind::Authorized,
        EventKind::JobRetried,
        EventKind::JobFailed,
        EventKind::JobRecovered,
        EventKind::MadeWritable,
        EventKind::PeerUnreachable,
        EventKind::PeerReachable,
        EventKind::PeerIncompatible,
        EventKind::BlackoutEntered,
        EventKind::BlackoutLeft,
        EventKind::RelationshipDeleted,
        EventKind::RelationshipEnded,
        EventKind::RelationshipTakenOver,
        EventKind::RelationshipMoved,
        EventKind::RelationshipReversed,
        EventKind::NodeDrained,
        EventKind::NodeUndrained,
    ];

    /// The name stored in the database and sent in JSON.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::AuthorizationRequested => "authorization_requested",
            EventKind::Authorized => "authorized",
            EventKind::JobRetried => "job_retried",
            EventKind::JobFailed => "job_failed",
            EventKind::JobRecovered => "job_recovered",
            EventKind::MadeWritable => "made_writable",
            EventKind::PeerUnreachable => "peer_unreachable",
            EventKind::PeerReachable => "peer_reachable",
            EventKind::PeerIncompatible => "peer_incompatible",
            EventKind::BlackoutEntered => "blackout_entered",
            EventKind::BlackoutLeft => "blackout_left",
            EventKind::RelationshipDeleted => "relationship_deleted",
            EventKind::RelationshipEnded => "relationship_ended",
            EventKind::RelationshipTakenOver => "relationship_taken_over",
            EventKind::RelationshipMoved => "relationship_moved",
            EventKind::RelationshipReversed => "relationship_reversed",
            EventKind::NodeDrained => "node_drained",
            EventKind::NodeUndrained => "node_undrained",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// One event as stored and sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub id: EventId,
    /// RFC 3339, UTC.
    pub time: String,
    /// The same instant in seconds since the Unix epoch.
    pub unix: i64,
    #[serde(flatten)]
    #[schema(inline)]
    pub what: NewEvent,
}

/// What an event says: what is recorded, before it has an id and a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewEvent {
    pub kind: EventKind,
    /// The relationship it is about, if any.
    #[schema(value_type = Option<String>)]
    pub relationship: Option<RelationshipId>,
    /// This node's role in that relationship.
    pub role: Option<Role>,
    pub message: String,
}

/// Who made an audited request, as its `Authorization` header showed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Caller {
    /// No `Authorization: Bearer` header (or a malformed one).
    NoToken,
    /// A bearer token this node does not know.
    UnknownToken,
    /// The named token.
    Token(String),
}

/// One audit entry as stored and sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: AuditId,
    /// RFC 3339, UTC: when the request arrived.
    pub time: String,
    pub unix: i64,
    #[serde(flatten)]
    #[schema(inline)]
    pub what: NewAudit,
}

/// What an audit entry records of a request, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewAudit {
    pub caller: Caller,
    /// POST, PATCH, PUT or DELETE.
    pub method: String,
    /// The matched route pattern, e.g. `/v1/replication/source-relationships/{id}`.
    pub route: String,
    /// The relationship the path names, if it names a valid one.
    #[schema(value_type = Option<String>)]
    pub relationship: Option<RelationshipId>,
    /// The HTTP status answered.
    pub status: u16,
    /// Why it was refused (the API's error message), for error statuses.
    pub reason: Option<String>,
}

/// RFC 3339 (UTC, milliseconds) and Unix seconds of a stored time.
pub fn times(at_ns: i64) -> (String, i64) {
    let t = chrono::DateTime::from_timestamp_nanos(at_ns);
    (
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        t.timestamp(),
    )
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncated(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_named_as_serde_names_them() {
        for k in EventKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
            assert_eq!(EventKind::parse(k.name()), Some(k));
        }
        assert_eq!(EventKind::parse("nope"), None);
    }

    #[test]
    fn records_are_flat_json_objects_that_read_back() {
        let (time, unix) = times(0);
        let e = Event {
            id: EventId(3),
            time: time.clone(),
            unix,
            what: NewEvent {
                kind: EventKind::JobFailed,
                relationship: Some(RelationshipId::parse(&"ab".repeat(16)).unwrap()),
                role: Some(Role::Source),
                message: "job failed: boom".into(),
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 3, "time": "1970-01-01T00:00:00.000Z", "unix": 0,
                "kind": "job_failed", "relationship": "ab".repeat(16), "role": "source",
                "message": "job failed: boom"})
        );
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
        let a = AuditEntry {
            id: AuditId(1),
            time,
            unix,
            what: NewAudit {
                caller: Caller::Token("ops".into()),
                method: "POST".into(),
                route: "/v1/tokens".into(),
                relationship: None,
                status: 403,
                reason: Some("lacks ADMIN".into()),
            },
        };
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(
            v["caller"],
            serde_json::json!({"kind": "token", "name": "ops"})
        );
        assert_eq!(v["status"], 403);
        assert_eq!(serde_json::from_value::<AuditEntry>(v).unwrap(), a);
        assert_eq!(
            serde_json::to_value(Caller::NoToken).unwrap(),
            serde_json::json!({"kind": "no_token"})
        );
    }

    #[test]
    fn times_are_rfc3339_utc_and_reasons_are_cut_on_a_character_boundary() {
        assert_eq!(
            times(1_500_000_000_000),
            ("1970-01-01T00:25:00.000Z".to_string(), 1500)
        );
        assert_eq!(truncated("aé", 2), "a");
        assert_eq!(truncated("abc", 10), "abc");
    }
}
