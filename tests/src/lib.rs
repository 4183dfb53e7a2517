//! Test harness for patchpanel: everything an end-to-end or kernel test needs to
//! stand up a private world and tear it down again.
//!
//! A test builds, in this order, a [`Netns`] (the daemon's network namespace; the
//! host's root namespace is never touched), a [`PrivateBus`] (its own
//! `dbus-daemon`, reachable by the unprivileged `patchpaneld` user) and a
//! [`Daemon`] (the built `patchpaneld`, started with `nsenter --net=`). Each of
//! them removes what it created on `Drop`, also when the test panics; [`TestBed`]
//! bundles the three in the right drop order.
//!
//! The process tree is read from `/proc` ([`procfs`], [`tree`]), the D-Bus API
//! is driven both with the stock `dbus-send` and with a `dbus-rs` client
//! ([`dbus_client`]), and helper binaries can be run on their own with an IPC
//! socket on a fixed fd ([`direct_helper`]).

pub mod bins;
pub mod bus;
pub mod daemon;
pub mod dbus_client;
pub mod dhcp;
pub mod direct_helper;
pub mod fake_shill;
pub mod firewalld;
pub mod forger;
pub mod host_rules;
pub mod mcast;
pub mod netns;
pub mod policy;
pub mod procfs;
pub mod shill_world;
pub mod snapshot;
pub mod spawned;
pub mod traffic;
pub mod tree;
pub mod vm;
pub mod wait;
pub mod world;
pub mod writer_client;

mod command;

pub use bins::{bin_dir, bin_path};
pub use bus::PrivateBus;
pub use daemon::{Daemon, DaemonOptions, TestBed};
pub use dbus_client::{
    dbus_send_bytes, dbus_send_get_devices, dbus_send_string, BusClient, MethodError,
};
pub use direct_helper::DirectHelper;
pub use netns::Netns;
pub use procfs::{ProcIdentity, ProcStat, ProcStatus};
pub use spawned::Spawned;
pub use tree::{Helper, ProcessTree};
pub use wait::poll_until;
