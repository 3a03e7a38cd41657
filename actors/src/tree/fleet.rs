//! The fleet node of the tree: the supervisor of every controller subtree this node drives,
//! and [`Fleet`], the handle the rest of the runtime holds.
//!
//! ```text
//! Fleet supervisor            one_for_one, FLEET_INTENSITY, CONTROLLER_BACKOFF
//! └── Controller subtree ×n   permanent (see `controller.rs`)
//! ```
//!
//! The fleet applies configuration changes by starting and stopping controller subtrees;
//! which controllers this node drives is decided here, in one place
//! ([`Fleet::add_controller`]). The handle survives restarts of the fleet supervisor: it
//! reaches the running instance through a [`Current`] slot, and a restarted supervisor starts
//! again with every controller the handle knows.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::ActorRef;
use tokio::time::Instant;

use super::bus::EventSink;
use super::controller::{ControllerFactory, ControllerSpec, controller_child};
use super::directory::Directory;
use super::eventlog::{EventLog, WriterArgs};
use super::gate::{AckSink, GateMsg, GateView};
use super::link::LinkStats;
use super::root::{Root, RootChildren};
use crate::fleet_config::ConfigError;
use crate::gate::Action;
use crate::ids::{CommandId, ControllerId, GateId, SiteId};
use crate::store::{FleetChange, FleetRecords, FleetStore, StoreError};
use crate::supervision::{
    Backoff, ChildSpec, Current, Intensity, Restart, Strategy, Supervisor, SupervisorArgs,
    SupervisorError, SupervisorMsg, SupervisorSpec,
};

/// The fleet restarts a failed controller subtree at most this often.
pub const FLEET_INTENSITY: Intensity = Intensity {
    max_restarts: 10,
    within: Duration::from_secs(60),
};

/// How a failed controller subtree is restarted by the fleet.
pub const CONTROLLER_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
    factor: 2.0,
    jitter: 0.2,
    reset_after: Duration::from_secs(120),
};

/// What every fleet actor shares.
pub struct FleetContext {
    pub directory: Arc<Directory>,
    pub bus: Arc<dyn EventSink>,
    /// Where events go to be made durable; without one (tests, tools), events are published
    /// straight away and outcomes are not held back.
    pub eventlog: Option<EventLog>,
    /// The zero of the gate machines' millisecond clock.
    epoch: Instant,
    /// Per-controller link figures.
    pub(crate) stats: RwLock<HashMap<ControllerId, Arc<LinkStats>>>,
    /// In a cluster: the leases this node holds; a link writes to its controller only while
    /// the lease is provably this node's.
    pub ownership: Option<Arc<crate::cluster::Ownership>>,
    /// In a cluster: how commands reach the node that drives a gate this node does not.
    pub peers: Option<Arc<dyn crate::cluster::Peers>>,
}

impl FleetContext {
    /// A context without durability.
    pub fn new(bus: Arc<dyn EventSink>) -> Arc<Self> {
        Self::with_log(bus, Arc::default(), None)
    }

    /// A context whose gates log their events through `eventlog` (whose writer was built with
    /// the same `directory` and `bus`).
    pub fn with_log(
        bus: Arc<dyn EventSink>,
        directory: Arc<Directory>,
        eventlog: Option<EventLog>,
    ) -> Arc<Self> {
        Self::clustered(bus, directory, eventlog, None, None)
    }

    /// [`with_log`](Self::with_log), for a node of a cluster whose leases are `ownership`
    /// and whose commands for other nodes' gates go through `peers`.
    pub fn clustered(
        bus: Arc<dyn EventSink>,
        directory: Arc<Directory>,
        eventlog: Option<EventLog>,
        ownership: Option<Arc<crate::cluster::Ownership>>,
        peers: Option<Arc<dyn crate::cluster::Peers>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            directory,
            eventlog,
            bus,
            epoch: Instant::now(),
            stats: RwLock::new(HashMap::new()),
            ownership,
            peers,
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The link figures of every controller.
    pub fn link_stats(&self) -> Vec<(ControllerId, Arc<LinkStats>)> {
        self.stats
            .read()
            .map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

/// What the fleet needs to take configuration changes at run time.
struct Configuration {
    store: Arc<dyn FleetStore>,
    factory: Arc<dyn ControllerFactory>,
    /// The configuration the running tree reflects. The lock also serializes changes.
    records: tokio::sync::Mutex<FleetRecords>,
}

/// Why the fleet refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The configuration breaks a rule of `fleet_config`.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("this fleet has no store to take configuration changes")]
    NotConfigurable,
    #[error("no gate {0}")]
    UnknownGate(GateId),
    #[error("gate {0} is already on another controller")]
    DuplicateGate(GateId),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("the fleet supervisor is not running")]
    Down,
}

/// Where a configured gate is, whichever node drives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatePlace {
    pub controller: ControllerId,
    pub site: SiteId,
    pub name: String,
}

/// The controllers the fleet drives, indexed both ways.
#[derive(Default)]
struct Running {
    by_id: HashMap<ControllerId, Arc<ControllerSpec>>,
    by_gate: HashMap<GateId, ControllerId>,
}

/// A handle on the running fleet.
#[derive(Clone)]
pub struct Fleet {
    /// The fleet supervisor's running instance.
    supervisor: Current<SupervisorMsg>,
    /// The tree this handle started on its own ([`Fleet::start`]), stopped by
    /// [`Fleet::shutdown`]; `None` when a root built elsewhere owns the fleet.
    owner: Option<ActorRef<SupervisorMsg>>,
    ctx: Arc<FleetContext>,
    /// Controller specs by id, and which controller drives each gate.
    controllers: Arc<RwLock<Running>>,
    /// Each configured site's IANA time zone (the policy's local time for residents'
    /// windows), readable without waiting on a configuration change in progress.
    site_zones: Arc<RwLock<HashMap<SiteId, String>>>,
    /// Every configured gate (in a cluster, also those other nodes drive).
    places: Arc<RwLock<HashMap<GateId, GatePlace>>>,
    configuration: Option<Arc<Configuration>>,
}

impl Fleet {
    /// A handle on a fleet and the child spec of its supervisor, for the root to start. The
    /// spec starts the supervisor with every controller the handle knows, so a restarted
    /// fleet supervisor drives the same controllers again.
    pub fn new(ctx: Arc<FleetContext>) -> (Fleet, ChildSpec) {
        let fleet = Fleet {
            supervisor: Current::default(),
            owner: None,
            ctx,
            controllers: Arc::default(),
            site_zones: Arc::default(),
            places: Arc::default(),
            configuration: None,
        };
        let (running, ctx) = (fleet.controllers.clone(), fleet.ctx.clone());
        let spec = ChildSpec::tracked(
            "fleet",
            Restart::Permanent,
            fleet.supervisor.clone(),
            move || {
                let mut specs: Vec<Arc<ControllerSpec>> = running
                    .read()
                    .map(|r| r.by_id.values().cloned().collect())
                    .unwrap_or_default();
                specs.sort_by(|a, b| a.id.cmp(&b.id));
                let children = specs
                    .into_iter()
                    .map(|c| controller_child(c, ctx.clone()))
                    .collect();
                let args = SupervisorArgs {
                    spec: SupervisorSpec {
                        strategy: Strategy::OneForOne,
                        intensity: FLEET_INTENSITY,
                        backoff: CONTROLLER_BACKOFF,
                    },
                    children,
                    observer: None,
                };
                (Supervisor, args)
            },
        );
        (fleet, spec)
    }

    /// A fleet in a tree of its own (the event log writer, if given, and the fleet), for
    /// tools and tests that run no API: starts it with `controllers`. The handle resolves
    /// when that tree has stopped.
    pub async fn start(
        ctx: Arc<FleetContext>,
        controllers: Vec<ControllerSpec>,
        writer: Option<WriterArgs>,
    ) -> Result<(Fleet, ractor::concurrency::JoinHandle<()>), FleetError> {
        let (mut fleet, spec) = Fleet::new(ctx);
        let root = Root::start(RootChildren {
            eventlog: writer.map(super::eventlog::child_spec),
            hub: None,
            fleet: spec,
            keeper: None,
            sessions: None,
            scheduler: None,
            notifier: None,
        })
        .await
        .map_err(|_| FleetError::Down)?;
        fleet.owner = Some(root.supervisor.clone());
        fleet.add_controllers(controllers).await?;
        Ok((fleet, root.stopped))
    }

    /// Starts driving `controllers` (at boot, once the tree is up).
    pub async fn add_controllers(
        &self,
        controllers: Vec<ControllerSpec>,
    ) -> Result<(), FleetError> {
        for c in controllers {
            self.add_controller(c).await?;
        }
        Ok(())
    }

    /// Lets this fleet take configuration changes: `records` is what it runs now, `store`
    /// where changes are persisted, `factory` how subtrees are built.
    pub fn configurable(
        mut self,
        store: Arc<dyn FleetStore>,
        factory: Arc<dyn ControllerFactory>,
        records: FleetRecords,
    ) -> Fleet {
        self.set_site_zones(&records);
        self.configuration = Some(Arc::new(Configuration {
            store,
            factory,
            records: tokio::sync::Mutex::new(records),
        }));
        self
    }

    fn set_site_zones(&self, records: &FleetRecords) {
        if let Ok(mut zones) = self.site_zones.write() {
            *zones = records
                .sites
                .iter()
                .map(|s| (s.id.clone(), s.timezone.clone()))
                .collect();
        }
        let sites: HashMap<&ControllerId, &SiteId> = records
            .controllers
            .iter()
            .map(|c| (&c.id, &c.site))
            .collect();
        if let Ok(mut places) = self.places.write() {
            *places = records
                .gates
                .iter()
                .filter_map(|g| {
                    let site = sites.get(&g.controller)?;
                    Some((
                        g.id.clone(),
                        GatePlace {
                            controller: g.controller.clone(),
                            site: (*site).clone(),
                            name: g.name.clone(),
                        },
                    ))
                })
                .collect();
        }
    }

    /// Where `gate` is: on a controller this node drives, else in the configuration (in a
    /// cluster, a gate another node drives).
    pub fn place(&self, gate: &GateId) -> Option<GatePlace> {
        if let Some(c) = self.controller_of(gate) {
            let name = c
                .gates
                .iter()
                .find(|g| &g.spec.id == gate)?
                .spec
                .name
                .clone();
            return Some(GatePlace {
                controller: c.id.clone(),
                site: c.site.clone(),
                name,
            });
        }
        self.places.read().ok()?.get(gate).cloned()
    }

    /// Every gate: those driven here, and in a cluster those configured that other nodes
    /// drive; sorted by id.
    pub fn places(&self) -> Vec<(GateId, GatePlace)> {
        let mut all: HashMap<GateId, GatePlace> =
            self.places.read().map(|p| p.clone()).unwrap_or_default();
        for c in self.controllers() {
            for g in &c.gates {
                all.insert(
                    g.spec.id.clone(),
                    GatePlace {
                        controller: c.id.clone(),
                        site: c.site.clone(),
                        name: g.spec.name.clone(),
                    },
                );
            }
        }
        let mut v: Vec<_> = all.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Whether this node drives `gate` now.
    pub fn drives(&self, gate: &GateId) -> bool {
        self.ctx.directory.gate(gate).is_some()
    }

    /// The time zone of a configured site (`None`: no such site, or a fleet without
    /// configuration).
    pub fn site_timezone(&self, site: &SiteId) -> Option<String> {
        self.site_zones.read().ok()?.get(site).cloned()
    }

    /// The configuration the running tree reflects.
    pub async fn records(&self) -> Option<FleetRecords> {
        match &self.configuration {
            Some(c) => Some(c.records.lock().await.clone()),
            None => None,
        }
    }

    /// Applies configuration changes: validated, persisted in one transaction, then applied
    /// to the live tree by restarting only the controller subtrees they touch. Nothing is
    /// persisted or changed when any part is invalid.
    pub async fn configure(&self, changes: Vec<FleetChange>) -> Result<(), FleetError> {
        let cfg = self
            .configuration
            .as_ref()
            .ok_or(FleetError::NotConfigurable)?;
        let mut records = cfg.records.lock().await;
        let mut next = records.clone();
        next.apply(&changes).map_err(FleetError::Invalid)?;
        cfg.factory.validate(&next)?;
        let touched = records.touched_controllers(&changes);
        // In a cluster, the controllers this node drives are given back to the keeper, and
        // whoever takes them next starts them from the new configuration with their gates
        // restored from the store (a gate moved from another node's controller continues its
        // own sequence); new ones are handed out by the keepers.
        if let Some(ownership) = &self.ctx.ownership {
            for id in &touched {
                if next.controllers.iter().any(|c| &c.id == id) {
                    cfg.factory.build(&next, id).map_err(FleetError::Invalid)?;
                }
            }
            cfg.store.apply(changes).await?;
            self.set_site_zones(&next);
            *records = next;
            ownership.give_back(&touched);
            return Ok(());
        }
        let mut specs = Vec::new();
        for id in &touched {
            if next.controllers.iter().any(|c| &c.id == id) {
                specs.push(cfg.factory.build(&next, id).map_err(FleetError::Invalid)?);
            }
        }
        cfg.store.apply(changes).await?;
        self.set_site_zones(&next);
        *records = next;

        // Sequences continue across the rebuild (a moved gate keeps its own).
        let old_seqs: HashMap<GateId, Arc<AtomicU64>> = self
            .controllers()
            .iter()
            .flat_map(|c| c.gates.iter().map(|g| (g.spec.id.clone(), g.seq.clone())))
            .collect();
        for id in &touched {
            self.remove_controller(id).await?;
        }
        for mut spec in specs {
            for g in &mut spec.gates {
                if let Some(seq) = old_seqs.get(&g.spec.id) {
                    g.seq = seq.clone();
                }
            }
            tracing::info!(controller = %spec.id, gates = spec.gates.len(), "controller (re)configured");
            self.add_controller(spec).await?;
        }
        Ok(())
    }

    /// Takes the configuration as stored, after another node of a cluster changed it: the
    /// controllers this node drives whose records or gates changed are given back to the
    /// keeper (restarted from the new configuration by whoever takes them next), and the
    /// gates' places and sites' time zones follow. Answers whether anything changed.
    pub async fn reload(&self) -> Result<bool, FleetError> {
        let cfg = self
            .configuration
            .as_ref()
            .ok_or(FleetError::NotConfigurable)?;
        let stored = cfg.store.load_fleet().await?;
        let mut records = cfg.records.lock().await;
        if *records == stored {
            return Ok(false);
        }
        let touched = changed_controllers(&records, &stored);
        self.set_site_zones(&stored);
        *records = stored;
        match &self.ctx.ownership {
            Some(ownership) => ownership.give_back(&touched),
            None => tracing::warn!(
                "the stored fleet changed under a node that runs alone; it takes effect at the next start"
            ),
        }
        Ok(true)
    }

    /// Controller `id`'s subtree as configured now (its gates not yet restored).
    pub async fn build(&self, id: &ControllerId) -> Result<ControllerSpec, FleetError> {
        let cfg = self
            .configuration
            .as_ref()
            .ok_or(FleetError::NotConfigurable)?;
        let records = cfg.records.lock().await;
        cfg.factory.build(&records, id).map_err(FleetError::Invalid)
    }

    /// The configured controllers' ids (driven here or not), in order.
    pub async fn configured(&self) -> Vec<ControllerId> {
        match &self.configuration {
            Some(cfg) => cfg
                .records
                .lock()
                .await
                .controllers
                .iter()
                .map(|c| c.id.clone())
                .collect(),
            None => self.controllers().iter().map(|c| c.id.clone()).collect(),
        }
    }

    pub fn context(&self) -> &Arc<FleetContext> {
        &self.ctx
    }

    /// The fleet supervisor's running instance (none while the root restarts it).
    pub fn supervisor(&self) -> Option<ActorRef<SupervisorMsg>> {
        self.supervisor.get()
    }

    /// Starts driving a controller and its gates. Gate ids are unique across the fleet.
    pub async fn add_controller(&self, spec: ControllerSpec) -> Result<(), FleetError> {
        {
            let known = self.controllers.read().map_err(|_| FleetError::Down)?;
            for g in &spec.gates {
                if known
                    .by_gate
                    .get(&g.spec.id)
                    .is_some_and(|owner| owner != &spec.id)
                {
                    return Err(FleetError::DuplicateGate(g.spec.id.clone()));
                }
            }
        }
        let spec = Arc::new(spec);
        let child = controller_child(spec.clone(), self.ctx.clone());
        let supervisor = self.supervisor.get().ok_or(FleetError::Down)?;
        ractor::call!(supervisor, SupervisorMsg::StartChild, child)
            .map_err(|_| FleetError::Down)??;
        if let Ok(mut c) = self.controllers.write() {
            for g in &spec.gates {
                c.by_gate.insert(g.spec.id.clone(), spec.id.clone());
            }
            if let Some(old) = c.by_id.insert(spec.id.clone(), spec.clone()) {
                // The same controller again (a restart with new settings): gates it dropped
                // are no longer its.
                for g in &old.gates {
                    if !spec.gates.iter().any(|x| x.spec.id == g.spec.id) {
                        c.by_gate.remove(&g.spec.id);
                    }
                }
            }
        }
        Ok(())
    }

    /// Stops a controller subtree (its gates go with it). Answers whether it existed.
    pub async fn remove_controller(&self, id: &ControllerId) -> Result<bool, FleetError> {
        let supervisor = self.supervisor.get().ok_or(FleetError::Down)?;
        let existed = ractor::call!(
            supervisor,
            SupervisorMsg::StopChild,
            format!("controller:{id}")
        )
        .map_err(|_| FleetError::Down)?;
        if let Ok(mut c) = self.controllers.write()
            && let Some(spec) = c.by_id.remove(id)
        {
            for g in &spec.gates {
                if c.by_gate.get(&g.spec.id) == Some(id) {
                    c.by_gate.remove(&g.spec.id);
                }
            }
        }
        Ok(existed)
    }

    /// The controllers this fleet drives.
    pub fn controllers(&self) -> Vec<Arc<ControllerSpec>> {
        let mut v: Vec<_> = self
            .controllers
            .read()
            .map(|c| c.by_id.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The controller that drives `gate`, without scanning the fleet.
    pub fn controller_of(&self, gate: &GateId) -> Option<Arc<ControllerSpec>> {
        let c = self.controllers.read().ok()?;
        c.by_gate.get(gate).and_then(|id| c.by_id.get(id)).cloned()
    }

    /// Sends a command to a gate; acks go to `reply`. In a cluster, a gate another node
    /// drives gets it through [`Peers`](crate::cluster::Peers), which answers exactly one
    /// terminal ack whatever becomes of that node; a gate nobody drives right now is
    /// `rejected{offline}` at once.
    pub fn command(
        &self,
        gate: &GateId,
        id: CommandId,
        action: Action,
        reply: Option<AckSink>,
    ) -> Result<(), FleetError> {
        let (Some(peers), Some(ownership)) = (&self.ctx.peers, &self.ctx.ownership) else {
            return self.command_here(gate, id, action, reply);
        };
        if self.drives(gate) {
            return self.command_here(gate, id, action, reply);
        }
        let place = self
            .place(gate)
            .ok_or_else(|| FleetError::UnknownGate(gate.clone()))?;
        match ownership.owner_of(&place.controller) {
            Some((owner, epoch)) if &owner != ownership.node() => {
                peers.command(crate::cluster::RemoteCommand {
                    owner,
                    epoch,
                    controller: place.controller,
                    gate: gate.clone(),
                    id,
                    action,
                    reply,
                });
                Ok(())
            }
            // Nobody holds it, or this node is taking it over and its gates are not up yet.
            _ => {
                if let Some(reply) = reply {
                    reply(
                        gate,
                        super::gate::Ack {
                            id,
                            status: crate::gate::CommandStatus::Rejected(
                                crate::gate::RejectReason::Offline,
                            ),
                        },
                    );
                }
                Ok(())
            }
        }
    }

    /// Sends a command to a gate this node drives (never routed elsewhere).
    pub fn command_here(
        &self,
        gate: &GateId,
        id: CommandId,
        action: Action,
        reply: Option<AckSink>,
    ) -> Result<(), FleetError> {
        let actor = self
            .ctx
            .directory
            .gate(gate)
            .ok_or_else(|| FleetError::UnknownGate(gate.clone()))?;
        actor
            .send_message(GateMsg::Command { id, action, reply }.into())
            .map_err(|_| FleetError::UnknownGate(gate.clone()))
    }

    /// The gate's current state, straight from its actor.
    pub async fn view(&self, gate: &GateId) -> Result<GateView, FleetError> {
        let actor = self
            .ctx
            .directory
            .gate(gate)
            .ok_or_else(|| FleetError::UnknownGate(gate.clone()))?;
        actor
            .call(|reply| GateMsg::Snapshot(reply).into(), None)
            .await
            .ok()
            .and_then(|r| match r {
                ractor::rpc::CallResult::Success(view) => Some(view),
                _ => None,
            })
            .ok_or_else(|| FleetError::UnknownGate(gate.clone()))
    }

    /// Stops the tree this handle started ([`Fleet::start`]), or else the fleet supervisor,
    /// in order: controllers in reverse start order, each one's link after its in-progress
    /// transaction, then its gates (and the event log writer last).
    pub async fn shutdown(&self, timeout: Duration) {
        let Some(target) = self.owner.clone().or_else(|| self.supervisor.get()) else {
            return;
        };
        super::root::stop(&target, "fleet", timeout).await;
    }
}

/// The controllers whose record, or the record of one of whose gates, differs between `a`
/// and `b` (added, removed or changed; a moved gate touches both controllers).
fn changed_controllers(a: &FleetRecords, b: &FleetRecords) -> Vec<ControllerId> {
    let mut out: Vec<ControllerId> = Vec::new();
    let mut add = |id: &ControllerId| {
        if !out.contains(id) {
            out.push(id.clone());
        }
    };
    for (x, y) in [(a, b), (b, a)] {
        for c in &x.controllers {
            if !y.controllers.contains(c) {
                add(&c.id);
            }
        }
        for g in &x.gates {
            if !y.gates.contains(g) {
                add(&g.controller);
            }
        }
    }
    out
}
