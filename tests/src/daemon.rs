//! The built `patchpaneld`, started the way init would start it, inside a test
//! namespace and on a private bus, and stopped (with its whole tree) on drop.

use std::collections::BTreeSet;
use std::fs::{File, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::bins::bin_dir;
use crate::bus::PrivateBus;
use crate::command::describe;
use crate::dbus_client::{BusClient, SERVICE};
use crate::netns::{delete_netns_with_prefix, Netns};
use crate::procfs::{send_signal, tree_of, ProcIdentity};
use crate::tree::ProcessTree;
use crate::wait::poll_until;

/// How long the daemon may take to own its bus name and answer `GetDevices`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGTERM'd daemon may take before the harness sends SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Set to `always` to print the daemon's log on drop even when the test passed.
pub const LOG_ENV: &str = "PATCHPANEL_TEST_LOGS";

static NEXT_INDEX: AtomicU32 = AtomicU32::new(0);

/// Optional command-line flags for `patchpaneld`.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// `--user NAME`.
    pub user: Option<String>,
    /// `--seccomp=log` instead of the default (enforce).
    pub seccomp_log: bool,
    /// `--helper-dir DIR`.
    pub helper_dir: Option<PathBuf>,
    /// Anything else, appended as is.
    pub extra_args: Vec<String>,
    /// A command line that execs the rest, run between `nsenter` and
    /// `patchpaneld` (e.g. `setpriv` applying a systemd unit's hardening).
    pub wrapper: Vec<String>,
    /// TOML appended to the generated configuration file (e.g. a larger
    /// `[pools.netns]`).
    pub extra_config: String,
    /// Reuse another daemon's state dir and namespace prefix (a restart of
    /// "the same" daemon after a crash).
    pub successor_of: Option<(PathBuf, String)>,
    /// The state directory, instead of one in the daemon's temporary
    /// directory (e.g. a tiny tmpfs the test mounted); ignored with
    /// `successor_of`.
    pub state_dir: Option<PathBuf>,
}

/// A running `patchpaneld` (the manager; the process the harness spawned, as
/// `nsenter` execs it). On drop: SIGTERM, SIGKILL after [`STOP_TIMEOUT`], then
/// SIGKILL to any process of its tree still alive, then deletion of any netns
/// with its prefix; the log is printed if the test is panicking.
///
/// Drop also fails a test that otherwise passed (by panicking) when the teardown
/// shows a daemon bug: the manager died during the test without the test asking
/// for it, did not exit with status 0 on SIGTERM, or left processes or named
/// namespaces behind.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    exit: Option<ExitStatus>,
    /// Set once the test signals or waits for the manager: an exit is then its
    /// business. Otherwise an exit before drop is reported as a failure.
    exit_expected: bool,
    /// Set when `wait_ready` already failed with the log: drop then reports
    /// teardown problems without panicking over the original error.
    failure_reported: bool,
    bus_address: String,
    netns_prefix: String,
    state_dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    /// Every process seen in the tree, killed on drop if still alive.
    seen: Mutex<BTreeSet<ProcIdentity>>,
    dir: TempDir,
}

impl Daemon {
    /// Starts the daemon with default flags; does not wait for it to be ready.
    pub fn start(netns: &Netns, bus: &PrivateBus) -> Result<Self> {
        Self::start_with(netns, bus, DaemonOptions::default())
    }

    /// Starts `nsenter --net=<netns> -- patchpaneld --log-to-stderr --config
    /// <file>` with `DBUS_SYSTEM_BUS_ADDRESS` pointing at `bus`; does not wait.
    pub fn start_with(netns: &Netns, bus: &PrivateBus, options: DaemonOptions) -> Result<Self> {
        let bin_dir = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("ppt-daemon-")
            .tempdir()
            .context("cannot create the daemon's directory")?;
        // The manager runs as an unprivileged user and must reach its state dir.
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o755))
            .context("cannot make the daemon's directory reachable")?;
        let index = NEXT_INDEX.fetch_add(1, Ordering::SeqCst);
        let (state_dir, netns_prefix) = match &options.successor_of {
            Some((state_dir, prefix)) => (state_dir.clone(), prefix.clone()),
            // The state dir is not created here: like /run/patchpanel at
            // boot, the daemon makes it.
            None => (
                options
                    .state_dir
                    .clone()
                    .unwrap_or_else(|| dir.path().join("state")),
                format!("ppt{}n{index}-", std::process::id()),
            ),
        };
        let config_path = dir.path().join("patchpanel.toml");
        std::fs::write(
            &config_path,
            format!(
                "state_dir = {}\nnetns_prefix = {}\n{}{}",
                toml_string(&state_dir.to_string_lossy()),
                toml_string(&netns_prefix),
                if options.extra_config.contains("firewall_backend") {
                    String::new()
                } else {
                    format!("firewall_backend = {}\n", toml_string(firewall_backend()))
                },
                options.extra_config
            ),
        )
        .with_context(|| format!("cannot write {}", config_path.display()))?;
        let log_path = dir.path().join("patchpaneld.log");
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;

        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns.path().display()))
            .arg("--")
            .args(&options.wrapper)
            .arg(bin_dir.join("patchpaneld"))
            .arg("--log-to-stderr")
            .arg("--config")
            .arg(&config_path);
        if let Some(user) = &options.user {
            cmd.arg("--user").arg(user);
        }
        if options.seccomp_log {
            cmd.arg("--seccomp=log");
        }
        if let Some(helper_dir) = &options.helper_dir {
            cmd.arg("--helper-dir").arg(helper_dir);
        }
        cmd.args(&options.extra_args)
            .env_clear()
            .envs(init_environment())
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot duplicate the log file")?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", describe(&cmd)))?;
        Ok(Self {
            child,
            exit: None,
            exit_expected: false,
            failure_reported: false,
            bus_address: bus.address().to_string(),
            netns_prefix,
            state_dir,
            config_path,
            log_path,
            seen: Mutex::new(BTreeSet::new()),
            dir,
        })
    }

    /// Waits until `org.chromium.PatchPanel` answers `GetDevices` (all helpers
    /// have answered their handshake), up to [`READY_TIMEOUT`].
    pub fn wait_ready(&mut self) -> Result<()> {
        let result = self.poll_ready();
        self.failure_reported = result.is_err();
        result
    }

    fn poll_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let client = BusClient::connect(&self.bus_address)?;
        loop {
            if let Some(status) = self.poll_exit()? {
                bail!(
                    "patchpaneld exited ({status}) before it was ready; its log:\n{}",
                    self.log()
                );
            }
            let last_error = match client.get_devices() {
                Ok(_) => return Ok(()),
                Err(err) => err.to_string(),
            };
            if started.elapsed() >= READY_TIMEOUT {
                bail!(
                    "patchpaneld was not ready within {READY_TIMEOUT:?} (last GetDevices: \
                     {last_error}; {SERVICE} owned: {:?}); its log:\n{}",
                    client.name_has_owner(SERVICE),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The manager's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The manager, its spawner and the helpers, read from `/proc` now.
    pub fn tree(&self) -> Result<ProcessTree> {
        let tree = ProcessTree::scan(self.pid())?;
        self.remember(&tree);
        Ok(tree)
    }

    /// Polls [`Daemon::tree`] until `accept` returns true for a complete tree.
    pub fn wait_for_tree(
        &self,
        timeout: Duration,
        mut accept: impl FnMut(&ProcessTree) -> bool,
    ) -> Result<ProcessTree> {
        let mut last = String::from("no scan");
        poll_until(timeout, || match self.tree() {
            Ok(tree) if accept(&tree) => Some(tree),
            Ok(tree) => {
                last = format!("{tree:?}");
                None
            }
            Err(err) => {
                last = format!("{err:#}");
                None
            }
        })
        .with_context(|| format!("no acceptable process tree within {timeout:?}; last: {last}"))
    }

    /// What the daemon has printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_else(|err| format!("(no log: {err})"))
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The `state_dir` given in the config (not created by the harness).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The per-daemon `netns_prefix` given in the config.
    pub fn netns_prefix(&self) -> &str {
        &self.netns_prefix
    }

    /// The per-daemon scratch directory (config, log, state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn bus_address(&self) -> &str {
        &self.bus_address
    }

    /// A new `dbus-rs` client on the daemon's bus.
    pub fn client(&self) -> Result<BusClient> {
        BusClient::connect(&self.bus_address)
    }

    /// Sends `signal` to the manager; refuses once it has been reaped (its pid
    /// may then belong to another process).
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        self.exit_expected = true;
        if let Some(status) = self.exit {
            bail!("patchpaneld already exited ({status})");
        }
        send_signal(self.pid(), signal)
    }

    /// The manager's exit status if it has exited (reaping it).
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        self.exit_expected = true;
        self.poll_exit()
    }

    fn poll_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().context("cannot poll patchpaneld")?;
        }
        Ok(self.exit)
    }

    /// A clean stop: SIGTERM, then up to `timeout` for the manager to exit;
    /// its exit status, or an error (with its log) if it is still running.
    pub fn stop_cleanly(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        match self.wait_exit(timeout)? {
            Some(status) => Ok(status),
            None => bail!(
                "patchpaneld still runs {timeout:?} after SIGTERM\n{}",
                self.log()
            ),
        }
    }

    /// Waits up to `timeout` for the manager to exit; `None` if it is still
    /// running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.exit_expected = true;
        crate::wait::poll_until_ok(timeout, || self.poll_exit())
    }

    fn remember(&self, tree: &ProcessTree) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for pid in tree.children_pids() {
            if let Ok(identity) = ProcIdentity::of(pid) {
                seen.insert(identity);
            }
        }
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; returns what went wrong.
    fn terminate(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(err) = send_signal(self.pid(), libc::SIGTERM) {
            problems.push(format!("SIGTERM: {err:#}"));
        }
        let mut error = None;
        let status = poll_until(STOP_TIMEOUT, || match self.poll_exit() {
            Ok(status) => status,
            Err(err) => {
                error = Some(err);
                Some(ExitStatus::default())
            }
        });
        if let Some(err) = error {
            problems.push(format!("{err:#}"));
            return problems;
        }
        match status {
            Some(status) if status.code() == Some(0) => {}
            Some(status) => problems.push(format!(
                "patchpaneld ended with {} on SIGTERM (expected exit status 0)",
                describe_status(status)
            )),
            None => {
                problems.push(format!(
                    "patchpaneld ignored SIGTERM for {STOP_TIMEOUT:?}; sent SIGKILL"
                ));
                if let Err(err) = self.child.kill() {
                    problems.push(format!("SIGKILL: {err}"));
                }
                match self.child.wait() {
                    Ok(status) => self.exit = Some(status),
                    Err(err) => problems.push(format!("cannot reap patchpaneld: {err}")),
                }
            }
        }
        problems
    }

    /// Stops the tree and removes leftovers; returns what went wrong.
    fn stop(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut leftovers: BTreeSet<ProcIdentity> =
            self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match self.poll_exit() {
            Ok(Some(status)) if !self.exit_expected => problems.push(format!(
                "patchpaneld exited during the test ({})",
                describe_status(status)
            )),
            Ok(Some(_)) => {}
            Ok(None) => {
                if let Ok(tree) = tree_of(self.pid()) {
                    leftovers.extend(tree.into_iter().filter(|p| p.pid != self.pid()));
                }
                problems.extend(self.terminate());
            }
            Err(err) => problems.push(format!("{err:#}")),
        }
        // The tree should follow the manager; give it a moment, then force it.
        poll_until(Duration::from_secs(2), || {
            leftovers.iter().all(ProcIdentity::is_gone).then_some(())
        });
        for process in leftovers.iter().filter(|p| !p.is_gone()) {
            problems.push(format!(
                "process {} of the tree outlived the manager; sent SIGKILL",
                process.pid
            ));
            if let Err(err) = process.signal_if_alive(libc::SIGKILL) {
                problems.push(format!("{err:#}"));
            }
        }
        let (deleted, errors) = delete_netns_with_prefix(&self.netns_prefix);
        if !deleted.is_empty() {
            problems.push(format!("deleted leftover netns {deleted:?}"));
        }
        problems.extend(errors);
        problems
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let problems = self.stop();
        let panicking = std::thread::panicking();
        let always = std::env::var(LOG_ENV).is_ok_and(|v| v == "always");
        if panicking || always || !problems.is_empty() {
            eprintln!(
                "----- patchpaneld log ({}) -----\n{}\n----- end of patchpaneld log -----",
                self.log_path.display(),
                self.log()
            );
        }
        for problem in &problems {
            eprintln!("harness: teardown: {problem}");
        }
        if !panicking && !self.failure_reported && !problems.is_empty() {
            panic!("daemon teardown found problems:\n{}", problems.join("\n"));
        }
    }
}

/// An exit status in words, naming SIGSYS (a seccomp kill) when it is one.
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(libc::SIGSYS) => format!("{status} (SIGSYS: killed by its seccomp filter)"),
        _ => status.to_string(),
    }
}

/// The small environment init gives a daemon: a fixed `PATH`, plus `RUST_LOG`
/// when the developer set it. Nothing else leaks in from the test runner (which
/// sets e.g. `RUST_BACKTRACE`, whose backtrace printing needs `getcwd`).
pub fn init_environment() -> Vec<(String, String)> {
    let mut env = vec![(
        "PATH".to_string(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
    )];
    if let Ok(filter) = std::env::var("RUST_LOG") {
        env.push(("RUST_LOG".to_string(), filter));
    }
    env
}

/// A TOML basic string.
/// The firewall backend the tests run against: `PATCHPANEL_TEST_FIREWALL`
/// (`nftables` or `iptables`), nftables (the default) when unset. CI runs
/// the end-to-end tests once with each (`scripts/test`).
pub fn firewall_backend() -> &'static str {
    match std::env::var("PATCHPANEL_TEST_FIREWALL").as_deref() {
        Ok("iptables") => "iptables",
        _ => "nftables",
    }
}

fn toml_string(value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

/// A namespace, a bus and a ready daemon, dropped in that reverse order (fields
/// drop in declaration order: daemon first, namespace last).
#[derive(Debug)]
pub struct TestBed {
    pub daemon: Daemon,
    pub bus: PrivateBus,
    pub netns: Netns,
}

impl TestBed {
    /// Starts everything with default flags and waits until the daemon is ready.
    pub fn start() -> Result<Self> {
        Self::start_with(DaemonOptions::default())
    }

    /// Starts everything with `options` and waits until the daemon is ready.
    pub fn start_with(options: DaemonOptions) -> Result<Self> {
        let netns = Netns::new()?;
        let bus = PrivateBus::start()?;
        let mut daemon = Daemon::start_with(&netns, &bus, options)?;
        daemon.wait_ready()?;
        Ok(Self { daemon, bus, netns })
    }

    /// A new `dbus-rs` client on the test's bus.
    pub fn client(&self) -> Result<BusClient> {
        BusClient::connect(self.bus.address())
    }
}
