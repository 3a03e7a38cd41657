//! Command ids claimed in the store: the id is the idempotency key across every gate and every
//! node (CONTRACTS.md), and it must outlive a node and a Redis restart, so the database keeps
//! who had it first. A node's own memory of ids (`RateLimits`, loaded from here at start)
//! answers the ids it knows without asking.
//!
//! - In a cluster ([`Claiming::Wait`]) other nodes claim ids too, so a new id waits for its
//!   claim (at most [`WAIT`]) before its command is sent.
//! - A node alone ([`Claiming::Record`]) is the only one claiming: its memory decides, and
//!   the claims are only recorded, so that commands never wait on the database for them.
//!
//! Claims arriving together are written in one transaction by one task, so that a burst of
//! commands costs one round trip, not one each. A store that fails or is slow does not stop
//! the gates: while it is away, claims are answered "unknown" at once (the node's memory
//! decides alone) and kept, in order, to be written when it is back (at most [`BACKLOG`]; the
//! oldest go first). An id found taken only then, after its command was sent, is logged: it
//! cannot be undone.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gatehouse_actors::clock::wall_ms;
use gatehouse_actors::store::{Claimed, CommandClaim, CommandIdStore, StoreError};
use gatehouse_actors::telemetry::names;
use tokio::sync::{mpsc, oneshot};

/// How long a command waits for its claim before its node decides alone.
pub const WAIT: Duration = Duration::from_millis(500);
/// Claims kept while the store is away, at most.
pub const BACKLOG: usize = 50_000;
/// Claims written in one transaction, at most.
const BATCH: usize = 256;
/// Ids are forgotten this long after their claim (CONTRACTS.md: at least 24 hours).
pub const KEEP: Duration = Duration::from_secs(48 * 3600);
/// How often old ids are forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(3600);
/// The wait before writing again after a failure.
const RETRY: Duration = Duration::from_secs(1);

struct Pending {
    claim: CommandClaim,
    /// None: nobody waits (the claim is written for the record).
    reply: Option<oneshot::Sender<Claimed>>,
}

/// Whether a command waits for its id's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claiming {
    /// Yes: other nodes claim ids in the same store (a cluster).
    Wait,
    /// No: this node alone claims, its memory decides; claims are recorded for its restarts.
    Record,
}

/// The handle the command path claims ids through.
#[derive(Clone)]
pub struct CommandIds {
    tx: mpsc::UnboundedSender<Pending>,
    store: Arc<dyn CommandIdStore>,
    claiming: Claiming,
    /// The store failed or was slow lately: claims are not waited for until a write succeeds.
    away: Arc<AtomicBool>,
}

impl CommandIds {
    /// Starts the writer (and the hourly forgetting of old ids) on `store`.
    pub fn start(store: Arc<dyn CommandIdStore>, claiming: Claiming) -> CommandIds {
        let (tx, rx) = mpsc::unbounded_channel();
        let away = Arc::new(AtomicBool::new(false));
        tokio::spawn(write_loop(store.clone(), rx, away.clone()));
        tokio::spawn(forget_loop(store.clone()));
        CommandIds {
            tx,
            store,
            claiming,
            away,
        }
    }

    /// The newest `limit` ids claimed within [`KEEP`], oldest first: what a starting node
    /// remembers.
    pub async fn recent(&self, limit: u32) -> Result<Vec<CommandClaim>, StoreError> {
        let since = wall_ms().saturating_sub(KEEP.as_millis() as u64);
        self.store.recent_commands(since, limit).await
    }

    /// Claims `claim`'s id: what the store knew of it, or `None` when it is not waited for
    /// ([`Claiming::Record`]), or the store could not say within [`WAIT`] (the claim is
    /// written later all the same).
    pub async fn claim(&self, claim: CommandClaim) -> Option<Claimed> {
        if self.claiming == Claiming::Record {
            let _ = self.tx.send(Pending { claim, reply: None });
            return None;
        }
        if self.away.load(Ordering::Relaxed) {
            let _ = self.tx.send(Pending { claim, reply: None });
            count("unknown");
            return None;
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            claim,
            reply: Some(reply),
        };
        if self.tx.send(pending).is_err() {
            count("unknown");
            return None;
        }
        match tokio::time::timeout(WAIT, answer).await {
            Ok(Ok(claimed)) => Some(claimed),
            Ok(Err(_)) => {
                count("unknown");
                None
            }
            Err(_) => {
                // Slow: the next commands do not wait until a write goes through.
                self.away.store(true, Ordering::Relaxed);
                tracing::warn!(
                    wait_ms = WAIT.as_millis() as u64,
                    "the store did not answer a command id claim in time; commands go on \
                     with this node's memory of ids until it does"
                );
                count("unknown");
                None
            }
        }
    }
}

fn count(outcome: &'static str) {
    metrics::counter!(names::COMMAND_ID_CLAIMS, "outcome" => outcome).increment(1);
}

async fn write_loop(
    store: Arc<dyn CommandIdStore>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    away: Arc<AtomicBool>,
) {
    let mut queue: VecDeque<Pending> = VecDeque::new();
    let mut dropped = 0u64;
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(p) => queue.push_back(p),
                None => return,
            }
        }
        while let Ok(p) = rx.try_recv() {
            queue.push_back(p);
        }
        while queue.len() > BACKLOG {
            queue.pop_front();
            dropped += 1;
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "command id claims were dropped while the store was away (too many kept)"
            );
            dropped = 0;
        }
        let n = queue.len().min(BATCH);
        let claims: Vec<CommandClaim> = queue.iter().take(n).map(|p| p.claim.clone()).collect();
        match store.claim_commands(claims).await {
            Ok(answers) => {
                away.store(false, Ordering::Relaxed);
                for (p, claimed) in queue.drain(..n).zip(answers) {
                    count(match claimed {
                        Claimed::New => "new",
                        Claimed::Same => "same",
                        Claimed::Other { .. } => "other",
                    });
                    match p.reply {
                        Some(reply) => {
                            let _ = reply.send(claimed);
                        }
                        None => {
                            if let Claimed::Other { gate, action } = claimed {
                                tracing::warn!(
                                    id = %p.claim.id,
                                    gate = %p.claim.gate,
                                    action = p.claim.action.as_str(),
                                    first_gate = %gate,
                                    first_action = action.as_str(),
                                    "a command id already taken by another command was used \
                                     and both were sent (the store was away, or this node's \
                                     memory had forgotten the id)"
                                );
                            }
                        }
                    }
                }
            }
            Err(e) => {
                if !away.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "command ids cannot be claimed in the store; \
                        commands go on with this node's memory of ids, claims are kept");
                }
                // Nobody waits for an answer that comes this late.
                for p in queue.iter_mut() {
                    p.reply = None;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

async fn forget_loop(store: Arc<dyn CommandIdStore>) {
    let mut every = tokio::time::interval(FORGET_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let before = wall_ms().saturating_sub(KEEP.as_millis() as u64);
        match store.forget_commands(before).await {
            Ok(n) if n > 0 => tracing::debug!(forgotten = n, "old command ids forgotten"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "old command ids could not be forgotten"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_actors::gate::Action;
    use gatehouse_actors::ids::{CommandId, GateId};
    use gatehouse_actors::ports::BoxFuture;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A store in memory that can be made to fail, counting its transactions.
    #[derive(Default)]
    struct Memory {
        ids: Mutex<HashMap<CommandId, (GateId, Action)>>,
        failing: AtomicBool,
        batches: Mutex<Vec<usize>>,
    }

    impl CommandIdStore for Memory {
        fn claim_commands(
            &self,
            claims: Vec<CommandClaim>,
        ) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>> {
            Box::pin(async move {
                if self.failing.load(Ordering::Relaxed) {
                    return Err(StoreError::Unavailable("down".into()));
                }
                self.batches.lock().unwrap().push(claims.len());
                let mut ids = self.ids.lock().unwrap();
                Ok(claims
                    .into_iter()
                    .map(|c| match ids.get(&c.id) {
                        None => {
                            ids.insert(c.id, (c.gate, c.action));
                            Claimed::New
                        }
                        Some((g, a)) if *g == c.gate && *a == c.action => Claimed::Same,
                        Some((g, a)) => Claimed::Other {
                            gate: g.clone(),
                            action: *a,
                        },
                    })
                    .collect())
            })
        }

        fn forget_commands(&self, _: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
            Box::pin(async { Ok(0) })
        }

        fn recent_commands(
            &self,
            _: u64,
            _: u32,
        ) -> BoxFuture<'_, Result<Vec<CommandClaim>, StoreError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    fn claim(id: CommandId, gate: &str) -> CommandClaim {
        CommandClaim {
            id,
            gate: GateId::new(gate).unwrap(),
            action: Action::Open,
            at_ms: 1,
        }
    }

    #[tokio::test]
    async fn claims_answer_what_the_store_knew_and_arrive_together_in_one_batch() {
        let store = Arc::new(Memory::default());
        let ids = CommandIds::start(store.clone(), Claiming::Wait);
        let id = CommandId::random();
        // Sent together, before the writer runs: one transaction.
        let (a, b, c) = tokio::join!(
            ids.claim(claim(id, "front")),
            ids.claim(claim(id, "front")),
            ids.claim(claim(id, "back")),
        );
        assert_eq!(a, Some(Claimed::New));
        assert_eq!(b, Some(Claimed::Same));
        assert!(matches!(c, Some(Claimed::Other { ref gate, .. }) if gate.as_str() == "front"));
        assert_eq!(*store.batches.lock().unwrap(), vec![3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_store_answers_unknown_at_once_and_gets_the_claims_when_back() {
        let store = Arc::new(Memory::default());
        store.failing.store(true, Ordering::Relaxed);
        let ids = CommandIds::start(store.clone(), Claiming::Wait);
        let (first, second) = (CommandId::random(), CommandId::random());
        assert_eq!(ids.claim(claim(first, "front")).await, None);
        // Now known to be away: not waited for at all.
        let started = tokio::time::Instant::now();
        assert_eq!(ids.claim(claim(second, "back")).await, None);
        assert_eq!(started.elapsed(), Duration::ZERO);
        store.failing.store(false, Ordering::Relaxed);
        // Both claims are written once the store is back, and the node waits for claims again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while store.ids.lock().unwrap().len() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the kept claims were not written"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            ids.claim(claim(first, "other")).await,
            Some(Claimed::Other {
                gate: GateId::new("front").unwrap(),
                action: Action::Open
            })
        );
    }
}
