//! The manager's view of the host's uplinks, kept up to date from an
//! [`patchpanel_uplinks::UplinkSource`] (shill or netlink).

use std::collections::BTreeMap;

use patchpanel_uplinks::{Uplink, UplinkEvent};

#[derive(Debug, Default, Clone)]
pub struct UplinkView {
    uplinks: BTreeMap<String, Uplink>,
    default: Option<String>,
}

impl UplinkView {
    pub fn get(&self, name: &str) -> Option<&Uplink> {
        self.uplinks.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.uplinks.keys().cloned().collect()
    }

    pub fn all(&self) -> impl Iterator<Item = &Uplink> {
        self.uplinks.values()
    }

    pub fn default_uplink(&self) -> Option<&Uplink> {
        self.default.as_ref().and_then(|d| self.uplinks.get(d))
    }

    /// The 0-based rank used for rule priorities: the default network
    /// first, then the others by ifindex (from 0 when there is no default).
    pub fn rank(&self, name: &str) -> u32 {
        let default = self.default_uplink().map(|u| u.name.as_str());
        if default == Some(name) {
            return 0;
        }
        let mut others: Vec<&Uplink> = self
            .uplinks
            .values()
            .filter(|u| Some(u.name.as_str()) != default)
            .collect();
        others.sort_by_key(|u| u.ifindex);
        let first = u32::from(default.is_some());
        others
            .iter()
            .position(|u| u.name.as_str() == name)
            .map(|p| p as u32 + first)
            .unwrap_or(0)
    }

    pub fn apply(&mut self, event: &UplinkEvent) {
        match event {
            UplinkEvent::Added(u) | UplinkEvent::Changed(u) => {
                self.uplinks.insert(u.name.to_string(), u.clone());
            }
            UplinkEvent::Removed(u) => {
                self.uplinks.remove(u.name.as_str());
            }
            UplinkEvent::DefaultChanged(d) => self.default = d.as_ref().map(|d| d.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use patchpanel_ipc::IfName;
    use patchpanel_uplinks::Technology;

    use super::*;

    fn view(uplinks: &[(&str, u32)], default: Option<&str>) -> UplinkView {
        let mut v = UplinkView::default();
        for (name, ifindex) in uplinks {
            v.apply(&UplinkEvent::Added(Uplink {
                name: IfName::new(name).unwrap(),
                ifindex: *ifindex,
                up: true,
                ipv4: vec![],
                ipv6: vec![],
                gateway4: None,
                technology: Technology::Ethernet,
            }));
        }
        v.apply(&UplinkEvent::DefaultChanged(
            default.map(|d| IfName::new(d).unwrap()),
        ));
        v
    }

    #[test]
    fn the_default_ranks_first_then_the_others_by_ifindex() {
        let v = view(&[("eth0", 2), ("wlan0", 3), ("usb0", 4)], Some("wlan0"));
        assert_eq!(v.rank("wlan0"), 0);
        assert_eq!(v.rank("eth0"), 1);
        assert_eq!(v.rank("usb0"), 2);
    }

    #[test]
    fn without_a_default_ranks_start_at_zero() {
        let v = view(&[("eth0", 2), ("wlan0", 3)], None);
        assert_eq!(v.rank("eth0"), 0);
        assert_eq!(v.rank("wlan0"), 1);
    }

    #[test]
    fn a_default_that_is_not_an_uplink_takes_no_rank() {
        let v = view(&[("eth0", 2), ("wlan0", 3)], Some("wwan0"));
        assert_eq!(v.rank("eth0"), 0);
        assert_eq!(v.rank("wlan0"), 1);
    }
}
