//! The chaos soak (issue 11) on Redis: 16 tasks of mixed `get`, `put`, `compare_and_swap`,
//! `set_if_not_exists` and `get_and_delete` through fault proxies that lose replies, reset
//! connections, add latency and blackhole traffic at random; no acknowledged write may be
//! lost, no SETNX key may have two winners, and the history must be linearizable
//! ([`state_testkit::chaos`]). `STATE_CHAOS_SECS` (default 30) bounds each soak;
//! `STATE_CHAOS_SEED` repeats one.
//!
//! Standalone: one proxy in front of `STATE_REDIS_URL`; the final state is read on a direct
//! connection. Cluster: a proxy in front of every primary, each announcing its proxy's port
//! (`common::Announce`), so the client's whole view of the Cluster goes through the proxies;
//! keys spread over every primary, and the final state is read through the healed proxies.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Announce, addr_of, cluster_urls, primaries, url};
use state_core::StateBackend;
use state_redis::{RedisConfig, RedisStateBackend};
use state_test_servers::proxy::FaultProxy;
use state_testkit::chaos::{self, FaultInjector, SoakConfig};

/// The settings a latency-sensitive service would use: a 1 s command timeout (a blackhole
/// stalls the calls in flight that long), and fred's default re-sending of the commands the
/// backend declares idempotent.
fn config(builder: state_redis::RedisConfigBuilder, prefix: &str) -> RedisConfig {
    builder
        .key_prefix(prefix)
        .command_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_standalone_loses_no_acknowledged_write() {
    let prefix = format!("chaos-{}:", state_testkit::unique_namespace());
    let proxy = Arc::new(FaultProxy::start(addr_of(&url())).await.unwrap());
    let proxied = RedisStateBackend::new(config(
        RedisConfig::builder().url(format!("redis://127.0.0.1:{}", proxy.port())),
        &prefix,
    ))
    .await
    .unwrap();
    let direct = RedisStateBackend::new(config(RedisConfig::builder().url(url()), &prefix))
        .await
        .unwrap();
    let report = chaos::run(
        "redis standalone",
        Arc::new(proxied),
        Arc::new(direct),
        vec![proxy as Arc<dyn FaultInjector>],
        &SoakConfig::default(),
    )
    .await
    .unwrap_or_else(|failure| panic!("{failure}"));
    eprintln!("{report}");
    assert!(report.faults_fired > 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_cluster_loses_no_acknowledged_write() {
    let urls = cluster_urls();
    let nodes: Vec<u16> = urls.iter().map(|u| addr_of(u).port()).collect();
    let mut proxies = Vec::new();
    let mut announced = Vec::new();
    for port in primaries(nodes[0]) {
        let proxy = Arc::new(
            FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port)))
                .await
                .unwrap(),
        );
        announced.push(Announce::new(port, proxy.port(), nodes.clone()));
        proxies.push(proxy);
    }
    assert!(proxies.len() >= 3, "a proxy per primary");
    // No hash tag: the keys spread over every primary (slots of every proxy).
    let prefix = format!("chaos-{}:", state_testkit::unique_namespace());
    let seeds: Vec<String> = proxies
        .iter()
        .map(|p| format!("redis://127.0.0.1:{}", p.port()))
        .collect();
    let proxied: Arc<dyn StateBackend> = Arc::new(
        RedisStateBackend::new(config(RedisConfig::builder().cluster_nodes(seeds), &prefix))
            .await
            .unwrap(),
    );
    let report = chaos::run(
        "redis cluster (a proxy per primary)",
        proxied.clone(),
        proxied,
        proxies
            .iter()
            .map(|p| p.clone() as Arc<dyn FaultInjector>)
            .collect(),
        &SoakConfig::default(),
    )
    .await
    .unwrap_or_else(|failure| panic!("{failure}"));
    eprintln!("{report}");
    assert!(report.faults_fired > 0, "{report}");
    for proxy in &proxies {
        assert!(
            proxy.connections() > 0,
            "every primary was reached through its proxy"
        );
    }
    drop(announced);
}
