//! What the API shows for a relationship (docs/api.md, "View").

use super::{lock, Node};
use crate::blackout::BlackoutWindow;
use crate::clock::rfc3339;
use crate::model::{self, IdMap, Relationship, ReplicaOptions, Role, State};
use crate::peer::JobView;
use serde::Serialize;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TimeView {
    pub time: String,
    pub age_seconds: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub time: String,
    pub ok: bool,
    pub message: String,
}

/// The last full verification of a target (a scrub, or a job that walked it all): `ok` false
/// is an alert, the target differs from its recovery point (`difference` says where).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScrubView {
    pub last_at: String,
    #[serde(skip)]
    pub at_ns: i64,
    pub ok: bool,
    pub difference: Option<String>,
    pub entries: u64,
    #[schema(schema_with = super::api_schemas::scrub_by)]
    pub by: mover::receiver::scrub::ScrubBy,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct View {
    pub id: String,
    pub role: Role,
    pub state: State,
    pub state_text: &'static str,
    pub source_path: String,
    pub target_address: String,
    pub target_port: u16,
    pub target_path: String,
    pub blackout_windows: Vec<BlackoutWindow>,
    pub map_ids: Option<IdMap>,
    pub enabled: bool,
    pub bandwidth_limit: Option<u64>,
    /// The data-plane transport asked for: auto, tcp or rdma.
    pub transport: crate::model::Transport,
    /// Source side: what the last session's worker connections used (`tcp`, `rdma`); null
    /// before the first since the daemon started.
    pub transport_used: Option<String>,
    /// How the source's jobs take their point in time.
    pub snapshot: crate::model::SnapshotChoice,
    /// continuous, snapshot_policy or snapshot_policy_with_continuous.
    pub mode: crate::model::Mode,
    /// The snapshot policies it replicates.
    pub policies: Vec<crate::policy::PolicyName>,
    /// How long the target keeps replicated policy snapshots.
    pub target_expiry: String,
    /// Policy snapshots on this node: queued (source, not yet replicated) and kept.
    pub snapshots: SnapshotCounts,
    pub authorized: bool,
    pub peer_fingerprint: Option<String>,
    pub read_only: Option<crate::readonly::Mode>,
    /// How this node runs the relationship's data-plane sessions: "encrypted", or (both nodes
    /// set insecure_plaintext) "plaintext".
    pub data_plane: &'static str,
    /// Why the relationship is stopped (state `path_changed`), if it is.
    pub path_error: Option<String>,
    /// Target role: what its operator accepted for the replica at authorization.
    pub replica_options: Option<ReplicaOptions>,
    pub recovery_point: Option<TimeView>,
    pub last_attempt: Option<AttemptView>,
    pub job: Option<JobView>,
    /// Target role: the last scrub of the target directory.
    pub scrub: Option<ScrubView>,
    /// Source role: what starts continuous jobs: "fanotify" or "inotify" (events), or
    /// "interval" (no watch: node set so, relationship not replicating, or the watch failed).
    pub change_detection: Option<&'static str>,
    /// Source role: why the source could not be watched, if it could not.
    pub watch_error: Option<String>,
    /// Failovers (make-writable) and reconnects so far; a peer of another epoch is refused.
    pub epoch: u64,
    /// Why the peer's release is refused (state `incompatible_peer_version`): both versions,
    /// the rule and the upgrade that fixes it.
    pub peer_version_error: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct SnapshotCounts {
    pub queued: usize,
    pub kept: usize,
}

pub fn view(node: &Node, r: Relationship) -> View {
    let snapshots = node
        .store()
        .snapshots(Some(&r.id), r.role)
        .map(|s| SnapshotCounts {
            queued: s.iter().filter(|(_, x)| !x.replicated).count(),
            kept: s.iter().filter(|(_, x)| x.replicated).count(),
        })
        .unwrap_or_default();
    let now = node.clock.now();
    let now_ns = now.timestamp_nanos_opt().unwrap_or(i64::MAX);
    let mono = node.clock.instant();
    let epoch = r.epoch;
    let job = match r.role {
        Role::Source => lock(&node.jobs)
            .get(&r.id)
            .filter(|j| !j.finished())
            .map(|j| j.view(mono)),
        Role::Target => lock(&node.reported)
            .get(&r.id)
            .cloned()
            .filter(|_| r.job_running),
    };
    let mut state = model::status(&r, now);
    if r.role == Role::Target && lock(&node.reverting).contains(&r.id) {
        state = State::RevertingToLastRecoveryPoint;
    }
    // Reconnected after a failover: until a job has brought the target back.
    if !r.ended && lock(&node.reconnecting).contains_key(&r.id) {
        state = State::RevertingToLastRecoveryPoint;
    }
    if job.is_some() && state == State::Idle {
        state = State::Running;
    }
    // A source that stopped talking mid-job (killed, cut off) leaves no "running" behind; an
    // outage recorded before this daemon started lasts until the source is heard from.
    if matches!(
        state,
        State::Idle | State::JobIncompleteWillRetry | State::Running
    ) && (source_silent(node, &r, mono) || (r.role == Role::Target && r.peer_unreachable))
    {
        state = State::Disconnected;
    }
    let peer_version_error = node.incompatible_peer(&r.id);
    if peer_version_error.is_some() && !r.ended {
        state = State::IncompatiblePeerVersion;
    }
    // What an ended or silent source last reported is not a job in flight.
    let job = job.filter(|_| !matches!(state, State::Ended | State::Disconnected));
    let scrub = match r.role {
        Role::Target => super::target::scrub(node, &r.id).map(|s| ScrubView {
            last_at: rfc3339(s.at_ns),
            at_ns: s.at_ns,
            ok: s.ok,
            difference: s.difference,
            entries: s.entries,
            by: s.by,
        }),
        Role::Source => None,
    };
    let (change_detection, watch_error) = match r.role {
        Role::Source => {
            let (backend, error) = node.watches.status(&r.id);
            let how = match backend {
                Some(mover::watch::Backend::Fanotify) => "fanotify",
                Some(mover::watch::Backend::Inotify) => "inotify",
                None => "interval",
            };
            (Some(how), error)
        }
        Role::Target => (None, None),
    };
    View {
        id: r.id.to_string(),
        role: r.role,
        state,
        state_text: state.describe(),
        source_path: r.spec.source_path,
        target_address: r.spec.target_address,
        target_port: r.spec.target_port,
        target_path: r.spec.target_path,
        blackout_windows: r.spec.blackout_windows,
        map_ids: r.spec.map_ids,
        enabled: r.spec.enabled,
        bandwidth_limit: r.spec.bandwidth_limit,
        transport: r.spec.transport,
        transport_used: lock(&node.transports).get(&r.id).cloned(),
        snapshot: r.spec.snapshot,
        mode: r.spec.mode,
        policies: r.spec.policies.clone(),
        target_expiry: r.spec.target_expiry.to_string(),
        snapshots,
        authorized: r.authorized,
        peer_fingerprint: r.peer_fingerprint,
        read_only: r.read_only,
        data_plane: if node.opts.insecure_plaintext {
            "plaintext"
        } else {
            "encrypted"
        },
        path_error: r.path_error,
        replica_options: (r.role == Role::Target && r.authorized).then_some(r.replica),
        recovery_point: r.recovery_point_ns.map(|ns| TimeView {
            time: rfc3339(ns),
            age_seconds: (now_ns - ns).max(0) as f64 / 1e9,
        }),
        last_attempt: r.last_attempt.map(|a| AttemptView {
            time: rfc3339(a.at_ns),
            ok: a.ok,
            message: a.message,
        }),
        job,
        scrub,
        change_detection,
        watch_error,
        epoch,
        peer_version_error,
    }
}

/// An authorized target relationship whose source has not reached this node (a poll, a
/// ticket, a report) for `DISCONNECTED_AFTER`, counted from the daemon's start or the
/// authorization if later.
pub(super) fn source_silent(node: &Node, r: &Relationship, mono: std::time::Instant) -> bool {
    if r.role != Role::Target || !r.authorized {
        return false;
    }
    let since = lock(&node.last_contact)
        .get(&r.id)
        .copied()
        .unwrap_or(node.started);
    mono.saturating_duration_since(since) > super::DISCONNECTED_AFTER
}

#[cfg(test)]
mod tests {
    use super::super::{lock, DISCONNECTED_AFTER};
    use crate::clock::Clock;
    use crate::model::{Relationship, RelationshipId, Role, State};
    use std::time::Duration;

    #[test]
    fn a_target_not_heard_from_its_source_for_30_s_shows_disconnected() {
        let dir = tempfile::tempdir().unwrap();
        let (node, clock) = super::super::test_node(dir.path());
        let id = RelationshipId::new_random();
        let mut r = Relationship::new(
            id.clone(),
            Role::Target,
            crate::model::tests::spec(),
            0,
            None,
        );
        r.authorized = true;
        node.store().insert(&r).unwrap();
        let state = || super::view(&node, node.get(&id, Role::Target).unwrap()).state;

        // Counted from the daemon's start until the source first reaches it.
        assert_eq!(state(), State::Idle);
        clock.advance(DISCONNECTED_AFTER);
        assert_eq!(state(), State::Idle, "30 s is not yet longer than 30 s");
        clock.advance(Duration::from_millis(1));
        assert_eq!(state(), State::Disconnected);

        // A poll (the source reached us) reconnects it; silence again disconnects it, even
        // with a job the source last reported as running.
        lock(&node.last_contact).insert(id.clone(), clock.instant());
        assert_eq!(state(), State::Idle);
        node.modify(&id, Role::Target, |x| x.job_running = true)
            .unwrap();
        lock(&node.reported).insert(id.clone(), crate::peer::JobView::default());
        assert_eq!(state(), State::Running);
        clock.advance(DISCONNECTED_AFTER + Duration::from_secs(1));
        let v = super::view(&node, node.get(&id, Role::Target).unwrap());
        assert_eq!((v.state, v.job), (State::Disconnected, None));

        // An outage recorded (`silence`) lasts until the source is heard from (a poll clears
        // it), also through a restart, when the silence counts afresh from the daemon's start,
        // and with a job the source last reported running.
        lock(&node.last_contact).insert(id.clone(), clock.instant());
        assert_eq!(state(), State::Running);
        node.modify(&id, Role::Target, |x| x.peer_unreachable = true)
            .unwrap();
        assert_eq!(state(), State::Disconnected);
    }

    #[test]
    fn right_after_authorize_a_target_is_not_shown_disconnected() {
        assert!(
            rustix::process::geteuid().is_root(),
            "authorizing mounts: run this test as root (CI does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let (node, clock) = super::super::test_node(dir.path());
        let target = dir.path().join("replica");
        std::fs::create_dir(&target).unwrap();
        let mut spec = crate::model::tests::spec();
        spec.target_path = target.to_str().unwrap().to_string();
        let id = RelationshipId::new_random();
        let r = Relationship::new(id.clone(), Role::Target, spec, 0, None);
        node.store().insert(&r).unwrap();
        // The daemon has been up for a while; the proposal came in long ago.
        clock.advance(DISCONNECTED_AFTER + Duration::from_secs(10));
        let r = super::super::target::authorize(&node, &id, &Default::default()).unwrap();
        let state = super::view(&node, r).state;
        super::super::target::delete(&node, &id).unwrap();
        assert_eq!(state, State::Idle);
    }
}
