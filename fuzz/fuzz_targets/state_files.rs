//! Feeds arbitrary bytes to the decoders of the files kept on disk: the recovery point, its
//! entry list, the undo journal and the sender's manifest. A damaged file must give an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mover::fuzz::state_files(data));
