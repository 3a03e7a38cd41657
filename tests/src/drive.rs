//! Driving an in-process [`Runtime`] the way the cross-crate tests do: wait for a gate's
//! state, send a command and read its acks, and read back what a SQLite store holds.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_actors::gate::{Action, CommandStatus, GateEvent, GateState};
use gatehouse_actors::ids::{CommandId, GateId};
use gatehouse_actors::store::EventStore;
use gatehouse_actors::tree::gate::{Ack, AckSink};
use gatehouse_adapters::store::Store;
use gatehouse_runtime::Runtime;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

/// How long a gate may take to reach a state, and a command to be acknowledged.
pub const WAIT: Duration = Duration::from_secs(30);

/// Waits (bounded by [`WAIT`]) until `gate` is in `state`; a gate that does not exist (yet)
/// is waited for too.
pub async fn wait_state(runtime: &Runtime, gate: &GateId, state: GateState) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = runtime.fleet.view(gate).await.map(|v| v.snapshot.state);
        if now.as_ref() == Ok(&state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{gate} stayed {now:?}, wanted {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `action` to `gate` with a fresh id; its acks arrive on the returned channel.
pub fn command(
    runtime: &Runtime,
    gate: &GateId,
    action: Action,
) -> (CommandId, mpsc::UnboundedReceiver<Ack>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink: AckSink = Arc::new(move |_: &GateId, ack| {
        let _ = tx.send(ack);
    });
    let id = CommandId::random();
    runtime
        .fleet
        .command(gate, id, action, Some(sink))
        .unwrap_or_else(|e| panic!("sending {action:?} to {gate}: {e}"));
    (id, rx)
}

/// The next ack's status, within [`WAIT`].
pub async fn ack(rx: &mut mpsc::UnboundedReceiver<Ack>) -> CommandStatus {
    timeout(WAIT, rx.recv())
        .await
        .expect("an ack in time")
        .expect("ack channel open")
        .status
}

/// Sends `action` to `gate` and returns its statuses up to the terminal one.
pub async fn drive(runtime: &Runtime, gate: &GateId, action: Action) -> Vec<CommandStatus> {
    let (_, mut rx) = command(runtime, gate, action);
    let mut seen = Vec::new();
    loop {
        let status = ack(&mut rx).await;
        seen.push(status);
        if status.is_terminal() {
            return seen;
        }
    }
}

/// Every event stored in the SQLite database at `db`, by gate, in seq order.
pub async fn stored_events(db: &Path) -> HashMap<GateId, Vec<GateEvent>> {
    let store = Store::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("the database opens");
    let mut by_gate: HashMap<GateId, Vec<_>> = HashMap::new();
    let mut after = 0;
    loop {
        let page = store.after(after, 1_000).await.expect("reads");
        let Some(last) = page.last() else { break };
        after = last.id;
        for e in page {
            by_gate
                .entry(e.event.gate.clone())
                .or_default()
                .push(e.event);
        }
    }
    store.close();
    for events in by_gate.values_mut() {
        events.sort_by_key(|e| e.seq);
    }
    by_gate
}
