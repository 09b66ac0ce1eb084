//! The shared conformance suite against real Redis servers: a standalone server
//! (`STATE_REDIS_URL`) and a Cluster (`STATE_REDIS_CLUSTER_URLS`), both started by
//! `cargo xtask test`. Without them these tests fail: they never skip.

use std::sync::Arc;

use state_core::{StateBackend, StateResult};
use state_redis::{RedisConfig, RedisStateBackend};
use state_testkit::BackendFactory;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `cargo xtask test` (it starts Redis) or point {name} at a server")
    })
}

/// Each namespace is a key prefix on the shared server.
struct Standalone;

#[async_trait::async_trait]
impl BackendFactory for Standalone {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let config = RedisConfig::builder()
            .url(env("STATE_REDIS_URL"))
            .key_prefix(format!("{namespace}:"))
            .build()?;
        Ok(Arc::new(RedisStateBackend::new(config).await?))
    }
}

/// Each namespace is a key prefix on the shared Cluster.
struct Cluster;

#[async_trait::async_trait]
impl BackendFactory for Cluster {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let urls = env("STATE_REDIS_CLUSTER_URLS");
        let config = RedisConfig::builder()
            .cluster_nodes(urls.split(','))
            .key_prefix(format!("{namespace}:"))
            .build()?;
        Ok(Arc::new(RedisStateBackend::new(config).await?))
    }
}

/// The Cluster opened from one `redis-cluster://first?node=second&node=...` URL: the cluster
/// flag comes from fred's reading of the URL.
struct ClusterFromUrl;

#[async_trait::async_trait]
impl BackendFactory for ClusterFromUrl {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let urls = env("STATE_REDIS_CLUSTER_URLS");
        let mut hosts = urls.split(',').map(|u| u.trim_start_matches("redis://"));
        let first = hosts.next().expect("one node");
        let others: Vec<String> = hosts.map(|h| format!("node={h}")).collect();
        let config = RedisConfig::builder()
            .url(format!("redis-cluster://{first}?{}", others.join("&")))
            .key_prefix(namespace)
            .build()?;
        assert!(matches!(
            config.topology(),
            state_redis::Topology::Cluster(_)
        ));
        Ok(Arc::new(RedisStateBackend::new(config).await?))
    }
}

/// The standalone server reached through Redis Sentinel (`STATE_REDIS_SENTINEL_URL`, a
/// `redis-sentinel://` URL): fred asks the sentinel for the primary.
struct ThroughSentinel;

#[async_trait::async_trait]
impl BackendFactory for ThroughSentinel {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let config = RedisConfig::builder()
            .url(env("STATE_REDIS_SENTINEL_URL"))
            .key_prefix(namespace)
            .build()?;
        assert!(matches!(
            config.topology(),
            state_redis::Topology::Sentinel { .. }
        ));
        assert!(config.redacted_url().starts_with("redis-sentinel://"));
        Ok(Arc::new(RedisStateBackend::new(config).await?))
    }
}

mod standalone {
    state_testkit::conformance_suite!(super::Standalone);
}

mod cluster {
    state_testkit::conformance_suite!(super::Cluster);
}

mod cluster_url {
    state_testkit::conformance_suite!(super::ClusterFromUrl);
}

mod sentinel {
    state_testkit::conformance_suite!(super::ThroughSentinel);
}
