//! The bus policy `upstart/org.chromium.PatchPanel.conf`, loaded into a
//! private `dbus-daemon` with the stock system bus defaults, with the real
//! daemon on it: every caller is refused every method but its own
//! (`org.freedesktop.DBus.Error.AccessDenied` from the bus), and reaches the
//! daemon with its own (a daemon-level error for a deliberately bad payload
//! proves the bus let the call through).
//!
//! Callers run as other uids with `setpriv` + `dbus-send`. The ChromeOS
//! callers (chronos, shill, devbroker, ...) do not exist on a test host, so
//! the policy is loaded as a copy in which each is renamed `pp-<name>`, a
//! user made by `scripts/bootstrap`; `root`, `patchpaneld`, `crosvm` and the
//! `patchpanel` group keep their names. The expected table below is written
//! from the original service's policy, not read from the file under test.

use std::process::Command;

use patchpanel_proto::names;
use patchpanel_tests::dbus_client::{ERROR_FAILED, ERROR_INVALID_ARGUMENT, INTERFACE};
use patchpanel_tests::policy::{
    policy_for_test_users, policy_path, primary_group, write_test_policy, GROUP_MEMBER, STAND_INS,
};
use patchpanel_tests::{Daemon, MethodError, Netns, PrivateBus};

const ACCESS_DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";
const UNKNOWN_METHOD: &str = "org.freedesktop.DBus.Error.UnknownMethod";

/// Every method of the original interface, plus the older names this
/// implementation still answers (PluginVm*, SetVpnIntent).
const ALL_METHODS: &[&str] = &[
    "ArcStartup",
    "ArcShutdown",
    "ArcVmStartup",
    "ArcVmShutdown",
    "TerminaVmStartup",
    "TerminaVmShutdown",
    "PluginVmStartup",
    "PluginVmShutdown",
    "ParallelsVmStartup",
    "ParallelsVmShutdown",
    "BruschettaVmStartup",
    "BruschettaVmShutdown",
    "BorealisVmStartup",
    "BorealisVmShutdown",
    "ConnectNamespace",
    "CreateLocalOnlyNetwork",
    "CreateTetheredNetwork",
    "GetDownstreamNetworkInfo",
    "ConfigureNetwork",
    "GetDevices",
    "GetTrafficCounters",
    "ModifyPortRule",
    "SetVpnLockdown",
    "SetVpnIntent",
    "SetDnsRedirectionRule",
    "TagSocket",
    "NotifyAndroidWifiMulticastLockChange",
    "NotifyAndroidInteractiveState",
    "NotifySocketConnectionEvent",
    "NotifyARCVPNSocketConnectionEvent",
    "SetFeatureFlag",
];

const VM_METHODS: &[&str] = &[
    "ArcVmStartup",
    "ArcVmShutdown",
    "TerminaVmStartup",
    "TerminaVmShutdown",
    "PluginVmStartup",
    "PluginVmShutdown",
    "ParallelsVmStartup",
    "ParallelsVmShutdown",
    "BruschettaVmStartup",
    "BruschettaVmShutdown",
    "BorealisVmStartup",
    "BorealisVmShutdown",
];

/// A user the policy does not name.
const STRANGER: &str = "nobody";

/// Who may call what: (test user, methods; `None` = every method).
fn expected_table() -> Vec<(&'static str, Option<Vec<&'static str>>)> {
    vec![
        ("root", None),
        (GROUP_MEMBER, None),
        ("crosvm", Some(VM_METHODS.to_vec())),
        (
            "pp-chronos",
            Some(vec![
                "GetDevices",
                "NotifyAndroidWifiMulticastLockChange",
                "NotifyAndroidInteractiveState",
                "NotifySocketConnectionEvent",
                "NotifyARCVPNSocketConnectionEvent",
                "SetFeatureFlag",
                "SetVpnIntent",
                "TagSocket",
            ]),
        ),
        (
            "pp-shill",
            Some(vec![
                "ConfigureNetwork",
                "GetTrafficCounters",
                "SetVpnLockdown",
                "SetVpnIntent",
                "CreateLocalOnlyNetwork",
                "CreateTetheredNetwork",
                "GetDownstreamNetworkInfo",
                "TagSocket",
            ]),
        ),
        ("pp-devbroker", Some(vec!["ModifyPortRule"])),
        ("pp-system-proxy", Some(vec!["ConnectNamespace"])),
        (
            "pp-dns-proxy",
            Some(vec![
                "ConnectNamespace",
                "GetDevices",
                "SetDnsRedirectionRule",
            ]),
        ),
        (
            "pp-dns-proxy-system",
            Some(vec!["GetDevices", "SetDnsRedirectionRule"]),
        ),
        (
            "pp-dns-proxy-user",
            Some(vec!["GetDevices", "SetDnsRedirectionRule"]),
        ),
        // The owner is not a caller.
        ("patchpaneld", Some(vec![])),
        (STRANGER, Some(vec![])),
    ]
}

/// Runs `dbus-send --print-reply ARGS...` as `user` (with its groups) on the
/// bus at `address`; returns stdout, or the error dbus-send printed.
fn dbus_send_as(user: &str, address: &str, args: &[&str]) -> Result<String, MethodError> {
    let group = primary_group(user).expect("test user");
    let out = Command::new("setpriv")
        .args(["--reuid", user, "--regid", &group, "--init-groups", "--"])
        .arg("dbus-send")
        .arg(format!("--bus={address}"))
        .arg("--print-reply")
        .arg("--reply-timeout=5000")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("run setpriv dbus-send");
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(
        MethodError::from_dbus_send_stderr(&stderr).unwrap_or_else(|| MethodError {
            name: "(dbus-send failed without an error name)".into(),
            message: stderr.trim().to_string(),
        }),
    )
}

/// Calls `method` with the request bytes ff ff (an unterminated varint: no
/// protobuf decodes it), so that a call the bus lets through changes nothing.
fn call_as(user: &str, address: &str, method: &str) -> Result<String, MethodError> {
    dbus_send_as(
        user,
        address,
        &[
            &format!("--dest={}", names::SERVICE),
            names::PATH,
            &format!("{INTERFACE}.{method}"),
            "array:byte:255,255",
        ],
    )
}

/// Where a call ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The bus refused it.
    Refused,
    /// The daemon answered it (here always with an error: bad payload,
    /// wrong signature or a method this build does not implement).
    ReachedTheDaemon,
}

fn outcome(result: &Result<String, MethodError>) -> Result<Outcome, String> {
    match result {
        Ok(_) => Ok(Outcome::ReachedTheDaemon),
        Err(e) if e.name == ACCESS_DENIED => Ok(Outcome::Refused),
        Err(e)
            if [ERROR_INVALID_ARGUMENT, ERROR_FAILED, UNKNOWN_METHOD]
                .contains(&e.name.as_str()) =>
        {
            Ok(Outcome::ReachedTheDaemon)
        }
        Err(e) => Err(format!("unexpected error {e}")),
    }
}

#[test]
fn the_test_covers_every_method_the_implementation_knows() {
    let missing: Vec<_> = names::METHODS
        .iter()
        .map(|m| m.name)
        .filter(|m| !ALL_METHODS.contains(m))
        .collect();
    assert!(missing.is_empty(), "not in ALL_METHODS: {missing:?}");
}

#[test]
fn each_caller_reaches_its_methods_and_is_refused_every_other() {
    let netns = Netns::new().expect("netns");
    let scratch = tempfile::tempdir().expect("tempdir");
    let policy = write_test_policy(scratch.path()).expect("policy copy");
    let bus = PrivateBus::start_with_policy(&[&policy]).expect("bus with the policy");
    let mut daemon = Daemon::start(&netns, &bus).expect("daemon");
    // The harness's readiness probe calls GetDevices as root.
    daemon
        .wait_ready()
        .expect("the daemon owns its name under the policy");

    let table = expected_table();
    let address = bus.address().to_string();
    let wrong: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = table
            .iter()
            .map(|(user, allowed)| {
                let address = &address;
                s.spawn(move || {
                    let mut wrong = Vec::new();
                    for method in ALL_METHODS {
                        let want = match allowed {
                            None => Outcome::ReachedTheDaemon,
                            Some(list) if list.contains(method) => Outcome::ReachedTheDaemon,
                            Some(_) => Outcome::Refused,
                        };
                        let result = call_as(user, address, method);
                        match outcome(&result) {
                            Ok(got) if got == want => {}
                            Ok(got) => wrong.push(format!(
                                "{user} {method}: {got:?}, expected {want:?} ({result:?})"
                            )),
                            Err(e) => wrong.push(format!("{user} {method}: {e}")),
                        }
                    }
                    wrong
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("caller thread"))
            .collect()
    });
    assert!(
        wrong.is_empty(),
        "{} of {} calls ended wrongly:\n{}\nbus log:\n{}",
        wrong.len(),
        table.len() * ALL_METHODS.len(),
        wrong.join("\n"),
        bus.log()
    );
}

#[test]
fn a_caller_of_an_unlisted_uid_gets_access_denied_naming_the_method() {
    let netns = Netns::new().expect("netns");
    let scratch = tempfile::tempdir().expect("tempdir");
    let policy = write_test_policy(scratch.path()).expect("policy copy");
    let bus = PrivateBus::start_with_policy(&[&policy]).expect("bus with the policy");
    // The name must have an owner: without one the bus answers ServiceUnknown
    // before it looks at the policy.
    let mut daemon = Daemon::start(&netns, &bus).expect("daemon");
    daemon.wait_ready().expect("ready");
    let err = call_as(STRANGER, bus.address(), "GetDevices").expect_err("refused");

    assert_eq!(err.name, ACCESS_DENIED, "{err}");
    assert!(err.message.contains("GetDevices"), "{err}");
}

/// `RequestName(org.chromium.PatchPanel, DO_NOT_QUEUE)` as `user`.
fn request_name_as(user: &str, address: &str) -> Result<String, MethodError> {
    dbus_send_as(
        user,
        address,
        &[
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.RequestName",
            &format!("string:{}", names::SERVICE),
            "uint32:4",
        ],
    )
}

#[test]
fn only_the_daemon_user_may_own_the_name() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let policy = write_test_policy(scratch.path()).expect("policy copy");
    let bus = PrivateBus::start_with_policy(&[&policy]).expect("bus with the policy");

    for user in ["root", "crosvm", GROUP_MEMBER, "pp-shill", STRANGER] {
        let err = request_name_as(user, bus.address()).expect_err(user);
        assert_eq!(err.name, ACCESS_DENIED, "{user}: {err}");
    }
    // 1 = DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER.
    let reply = request_name_as("patchpaneld", bus.address()).expect("patchpaneld owns it");
    assert!(reply.contains("uint32 1"), "{reply}");
}

#[test]
fn the_policy_file_loads_unchanged_and_skips_only_users_this_host_lacks() {
    let bus = PrivateBus::start_with_policy(&[&policy_path()]).expect("bus with the policy");

    // dbus-daemon logs each unknown user once it has parsed the whole file;
    // the bus accepting the root caller's RequestName refusal proves it runs.
    let err = request_name_as("root", bus.address()).expect_err("root may not own it");
    assert_eq!(err.name, ACCESS_DENIED, "{err}");
    let log = bus.log();
    for line in log.lines().filter(|l| l.contains("Unknown username")) {
        let user = line
            .split('"')
            .nth(1)
            .unwrap_or_else(|| panic!("no user name in {line:?}"));
        let known = Command::new("getent")
            .args(["passwd", user])
            .output()
            .expect("getent")
            .status
            .success();
        assert!(
            !known,
            "dbus-daemon did not resolve existing user {user}: {log}"
        );
    }
    assert!(
        !log.to_lowercase().contains("failed to parse")
            && !log.contains("Element")
            && !log.contains("not allowed"),
        "the bus complained about the file: {log}"
    );
}

#[test]
fn the_renamed_copy_differs_from_the_policy_only_in_user_names() {
    let original = std::fs::read_to_string(policy_path()).expect("read the policy");
    let copy = policy_for_test_users(&original);

    let mut back = copy.clone();
    for (name, stand_in) in STAND_INS {
        back = back.replace(&format!("user=\"{stand_in}\""), &format!("user=\"{name}\""));
    }
    assert_eq!(back, original);
    for (name, stand_in) in STAND_INS {
        assert!(original.contains(&format!("user=\"{name}\"")), "{name}");
        assert!(copy.contains(&format!("user=\"{stand_in}\"")), "{stand_in}");
    }
}
