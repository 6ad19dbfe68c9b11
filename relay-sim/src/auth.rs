//! Time-limited TURN credentials (the "TURN REST API" scheme of coturn's `use-auth-secret`) and
//! the server's nonces.
//!
//! A username is `<unix-expiry>:<id>`; its password is `base64(HMAC-SHA1(secret, username))`. The
//! relay and whoever mints credentials (the portal) share only the secret, so the relay keeps no
//! user database. The long-term credential key is then `MD5(username:realm:password)` (RFC 8489
//! section 9.2.2), which [`verify_message_integrity`] checks requests with.
//!
//! Every MAC a sender presents (MESSAGE-INTEGRITY, a nonce's) is compared in constant time: a
//! comparison that stops at the first differing byte tells the sender, by how long the answer
//! takes, how many leading bytes of its guess are right, which lets it forge a MAC a byte at a
//! time. `hmac`'s `verify_*` methods compare without branching on the bytes.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// Mints REST credentials valid until `expiry_unix` (seconds since the Unix epoch).
///
/// Returns `(username, password)`.
pub fn rest_credentials(secret: &str, expiry_unix: u64, id: &str) -> (String, String) {
    let username = format!("{expiry_unix}:{id}");
    let password = rest_password(secret, &username);
    (username, password)
}

/// The password of a REST username: `base64(HMAC-SHA1(secret, username))`.
pub fn rest_password(secret: &str, username: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(hmac_sha1(secret.as_bytes(), &[username.as_bytes()]))
}

/// The long-term credential key (RFC 8489 section 9.2.2): `MD5(username ":" realm ":" password)`.
pub(crate) fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    md5::compute(format!("{username}:{realm}:{password}")).0
}

/// Whether `mac` is the HMAC-SHA1 of `input` under `key`, compared in constant time (see the module
/// documentation for why).
///
/// `input` is what MESSAGE-INTEGRITY covers (RFC 8489 section 14.5): the message up to the
/// attribute, with the header's length field counting up to its end.
pub(crate) fn verify_message_integrity(key: &[u8], input: &[u8], mac: &[u8]) -> bool {
    hmac_sha1_state(key, &[input]).is_some_and(|state| state.verify_slice(mac).is_ok())
}

fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    hmac_sha1_state(key, parts).map_or([0; 20], |state| state.finalize().into_bytes().into())
}

/// HMAC-SHA1 over `parts`, not yet finalized. HMAC accepts keys of any length, so `None` is never
/// returned; callers still fail closed on it.
fn hmac_sha1_state(key: &[u8], parts: &[&[u8]]) -> Option<HmacSha1> {
    let mut mac = HmacSha1::new_from_slice(key).ok()?;
    for part in parts {
        mac.update(part);
    }
    Some(mac)
}

/// Why a USERNAME is not a REST username.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsernameError {
    /// No `:` between expiry and id.
    #[error("username has no ':' separating expiry and id")]
    MissingSeparator,
    /// The part before `:` is not a decimal Unix time.
    #[error("username expiry {0:?} is not a Unix time in seconds")]
    InvalidExpiry(String),
    /// Nothing after `:`.
    #[error("username has an empty id")]
    EmptyId,
}

/// A parsed REST username `<unix-expiry>:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RestUsername {
    expiry_unix: u64,
    id: String,
}

impl RestUsername {
    /// Seconds since the Unix epoch after which the credentials are refused.
    pub fn expiry_unix(&self) -> u64 {
        self.expiry_unix
    }

    /// The identity part, opaque to the relay.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the credentials are still valid at `unix_now`.
    pub fn is_valid_at(&self, unix_now: u64) -> bool {
        unix_now <= self.expiry_unix
    }
}

impl FromStr for RestUsername {
    type Err = UsernameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (expiry, id) = s.split_once(':').ok_or(UsernameError::MissingSeparator)?;
        if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
            return Err(UsernameError::InvalidExpiry(expiry.to_owned()));
        }
        let expiry_unix = expiry
            .parse()
            .map_err(|_| UsernameError::InvalidExpiry(expiry.to_owned()))?;
        if id.is_empty() {
            return Err(UsernameError::EmptyId);
        }
        Ok(Self {
            expiry_unix,
            id: id.to_owned(),
        })
    }
}

impl fmt::Display for RestUsername {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.expiry_unix, self.id)
    }
}

/// Issues and checks stateless nonces.
///
/// A nonce is its own expiry (milliseconds on the server's clock) followed by a MAC over that
/// expiry and the client's address, so the server keeps no table of nonces that an unauthenticated
/// sender could grow.
#[derive(Clone)]
pub(crate) struct NonceKey {
    key: [u8; 20],
    lifetime: Duration,
}

/// Outcome of checking a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceCheck {
    Valid,
    /// Expired, issued to another address, or not one of ours: the client must retry with a new one.
    Stale,
}

impl NonceKey {
    pub(crate) fn new(key: [u8; 20], lifetime: Duration) -> Self {
        Self { key, lifetime }
    }

    /// A nonce for `client`; `elapsed` is the server's clock (time since its start).
    pub(crate) fn issue(&self, client: SocketAddr, elapsed: Duration) -> String {
        let expiry_ms = saturating_millis(elapsed.saturating_add(self.lifetime));
        let mac = self.mac(client, expiry_ms);
        format!("{expiry_ms:016x}{:016x}", u64::from_be_bytes(mac))
    }

    pub(crate) fn check(&self, nonce: &str, client: SocketAddr, elapsed: Duration) -> NonceCheck {
        let (Some(expiry), Some(mac)) = (nonce.get(..16), nonce.get(16..)) else {
            return NonceCheck::Stale;
        };
        let (Ok(expiry_ms), Ok(mac)) = (
            u64::from_str_radix(expiry, 16),
            u64::from_str_radix(mac, 16),
        ) else {
            return NonceCheck::Stale;
        };
        let genuine = self
            .mac_state(client, expiry_ms)
            .is_some_and(|state| state.verify_truncated_left(&mac.to_be_bytes()).is_ok());
        if nonce.len() != 32 || !genuine {
            return NonceCheck::Stale;
        }
        if saturating_millis(elapsed) >= expiry_ms {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid
    }

    /// The first 8 bytes of the nonce's HMAC.
    fn mac(&self, client: SocketAddr, expiry_ms: u64) -> [u8; 8] {
        let mut out = [0; 8];
        if let Some(state) = self.mac_state(client, expiry_ms) {
            out.copy_from_slice(&state.finalize().into_bytes()[..8]);
        }
        out
    }

    fn mac_state(&self, client: SocketAddr, expiry_ms: u64) -> Option<HmacSha1> {
        let ip = match client.ip() {
            IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
            IpAddr::V6(ip) => ip.octets(),
        };
        hmac_sha1_state(
            &self.key,
            &[&expiry_ms.to_be_bytes(), &ip, &client.port().to_be_bytes()],
        )
    }
}

fn saturating_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_coturn_scheme() {
        // base64(HMAC-SHA1("secret", "1700000000:alice")), computed independently with openssl:
        // printf '1700000000:alice' | openssl dgst -sha1 -hmac secret -binary | base64
        let (user, pass) = rest_credentials("secret", 1_700_000_000, "alice");
        assert_eq!(user, "1700000000:alice");
        assert_eq!(pass, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
    }

    #[test]
    fn parses_usernames() {
        let u: RestUsername = "1700000000:alice:x".parse().unwrap();
        assert_eq!(u.expiry_unix(), 1_700_000_000);
        assert_eq!(u.id(), "alice:x");
        assert_eq!(u.to_string(), "1700000000:alice:x");
        assert!(u.is_valid_at(1_700_000_000));
        assert!(!u.is_valid_at(1_700_000_001));
        assert_eq!(
            "alice".parse::<RestUsername>(),
            Err(UsernameError::MissingSeparator)
        );
        assert!(matches!(
            "x1:alice".parse::<RestUsername>(),
            Err(UsernameError::InvalidExpiry(_))
        ));
        assert!(matches!(
            "+1:alice".parse::<RestUsername>(),
            Err(UsernameError::InvalidExpiry(_))
        ));
        assert_eq!("1:".parse::<RestUsername>(), Err(UsernameError::EmptyId));
    }

    #[test]
    fn message_integrity_differing_in_one_byte_is_refused() {
        let key = long_term_key("1700000000:alice", "zta", "pw");
        let input = b"a STUN message up to MESSAGE-INTEGRITY";
        let mac = hmac_sha1(&key, &[input]);
        assert!(verify_message_integrity(&key, input, &mac));
        for at in [0, 10, 19] {
            let mut wrong = mac;
            wrong[at] ^= 0x01;
            assert!(!verify_message_integrity(&key, input, &wrong));
        }
        assert!(!verify_message_integrity(&key, input, &mac[..19]));
        assert!(!verify_message_integrity(&key, input, &[]));
    }

    #[test]
    fn nonce_mac_differing_in_one_digit_is_stale() {
        let key = NonceKey::new([7; 20], Duration::from_secs(600));
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let nonce = key.issue(a, Duration::ZERO);
        assert_eq!(key.check(&nonce, a, Duration::ZERO), NonceCheck::Valid);
        for at in [16, 24, 31] {
            let mut wrong = nonce.clone().into_bytes();
            wrong[at] = if wrong[at] == b'0' { b'1' } else { b'0' };
            let wrong = String::from_utf8(wrong).unwrap();
            assert_eq!(key.check(&wrong, a, Duration::ZERO), NonceCheck::Stale);
        }
    }

    #[test]
    fn nonces_expire_and_are_bound_to_the_client() {
        let key = NonceKey::new([7; 20], Duration::from_secs(600));
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:1001".parse().unwrap();
        let nonce = key.issue(a, Duration::from_secs(5));
        assert_eq!(
            key.check(&nonce, a, Duration::from_secs(604)),
            NonceCheck::Valid
        );
        assert_eq!(
            key.check(&nonce, a, Duration::from_secs(605)),
            NonceCheck::Stale
        );
        assert_eq!(
            key.check(&nonce, b, Duration::from_secs(6)),
            NonceCheck::Stale
        );
        assert_eq!(key.check("garbage", a, Duration::ZERO), NonceCheck::Stale);
        let other = NonceKey::new([8; 20], Duration::from_secs(600));
        assert_eq!(
            other.check(&nonce, a, Duration::from_secs(6)),
            NonceCheck::Stale
        );
    }
}
