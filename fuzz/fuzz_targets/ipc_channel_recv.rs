//! Sends the raw fuzz input as one packet over a fresh `SOCK_SEQPACKET` pair
//! and lets the manager's receive path (`recvmsg` + cmsg walk + decode) take
//! it, exactly as it would take a packet from a compromised helper.
//!
//! Beyond "never panics" (ASan also watches the unsafe cmsg code), the result
//! must agree with decoding the same bytes directly:
//! * a packet that decodes arrives as the same message, with no descriptors;
//! * a packet over `MAX_MESSAGE_SIZE` is `Oversize`, an empty one is
//!   `EmptyPacket` (not a hang-up), and any other that does not decode is a
//!   `Codec` error;
//! * the queued packet is never reported as `WouldBlock`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchpanel_ipc::{decode, Channel, ChannelError, HelperMessage, MAX_MESSAGE_SIZE};

fuzz_target!(|data: &[u8]| {
    let (tx, rx) = Channel::pair().expect("socketpair");
    // Neither end may ever block the fuzzer: a send the kernel refuses (e.g.
    // EMSGSIZE for an input beyond the socket buffer) is simply skipped.
    tx.set_nonblocking(true).expect("nonblocking tx");
    rx.set_nonblocking(true).expect("nonblocking rx");
    if tx.send_raw(data, &[]).is_err() {
        return;
    }
    let direct = decode::<HelperMessage>(data).ok();
    match rx.recv::<HelperMessage>() {
        Ok(got) => {
            assert!(got.fds.is_empty(), "descriptors appeared from nowhere");
            assert_eq!(
                Some(&got.msg),
                direct.as_ref(),
                "recv accepted what decode does not, or changed it"
            );
        }
        Err(err) => {
            assert!(direct.is_none(), "recv refused a decodable packet: {err}");
            assert!(
                !matches!(err, ChannelError::WouldBlock),
                "queued packet reported as WouldBlock"
            );
            if data.len() > MAX_MESSAGE_SIZE {
                assert!(
                    matches!(err, ChannelError::Oversize),
                    "{} bytes gave {err}",
                    data.len()
                );
            } else if data.is_empty() {
                assert!(
                    matches!(err, ChannelError::EmptyPacket),
                    "an empty packet gave {err}"
                );
            } else {
                assert!(
                    matches!(err, ChannelError::Codec(_)),
                    "{} bytes gave {err}",
                    data.len()
                );
            }
        }
    }
});
