//! Connections a standalone receiver accepted on its own listener whose Hello has not all
//! arrived. One accept loop takes every session's worker connections too, so it never waits on
//! one peer: a connection's Hello is read as its bytes come, without blocking, and only a
//! whole one goes on to the handshake. A peer that sends its Hello a byte at a time (each
//! within a read timeout) would otherwise hold the loop, and with it every running session's
//! workers, for as long as it likes. (Inside the daemon, its async port reads the Hello first.)

use crate::wire::frame::{decode_frame, encode_frame, FrameHeader, FrameKind, FRAME_HEADER_LEN};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::Instant;

/// Connections whose Hello is still arriving, at most; a new one beyond this pushes out the
/// one waiting longest (a sender writes its whole Hello as soon as it connects).
pub(super) const MAX_PENDING_HELLOS: usize = 64;
/// Largest Hello payload taken: versions, the software string, a session id and a role are
/// well under this.
pub(super) const MAX_HELLO_PAYLOAD: u32 = 4096;

struct Pending {
    stream: TcpStream,
    /// The Hello frame's bytes so far: header, then payload.
    buf: Vec<u8>,
    since: Instant,
}

/// What became of a pending connection's Hello after a read.
enum Arrived {
    /// Not all here yet.
    More,
    /// Whole (header and payload, checksum verified): the payload.
    Whole(Vec<u8>),
    /// Closed, failed, or not a Hello this receiver takes (why, for the log and the peer).
    Drop(String),
}

#[derive(Default)]
pub(super) struct Hellos {
    pending: VecDeque<Pending>,
}

impl Hellos {
    /// Takes a connection just accepted.
    pub(super) fn add(&mut self, stream: TcpStream) {
        if let Err(e) = stream.set_nonblocking(true) {
            tracing::warn!("accepted socket: {e}");
            return;
        }
        if self.pending.len() >= MAX_PENDING_HELLOS {
            if let Some(old) = self.pending.pop_front() {
                tracing::warn!(
                    peer = %peer(&old.stream),
                    "dropped a connection whose Hello had not arrived: {MAX_PENDING_HELLOS} \
                     were waiting"
                );
            }
        }
        self.pending.push_back(Pending {
            stream,
            buf: Vec::with_capacity(FRAME_HEADER_LEN),
            since: Instant::now(),
        });
        debug_assert!(self.pending.len() <= MAX_PENDING_HELLOS);
    }

    /// The sockets to wait on.
    pub(super) fn fds(&self) -> impl Iterator<Item = std::os::fd::BorrowedFd<'_>> {
        self.pending.iter().map(|p| p.stream.as_fd())
    }

    /// Reads what each waiting connection has sent; returns one whose whole Hello is in (its
    /// stream, still non-blocking: `TcpConn::new` makes it blocking, and the Hello's payload). Drops those closed, malformed,
    /// or not whole `within` their accept.
    pub(super) fn take_whole(
        &mut self,
        within: std::time::Duration,
    ) -> Option<(TcpStream, Vec<u8>)> {
        let mut k = 0;
        while k < self.pending.len() {
            let p = &mut self.pending[k];
            let outcome = match read_some(p) {
                Arrived::More if p.since.elapsed() >= within => {
                    Arrived::Drop(format!("no whole Hello within {within:?}"))
                }
                o => o,
            };
            match outcome {
                Arrived::More => k += 1,
                Arrived::Whole(payload) => {
                    let p = self.pending.remove(k)?;
                    return Some((p.stream, payload));
                }
                Arrived::Drop(why) => {
                    let Some(mut p) = self.pending.remove(k) else {
                        continue;
                    };
                    tracing::warn!(peer = %peer(&p.stream), "connection refused: {why}");
                    // Best effort, and it cannot block: the socket is still non-blocking.
                    let error = crate::wire::message::encode_error(
                        crate::wire::message::ErrorCode::Other,
                        &why,
                    );
                    let _ = p.stream.write_all(&encode_frame(FrameKind::Error, &error));
                }
            }
        }
        None
    }
}

fn peer(s: &TcpStream) -> String {
    s.peer_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// Reads, without blocking, at most the rest of `p`'s Hello frame.
fn read_some(p: &mut Pending) -> Arrived {
    let mut chunk = [0u8; 512];
    // Each round reads at least one byte or returns: at most the frame's length rounds.
    loop {
        let want = match p.buf.len().checked_sub(FRAME_HEADER_LEN) {
            None => FRAME_HEADER_LEN - p.buf.len(),
            Some(_) => {
                let mut h = [0u8; FRAME_HEADER_LEN];
                h.copy_from_slice(&p.buf[..FRAME_HEADER_LEN]);
                let header = match FrameHeader::decode(&h) {
                    Ok(h) => h,
                    Err(e) => return Arrived::Drop(format!("malformed first frame: {e}")),
                };
                if header.kind != FrameKind::Hello {
                    return Arrived::Drop(format!("first frame is {:?}, not Hello", header.kind));
                }
                if header.len > MAX_HELLO_PAYLOAD {
                    return Arrived::Drop(format!(
                        "Hello of {} bytes (at most {MAX_HELLO_PAYLOAD})",
                        header.len
                    ));
                }
                FRAME_HEADER_LEN + header.len as usize - p.buf.len()
            }
        };
        if want == 0 {
            return match decode_frame(&p.buf) {
                Ok((_, payload, _)) => Arrived::Whole(payload.to_vec()),
                Err(e) => Arrived::Drop(format!("malformed Hello: {e}")),
            };
        }
        let n = want.min(chunk.len());
        match (&p.stream).read(&mut chunk[..n]) {
            Ok(0) => return Arrived::Drop("closed before its Hello".into()),
            Ok(got) => p.buf.extend_from_slice(&chunk[..got]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                return Arrived::More
            }
            Err(e) => return Arrived::Drop(format!("reading its Hello: {e}")),
        }
    }
}
