//! mover's data plane: a thread-per-core io_uring engine that replicates a directory tree to a
//! receiver over a framed, versioned, checksummed protocol. See ARCHITECTURE.md for the map and
//! docs/protocol.md for the wire format.
//!
//! The API, for the `mover` binary, the control plane's daemon and tests:
//! - **Send a tree**: [`send`] or [`send_with_retry`] with [`SendOptions`], giving a
//!   [`SendReport`]; the `_over` forms take any [`Transport`] instead of TCP. A running send
//!   is watched and steered through [`Progress`] and its [`JobControl`].
//! - **Receive into a root**: [`Receiver`] (its own listener, or an inbox of connections a
//!   daemon routes to it) with [`ReceiveOptions`]; [`revert_root`] and [`recovery_point`] for a
//!   destination at rest.
//! - **Verify**: [`tree::hash`] hashes a tree the way both sides do.
//! - **The protocol itself**, pure: [`wire`] (frames, messages, limits), for fuzzing and peers.
//! - **Building blocks** a caller may need: [`transport`], [`snapshot::Provider`],
//!   [`beneath`] (path operations that cannot leave a root), [`units`], [`clock`].
//! - Feature `testkit`: seeded tree generation (`gen`), churn (`churn`) and the in-memory
//!   transport (`transport::mem`) for tests and the demo.
//!
//! Everything else (the io_uring engine, the receiver's journal and apply phases, the sender's
//! manifest and hints) is internal.

pub mod beneath;
pub mod clock;
pub mod compat;
pub(crate) mod durable;
pub(crate) mod engine;
pub mod error;
pub mod job;
pub mod keep;
pub mod receiver;
pub mod sender;
pub mod snapshot;
pub mod transport;
pub mod tree;
pub(crate) mod tree_copy;
pub mod units;
pub mod watch;
pub mod wire;

#[cfg(feature = "testkit")]
pub mod churn;
#[cfg(feature = "testkit")]
pub mod fuzz;
#[cfg(feature = "testkit")]
pub mod gen;

pub use error::{Error, Result};
pub use receiver::{
    recovery_point, revert_root, ReceiveOptions, Receiver, SessionLimits, SessionReport, Tickets,
};
pub use sender::{
    send, send_over, send_with_retry, send_with_retry_each, send_with_retry_over, IdMap,
    SendOptions, SendReport,
};
pub use transport::{Connection, Transport};
pub use wire::seal::SessionSecret;

pub use engine::{default_threads, reserve_fd_table, FD_TABLE_RESERVE, STALL_TIMEOUT};
pub use job::{Gate, JobControl, Progress, GATE_POLL};
pub use wire::message::software_version;
