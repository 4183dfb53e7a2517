//! Busybox `udhcpc` in a guest namespace, and what a guest then reaches:
//! the DHCP client side of the tests of `guest_dhcp = true`.

use std::process::Command;
use std::time::Duration;

use crate::poll_until;

/// The script udhcpc runs: applies the lease with `ip` in the guest's
/// namespace and prints what it got.
const UDHCPC_SCRIPT: &str = "#!/bin/sh\n\
case \"$1\" in\n\
  bound|renew)\n\
    ip addr flush dev \"$interface\"\n\
    ip addr add \"$ip/$mask\" dev \"$interface\"\n\
    ip route replace default via \"$router\" dev \"$interface\"\n\
    echo \"lease $1 ip=$ip mask=$mask router=$router dns=$dns lease=$lease\" ;;\n\
esac\n";

pub fn udhcpc_script(dir: &std::path::Path) -> String {
    let path = dir.join("udhcpc.sh");
    std::fs::write(&path, UDHCPC_SCRIPT).expect("script");
    let _ = Command::new("chmod").arg("+x").arg(&path).status();
    path.display().to_string()
}

/// `udhcpc` once in the named namespace `netns` on `ifname`: its output (the script's line).
pub fn udhcpc(netns: &str, ifname: &str, script: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns", "exec", netns, "busybox", "udhcpc", "-i", ifname, "-s", script,
        ])
        .args(["-n", "-q", "-f", "-t", "5", "-T", "1"])
        .output()
        .expect("udhcpc");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
}

pub fn pings(netns: &str, to: &str) -> bool {
    poll_until(Duration::from_secs(10), || {
        Command::new("ip")
            .args(["netns", "exec", netns, "ping", "-c", "1", "-W", "2", to])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    })
    .is_some()
}
