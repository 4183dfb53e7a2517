//! Benchmarks of `patchpaneld` on a real kernel, next to a known peer.
//!
//! `bench-connect-ns` measures how long a `ConnectNamespace` call takes until
//! the namespace is usable, and how long closing its lifeline takes until
//! every trace is gone, with none and with 100 other namespaces connected. It
//! measures netavark's `setup` and `teardown` of a container on a bridge
//! network in the same run, so that the numbers come with a yardstick taken
//! on the same machine at the same time.
//!
//! `bench-port-rules` creates and deletes 1000 port forwards one
//! `ModifyPortRule` call at a time and times `GetTrafficCounters` with 1, 10
//! and 50 uplinks, each next to the naive way (one `iptables` process per
//! rule; `iptables -L` and `ip6tables -L` parsed), interleaved call by call.
//!
//! `bench-guests` times `TerminaVmStartup` until the TAP is usable and
//! `ArcStartup` with three uplinks until ARC's devices are in place (and
//! both shutdowns), interleaved with netavark setting up one bridge network
//! and three in one call. `bench-ndproxy` times the NS->NA round trip and
//! the NS answer rate through `ndproxyd`, `ndppd` and the kernel's own
//! proxy entries, from a raw ICMPv6 socket upstream. `bench-adb` measures
//! the ADB relay next to socat and a direct (DNAT) path. `bench-mcast`
//! times an mDNS query -> answer round trip across `mcastd`, avahi-daemon's
//! reflector and the direct path, and counts the mDNS records each
//! forwards per second. `bench-idle` measures the memory of the daemon's
//! process tree idle and with 50 connected namespaces, and each process's
//! wake-ups per second ([`idle`]). (`bench/run soak` runs the end-to-end
//! soak test in its long form instead of a benchmark binary.)
//! See `bench/README.md`.
//!
//! Everything runs in private network namespaces built with the
//! `patchpanel-tests` harness; the host's root namespace is never touched.
//! The modules own one concern each: the measurements of each side
//! ([`patchpanel`], [`netavark`], [`port_rules`], [`traffic_counters`],
//! [`guests`], [`ndproxy`], [`adb`], [`mcast`]), the NS/NA probe
//! ([`nd_probe`]), the mDNS peers ([`mdns_peer`]), a
//! daemon's world for one measurement ([`world`]), the kernel check that a
//! link is gone ([`link_probe`]), a thread inside another namespace and a
//! timed process for the naive peers ([`netns_thread`], [`process`]),
//! percentiles ([`stats`]), the printed table ([`report`]) and an orderly
//! stop on SIGINT/SIGTERM ([`interrupt`]).

pub mod adb;
pub mod configure_network;
pub mod dhcp;
pub mod guests;
pub mod host_firewall;
pub mod idle;
pub mod interrupt;
pub mod link_probe;
pub mod mcast;
pub mod mdns_peer;
pub mod nd_probe;
pub mod ndproxy;
pub mod netavark;
pub mod netns_thread;
pub mod patchpanel;
pub mod port_rules;
pub mod process;
pub mod report;
pub mod stats;
pub mod tag_socket;
pub mod traffic_counters;
pub mod world;

/// `--firewall`: which of patchpanel's firewall backends a benchmark
/// measures, one after the other in the same run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FirewallArg {
    Both,
    Nftables,
    Iptables,
}

impl FirewallArg {
    /// The backends, as `firewall_backend` names them.
    pub fn backends(self) -> &'static [&'static str] {
        match self {
            FirewallArg::Both => &["nftables", "iptables"],
            FirewallArg::Nftables => &["nftables"],
            FirewallArg::Iptables => &["iptables"],
        }
    }
}

/// Makes the daemons this process starts from now on use `backend`
/// (`nftables` or `iptables`): the harness reads `PATCHPANEL_TEST_FIREWALL`
/// when it writes a daemon's configuration. Call it between measurements,
/// while no other thread runs.
pub fn use_firewall_backend(backend: &str) {
    std::env::set_var("PATCHPANEL_TEST_FIREWALL", backend);
}
