//! `SetDnsRedirectionRule` as dns-proxy calls it: the proxies run where
//! dns-proxy runs them, in namespaces patchpanel connected
//! (`ConnectNamespace`), each a responder on port 53 (UDP and TCP) that
//! answers with its own name; the "real" name server is on the internet
//! host. A query shows by its answer where it went.
//!
//! * DEFAULT: a Termina VM's queries to its name server reach the proxy
//!   instead, UDP and TCP; closing the lifeline restores the ruleset
//!   exactly.
//! * USER and EXCLUDE_DESTINATION: a user's (Chrome's uid) host queries go
//!   to the default proxy; with the system proxy's exclusion only those
//!   aimed at the system proxy are redirected; root's are never touched.
//! * ARC: GetDevices shows the proxy's addresses on ARC's device and
//!   `NetworkConfigurationChanged` arrives, both ways; ARC reaches the proxy.
//! * A rule held by a process (`patchpanel dns-redirect`) survives a kill -9
//!   of the manager and goes when that process exits.
//! * Bad requests: `InvalidArgument`, ruleset unchanged.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use patchpanel_client::{Client, Error as ClientError, Lifeline, Signal};
use patchpanel_proto::set_dns_redirection_rule_request::RuleType;
use patchpanel_proto::{
    ipv4_from_addr4, ipv4_from_net_u32, ConnectNamespaceRequest, SetDnsRedirectionRuleRequest,
};
use patchpanel_tests::vm::{FakeContainer, FakeVm};
use patchpanel_tests::world::{kernel_snapshot, World, REMOTE_HOST};
use patchpanel_tests::{bin_path, poll_until, traffic, BusClient, DaemonOptions};
use prost::Message as _;

/// A process killed on drop (also when the test fails).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DNS responder on `addr` port 53, UDP and TCP, answering `name`.
fn responder(netns: &str, addr: &str, name: &str) -> Running {
    let family = if addr.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    traffic::listener(
        netns,
        &format!(
            "import socket, threading\n\
             u=socket.socket(socket.{family}, socket.SOCK_DGRAM); u.bind(('{addr}',53))\n\
             t=socket.socket(socket.{family}); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             t.bind(('{addr}',53)); t.listen(8)\n\
             def tcp():\n    while True:\n        c,a=t.accept(); c.recv(512); c.sendall(b'{name}'); c.close()\n\
             threading.Thread(target=tcp, daemon=True).start()\n\
             print('listening', flush=True)\n\
             while True:\n    d,a=u.recvfrom(512); u.sendto(b'{name}', a)\n"
        ),
    )
    .map(Running)
    .expect("responder")
}

/// One DNS query to `server`:53 from `netns` as `uid`, over UDP or TCP:
/// the name of whoever answered, or `timeout`.
fn query(netns: &str, uid: u32, server: &str, tcp: bool) -> String {
    let family = if server.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let script = if tcp {
        format!(
            "import socket\n\
             try:\n    c=socket.create_connection(('{server}',53),timeout=2); c.sendall(b'query'); print(c.recv(64).decode())\n\
             except Exception: print('timeout')\n"
        )
    } else {
        format!(
            "import socket\n\
             u=socket.socket(socket.{family}, socket.SOCK_DGRAM); u.settimeout(2)\n\
             u.sendto(b'query', ('{server}',53))\n\
             try: print(u.recvfrom(64)[0].decode())\n\
             except Exception: print('timeout')\n"
        )
    };
    let out = traffic::run(netns, uid, &script).expect("query");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls until both UDP and TCP queries get `want` (rules apply before the
/// call returns; the first packets may wait for ARP).
fn answered_by(netns: &str, uid: u32, server: &str, want: &str) -> bool {
    let mut last = (String::new(), String::new());
    let ok = poll_until(Duration::from_secs(10), || {
        last = (
            query(netns, uid, server, false),
            query(netns, uid, server, true),
        );
        (last.0 == want && last.1 == want).then_some(())
    });
    if ok.is_none() {
        eprintln!(
            "queries to {server} from {netns} (uid {uid}): udp {:?}, tcp {:?}, not {want:?}",
            last.0, last.1
        );
    }
    ok.is_some()
}

/// A dns-proxy namespace: connected as dns-proxy connects its own.
struct Proxy {
    addr: Ipv4Addr,
    host_ifname: String,
    _responder: Running,
    _lifeline: Lifeline,
}

fn proxy(c: &Client, name: &str) -> Proxy {
    let (resp, lifeline) = c
        .connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            allow_user_traffic: true,
            ..Default::default()
        })
        .expect("ConnectNamespace");
    let addr = ipv4_from_net_u32(resp.peer_ipv4_address);
    Proxy {
        addr,
        host_ifname: resp.host_ifname.clone(),
        _responder: responder(&resp.netns_name, &addr.to_string(), name),
        _lifeline: lifeline,
    }
}

fn rule(kind: RuleType, ifname: &str, proxy: &str) -> SetDnsRedirectionRuleRequest {
    SetDnsRedirectionRuleRequest {
        r#type: kind as i32,
        input_ifname: ifname.into(),
        proxy_address: proxy.into(),
        nameservers: vec![],
        host_ifname: String::new(),
    }
}

/// A Termina VM `cid` and its fake guest, configured as concierge would.
fn termina(world: &World, c: &Client, cid: u32) -> (String, FakeVm) {
    let vm = c.terminavm_startup(cid).expect("TerminaVmStartup");
    let guest = ipv4_from_addr4(&vm.ipv4_address).expect("address");
    let gateway = ipv4_from_addr4(&vm.gateway_ipv4_address).expect("gateway");
    let fake = FakeVm::boot(
        &world.netns,
        &vm.tap_device_ifname,
        "eth0",
        &guest.to_string(),
        30,
        &gateway.to_string(),
    )
    .expect("fake VM");
    (vm.tap_device_ifname, fake)
}

fn client(world: &World) -> Client {
    Client::connect_to(world.bus.address()).expect("client")
}

fn firewall(world: &World) -> String {
    kernel_snapshot(&world.netns)
        .expect("snapshot")
        .split("## iptables-save")
        .nth(1)
        .expect("firewall part")
        .to_string()
}

#[test]
fn default_rules_send_a_vms_queries_to_the_proxy_until_the_lifeline_closes() {
    let world = World::start().expect("world");
    let c = client(&world);
    let _upstream = responder(world.internet.upstream.name(), REMOTE_HOST, "upstream");
    let p = proxy(&c, "proxy");
    let (tap, fake) = termina(&world, &c, 7);
    let vm_ns = fake.netns().name().to_string();
    assert!(
        answered_by(&vm_ns, 0, REMOTE_HOST, "upstream"),
        "before any rule"
    );
    let before = firewall(&world);

    let lifeline = c
        .set_dns_redirection_rule(&rule(RuleType::Default, &tap, &p.addr.to_string()))
        .expect("SetDnsRedirectionRule DEFAULT");
    assert!(
        answered_by(&vm_ns, 0, REMOTE_HOST, "proxy"),
        "the VM's queries must reach the proxy"
    );
    // Other traffic of the VM is not redirected.
    assert_ne!(firewall(&world), before);

    lifeline.release();
    assert!(
        answered_by(&vm_ns, 0, REMOTE_HOST, "upstream"),
        "after the lifeline closed"
    );
    let after = poll_until(Duration::from_secs(5), || {
        let now = firewall(&world);
        (now == before).then_some(now)
    });
    assert!(
        after.is_some(),
        "the ruleset differs after the rule went:\n{}",
        firewall(&world)
    );
    drop(fake);
    c.terminavm_shutdown(7).expect("shutdown");
}

/// A DEFAULT rule goes with its guest, though dns-proxy still holds the
/// lifeline: the next VM on the same TAP name is not redirected by it.
#[test]
fn a_default_rule_goes_with_its_vm_and_does_not_apply_to_the_next_one() {
    let world = World::start().expect("world");
    let c = client(&world);
    let _upstream = responder(world.internet.upstream.name(), REMOTE_HOST, "upstream");
    let p = proxy(&c, "proxy");
    let (tap, fake) = termina(&world, &c, 7);
    let before = firewall(&world);
    let lifeline = c
        .set_dns_redirection_rule(&rule(RuleType::Default, &tap, &p.addr.to_string()))
        .expect("SetDnsRedirectionRule DEFAULT");
    assert_ne!(firewall(&world), before);

    drop(fake);
    c.terminavm_shutdown(7).expect("shutdown");
    // The TAP is deleted after the answer: its name is free once it is gone.
    let gone = poll_until(Duration::from_secs(5), || {
        let out = world
            .netns
            .exec(&["ip", "link", "show", "dev", &tap])
            .ok()?;
        (!out.status.success()).then_some(())
    });
    assert!(gone.is_some(), "{tap} still there");
    let (next_tap, next) = termina(&world, &c, 8);
    assert_eq!(next_tap, tap, "the next VM gets the same TAP name");
    assert!(
        answered_by(next.netns().name(), 0, REMOTE_HOST, "upstream"),
        "the next VM's queries are not redirected by the old VM's rule"
    );
    assert_eq!(
        firewall(&world),
        before,
        "the rule went with the first VM:\n{}",
        world.daemon.log()
    );
    assert!(world.daemon.log().contains("its guest is gone"));
    lifeline.release();
    drop(next);
    c.terminavm_shutdown(8).expect("shutdown");
}

#[test]
fn user_rules_redirect_the_users_queries_and_exclusion_leaves_other_destinations_alone() {
    let world = World::start_with(DaemonOptions {
        extra_config: "[traffic_sources]\npp-chronos = \"chrome\"\n".into(),
        ..Default::default()
    })
    .expect("world");
    let c = client(&world);
    let chronos = patchpanel_tests::forger::uid_of("pp-chronos").expect("pp-chronos");
    let host = world.netns.name().to_string();
    let _upstream = responder(world.internet.upstream.name(), REMOTE_HOST, "upstream");
    let default = proxy(&c, "default");
    let system = proxy(&c, "system");
    let before = firewall(&world);

    let user = c
        .set_dns_redirection_rule(&SetDnsRedirectionRuleRequest {
            nameservers: vec![REMOTE_HOST.into()],
            host_ifname: default.host_ifname.clone(),
            ..rule(RuleType::User, "", &default.addr.to_string())
        })
        .expect("USER");
    assert!(
        answered_by(&host, chronos, REMOTE_HOST, "default"),
        "Chrome's queries go to the default proxy"
    );
    assert!(
        answered_by(&host, 0, REMOTE_HOST, "upstream"),
        "root's are not the user's"
    );

    // The system proxy is ready: only queries aimed at it are the user's
    // to redirect.
    let exclude = c
        .set_dns_redirection_rule(&rule(
            RuleType::ExcludeDestination,
            "",
            &system.addr.to_string(),
        ))
        .expect("EXCLUDE_DESTINATION");
    assert!(
        answered_by(&host, chronos, REMOTE_HOST, "upstream"),
        "excluded: not aimed at the system proxy"
    );
    assert!(
        answered_by(&host, chronos, &system.addr.to_string(), "default"),
        "aimed at the system proxy: redirected to the default proxy"
    );
    assert!(
        answered_by(&host, 0, &system.addr.to_string(), "system"),
        "root reaches the system proxy itself"
    );

    drop(exclude);
    assert!(answered_by(&host, chronos, REMOTE_HOST, "default"));
    drop(user);
    assert!(answered_by(&host, chronos, REMOTE_HOST, "upstream"));
    assert!(
        poll_until(Duration::from_secs(5), || (firewall(&world) == before)
            .then_some(()))
        .is_some()
    );
}

#[test]
fn arc_rules_show_in_get_devices_and_signal_the_change() {
    let world = World::start().expect("world");
    let c = client(&world);
    let watcher = client(&world);
    let mut signals = watcher.watch_signals().expect("watch");
    let p = proxy(&c, "arcproxy");
    let container = FakeContainer::start().expect("container");
    c.arc_startup(container.pid()).expect("ArcStartup");
    container
        .bring_up("eth0", Some("100.115.92.5"))
        .expect("eth0");
    let arc_device = || {
        c.get_devices()
            .expect("GetDevices")
            .into_iter()
            .find(|d| d.ifname == "arc_eth0")
            .expect("arc_eth0")
    };
    assert!(arc_device().dns_proxy_ipv4_addr.is_empty());

    let v4 = c
        .set_dns_redirection_rule(&rule(RuleType::Arc, "arc_eth0", &p.addr.to_string()))
        .expect("ARC v4");
    let v6 = c
        .set_dns_redirection_rule(&rule(RuleType::Arc, "arc_eth0", "fd64:ffff::3"))
        .expect("ARC v6");
    let d = arc_device();
    assert_eq!(d.dns_proxy_ipv4_addr, p.addr.octets().to_vec());
    assert_eq!(
        d.dns_proxy_ipv6_addr,
        "fd64:ffff::3"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec()
    );
    let changed = |signals: &mut patchpanel_client::Subscription<'_, Signal>| {
        poll_until(Duration::from_secs(10), || {
            match signals.next_timeout(Duration::from_millis(500)) {
                Ok(Some(s)) if s.member() == "NetworkConfigurationChanged" => Some(()),
                _ => None,
            }
        })
        .is_some()
    };
    assert!(
        changed(&mut signals),
        "NetworkConfigurationChanged after the ARC rule"
    );
    // Android uses the proxy directly.
    let out = container
        .exec(&[
            "/usr/bin/python3",
            "-c",
            &format!(
                "import socket\nu=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(3)\n\
                 u.sendto(b'q', ('{}',53)); print(u.recvfrom(64)[0].decode())\n",
                p.addr
            ),
        ])
        .expect("query from ARC");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "arcproxy",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    drop(v4);
    drop(v6);
    assert!(
        changed(&mut signals),
        "NetworkConfigurationChanged after the lifelines closed"
    );
    let d = poll_until(Duration::from_secs(5), || {
        let d = arc_device();
        (d.dns_proxy_ipv4_addr.is_empty() && d.dns_proxy_ipv6_addr.is_empty()).then_some(d)
    });
    assert!(d.is_some(), "{:?}", arc_device());
    c.arc_shutdown(container.pid()).expect("ArcShutdown");
}

/// `patchpanel dns-redirect ...` on the world's bus: holds the rule until
/// killed.
fn held_by_cli(world: &World, args: &[&str]) -> Running {
    let mut child = Command::new(bin_path("patchpanel").expect("patchpanel"))
        .arg("dns-redirect")
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", world.bus.address())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("patchpanel dns-redirect");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("read");
    if !line.starts_with("redirecting DNS") {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        panic!(
            "patchpanel dns-redirect: {line:?} {err}\ndaemon log:\n{}",
            world.daemon.log()
        );
    }
    Running(child)
}

#[test]
fn a_rule_survives_a_manager_crash_while_its_process_lives_and_goes_with_it() {
    let mut world = World::start().expect("world");
    let c = client(&world);
    let _upstream = responder(world.internet.upstream.name(), REMOTE_HOST, "upstream");
    // The proxy's namespace goes with the crash (its lifeline died with
    // the manager; dns-proxy connects a new one): after the restart the
    // rule itself is what is checked.
    let p = proxy(&c, "proxy");
    let (tap, fake) = termina(&world, &c, 8);
    let vm_ns = fake.netns().name().to_string();
    let holder = held_by_cli(
        &world,
        &[
            "--type",
            "default",
            "--ifname",
            &tap,
            "--proxy",
            &p.addr.to_string(),
        ],
    );
    assert!(answered_by(&vm_ns, 0, REMOTE_HOST, "proxy"));
    let rule_text = format!("-i {} -p udp", tap);
    assert!(firewall(&world).contains(&rule_text));

    let successor = world.crash_and_succeed("").expect("successor");
    assert!(
        firewall(&world).contains(&rule_text),
        "the rule was not re-adopted while its process runs; log:\n{}",
        successor.log()
    );
    assert!(
        successor.log().contains("re-adopted"),
        "{}",
        successor.log()
    );

    // The process that asked exits: the rule goes.
    drop(holder);
    let gone = poll_until(Duration::from_secs(10), || {
        (!firewall(&world).contains(&rule_text)).then_some(())
    });
    assert!(
        gone.is_some(),
        "the rule outlived its process; log:\n{}",
        successor.log()
    );
    drop(fake);
    drop(successor);
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let world = World::start().expect("world");
    let c = client(&world);
    let tap = c
        .terminavm_startup(9)
        .expect("TerminaVmStartup")
        .tap_device_ifname;
    let before = firewall(&world);
    let cases: Vec<(SetDnsRedirectionRuleRequest, &str)> = vec![
        (
            rule(RuleType::InvalidRuleType, &tap, "100.115.92.130"),
            "rule type",
        ),
        (
            rule(RuleType::Default, "vmtap9", "100.115.92.130"),
            "not a guest",
        ),
        (
            rule(RuleType::Default, "eth0 -j ACCEPT", "100.115.92.130"),
            "input_ifname",
        ),
        (
            rule(RuleType::Arc, "arc_eth0", "100.115.92.130"),
            "ARC's devices",
        ),
        (rule(RuleType::Default, &tap, "not-an-address"), "not an IP"),
        (rule(RuleType::Default, &tap, "127.0.0.2"), "loopback"),
        (rule(RuleType::User, "", ""), "required"),
        (
            SetDnsRedirectionRuleRequest {
                nameservers: vec!["2001:db8::53".into()],
                ..rule(RuleType::User, "", "100.115.92.130")
            },
            "family",
        ),
        (
            SetDnsRedirectionRuleRequest {
                nameservers: vec!["8.8.8".into()],
                ..rule(RuleType::User, "", "100.115.92.130")
            },
            "8.8.8",
        ),
    ];
    for (request, why) in cases {
        match c.set_dns_redirection_rule(&request) {
            Err(ClientError::InvalidArgument(m)) => assert!(m.contains(why), "{why}: {m}"),
            other => panic!("{request:?}: {other:?}"),
        }
    }
    // Without the lifeline (signature `ay`): refused before any state.
    let bytes = rule(RuleType::User, "", "100.115.92.130").encode_to_vec();
    let err = BusClient::connect(world.bus.address())
        .expect("bus client")
        .call_bytes("SetDnsRedirectionRule", &bytes)
        .expect_err("no lifeline");
    assert!(format!("{err:?}").contains("Invalid"), "{err:?}");
    assert_eq!(firewall(&world), before);
    assert!(c.get_devices().is_ok(), "the daemon still serves");
}

#[test]
fn the_root_namespace_proxies_addresses_are_on_lo_while_patchpanel_runs() {
    let mut world = World::start().expect("world");
    let lo = |world: &World| {
        world
            .netns
            .exec_ok(&["ip", "-6", "-o", "addr", "show", "dev", "lo"])
            .expect("ip addr")
    };
    let shown = lo(&world);
    for addr in ["fd64:ffff::2/128", "fd64:ffff::3/128"] {
        assert!(shown.contains(addr), "{addr} not on lo: {shown}");
    }
    world
        .daemon
        .stop_cleanly(Duration::from_secs(10))
        .expect("stop");
    let shown = lo(&world);
    assert!(
        !shown.contains("fd64:ffff::"),
        "left on lo after the stop: {shown}"
    );
}
