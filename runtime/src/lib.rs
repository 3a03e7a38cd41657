//! The `gatehouse` binary's library half: configuration, the fleet file, boot and shutdown,
//! and the demo. It wires the crates together and holds no business rules; those live in
//! `gatehouse-actors`.

pub mod config;
pub mod demo;
pub mod fleet_file;
pub mod logging;
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

    /// Boots the tree on `bus`, so that a caller who subscribed first sees the first events.
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
    pub async fn run_until_signal(mut self, timeout: Duration) -> anyhow::Result<()> {
        tokio::select! {
            signal = shutdown_signal() => {
                tracing::info!("{signal} received; shutting down");
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

/// `gatehouse serve`: the fleet from the configured fleet file, until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let profiles = load_profiles(&config)?;
    let path = config.fleet.file.as_ref().context(
        "no fleet: set fleet.file in the configuration (or GATEHOUSE_FLEET__FILE) to a fleet file",
    )?;
    let fleet = FleetFile::load(path, &profiles)?;
    tracing::info!(
        sites = fleet.sites.len(),
        controllers = fleet.controllers.len(),
        gates = fleet.gates.len(),
        "fleet loaded from {}",
        path.display()
    );
    let runtime = Runtime::start(fleet.controller_specs(&profiles)).await?;
    let watcher = tokio::spawn(watch::log_events(runtime.bus.subscribe()));
    let result = runtime.run_until_signal(config.shutdown.timeout()).await;
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
