//! Maintenance over REST: plans (per gate, or per site as the default for gates without
//! plans of their own), where each gate stands against them (`/maintenance/status`, the
//! fleet's due and overdue list), and records of work done. Admins and operators write,
//! viewers read (CONTRACTS.md "Roles"); an API key limited to a site sees and changes that
//! site only.
//!
//! A record opened with `lockout` locks the gate out through the one command path (audited
//! and seen by the phones like any command), and completing it unlocks the gate the same
//! way; an admin or operator may also unlock explicitly with the `unlock` command. Completing
//! a record of a plan restarts that plan's count for the gate. The rules (which plans apply,
//! due and overdue, what a plan may say) are `gatehouse_actors::maintenance`'s.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use gatehouse_actors::access::{Denial, LocalTime, Operation, authorize};
use gatehouse_actors::clock::wall_ms;
use gatehouse_actors::gate::{Action, CommandStatus};
use gatehouse_actors::ids::{CommandId, GateId, SiteId};
use gatehouse_actors::maintenance::{
    Assessment, Invalid, MAX_PLANS_PER_SCOPE, Plan, PlanDraft, PlanScope, Progress, Record,
    RecordQuery, RecordStatus, Work, assess, effective_plans,
};
use gatehouse_actors::store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::http::StatusCode;

use super::admin::{audit, no_content, unprocessable};
use super::gates::{CommandBody, status_body};
use crate::app::App;
use crate::commands::{self, Via};
use crate::policy::{self, forbidden, unknown_gate};
use crate::principal::{Caller, store_error};
use crate::routing::{Outcome, PathParams, Route};
use crate::{ApiError, client_ip, json};

/// Records per page, by default and at most.
pub const DEFAULT_RECORDS: usize = 50;
pub const MAX_RECORDS: usize = 500;
/// How long opening or completing a record waits for its lockout or unlock command's
/// outcome (both finish without a write, within milliseconds, unless the gate is gone).
const LOCK_WAIT: Duration = Duration::from_secs(5);

// ---- bodies --------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct PlanBody {
    pub id: String,
    /// The gate the plan is for, or null for a site plan.
    pub gate: Option<String>,
    /// The site whose gates without plans of their own it is for, or null for a gate plan.
    pub site: Option<String>,
    pub title: String,
    pub every_cycles: Option<u64>,
    pub every_days: Option<u32>,
    /// Due this many cycles before the limit.
    pub warn_cycles: u64,
    /// Due this many days before the limit.
    pub warn_days: u32,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlanList {
    pub plans: Vec<PlanBody>,
}

/// A new plan: exactly one of `gate` and `site`, and at least one of `every_cycles` and
/// `every_days`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePlan {
    #[schema(value_type = Option<String>)]
    pub gate: Option<GateId>,
    #[schema(value_type = Option<String>)]
    pub site: Option<SiteId>,
    #[schema(example = "Springs and rollers")]
    pub title: String,
    #[schema(example = 20000)]
    pub every_cycles: Option<u64>,
    #[schema(example = 365)]
    pub every_days: Option<u32>,
    #[serde(default)]
    #[schema(example = 1000)]
    pub warn_cycles: u64,
    #[serde(default)]
    #[schema(example = 14)]
    pub warn_days: u32,
}

impl CreatePlan {
    fn fields(self) -> PlanFields {
        PlanFields {
            title: self.title,
            every_cycles: self.every_cycles,
            every_days: self.every_days,
            warn_cycles: self.warn_cycles,
            warn_days: self.warn_days,
        }
    }
}

/// A plan's fields (a replacement keeps the plan's id and scope).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanFields {
    #[schema(example = "Springs and rollers")]
    pub title: String,
    #[schema(example = 20000)]
    pub every_cycles: Option<u64>,
    #[schema(example = 365)]
    pub every_days: Option<u32>,
    #[serde(default)]
    #[schema(example = 1000)]
    pub warn_cycles: u64,
    #[serde(default)]
    #[schema(example = 14)]
    pub warn_days: u32,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PlanQuery {
    /// Only the plans that apply to this gate (its own, or its site's when it has none).
    pub gate: Option<String>,
    /// Only this site's plans (its own and its gates').
    pub site: Option<String>,
}

/// One gate against one plan.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusEntry {
    pub gate: String,
    pub site: String,
    pub plan: String,
    pub title: String,
    /// ok, due or overdue.
    #[schema(value_type = crate::wire::names::LevelName)]
    pub level: String,
    /// When the count started: the last service, or when the plan began to apply.
    pub since_ms: u64,
    pub cycles_since: Option<u64>,
    /// Negative once past the limit.
    pub cycles_left: Option<i64>,
    pub days_since: u64,
    /// Negative once past the limit.
    pub days_left: Option<i64>,
    pub due_by_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusList {
    /// Overdue first, then due, then ok; within a level, the least left first.
    pub entries: Vec<StatusEntry>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    pub gate: Option<String>,
    pub site: Option<String>,
    /// Only entries at this level or above: `due` lists due and overdue, `overdue` overdue
    /// only.
    pub level: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordBody {
    pub id: String,
    pub gate: String,
    pub site: String,
    pub plan: Option<String>,
    /// open or completed.
    pub status: String,
    pub opened_at_ms: u64,
    pub opened_by: String,
    /// Whether the gate was locked out for the work (completion unlocks it).
    pub lockout: bool,
    pub completed_at_ms: Option<u64>,
    pub completed_by: Option<String>,
    /// The gate's cycle counter at completion.
    pub cycles_at: Option<u64>,
    pub summary: String,
    pub parts: Vec<String>,
    pub notes: String,
    pub attachments: Vec<AttachmentBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttachmentBody {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub at_ms: u64,
    pub by: String,
    /// This API's path to download it.
    pub download: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The file's name (letters, digits, `.`, `_`, `-`; at most 120).
    pub name: String,
}

/// The path of the attachment upload route (its body cap is the attachment limit).
pub const ATTACHMENTS_TEMPLATE: &str = "/api/v1/maintenance/records/{record}/attachments";

/// The server's body cap for the upload route: a little above the attachment limit, so that
/// a file just over the limit is refused by the store's count (413, nothing kept) rather
/// than cut off mid-stream by the server.
pub fn upload_cap(max_attachment: u64) -> usize {
    usize::try_from(max_attachment.saturating_add(64 * 1024)).unwrap_or(usize::MAX)
}

/// A record, with the outcome of the lockout or unlock command it sent, if it sent one.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordChange {
    pub record: RecordBody,
    pub command: Option<CommandBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordPage {
    /// Newest first.
    pub records: Vec<RecordBody>,
    /// The `before` for the next page, or null when there is nothing more.
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RecordsQuery {
    pub gate: Option<String>,
    pub site: Option<String>,
    /// open or completed.
    pub status: Option<String>,
    /// Records older than this one (the `next` of the previous page).
    pub before: Option<String>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<usize>,
}

/// What was done.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkBody {
    #[serde(default)]
    #[schema(example = "Replaced both torsion springs, lubricated the rollers")]
    pub summary: String,
    #[serde(default)]
    pub parts: Vec<String>,
    #[serde(default)]
    pub notes: String,
}

/// A record: work starting now (`lockout` locks the gate out until it is completed), or work
/// already done (`completed`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenRecord {
    #[schema(value_type = String)]
    pub gate: GateId,
    /// The plan this service answers (one that applies to the gate).
    pub plan: Option<uuid::Uuid>,
    #[serde(default)]
    pub lockout: bool,
    #[serde(default)]
    pub completed: bool,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub parts: Vec<String>,
    #[serde(default)]
    pub notes: String,
}

// ---- conversions ---------------------------------------------------------------------------

fn plan_body(p: &Plan) -> PlanBody {
    let (gate, site) = match &p.scope {
        PlanScope::Gate(g) => (Some(g.to_string()), None),
        PlanScope::Site(s) => (None, Some(s.to_string())),
    };
    PlanBody {
        id: p.id.to_string(),
        gate,
        site,
        title: p.title.clone(),
        every_cycles: p.every_cycles,
        every_days: p.every_days,
        warn_cycles: p.warn_cycles,
        warn_days: p.warn_days,
        created_at_ms: p.created_at_ms,
        updated_at_ms: p.updated_at_ms,
    }
}

fn record_body(r: &Record) -> RecordBody {
    RecordBody {
        id: r.id.to_string(),
        gate: r.gate.to_string(),
        site: r.site.to_string(),
        plan: r.plan.map(|p| p.to_string()),
        status: r.status.as_str().to_owned(),
        opened_at_ms: r.opened_at_ms,
        opened_by: r.opened_by.clone(),
        lockout: r.lockout,
        completed_at_ms: r.completed_at_ms,
        completed_by: r.completed_by.clone(),
        cycles_at: r.cycles_at,
        summary: r.work.summary.clone(),
        parts: r.work.parts.clone(),
        notes: r.work.notes.clone(),
        attachments: r
            .attachments
            .iter()
            .map(|a| AttachmentBody {
                id: a.id.to_string(),
                name: a.name.clone(),
                content_type: a.content_type.clone(),
                size: a.size,
                at_ms: a.at_ms,
                by: a.by.clone(),
                download: format!("/api/v1/maintenance/records/{}/attachments/{}", r.id, a.id),
            })
            .collect(),
    }
}

fn work(body: WorkBody) -> Result<Work, ApiError> {
    let work = Work {
        summary: body.summary.trim().to_owned(),
        parts: body.parts.iter().map(|p| p.trim().to_owned()).collect(),
        notes: body.notes.trim().to_owned(),
    };
    work.validate().map_err(invalid)?;
    Ok(work)
}

fn invalid(e: Invalid) -> ApiError {
    unprocessable("invalid_maintenance", e.to_string()).with_details(json!({ "field": e.field }))
}

fn unknown_plan(raw: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_plan",
        format!("no maintenance plan {raw}"),
    )
    .with_details(json!({ "plan": raw }))
}

fn unknown_record(raw: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_record",
        format!("no maintenance record {raw}"),
    )
    .with_details(json!({ "record": raw }))
}

use crate::paging::{Page, invalid_query as bad_query};

// ---- who may --------------------------------------------------------------------------------

/// The caller, if it may do `op` on maintenance at `site` (none: across the fleet). A key
/// limited to a site may act on that site only.
fn may_at(caller: &Caller, op: Operation, site: Option<&SiteId>) -> Result<(), ApiError> {
    let mut who = caller.principal.clone();
    if let (Some(limit), Some(site)) = (&who.site, site) {
        if limit != site {
            return Err(forbidden(Denial::OtherSite));
        }
        who.site = None;
    }
    authorize(&who, op, None, LocalTime::IRRELEVANT).map_err(forbidden)
}

/// The site of `gate`, for a gate that exists in the fleet now.
fn site_of(app: &App, gate: &GateId) -> Result<SiteId, ApiError> {
    policy::locate(app, gate)
        .map(|at| at.site)
        .ok_or_else(|| unknown_gate(gate.as_str()))
}

fn parse_gate(raw: &str) -> Result<GateId, ApiError> {
    raw.parse::<GateId>().map_err(|_| unknown_gate(raw))
}

fn parse_site(raw: &str) -> Result<SiteId, ApiError> {
    raw.parse::<SiteId>().map_err(|_| unknown_site(raw))
}

fn unknown_site(raw: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_site",
        format!("no site {raw}"),
    )
    .with_details(json!({ "site": raw }))
}

/// The filters of a listing, checked against the caller: a site-limited key that names no
/// site gets its own.
fn scope_filter(
    app: &App,
    caller: &Caller,
    op: Operation,
    gate: Option<&str>,
    site: Option<&str>,
) -> Result<(Option<GateId>, Option<SiteId>), ApiError> {
    let gate = gate.map(parse_gate).transpose()?;
    let mut site = site.map(parse_site).transpose()?;
    if let Some(g) = &gate {
        let at = site_of(app, g)?;
        may_at(caller, op, Some(&at))?;
        if site.as_ref().is_some_and(|s| s != &at) {
            return Ok((gate, site));
        }
        site = Some(at);
    } else {
        if site.is_none() {
            site = caller.principal.site.clone();
        }
        may_at(caller, op, site.as_ref())?;
    }
    Ok((gate, site))
}

/// Every gate with its site, from the live fleet.
fn gate_sites(app: &App) -> Vec<(GateId, SiteId)> {
    app.fleet
        .places()
        .into_iter()
        .map(|(gate, place)| (gate, place.site))
        .collect()
}

// ---- plans ---------------------------------------------------------------------------------

async fn find_plan(app: &App, raw: &str) -> Result<Plan, ApiError> {
    let id = raw.parse::<uuid::Uuid>().map_err(|_| unknown_plan(raw))?;
    let plans = app.maintenance.plans().await.map_err(store_error)?;
    plans
        .into_iter()
        .find(|p| p.id == id)
        .ok_or_else(|| unknown_plan(raw))
}

fn plan_site(app: &App, plan: &Plan) -> Result<SiteId, ApiError> {
    match &plan.scope {
        PlanScope::Site(s) => Ok(s.clone()),
        PlanScope::Gate(g) => site_of(app, g),
    }
}

fn draft(scope: PlanScope, fields: PlanFields) -> Result<PlanDraft, ApiError> {
    let draft = PlanDraft {
        scope,
        title: fields.title,
        every_cycles: fields.every_cycles,
        every_days: fields.every_days,
        warn_cycles: fields.warn_cycles,
        warn_days: fields.warn_days,
    };
    draft.validate().map_err(invalid)?;
    Ok(draft)
}

fn plan_store_error(e: StoreError) -> ApiError {
    match e {
        // A gate or site that went away since it was checked.
        StoreError::Rejected(why) => unprocessable("invalid_plan", why),
        other => store_error(other),
    }
}

/// Starts the count of every gate a new plan applies to, from its counter now, so that the
/// count starts with the plan rather than at the scheduler's next round (which starts it for
/// gates that join later, and for any start that fails here).
/// `plans` are the plans stored before `plan` was added.
async fn start_counts(app: &App, mut plans: Vec<Plan>, plan: &Plan) {
    plans.push(plan.clone());
    let now = wall_ms();
    for (gate, site) in gate_sites(app) {
        if !effective_plans(&plans, &gate, &site)
            .iter()
            .any(|p| p.id == plan.id)
        {
            continue;
        }
        let cycles = app
            .fleet
            .view(&gate)
            .await
            .ok()
            .and_then(|v| v.snapshot.cycles);
        let start = Progress {
            plan: plan.id,
            gate: gate.clone(),
            since_ms: now,
            since_cycles: cycles,
            announced: gatehouse_actors::maintenance::Level::Ok,
        };
        if let Err(error) = app.maintenance.start_progress(start).await {
            tracing::warn!(%gate, plan = %plan.id, %error, "the count starts at the next round");
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/maintenance/plans",
    tag = "maintenance",
    operation_id = "list_maintenance_plans",
    params(PlanQuery),
    responses(
        (status = 200, description = "Plans, oldest first", body = PlanList),
        (status = 403, description = "Not allowed (residents; a key of another site)"),
        (status = 404, description = "No such gate or site"),
    ),
    security(("bearer" = [])),
)]
async fn list_plans(query: PlanQuery, app: App, bearer: Option<String>) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let (gate, site) = scope_filter(
        &app,
        &caller,
        Operation::ReadMaintenance,
        query.gate.as_deref(),
        query.site.as_deref(),
    )?;
    let plans = app.maintenance.plans().await.map_err(store_error)?;
    let gates: HashMap<GateId, SiteId> = gate_sites(&app).into_iter().collect();
    let shown: Vec<PlanBody> = match &gate {
        Some(g) => {
            let site = gates.get(g).ok_or_else(|| unknown_gate(g.as_str()))?;
            effective_plans(&plans, g, site)
                .into_iter()
                .map(plan_body)
                .collect()
        }
        None => plans
            .iter()
            .filter(|p| {
                site.as_ref().is_none_or(|s| match &p.scope {
                    PlanScope::Site(ps) => ps == s,
                    PlanScope::Gate(g) => gates.get(g) == Some(s),
                })
            })
            .map(plan_body)
            .collect(),
    };
    json::reply(StatusCode::OK, &PlanList { plans: shown })
}

#[utoipa::path(
    post,
    path = "/api/v1/maintenance/plans",
    tag = "maintenance",
    operation_id = "create_maintenance_plan",
    request_body = CreatePlan,
    responses(
        (status = 201, description = "Created", body = PlanBody),
        (status = 403, description = "Not an admin or operator, or a key of another site"),
        (status = 422, description = "Not exactly one of gate and site, an unknown gate or site, no interval, a margin not below its interval, or too many plans"),
    ),
    security(("bearer" = [])),
)]
async fn create_plan(app: App, bearer: Option<String>, ip: IpAddr, request: CreatePlan) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let (scope, site) = match (request.gate.clone(), request.site.clone()) {
        (Some(gate), None) => {
            let site = policy::locate(&app, &gate)
                .map(|at| at.site)
                .ok_or_else(|| {
                    unprocessable("unknown_gate", format!("no gate {gate}"))
                        .with_details(json!({ "field": "gate", "gate": gate }))
                })?;
            (PlanScope::Gate(gate), site)
        }
        (None, Some(site)) => {
            let known = app.fleet.places().iter().any(|(_, p)| p.site == site)
                || app
                    .fleet
                    .records()
                    .await
                    .is_some_and(|r| r.sites.iter().any(|s| s.id == site));
            if !known {
                return Err(unprocessable("unknown_site", format!("no site {site}"))
                    .with_details(json!({ "field": "site", "site": site })));
            }
            (PlanScope::Site(site.clone()), site)
        }
        _ => {
            return Err(unprocessable(
                "invalid_scope",
                "a plan names exactly one of gate and site",
            ));
        }
    };
    may_at(&caller, Operation::Maintain, Some(&site))?;
    let draft = draft(scope, request.fields())?;
    let plans = app.maintenance.plans().await.map_err(store_error)?;
    if plans.iter().filter(|p| p.scope == draft.scope).count() >= MAX_PLANS_PER_SCOPE {
        return Err(unprocessable(
            "too_many_plans",
            format!("at most {MAX_PLANS_PER_SCOPE} plans per gate or site"),
        ));
    }
    let plan = Plan::new(uuid::Uuid::new_v4(), draft, wall_ms());
    app.maintenance
        .put_plan(plan.clone())
        .await
        .map_err(plan_store_error)?;
    start_counts(&app, plans, &plan).await;
    let body = plan_body(&plan);
    audit(
        &app,
        &caller,
        ip,
        "maintenance.plan.create",
        format!("plan:{}", plan.id),
        json!({ "plan": &body.id, "gate": &body.gate, "site": &body.site, "title": &body.title,
                "every_cycles": body.every_cycles, "every_days": body.every_days }),
    )
    .await;
    json::reply(StatusCode::CREATED, &body)
}

#[utoipa::path(
    get,
    path = "/api/v1/maintenance/plans/{plan}",
    tag = "maintenance",
    operation_id = "get_maintenance_plan",
    params(("plan" = String, Path, description = "Plan id (UUID)")),
    responses(
        (status = 200, description = "The plan", body = PlanBody),
        (status = 403, description = "Not allowed"),
        (status = 404, description = "No such plan"),
    ),
    security(("bearer" = [])),
)]
async fn get_plan(params: PathParams, app: App, bearer: Option<String>) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let plan = find_plan(&app, params.get("plan")?).await?;
    may_at(
        &caller,
        Operation::ReadMaintenance,
        Some(&plan_site(&app, &plan)?),
    )?;
    json::reply(StatusCode::OK, &plan_body(&plan))
}

#[utoipa::path(
    put,
    path = "/api/v1/maintenance/plans/{plan}",
    tag = "maintenance",
    operation_id = "replace_maintenance_plan",
    params(("plan" = String, Path, description = "Plan id (UUID)")),
    request_body = PlanFields,
    responses(
        (status = 200, description = "Replaced (id and scope kept; progress kept)", body = PlanBody),
        (status = 403, description = "Not an admin or operator"),
        (status = 404, description = "No such plan"),
        (status = 422, description = "No interval, or a margin not below its interval"),
    ),
    security(("bearer" = [])),
)]
async fn replace_plan(
    params: PathParams,
    app: App,
    bearer: Option<String>,
    ip: IpAddr,
    fields: PlanFields,
) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let old = find_plan(&app, params.get("plan")?).await?;
    may_at(&caller, Operation::Maintain, Some(&plan_site(&app, &old)?))?;
    let draft = draft(old.scope.clone(), fields)?;
    let plan = old.revised(draft, wall_ms());
    app.maintenance
        .put_plan(plan.clone())
        .await
        .map_err(plan_store_error)?;
    let body = plan_body(&plan);
    audit(
        &app,
        &caller,
        ip,
        "maintenance.plan.update",
        format!("plan:{}", plan.id),
        json!({ "plan": &body.id, "title": &body.title, "every_cycles": body.every_cycles,
                "every_days": body.every_days, "warn_cycles": body.warn_cycles,
                "warn_days": body.warn_days }),
    )
    .await;
    json::reply(StatusCode::OK, &body)
}

#[utoipa::path(
    delete,
    path = "/api/v1/maintenance/plans/{plan}",
    tag = "maintenance",
    operation_id = "delete_maintenance_plan",
    params(("plan" = String, Path, description = "Plan id (UUID)")),
    responses(
        (status = 204, description = "Deleted (records keep their text and lose the reference)"),
        (status = 403, description = "Not an admin or operator"),
        (status = 404, description = "No such plan"),
    ),
    security(("bearer" = [])),
)]
async fn delete_plan(params: PathParams, app: App, bearer: Option<String>, ip: IpAddr) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let raw = params.get("plan")?;
    let plan = find_plan(&app, raw).await?;
    may_at(&caller, Operation::Maintain, Some(&plan_site(&app, &plan)?))?;
    if !app
        .maintenance
        .delete_plan(plan.id)
        .await
        .map_err(store_error)?
    {
        return Err(unknown_plan(raw));
    }
    audit(
        &app,
        &caller,
        ip,
        "maintenance.plan.delete",
        format!("plan:{}", plan.id),
        json!({ "plan": plan.id.to_string(), "title": plan.title }),
    )
    .await;
    no_content()
}

// ---- status --------------------------------------------------------------------------------

fn entry(gate: &GateId, site: &SiteId, plan: &Plan, since_ms: u64, a: Assessment) -> StatusEntry {
    StatusEntry {
        gate: gate.to_string(),
        site: site.to_string(),
        plan: plan.id.to_string(),
        title: plan.title.clone(),
        level: a.level.as_str().to_owned(),
        since_ms,
        cycles_since: a.cycles_since,
        cycles_left: a.cycles_left,
        days_since: a.days_since,
        days_left: a.days_left,
        due_by_ms: a.due_by_ms,
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/maintenance/status",
    tag = "maintenance",
    operation_id = "maintenance_status",
    params(StatusQuery),
    responses(
        (status = 200, description = "Each gate against each plan that applies to it, with live cycle counters", body = StatusList),
        (status = 400, description = "An unknown level"),
        (status = 403, description = "Not allowed"),
        (status = 404, description = "No such gate or site"),
    ),
    security(("bearer" = [])),
)]
async fn status(query: StatusQuery, app: App, bearer: Option<String>) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let at_least = match query.level.as_deref() {
        None => gatehouse_actors::maintenance::Level::Ok,
        Some(raw) => gatehouse_actors::maintenance::Level::parse(raw).ok_or_else(|| {
            bad_query("level", format!("level is ok, due or overdue, not {raw:?}"))
        })?,
    };
    let (gate, site) = scope_filter(
        &app,
        &caller,
        Operation::ReadMaintenance,
        query.gate.as_deref(),
        query.site.as_deref(),
    )?;
    let plans = app.maintenance.plans().await.map_err(store_error)?;
    let progress: HashMap<(uuid::Uuid, GateId), Progress> = app
        .maintenance
        .progress()
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|p| ((p.plan, p.gate.clone()), p))
        .collect();
    let now = wall_ms();
    let mut entries = Vec::new();
    for (g, s) in gate_sites(&app) {
        if gate.as_ref().is_some_and(|want| want != &g) || site.as_ref().is_some_and(|w| w != &s) {
            continue;
        }
        let applying = effective_plans(&plans, &g, &s);
        if applying.is_empty() {
            continue;
        }
        let cycles = policy::gate_view(&app, &g)
            .await
            .and_then(|view| view.snapshot.cycles);
        for plan in applying {
            // Not yet started by the scheduler: it counts from now.
            let p = progress
                .get(&(plan.id, g.clone()))
                .cloned()
                .unwrap_or(Progress {
                    plan: plan.id,
                    gate: g.clone(),
                    since_ms: now,
                    since_cycles: cycles,
                    announced: gatehouse_actors::maintenance::Level::Ok,
                });
            let a = assess(plan, &p, cycles, now);
            if a.level >= at_least {
                entries.push((a, entry(&g, &s, plan, p.since_ms, a)));
            }
        }
    }
    // Most urgent first: by level, then by the least left (cycles or days, as a fraction of
    // the interval would be fairer but less obvious to read).
    entries.sort_by(|(a, ea), (b, eb)| {
        b.level
            .cmp(&a.level)
            .then(
                a.days_left
                    .unwrap_or(i64::MAX)
                    .cmp(&b.days_left.unwrap_or(i64::MAX)),
            )
            .then(
                a.cycles_left
                    .unwrap_or(i64::MAX)
                    .cmp(&b.cycles_left.unwrap_or(i64::MAX)),
            )
            .then(ea.gate.cmp(&eb.gate))
    });
    json::reply(
        StatusCode::OK,
        &StatusList {
            entries: entries.into_iter().map(|(_, e)| e).collect(),
        },
    )
}

// ---- records -------------------------------------------------------------------------------

async fn find_record(app: &App, raw: &str) -> Result<Record, ApiError> {
    let id = raw.parse::<uuid::Uuid>().map_err(|_| unknown_record(raw))?;
    app.maintenance
        .record(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| unknown_record(raw))
}

/// Sends `action` to `gate` through the one command path and waits (bounded) for its
/// terminal status.
async fn command(
    app: &App,
    caller: &Caller,
    gate: &GateId,
    action: Action,
    ip: IpAddr,
) -> Result<CommandBody, ApiError> {
    let id = uuid::Uuid::new_v4();
    let command = commands::Command {
        caller,
        gate,
        action,
        id,
        ip,
        via: Via::Rest,
    };
    let last = commands::submit_and_wait(app, command, LOCK_WAIT, true)
        .await
        .map_err(|refusal| refusal.error(gate.as_str()))?;
    Ok(status_body(CommandId(id), gate, action, last))
}

#[utoipa::path(
    get,
    path = "/api/v1/maintenance/records",
    tag = "maintenance",
    operation_id = "list_maintenance_records",
    params(RecordsQuery),
    responses(
        (status = 200, description = "Records, newest first", body = RecordPage),
        (status = 400, description = "An unknown status, a bad cursor or limit"),
        (status = 403, description = "Not allowed"),
        (status = 404, description = "No such gate or site"),
    ),
    security(("bearer" = [])),
)]
async fn list_records(query: RecordsQuery, app: App, bearer: Option<String>) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let status = query
        .status
        .as_deref()
        .map(|raw| {
            RecordStatus::parse(raw).ok_or_else(|| {
                bad_query(
                    "status",
                    format!("status is open or completed, not {raw:?}"),
                )
            })
        })
        .transpose()?;
    let page = Page::of(
        query.limit,
        query.before.as_deref(),
        DEFAULT_RECORDS,
        MAX_RECORDS,
    )?;
    // Records outlive gates: a gate that is gone is still a valid filter for admins.
    let (gate, site) = match query.gate.as_deref().map(parse_gate).transpose()? {
        Some(g) if policy::locate(&app, &g).is_none() => {
            may_at(&caller, Operation::ReadMaintenance, None)?;
            (Some(g), query.site.as_deref().map(parse_site).transpose()?)
        }
        _ => scope_filter(
            &app,
            &caller,
            Operation::ReadMaintenance,
            query.gate.as_deref(),
            query.site.as_deref(),
        )?,
    };
    let records = app
        .maintenance
        .records(RecordQuery {
            gate,
            site,
            status,
            before: page.before,
            limit: page.fetch(),
        })
        .await
        .map_err(|e| match e {
            StoreError::Rejected(why) => bad_query("before", why),
            other => store_error(other),
        })?;
    let (records, next) = page.split(records, |r| r.id.to_string());
    let records = records.iter().map(record_body).collect();
    json::reply(StatusCode::OK, &RecordPage { records, next })
}

#[utoipa::path(
    get,
    path = "/api/v1/maintenance/records/{record}",
    tag = "maintenance",
    operation_id = "get_maintenance_record",
    params(("record" = String, Path, description = "Record id (UUID)")),
    responses(
        (status = 200, description = "The record", body = RecordBody),
        (status = 403, description = "Not allowed"),
        (status = 404, description = "No such record"),
    ),
    security(("bearer" = [])),
)]
async fn get_record(params: PathParams, app: App, bearer: Option<String>) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let record = find_record(&app, params.get("record")?).await?;
    may_at(&caller, Operation::ReadMaintenance, Some(&record.site))?;
    json::reply(StatusCode::OK, &record_body(&record))
}

#[utoipa::path(
    post,
    path = "/api/v1/maintenance/records",
    tag = "maintenance",
    operation_id = "open_maintenance_record",
    request_body = OpenRecord,
    responses(
        (status = 201, description = "Recorded; with `lockout`, the lockout command's outcome", body = RecordChange),
        (status = 403, description = "Not an admin or operator"),
        (status = 404, description = "No such gate"),
        (status = 422, description = "A plan that does not apply to the gate, lockout with completed, or invalid text"),
    ),
    security(("bearer" = [])),
)]
async fn open_record(app: App, bearer: Option<String>, ip: IpAddr, request: OpenRecord) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let gate = request.gate.clone();
    let site = site_of(&app, &gate)?;
    may_at(&caller, Operation::Maintain, Some(&site))?;
    if request.lockout && request.completed {
        return Err(unprocessable(
            "invalid_maintenance",
            "a record of work already completed cannot lock the gate out",
        )
        .with_details(json!({ "field": "lockout" })));
    }
    let work = work(WorkBody {
        summary: request.summary,
        parts: request.parts,
        notes: request.notes,
    })?;
    if let Some(plan) = request.plan {
        let plans = app.maintenance.plans().await.map_err(store_error)?;
        if !effective_plans(&plans, &gate, &site)
            .iter()
            .any(|p| p.id == plan)
        {
            return Err(unprocessable(
                "invalid_maintenance",
                format!("plan {plan} does not apply to gate {gate}"),
            )
            .with_details(json!({ "field": "plan" })));
        }
    }
    let now = wall_ms();
    let cycles = if request.completed {
        app.fleet
            .view(&gate)
            .await
            .ok()
            .and_then(|v| v.snapshot.cycles)
    } else {
        None
    };
    let record = Record {
        id: uuid::Uuid::new_v4(),
        gate: gate.clone(),
        site,
        plan: request.plan,
        status: if request.completed {
            RecordStatus::Completed
        } else {
            RecordStatus::Open
        },
        opened_at_ms: now,
        opened_by: caller.actor.clone(),
        lockout: request.lockout,
        completed_at_ms: request.completed.then_some(now),
        completed_by: request.completed.then(|| caller.actor.clone()),
        cycles_at: cycles,
        work,
        attachments: Vec::new(),
    };
    // The lockout first: a record that says the gate is locked out while it is not would
    // send someone to work on a live gate.
    let lockout = if request.lockout {
        let outcome = command(&app, &caller, &gate, Action::Lockout, ip).await?;
        if outcome.status != "completed" {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "lockout_failed",
                format!("the gate was not locked out ({})", outcome.status),
            )
            .with_details(json!({ "command": outcome.id, "status": outcome.status,
                                   "reason": outcome.reason })));
        }
        Some(outcome)
    } else {
        None
    };
    if let Err(e) = app.maintenance.insert_record(record.clone()).await {
        if request.lockout {
            // Not recorded: the gate must not stay locked out with no record saying why.
            let _ = command(&app, &caller, &gate, Action::Unlock, ip).await;
        }
        return Err(match e {
            StoreError::Rejected(why) => unprocessable("invalid_maintenance", why),
            other => store_error(other),
        });
    }
    let body = record_body(&record);
    audit(
        &app,
        &caller,
        ip,
        "maintenance.record.open",
        format!("gate:{gate}"),
        json!({ "record": &body.id, "plan": &body.plan, "status": &body.status,
                "lockout": body.lockout }),
    )
    .await;
    json::reply(
        StatusCode::CREATED,
        &RecordChange {
            record: body,
            command: lockout,
        },
    )
}

#[utoipa::path(
    post,
    path = "/api/v1/maintenance/records/{record}/complete",
    tag = "maintenance",
    operation_id = "complete_maintenance_record",
    params(("record" = String, Path, description = "Record id (UUID)")),
    request_body = WorkBody,
    responses(
        (status = 200, description = "Completed; the plan's count restarts, and a gate locked out for the work is unlocked (the unlock command's outcome)", body = RecordChange),
        (status = 403, description = "Not an admin or operator"),
        (status = 404, description = "No such record"),
        (status = 409, description = "Completed already"),
        (status = 422, description = "Invalid text"),
    ),
    security(("bearer" = [])),
)]
async fn complete_record(
    params: PathParams,
    app: App,
    bearer: Option<String>,
    ip: IpAddr,
    request: WorkBody,
) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let mut record = find_record(&app, params.get("record")?).await?;
    may_at(&caller, Operation::Maintain, Some(&record.site))?;
    let already = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "record_completed",
            "this maintenance record is completed already",
        )
    };
    if record.status == RecordStatus::Completed {
        return Err(already());
    }
    record.work = work(request)?;
    record.status = RecordStatus::Completed;
    let now = wall_ms();
    record.completed_at_ms = Some(now);
    record.completed_by = Some(caller.actor.clone());
    record.cycles_at = app
        .fleet
        .view(&record.gate)
        .await
        .ok()
        .and_then(|v| v.snapshot.cycles);
    app.maintenance
        .complete_record(record.clone())
        .await
        .map_err(|e| match e {
            StoreError::Rejected(_) => already(),
            other => store_error(other),
        })?;
    // The gate may be gone since (records outlive gates): nothing to unlock then.
    let unlock = if record.lockout && policy::locate(&app, &record.gate).is_some() {
        match command(&app, &caller, &record.gate, Action::Unlock, ip).await {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                tracing::warn!(gate = %record.gate, error = ?e, "maintenance completed but the gate was not unlocked");
                Some(status_body(
                    CommandId(uuid::Uuid::nil()),
                    &record.gate,
                    Action::Unlock,
                    Some(CommandStatus::Failed(
                        gatehouse_actors::gate::FailReason::Offline,
                    )),
                ))
            }
        }
    } else {
        None
    };
    let body = record_body(&record);
    audit(
        &app,
        &caller,
        ip,
        "maintenance.record.complete",
        format!("gate:{}", record.gate),
        json!({ "record": &body.id, "plan": &body.plan, "cycles_at": body.cycles_at }),
    )
    .await;
    json::reply(
        StatusCode::OK,
        &RecordChange {
            record: body,
            command: unlock,
        },
    )
}

#[utoipa::path(
    post,
    path = "/api/v1/maintenance/records/{record}/attachments",
    tag = "maintenance",
    operation_id = "attach_to_maintenance_record",
    params(("record" = String, Path, description = "Record id (UUID)"), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file: image/jpeg, image/png, image/webp, application/pdf or text/plain, as its Content-Type says; streamed to storage"),
    responses(
        (status = 201, description = "Attached", body = AttachmentBody),
        (status = 400, description = "No name, or a bad one"),
        (status = 403, description = "Not an admin or operator"),
        (status = 404, description = "No such record"),
        (status = 413, description = "Larger than the configured limit"),
        (status = 415, description = "A content type that is not accepted"),
        (status = 422, description = "The record holds the most attachments already"),
        (status = 503, description = "The file store is unavailable; retry"),
    ),
    security(("bearer" = [])),
)]
async fn attach(
    params: PathParams,
    app: App,
    bearer: Option<String>,
    ip: IpAddr,
    content_type: Option<String>,
    query: UploadQuery,
    body: crate::files::Upload,
) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let record = find_record(&app, params.get("record")?).await?;
    may_at(&caller, Operation::Maintain, Some(&record.site))?;
    gatehouse_actors::maintenance::check_file_name(&query.name)
        .map_err(|e| bad_query("name", format!("name: {}", e.why)))?;
    let content_type = content_type
        .as_deref()
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !gatehouse_actors::maintenance::ATTACHMENT_TYPES.contains(&content_type.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "attachments are {}",
                gatehouse_actors::maintenance::ATTACHMENT_TYPES.join(", ")
            ),
        )
        .with_details(json!({ "content_type": content_type })));
    }
    if record.attachments.len() >= gatehouse_actors::maintenance::MAX_ATTACHMENTS {
        return Err(unprocessable(
            "too_many_attachments",
            format!(
                "a record holds at most {} attachments",
                gatehouse_actors::maintenance::MAX_ATTACHMENTS
            ),
        ));
    }
    let blobs = app.blobs.clone().ok_or_else(crate::files::no_store)?;
    let id = uuid::Uuid::new_v4();
    let key = format!(
        "attachments/{}/{}-{}",
        record.id.simple(),
        id.simple(),
        query.name
    );
    let size = blobs
        .put(&key, &content_type, body.into_reader(), app.max_attachment)
        .await
        .map_err(crate::files::blob_error)?;
    let attachment = gatehouse_actors::maintenance::Attachment {
        id,
        name: query.name.clone(),
        content_type,
        size,
        key: key.clone(),
        at_ms: wall_ms(),
        by: caller.actor.clone(),
    };
    if let Err(e) = app
        .maintenance
        .add_attachment(record.id, attachment.clone())
        .await
    {
        // Not recorded: the file must not linger unreferenced.
        let _ = blobs.delete(&key).await;
        return Err(match e {
            StoreError::Rejected(why) => unprocessable("too_many_attachments", why),
            other => store_error(other),
        });
    }
    audit(
        &app,
        &caller,
        ip,
        "maintenance.record.attach",
        format!("gate:{}", record.gate),
        json!({ "record": record.id.to_string(), "attachment": id.to_string(),
                "name": &attachment.name, "size": size }),
    )
    .await;
    let mut with = record;
    with.attachments.push(attachment);
    let body = record_body(&with);
    let created = body
        .attachments
        .into_iter()
        .find(|a| a.id == id.to_string())
        .ok_or_else(|| ApiError::internal("the attachment just added is missing"))?;
    json::reply(StatusCode::CREATED, &created)
}

#[utoipa::path(
    get,
    path = "/api/v1/maintenance/records/{record}/attachments/{attachment}",
    tag = "maintenance",
    operation_id = "download_maintenance_attachment",
    params(
        ("record" = String, Path, description = "Record id (UUID)"),
        ("attachment" = String, Path, description = "Attachment id (UUID)"),
        crate::files::DownloadQuery,
    ),
    responses(
        (status = 200, description = "The file, streamed, as uploaded; with `link=true`, where to fetch it", content((Vec<u8> = "image/jpeg"), (Vec<u8> = "image/png"), (Vec<u8> = "image/webp"), (Vec<u8> = "application/pdf"), (Vec<u8> = "text/plain"), (crate::files::DownloadLink = "application/json"))),
        (status = 303, description = "A presigned link to the file in the bucket (S3)"),
        (status = 403, description = "Not allowed"),
        (status = 404, description = "No such record or attachment"),
        (status = 503, description = "The file store is unavailable; retry"),
    ),
    security(("bearer" = [])),
)]
async fn attachment(
    params: PathParams,
    query: crate::files::DownloadQuery,
    app: App,
    bearer: Option<String>,
) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let record = find_record(&app, params.get("record")?).await?;
    may_at(&caller, Operation::ReadMaintenance, Some(&record.site))?;
    let raw = params.get("attachment")?;
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_attachment",
            format!("no attachment {raw} on this record"),
        )
        .with_details(json!({ "attachment": raw }))
    };
    let found = record
        .attachments
        .iter()
        .find(|a| a.id.to_string() == raw)
        .ok_or_else(unknown)?;
    let blobs = app.blobs.as_ref().ok_or_else(crate::files::no_store)?;
    crate::files::download(
        blobs.as_ref(),
        &found.key,
        &found.name,
        gatehouse_actors::blob::PRESIGN_TTL,
        query,
    )
    .await
    .map_err(|e| e.unwrap_or_else(unknown))
}

pub fn routes(app: &App) -> Vec<Route> {
    let a = app.clone();
    vec![
        Route::new::<__path_list_plans, _>({
            let a = a.clone();
            move |_p| warp::query::<PlanQuery>().and(a.caller()).then(list_plans)
        }),
        Route::new::<__path_create_plan, _>({
            let a = a.clone();
            move |_p| {
                a.caller()
                    .and(client_ip())
                    .and(json::body::<CreatePlan>())
                    .then(create_plan)
            }
        }),
        Route::new::<__path_get_plan, _>({
            let a = a.clone();
            move |p| p.and(a.caller()).then(get_plan)
        }),
        Route::new::<__path_replace_plan, _>({
            let a = a.clone();
            move |p| {
                p.and(a.caller())
                    .and(client_ip())
                    .and(json::body::<PlanFields>())
                    .then(replace_plan)
            }
        }),
        Route::new::<__path_delete_plan, _>({
            let a = a.clone();
            move |p| p.and(a.caller()).and(client_ip()).then(delete_plan)
        }),
        Route::new::<__path_status, _>({
            let a = a.clone();
            move |_p| warp::query::<StatusQuery>().and(a.caller()).then(status)
        }),
        Route::new::<__path_list_records, _>({
            let a = a.clone();
            move |_p| {
                warp::query::<RecordsQuery>()
                    .and(a.caller())
                    .then(list_records)
            }
        }),
        Route::new::<__path_get_record, _>({
            let a = a.clone();
            move |p| p.and(a.caller()).then(get_record)
        }),
        Route::new::<__path_open_record, _>({
            let a = a.clone();
            move |_p| {
                a.caller()
                    .and(client_ip())
                    .and(json::body::<OpenRecord>())
                    .then(open_record)
            }
        }),
        Route::new::<__path_attach, _>({
            let a = a.clone();
            move |p| {
                p.and(a.caller())
                    .and(client_ip())
                    .and(warp::header::optional::<String>("content-type"))
                    .and(warp::query::<UploadQuery>())
                    .and(crate::files::upload())
                    .then(attach)
            }
        }),
        Route::new::<__path_attachment, _>({
            let a = a.clone();
            move |p| {
                p.and(warp::query::<crate::files::DownloadQuery>())
                    .and(a.caller())
                    .then(attachment)
            }
        }),
        Route::new::<__path_complete_record, _>(move |p| {
            p.and(a.caller())
                .and(client_ip())
                .and(json::body::<WorkBody>())
                .then(complete_record)
        }),
    ]
}
