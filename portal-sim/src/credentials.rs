//! Relay credentials in the TURN REST scheme (coturn's `use-auth-secret`): the username is
//! `<unix-expiry>:<node id>`, the password `base64(HMAC-SHA1(secret, username))`. The relay
//! shares only the secret with the portal and recomputes the password.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// Mints `(username, password)` for node `id` (displayed, e.g. `c1`), valid until
/// `expires_at` (unix seconds).
pub fn rest_credentials(secret: &str, expires_at: u64, id: &str) -> (String, String) {
    let username = format!("{expires_at}:{id}");
    let password = rest_password(secret, &username);
    (username, password)
}

/// `base64(HMAC-SHA1(secret, username))`.
pub fn rest_password(secret: &str, username: &str) -> String {
    STANDARD.encode(hmac_sha1(secret.as_bytes(), username.as_bytes()))
}

/// Whether `password` is the one for `username` and the username has not expired at `now_unix`.
pub fn verify(secret: &str, username: &str, password: &str, now_unix: u64) -> bool {
    let Some((expiry, _id)) = username.split_once(':') else {
        return false;
    };
    let Ok(expiry) = expiry.parse::<u64>() else {
        return false;
    };
    let Ok(given) = STANDARD.decode(password) else {
        return false;
    };
    let mut mac = match HmacSha1::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return false,
    };
    mac.update(username.as_bytes());
    expiry >= now_unix && mac.verify_slice(&given).is_ok()
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    // HMAC takes keys of any length, so this branch is never taken.
    let mut mac = match HmacSha1::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 20],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc_2202_test_vector() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mac = hmac_sha1(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }

    #[test]
    fn minted_credentials_verify_until_expiry() {
        let (user, pass) = rest_credentials("s3cret", 1_700_000_000, "c1");
        assert_eq!(user, "1700000000:c1");
        assert!(verify("s3cret", &user, &pass, 1_699_999_999));
        assert!(verify("s3cret", &user, &pass, 1_700_000_000));
        assert!(!verify("s3cret", &user, &pass, 1_700_000_001), "expired");
        assert!(!verify("other", &user, &pass, 0), "wrong secret");
        assert!(!verify("s3cret", "1700000000:c2", &pass, 0), "other user");
        assert!(!verify("s3cret", "garbage", &pass, 0));
        assert!(!verify("s3cret", &user, "!!", 0));
    }
}
