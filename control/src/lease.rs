//! How long this node can vouch for its heartbeat lease, and the fence of the write shares it
//! runs (`mover::receiver::share::Fence`).
//!
//! Why: a committing node stops waiting for a write place once it sees the place down, that
//! is once etcd expired the place's lease. A place cut off from etcd but not from the source
//! would otherwise go on writing the frames its workers still receive, under a session the
//! committing node has given up on, maybe while the next session writes the same files. So a
//! place writes only while it knows its lease is alive, with a margin, and only under the
//! lease it started its share with: one that expired may have been seen down.
//!
//! What the node knows: etcd renews a lease for its TTL from the moment a renewal reaches it,
//! so each answered renewal proves the lease alive until (the renewal's send time + TTL) at
//! the earliest. Renewals are answered in order on one stream, so each answer is matched with
//! the oldest send time not yet answered. Should more go unanswered than are kept, answers
//! vouch for nothing more until the next lease: they could no longer be matched. Pure: the
//! caller passes the clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A write place stops writing when its lease is vouched for less than this much longer:
/// with renewals every `cluster::HEARTBEAT` (1 s) and a 3 s TTL, an answered lease runs 2-3 s
/// ahead, so a place stops about 2 s after the last renewal that was answered was sent. The
/// margin also covers the writes a place already submitted when it checked (they land within
/// it unless the disk itself stalls) and clock-rate differences between the node and etcd
/// (parts per million).
pub const FENCE_MARGIN: Duration = Duration::from_secs(1);
/// Renewal send times kept while unanswered. The membership gives its session up after a
/// lease life without an answer (3 renewals), so this is never reached in practice.
const MAX_UNANSWERED: usize = 16;

#[derive(Debug, Default)]
struct State {
    /// The current lease (etcd's id), if the node has a session, and the earliest time etcd
    /// may expire it.
    lease: Option<(i64, Instant)>,
    /// Send times of renewals not yet answered, oldest first.
    sent: VecDeque<Instant>,
    /// A send could not be kept: answers can no longer be matched with their sends.
    overflowed: bool,
}

/// This node's lease as far as it can vouch for it. Fed by the membership's session.
#[derive(Debug, Default)]
pub struct LeaseClock {
    state: Mutex<State>,
}

impl LeaseClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain data: a panic elsewhere while holding it leaves it usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lease `id` was granted (or first renewed) by a request sent at `asked`, for `ttl`.
    pub fn granted(&self, id: i64, asked: Instant, ttl: Duration) {
        let mut s = self.lock();
        *s = State {
            lease: Some((id, asked + ttl)),
            sent: VecDeque::new(),
            overflowed: false,
        };
    }

    /// A renewal is about to be sent at `at`.
    pub fn renewal_sent(&self, at: Instant) {
        let mut s = self.lock();
        if s.sent.len() < MAX_UNANSWERED {
            s.sent.push_back(at);
        } else {
            s.overflowed = true;
        }
    }

    /// A renewal was answered: the lease lives `ttl` from the oldest unanswered send.
    pub fn renewal_answered(&self, ttl: Duration) {
        let mut s = self.lock();
        if s.overflowed {
            return;
        }
        let Some(sent) = s.sent.pop_front() else {
            // An answer to nothing recorded vouches for nothing.
            return;
        };
        if let Some((_, until)) = s.lease.as_mut() {
            *until = (*until).max(sent + ttl);
        }
    }

    /// The session ended: no lease is vouched for until the next one is granted.
    pub fn ended(&self) {
        *self.lock() = State::default();
    }

    /// The current lease's id, if the node has a session.
    pub fn current(&self) -> Option<i64> {
        self.lock().lease.map(|(id, _)| id)
    }

    /// Ok while lease `id` is the current one and alive at least `FENCE_MARGIN` past `now`.
    pub fn check(&self, id: i64, now: Instant) -> Result<(), String> {
        let s = self.lock();
        match s.lease {
            Some((cur, _)) if cur != id => Err(format!(
                "this node's cluster lease changed (etcd session {id:x} ended): the committing \
                 node may have seen it down"
            )),
            Some((_, until)) if now + FENCE_MARGIN < until => Ok(()),
            Some(_) => Err(format!(
                "this node's cluster lease {id:x} is vouched for less than {} s ahead (its \
                 renewals go unanswered) and may expire: the committing node would then see \
                 it down",
                FENCE_MARGIN.as_secs()
            )),
            None => Err("this node has no cluster session (etcd away)".into()),
        }
    }

    /// A fence on the current lease, if there is one it can vouch for now.
    pub fn fence(self: &Arc<Self>, now: Instant) -> Result<LeaseFence, String> {
        let id = self
            .current()
            .ok_or_else(|| "this node has no cluster session (etcd away)".to_string())?;
        self.check(id, now)?;
        Ok(LeaseFence {
            clock: self.clone(),
            id,
            refused: OnceLock::new(),
        })
    }
}

/// A write share's fence: the lease it started under, alive with a margin. Its first refusal
/// stays (renewals answered late could vouch for the lease again, but the share's workers
/// and its watch must agree that it stopped).
pub struct LeaseFence {
    clock: Arc<LeaseClock>,
    id: i64,
    refused: OnceLock<String>,
}

impl mover::receiver::share::Fence for LeaseFence {
    fn check(&self) -> Result<(), String> {
        if let Some(why) = self.refused.get() {
            return Err(why.clone());
        }
        let Err(why) = self.clock.check(self.id, Instant::now()) else {
            return Ok(());
        };
        if self.refused.set(why.clone()).is_ok() {
            tracing::warn!("write place fenced: {why}");
        }
        Err(self.refused.get().cloned().unwrap_or(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);
    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_lease_is_vouched_for_from_each_answered_renewals_send_time() {
        let c = Arc::new(LeaseClock::default());
        let t0 = Instant::now();
        assert!(c.fence(t0).is_err(), "no session, no fence");
        c.granted(7, t0, TTL);
        let f = c.fence(t0).expect("a fresh lease");
        assert!(c.check(7, t0 + S).is_ok());
        // 3 s from the grant's request, less the margin: refused from 2 s on.
        assert!(c.check(7, t0 + 2 * S).is_err());
        // A renewal sent at 1 s, answered at 1.5 s: alive until 4 s.
        c.renewal_sent(t0 + S);
        c.renewal_answered(TTL);
        assert!(c.check(7, t0 + 2 * S).is_ok());
        assert!(c.check(7, t0 + 3 * S).is_err());
        drop(f);
    }

    #[test]
    fn answers_match_the_oldest_unanswered_send_and_never_move_the_deadline_back() {
        let c = LeaseClock::default();
        let t0 = Instant::now();
        c.granted(1, t0, TTL);
        // Two renewals out (1 s and 2 s), the first answered: the deadline is 1 s + TTL,
        // not 2 s + TTL.
        c.renewal_sent(t0 + S);
        c.renewal_sent(t0 + 2 * S);
        c.renewal_answered(TTL);
        assert!(c.check(1, t0 + 2 * S + S / 2).is_ok());
        assert!(c.check(1, t0 + 3 * S).is_err());
        c.renewal_answered(TTL);
        assert!(c.check(1, t0 + 3 * S + S / 2).is_ok());
        // An answer without a recorded send vouches for nothing more.
        c.renewal_answered(TTL * 10);
        assert!(c.check(1, t0 + 4 * S).is_err());
    }

    #[test]
    fn once_sends_overflow_answers_vouch_for_nothing_until_the_next_lease() {
        let c = LeaseClock::default();
        let t0 = Instant::now();
        c.granted(1, t0, TTL);
        for k in 0..(MAX_UNANSWERED as u32 + 5) {
            c.renewal_sent(t0 + S * k);
        }
        for _ in 0..(MAX_UNANSWERED + 5) {
            c.renewal_answered(TTL);
        }
        // Only the grant vouches: alive until 3 s, refused from 2 s on.
        assert!(c.check(1, t0 + S).is_ok());
        assert!(c.check(1, t0 + 2 * S).is_err());
        let t1 = t0 + 30 * S;
        c.granted(2, t1, TTL);
        c.renewal_sent(t1 + S);
        c.renewal_answered(TTL);
        assert!(c.check(2, t1 + 2 * S + S / 2).is_ok());
    }

    #[test]
    fn a_fence_refuses_once_its_lease_ended_even_under_a_newer_live_one() {
        let c = Arc::new(LeaseClock::default());
        let t0 = Instant::now();
        c.granted(1, t0, TTL);
        let f = c.fence(t0).unwrap();
        use mover::receiver::share::Fence;
        assert!(f.check().is_ok());
        c.ended();
        let why = f.check().unwrap_err();
        assert!(why.contains("no cluster session"), "{why}");
        // A new session, a new lease: the share started under the old one stays fenced, for
        // the reason it first gave.
        c.granted(2, Instant::now(), TTL);
        assert_eq!(f.check().unwrap_err(), why);
        assert!(c.fence(Instant::now()).is_ok());
    }

    #[test]
    fn a_fence_stays_refused_when_late_answers_vouch_for_its_lease_again() {
        let c = Arc::new(LeaseClock::default());
        let t0 = Instant::now() - 5 * S;
        // Granted 5 s ago, a renewal sent then and not yet answered: refused now.
        c.granted(1, t0, TTL);
        let f = LeaseFence {
            clock: c.clone(),
            id: 1,
            refused: OnceLock::new(),
        };
        use mover::receiver::share::Fence;
        c.renewal_sent(Instant::now());
        let why = f.check().unwrap_err();
        // The answer arrives: the lease is vouched for again, the fence still refuses.
        c.renewal_answered(TTL);
        assert!(c.check(1, Instant::now()).is_ok());
        assert_eq!(f.check().unwrap_err(), why);
    }
}
