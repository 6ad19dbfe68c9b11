//! Helpers shared by the fuzz targets: byte readers and hand-built wire formats.
//!
//! Messages are built here by hand rather than with the crates under test, so a target can
//! produce exactly the malformed-but-plausible shapes it wants (wrong lengths, forged
//! integrity, unknown attributes) that a correct encoder would refuse to write.

#![allow(dead_code)] // Each target uses a different subset.

/// STUN's magic cookie (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Reads the fuzzer's bytes front to back; past the end everything reads as zero, so every
/// input decodes to something.
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// Exactly `n` bytes, zero-padded at the end of the input.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let head = self.take(N);
        out[..head.len()].copy_from_slice(head);
        out
    }
}

/// A STUN message: header with the right length, then the attributes as given.
pub fn stun(msg_type: u16, tid: [u8; 12], attributes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + attributes.len());
    out.extend_from_slice(&msg_type.to_be_bytes());
    out.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(&tid);
    out.extend_from_slice(attributes);
    out
}

/// One attribute, padded to 4 bytes.
pub fn attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// An XOR-MAPPED-ADDRESS style value (IPv4) for `addr`.
pub fn xor_address_v4(ip: [u8; 4], port: u16) -> Vec<u8> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = port ^ (MAGIC_COOKIE >> 16) as u16;
    let mut out = vec![0, 1];
    out.extend_from_slice(&port.to_be_bytes());
    out.extend(ip.iter().zip(cookie).map(|(a, b)| a ^ b));
    out
}

/// Appends a correct FINGERPRINT (RFC 8489 §14.7) to a message built by [`stun`], fixing the
/// header length first as the RFC requires.
pub fn add_fingerprint(message: &mut Vec<u8>) {
    let len = (message.len() - 20 + 8) as u16;
    message[2..4].copy_from_slice(&len.to_be_bytes());
    let value = crc32(message) ^ 0x5354_554E;
    attribute(message, 0x8028, &value.to_be_bytes());
}

/// CRC-32 (IEEE), bitwise: the inputs are small.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// A TURN ChannelData frame (RFC 8656 §12.4), unpadded as over UDP.
pub fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Appends a long-term-credential MESSAGE-INTEGRITY (RFC 8489 §9.2.2, §14.5) to a message built
/// by [`stun`]: HMAC-SHA1 keyed with MD5(username ":" realm ":" password), over the message with
/// its length already counting the integrity attribute.
pub fn add_integrity(message: &mut Vec<u8>, username: &str, realm: &str, password: &str) {
    use hmac::Mac;
    let key = md5::compute(format!("{username}:{realm}:{password}"));
    let len = (message.len() - 20 + 24) as u16;
    message[2..4].copy_from_slice(&len.to_be_bytes());
    let mac = match hmac::Hmac::<sha1::Sha1>::new_from_slice(&key.0) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes()
        }
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    attribute(message, 0x0008, &mac);
}

/// The attributes of a STUN message: (type, value), in order. Stops at the first that overruns.
pub fn attributes(message: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut rest = message.get(20..).unwrap_or_default();
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let Some(value) = rest.get(4..4 + len) else {
            break;
        };
        out.push((kind, value));
        let padded = (4 + len + 3) & !3;
        rest = rest.get(padded..).unwrap_or_default();
    }
    out
}

/// Whether `datagram` looks like STUN (first two bits zero, magic cookie).
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= 20 && datagram[0] & 0xC0 == 0 && datagram[4..8] == MAGIC_COOKIE.to_be_bytes()
}
