//! `gatehouse-bench soak`: `gatehouse demo` with its chaos scenario (links dropped, a
//! controller restarted, a gateway stalled and slowed, line noise, an obstruction, a motor
//! fault, on a one-minute loop) and its simulated residents commanding gates faster than
//! usual, for a while (10 minutes by default; 40 s at smoke size in CI). Then, from the demo's
//! own database: every gate's events run 1..=seq with no gap; no command has two terminal
//! outcomes; and the demo stopped cleanly (exit 0: no supervisor gave up). Prints the
//! outcome counts and the rates.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gatehouse_actors::gate::EventKind;
use gatehouse_actors::store::EventStore;
use gatehouse_adapters::store::Store;
use serde::Serialize;

#[derive(clap::Args, Clone)]
pub struct SoakSizes {
    /// CI size: 40 s.
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Resident commands per second.
    #[arg(long, default_value_t = 4.0)]
    rate: f64,
}

#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub seconds: u64,
    pub gates: usize,
    pub events: u64,
    pub commands_finished: u64,
    /// Terminal outcomes by status (`completed`, `failed:offline`, …).
    pub outcomes: BTreeMap<String, u64>,
    pub events_per_second: f64,
    pub peak_rss_mib: f64,
}

fn gatehouse_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .context("the bench's folder")?
        .join("gatehouse");
    if !path.is_file() {
        bail!(
            "{} is missing: build it (cargo build --bins)",
            path.display()
        );
    }
    Ok(path)
}

pub async fn run(sizes: SoakSizes) -> anyhow::Result<SoakReport> {
    let seconds = if sizes.smoke { 40 } else { sizes.seconds };
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("c.toml"),
        "[http]\nlisten = \"127.0.0.1:0\"\n",
    )?;
    eprintln!(
        "gatehouse demo with chaos for {seconds} s at {} commands/s",
        sizes.rate
    );
    let started = Instant::now();
    let mut demo = Command::new(gatehouse_bin()?)
        .args(["demo", "--config", "c.toml", "--for", &seconds.to_string()])
        .args(["--rate", &sizes.rate.to_string()])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting gatehouse demo")?;
    let pid = demo.id();
    let stdout = demo.stdout.take().context("stdout")?;
    let stderr = demo.stderr.take().context("stderr")?;
    let errors = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("ERROR") || l.contains("escalat"))
            .take(50)
            .collect::<Vec<_>>()
    });
    let lines = std::thread::spawn(move || BufReader::new(stdout).lines().count());
    // Peak RSS, sampled while it runs.
    let mut peak_kib = 0.0f64;
    let status = loop {
        if let Some(status) = demo.try_wait()? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(seconds + 120) {
            let _ = demo.kill();
            bail!("the demo did not stop within its time and two minutes");
        }
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        {
            peak_kib = peak_kib.max(kib);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let printed = lines.join().unwrap_or(0);
    let errors = errors.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "the demo ended with {status}; errors:\n{}",
            errors.join("\n")
        );
    }

    let db = dir.path().join("data/gatehouse.db");
    let store = Store::connect(&format!("sqlite://{}", db.display())).await?;
    let mut by_gate: HashMap<String, Vec<u64>> = HashMap::new();
    let mut finished: HashMap<uuid::Uuid, u32> = HashMap::new();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let (mut after, mut events) = (0i64, 0u64);
    loop {
        let page = store.after(after, 5_000).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for e in page {
            events += 1;
            by_gate
                .entry(e.event.gate.to_string())
                .or_default()
                .push(e.event.seq);
            if let EventKind::CommandFinished {
                command, status, ..
            } = e.event.kind
            {
                *finished.entry(command.0).or_default() += 1;
                let (status, reason) = status.wire();
                let key = match reason {
                    Some(r) => format!("{status}:{r}"),
                    None => status.to_string(),
                };
                *outcomes.entry(key).or_default() += 1;
            }
        }
    }
    for (gate, seqs) in &mut by_gate {
        seqs.sort_unstable();
        if *seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
            bail!("{gate}: its stored events have a gap or a duplicate");
        }
    }
    if let Some((id, n)) = finished.iter().find(|(_, n)| **n > 1) {
        bail!("command {id} has {n} terminal outcomes");
    }
    if outcomes.is_empty() {
        bail!("no command finished in {seconds} s ({printed} lines printed)");
    }
    Ok(SoakReport {
        seconds,
        gates: by_gate.len(),
        events,
        commands_finished: finished.len() as u64,
        outcomes,
        events_per_second: events as f64 / seconds as f64,
        peak_rss_mib: peak_kib / 1024.0,
    })
}

pub fn print_text(r: &SoakReport) {
    println!(
        "soak: {} s of chaos on {} gates: {} events ({:.1}/s), {} commands finished, each once; \
         every gate gap-free; peak RSS {:.1} MiB",
        r.seconds, r.gates, r.events, r.events_per_second, r.commands_finished, r.peak_rss_mib
    );
    let outcomes: Vec<String> = r.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("  outcomes: {}", outcomes.join(", "));
}
