//! A real peer: Debian's `mbpoll` (a C Modbus master built on libmodbus) reads and writes the
//! simulated controllers. If the simulator only agreed with tokio-modbus's client, a framing
//! mistake shared by both ends would go unnoticed; mbpoll is an independent implementation.
//!
//! mbpoll addresses are 1-based unless given `-0`; every invocation here passes `-0` so the
//! numbers match the profiles' protocol addresses. A missing mbpoll fails the test: CI
//! installs it, and a skipped peer test would prove nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use gatehouse_actors::gate::{HwOp, HwState};
use gatehouse_sim::{ControllerSpec, Farm, FarmSpec, WriteKind};

/// Long enough that a gate is still opening when the test looks again.
const SLOW_TRAVEL: Duration = Duration::from_secs(60);

fn mbpoll_path() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("mbpoll"))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => p,
        None => panic!(
            "mbpoll is not installed; this peer test needs it: apt-get install mbpoll \
             (a missing peer is a failure, not a skip)"
        ),
    }
}

/// Runs mbpoll against `port` with `args`, off the async threads, and returns its stdout.
/// Values to write come last, after the host: mbpoll reads the first bare word as the host.
async fn mbpoll(port: u16, args: &[&str], write: &[&str]) -> String {
    let mut full: Vec<String> = vec!["-m".into(), "tcp".into(), "-0".into(), "-1".into()];
    full.extend(args.iter().map(|s| s.to_string()));
    full.extend(["-p".into(), port.to_string(), "127.0.0.1".into()]);
    full.extend(write.iter().map(|s| s.to_string()));
    let shown = full.join(" ");
    let out = tokio::task::spawn_blocking(move || Command::new(mbpoll_path()).args(&full).output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mbpoll {shown} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `[address]: value` lines of a poll.
fn values(stdout: &str) -> BTreeMap<u16, i64> {
    stdout
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix('[')?;
            let (addr, value) = rest.split_once("]:")?;
            Some((addr.trim().parse().ok()?, value.trim().parse().ok()?))
        })
        .collect()
}

async fn farm(profile: &str) -> Farm {
    let spec = FarmSpec::new(vec![
        ControllerSpec::new("peer", profile, [1, 2]).with_travel(SLOW_TRAVEL),
    ])
    .unwrap();
    Farm::start(spec).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbpoll_reads_and_writes_a_came_controller() {
    let farm = farm("came-zlb30").await;
    let c = farm.controller("peer").unwrap();
    let port = c.local_addr().port();

    let read = ["-a", "1", "-t", "4", "-r", "100", "-c", "6"];
    let v = values(&mbpoll(port, &read, &[]).await);
    assert_eq!(v.len(), 6, "expected registers 100..=105, got {v:?}");
    assert_eq!(v[&100], 17, "CAME status 17 = closed");
    assert_eq!(v[&101], 0, "position 0 %");

    let out = mbpoll(port, &["-a", "1", "-t", "4", "-r", "200"], &["1"]).await;
    assert!(out.contains("Written 1 references"), "{out}");
    assert_eq!(c.gate(1).unwrap().observation.state, HwState::Opening);
    assert_eq!(c.gate(2).unwrap().observation.state, HwState::Closed);
    let w = c.writes();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(
        (
            w[0].unit,
            w[0].kind,
            w[0].address,
            w[0].value,
            w[0].op,
            w[0].accepted
        ),
        (1, WriteKind::Register, 200, 1, Some(HwOp::Open), true)
    );

    let v = values(&mbpoll(port, &read, &[]).await);
    assert_eq!(v[&100], 32, "CAME status 32 = opening");
    assert_eq!(v[&104], 1, "one cycle counted (low word)");
    farm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbpoll_pulses_a_generic_coil() {
    let farm = farm("generic").await;
    let c = farm.controller("peer").unwrap();
    let port = c.local_addr().port();

    let v = values(&mbpoll(port, &["-a", "2", "-t", "4", "-r", "0", "-c", "6"], &[]).await);
    assert_eq!(
        (v[&0], v[&1]),
        (0, 0),
        "generic status 0 = closed, position 0: {v:?}"
    );

    // Coil 0 on: the rising edge opens unit 2, and the coil stays on until released.
    let out = mbpoll(port, &["-a", "2", "-t", "0", "-r", "0"], &["1"]).await;
    assert!(out.contains("Written 1 references"), "{out}");
    assert_eq!(c.gate(2).unwrap().observation.state, HwState::Opening);
    assert_eq!(c.gate(1).unwrap().observation.state, HwState::Closed);
    assert_eq!(c.coil(2, 0), Some(true));
    let coils = values(&mbpoll(port, &["-a", "2", "-t", "0", "-r", "0", "-c", "5"], &[]).await);
    assert_eq!(coils.values().copied().collect::<Vec<_>>(), [1, 0, 0, 0, 0]);
    let v = values(&mbpoll(port, &["-a", "2", "-t", "4", "-r", "0", "-c", "1"], &[]).await);
    assert_eq!(v[&0], 2, "generic status 2 = opening");

    mbpoll(port, &["-a", "2", "-t", "0", "-r", "0"], &["0"]).await;
    assert_eq!(c.coil(2, 0), Some(false), "the release is visible");
    let w: Vec<_> = c
        .writes()
        .iter()
        .map(|w| (w.unit, w.kind, w.address, w.value, w.op))
        .collect();
    assert_eq!(
        w,
        [
            (2, WriteKind::Coil, 0, 1, Some(HwOp::Open)),
            (2, WriteKind::Coil, 0, 0, None)
        ]
    );
    farm.shutdown().await;
}
