//! Helpers shared by the kernel tests of both firewall backends.

#![allow(dead_code)] // each test binary uses a part
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::process::{Command, Stdio};

/// Runs `body` in a new network namespace (on a thread of its own) and
/// returns its result; a panic in `body` fails the test.
pub fn in_fresh_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "kernel tests need root (they create network namespaces)"
    );
    let handle = std::thread::spawn(move || {
        // SAFETY: unshare takes only a flag; CLONE_NEWNET affects this
        // thread alone, which ends when the test body returns.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        body()
    });
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `program args` (with `stdin`), fails the test unless it exits 0,
/// and returns its stdout.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
