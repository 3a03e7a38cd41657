//! Password hashing with argon2id. Hashing is deliberately expensive (OWASP: 19 MiB, two
//! passes), so it runs on the blocking pool under a semaphore: at most
//! [`MAX_CONCURRENT_HASHES`] at once, whatever arrives.

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use super::AuthError;

/// Hashes in flight at once: each holds its memory cost (19 MiB at OWASP parameters).
pub const MAX_CONCURRENT_HASHES: usize = 4;
/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest: hashing cost grows with length, and nobody types more.
pub const MAX_PASSWORD_CHARS: usize = 256;

/// Hashes and verifies passwords.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
    /// A valid hash of nothing anyone knows, verified when a user does not exist, so that an
    /// unknown user takes as long as a wrong password.
    decoy: Arc<String>,
}

impl Passwords {
    /// OWASP's argon2id parameters: m = 19 MiB, t = 2, p = 1.
    pub fn owasp() -> Result<Passwords, AuthError> {
        Self::with(
            Params::DEFAULT_M_COST,
            Params::DEFAULT_T_COST,
            Params::DEFAULT_P_COST,
        )
    }

    /// Cheap parameters for tests only: a debug build spends ~1 s per hash at OWASP's.
    pub fn cheap_for_tests() -> Result<Passwords, AuthError> {
        Self::with(64, 1, 1)
    }

    fn with(m: u32, t: u32, p: u32) -> Result<Passwords, AuthError> {
        let params = Params::new(m, t, p, None).map_err(|e| AuthError::Internal(e.to_string()))?;
        let decoy = hash_now(&params, b"decoy: no account has this password")?;
        Ok(Passwords {
            params,
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_HASHES)),
            decoy: Arc::new(decoy),
        })
    }

    /// Checks the password policy, then hashes to a PHC string.
    pub async fn hash(&self, password: &str) -> Result<String, AuthError> {
        check_policy(password)?;
        let params = self.params.clone();
        let password = password.as_bytes().to_vec();
        self.blocking(move || hash_now(&params, &password)).await?
    }

    /// Whether `password` matches `phc`. `None` (no such user) verifies against a decoy and
    /// answers false, taking the same time.
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> Result<bool, AuthError> {
        if password.chars().count() > MAX_PASSWORD_CHARS {
            return Ok(false);
        }
        // No user, or one without a password yet (invited): the decoy, for the same time.
        let phc = phc.filter(|p| p.starts_with("$argon2"));
        let known = phc.is_some();
        let phc = phc.map_or_else(|| self.decoy.as_str().to_string(), str::to_string);
        let password = password.as_bytes().to_vec();
        let ok = self
            .blocking(move || {
                Argon2::default()
                    .verify_password(&password, phc.as_str())
                    .is_ok()
            })
            .await?;
        Ok(known && ok)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))
    }
}

fn hash_now(params: &Params, password: &[u8]) -> Result<String, AuthError> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Internal(e.to_string()))
}

/// Length limits; no composition rules (NIST 800-63B).
pub fn check_policy(password: &str) -> Result<(), AuthError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_CHARS {
        return Err(AuthError::WeakPassword(format!(
            "at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if n > MAX_PASSWORD_CHARS {
        return Err(AuthError::WeakPassword(format!(
            "at most {MAX_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let p = Passwords::cheap_for_tests().unwrap();
        let phc = p.hash("correct horse battery").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        assert!(p.verify("correct horse battery", Some(&phc)).await.unwrap());
        assert!(!p.verify("correct horse batterz", Some(&phc)).await.unwrap());
        assert!(
            !p.verify("correct horse battery", None).await.unwrap(),
            "no user, no entry"
        );
    }

    #[tokio::test]
    async fn owasp_parameters_are_the_production_default() {
        let p = Passwords::owasp().unwrap();
        assert!(p.decoy.contains("m=19456,t=2,p=1"), "{}", p.decoy);
    }

    #[tokio::test]
    async fn short_and_absurdly_long_passwords_are_refused() {
        let p = Passwords::cheap_for_tests().unwrap();
        assert!(matches!(
            p.hash("short").await,
            Err(AuthError::WeakPassword(_))
        ));
        let long = "x".repeat(MAX_PASSWORD_CHARS + 1);
        assert!(matches!(
            p.hash(&long).await,
            Err(AuthError::WeakPassword(_))
        ));
    }
}
