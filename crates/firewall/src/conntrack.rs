//! Conntrack marks over ctnetlink: the one change patchpanel makes to a
//! connection the kernel already tracks (`NotifyARCVPNSocketConnectionEvent`
//! gives the flow of Android's VPN app the ARC_VPN source in its conntrack
//! mark, as the original does, so its packets are counted as VPN).
//!
//! One `IPCTNL_MSG_CT_NEW` without `NLM_F_CREATE` updates the mark of the
//! entry whose original tuple is the flow: the kernel computes
//! `(mark & ~mask) ^ value`, so only the masked bits change. A flow the
//! kernel does not (yet) track is reported, not created.

use std::io;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::nft::wire::{MsgBuilder, NfSocket, NLM_F_ACK, NLM_F_REQUEST};

/// `NFNL_SUBSYS_CTNETLINK`.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// `IPCTNL_MSG_CT_NEW`.
const IPCTNL_MSG_CT_NEW: u16 = 0;
// `enum ctattr_type`, `ctattr_tuple`, `ctattr_ip`, `ctattr_l4proto`.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_MARK: u16 = 8;
const CTA_MARK_MASK: u16 = 21;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// A connection as its first packet went: source and destination of the
/// original direction (before NAT), TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Flow {
    pub tcp: bool,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} -> {}",
            if self.tcp { "tcp" } else { "udp" },
            self.src,
            self.dst
        )
    }
}

/// Set the bits `mask` of `flow`'s conntrack mark to `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MarkUpdate {
    pub flow: Flow,
    pub value: u32,
    pub mask: u32,
}

impl MarkUpdate {
    /// Why the update cannot be sent, if it cannot: the two ends must be
    /// of one family, and `value` must stay within `mask`.
    pub fn check(&self) -> Result<(), String> {
        if self.flow.src.is_ipv4() != self.flow.dst.is_ipv4() {
            return Err(format!(
                "{}: source and destination of two families",
                self.flow
            ));
        }
        if self.value & !self.mask != 0 {
            return Err(format!(
                "mark {:#x} has bits outside its mask {:#x}",
                self.value, self.mask
            ));
        }
        Ok(())
    }
}

/// The ctnetlink message of `update`, sequence `seq`.
pub fn message(update: &MarkUpdate, seq: u32) -> Vec<u8> {
    let flow = &update.flow;
    let family = if flow.src.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    let mut m = MsgBuilder::new(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family,
        0,
    );
    let tuple = m.nest(CTA_TUPLE_ORIG);
    let ip = m.nest(CTA_TUPLE_IP);
    for (addr, v4, v6) in [
        (flow.src.ip(), CTA_IP_V4_SRC, CTA_IP_V6_SRC),
        (flow.dst.ip(), CTA_IP_V4_DST, CTA_IP_V6_DST),
    ] {
        match addr {
            IpAddr::V4(a) => m.attr(v4, &a.octets()),
            IpAddr::V6(a) => m.attr(v6, &a.octets()),
        };
    }
    m.end(ip);
    let proto = m.nest(CTA_TUPLE_PROTO);
    m.attr(CTA_PROTO_NUM, &[if flow.tcp { 6 } else { 17 }]);
    m.attr(CTA_PROTO_SRC_PORT, &flow.src.port().to_be_bytes());
    m.attr(CTA_PROTO_DST_PORT, &flow.dst.port().to_be_bytes());
    m.end(proto);
    m.end(tuple);
    m.be32(CTA_MARK, update.value);
    m.be32(CTA_MARK_MASK, update.mask);
    m.finish()
}

/// Applies `update`: `Ok(true)` when the flow's mark changed, `Ok(false)`
/// when the kernel tracks no such flow.
pub fn update_mark(update: &MarkUpdate) -> io::Result<bool> {
    update.check().map_err(io::Error::other)?;
    let mut sock = NfSocket::open()?;
    let seq = sock.next_seq(1);
    match sock.request(&message(update, seq), seq)? {
        Ok(()) => Ok(true),
        Err(libc::ENOENT) => Ok(false),
        Err(errno) => Err(io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update() -> MarkUpdate {
        MarkUpdate {
            flow: Flow {
                tcp: true,
                src: "100.115.92.6:40000".parse().unwrap(),
                dst: "203.0.113.1:443".parse().unwrap(),
            },
            value: 0x2400,
            mask: 0x3f00,
        }
    }

    #[test]
    fn the_message_carries_the_tuple_and_the_masked_mark() {
        let bytes = message(&update(), 7);
        // nlmsghdr: length, type CTNETLINK/CT_NEW, REQUEST|ACK, seq 7.
        assert_eq!(
            u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize,
            bytes.len()
        );
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 1 << 8);
        assert_eq!(u16::from_ne_bytes([bytes[6], bytes[7]]), 0x5);
        assert_eq!(bytes[16], libc::AF_INET as u8);
        let hex: String = bytes[20..].iter().map(|b| format!("{b:02x}")).collect();
        // CTA_TUPLE_ORIG { IP { SRC 100.115.92.6, DST 203.0.113.1 },
        // PROTO { 6, 40000, 443 } }, CTA_MARK 0x2400, CTA_MARK_MASK 0x3f00.
        assert!(hex.contains("0800010064735c06"), "{hex}");
        assert!(hex.contains("08000200cb007101"), "{hex}");
        assert!(hex.contains("0500010006000000"), "{hex}");
        assert!(hex.contains("060002009c400000"), "{hex}");
        assert!(hex.contains("0600030001bb0000"), "{hex}");
        assert!(hex.ends_with("08000800000024000800150000003f00"), "{hex}");
    }

    #[test]
    fn mixed_families_and_bits_outside_the_mask_are_refused() {
        let mut u = update();
        u.flow.dst = "[2001:db8::1]:443".parse().unwrap();
        assert!(u.check().unwrap_err().contains("families"));
        let mut u = update();
        u.value = 0x12400;
        assert!(u.check().unwrap_err().contains("outside"));
        assert!(update().check().is_ok());
    }
}
