//! The manager's state: every guest network it built and every kernel
//! setting it changed, as one serializable value (DESIGN.md §9).
//!
//! It is saved atomically (write to a temporary file, rename) after every
//! change, so a crashed manager's successor knows what to tear down or
//! adopt, and a clean stop knows which sysctls to restore. Port rules, of
//! which there may be thousands, are not in that file: each ModifyPortRule
//! appends one line to a journal next to it (`port_rules`), rewritten
//! compactly from time to time, so recording the 1000th rule costs what
//! recording the first does.
//!
//! Nothing is fsynced: what the state describes (links, namespaces,
//! firewall rules) does not survive a reboot either, and a manager crash
//! loses nothing the kernel has accepted in a `write`. A reader after a
//! power loss sees the old file, the new one, or one it cannot parse,
//! which it treats as missing (and removes everything patchpanel owns).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use patchpanel_ipc::datapath::{Netns, Sysctl};
use patchpanel_proto::{GetDevicesResponse, NetworkDevice};
use serde::{Deserialize, Serialize};

use crate::namespaces::ConnectedNamespace;

/// Bumped when the file's shape changes incompatibly; a file of another
/// version is treated like a missing one (everything owned is removed).
pub const STATE_VERSION: u32 = 1;

/// Everything that must survive the manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Next ConnectNamespace id (names are never reused within a run).
    pub next_namespace_id: u32,
    /// Written by [`StateFile`] from its cache of each namespace's JSON
    /// (a thousand of them would cost a millisecond to serialize at every
    /// save), read back as any other field.
    #[serde(default, skip_serializing)]
    pub namespaces: BTreeMap<u32, ConnectedNamespace>,
    /// Sysctls patchpanel changed, with the value it found first.
    pub sysctl_originals: Vec<(Netns, Sysctl, String)>,
    /// Active ModifyPortRule rules, in creation order. Kept in the
    /// journal, not in the state file (read from it if a file has them).
    #[serde(default, skip_serializing)]
    pub port_rules: Vec<crate::port_rules::PortRule>,
    /// The running ARC (container or VM), if any.
    #[serde(default)]
    pub arc: Option<crate::guests::ArcGuest>,
    /// The bridges a stopped ARC left for the next one; not saved (see
    /// [`crate::guests::ArcBridges`]).
    #[serde(skip)]
    pub arc_bridges: crate::guests::ArcBridges,
    /// Running Termina and Parallels VMs, in start order.
    #[serde(default)]
    pub vms: Vec<crate::guests::VmGuest>,
    /// What accounting rules counted before another program deleted them
    /// or a rebuild replaced them: GetTrafficCounters adds it to what the
    /// kernel counts now, so totals keep growing across a flush.
    #[serde(default)]
    pub counter_base: Vec<patchpanel_firewall::counters::CounterSample>,
    /// Networks shill configured with ConfigureNetwork, re-applied after a
    /// restart (shill does not send them again).
    #[serde(
        default,
        skip_serializing_if = "crate::network_service::ConfiguredNetworks::is_empty"
    )]
    pub networks: crate::network_service::ConfiguredNetworks,
    /// SetVpnLockdown's state, re-applied after a restart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vpn_lockdown: bool,
    /// SetDnsRedirectionRule's active rules, re-adopted after a restart
    /// while the processes that asked for them run.
    #[serde(
        default,
        skip_serializing_if = "crate::dns_service::DnsRedirections::is_empty"
    )]
    pub dns_redirections: crate::dns_service::DnsRedirections,
    /// Chrome's notifications and feature flags
    /// ([`crate::chrome_service`]).
    #[serde(
        default,
        skip_serializing_if = "crate::chrome_service::ChromeState::is_default"
    )]
    pub chrome: crate::chrome_service::ChromeState,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            next_namespace_id: 0,
            namespaces: BTreeMap::new(),
            sysctl_originals: Vec::new(),
            port_rules: Vec::new(),
            arc: None,
            arc_bridges: Default::default(),
            vms: Vec::new(),
            counter_base: Vec::new(),
            networks: Default::default(),
            vpn_lockdown: false,
            dns_redirections: Default::default(),
            chrome: Default::default(),
        }
    }
}

impl State {
    pub fn devices(&self) -> GetDevicesResponse {
        let mut devices: Vec<NetworkDevice> =
            self.namespaces.values().map(|n| n.device()).collect();
        if let Some(arc) = &self.arc {
            devices.extend(crate::guests::arc_devices(arc).into_iter().map(|mut d| {
                let (v4, v6) = self.dns_redirections.arc_proxies(&d.ifname);
                d.dns_proxy_ipv4_addr = v4.map(|a| a.octets().to_vec()).unwrap_or_default();
                d.dns_proxy_ipv6_addr = v6.map(|a| a.octets().to_vec()).unwrap_or_default();
                d
            }));
        }
        devices.extend(self.vms.iter().map(crate::guests::vm_device));
        GetDevicesResponse { devices }
    }

    /// Remembers the first value seen for a sysctl; later changes of the
    /// same key keep the original.
    pub fn record_sysctl_original(&mut self, netns: Netns, sysctl: Sysctl, value: String) {
        if netns != Netns::Host {
            // Values inside client namespaces die with them.
            return;
        }
        if !self
            .sysctl_originals
            .iter()
            .any(|(n, s, _)| *n == netns && *s == sysctl)
        {
            self.sysctl_originals.push((netns, sysctl, value));
        }
    }
}

/// Where the state lives on disk.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    journal: PathBuf,
    /// Lines in the journal now, to know when to compact it.
    journal_lines: Cell<usize>,
    /// What the state file holds now (as last written by this run).
    written: RefCell<Option<Vec<u8>>>,
    /// Each namespace as last serialized, with its JSON: a save serializes
    /// again only the namespaces that changed since.
    namespace_json: RefCell<BTreeMap<u32, (ConnectedNamespace, String)>>,
    /// State file writes by this run.
    writes: Cell<u64>,
}

/// One line of the port rule journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRuleChange {
    Added,
    Removed,
}

impl PortRuleChange {
    fn mark(self) -> char {
        match self {
            PortRuleChange::Added => '+',
            PortRuleChange::Removed => '-',
        }
    }
}

/// The state and the journal name clients (bus names, uids, pids): only
/// the manager's user reads them.
const STATE_FILE_MODE: u32 = 0o600;

/// Rewrites `path` atomically with `bytes`.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(STATE_FILE_MODE)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes));
    if let Err(e) = written {
        // A full disk: the old file stays as it was.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)
}

/// What was found at start.
#[derive(Debug)]
pub enum Loaded {
    /// No file: a clean start.
    Missing,
    /// A previous manager's state.
    Found(Box<State>),
    /// A file that could not be used; the reason is logged and the file is
    /// treated as missing.
    Unusable(String),
}

impl StateFile {
    pub fn new(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join("state"),
            journal: dir.join("port_rules"),
            journal_lines: Cell::new(0),
            written: RefCell::new(None),
            namespace_json: RefCell::new(BTreeMap::new()),
            writes: Cell::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The port rule journal next to the state file.
    pub fn journal_path(&self) -> &Path {
        &self.journal
    }

    pub fn load(&self) -> Loaded {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return Loaded::Unusable(format!("cannot read {}: {e}", self.path.display())),
        };
        match serde_json::from_str::<State>(&text) {
            Ok(mut s) if s.version == STATE_VERSION => match self.replay_journal(&mut s.port_rules)
            {
                Ok(()) => Loaded::Found(Box::new(s)),
                Err(why) => Loaded::Unusable(why),
            },
            Ok(s) => Loaded::Unusable(format!(
                "{} has version {}, this build writes {STATE_VERSION}",
                self.path.display(),
                s.version
            )),
            Err(e) => Loaded::Unusable(format!("{} is not valid: {e}", self.path.display())),
        }
    }

    /// `state` as the file holds it: its fields as serde writes them, and
    /// `namespaces`, an object keyed by id, put together from the cached
    /// JSON of those that did not change.
    fn render(&self, state: &State) -> std::io::Result<Vec<u8>> {
        let rest = serde_json::to_vec(state).map_err(std::io::Error::other)?;
        let mut cache = self.namespace_json.borrow_mut();
        cache.retain(|id, _| state.namespaces.contains_key(id));
        let mut out = Vec::with_capacity(rest.len() + 16 + state.namespaces.len() * 400);
        out.extend_from_slice(b"{\"namespaces\":{");
        for (i, (id, ns)) in state.namespaces.iter().enumerate() {
            let fresh = !matches!(cache.get(id), Some((cached, _)) if cached == ns);
            if fresh {
                let json = serde_json::to_string(ns).map_err(std::io::Error::other)?;
                cache.insert(*id, (ns.clone(), json));
            }
            let json = cache.get(id).map(|(_, j)| j.as_str()).unwrap_or("null");
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(format!("\"{id}\":").as_bytes());
            out.extend_from_slice(json.as_bytes());
        }
        out.push(b'}');
        // `rest` is an object: its members follow ours.
        match rest.as_slice() {
            [b'{', b'}'] => out.push(b'}'),
            [b'{', members @ ..] => {
                out.push(b',');
                out.extend_from_slice(members);
            }
            _ => {
                return Err(std::io::Error::other(
                    "the state does not serialize to an object",
                ))
            }
        }
        Ok(out)
    }

    /// Writes `state` (all but its port rules) atomically.
    pub fn save(&self, state: &State) -> std::io::Result<()> {
        let text = self.render(state)?;
        replace_file(&self.path, &text)?;
        self.writes.set(self.writes.get() + 1);
        *self.written.borrow_mut() = Some(text);
        Ok(())
    }

    /// Writes `state` unless the file already holds exactly it; true when
    /// written.
    pub fn save_if_changed(&self, state: &State) -> std::io::Result<bool> {
        let text = self.render(state)?;
        if self.written.borrow().as_deref() == Some(text.as_slice()) {
            return Ok(false);
        }
        replace_file(&self.path, &text)?;
        self.writes.set(self.writes.get() + 1);
        *self.written.borrow_mut() = Some(text);
        Ok(true)
    }

    /// How many times this run wrote the state file.
    pub fn writes(&self) -> u64 {
        self.writes.get()
    }

    /// Applies the journal's lines to `rules`. A line that cannot be read
    /// makes the whole state unusable: a rule forgotten would be a rule
    /// nobody removes.
    fn replay_journal(&self, rules: &mut Vec<crate::port_rules::PortRule>) -> Result<(), String> {
        let text = match std::fs::read_to_string(&self.journal) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read {}: {e}", self.journal.display())),
        };
        let mut lines = 0;
        for (n, line) in text.split_inclusive('\n').enumerate() {
            let Some(line) = line.strip_suffix('\n') else {
                // The last write did not finish (the manager died in it):
                // that change was never reported done.
                log::warn!(
                    "{}: ignoring an unfinished last line",
                    self.journal.display()
                );
                break;
            };
            lines += 1;
            let bad = |e: String| format!("{} line {}: {e}", self.journal.display(), n + 1);
            let (mark, json) = line
                .split_at_checked(1)
                .ok_or_else(|| bad("empty".into()))?;
            let rule: crate::port_rules::PortRule =
                serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
            match mark {
                "+" => rules.push(rule),
                "-" => rules.retain(|r| *r != rule),
                other => return Err(bad(format!("starts with {other:?}, not + or -"))),
            }
        }
        self.journal_lines.set(lines);
        Ok(())
    }

    /// Records one port rule change: one line appended, or, when the
    /// journal has grown to more than twice the `live` rules (plus some),
    /// the journal rewritten as `live` (which already has the change).
    pub fn record_port_rule(
        &self,
        change: PortRuleChange,
        rule: &crate::port_rules::PortRule,
        live: &[crate::port_rules::PortRule],
    ) -> std::io::Result<()> {
        if self.journal_lines.get() + 1 > 2 * live.len() + 64 {
            return self.save_port_rules(live);
        }
        let mut line = String::from(change.mark());
        line.push_str(&serde_json::to_string(rule).map_err(std::io::Error::other)?);
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(STATE_FILE_MODE)
            .open(&self.journal)?;
        let before = f.metadata()?.len();
        if let Err(e) = f.write_all(line.as_bytes()) {
            // A full disk: take back the part that was written (a torn
            // last line is skipped by a reader anyway).
            let _ = f.set_len(before);
            return Err(e);
        }
        self.journal_lines.set(self.journal_lines.get() + 1);
        Ok(())
    }

    /// Rewrites the journal atomically as exactly `rules`.
    pub fn save_port_rules(&self, rules: &[crate::port_rules::PortRule]) -> std::io::Result<()> {
        let mut text = String::new();
        for rule in rules {
            text.push('+');
            text.push_str(&serde_json::to_string(rule).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        replace_file(&self.journal, text.as_bytes())?;
        self.journal_lines.set(rules.len());
        Ok(())
    }

    pub fn remove(&self) -> std::io::Result<()> {
        *self.written.borrow_mut() = None;
        for path in [&self.journal, &self.path] {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.journal_lines.set(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_written_from_the_cache_and_load_back_equal() {
        let dir = std::env::temp_dir().join(format!("pp-state-ns-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = StateFile::new(&dir);
        let mut state = State {
            next_namespace_id: 3,
            ..Default::default()
        };
        for ns in crate::namespaces::test_support::connected(3) {
            state.namespaces.insert(ns.id, ns);
        }
        let loaded = |file: &StateFile| match file.load() {
            Loaded::Found(s) => *s,
            other => panic!("{other:?}"),
        };
        // What serde would write for the whole state, field by field.
        let whole = |state: &State| {
            let mut v = serde_json::to_value(state).unwrap();
            v["namespaces"] = serde_json::to_value(&state.namespaces).unwrap();
            v
        };
        file.save(&state).unwrap();
        assert_eq!(loaded(&file), state);
        let text = std::fs::read(file.path()).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&text).unwrap(),
            whole(&state)
        );

        // One changed, one gone: the cache follows.
        state.namespaces.get_mut(&1).unwrap().client = ":1.9".into();
        state.namespaces.remove(&0);
        assert!(file.save_if_changed(&state).unwrap());
        assert_eq!(loaded(&file), state);
        assert!(!file.save_if_changed(&state).unwrap(), "nothing changed");
        let text = std::fs::read(file.path()).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&text).unwrap(),
            whole(&state)
        );

        state.namespaces.clear();
        file.save(&state).unwrap();
        assert_eq!(loaded(&file), state);
        file.remove().unwrap();
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn a_saved_state_loads_back_equal() {
        let dir = std::env::temp_dir().join(format!("pp-state-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = StateFile::new(&dir);
        let mut state = State {
            next_namespace_id: 7,
            ..Default::default()
        };
        state.record_sysctl_original(Netns::Host, Sysctl::Ipv4Forward, "0".into());
        file.save(&state).unwrap();
        match file.load() {
            Loaded::Found(s) => assert_eq!(*s, state),
            other => panic!("{other:?}"),
        }
        file.remove().unwrap();
        assert!(matches!(file.load(), Loaded::Missing));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_garbled_state_file_is_unusable_not_fatal() {
        let dir = std::env::temp_dir().join(format!("pp-state-test2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = StateFile::new(&dir);
        std::fs::write(file.path(), b"{not json").unwrap();
        assert!(matches!(file.load(), Loaded::Unusable(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn rule(port: u16) -> crate::port_rules::PortRule {
        crate::port_rules::PortRule::Lockdown {
            proto: patchpanel_firewall::ports::PortProtocol::Tcp,
            port,
        }
    }

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("pp-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn loaded_rules(file: &StateFile) -> Vec<crate::port_rules::PortRule> {
        match file.load() {
            Loaded::Found(s) => s.port_rules,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_state_and_the_journal_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = Dir::new("modes");
        let file = StateFile::new(&dir.0);
        file.save(&State::default()).unwrap();
        file.record_port_rule(PortRuleChange::Added, &rule(1), &[rule(1)])
            .unwrap();
        for path in [file.path(), file.journal_path()] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
        file.save_port_rules(&[rule(1)]).unwrap();
        let mode = std::fs::metadata(file.journal_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "rewritten journal");
    }

    #[test]
    fn port_rules_live_in_the_journal_and_load_back_in_order() {
        let dir = Dir::new("journal");
        let file = StateFile::new(&dir.0);
        file.save(&State::default()).unwrap();
        let mut live = Vec::new();
        for port in 1..=5 {
            live.push(rule(port));
            file.record_port_rule(PortRuleChange::Added, &rule(port), &live)
                .unwrap();
        }
        live.retain(|r| *r != rule(2));
        file.record_port_rule(PortRuleChange::Removed, &rule(2), &live)
            .unwrap();
        assert_eq!(loaded_rules(&file), live);
        // The state file itself does not carry them.
        let state = State {
            port_rules: live.clone(),
            ..Default::default()
        };
        file.save(&state).unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(!text.contains("port_rules"), "{text}");
        assert_eq!(loaded_rules(&file), live);
        file.remove().unwrap();
        assert!(!dir.0.join("port_rules").exists());
    }

    #[test]
    fn the_journal_is_compacted_when_it_grows_past_twice_the_live_rules() {
        let dir = Dir::new("compact");
        let file = StateFile::new(&dir.0);
        file.save(&State::default()).unwrap();
        let mut live = vec![rule(1)];
        file.record_port_rule(PortRuleChange::Added, &rule(1), &live)
            .unwrap();
        for _ in 0..500 {
            live.push(rule(2));
            file.record_port_rule(PortRuleChange::Added, &rule(2), &live)
                .unwrap();
            live.pop();
            file.record_port_rule(PortRuleChange::Removed, &rule(2), &live)
                .unwrap();
        }
        let lines = std::fs::read_to_string(dir.0.join("port_rules"))
            .unwrap()
            .lines()
            .count();
        assert!(lines <= 2 * live.len() + 64, "{lines} lines");
        assert_eq!(loaded_rules(&file), live);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_a_bad_one_makes_the_state_unusable() {
        let dir = Dir::new("torn");
        let file = StateFile::new(&dir.0);
        file.save(&State::default()).unwrap();
        file.save_port_rules(&[rule(1)]).unwrap();
        let journal = dir.0.join("port_rules");
        let mut text = std::fs::read_to_string(&journal).unwrap();
        text.push_str("+{\"Lockd");
        std::fs::write(&journal, &text).unwrap();
        assert_eq!(loaded_rules(&file), [rule(1)]);
        std::fs::write(&journal, "+{\"Lockd\n").unwrap();
        assert!(matches!(file.load(), Loaded::Unusable(_)));
        std::fs::write(&journal, "*{}\n").unwrap();
        assert!(matches!(file.load(), Loaded::Unusable(_)));
    }

    #[test]
    fn a_state_file_that_still_has_port_rules_keeps_them() {
        let dir = Dir::new("old");
        let file = StateFile::new(&dir.0);
        let mut value = serde_json::to_value(State::default()).unwrap();
        value["port_rules"] = serde_json::to_value(vec![rule(9)]).unwrap();
        std::fs::write(file.path(), value.to_string()).unwrap();
        assert_eq!(loaded_rules(&file), [rule(9)]);
    }

    #[test]
    fn the_first_sysctl_value_seen_is_kept() {
        let mut state = State::default();
        state.record_sysctl_original(Netns::Host, Sysctl::Ipv4Forward, "0".into());
        state.record_sysctl_original(Netns::Host, Sysctl::Ipv4Forward, "1".into());
        assert_eq!(
            state.sysctl_originals,
            vec![(Netns::Host, Sysctl::Ipv4Forward, "0".to_string())]
        );
    }
}
