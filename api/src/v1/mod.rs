//! `/api/v1`: the endpoints for people and integrations, with what they share: the
//! application handles ([`App`]) and the authenticated-caller filter.

pub mod admin;
pub mod auth;
pub mod changes;
pub mod gates;

use std::sync::Arc;

use gatehouse_actors::access::AccessStore;
use gatehouse_actors::fleet::Fleet;
use gatehouse_actors::store::EventStore;
use warp::Filter;

use crate::ApiError;
use crate::auth::password::Passwords;
use crate::auth::tokens::TokenKeys;
use crate::principal::{self, Caller};
use crate::routing::Route;

/// What the endpoints work with. Built by the runtime.
#[derive(Clone)]
pub struct App {
    pub fleet: Fleet,
    pub access: Arc<dyn AccessStore>,
    pub events: Arc<dyn EventStore>,
    pub keys: Arc<TokenKeys>,
    pub passwords: Passwords,
    /// Announce here every committed change to users, grants and API keys.
    pub changes: changes::AccessChanges,
    /// The live WebSocket sessions.
    pub sessions: crate::ws::Sessions,
    /// Login and command rate limits, shared by REST and the WebSocket sessions.
    pub limits: Arc<crate::ratelimit::RateLimits>,
}

impl App {
    /// A filter that yields the app (cloned into handlers).
    fn with(
        &self,
    ) -> impl Filter<Extract = (App,), Error = std::convert::Infallible> + Clone + use<> {
        let app = self.clone();
        warp::any().map(move || app.clone())
    }

    /// A filter yielding the app and the authenticated caller (a 401 answer otherwise is
    /// produced by the handler, so that it carries the request id and the error shape).
    fn caller(
        &self,
    ) -> impl Filter<Extract = (App, Option<String>), Error = warp::Rejection> + Clone + use<> {
        self.with().and(principal::bearer())
    }

    async fn authenticate(&self, bearer: Option<String>) -> Result<Caller, ApiError> {
        let bearer = bearer.ok_or_else(|| {
            principal::unauthenticated("an Authorization: Bearer token is required")
        })?;
        principal::resolve(&self.keys, &self.access, &bearer).await
    }
}

/// Every `/api/v1` route.
pub fn routes(app: &App) -> Vec<Route> {
    let mut routes = auth::routes(app);
    routes.extend(gates::routes(app));
    routes.extend(crate::ws::routes(app));
    routes.extend(admin::routes(app));
    routes
}

/// Wall-clock now, milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
