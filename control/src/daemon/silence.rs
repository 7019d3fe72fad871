//! The target's events about a silent source: `peer_unreachable` once an authorized
//! relationship's source has not reached this node for `DISCONNECTED_AFTER` (its view shows
//! `disconnected` then), `peer_reachable` once it is heard from again. The source says the
//! same of its target (`source::polled`), so the operator of either node learns of an outage
//! from its own events.
//!
//! Kept in memory, as the contact times are: a daemon restarted during an outage says so
//! again once the outage has lasted `DISCONNECTED_AFTER` from its start.

use super::view::source_silent;
use super::Node;
use crate::events::EventKind;
use crate::model::{RelationshipId, Role};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// How often the daemon looks for silent sources: an outage is reported within
/// `DISCONNECTED_AFTER` plus this, and an end of one within this.
const SILENCE_TICK: Duration = Duration::from_secs(2);

/// Runs until the daemon shuts down.
pub async fn watch(node: Arc<Node>) {
    let mut silent = HashSet::new();
    loop {
        tokio::time::sleep(SILENCE_TICK).await;
        if node.shutting_down() {
            return;
        }
        check(&node, &mut silent);
    }
}

/// One look: records an event for each target relationship that went silent or was heard
/// from again since the last look. `silent`: the relationships reported silent.
pub(super) fn check(node: &Node, silent: &mut HashSet<RelationshipId>) {
    let all = match node.store().list(Some(Role::Target)) {
        Ok(all) => all,
        Err(e) => {
            tracing::warn!("looking for silent sources: {e}");
            return;
        }
    };
    let mono = node.clock.instant();
    let mut live = HashSet::new();
    for r in all.into_iter().filter(|r| r.authorized && !r.ended) {
        let now = source_silent(node, &r, mono);
        let was = silent.contains(&r.id);
        if now && !was {
            node.event(
                EventKind::PeerUnreachable,
                Some((&r.id, Role::Target)),
                format!(
                    "the source of {} has not reached this node for {} s (no poll, ticket or \
                     report): its node may be down, stopped or cut off from this one",
                    r.spec.target_path,
                    super::DISCONNECTED_AFTER.as_secs()
                ),
            );
            silent.insert(r.id.clone());
        } else if was && !now {
            node.event(
                EventKind::PeerReachable,
                Some((&r.id, Role::Target)),
                format!(
                    "the source of {} reaches this node again",
                    r.spec.target_path
                ),
            );
            silent.remove(&r.id);
        }
        live.insert(r.id);
    }
    // Ended, deleted or reversed: its events end with it.
    silent.retain(|id| live.contains(id));
}

#[cfg(test)]
mod tests {
    use super::super::{lock, test_node, DISCONNECTED_AFTER};
    use crate::clock::Clock;
    use crate::events::EventId;
    use crate::events::EventKind;
    use crate::model::{Relationship, RelationshipId, Role};
    use crate::store::Visible;
    use std::collections::HashSet;
    use std::time::Duration;

    fn kinds(node: &super::Node) -> Vec<(EventKind, Option<Role>)> {
        let v = Visible {
            source: true,
            target: true,
        };
        let all = node.store().events(Some(EventId(0)), 100, v).unwrap();
        all.into_iter()
            .map(|e| (e.what.kind, e.what.role))
            .collect()
    }

    #[test]
    fn a_target_says_once_when_its_source_went_silent_and_when_it_is_heard_again() {
        let dir = tempfile::tempdir().unwrap();
        let (node, clock) = test_node(dir.path());
        let id = RelationshipId::new_random();
        let mut r = Relationship::new(
            id.clone(),
            Role::Target,
            crate::model::tests::spec(),
            0,
            None,
        );
        // Not yet authorized: its source owes it nothing.
        node.store().insert(&r).unwrap();
        let mut silent = HashSet::new();
        clock.advance(DISCONNECTED_AFTER + Duration::from_secs(1));
        super::check(&node, &mut silent);
        assert_eq!(kinds(&node), []);

        r.authorized = true;
        node.store().update(&r).unwrap();
        lock(&node.last_contact).insert(id.clone(), clock.instant());
        clock.advance(DISCONNECTED_AFTER);
        super::check(&node, &mut silent);
        assert_eq!(kinds(&node), [], "30 s is not yet longer than 30 s");
        clock.advance(Duration::from_millis(1));
        super::check(&node, &mut silent);
        super::check(&node, &mut silent);
        let unreachable = (EventKind::PeerUnreachable, Some(Role::Target));
        assert_eq!(kinds(&node), [unreachable], "once per outage");

        lock(&node.last_contact).insert(id.clone(), clock.instant());
        super::check(&node, &mut silent);
        super::check(&node, &mut silent);
        let reachable = (EventKind::PeerReachable, Some(Role::Target));
        assert_eq!(kinds(&node), [unreachable, reachable]);

        // Silent again, then ended (made writable): no event about it after its end.
        clock.advance(DISCONNECTED_AFTER * 2);
        super::check(&node, &mut silent);
        assert_eq!(kinds(&node).len(), 3);
        node.modify(&id, Role::Target, |x| x.ended = true).unwrap();
        lock(&node.last_contact).insert(id.clone(), clock.instant());
        super::check(&node, &mut silent);
        assert_eq!(kinds(&node).len(), 3);
        assert!(silent.is_empty());
    }
}
