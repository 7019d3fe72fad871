//! The wire between two `mover daemon`s: length-prefixed JSON messages over mutual TLS.
//!
//! Each message is a little-endian `u32` byte count followed by that many bytes of JSON. Both
//! sides refuse a length above [`MAX_MESSAGE`] before allocating, so a confused or hostile peer
//! cannot make a daemon reserve gigabytes. Who may talk is decided by certificate fingerprints
//! (see [`crate::tls`]): [`connect`] checks the server against the caller's pin inside the
//! handshake, while [`accept`] only returns the client's fingerprint, for the caller to compare
//! with the relationship's pin.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::error::{Error, IoContext, Result};
use crate::tls::{peer_fingerprint, server_name, Fingerprint, Identity, PinMismatch};

/// Largest message either side accepts (bounded; a bigger length prefix is refused before allocating).
pub const MAX_MESSAGE: usize = 1 << 20;
/// Handshake + one request/response must finish within this.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(10);

fn too_large(n: usize) -> Error {
    Error::Invalid(format!(
        "message of {n} bytes exceeds the {MAX_MESSAGE}-byte limit"
    ))
}

/// Writes `msg` as a `u32` LE length then its JSON bytes, then flushes.
pub async fn write_msg<W: AsyncWrite + Unpin, T: serde::Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<()> {
    let body = serde_json::to_vec(msg)
        .map_err(|e| Error::Invalid(format!("encoding a peer message: {e}")))?;
    if body.len() > MAX_MESSAGE {
        return Err(too_large(body.len()));
    }
    // Fits: MAX_MESSAGE < u32::MAX.
    let len = (body.len() as u32).to_le_bytes();
    let send = async {
        w.write_all(&len).await?;
        w.write_all(&body).await?;
        w.flush().await
    };
    send.await.ctx(|| "sending a peer message".to_string())
}

/// Reads one message written by [`write_msg`].
pub async fn read_msg<R: AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    r: &mut R,
) -> Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .await
        .ctx(|| "reading the length of a peer message".to_string())?;
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_MESSAGE {
        return Err(too_large(n));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)
        .await
        .ctx(|| format!("reading a peer message of {n} bytes"))?;
    serde_json::from_slice(&body)
        .map_err(|e| Error::Invalid(format!("peer message is not the expected JSON: {e}")))
}

/// Connects to `addr`, handshakes with `id.client_config(pin)`; returns the stream and the
/// server's fingerprint. A server whose fingerprint differs from `pin` is refused in the handshake.
pub async fn connect(
    addr: SocketAddr,
    id: &Identity,
    pin: Option<&Fingerprint>,
) -> Result<(client::TlsStream<TcpStream>, Fingerprint)> {
    let connector = TlsConnector::from(id.client_config(pin)?);
    let name = server_name()?;
    let handshake = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| peer_err(addr, format!("connecting: {e}")))?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| peer_err(addr, handshake_failure(&e)))
    };
    let stream = tokio::time::timeout(PEER_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            peer_err(
                addr,
                format!("no TLS handshake within {}s", PEER_TIMEOUT.as_secs()),
            )
        })??;
    let fp = peer_fingerprint(stream.get_ref().1)
        .ok_or_else(|| peer_err(addr, "presented no certificate".to_string()))?;
    Ok((stream, fp))
}

/// Server side of one accepted TCP connection: handshake (bounded by PEER_TIMEOUT), returns the
/// stream and the client's fingerprint. A client without a certificate is refused.
pub async fn accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
) -> Result<(server::TlsStream<TcpStream>, Fingerprint)> {
    accept_within(acceptor, tcp, PEER_TIMEOUT).await
}

async fn accept_within(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    limit: Duration,
) -> Result<(server::TlsStream<TcpStream>, Fingerprint)> {
    let who = tcp
        .peer_addr()
        .map_or_else(|_| "unknown address".to_string(), |a| a.to_string());
    let _ = tcp.set_nodelay(true);
    let fail = |message: String| Error::Peer {
        peer: who.clone(),
        message,
    };
    let stream = tokio::time::timeout(limit, acceptor.accept(tcp))
        .await
        .map_err(|_| fail(format!("no TLS handshake within {:?}", limit)))?
        .map_err(|e| fail(handshake_failure(&e)))?;
    let fp = peer_fingerprint(stream.get_ref().1)
        .ok_or_else(|| fail("presented no client certificate".to_string()))?;
    Ok((stream, fp))
}

/// One request/response exchange as a client: connect, write `req`, read the answer, close.
/// The whole exchange is bounded by [`PEER_TIMEOUT`].
pub async fn call<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
    addr: SocketAddr,
    id: &Identity,
    pin: Option<&Fingerprint>,
    req: &Q,
) -> Result<(A, Fingerprint)> {
    call_then(addr, id, pin, req, |_, _| Ok(()))
        .await
        .map(|(a, fp, ())| (a, fp))
}

/// `call`, then `after` on the connection and the answer before it closes (a ticket's secret
/// is derived from the TLS session there).
pub async fn call_then<Q, A, R>(
    addr: SocketAddr,
    id: &Identity,
    pin: Option<&Fingerprint>,
    req: &Q,
    after: impl FnOnce(&rustls::ClientConnection, &A) -> Result<R>,
) -> Result<(A, Fingerprint, R)>
where
    Q: serde::Serialize,
    A: serde::de::DeserializeOwned,
{
    let exchange = async {
        let (mut stream, fp) = connect(addr, id, pin).await?;
        write_msg(&mut stream, req)
            .await
            .map_err(|e| as_peer(addr, e))?;
        let answer = read_msg(&mut stream).await.map_err(|e| as_peer(addr, e))?;
        let extra = after(stream.get_ref().1, &answer)?;
        // The answer is in hand; a failed close_notify changes nothing.
        let _ = stream.shutdown().await;
        Ok((answer, fp, extra))
    };
    tokio::time::timeout(PEER_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            peer_err(
                addr,
                format!(
                    "no answer within {}s (TLS handshake and one request)",
                    PEER_TIMEOUT.as_secs()
                ),
            )
        })?
}

fn peer_err(addr: SocketAddr, message: String) -> Error {
    Error::Peer {
        peer: addr.to_string(),
        message,
    }
}

/// Attributes an error from the message layer to the peer at `addr`, explaining TLS alerts.
fn as_peer(addr: SocketAddr, e: Error) -> Error {
    match e {
        Error::Io { context, source } => peer_err(addr, format!("{context}: {}", explain(&source))),
        Error::Peer { .. } => e,
        other => peer_err(addr, other.to_string()),
    }
}

fn handshake_failure(e: &std::io::Error) -> String {
    match rustls_error(e).and_then(PinMismatch::in_rustls) {
        Some(mismatch) => mismatch.to_string(),
        None => format!("TLS handshake failed: {}", explain(e)),
    }
}

fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Says in words what common TLS failures between daemons mean.
fn explain(e: &std::io::Error) -> String {
    use rustls::AlertDescription as A;
    match rustls_error(e) {
        Some(rustls::Error::AlertReceived(A::NoApplicationProtocol) | rustls::Error::NoApplicationProtocol) => {
            format!(
                "the peer speaks none of this release's daemon protocols ({}); one side must be \
                 upgraded (mover compat check says which releases replicate together)",
                crate::tls::PEER_PROTOCOLS
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Some(rustls::Error::NoCertificatesPresented) => {
            "the client presented no certificate (peer daemons must authenticate with their node certificate)".to_string()
        }
        Some(rustls::Error::AlertReceived(A::CertificateRequired | A::BadCertificate | A::CertificateUnknown)) => {
            format!("the peer refused this node's certificate ({e})")
        }
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)) => {
            "the peer's handshake signature does not verify with the certificate it presents \
             (a copied certificate without its private key?)"
                .to_string()
        }
        Some(rustls::Error::InvalidMessage(_)) => format!("the peer does not speak TLS ({e})"),
        Some(r) => r.to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::net::TcpListener;

    fn identity() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(dir.path()).unwrap();
        (dir, id)
    }

    async fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (l, addr)
    }

    /// Accepts one connection and reports the handshake's outcome.
    fn serve_one(
        l: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> tokio::task::JoinHandle<Result<Fingerprint>> {
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let (mut s, fp) = accept(&acceptor, tcp).await?;
            let _ = s.shutdown().await;
            Ok(fp)
        })
    }

    /// Handshakes with a client config of the test doubles and tries one exchange. Under TLS 1.3
    /// the client's side of the handshake may finish before the server judges its certificate;
    /// then the refusal arrives on the first read.
    async fn exchange_as(config: Arc<rustls::ClientConfig>, addr: SocketAddr) -> Result<String> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut s = TlsConnector::from(config)
            .connect(server_name()?, tcp)
            .await
            .ctx(|| "handshake".to_string())?;
        write_msg(&mut s, &"hello").await?;
        read_msg(&mut s).await
    }

    /// The newest peer protocol both sides speak is used; a pair with none in common fails the
    /// handshake, saying so.
    #[tokio::test]
    async fn the_newest_peer_protocol_both_speak_is_chosen_and_none_in_common_is_refused() {
        let ((_d1, server), (_d2, client)) = (identity(), identity());
        let with = |c: &rustls::ClientConfig, names: &[&[u8]]| {
            let mut c = c.clone();
            c.alpn_protocols = names.iter().map(|n| n.to_vec()).collect();
            Arc::new(c)
        };
        let base = client.client_config(None).unwrap();
        // A newer server (2 and 1) and this client (1): 1.
        let mut newer = (*server.server_config().unwrap()).clone();
        newer.alpn_protocols = vec![b"mover-peer/2".to_vec(), b"mover-peer/1".to_vec()];
        let (l, addr) = listener().await;
        let acceptor = TlsAcceptor::from(Arc::new(newer.clone()));
        let task = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let (s, _) = accept(&acceptor, tcp).await.unwrap();
            crate::tls::peer_protocol(s.get_ref().1.alpn_protocol())
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let s = TlsConnector::from(base.clone())
            .connect(server_name().unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(crate::tls::peer_protocol(s.get_ref().1.alpn_protocol()), 1);
        assert_eq!(task.await.unwrap(), 1);
        // A client speaking only 3 against it: refused in the handshake, in words.
        let (l, addr) = listener().await;
        let _task = serve_one(l, Arc::new(newer));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let e = TlsConnector::from(with(&base, &[b"mover-peer/3"]))
            .connect(server_name().unwrap(), tcp)
            .await
            .unwrap_err();
        assert!(
            explain(&e).contains("speaks none of this release's daemon protocols"),
            "{e}"
        );
        // A peer that offers none is taken as speaking version 1.
        assert_eq!(crate::tls::peer_protocol(None), 1);
    }

    #[tokio::test]
    async fn mutual_handshake_reports_both_fingerprints() {
        let ((_d1, server), (_d2, client)) = (identity(), identity());
        let (l, addr) = listener().await;
        let task = serve_one(l, server.server_config().unwrap());
        let (_s, seen_server) = connect(addr, &client, Some(&server.fingerprint))
            .await
            .unwrap();
        assert_eq!(seen_server, server.fingerprint);
        assert_eq!(task.await.unwrap().unwrap(), client.fingerprint);
    }

    #[tokio::test]
    async fn first_contact_without_pin_accepts_and_reports_fingerprint() {
        let ((_d1, server), (_d2, client)) = (identity(), identity());
        let (l, addr) = listener().await;
        let task = serve_one(l, server.server_config().unwrap());
        let (_s, learned) = connect(addr, &client, None).await.unwrap();
        assert_eq!(learned, server.fingerprint);
        assert_eq!(task.await.unwrap().unwrap(), client.fingerprint);
    }

    #[tokio::test]
    async fn client_refuses_server_whose_fingerprint_differs_from_pin() {
        let ((_d1, server), (_d2, client), (_d3, expected)) = (identity(), identity(), identity());
        let (l, addr) = listener().await;
        let task = serve_one(l, server.server_config().unwrap());
        let err = connect(addr, &client, Some(&expected.fingerprint))
            .await
            .unwrap_err();
        let want = format!(
            "certificate fingerprint {} does not match the pinned {} (a different node answers at this address)",
            server.fingerprint, expected.fingerprint
        );
        assert!(
            matches!(&err, Error::Peer { peer, message } if *peer == addr.to_string() && *message == want),
            "{err}"
        );
        assert!(
            task.await.unwrap().is_err(),
            "the server must not see a finished handshake"
        );
    }

    #[tokio::test]
    async fn server_refuses_client_without_certificate() {
        let (_d, server) = identity();
        let (l, addr) = listener().await;
        let task = serve_one(l, server.server_config().unwrap());
        let client_side = exchange_as(crate::tls::doubles::client_config(None), addr).await;
        assert!(
            client_side.is_err(),
            "an anonymous client got an answer: {client_side:?}"
        );
        let err = task.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("presented no certificate"), "{err}");
    }

    #[tokio::test]
    async fn server_refuses_client_with_a_copied_certificate_but_not_its_key() {
        let ((_d1, server), (_d2, pinned), (_d3, impostor)) = (identity(), identity(), identity());
        let (l, addr) = listener().await;
        let task = serve_one(l, server.server_config().unwrap());
        let client_side = exchange_as(
            crate::tls::doubles::client_config(Some((&pinned, &impostor))),
            addr,
        )
        .await;
        assert!(
            client_side.is_err(),
            "an impostor client got an answer: {client_side:?}"
        );
        let err = task.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, Error::Peer { message, .. } if message.contains("does not verify with the certificate")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn client_refuses_server_with_the_pinned_certificate_but_not_its_key() {
        let ((_d1, pinned), (_d2, impostor), (_d3, client)) = (identity(), identity(), identity());
        let (l, addr) = listener().await;
        let task = serve_one(l, crate::tls::doubles::server_config((&pinned, &impostor)));
        let err = connect(addr, &client, Some(&pinned.fingerprint))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Peer { message, .. } if message.contains("does not verify with the certificate")),
            "{err}"
        );
        assert!(task.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn garbage_instead_of_tls_is_refused() {
        let (_d, server) = identity();
        let (l, addr) = listener().await;
        let task = serve_one(l, server.server_config().unwrap());
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let err = task.await.unwrap().unwrap_err();
        let want = "TLS handshake failed: the peer does not speak TLS";
        assert!(
            matches!(&err, Error::Peer { message, .. } if message.starts_with(want)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn silent_client_is_cut_off_by_the_handshake_deadline() {
        let (_d, server) = identity();
        let (l, addr) = listener().await;
        let acceptor = TlsAcceptor::from(server.server_config().unwrap());
        let _tcp = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = l.accept().await.unwrap();
        let started = std::time::Instant::now();
        let err = accept_within(&acceptor, tcp, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            err.to_string().contains("no TLS handshake within 200ms"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn oversized_message_is_refused_before_allocation() {
        let (mut w, mut r) = tokio::io::duplex(64);
        // A length prefix of 4 GiB and no body: reading the body would wait forever (the writer
        // stays open), so an immediate error proves the length was refused first.
        w.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), read_msg::<_, String>(&mut r))
            .await
            .unwrap();
        let err = got.unwrap_err().to_string();
        assert_eq!(
            err,
            "message of 4294967295 bytes exceeds the 1048576-byte limit"
        );

        let big = "x".repeat(MAX_MESSAGE);
        let (mut w2, mut r2) = tokio::io::duplex(64);
        let err = write_msg(&mut w2, &big).await.unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "message of {} bytes exceeds the 1048576-byte limit",
                MAX_MESSAGE + 2
            )
        );
        drop(w2);
        let mut rest = Vec::new();
        r2.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "a refused message must not be partly sent");
        drop(w);
    }

    #[tokio::test]
    async fn messages_round_trip_and_truncation_is_an_error() {
        let (mut w, mut r) = tokio::io::duplex(1 << 16);
        let v = serde_json::json!({"op": "status", "n": [1, 2, 3]});
        write_msg(&mut w, &v).await.unwrap();
        assert_eq!(read_msg::<_, serde_json::Value>(&mut r).await.unwrap(), v);
        w.write_all(&10u32.to_le_bytes()).await.unwrap();
        w.write_all(b"{\"a\"").await.unwrap();
        drop(w);
        assert!(matches!(
            read_msg::<_, serde_json::Value>(&mut r).await,
            Err(Error::Io { .. })
        ));
    }

    #[tokio::test]
    async fn call_round_trips_a_json_request() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Ask {
            relationship: String,
            n: u64,
        }
        let ((_d1, server), (_d2, client)) = (identity(), identity());
        let (l, addr) = listener().await;
        let acceptor = TlsAcceptor::from(server.server_config().unwrap());
        let task = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let (mut s, fp) = accept(&acceptor, tcp).await.unwrap();
            let ask: Ask = read_msg(&mut s).await.unwrap();
            write_msg(
                &mut s,
                &Ask {
                    relationship: ask.relationship.to_uppercase(),
                    n: ask.n + 1,
                },
            )
            .await
            .unwrap();
            s.shutdown().await.unwrap();
            fp
        });
        let req = Ask {
            relationship: "home-to-dr".into(),
            n: 41,
        };
        let (answer, fp): (Ask, _) = call(addr, &client, Some(&server.fingerprint), &req)
            .await
            .unwrap();
        assert_eq!(
            answer,
            Ask {
                relationship: "HOME-TO-DR".into(),
                n: 42
            }
        );
        assert_eq!(fp, server.fingerprint);
        assert_eq!(task.await.unwrap(), client.fingerprint);
    }

    #[tokio::test]
    async fn call_to_a_closed_port_says_so() {
        let (_d, client) = identity();
        let (l, addr) = listener().await;
        drop(l);
        let err = call::<_, String>(addr, &client, None, &"hi")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Peer { peer, message } if *peer == addr.to_string() && message.starts_with("connecting")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn peers_speak_tls_1_3_only_as_server_and_as_client() {
        let ((_d1, server), (_d2, client)) = (identity(), identity());
        // A TLS 1.2-only client is refused by a node...
        let (l, addr) = listener().await;
        let task = serve_one(l, server.server_config().unwrap());
        let client_side =
            exchange_as(crate::tls::doubles::tls12_client_config(&client), addr).await;
        assert!(client_side.is_err(), "a TLS 1.2 client got an answer");
        assert!(task.await.unwrap().is_err());
        // ...and a node refuses a TLS 1.2-only server.
        let (l, addr) = listener().await;
        let task = serve_one(l, crate::tls::doubles::tls12_server_config(&server));
        assert!(connect(addr, &client, None).await.is_err());
        assert!(task.await.unwrap().is_err());
    }
}
