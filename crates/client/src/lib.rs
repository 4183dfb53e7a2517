//! A blocking client of `org.chromium.PatchPanel`, the D-Bus service of
//! `patchpaneld`.
//!
//! The wire format (one serialized protobuf in, one out, sometimes a file
//! descriptor) is easy to get subtly wrong: the lifeline pipe must be made
//! close-on-exec and its read end kept alive for as long as the resource is
//! wanted, server errors arrive as D-Bus error names, and the original
//! service answers some failures with an empty response instead. This crate
//! owns those details so that the `patchpanel` CLI, tests and other Rust
//! programs do not each re-learn them.
//!
//! - [`Client`]: one private connection to the system bus
//!   (`DBUS_SYSTEM_BUS_ADDRESS` is honoured) with a per-call timeout, a
//!   typed method per D-Bus method and the generic [`Client::call`].
//! - [`Lifeline`]: the caller's end of a `ConnectNamespace` lifeline;
//!   dropping it releases the namespace.
//! - [`DeviceChanges`]: decoded `NetworkDeviceChanged` signals;
//!   [`Signals`]: every signal of the interface, as [`Signal`]s.
//! - [`Error`]: what went wrong, with the server's refusals
//!   (`InvalidArgument`, `Failed`) kept apart from bus trouble.
//!
//! With the `fake-service` feature, [`fake`] provides an in-process stand-in
//! for the daemon, for tests of this crate and of its users.

mod client;
mod error;
mod lifeline;
mod watch;

#[cfg(feature = "fake-service")]
pub mod fake;

pub use client::{Client, TagVia, DEFAULT_TIMEOUT};
pub use error::Error;
pub use lifeline::Lifeline;
pub use watch::{DeviceChanges, Signal, Signals, Subscription};

/// The message types, re-exported so that users need not depend on
/// `patchpanel-proto` themselves.
pub use patchpanel_proto as proto;
