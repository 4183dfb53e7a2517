//! Harness for kernel tests: every test body runs on its own thread inside a
//! fresh network namespace and a private mount namespace, so nothing it does
//! can reach the host's root namespace or mount table (also under plain
//! `cargo test`, where tests share a process). Named-netns tests get a
//! private directory under /tmp that is cleaned up even when the test fails.
//!
//! `ip` and `nsenter` are spawned from the test thread, so they inherit its
//! namespaces: they are the independent check of what the library did.

#![allow(dead_code)] // each test binary uses a different subset
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

fn check(rc: libc::c_int, what: &str) {
    if rc != 0 {
        panic!(
            "{what}: {} (kernel tests must run as root)",
            std::io::Error::last_os_error()
        );
    }
}

/// Runs `f` on a new thread that has unshared its network and mount
/// namespaces (with `/` made recursively private, so no mount propagates
/// out). Panics in `f` fail the test.
pub fn in_fresh_netns<F: FnOnce() + Send>(f: F) {
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            // SAFETY: unshare takes only flags; it affects this thread only.
            check(
                unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) },
                "unshare(CLONE_NEWNET|CLONE_NEWNS)",
            );
            let root = CString::new("/").unwrap();
            // SAFETY: NUL-terminated target; NULL source/fstype/data are
            // allowed for a propagation change.
            check(
                unsafe {
                    libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    )
                },
                "make / private",
            );
            f()
        });
        if let Err(p) = h.join() {
            std::panic::resume_unwind(p);
        }
    });
}

/// Runs a command in the test thread's namespaces; panics on failure.
pub fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `ip -j <args>` parsed (`[]` for empty output).
pub fn ip_json(args: &[&str]) -> Value {
    let mut cmd = vec!["ip", "-j"];
    cmd.extend_from_slice(args);
    json(&run(&cmd))
}

/// `nsenter --net=<ns> ip -j <args>` parsed.
pub fn ip_json_in(ns: &Path, args: &[&str]) -> Value {
    let net = format!("--net={}", ns.display());
    let mut cmd = vec!["nsenter", net.as_str(), "ip", "-j"];
    cmd.extend_from_slice(args);
    json(&run(&cmd))
}

fn json(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad ip json {text:?}: {e}"))
}

/// The `flags` array of `ip -j link show` entry as strings.
pub fn flags(link: &Value) -> Vec<String> {
    link["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

/// A private directory for named namespaces; Drop detaches every mount in
/// it (and the directory's own bind mount) and removes it.
pub struct NetnsDir {
    pub path: PathBuf,
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

impl NetnsDir {
    pub fn new() -> Self {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let path = PathBuf::from(format!("/tmp/pp-rtnl-test-{}-{n}", std::process::id()));
        // Made here, as root: the library never creates it.
        std::fs::create_dir(&path).unwrap();
        NetnsDir { path }
    }
}

fn detach(path: &Path) {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated path; failures (not mounted) are fine here.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

impl Drop for NetnsDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                detach(&e.path());
                let _ = std::fs::remove_file(e.path());
            }
        }
        // The directory may be bind-mounted on itself (more than once if a
        // test made it shared twice).
        for _ in 0..4 {
            detach(&self.path);
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Polls `f` until it returns true or 5 s pass.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}
