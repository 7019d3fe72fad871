//! Feeds arbitrary bytes to every decoder a receiver runs on peer input: the frame header and
//! checksum, then each payload decoder. None may panic, loop or allocate beyond the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mover::tree::entry::StructureChecker;
use mover::wire::frame::decode_frame;
use mover::wire::message::*;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok((_, payload, used)) = decode_frame(rest) {
        let _ = Hello::decode(payload);
        let _ = HelloAck::decode(payload);
        if let Ok(es) = decode_entries(payload) {
            let mut c = StructureChecker::new();
            for e in &es {
                if c.push(e).is_err() {
                    break;
                }
            }
        }
        let _ = decode_batch(payload);
        let _ = decode_need(payload);
        let _ = decode_data_prefix(payload);
        let _ = Commit::decode(payload);
        let _ = Verified::decode(payload);
        let _ = decode_error(payload);
        let _ = decode_hints(payload);
        let _ = decode_expect(payload);
        let _ = decode_worker_done(payload);
        rest = &rest[used..];
    }
    // Unframed: the payload decoders must hold on raw bytes too.
    let _ = decode_entries(data);
    let _ = decode_batch(data);
});
