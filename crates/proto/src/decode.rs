//! Decoding of requests that arrive from D-Bus callers.
//!
//! The bytes come from another process and may be anything. A decode failure
//! has to reach the caller as an `InvalidArgument` D-Bus error whose text says
//! which message could not be read and why; prost's own error names neither
//! the message type nor the input size, so this module adds both.

/// A request's bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The bytes are not a valid encoding of `message`.
    #[error("malformed {message} ({len} bytes): {source}")]
    Decode {
        /// Short name of the expected message type, e.g.
        /// `ConnectNamespaceRequest`.
        message: &'static str,
        /// Length of the rejected input.
        len: usize,
        /// What prost found wrong.
        source: prost::DecodeError,
    },
}

/// Decodes `bytes` as a `T`, naming `T` in the error if they are malformed.
///
/// Unknown fields are skipped and enum fields keep unknown numbers, as proto3
/// requires; callers validate values after decoding.
pub fn decode_request<T: prost::Message + Default>(bytes: &[u8]) -> Result<T, ProtoError> {
    T::decode(bytes).map_err(|source| ProtoError::Decode {
        message: short_type_name::<T>(),
        len: bytes.len(),
        source,
    })
}

/// `T`'s name without its module path.
fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConnectNamespaceRequest, GetDevicesResponse};

    fn decode_error<T: prost::Message + Default>(bytes: &[u8]) -> String {
        match decode_request::<T>(bytes) {
            Ok(message) => panic!("decoded malformed input as {message:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn decode_request_accepts_empty_input_as_all_defaults() {
        let request: ConnectNamespaceRequest = decode_request(&[]).expect("empty input is valid");

        assert_eq!(request, ConnectNamespaceRequest::default());
    }

    #[test]
    fn decode_request_rejects_truncated_varint() {
        // Field 1 (pid, varint) whose value has its continuation bit set and
        // then ends.
        let error = decode_error::<ConnectNamespaceRequest>(&[0x08, 0xd2]);

        assert!(error.contains("ConnectNamespaceRequest"), "{error}");
        assert!(error.contains("2 bytes"), "{error}");
    }

    #[test]
    fn decode_request_rejects_wrong_wire_type_for_a_known_field() {
        // Field 2 (outbound_physical_device, a string) sent as a varint.
        let error = decode_error::<ConnectNamespaceRequest>(&[0x10, 0x01]);

        assert!(error.contains("ConnectNamespaceRequest"), "{error}");
        assert!(error.contains("wire type"), "{error}");
    }

    #[test]
    fn decode_request_rejects_length_past_the_end() {
        // Field 2 claims 5 bytes, 2 follow.
        let error = decode_error::<ConnectNamespaceRequest>(&[0x12, 0x05, b'e', b't']);

        assert!(error.contains("ConnectNamespaceRequest"), "{error}");
    }

    #[test]
    fn decode_request_rejects_length_past_the_end_in_a_nested_message() {
        // devices[0] claims 3 bytes; inside, ifname claims 9 bytes.
        let error = decode_error::<GetDevicesResponse>(&[0x0a, 0x03, 0x0a, 0x09, b'a']);

        assert!(error.contains("GetDevicesResponse"), "{error}");
    }

    #[test]
    fn decode_request_rejects_invalid_utf8_in_a_string() {
        let error = decode_error::<ConnectNamespaceRequest>(&[0x12, 0x02, 0xff, 0xfe]);

        assert!(error.contains("ConnectNamespaceRequest"), "{error}");
    }

    #[test]
    fn decode_request_rejects_field_number_zero() {
        let error = decode_error::<ConnectNamespaceRequest>(&[0x00, 0x01]);

        assert!(error.contains("ConnectNamespaceRequest"), "{error}");
    }

    #[test]
    fn decode_request_skips_unknown_fields() {
        // Field 15 (unknown, varint 7), then pid = 5.
        let request: ConnectNamespaceRequest =
            decode_request(&[0x78, 0x07, 0x08, 0x05]).expect("unknown fields are skipped");

        assert_eq!(request.pid, 5);
    }

    #[test]
    fn decode_request_keeps_unknown_enum_numbers() {
        // traffic_source = 99, which no Source variant has.
        let request: ConnectNamespaceRequest =
            decode_request(&[0x28, 0x63]).expect("open enums accept any number");

        assert_eq!(request.traffic_source, 99);
    }
}
