//! ARC's bridges between two runs of ARC.
//!
//! Deleting a bridge costs the kernel an RCU barrier while it holds the
//! rtnl lock (`br_multicast_dev_del`, ~26 ms each on a 2-CPU machine,
//! measured with `perf`), so an ArcShutdown that deleted ARC's four
//! bridges kept the devices listed for ~170 ms and stalled every other
//! request's link change meanwhile. A stop of ARC (ArcShutdown,
//! ArcVmShutdown, a start that replaces it) therefore keeps the bridges,
//! with their addresses and without a port, and the next start puts its
//! links on them (see [`super::arc_start_plan`]). They are deleted when
//! their uplink goes, when a start has no device for them or wants another
//! address on them, and when patchpanel stops (the stop removes every link
//! it owns). They are not in the state file: a successor after a crash
//! finds them among the links it owns and did not re-adopt, and removes
//! them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use patchpanel_ipc::datapath::{ApplyMode, Netns, Plan, Step};
use patchpanel_ipc::IfName;
use patchpanel_uplinks::Uplink;

use super::arc::{ArcDevice, ArcGuest};

/// A bridge kept from a stopped ARC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptBridge {
    pub name: IfName,
    /// The host address it carries, and its prefix length.
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// The uplink it served (`None` for arcbr0).
    pub uplink: Option<IfName>,
}

/// The bridges kept from a stopped ARC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArcBridges(pub Vec<KeptBridge>);

impl ArcBridges {
    /// Keeps the bridges of `arc`, which is being stopped with
    /// [`super::Bridges::Keep`].
    pub fn keep(&mut self, arc: &ArcGuest) {
        self.0 = bridges_of(arc, |_| true).collect();
    }

    /// Splits the kept bridges for `arc`, about to start: those it builds
    /// on (same name, same address; among `listed`, the links the kernel
    /// has), and the names of the others, to delete before. The list is
    /// emptied: what is reused belongs to the new ARC.
    pub fn take_for(
        &mut self,
        arc: &ArcGuest,
        listed: &BTreeSet<String>,
    ) -> (BTreeSet<IfName>, Vec<IfName>) {
        let wanted: Vec<KeptBridge> = bridges_of(arc, |_| true).collect();
        let mut reuse = BTreeSet::new();
        let mut delete = Vec::new();
        for bridge in std::mem::take(&mut self.0) {
            if !listed.contains(bridge.name.as_str()) {
                continue;
            }
            let same = wanted.iter().any(|w| {
                w.name == bridge.name && w.addr == bridge.addr && w.prefix_len == bridge.prefix_len
            });
            if same {
                reuse.insert(bridge.name);
            } else {
                delete.push(bridge.name);
            }
        }
        (reuse, delete)
    }

    /// After a start that failed: the bridges of `reuse` it would have
    /// built on are kept again (the plan's rollback left them as they
    /// were).
    pub fn keep_only(&mut self, arc: &ArcGuest, reuse: &BTreeSet<IfName>) {
        self.0 = bridges_of(arc, |d| reuse.contains(&d.bridge)).collect();
    }

    /// Forgets and returns the bridges whose uplink is not among
    /// `uplinks` any more.
    pub fn take_orphans<'a>(&mut self, uplinks: impl Iterator<Item = &'a Uplink>) -> Vec<IfName> {
        let names: BTreeSet<&str> = uplinks.map(|u| u.name.as_str()).collect();
        let (orphans, kept): (Vec<KeptBridge>, Vec<KeptBridge>) =
            std::mem::take(&mut self.0).into_iter().partition(|b| {
                b.uplink
                    .as_ref()
                    .is_some_and(|u| !names.contains(u.as_str()))
            });
        self.0 = kept;
        orphans.into_iter().map(|b| b.name).collect()
    }
}

/// The bridges of `arc`'s devices (arc0's first) that `which` picks, as
/// they would be kept.
fn bridges_of<'a>(
    arc: &'a ArcGuest,
    which: impl Fn(&ArcDevice) -> bool + 'a,
) -> impl Iterator<Item = KeptBridge> + 'a {
    std::iter::once(&arc.arc0)
        .chain(arc.devices.values())
        .filter(move |d| which(d))
        .filter_map(|d| kept(arc, d))
}

fn kept(arc: &ArcGuest, device: &ArcDevice) -> Option<KeptBridge> {
    let slot = arc.slots.get(device.slot as usize)?;
    Some(KeptBridge {
        name: device.bridge.clone(),
        addr: slot.subnet.host(),
        prefix_len: slot.subnet.subnet.prefix_len(),
        uplink: device.uplink.as_ref().map(|u| u.name.clone()),
    })
}

/// Deletes kept bridges. Best effort.
pub fn kept_bridges_removal_plan(names: &[IfName], label: String) -> Plan {
    Plan {
        label,
        mode: ApplyMode::BestEffort,
        steps: names
            .iter()
            .map(|name| Step::DeleteLink {
                netns: Netns::Host,
                name: name.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    fn running(a: &mut AddressManager, uplinks: &[(&str, u32, Technology)]) -> ArcGuest {
        let mut arc = arc_allocate(container(), a, &BTreeSet::new()).unwrap();
        for (name, ifindex, t) in uplinks {
            let d = arc_device(&arc, &uplink(name, *ifindex, *t), a)
                .unwrap()
                .unwrap();
            arc.devices.insert(name.to_string(), d);
        }
        arc
    }

    fn names(v: &[IfName]) -> Vec<&str> {
        v.iter().map(|n| n.as_str()).collect()
    }

    fn listed(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_stopped_arcs_bridges_carry_its_addresses_into_the_next_start() {
        let mut a = addrs();
        let first = running(
            &mut a,
            &[
                ("eth0", 2, Technology::Ethernet),
                ("wlan0", 3, Technology::Wifi),
            ],
        );
        let mut kept = ArcBridges::default();
        kept.keep(&first);
        let got: Vec<(&str, String, u8, Option<&str>)> = kept
            .0
            .iter()
            .map(|b| {
                (
                    b.name.as_str(),
                    b.addr.to_string(),
                    b.prefix_len,
                    b.uplink.as_ref().map(|u| u.as_str()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("arcbr0", "100.115.92.1".to_string(), 30, None),
                ("arc_eth0", "100.115.92.5".to_string(), 30, Some("eth0")),
                ("arc_wlan0", "100.115.92.13".to_string(), 30, Some("wlan0")),
            ]
        );
        arc_release(&first, &mut a);

        // The next ARC has eth0 only: arcbr0 and arc_eth0 are reused,
        // arc_wlan0 goes; one the kernel no longer lists is forgotten.
        let second = running(&mut a, &[("eth0", 2, Technology::Ethernet)]);
        let (reuse, delete) = kept.take_for(&second, &listed(&["arcbr0", "arc_eth0", "arc_wlan0"]));
        assert_eq!(
            reuse.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["arc_eth0", "arcbr0"]
        );
        assert_eq!(names(&delete), ["arc_wlan0"]);
        assert!(kept.0.is_empty());
        let plan = arc_start_plan(&second, &reuse, "t".into());
        assert_eq!(
            plan.steps
                .iter()
                .filter(|s| matches!(s, Step::CreateBridge { .. }))
                .count(),
            0
        );
        assert_eq!(links_of(&plan, "expect"), ["arcbr0", "arc_eth0"]);

        kept.keep(&second);
        let (reuse, delete) = kept.take_for(&second, &listed(&["arc_eth0"]));
        assert_eq!(reuse.len(), 1, "arcbr0 is not listed: made anew");
        assert!(delete.is_empty());
    }

    #[test]
    fn a_kept_bridge_with_another_address_is_deleted_not_reused() {
        let mut a = addrs();
        let first = running(
            &mut a,
            &[
                ("eth0", 2, Technology::Ethernet),
                ("eth1", 4, Technology::Ethernet),
            ],
        );
        let mut kept = ArcBridges::default();
        kept.keep(&first);
        arc_release(&first, &mut a);
        // eth1 alone now gets eth0's old slot: arc_eth1 must change address.
        let second = running(&mut a, &[("eth1", 4, Technology::Ethernet)]);
        let (reuse, delete) = kept.take_for(&second, &listed(&["arcbr0", "arc_eth0", "arc_eth1"]));
        assert_eq!(
            reuse.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["arcbr0"]
        );
        assert_eq!(names(&delete), ["arc_eth0", "arc_eth1"]);
    }

    #[test]
    fn bridges_of_uplinks_that_went_are_orphans() {
        let mut a = addrs();
        let arc = running(
            &mut a,
            &[
                ("eth0", 2, Technology::Ethernet),
                ("wlan0", 3, Technology::Wifi),
            ],
        );
        let mut kept = ArcBridges::default();
        kept.keep(&arc);
        let now = [uplink("eth0", 2, Technology::Ethernet)];
        assert_eq!(names(&kept.take_orphans(now.iter())), ["arc_wlan0"]);
        assert_eq!(kept.0.len(), 2, "arcbr0 and arc_eth0 stay");
        let plan = kept_bridges_removal_plan(&[IfName::new("arc_wlan0").unwrap()], "t".into());
        assert_eq!(plan.mode, ApplyMode::BestEffort);
        assert_eq!(kinds(&plan), ["dellink"]);
    }
}
