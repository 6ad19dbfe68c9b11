//! The control plane: the protocol spoken with the portal and a sans-IO client for it.
//!
//! The portal decides who may reach what and introduces clients to gateways. Nodes talk to it
//! over a WebSocket carrying JSON frames shaped like Phoenix channels (see [`frame`]); the typed
//! messages of each direction live in [`messages`]. [`PhoenixChannel`] is the connection state
//! machine a runtime drives: it joins the node's room, heartbeats, holds messages back until the
//! join is confirmed and reconnects with a seeded, capped exponential backoff.
//!
//! Everything here treats the other side's input as untrusted: a malformed frame is a typed
//! [`ProtocolError`], unknown events and fields are skipped (logged at DEBUG), and one malformed
//! element of a list (a resource, a relay, a candidate) drops only that element.
//!
//! ICE candidates travel as RFC 8839 strings; [`messages::GatewayCandidates::parse`] and
//! [`messages::ClientCandidates::parse`] turn them into [`crate::IceCandidate`]s.

mod backoff;
mod channel;
mod error;
pub mod frame;
mod ip_network;
mod key;
mod lenient;
pub mod messages;
mod types;

pub use backoff::{Backoff, BackoffConfig};
pub use channel::{
    ChannelConfig, ConnectionError, DisconnectReason, Event, Input, PhoenixChannel, ReplyError,
    RequestId, Timer, HEARTBEAT_INTERVAL,
};
pub use error::{PortalError, ProtocolError};
pub use frame::{Frame, Reply, ReplyStatus};
pub use ip_network::{IpNetwork, IpNetworkError};
pub use key::{KeyError, PresharedKey, PublicKey};
pub use messages::Message;
pub use types::{
    AccessRevoked, Authorization, IceCredentials, Interface, JoinPayload, Relay, RelaysPresence,
    ResourceAddress, ResourceDeleted, ResourceDescription,
};
