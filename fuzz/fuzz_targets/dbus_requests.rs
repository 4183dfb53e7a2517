//! Every D-Bus request body the manager accepts, through the decoder and
//! the validation the daemon runs on it (manager/src: `decode_request`,
//! `namespaces::parse_request`, `port_rules::parse`,
//! `counters::parse_request`, `guests::check_id`/`parallels_index`,
//! `patchpanel_socket_service::parse`, `network_config::parse`,
//! `dns_service::parse`, `chrome_service::parse_socket_event`).
//!
//! The first byte picks the method, the rest is the protobuf. Beyond
//! "never panics": whatever validates must re-encode and validate again to
//! the same result (the state file and the replay keep validated values).
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchpanel_proto as proto;
use patchpanel_proto::decode_request;
use patchpaneld::{
    chrome_service, counters, dns_service, guests, namespaces, network_config, port_rules,
};
use prost::Message;

fn policy() -> port_rules::PortPolicy {
    port_rules::PortPolicy::with_defaults(0)
}

fuzz_target!(|data: &[u8]| {
    let Some((&method, body)) = data.split_first() else {
        return;
    };
    match method % 23 {
        0 => {
            let _ = decode_request::<proto::GetDevicesRequest>(body);
        }
        1 => {
            if let Ok(req) = decode_request::<proto::ConnectNamespaceRequest>(body) {
                if let Ok(parsed) = namespaces::parse_request(&req) {
                    let again = decode_request::<proto::ConnectNamespaceRequest>(
                        &req.encode_to_vec(),
                    )
                    .expect("re-encoded request decodes");
                    assert_eq!(
                        namespaces::parse_request(&again).ok(),
                        Some(parsed),
                        "validation is not stable"
                    );
                }
            }
        }
        2 => {
            if let Ok(req) = decode_request::<proto::ModifyPortRuleRequest>(body) {
                if let Ok(op) = port_rules::parse(&req, &policy()) {
                    let again =
                        decode_request::<proto::ModifyPortRuleRequest>(&req.encode_to_vec())
                            .expect("re-encoded request decodes");
                    assert_eq!(
                        port_rules::parse(&again, &policy()).ok(),
                        Some(op),
                        "validation is not stable"
                    );
                }
            }
        }
        3 => {
            if let Ok(req) = decode_request::<proto::TrafficCountersRequest>(body) {
                if let Ok(names) = counters::parse_request(&req) {
                    assert!(names.len() <= counters::MAX_DEVICES);
                }
            }
        }
        4 => {
            let _ = decode_request::<proto::ArcStartupRequest>(body);
        }
        5 => {
            let _ = decode_request::<proto::ArcShutdownRequest>(body);
        }
        6 => {
            if let Ok(req) = decode_request::<proto::ArcVmStartupRequest>(body) {
                let _ = guests::check_id("cid", u64::from(req.cid));
            }
        }
        7 => {
            let _ = decode_request::<proto::ArcVmShutdownRequest>(body);
        }
        8 => {
            if let Ok(req) = decode_request::<proto::TerminaVmStartupRequest>(body) {
                let _ = guests::check_id("cid", u64::from(req.cid));
            }
        }
        9 => {
            let _ = decode_request::<proto::TerminaVmShutdownRequest>(body);
        }
        10 => {
            if let Ok(req) = decode_request::<proto::PluginVmStartupRequest>(body) {
                let _ = guests::check_id("id", req.id);
                let addrs = patchpanel_addr::AddressManager::new();
                let _ = guests::parallels_index(&addrs, req.subnet_index);
            }
        }
        11 => {
            let _ = decode_request::<proto::PluginVmShutdownRequest>(body);
        }
        12 => {
            let _ = decode_request::<proto::SetVpnIntentRequest>(body);
        }
        13 => {
            let _ = decode_request::<proto::SetVpnLockdownRequest>(body);
        }
        14 => {
            if let Ok(req) = decode_request::<proto::SetDnsRedirectionRuleRequest>(body) {
                if let Ok(parsed) = dns_service::parse(&req) {
                    let again = decode_request::<proto::SetDnsRedirectionRuleRequest>(
                        &req.encode_to_vec(),
                    )
                    .expect("re-encoded request decodes");
                    assert_eq!(
                        dns_service::parse(&again).ok(),
                        Some(parsed.clone()),
                        "validation is not stable"
                    );
                    // What validates makes valid firewall changes.
                    let batch = patchpanel_firewall::dns::redirection(&parsed.rule);
                    batch.validate().expect("a valid rule makes a valid batch");
                    batch.inverse().expect("and an invertible one");
                }
            }
        }
        15 => {
            // TagSocket: one parser for org.chromium.PatchPanel (manager)
            // and org.chromium.SocketService (its helper).
            if let Ok(action) = patchpanel_socket_service::parse(body) {
                let req = decode_request::<proto::TagSocketRequest>(body)
                    .expect("what parses decodes");
                assert_eq!(
                    patchpanel_socket_service::parse(&req.encode_to_vec()).ok(),
                    Some(action),
                    "validation is not stable"
                );
            }
        }
        16 => {
            if let Ok(req) = decode_request::<proto::ConfigureNetworkRequest>(body) {
                if let Ok(spec) = network_config::parse(&req) {
                    let again =
                        decode_request::<proto::ConfigureNetworkRequest>(&req.encode_to_vec())
                            .expect("re-encoded request decodes");
                    assert_eq!(
                        network_config::parse(&again).ok(),
                        Some(spec.clone()),
                        "validation is not stable"
                    );
                    // Whatever validates makes plans that fit one message.
                    let (plans, _) =
                        network_config::plans(&spec, &network_config::Networks::default(), "fuzz");
                    for plan in plans {
                        let bytes = patchpanel_ipc::encode(&patchpanel_ipc::Request::Apply(plan))
                            .expect("a plan encodes");
                        assert!(bytes.len() <= patchpanel_ipc::MAX_MESSAGE_SIZE);
                    }
                }
            }
        }
        17 => {
            if let Ok(req) = decode_request::<proto::BruschettaVmStartupRequest>(body) {
                let _ = guests::check_id("id", req.id);
            }
        }
        18 => {
            if let Ok(req) = decode_request::<proto::BorealisVmStartupRequest>(body) {
                let _ = guests::check_id("id", u64::from(req.id));
            }
        }
        19 => {
            let _ = decode_request::<proto::BruschettaVmShutdownRequest>(body);
            let _ = decode_request::<proto::BorealisVmShutdownRequest>(body);
        }
        20 => {
            // Both socket event methods carry the same message at field 1.
            if let Ok(req) = decode_request::<proto::NotifySocketConnectionEventRequest>(body) {
                let parsed = chrome_service::parse_socket_event(req.msg.as_ref());
                let vpn = decode_request::<proto::NotifyARCVPNSocketConnectionEventRequest>(body)
                    .expect("the same bytes decode as the ARC VPN request");
                assert_eq!(
                    chrome_service::parse_socket_event(vpn.msg.as_ref()),
                    parsed,
                    "the two requests check alike"
                );
            }
        }
        21 => {
            if let Ok(req) = decode_request::<proto::SetFeatureFlagRequest>(body) {
                let _ = proto::set_feature_flag_request::FeatureFlag::try_from(req.flag);
            }
        }
        22 => {
            let _ = decode_request::<proto::NotifyAndroidWifiMulticastLockChangeRequest>(body);
            let _ = decode_request::<proto::NotifyAndroidInteractiveStateRequest>(body);
        }
        _ => {}
    }
});
