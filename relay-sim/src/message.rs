//! Telling datagrams apart, decoding STUN messages and building responses.
//!
//! Parsing and building are separate: [`classify`] gives a view over the received bytes,
//! [`Response`] is a plain description of an answer that [`Response::encode`] turns into bytes.

use bytecodec::{DecodeExt as _, EncodeExt as _};
use stun_codec::rfc5389::attributes::{
    ErrorCode, Fingerprint, MessageIntegrity, Realm, Software, Username,
};
use stun_codec::{MessageClass, MessageDecoder, MessageEncoder, Method, TransactionId};

use crate::attributes::{Attribute, StunMessage};
use crate::channel_data::{ChannelData, ChannelDataError};

/// The SOFTWARE attribute put on every response.
pub(crate) const SOFTWARE: &str = concat!("zta-relay ", env!("CARGO_PKG_VERSION"));

/// Why a datagram was dropped without an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedError {
    /// The first two bits say neither STUN (00) nor ChannelData (01).
    #[error("first byte {0:#04x} is neither STUN nor ChannelData")]
    UnknownFraming(u8),
    /// A ChannelData frame that does not parse.
    #[error("bad ChannelData: {0}")]
    ChannelData(#[from] ChannelDataError),
    /// A STUN message whose header or attributes do not decode (includes a wrong FINGERPRINT).
    #[error("STUN message does not decode: {0}")]
    Stun(String),
}

/// A received datagram, seen through its framing.
#[derive(Debug)]
pub(crate) enum Datagram<'a> {
    Stun(Box<StunMessage>),
    ChannelData(ChannelData<'a>),
}

/// Classifies and parses a datagram that arrived on the listening port.
pub(crate) fn classify(bytes: &[u8]) -> Result<Datagram<'_>, MalformedError> {
    let first = bytes.first().copied().unwrap_or(0xff);
    match first >> 6 {
        0 => decode_stun(bytes).map(|m| Datagram::Stun(Box::new(m))),
        1 => Ok(Datagram::ChannelData(ChannelData::parse(bytes)?)),
        _ => Err(MalformedError::UnknownFraming(first)),
    }
}

/// Decodes a STUN message; a message whose attributes fail to decode counts as malformed.
pub(crate) fn decode_stun(bytes: &[u8]) -> Result<StunMessage, MalformedError> {
    let mut decoder = MessageDecoder::<Attribute>::new();
    match decoder.decode_from_bytes(bytes) {
        Ok(Ok(message)) => Ok(message),
        Ok(Err(broken)) => Err(MalformedError::Stun(broken.error().to_string())),
        Err(e) => Err(MalformedError::Stun(e.to_string())),
    }
}

/// Encodes a message; only fails on attributes too large for the 16-bit length fields.
pub(crate) fn encode(message: StunMessage) -> Option<Vec<u8>> {
    MessageEncoder::<Attribute>::new()
        .encode_into_bytes(message)
        .ok()
}

/// The long-term credentials a request was authenticated with: responses are signed with them.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    pub(crate) username: Username,
    pub(crate) realm: Realm,
    pub(crate) password: String,
}

/// An answer to a request, before encoding.
#[derive(Debug)]
pub(crate) struct Response {
    class: MessageClass,
    method: Method,
    transaction_id: TransactionId,
    attributes: Vec<Attribute>,
}

impl Response {
    pub(crate) fn success(method: Method, transaction_id: TransactionId) -> Self {
        Self {
            class: MessageClass::SuccessResponse,
            method,
            transaction_id,
            attributes: Vec::new(),
        }
    }

    pub(crate) fn error(method: Method, transaction_id: TransactionId, code: ErrorCode) -> Self {
        let mut response = Self {
            class: MessageClass::ErrorResponse,
            method,
            transaction_id,
            attributes: Vec::new(),
        };
        response.push(code);
        response
    }

    pub(crate) fn push(&mut self, attribute: impl Into<Attribute>) {
        self.attributes.push(attribute.into());
    }

    /// Encodes with SOFTWARE, MESSAGE-INTEGRITY when `credentials` are given, and FINGERPRINT.
    pub(crate) fn encode(self, credentials: Option<&Credentials>) -> Option<Vec<u8>> {
        let mut message = StunMessage::new(self.class, self.method, self.transaction_id);
        for attribute in self.attributes {
            message.add_attribute(attribute);
        }
        message.add_attribute(Software::new_static(SOFTWARE));
        if let Some(c) = credentials {
            let mi = MessageIntegrity::new_long_term_credential(
                &message,
                &c.username,
                &c.realm,
                &c.password,
            )
            .ok()?;
            message.add_attribute(mi);
        }
        let fingerprint = Fingerprint::new(&message).ok()?;
        message.add_attribute(fingerprint);
        encode(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_rejects_unknown_framing_and_empty() {
        assert_eq!(
            classify(&[0x80, 0, 0, 0]).err(),
            Some(MalformedError::UnknownFraming(0x80))
        );
        assert!(classify(&[]).is_err());
        assert!(matches!(
            classify(&[0, 1, 0, 0]),
            Err(MalformedError::Stun(_))
        ));
    }
}
