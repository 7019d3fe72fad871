//! Sealed frames: AES-256-GCM over every frame of a session after the sender's Hello.
//!
//! A session's peers share a 32-byte `SessionSecret` (a daemon derives it from the mutual TLS
//! session that handed out the ticket; see docs/protocol.md). From it come the AEAD key and the
//! session's public *handle*, which is all the Hello carries: the secret, and the ticket it came
//! with, never travel on the data plane.
//!
//! Each direction of each connection numbers its frames from 0. The nonce is
//! `direction u8 || connection u24 || counter u64`, so no two frames of a session share one,
//! and a receiver that expects exactly the next counter refuses a replayed, reordered, dropped
//! or injected frame: it fails authentication. The header's kind, flags and length are the
//! additional data; its checksum field carries the tag's first 8 bytes (the content digest is
//! taken over those, as over the checksums of plain frames).

use super::frame::{FrameHeader, FrameKind, FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD};
use super::WireError;
use crate::units::SessionId;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::hkdf;

/// Bytes of the authentication tag appended to a sealed payload.
pub const TAG_LEN: usize = 16;
/// Bytes of a session secret.
pub const SECRET_LEN: usize = 32;
/// The control connection's number in nonces; workers use their index (< MAX_WORKERS).
pub const CONTROL_CONN: u32 = 0x00ff_ffff;
/// Frames one direction of one connection may seal: the counter never wraps.
pub const MAX_FRAMES_PER_DIRECTION: u64 = u64::MAX;

const KEY_INFO: &[u8] = b"mover data plane v1: aes-256-gcm key";
const HANDLE_INFO: &[u8] = b"mover data plane v1: session handle";

/// The secret both peers of one session hold. Not `Debug`-printed, not serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSecret([u8; SECRET_LEN]);

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecret(..)")
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl SessionSecret {
    pub fn from_bytes(b: [u8; SECRET_LEN]) -> SessionSecret {
        SessionSecret(b)
    }

    /// The secret's bytes, for handing one session's share of workers to another node of the
    /// same cluster (`sender::shard`) over the cluster's trusted control store; nothing else.
    pub fn expose(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// A fresh secret from the kernel's random source (tests, and peers that agree on one over
    /// another secure channel).
    pub fn random() -> std::io::Result<SessionSecret> {
        let mut b = [0u8; SECRET_LEN];
        crate::units::fill_random(&mut b)?;
        Ok(SessionSecret(b))
    }

    fn expand(&self, info: &[u8], out: &mut [u8]) {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(&self.0);
        let infos = [info];
        // Invariant: HKDF-SHA256 can expand to 255 hash lengths; we ask for at most 32 bytes.
        let okm = prk
            .expand(&infos, Len(out.len()))
            .unwrap_or_else(|_| unreachable!("HKDF output of {} bytes", out.len()));
        okm.fill(out)
            .unwrap_or_else(|_| unreachable!("HKDF fill of {} bytes", out.len()));
    }

    /// The session id a sealed session announces in its Hellos: derived from the secret, so
    /// a receiver can find the session, but the secret cannot be derived from it.
    pub fn handle(&self) -> SessionId {
        let mut b = [0u8; 16];
        self.expand(HANDLE_INFO, &mut b);
        SessionId(u128::from_le_bytes(b))
    }

    fn key(&self) -> LessSafeKey {
        let mut k = [0u8; 32];
        self.expand(KEY_INFO, &mut k);
        // Invariant: 32 bytes is AES-256's key length.
        let unbound = UnboundKey::new(&AES_256_GCM, &k)
            .unwrap_or_else(|_| unreachable!("AES-256-GCM key of 32 bytes"));
        LessSafeKey::new(unbound)
    }
}

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    ToReceiver = 0,
    ToSender = 1,
}

fn nonce(dir: Direction, conn: u32, counter: u64) -> Nonce {
    debug_assert!(conn <= CONTROL_CONN);
    let mut n = [0u8; 12];
    n[0] = dir as u8;
    n[1..4].copy_from_slice(&conn.to_le_bytes()[..3]);
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The additional data: the header as sent, less its checksum field (which carries the tag).
fn aad(kind: FrameKind, len: usize) -> [u8; 8] {
    let mut h = FrameHeader {
        kind,
        sealed: true,
        len: len as u32,
        checksum: 0,
    }
    .encode();
    h[8..].fill(0);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h[..8]);
    out
}

/// Seals the frames one side sends on one connection.
pub struct Sealer {
    key: LessSafeKey,
    dir: Direction,
    conn: u32,
    next: u64,
}

impl Sealer {
    pub fn new(secret: &SessionSecret, dir: Direction, conn: u32) -> Sealer {
        Sealer {
            key: secret.key(),
            dir,
            conn,
            next: 0,
        }
    }

    /// Encrypts `payload` in place; returns the header to send before it and the tag to send
    /// after it (the header's length counts the tag).
    pub fn seal(&mut self, kind: FrameKind, payload: &mut [u8]) -> (FrameHeader, [u8; TAG_LEN]) {
        let len = payload.len() + TAG_LEN;
        assert!(
            len <= MAX_FRAME_PAYLOAD,
            "sealed payload over MAX_FRAME_PAYLOAD"
        );
        assert!(
            self.next < MAX_FRAMES_PER_DIRECTION,
            "frame counter exhausted"
        );
        let n = nonce(self.dir, self.conn, self.next);
        self.next += 1;
        // Invariant: sealing fails only for inputs longer than AES-GCM's limit (64 GiB), far
        // above MAX_FRAME_PAYLOAD (asserted above).
        let tag = self
            .key
            .seal_in_place_separate_tag(n, Aad::from(aad(kind, len)), payload)
            .unwrap_or_else(|_| unreachable!("AES-GCM seal of {len} bytes"));
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag.as_ref());
        let h = FrameHeader {
            kind,
            sealed: true,
            len: len as u32,
            checksum: tag_checksum(&t),
        };
        (h, t)
    }
}

/// The header checksum of a sealed frame: the tag's first 8 bytes.
fn tag_checksum(tag: &[u8; TAG_LEN]) -> u64 {
    let mut c = [0u8; 8];
    c.copy_from_slice(&tag[..8]);
    u64::from_le_bytes(c)
}

/// Opens the frames one side receives on one connection, in order.
pub struct Opener {
    key: LessSafeKey,
    dir: Direction,
    conn: u32,
    next: u64,
}

impl Opener {
    pub fn new(secret: &SessionSecret, dir: Direction, conn: u32) -> Opener {
        Opener {
            key: secret.key(),
            dir,
            conn,
            next: 0,
        }
    }

    /// Frames opened so far on this connection.
    pub fn opened(&self) -> u64 {
        self.next
    }

    /// Authenticates and decrypts a sealed frame's payload (ciphertext and tag) in place;
    /// returns the plaintext's length. Nothing of the payload may be used unless this is `Ok`.
    pub fn open(&mut self, h: &FrameHeader, payload: &mut [u8]) -> Result<usize, WireError> {
        if !h.sealed {
            return Err(WireError::NotSealed { kind: h.kind });
        }
        if payload.len() != h.len as usize || payload.len() < TAG_LEN {
            return Err(WireError::Truncated {
                needed: (h.len as usize).max(TAG_LEN),
                available: payload.len(),
            });
        }
        let total = payload.len();
        let at = total - TAG_LEN;
        let (data, tag) = payload.split_at_mut(at);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        let fail = WireError::Unauthenticated {
            kind: h.kind,
            counter: self.next,
        };
        if tag_checksum(&t) != h.checksum {
            return Err(fail);
        }
        let n = nonce(self.dir, self.conn, self.next);
        self.key
            .open_in_place_separate_tag(n, Aad::from(aad(h.kind, total)), &t, data)
            .map_err(|_| fail)?;
        self.next += 1;
        Ok(at)
    }
}

/// Both directions of one connection as seen from one side.
pub struct Seal {
    pub sealer: Sealer,
    pub opener: Opener,
}

impl Seal {
    /// The sealing state of connection `conn` for the sender (`sender` true) or the receiver.
    pub fn new(secret: &SessionSecret, sender: bool, conn: u32) -> Seal {
        let (out, inn) = if sender {
            (Direction::ToReceiver, Direction::ToSender)
        } else {
            (Direction::ToSender, Direction::ToReceiver)
        };
        Seal {
            sealer: Sealer::new(secret, out, conn),
            opener: Opener::new(secret, inn, conn),
        }
    }
}

/// Header length plus the tag: what sealing adds to a frame on the wire.
pub const SEAL_OVERHEAD: usize = FRAME_HEADER_LEN + TAG_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> SessionSecret {
        SessionSecret::from_bytes([b; SECRET_LEN])
    }

    fn sealed(s: &mut Sealer, kind: FrameKind, plain: &[u8]) -> (FrameHeader, Vec<u8>) {
        let mut p = plain.to_vec();
        let (h, tag) = s.seal(kind, &mut p);
        p.extend_from_slice(&tag);
        (h, p)
    }

    #[test]
    fn a_sealed_frame_opens_once_in_order_and_hides_its_payload() {
        let k = secret(1);
        let mut s = Sealer::new(&k, Direction::ToReceiver, 3);
        let mut o = Opener::new(&k, Direction::ToReceiver, 3);
        let plain = b"file data that must not be seen on the wire".repeat(10);
        let (h1, mut p1) = sealed(&mut s, FrameKind::Data, &plain);
        let (h2, mut p2) = sealed(&mut s, FrameKind::Data, &plain);
        assert!(h1.sealed && h1.len as usize == plain.len() + TAG_LEN);
        assert!(!p1.windows(9).any(|w| w == b"file data"));
        assert_ne!(
            p1, p2,
            "the same plaintext seals differently under the next counter"
        );
        // Out of order: the second frame first fails.
        let mut early = p2.clone();
        assert!(matches!(
            o.open(&h2, &mut early),
            Err(WireError::Unauthenticated { counter: 0, .. })
        ));
        let n = o.open(&h1, &mut p1).expect("first frame");
        assert_eq!(&p1[..n], &plain[..]);
        let n = o.open(&h2, &mut p2).expect("second frame");
        assert_eq!(&p2[..n], &plain[..]);
        // Replayed: the first frame again is refused.
        let (h1b, mut p1b) = {
            let mut s0 = Sealer::new(&k, Direction::ToReceiver, 3);
            sealed(&mut s0, FrameKind::Data, &plain)
        };
        assert!(o.open(&h1b, &mut p1b).is_err());
    }

    #[test]
    fn a_frame_is_refused_under_another_key_direction_connection_or_header() {
        let plain = vec![7u8; 100];
        let base = |k: u8, d, c| {
            let mut s = Sealer::new(&secret(k), d, c);
            sealed(&mut s, FrameKind::Entries, &plain)
        };
        let open = |h: &FrameHeader, p: &mut Vec<u8>| {
            Opener::new(&secret(1), Direction::ToReceiver, 0).open(h, p)
        };
        let (h, mut p) = base(2, Direction::ToReceiver, 0);
        assert!(open(&h, &mut p).is_err(), "other key");
        let (h, mut p) = base(1, Direction::ToSender, 0);
        assert!(open(&h, &mut p).is_err(), "other direction");
        let (h, mut p) = base(1, Direction::ToReceiver, 1);
        assert!(open(&h, &mut p).is_err(), "other connection");
        let (mut h, mut p) = base(1, Direction::ToReceiver, 0);
        h.kind = FrameKind::Hints;
        assert!(open(&h, &mut p).is_err(), "other kind");
        let (h, mut p) = base(1, Direction::ToReceiver, 0);
        let last = p.len() - 1;
        p[last] ^= 1;
        assert!(open(&h, &mut p).is_err(), "flipped tag bit");
        let (h, p) = base(1, Direction::ToReceiver, 0);
        let mut q = p.clone();
        q[0] ^= 0x80;
        assert!(open(&h, &mut q).is_err(), "flipped ciphertext bit");
        let mut plain_header = h;
        plain_header.sealed = false;
        let mut q = p.clone();
        assert!(matches!(
            open(&plain_header, &mut q),
            Err(WireError::NotSealed { .. })
        ));
        let (h, mut p) = base(1, Direction::ToReceiver, 0);
        assert_eq!(open(&h, &mut p).expect("intact"), plain.len());
    }

    #[test]
    fn the_handle_is_stable_per_secret_and_reveals_neither_key_nor_secret() {
        let (a, b) = (secret(1), secret(2));
        assert_eq!(a.handle(), secret(1).handle());
        assert_ne!(a.handle(), b.handle());
        assert!(!a.handle().0.to_le_bytes().iter().all(|&x| x == 1));
        assert_eq!(format!("{a:?}"), "SessionSecret(..)");
    }
}
