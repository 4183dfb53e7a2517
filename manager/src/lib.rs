//! The manager's library: everything `patchpaneld` (src/main.rs) runs,
//! as modules, so that the fuzz targets (fuzz/) reach the request decoders
//! and their validation exactly as the daemon runs them.

pub mod adb_service;
pub mod chrome_service;
pub mod config;
pub mod counters;
pub mod dbus_service;
pub mod dhcp_service;
pub mod dispatch;
pub mod dns_service;
pub mod env;
pub mod error;
pub mod firewall_service;
pub mod guest_service;
pub mod guests;
pub mod helpers;
pub mod host_firewall;
pub mod lifecycle;
pub mod lifeline;
pub mod manager;
pub mod mcast_service;
pub mod namespace_service;
pub mod namespaces;
pub mod ndproxy_service;
pub mod neighbor_service;
pub mod network_config;
pub mod network_service;
pub mod pids;
pub mod port_rule_service;
pub mod port_rules;
pub mod routing;
pub mod socket_service;
pub mod spawner;
pub mod state;
pub mod supervisor;
pub mod uplinks;
pub mod vpn_service;
