//! The control plane: decides who may reach what and introduces clients to gateways.
//!
//! - [`Portal`] is the sans-IO core: the seed file's clients, gateways, resources, policies and
//!   relays, the connected sessions and the signalling state. It takes text frames and `now`
//!   and gives back frames to send and sockets to close ([`Output`]).
//! - [`server`] runs it on real WebSockets, generic over the listener and the stream so the
//!   simulation can run the same code over simulated TCP.
//! - [`seed`] is the configuration, [`credentials`] the TURN REST relay credentials.
//!
//! The protocol itself (frames, messages) lives in [`node_proto::portal`], shared with the nodes.

#![forbid(unsafe_code)]

pub mod admin;
pub mod credentials;
pub mod directory;
mod portal;
pub mod replica;
pub mod seed;
pub mod server;
pub mod store;
pub mod tls;

pub use portal::{
    ConnId, Identity, Output, Portal, PortalConfig, PortalMetrics, DEFAULT_AUTHORIZATION,
};
pub use seed::{ResourceError, SeedError, SeedFile};
