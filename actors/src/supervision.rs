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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr,
    SupervisionEvent,
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

/// The running instance of a restartable child, for whoever must reach it across restarts
/// (a handle on the fleet supervisor, the session supervisor). Filled at every (re)start by
/// the child's spec; empty while the child waits out a backoff.
pub struct Current<M: ractor::Message> {
    slot: Arc<RwLock<Option<ActorRef<M>>>>,
}

impl<M: ractor::Message> Clone for Current<M> {
    fn clone(&self) -> Self {
        Self {
            slot: self.slot.clone(),
        }
    }
}

impl<M: ractor::Message> Default for Current<M> {
    fn default() -> Self {
        Self {
            slot: Arc::default(),
        }
    }
}

impl<M: ractor::Message> Current<M> {
    /// The running instance, if there is one (an instance that has begun to stop is not).
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.slot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|a| a.get_status() < ractor::ActorStatus::Stopping)
    }

    fn set(&self, actor: ActorRef<M>) {
        *self.slot.write().unwrap_or_else(|p| p.into_inner()) = Some(actor);
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
        Self::spawning(id.into(), restart, name, None, make)
    }

    /// Like [`ChildSpec::actor`], and each instance is published in `current` once started.
    pub fn tracked<A, F>(
        id: impl Into<String>,
        restart: Restart,
        current: Current<A::Msg>,
        make: F,
    ) -> Self
    where
        A: Actor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        Self::spawning(id.into(), restart, None, Some(current), make)
    }

    fn spawning<A, F>(
        id: String,
        restart: Restart,
        name: Option<String>,
        current: Option<Current<A::Msg>>,
        make: F,
    ) -> Self
    where
        A: Actor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        Self {
            id,
            restart,
            start: Arc::new(move |supervisor: ActorCell| {
                let make = make.clone();
                let name = name.clone();
                let current = current.clone();
                Box::pin(async move {
                    let (actor, args) = make();
                    let (r, _handle) = Actor::spawn_linked(name, actor, args, supervisor).await?;
                    if let Some(current) = current {
                        current.set(r.clone());
                    }
                    Ok(r.get_cell())
                })
            }),
        }
    }

    /// A temporary child started once from arguments that cannot be made again (a session
    /// owns its socket). Never restarted, so its start runs at most once.
    pub fn once<A: Actor>(id: impl Into<String>, actor: A, args: A::Arguments) -> Self {
        // Boxed, so that once taken the spec keeps a pointer, not room for the arguments (a
        // session's are a socket and the app's handles: about a kilobyte per live session).
        let taken = Arc::new(std::sync::Mutex::new(Some(Box::new((actor, args)))));
        Self {
            id: id.into(),
            restart: Restart::Temporary,
            start: Arc::new(move |supervisor: ActorCell| {
                let taken = taken.lock().unwrap_or_else(|p| p.into_inner()).take();
                Box::pin(async move {
                    let Some(boxed) = taken else {
                        return Err(SpawnErr::StartupFailed(
                            "a one-shot child cannot be started twice".into(),
                        ));
                    };
                    let (actor, args) = *boxed;
                    let (r, _handle) = Actor::spawn_linked(None, actor, args, supervisor).await?;
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
    pub restart: Restart,
    /// Running now (false while waiting out a backoff).
    pub running: bool,
    /// Restarts since the supervisor started.
    pub restarts: u64,
    /// The reason of its last failure, and how long ago it was.
    pub last_failure: Option<(String, Duration)>,
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
    /// Every child with its running instance, if any (for walking the tree in one call per
    /// supervisor).
    ChildCells(RpcReplyPort<Vec<(ChildInfo, Option<ActorCell>)>>),
    /// The running instance of a child, by id.
    Child(String, RpcReplyPort<Option<ActorCell>>),
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
    last_failure: Option<(String, Instant)>,
    /// Bumped at every stop so that stale `RestartDue` messages are ignored.
    generation: u64,
    /// Counts the running instance in `gatehouse_actors{kind}`; dropped with it, or with the
    /// supervisor's state (its children die with it).
    alive: Option<crate::telemetry::Alive>,
}

impl Child {
    fn new(spec: ChildSpec) -> Self {
        Self {
            spec,
            cell: None,
            started_at: Instant::now(),
            failures: 0,
            restarts: 0,
            last_failure: None,
            generation: 0,
            alive: None,
        }
    }
}

/// A child's place in the start order. Keys only grow, so a new child sorts last and a
/// restarted one keeps its place.
type Key = u64;

/// The children, indexed three ways so that a supervisor of 20,000 sessions starts, finds and
/// forgets one in O(log n) rather than scanning them all on every session's open and close.
#[derive(Default)]
struct Children {
    /// In start order.
    by_order: BTreeMap<Key, Child>,
    by_id: HashMap<String, Key>,
    /// Running children by their actor id: what a supervision event names.
    by_actor: HashMap<ActorId, Key>,
    next: Key,
}

impl Children {
    fn push(&mut self, spec: ChildSpec) -> Result<Key, SupervisorError> {
        if self.by_id.contains_key(&spec.id) {
            return Err(SupervisorError::DuplicateChild(spec.id));
        }
        let key = self.next;
        self.next += 1;
        self.by_id.insert(spec.id.clone(), key);
        self.by_order.insert(key, Child::new(spec));
        Ok(key)
    }

    fn remove(&mut self, key: Key) {
        if let Some(child) = self.by_order.remove(&key) {
            self.by_id.remove(&child.spec.id);
            if let Some(cell) = child.cell {
                self.by_actor.remove(&cell.get_id());
            }
        }
    }

    fn get(&mut self, key: Key) -> Option<&mut Child> {
        self.by_order.get_mut(&key)
    }

    fn key_of(&self, id: &str) -> Option<Key> {
        self.by_id.get(id).copied()
    }

    fn set_cell(&mut self, key: Key, cell: Option<ActorCell>) {
        let Some(child) = self.by_order.get_mut(&key) else {
            return;
        };
        if let Some(old) = child.cell.take() {
            self.by_actor.remove(&old.get_id());
        }
        if let Some(cell) = &cell {
            self.by_actor.insert(cell.get_id(), key);
        }
        child.alive = cell
            .as_ref()
            .map(|_| crate::telemetry::Alive::new(crate::telemetry::kind_of(&child.spec.id)));
        child.cell = cell;
    }

    fn keys_from(&self, key: Key) -> Vec<Key> {
        self.by_order.range(key..).map(|(k, _)| *k).collect()
    }

    fn keys(&self) -> Vec<Key> {
        self.by_order.keys().copied().collect()
    }
}

pub struct SupervisorState {
    spec: SupervisorSpec,
    children: Children,
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

    async fn start_child(&mut self, key: Key, myself: &ActorCell) -> Result<(), SupervisorError> {
        let Some(child) = self.children.get(key) else {
            return Ok(());
        };
        match (child.spec.start)(myself.clone()).await {
            Ok(cell) => {
                child.started_at = Instant::now();
                let id = child.spec.id.clone();
                self.children.set_cell(key, Some(cell));
                self.notify(ChildEvent::Started { id });
                Ok(())
            }
            Err(e) => Err(SupervisorError::StartFailed {
                id: child.spec.id.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Stops child `key` on purpose (its exit event is then ignored).
    async fn stop_child(&mut self, key: Key, reason: &str) {
        let Some(child) = self.children.get(key) else {
            return;
        };
        child.generation += 1;
        let cell = child.cell.clone();
        // Taken out of the index first, so that its exit event is not mistaken for a failure.
        self.children.set_cell(key, None);
        if let Some(cell) = cell
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

    /// Child `key` exited (it is already gone). Restarts it and its strategy group after the
    /// backoff, or escalates.
    async fn child_exited(
        &mut self,
        key: Key,
        failed: bool,
        reason: String,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        self.children.set_cell(key, None);
        let Some(child) = self.children.get(key) else {
            return Ok(());
        };
        child.generation += 1;
        if failed {
            child.last_failure = Some((reason.clone(), Instant::now()));
        }
        let id = child.spec.id.clone();
        let restart = match child.spec.restart {
            Restart::Permanent => true,
            Restart::Transient => failed,
            Restart::Temporary => false,
        };
        self.notify(ChildEvent::Exited {
            id: id.clone(),
            failed,
            reason: reason.clone(),
        });
        if !restart {
            self.children.remove(key);
            return Ok(());
        }
        if !failed {
            // A permanent child that stopped by itself (or was killed) is restarted too.
            tracing::warn!(supervisor = ?myself.get_name(), child = %id, %reason, "child exited");
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

        crate::telemetry::restarted(crate::telemetry::kind_of(&id), failed, &reason);

        let group: Vec<Key> = match self.spec.strategy {
            Strategy::OneForOne => vec![key],
            Strategy::RestForOne => self.children.keys_from(key),
            Strategy::OneForAll => self.children.keys(),
        };
        // Siblings in the group stop in reverse start order, as in OTP.
        for &k in group.iter().rev() {
            if k != key {
                self.stop_child(k, "sibling restart").await;
            }
        }

        let reset_after = self.spec.backoff.reset_after;
        let Some(child) = self.children.get(key) else {
            return Ok(());
        };
        if child.started_at.elapsed() >= reset_after {
            child.failures = 0;
        }
        let attempt = child.failures;
        child.failures = child.failures.saturating_add(1);
        let generation = child.generation;
        let delay = self.spec.backoff.delay(attempt, &mut self.rng);
        let ids: Vec<String> = group
            .iter()
            .filter_map(|k| self.children.by_order.get(k))
            .map(|c| c.spec.id.clone())
            .collect();
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
        let Some(lead) = ids.first().and_then(|id| self.children.key_of(id)) else {
            return Ok(());
        };
        if self.children.get(lead).map(|c| c.generation) != Some(generation) {
            return Ok(());
        }
        for id in ids {
            let Some(key) = self.children.key_of(&id) else {
                continue;
            };
            let Some(child) = self.children.get(key) else {
                continue;
            };
            if child.cell.is_some() {
                continue;
            }
            child.restarts += 1;
            let restarts = child.restarts;
            match self.start_child(key, &myself.get_cell()).await {
                Ok(()) => {
                    tracing::info!(supervisor = ?myself.get_name(), child = %id, restarts, "child restarted");
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    // A start failure counts as another failure of that child.
                    Box::pin(self.child_exited(key, true, e.to_string(), myself)).await?;
                }
            }
        }
        Ok(())
    }

    async fn stop_all(&mut self, reason: &str) {
        for key in self.children.keys().into_iter().rev() {
            self.stop_child(key, reason).await;
        }
    }

    fn info(&self) -> Vec<ChildInfo> {
        self.children
            .by_order
            .values()
            .map(|c| ChildInfo {
                id: c.spec.id.clone(),
                restart: c.spec.restart,
                running: c.cell.is_some(),
                restarts: c.restarts,
                last_failure: c
                    .last_failure
                    .as_ref()
                    .map(|(why, at)| (why.clone(), at.elapsed())),
            })
            .collect()
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
            children: Children::default(),
            recent: VecDeque::new(),
            observer: args.observer,
            rng: rand::SeedableRng::from_os_rng(),
        };
        for spec in args.children {
            let key = state.children.push(spec)?;
            if let Err(e) = state.start_child(key, &myself.get_cell()).await {
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
                let result = match state.children.push(spec) {
                    Err(e) => Err(e),
                    Ok(key) => {
                        let r = state.start_child(key, &myself.get_cell()).await;
                        if r.is_err() {
                            state.children.remove(key);
                        }
                        r
                    }
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::StopChild(id, reply) => {
                let found = state.children.key_of(&id);
                if let Some(key) = found {
                    state.stop_child(key, "removed").await;
                    state.children.remove(key);
                }
                let _ = reply.send(found.is_some());
            }
            SupervisorMsg::Children(reply) => {
                let _ = reply.send(state.info());
            }
            SupervisorMsg::ChildCells(reply) => {
                let cells = state.children.by_order.values().map(|c| c.cell.clone());
                let _ = reply.send(state.info().into_iter().zip(cells).collect());
            }
            SupervisorMsg::Child(id, reply) => {
                let cell = state
                    .children
                    .key_of(&id)
                    .and_then(|k| state.children.by_order.get(&k))
                    .and_then(|c| c.cell.clone());
                let _ = reply.send(cell);
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
        // Children we stopped on purpose were taken out of the index first: not ours to
        // restart.
        let Some(&key) = state.children.by_actor.get(&cell.get_id()) else {
            return Ok(());
        };
        if failed {
            let id = state.children.by_order.get(&key).map(|c| c.spec.id.clone());
            tracing::warn!(supervisor = ?myself.get_name(), child = ?id, %reason, "child failed");
        }
        state.child_exited(key, failed, reason, &myself).await
    }
}
