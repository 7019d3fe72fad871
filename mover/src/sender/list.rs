//! The entry list on its way out: whole (Entries frames) or as a delta against the list of the
//! receiver's recovery point (EntriesDelta frames), cut into frames as the walk hands it over,
//! so the list streams while the walk runs.

use super::manifest::Manifest;
use crate::error::{Error, Result};
use crate::tree::diff::DeltaEncoder;
use crate::tree::entry::Entry;
use crate::wire::codec::Enc;
use crate::wire::frame::FrameKind;
use crate::wire::io::Link;
use crate::wire::message::{encode_delta_op, encode_entry, BaseAnswer, BaseOffer, DeltaOp};

/// Entries (and delta) frames are flushed at this size (one entry is at most a few hundred
/// KiB, so a frame stays under MAX_FRAME_PAYLOAD).
pub const ENTRIES_FRAME_BYTES: usize = 1024 * 1024;

/// Offers the manifest's list as the base of a delta; true if the receiver keeps that very
/// list for its current recovery point (it names its recovery point and the list's digest).
pub fn offer_base(ctl: &mut Link, m: &Manifest, wire: &mut u64) -> Result<bool> {
    let offer = BaseOffer {
        recovery_point: m.rp,
        list_digest: m.list_digest,
        entries: m.entries.len() as u64,
    };
    *wire += ctl.write_frame(FrameKind::BaseOffer, &offer.encode())?;
    let mut buf = Vec::new();
    ctl.expect_frame(FrameKind::BaseAnswer, &mut buf)?;
    let a = BaseAnswer::decode(&buf)?;
    if a.accepted && (a.recovery_point, a.list_digest) != (m.rp, m.list_digest) {
        return Err(Error::Verify(format!(
            "the receiver accepted a delta against recovery point {:032x} while naming {:032x}",
            m.rp, a.recovery_point
        )));
    }
    if !a.accepted {
        tracing::info!(
            receiver_rp = format!("{:032x}", a.recovery_point),
            "the receiver does not keep the manifest's list: sending the whole list"
        );
    }
    Ok(a.accepted)
}

/// Encodes the list as it is walked and writes its frames.
pub struct ListOut<'a> {
    delta: Option<DeltaEncoder<'a>>,
    enc: Enc,
    ops: Vec<DeltaOp>,
    /// Bytes written so far.
    pub wire: u64,
}

impl<'a> ListOut<'a> {
    /// Whole (`base` None) or as a delta against `base`.
    pub fn new(base: Option<&'a [Entry]>) -> ListOut<'a> {
        ListOut {
            delta: base.map(DeltaEncoder::new),
            enc: Enc::new(),
            ops: Vec::new(),
            wire: 0,
        }
    }

    fn kind(&self) -> FrameKind {
        if self.delta.is_some() {
            FrameKind::EntriesDelta
        } else {
            FrameKind::Entries
        }
    }

    fn flush(&mut self, ctl: &mut Link, at_least: usize) -> Result<()> {
        if !self.enc.buf.is_empty() && self.enc.buf.len() >= at_least {
            self.wire += ctl.write_frame(self.kind(), &self.enc.buf)?;
            self.enc.buf.clear();
        }
        Ok(())
    }

    fn encode_ops(&mut self, ctl: &mut Link) -> Result<()> {
        for op in self.ops.drain(..) {
            encode_delta_op(&mut self.enc, &op);
            if self.enc.buf.len() >= ENTRIES_FRAME_BYTES {
                self.wire += ctl.write_frame(FrameKind::EntriesDelta, &self.enc.buf)?;
                self.enc.buf.clear();
            }
        }
        Ok(())
    }

    /// The next entries of the list, in order.
    pub fn push(&mut self, es: &[Entry], ctl: &mut Link) -> Result<()> {
        match self.delta.as_mut() {
            Some(d) => {
                for e in es {
                    d.push(e, &mut self.ops);
                }
                self.encode_ops(ctl)
            }
            None => {
                for e in es {
                    encode_entry(&mut self.enc, e);
                    self.flush(ctl, ENTRIES_FRAME_BYTES)?;
                }
                Ok(())
            }
        }
    }

    /// Writes what is left; returns the entries a delta put or replaced (None: whole list).
    pub fn finish(&mut self, ctl: &mut Link) -> Result<Option<u64>> {
        let changed = match self.delta.as_mut() {
            Some(d) => {
                d.finish(&mut self.ops);
                Some(d.changed)
            }
            None => None,
        };
        self.encode_ops(ctl)?;
        self.flush(ctl, 1)?;
        Ok(changed)
    }
}
