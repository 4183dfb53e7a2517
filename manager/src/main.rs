//! `patchpaneld`: starts as root, forks the spawner, and becomes the
//! unprivileged manager (DESIGN.md §2).
//!
//! Root phase, in order: read flags and config; resolve the user; open the
//! helper executables (kept as O_PATH fds for execveat, so the checkout may
//! sit where the unprivileged user cannot look); create the state dir; fork
//! the spawner. Then the parent drops to the manager: user, no
//! capabilities, no_new_privs; connects to the bus; installs its seccomp
//! filter; and runs the event loop.

use patchpaneld::{
    adb_service, config, dbus_service, dispatch, guest_service, helpers, manager,
    namespace_service, port_rules, spawner, state,
};

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use log::{error, info, warn};
use patchpanel_ipc::LogLevel;
use patchpanel_sandbox::{Process, SeccompMode};

use patchpaneld::config::{Config, Flags};

/// The user crosvm runs as: owner of every VM TAP.
const VM_USER: &str = "crosvm";

fn main() -> ExitCode {
    patchpaneld::env::process_start();
    let flags = match Flags::parse(std::env::args().skip(1)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("patchpaneld: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(flags.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("patchpaneld: {e}");
            return ExitCode::from(2);
        }
    };
    let level_name = flags.log_level.clone().unwrap_or(config.log_level.clone());
    let level = match config::parse_level(&level_name) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("patchpaneld: {e}");
            return ExitCode::from(2);
        }
    };
    patchpanel_logging::init(
        "patchpaneld",
        patchpanel_logging::Sink::choose(flags.log_to_stderr),
        level,
    );
    match run(flags, config, level) {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e:#}");
            eprintln!("patchpaneld: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn ipc_level(level: log::LevelFilter) -> LogLevel {
    match level {
        log::LevelFilter::Off | log::LevelFilter::Error => LogLevel::Error,
        log::LevelFilter::Warn => LogLevel::Warn,
        log::LevelFilter::Info => LogLevel::Info,
        log::LevelFilter::Debug => LogLevel::Debug,
        log::LevelFilter::Trace => LogLevel::Trace,
    }
}

fn run(flags: Flags, config: Config, level: log::LevelFilter) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must be started as root (it drops to an unprivileged user itself)");
    }
    let user_name = flags.user.clone().unwrap_or(config.user.clone());
    let user = patchpanel_sandbox::lookup_user(&user_name)
        .with_context(|| format!("cannot look up user {user_name:?}"))?
        .ok_or_else(|| {
            anyhow!("user {user_name:?} does not exist; create it (scripts/bootstrap does) or pass --user")
        })?;
    if user.uid == 0 {
        bail!("user {user_name:?} is root; the manager and helpers must run unprivileged");
    }
    let helper_dir = match &flags.helper_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("cannot find our own executable")?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("our executable has no directory"))?,
    };
    let (port_policy, layout) = site_policy(&config)?;
    let vm_user = vm_user();
    let vm_owners = vm_owners(&config.vm_owners, vm_user.as_ref(), &user);
    let executables = Process::HELPERS
        .iter()
        .map(|p| open_executable(&helper_dir.join(p.executable())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    create_state_dir(&config.state_dir, &user)?;
    prepare_netns_dir(&config.netns_dir, &user)?;

    let signals = manager::signal_fd().context("signalfd")?;
    let (manager_end, spawner_end) = patchpanel_ipc::Channel::pair().context("socketpair")?;
    // SAFETY: getpid has no preconditions.
    let manager_pid = unsafe { libc::getpid() };
    // SAFETY: no other thread exists yet, so the child may run Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        drop(manager_end);
        drop(signals);
        spawner::run(
            spawner::SpawnerSetup {
                user,
                executables,
                manager_pid,
            },
            spawner_end,
        );
    }
    drop(spawner_end);
    drop(executables);

    patchpanel_sandbox::enter_manager_sandbox(&user).context("dropping privileges")?;
    let addrs = config.address_manager().map_err(|e| anyhow!(e))?;
    let (dbus, uplink_source, neighbor_monitor) = if flags.cleanup {
        (None, None, None)
    } else {
        let dbus = dbus_service::DbusService::connect(vm_owners.clone())?;
        let mode = match flags.uplinks.as_deref().unwrap_or(&config.uplinks) {
            "shill" => patchpanel_uplinks::Mode::Shill,
            "netlink" => patchpanel_uplinks::Mode::Netlink,
            _ => patchpanel_uplinks::Mode::Auto,
        };
        let source = patchpanel_uplinks::open(
            mode,
            &patchpanel_uplinks::UplinkConfig {
                prefixes: config.uplink_prefixes.clone(),
                bus_address: None,
            },
        )
        .context("cannot track uplinks")?;
        info!("uplinks from {}", source.name());
        // Only shill configures networks whose neighbours are watched.
        let neighbor_monitor = if source.name() == "shill" {
            match patchpanel_rtnl::neigh::NeighborMonitor::new() {
                Ok(m) => {
                    if let Err(e) = m.set_recv_buffer_size(1 << 20) {
                        warn!("{e}");
                    }
                    Some(m)
                }
                Err(e) => {
                    warn!("cannot follow the neighbour table ({e}); no NeighborReachabilityEvent");
                    None
                }
            }
        } else {
            None
        };
        (Some(dbus), Some(source), neighbor_monitor)
    };
    patchpanel_logging::log_panics();
    patchpanel_sandbox::install_filter(Process::Manager, flags.seccomp)
        .context("installing the seccomp filter")?;
    info!(
        "manager running as {} (uid {}), spawner pid {pid}, helpers from {}, seccomp={}",
        user.name,
        user.uid,
        helper_dir.display(),
        flags.seccomp.as_str()
    );
    let mut spawn_flags = 0;
    if flags.seccomp == SeccompMode::Log {
        spawn_flags |= spawner::FLAG_SECCOMP_LOG;
    }
    if flags.log_to_stderr {
        spawn_flags |= spawner::FLAG_LOG_TO_STDERR;
    }
    let manage_uplink_routing = uplink_source
        .as_ref()
        .is_some_and(|s| s.name() == "netlink");
    let writer = patchpanel_ipc::datapath::WriterConfig {
        netns_prefix: config.netns_prefix.clone(),
        netns_dir: config.netns_dir.to_string_lossy().into_owned(),
        tap_owner_uid: vm_user.as_ref().map(|u| u.uid),
        user_tap_owners: vm_owners.iter().copied().collect(),
        firewall: patchpanel_firewall::FirewallChoice::parse(&config.firewall_backend)
            .unwrap_or_default(),
    };
    manager::Manager::new(manager::Startup {
        signals,
        spawner: manager_end,
        spawner_pid: pid,
        dbus,
        uplink_source,
        neighbor_monitor,
        store: state::StateFile::new(&config.state_dir),
        addrs,
        helpers: helpers::HelpersConfig {
            spawn_flags,
            log_level: ipc_level(level),
            writer,
        },
        settings: dispatch::Settings {
            cleanup_only: flags.cleanup,
            manage_uplink_routing,
            port_policy,
            layout,
            adb: adb_service::AdbPolicy {
                allowed: config.adb_allowed,
                max_connections: config.adb_max_connections,
            },
            namespaces: namespace_service::Settings {
                netns_prefix: config.netns_prefix.clone(),
                namespaces_per_uid: config.namespaces_per_uid,
            },
            guests: guest_service::Settings {
                netns_prefix: config.netns_prefix.clone(),
                vm_user: vm_user.is_some(),
                vm_owners: vm_owners.clone(),
                adb_allowed: config.adb_allowed,
            },
            neighbor_probe_interval: std::time::Duration::from_secs(u64::from(
                config.neighbor_probe_seconds,
            )),
            dns_proxy_loopback: config.dns_proxy_loopback,
            guest_dhcp: config.guest_dhcp.then(|| {
                let dns = if config.guest_dns.is_empty() {
                    patchpaneld::dhcp_service::host_name_servers()
                } else {
                    config.guest_dns.clone()
                };
                info!(
                    "DHCP for guests on; name servers announced: {}",
                    if dns.is_empty() {
                        "none (no usable one in resolv.conf; set guest_dns)".to_string()
                    } else {
                        dns.iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>()
                            .join(" ")
                    }
                );
                dns
            }),
        },
    })?
    .run()
}

/// Resolves the user names of the configuration (LOCKDOWN's allowed user,
/// the uid -> traffic source map) against passwd, in the root phase.
fn site_policy(
    config: &Config,
) -> anyhow::Result<(port_rules::PortPolicy, patchpanel_firewall::LayoutConfig)> {
    let lockdown_uid = match &config.lockdown_user {
        Some(name) => {
            patchpanel_sandbox::lookup_user(name)
                .with_context(|| format!("cannot look up lockdown_user {name:?}"))?
                .ok_or_else(|| anyhow!("lockdown_user {name:?} does not exist"))?
                .uid
        }
        None => match patchpanel_sandbox::lookup_user("chronos") {
            Ok(Some(u)) => u.uid,
            _ => 0,
        },
    };
    info!("LOCKDOWN port rules let uid {lockdown_uid} through");
    let mut uid_sources = Vec::new();
    for (user, source) in &config.traffic_sources {
        let Some(source) = config::local_source(source) else {
            continue;
        };
        match patchpanel_sandbox::lookup_user(user) {
            Ok(Some(u)) => uid_sources.push((u.uid, source)),
            Ok(None) => log::debug!("traffic_sources: no user {user}; skipped"),
            Err(e) => log::warn!("traffic_sources: cannot look up {user}: {e}"),
        }
    }
    let local_traffic =
        config
            .local_traffic_marking
            .then_some(patchpanel_firewall::layout::LocalTraffic {
                uid_sources,
                update_engine_cgroup: None,
            });
    Ok((
        port_rules::PortPolicy {
            lockdown_uid,
            forwarding_targets: config.forwarding_targets.clone(),
            guest_pools: {
                let addrs = config.address_manager().map_err(|e| anyhow!(e))?;
                patchpanel_addr::GuestPool::ALL
                    .iter()
                    .map(|&p| (p, addrs.pool_config(p)))
                    .collect()
            },
            max_rules: config.max_port_rules as usize,
            max_rules_per_interface: config.max_port_rules_per_interface as usize,
        },
        patchpanel_firewall::LayoutConfig {
            local_traffic,
            // The links the DHCP server serves: VM TAPs and connected
            // namespaces' host veths.
            guest_dhcp: if config.guest_dhcp {
                [
                    patchpaneld::guests::TAP_PREFIX,
                    patchpaneld::namespaces::HOST_IFNAME_PREFIX,
                ]
                .iter()
                .map(|p| patchpanel_ipc::IfName::new(p).map_err(|e| anyhow!("{p}: {e}")))
                .collect::<anyhow::Result<_>>()?
            } else {
                Vec::new()
            },
        },
    ))
}

/// The user that owns VM TAPs (crosvm opens them by name), looked up in
/// the root phase. Without it patchpanel still serves everything but VMs.
fn vm_user() -> Option<patchpanel_sandbox::User> {
    match patchpanel_sandbox::lookup_user(VM_USER) {
        Ok(Some(u)) => {
            info!("VM TAPs will belong to {VM_USER} (uid {})", u.uid);
            Some(u)
        }
        Ok(None) => {
            log::warn!(
                "no user {VM_USER}: VM startups will be refused (scripts/bootstrap creates it)"
            );
            None
        }
        Err(e) => {
            log::warn!("cannot look up {VM_USER}: {e}; VM startups will be refused");
            None
        }
    }
}

/// The uids of `vm_owners` (names and `@group`s), without root, the VM
/// user (its VMs are concierge's) and the daemon's own user. A name that
/// does not resolve is logged and skipped: a missing group is the normal
/// case on a host without the package's users.
fn vm_owners(
    entries: &[String],
    vm_user: Option<&patchpanel_sandbox::User>,
    daemon: &patchpanel_sandbox::User,
) -> std::collections::BTreeSet<u32> {
    let mut users = Vec::new();
    for entry in entries {
        let found = match entry.strip_prefix('@') {
            Some(group) => patchpanel_sandbox::lookup_group_users(group),
            None => patchpanel_sandbox::lookup_user(entry).map(|u| u.map(|u| vec![u])),
        };
        match found {
            Ok(Some(found)) => users.extend(found),
            Ok(None) => info!("vm_owners: no {entry:?} on this host; skipped"),
            Err(e) => log::warn!("vm_owners: cannot look up {entry:?}: {e}; skipped"),
        }
    }
    let mut uids = std::collections::BTreeSet::new();
    for u in users {
        if u.uid == 0 || u.uid == daemon.uid || vm_user.is_some_and(|v| v.uid == u.uid) {
            log::warn!(
                "vm_owners: {} (uid {}) may not own a VM's TAP; skipped",
                u.name,
                u.uid
            );
            continue;
        }
        if uids.insert(u.uid) {
            info!(
                "{} (uid {}) may run VMs of their own (vm_owners)",
                u.name, u.uid
            );
        }
    }
    uids
}

/// Opens a helper executable as O_PATH for a later execveat.
fn open_executable(path: &Path) -> anyhow::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| anyhow!("{} contains NUL", path.display()))?;
    // SAFETY: `c` is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(anyhow!(
            "cannot open helper {}: {} (use --helper-dir)",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: open returned a new descriptor that we own.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // fstat on the descriptor we will exec, not a second lookup by path.
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat helper {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!("helper {} is not an executable file", path.display());
    }
    let fd = OwnedFd::from(file);
    Ok(fd)
}

/// Makes `dir`, where named namespaces go (`/run/netns`), exist as a
/// directory of root's, while we still are root: root tools (`ip netns`,
/// `nsenter`) trust what is in it, and the datapath-writer, which runs as
/// the unprivileged user, never creates it (it would be that user's).
/// Missing: created 0755 (with any missing parents). Owned by `user`, as an
/// earlier version left it: given back to root, 0755. Owned by anyone else,
/// or not a directory: refused.
fn prepare_netns_dir(dir: &Path, user: &patchpanel_sandbox::User) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    let created = match std::fs::symlink_metadata(dir) {
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .with_context(|| format!("cannot create netns_dir {}", dir.display()))?;
            true
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot stat netns_dir {}", dir.display()))
        }
    };
    // Checked and changed through one descriptor, never by path again.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .with_context(|| format!("netns_dir {} is not a directory", dir.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat netns_dir {}", dir.display()))?;
    match meta.uid() {
        0 if !created => return Ok(()),
        0 => info!("created netns_dir {} (root, 0755)", dir.display()),
        uid if uid == user.uid => log::warn!(
            "netns_dir {} belonged to {} (an earlier version made it): giving it to root",
            dir.display(),
            user.name
        ),
        uid => bail!(
            "netns_dir {} is owned by uid {uid}, not root: refusing it (root tools trust the \
             namespaces in it); make it root's or remove it",
            dir.display()
        ),
    }
    std::os::unix::fs::fchown(&file, Some(0), Some(0))
        .with_context(|| format!("cannot chown netns_dir {} to root", dir.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod netns_dir {}", dir.display()))?;
    Ok(())
}

/// Creates the state directory (0700, owned by the manager's user): the
/// state lists clients' bus names, uids and pids, which are nobody
/// else's business.
fn create_state_dir(dir: &Path, user: &patchpanel_sandbox::User) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create state dir {}", dir.display()))?;
    std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))
        .with_context(|| format!("cannot chown {} to {}", dir.display(), user.name))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot chmod {}", dir.display()))?;
    Ok(())
}
