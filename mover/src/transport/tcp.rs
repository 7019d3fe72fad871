//! TCP transport: one connection per worker plus one control connection per session.

use super::{Connection, Transport};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// How long connect() may take before the peer is reported unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TcpConn(pub TcpStream);

impl TcpConn {
    pub fn new(s: TcpStream) -> io::Result<TcpConn> {
        // Frames are written whole; Nagle would only delay the small control frames.
        s.set_nodelay(true)?;
        Ok(TcpConn(s))
    }
}

impl Connection for TcpConn {
    fn send_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn recv_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact(buf)
    }
    fn uring_fd(&self) -> Option<RawFd> {
        Some(self.0.as_raw_fd())
    }
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.0.set_read_timeout(t)?;
        self.0.set_write_timeout(t)
    }
    fn peer(&self) -> io::Result<SocketAddr> {
        self.0.peer_addr()
    }
}

#[derive(Default, Clone, Copy)]
pub struct TcpTransport;

impl Transport for TcpTransport {
    type Conn = TcpConn;
    fn connect(&self, peer: SocketAddr) -> io::Result<TcpConn> {
        TcpConn::new(TcpStream::connect_timeout(&peer, CONNECT_TIMEOUT)?)
    }
}

pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}
