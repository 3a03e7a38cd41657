//! Gatehouse's people-facing layer: REST for admins, WebSocket sessions for phones,
//! authentication and authorization. It turns requests into messages to the actors and knows
//! nothing of SQL or Modbus (it depends on `gatehouse-actors`, never on `gatehouse-adapters`).
//!
//! The skeleton every endpoint plugs into:
//! - [`routing`]: the route table. An endpoint is a handler with a `#[utoipa::path]`
//!   annotation plus one [`Route::new`] call; the table serves it and documents it from that
//!   single source, and refuses overlapping or ill-documented routes at start-up.
//! - [`error`]: the one error shape; [`json`]: strict JSON bodies and replies;
//!   [`request_id`]: the id on every answer; [`server`]: listening, security headers, CORS,
//!   client addresses, graceful shutdown; [`health`]: probes; [`openapi`]: the document.
//!
//! The application, shared by REST and the WebSocket: [`app`] (the handles every endpoint
//! works with), [`policy`] (where a gate is, the site's local time, who may do what),
//! [`commands`] (the one command path), [`changes`] (access-change notices to live sessions).
//! [`v1`] holds REST handlers only; [`ws`] the WebSocket sessions.
//!
//! Adding an endpoint: write `async fn handler(..) -> Outcome` with `#[utoipa::path(...)]`
//! (method, path, `params(...)` for every `{name}` in the path, responses), add
//! `Route::new::<__path_handler, _>(|params| ...)` to its module's `routes()`, and list that
//! module in [`route_table`] if it is new.

pub mod app;
pub mod auth;
pub mod changes;
pub mod command_ids;
pub mod commands;
pub mod console;
mod cors;
pub mod error;
pub mod files;
pub mod health;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod paging;
pub mod policy;
pub mod principal;
pub mod ratelimit;
pub mod request_id;
pub mod routing;
pub mod server;
pub mod v1;
pub mod wire;
pub mod ws;

use std::sync::Arc;

pub use error::ApiError;
pub use health::{Check, Readiness};
pub use request_id::{RequestId, request_id};
pub use routing::{Outcome, Params, PathParams, Route, RouteError, RouteTable};
pub use server::{ApiConfig, ClientIp, ServeError, client_ip, serve};

/// What the endpoints need from the rest of the process. The runtime builds it; later
/// endpoints add their handles here (the fleet, the store ports, the auth keys).
#[derive(Clone)]
pub struct ApiState {
    pub readiness: Arc<dyn Readiness>,
    /// The application endpoints; without it only the probes and the document are served.
    pub app: Option<app::App>,
    /// The operator console's files (embedded unless a directory is configured).
    pub console: console::ConsoleFiles,
    /// `/metrics`; without it the endpoint answers 404 (metrics turned off).
    pub metrics: Option<metrics::MetricsExport>,
}

/// The API's complete route table: the one list of endpoint modules.
pub fn route_table(state: &ApiState) -> Result<RouteTable, RouteError> {
    let mut routes = Vec::new();
    routes.extend(health::routes(state.readiness.clone()));
    routes.extend(metrics::routes(state.metrics.clone(), state.app.clone()));
    if let Some(app) = &state.app {
        routes.extend(v1::routes(app));
    }
    RouteTable::new(routes)?.with_pages(console::filter(state.console.clone()), console::TEMPLATES)
}
