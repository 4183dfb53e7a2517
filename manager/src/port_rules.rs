//! ModifyPortRule policy (upstream-core §5): validate a request into a
//! [`PortRule`], refuse duplicates and deletes of unknown rules, and build
//! the firewall batch. Pure; the manager applies the batch and keeps the
//! set of active rules in its state (so a crash restart re-applies them).

use std::net::Ipv4Addr;

use patchpanel_addr::{GuestPool, Ipv4Subnet, PoolConfig};
use patchpanel_firewall::ports::{self, Forwarding, PortProtocol};
use patchpanel_firewall::Batch;
use patchpanel_ipc::IfName;
use patchpanel_proto::modify_port_rule_request::{Operation, Protocol, RuleType};
use patchpanel_proto::ModifyPortRuleRequest;
use serde::{Deserialize, Serialize};

use crate::error::CallError;

/// One active port rule; equality is the identity used for duplicates
/// and deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortRule {
    Access {
        proto: PortProtocol,
        port: u16,
        ifname: Option<IfName>,
    },
    Lockdown {
        proto: PortProtocol,
        port: u16,
    },
    Forwarding(Forwarding),
}

impl std::fmt::Display for PortRule {
    /// One short line for logs: `ACCESS tcp/9292 on eth0`,
    /// `LOCKDOWN udp/53`, `FORWARDING tcp eth0:8080 -> 100.115.92.6:80`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = |p: &PortProtocol| match p {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        };
        match self {
            PortRule::Access {
                proto: p,
                port,
                ifname,
            } => {
                write!(f, "ACCESS {}/{port}", proto(p))?;
                match ifname {
                    Some(i) => write!(f, " on {i}"),
                    None => write!(f, " on every interface"),
                }
            }
            PortRule::Lockdown { proto: p, port } => write!(f, "LOCKDOWN {}/{port}", proto(p)),
            PortRule::Forwarding(fw) => {
                write!(f, "FORWARDING {} {}", proto(&fw.proto), fw.ifname)?;
                if let Some(d) = fw.input_dst {
                    write!(f, " {d}")?;
                }
                write!(f, ":{} -> {}:{}", fw.input_port, fw.dst, fw.dst_port)
            }
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortOp {
    Create(PortRule),
    Delete(PortRule),
}

/// Site policy the rules are checked against.
#[derive(Debug, Clone)]
pub struct PortPolicy {
    /// The only uid LOCKDOWN lets through.
    pub lockdown_uid: u32,
    /// Forwarding targets must be inside one of these.
    pub forwarding_targets: Vec<Ipv4Subnet>,
    /// Where the guest pools are, to tell a guest's address from the
    /// host's side, a network or a broadcast address.
    pub guest_pools: Vec<(GuestPool, PoolConfig)>,
    /// Active rules, at most.
    pub max_rules: usize,
    /// Active rules naming one interface, at most.
    pub max_rules_per_interface: usize,
}

impl PortPolicy {
    /// The default layout's pools, 4096 rules, 1024 per interface.
    pub fn with_defaults(lockdown_uid: u32) -> PortPolicy {
        PortPolicy {
            lockdown_uid,
            forwarding_targets: vec![patchpanel_addr::GUEST_ADDRESS_SPACE],
            guest_pools: GuestPool::ALL
                .iter()
                .map(|&p| (p, p.default_config()))
                .collect(),
            max_rules: 4096,
            max_rules_per_interface: 1024,
        }
    }
}

/// Why `dst` cannot be a guest, if it cannot: inside a pool it must be
/// the guest's address of its subnet (offset 2), or any host address of
/// an LXD container /28 (LXD hands those out inside the VM); the rest of
/// the guest address space holds no guest at all. Liveness is not
/// required: a rule may be made while its guest restarts (docs/compatibility.md).
fn not_a_guest(dst: Ipv4Addr, pools: &[(GuestPool, PoolConfig)]) -> Option<String> {
    let addr = u32::from(dst);
    for (pool, cfg) in pools {
        let size = 1u64 << (32 - u32::from(cfg.prefix_len.min(32)));
        let base = u64::from(u32::from(cfg.base));
        let end = base + size * u64::from(cfg.count);
        let a = u64::from(addr);
        if a < base || a >= end {
            continue;
        }
        let offset = (a - base) % size;
        let lxd = matches!(pool, GuestPool::LxdContainer | GuestPool::LxdFallback);
        let ok = if lxd {
            offset != 0 && offset != size - 1
        } else {
            offset == 2
        };
        return (!ok).then(|| {
            let role = match offset {
                0 => "the network address".to_string(),
                o if o == size - 1 => "the broadcast address".to_string(),
                1 => "the host's address".to_string(),
                o => format!("offset {o}"),
            };
            format!(
                "dst_ip {dst} is {role} of a {} subnet, not a guest's address",
                pool.name()
            )
        });
    }
    patchpanel_addr::GUEST_ADDRESS_SPACE
        .contains(dst)
        .then(|| format!("dst_ip {dst} is in no guest pool: no guest can have it"))
}

/// Refuses a new rule once `policy`'s caps are reached: in total, and
/// for the interface the rule names.
pub fn check_limits(
    active: &[PortRule],
    rule: &PortRule,
    policy: &PortPolicy,
) -> Result<(), CallError> {
    if active.len() >= policy.max_rules {
        return Err(CallError::Failed(format!(
            "ModifyPortRule: {} port rules are active, the most allowed (max_port_rules); delete one first",
            active.len()
        )));
    }
    if let Some(ifname) = rule.ifname() {
        let on_it = active.iter().filter(|r| r.ifname() == Some(ifname)).count();
        if on_it >= policy.max_rules_per_interface {
            return Err(CallError::Failed(format!(
                "ModifyPortRule: {on_it} port rules name {ifname}, the most allowed per interface (max_port_rules_per_interface); delete one first"
            )));
        }
    }
    Ok(())
}

impl PortRule {
    /// The interface a rule names, if any.
    pub fn ifname(&self) -> Option<&IfName> {
        match self {
            PortRule::Access { ifname, .. } => ifname.as_ref(),
            PortRule::Lockdown { .. } => None,
            PortRule::Forwarding(f) => Some(&f.ifname),
        }
    }
}

fn invalid(m: impl Into<String>) -> CallError {
    CallError::InvalidArgument(m.into())
}

fn port(what: &str, value: u32) -> Result<u16, CallError> {
    match u16::try_from(value) {
        Ok(0) => Err(invalid(format!("{what} 0 is not a port"))),
        Ok(p) => Ok(p),
        Err(_) => Err(invalid(format!("{what} {value} is above 65535"))),
    }
}

fn ipv4(what: &str, text: &str) -> Result<Ipv4Addr, CallError> {
    text.parse().map_err(|_| {
        invalid(format!(
            "{what} {:?} is not an IPv4 address",
            text.escape_debug().to_string()
        ))
    })
}

fn ifname(text: &str) -> Result<Option<IfName>, CallError> {
    if text.is_empty() {
        return Ok(None);
    }
    IfName::new(text)
        .map(Some)
        .map_err(|e| invalid(format!("input_ifname: {e}")))
}

/// ACCESS and LOCKDOWN do not use `input_dst_ip`, `dst_ip` or `dst_port`
/// (nor does the original), but what a caller puts there must still be
/// well-formed (an IP address of either family, a port): a request with
/// junk in them, such as an injection attempt, is refused instead of being
/// carried out without it. It used to be accepted, and the port opened.
fn unused_fields(req: &ModifyPortRuleRequest) -> Result<(), CallError> {
    for (what, text) in [("input_dst_ip", &req.input_dst_ip), ("dst_ip", &req.dst_ip)] {
        if !text.is_empty() && text.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!(
                "{what} {:?} is not an IP address",
                text.escape_debug().to_string()
            )));
        }
    }
    if req.dst_port != 0 {
        port("dst_port", req.dst_port)?;
    }
    Ok(())
}

/// Validates a request.
pub fn parse(req: &ModifyPortRuleRequest, policy: &PortPolicy) -> Result<PortOp, CallError> {
    let proto = match Protocol::try_from(req.proto) {
        Ok(Protocol::Tcp) => PortProtocol::Tcp,
        Ok(Protocol::Udp) => PortProtocol::Udp,
        _ => {
            return Err(invalid(format!(
                "proto {} is not TCP (1) or UDP (2)",
                req.proto
            )))
        }
    };
    let rule = match RuleType::try_from(req.r#type) {
        Ok(RuleType::Access) => {
            unused_fields(req)?;
            PortRule::Access {
                proto,
                port: port("input_dst_port", req.input_dst_port)?,
                ifname: ifname(&req.input_ifname)?,
            }
        }
        Ok(RuleType::Lockdown) => {
            unused_fields(req)?;
            // The interface is always loopback; a name given anyway must
            // still be a valid one.
            ifname(&req.input_ifname)?;
            PortRule::Lockdown {
                proto,
                port: port("input_dst_port", req.input_dst_port)?,
            }
        }
        Ok(RuleType::Forwarding) => {
            let ifname = ifname(&req.input_ifname)?
                .ok_or_else(|| invalid("forwarding needs input_ifname"))?;
            let input_dst = if req.input_dst_ip.is_empty() {
                None
            } else {
                Some(ipv4("input_dst_ip", &req.input_dst_ip)?)
            };
            let dst = ipv4("dst_ip", &req.dst_ip)?;
            if !policy.forwarding_targets.iter().any(|n| n.contains(dst)) {
                return Err(invalid(format!(
                    "dst_ip {dst} is not a guest address (allowed: {})",
                    policy
                        .forwarding_targets
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if let Some(why) = not_a_guest(dst, &policy.guest_pools) {
                return Err(invalid(why));
            }
            PortRule::Forwarding(Forwarding {
                proto,
                ifname,
                input_dst,
                input_port: port("input_dst_port", req.input_dst_port)?,
                dst,
                dst_port: port("dst_port", req.dst_port)?,
            })
        }
        _ => {
            return Err(invalid(format!(
                "type {} is not ACCESS (1), LOCKDOWN (2) or FORWARDING (3)",
                req.r#type
            )))
        }
    };
    match Operation::try_from(req.op) {
        Ok(Operation::Create) => Ok(PortOp::Create(rule)),
        Ok(Operation::Delete) => Ok(PortOp::Delete(rule)),
        _ => Err(invalid(format!(
            "op {} is not CREATE (1) or DELETE (2)",
            req.op
        ))),
    }
}

/// The firewall changes that install `rule`.
pub fn batch(rule: &PortRule, policy: &PortPolicy) -> Result<Batch, CallError> {
    let b = match rule {
        PortRule::Access {
            proto,
            port,
            ifname,
        } => ports::access(*proto, *port, ifname.as_ref()),
        PortRule::Lockdown { proto, port } => ports::lockdown(*proto, *port, policy.lockdown_uid),
        PortRule::Forwarding(f) => ports::forwarding(f),
    };
    b.map_err(|e| invalid(e.to_string()))
}

/// Where a rule conflicts with the active set: the same rule exists, or
/// another forward already takes the same inbound port on the interface.
pub fn conflict(active: &[PortRule], rule: &PortRule) -> Option<String> {
    if active.contains(rule) {
        return Some("the same rule already exists".into());
    }
    if let PortRule::Forwarding(f) = rule {
        for other in active {
            if let PortRule::Forwarding(o) = other {
                if o.proto == f.proto
                    && o.ifname == f.ifname
                    && o.input_port == f.input_port
                    && o.input_dst == f.input_dst
                {
                    return Some(format!(
                        "port {} on {} is already forwarded to {}:{}",
                        f.input_port, f.ifname, o.dst, o.dst_port
                    ));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PortPolicy {
        PortPolicy::with_defaults(1000)
    }

    #[test]
    fn forwards_to_host_network_or_broadcast_addresses_are_refused() {
        for (dst, why) in [
            ("100.115.92.0", "the network address of a arc0"),
            ("100.115.92.1", "the host's address of a arc0"),
            ("100.115.92.129", "the host's address of a netns"),
            ("100.115.92.131", "the broadcast address of a netns"),
            ("100.115.93.255", "the broadcast address of a parallels-vm"),
            ("100.115.93.11", "offset 3 of a parallels-vm"),
            ("100.115.92.192", "the network address of a lxd-container"),
            ("100.115.92.207", "the broadcast address of a lxd-container"),
        ] {
            refused(&forward(8080, dst), why);
        }
    }

    #[test]
    fn a_guest_space_address_outside_every_pool_is_refused() {
        let mut p = policy();
        // Pools moved away leave the default forwarding targets empty.
        for (_, cfg) in &mut p.guest_pools {
            cfg.base = std::net::Ipv4Addr::new(10, cfg.base.octets()[2], cfg.base.octets()[3], 0);
        }
        match parse(&forward(8080, "100.115.92.130"), &p) {
            Err(CallError::InvalidArgument(m)) => assert!(m.contains("in no guest pool"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forwards_to_guests_of_every_pool_are_accepted() {
        for dst in [
            "100.115.92.2",
            "100.115.92.6",
            "100.115.92.26",
            "100.115.92.130",
            "100.115.92.193",
            "100.115.92.200",
            "100.115.92.66",
            "100.115.93.10",
        ] {
            assert!(parse(&forward(8080, dst), &policy()).is_ok(), "{dst}");
        }
    }

    #[test]
    fn a_target_outside_the_guest_space_follows_forwarding_targets_alone() {
        let mut p = policy();
        p.forwarding_targets
            .push("192.168.122.0/24".parse().unwrap());
        assert!(parse(&forward(8080, "192.168.122.7"), &p).is_ok());
    }

    fn access(port: u16, ifname: Option<&str>) -> PortRule {
        PortRule::Access {
            proto: PortProtocol::Tcp,
            port,
            ifname: ifname.map(|n| IfName::new(n).unwrap()),
        }
    }

    #[test]
    fn rules_are_capped_in_total() {
        let mut p = policy();
        p.max_rules = 3;
        let active: Vec<_> = (1..=3).map(|i| access(i, Some("eth0"))).collect();
        assert_eq!(check_limits(&active[..2], &access(9, None), &p), Ok(()));
        assert!(matches!(
            check_limits(&active, &access(9, None), &p),
            Err(CallError::Failed(m)) if m.contains("3 port rules are active")
        ));
    }

    #[test]
    fn rules_are_capped_per_interface() {
        let mut p = policy();
        p.max_rules_per_interface = 2;
        let active = vec![
            access(1, Some("eth0")),
            access(2, Some("eth0")),
            access(3, Some("wlan0")),
            access(4, None),
        ];
        assert!(matches!(
            check_limits(&active, &access(9, Some("eth0")), &p),
            Err(CallError::Failed(m)) if m.contains("2 port rules name eth0")
        ));
        assert_eq!(check_limits(&active, &access(9, Some("wlan0")), &p), Ok(()));
        assert_eq!(check_limits(&active, &access(9, None), &p), Ok(()));
    }

    fn forward(port: u32, dst: &str) -> ModifyPortRuleRequest {
        ModifyPortRuleRequest {
            op: Operation::Create as i32,
            r#type: RuleType::Forwarding as i32,
            proto: Protocol::Tcp as i32,
            input_ifname: "eth0".into(),
            input_dst_ip: String::new(),
            input_dst_port: port,
            dst_ip: dst.into(),
            dst_port: 80,
        }
    }

    fn refused(req: &ModifyPortRuleRequest, needle: &str) {
        match parse(req, &policy()) {
            Err(CallError::InvalidArgument(m)) => {
                assert!(m.contains(needle), "{needle:?} in {m:?}")
            }
            other => panic!("{needle}: {other:?}"),
        }
    }

    #[test]
    fn a_forward_to_a_guest_is_accepted() {
        let op = parse(&forward(8080, "100.115.92.130"), &policy()).unwrap();
        let PortOp::Create(rule) = op else { panic!() };
        let text = patchpanel_firewall::render::render(
            &batch(&rule, &policy()).unwrap(),
            patchpanel_firewall::Family::V4,
        );
        assert!(
            text.contains("-I ingress_port_forwarding 1 -i eth0 -p tcp --dport 8080 -j DNAT --to-destination 100.115.92.130:80"),
            "{text}"
        );
    }

    #[test]
    fn ports_must_be_between_1_and_65535() {
        refused(&forward(0, "100.115.92.130"), "0 is not a port");
        refused(&forward(65536, "100.115.92.130"), "above 65535");
        let mut r = forward(8080, "100.115.92.130");
        r.dst_port = 0;
        refused(&r, "dst_port 0");
    }

    #[test]
    fn forwarding_outside_the_guest_space_is_refused() {
        refused(&forward(8080, "8.8.8.8"), "not a guest address");
        refused(&forward(8080, "100.115.94.1"), "not a guest address");
    }

    #[test]
    fn malformed_addresses_and_names_are_refused() {
        refused(&forward(8080, "100.115.92"), "not an IPv4 address");
        refused(&forward(8080, "fe80::1"), "not an IPv4 address");
        for bad in [
            "eth0 -j ACCEPT",
            "eth0\"",
            "eth0\n-A INPUT",
            "eth 0",
            "-eth0",
        ] {
            let mut r = forward(8080, "100.115.92.130");
            r.input_ifname = bad.into();
            refused(&r, "input_ifname");
        }
        let mut r = forward(8080, "100.115.92.130");
        r.input_dst_ip = "1.2.3.4 -j ACCEPT".into();
        refused(&r, "input_dst_ip");
    }

    #[test]
    fn junk_in_the_fields_access_and_lockdown_do_not_use_is_refused() {
        for ty in [RuleType::Access, RuleType::Lockdown] {
            let base = ModifyPortRuleRequest {
                op: Operation::Create as i32,
                r#type: ty as i32,
                proto: Protocol::Tcp as i32,
                input_dst_port: 8080,
                ..Default::default()
            };
            let mut r = base.clone();
            r.input_dst_ip = "1.2.3.4 -j ACCEPT".into();
            refused(&r, "input_dst_ip");
            let mut r = base.clone();
            r.dst_ip = "$(reboot)".into();
            refused(&r, "dst_ip");
            let mut r = base.clone();
            r.dst_port = 65536;
            refused(&r, "dst_port");
            // Well-formed values are still ignored, as by the original.
            let mut r = base.clone();
            r.input_dst_ip = "2001:db8::1".into();
            assert!(parse(&r, &policy()).is_ok(), "{ty:?}");
            let mut r = base;
            r.input_dst_ip = "192.0.2.2".into();
            r.dst_ip = "100.115.92.130".into();
            r.dst_port = 80;
            assert!(parse(&r, &policy()).is_ok(), "{ty:?}");
        }
    }

    #[test]
    fn unknown_enums_are_refused() {
        let mut r = forward(8080, "100.115.92.130");
        r.proto = 0;
        refused(&r, "proto");
        let mut r = forward(8080, "100.115.92.130");
        r.r#type = 9;
        refused(&r, "type");
        let mut r = forward(8080, "100.115.92.130");
        r.op = 0;
        refused(&r, "op");
    }

    #[test]
    fn forwarding_needs_an_interface() {
        let mut r = forward(8080, "100.115.92.130");
        r.input_ifname.clear();
        refused(&r, "needs input_ifname");
    }

    #[test]
    fn duplicates_and_taken_ports_conflict() {
        let PortOp::Create(a) = parse(&forward(8080, "100.115.92.130"), &policy()).unwrap() else {
            panic!()
        };
        let PortOp::Create(b) = parse(&forward(8080, "100.115.92.134"), &policy()).unwrap() else {
            panic!()
        };
        let active = vec![a.clone()];
        assert!(conflict(&active, &a).unwrap().contains("already exists"));
        assert!(conflict(&active, &b).unwrap().contains("already forwarded"));
        let PortOp::Create(c) = parse(&forward(8081, "100.115.92.130"), &policy()).unwrap() else {
            panic!()
        };
        assert!(conflict(&active, &c).is_none());
    }

    #[test]
    fn lockdown_rejects_everyone_but_the_allowed_uid() {
        let req = ModifyPortRuleRequest {
            op: Operation::Create as i32,
            r#type: RuleType::Lockdown as i32,
            proto: Protocol::Udp as i32,
            input_dst_port: 5353,
            ..Default::default()
        };
        let PortOp::Create(rule) = parse(&req, &policy()).unwrap() else {
            panic!()
        };
        let text = patchpanel_firewall::render::render(
            &batch(&rule, &policy()).unwrap(),
            patchpanel_firewall::Family::V6,
        );
        assert!(text.contains("--uid-owner 1000"), "{text}");
        assert!(text.contains("-j REJECT"), "{text}");
    }
}
