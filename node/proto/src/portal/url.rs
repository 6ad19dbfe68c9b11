//! The token in the WebSocket URL (`/<role>/websocket?token=<token>`), percent-encoded.
//!
//! A node encodes every byte but the RFC 3986 unreserved characters (ASCII letters and digits,
//! `-`, `.`, `_`, `~`) as `%XX`; the portal decodes strictly. `+` is a literal plus, not a space:
//! the query is not form-encoded.

/// Why a percent-encoded string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PercentDecodeError {
    /// A `%` not followed by two hexadecimal digits.
    #[error("malformed percent escape at byte {offset}")]
    MalformedEscape {
        /// Where the `%` is.
        offset: usize,
    },
}

/// `s` with every byte but the unreserved characters written as `%XX` (upper-case hex).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The bytes `s` encodes. Every `%` must start an escape of two hexadecimal digits (either
/// case); other characters stand for themselves.
pub fn percent_decode(s: &str) -> Result<Vec<u8>, PercentDecodeError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte != b'%' {
            out.push(byte);
            i += 1;
            continue;
        }
        let digit = |j: usize| {
            bytes
                .get(j)
                .and_then(|&b| char::from(b).to_digit(16))
                .ok_or(PercentDecodeError::MalformedEscape { offset: i })
        };
        let value = digit(i + 1)? * 16 + digit(i + 2)?;
        // Two hex digits are at most 0xFF.
        out.push(u8::try_from(value).unwrap_or(u8::MAX));
        i += 3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn encodes_all_but_unreserved() {
        assert_eq!(percent_encode("a+b/c="), "a%2Bb%2Fc%3D");
        assert_eq!(percent_encode("Az09-._~"), "Az09-._~");
        assert_eq!(percent_encode("é %"), "%C3%A9%20%25");
    }

    #[test]
    fn decodes_escapes_of_either_case_and_literals() {
        assert_eq!(percent_decode("a%2Bb%2fc%3D").unwrap(), b"a+b/c=");
        assert_eq!(percent_decode("a+b").unwrap(), b"a+b");
        assert_eq!(percent_decode("").unwrap(), b"");
        assert_eq!(percent_decode("%FF").unwrap(), [0xFF]);
    }

    #[test]
    fn refuses_malformed_escapes() {
        for (s, offset) in [("%", 0), ("a%2", 1), ("%zz", 0), ("%2g", 0), ("ok%%41", 2)] {
            assert_eq!(
                percent_decode(s),
                Err(PercentDecodeError::MalformedEscape { offset }),
                "{s:?}"
            );
        }
        // A multi-byte character after `%` is not a digit (and is not split).
        assert!(percent_decode("%é1").is_err());
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(s in any::<String>()) {
            prop_assert_eq!(percent_decode(&percent_encode(&s)).unwrap(), s.as_bytes());
        }

        #[test]
        fn decode_never_panics(s in any::<String>()) {
            let _ = percent_decode(&s);
        }
    }
}
