//! Three `gatehouse serve` nodes of one cluster, for the cluster test and benchmark: their
//! configuration files (each with its own data directory and its own loopback source address
//! for controller connections), the fleet and one admin imported once before any starts, the
//! nodes started and logged in, and the live leases read from the store.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gatehouse_actors::cluster::LeaseStore;
use gatehouse_adapters::store::Store;

use crate::http::Http;
use crate::procs::{Proc, add_user, bin, serve_api};

pub const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// The admin every node is logged in as.
pub const ADMIN: (&str, &str) = ("chief", "chief-password-1");

/// Bounds every wait here.
const WAIT: Duration = Duration::from_secs(60);

/// Node `n<i>`'s configuration file in `dir`: its own data directory, the cluster's one token
/// signing key, and its own loopback address for controller connections (`127.0.0.1<i>`), so
/// that the simulator can tell the writers apart.
pub fn node_config(dir: &Path, node: &str, database: &str, redis: &str, ttl_ms: u64) -> PathBuf {
    let data = dir.join(node);
    std::fs::create_dir_all(&data).expect("a data directory");
    // One token signing key for every node, as a cluster needs (created by the first call).
    let keys = dir.join("keys");
    gatehouse_api::auth::tokens::TokenKeys::load_or_create(&keys).expect("a signing key");
    let key = keys.join("jwt-ed25519.pem");
    let path = dir.join(format!("{node}.toml"));
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\n[database]\nurl = {database:?}\n\n\
             [data]\ndir = {:?}\n\n[auth]\njwt_key_file = {:?}\n\n\
             [cluster]\nnode_id = {node:?}\nlease_ttl_ms = {ttl_ms}\n\
             bind = \"127.0.0.1{}\"\nredis_url = {redis:?}\n",
            data.display().to_string(),
            key.display().to_string(),
            node.trim_start_matches('n'),
        ),
    )
    .expect("a configuration file");
    path
}

/// Writes every node's configuration into `dir`, then imports `fleet` (a fleet file's text)
/// and adds [`ADMIN`], once, through the first node's configuration.
pub fn prepare(dir: &Path, fleet: &str, database: &str, redis: &str, ttl_ms: u64) {
    std::fs::write(dir.join("fleet.toml"), fleet).expect("the fleet file");
    let configs: Vec<_> = NODES
        .iter()
        .map(|n| node_config(dir, n, database, redis, ttl_ms))
        .collect();
    let mut import = Proc::spawn(
        "gatehouse fleet import",
        Command::new(bin("gatehouse"))
            .args(["fleet", "import", "fleet.toml", "--config"])
            .arg(&configs[0])
            .current_dir(dir),
    );
    assert!(import.finish(WAIT).success(), "{}", import.transcript());
    add_user(dir, &configs[0], ADMIN.0, "admin", ADMIN.1);
}

/// A running node, logged in as [`ADMIN`].
pub struct Node {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub http: Http,
    pub token: String,
}

/// Starts node `name` from its configuration in `dir` ([`prepare`]).
pub async fn start(dir: &Path, name: &str) -> Node {
    let (proc, addr) = serve_api(dir, &dir.join(format!("{name}.toml")));
    let http = Http::new(addr, WAIT);
    let reply = http.login(ADMIN.0, ADMIN.1).await;
    assert_eq!(reply.status, 200, "{name}: {:?}", reply.body);
    let token = reply.body["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned();
    Node {
        proc,
        addr,
        http,
        token,
    }
}

/// The live leases: controllers by node.
pub async fn owners(store: &Store) -> BTreeMap<String, BTreeSet<String>> {
    let mut by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in store
        .leases()
        .await
        .expect("the leases")
        .into_iter()
        .filter(|l| l.left_ms > 0)
    {
        by.entry(l.node.to_string())
            .or_default()
            .insert(l.controller.to_string());
    }
    by
}
