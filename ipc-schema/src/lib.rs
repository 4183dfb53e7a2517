//! The manager <-> helper protocol.
//!
//! Every helper process talks to the manager over one `AF_UNIX`/`SOCK_SEQPACKET`
//! socket pair. One packet carries exactly one bincode-2 encoded message
//! ([`codec`]) and, beside it, up to [`MAX_FDS`] file descriptors as
//! `SCM_RIGHTS` ([`channel`]). The first message in each direction is a
//! [`Hello`]; requests carry an id that the answer repeats; helpers may send
//! [`Event`]s at any time.
//!
//! The types here are deliberately plain: no `untagged`, `flatten` or `skip`
//! serde attributes, which bincode cannot decode.

pub mod channel;
pub mod codec;
pub mod datapath;
mod messages;
pub use patchpanel_names as names;

pub use channel::{Channel, ChannelError, Received};
pub use codec::{decode, encode, CodecError};
pub use messages::*;
pub use names::{IfName, NameError, NetnsName};

/// Largest encoded message, in bytes. Larger results are paged by the sender.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// Counter samples per `Reply::Counters` page: a full page of the longest
/// samples fits one message (tested).
pub const COUNTERS_PER_PAGE: usize = 1000;

/// Most file descriptors passed beside one message.
pub const MAX_FDS: usize = 8;

/// Bumped whenever a message changes shape. Both ends refuse a peer whose
/// `Hello` carries another version.
pub const PROTOCOL_VERSION: u32 = 11;
