//! Factories shared by the test binaries.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use state_core::{StateBackend, StateResult};
use state_memory::MemoryStateBackend;
use state_redis::{RedisConfig, RedisStateBackend};
use state_testkit::BackendFactory;

/// The variable `name`, or a panic telling how to start the servers.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `cargo xtask test` (it starts the servers) or point {name} at a server")
    })
}

/// Where the wrapped backend of each namespace lives.
#[derive(Clone, Copy, Debug)]
pub enum Inner {
    /// A fresh memory backend per namespace.
    Memory,
    /// The standalone Redis of `STATE_REDIS_URL`, one key prefix per namespace.
    Redis,
}

/// A Redis backend at `url` under the key prefix `prefix`.
pub async fn redis_at(url: &str, prefix: String) -> StateResult<Arc<dyn StateBackend>> {
    let config = RedisConfig::builder().url(url).key_prefix(prefix).build()?;
    Ok(Arc::new(RedisStateBackend::new(config).await?))
}

impl Inner {
    /// Opens the inner backend of `namespace`.
    pub async fn open(self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        match self {
            Inner::Memory => Ok(Arc::new(MemoryStateBackend::new(None))),
            Inner::Redis => redis_at(&env("STATE_REDIS_URL"), format!("{namespace}:")).await,
        }
    }
}

/// A layer stacked over [`Inner`].
pub struct Layered {
    /// The inner backend.
    pub inner: Inner,
    /// Builds the layer over the inner backend of a namespace.
    pub wrap: fn(Arc<dyn StateBackend>, &str) -> Arc<dyn StateBackend>,
}

#[async_trait::async_trait]
impl BackendFactory for Layered {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let inner = self.inner.open(namespace).await?;
        Ok((self.wrap)(inner, namespace))
    }

    async fn open_slowed(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let inner = state_testkit::Yielding::wrap(self.inner.open(namespace).await?);
        Ok((self.wrap)(inner, namespace))
    }
}
