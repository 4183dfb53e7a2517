//! Feeds arbitrary bytes to the manager -> helper decoder (what a helper
//! runs on every packet it receives).
//!
//! Invariants checked, beyond "never panics":
//! * whatever decodes re-encodes (so it could be sent on again),
//! * the re-encoding is no longer than the input (bincode's canonical form is
//!   the shortest one, so `encode` can never hit `TooLarge` on it),
//! * the re-encoding decodes to an equal value, and encoding is a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchpanel_ipc::{decode, encode, ManagerMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = decode::<ManagerMessage>(data) else {
        return;
    };
    let bytes = encode(&msg).expect("a decoded ManagerMessage must re-encode");
    assert!(
        bytes.len() <= data.len(),
        "re-encoding grew from {} to {} bytes",
        data.len(),
        bytes.len()
    );
    let again = decode::<ManagerMessage>(&bytes).expect("a re-encoded ManagerMessage must decode");
    assert_eq!(again, msg, "round trip changed the message");
    assert_eq!(
        encode(&again).expect("encode"),
        bytes,
        "encoding is not deterministic"
    );
});
