//! Authentication: password hashing (argon2id, with a cap on concurrent hashes so that a
//! login flood cannot eat the memory), short-lived EdDSA access tokens with a key id, and the
//! opaque secrets behind refresh tokens and API keys (stored only as hashes).

pub mod password;
pub mod secrets;
pub mod tokens;

/// Why authentication failed or could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("token expired")]
    Expired,
    #[error("password rejected: {0}")]
    WeakPassword(String),
    #[error("key material: {0}")]
    Keys(String),
    #[error("internal: {0}")]
    Internal(String),
}
