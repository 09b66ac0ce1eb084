//! Shared helpers: servers from the environment `cargo xtask test` sets, the lock and data
//! store of each target, and the fenced-write case (the cases every lock runs are the shared
//! lock suite, `tests/lock_suite.rs`).
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use state_core::StateBackend;
use state_lock::{
    DistributedLock, FencedWrite, LockOptions, PostgresAdvisoryLock, PostgresLock, RedisLock,
};
use state_postgres::PostgresStateBackend;
use state_redis::{RedisConfig, RedisStateBackend};

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `cargo xtask test` (it starts the servers)")
    })
}

pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Redis,
    RedisCluster,
    PgLease,
    PgAdvisory,
}

/// A data store for fenced writes, beside the lock.
#[derive(Clone)]
pub enum Store {
    Redis(RedisStateBackend),
    Pg(PostgresStateBackend),
}

impl Store {
    pub async fn get(&self, key: &[u8]) -> Option<Bytes> {
        match self {
            Store::Redis(b) => b.get(key).await.unwrap(),
            Store::Pg(b) => b.get(key).await.unwrap(),
        }
    }

    pub async fn put_fenced(&self, key: &[u8], value: &[u8], fence: &state_lock::Fence) -> bool {
        match self {
            Store::Redis(b) => b.put_fenced(key, value, fence).await.unwrap(),
            Store::Pg(b) => b.put_fenced(key, value, fence).await.unwrap(),
        }
    }
}

pub fn fast_options() -> LockOptions {
    LockOptions::default()
        .retry_interval(Duration::from_millis(10))
        .unwrap()
}

pub async fn store(target: Target) -> Store {
    match target {
        Target::Redis => Store::Redis(
            RedisStateBackend::new(
                RedisConfig::builder()
                    .url(env("STATE_REDIS_URL"))
                    .key_prefix("lock-test:")
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap(),
        ),
        Target::RedisCluster => {
            let nodes: Vec<String> = env("STATE_REDIS_CLUSTER_URLS")
                .split(',')
                .map(str::to_owned)
                .collect();
            Store::Redis(
                RedisStateBackend::new(
                    RedisConfig::builder()
                        .cluster_nodes(nodes)
                        .key_prefix("lock-test:")
                        .build()
                        .unwrap(),
                )
                .await
                .unwrap(),
            )
        }
        Target::PgLease | Target::PgAdvisory => Store::Pg(
            PostgresStateBackend::new(env("STATE_POSTGRES_URL"), "state_lock_test")
                .await
                .unwrap(),
        ),
    }
}

/// A fresh lock instance (its own identity) for `name` on `target`, sharing `store`'s
/// connections.
pub async fn lock(target: Target, store: &Store, name: &str) -> Arc<dyn DistributedLock> {
    match (target, store) {
        (Target::Redis | Target::RedisCluster, Store::Redis(b)) => Arc::new(
            RedisLock::from_backend(b, name)
                .unwrap()
                .with_options(fast_options()),
        ),
        (Target::PgLease, Store::Pg(b)) => Arc::new(
            PostgresLock::from_backend(b, name)
                .await
                .unwrap()
                .with_options(fast_options()),
        ),
        (Target::PgAdvisory, Store::Pg(b)) => Arc::new(
            PostgresAdvisoryLock::from_backend(b, name)
                .await
                .unwrap()
                .with_options(fast_options()),
        ),
        _ => unreachable!("store matches target"),
    }
}

/// A holder "paused" (its whole runtime blocked, as in a GC or VM pause) past its TTL: a new
/// holder takes over and writes, and the old holder's late fenced write is refused.
pub async fn stale_holder_write_is_refused(target: Target) {
    let store = store(target).await;
    let name = unique("fenced");
    let key = unique("fenced-key");
    let ttl = Duration::from_millis(400);
    let (acquired_tx, acquired_rx) = std::sync::mpsc::channel();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
    let old = {
        let store = store.clone();
        let name = name.clone();
        let key = key.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // A store of its own on this runtime, so the pause stalls everything it does.
                let own = self::store(target).await;
                let _ = store;
                let lock = lock(target, &own, &name).await;
                let guard = lock.acquire(ttl).await.unwrap();
                assert!(
                    own.put_fenced(key.as_bytes(), b"old-1", &guard.fence())
                        .await
                );
                acquired_tx.send(guard.token()).unwrap();
                // The pause: the renewal task cannot run either.
                resume_rx.recv().unwrap();
                assert!(!guard.is_held(), "the guard knows its lease is gone");
                let late = own
                    .put_fenced(key.as_bytes(), b"old-late", &guard.fence())
                    .await;
                (late, guard.release().await.unwrap())
            })
        })
    };
    let old_token = acquired_rx.recv().unwrap();
    let new_lock = lock(target, &store, &name).await;
    let guard = new_lock
        .acquire_timeout(ttl, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(guard.token() > old_token);
    assert!(
        store
            .put_fenced(key.as_bytes(), b"new", &guard.fence())
            .await
    );
    resume_tx.send(()).unwrap();
    let (late_written, old_released) = tokio::task::spawn_blocking(move || old.join().unwrap())
        .await
        .unwrap();
    assert!(!late_written, "the stale holder's write must be refused");
    assert!(
        !old_released,
        "the stale holder cannot release the new holder's lock"
    );
    assert_eq!(
        store.get(key.as_bytes()).await.unwrap(),
        Bytes::from_static(b"new")
    );
    assert!(guard.is_held());
    assert!(guard.release().await.unwrap());
}
