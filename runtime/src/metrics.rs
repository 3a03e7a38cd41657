//! Installs the Prometheus recorder (`metrics-exporter-prometheus`, no listener of its own:
//! `/metrics` is served by the API) and describes every metric of `docs/metrics.md`, then
//! builds what the API needs to serve it: rendering, with the gauges that are read at scrape
//! time rather than kept up to date on the hot path (links by phase, the event log's queue).

use std::sync::Arc;
use std::time::Duration;

use gatehouse_actors::telemetry::{self, names};
use gatehouse_actors::tree::Fleet;
use gatehouse_actors::tree::link::LinkPhase;
use gatehouse_api::metrics::MetricsExport;
use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::MetricsConfig;

/// Buckets of the `_seconds` histograms: 100 µs (a command confirmed on loopback) to 30 s (a
/// gate's whole travel).
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Buckets of the event log's batch size (entries per transaction, at most 1,000).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// How often histograms fold their samples when nobody scrapes (bounds their memory).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The installed recorder.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    config: MetricsConfig,
}

/// Installs the recorder and the hot instruments, unless metrics are turned off. Call once,
/// before the runtime boots, inside the tokio runtime (the upkeep runs there).
pub fn install(config: &MetricsConfig) -> anyhow::Result<Option<Metrics>> {
    if !config.enabled {
        return Ok(None);
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(names::EVENTLOG_BATCH_SIZE.into()),
            BATCH_BUCKETS,
        )?;
    let handle = builder.install_recorder()?;
    describe();
    telemetry::install();
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!(names::START_TIME).set(gatehouse_actors::clock::wall_ms() as f64 / 1000.0);
    metrics::gauge!(names::ACTORS, "kind" => "root").set(1.0);
    let upkeep = handle.clone();
    // Only folds samples already recorded: losing it loses no state, so it is a plain task.
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(Some(Metrics {
        handle,
        config: config.clone(),
    }))
}

impl Metrics {
    /// What the API serves at `/metrics`, reading the scrape-time gauges from `fleet`.
    pub fn export(&self, fleet: &Fleet) -> MetricsExport {
        let (handle, fleet, limit) = (
            self.handle.clone(),
            fleet.clone(),
            self.config.per_controller_limit,
        );
        MetricsExport {
            render: Arc::new(move || {
                scrape_gauges(&fleet, limit);
                handle.render()
            }),
            token: self.config.token.clone(),
        }
    }

    /// The text a scrape would get now (benchmarks, tests).
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

fn scrape_gauges(fleet: &Fleet, limit: usize) {
    let ctx = fleet.context();
    let links = ctx.link_stats();
    let mut by_phase = [0u32; 4];
    let per_controller = links.len() <= limit;
    for (controller, stats) in &links {
        let phase = stats.status().phase;
        let i = LinkPhase::ALL.iter().position(|p| *p == phase).unwrap_or(0);
        by_phase[i] += 1;
        if per_controller {
            metrics::gauge!(names::LINK_UP, "controller" => controller.to_string()).set(
                if phase == LinkPhase::Connected {
                    1.0
                } else {
                    0.0
                },
            );
        }
    }
    for (phase, n) in LinkPhase::ALL.iter().zip(by_phase) {
        metrics::gauge!(names::LINKS, "state" => phase.as_str()).set(f64::from(n));
    }
    use std::sync::atomic::Ordering::Relaxed;
    for (kind, depth) in [
        ("gate", &telemetry::GATE_MAILBOX),
        ("link", &telemetry::LINK_MAILBOX),
    ] {
        metrics::gauge!(names::ACTOR_MAILBOX_DEPTH, "kind" => kind).set(depth.load(Relaxed) as f64);
    }
    if let Some(log) = &ctx.eventlog {
        metrics::gauge!(names::EVENTLOG_QUEUE_DEPTH).set(log.queue_depth() as f64);
    }
}

/// Help text and units for every metric (promtool wants HELP on each).
fn describe() {
    use metrics::{describe_counter as c, describe_gauge as g, describe_histogram as h};
    g!(names::ACTORS, "Live actors by kind");
    c!(
        names::ACTOR_RESTARTS,
        "Children restarted by their supervisor, by kind and reason"
    );
    h!(
        names::ACTOR_MESSAGE_DURATION,
        Unit::Seconds,
        "Time to handle one message, by actor kind"
    );
    g!(
        names::ACTOR_MAILBOX_DEPTH,
        "Messages sent to actors of a kind and not yet handled"
    );
    g!(names::LINKS, "Controller links by state");
    g!(names::LINK_UP, "1 while the controller's link is connected");
    c!(names::LINK_CONNECTS, "Controller connections opened");
    c!(
        names::LINK_CONNECT_FAILURES,
        "Controller connections that could not be opened, by kind"
    );
    c!(
        names::LINK_FAILURES,
        "Transport failures that ended a controller connection"
    );
    h!(
        names::LINK_TRANSACTION_DURATION,
        Unit::Seconds,
        "One Modbus request and its answer, by op"
    );
    c!(
        names::LINK_TIMEOUTS,
        "Modbus requests without an answer in time, by op"
    );
    c!(names::LINK_RETRIES, "Reads asked again after a lost reply");
    c!(
        names::LINK_EXCEPTIONS,
        "Modbus exception answers, by exception code"
    );
    c!(names::LINK_POLLS, "Gate status reads");
    g!(names::GATES, "Gates by state");
    c!(names::GATE_FAULTS, "Gates entering fault");
    c!(names::GATE_OBSTRUCTIONS, "Obstructions detected");
    c!(names::GATE_CYCLES, "Completed close movements (cycles)");
    c!(names::COMMANDS, "Commands by action and terminal status");
    h!(
        names::COMMAND_ACCEPT_DURATION,
        Unit::Seconds,
        "Command reaching its gate to the write confirmed"
    );
    h!(
        names::COMMAND_COMPLETE_DURATION,
        Unit::Seconds,
        "Command reaching its gate to completed"
    );
    g!(names::SESSIONS, "Connected WebSocket sessions");
    g!(
        names::SESSIONS_AUTHENTICATED,
        "WebSocket sessions past auth"
    );
    g!(
        names::SESSION_SUBSCRIPTIONS,
        "Gate subscriptions over all sessions"
    );
    c!(
        names::SESSION_QUEUE_DROPS,
        "Events replaced in a slow session's queue by a newer state"
    );
    c!(
        names::SESSION_COALESCED,
        "Coalesced snapshots sent to slow sessions"
    );
    c!(
        names::SESSION_CLOSES,
        "WebSocket sessions closed, by close code"
    );
    c!(
        names::SESSION_EVENT_LOSSES,
        "Times events may have been lost before reaching the sessions (between nodes, or the hub behind the bus)"
    );
    c!(
        names::SESSION_GAP_REFILLS,
        "Gates a session refilled from the event store after a loss of events"
    );
    h!(
        names::EVENTLOG_BATCH_SIZE,
        "Entries per event-log transaction"
    );
    h!(
        names::EVENTLOG_COMMIT_DURATION,
        Unit::Seconds,
        "Time of one event-log commit"
    );
    g!(
        names::EVENTLOG_QUEUE_DEPTH,
        "Entries waiting for the event-log writer"
    );
    c!(
        names::EVENTLOG_COMMIT_FAILURES,
        "Event-log commits that failed and were retried"
    );
    c!(
        names::COMMAND_ID_CLAIMS,
        "New command ids claimed in the store, by what the store knew of them"
    );
    c!(
        names::SHARED_LIMIT_FAILURES,
        "Calls to the cluster's shared rate limits that failed or timed out"
    );
    c!(
        names::HTTP_REQUESTS,
        "HTTP requests by route template, method and status"
    );
    h!(
        names::HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time to the HTTP response head, by route and method"
    );
    g!(
        names::BUILD_INFO,
        "Always 1; the version label says which build runs"
    );
    g!(
        names::START_TIME,
        Unit::Seconds,
        "Unix time the process started"
    );
}
