//! Isolated Redis servers for the tests: one standalone server, a Cluster of 3 masters with
//! one replica each, and 3 independent standalone servers used as client-side shards, on free
//! loopback ports, data under `target/services/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::proc::{Guarded, free_port, output, require_binary, wait_until};
use crate::services::Started;

fn binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let server = require_binary("redis-server", &["redis-server"], &[])?;
    let cli = require_binary("redis-cli", &["redis-tools"], &[])?;
    Ok((server, cli))
}

fn services_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = crate::cmd::workspace_root()
        .join("target/services")
        .join(format!("{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn redis_server(server: &Path, dir: &Path, port: u16, cluster: bool) -> anyhow::Result<Guarded> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Command::new(server);
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .arg("--dir")
    .arg(dir)
    .args(["--logfile", "redis.log", "--protected-mode", "no"]);
    if cluster {
        cmd.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ]);
    }
    Guarded::spawn(format!("redis-server :{port}"), &mut cmd)
}

fn ping(cli: &Path, port: u16) -> bool {
    output(Command::new(cli).args(["-p", &port.to_string(), "ping"]))
        .is_some_and(|o| o.trim() == "PONG")
}

/// Starts a standalone server; exports `STATE_REDIS_URL` and the binary paths tests use to
/// start throwaway servers of their own (restart and pause tests).
pub(crate) fn start_standalone() -> anyhow::Result<Started> {
    let (server, cli) = binaries()?;
    let dir = services_dir("redis")?;
    let port = free_port(0)?;
    let mut child = redis_server(&server, &dir, port, false)?;
    wait_until(
        "redis-server to answer PING",
        Duration::from_secs(20),
        || ping(&cli, port) || child.exited(),
    )?;
    if child.exited() {
        bail!(
            "redis-server exited at start; see {}",
            dir.join("redis.log").display()
        );
    }
    eprintln!("xtask: redis standalone on 127.0.0.1:{port}");
    let (mut sentinel, sentinel_port) = start_sentinel(&server, &cli, &dir, port)?;
    Ok(Started {
        env: vec![
            (
                "STATE_REDIS_URL".into(),
                format!("redis://127.0.0.1:{port}"),
            ),
            (
                "STATE_REDIS_SENTINEL_URL".into(),
                format!(
                    "redis-sentinel://127.0.0.1:{sentinel_port}?sentinelServiceName={SENTINEL_SERVICE}"
                ),
            ),
            (
                "STATE_REDIS_SERVER_BIN".into(),
                server.display().to_string(),
            ),
            ("STATE_REDIS_CLI_BIN".into(), cli.display().to_string()),
        ],
        stop: Box::new(move || {
            sentinel.stop();
            child.stop();
            let _ = std::fs::remove_dir_all(&dir);
        }),
    })
}

/// The service name the test sentinel monitors.
const SENTINEL_SERVICE: &str = "state-primary";

/// Starts a Redis Sentinel monitoring the standalone server on `primary_port` as
/// [`SENTINEL_SERVICE`], and waits until it reports that primary.
fn start_sentinel(
    server: &Path,
    cli: &Path,
    dir: &Path,
    primary_port: u16,
) -> anyhow::Result<(Guarded, u16)> {
    let port = free_port(0)?;
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
             sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary_port} 1\n\
             sentinel down-after-milliseconds {SENTINEL_SERVICE} 5000\n",
            dir.display()
        ),
    )?;
    let mut cmd = Command::new(server);
    cmd.arg(&conf)
        .arg("--sentinel")
        .args(["--logfile", "sentinel.log"]);
    let mut child = Guarded::spawn(format!("redis-sentinel :{port}"), &mut cmd)?;
    wait_until(
        "redis-sentinel to know the primary",
        Duration::from_secs(20),
        || {
            child.exited()
                || output(Command::new(cli).args([
                    "-p",
                    &port.to_string(),
                    "sentinel",
                    "get-master-addr-by-name",
                    SENTINEL_SERVICE,
                ]))
                .is_some_and(|o| o.contains(&primary_port.to_string()))
        },
    )?;
    if child.exited() {
        bail!(
            "redis-sentinel exited at start; see {}",
            dir.join("sentinel.log").display()
        );
    }
    eprintln!("xtask: redis sentinel on 127.0.0.1:{port} (service {SENTINEL_SERVICE})");
    Ok((child, port))
}

/// Starts six cluster-enabled servers, joins them with `redis-cli --cluster create` (3
/// masters, 1 replica each) and waits for `cluster_state:ok` on every node; exports
/// `STATE_REDIS_CLUSTER_URLS` (comma-separated).
pub(crate) fn start_cluster() -> anyhow::Result<Started> {
    let (server, cli) = binaries()?;
    let dir = services_dir("redis-cluster")?;
    let mut ports = Vec::new();
    let mut children = Vec::new();
    for _ in 0..6 {
        let mut port = free_port(10_000)?;
        while ports.contains(&port) {
            port = free_port(10_000)?;
        }
        children.push(redis_server(
            &server,
            &dir.join(port.to_string()),
            port,
            true,
        )?);
        ports.push(port);
    }
    for (port, child) in ports.iter().zip(children.iter_mut()) {
        wait_until(
            "cluster node to answer PING",
            Duration::from_secs(20),
            || ping(&cli, *port) || child.exited(),
        )?;
        if child.exited() {
            bail!("cluster node :{port} exited at start");
        }
    }
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut create = Command::new(&cli);
    create.arg("--cluster").arg("create").args(&nodes).args([
        "--cluster-replicas",
        "1",
        "--cluster-yes",
    ]);
    eprintln!("$ {create:?}");
    output(&mut create).context("redis-cli --cluster create failed")?;
    for port in &ports {
        wait_until("cluster_state:ok", Duration::from_secs(60), || {
            output(Command::new(&cli).args(["-p", &port.to_string(), "cluster", "info"]))
                .is_some_and(|info| info.contains("cluster_state:ok"))
        })?;
    }
    // Replicas must have synced before failover tests can promote them.
    wait_until("every replica to sync", Duration::from_secs(60), || {
        ports.iter().all(|p| {
            output(Command::new(&cli).args(["-p", &p.to_string(), "info", "replication"]))
                .is_some_and(|info| {
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
        })
    })?;
    eprintln!("xtask: redis cluster on {}", nodes.join(", "));
    let urls: Vec<String> = nodes.iter().map(|n| format!("redis://{n}")).collect();
    Ok(Started {
        env: vec![("STATE_REDIS_CLUSTER_URLS".into(), urls.join(","))],
        stop: Box::new(move || {
            for mut child in children {
                child.stop();
            }
            let _ = std::fs::remove_dir_all(&dir);
        }),
    })
}

/// Starts three independent standalone servers, the shards `state-layers`' `Sharded` spreads
/// keys over (client-side sharding, no Redis Cluster); exports `STATE_REDIS_SHARD_URLS`
/// (comma-separated).
pub(crate) fn start_shards() -> anyhow::Result<Started> {
    let (server, cli) = binaries()?;
    let dir = services_dir("redis-shards")?;
    let mut ports = Vec::new();
    let mut children = Vec::new();
    for _ in 0..3 {
        let mut port = free_port(0)?;
        while ports.contains(&port) {
            port = free_port(0)?;
        }
        children.push(redis_server(
            &server,
            &dir.join(port.to_string()),
            port,
            false,
        )?);
        ports.push(port);
    }
    for (port, child) in ports.iter().zip(children.iter_mut()) {
        wait_until(
            "redis shard to answer PING",
            Duration::from_secs(20),
            || ping(&cli, *port) || child.exited(),
        )?;
        if child.exited() {
            bail!(
                "redis shard :{port} exited at start; see {}",
                dir.join(port.to_string()).join("redis.log").display()
            );
        }
    }
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    eprintln!("xtask: redis shards on {}", urls.join(", "));
    Ok(Started {
        env: vec![("STATE_REDIS_SHARD_URLS".into(), urls.join(","))],
        stop: Box::new(move || {
            for mut child in children {
                child.stop();
            }
            let _ = std::fs::remove_dir_all(&dir);
        }),
    })
}

/// Starts a standalone server that accepts TLS only (`--port 0 --tls-port P`), with the
/// server certificate from `certs` and no client certificates; returns
/// `STATE_REDIS_TLS_URL` (`rediss://127.0.0.1:P`).
pub(crate) fn start_tls(certs: &state_test_servers::tls::TestCerts) -> anyhow::Result<Started> {
    let (server, cli) = binaries()?;
    let dir = services_dir("redis-tls")?;
    let port = free_port(0)?;
    let mut cmd = Command::new(&server);
    cmd.args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--tls-cert-file")
        .arg(&certs.server_cert)
        .arg("--tls-key-file")
        .arg(&certs.server_key)
        .arg("--tls-ca-cert-file")
        .arg(&certs.ca)
        .args(["--tls-auth-clients", "no"])
        .arg("--dir")
        .arg(&dir)
        .args(["--logfile", "redis.log", "--protected-mode", "no"]);
    let mut child = Guarded::spawn(format!("redis-server tls :{port}"), &mut cmd)?;
    let ca = certs.ca.display().to_string();
    wait_until(
        "redis-server (TLS) to answer PING",
        Duration::from_secs(20),
        || {
            child.exited()
                || output(Command::new(&cli).args([
                    "--tls",
                    "--cacert",
                    &ca,
                    "-p",
                    &port.to_string(),
                    "ping",
                ]))
                .is_some_and(|o| o.trim() == "PONG")
        },
    )?;
    if child.exited() {
        bail!(
            "redis-server (TLS) exited at start (built without TLS?); see {}",
            dir.join("redis.log").display()
        );
    }
    eprintln!("xtask: redis TLS on 127.0.0.1:{port}");
    Ok(Started {
        env: vec![(
            "STATE_REDIS_TLS_URL".into(),
            format!("rediss://127.0.0.1:{port}"),
        )],
        stop: Box::new(move || {
            child.stop();
            let _ = std::fs::remove_dir_all(&dir);
        }),
    })
}
