//! `/api/v1`: the REST handlers for people and integrations. What they share with the
//! WebSocket (the application handles, the policy, the command path) lives outside this
//! module, in `app.rs`, `policy.rs` and `commands.rs`.

pub mod admin;
pub mod auth;
pub mod gates;
pub mod links;
pub mod maintenance;
pub mod reports;

use crate::app::App;
use crate::routing::Route;

/// Every `/api/v1` route.
pub fn routes(app: &App) -> Vec<Route> {
    let mut routes = auth::routes(app);
    routes.extend(links::routes(app));
    routes.extend(gates::routes(app));
    routes.extend(crate::ws::routes(app));
    routes.extend(admin::routes(app));
    routes.extend(maintenance::routes(app));
    routes.extend(reports::routes(app));
    routes
}
