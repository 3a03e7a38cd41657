//! Runtime configuration: a TOML file plus `GATEHOUSE_SECTION__KEY` environment overrides
//! (double underscore between levels), validated with errors that name the bad key and where
//! it came from. The fleet (sites, controllers, gates) is not here: see [`crate::fleet_file`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The environment prefix for overrides.
pub const ENV_PREFIX: &str = "GATEHOUSE_";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default)]
    pub fleet: FleetConfig,
    #[serde(default)]
    pub profiles: ProfilesConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub websocket: WebSocketConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub eventlog: EventLogConfig,
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    #[serde(default)]
    pub mail: MailConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub reports: ReportsConfig,
    /// Several nodes on one PostgreSQL (absent: this node runs alone).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: this node is one of several on one PostgreSQL database; each controller is
/// driven by the node holding its lease.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name among the others: a slug, unique in the cluster.
    pub node_id: String,
    /// The Redis that carries the live bus between nodes (`redis://[:password@]host:port[/db]`):
    /// gate events to every node's sessions, commands to the node that drives the gate,
    /// access-change notices. Required: without it a node's API would see only its own gates.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// How long a lease lasts without renewal: a dead node's controllers are driven again by
    /// the others within about this long. Renewed every tenth of it.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// The local address controller connections start from (so that controllers and
    /// firewalls can tell the nodes apart).
    #[serde(default)]
    pub bind: Option<std::net::IpAddr>,
}

fn default_lease_ttl_ms() -> u64 {
    5_000
}

/// Where files go (reports, maintenance attachments): S3 when `s3_bucket` is set, else
/// `<data dir>/blobs/`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// A custom endpoint (MinIO, s3s, Ceph): `https://s3.example.org`; none: AWS.
    pub s3_endpoint: Option<String>,
    pub s3_bucket: Option<String>,
    pub s3_region: String,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual hosts.
    pub s3_path_style: bool,
    /// Credentials; none: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub s3_access_key: Option<String>,
    pub s3_secret_key: Option<String>,
    /// The largest maintenance attachment, in MiB.
    pub max_attachment_mb: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            s3_endpoint: None,
            s3_bucket: None,
            s3_region: "us-east-1".into(),
            s3_path_style: false,
            s3_access_key: None,
            s3_secret_key: None,
            max_attachment_mb: 25,
        }
    }
}

/// Reports.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportsConfig {
    /// At the start of each month, queue each site's previous month (events as CSV,
    /// maintenance as PDF).
    pub monthly: bool,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        Self { monthly: true }
    }
}

/// Email (notifications). Without `smtp_url`, messages are written as `.eml` files to
/// `<data dir>/outbox/`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// `smtps://user:pass@host:465` (implicit TLS) or `smtp://user:pass@host:587` (STARTTLS,
    /// required); `smtp://host:25?tls=none` only for a relay on this host.
    pub smtp_url: Option<String>,
    /// The sender.
    pub from: String,
    /// Extra trust roots (PEM) for the SMTP server's certificate.
    pub ca_file: Option<PathBuf>,
    /// One message per alert subject and recipient within this window.
    pub dedupe_window_s: u64,
    /// The first retry after a transient failure, doubling up to 30 minutes.
    pub first_retry_s: u64,
}

impl Default for MailConfig {
    fn default() -> Self {
        Self {
            smtp_url: None,
            from: "Gatehouse <gatehouse@localhost.localdomain>".into(),
            ca_file: None,
            dedupe_window_s: 900,
            first_retry_s: 30,
        }
    }
}

/// Maintenance plans (the scheduler).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Seconds between two assessments of every gate against its plans (how late a due or
    /// overdue event may be raised after a gate crosses its margin).
    pub check_interval_s: u64,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            check_interval_s: 60,
        }
    }
}

/// The event log (group-committed appends of gate events and audit records).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventLogConfig {
    /// Entries queued for the writer before gate actors wait for it (backpressure while the
    /// database is slow or away; each entry is about 1 KiB).
    pub queue: usize,
}

impl Default for EventLogConfig {
    fn default() -> Self {
        Self {
            queue: gatehouse_actors::tree::eventlog::QUEUE_CAPACITY,
        }
    }
}

/// Prometheus metrics at `/metrics` (`docs/metrics.md`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `false`: no recorder is installed, every instrument is a no-op, `/metrics` is 404.
    pub enabled: bool,
    /// A bearer token that `/metrics` then requires.
    pub token: Option<String>,
    /// Per-controller series (`gatehouse_link_up`) only up to this many controllers.
    pub per_controller_limit: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            token: None,
            per_controller_limit: 256,
        }
    }
}

/// Authentication settings.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The Ed25519 private key (PKCS#8 PEM) that signs access tokens. Unset: the key in the
    /// data directory (`jwt-ed25519.pem`), generated on first run. Relative paths are relative
    /// to the configuration file.
    #[serde(default)]
    pub jwt_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where the API listens (plain HTTP: TLS ends at the reverse proxy).
    #[serde(default = "default_listen")]
    pub listen: std::net::SocketAddr,
    /// Origins allowed to call the API from a browser; empty denies cross-origin calls.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Reverse proxies whose `X-Forwarded-For` is believed (rate limits, audit).
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Serve the operator console's files from this directory instead of the copy built in
    /// (for working on the page). Relative paths are relative to the working directory.
    #[serde(default)]
    pub console_dir: Option<PathBuf>,
    /// The base of links in emails (`https://gates.example.org`); none: emails carry no links.
    #[serde(default)]
    pub public_url: Option<String>,
}

fn default_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            cors_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            console_dir: None,
            public_url: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (embedded, the default) or `postgres://USER@HOST:PORT/DB`.
    #[serde(default = "default_database_url")]
    pub url: String,
    /// Apply pending migrations at boot (otherwise `gatehouse migrate` does it).
    #[serde(default = "default_true")]
    pub migrate_at_boot: bool,
}

fn default_database_url() -> String {
    "sqlite://./data/gatehouse.db".into()
}

fn default_true() -> bool {
    true
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: default_database_url(),
            migrate_at_boot: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Where durable state lives (the SQLite database, generated keys, the mail outbox).
    #[serde(default = "default_data_dir")]
    pub dir: PathBuf,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dir: default_data_dir(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The fleet file (sites, controllers, gates). Relative paths are relative to the
    /// configuration file.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilesConfig {
    /// Extra register profiles (`*.toml`, named by file stem), on top of the built-in ones.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter (`info`, `gatehouse=debug,warn`); `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long a graceful shutdown may take before actors are killed.
    #[serde(default = "default_shutdown_ms")]
    pub timeout_ms: u64,
}

fn default_shutdown_ms() -> u64 {
    10_000
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            timeout_ms: default_shutdown_ms(),
        }
    }
}

impl ShutdownConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// WebSocket session limits (`docs/websocket-protocol.md`, "Limits and timings").
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// The first message must be `auth` within this many seconds.
    pub auth_timeout_s: u64,
    /// A session that receives nothing for this many seconds is closed with 4408.
    pub idle_timeout_s: u64,
    /// A write to a client that makes no progress for this many seconds closes it with 4509.
    pub write_stall_s: u64,
    /// The largest frame a client may send (4413 beyond).
    pub max_frame_bytes: usize,
    /// Frames per second a client may send, and the burst (4429 beyond).
    pub frames_per_second: u32,
    pub frame_burst: u32,
    /// Gates one session may follow.
    pub max_subscriptions: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        let d = gatehouse_api::ws::WsConfig::default();
        Self {
            auth_timeout_s: d.auth_timeout.as_secs(),
            idle_timeout_s: d.idle_timeout.as_secs(),
            write_stall_s: d.write_stall.as_secs(),
            max_frame_bytes: d.max_frame_bytes,
            frames_per_second: d.frames_per_second,
            frame_burst: d.frame_burst,
            max_subscriptions: d.max_subscriptions,
        }
    }
}

impl WebSocketConfig {
    /// The session layer's settings.
    pub fn sessions(&self) -> gatehouse_api::ws::WsConfig {
        gatehouse_api::ws::WsConfig {
            auth_timeout: Duration::from_secs(self.auth_timeout_s),
            idle_timeout: Duration::from_secs(self.idle_timeout_s),
            write_stall: Duration::from_secs(self.write_stall_s),
            max_frame_bytes: self.max_frame_bytes,
            frames_per_second: self.frames_per_second,
            frame_burst: self.frame_burst,
            max_subscriptions: self.max_subscriptions,
            ..gatehouse_api::ws::WsConfig::default()
        }
    }
}

/// A configuration that cannot be used, naming the key and its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration {source_name}: {key}: {message}")]
pub struct ConfigError {
    /// The file, or the environment variable, the bad value came from.
    pub source_name: String,
    pub key: String,
    pub message: String,
}

impl Config {
    /// Loads `file` (if any), applies the `GATEHOUSE_*` variables from `env`, validates.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let file_name = file.map_or("(defaults)".to_string(), |p| p.display().to_string());
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    source_name: file_name.clone(),
                    key: "(file)".into(),
                    message: e.to_string(),
                })?;
                text.parse::<toml::Table>().map_err(|e| ConfigError {
                    source_name: file_name.clone(),
                    key: "(file)".into(),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };

        // Which environment variable set which key, to name it in errors.
        let mut from_env: BTreeMap<String, String> = BTreeMap::new();
        let all: Vec<(String, String)> = env.into_iter().collect();
        // Only `GATEHOUSE_SECTION__KEY` is configuration (CONTRACTS.md). Other `GATEHOUSE_*`
        // variables are someone else's: Kubernetes sets `GATEHOUSE_PORT=tcp://…`,
        // `GATEHOUSE_SERVICE_HOST` and friends in every pod of a namespace with a Service
        // named gatehouse.
        type Vars = Vec<(String, String)>;
        let (mut env, ignored): (Vars, Vars) = all
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .cloned()
            .partition(|(k, _)| k[ENV_PREFIX.len()..].contains("__"));
        for (var, _) in &ignored {
            tracing::debug!(variable = %var, "not a GATEHOUSE_SECTION__KEY variable; ignored");
        }
        // The conventional DATABASE_URL, unless the specific variable is set.
        if !env.iter().any(|(k, _)| k == "GATEHOUSE_DATABASE__URL")
            && let Some((_, url)) = all.iter().find(|(k, _)| k == "DATABASE_URL")
        {
            env.push(("GATEHOUSE_DATABASE__URL".into(), url.clone()));
        }
        env.sort();
        for (var, raw) in env {
            let path: Vec<String> = var[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigError {
                    source_name: format!("environment variable {var}"),
                    key: path.join("."),
                    message: "expected GATEHOUSE_SECTION__KEY".into(),
                });
            }
            set_path(&mut table, &path, parse_env_value(&raw)).map_err(|message| ConfigError {
                source_name: format!("environment variable {var}"),
                key: path.join("."),
                message,
            })?;
            from_env.insert(path.join("."), var);
        }

        let mut config: Config =
            gatehouse_adapters::toml_text::from_value(toml::Value::Table(table)).map_err(|e| {
                let source_name = from_env
                    .iter()
                    .find(|(k, _)| e.key.starts_with(k.as_str()) || k.starts_with(&e.key))
                    .map_or(file_name.clone(), |(_, var)| {
                        format!("environment variable {var}")
                    });
                ConfigError {
                    source_name,
                    key: e.key,
                    message: e.message,
                }
            })?;

        if let (Some(fleet), Some(base)) = (&config.fleet.file, file.and_then(Path::parent))
            && fleet.is_relative()
        {
            config.fleet.file = Some(base.join(fleet));
        }
        if let (Some(dir), Some(base)) = (&config.profiles.dir, file.and_then(Path::parent))
            && dir.is_relative()
        {
            config.profiles.dir = Some(base.join(dir));
        }
        if let (Some(key), Some(base)) = (&config.auth.jwt_key_file, file.and_then(Path::parent))
            && key.is_relative()
        {
            config.auth.jwt_key_file = Some(base.join(key));
        }
        if let (Some(ca), Some(base)) = (&config.mail.ca_file, file.and_then(Path::parent))
            && ca.is_relative()
        {
            config.mail.ca_file = Some(base.join(ca));
        }
        config.validate(&file_name)?;
        Ok(config)
    }

    fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let err = |key: &str, message: &str| ConfigError {
            source_name: source_name.into(),
            key: key.into(),
            message: message.into(),
        };
        if !(self.database.url.starts_with("sqlite://")
            || self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            return Err(err(
                "database.url",
                "must start with sqlite:// or postgres://",
            ));
        }
        if self.data.dir.as_os_str().is_empty() {
            return Err(err("data.dir", "must not be empty"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(err(
                "log.level",
                "is not a valid filter (try \"info\" or \"gatehouse=debug,warn\")",
            ));
        }
        const RESERVED: [u16; 6] = [5432, 3306, 6379, 5672, 1883, 4222];
        if RESERVED.contains(&self.http.listen.port()) {
            return Err(err(
                "http.listen",
                "is a well-known service port (PostgreSQL, MySQL, Redis, ...); pick another",
            ));
        }
        if let Some(token) = &self.metrics.token
            && (token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(err(
                "metrics.token",
                "must be at least 16 printable characters without spaces",
            ));
        }
        if let Some(url) = &self.http.public_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(err(
                "http.public_url",
                "must start with https:// (or http://)",
            ));
        }
        if !(1..=10_240).contains(&self.storage.max_attachment_mb) {
            return Err(err(
                "storage.max_attachment_mb",
                "must be between 1 and 10240",
            ));
        }
        if self.storage.s3_bucket.as_deref().is_some_and(str::is_empty) {
            return Err(err("storage.s3_bucket", "must not be empty"));
        }
        if !(1..=86_400).contains(&self.mail.dedupe_window_s) {
            return Err(err("mail.dedupe_window_s", "must be between 1 and 86400"));
        }
        if !(1..=3_600).contains(&self.mail.first_retry_s) {
            return Err(err("mail.first_retry_s", "must be between 1 and 3600"));
        }
        if let Err(why) = gatehouse_adapters::mail::parse_from(&self.mail.from) {
            return Err(err("mail.from", &why.why));
        }
        if !(1..=86_400).contains(&self.maintenance.check_interval_s) {
            return Err(err(
                "maintenance.check_interval_s",
                "must be between 1 and 86400",
            ));
        }
        if !(16..=1_048_576).contains(&self.eventlog.queue) {
            return Err(err("eventlog.queue", "must be between 16 and 1048576"));
        }
        if !(1..=100_000).contains(&self.metrics.per_controller_limit) {
            return Err(err(
                "metrics.per_controller_limit",
                "must be between 1 and 100000",
            ));
        }
        if let Some(cluster) = &self.cluster {
            if let Err(e) = gatehouse_actors::ids::NodeId::new(&cluster.node_id) {
                return Err(err("cluster.node_id", &e.to_string()));
            }
            if !(1_000..=60_000).contains(&cluster.lease_ttl_ms) {
                return Err(err(
                    "cluster.lease_ttl_ms",
                    "must be between 1000 and 60000",
                ));
            }
            if !(self.database.url.starts_with("postgres://")
                || self.database.url.starts_with("postgresql://"))
            {
                return Err(err(
                    "cluster",
                    "needs PostgreSQL (database.url = \"postgres://...\"): the nodes share its leases",
                ));
            }
            match cluster.redis_url.as_deref() {
                None => {
                    return Err(err(
                        "cluster.redis_url",
                        "is required in a cluster: the nodes' live bus (redis://host:port)",
                    ));
                }
                Some(url) if url.starts_with("rediss://") => {
                    return Err(err(
                        "cluster.redis_url",
                        "TLS to Redis (rediss://) is not built in: reach Redis over a private network or a local TLS tunnel, with redis://",
                    ));
                }
                Some(url) if !url.starts_with("redis://") => {
                    return Err(err("cluster.redis_url", "must start with redis://"));
                }
                Some(_) => {}
            }
            if self.auth.jwt_key_file.is_none() {
                return Err(err(
                    "auth.jwt_key_file",
                    "is required in a cluster: every node signs and checks access tokens with the \
                     same key, so that a token from one node is good on all (an Ed25519 PKCS#8 PEM \
                     file, the same on every node: for example the one a node alone generates in \
                     its data directory, jwt-ed25519.pem)",
                ));
            }
        }
        if !(100..=300_000).contains(&self.shutdown.timeout_ms) {
            return Err(err("shutdown.timeout_ms", "must be between 100 and 300000"));
        }
        let ws = &self.websocket;
        let ranges: [(&str, u64, u64, u64); 7] = [
            ("websocket.auth_timeout_s", ws.auth_timeout_s, 1, 120),
            ("websocket.idle_timeout_s", ws.idle_timeout_s, 5, 3_600),
            ("websocket.write_stall_s", ws.write_stall_s, 1, 120),
            (
                "websocket.max_frame_bytes",
                ws.max_frame_bytes as u64,
                1_024,
                1_048_576,
            ),
            (
                "websocket.frames_per_second",
                u64::from(ws.frames_per_second),
                1,
                10_000,
            ),
            (
                "websocket.frame_burst",
                u64::from(ws.frame_burst),
                1,
                100_000,
            ),
            (
                "websocket.max_subscriptions",
                ws.max_subscriptions as u64,
                1,
                100_000,
            ),
        ];
        for (key, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return Err(err(key, &format!("must be between {low} and {high}")));
            }
        }
        Ok(())
    }
}

/// An environment value is read as a TOML value when it parses as one (`5`, `true`,
/// `["a"]`), otherwise as a plain string (`./data`, `info`).
fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut t = table;
    for p in parents {
        t = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("{p} is not a section"))?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.data.dir, PathBuf::from("./data"));
        assert_eq!(c.log.level, "info");
        assert_eq!(c.fleet.file, None);
    }

    #[test]
    fn environment_overrides_the_file_with_double_underscores() {
        let (_d, path) = write("[log]\nlevel = \"debug\"\n[shutdown]\ntimeout_ms = 2000\n");
        let c = Config::load(
            Some(&path),
            env(&[
                ("GATEHOUSE_LOG__LEVEL", "warn"),
                ("GATEHOUSE_SHUTDOWN__TIMEOUT_MS", "3000"),
                ("GATEHOUSE_DATA__DIR", "/var/lib/gatehouse"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.log.level, "warn");
        assert_eq!(c.shutdown.timeout_ms, 3000);
        assert_eq!(c.data.dir, PathBuf::from("/var/lib/gatehouse"));
    }

    #[test]
    fn database_url_defaults_to_embedded_sqlite_and_honours_database_url() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.database.url, "sqlite://./data/gatehouse.db");
        let c = Config::load(None, env(&[("DATABASE_URL", "postgres://db/gh")])).unwrap();
        assert_eq!(c.database.url, "postgres://db/gh");
        let c = Config::load(
            None,
            env(&[
                ("DATABASE_URL", "postgres://db/gh"),
                ("GATEHOUSE_DATABASE__URL", "postgres://other/gh"),
            ]),
        )
        .unwrap();
        assert_eq!(c.database.url, "postgres://other/gh");
        let e = Config::load(None, env(&[("DATABASE_URL", "mysql://x")])).unwrap_err();
        assert_eq!(e.key, "database.url");
    }

    #[test]
    fn a_fleet_file_path_is_relative_to_the_config_file() {
        let (d, path) = write("[fleet]\nfile = \"fleet.toml\"\n");
        let c = Config::load(Some(&path), env(&[])).unwrap();
        assert_eq!(c.fleet.file, Some(d.path().join("fleet.toml")));
    }

    #[test]
    fn a_token_key_file_is_relative_to_the_config_file() {
        let (d, path) = write("[auth]\njwt_key_file = \"keys/jwt.pem\"\n");
        let c = Config::load(Some(&path), env(&[])).unwrap();
        assert_eq!(c.auth.jwt_key_file, Some(d.path().join("keys/jwt.pem")));
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(
            c.auth.jwt_key_file, None,
            "the data directory's key by default"
        );
    }

    #[test]
    fn errors_name_the_key_and_its_source() {
        let (_d, path) = write("[log]\nlevle = \"debug\"\n");
        let e = Config::load(Some(&path), env(&[])).unwrap_err();
        assert_eq!(e.key, "log.levle");
        assert!(e.message.contains("unknown field"), "{e}");
        assert!(e.source_name.ends_with("gatehouse.toml"));

        let e = Config::load(None, env(&[("GATEHOUSE_SHUTDOWN__TIMEOUT_MS", "soon")])).unwrap_err();
        assert_eq!(e.key, "shutdown.timeout_ms");
        assert_eq!(
            e.source_name,
            "environment variable GATEHOUSE_SHUTDOWN__TIMEOUT_MS"
        );

        let e = Config::load(None, env(&[("GATEHOUSE_SHUTDOWN__TIMEOUT_MS", "5")])).unwrap_err();
        assert_eq!(e.key, "shutdown.timeout_ms");
        assert!(e.message.contains("between"), "{e}");

        let e = Config::load(None, env(&[("GATEHOUSE_FLET__FILE", "x.toml")])).unwrap_err();
        assert!(e.message.contains("flet"), "{e}");

        // An unknown key in a known section is still named.
        let e = Config::load(None, env(&[("GATEHOUSE_HTTP__LISTN", "0.0.0.0:80")])).unwrap_err();
        assert_eq!(e.key, "http.listn", "{e}");
    }

    #[test]
    fn a_cluster_needs_a_node_id_postgresql_a_sane_ttl_and_a_shared_signing_key() {
        let pg = "[database]\nurl = \"postgres://db.internal/gatehouse\"\n\
                  [auth]\njwt_key_file = \"/etc/gatehouse/jwt.pem\"\n";
        let (_d, path) = write(&format!(
            "{pg}[cluster]\nnode_id = \"n1\"\nbind = \"10.0.0.5\"\nredis_url = \"redis://r:6379\"\n"
        ));
        let config = Config::load(Some(&path), env(&[])).unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.lease_ttl_ms, 5_000);
        assert_eq!(cluster.bind, Some("10.0.0.5".parse().unwrap()));
        assert!(
            Config::load(None, env(&[])).unwrap().cluster.is_none(),
            "alone by default"
        );

        for (text, key) in [
            (
                format!("{pg}[cluster]\nnode_id = \"Node 1\"\n"),
                "cluster.node_id",
            ),
            (
                format!("{pg}[cluster]\nnode_id = \"n1\"\nlease_ttl_ms = 100\n"),
                "cluster.lease_ttl_ms",
            ),
            (
                format!("{pg}[cluster]\nnode_id = \"n1\"\nredis_url = \"http://r\"\n"),
                "cluster.redis_url",
            ),
            ("[cluster]\nnode_id = \"n1\"\n".to_owned(), "cluster"),
            (
                format!("{pg}[cluster]\nnode_id = \"n1\"\n"),
                "cluster.redis_url",
            ),
            (
                format!("{pg}[cluster]\nnode_id = \"n1\"\nredis_url = \"rediss://r\"\n"),
                "cluster.redis_url",
            ),
        ] {
            let (_d, path) = write(&text);
            let e = Config::load(Some(&path), env(&[])).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
        // Without a shared signing key, a token from one node would be refused by the others.
        let (_d, path) = write(
            "[database]\nurl = \"postgres://db.internal/gatehouse\"\n\
             [cluster]\nnode_id = \"n1\"\nredis_url = \"redis://r:6379\"\n",
        );
        let e = Config::load(Some(&path), env(&[])).unwrap_err();
        assert_eq!(e.key, "auth.jwt_key_file", "{e}");
        let (_d, path) = write(&format!("{pg}[cluster]\nbind = \"10.0.0.5\"\n"));
        let e = Config::load(Some(&path), env(&[])).unwrap_err();
        assert!(e.message.contains("node_id"), "{e}");
    }

    #[test]
    fn kubernetes_service_link_variables_are_not_configuration() {
        let config = Config::load(
            None,
            env(&[
                ("GATEHOUSE_PORT", "tcp://10.96.0.12:8080"),
                ("GATEHOUSE_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
                ("GATEHOUSE_PORT_8080_TCP_ADDR", "10.96.0.12"),
                ("GATEHOUSE_PORT_8080_TCP_PORT", "8080"),
                ("GATEHOUSE_PORT_8080_TCP_PROTO", "tcp"),
                ("GATEHOUSE_SERVICE_HOST", "10.96.0.12"),
                ("GATEHOUSE_SERVICE_PORT", "8080"),
                ("GATEHOUSE_LOG__LEVEL", "warn"),
            ]),
        )
        .expect("service-link variables are ignored");
        assert_eq!(config.log.level, "warn", "real configuration still applies");
    }

    #[test]
    fn websocket_limits_come_from_the_file_and_the_environment_within_bounds() {
        let (_d, path) = write(
            "[websocket]
idle_timeout_s = 90
",
        );
        let c = Config::load(
            Some(&path),
            env(&[("GATEHOUSE_WEBSOCKET__MAX_FRAME_BYTES", "8192")]),
        )
        .unwrap();
        let ws = c.websocket.sessions();
        assert_eq!(ws.idle_timeout, Duration::from_secs(90));
        assert_eq!(ws.max_frame_bytes, 8192);
        assert_eq!(
            ws.auth_timeout,
            gatehouse_api::ws::WsConfig::default().auth_timeout,
            "unset keys keep the defaults"
        );
        let e =
            Config::load(None, env(&[("GATEHOUSE_WEBSOCKET__IDLE_TIMEOUT_S", "0")])).unwrap_err();
        assert_eq!(e.key, "websocket.idle_timeout_s");
        assert!(e.message.contains("between"), "{e}");
    }
}
