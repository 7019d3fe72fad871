//! Blocking frame I/O over a `Connection`, used for handshakes and the control connection.
//! The data path does not use this: its workers move whole frames from their buffers.

use super::frame::{FrameHeader, FrameKind, FRAME_HEADER_LEN};
use super::message::{decode_error, encode_error, ErrorCode};
use super::WireError;
use crate::error::{Error, IoContext, Result};
use crate::transport::Connection;

/// Writes one frame; returns the bytes put on the wire.
pub fn write_frame(c: &mut dyn Connection, kind: FrameKind, payload: &[u8]) -> Result<u64> {
    let h = FrameHeader::for_payload(kind, payload).encode();
    c.send_all(&h)
        .ctx(|| format!("sending {kind:?} frame header"))?;
    c.send_all(payload)
        .ctx(|| format!("sending {kind:?} frame"))?;
    Ok((FRAME_HEADER_LEN + payload.len()) as u64)
}

/// Reads one frame into `buf` (resized to the payload) after checking its header and checksum.
pub fn read_frame(c: &mut dyn Connection, buf: &mut Vec<u8>) -> Result<FrameHeader> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    c.recv_exact(&mut h)
        .ctx(|| "reading frame header (peer closed or timed out)".to_string())?;
    let header = FrameHeader::decode(&h)?;
    buf.resize(header.len as usize, 0);
    c.recv_exact(buf)
        .ctx(|| format!("reading {:?} frame of {} bytes", header.kind, header.len))?;
    header.verify(buf)?;
    Ok(header)
}

/// Reads a frame that must be of `kind`; an Error frame from the peer becomes `Error::Peer`.
pub fn expect_frame(c: &mut dyn Connection, kind: FrameKind, buf: &mut Vec<u8>) -> Result<()> {
    let h = read_frame(c, buf)?;
    if h.kind == FrameKind::Error {
        let (code, message) = decode_error(buf)?;
        return Err(Error::Peer { code, message });
    }
    if h.kind != kind {
        return Err(WireError::Unexpected {
            expected: kind,
            got: h.kind,
        }
        .into());
    }
    Ok(())
}

/// Tells the peer why this side ends the session (best effort: it may already be gone).
pub fn send_error(c: &mut dyn Connection, code: ErrorCode, message: &str) {
    if let Err(e) = write_frame(c, FrameKind::Error, &encode_error(code, message)) {
        tracing::debug!("could not tell the peer about the error ({message}): {e}");
    }
}
