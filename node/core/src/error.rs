//! Why the node rejected something, and the counters of those rejections.

use boringtun::noise::errors::WireGuardError;

use crate::packet::PacketError;
use crate::turn::TurnError;

/// A rejected packet or call. None of these affect other connections.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// There is no connection to that peer.
    #[error("no connection to that peer")]
    UnknownConnection,
    /// The datagram is neither STUN, TURN channel data nor WireGuard.
    #[error("unknown datagram")]
    UnknownDatagram,
    /// A STUN message that does not parse.
    #[error("malformed STUN message")]
    MalformedStun,
    /// A STUN message no connection accepts (unknown credentials or transaction, bad integrity).
    #[error("STUN message for no connection")]
    UnroutableStun,
    /// A binding response from an address its request was not sent to (RFC 8445
    /// §7.2.5.2.1): behind a NAT that maps per destination port, the pair does not work both
    /// ways, whatever its check says.
    #[error("binding response from where its request did not go")]
    AsymmetricStun,
    /// A WireGuard message whose index or key belongs to no connection.
    #[error("WireGuard message for no connection")]
    UnroutableWireGuard,
    /// TURN channel data while no relay is in use.
    #[error("channel data without an allocation")]
    UnexpectedChannelData,
    /// boringtun rejected the message.
    #[error("WireGuard: {0:?}")]
    WireGuard(WireGuardError),
    /// An authenticated peer sent something that is not a valid IP packet.
    #[error("invalid packet inside the tunnel: {0}")]
    InvalidInnerPacket(PacketError),
    /// A datagram from one of our relays that is not a valid TURN message.
    #[error("from relay: {0}")]
    Turn(TurnError),
    /// A TURN message from a relay we have no allocation on (any more): late responses, channel
    /// data after we gave an allocation up. Expected after relay changes.
    #[error("TURN message from a relay we have no allocation on")]
    UnknownRelay,
    /// A data packet while [`crate::MAX_PENDING_DECRYPTIONS`] wait to be opened: the runtime
    /// is not taking them.
    #[error("too many data packets waiting to be opened")]
    DecryptionQueueFull,
}

/// Counters of what the node dropped, by reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Packets for a peer without a connection.
    pub unknown_connection: u64,
    /// Datagrams of no known kind.
    pub unknown_datagram: u64,
    /// STUN messages that did not parse.
    pub malformed_stun: u64,
    /// STUN messages no connection accepted.
    pub unroutable_stun: u64,
    /// Binding responses from an address their request was not sent to.
    pub asymmetric_stun: u64,
    /// WireGuard messages for no connection.
    pub unroutable_wireguard: u64,
    /// Channel data without an allocation.
    pub unexpected_channel_data: u64,
    /// Messages boringtun rejected.
    pub wireguard_errors: u64,
    /// Decrypted packets that were not valid IP.
    pub invalid_inner_packet: u64,
    /// Malformed datagrams from relays.
    pub malformed_turn: u64,
    /// TURN messages from relays without an allocation.
    pub unknown_relay: u64,
    /// Data packets dropped because [`crate::MAX_PENDING_DECRYPTIONS`] waited to be opened.
    pub decryption_queue_full: u64,
    /// Signalled remote candidates dropped because their connection had
    /// [`crate::MAX_REMOTE_CANDIDATES`] already (not datagrams: not in
    /// [`Stats::total_dropped`]).
    pub remote_candidates_dropped: u64,
    /// Handshake initiations answered with a cookie reply instead of being processed: the node
    /// was under load and they carried no valid cookie (see [`crate::HANDSHAKE_LOAD`]).
    pub cookie_replies: u64,
    /// ICMP errors that ended one of our relay allocations (see
    /// [`crate::Node::handle_unreachable`]; not datagrams).
    pub unreachable_relays: u64,
    /// ICMP errors that ended a peer's relayed candidate (as above).
    pub unreachable_peer_candidates: u64,
}

impl Stats {
    pub(crate) fn record(&mut self, error: &Error) {
        let counter = match error {
            Error::UnknownConnection => &mut self.unknown_connection,
            Error::UnknownDatagram => &mut self.unknown_datagram,
            Error::MalformedStun => &mut self.malformed_stun,
            Error::UnroutableStun => &mut self.unroutable_stun,
            Error::AsymmetricStun => &mut self.asymmetric_stun,
            Error::UnroutableWireGuard => &mut self.unroutable_wireguard,
            Error::UnexpectedChannelData => &mut self.unexpected_channel_data,
            Error::WireGuard(_) => &mut self.wireguard_errors,
            Error::InvalidInnerPacket(_) => &mut self.invalid_inner_packet,
            Error::Turn(_) => &mut self.malformed_turn,
            Error::UnknownRelay => &mut self.unknown_relay,
            Error::DecryptionQueueFull => &mut self.decryption_queue_full,
        };
        *counter += 1;
    }

    /// Every dropped datagram, whatever the reason.
    pub fn total_dropped(&self) -> u64 {
        self.unknown_datagram
            + self.malformed_stun
            + self.unroutable_stun
            + self.asymmetric_stun
            + self.unroutable_wireguard
            + self.unexpected_channel_data
            + self.wireguard_errors
            + self.invalid_inner_packet
            + self.malformed_turn
            + self.unknown_relay
            + self.decryption_queue_full
    }
}
