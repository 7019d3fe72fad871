//! A write place's right to write (`Fence`), asked by the place and by each of its workers.

use crate::error::{Error, Result};

/// A write place's right to write. The daemon's is its cluster lease: the committing
/// receiver stops waiting for a place once it sees the place down (its lease expired), so a
/// place must have stopped writing by then, whether or not it still reaches the sender. A
/// place's workers ask before each frame's writes start (and every few files a batch
/// creates), and the place before it starts and before it writes its result; a watch asks
/// every `share::FENCE_POLL` and shuts the workers' connections on a refusal. A refusal
/// fails the share at once (`Error::Fenced`).
pub trait Fence: Send + Sync {
    /// `Ok` while this place may write; why not otherwise. Once it refused, it refuses from
    /// then on: the workers and the watch must agree that the share was fenced.
    fn check(&self) -> std::result::Result<(), String>;
}

/// Ok while `fence` (if any) lets this place write; `Error::Fenced` once it refused.
pub(crate) fn fence_ok(fence: Option<&dyn Fence>) -> Result<()> {
    match fence.map(Fence::check) {
        Some(Err(why)) => Err(Error::Fenced(why)),
        _ => Ok(()),
    }
}
