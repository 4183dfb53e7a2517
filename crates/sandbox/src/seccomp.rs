//! Installing the build-time compiled filters.

use std::io;

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
    }
}

/// Installs the process's filter on the calling thread (and sets
/// no_new_privs, which the kernel requires). Call it after every socket the
/// process needs is open and before handling any input.
pub fn install_filter(process: Process, mode: SeccompMode) -> io::Result<()> {
    let insns: Vec<libc::sock_filter> = program(process, mode)
        .iter()
        .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
        .collect();
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
