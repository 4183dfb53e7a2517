//! End-to-end tests of the foundation: the daemon's process tree, each process's
//! privileges, the D-Bus entry point, and how the tree reacts to dying members
//! and to signals. Each test starts its own namespace, bus and daemon.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use patchpanel_tests::daemon::DaemonOptions;
use patchpanel_tests::dbus_client::{dbus_send_bytes, ERROR_INVALID_ARGUMENT};
use patchpanel_tests::procfs::{
    all_stats, argv0, cap, exe, netns_inode, send_signal, tree_of, user_ids,
};
use patchpanel_tests::tree::SPAWNER_COMM;
use patchpanel_tests::{
    dbus_send_get_devices, poll_until, Daemon, DirectHelper, Helper, Netns, PrivateBus,
    ProcIdentity, ProcStatus, ProcessTree, TestBed,
};

/// The unprivileged user the manager and helpers run as by default.
const SERVICE_USER: &str = "patchpaneld";
/// How long a killed helper may stay missing.
const RESPAWN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the tree may outlive a SIGKILL'd manager.
const ORPHAN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a SIGTERM'd tree may take to exit.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a helper may take to reach its forbidden syscall.
const SECCOMP_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// The privilege table (DESIGN.md §2), as data.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Manager,
    Spawner,
    Helper(Helper),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Account {
    Root,
    Service,
}

/// What `/proc/<pid>/status` must say about one process.
#[derive(Debug, Clone, Copy)]
struct Privileges {
    account: Account,
    /// CapPrm, and CapEff, which must equal it.
    permitted: u64,
    /// CapInh; `None` where the contract says nothing (the spawner).
    inheritable: Option<u64>,
    ambient: u64,
    bounding: u64,
    no_new_privs: u32,
    /// 0 none, 2 filter.
    seccomp: u32,
    seccomp_filters: u32,
}

// KILL: the helpers run under another uid, and the spawner must be able to
// kill a hung one.
const SPAWNER_CAPS: u64 = cap::mask(&[
    cap::DAC_OVERRIDE,
    cap::KILL,
    cap::SETUID,
    cap::SETGID,
    cap::SETPCAP,
    cap::NET_BIND_SERVICE,
    cap::NET_ADMIN,
    cap::NET_RAW,
    cap::SYS_ADMIN,
    cap::SYS_PTRACE,
]);
const WRITER_CAPS: u64 = cap::mask(&[
    cap::DAC_OVERRIDE,
    cap::NET_ADMIN,
    cap::NET_RAW,
    cap::SYS_ADMIN,
    cap::SYS_PTRACE,
]);
const FORWARDER_CAPS: u64 = cap::mask(&[cap::NET_RAW]);
/// SO_MARK on the sockets TagSocket hands the socket service.
const SOCKET_SERVICE_CAPS: u64 = cap::mask(&[cap::NET_ADMIN]);
/// Port 67 on each link the DHCP server serves.
const DHCP_SERVER_CAPS: u64 = cap::mask(&[cap::NET_BIND_SERVICE]);

/// Exhaustive: a new helper does not compile until it has a row here.
fn expected_privileges(role: Role) -> Privileges {
    match role {
        Role::Manager => Privileges {
            account: Account::Service,
            permitted: 0,
            inheritable: Some(0),
            ambient: 0,
            bounding: 0,
            no_new_privs: 1,
            seccomp: 2,
            seccomp_filters: 1,
        },
        Role::Spawner => Privileges {
            account: Account::Root,
            permitted: SPAWNER_CAPS,
            inheritable: None,
            ambient: 0,
            bounding: SPAWNER_CAPS,
            no_new_privs: 0,
            seccomp: 0,
            seccomp_filters: 0,
        },
        // With the iptables backend it execs iptables, so its capabilities
        // are also ambient. With nftables it runs nothing: no ambient
        // capabilities, and a second filter forbids exec.
        Role::Helper(Helper::DatapathWriter) => {
            let tools = patchpanel_tests::daemon::firewall_backend() == "iptables";
            let passed_on = if tools { WRITER_CAPS } else { 0 };
            Privileges {
                account: Account::Service,
                permitted: WRITER_CAPS,
                inheritable: Some(passed_on),
                ambient: passed_on,
                bounding: WRITER_CAPS,
                no_new_privs: 1,
                seccomp: 2,
                seccomp_filters: if tools { 1 } else { 2 },
            }
        }
        Role::Helper(Helper::NdProxy) | Role::Helper(Helper::McastForwarder) => Privileges {
            account: Account::Service,
            permitted: FORWARDER_CAPS,
            inheritable: Some(0),
            ambient: 0,
            bounding: FORWARDER_CAPS,
            no_new_privs: 1,
            seccomp: 2,
            seccomp_filters: 1,
        },
        Role::Helper(Helper::SocketService) => Privileges {
            account: Account::Service,
            permitted: SOCKET_SERVICE_CAPS,
            inheritable: Some(0),
            ambient: 0,
            bounding: SOCKET_SERVICE_CAPS,
            no_new_privs: 1,
            seccomp: 2,
            seccomp_filters: 1,
        },
        Role::Helper(Helper::DhcpServer) => Privileges {
            account: Account::Service,
            permitted: DHCP_SERVER_CAPS,
            inheritable: Some(0),
            ambient: 0,
            bounding: DHCP_SERVER_CAPS,
            no_new_privs: 1,
            seccomp: 2,
            seccomp_filters: 1,
        },
        Role::Helper(Helper::AdbProxy) => Privileges {
            account: Account::Service,
            permitted: 0,
            inheritable: Some(0),
            ambient: 0,
            bounding: 0,
            no_new_privs: 1,
            seccomp: 2,
            seccomp_filters: 1,
        },
    }
}

/// Every way `pid`'s status differs from the table's row for `role`.
fn privilege_mismatches(role: Role, pid: u32) -> Vec<String> {
    let status = match ProcStatus::read(pid) {
        Ok(status) => status,
        Err(err) => return vec![format!("{role:?} ({pid}): {err:#}")],
    };
    let expected = expected_privileges(role);
    let (uid, gid) = match expected.account {
        Account::Root => (0, 0),
        Account::Service => service_user_ids(),
    };
    let mut wrong = Vec::new();
    let mut check_mask = |field: &str, actual: u64, want: u64| {
        if actual != want {
            wrong.push(format!(
                "{role:?} ({pid}): {field} is {} but must be {}",
                cap::describe(actual),
                cap::describe(want)
            ));
        }
    };
    check_mask("CapPrm", status.cap_prm, expected.permitted);
    check_mask("CapEff", status.cap_eff, expected.permitted);
    if let Some(inheritable) = expected.inheritable {
        check_mask("CapInh", status.cap_inh, inheritable);
    }
    check_mask("CapAmb", status.cap_amb, expected.ambient);
    check_mask("CapBnd", status.cap_bnd, expected.bounding);
    if status.uid != [uid; 4] {
        wrong.push(format!(
            "{role:?} ({pid}): Uid is {:?} but must be {:?}",
            status.uid, [uid; 4]
        ));
    }
    if status.gid != [gid; 4] {
        wrong.push(format!(
            "{role:?} ({pid}): Gid is {:?} but must be {:?}",
            status.gid, [gid; 4]
        ));
    }
    if status.no_new_privs != expected.no_new_privs {
        wrong.push(format!(
            "{role:?} ({pid}): NoNewPrivs is {} but must be {}",
            status.no_new_privs, expected.no_new_privs
        ));
    }
    if status.seccomp_filters != expected.seccomp_filters {
        wrong.push(format!(
            "{role:?} ({pid}): Seccomp_filters is {} but must be {}",
            status.seccomp_filters, expected.seccomp_filters
        ));
    }
    if status.seccomp != expected.seccomp {
        wrong.push(format!(
            "{role:?} ({pid}): Seccomp is {} but must be {}",
            status.seccomp, expected.seccomp
        ));
    }
    wrong
}

fn service_user_ids() -> (u32, u32) {
    user_ids(SERVICE_USER)
        .expect("read /etc/passwd")
        .unwrap_or_else(|| {
            panic!(
                "user {SERVICE_USER} does not exist: create it (useradd --system \
                 --no-create-home --shell /usr/sbin/nologin {SERVICE_USER}) or run the bootstrap"
            )
        })
}

fn roles(tree: &ProcessTree) -> Vec<(Role, u32)> {
    let mut roles = vec![(Role::Manager, tree.manager), (Role::Spawner, tree.spawner)];
    roles.extend(Helper::ALL.map(|h| (Role::Helper(h), tree.helper(h))));
    roles
}

fn start() -> TestBed {
    TestBed::start().expect("start namespace, bus and daemon")
}

fn identities(pids: &[u32]) -> BTreeSet<ProcIdentity> {
    pids.iter()
        .map(|pid| ProcIdentity::of(*pid).expect("process identity"))
        .collect()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Shape and privileges.

#[test]
fn tree_is_manager_spawner_and_six_helpers() {
    let bed = start();

    let tree = bed.daemon.tree().expect("complete process tree");

    assert_eq!(tree.manager, bed.daemon.pid());
    assert_eq!(
        file_name(Path::new(&argv0(tree.manager).expect("manager argv"))),
        "patchpaneld"
    );
    assert_eq!(
        ProcStatus::read(tree.spawner).expect("spawner status").name,
        SPAWNER_COMM
    );
    assert!(
        tree.other_manager_children.is_empty(),
        "the manager has children besides the spawner: {:?}",
        tree.other_manager_children
    );
    assert!(
        tree.other_spawner_children.is_empty(),
        "the spawner has children besides the helpers: {:?}",
        tree.other_spawner_children
    );
    for helper in Helper::ALL {
        let pid = tree.helper(helper);
        assert_eq!(argv0(pid).expect("helper argv"), helper.executable());
        assert_eq!(
            file_name(&exe(pid).expect("helper exe")),
            helper.executable(),
            "{helper} runs another executable"
        );
    }
}

#[test]
fn whole_tree_lives_in_the_test_namespace() {
    let bed = start();
    let tree = bed.daemon.tree().expect("complete process tree");
    let test_netns = bed.netns.inode().expect("netns inode");

    let elsewhere: Vec<(Role, u32)> = roles(&tree)
        .into_iter()
        .filter(|(_, pid)| netns_inode(*pid).expect("process netns") != test_netns)
        .collect();

    assert!(
        elsewhere.is_empty(),
        "outside the test netns: {elsewhere:?}"
    );
}

#[test]
fn each_process_has_exactly_its_privileges() {
    let bed = start();
    let tree = bed.daemon.tree().expect("complete process tree");

    let wrong: Vec<String> = roles(&tree)
        .into_iter()
        .flat_map(|(role, pid)| privilege_mismatches(role, pid))
        .collect();

    assert!(wrong.is_empty(), "privileges differ:\n{}", wrong.join("\n"));
}

#[test]
fn seccomp_log_flag_starts_the_same_tree() {
    let bed = TestBed::start_with(DaemonOptions {
        seccomp_log: true,
        ..DaemonOptions::default()
    })
    .expect("start with --seccomp=log");

    let tree = bed.daemon.tree().expect("complete process tree");

    assert!(tree.other_spawner_children.is_empty());
    assert_eq!(bed.client().expect("client").get_devices(), Ok(vec![]));
}

// ---------------------------------------------------------------------------
// D-Bus entry point.

#[test]
fn stock_client_gets_empty_device_list() {
    let bed = start();

    let reply = dbus_send_get_devices(bed.bus.address());

    assert_eq!(reply, Ok(vec![]), "GetDevices through dbus-send");
}

#[test]
fn malformed_request_gets_invalid_argument_and_daemon_survives() {
    let bed = start();
    let client = bed.client().expect("bus client");
    let before = bed.daemon.tree().expect("complete process tree");

    let reply = client.call_bytes("GetDevices", &[0xff, 0xff]);
    let stock = dbus_send_bytes(bed.bus.address(), "GetDevices", &[0xff, 0xff]);

    let err = reply.expect_err("a malformed request must fail");
    assert_eq!(err.name, ERROR_INVALID_ARGUMENT, "error: {err}");
    let stock_err = stock.expect_err("a malformed request must fail for dbus-send too");
    assert!(
        stock_err.contains(ERROR_INVALID_ARGUMENT),
        "dbus-send said: {stock_err}"
    );
    assert_eq!(client.get_devices(), Ok(vec![]), "GetDevices afterwards");
    assert_eq!(bed.daemon.tree().expect("tree afterwards"), before);
}

#[test]
fn string_argument_is_rejected_and_daemon_survives() {
    let bed = start();
    let client = bed.client().expect("bus client");
    let before = bed.daemon.tree().expect("complete process tree");

    let reply = client.call_string("GetDevices", "not a protobuf");

    let err = reply.expect_err("a string argument must fail");
    eprintln!("string argument got: {err}");
    assert_eq!(client.get_devices(), Ok(vec![]), "GetDevices afterwards");
    assert_eq!(bed.daemon.tree().expect("tree afterwards"), before);
}

// ---------------------------------------------------------------------------
// Dying members and signals.

/// Kills `helper` with SIGKILL and checks that a new instance with the same
/// privileges replaces it, that nothing else was restarted and that the daemon
/// still answers.
fn assert_killed_helper_is_respawned(helper: Helper) {
    let bed = start();
    let before = bed.daemon.tree().expect("complete process tree");
    let old = ProcIdentity::of(before.helper(helper)).expect("helper identity");

    let killed_at = Instant::now();
    send_signal(old.pid, libc::SIGKILL).expect("SIGKILL the helper");
    let after = bed
        .daemon
        .wait_for_tree(RESPAWN_TIMEOUT, |tree| {
            tree.helper(helper) != old.pid && old.is_gone()
        })
        .unwrap_or_else(|err| panic!("{helper} was not respawned: {err:#}"));
    let appeared = killed_at.elapsed();
    let new_pid = after.helper(helper);
    // Between exec and its own set-up (dropping inheritable and ambient
    // capabilities, installing its filter) a helper is not yet sandboxed: wait
    // for the end state, within the same budget.
    let mut wrong = Vec::new();
    let sandboxed = poll_until(RESPAWN_TIMEOUT.saturating_sub(appeared), || {
        wrong = privilege_mismatches(Role::Helper(helper), new_pid);
        wrong.is_empty().then_some(())
    });
    let took = killed_at.elapsed();
    eprintln!(
        "MEASURED respawn {helper} {} ms (new pid after {} ms)",
        took.as_millis(),
        appeared.as_millis()
    );

    assert!(
        sandboxed.is_some(),
        "respawned {helper} not sandboxed after {RESPAWN_TIMEOUT:?}:\n{}",
        wrong.join("\n")
    );
    assert_eq!(argv0(new_pid).expect("argv"), helper.executable());
    let now = bed.daemon.tree().expect("complete process tree");
    assert_eq!(now.helper(helper), new_pid, "{helper} was replaced again");
    assert_eq!(now.manager, before.manager);
    assert_eq!(now.spawner, before.spawner, "the spawner was replaced");
    for other in Helper::ALL.into_iter().filter(|h| *h != helper) {
        assert_eq!(
            now.helper(other),
            before.helper(other),
            "{other} was restarted too"
        );
    }
    let client = bed.client().expect("bus client");
    assert_eq!(client.get_devices(), Ok(vec![]), "GetDevices after respawn");
}

/// The spawner, the helpers and every other descendant of the manager, as
/// identities that survive pid reuse.
fn snapshot_tree(daemon: &Daemon) -> BTreeSet<ProcIdentity> {
    let tree = daemon.tree().expect("complete process tree");
    let mut recorded = identities(&tree.children_pids());
    recorded.extend(
        tree_of(daemon.pid())
            .expect("descendants")
            .into_iter()
            .filter(|p| p.pid != daemon.pid()),
    );
    recorded
}

/// Live processes whose parent is one of `recorded` (e.g. a helper's child
/// still attached to a parent that has not been reaped).
fn children_of_recorded(recorded: &BTreeSet<ProcIdentity>) -> Vec<(u32, u32, String)> {
    let pids: BTreeSet<u32> = recorded.iter().map(|p| p.pid).collect();
    all_stats()
        .expect("scan /proc")
        .into_iter()
        .filter(|s| s.state != 'Z' && pids.contains(&s.ppid))
        .map(|s| (s.pid, s.ppid, s.comm))
        .collect()
}

#[test]
fn killed_manager_takes_the_whole_tree_down() {
    let mut bed = start();
    let recorded = snapshot_tree(&bed.daemon);

    let killed_at = Instant::now();
    bed.daemon
        .signal(libc::SIGKILL)
        .expect("SIGKILL the manager");
    let status = bed
        .daemon
        .wait_exit(ORPHAN_TIMEOUT)
        .expect("wait for the manager");
    let gone = poll_until(ORPHAN_TIMEOUT, || {
        recorded.iter().all(ProcIdentity::is_gone).then_some(())
    });
    let took = killed_at.elapsed();
    eprintln!("MEASURED manager-kill teardown {} ms", took.as_millis());

    assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGKILL));
    let survivors: Vec<&ProcIdentity> = recorded.iter().filter(|p| !p.is_gone()).collect();
    assert!(
        gone.is_some() && survivors.is_empty(),
        "still alive {ORPHAN_TIMEOUT:?} after the manager died: {survivors:?}"
    );
    let orphans = children_of_recorded(&recorded);
    assert!(orphans.is_empty(), "children of the dead tree: {orphans:?}");
}

#[test]
fn sigterm_shuts_the_tree_down_cleanly() {
    let mut bed = start();
    let recorded = snapshot_tree(&bed.daemon);

    let sent_at = Instant::now();
    bed.daemon
        .signal(libc::SIGTERM)
        .expect("SIGTERM the manager");
    let status = bed
        .daemon
        .wait_exit(SHUTDOWN_TIMEOUT)
        .expect("wait for the manager");
    let remaining = SHUTDOWN_TIMEOUT.saturating_sub(sent_at.elapsed());
    poll_until(remaining, || {
        recorded.iter().all(ProcIdentity::is_gone).then_some(())
    });
    let took = sent_at.elapsed();
    eprintln!("MEASURED sigterm shutdown {} ms", took.as_millis());

    let status = status
        .unwrap_or_else(|| panic!("patchpaneld still runs {SHUTDOWN_TIMEOUT:?} after SIGTERM"));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let survivors: Vec<&ProcIdentity> = recorded.iter().filter(|p| !p.is_gone()).collect();
    assert!(
        survivors.is_empty(),
        "still alive {SHUTDOWN_TIMEOUT:?} after SIGTERM: {survivors:?}"
    );
}

#[test]
fn missing_user_is_a_clear_startup_error() {
    let netns = Netns::new().expect("netns");
    let bus = PrivateBus::start().expect("bus");
    let options = DaemonOptions {
        user: Some("nosuchuser-xyz".to_string()),
        ..DaemonOptions::default()
    };
    let mut daemon = Daemon::start_with(&netns, &bus, options).expect("start patchpaneld");

    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("wait for patchpaneld");

    let status = status.unwrap_or_else(|| panic!("patchpaneld runs without its user"));
    assert!(!status.success(), "exit status {status}");
    let log = daemon.log();
    assert!(
        log.contains("nosuchuser-xyz"),
        "the error does not name the user; log:\n{log}"
    );
}

// ---------------------------------------------------------------------------
// Seccomp: a helper's own filter kills a call no policy allows.

/// Runs `helper` alone with `--selftest-forbidden-syscall` and asserts the
/// kernel kills it with SIGSYS.
fn assert_forbidden_syscall_kills(helper: Helper) {
    let netns = Netns::new().expect("netns");
    let mut process = DirectHelper::spawn(&netns, helper, &["--selftest-forbidden-syscall"])
        .expect("start the helper");

    let status = process
        .wait_exit(SECCOMP_TIMEOUT)
        .expect("wait for the helper");

    let status =
        status.unwrap_or_else(|| panic!("{helper} still runs after its forbidden syscall"));
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{helper} ended with {status}, not SIGSYS; log:\n{}",
        process.log()
    );
}

/// The same with `--seccomp=log`: the call is logged, not fatal.
fn assert_forbidden_syscall_is_only_logged(helper: Helper) {
    let netns = Netns::new().expect("netns");
    let mut process = DirectHelper::spawn(
        &netns,
        helper,
        &["--seccomp=log", "--selftest-forbidden-syscall"],
    )
    .expect("start the helper");

    // Leave it time to reach the forbidden call with its IPC peer alive.
    let early = process
        .wait_exit(Duration::from_secs(2))
        .expect("wait for the helper");
    process.close_ipc();
    let status = match early {
        Some(status) => Some(status),
        None => process
            .wait_exit(SECCOMP_TIMEOUT)
            .expect("wait for the helper"),
    };

    match status {
        Some(status) => assert_ne!(
            status.signal(),
            Some(libc::SIGSYS),
            "{helper} was killed by SIGSYS under --seccomp=log; log:\n{}",
            process.log()
        ),
        None => eprintln!("{helper} still runs after EOF on its IPC socket (not killed)"),
    }
}

macro_rules! per_helper_tests {
    ($($module:ident => $helper:expr;)*) => {
        $(
            mod $module {
                use super::*;

                #[test]
                fn is_respawned_after_sigkill() {
                    assert_killed_helper_is_respawned($helper);
                }

                #[test]
                fn forbidden_syscall_is_killed_by_sigsys() {
                    assert_forbidden_syscall_kills($helper);
                }

                #[test]
                fn forbidden_syscall_is_only_logged_with_seccomp_log() {
                    assert_forbidden_syscall_is_only_logged($helper);
                }
            }
        )*
    };
}

per_helper_tests! {
    datapath_writer => Helper::DatapathWriter;
    ndproxy => Helper::NdProxy;
    mcast_forwarder => Helper::McastForwarder;
    adb_proxy => Helper::AdbProxy;
    socket_service => Helper::SocketService;
    dhcp_server => Helper::DhcpServer;
}
