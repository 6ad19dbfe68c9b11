//! The STUN/TURN attribute set the relay understands.
//!
//! Attributes outside this set still decode (as raw attributes); the server answers 420 when one of
//! them is comprehension-required.

use bytecodec::fixnum::{U32beDecoder, U32beEncoder};
use bytecodec::{ByteCount, Decode, Encode, Eos, SizedEncode, TryTaggedDecode};
use stun_codec::rfc5389::attributes::{
    ErrorCode, Fingerprint, MappedAddress, MessageIntegrity, Nonce, Realm, Software,
    UnknownAttributes, Username, XorMappedAddress,
};
use stun_codec::rfc5766::attributes::{
    Data, DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress,
    XorRelayAddress,
};
use stun_codec::rfc8656::attributes::{AdditionalAddressFamily, RequestedAddressFamily};
use stun_codec::{AttributeType, Message};

stun_codec::define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [
        MappedAddress,
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
        EvenPort,
        RequestedTransport,
        DontFragment,
        ReservationToken,
        RequestedAddressFamily,
        AdditionalAddressFamily
    ]
);

/// A STUN message carrying this crate's attribute set.
pub type StunMessage = Message<Attribute>;

/// `CHANNEL-NUMBER` (RFC 8656 section 18.1).
///
/// `stun_codec`'s own type rejects numbers above 0x4FFF (the RFC 5766 range) while decoding, which
/// would turn a valid RFC 8656 ChannelBind into an undecodable message. This one keeps any value;
/// the server checks the range itself so that it can answer 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    /// The attribute's codepoint.
    pub const CODEPOINT: u16 = 0x000C;
    /// Lowest valid channel number.
    pub const MIN: u16 = 0x4000;
    /// Highest valid channel number (RFC 8656).
    pub const MAX: u16 = 0x7FFF;

    /// Wraps a channel number without checking its range.
    pub fn new(number: u16) -> Self {
        Self(number)
    }

    /// The number as sent on the wire.
    pub fn value(self) -> u16 {
        self.0
    }

    /// Whether the number is inside 0x4000..=0x7FFF.
    pub fn is_valid(self) -> bool {
        (Self::MIN..=Self::MAX).contains(&self.0)
    }
}

impl stun_codec::Attribute for ChannelNumber {
    type Decoder = ChannelNumberDecoder;
    type Encoder = ChannelNumberEncoder;

    fn get_type(&self) -> AttributeType {
        AttributeType::new(Self::CODEPOINT)
    }
}

/// Decoder of [`ChannelNumber`]: the number in the high 16 bits, 16 bits RFFU.
#[derive(Debug, Default)]
pub struct ChannelNumberDecoder(U32beDecoder);

impl Decode for ChannelNumberDecoder {
    type Item = ChannelNumber;

    fn decode(&mut self, buf: &[u8], eos: Eos) -> bytecodec::Result<usize> {
        self.0.decode(buf, eos)
    }

    fn finish_decoding(&mut self) -> bytecodec::Result<Self::Item> {
        let raw = self.0.finish_decoding()?;
        Ok(ChannelNumber((raw >> 16) as u16))
    }

    fn requiring_bytes(&self) -> ByteCount {
        self.0.requiring_bytes()
    }

    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl TryTaggedDecode for ChannelNumberDecoder {
    type Tag = AttributeType;

    fn try_start_decoding(&mut self, tag: Self::Tag) -> bytecodec::Result<bool> {
        Ok(tag.as_u16() == ChannelNumber::CODEPOINT)
    }
}

/// Encoder of [`ChannelNumber`].
#[derive(Debug, Default)]
pub struct ChannelNumberEncoder(U32beEncoder);

impl Encode for ChannelNumberEncoder {
    type Item = ChannelNumber;

    fn encode(&mut self, buf: &mut [u8], eos: Eos) -> bytecodec::Result<usize> {
        self.0.encode(buf, eos)
    }

    fn start_encoding(&mut self, item: Self::Item) -> bytecodec::Result<()> {
        self.0.start_encoding(u32::from(item.0) << 16)
    }

    fn requiring_bytes(&self) -> ByteCount {
        self.0.requiring_bytes()
    }

    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl SizedEncode for ChannelNumberEncoder {
    fn exact_requiring_bytes(&self) -> u64 {
        self.0.exact_requiring_bytes()
    }
}

/// Comprehension-required attributes of `message` that this crate does not know, in message order.
pub(crate) fn unknown_comprehension_required(message: &StunMessage) -> Vec<AttributeType> {
    message
        .unknown_attributes()
        .map(stun_codec::Attribute::get_type)
        .filter(|t| t.is_comprehension_required())
        .collect()
}
