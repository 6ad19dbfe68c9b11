//! TURN ChannelData framing (RFC 8656 section 12.4): a 4-byte header, channel number and payload
//! length, both big-endian, then the payload.
//!
//! Over UDP the payload need not be padded to a multiple of four, and a padded datagram carries up
//! to three bytes past the declared length: both are accepted. Frames written here are unpadded.

use crate::attributes::ChannelNumber;

/// Length of the ChannelData header.
pub const HEADER_LEN: usize = 4;

/// Why a datagram is not a ChannelData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelDataError {
    /// Shorter than the 4-byte header.
    #[error("datagram of {0} bytes is shorter than a ChannelData header")]
    TooShort(usize),
    /// The channel number is outside 0x4000..=0x7FFF.
    #[error("channel number {0:#06x} is outside 0x4000..=0x7FFF")]
    InvalidChannel(u16),
    /// The header announces more payload than the datagram holds.
    #[error("header announces {declared} payload bytes but only {available} follow")]
    Truncated {
        /// Length from the header.
        declared: usize,
        /// Bytes after the header.
        available: usize,
    },
}

/// A parsed view over a ChannelData datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    channel: u16,
    payload: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses `bytes`; trailing padding beyond the declared length is ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ChannelDataError> {
        let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(ChannelDataError::TooShort(bytes.len()));
        };
        let channel = u16::from_be_bytes([header[0], header[1]]);
        if !ChannelNumber::new(channel).is_valid() {
            return Err(ChannelDataError::InvalidChannel(channel));
        }
        let declared = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let payload = rest.get(..declared).ok_or(ChannelDataError::Truncated {
            declared,
            available: rest.len(),
        })?;
        Ok(Self { channel, payload })
    }

    /// The channel number.
    pub fn channel(&self) -> u16 {
        self.channel
    }

    /// The application data, without padding.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

/// Encodes a ChannelData frame (unpadded).
///
/// Returns `None` when the payload does not fit the 16-bit length field.
pub fn encode(channel: u16, payload: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(payload.len()).ok()?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let frame = encode(0x4001, b"hello").unwrap();
        assert_eq!(
            frame,
            [0x40, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o']
        );
        let parsed = ChannelData::parse(&frame).unwrap();
        assert_eq!(parsed.channel(), 0x4001);
        assert_eq!(parsed.payload(), b"hello");
    }

    #[test]
    fn padding_is_ignored_and_unpadded_accepted() {
        let padded = [0x7f, 0xff, 0x00, 0x01, 0xaa, 0, 0, 0];
        let parsed = ChannelData::parse(&padded).unwrap();
        assert_eq!(parsed.channel(), 0x7fff);
        assert_eq!(parsed.payload(), [0xaa]);
        assert_eq!(ChannelData::parse(&padded[..5]).unwrap().payload(), [0xaa]);
    }

    #[test]
    fn rejects_bad_frames() {
        assert_eq!(
            ChannelData::parse(&[0x40, 0]),
            Err(ChannelDataError::TooShort(2))
        );
        assert_eq!(
            ChannelData::parse(&[0x80, 0, 0, 0]),
            Err(ChannelDataError::InvalidChannel(0x8000))
        );
        assert_eq!(
            ChannelData::parse(&[0x40, 0, 0, 9, 1]),
            Err(ChannelDataError::Truncated {
                declared: 9,
                available: 1
            })
        );
    }

    #[test]
    fn empty_payload() {
        let frame = encode(0x4000, &[]).unwrap();
        assert_eq!(ChannelData::parse(&frame).unwrap().payload(), b"");
    }
}
