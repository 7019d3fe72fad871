//! mover's control plane: the node daemon (`mover daemon`), its REST API and the peer protocol
//! between daemons, replication relationships, blackout windows, tokens and privileges, and the
//! node's durable state in SQLite. Pure where possible (windows, validation, status, privilege
//! checks); the daemon does the I/O. It runs the data plane's sender and receiver for jobs but
//! never reads or writes file data itself.

#![forbid(unsafe_code)]

pub mod api_types;
pub mod auth;
pub mod blackout;
pub mod clock;
pub mod cluster;
pub mod daemon;
pub mod error;
pub mod events;
pub mod fuzz;
pub mod lease;
pub mod model;
pub mod peer;
pub mod peer_wire;
pub mod pinned;
pub mod policy;
pub mod private_file;
pub mod readonly;
pub mod reverse;
pub mod standalone;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod tls;
pub mod upgrade;

pub use error::{Error, Result};
