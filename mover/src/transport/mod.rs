//! How bytes reach the peer. TCP today; the trait leaves room for RDMA, whose connections have no
//! kernel fd for io_uring to drive (`uring_fd` returns None and the engine would use the
//! transport's own completion path).

pub mod tcp;

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

pub trait Connection: Send {
    fn send_all(&mut self, buf: &[u8]) -> io::Result<()>;
    fn recv_exact(&mut self, buf: &mut [u8]) -> io::Result<()>;
    /// Kernel socket the io_uring engine may drive directly.
    fn uring_fd(&self) -> Option<RawFd>;
    /// Bounds how long a blocking send/recv on the control path may wait for the peer.
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn peer(&self) -> io::Result<SocketAddr>;
}

pub trait Transport: Send + Sync {
    type Conn: Connection + 'static;
    fn connect(&self, peer: SocketAddr) -> io::Result<Self::Conn>;
}
