//! 32-byte keys as they travel in JSON: standard base64 with padding.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not standard base64.
    #[error("key is not valid base64")]
    InvalidBase64,
    /// The decoded key is not 32 bytes long.
    #[error("key is {0} bytes long, expected 32")]
    InvalidLength(usize),
}

fn decode(s: &str) -> Result<[u8; 32], KeyError> {
    let bytes = STANDARD.decode(s).map_err(|_| KeyError::InvalidBase64)?;
    let len = bytes.len();

    bytes.try_into().map_err(|_| KeyError::InvalidLength(len))
}

macro_rules! key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps raw key bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw key bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The key as standard base64.
            pub fn to_base64(&self) -> String {
                STANDARD.encode(self.0)
            }
        }

        impl From<[u8; 32]> for $name {
            fn from(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }
        }

        impl FromStr for $name {
            type Err = KeyError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                decode(s).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.to_base64())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;

                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

key!(
    /// A WireGuard public key.
    PublicKey
);
key!(
    /// A WireGuard preshared key: a secret shared by one client–gateway pair, mixed into the
    /// handshake. It never appears in logs.
    PresharedKey
);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let key = PublicKey::from_bytes([7; 32]);
        let json = serde_json::to_string(&key).unwrap();

        assert_eq!(json, format!("\"{}\"", STANDARD.encode([7; 32])));
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), key);
    }

    #[test]
    fn rejects_wrong_length_and_bad_base64() {
        assert_eq!(
            STANDARD.encode([1; 31]).parse::<PublicKey>(),
            Err(KeyError::InvalidLength(31))
        );
        assert_eq!(
            "not base64!".parse::<PresharedKey>(),
            Err(KeyError::InvalidBase64)
        );
        assert!(serde_json::from_str::<PresharedKey>("42").is_err());
    }

    #[test]
    fn preshared_key_is_redacted() {
        let psk = PresharedKey::from_bytes([9; 32]);

        assert_eq!(format!("{psk:?}"), "PresharedKey(<redacted>)");
    }
}
