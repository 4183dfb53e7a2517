//! The command line: subcommands, flags and the parsing of values that the
//! server would otherwise reject with a less helpful message.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use patchpanel_proto::modify_port_rule_request::{Protocol, RuleType};
use patchpanel_proto::traffic_counter::Source;

/// Traffic source names accepted by `--source`: patchpanel's own
/// `TrafficSource` names, as shill and the original CLI spell them, mapped to
/// the protobuf `TrafficCounter.Source` (both VPN kinds are `VPN` there).
pub const SOURCE_NAMES: &[(&str, Source)] = &[
    ("chrome", Source::Chrome),
    ("user", Source::User),
    ("update_engine", Source::UpdateEngine),
    ("system", Source::System),
    ("host_vpn", Source::Vpn),
    ("arc", Source::Arc),
    ("crostini_vm", Source::CrostiniVm),
    ("parallels_vm", Source::ParallelsVm),
    ("tether_downstream", Source::Tethering),
    ("arc_vpn", Source::Vpn),
    ("bruschetta_vm", Source::BruschettaVm),
    ("borealis_vm", Source::BorealisVm),
    ("wifi_direct", Source::WifiDirect),
    ("wifi_lohs", Source::WifiLohs),
    ("unknown", Source::Unknown),
];

const AFTER_HELP: &str = "\
The daemon is reached on the system bus; set DBUS_SYSTEM_BUS_ADDRESS to use another bus.
Exit status: 0 success; 1 the daemon refused or failed the request (its reason is printed);
2 usage error; 3 patchpaneld is not running or the bus cannot be reached;
4 the bus policy does not allow this user the call. See docs/cli.md.";

/// Client of patchpaneld (D-Bus service org.chromium.PatchPanel).
#[derive(Debug, Parser)]
#[command(name = "patchpanel", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Seconds to wait for each answer from patchpaneld.
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        default_value = "10",
        value_parser = parse_timeout
    )]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the guest devices patchpanel manages (GetDevices).
    Devices {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Connect a network namespace to the host and hold it until SIGINT or
    /// SIGTERM (ConnectNamespace).
    #[command(
        name = "connect-ns",
        long_about = "Connect a network namespace to the host through a veth pair \
                      (ConnectNamespace), print its names and addresses, then hold the \
                      connection until SIGINT, SIGTERM or SIGHUP. Without --pid, \
                      patchpanel creates a new named namespace (see `ip netns list`). \
                      The namespace is disconnected as soon as this command exits, \
                      however it exits."
    )]
    ConnectNs(ConnectNsArgs),
    /// Show traffic counters, per source, device and IP family
    /// (GetTrafficCounters); with --watch, rates per uplink and source.
    Counters(CountersArgs),
    /// Open, lock down or forward a port (ModifyPortRule).
    #[command(name = "port-rule", subcommand)]
    PortRule(PortRuleCommand),
    /// Print NetworkDeviceChanged signals as they arrive, until SIGINT or
    /// SIGTERM (`monitor` prints every signal).
    Watch(FollowArgs),
    /// Print every signal of org.chromium.PatchPanel as it arrives
    /// (NetworkDeviceChanged, NeighborReachabilityEvent, ...), one line
    /// each, until SIGINT or SIGTERM.
    Monitor(FollowArgs),
    /// Start or stop a VM's network (TerminaVmStartup, PluginVmStartup,
    /// ArcVmStartup and their shutdowns).
    #[command(subcommand)]
    Vm(VmCommand),
    /// Start or stop the ARC container's network (ArcStartup, ArcShutdown).
    #[command(subcommand)]
    Arc(ArcCommand),
    /// Show uplinks, guests, their links, addresses, routes, fwmarks and
    /// firewall chains as a tree (GetDevices plus the kernel state of this
    /// network namespace).
    #[command(long_about = "Show the host's uplinks and guests as a tree: each \
                      guest device (GetDevices) under the uplink it uses, with its \
                      links, addresses, routes, the fwmarks its traffic gets and the \
                      iptables chains that serve it. Links, addresses, routes and ip \
                      rules are read with `ip -j` in the network namespace this \
                      command runs in (run it where patchpaneld runs, e.g. with \
                      `ip netns exec` or `nsenter --net=`); chains with \
                      iptables-save/ip6tables-save, which need root: without it the \
                      chains are left out with a note.")]
    Topology {
        /// Print one JSON object instead of the tree.
        #[arg(long, conflicts_with = "dot")]
        json: bool,
        /// Print a Graphviz graph (for `dot -Tsvg`).
        #[arg(long)]
        dot: bool,
    },
    /// Redirect DNS queries to a DNS proxy and hold the rule until SIGINT or
    /// SIGTERM (SetDnsRedirectionRule, as dns-proxy does).
    #[command(
        name = "dns-redirect",
        long_about = "Redirect DNS queries to a DNS proxy (SetDnsRedirectionRule, as \
                      dns-proxy calls it), then hold the rule until SIGINT, SIGTERM \
                      or SIGHUP. default: queries arriving on a guest's interface \
                      (--ifname, a VM's TAP) go to the proxy; arc: ARC's device \
                      (--ifname) uses the proxy (GetDevices shows it); user: the \
                      user's own queries (Chrome and the traffic_sources uids) go to \
                      the proxy; exclude-destination: the user's queries not aimed at \
                      the proxy are left alone. The rule goes as soon as this command \
                      exits, however it exits."
    )]
    DnsRedirect(DnsRedirectArgs),
    /// Set a feature flag as Chrome does (SetFeatureFlag); prints the
    /// previous value.
    #[command(name = "feature-flag")]
    FeatureFlag {
        #[arg(value_enum)]
        flag: FlagName,
        #[arg(value_enum)]
        state: OnOff,
    },
    /// Show the networks patchpanel configured (ConfigureNetwork, or the
    /// netlink mode's uplinks): each routing table ifindex+1000 with its
    /// link, MTU, addresses, routes and ip rules, the default VPN and
    /// whether VPN lockdown is on, read from the kernel of this network
    /// namespace (lockdown needs root to read the firewall).
    Networks {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct DnsRedirectArgs {
    /// Which queries.
    #[arg(long = "type", value_enum)]
    pub kind: DnsRuleKind,
    /// The guest interface (default, arc).
    #[arg(long, value_name = "IFNAME", required_if_eq_any([("kind", "default"), ("kind", "arc")]))]
    pub ifname: Option<String>,
    /// The proxy's address.
    #[arg(long, value_name = "IP")]
    pub proxy: IpAddr,
    /// A name server the proxy stands for (repeatable).
    #[arg(long = "nameserver", value_name = "IP")]
    pub nameservers: Vec<IpAddr>,
    /// The host end of the proxy's namespace.
    #[arg(long, value_name = "IFNAME")]
    pub host_ifname: Option<String>,
}

/// `SetDnsRedirectionRuleRequest.type`, without the invalid value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DnsRuleKind {
    Default,
    Arc,
    User,
    ExcludeDestination,
}

/// `SetFeatureFlagRequest.flag`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FlagName {
    WifiQos,
    Clat,
}

/// On or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct CountersArgs {
    /// Print JSON (one object; with --watch one object per report).
    #[arg(long)]
    pub json: bool,
    /// Keep reading the counters and print rates (bytes/s, packets/s) per
    /// uplink and source, until SIGINT or SIGTERM.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between two reports of --watch.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "1",
        requires = "watch",
        value_parser = parse_interval
    )]
    pub interval: Duration,
    /// With --watch: exit after this many reports.
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<usize>,
    /// Interfaces to report (default: all).
    #[arg(value_name = "DEVICE")]
    pub devices: Vec<String>,
}

/// `watch` and `monitor`.
#[derive(Debug, Args)]
pub struct FollowArgs {
    /// Print one JSON object per signal.
    #[arg(long)]
    pub json: bool,
    /// Exit after this many signals.
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM's TAP and addresses; prints them.
    #[command(subcommand)]
    Start(VmStart),
    /// Remove a VM's TAP and addresses.
    #[command(subcommand)]
    Stop(VmStop),
    /// Start a VM's network, run the VM (e.g. qemu) with its TAP, and stop
    /// the network when the VM exits.
    #[command(long_about = "Start a VM's network, run COMMAND (the VM, e.g. \
                      qemu-system-x86_64 ...) with its TAP, and stop the network when it exits. \
                      For a user in vm_owners the TAP is the user's own and the network also goes \
                      if this process is killed. In COMMAND's arguments {tap} becomes the TAP's \
                      name and {fd} a descriptor open on it; with neither, a qemu-system-* command \
                      gets `-netdev tap,id=patchpanel0,fd=N -device \
                      virtio-net-pci,netdev=patchpanel0` appended. COMMAND also finds \
                      PATCHPANEL_TAP, PATCHPANEL_VM_ADDRESS and PATCHPANEL_VM_GATEWAY in its \
                      environment. Exits with COMMAND's status.")]
    Run(VmRunArgs),
}

/// The networks `vm run` can give a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunKind {
    /// TerminaVmStartup: a /30 of the Termina pool.
    Termina,
    /// PluginVmStartup: a subnet of the Parallels pool.
    Plugin,
}

#[derive(Debug, Args)]
pub struct VmRunArgs {
    /// Which network the VM gets.
    #[arg(long, value_enum, default_value = "termina")]
    pub kind: RunKind,
    /// The VM's id (a Termina VM's cid); default: this process's pid.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub id: Option<u32>,
    /// The VM to run and its arguments (after `--`).
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum VmStart {
    /// A Crostini (Termina) VM (TerminaVmStartup).
    Termina {
        #[command(flatten)]
        cid: CidArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// A Plugin (Parallels) VM (PluginVmStartup).
    Plugin {
        #[command(flatten)]
        id: PluginIdArg,
        /// The 1-based subnet to use (the VM keeps subnet and MAC across
        /// runs); 0 takes the first free one.
        #[arg(long, value_name = "INDEX", default_value = "0",
              value_parser = clap::value_parser!(i32).range(0..))]
        subnet_index: i32,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// ARCVM (ArcVmStartup).
    Arcvm {
        #[command(flatten)]
        cid: CidArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// A third-party (Bruschetta) VM (BruschettaVmStartup): isolated, nothing
    /// new reaches it.
    Bruschetta {
        #[command(flatten)]
        id: PluginIdArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// The Borealis (Steam) VM (BorealisVmStartup).
    Borealis {
        #[command(flatten)]
        cid: CidArg,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum VmStop {
    /// TerminaVmShutdown.
    Termina {
        #[command(flatten)]
        cid: CidArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// PluginVmShutdown.
    Plugin {
        #[command(flatten)]
        id: PluginIdArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// ArcVmShutdown.
    Arcvm {
        #[command(flatten)]
        cid: CidArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// BruschettaVmShutdown.
    Bruschetta {
        #[command(flatten)]
        id: PluginIdArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// BorealisVmShutdown.
    Borealis {
        #[command(flatten)]
        cid: CidArg,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum ArcCommand {
    /// ArcStartup: set up ARC's networks in the namespace of the
    /// container's init; prints the ARC devices then listed.
    Start(ArcArgs),
    /// ArcShutdown: remove them.
    Stop(ArcArgs),
    /// Say that Android holds or released the Wi-Fi multicast lock
    /// (NotifyAndroidWifiMulticastLockChange, as Chrome does): inbound mDNS
    /// and SSDP from Wi-Fi uplinks reach ARC only while it is held.
    #[command(name = "multicast-lock")]
    MulticastLock {
        #[arg(value_enum)]
        state: LockState,
    },
}

/// `arc multicast-lock`'s argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LockState {
    Held,
    Released,
}

#[derive(Debug, Args)]
pub struct ArcArgs {
    /// Pid of the container's init.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub pid: i32,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct CidArg {
    /// The VM's vsock context id.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub cid: u32,
}

#[derive(Debug, Args)]
pub struct PluginIdArg {
    /// The caller's id of the VM.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConnectNsArgs {
    /// Connect the network namespace of this process (default: create a new
    /// named namespace).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub pid: Option<i32>,
    /// Send the namespace's traffic through this uplink only (default: follow
    /// the default network).
    #[arg(long, value_name = "IFNAME")]
    pub outbound: Option<String>,
    /// Route the namespace's traffic through the VPN when one is connected.
    #[arg(long)]
    pub route_on_vpn: bool,
    /// Let user traffic, not only system traffic, use the namespace.
    #[arg(long)]
    pub allow_user_traffic: bool,
    /// Count the traffic as this source (case-insensitive): chrome, user,
    /// update_engine, system, host_vpn, arc, crostini_vm, parallels_vm,
    /// tether_downstream, arc_vpn, bruschetta_vm, borealis_vm, wifi_direct,
    /// wifi_lohs, unknown. Default: unknown, which the server counts as
    /// system.
    #[arg(long, value_name = "NAME", value_parser = parse_source)]
    pub source: Option<Source>,
    /// Also give the namespace a static IPv6 address.
    #[arg(long)]
    pub static_ipv6: bool,
    /// Print one JSON object line (then hold) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PortRuleCommand {
    /// Add a rule.
    Create(PortRuleArgs),
    /// Remove a rule added with the same arguments.
    Delete(PortRuleArgs),
}

impl PortRuleCommand {
    /// The arguments, whichever the operation.
    pub fn args(&self) -> &PortRuleArgs {
        match self {
            Self::Create(args) | Self::Delete(args) => args,
        }
    }
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  patchpanel port-rule create access --proto tcp --port 8080 --ifname eth0
  patchpanel port-rule create lockdown --proto tcp --port 5555
  patchpanel port-rule create forwarding --proto tcp --ifname eth0 --port 2222 \\
      --dst-ip 100.115.92.6 --dst-port 22")]
pub struct PortRuleArgs {
    /// What the rule does: accept inbound traffic to the port (access),
    /// reserve a loopback port for one user (lockdown) or forward inbound
    /// traffic to a guest (forwarding).
    #[arg(value_enum)]
    pub rule: RuleKind,
    /// Transport protocol.
    #[arg(long, value_enum)]
    pub proto: ProtoKind,
    /// Destination port to match.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Interface the traffic arrives on.
    #[arg(long, value_name = "IFNAME")]
    pub ifname: Option<String>,
    /// Destination address to match (default: any).
    #[arg(long, value_name = "IP")]
    pub input_dst_ip: Option<IpAddr>,
    /// Forwarding: the guest address to forward to.
    #[arg(long, value_name = "IP", required_if_eq("rule", "forwarding"))]
    pub dst_ip: Option<IpAddr>,
    /// Forwarding: the guest port to forward to.
    #[arg(
        long,
        value_name = "PORT",
        required_if_eq("rule", "forwarding"),
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub dst_port: Option<u16>,
}

/// `ModifyPortRuleRequest.type`, without the invalid value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuleKind {
    Access,
    Lockdown,
    Forwarding,
}

impl From<RuleKind> for RuleType {
    fn from(kind: RuleKind) -> Self {
        match kind {
            RuleKind::Access => RuleType::Access,
            RuleKind::Lockdown => RuleType::Lockdown,
            RuleKind::Forwarding => RuleType::Forwarding,
        }
    }
}

/// `ModifyPortRuleRequest.proto`, without the invalid value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtoKind {
    Tcp,
    Udp,
}

impl From<ProtoKind> for Protocol {
    fn from(kind: ProtoKind) -> Self {
        match kind {
            ProtoKind::Tcp => Protocol::Tcp,
            ProtoKind::Udp => Protocol::Udp,
        }
    }
}

/// A `--source` value: a name of [`SOURCE_NAMES`] in any case (with `-` or
/// `_`), or a protobuf name such as `VPN` or `TETHERING`.
pub fn parse_source(text: &str) -> Result<Source, String> {
    let name = text.trim().to_ascii_lowercase().replace('-', "_");
    SOURCE_NAMES
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, source)| *source)
        .or_else(|| Source::from_str_name(&name.to_ascii_uppercase()))
        .ok_or_else(|| {
            let names: Vec<&str> = SOURCE_NAMES.iter().map(|(n, _)| *n).collect();
            format!("unknown traffic source; one of: {}", names.join(", "))
        })
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| "not a number of seconds".to_string())?;
    if !(0.1..=3600.0).contains(&seconds) {
        return Err("must be at least 0.1 and at most 3600 seconds".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| "not a number of seconds".to_string())?;
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err("must be more than 0 and at most 3600 seconds".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("patchpanel").chain(args.iter().copied()))
    }

    fn connect_ns(args: &[&str]) -> ConnectNsArgs {
        let mut all = vec!["connect-ns"];
        all.extend_from_slice(args);
        match parse(&all).unwrap().command {
            Command::ConnectNs(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_listed_source_name_parses_in_any_case() {
        for (name, source) in SOURCE_NAMES {
            assert_eq!(parse_source(name), Ok(*source), "{name}");
            assert_eq!(
                parse_source(&name.to_ascii_uppercase()),
                Ok(*source),
                "{name}"
            );
        }
    }

    #[test]
    fn source_names_map_to_the_protobuf_numbers() {
        assert_eq!(parse_source("Crostini_VM").unwrap() as i32, 9);
        assert_eq!(parse_source("tether_downstream").unwrap() as i32, 11);
        assert_eq!(parse_source("host_vpn").unwrap() as i32, 5);
        assert_eq!(parse_source("arc_vpn").unwrap() as i32, 5);
        assert_eq!(parse_source("wifi_lohs").unwrap() as i32, 13);
    }

    #[test]
    fn source_accepts_dashes_and_protobuf_names() {
        assert_eq!(parse_source("update-engine"), Ok(Source::UpdateEngine));
        assert_eq!(parse_source("VPN"), Ok(Source::Vpn));
        assert_eq!(parse_source("tethering"), Ok(Source::Tethering));
    }

    #[test]
    fn unknown_source_lists_the_accepted_names() {
        let err = parse_source("firefox").unwrap_err();

        assert!(err.contains("crostini_vm"), "{err}");
    }

    #[test]
    fn connect_ns_defaults_to_a_new_namespace_with_no_options() {
        let args = connect_ns(&[]);

        assert_eq!(args.pid, None);
        assert_eq!(args.outbound, None);
        assert_eq!(args.source, None);
        assert!(!args.route_on_vpn && !args.allow_user_traffic && !args.static_ipv6 && !args.json);
    }

    #[test]
    fn connect_ns_reads_every_option() {
        let args = connect_ns(&[
            "--pid",
            "1234",
            "--outbound",
            "eth0",
            "--route-on-vpn",
            "--allow-user-traffic",
            "--source",
            "ARC",
            "--static-ipv6",
            "--json",
        ]);

        assert_eq!(args.pid, Some(1234));
        assert_eq!(args.outbound.as_deref(), Some("eth0"));
        assert_eq!(args.source, Some(Source::Arc));
        assert!(args.route_on_vpn && args.allow_user_traffic && args.static_ipv6 && args.json);
    }

    #[test]
    fn connect_ns_rejects_a_pid_below_one() {
        for pid in ["0", "-1"] {
            let err = parse(&["connect-ns", "--pid", pid]).unwrap_err();

            assert_eq!(err.exit_code(), 2, "{pid}");
        }
    }

    #[test]
    fn connect_ns_rejects_an_unknown_source_as_a_usage_error() {
        let err = parse(&["connect-ns", "--source", "firefox"]).unwrap_err();

        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn counters_takes_any_number_of_devices() {
        let cli = parse(&["counters", "--json", "eth0", "wlan0"]).unwrap();

        let Command::Counters(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert!(args.json && !args.watch);
        assert_eq!(args.devices, ["eth0", "wlan0"]);
    }

    #[test]
    fn counters_watch_takes_an_interval_and_a_count() {
        let cli = parse(&["counters", "--watch", "--interval", "0.5", "--count", "3"]).unwrap();

        let Command::Counters(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert!(args.watch);
        assert_eq!(args.interval, Duration::from_millis(500));
        assert_eq!(args.count, Some(3));
    }

    #[test]
    fn counters_interval_without_watch_is_a_usage_error() {
        let err = parse(&["counters", "--interval", "2"]).unwrap_err();

        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn counters_interval_below_a_tenth_of_a_second_is_refused() {
        assert!(parse(&["counters", "--watch", "--interval", "0.01"]).is_err());
    }

    #[test]
    fn vm_start_plugin_reads_id_and_subnet_index() {
        let cli = parse(&[
            "vm",
            "start",
            "plugin",
            "--id",
            "9",
            "--subnet-index",
            "3",
            "--json",
        ])
        .unwrap();

        let Command::Vm(VmCommand::Start(VmStart::Plugin {
            id,
            subnet_index,
            json,
        })) = cli.command
        else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!((id.id, subnet_index, json.json), (9, 3, true));
    }

    #[test]
    fn vm_start_plugin_defaults_to_any_subnet() {
        let cli = parse(&["vm", "start", "plugin", "--id", "9"]).unwrap();

        assert!(matches!(
            cli.command,
            Command::Vm(VmCommand::Start(VmStart::Plugin {
                subnet_index: 0,
                ..
            }))
        ));
    }

    #[test]
    fn vm_start_termina_requires_a_nonzero_cid() {
        assert_eq!(
            parse(&["vm", "start", "termina"]).unwrap_err().exit_code(),
            2
        );
        assert_eq!(
            parse(&["vm", "start", "termina", "--cid", "0"])
                .unwrap_err()
                .exit_code(),
            2
        );
        assert!(matches!(
            parse(&["vm", "stop", "arcvm", "--cid", "5"])
                .unwrap()
                .command,
            Command::Vm(VmCommand::Stop(VmStop::Arcvm {
                cid: CidArg { cid: 5 },
                ..
            }))
        ));
    }

    #[test]
    fn arc_requires_a_pid() {
        assert_eq!(parse(&["arc", "start"]).unwrap_err().exit_code(), 2);
        let cli = parse(&["arc", "stop", "--pid", "42"]).unwrap();

        assert!(matches!(
            cli.command,
            Command::Arc(ArcCommand::Stop(ArcArgs { pid: 42, .. }))
        ));
    }

    #[test]
    fn topology_json_and_dot_exclude_each_other() {
        assert!(parse(&["topology", "--dot"]).is_ok());
        assert_eq!(
            parse(&["topology", "--dot", "--json"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn monitor_takes_json_and_count() {
        let cli = parse(&["monitor", "--json", "--count", "2"]).unwrap();

        let Command::Monitor(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert!(args.json);
        assert_eq!(args.count, Some(2));
    }

    #[test]
    fn port_rule_create_access_needs_proto_and_port_only() {
        let cli = parse(&[
            "port-rule",
            "create",
            "access",
            "--proto",
            "tcp",
            "--port",
            "8080",
        ])
        .unwrap();

        let Command::PortRule(PortRuleCommand::Create(args)) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(args.rule, RuleKind::Access);
        assert_eq!(args.proto, ProtoKind::Tcp);
        assert_eq!(args.port, 8080);
        assert_eq!(args.dst_ip, None);
    }

    #[test]
    fn port_rule_forwarding_requires_a_destination() {
        let err = parse(&[
            "port-rule",
            "create",
            "forwarding",
            "--proto",
            "udp",
            "--port",
            "53",
            "--ifname",
            "eth0",
        ])
        .unwrap_err();

        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn port_rule_rejects_port_zero() {
        let err = parse(&[
            "port-rule",
            "delete",
            "access",
            "--proto",
            "tcp",
            "--port",
            "0",
        ])
        .unwrap_err();

        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn port_rule_rejects_a_malformed_address() {
        let err = parse(&[
            "port-rule",
            "create",
            "forwarding",
            "--proto",
            "tcp",
            "--port",
            "22",
            "--dst-ip",
            "100.115.92",
            "--dst-port",
            "22",
        ])
        .unwrap_err();

        assert_eq!(err.kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn timeout_accepts_fractions_and_rejects_zero() {
        let cli = parse(&["--timeout", "0.5", "devices"]).unwrap();

        assert_eq!(cli.timeout, Duration::from_millis(500));
        assert!(parse(&["--timeout", "0", "devices"]).is_err());
        assert!(parse(&["devices", "--timeout", "nan"]).is_err());
    }

    #[test]
    fn missing_subcommand_is_a_usage_error() {
        let err = parse(&[]).unwrap_err();

        assert_eq!(err.exit_code(), 2);
    }
}
