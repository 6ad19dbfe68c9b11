//! The control plane's protocol: what nodes and the portal say to each other.
//!
//! The portal decides who may reach what and introduces clients to gateways. Nodes talk to it
//! over a WebSocket carrying JSON frames shaped like Phoenix channels (see [`frame`]); the typed
//! messages of each direction live in [`messages`]. The nodes' side of the session (joining,
//! heartbeats, reconnecting) is the core's `PhoenixChannel`.
//!
//! Everything here treats the other side's input as untrusted: a malformed frame is a typed
//! [`ProtocolError`], unknown events and fields are skipped (logged at DEBUG), and one malformed
//! element of a list (a resource, a relay, a candidate) drops only that element.
//!
//! The node's token travels percent-encoded in the WebSocket URL ([`url`]).
//!
//! ICE candidates travel as RFC 8839 strings; [`messages::GatewayCandidates::parse`] and
//! [`messages::ClientCandidates::parse`] turn them into [`crate::IceCandidate`]s.

mod error;
pub mod frame;
mod ip_network;
mod key;
mod lenient;
pub mod messages;
mod types;
pub mod url;

pub use error::{PortalError, ProtocolError};
pub use frame::{Frame, Reply, ReplyStatus};
pub use ip_network::{IpNetwork, IpNetworkError, CLIENT_TUNNEL_IPV4, CLIENT_TUNNEL_IPV6};
pub use key::{KeyError, PresharedKey, PublicKey};
pub use messages::Message;
pub use types::{
    AccessRevoked, Authorization, IceCredentials, Interface, JoinPayload, Relay, RelaysPresence,
    ResourceAddress, ResourceDeleted, ResourceDescription,
};
