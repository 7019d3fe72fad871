//! TCP transport: one connection per worker plus one control connection per session.

use super::{Connection, Transport};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

/// How long connect() may take before the peer is reported unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TcpConn(TcpStream);

impl TcpConn {
    /// Wraps a connected stream in blocking mode (streams handed over by an async accept loop
    /// arrive non-blocking).
    pub fn new(s: TcpStream) -> io::Result<TcpConn> {
        s.set_nonblocking(false)?;
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
    fn uring_socket(&self) -> io::Result<Option<OwnedFd>> {
        Ok(Some(self.0.as_fd().try_clone_to_owned()?))
    }
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.0.set_read_timeout(t)?;
        self.0.set_write_timeout(t)
    }
    fn shutdown(&self) {
        // Already closed by the peer is fine: the point is that nothing stays blocked.
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
    fn peer_closed(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut fds = [PollFd::new(&self.0, PollFlags::IN | PollFlags::RDHUP)];
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&zero)) {
            Ok(n) if n > 0 => {
                let r = fds[0].revents();
                if r.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::RDHUP) {
                    return true;
                }
                let mut b = [0u8; 1];
                let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
                match rustix::net::recv(&self.0, &mut b, flags) {
                    Ok((0, _)) => true,
                    Ok(_) | Err(rustix::io::Errno::AGAIN) => false,
                    Err(_) => true,
                }
            }
            _ => false,
        }
    }
    fn peer(&self) -> String {
        self.0
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|e| format!("(unknown peer: {e})"))
    }
    fn tcp_stream(&self) -> io::Result<Option<TcpStream>> {
        Ok(Some(self.0.try_clone()?))
    }
}

#[derive(Default, Clone, Copy)]
pub struct TcpTransport;

impl Transport for TcpTransport {
    fn connect(&self, peer: SocketAddr) -> io::Result<Box<dyn Connection>> {
        let s = TcpStream::connect_timeout(&peer, CONNECT_TIMEOUT)?;
        Ok(Box::new(TcpConn::new(s)?))
    }
}

pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}
