#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod open;
mod urls;
mod value;

pub use config::{
    BackendConfig, CacheOptions, MemoryOptions, PostgresOptions, RedisOptions, RetryOptions,
    SledOptions,
};
pub use open::open;

/// The seed document's snippets compiled through this crate's prelude (documentation only;
/// with feature `full`, which the snippets need).
#[cfg(feature = "full")]
#[cfg_attr(docsrs, doc(cfg(feature = "full")))]
#[doc = include_str!("seed.md")]
pub mod seed_snippets {}

/// The contract: [`core::StateBackend`], errors, stats, checkpoints (`state-core`).
pub use state_core as core;

/// The in-process backend (`state-memory`).
#[cfg(feature = "services-memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "services-memory")))]
pub use state_memory as memory;

/// The embedded sled backend (`state-sled`).
#[cfg(feature = "services-sled")]
#[cfg_attr(docsrs, doc(cfg(feature = "services-sled")))]
pub use state_sled as sled;

/// The Redis backend: standalone, Sentinel, Cluster (`state-redis`).
#[cfg(feature = "services-redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "services-redis")))]
pub use state_redis as redis;

/// The PostgreSQL backend (`state-postgres`).
#[cfg(feature = "services-postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "services-postgres")))]
pub use state_postgres as postgres;

/// `CachedStateBackend` and L1/L2/L3 tiering with coherence (`state-tiered`).
#[cfg(feature = "layers-cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "layers-cache")))]
pub use state_tiered as tiered;

/// Wrappers: `Namespaced`, `Retry`, `Timeout`, `Sharded`, `Replicated`, `Instrumented`
/// (`state-layers`).
#[cfg(any(
    feature = "layers-namespace",
    feature = "layers-retry",
    feature = "layers-timeout",
    feature = "layers-shard",
    feature = "layers-replicated",
    feature = "layers-instrumented"
))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(
        feature = "layers-namespace",
        feature = "layers-retry",
        feature = "layers-timeout",
        feature = "layers-shard",
        feature = "layers-replicated",
        feature = "layers-instrumented"
    )))
)]
pub use state_layers as layers;

/// Distributed locks, fencing tokens, leader election (`state-lock`).
#[cfg(feature = "lock")]
#[cfg_attr(docsrs, doc(cfg(feature = "lock")))]
pub use state_lock as lock;

/// Everything a program using the backends names, in one import:
/// `use anystate::prelude::*;`.
///
/// The traits (so methods resolve on concrete backends and on `Arc<dyn StateBackend>`), the
/// error and result types, [`open`] and [`BackendConfig`], each enabled backend and layer's
/// main types, and `Arc` and `Duration`, which the seed document's snippets use throughout.
pub mod prelude {
    pub use std::sync::Arc;
    pub use std::time::Duration;

    pub use crate::{BackendConfig, open};
    pub use state_core::{
        Bytes, Capabilities, Entry, ErrorKind, PoolStats, StateBackend, StateBackendExt,
        StateError, StateResult, StateStats,
    };

    #[cfg(feature = "services-memory")]
    pub use state_memory::MemoryStateBackend;

    #[cfg(feature = "services-sled")]
    pub use state_sled::SledStateBackend;

    #[cfg(feature = "services-redis")]
    pub use state_redis::{RedisConfig, RedisStateBackend};

    #[cfg(feature = "services-postgres")]
    pub use state_postgres::{PostgresConfig, PostgresStateBackend};

    #[cfg(feature = "layers-cache")]
    pub use state_tiered::{CachedStateBackend, TieredStateBackend};

    #[cfg(any(
        feature = "layers-namespace",
        feature = "layers-retry",
        feature = "layers-timeout",
        feature = "layers-shard",
        feature = "layers-replicated",
        feature = "layers-instrumented"
    ))]
    pub use state_layers::LayerExt;

    #[cfg(feature = "layers-namespace")]
    pub use state_layers::Namespaced;

    #[cfg(feature = "layers-retry")]
    pub use state_layers::Retry;

    #[cfg(feature = "layers-timeout")]
    pub use state_layers::Timeout;

    #[cfg(feature = "layers-shard")]
    pub use state_layers::Sharded;

    #[cfg(feature = "layers-replicated")]
    pub use state_layers::Replicated;

    #[cfg(feature = "layers-instrumented")]
    pub use state_layers::Instrumented;

    #[cfg(feature = "lock")]
    pub use state_lock::{DistributedLock, LeaderElection, LockGuard, PostgresLock, RedisLock};
}
