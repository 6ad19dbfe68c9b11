//! Telling apart what arrives on the node's UDP socket.
//!
//! STUN (ICE checks, TURN control), TURN channel data and WireGuard all share one socket. The
//! checks here look at a handful of header bytes and lengths only, so they are cheap enough for
//! every datagram and exact enough that no kind is mistaken for another.

/// What a datagram is, judged from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// A STUN message (RFC 8489): ICE connectivity checks or TURN control messages.
    Stun,
    /// TURN channel data (RFC 8656 §12.4): the channel number is in `0x4000..=0x7FFF`.
    ChannelData,
    /// WireGuard handshake initiation (type 1).
    WgHandshakeInit,
    /// WireGuard handshake response (type 2).
    WgHandshakeResponse,
    /// WireGuard cookie reply (type 3).
    WgCookieReply,
    /// WireGuard transport data (type 4).
    WgData,
    /// None of the above.
    Unknown,
}

const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_HEADER_LEN: usize = 20;

// WireGuard message sizes (the whitepaper, §5.4): everything but data has a fixed size.
const WG_HANDSHAKE_INIT_LEN: usize = 148;
const WG_HANDSHAKE_RESPONSE_LEN: usize = 92;
const WG_COOKIE_REPLY_LEN: usize = 64;
/// Header (16) plus the Poly1305 tag (16) of an empty keep-alive.
const WG_DATA_MIN_LEN: usize = 32;

/// Classifies one datagram.
pub fn classify(bytes: &[u8]) -> DatagramKind {
    let Some(&first) = bytes.first() else {
        return DatagramKind::Unknown;
    };
    match first {
        // STUN responses (0x01xx) share first bytes with WireGuard; the reserved zeros decide.
        1..=4 => classify_wireguard(bytes).unwrap_or_else(|| classify_stun(bytes)),
        0x40..=0x7F => classify_channel_data(bytes),
        _ if first & 0xC0 == 0 => classify_stun(bytes),
        _ => DatagramKind::Unknown,
    }
}

fn classify_wireguard(bytes: &[u8]) -> Option<DatagramKind> {
    // WireGuard's type is a little-endian u32 whose upper three bytes are reserved zeros.
    if bytes.get(1..4) != Some(&[0, 0, 0]) {
        return None;
    }
    match (bytes[0], bytes.len()) {
        (1, WG_HANDSHAKE_INIT_LEN) => Some(DatagramKind::WgHandshakeInit),
        (2, WG_HANDSHAKE_RESPONSE_LEN) => Some(DatagramKind::WgHandshakeResponse),
        (3, WG_COOKIE_REPLY_LEN) => Some(DatagramKind::WgCookieReply),
        // The spec pads transport data to 16 bytes, but boringtun does not pad: any length
        // from an empty keep-alive up is valid.
        (4, n) if n >= WG_DATA_MIN_LEN => Some(DatagramKind::WgData),
        _ => None,
    }
}

fn classify_stun(bytes: &[u8]) -> DatagramKind {
    if bytes.len() < STUN_HEADER_LEN || bytes[4..8] != STUN_MAGIC_COOKIE {
        return DatagramKind::Unknown;
    }
    let body_len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    // STUN attributes are padded to 4 bytes, so the body length is always a multiple of 4.
    if body_len % 4 != 0 || STUN_HEADER_LEN + body_len != bytes.len() {
        return DatagramKind::Unknown;
    }
    DatagramKind::Stun
}

fn classify_channel_data(bytes: &[u8]) -> DatagramKind {
    let Some(header) = bytes.get(..4) else {
        return DatagramKind::Unknown;
    };
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    // Over UDP the payload may or may not be padded to 4 bytes (RFC 8656 §12.5).
    let padded = (len + 3) & !3;
    let rest = bytes.len() - 4;
    if rest == len || rest == padded {
        DatagramKind::ChannelData
    } else {
        DatagramKind::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stun(body_len: u16) -> Vec<u8> {
        let mut b = vec![0u8; 20 + usize::from(body_len)];
        b[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
        b[2..4].copy_from_slice(&body_len.to_be_bytes());
        b[4..8].copy_from_slice(&STUN_MAGIC_COOKIE);
        b
    }

    #[test]
    fn stun_needs_cookie_and_consistent_length() {
        assert_eq!(classify(&stun(0)), DatagramKind::Stun);
        assert_eq!(classify(&stun(8)), DatagramKind::Stun);
        let mut bad_cookie = stun(8);
        bad_cookie[5] = 0;
        assert_eq!(classify(&bad_cookie), DatagramKind::Unknown);
        let mut truncated = stun(8);
        truncated.pop();
        assert_eq!(classify(&truncated), DatagramKind::Unknown);
        assert_eq!(classify(&stun(0)[..19]), DatagramKind::Unknown);
    }

    #[test]
    fn stun_responses_are_not_wireguard() {
        let mut success = stun(12);
        success[0..2].copy_from_slice(&0x0101u16.to_be_bytes());
        assert_eq!(classify(&success), DatagramKind::Stun);
        let mut allocate_error = stun(16);
        allocate_error[0..2].copy_from_slice(&0x0113u16.to_be_bytes());
        assert_eq!(classify(&allocate_error), DatagramKind::Stun);
    }

    #[test]
    fn wireguard_types_need_exact_sizes_and_zero_reserved_bytes() {
        let mut init = vec![0u8; 148];
        init[0] = 1;
        assert_eq!(classify(&init), DatagramKind::WgHandshakeInit);
        init[2] = 1;
        assert_eq!(classify(&init), DatagramKind::Unknown);

        let mut resp = vec![0u8; 92];
        resp[0] = 2;
        assert_eq!(classify(&resp), DatagramKind::WgHandshakeResponse);
        resp.push(0);
        assert_eq!(classify(&resp), DatagramKind::Unknown);

        let mut cookie = vec![0u8; 64];
        cookie[0] = 3;
        assert_eq!(classify(&cookie), DatagramKind::WgCookieReply);

        let mut data = vec![0u8; 32];
        data[0] = 4;
        assert_eq!(classify(&data), DatagramKind::WgData);
        data.extend_from_slice(&[0; 16]);
        assert_eq!(classify(&data), DatagramKind::WgData);
        // Unpadded, as boringtun sends it.
        data.push(0);
        assert_eq!(classify(&data), DatagramKind::WgData);
        assert_eq!(classify(&data[..31]), DatagramKind::Unknown);
    }

    #[test]
    fn channel_data_padded_or_not() {
        let mut cd = vec![0x40, 0x01, 0x00, 0x05];
        cd.extend_from_slice(&[9; 5]);
        assert_eq!(classify(&cd), DatagramKind::ChannelData);
        cd.extend_from_slice(&[0; 3]);
        assert_eq!(classify(&cd), DatagramKind::ChannelData);
        cd.push(0);
        assert_eq!(classify(&cd), DatagramKind::Unknown);
        assert_eq!(classify(&[0x7F, 0xFF, 0, 0]), DatagramKind::ChannelData);
        assert_eq!(classify(&[0x80, 0x00, 0, 0]), DatagramKind::Unknown);
        assert_eq!(classify(&[0x40, 0x00, 0]), DatagramKind::Unknown);
    }

    #[test]
    fn empty_and_other_first_bytes_are_unknown() {
        assert_eq!(classify(&[]), DatagramKind::Unknown);
        assert_eq!(classify(&[0x45; 40]), DatagramKind::Unknown);
        assert_eq!(classify(&[0xFF; 40]), DatagramKind::Unknown);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = classify(&bytes);
        }
    }
}
