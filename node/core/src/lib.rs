//! The sans-IO core of the client and the gateway.
//!
//! [`Node`] owns the connections to remote peers (WireGuard over a path found by ICE) and is
//! driven with explicit time; [`state`] holds what a client and a gateway know on top of it
//! (resources, routes, authorizations); [`portal`] is the node's side of the control-plane
//! session; [`engine`] joins a tunnel state and its portal session into the one [`engine::Engine`]
//! a runtime drives. Nothing here owns a socket, reads a clock or spawns a task: runtimes feed it
//! datagrams, IP packets and `now`, and carry out what it asks for.

pub mod crypto;
pub mod datagram;
pub mod engine;
pub mod packet;
pub mod pool;
pub mod portal;
pub mod state;
pub mod turn;

mod connection;
mod error;
mod event;
mod handshake_guard;
mod ice;
mod node;
mod peer_id;
mod types;
mod wireguard;

pub use boringtun::x25519::{PublicKey, StaticSecret};
pub use connection::{
    ConnectionConfig, Path, BETTER_PATH_RETRY, CONTROLLED_MIGRATION_GRACE, HANDSHAKE_DEADLINE,
    ICE_SETUP_TIMEOUT, IDLE_AFTER, IDLE_STUN_INTERVAL, MAX_REMOTE_CANDIDATES, MAX_WAKE_HELD,
    MIGRATION_GRACE, ROLLOVER_DEBOUNCE, WAKE_HOLD,
};
pub use error::{Error, Stats};
pub use event::{Event, FailReason};
#[cfg(any(test, feature = "testing"))]
pub use handshake_guard::sign_mac1;
pub use handshake_guard::{
    HANDSHAKES_PER_SOURCE, HANDSHAKE_LOAD, HANDSHAKE_SOURCE_BURST, MAX_HANDSHAKE_SOURCES,
};
pub use node::{
    ConnectionInfo, Node, Upsert, FORMER_RELAYS_KEPT, MAX_PENDING_DECRYPTIONS, MAX_STUN_REQUESTS,
    RELAY_RETRY_INITIAL, RELAY_RETRY_MAX, RETIRED_GRACE, STUN_ANSWER_WINDOW,
};
pub use node_proto::{candidate, ids};
pub use node_proto::{CandidateKind, IceCandidate};
pub use peer_id::PeerId;
pub use types::{Credentials, Psk, Role, Transmit};
pub use wireguard::{ConnIndex, SessionIdx};
