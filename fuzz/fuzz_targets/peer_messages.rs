//! Feeds arbitrary bytes to the decoders of the messages between daemons.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| control::fuzz::peer_message(data));
