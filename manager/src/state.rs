//! The manager's view of the guests it serves.
//!
//! In this revision there are no guests yet (they arrive with
//! ConnectNamespace and the VM/ARC lifecycles), so the device list is
//! empty; the type exists so that the D-Bus adaptor answers from state
//! rather than from a constant.

use patchpanel_proto::{GetDevicesResponse, NetworkDevice};

#[derive(Debug, Default)]
pub struct State {
    devices: Vec<NetworkDevice>,
}

impl State {
    pub fn devices(&self) -> GetDevicesResponse {
        GetDevicesResponse {
            devices: self.devices.clone(),
        }
    }
}
