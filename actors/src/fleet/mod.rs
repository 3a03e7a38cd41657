//! The fleet: the part of the supervision tree that drives hardware.
//!
//! ```text
//! Fleet supervisor            one_for_one; a controller that keeps failing escalates here
//! └── Controller supervisor   one per controller (= one Modbus endpoint), one_for_one
//!     ├── Link actor          permanent; crashes on transport failure, restarted with backoff
//!     └── Gate actor ×n       permanent; survive link restarts (offline meanwhile)
//! ```
//!
//! The fleet supervisor owns the gate registry ([`Directory`]) and applies configuration
//! changes by starting and stopping controller subtrees; which controllers this node drives is
//! decided here, in one place ([`Fleet::add_controller`]).

pub mod events;
pub mod gate;
pub mod link;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{Actor, ActorId, ActorRef};
use tokio::time::Instant;

use crate::eventlog::{EventLog, EventLogWriter, WriterArgs};
use crate::gate::{Action, GateConfig};
use crate::ids::{CommandId, ControllerId, GateId, SiteId};
use crate::ports::LinkConnector;
use crate::store::{FleetChange, FleetRecords, FleetStore, StoreError};
use crate::supervision::{
    Backoff, ChildEvent, ChildSpec, Intensity, Restart, Strategy, Supervisor, SupervisorArgs,
    SupervisorError, SupervisorMsg, SupervisorSpec,
};
use events::EventSink;
use gate::{AckSink, GateActor, GateArgs, GateMsg, GateView};
use link::{LinkActor, LinkArgs, LinkMsg, LinkStats, PulseLedger};

/// A link that keeps failing is retried at most this often (the backoff cap).
pub const LINK_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(200),
    max: Duration::from_secs(30),
    factor: 2.0,
    jitter: 0.2,
    reset_after: Duration::from_secs(30),
};

/// A controller subtree restarts its children at most this often before giving up. With the
/// link's backoff, an unreachable controller settles at one restart per 30 s and never gets
/// here; only a crash loop does.
pub const CONTROLLER_INTENSITY: Intensity = Intensity {
    max_restarts: 20,
    within: Duration::from_secs(60),
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

/// One gate, as configured.
#[derive(Debug, Clone)]
pub struct GateSpec {
    pub id: GateId,
    pub name: String,
    pub config: GateConfig,
}

/// One controller and its gates, as configured. The connector comes from `adapters/`, built
/// from the controller's endpoint and profile; the actors never see Modbus.
#[derive(Clone)]
pub struct ControllerSpec {
    pub id: ControllerId,
    pub site: SiteId,
    pub connector: Arc<dyn LinkConnector>,
    /// At rest.
    pub poll_interval: Duration,
    /// While a gate moves or has a command in flight.
    pub fast_poll_interval: Duration,
    pub gates: Vec<GateBinding>,
}

/// A gate bound to its place on a controller.
#[derive(Debug, Clone)]
pub struct GateBinding {
    pub spec: GateSpec,
    pub controller: ControllerId,
    /// Position in the controller's gate list: what the link port calls `gate`.
    pub index: usize,
    /// The gate's last event sequence. Shared so that a restarted gate actor resumes it;
    /// set from the store's maximum at boot.
    pub seq: Arc<AtomicU64>,
    /// What the store remembers of the gate, for its actor's first start.
    pub restore: Restore,
}

/// A gate's durable memory, read from the store at boot.
#[derive(Debug, Clone, Default)]
pub struct Restore {
    /// The unwrapped cycle total.
    pub cycles: Option<u64>,
    /// Commands that finished within the idempotency window.
    pub finished: Vec<(CommandId, Action, crate::gate::CommandStatus)>,
}

impl ControllerSpec {
    /// Binds `gates` to this controller in order.
    pub fn new(
        id: ControllerId,
        site: SiteId,
        connector: Arc<dyn LinkConnector>,
        poll_interval: Duration,
        fast_poll_interval: Duration,
        gates: Vec<GateSpec>,
    ) -> Self {
        let gates = gates
            .into_iter()
            .enumerate()
            .map(|(index, spec)| GateBinding {
                spec,
                controller: id.clone(),
                index,
                seq: Arc::new(AtomicU64::new(0)),
                restore: Restore::default(),
            })
            .collect();
        Self {
            id,
            site,
            connector,
            poll_interval,
            fast_poll_interval,
            gates,
        }
    }
}

/// Who is where, for the actors of this node. Gate and link actors enter themselves when they
/// start and leave when they stop, so a restarted actor is found without anyone being told.
#[derive(Default)]
pub struct Directory {
    gates: RwLock<HashMap<GateId, ActorRef<GateMsg>>>,
    links: RwLock<HashMap<ControllerId, ActorRef<LinkMsg>>>,
}

impl Directory {
    pub fn gate(&self, id: &GateId) -> Option<ActorRef<GateMsg>> {
        self.gates.read().ok()?.get(id).cloned()
    }

    pub fn link(&self, id: &ControllerId) -> Option<ActorRef<LinkMsg>> {
        self.links.read().ok()?.get(id).cloned()
    }

    pub fn gate_ids(&self) -> Vec<GateId> {
        self.gates
            .read()
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn insert_gate(&self, id: GateId, r: ActorRef<GateMsg>) {
        if let Ok(mut g) = self.gates.write() {
            g.insert(id, r);
        }
    }

    fn remove_gate(&self, id: &GateId, actor: ActorId) {
        if let Ok(mut g) = self.gates.write()
            && g.get(id).is_some_and(|r| r.get_id() == actor)
        {
            g.remove(id);
        }
    }

    fn insert_link(&self, id: ControllerId, r: ActorRef<LinkMsg>) {
        if let Ok(mut l) = self.links.write() {
            l.insert(id, r);
        }
    }

    fn remove_link(&self, id: &ControllerId) {
        if let Ok(mut l) = self.links.write() {
            l.remove(id);
        }
    }
}

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
    stats: RwLock<HashMap<ControllerId, Arc<LinkStats>>>,
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
        Arc::new(Self {
            directory,
            eventlog,
            bus,
            epoch: Instant::now(),
            stats: RwLock::new(HashMap::new()),
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

/// The child spec of one controller subtree: a supervisor over its link and gates.
fn controller_child(spec: Arc<ControllerSpec>, ctx: Arc<FleetContext>) -> ChildSpec {
    let stats = {
        let mut all = ctx.stats.write().unwrap_or_else(|e| e.into_inner());
        all.entry(spec.id.clone()).or_default().clone()
    };
    // Survives link restarts: pulses a dropped link left switched on.
    let pulses: PulseLedger = Arc::default();
    ChildSpec::actor(
        format!("controller:{}", spec.id),
        Restart::Permanent,
        None,
        move || {
            let mut children = Vec::with_capacity(spec.gates.len() + 1);
            // Gates first: the link finds them in the directory when it starts.
            for binding in &spec.gates {
                let binding = Arc::new(binding.clone());
                let ctx = ctx.clone();
                children.push(ChildSpec::actor(
                    format!("gate:{}", binding.spec.id),
                    Restart::Permanent,
                    None,
                    move || {
                        (
                            GateActor,
                            GateArgs {
                                binding: binding.clone(),
                                ctx: ctx.clone(),
                            },
                        )
                    },
                ));
            }
            let (link_spec, link_ctx) = (spec.clone(), ctx.clone());
            let (pulses, stats) = (pulses.clone(), stats.clone());
            children.push(ChildSpec::actor(
                "link",
                Restart::Permanent,
                None,
                move || {
                    (
                        LinkActor,
                        LinkArgs {
                            spec: link_spec.clone(),
                            ctx: link_ctx.clone(),
                            pulses: pulses.clone(),
                            stats: stats.clone(),
                        },
                    )
                },
            ));
            // While the link waits out its backoff, its gates are offline and say so.
            let (obs_ctx, obs_spec) = (ctx.clone(), spec.clone());
            let observer = Arc::new(move |event: &ChildEvent| {
                if let ChildEvent::Exited { id, reason, .. } = event
                    && id == "link"
                {
                    tracing::warn!(controller = %obs_spec.id, %reason, "link down");
                    obs_ctx.directory.remove_link(&obs_spec.id);
                    for g in &obs_spec.gates {
                        if let Some(gate) = obs_ctx.directory.gate(&g.spec.id) {
                            let _ = gate.send_message(GateMsg::LinkDown);
                        }
                    }
                }
            });
            let args = SupervisorArgs {
                spec: SupervisorSpec {
                    strategy: Strategy::OneForOne,
                    intensity: CONTROLLER_INTENSITY,
                    backoff: LINK_BACKOFF,
                },
                children,
                observer: Some(observer),
            };
            (Supervisor, args)
        },
    )
}

/// Builds controller subtrees from configuration records: the runtime implements it with the
/// register profiles and the Modbus adapter, which the actors do not know.
pub trait ControllerFactory: Send + Sync + 'static {
    /// Checks a whole fleet configuration (references, values, profiles), naming what is wrong.
    fn validate(&self, fleet: &FleetRecords) -> Result<(), String>;
    /// The subtree of controller `id` as configured in `fleet`.
    fn build(&self, fleet: &FleetRecords, id: &ControllerId) -> Result<ControllerSpec, String>;
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

/// The controllers the fleet drives, indexed both ways.
#[derive(Default)]
struct Running {
    by_id: HashMap<ControllerId, Arc<ControllerSpec>>,
    by_gate: HashMap<GateId, ControllerId>,
}

/// A handle on the running fleet.
#[derive(Clone)]
pub struct Fleet {
    supervisor: ActorRef<SupervisorMsg>,
    ctx: Arc<FleetContext>,
    /// Controller specs by id, and which controller drives each gate.
    controllers: Arc<RwLock<Running>>,
    /// Each configured site's IANA time zone (the policy's local time for residents'
    /// windows), readable without waiting on a configuration change in progress.
    site_zones: Arc<RwLock<HashMap<SiteId, String>>>,
    configuration: Option<Arc<Configuration>>,
}

impl Fleet {
    /// Starts the fleet supervisor and every controller in `controllers`.
    ///
    /// With `writer`, the event log writer is the supervisor's first child: started before
    /// any gate and stopped after every gate, so that nothing they log is left unwritten.
    pub async fn start(
        ctx: Arc<FleetContext>,
        controllers: Vec<ControllerSpec>,
        writer: Option<WriterArgs>,
    ) -> Result<(Fleet, ractor::concurrency::JoinHandle<()>), FleetError> {
        let children = writer
            .map(|args| {
                ChildSpec::actor("eventlog", Restart::Permanent, None, move || {
                    (EventLogWriter, args.clone())
                })
            })
            .into_iter()
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
        let (supervisor, handle) = Actor::spawn(None, Supervisor, args)
            .await
            .map_err(|_| FleetError::Down)?;
        let fleet = Fleet {
            supervisor,
            ctx,
            controllers: Arc::default(),
            site_zones: Arc::default(),
            configuration: None,
        };
        for c in controllers {
            fleet.add_controller(c).await?;
        }
        Ok((fleet, handle))
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
        cfg.factory.validate(&next).map_err(FleetError::Invalid)?;
        let touched = records.touched_controllers(&changes);
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

    pub fn context(&self) -> &Arc<FleetContext> {
        &self.ctx
    }

    pub fn supervisor(&self) -> &ActorRef<SupervisorMsg> {
        &self.supervisor
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
        ractor::call!(self.supervisor, SupervisorMsg::StartChild, child)
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
        let existed = ractor::call!(
            self.supervisor,
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

    /// Sends a command to a gate; acks go to `reply`.
    pub fn command(
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
            .send_message(GateMsg::Command { id, action, reply })
            .map_err(|_| FleetError::UnknownGate(gate.clone()))
    }

    /// The gate's current state, straight from its actor.
    pub async fn view(&self, gate: &GateId) -> Result<GateView, FleetError> {
        let actor = self
            .ctx
            .directory
            .gate(gate)
            .ok_or_else(|| FleetError::UnknownGate(gate.clone()))?;
        ractor::call!(actor, GateMsg::Snapshot).map_err(|_| FleetError::UnknownGate(gate.clone()))
    }

    /// Stops the whole tree in order: controllers in reverse start order, each one's link
    /// after its in-progress transaction, then its gates.
    pub async fn shutdown(&self, timeout: Duration) {
        if self
            .supervisor
            .stop_and_wait(Some("shutdown".into()), Some(timeout))
            .await
            .is_err()
        {
            tracing::warn!("fleet did not stop within {timeout:?}; killing it");
            self.supervisor.kill();
        }
    }
}
