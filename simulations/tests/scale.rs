//! The scale target: 100 controllers × 100 units in one process. The smoke test starts the
//! full farm and reads one gate per controller; the load test (ignored by default, run with
//! `cargo test -p gatehouse-sim --test scale -- --ignored --nocapture`) drives one client per
//! controller flat out for a few seconds and checks at least 10,000 reads/s are answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gatehouse_actors::gate::HwState;
use gatehouse_sim::{ControllerSpec, Farm, FarmSpec};
use tokio_modbus::client::tcp;
use tokio_modbus::prelude::*;

const CONTROLLERS: usize = 100;
const UNITS: u8 = 100;
const TARGET_READS_PER_SECOND: f64 = 10_000.0;
const LOAD_DURATION: Duration = Duration::from_secs(3);

async fn big_farm() -> Farm {
    let controllers = (0..CONTROLLERS)
        .map(|i| ControllerSpec::new(format!("c-{i}"), "came-zlb30", 1..=UNITS))
        .collect();
    Farm::start(FarmSpec::new(controllers).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_gates_start_and_answer() {
    let farm = big_farm().await;
    assert_eq!(farm.controllers().len(), CONTROLLERS);
    let mut reads = Vec::new();
    for (i, c) in farm.controllers().iter().enumerate() {
        let addr = c.local_addr();
        let profile = Arc::clone(c.profile());
        let unit = (i % usize::from(UNITS)) as u8 + 1;
        reads.push(tokio::spawn(async move {
            let mut ctx = tcp::connect_slave(addr, Slave(unit)).await.unwrap();
            let block = ctx
                .read_holding_registers(profile.block_start, profile.block_len)
                .await
                .unwrap()
                .unwrap();
            profile.decode(&block).unwrap().state
        }));
    }
    for r in reads {
        assert_eq!(r.await.unwrap(), HwState::Closed);
    }
    farm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test: run by hand with --ignored"]
async fn ten_thousand_reads_per_second() {
    let farm = big_farm().await;
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + LOAD_DURATION;
    let mut clients = Vec::new();
    for c in farm.controllers() {
        let (addr, profile, count) = (c.local_addr(), Arc::clone(c.profile()), Arc::clone(&count));
        clients.push(tokio::spawn(async move {
            let mut ctx = tcp::connect_slave(addr, Slave(1)).await.unwrap();
            let mut unit = 1u8;
            while Instant::now() < deadline {
                ctx.set_slave(Slave(unit));
                ctx.read_holding_registers(profile.block_start, profile.block_len)
                    .await
                    .unwrap()
                    .unwrap();
                count.fetch_add(1, Ordering::Relaxed);
                unit = unit % UNITS + 1;
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let rate = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("{rate:.0} reads/s over {CONTROLLERS} controllers × {UNITS} units");
    assert!(rate >= TARGET_READS_PER_SECOND, "{rate:.0} reads/s");
    farm.shutdown().await;
}
