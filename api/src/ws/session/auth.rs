//! A session's identity: `auth` first (and re-auth with a fresh token for the same
//! identity), the auth deadline and the token's expiry, and the re-checks that follow access
//! and fleet changes (closing with 4401 or 4403 when the caller lost what it follows).

use std::time::Duration;

use gatehouse_actors::clock::wall_ms;
use gatehouse_actors::ids::GateId;
use serde_json::json;

use super::{Authed, Credential, SessionState, api_error};
use crate::auth::secrets;
use crate::policy;
use crate::principal::{self, Caller};
use crate::ws::msg::SessionMsg;
use crate::ws::protocol::{self, close};

impl SessionState {
    pub(super) async fn auth(&mut self, id: Option<&str>, token: &str) {
        let caller = match principal::resolve(&self.app.keys, &self.app.access, token).await {
            Ok(caller) => caller,
            Err(e) if e.status == warp::http::StatusCode::SERVICE_UNAVAILABLE => {
                // The database is away: the client may try again; nothing changes meanwhile.
                self.send(api_error(id, &e));
                return;
            }
            Err(e) if e.status == warp::http::StatusCode::UNAUTHORIZED => {
                self.send(api_error(id, &e));
                self.outbox
                    .close(close::UNAUTHENTICATED, "unauthenticated", true);
                return;
            }
            Err(e) => {
                // Our fault, not the credential's: do not send the client back to its login.
                self.send(api_error(id, &e));
                self.outbox.close(1011, "internal error", true);
                return;
            }
        };
        if let Some(current) = &self.auth
            && current.caller.actor != caller.actor
        {
            self.fail(
                id,
                "identity_mismatch",
                "re-authentication must be for the same user or key",
                close::UNAUTHENTICATED,
            );
            return;
        }
        // Without a user, `resolve` accepted an API key.
        let credential = match &caller.user {
            Some(user) => Credential::User(user.id),
            None => Credential::Key(secrets::digest(token)),
        };
        if let Some(d) = self.deadline.take() {
            d.abort();
        }
        if let Some(expires_at) = caller.expires_at {
            let left = Duration::from_secs(expires_at.saturating_sub(wall_ms() / 1000));
            self.deadline = Some(self.me.send_after(left, || SessionMsg::Deadline));
        }
        self.hub.identify(self.me.get_id(), &caller.actor);
        self.send(protocol::auth_ok(
            id,
            caller.expires_at,
            caller.principal.role.as_str(),
        ));
        let renewed = self.auth.is_some();
        self.auth = Some(Authed { caller, credential });
        if renewed {
            // The fresh token's user may have lost grants since the last check.
            self.drop_unreadable();
        }
    }

    /// The auth deadline passed, or the token may have expired.
    pub(super) fn deadline(&mut self) {
        match &self.auth {
            None => self.fail(
                None,
                "unauthenticated",
                "no auth message in time",
                close::UNAUTHENTICATED,
            ),
            Some(a) => {
                let now = wall_ms() / 1000;
                match a.caller.expires_at {
                    Some(exp) if exp <= now => self.fail(
                        None,
                        "token_expired",
                        "the access token expired; reconnect with a fresh one",
                        close::UNAUTHENTICATED,
                    ),
                    Some(exp) => {
                        let left = Duration::from_secs(exp - now);
                        self.deadline = Some(self.me.send_after(left, || SessionMsg::Deadline));
                    }
                    None => {}
                }
            }
        }
    }

    /// The caller's access changed: read it again; close when the account went away or a
    /// subscribed gate is no longer readable.
    pub(super) async fn recheck(&mut self) {
        let Some(authed) = &self.auth else { return };
        let fresh = match &authed.credential {
            Credential::User(id) => principal::user_caller(&self.app.access, *id).await,
            Credential::Key(digest) => {
                match self.app.access.api_key_by_hash(digest.clone()).await {
                    Ok(Some(key)) if key.revoked_at_ms.is_none() => Ok(authed.caller.clone()),
                    Ok(_) => Err(principal::unauthenticated("the API key was revoked")),
                    Err(e) => Err(principal::store_error(e)),
                }
            }
        };
        let mut caller = match fresh {
            Ok(c) => c,
            // The database is away: keep the session as it is; the next notice checks again.
            Err(e) if e.status == warp::http::StatusCode::SERVICE_UNAVAILABLE => return,
            Err(e) => {
                let message = e.message.to_string();
                self.fail(None, e.code, &message, close::UNAUTHENTICATED);
                return;
            }
        };
        // A new password means the account's owner (or an admin who suspects it is not its
        // owner) wants existing sessions to end.
        let password_changed = match (&authed.caller.user, &caller.user) {
            (Some(before), Some(now)) => before.password_hash != now.password_hash,
            _ => false,
        };
        if password_changed {
            self.fail(
                None,
                "credentials_changed",
                "the account's password changed; log in again",
                close::UNAUTHENTICATED,
            );
            return;
        }
        caller.expires_at = authed.caller.expires_at;
        if let Some(a) = &mut self.auth {
            a.caller = caller;
        }
        self.drop_unreadable();
    }

    /// Follows the fleet: subscribed gates that no longer exist are dropped (and the client
    /// told, `gate_removed`); gates that moved to another site are re-checked.
    pub(super) fn refleet(&mut self) {
        let mut removed = Vec::new();
        for (gate, sub) in self.subs.iter_mut() {
            match policy::locate(&self.app, gate) {
                Some(at) => sub.site = at.site,
                None => removed.push(gate.clone()),
            }
        }
        if !removed.is_empty() {
            self.hub.unsubscribe(self.me.get_id(), removed.iter());
            for gate in &removed {
                self.subs.remove(gate);
                self.outbox.forget(gate);
            }
            let gates: Vec<&str> = removed.iter().map(GateId::as_str).collect();
            self.error(
                None,
                "gate_removed",
                "subscribed gates were removed from the fleet; they are no longer followed",
                Some(json!({ "gates": gates })),
            );
        }
        if self.auth.is_some() {
            self.drop_unreadable();
        }
    }

    /// Closes with 4403 when the current caller may no longer read a subscribed gate.
    pub(super) fn drop_unreadable(&mut self) {
        let revoked: Vec<String> = self
            .subs
            .iter()
            .filter(|(gate, sub)| self.may_read(gate, &sub.site).is_err())
            .map(|(gate, _)| gate.to_string())
            .collect();
        if !revoked.is_empty() {
            self.error(
                None,
                "grant_revoked",
                "access to subscribed gates was revoked",
                Some(json!({ "gates": revoked })),
            );
            self.outbox
                .close(close::GRANT_REVOKED, "grant revoked", true);
        }
    }

    pub(super) fn caller(&self) -> &Caller {
        &self
            .auth
            .as_ref()
            .expect("only called once authenticated")
            .caller
    }
}
