//! `gatehouse-bench pymodbus`: the runtime against somebody else's Modbus stack, the
//! CAME-style pymodbus peer (`tests/peers/came_pymodbus.py`), as issue 9's comparison with
//! Home Assistant and Node-RED was measured: alternating open and close commands on four
//! gates, each command given once its gate is at rest. Per command: to `accepted` (the peer
//! confirmed the write), to the first motion the runtime reports (its `opening`/`closing`
//! event: the read after the write), and to `completed`. Opens and closes are reported apart:
//! this map has a warning output, which runs for its lead time (3 s) before every remote
//! close is written, on purpose. And per arrival: from the peer's gate reaching its end
//! position (the peer prints the wall-clock time it set the end state) to the runtime
//! reporting the end state on its bus, which is what the WebSocket sessions relay.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gatehouse_actors::gate::{Action, CommandStatus, EventKind, GateState};
use gatehouse_actors::ids::{CommandId, GateId};
use gatehouse_actors::stats::Histogram;
use gatehouse_actors::tree::bus::LocalBus;
use gatehouse_actors::tree::gate::{Ack, AckSink};
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_runtime::Runtime;
use gatehouse_runtime::fleet_file::FleetFile;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::ms;

#[derive(clap::Args, Clone)]
pub struct PymodbusSizes {
    /// CI size: a few commands; the figures only show that the benchmark works.
    #[arg(long)]
    smoke: bool,
    /// Commands in all, spread over the gates.
    #[arg(long, default_value_t = 50)]
    commands: usize,
    #[arg(long, default_value_t = 4)]
    units: u8,
    /// The peer's full travel time.
    #[arg(long, default_value_t = 1000)]
    travel_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct PymodbusReport {
    pub commands: usize,
    pub completed: usize,
    pub accepted_p50_ms: f64,
    pub accepted_p99_ms: f64,
    pub first_motion_open_p50_ms: f64,
    pub first_motion_open_p99_ms: f64,
    /// Includes the warning output's lead time before the close is written.
    pub first_motion_close_p50_ms: f64,
    pub first_motion_close_p99_ms: f64,
    pub completed_p50_ms: f64,
    pub completed_p99_ms: f64,
    /// The peer's gate at its end position → the runtime's end-state event.
    pub end_told_p50_ms: f64,
    pub end_told_p99_ms: f64,
    pub travel_ms: u64,
}

struct Peer {
    child: Child,
    /// `(unit, wall-clock seconds)` of every arrival at an end position.
    arrivals: std::sync::mpsc::Receiver<(u8, f64)>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_peer(port: u16, units: u8, travel_ms: u64) -> anyhow::Result<Peer> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/came_pymodbus.py");
    let list: Vec<String> = (1..=units).map(|u| u.to_string()).collect();
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--port", &port.to_string(), "--units", &list.join(",")])
        .args(["--travel-ms", &travel_ms.to_string()])
        .arg("--report-arrivals")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting python3 with pymodbus (pip install pymodbus==3.16.1; .ci/run does)")?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let (arrived, arrivals) = std::sync::mpsc::channel();
    let peer = Peer { child, arrivals };
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) if line == "READY" => {}
        other => bail!("the pymodbus peer did not start: {other:?}"),
    }
    // Keep draining its output (a WRITE line per write) so that it never blocks, and pass
    // the arrivals on.
    std::thread::spawn(move || {
        while let Ok(line) = rx.recv() {
            if let Some(rest) = line.strip_prefix("ARRIVED unit=")
                && let Some((unit, at)) = rest.split_once(" at=")
                && let (Ok(unit), Ok(at)) = (unit.parse::<u8>(), at.parse::<f64>())
                && arrived.send((unit, at)).is_err()
            {
                return;
            }
        }
    });
    Ok(peer)
}

pub async fn run(sizes: PymodbusSizes) -> anyhow::Result<PymodbusReport> {
    let (commands, units, travel_ms) = if sizes.smoke {
        (8, 2, 400)
    } else {
        (sizes.commands, sizes.units, sizes.travel_ms)
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let peer = start_peer(port, units, travel_ms)?;
    let profiles = ProfileSet::builtin()?;
    let mut toml = format!(
        "[[site]]\nid = \"yard\"\nname = \"Yard\"\n\n[[controller]]\nid = \"came\"\n\
         site = \"yard\"\nprofile = \"came-zlb30\"\nendpoint = \"127.0.0.1:{port}\"\n"
    );
    for unit in 1..=units {
        toml.push_str(&format!(
            "\n[[gate]]\nid = \"g{unit}\"\ncontroller = \"came\"\nunit = {unit}\ntravel_timeout_s = 30\n"
        ));
    }
    let fleet = FleetFile::parse("pymodbus-bench", &toml, &profiles)?;
    let bus = LocalBus::default();
    let mut events = bus.subscribe();
    let runtime = Runtime::start_on(bus, fleet.controller_specs(&profiles)).await?;
    let gates: Vec<GateId> = (1..=units)
        .map(|u| format!("g{u}").parse().unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for gate in &gates {
        while !runtime
            .fleet
            .view(gate)
            .await
            .is_ok_and(|v| v.snapshot.state == GateState::Closed)
        {
            if Instant::now() > deadline {
                bail!("{gate} did not come up closed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let (accepted, completed) = (Histogram::default(), Histogram::default());
    let (motion_open, motion_close) = (Histogram::default(), Histogram::default());
    let end_told = Histogram::default();
    let mut done = 0;
    let per_gate = commands.div_ceil(gates.len());
    // Round by round: one command per gate at once, each from rest.
    for round in 0..per_gate {
        let action = if round % 2 == 0 {
            Action::Open
        } else {
            Action::Close
        };
        let (tx, mut acks) = mpsc::unbounded_channel::<(GateId, Ack, Instant)>();
        let mut sent: Vec<(GateId, CommandId, Instant)> = Vec::new();
        for gate in gates.iter().take(commands - round * gates.len()) {
            let tx = tx.clone();
            let sink: AckSink = Arc::new(move |g: &GateId, ack| {
                let _ = tx.send((g.clone(), ack, Instant::now()));
            });
            let id = CommandId::random();
            let at = Instant::now();
            runtime.fleet.command(gate, id, action, Some(sink))?;
            sent.push((gate.clone(), id, at));
        }
        let mut moved = vec![false; sent.len()];
        // Wall-clock seconds at which the runtime reported each gate at its end position.
        let mut told: Vec<Option<f64>> = vec![None; sent.len()];
        let mut finished = 0;
        let round_deadline =
            Instant::now() + Duration::from_millis(travel_ms) * 3 + Duration::from_secs(10);
        while finished < sent.len() {
            if Instant::now() > round_deadline {
                bail!("round {round} did not finish");
            }
            tokio::select! {
                Some((gate, ack, at)) = acks.recv() => {
                    let Some((_, _, t0)) = sent.iter().find(|(g, id, _)| *g == gate && *id == ack.id) else {
                        continue;
                    };
                    match ack.status {
                        CommandStatus::Accepted => accepted.record(at - *t0),
                        CommandStatus::Completed => {
                            completed.record(at - *t0);
                            finished += 1;
                            done += 1;
                        }
                        other => bail!("{gate}: {other:?}"),
                    }
                }
                Ok(ev) = events.recv() => {
                    if let EventKind::StateChanged { .. } = ev.kind
                        && matches!(ev.snapshot.state, GateState::Open | GateState::Closed)
                        && let Some(i) = sent.iter().position(|(g, _, _)| *g == ev.gate)
                        && told[i].is_none()
                    {
                        told[i] = Some(wall_secs());
                    }
                    if let EventKind::StateChanged { .. } = ev.kind
                        && ev.snapshot.state.is_moving()
                        && let Some(i) = sent.iter().position(|(g, _, _)| *g == ev.gate)
                        && !moved[i]
                    {
                        moved[i] = true;
                        let motion = if action == Action::Open { &motion_open } else { &motion_close };
                        motion.record(sent[i].2.elapsed());
                    }
                }
            }
        }
        // This round's arrivals, one per gate commanded (the peer reports each as it sets
        // the end state; `completed` follows the runtime's reading of it, so all are in).
        for _ in 0..sent.len() {
            let (unit, at) = peer
                .arrivals
                .recv_timeout(Duration::from_secs(5))
                .context("an arrival the peer did not report")?;
            let gate: GateId = format!("g{unit}").parse()?;
            if let Some(i) = sent.iter().position(|(g, _, _)| *g == gate)
                && let Some(t) = told[i]
            {
                end_told.record(Duration::from_secs_f64((t - at).max(0.0)));
            }
        }
    }
    runtime.shutdown(Duration::from_secs(10)).await;
    Ok(PymodbusReport {
        commands,
        completed: done,
        accepted_p50_ms: ms(accepted.quantile(0.5)),
        accepted_p99_ms: ms(accepted.quantile(0.99)),
        first_motion_open_p50_ms: ms(motion_open.quantile(0.5)),
        first_motion_open_p99_ms: ms(motion_open.quantile(0.99)),
        first_motion_close_p50_ms: ms(motion_close.quantile(0.5)),
        first_motion_close_p99_ms: ms(motion_close.quantile(0.99)),
        completed_p50_ms: ms(completed.quantile(0.5)),
        completed_p99_ms: ms(completed.quantile(0.99)),
        end_told_p50_ms: ms(end_told.quantile(0.5)),
        end_told_p99_ms: ms(end_told.quantile(0.99)),
        travel_ms,
    })
}

/// Seconds since the Unix epoch, as the peer's `time.time()` reports them.
fn wall_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub fn print_text(r: &PymodbusReport) {
    println!(
        "pymodbus peer (came-zlb30 map, {} ms travel): {} of {} commands completed",
        r.travel_ms, r.completed, r.commands
    );
    println!(
        "  command → accepted (write confirmed) p50 {:.2} ms, p99 {:.2} ms",
        r.accepted_p50_ms, r.accepted_p99_ms
    );
    println!(
        "  open → first motion reported p50 {:.2} ms, p99 {:.2} ms",
        r.first_motion_open_p50_ms, r.first_motion_open_p99_ms
    );
    println!(
        "  close → first motion reported p50 {:.0} ms, p99 {:.0} ms (after the warning output's 3 s lead)",
        r.first_motion_close_p50_ms, r.first_motion_close_p99_ms
    );
    println!(
        "  command → completed p50 {:.0} ms, p99 {:.0} ms",
        r.completed_p50_ms, r.completed_p99_ms
    );
    println!(
        "  gate at its end position → runtime reports it p50 {:.2} ms, p99 {:.2} ms",
        r.end_told_p50_ms, r.end_told_p99_ms
    );
}
