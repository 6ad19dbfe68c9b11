//! [`Observed`]: an engine with an observer that sees it after every input.

use std::net::SocketAddr;
use std::time::Instant;

use node_core::crypto::Decryption;
use node_core::engine::{ControlCommand, ControlInput, Engine};
use node_core::pool::Buffer;
use node_core::Transmit;

/// An engine whose observer is called with it after every input, inside the event loop: the
/// binaries take its events there (configure the TUN device, log, stop), the simulation records
/// them with the state they describe. Every call goes straight through to the engine, so what
/// runs under an observer is exactly the engine's own path (device bytes included).
pub struct Observed<E, F> {
    engine: E,
    observe: F,
}

impl<E: Engine, F: FnMut(&mut E)> Observed<E, F> {
    /// `engine`, with `observe` called after each of its inputs.
    pub fn new(engine: E, observe: F) -> Self {
        Self { engine, observe }
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// The engine, to act on it directly (call [`Observed::observe`] after).
    pub fn engine_mut(&mut self) -> &mut E {
        &mut self.engine
    }

    /// Runs the observer now, after a change made through [`Observed::engine_mut`].
    pub fn observe(&mut self) {
        (self.observe)(&mut self.engine);
    }
}

impl<E: Engine, F: FnMut(&mut E)> Engine for Observed<E, F> {
    fn handle_datagram(&mut self, local: SocketAddr, from: SocketAddr, bytes: &[u8], now: Instant) {
        self.engine.handle_datagram(local, from, bytes, now);
        self.observe();
    }

    fn handle_device_packet(&mut self, packet: Vec<u8>, now: Instant) {
        self.engine.handle_device_packet(packet, now);
        self.observe();
    }

    fn handle_device_bytes(&mut self, packet: &[u8], now: Instant) {
        self.engine.handle_device_bytes(packet, now);
        self.observe();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.engine.handle_timeout(now);
        self.observe();
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.engine.poll_timeout()
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.engine.poll_transmit()
    }

    fn poll_device_packet(&mut self) -> Option<Buffer> {
        self.engine.poll_device_packet()
    }

    fn handle_control(&mut self, input: ControlInput, now: Instant) {
        self.engine.handle_control(input, now);
        self.observe();
    }

    fn poll_control(&mut self) -> Option<ControlCommand> {
        self.engine.poll_control()
    }

    fn set_deferred_crypto(&mut self, on: bool) {
        self.engine.set_deferred_crypto(on);
    }

    fn close(&mut self, now: Instant) {
        self.engine.close(now);
        self.observe();
    }

    fn handle_unreachable(&mut self, dst: SocketAddr, now: Instant) {
        self.engine.handle_unreachable(dst, now);
        self.observe();
    }

    fn handle_network_change(&mut self, addrs: &[SocketAddr], now: Instant) {
        self.engine.handle_network_change(addrs, now);
        self.observe();
    }

    fn poll_decryption(&mut self) -> Option<Decryption> {
        self.engine.poll_decryption()
    }

    fn handle_decryption(&mut self, job: Decryption, now: Instant) {
        self.engine.handle_decryption(job, now);
        self.observe();
    }
}
