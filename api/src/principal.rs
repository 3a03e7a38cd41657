//! Who is calling: the `Authorization: Bearer …` header resolved to a [`Caller`]. A bearer
//! that starts with the API key prefix is an API key (looked up by digest, refused once
//! revoked); anything else must be one of our access tokens, whose user must still exist and
//! be enabled. Residents carry their grants, read fresh on every request, so that a revoked
//! grant takes effect at once.

use std::sync::Arc;

use gatehouse_actors::access::{AccessStore, Principal, Role, UserId, UserRecord};
use gatehouse_actors::store::StoreError;
use warp::Filter;
use warp::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use warp::http::{HeaderValue, StatusCode};

use crate::ApiError;
use crate::auth::AuthError;
use crate::auth::secrets::{self, API_KEY_PREFIX};
use crate::auth::tokens::TokenKeys;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// For the audit log: `user:<uuid>` or `key:<uuid>`.
    pub actor: String,
    /// The user, when the caller is one (not an API key).
    pub user: Option<UserRecord>,
    /// When the credential expires, seconds since the epoch (none for API keys).
    pub expires_at: Option<u64>,
}

/// 401 with the challenge header.
pub fn unauthenticated(message: &'static str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
        .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
}

/// A store failure as an answer: 503 while the database is away, 500 otherwise.
pub fn store_error(e: StoreError) -> ApiError {
    if e.is_transient() {
        ApiError::service_unavailable("database_unavailable", "the database is unavailable; retry")
            .with_header(
                warp::http::header::RETRY_AFTER,
                HeaderValue::from_static("2"),
            )
    } else {
        ApiError::internal(e)
    }
}

/// Resolves a bearer credential.
pub async fn resolve(
    keys: &TokenKeys,
    access: &Arc<dyn AccessStore>,
    bearer: &str,
) -> Result<Caller, ApiError> {
    if bearer.starts_with(API_KEY_PREFIX) {
        let key = access
            .api_key_by_hash(secrets::digest(bearer))
            .await
            .map_err(store_error)?
            .filter(|k| k.revoked_at_ms.is_none())
            .ok_or_else(|| unauthenticated("unknown or revoked API key"))?;
        return Ok(Caller {
            principal: Principal {
                role: key.role,
                grants: Vec::new(),
                site: key.site,
            },
            actor: format!("key:{}", key.id),
            user: None,
            expires_at: None,
        });
    }
    let claims = keys.verify(bearer).map_err(|e| match e {
        AuthError::Expired => unauthenticated("the access token has expired; refresh it"),
        _ => unauthenticated("invalid access token"),
    })?;
    let id = claims
        .sub
        .parse::<uuid::Uuid>()
        .map(UserId)
        .map_err(|_| unauthenticated("invalid access token"))?;
    let mut caller = user_caller(access, id).await?;
    caller.expires_at = Some(claims.exp);
    Ok(caller)
}

/// The caller for user `id` as the store has it now: refused once the user is gone or
/// disabled; residents with their current grants.
pub async fn user_caller(access: &Arc<dyn AccessStore>, id: UserId) -> Result<Caller, ApiError> {
    let user = access
        .user(id)
        .await
        .map_err(store_error)?
        .filter(|u| !u.disabled)
        .ok_or_else(|| unauthenticated("the account no longer exists or is disabled"))?;
    let grants = if user.role == Role::Resident {
        access.grants_of(user.id).await.map_err(store_error)?
    } else {
        Vec::new()
    };
    Ok(Caller {
        principal: Principal {
            role: user.role,
            grants,
            site: None,
        },
        actor: format!("user:{}", user.id),
        user: Some(user),
        expires_at: None,
    })
}

/// The bearer credential of a request, if it has one.
pub fn bearer() -> impl Filter<Extract = (Option<String>,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>(AUTHORIZATION.as_str()).map(|h: Option<String>| {
        h.and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_string())
        })
    })
}
