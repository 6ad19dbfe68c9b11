//! Internet checksum arithmetic (RFC 1071) and in-place updates (RFC 1624).
//!
//! The checksum is the one's complement of the one's-complement sum of 16-bit words, which is
//! plain arithmetic modulo 0xFFFF in which 0x0000 and 0xFFFF are both zero. Updates work on those
//! residues rather than on bit patterns, so an update followed by its inverse gives back the
//! original field even when that field was wrong to begin with; only a zero has two encodings,
//! and there [`Zero`] says which one a sender would have written.

/// The encoding of a zero checksum a sender writes, which depends on the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Zero {
    /// 0x0000: what RFC 1071 yields whenever the summed words are not all zero, which the
    /// IPv4 header and every pseudo-header guarantee.
    Positive,
    /// 0xFFFF: UDP, where 0x0000 means "no checksum"; and an all-zero ICMPv4 message.
    Negative,
}

/// Sum of the big-endian 16-bit words of `bytes`, an odd last byte padded with zero.
///
/// Not folded: the caller reduces it modulo 0xFFFF. A `u64` cannot overflow for any packet.
pub(super) fn sum(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|word| match word {
            [hi, lo] => u64::from(u16::from_be_bytes([*hi, *lo])),
            [hi] => u64::from(u16::from_be_bytes([*hi, 0])),
            _ => 0,
        })
        .sum()
}

/// The checksum a sender writes over words summing to `sum`.
pub(super) fn finish(sum: u64, zero: Zero) -> u16 {
    // `sum % 0xFFFF` is the one's-complement sum, except that it writes 0xFFFF as 0: harmless,
    // as the complement is taken modulo 0xFFFF too and `zero` picks the encoding.
    let complement = (0xFFFF - sum % 0xFFFF) % 0xFFFF;
    encode(complement, zero)
}

/// `check` after the checksummed words `old` are replaced by `new` (same length, starting at an
/// even offset in the checksummed data).
///
/// A change that leaves the sum alone leaves the field alone, so a no-op rewrite never touches
/// the bytes.
pub(super) fn update(check: u16, old: &[u8], new: &[u8], zero: Zero) -> u16 {
    let delta = (sum(new) % 0xFFFF + 0xFFFF - sum(old) % 0xFFFF) % 0xFFFF;
    if delta == 0 {
        return check;
    }
    // The checksum is minus the sum, so it moves by minus the delta.
    let updated = (u64::from(check) % 0xFFFF + 0xFFFF - delta) % 0xFFFF;
    encode(updated, zero)
}

/// `residue` (below 0xFFFF) as a field value.
fn encode(residue: u64, zero: Zero) -> u16 {
    match (u16::try_from(residue), zero) {
        (Ok(0), Zero::Negative) => 0xFFFF,
        (Ok(value), _) => value,
        // Unreachable for a residue; zero is as good an answer as any.
        (Err(_), _) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(sum(&data), Zero::Positive), !0xddf2);
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 section 4: HC = 0xDD2F, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000.
        let check = update(0xdd2f, &[0x55, 0x55], &[0x32, 0x85], Zero::Positive);
        assert_eq!(check, 0x0000);
        assert_eq!(
            update(0xdd2f, &[0x55, 0x55], &[0x32, 0x85], Zero::Negative),
            0xffff
        );
    }

    #[test]
    fn update_matches_recomputation() {
        let mut data = [
            0x45, 0x00, 0x12, 0x34, 0xab, 0xcd, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x01,
        ];
        let before = finish(sum(&data), Zero::Positive);
        let updated = update(before, &data[8..12], &[192, 168, 1, 1], Zero::Positive);
        data[8..12].copy_from_slice(&[192, 168, 1, 1]);
        assert_eq!(updated, finish(sum(&data), Zero::Positive));
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }
}
