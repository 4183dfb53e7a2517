//! Links: veth pairs and bridges patchpanel creates, and the link attributes
//! it changes (state, MAC, multicast flags, alias, master).
//!
//! Links patchpanel owns are recognised by their `IFLA_IFALIAS`, so alias
//! setting is part of creation: a link whose alias could not be set is
//! deleted again rather than left unowned.

use std::os::fd::{AsRawFd, BorrowedFd};

use neli::consts::nl::NlmF;
use neli::consts::rtnl::{Iff, Ifla, IflaInfo, RtAddrFamily, Rtm};
use neli::rtnl::{Ifinfomsg, IfinfomsgBuilder};
use neli::types::{Buffer, RtBuffer};

use crate::error::{Result, RtnlError};
use crate::socket::{benign, Rtnl};
use crate::wire::{self, attr, attr_iter, RawMsg};
use crate::{validate_alias, validate_ifname};

// UAPI values (linux/if_link.h, linux/veth.h); checked against neli's enums
// in the tests below.
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_GROUP: u16 = 27;
const IFLA_INFO_KIND: u16 = 1;
/// `VETH_INFO_PEER`: neli has no enum for veth's IFLA_INFO_DATA, so the raw
/// u16 type is used; its payload is a whole `ifinfomsg` plus attributes,
/// which neli's `Ifinfomsg` serialises exactly.
const VETH_INFO_PEER: u16 = 1;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `IFLA_IFALIAS`, if set and non-empty.
    pub alias: Option<String>,
    /// Hardware address, when it is an Ethernet-style 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`).
    pub running: bool,
    /// `IFF_MULTICAST`.
    pub multicast: bool,
    /// `IFF_ALLMULTI`.
    pub allmulti: bool,
    /// `IFLA_INFO_KIND` ("veth", "bridge", "tun", ...), absent for physical links.
    pub kind: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// Index of the master (bridge) this link is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_GROUP`, the link's device group (0 unless someone set one).
    pub group: u32,
}

/// Parses an `RTM_NEWLINK`/`RTM_DELLINK` body. `None` for messages of
/// another family: the bridge announces port changes as `AF_BRIDGE`
/// NEWLINK/DELLINK on the same multicast group, and an `AF_BRIDGE` DELLINK
/// (a port leaving its bridge) must not read as the link going away.
pub(crate) fn parse_link(payload: &[u8]) -> std::result::Result<Option<Link>, String> {
    let msg: Ifinfomsg = wire::decode(payload)?;
    if u8::from(*msg.ifi_family()) != libc::AF_UNSPEC as u8 {
        return Ok(None);
    }
    let index = u32::try_from(*msg.ifi_index())
        .map_err(|_| format!("negative ifindex {}", msg.ifi_index()))?;
    let flags = *msg.ifi_flags();
    let mut link = Link {
        index,
        name: String::new(),
        alias: None,
        mac: None,
        up: flags.contains(Iff::UP),
        running: flags.contains(Iff::LOWERUP),
        multicast: flags.contains(Iff::MULTICAST),
        allmulti: flags.contains(Iff::ALLMULTI),
        kind: None,
        mtu: 0,
        master: None,
        group: 0,
    };
    let mut has_name = false;
    for (ty, value) in attr_iter(msg.rtattrs()) {
        match ty {
            IFLA_IFNAME => {
                link.name = wire::str_of(value);
                has_name = true;
            }
            IFLA_IFALIAS => {
                let alias = wire::str_of(value);
                link.alias = (!alias.is_empty()).then_some(alias);
            }
            IFLA_ADDRESS => link.mac = <[u8; 6]>::try_from(value).ok(),
            IFLA_MTU => link.mtu = wire::u32_of("IFLA_MTU", value)?,
            IFLA_MASTER => {
                link.master = Some(wire::u32_of("IFLA_MASTER", value)?).filter(|&m| m != 0)
            }
            IFLA_GROUP => link.group = wire::u32_of("IFLA_GROUP", value)?,
            IFLA_LINKINFO => {
                let info = wire::parse_attrs(value).map_err(|e| format!("IFLA_LINKINFO: {e}"))?;
                let kind = attr_iter(&info)
                    .find(|(t, _)| *t == IFLA_INFO_KIND)
                    .map(|(_, k)| wire::str_of(k));
                if kind.is_some() {
                    link.kind = kind;
                }
            }
            _ => {}
        }
    }
    if !has_name {
        return Err(format!("link {index} has no IFLA_IFNAME"));
    }
    Ok(Some(link))
}

fn parse_link_msg(m: &RawMsg<'_>) -> std::result::Result<Option<Link>, String> {
    if m.ty == libc::RTM_NEWLINK {
        parse_link(m.payload)
    } else {
        Ok(None)
    }
}

fn ifinfomsg(
    index: i32,
    flags: Iff,
    change: Iff,
    attrs: RtBuffer<Ifla, Buffer>,
) -> std::result::Result<Ifinfomsg, String> {
    IfinfomsgBuilder::default()
        .ifi_family(RtAddrFamily::Unspecified)
        .ifi_index(index)
        .ifi_flags(flags)
        .ifi_change(change)
        .rtattrs(attrs)
        .build()
        .map_err(|e| e.to_string())
}

fn by_name(
    name: &str,
    more: Vec<neli::rtnl::Rtattr<Ifla, Buffer>>,
) -> std::result::Result<RtBuffer<Ifla, Buffer>, String> {
    let mut attrs = RtBuffer::new();
    attrs.push(attr(Ifla::Ifname, name)?);
    for a in more {
        attrs.push(a);
    }
    Ok(attrs)
}

/// `RTM_NEWLINK` body creating a veth pair; the peer is created directly in
/// the namespace `peer_ns_fd` when given (`IFLA_NET_NS_FD` inside
/// `VETH_INFO_PEER`), so it never appears in the host namespace.
pub(crate) fn veth_request(
    host: &str,
    peer: &str,
    peer_ns_fd: Option<i32>,
) -> std::result::Result<Ifinfomsg, String> {
    let mut peer_attrs = by_name(peer, Vec::new())?;
    if let Some(fd) = peer_ns_fd {
        let fd = u32::try_from(fd).map_err(|_| format!("bad netns fd {fd}"))?;
        peer_attrs.push(attr(Ifla::NetNsFd, fd)?);
    }
    let peer_msg = ifinfomsg(0, Iff::empty(), Iff::empty(), peer_attrs)?;
    let mut data = RtBuffer::<u16, Buffer>::new();
    data.push(attr(VETH_INFO_PEER, peer_msg)?);
    kind_request(host, "veth", Some(data))
}

/// `RTM_NEWLINK` body creating a link of `kind` with optional IFLA_INFO_DATA.
fn kind_request(
    name: &str,
    kind: &str,
    data: Option<RtBuffer<u16, Buffer>>,
) -> std::result::Result<Ifinfomsg, String> {
    let mut info = RtBuffer::<IflaInfo, Buffer>::new();
    info.push(attr(IflaInfo::Kind, kind)?);
    if let Some(data) = data {
        info.push(attr(IflaInfo::Data, data)?);
    }
    let attrs = by_name(name, vec![attr(Ifla::Linkinfo, info)?])?;
    ifinfomsg(0, Iff::empty(), Iff::empty(), attrs)
}

impl Rtnl {
    fn enc(op: &str) -> impl Fn(String) -> RtnlError + '_ {
        move |detail| RtnlError::Encode {
            op: op.to_string(),
            detail,
        }
    }

    /// The link named `name`, or `None` if there is none.
    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        validate_ifname(name)?;
        let op = format!("get link {name}");
        let body = ifinfomsg(
            0,
            Iff::empty(),
            Iff::empty(),
            by_name(name, Vec::new()).map_err(Self::enc(&op))?,
        )
        .map_err(Self::enc(&op))?;
        match self.get(&op, Rtm::Getlink, body, parse_link_msg) {
            Ok(mut links) => Ok(links.pop()),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The index of link `name`; `NoSuchLink` if it does not exist.
    pub fn ifindex(&self, name: &str) -> Result<u32> {
        self.link(name)?
            .map(|l| l.index)
            .ok_or_else(|| RtnlError::NoSuchLink {
                op: format!("look up link {name}"),
                name: name.to_string(),
            })
    }

    /// Every link in this socket's namespace.
    pub fn links(&self) -> Result<Vec<Link>> {
        self.dump(
            "dump links",
            Rtm::Getlink,
            || ifinfomsg(0, Iff::empty(), Iff::empty(), RtBuffer::new()),
            parse_link_msg,
        )
    }

    fn newlink_exclusive(&self, op: &str, body: Ifinfomsg) -> Result<()> {
        self.ack(op, Rtm::Newlink, NlmF::CREATE | NlmF::EXCL, body)
    }

    /// Creates the veth pair `host` <-> `peer`. With `peer_netns`, the peer is
    /// created directly inside that namespace. Both ends get `alias` as
    /// `IFLA_IFALIAS` (the kernel does not take an alias at creation, so it is
    /// set by follow-up requests; the pair is deleted again if that fails).
    pub fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_netns: Option<BorrowedFd<'_>>,
        alias: &str,
    ) -> Result<()> {
        validate_ifname(host)?;
        validate_ifname(peer)?;
        validate_alias(alias)?;
        let op = format!("create veth {host} (peer {peer})");
        let body = veth_request(host, peer, peer_netns.map(|fd| fd.as_raw_fd()))
            .map_err(Self::enc(&op))?;
        self.newlink_exclusive(&op, body)?;
        let labelled = self.set_alias(host, alias).and_then(|()| match peer_netns {
            Some(ns) => Rtnl::in_netns(ns)?.set_alias(peer, alias),
            None => self.set_alias(peer, alias),
        });
        if let Err(e) = labelled {
            // Deleting one end deletes both; the alias error is what matters.
            let _ = self.delete_link(host);
            return Err(e);
        }
        Ok(())
    }

    /// Creates the bridge `name` with `IFLA_IFALIAS` `alias` (deleted again if
    /// the alias cannot be set).
    pub fn create_bridge(&self, name: &str, alias: &str) -> Result<()> {
        validate_ifname(name)?;
        validate_alias(alias)?;
        let op = format!("create bridge {name}");
        let body = kind_request(name, "bridge", None).map_err(Self::enc(&op))?;
        self.newlink_exclusive(&op, body)?;
        if let Err(e) = self.set_alias(name, alias) {
            let _ = self.delete_link(name);
            return Err(e);
        }
        Ok(())
    }

    fn setlink(
        &self,
        op: &str,
        name: &str,
        flags: Iff,
        change: Iff,
        more: Vec<neli::rtnl::Rtattr<Ifla, Buffer>>,
    ) -> Result<()> {
        validate_ifname(name)?;
        let attrs = by_name(name, more).map_err(Self::enc(op))?;
        let body = ifinfomsg(0, flags, change, attrs).map_err(Self::enc(op))?;
        self.ack(op, Rtm::Setlink, NlmF::empty(), body)
    }

    /// Sets `IFLA_IFALIAS` (an empty alias clears it).
    pub fn set_alias(&self, name: &str, alias: &str) -> Result<()> {
        validate_alias(alias)?;
        let op = format!("set alias of {name} to {alias:?}");
        // Sent without a trailing NUL, as iproute2 does: the kernel stores
        // exactly the attribute's bytes.
        let a = attr(Ifla::Ifalias, alias.as_bytes()).map_err(Self::enc(&op))?;
        self.setlink(&op, name, Iff::empty(), Iff::empty(), vec![a])
    }

    fn set_flag(&self, name: &str, flag: Iff, on: bool, what: &str) -> Result<()> {
        let op = format!("set {name} {what} {}", if on { "on" } else { "off" });
        let flags = if on { flag } else { Iff::empty() };
        self.setlink(&op, name, flags, flag, Vec::new())
    }

    /// Sets the link administratively up or down (`IFF_UP`).
    pub fn set_up(&self, name: &str, up: bool) -> Result<()> {
        self.set_flag(name, Iff::UP, up, "up")
    }

    /// Sets or clears `IFF_MULTICAST`.
    pub fn set_multicast(&self, name: &str, on: bool) -> Result<()> {
        self.set_flag(name, Iff::MULTICAST, on, "multicast")
    }

    /// Sets or clears `IFF_ALLMULTI`.
    pub fn set_allmulti(&self, name: &str, on: bool) -> Result<()> {
        self.set_flag(name, Iff::ALLMULTI, on, "allmulticast")
    }

    /// Sets the hardware address.
    pub fn set_mac(&self, name: &str, mac: [u8; 6]) -> Result<()> {
        let op = format!(
            "set mac of {name} to {}",
            mac.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        );
        let a = attr(Ifla::Address, mac).map_err(Self::enc(&op))?;
        self.setlink(&op, name, Iff::empty(), Iff::empty(), vec![a])
    }

    /// Sets the MTU.
    pub fn set_mtu(&self, name: &str, mtu: u32) -> Result<()> {
        let op = format!("set mtu of {name} to {mtu}");
        let a = attr(Ifla::Mtu, mtu).map_err(Self::enc(&op))?;
        self.setlink(&op, name, Iff::empty(), Iff::empty(), vec![a])
    }

    /// Enslaves `name` to the bridge `master`, or releases it with `None`.
    pub fn set_master(&self, name: &str, master: Option<&str>) -> Result<()> {
        let op = format!("set master of {name} to {}", master.unwrap_or("none"));
        let index = match master {
            Some(m) => self.ifindex(m).map_err(|e| match e {
                RtnlError::NoSuchLink { name, .. } => RtnlError::NoSuchLink {
                    op: op.clone(),
                    name,
                },
                e => e,
            })?,
            None => 0,
        };
        let a = attr(Ifla::Master, index).map_err(Self::enc(&op))?;
        self.setlink(&op, name, Iff::empty(), Iff::empty(), vec![a])
    }

    /// Moves the link into the network namespace `ns`.
    pub fn move_to_netns(&self, name: &str, ns: BorrowedFd<'_>) -> Result<()> {
        let op = format!("move {name} to netns fd {}", ns.as_raw_fd());
        let fd = u32::try_from(ns.as_raw_fd())
            .map_err(|_| RtnlError::invalid("netns fd", ns.as_raw_fd().to_string(), "negative"))?;
        let a = attr(Ifla::NetNsFd, fd).map_err(Self::enc(&op))?;
        self.setlink(&op, name, Iff::empty(), Iff::empty(), vec![a])
    }

    /// Deletes the link with interface index `index`: `Ok(true)` if
    /// deleted, `Ok(false)` if there was none.
    pub fn delete_link_index(&self, index: u32) -> Result<bool> {
        let op = format!("delete link #{index}");
        let index = i32::try_from(index)
            .map_err(|_| RtnlError::invalid("ifindex", index.to_string(), "too large"))?;
        let body = ifinfomsg(index, Iff::empty(), Iff::empty(), RtBuffer::new())
            .map_err(Self::enc(&op))?;
        benign(
            self.ack(&op, Rtm::Dellink, NlmF::empty(), body),
            &[libc::ENODEV],
        )
    }

    /// Puts link `index` in device group `group` (`IFLA_GROUP`): `Ok(false)`
    /// if there is no such link.
    pub fn set_group_index(&self, index: u32, group: u32) -> Result<bool> {
        let op = format!("put link #{index} in group {group}");
        let index = i32::try_from(index)
            .map_err(|_| RtnlError::invalid("ifindex", index.to_string(), "too large"))?;
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifla::Group, group).map_err(Self::enc(&op))?);
        let body = ifinfomsg(index, Iff::empty(), Iff::empty(), attrs).map_err(Self::enc(&op))?;
        benign(
            self.ack(&op, Rtm::Setlink, NlmF::empty(), body),
            &[libc::ENODEV],
        )
    }

    /// Deletes every link of device group `group` in one request: the
    /// kernel unregisters them as one batch, so they share its grace
    /// periods instead of waiting for them one link after the other.
    /// `Ok(false)` if the group has no link. The caller makes sure that
    /// the group holds only links it may delete.
    pub fn delete_link_group(&self, group: u32) -> Result<bool> {
        let op = format!("delete the links of group {group}");
        if group == 0 {
            return Err(RtnlError::invalid(
                "group",
                "0",
                "the default group of every link",
            ));
        }
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifla::Group, group).map_err(Self::enc(&op))?);
        let body = ifinfomsg(0, Iff::empty(), Iff::empty(), attrs).map_err(Self::enc(&op))?;
        benign(
            self.ack(&op, Rtm::Dellink, NlmF::empty(), body),
            &[libc::ENODEV],
        )
    }

    /// Deletes the link: `Ok(true)` if deleted, `Ok(false)` if there was none.
    pub fn delete_link(&self, name: &str) -> Result<bool> {
        validate_ifname(name)?;
        let op = format!("delete link {name}");
        let attrs = by_name(name, Vec::new()).map_err(Self::enc(&op))?;
        let body = ifinfomsg(0, Iff::empty(), Iff::empty(), attrs).map_err(Self::enc(&op))?;
        benign(
            self.ack(&op, Rtm::Dellink, NlmF::empty(), body),
            &[libc::ENODEV],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neli::ToBytes;
    use std::io::Cursor;

    fn bytes<T: ToBytes>(t: &T) -> Vec<u8> {
        let mut c = Cursor::new(Vec::new());
        t.to_bytes(&mut c).unwrap();
        c.into_inner()
    }

    /// rtattr header: len, type (native endian).
    fn rta(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn ifinfo_hdr() -> Vec<u8> {
        vec![0u8; 16]
    }

    #[test]
    fn uapi_constants_match_neli() {
        assert_eq!(IFLA_ADDRESS, u16::from(Ifla::Address));
        assert_eq!(IFLA_IFNAME, u16::from(Ifla::Ifname));
        assert_eq!(IFLA_MTU, u16::from(Ifla::Mtu));
        assert_eq!(IFLA_MASTER, u16::from(Ifla::Master));
        assert_eq!(IFLA_LINKINFO, u16::from(Ifla::Linkinfo));
        assert_eq!(IFLA_IFALIAS, u16::from(Ifla::Ifalias));
        assert_eq!(IFLA_GROUP, u16::from(Ifla::Group));
        assert_eq!(IFLA_INFO_KIND, u16::from(IflaInfo::Kind));
    }

    #[test]
    fn veth_request_nests_the_peer_ifinfomsg_with_its_netns_fd() {
        let msg = veth_request("vh0", "vp0", Some(7)).unwrap();
        // Expected layout (golden, written from linux/veth.h and iproute2):
        // ifinfomsg | IFLA_IFNAME "vh0\0" | IFLA_LINKINFO {
        //   IFLA_INFO_KIND "veth\0" | IFLA_INFO_DATA { VETH_INFO_PEER {
        //     ifinfomsg | IFLA_IFNAME "vp0\0" | IFLA_NET_NS_FD 7 } } }
        let mut peer = ifinfo_hdr();
        peer.extend(rta(3, b"vp0\0"));
        peer.extend(rta(28, &7u32.to_ne_bytes()));
        let data = rta(1, &peer);
        let mut info = rta(1, b"veth\0");
        info.extend(rta(2, &data));
        let mut expected = ifinfo_hdr();
        expected.extend(rta(3, b"vh0\0"));
        expected.extend(rta(18, &info));
        assert_eq!(bytes(&msg), expected);
    }

    #[test]
    fn veth_request_without_netns_has_no_netns_attribute() {
        let msg = veth_request("vh0", "vp0", None).unwrap();
        let mut peer = ifinfo_hdr();
        peer.extend(rta(3, b"vp0\0"));
        let b = bytes(&msg);
        assert!(b.windows(peer.len()).any(|w| w == peer.as_slice()));
        assert!(!b.windows(4).any(|w| w == [8, 0, 28, 0]));
    }

    #[test]
    fn bridge_request_carries_the_kind() {
        let msg = kind_request("br0", "bridge", None).unwrap();
        let mut expected = ifinfo_hdr();
        expected.extend(rta(3, b"br0\0"));
        expected.extend(rta(18, &rta(1, b"bridge\0")));
        assert_eq!(bytes(&msg), expected);
    }

    fn newlink_payload(index: i32, flags: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        family_newlink_payload(libc::AF_UNSPEC as u8, index, flags, attrs)
    }

    fn family_newlink_payload(family: u8, index: i32, flags: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![family, 0];
        v.extend_from_slice(&1u16.to_ne_bytes()); // ARPHRD_ETHER
        v.extend_from_slice(&index.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        for a in attrs {
            v.extend_from_slice(a);
        }
        v
    }

    #[test]
    fn parse_link_reads_every_field() {
        let flags = (libc::IFF_UP | libc::IFF_LOWER_UP | libc::IFF_MULTICAST) as u32;
        let payload = newlink_payload(
            5,
            flags,
            &[
                rta(3, b"vh0\0"),
                rta(20, b"patchpanel\0"),
                rta(1, &[2, 0, 0, 0, 0, 9]),
                rta(4, &1500u32.to_ne_bytes()),
                rta(10, &3u32.to_ne_bytes()),
                rta(18, &rta(1, b"veth\0")),
                rta(0x8000 | 55, &[]), // unknown nested attribute: ignored
            ],
        );
        let link = parse_link(&payload).unwrap().unwrap();
        assert_eq!(
            link,
            Link {
                index: 5,
                name: "vh0".into(),
                alias: Some("patchpanel".into()),
                mac: Some([2, 0, 0, 0, 0, 9]),
                up: true,
                running: true,
                multicast: true,
                allmulti: false,
                kind: Some("veth".into()),
                mtu: 1500,
                master: Some(3),
                group: 0,
            }
        );
    }

    #[test]
    fn parse_link_without_a_name_is_malformed() {
        let payload = newlink_payload(5, 0, &[rta(4, &1500u32.to_ne_bytes())]);
        assert!(parse_link(&payload).is_err());
    }

    #[test]
    fn parse_link_with_a_short_mtu_is_malformed() {
        let payload = newlink_payload(5, 0, &[rta(3, b"a\0"), rta(4, &[1, 2])]);
        assert!(parse_link(&payload).is_err());
    }

    #[test]
    fn parse_link_skips_bridge_port_messages() {
        let payload = family_newlink_payload(libc::AF_BRIDGE as u8, 4, 0, &[rta(3, b"vh0\0")]);
        assert_eq!(parse_link(&payload).unwrap(), None);
    }

    #[test]
    fn parse_link_ignores_a_non_ethernet_address() {
        let payload = newlink_payload(1, 0, &[rta(3, b"lo\0"), rta(1, &[0; 4])]);
        assert_eq!(parse_link(&payload).unwrap().unwrap().mac, None);
    }
}
