//! The two ways the protocol carries an IPv4 address.
//!
//! Newer fields use `addr4`: a `bytes` field holding the four octets in
//! network order. Older fields use `u32 net-order`: a `uint32` whose
//! in-memory bytes are the octets in network order, i.e. the C `in_addr.s_addr`
//! value copied into a protobuf integer. Every ChromeOS machine is little
//! endian, so on the wire that integer is the little-endian reading of the
//! octets, whatever the endianness of the host running this code. Keeping the
//! conversion here, in one tested place, stops each caller from guessing the
//! byte order.

use std::net::Ipv4Addr;

/// Encodes `addr` as a `u32 net-order` field value.
///
/// The result is `u32::from_le_bytes(addr.octets())`, so that its
/// little-endian bytes are the address octets in order.
pub fn ipv4_to_net_u32(addr: Ipv4Addr) -> u32 {
    u32::from_le_bytes(addr.octets())
}

/// Decodes a `u32 net-order` field value; the inverse of [`ipv4_to_net_u32`].
pub fn ipv4_from_net_u32(value: u32) -> Ipv4Addr {
    Ipv4Addr::from(value.to_le_bytes())
}

/// Encodes `addr` as an `addr4` field value: its four octets in order.
pub fn ipv4_to_addr4(addr: Ipv4Addr) -> Vec<u8> {
    addr.octets().to_vec()
}

/// Decodes an `addr4` field value, or `None` unless it is exactly 4 bytes.
pub fn ipv4_from_addr4(bytes: &[u8]) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = bytes.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_u32_has_the_octets_as_its_little_endian_bytes() {
        let value = ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 5));

        assert_eq!(value.to_le_bytes(), [100, 115, 92, 5]);
        assert_eq!(value, 0x055c_7364);
    }

    #[test]
    fn net_u32_round_trips() {
        for addr in [
            Ipv4Addr::new(100, 115, 92, 5),
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(255, 255, 255, 255),
            Ipv4Addr::new(10, 0, 0, 1),
        ] {
            assert_eq!(ipv4_from_net_u32(ipv4_to_net_u32(addr)), addr);
        }
    }

    #[test]
    fn net_u32_decodes_the_little_endian_reading_of_the_octets() {
        assert_eq!(
            ipv4_from_net_u32(0x055c_7364),
            Ipv4Addr::new(100, 115, 92, 5)
        );
    }

    #[test]
    fn addr4_is_the_octets_in_order() {
        assert_eq!(
            ipv4_to_addr4(Ipv4Addr::new(100, 115, 92, 5)),
            vec![100, 115, 92, 5]
        );
        assert_eq!(
            ipv4_from_addr4(&[100, 115, 92, 5]),
            Some(Ipv4Addr::new(100, 115, 92, 5))
        );
    }

    #[test]
    fn addr4_rejects_anything_but_four_bytes() {
        assert_eq!(ipv4_from_addr4(&[]), None);
        assert_eq!(ipv4_from_addr4(&[100, 115, 92]), None);
        assert_eq!(ipv4_from_addr4(&[100, 115, 92, 5, 0]), None);
    }
}
