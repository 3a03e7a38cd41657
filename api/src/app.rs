//! [`App`]: the handles every endpoint works with, REST and WebSocket alike. Built by the
//! runtime.

use std::sync::Arc;

use gatehouse_actors::access::AccessStore;
use gatehouse_actors::store::EventStore;
use gatehouse_actors::tree::Fleet;
use warp::Filter;

use crate::ApiError;
use crate::auth::password::Passwords;
use crate::auth::tokens::TokenKeys;
use crate::changes::AccessChanges;
use crate::principal::{self, Caller};

/// What the endpoints work with.
#[derive(Clone)]
pub struct App {
    pub fleet: Fleet,
    pub access: Arc<dyn AccessStore>,
    pub events: Arc<dyn EventStore>,
    pub maintenance: Arc<dyn gatehouse_actors::maintenance::MaintenanceStore>,
    pub notify: Arc<dyn gatehouse_actors::notify::NotifyStore>,
    /// Alerts raised by the API (login lockouts) for the notifier.
    pub alerts: gatehouse_actors::tree::notifier::Alerts,
    pub reports: Arc<dyn gatehouse_actors::report::ReportStore>,
    /// Reports and attachments (none: the API answers that files are not kept here).
    pub blobs: Option<Arc<dyn gatehouse_actors::blob::BlobStore>>,
    pub scheduler: gatehouse_actors::tree::scheduler::SchedulerHandle,
    /// The largest maintenance attachment, in bytes.
    pub max_attachment: u64,
    /// `[http] public_url`: the base of links in emails (none: no account links are mailed).
    pub public_url: Option<String>,
    pub keys: Arc<TokenKeys>,
    pub passwords: Passwords,
    /// Announce here every committed change to users, grants and API keys.
    pub changes: AccessChanges,
    /// The live WebSocket sessions.
    pub sessions: crate::ws::Sessions,
    /// Login and command rate limits, shared by REST and the WebSocket sessions.
    pub limits: Arc<crate::ratelimit::RateLimits>,
    /// The root supervisor, for the live tree (`GET /api/v1/system/actors`).
    pub root: Option<ractor::ActorRef<gatehouse_actors::supervision::SupervisorMsg>>,
}

impl App {
    /// A filter that yields the app (cloned into handlers).
    pub(crate) fn with(
        &self,
    ) -> impl Filter<Extract = (App,), Error = std::convert::Infallible> + Clone + use<> {
        let app = self.clone();
        warp::any().map(move || app.clone())
    }

    /// A filter yielding the app and the authenticated caller (a 401 answer otherwise is
    /// produced by the handler, so that it carries the request id and the error shape).
    pub(crate) fn caller(
        &self,
    ) -> impl Filter<Extract = (App, Option<String>), Error = warp::Rejection> + Clone + use<> {
        self.with().and(principal::bearer())
    }

    pub(crate) async fn authenticate(&self, bearer: Option<String>) -> Result<Caller, ApiError> {
        let bearer = bearer.ok_or_else(|| {
            principal::unauthenticated("an Authorization: Bearer token is required")
        })?;
        principal::resolve(&self.keys, &self.access, &bearer).await
    }
}
