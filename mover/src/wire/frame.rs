//! Frame header: every message on every connection is `header || payload`.
//!
//! ```text
//! offset size field
//! 0      1    kind      (FrameKind)
//! 1      1    flags     (bit 0: sealed, see seal.rs; other bits must be 0)
//! 2      2    reserved  (must be 0)
//! 4      4    payload length, little endian, <= MAX_FRAME_PAYLOAD
//! 8      8    xxh3-64 of the payload seeded with kind and length, little endian; in a sealed
//!             frame, the first 8 bytes of its authentication tag
//! ```
//! The checksum is verified before the payload is interpreted or written anywhere. Seeding it
//! with the header's kind and length means a corrupted kind byte cannot turn one valid frame
//! into another (reserved bits are checked to be zero).

use super::WireError;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The frame checksum: xxh3-64 of the payload, seeded with the header fields it must protect.
pub fn frame_checksum(kind: FrameKind, payload: &[u8]) -> u64 {
    xxh3_64_with_seed(payload, (kind as u64) | ((payload.len() as u64) << 8))
}

pub const FRAME_HEADER_LEN: usize = 16;

/// Data buffers carry at most this much file data per frame.
pub const DATA_CHUNK: usize = 1024 * 1024;

/// Hard upper bound on any payload; anything larger is rejected before a byte of it is read.
pub const MAX_FRAME_PAYLOAD: usize = 2 * 1024 * 1024;

#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Hello = 1,
    HelloAck = 2,
    Error = 3,
    Entries = 4,
    EntriesEnd = 5,
    NeedList = 6,
    Data = 7,
    FileBatch = 8,
    WorkerDone = 9,
    Commit = 10,
    Verified = 11,
    Hints = 12,
    Expect = 13,
    /// Receiver to sender, after the need list (CAP_RESUME_RANGES): the ranges still needed
    /// of each `Need::Rest` file.
    Rest = 14,
    // Protocol 5, the delta entry list (numbered apart from other additions).
    BaseOffer = 20,
    BaseAnswer = 21,
    EntriesDelta = 22,
    NeedSparse = 23,
}

impl FrameKind {
    pub fn from_u8(v: u8) -> Result<FrameKind, WireError> {
        use FrameKind::*;
        Ok(match v {
            1 => Hello,
            2 => HelloAck,
            3 => Error,
            4 => Entries,
            5 => EntriesEnd,
            6 => NeedList,
            7 => Data,
            8 => FileBatch,
            9 => WorkerDone,
            10 => Commit,
            11 => Verified,
            12 => Hints,
            13 => Expect,
            14 => Rest,
            20 => BaseOffer,
            21 => BaseAnswer,
            22 => EntriesDelta,
            23 => NeedSparse,
            other => return Err(WireError::UnknownFrameKind(other)),
        })
    }
}

/// Flag bit of a sealed frame: its payload is ciphertext followed by the tag.
pub const FLAG_SEALED: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    /// The payload is sealed (AEAD ciphertext and tag) rather than checksummed.
    pub sealed: bool,
    pub len: u32,
    pub checksum: u64,
}

impl FrameHeader {
    /// Header for `payload`, computing its checksum.
    pub fn for_payload(kind: FrameKind, payload: &[u8]) -> FrameHeader {
        assert!(
            payload.len() <= MAX_FRAME_PAYLOAD,
            "payload over MAX_FRAME_PAYLOAD"
        );
        FrameHeader {
            kind,
            sealed: false,
            len: payload.len() as u32,
            checksum: frame_checksum(kind, payload),
        }
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h[0] = self.kind as u8;
        h[1] = if self.sealed { FLAG_SEALED } else { 0 };
        h[4..8].copy_from_slice(&self.len.to_le_bytes());
        h[8..16].copy_from_slice(&self.checksum.to_le_bytes());
        h
    }

    /// Parses and bounds-checks a header. The payload length is checked here so that a reader
    /// never allocates or reads more than `MAX_FRAME_PAYLOAD` on a peer's word.
    pub fn decode(h: &[u8; FRAME_HEADER_LEN]) -> Result<FrameHeader, WireError> {
        let kind = FrameKind::from_u8(h[0])?;
        if h[1] & !FLAG_SEALED != 0 || h[2] != 0 || h[3] != 0 {
            return Err(WireError::ReservedBitsSet);
        }
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len as usize > MAX_FRAME_PAYLOAD {
            return Err(WireError::FrameTooLarge {
                len: len as usize,
                limit: MAX_FRAME_PAYLOAD,
            });
        }
        let checksum = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        Ok(FrameHeader {
            kind,
            sealed: h[1] & FLAG_SEALED != 0,
            len,
            checksum,
        })
    }

    /// Verifies a plain (unsealed) `payload` against the header: length and xxh3 checksum.
    pub fn verify(&self, payload: &[u8]) -> Result<(), WireError> {
        if self.sealed {
            return Err(WireError::UnexpectedSeal { kind: self.kind });
        }
        if payload.len() != self.len as usize {
            return Err(WireError::Truncated {
                needed: self.len as usize,
                available: payload.len(),
            });
        }
        let actual = frame_checksum(self.kind, payload);
        if actual != self.checksum {
            return Err(WireError::ChecksumMismatch {
                kind: self.kind,
                expected: self.checksum,
                actual,
            });
        }
        Ok(())
    }
}

/// Decodes one complete frame from the front of `buf`, returning the header, the verified
/// payload and the number of bytes consumed. Used by the fuzz target and by tests; the
/// streaming readers use `FrameHeader::decode` + `verify` directly on their buffers.
pub fn decode_frame(buf: &[u8]) -> Result<(FrameHeader, &[u8], usize), WireError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Err(WireError::Truncated {
            needed: FRAME_HEADER_LEN,
            available: buf.len(),
        });
    }
    let mut h = [0u8; FRAME_HEADER_LEN];
    h.copy_from_slice(&buf[..FRAME_HEADER_LEN]);
    let header = FrameHeader::decode(&h)?;
    let end = FRAME_HEADER_LEN + header.len as usize;
    if buf.len() < end {
        return Err(WireError::Truncated {
            needed: end,
            available: buf.len(),
        });
    }
    let payload = &buf[FRAME_HEADER_LEN..end];
    header.verify(payload)?;
    Ok((header, payload, end))
}

/// Header followed by payload, as one buffer.
pub fn encode_frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&FrameHeader::for_payload(kind, payload).encode());
    out.extend_from_slice(payload);
    out
}
