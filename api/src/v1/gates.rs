//! Gates: state for whoever may read it, commands for whoever may give them (with the
//! command id as the idempotency key and an optional bounded wait for the outcome), and the
//! gate's event history by sequence.

use std::net::IpAddr;
use std::time::Duration;

use gatehouse_actors::access::Operation;
use gatehouse_actors::gate::{Action, CommandStatus};
use gatehouse_actors::ids::{CommandId, ControllerId, GateId, SiteId};
use gatehouse_actors::tree::gate::GateView;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::http::StatusCode;

use crate::app::App;
use crate::commands::{self, Via};
use crate::policy::{self, Location, unknown_gate};
use crate::principal::store_error;
use crate::routing::{Outcome, PathParams, Route};
use crate::{ApiError, client_ip, json, wire};

/// The longest `?wait=true` holds a request.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Without `wait`, how long the answer waits for the first status (normally `accepted`,
/// within milliseconds) before saying `pending`.
const FIRST_STATUS_WAIT: Duration = Duration::from_secs(2);
/// Events per page, at most.
pub const MAX_EVENTS_PAGE: u32 = 500;

#[derive(Debug, Serialize, ToSchema)]
pub struct Flags {
    pub obstructed: bool,
    pub locked_out: bool,
    pub held_open: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GateBody {
    pub id: String,
    pub site: String,
    pub controller: String,
    pub name: String,
    /// unknown, closed, opening, open, closing, stopped, fault, offline.
    pub state: String,
    pub flags: Flags,
    pub position: Option<u8>,
    pub fault_code: Option<u16>,
    pub cycles: Option<u64>,
    /// The gate's latest committed event sequence (a resume point for `since`).
    pub seq: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GateList {
    pub gates: Vec<GateBody>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// Client-chosen UUID: the idempotency key.
    #[schema(value_type = String, format = Uuid)]
    pub id: uuid::Uuid,
    /// open, close, stop, toggle, hold_open, release, lockout, unlock, reset.
    #[schema(value_type = crate::wire::names::ActionName)]
    pub action: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CommandBody {
    pub id: String,
    pub gate: String,
    #[schema(value_type = crate::wire::names::ActionName)]
    pub action: String,
    /// pending, accepted, completed, rejected, failed, timed_out.
    #[schema(value_type = crate::wire::names::StatusName)]
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CommandQuery {
    /// Hold the request until the outcome (at most 30 s).
    pub wait: Option<bool>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events with a sequence above this (0 for the first).
    pub after: Option<u64>,
    /// At most this many (default 100, at most 500).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// The `after` for the next page, or null at the end.
    pub next: Option<u64>,
}

fn body(view: GateView, site: &SiteId, controller: &ControllerId, name: String) -> GateBody {
    let s = view.snapshot;
    GateBody {
        id: view.gate.to_string(),
        site: site.to_string(),
        controller: controller.to_string(),
        name,
        state: s.state.as_str().to_string(),
        flags: Flags {
            obstructed: s.flags.obstructed,
            locked_out: s.flags.locked_out,
            held_open: s.flags.held_open,
        },
        position: s.position,
        fault_code: s.fault_code,
        cycles: s.cycles,
        seq: view.committed,
    }
}

fn parse_gate(params: &PathParams) -> Result<GateId, ApiError> {
    let raw = params.get("gate")?;
    raw.parse::<GateId>().map_err(|_| unknown_gate(raw))
}

#[utoipa::path(
    get,
    path = "/api/v1/gates",
    tag = "gates",
    operation_id = "list_gates",
    responses((status = 200, description = "The gates the caller may read", body = GateList)),
    security(("bearer" = [])),
)]
async fn list(app: App, bearer: Option<String>) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let mut gates = Vec::new();
    for (gate, place) in app.fleet.places() {
        if policy::may(&app, &caller, Operation::Read, &gate, &place.site).is_err() {
            continue;
        }
        if let Some(view) = policy::gate_view(&app, &gate).await {
            gates.push(body(view, &place.site, &place.controller, place.name));
        }
    }
    gates.sort_by(|a, b| a.id.cmp(&b.id));
    json::reply(StatusCode::OK, &GateList { gates })
}

#[utoipa::path(
    get,
    path = "/api/v1/gates/{gate}",
    tag = "gates",
    operation_id = "get_gate",
    params(("gate" = String, Path, description = "Gate id")),
    responses(
        (status = 200, description = "The gate", body = GateBody),
        (status = 403, description = "Not allowed"),
        (status = 404, description = "No such gate"),
    ),
    security(("bearer" = [])),
)]
async fn get(params: PathParams, app: App, bearer: Option<String>) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let gate = parse_gate(&params)?;
    let Location {
        site,
        controller,
        name,
    } = policy::check(&app, &caller, Operation::Read, &gate)?;
    let view = policy::gate_view(&app, &gate)
        .await
        .ok_or_else(|| unknown_gate(gate.as_str()))?;
    json::reply(StatusCode::OK, &body(view, &site, &controller, name))
}

pub(crate) fn status_body(
    id: CommandId,
    gate: &GateId,
    action: Action,
    status: Option<CommandStatus>,
) -> CommandBody {
    let (status, reason) = match status {
        None => ("pending", None),
        Some(s) => wire::status(s),
    };
    CommandBody {
        id: id.to_string(),
        gate: gate.to_string(),
        action: action.as_str().to_string(),
        status: status.to_string(),
        reason: reason.map(str::to_string),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/gates/{gate}/commands",
    tag = "gates",
    operation_id = "command_gate",
    params(("gate" = String, Path, description = "Gate id"), CommandQuery),
    request_body = CommandRequest,
    responses(
        (status = 202, description = "Taken; the current status (pending or accepted)", body = CommandBody),
        (status = 200, description = "With wait: the terminal status", body = CommandBody),
        (status = 400, description = "Unknown action"),
        (status = 403, description = "Not allowed"),
        (status = 404, description = "No such gate"),
        (status = 429, description = "Too many commands by this caller on this gate (stop is never limited); see Retry-After"),
    ),
    security(("bearer" = [])),
)]
async fn command(
    params: PathParams,
    query: CommandQuery,
    app: App,
    bearer: Option<String>,
    ip: IpAddr,
    request: CommandRequest,
) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let gate = parse_gate(&params)?;
    let action: Action = request.action.parse().map_err(|e: String| {
        ApiError::bad_request("unknown_action", e)
            .with_details(serde_json::json!({ "field": "action" }))
    })?;
    let id = CommandId(request.id);
    let wait = query.wait.unwrap_or(false);
    let command = commands::Command {
        caller: &caller,
        gate: &gate,
        action,
        id: request.id,
        ip,
        via: Via::Rest,
    };
    let limit = if wait { MAX_WAIT } else { FIRST_STATUS_WAIT };
    let last = commands::submit_and_wait(&app, command, limit, wait)
        .await
        .map_err(|refusal| refusal.error(gate.as_str()))?;
    let code = if last.is_some_and(CommandStatus::is_terminal) && wait {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    json::reply(code, &status_body(id, &gate, action, last))
}

#[utoipa::path(
    get,
    path = "/api/v1/gates/{gate}/events",
    tag = "gates",
    operation_id = "gate_events",
    params(("gate" = String, Path, description = "Gate id"), EventsQuery),
    responses(
        (status = 200, description = "Committed events in sequence order", body = EventPage),
        (status = 403, description = "Not allowed"),
        (status = 404, description = "No such gate"),
    ),
    security(("bearer" = [])),
)]
async fn events(
    params: PathParams,
    query: EventsQuery,
    app: App,
    bearer: Option<String>,
) -> Outcome {
    let caller = app.authenticate(bearer).await?;
    let gate = parse_gate(&params)?;
    policy::check(&app, &caller, Operation::Read, &gate)?;
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_EVENTS_PAGE);
    let page = app
        .events
        .since(gate.clone(), after, limit)
        .await
        .map_err(store_error)?;
    let next = (page.len() as u32 == limit)
        .then(|| page.last().map(|e| e.event.seq))
        .flatten();
    let events = page
        .into_iter()
        .map(|e| serde_json::Value::Object(wire::event(&e.event)))
        .collect();
    json::reply(StatusCode::OK, &EventPage { events, next })
}

pub fn routes(app: &App) -> Vec<Route> {
    let (a, b, c, d) = (app.clone(), app.clone(), app.clone(), app.clone());
    vec![
        Route::new::<__path_list, _>(move |_p| a.caller().then(list)),
        Route::new::<__path_get, _>(move |p| p.and(b.caller()).then(get)),
        Route::new::<__path_command, _>(move |p| {
            p.and(warp::query::<CommandQuery>())
                .and(c.caller())
                .and(client_ip())
                .and(json::body::<CommandRequest>())
                .then(command)
        }),
        Route::new::<__path_events, _>(move |p| {
            p.and(warp::query::<EventsQuery>())
                .and(d.caller())
                .then(events)
        }),
    ]
}
