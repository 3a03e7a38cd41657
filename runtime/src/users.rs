//! `gatehouse user add`: creating accounts from the command line (the first admin, above all).
//! With `--password-stdin` the password is one line of standard input; at a terminal it is
//! asked for (twice, not echoed); otherwise one is generated and printed once.

use std::io::{BufRead as _, IsTerminal as _};

use anyhow::{Context, bail};
use gatehouse_actors::access::{AccessStore, AuditRecord, Role, UserId, UserRecord};
use gatehouse_adapters::store::Store;
use gatehouse_api::auth::password::Passwords;
use gatehouse_api::auth::secrets;

/// Usernames: one rule for the command line and the REST API (which owns it).
pub use gatehouse_api::v1::admin::users::MAX_USERNAME_CHARS;

/// Checks a username: 1..=64 characters of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_username(name: &str) -> anyhow::Result<()> {
    gatehouse_api::v1::admin::users::check_username(name).map_err(anyhow::Error::msg)
}

/// Where the password comes from.
pub enum PasswordSource {
    /// One line on standard input.
    Stdin,
    /// Typed at the terminal (twice), or generated when there is no terminal.
    Interactive,
}

/// What `user add` did; `generated` holds a password to print once.
pub struct Added {
    pub id: UserId,
    pub generated: Option<String>,
}

/// Creates the user and records it in the audit log.
pub async fn add(
    store: &Store,
    username: &str,
    role: Role,
    source: PasswordSource,
    email: Option<&str>,
) -> anyhow::Result<Added> {
    check_username(username)?;
    let email = email.map(str::trim);
    if let Some(address) = email {
        gatehouse_actors::notify::validate_address(address)
            .map_err(|why| anyhow::anyhow!("--email {address:?}: {why}"))?;
    }
    if store.user_by_name(username.to_string()).await?.is_some() {
        bail!("a user named {username:?} already exists");
    }
    let (password, generated) = match source {
        PasswordSource::Stdin => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            (line.trim_end_matches(['\r', '\n']).to_string(), false)
        }
        PasswordSource::Interactive if std::io::stdin().is_terminal() => {
            let first = rpassword::prompt_password(format!("Password for {username}: "))
                .context("reading the password")?;
            let again = rpassword::prompt_password("Again: ").context("reading the password")?;
            if first != again {
                bail!("the passwords differ");
            }
            (first, false)
        }
        PasswordSource::Interactive => (secrets::refresh_token(), true),
    };
    let hash = Passwords::owasp()?.hash(&password).await?;
    let now = gatehouse_actors::clock::wall_ms();
    let id = UserId(uuid::Uuid::new_v4());
    store
        .create_user(UserRecord {
            id,
            username: username.to_string(),
            password_hash: hash,
            role,
            created_at_ms: now,
            disabled: false,
            email: email.map(str::to_owned),
        })
        .await?;
    store
        .audit(AuditRecord {
            at_ms: now,
            actor: "system:cli".into(),
            action: "user.create".into(),
            target: Some(format!("user:{id}")),
            source_ip: None,
            details: format!(r#"{{"username":{:?},"role":"{role}"}}"#, username),
        })
        .await?;
    Ok(Added {
        id,
        generated: generated.then_some(password),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_checked() {
        assert!(check_username("alice").is_ok());
        assert!(check_username("bob.smith@example.org").is_ok());
        assert!(check_username("").is_err());
        assert!(check_username("two words").is_err());
        assert!(check_username(&"a".repeat(65)).is_err());
    }
}
