//! What the cross-crate tests and the benchmark share.

use std::process::Command;

pub mod cluster;
pub mod drive;
pub mod http;
pub mod procs;
pub mod redis;
pub mod rig;
pub mod s3;
pub mod stack;
pub mod wsclient;

use anyhow::{Context, bail};

/// The PostgreSQL server scratch databases are made on: `GATEHOUSE_TEST_PG_URL`, or the local
/// one (`.ci/run` starts it).
pub fn pg_server() -> String {
    std::env::var("GATEHOUSE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// A fresh database on a PostgreSQL server, dropped (connections and all) on drop, so that
/// tests and benchmarks run in parallel without touching each other's data.
pub struct ScratchDatabase {
    server: String,
    name: String,
}

impl ScratchDatabase {
    /// Creates `{prefix}_{uuid}` on `server` (a URL without a database name).
    pub fn create(server: &str, prefix: &str) -> anyhow::Result<ScratchDatabase> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let out = Command::new("psql")
            .arg(format!("{server}/postgres"))
            .args(["-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("CREATE DATABASE {name}"))
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "cannot create a database on {server} (is PostgreSQL running? .ci/run starts it: pg_ctlcluster --skip-systemctl-redirect 15 main start): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(ScratchDatabase {
            server: server.to_string(),
            name,
        })
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(format!("{}/postgres", self.server))
            .arg("-c")
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}
