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
};
use crate::model::{Batch, Change, Family, Match, OwnedChain, Protocol, Rule, Table, Target};

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
pub fn auto_dnat_teardown(target: AutoDnatTarget, uplink: &IfName, guest: Ipv4Addr) -> Batch {
    auto_dnat(target, uplink, guest).inverse_or_empty()
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

    #[test]
    fn auto_dnat_has_no_ipv6_rules() {
        let batch = auto_dnat(AutoDnatTarget::Arc, &eth0(), Ipv4Addr::new(100, 115, 92, 6));
        assert!(batch.ipv6.is_empty());
        assert_eq!(render(&batch, Family::V6), "");
    }

    #[test]
    fn teardown_deletes_in_reverse_and_inverts_setup() {
        let guest = Ipv4Addr::new(100, 115, 93, 2);
        let teardown = auto_dnat_teardown(AutoDnatTarget::Parallels, &eth0(), guest);
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
