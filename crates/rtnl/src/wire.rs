//! Netlink framing and attribute helpers shared by the link, address, route
//! and rule modules.
//!
//! Message bodies (`ifinfomsg`, `rtmsg`, ...) and their attributes are built
//! and parsed with `neli`'s typed structs. The outer framing of a received
//! datagram (splitting it into messages, reading the errno of an
//! `NLMSG_ERROR`/`NLMSG_DONE`) is done here by hand instead: it is a few
//! lines, it must never panic on a short or lying length field, and it lets
//! an error ack be read even when the request it echoes does not parse.

use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use neli::consts::nl::{NlType, NlmF};
use neli::consts::rtnl::RtaType;
use neli::nl::{NlPayload, NlmsghdrBuilder};
use neli::rtnl::{Rtattr, RtattrBuilder};
use neli::types::{Buffer, RtBuffer};
use neli::{FromBytesWithInput, Size, ToBytes};

/// Size of `struct nlmsghdr`.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// Attribute type bits without `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `NLMSGERR_ATTR_MSG` in an extended ack.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// One message of a received datagram, borrowed from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawMsg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_ne_bytes(bytes))
}

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    let bytes: [u8; 2] = b.get(at..at.checked_add(2)?)?.try_into().ok()?;
    Some(u16::from_ne_bytes(bytes))
}

/// Splits a received datagram into its netlink messages.
pub(crate) fn split_messages(buf: &[u8]) -> Result<Vec<RawMsg<'_>>, String> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < buf.len() {
        let rest = &buf[off..];
        let (Some(len), Some(ty), Some(flags), Some(seq)) = (
            ne_u32(rest, 0),
            ne_u16(rest, 4),
            ne_u16(rest, 6),
            ne_u32(rest, 8),
        ) else {
            return Err(format!(
                "{} trailing bytes at offset {off} are shorter than a netlink header",
                rest.len()
            ));
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(format!(
                "message at offset {off} claims length {len} with {} bytes left",
                rest.len()
            ));
        }
        out.push(RawMsg {
            ty,
            flags,
            seq,
            payload: &rest[NLMSG_HDRLEN..len],
        });
        off += align4(len).min(rest.len());
    }
    Ok(out)
}

/// Reads the status of an `NLMSG_ERROR` (ack) or `NLMSG_DONE` message:
/// the positive errno (0 for success) and the extended-ack message text.
pub(crate) fn parse_status(
    ty: u16,
    flags: u16,
    payload: &[u8],
) -> Result<(i32, Option<String>), String> {
    let Some(code) = ne_u32(payload, 0).map(|c| c as i32) else {
        if ty == libc::NLMSG_DONE as u16 {
            // Very old kernels send an empty DONE.
            return Ok((0, None));
        }
        return Err(format!(
            "status message of {} bytes has no error code",
            payload.len()
        ));
    };
    let errno = code
        .checked_neg()
        .filter(|e| *e >= 0)
        .ok_or_else(|| format!("error code {code} is not a negative errno"))?;
    if flags & libc::NLM_F_ACK_TLVS as u16 == 0 {
        return Ok((errno, None));
    }
    // The TLVs follow the echoed request header (NLMSG_ERROR only; whole
    // request unless NLM_F_CAPPED) or directly the code (NLMSG_DONE).
    let tlv_start = if ty == libc::NLMSG_ERROR as u16 {
        let echoed = if flags & libc::NLM_F_CAPPED as u16 != 0 {
            NLMSG_HDRLEN
        } else {
            ne_u32(payload, 4).map_or(NLMSG_HDRLEN, |l| align4(l as usize))
        };
        4 + echoed
    } else {
        4
    };
    let message = payload
        .get(tlv_start..)
        .and_then(|tlvs| parse_attrs(tlvs).ok())
        .and_then(|attrs| {
            attr_iter(&attrs)
                .find(|(t, _)| *t == NLMSGERR_ATTR_MSG)
                .map(|(_, v)| str_of(v))
        });
    Ok((errno, message))
}

/// Builds one attribute with `neli`.
pub(crate) fn attr<T, P>(ty: T, payload: P) -> Result<Rtattr<T, Buffer>, String>
where
    T: RtaType,
    P: Size + ToBytes,
{
    RtattrBuilder::default()
        .rta_type(ty)
        .rta_payload(payload)
        .build()
        .map_err(|e| format!("attribute {ty:?}: {e}"))
}

/// Serialises a complete request (header + body) with `neli`.
pub(crate) fn encode<T, P>(ty: T, flags: NlmF, seq: u32, body: P) -> Result<Vec<u8>, String>
where
    T: NlType,
    P: Size + ToBytes + std::fmt::Debug,
{
    let msg = NlmsghdrBuilder::default()
        .nl_type(ty)
        .nl_flags(flags)
        .nl_seq(seq)
        .nl_pid(0)
        .nl_payload(NlPayload::Payload(body))
        .build()
        .map_err(|e| e.to_string())?;
    let mut cursor = Cursor::new(Vec::with_capacity(msg.padded_size()));
    msg.to_bytes(&mut cursor).map_err(|e| e.to_string())?;
    Ok(cursor.into_inner())
}

/// Parses a message body (`Ifinfomsg`, `Rtmsg`, ...) with `neli`.
pub(crate) fn decode<P>(payload: &[u8]) -> Result<P, String>
where
    P: FromBytesWithInput<Input = usize>,
{
    P::from_bytes_with_input(&mut Cursor::new(payload), payload.len()).map_err(|e| e.to_string())
}

/// Parses a run of attributes (for nested attributes such as IFLA_LINKINFO).
pub(crate) fn parse_attrs(bytes: &[u8]) -> Result<RtBuffer<u16, Buffer>, String> {
    decode(bytes)
}

/// Iterates `(type without flag bits, payload)` over parsed attributes.
pub(crate) fn attr_iter<T>(attrs: &RtBuffer<T, Buffer>) -> impl Iterator<Item = (u16, &[u8])>
where
    T: RtaType,
{
    attrs.as_ref().iter().map(|a| {
        (
            (*a.rta_type()).into() & NLA_TYPE_MASK,
            a.rta_payload().as_ref(),
        )
    })
}

/// A native-endian u32 attribute payload.
pub(crate) fn u32_of(what: &str, b: &[u8]) -> Result<u32, String> {
    let bytes: [u8; 4] = b
        .try_into()
        .map_err(|_| format!("{what}: expected 4 bytes, got {}", b.len()))?;
    Ok(u32::from_ne_bytes(bytes))
}

/// A string attribute payload, cut at the first NUL.
pub(crate) fn str_of(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// An address attribute payload of the given family.
pub(crate) fn ip_of(what: &str, family: u8, b: &[u8]) -> Result<IpAddr, String> {
    match (i32::from(family), b.len()) {
        (libc::AF_INET, 4) => {
            let o: [u8; 4] = b
                .try_into()
                .map_err(|_| format!("{what}: bad IPv4 address"))?;
            Ok(IpAddr::V4(Ipv4Addr::from(o)))
        }
        (libc::AF_INET6, 16) => {
            let o: [u8; 16] = b
                .try_into()
                .map_err(|_| format!("{what}: bad IPv6 address"))?;
            Ok(IpAddr::V6(Ipv6Addr::from(o)))
        }
        (f, n) => Err(format!("{what}: {n} address bytes for family {f}")),
    }
}

/// The wire bytes of an address (network order).
pub(crate) fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neli::consts::rtnl::{Ifla, RtAddrFamily, Rtm};
    use neli::rtnl::{Ifinfomsg, IfinfomsgBuilder};

    fn hdr(len: u32, ty: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v
    }

    #[test]
    fn split_messages_splits_two_padded_messages() {
        let mut buf = hdr(17, 16, 2, 7);
        buf.extend_from_slice(&[0xaa, 0, 0, 0]); // 1 byte payload + 3 pad
        buf.extend_from_slice(&hdr(20, 3, 2, 7));
        buf.extend_from_slice(&0i32.to_ne_bytes());
        let msgs = split_messages(&buf).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].payload, &[0xaa]);
        assert_eq!((msgs[1].ty, msgs[1].seq), (3, 7));
    }

    #[test]
    fn split_messages_rejects_a_length_past_the_end() {
        let buf = hdr(64, 16, 0, 1);
        assert!(split_messages(&buf).is_err());
    }

    #[test]
    fn split_messages_rejects_a_length_shorter_than_the_header() {
        let buf = hdr(8, 16, 0, 1);
        assert!(split_messages(&buf).is_err());
    }

    #[test]
    fn split_messages_rejects_trailing_garbage() {
        let mut buf = hdr(16, 3, 0, 1);
        buf.extend_from_slice(&[1, 2, 3]);
        assert!(split_messages(&buf).is_err());
    }

    #[test]
    fn status_of_an_ack_is_zero() {
        let mut payload = 0i32.to_ne_bytes().to_vec();
        payload.extend_from_slice(&hdr(16, 16, 5, 1));
        assert_eq!(parse_status(2, 0x100, &payload).unwrap(), (0, None));
    }

    #[test]
    fn status_of_an_error_with_ext_ack_has_errno_and_message() {
        // NLMSG_ERROR, flags NLM_F_CAPPED|NLM_F_ACK_TLVS: code, echoed header,
        // then NLMSGERR_ATTR_MSG "bad\0".
        let mut payload = (-libc::EEXIST).to_ne_bytes().to_vec();
        payload.extend_from_slice(&hdr(40, 16, 5, 1));
        payload.extend_from_slice(&8u16.to_ne_bytes());
        payload.extend_from_slice(&1u16.to_ne_bytes());
        payload.extend_from_slice(b"bad\0");
        let flags = (libc::NLM_F_CAPPED | libc::NLM_F_ACK_TLVS) as u16;
        assert_eq!(
            parse_status(2, flags, &payload).unwrap(),
            (libc::EEXIST, Some("bad".to_string()))
        );
    }

    #[test]
    fn status_of_an_uncapped_error_skips_the_echoed_request() {
        let mut payload = (-libc::ENODEV).to_ne_bytes().to_vec();
        let mut echoed = hdr(24, 16, 5, 1);
        echoed.extend_from_slice(&[9; 8]);
        payload.extend_from_slice(&echoed);
        payload.extend_from_slice(&9u16.to_ne_bytes());
        payload.extend_from_slice(&1u16.to_ne_bytes());
        payload.extend_from_slice(b"nope\0\0\0\0");
        let flags = libc::NLM_F_ACK_TLVS as u16;
        assert_eq!(
            parse_status(2, flags, &payload).unwrap(),
            (libc::ENODEV, Some("nope".to_string()))
        );
    }

    #[test]
    fn status_with_a_positive_code_is_malformed() {
        assert!(parse_status(2, 0, &5i32.to_ne_bytes()).is_err());
    }

    #[test]
    fn status_of_a_truncated_error_is_malformed() {
        assert!(parse_status(2, 0, &[1, 2]).is_err());
    }

    #[test]
    fn encode_produces_header_and_body() {
        let body = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .build()
            .unwrap();
        let bytes = encode(Rtm::Getlink, NlmF::REQUEST | NlmF::ACK, 9, body).unwrap();
        let msgs = split_messages(&bytes).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].ty, libc::RTM_GETLINK);
        assert_eq!(
            msgs[0].flags,
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16
        );
        assert_eq!(msgs[0].seq, 9);
        assert_eq!(msgs[0].payload, &[0u8; 16]);
    }

    #[test]
    fn decode_rejects_an_attribute_with_a_short_length() {
        let mut payload = vec![0u8; 16];
        payload.extend_from_slice(&2u16.to_ne_bytes()); // rta_len 2 < 4
        payload.extend_from_slice(&(libc::IFLA_IFNAME).to_ne_bytes());
        assert!(decode::<Ifinfomsg>(&payload).is_err());
    }

    #[test]
    fn decode_rejects_an_attribute_past_the_end() {
        let mut payload = vec![0u8; 16];
        payload.extend_from_slice(&40u16.to_ne_bytes());
        payload.extend_from_slice(&(libc::IFLA_IFNAME).to_ne_bytes());
        payload.extend_from_slice(b"eth0");
        assert!(decode::<Ifinfomsg>(&payload).is_err());
    }

    #[test]
    fn decode_rejects_a_body_shorter_than_its_header() {
        assert!(decode::<Ifinfomsg>(&[0u8; 7]).is_err());
    }

    #[test]
    fn attr_iter_masks_the_nested_flag() {
        let a = attr(Ifla::Linkinfo, 0u32).unwrap();
        let mut bytes = Cursor::new(Vec::new());
        a.to_bytes(&mut bytes).unwrap();
        let mut bytes = bytes.into_inner();
        bytes[3] |= 0x80; // NLA_F_NESTED in the high byte of the type
        let parsed = parse_attrs(&bytes).unwrap();
        let (t, v) = attr_iter(&parsed).next().unwrap();
        assert_eq!(t, libc::IFLA_LINKINFO);
        assert_eq!(v, &[0, 0, 0, 0]);
    }

    #[test]
    fn ip_of_checks_length_against_family() {
        assert_eq!(
            ip_of("a", libc::AF_INET as u8, &[10, 0, 0, 1]).unwrap(),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert!(ip_of("a", libc::AF_INET6 as u8, &[10, 0, 0, 1]).is_err());
    }

    #[test]
    fn str_of_stops_at_nul() {
        assert_eq!(str_of(b"eth0\0\0"), "eth0");
        assert_eq!(str_of(b"eth0"), "eth0");
    }
}
