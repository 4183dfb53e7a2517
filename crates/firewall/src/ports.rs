//! Port rules of ModifyPortRule (upstream-core §5): ACCESS opens a port on
//! the host, LOCKDOWN reserves a loopback port for one user, FORWARDING
//! sends an inbound port to a guest. Each is inserted at position 1 of its
//! chain (explicit forwards win over the automatic DNAT to guests) and
//! removed by the inverse batch.

use std::net::{IpAddr, Ipv4Addr};

use patchpanel_names::IfName;
use serde::{Deserialize, Serialize};

use crate::layout::{
    named, EGRESS_PORT_FIREWALL, GUEST_FORWARD, INGRESS_PORT_FIREWALL, INGRESS_PORT_FORWARDING,
};
use crate::model::{Batch, Change, Cidr, Match, Protocol, Rule, Table, Target, ValidationError};

/// The protocols a port rule may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortProtocol {
    Tcp,
    Udp,
}

impl From<PortProtocol> for Protocol {
    fn from(p: PortProtocol) -> Protocol {
        match p {
            PortProtocol::Tcp => Protocol::Tcp,
            PortProtocol::Udp => Protocol::Udp,
        }
    }
}

fn nonzero(what: &'static str, port: u16) -> Result<(), ValidationError> {
    if port == 0 {
        Err(ValidationError::PortZero { what })
    } else {
        Ok(())
    }
}

/// ACCESS: `-I ingress_port_firewall 1 -p <proto> --dport <port> [-i <if>]
/// -j ACCEPT`, both families. No interface means every interface.
pub fn access(
    proto: PortProtocol,
    port: u16,
    ifname: Option<&IfName>,
) -> Result<Batch, ValidationError> {
    nonzero("--dport", port)?;
    let mut rule = Rule::new(Target::Accept)
        .with(Match::Protocol(proto.into()))
        .with(Match::DestinationPort(port));
    if let Some(ifname) = ifname {
        rule = rule.with(Match::iif(ifname));
    }
    let mut batch = Batch::new();
    batch.push_dual(Change::Insert {
        table: Table::Filter,
        chain: named(INGRESS_PORT_FIREWALL),
        position: 1,
        rule,
    });
    Ok(batch)
}

/// LOCKDOWN: only `allowed_uid` may connect to loopback port `port`:
/// `-I egress_port_firewall 1 -p <proto> --dport <port> -o lo -m owner !
/// --uid-owner <uid> -j REJECT`, both families.
pub fn lockdown(
    proto: PortProtocol,
    port: u16,
    allowed_uid: u32,
) -> Result<Batch, ValidationError> {
    nonzero("--dport", port)?;
    let lo = IfName::new("lo").map_err(|_| ValidationError::ChainName {
        name: "lo".to_string(),
        reason: "not a valid interface name",
    })?;
    let rule = Rule::new(Target::Reject)
        .with(Match::Protocol(proto.into()))
        .with(Match::DestinationPort(port))
        .with(Match::oif(&lo))
        .with(Match::UidOwner {
            uid: allowed_uid,
            negate: true,
        });
    let mut batch = Batch::new();
    batch.push_dual(Change::Insert {
        table: Table::Filter,
        chain: named(EGRESS_PORT_FIREWALL),
        position: 1,
        rule,
    });
    Ok(batch)
}

/// An inbound port forwarded to a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarding {
    pub proto: PortProtocol,
    /// Where the connections arrive (required).
    pub ifname: IfName,
    /// Only connections to this host address, if set.
    pub input_dst: Option<Ipv4Addr>,
    pub input_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
}

/// FORWARDING (IPv4 only): `-I ingress_port_forwarding 1 -i <if> -p <proto>
/// [-d <input_dst>/32] --dport <port> -j DNAT --to-destination <dst>:<port>`
/// in nat, and `-A guest_forward -i <if> -p <proto> -d <dst>/32 --dport
/// <dst_port> -j ACCEPT` in filter.
pub fn forwarding(f: &Forwarding) -> Result<Batch, ValidationError> {
    nonzero("--dport", f.input_port)?;
    nonzero("--to-destination", f.dst_port)?;
    let mut dnat = Rule::new(Target::Dnat {
        addr: IpAddr::V4(f.dst),
        port: Some(f.dst_port),
    })
    .with(Match::iif(&f.ifname))
    .with(Match::Protocol(f.proto.into()));
    if let Some(addr) = f.input_dst {
        dnat = dnat.with(Match::dst(Cidr::host(IpAddr::V4(addr))));
    }
    dnat = dnat.with(Match::DestinationPort(f.input_port));
    let accept = Rule::new(Target::Accept)
        .with(Match::iif(&f.ifname))
        .with(Match::Protocol(f.proto.into()))
        .with(Match::dst(Cidr::host(IpAddr::V4(f.dst))))
        .with(Match::DestinationPort(f.dst_port));
    let mut batch = Batch::new();
    batch.ipv4.push(Change::Insert {
        table: Table::Nat,
        chain: named(INGRESS_PORT_FORWARDING),
        position: 1,
        rule: dnat,
    });
    batch.ipv4.push(Change::Append {
        table: Table::Filter,
        chain: named(GUEST_FORWARD),
        rule: accept,
    });
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Family;
    use crate::render::render;

    fn ifname(name: &str) -> IfName {
        IfName::new(name).unwrap()
    }

    #[test]
    fn access_renders_for_both_families_and_deletes_by_inverse() {
        let batch = access(PortProtocol::Tcp, 5555, Some(&ifname("eth0"))).unwrap();
        batch.validate().unwrap();
        let expected =
            "*filter\n-I ingress_port_firewall 1 -p tcp --dport 5555 -i eth0 -j ACCEPT\nCOMMIT\n";
        assert_eq!(render(&batch, Family::V4), expected);
        assert_eq!(render(&batch, Family::V6), expected);
        assert_eq!(
            render(&batch.inverse().unwrap(), Family::V4),
            "*filter\n-D ingress_port_firewall -p tcp --dport 5555 -i eth0 -j ACCEPT\nCOMMIT\n"
        );
        let any = access(PortProtocol::Udp, 53, None).unwrap();
        assert_eq!(
            render(&any, Family::V6),
            "*filter\n-I ingress_port_firewall 1 -p udp --dport 53 -j ACCEPT\nCOMMIT\n"
        );
    }

    #[test]
    fn lockdown_rejects_every_other_user_on_loopback() {
        let batch = lockdown(PortProtocol::Tcp, 8080, 1000).unwrap();
        batch.validate().unwrap();
        assert_eq!(
            render(&batch, Family::V4),
            "*filter\n-I egress_port_firewall 1 -p tcp --dport 8080 -o lo -m owner ! --uid-owner 1000 -j REJECT\nCOMMIT\n"
        );
    }

    #[test]
    fn forwarding_dnats_and_accepts_ipv4_only() {
        let batch = forwarding(&Forwarding {
            proto: PortProtocol::Tcp,
            ifname: ifname("eth0"),
            input_dst: Some(Ipv4Addr::new(192, 0, 2, 10)),
            input_port: 8022,
            dst: Ipv4Addr::new(100, 115, 92, 6),
            dst_port: 22,
        })
        .unwrap();
        batch.validate().unwrap();
        assert_eq!(
            render(&batch, Family::V4),
            "\
*filter
-A guest_forward -i eth0 -p tcp -d 100.115.92.6/32 --dport 22 -j ACCEPT
COMMIT
*nat
-I ingress_port_forwarding 1 -i eth0 -p tcp -d 192.0.2.10/32 --dport 8022 -j DNAT --to-destination 100.115.92.6:22
COMMIT
"
        );
        assert!(batch.ipv6.is_empty());
    }

    #[test]
    fn port_zero_is_refused() {
        assert_eq!(
            access(PortProtocol::Tcp, 0, None).unwrap_err(),
            ValidationError::PortZero { what: "--dport" }
        );
        let f = Forwarding {
            proto: PortProtocol::Udp,
            ifname: ifname("eth0"),
            input_dst: None,
            input_port: 5000,
            dst: Ipv4Addr::new(100, 115, 92, 6),
            dst_port: 0,
        };
        assert_eq!(
            forwarding(&f).unwrap_err(),
            ValidationError::PortZero {
                what: "--to-destination"
            }
        );
    }
}
