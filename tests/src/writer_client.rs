//! Driving the datapath writer on its own, the way the manager does: typed
//! requests over the SEQPACKET channel of a [`DirectHelper`], pidfds beside
//! them, and answers read back with a timeout so a wedged writer fails the
//! test instead of hanging it.
//!
//! Also here: [`NetnsPrefix`], a per-test namespace name prefix whose
//! namespaces are removed when the test ends (also when it panics), and
//! [`snapshot_diff`], a line diff of two [`crate::world::kernel_snapshot`]s.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use patchpanel_ipc::datapath::{Plan, PlanReport, WriterConfig};
use patchpanel_ipc::{
    Channel, ChannelError, Hello, HelperError, HelperMessage, ManagerMessage, NetnsName, Reply,
    Request, RequestId, Role, PROTOCOL_VERSION,
};

use crate::command::run_ok;
use crate::netns::{delete_netns_with_prefix, Netns, NETNS_RUN_DIR};
use crate::tree::Helper;
use crate::DirectHelper;

/// How long one request may take. Firewall batches run
/// `iptables-nft-restore` twice; everything else is a few netlink calls.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// A datapath writer started by the test, greeted, and talked to as the
/// manager would.
#[derive(Debug)]
pub struct WriterClient {
    channel: Channel,
    helper: DirectHelper,
    next_id: RequestId,
}

impl WriterClient {
    /// Starts the writer inside `netns` and exchanges `Hello`s. The writer
    /// is not configured yet.
    pub fn spawn(netns: &Netns) -> Result<Self> {
        let helper = DirectHelper::spawn(netns, Helper::DatapathWriter, &[])?;
        let fd = helper
            .ipc()
            .context("the writer's IPC socket is closed")?
            .try_clone_to_owned()
            .context("cannot duplicate the IPC socket")?;
        let channel = Channel::from_fd(fd).context("the IPC fd is not a SEQPACKET socket")?;
        let client = Self {
            channel,
            helper,
            next_id: 1,
        };
        client.greet()?;
        Ok(client)
    }

    /// Starts the writer inside `netns` and configures it to own the
    /// namespaces starting with `prefix` in `/run/netns`.
    pub fn configured(netns: &Netns, prefix: &str) -> Result<Self> {
        Self::configured_with_tap_owner(netns, prefix, None)
    }

    /// Like [`WriterClient::configured`], with the owner of the TAPs it
    /// makes (none: it makes no TAP).
    pub fn configured_with_tap_owner(
        netns: &Netns,
        prefix: &str,
        tap_owner_uid: Option<u32>,
    ) -> Result<Self> {
        Self::configured_with_tap_owners(netns, prefix, tap_owner_uid, Vec::new())
    }

    /// Like [`WriterClient::configured_with_tap_owner`], with the users who
    /// may own the TAP of a VM of their own.
    pub fn configured_with_tap_owners(
        netns: &Netns,
        prefix: &str,
        tap_owner_uid: Option<u32>,
        user_tap_owners: Vec<u32>,
    ) -> Result<Self> {
        let mut client = Self::spawn(netns)?;
        let config = WriterConfig {
            netns_prefix: prefix.to_string(),
            netns_dir: NETNS_RUN_DIR.to_string(),
            tap_owner_uid,
            user_tap_owners,
            firewall: patchpanel_firewall::FirewallChoice::parse(crate::daemon::firewall_backend())
                .unwrap_or_default(),
        };
        match client.request(Request::ConfigureWriter(config))? {
            Ok(Reply::Done) => Ok(client),
            other => bail!("ConfigureWriter answered {other:?}"),
        }
    }

    fn greet(&self) -> Result<()> {
        let hello = self.recv(REPLY_TIMEOUT)?;
        match hello {
            HelperMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                role: Role::DatapathWriter,
            }) => {}
            other => bail!("the writer greeted with {other:?}"),
        }
        self.channel
            .send(
                &ManagerMessage::Hello(Hello {
                    protocol_version: PROTOCOL_VERSION,
                    role: Role::Manager,
                }),
                &[],
            )
            .context("cannot send Hello")?;
        Ok(())
    }

    /// Sends one request and returns the writer's answer to it.
    pub fn request(&mut self, body: Request) -> Result<Result<Reply, HelperError>> {
        self.request_with_fds(body, &[])
    }

    /// Sends one request with descriptors beside it (pidfds for
    /// `AttachNetns`) and returns the writer's answer to it.
    pub fn request_with_fds(
        &mut self,
        body: Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Result<Reply, HelperError>> {
        let id = self.next_id;
        self.next_id += 1;
        self.channel
            .send(&ManagerMessage::Request { id, body }, fds)
            .context("cannot send the request")?;
        self.response(id)
    }

    /// Waits for the response to request `id`.
    pub fn response(&self, id: RequestId) -> Result<Result<Reply, HelperError>> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left)? {
                HelperMessage::Response { id: got, result } if got == id => return Ok(result),
                HelperMessage::Response { id: got, result } => {
                    bail!("answer to request {got} ({result:?}) while waiting for {id}")
                }
                // The writer sends no events, but an event is not an answer.
                HelperMessage::Event(_) => continue,
                HelperMessage::Hello(h) => bail!("a second Hello: {h:?}"),
            }
        }
    }

    /// Applies `plan`; the inner result is the writer's verdict.
    pub fn apply(&mut self, plan: Plan) -> Result<Result<PlanReport, HelperError>> {
        self.apply_with_fds(plan, &[])
    }

    /// Applies `plan` with descriptors beside it.
    pub fn apply_with_fds(
        &mut self,
        plan: Plan,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Result<PlanReport, HelperError>> {
        applied(self.request_with_fds(Request::Apply(plan), fds)?)
    }

    /// `RemoveOwned`; the inner result is the writer's verdict.
    pub fn remove_owned(
        &mut self,
        keep_accounting: bool,
    ) -> Result<Result<PlanReport, HelperError>> {
        applied(self.request(Request::RemoveOwned {
            keep_links: Vec::new(),
            keep_netns: Vec::new(),
            keep_accounting,
            wait: true,
        })?)
    }

    /// Sends bytes as one packet, bypassing the encoder.
    pub fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        self.channel
            .send_raw(bytes, &[])
            .context("cannot send a raw packet")
    }

    /// Whether a message is waiting within `timeout` (nothing is read).
    pub fn has_message_within(&self, timeout: Duration) -> Result<bool> {
        wait_readable(self.channel.as_fd(), timeout)
    }

    /// What the writer logged so far.
    pub fn log(&self) -> String {
        self.helper.log()
    }

    /// The writer process (for its pid and exit status).
    pub fn helper_mut(&mut self) -> &mut DirectHelper {
        &mut self.helper
    }

    fn recv(&self, timeout: Duration) -> Result<HelperMessage> {
        if !wait_readable(self.channel.as_fd(), timeout)? {
            bail!(
                "no message from the writer within {timeout:?}; its log:\n{}",
                self.log()
            );
        }
        match self.channel.recv::<HelperMessage>() {
            Ok(received) => Ok(received.msg),
            Err(ChannelError::Closed) => {
                bail!("the writer closed the channel; its log:\n{}", self.log())
            }
            Err(e) => Err(e).context("cannot read the writer's message"),
        }
    }
}

/// The [`PlanReport`] of an `Applied` reply.
fn applied(answer: Result<Reply, HelperError>) -> Result<Result<PlanReport, HelperError>> {
    match answer {
        Ok(Reply::Applied(report)) => Ok(Ok(report)),
        Ok(other) => bail!("expected Applied, got {other:?}"),
        Err(e) => Ok(Err(e)),
    }
}

fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n >= 0 {
            // POLLHUP counts as readable: recv then reports the closed peer.
            return Ok(n > 0);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("poll on the IPC socket");
        }
    }
}

static NEXT_PREFIX: AtomicU32 = AtomicU32::new(0);

/// A namespace name prefix unique to this test (`pptw<pid>n<k>-`), so
/// parallel tests never see each other's namespaces. On drop, every named
/// namespace with the prefix is deleted.
#[derive(Debug)]
pub struct NetnsPrefix {
    prefix: String,
}

impl NetnsPrefix {
    pub fn new() -> Self {
        let k = NEXT_PREFIX.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("pptw{}n{k}-", std::process::id());
        // Left behind by an earlier run whose pid was reused.
        let (_, errors) = delete_netns_with_prefix(&prefix);
        for e in errors {
            eprintln!("harness: {e}");
        }
        Self { prefix }
    }

    pub fn as_str(&self) -> &str {
        &self.prefix
    }

    /// `<prefix><suffix>` as a namespace name.
    pub fn name(&self, suffix: &str) -> NetnsName {
        let name = format!("{}{suffix}", self.prefix);
        NetnsName::new(&name).unwrap_or_else(|e| panic!("{name:?} is not a namespace name: {e}"))
    }

    /// The entries of `/run/netns` that carry the prefix, sorted.
    pub fn entries(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(e).with_context(|| format!("cannot list {NETNS_RUN_DIR}")),
        };
        for entry in entries {
            let name = entry
                .with_context(|| format!("cannot list {NETNS_RUN_DIR}"))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if name.starts_with(&self.prefix) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

impl Default for NetnsPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetnsPrefix {
    fn drop(&mut self) {
        let (_, errors) = delete_netns_with_prefix(&self.prefix);
        for e in errors {
            eprintln!("harness: {e}");
        }
    }
}

/// Runs `argv` inside the named namespace `name` with `nsenter --net=`
/// and returns its stdout; fails unless it exits 0.
pub fn exec_in_named(name: &str, argv: &[&str]) -> Result<String> {
    let out = run_ok(
        Command::new("nsenter")
            .arg(format!("--net={NETNS_RUN_DIR}/{name}"))
            .arg("--")
            .args(argv),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A line diff of two texts (`-` only in `before`, `+` only in `after`),
/// with the common lines left out; empty when they are equal.
pub fn snapshot_diff(before: &str, after: &str) -> String {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    // Longest common subsequence table, from the ends.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    // The section header (`## ...`) of the current position, printed once
    // before the first difference in that section.
    let mut section = "";
    let mut printed_section = None;
    while i < a.len() || j < b.len() {
        let line = if i < a.len() && j < b.len() && a[i] == b[j] {
            if a[i].starts_with("## ") {
                section = a[i];
            }
            i += 1;
            j += 1;
            continue;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            i += 1;
            format!("- {}", a[i - 1])
        } else {
            j += 1;
            format!("+ {}", b[j - 1])
        };
        if printed_section != Some(section) {
            out.push_str(section);
            out.push('\n');
            printed_section = Some(section);
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_an_empty_diff() {
        assert_eq!(snapshot_diff("a\nb\n", "a\nb\n"), "");
    }

    #[test]
    fn diff_shows_added_and_removed_lines_under_their_section() {
        let before = "## links\nlo\neth0\n## routes\ndefault\n";
        let after = "## links\nlo\nveth0\n## routes\ndefault\n10/8\n";
        assert_eq!(
            snapshot_diff(before, after),
            "## links\n- eth0\n+ veth0\n## routes\n+ 10/8\n"
        );
    }
}
