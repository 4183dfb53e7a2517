//! Kernel tests for links: veth pairs (also across namespaces), bridges,
//! flags, MACs, aliases, deletion. Each runs in its own network namespace.

mod common;

use std::os::fd::AsFd;

use common::{flags, in_fresh_netns, ip_json, ip_json_in, NetnsDir};
use patchpanel_rtnl::{netns, Rtnl};

#[test]
fn fresh_namespace_has_only_loopback() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        let links = rtnl.links().unwrap();
        assert_eq!(links.len(), 1, "{links:?}");
        assert_eq!(links[0].name, "lo");
        assert_eq!(ip_json(&["link", "show"]).as_array().unwrap().len(), 1);
    });
}

#[test]
fn veth_peer_is_created_inside_the_target_namespace_with_its_alias() {
    in_fresh_netns(|| {
        let dir = NetnsDir::new();
        let ns = netns::create_named(&dir.path, "guest").unwrap();
        let rtnl = Rtnl::new().unwrap();

        rtnl.create_veth("vh0", "vp0", Some(ns.as_fd()), "patchpanel")
            .unwrap();

        let host = rtnl.link("vh0").unwrap().expect("host end exists");
        assert_eq!(host.alias.as_deref(), Some("patchpanel"));
        assert_eq!(host.kind.as_deref(), Some("veth"));
        assert_eq!(rtnl.link("vp0").unwrap(), None, "peer leaked into host ns");

        let inside = Rtnl::in_netns(ns.as_fd()).unwrap();
        let peer = inside
            .link("vp0")
            .unwrap()
            .expect("peer exists in guest ns");
        assert_eq!(peer.alias.as_deref(), Some("patchpanel"));
        assert_eq!(peer.kind.as_deref(), Some("veth"));

        // Independent check from inside the namespace.
        let shown = ip_json_in(&dir.path.join("guest"), &["link", "show", "vp0"]);
        assert_eq!(shown[0]["ifalias"], "patchpanel");
        let host_shown = ip_json(&["link", "show", "vh0"]);
        assert_eq!(host_shown[0]["ifalias"], "patchpanel");
    });
}

#[test]
fn veth_in_the_same_namespace_has_both_ends_labelled() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        rtnl.create_veth("va", "vb", None, "patchpanel").unwrap();
        for name in ["va", "vb"] {
            let l = rtnl.link(name).unwrap().unwrap();
            assert_eq!(l.alias.as_deref(), Some("patchpanel"), "{name}");
        }
    });
}

#[test]
fn creating_an_existing_link_fails_with_eexist_and_names_it() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        rtnl.create_bridge("br0", "patchpanel").unwrap();
        let err = rtnl.create_bridge("br0", "patchpanel").unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
        assert!(err.to_string().contains("br0"), "{err}");
    });
}

#[test]
fn up_down_mac_and_multicast_flags_reach_the_kernel() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        rtnl.create_veth("vh0", "vp0", None, "pp").unwrap();

        rtnl.set_up("vh0", true).unwrap();
        rtnl.set_mac("vh0", [0x02, 0x11, 0x22, 0x33, 0x44, 0x55])
            .unwrap();
        rtnl.set_multicast("vh0", false).unwrap();
        rtnl.set_allmulti("vh0", true).unwrap();

        let l = rtnl.link("vh0").unwrap().unwrap();
        assert!(l.up && !l.multicast && l.allmulti, "{l:?}");
        assert_eq!(l.mac, Some([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]));
        let shown = &ip_json(&["link", "show", "vh0"])[0];
        let f = flags(shown);
        assert!(f.contains(&"UP".to_string()), "{f:?}");
        assert!(f.contains(&"ALLMULTI".to_string()), "{f:?}");
        assert!(!f.contains(&"MULTICAST".to_string()), "{f:?}");
        assert_eq!(shown["address"], "02:11:22:33:44:55");

        // Carrier appears once the peer is up too.
        assert!(!l.running);
        rtnl.set_up("vp0", true).unwrap();
        common::eventually("carrier on vh0", || {
            rtnl.link("vh0").unwrap().unwrap().running
        });

        rtnl.set_up("vh0", false).unwrap();
        rtnl.set_multicast("vh0", true).unwrap();
        let l = rtnl.link("vh0").unwrap().unwrap();
        assert!(!l.up && l.multicast, "{l:?}");
        assert!(!flags(&ip_json(&["link", "show", "vh0"])[0]).contains(&"UP".to_string()));
    });
}

#[test]
fn alias_can_be_changed_and_cleared() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        rtnl.create_bridge("br0", "first").unwrap();
        rtnl.set_alias("br0", "second").unwrap();
        assert_eq!(
            rtnl.link("br0").unwrap().unwrap().alias.as_deref(),
            Some("second")
        );
        rtnl.set_alias("br0", "").unwrap();
        assert_eq!(rtnl.link("br0").unwrap().unwrap().alias, None);
        assert!(ip_json(&["link", "show", "br0"])[0]
            .get("ifalias")
            .is_none());
    });
}

#[test]
fn mtu_is_set() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        rtnl.create_veth("vh0", "vp0", None, "pp").unwrap();
        rtnl.set_mtu("vh0", 1400).unwrap();
        assert_eq!(rtnl.link("vh0").unwrap().unwrap().mtu, 1400);
        assert_eq!(ip_json(&["link", "show", "vh0"])[0]["mtu"], 1400);
    });
}

#[test]
fn veth_is_enslaved_to_a_bridge_and_released() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        rtnl.create_bridge("br0", "patchpanel").unwrap();
        rtnl.create_veth("vh0", "vp0", None, "patchpanel").unwrap();
        let br = rtnl.link("br0").unwrap().unwrap();
        assert_eq!(br.kind.as_deref(), Some("bridge"));

        rtnl.set_master("vh0", Some("br0")).unwrap();
        assert_eq!(rtnl.link("vh0").unwrap().unwrap().master, Some(br.index));
        assert_eq!(ip_json(&["link", "show", "vh0"])[0]["master"], "br0");

        rtnl.set_master("vh0", None).unwrap();
        assert_eq!(rtnl.link("vh0").unwrap().unwrap().master, None);
        assert!(ip_json(&["link", "show", "vh0"])[0].get("master").is_none());
    });
}

#[test]
fn set_master_to_a_missing_bridge_is_no_such_link() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        rtnl.create_veth("vh0", "vp0", None, "pp").unwrap();
        let err = rtnl.set_master("vh0", Some("nobr")).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENODEV));
        assert!(err.to_string().contains("nobr"), "{err}");
    });
}

#[test]
fn deleting_a_link_reports_whether_it_existed() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        assert!(!rtnl.delete_link("nope0").unwrap());
        rtnl.create_veth("vh0", "vp0", None, "pp").unwrap();
        assert!(rtnl.delete_link("vh0").unwrap());
        // Deleting one end removed both.
        assert_eq!(rtnl.link("vh0").unwrap(), None);
        assert_eq!(rtnl.link("vp0").unwrap(), None);
        assert_eq!(ip_json(&["link", "show"]).as_array().unwrap().len(), 1);
        assert!(!rtnl.delete_link("vh0").unwrap());
    });
}

#[test]
fn a_group_delete_removes_the_links_of_that_group_and_no_other() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        for i in 0..3 {
            rtnl.create_veth(&format!("ga{i}"), &format!("gb{i}"), None, "patchpanel")
                .unwrap();
        }
        rtnl.create_bridge("gbr", "patchpanel").unwrap();
        let group = 0x7070_0001;
        for name in ["ga0", "ga1", "gbr"] {
            let index = rtnl.ifindex(name).unwrap();
            assert!(rtnl.set_group_index(index, group).unwrap(), "{name}");
            assert_eq!(rtnl.link(name).unwrap().unwrap().group, group);
        }
        assert_eq!(ip_json(&["link", "show", "gbr"])[0]["group"], "1886388225");
        assert!(
            !rtnl.set_group_index(999_999, group).unwrap(),
            "no such link"
        );

        assert!(rtnl.delete_link_group(group).unwrap());
        let mut left: Vec<String> = rtnl.links().unwrap().into_iter().map(|l| l.name).collect();
        left.sort();
        // A veth's peer goes with it; ga2 and its peer were not in the group.
        assert_eq!(left, ["ga2", "gb2", "lo"]);
        assert!(!rtnl.delete_link_group(group).unwrap(), "an empty group");
        assert!(
            rtnl.delete_link_group(0).is_err(),
            "group 0 is every link's"
        );
        assert_eq!(rtnl.link("ga2").unwrap().unwrap().group, 0);
    });
}

#[test]
fn changing_a_missing_link_fails_with_enodev() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        let err = rtnl.set_up("ghost0", true).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
        assert!(err.to_string().contains("ghost0"), "{err}");
    });
}

#[test]
fn invalid_names_are_refused_before_reaching_the_kernel() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        for bad in ["", "a/b", "waytoolonginterfacename"] {
            let err = rtnl.create_bridge(bad, "pp").unwrap_err();
            assert!(
                matches!(err, patchpanel_rtnl::RtnlError::Invalid { .. }),
                "{err}"
            );
        }
    });
}

#[test]
fn socket_made_in_another_namespace_acts_there_and_leaves_the_caller_alone() {
    in_fresh_netns(|| {
        let dir = NetnsDir::new();
        let ns = netns::create_named(&dir.path, "other").unwrap();
        let before = netns::ns_id(netns::open_current().unwrap().as_fd()).unwrap();

        let there = Rtnl::in_netns(ns.as_fd()).unwrap();
        there.create_bridge("brx", "pp").unwrap();

        let after = netns::ns_id(netns::open_current().unwrap().as_fd()).unwrap();
        assert_eq!(before, after, "calling thread changed namespace");
        assert_ne!(before, netns::ns_id(ns.as_fd()).unwrap());
        assert!(there.link("brx").unwrap().is_some());
        assert!(Rtnl::new().unwrap().link("brx").unwrap().is_none());
        let inside = ip_json_in(&dir.path.join("other"), &["link", "show", "brx"]);
        assert_eq!(inside[0]["ifname"], "brx");
    });
}

#[test]
fn link_moved_to_another_namespace_disappears_here() {
    in_fresh_netns(|| {
        let dir = NetnsDir::new();
        let ns = netns::create_named(&dir.path, "dst").unwrap();
        let rtnl = Rtnl::new().unwrap();
        rtnl.create_veth("vh0", "vp0", None, "pp").unwrap();
        rtnl.move_to_netns("vp0", ns.as_fd()).unwrap();
        assert!(rtnl.link("vp0").unwrap().is_none());
        assert!(Rtnl::in_netns(ns.as_fd())
            .unwrap()
            .link("vp0")
            .unwrap()
            .is_some());
    });
}
