//! Shared by the kernel tests: a private network namespace per test, `ip`,
//! and an event collector that polls a source the way the manager's mio loop
//! would.

#![allow(dead_code)] // each test binary uses its own subset

pub mod fake_shill;

use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use patchpanel_uplinks::{UplinkEvent, UplinkSource};

/// How long a test waits for an expected event.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a test keeps listening after the expected events, so that an
/// extra event fails the test instead of going unnoticed.
pub const QUIET: Duration = Duration::from_millis(300);

/// Moves the calling thread into a fresh network namespace (threads and
/// processes it starts afterwards follow it) with `lo` up. Panics rather than
/// going on in the host's namespace.
pub fn enter_private_netns() {
    let before = netns_inode();
    // SAFETY: unshare takes no pointers; on failure nothing changed.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let after = netns_inode();
    assert_ne!(before, after, "still in the original network namespace");
    let init = std::fs::metadata("/proc/1/ns/net").map(|m| m.ino()).ok();
    assert_ne!(init, Some(after), "in the host's root network namespace");
    ip(&["link", "set", "lo", "up"]);
}

fn netns_inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat /proc/thread-self/ns/net")
        .ino()
}

/// Runs `ip ARGS` in the test's namespace; panics with its stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates the link `name` (down): a veth whose peer `p-<name>` matches no
/// uplink prefix. (Test kernels may lack the dummy driver; veth is built in
/// wherever containers run.)
pub fn add_link(name: &str) {
    let peer = format!("p-{name}");
    ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
    ip(&["link", "set", &peer, "up"]);
}

/// The kernel's ifindex of `name`, from `ip -o link` (not `/sys/class/net`,
/// which shows the namespace sysfs was mounted in, not the test's).
pub fn ifindex(name: &str) -> u32 {
    let line = ip(&["-o", "link", "show", "dev", name]);
    line.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex in {line:?}"))
}

/// Waits for readability on the source's descriptors for at most `timeout`.
fn wait_readable(fds: &[RawFd], timeout: Duration) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structures.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
}

/// Processes `source` until `done` holds for the events seen so far, then
/// listens [`QUIET`] longer; returns every event seen. Panics on timeout.
pub fn collect_until(
    source: &mut dyn UplinkSource,
    done: impl Fn(&[UplinkEvent]) -> bool,
) -> Vec<UplinkEvent> {
    let mut events = Vec::new();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        events.extend(source.process().expect("process"));
        if done(&events) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out; events so far: {events:#?}"
        );
        wait_readable(&source.fds(), Duration::from_millis(100));
    }
    let quiet_until = Instant::now() + QUIET;
    while Instant::now() < quiet_until {
        wait_readable(&source.fds(), Duration::from_millis(50));
        events.extend(source.process().expect("process"));
    }
    events
}

/// `done` for [`collect_until`]: the last event is `last`.
pub fn ends_with(last: UplinkEvent) -> impl Fn(&[UplinkEvent]) -> bool {
    move |events| events.last() == Some(&last)
}

/// A compact rendering for assertions: `+eth0#5`, `-eth0#5`, `~eth0#5`, `*eth0`.
pub fn brief(events: &[UplinkEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            UplinkEvent::Added(u) => format!("+{}#{}", u.name, u.ifindex),
            UplinkEvent::Removed(u) => format!("-{}#{}", u.name, u.ifindex),
            UplinkEvent::Changed(u) => format!("~{}#{}", u.name, u.ifindex),
            UplinkEvent::DefaultChanged(Some(n)) => format!("*{n}"),
            UplinkEvent::DefaultChanged(None) => "*none".to_string(),
        })
        .collect()
}
