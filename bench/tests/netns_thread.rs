//! `NetnsThread` against the kernel: the processes it starts must run in its
//! namespace, not the caller's. Needs root, like the harness's kernel tests.

use std::path::Path;

use patchpanel_bench::netns_thread::NetnsThread;
use patchpanel_bench::process::{argv, run_timed};
use patchpanel_tests::Netns;

#[test]
fn a_process_started_by_the_thread_sees_the_threads_namespace() {
    let netns = Netns::new().expect("netns");
    netns
        .exec_ok(&[
            "ip", "link", "add", "inside0", "type", "veth", "peer", "name", "inside1",
        ])
        .expect("add veth");
    let thread = NetnsThread::enter(&netns.path()).expect("enter");

    let (_, links) = thread
        .run(|| run_timed(&argv(&["ip", "-o", "link", "show"])))
        .expect("job")
        .expect("ip link");

    assert!(links.contains("inside0"), "{links}");
    let (_, here) = run_timed(&argv(&["ip", "-o", "link", "show"])).expect("ip link here");
    assert!(!here.contains("inside0"), "{here}");
}

#[test]
fn entering_a_namespace_that_does_not_exist_fails() {
    let err = NetnsThread::enter(Path::new("/run/netns/ppt-no-such-namespace"))
        .expect_err("no such namespace");

    assert!(format!("{err:#}").contains("cannot enter"), "{err:#}");
}
