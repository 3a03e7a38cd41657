//! The fleet configuration: sites, controllers and gates as records, read from and changed
//! through the running fleet (`Fleet::records`, `Fleet::configure`), which validates the whole
//! configuration with the runtime's catalog, persists the change in one transaction and
//! restarts only the controller subtrees it touches. Invalid configurations are refused with
//! 422 and the validator's words; nothing is changed then.
//!
//! Paths are under `/api/v1/config/` because `/api/v1/gates` is the gates' live state.
//! `PUT` replaces a record whole (ids are fixed; to rename, create and delete). Removing a
//! site that has controllers, or a controller that has gates, is refused with 409, unless a
//! controller is removed with `?cascade=true`, which removes its gates in the same change.
//! Grants (and site-scoped API keys) die with their gate or site; their holders are told.

use std::net::IpAddr;

use gatehouse_actors::access::{GrantScope, UserId};
use gatehouse_actors::fleet::FleetError;
use gatehouse_actors::ids::{ControllerId, GateId, SiteId};
use gatehouse_actors::store::{
    ControllerRecord, FleetChange, FleetRecords, GateRecord, SiteRecord, StoreError,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::http::StatusCode;

use super::{admin, audit, no_content, unprocessable};
use crate::principal::{Caller, store_error};
use crate::routing::{Outcome, PathParams, Route};
use crate::v1::App;
use crate::v1::changes::AccessChange;
use crate::{ApiError, client_ip, json};

/// A gate's travel timeout when none is given (as in the fleet file).
pub const DEFAULT_TRAVEL_TIMEOUT_S: u64 = 60;

// ---- wire types ----------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct SiteBody {
    pub id: String,
    pub name: String,
    /// IANA time zone; grants' windows are read in it.
    pub timezone: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SiteList {
    pub sites: Vec<SiteBody>,
}

/// A site. `id` is required to create and, if present, must match the path to replace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteInput {
    #[schema(value_type = Option<String>)]
    pub id: Option<SiteId>,
    pub name: String,
    /// Default UTC.
    pub timezone: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ControllerBody {
    pub id: String,
    pub site: String,
    /// A register profile id (file stem).
    pub profile: String,
    /// `host:port` of the Modbus TCP endpoint.
    pub endpoint: String,
    pub request_timeout_ms: Option<u64>,
    pub inter_frame_delay_ms: Option<u64>,
    pub poll_interval_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ControllerList {
    pub controllers: Vec<ControllerBody>,
}

/// A controller. `id` is required to create and, if present, must match the path to replace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControllerInput {
    #[schema(value_type = Option<String>)]
    pub id: Option<ControllerId>,
    #[schema(value_type = String)]
    pub site: SiteId,
    pub profile: String,
    pub endpoint: String,
    pub request_timeout_ms: Option<u64>,
    pub inter_frame_delay_ms: Option<u64>,
    pub poll_interval_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GateConfigBody {
    pub id: String,
    pub controller: String,
    /// Modbus unit id on the controller (1..=247).
    pub unit: u8,
    pub name: String,
    pub travel_timeout_s: u64,
    pub auto_close_after_s: Option<u64>,
    pub left_open_alert_after_s: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GateConfigList {
    pub gates: Vec<GateConfigBody>,
}

/// A gate. `id` is required to create and, if present, must match the path to replace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GateInput {
    #[schema(value_type = Option<String>)]
    pub id: Option<GateId>,
    #[schema(value_type = String)]
    pub controller: ControllerId,
    pub unit: u8,
    #[serde(default)]
    pub name: String,
    /// Default 60.
    pub travel_timeout_s: Option<u64>,
    pub auto_close_after_s: Option<u64>,
    pub left_open_alert_after_s: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RemoveControllerQuery {
    /// Also remove the controller's gates (and the grants on them).
    pub cascade: Option<bool>,
}

fn site_body(s: &SiteRecord) -> SiteBody {
    SiteBody {
        id: s.id.to_string(),
        name: s.name.clone(),
        timezone: s.timezone.clone(),
    }
}

fn controller_body(c: &ControllerRecord) -> ControllerBody {
    ControllerBody {
        id: c.id.to_string(),
        site: c.site.to_string(),
        profile: c.profile.clone(),
        endpoint: c.endpoint.clone(),
        request_timeout_ms: c.request_timeout_ms,
        inter_frame_delay_ms: c.inter_frame_delay_ms,
        poll_interval_ms: c.poll_interval_ms,
    }
}

fn gate_body(g: &GateRecord) -> GateConfigBody {
    GateConfigBody {
        id: g.id.to_string(),
        controller: g.controller.to_string(),
        unit: g.unit,
        name: g.name.clone(),
        travel_timeout_s: g.travel_timeout_s,
        auto_close_after_s: g.auto_close_after_s,
        left_open_alert_after_s: g.left_open_alert_after_s,
    }
}

// ---- shared --------------------------------------------------------------------------------

/// What a record kind is called in codes, messages and audit targets.
#[derive(Clone, Copy)]
enum Kind {
    Site,
    Controller,
    Gate,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Site => "site",
            Kind::Controller => "controller",
            Kind::Gate => "gate",
        }
    }

    fn unknown(self, id: &str) -> ApiError {
        let code = match self {
            Kind::Site => "unknown_site",
            Kind::Controller => "unknown_controller",
            Kind::Gate => "unknown_gate",
        };
        let name = self.name();
        ApiError::new(StatusCode::NOT_FOUND, code, format!("no {name} {id}"))
            .with_details(json!({ name: id }))
    }

    /// A body naming a record that does not exist: 422, the request is not the problem's
    /// address.
    fn unknown_reference(self, id: &str) -> ApiError {
        let mut e = self.unknown(id);
        e.status = StatusCode::UNPROCESSABLE_ENTITY;
        e.details["field"] = json!(self.name());
        e
    }

    fn exists(self, id: &str) -> ApiError {
        let code = match self {
            Kind::Site => "site_exists",
            Kind::Controller => "controller_exists",
            Kind::Gate => "gate_exists",
        };
        let name = self.name();
        ApiError::conflict(code, format!("{name} {id} exists; PUT replaces it"))
            .with_details(json!({ name: id }))
    }

    fn audit_action(self, verb: &str) -> String {
        format!("config.{}.{verb}", self.name())
    }
}

/// The running configuration.
async fn records(app: &App) -> Result<FleetRecords, ApiError> {
    app.fleet.records().await.ok_or_else(not_configurable)
}

fn not_configurable() -> ApiError {
    ApiError::service_unavailable(
        "fleet_not_configurable",
        "this runtime has no store to keep configuration changes",
    )
}

/// Applies `changes` to the live fleet.
async fn configure(app: &App, changes: Vec<FleetChange>) -> Result<(), ApiError> {
    app.fleet.configure(changes).await.map_err(|e| match e {
        FleetError::Invalid(why) => unprocessable(
            "invalid_configuration",
            format!("the configuration would be invalid: {why}"),
        )
        .with_details(json!({ "reason": why })),
        // A concurrent change got there first.
        FleetError::Store(StoreError::Rejected(why)) => {
            ApiError::conflict("configuration_conflict", why)
        }
        FleetError::Store(e) => store_error(e),
        FleetError::NotConfigurable => not_configurable(),
        other => ApiError::internal(other),
    })
}

/// The id in the body for a create: required.
fn id_to_create<T: Clone>(id: &Option<T>) -> Result<T, ApiError> {
    id.clone().ok_or_else(|| {
        unprocessable("missing_id", "name the new record's id")
            .with_details(json!({ "field": "id" }))
    })
}

/// The id in the body for a replace: absent, or the path's.
fn same_id<T: PartialEq + std::fmt::Display>(body: &Option<T>, path: &T) -> Result<(), ApiError> {
    match body {
        Some(id) if id != path => Err(unprocessable(
            "id_mismatch",
            format!("the body names {id} but the path {path}; ids cannot change"),
        )
        .with_details(json!({ "field": "id" }))),
        _ => Ok(()),
    }
}

fn path_id<T: std::str::FromStr>(params: &PathParams, kind: Kind) -> Result<T, ApiError> {
    let raw = params.get(kind.name())?;
    raw.parse::<T>().map_err(|_| kind.unknown(raw))
}

/// Users holding a grant that `dies` (before it is removed with its gate or site).
async fn holders(app: &App, dies: impl Fn(&GrantScope) -> bool) -> Result<Vec<UserId>, ApiError> {
    let mut out = Vec::new();
    for user in app.access.users().await.map_err(store_error)? {
        let grants = app.access.grants_of(user.id).await.map_err(store_error)?;
        if grants.iter().any(|g| dies(&g.scope)) {
            out.push(user.id);
        }
    }
    Ok(out)
}

async fn record_change(
    app: &App,
    caller: &Caller,
    ip: IpAddr,
    kind: Kind,
    verb: &str,
    id: &str,
    details: serde_json::Value,
) {
    audit(
        app,
        caller,
        ip,
        &kind.audit_action(verb),
        format!("{}:{id}", kind.name()),
        details,
    )
    .await;
}

fn check_timezone(tz: &str) -> Result<(), ApiError> {
    jiff::tz::TimeZone::get(tz).map(|_| ()).map_err(|_| {
        unprocessable(
            "invalid_timezone",
            format!("unknown time zone {tz:?} (IANA names, such as Europe/Paris)"),
        )
        .with_details(json!({ "field": "timezone" }))
    })
}

// ---- sites ---------------------------------------------------------------------------------

fn site_record(id: SiteId, input: &SiteInput) -> Result<SiteRecord, ApiError> {
    let timezone = input.timezone.clone().unwrap_or_else(|| "UTC".into());
    check_timezone(&timezone)?;
    Ok(SiteRecord {
        id,
        name: input.name.clone(),
        timezone,
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/config/sites",
    tag = "config",
    operation_id = "list_sites",
    responses(
        (status = 200, description = "Every site, by id", body = SiteList),
        (status = 403, description = "Not an admin"),
    ),
    security(("bearer" = [])),
)]
async fn list_sites(app: App, bearer: Option<String>) -> Outcome {
    admin(&app, bearer).await?;
    let mut sites: Vec<SiteBody> = records(&app).await?.sites.iter().map(site_body).collect();
    sites.sort_by(|a, b| a.id.cmp(&b.id));
    json::reply(StatusCode::OK, &SiteList { sites })
}

#[utoipa::path(
    get,
    path = "/api/v1/config/sites/{site}",
    tag = "config",
    operation_id = "get_site",
    params(("site" = String, Path, description = "Site id")),
    responses(
        (status = 200, description = "The site", body = SiteBody),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such site"),
    ),
    security(("bearer" = [])),
)]
async fn get_site(params: PathParams, app: App, bearer: Option<String>) -> Outcome {
    admin(&app, bearer).await?;
    let id: SiteId = path_id(&params, Kind::Site)?;
    let records = records(&app).await?;
    let site = records
        .sites
        .iter()
        .find(|s| s.id == id)
        .ok_or_else(|| Kind::Site.unknown(id.as_str()))?;
    json::reply(StatusCode::OK, &site_body(site))
}

#[utoipa::path(
    post,
    path = "/api/v1/config/sites",
    tag = "config",
    operation_id = "create_site",
    request_body = SiteInput,
    responses(
        (status = 201, description = "Created", body = SiteBody),
        (status = 403, description = "Not an admin"),
        (status = 409, description = "The id is taken"),
        (status = 422, description = "No id, an unknown time zone, or an invalid configuration"),
    ),
    security(("bearer" = [])),
)]
async fn create_site(app: App, bearer: Option<String>, ip: IpAddr, input: SiteInput) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let id = id_to_create(&input.id)?;
    let site = site_record(id.clone(), &input)?;
    if records(&app).await?.sites.iter().any(|s| s.id == id) {
        return Err(Kind::Site.exists(id.as_str()));
    }
    configure(&app, vec![FleetChange::UpsertSite(site.clone())]).await?;
    record_change(
        &app,
        &caller,
        ip,
        Kind::Site,
        "create",
        id.as_str(),
        json!(site),
    )
    .await;
    json::reply(StatusCode::CREATED, &site_body(&site))
}

#[utoipa::path(
    put,
    path = "/api/v1/config/sites/{site}",
    tag = "config",
    operation_id = "replace_site",
    params(("site" = String, Path, description = "Site id")),
    request_body = SiteInput,
    responses(
        (status = 200, description = "Replaced", body = SiteBody),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such site"),
        (status = 422, description = "Another id, an unknown time zone, or an invalid configuration"),
    ),
    security(("bearer" = [])),
)]
async fn replace_site(
    params: PathParams,
    app: App,
    bearer: Option<String>,
    ip: IpAddr,
    input: SiteInput,
) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let id: SiteId = path_id(&params, Kind::Site)?;
    let before = records(&app)
        .await?
        .sites
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| Kind::Site.unknown(id.as_str()))?;
    same_id(&input.id, &id)?;
    let site = site_record(id.clone(), &input)?;
    configure(&app, vec![FleetChange::UpsertSite(site.clone())]).await?;
    record_change(
        &app,
        &caller,
        ip,
        Kind::Site,
        "update",
        id.as_str(),
        json!({ "from": before, "to": site }),
    )
    .await;
    json::reply(StatusCode::OK, &site_body(&site))
}

#[utoipa::path(
    delete,
    path = "/api/v1/config/sites/{site}",
    tag = "config",
    operation_id = "delete_site",
    params(("site" = String, Path, description = "Site id")),
    responses(
        (status = 204, description = "Removed, with the grants on it and the API keys limited to it"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such site"),
        (status = 409, description = "The site still has controllers"),
    ),
    security(("bearer" = [])),
)]
async fn delete_site(params: PathParams, app: App, bearer: Option<String>, ip: IpAddr) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let id: SiteId = path_id(&params, Kind::Site)?;
    let records = records(&app).await?;
    let site = records
        .sites
        .iter()
        .find(|s| s.id == id)
        .ok_or_else(|| Kind::Site.unknown(id.as_str()))?;
    let controllers: Vec<&str> = records
        .controllers
        .iter()
        .filter(|c| c.site == id)
        .map(|c| c.id.as_str())
        .collect();
    if !controllers.is_empty() {
        return Err(ApiError::conflict(
            "site_in_use",
            format!("site {id} still has controllers; remove them first"),
        )
        .with_details(json!({ "site": id, "controllers": controllers })));
    }
    let users = holders(&app, |s| matches!(s, GrantScope::Site(x) if x == &id)).await?;
    let keys: Vec<uuid::Uuid> = app
        .access
        .api_keys()
        .await
        .map_err(store_error)?
        .into_iter()
        .filter(|k| k.site.as_ref() == Some(&id) && k.revoked_at_ms.is_none())
        .map(|k| k.id)
        .collect();
    configure(&app, vec![FleetChange::RemoveSite(id.clone())]).await?;
    for user in &users {
        app.changes.announce(AccessChange::User(*user));
    }
    for key in &keys {
        app.changes.announce(AccessChange::ApiKey(*key));
    }
    record_change(
        &app,
        &caller,
        ip,
        Kind::Site,
        "delete",
        id.as_str(),
        json!({ "site": site, "grant_holders": users, "api_keys": keys }),
    )
    .await;
    no_content()
}

// ---- controllers ---------------------------------------------------------------------------

fn controller_record(id: ControllerId, input: &ControllerInput) -> ControllerRecord {
    ControllerRecord {
        id,
        site: input.site.clone(),
        profile: input.profile.clone(),
        endpoint: input.endpoint.clone(),
        request_timeout_ms: input.request_timeout_ms,
        inter_frame_delay_ms: input.inter_frame_delay_ms,
        poll_interval_ms: input.poll_interval_ms,
    }
}

/// The site a controller names must exist.
fn site_known(records: &FleetRecords, site: &SiteId) -> Result<(), ApiError> {
    if records.sites.iter().any(|s| &s.id == site) {
        Ok(())
    } else {
        Err(Kind::Site.unknown_reference(site.as_str()))
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/config/controllers",
    tag = "config",
    operation_id = "list_controllers",
    responses(
        (status = 200, description = "Every controller, by id", body = ControllerList),
        (status = 403, description = "Not an admin"),
    ),
    security(("bearer" = [])),
)]
async fn list_controllers(app: App, bearer: Option<String>) -> Outcome {
    admin(&app, bearer).await?;
    let mut controllers: Vec<ControllerBody> = records(&app)
        .await?
        .controllers
        .iter()
        .map(controller_body)
        .collect();
    controllers.sort_by(|a, b| a.id.cmp(&b.id));
    json::reply(StatusCode::OK, &ControllerList { controllers })
}

#[utoipa::path(
    get,
    path = "/api/v1/config/controllers/{controller}",
    tag = "config",
    operation_id = "get_controller",
    params(("controller" = String, Path, description = "Controller id")),
    responses(
        (status = 200, description = "The controller", body = ControllerBody),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such controller"),
    ),
    security(("bearer" = [])),
)]
async fn get_controller(params: PathParams, app: App, bearer: Option<String>) -> Outcome {
    admin(&app, bearer).await?;
    let id: ControllerId = path_id(&params, Kind::Controller)?;
    let records = records(&app).await?;
    let c = records
        .controllers
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(|| Kind::Controller.unknown(id.as_str()))?;
    json::reply(StatusCode::OK, &controller_body(c))
}

#[utoipa::path(
    post,
    path = "/api/v1/config/controllers",
    tag = "config",
    operation_id = "create_controller",
    request_body = ControllerInput,
    responses(
        (status = 201, description = "Created and started", body = ControllerBody),
        (status = 403, description = "Not an admin"),
        (status = 409, description = "The id is taken"),
        (status = 422, description = "No id, an unknown site, or an invalid configuration (profile, endpoint, timings)"),
    ),
    security(("bearer" = [])),
)]
async fn create_controller(
    app: App,
    bearer: Option<String>,
    ip: IpAddr,
    input: ControllerInput,
) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let id = id_to_create(&input.id)?;
    let records = records(&app).await?;
    if records.controllers.iter().any(|c| c.id == id) {
        return Err(Kind::Controller.exists(id.as_str()));
    }
    site_known(&records, &input.site)?;
    let c = controller_record(id.clone(), &input);
    configure(&app, vec![FleetChange::UpsertController(c.clone())]).await?;
    record_change(
        &app,
        &caller,
        ip,
        Kind::Controller,
        "create",
        id.as_str(),
        json!(c),
    )
    .await;
    json::reply(StatusCode::CREATED, &controller_body(&c))
}

#[utoipa::path(
    put,
    path = "/api/v1/config/controllers/{controller}",
    tag = "config",
    operation_id = "replace_controller",
    params(("controller" = String, Path, description = "Controller id")),
    request_body = ControllerInput,
    responses(
        (status = 200, description = "Replaced; its subtree restarted", body = ControllerBody),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such controller"),
        (status = 422, description = "Another id, an unknown site, or an invalid configuration"),
    ),
    security(("bearer" = [])),
)]
async fn replace_controller(
    params: PathParams,
    app: App,
    bearer: Option<String>,
    ip: IpAddr,
    input: ControllerInput,
) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let id: ControllerId = path_id(&params, Kind::Controller)?;
    let records = records(&app).await?;
    let before = records
        .controllers
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(|| Kind::Controller.unknown(id.as_str()))?;
    same_id(&input.id, &id)?;
    site_known(&records, &input.site)?;
    let c = controller_record(id.clone(), &input);
    configure(&app, vec![FleetChange::UpsertController(c.clone())]).await?;
    record_change(
        &app,
        &caller,
        ip,
        Kind::Controller,
        "update",
        id.as_str(),
        json!({ "from": before, "to": c }),
    )
    .await;
    json::reply(StatusCode::OK, &controller_body(&c))
}

#[utoipa::path(
    delete,
    path = "/api/v1/config/controllers/{controller}",
    tag = "config",
    operation_id = "delete_controller",
    params(
        ("controller" = String, Path, description = "Controller id"),
        RemoveControllerQuery,
    ),
    responses(
        (status = 204, description = "Removed and stopped (with its gates, when cascading)"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such controller"),
        (status = 409, description = "The controller still has gates (and cascade was not asked for)"),
    ),
    security(("bearer" = [])),
)]
async fn delete_controller(
    params: PathParams,
    query: RemoveControllerQuery,
    app: App,
    bearer: Option<String>,
    ip: IpAddr,
) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let id: ControllerId = path_id(&params, Kind::Controller)?;
    let records = records(&app).await?;
    let c = records
        .controllers
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(|| Kind::Controller.unknown(id.as_str()))?;
    let gates: Vec<GateId> = records
        .gates
        .iter()
        .filter(|g| g.controller == id)
        .map(|g| g.id.clone())
        .collect();
    if !gates.is_empty() && !query.cascade.unwrap_or(false) {
        return Err(ApiError::conflict(
            "controller_in_use",
            format!("controller {id} still has gates; remove them first, or use ?cascade=true"),
        )
        .with_details(json!({ "controller": id, "gates": gates })));
    }
    let users = holders(
        &app,
        |s| matches!(s, GrantScope::Gate(g) if gates.contains(g)),
    )
    .await?;
    let mut changes: Vec<FleetChange> =
        gates.iter().cloned().map(FleetChange::RemoveGate).collect();
    changes.push(FleetChange::RemoveController(id.clone()));
    configure(&app, changes).await?;
    for user in &users {
        app.changes.announce(AccessChange::User(*user));
    }
    record_change(
        &app,
        &caller,
        ip,
        Kind::Controller,
        "delete",
        id.as_str(),
        json!({ "controller": c, "gates": gates, "grant_holders": users }),
    )
    .await;
    no_content()
}

// ---- gates ---------------------------------------------------------------------------------

fn gate_record(id: GateId, input: &GateInput) -> GateRecord {
    GateRecord {
        id,
        controller: input.controller.clone(),
        unit: input.unit,
        name: input.name.clone(),
        travel_timeout_s: input.travel_timeout_s.unwrap_or(DEFAULT_TRAVEL_TIMEOUT_S),
        auto_close_after_s: input.auto_close_after_s,
        left_open_alert_after_s: input.left_open_alert_after_s,
    }
}

fn controller_known(records: &FleetRecords, controller: &ControllerId) -> Result<(), ApiError> {
    if records.controllers.iter().any(|c| &c.id == controller) {
        Ok(())
    } else {
        Err(Kind::Controller.unknown_reference(controller.as_str()))
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/config/gates",
    tag = "config",
    operation_id = "list_gate_configs",
    responses(
        (status = 200, description = "Every gate's configuration, by id", body = GateConfigList),
        (status = 403, description = "Not an admin"),
    ),
    security(("bearer" = [])),
)]
async fn list_gates(app: App, bearer: Option<String>) -> Outcome {
    admin(&app, bearer).await?;
    let mut gates: Vec<GateConfigBody> = records(&app).await?.gates.iter().map(gate_body).collect();
    gates.sort_by(|a, b| a.id.cmp(&b.id));
    json::reply(StatusCode::OK, &GateConfigList { gates })
}

#[utoipa::path(
    get,
    path = "/api/v1/config/gates/{gate}",
    tag = "config",
    operation_id = "get_gate_config",
    params(("gate" = String, Path, description = "Gate id")),
    responses(
        (status = 200, description = "The gate's configuration", body = GateConfigBody),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such gate"),
    ),
    security(("bearer" = [])),
)]
async fn get_gate(params: PathParams, app: App, bearer: Option<String>) -> Outcome {
    admin(&app, bearer).await?;
    let id: GateId = path_id(&params, Kind::Gate)?;
    let records = records(&app).await?;
    let g = records
        .gates
        .iter()
        .find(|g| g.id == id)
        .ok_or_else(|| Kind::Gate.unknown(id.as_str()))?;
    json::reply(StatusCode::OK, &gate_body(g))
}

#[utoipa::path(
    post,
    path = "/api/v1/config/gates",
    tag = "config",
    operation_id = "create_gate",
    request_body = GateInput,
    responses(
        (status = 201, description = "Created; its controller's subtree restarted", body = GateConfigBody),
        (status = 403, description = "Not an admin"),
        (status = 409, description = "The id is taken"),
        (status = 422, description = "No id, an unknown controller, or an invalid configuration (unit taken or out of range, timeouts)"),
    ),
    security(("bearer" = [])),
)]
async fn create_gate(app: App, bearer: Option<String>, ip: IpAddr, input: GateInput) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let id = id_to_create(&input.id)?;
    let records = records(&app).await?;
    if records.gates.iter().any(|g| g.id == id) {
        return Err(Kind::Gate.exists(id.as_str()));
    }
    controller_known(&records, &input.controller)?;
    let g = gate_record(id.clone(), &input);
    configure(&app, vec![FleetChange::UpsertGate(g.clone())]).await?;
    record_change(
        &app,
        &caller,
        ip,
        Kind::Gate,
        "create",
        id.as_str(),
        json!(g),
    )
    .await;
    json::reply(StatusCode::CREATED, &gate_body(&g))
}

#[utoipa::path(
    put,
    path = "/api/v1/config/gates/{gate}",
    tag = "config",
    operation_id = "replace_gate",
    params(("gate" = String, Path, description = "Gate id")),
    request_body = GateInput,
    responses(
        (status = 200, description = "Replaced; the controllers involved restarted", body = GateConfigBody),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such gate"),
        (status = 422, description = "Another id, an unknown controller, or an invalid configuration"),
    ),
    security(("bearer" = [])),
)]
async fn replace_gate(
    params: PathParams,
    app: App,
    bearer: Option<String>,
    ip: IpAddr,
    input: GateInput,
) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let id: GateId = path_id(&params, Kind::Gate)?;
    let records = records(&app).await?;
    let before = records
        .gates
        .iter()
        .find(|g| g.id == id)
        .ok_or_else(|| Kind::Gate.unknown(id.as_str()))?;
    same_id(&input.id, &id)?;
    controller_known(&records, &input.controller)?;
    let g = gate_record(id.clone(), &input);
    configure(&app, vec![FleetChange::UpsertGate(g.clone())]).await?;
    record_change(
        &app,
        &caller,
        ip,
        Kind::Gate,
        "update",
        id.as_str(),
        json!({ "from": before, "to": g }),
    )
    .await;
    json::reply(StatusCode::OK, &gate_body(&g))
}

#[utoipa::path(
    delete,
    path = "/api/v1/config/gates/{gate}",
    tag = "config",
    operation_id = "delete_gate",
    params(("gate" = String, Path, description = "Gate id")),
    responses(
        (status = 204, description = "Removed, with the grants on it; its controller's subtree restarted"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such gate"),
    ),
    security(("bearer" = [])),
)]
async fn delete_gate(params: PathParams, app: App, bearer: Option<String>, ip: IpAddr) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let id: GateId = path_id(&params, Kind::Gate)?;
    let records = records(&app).await?;
    let g = records
        .gates
        .iter()
        .find(|g| g.id == id)
        .ok_or_else(|| Kind::Gate.unknown(id.as_str()))?;
    let users = holders(&app, |s| matches!(s, GrantScope::Gate(x) if x == &id)).await?;
    configure(&app, vec![FleetChange::RemoveGate(id.clone())]).await?;
    for user in &users {
        app.changes.announce(AccessChange::User(*user));
    }
    record_change(
        &app,
        &caller,
        ip,
        Kind::Gate,
        "delete",
        id.as_str(),
        json!({ "gate": g, "grant_holders": users }),
    )
    .await;
    no_content()
}

pub fn routes(app: &App) -> Vec<Route> {
    let app = app.clone();
    let a = move || app.clone();
    let (s1, s2, s3, s4, s5) = (a(), a(), a(), a(), a());
    let (c1, c2, c3, c4, c5) = (a(), a(), a(), a(), a());
    let (g1, g2, g3, g4, g5) = (a(), a(), a(), a(), a());
    vec![
        Route::new::<__path_list_sites, _>(move |_p| s1.caller().then(list_sites)),
        Route::new::<__path_get_site, _>(move |p| p.and(s2.caller()).then(get_site)),
        Route::new::<__path_create_site, _>(move |_p| {
            s3.caller()
                .and(client_ip())
                .and(json::body::<SiteInput>())
                .then(create_site)
        }),
        Route::new::<__path_replace_site, _>(move |p| {
            p.and(s4.caller())
                .and(client_ip())
                .and(json::body::<SiteInput>())
                .then(replace_site)
        }),
        Route::new::<__path_delete_site, _>(move |p| {
            p.and(s5.caller()).and(client_ip()).then(delete_site)
        }),
        Route::new::<__path_list_controllers, _>(move |_p| c1.caller().then(list_controllers)),
        Route::new::<__path_get_controller, _>(move |p| p.and(c2.caller()).then(get_controller)),
        Route::new::<__path_create_controller, _>(move |_p| {
            c3.caller()
                .and(client_ip())
                .and(json::body::<ControllerInput>())
                .then(create_controller)
        }),
        Route::new::<__path_replace_controller, _>(move |p| {
            p.and(c4.caller())
                .and(client_ip())
                .and(json::body::<ControllerInput>())
                .then(replace_controller)
        }),
        Route::new::<__path_delete_controller, _>(move |p| {
            p.and(warp::query::<RemoveControllerQuery>())
                .and(c5.caller())
                .and(client_ip())
                .then(delete_controller)
        }),
        Route::new::<__path_list_gates, _>(move |_p| g1.caller().then(list_gates)),
        Route::new::<__path_get_gate, _>(move |p| p.and(g2.caller()).then(get_gate)),
        Route::new::<__path_create_gate, _>(move |_p| {
            g3.caller()
                .and(client_ip())
                .and(json::body::<GateInput>())
                .then(create_gate)
        }),
        Route::new::<__path_replace_gate, _>(move |p| {
            p.and(g4.caller())
                .and(client_ip())
                .and(json::body::<GateInput>())
                .then(replace_gate)
        }),
        Route::new::<__path_delete_gate, _>(move |p| {
            p.and(g5.caller()).and(client_ip()).then(delete_gate)
        }),
    ]
}
