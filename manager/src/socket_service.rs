//! `TagSocket` arriving on `org.chromium.PatchPanel` (Chrome calls it
//! there), and the networks a tag may name.
//!
//! The manager holds no capability, so it cannot set `SO_MARK`: the socket
//! goes over IPC to the socket-service helper, which also serves the same
//! method on `org.chromium.SocketService` from its own bus connection (shill
//! and dns-proxy call it there, and never wait behind the manager). Both
//! paths decode with [`patchpanel_socket_service::parse`] and mark with
//! [`patchpanel_socket_service::apply`].
//!
//! A network id is the interface index of an uplink patchpanel knows or of
//! a network shill configured (`ConfigureNetwork`); its
//! routing tag is `(ifindex + 1000) << 16`. The helper learns the current
//! list after every event that changes it (and from its replay log after a
//! respawn).

use std::os::fd::{AsFd, OwnedFd};

use log::debug;
use patchpanel_ipc::Request;
use patchpanel_proto::TagSocketResponse;
use patchpanel_sandbox::Process;
use patchpanel_socket_service::Action;
use prost::Message;

use crate::env::HelperLink;
use crate::error::CallError;
use crate::network_service::ConfiguredNetworks;
use crate::uplinks::UplinkView;

const REPLAY_KEY: &str = "networks";

/// What the helper was last told.
#[derive(Debug, Default)]
pub struct SocketNetworks {
    sent: Option<Vec<u32>>,
}

impl SocketNetworks {
    /// Tells the helper the interface indexes of the uplinks and of the
    /// networks shill configured (a VPN is not among shill's Devices) when
    /// they changed.
    pub fn reconcile(
        &mut self,
        uplinks: &UplinkView,
        configured: &ConfiguredNetworks,
        link: &mut dyn HelperLink,
    ) {
        let mut wanted: Vec<u32> = uplinks
            .all()
            .map(|u| u.ifindex)
            .chain(configured.applied.by_ifindex.keys().copied())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        if self.sent.as_ref() == Some(&wanted) {
            return;
        }
        let request = Request::SocketNetworks(wanted.clone());
        // Recorded first: a helper that is restarting gets it on replay.
        link.record_replay(
            Process::SocketService,
            REPLAY_KEY,
            request.clone(),
            Vec::new(),
        );
        // A helper that is not up yet (the first start) or restarting gets
        // the list from its replay log when it says Hello.
        if let Err(e) = link.call_helper(Process::SocketService, request, &[]) {
            debug!(
                "socket service: networks not sent now ({e:?}); they are replayed when it is up"
            );
        }
        self.sent = Some(wanted);
    }
}

/// Serves `TagSocket` on `org.chromium.PatchPanel`.
pub fn tag(
    link: &mut dyn HelperLink,
    action: Action,
    socket: OwnedFd,
) -> Result<Vec<u8>, CallError> {
    if let Action::Tag(tag) = action {
        link.call_helper(
            Process::SocketService,
            Request::TagSocket(tag),
            &[socket.as_fd()],
        )?;
    }
    Ok(TagSocketResponse { success: true }.encode_to_vec())
}
