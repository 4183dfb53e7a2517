//! Who may do what: the capability set, the user and the seccomp policy of
//! every patchpanel process, and the code that puts a process into them.
//!
//! [`Process`] maps exhaustively to its sandbox, so a new helper cannot be
//! added without deciding its capabilities and its filter. The privilege
//! drop follows DESIGN.md §2 step by step; each step is a function here so
//! the order is visible at the call site.

mod seccomp;
mod user;

use std::io;

use caps::{CapSet, Capability, CapsHashSet};

pub use seccomp::{forbid_exec, install_filter, SeccompMode};
pub use user::{lookup_group_users, lookup_user, User};

/// A sandboxed patchpanel process (the spawner is not one: it keeps root).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Process {
    Manager,
    DatapathWriter,
    NdProxy,
    McastForwarder,
    AdbProxy,
    SocketService,
    DhcpServer,
}

impl Process {
    /// The helpers the spawner starts, in start order.
    pub const HELPERS: [Process; 6] = [
        Process::DatapathWriter,
        Process::NdProxy,
        Process::McastForwarder,
        Process::AdbProxy,
        Process::SocketService,
        Process::DhcpServer,
    ];

    /// Name of the executable (helpers) and of the seccomp policy.
    pub fn executable(self) -> &'static str {
        match self {
            Process::Manager => "patchpaneld",
            Process::DatapathWriter => "patchpanel-datapath-writer",
            Process::NdProxy => "patchpanel-ndproxy",
            Process::McastForwarder => "patchpanel-mcast-forwarder",
            Process::AdbProxy => "patchpanel-adb-proxy",
            Process::SocketService => "patchpanel-socket-service",
            Process::DhcpServer => "patchpanel-dhcp-server",
        }
    }

    /// Short name, used in logs and as the process's `comm`.
    pub fn short_name(self) -> &'static str {
        match self {
            Process::Manager => "patchpaneld",
            Process::DatapathWriter => "pp-writer",
            Process::NdProxy => "pp-ndproxy",
            Process::McastForwarder => "pp-mcast",
            Process::AdbProxy => "pp-adb",
            Process::SocketService => "pp-socket",
            Process::DhcpServer => "pp-dhcp",
        }
    }

    /// The capabilities the process holds (Permitted = Effective = Bounding).
    pub fn capabilities(self) -> &'static [Capability] {
        match self {
            Process::Manager => &[],
            // NET_ADMIN: links, routes, rules, firewall. NET_RAW: iptables.
            // SYS_ADMIN: setns and netns bind mounts. SYS_PTRACE: opening
            // /proc/<pid>/ns/net of other users' processes.
            // DAC_OVERRIDE: named namespaces are files in root's
            // /run/netns (created, bind-mounted over, unlinked).
            Process::DatapathWriter => &[
                Capability::CAP_DAC_OVERRIDE,
                Capability::CAP_NET_ADMIN,
                Capability::CAP_NET_RAW,
                Capability::CAP_SYS_ADMIN,
                Capability::CAP_SYS_PTRACE,
            ],
            // AF_PACKET sockets.
            Process::NdProxy | Process::McastForwarder => &[Capability::CAP_NET_RAW],
            // Ordinary TCP sockets only.
            Process::AdbProxy => &[],
            // SO_MARK on the sockets TagSocket hands it (the routing tag
            // and VPN bits; the kernel asks for NET_ADMIN).
            Process::SocketService => &[Capability::CAP_NET_ADMIN],
            // Port 67 on each served link.
            Process::DhcpServer => &[Capability::CAP_NET_BIND_SERVICE],
        }
    }

    /// Whether the process execs tools that must inherit its capabilities
    /// (the writer runs `iptables-nft-restore`), i.e. keeps them Ambient.
    pub fn execs_tools(self) -> bool {
        match self {
            Process::DatapathWriter => true,
            Process::Manager
            | Process::NdProxy
            | Process::McastForwarder
            | Process::AdbProxy
            | Process::SocketService
            | Process::DhcpServer => false,
        }
    }
}

/// Capabilities the spawner keeps: what it needs to drop privileges in its
/// children (SETUID, SETGID, SETPCAP), KILL (its children run under another
/// uid, so killing a hung or lingering helper needs it), plus the union of
/// what it hands out.
pub fn spawner_capabilities() -> CapsHashSet {
    let mut set: CapsHashSet = [
        Capability::CAP_SETUID,
        Capability::CAP_SETGID,
        Capability::CAP_SETPCAP,
        Capability::CAP_KILL,
    ]
    .into_iter()
    .collect();
    for p in Process::HELPERS {
        set.extend(p.capabilities().iter().copied());
    }
    set
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{step}: {source}")]
    Caps {
        step: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("{step}: {source}")]
    Os {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("parent died before the sandbox was complete")]
    ParentGone,
}

fn os(step: &'static str, rc: libc::c_int) -> Result<(), SandboxError> {
    if rc < 0 {
        Err(SandboxError::Os {
            step,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

fn caps_step<T>(
    step: &'static str,
    r: Result<T, caps::errors::CapsError>,
) -> Result<T, SandboxError> {
    r.map_err(|source| SandboxError::Caps { step, source })
}

const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
const SECBIT_KEEP_CAPS: libc::c_ulong = 1 << 4;
const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;

/// Step 1: trim the bounding set to `keep`. Needs CAP_SETPCAP.
pub fn trim_bounding_set(keep: &CapsHashSet) -> Result<(), SandboxError> {
    for cap in caps::all() {
        if !keep.contains(&cap)
            && caps_step(
                "read bounding set",
                caps::has_cap(None, CapSet::Bounding, cap),
            )?
        {
            caps_step(
                "drop from bounding set",
                caps::drop(None, CapSet::Bounding, cap),
            )?;
        }
    }
    Ok(())
}

/// Step 1b: securebits. Root gets no implicit capabilities across exec; the
/// capabilities in Permitted survive the uid change (KEEP_CAPS, which the
/// next exec clears); processes without capabilities cannot raise ambient.
fn set_securebits(keep_caps: bool, allow_ambient: bool) -> Result<(), SandboxError> {
    let mut bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED;
    if keep_caps {
        bits |= SECBIT_KEEP_CAPS;
    }
    if !allow_ambient {
        bits |= SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    }
    // SAFETY: prctl with integer arguments only.
    os("PR_SET_SECUREBITS", unsafe {
        libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0)
    })
}

/// Step 3: setgroups, setresgid, setresuid.
fn change_user(user: &User) -> Result<(), SandboxError> {
    let groups = [user.gid];
    // SAFETY: `groups` is a valid array of the stated length.
    os("setgroups", unsafe {
        libc::setgroups(groups.len(), groups.as_ptr())
    })?;
    // SAFETY: plain integer arguments.
    os("setresgid", unsafe {
        libc::setresgid(user.gid, user.gid, user.gid)
    })?;
    // SAFETY: plain integer arguments.
    os("setresuid", unsafe {
        libc::setresuid(user.uid, user.uid, user.uid)
    })
}

/// Step 4: Permitted = Effective = `set`; Inheritable = `set` when the
/// process execs tools (a prerequisite for Ambient), else empty.
fn set_capabilities(set: &CapsHashSet, inheritable: bool) -> Result<(), SandboxError> {
    let empty = CapsHashSet::new();
    let inh = if inheritable { set } else { &empty };
    // Order matters: Effective must stay a subset of Permitted, and
    // Inheritable may only be raised while CAP_SETPCAP or the cap is permitted.
    caps_step("set Inheritable", caps::set(None, CapSet::Inheritable, inh))?;
    caps_step("set Effective", caps::set(None, CapSet::Effective, set))?;
    caps_step("set Permitted", caps::set(None, CapSet::Permitted, set))
}

/// Step 5: raise Ambient so the capabilities survive execve as non-root.
fn raise_ambient(set: &CapsHashSet) -> Result<(), SandboxError> {
    caps_step("clear Ambient", caps::clear(None, CapSet::Ambient))?;
    for cap in set {
        caps_step("raise Ambient", caps::raise(None, CapSet::Ambient, *cap))?;
    }
    Ok(())
}

/// Step 6.
pub fn set_no_new_privs() -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments only.
    os("PR_SET_NO_NEW_PRIVS", unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    })
}

/// Step 7: die with the parent. A credential change clears the death signal,
/// so this comes after the uid and capability changes; `getppid` is checked
/// afterwards in case the parent died in between.
pub fn die_with_parent(expected_parent: libc::pid_t) -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments only.
    os("PR_SET_PDEATHSIG", unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != expected_parent {
        return Err(SandboxError::ParentGone);
    }
    Ok(())
}

/// Makes the process non-dumpable: no core files, and `/proc/<pid>` files
/// belong to root, so other processes of the same user cannot read its memory.
pub fn set_not_dumpable() -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments only.
    os("PR_SET_DUMPABLE", unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0)
    })
}

/// Sets the thread's `comm` (what `ps` shows).
pub fn set_process_name(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: `buf` is a NUL-terminated buffer of 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// Drops the root `patchpaneld` process to the manager: the unprivileged
/// user, all five capability sets empty, no_new_privs, not dumpable.
/// The seccomp filter comes later, once its sockets are open.
pub fn enter_manager_sandbox(user: &User) -> Result<(), SandboxError> {
    let none = CapsHashSet::new();
    trim_bounding_set(&none)?;
    set_securebits(false, false)?;
    change_user(user)?;
    set_capabilities(&none, false)?;
    caps_step("clear Ambient", caps::clear(None, CapSet::Ambient))?;
    set_no_new_privs()?;
    set_not_dumpable()
}

/// The spawner stays root but keeps only [`spawner_capabilities`].
pub fn enter_spawner_sandbox() -> Result<(), SandboxError> {
    let keep = spawner_capabilities();
    trim_bounding_set(&keep)?;
    set_capabilities(&keep, false)?;
    caps_step("clear Ambient", caps::clear(None, CapSet::Ambient))
}

/// Steps 1–7 for a helper, run in the spawner's child right before exec.
/// Capabilities go to Ambient because every helper is exec'ed as non-root;
/// the helper drops Ambient itself after exec unless it execs tools
/// ([`finish_helper_sandbox`]).
pub fn enter_helper_sandbox(
    process: Process,
    user: &User,
    parent: libc::pid_t,
) -> Result<(), SandboxError> {
    let set: CapsHashSet = process.capabilities().iter().copied().collect();
    trim_bounding_set(&set)?;
    set_securebits(true, !set.is_empty())?;
    // SAFETY: prctl with integer arguments only.
    os("PR_SET_KEEPCAPS", unsafe {
        libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0)
    })?;
    change_user(user)?;
    set_capabilities(&set, !set.is_empty())?;
    raise_ambient(&set)?;
    set_no_new_privs()?;
    die_with_parent(parent)
}

/// Run by a helper after exec: not dumpable, and Ambient/Inheritable cleared
/// unless it execs tools that need them.
pub fn finish_helper_sandbox(process: Process) -> Result<(), SandboxError> {
    set_not_dumpable()?;
    if !process.execs_tools() {
        caps_step("clear Ambient", caps::clear(None, CapSet::Ambient))?;
        caps_step("clear Inheritable", caps::clear(None, CapSet::Inheritable))?;
    }
    Ok(())
}

/// For a helper whose policy lets it run tools, once it knows it will run
/// none (the writer with the nftables backend): Ambient and Inheritable
/// cleared (they only matter across an exec) and exec itself forbidden by
/// a stacked seccomp filter.
pub fn stop_running_tools() -> Result<(), SandboxError> {
    caps_step("clear Ambient", caps::clear(None, CapSet::Ambient))?;
    caps_step("clear Inheritable", caps::clear(None, CapSet::Inheritable))?;
    forbid_exec().map_err(|source| SandboxError::Os {
        step: "seccomp filter against exec",
        source,
    })
}

/// Current capability sets of this thread, for logging.
pub fn describe_current_caps() -> String {
    let show = |set| {
        caps::read(None, set)
            .map(|s| {
                let mut v: Vec<String> = s.iter().map(|c| c.to_string()).collect();
                v.sort();
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(",")
                }
            })
            .unwrap_or_else(|e| format!("<{e}>"))
    };
    format!(
        "eff={} amb={} bnd={}",
        show(CapSet::Effective),
        show(CapSet::Ambient),
        show(CapSet::Bounding)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawner_holds_exactly_setid_setpcap_kill_and_the_helper_union() {
        let mut got: Vec<_> = spawner_capabilities().into_iter().collect();
        got.sort_by_key(|c| c.index());
        let want = vec![
            Capability::CAP_DAC_OVERRIDE,
            Capability::CAP_KILL,
            Capability::CAP_SETGID,
            Capability::CAP_SETUID,
            Capability::CAP_SETPCAP,
            Capability::CAP_NET_BIND_SERVICE,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_NET_RAW,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_SYS_ADMIN,
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn manager_and_adb_proxy_hold_no_capability() {
        assert!(Process::Manager.capabilities().is_empty());
        assert!(Process::AdbProxy.capabilities().is_empty());
    }

    #[test]
    fn only_the_writer_keeps_ambient_capabilities() {
        let execs: Vec<_> = Process::HELPERS
            .into_iter()
            .filter(|p| p.execs_tools())
            .collect();
        assert_eq!(execs, vec![Process::DatapathWriter]);
    }

    #[test]
    fn every_process_has_a_compiled_filter_in_both_modes() {
        for p in Process::HELPERS.into_iter().chain([Process::Manager]) {
            for mode in [SeccompMode::Enforce, SeccompMode::Log] {
                assert!(!seccomp::program(p, mode).is_empty(), "{p:?} {mode:?}");
            }
        }
    }
}
