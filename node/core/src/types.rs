//! The plain types the core's modules share: what a connection and the node hand out, and the
//! keys and credentials they are set up with.

use std::fmt;
use std::net::SocketAddr;

use node_proto::ids::RelayId;
use node_proto::portal::{IceCredentials, PresharedKey};

use crate::crypto::Seal;
use crate::pool::Buffer;

/// Which end of a connection this node is. The client controls ICE and starts WireGuard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A user's device: ICE controlling, WireGuard initiator.
    Client,
    /// A gateway: ICE controlled, WireGuard responder.
    Gateway,
}

/// ICE credentials (RFC 8445 §5.3): signalled by the portal, fresh for every connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// The username fragment, at least 4 characters.
    pub ufrag: String,
    /// The password, at least 22 characters.
    pub password: String,
}

/// A WireGuard preshared key. Its bytes never reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(pub [u8; 32]);

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(..)")
    }
}

/// A datagram to send.
#[derive(Debug)]
pub struct Transmit {
    /// The local address to send from; `None` lets the runtime pick.
    pub src: Option<SocketAddr>,
    /// Where to send it.
    pub dst: SocketAddr,
    /// The datagram.
    pub payload: Buffer,
    /// The relay this must go through; the node wraps it before handing it out.
    pub(crate) via: Option<RelayId>,
    /// The encryption it still needs (deferred crypto only).
    pub(crate) seal: Option<Seal>,
}

impl Transmit {
    /// A datagram to `dst`, from whichever local address the runtime picks.
    pub fn new(dst: SocketAddr, payload: Buffer) -> Self {
        Self {
            src: None,
            dst,
            payload,
            via: None,
            seal: None,
        }
    }

    /// Encrypts the datagram if it still needs it (see [`crate::Node::set_deferred_crypto`]);
    /// runs on any thread, and must before the datagram is sent.
    pub fn seal(&mut self) {
        if let Some(seal) = self.seal.take() {
            seal.sealing.seal(&mut self.payload.storage_mut()[seal.at]);
        }
    }

    /// Whether [`Transmit::seal`] has work to do.
    pub fn needs_seal(&self) -> bool {
        self.seal.is_some()
    }
}

impl Psk {
    /// The first 8 bytes of the key's BLAKE2s hash: tells which key a connection uses (the
    /// portal's current generation's or an older one) without showing the key.
    pub fn fingerprint(&self) -> [u8; 8] {
        use blake2::{Blake2s256, Digest as _};
        let hash = Blake2s256::digest(self.0);
        let mut out = [0; 8];
        out.copy_from_slice(&hash[..8]);
        out
    }
}

impl From<PresharedKey> for Psk {
    fn from(key: PresharedKey) -> Self {
        Self(*key.as_bytes())
    }
}

impl From<IceCredentials> for Credentials {
    fn from(c: IceCredentials) -> Self {
        Self {
            ufrag: c.username,
            password: c.password,
        }
    }
}

impl From<Credentials> for IceCredentials {
    fn from(c: Credentials) -> Self {
        Self {
            username: c.ufrag,
            password: c.password,
        }
    }
}
