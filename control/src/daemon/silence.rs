//! The target's events about a silent source: `peer_unreachable` once an authorized
//! relationship's source has not reached this node for `DISCONNECTED_AFTER` (its view then
//! shows `disconnected` unless another state, such as a blackout window, shows first),
//! `peer_reachable` once the source's next poll or report arrives (`target::record_report`).
//! The source says the same of its target (`source::polled`), so the operator of either node
//! learns of an outage from its own events.
//!
//! The outage is recorded in the relationship's row (`peer_unreachable`, as on a source), so
//! each transition is one event, compared under the store's lock, and a daemon restarted
//! during an outage neither repeats its start nor misses its end; the view, the metrics and
//! the upgrade checker show the target's source unreachable from the same flag.

use super::Node;
use crate::events::EventKind;
use crate::model::Role;
use std::sync::Arc;
use std::time::Duration;

/// How often the daemon looks for silent sources: an outage is reported within
/// `DISCONNECTED_AFTER` plus this.
const SILENCE_TICK: Duration = Duration::from_secs(2);

/// Runs until the daemon shuts down.
pub async fn watch(node: Arc<Node>) {
    loop {
        tokio::time::sleep(SILENCE_TICK).await;
        if node.shutting_down() {
            return;
        }
        check(&node);
    }
}

/// One look: records the outage of each live target relationship whose source went silent
/// and that has none recorded; forgets the outage of an ended one (its events end with it).
pub(super) fn check(node: &Node) {
    // A row this release cannot read is left out (the daemon's start logs it, the metrics
    // count it).
    let all = match node.store().list_readable(Some(Role::Target)) {
        Ok(listed) => listed.rows,
        Err(e) => {
            tracing::warn!("looking for silent sources: {e}");
            return;
        }
    };
    for r in all {
        if r.ended && r.peer_unreachable {
            if let Err(e) = node.modify(&r.id, Role::Target, |x| x.peer_unreachable = false) {
                tracing::debug!(id = %r.id, "forgetting an ended relationship's outage: {e}");
            }
            continue;
        }
        if r.ended || r.peer_unreachable || !outage(node, &r) {
            continue;
        }
        // Decided again under the store's lock, and said under it: not over a poll, an end, a
        // delete or a release that came since the list, and never after the end a poll
        // records next.
        let res = node.modify_noting(&r.id, Role::Target, |x| {
            if x.ended || x.peer_unreachable || !outage(node, x) {
                return Vec::new();
            }
            x.peer_unreachable = true;
            vec![(
                EventKind::PeerUnreachable,
                format!(
                    "the source of {} has not reached this node for {} s (no poll, ticket or \
                     report): its node may be down, stopped or cut off from this one",
                    x.spec.target_path,
                    super::DISCONNECTED_AFTER.as_secs()
                ),
            )]
        });
        if let Err(e) = res {
            tracing::debug!(id = %r.id, "recording a silent source: {e}");
        }
    }
}

/// The source of `r` has not reached this node for `DISCONNECTED_AFTER`, whatever state `r`
/// shows (a source polls in a blackout window or with replication disabled too), unless the
/// relationship is being released here (the source was told it ended and stopped polling).
fn outage(node: &Node, r: &crate::model::Relationship) -> bool {
    super::view::source_silent(node, r, node.clock.instant())
        && !super::lock(&node.reverting).contains(&r.id)
}

#[cfg(test)]
mod tests {
    use super::super::{lock, target, test_node, Node, DISCONNECTED_AFTER};
    use crate::events::{EventId, EventKind};
    use crate::model::{Relationship, RelationshipId, Role};
    use crate::store::Visible;
    use std::time::Duration;

    const UNREACHABLE: (EventKind, Option<Role>) = (EventKind::PeerUnreachable, Some(Role::Target));
    const REACHABLE: (EventKind, Option<Role>) = (EventKind::PeerReachable, Some(Role::Target));

    fn kinds(node: &Node) -> Vec<(EventKind, Option<Role>)> {
        let v = Visible {
            source: true,
            target: true,
        };
        let all = node.store().events(Some(EventId(0)), 100, v).unwrap();
        all.into_iter()
            .map(|e| (e.what.kind, e.what.role))
            .collect()
    }

    fn unreachable(node: &Node, id: &RelationshipId) -> bool {
        node.get(id, Role::Target).unwrap().peer_unreachable
    }

    /// A poll from the source, as the peer port takes it.
    fn poll(node: &Node, id: &RelationshipId) {
        lock(&node.last_contact).insert(id.clone(), node.clock.instant());
        target::record_report(node, id, false, None, None, None).unwrap();
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
        clock.advance(DISCONNECTED_AFTER + Duration::from_secs(1));
        super::check(&node);
        assert_eq!(kinds(&node), []);

        // Authorized, with continuous replication disabled (its view never shows
        // `disconnected`): the source polls all the same, so its silence is an outage.
        r.authorized = true;
        r.spec.enabled = false;
        node.store().update(&r).unwrap();
        poll(&node, &id);
        clock.advance(DISCONNECTED_AFTER);
        super::check(&node);
        assert_eq!(kinds(&node), [], "30 s is not yet longer than 30 s");
        clock.advance(Duration::from_millis(1));
        super::check(&node);
        super::check(&node);
        assert_eq!(kinds(&node), [UNREACHABLE], "once per outage");
        assert!(unreachable(&node, &id));

        poll(&node, &id);
        poll(&node, &id);
        super::check(&node);
        assert_eq!(kinds(&node), [UNREACHABLE, REACHABLE]);
        assert!(!unreachable(&node, &id));

        // An outage the daemon was restarted in: not said again, and its end is said.
        clock.advance(DISCONNECTED_AFTER * 2);
        super::check(&node);
        drop(node);
        let (node, clock) = test_node(dir.path());
        assert!(unreachable(&node, &id));
        clock.advance(DISCONNECTED_AFTER * 2);
        super::check(&node);
        assert_eq!(kinds(&node), [UNREACHABLE, REACHABLE, UNREACHABLE]);
        poll(&node, &id);
        assert_eq!(kinds(&node).len(), 4);

        // Being made writable (the source was told and stopped polling): no alarm.
        lock(&node.reverting).insert(id.clone());
        clock.advance(DISCONNECTED_AFTER * 2);
        super::check(&node);
        assert_eq!(kinds(&node).len(), 4);
        lock(&node.reverting).remove(&id);

        // Silent, then ended: its outage is forgotten without an event.
        super::check(&node);
        assert_eq!(kinds(&node).len(), 5);
        node.modify(&id, Role::Target, |x| x.ended = true).unwrap();
        super::check(&node);
        assert!(!unreachable(&node, &id));
        assert_eq!(kinds(&node).len(), 5);
    }
}
