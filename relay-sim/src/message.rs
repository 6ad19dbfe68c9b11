//! Telling datagrams apart, decoding STUN messages and building responses.
//!
//! Parsing and building are separate: [`classify`] gives a view over the received bytes,
//! [`Response`] is a plain description of an answer that [`Response::encode`] turns into bytes.

use std::ops::Range;

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
    Stun(Box<Received>),
    ChannelData(ChannelData<'a>),
}

/// Classifies and parses a datagram that arrived on the listening port.
pub(crate) fn classify(bytes: &[u8]) -> Result<Datagram<'_>, MalformedError> {
    let first = bytes.first().copied().unwrap_or(0xff);
    match first >> 6 {
        0 => decode_received(bytes).map(|m| Datagram::Stun(Box::new(m))),
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

/// Header length of a STUN message; attributes follow it.
const HEADER_LEN: usize = 20;
const MESSAGE_INTEGRITY: u16 = 0x0008;
const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
const FINGERPRINT: u16 = 0x8028;

/// A received STUN message as the server acts on it.
#[derive(Debug)]
pub(crate) struct Received {
    /// The message without the attributes that follow MESSAGE-INTEGRITY.
    pub(crate) message: StunMessage,
    /// What MESSAGE-INTEGRITY's HMAC covers (RFC 8489 section 14.5): the received bytes before it,
    /// with the header's length field counting up to its end. `None` without MESSAGE-INTEGRITY.
    pub(crate) integrity_input: Option<Vec<u8>>,
}

/// Decodes a received STUN message, dropping the attributes that follow MESSAGE-INTEGRITY.
///
/// RFC 8489 section 14.5: except MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, attributes after
/// MESSAGE-INTEGRITY are ignored. The MAC does not cover them, so anyone who sees a signed request
/// could append to it (an XOR-PEER-ADDRESS after a captured CreatePermission would add a
/// permission the client never asked for). The signed part is then served as if it came alone.
/// MESSAGE-INTEGRITY-SHA256 is kept, so that it is still refused as an unknown
/// comprehension-required attribute; FINGERPRINT has been checked over the whole message.
///
/// The integrity input is taken from the received bytes, not from a re-encoding of the decoded
/// attributes, so that the MAC is checked over exactly what the client signed.
pub(crate) fn decode_received(bytes: &[u8]) -> Result<Received, MalformedError> {
    let message = decode_stun(bytes)?;
    let mut spans = attribute_spans(bytes);
    let Some((_, integrity)) = spans.find(|(kind, _)| *kind == MESSAGE_INTEGRITY) else {
        return Ok(Received {
            message,
            integrity_input: None,
        });
    };
    let integrity_input = Some(patched_length(
        bytes.get(..integrity.start).unwrap_or_default(),
        integrity.end,
    ));
    let after: Vec<(u16, Range<usize>)> = spans.collect();
    if after
        .iter()
        .all(|(kind, _)| [FINGERPRINT, MESSAGE_INTEGRITY_SHA256].contains(kind))
    {
        return Ok(Received {
            message,
            integrity_input,
        });
    }
    let mut signed = bytes.get(..integrity.end).unwrap_or_default().to_vec();
    for (_, span) in after
        .into_iter()
        .filter(|(kind, _)| *kind == MESSAGE_INTEGRITY_SHA256)
    {
        signed.extend_from_slice(bytes.get(span).unwrap_or_default());
    }
    set_length(&mut signed);
    Ok(Received {
        message: decode_stun(&signed)?,
        integrity_input,
    })
}

/// Type and byte range (header, value and padding) of each attribute of a STUN message that
/// decoded, in order.
fn attribute_spans(bytes: &[u8]) -> impl Iterator<Item = (u16, Range<usize>)> + '_ {
    let mut at = HEADER_LEN;
    std::iter::from_fn(move || {
        let &[k0, k1, l0, l1] = bytes.get(at..at + 4)? else {
            return None;
        };
        let kind = u16::from_be_bytes([k0, k1]);
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let end = (at + 4 + len.next_multiple_of(4)).min(bytes.len());
        let span = at..end;
        at = end;
        Some((kind, span))
    })
}

/// Sets the header's length field to the attribute bytes that follow it.
fn set_length(message: &mut [u8]) {
    let end = message.len();
    set_length_to(message, end);
}

/// `prefix` of a message, its length field saying the message ends at byte `end`.
fn patched_length(prefix: &[u8], end: usize) -> Vec<u8> {
    let mut bytes = prefix.to_vec();
    set_length_to(&mut bytes, end);
    bytes
}

fn set_length_to(message: &mut [u8], end: usize) {
    let len = u16::try_from(end.saturating_sub(HEADER_LEN)).unwrap_or(u16::MAX);
    if let Some(field) = message.get_mut(2..4) {
        field.copy_from_slice(&len.to_be_bytes());
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
