//! Isolated PostgreSQL for the tests: a primary and one streaming replica (a hot standby) on
//! free loopback ports, data under `target/services/postgres-<pid>/`, started with the
//! `state-test-servers` harness the tests also use for throwaway servers of their own.

use std::time::{Duration, Instant};

use anyhow::Context;
use state_test_servers::postgres::PostgresServer;

use crate::proc::{free_port, register_child, unregister_child};
use crate::services::Started;

/// A started server whose postmaster the signal handler kills on SIGINT / SIGTERM / SIGHUP.
struct Registered(PostgresServer);

impl Registered {
    fn start(mut server: PostgresServer) -> anyhow::Result<Self> {
        server.start()?;
        if let Some(pid) = server.pid() {
            register_child(pid);
        }
        Ok(Self(server))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let pid = self.0.pid();
        eprintln!("xtask: stopping postgres :{}", self.0.port());
        self.0.stop();
        if let Some(pid) = pid {
            unregister_child(pid);
        }
    }
}

/// Starts a primary and a streaming replica and waits until the replica streams; exports
/// `STATE_POSTGRES_URL` (the primary), `STATE_POSTGRES_REPLICA_URLS` (comma-separated) and
/// `STATE_POSTGRES_BIN_DIR` (so tests' throwaway servers run the same binaries).
pub(crate) fn start() -> anyhow::Result<Started> {
    let (primary, replica, dir) = start_pair("postgres", None)?;
    let bin_dir = primary.0.binaries().bin_dir().display().to_string();
    Ok(Started {
        env: vec![
            ("STATE_POSTGRES_URL".into(), primary.0.url()),
            ("STATE_POSTGRES_REPLICA_URLS".into(), replica.0.url()),
            ("STATE_POSTGRES_BIN_DIR".into(), bin_dir),
        ],
        stop: Box::new(move || {
            drop(replica);
            drop(primary);
            let _ = std::fs::remove_dir_all(&dir);
        }),
    })
}

/// Starts a second primary + streaming replica with TLS on (certificates from `certs`);
/// plain connections are accepted too, so tests can compare. Exports
/// `STATE_POSTGRES_TLS_URL` and `STATE_POSTGRES_TLS_REPLICA_URLS`.
pub(crate) fn start_tls(certs: &state_test_servers::tls::TestCerts) -> anyhow::Result<Started> {
    let (primary, replica, dir) = start_pair("postgres-tls", Some(certs))?;
    Ok(Started {
        env: vec![
            ("STATE_POSTGRES_TLS_URL".into(), primary.0.url()),
            ("STATE_POSTGRES_TLS_REPLICA_URLS".into(), replica.0.url()),
        ],
        stop: Box::new(move || {
            drop(replica);
            drop(primary);
            let _ = std::fs::remove_dir_all(&dir);
        }),
    })
}

fn start_pair(
    name: &str,
    tls: Option<&state_test_servers::tls::TestCerts>,
) -> anyhow::Result<(Registered, Registered, std::path::PathBuf)> {
    let services = crate::cmd::workspace_root().join("target/services");
    state_test_servers::remove_stale_dirs(&services, &format!("{name}-"))
        .with_context(|| format!("removing stale target/services/{name}-* directories"))?;
    let dir = services.join(format!("{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let began = Instant::now();
    let primary = PostgresServer::init_primary(&dir.join("primary"), free_port(0)?)?;
    if let Some(certs) = tls {
        primary.enable_tls(certs)?;
    }
    let primary = Registered::start(primary)?;
    // Picked while the primary listens, so it cannot be the primary's port.
    let replica = Registered::start(PostgresServer::init_replica(
        &primary.0,
        &dir.join("replica"),
        free_port(0)?,
    )?)?;
    primary.0.wait_replica_streaming(Duration::from_secs(30))?;
    eprintln!(
        "xtask: {name} primary on 127.0.0.1:{}, streaming replica on 127.0.0.1:{} (ready in \
         {:.1?})",
        primary.0.port(),
        replica.0.port(),
        began.elapsed()
    );
    Ok((primary, replica, dir))
}
