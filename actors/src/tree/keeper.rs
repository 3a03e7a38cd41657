//! The lease keeper (a root child on a node of a cluster): decides which controller subtrees
//! this node runs, by holding their leases (`cluster.rs`).
//!
//! Every round ([`round_every`]: a tenth of the TTL, between 100 ms and 1 s):
//! 1. renew the leases held (the new deadline counts from before the request); a lease the
//!    store does not renew is lost: its subtree stops at once;
//! 2. say this node is alive, and read the live nodes and every lease;
//! 3. [`balance`]: give back what exceeds the fair share (subtree stopped first, then the
//!    lease released), take free controllers up to it (lease first, then the gates restored
//!    from the store and the subtree started).
//!
//! Between rounds, and when a round fails (database away), a subtree whose lease deadline is
//! less than a fifth of the TTL away is stopped: a node that cannot renew stops driving before
//! its lease can have passed to another node. Controllers whose events the store refused
//! (the event log's fence) are stopped at the next round, and so are those whose configuration
//! changed (given back: released, then taken again from the new configuration). On stop (SIGTERM), the node says it
//! is draining, stops every subtree and releases every lease, and says so on the cluster bus:
//! the others run a round at once ([`KeeperMsg::Woken`]), or at their next tick if the word is
//! lost. The state (what is held, with epochs and deadlines) lives in the shared
//! [`Ownership`], so a restarted keeper carries on.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use super::controller::restore_gates;
use super::fleet::Fleet;
use crate::clock::wall_ms;
use crate::cluster::{LeaseStore, Ownership, balance};
use crate::ids::ControllerId;
use crate::store::EventStore;
use crate::supervision::{ChildSpec, Restart};

/// How often the keeper runs a round for a lease of `ttl`.
pub fn round_every(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// How many controllers a node takes or gives back per round: enough that a node joining a
/// fleet of thousands fills its share in tens of rounds, few enough that nodes do not all
/// reach for the same ones at once.
const STEP: usize = 16;

#[derive(Clone)]
pub struct KeeperArgs {
    pub ownership: Arc<Ownership>,
    pub leases: Arc<dyn LeaseStore>,
    pub events: Arc<dyn EventStore>,
    pub fleet: Fleet,
}

pub enum KeeperMsg {
    /// The round of every tick; schedules the next one.
    Round,
    /// Another node released leases: a round now, outside the ticks.
    Woken,
}

pub struct Keeper;

pub struct KeeperState {
    args: KeeperArgs,
    /// The last round that reached the store failed (logged once per outage).
    failing: bool,
    /// Turns the ownership's wakes into [`KeeperMsg::Woken`]; ends with the keeper.
    waker: tokio::task::JoinHandle<()>,
}

/// The keeper's child spec (permanent).
pub fn child_spec(args: KeeperArgs) -> ChildSpec {
    ChildSpec::actor("keeper", Restart::Permanent, None, move || {
        (Keeper, args.clone())
    })
}

impl Actor for Keeper {
    type Msg = KeeperMsg;
    type State = KeeperState;
    type Arguments = KeeperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<KeeperMsg>,
        args: KeeperArgs,
    ) -> Result<KeeperState, ActorProcessingErr> {
        myself.send_message(KeeperMsg::Round)?;
        let ownership = args.ownership.clone();
        let me = myself.clone();
        let waker = tokio::spawn(async move {
            loop {
                ownership.woken().await;
                if me.send_message(KeeperMsg::Woken).is_err() {
                    return;
                }
            }
        });
        Ok(KeeperState {
            args,
            failing: false,
            waker,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<KeeperMsg>,
        msg: KeeperMsg,
        state: &mut KeeperState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            KeeperMsg::Round => {
                state.round().await;
                let every = round_every(state.args.ownership.ttl());
                myself.send_after(every, || KeeperMsg::Round);
            }
            KeeperMsg::Woken => {
                tracing::info!(
                    node = %state.ownership().node(),
                    "another node released its leases: a round now"
                );
                state.round().await;
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<KeeperMsg>,
        state: &mut KeeperState,
    ) -> Result<(), ActorProcessingErr> {
        state.waker.abort();
        state.leave().await;
        Ok(())
    }
}

impl KeeperState {
    fn ownership(&self) -> &Ownership {
        &self.args.ownership
    }

    /// Stops `controller`'s subtree and forgets its lease (released by the caller if it may).
    async fn stop(&self, controller: &ControllerId, why: &str) {
        if let Err(e) = self.args.fleet.remove_controller(controller).await {
            tracing::warn!(%controller, error = %e, "stopping a controller subtree failed");
        }
        self.ownership().forget(controller);
        tracing::info!(%controller, node = %self.ownership().node(), why, "controller given up");
    }

    async fn round(&mut self) {
        let ttl = self.ownership().ttl();
        let ttl_ms = ttl.as_millis() as u64;
        let node = self.ownership().node().clone();
        // The event log's fence refused these: another node holds them now.
        for c in self.ownership().take_lost() {
            self.stop(&c, "the store refused its events (another node holds it)")
                .await;
        }
        let changed = self.ownership().take_given_back();
        if !changed.is_empty() {
            for c in &changed {
                self.stop(c, "its configuration changed").await;
            }
            if let Err(e) = self.args.leases.release(node.clone(), changed).await {
                tracing::warn!(error = %e, "releasing leases failed; they expire within the TTL");
            }
        }
        let asked = Instant::now();
        let held = self.ownership().held();
        let renewed = match self
            .args
            .leases
            .renew(node.clone(), held.clone(), ttl_ms)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.failed(&e.to_string()).await;
                return;
            }
        };
        for (c, epoch) in &held {
            if renewed.contains(c) {
                self.ownership().hold(c.clone(), *epoch, asked);
            } else {
                self.stop(c, "lease lost").await;
            }
        }
        let nodes = match self
            .args
            .leases
            .heartbeat(node.clone(), ttl_ms, false)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                self.failed(&e.to_string()).await;
                return;
            }
        };
        self.ownership().set_nodes(&nodes);
        let leases = match self.args.leases.leases().await {
            Ok(l) => l,
            Err(e) => {
                self.failed(&e.to_string()).await;
                return;
            }
        };
        self.ownership().set_owners(&leases);
        if std::mem::take(&mut self.failing) {
            tracing::info!(%node, "lease store reachable again");
        }
        let controllers = self.args.fleet.configured().await;
        let moves = balance(&node, &nodes, &controllers, &leases, STEP);
        if !moves.release.is_empty() {
            for c in &moves.release {
                self.stop(c, "rebalancing").await;
            }
            if let Err(e) = self.args.leases.release(node.clone(), moves.release).await {
                // They expire on their own within the TTL.
                tracing::warn!(error = %e, "releasing leases failed");
            }
        }
        if !moves.acquire.is_empty() {
            self.take(moves.acquire, ttl_ms).await;
        }
    }

    /// Takes those of `controllers` nobody else took first, then starts their subtrees, the
    /// gates restored from the store in one read for all of them.
    async fn take(&self, controllers: Vec<ControllerId>, ttl_ms: u64) {
        let node = self.ownership().node().clone();
        let mut won = Vec::new();
        for controller in controllers {
            let asked = Instant::now();
            match self
                .args
                .leases
                .acquire(node.clone(), controller.clone(), ttl_ms)
                .await
            {
                Ok(Some(epoch)) => {
                    self.ownership().hold(controller.clone(), epoch, asked);
                    won.push((controller, epoch));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(%controller, error = %e, "taking a lease failed"),
            }
        }
        if won.is_empty() {
            return;
        }
        // Built first: a controller whose configuration cannot be built is given back.
        let mut specs = Vec::new();
        let mut give_back = Vec::new();
        for (controller, epoch) in &won {
            match self.args.fleet.build(controller).await {
                Ok(spec) => specs.push((spec, *epoch)),
                Err(e) => {
                    tracing::error!(%controller, error = %e, "a controller taken cannot be built; giving it back");
                    give_back.push(controller.clone());
                }
            }
        }
        // The gates continue from what the previous holders committed (their last commits
        // finished before the leases could change hands: the fence holds the rows).
        let (mut built, epochs): (Vec<_>, Vec<_>) = specs.into_iter().unzip();
        if let Err(e) = restore_gates(&mut built, self.args.events.as_ref(), wall_ms()).await {
            tracing::warn!(error = %e, "gates not restored; giving the controllers back");
            give_back.extend(built.drain(..).map(|s| s.id));
        }
        for (spec, epoch) in built.into_iter().zip(epochs) {
            let controller = spec.id.clone();
            match self.args.fleet.add_controller(spec).await {
                Ok(()) => tracing::info!(%controller, %node, epoch, "controller taken"),
                Err(e) => {
                    tracing::error!(%controller, error = %e, "a controller taken could not start; giving it back");
                    give_back.push(controller);
                }
            }
        }
        if !give_back.is_empty() {
            for c in &give_back {
                self.ownership().forget(c);
            }
            let _ = self.args.leases.release(node, give_back).await;
        }
    }

    /// A round could not reach the store: stop what may expire before the next one can.
    async fn failed(&mut self, why: &str) {
        if !std::mem::replace(&mut self.failing, true) {
            tracing::warn!(node = %self.ownership().node(), why, "lease store unreachable");
        }
        let ttl = self.ownership().ttl();
        let margin = ttl / 5 + round_every(ttl);
        for c in self.ownership().expiring(Instant::now(), margin) {
            self.stop(&c, "lease could not be renewed in time").await;
        }
    }

    /// Leaving: others stop counting on this node, its subtrees stop, its leases go back.
    async fn leave(&mut self) {
        let node = self.ownership().node().clone();
        let ttl_ms = self.ownership().ttl().as_millis() as u64;
        let _ = self.args.leases.heartbeat(node.clone(), ttl_ms, true).await;
        let held: Vec<ControllerId> = self
            .ownership()
            .held()
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        for c in &held {
            self.stop(c, "leaving").await;
        }
        match self.args.leases.release(node.clone(), held).await {
            // The others take them at once, not at their next round.
            Ok(()) => self.ownership().say_released().await,
            Err(e) => {
                tracing::warn!(%node, error = %e, "leases not released; they expire within the TTL")
            }
        }
    }
}
