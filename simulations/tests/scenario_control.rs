//! Scenarios played against a running farm, the control port's line protocol, the shipped
//! demo configuration, and the `gatehouse-sim` binary itself (start lines, live control,
//! exit codes, clean stop on SIGTERM).

use std::io::{BufRead, BufReader as StdBufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use gatehouse_actors::gate::HwState;
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_sim::{ControllerSpec, Farm, FarmSpec, Scenario, control, run_scenario};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const DEMO_FARM: &str = include_str!("../../config/farms/demo.toml");
const CHAOS: &str = include_str!("../../config/scenarios/chaos.toml");

async fn small_farm() -> Farm {
    let spec = FarmSpec::new(vec![
        ControllerSpec::new("c1", "generic", [1, 2]).with_travel(Duration::from_millis(200)),
        ControllerSpec::new("c2", "ha-cover", [5]).with_travel(Duration::from_millis(200)),
    ])
    .unwrap();
    Farm::start(spec).await.unwrap()
}

#[tokio::test]
async fn shipped_demo_farm_and_chaos_scenario_fit_together() {
    let mut spec = FarmSpec::parse(DEMO_FARM, ProfileSet::builtin().unwrap()).unwrap();
    let names: Vec<_> = spec.controllers.iter().map(|c| c.name.clone()).collect();
    assert_eq!(names, ["demo-1", "demo-2", "demo-3"]);
    assert!(spec.controllers.iter().all(|c| c.bind.port() >= 15020));
    let scenario = Scenario::parse(CHAOS).unwrap();
    let every = scenario.repeat_every.unwrap();
    assert!((Duration::from_secs(50)..=Duration::from_secs(70)).contains(&every));
    // Started on free ports so the test never collides with a running demo.
    for c in &mut spec.controllers {
        c.bind.set_port(0);
    }
    let farm = Farm::start(spec).await.unwrap();
    scenario.check(&farm).unwrap();
    farm.shutdown().await;
}

#[tokio::test]
async fn a_scenario_applies_its_steps_in_time_and_names_bad_steps() {
    let farm = small_farm().await;
    let scenario = Scenario::parse(
        r#"
        [[step]]
        at_ms = 0
        controller = "c1"
        fault = "press"
        unit = 1
        [[step]]
        at_ms = 100
        controller = "c1"
        fault = "motor_fault"
        unit = 2
        code = 9
        [[step]]
        at_ms = 100
        controller = "c2"
        fault = "stall"
        duration_ms = 5000
        "#,
    )
    .unwrap();
    let started = std::time::Instant::now();
    run_scenario(&farm, scenario).unwrap().finished().await;
    assert!(started.elapsed() >= Duration::from_millis(100));
    let c1 = farm.controller("c1").unwrap();
    assert_eq!(c1.gate(1).unwrap().observation.state, HwState::Opening);
    assert_eq!(c1.gate(2).unwrap().observation.fault_code, Some(9));
    assert!(farm.controller("c2").unwrap().faults().stall.is_some());

    let missing = Scenario::parse(
        "[[step]]\nat_ms = 0\ncontroller = \"c1\"\nfault = \"drop\"\n\
         [[step]]\nat_ms = 0\ncontroller = \"c2\"\nfault = \"press\"\nunit = 1\n",
    )
    .unwrap();
    let err = run_scenario(&farm, missing).unwrap_err();
    assert_eq!(err.key, "step[1].unit");
    let unknown =
        Scenario::parse("[[step]]\nat_ms = 0\ncontroller = \"zz\"\nfault = \"drop\"\n").unwrap();
    assert_eq!(
        run_scenario(&farm, unknown).unwrap_err().key,
        "step[0].controller"
    );
    farm.shutdown().await;
}

#[tokio::test]
async fn a_repeating_scenario_loops_until_stopped() {
    let farm = small_farm().await;
    let scenario = Scenario::parse(
        "repeat_every_ms = 100\n[[step]]\nat_ms = 0\ncontroller = \"c1\"\nfault = \"press\"\nunit = 1\n",
    )
    .unwrap();
    let handle = run_scenario(&farm, scenario).unwrap();
    // press at 0 (open), 100 (stop), 200 (open again from part way).
    tokio::time::sleep(Duration::from_millis(150)).await;
    let c1 = farm.controller("c1").unwrap();
    assert_eq!(c1.gate(1).unwrap().observation.state, HwState::Stopped);
    handle.stop();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(handle.is_finished());
    assert_eq!(c1.gate(1).unwrap().observation.state, HwState::Stopped);
    farm.shutdown().await;
}

async fn ask(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    command: &str,
) -> Vec<String> {
    write
        .write_all(format!("{command}\n").as_bytes())
        .await
        .unwrap();
    let mut reply = Vec::new();
    loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("control port closed");
        let last = line == "ok" || line.starts_with("error: ");
        reply.push(line);
        if last {
            return reply;
        }
    }
}

#[tokio::test]
async fn control_port_injects_and_reports() {
    let farm = small_farm().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(control::serve(listener, farm.controllers().to_vec()));
    let (read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
    let mut lines = BufReader::new(read).lines();

    let list = ask(&mut lines, &mut write, "list").await;
    assert_eq!(list.len(), 3);
    assert!(
        list[0].starts_with("c1 127.0.0.1:") && list[0].ends_with("generic units=1,2"),
        "{list:?}"
    );

    assert_eq!(ask(&mut lines, &mut write, "press c1 1").await, ["ok"]);
    assert_eq!(
        ask(&mut lines, &mut write, "obstruct c1 2 on").await,
        ["ok"]
    );
    assert_eq!(ask(&mut lines, &mut write, "fault c2 5 17").await, ["ok"]);
    assert_eq!(ask(&mut lines, &mut write, "stall c1 3000").await, ["ok"]);
    let status = ask(&mut lines, &mut write, "status c1").await;
    assert!(status[0].starts_with("unit=1 state=opening"), "{status:?}");
    assert!(status[1].contains("obstructed=true"), "{status:?}");
    assert!(status[2].starts_with("faults=stall:"), "{status:?}");
    let status = ask(&mut lines, &mut write, "status c2").await;
    assert!(
        status[0].contains("state=fault") && status[0].contains("fault=17"),
        "{status:?}"
    );

    assert_eq!(ask(&mut lines, &mut write, "clear c1").await, ["ok"]);
    assert!(farm.controller("c1").unwrap().faults().is_empty());
    assert!(
        !farm
            .controller("c1")
            .unwrap()
            .gate(2)
            .unwrap()
            .observation
            .obstructed
    );

    assert_eq!(ask(&mut lines, &mut write, "restart c2 200").await, ["ok"]);
    assert!(farm.controller("c2").unwrap().is_down());

    for (bad, why) in [
        ("restart nope 100", "no controller"),
        ("press c1 9", "no unit 9"),
        ("press c1 0", "UNIT must be"),
        ("stall c1", "usage: stall NAME MS"),
        ("obstruct c1 1 maybe", "on or off"),
        ("fly c1", "unknown command"),
    ] {
        let reply = ask(&mut lines, &mut write, bad).await;
        assert_eq!(reply.len(), 1, "{reply:?}");
        assert!(
            reply[0].starts_with("error: ") && reply[0].contains(why),
            "{bad}: {reply:?}"
        );
    }
    // A line longer than the limit closes the connection after one error.
    let long = "x".repeat(control::MAX_LINE + 10);
    let reply = ask(&mut lines, &mut write, &long).await;
    assert!(reply[0].contains("longer than"), "{reply:?}");
    assert_eq!(lines.next_line().await.unwrap(), None);
    server.abort();
    farm.shutdown().await;
}

#[test]
fn binary_rejects_bad_flags_and_reserved_ports_with_code_2() {
    let bin = env!("CARGO_BIN_EXE_gatehouse-sim");
    for args in [
        vec![],
        vec!["--controllers", "2", "--base-port", "502"],
        vec!["--controllers", "1", "--base-port", "5432"],
        vec!["--controllers", "1", "--control", "127.0.0.1:6379"],
        vec!["--controllers", "1", "--profile", "nope"],
        vec!["--farm", "/nonexistent/farm.toml"],
        vec!["--controllers", "1", "--units", "0"],
    ] {
        let out = Command::new(bin).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: no error message");
    }
    let out = Command::new(bin)
        .args(["--controllers", "1", "--base-port", "502"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("port 502"));
}

#[test]
fn binary_serves_prints_its_controllers_and_stops_on_sigterm() {
    let bin = env!("CARGO_BIN_EXE_gatehouse-sim");
    let mut child = Command::new(bin)
        .args([
            "--controllers",
            "2",
            "--units",
            "3",
            "--profile",
            "came-zlb30",
            "--base-port",
            "0",
            "--control",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = StdBufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        lines.push(line.trim().to_string());
    }
    assert!(
        lines[0].starts_with("sim-1 127.0.0.1:") && lines[0].ends_with(" came-zlb30 units=1,2,3"),
        "{lines:?}"
    );
    assert!(lines[1].starts_with("sim-2 "), "{lines:?}");
    let control_addr = lines[2].strip_prefix("control ").expect("control line");

    let mut control = std::net::TcpStream::connect(control_addr).unwrap();
    std::io::Write::write_all(&mut control, b"press sim-2 3\nstatus sim-2\n").unwrap();
    let mut replies = StdBufReader::new(control);
    let mut got = Vec::new();
    while got.iter().filter(|l: &&String| l.as_str() == "ok").count() < 2 {
        let mut line = String::new();
        replies.read_line(&mut line).unwrap();
        got.push(line.trim().to_string());
    }
    assert!(
        got.iter().any(|l| l.starts_with("unit=3 state=opening")),
        "{got:?}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            assert!(code.success(), "exit after SIGTERM: {code:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
