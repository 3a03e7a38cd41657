//! The policy questions every transport asks before acting on a gate: where the gate is, what
//! time of the week it is at its site, and whether the caller may do the operation. The rules
//! themselves are in `gatehouse_actors::access::authorize`; this module finds their inputs
//! and renders a denial in the one error shape.

use gatehouse_actors::access::{Denial, LocalTime, Operation, Principal, Role, authorize};
use gatehouse_actors::gate::GateSnapshot;
use gatehouse_actors::ids::{ControllerId, GateId, SiteId};
use gatehouse_actors::tree::gate::GateView;
use warp::http::StatusCode;

use crate::ApiError;
use crate::app::App;
use crate::principal::Caller;

/// Where a gate is in the running fleet.
#[derive(Debug, Clone)]
pub struct Location {
    pub site: SiteId,
    pub controller: ControllerId,
    pub name: String,
}

/// Where `gate` is: on this node, or in a cluster configured on another (`None`: no such
/// gate).
pub fn locate(app: &App, gate: &GateId) -> Option<Location> {
    let place = app.fleet.place(gate)?;
    Some(Location {
        site: place.site,
        controller: place.controller,
        name: place.name,
    })
}

/// The gate's state and committed seq, wherever it is driven: from its actor on this node;
/// for a gate another node of a cluster drives (or one configured but not running here), its
/// newest event seen on the bus, else the store's (a gate with no event yet shows as unknown
/// at seq 0). `None`: no such gate, or its state cannot be read now.
pub async fn gate_view(app: &App, gate: &GateId) -> Option<GateView> {
    if app.fleet.drives(gate) {
        return app.fleet.view(gate).await.ok();
    }
    app.fleet.place(gate)?;
    let latest = match app.sessions.hub().latest(gate) {
        Some(e) => Some((*e).clone()),
        None => match app.events.latest(gate.clone()).await {
            Ok(stored) => stored.map(|s| s.event),
            Err(e) => {
                tracing::warn!(%gate, error = %e, "a gate driven elsewhere could not be read from the store");
                return None;
            }
        },
    };
    let (seq, snapshot) = latest.map_or((0, GateSnapshot::default()), |e| (e.seq, e.snapshot));
    Some(GateView {
        gate: gate.clone(),
        snapshot,
        seq,
        committed: seq,
        busy: false,
    })
}

/// The local time of the week at `site` (UTC when its zone is unknown; zones are validated
/// when the fleet is configured, so that is a site configured before validation existed).
pub fn local_time(app: &App, site: &SiteId) -> LocalTime {
    let zone = app
        .fleet
        .site_timezone(site)
        .unwrap_or_else(|| "UTC".into());
    let tz = jiff::tz::TimeZone::get(&zone).unwrap_or(jiff::tz::TimeZone::UTC);
    let now = jiff::Timestamp::now().to_zoned(tz);
    LocalTime {
        weekday: now.weekday().to_monday_zero_offset() as u8,
        minute: now.hour() as u16 * 60 + now.minute() as u16,
    }
}

/// The local time the policy needs for `op`: only residents' commands depend on it (their
/// grants' windows), so everyone else skips the site lookup.
pub fn time_for(app: &App, who: &Principal, op: Operation, site: &SiteId) -> LocalTime {
    if who.role == Role::Resident && matches!(op, Operation::Command(_)) {
        local_time(app, site)
    } else {
        LocalTime::IRRELEVANT
    }
}

/// Whether `caller` may do `op` on `gate` at `site` now.
pub fn may(
    app: &App,
    caller: &Caller,
    op: Operation,
    gate: &GateId,
    site: &SiteId,
) -> Result<(), Denial> {
    let at = time_for(app, &caller.principal, op, site);
    authorize(&caller.principal, op, Some((gate, site)), at)
}

/// Locates `gate` and checks that `caller` may do `op` on it.
pub fn check(
    app: &App,
    caller: &Caller,
    op: Operation,
    gate: &GateId,
) -> Result<Location, ApiError> {
    let at = locate(app, gate).ok_or_else(|| unknown_gate(gate.as_str()))?;
    may(app, caller, op, gate, &at.site).map_err(forbidden)?;
    Ok(at)
}

pub fn unknown_gate(gate: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_gate",
        format!("no gate {gate}"),
    )
    .with_details(serde_json::json!({ "gate": gate }))
}

/// A denial in the one error shape: `forbidden`, with the reason in the details.
pub fn forbidden(denial: Denial) -> ApiError {
    let reason = match denial {
        Denial::Role => "role",
        Denial::NoGrant => "no_grant",
        Denial::OutsideWindow => "outside_window",
        Denial::OtherSite => "other_site",
    };
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", "not allowed")
        .with_details(serde_json::json!({ "reason": reason }))
}
