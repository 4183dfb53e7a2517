//! `NetworkDeviceChanged` signals, decoded.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dbus::channel::Token;
use dbus::message::MatchRule;
use dbus::Message;
use patchpanel_proto::{names, NetworkDeviceChangedSignal};
use prost::Message as _;

use crate::error::{short_type_name, Error};
use crate::Client;

type Queue = Arc<Mutex<VecDeque<Result<NetworkDeviceChangedSignal, Error>>>>;

/// How long one blocking [`Iterator::next`] waits on the bus before looking
/// again; the iterator itself waits forever.
const ITERATOR_SLICE: Duration = Duration::from_secs(60);

/// A subscription to `NetworkDeviceChanged` from patchpaneld.
///
/// Signals are read while [`DeviceChanges::next_timeout`] or
/// [`Iterator::next`] runs; those that arrive during other calls on the same
/// client are kept and returned later. A signal whose payload does not decode
/// comes out as an `Err` item; the subscription goes on.
pub struct DeviceChanges<'a> {
    client: &'a Client,
    queue: Queue,
    token: Option<Token>,
    /// Set when the connection failed: the iterator then ends.
    broken: bool,
}

impl std::fmt::Debug for DeviceChanges<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceChanges")
            .field("client", &self.client)
            .field("subscribed", &self.token.is_some())
            .field("broken", &self.broken)
            .finish()
    }
}

impl<'a> DeviceChanges<'a> {
    pub(crate) fn subscribe(client: &'a Client) -> Result<Self, Error> {
        let rule = MatchRule::new_signal(names::INTERFACE, names::NETWORK_DEVICE_CHANGED)
            .with_sender(names::SERVICE)
            .with_path(names::PATH);
        let queue = Queue::default();
        let sink = Arc::clone(&queue);
        let token = client
            .conn
            .add_match(rule, move |(): (), _, msg: &Message| {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_back(decode_signal(msg));
                true
            })
            .map_err(|err| Error::from_call("AddMatch", client.timeout(), &err))?;
        Ok(Self {
            client,
            queue,
            token: Some(token),
            broken: false,
        })
    }

    /// The next signal, waiting at most `timeout`; `Ok(None)` if none came.
    pub fn next_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<NetworkDeviceChangedSignal>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(item) = self.pop() {
                return item.map(Some);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.client.conn.process(left).map_err(|err| {
                self.broken = true;
                Error::from_call(names::NETWORK_DEVICE_CHANGED, left, &err)
            })?;
        }
    }

    fn pop(&self) -> Option<Result<NetworkDeviceChangedSignal, Error>> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }
}

/// Blocks until the next signal; ends only when the bus connection fails
/// (after yielding that error).
impl Iterator for DeviceChanges<'_> {
    type Item = Result<NetworkDeviceChangedSignal, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.broken {
                return self.pop();
            }
            match self.next_timeout(ITERATOR_SLICE) {
                Ok(Some(signal)) => return Some(Ok(signal)),
                Ok(None) => continue,
                Err(err) => return Some(Err(err)),
            }
        }
    }
}

impl Drop for DeviceChanges<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            // Best effort: the bus drops the match with the connection anyway.
            let _ = self.client.conn.remove_match(token);
        }
    }
}

fn decode_signal(msg: &Message) -> Result<NetworkDeviceChangedSignal, Error> {
    let bytes: Vec<u8> = msg.read1().map_err(|err| Error::UnexpectedArguments {
        what: format!("{} signal", names::NETWORK_DEVICE_CHANGED),
        reason: err.to_string(),
    })?;
    NetworkDeviceChangedSignal::decode(bytes.as_slice()).map_err(|source| Error::Decode {
        message: short_type_name::<NetworkDeviceChangedSignal>(),
        source,
    })
}
