//! What the CLI reads from the kernel of its own network namespace: links,
//! addresses, routes and ip rules (`ip -j`), and the iptables rules
//! (`iptables-save`, `ip6tables-save`, root only). Parsing is pure, so the
//! shapes are unit-tested with captured output.

use std::process::Command;

use serde::Deserialize;

/// One `ip -j -d link show` entry (the fields the topology uses).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IpLink {
    pub ifname: String,
    #[serde(default)]
    pub ifindex: u32,
    #[serde(default)]
    pub operstate: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub master: Option<String>,
    #[serde(default)]
    pub linkinfo: Option<IpLinkInfo>,
    #[serde(default)]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IpLinkInfo {
    #[serde(default)]
    pub info_kind: Option<String>,
}

impl IpLink {
    /// `veth`, `bridge`, `tun`, ... when the kernel says.
    pub fn kind(&self) -> Option<&str> {
        self.linkinfo.as_ref()?.info_kind.as_deref()
    }
}

/// One `ip -j addr show` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IpAddrs {
    pub ifname: String,
    #[serde(default)]
    pub addr_info: Vec<IpAddrInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IpAddrInfo {
    #[serde(default)]
    pub family: String,
    #[serde(default)]
    pub local: Option<String>,
    #[serde(default)]
    pub prefixlen: Option<u8>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// One `ip -j route show table all` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IpRoute {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub dst: String,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dev: Option<String>,
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub metric: Option<u32>,
}

/// One `ip -j rule show` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IpRule {
    #[serde(default)]
    pub priority: u32,
    #[serde(default)]
    pub src: Option<String>,
    #[serde(default)]
    pub srclen: Option<u8>,
    #[serde(default)]
    pub fwmark: Option<String>,
    #[serde(default)]
    pub fwmask: Option<String>,
    #[serde(default)]
    pub iif: Option<String>,
    #[serde(default)]
    pub oif: Option<String>,
    #[serde(default)]
    pub table: Option<String>,
    /// `157` for patchpanel's.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// IPv4 or IPv6, for routes, rules and iptables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

/// One `-A CHAIN ...` line of `iptables-save`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwRule {
    pub family: Family,
    pub table: String,
    pub chain: String,
    /// The rule's words after the chain name.
    pub args: Vec<String>,
}

impl FwRule {
    /// The value after `flag` (`-i`, `-o`, `-j`, `--set-xmark`...), if any.
    pub fn value_of(&self, flag: &str) -> Option<&str> {
        let at = self.args.iter().position(|a| a == flag)?;
        self.args.get(at + 1).map(String::as_str)
    }

    /// Whether the rule matches `ifname` with `-i` or `-o` (`!` negations
    /// and `+` wildcards included: they still concern the interface).
    pub fn matches_interface(&self, ifname: &str) -> bool {
        ["-i", "-o"]
            .iter()
            .filter_map(|flag| self.value_of(flag))
            .any(|value| interface_matches(value, ifname))
    }

    /// Whether the rule matches an interface other than `ifname`.
    pub fn matches_other_interface(&self, ifname: &str) -> bool {
        ["-i", "-o"]
            .iter()
            .filter_map(|flag| self.value_of(flag))
            .any(|value| !interface_matches(value, ifname))
    }
}

fn interface_matches(pattern: &str, ifname: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => ifname.starts_with(prefix),
        None => pattern == ifname,
    }
}

/// The firewall of both families.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Firewall {
    pub rules: Vec<FwRule>,
    /// `(family, table, chain)` of every chain declared with `:CHAIN`.
    pub chains: Vec<(Family, String, String)>,
}

impl Firewall {
    pub fn is_chain(&self, family: Family, table: &str, chain: &str) -> bool {
        self.chains
            .iter()
            .any(|(f, t, c)| *f == family && t == table && c == chain)
    }
}

/// Everything read from the kernel; what could not be read is empty and
/// explained in `notes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub links: Vec<IpLink>,
    pub addrs: Vec<IpAddrs>,
    pub routes: Vec<(Family, IpRoute)>,
    pub rules: Vec<(Family, IpRule)>,
    /// `None` when iptables-save could not be run (not root, not installed).
    pub firewall: Option<Firewall>,
    pub notes: Vec<String>,
}

/// Parses `iptables-save` output into `firewall` as `family`.
pub fn parse_iptables_save(text: &str, family: Family, firewall: &mut Firewall) {
    let mut table = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('*') {
            table = name.to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            if let Some(chain) = decl.split_whitespace().next() {
                firewall
                    .chains
                    .push((family, table.clone(), chain.to_string()));
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let mut words = split_words(rule).into_iter();
            let Some(chain) = words.next() else { continue };
            firewall.rules.push(FwRule {
                family,
                table: table.clone(),
                chain,
                args: words.collect(),
            });
        }
    }
}

/// Splits on blanks, keeping `"quoted words"` (comments) together.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Reads the kernel state of this network namespace. Never fails: what
/// cannot be read is left out with a note.
pub fn read() -> KernelState {
    let mut state = KernelState::default();
    state.links = ip_json(&["-d", "link", "show"], &mut state.notes);
    state.addrs = ip_json(&["addr", "show"], &mut state.notes);
    for (family, flag) in [(Family::V4, "-4"), (Family::V6, "-6")] {
        let routes: Vec<IpRoute> =
            ip_json(&[flag, "route", "show", "table", "all"], &mut state.notes);
        state.routes.extend(routes.into_iter().map(|r| (family, r)));
        let rules: Vec<IpRule> = ip_json(&[flag, "rule", "show"], &mut state.notes);
        state.rules.extend(rules.into_iter().map(|r| (family, r)));
    }
    let mut firewall = Firewall::default();
    let mut readable = true;
    for (family, tool) in [
        (Family::V4, "iptables-save"),
        (Family::V6, "ip6tables-save"),
    ] {
        match run(tool, &[]) {
            Ok(mut text) => {
                // patchpanel's own nf_tables tables (the nftables backend),
                // read back in the same form.
                let fw_family = match family {
                    Family::V4 => patchpanel_firewall::Family::V4,
                    Family::V6 => patchpanel_firewall::Family::V6,
                };
                if let Ok(dump) = patchpanel_firewall::Nftables::new().and_then(|mut nft| {
                    patchpanel_firewall::FirewallBackend::dump(&mut nft, fw_family)
                }) {
                    text.push_str(&dump);
                }
                parse_iptables_save(&text, family, &mut firewall)
            }
            Err(why) => {
                readable = false;
                state.notes.push(format!(
                    "firewall chains and fwmarks left out: {tool}: {why} (they need root)"
                ));
                break;
            }
        }
    }
    state.firewall = readable.then_some(firewall);
    state
}

fn ip_json<T: serde::de::DeserializeOwned>(args: &[&str], notes: &mut Vec<String>) -> Vec<T> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let text = match run("ip", &all) {
        Ok(text) => text,
        Err(why) => {
            notes.push(format!("`ip {}` failed: {why}", all.join(" ")));
            return Vec::new();
        }
    };
    // `ip -j` prints nothing at all for an empty list on some versions.
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&text).unwrap_or_else(|err| {
        notes.push(format!("cannot parse `ip {}`: {err}", all.join(" ")));
        Vec::new()
    })
}

/// Runs `program args`, its stdout on success, a one-line reason otherwise.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|err| format!("cannot run it: {err}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("{} ({})", first.trim(), out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*mangle
:PREROUTING ACCEPT [0:0]
:PREROUTING_vmtap0 - [0:0]
-A PREROUTING -m comment --comment \"patchpanel rules\" -j patchpanel_PREROUTING
-A PREROUTING_vmtap0 -j MARK --set-xmark 0x2100/0x3f00
COMMIT
*filter
:FORWARD ACCEPT [0:0]
-A guest_forward -i vmtap+ -j ACCEPT
COMMIT
";

    #[test]
    fn iptables_save_gives_tables_chains_and_rule_words() {
        let mut fw = Firewall::default();

        parse_iptables_save(SAVE, Family::V4, &mut fw);

        assert!(fw.is_chain(Family::V4, "mangle", "PREROUTING_vmtap0"));
        assert!(!fw.is_chain(Family::V6, "mangle", "PREROUTING_vmtap0"));
        assert_eq!(fw.rules.len(), 3);
        assert_eq!(fw.rules[0].args[3], "patchpanel rules");
        assert_eq!(fw.rules[0].value_of("-j"), Some("patchpanel_PREROUTING"));
        assert_eq!(fw.rules[1].value_of("--set-xmark"), Some("0x2100/0x3f00"));
        assert_eq!(fw.rules[2].table, "filter");
    }

    #[test]
    fn interface_wildcards_match_by_prefix() {
        let mut fw = Firewall::default();
        parse_iptables_save(SAVE, Family::V4, &mut fw);
        let rule = &fw.rules[2];

        assert!(rule.matches_interface("vmtap3"));
        assert!(!rule.matches_interface("arc_eth0"));
        assert!(rule.matches_other_interface("arc_eth0"));
    }

    #[test]
    fn ip_json_shapes_parse_with_missing_fields() {
        let links: Vec<IpLink> = serde_json::from_str(
            r#"[{"ifindex":7,"ifname":"vetheth0","operstate":"UP","master":"arc_eth0",
                "linkinfo":{"info_kind":"veth"},"flags":[]},{"ifname":"lo"}]"#,
        )
        .unwrap();
        let routes: Vec<IpRoute> = serde_json::from_str(
            r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","table":"1002","protocol":"157","flags":[]}]"#,
        )
        .unwrap();
        let rules: Vec<IpRule> = serde_json::from_str(
            r#"[{"priority":1010,"src":"all","fwmark":"0x3ea0000","fwmask":"0xffff0000","table":"1002"}]"#,
        )
        .unwrap();

        assert_eq!(links[0].kind(), Some("veth"));
        assert_eq!(links[1].kind(), None);
        assert_eq!(routes[0].table.as_deref(), Some("1002"));
        assert_eq!(rules[0].fwmask.as_deref(), Some("0xffff0000"));
    }
}
