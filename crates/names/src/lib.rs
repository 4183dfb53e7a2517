//! Validated kernel object names.
//!
//! Interface and namespace names travel from D-Bus callers through the
//! manager to the datapath writer, which hands them to the kernel and to
//! `iptables-restore`. Each hop re-validates: these types can only hold a
//! name that is safe as one token of a restore batch and legal for the
//! kernel, and deserializing an invalid one fails.

use serde::{Deserialize, Serialize};

/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Longest network namespace name accepted (a file name under `/run/netns`).
pub const MAX_NETNS_NAME_LEN: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty {kind} name")]
    Empty { kind: &'static str },
    #[error("{kind} name {name:?} is longer than {max} bytes")]
    TooLong {
        kind: &'static str,
        name: String,
        max: usize,
    },
    #[error(
        "{kind} name {name:?} contains {ch:?}; only letters, digits, '_', '-' and '.' are allowed"
    )]
    BadCharacter {
        kind: &'static str,
        name: String,
        ch: char,
    },
    #[error("{kind} name {name:?} may not start with '-' or be '.' or '..'")]
    Reserved { kind: &'static str, name: String },
}

fn check(kind: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            kind,
            name: name.escape_debug().to_string(),
            max,
        });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(NameError::BadCharacter {
            kind,
            name: name.escape_debug().to_string(),
            ch,
        });
    }
    if name.starts_with('-') || name == "." || name == ".." {
        return Err(NameError::Reserved {
            kind,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// A network interface name: 1–15 bytes of `[A-Za-z0-9_.-]`, not starting
/// with `-`. Stricter than the kernel (which allows most bytes) so that a
/// name is always a single safe token for `iptables-restore`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

impl IfName {
    pub fn new(name: &str) -> Result<IfName, NameError> {
        check("interface", name, MAX_IFNAME_LEN)?;
        Ok(IfName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IfName {
    type Error = NameError;
    fn try_from(s: String) -> Result<IfName, NameError> {
        check("interface", &s, MAX_IFNAME_LEN)?;
        Ok(IfName(s))
    }
}

impl From<IfName> for String {
    fn from(n: IfName) -> String {
        n.0
    }
}

impl std::fmt::Display for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for IfName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<IfName, NameError> {
        IfName::new(s)
    }
}

/// A named network namespace (a file under `/run/netns`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NetnsName(String);

impl NetnsName {
    pub fn new(name: &str) -> Result<NetnsName, NameError> {
        check("namespace", name, MAX_NETNS_NAME_LEN)?;
        Ok(NetnsName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NetnsName {
    type Error = NameError;
    fn try_from(s: String) -> Result<NetnsName, NameError> {
        check("namespace", &s, MAX_NETNS_NAME_LEN)?;
        Ok(NetnsName(s))
    }
}

impl From<NetnsName> for String {
    fn from(n: NetnsName) -> String {
        n.0
    }
}

impl std::fmt::Display for NetnsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_interface_names_are_accepted() {
        for n in ["eth0", "arc_ns12", "wlan0.1", "vmtap0", "br-lan", "a"] {
            assert!(IfName::new(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn injection_attempts_are_refused() {
        for n in [
            "eth0 -j ACCEPT",
            "eth0\n-A INPUT",
            "eth\"0",
            "eth'0",
            "-j",
            "eth0;",
            "..",
            "",
            "eth0\0",
            "éth0",
        ] {
            assert!(IfName::new(n).is_err(), "{n:?}");
        }
    }

    #[test]
    fn interface_names_longer_than_15_bytes_are_refused() {
        assert!(IfName::new("abcdefghijklmno").is_ok());
        let e = IfName::new("abcdefghijklmnop").unwrap_err();
        assert!(e.to_string().contains("longer than 15"), "{e}");
    }

    #[test]
    fn deserializing_a_bad_name_fails() {
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(String::from("eth0 -j ACCEPT"), config).unwrap();
        assert!(bincode::serde::decode_from_slice::<IfName, _>(&bytes, config).is_err());
        let bytes = bincode::serde::encode_to_vec(String::from("eth0"), config).unwrap();
        let (name, _) = bincode::serde::decode_from_slice::<IfName, _>(&bytes, config).unwrap();
        assert_eq!(name.as_str(), "eth0");
    }

    #[test]
    fn an_interface_name_serializes_as_its_text() {
        let config = bincode::config::standard();
        let name = IfName::new("eth0").unwrap();
        let bytes = bincode::serde::encode_to_vec(name, config).unwrap();
        let (text, _) = bincode::serde::decode_from_slice::<String, _>(&bytes, config).unwrap();
        assert_eq!(text, "eth0");
    }

    #[test]
    fn an_interface_name_displays_as_its_text() {
        assert_eq!(IfName::new("wlan0.1").unwrap().to_string(), "wlan0.1");
    }

    #[test]
    fn a_namespace_name_keeps_its_text() {
        assert_eq!(NetnsName::new("arc_ns12").unwrap().as_str(), "arc_ns12");
    }

    #[test]
    fn a_namespace_name_serializes_as_its_text() {
        let config = bincode::config::standard();
        let name = NetnsName::new("arc_ns12").unwrap();
        let bytes = bincode::serde::encode_to_vec(name, config).unwrap();
        let (text, _) = bincode::serde::decode_from_slice::<String, _>(&bytes, config).unwrap();
        assert_eq!(text, "arc_ns12");
    }

    #[test]
    fn a_namespace_name_survives_a_serde_round_trip() {
        let config = bincode::config::standard();
        let name = NetnsName::new("connected_netns_0").unwrap();
        let bytes = bincode::serde::encode_to_vec(name.clone(), config).unwrap();
        let (back, _) = bincode::serde::decode_from_slice::<NetnsName, _>(&bytes, config).unwrap();
        assert_eq!(back, name);
    }

    #[test]
    fn deserializing_a_bad_namespace_name_fails() {
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(String::from("../etc"), config).unwrap();
        assert!(bincode::serde::decode_from_slice::<NetnsName, _>(&bytes, config).is_err());
    }

    #[test]
    fn a_namespace_name_displays_as_its_text() {
        assert_eq!(NetnsName::new("arc_ns12").unwrap().to_string(), "arc_ns12");
    }
}
