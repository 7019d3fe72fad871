//! What the control container and the data container (`--roles data`) say to each other over
//! `DATA_SOCKET` in the data dir: one connection per send session, share or receiver, and a
//! short one per call (health, ticket, delivered connection, drill). The connection opens
//! with one byte, which carries a descriptor (`SCM_RIGHTS`) when it is 1: the source
//! directory of a send, the target root of a receiver, the data-plane socket delivered to
//! one; then both sides exchange length-prefixed JSON messages (`ToData`, `FromData`) until
//! the data container's final answer. The socket is in the 0700 data dir, so only the
//! node's own user reaches it; the secret in a `SendJob` never leaves the machine.

use mover::sender::shard::ShardRef;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// The data container's socket, in the data dir.
pub const DATA_SOCKET: &str = "data.sock";
/// Largest message either side sends or reads: a changed-directory set or a pin list of a
/// large tree is the biggest thing that travels.
pub const MAX_MESSAGE: usize = 64 << 20;
/// The opening byte: no descriptor follows, or one does.
pub const OPEN_PLAIN: u8 = 0;
pub const OPEN_WITH_FD: u8 = 1;

/// From the control container. Logged by `name` only: some carry a session's secret.
#[derive(Serialize, Deserialize)]
pub enum ToData {
    /// The container's release and roles (the supervisor's probe).
    Health,
    /// Run one send session (the source directory's descriptor came with the opening byte).
    Send(Box<SendJob>),
    /// Run a share another node's owner assigned to this node.
    Share(ShardRef),
    /// Write the manifest kept for the state directory `state` (a relationship's), and
    /// `forget` it; answered with `FromData::Manifest` once written.
    Manifest { state: PathBuf, forget: bool },
    /// The job's requests changed (pause, cancel, suspend, bandwidth).
    Control(ControlState),
    /// A share the session asked for (`FromData::Place`) ended.
    Placed {
        place: usize,
        outcome: Result<(), RemoteError>,
    },
    /// Run the receiver of a target relationship (its root's descriptor came with the opening
    /// byte) until `StopReceiver` or the end of this connection; answered with
    /// `FromData::Receiving`, then `Scrubbed` as scrubs end, and `Received` when it stops.
    Receive(ReceiveJob),
    /// On a `Receive` connection: take no new session; stop once the running one ended.
    StopReceiver,
    /// A one-time session for the receiver `key`: sealed with `secret`, or plain.
    Ticket { key: u64, secret: Option<Vec<u8>> },
    /// The data-plane socket that came with the opening byte, for the receiver `key`.
    Deliver { key: u64 },
    /// A DR drill (or a kept snapshot) from the receiver `key`, waiting at most `wait` for
    /// its running session to end.
    Drill {
        key: u64,
        req: mover::receiver::drill::DrillRequest,
        wait: Duration,
    },
    /// Stop every receiver of relationship `id` and wait (at most `wait`) until none runs:
    /// before its target is made writable, a receiver left by an earlier control container
    /// must not write any more.
    Quiesce { id: String, wait: Duration },
}

/// Its name only, so no log or error message can carry a secret.
impl std::fmt::Debug for ToData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl ToData {
    /// What it asks, for logs (never its fields: a `Send` or a `Ticket` carries a secret).
    pub fn name(&self) -> &'static str {
        match self {
            ToData::Health => "Health",
            ToData::Send(_) => "Send",
            ToData::Share(_) => "Share",
            ToData::Manifest { .. } => "Manifest",
            ToData::Control(_) => "Control",
            ToData::Placed { .. } => "Placed",
            ToData::Receive(_) => "Receive",
            ToData::StopReceiver => "StopReceiver",
            ToData::Ticket { .. } => "Ticket",
            ToData::Deliver { .. } => "Deliver",
            ToData::Drill { .. } => "Drill",
            ToData::Quiesce { .. } => "Quiesce",
        }
    }
}

impl FromData {
    /// What it says, for logs (a `Place` carries the session's secret).
    pub fn name(&self) -> &'static str {
        match self {
            FromData::Health { .. } => "Health",
            FromData::Manifest => "Manifest",
            FromData::Progress(_) => "Progress",
            FromData::Place { .. } => "Place",
            FromData::Sent { .. } => "Sent",
            FromData::Shared { .. } => "Shared",
            FromData::Receiving(_) => "Receiving",
            FromData::Scrubbed(_) => "Scrubbed",
            FromData::Received(_) => "Received",
            FromData::Ticket(_) => "Ticket",
            FromData::Delivered(_) => "Delivered",
            FromData::Drilled(_) => "Drilled",
            FromData::Quiet(_) => "Quiet",
        }
    }
}

/// A target relationship's receiver as the control container decided it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceiveJob {
    /// The relationship (one receiver per relationship runs in a data container).
    pub id: String,
    pub insecure_plaintext: bool,
    pub allow_setid: bool,
    pub allow_devices: bool,
    pub checkpoint_bytes: Option<u64>,
    pub scrub_every: Option<Duration>,
    /// Offer RDMA to senders that ask for it (`select::Choice::Auto`).
    pub rdma: bool,
}

/// From the data container.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromData {
    Health {
        version: String,
        roles: String,
    },
    /// The manifest asked for is on disk (or none was kept).
    Manifest,
    /// The session's counters, every `PROGRESS_EVERY`.
    Progress(Counters),
    /// Run the share at `place` on another node (the session's `Spread::run`) and answer
    /// with `ToData::Placed`.
    Place {
        place: usize,
        shard: ShardRef,
    },
    /// The session ended; `fell_back`: an RDMA connection of it failed, so later sessions of
    /// the job use TCP.
    Sent {
        outcome: Result<Box<mover::sender::SendReport>, RemoteError>,
        fell_back: bool,
    },
    /// The share ended (`unreadable`: its plan or source could not be read here).
    Shared {
        outcome: Result<u64, RemoteError>,
        unreadable: bool,
    },
    /// The receiver runs as `key` (or could not start).
    Receiving(Result<u64, RemoteError>),
    /// The receiver's last scrub, sent when one ends.
    Scrubbed(mover::receiver::ScrubReport),
    /// The receiver stopped.
    Received(Result<(), RemoteError>),
    /// The ticket's session id.
    Ticket(Result<u128, RemoteError>),
    /// Whether the receiver took the delivered socket.
    Delivered(bool),
    Drilled(Result<mover::receiver::drill::DrillReport, RemoteError>),
    /// No receiver of the relationship runs any more.
    Quiet(Result<(), RemoteError>),
}

/// How often the data container reports a session's counters.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// One send session as the control container decided it: `SendOptions` in plain data. The
/// source is the descriptor passed with the opening byte, and `below` under it (a kept policy
/// snapshot), because the control side's `/proc/self/fd` name means nothing here.
#[derive(Debug, Serialize, Deserialize)]
pub struct SendJob {
    pub below: PathBuf,
    pub to: std::net::SocketAddr,
    pub threads: usize,
    pub direct: bool,
    pub state: Option<PathBuf>,
    pub snapshot: Option<mover::snapshot::Provider>,
    /// The ticket's session id.
    pub session: u128,
    pub secret: Option<Vec<u8>>,
    pub id_map: Option<mover::sender::IdMap>,
    pub pin: Vec<Vec<u8>>,
    pub changed: Option<mover::tree::narrow::ChangedDirs>,
    /// Other places of the session (decided by the control side's `Spread::places`), and
    /// where they find the source; 0: every worker here.
    pub places: usize,
    pub places_source: Option<PathBuf>,
    /// The relationship's transport choice and whether an earlier session of the job fell
    /// back to TCP.
    pub transport: mover::transport::select::Choice,
    pub fell_back: bool,
    pub control: ControlState,
    /// Keep the relationship's manifest in memory between its jobs (by `state`), as the
    /// control container would in one process.
    pub keep_manifest: bool,
    /// The target's other write places, as its ticket named them.
    #[serde(default)]
    pub write_places: Vec<std::net::SocketAddr>,
}

/// A job's requests, as `JobControl` holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ControlState {
    pub paused: bool,
    pub cancelled: bool,
    pub suspended: bool,
    pub rate: Option<u64>,
}

impl ControlState {
    pub fn of(c: &mover::job::JobControl) -> ControlState {
        ControlState {
            paused: c.is_paused(),
            cancelled: c.is_cancelled(),
            suspended: c.is_suspended(),
            rate: c.rate(),
        }
    }

    /// Applies what differs from `was` to `c`.
    pub fn apply(self, was: ControlState, c: &mover::job::JobControl) {
        if self.rate != was.rate {
            c.set_rate(self.rate);
        }
        if self.paused != was.paused {
            c.set_paused(self.paused);
        }
        if self.suspended && !was.suspended {
            c.suspend();
        }
        if self.cancelled && !was.cancelled {
            c.cancel();
        }
    }
}

/// A session's counters (`mover::Progress` without its control).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counters {
    pub files_total: u64,
    pub bytes_total: u64,
    pub bytes: u64,
    pub files: u64,
}

impl Counters {
    pub fn of(p: &mover::Progress) -> Counters {
        use std::sync::atomic::Ordering::Relaxed;
        Counters {
            files_total: p.files_total.load(Relaxed),
            bytes_total: p.bytes_total.load(Relaxed),
            bytes: p.bytes.load(Relaxed),
            files: p.files.load(Relaxed),
        }
    }

    /// Moves `p` by what these counters gained since `last` (the totals are set): `p` may hold
    /// more than this session's own counters.
    pub fn add_since(self, last: Counters, p: &mover::Progress) {
        use std::sync::atomic::Ordering::Relaxed;
        p.set_totals(self.files_total, self.bytes_total);
        p.bytes
            .fetch_add(self.bytes.saturating_sub(last.bytes), Relaxed);
        p.files
            .fetch_add(self.files.saturating_sub(last.files), Relaxed);
    }
}

/// A data-plane error as it crosses the socket: the kinds the control side acts on (retry or
/// not, the files to copy aside, the disk-full code) survive; the rest keep their message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RemoteError {
    Io {
        context: String,
        message: String,
        os: Option<i32>,
    },
    Peer {
        code: u16,
        message: String,
    },
    Refused {
        code: u16,
        message: String,
    },
    PeerLost(String),
    Verify(String),
    SourceChanged {
        message: String,
        paths: Vec<Vec<u8>>,
    },
    Busy(String),
    Corrupt(String),
    Cancelled(String),
    /// Any other kind, by its message.
    Other(String),
}

impl From<&mover::Error> for RemoteError {
    fn from(e: &mover::Error) -> RemoteError {
        use mover::Error as E;
        match e {
            E::Io { context, source } => RemoteError::Io {
                context: context.clone(),
                message: source.to_string(),
                os: source.raw_os_error(),
            },
            E::Peer { code, message } => RemoteError::Peer {
                code: *code as u16,
                message: message.clone(),
            },
            E::Refused { code, message } => RemoteError::Refused {
                code: *code as u16,
                message: message.clone(),
            },
            E::PeerLost(m) => RemoteError::PeerLost(m.clone()),
            E::Verify(m) => RemoteError::Verify(m.clone()),
            E::SourceChanged { message, paths } => RemoteError::SourceChanged {
                message: message.clone(),
                paths: paths.clone(),
            },
            E::Busy(m) => RemoteError::Busy(m.clone()),
            E::Corrupt(m) => RemoteError::Corrupt(m.clone()),
            E::Cancelled(m) => RemoteError::Cancelled(m.clone()),
            other => RemoteError::Other(other.to_string()),
        }
    }
}

impl From<RemoteError> for mover::Error {
    fn from(e: RemoteError) -> mover::Error {
        use mover::wire::message::ErrorCode;
        use mover::Error as E;
        match e {
            RemoteError::Io {
                context,
                message,
                os,
            } => E::Io {
                context,
                source: match os {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::other(message),
                },
            },
            RemoteError::Peer { code, message } => E::Peer {
                code: ErrorCode::from_u16(code),
                message,
            },
            RemoteError::Refused { code, message } => E::Refused {
                code: ErrorCode::from_u16(code),
                message,
            },
            RemoteError::PeerLost(m) => E::PeerLost(m),
            RemoteError::Verify(m) => E::Verify(m),
            RemoteError::SourceChanged { message, paths } => E::SourceChanged { message, paths },
            RemoteError::Busy(m) => E::Busy(m),
            RemoteError::Corrupt(m) => E::Corrupt(m),
            RemoteError::Cancelled(m) => E::Cancelled(m),
            // Not retried, as the kinds it stands for (protocol, entry list, pinning, panics).
            RemoteError::Other(m) => E::Unsupported(m),
        }
    }
}

/// An error of the data socket while `context`.
pub fn io(context: &str, e: std::io::Error) -> mover::Error {
    mover::Error::Io {
        context: format!("the data container's socket: {context}"),
        source: e,
    }
}

fn encode<T: Serialize>(msg: &T) -> mover::Result<Vec<u8>> {
    serde_json::to_vec(msg)
        .map_err(|e| mover::Error::Unsupported(format!("a message to the data container: {e}")))
}

/// One message as it goes on the socket: its length, then its JSON (a `Limit` error beyond
/// `MAX_MESSAGE`, before anything is written).
pub fn frame<T: Serialize>(msg: &T) -> mover::Result<Vec<u8>> {
    let body = encode(msg)?;
    if body.len() > MAX_MESSAGE {
        return Err(mover::Error::Limit(format!(
            "a message to the data container of {} bytes (at most {MAX_MESSAGE})",
            body.len()
        )));
    }
    let len = u32::try_from(body.len())
        .map_err(|_| io("length", std::io::ErrorKind::InvalidInput.into()))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Writes one message.
pub fn write_msg<T: Serialize>(w: &mut impl Write, msg: &T) -> mover::Result<()> {
    w.write_all(&frame(msg)?).map_err(|e| io("writing", e))
}

/// Connects to the data container's socket at `path`.
pub fn connect(path: &Path) -> mover::Result<UnixStream> {
    UnixStream::connect(path).map_err(|e| mover::Error::Io {
        context: format!(
            "reaching this node's data container at {} (`mover node run` starts it)",
            path.display()
        ),
        source: e,
    })
}

/// A session secret as it crossed the socket.
pub fn secret(bytes: Vec<u8>) -> mover::Result<mover::SessionSecret> {
    let b = bytes
        .try_into()
        .map_err(|_| mover::Error::Corrupt("a session secret of the wrong length".into()))?;
    Ok(mover::SessionSecret::from_bytes(b))
}

/// Whether `e` is a read that timed out (a socket with a read timeout).
pub fn timed_out(e: &mover::Error) -> bool {
    matches!(e, mover::Error::Io { source, .. } if matches!(
        source.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ))
}

/// Whether `e` says no data container runs (its socket is gone or nobody listens on it):
/// then nothing it kept (a manifest, a receiver) exists any more.
pub fn not_running(e: &mover::Error) -> bool {
    matches!(e, mover::Error::Io { source, .. } if matches!(
        source.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    ))
}

/// Largest answer to a `call`: a health check, a manifest, a ticket or a drill report is at
/// most a few hundred bytes.
pub const MAX_ANSWER: usize = 64 * 1024;

/// One request (with the descriptor `fd`, if any) and its one answer (at most `MAX_ANSWER`
/// bytes) on a connection of its own, waiting at most `timeout` for it (None: no bound).
pub fn call(
    path: &Path,
    timeout: Option<Duration>,
    fd: Option<BorrowedFd<'_>>,
    msg: &ToData,
) -> mover::Result<FromData> {
    answer(ask(path, timeout, fd, msg)?)
}

/// The first half of a `call`: once it returns, the descriptor has crossed.
pub fn ask(
    path: &Path,
    timeout: Option<Duration>,
    fd: Option<BorrowedFd<'_>>,
    msg: &ToData,
) -> mover::Result<UnixStream> {
    let mut conn = connect(path)?;
    conn.set_read_timeout(timeout)
        .map_err(|e| io("setting a timeout", e))?;
    open(&conn, fd)?;
    write_msg(&mut conn, msg)?;
    Ok(conn)
}

/// The second half of a `call`.
pub fn answer(mut conn: UnixStream) -> mover::Result<FromData> {
    match read_bounded(&mut conn, MAX_ANSWER) {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(mover::Error::PeerLost(
            "the data container closed the connection without an answer".into(),
        )),
        Err(e) if timed_out(&e) => Err(mover::Error::PeerLost(
            "the data container did not answer in time".into(),
        )),
        Err(e) => Err(e),
    }
}

/// A thread that runs `tick` every `period` (until `tick` says to end, or `stop`): stopping
/// wakes it at once, so a short session does not wait out a tick.
pub struct Ticker {
    done: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Ticker {
    pub fn start(
        name: &str,
        period: Duration,
        mut tick: impl FnMut() -> bool + Send + 'static,
    ) -> mover::Result<Ticker> {
        let (done, ended) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = ended.recv_timeout(period) {
                    if !tick() {
                        return;
                    }
                }
            })
            .map_err(|e| io(&format!("starting the {name} thread"), e))?;
        Ok(Ticker { done, thread })
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        drop(self.done);
        let _ = self.thread.join();
    }
}

/// Reads one message; `Ok(None)` at a clean end of the stream (between messages).
pub fn read_msg<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> mover::Result<Option<T>> {
    read_bounded(r, MAX_MESSAGE)
}

/// `read_msg` of a message of at most `max` bytes.
fn read_bounded<T: for<'de> Deserialize<'de>>(
    r: &mut impl Read,
    max: usize,
) -> mover::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io("reading", e)),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(mover::Error::Limit(format!(
            "a message on the data container's socket of {len} bytes (at most {max})"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| io("reading", e))?;
    serde_json::from_slice(&body).map(Some).map_err(|e| {
        mover::Error::Corrupt(format!("a message on the data container's socket: {e}"))
    })
}

/// Sends the opening byte, with `source` attached when there is one.
pub fn open(s: &UnixStream, source: Option<BorrowedFd<'_>>) -> mover::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    let fds;
    let byte = match source {
        Some(fd) => {
            fds = [fd];
            anc.push(SendAncillaryMessage::ScmRights(&fds));
            [OPEN_WITH_FD]
        }
        None => [OPEN_PLAIN],
    };
    let sent = sendmsg(
        s.as_fd(),
        &[std::io::IoSlice::new(&byte)],
        &mut anc,
        SendFlags::empty(),
    )
    .map_err(|e| io("opening", e.into()))?;
    if sent != 1 {
        return Err(io("opening", std::io::ErrorKind::WriteZero.into()));
    }
    Ok(())
}

/// Reads the opening byte and the descriptor it carries, if any.
pub fn accept(s: &UnixStream) -> mover::Result<Option<OwnedFd>> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let got = recvmsg(
        s.as_fd(),
        &mut [std::io::IoSliceMut::new(&mut byte)],
        &mut anc,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| io("accepting", e.into()))?;
    if got.bytes != 1 {
        return Err(io("accepting", std::io::ErrorKind::UnexpectedEof.into()));
    }
    let mut fd = None;
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            // Any descriptor beyond the first is closed as it drops.
            for f in fds {
                fd.get_or_insert(f);
            }
        }
    }
    match (byte[0], fd) {
        (OPEN_PLAIN, None) => Ok(None),
        (OPEN_WITH_FD, Some(fd)) => Ok(Some(fd)),
        (b, fd) => Err(mover::Error::Corrupt(format!(
            "opening byte {b} with {} descriptor",
            if fd.is_some() { "a" } else { "no" }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_the_source_descriptor_cross_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        open(&a, Some(d.as_fd())).unwrap();
        let got = accept(&b).unwrap().expect("a descriptor");
        let seen = std::fs::read(format!(
            "/proc/self/fd/{}/f",
            std::os::fd::AsRawFd::as_raw_fd(&got)
        ))
        .unwrap();
        assert_eq!(seen, b"x");
        let mut w = &a;
        write_msg(
            &mut w,
            &ToData::Control(ControlState {
                paused: true,
                rate: Some(7),
                ..Default::default()
            }),
        )
        .unwrap();
        let mut r = &b;
        match read_msg::<ToData>(&mut r).unwrap() {
            Some(ToData::Control(c)) => assert_eq!((c.paused, c.rate), (true, Some(7))),
            other => panic!("{}", other.map_or("nothing", |m| m.name())),
        }
        drop(a);
        assert!(read_msg::<ToData>(&mut r).unwrap().is_none(), "a clean end");
    }

    #[test]
    fn an_opening_without_a_descriptor_and_a_bad_byte_are_told_apart() {
        let (a, b) = UnixStream::pair().unwrap();
        open(&a, None).unwrap();
        assert!(accept(&b).unwrap().is_none());
        let mut w = &a;
        w.write_all(&[9]).unwrap();
        let e = accept(&b).unwrap_err().to_string();
        assert!(e.contains("opening byte 9"), "{e}");
        w.write_all(&u32::MAX.to_le_bytes()).unwrap();
        let mut r = &b;
        let e = read_msg::<ToData>(&mut r).unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
    }

    #[test]
    fn a_change_back_from_what_a_session_started_with_reaches_its_workers() {
        // The session started paused at 7 B/s; the operator resumes and lifts the limit.
        let started = ControlState {
            paused: true,
            rate: Some(7),
            ..Default::default()
        };
        let c = mover::job::JobControl::default();
        started.apply(ControlState::default(), &c);
        assert!(c.is_paused() && c.rate() == Some(7));
        let now = ControlState::default();
        now.apply(started, &c);
        assert!(!c.is_paused() && c.rate().is_none());
        // Cancel and suspend stay once set, whatever comes after.
        ControlState {
            cancelled: true,
            suspended: true,
            ..now
        }
        .apply(now, &c);
        now.apply(now, &c);
        assert!(c.is_cancelled() && c.is_suspended());
    }

    #[test]
    fn counters_add_what_the_session_gained_to_a_job_that_counts_its_places_too() {
        let p = mover::Progress::default();
        // Another place's share ended: its bytes are in the job's counters already.
        p.bytes
            .fetch_add(1000, std::sync::atomic::Ordering::Relaxed);
        let a = Counters {
            files_total: 3,
            bytes_total: 9000,
            bytes: 200,
            files: 1,
        };
        a.add_since(Counters::default(), &p);
        let b = Counters { bytes: 500, ..a };
        b.add_since(a, &p);
        assert_eq!(Counters::of(&p).bytes, 1500);
        assert_eq!(Counters::of(&p).files, 1);
        assert_eq!(Counters::of(&p).bytes_total, 9000);
    }

    #[test]
    fn error_kinds_the_control_side_acts_on_survive_the_crossing() {
        let cases = [
            mover::Error::SourceChanged {
                message: "m".into(),
                paths: vec![b"a/b".to_vec()],
            },
            mover::Error::Io {
                context: "writing".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            },
            mover::Error::Peer {
                code: mover::wire::message::ErrorCode::DiskFull,
                message: "full".into(),
            },
            mover::Error::PeerLost("gone".into()),
            mover::Error::Cancelled("stop".into()),
            mover::Error::Limit("too many".into()),
        ];
        for e in cases {
            let json = serde_json::to_vec(&RemoteError::from(&e)).unwrap();
            let back: mover::Error = serde_json::from_slice::<RemoteError>(&json).unwrap().into();
            assert_eq!(
                mover::sender::retryable(&back),
                mover::sender::retryable(&e),
                "{e}"
            );
            assert_eq!(back.code() as u16, e.code() as u16, "{e}");
            assert!(
                back.to_string().contains(&e.to_string()) || e.to_string().contains("limit"),
                "{e} -> {back}"
            );
        }
    }
}
