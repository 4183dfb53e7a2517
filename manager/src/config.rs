//! `patchpaneld`'s configuration: command-line flags and the optional TOML
//! file (DESIGN.md §12). Every default works without a file; unknown keys
//! are an error so that a typo does not silently fall back to a default.

use std::path::{Path, PathBuf};

use log::LevelFilter;
use patchpanel_sandbox::SeccompMode;
use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/patchpanel/patchpanel.toml";

/// Keys of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The unprivileged user every process but the spawner runs as.
    pub user: String,
    /// Where the manager keeps its state file; created at start.
    pub state_dir: PathBuf,
    /// Prefix of the named network namespaces patchpanel creates and owns.
    pub netns_prefix: String,
    /// Link name prefixes that make a link an uplink in netlink mode.
    pub uplink_prefixes: Vec<String>,
    /// Log verbosity of the manager and, replayed to them, the helpers.
    pub log_level: String,
    /// Where named network namespaces live (what `ip netns` uses).
    pub netns_dir: PathBuf,
    /// Uplink source: "auto" (shill if on the bus, else netlink), "shill"
    /// or "netlink". `--uplinks` overrides it.
    pub uplinks: String,
    /// Guest address pools replacing the defaults, by name: `arc0`,
    /// `arc_net`, `termina_vm`, `lxd_fallback`, `netns`, `lxd_container`,
    /// `parallels_vm`. E.g. `[pools.netns] base = "100.115.96.0"
    /// prefix_len = 30 count = 128`.
    pub pools: std::collections::BTreeMap<String, patchpanel_addr::PoolConfig>,
    /// The only user LOCKDOWN port rules let through (default `chronos`
    /// if that user exists, else root).
    pub lockdown_user: Option<String>,
    /// Networks FORWARDING port rules may send to.
    pub forwarding_targets: Vec<patchpanel_addr::Ipv4Subnet>,
    /// Tag the host's own traffic with its source (by uid) for the traffic
    /// counters; untagged local traffic counts as SYSTEM.
    pub local_traffic_marking: bool,
    /// User name -> traffic source (chrome, user, update_engine, system) of
    /// local traffic. Users missing from passwd are skipped.
    pub traffic_sources: std::collections::BTreeMap<String, String>,
    /// Relay TCP port 5555 to ARC's adbd while ARC runs (the generic
    /// host's stand-in for ChromeOS's developer mode / ADB sideloading
    /// signals). Off by default.
    pub adb_allowed: bool,
    /// Concurrent ADB connections the relay takes; more are refused.
    pub adb_max_connections: u32,
    /// "nftables" (patchpanel's own nf_tables tables, one netlink
    /// transaction per operation), "iptables" (`iptables-nft-restore`), or
    /// "auto": nftables where the kernel has nf_tables, else iptables.
    pub firewall_backend: String,
    /// Connected namespaces one non-root user may hold at once (root is
    /// not limited; the pool bounds everyone together).
    pub namespaces_per_uid: u32,
    /// Active port rules (ACCESS, LOCKDOWN, FORWARDING together), at most.
    pub max_port_rules: u32,
    /// Active port rules naming one interface, at most.
    pub max_port_rules_per_interface: u32,
    /// Seconds between probes of the watched gateways and DNS servers
    /// (`NeighborReachabilityEvent`), 1-3600; 60 as upstream. Meant for
    /// tests, which cannot wait a minute per probe.
    pub neighbor_probe_seconds: u32,
    /// Put the root-namespace DNS proxies' IPv6 addresses (fd64:ffff::2
    /// and ::3, as upstream) on `lo` while running; their IPv4 ones
    /// (127.0.0.2/3) are on `lo` already.
    pub dns_proxy_loopback: bool,
    /// Serve DHCPv4 on every VM TAP and connected namespace with the
    /// address the daemon allocated for its guest (generic hosts, whose
    /// stock VM images configure themselves by DHCP). Off by default: on
    /// ChromeOS concierge configures its guests statically.
    pub guest_dhcp: bool,
    /// The name servers DHCP announces; empty: the host's (the
    /// non-loopback `nameserver` lines of /etc/resolv.conf, else of
    /// systemd-resolved's /run/systemd/resolve/resolv.conf).
    pub guest_dns: Vec<std::net::Ipv4Addr>,
    /// Who may run a VM of their own (`patchpanel vm run`): user names,
    /// and `@group` for the users of a group. Such a caller's VM startup
    /// gets a TAP it owns, and the VM's network lives as long as the
    /// calling process. Resolved at start; never root, never the VM user.
    pub vm_owners: Vec<String>,
}

/// Upstream's uid -> source list (`kLocalSourceTypes`), by name.
pub const DEFAULT_TRAFFIC_SOURCES: &[(&str, &str)] = &[
    ("chronos", "chrome"),
    ("debugd", "user"),
    ("cups", "user"),
    ("lpadmin", "user"),
    ("printscanmgr", "user"),
    ("dns-proxy-user", "user"),
    ("pluginvm", "user"),
    ("kerberosd", "system"),
    ("kerberosd-exec", "system"),
    ("tlsdate", "system"),
    ("fuse-smbfs", "system"),
];

/// A local traffic source name of the configuration.
pub fn local_source(name: &str) -> Option<patchpanel_firewall::TrafficSource> {
    use patchpanel_firewall::TrafficSource::*;
    Some(match name.to_ascii_lowercase().replace('-', "_").as_str() {
        "chrome" => Chrome,
        "user" => User,
        "update_engine" => UpdateEngine,
        "system" => System,
        "vpn" | "host_vpn" => HostVpn,
        _ => return None,
    })
}

impl Default for Config {
    fn default() -> Self {
        Config {
            user: "patchpaneld".into(),
            state_dir: PathBuf::from("/run/patchpanel"),
            netns_prefix: "patchpanel-".into(),
            uplink_prefixes: ["eth", "wlan", "mlan", "usb", "wwan", "en", "wl"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            log_level: "info".into(),
            netns_dir: PathBuf::from("/run/netns"),
            uplinks: "auto".into(),
            pools: Default::default(),
            lockdown_user: None,
            forwarding_targets: vec![patchpanel_addr::GUEST_ADDRESS_SPACE],
            local_traffic_marking: true,
            traffic_sources: DEFAULT_TRAFFIC_SOURCES
                .iter()
                .map(|(u, s)| (u.to_string(), s.to_string()))
                .collect(),
            adb_allowed: false,
            adb_max_connections: 32,
            firewall_backend: "auto".into(),
            namespaces_per_uid: 8,
            max_port_rules: 4096,
            max_port_rules_per_interface: 1024,
            neighbor_probe_seconds: 60,
            dns_proxy_loopback: true,
            guest_dhcp: false,
            guest_dns: Vec::new(),
            vm_owners: vec!["@patchpanel".into()],
        }
    }
}

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub user: Option<String>,
    pub helper_dir: Option<PathBuf>,
    pub log_to_stderr: bool,
    pub seccomp: SeccompMode,
    pub log_level: Option<String>,
    pub uplinks: Option<String>,
    pub cleanup: bool,
}

pub const USAGE: &str = "usage: patchpaneld [--config PATH] [--user NAME] [--helper-dir DIR] \
[--log-to-stderr] [--seccomp=enforce|log] [--log-level error|warn|info|debug|trace] \
[--uplinks=auto|shill|netlink] [--cleanup]";

impl Flags {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Flags, String> {
        let mut f = Flags {
            config: None,
            user: None,
            helper_dir: None,
            log_to_stderr: false,
            seccomp: SeccompMode::Enforce,
            log_level: None,
            uplinks: None,
            cleanup: false,
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((a, b)) => (a.to_string(), Some(b.to_string())),
                None => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag.as_str() {
                "--config" => f.config = Some(PathBuf::from(value()?)),
                "--user" => f.user = Some(value()?),
                "--helper-dir" => f.helper_dir = Some(PathBuf::from(value()?)),
                "--log-to-stderr" => f.log_to_stderr = true,
                "--seccomp" => f.seccomp = value()?.parse()?,
                "--log-level" => f.log_level = Some(value()?),
                "--uplinks" => {
                    let v = value()?;
                    parse_uplinks(&v)?;
                    f.uplinks = Some(v);
                }
                "--cleanup" => f.cleanup = true,
                "--help" | "-h" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        Ok(f)
    }
}

/// Checks an uplink source name.
pub fn parse_uplinks(s: &str) -> Result<(), String> {
    match s {
        "auto" | "shill" | "netlink" => Ok(()),
        other => Err(format!(
            "uplinks must be auto, shill or netlink, not {other:?}"
        )),
    }
}

/// The pool a config name stands for.
pub fn pool_by_name(name: &str) -> Option<patchpanel_addr::GuestPool> {
    use patchpanel_addr::GuestPool::*;
    Some(match name {
        "arc0" => Arc0,
        "arc_net" => ArcNet,
        "termina_vm" => TerminaVm,
        "lxd_fallback" => LxdFallback,
        "netns" => Netns,
        "lxd_container" => LxdContainer,
        "parallels_vm" => ParallelsVm,
        _ => return None,
    })
}

pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    match s {
        "error" => Ok(LevelFilter::Error),
        "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        other => Err(format!(
            "log level must be error, warn, info, debug or trace, not {other:?}"
        )),
    }
}

fn valid_name_part(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl Config {
    /// Reads `path`, or the default file if present, or the defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, String> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if !valid_name_part(&self.user, 32) {
            return Err(format!("user {:?} is not a valid user name", self.user));
        }
        if !self.state_dir.is_absolute() {
            return Err(format!(
                "state_dir {} must be an absolute path",
                self.state_dir.display()
            ));
        }
        if !valid_name_part(&self.netns_prefix, 32) {
            return Err(format!(
                "netns_prefix {:?} must be 1-32 characters of [A-Za-z0-9._-], not starting with '-'",
                self.netns_prefix
            ));
        }
        if self.uplink_prefixes.is_empty() {
            return Err("uplink_prefixes must name at least one prefix".into());
        }
        for p in &self.uplink_prefixes {
            if !valid_name_part(p, 15) {
                return Err(format!(
                    "uplink prefix {p:?} must be 1-15 characters of [A-Za-z0-9._-], not starting with '-'"
                ));
            }
        }
        parse_level(&self.log_level)?;
        if !self.netns_dir.is_absolute() {
            return Err(format!(
                "netns_dir {} must be an absolute path",
                self.netns_dir.display()
            ));
        }
        parse_uplinks(&self.uplinks)?;
        self.address_manager()?;
        if let Some(u) = &self.lockdown_user {
            if !valid_name_part(u, 32) {
                return Err(format!("lockdown_user {u:?} is not a valid user name"));
            }
        }
        if self.forwarding_targets.is_empty() {
            return Err("forwarding_targets must name at least one network".into());
        }
        if patchpanel_firewall::FirewallChoice::parse(&self.firewall_backend).is_none() {
            return Err(format!(
                "firewall_backend {:?}: use \"nftables\", \"iptables\" or \"auto\"",
                self.firewall_backend
            ));
        }
        if !(1..=1024).contains(&self.adb_max_connections) {
            return Err(format!(
                "adb_max_connections {} must be 1-1024",
                self.adb_max_connections
            ));
        }
        if !(1..=3600).contains(&self.neighbor_probe_seconds) {
            return Err(format!(
                "neighbor_probe_seconds {} must be 1-3600",
                self.neighbor_probe_seconds
            ));
        }
        if self.namespaces_per_uid == 0 {
            return Err("namespaces_per_uid must be at least 1".into());
        }
        if !(1..=65536).contains(&self.max_port_rules) {
            return Err(format!(
                "max_port_rules {} must be 1-65536",
                self.max_port_rules
            ));
        }
        if self.max_port_rules_per_interface == 0
            || self.max_port_rules_per_interface > self.max_port_rules
        {
            return Err(format!(
                "max_port_rules_per_interface {} must be 1-{} (max_port_rules)",
                self.max_port_rules_per_interface, self.max_port_rules
            ));
        }
        for (user, source) in &self.traffic_sources {
            if !valid_name_part(user, 32) {
                return Err(format!(
                    "traffic_sources: {user:?} is not a valid user name"
                ));
            }
            if local_source(source).is_none() {
                return Err(format!(
                    "traffic_sources: {user} = {source:?}: use chrome, user, update_engine, system or vpn"
                ));
            }
        }
        Ok(())
    }

    /// The guest address pools: defaults with the configured overrides.
    pub fn address_manager(&self) -> Result<patchpanel_addr::AddressManager, String> {
        let mut overrides = Vec::new();
        for (name, cfg) in &self.pools {
            let pool = pool_by_name(name).ok_or_else(|| {
                format!("unknown pool {name:?} (arc0, arc_net, termina_vm, lxd_fallback, netns, lxd_container, parallels_vm)")
            })?;
            overrides.push((pool, *cfg));
        }
        patchpanel_addr::AddressManager::with_overrides(overrides)
            .map_err(|e| format!("pools: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(Config::parse("").expect("parse"), Config::default());
    }

    #[test]
    fn keys_override_defaults() {
        let c = Config::parse("state_dir = \"/tmp/x\"\nnetns_prefix = \"t1-\"\n").expect("parse");
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.netns_prefix, "t1-");
        assert_eq!(c.user, "patchpaneld");
    }

    #[test]
    fn adb_is_off_by_default_and_its_connection_limit_is_checked() {
        let c = Config::default();
        assert!(!c.adb_allowed);
        let c = Config::parse("adb_allowed = true\nadb_max_connections = 4\n").expect("parse");
        assert!(c.adb_allowed);
        assert_eq!(c.adb_max_connections, 4);
        let e = Config::parse("adb_max_connections = 0").expect_err("0 accepted");
        assert!(e.contains("adb_max_connections"), "{e}");
    }

    #[test]
    fn limits_on_namespaces_and_port_rules_are_checked() {
        let c = Config::default();
        assert_eq!(
            (
                c.namespaces_per_uid,
                c.max_port_rules,
                c.max_port_rules_per_interface
            ),
            (8, 4096, 1024)
        );
        let c = Config::parse(
            "namespaces_per_uid = 2\nmax_port_rules = 10\nmax_port_rules_per_interface = 5\n",
        )
        .expect("parse");
        assert_eq!(
            (
                c.namespaces_per_uid,
                c.max_port_rules,
                c.max_port_rules_per_interface
            ),
            (2, 10, 5)
        );
        for (text, key) in [
            ("namespaces_per_uid = 0", "namespaces_per_uid"),
            ("neighbor_probe_seconds = 0", "neighbor_probe_seconds"),
            ("neighbor_probe_seconds = 3601", "neighbor_probe_seconds"),
            ("max_port_rules = 0", "max_port_rules"),
            (
                "max_port_rules_per_interface = 0",
                "max_port_rules_per_interface",
            ),
            (
                "max_port_rules = 10\nmax_port_rules_per_interface = 11",
                "max_port_rules_per_interface",
            ),
        ] {
            let e = Config::parse(text).expect_err(text);
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = Config::parse("adb_max_connections = 0").expect_err("0 accepted");
        assert!(e.contains("adb_max_connections"), "{e}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let e = Config::parse("stat_dir = \"/tmp/x\"").expect_err("typo accepted");
        assert!(e.contains("stat_dir"), "{e}");
    }

    #[test]
    fn relative_state_dir_is_an_error() {
        assert!(Config::parse("state_dir = \"run\"").is_err());
    }

    #[test]
    fn injection_in_netns_prefix_is_an_error() {
        assert!(Config::parse("netns_prefix = \"a b; rm\"").is_err());
    }

    #[test]
    fn uplink_prefix_longer_than_an_ifname_is_an_error() {
        assert!(Config::parse("uplink_prefixes = [\"abcdefghijklmnop\"]").is_err());
    }

    #[test]
    fn bad_log_level_is_an_error() {
        assert!(Config::parse("log_level = \"loud\"").is_err());
    }

    #[test]
    fn missing_default_file_gives_the_defaults() {
        // The default path is only optional when no --config was given.
        if !Path::new(DEFAULT_CONFIG).exists() {
            assert_eq!(Config::load(None).expect("load"), Config::default());
        }
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        assert!(Config::load(Some(Path::new("/nonexistent/pp.toml"))).is_err());
    }

    #[test]
    fn flags_parse_both_spellings() {
        let f = Flags::parse(
            ["--seccomp", "log", "--user=nobody", "--log-to-stderr"]
                .iter()
                .map(|s| s.to_string()),
        )
        .expect("parse");
        assert_eq!(f.seccomp, SeccompMode::Log);
        assert_eq!(f.user.as_deref(), Some("nobody"));
        assert!(f.log_to_stderr);
    }

    #[test]
    fn a_pool_can_be_enlarged() {
        let c =
            Config::parse("[pools.netns]\nbase = \"100.115.96.0\"\nprefix_len = 30\ncount = 128\n")
                .expect("parse");
        let pools = c.address_manager().expect("pools");
        assert_eq!(
            pools.pool_config(patchpanel_addr::GuestPool::Netns).count,
            128
        );
    }

    #[test]
    fn overlapping_or_unknown_pools_are_errors() {
        assert!(Config::parse(
            "[pools.netns]\nbase = \"100.115.92.0\"\nprefix_len = 30\ncount = 4\n"
        )
        .is_err());
        assert!(
            Config::parse("[pools.nope]\nbase = \"10.0.0.0\"\nprefix_len = 30\ncount = 4\n")
                .is_err()
        );
    }

    #[test]
    fn traffic_sources_and_forwarding_targets_are_checked() {
        let c = Config::parse(
            "forwarding_targets = [\"10.0.0.0/8\"]\n[traffic_sources]\nnobody = \"user\"\n",
        )
        .expect("parse");
        assert_eq!(c.forwarding_targets[0].to_string(), "10.0.0.0/8");
        assert_eq!(
            c.traffic_sources.get("nobody").map(String::as_str),
            Some("user")
        );
        assert!(Config::parse("[traffic_sources]\nnobody = \"arc\"\n").is_err());
        assert!(Config::parse("forwarding_targets = [\"10.0.0.1/8\"]\n").is_err());
        assert!(Config::parse("forwarding_targets = []\n").is_err());
        assert!(Config::parse("lockdown_user = \"a b\"\n").is_err());
    }

    #[test]
    fn cleanup_and_uplinks_flags() {
        let f = Flags::parse(
            ["--cleanup", "--uplinks=netlink"]
                .iter()
                .map(|s| s.to_string()),
        )
        .expect("parse");
        assert!(f.cleanup);
        assert_eq!(f.uplinks.as_deref(), Some("netlink"));
        assert!(Flags::parse(["--uplinks=magic".to_string()]).is_err());
    }

    #[test]
    fn unknown_flag_is_an_error() {
        assert!(Flags::parse(["--cleanup-all".to_string()]).is_err());
    }
}
