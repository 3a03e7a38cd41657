//! API keys for integrations: a role and optionally a site. The secret is shown once, when
//! the key is created; only its digest is stored, and listings never show it. A key is an
//! admin key only when asked for with `confirm_admin` (CONTRACTS.md "Roles": never admin
//! unless created so on purpose). Revoking is announced, so that live sessions end.

use std::net::IpAddr;

use gatehouse_actors::access::{ApiKeyRecord, Role};
use gatehouse_actors::ids::SiteId;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use warp::Filter;
use warp::http::StatusCode;

use super::{admin, audit, no_content, unprocessable};
use crate::app::App;
use crate::auth::secrets;
use crate::changes::AccessChange;
use crate::principal::store_error;
use crate::routing::{Outcome, PathParams, Route};
use crate::{ApiError, client_ip, json};
use gatehouse_actors::clock::wall_ms;

/// A key's name says what uses it (`"parking-barrier-sync"`); it is not secret.
pub const MAX_KEY_NAME_CHARS: usize = 100;

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyBody {
    pub id: String,
    pub name: String,
    #[schema(value_type = crate::wire::names::RoleName, example = "operator")]
    pub role: Role,
    /// The only site the key may act on, or null for all.
    pub site: Option<String>,
    pub created_at_ms: u64,
    /// Null while the key is valid.
    pub revoked_at_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub api_keys: Vec<KeyBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    pub api_key: KeyBody,
    /// The secret, to send as `Authorization: Bearer …`. Shown this once only.
    pub secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    /// operator, viewer, resident (useless without grants), or admin with `confirm_admin`.
    #[schema(value_type = crate::wire::names::RoleName)]
    pub role: String,
    #[schema(value_type = Option<String>)]
    pub site: Option<SiteId>,
    /// Must be true for an admin key.
    #[serde(default)]
    pub confirm_admin: bool,
}

fn body(k: &ApiKeyRecord) -> KeyBody {
    KeyBody {
        id: k.id.to_string(),
        name: k.name.clone(),
        role: k.role,
        site: k.site.as_ref().map(SiteId::to_string),
        created_at_ms: k.created_at_ms,
        revoked_at_ms: k.revoked_at_ms,
    }
}

fn unknown_key(raw: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_api_key",
        format!("no API key {raw}"),
    )
    .with_details(json!({ "api_key": raw }))
}

#[utoipa::path(
    get,
    path = "/api/v1/api-keys",
    tag = "api-keys",
    operation_id = "list_api_keys",
    responses(
        (status = 200, description = "Every key, revoked ones included; never the secrets", body = KeyList),
        (status = 403, description = "Not an admin"),
    ),
    security(("bearer" = [])),
)]
async fn list(app: App, bearer: Option<String>) -> Outcome {
    admin(&app, bearer).await?;
    let keys = app.access.api_keys().await.map_err(store_error)?;
    json::reply(
        StatusCode::OK,
        &KeyList {
            api_keys: keys.iter().map(body).collect(),
        },
    )
}

#[utoipa::path(
    post,
    path = "/api/v1/api-keys",
    tag = "api-keys",
    operation_id = "create_api_key",
    request_body = CreateKey,
    responses(
        (status = 201, description = "Created; the secret is in this answer only", body = CreatedKey),
        (status = 403, description = "Not an admin"),
        (status = 422, description = "Invalid name or role, an admin key without confirm_admin, or an unknown site"),
    ),
    security(("bearer" = [])),
)]
async fn create(app: App, bearer: Option<String>, ip: IpAddr, request: CreateKey) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > MAX_KEY_NAME_CHARS {
        return Err(unprocessable(
            "invalid_name",
            format!("a key's name has 1 to {MAX_KEY_NAME_CHARS} characters"),
        )
        .with_details(json!({ "field": "name" })));
    }
    let role = request
        .role
        .parse::<Role>()
        .map_err(|e| unprocessable("invalid_role", e).with_details(json!({ "field": "role" })))?;
    if role == Role::Admin && !request.confirm_admin {
        return Err(unprocessable(
            "admin_key_unconfirmed",
            "an admin key can do anything; set confirm_admin to true to create one",
        )
        .with_details(json!({ "field": "confirm_admin" })));
    }
    if let (Some(site), Some(records)) = (&request.site, app.fleet.records().await)
        && !records.sites.iter().any(|s| &s.id == site)
    {
        return Err(unprocessable("unknown_site", format!("no site {site}"))
            .with_details(json!({ "field": "site", "site": site })));
    }
    let secret = secrets::api_key();
    let key = ApiKeyRecord {
        id: uuid::Uuid::new_v4(),
        name: name.to_string(),
        hash: secrets::digest(&secret),
        role,
        site: request.site.clone(),
        created_at_ms: wall_ms(),
        revoked_at_ms: None,
    };
    app.access
        .create_api_key(key.clone())
        .await
        .map_err(store_error)?;
    audit(
        &app,
        &caller,
        ip,
        "api_key.create",
        format!("key:{}", key.id),
        json!({ "name": key.name, "role": role, "site": key.site }),
    )
    .await;
    json::reply(
        StatusCode::CREATED,
        &CreatedKey {
            api_key: body(&key),
            secret,
        },
    )
}

#[utoipa::path(
    delete,
    path = "/api/v1/api-keys/{key}",
    tag = "api-keys",
    operation_id = "revoke_api_key",
    params(("key" = String, Path, description = "API key id (UUID)")),
    responses(
        (status = 204, description = "Revoked (also when it already was)"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such key"),
    ),
    security(("bearer" = [])),
)]
async fn revoke(params: PathParams, app: App, bearer: Option<String>, ip: IpAddr) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let raw = params.get("key")?;
    let id = raw.parse::<uuid::Uuid>().map_err(|_| unknown_key(raw))?;
    let key = app
        .access
        .api_keys()
        .await
        .map_err(store_error)?
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| unknown_key(raw))?;
    if key.revoked_at_ms.is_some() {
        return no_content();
    }
    app.access
        .revoke_api_key(id, wall_ms())
        .await
        .map_err(store_error)?;
    app.changes.announce(AccessChange::ApiKey(id));
    audit(
        &app,
        &caller,
        ip,
        "api_key.revoke",
        format!("key:{id}"),
        json!({ "name": key.name, "role": key.role }),
    )
    .await;
    no_content()
}

pub fn routes(app: &App) -> Vec<Route> {
    let (a, b, c) = (app.clone(), app.clone(), app.clone());
    vec![
        Route::new::<__path_list, _>(move |_p| a.caller().then(list)),
        Route::new::<__path_create, _>(move |_p| {
            b.caller()
                .and(client_ip())
                .and(json::body::<CreateKey>())
                .then(create)
        }),
        Route::new::<__path_revoke, _>(move |p| p.and(c.caller()).and(client_ip()).then(revoke)),
    ]
}
