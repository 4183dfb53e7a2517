//! bincode 2 with hard limits: an encoded message is at most
//! [`MAX_MESSAGE_SIZE`] bytes, and decoding one may allocate at most
//! [`MAX_DECODED_SIZE`] (bincode counts the memory the decoded values take,
//! which for a list of small enums is several times their wire size), so a
//! hostile length prefix can never make the decoder allocate more.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use serde::{de::DeserializeOwned, Serialize};

use crate::MAX_MESSAGE_SIZE;

/// Most memory decoding one message may allocate.
pub const MAX_DECODED_SIZE: usize = 16 * MAX_MESSAGE_SIZE;

type EncodeConfig = Configuration<LittleEndian, Varint, Limit<MAX_MESSAGE_SIZE>>;
type DecodeConfig = Configuration<LittleEndian, Varint, Limit<MAX_DECODED_SIZE>>;

const ENCODE: EncodeConfig = config::standard().with_limit::<MAX_MESSAGE_SIZE>();
const DECODE: DecodeConfig = config::standard().with_limit::<MAX_DECODED_SIZE>();

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit")]
    TooLarge(usize),
    #[error("cannot encode message: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("cannot decode message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("{trailing} trailing bytes after a {used}-byte message")]
    Trailing { used: usize, trailing: usize },
}

/// Encodes one message; fails rather than produce a packet the peer must refuse.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(msg, ENCODE)?;
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes exactly one message that fills the whole buffer.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let (msg, used) = bincode::serde::decode_from_slice(bytes, DECODE)?;
    if used != bytes.len() {
        return Err(CodecError::Trailing {
            used,
            trailing: bytes.len() - used,
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn samples() -> Vec<ManagerMessage> {
        vec![
            ManagerMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                role: Role::Manager,
            }),
            ManagerMessage::Request {
                id: u64::MAX,
                body: Request::Ping { nonce: 7 },
            },
            ManagerMessage::Request {
                id: 1,
                body: Request::SetLogLevel(LogLevel::Debug),
            },
        ]
    }

    #[test]
    fn manager_messages_round_trip() {
        for msg in samples() {
            let bytes = encode(&msg).expect("encode");
            assert_eq!(decode::<ManagerMessage>(&bytes).expect("decode"), msg);
        }
    }

    #[test]
    fn helper_messages_round_trip() {
        let msgs = vec![
            HelperMessage::Hello(Hello {
                protocol_version: 1,
                role: Role::NdProxy,
            }),
            HelperMessage::Response {
                id: 3,
                result: Ok(Reply::Pong { nonce: 9 }),
            },
            HelperMessage::Response {
                id: 4,
                result: Err(HelperError::Os {
                    operation: "RTM_NEWLINK veth0".into(),
                    errno: Some(17),
                    message: "File exists".into(),
                }),
            },
            HelperMessage::Event(Event::NeighborDetected {
                ifindex: 12,
                addr: [0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            }),
        ];
        for msg in msgs {
            let bytes = encode(&msg).expect("encode");
            assert_eq!(decode::<HelperMessage>(&bytes).expect("decode"), msg);
        }
    }

    #[test]
    fn every_truncation_of_a_message_is_rejected() {
        let msg = HelperMessage::Response {
            id: 300,
            result: Err(HelperError::InvalidArgument(
                "bad name eth0 -j ACCEPT".into(),
            )),
        };
        let bytes = encode(&msg).expect("encode");
        for len in 0..bytes.len() {
            assert!(
                decode::<HelperMessage>(&bytes[..len]).is_err(),
                "a {len}-byte prefix decoded"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&samples()[1]).expect("encode");
        bytes.push(0);
        assert!(matches!(
            decode::<ManagerMessage>(&bytes),
            Err(CodecError::Trailing { trailing: 1, .. })
        ));
    }

    #[test]
    fn unknown_variant_is_rejected() {
        // Variant indexes are varints; 200 is no ManagerMessage variant.
        assert!(decode::<ManagerMessage>(&[200, 0]).is_err());
    }

    #[test]
    fn hostile_length_prefix_is_rejected_without_allocating() {
        // Response { id: 0, result: Err(InvalidArgument(<string of 2^64-1 bytes>)) }
        let mut bytes = vec![1, 0, 1, 1];
        bytes.push(255); // varint marker: u64 follows
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<HelperMessage>(&bytes).is_err());
    }

    #[test]
    fn oversize_buffer_is_rejected_before_decoding() {
        let bytes = vec![0u8; MAX_MESSAGE_SIZE + 1];
        assert!(matches!(
            decode::<ManagerMessage>(&bytes),
            Err(CodecError::TooLarge(_))
        ));
    }

    #[test]
    fn oversize_message_is_refused_at_encode() {
        let msg = HelperMessage::Response {
            id: 0,
            result: Err(HelperError::InvalidArgument("x".repeat(MAX_MESSAGE_SIZE))),
        };
        assert!(encode(&msg).is_err());
    }

    /// An error response whose encoding is exactly `len` bytes.
    fn response_of_encoded_len(len: usize) -> HelperMessage {
        let with_text = |n: usize| HelperMessage::Response {
            id: 0,
            result: Err(HelperError::InvalidArgument("x".repeat(n))),
        };
        // The length prefix takes the same 3 bytes for 1,000 and ~64 KiB.
        let overhead = encode(&with_text(1000)).expect("encode").len() - 1000;
        with_text(len - overhead)
    }

    #[test]
    fn a_message_of_exactly_max_message_size_encodes() {
        let msg = response_of_encoded_len(MAX_MESSAGE_SIZE);

        let bytes = encode(&msg).expect("at the limit");

        assert_eq!(bytes.len(), MAX_MESSAGE_SIZE);
    }

    #[test]
    fn a_message_of_exactly_max_message_size_decodes() {
        let msg = response_of_encoded_len(MAX_MESSAGE_SIZE);
        let bytes = encode(&msg).expect("at the limit");

        assert_eq!(decode::<HelperMessage>(&bytes).expect("at the limit"), msg);
    }

    #[test]
    fn trailing_bytes_are_counted_in_the_error() {
        let mut bytes = encode(&samples()[1]).expect("encode");
        let used = bytes.len();
        bytes.extend_from_slice(&[0, 0]);

        let err = decode::<ManagerMessage>(&bytes);

        assert!(
            matches!(err, Err(CodecError::Trailing { used: u, trailing: 2 }) if u == used),
            "{err:?}"
        );
    }
}
