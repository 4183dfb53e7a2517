//! Kernel tests for named network namespaces (in a private directory, never
//! /run/netns) and for sysctls in another namespace.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::os::fd::AsFd;

use common::{in_fresh_netns, ip_json_in, run, NetnsDir};
use patchpanel_rtnl::{netns, sysctl, RtnlError};

#[test]
fn named_netns_is_created_opened_and_deleted() {
    in_fresh_netns(|| {
        let dir = NetnsDir::new();
        let ns = netns::create_named(&dir.path, "a").unwrap();
        let path = dir.path.join("a");

        let id = netns::ns_id(ns.as_fd()).unwrap();
        let reopened = netns::open_named(&dir.path, "a").unwrap();
        assert_eq!(netns::ns_id(reopened.as_fd()).unwrap(), id);
        let here = netns::open_current().unwrap();
        assert_ne!(netns::ns_id(here.as_fd()).unwrap(), id);
        // It is a mount point (the bind mount keeps the namespace alive) and
        // iproute2 can enter it: a new namespace has only a down loopback.
        let mounts = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        assert!(
            mounts.contains(&format!(" {} ", path.display())),
            "{path:?} not mounted"
        );
        let links = ip_json_in(&path, &["link", "show"]);
        assert_eq!(links.as_array().unwrap().len(), 1);
        assert_eq!(links[0]["ifname"], "lo");

        assert!(netns::delete_named(&dir.path, "a").unwrap());
        assert!(!path.exists());
        assert!(!netns::delete_named(&dir.path, "a").unwrap());
        // The fd still holds the namespace after its name is gone.
        assert_eq!(netns::ns_id(ns.as_fd()).unwrap(), id);
    });
}

#[test]
fn creating_an_existing_name_fails_and_keeps_the_original() {
    in_fresh_netns(|| {
        let dir = NetnsDir::new();
        let first = netns::create_named(&dir.path, "dup").unwrap();
        let err = netns::create_named(&dir.path, "dup").unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
        let still = netns::open_named(&dir.path, "dup").unwrap();
        assert_eq!(
            netns::ns_id(still.as_fd()).unwrap(),
            netns::ns_id(first.as_fd()).unwrap()
        );
    });
}

#[test]
fn attach_names_an_existing_namespace() {
    in_fresh_netns(|| {
        let dir = NetnsDir::new();
        let ns = netns::create_named(&dir.path, "orig").unwrap();
        netns::attach_named(&dir.path, "alias", ns.as_fd()).unwrap();
        let via_alias = netns::open_named(&dir.path, "alias").unwrap();
        assert_eq!(
            netns::ns_id(via_alias.as_fd()).unwrap(),
            netns::ns_id(ns.as_fd()).unwrap()
        );
        // Attaching the test thread's own namespace, opened from /proc.
        let me = std::fs::File::open(format!(
            "/proc/{}/task/{}/ns/net",
            std::process::id(),
            // SAFETY: gettid has no arguments and cannot fail.
            unsafe { libc::gettid() }
        ))
        .unwrap();
        netns::attach_named(&dir.path, "me", me.as_fd()).unwrap();
        let me_named = netns::open_named(&dir.path, "me").unwrap();
        assert_eq!(
            netns::ns_id(me_named.as_fd()).unwrap(),
            netns::ns_id(netns::open_current().unwrap().as_fd()).unwrap()
        );
        for name in ["orig", "alias", "me"] {
            assert!(netns::delete_named(&dir.path, name).unwrap(), "{name}");
        }
    });
}

#[test]
fn attach_refuses_an_fd_that_is_not_a_network_namespace() {
    in_fresh_netns(|| {
        let dir = NetnsDir::new();
        let not_ns = std::fs::File::open("/proc/self/status").unwrap();
        let err = netns::attach_named(&dir.path, "bogus", not_ns.as_fd()).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
        assert!(!dir.path.join("bogus").exists(), "mount point left behind");
    });
}

#[test]
fn netns_names_that_escape_the_directory_are_refused() {
    in_fresh_netns(|| {
        let dir = NetnsDir::new();
        for bad in ["", "..", "../x", "a/b"] {
            let err = netns::create_named(&dir.path, bad).unwrap_err();
            assert!(matches!(err, RtnlError::Invalid { .. }), "{bad:?}: {err}");
        }
        assert!(!netns::delete_named(&dir.path, "never").unwrap());
    });
}

#[test]
fn sysctl_write_in_another_namespace_changes_only_that_namespace() {
    in_fresh_netns(|| {
        let dir = NetnsDir::new();
        let ns = netns::create_named(&dir.path, "s").unwrap();
        let key = "net/ipv4/ip_default_ttl";
        let here_before = sysctl::read(None, key).unwrap();
        assert_ne!(here_before, "65");

        sysctl::write(Some(ns.as_fd()), key, "65").unwrap();

        assert_eq!(sysctl::read(Some(ns.as_fd()), key).unwrap(), "65");
        assert_eq!(sysctl::read(None, key).unwrap(), here_before);
        // Independent check: a process inside the namespace sees 65.
        let net = format!("--net={}", dir.path.join("s").display());
        let seen = run(&["nsenter", &net, "cat", "/proc/sys/net/ipv4/ip_default_ttl"]);
        assert_eq!(seen.trim(), "65");
    });
}

#[test]
fn sysctl_write_in_own_namespace_is_read_back() {
    in_fresh_netns(|| {
        sysctl::write(None, "net/ipv4/ip_forward", "1").unwrap();
        assert_eq!(sysctl::read(None, "net/ipv4/ip_forward").unwrap(), "1");
        let seen = run(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
        assert_eq!(seen.trim(), "1");
    });
}

#[test]
fn sysctl_keys_outside_net_are_refused_without_touching_anything() {
    in_fresh_netns(|| {
        let before = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        for key in [
            "../../kernel/hostname",
            "kernel/hostname",
            "net/../kernel/hostname",
        ] {
            let err = sysctl::write(None, key, "pwned").unwrap_err();
            assert!(matches!(err, RtnlError::Invalid { .. }), "{key}: {err}");
            assert!(sysctl::read(None, key).is_err());
        }
        assert_eq!(
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
            before
        );
    });
}

#[test]
fn sysctl_for_a_missing_interface_reports_the_key() {
    in_fresh_netns(|| {
        let err = sysctl::write(None, "net/ipv6/conf/ghost0/accept_ra", "2").unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
        assert!(
            err.to_string().contains("net/ipv6/conf/ghost0/accept_ra"),
            "{err}"
        );
    });
}
