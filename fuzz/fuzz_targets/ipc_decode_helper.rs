//! Feeds arbitrary bytes to the helper -> manager decoder (what the manager
//! runs on every packet a helper sends).
//!
//! Invariants checked, beyond "never panics":
//! * whatever decodes re-encodes (so it could be sent on again),
//! * the re-encoding is no longer than the input (bincode's canonical form is
//!   the shortest one, so `encode` can never hit `TooLarge` on it),
//! * the re-encoding decodes to an equal value, and encoding is a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchpanel_ipc::{decode, encode, HelperMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = decode::<HelperMessage>(data) else {
        return;
    };
    let bytes = encode(&msg).expect("a decoded HelperMessage must re-encode");
    assert!(
        bytes.len() <= data.len(),
        "re-encoding grew from {} to {} bytes",
        data.len(),
        bytes.len()
    );
    let again = decode::<HelperMessage>(&bytes).expect("a re-encoded HelperMessage must decode");
    assert_eq!(again, msg, "round trip changed the message");
    assert_eq!(
        encode(&again).expect("encode"),
        bytes,
        "encoding is not deterministic"
    );
});
