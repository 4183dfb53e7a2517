//! Kernel tests for persistent TAP devices, each in its own network
//! namespace, cross-checked with `ip -j -d`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use common::{in_fresh_netns, ip_json};
use patchpanel_rtnl::{tun, Rtnl};

#[test]
fn a_persistent_tap_outlives_its_descriptor_and_belongs_to_its_owner() {
    in_fresh_netns(|| {
        tun::create_persistent_tap("vmtap0", Some(4242)).unwrap();

        let shown = ip_json(&["-d", "link", "show", "dev", "vmtap0"]);
        let info = &shown[0]["linkinfo"];
        assert_eq!(info["info_kind"], "tun", "{shown}");
        assert_eq!(info["info_data"]["type"], "tap", "{shown}");
        assert_eq!(info["info_data"]["pi"], false, "{shown}");
        assert_eq!(info["info_data"]["persist"], true, "{shown}");
        assert_eq!(info["info_data"]["user"], 4242, "{shown}");
    });
}

#[test]
fn an_existing_device_is_never_attached_to() {
    in_fresh_netns(|| {
        tun::create_persistent_tap("vmtap1", None).unwrap();

        let e = tun::create_persistent_tap("vmtap1", None).unwrap_err();

        assert_eq!(e.errno(), Some(libc::EBUSY), "{e}");
    });
}

#[test]
fn a_tap_is_deleted_with_rtnetlink() {
    in_fresh_netns(|| {
        tun::create_persistent_tap("vmtap2", None).unwrap();
        let rtnl = Rtnl::new().unwrap();
        rtnl.set_alias("vmtap2", "patchpanel").unwrap();
        rtnl.set_mac("vmtap2", [0x42, 0x37, 0x05, 0x13, 0x17, 0x01])
            .unwrap();
        let link = rtnl.link("vmtap2").unwrap().unwrap();
        assert_eq!(link.alias.as_deref(), Some("patchpanel"));
        assert_eq!(link.mac, Some([0x42, 0x37, 0x05, 0x13, 0x17, 0x01]));
        assert_eq!(link.kind.as_deref(), Some("tun"));

        assert!(rtnl.delete_link("vmtap2").unwrap());

        assert!(rtnl.link("vmtap2").unwrap().is_none());
    });
}
