//! Failback (`mover relationship reverse`): the relationship's target becomes its source and the
//! source a read-only target, going back to the last recovery point both hold. What the two
//! daemons say to each other for it, and the pure rules both apply: whose epoch may take part,
//! the epoch after, the spec seen from the other end. The daemon's side is
//! `daemon/reverse.rs`.
//!
//! Steps, whichever node the operator runs it on (the old target `T`, the old source `S`):
//! 1. `T` is released (made writable: an unfinished job reverted to its last recovery point,
//!    the protection lifted) and names that recovery point (`Release` when `S` drives).
//! 2. `S` checks that its manifest names the same recovery point (the common point), stops
//!    replicating, moves what it changed since aside (listed in a report), protects its
//!    directory and becomes the target (`BecomeTarget` when `T` drives).
//! 3. `T` becomes the source and starts a job, which sends only what differs (`Commit` when `S`
//!    drives).
//!
//! Every step carries the sender's epoch and is refused as split brain when the epochs do not
//! agree; both sides end at one epoch above the larger of the two.

use crate::model::{IdMap, RelationshipId, Spec};
use serde::{Deserialize, Serialize};

/// A step of a reverse, from one daemon to the other (`PeerRequest::Reverse`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum ReverseAsk {
    /// To the target, from its source: stop taking jobs and name your last recovery point.
    Release { id: RelationshipId, epoch: u64 },
    /// To the source, from its target (released already, holding `recovery_point`): go back
    /// to that point and become the target (at the next epoch above both).
    BecomeTarget {
        id: RelationshipId,
        epoch: u64,
        /// The target's last recovery point (32 hex digits).
        recovery_point: String,
    },
    /// To the released target, from its source that is now a target: become the source at
    /// `epoch`, replicating to the address this request came from, port `port`.
    Commit {
        id: RelationshipId,
        epoch: u64,
        port: u16,
    },
}

impl ReverseAsk {
    pub fn id(&self) -> &RelationshipId {
        match self {
            ReverseAsk::Release { id, .. }
            | ReverseAsk::BecomeTarget { id, .. }
            | ReverseAsk::Commit { id, .. } => id,
        }
    }
}

/// The answer to a step (`PeerAnswer::Reversed`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "done", rename_all = "snake_case")]
pub enum ReverseReply {
    /// The target is released; its last recovery point (None: it has none) and epoch now.
    Released {
        recovery_point: Option<String>,
        recovery_point_ns: Option<i64>,
        epoch: u64,
    },
    /// The old source is the target now, at `epoch`; what it set aside.
    Target { discarded: Discarded, epoch: u64 },
    /// The old target is the source now.
    Source,
}

/// What the node that became the target did with the changes it made after the common
/// recovery point: kept aside in `directory`, each path listed (the whole list is in the
/// directory's `report.json` and `report.txt`; here at most `MAX_LISTED`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Discarded {
    /// Absolute path of the set-aside directory on that node (None: nothing to keep).
    pub directory: Option<String>,
    pub added: u64,
    pub modified: u64,
    pub deleted: u64,
    pub metadata: u64,
    pub items: Vec<DiscardedItem>,
    /// More paths than listed here (see the directory's report).
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiscardedItem {
    pub path: String,
    /// `added`, `modified`, `deleted` or `metadata`.
    pub change: String,
    pub kept_aside: bool,
}

/// The body of `POST /v1/replication/target-relationships/{id}/reverse`: where this node reaches
/// the relationship's source daemon (its peer port; a target does not otherwise know it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseBody {
    /// `host` or `host:port` (default port `DEFAULT_PORT`).
    #[serde(default)]
    pub source_address: Option<String>,
}

/// `host[:port]` as (host, port); an IPv6 address goes in brackets (`[::1]:3712`).
pub fn host_port(s: &str) -> crate::Result<(String, u16)> {
    let bad = || {
        crate::Error::Invalid(format!(
            "source address {s:?} is not host or host:port (IPv6 in brackets)"
        ))
    };
    if s.is_empty() || s.len() > crate::model::MAX_FIELD_LEN || s.contains(char::is_whitespace) {
        return Err(bad());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
        return match tail.strip_prefix(':') {
            None if tail.is_empty() => Ok((host.to_string(), crate::model::DEFAULT_PORT)),
            Some(p) => Ok((host.to_string(), p.parse().map_err(|_| bad())?)),
            None => Err(bad()),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && !h.is_empty() => {
            Ok((h.to_string(), p.parse().map_err(|_| bad())?))
        }
        Some(_) => Err(bad()),
        None => Ok((s.to_string(), crate::model::DEFAULT_PORT)),
    }
}

/// Paths listed in an answer (peer messages are bounded; the report file has them all).
pub const MAX_LISTED: usize = 2000;

/// Whether a peer at epoch `theirs` may take part in a reverse with this node at `mine`: the
/// same epoch, or one apart because the target was made writable (a failover bumps the
/// target's epoch; the source learns only that it ended). `target_ahead`: which side may be
/// the one ahead (the target).
pub fn epochs_agree(mine: u64, theirs: u64, mine_is_target: bool) -> bool {
    let (target, source) = if mine_is_target {
        (mine, theirs)
    } else {
        (theirs, mine)
    };
    target == source || target == source.saturating_add(1)
}

/// The epoch both sides take after a reverse: above both.
pub fn next_epoch(a: u64, b: u64) -> u64 {
    a.max(b).saturating_add(1)
}

/// The spec seen from the other end: the paths swap, the target is the old source's address,
/// owner mappings are inverted; the snapshot choice and the transport go back to `auto` (the
/// other node's file system and NICs decide) and the mode to continuous (policies are the old source node's). Blackout windows, bandwidth limit and enabled carry over.
pub fn reversed_spec(s: &Spec, new_target_address: String, new_target_port: u16) -> Spec {
    let flip = |v: &[(u32, u32)]| v.iter().map(|(a, b)| (*b, *a)).collect();
    Spec {
        source_path: s.target_path.clone(),
        target_address: new_target_address,
        target_port: new_target_port,
        target_path: s.source_path.clone(),
        blackout_windows: s.blackout_windows.clone(),
        map_ids: s.map_ids.as_ref().map(|m| IdMap {
            uid: flip(&m.uid),
            gid: flip(&m.gid),
        }),
        enabled: s.enabled,
        bandwidth_limit: s.bandwidth_limit,
        snapshot: Default::default(),
        // Snapshot policies are the old source's: the reversed relationship is continuous
        // (link the new source's own policies with `relationship modify`).
        mode: Default::default(),
        policies: Vec::new(),
        target_expiry: s.target_expiry,
        // The other node's hardware decides again.
        transport: Default::default(),
    }
}

/// The name of a set-aside directory: the epoch it was made for and when (UTC), so successive
/// reverses never collide and sort in order.
pub fn aside_name(epoch: u64, now_ns: i64) -> String {
    let t = chrono::DateTime::from_timestamp_nanos(now_ns);
    format!("epoch-{epoch}-{}", t.format("%Y%m%dT%H%M%SZ"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_epoch_or_a_target_one_ahead_after_a_failover_takes_part() {
        // (target's epoch, source's epoch, agree)
        for (t, s, ok) in [
            (0, 0, true),
            (1, 0, true),
            (3, 3, true),
            (0, 1, false),
            (2, 0, false),
            (5, 3, false),
        ] {
            assert_eq!(epochs_agree(t, s, true), ok, "target {t}, source {s}");
            assert_eq!(epochs_agree(s, t, false), ok, "seen from the source");
        }
        assert_eq!(next_epoch(1, 0), 2);
        assert_eq!(next_epoch(4, 4), 5);
        assert_eq!(next_epoch(u64::MAX, 0), u64::MAX);
    }

    #[test]
    fn reversed_twice_a_spec_is_the_original_but_for_address_and_snapshot() {
        let mut s = crate::model::tests::spec();
        s.map_ids = Some(IdMap {
            uid: vec![(1000, 2000)],
            gid: vec![(10, 20)],
        });
        s.bandwidth_limit = Some(7);
        s.snapshot = crate::model::SnapshotChoice::Plain;
        let r = reversed_spec(&s, "10.0.0.1".into(), 4000);
        assert_eq!(
            (r.source_path.as_str(), r.target_path.as_str()),
            ("/srv/replica", "/srv/data")
        );
        assert_eq!(r.map_ids.as_ref().unwrap().uid, vec![(2000, 1000)]);
        assert_eq!(r.snapshot, crate::model::SnapshotChoice::Auto);
        r.validate().unwrap();
        let back = reversed_spec(&r, s.target_address.clone(), s.target_port);
        let mut want = s.clone();
        want.snapshot = Default::default();
        assert_eq!(back, want);
    }

    #[test]
    fn source_addresses_are_host_and_optional_port() {
        assert_eq!(host_port("10.0.0.1").unwrap(), ("10.0.0.1".into(), 3712));
        assert_eq!(host_port("h:99").unwrap(), ("h".into(), 99));
        assert_eq!(host_port("[::1]:5").unwrap(), ("::1".into(), 5));
        assert_eq!(host_port("[::1]").unwrap(), ("::1".into(), 3712));
        for bad in ["", "h:", "h:x", "::1", "a b", "[::1"] {
            assert!(host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn steps_are_tagged_json_and_aside_names_sort_by_epoch_and_time() {
        let id = RelationshipId::parse(&"ab".repeat(16)).unwrap();
        let j = serde_json::to_value(ReverseAsk::Commit {
            id,
            epoch: 3,
            port: 9,
        })
        .unwrap();
        assert_eq!(j["step"], "commit");
        assert_eq!(
            aside_name(3, 1_764_666_000_000_000_000),
            "epoch-3-20251202T090000Z"
        );
        assert!(mover::tree::entry::validate_name(aside_name(3, 0).as_bytes()).is_ok());
    }
}
