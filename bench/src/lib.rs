//! Benchmarks of `patchpaneld` on a real kernel, next to a known peer.
//!
//! `bench-connect-ns` measures how long a `ConnectNamespace` call takes until
//! the namespace is usable, and how long closing its lifeline takes until
//! every trace is gone, with none and with 100 other namespaces connected. It
//! measures netavark's `setup` and `teardown` of a container on a bridge
//! network in the same run, so that the numbers come with a yardstick taken
//! on the same machine at the same time. See `bench/README.md`.
//!
//! Everything runs in private network namespaces built with the
//! `patchpanel-tests` harness; the host's root namespace is never touched.
//! The modules own one concern each: the measurements of each side
//! ([`patchpanel`], [`netavark`]), the kernel check that a link is gone
//! ([`link_probe`]), percentiles ([`stats`]), the printed table ([`report`])
//! and an orderly stop on SIGINT/SIGTERM ([`interrupt`]).

pub mod interrupt;
pub mod link_probe;
pub mod netavark;
pub mod patchpanel;
pub mod report;
pub mod stats;
