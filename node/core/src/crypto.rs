//! Encryption and decryption handed out of the node, so that a runtime can spread them over
//! threads.
//!
//! The AEAD of WireGuard data packets is most of what a busy node computes, and it needs
//! nothing of the node's state but the session's key: with deferred crypto on
//! ([`crate::Node::set_deferred_crypto`]), everything else (routing, counters, timers, replay
//! checks, filtering) stays in the node, in order, and only the AEAD leaves it. An outgoing
//! datagram comes out of `poll_transmit` with its counter taken and its plain packet in place,
//! to be sealed ([`crate::Transmit::seal`]) before it is sent; the runtime sends datagrams in
//! the order they came out, so each flow keeps its order. An incoming data packet comes out of
//! `poll_decryption` as a [`Decryption`], checked against replays and copied, to be
//! [run](Decryption::run) and handed back, in order, to the engine that finishes it.

use std::net::SocketAddr;
use std::ops::Range;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Opening, Sealing};

use crate::pool::Buffer;
use crate::wireguard::ConnIndex;

/// The encryption a datagram still needs, over bytes `at` of its buffer's storage (positions
/// in the storage stay put when a TURN header is put in front).
#[derive(Debug)]
pub(crate) struct Seal {
    pub(crate) sealing: Sealing,
    pub(crate) at: Range<usize>,
}

/// A WireGuard data packet to decrypt: [`Decryption::run`] on any thread, then back to the
/// engine that handed it out.
#[derive(Debug)]
pub struct Decryption {
    pub(crate) opening: Opening,
    /// The ciphertext in view, with headroom for the device in front of it.
    pub(crate) buf: Buffer,
    pub(crate) opened: Option<Result<usize, WireGuardError>>,
    pub(crate) local: SocketAddr,
    pub(crate) from: SocketAddr,
    pub(crate) index: ConnIndex,
}

impl Decryption {
    /// Decrypts the packet in place (once; a second call does nothing).
    pub fn run(&mut self) {
        if self.opened.is_none() {
            self.opened = Some(self.opening.open(&mut self.buf));
        }
    }
}
