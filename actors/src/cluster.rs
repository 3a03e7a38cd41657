//! Scale-out, part one: which node drives which controller. Each controller (with its gates)
//! is driven by the node holding its lease; a lease carries a fencing epoch that only grows,
//! and the store refuses gate events written under an epoch that is no longer the lease's
//! (ARCHITECTURE.md, "Scale-out", argues why the leases live in PostgreSQL).
//!
//! This module is the domain half: the lease and node records, the [`LeaseStore`] port, and
//! [`balance`], the pure decision of what a node takes and gives back in one round. Times are
//! the database's clock, seen as "milliseconds left", so that nodes with skewed clocks agree.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::ids::{ControllerId, NodeId};
use crate::ports::BoxFuture;
use crate::store::StoreError;

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub controller: ControllerId,
    pub node: NodeId,
    /// The fencing token: greater for every new holder, across all controllers.
    pub epoch: u64,
    /// Milliseconds until it expires, by the database's clock (0: expired).
    pub left_ms: u64,
}

/// A node that said it is alive within its TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node: NodeId,
    /// Leaving (SIGTERM): takes nothing new and is given no share.
    pub draining: bool,
}

/// A lease this node holds, for renewal and for fencing its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Held {
    pub epoch: u64,
}

/// What a node proves when it writes gate events: the leases it holds. The store writes the
/// events of a controller only while that controller's lease is still this node's with this
/// epoch, checked in the writing transaction (and held there, so that a takeover waits for
/// the commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub node: NodeId,
    pub held: HashMap<ControllerId, u64>,
}

/// What this node holds, shared by the lease keeper (which changes it), the event log writer
/// (which fences its commits with it) and the links (which write to a controller only while
/// its lease is provably this node's). It outlives restarts of the keeper.
#[derive(Debug)]
pub struct Ownership {
    node: NodeId,
    ttl: Duration,
    state: Mutex<OwnershipState>,
    /// Another node gave leases back: the keeper runs a round now, not at its next tick.
    wake: tokio::sync::Notify,
    /// Tells the other nodes that this one released its leases (the cluster bus; set once).
    on_release: std::sync::OnceLock<ReleaseHook>,
}

/// Says to the other nodes that this node released leases; resolves once said.
struct ReleaseHook(Box<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>);

impl std::fmt::Debug for ReleaseHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReleaseHook")
    }
}

#[derive(Debug, Default)]
struct OwnershipState {
    /// Epoch, and the instant after which the lease may have expired (counted from before
    /// the request that took or renewed it).
    held: HashMap<ControllerId, (u64, Instant)>,
    /// Refused by the store since the keeper last looked: their subtrees must stop.
    lost: Vec<ControllerId>,
    /// The live nodes, as last heard.
    nodes: Vec<NodeInfo>,
    /// Held, but to be given back (their configuration changed).
    given_back: Vec<ControllerId>,
    /// Every live lease as the keeper last read it, and how often that changed.
    owners: HashMap<ControllerId, (NodeId, u64)>,
    owner_changes: u64,
    /// Gates whose events the store refused because they belong to another controller now
    /// (a fleet change this node had not applied yet); forgotten when the gate starts here.
    moved: HashSet<crate::ids::GateId>,
}

impl Ownership {
    pub fn new(node: NodeId, ttl: Duration) -> Ownership {
        Ownership {
            node,
            ttl,
            state: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            on_release: std::sync::OnceLock::new(),
        }
    }

    /// Another node released leases: the keeper takes its share of them now (the lease store
    /// still decides; this only saves waiting for the next round).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves at the next [`Ownership::wake`] (one made while nobody waited counts).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// How this node tells the others it released leases (set once, by the cluster bus).
    pub fn on_release(
        &self,
        hook: impl Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    ) {
        let _ = self.on_release.set(ReleaseHook(Box::new(hook)));
    }

    /// Tells the other nodes that this node released leases, if there is a bus to say it on;
    /// bounded to half a second (they take the leases at their next round anyway).
    pub async fn say_released(&self) {
        let Some(hook) = self.on_release.get() else {
            return;
        };
        match tokio::time::timeout(Duration::from_millis(500), (hook.0)()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the release of leases was not announced"),
            Err(_) => tracing::warn!("the release of leases was not announced in 500 ms"),
        }
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OwnershipState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records who holds which lease, as the keeper last read them: only live ones. Commands
    /// for gates other nodes drive are routed by it, and a command in flight on another node
    /// ends (`failed{failover}`) when its controller's lease changes hands or lapses.
    pub fn set_owners(&self, leases: &[Lease]) {
        let owners: HashMap<ControllerId, (NodeId, u64)> = leases
            .iter()
            .filter(|l| l.left_ms > 0)
            .map(|l| (l.controller.clone(), (l.node.clone(), l.epoch)))
            .collect();
        let mut state = self.lock();
        if state.owners != owners {
            state.owners = owners;
            state.owner_changes += 1;
        }
    }

    /// Records the live nodes, as the keeper's heartbeat last answered them.
    pub fn set_nodes(&self, nodes: &[NodeInfo]) {
        self.lock().nodes = nodes.to_vec();
    }

    /// The live nodes (draining ones too: they may still be finishing work).
    pub fn live_nodes(&self) -> Vec<NodeId> {
        self.lock().nodes.iter().map(|n| n.node.clone()).collect()
    }

    /// Whether this node runs the cluster's singletons (the monthly report schedule, putting
    /// back the reports of dead nodes): the first live node by id that is not draining, as
    /// this node's keeper last saw them. Never before the keeper's first round. Two nodes may
    /// both believe it for a round while membership changes; what the leader does is safe to
    /// do twice (the schedule checks before queueing; a requeue skips live nodes' reports).
    pub fn is_leader(&self) -> bool {
        leader(&self.lock().nodes) == Some(&self.node)
    }

    /// Counts the changes of owners seen: a node that lost a controller may have committed
    /// events it never published, so followers of the bus refill from the store.
    pub fn owner_changes(&self) -> u64 {
        self.lock().owner_changes
    }

    /// Which node drives `controller`, with its epoch: this node for a lease it holds, else
    /// the holder as the keeper last read it.
    pub fn owner_of(&self, controller: &ControllerId) -> Option<(NodeId, u64)> {
        let state = self.lock();
        if let Some((epoch, _)) = state.held.get(controller) {
            return Some((self.node.clone(), *epoch));
        }
        state.owners.get(controller).cloned()
    }

    /// Records a lease taken or renewed by a request sent at `asked`.
    pub fn hold(&self, controller: ControllerId, epoch: u64, asked: Instant) {
        self.lock()
            .held
            .insert(controller, (epoch, asked + self.ttl));
    }

    /// Forgets a lease (given back, lost or expired).
    pub fn forget(&self, controller: &ControllerId) {
        self.lock().held.remove(controller);
    }

    /// Whether this node holds `controller`'s lease (the store has not refused it since).
    pub fn holds(&self, controller: &ControllerId) -> bool {
        self.lock().held.contains_key(controller)
    }

    /// The leases held, with their epochs.
    pub fn held(&self) -> Vec<(ControllerId, u64)> {
        let mut v: Vec<_> = self
            .lock()
            .held
            .iter()
            .map(|(c, (e, _))| (c.clone(), *e))
            .collect();
        v.sort();
        v
    }

    /// The leases whose time is up at `now` less `margin`: the keeper stops their subtrees
    /// (before the database's expiry, since the local deadline counts from before the
    /// request).
    pub fn expiring(&self, now: Instant, margin: Duration) -> Vec<ControllerId> {
        self.lock()
            .held
            .iter()
            .filter(|(_, (_, until))| now + margin >= *until)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Whether this node may write to `controller` now: it holds the lease and its time is
    /// not up. A node woken from a pause longer than its TTL finds every deadline past.
    pub fn may_write(&self, controller: &ControllerId) -> bool {
        self.lock()
            .held
            .get(controller)
            .is_some_and(|(_, until)| Instant::now() < *until)
    }

    /// What the event log proves when it commits a batch of events of `controllers`: only
    /// their leases (the store reads and share-locks the rows named, so naming every lease
    /// held would lock them all at every commit). A controller not held is left out, and the
    /// store refuses its events.
    pub fn fence<'a>(&self, controllers: impl IntoIterator<Item = &'a ControllerId>) -> Fence {
        let state = self.lock();
        Fence {
            node: self.node.clone(),
            held: controllers
                .into_iter()
                .filter_map(|c| state.held.get(c).map(|(e, _)| (c.clone(), *e)))
                .collect(),
        }
    }

    /// The store refused writes for `controllers`: they are no longer held, and the keeper
    /// stops their subtrees at its next look.
    pub fn refused(&self, controllers: &[ControllerId]) {
        let mut state = self.lock();
        for c in controllers {
            state.held.remove(c);
            if !state.lost.contains(c) {
                state.lost.push(c.clone());
            }
        }
    }

    /// The store refused these gates' events: they belong to another controller now.
    pub fn gates_moved(&self, gates: &[crate::ids::GateId]) {
        self.lock().moved.extend(gates.iter().cloned());
    }

    /// Whether the store refused `gate`'s events since it last started here.
    pub fn moved(&self, gate: &crate::ids::GateId) -> bool {
        self.lock().moved.contains(gate)
    }

    /// `gate` starts on this node (again): what was refused of it before is past.
    pub fn gate_started(&self, gate: &crate::ids::GateId) {
        self.lock().moved.remove(gate);
    }

    /// Takes the controllers refused since the last call.
    pub fn take_lost(&self) -> Vec<ControllerId> {
        std::mem::take(&mut self.lock().lost)
    }

    /// The configuration of `controllers` changed: the keeper stops their subtrees and
    /// releases their leases at its next round, and the next holder (often this node again)
    /// starts them from the new configuration with their gates restored from the store.
    pub fn give_back(&self, controllers: &[ControllerId]) {
        let mut state = self.lock();
        for c in controllers {
            if state.held.contains_key(c) && !state.given_back.contains(c) {
                state.given_back.push(c.clone());
            }
        }
    }

    /// Takes the controllers given back since the last call.
    pub fn take_given_back(&self) -> Vec<ControllerId> {
        std::mem::take(&mut self.lock().given_back)
    }
}

/// A command for a gate another node drives, as routed by [`Fleet::command`](crate::tree::Fleet::command).
pub struct RemoteCommand {
    /// The node that held the gate's controller, and its epoch, when the command was sent.
    pub owner: NodeId,
    pub epoch: u64,
    pub controller: ControllerId,
    pub gate: crate::ids::GateId,
    pub id: crate::ids::CommandId,
    pub action: crate::gate::Action,
    pub reply: Option<crate::tree::gate::AckSink>,
}

/// How commands reach the node that drives their gate (the Redis bus in production).
///
/// The contract: `reply` hears at most one `accepted` and exactly one terminal status. The
/// owner's own acks when they come; `rejected{offline}` when the command could not be sent;
/// `failed{failover}` when the controller's lease changed hands or lapsed, or the way back
/// from the owner was lost, before the terminal ack arrived (the gate may have moved: its
/// events say).
pub trait Peers: Send + Sync + 'static {
    fn command(&self, command: RemoteCommand);
}

/// A rate: `burst` at once, then one every `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub burst: u32,
    pub period: Duration,
}

/// Lockout after repeated failures: `free` failures cost nothing; failure number `free + n`
/// (n ≥ 0) locks for `base · 2ⁿ`, at most `max`; `forget` after the last failure, the count
/// starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub free: u32,
    pub base: Duration,
    pub max: Duration,
    pub forget: Duration,
}

/// Rate limits and lockouts every node of a cluster shares (Redis in production), so that a
/// client spreading its requests over the nodes gets no more than from one. Time is the shared
/// store's clock, never a node's. An `Err` means "not known now" (the store is away or slow):
/// the caller then decides with its own node's limits alone.
pub trait SharedLimits: Send + Sync + 'static {
    /// Takes one request from `key`'s `quota` (GCRA): `None` when admitted, else how long
    /// until one would be. A refused request does not push the next one back.
    fn take(&self, key: String, quota: Quota) -> BoxFuture<'_, Result<Option<Duration>, String>>;
    /// The longest lockout still running among `keys`.
    fn locked(&self, keys: Vec<String>) -> BoxFuture<'_, Result<Option<Duration>, String>>;
    /// Counts a failure on `key` under `policy`; true when it is the failure that locks (the
    /// first lock of a run of failures; later ones only lengthen it).
    fn fail(&self, key: String, policy: LockoutPolicy) -> BoxFuture<'_, Result<bool, String>>;
    /// Forgets `key`'s failures.
    fn clear(&self, key: String) -> BoxFuture<'_, Result<(), String>>;
}

/// Leases and node liveness, in the shared database.
pub trait LeaseStore: Send + Sync + 'static {
    /// Records that `node` is alive for `ttl_ms` more (and whether it is draining); answers
    /// every live node, this one included.
    fn heartbeat(
        &self,
        node: NodeId,
        ttl_ms: u64,
        draining: bool,
    ) -> BoxFuture<'_, Result<Vec<NodeInfo>, StoreError>>;
    /// Every lease, live or expired.
    fn leases(&self) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>>;
    /// Takes `controller` for `ttl_ms` with a new epoch, if nobody holds it (never held, or
    /// expired). Answers the new epoch, or none when another node holds it. Two nodes racing
    /// for one controller cannot both win. `Rejected` for an unknown controller.
    fn acquire(
        &self,
        node: NodeId,
        controller: ControllerId,
        ttl_ms: u64,
    ) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;
    /// Extends the leases `node` holds with these epochs by `ttl_ms`, if they have not
    /// expired; answers those extended. A lease missing from the answer is lost: its
    /// subtree must stop.
    fn renew(
        &self,
        node: NodeId,
        held: Vec<(ControllerId, u64)>,
        ttl_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<ControllerId>, StoreError>>;
    /// Ends `node`'s leases of `controllers` now, so that another node can take them at once
    /// (the subtrees are stopped first).
    fn release(
        &self,
        node: NodeId,
        controllers: Vec<ControllerId>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// What one node does in one round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moves {
    /// Free controllers to try to take (another node may win some).
    pub acquire: Vec<ControllerId>,
    /// Held controllers to give back (stop first, then release).
    pub release: Vec<ControllerId>,
}

/// The node that runs the cluster's singletons: the first live, non-draining node by id.
pub fn leader(nodes: &[NodeInfo]) -> Option<&NodeId> {
    nodes.iter().filter(|n| !n.draining).map(|n| &n.node).min()
}

/// A controller's weight for a node (rendezvous hashing): every node ranks the controllers
/// differently, so that nodes reaching for free controllers at once mostly reach for
/// different ones, and a node keeps and gives back the same ones round after round.
pub fn affinity(node: &NodeId, controller: &ControllerId) -> u64 {
    // FNV-1a over both names: stable across processes and builds (unlike `DefaultHasher`).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node
        .as_str()
        .bytes()
        .chain(std::iter::once(0))
        .chain(controller.as_str().bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // A final mix, so that names differing in their last byte spread over the whole range.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// This node's fair share: the controllers divided over the live nodes that are not
/// draining, the remainder going to the first nodes by name, so that the shares add up to
/// the total exactly. None while this node is not among them (draining, or not yet seen).
pub fn share(me: &NodeId, nodes: &[NodeInfo], total: usize) -> Option<usize> {
    let mut serving: Vec<&NodeId> = nodes
        .iter()
        .filter(|n| !n.draining)
        .map(|n| &n.node)
        .collect();
    serving.sort();
    serving.dedup();
    let index = serving.iter().position(|n| *n == me)?;
    let n = serving.len();
    Some(total / n + usize::from(index < total % n))
}

/// One round's moves for `me`: take free controllers up to the fair share, at most `step` a
/// round; give back what exceeds it, at most `step` a round and only while some serving node
/// is below its share (so that nothing is dropped that nobody would pick up). A controller is
/// free when nobody holds it, its lease expired, or its holder is not a live node. A
/// draining node gives everything back at once.
pub fn balance(
    me: &NodeId,
    nodes: &[NodeInfo],
    controllers: &[ControllerId],
    leases: &[Lease],
    step: usize,
) -> Moves {
    let step = step.max(1);
    let live: HashSet<&NodeId> = nodes.iter().map(|n| &n.node).collect();
    let holder: HashMap<&ControllerId, &NodeId> = leases
        .iter()
        .filter(|l| l.left_ms > 0 && live.contains(&l.node))
        .map(|l| (&l.controller, &l.node))
        .collect();
    let mut mine: Vec<&ControllerId> = controllers
        .iter()
        .filter(|c| holder.get(c) == Some(&me))
        .collect();
    let Some(quota) = share(me, nodes, controllers.len()) else {
        // Draining, or not registered yet: give everything back, take nothing.
        return Moves {
            acquire: Vec::new(),
            release: mine.into_iter().cloned().collect(),
        };
    };
    if mine.len() < quota {
        let mut free: Vec<&ControllerId> = controllers
            .iter()
            .filter(|c| !holder.contains_key(c))
            .collect();
        free.sort_by_key(|c| std::cmp::Reverse(affinity(me, c)));
        free.truncate((quota - mine.len()).min(step));
        return Moves {
            acquire: free.into_iter().cloned().collect(),
            release: Vec::new(),
        };
    }
    if mine.len() > quota {
        let mut held_by: HashMap<&NodeId, usize> = HashMap::new();
        for node in holder.values() {
            *held_by.entry(node).or_default() += 1;
        }
        let someone_short = nodes.iter().filter(|n| !n.draining).any(|n| {
            share(&n.node, nodes, controllers.len())
                .is_some_and(|q| held_by.get(&n.node).copied().unwrap_or(0) < q)
        });
        if someone_short {
            // Give back the ones this node ranks lowest.
            mine.sort_by_key(|c| affinity(me, c));
            mine.truncate((mine.len() - quota).min(step));
            return Moves {
                acquire: Vec::new(),
                release: mine.into_iter().cloned().collect(),
            };
        }
    }
    Moves::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeInfo {
        NodeInfo {
            node: NodeId::new(name).unwrap(),
            draining: false,
        }
    }

    #[test]
    fn the_leader_is_the_first_live_node_that_is_not_draining() {
        let mut nodes = vec![node("n2"), node("n1"), node("n3")];
        assert_eq!(leader(&nodes).map(NodeId::as_str), Some("n1"));
        nodes[1].draining = true;
        assert_eq!(leader(&nodes).map(NodeId::as_str), Some("n2"));
        assert_eq!(leader(&[]), None);
        let ownership = Ownership::new(NodeId::new("n2").unwrap(), Duration::from_secs(5));
        assert!(
            !ownership.is_leader(),
            "not before the keeper's first round"
        );
        ownership.set_nodes(&nodes);
        assert!(ownership.is_leader());
        assert_eq!(ownership.live_nodes().len(), 3, "draining nodes are alive");
    }

    fn controllers(n: usize) -> Vec<ControllerId> {
        (0..n)
            .map(|i| ControllerId::new(&format!("c{i}")).unwrap())
            .collect()
    }

    /// Runs rounds of `balance` for every node in turn against a shared lease table (the
    /// store's rules: acquire only what nobody live holds) until nothing moves; answers the
    /// controllers per node and the rounds it took.
    fn settle(
        nodes: &[NodeInfo],
        all: &[ControllerId],
        leases: &mut Vec<Lease>,
        step: usize,
    ) -> (HashMap<NodeId, usize>, usize) {
        let mut epoch = leases.iter().map(|l| l.epoch).max().unwrap_or(0);
        for round in 1..=1000 {
            let mut moved = false;
            for n in nodes {
                let moves = balance(&n.node, nodes, all, leases, step);
                for c in &moves.release {
                    leases.retain(|l| &l.controller != c);
                    moved = true;
                }
                for c in &moves.acquire {
                    let live: HashSet<&NodeId> = nodes.iter().map(|n| &n.node).collect();
                    let taken = leases
                        .iter()
                        .any(|l| &l.controller == c && l.left_ms > 0 && live.contains(&l.node));
                    if !taken {
                        leases.retain(|l| &l.controller != c);
                        epoch += 1;
                        leases.push(Lease {
                            controller: c.clone(),
                            node: n.node.clone(),
                            epoch,
                            left_ms: 5000,
                        });
                        moved = true;
                    }
                }
            }
            if !moved {
                let mut per: HashMap<NodeId, usize> = HashMap::new();
                for l in leases.iter() {
                    *per.entry(l.node.clone()).or_default() += 1;
                }
                return (per, round);
            }
        }
        panic!("never settled");
    }

    #[test]
    fn shares_add_up_and_differ_by_one_at_most() {
        let nodes = [node("a"), node("b"), node("c")];
        for total in [0, 1, 2, 3, 10, 31, 100] {
            let shares: Vec<usize> = nodes
                .iter()
                .map(|n| share(&n.node, &nodes, total).unwrap())
                .collect();
            assert_eq!(shares.iter().sum::<usize>(), total, "{total}: {shares:?}");
            let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(hi - lo <= 1, "{total}: {shares:?}");
        }
        let mut draining = node("b");
        draining.draining = true;
        assert_eq!(
            share(&draining.node, &[node("a"), draining.clone()], 10),
            None
        );
        assert_eq!(
            share(&NodeId::new("a").unwrap(), &[node("a"), draining], 10),
            Some(10)
        );
    }

    #[test]
    fn nodes_starting_together_split_the_fleet_evenly() {
        let nodes = [node("n1"), node("n2"), node("n3")];
        let all = controllers(31);
        let (per, _) = settle(&nodes, &all, &mut Vec::new(), 4);
        let mut counts: Vec<usize> = per.values().copied().collect();
        counts.sort();
        assert_eq!(counts, [10, 10, 11]);
    }

    #[test]
    fn a_joining_node_takes_its_share_a_step_at_a_time_and_nobody_holds_twice() {
        let first = [node("n1"), node("n2")];
        let all = controllers(30);
        let mut leases = Vec::new();
        settle(&first, &all, &mut leases, 30);
        let joined = [node("n1"), node("n2"), node("n3")];
        // One round: n3 finds nothing free; n1 and n2 each give back at most `step`.
        let step = 2;
        let n3 = NodeId::new("n3").unwrap();
        assert_eq!(balance(&n3, &joined, &all, &leases, step), Moves::default());
        for n in &first {
            let moves = balance(&n.node, &joined, &all, &leases, step);
            assert!(moves.acquire.is_empty());
            assert_eq!(moves.release.len(), step, "{moves:?}");
        }
        let (per, rounds) = settle(&joined, &all, &mut leases, step);
        assert_eq!(
            per.values().copied().collect::<HashSet<_>>(),
            HashSet::from([10])
        );
        assert!(rounds > 1, "gradual, not all at once");
        let mut seen = HashSet::new();
        assert!(leases.iter().all(|l| seen.insert(l.controller.clone())));
    }

    #[test]
    fn a_dead_or_draining_node_leaves_its_controllers_to_the_others() {
        let all = controllers(12);
        let three = [node("a"), node("b"), node("c")];
        let mut leases = Vec::new();
        settle(&three, &all, &mut leases, 12);
        // c stops heartbeating: its leases still run, but its controllers are free to the
        // others only once expired or once c is gone from the live list. Gone from the list:
        let two = [node("a"), node("b")];
        let (per, _) = settle(&two, &all, &mut leases, 12);
        assert_eq!(per.get(&NodeId::new("a").unwrap()), Some(&6));
        assert_eq!(per.get(&NodeId::new("b").unwrap()), Some(&6));
        // b drains: it gives everything back at once, a takes it all.
        let mut b = node("b");
        b.draining = true;
        let draining = [node("a"), b.clone()];
        let moves = balance(&b.node, &draining, &all, &leases, 1);
        assert_eq!(moves.release.len(), 6, "{moves:?}");
        let (per, _) = settle(&draining, &all, &mut leases, 12);
        assert_eq!(per.get(&NodeId::new("a").unwrap()), Some(&12));
    }

    #[test]
    fn an_expired_lease_is_free_even_while_its_holder_lives() {
        let all = controllers(2);
        let nodes = [node("a"), node("b")];
        let leases = vec![
            Lease {
                controller: all[0].clone(),
                node: NodeId::new("b").unwrap(),
                epoch: 1,
                left_ms: 0,
            },
            Lease {
                controller: all[1].clone(),
                node: NodeId::new("b").unwrap(),
                epoch: 2,
                left_ms: 3000,
            },
        ];
        let a = NodeId::new("a").unwrap();
        assert_eq!(
            balance(&a, &nodes, &all, &leases, 5).acquire,
            vec![all[0].clone()]
        );
    }

    #[test]
    fn affinity_is_stable_and_spreads() {
        let a = NodeId::new("a").unwrap();
        let c = ControllerId::new("c1").unwrap();
        assert_eq!(affinity(&a, &c), affinity(&a, &c));
        // Different nodes rank the same controllers differently.
        let all = controllers(20);
        let rank = |n: &str| {
            let n = NodeId::new(n).unwrap();
            let mut v = all.clone();
            v.sort_by_key(|c| affinity(&n, c));
            v
        };
        assert_ne!(rank("a"), rank("b"));
    }
}
