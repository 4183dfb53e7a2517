//! Guest policy: ARC (container or VM), Termina, Parallels, Bruschetta and
//! Borealis VMs
//! (upstream-core §4.7, §4.8). Pure: given state and a request, choose
//! names, addresses and MACs and turn them into datapath plans; the manager
//! ([`crate::guest_service`]) carries the plans to the writer.
//!
//! * ARC holds six address configs ("slots") for as long as it runs: slot 0
//!   is the management network (`arcbr0` 100.115.92.1 <-> `arc0`
//!   100.115.92.2), slots 1–5 serve uplinks: two for Ethernet, two for
//!   Wi-Fi, one for cellular, as upstream. Each uplink gets a bridge
//!   `arc_<uplink>` with the slot's host address and, for the container, a
//!   veth into the container named after the uplink; for ARCVM, the slot's
//!   TAP (all six are made at start, in slot order, so the VM sees them as
//!   `eth0`..`eth5`). ARC's traffic is pinned to the uplink it came in on,
//!   and unsolicited inbound traffic on that uplink is sent to ARC.
//! * A Termina VM gets a TAP with the host address of a /30 and an LXD /28
//!   routed through the VM; a Parallels VM a TAP on a /29 of
//!   100.115.93.0/24 (an explicit index keeps its subnet and MAC across
//!   runs). Bruschetta and Borealis take a /30 of Termina's pool without
//!   an LXD subnet; Bruschetta is isolated (upstream-clients §3.5). VM
//!   traffic follows the default network.
//!
//! `arc`, `vm`, `names` and `proto` hold the parts; everything is
//! re-exported here.

use patchpanel_ipc::IfName;

use crate::error::CallError;

mod arc;
mod arc_bridges;
mod names;
mod proto;
mod vm;

pub use arc::*;
pub use arc_bridges::*;
pub use names::*;
pub use proto::*;
pub use vm::*;

fn failed(what: &str, e: impl std::fmt::Display) -> CallError {
    CallError::Failed(format!("{what}: {e}"))
}

fn ifname(name: &str) -> Result<IfName, CallError> {
    IfName::new(name).map_err(|e| failed("interface name", e))
}

#[cfg(test)]
pub(crate) mod test_support {
    pub use super::*;
    pub use patchpanel_addr::AddressManager;
    use patchpanel_addr::SeededRandom;
    pub use patchpanel_ipc::datapath::{Plan, Step};
    pub use patchpanel_ipc::NetnsName;
    pub use patchpanel_uplinks::{Technology, Uplink};

    pub fn addrs() -> AddressManager {
        AddressManager::new().with_random_source(Box::new(SeededRandom::new(11)))
    }

    pub fn uplink(name: &str, ifindex: u32, technology: Technology) -> Uplink {
        Uplink {
            name: IfName::new(name).unwrap(),
            ifindex,
            up: true,
            ipv4: vec![],
            ipv6: vec![],
            gateway4: None,
            technology,
        }
    }

    pub fn container() -> ArcKind {
        ArcKind::Container {
            pid: 4242,
            netns: NetnsName::new("pp-arc_netns").unwrap(),
        }
    }

    pub fn kinds(plan: &Plan) -> Vec<&'static str> {
        plan.steps
            .iter()
            .map(|s| match s {
                Step::AttachNetns { .. } => "attach",
                Step::CreateVeth { .. } => "veth",
                Step::CreateTap { .. } => "tap",
                Step::CreateBridge { .. } => "bridge",
                Step::AddAddress { .. } => "addr",
                Step::LinkUp { .. } => "up",
                Step::SetMaster { .. } => "master",
                Step::AddRoute { .. } => "route",
                Step::DeleteRoute { .. } => "delroute",
                Step::Firewall(_) => "firewall",
                Step::DeleteLink { .. } => "dellink",
                Step::DeleteNetns { .. } => "delnetns",
                Step::ExpectLink { .. } => "expect",
                _ => "other",
            })
            .collect()
    }

    /// The links `plan` deletes (`"dellink"`) or expects (`"expect"`), in
    /// order.
    pub fn links_of<'a>(plan: &'a Plan, kind: &str) -> Vec<&'a str> {
        plan.steps
            .iter()
            .filter_map(|s| match (s, kind) {
                (Step::DeleteLink { name, .. }, "dellink") => Some(name.as_str()),
                (Step::ExpectLink { name, .. }, "expect") => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }
}
