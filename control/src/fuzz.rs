//! Entry points for fuzzing: arbitrary bytes into the decoders a peer daemon or an API client
//! can reach. None may panic; errors are the expected outcome. The cargo-fuzz targets in
//! `fuzz/` call these, and a test replays the committed corpora through them in CI.

use crate::api_types::{Authorize, NewRelationship, NewToken};
use crate::model::{Edit, Spec};
use crate::peer::{PeerAnswer, PeerRequest};

/// A peer message body (the JSON inside peer_wire's length prefix), both ways.
pub fn peer_message(data: &[u8]) {
    let _ = serde_json::from_slice::<PeerRequest>(data);
    let _ = serde_json::from_slice::<PeerAnswer>(data);
}

/// A REST request body, as each handler reads it.
pub fn rest_body(data: &[u8]) {
    if let Ok(n) = NewRelationship::parse(data) {
        let _ = n.spec.validate();
    }
    if let Ok(e) = serde_json::from_slice::<Edit>(data) {
        let _ = serde_json::to_vec(&e);
    }
    let _ = serde_json::from_slice::<Spec>(data).map(|s| s.validate());
    let _ = serde_json::from_slice::<Authorize>(data);
    let _ = serde_json::from_slice::<NewToken>(data);
}
