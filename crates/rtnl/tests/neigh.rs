//! Kernel tests for one neighbour entry: the targeted lookup and the probe
//! (`NUD_PROBE` for a valid entry, resolution for a missing one, static
//! entries untouched). Each runs in its own network namespace.

mod common;

use std::net::IpAddr;

use common::{eventually, in_fresh_netns, ip_json, run};
use patchpanel_rtnl::neigh::Probe;
use patchpanel_rtnl::Rtnl;

fn addr(s: &str) -> IpAddr {
    s.parse().expect("test value")
}

fn state(to: &str) -> String {
    ip_json(&["neigh", "show", "dev", "va", "to", to])
        .as_array()
        .and_then(|a| a.first())
        .and_then(|n| n["state"].as_array())
        .and_then(|s| s.first())
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn one_entry_is_looked_up_and_probed_by_its_state() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().expect("rtnl");
        rtnl.create_veth("va", "vb", None, "test").expect("veth");
        for argv in [
            &["ip", "link", "set", "va", "up"][..],
            &["ip", "link", "set", "vb", "up"],
            &["ip", "addr", "add", "198.51.100.5/24", "dev", "va"],
            &[
                "ip",
                "neigh",
                "add",
                "198.51.100.7",
                "lladdr",
                "02:00:00:00:00:07",
                "dev",
                "va",
                "nud",
                "permanent",
            ],
        ] {
            run(argv);
        }
        let va = rtnl.ifindex("va").expect("va");
        let vb = rtnl.ifindex("vb").expect("vb");

        let fixed = rtnl
            .neighbor(addr("198.51.100.7"), va)
            .expect("lookup")
            .expect("the static entry");
        assert_eq!(fixed.state, libc::NUD_PERMANENT);
        assert_eq!(fixed.mac, Some([2, 0, 0, 0, 0, 7]));
        assert_eq!(
            rtnl.neighbor(addr("198.51.100.7"), vb).expect("lookup"),
            None
        );
        assert_eq!(
            rtnl.neighbor(addr("198.51.100.8"), va).expect("lookup"),
            None
        );

        assert_eq!(
            rtnl.probe_neighbor(addr("198.51.100.7"), va)
                .expect("probe"),
            Probe::Static
        );
        assert_eq!(state("198.51.100.7"), "PERMANENT");

        // Nobody answers 198.51.100.8: resolving it ends FAILED.
        assert_eq!(
            rtnl.probe_neighbor(addr("198.51.100.8"), va)
                .expect("probe"),
            Probe::Resolving
        );
        eventually("198.51.100.8 to fail", || state("198.51.100.8") == "FAILED");

        // A valid entry (STALE, as an administrator's) is set to PROBE.
        run(&[
            "ip",
            "neigh",
            "add",
            "198.51.100.9",
            "lladdr",
            "02:00:00:00:00:09",
            "dev",
            "va",
            "nud",
            "stale",
        ]);
        assert_eq!(
            rtnl.probe_neighbor(addr("198.51.100.9"), va)
                .expect("probe"),
            Probe::Probed
        );
        let now = state("198.51.100.9");
        assert!(
            ["PROBE", "FAILED"].contains(&now.as_str()),
            "after the probe: {now}"
        );
    });
}
