//! A source's requests to its relationship's target over the peer protocol: resolving the
//! target's address, one call pinned to its certificate, and the error a refusal becomes.

use super::Node;
use crate::model::Relationship;
use crate::peer::{PeerAnswer, PeerRequest};
use crate::tls::Fingerprint;
use crate::{Error, Result};
use std::net::SocketAddr;

/// Resolves the target's peer address.
pub async fn peer_addr(r: &Relationship) -> Result<SocketAddr> {
    let (host, port) = (r.spec.target_address.as_str(), r.spec.target_port);
    let mut it = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::Peer {
            peer: format!("{host}:{port}"),
            message: format!("cannot resolve: {e}"),
        })?;
    it.next().ok_or_else(|| Error::Peer {
        peer: format!("{host}:{port}"),
        message: "no address".into(),
    })
}

/// One request to the relationship's target, with its pinned certificate.
pub async fn call(node: &Node, r: &Relationship, req: &PeerRequest) -> Result<PeerAnswer> {
    let addr = peer_addr(r).await?;
    let pin = r
        .peer_fingerprint
        .as_deref()
        .map(|f| Fingerprint(f.to_string()));
    let (a, _) = crate::peer_wire::call(addr, &node.identity, pin.as_ref(), req).await?;
    Ok(a)
}

/// The error a target's answer other than the one asked for becomes, naming the target.
pub fn refused(r: &Relationship, a: PeerAnswer) -> Error {
    let message = match a {
        PeerAnswer::Refused { message } => message,
        PeerAnswer::NotFound => format!("the target does not know relationship {}", r.id),
        other => format!("unexpected answer {other:?}"),
    };
    Error::Peer {
        peer: format!("{}:{}", r.spec.target_address, r.spec.target_port),
        message,
    }
}
