//! mDNS and SSDP for guests through the mcast-forwarder helper (DESIGN §8):
//! which guest links are bridged to which uplink, and with which addresses.
//!
//! ARC's bridges follow their own uplink, VM TAPs the default network. Each
//! pair carries the guest's private IPv4 address and the uplink's current
//! one, so the helper can rewrite A records in the guest's mDNS answers
//! (the SNAT traversal); a changed uplink address re-sends the pair. Pairs
//! are in the helper's replay log: a respawned helper resumes forwarding
//! without any D-Bus call.
//!
//! Inbound forwarding to ARC on a Wi-Fi uplink follows Android's Wi-Fi
//! multicast lock (`NotifyAndroidWifiMulticastLockChange`, off until Chrome
//! says it is held, as upstream): without it ARC still sends, but receives
//! nothing from the LAN, so Android's Wi-Fi can sleep. A change re-sends
//! the pair, whose replay entry then carries it.
//!
//! The policy ([`wanted_pairs`], [`McastForwarding::diff`]) is pure; the
//! manager only sends what the diff returns.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use log::{info, warn};
use patchpanel_ipc::{IfName, McastPair, Request};
use patchpanel_sandbox::Process;

use patchpanel_uplinks::Technology;

use crate::env::{GuestView, HelperLink};
use crate::guests::{ArcGuest, VmGuest};
use crate::uplinks::UplinkView;

/// Every guest link that should be forwarded now, by downlink name.
/// `wifi_multicast_lock`: whether Android holds the Wi-Fi multicast lock.
pub fn wanted_pairs(
    uplinks: &UplinkView,
    arc: Option<&ArcGuest>,
    vms: &[VmGuest],
    wifi_multicast_lock: bool,
) -> BTreeMap<IfName, McastPair> {
    // An uplink without IPv4 (IPv6-only network) still forwards IPv6.
    let first_v4 = |name: &IfName| -> Option<(IfName, Option<[u8; 4]>)> {
        let u = uplinks.get(name.as_str())?;
        Some((
            u.name.clone(),
            u.ipv4.first().map(|(addr, _)| addr.octets()),
        ))
    };
    let mut wanted = BTreeMap::new();
    if let Some(arc) = arc {
        for device in arc.devices.values() {
            let Some(up) = &device.uplink else { continue };
            let Some((uplink, uplink_v4)) = first_v4(&up.name) else {
                continue;
            };
            let guest = arc
                .slots
                .get(device.slot as usize)
                .map(|s| s.subnet.guest());
            let wifi = uplinks
                .get(up.name.as_str())
                .is_some_and(|u| u.technology == Technology::Wifi);
            let mut p = pair(uplink, uplink_v4, device.bridge.clone(), guest);
            p.inbound = !wifi || wifi_multicast_lock;
            wanted.insert(device.bridge.clone(), p);
        }
    }
    if let Some((uplink, uplink_v4)) = uplinks.default_uplink().and_then(|u| first_v4(&u.name)) {
        for vm in vms {
            wanted.insert(
                vm.tap.clone(),
                pair(
                    uplink.clone(),
                    uplink_v4,
                    vm.tap.clone(),
                    Some(vm.subnet.guest()),
                ),
            );
        }
    }
    wanted
}

fn pair(
    uplink: IfName,
    uplink_v4: Option<[u8; 4]>,
    downlink: IfName,
    guest: Option<Ipv4Addr>,
) -> McastPair {
    McastPair {
        uplink,
        uplink_ipv4: uplink_v4,
        downlink,
        guest_ipv4: guest.map(|g| g.octets()),
        inbound: true,
        outbound: true,
    }
}

/// What the helper is forwarding, as the manager told it.
#[derive(Debug, Default)]
pub struct McastForwarding {
    active: BTreeMap<IfName, McastPair>,
}

/// One change to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McastChange {
    Start(McastPair),
    Stop(McastPair),
}

impl McastForwarding {
    /// Stops first (a re-pointed downlink stops on its old uplink), then
    /// starts what is new or changed.
    pub fn diff(&self, wanted: &BTreeMap<IfName, McastPair>) -> Vec<McastChange> {
        let mut changes: Vec<McastChange> = self
            .active
            .iter()
            .filter(|(k, p)| wanted.get(*k) != Some(*p))
            .map(|(_, p)| McastChange::Stop(p.clone()))
            .collect();
        changes.extend(
            wanted
                .iter()
                .filter(|(k, p)| self.active.get(*k) != Some(*p))
                .map(|(_, p)| McastChange::Start(p.clone())),
        );
        changes
    }
}

fn replay_key(pair: &McastPair) -> String {
    format!("mcast {}", pair.downlink)
}

impl McastForwarding {
    /// Brings the helper's pairs in line with guests and uplinks.
    pub fn reconcile(
        &mut self,
        guests: &GuestView<'_>,
        uplinks: &UplinkView,
        wifi_multicast_lock: bool,
        link: &mut dyn HelperLink,
    ) {
        let wanted = wanted_pairs(uplinks, guests.arc, guests.vms, wifi_multicast_lock);
        for change in self.diff(&wanted) {
            match change {
                McastChange::Stop(pair) => {
                    link.forget_replay(Process::McastForwarder, &replay_key(&pair));
                    self.active.remove(&pair.downlink);
                    let request = Request::McastStop {
                        uplink: pair.uplink.clone(),
                        downlink: pair.downlink.clone(),
                    };
                    // Not waited for: leaving the groups of a link the
                    // writer is deleting waits for the kernel's rtnl lock,
                    // and nothing here depends on it. A failure comes back
                    // to the loop and is logged there.
                    match link.send_waiting(Process::McastForwarder, request) {
                        Ok(_) => info!(
                            "multicast forwarding {} <-> {} stopped",
                            pair.uplink, pair.downlink
                        ),
                        Err(e) => warn!(
                            "multicast forwarding {} <-> {}: stop: {e:?}",
                            pair.uplink, pair.downlink
                        ),
                    }
                }
                McastChange::Start(pair) => {
                    let request = Request::McastStart(pair.clone());
                    // Recorded first: a helper that is restarting gets it on replay.
                    link.record_replay(
                        Process::McastForwarder,
                        &replay_key(&pair),
                        request.clone(),
                        Vec::new(),
                    );
                    self.active.insert(pair.downlink.clone(), pair.clone());
                    // Not waited for either (as the ND proxy's start): a
                    // failure comes back to the loop and is logged there.
                    match link.send_waiting(Process::McastForwarder, request) {
                        Ok(_) => info!(
                            "multicast forwarding (mDNS, SSDP) {} {} {} started",
                            pair.uplink,
                            if pair.inbound { "<->" } else { "<-" },
                            pair.downlink
                        ),
                        Err(e) => warn!(
                            "multicast forwarding {} <-> {}: {e:?} (retried when the helper restarts)",
                            pair.uplink, pair.downlink
                        ),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> IfName {
        IfName::new(s).expect("name")
    }

    fn p(down: &str, uplink_v4: [u8; 4]) -> McastPair {
        pair(
            name("eth0"),
            Some(uplink_v4),
            name(down),
            Some(Ipv4Addr::new(100, 115, 92, 26)),
        )
    }

    #[test]
    fn a_new_guest_starts_and_a_gone_guest_stops() {
        let mut fwd = McastForwarding::default();
        let wanted: BTreeMap<_, _> = [(name("vmtap0"), p("vmtap0", [192, 0, 2, 1]))].into();
        assert_eq!(
            fwd.diff(&wanted),
            vec![McastChange::Start(p("vmtap0", [192, 0, 2, 1]))]
        );
        fwd.active = wanted.clone();
        assert_eq!(fwd.diff(&wanted), vec![]);
        assert_eq!(
            fwd.diff(&BTreeMap::new()),
            vec![McastChange::Stop(p("vmtap0", [192, 0, 2, 1]))]
        );
    }

    #[test]
    fn a_new_uplink_address_stops_then_restarts_the_pair() {
        let fwd = McastForwarding {
            active: [(name("vmtap0"), p("vmtap0", [192, 0, 2, 1]))].into(),
        };
        let wanted: BTreeMap<_, _> = [(name("vmtap0"), p("vmtap0", [192, 0, 2, 9]))].into();
        assert_eq!(
            fwd.diff(&wanted),
            vec![
                McastChange::Stop(p("vmtap0", [192, 0, 2, 1])),
                McastChange::Start(p("vmtap0", [192, 0, 2, 9])),
            ]
        );
    }

    #[test]
    fn inbound_to_arc_on_wifi_follows_the_multicast_lock() {
        use crate::guests::test_support::*;
        let mut a = addrs();
        let mut arc = arc_allocate(container(), &mut a, &Default::default()).unwrap();
        let mut view = UplinkView::default();
        for (name, index, tech) in [
            ("eth0", 2, Technology::Ethernet),
            ("wlan0", 3, Technology::Wifi),
        ] {
            let u = uplink(name, index, tech);
            arc.devices
                .insert(name.into(), arc_device(&arc, &u, &mut a).unwrap().unwrap());
            view.apply(&patchpanel_uplinks::UplinkEvent::Added(u));
        }
        for held in [false, true] {
            let wanted = wanted_pairs(&view, Some(&arc), &[], held);
            let eth = &wanted[&name("arc_eth0")];
            let wifi = &wanted[&name("arc_wlan0")];
            assert!(eth.inbound && eth.outbound, "Ethernet is not affected");
            assert_eq!(wifi.inbound, held, "Wi-Fi inbound follows the lock");
            assert!(wifi.outbound, "ARC always sends");
        }
        // A change re-sends the pair (the replay log then carries it).
        let fwd = McastForwarding {
            active: wanted_pairs(&view, Some(&arc), &[], false),
        };
        let changes = fwd.diff(&wanted_pairs(&view, Some(&arc), &[], true));
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(
            matches!(&changes[1], McastChange::Start(p) if p.inbound && p.downlink == name("arc_wlan0"))
        );
    }

    #[test]
    fn nothing_is_forwarded_without_uplinks() {
        let wanted = wanted_pairs(&UplinkView::default(), None, &[], false);
        assert!(wanted.is_empty());
    }
}
