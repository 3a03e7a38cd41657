//! A user's grants: access to one gate or a whole site, optionally limited to weekly time
//! windows (in the site's time zone). Grants matter for residents; other roles' access comes
//! from the role alone. Every change is announced, so that a live session loses a revoked
//! grant at once.

use std::net::IpAddr;

use gatehouse_actors::access::{Grant, GrantScope, WeeklyWindow};
use gatehouse_actors::ids::{GateId, SiteId};
use gatehouse_actors::store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use warp::Filter;
use warp::http::StatusCode;

use super::users::{find_user, user_param};
use super::{admin, audit, no_content, unprocessable};
use crate::app::App;
use crate::changes::AccessChange;
use crate::principal::store_error;
use crate::routing::{Outcome, PathParams, Route};
use crate::{ApiError, client_ip, json};
use gatehouse_actors::clock::wall_ms;

/// Windows per grant, at most: a week has seven days.
pub const MAX_WINDOWS: usize = 32;

/// A weekly window: on `days` (bit 0 = Monday … bit 6 = Sunday), from `start` to `end`
/// minutes after midnight, site time; `end` ≤ `start` runs past midnight.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowBody {
    #[schema(example = 31)]
    pub days: u8,
    #[schema(example = 360)]
    pub start: u16,
    #[schema(example = 540)]
    pub end: u16,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GrantBody {
    pub id: String,
    pub user: String,
    /// The gate granted, or null for a site grant.
    pub gate: Option<String>,
    /// The site granted, or null for a gate grant.
    pub site: Option<String>,
    /// Empty: at any time.
    pub windows: Vec<WindowBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GrantList {
    pub grants: Vec<GrantBody>,
}

/// Exactly one of `gate` and `site`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGrant {
    #[schema(value_type = Option<String>)]
    pub gate: Option<GateId>,
    #[schema(value_type = Option<String>)]
    pub site: Option<SiteId>,
    #[serde(default)]
    pub windows: Vec<WindowBody>,
}

fn body(g: &Grant) -> GrantBody {
    let (gate, site) = match &g.scope {
        GrantScope::Gate(id) => (Some(id.to_string()), None),
        GrantScope::Site(id) => (None, Some(id.to_string())),
    };
    GrantBody {
        id: g.id.to_string(),
        user: g.user.to_string(),
        gate,
        site,
        windows: g
            .windows
            .iter()
            .map(|w| WindowBody {
                days: w.days,
                start: w.start,
                end: w.end,
            })
            .collect(),
    }
}

fn unknown_grant(raw: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_grant",
        format!("this user has no grant {raw}"),
    )
    .with_details(json!({ "grant": raw }))
}

/// The scope asked for, checked against the fleet.
async fn scope(app: &App, request: &CreateGrant) -> Result<GrantScope, ApiError> {
    let scope = match (&request.gate, &request.site) {
        (Some(gate), None) => GrantScope::Gate(gate.clone()),
        (None, Some(site)) => GrantScope::Site(site.clone()),
        _ => {
            return Err(unprocessable(
                "invalid_scope",
                "a grant names exactly one of gate and site",
            ));
        }
    };
    // Without a configuration to read (a fleet without a store), the database still refuses
    // unknown references.
    if let Some(records) = app.fleet.records().await {
        match &scope {
            GrantScope::Gate(g) if !records.gates.iter().any(|r| &r.id == g) => {
                return Err(unprocessable("unknown_gate", format!("no gate {g}"))
                    .with_details(json!({ "field": "gate", "gate": g })));
            }
            GrantScope::Site(s) if !records.sites.iter().any(|r| &r.id == s) => {
                return Err(unprocessable("unknown_site", format!("no site {s}"))
                    .with_details(json!({ "field": "site", "site": s })));
            }
            _ => {}
        }
    }
    Ok(scope)
}

fn windows(request: &CreateGrant) -> Result<Vec<WeeklyWindow>, ApiError> {
    if request.windows.len() > MAX_WINDOWS {
        return Err(unprocessable(
            "invalid_window",
            format!("at most {MAX_WINDOWS} windows per grant"),
        )
        .with_details(json!({ "field": "windows" })));
    }
    request
        .windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let window = WeeklyWindow {
                days: w.days,
                start: w.start,
                end: w.end,
            };
            window.validate().map_err(|why| {
                unprocessable("invalid_window", format!("windows[{i}]: {why}"))
                    .with_details(json!({ "field": format!("windows[{i}]") }))
            })?;
            Ok(window)
        })
        .collect()
}

#[utoipa::path(
    get,
    path = "/api/v1/users/{user}/grants",
    tag = "users",
    operation_id = "list_grants",
    params(("user" = String, Path, description = "User id (UUID)")),
    responses(
        (status = 200, description = "The user's grants, oldest first", body = GrantList),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such user"),
    ),
    security(("bearer" = [])),
)]
async fn list(params: PathParams, app: App, bearer: Option<String>) -> Outcome {
    admin(&app, bearer).await?;
    let user = find_user(&app, user_param(&params)?).await?;
    let grants = app.access.grants_of(user.id).await.map_err(store_error)?;
    json::reply(
        StatusCode::OK,
        &GrantList {
            grants: grants.iter().map(body).collect(),
        },
    )
}

#[utoipa::path(
    post,
    path = "/api/v1/users/{user}/grants",
    tag = "users",
    operation_id = "create_grant",
    params(("user" = String, Path, description = "User id (UUID)")),
    request_body = CreateGrant,
    responses(
        (status = 201, description = "Granted", body = GrantBody),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such user"),
        (status = 422, description = "Not exactly one of gate and site, an unknown gate or site, or an invalid window"),
    ),
    security(("bearer" = [])),
)]
async fn create(
    params: PathParams,
    app: App,
    bearer: Option<String>,
    ip: IpAddr,
    request: CreateGrant,
) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let user = find_user(&app, user_param(&params)?).await?;
    let scope = scope(&app, &request).await?;
    let grant = Grant {
        id: uuid::Uuid::new_v4(),
        user: user.id,
        scope,
        windows: windows(&request)?,
    };
    app.access
        .create_grant(grant.clone(), wall_ms())
        .await
        .map_err(|e| match e {
            // A reference that went away since it was checked.
            StoreError::Rejected(why) => unprocessable("invalid_grant", why),
            other => store_error(other),
        })?;
    app.changes.announce(AccessChange::User(user.id));
    let created = body(&grant);
    audit(
        &app,
        &caller,
        ip,
        "grant.create",
        format!("user:{}", user.id),
        json!({
            "grant": created.id,
            "username": user.username,
            "gate": created.gate,
            "site": created.site,
            "windows": created.windows,
        }),
    )
    .await;
    json::reply(StatusCode::CREATED, &created)
}

#[utoipa::path(
    delete,
    path = "/api/v1/users/{user}/grants/{grant}",
    tag = "users",
    operation_id = "delete_grant",
    params(
        ("user" = String, Path, description = "User id (UUID)"),
        ("grant" = String, Path, description = "Grant id (UUID)"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such user, or the user has no such grant"),
    ),
    security(("bearer" = [])),
)]
async fn delete(params: PathParams, app: App, bearer: Option<String>, ip: IpAddr) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let user = find_user(&app, user_param(&params)?).await?;
    let raw = params.get("grant")?;
    let id = raw.parse::<uuid::Uuid>().map_err(|_| unknown_grant(raw))?;
    let grants = app.access.grants_of(user.id).await.map_err(store_error)?;
    let grant = grants
        .iter()
        .find(|g| g.id == id)
        .ok_or_else(|| unknown_grant(raw))?;
    if !app.access.delete_grant(id).await.map_err(store_error)? {
        return Err(unknown_grant(raw));
    }
    app.changes.announce(AccessChange::User(user.id));
    let deleted = body(grant);
    audit(
        &app,
        &caller,
        ip,
        "grant.delete",
        format!("user:{}", user.id),
        json!({
            "grant": deleted.id,
            "username": user.username,
            "gate": deleted.gate,
            "site": deleted.site,
        }),
    )
    .await;
    no_content()
}

pub fn routes(app: &App) -> Vec<Route> {
    let (a, b, c) = (app.clone(), app.clone(), app.clone());
    vec![
        Route::new::<__path_list, _>(move |p| p.and(a.caller()).then(list)),
        Route::new::<__path_create, _>(move |p| {
            p.and(b.caller())
                .and(client_ip())
                .and(json::body::<CreateGrant>())
                .then(create)
        }),
        Route::new::<__path_delete, _>(move |p| p.and(c.caller()).and(client_ip()).then(delete)),
    ]
}
