//! Previous snapshot + new snapshot → events. Pure, so that both sources
//! report changes the same way and the rules are tested without a kernel.

use std::collections::BTreeMap;

use crate::{IfName, Uplink, UplinkEvent};

/// The uplinks and the default network at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub uplinks: BTreeMap<IfName, Uplink>,
    /// Always a key of `uplinks` (see [`Snapshot::new`]).
    pub default: Option<IfName>,
}

impl Snapshot {
    /// Builds a snapshot; a default that is not among `uplinks` becomes
    /// `None` (shill may name a device the kernel does not have yet).
    pub fn new(uplinks: impl IntoIterator<Item = Uplink>, default: Option<IfName>) -> Snapshot {
        let uplinks: BTreeMap<IfName, Uplink> =
            uplinks.into_iter().map(|u| (u.name.clone(), u)).collect();
        let default = default.filter(|d| uplinks.contains_key(d));
        Snapshot { uplinks, default }
    }

    /// The default uplink, if any.
    pub fn default_uplink(&self) -> Option<&Uplink> {
        self.default.as_ref().and_then(|d| self.uplinks.get(d))
    }
}

/// What a consumer holding `prev` must apply to reach `next`: every
/// `Removed`, then every `Added`, then every `Changed` (each by name), then
/// at most one `DefaultChanged`.
///
/// An uplink whose ifindex changed is a new link that reuses a name: it is
/// `Removed` and `Added`. The default is identified by name *and* ifindex,
/// so when the default uplink comes back with a new ifindex `DefaultChanged`
/// names it again.
pub fn diff(prev: &Snapshot, next: &Snapshot) -> Vec<UplinkEvent> {
    let mut removed = Vec::new();
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for (name, old) in &prev.uplinks {
        match next.uplinks.get(name) {
            None => removed.push(UplinkEvent::Removed(old.clone())),
            Some(new) if new.ifindex != old.ifindex => {
                removed.push(UplinkEvent::Removed(old.clone()));
                added.push(UplinkEvent::Added(new.clone()));
            }
            Some(new) if new != old => changed.push(UplinkEvent::Changed(new.clone())),
            Some(_) => {}
        }
    }
    for (name, new) in &next.uplinks {
        if !prev.uplinks.contains_key(name) {
            added.push(UplinkEvent::Added(new.clone()));
        }
    }
    let identity = |s: &Snapshot| s.default_uplink().map(|u| (u.name.clone(), u.ifindex));
    let mut events = removed;
    events.append(&mut added);
    events.append(&mut changed);
    if identity(prev) != identity(next) {
        events.push(UplinkEvent::DefaultChanged(next.default.clone()));
    }
    events
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::Technology;

    fn uplink(name: &str, ifindex: u32) -> Uplink {
        Uplink {
            name: IfName::new(name).unwrap(),
            ifindex,
            up: true,
            ipv4: vec![],
            ipv6: vec![],
            gateway4: None,
            technology: Technology::from_ifname(name),
        }
    }

    fn name(n: &str) -> IfName {
        IfName::new(n).unwrap()
    }

    #[test]
    fn identical_snapshots_produce_no_events() {
        let s = Snapshot::new([uplink("eth0", 2), uplink("wlan0", 3)], Some(name("eth0")));

        assert_eq!(diff(&s, &s.clone()), vec![]);
    }

    #[test]
    fn first_snapshot_reports_every_uplink_added_then_the_default() {
        let next = Snapshot::new([uplink("wlan0", 3), uplink("eth0", 2)], Some(name("wlan0")));

        let events = diff(&Snapshot::default(), &next);

        assert_eq!(
            events,
            vec![
                UplinkEvent::Added(uplink("eth0", 2)),
                UplinkEvent::Added(uplink("wlan0", 3)),
                UplinkEvent::DefaultChanged(Some(name("wlan0"))),
            ]
        );
    }

    #[test]
    fn removing_the_default_uplink_reports_removed_then_no_default() {
        let prev = Snapshot::new([uplink("eth0", 2)], Some(name("eth0")));

        let events = diff(&prev, &Snapshot::default());

        assert_eq!(
            events,
            vec![
                UplinkEvent::Removed(uplink("eth0", 2)),
                UplinkEvent::DefaultChanged(None),
            ]
        );
    }

    #[test]
    fn default_moves_to_the_remaining_uplink_after_the_removal() {
        let prev = Snapshot::new([uplink("eth0", 2), uplink("wlan0", 3)], Some(name("eth0")));
        let next = Snapshot::new([uplink("wlan0", 3)], Some(name("wlan0")));

        let events = diff(&prev, &next);

        assert_eq!(
            events,
            vec![
                UplinkEvent::Removed(uplink("eth0", 2)),
                UplinkEvent::DefaultChanged(Some(name("wlan0"))),
            ]
        );
    }

    #[test]
    fn a_new_ifindex_is_a_removal_and_an_addition() {
        let prev = Snapshot::new([uplink("eth0", 2)], None);
        let next = Snapshot::new([uplink("eth0", 7)], None);

        let events = diff(&prev, &next);

        assert_eq!(
            events,
            vec![
                UplinkEvent::Removed(uplink("eth0", 2)),
                UplinkEvent::Added(uplink("eth0", 7)),
            ]
        );
    }

    #[test]
    fn default_uplink_back_with_a_new_ifindex_is_named_default_again() {
        let prev = Snapshot::new([uplink("eth0", 2)], Some(name("eth0")));
        let next = Snapshot::new([uplink("eth0", 7)], Some(name("eth0")));

        let events = diff(&prev, &next);

        assert_eq!(
            events,
            vec![
                UplinkEvent::Removed(uplink("eth0", 2)),
                UplinkEvent::Added(uplink("eth0", 7)),
                UplinkEvent::DefaultChanged(Some(name("eth0"))),
            ]
        );
    }

    #[test]
    fn address_up_state_and_gateway_changes_are_reported_as_changed() {
        let prev = Snapshot::new([uplink("eth0", 2), uplink("wlan0", 3)], None);
        let mut eth0 = uplink("eth0", 2);
        eth0.ipv4 = vec![(Ipv4Addr::new(192, 168, 1, 2), 24)];
        eth0.gateway4 = Some(Ipv4Addr::new(192, 168, 1, 1));
        let mut wlan0 = uplink("wlan0", 3);
        wlan0.up = false;
        let next = Snapshot::new([eth0.clone(), wlan0.clone()], None);

        let events = diff(&prev, &next);

        assert_eq!(
            events,
            vec![UplinkEvent::Changed(eth0), UplinkEvent::Changed(wlan0)]
        );
    }

    #[test]
    fn removals_come_before_additions_and_changes() {
        let prev = Snapshot::new([uplink("eth0", 2), uplink("wlan0", 3)], None);
        let mut eth0 = uplink("eth0", 2);
        eth0.up = false;
        let next = Snapshot::new([eth0.clone(), uplink("usb0", 9)], None);

        let events = diff(&prev, &next);

        assert_eq!(
            events,
            vec![
                UplinkEvent::Removed(uplink("wlan0", 3)),
                UplinkEvent::Added(uplink("usb0", 9)),
                UplinkEvent::Changed(eth0),
            ]
        );
    }

    #[test]
    fn a_default_that_is_not_an_uplink_is_no_default() {
        let s = Snapshot::new([uplink("eth0", 2)], Some(name("wlan0")));

        assert_eq!(s.default, None);
        assert_eq!(
            diff(&Snapshot::default(), &s),
            vec![UplinkEvent::Added(uplink("eth0", 2))]
        );
    }
}
