//! The real binaries as processes: `gatehouse serve` against a `gatehouse-sim` child (link up,
//! a clean stop on SIGTERM, surviving the simulator's death and reconnecting when it is back),
//! configuration errors that name the bad key, and `gatehouse demo` from start to clean stop.
//!
//! The binaries must be built first (see `gatehouse_tests::procs`). The simulators listen on
//! port 0, a free port the system picks, and print which, so tests running in parallel never
//! race for a port.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_adapters::profile::ProfileSet;
use gatehouse_runtime::fleet_file::FleetFile;
use gatehouse_tests::procs::{Proc, Simulator, Stream, WAIT, bin};

/// The graceful-shutdown limit written into the test configurations.
const SHUTDOWN_MS: u64 = 5_000;

/// A `gatehouse-sim` child with one generic controller of two gates (3 s of travel, so that a
/// gate polled at the profile's 1 s is seen moving) and a control port; `port` 0 = a free one.
fn simulator(port: u16) -> Simulator {
    Simulator::spawn_on(port, 1, 2, 3000)
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// A fleet file with the simulator's controller and its two gates.
fn fleet_file(endpoint: &str) -> String {
    format!(
        "[[site]]\nid = \"site\"\nname = \"Site\"\n\n\
         [[controller]]\nid = \"sim-1\"\nsite = \"site\"\nprofile = \"generic\"\n\
         endpoint = \"{endpoint}\"\n\n\
         [[gate]]\nid = \"gate-1\"\ncontroller = \"sim-1\"\nunit = 1\n\n\
         [[gate]]\nid = \"gate-2\"\ncontroller = \"sim-1\"\nunit = 2\n"
    )
}

/// Writes a configuration (plus `fleet`, as `fleet.toml` beside it, if given) into `dir`.
fn write_config(dir: &Path, config: &str, fleet: Option<&str>) -> PathBuf {
    if let Some(fleet) = fleet {
        std::fs::write(dir.join("fleet.toml"), fleet).expect("write the fleet file");
    }
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, config).expect("write the configuration");
    path
}

/// A configuration for `serve` over `fleet.toml`, with its data inside `dir`.
fn serve_config(dir: &Path, endpoint: &str) -> PathBuf {
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[data]\ndir = {:?}\n\n[fleet]\nfile = \"fleet.toml\"\n\n[shutdown]\ntimeout_ms = {SHUTDOWN_MS}\n",
        dir.join("data").display().to_string()
    );
    write_config(dir, &config, Some(&fleet_file(endpoint)))
}

fn serve(dir: &Path, config: &Path) -> Proc {
    Proc::spawn(
        "gatehouse serve",
        Command::new(bin("gatehouse"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .current_dir(dir),
    )
}

/// How long `serve` may take to stop after SIGTERM: its shutdown limit, plus start-up slack.
fn stop_limit() -> Duration {
    Duration::from_millis(SHUTDOWN_MS) + Duration::from_secs(10)
}

/// Waits until `serve` has logged both gates coming online from their first poll.
fn reconciled(runtime: &mut Proc) {
    for gate in ["gate=gate-1", "gate=gate-2"] {
        let line = runtime.wait_for_all(Stream::Err, &["offline -> closed", gate], 1);
        assert!(line.contains("cause=system"), "{line}");
    }
}

#[test]
fn serve_brings_the_links_up_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut sim = simulator(0);
    let config = serve_config(dir.path(), sim.addr());

    let mut runtime = serve(dir.path(), &config);
    let up = runtime.wait_for(Stream::Err, "link up", 1);
    assert!(up.contains(sim.addr()), "the log names the endpoint: {up}");
    reconciled(&mut runtime);

    // Someone presses the wall button of gate 1: the runtime sees the gate move, and logs it
    // as nobody's doing.
    sim.control("press sim-1 1");
    runtime.wait_for_all(
        Stream::Err,
        &["closed -> opening", "gate=gate-1", "cause=local"],
        1,
    );

    runtime.signal("TERM");
    let status = runtime.wait_exit(stop_limit());
    assert!(status.success(), "{status}\n{}", runtime.transcript());
    assert_eq!(runtime.count(Stream::Err, &["SIGTERM received"]), 1);
    assert_eq!(runtime.count(Stream::Err, &["stopped cleanly"]), 1);

    // The simulator stops cleanly on SIGTERM as well.
    sim.proc.signal("TERM");
    let status = sim.proc.wait_exit(WAIT);
    assert!(status.success(), "{status}\n{}", sim.proc.transcript());
}

#[test]
fn serve_survives_a_killed_simulator_and_reconnects_when_it_is_back() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut sim = simulator(0);
    let config = serve_config(dir.path(), sim.addr());
    let mut runtime = serve(dir.path(), &config);
    runtime.wait_for(Stream::Err, "link up", 1);
    reconciled(&mut runtime);
    sim.control("press sim-1 2");
    runtime.wait_for_all(Stream::Err, &["closed -> opening", "gate=gate-2"], 1);

    sim.proc.signal("KILL");
    let status = sim.proc.wait_exit(WAIT);
    assert!(!status.success(), "killed: {status}");
    runtime.wait_for(Stream::Err, "link down", 1);
    for gate in ["gate=gate-1", "gate=gate-2"] {
        let line = runtime.wait_for_all(Stream::Err, &["-> offline", gate], 1);
        assert!(line.contains("cause=system"), "{line}");
    }
    assert!(
        runtime.is_running(),
        "the runtime died with the simulator\n{}",
        runtime.transcript()
    );

    // A new simulator on the same port (its gates all closed): the link's next attempt finds
    // it, and both gates reconcile.
    let online = |r: &Proc, gate: &str| r.count(Stream::Err, &["offline -> closed", gate]);
    let before = [
        online(&runtime, "gate=gate-1"),
        online(&runtime, "gate=gate-2"),
    ];
    let again = simulator(port_of(sim.addr()));
    assert_eq!(again.addr(), sim.addr());
    runtime.wait_for(Stream::Err, "link up", 2);
    for (gate, n) in ["gate=gate-1", "gate=gate-2"].into_iter().zip(before) {
        runtime.wait_for_all(Stream::Err, &["offline -> closed", gate], n + 1);
    }
    assert!(runtime.is_running());

    runtime.signal("TERM");
    let status = runtime.wait_exit(stop_limit());
    assert!(status.success(), "{status}\n{}", runtime.transcript());
    assert_eq!(runtime.count(Stream::Err, &["stopped cleanly"]), 1);
}

/// Runs `gatehouse serve` on a configuration that must be refused; returns its stderr.
fn refused(dir: &Path, config: &Path, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(bin("gatehouse"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .envs(env.iter().copied());
    let mut p = Proc::spawn("gatehouse serve", &mut cmd);
    let status = p.wait_exit(WAIT);
    assert!(
        !status.success(),
        "a bad configuration was accepted\n{}",
        p.transcript()
    );
    p.lines(Stream::Err).join("\n")
}

#[test]
fn serve_starts_beside_kubernetes_service_link_variables() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut sim = simulator(0);
    let config = serve_config(dir.path(), sim.addr());
    // What Kubernetes puts in every pod of a namespace with a Service named gatehouse.
    let mut runtime = Proc::spawn(
        "gatehouse serve",
        Command::new(bin("gatehouse"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .envs([
                ("GATEHOUSE_PORT", "tcp://10.96.0.12:8080"),
                ("GATEHOUSE_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
                ("GATEHOUSE_PORT_8080_TCP_ADDR", "10.96.0.12"),
                ("GATEHOUSE_PORT_8080_TCP_PORT", "8080"),
                ("GATEHOUSE_PORT_8080_TCP_PROTO", "tcp"),
                ("GATEHOUSE_SERVICE_HOST", "10.96.0.12"),
                ("GATEHOUSE_SERVICE_PORT", "8080"),
            ]),
    );
    runtime.wait_for(Stream::Err, "link up", 1);
    runtime.signal("TERM");
    let status = runtime.wait_exit(stop_limit());
    assert!(status.success(), "{status}\n{}", runtime.transcript());
    sim.proc.signal("TERM");
    let _ = sim.proc.wait_exit(WAIT);
}

#[test]
fn an_unknown_key_in_the_config_file_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = write_config(dir.path(), "[log]\nlevle = \"debug\"\n", None);
    let err = refused(dir.path(), &config, &[]);
    assert!(err.contains("log.levle"), "{err}");
    assert!(err.contains("gatehouse.toml"), "names the file: {err}");
}

#[test]
fn a_bad_environment_override_is_refused_naming_the_key_and_the_variable() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = write_config(dir.path(), "[log]\nlevel = \"info\"\n", None);
    let err = refused(
        dir.path(),
        &config,
        &[("GATEHOUSE_SHUTDOWN__TIMEOUT_MS", "soon")],
    );
    assert!(err.contains("shutdown.timeout_ms"), "{err}");
    assert!(err.contains("GATEHOUSE_SHUTDOWN__TIMEOUT_MS"), "{err}");
}

#[test]
fn a_fleet_file_with_a_duplicate_unit_is_refused_naming_the_entry() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // Nothing listens there: the file must be refused before anything connects.
    let fleet = fleet_file("127.0.0.1:15020").replace("unit = 2", "unit = 1");
    let config = write_config(dir.path(), "[fleet]\nfile = \"fleet.toml\"\n", Some(&fleet));
    let err = refused(dir.path(), &config, &[]);
    assert!(err.contains("gate[1].unit"), "{err}");
    assert!(!err.contains("link up"), "{err}");

    let mut check = Proc::spawn(
        "gatehouse check-fleet",
        Command::new(bin("gatehouse"))
            .arg("check-fleet")
            .arg(dir.path().join("fleet.toml")),
    );
    let status = check.wait_exit(WAIT);
    assert!(!status.success(), "{}", check.transcript());
    assert_eq!(check.count(Stream::Err, &["gate[1].unit"]), 1);
}

/// Runs `gatehouse demo --for SECONDS --no-chaos` in `dir` to its end; returns its stdout
/// lines and its whole transcript.
fn demo(dir: &Path, seconds: u64) -> (Vec<String>, String) {
    let mut demo = Proc::spawn(
        "gatehouse demo",
        Command::new(bin("gatehouse"))
            .args(["demo", "--for", &seconds.to_string(), "--no-chaos"])
            .current_dir(dir),
    );
    let status = demo.wait_exit(WAIT + Duration::from_secs(seconds));
    assert!(status.success(), "{status}\n{}", demo.transcript());
    (demo.lines(Stream::Out), demo.transcript())
}

/// Whether the demo printed `gate`'s coming online (`offline -> closed`).
fn printed_online(out: &[String], gate: &str) -> bool {
    out.iter()
        .any(|l| l.split_whitespace().nth(1) == Some(gate) && l.contains("offline -> closed"))
}

#[test]
fn demo_runs_three_simulated_controllers_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (out, transcript) = demo(dir.path(), 12);

    // The banner lists the three simulated controllers, one per shipped profile.
    let banner: Vec<Vec<&str>> = out
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.first().is_some_and(|n| n.starts_with("demo-")))
        .collect();
    let names: Vec<&str> = banner.iter().map(|w| w[0]).collect();
    assert_eq!(names, ["demo-1", "demo-2", "demo-3"], "{transcript}");
    for profile in ["generic", "came-zlb30", "ha-cover"] {
        assert!(
            banner.iter().any(|w| w.contains(&profile)),
            "{profile}: {transcript}"
        );
    }

    // It wrote the fleet file it drives, pointing at the controllers the banner shows.
    let fleet = FleetFile::load(
        &dir.path().join("data/demo-fleet.toml"),
        &ProfileSet::builtin().expect("the built-in profiles"),
    )
    .expect("the demo wrote a valid fleet file");
    assert_eq!(fleet.controllers.len(), 3);
    for (c, shown) in fleet.controllers.iter().zip(&banner) {
        assert_eq!(c.endpoint, shown[1], "{transcript}");
    }

    // Every gate's coming online is printed (the printer listens before the fleet starts),
    // and the simulated residents' commands are taken and move gates.
    for gate in &fleet.gates {
        assert!(
            printed_online(&out, gate.id.as_str()),
            "{} never came online: {transcript}",
            gate.id
        );
    }
    assert!(
        out.iter()
            .any(|l| l.contains("open: accepted in") && l.contains("[resident")),
        "no resident command was accepted: {transcript}"
    );
    assert!(
        out.iter()
            .any(|l| l.contains("closed -> opening") && l.contains("[command ")),
        "no gate opened on command: {transcript}"
    );
    // The demo's service plan: a gate that completed a cycle is due, on its event stream
    // and in the file outbox, addressed to the demo admin.
    assert!(
        out.iter().any(|l| l.contains("maintenance due")),
        "no maintenance_due event: {transcript}"
    );
    let mails: Vec<String> = std::fs::read_dir(dir.path().join("data/outbox"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        mails
            .iter()
            .any(|m| m.contains("Maintenance due") && m.contains("To: demo@gatehouse.invalid")),
        "no maintenance email in data/outbox ({} files): {transcript}",
        mails.len()
    );
    assert!(
        out.iter().any(|l| l == "time up: stopping the demo"),
        "{transcript}"
    );
    assert_eq!(
        out.last().map(String::as_str),
        Some("demo stopped cleanly"),
        "{transcript}"
    );
}

#[test]
fn a_configured_token_key_that_is_missing_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[data]\ndir = {:?}\n\n[auth]\njwt_key_file = \"keys/missing.pem\"\n",
        dir.path().join("data").display().to_string()
    );
    let config = write_config(dir.path(), &config, None);
    let err = refused(dir.path(), &config, &[]);
    assert!(err.contains("token signing key"), "{err}");
    assert!(err.contains("keys/missing.pem"), "names the file: {err}");
    assert!(
        !dir.path().join("data").join("jwt-ed25519.pem").exists(),
        "no key is generated in its place"
    );
}

/// One HTTP request from a blocking test: `(status, body)`.
fn http(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut request = client.request(method.parse().expect("a method"), url);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = tokio::time::timeout(WAIT, request.send())
            .await
            .expect("an answer in time")
            .expect("an answer");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    })
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The base URL a runtime printed (`API:      http://127.0.0.1:PORT/api/v1 ...` from the
/// demo, `API on http://127.0.0.1:PORT/api/v1 ...` from serve).
fn base_url(line: &str) -> String {
    let start = line.find("http://").expect("a URL in the line");
    let url = &line[start..];
    let end = url.find("/api/v1").expect("the API path");
    url[..end].to_string()
}

/// Runs `promtool check metrics` on `text`; `None` when promtool is missing outside CI.
fn promtool_check(text: &str) -> Option<(bool, String)> {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping the promtool check: {e} (.ci/run installs promtool)");
            return None;
        }
        Err(e) => panic!("promtool is required under CI: {e}"),
    };
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), said))
}

/// The value of the series `name{labels}` exactly as written in the text format.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn the_demo_serves_metrics_that_promtool_accepts_labelled_by_route_template() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = write_config(dir.path(), "[http]\nlisten = \"127.0.0.1:0\"\n", None);
    let mut demo = Proc::spawn(
        "gatehouse demo",
        Command::new(bin("gatehouse"))
            .args([
                "demo",
                "--for",
                "60",
                "--no-chaos",
                "--rate",
                "0",
                "--config",
            ])
            .arg(&config)
            .current_dir(dir.path()),
    );
    let base = base_url(&demo.wait_for(Stream::Out, "API:", 1));
    let password = demo
        .wait_for(Stream::Out, "password:", 1)
        .split_whitespace()
        .nth(1)
        .expect("the demo's password")
        .to_string();
    demo.wait_for(Stream::Out, "offline -> closed", 12);

    let (status, body) = http(
        "POST",
        &format!("{base}/api/v1/auth/login"),
        None,
        Some(serde_json::json!({"username": "demo", "password": password})),
    );
    assert_eq!(status, 200, "{body}");
    let token = json(&body)["access_token"]
        .as_str()
        .expect("a token")
        .to_string();
    // A command to completion, a gate read by its path, and a path no route has.
    let (status, body) = http(
        "POST",
        &format!("{base}/api/v1/gates/gate-1/commands?wait=true"),
        Some(&token),
        Some(serde_json::json!({"id": uuid::Uuid::new_v4(), "action": "open"})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["status"], "completed", "{body}");
    assert_eq!(
        http(
            "GET",
            &format!("{base}/api/v1/gates/gate-2"),
            Some(&token),
            None
        )
        .0,
        200
    );
    assert_eq!(
        http("GET", &format!("{base}/no/such/page"), None, None).0,
        404
    );

    let (status, text) = http("GET", &format!("{base}/metrics"), None, None);
    assert_eq!(status, 200, "{text}");
    if let Some((ok, said)) = promtool_check(&text) {
        assert!(
            ok,
            "promtool check metrics refused the text: {said}\n{text}"
        );
    }
    // Routes by template, never by raw path.
    assert_eq!(
        series(
            &text,
            r#"gatehouse_http_requests_total{route="/api/v1/gates/{gate}",method="GET",status="200"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        series(
            &text,
            r#"gatehouse_http_requests_total{route="unmatched",method="GET",status="404"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        !text.contains("gates/gate-2"),
        "a raw path became a label: {text}"
    );
    assert!(
        !text.contains("/no/such"),
        "a raw path became a label: {text}"
    );
    // The tree, the links and the gates.
    for (series_name, value) in [
        (r#"gatehouse_actors{kind="controller"}"#, 3.0),
        (r#"gatehouse_actors{kind="gate"}"#, 12.0),
        (r#"gatehouse_actors{kind="link"}"#, 3.0),
        (r#"gatehouse_actors{kind="root"}"#, 1.0),
        (r#"gatehouse_links{state="connected"}"#, 3.0),
        (r#"gatehouse_link_up{controller="demo-1"}"#, 1.0),
    ] {
        assert_eq!(
            series(&text, series_name),
            Some(value),
            "{series_name}\n{text}"
        );
    }
    let gates: f64 = text
        .lines()
        .filter(|l| l.starts_with("gatehouse_gates{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(gates, 12.0, "every gate is in exactly one state\n{text}");
    assert!(
        series(
            &text,
            r#"gatehouse_commands_total{action="open",status="completed",reason="none"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    for histogram in [
        r#"gatehouse_command_accept_duration_seconds_count{action="open"}"#,
        r#"gatehouse_command_complete_duration_seconds_count{action="open"}"#,
        "gatehouse_eventlog_commit_duration_seconds_count",
        r#"gatehouse_link_transaction_duration_seconds_count{op="write"}"#,
        r#"gatehouse_actor_message_duration_seconds_count{kind="gate"}"#,
    ] {
        assert!(
            series(&text, histogram).is_some_and(|n| n >= 1.0),
            "{histogram}\n{text}"
        );
    }
    demo.signal("INT");
    assert!(
        demo.wait_exit(stop_limit()).success(),
        "{}",
        demo.transcript()
    );
}

/// Every secret the flow handles, searched for in every line the process printed.
#[test]
fn no_password_token_or_key_reaches_the_logs_even_at_trace_level() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let sim = simulator(0);
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[data]\ndir = {:?}\n\n[fleet]\nfile = \"fleet.toml\"\n\n\
         [log]\nlevel = \"trace\"\nformat = \"json\"\n\n[metrics]\ntoken = \"metrics-token-SECRET-0123456789\"\n",
        dir.path().join("data").display().to_string()
    );
    let config = write_config(dir.path(), &config, Some(&fleet_file(sim.addr())));
    let password = "correct horse battery SECRET 42";

    let mut add = Command::new(bin("gatehouse"))
        .args([
            "user",
            "add",
            "alice",
            "--role",
            "admin",
            "--password-stdin",
            "--config",
        ])
        .arg(&config)
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gatehouse user add starts");
    add.stdin
        .take()
        .expect("piped")
        .write_all(format!("{password}\n").as_bytes())
        .expect("the password on stdin");
    let added = add.wait_with_output().expect("user add ends");
    assert!(added.status.success(), "{added:?}");
    let mut printed = vec![
        String::from_utf8_lossy(&added.stdout).into_owned(),
        String::from_utf8_lossy(&added.stderr).into_owned(),
    ];

    let mut runtime = serve(dir.path(), &config);
    let base = base_url(&runtime.wait_for(Stream::Err, "API on http://", 1));
    let (status, body) = http(
        "POST",
        &format!("{base}/api/v1/auth/login"),
        None,
        Some(serde_json::json!({"username": "alice", "password": password})),
    );
    assert_eq!(status, 200, "{body}");
    let login = json(&body);
    let access = login["access_token"].as_str().expect("access").to_string();
    let refresh = login["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    // A wrong password, a refresh, an API key made and used, a bad token, the metrics token.
    let (status, _) = http(
        "POST",
        &format!("{base}/api/v1/auth/login"),
        None,
        Some(serde_json::json!({"username": "alice", "password": "wrong SECRET guess"})),
    );
    assert_eq!(status, 401);
    let (status, body) = http(
        "POST",
        &format!("{base}/api/v1/auth/refresh"),
        None,
        Some(serde_json::json!({"refresh_token": refresh})),
    );
    assert_eq!(status, 200, "{body}");
    let rotated = json(&body);
    let access2 = rotated["access_token"]
        .as_str()
        .expect("access")
        .to_string();
    let refresh2 = rotated["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    let (status, body) = http(
        "POST",
        &format!("{base}/api/v1/api-keys"),
        Some(&access2),
        Some(serde_json::json!({"name": "ci", "role": "operator"})),
    );
    assert_eq!(status, 201, "{body}");
    let key = json(&body)["secret"].as_str().expect("the key").to_string();
    assert_eq!(
        http("GET", &format!("{base}/api/v1/gates"), Some(&key), None).0,
        200
    );
    assert_eq!(
        http(
            "GET",
            &format!("{base}/api/v1/gates"),
            Some("not-a-token-SECRET"),
            None
        )
        .0,
        401
    );
    assert_eq!(
        http(
            "GET",
            &format!("{base}/metrics"),
            Some("metrics-token-SECRET-0123456789"),
            None
        )
        .0,
        200
    );
    let (status, body) = http(
        "POST",
        &format!("{base}/api/v1/auth/logout"),
        Some(&access2),
        Some(serde_json::json!({"refresh_token": refresh2})),
    );
    assert!(status == 200 || status == 204, "{status} {body}");

    runtime.signal("TERM");
    assert!(
        runtime.wait_exit(stop_limit()).success(),
        "{}",
        runtime.transcript()
    );
    printed.extend(runtime.lines(Stream::Out));
    printed.extend(runtime.lines(Stream::Err));
    assert!(
        printed.iter().any(|l| l.contains("\"request_id\"")),
        "the JSON logs carry request ids"
    );
    let secrets = [
        password,
        "wrong SECRET guess",
        &access,
        &refresh,
        &access2,
        &refresh2,
        &key,
        "not-a-token-SECRET",
        "metrics-token-SECRET-0123456789",
    ];
    for line in &printed {
        for secret in secrets {
            assert!(!line.contains(secret), "a secret was logged: {line}");
        }
        // Parts of them too: the JWT signature, the key's random part.
        for secret in [&access, &access2] {
            let signature = secret.rsplit('.').next().unwrap_or_default();
            assert!(
                !line.contains(signature),
                "a token signature was logged: {line}"
            );
        }
    }
    sim.proc.signal("TERM");
}

/// `/readyz` until `done` holds for its body (bounded); returns the status code and body.
fn readyz_until(base: &str, done: impl Fn(&serde_json::Value) -> bool) -> (u16, serde_json::Value) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = http("GET", &format!("{base}/readyz"), None, None);
        let body = json(&body);
        if done(&body) {
            return (status, body);
        }
        assert!(Instant::now() < deadline, "readyz never got there: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {name} check in {report}"))
}

#[test]
fn readiness_names_the_database_the_backlog_and_a_link_that_is_down_without_draining_the_node() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let sim = simulator(0);
    let config = serve_config(dir.path(), sim.addr());
    let mut runtime = serve(dir.path(), &config);
    let base = base_url(&runtime.wait_for(Stream::Err, "API on http://", 1));
    reconciled(&mut runtime);

    let (status, report) = readyz_until(&base, |r| {
        r["status"] == "ready" && check(r, "database")["detail"].is_null()
    });
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        check(&report, "links")["detail"],
        "1 of 1 connected",
        "{report}"
    );
    assert!(
        check(&report, "event_log_backlog")["detail"]
            .as_str()
            .is_some_and(|d| d.ends_with("entries waiting")),
        "{report}"
    );

    // The controller reboots: the node still serves (200), and says which link is down.
    sim.control("restart sim-1 3000");
    let (status, report) = readyz_until(&base, |r| r["status"] == "degraded");
    assert_eq!(status, 200, "{report}");
    let links = check(&report, "links");
    assert_eq!(links["ready"], true, "{report}");
    assert!(
        links["degraded"]
            .as_str()
            .is_some_and(|d| d.contains("down: sim-1")),
        "{report}"
    );
    // And back.
    let (status, _) = readyz_until(&base, |r| r["status"] == "ready");
    assert_eq!(status, 200);

    runtime.signal("TERM");
    assert!(
        runtime.wait_exit(stop_limit()).success(),
        "{}",
        runtime.transcript()
    );
    sim.proc.signal("TERM");
}
