//! Wire types of the `org.chromium.PatchPanel` D-Bus interface.
//!
//! Every method of the interface takes one serialized protobuf request (`ay`,
//! sometimes with a file descriptor `h`) and answers one serialized protobuf
//! response (`ay`). Existing ChromeOS clients (shill, Chrome, concierge, the
//! ARC and VM launchers) already speak that format, so this crate pins the
//! exact message layouts, field numbers and enum values of the original
//! `patchpanel` protobuf package (proto3).
//!
//! The structs are written by hand with `prost` derives rather than generated
//! by `prost-build`: the schema is small and frozen by compatibility, and
//! hand-written code keeps the build free of `protoc` and of a `build.rs`.
//! The file `proto/patchpanel_service.proto` documents the same schema in
//! `.proto` syntax; a unit test parses it and checks that every field number
//! and enum value there matches the Rust code, so the two cannot drift.
//!
//! What lives here:
//! - the messages, re-exported at the crate root (shared types such as
//!   [`NetworkDevice`], one request/response pair per method, and the
//!   signals);
//! - [`names`]: bus name, object path, interface, method, signal and error
//!   names;
//! - the `u32 net-order` and `addr4` address conventions
//!   ([`ipv4_to_net_u32`], [`ipv4_from_net_u32`], [`ipv4_to_addr4`],
//!   [`ipv4_from_addr4`]);
//! - [`decode_request`], which turns bytes from a caller into a message or a
//!   [`ProtoError`] that names the message type.
//!
//! Enum fields are stored as `i32`, as prost does for proto3 open enums: a
//! peer may send a number this code does not know, and decoding must not
//! fail because of it. Use the generated getters (e.g.
//! [`ModifyPortRuleRequest::op`]) or `TryFrom<i32>` to get the Rust enum, and
//! reject unknown values when validating a request.

/// Declares a protobuf enum: the Rust enum with the derives prost expects,
/// plus `as_str_name`/`from_str_name` that map to the names used in the
/// `.proto` file (the same helpers `prost-build` would generate).
macro_rules! proto_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $proto_name:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
        #[repr(i32)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// The value's name as written in the `.proto` file.
            pub fn as_str_name(&self) -> &'static str {
                match self {
                    $( Self::$variant => $proto_name, )+
                }
            }

            /// The value whose `.proto` name is `name`, if any.
            pub fn from_str_name(name: &str) -> ::core::option::Option<Self> {
                match name {
                    $( $proto_name => ::core::option::Option::Some(Self::$variant), )+
                    _ => ::core::option::Option::None,
                }
            }
        }
    };
}

mod decode;
mod methods;
pub mod names;
mod net_order;
mod shared;
mod signals;

pub use decode::{decode_request, ProtoError};
pub use methods::*;
pub use net_order::{ipv4_from_addr4, ipv4_from_net_u32, ipv4_to_addr4, ipv4_to_net_u32};
pub use shared::*;
pub use signals::*;

#[cfg(test)]
mod schema_tests;
#[cfg(test)]
mod wire_tests;
