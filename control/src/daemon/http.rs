//! The REST API's connections, bounded: at most `MAX_API_CONNECTIONS` open at once (one more
//! is answered 503 and closed), and every request head must arrive within
//! `API_HEADER_TIMEOUT`, counted from accept or from the previous response (so a slowloris
//! head, or a connection that never sends one, is closed, and an idle keep-alive connection
//! too). axum serves what this listener hands it; the deadline lives in the connection's I/O.
//! With TLS (`api_tls`), the handshake runs in the connection's own task, inside the same
//! deadline, so a client that stalls its handshake holds nobody else up.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// API connections open at once. Operators, scripts and a metrics scraper need a handful; a
/// connection beyond this is refused at once rather than queued.
pub const MAX_API_CONNECTIONS: usize = 128;
/// Time for a whole request head (request line and headers) to arrive.
pub const API_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error that is not about one connection (out of fds, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// What a connection over the limit is told before it is closed.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// The API's listener: hands axum connections within the limits, over TLS if `tls` is set.
pub struct Limited {
    inner: TcpListener,
    open: Arc<Semaphore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Limited {
    pub fn new(inner: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) -> Limited {
        Limited {
            inner,
            open: Arc::new(Semaphore::new(MAX_API_CONNECTIONS)),
            tls,
        }
    }
}

impl axum::serve::Listener for Limited {
    type Io = Bounded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Bounded, SocketAddr) {
        loop {
            let (tcp, addr) = match self.inner.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("API accept: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            match self.open.clone().try_acquire_owned() {
                Ok(permit) => {
                    let conn = match &self.tls {
                        Some(a) => Conn::Handshaking(Box::new(a.accept(tcp))),
                        None => Conn::Plain(tcp),
                    };
                    return (Bounded::new(conn, permit), addr);
                }
                Err(_) => {
                    // Best effort: the socket's buffer takes these few bytes or nothing.
                    let _ = tcp.try_write(BUSY);
                    tracing::debug!(%addr, "too many API connections; refused");
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Where the end of a request head is, byte by byte: an empty line after a non-empty one
/// (`\r` ignored, so bare `\n` line ends count too; empty lines before the request line do not
/// end anything).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct HeadScan {
    line_has_text: bool,
    any_line: bool,
}

impl HeadScan {
    /// Feeds `bytes`; true once the head is complete.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            match b {
                b'\n' if !self.line_has_text && self.any_line => return true,
                b'\n' => {
                    self.any_line |= self.line_has_text;
                    self.line_has_text = false;
                }
                b'\r' => {}
                _ => self.line_has_text = true,
            }
        }
        false
    }
}

/// An API connection's stream: in clear, or TLS (handshaking first).
enum Conn {
    Plain(TcpStream),
    Handshaking(Box<tokio_rustls::Accept<TcpStream>>),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Failed,
}

impl Conn {
    /// Drives a TLS handshake to its end; Ready(Ok) once the stream can carry data.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Conn::Handshaking(accept) = self {
            match Pin::new(&mut **accept).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(s)) => *self = Conn::Tls(Box::new(s)),
                Poll::Ready(Err(e)) => {
                    *self = Conn::Failed;
                    return Poll::Ready(Err(e));
                }
            }
        }
        match self {
            Conn::Failed => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the TLS handshake failed",
            ))),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn io(&mut self) -> Pin<&mut (dyn Stream + Send)> {
        match self {
            Conn::Plain(t) => Pin::new(t),
            Conn::Tls(t) => Pin::new(&mut **t),
            // Invariant: io() is called only after poll_ready returned Ready(Ok).
            Conn::Handshaking(_) | Conn::Failed => unreachable!("stream used before its handshake"),
        }
    }
}

/// What a connection's stream can do.
trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

/// A connection of the API, holding its place in the limit until dropped.
pub struct Bounded {
    tcp: Conn,
    _open: OwnedSemaphorePermit,
    /// While a request head is awaited: when it must be complete. None from the end of a head
    /// until its response starts (the handler may take long; that is not the client's doing).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    scan: HeadScan,
    /// A head was read and no response byte written since.
    in_request: bool,
}

impl Bounded {
    fn new(tcp: Conn, open: OwnedSemaphorePermit) -> Bounded {
        Bounded {
            tcp,
            _open: open,
            deadline: Some(Box::pin(tokio::time::sleep(API_HEADER_TIMEOUT))),
            scan: HeadScan::default(),
            in_request: false,
        }
    }

    /// The response has started: the next request head is due within the timeout.
    fn responding(&mut self) {
        if self.in_request {
            self.in_request = false;
            self.scan = HeadScan::default();
            self.deadline = Some(Box::pin(tokio::time::sleep(API_HEADER_TIMEOUT)));
        }
    }
}

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if let Some(d) = me.deadline.as_mut() {
            // Polled before reading, so the task is woken at the deadline even when no byte
            // ever comes.
            if d.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no complete request head within {}s",
                        API_HEADER_TIMEOUT.as_secs()
                    ),
                )));
            }
        }
        if let Err(e) = std::task::ready!(me.tcp.poll_ready(cx)) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = me.tcp.io().poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            if me.deadline.is_some() && me.scan.feed(&buf.filled()[before..]) {
                me.deadline = None;
                me.in_request = true;
            }
        }
        polled
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.tcp.poll_ready(cx))?;
        self.responding();
        self.tcp.io().poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.tcp.poll_ready(cx))?;
        self.responding();
        self.tcp.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.tcp {
            Conn::Plain(t) => t.is_write_vectored(),
            Conn::Tls(t) => t.is_write_vectored(),
            Conn::Handshaking(_) | Conn::Failed => false,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.tcp.poll_ready(cx))?;
        self.tcp.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.tcp {
            Conn::Handshaking(_) | Conn::Failed => Poll::Ready(Ok(())),
            _ => self.tcp.io().poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_the_first_empty_line_after_the_request_line() {
        let mut s = HeadScan::default();
        assert!(
            !s.feed(b"\r\n\r\n"),
            "empty lines before a request end nothing"
        );
        assert!(!s.feed(b"GET / HTTP/1.1\r\nHost: x\r"));
        assert!(!s.feed(b"\n"));
        assert!(s.feed(b"\r\n"));
        let mut s = HeadScan::default();
        assert!(s.feed(b"GET / HTTP/1.1\nHost: x\n\nbody"), "bare newlines");
        let mut s = HeadScan::default();
        for b in b"GET / HTTP/1.1\r\nA: b\r\n".iter() {
            assert!(!s.feed(std::slice::from_ref(b)));
        }
        assert!(s.feed(b"\r\n"), "one byte at a time");
    }
}
