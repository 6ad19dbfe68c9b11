//! A TURN relay (RFC 8489 STUN, RFC 8656 TURN over UDP) with TURN REST API credentials.
//!
//! The protocol lives in a sans-IO core, [`Server`]: time, wall-clock time and randomness come in
//! from the caller, datagrams go in through [`Server::handle_input`] and come out through
//! [`Server::poll_transmit`]. With the `runtime` feature (on by default), [`runtime::run`] drives it
//! over any [`net::Network`]; [`net::TokioNetwork`] is the real one.
#![forbid(unsafe_code)]

pub mod allocation;
pub mod attributes;
pub mod auth;
pub mod channel_data;
pub mod config;
pub mod error;
mod message;
pub mod peers;
pub mod server;
pub mod stats;

#[cfg(feature = "runtime")]
pub mod metrics;
#[cfg(feature = "runtime")]
pub mod net;
#[cfg(feature = "runtime")]
pub mod runtime;

pub use allocation::FiveTuple;
pub use config::{Config, ConfigError};
pub use error::RequestError;
pub use message::MalformedError;
pub use peers::{parse_network, DeniedRange, IpNet, IpNetError};
pub use server::{
    AllocationInfo, Event, FreeReason, Server, TimerKind, Transmit, MAX_ALLOCATIONS_PER_USER,
    MAX_PEERS_PER_CREATE_PERMISSION, MAX_PERMISSIONS_PER_ALLOCATION,
};
pub use stats::Stats;
