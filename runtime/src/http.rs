//! Starting the HTTP API for a booted runtime: the application handles, the token keys from
//! the data directory, readiness from the event log.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use std::sync::Mutex;
use std::time::Duration;

use gatehouse_actors::tree::Fleet;
use gatehouse_actors::tree::eventlog::{EventLog, EventLogStats};
use gatehouse_actors::tree::link::LinkPhase;
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

/// How often the database is pinged for readiness, and how long a ping may take.
const DB_PING_EVERY: Duration = Duration::from_secs(5);
const DB_PING_TIMEOUT: Duration = Duration::from_secs(3);

/// The event-log queue filled beyond this share: degraded (gates will soon wait on it).
const BACKLOG_DEGRADED: f64 = 0.25;
/// …and beyond this: not ready (commands would stall behind it).
const BACKLOG_NOT_READY: f64 = 0.9;

/// The last database ping: `None` before the first, else its error if it failed.
type Ping = Arc<Mutex<Option<Result<(), String>>>>;

/// What `/readyz` reads: the database (pinged in the background, so that the probe itself
/// never waits on it), the event log's commits and backlog, the links, and mail delivery.
struct Ready {
    eventlog: Option<EventLog>,
    eventlog_stats: Option<Arc<EventLogStats>>,
    ping: Ping,
    fleet: Fleet,
    mail: Arc<gatehouse_actors::tree::notifier::MailHealth>,
    /// The blob store (where it is, and its last ping), if files are kept.
    blobs: Option<(String, Ping)>,
    /// On a node of a cluster: the live bus between the nodes.
    cluster_bus: Option<gatehouse_adapters::redis_bus::RedisBus>,
}

impl Readiness for Ready {
    fn checks(&self) -> Vec<Check> {
        let mut checks = Vec::with_capacity(6);
        checks.push(
            match &*self.ping.lock().unwrap_or_else(|e| e.into_inner()) {
                None => Check::ready("database").with_detail("not pinged yet"),
                Some(Ok(())) => Check::ready("database"),
                Some(Err(e)) => {
                    Check::not_ready("database", format!("the database does not answer: {e}"))
                }
            },
        );
        checks.push(match &self.eventlog_stats {
            Some(stats) if !stats.is_healthy() => Check::not_ready(
                "event_log",
                match stats.last_error() {
                    Some(e) => {
                        format!("commits to the database are failing ({e}); outcomes are held back")
                    }
                    None => "commits to the database are failing; outcomes are held back".into(),
                },
            ),
            _ => Check::ready("event_log"),
        });
        if let Some(log) = &self.eventlog {
            let (depth, capacity) = (log.queue_depth(), log.queue_capacity().max(1));
            let share = depth as f64 / capacity as f64;
            let detail = format!("{depth} of {capacity} entries waiting");
            checks.push(if share >= BACKLOG_NOT_READY {
                Check::not_ready("event_log_backlog", detail)
            } else if share >= BACKLOG_DEGRADED {
                Check::degraded("event_log_backlog", detail)
            } else {
                Check::ready("event_log_backlog").with_detail(detail)
            });
        }
        let links = self.fleet.context().link_stats();
        let mut down: Vec<String> = links
            .iter()
            .filter(|(_, s)| s.status().phase != LinkPhase::Connected)
            .map(|(c, _)| c.to_string())
            .collect();
        down.sort();
        let summary = format!("{} of {} connected", links.len() - down.len(), links.len());
        // A controller that is down is the site's problem, not this node's: it stays ready.
        checks.push(if down.is_empty() {
            Check::ready("links").with_detail(summary)
        } else {
            const NAMED: usize = 10;
            let more = down.len().saturating_sub(NAMED);
            down.truncate(NAMED);
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            Check::degraded(
                "links",
                format!("{summary}; down: {}{tail}", down.join(", ")),
            )
        });
        // Mail is optional: failing delivery degrades, it never takes the node out.
        let mail = self.mail.state();
        let detail = format!("{}; {} waiting", mail.target, mail.pending);
        checks.push(match mail.failing {
            Some(why) => Check::degraded("mail", format!("{detail}; last attempt: {why}")),
            None => Check::ready("mail").with_detail(detail),
        });
        // Reports wait and uploads are refused while the blob store is away: degraded, as
        // for mail; nothing already stored is lost.
        if let Some((target, ping)) = &self.blobs {
            checks.push(match &*ping.lock().unwrap_or_else(|e| e.into_inner()) {
                None => Check::ready("blob_store").with_detail(format!("{target}; not pinged yet")),
                Some(Ok(())) => Check::ready("blob_store").with_detail(target.clone()),
                Some(Err(e)) => Check::degraded(
                    "blob_store",
                    format!("{target} does not answer: {e}; reports wait, uploads are refused"),
                ),
            });
        }
        // Without Redis, other nodes' gates are followed from the store and commands for them
        // are refused as offline; this node's own gates are driven as ever (the leases are in
        // the database): degraded, never a reason to drain every node at once.
        if let Some(bus) = &self.cluster_bus {
            checks.push(match bus.health().problem() {
                None => Check::ready("cluster_bus"),
                Some(why) => Check::degraded(
                    "cluster_bus",
                    format!("Redis unreachable ({why}): other nodes' gates are read from the store, commands for them are refused"),
                ),
            });
        }
        checks
    }
}

/// Pings the database every [`DB_PING_EVERY`] until the process ends. It only updates what
/// `/readyz` reads; losing it loses no state.
fn ping_database(store: Arc<Store>, ping: Ping) {
    pinging(
        move || {
            let store = store.clone();
            async move { store.ping().await.map_err(|e| e.to_string()) }
        },
        ping,
    );
}

/// Lists an empty prefix of the blob store every [`DB_PING_EVERY`]: one cheap request that
/// needs the store to be there and the credentials to be good.
fn ping_blobs(blobs: Arc<dyn gatehouse_actors::blob::BlobStore>, ping: Ping) {
    pinging(
        move || {
            let blobs = blobs.clone();
            async move {
                blobs
                    .list("readyz/")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
        ping,
    );
}

fn pinging<F, Fut>(ping_once: F, ping: Ping)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    tokio::spawn(async move {
        let mut every = tokio::time::interval(DB_PING_EVERY);
        loop {
            every.tick().await;
            let result = match tokio::time::timeout(DB_PING_TIMEOUT, ping_once()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {DB_PING_TIMEOUT:?}")),
            };
            *ping.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        }
    });
}

/// The rate limits: this node's, and the cluster's shared ones on a node of a cluster; command
/// ids claimed in `ids`.
fn limits(
    runtime: &Runtime,
    ids: Arc<dyn gatehouse_actors::store::CommandIdStore>,
) -> gatehouse_api::ratelimit::RateLimits {
    use gatehouse_api::command_ids::{Claiming, CommandIds};
    // Alone, this node's memory of ids decides (loaded at start by `remember_command_ids`);
    // in a cluster, other nodes claim ids too.
    let claiming = match runtime.cluster_bus {
        Some(_) => Claiming::Wait,
        None => Claiming::Record,
    };
    let limits = gatehouse_api::ratelimit::RateLimits::default()
        .claiming_in(CommandIds::start(ids, claiming));
    match &runtime.shared_limits {
        Some(shared) => limits.shared_with(shared.clone()),
        None => limits,
    }
}

/// Loads the command ids claimed lately into the app's memory of ids, before it serves: a
/// failure is logged (the store still has them; a node alone then checks only what it sees).
async fn remember_command_ids(app: &App) {
    match app.limits.load_recent_ids().await {
        Ok(n) => tracing::debug!(ids = n, "command ids claimed lately remembered"),
        Err(e) => tracing::warn!(
            error = %e,
            "the command ids claimed lately could not be read; ids used before this start are \
             checked only against the store's record, after their commands"
        ),
    }
}

/// The application handles for `runtime` on `store`, with the WebSocket session layer whose
/// hub and supervisor the runtime's root started, and the command ids claimed lately
/// remembered.
pub async fn app(
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
    let app = App {
        fleet: runtime.fleet.clone(),
        access: store.clone(),
        events: store.clone(),
        maintenance: store.clone(),
        notify: store.clone(),
        alerts: runtime.alerts.clone(),
        reports: store.clone(),
        blobs: runtime.blobs.clone(),
        scheduler: runtime.scheduler.clone(),
        max_attachment: config.storage.max_attachment_mb * 1024 * 1024,
        public_url: config.http.public_url.clone(),
        keys: Arc::new(keys),
        passwords,
        changes,
        sessions,
        limits: Arc::new(limits(runtime, store.clone())),
        root: Some(runtime.root().clone()),
    };
    remember_command_ids(&app).await;
    Ok(app)
}

/// Serves the API on `listen` (or, with `fallback`, on a free port when it is taken) until
/// `shutdown` completes.
pub async fn start(
    config: &Config,
    runtime: &Runtime,
    app: App,
    store: Arc<Store>,
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
    let ping = Ping::default();
    ping_database(store, ping.clone());
    let blobs = runtime.blobs.clone().map(|b| {
        let ping = Ping::default();
        let target = b.describe();
        ping_blobs(b, ping.clone());
        (target, ping)
    });
    let state = ApiState {
        readiness: Arc::new(Ready {
            eventlog: runtime.fleet.context().eventlog.clone(),
            eventlog_stats: runtime
                .fleet
                .context()
                .eventlog
                .as_ref()
                .map(|l| l.stats().clone()),
            ping: ping.clone(),
            mail: runtime.mail.clone(),
            fleet: runtime.fleet.clone(),
            blobs,
            cluster_bus: runtime.cluster_bus.clone(),
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
        large_bodies: vec![(
            gatehouse_api::v1::maintenance::ATTACHMENTS_TEMPLATE.to_owned(),
            gatehouse_api::v1::maintenance::upload_cap(
                config.storage.max_attachment_mb * 1024 * 1024,
            ),
        )],
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn settled(ping: &Ping) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + DB_PING_TIMEOUT * 2;
        loop {
            if let Some(result) = ping.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                return result;
            }
            assert!(tokio::time::Instant::now() < deadline, "no ping finished");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_database_that_hangs_or_fails_is_reported_and_one_that_answers_clears_it() {
        let hanging = Ping::default();
        pinging(std::future::pending::<Result<(), String>>, hanging.clone());
        let why = settled(&hanging).await.expect_err("a hung ping fails");
        assert!(why.contains("no answer within"), "{why}");

        let failing = Ping::default();
        pinging(
            || async { Err("connection refused".to_string()) },
            failing.clone(),
        );
        assert_eq!(settled(&failing).await, Err("connection refused".into()));

        let fine = Ping::default();
        pinging(|| async { Ok(()) }, fine.clone());
        assert_eq!(settled(&fine).await, Ok(()));
    }
}
