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
    /// first, then the others by ifindex.
    pub fn rank(&self, name: &str) -> u32 {
        if self.default.as_deref() == Some(name) {
            return 0;
        }
        let mut others: Vec<&Uplink> = self
            .uplinks
            .values()
            .filter(|u| Some(u.name.as_str()) != self.default.as_deref())
            .collect();
        others.sort_by_key(|u| u.ifindex);
        others
            .iter()
            .position(|u| u.name.as_str() == name)
            .map(|p| p as u32 + 1)
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
