//! `gatehouse`: the command line. Parses arguments, loads configuration, sets up logging and
//! hands over to the library; errors are printed with their context and exit non-zero.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gatehouse_actors::access::Role;
use gatehouse_runtime::config::Config;
use gatehouse_runtime::{demo, logging, users};

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Real-time supervision runtime for physical gates"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the simulator and the runtime together on loopback, with nothing to install.
    Demo {
        /// A configuration file (optional; the defaults are the embedded ones).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Stop after this many seconds instead of waiting for Ctrl-C.
        #[arg(long = "for", value_name = "SECONDS")]
        run_for: Option<u64>,
        /// Do not inject faults.
        #[arg(long)]
        no_chaos: bool,
        /// Resident commands per second, on average (0 for none).
        #[arg(long, default_value_t = demo::RESIDENT_RATE)]
        rate: f64,
    },
    /// Run a real site from a configuration file.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Apply pending database migrations.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Import or export the fleet (sites, controllers, gates) as a fleet file.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Manage user accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Check register profiles: the built-in ones, or the `*.toml` files in DIR.
    CheckProfiles { dir: Option<PathBuf> },
    /// Check a fleet file against the known profiles.
    CheckFleet {
        file: PathBuf,
        /// Extra profiles directory.
        #[arg(long)]
        profiles: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user. Without --password-stdin and without a terminal, a password is
    /// generated and printed once.
    Add {
        name: String,
        /// admin, operator, resident or viewer.
        #[arg(long, required_unless_present = "admin")]
        role: Option<String>,
        /// Shorthand for --role admin (the first account of a site).
        #[arg(long, conflicts_with = "role")]
        admin: bool,
        /// Read the password from one line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Where notifications reach the user.
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Bring the store in line with FILE: idempotent; keeps what the file leaves out unless
    /// --prune. Checked as a whole and applied in one transaction.
    Import {
        file: PathBuf,
        #[arg(long)]
        prune: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the store's fleet as a fleet file.
    Export {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(Config::load(path.map(PathBuf::as_path), std::env::vars())?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo {
            config,
            run_for,
            no_chaos,
            rate,
        } => {
            if !(0.0..=1000.0).contains(&rate) {
                anyhow::bail!("--rate must be between 0 and 1000 commands per second, got {rate}");
            }
            let mut config = load(config.as_ref())?;
            if std::env::var_os("RUST_LOG").is_none() && config.log.level == "info" {
                // The demo's own event lines carry the story; keep the logs to what matters.
                config.log.level = "warn,gatehouse_actors=info".into();
            }
            logging::init(&config.log);
            let options = demo::DemoOptions {
                run_for: run_for.map(Duration::from_secs),
                no_chaos,
                resident_rate: rate,
            };
            demo::run(config, options).await
        }
        Command::Serve { config } => {
            let config = load(Some(&config))?;
            logging::init(&config.log);
            gatehouse_runtime::serve(config).await
        }
        Command::Migrate { config } => {
            let config = load(config.as_ref())?;
            logging::init(&config.log);
            let applied = gatehouse_runtime::boot::migrate(&config).await?;
            println!("{applied} migration(s) applied");
            Ok(())
        }
        Command::Fleet { command } => match command {
            FleetCommand::Import {
                file,
                prune,
                config,
            } => {
                let config = load(config.as_ref())?;
                logging::init(&config.log);
                let profiles = gatehouse_runtime::load_profiles(&config)?;
                let fleet = gatehouse_runtime::fleet_file::FleetFile::load(&file, &profiles)?;
                let store = gatehouse_runtime::boot::open_store(&config).await?;
                let plan =
                    gatehouse_runtime::boot::import(&store, &fleet, prune, &profiles).await?;
                println!(
                    "imported {} sites, {} controllers, {} gates; {} removed",
                    fleet.sites.len(),
                    fleet.controllers.len(),
                    fleet.gates.len(),
                    plan.removed
                );
                Ok(())
            }
            FleetCommand::Export { config } => {
                let config = load(config.as_ref())?;
                logging::init(&config.log);
                let store = gatehouse_runtime::boot::open_store(&config).await?;
                print!("{}", gatehouse_runtime::boot::export(&store).await?);
                Ok(())
            }
        },
        Command::User {
            command:
                UserCommand::Add {
                    name,
                    role,
                    admin,
                    password_stdin,
                    email,
                    config,
                },
        } => {
            let config = load(config.as_ref())?;
            logging::init(&config.log);
            let role: Role = match (admin, role) {
                (true, _) => Role::Admin,
                (false, Some(r)) => r.parse().map_err(anyhow::Error::msg)?,
                (false, None) => anyhow::bail!("--role or --admin is required"),
            };
            let store = gatehouse_runtime::boot::open_store(&config).await?;
            let source = if password_stdin {
                users::PasswordSource::Stdin
            } else {
                users::PasswordSource::Interactive
            };
            let added = users::add(&store, &name, role, source, email.as_deref()).await?;
            println!("created user {name} ({role}), id {}", added.id);
            if let Some(password) = added.generated {
                println!("password: {password}");
                println!("(shown once; store it now)");
            }
            Ok(())
        }
        Command::CheckProfiles { dir } => {
            let mut profiles = gatehouse_adapters::profile::ProfileSet::builtin()?;
            if let Some(dir) = &dir {
                profiles.load_dir(dir)?;
            }
            for id in profiles.ids() {
                println!("ok  {id}");
            }
            Ok(())
        }
        Command::CheckFleet { file, profiles } => {
            let mut set = gatehouse_adapters::profile::ProfileSet::builtin()?;
            if let Some(dir) = &profiles {
                set.load_dir(dir)?;
            }
            let fleet = gatehouse_runtime::fleet_file::FleetFile::load(&file, &set)?;
            println!(
                "ok  {} sites, {} controllers, {} gates",
                fleet.sites.len(),
                fleet.controllers.len(),
                fleet.gates.len()
            );
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
