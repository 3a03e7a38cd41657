//! `gatehouse-bench ws`: WebSocket sessions at scale (DESIGN.md's load shapes).
//!
//! Three processes, so that each figure belongs to one of them: the simulator (child), the
//! runtime with the API (this process, measured), and the phones (child: `ws-clients`).
//! 1. **sessions**: N authenticated sessions (tokens minted directly, no Argon2), each
//!    subscribed to its own gate and to one shared "fan" gate: RSS per session in the runtime.
//! 2. **command round trip**: commands at a fixed rate spread over distinct sessions and
//!    gates; latency from the client sending the frame to the client reading `accepted`
//!    (the simulator confirmed the write).
//! 3. **fan-out**: events of the fan gate at a modest rate, each to all N subscribers; delivery
//!    latency from the event's timestamp to the client reading it. Then a burst, for the
//!    sustained deliveries per second. These events are injected on the bus as committed
//!    events arrive, so the figure is the session layer's (hub, session actors, outboxes,
//!    sockets), not the database's (the `store` benchmark has that).

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use gatehouse_actors::access::Role;
use gatehouse_actors::gate::GateEvent;
use gatehouse_actors::gate::{Cause, EventKind, GateSnapshot, GateState};
use gatehouse_actors::ids::GateId;
use gatehouse_actors::stats::Histogram;
use gatehouse_actors::tree::bus::EventSink;
use gatehouse_api::ws::WsConfig;
use gatehouse_tests::stack::{Stack, StackSpec, now_ms};
use gatehouse_tests::wsclient::WsClient;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::{SimProcess, cpu_time, fleet_toml, ms, rss_kib};

#[derive(clap::Args, Clone)]
pub struct WsSizes {
    /// CI size: small and quick; the figures only show that the benchmark works.
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value_t = 100)]
    controllers: usize,
    #[arg(long, default_value_t = 101)]
    units: u8,
    /// Sessions (at most one fewer than the gates: one gate is the shared fan gate).
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Commands per second in the round-trip phase.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    command_seconds: u64,
    /// Fan-gate events per second in the fan-out phase (DESIGN: "a modest event rate"; each
    /// event is one delivery per session).
    #[arg(long, default_value_t = 1)]
    fan_rate: u64,
    #[arg(long, default_value_t = 10)]
    fan_seconds: u64,
    /// Events published back to back for the throughput figure.
    #[arg(long, default_value_t = 20)]
    burst: u64,
    /// Rounds of the instrumentation-cost comparison (command and fan-out phases with
    /// metrics off, then on, alternately); 0 skips it.
    #[arg(long, default_value_t = 3)]
    overhead_rounds: u32,
}

impl WsSizes {
    fn effective(&self) -> WsSizes {
        if !self.smoke {
            return self.clone();
        }
        WsSizes {
            smoke: true,
            controllers: 4,
            units: 10,
            sessions: 39,
            rate: 40,
            command_seconds: 1,
            fan_rate: 10,
            fan_seconds: 1,
            burst: 5,
            overhead_rounds: 1,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, Default)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram) -> Latency {
        Latency {
            count: h.count(),
            p50_ms: ms(h.quantile(0.5)),
            p99_ms: ms(h.quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// What the clients report for the command phase.
#[derive(Debug, Serialize, Deserialize, Default)]
pub struct CommandFigures {
    pub sent: u64,
    pub accepted: u64,
    pub terminal: u64,
    pub refused: u64,
    pub accepted_latency: Latency,
}

/// What the clients report for a fan-out phase.
#[derive(Debug, Serialize, Deserialize, Default)]
pub struct FanFigures {
    pub expected: u64,
    pub delivered: u64,
    pub latency: Latency,
    /// From the first event's timestamp to the last delivery.
    pub span_ms: f64,
    /// Each event's slowest delivery, in publishing order.
    pub slowest_per_event_ms: Vec<f64>,
    /// The latency by the address the sessions connected to (the nodes of a cluster), in the
    /// order given.
    #[serde(default)]
    pub by_node: Vec<Latency>,
}

#[derive(Debug, Serialize)]
pub struct WsReport {
    pub gates: usize,
    pub sessions: usize,
    pub connect_seconds: f64,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub rss_per_session_kib: f64,
    pub command_rate: u64,
    pub command: CommandFigures,
    pub command_cpu_percent: f64,
    pub fanout_rate: u64,
    pub fanout: FanFigures,
    /// The runtime's CPU with nothing but polling, and what each fan-out delivery adds.
    pub baseline_cpu_percent: f64,
    pub fanout_server_cpu_us_per_delivery: f64,
    pub burst: FanFigures,
    pub burst_deliveries_per_s: f64,
    pub sessions_too_slow: u64,
    pub sessions_coalesced_events: u64,
    /// Metrics on versus off, measured in alternating rounds of this one run.
    pub overhead: Option<Overhead>,
    /// A loss of events raised on the bus with every session at its gates' heads.
    pub gap: GapFigures,
}

/// What one loss of events (a gap raised on the bus, as when Redis drops between nodes)
/// costs with every session at its gates' heads.
#[derive(Debug, Serialize, Default)]
pub struct GapFigures {
    /// Gates the sessions follow.
    pub followed_gates: usize,
    /// From the gap to the last session done checking its gates.
    pub check_ms: f64,
    /// Reads of the followed gates' heads (one for all sessions; 256 gates a query).
    pub head_reads: u64,
    /// Gates a session read from the store itself.
    pub session_refills: u64,
}

/// What instrumentation costs: the same phases with metrics off and on, alternately.
#[derive(Debug, Serialize, Default)]
pub struct Overhead {
    pub rounds: u32,
    /// Sums over the rounds: (off, on), in ms.
    pub command_p50_ms: (f64, f64),
    pub command_p99_ms: (f64, f64),
    pub fanout_p50_ms: (f64, f64),
    pub fanout_p99_ms: (f64, f64),
    /// on / off of the sums: 1.05 is 5 % slower with metrics on.
    pub command_p50_ratio: f64,
    pub command_p99_ratio: f64,
    pub fanout_p50_ratio: f64,
    pub fanout_p99_ratio: f64,
}

/// The phones' process.
pub(crate) struct Clients {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Clients {
    pub(crate) fn spawn(
        addrs: &[std::net::SocketAddr],
        token: &str,
        gates: &std::path::Path,
    ) -> anyhow::Result<Clients> {
        let mut command = Command::new(std::env::current_exe()?);
        command.arg("ws-clients");
        for addr in addrs {
            command.args(["--addr", &addr.to_string()]);
        }
        let mut child = command
            .arg("--gates")
            .arg(gates)
            .env("GATEHOUSE_BENCH_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the client process")?;
        let stdin = child.stdin.take().context("client stdin")?;
        let lines = BufReader::new(child.stdout.take().context("client stdout")?).lines();
        Ok(Clients {
            child,
            stdin,
            lines,
        })
    }

    pub(crate) fn ask(&mut self, line: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        self.lines
            .next()
            .context("the client process ended")?
            .context("reading the client process")
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fan_event(gate: &GateId, seq: u64) -> Arc<GateEvent> {
    Arc::new(GateEvent {
        gate: gate.clone(),
        controller: "fan".parse().expect("a slug"),
        seq,
        at_ms: now_ms(),
        kind: EventKind::LeftOpen { open_for_ms: seq },
        cause: Cause::System,
        snapshot: GateSnapshot {
            state: GateState::Open,
            position: Some(100),
            ..GateSnapshot::default()
        },
    })
}

pub async fn run(sizes: WsSizes) -> anyhow::Result<WsReport> {
    let s = sizes.effective();
    // As in production: the exporter installed, every instrument recording.
    let metrics = gatehouse_runtime::metrics::install(&Default::default())?;
    let gates = s.controllers * usize::from(s.units);
    if s.sessions + 1 > gates {
        bail!(
            "{} sessions need {} gates; there are {gates}",
            s.sessions,
            s.sessions + 1
        );
    }
    eprintln!(
        "starting the simulator: {} controllers x {} units",
        s.controllers, s.units
    );
    let sim = SimProcess::spawn(s.controllers, s.units, 2_000)?;
    let fleet = fleet_toml(&sim.controllers, s.units);
    let stack = Stack::start(StackSpec {
        fleet,
        users: vec![("bench", Role::Operator)],
        ws: WsConfig::default(),
        wait_closed: false,
        bus_capacity: None,
        maintenance_check: std::time::Duration::from_secs(60),
        notify: None,
        blobs: None,
        monthly_reports: false,
    })
    .await?;
    let mut ids: Vec<GateId> = stack
        .runtime
        .fleet
        .controllers()
        .iter()
        .flat_map(|c| {
            c.gates
                .iter()
                .map(|g| g.spec.id.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    ids.sort();
    let deadline = Instant::now() + Duration::from_secs(120);
    for gate in &ids {
        loop {
            if stack
                .runtime
                .fleet
                .view(gate)
                .await
                .is_ok_and(|v| v.snapshot.state == GateState::Closed)
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("{gate} did not come up closed within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("{gates} gates closed and online");
    let fan = ids[0].clone();
    let dir = tempfile::tempdir()?;
    let list = dir.path().join("gates");
    std::fs::write(
        &list,
        ids.iter()
            .take(s.sessions + 1)
            .map(|g| format!("{g}\n"))
            .collect::<String>(),
    )?;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_kib();
    let token = stack.token("bench");
    let mut clients = Clients::spawn(&[stack.addr], &token, &list)?;
    let t0 = Instant::now();
    let ready = tokio::task::block_in_place(|| clients.ask(&format!("connect {}", s.sessions)))?;
    let connect_seconds = t0.elapsed().as_secs_f64();
    if ready.trim() != format!("ready {}", s.sessions) {
        bail!("the clients answered {ready:?}");
    }
    eprintln!("{} sessions up in {connect_seconds:.1} s", s.sessions);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open = stack.app.sessions.stats().open;
    if open != s.sessions {
        bail!("{open} sessions open, expected {}", s.sessions);
    }
    let rss_after = rss_kib();

    let (cpu0, w0) = (cpu_time(), Instant::now());
    let answer = tokio::task::block_in_place(|| {
        clients.ask(&format!("commands {} {}", s.rate, s.command_seconds))
    })?;
    let (cpu1, w1) = (cpu_time(), Instant::now());
    let command: CommandFigures = serde_json::from_str(&answer).context("command figures")?;
    eprintln!("command phase: {answer}");

    // Let the commanded gates finish moving, so that the fan-out is measured alone; the last
    // seconds of it are the runtime's baseline CPU (polling 10,000 gates).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (base_cpu0, base_w0) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = (cpu_time() - base_cpu0).as_secs_f64() / base_w0.elapsed().as_secs_f64();

    // Fan-out at a modest rate.
    tokio::task::block_in_place(|| clients.ask("fan-start"))?;
    // The injected events continue the (idle) fan gate's own sequence, as its real events
    // would: a jump would be a gap, which every session fills from the store first.
    let mut seq = stack.runtime.fleet.view(&fan).await?.committed;
    let events = s.fan_rate * s.fan_seconds;
    let period = Duration::from_secs_f64(1.0 / s.fan_rate as f64);
    let mut tick = tokio::time::interval(period);
    let (fan_cpu0, fan_w0) = (cpu_time(), Instant::now());
    for _ in 0..events {
        tick.tick().await;
        seq += 1;
        stack.runtime.bus.publish(fan_event(&fan, seq));
    }
    let answer = tokio::task::block_in_place(|| {
        clients.ask(&format!("fan-report {}", events * s.sessions as u64))
    })?;
    let fan_cpu = (cpu_time() - fan_cpu0).as_secs_f64();
    let fan_wall = fan_w0.elapsed().as_secs_f64();
    let fanout: FanFigures = serde_json::from_str(&answer).context("fan figures")?;
    let fanout_server_cpu_us_per_delivery = if fanout.delivered > 0 {
        ((fan_cpu - baseline * fan_wall).max(0.0) * 1e6) / fanout.delivered as f64
    } else {
        0.0
    };
    eprintln!("fan-out phase: {answer}");

    // A burst, for throughput.
    tokio::task::block_in_place(|| clients.ask("fan-start"))?;
    for _ in 0..s.burst {
        seq += 1;
        stack.runtime.bus.publish(fan_event(&fan, seq));
    }
    let answer = tokio::task::block_in_place(|| {
        clients.ask(&format!("fan-report {}", s.burst * s.sessions as u64))
    })?;
    let burst: FanFigures = serde_json::from_str(&answer).context("burst figures")?;
    eprintln!("burst phase: {answer}");

    let mut overhead = None;
    if s.overhead_rounds > 0 && metrics.is_some() {
        let mut o = Overhead {
            rounds: s.overhead_rounds,
            ..Overhead::default()
        };
        for round in 0..s.overhead_rounds {
            // Off first in odd rounds, on first in even ones, so that a drift in the
            // machine's load favours neither.
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for on in order {
                gatehouse_actors::telemetry::set_active(on);
                tokio::time::sleep(Duration::from_secs(1)).await;
                let answer = tokio::task::block_in_place(|| {
                    clients.ask(&format!("commands {} {}", s.rate, s.command_seconds))
                })?;
                let c: CommandFigures = serde_json::from_str(&answer).context("command figures")?;
                tokio::time::sleep(Duration::from_secs(3)).await;
                tokio::task::block_in_place(|| clients.ask("fan-start"))?;
                let mut tick = tokio::time::interval(period);
                for _ in 0..events {
                    tick.tick().await;
                    seq += 1;
                    stack.runtime.bus.publish(fan_event(&fan, seq));
                }
                let answer = tokio::task::block_in_place(|| {
                    clients.ask(&format!("fan-report {}", events * s.sessions as u64))
                })?;
                let f: FanFigures = serde_json::from_str(&answer).context("fan figures")?;
                let add = |pair: &mut (f64, f64), v: f64| {
                    if on { pair.1 += v } else { pair.0 += v }
                };
                add(&mut o.command_p50_ms, c.accepted_latency.p50_ms);
                add(&mut o.command_p99_ms, c.accepted_latency.p99_ms);
                add(&mut o.fanout_p50_ms, f.latency.p50_ms);
                add(&mut o.fanout_p99_ms, f.latency.p99_ms);
                eprintln!(
                    "overhead round {round}, metrics {}: command p50 {:.3} ms, fan-out p50 {:.1} ms",
                    if on { "on" } else { "off" },
                    c.accepted_latency.p50_ms,
                    f.latency.p50_ms
                );
            }
        }
        gatehouse_actors::telemetry::set_active(true);
        let ratio = |(off, on): (f64, f64)| if off > 0.0 { on / off } else { 0.0 };
        o.command_p50_ratio = ratio(o.command_p50_ms);
        o.command_p99_ratio = ratio(o.command_p99_ms);
        o.fanout_p50_ratio = ratio(o.fanout_p50_ms);
        o.fanout_p99_ratio = ratio(o.fanout_p99_ms);
        overhead = Some(o);
    }

    // A loss of events, every session at its gates' heads: one heads read for all of them,
    // no session reading its gates.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = stack.app.sessions.stats();
    let followed_gates = stack.app.sessions.hub().subscribed_gate_count();
    let t0 = Instant::now();
    stack.runtime.bus.signal_gap();
    let gap_deadline = t0 + Duration::from_secs(120);
    while stack.app.sessions.stats().gap_checks < before.gap_checks + s.sessions as u64 {
        if Instant::now() > gap_deadline {
            bail!(
                "the sessions did not check their gates within 120 s of a gap: {:?}",
                stack.app.sessions.stats()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let check_ms = t0.elapsed().as_secs_f64() * 1e3;
    let after = stack.app.sessions.stats();
    let gap = GapFigures {
        followed_gates,
        check_ms,
        head_reads: after.gap_head_reads - before.gap_head_reads,
        session_refills: after.gap_refills - before.gap_refills,
    };
    eprintln!("gap phase: {gap:?}");

    let stats = stack.app.sessions.stats();
    drop(clients);
    stack.shutdown().await;
    drop(sim);
    Ok(WsReport {
        gates,
        sessions: s.sessions,
        connect_seconds,
        rss_before_mib: rss_before / 1024.0,
        rss_after_mib: rss_after / 1024.0,
        rss_per_session_kib: (rss_after - rss_before) / s.sessions as f64,
        command_rate: s.rate,
        command_cpu_percent: 100.0 * (cpu1 - cpu0).as_secs_f64() / (w1 - w0).as_secs_f64(),
        command,
        fanout_rate: s.fan_rate,
        fanout,
        baseline_cpu_percent: 100.0 * baseline,
        fanout_server_cpu_us_per_delivery,
        burst_deliveries_per_s: if burst.span_ms > 0.0 {
            burst.delivered as f64 / (burst.span_ms / 1000.0)
        } else {
            0.0
        },
        burst,
        sessions_too_slow: stats.too_slow,
        sessions_coalesced_events: stats.coalesced,
        overhead,
        gap,
    })
}

pub fn print_text(r: &WsReport) {
    println!(
        "WebSocket sessions: {} sessions on {} gates",
        r.sessions, r.gates
    );
    println!(
        "  connect+auth+subscribe: {:.1} s; RSS {:.1} → {:.1} MiB: {:.1} KiB per session (target ≤ 20)",
        r.connect_seconds, r.rss_before_mib, r.rss_after_mib, r.rss_per_session_kib
    );
    println!(
        "  command round trip at {}/s: {} sent, {} accepted, {} terminal, {} refused; accepted p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (targets ≤ 0.5 / ≤ 2); runtime CPU {:.0} %",
        r.command_rate,
        r.command.sent,
        r.command.accepted,
        r.command.terminal,
        r.command.refused,
        r.command.accepted_latency.p50_ms,
        r.command.accepted_latency.p99_ms,
        r.command.accepted_latency.max_ms,
        r.command_cpu_percent
    );
    println!(
        "  fan-out at {} events/s to {} subscribers: {} of {} delivered; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 ≤ 50)",
        r.fanout_rate,
        r.sessions,
        r.fanout.delivered,
        r.fanout.expected,
        r.fanout.latency.p50_ms,
        r.fanout.latency.p99_ms,
        r.fanout.latency.max_ms
    );
    println!(
        "  runtime CPU: {:.0} % at rest (polling), plus {:.1} µs per fan-out delivery",
        r.baseline_cpu_percent, r.fanout_server_cpu_us_per_delivery
    );
    println!(
        "  burst: {} of {} delivered in {:.0} ms: {:.0} deliveries/s; p99 {:.1} ms; slow sessions cut off {}, events coalesced {}",
        r.burst.delivered,
        r.burst.expected,
        r.burst.span_ms,
        r.burst_deliveries_per_s,
        r.burst.latency.p99_ms,
        r.sessions_too_slow,
        r.sessions_coalesced_events
    );
    println!(
        "  a loss of events with every session at its heads: all {} sessions checked their {} gates in {:.0} ms; {} heads read(s), {} gate(s) read by a session",
        r.sessions, r.gap.followed_gates, r.gap.check_ms, r.gap.head_reads, r.gap.session_refills
    );
    if let Some(o) = &r.overhead {
        println!(
            "  instrumentation cost over {} alternating rounds (metrics on / off, target ≤ 1.05): command p50 ×{:.3}, p99 ×{:.3}; fan-out p50 ×{:.3}, p99 ×{:.3}",
            o.rounds,
            o.command_p50_ratio,
            o.command_p99_ratio,
            o.fanout_p50_ratio,
            o.fanout_p99_ratio
        );
    }
}

// ---------------------------------------------------------------------------------------
// The client process.

/// Shared figures of every connection.
#[derive(Default)]
struct Figures {
    accepted: Histogram,
    terminal: AtomicU64,
    refused: AtomicU64,
    fan: Histogram,
    /// Latest delivery time of a fan event, µs since the epoch.
    fan_last_us: AtomicU64,
    /// Earliest event timestamp of the current fan phase, ms since the epoch.
    fan_first_ms: AtomicU64,
    /// The slowest delivery of each fan event (by seq), µs.
    fan_slowest: std::sync::Mutex<std::collections::BTreeMap<u64, u64>>,
    /// Fan deliveries by the address the session connected to.
    fan_by_node: Vec<Histogram>,
}

enum Out {
    /// Send a command now; measure from now.
    Command(String),
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A number field of a server frame, read without parsing all of it.
fn field_u64(text: &str, name: &str) -> Option<u64> {
    let at = text.find(&format!("\"{name}\":"))? + name.len() + 3;
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

async fn connection(
    mut client: WsClient,
    node: usize,
    fan: String,
    mut rx: mpsc::UnboundedReceiver<Out>,
    figures: Arc<Figures>,
) {
    let mut pending: Option<(String, Instant)> = None;
    let fan_marker = format!("\"gate\":\"{fan}\"");
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Command(frame)) => {
                    let id = serde_json::from_str::<serde_json::Value>(&frame)
                        .ok()
                        .and_then(|v| v["id"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    pending = Some((id, Instant::now()));
                    if client.socket.send(Message::Text(Utf8Bytes::from(frame))).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = client.socket.close(None).await;
                    return;
                }
            },
            frame = client.socket.next() => {
                let Some(Ok(Message::Text(text))) = frame else {
                    if matches!(frame, Some(Ok(_))) { continue; }
                    return;
                };
                let text = text.as_str();
                if text.contains("\"type\":\"event\"") {
                    if text.contains(&fan_marker) && let Some(at) = field_u64(text, "at_ms") {
                        let now = now_us();
                        let took = now.saturating_sub(at * 1000);
                        figures.fan.record(Duration::from_micros(took));
                        if let Some(h) = figures.fan_by_node.get(node) {
                            h.record(Duration::from_micros(took));
                        }
                        if let (Some(seq), Ok(mut slowest)) = (field_u64(text, "seq"), figures.fan_slowest.lock()) {
                            let e = slowest.entry(seq).or_default();
                            *e = (*e).max(took);
                        }
                        figures.fan_last_us.fetch_max(now, Ordering::Relaxed);
                        figures.fan_first_ms.fetch_min(at, Ordering::Relaxed);
                    }
                } else if text.contains("\"type\":\"ack\"") {
                    if text.contains("\"status\":\"accepted\"") {
                        if let Some((id, sent)) = pending.as_ref() && text.contains(id.as_str()) {
                            figures.accepted.record(sent.elapsed());
                        }
                    } else {
                        figures.terminal.fetch_add(1, Ordering::Relaxed);
                    }
                } else if text.contains("\"type\":\"error\"") {
                    figures.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// `ws-clients`: N phones; driven by lines on stdin, answering on stdout.
pub async fn clients(
    addrs: Vec<std::net::SocketAddr>,
    gates: std::path::PathBuf,
) -> anyhow::Result<()> {
    let token = std::env::var("GATEHOUSE_BENCH_TOKEN").context("GATEHOUSE_BENCH_TOKEN")?;
    let gates: Vec<String> = std::fs::read_to_string(&gates)?
        .lines()
        .map(str::to_string)
        .collect();
    let fan = gates.first().context("no gates")?.clone();
    if gates.len() < 2 || addrs.is_empty() {
        bail!("the phones need the fan gate, one gate at least of their own, and an address");
    }
    let figures = Arc::new(Figures {
        fan_by_node: addrs.iter().map(|_| Histogram::default()).collect(),
        ..Figures::default()
    });
    let mut senders: Vec<mpsc::UnboundedSender<Out>> = Vec::new();
    let (tx, mut lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let say = |s: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    };
    while let Some(line) = lines.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["connect", n] => {
                let n: usize = n.parse()?;
                let mut tasks = futures::stream::iter(1..=n)
                    .map(|i| {
                        let token = token.clone();
                        // More sessions than gates of their own: they share them in turn.
                        let own = gates[1 + (i - 1) % (gates.len() - 1)].clone();
                        let fan = fan.clone();
                        let node = (i - 1) % addrs.len();
                        let addr = addrs[node];
                        async move {
                            let (mut c, _) = WsClient::authed(addr, &token).await?;
                            c.send(json!({"type": "subscribe", "gates": [own, fan]}))
                                .await?;
                            let (_, _) = c
                                .until(Duration::from_secs(60), |f| f["type"] == "snapshot")
                                .await?;
                            anyhow::Ok((c, node))
                        }
                    })
                    .buffer_unordered(200);
                while let Some(c) = tasks.next().await {
                    let (c, node) = c?;
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(connection(c, node, fan.clone(), rx, figures.clone()));
                    senders.push(tx);
                }
                say(format!("ready {}", senders.len()));
            }
            ["commands", rate, seconds] => {
                let rate: u64 = rate.parse()?;
                let total = rate * seconds.parse::<u64>()?;
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for k in 0..total as usize {
                    tick.tick().await;
                    let i = k % senders.len();
                    // Each session commands its own gate; later rounds alternate.
                    let action = if (k / senders.len()).is_multiple_of(2) {
                        "open"
                    } else {
                        "close"
                    };
                    let frame = json!({"type": "command", "id": uuid::Uuid::new_v4(),
                                       "gate": gates[1 + i % (gates.len() - 1)], "action": action})
                    .to_string();
                    let _ = senders[i].send(Out::Command(frame));
                }
                // Let the last accepts arrive.
                let deadline = Instant::now() + Duration::from_secs(10);
                while figures.accepted.count() + figures.refused.load(Ordering::Relaxed) < total
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let report = CommandFigures {
                    sent: total,
                    accepted: figures.accepted.count(),
                    terminal: figures.terminal.load(Ordering::Relaxed),
                    refused: figures.refused.load(Ordering::Relaxed),
                    accepted_latency: Latency::of(&figures.accepted),
                };
                say(serde_json::to_string(&report)?);
            }
            ["fan-start"] => {
                figures.fan.reset();
                for h in &figures.fan_by_node {
                    h.reset();
                }
                figures.fan_last_us.store(0, Ordering::Relaxed);
                figures.fan_first_ms.store(u64::MAX, Ordering::Relaxed);
                if let Ok(mut slowest) = figures.fan_slowest.lock() {
                    slowest.clear();
                }
                say("ok".into());
            }
            ["fan-report", expected] => {
                let expected: u64 = expected.parse()?;
                let deadline = Instant::now() + Duration::from_secs(30);
                while figures.fan.count() < expected && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let first_us = figures
                    .fan_first_ms
                    .load(Ordering::Relaxed)
                    .saturating_mul(1000);
                let last_us = figures.fan_last_us.load(Ordering::Relaxed);
                let report = FanFigures {
                    expected,
                    delivered: figures.fan.count(),
                    latency: Latency::of(&figures.fan),
                    span_ms: last_us.saturating_sub(first_us) as f64 / 1000.0,
                    slowest_per_event_ms: figures
                        .fan_slowest
                        .lock()
                        .map(|m| m.values().map(|us| *us as f64 / 1000.0).collect())
                        .unwrap_or_default(),
                    by_node: figures.fan_by_node.iter().map(Latency::of).collect(),
                };
                say(serde_json::to_string(&report)?);
            }
            ["quit"] => break,
            other => bail!("unknown instruction {other:?}"),
        }
    }
    senders.clear();
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}
