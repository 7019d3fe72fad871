//! RDMA transport (issue 17). The pure parts are compiled always and tested without a device:
//! - `credit`: receiver-granted credits for RDMA WRITE with immediate into receiver slots.
//! - `qp`: the reliable-connected queue pair lifecycle, with fallback to TCP on any error.
//! - `Endpoint`: what each side tells the other over the TCP control connection (QP number,
//!   PSN, GID, LID, rkey, slab address, slot count) before the queue pair goes to RTR.
//!
//! With feature `rdma`, `verbs` is the transport itself over libibverbs (through `rdma-sys`:
//! raw bindings generated against the system's libibverbs, so the installed rdma-core and its
//! providers, soft-RoCE's `rxe` among them, are what runs; the `ibverbs` crate instead builds a
//! vendored rdma-core with cmake and hides the work-request layout this transport needs).

pub mod credit;
pub mod qp;

#[cfg(feature = "rdma")]
pub mod verbs;

/// Bytes of an encoded `Endpoint`.
pub const ENDPOINT_LEN: usize = 56;
const ENDPOINT_MAGIC: &[u8; 8] = b"MVRDMA1\0";

/// One side of a queue-pair connection, exchanged over the control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub qpn: u32,
    /// Initial packet sequence number (24 bits).
    pub psn: u32,
    pub gid: [u8; 16],
    pub lid: u16,
    /// Remote key and address of the receive slab (for RDMA WRITE with immediate).
    pub rkey: u32,
    pub addr: u64,
    /// Receive slots this side posted and grants at once (slot ids `0..slots`).
    pub slots: u32,
    /// Bytes of each receive slot.
    pub slot_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("not an RDMA endpoint record (bad magic)")]
    Magic,
    #[error("endpoint claims {0} slots, outside 1..={max}", max = credit::MAX_SLOTS)]
    Slots(u32),
    #[error("endpoint PSN {0:#x} does not fit 24 bits")]
    Psn(u32),
}

impl Endpoint {
    pub fn encode(&self) -> [u8; ENDPOINT_LEN] {
        let mut b = [0u8; ENDPOINT_LEN];
        b[..8].copy_from_slice(ENDPOINT_MAGIC);
        b[8..12].copy_from_slice(&self.qpn.to_le_bytes());
        b[12..16].copy_from_slice(&self.psn.to_le_bytes());
        b[16..32].copy_from_slice(&self.gid);
        b[32..34].copy_from_slice(&self.lid.to_le_bytes());
        b[36..40].copy_from_slice(&self.rkey.to_le_bytes());
        b[40..48].copy_from_slice(&self.addr.to_le_bytes());
        b[48..52].copy_from_slice(&self.slots.to_le_bytes());
        b[52..56].copy_from_slice(&self.slot_size.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; ENDPOINT_LEN]) -> Result<Endpoint, EndpointError> {
        if &b[..8] != ENDPOINT_MAGIC {
            return Err(EndpointError::Magic);
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[16..32]);
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&b[40..48]);
        let e = Endpoint {
            qpn: u32_at(8),
            psn: u32_at(12),
            gid,
            lid: u16::from_le_bytes([b[32], b[33]]),
            rkey: u32_at(36),
            addr: u64::from_le_bytes(addr),
            slots: u32_at(48),
            slot_size: u32_at(52),
        };
        if e.slots == 0 || e.slots > credit::MAX_SLOTS {
            return Err(EndpointError::Slots(e.slots));
        }
        if e.psn > 0x00ff_ffff {
            return Err(EndpointError::Psn(e.psn));
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Endpoint {
        Endpoint {
            qpn: 0x11,
            psn: 0xabcdef,
            gid: [7; 16],
            lid: 3,
            rkey: 0xdead_beef,
            addr: 0x7f00_0000_1000,
            slots: 32,
            slot_size: 65536,
        }
    }

    #[test]
    fn an_endpoint_round_trips_through_its_encoding() {
        let e = sample();
        assert_eq!(Endpoint::decode(&e.encode()), Ok(e));
    }

    #[test]
    fn a_foreign_or_out_of_bounds_endpoint_is_refused() {
        let mut b = sample().encode();
        b[0] = b'X';
        assert_eq!(Endpoint::decode(&b), Err(EndpointError::Magic));
        let e = Endpoint {
            slots: credit::MAX_SLOTS + 1,
            ..sample()
        };
        assert!(matches!(
            Endpoint::decode(&e.encode()),
            Err(EndpointError::Slots(_))
        ));
        let e = Endpoint {
            psn: 1 << 24,
            ..sample()
        };
        assert!(matches!(
            Endpoint::decode(&e.encode()),
            Err(EndpointError::Psn(_))
        ));
    }
}
