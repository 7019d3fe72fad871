//! The wire protocol (see docs/protocol.md): framing, typed messages and blocking frame I/O for
//! the control connection. Everything here is pure except `io.rs`.

pub mod codec;
pub mod frame;
pub mod io;
pub mod message;
pub mod seal;

pub use frame::{FrameHeader, FrameKind, FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("unknown frame kind {0}")]
    UnknownFrameKind(u8),
    #[error("frame header has reserved bits set")]
    ReservedBitsSet,
    #[error("frame payload of {len} bytes exceeds the limit of {limit} bytes (MAX_FRAME_PAYLOAD)")]
    FrameTooLarge { len: usize, limit: usize },
    #[error("truncated: needed {needed} bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("checksum mismatch in {kind:?} frame: header says {expected:#018x}, payload hashes to {actual:#018x}")]
    ChecksumMismatch {
        kind: FrameKind,
        expected: u64,
        actual: u64,
    },
    #[error("{field} is {len} long, over the limit of {limit}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("{extra} unexpected bytes after the end of the payload")]
    TrailingBytes { extra: usize },
    #[error("{field} is not UTF-8")]
    NotUtf8 { field: &'static str },
    #[error(
        "{kind:?} frame {counter} of its connection failed authentication: replayed, reordered, \
         injected, corrupted or sealed with another session's key"
    )]
    Unauthenticated { kind: FrameKind, counter: u64 },
    #[error("{kind:?} frame is not sealed, but this session is encrypted")]
    NotSealed { kind: FrameKind },
    #[error("{kind:?} frame is sealed, but this session is not encrypted")]
    UnexpectedSeal { kind: FrameKind },
    #[error("bad magic {0:#010x}: peer is not speaking the mover protocol")]
    BadMagic(u32),
    #[error("bad role {role} / {n}")]
    BadRole { role: u8, n: u16 },
    #[error("no common protocol version: peer speaks {peer_min}..={peer_max}, we speak {ours_min}..={ours_max}")]
    VersionMismatch {
        peer_min: u16,
        peer_max: u16,
        ours_min: u16,
        ours_max: u16,
    },
    #[error("bad entry kind {0}")]
    BadEntryKind(u8),
    #[error("invalid {field}")]
    BadField { field: &'static str },
    #[error("expected a {expected:?} frame, got {got:?}")]
    Unexpected { expected: FrameKind, got: FrameKind },
}
