//! Real traffic for end-to-end tests: small Python programs (Debian's
//! `/usr/bin/python3`) run inside a named namespace, as a given user.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// `netns` is a namespace name, or a path (`/proc/<pid>/ns/net`) if it
/// starts with `/`.
fn python_in(netns: &str, uid: u32, script: &str) -> Command {
    let path = if netns.starts_with('/') {
        netns.to_string()
    } else {
        format!("/run/netns/{netns}")
    };
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={path}"))
        .arg("--")
        .args([
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .args(["/usr/bin/python3", "-c", script]);
    cmd
}

/// Starts a server `script` (as root) in named namespace `netns` and waits
/// until it prints `listening`. Its further output stays readable on the
/// child's stdout. Kill it when done.
pub fn listener(netns: &str, script: &str) -> Result<Child> {
    let mut child = python_in(netns, 0, script)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start python3")?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().context("no stdout")?)
        .read_line(&mut line)
        .context("reading the server's first line")?;
    if line.trim() != "listening" {
        let _ = child.kill();
        let _ = child.wait();
        bail!("the server in {netns} did not start: {line:?}");
    }
    Ok(child)
}

/// Starts `script` (as root) in named namespace `netns` with its stdout
/// piped, without waiting for anything. Kill it with [`stop`].
pub fn spawn(netns: &str, script: &str) -> Result<Child> {
    python_in(netns, 0, script)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start python3")
}

/// Runs a client `script` in named namespace `netns` as `uid`.
pub fn run(netns: &str, uid: u32, script: &str) -> Result<Output> {
    python_in(netns, uid, script)
        .output()
        .context("cannot run python3")
}

/// A server on `addr:port` that answers each connection with `reply`.
pub fn reply_server(netns: &str, addr: &str, port: u16, reply: &str) -> Result<Child> {
    listener(
        netns,
        &format!(
            "import socket\n\
             s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{addr}',{port})); s.listen(8)\n\
             print('listening', flush=True)\n\
             while True:\n    c,a=s.accept(); print(a[0], flush=True); c.sendall(b'{reply}'); c.close()\n"
        ),
    )
}

/// Connects to `addr:port` from `netns` as `uid`: the reply, or `refused`
/// or `timeout` (2 s).
pub fn fetch(netns: &str, uid: u32, addr: &str, port: u16) -> Result<String> {
    fetch_within(netns, uid, addr, port, Duration::from_secs(2))
}

/// Like [`fetch`], giving up after `timeout` (connect and reply each).
pub fn fetch_within(
    netns: &str,
    uid: u32,
    addr: &str,
    port: u16,
    timeout: Duration,
) -> Result<String> {
    let secs = timeout.as_secs_f64();
    let out = run(
        netns,
        uid,
        &format!(
            "import socket\n\
             try:\n    c=socket.create_connection(('{addr}',{port}),timeout={secs}); print(c.recv(64).decode())\n\
             except ConnectionRefusedError: print('refused')\n\
             except (socket.timeout, TimeoutError): print('timeout')\n"
        ),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Kills a server started here and reaps it.
pub fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}
