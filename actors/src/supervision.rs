//! OTP-style supervision on top of ractor's raw supervision events, built once and used by
//! every supervisor in the tree (fleet, controller, and later sessions).
//!
//! A [`Supervisor`] owns an ordered list of children, each described by a [`ChildSpec`] with a
//! restart policy ([`Restart`]). When a child exits, the supervisor's [`Strategy`] decides who
//! restarts with it, an exponential [`Backoff`] with jitter decides when, and the restart
//! [`Intensity`] (at most N restarts within T) decides when to give up and escalate: the
//! supervisor stops its children and fails, so that its own parent sees the failure.
//!
//! Why not the `ractor-supervisor` crate: it switches on ractor's `async-trait` feature for the
//! whole build (every actor would pay a boxed future per message), and it has no hook for
//! "tell the siblings that this child is down", which the controller supervisor needs to mark
//! its gates offline while the link is restarting.
//!
//! Time comes from `tokio::time`, so tests drive it with tokio's paused clock.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};
use rand::Rng;
use tokio::time::Instant;

use crate::ports::BoxFuture;

/// How long a supervisor waits for one child to stop before moving on.
pub const CHILD_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// When a child is restarted (OTP's restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always restarted.
    Permanent,
    /// Restarted only when it fails (a panic or an `Err`), not when it stops normally.
    Transient,
    /// Never restarted.
    Temporary,
}

/// Who restarts when one child exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Only that child.
    OneForOne,
    /// That child and every child started after it.
    RestForOne,
    /// Every child.
    OneForAll,
}

/// At most `max_restarts` within `within`; one more and the supervisor escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    pub max_restarts: u32,
    pub within: Duration,
}

/// Exponential backoff with jitter and a cap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the first restart.
    pub initial: Duration,
    /// The delay never exceeds this.
    pub max: Duration,
    /// Each consecutive failure multiplies the delay by this.
    pub factor: f64,
    /// 0 = exact delays; 0.2 = each delay drawn uniformly from [80 %, 100 %] of its nominal
    /// value, so that controllers that failed together do not reconnect in lockstep.
    pub jitter: f64,
    /// A child that stayed up this long starts again from `initial`.
    pub reset_after: Duration,
}

impl Backoff {
    /// No delay at all (for supervisors whose children are cheap and local).
    pub const IMMEDIATE: Backoff = Backoff {
        initial: Duration::ZERO,
        max: Duration::ZERO,
        factor: 1.0,
        jitter: 0.0,
        reset_after: Duration::ZERO,
    };

    /// The nominal (jitter-free) delay before restart number `attempt` (0-based).
    pub fn nominal(&self, attempt: u32) -> Duration {
        let scaled = self.initial.as_secs_f64() * self.factor.powi(attempt.min(64) as i32);
        Duration::from_secs_f64(scaled.min(self.max.as_secs_f64()))
    }

    /// The delay before restart number `attempt`, with jitter drawn from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let nominal = self.nominal(attempt);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return nominal;
        }
        let scale = 1.0 - jitter * rng.random::<f64>();
        nominal.mul_f64(scale)
    }
}

/// How a supervisor behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SupervisorSpec {
    pub strategy: Strategy,
    pub intensity: Intensity,
    pub backoff: Backoff,
}

/// Starts one child, linked to the supervisor cell it is given.
pub type StartFn =
    Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

/// A child: its id (unique within its supervisor), its restart policy, and how to start it.
#[derive(Clone)]
pub struct ChildSpec {
    pub id: String,
    pub restart: Restart,
    pub start: StartFn,
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .finish_non_exhaustive()
    }
}

impl ChildSpec {
    /// A child made by `make` each time it (re)starts, registered under `name` if given (the
    /// name is free again once the previous instance has stopped, so restarts reuse it).
    pub fn actor<A, F>(
        id: impl Into<String>,
        restart: Restart,
        name: Option<String>,
        make: F,
    ) -> Self
    where
        A: Actor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        Self {
            id: id.into(),
            restart,
            start: Arc::new(move |supervisor: ActorCell| {
                let make = make.clone();
                let name = name.clone();
                Box::pin(async move {
                    let (actor, args) = make();
                    let (r, _handle) = Actor::spawn_linked(name, actor, args, supervisor).await?;
                    Ok(r.get_cell())
                })
            }),
        }
    }
}

/// What a supervisor tells its observer (for instance: "the link is down, mark the gates
/// offline"). Called from the supervisor's own task: keep it quick and non-blocking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildEvent {
    Started {
        id: String,
    },
    Exited {
        id: String,
        failed: bool,
        reason: String,
    },
    Escalated {
        reason: String,
    },
}

pub type Observer = Arc<dyn Fn(&ChildEvent) + Send + Sync>;

/// A child as reported by [`SupervisorMsg::Children`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    pub id: String,
    /// Running now (false while waiting out a backoff).
    pub running: bool,
    /// Restarts since the supervisor started.
    pub restarts: u64,
}

/// Why a supervisor refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    #[error("a child with id {0:?} already exists")]
    DuplicateChild(String),
    #[error("child {id:?} failed to start: {reason}")]
    StartFailed { id: String, reason: String },
}

pub enum SupervisorMsg {
    /// Adds and starts a child at the end of the start order.
    StartChild(ChildSpec, RpcReplyPort<Result<(), SupervisorError>>),
    /// Stops a child and forgets it. Answers whether it existed.
    StopChild(String, RpcReplyPort<bool>),
    Children(RpcReplyPort<Vec<ChildInfo>>),
    /// Internal: a backoff ran out; restart these children if they are still waiting.
    RestartDue {
        ids: Vec<String>,
        generation: u64,
    },
}

pub struct SupervisorArgs {
    pub spec: SupervisorSpec,
    pub children: Vec<ChildSpec>,
    pub observer: Option<Observer>,
}

/// The supervisor actor.
pub struct Supervisor;

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    started_at: Instant,
    /// Consecutive failures: the backoff exponent.
    failures: u32,
    restarts: u64,
    /// Bumped at every stop so that stale `RestartDue` messages are ignored.
    generation: u64,
}

impl Child {
    fn new(spec: ChildSpec) -> Self {
        Self {
            spec,
            cell: None,
            started_at: Instant::now(),
            failures: 0,
            restarts: 0,
            generation: 0,
        }
    }
}

pub struct SupervisorState {
    spec: SupervisorSpec,
    children: Vec<Child>,
    /// Restart times inside the intensity window.
    recent: VecDeque<Instant>,
    observer: Option<Observer>,
    rng: rand::rngs::SmallRng,
}

impl SupervisorState {
    fn notify(&self, event: ChildEvent) {
        if let Some(o) = &self.observer {
            o(&event);
        }
    }

    fn index_of_cell(&self, cell: &ActorCell) -> Option<usize> {
        let id = cell.get_id();
        self.children
            .iter()
            .position(|c| c.cell.as_ref().is_some_and(|x| x.get_id() == id))
    }

    async fn start_child(&mut self, i: usize, myself: &ActorCell) -> Result<(), SupervisorError> {
        let child = &mut self.children[i];
        match (child.spec.start)(myself.clone()).await {
            Ok(cell) => {
                child.cell = Some(cell);
                child.started_at = Instant::now();
                let id = child.spec.id.clone();
                self.notify(ChildEvent::Started { id });
                Ok(())
            }
            Err(e) => Err(SupervisorError::StartFailed {
                id: child.spec.id.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Stops child `i` on purpose (its exit event is then ignored).
    async fn stop_child(&mut self, i: usize, reason: &str) {
        let child = &mut self.children[i];
        child.generation += 1;
        // Taken out of the list first, so that its exit event is not mistaken for a failure.
        if let Some(cell) = child.cell.take()
            && cell
                .stop_and_wait(Some(reason.to_string()), Some(CHILD_SHUTDOWN_TIMEOUT))
                .await
                .is_err()
        {
            cell.kill();
        }
    }

    /// Records a restart; false when the intensity is exceeded.
    fn within_intensity(&mut self) -> bool {
        let now = Instant::now();
        let window = self.spec.intensity.within;
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() <= self.spec.intensity.max_restarts as usize
    }

    /// Child `i` exited (it is already gone). Restarts it and its strategy group after the
    /// backoff, or escalates.
    async fn child_exited(
        &mut self,
        i: usize,
        failed: bool,
        reason: String,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let id = self.children[i].spec.id.clone();
        self.children[i].cell = None;
        self.children[i].generation += 1;
        self.notify(ChildEvent::Exited {
            id: id.clone(),
            failed,
            reason: reason.clone(),
        });
        let restart = match self.children[i].spec.restart {
            Restart::Permanent => true,
            Restart::Transient => failed,
            Restart::Temporary => false,
        };
        if !restart {
            self.children.remove(i);
            return Ok(());
        }
        if !self.within_intensity() {
            let why = format!(
                "child {id:?} exceeded {} restarts in {:?} (last: {reason})",
                self.spec.intensity.max_restarts, self.spec.intensity.within
            );
            tracing::error!(supervisor = ?myself.get_name(), "{why}; escalating");
            self.notify(ChildEvent::Escalated {
                reason: why.clone(),
            });
            self.stop_all("escalation").await;
            return Err(why.into());
        }

        let group: Vec<usize> = match self.spec.strategy {
            Strategy::OneForOne => vec![i],
            Strategy::RestForOne => (i..self.children.len()).collect(),
            Strategy::OneForAll => (0..self.children.len()).collect(),
        };
        // Siblings in the group stop in reverse start order, as in OTP.
        for &j in group.iter().rev() {
            if j != i && self.children[j].cell.is_some() {
                self.stop_child(j, "sibling restart").await;
            }
        }

        let child = &mut self.children[i];
        if child.started_at.elapsed() >= self.spec.backoff.reset_after {
            child.failures = 0;
        }
        let delay = self.spec.backoff.delay(child.failures, &mut self.rng);
        child.failures = child.failures.saturating_add(1);
        let ids: Vec<String> = group
            .iter()
            .map(|&j| self.children[j].spec.id.clone())
            .collect();
        let generation = self.children[i].generation;
        tracing::debug!(child = %id, ?delay, "restart scheduled");
        if delay.is_zero() {
            myself.send_message(SupervisorMsg::RestartDue { ids, generation })?;
        } else {
            myself.send_after(delay, move || SupervisorMsg::RestartDue { ids, generation });
        }
        Ok(())
    }

    async fn restart_due(
        &mut self,
        ids: Vec<String>,
        generation: u64,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        // The generation belongs to the child whose failure scheduled this; it moves on if the
        // child was stopped or restarted meanwhile.
        let Some(first) = ids.first() else {
            return Ok(());
        };
        let Some(lead) = self.children.iter().position(|c| &c.spec.id == first) else {
            return Ok(());
        };
        if self.children[lead].generation != generation {
            return Ok(());
        }
        for id in ids {
            let Some(i) = self.children.iter().position(|c| c.spec.id == id) else {
                continue;
            };
            if self.children[i].cell.is_some() {
                continue;
            }
            self.children[i].restarts += 1;
            if let Err(e) = self.start_child(i, &myself.get_cell()).await {
                tracing::warn!("{e}");
                // A start failure counts as another failure of that child.
                Box::pin(self.child_exited(i, true, e.to_string(), myself)).await?;
            }
        }
        Ok(())
    }

    async fn stop_all(&mut self, reason: &str) {
        for i in (0..self.children.len()).rev() {
            self.stop_child(i, reason).await;
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            spec: args.spec,
            children: Vec::with_capacity(args.children.len()),
            recent: VecDeque::new(),
            observer: args.observer,
            rng: rand::SeedableRng::from_os_rng(),
        };
        for spec in args.children {
            if state.children.iter().any(|c| c.spec.id == spec.id) {
                return Err(SupervisorError::DuplicateChild(spec.id).into());
            }
            state.children.push(Child::new(spec));
            let i = state.children.len() - 1;
            if let Err(e) = state.start_child(i, &myself.get_cell()).await {
                state.stop_all("startup failed").await;
                return Err(e.into());
            }
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Orderly shutdown: children stop in reverse start order.
        state.stop_all("supervisor stopping").await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::StartChild(spec, reply) => {
                let result = if state.children.iter().any(|c| c.spec.id == spec.id) {
                    Err(SupervisorError::DuplicateChild(spec.id))
                } else {
                    state.children.push(Child::new(spec));
                    let i = state.children.len() - 1;
                    let r = state.start_child(i, &myself.get_cell()).await;
                    if r.is_err() {
                        state.children.remove(i);
                    }
                    r
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::StopChild(id, reply) => {
                let found = state.children.iter().position(|c| c.spec.id == id);
                if let Some(i) = found {
                    state.stop_child(i, "removed").await;
                    state.children.remove(i);
                }
                let _ = reply.send(found.is_some());
            }
            SupervisorMsg::Children(reply) => {
                let info = state
                    .children
                    .iter()
                    .map(|c| ChildInfo {
                        id: c.spec.id.clone(),
                        running: c.cell.is_some(),
                        restarts: c.restarts,
                    })
                    .collect();
                let _ = reply.send(info);
            }
            SupervisorMsg::RestartDue { ids, generation } => {
                state.restart_due(ids, generation, &myself).await?;
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failed, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, true, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, false, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        // Children we stopped on purpose were taken out of the list first: not ours to restart.
        let Some(i) = state.index_of_cell(&cell) else {
            return Ok(());
        };
        if failed {
            tracing::warn!(child = %state.children[i].spec.id, %reason, "child failed");
        }
        state.child_exited(i, failed, reason, &myself).await
    }
}
