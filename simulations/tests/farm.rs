//! A two-controller farm on ephemeral ports, driven by tokio-modbus's own client: reads decode
//! through the profile, commands move gates, and each injected fault shows up on the wire the
//! way a real broken controller would show it.

use std::net::SocketAddr;
use std::time::Duration;

use gatehouse_actors::gate::{HwOp, HwState};
use gatehouse_sim::{ControllerSpec, Farm, FarmSpec, Fault, WriteKind};
use tokio_modbus::client::{Context, tcp};
use tokio_modbus::prelude::*;

const STEP: Duration = Duration::from_millis(20);
const CLIENT_TIMEOUT: Duration = Duration::from_millis(500);

async fn farm() -> Farm {
    let spec = FarmSpec::new(vec![
        ControllerSpec::new("gen", "generic", [1, 2]).with_travel(Duration::from_millis(300)),
        ControllerSpec::new("came", "came-zlb30", [1, 2, 3])
            .with_travel(Duration::from_millis(300)),
    ])
    .unwrap();
    Farm::start(spec).await.unwrap()
}

async fn client(addr: SocketAddr, unit: u8) -> Context {
    tcp::connect_slave(addr, Slave(unit)).await.unwrap()
}

/// Reads the whole status block and decodes it with the controller's profile.
async fn read_state(
    ctx: &mut Context,
    farm: &Farm,
    name: &str,
) -> gatehouse_actors::gate::Observation {
    let c = farm.controller(name).unwrap();
    let p = c.profile();
    let block = tokio::time::timeout(
        CLIENT_TIMEOUT,
        ctx.read_holding_registers(p.block_start, p.block_len),
    )
    .await
    .expect("read timed out")
    .expect("transport error")
    .expect("exception");
    p.decode(&block).unwrap()
}

async fn wait_for(mut check: impl FnMut() -> bool, what: &str) {
    for _ in 0..150 {
        if check() {
            return;
        }
        tokio::time::sleep(STEP).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn reads_decode_and_commands_move_gates() {
    let farm = farm().await;
    let came = farm.controller("came").unwrap();
    let mut ctx = client(came.local_addr(), 2).await;

    let o = read_state(&mut ctx, &farm, "came").await;
    assert_eq!(
        (o.state, o.position, o.obstructed),
        (HwState::Closed, Some(0), false)
    );
    assert_eq!(o.cycles.map(|c| (c.value, c.bits)), Some((0, 32)));

    // CAME: value 1 to register 200 opens.
    ctx.write_single_register(200, 1).await.unwrap().unwrap();
    let o = read_state(&mut ctx, &farm, "came").await;
    assert_eq!(o.state, HwState::Opening);
    assert_eq!(o.cycles.map(|c| c.value), Some(1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let o = read_state(&mut ctx, &farm, "came").await;
    assert_eq!((o.state, o.position), (HwState::Open, Some(100)));
    // The neighbour did not move.
    assert_eq!(came.gate(1).unwrap().observation.state, HwState::Closed);

    let w = came.writes();
    assert_eq!(w.len(), 1);
    assert_eq!(
        (
            w[0].unit,
            w[0].kind,
            w[0].address,
            w[0].value,
            w[0].op,
            w[0].accepted
        ),
        (2, WriteKind::Register, 200, 1, Some(HwOp::Open), true)
    );

    // Unknown value → exception 3; not a command register → exception 2.
    assert_eq!(
        ctx.write_single_register(200, 99).await.unwrap(),
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(
        ctx.write_single_register(100, 1).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    // Outside the status block → exception 2; unknown unit → exception 11.
    assert_eq!(
        ctx.read_holding_registers(99, 2).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        ctx.read_input_registers(100, 6).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    ctx.set_slave(Slave(9));
    assert_eq!(
        ctx.read_holding_registers(100, 6).await.unwrap(),
        Err(ExceptionCode::GatewayTargetDevice)
    );
    farm.shutdown().await;
}

#[tokio::test]
async fn coil_commands_fire_on_the_rising_edge_and_stay_on_until_released() {
    let farm = farm().await;
    let gen_ctl = farm.controller("gen").unwrap();
    let mut ctx = client(gen_ctl.local_addr(), 1).await;

    ctx.write_single_coil(0, true).await.unwrap().unwrap();
    assert_eq!(gen_ctl.coil(1, 0), Some(true));
    assert_eq!(
        read_state(&mut ctx, &farm, "gen").await.state,
        HwState::Opening
    );
    assert_eq!(
        ctx.read_coils(0, 5).await.unwrap().unwrap()[..5],
        [true, false, false, false, false]
    );

    // Stop, then the open coil is written on again without a release: no new edge, no move.
    ctx.write_single_coil(2, true).await.unwrap().unwrap();
    let stopped = read_state(&mut ctx, &farm, "gen").await;
    assert_eq!(stopped.state, HwState::Stopped);
    ctx.write_single_coil(0, true).await.unwrap().unwrap();
    assert_eq!(
        read_state(&mut ctx, &farm, "gen").await.state,
        HwState::Stopped
    );

    // The pulse's release is visible, and the next press of the coil opens again.
    ctx.write_single_coil(0, false).await.unwrap().unwrap();
    ctx.write_single_coil(2, false).await.unwrap().unwrap();
    assert_eq!(gen_ctl.coil(1, 0), Some(false));
    ctx.write_single_coil(0, true).await.unwrap().unwrap();
    assert_eq!(
        read_state(&mut ctx, &farm, "gen").await.state,
        HwState::Opening
    );

    let ops: Vec<_> = gen_ctl
        .writes()
        .iter()
        .map(|w| (w.address, w.value, w.op))
        .collect();
    assert_eq!(
        ops,
        [
            (0, 1, Some(HwOp::Open)),
            (2, 1, Some(HwOp::Stop)),
            (0, 1, None),
            (0, 0, None),
            (2, 0, None),
            (0, 1, Some(HwOp::Open)),
        ]
    );
    // Not a command coil.
    assert_eq!(
        ctx.write_single_coil(9, true).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    farm.shutdown().await;
}

#[tokio::test]
async fn an_exception_for_one_unit_leaves_the_others_working() {
    let farm = farm().await;
    let came = farm.controller("came").unwrap();
    came.inject(Fault::Exception {
        unit: 2,
        code: 4,
        duration: Duration::from_millis(400),
    })
    .await
    .unwrap();
    let mut ctx = client(came.local_addr(), 2).await;
    assert_eq!(
        ctx.read_holding_registers(100, 6).await.unwrap(),
        Err(ExceptionCode::ServerDeviceFailure)
    );
    ctx.set_slave(Slave(1));
    assert_eq!(
        read_state(&mut ctx, &farm, "came").await.state,
        HwState::Closed
    );
    ctx.set_slave(Slave(3));
    assert_eq!(
        read_state(&mut ctx, &farm, "came").await.state,
        HwState::Closed
    );
    // It clears itself.
    tokio::time::sleep(Duration::from_millis(450)).await;
    ctx.set_slave(Slave(2));
    assert_eq!(
        read_state(&mut ctx, &farm, "came").await.state,
        HwState::Closed
    );
    assert!(came.faults().is_empty());
    farm.shutdown().await;
}

#[tokio::test]
async fn stall_makes_reads_time_out_then_clears() {
    let farm = farm().await;
    let gen_ctl = farm.controller("gen").unwrap();
    let mut ctx = client(gen_ctl.local_addr(), 1).await;
    gen_ctl
        .inject(Fault::Stall {
            duration: Duration::from_millis(300),
        })
        .await
        .unwrap();
    let r =
        tokio::time::timeout(Duration::from_millis(150), ctx.read_holding_registers(0, 6)).await;
    assert!(r.is_err(), "a stalled controller answered: {r:?}");
    // The stalled request stays unanswered; a fresh connection works once the stall is over.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fresh = client(gen_ctl.local_addr(), 1).await;
    assert_eq!(
        read_state(&mut fresh, &farm, "gen").await.state,
        HwState::Closed
    );
    farm.shutdown().await;
}

#[tokio::test]
async fn slow_delays_replies() {
    let farm = farm().await;
    let gen_ctl = farm.controller("gen").unwrap();
    let mut ctx = client(gen_ctl.local_addr(), 1).await;
    gen_ctl
        .inject(Fault::Slow {
            delay: Duration::from_millis(200),
            duration: Duration::from_secs(5),
        })
        .await
        .unwrap();
    let t = std::time::Instant::now();
    read_state(&mut ctx, &farm, "gen").await;
    assert!(
        t.elapsed() >= Duration::from_millis(190),
        "{:?}",
        t.elapsed()
    );
    gen_ctl.clear();
    let t = std::time::Instant::now();
    read_state(&mut ctx, &farm, "gen").await;
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    farm.shutdown().await;
}

#[tokio::test]
async fn garbage_makes_the_client_error() {
    let farm = farm().await;
    let gen_ctl = farm.controller("gen").unwrap();
    let mut ctx = client(gen_ctl.local_addr(), 1).await;
    gen_ctl
        .inject(Fault::Garbage {
            duration: Duration::from_millis(300),
        })
        .await
        .unwrap();
    let r = tokio::time::timeout(CLIENT_TIMEOUT, ctx.read_holding_registers(0, 6))
        .await
        .expect("garbage should fail fast, not hang");
    assert!(r.is_err(), "expected a transport error, got {r:?}");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let mut fresh = client(gen_ctl.local_addr(), 1).await;
    assert_eq!(
        read_state(&mut fresh, &farm, "gen").await.state,
        HwState::Closed
    );
    farm.shutdown().await;
}

#[tokio::test]
async fn drop_closes_connections_but_keeps_listening() {
    let farm = farm().await;
    let gen_ctl = farm.controller("gen").unwrap();
    let mut ctx = client(gen_ctl.local_addr(), 1).await;
    read_state(&mut ctx, &farm, "gen").await;
    gen_ctl.inject(Fault::DropConnections).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = tokio::time::timeout(CLIENT_TIMEOUT, ctx.read_holding_registers(0, 6))
        .await
        .expect("a dropped connection should fail fast");
    assert!(r.is_err(), "expected a transport error, got {r:?}");
    let mut fresh = client(gen_ctl.local_addr(), 1).await;
    read_state(&mut fresh, &farm, "gen").await;
    farm.shutdown().await;
}

#[tokio::test]
async fn restart_refuses_connections_then_accepts_with_coils_off() {
    let farm = farm().await;
    let gen_ctl = farm.controller("gen").unwrap();
    let addr = gen_ctl.local_addr();
    let mut ctx = client(addr, 1).await;
    ctx.write_single_coil(0, true).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    gen_ctl
        .inject(Fault::Restart {
            down: Duration::from_millis(400),
        })
        .await
        .unwrap();
    assert!(gen_ctl.is_down());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "connected while down"
    );
    assert!(ctx.read_holding_registers(0, 6).await.is_err());
    // Coils came back off; the gate stopped part way and keeps its position.
    assert_eq!(gen_ctl.coil(1, 0), Some(false));
    let g = gen_ctl.gate(1).unwrap();
    assert_eq!(g.observation.state, HwState::Stopped);
    assert!(g.position > 0.0 && g.position < 100.0, "{}", g.position);

    wait_for(|| !gen_ctl.is_down(), "the controller to come back").await;
    let mut fresh = client(addr, 1).await;
    let o = read_state(&mut fresh, &farm, "gen").await;
    assert_eq!(o.state, HwState::Stopped);
    assert!(!fresh.read_coils(0, 1).await.unwrap().unwrap()[0]);
    farm.shutdown().await;
}

#[tokio::test]
async fn gate_faults_show_on_the_wire() {
    let farm = farm().await;
    let came = farm.controller("came").unwrap();
    let mut ctx = client(came.local_addr(), 3).await;

    came.inject(Fault::LocalPress { unit: 3 }).await.unwrap();
    assert_eq!(
        read_state(&mut ctx, &farm, "came").await.state,
        HwState::Opening
    );
    assert!(came.writes().is_empty(), "a local press is not a write");
    tokio::time::sleep(Duration::from_millis(350)).await;

    came.inject(Fault::Obstruct { unit: 3, on: true })
        .await
        .unwrap();
    let o = read_state(&mut ctx, &farm, "came").await;
    assert_eq!((o.state, o.obstructed), (HwState::Open, true));
    // The write is taken but the controller refuses to close.
    ctx.write_single_register(200, 2).await.unwrap().unwrap();
    assert_eq!(
        read_state(&mut ctx, &farm, "came").await.state,
        HwState::Open
    );
    came.inject(Fault::Obstruct { unit: 3, on: false })
        .await
        .unwrap();

    came.inject(Fault::MotorFault { unit: 3, code: 17 })
        .await
        .unwrap();
    let o = read_state(&mut ctx, &farm, "came").await;
    assert_eq!((o.state, o.fault_code), (HwState::Fault, Some(17)));
    ctx.write_single_register(200, 4).await.unwrap().unwrap(); // reset
    let o = read_state(&mut ctx, &farm, "came").await;
    assert_eq!((o.state, o.fault_code), (HwState::Open, None));

    assert!(came.inject(Fault::LocalPress { unit: 42 }).await.is_err());
    farm.shutdown().await;
}

#[tokio::test]
async fn start_fails_cleanly_on_a_taken_port() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let spec = FarmSpec::new(vec![
        ControllerSpec::new("a", "generic", [1]),
        ControllerSpec::new("b", "generic", [1]).with_port(port),
    ])
    .unwrap();
    let err = Farm::start(spec).await.unwrap_err();
    assert!(err.to_string().contains("controller b"), "{err}");
}

#[tokio::test]
async fn ha_cover_takes_register_commands_outside_its_status_block() {
    let spec = FarmSpec::new(vec![
        ControllerSpec::new("ha", "ha-cover", [4]).with_travel(Duration::from_millis(200)),
    ])
    .unwrap();
    let farm = Farm::start(spec).await.unwrap();
    let ha = farm.controller("ha").unwrap();
    let mut ctx = client(ha.local_addr(), 4).await;
    // Status register 1 only; the command register 0 is write-only.
    assert_eq!(ctx.read_holding_registers(1, 1).await.unwrap(), Ok(vec![0]));
    assert_eq!(
        ctx.read_holding_registers(0, 2).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    ctx.write_single_register(0, 1).await.unwrap().unwrap();
    assert_eq!(ctx.read_holding_registers(1, 1).await.unwrap(), Ok(vec![2]));
    // Write multiple registers works too, and is all or nothing.
    assert_eq!(
        ctx.write_multiple_registers(0, &[2, 7]).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(ha.gate(4).unwrap().observation.state, HwState::Opening);
    ctx.write_multiple_registers(0, &[2])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ctx.read_holding_registers(1, 1).await.unwrap(),
        Ok(vec![1]),
        "ha-cover has no stopped value: a gate stopped part way reads as open"
    );
    assert_eq!(ha.gate(4).unwrap().observation.state, HwState::Stopped);
    farm.shutdown().await;
}
