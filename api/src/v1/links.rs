//! Emailed account links: invitations (a new user chooses a first password) and password
//! resets (a user who forgot it chooses a new one). Both are one-time secrets mailed as
//! `<public_url>/console#invitation=<secret>` or `#password-reset=<secret>`; the console's
//! landing page reads the fragment, shows whose account it is (`links/inspect`) and sets the
//! password (`links/redeem`), which also signs the user in.
//!
//! The rules, and why:
//! - Only a SHA-256 digest of the secret is stored (like refresh tokens and API keys); a new
//!   link voids the user's older unused one of the same purpose, in the same transaction.
//! - A link works once, until it expires (an invitation after 7 days, a reset after an hour),
//!   and not for a disabled user. Using it ends every session of the user.
//! - Asking for a reset answers 202 whether or not the account exists or has an address, so
//!   that the endpoint does not tell which names exist; it is rate-limited per account as
//!   typed and per client address, so that nobody can fill someone's mailbox.
//! - The mail goes through the durable outbox like every notification: it survives an SMTP
//!   outage and a restart. Without `[http] public_url` there is no address to link to, and the
//!   API says so instead of mailing a broken link.

use std::net::IpAddr;

use gatehouse_actors::access::{AccountLink, AuditRecord, LinkPurpose, UserRecord};
use gatehouse_actors::clock::wall_ms;
use gatehouse_actors::notify::{Mail, link_path, render_link};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::Filter;
use warp::http::StatusCode;

use crate::app::App;
use crate::auth::secrets;
use crate::principal::store_error;
use crate::ratelimit::rate_limited;
use crate::routing::{Outcome, Route};
use crate::{ApiError, client_ip, json};

/// The longest login (username or email address) a reset request may name.
const MAX_LOGIN_CHARS: usize = 254;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The username or the email address of the account.
    #[schema(example = "alice")]
    pub login: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkToken {
    /// The secret from the link's fragment.
    pub token: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemRequest {
    /// The secret from the link's fragment.
    pub token: String,
    /// The new password: 10 to 256 characters.
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LinkView {
    /// `invitation` or `password_reset`.
    #[schema(example = "invitation")]
    pub purpose: &'static str,
    /// Whose password the link sets.
    pub username: String,
    /// Unix milliseconds.
    pub expires_at_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Always `accepted`: the answer does not tell whether the account exists.
    #[schema(example = "accepted")]
    pub status: &'static str,
}

fn link_invalid() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "link_invalid",
        "this link is unknown, already used, replaced by a newer one, or expired; ask for a new one",
    )
}

/// Without a public URL, mailed links would point nowhere.
pub(crate) fn public_url_missing() -> ApiError {
    ApiError::service_unavailable(
        "public_url_missing",
        "emailed links need the console's address: set [http] public_url in the configuration",
    )
}

/// Makes a link of `purpose` for `user`, stores it (voiding the older one) and queues its
/// mail. Answers when the link expires. The caller has checked that `user` has an address.
pub(crate) async fn send_link(
    app: &App,
    user: &UserRecord,
    purpose: LinkPurpose,
) -> Result<u64, ApiError> {
    let base = app.public_url.as_deref().ok_or_else(public_url_missing)?;
    let address = user
        .email
        .as_deref()
        .ok_or_else(|| ApiError::internal("send_link: user without an email address"))?;
    let secret = secrets::refresh_token();
    let now = wall_ms();
    let link = AccountLink {
        id: uuid::Uuid::new_v4(),
        user: user.id,
        purpose,
        digest: secrets::digest(&secret),
        created_at_ms: now,
        expires_at_ms: now + purpose.lifetime_ms(),
        used_at_ms: None,
    };
    let expires = link.expires_at_ms;
    let url = format!(
        "{}{}",
        base.trim_end_matches('/'),
        link_path(purpose, &secret)
    );
    let mail = Mail::new(
        // Unique: account mails are never folded into one another.
        format!("{}:{}", purpose.as_str(), link.id),
        address,
        &render_link(purpose, &user.username, &url, expires),
        now,
    );
    app.access.issue_link(link).await.map_err(store_error)?;
    app.notify
        .enqueue(vec![mail], 0, now)
        .await
        .map_err(store_error)?;
    Ok(expires)
}

fn check_token(token: &str) -> Result<String, ApiError> {
    // Our secrets are 43 characters of base64url; anything else cannot be one.
    if token.is_empty()
        || token.len() > 128
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(link_invalid());
    }
    Ok(secrets::digest(token))
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/password-reset",
    tag = "auth",
    operation_id = "request_password_reset",
    request_body = ResetRequest,
    responses(
        (status = 202, description = "If the account exists, is enabled and has an email address, a reset link is mailed (the answer is the same either way)", body = Accepted),
        (status = 422, description = "No login given, or one too long"),
        (status = 429, description = "Too many requests for this account or from this address; see Retry-After"),
        (status = 503, description = "No `[http] public_url` is configured, or the database is unavailable"),
    ),
)]
async fn request_reset(app: App, ip: IpAddr, body: ResetRequest) -> Outcome {
    let login = body.login.trim();
    if login.is_empty() || login.chars().count() > MAX_LOGIN_CHARS {
        return Err(super::admin::unprocessable(
            "invalid_login",
            format!("login: a username or an email address of 1 to {MAX_LOGIN_CHARS} characters"),
        )
        .with_details(serde_json::json!({ "field": "login" })));
    }
    if app.public_url.is_none() {
        return Err(public_url_missing());
    }
    app.limits
        .link_request(login, ip)
        .await
        .map_err(|wait| rate_limited(wait, "password reset requests"))?;
    let user = find_account(&app, login).await?;
    if let Some(user) = user.filter(|u| !u.disabled && u.email.is_some()) {
        // Off the answer's path, so that its timing does not tell that the account exists.
        tokio::spawn(async move {
            if let Err(e) = send_link(&app, &user, LinkPurpose::PasswordReset).await {
                tracing::warn!(user = %user.id, error = ?e, "password reset link not sent");
                return;
            }
            let _ = app
                .access
                .audit(AuditRecord {
                    at_ms: wall_ms(),
                    actor: "anonymous".into(),
                    action: "auth.password_reset_requested".into(),
                    target: Some(format!("user:{}", user.id)),
                    source_ip: Some(ip.to_string()),
                    details: "{}".into(),
                })
                .await;
        });
    }
    json::reply(StatusCode::ACCEPTED, &Accepted { status: "accepted" })
}

/// The account a login names: by username, else by email address (case-insensitive, and
/// only when exactly one account has it).
async fn find_account(app: &App, login: &str) -> Result<Option<UserRecord>, ApiError> {
    if let Some(user) = app
        .access
        .user_by_name(login.to_owned())
        .await
        .map_err(store_error)?
    {
        return Ok(Some(user));
    }
    if !login.contains('@') {
        return Ok(None);
    }
    let users = app.access.users().await.map_err(store_error)?;
    let mut matching = users.into_iter().filter(|u| {
        u.email
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case(login))
    });
    Ok(match (matching.next(), matching.next()) {
        (Some(user), None) => Some(user),
        _ => None,
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/links/inspect",
    tag = "auth",
    operation_id = "inspect_account_link",
    request_body = LinkToken,
    responses(
        (status = 200, description = "The link is good: what for, and whose", body = LinkView),
        (status = 410, description = "Unknown, used, replaced or expired (code `link_invalid`)"),
    ),
)]
async fn inspect(app: App, body: LinkToken) -> Outcome {
    let digest = check_token(&body.token)?;
    let now = wall_ms();
    match app.access.link(digest).await.map_err(store_error)? {
        Some((link, user)) if link.usable(now) && !user.disabled => json::reply(
            StatusCode::OK,
            &LinkView {
                purpose: link.purpose.as_str(),
                username: user.username,
                expires_at_ms: link.expires_at_ms,
            },
        ),
        _ => Err(link_invalid()),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/links/redeem",
    tag = "auth",
    operation_id = "redeem_account_link",
    request_body = RedeemRequest,
    responses(
        (status = 200, description = "The password is set, every other session of the user has ended, and the caller is signed in", body = super::auth::TokenResponse),
        (status = 410, description = "Unknown, used, replaced or expired (code `link_invalid`)"),
        (status = 422, description = "The password does not meet the policy (code `weak_password`)"),
    ),
)]
async fn redeem(app: App, ip: IpAddr, body: RedeemRequest) -> Outcome {
    let digest = check_token(&body.token)?;
    // Cheap refusals before the hash: a dead link, then the policy (inside `hash`).
    let now = wall_ms();
    let purpose = match app.access.link(digest.clone()).await.map_err(store_error)? {
        Some((link, user)) if link.usable(now) && !user.disabled => link.purpose,
        _ => return Err(link_invalid()),
    };
    let hash = super::admin::users::hash(&app, &body.password).await?;
    let now = wall_ms();
    let user = app
        .access
        .redeem_link(digest, hash, now)
        .await
        .map_err(store_error)?
        .ok_or_else(link_invalid)?;
    // Sessions that the old password opened are gone (revoked in the same transaction); live
    // WebSocket sessions of the user are closed too.
    app.changes
        .announce(crate::changes::AccessChange::User(user.id));
    let _ = app
        .access
        .audit(AuditRecord {
            at_ms: now,
            actor: format!("user:{}", user.id),
            action: match purpose {
                LinkPurpose::Invitation => "auth.invitation_accepted",
                LinkPurpose::PasswordReset => "auth.password_reset",
            }
            .into(),
            target: Some(format!("user:{}", user.id)),
            source_ip: Some(ip.to_string()),
            details: "{}".into(),
        })
        .await;
    app.limits.login_succeeded(&user.username).await;
    let refresh = secrets::refresh_token();
    app.access
        .start_family(user.id, secrets::digest(&refresh), now)
        .await
        .map_err(store_error)?;
    super::auth::tokens(&app, &user, refresh)
}

pub fn routes(app: &App) -> Vec<Route> {
    let (a, b, c) = (app.clone(), app.clone(), app.clone());
    vec![
        Route::new::<__path_request_reset, _>(move |_p| {
            a.with()
                .and(client_ip())
                .and(json::body::<ResetRequest>())
                .then(request_reset)
        }),
        Route::new::<__path_inspect, _>(move |_p| {
            b.with().and(json::body::<LinkToken>()).then(inspect)
        }),
        Route::new::<__path_redeem, _>(move |_p| {
            c.with()
                .and(client_ip())
                .and(json::body::<RedeemRequest>())
                .then(redeem)
        }),
    ]
}
