//! Names and ids: how ARC's links and VM TAPs are named, and which ids a
//! request may carry.

use std::collections::BTreeSet;

use patchpanel_ipc::IfName;

use crate::error::CallError;

use super::arc::ArcGuest;
use super::vm::VmGuest;

/// VM TAPs are `vmtap<N>`, lowest free N first.
pub const TAP_PREFIX: &str = "vmtap";

/// `prefix` + `ifname`, cut to 15 bytes keeping the last character (the
/// interface number, usually), as upstream names ARC's links.
pub fn prefixed_ifname(prefix: &str, ifname: &str) -> String {
    let mut name = format!("{prefix}{ifname}");
    if name.len() > IFNAME_MAX_LEN {
        name.truncate(IFNAME_MAX_LEN);
        if let Some(last) = ifname.chars().last() {
            name.pop();
            name.push(last);
        }
    }
    name
}

/// `IFNAMSIZ - 1`.
const IFNAME_MAX_LEN: usize = 15;

/// The lowest `vmtap<N>` not in `taken`.
pub fn free_tap_name(taken: &BTreeSet<String>) -> IfName {
    let mut n = 0u32;
    loop {
        let name = format!("{TAP_PREFIX}{n}");
        if !taken.contains(&name) {
            // "vmtap" + at most 10 digits fits in 15 bytes.
            if let Ok(i) = IfName::new(&name) {
                return i;
            }
        }
        n += 1;
    }
}

/// Every TAP name held by a guest.
pub fn taken_taps(arc: Option<&ArcGuest>, vms: &[VmGuest]) -> BTreeSet<String> {
    let mut taken: BTreeSet<String> = vms.iter().map(|v| v.tap.to_string()).collect();
    if let Some(arc) = arc {
        taken.extend(arc.taps().iter().map(|t| t.to_string()));
    }
    taken
}

/// A vsock context id: 0 is not one.
pub fn check_id(what: &str, id: u64) -> Result<(), CallError> {
    if id == 0 {
        return Err(CallError::InvalidArgument(format!(
            "{what} 0 is not a valid id"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_keep_their_last_character() {
        assert_eq!(prefixed_ifname("arc_", "eth0"), "arc_eth0");
        assert_eq!(prefixed_ifname("veth", "wlan0"), "vethwlan0");
        assert_eq!(
            prefixed_ifname("arc_", "enx0123456789ab"),
            "arc_enx0123456b"
        );
        assert_eq!(prefixed_ifname("arc_", "enx0123456789ab").len(), 15);
    }

    #[test]
    fn tap_names_take_the_lowest_free_number() {
        let taken: BTreeSet<String> = ["vmtap0", "vmtap2"].map(String::from).into();
        assert_eq!(free_tap_name(&taken).as_str(), "vmtap1");
        assert_eq!(free_tap_name(&BTreeSet::new()).as_str(), "vmtap0");
    }
}
