//! Shared by the wire-fault and chaos tests: the servers `cargo xtask test` starts, `redis-cli`,
//! and putting a fault proxy in front of Redis Cluster primaries.
//!
//! A Cluster client learns node addresses from `CLUSTER SLOTS`, so a proxy in front of a node
//! is only used when the node announces the proxy's port (`CONFIG SET cluster-announce-port`);
//! its bus port is announced unchanged, so gossip and failure detection bypass the proxy.
//! [`Announce`] sets that up and restores the node when dropped (also on panic).

#![allow(dead_code, unreachable_pub)] // Each test binary uses a part.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// `STATE_REDIS_URL`: the standalone server.
pub fn url() -> String {
    std::env::var("STATE_REDIS_URL").expect("STATE_REDIS_URL: run `cargo xtask test`")
}

/// `STATE_REDIS_CLUSTER_URLS`: the Cluster's nodes.
pub fn cluster_urls() -> Vec<String> {
    std::env::var("STATE_REDIS_CLUSTER_URLS")
        .expect("STATE_REDIS_CLUSTER_URLS: run `cargo xtask test`")
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn redis_cli() -> String {
    std::env::var("STATE_REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".to_owned())
}

/// The socket address of a `redis://[user@]ip:port` URL.
pub fn addr_of(url: &str) -> SocketAddr {
    let hostport = url
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap()
        .trim_end_matches('/');
    hostport.parse().expect("redis://host:port with an IP host")
}

/// Runs `redis-cli -p <port> args...` and returns its output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(redis_cli())
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The primaries in `CLUSTER NODES` on `port`: (port, slot ranges).
fn primaries_with_slots(port: u16) -> Vec<(u16, Vec<(u16, u16)>)> {
    let nodes = cli(port, &["CLUSTER", "NODES"]);
    let mut out = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
            continue;
        }
        let addr = fields[1].split('@').next().unwrap();
        let node_port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        let ranges = fields[8..]
            .iter()
            .filter_map(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                Some((lo.parse().ok()?, hi.parse().ok()?))
            })
            .collect();
        out.push((node_port, ranges));
    }
    out
}

/// The ports of the primaries that serve slots, from `CLUSTER NODES` on `port`.
pub fn primaries(port: u16) -> Vec<u16> {
    primaries_with_slots(port)
        .into_iter()
        .filter(|(_, ranges)| !ranges.is_empty())
        .map(|(p, _)| p)
        .collect()
}

/// The port of the primary serving `slot`, from `CLUSTER NODES` on `port`.
pub fn primary_of(port: u16, slot: u16) -> u16 {
    primaries_with_slots(port)
        .into_iter()
        .find(|(_, ranges)| ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot)))
        .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
        .0
}

/// A node announcing a proxy's port instead of its own; restored when dropped.
pub struct Announce {
    port: u16,
    proxy_port: u16,
    nodes: Vec<u16>,
}

impl Announce {
    /// Makes the node on `port` announce `proxy_port` (its bus port unchanged); `nodes` are
    /// every node of the Cluster, whose views [`Drop`] waits for.
    pub fn new(port: u16, proxy_port: u16, nodes: Vec<u16>) -> Self {
        let bus_port = cli(port, &["CONFIG", "GET", "cluster-port"])
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse::<u16>().ok())
            .filter(|&p| p != 0)
            .unwrap_or(port + 10_000);
        let restore = Self {
            port,
            proxy_port,
            nodes,
        };
        cli(
            port,
            &[
                "CONFIG",
                "SET",
                "cluster-announce-bus-port",
                &bus_port.to_string(),
            ],
        );
        cli(
            port,
            &[
                "CONFIG",
                "SET",
                "cluster-announce-port",
                &proxy_port.to_string(),
            ],
        );
        // The node announces the proxy at once in its own CLUSTER SLOTS.
        assert!(
            cli(port, &["CLUSTER", "SLOTS"]).contains(&proxy_port.to_string()),
            "the node announces the proxy"
        );
        restore
    }
}

impl Drop for Announce {
    /// Restores the node's announced ports, and waits (up to 15 s) until every node's view
    /// has dropped the proxy's port again, so later tests see the real topology.
    fn drop(&mut self) {
        cli(self.port, &["CONFIG", "SET", "cluster-announce-port", "0"]);
        cli(
            self.port,
            &["CONFIG", "SET", "cluster-announce-bus-port", "0"],
        );
        let stale = format!(":{}@", self.proxy_port);
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until
            && self
                .nodes
                .iter()
                .any(|&n| cli(n, &["CLUSTER", "NODES"]).contains(&stale))
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
