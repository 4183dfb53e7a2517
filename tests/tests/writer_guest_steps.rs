//! Kernel tier for the writer's guest steps (CreateTap, CreateBridge,
//! SetMaster, ExpectLink): what they build, their undo, and what the writer
//! refuses on its own (a TAP without a configured VM user, an existing
//! link, links that are not patchpanel's). Each test runs its own writer in
//! its own namespace and compares kernel snapshots before and after.

use std::time::{Duration, Instant};

use patchpanel_ipc::datapath::{self as dp, ApplyMode, Plan, PlanReport, Step};
use patchpanel_ipc::{HelperError, IfName};
use patchpanel_tests::world::kernel_snapshot;
use patchpanel_tests::writer_client::{snapshot_diff, NetnsPrefix, WriterClient};
use patchpanel_tests::Netns;
use serde_json::Value;

const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
const OWNER: u32 = 4242;
const MAC: dp::Mac = [0x42, 0x37, 0x05, 0x13, 0x17, 0x02];

/// Fields drop in order: the writer, the prefix, the namespace.
struct Fixture {
    writer: WriterClient,
    _prefix: NetnsPrefix,
    netns: Netns,
}

impl Fixture {
    fn new(tap_owner: Option<u32>) -> Fixture {
        Fixture::with_users(tap_owner, Vec::new())
    }

    fn with_users(tap_owner: Option<u32>, users: Vec<u32>) -> Fixture {
        let netns = Netns::new().expect("test namespace");
        for key in [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ] {
            netns.exec_ok(&["sysctl", "-qw", key]).expect("disable DAD");
        }
        let prefix = NetnsPrefix::new();
        let writer =
            WriterClient::configured_with_tap_owners(&netns, prefix.as_str(), tap_owner, users)
                .expect("start the writer");
        Fixture {
            writer,
            _prefix: prefix,
            netns,
        }
    }

    fn try_apply(&mut self, mode: ApplyMode, steps: Vec<Step>) -> Result<PlanReport, HelperError> {
        self.writer
            .apply(Plan {
                label: "writer_guest_steps test".into(),
                mode,
                steps,
            })
            .expect("the writer answers")
    }

    fn apply(&mut self, steps: Vec<Step>) {
        if let Err(e) = self.try_apply(ApplyMode::Atomic, steps) {
            panic!("plan failed: {e}\n{}", self.writer.log());
        }
    }

    fn refused(&mut self, steps: Vec<Step>) -> HelperError {
        match self.try_apply(ApplyMode::Atomic, steps) {
            Ok(r) => panic!("plan accepted: {r:?}"),
            Err(e) => e,
        }
    }

    fn teardown(&mut self, steps: Vec<Step>) {
        let report = self
            .try_apply(ApplyMode::BestEffort, steps)
            .expect("a best-effort plan is answered with a report");
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }

    fn snapshot(&self) -> String {
        kernel_snapshot(&self.netns).expect("snapshot")
    }

    fn assert_snapshot_is(&self, before: &str) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let after = self.snapshot();
            if after == before {
                return;
            }
            if Instant::now() > deadline {
                panic!("the kernel differs:\n{}", snapshot_diff(before, &after));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn link(&self, name: &str) -> Value {
        let text = self
            .netns
            .exec_ok(&["ip", "-j", "-d", "link", "show", "dev", name])
            .expect("ip link");
        let v: Value = serde_json::from_str(&text).expect("json");
        v[0].clone()
    }

    fn exec(&self, argv: &[&str]) {
        self.netns.exec_ok(argv).expect("command");
    }
}

fn name(n: &str) -> IfName {
    IfName::new(n).expect("ifname")
}

fn tap(n: &str) -> Step {
    Step::CreateTap {
        name: name(n),
        mac: MAC,
        user: None,
    }
}

fn user_tap(n: &str, uid: u32) -> Step {
    Step::CreateTap {
        name: name(n),
        mac: MAC,
        user: Some(uid),
    }
}

fn bridge(n: &str) -> Step {
    Step::CreateBridge { name: name(n) }
}

fn master(link: &str, m: Option<&str>) -> Step {
    Step::SetMaster {
        link: name(link),
        master: m.map(name),
    }
}

fn delete(n: &str) -> Step {
    Step::DeleteLink {
        netns: dp::Netns::Host,
        name: name(n),
    }
}

#[test]
fn a_tap_for_the_vm_user_in_a_bridge_and_its_teardown() {
    let mut f = Fixture::new(Some(OWNER));
    let before = f.snapshot();

    f.apply(vec![
        tap("vmtap0"),
        bridge("arc_eth0"),
        master("vmtap0", Some("arc_eth0")),
    ]);

    let t = f.link("vmtap0");
    let info = &t["linkinfo"]["info_data"];
    assert_eq!(info["type"], "tap", "{t}");
    assert_eq!(info["persist"], true, "{t}");
    assert_eq!(info["pi"], false, "{t}");
    assert_eq!(info["user"], OWNER, "{t}");
    assert_eq!(t["ifalias"], "patchpanel", "{t}");
    assert_eq!(t["address"], "42:37:05:13:17:02", "{t}");
    assert_eq!(t["master"], "arc_eth0", "{t}");
    let b = f.link("arc_eth0");
    assert_eq!(b["linkinfo"]["info_kind"], "bridge", "{b}");
    assert_eq!(b["ifalias"], "patchpanel", "{b}");

    f.teardown(vec![
        master("vmtap0", None),
        delete("arc_eth0"),
        delete("vmtap0"),
    ]);
    f.assert_snapshot_is(&before);
}

#[test]
fn a_failed_plan_rolls_the_tap_bridge_and_master_back() {
    let mut f = Fixture::new(Some(OWNER));
    let before = f.snapshot();

    let e = f.refused(vec![
        tap("vmtap0"),
        bridge("arc_eth0"),
        master("vmtap0", Some("arc_eth0")),
        // No such link: the plan fails here and is undone.
        Step::ExpectLink {
            netns: dp::Netns::Host,
            name: name("nosuch0"),
        },
    ]);

    assert!(e.to_string().contains("nosuch0"), "{e}");
    f.assert_snapshot_is(&before);
}

#[test]
fn a_users_own_tap_only_for_a_configured_owner() {
    const ALICE: u32 = 4343;
    const MALLORY: u32 = 4444;
    // Root in the list (a configuration mistake) still never gets one.
    let mut f = Fixture::with_users(Some(OWNER), vec![ALICE, 0]);
    let before = f.snapshot();

    // Neither a user who is not configured, nor root, though the manager
    // asks: the writer keeps its own list.
    for uid in [MALLORY, 0] {
        let e = f.refused(vec![user_tap("vmtap1", uid)]);
        assert!(
            matches!(&e, HelperError::Refused(m) if m.contains("not one of the users")),
            "{uid}: {e}"
        );
        f.assert_snapshot_is(&before);
    }

    f.apply(vec![user_tap("vmtap1", ALICE)]);
    let t = f.link("vmtap1");
    assert_eq!(t["linkinfo"]["info_data"]["user"], ALICE, "{t}");
    assert_eq!(t["ifalias"], "patchpanel", "{t}");
    f.teardown(vec![delete("vmtap1")]);
    f.assert_snapshot_is(&before);
}

#[test]
fn no_tap_is_made_without_a_configured_vm_user() {
    let mut f = Fixture::new(None);
    let before = f.snapshot();

    let e = f.refused(vec![tap("vmtap0")]);

    assert!(
        matches!(&e, HelperError::Refused(m) if m.contains("no VM user")),
        "{e}"
    );
    f.assert_snapshot_is(&before);
}

#[test]
fn an_existing_link_is_never_taken_over() {
    let mut f = Fixture::new(Some(OWNER));
    // Someone else's TAP and bridge with the names patchpanel would use.
    f.exec(&["ip", "tuntap", "add", "vmtap0", "mode", "tap"]);
    f.exec(&["ip", "link", "add", "arc_eth0", "type", "bridge"]);
    let before = f.snapshot();

    for step in [tap("vmtap0"), bridge("arc_eth0")] {
        let e = f.refused(vec![step]);
        assert!(e.to_string().contains("already exists"), "{e}");
    }

    f.assert_snapshot_is(&before);
    assert!(f.link("vmtap0").get("ifalias").is_none());
}

#[test]
fn set_master_only_joins_patchpanels_links_to_patchpanels_bridges() {
    let mut f = Fixture::new(Some(OWNER));
    f.exec(&["ip", "link", "add", "hostbr", "type", "bridge"]);
    f.exec(&["ip", "tuntap", "add", "hosttap", "mode", "tap"]);
    f.apply(vec![tap("vmtap0"), bridge("arc_eth0")]);
    let before = f.snapshot();

    let into_foreign = f.refused(vec![master("vmtap0", Some("hostbr"))]);
    assert!(
        into_foreign.to_string().contains("hostbr"),
        "{into_foreign}"
    );
    let foreign_port = f.refused(vec![master("hosttap", Some("arc_eth0"))]);
    assert!(
        foreign_port.to_string().contains("hosttap"),
        "{foreign_port}"
    );
    let not_a_bridge = f.refused(vec![tap("vmtap1"), master("vmtap0", Some("vmtap1"))]);
    assert!(
        not_a_bridge.to_string().contains("not a bridge"),
        "{not_a_bridge}"
    );

    f.assert_snapshot_is(&before);
}

#[test]
fn expect_link_accepts_only_patchpanels_existing_links() {
    let mut f = Fixture::new(Some(OWNER));
    f.exec(&["ip", "link", "add", "hostbr", "type", "bridge"]);
    f.apply(vec![bridge("arc_eth0")]);
    let expect = |n: &str| Step::ExpectLink {
        netns: dp::Netns::Host,
        name: name(n),
    };

    f.apply(vec![expect("arc_eth0")]);
    let foreign = f.refused(vec![expect("hostbr")]);
    assert!(
        foreign.to_string().contains("not created by patchpanel"),
        "{foreign}"
    );
    let missing = f.refused(vec![expect("arc_wlan0")]);
    assert!(missing.to_string().contains("arc_wlan0"), "{missing}");
}
