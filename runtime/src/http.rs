//! Starting the HTTP API for a booted runtime: the application handles, the token keys from
//! the data directory, readiness from the event log.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use gatehouse_actors::tree::eventlog::EventLogStats;
use gatehouse_adapters::store::Store;
use gatehouse_api::app::App;
use gatehouse_api::auth::password::Passwords;
use gatehouse_api::auth::tokens::TokenKeys;
use gatehouse_api::changes::AccessChanges;
use gatehouse_api::ws::Sessions;
use gatehouse_api::{ApiConfig, ApiState, Check, Readiness};
use tokio::task::JoinHandle;

use crate::Runtime;
use crate::config::Config;

/// How long stopping waits for sessions to flush their close frames.
const SESSION_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Ready while the event log commits.
struct Ready {
    eventlog: Option<Arc<EventLogStats>>,
}

impl Readiness for Ready {
    fn checks(&self) -> Vec<Check> {
        match &self.eventlog {
            Some(stats) if stats.is_healthy() => vec![Check::ready("event_log")],
            Some(_) => vec![Check::not_ready(
                "event_log",
                "commits to the database are failing; outcomes are held back",
            )],
            None => vec![Check::ready("event_log")],
        }
    }
}

/// The application handles for `runtime` on `store`, with the WebSocket session layer whose
/// hub and supervisor the runtime's root started.
pub fn app(
    config: &Config,
    runtime: &Runtime,
    store: Arc<Store>,
    passwords: Passwords,
    sessions: Sessions,
    changes: AccessChanges,
) -> anyhow::Result<App> {
    let keys = match &config.auth.jwt_key_file {
        Some(path) => TokenKeys::from_file(path),
        None => TokenKeys::load_or_create(&config.data.dir),
    }
    .context("loading the token signing key")?;
    Ok(App {
        fleet: runtime.fleet.clone(),
        access: store.clone(),
        events: store,
        keys: Arc::new(keys),
        passwords,
        changes,
        sessions,
        limits: Default::default(),
        root: Some(runtime.root().clone()),
    })
}

/// Serves the API on `listen` (or, with `fallback`, on a free port when it is taken) until
/// `shutdown` completes.
pub async fn start(
    config: &Config,
    runtime: &Runtime,
    app: App,
    metrics: Option<&crate::metrics::Metrics>,
    fallback: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    // Live sessions are upgraded connections the HTTP server no longer tracks: they are told
    // to go (4500) before the server stops.
    let sessions = app.sessions.clone();
    let shutdown = async move {
        shutdown.await;
        sessions.shutdown(SESSION_CLOSE_WAIT).await;
    };
    // Shared, so that the fallback attempt stops on the same signal as the first would have.
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let state = ApiState {
        readiness: Arc::new(Ready {
            eventlog: runtime
                .fleet
                .context()
                .eventlog
                .as_ref()
                .map(|l| l.stats().clone()),
        }),
        app: Some(app),
        metrics: metrics.map(|m| m.export(&runtime.fleet)),
        console: gatehouse_api::console::ConsoleFiles {
            dir: config.http.console_dir.clone(),
        },
    };
    let table = gatehouse_api::route_table(&state).context("building the routes")?;
    let api = ApiConfig {
        listen: config.http.listen,
        cors_origins: config.http.cors_origins.clone(),
        trusted_proxies: config.http.trusted_proxies.clone(),
        ..ApiConfig::default()
    };
    match gatehouse_api::serve(api.clone(), table, shutdown.clone()).await {
        Ok(served) => Ok(served),
        Err(gatehouse_api::ServeError::Bind { .. }) if fallback => {
            // The demo must run next to anything else on the machine.
            let table = gatehouse_api::route_table(&state).context("building the routes")?;
            let any = ApiConfig {
                listen: SocketAddr::new(config.http.listen.ip(), 0),
                ..api
            };
            Ok(gatehouse_api::serve(any, table, shutdown).await?)
        }
        Err(e) => Err(e.into()),
    }
}
