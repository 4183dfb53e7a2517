//! The yardstick: netavark (podman's network backend) attaching a container
//! namespace to a bridge network, driven through its CLI as podman does.
//!
//! netavark runs with `nsenter --net=` inside a private namespace standing in
//! for the host (bridge, NAT and filter rules all land there, never in the
//! real host's namespace). Each container is a named namespace made with
//! `ip netns add`; `setup` and `teardown` read the network options JSON of
//! netavark 1.4 from stdin. Deleting the namespaces removes every trace
//! (veths, bridge, iptables rules), so the harness's `Drop` impls clean up
//! after a failure too.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use patchpanel_tests::Netns;
use serde_json::json;
use tempfile::TempDir;

use crate::interrupt;

/// Where the Debian package installs netavark.
pub const DEFAULT_BINARY: &str = "/usr/lib/podman/netavark";
/// The bridge netavark creates in the stand-in host namespace.
pub const BRIDGE: &str = "podman-bench0";
/// The network's name, the key of both maps in the options JSON.
pub const NETWORK_NAME: &str = "podman-bench";
/// A fixed 64-hex-digit network id (netavark derives chain names from it).
pub const NETWORK_ID: &str = "b3c0ffee00000000000000000000000000000000000000000000000000000001";
/// The bridge network's subnet and gateway.
pub const SUBNET: &str = "10.89.0.0/24";
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
/// Containers get 10.89.0.(index + 2), so indexes run from 0 to this.
pub const MAX_CONTAINER_INDEX: u8 = 252;

/// The network options netavark 1.4's `setup` and `teardown` read: one
/// container with interface `eth0` and a static address on one bridge
/// network without DNS.
pub fn network_options(index: u8) -> Result<serde_json::Value> {
    network_options_multi(index, 1)
}

/// The most bridge networks one container may be attached to.
pub const MAX_NETWORKS: u8 = 8;

/// Like [`network_options`], with the container attached to `networks`
/// bridge networks in one call (several entries in `networks` and
/// `network_info`, as podman passes them): network `k` is
/// [`network_name`]`(k)` on bridge [`bridge_name`]`(k)`, subnet
/// 10.89.`k`.0/24, and the container's interface in it `eth<k>` with the
/// static address 10.89.`k`.(index + 2). Network 0 is exactly the one of
/// [`network_options`].
pub fn network_options_multi(index: u8, networks: u8) -> Result<serde_json::Value> {
    if networks == 0 || networks > MAX_NETWORKS {
        bail!("a container is attached to 1 to {MAX_NETWORKS} networks, not {networks}");
    }
    let address = container_address(index)?;
    let mut per_container = serde_json::Map::new();
    let mut info = serde_json::Map::new();
    for k in 0..networks {
        let [a, b, _, d] = address.octets();
        let [ga, gb, _, gd] = GATEWAY.octets();
        let name = network_name(k);
        per_container.insert(
            name.clone(),
            json!({
                "interface_name": format!("eth{k}"),
                "static_ips": [Ipv4Addr::new(a, b, k, d).to_string()],
            }),
        );
        info.insert(
            name.clone(),
            json!({
                "name": name,
                "id": network_id(k),
                "driver": "bridge",
                "network_interface": bridge_name(k),
                "subnets": [{
                    "subnet": format!("{ga}.{gb}.{k}.0/24"),
                    "gateway": Ipv4Addr::new(ga, gb, k, gd).to_string(),
                }],
                "ipv6_enabled": false,
                "internal": false,
                "dns_enabled": false,
            }),
        );
    }
    Ok(json!({
        "container_id": container_id(index),
        "container_name": format!("bench{index}"),
        "networks": per_container,
        "network_info": info,
    }))
}

/// The name of network `k` ([`NETWORK_NAME`] for 0).
pub fn network_name(k: u8) -> String {
    if k == 0 {
        NETWORK_NAME.to_string()
    } else {
        format!("{NETWORK_NAME}{k}")
    }
}

/// The bridge of network `k` ([`BRIDGE`] for 0).
pub fn bridge_name(k: u8) -> String {
    format!("podman-bench{k}")
}

/// The 64-hex-digit id of network `k` ([`NETWORK_ID`] for 0).
pub fn network_id(k: u8) -> String {
    format!("{}{:02x}", &NETWORK_ID[..62], u16::from(k) + 1)
}

/// The static address of container `index`.
pub fn container_address(index: u8) -> Result<Ipv4Addr> {
    if index > MAX_CONTAINER_INDEX {
        bail!("container index {index} is above {MAX_CONTAINER_INDEX}: {SUBNET} is full");
    }
    let [a, b, c, _] = GATEWAY.octets();
    Ok(Ipv4Addr::new(a, b, c, index + 2))
}

/// A 64-hex-digit container id, distinct per index.
pub fn container_id(index: u8) -> String {
    format!("be{index:062x}")
}

/// netavark's bridge network inside a private stand-in host namespace.
#[derive(Debug)]
pub struct BridgeNetwork {
    binary: PathBuf,
    /// Holds the options files and netavark's `--config` state. Dropped
    /// before `host`.
    dir: TempDir,
    host: Netns,
}

/// A container namespace and the options that attach it.
#[derive(Debug)]
pub struct Container {
    index: u8,
    options_path: PathBuf,
    netns: Netns,
}

impl Container {
    /// The container's namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Its static address.
    pub fn address(&self) -> Result<Ipv4Addr> {
        container_address(self.index)
    }
}

impl BridgeNetwork {
    /// A fresh stand-in host namespace for `binary` (netavark) to work in.
    pub fn new(binary: &Path) -> Result<BridgeNetwork> {
        if !binary.is_file() {
            bail!(
                "{} does not exist (install the Debian package `netavark`, or pass --netavark)",
                binary.display()
            );
        }
        let host = Netns::new().context("cannot create netavark's host namespace")?;
        let dir = tempfile::Builder::new()
            .prefix("pp-bench-netavark-")
            .tempdir()
            .context("cannot create netavark's config directory")?;
        Ok(BridgeNetwork {
            binary: binary.to_path_buf(),
            dir,
            host,
        })
    }

    /// The stand-in host namespace.
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// A new container namespace with its options file; not attached yet.
    pub fn container(&self, index: u8) -> Result<Container> {
        self.container_on(index, 1)
    }

    /// A new container namespace whose options attach it to `networks`
    /// bridge networks in one call (see [`network_options_multi`]).
    pub fn container_on(&self, index: u8, networks: u8) -> Result<Container> {
        let options = network_options_multi(index, networks)?;
        let options_path = self
            .dir
            .path()
            .join(format!("container-{index}-{networks}.json"));
        std::fs::write(&options_path, options.to_string())
            .with_context(|| format!("cannot write {}", options_path.display()))?;
        let netns = Netns::new().context("cannot create a container namespace")?;
        Ok(Container {
            index,
            options_path,
            netns,
        })
    }

    /// `netavark setup`: how long from spawning to its exit.
    pub fn setup(&self, container: &Container) -> Result<Duration> {
        self.run("setup", container)
    }

    /// `netavark teardown`: how long from spawning to its exit.
    pub fn teardown(&self, container: &Container) -> Result<Duration> {
        self.run("teardown", container)
    }

    /// How long `nsenter --net=<host> -- true` takes: the part of every
    /// netavark measurement that is the benchmark's, not netavark's.
    pub fn nsenter_overhead(&self) -> Result<Duration> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.host.path().display()))
            .args(["--", "true"])
            .stdin(Stdio::null());
        let started = Instant::now();
        let out = cmd.output().context("cannot run nsenter")?;
        let elapsed = started.elapsed();
        if !out.status.success() {
            bail!("`nsenter ... true` failed ({})", out.status);
        }
        Ok(elapsed)
    }

    /// Pings the gateway from `container` once (a check, not a measurement).
    pub fn ping_gateway(&self, container: &Container) -> Result<()> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", container.netns.path().display()))
            .args(["--", "ping", "-c", "1", "-W", "3", &GATEWAY.to_string()])
            .output()
            .context("cannot run ping")?;
        if !out.status.success() {
            bail!(
                "container {} cannot ping the bridge gateway {GATEWAY}: {}",
                container.index,
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(())
    }

    fn run(&self, verb: &str, container: &Container) -> Result<Duration> {
        interrupt::check()?;
        let options = File::open(&container.options_path)
            .with_context(|| format!("cannot open {}", container.options_path.display()))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.host.path().display()))
            .arg("--")
            .arg(&self.binary)
            .arg("--config")
            .arg(self.dir.path())
            .arg("--rootless=false")
            .arg(verb)
            .arg(container.netns.path())
            .stdin(Stdio::from(options))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start netavark {verb}"))?;
        let out = child
            .wait_with_output()
            .with_context(|| format!("cannot wait for netavark {verb}"))?;
        let elapsed = started.elapsed();
        if !out.status.success() {
            bail!(
                "netavark {verb} of container {} failed ({}): {}",
                container.index,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(elapsed)
    }
}

/// What one side of the run measured, in the order the table shows them.
#[derive(Debug, Default)]
pub struct NetavarkSamples {
    pub setup_alone: Vec<Duration>,
    pub setup_loaded: Vec<Duration>,
    pub teardown_alone: Vec<Duration>,
    pub teardown_loaded: Vec<Duration>,
    pub nsenter: Vec<Duration>,
}

/// The index of the measured container (its address stays clear of the
/// `loaded` containers' 0..loaded).
const MEASURED_INDEX: u8 = MAX_CONTAINER_INDEX;

/// Measures `iterations` setup/teardown pairs after `warmup` unmeasured
/// ones, first with no other container, then with `loaded` containers
/// attached.
pub fn measure(
    binary: &Path,
    iterations: usize,
    warmup: usize,
    loaded: u8,
) -> Result<NetavarkSamples> {
    if loaded >= MEASURED_INDEX {
        bail!(
            "at most {} loaded containers fit in {SUBNET}",
            MEASURED_INDEX
        );
    }
    let network = BridgeNetwork::new(binary)?;
    let mut samples = NetavarkSamples::default();
    for _ in 0..iterations {
        interrupt::check()?;
        samples.nsenter.push(network.nsenter_overhead()?);
    }

    for i in 0..warmup + iterations {
        let (setup, teardown) = cycle(&network, i == 0)?;
        if i >= warmup {
            samples.setup_alone.push(setup);
            samples.teardown_alone.push(teardown);
        }
    }

    // Held until the end of the function; dropping them deletes their
    // namespaces (and with them the veths) without calling netavark.
    let mut background = Vec::with_capacity(usize::from(loaded));
    for index in 0..loaded {
        let container = network.container(index)?;
        network.setup(&container)?;
        background.push(container);
    }
    for i in 0..warmup + iterations {
        let (setup, teardown) = cycle(&network, i == 0)?;
        if i >= warmup {
            samples.setup_loaded.push(setup);
            samples.teardown_loaded.push(teardown);
        }
    }
    drop(background);
    Ok(samples)
}

/// One measured container: setup, optionally a ping, teardown.
fn cycle(network: &BridgeNetwork, check: bool) -> Result<(Duration, Duration)> {
    let container = network.container(MEASURED_INDEX)?;
    let setup = network.setup(&container)?;
    if check {
        network.ping_gateway(&container)?;
    }
    let teardown = network.teardown(&container)?;
    Ok((setup, teardown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_options_use_the_bridge_driver_with_a_static_address() {
        let options = network_options(5).expect("valid index");

        let network = &options["network_info"][NETWORK_NAME];
        assert_eq!(network["driver"], "bridge");
        assert_eq!(network["network_interface"], BRIDGE);
        assert_eq!(network["subnets"][0]["subnet"], SUBNET);
        assert_eq!(network["subnets"][0]["gateway"], "10.89.0.1");
        let per_container = &options["networks"][NETWORK_NAME];
        assert_eq!(per_container["interface_name"], "eth0");
        assert_eq!(per_container["static_ips"][0], "10.89.0.7");
    }

    #[test]
    fn three_networks_get_their_own_bridges_subnets_and_interfaces() {
        let options = network_options_multi(5, 3).expect("valid");

        assert_eq!(options["networks"].as_object().expect("map").len(), 3);
        let single = network_options(5).expect("valid");
        for map in ["networks", "network_info"] {
            assert_eq!(options[map][NETWORK_NAME], single[map][NETWORK_NAME]);
        }
        let third = &options["network_info"]["podman-bench2"];
        assert_eq!(third["network_interface"], "podman-bench2");
        assert_eq!(third["subnets"][0]["subnet"], "10.89.2.0/24");
        assert_eq!(third["subnets"][0]["gateway"], "10.89.2.1");
        assert_eq!(third["id"].as_str().expect("id").len(), 64);
        assert_ne!(third["id"], options["network_info"][NETWORK_NAME]["id"]);
        let per_container = &options["networks"]["podman-bench2"];
        assert_eq!(per_container["interface_name"], "eth2");
        assert_eq!(per_container["static_ips"][0], "10.89.2.7");
    }

    #[test]
    fn network_zero_is_the_single_network() {
        assert_eq!(network_id(0), NETWORK_ID);
        assert_eq!(bridge_name(0), BRIDGE);
        assert_eq!(network_name(0), NETWORK_NAME);
    }

    #[test]
    fn container_ids_are_64_hex_digits_and_distinct() {
        let (a, b) = (container_id(0), container_id(1));

        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn container_addresses_stop_before_the_broadcast_address() {
        assert_eq!(
            container_address(MAX_CONTAINER_INDEX).expect("last"),
            Ipv4Addr::new(10, 89, 0, 254)
        );
        assert!(container_address(MAX_CONTAINER_INDEX + 1).is_err());
    }
}
