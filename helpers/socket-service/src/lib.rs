//! `TagSocket`: what a request asks for, and marking the socket.
//!
//! One code path for both places the call arrives: the socket service's
//! own name (`org.chromium.SocketService`, served by the
//! `patchpanel-socket-service` helper) and `org.chromium.PatchPanel`
//! (decoded by the manager, which has no capability and hands the socket
//! to the helper over IPC). The manager uses [`parse`]; the helper uses
//! [`parse`] and [`apply`].

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use patchpanel_firewall::fwmark::{SocketTag, VpnPolicy};
use patchpanel_proto::{tag_socket_request::VpnRoutingPolicy, TagSocketRequest};

/// What a valid request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Set the tag's bits in the socket's mark.
    Tag(SocketTag),
    /// A request with a traffic annotation: answered with success and the
    /// socket left alone, as the original does (it will mark audited
    /// sockets one day; shill's portal detector sends only this kind).
    LeaveAlone,
}

/// Decodes and checks a `TagSocketRequest`. The error says what is wrong,
/// for an `InvalidArgument` answer.
pub fn parse(bytes: &[u8]) -> Result<Action, String> {
    let request: TagSocketRequest = patchpanel_proto::decode_request(bytes)
        .map_err(|e| format!("the request does not decode: {e}"))?;
    let vpn = match VpnRoutingPolicy::try_from(request.vpn_policy) {
        Ok(VpnRoutingPolicy::DefaultRouting) => VpnPolicy::Default,
        Ok(VpnRoutingPolicy::RouteOnVpn) => VpnPolicy::RouteOnVpn,
        Ok(VpnRoutingPolicy::BypassVpn) => VpnPolicy::BypassVpn,
        Err(_) => return Err(format!("unknown vpn_policy {}", request.vpn_policy)),
    };
    let network = match request.network_id {
        None => None,
        Some(id) => Some(
            u32::try_from(id)
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| format!("network_id {id} is not a network"))?,
        ),
    };
    let tag = SocketTag::new(network, vpn).map_err(str::to_string)?;
    if request.traffic_annotation.is_some() {
        return Ok(Action::LeaveAlone);
    }
    Ok(Action::Tag(tag))
}

/// Why a socket was not marked.
#[derive(Debug)]
pub enum ApplyError {
    /// The caller's fault: not a socket, or a network nobody configured.
    Invalid(String),
    /// The kernel refused.
    Os(&'static str, io::Error),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Invalid(why) => f.write_str(why),
            ApplyError::Os(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

/// Sets `tag`'s bits in the mark of `socket`, leaving its other bits.
/// `networks` are the interface indexes a tag may name. Returns the mark
/// before and after.
pub fn apply(
    socket: BorrowedFd<'_>,
    tag: SocketTag,
    networks: &BTreeSet<u32>,
) -> Result<(u32, u32), ApplyError> {
    if let Some(network) = tag.network() {
        if !networks.contains(&network) {
            return Err(ApplyError::Invalid(format!(
                "network_id {network} is not a network patchpanel knows"
            )));
        }
    }
    // SO_TYPE answers ENOTSOCK for anything but a socket: checked before the
    // mark is read, so the error names the caller's mistake.
    if let Err(e) = get_int(socket, libc::SO_TYPE) {
        return Err(if e.raw_os_error() == Some(libc::ENOTSOCK) {
            ApplyError::Invalid("the descriptor is not a socket".into())
        } else {
            ApplyError::Os("getsockopt(SO_TYPE)", e)
        });
    }
    let old =
        get_int(socket, libc::SO_MARK).map_err(|e| ApplyError::Os("getsockopt(SO_MARK)", e))?;
    let new = tag.retag(old);
    if new != old {
        set_int(socket, libc::SO_MARK, new)
            .map_err(|e| ApplyError::Os("setsockopt(SO_MARK)", e))?;
    }
    Ok((old, new))
}

fn get_int(socket: BorrowedFd<'_>, option: libc::c_int) -> io::Result<u32> {
    let mut value: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut u32).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

fn set_int(socket: BorrowedFd<'_>, option: libc::c_int, value: u32) -> io::Result<()> {
    // SAFETY: the kernel reads `size_of::<u32>()` bytes from `value`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchpanel_proto::{traffic_annotation, TrafficAnnotation};
    use prost::Message;
    use std::os::fd::AsFd;

    fn request(network_id: Option<i32>, vpn_policy: i32, annotated: bool) -> Vec<u8> {
        (TagSocketRequest {
            network_id,
            vpn_policy,
            traffic_annotation: annotated.then_some(TrafficAnnotation {
                host_id: traffic_annotation::Id::ShillPortalDetector as i32,
            }),
        })
        .encode_to_vec()
    }

    #[test]
    fn each_policy_parses_to_its_tag() {
        for (policy, vpn) in [
            (0, VpnPolicy::Default),
            (1, VpnPolicy::RouteOnVpn),
            (2, VpnPolicy::BypassVpn),
        ] {
            assert_eq!(
                parse(&request(None, policy, false)),
                Ok(Action::Tag(SocketTag::new(None, vpn).unwrap()))
            );
        }
        assert_eq!(
            parse(&request(Some(7), 2, false)),
            Ok(Action::Tag(
                SocketTag::new(Some(7), VpnPolicy::BypassVpn).unwrap()
            ))
        );
        assert_eq!(
            parse(&[]),
            Ok(Action::Tag(
                SocketTag::new(None, VpnPolicy::Default).unwrap()
            ))
        );
    }

    #[test]
    fn bad_requests_say_why() {
        let err = |bytes: &[u8]| parse(bytes).unwrap_err();
        assert!(err(&request(Some(2), 1, false)).contains("ROUTE_ON_VPN"));
        assert!(err(&request(Some(2), 1, true)).contains("ROUTE_ON_VPN"));
        assert!(err(&request(None, 3, false)).contains("vpn_policy 3"));
        assert!(err(&request(Some(0), 0, false)).contains("network_id 0"));
        assert!(err(&request(Some(-5), 0, false)).contains("network_id -5"));
        assert!(err(&[0x08]).contains("does not decode"));
    }

    #[test]
    fn an_annotated_request_leaves_the_socket_alone() {
        assert_eq!(parse(&request(None, 2, true)), Ok(Action::LeaveAlone));
        assert_eq!(parse(&request(Some(3), 0, true)), Ok(Action::LeaveAlone));
    }

    #[test]
    fn apply_refuses_unknown_networks_and_non_sockets_before_touching_anything() {
        let networks = BTreeSet::from([2]);
        let file = std::fs::File::open("/dev/null").unwrap();
        let tag = SocketTag::new(None, VpnPolicy::BypassVpn).unwrap();
        match apply(file.as_fd(), tag, &networks) {
            Err(ApplyError::Invalid(why)) => assert!(why.contains("not a socket"), "{why}"),
            other => panic!("{other:?}"),
        }
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tag = SocketTag::new(Some(3), VpnPolicy::Default).unwrap();
        match apply(socket.as_fd(), tag, &networks) {
            Err(ApplyError::Invalid(why)) => assert!(why.contains("network_id 3"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A tag that changes nothing needs no privilege.
        let tag = SocketTag::new(None, VpnPolicy::Default).unwrap();
        assert_eq!(apply(socket.as_fd(), tag, &networks).unwrap(), (0, 0));
    }
}
