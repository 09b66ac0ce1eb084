//! The shared conformance suite over `CachedStateBackend`: on memory (the seed's
//! constructor), and on real Redis with Redis pub/sub invalidation (`STATE_REDIS_URL`,
//! started by `cargo xtask test`; without it these tests fail, never skip).

use std::sync::Arc;
use std::time::Duration;

use state_core::{StateBackend, StateResult};
use state_memory::MemoryStateBackend;
use state_redis::{RedisConfig, RedisStateBackend};
use state_testkit::BackendFactory;
use state_tiered::CachedStateBackend;

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

mod on_memory {
    state_testkit::conformance_suite!(super::OnMemory);
}

mod on_redis {
    state_testkit::conformance_suite!(super::OnRedis);
}
