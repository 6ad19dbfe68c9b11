//! TURN messages as the allocation client sees them (RFC 8489 STUN, RFC 8656 TURN).
//!
//! Everything that arrives from a relay is parsed into a [`RelayMessage`] before it reaches an
//! allocation, so the allocation works on types, and garbage is rejected in one place.

use std::net::SocketAddr;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5389::attributes::{
    ErrorCode, Fingerprint, MessageIntegrity, Nonce, Realm, Software, UnknownAttributes, Username,
    XorMappedAddress,
};
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::{Message, MessageDecoder, MessageEncoder, TransactionId};

stun_codec::define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [
        Username,
        MessageIntegrity,
        ErrorCode,
        UnknownAttributes,
        Realm,
        Nonce,
        XorMappedAddress,
        Software,
        Fingerprint,
        ChannelNumber,
        Lifetime,
        XorPeerAddress,
        Data,
        XorRelayAddress,
        RequestedTransport
    ]
);

/// A STUN message with the attributes a TURN client uses.
pub(crate) type StunMessage = Message<Attribute>;

/// The 4-byte header of TURN ChannelData (RFC 8656 §12.4).
pub(crate) const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// Why a datagram from a relay was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    /// Neither a STUN message nor ChannelData.
    #[error("not a TURN message")]
    NotTurn,
    /// A STUN header but an undecodable body.
    #[error("malformed STUN message")]
    MalformedStun,
    /// ChannelData whose length field exceeds the datagram.
    #[error("ChannelData length {declared} exceeds the {available} bytes received")]
    ChannelDataLength {
        /// The length field.
        declared: usize,
        /// Bytes after the header.
        available: usize,
    },
}

/// A datagram from a relay, parsed.
#[derive(Debug)]
pub(crate) enum RelayMessage<'a> {
    /// Data from a peer on a bound channel.
    ChannelData {
        /// The channel number.
        channel: u16,
        /// The peer's datagram.
        payload: &'a [u8],
    },
    /// A STUN message: a response to one of our requests, or a Data indication.
    Stun(Box<StunMessage>),
}

impl<'a> RelayMessage<'a> {
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, TurnError> {
        match bytes.first() {
            Some(0x40..=0x7F) => {
                let header = bytes
                    .get(..CHANNEL_DATA_HEADER_LEN)
                    .ok_or(TurnError::NotTurn)?;
                let channel = u16::from_be_bytes([header[0], header[1]]);
                let declared = usize::from(u16::from_be_bytes([header[2], header[3]]));
                let rest = &bytes[CHANNEL_DATA_HEADER_LEN..];
                // Over UDP the padding may or may not be there; only the length field counts.
                let payload = rest.get(..declared).ok_or(TurnError::ChannelDataLength {
                    declared,
                    available: rest.len(),
                })?;
                Ok(Self::ChannelData { channel, payload })
            }
            Some(b) if b & 0xC0 == 0 => {
                let message = MessageDecoder::<Attribute>::new()
                    .decode_from_bytes(bytes)
                    .map_err(|_| TurnError::MalformedStun)?
                    .map_err(|_| TurnError::MalformedStun)?;
                Ok(Self::Stun(Box::new(message)))
            }
            Some(_) | None => Err(TurnError::NotTurn),
        }
    }
}

/// Encodes a message; `None` only if the codec refuses it, which our own messages never cause.
pub(crate) fn encode(message: StunMessage) -> Option<Vec<u8>> {
    MessageEncoder::new().encode_into_bytes(message).ok()
}

/// Writes the ChannelData header in front of `len` payload bytes.
pub(crate) fn channel_data_header(channel: u16, len: usize) -> [u8; CHANNEL_DATA_HEADER_LEN] {
    let c = channel.to_be_bytes();
    let l = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
    [c[0], c[1], l[0], l[1]]
}

/// A fresh transaction id from the caller's generator.
pub(crate) fn transaction_id(rng: &mut impl rand::RngCore) -> TransactionId {
    let mut id = [0u8; 12];
    rng.fill_bytes(&mut id);
    TransactionId::new(id)
}

/// The peer address of a Data indication and its payload.
pub(crate) fn data_indication(message: &StunMessage) -> Option<(SocketAddr, &[u8])> {
    let peer = message.get_attribute::<XorPeerAddress>()?.address();
    let data = message.get_attribute::<Data>()?.data();
    Some((peer, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_with_and_without_padding() {
        let mut bytes = vec![0x40, 0x01, 0x00, 0x03, 1, 2, 3];
        let RelayMessage::ChannelData { channel, payload } = RelayMessage::parse(&bytes).unwrap()
        else {
            panic!("not channel data")
        };
        assert_eq!((channel, payload), (0x4001, &[1u8, 2, 3][..]));
        bytes.push(0);
        assert!(matches!(
            RelayMessage::parse(&bytes),
            Ok(RelayMessage::ChannelData {
                payload: [1, 2, 3],
                ..
            })
        ));
        assert_eq!(
            RelayMessage::parse(&bytes[..6]).unwrap_err(),
            TurnError::ChannelDataLength {
                declared: 3,
                available: 2
            }
        );
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(RelayMessage::parse(&[]).unwrap_err(), TurnError::NotTurn);
        assert_eq!(
            RelayMessage::parse(&[0x80; 30]).unwrap_err(),
            TurnError::NotTurn
        );
        assert_eq!(
            RelayMessage::parse(&[0x01, 0x01, 0, 4, 0x21, 0x12, 0xA4, 0x42]).unwrap_err(),
            TurnError::MalformedStun
        );
    }
}
