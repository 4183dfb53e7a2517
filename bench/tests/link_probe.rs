//! `LinkProbe` against the kernel: it must see links of the namespace it was
//! made for, and only those. Needs root, like the harness's kernel tests.

use patchpanel_bench::link_probe::LinkProbe;
use patchpanel_tests::Netns;

#[test]
fn a_probe_sees_a_link_created_in_its_namespace_and_its_removal() {
    let netns = Netns::new().expect("netns");
    let probe = LinkProbe::in_netns(&netns.path()).expect("probe");
    assert!(!probe.exists("bench0").expect("probe before"));

    netns
        .exec_ok(&[
            "ip", "link", "add", "bench0", "type", "veth", "peer", "name", "bench1",
        ])
        .expect("add veth");
    assert!(probe.exists("bench0").expect("probe after add"));

    netns
        .exec_ok(&["ip", "link", "del", "bench0"])
        .expect("del veth");
    assert!(!probe.exists("bench0").expect("probe after del"));
}

#[test]
fn a_probe_does_not_see_links_of_another_namespace() {
    let probed = Netns::new().expect("probed netns");
    let other = Netns::new().expect("other netns");
    other
        .exec_ok(&[
            "ip",
            "link",
            "add",
            "elsewhere0",
            "type",
            "veth",
            "peer",
            "name",
            "elsewhere1",
        ])
        .expect("add veth");

    let probe = LinkProbe::in_netns(&probed.path()).expect("probe");

    assert!(!probe.exists("elsewhere0").expect("probe"));
    assert_eq!(probe.ifindex("lo").expect("probe lo"), Some(1));
}
