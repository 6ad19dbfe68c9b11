//! What the node tells its caller.

use std::fmt;

/// An event from a [`crate::Node`]; `TId` names the remote peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<TId> {
    /// A local candidate to signal to the peer through the portal.
    NewIceCandidate {
        /// The peer.
        connection: TId,
        /// The candidate, as an RFC 8839 attribute value.
        candidate: String,
    },
    /// A local candidate the peer must stop using.
    InvalidateIceCandidate {
        /// The peer.
        connection: TId,
        /// The candidate, as an RFC 8839 attribute value.
        candidate: String,
    },
    /// The first WireGuard session with the peer is up: packets flow.
    ConnectionEstablished(TId),
    /// The connection had no traffic for a while and now only sends sparse keep-alives.
    ConnectionIdle(TId),
    /// The connection is gone; it was removed from the node.
    ConnectionFailed {
        /// The peer.
        connection: TId,
        /// Why.
        reason: FailReason,
    },
}

/// Why a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailReason {
    /// ICE found no working path in time.
    IceTimeout,
    /// ICE lost every working path.
    IceDisconnected,
    /// ICE was connected but no WireGuard session came up in time: usually a wrong key or PSK.
    HandshakeTimeout,
    /// The session kept going without a new handshake for too long: the peer stopped rekeying.
    SessionExpired,
    /// The portal said the peer started anew: what its previous process held is gone.
    PeerRestarted,
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailReason::IceTimeout => "ICE found no path in time",
            FailReason::IceDisconnected => "ICE lost every path",
            FailReason::HandshakeTimeout => {
                "no WireGuard session within the handshake deadline (wrong key or PSK?)"
            }
            FailReason::SessionExpired => "the peer stopped renewing the WireGuard session",
            FailReason::PeerRestarted => "the peer restarted",
        })
    }
}
