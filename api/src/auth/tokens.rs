//! Access tokens: JWTs signed with Ed25519 (EdDSA) and a key id, valid for
//! [`ACCESS_TOKEN_TTL`]. Not RSA: the pure-Rust RSA crate carries the Marvin timing advisory.
//! The signing key is read from the data directory, or generated there on first run (PKCS#8
//! PEM, readable by the owner only); its key id is derived from the public key, so a rotated
//! key gets a new id and tokens signed by an unknown key are refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _};
use gatehouse_actors::access::Role;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::AuthError;

/// How long an access token is good for.
pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// Issuer and audience of our tokens: a token for anything else is refused.
pub const ISSUER: &str = "gatehouse";
pub const AUDIENCE: &str = "gatehouse-api";
/// The key file in the data directory.
pub const KEY_FILE: &str = "jwt-ed25519.pem";
/// Clock skew tolerated between nodes, in seconds.
const LEEWAY_SECONDS: u64 = 5;

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    /// Issued at and expiry, seconds since the Unix epoch.
    pub iat: u64,
    pub exp: u64,
    /// Token id (for audit and revocation lists).
    pub jti: String,
}

/// The signing key and the keys tokens are checked against.
pub struct TokenKeys {
    kid: String,
    encoding: EncodingKey,
    /// By key id: the current key, plus older ones kept for the life of their tokens.
    decoding: HashMap<String, DecodingKey>,
}

impl TokenKeys {
    /// Reads `dir/jwt-ed25519.pem`, or creates it (mode 0600) when absent.
    pub fn load_or_create(dir: &Path) -> Result<TokenKeys, AuthError> {
        let path: PathBuf = dir.join(KEY_FILE);
        let keys = |e: &dyn std::fmt::Display| AuthError::Keys(format!("{}: {e}", path.display()));
        let signing = match std::fs::read_to_string(&path) {
            Ok(pem) => SigningKey::from_pkcs8_pem(&pem).map_err(|e| keys(&e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let signing = generate();
                let pem = signing.to_pkcs8_pem(LineEnding::LF).map_err(|e| keys(&e))?;
                std::fs::create_dir_all(dir).map_err(|e| keys(&e))?;
                write_private(&path, pem.as_bytes()).map_err(|e| keys(&e))?;
                tracing::info!("generated a token signing key in {}", path.display());
                signing
            }
            Err(e) => return Err(keys(&e)),
        };
        Self::from_signing_key(&signing)
    }

    /// Reads the signing key from `path` (an Ed25519 private key, PKCS#8 PEM), as configured;
    /// nothing is created: a missing or unreadable file is an error naming it.
    pub fn from_file(path: &Path) -> Result<TokenKeys, AuthError> {
        let keys = |e: &dyn std::fmt::Display| AuthError::Keys(format!("{}: {e}", path.display()));
        let pem = std::fs::read_to_string(path).map_err(|e| keys(&e))?;
        let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|e| keys(&e))?;
        Self::from_signing_key(&signing)
    }

    /// A key that exists only in memory (tests, tools).
    pub fn ephemeral() -> Result<TokenKeys, AuthError> {
        Self::from_signing_key(&generate())
    }

    fn from_signing_key(signing: &SigningKey) -> Result<TokenKeys, AuthError> {
        let private = signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| AuthError::Keys(e.to_string()))?;
        let public = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| AuthError::Keys(e.to_string()))?;
        let encoding = EncodingKey::from_ed_pem(private.as_bytes())
            .map_err(|e| AuthError::Keys(e.to_string()))?;
        let decoding = DecodingKey::from_ed_pem(public.as_bytes())
            .map_err(|e| AuthError::Keys(e.to_string()))?;
        let digest = Sha256::digest(signing.verifying_key().as_bytes());
        let kid: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(TokenKeys {
            decoding: HashMap::from([(kid.clone(), decoding)]),
            kid,
            encoding,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A token for `sub` with `role`, issued at `now` (seconds since the epoch); with its
    /// expiry.
    pub fn issue(&self, sub: &str, role: Role, now: u64) -> Result<(String, u64), AuthError> {
        let exp = now + ACCESS_TOKEN_TTL.as_secs();
        let claims = Claims {
            sub: sub.to_string(),
            role,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        Ok((token, exp))
    }

    /// The claims of a valid token: signed by one of our keys (by key id), EdDSA only (an
    /// `alg: none` or HMAC token is refused), our issuer and audience, not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::InvalidToken(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::InvalidToken("no key id".into()))?;
        let key = self
            .decoding
            .get(&kid)
            .ok_or_else(|| AuthError::InvalidToken("unknown key id".into()))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = LEEWAY_SECONDS;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::InvalidToken(e.to_string()),
            })
    }
}

fn generate() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn now() -> u64 {
        gatehouse_actors::clock::wall_ms() / 1000
    }

    #[test]
    fn a_token_round_trips_with_its_key_id_and_a_fifteen_minute_life() {
        let keys = TokenKeys::ephemeral().unwrap();
        let (token, exp) = keys.issue("user-1", Role::Resident, now()).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(keys.kid()));
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.sub, "user-1");
        assert_eq!(claims.role, Role::Resident);
        assert_eq!(exp - claims.iat, 900);
    }

    #[test]
    fn forged_expired_and_foreign_tokens_are_refused() {
        let keys = TokenKeys::ephemeral().unwrap();
        let other = TokenKeys::ephemeral().unwrap();
        let (foreign, _) = other.issue("user-1", Role::Admin, now()).unwrap();
        assert!(
            matches!(keys.verify(&foreign), Err(AuthError::InvalidToken(_))),
            "wrong key"
        );

        let (old, _) = keys.issue("user-1", Role::Admin, now() - 3600).unwrap();
        assert_eq!(keys.verify(&old), Err(AuthError::Expired));

        // alg: none with our key id and valid-looking claims.
        let (good, _) = keys.issue("user-1", Role::Viewer, now()).unwrap();
        let payload = good.split('.').nth(1).unwrap();
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, keys.kid()));
        let none = format!("{header}.{payload}.");
        assert!(keys.verify(&none).is_err(), "alg none");

        // A viewer token whose payload was edited to say admin.
        let mut claims: Claims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        claims.role = Role::Admin;
        let edited = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        let parts: Vec<&str> = good.split('.').collect();
        let tampered = format!("{}.{edited}.{}", parts[0], parts[2]);
        assert!(keys.verify(&tampered).is_err(), "edited payload");

        // Right key, wrong audience.
        let mut wrong = claims.clone();
        wrong.role = Role::Viewer;
        wrong.aud = "someone-else".into();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(keys.kid().to_string());
        let token = jsonwebtoken::encode(&header, &wrong, &keys.encoding).unwrap();
        assert!(keys.verify(&token).is_err(), "wrong audience");
    }

    #[test]
    fn a_configured_key_file_is_read_and_a_missing_one_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let created = TokenKeys::load_or_create(dir.path()).unwrap();
        let configured = TokenKeys::from_file(&dir.path().join(KEY_FILE)).unwrap();
        assert_eq!(created.kid(), configured.kid(), "the same key");
        let (token, _) = configured.issue("someone", Role::Viewer, now()).unwrap();
        assert!(created.verify(&token).is_ok());

        let missing = dir.path().join("nope.pem");
        let Err(AuthError::Keys(e)) = TokenKeys::from_file(&missing) else {
            panic!("a missing key file is an error");
        };
        assert!(e.contains("nope.pem"), "{e}");
        std::fs::write(&missing, "not a key").unwrap();
        assert!(
            TokenKeys::from_file(&missing).is_err(),
            "garbage is refused"
        );
    }

    #[test]
    fn the_key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = TokenKeys::load_or_create(dir.path()).unwrap();
        let second = TokenKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(first.kid(), second.kid());
        let (token, _) = first.issue("u", Role::Operator, now()).unwrap();
        assert!(second.verify(&token).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
