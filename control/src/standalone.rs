//! Keys for the standalone `mover send` / `mover receive`, without a daemon: before each
//! session the sender opens a mutual-TLS connection to the receiver's port (one port carries
//! both: a TLS record starts with 0x16, a data-plane Hello with its frame kind). Each side pins
//! the other's certificate fingerprint. Both derive the session secret from that TLS session
//! (`tls::session_secret`, an RFC 8446 exporter), the receiver issues a sealed ticket for it, answers
//! that it is ready, and the data-plane session follows, sealed with that secret.
//!
//! Blocking on purpose: the standalone commands have no async runtime.

use crate::error::IoContext;
use crate::tls::{peer_fingerprint, server_name, session_secret, Fingerprint, Identity};
use crate::{Error, Result};
use mover::receiver::DATA_PLANE_FIRST_BYTE;
use mover::transport::tcp::TcpConn;
use mover::{Connection, SessionSecret, Tickets};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// The exporter context of a standalone key exchange (one TLS connection per session, so
/// nothing more is needed to make the secret unique).
const STANDALONE_CONTEXT: &[u8] = b"standalone";
/// How long a key exchange may take, handshake included.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Key exchanges in progress at once on a receiver; more connections wait in the backlog.
const MAX_HANDSHAKES: usize = 16;
/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(50);
/// The receiver's answer: ready, or refused (then a reason of at most MAX_REASON bytes).
const READY: u8 = 1;
const REFUSED: u8 = 0;
const MAX_REASON: usize = 512;

/// The fingerprint of the certificate in PEM file `path` (a peer's certificate given as a
/// file instead of its fingerprint).
pub fn pem_fingerprint(path: &std::path::Path) -> Result<Fingerprint> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(path).map_err(|e| {
        Error::Tls(format!(
            "reading a certificate from {}: {e}",
            path.display()
        ))
    })?;
    Ok(Fingerprint::of_der(&der))
}

/// Sender side: a fresh session secret agreed with the receiver at `addr`, whose certificate
/// must have fingerprint `pin`.
pub fn ask_secret(addr: SocketAddr, id: &Identity, pin: &Fingerprint) -> Result<SessionSecret> {
    let fail = |message: String| Error::Peer {
        peer: addr.to_string(),
        message,
    };
    let tcp = TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT)
        .map_err(|e| fail(format!("connecting: {e}")))?;
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .ctx(|| "socket timeout".to_string())?;
    tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))
        .ctx(|| "socket timeout".to_string())?;
    let conn = rustls::ClientConnection::new(id.client_config(Some(pin))?, server_name()?)
        .map_err(|e| Error::Tls(format!("client connection: {e}")))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut answer = [0u8; 1];
    tls.read_exact(&mut answer)
        .map_err(|e| fail(format!("key exchange: {e}")))?;
    if answer[0] != READY {
        let mut reason = Vec::new();
        let _ = Read::by_ref(&mut tls)
            .take(MAX_REASON as u64)
            .read_to_end(&mut reason);
        return Err(fail(format!(
            "refused the session: {}",
            String::from_utf8_lossy(&reason)
        )));
    }
    session_secret(&tls.conn, STANDALONE_CONTEXT)
}

/// Receiver side of the standalone key exchange.
pub struct KeyServer {
    pub identity: Identity,
    /// Senders whose certificates may start sessions.
    pub allowed: Vec<Fingerprint>,
    pub tickets: Arc<Tickets>,
}

impl KeyServer {
    /// Serves `listener` until `stop`: TLS connections get a session secret (if their
    /// certificate is allowed), data-plane connections go to `inbox` (the receiver's).
    pub fn serve(
        self,
        listener: TcpListener,
        inbox: mpsc::Sender<Box<dyn Connection>>,
        stop: Arc<AtomicBool>,
    ) -> Result<()> {
        listener
            .set_nonblocking(true)
            .ctx(|| "listener mode".to_string())?;
        let config = self.identity.server_config()?;
        let me = Arc::new(self);
        let busy = Arc::new(AtomicUsize::new(0));
        while !stop.load(Ordering::SeqCst) {
            // Wait for a connection, looking at the stop flag every ACCEPT_POLL: a session's
            // connections are accepted the moment they arrive.
            let ready = rustix::event::poll(
                &mut [rustix::event::PollFd::new(
                    &listener,
                    rustix::event::PollFlags::IN,
                )],
                Some(&rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: ACCEPT_POLL.as_nanos() as i64,
                }),
            );
            if !matches!(ready, Ok(n) if n > 0) {
                continue;
            }
            let (tcp, from) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    return Err(Error::Io {
                        context: "accepting a connection".into(),
                        source: e,
                    })
                }
            };
            if busy.load(Ordering::SeqCst) >= MAX_HANDSHAKES {
                tracing::warn!(%from, "too many key exchanges in progress; connection closed");
                continue;
            }
            busy.fetch_add(1, Ordering::SeqCst);
            let (me, config, inbox, busy) =
                (me.clone(), config.clone(), inbox.clone(), busy.clone());
            let spawned = std::thread::Builder::new()
                .name("mover-keys".into())
                .spawn(move || {
                    if let Err(e) = me.one(tcp, config, &inbox) {
                        tracing::warn!(%from, "connection refused: {e}");
                    }
                    busy.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                tracing::warn!("spawning a key-exchange thread: {e}");
            }
        }
        Ok(())
    }

    fn one(
        &self,
        tcp: TcpStream,
        config: Arc<rustls::ServerConfig>,
        inbox: &mpsc::Sender<Box<dyn Connection>>,
    ) -> Result<()> {
        tcp.set_nonblocking(false)
            .ctx(|| "socket mode".to_string())?;
        tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .ctx(|| "socket timeout".to_string())?;
        tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))
            .ctx(|| "socket timeout".to_string())?;
        let mut first = [0u8; 1];
        let n = tcp
            .peek(&mut first)
            .ctx(|| "reading the first byte".to_string())?;
        if n == 1 && first[0] == DATA_PLANE_FIRST_BYTE {
            // The receiver checks its Hello (version, ticket) and sets its own timeouts.
            let conn = TcpConn::new(tcp).ctx(|| "socket options".to_string())?;
            return inbox
                .send(Box::new(conn))
                .map_err(|_| Error::Invalid("the receiver has stopped".into()));
        }
        let conn = rustls::ServerConnection::new(config)
            .map_err(|e| Error::Tls(format!("server connection: {e}")))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| Error::Tls(format!("handshake: {e}")))?;
        }
        let Some(fp) = peer_fingerprint(&tls.conn) else {
            return Err(Error::Tls("the sender presented no certificate".into()));
        };
        if !self.allowed.contains(&fp) {
            let reason = format!("certificate {fp} is not one this receiver accepts");
            let mut msg = vec![REFUSED];
            msg.extend_from_slice(&reason.as_bytes()[..reason.len().min(MAX_REASON)]);
            let _ = tls.write_all(&msg).and_then(|()| tls.flush());
            tls.conn.send_close_notify();
            let _ = tls.conn.complete_io(&mut tls.sock);
            return Err(Error::Tls(reason));
        }
        let secret = session_secret(&tls.conn, STANDALONE_CONTEXT)?;
        self.tickets.issue_sealed(secret);
        tls.write_all(&[READY])
            .and_then(|()| tls.flush())
            .ctx(|| "answering the key exchange".to_string())?;
        tls.conn.send_close_notify();
        let _ = tls.conn.complete_io(&mut tls.sock);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> (tempfile::TempDir, Identity) {
        let d = tempfile::tempdir().expect("tempdir");
        let id = Identity::load_or_create(d.path()).expect("identity");
        (d, id)
    }

    fn start(
        allowed: Vec<Fingerprint>,
    ) -> (SocketAddr, Fingerprint, Arc<Tickets>, Arc<AtomicBool>) {
        let (dir, id) = identity();
        let fp = id.fingerprint.clone();
        let tickets = Arc::new(Tickets::default());
        let server = KeyServer {
            identity: id,
            allowed,
            tickets: tickets.clone(),
        };
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, _rx) = mpsc::channel();
        let s = stop.clone();
        std::thread::spawn(move || {
            let _keep = dir;
            let _keep_rx = _rx;
            server.serve(l, tx, s)
        });
        (addr, fp, tickets, stop)
    }

    #[test]
    fn both_ends_derive_the_same_secret_and_the_receiver_issues_its_ticket() {
        let (_d, sender) = identity();
        let (addr, fp, _tickets, stop) = start(vec![sender.fingerprint.clone()]);
        let a = ask_secret(addr, &sender, &fp).expect("key exchange");
        let b = ask_secret(addr, &sender, &fp).expect("second key exchange");
        assert_ne!(a, b, "every exchange gives a fresh secret");
        stop.store(true, Ordering::SeqCst);
    }

    #[test]
    fn a_sender_not_allowed_or_a_receiver_not_pinned_gets_no_secret() {
        let (_d1, sender) = identity();
        let (_d2, stranger) = identity();
        let (addr, fp, _t, stop) = start(vec![sender.fingerprint.clone()]);
        let e = ask_secret(addr, &stranger, &fp).expect_err("stranger refused");
        assert!(
            e.to_string().contains("not one this receiver accepts"),
            "{e}"
        );
        let e = ask_secret(addr, &sender, &stranger.fingerprint).expect_err("wrong pin");
        assert!(
            e.to_string().contains("connecting")
                || e.to_string().contains("key exchange")
                || e.to_string().contains("tls"),
            "{e}"
        );
        stop.store(true, Ordering::SeqCst);
    }
}
