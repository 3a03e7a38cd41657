//! The operator console in a real browser: `tests/console/console.mjs` drives `/console` in
//! Debian's headless Chromium (through playwright-core) against a `gatehouse serve` process and
//! the `gatehouse-sim` child behind it. It signs in, finds the gate in the grid, opens it and
//! sees `completed` and `open`, makes the simulator refuse the controller for 4 s (its control
//! port's `restart NAME 4000`), sees the controller's link turn `down` and come back
//! `connected`, and finds the link's restart or failure in the supervision tree. Then the other
//! pages: on Maintenance it makes a plan for the gate, sees the gate's status row, opens a
//! record with lockout (the live card shows the lockout) and completes it (unlocked again); on
//! Reports it asks for a CSV of events, follows it to `done` and downloads it. Last, the
//! emailed links: a viewer made over REST asks for a password reset, the script takes the link
//! from the `.eml` the file outbox writes into `<data dir>/outbox/` (links start at
//! `[http] public_url`), sets a new password on the landing page, is signed in, and signs in
//! again with it; an operator invited over REST sets a password through the invitation link.
//! It fails on any console error or CSP violation in the page. Screenshots of each step are
//! left in `target/console-artifacts/`.
//!
//! Needs the built `gatehouse` and `gatehouse-sim` (`cargo build --workspace --bins`), `node`,
//! `/usr/bin/chromium` and `tests/console/node_modules/playwright-core` (`npm ci` in
//! `tests/console`); `.ci/run` installs all of them. Without node, Chromium or playwright-core
//! the test is skipped with a notice, except under CI (`CI` set), where it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use gatehouse_tests::procs::{Proc, Simulator, Stream, WAIT, add_user, bin, tail, workspace_root};

/// How long the browser script may run (its own waits add up to well under this).
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);

/// The graceful-shutdown limit written into the configuration.
const SHUTDOWN_MS: u64 = 5_000;

/// The admin account the browser signs in with.
const USER: &str = "console-admin";
const PASSWORD: &str = "console-test-password-7f3a";

/// The simulated controller and the gate the browser drives.
const CONTROLLER: &str = "sim-1";
const GATE: &str = "gate-1";

/// Debian's Chromium, the one browser the script launches.
const CHROMIUM: &str = "/usr/bin/chromium";

/// The base of the links in emails; never resolved (the script opens the page by its own
/// address with the link's fragment).
const PUBLIC_URL: &str = "http://gatehouse.invalid";

/// The screenshots the script saves, one per step.
const SCREENSHOTS: [&str; 18] = [
    "01-login.png",
    "02-gates.png",
    "03-command.png",
    "04-link-down.png",
    "05-link-recovered.png",
    "06-tree.png",
    "07-maintenance.png",
    "08-record-open.png",
    "09-record-completed.png",
    "10-report-requested.png",
    "11-report-downloaded.png",
    "12-forgot-password.png",
    "13-reset-landing.png",
    "14-reset-signed-in-viewer.png",
    "15-new-password-sign-in.png",
    "16-link-spent.png",
    "17-invitation.png",
    "18-invited-operator.png",
];

/// What the browser script needs and this machine lacks, by name.
fn missing_prerequisites() -> Vec<&'static str> {
    let mut missing = Vec::new();
    let node = Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !node {
        missing.push("node (apt-get install nodejs)");
    }
    if !Path::new(CHROMIUM).is_file() {
        missing.push("/usr/bin/chromium (apt-get install chromium)");
    }
    let playwright =
        workspace_root().join("tests/console/node_modules/playwright-core/package.json");
    if !playwright.is_file() {
        missing.push("playwright-core (npm ci in tests/console)");
    }
    missing
}

/// Writes `fleet.toml` (the simulator's controller and its two gates) and `gatehouse.toml`
/// (HTTP on a free loopback port, links in emails under [`PUBLIC_URL`], data inside `dir`)
/// into `dir`. The database is the default, `./data/gatehouse.db`: every command runs in
/// `dir`. No `[mail]`: messages are `.eml` files in `data/outbox/`.
fn serve_config(dir: &Path, endpoint: &str) -> PathBuf {
    let fleet = format!(
        "[[site]]\nid = \"site\"\nname = \"Site\"\n\n\
         [[controller]]\nid = \"{CONTROLLER}\"\nsite = \"site\"\nprofile = \"generic\"\n\
         endpoint = \"{endpoint}\"\n\n\
         [[gate]]\nid = \"{GATE}\"\ncontroller = \"{CONTROLLER}\"\nunit = 1\nname = \"Gate one\"\n\n\
         [[gate]]\nid = \"gate-2\"\ncontroller = \"{CONTROLLER}\"\nunit = 2\nname = \"Gate two\"\n"
    );
    std::fs::write(dir.join("fleet.toml"), fleet).expect("write the fleet file");
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"{PUBLIC_URL}\"\n\n[data]\ndir = {:?}\n\n\
         [fleet]\nfile = \"fleet.toml\"\n\n[shutdown]\ntimeout_ms = {SHUTDOWN_MS}\n",
        dir.join("data").display().to_string()
    );
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, config).expect("write the configuration");
    path
}

#[test]
fn the_console_commands_a_gate_keeps_maintenance_and_reports_and_lands_emailed_links_in_chromium() {
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        let message = format!(
            "the console browser test needs {} (.ci/run installs them)",
            missing.join(", ")
        );
        assert!(std::env::var_os("CI").is_none(), "{message}");
        eprintln!("skipped: {message}");
        return;
    }

    let dir = tempfile::tempdir().expect("a temp dir");
    // One generic controller of two gates (3 s of travel), with a control port.
    let mut sim = Simulator::spawn(1, 2, 3000);
    let (endpoint, control) = (sim.controllers[0].1.clone(), sim.control.clone());
    let config = serve_config(dir.path(), &endpoint);
    add_user(dir.path(), &config, USER, "admin", PASSWORD);

    let mut runtime = Proc::spawn(
        "gatehouse serve",
        Command::new(bin("gatehouse"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path()),
    );
    // `... HTTP API listening addr=127.0.0.1:PORT`
    let listening = runtime.wait_for_all(Stream::Err, &["HTTP API listening"], 1);
    let addr = listening
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {listening:?}"))
        .to_string();
    runtime.wait_for_all(Stream::Err, &["link up"], 1);
    let gate_field = format!("gate={GATE}");
    runtime.wait_for_all(Stream::Err, &["offline -> closed", gate_field.as_str()], 1);

    let artifacts = workspace_root().join("target/console-artifacts");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).expect("create target/console-artifacts");
    println!("console test screenshots: {}", artifacts.display());
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("write the password file");

    let mut script = Proc::spawn(
        "console.mjs",
        Command::new("node")
            .arg("tests/console/console.mjs")
            .arg(format!("--url=http://{addr}"))
            .arg(format!("--user={USER}"))
            .arg(format!("--password-file={}", password_file.display()))
            .arg(format!("--control={control}"))
            .arg(format!("--controller={CONTROLLER}"))
            .arg(format!("--gate={GATE}"))
            .arg(format!(
                "--outbox={}",
                dir.path().join("data").join("outbox").display()
            ))
            .arg(format!("--artifacts={}", artifacts.display()))
            .current_dir(workspace_root()),
    );
    let status = match script.try_wait_exit(SCRIPT_LIMIT) {
        Some(status) => status,
        None => {
            script.signal("KILL");
            let _ = script.try_wait_exit(WAIT);
            panic!(
                "console.mjs did not finish within {SCRIPT_LIMIT:?}: killed\n{}\n\
                 --- gatehouse serve, last lines ---\n{}",
                script.transcript(),
                tail(&runtime.lines(Stream::Err), 60)
            );
        }
    };
    println!("{}", script.transcript());
    assert!(
        status.success(),
        "console.mjs failed ({status}); screenshots in {}\n{}\n\
         --- gatehouse serve, last lines ---\n{}",
        artifacts.display(),
        script.transcript(),
        tail(&runtime.lines(Stream::Err), 60)
    );

    for name in SCREENSHOTS {
        let path = artifacts.join(name);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("the screenshot {} is missing: {e}", path.display()));
        assert!(
            bytes.len() > 8 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is not a PNG ({} bytes)",
            path.display(),
            bytes.len()
        );
    }

    runtime.signal("TERM");
    let stop_limit = Duration::from_millis(SHUTDOWN_MS) + Duration::from_secs(10);
    let status = runtime.finish(stop_limit);
    assert!(status.success(), "{status}\n{}", runtime.transcript());
    sim.proc.signal("TERM");
    let _ = sim.proc.try_wait_exit(WAIT);
}
