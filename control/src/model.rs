//! Replication relationships as an operator sees them: what is replicated where, when it may
//! run (blackout windows), and the status the node reports. Pure: validation, edits and the
//! status decision take values and return values; the store and the daemon do the I/O.

use crate::blackout::{self, BlackoutWindow};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Replication port a target listens on unless the relationship names another.
pub const DEFAULT_PORT: u16 = 3712;
/// Longest path or address accepted in a relationship (bounded like everything else).
pub const MAX_FIELD_LEN: usize = 4096;
/// Most uid or gid mappings one relationship may carry.
pub const MAX_ID_MAPPINGS: usize = 1024;

/// A relationship's id: 128 random bits as 32 lowercase hex digits, the same on source and
/// target. Only valid ids can be made (`parse`, `new_random`, and deserializing, which goes
/// through `parse`): ids name directories in the data dir (`mnt/<id>`, `state/<id>`) and appear
/// in metrics labels, and a peer chooses the id of what it proposes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelationshipId(String);

/// Hex digits in a relationship id (128 bits).
pub const ID_LEN: usize = 32;

impl RelationshipId {
    pub fn new_random() -> RelationshipId {
        let mut b = [0u8; 16];
        // The kernel's random source never fails for 16 bytes after boot; fall back to time and
        // pid (ids only need to be unique per node pair) rather than fail a create.
        if getrandom_fill(&mut b).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            b = (t ^ (std::process::id() as u128) << 96).to_le_bytes();
        }
        RelationshipId(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    pub fn parse(s: &str) -> Result<RelationshipId> {
        if s.len() == ID_LEN && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(RelationshipId(s.to_string()))
        } else {
            Err(Error::Invalid(format!(
                "{:?} is not a relationship id ({ID_LEN} lowercase hex digits)",
                s.chars().take(2 * ID_LEN).collect::<String>()
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RelationshipId {
    type Error = Error;
    fn try_from(s: String) -> Result<RelationshipId> {
        RelationshipId::parse(&s)
    }
}

impl From<RelationshipId> for String {
    fn from(id: RelationshipId) -> String {
        id.0
    }
}

impl std::fmt::Display for RelationshipId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn getrandom_fill(b: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(b)
}

/// Which end of the relationship this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Source,
    Target,
}

impl Role {
    /// The name in JSON and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Target => "target",
        }
    }
}

/// What `mover status` shows for a relationship.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Idle,
    AwaitingAuthorization,
    Disconnected,
    InBlackoutWindow,
    ContinuousReplicationDisabled,
    RevertingToLastRecoveryPoint,
    JobIncompleteWillRetry,
    /// The directory this node checked is no longer at its path (replaced by a symlink or
    /// another directory, or now overlapping what it must not): nothing runs until it is back.
    PathChanged,
    /// The peer runs a release this one may not replicate with (`mover::compat`): nothing
    /// runs until one side is upgraded.
    IncompatiblePeerVersion,
    Ended,
}

impl State {
    /// The name in JSON and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Idle => "idle",
            State::AwaitingAuthorization => "awaiting_authorization",
            State::Disconnected => "disconnected",
            State::InBlackoutWindow => "in_blackout_window",
            State::ContinuousReplicationDisabled => "continuous_replication_disabled",
            State::RevertingToLastRecoveryPoint => "reverting_to_last_recovery_point",
            State::JobIncompleteWillRetry => "job_incomplete_will_retry",
            State::PathChanged => "path_changed",
            State::IncompatiblePeerVersion => "incompatible_peer_version",
            State::Ended => "ended",
        }
    }

    /// The words an operator reads in a table.
    pub fn describe(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Idle => "idle",
            State::AwaitingAuthorization => "awaiting authorization",
            State::Disconnected => "disconnected",
            State::InBlackoutWindow => "in blackout window",
            State::ContinuousReplicationDisabled => "continuous replication disabled",
            State::RevertingToLastRecoveryPoint => "reverting to last recovery point",
            State::JobIncompleteWillRetry => "job incomplete - will retry",
            State::PathChanged => "path changed - stopped",
            State::IncompatiblePeerVersion => "incompatible peer version - upgrade",
            State::Ended => "ended",
        }
    }
}

/// Numeric owner mappings applied on the target (source id -> target id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IdMap {
    #[serde(default)]
    pub uid: Vec<(u32, u32)>,
    #[serde(default)]
    pub gid: Vec<(u32, u32)>,
}

/// How a relationship's jobs take their point in time of the source (`mover send --snapshot`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotChoice {
    /// A btrfs snapshot where the source is a subvolume, else plain.
    #[default]
    Auto,
    /// A read-only btrfs snapshot (the source must be a subvolume).
    Btrfs,
    /// A reflink clone of every file (XFS with reflink, btrfs).
    Reflink,
    /// Live files, re-checked after sending; a job in which a file changed is retried.
    Plain,
}

impl SnapshotChoice {
    pub fn is_auto(&self) -> bool {
        *self == SnapshotChoice::Auto
    }

    pub fn name(&self) -> &'static str {
        match self {
            SnapshotChoice::Auto => "auto",
            SnapshotChoice::Btrfs => "btrfs",
            SnapshotChoice::Reflink => "reflink",
            SnapshotChoice::Plain => "plain",
        }
    }
}

impl std::str::FromStr for SnapshotChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(SnapshotChoice::Auto),
            "btrfs" => Ok(SnapshotChoice::Btrfs),
            "reflink" => Ok(SnapshotChoice::Reflink),
            "plain" => Ok(SnapshotChoice::Plain),
            other => Err(format!(
                "unknown snapshot provider {other:?}: auto, btrfs, reflink or plain"
            )),
        }
    }
}

/// What a relationship replicates (the three modes of the seeds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A job as soon as the source changed; the target keeps only the latest recovery point.
    #[default]
    Continuous,
    /// Jobs only for the snapshots of the linked policies, each kept on the target.
    SnapshotPolicy,
    /// Both: policy snapshots are queued and replicated, in order, before continuous jobs go on.
    SnapshotPolicyWithContinuous,
}

impl Mode {
    pub fn is_continuous(&self) -> bool {
        *self == Mode::Continuous
    }

    /// Whether changes start jobs of the live tree.
    pub fn replicates_changes(&self) -> bool {
        *self != Mode::SnapshotPolicy
    }

    /// Whether policy snapshots are replicated and kept.
    pub fn keeps_snapshots(&self) -> bool {
        *self != Mode::Continuous
    }

    pub fn name(&self) -> &'static str {
        match self {
            Mode::Continuous => "continuous",
            Mode::SnapshotPolicy => "snapshot-policy",
            Mode::SnapshotPolicyWithContinuous => "snapshot-policy-with-continuous",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.replace('_', "-").as_str() {
            "continuous" => Ok(Mode::Continuous),
            "snapshot-policy" => Ok(Mode::SnapshotPolicy),
            "snapshot-policy-with-continuous" => Ok(Mode::SnapshotPolicyWithContinuous),
            _ => Err(format!(
                "unknown mode {s:?}: continuous, snapshot-policy or snapshot-policy-with-continuous"
            )),
        }
    }
}

/// How long the target keeps a replicated policy snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetExpiry {
    /// As long as the policy keeps it on the source.
    #[default]
    SameAsPolicy,
    Never,
    AfterSecs(u64),
}

impl TargetExpiry {
    pub fn is_default(&self) -> bool {
        *self == TargetExpiry::SameAsPolicy
    }

    /// When the target deletes a snapshot taken at `taken_ns` under a policy keeping it for
    /// `policy`.
    pub fn at(self, policy: crate::policy::Expiry, taken_ns: i64) -> Option<i64> {
        match self {
            TargetExpiry::SameAsPolicy => policy.at(taken_ns),
            TargetExpiry::Never => None,
            TargetExpiry::AfterSecs(s) => crate::policy::Expiry::AfterSecs(s).at(taken_ns),
        }
    }
}

impl std::str::FromStr for TargetExpiry {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "same-as-policy" | "same_as_policy" => Ok(TargetExpiry::SameAsPolicy),
            "never" => Ok(TargetExpiry::Never),
            d => crate::policy::parse_duration(d)
                .map(TargetExpiry::AfterSecs)
                .map_err(|_| {
                    format!("target expiry {s:?}: same-as-policy, never, or a duration such as 7d")
                }),
        }
    }
}

impl std::fmt::Display for TargetExpiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetExpiry::SameAsPolicy => f.write_str("same-as-policy"),
            TargetExpiry::Never => f.write_str("never"),
            TargetExpiry::AfterSecs(s) => f.write_str(&crate::policy::format_duration(*s)),
        }
    }
}

/// What an operator gives to create a relationship on the source. Optional settings that are
/// not set are left out of its JSON, as absent and null mean the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Spec {
    pub source_path: String,
    pub target_address: String,
    #[serde(default = "default_port")]
    pub target_port: u16,
    pub target_path: String,
    #[serde(default)]
    pub blackout_windows: Vec<BlackoutWindow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_ids: Option<IdMap>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// File data bytes per second a job may send; `None` is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<u64>,
    /// Left out of the JSON when `auto`, so a spec without it reads as before.
    #[serde(default, skip_serializing_if = "SnapshotChoice::is_auto")]
    pub snapshot: SnapshotChoice,
    /// Left out when continuous, as are the two below when empty or default.
    #[serde(default, skip_serializing_if = "Mode::is_continuous")]
    pub mode: Mode,
    /// The snapshot policies whose snapshots it replicates (snapshot modes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<crate::policy::PolicyName>,
    #[serde(default, skip_serializing_if = "TargetExpiry::is_default")]
    pub target_expiry: TargetExpiry,
    /// How the data plane's worker connections travel; left out when `auto`.
    #[serde(default, skip_serializing_if = "Transport::is_auto")]
    pub transport: Transport,
}

/// A relationship's data-plane transport (`mover::transport::select::Choice`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// RDMA when both nodes have an active RDMA port for the connection's address (and are
    /// built with it), else TCP.
    #[default]
    Auto,
    Tcp,
    /// RDMA or an error at the start of a session (a failure mid-job still falls back to TCP).
    Rdma,
}

impl Transport {
    pub fn is_auto(&self) -> bool {
        *self == Transport::Auto
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::Auto => "auto",
            Transport::Tcp => "tcp",
            Transport::Rdma => "rdma",
        }
    }

    pub fn choice(self) -> mover::transport::select::Choice {
        use mover::transport::select::Choice;
        match self {
            Transport::Auto => Choice::Auto,
            Transport::Tcp => Choice::Tcp,
            Transport::Rdma => Choice::Rdma,
        }
    }
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

fn yes() -> bool {
    true
}

/// Everything but the paths can be edited (a different path is a different relationship).
/// The body of `PATCH .../source-relationships/{id}`: a field left out (`None`) stays as it is,
/// so `None` is never written as null, which would remove a mapping or a limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blackout_windows: Option<Vec<BlackoutWindow>>,
    /// `Some(None)` (JSON null) removes the mapping.
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<IdMap>)]
    pub map_ids: Option<Option<IdMap>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `Some(None)` removes the limit.
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u64>)]
    pub bandwidth_limit: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Replaces the list of linked policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<crate::policy::PolicyName>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_expiry: Option<TargetExpiry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
}

/// `Option<Option<T>>` from JSON: absent -> None, null -> Some(None), value -> Some(Some(v)).
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

fn check_path(what: &str, p: &str) -> Result<()> {
    if !p.starts_with('/')
        || p.len() > MAX_FIELD_LEN
        || p.contains('\0')
        || p.split('/').any(|c| c == "..")
    {
        return Err(Error::Invalid(format!("{what} must be an absolute path without `..` (at most {MAX_FIELD_LEN} bytes), not {p:?}")));
    }
    Ok(())
}

impl Spec {
    pub fn validate(&self) -> Result<()> {
        check_path("source path", &self.source_path)?;
        check_path("target path", &self.target_path)?;
        if self.target_address.is_empty()
            || self.target_address.len() > MAX_FIELD_LEN
            || self.target_address.contains(char::is_whitespace)
        {
            return Err(Error::Invalid(format!(
                "target address {:?} is not a host name or IP address",
                self.target_address
            )));
        }
        if self.target_port == 0 {
            return Err(Error::Invalid("target port must be 1-65535".into()));
        }
        blackout::validate(&self.blackout_windows)?;
        if self.bandwidth_limit == Some(0) {
            return Err(Error::Invalid(
                "bandwidth_limit must be at least 1 byte per second (omit it for no limit)".into(),
            ));
        }
        match (self.mode.keeps_snapshots(), self.policies.is_empty()) {
            (true, true) => {
                return Err(Error::Invalid(format!(
                    "mode {} needs at least one snapshot policy (--policy NAME)",
                    self.mode.name()
                )))
            }
            (false, false) => {
                return Err(Error::Invalid(
                    "snapshot policies replicate in the snapshot-policy modes only, not in continuous mode".into(),
                ))
            }
            _ => {}
        }
        if self.policies.len() > crate::policy::MAX_POLICIES_PER_RELATIONSHIP {
            return Err(Error::Invalid(format!(
                "a relationship links at most {} policies",
                crate::policy::MAX_POLICIES_PER_RELATIONSHIP
            )));
        }
        if let TargetExpiry::AfterSecs(s) = self.target_expiry {
            crate::policy::Expiry::AfterSecs(s).validate()?;
        }
        if let Some(m) = &self.map_ids {
            if m.uid.len() > MAX_ID_MAPPINGS || m.gid.len() > MAX_ID_MAPPINGS {
                return Err(Error::Invalid(format!(
                    "at most {MAX_ID_MAPPINGS} uid and {MAX_ID_MAPPINGS} gid mappings"
                )));
            }
        }
        Ok(())
    }

    /// The spec after `e`, validated; the paths never change.
    pub fn edited(&self, e: &Edit) -> Result<Spec> {
        let mut s = self.clone();
        if let Some(a) = &e.target_address {
            s.target_address = a.clone();
        }
        if let Some(p) = e.target_port {
            s.target_port = p;
        }
        if let Some(w) = &e.blackout_windows {
            s.blackout_windows = w.clone();
        }
        if let Some(m) = &e.map_ids {
            s.map_ids = m.clone();
        }
        if let Some(en) = e.enabled {
            s.enabled = en;
        }
        if let Some(b) = e.bandwidth_limit {
            s.bandwidth_limit = b;
        }
        if let Some(p) = e.snapshot {
            s.snapshot = p;
        }
        if let Some(t) = e.transport {
            s.transport = t;
        }
        if let Some(m) = e.mode {
            s.mode = m;
            // Back to continuous: the links go with the mode unless the edit names them.
            if m == Mode::Continuous && e.policies.is_none() {
                s.policies.clear();
            }
        }
        if let Some(p) = &e.policies {
            s.policies = p.clone();
        }
        if let Some(t) = e.target_expiry {
            s.target_expiry = t;
        }
        s.validate()?;
        Ok(s)
    }
}

/// What a target's operator accepts for the read-only replica when authorizing. By default
/// the replica is mounted nosuid, nodev and noexec, so setuid/setgid binaries, device nodes and
/// executables replicated from the source are inert on the target; each can be allowed. Only
/// the target's operator sets these (they are not in the spec the source sends and edits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaOptions {
    /// Honour setuid and setgid bits of replicated files (no `nosuid`).
    #[serde(default)]
    pub allow_setuid: bool,
    /// Let replicated device nodes be opened (no `nodev`).
    #[serde(default)]
    pub allow_devices: bool,
    /// Let replicated files be executed (no `noexec`).
    #[serde(default)]
    pub allow_exec: bool,
}

/// A directory as it was checked: its canonical path (no symlinks, no `..`) and the device and
/// inode found there. Every later use opens the path again without following symlinks and
/// must find the same device and inode (`crate::pinned`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedDir {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
}

/// The outcome of the latest job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at_ns: i64,
    pub ok: bool,
    pub message: String,
}

/// One relationship as a node stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Relationship {
    pub id: RelationshipId,
    pub role: Role,
    pub spec: Spec,
    /// The target accepted it (always true on the source once the target said so).
    pub authorized: bool,
    pub created_ns: i64,
    pub last_attempt: Option<Attempt>,
    /// Time of the source's point in time the target's last recovery point holds.
    pub recovery_point_ns: Option<i64>,
    /// A job of this relationship is running right now (kept current by the daemon).
    pub job_running: bool,
    /// Source: the target could not be reached at the last try. Target: the source has not
    /// reached this node for `daemon::DISCONNECTED_AFTER`, until its next poll or report.
    pub peer_unreachable: bool,
    /// The target was made writable (relationship deleted there or reverted for failover).
    pub ended: bool,
    /// The peer daemon's certificate fingerprint, pinned at creation (source) or when the
    /// proposal arrived (target); every later peer exchange must present it.
    pub peer_fingerprint: Option<String>,
    /// Target role, once authorized and until released: how the target directory is kept
    /// read-only.
    pub read_only: Option<ReadOnlyMode>,
    /// The directory this node replicates from (source role, pinned at create) or into
    /// (target role, pinned at authorization). `None` for relationships of older versions
    /// until their first use pins them.
    pub pinned: Option<PinnedDir>,
    /// Why the pinned directory could not be used at its last check; the relationship is
    /// stopped (`PathChanged`) until a check passes again.
    pub path_error: Option<String>,
    /// Target role: what its operator accepted for the replica at authorization.
    pub replica: ReplicaOptions,
    /// Failovers (make-writable) and reconnects since the relationship began. A peer request
    /// of another epoch comes from a side that missed one of them: it is refused as split
    /// brain (`split_brain`).
    #[serde(default)]
    pub epoch: u64,
}

impl Relationship {
    /// A relationship just created (source) or proposed (target): not yet authorized, no job.
    pub fn new(
        id: RelationshipId,
        role: Role,
        spec: Spec,
        created_ns: i64,
        peer_fingerprint: Option<String>,
    ) -> Relationship {
        Relationship {
            id,
            role,
            spec,
            authorized: false,
            created_ns,
            last_attempt: None,
            recovery_point_ns: None,
            job_running: false,
            peer_unreachable: false,
            ended: false,
            peer_fingerprint,
            read_only: None,
            pinned: None,
            path_error: None,
            replica: ReplicaOptions::default(),
            epoch: 0,
        }
    }

    /// Why a peer request made at `theirs` epoch is refused here (None: same epoch). The
    /// other side missed a failover or reconnect of this one (or this one of the other's):
    /// going on would let two nodes write one tree ("split brain").
    pub fn split_brain(&self, theirs: u64) -> Option<String> {
        let (id, mine) = (&self.id, self.epoch);
        if theirs == mine {
            return None;
        }
        let (here, there) = match self.role {
            Role::Target => ("target", "source"),
            Role::Source => ("source", "target"),
        };
        Some(if theirs < mine {
            format!(
                "split brain refused: relationship {id} is at epoch {mine} on this {here}, the {there} asked at epoch {theirs}; \
                 this {here} was made writable or reconnected since, so its side is newer. To replicate again, run \
                 `mover relationship reconnect {id}` on the source (it reverts what was written on the target); \
                 to keep both, delete the relationship on both nodes"
            )
        } else {
            format!(
                "split brain refused: relationship {id} is at epoch {mine} on this {here}, the {there} asked at epoch {theirs}; \
                 the {there} is newer (this node's state is from before a failover or reconnect, e.g. restored from a backup). \
                 Delete the relationship on this node and create it again from the source"
            )
        })
    }
}

/// The status to show, decided from the relationship and the clock.
pub fn status(r: &Relationship, now: chrono::DateTime<chrono::Utc>) -> State {
    if r.ended {
        return State::Ended;
    }
    if !r.authorized {
        return State::AwaitingAuthorization;
    }
    if r.path_error.is_some() {
        return State::PathChanged;
    }
    if blackout::in_blackout(&r.spec.blackout_windows, now) {
        return State::InBlackoutWindow;
    }
    // A manual job ("replicate now") runs even with continuous replication disabled.
    if r.job_running {
        return State::Running;
    }
    if !r.spec.enabled {
        return State::ContinuousReplicationDisabled;
    }
    if r.peer_unreachable {
        return State::Disconnected;
    }
    match &r.last_attempt {
        Some(a) if !a.ok => State::JobIncompleteWillRetry,
        _ => State::Idle,
    }
}

/// How a target directory is kept read-only (a relationship's `read_only`). Stored by
/// `name`; a stored name a release does not know fails its relationship's row (it never writes
/// through a protection it does not understand), so a release that adds a mode must also add a
/// store migration, which an older release refuses at open (`Store::open`) instead of failing
/// rows.
// Applied by `readonly.rs` (as `readonly::Mode`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ReadOnlyMode {
    BindMount,
    NotEnforced,
}

impl ReadOnlyMode {
    pub fn name(self) -> &'static str {
        match self {
            ReadOnlyMode::BindMount => "bind_mount",
            ReadOnlyMode::NotEnforced => "not_enforced",
        }
    }

    /// The mode `name` names, as stored.
    pub fn parse(name: &str) -> Option<ReadOnlyMode> {
        match name {
            "bind_mount" => Some(ReadOnlyMode::BindMount),
            "not_enforced" => Some(ReadOnlyMode::NotEnforced),
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid spec, shared with the store's tests.
    pub fn spec() -> Spec {
        Spec {
            source_path: "/srv/data".into(),
            target_address: "127.0.0.1".into(),
            target_port: DEFAULT_PORT,
            target_path: "/srv/replica".into(),
            blackout_windows: vec![],
            map_ids: None,
            enabled: true,
            bandwidth_limit: None,
            snapshot: Default::default(),
            mode: Default::default(),
            policies: Vec::new(),
            target_expiry: Default::default(),
            transport: Default::default(),
        }
    }

    #[test]
    fn the_snapshot_choice_defaults_to_auto_and_is_left_out_of_the_json_then() {
        let mut s = spec();
        let j = serde_json::to_value(&s).unwrap();
        assert!(j.get("snapshot").is_none(), "{j}");
        let back: Spec = serde_json::from_value(j).unwrap();
        assert_eq!(back.snapshot, SnapshotChoice::Auto);
        s.snapshot = SnapshotChoice::Reflink;
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["snapshot"], "reflink");
        let e: Edit = serde_json::from_str(r#"{"snapshot":"plain"}"#).unwrap();
        assert_eq!(s.edited(&e).unwrap().snapshot, SnapshotChoice::Plain);
        assert!("zfs".parse::<SnapshotChoice>().is_err());
        for c in ["auto", "btrfs", "reflink", "plain"] {
            assert_eq!(c.parse::<SnapshotChoice>().unwrap().name(), c);
        }
    }

    #[test]
    fn spec_json_defaults_port_and_enabled() {
        let s: Spec =
            serde_json::from_str(r#"{"source_path":"/a","target_address":"h","target_path":"/b"}"#)
                .unwrap();
        assert_eq!(s.target_port, 3712);
        assert!(s.enabled);
        s.validate().unwrap();
    }

    #[test]
    fn relative_or_dotdot_paths_and_port_zero_are_refused() {
        for (f, v) in [("source", "rel/path"), ("target", "/a/../b")] {
            let mut s = spec();
            if f == "source" {
                s.source_path = v.into();
            } else {
                s.target_path = v.into();
            }
            assert!(
                s.validate()
                    .unwrap_err()
                    .to_string()
                    .contains("absolute path"),
                "{v}"
            );
        }
        let mut s = spec();
        s.target_port = 0;
        assert!(s.validate().is_err());
    }

    #[test]
    fn edits_change_everything_but_paths() {
        let s = spec();
        let e: Edit = serde_json::from_str(r#"{"target_port":4000,"enabled":false}"#).unwrap();
        let t = s.edited(&e).unwrap();
        assert_eq!(
            (t.target_port, t.enabled, &t.source_path),
            (4000, false, &s.source_path)
        );
        assert!(
            serde_json::from_str::<Edit>(r#"{"source_path":"/x"}"#).is_err(),
            "paths are not editable"
        );
    }

    #[test]
    fn null_removes_an_id_map_or_a_limit_and_absence_keeps_them() {
        let mut s = spec();
        s.map_ids = Some(IdMap {
            uid: vec![(1000, 2000)],
            gid: vec![],
        });
        s.bandwidth_limit = Some(5);
        let keep: Edit = serde_json::from_str(r#"{"enabled":false}"#).unwrap();
        let t = s.edited(&keep).unwrap();
        assert_eq!((t.map_ids.is_some(), t.bandwidth_limit), (true, Some(5)));
        let clear: Edit =
            serde_json::from_str(r#"{"map_ids":null,"bandwidth_limit":null}"#).unwrap();
        let t = s.edited(&clear).unwrap();
        assert_eq!((t.map_ids, t.bandwidth_limit), (None, None));
    }

    #[test]
    fn state_names_are_the_json_names() {
        for st in [
            State::Running,
            State::AwaitingAuthorization,
            State::JobIncompleteWillRetry,
            State::RevertingToLastRecoveryPoint,
        ] {
            assert_eq!(serde_json::to_value(st).unwrap(), st.name());
        }
    }

    #[test]
    fn status_follows_authorization_enabled_and_job_outcome() {
        let now = chrono::Utc::now();
        let mut r = Relationship::new(RelationshipId::new_random(), Role::Target, spec(), 0, None);
        assert_eq!(status(&r, now), State::AwaitingAuthorization);
        r.authorized = true;
        assert_eq!(status(&r, now), State::Idle);
        r.last_attempt = Some(Attempt {
            at_ns: 1,
            ok: false,
            message: "cut".into(),
        });
        assert_eq!(status(&r, now), State::JobIncompleteWillRetry);
        r.job_running = true;
        assert_eq!(status(&r, now), State::Running);
        r.spec.enabled = false;
        assert_eq!(
            status(&r, now),
            State::Running,
            "a manual job runs with continuous replication off"
        );
        r.job_running = false;
        assert_eq!(status(&r, now), State::ContinuousReplicationDisabled);
        r.path_error = Some("a symlink stands in its path".into());
        assert_eq!(status(&r, now).name(), "path_changed");
        r.ended = true;
        assert_eq!(status(&r, now).describe(), "ended");
        assert_eq!(RelationshipId::parse(r.id.as_str()).unwrap(), r.id);
        assert!(RelationshipId::parse("../x").is_err());
    }
}
