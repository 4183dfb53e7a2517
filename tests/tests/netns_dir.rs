//! `netns_dir` (security review finding 13). On a host that never ran `ip
//! netns add`, the configured directory, `/run/netns`, does not exist, and
//! root tools (`ip netns`, `nsenter`) trust what is in it. patchpaneld makes
//! it in its root phase, owned by root, mode 0755, before it drops
//! privileges; the datapath-writer, which runs as the unprivileged user,
//! never creates it. A directory left to the daemon's user by an earlier
//! version is given back to root, and one owned by anyone else is refused.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use patchpanel_client::Client;
use patchpanel_proto::ConnectNamespaceRequest;
use patchpanel_tests::world::{World, REMOTE_HOST};
use patchpanel_tests::{poll_until, DaemonOptions};

/// A directory path under /run that the test owns (it does not exist at
/// first). On drop, whatever is mounted in it or on it is detached and it
/// is removed.
struct RunDir(PathBuf);

impl RunDir {
    fn new(tag: &str) -> RunDir {
        let path = PathBuf::from(format!("/run/ppt-{tag}-{}", std::process::id()));
        assert!(!path.exists(), "{} exists already", path.display());
        RunDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Makes the directory, owned by `uid`.
    fn create_owned_by(&self, uid: u32) {
        std::fs::create_dir(&self.0).expect("mkdir");
        std::os::unix::fs::chown(&self.0, Some(uid), Some(uid)).expect("chown");
    }

    /// `netns_dir = "<path>"` for the daemon's configuration.
    fn config(&self) -> DaemonOptions {
        DaemonOptions {
            extra_config: format!("netns_dir = \"{}\"\n", self.0.display()),
            ..Default::default()
        }
    }
}

fn detach(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path; failing (nothing mounted) is fine.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) == 0 }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for entry in entries.flatten() {
                detach(&entry.path());
                let _ = std::fs::remove_file(entry.path());
            }
        }
        // The writer bind-mounts the directory on itself (as iproute2 does).
        for _ in 0..8 {
            if !detach(&self.0) {
                break;
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().expect("id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no user {user}"))
}

/// Owner, group and permission bits.
fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let meta = std::fs::metadata(path).expect("stat");
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

#[test]
fn a_missing_netns_dir_is_made_by_root_at_start_and_namespaces_live_in_it() {
    let dir = RunDir::new("netnsdir");
    let world = World::start_with(dir.config()).expect("world");
    assert_eq!(owner_and_mode(dir.path()), (0, 0, 0o755));

    // A connected namespace is named there and works.
    let (resp, lifeline) = Client::connect_to(world.bus.address())
        .expect("client")
        .connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("ConnectNamespace");
    let ns = dir.path().join(&resp.netns_name);
    assert!(ns.exists(), "{} missing", ns.display());
    let ping = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["--", "ping", "-c", "1", "-W", "3", REMOTE_HOST])
        .output()
        .expect("nsenter");
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    drop(lifeline);
    let gone = poll_until(Duration::from_secs(5), || (!ns.exists()).then_some(()));
    assert!(gone.is_some(), "{} outlived its lifeline", ns.display());
    // Still root's after the writer used it.
    assert_eq!(owner_and_mode(dir.path()).0, 0);
}

#[test]
fn a_netns_dir_left_to_the_daemon_user_is_given_back_to_root() {
    let dir = RunDir::new("netnsdir-left");
    dir.create_owned_by(uid_of("patchpaneld"));
    let _world = World::start_with(dir.config()).expect("world");
    assert_eq!(owner_and_mode(dir.path()), (0, 0, 0o755));
}

#[test]
fn a_netns_dir_owned_by_another_user_is_refused_at_start() {
    let dir = RunDir::new("netnsdir-nobody");
    let nobody = uid_of("nobody");
    dir.create_owned_by(nobody);
    let err = World::start_with(dir.config()).expect_err("started with nobody's netns_dir");
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!(
            "netns_dir {} is owned by uid {nobody}, not root",
            dir.path().display()
        )),
        "{text}"
    );
    assert_eq!(owner_and_mode(dir.path()).0, nobody);
}
