//! Bruschetta (third-party) and Borealis (Steam) VMs as concierge starts
//! them: a real daemon, the TAP opened by a fake VM, real packets through
//! patchpanel's NAT, their own traffic sources in GetTrafficCounters, and
//! Bruschetta's isolation both ways (new connections from the host and from
//! the LAN are dropped, replies to its own connections pass), next to a
//! Termina VM that the same host and LAN do reach.

use std::net::Ipv4Addr;
use std::process::Child;
use std::time::Duration;

use patchpanel_client::{Client, Error as ClientError};
use patchpanel_proto::network_device::GuestType;
use patchpanel_proto::traffic_counter::{IpFamily, Source};
use patchpanel_proto::{ipv4_from_addr4, TrafficCounter};
use patchpanel_tests::vm::FakeVm;
use patchpanel_tests::world::{
    kernel_snapshot, settled_kernel_snapshot, World, REMOTE_HOST, UPLINK_ADDR,
};
use patchpanel_tests::{poll_until, traffic};

const PAYLOAD: usize = 100_000;

fn client(world: &World) -> Client {
    Client::connect_to(world.bus.address()).expect("client")
}

fn addr4(bytes: &[u8]) -> Ipv4Addr {
    ipv4_from_addr4(bytes).expect("4-byte address")
}

/// A sink on the remote host that reads until EOF, then answers with the
/// peer address it saw.
fn sink(world: &World, port: u16) -> Child {
    traffic::listener(
        world.internet.upstream.name(),
        &format!(
            "import socket\n\
             s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{REMOTE_HOST}',{port})); s.listen(8)\n\
             print('listening', flush=True)\n\
             while True:\n    c,a=s.accept()\n    while c.recv(65536): pass\n    c.sendall(a[0].encode()); c.close()\n"
        ),
    )
    .expect("sink")
}

/// Sends PAYLOAD bytes from the VM to the sink; returns the address the
/// remote host saw.
fn send_from(vm: &FakeVm, port: u16) -> String {
    let out = vm
        .exec(&[
            "/usr/bin/python3",
            "-c",
            &format!(
                "import socket\n\
                 c=socket.create_connection(('{REMOTE_HOST}',{port}),timeout=10)\n\
                 c.sendall(b'x'*{PAYLOAD}); c.shutdown(socket.SHUT_WR)\n\
                 print(c.recv(100).decode()); c.close()\n"
            ),
        ])
        .expect("send");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn counted(world: &World, source: Source) -> Option<TrafficCounter> {
    client(world)
        .get_traffic_counters(&["eth0"])
        .expect("GetTrafficCounters")
        .into_iter()
        .find(|c| c.source == source as i32 && c.ip_family == IpFamily::Ipv4 as i32)
}

/// A server in the VM's namespace on `port` that answers "hello".
fn server_in(vm: &FakeVm, port: u16) -> Child {
    traffic::reply_server(vm.netns().name(), "0.0.0.0", port, "hello").expect("server")
}

/// Whether a TCP connection from namespace `netns` to `addr:port` gets
/// the server's answer within 3 s.
fn reaches(netns: &str, addr: &str, port: u16) -> bool {
    traffic::fetch_within(netns, 0, addr, port, Duration::from_secs(3))
        .map(|reply| reply == "hello")
        .unwrap_or(false)
}

fn boot(world: &World, tap: &str, guest: Ipv4Addr, host: Ipv4Addr) -> FakeVm {
    FakeVm::boot(
        &world.netns,
        tap,
        "eth0",
        &guest.to_string(),
        30,
        &host.to_string(),
    )
    .expect("fake VM")
}

#[test]
fn a_borealis_vm_reaches_the_internet_through_nat_and_is_counted_as_borealis() {
    let world = World::start().expect("world");
    let c = client(&world);
    let before = kernel_snapshot(&world.netns).expect("snapshot");
    let server = sink(&world, 9101);

    let resp = c.borealisvm_startup(21).expect("BorealisVmStartup");
    assert_eq!(resp.tap_device_ifname, "vmtap0");
    let subnet = resp.ipv4_subnet.as_ref().expect("subnet");
    assert_eq!(subnet.addr_v4(), Some(Ipv4Addr::new(100, 115, 92, 24)));
    assert_eq!(subnet.prefix_len, 30);
    let (guest, host) = (addr4(&resp.ipv4_address), addr4(&resp.gateway_ipv4_address));
    assert_eq!(
        (guest, host),
        (
            Ipv4Addr::new(100, 115, 92, 26),
            Ipv4Addr::new(100, 115, 92, 25)
        )
    );
    // No LXD container subnet: nothing routed through the VM.
    let routes = world
        .netns
        .exec_ok(&["ip", "route", "show", "proto", "157"])
        .expect("routes");
    assert!(routes.trim().is_empty(), "{routes}");
    // Reported as TERMINA_VM, as the original does.
    let devices = c.get_devices().expect("GetDevices");
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].guest_type, GuestType::TerminaVm as i32);

    let vm = boot(&world, &resp.tap_device_ifname, guest, host);
    let seen = poll_until(Duration::from_secs(10), || {
        Some(send_from(&vm, 9101)).filter(|s| !s.is_empty())
    })
    .expect("the VM's connection");
    assert_eq!(seen, UPLINK_ADDR, "the remote host sees the uplink address");
    let borealis = counted(&world, Source::BorealisVm).expect("BOREALIS_VM counters");
    assert!(borealis.tx_bytes >= PAYLOAD as u64, "{borealis:?}");
    assert!(counted(&world, Source::CrostiniVm).is_none());

    drop(vm);
    c.borealisvm_shutdown(21).expect("BorealisVmShutdown");
    assert!(c.get_devices().expect("GetDevices").is_empty());
    assert_eq!(settled_kernel_snapshot(&world.netns, &before), before);
    traffic::stop(server);
}

#[test]
fn a_bruschetta_vm_is_isolated_but_its_own_connections_work() {
    let world = World::start().expect("world");
    let c = client(&world);
    let before = kernel_snapshot(&world.netns).expect("snapshot");
    let server = sink(&world, 9102);
    // The LAN knows the way to the guests (a router with a route to them,
    // as a user could add): only patchpanel's firewall decides.
    world
        .internet
        .upstream
        .exec_ok(&["ip", "route", "add", "100.115.92.0/24", "via", UPLINK_ADDR])
        .expect("route to the guests");

    let b = c.bruschettavm_startup(5).expect("BruschettaVmStartup");
    let t = c.terminavm_startup(6).expect("TerminaVmStartup");
    assert_ne!(b.tap_device_ifname, t.tap_device_ifname);
    assert!(b.ipv4_subnet.as_ref().unwrap().prefix_len == 30);
    let bvm = boot(
        &world,
        &b.tap_device_ifname,
        addr4(&b.ipv4_address),
        addr4(&b.gateway_ipv4_address),
    );
    let tvm = boot(
        &world,
        &t.tap_device_ifname,
        addr4(&t.ipv4_address),
        addr4(&t.gateway_ipv4_address),
    );

    // Its own connections and their replies pass, through NAT.
    let seen = poll_until(Duration::from_secs(10), || {
        Some(send_from(&bvm, 9102)).filter(|s| !s.is_empty())
    })
    .expect("the Bruschetta VM's connection");
    assert_eq!(seen, UPLINK_ADDR);
    let bruschetta = counted(&world, Source::BruschettaVm).expect("BRUSCHETTA_VM counters");
    assert!(bruschetta.tx_bytes >= PAYLOAD as u64, "{bruschetta:?}");

    // New connections to it: none from the host, none from the LAN; the
    // Termina VM next to it takes both.
    let b_server = server_in(&bvm, 8080);
    let t_server = server_in(&tvm, 8080);
    let b_addr = addr4(&b.ipv4_address).to_string();
    let t_addr = addr4(&t.ipv4_address).to_string();
    assert!(
        poll_until(Duration::from_secs(10), || reaches(
            world.netns.name(),
            &t_addr,
            8080
        )
        .then_some(()))
        .is_some(),
        "the host cannot reach the Termina VM (control)"
    );
    assert!(
        reaches(world.internet.upstream.name(), &t_addr, 8080),
        "the LAN cannot reach the Termina VM (control)"
    );
    assert!(
        !reaches(world.netns.name(), &b_addr, 8080),
        "the host opened a connection to Bruschetta"
    );
    assert!(
        !reaches(world.internet.upstream.name(), &b_addr, 8080),
        "the LAN opened a connection to Bruschetta"
    );
    assert!(
        !reaches(tvm.netns().name(), &b_addr, 8080),
        "another guest opened a connection to Bruschetta"
    );

    // The VM reaching a service on the host: the replies pass.
    let host_server = traffic::reply_server(
        world.netns.name(),
        &addr4(&b.gateway_ipv4_address).to_string(),
        8090,
        "hello",
    )
    .expect("host server");
    assert!(reaches(
        bvm.netns().name(),
        &addr4(&b.gateway_ipv4_address).to_string(),
        8090
    ));
    traffic::stop(host_server);

    traffic::stop(b_server);
    traffic::stop(t_server);
    drop(bvm);
    drop(tvm);
    c.bruschettavm_shutdown(5).expect("BruschettaVmShutdown");
    c.terminavm_shutdown(6).expect("TerminaVmShutdown");
    world
        .internet
        .upstream
        .exec_ok(&["ip", "route", "del", "100.115.92.0/24"])
        .expect("route");
    assert_eq!(settled_kernel_snapshot(&world.netns, &before), before);
    traffic::stop(server);
}

#[test]
fn bad_bruschetta_and_borealis_requests_are_refused() {
    let world = World::start().expect("world");
    let c = client(&world);
    let before = kernel_snapshot(&world.netns).expect("snapshot");
    for result in [
        c.bruschettavm_startup(0).map(|_| ()),
        c.borealisvm_startup(0).map(|_| ()),
        c.bruschettavm_shutdown(77),
        c.borealisvm_shutdown(77),
    ] {
        match result {
            Err(ClientError::InvalidArgument(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    // A Borealis VM and a Bruschetta VM with the same number are two VMs.
    c.borealisvm_startup(3).expect("Borealis 3");
    c.bruschettavm_startup(3).expect("Bruschetta 3");
    assert_eq!(c.get_devices().expect("devices").len(), 2);
    c.borealisvm_shutdown(3).expect("stop Borealis");
    c.bruschettavm_shutdown(3).expect("stop Bruschetta");
    assert_eq!(settled_kernel_snapshot(&world.netns, &before), before);
}
