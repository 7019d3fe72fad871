//! The peer port: other daemons connect over mutual TLS and send one request per connection.
//! A proposal pins the proposer's certificate fingerprint; every later request about that
//! relationship must come from the same certificate or is refused.

use super::{target, Node};
use crate::model::{Relationship, Role};
use crate::peer::{PeerAnswer, PeerRequest};
use crate::peer_wire;
use crate::tls::Fingerprint;
use crate::Error;
use std::sync::Arc;

/// Peer connections handled at once; more wait in the listen backlog.
const MAX_PEER_CONNECTIONS: usize = 64;
/// Proposals awaiting authorization kept at once: any certificate may propose, so what they
/// can make this node store is bounded, overall and per proposing certificate (so one peer
/// cannot crowd out the others).
pub const MAX_PENDING_PROPOSALS: usize = 256;
pub const MAX_PENDING_PER_PEER: usize = 32;

pub async fn serve(node: Arc<Node>, listener: tokio::net::TcpListener) {
    let config = match node.identity.server_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("peer TLS configuration: {e}; peers cannot connect");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PEER_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("peer accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (node, acceptor) = (node.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = one(&node, &acceptor, tcp).await {
                tracing::warn!(%from, "peer connection: {e}");
            }
        });
    }
}

/// Largest Hello a data-plane connection may open with (it is well under 1 KiB).
const MAX_HELLO_PEEK: usize = 4096;

async fn one(
    node: &Arc<Node>,
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
) -> crate::Result<()> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(peer_wire::PEER_TIMEOUT, tcp.peek(&mut first)).await;
    if matches!(peeked, Ok(Ok(1))) && first[0] == mover::receiver::DATA_PLANE_FIRST_BYTE {
        return data_plane(node, tcp).await;
    }
    let (mut tls, fp) = peer_wire::accept(acceptor, tcp).await?;
    let req: PeerRequest =
        tokio::time::timeout(peer_wire::PEER_TIMEOUT, peer_wire::read_msg(&mut tls))
            .await
            .map_err(|_| Error::Peer {
                peer: fp.to_string(),
                message: "no request within the timeout".into(),
            })??;
    let answer = handle(node, &fp, req).await;
    if let PeerAnswer::Refused { message } = &answer {
        tracing::warn!(peer = %fp, "refused: {message}");
    }
    peer_wire::write_msg(&mut tls, &answer).await
}

/// A data-plane connection on the replication port: read its Hello without consuming it and
/// hand the socket to the receiver that issued its session id as a ticket.
async fn data_plane(node: &Arc<Node>, tcp: tokio::net::TcpStream) -> crate::Result<()> {
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let fail = |message: String| Error::Peer {
        peer: peer.clone(),
        message,
    };
    let mut buf = vec![0u8; MAX_HELLO_PEEK];
    let deadline = tokio::time::Instant::now() + peer_wire::PEER_TIMEOUT;
    let session = loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf))
            .await
            .map_err(|_| fail("no data-plane Hello in time".into()))?;
        let n = n.map_err(|e| fail(format!("reading a data-plane Hello: {e}")))?;
        match mover::receiver::hello_session(&buf[..n]) {
            Ok(Some(s)) => break s,
            Ok(None) if n < buf.len() => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await
            }
            Ok(None) => return Err(fail("data-plane Hello too large".into())),
            Err(e) => return Err(fail(format!("malformed data-plane Hello: {e}"))),
        }
    };
    let std = tcp.into_std().map_err(|e| fail(format!("socket: {e}")))?;
    let n = node.clone();
    let routed = tokio::task::spawn_blocking(move || {
        let keep = std.try_clone().ok();
        let ok = target::route(&n, session.0, std);
        (ok, keep)
    })
    .await
    .map_err(|e| fail(format!("routing task: {e}")))?;
    if !routed.0 {
        // Tell the sender why before closing (its Hello is answered with an Error frame).
        if let Some(mut s) = routed.1 {
            use std::io::Write;
            let msg = mover::wire::message::encode_error(
                mover::wire::message::ErrorCode::Refused,
                "session not authorized: its id is not a ticket this node issued",
            );
            let _ = s.write_all(&mover::wire::frame::encode_frame(
                mover::wire::frame::FrameKind::Error,
                &msg,
            ));
        }
        return Err(fail(
            "data-plane session with an id no receiver issued; closed".into(),
        ));
    }
    Ok(())
}

fn refuse(message: String) -> PeerAnswer {
    PeerAnswer::Refused { message }
}

/// The relationship `id` if `fp` is the certificate pinned for it.
fn pinned(
    node: &Node,
    id: &crate::model::RelationshipId,
    fp: &Fingerprint,
) -> Result<Relationship, PeerAnswer> {
    let r = match node.get(id, Role::Target) {
        Ok(r) => r,
        Err(Error::NotFound(_)) => return Err(PeerAnswer::NotFound),
        Err(e) => return Err(refuse(e.to_string())),
    };
    if r.peer_fingerprint.as_deref() != Some(fp.0.as_str()) {
        return Err(refuse(format!(
            "peer not authorized for relationship {id}: its certificate {fp} is not the one pinned when the relationship was proposed"
        )));
    }
    super::lock(&node.last_contact).insert(id.clone(), node.clock.instant());
    Ok(r)
}

async fn handle(node: &Arc<Node>, fp: &Fingerprint, req: PeerRequest) -> PeerAnswer {
    match req {
        PeerRequest::Propose { id, spec, software } => propose(node, fp, id, spec, &software),
        PeerRequest::State { id, source } => match pinned(node, &id, fp) {
            Ok(r) => {
                // Being released (delete, make-writable) counts as ended: the source stops its
                // job, so the running session ends and the release can go on.
                let ended = r.ended || super::lock(&node.reverting).contains(&id);
                if let Some(s) = source.filter(|_| !ended) {
                    if let Err(e) = catch_up(node, &r, s) {
                        tracing::debug!(%id, "taking the source's state: {e}");
                    }
                }
                PeerAnswer::State {
                    authorized: r.authorized,
                    ended,
                }
            }
            Err(a) => a,
        },
        PeerRequest::Ticket { id } => {
            let r = match pinned(node, &id, fp) {
                Ok(r) => r,
                Err(a) => return a,
            };
            if !r.authorized {
                return refuse(format!(
                    "relationship {id} is awaiting authorization on the target"
                ));
            }
            let node = node.clone();
            match tokio::task::spawn_blocking(move || target::ticket(&node, &r)).await {
                Ok(Ok((port, t))) => PeerAnswer::Ticket {
                    port,
                    ticket: format!("{t:032x}"),
                },
                Ok(Err(e)) => refuse(e.to_string()),
                Err(e) => refuse(format!("ticket task failed: {e}")),
            }
        }
        PeerRequest::Report {
            id,
            running,
            job,
            last_attempt,
            recovery_point_ns,
        } => {
            if let Err(a) = pinned(node, &id, fp) {
                return a;
            }
            match target::record_report(node, &id, running, job, last_attempt, recovery_point_ns) {
                Ok(()) => PeerAnswer::Ok,
                // Ended or being released here: the source stops its job.
                Err(Error::NotFound(_)) => PeerAnswer::NotFound,
                Err(e) => refuse(e.to_string()),
            }
        }
        PeerRequest::Update { id, spec } => {
            let r = match pinned(node, &id, fp) {
                Ok(r) => r,
                Err(a) => return a,
            };
            match take_spec(node, &r, spec) {
                Ok(()) => PeerAnswer::Ok,
                Err(e) => refuse(e.to_string()),
            }
        }
        PeerRequest::Delete { id } => {
            if let Err(a) = pinned(node, &id, fp) {
                return a;
            }
            let n = node.clone();
            match tokio::task::spawn_blocking(move || target::delete(&n, &id)).await {
                Ok(Ok(())) => PeerAnswer::Ok,
                Ok(Err(e)) => refuse(e.to_string()),
                Err(e) => refuse(format!("delete task failed: {e}")),
            }
        }
    }
}

/// The source's edited settings (Update, or a poll carrying an edit this node missed): valid,
/// and with the same paths.
fn take_spec(node: &Node, r: &Relationship, spec: crate::model::Spec) -> crate::Result<()> {
    if spec.source_path != r.spec.source_path || spec.target_path != r.spec.target_path {
        return Err(Error::Invalid(
            "paths of a relationship cannot change".into(),
        ));
    }
    spec.validate()?;
    node.modify(&r.id, |x| x.spec = spec)?;
    Ok(())
}

/// Takes the source's view from a poll: its job and last outcome, and an edit this node missed.
fn catch_up(node: &Node, r: &Relationship, s: crate::peer::SourceState) -> crate::Result<()> {
    target::record_report(
        node,
        &r.id,
        s.running,
        s.job,
        s.last_attempt,
        s.recovery_point_ns,
    )?;
    if s.spec != r.spec {
        take_spec(node, r, s.spec)?;
    }
    Ok(())
}

fn propose(
    node: &Node,
    fp: &Fingerprint,
    id: crate::model::RelationshipId,
    spec: crate::model::Spec,
    software: &str,
) -> PeerAnswer {
    if let Err(e) = spec.validate() {
        return refuse(e.to_string());
    }
    match node.store().get(&id) {
        Ok(r) if r.peer_fingerprint.as_deref() == Some(fp.0.as_str()) && r.role == Role::Target => {
            return PeerAnswer::Ok
        }
        Ok(_) => {
            return refuse(format!(
                "relationship {id} already exists here with another peer"
            ))
        }
        Err(Error::NotFound(_)) => {}
        Err(e) => return refuse(e.to_string()),
    }
    let all = match node.store().list(Some(Role::Target)) {
        Ok(all) => all,
        Err(e) => return refuse(e.to_string()),
    };
    let same = |a: &str, b: &str| {
        std::path::Path::new(a)
            .components()
            .eq(std::path::Path::new(b).components())
    };
    if let Some(other) = all
        .iter()
        .find(|r| same(&r.spec.target_path, &spec.target_path) && !r.ended)
    {
        return refuse(format!(
            "target directory {} is already the target of relationship {}",
            spec.target_path, other.id
        ));
    }
    let pending: Vec<&Relationship> = all.iter().filter(|r| !r.authorized && !r.ended).collect();
    let from_peer = pending
        .iter()
        .filter(|r| r.peer_fingerprint.as_deref() == Some(fp.0.as_str()))
        .count();
    if pending.len() >= MAX_PENDING_PROPOSALS || from_peer >= MAX_PENDING_PER_PEER {
        return refuse(format!(
            "too many relationships await authorization on this node ({} in all, {from_peer} from this source; at most {MAX_PENDING_PROPOSALS} and {MAX_PENDING_PER_PEER}): authorize or delete some first",
            pending.len()
        ));
    }
    let r = Relationship::new(
        id.clone(),
        Role::Target,
        spec,
        node.clock.now_ns(),
        Some(fp.0.clone()),
    );
    match node.store().insert(&r) {
        Ok(()) => {
            tracing::info!(%id, peer = %fp, software, "relationship proposed; awaiting authorization");
            PeerAnswer::Ok
        }
        Err(e) => refuse(e.to_string()),
    }
}
