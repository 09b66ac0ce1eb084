//! The servers tests need, started isolated on free loopback ports under `target/`.
//!
//! This is the seam the networked backends plug into: each one adds a [`Service`] (Redis
//! standalone, Redis Cluster, 3 standalone Redis shards, PostgreSQL primary + replica) to [`all`], and its start
//! function returns the environment variables its tests read (`STATE_REDIS_URL`, ...). A
//! variable already set in the environment points tests at an external server instead, and
//! the service is not started. The embedded backends (memory, sled) need no server.

use anyhow::bail;

/// A server the test suite needs.
pub(crate) struct Service {
    /// Short name shown by `cargo xtask services status`.
    pub(crate) name: &'static str,
    /// The variable that, when already set, points tests at an external server instead.
    pub(crate) env_var: &'static str,
    /// Starts the server; returns the variables to export and a stop function.
    pub(crate) start: fn() -> anyhow::Result<Started>,
}

/// A started server.
pub(crate) struct Started {
    pub(crate) env: Vec<(String, String)>,
    pub(crate) stop: Box<dyn FnOnce()>,
}

/// Every service the workspace's tests use.
pub(crate) fn all() -> Vec<Service> {
    vec![
        Service {
            name: "redis standalone",
            env_var: "STATE_REDIS_URL",
            start: crate::redis::start_standalone,
        },
        Service {
            name: "redis cluster (3 masters + 3 replicas)",
            env_var: "STATE_REDIS_CLUSTER_URLS",
            start: crate::redis::start_cluster,
        },
        Service {
            name: "redis shards (3 standalone servers)",
            env_var: "STATE_REDIS_SHARD_URLS",
            start: crate::redis::start_shards,
        },
        // With STATE_POSTGRES_URL set externally this is skipped; then also set
        // STATE_POSTGRES_REPLICA_URLS (comma-separated streaming replicas of that primary) for
        // the replica tests, and STATE_POSTGRES_BIN_DIR if the tests' own throwaway servers
        // should use binaries other than the ones found on PATH / under /usr/lib/postgresql.
        Service {
            name: "postgres primary + streaming replica",
            env_var: "STATE_POSTGRES_URL",
            start: crate::postgres::start,
        },
        // With STATE_TLS_CA_FILE set externally this is skipped; then also set
        // STATE_TLS_OTHER_CA_FILE, STATE_REDIS_TLS_URL, STATE_POSTGRES_TLS_URL and
        // STATE_POSTGRES_TLS_REPLICA_URLS.
        Service {
            name: "TLS: redis + postgres primary/replica (certificates made now)",
            env_var: "STATE_TLS_CA_FILE",
            start: start_tls,
        },
    ]
}

/// Generates a CA and a server certificate (never committed), then starts a TLS-only Redis
/// and a TLS-enabled PostgreSQL primary + replica with them.
fn start_tls() -> anyhow::Result<Started> {
    let dir = crate::cmd::workspace_root()
        .join("target/services")
        .join(format!("tls-{}", std::process::id()));
    let certs = state_test_servers::tls::TestCerts::generate(&dir)?;
    let redis = crate::redis::start_tls(&certs)?;
    let pg = crate::postgres::start_tls(&certs)?;
    let (stop_redis, stop_pg) = (redis.stop, pg.stop);
    let mut env = redis.env;
    env.extend(pg.env);
    env.push(("STATE_TLS_CA_FILE".into(), certs.ca.display().to_string()));
    env.push((
        "STATE_TLS_OTHER_CA_FILE".into(),
        certs.other_ca.display().to_string(),
    ));
    Ok(Started {
        env,
        stop: Box::new(move || {
            stop_redis();
            stop_pg();
            let _ = std::fs::remove_dir_all(&dir);
        }),
    })
}

/// Servers started for one test run; stopped by [`Running::stop`] or on drop (also when the
/// run fails or panics).
pub(crate) struct Running {
    env: Vec<(String, String)>,
    stops: Vec<Box<dyn FnOnce()>>,
}

impl Running {
    pub(crate) fn start_for_tests() -> anyhow::Result<Self> {
        let mut running = Running {
            env: Vec::new(),
            stops: Vec::new(),
        };
        for service in all() {
            if let Ok(value) = std::env::var(service.env_var) {
                eprintln!("xtask: {} from {}={value}", service.name, service.env_var);
                continue;
            }
            eprintln!("xtask: starting {}", service.name);
            let started = (service.start)()?;
            running.env.extend(started.env);
            running.stops.push(started.stop);
        }
        Ok(running)
    }

    pub(crate) fn env(&self) -> Vec<(String, String)> {
        self.env.clone()
    }

    pub(crate) fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        while let Some(stop) = self.stops.pop() {
            stop();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_all();
    }
}

pub(crate) fn command(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("status") | None => {
            for s in all() {
                let state = std::env::var(s.env_var).map_or_else(
                    |_| "started by `cargo xtask test` / `services up`".to_owned(),
                    |v| format!("external: {}={v}", s.env_var),
                );
                println!("{:<40} {state}", s.name);
            }
            Ok(())
        }
        Some("up") => {
            let running = Running::start_for_tests()?;
            let mut env = running.env();
            // Fault proxies for manual runs; `cargo xtask proxy` switches their faults.
            env.extend(crate::proxy::start(&env)?.env);
            let exports = env
                .iter()
                .map(|(k, v)| format!("export {k}={v}"))
                .collect::<Vec<_>>()
                .join("\n");
            let file = crate::cmd::workspace_root().join("target/services/env.sh");
            std::fs::create_dir_all(file.parent().expect("has a parent"))?;
            std::fs::write(&file, &exports)?;
            println!("{exports}");
            println!(
                "# also in {}; run tests in another shell after `source`-ing it.",
                file.display()
            );
            println!(
                "# fault proxies: STATE_REDIS_PROXY_URL, STATE_POSTGRES_PROXY_URL; switch with \
                 `cargo xtask proxy <redis|postgres> <fault>` (`cargo xtask proxy` for status)."
            );
            println!("# servers run until you press Enter or Ctrl-C.");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            running.stop();
            Ok(())
        }
        Some("down") => {
            println!(
                "`services up` runs in the foreground and stops its servers on Enter or Ctrl-C; nothing to do."
            );
            Ok(())
        }
        Some(other) => bail!("unknown `services {other}`; use up, down or status"),
    }
}
