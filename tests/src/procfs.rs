//! Reading processes from `/proc`: credentials and capability sets
//! (`/proc/<pid>/status`), parentage and identity (`/proc/<pid>/stat`), argv
//! (`/proc/<pid>/cmdline`) and the network namespace (`/proc/<pid>/ns/net`).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use anyhow::{anyhow, bail, Context, Result};

/// Capability bit numbers from `linux/capability.h` and mask helpers.
pub mod cap {
    pub const CHOWN: u32 = 0;
    pub const DAC_OVERRIDE: u32 = 1;
    pub const KILL: u32 = 5;
    pub const SETGID: u32 = 6;
    pub const SETUID: u32 = 7;
    pub const SETPCAP: u32 = 8;
    pub const NET_BIND_SERVICE: u32 = 10;
    pub const NET_ADMIN: u32 = 12;
    pub const NET_RAW: u32 = 13;
    pub const SYS_PTRACE: u32 = 19;
    pub const SYS_ADMIN: u32 = 21;

    /// The mask with exactly the bits `caps` set.
    pub const fn mask(caps: &[u32]) -> u64 {
        let mut mask = 0;
        let mut i = 0;
        while i < caps.len() {
            mask |= 1 << caps[i];
            i += 1;
        }
        mask
    }

    const NAMES: &[&str] = &[
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];

    /// `0x...` plus the capability names, for readable assertion messages.
    pub fn describe(mask: u64) -> String {
        let names: Vec<String> = (0..64)
            .filter(|bit| mask & (1u64 << bit) != 0)
            .map(|bit| match NAMES.get(bit) {
                Some(name) => (*name).to_string(),
                None => format!("cap{bit}"),
            })
            .collect();
        format!("{mask:#018x} [{}]", names.join(","))
    }
}

/// The fields of `/proc/<pid>/status` the privilege tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    pub name: String,
    pub ppid: u32,
    /// Real, effective, saved and filesystem uid.
    pub uid: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    pub gid: [u32; 4],
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: u32,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    /// How many seccomp filters are stacked.
    pub seccomp_filters: u32,
}

impl ProcStatus {
    /// Reads and parses `/proc/<pid>/status`.
    pub fn read(pid: u32) -> Result<Self> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        Self::parse(&text).with_context(|| format!("cannot parse {path}"))
    }

    /// Parses the text of a `/proc/<pid>/status` file.
    pub fn parse(text: &str) -> Result<Self> {
        let field = |key: &str| -> Result<&str> {
            text.lines()
                .find_map(|line| {
                    let (k, v) = line.split_once(':')?;
                    (k == key).then_some(v.trim())
                })
                .ok_or_else(|| anyhow!("no {key} field"))
        };
        let hex = |key: &str| -> Result<u64> {
            let value = field(key)?;
            u64::from_str_radix(value, 16).with_context(|| format!("{key}: bad mask {value:?}"))
        };
        let dec = |key: &str| -> Result<u32> {
            let value = field(key)?;
            value
                .parse()
                .with_context(|| format!("{key}: bad number {value:?}"))
        };
        let ids = |key: &str| -> Result<[u32; 4]> {
            let value = field(key)?;
            let ids: Vec<u32> = value
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .with_context(|| format!("{key}: bad ids {value:?}"))?;
            ids.try_into()
                .map_err(|_| anyhow!("{key}: expected four ids, got {value:?}"))
        };
        Ok(Self {
            name: field("Name")?.to_string(),
            ppid: dec("PPid")?,
            uid: ids("Uid")?,
            gid: ids("Gid")?,
            cap_inh: hex("CapInh")?,
            cap_prm: hex("CapPrm")?,
            cap_eff: hex("CapEff")?,
            cap_bnd: hex("CapBnd")?,
            cap_amb: hex("CapAmb")?,
            no_new_privs: dec("NoNewPrivs")?,
            seccomp: dec("Seccomp")?,
            seccomp_filters: dec("Seccomp_filters")?,
        })
    }
}

/// The fields of `/proc/<pid>/stat` used to follow processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    /// `R`, `S`, `Z`, ...
    pub state: char,
    pub ppid: u32,
    /// Clock ticks after boot; with the pid, identifies a process across pid reuse.
    pub starttime: u64,
}

impl ProcStat {
    /// Reads `/proc/<pid>/stat`; `Ok(None)` if there is no such process.
    pub fn read(pid: u32) -> Result<Option<Self>> {
        let path = format!("/proc/{pid}/stat");
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text)
                .map(Some)
                .with_context(|| format!("cannot parse {path}")),
            Err(err)
                if err.kind() == std::io::ErrorKind::NotFound
                    || err.raw_os_error() == Some(libc::ESRCH) =>
            {
                Ok(None)
            }
            Err(err) => Err(err).with_context(|| format!("cannot read {path}")),
        }
    }

    /// Parses `pid (comm) state ppid ... starttime ...`; comm may hold spaces and
    /// parentheses, so the fields after it are found from the last `)`.
    pub fn parse(text: &str) -> Result<Self> {
        let open = text
            .find('(')
            .ok_or_else(|| anyhow!("no '(' in {text:?}"))?;
        let close = text
            .rfind(')')
            .ok_or_else(|| anyhow!("no ')' in {text:?}"))?;
        if close < open {
            bail!("malformed stat line {text:?}");
        }
        let pid = text[..open].trim().parse().context("bad pid")?;
        let comm = text[open + 1..close].to_string();
        // Fields after comm, starting with field 3 (state).
        let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
        let get = |field: usize| -> Result<&str> {
            rest.get(field - 3)
                .copied()
                .ok_or_else(|| anyhow!("no field {field} in {text:?}"))
        };
        let state = get(3)?
            .chars()
            .next()
            .ok_or_else(|| anyhow!("empty state"))?;
        Ok(Self {
            pid,
            comm,
            state,
            ppid: get(4)?.parse().context("bad ppid")?,
            starttime: get(22)?.parse().context("bad starttime")?,
        })
    }
}

/// A process named by pid and start time, so that a reused pid is not mistaken
/// for the process that was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcIdentity {
    pub pid: u32,
    pub starttime: u64,
}

impl ProcIdentity {
    /// The identity of the live process `pid`.
    pub fn of(pid: u32) -> Result<Self> {
        let stat = ProcStat::read(pid)?.ok_or_else(|| anyhow!("no process {pid}"))?;
        Ok(Self {
            pid,
            starttime: stat.starttime,
        })
    }

    /// True when the process is absent, a zombie, or the pid now belongs to
    /// another process.
    pub fn is_gone(&self) -> bool {
        match ProcStat::read(self.pid) {
            Ok(Some(stat)) => stat.state == 'Z' || stat.starttime != self.starttime,
            Ok(None) => true,
            // Vanished while being read.
            Err(_) => ProcStat::read(self.pid).ok().flatten().is_none(),
        }
    }

    /// Sends `signal` if the process is still this one (checked just before).
    pub fn signal_if_alive(&self, signal: i32) -> Result<()> {
        if self.is_gone() {
            return Ok(());
        }
        send_signal(self.pid, signal)
    }
}

/// Sends `signal` to `pid`.
pub fn send_signal(pid: u32, signal: i32) -> Result<()> {
    let raw = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(raw, signal) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("kill({pid}, {signal})"));
    }
    Ok(())
}

/// Every pid currently in `/proc`.
pub fn all_pids() -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let entry = entry.context("cannot list /proc")?;
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Every live process (zombies included) as its parsed `stat`.
pub fn all_stats() -> Result<Vec<ProcStat>> {
    let mut stats = Vec::new();
    for pid in all_pids()? {
        // A process may exit between listing and reading: skip it.
        if let Ok(Some(stat)) = ProcStat::read(pid) {
            stats.push(stat);
        }
    }
    Ok(stats)
}

/// The pids of the direct children of `ppid`, zombies excluded.
pub fn children_of(ppid: u32) -> Result<Vec<u32>> {
    Ok(all_stats()?
        .into_iter()
        .filter(|s| s.ppid == ppid && s.state != 'Z')
        .map(|s| s.pid)
        .collect())
}

/// `root` and all its live descendants, as identities.
pub fn tree_of(root: u32) -> Result<BTreeSet<ProcIdentity>> {
    let stats = all_stats()?;
    let mut found = BTreeSet::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        if let Some(stat) = stats.iter().find(|s| s.pid == parent) {
            if stat.state == 'Z' {
                continue;
            }
            if found.insert(ProcIdentity {
                pid: stat.pid,
                starttime: stat.starttime,
            }) {
                frontier.extend(stats.iter().filter(|s| s.ppid == parent).map(|s| s.pid));
            }
        }
    }
    Ok(found)
}

/// `argv[0]` of `pid`, from `/proc/<pid>/cmdline`.
pub fn argv0(pid: u32) -> Result<String> {
    let path = format!("/proc/{pid}/cmdline");
    let raw = std::fs::read(&path).with_context(|| format!("cannot read {path}"))?;
    let first = raw.split(|b| *b == 0).next().unwrap_or_default();
    Ok(String::from_utf8_lossy(first).into_owned())
}

/// The executable of `pid`, from `/proc/<pid>/exe`.
pub fn exe(pid: u32) -> Result<std::path::PathBuf> {
    let path = format!("/proc/{pid}/exe");
    std::fs::read_link(&path).with_context(|| format!("cannot read {path}"))
}

/// The inode of `pid`'s network namespace (compare with [`crate::Netns::inode`]).
pub fn netns_inode(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/ns/net");
    Ok(std::fs::metadata(&path)
        .with_context(|| format!("cannot stat {path}"))?
        .ino())
}

/// The uid and primary gid of user `name` from `/etc/passwd`, or `None` if there
/// is no such user.
pub fn user_ids(name: &str) -> Result<Option<(u32, u32)>> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() == Some(&name) {
            let (Some(uid), Some(gid)) = (fields.get(2), fields.get(3)) else {
                bail!("malformed /etc/passwd line {line:?}");
            };
            let uid = uid
                .parse()
                .with_context(|| format!("bad uid in {line:?}"))?;
            let gid = gid
                .parse()
                .with_context(|| format!("bad gid in {line:?}"))?;
            return Ok(Some((uid, gid)));
        }
    }
    Ok(None)
}

/// The number of open file descriptors of `pid` (entries of `/proc/<pid>/fd`).
pub fn fd_count(pid: u32) -> Result<usize> {
    let path = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&path)
        .with_context(|| format!("cannot list {path}"))?
        .count())
}

/// A numeric field of `/proc/<pid>/status` (`VmRSS` in KiB,
/// `voluntary_ctxt_switches`, ...), its unit dropped.
pub fn status_number(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let value = text
        .lines()
        .find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k == key).then_some(v.trim())
        })
        .ok_or_else(|| anyhow!("{path}: no {key} field"))?;
    let number = value.split_whitespace().next().unwrap_or_default();
    number
        .parse()
        .with_context(|| format!("{path}: {key}: bad number {value:?}"))
}

/// The resident set of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_number(pid, "VmRSS")
}

/// Voluntary plus involuntary context switches of every thread of `pid`
/// so far: each is one wake-up (or preemption) of the process.
pub fn context_switches(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let entry = entry.with_context(|| format!("cannot list {dir}"))?;
        let path = entry.path().join("status");
        // A thread that exits while being read is simply not counted.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(':') {
                if k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches" {
                    total += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tpatchpanel-ndpr\nUmask:\t0022\nState:\tS (sleeping)\n\
Tgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t4200\nTracerPid:\t0\n\
Uid:\t999\t999\t999\t999\nGid:\t995\t995\t995\t995\nFDSize:\t64\n\
CapInh:\t0000000000000000\nCapPrm:\t0000000000002000\nCapEff:\t0000000000002000\n\
CapBnd:\t0000000000002000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n\
Seccomp:\t2\nSeccomp_filters:\t1\nSpeculation_Store_Bypass:\tthread vulnerable\n";

    #[test]
    fn status_parser_reads_ids_masks_and_flags() {
        let status = ProcStatus::parse(STATUS).expect("parse");
        assert_eq!(status.name, "patchpanel-ndpr");
        assert_eq!(status.ppid, 4200);
        assert_eq!(status.uid, [999; 4]);
        assert_eq!(status.gid, [995; 4]);
        assert_eq!(status.cap_prm, cap::mask(&[cap::NET_RAW]));
        assert_eq!(status.cap_eff, 0x2000);
        assert_eq!(status.cap_bnd, 0x2000);
        assert_eq!(status.cap_inh, 0);
        assert_eq!(status.cap_amb, 0);
        assert_eq!(status.no_new_privs, 1);
        assert_eq!(status.seccomp, 2);
    }

    #[test]
    fn status_parser_rejects_a_missing_field() {
        let without_seccomp = STATUS.replace("Seccomp:\t2\n", "");
        assert!(ProcStatus::parse(&without_seccomp).is_err());
    }

    #[test]
    fn stat_parser_copes_with_parentheses_and_spaces_in_comm() {
        let line = "77 (a (b) c) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 \
                    1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n";
        let stat = ProcStat::parse(line).expect("parse");
        assert_eq!(stat.pid, 77);
        assert_eq!(stat.comm, "a (b) c");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!(stat.starttime, 123456);
    }

    #[test]
    fn cap_describe_names_the_bits() {
        assert_eq!(
            cap::describe(cap::mask(&[cap::NET_ADMIN, cap::NET_RAW])),
            "0x0000000000003000 [NET_ADMIN,NET_RAW]"
        );
    }

    #[test]
    fn root_user_has_ids_zero() {
        assert_eq!(user_ids("root").expect("passwd"), Some((0, 0)));
        assert_eq!(user_ids("nosuchuser-xyz").expect("passwd"), None);
    }

    #[test]
    fn this_process_is_its_own_tree_root() {
        let me = std::process::id();
        let tree = tree_of(me).expect("tree");
        assert!(tree.iter().any(|p| p.pid == me));
        assert!(!ProcIdentity::of(me).expect("identity").is_gone());
    }
}
