//! Engines: a tunnel state and its portal session as one sans-IO state machine, the [`Engine`]
//! a runtime's event loop drives.
//!
//! The loop reads whatever is ready (datagrams, device packets, the portal link's input) and
//! hands it in with its `now`, writes out what the engine produced, and sleeps until
//! [`Engine::poll_timeout`]. Production binaries and the simulation run exactly these engines.

mod engines;
mod portal_driver;

use std::net::SocketAddr;
use std::time::Instant;

use crate::crypto::Decryption;
use crate::pool::Buffer;
use crate::portal::ConnectionError;
use crate::Transmit;

pub use engines::{ClientEngine, EngineEvent, GatewayEngine, RoleState, TunnelEngine};
pub use portal_driver::PortalDriver;

/// What the link reports to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlInput {
    /// The socket asked for is open.
    Opened,
    /// A text frame arrived.
    Text(String),
    /// The socket could not be opened, or it closed.
    Closed(ConnectionError),
}

/// What the engine asks of the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlCommand {
    /// Open a socket (closing the current one).
    Open,
    /// Close the current socket.
    Close,
    /// Send a text frame on the current socket.
    Send(String),
}

/// The sans-IO side: a node, or a client's or gateway's tunnel state around one.
pub trait Engine {
    /// A datagram arrived on `local` from `from`.
    fn handle_datagram(&mut self, local: SocketAddr, from: SocketAddr, bytes: &[u8], now: Instant);
    /// An IP packet came from the device.
    fn handle_device_packet(&mut self, packet: Vec<u8>, now: Instant);
    /// An IP packet came from the device, borrowed from the loop's read buffer: engines that
    /// only read the packet avoid an allocation per packet. The default copies it.
    fn handle_device_bytes(&mut self, packet: &[u8], now: Instant) {
        self.handle_device_packet(packet.to_vec(), now);
    }
    /// A deadline from [`Engine::poll_timeout`] passed.
    fn handle_timeout(&mut self, now: Instant);
    /// The next deadline.
    fn poll_timeout(&mut self) -> Option<Instant>;
    /// The next datagram to send.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// The next IP packet for the device.
    fn poll_device_packet(&mut self) -> Option<Buffer>;
    /// Something happened on the link to the portal.
    fn handle_control(&mut self, input: ControlInput, now: Instant) {
        let _ = (input, now);
    }
    /// The next thing for the link to the portal to do.
    fn poll_control(&mut self) -> Option<ControlCommand> {
        None
    }
    /// The loop is about to stop (a signal, not a crash): what is queued after this is still
    /// sent. Engines that hold nothing outside ignore it.
    fn close(&mut self, now: Instant) {
        let _ = now;
    }
    /// The network reported `dst` unreachable (an ICMP error for a datagram sent there; see
    /// [`crate::Node::handle_unreachable`]). No default: a wrapper that forgot to forward it
    /// would leave the node waiting seconds for a relay that is known to be gone.
    fn handle_unreachable(&mut self, dst: SocketAddr, now: Instant);
    /// The host's own addresses changed: `addrs` are the ones peers may reach it on now (see
    /// [`crate::Node::handle_network_change`]); connections made from the old ones, the
    /// portal's included, are made anew. No default, for the reason above.
    fn handle_network_change(&mut self, addrs: &[SocketAddr], now: Instant);
    /// Leaves the AEAD of data packets to the runtime (see [`crate::crypto`]): it seals what
    /// [`Engine::poll_transmit`] hands out ([`Transmit::seal`]) and opens what
    /// [`Engine::poll_decryption`] hands out, giving each back to
    /// [`Engine::handle_decryption`] in order. Engines without tunnels ignore it.
    fn set_deferred_crypto(&mut self, on: bool) {
        let _ = on;
    }
    /// The next data packet to open.
    fn poll_decryption(&mut self) -> Option<Decryption> {
        None
    }
    /// A data packet from [`Engine::poll_decryption`], opened or not.
    fn handle_decryption(&mut self, job: Decryption, now: Instant) {
        let _ = (job, now);
    }
}
