//! `gatehouse-bench`: the runtime's figures against the simulator, one command, text and JSON.
//!
//! ```text
//! cargo run --release -p gatehouse-tests --bin gatehouse-bench -- all           # full size
//! cargo run --release -p gatehouse-tests --bin gatehouse-bench -- all --smoke   # CI size
//! cargo run --release -p gatehouse-tests --bin gatehouse-bench -- store         # the store
//! cargo run --release -p gatehouse-tests --bin gatehouse-bench -- ws            # WebSocket sessions
//! cargo run --release -p gatehouse-tests --bin gatehouse-bench -- cluster       # three nodes
//! ```
//!
//! The simulator runs in a child process (this binary, `sim` subcommand) so that the
//! runtime's CPU and memory are measured alone. Phases, on one fleet:
//! 1. **poll**: N gates on M controllers polled at 1 Hz: runtime CPU, RSS per gate, poll
//!    jitter (how late each poll started against its schedule).
//! 2. **command**: commands to distinct gates at a fixed rate; latency from the message to the
//!    gate actor to `accepted` (the simulator confirmed the write).
//! 3. **recovery**: for each outage length (1, 2, 5, 10 and 30 s by default), a group of
//!    controllers restarts together and stays down that long; per controller, the time from
//!    its listening again until every one of its gates is online.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use gatehouse_actors::gate::{Action, CommandStatus, EventKind, GateState};
use gatehouse_actors::ids::{CommandId, GateId};
use gatehouse_actors::stats::Histogram;
use gatehouse_actors::tree::gate::AckSink;
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_runtime::Runtime;
use gatehouse_runtime::fleet_file::FleetFile;
use serde::Serialize;

mod cluster;
mod pymodbus;
mod soak;
mod store;
mod ws;

#[derive(Parser)]
#[command(about = "Gatehouse benchmarks against the simulator")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every phase on one fleet.
    All(Sizes),
    /// The store: event log throughput and boot from the store, on SQLite and PostgreSQL.
    Store(store::StoreSizes),
    /// WebSocket sessions: RSS per session, command round trip, fan-out.
    Ws(ws::WsSizes),
    /// Against the pymodbus peer: command → accepted, → first motion, → completed.
    Pymodbus(pymodbus::PymodbusSizes),
    /// Three nodes on PostgreSQL and Redis: the extra hop of a command to another node's
    /// gate, and failover after a node is killed.
    Cluster(cluster::ClusterSizes),
    /// `gatehouse demo` under its chaos scenario for a while; then every gate gap-free and
    /// every command finished once.
    Soak(soak::SoakSizes),
    /// Internal: the phones of the `ws` benchmark.
    WsClients {
        /// Where the sessions connect, round robin (several: the nodes of a cluster).
        #[arg(long, required = true)]
        addr: Vec<SocketAddr>,
        #[arg(long)]
        gates: std::path::PathBuf,
    },
    /// Internal: run a simulator farm for the parent process.
    Sim {
        #[arg(long)]
        controllers: usize,
        #[arg(long)]
        units: u8,
        #[arg(long)]
        travel_ms: u64,
    },
}

#[derive(clap::Args, Clone)]
struct Sizes {
    /// CI size: small and quick; the figures only show that the benchmark works.
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value_t = 100)]
    controllers: usize,
    #[arg(long, default_value_t = 100)]
    units: u8,
    /// Seconds of steady polling to measure.
    #[arg(long, default_value_t = 20)]
    poll_seconds: u64,
    /// Commands per second in the command phase.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    command_seconds: u64,
    /// Controllers restarted together for each outage length in the recovery phase.
    #[arg(long, default_value_t = 10)]
    restarts: usize,
    /// The outage lengths of the recovery phase (each: that many controllers restart
    /// together and stay down this long).
    #[arg(long, value_delimiter = ',', default_values_t = [1000u64, 2000, 5000, 10000, 30000])]
    down_ms: Vec<u64>,
}

impl Sizes {
    fn effective(&self) -> Sizes {
        if !self.smoke {
            return self.clone();
        }
        Sizes {
            smoke: true,
            controllers: 4,
            units: 10,
            poll_seconds: 3,
            rate: 50,
            command_seconds: 2,
            restarts: 2,
            down_ms: vec![500],
        }
    }
}

#[derive(Serialize)]
struct Report {
    smoke: bool,
    gates: usize,
    controllers: usize,
    poll: PollFigures,
    command: CommandFigures,
    recovery: Vec<RecoveryFigures>,
    scrape: Option<ScrapeFigures>,
}

/// One `/metrics` render with every gate and link of the run instrumented.
#[derive(Serialize)]
struct ScrapeFigures {
    renders: usize,
    bytes: usize,
    series: usize,
    p50_ms: f64,
    max_ms: f64,
}

#[derive(Serialize)]
struct PollFigures {
    seconds: f64,
    polls_per_second: f64,
    /// Reads per poll message (the links' mean burst).
    reads_per_round: f64,
    jitter_p50_ms: f64,
    jitter_p99_ms: f64,
    jitter_max_ms: f64,
    cpu_percent: f64,
    /// The same polling in alternating windows with metrics off and on.
    cpu_percent_metrics_off: f64,
    cpu_percent_metrics_on: f64,
    rss_per_gate_kib: f64,
    rss_total_mib: f64,
    boot_to_all_online_ms: f64,
}

#[derive(Serialize)]
struct CommandFigures {
    sent: u64,
    accepted: u64,
    completed: u64,
    other_terminal: u64,
    rate_per_second: f64,
    accepted_p50_ms: f64,
    accepted_p99_ms: f64,
    accepted_max_ms: f64,
    /// From the command to the gate's first `opening` event on the bus (read after write).
    first_motion_p50_ms: f64,
    first_motion_p99_ms: f64,
    first_motion_max_ms: f64,
}

#[derive(Serialize)]
struct RecoveryFigures {
    /// Controllers that restarted together.
    controllers: usize,
    down_ms: u64,
    /// From the controller accepting connections again to its last gate back online.
    recovered_p50_ms: f64,
    recovered_p99_ms: f64,
    recovered_max_ms: f64,
    poll_interval_ms: f64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Resident set size of this process.
fn rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// CPU time (user + system) of this process, all threads.
fn cpu_time() -> Duration {
    // Fields 14 and 15 of /proc/self/stat, in clock ticks (100 per second on Linux).
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// The simulator child process and its control connection.
struct SimProcess {
    child: Child,
    pub controllers: Vec<(String, SocketAddr)>,
    control: std::net::TcpStream,
}

impl SimProcess {
    fn spawn(controllers: usize, units: u8, travel_ms: u64) -> anyhow::Result<SimProcess> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args([
                "sim",
                "--controllers",
                &controllers.to_string(),
                "--units",
                &units.to_string(),
                "--travel-ms",
                &travel_ms.to_string(),
            ])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .context("starting the simulator process")?;
        let stdout = child.stdout.take().context("simulator stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut found = Vec::new();
        let control = loop {
            let line = lines
                .next()
                .context("simulator exited before it was ready")??;
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("control"), Some(addr)) => break addr.parse::<SocketAddr>()?,
                (Some(name), Some(addr)) => found.push((name.to_string(), addr.parse()?)),
                _ => bail!("unexpected simulator line {line:?}"),
            }
        };
        let control = std::net::TcpStream::connect(control)?;
        control.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(SimProcess {
            child,
            controllers: found,
            control,
        })
    }

    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.control, "{line}")?;
        let mut reader = BufReader::new(self.control.try_clone()?);
        let mut answer = String::new();
        reader.read_line(&mut answer)?;
        if answer.trim() != "ok" {
            bail!("simulator answered {answer:?} to {line:?}");
        }
        Ok(())
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child: a farm on ephemeral loopback ports, one line per controller, then the control
/// address; runs until killed.
async fn run_sim(controllers: usize, units: u8, travel_ms: u64) -> anyhow::Result<()> {
    let spec = gatehouse_sim::FarmSpec::quick(
        "c",
        controllers,
        units,
        "generic",
        0,
        Duration::from_millis(travel_ms),
        ProfileSet::builtin()?,
    )?;
    let farm = gatehouse_sim::Farm::start(spec).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let control = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        for c in farm.controllers() {
            writeln!(out, "{} {}", c.name(), c.local_addr())?;
        }
        writeln!(out, "control {control}")?;
        out.flush()?;
    }
    gatehouse_sim::control::serve(listener, farm.controllers().to_vec()).await;
    Ok(())
}

fn fleet_toml(controllers: &[(String, SocketAddr)], units: u8) -> String {
    let mut s = String::from("[[site]]\nid = \"bench\"\nname = \"Bench\"\n");
    for (name, addr) in controllers {
        s.push_str(&format!(
            "\n[[controller]]\nid = \"{name}\"\nsite = \"bench\"\nprofile = \"generic\"\nendpoint = \"{addr}\"\n"
        ));
        for unit in 1..=units {
            s.push_str(&format!(
                "[[gate]]\nid = \"{name}-g{unit}\"\ncontroller = \"{name}\"\nunit = {unit}\ntravel_timeout_s = 60\n"
            ));
        }
    }
    s
}

/// Gates that came back from offline, by controller, with when.
type Online = Arc<Mutex<Vec<(String, Instant)>>>;

async fn all(sizes: Sizes) -> anyhow::Result<Report> {
    let s = sizes.effective();
    let gates = s.controllers * usize::from(s.units);
    eprintln!(
        "starting the simulator: {} controllers x {} units",
        s.controllers, s.units
    );
    // Travel long enough that commanded gates are still moving while polled fast, short
    // enough that they finish within the phase.
    let mut sim = SimProcess::spawn(s.controllers, s.units, 2_000)?;
    let profiles = ProfileSet::builtin()?;
    let fleet = FleetFile::parse("bench", &fleet_toml(&sim.controllers, s.units), &profiles)?;
    let poll_interval = profiles
        .get("generic")
        .context("generic profile")?
        .poll_interval;

    // As in production: the exporter installed, every instrument recording.
    let metrics = gatehouse_runtime::metrics::install(&Default::default())?;
    let rss_before = rss_kib();
    let booted = Instant::now();
    let bus = gatehouse_actors::tree::bus::LocalBus::default();
    let mut events = bus.subscribe();
    let runtime = Runtime::start_on(bus, fleet.controller_specs(&profiles)).await?;
    let online: Online = Arc::default();
    let sink = online.clone();
    // Commands waiting for their gate's first motion event, and how long that took.
    let awaiting_motion: Arc<Mutex<HashMap<GateId, Instant>>> = Arc::default();
    let motion = Arc::new(Histogram::default());
    let (awaiting, moved) = (awaiting_motion.clone(), motion.clone());
    let collector = tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            match ev.kind {
                EventKind::StateChanged {
                    from: GateState::Offline,
                } => {
                    if let Ok(mut v) = sink.lock() {
                        v.push((ev.controller.to_string(), Instant::now()));
                    }
                }
                EventKind::StateChanged { .. } if ev.snapshot.state == GateState::Opening => {
                    let sent = awaiting.lock().ok().and_then(|mut a| a.remove(&ev.gate));
                    if let Some(sent) = sent {
                        moved.record(sent.elapsed());
                    }
                }
                _ => {}
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while online.lock().map(|v| v.len()).unwrap_or(0) < gates {
        if Instant::now() > deadline {
            bail!("not every gate came online within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let boot = booted.elapsed();
    eprintln!("{gates} gates online after {:.0} ms", ms(boot));

    // ---- poll phase ----
    tokio::time::sleep(Duration::from_secs(2)).await; // let the first spread settle
    let stats = runtime.fleet.context().link_stats();
    for (_, st) in &stats {
        st.poll_jitter.reset();
    }
    let polls_before: u64 = stats
        .iter()
        .map(|(_, st)| st.polls.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    let rounds = || -> u64 {
        stats
            .iter()
            .map(|(_, st)| st.poll_rounds.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    let rounds_before = rounds();
    let (cpu0, t0) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(s.poll_seconds)).await;
    let (cpu1, t1) = (cpu_time(), Instant::now());
    let rss_after = rss_kib();
    let polls_after: u64 = stats
        .iter()
        .map(|(_, st)| st.polls.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    let rounds_after = rounds();
    // The same polling with metrics off and on, in alternating windows, for what
    // instrumentation costs at rest (the CPU figure above is with metrics on, as deployed).
    let mut cpu_by_metrics = [Duration::ZERO; 2];
    let mut wall_by_metrics = [Duration::ZERO; 2];
    if metrics.is_some() {
        let window = Duration::from_secs(s.poll_seconds).max(Duration::from_secs(4)) / 4;
        for on in [false, true, false, true] {
            gatehouse_actors::telemetry::set_active(on);
            let (c0, w0) = (cpu_time(), Instant::now());
            tokio::time::sleep(window).await;
            cpu_by_metrics[usize::from(on)] += cpu_time() - c0;
            wall_by_metrics[usize::from(on)] += w0.elapsed();
        }
        gatehouse_actors::telemetry::set_active(true);
    }
    let share = |i: usize| {
        if wall_by_metrics[i].is_zero() {
            0.0
        } else {
            cpu_by_metrics[i].as_secs_f64() / wall_by_metrics[i].as_secs_f64() * 100.0
        }
    };
    let (cpu_off, cpu_on) = (share(0), share(1));
    let jitter = Histogram::default();
    for (_, st) in &stats {
        jitter.merge_from(&st.poll_jitter);
    }
    let (p50, p99, max) = (jitter.quantile(0.5), jitter.quantile(0.99), jitter.max());
    let wall = (t1 - t0).as_secs_f64();
    let poll = PollFigures {
        seconds: wall,
        polls_per_second: (polls_after - polls_before) as f64 / wall,
        reads_per_round: (polls_after - polls_before) as f64
            / (rounds_after - rounds_before).max(1) as f64,
        jitter_p50_ms: ms(p50),
        jitter_p99_ms: ms(p99),
        jitter_max_ms: ms(max),
        cpu_percent: (cpu1 - cpu0).as_secs_f64() / wall * 100.0,
        cpu_percent_metrics_off: cpu_off,
        cpu_percent_metrics_on: cpu_on,
        rss_per_gate_kib: (rss_after - rss_before) / gates as f64,
        rss_total_mib: rss_after / 1024.0,
        boot_to_all_online_ms: ms(boot),
    };

    // ---- command phase: distinct gates, fixed rate ----
    let latency = Arc::new(Histogram::default());
    let counts = Arc::new(Mutex::new(HashMap::<&'static str, u64>::new()));
    let gate_ids: Vec<GateId> = fleet.gates.iter().map(|g| g.id.clone()).collect();
    let total = (s.rate * s.command_seconds).min(gate_ids.len() as u64);
    let period = Duration::from_secs_f64(1.0 / s.rate as f64);
    let started = Instant::now();
    for (i, gate) in gate_ids.iter().take(total as usize).enumerate() {
        let due = started + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (lat, cnt) = (latency.clone(), counts.clone());
        let sent = Instant::now();
        if let Ok(mut a) = awaiting_motion.lock() {
            a.insert(gate.clone(), sent);
        }
        let sink: AckSink = Arc::new(move |_: &GateId, ack| {
            let key = match ack.status {
                CommandStatus::Accepted => {
                    lat.record(sent.elapsed());
                    "accepted"
                }
                CommandStatus::Completed => "completed",
                _ => "other",
            };
            if let Ok(mut c) = cnt.lock() {
                *c.entry(key).or_default() += 1;
            }
        });
        runtime
            .fleet
            .command(gate, CommandId::random(), Action::Open, Some(sink))?;
    }
    let send_time = started.elapsed().as_secs_f64();
    // Every gate travels 2 s; give them time to complete.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = counts
            .lock()
            .map(|c| {
                c.get("completed").copied().unwrap_or(0) + c.get("other").copied().unwrap_or(0)
            })
            .unwrap_or(0);
        if done >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = counts.lock().map(|c| c.clone()).unwrap_or_default();
    let command = CommandFigures {
        sent: total,
        accepted: c.get("accepted").copied().unwrap_or(0),
        completed: c.get("completed").copied().unwrap_or(0),
        other_terminal: c.get("other").copied().unwrap_or(0),
        rate_per_second: total as f64 / send_time.max(1e-9),
        accepted_p50_ms: ms(latency.quantile(0.5)),
        accepted_p99_ms: ms(latency.quantile(0.99)),
        accepted_max_ms: ms(latency.max()),
        first_motion_p50_ms: ms(motion.quantile(0.5)),
        first_motion_p99_ms: ms(motion.quantile(0.99)),
        first_motion_max_ms: ms(motion.max()),
    };

    // ---- recovery phase: controllers restart together, for each outage length ----
    let names: Vec<String> = sim.controllers.iter().map(|(n, _)| n.clone()).collect();
    let mut recovery = Vec::new();
    for (round, &down_ms) in s.down_ms.iter().enumerate() {
        let recovered = Histogram::default();
        let group: Vec<&String> = (0..s.restarts.min(names.len()))
            .map(|k| &names[(round * s.restarts + k) % names.len()])
            .collect();
        if let Ok(mut v) = online.lock() {
            v.clear();
        }
        // Each controller's own return: when its restart was sent, plus the outage.
        let mut backs = Vec::with_capacity(group.len());
        for name in &group {
            sim.send(&format!("restart {name} {down_ms}"))?;
            backs.push(Instant::now() + Duration::from_millis(down_ms));
        }
        let deadline = Instant::now() + Duration::from_millis(down_ms) + Duration::from_secs(60);
        for (name, &back) in group.iter().zip(&backs) {
            loop {
                let n = online
                    .lock()
                    .map(|v| v.iter().filter(|(c, _)| &c == name).count())
                    .unwrap_or(0);
                if n >= usize::from(s.units) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("controller {name} did not recover within 60 s of coming back");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let last = online
                .lock()
                .ok()
                .and_then(|v| v.iter().filter(|(c, _)| &c == name).map(|(_, t)| *t).max())
                .unwrap_or(back);
            recovered.record(last.saturating_duration_since(back));
        }
        recovery.push(RecoveryFigures {
            controllers: group.len(),
            down_ms,
            recovered_p50_ms: ms(recovered.quantile(0.5)),
            recovered_p99_ms: ms(recovered.quantile(0.99)),
            recovered_max_ms: ms(recovered.max()),
            poll_interval_ms: ms(poll_interval),
        });
        // Let the links' supervisor backoff reset before the next round.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // ---- what a scrape of all this costs ----
    let scrape = match &metrics {
        Some(metrics) => {
            let export = metrics.export(&runtime.fleet);
            let took = Histogram::default();
            let mut text = String::new();
            const RENDERS: usize = 20;
            for _ in 0..RENDERS {
                let t = Instant::now();
                text = (export.render)();
                took.record(t.elapsed());
            }
            Some(ScrapeFigures {
                renders: RENDERS,
                bytes: text.len(),
                series: text
                    .lines()
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .count(),
                p50_ms: ms(took.quantile(0.5)),
                max_ms: ms(took.max()),
            })
        }
        None => None,
    };

    collector.abort();
    runtime.shutdown(Duration::from_secs(10)).await;
    Ok(Report {
        smoke: s.smoke,
        gates,
        controllers: s.controllers,
        poll,
        command,
        recovery,
        scrape,
    })
}

fn print_text(r: &Report) {
    let p = &r.poll;
    let c = &r.command;
    println!(
        "gatehouse-bench{}: {} gates on {} controllers",
        if r.smoke { " (smoke)" } else { "" },
        r.gates,
        r.controllers
    );
    println!(
        "  poll      {:.0} polls/s over {:.1} s ({:.1} reads a wake); jitter p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        p.polls_per_second,
        p.seconds,
        p.reads_per_round,
        p.jitter_p50_ms,
        p.jitter_p99_ms,
        p.jitter_max_ms
    );
    println!(
        "            runtime CPU {:.1} %; RSS {:.1} MiB, {:.2} KiB per gate; all online {:.0} ms after boot",
        p.cpu_percent, p.rss_total_mib, p.rss_per_gate_kib, p.boot_to_all_online_ms
    );
    println!(
        "            runtime CPU in alternating windows: metrics off {:.1} %, on {:.1} % (×{:.3})",
        p.cpu_percent_metrics_off,
        p.cpu_percent_metrics_on,
        if p.cpu_percent_metrics_off > 0.0 {
            p.cpu_percent_metrics_on / p.cpu_percent_metrics_off
        } else {
            0.0
        }
    );
    println!(
        "  command   {} sent at {:.0}/s; accepted {} (p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms); completed {}, other {}",
        c.sent,
        c.rate_per_second,
        c.accepted,
        c.accepted_p50_ms,
        c.accepted_p99_ms,
        c.accepted_max_ms,
        c.completed,
        c.other_terminal
    );
    println!(
        "            first motion reported (opening event) p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        c.first_motion_p50_ms, c.first_motion_p99_ms, c.first_motion_max_ms
    );
    for v in &r.recovery {
        println!(
            "  recovery  {} controllers down {} ms together: all their gates back p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms after they listen again (poll {:.0} ms)",
            v.controllers,
            v.down_ms,
            v.recovered_p50_ms,
            v.recovered_p99_ms,
            v.recovered_max_ms,
            v.poll_interval_ms
        );
    }
    if let Some(x) = &r.scrape {
        println!(
            "  /metrics  {} series, {} bytes; render p50 {:.2} ms, max {:.2} ms over {} renders",
            x.series, x.bytes, x.p50_ms, x.max_ms, x.renders
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Sim {
            controllers,
            units,
            travel_ms,
        } => run_sim(controllers, units, travel_ms).await,
        Cmd::Cluster(sizes) => {
            let report = cluster::run(sizes).await?;
            cluster::print_text(&report);
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Cmd::Soak(sizes) => {
            let report = soak::run(sizes).await?;
            soak::print_text(&report);
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Cmd::Pymodbus(sizes) => {
            let report = pymodbus::run(sizes).await?;
            pymodbus::print_text(&report);
            println!("{}", serde_json::to_string(&report)?);
            if report.completed < report.commands {
                bail!("not every command completed");
            }
            Ok(())
        }
        Cmd::Ws(sizes) => {
            let report = ws::run(sizes).await?;
            ws::print_text(&report);
            println!("{}", serde_json::to_string(&report)?);
            if report.command.accepted < report.command.sent
                || report.fanout.delivered < report.fanout.expected
                || report.burst.delivered < report.burst.expected
            {
                bail!("not every command was accepted or not every event delivered");
            }
            Ok(())
        }
        Cmd::WsClients { addr, gates } => ws::clients(addr, gates).await,
        Cmd::Store(sizes) => {
            let report = store::run(sizes).await?;
            store::print_text(&report);
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Cmd::All(sizes) => {
            let report = all(sizes).await?;
            print_text(&report);
            println!("{}", serde_json::to_string(&report)?);
            if report.command.accepted < report.command.sent {
                bail!(
                    "only {} of {} commands were accepted",
                    report.command.accepted,
                    report.command.sent
                );
            }
            Ok(())
        }
    }
}
