//! Feeds arbitrary bytes to the decoders of REST request bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| control::fuzz::rest_body(data));
