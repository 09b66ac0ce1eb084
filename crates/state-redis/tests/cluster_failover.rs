//! A Redis Cluster master dies; its replica takes over and the backend resumes, returning the
//! data written before the failure and never a wrong value. Runs on a 3 + 3 cluster of its
//! own (so killing a node disturbs no other test), built with the binaries `cargo xtask test`
//! exports (`STATE_REDIS_SERVER_BIN`, `STATE_REDIS_CLI_BIN`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::interfaces::ClusterInterface as _;
use state_core::StateBackend;
use state_redis::{RedisConfig, RedisStateBackend};

struct Node {
    port: u16,
    child: Child,
}

struct OwnCluster {
    nodes: Vec<Node>,
    cli: String,
    _dir: tempfile::TempDir,
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}

fn free_port_pair() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn cli_output(cli: &str, args: &[&str]) -> String {
    let out = Command::new(cli)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

impl OwnCluster {
    fn start() -> Self {
        let server =
            std::env::var("STATE_REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let cli = std::env::var("STATE_REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into());
        let dir = tempfile::tempdir().unwrap();
        let mut nodes: Vec<Node> = Vec::new();
        while nodes.len() < 6 {
            let port = free_port_pair();
            if nodes.iter().any(|n| n.port == port) {
                continue;
            }
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new(&server)
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("start redis-server");
            nodes.push(Node { port, child });
        }
        for node in &nodes {
            let port = node.port.to_string();
            wait_for("node PING", Duration::from_secs(20), || {
                cli_output(&cli, &["-p", &port, "ping"]).trim() == "PONG"
            });
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        cli_output(&cli, &args);
        for node in &nodes {
            let port = node.port.to_string();
            wait_for("cluster_state:ok", Duration::from_secs(60), || {
                cli_output(&cli, &["-p", &port, "cluster", "info"]).contains("cluster_state:ok")
            });
        }
        Self {
            nodes,
            cli,
            _dir: dir,
        }
    }

    fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("node");
        node.child.kill().unwrap();
        node.child.wait().unwrap();
    }

    /// Waits until every primary's replica has acknowledged its whole replication stream
    /// (the replica's `offset` equals the primary's `master_repl_offset`).
    fn wait_replication_caught_up(&self) {
        for node in &self.nodes {
            let port = node.port.to_string();
            wait_for("replicas to catch up", Duration::from_secs(30), || {
                let info = cli_output(&self.cli, &["-p", &port, "info", "replication"]);
                if !info.contains("role:master") {
                    return true;
                }
                let field = |name: &str| -> Option<u64> {
                    info.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .and_then(|v| v.trim().parse().ok())
                };
                let Some(master) = field("master_repl_offset:") else {
                    return false;
                };
                let replica = info
                    .lines()
                    .find(|l| l.starts_with("slave0:"))
                    .and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("offset=")))
                    .and_then(|v| v.trim().parse::<u64>().ok());
                replica == Some(master)
            });
        }
    }

    /// Waits until every replica reports an up link to its master.
    fn wait_replicas_synced(&self) {
        for node in &self.nodes {
            let port = node.port.to_string();
            wait_for("replica sync", Duration::from_secs(30), || {
                let info = cli_output(&self.cli, &["-p", &port, "info", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_failover_resumes_without_wrong_data() {
    let mut cluster = OwnCluster::start();
    cluster.wait_replicas_synced();
    let backend = RedisStateBackend::new(
        RedisConfig::builder()
            .cluster_nodes(cluster.urls())
            .key_prefix("failover:")
            .command_timeout(Duration::from_millis(500))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("k{i}").into_bytes()).collect();
    let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (&k[..], &k[..])).collect();
    backend.batch_put(&entries).await.unwrap();
    // Replication is asynchronous: the kill below happens only once the replicas have every
    // write, so anything missing afterwards would be a backend bug, not a lost write.
    let victim_slot = fred::util::redis_keyslot(b"failover:k0");
    let state = backend
        .pool()
        .next()
        .cached_cluster_state()
        .expect("cluster state");
    let victim = state.get_server(victim_slot).expect("owner of k0").port;
    cluster.wait_replication_caught_up();
    cluster.kill(victim);
    let killed_at = Instant::now();

    // Operations fail (retryably) for a while, then resume once the replica is promoted.
    let mut resumed = None;
    while killed_at.elapsed() < Duration::from_secs(60) {
        match backend.get(b"k0").await {
            Ok(value) => {
                assert_eq!(
                    value,
                    Some(Bytes::from_static(b"k0")),
                    "wrong data after failover"
                );
                resumed = Some(killed_at.elapsed());
                break;
            }
            Err(err) => assert!(
                err.is_retryable(),
                "non-retryable error during failover: {err:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = resumed.expect("operations never resumed after the master was killed");
    eprintln!("failover: operations resumed {took:?} after the master was killed");
    let asked: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    let values = backend.batch_get(&asked).await.unwrap();
    for (k, v) in keys.iter().zip(values) {
        assert_eq!(v.as_deref(), Some(&k[..]), "{}", String::from_utf8_lossy(k));
    }
    backend.put(b"after", b"failover").await.unwrap();
    assert_eq!(
        backend.get(b"after").await.unwrap(),
        Some(Bytes::from_static(b"failover"))
    );
}
