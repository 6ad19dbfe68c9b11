//! The typed messages of each direction.
//!
//! Every message is an event name plus a payload struct. Decoding is tolerant in the ways the
//! module docs of [`crate::portal`] describe: an unknown event decodes to `None`, unknown fields
//! are ignored, malformed list elements are dropped.
//!
//! | direction | type |
//! |---|---|
//! | portal → client | [`ClientIngress`] |
//! | client → portal | [`ClientEgress`] |
//! | portal → gateway | [`GatewayIngress`] |
//! | gateway → portal | [`GatewayEgress`] |

mod client;
mod gateway;

pub use client::{
    ClientEgress, ClientIngress, ClientInit, ConnectionDetails, GatewayCandidates, GatewayInstance,
    GatewayRestarted, RequestConnection,
};
pub use gateway::{
    AuthorizeFlow, ClientCandidates, FlowAccepted, FlowClient, GatewayEgress, GatewayIngress,
    GatewayInit,
};

use crate::portal::ProtocolError;

/// A set of messages that travel under event names.
pub trait Message: Sized {
    /// Every event name of this set.
    const EVENTS: &'static [&'static str];

    /// The event name of this message.
    fn event(&self) -> &'static str;

    /// The payload as JSON.
    fn to_payload(&self) -> Result<serde_json::Value, serde_json::Error>;

    /// Decodes the message a frame carries; `Ok(None)` if this set has no such event.
    fn from_frame(frame: &crate::portal::Frame) -> Result<Option<Self>, ProtocolError> {
        Self::from_event(&frame.event, frame.payload.clone())
    }

    /// Decodes an untrusted payload; `Ok(None)` if this set has no such event.
    fn from_event(event: &str, payload: serde_json::Value) -> Result<Option<Self>, ProtocolError>;
}

/// Declares a message enum whose variants each wrap one payload type, and implements
/// [`Message`] for it.
macro_rules! messages {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $event:literal => $variant:ident($payload:ty), )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name {
            $( $(#[$vmeta])* $variant($payload), )*
        }

        impl $crate::portal::messages::Message for $name {
            const EVENTS: &'static [&'static str] = &[$($event),*];

            fn event(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => $event, )*
                }
            }

            fn to_payload(&self) -> Result<serde_json::Value, serde_json::Error> {
                match self {
                    $( Self::$variant(payload) => serde_json::to_value(payload), )*
                }
            }

            fn from_event(
                event: &str,
                payload: serde_json::Value,
            ) -> Result<Option<Self>, $crate::portal::ProtocolError> {
                match event {
                    $(
                        $event => $crate::portal::lenient::decode(payload, $event)
                            .map(|p| Some(Self::$variant(p)))
                            .map_err(|source| $crate::portal::ProtocolError::InvalidPayload {
                                event: $event.to_owned(),
                                source,
                            }),
                    )*
                    _ => Ok(None),
                }
            }
        }
    };
}
pub(crate) use messages;

#[cfg(test)]
mod tests;
