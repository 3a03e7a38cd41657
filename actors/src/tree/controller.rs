//! The controller subtree: one supervisor per controller (one Modbus endpoint) over its gate
//! actors and its link actor.
//!
//! ```text
//! Controller supervisor   one_for_one, CONTROLLER_INTENSITY, LINK_BACKOFF
//! ├── Gate actor ×n       permanent; started first, so the link finds them when it starts
//! └── Link actor          permanent; crashes on a transport failure and is restarted with
//!                         LINK_BACKOFF; its gates show `offline` meanwhile (the observer)
//! ```

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::FleetContext;
use super::gate::{GateActor, GateArgs, GateMsg};
use super::link::{LinkActor, LinkArgs, PulseLedger};
use crate::fleet_config::ConfigError;
use crate::gate::{Action, GateConfig};
use crate::ids::{CommandId, ControllerId, GateId, SiteId};
use crate::ports::LinkConnector;
use crate::store::FleetRecords;
use crate::supervision::{
    Backoff, ChildEvent, ChildSpec, Intensity, Restart, Strategy, Supervisor, SupervisorArgs,
    SupervisorSpec,
};

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
    pub gates: Vec<GateSlot>,
}

/// A gate bound to its place on a controller.
#[derive(Debug, Clone)]
pub struct GateSlot {
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

/// Up to this many gates, [`restore_gates`] looks their heads up one by one.
const HEADS_ONE_BY_ONE: usize = 256;

/// Sets each gate of `specs` to resume from the store: its sequence, its cycle total and the
/// outcomes of its commands finished within the idempotency window. At boot for every
/// controller, and in a cluster for a controller this node takes over (the previous holder
/// wrote after this node booted).
pub async fn restore_gates(
    specs: &mut [ControllerSpec],
    events: &dyn crate::store::EventStore,
    now_ms: u64,
) -> Result<(), crate::store::StoreError> {
    // A few controllers (a node taking its share): one lookup per gate. Many (boot): one pass
    // over the index beats thousands of round trips.
    let gates: Vec<GateId> = specs
        .iter()
        .flat_map(|s| s.gates.iter().map(|g| g.spec.id.clone()))
        .collect();
    let heads = if gates.len() <= HEADS_ONE_BY_ONE {
        events.heads_of(gates).await?
    } else {
        events.heads().await?
    };
    let heads: std::collections::HashMap<_, _> = heads.into_iter().collect();
    let since = now_ms.saturating_sub(crate::gate::machine::COMMAND_MEMORY_MS);
    let mut finished: std::collections::HashMap<_, Vec<_>> = std::collections::HashMap::new();
    for f in events.finished_commands(since).await? {
        finished
            .entry(f.gate.clone())
            .or_default()
            .push((f.id, f.action, f.status));
    }
    for spec in specs {
        for g in &mut spec.gates {
            if let Some(head) = heads.get(&g.spec.id) {
                g.seq.store(head.seq, std::sync::atomic::Ordering::Relaxed);
                g.restore.cycles = head.cycles;
            }
            g.restore.finished = finished.remove(&g.spec.id).unwrap_or_default();
        }
    }
    Ok(())
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
            .map(|(index, spec)| GateSlot {
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

/// The child spec of one controller subtree: a supervisor over its link and gates.
pub(crate) fn controller_child(spec: Arc<ControllerSpec>, ctx: Arc<FleetContext>) -> ChildSpec {
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
            for slot in &spec.gates {
                let slot = Arc::new(slot.clone());
                let ctx = ctx.clone();
                children.push(ChildSpec::actor(
                    format!("gate:{}", slot.spec.id),
                    Restart::Permanent,
                    None,
                    move || {
                        (
                            GateActor,
                            GateArgs {
                                slot: slot.clone(),
                                ctx: ctx.clone(),
                            },
                        )
                    },
                ));
            }
            let (link_spec, link_ctx) = (spec.clone(), ctx.clone());
            let (link_pulses, link_stats) = (pulses.clone(), stats.clone());
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
                            pulses: link_pulses.clone(),
                            stats: link_stats.clone(),
                        },
                    )
                },
            ));
            // While the link waits out its backoff, its gates are offline and say so.
            let (obs_ctx, obs_spec, obs_stats) = (ctx.clone(), spec.clone(), stats.clone());
            let observer = Arc::new(move |event: &ChildEvent| {
                if let ChildEvent::Exited { id, reason, failed } = event
                    && id == "link"
                {
                    tracing::warn!(controller = %obs_spec.id, %reason, "link down");
                    if *failed {
                        if let Some(i) = crate::telemetry::get() {
                            i.link_failures.increment(1);
                        }
                        obs_stats.set(|s| s.last_error = Some(reason.clone()));
                    }
                    obs_ctx.directory.remove_link(&obs_spec.id);
                    for g in &obs_spec.gates {
                        if let Some(gate) = obs_ctx.directory.gate(&g.spec.id) {
                            let _ = gate.send_message(GateMsg::LinkDown.into());
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
    /// Checks a whole fleet configuration with `fleet_config::validate`, over the profiles
    /// the factory knows.
    fn validate(&self, fleet: &FleetRecords) -> Result<(), ConfigError>;
    /// The subtree of controller `id` as configured in `fleet`.
    fn build(&self, fleet: &FleetRecords, id: &ControllerId) -> Result<ControllerSpec, String>;
}
