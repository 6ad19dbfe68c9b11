//! The client and gateway node.
//!
//! The core is sans-IO: [`Node`] owns the connections to remote peers (WireGuard over a path found
//! by ICE) and is driven with explicit time. Runtimes feed it datagrams and IP packets and carry
//! out what it asks for.

pub mod candidate;
pub mod cli;
mod connection;
pub mod datagram;
mod error;
mod event;
pub mod ids;
mod node;
pub mod packet;
mod peer_id;
pub mod pool;
pub mod portal;
pub mod runtime;
pub mod tunnel;
pub mod turn;
mod wireguard;

pub use boringtun::x25519::{PublicKey, StaticSecret};
pub use candidate::{CandidateKind, IceCandidate};
pub use connection::{
    Path, HANDSHAKE_DEADLINE, ICE_SETUP_TIMEOUT, IDLE_AFTER, IDLE_STUN_INTERVAL, MIGRATION_GRACE,
    ROLLOVER_DEBOUNCE,
};
pub use error::{Error, Stats};
pub use event::{Event, FailReason};
pub use node::{ConnectionInfo, Credentials, Node, Psk, Role, Transmit, Upsert};
pub use peer_id::PeerId;
pub use wireguard::{ConnIndex, SessionIdx};
