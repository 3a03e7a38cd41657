//! The scheduler: the root's child that keeps maintenance plans in step with the gates. Every
//! `every` (the `[maintenance] check_interval_s` setting) it assesses each gate against the
//! plans that apply to it (`maintenance::effective_plans`, `maintenance::assess`, with the
//! cycle counter the gate actor holds now) and raises `maintenance_due` or
//! `maintenance_overdue` on the gate's own event stream when a plan crosses into that level,
//! once per service interval.
//!
//! Invariants:
//! - the event is raised by the gate's actor (`GateMsg::Announce`), the only writer of its
//!   `seq`, so it is committed, published and resumed like any other event of the gate;
//! - the level announced is stored before the event is sent, so a restart never announces it
//!   twice; a gate whose actor is not running (restarting) is left for the next round;
//! - a store that is away costs a round, never the scheduler: it logs and tries again next
//!   time (permanent child of the root, restarted like the others if it does crash).
//!
//! It also runs the report jobs (`reports.rs`): at each round and when woken by the API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::gate::EventKind;
use crate::ids::{GateId, SiteId};
use crate::maintenance::{Level, MaintenanceStore, Progress, assess, effective_plans};
use crate::store::StoreError;
use crate::supervision::{ChildSpec, Current, Restart};
use crate::tree::Fleet;
use crate::tree::gate::GateMsg;
use crate::tree::reports::ReportJobs;

/// How long one gate's snapshot may take before the round goes on without its counter.
const VIEW_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct SchedulerArgs {
    pub store: Arc<dyn MaintenanceStore>,
    pub fleet: Fleet,
    /// Time between rounds.
    pub every: Duration,
    /// Report jobs (none: no reports, for tools and tests without a blob store).
    pub reports: Option<ReportJobs>,
}

/// Reaches whichever scheduler runs: the API wakes it when a report is requested, so that
/// the report starts now rather than at the next round.
#[derive(Clone, Default)]
pub struct SchedulerHandle {
    current: Current<SchedulerMsg>,
}

impl SchedulerHandle {
    pub fn wake_reports(&self) {
        if let Some(s) = self.current.get() {
            let _ = s.send_message(SchedulerMsg::Reports);
        }
    }
}

/// The scheduler's child spec (permanent; its arguments hold nothing a restart would lose)
/// and the handle that reaches it.
pub fn child_spec(args: SchedulerArgs) -> (ChildSpec, SchedulerHandle) {
    let handle = SchedulerHandle::default();
    let spec = ChildSpec::tracked(
        "scheduler",
        Restart::Permanent,
        handle.current.clone(),
        move || (Scheduler, args.clone()),
    );
    (spec, handle)
}

pub struct Scheduler;

pub enum SchedulerMsg {
    /// Internal: assess the fleet now (then again after `every`).
    Round,
    /// Run the queued reports now.
    Reports,
}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerArgs;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SchedulerMsg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerArgs, ActorProcessingErr> {
        // What a stopped process left half done starts again. In a cluster the leader does
        // it each round, for the reports of nodes no longer alive only.
        if let Some(jobs) = &args.reports
            && args.fleet.context().ownership.is_none()
        {
            requeue(jobs, None).await;
        }
        myself.send_message(SchedulerMsg::Round)?;
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<SchedulerMsg>,
        msg: SchedulerMsg,
        state: &mut SchedulerArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedulerMsg::Round => {
                if let Err(error) = round(state).await {
                    tracing::warn!(%error, "maintenance round skipped; trying again next round");
                }
                if let Some(jobs) = &state.reports {
                    // In a cluster, the singletons run on the leader only.
                    let leader = match &state.fleet.context().ownership {
                        None => true,
                        Some(o) if o.is_leader() => {
                            let alive = o.live_nodes().iter().map(|n| n.to_string()).collect();
                            requeue(jobs, Some(alive)).await;
                            true
                        }
                        Some(_) => false,
                    };
                    if leader {
                        jobs.schedule_monthly(&state.fleet).await;
                    }
                    jobs.run_queued(&state.fleet).await;
                }
                myself.send_after(state.every, || SchedulerMsg::Round);
            }
            SchedulerMsg::Reports => {
                if let Some(jobs) = &state.reports {
                    jobs.run_queued(&state.fleet).await;
                }
            }
        }
        Ok(())
    }
}

/// Puts back in the queue the reports left running (with `alive`: only those of nodes not
/// among them).
async fn requeue(jobs: &ReportJobs, alive: Option<Vec<String>>) {
    match jobs.reports.requeue_running(alive).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(reports = n, "interrupted reports queued again"),
        Err(error) => tracing::warn!(%error, "interrupted reports not requeued"),
    }
}

/// One assessment of every gate that has plans.
async fn round(args: &SchedulerArgs) -> Result<(), StoreError> {
    let plans = args.store.plans().await?;
    if plans.is_empty() {
        return Ok(());
    }
    let Some(records) = args.fleet.records().await else {
        return Ok(());
    };
    let site_of: HashMap<_, &SiteId> = records
        .controllers
        .iter()
        .map(|c| (&c.id, &c.site))
        .collect();
    let mut progress: HashMap<(uuid::Uuid, GateId), Progress> = args
        .store
        .progress()
        .await?
        .into_iter()
        .map(|p| ((p.plan, p.gate.clone()), p))
        .collect();
    for gate in &records.gates {
        let Some(site) = site_of.get(&gate.controller) else {
            continue;
        };
        let applying = effective_plans(&plans, &gate.id, site);
        if applying.is_empty() {
            continue;
        }
        let Some(actor) = args.fleet.context().directory.gate(&gate.id) else {
            continue;
        };
        let cycles = match tokio::time::timeout(VIEW_TIMEOUT, args.fleet.view(&gate.id)).await {
            Ok(Ok(view)) => view.snapshot.cycles,
            _ => None,
        };
        let now = crate::clock::wall_ms();
        for plan in applying {
            let Some(p) = progress.remove(&(plan.id, gate.id.clone())) else {
                // The plan applies to this gate from now on.
                args.store
                    .start_progress(Progress {
                        plan: plan.id,
                        gate: gate.id.clone(),
                        since_ms: now,
                        since_cycles: cycles,
                        announced: Level::Ok,
                    })
                    .await?;
                continue;
            };
            if p.since_cycles.is_none()
                && let Some(c) = cycles
            {
                // The first counter this gate reported since the plan started to apply.
                args.store.first_cycles(plan.id, gate.id.clone(), c).await?;
                continue;
            }
            let level = assess(plan, &p, cycles, now).level;
            if level <= p.announced {
                continue;
            }
            args.store
                .announced(plan.id, gate.id.clone(), level)
                .await?;
            let kind = match level {
                Level::Overdue => EventKind::MaintenanceOverdue { plan: plan.id },
                _ => EventKind::MaintenanceDue { plan: plan.id },
            };
            tracing::info!(gate = %gate.id, plan = %plan.id, level = level.as_str(), "maintenance");
            let _ = actor.send_message(GateMsg::Announce(kind).into());
        }
    }
    Ok(())
}
