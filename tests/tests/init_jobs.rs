//! The init files in `upstart/`: the upstart job is parsed (a small parser of
//! upstart's job syntax, below) and its post-start script is run against a
//! private bus; the systemd unit passes `systemd-analyze verify`, and the
//! daemon starts and serves under the unit's NoNewPrivileges= and
//! CapabilityBoundingSet= (applied with `setpriv`, as systemd would).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dbus::blocking::Connection;
use dbus::channel::Channel;
use patchpanel_client::Client;
use patchpanel_proto::{names, ConnectNamespaceRequest};
use patchpanel_tests::{bin_dir, poll_until, Daemon, DaemonOptions, Netns, PrivateBus};

fn upstart_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../upstart")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(upstart_file(name)).expect("read the init file")
}

// ---------------------------------------------------------------------------
// Upstart job syntax.

/// One stanza of an upstart job: a line (`respawn limit 3 10`) or a shell
/// block (`post-start script` ... `end script`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stanza {
    Line {
        keyword: String,
        args: Vec<String>,
        line: usize,
    },
    Block {
        /// `script`, `pre-start`, `post-start`, `pre-stop` or `post-stop`.
        process: String,
        body: String,
        line: usize,
    },
}

/// The process stanzas that take either `exec CMD` or a `script` block.
const PROCESSES: &[&str] = &["pre-start", "post-start", "pre-stop", "post-stop"];

/// Stanzas of upstart 1.x (`man 5 init`).
const KNOWN: &[&str] = &[
    "description",
    "author",
    "version",
    "usage",
    "start",
    "stop",
    "manual",
    "emits",
    "instance",
    "task",
    "respawn",
    "normal",
    "expect",
    "kill",
    "reload",
    "console",
    "env",
    "export",
    "umask",
    "nice",
    "oom",
    "limit",
    "chdir",
    "chroot",
    "setuid",
    "setgid",
    "apparmor",
    "cgroup",
    "exec",
    "script",
    "pre-start",
    "post-start",
    "pre-stop",
    "post-stop",
];

/// Splits a job into stanzas. Comments and blank lines outside blocks are
/// dropped; a block runs to the first line that is `end script`.
fn parse_job(text: &str) -> Result<Vec<Stanza>, String> {
    let mut stanzas = Vec::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    while let Some((number, raw)) = lines.next() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        let keyword = words[0].clone();
        if !KNOWN.contains(&keyword.as_str()) {
            return Err(format!("line {number}: unknown stanza {keyword:?}"));
        }
        if line == "end script" {
            return Err(format!(
                "line {number}: `end script` outside a script block"
            ));
        }
        let opens_block = match words.as_slice() {
            [w] if w == "script" => Some("script".to_string()),
            [p, w] if w == "script" && PROCESSES.contains(&p.as_str()) => Some(p.clone()),
            _ => None,
        };
        let Some(process) = opens_block else {
            stanzas.push(Stanza::Line {
                keyword,
                args: words[1..].to_vec(),
                line: number,
            });
            continue;
        };
        let mut body = String::new();
        let mut closed = false;
        for (_, raw) in lines.by_ref() {
            if raw.trim() == "end script" {
                closed = true;
                break;
            }
            body.push_str(raw);
            body.push('\n');
        }
        if !closed {
            return Err(format!(
                "line {number}: `{line}` has no matching `end script`"
            ));
        }
        stanzas.push(Stanza::Block {
            process,
            body,
            line: number,
        });
    }
    Ok(stanzas)
}

fn lines_with<'a>(stanzas: &'a [Stanza], word: &str) -> Vec<(&'a [String], usize)> {
    stanzas
        .iter()
        .filter_map(|s| match s {
            Stanza::Line {
                keyword,
                args,
                line,
            } if keyword == word => Some((args.as_slice(), *line)),
            _ => None,
        })
        .collect()
}

/// An event expression (`starting system-services or (started a and b)`):
/// non-empty, parentheses balanced, operators between operands.
fn check_event_expression(args: &[String]) -> Result<(), String> {
    let text = args.join(" ");
    let spaced = text.replace('(', " ( ").replace(')', " ) ");
    let mut depth = 0i32;
    let mut expect_operand = true;
    for token in spaced.split_whitespace() {
        match token {
            "(" => {
                if !expect_operand {
                    return Err(format!("`(` after an operand in {text:?}"));
                }
                depth += 1;
            }
            ")" => {
                depth -= 1;
                if depth < 0 || expect_operand {
                    return Err(format!("misplaced `)` in {text:?}"));
                }
            }
            "and" | "or" => {
                if expect_operand {
                    return Err(format!("`{token}` without a left operand in {text:?}"));
                }
                expect_operand = true;
            }
            // An event name, then optional KEY=VALUE / positional matches.
            _ => expect_operand = false,
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced parentheses in {text:?}"));
    }
    if expect_operand {
        return Err(format!("incomplete event expression {text:?}"));
    }
    Ok(())
}

/// Every problem with the stanzas this project's job must have.
fn check_job(stanzas: &[Stanza]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut one = |word: &str, sub: Option<&str>| -> Option<Vec<String>> {
        let found: Vec<_> = lines_with(stanzas, word)
            .into_iter()
            .filter(|(args, _)| sub.is_none_or(|s| args.first().map(String::as_str) == Some(s)))
            .collect();
        let name = format!("{word}{}", sub.map(|s| format!(" {s}")).unwrap_or_default());
        match found.as_slice() {
            [(args, _)] => Some(args.iter().skip(sub.is_some() as usize).cloned().collect()),
            [] => {
                problems.push(format!("no `{name}` stanza"));
                None
            }
            more => {
                problems.push(format!(
                    "`{name}` {} times (lines {:?})",
                    more.len(),
                    more.iter().map(|(_, l)| l).collect::<Vec<_>>()
                ));
                None
            }
        }
    };
    let description = one("description", None);
    let start_on = one("start", Some("on"));
    let stop_on = one("stop", Some("on"));
    let respawn = lines_with(stanzas, "respawn");
    let oom = one("oom", Some("score"));
    let normal_exit = one("normal", Some("exit"));

    if let Some(args) = description {
        let text = args.join(" ");
        if !(text.len() > 2 && text.starts_with('"') && text.ends_with('"')) {
            problems.push(format!("description is not a quoted string: {text}"));
        }
    }
    for (what, args) in [("start on", start_on), ("stop on", stop_on)] {
        if let Some(Err(e)) = args.as_deref().map(check_event_expression) {
            problems.push(format!("{what}: {e}"));
        }
    }
    if !respawn.iter().any(|(args, _)| args.is_empty()) {
        problems.push("no bare `respawn` stanza".into());
    }
    let limits: Vec<_> = respawn
        .iter()
        .filter(|(args, _)| args.first().map(String::as_str) == Some("limit"))
        .collect();
    match limits.as_slice() {
        [(args, line)] => match &args[1..] {
            [count, seconds]
                if count.parse::<u32>().is_ok_and(|n| n > 0)
                    && seconds.parse::<u32>().is_ok_and(|n| n > 0) => {}
            other => problems.push(format!(
                "line {line}: `respawn limit COUNT INTERVAL` needs two positive integers, got {other:?}"
            )),
        },
        [] => problems.push("no `respawn limit COUNT INTERVAL` stanza".into()),
        _ => problems.push("more than one `respawn limit`".into()),
    }
    if let Some(args) = oom {
        match args.as_slice() {
            [n] if n == "never" || n.parse::<i32>().is_ok_and(|n| (-1000..=1000).contains(&n)) => {}
            other => problems.push(format!(
                "`oom score` must be -1000..1000 or never: {other:?}"
            )),
        }
    }
    if let Some(args) = normal_exit {
        if args.is_empty()
            || !args.iter().all(|a| {
                a.parse::<u8>().is_ok()
                    || a.starts_with("SIG")
                    || a.chars().all(|c| c.is_ascii_uppercase())
            })
        {
            problems.push(format!(
                "`normal exit` needs exit codes or signals: {args:?}"
            ));
        }
    }
    for (args, line) in lines_with(stanzas, "env") {
        match args {
            [kv] if kv.split_once('=').is_some_and(|(k, _)| !k.is_empty()) => {}
            other => problems.push(format!(
                "line {line}: `env KEY=VALUE` expected, got {other:?}"
            )),
        }
    }
    // Exactly one main process, and at most one of each other process.
    let mains = stanzas
        .iter()
        .filter(|s| match s {
            Stanza::Line { keyword, .. } => keyword == "exec",
            Stanza::Block { process, .. } => process == "script",
        })
        .count();
    if mains != 1 {
        problems.push(format!(
            "{mains} main processes (`exec` or `script`), expected 1"
        ));
    }
    for process in PROCESSES {
        let count = stanzas
            .iter()
            .filter(|s| match s {
                Stanza::Line { keyword, args, .. } => {
                    keyword == process && args.first().map(String::as_str) == Some("exec")
                }
                Stanza::Block { process: p, .. } => p == process,
            })
            .count();
        if count > 1 {
            problems.push(format!("{process} given {count} times"));
        }
    }
    for (args, line) in PROCESSES.iter().flat_map(|p| lines_with(stanzas, p)) {
        if args.first().map(String::as_str) != Some("exec") || args.len() < 2 {
            problems.push(format!(
                "line {line}: a process stanza takes `exec CMD` or `script`"
            ));
        }
    }
    problems
}

#[test]
fn the_upstart_job_has_every_required_stanza_well_formed() {
    let stanzas = parse_job(&read("patchpanel.conf")).expect("the job parses");

    let problems = check_job(&stanzas);

    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_upstart_job_does_not_expect_a_fork() {
    // patchpaneld stays in the foreground; the child it forks is the
    // spawner, which `expect fork` would make upstart track instead.
    let stanzas = parse_job(&read("patchpanel.conf")).expect("the job parses");

    assert_eq!(lines_with(&stanzas, "expect"), vec![]);
    let exec = lines_with(&stanzas, "exec");
    assert_eq!(exec.len(), 1, "{exec:?}");
    assert_eq!(exec[0].0, ["/usr/bin/patchpaneld".to_string()]);
}

#[test]
fn the_parser_rejects_a_script_block_without_end() {
    let job = "start on startup\nscript\n  echo hi\n";

    let err = parse_job(job).expect_err("unbalanced");

    assert!(err.contains("no matching `end script`"), "{err}");
}

#[test]
fn the_parser_rejects_a_stray_end_script_and_unknown_stanzas() {
    assert!(parse_job("end script\n").is_err());
    assert!(parse_job("respwan\n").is_err());
}

#[test]
fn the_checks_reject_a_malformed_respawn_limit_and_event_expression() {
    let job = "description \"x\"\nstart on (starting a or\nstop on stopping a\nrespawn\n\
               respawn limit 3\noom score -100\nnormal exit 0\nexec /bin/true\n";
    let stanzas = parse_job(job).expect("parses");

    let problems = check_job(&stanzas).join("\n");

    assert!(problems.contains("respawn limit"), "{problems}");
    assert!(problems.contains("start on"), "{problems}");
}

#[test]
fn the_checks_reject_two_main_processes_and_a_missing_oom_score() {
    let job = "description \"x\"\nstart on a\nstop on b\nrespawn\nrespawn limit 3 10\n\
               normal exit 0\nexec /bin/true\nscript\n  true\nend script\n";
    let stanzas = parse_job(job).expect("parses");

    let problems = check_job(&stanzas).join("\n");

    assert!(problems.contains("2 main processes"), "{problems}");
    assert!(problems.contains("oom score"), "{problems}");
}

/// The post-start block of the job, and its `env` defaults.
fn post_start() -> (String, BTreeMap<String, String>) {
    let stanzas = parse_job(&read("patchpanel.conf")).expect("the job parses");
    let body = stanzas
        .iter()
        .find_map(|s| match s {
            Stanza::Block { process, body, .. } if process == "post-start" => Some(body.clone()),
            _ => None,
        })
        .expect("a post-start script block");
    let env = lines_with(&stanzas, "env")
        .into_iter()
        .filter_map(|(args, _)| {
            args.first()?
                .split_once('=')
                .map(|(k, v)| (k.into(), v.into()))
        })
        .collect();
    (body, env)
}

/// A PATH directory holding only what the fallback branch runs (no gdbus).
fn path_without_gdbus(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    for tool in ["dbus-send", "grep", "sleep"] {
        let out = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .expect("command -v");
        let target = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!target.is_empty(), "{tool} is not installed");
        std::os::unix::fs::symlink(&target, bin.join(tool)).expect("symlink");
    }
    bin
}

/// Runs the post-start script the way upstart does (`/bin/sh -e`), on the
/// bus at `address`, with `READY_TIMEOUT` overridden; returns its output and
/// how long it took.
fn run_post_start(address: &str, timeout: &str, path: Option<&Path>) -> (Output, Duration) {
    let (body, env) = post_start();
    assert!(env.contains_key("READY_TIMEOUT"), "{env:?}");
    let started = Instant::now();
    let out = Command::new("/bin/sh")
        .args(["-e", "-c", &body])
        .env_clear()
        .env(
            "PATH",
            path.map(|p| p.display().to_string())
                .unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .env("DBUS_SYSTEM_BUS_ADDRESS", address)
        .env("READY_TIMEOUT", timeout)
        .output()
        .expect("run the post-start script");
    (out, started.elapsed())
}

/// A connection owning `org.chromium.PatchPanel` on `address` until dropped.
fn own_the_name(address: &str) -> Connection {
    let mut channel = Channel::open_private(address).expect("connect");
    channel.register().expect("register");
    let conn = Connection::from(channel);
    conn.request_name(names::SERVICE, false, true, true)
        .expect("own the name");
    conn
}

fn gdbus_installed() -> bool {
    Command::new("sh")
        .args(["-c", "command -v gdbus"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_post_start_script_returns_once_the_name_is_owned() {
    let bus = PrivateBus::start().expect("bus");
    let _owner = own_the_name(bus.address());
    let scratch = tempfile::tempdir().expect("tempdir");
    let fallback = path_without_gdbus(scratch.path());

    let mut variants = vec![("dbus-send fallback", Some(fallback.as_path()))];
    if gdbus_installed() {
        variants.push(("gdbus", None));
    } else {
        eprintln!("gdbus is not installed: only the dbus-send fallback is run");
    }
    for (what, path) in variants {
        let (out, took) = run_post_start(bus.address(), "10", path);
        assert!(
            out.status.success(),
            "{what}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(took < Duration::from_secs(5), "{what} took {took:?}");
    }
}

#[test]
fn the_post_start_script_fails_when_the_name_never_appears() {
    let bus = PrivateBus::start().expect("bus");
    let scratch = tempfile::tempdir().expect("tempdir");
    let fallback = path_without_gdbus(scratch.path());

    let mut variants = vec![("dbus-send fallback", Some(fallback.as_path()))];
    if gdbus_installed() {
        variants.push(("gdbus", None));
    }
    for (what, path) in variants {
        let (out, took) = run_post_start(bus.address(), "1", path);
        assert!(!out.status.success(), "{what} succeeded without an owner");
        // It waited (the timeout is 1 s; gdbus keeps its own clock and was
        // seen giving up after 881 ms under load), and it gave up.
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(10),
            "{what} gave up after {took:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// systemd unit.

/// `key -> values` of one section of a unit file (a key may repeat).
fn unit_section(text: &str, section: &str) -> BTreeMap<String, Vec<String>> {
    let mut current = String::new();
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
            continue;
        }
        if current == section {
            if let Some((k, v)) = line.split_once('=') {
                map.entry(k.trim().to_string())
                    .or_default()
                    .push(v.trim().to_string());
            }
        }
    }
    map
}

fn service_value(key: &str) -> Option<String> {
    unit_section(&read("patchpaneld.service"), "Service")
        .get(key)
        .and_then(|v| v.last().cloned())
}

#[test]
fn the_systemd_unit_is_ready_when_the_name_is_owned_and_restarts_on_failure() {
    assert_eq!(service_value("Type").as_deref(), Some("dbus"));
    assert_eq!(service_value("BusName").as_deref(), Some(names::SERVICE));
    assert_eq!(service_value("Restart").as_deref(), Some("on-failure"));
    assert_eq!(
        service_value("ExecStart").as_deref(),
        Some("/usr/bin/patchpaneld")
    );
    // No mount namespace: named netns must be bind-mounted in the host's.
    for key in [
        "PrivateTmp",
        "ProtectSystem",
        "ProtectHome",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "PrivateMounts",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "BindPaths",
    ] {
        assert_eq!(
            service_value(key),
            None,
            "{key}= would give a private mount namespace"
        );
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed (Debian package systemd)");
        return;
    }
    // verify checks that ExecStart= exists: point it at the built daemon.
    let scratch = tempfile::tempdir().expect("tempdir");
    let daemon = bin_dir().expect("built binaries").join("patchpaneld");
    let unit: String = read("patchpaneld.service")
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!("ExecStart={}\n", daemon.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let path = scratch.path().join("patchpaneld.service");
    std::fs::write(&path, unit).expect("write the unit");

    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze");

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    let about_us: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("patchpaneld.service"))
        .collect();
    assert!(about_us.is_empty(), "{about_us:#?}");
}

/// The `setpriv` command line applying the unit's NoNewPrivileges= and
/// CapabilityBoundingSet=.
fn setpriv_for_unit() -> Vec<String> {
    let mut cmd = vec!["setpriv".to_string()];
    if service_value("NoNewPrivileges").as_deref() == Some("yes") {
        cmd.push("--no-new-privs".into());
    }
    let caps = service_value("CapabilityBoundingSet").expect("CapabilityBoundingSet=");
    let mut set = "-all".to_string();
    for cap in caps.split_whitespace() {
        let name = cap
            .strip_prefix("CAP_")
            .unwrap_or_else(|| panic!("{cap} does not start with CAP_"));
        set.push_str(&format!(",+{}", name.to_lowercase()));
    }
    cmd.push(format!("--bounding-set={set}"));
    cmd.push("--".into());
    cmd
}

#[test]
fn the_daemon_serves_under_the_units_no_new_privileges_and_bounding_set() {
    let wrapper = setpriv_for_unit();
    assert!(
        wrapper.contains(&"--no-new-privs".to_string()),
        "{wrapper:?}"
    );
    let netns = Netns::new().expect("netns");
    let bus = PrivateBus::start().expect("bus");
    let mut daemon = Daemon::start_with(
        &netns,
        &bus,
        DaemonOptions {
            wrapper: wrapper.clone(),
            ..Default::default()
        },
    )
    .expect("daemon");
    daemon
        .wait_ready()
        .unwrap_or_else(|e| panic!("not ready under {wrapper:?}: {e:#}"));

    // A new named namespace exercises the writer's NET_ADMIN, SYS_ADMIN and
    // DAC_OVERRIDE (the bind mount under the netns dir).
    let client = Client::connect_to(bus.address()).expect("client");
    let (resp, lifeline) = client
        .connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("ConnectNamespace under the unit's hardening");
    let netns_path = Path::new("/run/netns").join(&resp.netns_name);
    assert!(netns_path.exists(), "{resp:?}");
    drop(lifeline);
    assert!(
        poll_until(Duration::from_secs(5), || (!netns_path.exists())
            .then_some(()))
        .is_some(),
        "{} still there after the lifeline closed",
        netns_path.display()
    );
}
