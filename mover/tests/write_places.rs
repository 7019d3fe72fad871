//! A session's writes spread over two write places on one shared target (`receiver::share`):
//! the receiver holding the session and a place that runs a share of its workers, each on its
//! own socket on 127.0.0.1, writing into the same directory (as two target nodes would into a
//! shared file system). The recovery point is committed once, by the receiver, after the
//! place said it was done; large files cut between the two get their metadata once both
//! halves landed.

mod common;

use common::*;
use mover::receiver::share::{Fence, ShareHost, WriteShare, Writers};
use mover::transport::tcp::TcpConn;
use mover::{send, Progress, ReceiveOptions, Receiver, SessionSecret, Tickets};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The place: a listener whose connections go to its `ShareHost`, and the `Writers` the
/// receiver hands shares to, which runs them into the place's view of the target.
struct Place {
    addr: SocketAddr,
    host: Arc<ShareHost>,
    /// The place is down: its connections are closed at once and no share reaches it.
    down: Arc<AtomicBool>,
    fence: Arc<BytesFence>,
}

/// A fence that refuses once the place has written `limit` bytes (as a daemon's refuses once
/// its lease may have expired), counting what it answered its workers and what was written at
/// its first refusal.
struct BytesFence {
    written: Arc<AtomicU64>,
    limit: AtomicU64,
    /// Checks of the place's workers (threads `mover-place-w<index>`) that were allowed.
    allowed: AtomicU64,
    refusals: AtomicU64,
    at_first_refusal: AtomicU64,
}

impl Fence for BytesFence {
    fn check(&self) -> Result<(), String> {
        let written = self.written.load(Ordering::SeqCst);
        if written < self.limit.load(Ordering::SeqCst) {
            let by = std::thread::current().name().map(str::to_string);
            let worker = by.is_some_and(|n| {
                n.strip_prefix("mover-place-w")
                    .is_some_and(|i| i.parse::<u16>().is_ok())
            });
            if worker {
                self.allowed.fetch_add(1, Ordering::SeqCst);
            }
            return Ok(());
        }
        if self.refusals.fetch_add(1, Ordering::SeqCst) == 0 {
            self.at_first_refusal.store(written, Ordering::SeqCst);
        }
        Err("its lease may have expired (test)".into())
    }
}

struct InProcess {
    host: Arc<ShareHost>,
    view: PathBuf,
    want: SocketAddr,
    down: Arc<AtomicBool>,
    fence: Arc<BytesFence>,
}

impl Writers for InProcess {
    fn run(&self, at: SocketAddr, share: WriteShare) -> mover::Result<()> {
        assert_eq!(
            at, self.want,
            "the share goes to the place the ticket named"
        );
        if self.down.load(Ordering::SeqCst) {
            return Err(mover::Error::PeerLost("the write place is down".into()));
        }
        let root = mover::beneath::open_root(&self.view, "the place's view")?;
        let fence: Arc<dyn Fence> = self.fence.clone();
        self.host
            .run(std::os::fd::AsFd::as_fd(&root), &share, Some(fence))
            .map(|_| ())
    }
}

fn start_place(down: bool) -> Place {
    let host = Arc::new(ShareHost::new());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let fence = Arc::new(BytesFence {
        written: host.bytes.clone(),
        limit: AtomicU64::new(u64::MAX),
        allowed: AtomicU64::new(0),
        refusals: AtomicU64::new(0),
        at_first_refusal: AtomicU64::new(0),
    });
    let (h, down) = (host.clone(), Arc::new(AtomicBool::new(down)));
    let is_down = down.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            if is_down.load(Ordering::SeqCst) {
                continue;
            }
            let h = h.clone();
            std::thread::spawn(move || {
                let _ = h.accept(Box::new(TcpConn::new(s).unwrap()));
            });
        }
    });
    Place {
        addr,
        host,
        down,
        fence,
    }
}

/// A receiver with a place beside it; each session's report arrives on the channel.
fn start(
    dst: &Path,
    down: bool,
) -> (
    SocketAddr,
    Arc<Tickets>,
    Place,
    Arc<Progress>,
    std::sync::mpsc::Receiver<mover::SessionReport>,
) {
    let place = start_place(down);
    let tickets = Arc::new(Tickets::default());
    let writers = Arc::new(InProcess {
        host: place.host.clone(),
        view: dst.to_path_buf(),
        want: place.addr,
        down: place.down.clone(),
        fence: place.fence.clone(),
    });
    let progress = Arc::new(Progress::default());
    let r = Receiver::bind(
        "127.0.0.1:0".parse().unwrap(),
        ReceiveOptions {
            root: dst.to_path_buf(),
            tickets: Some(tickets.clone()),
            policy: every_kind(),
            writers: Some(writers),
            ..Default::default()
        },
        progress.clone(),
    )
    .unwrap();
    let addr = r.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = r.serve(|rep| {
            let _ = tx.send(rep.clone());
        });
    });
    (addr, tickets, place, progress, rx)
}

fn tree(src: &Path) {
    std::fs::create_dir_all(src.join("small")).unwrap();
    for i in 0..300u32 {
        std::fs::write(
            src.join(format!("small/f{i:03}")),
            i.to_le_bytes().repeat(300),
        )
        .unwrap();
    }
    for i in 0..3u64 {
        let data: Vec<u8> = (0..(20u64 << 20) + i * 4099)
            .map(|k| (k.wrapping_mul(2654435761) >> (i + 3)) as u8)
            .collect();
        std::fs::write(src.join(format!("big{i}")), data).unwrap();
    }
}

/// One sealed session with a ticket naming the place.
fn session(
    src: &Path,
    state: &Path,
    addr: SocketAddr,
    tickets: &Tickets,
    place: SocketAddr,
) -> mover::Result<mover::SendReport> {
    let secret = SessionSecret::random().unwrap();
    tickets.issue_spread(Some(secret.clone()), vec![place])?;
    let opts = mover::SendOptions {
        secret: Some(secret),
        write_places: vec![place],
        ..send_options(src, addr, 4, Some(state))
    };
    send(&opts, &Arc::new(Progress::default()))
}

#[test]
fn a_session_spread_over_two_write_places_commits_one_verified_recovery_point() {
    let d = dirs();
    tree(&d.src);
    let (addr, tickets, place, here, reports) = start(&d.dst, false);
    let rep = session(&d.src, &d.state, addr, &tickets, place.addr).expect("first job");
    let r = reports.recv().unwrap();
    assert!(r.ok, "{:?}", r.error);
    assert!(!r.recovery_point.is_empty());
    assert_same_tree(&d.src, &d.dst);
    // Both places wrote a share: together exactly what the sender sent.
    let there = place.host.bytes.load(Ordering::SeqCst);
    let mine = here.bytes.load(Ordering::SeqCst);
    assert!(there > 0 && mine > 0, "here {mine}, at the place {there}");
    assert_eq!(there + mine, rep.bytes);
    assert_eq!(r.bytes, rep.bytes);
    // No share file outlives the job's journal.
    assert!(!d.dst.join(".mover-state/journal").exists());

    // An incremental job: a block rewritten in the middle of each big file, one file added.
    for i in 0..3 {
        let p = d.src.join(format!("big{i}"));
        let mut data = std::fs::read(&p).unwrap();
        let mid = data.len() / 2;
        data[mid..mid + 4096].fill(0xa5);
        std::fs::write(&p, data).unwrap();
    }
    std::fs::write(d.src.join("small/new"), b"new").unwrap();
    let rep = session(&d.src, &d.state, addr, &tickets, place.addr).expect("second job");
    let r2 = reports.recv().unwrap();
    assert!(r2.ok, "{:?}", r2.error);
    assert_ne!(r2.recovery_point, r.recovery_point);
    assert!(rep.bytes < 1 << 20, "a delta job sent {} bytes", rep.bytes);
    assert_same_tree(&d.src, &d.dst);
}

#[test]
fn a_write_place_that_fails_fails_the_session_and_the_retry_completes_the_job() {
    let d = dirs();
    tree(&d.src);
    let (addr, tickets, place, _, reports) = start(&d.dst, true);
    let err =
        session(&d.src, &d.state, addr, &tickets, place.addr).expect_err("the place was down");
    let r = reports.recv().unwrap();
    assert!(!r.ok);
    let why = r.error.unwrap_or_default();
    assert!(why.contains("write place"), "{why}");
    // The target is still at its recovery point from before the job (the empty directory).
    let rp = mover::recovery_point(&d.dst).unwrap();
    assert!(rp.as_ref().is_none_or(|p| p.entries <= 1), "{err}: {rp:?}");
    // The place is back; the next session continues the job (its journal) and completes it.
    place.down.store(false, Ordering::SeqCst);
    session(&d.src, &d.state, addr, &tickets, place.addr).expect("retried job");
    let r = reports.recv().unwrap();
    assert!(r.ok && r.resumed, "{:?}", r.error);
    assert!(place.host.bytes.load(Ordering::SeqCst) > 0);
    assert_same_tree(&d.src, &d.dst);
}

#[test]
fn a_write_place_whose_fence_refuses_stops_writing_and_the_retry_completes_the_job() {
    let d = dirs();
    tree(&d.src);
    let (addr, tickets, place, here, reports) = start(&d.dst, false);
    // The place loses its right to write after 4 MiB of its share (about half of 62 MB).
    place.fence.limit.store(4 << 20, Ordering::SeqCst);
    let err = session(&d.src, &d.state, addr, &tickets, place.addr)
        .expect_err("the place's fence refused mid-share");
    let r = reports.recv().unwrap();
    assert!(!r.ok);
    let why = r.error.unwrap_or_default();
    assert!(why.contains("stopped writing"), "{why} / {err}");
    // The place's workers asked before each frame's writes, and stopped at the first no: at
    // most what each had in flight (a frame per buffer) landed after it.
    let f = &place.fence;
    let (allowed, refused) = (
        f.allowed.load(Ordering::SeqCst),
        f.refusals.load(Ordering::SeqCst),
    );
    assert!(
        allowed > 2 && refused >= 1,
        "{allowed} frames allowed, {refused} refused"
    );
    let there = place.host.bytes.load(Ordering::SeqCst);
    let at_refusal = f.at_first_refusal.load(Ordering::SeqCst);
    // `session` runs 4 workers over the receiver and this one place.
    let place_workers = mover::receiver::share::workers_at(1, 4, 2).len();
    let in_flight =
        place_workers * mover::receiver::WORKER_BUFFERS * mover::wire::frame::MAX_FRAME_PAYLOAD;
    assert!(
        at_refusal >= 4 << 20 && there - at_refusal <= in_flight as u64,
        "the place wrote {there} bytes, {at_refusal} when its fence first refused"
    );
    // The session is over, and so is the place's writing: nothing lands there afterwards.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(place.host.bytes.load(Ordering::SeqCst), there);
    let rp = mover::recovery_point(&d.dst).unwrap();
    assert!(rp.as_ref().is_none_or(|p| p.entries <= 1), "{rp:?}");
    // Its lease back, the place takes the next session's share; the job completes.
    place.fence.limit.store(u64::MAX, Ordering::SeqCst);
    let before = (there, here.bytes.load(Ordering::SeqCst));
    session(&d.src, &d.state, addr, &tickets, place.addr).expect("retried job");
    let r = reports.recv().unwrap();
    assert!(r.ok && r.resumed, "{:?}", r.error);
    assert!(place.host.bytes.load(Ordering::SeqCst) > before.0);
    assert_same_tree(&d.src, &d.dst);
}
