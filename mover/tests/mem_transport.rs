//! Whole sessions over the in-memory transport: the sender's and the receiver's workers move
//! their frames through the `Connection` trait (no kernel socket), every frame sealed with the
//! session's secret (a fresh ticket per session, as a daemon issues them), the network is
//! seeded and resets every connection at a seeded point. The target must equal the source
//! after every job, and a job cut by a reset must finish in a later session that resumes it.

mod common;

use common::*;
use mover::churn::{churn, ChurnSpec};
use mover::gen::{generate, TreeSpec};
use mover::transport::mem::{MemFaults, MemNet};
use mover::{
    send_with_retry_each, Progress, ReceiveOptions, Receiver, SessionReport, SessionSecret,
    Tickets, Transport,
};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{mpsc, Arc};

const THREADS: usize = 2;

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 3712))
}

/// A receiver serving `dst` on `net` at `addr()`, admitting only sealed sessions of the tickets
/// it issued; each session's report arrives on the channel.
fn serve(net: &MemNet, dst: &Path, tickets: &Arc<Tickets>) -> mpsc::Receiver<SessionReport> {
    let r = Receiver::from_inbox(
        net.listen(addr()),
        ReceiveOptions {
            root: dst.to_path_buf(),
            tickets: Some(tickets.clone()),
            policy: every_kind(),
            ..Default::default()
        },
        Arc::new(Progress::default()),
    )
    .expect("receiver");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = r.serve(|rep| {
            let _ = tx.send(rep.clone());
        });
    });
    rx
}

fn job(net: &Arc<MemNet>, src: &Path, state: &Path, tickets: &Tickets) -> mover::SendReport {
    let opts = send_options(src, addr(), THREADS, Some(state));
    let transport: Arc<dyn Transport> = net.clone();
    // Every session gets a fresh secret, issued as a ticket at the receiver.
    let before = |o: &mut mover::SendOptions| -> mover::Result<()> {
        let secret = SessionSecret::random().map_err(|source| mover::Error::Io {
            context: "random secret".into(),
            source,
        })?;
        tickets.issue_sealed(secret.clone());
        o.secret = Some(secret);
        Ok(())
    };
    let progress = Arc::new(Progress::default());
    send_with_retry_each(&opts, &progress, 5, &transport, before, |_, _, _| {})
        .expect("job completes")
}

#[test]
fn whole_sessions_run_over_the_in_memory_transport_and_resume_after_seeded_resets() {
    let d = dirs();
    let (src, dst, state) = (&d.src, &d.dst, &d.state);
    let spec = TreeSpec {
        seed: 11,
        small_files: 150,
        large_files: 3,
        large_size: 3 << 20,
        ..Default::default()
    };
    generate(src, &spec).unwrap();

    // The initial sync over a network with no fault armed.
    let net = MemNet::new(1, MemFaults::default());
    let tickets = Arc::new(Tickets::default());
    let reports = serve(&net, dst, &tickets);
    let r = job(&net, src, state, &tickets);
    assert!(
        r.encrypted,
        "sessions over the in-memory network are sealed"
    );
    assert_eq!(r.attempts, 1);
    assert!(reports.recv().expect("session report").ok);
    assert_same_tree(src, dst);
    assert!(
        net.bytes() > r.bytes,
        "the data crossed the in-memory network"
    );

    // Churned jobs, each with a reset of every connection armed at a seeded point inside the
    // job's traffic.
    for seed in 0..4u64 {
        churn(
            src,
            &ChurnSpec {
                seed: 100 + seed,
                ops: 30,
                max_files: 250,
                large_max: 2 << 20,
            },
        )
        .unwrap();
        let resets = net.resets();
        net.reset_after(2_000 + (seed * 7_919) % 40_000);
        let r = job(&net, src, state, &tickets);
        assert_same_tree(src, dst);
        // The receiver reports a session just after the sender saw it verified.
        let mut sessions: Vec<SessionReport> = Vec::new();
        while !sessions.last().is_some_and(|s| s.ok) {
            let next = reports.recv_timeout(std::time::Duration::from_secs(10));
            sessions.push(next.expect("a report for every session"));
        }
        assert_eq!(
            net.resets(),
            resets + 1,
            "seed {seed}: the armed reset hit the job"
        );
        assert!(r.attempts > 1, "seed {seed}: the reset cost a session");
        assert!(
            sessions.iter().any(|s| !s.ok),
            "seed {seed}: a failed session, then a verified one: {sessions:?}"
        );
    }
}
