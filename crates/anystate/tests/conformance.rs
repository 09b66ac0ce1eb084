//! Every URL form `open` takes reaches a working backend: the shared conformance suite runs
//! through `anystate::open` on memory, sled and a cached stack (the whole suite) and, with
//! the servers `cargo xtask test` starts, on Redis standalone, TLS, Cluster and PostgreSQL (a
//! smoke subset). Without those servers' variables the networked tests fail: they never skip.

#![cfg(feature = "full")]

use std::sync::Arc;

use state_core::{StateBackend, StateResult};
use state_testkit::BackendFactory;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `cargo xtask test` (it starts the servers) or point {name} at one")
    })
}

/// `memory://`: every namespace is a fresh map.
struct Memory;

#[async_trait::async_trait]
impl BackendFactory for Memory {
    async fn open(&self, _namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        anystate::open("memory://").await
    }
}

mod memory {
    state_testkit::conformance_suite!(super::Memory);
}

/// `sled:///path`: one database folder per namespace, kept for the factory's life so a
/// namespace reopens with its data.
struct Sled(tempfile::TempDir);

impl Sled {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }
}

#[async_trait::async_trait]
impl BackendFactory for Sled {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let path = self.0.path().join(namespace);
        anystate::open(&format!("sled://{}?flush_every=100ms", path.display())).await
    }
}

mod sled {
    state_testkit::conformance_suite!(super::Sled::new());
}

/// `memory://` under a namespace, an L1 cache, a timeout and retries: the whole stack a
/// config can describe.
struct Stacked;

#[async_trait::async_trait]
impl BackendFactory for Stacked {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        anystate::open(&format!(
            "memory://?namespace={namespace}&cache.max_items=1000&cache.ttl=60s&timeout=10s&retry.max_times=2"
        ))
        .await
    }
}

mod stacked {
    state_testkit::conformance_suite!(super::Stacked);
}

/// A smoke subset of the suite, one test per case, for a factory over a server.
macro_rules! smoke {
    ($factory:expr) => {
        smoke!(@cases $factory;
            put_then_get_returns_exact_bytes,
            delete_removes_key_and_reports_it,
            binary_keys_round_trip,
            list_keys_respects_overlapping_prefixes,
            clear_and_count_are_isolated_between_namespaces,
            batch_get_keeps_order_and_duplicates,
            ttl_reports_remaining_time,
            ttl_expired_key_is_invisible_to_get,
            set_if_not_exists_only_first_write_wins,
            compare_and_swap_follows_expected_value,
            checkpoint_restore_round_trips_keys_values_and_ttls,
            health_check_reports_healthy,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let factory = $factory;
                state_testkit::cases::$case(&factory).await;
            }
        )*
    };
}

/// `redis://host:port?prefix=<namespace>`.
struct Redis;

#[async_trait::async_trait]
impl BackendFactory for Redis {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        anystate::open(&format!("{}?prefix={namespace}", env("STATE_REDIS_URL"))).await
    }
}

mod redis {
    smoke!(super::Redis);
}

/// `rediss://host:port?tls_ca_file=...&prefix=<namespace>`.
struct RedisTls;

#[async_trait::async_trait]
impl BackendFactory for RedisTls {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let url = env("STATE_REDIS_TLS_URL");
        assert!(
            url.starts_with("rediss://"),
            "STATE_REDIS_TLS_URL is not rediss://"
        );
        anystate::open(&format!(
            "{url}?tls_ca_file={}&prefix={namespace}",
            env("STATE_TLS_CA_FILE")
        ))
        .await
    }
}

mod rediss {
    smoke!(super::RedisTls);
}

/// `redis-cluster://first?node=second&node=...&prefix=<namespace>`, from the comma-separated
/// `redis://` node URLs in `STATE_REDIS_CLUSTER_URLS`.
struct Cluster;

#[async_trait::async_trait]
impl BackendFactory for Cluster {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let urls = env("STATE_REDIS_CLUSTER_URLS");
        let nodes: Vec<&str> = urls
            .split(',')
            .map(|u| {
                u.trim()
                    .trim_start_matches("redis://")
                    .trim_end_matches('/')
            })
            .collect();
        let url = nodes[1..].iter().fold(
            format!("redis-cluster://{}?prefix={namespace}", nodes[0]),
            |url, node| url + "&node=" + node,
        );
        anystate::open(&url).await
    }
}

mod redis_cluster {
    smoke!(super::Cluster);
}

/// `postgres://...?table=<namespace>`.
struct Postgres;

#[async_trait::async_trait]
impl BackendFactory for Postgres {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let url = env("STATE_POSTGRES_URL");
        let sep = if url.contains('?') { '&' } else { '?' };
        anystate::open(&format!("{url}{sep}table={namespace}&pool_size=4")).await
    }
}

mod postgres {
    smoke!(super::Postgres);
}
