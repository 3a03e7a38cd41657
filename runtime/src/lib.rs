//! The `gatehouse` binary's library half: configuration, the fleet file, boot and shutdown,
//! and the demo. It wires the crates together and holds no business rules; those live in
//! `gatehouse-actors`.

pub mod boot;
pub mod config;
pub mod demo;
pub mod fleet_file;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod users;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use crate::boot::TreeOptions;

use anyhow::Context;
use gatehouse_actors::supervision::SupervisorMsg;
use gatehouse_actors::tree::bus::LocalBus;
use gatehouse_actors::tree::root::{self, Root, RootChildren};
use gatehouse_actors::tree::{ControllerSpec, Fleet, FleetContext};
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_adapters::redis_bus::RedisBus;
use gatehouse_api::changes::AccessChanges;
use gatehouse_api::ws::Sessions;
use ractor::ActorRef;

use crate::config::Config;
use crate::fleet_file::FleetFile;

/// A running runtime: the supervision tree (see `gatehouse_actors::tree::root` for its
/// shape), a handle on its fleet, and its bus.
pub struct Runtime {
    pub fleet: Fleet,
    pub bus: LocalBus,
    /// The root supervisor.
    root: ActorRef<SupervisorMsg>,
    /// Resolves when the root has stopped (after shutdown, or an escalation that reached
    /// the top).
    stopped: ractor::concurrency::JoinHandle<()>,
    /// Alerts raised outside the tree (login lockouts) reach the notifier through this.
    pub alerts: gatehouse_actors::tree::notifier::Alerts,
    /// The notifier's view of mail delivery (readiness).
    pub mail: Arc<gatehouse_actors::tree::notifier::MailHealth>,
    /// Wakes the scheduler (reports requested).
    pub scheduler: gatehouse_actors::tree::scheduler::SchedulerHandle,
    /// Where files go, when the runtime has a store for them.
    pub blobs: Option<Arc<dyn gatehouse_actors::blob::BlobStore>>,
    /// On a node of a cluster: the live bus between the nodes.
    pub cluster_bus: Option<gatehouse_adapters::redis_bus::RedisBus>,
    /// On a node of a cluster: the rate limits and lockouts the nodes share.
    pub shared_limits: Option<Arc<dyn gatehouse_actors::cluster::SharedLimits>>,
}

impl Runtime {
    /// Boots the tree for `controllers`.
    pub async fn start(controllers: Vec<ControllerSpec>) -> anyhow::Result<Runtime> {
        Self::start_on(LocalBus::default(), controllers).await
    }

    /// Starts the root with `children`, then the fleet's `controllers` under it.
    async fn assemble(
        fleet: Fleet,
        bus: LocalBus,
        children: RootChildren,
        controllers: Vec<ControllerSpec>,
    ) -> anyhow::Result<Runtime> {
        let Root {
            supervisor,
            stopped,
        } = Root::start(children)
            .await
            .context("starting the supervision tree")?;
        let runtime = Runtime {
            fleet,
            bus,
            root: supervisor,
            stopped,
            alerts: Default::default(),
            mail: Default::default(),
            scheduler: Default::default(),
            blobs: None,
            cluster_bus: None,
            shared_limits: None,
        };
        if let Err(e) = runtime.fleet.add_controllers(controllers).await {
            root::stop(&runtime.root, "tree", Duration::from_secs(10)).await;
            return Err(e).context("starting the fleet");
        }
        Ok(runtime)
    }

    /// Boots the tree on `bus` without a store (nothing durable: tools, tests, benchmarks),
    /// so that a caller who subscribed first sees the first events.
    pub async fn start_on(
        bus: LocalBus,
        controllers: Vec<ControllerSpec>,
    ) -> anyhow::Result<Runtime> {
        let ctx = FleetContext::new(Arc::new(bus.clone()));
        let (fleet, spec) = Fleet::new(ctx);
        let children = RootChildren {
            eventlog: None,
            hub: None,
            fleet: spec,
            keeper: None,
            sessions: None,
            scheduler: None,
            notifier: None,
        };
        Self::assemble(fleet, bus, children, controllers).await
    }

    /// The root supervisor (to read the tree, or to fail one of its children in a test).
    pub fn root(&self) -> &ActorRef<SupervisorMsg> {
        &self.root
    }

    /// Waits for a shutdown signal, or for the tree to stop on its own (an escalation that
    /// reached the root: the process should exit non-zero and be restarted by its manager).
    /// Runs until SIGINT/SIGTERM; then runs `before_tree` (stopping the API, so that clients
    /// are told to go before the gates stop answering) and stops the tree.
    pub async fn run_until_signal(
        mut self,
        mut signal: ShutdownSignal,
        timeout: Duration,
        before_tree: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            signal = signal.recv() => {
                tracing::info!("{signal} received; shutting down");
                before_tree.await;
                root::stop(&self.root, "supervision tree", timeout).await;
                let _ = (&mut self.stopped).await;
                tracing::info!("stopped cleanly");
                Ok(())
            }
            _ = &mut self.stopped => {
                anyhow::bail!("the root supervisor stopped on its own (restart intensity exceeded)")
            }
        }
    }

    /// Stops the whole tree in reverse start order (sessions, fleet, hub, event log).
    pub async fn shutdown(self, timeout: Duration) {
        root::stop(&self.root, "supervision tree", timeout).await;
        let _ = self.stopped.await;
    }
}

/// The built-in profiles plus the configured directory's.
pub fn load_profiles(config: &Config) -> anyhow::Result<ProfileSet> {
    let mut profiles = ProfileSet::builtin()?;
    if let Some(dir) = &config.profiles.dir {
        profiles.load_dir(dir)?;
    }
    Ok(profiles)
}

/// `gatehouse serve`: the fleet from the store (seeded from the fleet file on first boot),
/// until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let signals = ShutdownSignal::listen();
    let metrics = metrics::install(&config.metrics)?;
    let profiles = load_profiles(&config)?;
    let seed = match &config.fleet.file {
        Some(path) => Some(FleetFile::load(path, &profiles)?),
        None => None,
    };
    let store = boot::open_store(&config).await?;
    tracing::info!(
        database = %gatehouse_adapters::store::redact(&config.database.url),
        backend = store.backend().as_str(),
        "database open"
    );
    // This node's committed events.
    let bus = LocalBus::default();
    let watcher = tokio::spawn(watch::log_events(bus.subscribe()));
    let changes = AccessChanges::default();
    let mut options = TreeOptions::of(&config)?;
    // In a cluster the sessions follow every node's events: this node's, forwarded, and the
    // others' from Redis.
    let mut shared_limits: Option<Arc<dyn gatehouse_actors::cluster::SharedLimits>> = None;
    let (view, cluster_bus) = match &mut options.cluster {
        Some(setup) => {
            shared_limits = Some(Arc::new(
                gatehouse_adapters::redis_limits::RedisLimits::new(
                    &setup.redis_url,
                    CHANNEL_PREFIX,
                )?,
            ));
            let view = LocalBus::default();
            let redis = RedisBus::start(
                &setup.redis_url,
                setup.node.clone(),
                CHANNEL_PREFIX,
                view.clone(),
            )?;
            setup.peers = Some(Arc::new(redis.clone()));
            (view, Some(redis))
        }
        None => (bus.clone(), None),
    };
    // Forwarding starts before the tree, so that no committed event is missed.
    let mut cluster_tasks: Vec<tokio::task::JoinHandle<()>> = cluster_bus
        .iter()
        .map(|redis| redis.forward(&bus))
        .collect();
    let (sessions, tree) = Sessions::new(view, &changes, config.websocket.sessions());
    let mut runtime = Runtime::boot_tree(
        store.clone(),
        profiles,
        seed.as_ref(),
        bus,
        Some(tree),
        options,
    )
    .await?;
    if let Some(redis) = &cluster_bus
        && let Some(ownership) = runtime.fleet.context().ownership.clone()
    {
        redis.serve(runtime.fleet.clone(), ownership.clone());
        redis.follow_store(store.clone());
        cluster_tasks.extend(carry_notices(
            redis,
            &changes,
            runtime.fleet.clone(),
            ownership,
        ));
    }
    runtime.cluster_bus = cluster_bus;
    runtime.shared_limits = shared_limits;
    if runtime.fleet.configured().await.is_empty() {
        tracing::warn!(
            "no controllers configured: import a fleet with `gatehouse fleet import FILE`"
        );
    }
    let passwords = gatehouse_api::auth::password::Passwords::owasp()?;
    let app = http::app(
        &config,
        &runtime,
        store.clone(),
        passwords,
        sessions,
        changes,
    )
    .await?;
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = http::start(
        &config,
        &runtime,
        app,
        store.clone(),
        metrics.as_ref(),
        false,
        async {
            let _ = http_stopped.await;
        },
    )
    .await?;
    tracing::info!("API on http://{addr}/api/v1 (OpenAPI at /api/v1/openapi.json)");
    let mut server = Some(server);
    let stop_api = async {
        let _ = stop_http.send(());
        if let Some(server) = server.take() {
            let _ = server.await;
        }
    };
    let result = runtime
        .run_until_signal(signals, config.shutdown.timeout(), stop_api)
        .await;
    if let Some(server) = server.take() {
        // The fleet stopped on its own: the API stops too (its stop sender is gone).
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    watcher.abort();
    let _ = watcher.await;
    for task in cluster_tasks {
        task.abort();
    }
    result
}

/// The Redis channels of a cluster start with this.
const CHANNEL_PREFIX: &str = "gatehouse:";

/// The notice a node leaving the cluster sends once its leases are released: the others take
/// them at once instead of at their next round.
const LEASES_RELEASED: &str = "leases_released";

/// Carries the access notices announced on this node to the other nodes, and theirs here; a
/// fleet change made on another node is read from the store first (`Fleet::reload`), so that
/// the sessions re-checking their gates see the new configuration. Carries the word that a
/// leaving node released its leases likewise. Answers the tasks (they end with the process).
fn carry_notices(
    redis: &RedisBus,
    changes: &AccessChanges,
    fleet: gatehouse_actors::tree::Fleet,
    ownership: Arc<gatehouse_actors::cluster::Ownership>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use gatehouse_api::changes::AccessChange;
    use tokio::sync::broadcast::error::RecvError;
    let mut announced = changes.announced();
    let out = redis.clone();
    let outgoing = tokio::spawn(async move {
        loop {
            let change = match announced.recv().await {
                Ok(change) => change,
                // Lost notices: every other node re-checks every session.
                Err(RecvError::Lagged(_)) => AccessChange::Fleet,
                Err(RecvError::Closed) => return,
            };
            match serde_json::to_value(change) {
                Ok(v) => out.announce(v),
                Err(e) => tracing::error!(error = %e, "an access notice could not be encoded"),
            }
        }
    });
    let out = redis.clone();
    ownership.on_release(move || {
        let out = out.clone();
        Box::pin(async move { out.announce_now(serde_json::json!(LEASES_RELEASED)).await })
    });
    let mut notices = redis.notices();
    let into = changes.clone();
    let incoming = tokio::spawn(async move {
        loop {
            let change = match notices.recv().await {
                Ok(v) if v == LEASES_RELEASED => {
                    ownership.wake();
                    continue;
                }
                Ok(v) => match serde_json::from_value::<AccessChange>(v) {
                    Ok(change) => change,
                    Err(e) => {
                        tracing::warn!(error = %e, "an access notice from another node was not understood");
                        continue;
                    }
                },
                Err(RecvError::Lagged(_)) => AccessChange::Fleet,
                Err(RecvError::Closed) => return,
            };
            if change == AccessChange::Fleet {
                match fleet.reload().await {
                    Ok(true) => {
                        tracing::info!("the fleet configuration changed on another node; reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(
                        error = %e,
                        "the fleet changed on another node and could not be reloaded"
                    ),
                }
            }
            into.deliver(change);
        }
    });
    vec![outgoing, incoming]
}

/// SIGINT and SIGTERM, listened for from the moment this is made: a signal that arrives while
/// the runtime is still booting is then a graceful stop once it is up, not the default
/// action's abrupt death.
pub struct ShutdownSignal {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignal {
    /// Installs the handlers now.
    pub fn listen() -> ShutdownSignal {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            ShutdownSignal {
                int: signal(SignalKind::interrupt()).ok(),
                term: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            ShutdownSignal {}
        }
    }

    /// Resolves on the next SIGINT or SIGTERM, naming which.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.int) => "SIGINT",
                _ = next(&mut self.term) => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            "SIGINT"
        }
    }
}
