//! A daemon that follows a fake shill the way today's shill drives it
//! (since 2023-12 shill configures nothing itself): the namespace's uplink
//! eth0 (see [`crate::world`]) without its address and routes, a
//! [`FakeShill`] listing eth0 as the default Ethernet device, the daemon
//! started with `--uplinks=shill`; and the requests such a shill sends.
//!
//! Fields drop in order: the daemon stops before shill leaves, shill
//! leaves before the bus goes, the namespaces last.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use patchpanel_proto::configure_network_request::{self as area, NetworkTechnology};
use patchpanel_proto::{ConfigureNetworkRequest, IPAddrCIDR, NetworkConfig, NetworkPriority};
use prost::Message as _;

use crate::fake_shill::FakeShill;
use crate::world::Internet;
use crate::{poll_until, BusClient, Daemon, DaemonOptions, Netns, PrivateBus};

/// Every area a full Ethernet configuration sets (clear first, no IPv6).
pub const FULL_AREA: u32 = area::AREA_CLEAR
    | area::AREA_IPV4_ADDRESS
    | area::AREA_IPV4_ROUTE
    | area::AREA_IPV4_DEFAULT_ROUTE
    | area::AREA_ROUTING_POLICY
    | area::AREA_DNS
    | area::AREA_MTU;

#[derive(Debug)]
pub struct ShillWorld {
    pub daemon: Daemon,
    pub shill: FakeShill,
    pub bus: PrivateBus,
    pub internet: Internet,
    pub netns: Netns,
}

/// Starts a daemon that follows shill on `bus` in `netns`, reusing the
/// state of `successor_of` if given, with `extra_config` appended.
pub fn start_daemon(
    netns: &Netns,
    bus: &PrivateBus,
    successor_of: Option<&Daemon>,
    extra_config: &str,
) -> Result<Daemon> {
    let mut daemon = Daemon::start_with(
        netns,
        bus,
        DaemonOptions {
            extra_args: vec!["--uplinks=shill".into()],
            extra_config: extra_config.into(),
            successor_of: successor_of
                .map(|d| (d.state_dir().to_path_buf(), d.netns_prefix().to_string())),
            ..Default::default()
        },
    )?;
    daemon.wait_ready()?;
    Ok(daemon)
}

impl ShillWorld {
    /// The world, with `extra_config` appended to the daemon's config.
    pub fn start(extra_config: &str) -> Result<ShillWorld> {
        let netns = Netns::new()?;
        let internet = Internet::attach(&netns)?;
        netns.exec_ok(&["ip", "addr", "flush", "dev", "eth0"])?;
        let bus = PrivateBus::start()?;
        let shill = FakeShill::start_with_default(bus.address(), "eth0", "ethernet")?;
        let daemon = start_daemon(&netns, &bus, None, extra_config)?;
        Ok(ShillWorld {
            daemon,
            shill,
            bus,
            internet,
            netns,
        })
    }

    /// `ip ARGS` in the daemon's namespace; its output.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip"];
        argv.extend_from_slice(args);
        self.netns.exec_ok(&argv).expect("ip")
    }

    /// The interface index of `name` in the daemon's namespace.
    pub fn ifindex(&self, name: &str) -> i32 {
        self.netns
            .exec_ok(&["cat", &format!("/sys/class/net/{name}/ifindex")])
            .expect("ifindex")
            .trim()
            .parse()
            .expect("a number")
    }

    /// Waits, as shill's client library does, until both
    /// `org.chromium.PatchPanel` and `org.chromium.SocketService` have an
    /// owner.
    pub fn wait_both_names(&self) -> Result<()> {
        wait_both_names(&self.bus)
    }

    /// Sends `req`; the response bytes, or the D-Bus error as
    /// `"name: message"`.
    pub fn configure(&self, req: &ConfigureNetworkRequest) -> Result<Vec<u8>, String> {
        configure(&self.bus, req)
    }
}

/// See [`ShillWorld::wait_both_names`].
pub fn wait_both_names(bus: &PrivateBus) -> Result<()> {
    let client = BusClient::connect(bus.address())?;
    let ready = poll_until(Duration::from_secs(10), || {
        let both = ["org.chromium.PatchPanel", "org.chromium.SocketService"]
            .iter()
            .all(|n| client.name_has_owner(n).unwrap_or(false));
        both.then_some(())
    });
    if ready.is_none() {
        bail!("both names never had an owner");
    }
    Ok(())
}

/// See [`ShillWorld::configure`].
pub fn configure(bus: &PrivateBus, req: &ConfigureNetworkRequest) -> Result<Vec<u8>, String> {
    BusClient::connect(bus.address())
        .context("client")
        .map_err(|e| format!("{e:#}"))?
        .call_bytes("ConfigureNetwork", &req.encode_to_vec())
        .map_err(|e| format!("{}: {}", e.name, e.message))
}

/// A typical Ethernet configuration of eth0 (`ifindex`, named `ifname`):
/// 192.0.2.2/24 via 192.0.2.1 (the world's upstream), that router as DNS
/// server, MTU 1400, the primary network (logical and physical), rank 0.
pub fn ethernet_request(ifindex: i32, ifname: &str, area: u32) -> ConfigureNetworkRequest {
    ConfigureNetworkRequest {
        ifindex,
        ifname: ifname.into(),
        area,
        network_config: Some(NetworkConfig {
            ipv4_address: Some(IPAddrCIDR {
                addr: vec![192, 0, 2, 2],
                prefix_len: 24,
            }),
            ipv4_gateway: Some(vec![192, 0, 2, 1]),
            ipv4_default_route: true,
            dns_servers: vec![vec![192, 0, 2, 1]],
            mtu: Some(1400),
            ..Default::default()
        }),
        technology: NetworkTechnology::Ethernet as i32,
        priority: Some(NetworkPriority {
            is_primary_logical: true,
            is_primary_physical: true,
            is_primary_for_dns: true,
            ranking_order: 0,
        }),
        session_id: 7,
    }
}

/// A VPN configuration of `vpn0` (`ifindex`): 10.8.0.2/24 via 10.8.0.1,
/// the default (logical) network when `primary`, rank 0.
pub fn vpn_request(ifindex: i32, area: u32, primary: bool) -> ConfigureNetworkRequest {
    ConfigureNetworkRequest {
        ifindex,
        ifname: "vpn0".into(),
        area,
        network_config: Some(NetworkConfig {
            ipv4_address: Some(IPAddrCIDR {
                addr: vec![10, 8, 0, 2],
                prefix_len: 24,
            }),
            ipv4_gateway: Some(vec![10, 8, 0, 1]),
            ipv4_default_route: true,
            ..Default::default()
        }),
        technology: NetworkTechnology::Vpn as i32,
        priority: Some(NetworkPriority {
            is_primary_logical: primary,
            is_primary_for_dns: primary,
            ranking_order: 0,
            ..Default::default()
        }),
        session_id: 9,
    }
}
