//! A client with valid credentials that misbehaves: what it sends, and how it gets it out of
//! its host. The honest code paths stay as they are; the hostile client runs the production
//! engine, its portal link wrapped in [`HostileLink`], which sends frames of the driver's making
//! besides the engine's own, and its host sends raw datagrams from the node's socket.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use boringtun::noise::{Tunn, TunnResult};
use node::runtime::ControlLink;
use node_core::engine::{ControlCommand, ControlInput};
use node_core::ids::{ClientId, GatewayId};
use node_core::portal::messages::{ClientEgress, GatewayCandidates};
use node_core::portal::{Frame, PublicKey as Key};
use node_core::{PublicKey, StaticSecret, Stats};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;

/// How many bogus candidates a [`Attack::Frame`] of a candidate flood carries.
pub const FLOOD_CANDIDATES: usize = 4096;
/// How many handshake initiations a handshake flood sends, within [`super::model::FLOOD`].
pub const FLOOD_HANDSHAKES: usize = 3000;

/// What the driver tells the hostile client's host to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attack {
    /// Send this text frame on the portal session, besides the engine's own frames.
    Frame(String),
    /// Send these datagrams to `dst` from the node's socket, spread over [`super::model::FLOOD`].
    Datagrams {
        /// Where to.
        dst: SocketAddr,
        /// What.
        datagrams: Vec<Vec<u8>>,
    },
}

/// The link to the portal, with frames of the driver's making sent on it besides the engine's
/// own: the hostility is on the wire, the engine is the production one, untouched.
pub struct HostileLink<L> {
    link: L,
    frames: mpsc::UnboundedReceiver<String>,
}

impl<L: ControlLink> HostileLink<L> {
    /// `link`, sending every frame that arrives on `frames` on its current socket.
    pub fn new(link: L, frames: mpsc::UnboundedReceiver<String>) -> Self {
        Self { link, frames }
    }
}

impl<L: ControlLink> ControlLink for HostileLink<L> {
    fn apply(&mut self, command: ControlCommand) {
        self.link.apply(command);
    }

    async fn recv(&mut self) -> ControlInput {
        loop {
            // Both are cancel-safe, as the event loop needs `recv` to be.
            tokio::select! {
                input = self.link.recv() => return input,
                Some(frame) = self.frames.recv() => self.link.apply(ControlCommand::Send(frame)),
            }
        }
    }
}

/// What the gateway's node reports, as of its last step, for the driver's checks.
#[derive(Debug, Default)]
pub struct GatewayTap {
    /// The gateway's WireGuard public key.
    pub public_key: Cell<Option<PublicKey>>,
    /// What its node dropped, by reason.
    pub stats: RefCell<Stats>,
    /// The signalled remote candidates each of its connections holds.
    pub remote_candidates: RefCell<BTreeMap<ClientId, usize>>,
    /// Tunnel packets its source check dropped (the gateway state's `wrong_source`), since
    /// this gateway process started.
    pub wrong_source: Cell<u64>,
    /// Tunnel packets it refused for want of an authorization (the gateway state's
    /// `unauthorized` and `unknown_client`), since this gateway process started.
    pub refused: Cell<u64>,
    /// The gateway's handshake initiations.
    pub handshakes: super::hosts::Handshakes,
    /// The relayed candidates its connections hold, as of its last step.
    pub relayed_candidates: RefCell<std::collections::BTreeSet<std::net::SocketAddr>>,
    /// Its own relayed addresses (one per allocation), as of its last step.
    pub own_relayed: RefCell<Vec<std::net::SocketAddr>>,
    /// Which preshared key each established connection uses, as of its last step.
    pub psks: RefCell<BTreeMap<ClientId, [u8; 8]>>,
}

/// An `ice_candidates` frame from the client to gateway 1 with [`FLOOD_CANDIDATES`] bogus host
/// candidates, each on its own port of `ip`.
pub fn candidate_flood(ip: IpAddr) -> String {
    let candidates = (0..FLOOD_CANDIDATES)
        .map(|i| {
            format!(
                "candidate:{i} 1 udp 2130706431 {ip} {} typ host",
                10_000 + i
            )
        })
        .collect();
    let message = ClientEgress::IceCandidates(GatewayCandidates {
        gateway_id: GatewayId(1),
        candidates,
    });
    // A reference the engine's own requests never reach; the reply is dropped as unknown.
    match Frame::message("client", &message, Some(1 << 40)) {
        Ok(frame) => frame.to_text(),
        Err(error) => panic!("cannot encode a candidate flood: {error}"),
    }
}

/// A join of the `client` topic with `key`, another node's public key.
pub fn claim_key(key: Key) -> String {
    let payload = serde_json::json!({ "public_key": key });
    // A reference the engine's own requests never reach; the reply is dropped as unknown.
    Frame::join("client", payload, 1 << 41).to_text()
}

/// [`FLOOD_HANDSHAKES`] handshake initiations towards `gateway`, each from a static key of its
/// own: their mac1 is valid, so only the gateway's load guard stands between them and an
/// X25519 each. Keys, ephemeral keys and timestamps come from `seed` and `wall` (the simulated
/// wall clock), so a flood's bytes repeat with its seed.
pub fn handshake_flood(gateway: PublicKey, seed: u64, wall: SystemTime) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..FLOOD_HANDSHAKES)
        .filter_map(|i| {
            let secret = StaticSecret::from(rng.gen::<[u8; 32]>());
            let index = u32::try_from(i).unwrap_or(0);
            let ephemeral = Box::new(ChaCha8Rng::seed_from_u64(rng.gen()));
            let mut tunn =
                Tunn::new_with(secret, gateway, None, None, index, None, ephemeral, wall);
            let mut buf = [0u8; 256];
            match tunn.format_handshake_initiation(&mut buf, true) {
                TunnResult::WriteToNetwork(bytes) => Some(bytes.to_vec()),
                TunnResult::Done
                | TunnResult::Err(_)
                | TunnResult::WriteToTunnelV4(..)
                | TunnResult::WriteToTunnelV6(..) => None,
            }
        })
        .collect()
}
