//! The store's figures, on SQLite and on PostgreSQL:
//! - event log throughput: many gates append through the EventLog writer (group commit) into
//!   the real store; events per second and the enqueue-to-commit latency;
//! - boot: a fleet of N gates restored from the store (resume points read, tree started) until
//!   every gate has been polled once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use gatehouse_actors::gate::GateEvent;
use gatehouse_actors::gate::{Cause, EventKind, GateSnapshot, GateState};
use gatehouse_actors::ids::{ControllerId, GateId};
use gatehouse_actors::store::EventStore;
use gatehouse_actors::tree::Directory;
use gatehouse_actors::tree::bus::{EventSink, LocalBus};
use gatehouse_actors::tree::eventlog::{self, EventLogWriter};
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_adapters::store::Store;
use gatehouse_runtime::Runtime;
use gatehouse_runtime::fleet_file::FleetFile;
use ractor::Actor;
use serde::Serialize;

use gatehouse_tests::ScratchDatabase;

use crate::{SimProcess, fleet_toml, ms};

/// Gates writing concurrently in the throughput phase.
const WRITERS: usize = 100;

#[derive(clap::Args, Clone)]
pub struct StoreSizes {
    /// CI size.
    #[arg(long)]
    smoke: bool,
    /// Events appended per backend.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Gates restored at boot (100 per simulated controller).
    #[arg(long, default_value_t = 10_000)]
    gates: usize,
    /// PostgreSQL server (a fresh database is created and dropped on it).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pg: String,
}

#[derive(Serialize)]
pub struct BackendFigures {
    backend: &'static str,
    events: usize,
    events_per_second: f64,
    batches: u64,
    /// One transaction (append of a batch), as the writer saw it.
    transaction_p50_ms: f64,
    transaction_p99_ms: f64,
    /// Enqueue to commit with the queue kept full: queueing under saturation, not latency
    /// at a normal load.
    saturated_enqueue_to_commit_p99_ms: f64,
    boot_gates: usize,
    boot_to_all_polled_ms: f64,
}

#[derive(Serialize)]
pub struct StoreReport {
    smoke: bool,
    backends: Vec<BackendFigures>,
}

fn event(gate: &GateId, controller: &ControllerId, seq: u64) -> Arc<GateEvent> {
    Arc::new(GateEvent {
        gate: gate.clone(),
        controller: controller.clone(),
        seq,
        at_ms: 1_700_000_000_000 + seq,
        kind: EventKind::StateChanged {
            from: GateState::Closed,
        },
        cause: Cause::Local,
        snapshot: GateSnapshot {
            state: GateState::Opening,
            position: Some(40),
            cycles: Some(seq),
            ..GateSnapshot::default()
        },
    })
}

struct Throughput {
    rate: f64,
    batches: u64,
    tx_p50: f64,
    tx_p99: f64,
    queued_p99: f64,
}

async fn throughput(store: Arc<Store>, events: usize) -> anyhow::Result<Throughput> {
    let bus: Arc<dyn EventSink> = Arc::new(LocalBus::default());
    let sink: Arc<dyn EventStore> = store;
    let (log, writer) = eventlog::channel(
        sink,
        Arc::new(Directory::default()),
        bus,
        eventlog::QUEUE_CAPACITY,
    );
    let (writer_ref, writer_handle) = Actor::spawn(None, EventLogWriter, writer).await?;
    let per_writer = events / WRITERS;
    let total = per_writer * WRITERS;
    let controller = ControllerId::new("bench")?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let log = log.clone();
        let gate = GateId::new(&format!("tp-{w}"))?;
        let controller = controller.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 1..=per_writer as u64 {
                if log.append(event(&gate, &controller, seq)).await.is_err() {
                    return;
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let stats = log.stats().clone();
    let deadline = Instant::now() + Duration::from_secs(600);
    while stats.committed.load(Ordering::Relaxed) < total as u64 {
        if Instant::now() > deadline {
            bail!("the event log did not commit {total} events within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    writer_ref.stop(None);
    let _ = writer_handle.await;
    Ok(Throughput {
        rate: total as f64 / elapsed,
        batches: stats.batches.load(Ordering::Relaxed),
        tx_p50: ms(stats.transaction_time.quantile(0.5)),
        tx_p99: ms(stats.transaction_time.quantile(0.99)),
        queued_p99: ms(stats.commit_latency.quantile(0.99)),
    })
}

async fn boot(store: Arc<Store>, sim: &SimProcess, units: u8) -> anyhow::Result<(usize, f64)> {
    let profiles = ProfileSet::builtin()?;
    let fleet = FleetFile::parse("bench", &fleet_toml(&sim.controllers, units), &profiles)?;
    gatehouse_runtime::boot::import(&store, &fleet, true, &profiles).await?;
    let gates = fleet.gates.len();
    let bus = LocalBus::default();
    let mut events = bus.subscribe();
    let started = Instant::now();
    let runtime = Runtime::boot(store, profiles, None, bus).await?;
    let mut online = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while online < gates {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, events.recv()).await {
            Ok(Ok(ev)) => {
                if matches!(
                    ev.kind,
                    EventKind::StateChanged {
                        from: GateState::Offline
                    }
                ) {
                    online += 1;
                }
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                bail!("lost {n} events while counting")
            }
            Ok(Err(_)) | Err(_) => bail!("only {online} of {gates} gates were polled"),
        }
    }
    let elapsed = ms(started.elapsed());
    runtime.shutdown(Duration::from_secs(30)).await;
    Ok((gates, elapsed))
}

pub async fn run(sizes: StoreSizes) -> anyhow::Result<StoreReport> {
    let (events, gates) = if sizes.smoke {
        (5_000, 200)
    } else {
        (sizes.events, sizes.gates)
    };
    // 100 gates per simulated controller, as in the poll benchmark.
    let units = u8::try_from(gates.clamp(1, 100)).unwrap_or(100);
    let controllers = gates.div_ceil(usize::from(units));
    let sim = SimProcess::spawn(controllers, units, 2_000)?;
    let dir = tempfile::tempdir()?;
    let pg = ScratchDatabase::create(&sizes.pg, "gh_bench")?;
    let mut backends = Vec::new();
    for (backend, url) in [
        (
            "sqlite",
            format!("sqlite://{}/bench.db", dir.path().display()),
        ),
        ("postgres", pg.url()),
    ] {
        eprintln!("{backend}: event log throughput, {events} events");
        let store = Arc::new(Store::connect(&url).await?);
        store.migrate().await?;
        let t = throughput(store.clone(), events).await?;
        eprintln!("{backend}: boot of {gates} gates");
        let (boot_gates, boot_ms) = boot(store.clone(), &sim, units).await?;
        store.close();
        backends.push(BackendFigures {
            backend,
            events,
            events_per_second: t.rate,
            batches: t.batches,
            transaction_p50_ms: t.tx_p50,
            transaction_p99_ms: t.tx_p99,
            saturated_enqueue_to_commit_p99_ms: t.queued_p99,
            boot_gates,
            boot_to_all_polled_ms: boot_ms,
        });
    }
    Ok(StoreReport {
        smoke: sizes.smoke,
        backends,
    })
}

pub fn print_text(r: &StoreReport) {
    println!(
        "gatehouse-bench store{}",
        if r.smoke { " (smoke)" } else { "" }
    );
    for b in &r.backends {
        println!(
            "  {:<9} event log {:.0} events/s ({} events, {} commits; transaction p50 {:.2} ms, p99 {:.2} ms; saturated queue-to-commit p99 {:.0} ms); boot {} gates to all polled in {:.0} ms",
            b.backend,
            b.events_per_second,
            b.events,
            b.batches,
            b.transaction_p50_ms,
            b.transaction_p99_ms,
            b.saturated_enqueue_to_commit_p99_ms,
            b.boot_gates,
            b.boot_to_all_polled_ms
        );
    }
}
