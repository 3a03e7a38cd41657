//! The admin half of `/api/v1`: users, grants and API keys (who may do what), sites,
//! controllers and gates (the fleet configuration, applied live through `Fleet::configure`),
//! and the audit log. One message family per module.
//!
//! Every handler authenticates and authorizes first (CONTRACTS.md "Roles": all of this is
//! admin-only except reading the audit log, which operators may too), then validates, then
//! changes, then writes the audit record. Changes to who may do what are announced on
//! [`AccessChanges`](super::changes::AccessChanges) after they are committed, for the live
//! WebSocket sessions.

pub mod audit;
pub mod fleet;
pub mod grants;
pub mod keys;
pub mod notifications;
pub mod system;
pub mod users;

use std::net::IpAddr;

use gatehouse_actors::access::{AuditRecord, LocalTime, Operation, authorize};
use warp::http::StatusCode;
use warp::reply::Response;

use crate::ApiError;
use crate::app::App;
use crate::policy::forbidden;
use crate::principal::Caller;
use crate::routing::Route;
use gatehouse_actors::clock::wall_ms;

/// Every admin route.
pub fn routes(app: &App) -> Vec<Route> {
    let mut routes = users::routes(app);
    routes.extend(grants::routes(app));
    routes.extend(keys::routes(app));
    routes.extend(fleet::routes(app));
    routes.extend(audit::routes(app));
    routes.extend(notifications::routes(app));
    routes.extend(system::routes(app));
    routes
}

/// The caller, if it may do `op` (which is not about one gate, so no time of the week).
pub(crate) async fn allowed(
    app: &App,
    bearer: Option<String>,
    op: Operation,
) -> Result<Caller, ApiError> {
    let caller = app.authenticate(bearer).await?;
    authorize(&caller.principal, op, None, LocalTime::IRRELEVANT).map_err(forbidden)?;
    Ok(caller)
}

/// The caller, if an admin.
pub(crate) async fn admin(app: &App, bearer: Option<String>) -> Result<Caller, ApiError> {
    allowed(app, bearer, Operation::Administer).await
}

/// Records an admin change. The change is already committed; a failure to record it is
/// logged rather than turned into an error for a change that happened.
pub(crate) async fn audit(
    app: &App,
    caller: &Caller,
    ip: IpAddr,
    action: &str,
    target: String,
    details: serde_json::Value,
) {
    let record = AuditRecord {
        at_ms: wall_ms(),
        actor: caller.actor.clone(),
        action: action.to_string(),
        target: Some(target),
        source_ip: Some(ip.to_string()),
        details: details.to_string(),
    };
    if let Err(error) = app.access.audit(record).await {
        tracing::warn!(%error, action, "an admin change was made but could not be audited");
    }
}

/// 422: well-formed, but not acceptable.
pub(crate) fn unprocessable(
    code: &'static str,
    message: impl Into<std::borrow::Cow<'static, str>>,
) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

/// 204.
pub(crate) fn no_content() -> Result<Response, ApiError> {
    Ok(warp::Reply::into_response(warp::reply::with_status(
        warp::reply(),
        StatusCode::NO_CONTENT,
    )))
}
