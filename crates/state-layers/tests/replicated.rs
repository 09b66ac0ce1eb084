//! Replicated: the conformance suite over memory (every replica is the primary itself) and
//! over the real Redis of `STATE_REDIS_URL` (replicas are separate connections to the same
//! server), and a failing replica taken out of rotation and brought back.

// Stats details are whole counts stored as f64: exact comparison is correct.
#![allow(clippy::float_cmp)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{env, redis_at};
use state_core::{ErrorKind, StateBackend, StateResult};
use state_layers::{Fault, FaultInjector, Op, ReadPolicy, Replicated};
use state_memory::MemoryStateBackend;
use state_testkit::BackendFactory;

struct OnMemory(ReadPolicy);

#[async_trait::async_trait]
impl BackendFactory for OnMemory {
    async fn open(&self, _namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let primary: Arc<dyn StateBackend> = Arc::new(MemoryStateBackend::new(None));
        Ok(Arc::new(
            Replicated::new(primary.clone(), vec![primary.clone(), primary]).with_policy(self.0),
        ))
    }

    async fn open_slowed(&self, _namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let primary = state_testkit::Yielding::wrap(Arc::new(MemoryStateBackend::new(None)));
        Ok(Arc::new(
            Replicated::new(primary.clone(), vec![primary.clone(), primary]).with_policy(self.0),
        ))
    }
}

struct OnRedis;

#[async_trait::async_trait]
impl BackendFactory for OnRedis {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let url = env("STATE_REDIS_URL");
        let primary = redis_at(&url, format!("{namespace}:")).await?;
        let replicas = vec![
            redis_at(&url, format!("{namespace}:")).await?,
            redis_at(&url, format!("{namespace}:")).await?,
        ];
        Ok(Arc::new(Replicated::new(primary, replicas)))
    }

    async fn open_slowed(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let url = env("STATE_REDIS_URL");
        let slowed = state_testkit::Yielding::wrap;
        let primary = slowed(redis_at(&url, format!("{namespace}:")).await?);
        let replicas = vec![
            slowed(redis_at(&url, format!("{namespace}:")).await?),
            slowed(redis_at(&url, format!("{namespace}:")).await?),
        ];
        Ok(Arc::new(Replicated::new(primary, replicas)))
    }
}

mod replicated_memory_round_robin {
    state_testkit::conformance_suite!(super::OnMemory(super::ReadPolicy::RoundRobin));
}

mod replicated_memory_least_latency {
    state_testkit::conformance_suite!(super::OnMemory(super::ReadPolicy::LeastLatency));
}

mod replicated_redis {
    state_testkit::conformance_suite!(super::OnRedis);
}

/// Reads alternate over replicas; writes reach only the primary.
#[tokio::test]
async fn reads_go_round_robin_and_writes_to_the_primary() {
    let primary: Arc<dyn StateBackend> = Arc::new(MemoryStateBackend::new(None));
    let replicas: Vec<Arc<FaultInjector>> = (0..2)
        .map(|_| Arc::new(FaultInjector::new(primary.clone())))
        .collect();
    let replicated = Replicated::new(
        primary.clone(),
        replicas
            .iter()
            .map(|r| r.clone() as Arc<dyn StateBackend>)
            .collect(),
    );
    replicated.put(b"k", b"v").await.unwrap();
    for _ in 0..10 {
        assert_eq!(
            replicated.get(b"k").await.unwrap(),
            Some(Bytes::from_static(b"v"))
        );
    }
    assert_eq!(replicas[0].calls(Op::Get), 5);
    assert_eq!(replicas[1].calls(Op::Get), 5);
    assert_eq!(replicas[0].calls(Op::Put) + replicas[1].calls(Op::Put), 0);
    replicated
        .set_if_not_exists(b"lock", b"me", None)
        .await
        .unwrap();
    assert_eq!(replicas[0].calls(Op::SetIfNotExists), 0);
}

/// A replica that fails with a connection error is ejected, the read is answered by the
/// primary, and after the ejection time the replica serves reads again.
#[tokio::test]
async fn failed_replica_is_ejected_and_retried_later() {
    let primary: Arc<dyn StateBackend> = Arc::new(MemoryStateBackend::new(None));
    let bad = Arc::new(FaultInjector::new(primary.clone()));
    let good = Arc::new(FaultInjector::new(primary.clone()));
    let replicated = Replicated::new(primary.clone(), vec![bad.clone(), good.clone()])
        .with_ejection(Duration::from_millis(200));
    replicated.put(b"k", b"v").await.unwrap();
    bad.inject_n(Some(Op::Get), Fault::Fail(ErrorKind::Connection), 1);
    for _ in 0..10 {
        assert_eq!(
            replicated.get(b"k").await.unwrap(),
            Some(Bytes::from_static(b"v"))
        );
    }
    assert_eq!(bad.calls(Op::Get), 1, "ejected after its failure");
    assert_eq!(good.calls(Op::Get), 9);
    assert_eq!(replicated.fallbacks(), 1);
    assert_eq!(replicated.healthy_replicas(), 1);
    let stats = replicated.stats().await;
    assert_eq!(stats.details["replica.0.ejections"], 1.0);

    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(replicated.healthy_replicas(), 2);
    for _ in 0..4 {
        replicated.get(b"k").await.unwrap();
    }
    assert_eq!(bad.calls(Op::Get), 3, "back in rotation");

    // Non-retryable errors are the caller's, not the replica's: no ejection.
    bad.inject(Some(Op::Get), Fault::Fail(ErrorKind::PermissionDenied));
    good.inject(Some(Op::Get), Fault::Fail(ErrorKind::PermissionDenied));
    let err = replicated.get(b"k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert_eq!(replicated.healthy_replicas(), 2);
}

/// With every replica out, reads go to the primary.
#[tokio::test]
async fn all_replicas_down_reads_the_primary() {
    let primary: Arc<dyn StateBackend> = Arc::new(MemoryStateBackend::new(None));
    let bad = Arc::new(FaultInjector::new(primary.clone()));
    let replicated = Replicated::new(primary.clone(), vec![bad.clone()]);
    primary.put(b"k", b"v").await.unwrap();
    bad.inject_n(None, Fault::Fail(ErrorKind::Timeout), 100);
    for _ in 0..5 {
        assert!(replicated.contains(b"k").await.unwrap());
    }
    assert_eq!(bad.calls(Op::Contains), 1);
    assert_eq!(replicated.count().await.unwrap(), 1);
    assert_eq!(
        futures_util::StreamExt::count(replicated.scan(b"")).await,
        1
    );
}

/// Least latency prefers the faster replica.
#[tokio::test]
async fn least_latency_prefers_the_faster_replica() {
    #[derive(Debug)]
    struct Slow(Arc<dyn StateBackend>);
    #[async_trait::async_trait]
    impl StateBackend for Slow {
        fn get<'a>(&'a self, key: &'a [u8]) -> state_core::StateFuture<'a, Option<Bytes>> {
            state_core::StateFuture::boxed(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                self.0.get(key).await
            })
        }
        fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> state_core::StateFuture<'a, ()> {
            self.0.put(key, value)
        }
        fn delete<'a>(&'a self, key: &'a [u8]) -> state_core::StateFuture<'a, bool> {
            self.0.delete(key)
        }
        fn contains<'a>(&'a self, key: &'a [u8]) -> state_core::StateFuture<'a, bool> {
            self.0.contains(key)
        }
        async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
            self.0.list_keys(prefix).await
        }
        async fn clear(&self) -> StateResult<()> {
            self.0.clear().await
        }
        async fn count(&self) -> StateResult<usize> {
            self.0.count().await
        }
    }
    let primary: Arc<dyn StateBackend> = Arc::new(MemoryStateBackend::new(None));
    let slow = Arc::new(FaultInjector::new(Arc::new(Slow(primary.clone()))));
    let fast = Arc::new(FaultInjector::new(primary.clone()));
    let replicated = Replicated::new(primary.clone(), vec![slow.clone(), fast.clone()])
        .with_policy(ReadPolicy::LeastLatency);
    for _ in 0..40 {
        replicated.get(b"k").await.unwrap();
    }
    assert!(
        fast.calls(Op::Get) >= 35,
        "fast {} slow {}",
        fast.calls(Op::Get),
        slow.calls(Op::Get)
    );
}
