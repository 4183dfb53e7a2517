//! Supervision beyond a single respawn: state replay to a new helper,
//! giving up on a helper that keeps failing, and killing a hung helper.

use std::os::unix::fs::symlink;
use std::time::Duration;

use patchpanel_client::Client;
use patchpanel_proto::ConnectNamespaceRequest;
use patchpanel_tests::daemon::DaemonOptions;
use patchpanel_tests::procfs::send_signal;
use patchpanel_tests::{
    bins, poll_until, Daemon, Helper, Netns, PrivateBus, ProcIdentity, TestBed,
};

#[test]
fn respawned_helper_gets_its_state_replayed() {
    // A fresh writer refuses every plan until it is configured
    // (writer_kernel: apply_before_configure_writer_is_refused), and the
    // manager configures it once, at its first start: a namespace connected
    // after the kill can only be built by a writer that got its
    // configuration replayed.
    let bed = TestBed::start().expect("start patchpaneld");
    let old = bed
        .daemon
        .tree()
        .expect("tree")
        .helper(Helper::DatapathWriter);
    let old = ProcIdentity::of(old).expect("identity");

    send_signal(old.pid, libc::SIGKILL).expect("SIGKILL the writer");
    let new = bed
        .daemon
        .wait_for_tree(Duration::from_secs(3), |t| {
            t.helper(Helper::DatapathWriter) != old.pid && old.is_gone()
        })
        .expect("writer respawned")
        .helper(Helper::DatapathWriter);

    let client = Client::connect_to(bed.bus.address()).expect("client");
    let request = ConnectNamespaceRequest {
        pid: -1,
        ..Default::default()
    };
    let mut last = None;
    let connected = poll_until(Duration::from_secs(5), || {
        match client.connect_namespace(&request) {
            Ok(c) => Some(c),
            Err(e) => {
                last = Some(e.to_string());
                None
            }
        }
    });
    let (response, _lifeline) = connected.unwrap_or_else(|| {
        panic!(
            "no namespace after the writer's restart (last: {last:?}); log:\n{}",
            bed.daemon.log()
        )
    });
    assert!(
        std::path::Path::new("/run/netns")
            .join(&response.netns_name)
            .exists(),
        "{} was not created",
        response.netns_name
    );
    assert_eq!(
        bed.daemon
            .tree()
            .expect("tree")
            .helper(Helper::DatapathWriter),
        new,
        "the respawned writer served the call (it was not restarted again)"
    );
}

#[test]
fn helper_that_keeps_failing_makes_the_manager_give_up() {
    // A helper directory where adb-proxy is /bin/false: it exits at once,
    // every time. The manager backs off (0, 0.25, 0.5, 1, 2, 4 s), then
    // says which helper it gave up on and exits non-zero for init.
    let netns = Netns::new().expect("netns");
    let bus = PrivateBus::start().expect("bus");
    let dir = tempfile::tempdir().expect("tempdir");
    let real = bins::bin_dir().expect("bin dir");
    for helper in Helper::ALL {
        let target = if helper == Helper::AdbProxy {
            std::path::PathBuf::from("/bin/false")
        } else {
            real.join(helper.executable())
        };
        symlink(&target, dir.path().join(helper.executable())).expect("symlink");
    }
    let mut daemon = Daemon::start_with(
        &netns,
        &bus,
        DaemonOptions {
            helper_dir: Some(dir.path().to_path_buf()),
            ..DaemonOptions::default()
        },
    )
    .expect("start patchpaneld");

    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("wait for patchpaneld")
        .unwrap_or_else(|| panic!("still running after 30 s; log:\n{}", daemon.log()));

    assert_eq!(status.code(), Some(1), "exit status {status}");
    let log = daemon.log();
    assert!(
        log.contains("giving up on patchpanel-adb-proxy: it failed 6 times in a row"),
        "no give-up line; log:\n{log}"
    );
    assert!(
        !log.contains("owning org.chromium.PatchPanel"),
        "claimed the bus name without all helpers; log:\n{log}"
    );
}

#[test]
fn hung_helper_is_killed_and_respawned() {
    // A stopped helper is not pinged while idle (nothing wakes up then);
    // the first request it gets goes unanswered, and at its deadline (30 s
    // for a call) the manager has the spawner kill it, then respawns it.
    let bed = TestBed::start().expect("start patchpaneld");
    let old = bed
        .daemon
        .tree()
        .expect("tree")
        .helper(Helper::DatapathWriter);
    let old = ProcIdentity::of(old).expect("identity");

    send_signal(old.pid, libc::SIGSTOP).expect("SIGSTOP the writer");
    // Work for it: a VM's TAP. The call fails at the deadline, clearly.
    let client = Client::connect_to(bed.bus.address())
        .expect("client")
        .with_timeout(Duration::from_secs(60));
    let e = client
        .terminavm_startup(7)
        .expect_err("the writer is stopped");
    assert!(e.to_string().contains("did not answer"), "{e}");
    let new = bed
        .daemon
        .wait_for_tree(Duration::from_secs(20), |t| {
            t.helper(Helper::DatapathWriter) != old.pid && old.is_gone()
        })
        .unwrap_or_else(|e| {
            panic!(
                "hung helper not replaced: {e:#}; log:\n{}",
                bed.daemon.log()
            )
        });

    let log = bed.daemon.log();
    assert!(
        log.contains(&format!(
            "patchpanel-datapath-writer (pid {}) has not answered request",
            old.pid
        )),
        "no hang diagnosis; log:\n{log}"
    );
    assert_ne!(new.helper(Helper::DatapathWriter), old.pid);
    // The new writer, configured by its replay log, builds the VM.
    let vm = poll_until(Duration::from_secs(10), || client.terminavm_startup(7).ok())
        .unwrap_or_else(|| panic!("no VM after the respawn:\n{}", bed.daemon.log()));
    assert!(!vm.tap_device_ifname.is_empty());
    client.terminavm_shutdown(7).expect("TerminaVmShutdown");
}
