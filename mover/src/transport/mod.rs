//! How bytes reach the peer. Sessions and their workers see only `Connection`s, so a transport
//! is a connect function plus a connection type:
//! - `tcp`: kernel sockets. `uring_socket` hands the io_uring engine a duplicate of the socket,
//!   and workers move data frames with io_uring sends and receives.
//! - `mem` (feature `testkit`): an in-process network with seeded faults, for tests that drive
//!   whole sessions without sockets. It has no kernel fd, so workers move frames through
//!   `send_all`/`recv_exact`, as an RDMA transport's would go through its own verbs.
//! - `rdma`: credit and queue-pair state machines (always built, pure), and with feature `rdma`
//!   the verbs transport over libibverbs.
//! - `select`: which of TCP and RDMA a session's worker connections use (negotiated in the
//!   Hello), and the fallback to TCP after an RDMA failure.

pub mod rdma;
pub mod select;
pub mod tcp;

#[cfg(feature = "testkit")]
pub mod mem;

use crate::engine::ring::MemSpan;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::time::Duration;

pub trait Connection: Send {
    fn send_all(&mut self, buf: &[u8]) -> io::Result<()>;
    fn recv_exact(&mut self, buf: &mut [u8]) -> io::Result<()>;
    /// A duplicate of the kernel socket for the io_uring engine to drive (the ring keeps it
    /// open until its last operation completes), or None if this transport has none.
    fn uring_socket(&self) -> io::Result<Option<OwnedFd>>;
    /// Bounds how long a blocking send/recv may wait for the peer; None waits forever.
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    /// Ends both directions: blocked sends and receives here return, the peer reads EOF.
    fn shutdown(&self);
    /// Whether the peer has closed or reset the connection, without blocking. Only meaningful
    /// when the peer owes nothing: unread data also counts as "not closed".
    fn peer_closed(&self) -> bool;
    /// The peer, for logs.
    fn peer(&self) -> String;
    /// A duplicate of the TCP stream under this connection, if it is a TCP connection: what an
    /// RDMA queue pair is set up over (and keeps as its control connection).
    fn tcp_stream(&self) -> io::Result<Option<TcpStream>> {
        Ok(None)
    }
    /// Tells a transport without a kernel socket that the frames it is given to send lie in
    /// `span` (the worker's buffer slab): one that can (RDMA) registers it with its device and
    /// from then on sends slices inside it straight from there, without a copy, returning from
    /// `send_all` only once the device is done reading them. Whether it does.
    fn send_from_region(&mut self, span: MemSpan) -> io::Result<bool> {
        let _ = span;
        Ok(false)
    }
    /// Forgets the region `send_from_region` named (before its memory is freed): later sends
    /// are copied.
    fn release_region(&mut self) {}
    /// Returns once what was sent has left this side, so that closing now loses none of it. A
    /// kernel socket delivers what it queued before its close (nothing to do); an RDMA queue
    /// pair destroyed with a message still posted loses the message.
    fn flush_sent(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub trait Transport: Send + Sync {
    fn connect(&self, peer: SocketAddr) -> io::Result<Box<dyn Connection>>;
    /// The RDMA policy of sessions over this transport: None offers TCP only (the Hello
    /// negotiates; see `select`).
    fn rdma(&self) -> Option<&select::RdmaPolicy> {
        None
    }
}
