//! Automatic inbound DNAT to guests (upstream-core §4.3 nat, §4.7).
//!
//! ARC serves inbound connections on the uplinks it is attached to: what
//! arrives unsolicited on an uplink is sent to ARC's address for that
//! uplink, unless the host itself has a socket for it. The rules live in
//! the nat chain named after the guest kind (`apply_auto_dnat_to_arc`...),
//! which the layout jumps to from nat PREROUTING after
//! `ingress_port_forwarding`, so explicit port forwards win. IPv4 only.

use std::net::{IpAddr, Ipv4Addr};

use patchpanel_names::IfName;
use serde::{Deserialize, Serialize};

use crate::layout::{
    named, APPLY_AUTO_DNAT_TO_ARC, APPLY_AUTO_DNAT_TO_CROSTINI, APPLY_AUTO_DNAT_TO_PARALLELS,
    INGRESS_PORT_FIREWALL, INGRESS_PORT_FORWARDING,
};
use crate::model::{
    Batch, Change, Family, InverseError, Match, OwnedChain, Protocol, Rule, Table, Target,
};

/// Which guest an uplink's inbound traffic goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AutoDnatTarget {
    Arc,
    Crostini,
    Parallels,
}

impl AutoDnatTarget {
    /// The nat chain holding this target's rules.
    pub fn chain(self) -> OwnedChain {
        named(match self {
            AutoDnatTarget::Arc => APPLY_AUTO_DNAT_TO_ARC,
            AutoDnatTarget::Crostini => APPLY_AUTO_DNAT_TO_CROSTINI,
            AutoDnatTarget::Parallels => APPLY_AUTO_DNAT_TO_PARALLELS,
        })
    }
}

/// The changes that send unsolicited TCP and UDP arriving on `uplink` to
/// `guest`: first `-m socket --nowildcard -j ACCEPT` (traffic for a socket
/// of the host, listening on any address included, is left alone), then
/// one DNAT per protocol.
pub fn auto_dnat(target: AutoDnatTarget, uplink: &IfName, guest: Ipv4Addr) -> Batch {
    let chain = target.chain();
    let mut batch = Batch::new();
    let append = |rule: Rule| Change::Append {
        table: Table::Nat,
        chain: chain.clone(),
        rule,
    };
    batch.push(
        Family::V4,
        append(
            Rule::new(Target::Accept)
                .with(Match::iif(uplink))
                .with(Match::SocketNoWildcard),
        ),
    );
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        batch.push(
            Family::V4,
            append(
                Rule::new(Target::Dnat {
                    addr: IpAddr::V4(guest),
                    port: None,
                })
                .with(Match::iif(uplink))
                .with(Match::Protocol(protocol)),
            ),
        );
    }
    batch
}

/// The inverse of [`auto_dnat`].
pub fn auto_dnat_teardown(
    target: AutoDnatTarget,
    uplink: &IfName,
    guest: Ipv4Addr,
) -> Result<Batch, InverseError> {
    auto_dnat(target, uplink, guest).inverse()
}

/// Crostini ADB sideloading (upstream-core §4.8): TCP from the VM's `tap`
/// to ARC's adbd (`arc:port`) is sent to the host's ADB relay instead, at
/// `relay:port`, and the relay's port is opened on the TAP. `relay` is the
/// TAP's own host address: the relay listens on every address of the host.
///
/// Upstream sends it to 127.0.0.1 and sets `route_localnet=1` on the TAP,
/// which lets the VM reach every service bound to the host's loopback, not
/// only the relay (security review finding 4; ChromeOS's INPUT policy
/// drops the rest, a generic host has none). The TAP's own address needs no
/// such sysctl, so the kernel keeps treating 127.0.0.0/8 arriving on the TAP
/// as martian. IPv4 only.
pub fn adb_sideload(tap: &IfName, arc: Ipv4Addr, relay: Ipv4Addr, port: u16) -> Batch {
    let mut batch = Batch::new();
    batch.push(
        Family::V4,
        Change::Append {
            table: Table::Nat,
            chain: named(INGRESS_PORT_FORWARDING),
            rule: Rule::new(Target::Dnat {
                addr: IpAddr::V4(relay),
                port: Some(port),
            })
            .with(Match::iif(tap))
            .with(Match::dst(crate::model::Cidr::host(IpAddr::V4(arc))))
            .with(Match::Protocol(Protocol::Tcp))
            .with(Match::DestinationPort(port)),
        },
    );
    batch.push(
        Family::V4,
        Change::Append {
            table: Table::Filter,
            chain: named(INGRESS_PORT_FIREWALL),
            rule: Rule::new(Target::Accept)
                .with(Match::iif(tap))
                .with(Match::Protocol(Protocol::Tcp))
                .with(Match::DestinationPort(port)),
        },
    );
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::render;

    fn eth0() -> IfName {
        IfName::new("eth0").unwrap()
    }

    #[test]
    fn arc_auto_dnat_renders_exactly_with_the_host_socket_exemption_first() {
        let batch = auto_dnat(AutoDnatTarget::Arc, &eth0(), Ipv4Addr::new(100, 115, 92, 6));
        batch.validate().unwrap();
        assert_eq!(
            render(&batch, Family::V4),
            "\
*nat
-A apply_auto_dnat_to_arc -i eth0 -m socket --nowildcard -j ACCEPT
-A apply_auto_dnat_to_arc -i eth0 -p tcp -j DNAT --to-destination 100.115.92.6
-A apply_auto_dnat_to_arc -i eth0 -p udp -j DNAT --to-destination 100.115.92.6
COMMIT
"
        );
    }

    fn sideload() -> Batch {
        adb_sideload(
            &IfName::new("vmtap0").unwrap(),
            Ipv4Addr::new(100, 115, 92, 2),
            Ipv4Addr::new(100, 115, 92, 25),
            5555,
        )
    }

    #[test]
    fn adb_sideload_sends_the_vm_to_the_relay_on_the_tap_address_and_opens_its_port() {
        let batch = sideload();
        batch.validate().unwrap();
        assert_eq!(
            render(&batch, Family::V4),
            "\
*filter
-A ingress_port_firewall -i vmtap0 -p tcp --dport 5555 -j ACCEPT
COMMIT
*nat
-A ingress_port_forwarding -i vmtap0 -d 100.115.92.2/32 -p tcp --dport 5555 -j DNAT --to-destination 100.115.92.25:5555
COMMIT
"
        );
        assert_eq!(render(&batch, Family::V6), "");
    }

    #[test]
    fn adb_sideload_teardown_deletes_what_setup_added_in_reverse() {
        let teardown = sideload().inverse().expect("invertible");
        assert_eq!(
            render(&teardown, Family::V4),
            "\
*filter
-D ingress_port_firewall -i vmtap0 -p tcp --dport 5555 -j ACCEPT
COMMIT
*nat
-D ingress_port_forwarding -i vmtap0 -d 100.115.92.2/32 -p tcp --dport 5555 -j DNAT --to-destination 100.115.92.25:5555
COMMIT
"
        );
        assert_eq!(teardown.inverse().unwrap(), sideload());
    }

    #[test]
    fn auto_dnat_has_no_ipv6_rules() {
        let batch = auto_dnat(AutoDnatTarget::Arc, &eth0(), Ipv4Addr::new(100, 115, 92, 6));
        assert!(batch.ipv6.is_empty());
        assert_eq!(render(&batch, Family::V6), "");
    }

    #[test]
    fn teardown_deletes_in_reverse_and_inverts_setup() {
        let guest = Ipv4Addr::new(100, 115, 93, 2);
        let teardown =
            auto_dnat_teardown(AutoDnatTarget::Parallels, &eth0(), guest).expect("invertible");
        assert_eq!(
            render(&teardown, Family::V4),
            "\
*nat
-D apply_auto_dnat_to_parallels -i eth0 -p udp -j DNAT --to-destination 100.115.93.2
-D apply_auto_dnat_to_parallels -i eth0 -p tcp -j DNAT --to-destination 100.115.93.2
-D apply_auto_dnat_to_parallels -i eth0 -m socket --nowildcard -j ACCEPT
COMMIT
"
        );
        assert_eq!(
            teardown.inverse().unwrap(),
            auto_dnat(AutoDnatTarget::Parallels, &eth0(), guest)
        );
    }

    #[test]
    fn each_target_has_its_upstream_chain() {
        assert_eq!(
            AutoDnatTarget::Arc.chain().as_str(),
            "apply_auto_dnat_to_arc"
        );
        assert_eq!(
            AutoDnatTarget::Crostini.chain().as_str(),
            "apply_auto_dnat_to_crostini"
        );
        assert_eq!(
            AutoDnatTarget::Parallels.chain().as_str(),
            "apply_auto_dnat_to_parallels"
        );
    }
}
