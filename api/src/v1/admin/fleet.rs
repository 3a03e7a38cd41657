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
use gatehouse_actors::fleet_config::{self, ConfigError};
use gatehouse_actors::ids::{ControllerId, GateId, SiteId};
use gatehouse_actors::store::{
    ControllerRecord, FleetChange, FleetRecords, GateRecord, Parity, SerialSettings, SiteRecord,
    StoreError, Transport,
};
use gatehouse_actors::tree::FleetError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::http::StatusCode;

use super::{admin, audit, no_content, unprocessable};
use crate::app::App;
use crate::changes::AccessChange;
use crate::principal::{Caller, store_error};
use crate::routing::{Outcome, PathParams, Route};
use crate::{ApiError, client_ip, json};

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
    /// `tcp` (Modbus TCP, the default), `rtu-over-tcp` (RTU frames to a serial gateway) or
    /// `rtu` (a local serial line).
    #[schema(value_type = crate::wire::names::TransportName)]
    pub transport: Transport,
    /// `host:port`, for the TCP transports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The serial device (such as `/dev/ttyUSB0`), for `rtu`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The line's speed, for `rtu` (required there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baud: Option<u32>,
    /// For `rtu`; default `even` (the Modbus serial-line default).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::wire::names::ParityName>)]
    pub parity: Option<Parity>,
    /// For `rtu`: 8 (RTU frames are 8-bit bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_bits: Option<u8>,
    /// For `rtu`: 1 (default) or 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_bits: Option<u8>,
    pub request_timeout_ms: Option<u64>,
    pub inter_frame_delay_ms: Option<u64>,
    pub poll_interval_ms: Option<u64>,
    /// Request timeouts in a row that take the link down (1..=10), over the profile's.
    pub timeouts_before_down: Option<u64>,
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
    /// `tcp` (default), `rtu-over-tcp` or `rtu`.
    #[serde(default)]
    #[schema(value_type = Option<crate::wire::names::TransportName>)]
    pub transport: Transport,
    /// `host:port`, for the TCP transports.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub endpoint: String,
    /// The serial device (such as `/dev/ttyUSB0`), for `rtu`.
    pub serial: Option<String>,
    /// The line's speed, for `rtu` (required there).
    pub baud: Option<u32>,
    /// For `rtu`; default `even`.
    #[schema(value_type = Option<crate::wire::names::ParityName>)]
    pub parity: Option<Parity>,
    /// For `rtu`: 8.
    pub data_bits: Option<u8>,
    /// For `rtu`: 1 (default) or 2.
    pub stop_bits: Option<u8>,
    pub request_timeout_ms: Option<u64>,
    pub inter_frame_delay_ms: Option<u64>,
    pub poll_interval_ms: Option<u64>,
    /// Request timeouts in a row that take the link down (1..=10), over the profile's.
    pub timeouts_before_down: Option<u64>,
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

/// One family of configuration records (sites, controllers, gates): what the generic list,
/// get, create and replace handlers need to know about it. Deleting is each family's own.
trait Family: Clone + Serialize + Sized {
    type Id: Clone + PartialEq + std::fmt::Display + std::str::FromStr;
    type Input;
    type Body: Serialize;
    type List: Serialize;
    const KIND: Kind;

    /// This family's records in the running configuration.
    fn all(records: &FleetRecords) -> &[Self];
    fn id(&self) -> &Self::Id;
    fn body(&self) -> Self::Body;
    fn list(bodies: Vec<Self::Body>) -> Self::List;
    /// The change that creates or replaces this record.
    fn upsert(self) -> FleetChange;
    fn input_id(input: &Self::Input) -> &Option<Self::Id>;
    /// Checks the input on its own, before the configuration is read.
    fn check(_input: &Self::Input) -> Result<(), ApiError> {
        Ok(())
    }
    /// Checks that the records the input names exist.
    fn check_references(_input: &Self::Input, _records: &FleetRecords) -> Result<(), ApiError> {
        Ok(())
    }
    /// The record `input` describes (already checked).
    fn record(id: Self::Id, input: &Self::Input) -> Self;
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
    let applied = app.fleet.configure(changes).await;
    if applied.is_ok() {
        // Live sessions drop gates that are gone and re-check those that moved.
        app.changes.announce(AccessChange::Fleet);
    }
    applied.map_err(|e| match e {
        FleetError::Invalid(why) => unprocessable(
            "invalid_configuration",
            format!("the configuration would be invalid: {why}"),
        )
        .with_details(json!({ "reason": why })),
        FleetError::Config(e) => config_error(&e),
        // A concurrent change got there first.
        FleetError::Store(StoreError::Rejected(why)) => {
            ApiError::conflict("configuration_conflict", why)
        }
        FleetError::Store(e) => store_error(e),
        FleetError::NotConfigurable => not_configurable(),
        other => ApiError::internal(other),
    })
}

/// A broken rule of the fleet configuration (`fleet_config::validate`, the one validator the
/// fleet file's import runs too), with the entry and field in the details. A time zone gets
/// its own code: it is the rule a client is most likely to meet.
fn config_error(e: &ConfigError) -> ApiError {
    let code = if e.field == "timezone" {
        "invalid_timezone"
    } else {
        "invalid_configuration"
    };
    unprocessable(code, format!("the configuration would be invalid: {e}")).with_details(json!({
        e.kind.as_str(): e.id,
        "field": e.field,
        "reason": e.message,
    }))
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

/// The record `id` of family `F` in `records`, or 404.
fn find<'r, F: Family>(records: &'r FleetRecords, id: &F::Id) -> Result<&'r F, ApiError> {
    F::all(records)
        .iter()
        .find(|r| r.id() == id)
        .ok_or_else(|| F::KIND.unknown(&id.to_string()))
}

/// The path's id (a malformed one is as unknown as any other), the running configuration,
/// and the record it names (or 404).
async fn existing<F: Family>(
    app: &App,
    params: &PathParams,
) -> Result<(F::Id, FleetRecords, F), ApiError> {
    let raw = params.get(F::KIND.name())?;
    let id: F::Id = raw.parse().map_err(|_| F::KIND.unknown(raw))?;
    let records = records(app).await?;
    let record = find::<F>(&records, &id)?.clone();
    Ok((id, records, record))
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

/// Applies `changes`, then audits `verb` on record `id` of family `F`.
async fn change<F: Family>(
    app: &App,
    caller: &Caller,
    ip: IpAddr,
    verb: &str,
    id: &F::Id,
    changes: Vec<FleetChange>,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    configure(app, changes).await?;
    record_change::<F>(app, caller, ip, verb, id, details).await;
    Ok(())
}

async fn record_change<F: Family>(
    app: &App,
    caller: &Caller,
    ip: IpAddr,
    verb: &str,
    id: &F::Id,
    details: serde_json::Value,
) {
    audit(
        app,
        caller,
        ip,
        &F::KIND.audit_action(verb),
        format!("{}:{id}", F::KIND.name()),
        details,
    )
    .await;
}

/// Every record of the family, by id.
async fn list<F: Family>(app: App, bearer: Option<String>) -> Outcome {
    admin(&app, bearer).await?;
    let records = records(&app).await?;
    let mut all: Vec<&F> = F::all(&records).iter().collect();
    all.sort_by_key(|r| r.id().to_string());
    json::reply(
        StatusCode::OK,
        &F::list(all.into_iter().map(F::body).collect()),
    )
}

/// The record the path names.
async fn get<F: Family>(params: PathParams, app: App, bearer: Option<String>) -> Outcome {
    admin(&app, bearer).await?;
    let (_, _, record) = existing::<F>(&app, &params).await?;
    json::reply(StatusCode::OK, &record.body())
}

/// Creates the record `input` describes, unless its id is taken.
async fn create<F: Family>(
    app: App,
    bearer: Option<String>,
    ip: IpAddr,
    input: F::Input,
) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let id = id_to_create(F::input_id(&input))?;
    F::check(&input)?;
    let records = records(&app).await?;
    if F::all(&records).iter().any(|r| r.id() == &id) {
        return Err(F::KIND.exists(&id.to_string()));
    }
    F::check_references(&input, &records)?;
    let record = F::record(id.clone(), &input);
    let upsert = vec![record.clone().upsert()];
    change::<F>(&app, &caller, ip, "create", &id, upsert, json!(record)).await?;
    json::reply(StatusCode::CREATED, &record.body())
}

/// Replaces the record the path names with the one `input` describes.
async fn replace<F: Family>(
    params: PathParams,
    app: App,
    bearer: Option<String>,
    ip: IpAddr,
    input: F::Input,
) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let (id, records, before) = existing::<F>(&app, &params).await?;
    same_id(F::input_id(&input), &id)?;
    F::check(&input)?;
    F::check_references(&input, &records)?;
    let record = F::record(id.clone(), &input);
    let upsert = vec![record.clone().upsert()];
    let details = json!({ "from": before, "to": record });
    change::<F>(&app, &caller, ip, "update", &id, upsert, details).await?;
    json::reply(StatusCode::OK, &record.body())
}

/// Removes a record with `changes`, tells the sessions about `announced` and audits it.
async fn remove<F: Family>(
    app: &App,
    caller: &Caller,
    ip: IpAddr,
    id: &F::Id,
    changes: Vec<FleetChange>,
    announced: impl IntoIterator<Item = AccessChange>,
    details: serde_json::Value,
) -> Outcome {
    configure(app, changes).await?;
    for change in announced {
        app.changes.announce(change);
    }
    record_change::<F>(app, caller, ip, "delete", id, details).await;
    no_content()
}

fn users_told(users: &[UserId]) -> impl Iterator<Item = AccessChange> + '_ {
    users.iter().map(|user| AccessChange::User(*user))
}

/// That the record `id` of family `F` exists, for a body that names it.
fn known<F: Family>(records: &FleetRecords, id: &F::Id) -> Result<(), ApiError> {
    if F::all(records).iter().any(|r| r.id() == id) {
        Ok(())
    } else {
        Err(F::KIND.unknown_reference(&id.to_string()))
    }
}

// ---- sites ---------------------------------------------------------------------------------

impl SiteInput {
    fn timezone(&self) -> String {
        self.timezone
            .clone()
            .unwrap_or_else(|| fleet_config::DEFAULT_TIMEZONE.into())
    }
}

impl Family for SiteRecord {
    type Id = SiteId;
    type Input = SiteInput;
    type Body = SiteBody;
    type List = SiteList;
    const KIND: Kind = Kind::Site;

    fn all(records: &FleetRecords) -> &[Self] {
        &records.sites
    }

    fn id(&self) -> &SiteId {
        &self.id
    }

    fn body(&self) -> SiteBody {
        SiteBody {
            id: self.id.to_string(),
            name: self.name.clone(),
            timezone: self.timezone.clone(),
        }
    }

    fn list(sites: Vec<SiteBody>) -> SiteList {
        SiteList { sites }
    }

    fn upsert(self) -> FleetChange {
        FleetChange::UpsertSite(self)
    }

    fn input_id(input: &SiteInput) -> &Option<SiteId> {
        &input.id
    }

    fn record(id: SiteId, input: &SiteInput) -> Self {
        SiteRecord {
            id,
            name: input.name.clone(),
            timezone: input.timezone(),
        }
    }
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
    list::<SiteRecord>(app, bearer).await
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
    get::<SiteRecord>(params, app, bearer).await
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
    create::<SiteRecord>(app, bearer, ip, input).await
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
    replace::<SiteRecord>(params, app, bearer, ip, input).await
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
    let (id, records, site) = existing::<SiteRecord>(&app, &params).await?;
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
    let details = json!({ "site": site, "grant_holders": users, "api_keys": keys });
    let told = users_told(&users).chain(keys.iter().map(|key| AccessChange::ApiKey(*key)));
    let changes = vec![FleetChange::RemoveSite(id.clone())];
    remove::<SiteRecord>(&app, &caller, ip, &id, changes, told, details).await
}

// ---- controllers ---------------------------------------------------------------------------

impl Family for ControllerRecord {
    type Id = ControllerId;
    type Input = ControllerInput;
    type Body = ControllerBody;
    type List = ControllerList;
    const KIND: Kind = Kind::Controller;

    fn all(records: &FleetRecords) -> &[Self] {
        &records.controllers
    }

    fn id(&self) -> &ControllerId {
        &self.id
    }

    fn body(&self) -> ControllerBody {
        ControllerBody {
            id: self.id.to_string(),
            site: self.site.to_string(),
            profile: self.profile.clone(),
            transport: self.transport,
            endpoint: (!self.endpoint.is_empty()).then(|| self.endpoint.clone()),
            serial: self.serial.device.clone(),
            baud: self.serial.baud,
            parity: self.serial.parity,
            data_bits: self.serial.data_bits,
            stop_bits: self.serial.stop_bits,
            request_timeout_ms: self.request_timeout_ms,
            inter_frame_delay_ms: self.inter_frame_delay_ms,
            poll_interval_ms: self.poll_interval_ms,
            timeouts_before_down: self.timeouts_before_down,
        }
    }

    fn list(controllers: Vec<ControllerBody>) -> ControllerList {
        ControllerList { controllers }
    }

    fn upsert(self) -> FleetChange {
        FleetChange::UpsertController(self)
    }

    fn input_id(input: &ControllerInput) -> &Option<ControllerId> {
        &input.id
    }

    /// The site a controller names must exist.
    fn check_references(input: &ControllerInput, records: &FleetRecords) -> Result<(), ApiError> {
        known::<SiteRecord>(records, &input.site)
    }

    fn record(id: ControllerId, input: &ControllerInput) -> Self {
        ControllerRecord {
            id,
            site: input.site.clone(),
            profile: input.profile.clone(),
            transport: input.transport,
            endpoint: input.endpoint.clone(),
            serial: SerialSettings {
                device: input.serial.clone(),
                baud: input.baud,
                parity: input.parity,
                data_bits: input.data_bits,
                stop_bits: input.stop_bits,
            },
            request_timeout_ms: input.request_timeout_ms,
            inter_frame_delay_ms: input.inter_frame_delay_ms,
            poll_interval_ms: input.poll_interval_ms,
            timeouts_before_down: input.timeouts_before_down,
        }
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
    list::<ControllerRecord>(app, bearer).await
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
    get::<ControllerRecord>(params, app, bearer).await
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
    create::<ControllerRecord>(app, bearer, ip, input).await
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
    replace::<ControllerRecord>(params, app, bearer, ip, input).await
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
    let (id, records, c) = existing::<ControllerRecord>(&app, &params).await?;
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
    let details = json!({ "controller": c, "gates": gates, "grant_holders": users });
    remove::<ControllerRecord>(&app, &caller, ip, &id, changes, users_told(&users), details).await
}

// ---- gates ---------------------------------------------------------------------------------

impl Family for GateRecord {
    type Id = GateId;
    type Input = GateInput;
    type Body = GateConfigBody;
    type List = GateConfigList;
    const KIND: Kind = Kind::Gate;

    fn all(records: &FleetRecords) -> &[Self] {
        &records.gates
    }

    fn id(&self) -> &GateId {
        &self.id
    }

    fn body(&self) -> GateConfigBody {
        GateConfigBody {
            id: self.id.to_string(),
            controller: self.controller.to_string(),
            unit: self.unit,
            name: self.name.clone(),
            travel_timeout_s: self.travel_timeout_s,
            auto_close_after_s: self.auto_close_after_s,
            left_open_alert_after_s: self.left_open_alert_after_s,
        }
    }

    fn list(gates: Vec<GateConfigBody>) -> GateConfigList {
        GateConfigList { gates }
    }

    fn upsert(self) -> FleetChange {
        FleetChange::UpsertGate(self)
    }

    fn input_id(input: &GateInput) -> &Option<GateId> {
        &input.id
    }

    /// The controller a gate names must exist.
    fn check_references(input: &GateInput, records: &FleetRecords) -> Result<(), ApiError> {
        known::<ControllerRecord>(records, &input.controller)
    }

    fn record(id: GateId, input: &GateInput) -> Self {
        GateRecord {
            id,
            controller: input.controller.clone(),
            unit: input.unit,
            name: input.name.clone(),
            travel_timeout_s: input
                .travel_timeout_s
                .unwrap_or(fleet_config::DEFAULT_TRAVEL_TIMEOUT_S),
            auto_close_after_s: input.auto_close_after_s,
            left_open_alert_after_s: input.left_open_alert_after_s,
        }
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
    list::<GateRecord>(app, bearer).await
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
    get::<GateRecord>(params, app, bearer).await
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
    create::<GateRecord>(app, bearer, ip, input).await
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
    replace::<GateRecord>(params, app, bearer, ip, input).await
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
    let (id, _, g) = existing::<GateRecord>(&app, &params).await?;
    let users = holders(&app, |s| matches!(s, GrantScope::Gate(x) if x == &id)).await?;
    let changes = vec![FleetChange::RemoveGate(id.clone())];
    let details = json!({ "gate": g, "grant_holders": users });
    remove::<GateRecord>(&app, &caller, ip, &id, changes, users_told(&users), details).await
}

/// The documentation [`Route::new`] reads from a handler's `#[utoipa::path]`.
trait Doc: utoipa::Path + utoipa::__dev::SchemaReferences + utoipa::__dev::Tags<'static> {}

impl<T> Doc for T where
    T: utoipa::Path + utoipa::__dev::SchemaReferences + utoipa::__dev::Tags<'static>
{
}

/// `GET` of a whole family.
fn listing<D: Doc, Fut>(app: &App, handler: fn(App, Option<String>) -> Fut) -> Route
where
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let app = app.clone();
    Route::new::<D, _>(move |_p| app.caller().then(handler))
}

/// `GET` of the record the path names.
fn reading<D: Doc, Fut>(app: &App, handler: fn(PathParams, App, Option<String>) -> Fut) -> Route
where
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let app = app.clone();
    Route::new::<D, _>(move |p| p.and(app.caller()).then(handler))
}

/// `POST` of a new record.
fn creating<D: Doc, I, Fut>(app: &App, handler: fn(App, Option<String>, IpAddr, I) -> Fut) -> Route
where
    I: DeserializeOwned + Send + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let app = app.clone();
    Route::new::<D, _>(move |_p| {
        app.caller()
            .and(client_ip())
            .and(json::body::<I>())
            .then(handler)
    })
}

/// `PUT` of the record the path names.
fn replacing<D: Doc, I, Fut>(
    app: &App,
    handler: fn(PathParams, App, Option<String>, IpAddr, I) -> Fut,
) -> Route
where
    I: DeserializeOwned + Send + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let app = app.clone();
    Route::new::<D, _>(move |p| {
        p.and(app.caller())
            .and(client_ip())
            .and(json::body::<I>())
            .then(handler)
    })
}

/// `DELETE` of the record the path names.
fn deleting<D: Doc, Fut>(
    app: &App,
    handler: fn(PathParams, App, Option<String>, IpAddr) -> Fut,
) -> Route
where
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let app = app.clone();
    Route::new::<D, _>(move |p| p.and(app.caller()).and(client_ip()).then(handler))
}

pub fn routes(app: &App) -> Vec<Route> {
    let c5 = app.clone();
    vec![
        listing::<__path_list_sites, _>(app, list_sites),
        reading::<__path_get_site, _>(app, get_site),
        creating::<__path_create_site, _, _>(app, create_site),
        replacing::<__path_replace_site, _, _>(app, replace_site),
        deleting::<__path_delete_site, _>(app, delete_site),
        listing::<__path_list_controllers, _>(app, list_controllers),
        reading::<__path_get_controller, _>(app, get_controller),
        creating::<__path_create_controller, _, _>(app, create_controller),
        replacing::<__path_replace_controller, _, _>(app, replace_controller),
        Route::new::<__path_delete_controller, _>(move |p| {
            p.and(warp::query::<RemoveControllerQuery>())
                .and(c5.caller())
                .and(client_ip())
                .then(delete_controller)
        }),
        listing::<__path_list_gates, _>(app, list_gates),
        reading::<__path_get_gate, _>(app, get_gate),
        creating::<__path_create_gate, _, _>(app, create_gate),
        replacing::<__path_replace_gate, _, _>(app, replace_gate),
        deleting::<__path_delete_gate, _>(app, delete_gate),
    ]
}
