//! API tokens of two scopes. A node's own tokens (its `admin.token` among them) are in its
//! SQLite and valid on that node alone, also while etcd is out of reach. On a cluster, tokens
//! made with scope `cluster` are kept in etcd (`/mover/v1/tokens/<name>`, only the hash, as
//! in SQLite) and valid on every node: each node's watch brings them, and a deletion, within
//! the watch's delay.
//!
//! A cluster token is honoured only while the node has a working etcd session and has read
//! the whole cluster (`Membership::loaded`): a node cut off from etcd cannot know whether a
//! token was deleted meanwhile, so it answers 503 for tokens it does not hold itself (its own
//! admin token still works). A node notices a lost session at once when etcd closes the
//! connection, and within `cluster::DOWN_BOUND` (5 s: its lease's life, checked every
//! second) when the network silently drops it: that is the longest a token deleted elsewhere
//! stays honoured on a node cut off.
//! The price is cluster tokens during an etcd outage.

use super::Node;
use crate::api_types::TokenScope;
use crate::auth::{self, TokenRole};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Most cluster tokens kept (each is a record of about 200 bytes that every node's view holds
/// and that a request unknown to the node's own database is looked up in).
pub const MAX_CLUSTER_TOKENS: usize = 1024;
const PREFIX: &str = "tokens/";

/// A cluster token's record in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    pub name: String,
    pub role: TokenRole,
    /// SHA-256 of the token, hex (`auth::hash`).
    pub hash: String,
    pub created_ns: i64,
}

/// Who a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Identity {
    Known {
        name: String,
        role: TokenRole,
        scope: TokenScope,
    },
    Unknown,
    /// Not this node's own and the cluster's tokens cannot be checked now (no etcd session).
    Unchecked,
}

fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// The cluster's token records as this node's view holds them; one that does not parse is
/// skipped with a warning (it can grant nothing).
fn records(m: &crate::cluster::Membership) -> Vec<Record> {
    m.shared(PREFIX)
        .into_iter()
        .filter_map(|(k, v)| match serde_json::from_slice::<Record>(&v) {
            Ok(r) if k == key(&r.name) => Some(r),
            Ok(r) => {
                tracing::warn!("{k}: a token record named {:?}: ignored", r.name);
                None
            }
            Err(e) => {
                tracing::warn!("{k}: not a token record ({e}): ignored");
                None
            }
        })
        .collect()
}

/// The cluster's token records by hash, as of the view's `Membership::changes`: a request
/// whose token is not the node's own costs a map lookup, not a parse of every record (the
/// index is built again at the first request after the view changed).
#[derive(Default)]
pub(super) struct Index {
    at: Option<u64>,
    by_hash: HashMap<String, Record>,
}

/// The records by hash; of two with one hash (never made so), the first by name.
fn by_hash(records: Vec<Record>) -> HashMap<String, Record> {
    let mut all = HashMap::with_capacity(records.len());
    for r in records {
        all.entry(r.hash.clone()).or_insert(r);
    }
    all
}

/// The cluster token whose hash is `hash`, from the index (rebuilt if the view changed).
fn find(node: &Node, m: &crate::cluster::Membership, hash: &str) -> Option<Record> {
    // Read before the records: a change in between makes the next request build it again.
    let now = m.changes(PREFIX.trim_end_matches('/'));
    let mut ix = super::lock(&node.token_index);
    if ix.at != Some(now) {
        ix.by_hash = by_hash(records(m));
        ix.at = Some(now);
    }
    ix.by_hash.get(hash).cloned()
}

/// Who `token` is on this node: its own tokens first, then the cluster's.
pub(super) fn identify(node: &Node, token: &str) -> Result<Identity> {
    let hash = auth::hash(token);
    if let Some((name, role)) = node.store().token_by_hash(&hash)? {
        return Ok(Identity::Known {
            name,
            role: TokenRole::parse(&role)?,
            scope: TokenScope::Node,
        });
    }
    let Some(m) = &node.cluster else {
        return Ok(Identity::Unknown);
    };
    if !m.loaded() {
        return Ok(Identity::Unchecked);
    }
    Ok(match find(node, m, &hash) {
        Some(r) => Identity::Known {
            name: r.name,
            role: r.role,
            scope: TokenScope::Cluster,
        },
        None => Identity::Unknown,
    })
}

/// Every token this node honours: (name, role, scope), by name then scope.
pub(super) fn list(node: &Node) -> Result<Vec<(String, String, TokenScope)>> {
    let mut all: Vec<_> = node
        .store()
        .tokens()?
        .into_iter()
        .map(|(n, r)| (n, r, TokenScope::Node))
        .collect();
    if let Some(m) = &node.cluster {
        all.extend(
            records(m)
                .into_iter()
                .map(|r| (r.name, r.role.name().to_string(), TokenScope::Cluster)),
        );
    }
    all.sort_by(|a, b| (&a.0, a.2).cmp(&(&b.0, b.2)));
    Ok(all)
}

/// The scope a new token gets when the request names none.
pub(super) fn default_scope(in_cluster: bool) -> TokenScope {
    if in_cluster {
        TokenScope::Cluster
    } else {
        TokenScope::Node
    }
}

fn exists(name: &str) -> Error {
    Error::Invalid(format!("a token named {name:?} already exists"))
}

/// Makes a token named `name`; the token, shown this once. One name is one token on this
/// node: a node token's name is refused if the cluster has it, and the other way round.
pub(super) async fn create(
    node: &Node,
    name: &str,
    role: TokenRole,
    scope: TokenScope,
) -> Result<String> {
    auth::check_name(name)?;
    let token = auth::new_token()?;
    let hash = auth::hash(&token);
    let created_ns = node.clock.now_ns();
    match (scope, &node.cluster) {
        (TokenScope::Node, m) => {
            if m.as_ref().is_some_and(|m| records(m).iter().any(|r| r.name == name)) {
                return Err(exists(name));
            }
            node.store()
                .insert_token(name, role.name(), &hash, created_ns)?;
        }
        (TokenScope::Cluster, None) => {
            return Err(Error::Invalid(
                "scope cluster: this node is not in a cluster (start its daemon with --cluster etcd://HOST:PORT)".into(),
            ))
        }
        (TokenScope::Cluster, Some(m)) => {
            if node.store().tokens()?.iter().any(|(n, _)| n == name) {
                return Err(exists(name));
            }
            if !m.loaded() {
                return Err(Error::Unavailable(
                    "etcd cannot be reached now: a cluster token cannot be made (a node token can, with scope node)".into(),
                ));
            }
            if records(m).len() >= MAX_CLUSTER_TOKENS {
                return Err(Error::Invalid(format!(
                    "the cluster holds {MAX_CLUSTER_TOKENS} tokens already; delete one first"
                )));
            }
            let rec = Record {
                name: name.to_string(),
                role,
                hash,
                created_ns,
            };
            let value = serde_json::to_vec(&rec).map_err(|e| Error::Invalid(e.to_string()))?;
            if !m.put_if(&key(name), None, value, None).await? {
                return Err(exists(name));
            }
        }
    }
    Ok(token)
}

/// Which of a name's tokens a deletion means: `scope` if given, else the only one.
fn which(name: &str, local: bool, cluster: bool, scope: Option<TokenScope>) -> Result<TokenScope> {
    let missing = || Error::Missing(format!("token {name:?} not found"));
    match (scope, local, cluster) {
        (Some(TokenScope::Node), false, _) | (Some(TokenScope::Cluster), _, false) => Err(missing()),
        (Some(s), _, _) => Ok(s),
        (None, true, true) => Err(Error::Conflict(format!(
            "a node token and a cluster token are both named {name:?}: say which, with ?scope=node or ?scope=cluster"
        ))),
        (None, true, false) => Ok(TokenScope::Node),
        (None, false, true) => Ok(TokenScope::Cluster),
        (None, false, false) => Err(missing()),
    }
}

/// Deletes the token `name`. This node's last admin token of its own is kept (without one,
/// nobody could make tokens on it again while etcd is away); cluster tokens may all go.
pub(super) async fn delete(node: &Node, name: &str, scope: Option<TokenScope>) -> Result<()> {
    // Without a current view, a cluster token of this name may exist unseen: deleting the
    // node's one instead would leave it valid.
    let stale = node.cluster.as_ref().is_some_and(|m| !m.loaded());
    if stale && scope != Some(TokenScope::Node) {
        return Err(Error::Unavailable(
            "etcd cannot be reached now: a cluster token cannot be deleted, nor told apart from a node token of the same name (delete a node token with ?scope=node)".into(),
        ));
    }
    let cluster = node
        .cluster
        .as_ref()
        .is_some_and(|m| records(m).iter().any(|r| r.name == name));
    let local = node.store().tokens()?.iter().any(|(n, _)| n == name);
    match which(name, local, cluster, scope)? {
        TokenScope::Node => {
            // One guard for the check and the delete, so two requests cannot each delete one
            // of the last two admin tokens.
            let store = node.store();
            let tokens = store.tokens()?;
            let admin = TokenRole::Admin.name();
            let is_admin = tokens.iter().any(|(t, r)| t == name && r == admin);
            // Found by the schemathesis run: a generated DELETE /v1/tokens/admin locked the API.
            if is_admin && tokens.iter().filter(|(_, r)| r == admin).count() == 1 {
                return Err(Error::Conflict(format!(
                    "token {name:?} is this node's last admin token; create another first"
                )));
            }
            if !store.delete_token(name)? {
                return Err(Error::Missing(format!("token {name:?} not found")));
            }
        }
        TokenScope::Cluster => {
            let m = node.cluster.as_ref().ok_or_else(|| {
                Error::Missing(format!(
                    "token {name:?} not found: this node is not in a cluster"
                ))
            })?;
            m.delete(&key(name)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, token: &str) -> Record {
        Record {
            name: name.into(),
            role: TokenRole::Observer,
            hash: auth::hash(token),
            created_ns: 1,
        }
    }

    #[test]
    fn a_cluster_token_is_found_by_its_hash_only() {
        let all = [rec("a", "mvr_1"), rec("b", "mvr_2"), rec("c", "mvr_2")];
        let ix = by_hash(all.to_vec());
        assert_eq!(ix[&auth::hash("mvr_2")].name, "b");
        assert!(!ix.contains_key(&auth::hash("mvr_3")));
        assert!(!ix.contains_key("mvr_2"));
        let v = serde_json::to_value(&all[0]).unwrap();
        assert_eq!(v["role"], "observer");
        assert!(!v.to_string().contains("mvr_1"));
    }

    #[test]
    fn a_deletion_names_one_token_or_is_refused() {
        use TokenScope::*;
        assert_eq!(which("x", true, false, None).unwrap(), Node);
        assert_eq!(which("x", false, true, None).unwrap(), Cluster);
        assert_eq!(which("x", true, true, Some(Cluster)).unwrap(), Cluster);
        assert_eq!(which("x", true, true, Some(Node)).unwrap(), Node);
        assert!(
            matches!(which("x", true, true, None), Err(Error::Conflict(m)) if m.contains("scope="))
        );
        assert!(matches!(
            which("x", false, false, None),
            Err(Error::Missing(_))
        ));
        assert!(matches!(
            which("x", false, true, Some(Node)),
            Err(Error::Missing(_))
        ));
        assert!(matches!(
            which("x", true, false, Some(Cluster)),
            Err(Error::Missing(_))
        ));
        assert_eq!(default_scope(true), Cluster);
        assert_eq!(default_scope(false), Node);
    }
}
