//! `gatehouse-sim`: the standalone controller farm.
//!
//! Either a farm file (`--farm FILE`) or the quick form (`--controllers N --units M`), an
//! optional scenario to play, and an optional control port for live fault injection from
//! another process. On start it prints one line per controller (`name address profile
//! units=..`) on stdout, then `control ADDRESS` if asked for; logs go to stderr. Bad flags or
//! configuration exit with code 2; SIGINT or SIGTERM stop it cleanly.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_sim::farm::{BASE_PORT, DEFAULT_TRAVEL, check_port};
use gatehouse_sim::{Farm, FarmError, FarmSpec, Scenario, control, run_scenario};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Exit code for bad flags or configuration (clap uses it for bad flags too).
const EXIT_USAGE: u8 = 2;

/// Exit code for failures at run time (a port already taken).
const EXIT_FAILURE: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse-sim",
    version,
    about = "Modbus TCP gate controller farm with physics and fault injection",
    group(ArgGroup::new("source").required(true).args(["farm", "controllers"]))
)]
struct Args {
    /// Farm file (TOML, `[[controller]]` tables).
    #[arg(long, value_name = "FILE")]
    farm: Option<PathBuf>,

    /// Scenario file (TOML, `[[step]]` tables) to play against the farm.
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,

    /// Listen for control commands (line protocol) on this address, e.g. 127.0.0.1:15019.
    #[arg(long, value_name = "ADDR")]
    control: Option<SocketAddr>,

    /// Extra profile directory (`*.toml`), added to the built-in profiles.
    #[arg(long, value_name = "DIR")]
    profiles: Option<PathBuf>,

    /// Quick form: how many controllers.
    #[arg(long, value_name = "N")]
    controllers: Option<usize>,

    /// Quick form: units per controller (ids 1..=M).
    #[arg(long, value_name = "M", default_value_t = 4, conflicts_with = "farm")]
    units: u8,

    /// Quick form: the profile every controller speaks.
    #[arg(long, default_value = "generic", conflicts_with = "farm")]
    profile: String,

    /// Quick form: the first controller's port; the others follow. 0 = any free ports.
    #[arg(long, value_name = "PORT", default_value_t = BASE_PORT, conflicts_with = "farm")]
    base_port: u16,

    /// Quick form: the address to listen on.
    #[arg(long, value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST), conflicts_with = "farm")]
    bind: IpAddr,

    /// Quick form: full travel time of every gate.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_TRAVEL.as_millis() as u64, conflicts_with = "farm")]
    travel_ms: u64,

    /// Quick form: how the controllers frame Modbus on their ports: `tcp` (Modbus TCP) or
    /// `rtu-over-tcp` (RTU frames, as a serial gateway). Serial lines take a farm file.
    #[arg(long, value_name = "TRANSPORT", default_value = "tcp", value_parser = ["tcp", "rtu-over-tcp"], conflicts_with = "farm")]
    transport: String,

    /// Quick form: controller names are PREFIX-1, PREFIX-2, ...
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = "sim",
        conflicts_with = "farm"
    )]
    name_prefix: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let (spec, scenario) = match configure(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("gatehouse-sim: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gatehouse-sim: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(run(spec, scenario, args.control))
}

/// Everything that can be checked before binding a port: exit code 2 territory.
fn configure(args: &Args) -> Result<(FarmSpec, Option<Scenario>), String> {
    let mut profiles = ProfileSet::builtin().map_err(|e| e.to_string())?;
    if let Some(dir) = &args.profiles {
        profiles.load_dir(dir).map_err(|e| e.to_string())?;
    }
    let spec = match (&args.farm, args.controllers) {
        (Some(path), _) => FarmSpec::load(path, profiles).map_err(|e| match e {
            // Already names the file.
            FarmError::Read { .. } => e.to_string(),
            e => format!("{}: {e}", path.display()),
        })?,
        (None, Some(count)) => {
            let travel = Duration::from_millis(args.travel_ms);
            let mut spec = FarmSpec::quick(
                &args.name_prefix,
                count,
                args.units,
                &args.profile,
                args.base_port,
                travel,
                profiles,
            )
            .map_err(|e| e.to_string())?;
            for c in &mut spec.controllers {
                c.bind.set_ip(args.bind);
                if args.transport == "rtu-over-tcp" {
                    c.wire = gatehouse_sim::SimWire::RtuOverTcp;
                }
            }
            spec
        }
        (None, None) => return Err("give --farm FILE or --controllers N".into()),
    };
    if let Some(addr) = args.control {
        check_port(addr.port()).map_err(|e| format!("--control: {e}"))?;
        if spec
            .controllers
            .iter()
            .any(|c| c.bind.port() != 0 && c.bind.port() == addr.port())
        {
            return Err(format!(
                "--control: port {} is also a controller's port",
                addr.port()
            ));
        }
    }
    let scenario = match &args.scenario {
        Some(path) => Some(Scenario::load(path).map_err(|e| format!("{}: {e}", path.display()))?),
        None => None,
    };
    Ok((spec, scenario))
}

async fn run(spec: FarmSpec, scenario: Option<Scenario>, control: Option<SocketAddr>) -> ExitCode {
    let farm = match Farm::start(spec).await {
        Ok(farm) => farm,
        Err(e) => {
            eprintln!("gatehouse-sim: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    for c in farm.controllers() {
        println!("{}", control::describe(c));
    }

    // Checked against the running farm, so a step naming a missing unit is caught too.
    let _scenario = match scenario.map(|s| run_scenario(&farm, s)).transpose() {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("gatehouse-sim: scenario: {e}");
            farm.shutdown().await;
            return ExitCode::from(EXIT_USAGE);
        }
    };

    let control_task = match control {
        None => None,
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => {
                let shown = listener.local_addr().unwrap_or(addr);
                println!("control {shown}");
                Some(tokio::spawn(control::serve(
                    listener,
                    farm.controllers().to_vec(),
                )))
            }
            Err(e) => {
                eprintln!("gatehouse-sim: cannot listen for control on {addr}: {e}");
                farm.shutdown().await;
                return ExitCode::from(EXIT_FAILURE);
            }
        },
    };

    let signal = wait_for_signal().await;
    tracing::info!("{signal}: shutting down");
    if let Some(task) = control_task {
        task.abort();
    }
    farm.shutdown().await;
    ExitCode::SUCCESS
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}
