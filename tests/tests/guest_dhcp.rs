//! DHCP for guests (`guest_dhcp = true`) with real clients nobody on the
//! project wrote: busybox `udhcpc` and ISC `dhclient`, each in a guest
//! namespace behind the link patchpanel made (a VM's TAP through the fake
//! VM relay, a connected namespace's veth). Each gets the address the
//! daemon allocated, the router and the DNS servers, and reaches the
//! internet host through NAT; a client asking for another guest's address
//! gets a NAK; a kill -9 of the helper mid-lease leaves renewals answered;
//! the helper's privileges are asserted in `process_tree.rs`.

use std::process::Command;
use std::time::Duration;

use patchpanel_client::Client;
use patchpanel_dhcp::{client_message, parse_reply, MessageType};
use patchpanel_proto::{ipv4_from_addr4, ConnectNamespaceRequest};
use patchpanel_tests::dhcp::{field, pings, udhcpc, udhcpc_script};
use patchpanel_tests::vm::FakeVm;
use patchpanel_tests::world::{World, REMOTE_HOST};
use patchpanel_tests::{poll_until, DaemonOptions, Helper};

/// The name server the daemon reads from its config's stand-in for
/// resolv.conf (the test host's own would differ from machine to machine).
const DNS: &str = "192.0.2.53";

fn world() -> World {
    World::start_with(DaemonOptions {
        extra_config: format!("guest_dhcp = true\nguest_dns = [\"{DNS}\"]\n"),
        ..Default::default()
    })
    .expect("world")
}

/// A Termina VM (cid 7) behind the fake VM relay, whose `eth0` ran udhcpc
/// once: the VM, its address and gateway as the daemon answered, and the
/// udhcpc script's `lease bound` line.
struct LeasedVm {
    fake: FakeVm,
    guest: std::net::Ipv4Addr,
    gateway: std::net::Ipv4Addr,
    line: String,
}

fn leased_vm(world: &World, c: &Client) -> LeasedVm {
    let vm = c.terminavm_startup(7).expect("TerminaVmStartup");
    let guest = ipv4_from_addr4(&vm.ipv4_address).expect("address");
    let gateway = ipv4_from_addr4(&vm.gateway_ipv4_address).expect("gateway");
    let fake = FakeVm::attach(&world.netns, &vm.tap_device_ifname, "eth0").expect("fake VM");
    fake.exec(&["ip", "link", "set", "eth0", "up"]).expect("up");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = udhcpc(fake.netns().name(), "eth0", &udhcpc_script(dir.path()));
    let line = out
        .lines()
        .find(|l| l.starts_with("lease bound"))
        .unwrap_or_else(|| panic!("udhcpc got no lease:\n{out}\n{}", world.daemon.log()))
        .to_string();
    assert_eq!(
        field(&line, "ip"),
        Some(guest.to_string().as_str()),
        "{line}"
    );
    LeasedVm {
        fake,
        guest,
        gateway,
        line,
    }
}

#[test]
fn udhcpc_in_a_vm_gets_its_address_router_and_dns_and_reaches_the_internet() {
    let world = world();
    let c = Client::connect_to(world.bus.address()).expect("client");
    let LeasedVm {
        fake,
        guest,
        gateway,
        line,
    } = leased_vm(&world, &c);
    let line = line.as_str();
    assert_eq!(field(line, "mask"), Some("30"), "{line}");
    assert_eq!(
        field(line, "router"),
        Some(gateway.to_string().as_str()),
        "{line}"
    );
    assert_eq!(field(line, "dns"), Some(DNS), "{line}");
    assert_eq!(field(line, "lease"), Some("3600"), "{line}");
    assert!(
        pings(fake.netns().name(), REMOTE_HOST),
        "no route out after DHCP"
    );

    // kill -9 of the helper mid-lease: the respawned one answers the
    // renewal (the address is still that client's).
    let old = world
        .daemon
        .tree()
        .expect("tree")
        .helper(Helper::DhcpServer);
    // SAFETY: kill takes integers only.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    poll_until(Duration::from_secs(10), || {
        let log = world.daemon.log();
        let new = world.daemon.tree().ok()?.helper(Helper::DhcpServer);
        let ups = log
            .lines()
            .filter(|l| {
                l.contains("patchpanel-dhcp-server (pid ") && l.contains(") is up; replayed")
            })
            .count();
        (new != old && ups >= 2).then_some(())
    })
    .expect("dhcp-server respawned");
    let renew = client_message(
        MessageType::Request,
        99,
        [0x52, 0x54, 0, 1, 2, 3],
        guest,
        None,
        None,
    );
    let answer = renewal(fake.netns().name(), "eth0", &renew, &guest.to_string());
    let (kind, yiaddr, _) = parse_reply(&answer).expect("a DHCP reply");
    assert_eq!((kind, yiaddr), (MessageType::Ack, guest));
    drop(fake);
    c.terminavm_shutdown(7).expect("shutdown");
}

/// Broadcasts `request` from `addr`:68 on `ifname` in `netns` to port 67
/// and returns the first reply.
fn renewal(netns: &str, ifname: &str, request: &[u8], addr: &str) -> Vec<u8> {
    let hex: String = request.iter().map(|b| format!("{b:02x}")).collect();
    let script = format!(
        "import socket\n\
         s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'{ifname}')\n\
         s.bind(('{addr}', 68))\n\
         s.sendto(bytes.fromhex('{hex}'), ('255.255.255.255', 67))\n\
         print(s.recvfrom(2048)[0].hex())\n"
    );
    let out = poll_until(Duration::from_secs(10), || {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "python3", "-c", &script])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!text.is_empty()).then_some(text)
    })
    .expect("an answer to the renewal");
    (0..out.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&out[i..i + 2], 16).ok())
        .collect()
}

#[test]
fn dhclient_in_a_connected_namespace_gets_its_own_address_and_a_foreign_one_is_naked() {
    let world = world();
    let c = Client::connect_to(world.bus.address()).expect("client");
    let (resp, _lifeline) = c
        .connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("ConnectNamespace");
    let ns = resp.netns_name.clone();
    let peer = patchpanel_proto::ipv4_from_net_u32(resp.peer_ipv4_address);
    let host = patchpanel_proto::ipv4_from_net_u32(resp.host_ipv4_address);
    // The namespace starts configured; a stock image would not be.
    let run = |argv: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(argv)
            .output()
            .expect("run")
    };
    run(&["ip", "addr", "flush", "dev", &resp.peer_ifname]);
    let dir = tempfile::tempdir().expect("tempdir");
    let lease_file = dir.path().join("dhclient.leases");
    let pid_file = dir.path().join("dhclient.pid");
    // dhclient applies nothing itself with /bin/true as its script: the
    // lease file says what it got.
    let out = run(&[
        "dhclient",
        "-1",
        "-v",
        "-sf",
        "/bin/true",
        "-lf",
        lease_file.to_str().expect("path"),
        "-pf",
        pid_file.to_str().expect("path"),
        &resp.peer_ifname,
    ]);
    let leases = std::fs::read_to_string(&lease_file).unwrap_or_default();
    let _ = run(&["dhclient", "-x", "-pf", pid_file.to_str().expect("path")]);
    assert!(
        leases.contains(&format!("fixed-address {peer};")),
        "dhclient's lease: {leases}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        world.daemon.log()
    );
    assert!(
        leases.contains(&format!("option routers {host};")),
        "{leases}"
    );
    assert!(
        leases.contains(&format!("option domain-name-servers {DNS};")),
        "{leases}"
    );

    // Another guest's address (a VM's) asked for on this link: NAK.
    let vm = c.terminavm_startup(8).expect("TerminaVmStartup");
    let other = ipv4_from_addr4(&vm.ipv4_address).expect("address");
    let request = client_message(
        MessageType::Request,
        5,
        [0x52, 0x54, 0, 9, 9, 9],
        std::net::Ipv4Addr::UNSPECIFIED,
        Some(other),
        None,
    );
    let answer = renewal(&ns, &resp.peer_ifname, &request, "0.0.0.0");
    let (kind, _, _) = parse_reply(&answer).expect("a DHCP reply");
    assert_eq!(kind, MessageType::Nak);
    c.terminavm_shutdown(8).expect("shutdown");
}

/// A host firewall that drops INPUT (ufw's `iptables -P INPUT DROP`): the
/// guests' DHCP requests still reach the server, through patchpanel's
/// narrow accept of UDP 68 -> 67 on guest links (nothing else of the
/// host's INPUT opens: the guest cannot ping the host's TAP address).
#[test]
fn a_host_firewall_that_drops_input_still_lets_guest_dhcp_through() {
    let world = world();
    world
        .netns
        .exec_ok(&["iptables", "-P", "INPUT", "DROP"])
        .expect("ufw-like INPUT policy");
    let c = Client::connect_to(world.daemon.bus_address()).expect("client");
    let LeasedVm { fake, gateway, .. } = leased_vm(&world, &c);
    assert!(pings(fake.netns().name(), REMOTE_HOST), "no route out");
    let to_host = fake
        .exec(&["ping", "-c", "1", "-W", "1", &gateway.to_string()])
        .expect("ping");
    assert!(
        !to_host.status.success(),
        "the host's INPUT policy still applies to everything but DHCP"
    );
    drop(fake);
    c.terminavm_shutdown(7).expect("shutdown");
}
