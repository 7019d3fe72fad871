//! The lifecycle of one reliable-connected queue pair, as a pure state machine (no verbs).
//!
//! ```text
//! Reset -> Init -> Rtr -> Rts -> Draining -> Closed
//!   \________\_______\_____\________\____-> Error -> (flush completions drained) -> Fallback
//! ```
//! - Setup walks `Reset -> Init -> Rtr -> Rts`; `Rtr` needs the peer's QP number and GID
//!   (exchanged over the TCP control connection).
//! - Work requests are posted only in `Rts`, at most `MAX_OUTSTANDING` at once.
//! - `Close` stops new posts; the QP is `Closed` once every posted request has completed.
//! - Any failure (a setup step refused, an error completion, an asynchronous error event, an
//!   event that is not legal in the current state, a drain that takes too many polls) moves to
//!   `Error`. The device then flushes what was posted; once every outstanding request has a
//!   completion (or the QP was destroyed, after which the device touches no buffer), the state
//!   is `Fallback`: the session goes on over TCP and resumes the job from its journal.
//!   `Fallback` and `Closed` are terminal.

/// Most work requests posted and not completed (send queue depth of the QP).
pub const MAX_OUTSTANDING: u32 = 256;
/// Most completion polls a drain (of `Draining` or `Error`) may take before the QP is
/// destroyed instead; bounded so a lost completion cannot hang a worker.
pub const MAX_DRAIN_POLLS: u32 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpState {
    Reset,
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Closing: no new posts, waiting for outstanding completions.
    Draining,
    /// Failed: waiting for the flush completions of what was posted.
    Error,
    /// Terminal: the session uses TCP from here.
    Fallback,
    /// Terminal: closed cleanly.
    Closed,
}

/// Why the queue pair failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailCause {
    /// A `modify_qp` (or create) step was refused by the device.
    SetupRefused,
    /// A work completion with an error status.
    ErrorCompletion,
    /// An asynchronous event (port down, QP fatal, ...).
    AsyncEvent,
    /// An event that is not legal in the state it arrived in.
    Illegal,
    /// A drain did not finish within `MAX_DRAIN_POLLS` polls.
    DrainTimeout,
    /// The peer went away or sent something unintelligible on the control connection.
    Peer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpEvent {
    /// `modify_qp` to the next setup state succeeded (`Reset->Init`, `Init->Rtr`, `Rtr->Rts`).
    /// `to Rtr` needs `peer_known`.
    Advance { peer_known: bool },
    /// A work request was posted.
    Posted,
    /// A successful completion of a posted request.
    Completed,
    /// An error completion (a flushed request in `Error` completes like this too).
    CompletedWithError,
    /// A completion poll that returned nothing.
    EmptyPoll,
    /// Something failed outside completions.
    Failed(FailCause),
    /// The session closes the transport.
    Close,
    /// The QP was destroyed: the device touches none of its buffers any more.
    Destroyed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue pair in {state:?}: {what}")]
pub struct QpRefused {
    pub state: QpState,
    pub what: &'static str,
}

#[derive(Debug, Clone)]
pub struct QpMachine {
    state: QpState,
    outstanding: u32,
    drain_polls: u32,
    cause: Option<FailCause>,
}

impl Default for QpMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl QpMachine {
    pub fn new() -> QpMachine {
        QpMachine {
            state: QpState::Reset,
            outstanding: 0,
            drain_polls: 0,
            cause: None,
        }
    }

    pub fn state(&self) -> QpState {
        self.state
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// Why the QP failed, once it did.
    pub fn cause(&self) -> Option<FailCause> {
        self.cause
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self.state, QpState::Fallback | QpState::Closed)
    }

    /// Whether a work request may be posted now.
    pub fn can_post(&self) -> bool {
        self.state == QpState::Rts && self.outstanding < MAX_OUTSTANDING
    }

    /// Applies `ev`. An event that is not legal moves the QP to `Error` (and is reported),
    /// because a confused QP must not carry data.
    pub fn on(&mut self, ev: QpEvent) -> Result<QpState, QpRefused> {
        use QpEvent as E;
        use QpState as S;
        let refuse = |m: &mut QpMachine, what| {
            let state = m.state;
            m.fail(FailCause::Illegal);
            Err(QpRefused { state, what })
        };
        match (self.state, ev) {
            (S::Fallback | S::Closed, E::Close | E::Destroyed | E::EmptyPoll) => {}
            (S::Fallback | S::Closed, _) => {
                return Err(QpRefused {
                    state: self.state,
                    what: "event after the QP is finished",
                })
            }
            (_, E::Destroyed) => {
                // Nothing is outstanding any more: the device forgot it all.
                self.outstanding = 0;
                self.state = if self.state == S::Draining {
                    S::Closed
                } else {
                    self.cause.get_or_insert(FailCause::Peer);
                    S::Fallback
                };
            }
            (S::Reset, E::Advance { .. }) => self.state = S::Init,
            (S::Init, E::Advance { peer_known: true }) => self.state = S::Rtr,
            (S::Init, E::Advance { peer_known: false }) => {
                return refuse(self, "to RTR without the peer's QP number and GID")
            }
            (S::Rtr, E::Advance { .. }) => self.state = S::Rts,
            (S::Rts, E::Posted) => {
                if self.outstanding >= MAX_OUTSTANDING {
                    return refuse(self, "post beyond MAX_OUTSTANDING");
                }
                self.outstanding += 1;
            }
            (_, E::Posted) => return refuse(self, "post outside RTS"),
            (S::Rts | S::Draining | S::Error, E::Completed) => {
                if self.outstanding == 0 {
                    return refuse(self, "completion with nothing outstanding");
                }
                self.outstanding -= 1;
                self.settle();
            }
            (S::Error, E::CompletedWithError) => {
                if self.outstanding == 0 {
                    return refuse(self, "completion with nothing outstanding");
                }
                self.outstanding -= 1;
                self.settle();
            }
            (S::Rts | S::Draining, E::CompletedWithError) => {
                self.outstanding = self.outstanding.saturating_sub(1);
                self.fail(FailCause::ErrorCompletion);
            }
            (_, E::Completed | E::CompletedWithError) => {
                return refuse(self, "completion before anything was posted")
            }
            (S::Draining | S::Error, E::EmptyPoll) => {
                self.drain_polls += 1;
                if self.drain_polls >= MAX_DRAIN_POLLS {
                    // The caller destroys the QP on seeing this; until `Destroyed` the buffers
                    // stay untouched.
                    self.fail(FailCause::DrainTimeout);
                }
            }
            (_, E::EmptyPoll) => {}
            (_, E::Failed(cause)) => self.fail(cause),
            (S::Rts, E::Close) => {
                self.state = S::Draining;
                self.drain_polls = 0;
                self.settle();
            }
            (S::Draining | S::Error, E::Close) => {}
            (S::Reset | S::Init | S::Rtr, E::Close) => {
                // Nothing was ever posted on a QP that never reached RTS.
                self.state = S::Closed;
            }
            (S::Rts | S::Draining | S::Error, E::Advance { .. }) => {
                return refuse(self, "setup step on a running QP")
            }
        }
        Ok(self.state)
    }

    fn fail(&mut self, cause: FailCause) {
        if self.is_terminal() {
            return;
        }
        if self.state != QpState::Error {
            self.cause = Some(cause);
            self.state = QpState::Error;
            self.drain_polls = 0;
        } else if cause == FailCause::DrainTimeout {
            self.cause = Some(cause);
        }
        self.settle();
    }

    /// Finishes a drain once nothing is outstanding.
    fn settle(&mut self) {
        if self.outstanding == 0 {
            match self.state {
                QpState::Draining => self.state = QpState::Closed,
                QpState::Error => self.state = QpState::Fallback,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const SEEDS: u64 = 500;
    const STEPS: usize = 3_000;

    fn ready() -> QpMachine {
        let mut q = QpMachine::new();
        q.on(QpEvent::Advance { peer_known: true }).unwrap();
        q.on(QpEvent::Advance { peer_known: true }).unwrap();
        q.on(QpEvent::Advance { peer_known: true }).unwrap();
        q
    }

    #[test]
    fn setup_walks_reset_init_rtr_rts() {
        let mut q = QpMachine::new();
        assert_eq!(q.state(), QpState::Reset);
        assert!(!q.can_post());
        let adv = QpEvent::Advance { peer_known: true };
        assert_eq!(q.on(adv), Ok(QpState::Init));
        assert_eq!(q.on(adv), Ok(QpState::Rtr));
        assert_eq!(q.on(adv), Ok(QpState::Rts));
        assert!(q.can_post());
    }

    #[test]
    fn rtr_without_the_peer_falls_back() {
        let mut q = QpMachine::new();
        q.on(QpEvent::Advance { peer_known: false }).unwrap();
        assert!(q.on(QpEvent::Advance { peer_known: false }).is_err());
        assert_eq!(q.state(), QpState::Fallback);
        assert_eq!(q.cause(), Some(FailCause::Illegal));
    }

    #[test]
    fn a_post_outside_rts_is_refused_and_falls_back() {
        let mut q = QpMachine::new();
        assert!(q.on(QpEvent::Posted).is_err());
        assert_eq!(q.state(), QpState::Fallback);
    }

    #[test]
    fn an_error_completion_waits_for_the_flush_then_falls_back() {
        let mut q = ready();
        for _ in 0..3 {
            q.on(QpEvent::Posted).unwrap();
        }
        assert_eq!(q.on(QpEvent::CompletedWithError), Ok(QpState::Error));
        assert!(!q.can_post());
        assert_eq!(q.on(QpEvent::CompletedWithError), Ok(QpState::Error));
        assert_eq!(q.on(QpEvent::CompletedWithError), Ok(QpState::Fallback));
        assert_eq!(q.cause(), Some(FailCause::ErrorCompletion));
    }

    #[test]
    fn close_drains_outstanding_work_before_closed() {
        let mut q = ready();
        q.on(QpEvent::Posted).unwrap();
        assert_eq!(q.on(QpEvent::Close), Ok(QpState::Draining));
        assert!(q.on(QpEvent::Posted).is_err(), "no post while draining");
        assert_eq!(q.state(), QpState::Error);
        assert_eq!(q.on(QpEvent::Completed), Ok(QpState::Fallback));
    }

    #[test]
    fn a_clean_close_ends_closed() {
        let mut q = ready();
        q.on(QpEvent::Posted).unwrap();
        q.on(QpEvent::Close).unwrap();
        assert_eq!(q.on(QpEvent::Completed), Ok(QpState::Closed));
    }

    #[test]
    fn a_drain_that_never_completes_is_bounded_and_destroyed() {
        let mut q = ready();
        q.on(QpEvent::Posted).unwrap();
        q.on(QpEvent::Failed(FailCause::AsyncEvent)).unwrap();
        for _ in 0..MAX_DRAIN_POLLS {
            assert_eq!(q.state(), QpState::Error);
            q.on(QpEvent::EmptyPoll).unwrap();
        }
        assert_eq!(q.cause(), Some(FailCause::DrainTimeout));
        assert_eq!(q.on(QpEvent::Destroyed), Ok(QpState::Fallback));
        assert_eq!(q.outstanding(), 0);
    }

    #[test]
    fn posts_are_bounded_by_max_outstanding() {
        let mut q = ready();
        for _ in 0..MAX_OUTSTANDING {
            q.on(QpEvent::Posted).unwrap();
        }
        assert!(!q.can_post());
        assert!(q.on(QpEvent::Posted).is_err());
        assert_eq!(q.state(), QpState::Error);
    }

    fn random_event(rng: &mut StdRng, q: &QpMachine) -> QpEvent {
        let causes = [
            FailCause::SetupRefused,
            FailCause::ErrorCompletion,
            FailCause::AsyncEvent,
            FailCause::Peer,
        ];
        // Mostly plausible events, sometimes anything at all.
        match rng.random_range(0..100) {
            0..=19 => QpEvent::Advance {
                peer_known: rng.random_range(0..20) != 0,
            },
            20..=49 if q.can_post() => QpEvent::Posted,
            20..=49 => QpEvent::EmptyPoll,
            50..=74 if q.outstanding() > 0 => QpEvent::Completed,
            50..=74 => QpEvent::EmptyPoll,
            75..=84 => QpEvent::EmptyPoll,
            85..=87 => QpEvent::CompletedWithError,
            88..=90 => QpEvent::Failed(causes[rng.random_range(0..causes.len())]),
            91..=93 => QpEvent::Close,
            94 => QpEvent::Destroyed,
            95..=97 => QpEvent::Posted,
            _ => QpEvent::Completed,
        }
    }

    #[test]
    fn seeded_schedules_end_in_fallback_after_every_error() {
        let mut reached = [0u32; 4]; // rts, fallback, closed, error-seen
        for seed in 0..SEEDS {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut q = QpMachine::new();
            let mut errored = false;
            for _ in 0..STEPS {
                let before = q.state();
                let ev = random_event(&mut rng, &q);
                let r = q.on(ev);
                let after = q.state();
                assert!(q.outstanding() <= MAX_OUTSTANDING);
                if before == QpState::Rts {
                    reached[0] += 1;
                }
                // Terminal states stay terminal.
                if matches!(before, QpState::Fallback | QpState::Closed) {
                    assert_eq!(
                        after, before,
                        "seed {seed}: left a terminal state on {ev:?}"
                    );
                    continue;
                }
                // Posting only ever succeeds in RTS.
                if ev == QpEvent::Posted && r.is_ok() {
                    assert_eq!(before, QpState::Rts);
                }
                // Every error leads to Error (then Fallback), never to Closed or back to work.
                let is_err = r.is_err()
                    || matches!(ev, QpEvent::Failed(_))
                    || (ev == QpEvent::CompletedWithError && before != QpState::Error);
                if is_err || errored {
                    errored = true;
                    assert!(
                        matches!(after, QpState::Error | QpState::Fallback),
                        "seed {seed}: {before:?} --{ev:?}--> {after:?} after an error"
                    );
                    assert!(q.cause().is_some());
                }
                if after == QpState::Fallback {
                    assert_eq!(q.outstanding(), 0, "fell back with buffers still posted");
                }
                if after == QpState::Closed {
                    assert!(!errored);
                    assert_eq!(q.outstanding(), 0, "closed with buffers still posted");
                }
            }
            // Whatever happened, a final close plus destroy leaves a terminal state with nothing
            // outstanding; an errored QP always ends in Fallback.
            let _ = q.on(QpEvent::Close);
            let _ = q.on(QpEvent::Destroyed);
            assert!(q.is_terminal());
            assert_eq!(q.outstanding(), 0);
            if errored {
                assert_eq!(q.state(), QpState::Fallback, "seed {seed}");
                reached[1] += 1;
            } else if q.state() == QpState::Closed {
                reached[2] += 1;
            }
            reached[3] += u32::from(errored);
        }
        // The schedules exercise the states they are meant to.
        assert!(
            reached[0] > 0 && reached[1] > 0 && reached[2] > 0,
            "{reached:?}"
        );
    }
}
