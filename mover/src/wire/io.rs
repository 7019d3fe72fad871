//! Blocking frame I/O over a `Connection`, used for handshakes and the control connection.
//! The data path does not use this for its data frames: its workers seal or checksum whole
//! frames in their buffers. A `Link` is a connection together with how its frames are
//! protected; the free functions read and write plain frames (the sender's Hello, and
//! refusals sent before a session exists).

use super::frame::{FrameHeader, FrameKind, FRAME_HEADER_LEN};
use super::message::{decode_error, encode_error, ErrorCode};
use super::seal::{Opener, Seal, Sealer, SessionSecret};
use super::WireError;
use crate::error::{Error, IoContext, Result};
use crate::transport::Connection;

/// Writes one plain frame; returns the bytes put on the wire.
pub fn write_frame(c: &mut dyn Connection, kind: FrameKind, payload: &[u8]) -> Result<u64> {
    let h = FrameHeader::for_payload(kind, payload).encode();
    c.send_all(&h)
        .ctx(|| format!("sending {kind:?} frame header"))?;
    c.send_all(payload)
        .ctx(|| format!("sending {kind:?} frame"))?;
    Ok((FRAME_HEADER_LEN + payload.len()) as u64)
}

/// Reads one frame's header and payload into `buf` (resized to the payload) without checking
/// the payload: the caller verifies or opens it.
fn read_raw(c: &mut dyn Connection, buf: &mut Vec<u8>) -> Result<FrameHeader> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    c.recv_exact(&mut h)
        .ctx(|| "reading frame header (peer closed or timed out)".to_string())?;
    let header = FrameHeader::decode(&h)?;
    buf.resize(header.len as usize, 0);
    c.recv_exact(buf)
        .ctx(|| format!("reading {:?} frame of {} bytes", header.kind, header.len))?;
    Ok(header)
}

/// Reads one plain frame into `buf` after checking its header and checksum.
pub fn read_frame(c: &mut dyn Connection, buf: &mut Vec<u8>) -> Result<FrameHeader> {
    let header = read_raw(c, buf)?;
    header.verify(buf)?;
    Ok(header)
}

/// The frame read must be of `kind`; an Error frame from the peer becomes `Error::Peer`.
fn expecting(h: FrameHeader, kind: FrameKind, buf: &[u8]) -> Result<()> {
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

/// Reads a plain frame that must be of `kind`.
pub fn expect_frame(c: &mut dyn Connection, kind: FrameKind, buf: &mut Vec<u8>) -> Result<()> {
    let h = read_frame(c, buf)?;
    expecting(h, kind, buf)
}

/// Tells the peer in a plain frame why this side refuses it (best effort: it may be gone).
pub fn send_error(c: &mut dyn Connection, code: ErrorCode, message: &str) {
    if let Err(e) = write_frame(c, FrameKind::Error, &encode_error(code, message)) {
        tracing::debug!("could not tell the peer about the error ({message}): {e}");
    }
}

/// A connection of a session and the protection of its frames: checksummed in clear, or sealed
/// in both directions with the session's secret.
pub struct Link {
    pub conn: Box<dyn Connection>,
    seal: Option<Seal>,
    /// Scratch for sealing a frame before it is written.
    out: Vec<u8>,
}

impl Link {
    /// A link whose frames travel in clear (checksummed only).
    pub fn plain(conn: Box<dyn Connection>) -> Link {
        Link {
            conn,
            seal: None,
            out: Vec::new(),
        }
    }

    /// A link whose frames are sealed: connection number `conn_no` of the session, seen from
    /// the sender (`sender`) or the receiver.
    pub fn sealed(
        conn: Box<dyn Connection>,
        secret: &SessionSecret,
        sender: bool,
        conn_no: u32,
    ) -> Link {
        Link {
            conn,
            seal: Some(Seal::new(secret, sender, conn_no)),
            out: Vec::new(),
        }
    }

    pub fn is_sealed(&self) -> bool {
        self.seal.is_some()
    }

    /// The sealer of outgoing frames and the connection, for a worker that builds its frames
    /// in its own buffers.
    pub fn parts(
        &mut self,
    ) -> (
        &mut dyn Connection,
        Option<&mut Sealer>,
        Option<&mut Opener>,
    ) {
        match &mut self.seal {
            Some(s) => (&mut *self.conn, Some(&mut s.sealer), Some(&mut s.opener)),
            None => (&mut *self.conn, None, None),
        }
    }

    /// Writes one frame; returns the bytes put on the wire.
    pub fn write_frame(&mut self, kind: FrameKind, payload: &[u8]) -> Result<u64> {
        let Some(seal) = &mut self.seal else {
            return write_frame(&mut *self.conn, kind, payload);
        };
        self.out.clear();
        self.out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        self.out.extend_from_slice(payload);
        let (h, tag) = seal.sealer.seal(kind, &mut self.out[FRAME_HEADER_LEN..]);
        self.out[..FRAME_HEADER_LEN].copy_from_slice(&h.encode());
        self.out.extend_from_slice(&tag);
        self.conn
            .send_all(&self.out)
            .ctx(|| format!("sending {kind:?} frame"))?;
        Ok(self.out.len() as u64)
    }

    /// Reads one frame into `buf`, checked (plain) or authenticated and decrypted (sealed);
    /// `buf` is left holding the plaintext payload. A sealed link refuses plain frames, except
    /// a refusal (an Error frame) before the peer sealed anything: a receiver that refuses a
    /// session's Hello has not confirmed the session's secret.
    pub fn read_frame(&mut self, buf: &mut Vec<u8>) -> Result<FrameHeader> {
        let h = read_raw(&mut *self.conn, buf)?;
        let Some(seal) = &mut self.seal else {
            h.verify(buf)?;
            return Ok(h);
        };
        if !h.sealed && h.kind == FrameKind::Error && seal.opener.opened() == 0 {
            h.verify(buf)?;
            return Ok(h);
        }
        let n = seal.opener.open(&h, buf)?;
        buf.truncate(n);
        Ok(h)
    }

    /// Reads a frame that must be of `kind`; an Error frame from the peer becomes `Error::Peer`.
    pub fn expect_frame(&mut self, kind: FrameKind, buf: &mut Vec<u8>) -> Result<()> {
        let h = self.read_frame(buf)?;
        expecting(h, kind, buf)
    }

    /// Tells the peer why this side ends the session (best effort: it may already be gone).
    pub fn send_error(&mut self, code: ErrorCode, message: &str) {
        if let Err(e) = self.write_frame(FrameKind::Error, &encode_error(code, message)) {
            tracing::debug!("could not tell the peer about the error ({message}): {e}");
        }
    }
}
