//! Policy snapshots owed: in a cluster, one due while its node cannot tell whether it holds
//! the relationship (its etcd view not current, no record yet, snapshot ids being renewed)
//! is kept here and tried again at each policy tick for `OWED_FOR`, then logged as missed.

use super::{links, try_take, Tried};
use crate::daemon::{lock, Node};
use crate::model::{Relationship, RelationshipId, Role};
use crate::policy::{Policy, PolicyName};
use std::time::{Duration, Instant};

/// How long a policy snapshot this node could not take when its policy fired, for want of
/// knowing whether it holds the relationship (`owners::Snapshots::NotYet`) or of snapshot ids
/// (renewed within a second), is tried again: then it is logged as missed.
pub const OWED_FOR: Duration = Duration::from_secs(300);
/// Snapshots owed at most; one more is logged as missed at once.
const MAX_OWED: usize = 1024;

/// A policy snapshot of a relationship owed since `since` (`OWED_FOR`).
pub(crate) struct Owed {
    id: RelationshipId,
    policy: PolicyName,
    since: Instant,
}

impl Owed {
    /// Whether this is the snapshot of relationship `id` that policy `policy` owes.
    fn is(&self, id: &RelationshipId, policy: &PolicyName) -> bool {
        &self.id == id && &self.policy == policy
    }
}

/// Owes `p`'s snapshot of `r` (due at `now`, not taken for `why`): at most one per
/// relationship and policy (a snapshot taken late stands for every firing it was owed for),
/// at most `MAX_OWED`. What to tell the caller.
pub(super) fn owe(node: &Node, r: &Relationship, p: &Policy, why: &str, now: Instant) -> String {
    let mut all = lock(&node.snapshots_owed);
    let again = all.iter().any(|o| o.is(&r.id, &p.name));
    let msg = if again || all.len() < MAX_OWED {
        if !again {
            all.push(Owed {
                id: r.id.clone(),
                policy: p.name.clone(),
                since: now,
            });
        }
        format!(
            "relationship {}: policy {} snapshot not taken now ({why}); it is tried again for {}s",
            r.id,
            p.name,
            OWED_FOR.as_secs()
        )
    } else {
        tracing::error!(id = %r.id, policy = %p.name, "policy snapshot missed: {why}, and {MAX_OWED} are owed already");
        format!(
            "relationship {}: policy {} snapshot missed ({why})",
            r.id, p.name
        )
    };
    tracing::warn!("{msg}");
    msg
}

/// Tries the snapshots owed again: each is taken, dropped (the relationship or policy is gone,
/// or another node holds it), or kept until `OWED_FOR` is over.
pub(super) fn take_owed(node: &Node) {
    let owed = std::mem::take(&mut *lock(&node.snapshots_owed));
    let now = node.clock.instant();
    let mut keep = Vec::new();
    for o in owed {
        let r = node.get(&o.id, Role::Source);
        let p = node.store().policy(&o.policy).map(|(p, _)| p);
        let (r, p) = match (r, p) {
            (Ok(r), Ok(p)) if p.enabled && links(&r, &p) => (r, p),
            _ => {
                tracing::warn!(id = %o.id, policy = %o.policy, "owed policy snapshot not taken: the relationship, the policy or their link is gone, or the policy disabled");
                continue;
            }
        };
        match try_take(node, &r, &p) {
            Tried::Owed(why) if now.saturating_duration_since(o.since) < OWED_FOR => {
                tracing::debug!(id = %r.id, policy = %p.name, "policy snapshot still owed: {why}");
                keep.push(o);
            }
            Tried::Owed(why) => {
                tracing::error!(id = %r.id, policy = %p.name, "policy snapshot missed: {why} for {}s after it was due", OWED_FOR.as_secs());
            }
            Tried::NotHere => {
                tracing::warn!(id = %r.id, policy = %p.name, "owed policy snapshot not taken: another node of the cluster holds the relationship now");
            }
            // Taken, or failed (logged).
            Tried::Taken(_) | Tried::Failed(_) => {}
        }
    }
    // Snapshots owed meanwhile (a policy run from the API) stay, once each.
    let mut all = lock(&node.snapshots_owed);
    for o in keep {
        if !all.iter().any(|x| x.is(&o.id, &o.policy)) {
            all.push(o);
        }
    }
}
