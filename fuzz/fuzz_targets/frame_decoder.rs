//! Feeds arbitrary bytes to every decoder a receiver runs on peer input: the frame header and
//! checksum, each payload decoder, and the opening of a sealed frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mover::fuzz::frames(data);
    mover::fuzz::sealed_frame(data);
});
