//! The shared conformance suite over `CachedStateBackend`: on memory (the seed's
//! constructor), on real Redis with Redis pub/sub invalidation, and over the three-tier stack
//! memory + Redis + PostgreSQL (`STATE_REDIS_URL`, `STATE_POSTGRES_URL`, started by `cargo
//! xtask test`; without them these tests fail, never skip).

use std::sync::Arc;
use std::time::Duration;

use state_core::{StateBackend, StateResult};
use state_memory::MemoryStateBackend;
use state_postgres::PostgresStateBackend;
use state_redis::{RedisConfig, RedisStateBackend};
use state_testkit::BackendFactory;
use state_tiered::{CachedStateBackend, TieredStateBackend};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `cargo xtask test` (it starts the servers) or point {name} at a server")
    })
}

/// L1 over a fresh memory backend per namespace.
struct OnMemory;

#[async_trait::async_trait]
impl BackendFactory for OnMemory {
    async fn open(&self, _namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let inner = Arc::new(MemoryStateBackend::new(None));
        Ok(Arc::new(CachedStateBackend::new(
            inner,
            1000,
            Some(Duration::from_secs(60)),
        )))
    }
}

/// L1 over Redis (one key prefix per namespace), coherent through Redis pub/sub.
struct OnRedis;

#[async_trait::async_trait]
impl BackendFactory for OnRedis {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let redis = Arc::new(
            RedisStateBackend::new(
                RedisConfig::builder()
                    .url(env("STATE_REDIS_URL"))
                    .key_prefix(format!("{namespace}:"))
                    .build()?,
            )
            .await?,
        );
        let cached = CachedStateBackend::builder(redis.clone())
            .max_items(10_000)
            .ttl(Duration::from_secs(60))
            .invalidation(redis)
            .build()
            .await?;
        Ok(Arc::new(cached))
    }
}

/// The seed's three tiers: L1 moka (coherent through Redis pub/sub) over L2 Redis (60 s
/// TTL) over L3 PostgreSQL; one prefix and one table per namespace.
struct ThreeTier;

#[async_trait::async_trait]
impl BackendFactory for ThreeTier {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let redis = Arc::new(
            RedisStateBackend::new(
                RedisConfig::builder()
                    .url(env("STATE_REDIS_URL"))
                    .key_prefix(format!("{namespace}:"))
                    .build()?,
            )
            .await?,
        );
        let postgres =
            Arc::new(PostgresStateBackend::new(env("STATE_POSTGRES_URL"), namespace).await?);
        let shared = TieredStateBackend::builder()
            .cache_tier("redis", redis.clone(), Duration::from_secs(60))
            .durable(postgres)?;
        let cached = CachedStateBackend::builder(Arc::new(shared))
            .max_items(10_000)
            .ttl(Duration::from_secs(30))
            .invalidation(redis)
            .build()
            .await?;
        Ok(Arc::new(cached))
    }
}

mod three_tier {
    state_testkit::conformance_suite!(super::ThreeTier);
}

mod on_memory {
    state_testkit::conformance_suite!(super::OnMemory);
}

mod on_redis {
    state_testkit::conformance_suite!(super::OnRedis);
}
