//! Booting from the store: open (and migrate) the database, seed the fleet from a fleet file
//! on first boot, restore every gate's resume point (sequence, cycle total, recent command
//! outcomes), and start the tree with the event log writer in it. Also the fleet import and
//! export behind `gatehouse fleet`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use gatehouse_actors::eventlog;
use gatehouse_actors::fleet::events::{EventSink, LocalBus};
use gatehouse_actors::fleet::{Directory, Fleet, FleetContext};
use gatehouse_actors::gate::machine::COMMAND_MEMORY_MS;
use gatehouse_actors::store::{EventStore, FleetChange, FleetRecords, FleetStore};
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_adapters::store::Store;

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

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
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

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Runtime {
    /// Boots from the store. On a first boot (an empty store) `seed` is imported first; after
    /// that the store is the truth and a fleet file is for `gatehouse fleet import`.
    pub async fn boot(
        store: Arc<Store>,
        profiles: ProfileSet,
        seed: Option<&FleetFile>,
        bus: LocalBus,
    ) -> anyhow::Result<Runtime> {
        let mut records = store.load_fleet().await?;
        if let Some(seed) = seed {
            if records.controllers.is_empty() && records.sites.is_empty() {
                let plan = import(&store, seed, false, &profiles).await?;
                tracing::info!(entries = plan.upserted, "fleet seeded from the fleet file");
                records = store.load_fleet().await?;
            } else {
                tracing::info!(
                    "the store holds the fleet; the fleet file is not applied (use `gatehouse fleet import`)"
                );
            }
        }

        let heads: HashMap<_, _> = store.heads().await?.into_iter().collect();
        let since = wall_ms().saturating_sub(COMMAND_MEMORY_MS);
        let mut finished: HashMap<_, Vec<_>> = HashMap::new();
        for f in store.finished_commands(since).await? {
            finished
                .entry(f.gate.clone())
                .or_default()
                .push((f.id, f.action, f.status));
        }

        let mut specs = Vec::new();
        for c in &records.controllers {
            // One misconfigured controller (a profile file gone) must not keep the rest down.
            match build_controller(&records, &c.id, &profiles) {
                Ok(mut spec) => {
                    for g in &mut spec.gates {
                        if let Some(head) = heads.get(&g.spec.id) {
                            g.seq.store(head.seq, std::sync::atomic::Ordering::Relaxed);
                            g.restore.cycles = head.cycles;
                        }
                        g.restore.finished = finished.remove(&g.spec.id).unwrap_or_default();
                    }
                    specs.push(spec);
                }
                Err(e) => tracing::error!(controller = %c.id, "not started: {e}"),
            }
        }
        tracing::info!(
            controllers = specs.len(),
            gates = specs.iter().map(|s| s.gates.len()).sum::<usize>(),
            "fleet restored from the store"
        );

        let sink: Arc<dyn EventSink> = Arc::new(bus.clone());
        let directory = Arc::new(Directory::default());
        let events: Arc<dyn EventStore> = store.clone();
        let (log, writer) = eventlog::channel(events, directory.clone(), sink.clone());
        let ctx = FleetContext::with_log(sink, directory, Some(log));
        let (fleet, stopped) = Fleet::start(ctx, specs, Some(writer))
            .await
            .context("starting the fleet")?;
        let fleets: Arc<dyn FleetStore> = store.clone();
        let fleet = fleet.configurable(fleets, Arc::new(Catalog { profiles }), records);
        Ok(Runtime::from_parts(fleet, bus, stopped))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_for_messages() {
        assert_eq!(
            redact("postgres://gh:secret@db:5432/gh"),
            "postgres://gh@db:5432/gh"
        );
        assert_eq!(
            redact("sqlite://./data/gatehouse.db"),
            "sqlite://./data/gatehouse.db"
        );
    }
}
