//! Installing the build-time compiled filters.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::Process;

mod compiled {
    include!(concat!(env!("OUT_DIR"), "/filters.rs"));
}

/// What a syscall outside the policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    /// Kill the process (SIGSYS). The default.
    Enforce,
    /// Allow and log it to the kernel audit log: for developing a policy.
    Log,
}

impl std::str::FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(SeccompMode::Enforce),
            "log" => Ok(SeccompMode::Log),
            other => Err(format!("--seccomp must be enforce or log, not {other:?}")),
        }
    }
}

impl SeccompMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SeccompMode::Enforce => "enforce",
            SeccompMode::Log => "log",
        }
    }
}

pub(crate) fn program(process: Process, mode: SeccompMode) -> &'static [(u16, u8, u8, u32)] {
    use compiled::*;
    match (process, mode) {
        (Process::Manager, SeccompMode::Enforce) => MANAGER_ENFORCE,
        (Process::Manager, SeccompMode::Log) => MANAGER_LOG,
        (Process::DatapathWriter, SeccompMode::Enforce) => DATAPATH_WRITER_ENFORCE,
        (Process::DatapathWriter, SeccompMode::Log) => DATAPATH_WRITER_LOG,
        (Process::NdProxy, SeccompMode::Enforce) => NDPROXY_ENFORCE,
        (Process::NdProxy, SeccompMode::Log) => NDPROXY_LOG,
        (Process::McastForwarder, SeccompMode::Enforce) => MCAST_FORWARDER_ENFORCE,
        (Process::McastForwarder, SeccompMode::Log) => MCAST_FORWARDER_LOG,
        (Process::AdbProxy, SeccompMode::Enforce) => ADB_PROXY_ENFORCE,
        (Process::AdbProxy, SeccompMode::Log) => ADB_PROXY_LOG,
        (Process::SocketService, SeccompMode::Enforce) => SOCKET_SERVICE_ENFORCE,
        (Process::SocketService, SeccompMode::Log) => SOCKET_SERVICE_LOG,
        (Process::DhcpServer, SeccompMode::Enforce) => DHCP_SERVER_ENFORCE,
        (Process::DhcpServer, SeccompMode::Log) => DHCP_SERVER_LOG,
    }
}

/// Installs the process's filter on the calling thread (and sets
/// no_new_privs, which the kernel requires). Call it after every socket the
/// process needs is open and before handling any input.
/// Whether the process's filter was installed in log mode.
static LOG_MODE: AtomicBool = AtomicBool::new(false);

fn load(insns: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(insns.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "filter too long"))?,
        filter: insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `prog` points at `insns`, which outlives the call; the kernel
    // copies the program.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A second filter, stacked on the process's own (the kernel applies the
/// stricter answer): `execve` and `execveat` fail with EPERM from now on
/// (are logged, in log mode). For a helper whose policy allows running tools
/// but that knows, once configured, that it will run none. The architecture
/// check stays the first filter's.
pub fn forbid_exec() -> io::Result<()> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const RET_ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
    const RET_LOG: u32 = 0x7ffc_0000; // SECCOMP_RET_LOG
    const RET_ERRNO: u32 = 0x0005_0000; // SECCOMP_RET_ERRNO
    let deny = if LOG_MODE.load(Ordering::Relaxed) {
        RET_LOG
    } else {
        RET_ERRNO | libc::EPERM as u32
    };
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let insns = [
        // seccomp_data.nr
        insn(LD_W_ABS, 0, 0, 0),
        insn(JEQ_K, 2, 0, libc::SYS_execve as u32),
        insn(JEQ_K, 1, 0, libc::SYS_execveat as u32),
        insn(RET_K, 0, 0, RET_ALLOW),
        insn(RET_K, 0, 0, deny),
    ];
    load(&insns)
}

pub fn install_filter(process: Process, mode: SeccompMode) -> io::Result<()> {
    LOG_MODE.store(mode == SeccompMode::Log, Ordering::Relaxed);
    let insns: Vec<libc::sock_filter> = program(process, mode)
        .iter()
        .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
        .collect();
    load(&insns)
}
