//! Users: list, read, create (with a password hashed here), update (role, disabled, password
//! reset) and delete. A change that takes access away (role, disabled, password, deletion)
//! also revokes the user's refresh-token families, so that no session outlives it, and is
//! announced to the live sessions. The last enabled admin cannot be demoted, disabled or
//! deleted: nobody could undo it.

use std::net::IpAddr;

use gatehouse_actors::access::{LinkPurpose, NO_PASSWORD, Role, UserId, UserRecord};
use gatehouse_actors::store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use warp::Filter;
use warp::http::StatusCode;

use super::{admin, audit, no_content, unprocessable};
use crate::app::App;
use crate::auth::AuthError;
use crate::changes::AccessChange;
use crate::principal::store_error;
use crate::routing::{Outcome, PathParams, Route};
use crate::{ApiError, client_ip, json};
use gatehouse_actors::clock::wall_ms;

/// Usernames: what people type on a phone, and what appears in the audit log.
pub const MAX_USERNAME_CHARS: usize = 64;

/// Checks a username: 1..=64 characters of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_username(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if n == 0 || n > MAX_USERNAME_CHARS {
        return Err(format!(
            "a username has 1 to {MAX_USERNAME_CHARS} characters"
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        Some(c) => Err(format!("a username may not contain {c:?}")),
        None => Ok(()),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserBody {
    pub id: String,
    pub username: String,
    /// admin, operator, resident, viewer.
    #[schema(value_type = crate::wire::names::RoleName, example = "resident")]
    pub role: Role,
    pub disabled: bool,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// Where notifications reach the user, if anywhere.
    pub email: Option<String>,
    /// False while an invited user has not chosen a password yet.
    pub password_set: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserBody>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub username: String,
    /// admin, operator, resident, viewer.
    #[schema(value_type = crate::wire::names::RoleName)]
    pub role: String,
    /// 10 to 256 characters. Leave it out with `invite`.
    pub password: Option<String>,
    /// Where notifications reach the user (required with `invite`).
    #[schema(example = "ops@example.org")]
    pub email: Option<String>,
    /// Mail the user a link to choose a password (valid 7 days) instead of setting one here.
    #[serde(default)]
    pub invite: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LinkSent {
    /// `invitation` (the user has no password yet) or `password_reset`.
    #[schema(example = "invitation")]
    pub purpose: &'static str,
    /// When the mailed link stops working (Unix milliseconds).
    pub expires_at_ms: u64,
}

/// Only the fields present change; at least one must be.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[schema(value_type = Option<crate::wire::names::RoleName>)]
    pub role: Option<String>,
    pub disabled: Option<bool>,
    /// A new password (a reset): ends every session of the user.
    pub password: Option<String>,
    /// A new address for notifications; the empty string removes it.
    pub email: Option<String>,
}

/// `raw` as an address to store (trimmed), or the error naming the field.
fn email(raw: &str) -> Result<String, ApiError> {
    let raw = raw.trim();
    gatehouse_actors::notify::validate_address(raw).map_err(|why| {
        unprocessable("invalid_email", format!("email: {why}"))
            .with_details(json!({ "field": "email" }))
    })?;
    Ok(raw.to_owned())
}

fn body(u: &UserRecord) -> UserBody {
    UserBody {
        id: u.id.to_string(),
        username: u.username.clone(),
        role: u.role,
        disabled: u.disabled,
        created_at_ms: u.created_at_ms,
        email: u.email.clone(),
        password_set: u.password_set(),
    }
}

fn unknown_user(raw: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_user",
        format!("no user {raw}"),
    )
    .with_details(json!({ "user": raw }))
}

/// The `{user}` path parameter (an id that is not a UUID names no user).
pub(super) fn user_param(params: &PathParams) -> Result<UserId, ApiError> {
    let raw = params.get("user")?;
    raw.parse::<uuid::Uuid>()
        .map(UserId)
        .map_err(|_| unknown_user(raw))
}

/// The user `id`, or 404.
pub(super) async fn find_user(app: &App, id: UserId) -> Result<UserRecord, ApiError> {
    app.access
        .user(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| unknown_user(&id.to_string()))
}

fn parse_role(raw: &str) -> Result<Role, ApiError> {
    raw.parse::<Role>()
        .map_err(|e| unprocessable("invalid_role", e).with_details(json!({ "field": "role" })))
}

pub(crate) async fn hash(app: &App, password: &str) -> Result<String, ApiError> {
    app.passwords.hash(password).await.map_err(|e| match e {
        AuthError::WeakPassword(why) => unprocessable("weak_password", format!("password: {why}"))
            .with_details(json!({ "field": "password" })),
        other => ApiError::internal(other),
    })
}

/// Refuses a change that would leave no enabled admin.
async fn keep_an_admin(
    app: &App,
    before: &UserRecord,
    after: Option<&UserRecord>,
) -> Result<(), ApiError> {
    let was = before.role == Role::Admin && !before.disabled;
    let stays = after.is_some_and(|u| u.role == Role::Admin && !u.disabled);
    if !was || stays {
        return Ok(());
    }
    let admins = app
        .access
        .users()
        .await
        .map_err(store_error)?
        .iter()
        .filter(|u| u.role == Role::Admin && !u.disabled)
        .count();
    if admins <= 1 {
        return Err(ApiError::conflict(
            "last_admin",
            "this is the last enabled admin; make another admin first",
        )
        .with_details(json!({ "user": before.id.to_string() })));
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    operation_id = "list_users",
    responses(
        (status = 200, description = "Every user, by username", body = UserList),
        (status = 403, description = "Not an admin"),
    ),
    security(("bearer" = [])),
)]
async fn list(app: App, bearer: Option<String>) -> Outcome {
    admin(&app, bearer).await?;
    let users = app.access.users().await.map_err(store_error)?;
    json::reply(
        StatusCode::OK,
        &UserList {
            users: users.iter().map(body).collect(),
        },
    )
}

#[utoipa::path(
    get,
    path = "/api/v1/users/{user}",
    tag = "users",
    operation_id = "get_user",
    params(("user" = String, Path, description = "User id (UUID)")),
    responses(
        (status = 200, description = "The user", body = UserBody),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such user"),
    ),
    security(("bearer" = [])),
)]
async fn get(params: PathParams, app: App, bearer: Option<String>) -> Outcome {
    admin(&app, bearer).await?;
    let user = find_user(&app, user_param(&params)?).await?;
    json::reply(StatusCode::OK, &body(&user))
}

#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    operation_id = "create_user",
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserBody),
        (status = 403, description = "Not an admin"),
        (status = 409, description = "The username is taken"),
        (status = 422, description = "Invalid username, role or password"),
    ),
    security(("bearer" = [])),
)]
async fn create(app: App, bearer: Option<String>, ip: IpAddr, request: CreateUser) -> Outcome {
    let caller = admin(&app, bearer).await?;
    check_username(&request.username).map_err(|why| {
        unprocessable("invalid_username", why).with_details(json!({ "field": "username" }))
    })?;
    let role = parse_role(&request.role)?;
    let address = request.email.as_deref().map(email).transpose()?;
    let password_hash = match (&request.password, request.invite) {
        (Some(password), false) => hash(&app, password).await?,
        (None, true) => {
            if address.is_none() {
                return Err(unprocessable(
                    "email_required",
                    "an invitation is mailed: give the user an email address",
                )
                .with_details(json!({ "field": "email" })));
            }
            if app.public_url.is_none() {
                return Err(super::super::links::public_url_missing());
            }
            NO_PASSWORD.to_owned()
        }
        (Some(_), true) => {
            return Err(unprocessable(
                "invalid_body",
                "give either a password or `invite`, not both",
            )
            .with_details(json!({ "field": "password" })));
        }
        (None, false) => {
            return Err(unprocessable(
                "invalid_body",
                "a password is required (or `invite: true` to mail the user a link)",
            )
            .with_details(json!({ "field": "password" })));
        }
    };
    let taken = || {
        ApiError::conflict("username_taken", "a user with this name exists")
            .with_details(json!({ "username": request.username }))
    };
    if app
        .access
        .user_by_name(request.username.clone())
        .await
        .map_err(store_error)?
        .is_some()
    {
        return Err(taken());
    }
    let user = UserRecord {
        id: UserId(uuid::Uuid::new_v4()),
        username: request.username.clone(),
        password_hash,
        role,
        created_at_ms: wall_ms(),
        disabled: false,
        email: address,
    };
    app.access
        .create_user(user.clone())
        .await
        .map_err(|e| match e {
            // Taken by a concurrent request since the check.
            StoreError::Rejected(_) => taken(),
            other => store_error(other),
        })?;
    audit(
        &app,
        &caller,
        ip,
        "user.create",
        format!("user:{}", user.id),
        json!({ "username": user.username, "role": role, "invited": request.invite }),
    )
    .await;
    if request.invite {
        // The user exists either way; a failure here is answered, and the admin can send the
        // invitation again.
        super::super::links::send_link(&app, &user, LinkPurpose::Invitation).await?;
    }
    json::reply(StatusCode::CREATED, &body(&user))
}

#[utoipa::path(
    patch,
    path = "/api/v1/users/{user}",
    tag = "users",
    operation_id = "update_user",
    params(("user" = String, Path, description = "User id (UUID)")),
    request_body = UpdateUser,
    responses(
        (status = 200, description = "The updated user", body = UserBody),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such user"),
        (status = 409, description = "It would leave no enabled admin"),
        (status = 422, description = "Nothing to change, or an invalid role or password"),
    ),
    security(("bearer" = [])),
)]
async fn update(
    params: PathParams,
    app: App,
    bearer: Option<String>,
    ip: IpAddr,
    request: UpdateUser,
) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let before = find_user(&app, user_param(&params)?).await?;
    if request.role.is_none()
        && request.disabled.is_none()
        && request.password.is_none()
        && request.email.is_none()
    {
        return Err(unprocessable(
            "empty_update",
            "name at least one of role, disabled, password, email",
        ));
    }
    let mut after = before.clone();
    let mut changes = serde_json::Map::new();
    if let Some(raw) = &request.role {
        after.role = parse_role(raw)?;
        if after.role != before.role {
            changes.insert(
                "role".into(),
                json!({ "from": before.role, "to": after.role }),
            );
        }
    }
    if let Some(disabled) = request.disabled
        && disabled != before.disabled
    {
        after.disabled = disabled;
        changes.insert("disabled".into(), json!(disabled));
    }
    if let Some(raw) = &request.email {
        after.email = if raw.trim().is_empty() {
            None
        } else {
            Some(email(raw)?)
        };
        if after.email != before.email {
            changes.insert("email".into(), json!(after.email));
        }
    }
    if let Some(password) = &request.password {
        after.password_hash = hash(&app, password).await?;
        changes.insert("password_reset".into(), json!(true));
    }
    keep_an_admin(&app, &before, Some(&after)).await?;
    if changes.is_empty() {
        return json::reply(StatusCode::OK, &body(&before));
    }
    app.access
        .update_user(after.clone())
        .await
        .map_err(store_error)?;
    // Less access (or a new password) ends the sessions the old state let in.
    let takes_away = after.role != before.role
        || (after.disabled && !before.disabled)
        || request.password.is_some();
    if takes_away {
        app.access
            .revoke_user_families(after.id, wall_ms())
            .await
            .map_err(store_error)?;
    }
    app.changes.announce(AccessChange::User(after.id));
    audit(
        &app,
        &caller,
        ip,
        "user.update",
        format!("user:{}", after.id),
        json!({ "username": after.username, "changes": changes, "sessions_revoked": takes_away }),
    )
    .await;
    json::reply(StatusCode::OK, &body(&after))
}

#[utoipa::path(
    post,
    path = "/api/v1/users/{user}/invitation",
    tag = "users",
    operation_id = "send_password_link",
    params(("user" = String, Path, description = "User id (UUID)")),
    responses(
        (status = 202, description = "A link to choose a password is mailed: an invitation while the user has no password, else a password reset link. Older links of that kind stop working", body = LinkSent),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such user"),
        (status = 409, description = "The user is disabled (code `user_disabled`)"),
        (status = 422, description = "The user has no email address (code `email_required`)"),
        (status = 503, description = "No `[http] public_url` is configured"),
    ),
    security(("bearer" = [])),
)]
async fn send_link(params: PathParams, app: App, bearer: Option<String>, ip: IpAddr) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let user = find_user(&app, user_param(&params)?).await?;
    if user.disabled {
        return Err(ApiError::conflict(
            "user_disabled",
            "the user is disabled; enable it first",
        ));
    }
    if user.email.is_none() {
        return Err(unprocessable(
            "email_required",
            "the user has no email address; set one first",
        )
        .with_details(json!({ "field": "email" })));
    }
    let purpose = if user.password_set() {
        LinkPurpose::PasswordReset
    } else {
        LinkPurpose::Invitation
    };
    let expires_at_ms = super::super::links::send_link(&app, &user, purpose).await?;
    audit(
        &app,
        &caller,
        ip,
        "user.password_link",
        format!("user:{}", user.id),
        json!({ "purpose": purpose.as_str() }),
    )
    .await;
    json::reply(
        StatusCode::ACCEPTED,
        &LinkSent {
            purpose: purpose.as_str(),
            expires_at_ms,
        },
    )
}

#[utoipa::path(
    delete,
    path = "/api/v1/users/{user}",
    tag = "users",
    operation_id = "delete_user",
    params(("user" = String, Path, description = "User id (UUID)")),
    responses(
        (status = 204, description = "Deleted, with its grants and sessions"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such user"),
        (status = 409, description = "It is the last enabled admin"),
    ),
    security(("bearer" = [])),
)]
async fn delete(params: PathParams, app: App, bearer: Option<String>, ip: IpAddr) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let user = find_user(&app, user_param(&params)?).await?;
    keep_an_admin(&app, &user, None).await?;
    // Grants and refresh-token families go with the user (ON DELETE CASCADE); revoking first
    // still ends the sessions should the deletion fail halfway.
    app.access
        .revoke_user_families(user.id, wall_ms())
        .await
        .map_err(store_error)?;
    if !app.access.delete_user(user.id).await.map_err(store_error)? {
        return Err(unknown_user(&user.id.to_string()));
    }
    app.changes.announce(AccessChange::User(user.id));
    audit(
        &app,
        &caller,
        ip,
        "user.delete",
        format!("user:{}", user.id),
        json!({ "username": user.username, "role": user.role }),
    )
    .await;
    no_content()
}

pub fn routes(app: &App) -> Vec<Route> {
    let (a, b, c, d, e, f) = (
        app.clone(),
        app.clone(),
        app.clone(),
        app.clone(),
        app.clone(),
        app.clone(),
    );
    vec![
        Route::new::<__path_list, _>(move |_p| a.caller().then(list)),
        Route::new::<__path_get, _>(move |p| p.and(b.caller()).then(get)),
        Route::new::<__path_create, _>(move |_p| {
            c.caller()
                .and(client_ip())
                .and(json::body::<CreateUser>())
                .then(create)
        }),
        Route::new::<__path_update, _>(move |p| {
            p.and(d.caller())
                .and(client_ip())
                .and(json::body::<UpdateUser>())
                .then(update)
        }),
        Route::new::<__path_delete, _>(move |p| p.and(e.caller()).and(client_ip()).then(delete)),
        Route::new::<__path_send_link, _>(move |p| {
            p.and(f.caller()).and(client_ip()).then(send_link)
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::check_username;

    #[test]
    fn usernames_are_short_and_plain() {
        for ok in ["alice", "a.b_c-d@e", "Zoë", "x"] {
            assert_eq!(check_username(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in ["", "with space", "semi;colon", long.as_str()] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
    }
}
