//! What two daemons say to each other, over mutual TLS (peer_wire): the source proposes a
//! relationship, polls whether the target authorized it, asks for a one-time data-plane ticket
//! per session, reports job progress, and propagates edits and deletes. Every request after the
//! proposal must come from the certificate pinned when the proposal arrived. A request that
//! fails is answered with `PeerAnswer::refusal`, which keeps the node's own troubles (a row
//! it cannot read) from the peer.

use crate::model::{Attempt, RelationshipId, Spec};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PeerRequest {
    Propose {
        id: RelationshipId,
        spec: Spec,
        software: String,
    },
    /// The source's periodic poll. It carries the source's own view, so a target that missed
    /// a report or an edit (restarting, a network blip) catches up within one poll.
    State {
        id: RelationshipId,
        #[serde(default)]
        source: Option<SourceState>,
    },
    /// A one-time data-plane session for the relationship. The session's frames are sealed
    /// with the secret both ends derive from this request's TLS connection, unless the source
    /// asks for a session in clear (`plaintext`, which the target grants only if it is set to
    /// run in clear too).
    Ticket {
        id: RelationshipId,
        #[serde(default)]
        plaintext: bool,
        /// The source's epoch of the relationship (`Relationship::epoch`).
        #[serde(default)]
        epoch: u64,
        /// The source's release (`mover::compat` decides whether the target serves it).
        #[serde(default)]
        software: Option<String>,
        /// The term its source node holds the relationship at (`owners::term_here`; 0 outside
        /// a cluster). The target refuses a term below the highest it has seen at this epoch.
        #[serde(default)]
        term: u64,
        /// The source connects each worker where the answer's `write_places` say (an older
        /// source does not: the target then names none).
        #[serde(default)]
        write_places: bool,
    },
    Report {
        id: RelationshipId,
        running: bool,
        job: Option<JobView>,
        last_attempt: Option<Attempt>,
        recovery_point_ns: Option<i64>,
        #[serde(default)]
        epoch: u64,
    },
    Update {
        id: RelationshipId,
        spec: Spec,
    },
    Delete {
        id: RelationshipId,
    },
    /// After a failover (make-writable on the target): the source asks to replicate again.
    /// The target makes the directory read-only again and checks it against its last recovery
    /// point; the next job sends what differs and brings the target back to the source's
    /// state. `recovery_point_ns` is the last recovery point the source recorded.
    Reconnect {
        id: RelationshipId,
        recovery_point_ns: Option<i64>,
    },
    /// The job of a policy snapshot committed `recovery_point`: the target keeps it read-only
    /// under its `.snapshot` until the snapshot's target expiry. Answered `Ok` once kept.
    KeepSnapshot {
        id: RelationshipId,
        epoch: u64,
        snapshot: crate::policy::Snapshot,
        recovery_point: String,
    },
    /// A step of failback (`mover relationship reverse`, see `crate::reverse`).
    Reverse(crate::reverse::ReverseAsk),
}

/// What the source knows of the relationship: its settings, its job and the last outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceState {
    pub spec: Spec,
    pub running: bool,
    pub job: Option<JobView>,
    pub last_attempt: Option<Attempt>,
    pub recovery_point_ns: Option<i64>,
    /// The source's release (the target checks it at every poll).
    #[serde(default)]
    pub software: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum PeerAnswer {
    Ok,
    State {
        authorized: bool,
        ended: bool,
        /// The target's last scrub found it differs from its recovery point: the source runs
        /// a job that compares every entry and repairs it (with events, no source change
        /// would start one).
        #[serde(default)]
        scrub_failed: bool,
        /// The target's release (the source checks it at every poll).
        #[serde(default)]
        software: Option<String>,
    },
    /// Data-plane receiver port on the target's address and a one-time session id (hex).
    Ticket {
        port: u16,
        ticket: String,
        /// Other target nodes that take a share of the session's workers (the target's
        /// `--spread-writes`): worker `i` of `n` connects to the place
        /// `mover::wire::message::write_place(i, n, write_places.len() + 1)` falls to, place 0
        /// being the target itself.
        #[serde(default)]
        write_places: Vec<std::net::SocketAddr>,
    },
    NotFound,
    Refused {
        message: String,
    },
    /// The target is protected again and replicates. `recovery_point_ns`: the last recovery
    /// point it holds (the common point when it equals the source's); `difference`: the first
    /// difference of the directory from it (what the next job reverts), if any.
    Reconnected {
        recovery_point_ns: Option<i64>,
        difference: Option<String>,
        /// The relationship's epoch from now on, on both sides.
        epoch: u64,
    },
    /// A step of failback done (`crate::reverse`).
    Reversed(crate::reverse::ReverseReply),
}

impl PeerAnswer {
    /// A refusal that says `message` to the peer.
    pub(crate) fn refused(message: String) -> PeerAnswer {
        PeerAnswer::Refused { message }
    }

    /// A refusal of a peer's request that failed with `e`. A stored row this release cannot
    /// read, or the state database failing, is not said to the peer: the text may quote what the
    /// store holds, and the peer's certificate may not be checked yet. The operator hears of it
    /// from the node (its log at start and in the scheduler, `mover_relationships{state=
    /// "unreadable"}`), so here it is logged at debug level only: a source polls every few
    /// seconds.
    pub(crate) fn refusal(e: crate::Error) -> PeerAnswer {
        match e {
            crate::Error::Unreadable(_) | crate::Error::Db(_) => {
                tracing::debug!("a peer's request refused: {e}");
                PeerAnswer::refused(
                    "this node cannot read its stored relationships now; its operator's log \
                     says why"
                        .into(),
                )
            }
            e => PeerAnswer::refused(e.to_string()),
        }
    }
}

/// A running job's progress, as shown by `mover status` on both nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobView {
    pub paused: bool,
    /// The session is still walking the source and learning what the target needs: totals and
    /// percentages are not known yet (a resumed job shows what earlier sessions sent).
    #[serde(default)]
    pub scanning: bool,
    pub run_seconds: f64,
    pub files_done: u64,
    pub files_total: u64,
    pub files_remaining: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub bytes_remaining: u64,
    pub percent_files: f64,
    pub percent_bytes: f64,
    pub percent: f64,
    pub throughput_bytes_per_sec: f64,
}

impl JobView {
    /// From the data plane's counters; a total of 0 counts as done (nothing to send).
    pub fn from_counts(
        paused: bool,
        run_seconds: f64,
        files: (u64, u64),
        bytes: (u64, u64),
    ) -> JobView {
        let (fd, ft) = (files.0.min(files.1), files.1);
        let (bd, bt) = (bytes.0.min(bytes.1), bytes.1);
        let pct = |d: u64, t: u64| {
            if t == 0 {
                0.0
            } else {
                d as f64 * 100.0 / t as f64
            }
        };
        let (pf, pb) = (pct(fd, ft), pct(bd, bt));
        JobView {
            paused,
            scanning: false,
            run_seconds,
            files_done: fd,
            files_total: ft,
            files_remaining: ft - fd,
            bytes_done: bd,
            bytes_total: bt,
            bytes_remaining: bt - bd,
            percent_files: pf,
            percent_bytes: pb,
            percent: (pf + pb) / 2.0,
            throughput_bytes_per_sec: if run_seconds > 0.0 {
                bd as f64 / run_seconds
            } else {
                0.0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_view_percentages_mix_files_and_bytes_and_never_exceed_totals() {
        let v = JobView::from_counts(false, 2.0, (30, 100), (50, 100));
        assert_eq!(
            (v.percent_files, v.percent_bytes, v.percent),
            (30.0, 50.0, 40.0)
        );
        assert_eq!((v.files_remaining, v.bytes_remaining), (70, 50));
        assert_eq!(v.throughput_bytes_per_sec, 25.0);
        let v = JobView::from_counts(true, 0.0, (5, 3), (0, 0));
        assert_eq!(
            (v.files_done, v.files_remaining, v.percent_bytes),
            (3, 0, 0.0)
        );
    }

    #[test]
    fn requests_are_tagged_json() {
        let r = PeerRequest::State {
            id: RelationshipId::parse(&"ab".repeat(16)).unwrap(),
            source: None,
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains(r#""op":"state""#), "{j}");
        let a: PeerAnswer =
            serde_json::from_str(r#"{"answer":"ticket","port":5,"ticket":"00ff"}"#).unwrap();
        assert!(matches!(a, PeerAnswer::Ticket { port: 5, .. }));
        // A poll without the source's view (an older source) still parses.
        let old: PeerRequest =
            serde_json::from_str(&format!(r#"{{"op":"state","id":"{}"}}"#, "ab".repeat(16)))
                .unwrap();
        assert!(matches!(old, PeerRequest::State { source: None, .. }));
    }

    #[test]
    fn peer_messages_with_an_id_that_is_not_32_lowercase_hex_are_refused() {
        let good = "ab".repeat(16);
        let msg = |id: &str| serde_json::json!({"op": "delete", "id": id}).to_string();
        assert!(serde_json::from_str::<PeerRequest>(&msg(&good)).is_ok());
        for bad in [
            "/srv/data".to_string(),
            "../../etc".to_string(),
            "AB".repeat(16),
            "ab".repeat(15),
            format!("{}\n", "ab".repeat(16)),
            "zz".repeat(16),
            String::new(),
        ] {
            assert!(
                serde_json::from_str::<PeerRequest>(&msg(&bad)).is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
