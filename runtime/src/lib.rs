//! The `gatehouse` binary's library half: configuration, the fleet file, boot and shutdown,
//! and the demo. It wires the crates together and holds no business rules; those live in
//! `gatehouse-actors`.

pub mod boot;
pub mod config;
pub mod demo;
pub mod fleet_file;
pub mod http;
pub mod logging;
pub mod users;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gatehouse_actors::fleet::events::LocalBus;
use gatehouse_actors::fleet::{ControllerSpec, Fleet, FleetContext};
use gatehouse_adapters::profile::ProfileSet;

use crate::config::Config;
use crate::fleet_file::FleetFile;

/// A running runtime: the supervision tree and its bus.
pub struct Runtime {
    pub fleet: Fleet,
    pub bus: LocalBus,
    /// Resolves when the fleet supervisor has stopped (after shutdown, or an escalation that
    /// reached the top).
    stopped: ractor::concurrency::JoinHandle<()>,
}

impl Runtime {
    /// Boots the tree for `controllers`.
    pub async fn start(controllers: Vec<ControllerSpec>) -> anyhow::Result<Runtime> {
        Self::start_on(LocalBus::default(), controllers).await
    }

    fn from_parts(
        fleet: Fleet,
        bus: LocalBus,
        stopped: ractor::concurrency::JoinHandle<()>,
    ) -> Runtime {
        Runtime {
            fleet,
            bus,
            stopped,
        }
    }

    /// Boots the tree on `bus` without a store (nothing durable: tools, tests, benchmarks),
    /// so that a caller who subscribed first sees the first events.
    pub async fn start_on(
        bus: LocalBus,
        controllers: Vec<ControllerSpec>,
    ) -> anyhow::Result<Runtime> {
        let ctx = FleetContext::new(Arc::new(bus.clone()));
        let (fleet, stopped) = Fleet::start(ctx, controllers, None)
            .await
            .context("starting the fleet")?;
        Ok(Runtime {
            fleet,
            bus,
            stopped,
        })
    }

    /// Waits for a shutdown signal, or for the tree to stop on its own (an escalation that
    /// reached the root: the process should exit non-zero and be restarted by its manager).
    /// Runs until SIGINT/SIGTERM; then runs `before_fleet` (stopping the API, so that clients
    /// are told to go before the gates stop answering) and stops the fleet.
    pub async fn run_until_signal(
        mut self,
        timeout: Duration,
        before_fleet: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            signal = shutdown_signal() => {
                tracing::info!("{signal} received; shutting down");
                before_fleet.await;
                self.fleet.shutdown(timeout).await;
                let _ = (&mut self.stopped).await;
                tracing::info!("stopped cleanly");
                Ok(())
            }
            _ = &mut self.stopped => {
                anyhow::bail!("the fleet supervisor stopped on its own (restart intensity exceeded)")
            }
        }
    }

    pub async fn shutdown(self, timeout: Duration) {
        self.fleet.shutdown(timeout).await;
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
    let profiles = load_profiles(&config)?;
    let seed = match &config.fleet.file {
        Some(path) => Some(FleetFile::load(path, &profiles)?),
        None => None,
    };
    let store = boot::open_store(&config).await?;
    tracing::info!(
        database = %boot::redact(&config.database.url),
        backend = store.backend().as_str(),
        "database open"
    );
    let bus = LocalBus::default();
    let watcher = tokio::spawn(watch::log_events(bus.subscribe()));
    let runtime = Runtime::boot(store.clone(), profiles, seed.as_ref(), bus).await?;
    if runtime.fleet.controllers().is_empty() {
        tracing::warn!(
            "no controllers configured: import a fleet with `gatehouse fleet import FILE`"
        );
    }
    let app = http::app(
        &config,
        &runtime,
        store,
        gatehouse_api::auth::password::Passwords::owasp()?,
    )
    .await?;
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = http::start(&config, &runtime, app, false, async {
        let _ = http_stopped.await;
    })
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
        .run_until_signal(config.shutdown.timeout(), stop_api)
        .await;
    if let Some(server) = server.take() {
        // The fleet stopped on its own: the API stops too (its stop sender is gone).
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    watcher.abort();
    result
}

/// Resolves on SIGINT or SIGTERM, naming which.
pub async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = ctrl_c => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                ctrl_c.await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        ctrl_c.await;
        "SIGINT"
    }
}
