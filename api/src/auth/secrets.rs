//! Opaque secrets: refresh tokens and API keys. 32 random bytes, base64url; only their
//! SHA-256 is stored, so a database leak does not leak usable credentials (the secrets are
//! random and long, so a fast hash is enough; passwords are the ones that need argon2).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// The prefix of API keys, so that a leaked one is recognisable (and greppable by scanners).
pub const API_KEY_PREFIX: &str = "ghk_";
/// Random bytes per secret.
const SECRET_BYTES: usize = 32;

fn random_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A new refresh token.
pub fn refresh_token() -> String {
    random_secret()
}

/// A new API key.
pub fn api_key() -> String {
    format!("{API_KEY_PREFIX}{}", random_secret())
}

/// What is stored for a secret: its SHA-256, hex.
pub fn digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_stored_as_digests() {
        let (a, b) = (refresh_token(), refresh_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43, "32 bytes in unpadded base64url");
        assert!(api_key().starts_with(API_KEY_PREFIX));
        assert_eq!(digest(&a).len(), 64);
        assert_eq!(digest(&a), digest(&a));
        assert_ne!(digest(&a), digest(&b));
    }
}
