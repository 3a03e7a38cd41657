//! Booting from the store: open (and migrate) the database, seed the fleet from a fleet file
//! on first boot, restore every gate's resume point (sequence, cycle total, recent command
//! outcomes), and assemble the supervision tree. Also the fleet import and export behind
//! `gatehouse fleet`.
//!
//! The tree, as [`Runtime::boot_tree`] assembles it (each node's module draws its own
//! subtree; `gatehouse_actors::tree::root` draws the whole):
//!
//! ```text
//! root                 one_for_one, 5 restarts / 60 s, backoff 100 ms..5 s
//! ├── eventlog         permanent   the writer (its queue outlives it)
//! ├── hub              permanent   from the API's SessionTree (if any)
//! ├── fleet            permanent   one_for_one; its controllers are added once it is up
//! │   └── controller:<id> ×n       gate:<id> ×m, then link
//! └── sessions         permanent   from the API's SessionTree (if any); temporary sessions
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gatehouse_actors::blob::BlobStore;
use gatehouse_actors::clock::wall_ms;
use gatehouse_actors::cluster::Ownership;
use gatehouse_actors::fleet_config;
use gatehouse_actors::ids::NodeId;
use gatehouse_actors::notify::Mailer;
use gatehouse_actors::store::{EventStore, FleetChange, FleetRecords, FleetStore};
use gatehouse_actors::tree::bus::{EventSink, LocalBus};
use gatehouse_actors::tree::controller::restore_gates;
use gatehouse_actors::tree::eventlog;
use gatehouse_actors::tree::keeper::{self, KeeperArgs};
use gatehouse_actors::tree::notifier::{self, Alerts, MailHealth, NotifierArgs};
use gatehouse_actors::tree::reports::ReportJobs;
use gatehouse_actors::tree::root::RootChildren;
use gatehouse_actors::tree::scheduler::{self, SchedulerArgs};
use gatehouse_actors::tree::{ControllerSpec, Directory, Fleet, FleetContext};
use gatehouse_adapters::blob::local::LocalBlobs;
use gatehouse_adapters::blob::s3::{S3Blobs, S3Settings};
use gatehouse_adapters::mail::{FileMailer, SmtpMailer};
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_adapters::store::{Store, redact};
use gatehouse_api::ws::SessionTree;

use crate::Runtime;
use crate::config::Config;
use crate::fleet_file::{Catalog, FleetFile, build_controller};

/// Opens the configured database, migrating it unless configured not to.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<Store>> {
    let store = Store::connect(&config.database.url)
        .await
        .with_context(|| format!("opening the database {}", redact(&config.database.url)))?;
    if config.database.migrate_at_boot {
        let applied = store.migrate().await.context("migrating the database")?;
        if applied > 0 {
            tracing::info!(applied, "database migrated");
        }
    }
    Ok(Arc::new(store))
}

/// What an import changes, in the order the store must apply it.
#[derive(Debug, Default)]
pub struct ImportPlan {
    pub changes: Vec<FleetChange>,
    pub upserted: usize,
    pub removed: usize,
}

/// The changes that make the store hold `file`: every entry upserted (so a second import is a
/// no-op in effect), and with `prune` everything the file leaves out removed, gates first.
pub fn plan_import(current: &FleetRecords, file: &FleetFile, prune: bool) -> ImportPlan {
    let wanted = file.to_records();
    let mut plan = ImportPlan::default();
    let gates: BTreeSet<_> = wanted.gates.iter().map(|g| &g.id).collect();
    let controllers: BTreeSet<_> = wanted.controllers.iter().map(|c| &c.id).collect();
    let sites: BTreeSet<_> = wanted.sites.iter().map(|s| &s.id).collect();
    // Gates leave first, so that a new gate may take a removed gate's unit (the database
    // checks (controller, unit) at each statement).
    if prune {
        for g in current.gates.iter().filter(|g| !gates.contains(&g.id)) {
            plan.changes.push(FleetChange::RemoveGate(g.id.clone()));
        }
    }
    let removed_gates = plan.changes.len();
    for s in &wanted.sites {
        plan.changes.push(FleetChange::UpsertSite(s.clone()));
    }
    for c in &wanted.controllers {
        plan.changes.push(FleetChange::UpsertController(c.clone()));
    }
    for g in &wanted.gates {
        plan.changes.push(FleetChange::UpsertGate(g.clone()));
    }
    plan.upserted = plan.changes.len() - removed_gates;
    if prune {
        for c in current
            .controllers
            .iter()
            .filter(|c| !controllers.contains(&c.id))
        {
            plan.changes
                .push(FleetChange::RemoveController(c.id.clone()));
        }
        for s in current.sites.iter().filter(|s| !sites.contains(&s.id)) {
            plan.changes.push(FleetChange::RemoveSite(s.id.clone()));
        }
    }
    plan.removed = plan.changes.len() - plan.upserted;
    plan
}

/// Imports `file` into the store in one transaction, after checking the result as a whole.
pub async fn import(
    store: &Store,
    file: &FleetFile,
    prune: bool,
    profiles: &ProfileSet,
) -> anyhow::Result<ImportPlan> {
    let current = store.load_fleet().await?;
    let plan = plan_import(&current, file, prune);
    let mut next = current;
    next.apply(&plan.changes)
        .map_err(|e| anyhow::anyhow!("import: {e}"))?;
    FleetFile::check_records("import result", &next, profiles)?;
    store.apply(plan.changes.clone()).await?;
    Ok(plan)
}

/// How the tree is set up beyond what the store holds.
#[derive(Clone)]
pub struct TreeOptions {
    /// Entries the event log queues before gates wait for it.
    pub eventlog_queue: usize,
    /// Time between the scheduler's maintenance rounds.
    pub maintenance_check: Duration,
    /// Notifications (none: no notifier, for tools and tests that send no mail).
    pub notify: Option<NotifySetup>,
    /// Files (none: no reports).
    pub blobs: Option<Arc<dyn BlobStore>>,
    /// Queue each site's previous month at the start of a month.
    pub monthly_reports: bool,
    /// A node of a cluster: controllers are driven by lease (none: all of them, alone).
    pub cluster: Option<ClusterSetup>,
}

/// This node's place in a cluster (`[cluster]`).
#[derive(Clone)]
pub struct ClusterSetup {
    pub node: NodeId,
    pub lease_ttl: Duration,
    /// Where controller connections start from.
    pub bind: Option<std::net::IpAddr>,
    /// The Redis of the live bus between nodes.
    pub redis_url: String,
    /// How commands reach the node driving a gate (the Redis bus, once started).
    pub peers: Option<Arc<dyn gatehouse_actors::cluster::Peers>>,
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions {
            eventlog_queue: eventlog::QUEUE_CAPACITY,
            maintenance_check: Duration::from_secs(60),
            notify: None,
            blobs: None,
            monthly_reports: false,
            cluster: None,
        }
    }
}

impl TreeOptions {
    pub fn of(config: &Config) -> anyhow::Result<TreeOptions> {
        Ok(TreeOptions {
            eventlog_queue: config.eventlog.queue,
            maintenance_check: Duration::from_secs(config.maintenance.check_interval_s),
            notify: Some(NotifySetup::of(config)?),
            blobs: Some(blob_store(config)?),
            monthly_reports: config.reports.monthly,
            cluster: match &config.cluster {
                Some(c) => Some(ClusterSetup {
                    node: NodeId::new(&c.node_id)
                        .map_err(|e| anyhow::anyhow!("cluster.node_id: {e}"))?,
                    lease_ttl: Duration::from_millis(c.lease_ttl_ms),
                    bind: c.bind,
                    redis_url: c.redis_url.clone().unwrap_or_default(),
                    peers: None,
                }),
                None => None,
            },
        })
    }
}

/// The blob store `[storage]` names: S3 when a bucket is set, else `<data dir>/blobs/`.
pub fn blob_store(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    let s = &config.storage;
    if let Some(bucket) = &s.s3_bucket {
        let blobs = S3Blobs::new(S3Settings {
            endpoint: s.s3_endpoint.clone(),
            bucket: bucket.clone(),
            region: s.s3_region.clone(),
            path_style: s.s3_path_style,
            access_key: s.s3_access_key.clone(),
            secret_key: s.s3_secret_key.clone(),
        })?;
        return Ok(Arc::new(blobs));
    }
    let dir = config.data.dir.join("blobs");
    let local =
        LocalBlobs::new(&dir).with_context(|| format!("data.dir: creating {}", dir.display()))?;
    Ok(Arc::new(local))
}

/// How the notifier sends mail.
#[derive(Clone)]
pub struct NotifySetup {
    pub mailer: Arc<dyn Mailer>,
    pub public_url: Option<String>,
    pub dedupe_window: Duration,
    pub first_retry: Duration,
}

impl NotifySetup {
    /// `[mail]`: SMTP when `smtp_url` is set, else `.eml` files in `<data dir>/outbox/`.
    pub fn of(config: &Config) -> anyhow::Result<NotifySetup> {
        let m = &config.mail;
        let mailer: Arc<dyn Mailer> = match &m.smtp_url {
            Some(url) => Arc::new(SmtpMailer::new(url, &m.from, m.ca_file.as_deref())?),
            None => Arc::new(FileMailer::new(&config.data.dir.join("outbox"), &m.from)?),
        };
        Ok(NotifySetup {
            mailer,
            public_url: config.http.public_url.clone(),
            dedupe_window: Duration::from_secs(m.dedupe_window_s),
            first_retry: Duration::from_secs(m.first_retry_s),
        })
    }
}

impl Runtime {
    /// Boots from the store, without the WebSocket layer (tools, tests and benchmarks that
    /// serve no API). See [`Runtime::boot_tree`].
    pub async fn boot(
        store: Arc<Store>,
        profiles: ProfileSet,
        seed: Option<&FleetFile>,
        bus: LocalBus,
    ) -> anyhow::Result<Runtime> {
        Self::boot_tree(store, profiles, seed, bus, None, TreeOptions::default()).await
    }

    /// Boots from the store. On a first boot (an empty store) `seed` is imported first; after
    /// that the store is the truth and a fleet file is for `gatehouse fleet import`. With
    /// `sessions`, the WebSocket layer's hub and session supervisor join the tree.
    pub async fn boot_tree(
        store: Arc<Store>,
        profiles: ProfileSet,
        seed: Option<&FleetFile>,
        bus: LocalBus,
        sessions: Option<SessionTree>,
        options: TreeOptions,
    ) -> anyhow::Result<Runtime> {
        let records = load_or_seed(&store, &profiles, seed).await?;
        if let Err(e) = fleet_config::validate(&records, &profiles) {
            // Stored before this rule existed: it runs (one bad entry must not keep the
            // rest down), and the next configuration change must fix it.
            tracing::warn!("the stored fleet breaks a configuration rule: {e}");
        }
        // In a cluster the lease keeper starts the controllers this node takes, each restored
        // when taken; alone, all of them start now.
        let ownership = match &options.cluster {
            Some(c) => {
                anyhow::ensure!(
                    store.backend() == gatehouse_adapters::store::Backend::Postgres,
                    "[cluster] needs PostgreSQL: the nodes share its leases"
                );
                tracing::info!(node = %c.node, ttl = ?c.lease_ttl, "a node of a cluster: controllers are driven by lease");
                Some(Arc::new(Ownership::new(c.node.clone(), c.lease_ttl)))
            }
            None => None,
        };
        let specs = match &ownership {
            Some(_) => Vec::new(),
            None => restore_controllers(&store, &records, &profiles).await?,
        };

        let sink: Arc<dyn EventSink> = Arc::new(bus.clone());
        let directory = Arc::new(Directory::default());
        let events: Arc<dyn EventStore> = store.clone();
        let (log, writer) = eventlog::channel(
            events,
            directory.clone(),
            sink.clone(),
            options.eventlog_queue,
        );
        let writer = match &ownership {
            Some(o) => writer.fenced(o.clone()),
            None => writer,
        };
        let peers = options.cluster.as_ref().and_then(|c| c.peers.clone());
        let ctx = FleetContext::clustered(sink, directory, Some(log), ownership.clone(), peers);
        let (fleet, fleet_spec) = Fleet::new(ctx);
        let fleets: Arc<dyn FleetStore> = store.clone();
        let fleet = fleet.configurable(
            fleets,
            Arc::new(Catalog {
                profiles,
                bind: options.cluster.as_ref().and_then(|c| c.bind),
            }),
            records,
        );
        let (hub, sessions) = match sessions {
            Some(tree) => (Some(tree.hub), Some(tree.sessions)),
            None => (None, None),
        };
        let reports = options.blobs.clone().map(|blobs| ReportJobs {
            reports: store.clone(),
            events: store.clone(),
            access: store.clone(),
            maintenance: store.clone(),
            blobs,
            monthly: options.monthly_reports,
            claimer: options
                .cluster
                .as_ref()
                .map_or_else(|| "local".to_string(), |c| c.node.to_string()),
        });
        let (scheduler, scheduler_handle) = scheduler::child_spec(SchedulerArgs {
            store: store.clone(),
            fleet: fleet.clone(),
            every: options.maintenance_check,
            reports,
        });
        let health = Arc::new(MailHealth::default());
        let (notifier, alerts) = match options.notify {
            Some(setup) => {
                let subscribe = bus.clone();
                let (spec, alerts) = notifier::child_spec(NotifierArgs {
                    store: store.clone(),
                    access: store.clone(),
                    mailer: setup.mailer,
                    fleet: fleet.clone(),
                    bus: Arc::new(move || subscribe.subscribe()),
                    public_url: setup.public_url,
                    dedupe_window: setup.dedupe_window,
                    first_retry: setup.first_retry,
                    health: health.clone(),
                });
                (Some(spec), alerts)
            }
            None => (None, Alerts::default()),
        };
        let keeper = ownership.map(|ownership| {
            keeper::child_spec(KeeperArgs {
                ownership,
                leases: store.clone(),
                events: store.clone(),
                fleet: fleet.clone(),
            })
        });
        let children = RootChildren {
            eventlog: Some(eventlog::child_spec(writer)),
            hub,
            fleet: fleet_spec,
            keeper,
            sessions,
            scheduler: Some(scheduler),
            notifier,
        };
        let mut runtime = Runtime::assemble(fleet, bus, children, specs).await?;
        runtime.alerts = alerts;
        runtime.mail = health;
        runtime.scheduler = scheduler_handle;
        runtime.blobs = options.blobs;
        Ok(runtime)
    }
}

/// The fleet records in the store, seeded from `seed` when the store has none.
async fn load_or_seed(
    store: &Store,
    profiles: &ProfileSet,
    seed: Option<&FleetFile>,
) -> anyhow::Result<FleetRecords> {
    let records = store.load_fleet().await?;
    let Some(seed) = seed else {
        return Ok(records);
    };
    if !(records.controllers.is_empty() && records.sites.is_empty()) {
        tracing::info!(
            "the store holds the fleet; the fleet file is not applied (use `gatehouse fleet import`)"
        );
        return Ok(records);
    }
    let plan = import(store, seed, false, profiles).await?;
    tracing::info!(entries = plan.upserted, "fleet seeded from the fleet file");
    Ok(store.load_fleet().await?)
}

/// Every controller's subtree spec, with each gate's resume point from the store (its
/// sequence, cycle total and the outcomes of its recent commands).
async fn restore_controllers(
    store: &Store,
    records: &FleetRecords,
    profiles: &ProfileSet,
) -> anyhow::Result<Vec<ControllerSpec>> {
    let mut specs = Vec::new();
    for c in &records.controllers {
        // One misconfigured controller (a profile file gone) must not keep the rest down.
        match build_controller(records, &c.id, profiles, None) {
            Ok(spec) => specs.push(spec),
            Err(e) => tracing::error!(controller = %c.id, "not started: {e}"),
        }
    }
    restore_gates(&mut specs, store, wall_ms()).await?;
    tracing::info!(
        controllers = specs.len(),
        gates = specs.iter().map(|s| s.gates.len()).sum::<usize>(),
        "fleet restored from the store"
    );
    Ok(specs)
}

/// `gatehouse fleet export`: the store's fleet as a fleet file.
pub async fn export(store: &Store) -> anyhow::Result<String> {
    let records = store.load_fleet().await?;
    Ok(FleetFile::from_records(&records).to_toml())
}

/// `gatehouse migrate`.
pub async fn migrate(config: &Config) -> anyhow::Result<usize> {
    let store = Store::connect(&config.database.url)
        .await
        .with_context(|| format!("opening the database {}", redact(&config.database.url)))?;
    Ok(store.migrate().await?)
}
