//! Newtypes for ids and units so that a byte count is never confused with an entry index.

use serde::{Deserialize, Serialize};

/// Index of an entry in a session's entry list. Entry 0 is the root directory; every other
/// entry's parent has a smaller id, so the list is a pre-order walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryId(pub u32);

impl EntryId {
    pub const ROOT: EntryId = EntryId(0);
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Random id chosen by the sender for one replication session; worker connections carry it so
/// the receiver can attach them to the right session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct SessionId(pub u128);

impl SessionId {
    /// A fresh id from the kernel's random source.
    pub fn random() -> std::io::Result<SessionId> {
        let mut b = [0u8; 16];
        fill_random(&mut b)?;
        Ok(SessionId(u128::from_le_bytes(b)))
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Index of a worker (and of its connection) within a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct WorkerIndex(pub u16);

/// Fills `b` from the kernel's random source.
pub fn fill_random(b: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < b.len() {
        filled += rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(())
}
