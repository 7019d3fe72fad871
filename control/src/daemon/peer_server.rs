//! The peer port: other daemons connect over mutual TLS and send one request per connection.
//! A proposal pins the proposer's certificate fingerprint; every later request about that
//! relationship must come from the same certificate or is refused.

use super::{target, Node};
use crate::error::IoContext;
use crate::model::{Relationship, Role};
use crate::peer::{PeerAnswer, PeerRequest};
use crate::peer_wire;
use crate::tls::Fingerprint;
use crate::Error;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Proposals awaiting authorization kept at once: any certificate may propose, so what they
/// can make this node store is bounded, overall and per proposing certificate (so one peer
/// cannot crowd out the others).
pub const MAX_PENDING_PROPOSALS: usize = 256;
pub const MAX_PENDING_PER_PEER: usize = 32;
/// Requests from authenticated peers handled at once (TLS done, request read); more wait for a
/// slot. Handling is short (a few SQLite statements, a ticket, or a delete bounded by
/// `target::STOP_WAIT`), and nothing unauthenticated holds one.
const MAX_PEER_REQUESTS: usize = 64;
/// Connections accepted but not yet authenticated (first-byte peek, TLS handshake and request,
/// or a data-plane Hello not yet routed), in all and per source address. A connection beyond
/// either bound is closed at once: idle sockets cost an attacker a slot for at most
/// PRE_AUTH_TIMEOUT and never keep genuine peers, who connect from their own addresses, out.
pub const MAX_PRE_AUTH: usize = 512;
/// A source opens a job's worker connections (up to MAX_WORKERS) and its control connection
/// at once, from one address.
pub const MAX_PRE_AUTH_PER_ADDR: usize = mover::wire::message::MAX_WORKERS as usize + 8;
const _: () = assert!(MAX_PRE_AUTH_PER_ADDR > mover::wire::message::MAX_WORKERS as usize + 1);
const _: () = assert!(MAX_PRE_AUTH_PER_ADDR <= MAX_PRE_AUTH);
/// Everything before a connection is authenticated (peek, TLS handshake and request, or a
/// data-plane Hello) must be done within this, counted from accept.
pub const PRE_AUTH_TIMEOUT: Duration = peer_wire::PEER_TIMEOUT;
/// Pause after an accept error that is not about one connection (out of fds, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Counts unauthenticated connections, in all and per source address.
#[derive(Default)]
struct PreAuth {
    by_addr: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One unauthenticated connection's place in the count, given back when dropped.
struct PreAuthSlot {
    table: Arc<PreAuth>,
    ip: IpAddr,
}

impl PreAuth {
    fn claim(self: &Arc<Self>, ip: IpAddr) -> Option<PreAuthSlot> {
        let mut g = super::lock(&self.by_addr);
        let (total, by_addr) = &mut *g;
        let mine = by_addr.entry(ip).or_default();
        if *total >= MAX_PRE_AUTH || *mine >= MAX_PRE_AUTH_PER_ADDR {
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(PreAuthSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for PreAuthSlot {
    fn drop(&mut self) {
        let mut g = super::lock(&self.table.by_addr);
        let (total, by_addr) = &mut *g;
        *total -= 1;
        if let Some(n) = by_addr.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_addr.remove(&self.ip);
            }
        }
    }
}

pub async fn serve(node: Arc<Node>, listener: tokio::net::TcpListener) {
    let config = match node.identity.server_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("peer TLS configuration: {e}; peers cannot connect");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let pre_auth = Arc::new(PreAuth::default());
    let requests = Arc::new(tokio::sync::Semaphore::new(MAX_PEER_REQUESTS));
    loop {
        // Accept first, always: what limits connections is decided per connection below, so
        // a full table never leaves peers waiting in the listen backlog.
        let (tcp, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("peer accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(slot) = pre_auth.claim(from.ip()) else {
            tracing::debug!(%from, "too many unauthenticated peer connections; closed");
            continue;
        };
        let (node, acceptor, requests) = (node.clone(), acceptor.clone(), requests.clone());
        tokio::spawn(async move {
            if let Err(e) = one(&node, &acceptor, tcp, slot, &requests).await {
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
    slot: PreAuthSlot,
    requests: &tokio::sync::Semaphore,
) -> crate::Result<()> {
    let deadline = tokio::time::Instant::now() + PRE_AUTH_TIMEOUT;
    let who = tcp
        .peer_addr()
        .map_or_else(|_| "unknown address".to_string(), |a| a.to_string());
    let from = tcp.peer_addr().ok().map(|a| a.ip());
    let late = || Error::Peer {
        peer: who.clone(),
        message: format!(
            "not authenticated within {}s (TLS handshake and request)",
            PRE_AUTH_TIMEOUT.as_secs()
        ),
    };
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await;
    if matches!(peeked, Ok(Ok(1))) && first[0] == mover::receiver::DATA_PLANE_FIRST_BYTE {
        return data_plane(node, tcp, deadline, slot).await;
    }
    let authenticate = async {
        let (mut tls, fp) = peer_wire::accept(acceptor, tcp).await?;
        let req = peer_wire::read_msg::<_, PeerRequest>(&mut tls).await;
        Ok::<_, Error>((tls, fp, req))
    };
    let (mut tls, fp, req) = tokio::time::timeout_at(deadline, authenticate)
        .await
        .map_err(|_| late())??;
    drop(slot);
    let req = match req {
        Ok(req) => req,
        Err(Error::Invalid(message)) => {
            // Malformed, or an id that is not a relationship id: say so, act on nothing.
            let answer = PeerAnswer::Refused {
                message: message.clone(),
            };
            let _ = tokio::time::timeout(PRE_AUTH_TIMEOUT, peer_wire::write_msg(&mut tls, &answer))
                .await;
            return Err(Error::Peer {
                peer: fp.to_string(),
                message,
            });
        }
        Err(e) => return Err(e),
    };
    let Ok(_permit) = requests.acquire().await else {
        return Ok(());
    };
    // A ticket names its session with 128 random bits that travel only inside this TLS
    // session; the session's frames are sealed with the secret this TLS session gives both
    // ends for that ticket.
    let ticket = mover::units::SessionId::random().ctx(|| "random ticket".to_string())?;
    let secret = crate::tls::session_secret(tls.get_ref().1, &ticket.0.to_le_bytes())?;
    let answer = match req {
        // A reverse's steps need the asker's address (where a new source replicates to).
        PeerRequest::Reverse(ask) => super::reverse::serve(node, &fp, from, ask).await,
        req => handle(node, &fp, req, (ticket, secret)).await,
    };
    if let PeerAnswer::Refused { message } = &answer {
        tracing::warn!(peer = %fp, "refused: {message}");
    }
    // A peer that does not take its answer must not hold the connection either.
    tokio::time::timeout(
        peer_wire::PEER_TIMEOUT,
        peer_wire::write_msg(&mut tls, &answer),
    )
    .await
    .map_err(|_| Error::Peer {
        peer: fp.to_string(),
        message: "did not take the answer in time".into(),
    })?
}

/// A data-plane connection on the replication port: read its Hello without consuming it and
/// hand the socket to the receiver that issued its session id as a ticket.
async fn data_plane(
    node: &Arc<Node>,
    tcp: tokio::net::TcpStream,
    deadline: tokio::time::Instant,
    slot: PreAuthSlot,
) -> crate::Result<()> {
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let fail = |message: String| Error::Peer {
        peer: peer.clone(),
        message,
    };
    let mut buf = vec![0u8; MAX_HELLO_PEEK];
    let (session, worker) = loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf))
            .await
            .map_err(|_| fail("no data-plane Hello in time".into()))?;
        let n = n.map_err(|e| fail(format!("reading a data-plane Hello: {e}")))?;
        match mover::receiver::hello_session(&buf[..n]) {
            Ok(Some(s)) => break (s, mover::receiver::hello_is_worker(&buf[..n])),
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
        // A worker of another node's session, whose share this node writes (or is about to):
        // held unauthenticated, so it keeps its pre-auth slot (the per-address bound) while
        // it waits for its share; in the small bound of unannounced sessions unless the
        // committing node announced it to this node.
        if worker {
            let announced = super::writes::announced(node, session.0, deadline).await;
            if let Some(s) = routed.1.as_ref().and_then(|s| s.try_clone().ok()) {
                if super::writes::hold(node, s, Box::new(slot), announced) {
                    return Ok(());
                }
            }
        }
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

/// The relationship `id` if `fp` is the certificate pinned for it.
fn pinned(
    node: &Node,
    id: &crate::model::RelationshipId,
    fp: &Fingerprint,
) -> Result<Relationship, PeerAnswer> {
    let r = match node.get(id, Role::Target) {
        Ok(r) => r,
        Err(Error::NotFound(_)) => {
            return Err(
                super::reverse::stale_peer(node, id, fp, None).unwrap_or(PeerAnswer::NotFound)
            )
        }
        Err(e) => return Err(PeerAnswer::refusal(e)),
    };
    if r.peer_fingerprint.as_deref() != Some(fp.0.as_str()) {
        return Err(PeerAnswer::refused(format!(
            "peer not authorized for relationship {id}: its certificate {fp} is not the one pinned when the relationship was proposed"
        )));
    }
    super::lock(&node.last_contact).insert(id.clone(), node.clock.instant());
    Ok(r)
}

/// `pinned`, from a source at the same `epoch` (else refused as split brain).
fn pinned_at(
    node: &Node,
    id: &crate::model::RelationshipId,
    fp: &Fingerprint,
    epoch: u64,
) -> Result<Relationship, PeerAnswer> {
    let r = pinned(node, id, fp)?;
    match r.split_brain(epoch) {
        Some(m) => Err(PeerAnswer::refused(m)),
        None => Ok(r),
    }
}

async fn handle(
    node: &Arc<Node>,
    fp: &Fingerprint,
    req: PeerRequest,
    ticket: (mover::units::SessionId, mover::SessionSecret),
) -> PeerAnswer {
    match respond(node, fp, req, ticket) {
        Handled::Answer(a) => a,
        Handled::Blocking(work) => {
            let (n, what) = (node.clone(), work.what());
            tokio::task::spawn_blocking(move || finish(&n, work))
                .await
                .unwrap_or_else(|e| PeerAnswer::refused(format!("{what} task failed: {e}")))
        }
    }
}

/// How a peer request is answered: at once, or by work that blocks (starting a receiver,
/// waiting for a session to end), which the daemon runs on a blocking thread and the
/// simulation as a later step, as `finish`.
pub(crate) enum Handled {
    Answer(PeerAnswer),
    Blocking(Blocking),
}

/// Work a peer request left for a blocking thread, with what it was decided on.
pub(crate) enum Blocking {
    /// A session for `r` (read and checked when the request arrived).
    Ticket {
        r: Box<Relationship>,
        /// The secret its frames are sealed with; `None`: a session in clear.
        secret: Option<mover::SessionSecret>,
        /// The ticket a sealed session's secret was derived for.
        ticket: mover::units::SessionId,
        /// The owner term the source asked at (`target::ticket`).
        term: u64,
        /// The source takes write places (`PeerAnswer::Ticket::write_places`).
        write_places: bool,
    },
    Delete(crate::model::RelationshipId),
    Reconnect(crate::model::RelationshipId),
    Keep {
        id: crate::model::RelationshipId,
        snapshot: Box<crate::policy::Snapshot>,
        recovery_point: String,
    },
}

impl Blocking {
    fn what(&self) -> &'static str {
        match self {
            Blocking::Ticket { .. } => "ticket",
            Blocking::Delete(_) => "delete",
            Blocking::Reconnect(_) => "reconnect",
            Blocking::Keep { .. } => "keep snapshot",
        }
    }
}

/// Does the blocking part of a request and answers it.
pub(crate) fn finish(node: &Node, work: Blocking) -> PeerAnswer {
    match work {
        Blocking::Ticket {
            r,
            secret,
            ticket,
            term,
            write_places,
        } => {
            let plaintext = secret.is_none();
            match target::ticket(node, &r, secret, term, write_places) {
                // Sealed: the random ticket the secret was derived for (the data plane only
                // ever carries the secret's handle). Plain: the session id itself.
                Ok((port, t, places)) => {
                    // Out of `ticket`'s locks (routing takes them): etcd may be slow.
                    super::writes::announce(node, &r.id, t, &places);
                    PeerAnswer::Ticket {
                        port,
                        ticket: format!("{:032x}", if plaintext { t } else { ticket.0 }),
                        write_places: places.into_iter().map(|(_, a)| a).collect(),
                    }
                }
                Err(e) => PeerAnswer::refused(e.to_string()),
            }
        }
        Blocking::Delete(id) => match target::delete(node, &id) {
            Ok(()) => PeerAnswer::Ok,
            Err(e) => PeerAnswer::refused(e.to_string()),
        },
        Blocking::Reconnect(id) => match target::reconnect(node, &id) {
            Ok((recovery_point_ns, difference, epoch)) => PeerAnswer::Reconnected {
                recovery_point_ns,
                difference,
                epoch,
            },
            Err(e) => PeerAnswer::refused(e.to_string()),
        },
        Blocking::Keep {
            id,
            snapshot,
            recovery_point,
        } => match super::snapshots::keep(node, &id, &snapshot, &recovery_point) {
            Ok(_) => PeerAnswer::Ok,
            Err(e) => PeerAnswer::refused(e.to_string()),
        },
    }
}

/// Answers the request of the peer presenting `fp`, or says what blocking work answers it.
/// `ticket` and `secret` are what a ticket request is granted (the secret derived from this
/// request's TLS session).
pub(crate) fn respond(
    node: &Node,
    fp: &Fingerprint,
    req: PeerRequest,
    (ticket, secret): (mover::units::SessionId, mover::SessionSecret),
) -> Handled {
    Handled::Answer(match req {
        PeerRequest::Propose { id, spec, software } => propose(node, fp, id, spec, &software),
        PeerRequest::State { id, source } => match pinned(node, &id, fp) {
            Ok(r) => {
                // Being released (delete, make-writable) counts as ended: the source stops its
                // job, so the running session ends and the release can go on.
                let ended = r.ended || super::lock(&node.reverting).contains(&id);
                if let Some(v) = source.as_ref().and_then(|s| s.software.as_deref()) {
                    node.peer_release(&id, v, "source");
                }
                if let Some(s) = source.filter(|_| !ended) {
                    if let Err(e) = catch_up(node, &r, s) {
                        tracing::debug!(%id, "taking the source's state: {e}");
                    }
                }
                PeerAnswer::State {
                    authorized: r.authorized,
                    ended,
                    scrub_failed: !ended && target::scrub(node, &id).is_some_and(|s| !s.ok),
                    software: Some(mover::software_version().to_string()),
                }
            }
            Err(a) => a,
        },
        PeerRequest::Ticket {
            id,
            plaintext,
            epoch,
            software,
            term,
            write_places,
        } => {
            let r = match pinned_at(node, &id, fp, epoch) {
                Ok(r) => r,
                Err(a) => return Handled::Answer(a),
            };
            // Every session: the source may have been upgraded or downgraded since.
            if let Some(why) = software.and_then(|s| node.peer_release(&id, &s, "source")) {
                return Handled::Answer(PeerAnswer::refused(why));
            }
            if !r.authorized {
                return Handled::Answer(PeerAnswer::refused(format!(
                    "relationship {id} is awaiting authorization on the target"
                )));
            }
            // Both sides must agree to run in clear; a target set to run in clear still
            // seals the sessions of a source that asks for them sealed.
            let secret = match (plaintext, node.opts.insecure_plaintext) {
                (false, _) => Some(secret),
                (true, true) => None,
                (true, false) => {
                    return Handled::Answer(PeerAnswer::refused(
                        "this target runs data-plane sessions encrypted only; a session in \
                         clear needs insecure_plaintext on both nodes"
                            .into(),
                    ))
                }
            };
            return Handled::Blocking(Blocking::Ticket {
                r: Box::new(r),
                secret,
                ticket,
                term,
                write_places,
            });
        }
        PeerRequest::Report {
            id,
            running,
            job,
            last_attempt,
            recovery_point_ns,
            epoch,
        } => {
            match pinned(node, &id, fp) {
                Err(a) => return Handled::Answer(a),
                // A report from an older epoch is from before the failover: not taken.
                Ok(r) if !r.ended => {
                    if let Some(m) = r.split_brain(epoch) {
                        return Handled::Answer(PeerAnswer::refused(m));
                    }
                }
                Ok(_) => {}
            }
            match target::record_report(node, &id, running, job, last_attempt, recovery_point_ns) {
                Ok(()) => PeerAnswer::Ok,
                // Ended or being released here: the source stops its job.
                Err(Error::NotFound(_)) => PeerAnswer::NotFound,
                Err(e) => PeerAnswer::refused(e.to_string()),
            }
        }
        PeerRequest::Update { id, spec } => {
            let r = match pinned(node, &id, fp) {
                Ok(r) => r,
                Err(a) => return Handled::Answer(a),
            };
            match take_spec(node, &r, spec) {
                Ok(()) => PeerAnswer::Ok,
                Err(e) => PeerAnswer::refused(e.to_string()),
            }
        }
        PeerRequest::Delete { id } => {
            if let Err(a) = pinned(node, &id, fp) {
                return Handled::Answer(a);
            }
            return Handled::Blocking(Blocking::Delete(id));
        }
        PeerRequest::Reconnect {
            id,
            recovery_point_ns,
        } => {
            let r = match pinned(node, &id, fp) {
                Ok(r) => r,
                Err(a) => return Handled::Answer(a),
            };
            if r.recovery_point_ns != recovery_point_ns {
                tracing::warn!(%id, source = ?recovery_point_ns, target = ?r.recovery_point_ns, "source and target recorded different last recovery points; the next job compares every entry");
            }
            return Handled::Blocking(Blocking::Reconnect(id));
        }
        PeerRequest::KeepSnapshot {
            id,
            epoch,
            snapshot,
            recovery_point,
        } => {
            if let Err(a) = pinned_at(node, &id, fp, epoch) {
                return Handled::Answer(a);
            }
            if !mover::keep::valid_name(&snapshot.name()) {
                return Handled::Answer(PeerAnswer::refused(format!(
                    "{:?} is not a policy snapshot's name",
                    snapshot.name()
                )));
            }
            return Handled::Blocking(Blocking::Keep {
                id,
                snapshot: Box::new(snapshot),
                recovery_point,
            });
        }
        // Served where the connection's address is known (`one`).
        PeerRequest::Reverse(_) => PeerAnswer::refused("a reverse step is not served here".into()),
    })
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
    node.modify(&r.id, Role::Target, |x| x.spec = spec)?;
    Ok(())
}

/// Takes the source's view from a poll: its job and last outcome (once authorized: no job runs
/// before), and an edit this node missed.
fn catch_up(node: &Node, r: &Relationship, s: crate::peer::SourceState) -> crate::Result<()> {
    if r.authorized {
        target::record_report(
            node,
            &r.id,
            s.running,
            s.job,
            s.last_attempt,
            s.recovery_point_ns,
        )?;
    }
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
        return PeerAnswer::refused(e.to_string());
    }
    // A source naming this node's own address: one store cannot hold both roles of one id, and
    // the target path it would protect and replicate into is whatever the request said.
    if *fp == node.identity.fingerprint {
        return PeerAnswer::refused(
            "a relationship from this node to itself: the target must be another node".into(),
        );
    }
    if let Some(why) = mover::compat::refuse_peer(mover::software_version(), software, "source") {
        tracing::warn!(%id, "refused a proposal: {why}");
        return PeerAnswer::refused(why);
    }
    match node.store().get(&id) {
        Ok(r) if r.peer_fingerprint.as_deref() == Some(fp.0.as_str()) && r.role == Role::Target => {
            return PeerAnswer::Ok
        }
        Ok(_) => {
            return PeerAnswer::refused(format!(
                "relationship {id} already exists here with another peer"
            ))
        }
        Err(Error::NotFound(_)) => {}
        Err(e) => return PeerAnswer::refusal(e),
    }
    // Every target, or no proposal: an unreadable one's path could be the one proposed.
    let all = match node.store().list(Some(Role::Target)) {
        Ok(all) => all,
        Err(e) => return PeerAnswer::refusal(e),
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
        return PeerAnswer::refused(format!(
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
        return PeerAnswer::refused(format!(
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
    // Bound first: the store's guard would live through the match, and the event takes it.
    let inserted = node.store().insert(&r);
    match inserted {
        Ok(()) => {
            tracing::info!(%id, peer = %fp, software, "relationship proposed; awaiting authorization");
            node.event(
                crate::events::EventKind::AuthorizationRequested,
                Some((&id, Role::Target)),
                format!(
                    "source {fp} proposes replicating {} into {}: authorize it here to begin",
                    r.spec.source_path, r.spec.target_path
                ),
            );
            PeerAnswer::Ok
        }
        Err(e) => PeerAnswer::refused(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Mounts a tmpfs holding one file on `dir` (created).
    fn mounted_victim(dir: &std::path::Path) {
        std::fs::create_dir_all(dir).unwrap();
        rustix::mount::mount(
            "tmpfs",
            dir,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            c"size=1m",
        )
        .unwrap();
        std::fs::write(dir.join("precious"), b"data").unwrap();
    }

    /// Lazily unmounts its directories when the test ends, passed or not.
    struct Unmount(Vec<std::path::PathBuf>);

    impl Drop for Unmount {
        fn drop(&mut self) {
            for d in &self.0 {
                let _ = rustix::mount::unmount(d, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }

    fn mounted(dir: &std::path::Path) -> bool {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let want = dir.to_str().unwrap();
        text.lines().any(|l| l.split(' ').nth(4) == Some(want))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_chosen_id_never_names_a_path_the_target_unmounts_or_removes() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test mounts: run it as root (CI does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let (node, _clock) = super::super::test_node(&base.join("node"));
        let node = Arc::new(node);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(node.clone(), listener));
        // A certificate the target has never seen.
        let hostile = crate::tls::Identity::load_or_create(&base.join("hostile")).unwrap();
        // The private mounts live in <data dir>/mnt/<id>: an absolute id, or one climbing out
        // of it, would name these directories instead.
        let (abs, rel) = (base.join("victim-abs"), base.join("victim-rel"));
        let _mounts = Unmount(vec![abs.clone(), rel.clone()]);
        mounted_victim(&abs);
        mounted_victim(&rel);
        let ids = [
            abs.to_str().unwrap().to_string(),
            "../../../victim-rel".to_string(),
            format!("{}\nmover_fake 1", "ab".repeat(16)),
        ];
        let mut stored_answers = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let gone = base.join(format!("gone-{i}"));
            let spec = json!({"source_path": "/srv/data", "target_address": "127.0.0.1",
                              "target_path": gone.to_str().unwrap()});
            let propose = json!({"op": "propose", "id": id, "spec": spec, "software": mover::software_version()});
            let answer: Result<(Value, _), _> =
                crate::peer_wire::call(addr, &hostile, None, &propose).await;
            if answer.as_ref().is_ok_and(|(a, _)| a["answer"] == "ok") {
                stored_answers.push(id.clone());
            }
            let delete = json!({"op": "delete", "id": id});
            let _ = crate::peer_wire::call::<_, Value>(addr, &hostile, None, &delete).await;
        }
        for v in [&abs, &rel] {
            assert!(
                mounted(v) && v.join("precious").exists(),
                "a peer-chosen id unmounted or removed {}",
                v.display()
            );
        }
        assert!(
            stored_answers.is_empty(),
            "proposals with these ids were taken: {stored_answers:?}"
        );
        let stored = node.store().list(None).unwrap();
        assert!(stored.is_empty(), "{stored:?}");
    }
}
