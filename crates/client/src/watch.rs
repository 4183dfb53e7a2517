//! Signals of `org.chromium.PatchPanel`, decoded: one signal
//! (`NetworkDeviceChanged`, [`DeviceChanges`]) or all of them
//! ([`Signals`], each a [`Signal`]).
//!
//! Only patchpaneld's broadcasts count. Anyone on the bus may send a signal
//! to this connection by unicast, past the match rules, and the local match
//! cannot tell the service's well-known name from a stranger's unique name.
//! So a subscription follows who owns `org.chromium.PatchPanel` (asked once,
//! then the bus's own `NameOwnerChanged`, which only the bus can send) and
//! keeps a signal only when it comes from that unique name and carries no
//! destination.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dbus::channel::{MatchingReceiver, Token};
use dbus::message::{MatchRule, MessageType};
use dbus::Message;
use patchpanel_proto::{names, NeighborReachabilityEventSignal, NetworkDeviceChangedSignal};

use crate::error::{short_type_name, Error};
use crate::Client;

type Queue<T> = Arc<Mutex<VecDeque<Result<T, Error>>>>;

/// The unique name that owns `org.chromium.PatchPanel`, as the bus last said.
type Owner = Arc<Mutex<Option<String>>>;

const BUS_NAME: &str = "org.freedesktop.DBus";
const BUS_PATH: &str = "/org/freedesktop/DBus";
const NAME_OWNER_CHANGED: &str = "NameOwnerChanged";
const NAME_HAS_NO_OWNER: &str = "org.freedesktop.DBus.Error.NameHasNoOwner";

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
    /// The local half of the `NameOwnerChanged` subscription.
    owner_token: Option<Token>,
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
        let add_match_error =
            |err: dbus::Error| Error::from_call("AddMatch", client.timeout(), &err);
        // Every subscription on this connection sees each signal, its own
        // NameOwnerChanged included (not only the first one that matches).
        client.conn.set_signal_match_mode(true);
        let owner: Owner = Arc::default();
        // Owner changes first, then the owner: no change falls in between.
        client
            .conn
            .add_match_no_cb(&owner_rule_text())
            .map_err(add_match_error)?;
        let tracked = Arc::clone(&owner);
        let owner_token = client.conn.start_receive(
            owner_rule(),
            Box::new(move |msg: Message, _| {
                let args = msg.get3::<&str, &str, &str>();
                let args = match args {
                    (Some(name), Some(old), Some(new)) => Some((name, old, new)),
                    _ => None,
                };
                if let Some(new) = owner_change(msg.sender().as_deref(), args) {
                    *lock(&tracked) = new;
                }
                true
            }),
        );
        let mut subscription = Self {
            client,
            queue: Arc::default(),
            token: None,
            owner_token: Some(owner_token),
            broken: false,
        };
        let mut rule = MatchRule::new()
            .with_type(MessageType::Signal)
            .with_interface(names::INTERFACE)
            .with_sender(names::SERVICE)
            .with_path(names::PATH);
        if let Some(member) = member {
            rule = rule.with_member(member);
        }
        let sink = Arc::clone(&subscription.queue);
        let current = Arc::clone(&owner);
        let token = client
            .conn
            .add_match(rule, move |(): (), _, msg: &Message| {
                let trusted = from_the_service(
                    lock(&current).as_deref(),
                    msg.sender().as_deref(),
                    msg.destination().as_deref(),
                );
                if trusted {
                    lock(&sink).push_back(decode(msg));
                }
                true
            })
            .map_err(add_match_error)?;
        subscription.token = Some(token);
        *lock(&owner) = name_owner(client)?;
        Ok(subscription)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The local half of the owner subscription: the bus's own signal (the
/// bus-side rule also filters on the name, which [`MatchRule`] cannot).
fn owner_rule() -> MatchRule<'static> {
    let mut rule = MatchRule::new_signal(BUS_NAME, NAME_OWNER_CHANGED)
        .with_sender(BUS_NAME)
        .with_path(BUS_PATH);
    rule.strict_sender = true;
    rule
}

fn owner_rule_text() -> String {
    format!(
        "type='signal',sender='{BUS_NAME}',path='{BUS_PATH}',interface='{BUS_NAME}',\
         member='{NAME_OWNER_CHANGED}',arg0='{}'",
        names::SERVICE
    )
}

/// Who owns `org.chromium.PatchPanel` now (`None`: nobody, patchpaneld is
/// not running).
fn name_owner(client: &Client) -> Result<Option<String>, Error> {
    let proxy = client.conn.with_proxy(BUS_NAME, BUS_PATH, client.timeout());
    let answer: Result<(String,), dbus::Error> =
        proxy.method_call(BUS_NAME, "GetNameOwner", (names::SERVICE,));
    match answer {
        Ok((owner,)) => Ok(Some(owner)),
        Err(err) if err.name() == Some(NAME_HAS_NO_OWNER) => Ok(None),
        Err(err) => Err(Error::from_call("GetNameOwner", client.timeout(), &err)),
    }
}

/// The new owner of `org.chromium.PatchPanel` (`Some(None)`: none), when a
/// `NameOwnerChanged` with these arguments (name, old, new) is about it
/// and the bus sent it; `None` otherwise.
fn owner_change(sender: Option<&str>, args: Option<(&str, &str, &str)>) -> Option<Option<String>> {
    let (name, _old, new) = args?;
    if sender != Some(BUS_NAME) || name != names::SERVICE {
        return None;
    }
    Some((!new.is_empty()).then(|| new.to_string()))
}

/// Whether a signal that matched the subscription is patchpaneld's: sent by
/// the unique name that owns the service, to everyone (a unicast one is
/// someone talking to this client only).
fn from_the_service(owner: Option<&str>, sender: Option<&str>, destination: Option<&str>) -> bool {
    destination.is_none() && owner.is_some() && sender == owner
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
        lock(&self.queue).pop_front()
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
        // Best effort: the bus drops the matches with the connection anyway.
        if let Some(token) = self.token.take() {
            let _ = self.client.conn.remove_match(token);
        }
        if let Some(token) = self.owner_token.take() {
            self.client.conn.stop_receive(token);
            let _ = self.client.conn.remove_match_no_cb(&owner_rule_text());
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

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = names::SERVICE;

    #[test]
    fn the_owners_broadcast_is_patchpaneld() {
        assert!(from_the_service(Some(":1.5"), Some(":1.5"), None));
    }

    #[test]
    fn a_unicast_signal_is_not_patchpaneld_even_from_the_owner() {
        assert!(!from_the_service(Some(":1.5"), Some(":1.5"), Some(":1.9")));
    }

    #[test]
    fn a_signal_from_anyone_else_is_not_patchpaneld() {
        assert!(!from_the_service(Some(":1.5"), Some(":1.66"), None));
        assert!(!from_the_service(Some(":1.5"), Some(":1.66"), Some(":1.9")));
        assert!(!from_the_service(Some(":1.5"), None, None));
        // The well-known name is never a sender: the bus stamps unique names.
        assert!(!from_the_service(Some(":1.5"), Some(SERVICE), None));
    }

    #[test]
    fn without_an_owner_no_signal_is_patchpaneld() {
        assert!(!from_the_service(None, Some(":1.5"), None));
        assert!(!from_the_service(None, None, None));
    }

    #[test]
    fn the_bus_announces_a_new_owner() {
        assert_eq!(
            owner_change(Some(BUS_NAME), Some((SERVICE, "", ":1.7"))),
            Some(Some(":1.7".to_string()))
        );
    }

    #[test]
    fn the_bus_announces_that_the_owner_left() {
        assert_eq!(
            owner_change(Some(BUS_NAME), Some((SERVICE, ":1.7", ""))),
            Some(None)
        );
    }

    #[test]
    fn an_owner_change_not_sent_by_the_bus_changes_nothing() {
        assert_eq!(
            owner_change(Some(":1.66"), Some((SERVICE, ":1.7", ":1.66"))),
            None
        );
        assert_eq!(owner_change(None, Some((SERVICE, ":1.7", ":1.66"))), None);
    }

    #[test]
    fn an_owner_change_of_another_name_or_malformed_changes_nothing() {
        assert_eq!(
            owner_change(Some(BUS_NAME), Some((":1.66", "", ":1.66"))),
            None
        );
        assert_eq!(owner_change(Some(BUS_NAME), None), None);
    }
}
