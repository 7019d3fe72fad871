//! `decide` played against worlds built by hand and seeded ones.

use super::*;
use crate::model::Relationship;

fn name(n: &str) -> NodeName {
    NodeName::try_from(n.to_string()).unwrap()
}

fn id(i: u32) -> RelationshipId {
    RelationshipId::parse(&format!("{i:032x}")).unwrap()
}

fn rel(i: u32) -> Relationship {
    let mut r = Relationship::new(id(i), Role::Source, crate::model::tests::spec(), 1, None);
    r.authorized = true;
    r.pinned = Some(PinnedDir {
        path: "/src".into(),
        dev: 1,
        ino: 2,
    });
    r
}

/// The source directory as another client of the shared file system sees it.
fn here(r: &Relationship) -> PinnedDir {
    let p = r.pinned.clone().unwrap();
    PinnedDir { dev: 9, ..p }
}

fn held(owner: &str, fp: &str, r: &Relationship) -> (Held, Vec<u8>) {
    let h = Held {
        owner: name(owner),
        fingerprint: fp.into(),
        relationship: published(r),
        snapshot_ids_below: reserve(0, 0),
        term: 1,
    };
    let raw = encode(&h).unwrap();
    (h, raw)
}

/// `held` by `owner` ("fp"), changed by `f` before it is encoded.
fn held_as(owner: &str, r: &Relationship, f: impl FnOnce(&mut Held)) -> (Held, Vec<u8>) {
    let mut h = held(owner, "fp", r).0;
    f(&mut h);
    let raw = encode(&h).unwrap();
    (h, raw)
}

struct World {
    me: NodeName,
    local: Vec<Relationship>,
    ids: BTreeMap<RelationshipId, u64>,
    records: BTreeMap<RelationshipId, (Held, Vec<u8>)>,
    overdue: BTreeSet<NodeName>,
    unreadable: BTreeSet<String>,
    leader: bool,
    shared: bool,
}

impl World {
    fn decide(&self) -> Vec<Action> {
        let sees = |r: &Relationship| self.shared.then(|| here(r));
        decide(&Seen {
            me: &self.me,
            fingerprint: "fp",
            may_take: self.leader,
            local: &self.local,
            unreadable: &self.unreadable,
            snapshot_ids: &self.ids,
            records: &self.records,
            overdue: &self.overdue,
            sees: &sees,
        })
    }
}

fn world(me: &str) -> World {
    World {
        me: name(me),
        local: vec![],
        ids: BTreeMap::new(),
        records: BTreeMap::new(),
        overdue: BTreeSet::new(),
        unreadable: BTreeSet::new(),
        leader: true,
        shared: true,
    }
}

#[test]
fn an_owner_publishes_what_a_takeover_needs_but_not_each_jobs_outcome() {
    let mut w = world("a");
    let r = rel(1);
    w.local.push(r.clone());
    let a = w.decide();
    assert!(
        matches!(&a[..], [Action::Publish { expected: None, .. }]),
        "{a:?}"
    );
    w.records.insert(r.id.clone(), held("a", "fp", &r));
    // A job's start and its outcome cost no write.
    w.local[0].job_running = true;
    w.local[0].recovery_point_ns = Some(5);
    w.local[0].last_attempt = Some(crate::model::Attempt {
        at_ns: 5,
        ok: true,
        message: "done".into(),
    });
    assert_eq!(w.decide(), vec![]);
    // A change of what a takeover needs does, and carries the outcome along.
    w.local[0].epoch = 1;
    let a = w.decide();
    assert!(
        matches!(&a[..], [Action::Publish { expected: Some(_), held, .. }] if held.relationship.recovery_point_ns == Some(5) && held.relationship.epoch == 1),
        "{a:?}"
    );
    // Deleted here (or ended): the record stays as a tombstone.
    w.local.clear();
    assert!(matches!(&w.decide()[..], [Action::Publish { held, .. }] if held.relationship.ended));
}

#[test]
fn the_leader_takes_over_an_overdue_owners_relationship_only_when_it_can_run_it() {
    let mut w = world("b");
    let r = rel(1);
    w.records.insert(r.id.clone(), held("a", "fp", &r));
    // Down, but not for long enough yet.
    assert_eq!(w.decide(), vec![]);
    w.overdue.insert(name("a"));
    let a = w.decide();
    match &a[..] {
        [Action::Take { held, from, .. }] => {
            assert_eq!((&held.owner, from), (&name("b"), &name("a")));
            assert!(held.relationship.job_running, "a job is owed at once");
            let pin = held.relationship.pinned.as_ref().unwrap();
            assert_eq!(
                (pin.ino, pin.dev),
                (2, 9),
                "pinned anew, on this node's device"
            );
        }
        other => panic!("{other:?}"),
    }
    // Drained: it takes nothing.
    w.leader = false;
    assert_eq!(w.decide(), vec![]);
    w.leader = true;
    // Not on the shared file system.
    w.shared = false;
    assert!(matches!(&w.decide()[..], [Action::Cannot { .. }]));
    w.shared = true;
    // Another identity than the owner's: the target would refuse it.
    w.records.insert(r.id.clone(), held("a", "other", &r));
    assert!(matches!(&w.decide()[..], [Action::Cannot { why, .. }] if why.contains("identity")));
    // An ended relationship is nothing to take over.
    let mut ended = r.clone();
    ended.ended = true;
    w.records.insert(r.id.clone(), held("a", "fp", &ended));
    assert_eq!(w.decide(), vec![]);
}

#[test]
fn a_relationship_stored_here_unreadable_keeps_its_record_and_is_not_taken_over() {
    // Its owner's own record: a readable copy gone from the list would be tombstoned.
    let mut w = world("a");
    let r = rel(1);
    w.records.insert(r.id.clone(), held("a", "fp", &r));
    assert!(matches!(&w.decide()[..], [Action::Publish { held, .. }] if held.relationship.ended));
    w.unreadable.insert(r.id.to_string());
    assert_eq!(w.decide(), vec![]);
    // Another node's, overdue: not taken over while a row of that id is unreadable here.
    let mut w = world("b");
    w.records.insert(r.id.clone(), held("a", "fp", &r));
    w.overdue.insert(name("a"));
    w.unreadable.insert(r.id.to_string());
    assert!(
        matches!(&w.decide()[..], [Action::Cannot { why, .. }] if why.contains("cannot be read"))
    );
    // The others go on: a readable relationship of this node is published.
    let other = rel(2);
    w.local.push(other.clone());
    assert!(w
        .decide()
        .iter()
        .any(|a| matches!(a, Action::Publish { id, .. } if *id == other.id)));
}

#[test]
fn a_record_passing_to_another_holder_raises_its_term_and_its_owner_keeps_it() {
    let r = rel(1);
    let mut b = world("b");
    b.overdue.insert(name("a"));
    b.records
        .insert(r.id.clone(), held_as("a", &r, |h| h.term = 4));
    assert!(
        matches!(&b.decide()[..], [Action::Take { held, .. }] if held.term == 5),
        "a takeover raises the term"
    );
    // The owner rewrites its record (a change of definition) at its term.
    let mut a = world("a");
    let h = held_as("a", &r, |h| h.term = 5);
    a.records.insert(r.id.clone(), h.clone());
    let mut edited = r.clone();
    edited.spec.enabled = !edited.spec.enabled;
    a.local.push(edited);
    assert!(matches!(&a.decide()[..], [Action::Publish { held, .. }] if held.term == 5));
    // A copy winning the record back by a newer epoch raises it.
    a.local[0].epoch += 1;
    a.records.insert(
        r.id.clone(),
        held_as("a", &r, |h| {
            h.term = 5;
            h.relationship.ended = true;
        }),
    );
    assert!(matches!(&a.decide()[..], [Action::Publish { held, .. }] if held.term == 6));
    // The scheduler's light read gives it.
    let l = Holding::read(&encode(&h.0).unwrap()).unwrap();
    assert_eq!(l.term, 5);
}

#[test]
fn an_owner_back_after_a_takeover_drops_its_copy_and_runs_no_job_of_it() {
    let mut w = world("a");
    let r = rel(1);
    w.local.push(r.clone());
    w.records.insert(r.id.clone(), held("b", "fp", &r));
    assert_eq!(
        w.decide(),
        vec![Action::Drop {
            id: r.id.clone(),
            owner: name("b")
        }]
    );
}

#[test]
fn a_stale_copy_obeys_a_tombstone_and_a_newer_epoch_wins_the_record() {
    let mut w = world("a");
    let r = rel(1);
    w.local.push(r.clone());
    // b took it over, then deleted it: its tombstone stays, and a's old copy goes.
    let mut dead = r.clone();
    dead.ended = true;
    w.records.insert(r.id.clone(), held("b", "fp", &dead));
    assert!(matches!(&w.decide()[..], [Action::Drop { .. }]));
    // Reversed towards a (the epoch moved on): a's copy is newer and claims the record.
    w.local[0].epoch = 2;
    let a = w.decide();
    assert!(
        matches!(&a[..], [Action::Publish { expected: Some(_), held, .. }]
            if held.owner == name("a") && !held.relationship.ended),
        "{a:?}"
    );
    // b, whose copy became the target of the reverse, leaves a tombstone, not nothing.
    let mut b = world("b");
    b.records.insert(r.id.clone(), held("b", "fp", &r));
    let mut t = r.clone();
    t.role = Role::Target;
    b.local.push(t);
    let a = b.decide();
    assert!(
        matches!(&a[..], [Action::Publish { held, .. }] if held.relationship.ended),
        "{a:?}"
    );
    // A tombstone is nothing to take over.
    let mut c = world("c");
    c.overdue.insert(name("b"));
    c.records.insert(r.id.clone(), held("b", "fp", &dead));
    assert_eq!(c.decide(), vec![]);
}

/// Plays `me`'s actions against `etcd` as its transactions would (a stale `expected`, or
/// an owner back up, fails them); counts takes and drops.
fn play(
    me: &NodeName,
    actions: Vec<Action>,
    etcd: &mut BTreeMap<RelationshipId, (Held, Vec<u8>)>,
    store: &mut Vec<Relationship>,
    ids: &mut BTreeMap<RelationshipId, u64>,
    up: &BTreeSet<NodeName>,
    counts: &mut (u32, u32),
) {
    let now = |etcd: &BTreeMap<RelationshipId, (Held, Vec<u8>)>, id: &RelationshipId| {
        etcd.get(id).map(|(_, raw)| raw.clone())
    };
    for a in actions {
        match a {
            Action::Publish {
                id,
                held,
                expected,
                ids_from,
            } => {
                let last = ids.entry(id.clone()).or_insert(0);
                *last = (*last).max(ids_from);
                if now(etcd, &id) == expected {
                    let raw = encode(&held).unwrap();
                    etcd.insert(id, (*held, raw));
                }
            }
            Action::Drop { id, .. } => {
                counts.1 += 1;
                store.retain(|r| r.id != id);
            }
            Action::Take {
                held,
                expected,
                from,
                ids_from,
            } => {
                let id = held.relationship.id.clone();
                if now(etcd, &id) == Some(expected) && !up.contains(&from) {
                    counts.0 += 1;
                    store.push(held.relationship.clone());
                    let last = ids.entry(id.clone()).or_insert(0);
                    *last = (*last).max(ids_from);
                    let raw = encode(&held).unwrap();
                    etcd.insert(id, (*held, raw));
                }
            }
            Action::Cannot { .. } => panic!("{me}: every node can take here"),
        }
    }
}

#[test]
fn the_schedulers_light_read_of_a_record_agrees_with_the_record() {
    let r = rel(1);
    for h in [held("a", "fp", &r).0, tombstone(&held("b", "fp", &r).0)] {
        let l = Holding::read(&encode(&h).unwrap()).unwrap();
        assert_eq!(
            (l.ended(), l.owner),
            (h.relationship.ended, h.owner.clone())
        );
    }
}

#[test]
fn a_record_reserves_snapshot_ids_ahead_and_a_new_owner_starts_above_them() {
    assert_eq!(reserve(0, 0), 2 * SNAPSHOT_ID_BLOCK);
    assert_eq!(reserve(1536, 2048), 2048);
    assert_eq!(reserve(1537, 2048), 3072);
    assert_eq!(reserve(u64::MAX - 1, 0), u64::MAX);
    // The owner's record is rewritten once its ids come within half a block of it.
    let r = rel(1);
    let mut w = world("a");
    w.local.push(r.clone());
    w.records.insert(r.id.clone(), held("a", "fp", &r));
    assert_eq!(w.decide(), vec![]);
    w.ids.insert(r.id.clone(), 1600);
    assert!(
        matches!(&w.decide()[..], [Action::Publish { held, .. }] if held.snapshot_ids_below == 3072)
    );
    // A taker carries the reservation it took over.
    let mut b = world("b");
    b.overdue.insert(name("a"));
    b.records.insert(
        r.id.clone(),
        held_as("a", &r, |h| h.snapshot_ids_below = 5120),
    );
    assert!(
        matches!(&b.decide()[..], [Action::Take { held, ids_from: 5119, .. }] if held.snapshot_ids_below == 6144)
    );
    // A copy that wins the record by a newer epoch (a reverse brought it back here, where
    // its counter was forgotten) goes on above the record's reservation too.
    let mut c = world("c");
    let mut dead = r.clone();
    dead.ended = true;
    c.records.insert(
        r.id.clone(),
        held_as("c", &dead, |h| h.snapshot_ids_below = 3072),
    );
    let mut back = r.clone();
    back.epoch = r.epoch + 1;
    c.local.push(back);
    assert!(
        matches!(&c.decide()[..], [Action::Publish { held, ids_from: 3071, .. }] if held.snapshot_ids_below == 4096)
    );
}

#[test]
fn seeded_takeovers_and_deletes_leave_every_relationship_with_one_owner() {
    // Three nodes, five relationships; random nodes die and come back, an owner now and
    // then deletes one, and each step a random node up plays one pass.
    let names = [name("a"), name("b"), name("c")];
    let mut counts = (0, 0);
    let mut renewed = 0u32;
    for seed in 0..200u64 {
        let mut rng = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut next = |n: u64| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) % n
        };
        let mut stores: BTreeMap<NodeName, Vec<Relationship>> =
            names.iter().map(|n| (n.clone(), vec![])).collect();
        for i in 0..5 {
            let owner = &names[next(3) as usize];
            stores.get_mut(owner).unwrap().push(rel(i));
        }
        let mut etcd: BTreeMap<RelationshipId, (Held, Vec<u8>)> = BTreeMap::new();
        let mut up: BTreeSet<NodeName> = names.iter().cloned().collect();
        let mut deleted: BTreeSet<RelationshipId> = BTreeSet::new();
        let mut ids: BTreeMap<NodeName, BTreeMap<RelationshipId, u64>> =
            names.iter().map(|n| (n.clone(), BTreeMap::new())).collect();
        let mut given: BTreeSet<(RelationshipId, u64)> = BTreeSet::new();
        let mut terms: BTreeMap<RelationshipId, (NodeName, u64)> = BTreeMap::new();
        for _ in 0..300 {
            if next(10) == 0 {
                let n = names[next(3) as usize].clone();
                if !up.remove(&n) {
                    up.insert(n);
                }
            }
            let me = names[next(3) as usize].clone();
            if !up.contains(&me) {
                continue;
            }
            let store = stores.get_mut(&me).unwrap();
            if next(30) == 0 {
                // An operator deletes a relationship where it is held (`check_held`).
                let mine = |r: &&mut Relationship| {
                    !r.ended
                        && etcd
                            .get(&r.id)
                            .is_some_and(|(h, _)| h.owner == me && !h.relationship.ended)
                };
                if let Some(r) = store.iter_mut().find(mine) {
                    r.ended = true;
                    deleted.insert(r.id.clone());
                }
            }
            let overdue: BTreeSet<NodeName> =
                names.iter().filter(|n| !up.contains(*n)).cloned().collect();
            // Policy snapshots of what this node runs, in a burst that may use up the
            // record's reservation: only ids below it (`may_use_snapshot_id`), and no id
            // is ever given twice, whichever node gives it.
            if next(3) == 0 {
                for r in store.iter().filter(|r| !r.ended) {
                    let Some((h, _)) = etcd
                        .get(&r.id)
                        .filter(|(h, _)| h.owner == me && !h.relationship.ended)
                    else {
                        continue;
                    };
                    let last = ids.get_mut(&me).unwrap().entry(r.id.clone()).or_insert(0);
                    for _ in 0..next(700) {
                        if *last + 1 >= h.snapshot_ids_below {
                            break;
                        }
                        *last += 1;
                        renewed += u32::from(*last >= 2 * SNAPSHOT_ID_BLOCK);
                        assert!(
                            given.insert((r.id.clone(), *last)),
                            "seed {seed}: snapshot {} of {} given twice",
                            *last,
                            r.id
                        );
                    }
                }
            }
            let sees = |r: &Relationship| Some(here(r));
            let local = store.clone();
            let actions = decide(&Seen {
                me: &me,
                fingerprint: "fp",
                may_take: up.iter().next() == Some(&me) || next(2) == 0,
                local: &local,
                unreadable: &BTreeSet::new(),
                snapshot_ids: &ids[&me],
                records: &etcd,
                overdue: &overdue,
                sees: &sees,
            });
            play(
                &me,
                actions,
                &mut etcd,
                store,
                ids.get_mut(&me).unwrap(),
                &up,
                &mut counts,
            );
            // A record's term never goes down, and a live record naming another node
            // than before carries a higher one: the target can tell the new owner's
            // ticket requests from the old one's.
            for (id, (h, _)) in &etcd {
                if let Some((owner, term)) = terms.get(id) {
                    assert!(h.term >= *term, "seed {seed}: {id}'s term went down");
                    if !h.relationship.ended && &h.owner != owner {
                        assert!(
                            h.term > *term,
                            "seed {seed}: {id} changed hands at term {term}"
                        );
                    }
                }
                if !h.relationship.ended {
                    terms.insert(id.clone(), (h.owner.clone(), h.term));
                }
            }
            // No live record names a node without a live copy: nothing is lost.
            for (id, (h, _)) in &etcd {
                if !h.relationship.ended {
                    assert!(
                        stores[&h.owner].iter().any(|r| &r.id == id && !r.ended),
                        "seed {seed}: {id}'s record names {} without a copy",
                        h.owner
                    );
                }
            }
        }
        // Everyone up and settled: each relationship not deleted is held live by exactly
        // one node, and a deleted one by none.
        up = names.iter().cloned().collect();
        for _ in 0..3 {
            for me in &names {
                let local = stores[me].clone();
                let sees = |r: &Relationship| Some(here(r));
                let actions = decide(&Seen {
                    me,
                    fingerprint: "fp",
                    may_take: false,
                    local: &local,
                    unreadable: &BTreeSet::new(),
                    snapshot_ids: &ids[me],
                    records: &etcd,
                    overdue: &BTreeSet::new(),
                    sees: &sees,
                });
                let store = stores.get_mut(me).unwrap();
                play(
                    me,
                    actions,
                    &mut etcd,
                    store,
                    ids.get_mut(me).unwrap(),
                    &up,
                    &mut counts,
                );
            }
        }
        for i in 0..5 {
            let id = id(i);
            let live = names
                .iter()
                .filter(|n| stores[*n].iter().any(|r| r.id == id && !r.ended))
                .count();
            let want = usize::from(!deleted.contains(&id));
            assert_eq!(live, want, "seed {seed}: {id} is held live by {live} nodes");
        }
    }
    let (takes, drops) = counts;
    assert!(takes > 100 && drops > 100, "takes {takes}, drops {drops}");
    // Reservations were used up and renewed, and new owners gave ids above old ones.
    assert!(renewed > 100, "ids past the first reservation: {renewed}");
}
