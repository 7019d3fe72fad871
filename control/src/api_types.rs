//! Request bodies of the REST API (docs/api.md), one definition for the daemon's handlers that
//! read them and the CLI that writes them. A relationship's edit is [`crate::model::Edit`].

use crate::auth::TokenRole;
use crate::model::{ReplicaOptions, Spec};
use crate::tls::Fingerprint;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// The fields of a create body that make the spec ([`Spec`]).
pub const SPEC_FIELDS: [&str; 13] = [
    "source_path",
    "target_address",
    "target_port",
    "target_path",
    "blackout_windows",
    "map_ids",
    "enabled",
    "bandwidth_limit",
    "snapshot",
    "mode",
    "policies",
    "target_expiry",
    "transport",
];
/// The one create field beyond the spec.
pub const TARGET_FINGERPRINT: &str = "target_fingerprint";

/// `POST /v1/replication/source-relationships`: the spec, and the certificate the target must
/// present (`mover node` there shows it); without one, the certificate the target presents at
/// this first contact is trusted and pinned.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct NewRelationship {
    #[serde(flatten)]
    pub spec: Spec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_fingerprint: Option<Fingerprint>,
}

impl NewRelationship {
    /// Reads a create body. Strict, unlike the spec in storage and between daemons (a newer
    /// peer may know more fields): an unknown field is refused, so a typo cannot silently drop
    /// a setting. The refusals are `Error::Invalid`, naming the field.
    pub fn parse(body: &[u8]) -> Result<NewRelationship> {
        let invalid = |e: serde_json::Error| Error::Invalid(format!("relationship: {e}"));
        let mut raw: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
        let target_fingerprint = match raw
            .as_object_mut()
            .and_then(|o| o.remove(TARGET_FINGERPRINT))
        {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(f)) => Some(Fingerprint::parse(&f)?),
            Some(other) => {
                return Err(Error::Invalid(format!(
                    "{TARGET_FINGERPRINT} must be a string, not {other}"
                )))
            }
        };
        // Checked by hand: serde cannot refuse unknown fields next to a flattened struct.
        if let Some(unknown) = raw
            .as_object()
            .and_then(|o| o.keys().find(|k| !SPEC_FIELDS.contains(&k.as_str())))
        {
            return Err(Error::Invalid(format!(
                "relationship: unknown field `{unknown}`, expected one of {}, {TARGET_FINGERPRINT}",
                SPEC_FIELDS.join(", ")
            )));
        }
        let spec = serde_json::from_value(raw).map_err(invalid)?;
        Ok(NewRelationship {
            spec,
            target_fingerprint,
        })
    }
}

/// `POST .../target-relationships/{id}/drills`: where the drill's copy goes (default: beside
/// the target directory, `<target>.drill-<id>`), and whether a full copy of the data is
/// acceptable where neither a btrfs snapshot nor reflinks can make it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartDrill {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub into: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_copy: bool,
}

/// `POST /v1/replication/target-relationships/{id}/authorize` (the body is optional: no body
/// is the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Authorize {
    /// Accept a target directory that already holds files (they will be replaced).
    #[serde(default)]
    pub allow_non_empty_target: bool,
    /// Honour setuid/setgid bits of replicated files on the replica (no `nosuid`). Like the
    /// other opt-ins, written only when set, so a body without them reads the same everywhere.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_setuid: bool,
    /// Let replicated device nodes be opened on the replica (no `nodev`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_devices: bool,
    /// Let replicated files be executed on the replica (no `noexec`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_exec: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Authorize {
    /// What the operator accepts for the replica.
    pub fn replica(&self) -> ReplicaOptions {
        ReplicaOptions {
            allow_setuid: self.allow_setuid,
            allow_devices: self.allow_devices,
            allow_exec: self.allow_exec,
        }
    }
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Checked by `auth::check_name`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    pub role: TokenRole,
    /// Where the token is valid: `node` (this node's own database) or `cluster` (kept in
    /// etcd, valid on every node of the cluster). Left out: `cluster` on a node in a cluster,
    /// `node` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<TokenScope>,
}

/// Where a token is kept, and so where it is valid.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum TokenScope {
    /// This node's SQLite: valid on this node only, also while etcd is out of reach.
    Node,
    /// etcd (`/mover/v1/tokens/<name>`): valid on every node of the cluster; checked only
    /// while the node has a working etcd session.
    Cluster,
}

impl TokenScope {
    pub fn name(self) -> &'static str {
        match self {
            TokenScope::Node => "node",
            TokenScope::Cluster => "cluster",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Edit, IdMap};
    use serde_json::json;

    fn full_spec() -> Spec {
        let mut s = crate::model::tests::spec();
        s.blackout_windows = serde_json::from_value(json!([
            {"days": ["mon", "fri"], "start": "22:00", "end": "06:00", "timezone": "Europe/Berlin"}
        ]))
        .unwrap();
        s.map_ids = Some(IdMap {
            uid: vec![(1000, 2000)],
            gid: vec![(5, 6)],
        });
        s.bandwidth_limit = Some(1 << 20);
        s.snapshot = crate::model::SnapshotChoice::Reflink;
        s.mode = crate::model::Mode::SnapshotPolicyWithContinuous;
        s.policies = vec![crate::policy::PolicyName::parse("hourly").unwrap()];
        s.target_expiry = crate::model::TargetExpiry::AfterSecs(86_400);
        s.transport = crate::model::Transport::Tcp;
        s
    }

    #[test]
    fn spec_fields_are_exactly_the_specs_fields() {
        let v = serde_json::to_value(full_spec()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut known = SPEC_FIELDS.to_vec();
        keys.sort_unstable();
        known.sort_unstable();
        assert_eq!(keys, known);
    }

    #[test]
    fn a_create_body_written_from_the_type_reads_back_the_same() {
        let fp = Fingerprint(format!("sha256:{}", "ab".repeat(32)));
        for r in [
            NewRelationship {
                spec: full_spec(),
                target_fingerprint: Some(fp),
            },
            NewRelationship {
                spec: crate::model::tests::spec(),
                target_fingerprint: None,
            },
        ] {
            let body = serde_json::to_vec(&r).unwrap();
            assert_eq!(NewRelationship::parse(&body).unwrap(), r);
        }
    }

    #[test]
    fn a_create_body_leaves_out_the_settings_not_given() {
        let r = NewRelationship {
            spec: crate::model::tests::spec(),
            target_fingerprint: None,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"source_path": "/srv/data", "target_address": "127.0.0.1", "target_port": 3712,
                   "target_path": "/srv/replica", "blackout_windows": [], "enabled": true})
        );
    }

    #[test]
    fn a_create_body_with_an_unknown_field_or_a_bad_fingerprint_is_refused() {
        let base = json!({"source_path": "/a", "target_address": "h", "target_path": "/b"});
        let refusal = |extra: serde_json::Value| {
            let mut b = base.clone();
            b.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            NewRelationship::parse(&serde_json::to_vec(&b).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(refusal(json!({"bandwith_limit": 5})).contains("unknown field `bandwith_limit`"));
        assert!(refusal(json!({"target_fingerprint": 5})).contains("must be a string, not 5"));
        assert!(refusal(json!({"target_fingerprint": "md5:x"})).contains("must start with"));
        let r = NewRelationship::parse(&serde_json::to_vec(&base).unwrap()).unwrap();
        assert_eq!((r.spec.target_port, r.target_fingerprint), (3712, None));
        assert!(NewRelationship::parse(b"{")
            .unwrap_err()
            .to_string()
            .starts_with("relationship: "));
    }

    #[test]
    fn an_edit_sends_only_what_it_changes_and_null_to_remove() {
        let keep = Edit {
            enabled: Some(false),
            ..Edit::default()
        };
        assert_eq!(
            serde_json::to_value(&keep).unwrap(),
            json!({"enabled": false})
        );
        let clear = Edit {
            map_ids: Some(None),
            bandwidth_limit: Some(None),
            ..Edit::default()
        };
        let body = serde_json::to_value(&clear).unwrap();
        assert_eq!(body, json!({"map_ids": null, "bandwidth_limit": null}));
        assert_eq!(serde_json::from_value::<Edit>(body).unwrap(), clear);
        let set = Edit {
            target_port: Some(4000),
            map_ids: Some(Some(IdMap::default())),
            bandwidth_limit: Some(Some(9)),
            ..Edit::default()
        };
        let body = serde_json::to_value(&set).unwrap();
        assert_eq!(serde_json::from_value::<Edit>(body).unwrap(), set);
    }

    #[test]
    fn token_and_authorize_bodies_are_their_json() {
        let t = NewToken {
            name: "ops-ro".into(),
            role: TokenRole::Observer,
            scope: None,
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v, json!({"name": "ops-ro", "role": "observer"}));
        assert_eq!(serde_json::from_value::<NewToken>(v).unwrap(), t);
        let e = serde_json::from_value::<NewToken>(json!({"name": "x", "role": "root"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown role \"root\""), "{e}");
        let a = Authorize {
            allow_non_empty_target: true,
            allow_devices: true,
            ..Default::default()
        };
        let v = serde_json::to_value(a).unwrap();
        assert_eq!(
            v,
            json!({"allow_non_empty_target": true, "allow_devices": true})
        );
        assert_eq!(serde_json::from_value::<Authorize>(v).unwrap(), a);
        assert_eq!(
            serde_json::from_value::<Authorize>(json!({})).unwrap(),
            Authorize::default()
        );
        assert!(serde_json::from_value::<Authorize>(json!({"allow": true})).is_err());
    }
}
