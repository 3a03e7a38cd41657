//! `gatehouse demo`: the simulator and the runtime in one process, on loopback, with nothing
//! to install. Three simulated controllers (one per shipped profile) on ports from 15020 up,
//! "residents" who open and close gates every few seconds, and a chaos scenario that drops
//! links, restarts a controller, blocks a photo-eye and trips a motor, so that a new user can
//! watch gates cycle, fail and recover. Every gate event is printed as it happens.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use gatehouse_actors::clock::wall_ms;
use gatehouse_actors::gate::{Action, CommandStatus, GateState};
use gatehouse_actors::ids::{CommandId, GateId};
use gatehouse_actors::tree::Fleet;
use gatehouse_actors::tree::gate::AckSink;
use gatehouse_sim::farm::{BASE_PORT, check_port};
use gatehouse_sim::{ControllerSpec as SimControllerSpec, Farm, FarmSpec, Scenario, run_scenario};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::config::Config;
use crate::fleet_file::FleetFile;
use gatehouse_actors::access::{AccessStore, Role, UserId, UserRecord};
use gatehouse_actors::store::EventStore;
use gatehouse_actors::tree::bus::LocalBus;
use gatehouse_adapters::store::Store;
use gatehouse_api::auth::password::Passwords;
use gatehouse_api::changes::AccessChanges;
use gatehouse_api::ws::Sessions;

use gatehouse_adapters::profile::ProfileSet;

use crate::{Runtime, boot, http, load_profiles, watch};

/// The chaos the demo plays, on repeat.
const CHAOS: &str = include_str!("../../config/scenarios/chaos.toml");

/// How many commands per second the simulated residents send, on average, by default.
pub const RESIDENT_RATE: f64 = 0.4;

/// The demo's controllers: (name, profile, gate id prefix, gates, travel time).
const LAYOUT: [(&str, &str, &str, u8, u64); 3] = [
    ("demo-1", "generic", "gate", 4, 6_000),
    ("demo-2", "came-zlb30", "barrier", 4, 4_000),
    ("demo-3", "ha-cover", "garage", 4, 8_000),
];

/// The demo's admin account; its password is new on every run.
pub const DEMO_USER: &str = "demo";
/// The demo user's address: its notifications land in `data/outbox/` as `.eml` files.
pub const DEMO_EMAIL: &str = "demo@gatehouse.invalid";

/// Creates the demo admin, or gives it a new password, and returns the password.
async fn demo_login(store: &Store, passwords: &Passwords) -> anyhow::Result<String> {
    let password = gatehouse_api::auth::secrets::refresh_token()[..20].to_string();
    let hash = passwords.hash(&password).await?;
    let now = wall_ms();
    match store.user_by_name(DEMO_USER.to_string()).await? {
        Some(mut user) => {
            user.password_hash = hash;
            user.disabled = false;
            user.role = Role::Admin;
            user.email = Some(DEMO_EMAIL.to_string());
            store.update_user(user.clone()).await?;
            store.revoke_user_families(user.id, now).await?;
        }
        None => {
            store
                .create_user(UserRecord {
                    id: UserId(uuid::Uuid::new_v4()),
                    username: DEMO_USER.to_string(),
                    password_hash: hash,
                    role: Role::Admin,
                    created_at_ms: now,
                    disabled: false,
                    email: Some(DEMO_EMAIL.to_string()),
                })
                .await?
        }
    }
    Ok(password)
}

/// Options of `gatehouse demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop by itself after this long (for smoke tests); otherwise run until Ctrl-C.
    pub run_for: Option<Duration>,
    /// Leave out the chaos scenario.
    pub no_chaos: bool,
    /// Resident commands per second (on average).
    pub resident_rate: f64,
}

/// How often the demo looks for other ports when another process took the ones it picked.
const PORT_ATTEMPTS: usize = 10;

/// Starts the simulated controllers on free ports from [`BASE_PORT`] up.
async fn start_farm(profiles: &ProfileSet) -> anyhow::Result<(Farm, Vec<u16>)> {
    let mut from = BASE_PORT;
    let mut last_error = None;
    for _ in 0..PORT_ATTEMPTS {
        let ports = free_ports(from, LAYOUT.len())?;
        let sims = LAYOUT
            .iter()
            .zip(&ports)
            .map(|((name, profile, _, gates, travel_ms), port)| {
                SimControllerSpec::new(*name, *profile, 1..=*gates)
                    .with_port(*port)
                    .with_travel(Duration::from_millis(*travel_ms))
            })
            .collect();
        let spec = FarmSpec {
            controllers: sims,
            profiles: profiles.clone(),
        };
        match Farm::start(spec).await {
            Ok(farm) => return Ok((farm, ports)),
            // Another process bound one of them between our check and our bind: move on.
            Err(e @ gatehouse_sim::FarmError::Bind { .. }) => {
                last_error = Some(e);
                from = ports
                    .iter()
                    .max()
                    .copied()
                    .unwrap_or(from)
                    .saturating_add(1);
            }
            Err(e) => return Err(e).context("starting the simulator"),
        }
    }
    Err(anyhow::anyhow!(
        "no free ports for the simulator: {}",
        last_error.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// Free loopback ports from `from` up, skipping well-known service ports.
fn free_ports(from: u16, n: usize) -> anyhow::Result<Vec<u16>> {
    let mut ports = Vec::with_capacity(n);
    let mut port = from;
    while ports.len() < n {
        if check_port(port).is_ok()
            && TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok()
        {
            ports.push(port);
        }
        port = port.checked_add(1).context("no free port above 15020")?;
    }
    Ok(ports)
}

/// The fleet file for the demo's controllers, as a user would write it.
fn fleet_toml(ports: &[u16]) -> String {
    let mut s = String::from(
        "# Written by `gatehouse demo`: the simulated site it drives.\n\
         [[site]]\nid = \"demo\"\nname = \"Demo car park\"\ntimezone = \"UTC\"\n",
    );
    for ((name, profile, prefix, gates, travel_ms), port) in LAYOUT.iter().zip(ports) {
        s.push_str(&format!(
            "\n[[controller]]\nid = \"{name}\"\nsite = \"demo\"\nprofile = \"{profile}\"\nendpoint = \"127.0.0.1:{port}\"\n"
        ));
        for unit in 1..=*gates {
            // Travel timeout: twice the travel time, as an installer would set it.
            let timeout_s = (travel_ms * 2).div_ceil(1000);
            s.push_str(&format!(
                "\n[[gate]]\nid = \"{prefix}-{unit}\"\ncontroller = \"{name}\"\nunit = {unit}\ntravel_timeout_s = {timeout_s}\n"
            ));
            // A few gates close by themselves, to show the warning before an auto-close.
            if unit == 1 {
                s.push_str("auto_close_after_s = 15\n");
            }
            if unit == 2 {
                s.push_str("left_open_alert_after_s = 30\n");
            }
        }
    }
    s
}

/// The scheduler's round in the demo.
const DEMO_MAINTENANCE_CHECK: Duration = Duration::from_secs(2);

/// On a first run: a service plan for the demo site that a gate crosses after its first
/// cycle (due) and second (overdue), and rules that email the demo admin about maintenance
/// and faults, so that the file outbox (`data/outbox/`) shows what the notifier sends.
async fn demo_notifications(store: &Store) -> anyhow::Result<()> {
    use gatehouse_actors::maintenance::{MaintenanceStore, Plan, PlanDraft, PlanScope};
    use gatehouse_actors::notify::{NotifyStore, Rule, RuleDraft, Trigger};
    let site = gatehouse_actors::ids::SiteId::new("demo").map_err(anyhow::Error::msg)?;
    let now = wall_ms();
    if store.plans().await?.is_empty() {
        let draft = PlanDraft {
            scope: PlanScope::Site(site),
            title: "Demo service (every 2 cycles)".into(),
            every_cycles: Some(2),
            every_days: None,
            warn_cycles: 1,
            warn_days: 0,
        };
        store
            .put_plan(Plan::new(uuid::Uuid::new_v4(), draft, now))
            .await?;
    }
    if store.rules().await?.is_empty() {
        for trigger in [
            Trigger::MaintenanceDue,
            Trigger::MaintenanceOverdue,
            Trigger::Fault,
        ] {
            let draft = RuleDraft {
                trigger,
                site: None,
                after_s: 0,
                users: vec![],
                roles: vec![Role::Admin],
            };
            store
                .put_rule(Rule::new(uuid::Uuid::new_v4(), draft, now))
                .await?;
        }
    }
    Ok(())
}

/// Runs the demo until Ctrl-C (or `run_for`).
pub async fn run(mut config: Config, options: DemoOptions) -> anyhow::Result<()> {
    // Emailed links (invitations, password resets) point at this console unless told
    // otherwise.
    if config.http.public_url.is_none() && config.http.listen.port() != 0 {
        config.http.public_url = Some(format!("http://{}", config.http.listen));
    }
    let mut signals = crate::ShutdownSignal::listen();
    let metrics = crate::metrics::install(&config.metrics)?;
    let profiles = load_profiles(&config)?;
    std::fs::create_dir_all(&config.data.dir)
        .with_context(|| format!("creating the data directory {}", config.data.dir.display()))?;

    let (farm, ports) = start_farm(&profiles).await?;

    let fleet_path = config.data.dir.join("demo-fleet.toml");
    let text = fleet_toml(&ports);
    std::fs::write(&fleet_path, &text)
        .with_context(|| format!("writing {}", fleet_path.display()))?;
    let fleet_file = FleetFile::parse(&fleet_path.display().to_string(), &text, &profiles)?;

    // The store keeps the history across runs; the demo's fleet is imported into it each time
    // (the simulator's ports may differ from the last run).
    let store = boot::open_store(&config).await?;
    boot::import(&store, &fleet_file, false, &profiles).await?;
    let previous = store.heads().await?.len();
    let bus = LocalBus::default();
    let printer = tokio::spawn(watch::print_events(bus.subscribe()));
    let changes = AccessChanges::default();
    let (sessions, tree) = Sessions::new(bus.clone(), &changes, config.websocket.sessions());
    let runtime = Runtime::boot_tree(
        store.clone(),
        profiles.clone(),
        None,
        bus,
        Some(tree),
        crate::boot::TreeOptions {
            // Quick rounds, so that a gate crossing the demo plan is seen within seconds.
            maintenance_check: DEMO_MAINTENANCE_CHECK,
            ..crate::boot::TreeOptions::of(&config)?
        },
    )
    .await?;
    demo_notifications(&store).await?;

    // The API, and a login to try it with (a fresh password every run).
    let passwords = Passwords::owasp()?;
    let password = demo_login(&store, &passwords).await?;
    let app = http::app(
        &config,
        &runtime,
        store.clone(),
        passwords,
        sessions,
        changes,
    )
    .await?;
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let (api_addr, server) = http::start(
        &config,
        &runtime,
        app,
        store.clone(),
        metrics.as_ref(),
        true,
        async {
            let _ = http_stopped.await;
        },
    )
    .await?;
    banner(&farm, &fleet_path, &fleet_file, &config, previous);
    println!(
        "API:      http://{api_addr}/api/v1  (OpenAPI: http://{api_addr}/api/v1/openapi.json)"
    );
    println!("username: {DEMO_USER}");
    println!("password: {password}");
    println!();

    let residents = tokio::spawn(residents(
        runtime.fleet.clone(),
        options.resident_rate,
        fleet_file.gates.iter().map(|g| g.id.clone()).collect(),
    ));
    let chaos = if options.no_chaos {
        None
    } else {
        let scenario = Scenario::parse(CHAOS).context("the demo's chaos scenario")?;
        Some(run_scenario(&farm, scenario).context("starting the chaos scenario")?)
    };

    let reason = match options.run_for {
        Some(d) => tokio::select! {
            s = signals.recv() => s,
            _ = tokio::time::sleep(d) => "time up",
        },
        None => signals.recv().await,
    };
    println!("\n{reason}: stopping the demo");
    residents.abort();
    if let Some(c) = &chaos {
        c.stop();
    }
    let _ = stop_http.send(());
    let _ = server.await;
    runtime.shutdown(config.shutdown.timeout()).await;
    // Aborting only asks: the printer may be mid-line on another thread. Waiting for it to
    // end keeps its last lines before the farewell.
    printer.abort();
    let _ = printer.await;
    farm.shutdown().await;
    println!("demo stopped cleanly");
    Ok(())
}

fn banner(farm: &Farm, fleet_path: &Path, fleet: &FleetFile, config: &Config, previous: usize) {
    println!("Gatehouse demo");
    println!("==============");
    println!("Simulated controllers (Modbus TCP, try them with mbpoll):");
    for c in farm.controllers() {
        println!(
            "  {:<8} {:<16} profile {:<11} units {:?}",
            c.name(),
            c.local_addr().to_string(),
            c.profile().id,
            c.units()
        );
    }
    println!(
        "Runtime: {} gates on {} controllers, fleet file {}",
        fleet.gates.len(),
        fleet.controllers.len(),
        fleet_path.display()
    );
    let history = if previous > 0 {
        format!("history of {previous} gates kept from earlier runs")
    } else {
        "new".to_string()
    };
    println!(
        "Database: {} ({history})",
        gatehouse_adapters::store::redact(&config.database.url)
    );
    println!(
        "Mail:     {} (maintenance due/overdue and faults, to {DEMO_EMAIL})",
        match &config.mail.smtp_url {
            Some(_) => "through the configured SMTP server".to_string(),
            None => format!(".eml files in {}", config.data.dir.join("outbox").display()),
        }
    );
    println!("Gate events print below as they are committed.");
    println!("Residents open and close gates every few seconds; a chaos scenario injects faults.");
    println!("Press Ctrl-C to stop.\n");
}

/// Simulated residents: every few seconds someone taps open on a closed gate or close on an
/// open one, and sees how fast the controller confirmed it.
async fn residents(fleet: Fleet, rate: f64, gates: Vec<GateId>) {
    if rate <= 0.0 {
        return;
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    loop {
        let wait = period.mul_f64(rng.random_range(0.5..1.5));
        tokio::time::sleep(wait).await;
        let Some(gate) = gates.choose(&mut rng).cloned() else {
            return;
        };
        let Ok(view) = fleet.view(&gate).await else {
            continue;
        };
        let action = match view.snapshot.state {
            GateState::Closed => Action::Open,
            GateState::Open if !view.snapshot.flags.held_open => Action::Close,
            GateState::Fault => Action::Reset,
            _ => continue,
        };
        let sent = Instant::now();
        let sink: AckSink = Arc::new(move |gate: &GateId, ack| {
            let what = if ack.status == CommandStatus::Accepted {
                format!(
                    "{}: accepted in {:.2} ms",
                    action.as_str(),
                    sent.elapsed().as_secs_f64() * 1000.0
                )
            } else {
                // The resident hears the outcome once it is durable.
                format!(
                    "{}: told {}",
                    action.as_str(),
                    watch::status_text(ack.status)
                )
            };
            println!(
                "{} {:<12}       {:<44} [resident {}]",
                watch::clock(wall_ms()),
                gate.as_str(),
                what,
                ack.id
            );
        });
        let _ = fleet.command(&gate, CommandId::random(), action, Some(sink));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_fleet_file_is_valid() {
        let profiles = gatehouse_adapters::profile::ProfileSet::builtin().unwrap();
        let f = FleetFile::parse("demo", &fleet_toml(&[15020, 15021, 15022]), &profiles).unwrap();
        assert_eq!(f.gates.len(), 12);
        assert_eq!(f.controller_specs(&profiles).len(), 3);
    }

    #[test]
    fn the_chaos_scenario_parses() {
        Scenario::parse(CHAOS).unwrap();
    }
}
