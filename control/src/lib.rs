//! mover's control plane, first layer: the replication-relationship model, blackout windows and
//! the node's durable state in SQLite. Pure where possible (windows, validation, status); the
//! daemon, REST API and CLI of issue 5 build on this crate. It never touches file data.

pub mod blackout;
pub mod error;
pub mod model;
pub mod peer_wire;
pub mod store;
pub mod tls;

pub use error::{Error, Result};
