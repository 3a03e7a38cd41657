//! Login, token refresh with rotation and reuse detection, logout, and "who am I".

use std::net::IpAddr;

use gatehouse_actors::access::{AuditRecord, RefreshUse, Role, UserRecord};
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
use gatehouse_actors::clock::wall_ms;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub username: String,
    #[schema(value_type = String, example = "resident")]
    pub role: Role,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    /// Unix seconds.
    pub expires_at: u64,
    pub refresh_token: String,
    pub user: UserView,
}

fn view(u: &UserRecord) -> UserView {
    UserView {
        id: u.id.to_string(),
        username: u.username.clone(),
        role: u.role,
    }
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "wrong username or password",
    )
}

fn invalid_refresh() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
        "unknown, used or revoked refresh token",
    )
}

/// Issues an access token and answers with it and `refresh`.
pub(crate) fn tokens(app: &App, user: &UserRecord, refresh: String) -> Outcome {
    let (access_token, expires_at) = app
        .keys
        .issue(&user.id.to_string(), user.role, wall_ms() / 1000)
        .map_err(ApiError::internal)?;
    json::reply(
        StatusCode::OK,
        &TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_at,
            refresh_token: refresh,
            user: view(user),
        },
    )
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    operation_id = "login",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 401, description = "Wrong username or password"),
        (status = 429, description = "Too many failed logins for this account or from this address; see Retry-After"),
    ),
)]
async fn login(app: App, ip: IpAddr, body: LoginRequest) -> Outcome {
    // A locked-out guesser is answered before any hashing or database work.
    app.limits
        .login_allowed(&body.username, ip)
        .await
        .map_err(|wait| rate_limited(wait, "failed logins"))?;
    let user = app
        .access
        .user_by_name(body.username.clone())
        .await
        .map_err(store_error)?;
    // Unknown users cost a hash too, so that timing does not tell which names exist.
    let ok = app
        .passwords
        .verify(
            &body.password,
            user.as_ref().map(|u| u.password_hash.as_str()),
        )
        .await
        .map_err(ApiError::internal)?;
    let user = match user {
        Some(u) if ok && !u.disabled => u,
        _ => {
            let (account, address) = app.limits.login_failed(&body.username, ip).await;
            if account || address {
                app.alerts
                    .raise(lockout_alert(&body.username, ip, account, address));
            }
            return Err(invalid_credentials());
        }
    };
    app.limits.login_succeeded(&body.username).await;
    let refresh = secrets::refresh_token();
    let now = wall_ms();
    app.access
        .start_family(user.id, secrets::digest(&refresh), now)
        .await
        .map_err(store_error)?;
    let _ = app
        .access
        .audit(AuditRecord {
            at_ms: now,
            actor: format!("user:{}", user.id),
            action: "auth.login".into(),
            target: None,
            source_ip: Some(ip.to_string()),
            details: "{}".into(),
        })
        .await;
    tokens(&app, &user, refresh)
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "auth",
    operation_id = "refresh",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new access token and a new refresh token", body = TokenResponse),
        (status = 401, description = "Unknown, revoked or reused refresh token (reuse revokes the family)"),
    ),
)]
async fn refresh(app: App, body: RefreshRequest) -> Outcome {
    let now = wall_ms();
    match app
        .access
        .use_refresh(secrets::digest(&body.refresh_token), now)
        .await
        .map_err(store_error)?
    {
        RefreshUse::Rotated { family, user } => {
            let user = app
                .access
                .user(user)
                .await
                .map_err(store_error)?
                .filter(|u| !u.disabled)
                .ok_or_else(invalid_refresh)?;
            let next = secrets::refresh_token();
            app.access
                .add_refresh(family, secrets::digest(&next), now)
                .await
                .map_err(store_error)?;
            tokens(&app, &user, next)
        }
        RefreshUse::Reused { user, .. } => {
            let _ = app
                .access
                .audit(AuditRecord {
                    at_ms: now,
                    actor: format!("user:{user}"),
                    action: "auth.refresh_reused".into(),
                    target: None,
                    source_ip: None,
                    details: "{}".into(),
                })
                .await;
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "refresh_token_reused",
                "this refresh token was already used; its session is revoked, log in again",
            ))
        }
        RefreshUse::Invalid => Err(invalid_refresh()),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    operation_id = "logout",
    request_body = RefreshRequest,
    responses((status = 204, description = "The session's refresh tokens are revoked")),
)]
async fn logout(app: App, body: RefreshRequest) -> Outcome {
    let now = wall_ms();
    // Using the token identifies its family; whatever the answer, the family ends here.
    match app
        .access
        .use_refresh(secrets::digest(&body.refresh_token), now)
        .await
        .map_err(store_error)?
    {
        RefreshUse::Rotated { family, .. } | RefreshUse::Reused { family, .. } => app
            .access
            .revoke_family(family, now)
            .await
            .map_err(store_error)?,
        RefreshUse::Invalid => {}
    }
    Ok(warp::Reply::into_response(warp::reply::with_status(
        warp::reply(),
        StatusCode::NO_CONTENT,
    )))
}

#[utoipa::path(
    get,
    path = "/api/v1/auth/me",
    tag = "auth",
    operation_id = "me",
    responses(
        (status = 200, description = "The caller", body = UserView),
        (status = 401, description = "No valid access token"),
    ),
    security(("bearer" = [])),
)]
async fn me(app: App, bearer: Option<String>) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    match &caller.user {
        Some(u) => json::reply(StatusCode::OK, &view(u)),
        None => json::reply(
            StatusCode::OK,
            &serde_json::json!({ "id": caller.actor, "role": caller.principal.role }),
        ),
    }
}

pub fn routes(app: &App) -> Vec<Route> {
    let (a, b, c, d) = (app.clone(), app.clone(), app.clone(), app.clone());
    vec![
        Route::new::<__path_login, _>(move |_p| {
            a.with()
                .and(client_ip())
                .and(json::body::<LoginRequest>())
                .then(login)
        }),
        Route::new::<__path_refresh, _>(move |_p| {
            b.with().and(json::body::<RefreshRequest>()).then(refresh)
        }),
        Route::new::<__path_logout, _>(move |_p| {
            c.with().and(json::body::<RefreshRequest>()).then(logout)
        }),
        Route::new::<__path_me, _>(move |_p| d.caller().then(me)),
    ]
}

/// A login lockout, for the notifier: the account (as typed: it may not exist) and the
/// address, keyed by whichever was locked so that a sustained attack sends one message per
/// dedupe window.
fn lockout_alert(
    username: &str,
    ip: IpAddr,
    account: bool,
    address: bool,
) -> gatehouse_actors::notify::Alert {
    // As typed by a stranger: shown, but bounded and on one line.
    let shown: String = username
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    let (subject, key) = if account {
        (format!("account {shown:?}"), format!("account:{shown}"))
    } else {
        (format!("address {ip}"), format!("address:{ip}"))
    };
    gatehouse_actors::notify::Alert {
        trigger: gatehouse_actors::notify::Trigger::LoginLockout,
        site: None,
        subject,
        key,
        at_ms: wall_ms(),
        facts: vec![
            ("Account".to_owned(), shown),
            ("From".to_owned(), ip.to_string()),
            (
                "Locked".to_owned(),
                match (account, address) {
                    (true, true) => "the account and the address",
                    (true, false) => "the account",
                    _ => "the address",
                }
                .to_owned(),
            ),
        ],
        path: None,
    }
}
