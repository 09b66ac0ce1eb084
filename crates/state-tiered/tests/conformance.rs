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
use state_testkit::{BackendFactory, Yielding};
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

    async fn open_slowed(&self, _namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let inner = Yielding::wrap(Arc::new(MemoryStateBackend::new(None)));
        Ok(Arc::new(CachedStateBackend::new(
            inner,
            1000,
            Some(Duration::from_secs(60)),
        )))
    }
}

/// Wraps `backend` in [`Yielding`] when `slow` (the cancellation case's slowed stores).
fn slowed(backend: Arc<dyn StateBackend>, slow: bool) -> Arc<dyn StateBackend> {
    if slow {
        Yielding::wrap(backend)
    } else {
        backend
    }
}

async fn redis_for(namespace: &str) -> StateResult<Arc<RedisStateBackend>> {
    Ok(Arc::new(
        RedisStateBackend::new(
            RedisConfig::builder()
                .url(env("STATE_REDIS_URL"))
                .key_prefix(format!("{namespace}:"))
                .build()?,
        )
        .await?,
    ))
}

/// L1 over Redis (one key prefix per namespace), coherent through Redis pub/sub.
struct OnRedis;

impl OnRedis {
    async fn build(namespace: &str, slow: bool) -> StateResult<Arc<dyn StateBackend>> {
        let redis = redis_for(namespace).await?;
        let cached = CachedStateBackend::builder(slowed(redis.clone(), slow))
            .max_items(10_000)
            .ttl(Duration::from_secs(60))
            .invalidation(redis)
            .build()
            .await?;
        Ok(Arc::new(cached))
    }
}

#[async_trait::async_trait]
impl BackendFactory for OnRedis {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        Self::build(namespace, false).await
    }

    async fn open_slowed(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        Self::build(namespace, true).await
    }
}

/// The seed's three tiers: L1 moka (coherent through Redis pub/sub) over L2 Redis (60 s
/// TTL) over L3 PostgreSQL; one prefix and one table per namespace.
struct ThreeTier;

impl ThreeTier {
    async fn build(namespace: &str, slow: bool) -> StateResult<Arc<dyn StateBackend>> {
        let redis = redis_for(namespace).await?;
        let postgres =
            Arc::new(PostgresStateBackend::new(env("STATE_POSTGRES_URL"), namespace).await?);
        let shared = TieredStateBackend::builder()
            .cache_tier(
                "redis",
                slowed(redis.clone(), slow),
                Duration::from_secs(60),
            )
            .durable(slowed(postgres, slow))?;
        let cached = CachedStateBackend::builder(Arc::new(shared))
            .max_items(10_000)
            .ttl(Duration::from_secs(30))
            .invalidation(redis)
            .build()
            .await?;
        Ok(Arc::new(cached))
    }
}

#[async_trait::async_trait]
impl BackendFactory for ThreeTier {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        Self::build(namespace, false).await
    }

    async fn open_slowed(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        Self::build(namespace, true).await
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
