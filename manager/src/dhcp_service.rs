//! DHCPv4 for guest links (`guest_dhcp = true`, for generic hosts whose
//! stock VM images configure themselves by DHCP; off by default, as
//! ChromeOS's concierge configures its guests statically): which links the
//! dhcp-server helper serves, and with what.
//!
//! Every VM TAP and every connected namespace's host veth is served with
//! the one address the daemon allocated for its guest (the guest end of
//! its subnet), the host end as router, the host's DNS servers and a lease
//! of [`LEASE_SECS`]. Each link's config is in the helper's replay log: a
//! respawned helper serves again with no D-Bus call, and a lease a client
//! renews there is acked, because the address is still that client's.
//!
//! Policy ([`wanted`], [`DhcpLinks::diff`]) is pure; [`DhcpLinks::reconcile`]
//! sends what the diff says, from the dispatcher's tail.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use log::{info, warn};
use patchpanel_dhcp::LinkConfig;
use patchpanel_ipc::{IfName, Request};
use patchpanel_sandbox::Process;

use crate::dns_service::DnsRedirections;
use crate::env::{GuestView, HelperLink};

/// Lease time announced (an hour, as dnsmasq's default).
pub const LEASE_SECS: u32 = 3600;

/// The host's IPv4 name servers a guest can use: the `nameserver` lines of
/// `resolv_conf` that are not loopback (a guest cannot reach the host's
/// 127.0.0.53 stub resolver), at most three (what resolvers read).
pub fn guest_name_servers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .take(3)
        .collect()
}

/// The name servers for guests on this host: those of `/etc/resolv.conf`,
/// else, behind systemd-resolved's stub, the ones it forwards to.
pub fn host_name_servers() -> Vec<Ipv4Addr> {
    for path in ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"] {
        let found = std::fs::read_to_string(path)
            .map(|t| guest_name_servers(&t))
            .unwrap_or_default();
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}

/// Every guest link to serve now, by link name. A link with a DNS proxy
/// (an IPv4 `SetDnsRedirectionRule` DEFAULT rule for it, `proxies`) is
/// given the proxy as its name server: the guest asks it directly.
pub fn wanted(
    guests: &GuestView<'_>,
    dns: &[Ipv4Addr],
    proxies: &BTreeMap<IfName, Ipv4Addr>,
) -> BTreeMap<IfName, LinkConfig> {
    let config = |ifname: &IfName, server, client, prefix_len| LinkConfig {
        server,
        client,
        prefix_len,
        dns: proxies
            .get(ifname)
            .map_or_else(|| dns.to_vec(), |proxy| vec![*proxy]),
        mtu: None,
        lease_secs: LEASE_SECS,
    };
    let mut wanted = BTreeMap::new();
    for vm in guests.vms {
        wanted.insert(
            vm.tap.clone(),
            config(
                &vm.tap,
                vm.subnet.host(),
                vm.subnet.guest(),
                vm.subnet.subnet.prefix_len(),
            ),
        );
    }
    for ns in guests.namespaces.values() {
        wanted.insert(
            ns.host_ifname.clone(),
            config(
                &ns.host_ifname,
                ns.host_addr(),
                ns.peer_addr(),
                ns.subnet.subnet.prefix_len(),
            ),
        );
    }
    wanted
}

/// One change to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpChange {
    Serve(IfName, LinkConfig),
    Stop(IfName),
}

/// What the helper serves, as the manager told it.
#[derive(Debug, Default)]
pub struct DhcpLinks {
    /// `None`: DHCP is off (`guest_dhcp = false`).
    name_servers: Option<Vec<Ipv4Addr>>,
    active: BTreeMap<IfName, LinkConfig>,
}

fn replay_key(ifname: &IfName) -> String {
    format!("dhcp {ifname}")
}

impl DhcpLinks {
    /// Serving with `name_servers` for the guests (`Some`), or off.
    pub fn new(name_servers: Option<Vec<Ipv4Addr>>) -> DhcpLinks {
        DhcpLinks {
            name_servers,
            active: BTreeMap::new(),
        }
    }

    /// Stops first (a link whose config changed is re-sent whole: the
    /// helper replaces it), then serves what is new or changed.
    pub fn diff(&self, wanted: &BTreeMap<IfName, LinkConfig>) -> Vec<DhcpChange> {
        let mut changes: Vec<DhcpChange> = self
            .active
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .map(|k| DhcpChange::Stop(k.clone()))
            .collect();
        changes.extend(
            wanted
                .iter()
                .filter(|(k, c)| self.active.get(*k) != Some(*c))
                .map(|(k, c)| DhcpChange::Serve(k.clone(), c.clone())),
        );
        changes
    }

    /// Brings the helper's links in line with the guests.
    pub fn reconcile(
        &mut self,
        guests: &GuestView<'_>,
        redirections: &DnsRedirections,
        link: &mut dyn HelperLink,
    ) {
        let Some(dns) = &self.name_servers else {
            return;
        };
        let wanted = wanted(guests, dns, &redirections.guest_proxies());
        for change in self.diff(&wanted) {
            match change {
                DhcpChange::Stop(ifname) => {
                    link.forget_replay(Process::DhcpServer, &replay_key(&ifname));
                    self.active.remove(&ifname);
                    let request = Request::DhcpStop {
                        ifname: ifname.clone(),
                    };
                    // Not waited for (see mcast_service).
                    if let Err(e) = link.send_waiting(Process::DhcpServer, request) {
                        warn!("DHCP on {ifname}: stop: {e:?}");
                    }
                }
                DhcpChange::Serve(ifname, config) => {
                    let request = Request::DhcpServe {
                        ifname: ifname.clone(),
                        config: config.clone(),
                    };
                    // Recorded first: a helper that is restarting gets it
                    // on replay.
                    link.record_replay(
                        Process::DhcpServer,
                        &replay_key(&ifname),
                        request.clone(),
                        Vec::new(),
                    );
                    self.active.insert(ifname.clone(), config.clone());
                    match link.call_helper(Process::DhcpServer, request, &[]) {
                        Ok(_) => info!(
                            "DHCP on {ifname}: {} for the guest, router {}",
                            config.client, config.server
                        ),
                        Err(e) => warn!("DHCP on {ifname}: {e} (retried when the helper restarts)"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_servers_skip_loopback_and_ipv6_and_keep_three() {
        let text = "# generated\nnameserver 127.0.0.53\nnameserver 2001:db8::53\n\
                    nameserver 192.0.2.53\nsearch lan\nnameserver 198.51.100.1\n\
                    nameserver 198.51.100.2\nnameserver 198.51.100.3\nnameserver x\n";
        assert_eq!(
            guest_name_servers(text),
            [
                Ipv4Addr::new(192, 0, 2, 53),
                Ipv4Addr::new(198, 51, 100, 1),
                Ipv4Addr::new(198, 51, 100, 2)
            ]
        );
        assert!(guest_name_servers("nameserver 127.0.0.53\n").is_empty());
    }

    fn config(client: u8) -> LinkConfig {
        LinkConfig {
            server: Ipv4Addr::new(100, 115, 92, client - 1),
            client: Ipv4Addr::new(100, 115, 92, client),
            prefix_len: 30,
            dns: vec![],
            mtu: None,
            lease_secs: LEASE_SECS,
        }
    }

    #[test]
    fn a_new_link_is_served_a_gone_one_stopped_a_changed_one_resent() {
        let name = |s: &str| IfName::new(s).expect("name");
        let mut links = DhcpLinks::new(Some(vec![]));
        let wanted: BTreeMap<_, _> = [(name("vmtap0"), config(26))].into();
        assert_eq!(
            links.diff(&wanted),
            [DhcpChange::Serve(name("vmtap0"), config(26))]
        );
        links.active = wanted;
        let changed: BTreeMap<_, _> = [(
            name("vmtap0"),
            LinkConfig {
                mtu: Some(1400),
                ..config(26)
            },
        )]
        .into();
        assert!(
            matches!(&links.diff(&changed)[..], [DhcpChange::Serve(_, c)] if c.mtu == Some(1400))
        );
        assert_eq!(
            links.diff(&BTreeMap::new()),
            [DhcpChange::Stop(name("vmtap0"))]
        );
    }

    #[test]
    fn a_link_with_a_dns_proxy_is_told_the_proxy() {
        let mut addrs = patchpanel_addr::AddressManager::new();
        let vm = crate::guests::vm_allocate(
            crate::guests::VmKind::Termina,
            7,
            None,
            &mut addrs,
            &Default::default(),
        )
        .expect("vm");
        let vms = [vm.clone()];
        let namespaces = BTreeMap::new();
        let guests = GuestView {
            namespaces: &namespaces,
            arc: None,
            vms: &vms,
        };
        let host = [Ipv4Addr::new(192, 0, 2, 53)];
        let plain = wanted(&guests, &host, &BTreeMap::new());
        assert_eq!(plain[&vm.tap].dns, host);
        assert_eq!(plain[&vm.tap].client, vm.subnet.guest());
        let proxy = Ipv4Addr::new(100, 115, 92, 130);
        let proxied = wanted(&guests, &host, &[(vm.tap.clone(), proxy)].into());
        assert_eq!(proxied[&vm.tap].dns, [proxy]);
    }
}
