//! The README's demo (`scripts/demo`) in CI (issue 13): it runs to
//! completion with traffic through both guests, and neither a full run nor
//! a Ctrl-C in the middle leaves links, namespaces, processes or files
//! behind. It uses the binaries the suite already built
//! (`PATCHPANEL_DEMO_BIN`), so it neither installs nor builds anything.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use patchpanel_tests::bin_path;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo")
}

fn demo_command() -> Command {
    let bin = bin_path("patchpaneld").expect("patchpaneld built");
    let mut cmd = Command::new("bash");
    cmd.arg(script())
        .env("PATCHPANEL_DEMO_BIN", bin.parent().expect("bin dir"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// What the demo run by bash `pid` could leave behind: its namespaces
/// (`ppdemo-<pid>`, `ppdemo-up-<pid>`, `ppdemo-vm-<pid>` and the daemon's
/// `ppdemo<pid>-...`), its temporary directory, and processes using either.
/// (The two tests run in parallel: each looks only at its own run.)
fn leftovers(pid: u32, output: &str) -> Vec<String> {
    let ours = |name: &str| {
        name.starts_with(&format!("ppdemo{pid}-"))
            || ["ppdemo-", "ppdemo-up-", "ppdemo-vm-"]
                .iter()
                .any(|p| name == format!("{p}{pid}"))
    };
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if ours(&name) {
                out.push(format!("netns {name}"));
            }
        }
    }
    // "... private bus in /tmp/patchpanel-demo.XXXXXX"
    let work = output
        .split_whitespace()
        .find(|w| w.starts_with("/tmp/patchpanel-demo."))
        .map(str::to_string);
    if let Some(work) = &work {
        if std::path::Path::new(work).exists() {
            out.push(format!("directory {work}"));
        }
    }
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let uses_work = work.as_deref().is_some_and(|w| cmdline.contains(w));
        let uses_netns = cmdline.split([' ', '/', '=']).any(ours);
        if uses_work || uses_netns {
            out.push(format!(
                "process {}: {cmdline}",
                e.file_name().to_string_lossy()
            ));
        }
    }
    out
}

fn root_links() -> String {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    // Names only: counters and flags of unrelated links may change.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .filter(|n| !n.starts_with("ppt")) // other tests' links come and go
        .collect::<Vec<_>>()
        .join("\n")
}

/// Collects a child's stdout and stderr lines into one channel.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let t = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = t.send(l);
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    rx
}

/// Waits for `child` (killing it after `limit`) and returns its status
/// and everything it printed.
fn finish(mut child: Child, rx: &mpsc::Receiver<String>, limit: Duration) -> (i32, String) {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text: Vec<String> = rx.try_iter().collect();
            panic!("the demo did not finish in {limit:?}:\n{}", text.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The reader threads end with the pipes.
    std::thread::sleep(Duration::from_millis(200));
    let text: Vec<String> = rx.try_iter().collect();
    (
        std::os::unix::process::ExitStatusExt::into_raw(status) >> 8,
        text.join("\n"),
    )
}

fn assert_nothing_left(pid: u32, before_links: &str, output: &str) {
    // The daemon's teardown finished before the script exited; give the
    // kernel a moment for namespaces whose last process just left.
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = loop {
        let left = leftovers(pid, output);
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        left.is_empty(),
        "the demo left {left:#?} behind; it printed:\n{output}"
    );
    assert_eq!(root_links(), before_links, "root namespace links changed");
}

#[test]
fn the_demo_runs_to_completion_and_leaves_nothing_behind() {
    let before = root_links();
    let mut child = demo_command().spawn().expect("demo");
    let pid = child.id();
    let rx = lines_of(&mut child);
    let (code, output) = finish(child, &rx, Duration::from_secs(240));
    assert_eq!(code, 0, "the demo failed:\n{output}");
    for expected in [
        "guest received: hello guest",
        "internet host: connection from 192.0.2.2",
        "guest vmtap0 TERMINA_VM",
        "stopped Termina VM cid 7",
        "no guest devices",
        "patchpaneld exited with status 0",
    ] {
        assert!(
            output.contains(expected),
            "no {expected:?} in the demo's output:\n{output}"
        );
    }
    // The devices table lists the VM (columns are as wide as their
    // longest value, so the spacing varies).
    assert!(
        output.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.windows(2).any(|w| w == ["TERMINA_VM", "vmtap0"])
        }),
        "no devices row for the VM in the demo's output:\n{output}"
    );
    // Two guests, two pings, no loss; two TCP exchanges.
    assert_eq!(output.matches(" 0% packet loss").count(), 2, "{output}");
    assert_eq!(output.matches("guest received: hello guest").count(), 2);
    // The VM's traffic is counted under its source.
    let vm_row = output
        .lines()
        .find(|l| l.contains("CROSTINI_VM") && l.contains("IPV4"))
        .unwrap_or_else(|| panic!("no CROSTINI_VM counters:\n{output}"));
    let tx_bytes: u64 = vm_row
        .split_whitespace()
        .nth(4)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(tx_bytes > 0, "no VM traffic counted: {vm_row}");
    assert_nothing_left(pid, &before, &output);
}

#[test]
fn a_ctrl_c_in_the_middle_leaves_nothing_behind() {
    let before = root_links();
    let mut cmd = demo_command();
    // Its own process group, as a shell's foreground job: Ctrl-C is a
    // SIGINT to the whole group.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().expect("demo");
    let pgid = child.id() as i32;
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    // While both guests exist and the fake VM relays.
    while !seen
        .iter()
        .any(|l: &String| l.starts_with("== traffic from the VM"))
    {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) => seen.push(l),
            Err(_) if Instant::now() < deadline => {}
            Err(_) => {
                let _ = child.kill();
                panic!("the demo never got to the VM:\n{}", seen.join("\n"));
            }
        }
    }
    // SAFETY: kill(2) on the demo's own process group.
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGINT) }, 0);
    let (code, rest) = finish(child, &rx, Duration::from_secs(60));
    let output = format!("{}\n{rest}", seen.join("\n"));
    assert_ne!(code, 0, "the demo went on after Ctrl-C:\n{output}");
    assert_nothing_left(pgid as u32, &before, &output);
}
