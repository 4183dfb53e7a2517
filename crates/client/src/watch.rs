//! Signals of `org.chromium.PatchPanel`, decoded: one signal
//! (`NetworkDeviceChanged`, [`DeviceChanges`]) or all of them
//! ([`Signals`], each a [`Signal`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dbus::channel::Token;
use dbus::message::MatchRule;
use dbus::Message;
use patchpanel_proto::{names, NeighborReachabilityEventSignal, NetworkDeviceChangedSignal};

use crate::error::{short_type_name, Error};
use crate::Client;

type Queue<T> = Arc<Mutex<VecDeque<Result<T, Error>>>>;

/// How long one blocking [`Iterator::next`] waits on the bus before looking
/// again; the iterator itself waits forever.
const ITERATOR_SLICE: Duration = Duration::from_secs(60);

/// One signal from patchpaneld.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// `NetworkDeviceChanged`.
    NetworkDeviceChanged(NetworkDeviceChangedSignal),
    /// `NeighborReachabilityEvent`.
    NeighborReachabilityEvent(NeighborReachabilityEventSignal),
    /// A signal this build does not know, with its first argument's bytes
    /// when it is an `ay` (empty otherwise).
    Other {
        /// The signal's member name.
        member: String,
        /// The payload.
        payload: Vec<u8>,
    },
}

impl Signal {
    /// The signal's D-Bus member name.
    pub fn member(&self) -> &str {
        match self {
            Signal::NetworkDeviceChanged(_) => names::NETWORK_DEVICE_CHANGED,
            Signal::NeighborReachabilityEvent(_) => names::NEIGHBOR_REACHABILITY_EVENT,
            Signal::Other { member, .. } => member,
        }
    }
}

/// A subscription to signals of patchpaneld, each decoded as a `T`.
///
/// Signals are read while [`Subscription::next_timeout`] or
/// [`Iterator::next`] runs; those that arrive during other calls on the same
/// client are kept and returned later. A signal whose payload does not decode
/// comes out as an `Err` item; the subscription goes on.
pub struct Subscription<'a, T> {
    client: &'a Client,
    queue: Queue<T>,
    token: Option<Token>,
    /// Set when the connection failed: the iterator then ends.
    broken: bool,
}

/// A subscription to `NetworkDeviceChanged`.
pub type DeviceChanges<'a> = Subscription<'a, NetworkDeviceChangedSignal>;

/// A subscription to every signal of the interface.
pub type Signals<'a> = Subscription<'a, Signal>;

impl<T> std::fmt::Debug for Subscription<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("client", &self.client)
            .field("subscribed", &self.token.is_some())
            .field("broken", &self.broken)
            .finish()
    }
}

impl<'a> DeviceChanges<'a> {
    pub(crate) fn subscribe_device_changes(client: &'a Client) -> Result<Self, Error> {
        Subscription::subscribe(client, Some(names::NETWORK_DEVICE_CHANGED), |msg| {
            decode_payload(msg, names::NETWORK_DEVICE_CHANGED)
        })
    }
}

impl<'a> Signals<'a> {
    pub(crate) fn subscribe_all(client: &'a Client) -> Result<Self, Error> {
        Subscription::subscribe(client, None, decode_any)
    }
}

impl<'a, T: Send + 'static> Subscription<'a, T> {
    /// Subscribes to `member` (every member when `None`) of patchpaneld's
    /// interface and object, decoding each with `decode`.
    fn subscribe(
        client: &'a Client,
        member: Option<&'static str>,
        decode: fn(&Message) -> Result<T, Error>,
    ) -> Result<Self, Error> {
        let mut rule = MatchRule::new()
            .with_type(dbus::message::MessageType::Signal)
            .with_interface(names::INTERFACE)
            .with_sender(names::SERVICE)
            .with_path(names::PATH);
        if let Some(member) = member {
            rule = rule.with_member(member);
        }
        let queue: Queue<T> = Arc::default();
        let sink = Arc::clone(&queue);
        let token = client
            .conn
            .add_match(rule, move |(): (), _, msg: &Message| {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_back(decode(msg));
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
}

impl<T> Subscription<'_, T> {
    /// The next signal, waiting at most `timeout`; `Ok(None)` if none came.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<T>, Error> {
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
                Error::from_call("signal", left, &err)
            })?;
        }
    }

    fn pop(&self) -> Option<Result<T, Error>> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }
}

/// Blocks until the next signal; ends only when the bus connection fails
/// (after yielding that error).
impl<T> Iterator for Subscription<'_, T> {
    type Item = Result<T, Error>;

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

impl<T> Drop for Subscription<'_, T> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            // Best effort: the bus drops the match with the connection anyway.
            let _ = self.client.conn.remove_match(token);
        }
    }
}

fn decode_payload<M: prost::Message + Default>(msg: &Message, member: &str) -> Result<M, Error> {
    let bytes: Vec<u8> = msg.read1().map_err(|err| Error::UnexpectedArguments {
        what: format!("{member} signal"),
        reason: err.to_string(),
    })?;
    M::decode(bytes.as_slice()).map_err(|source| Error::Decode {
        message: short_type_name::<M>(),
        source,
    })
}

fn decode_any(msg: &Message) -> Result<Signal, Error> {
    let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
    match member.as_str() {
        names::NETWORK_DEVICE_CHANGED => {
            decode_payload(msg, &member).map(Signal::NetworkDeviceChanged)
        }
        names::NEIGHBOR_REACHABILITY_EVENT => {
            decode_payload(msg, &member).map(Signal::NeighborReachabilityEvent)
        }
        _ => Ok(Signal::Other {
            payload: msg.read1::<Vec<u8>>().unwrap_or_default(),
            member,
        }),
    }
}
