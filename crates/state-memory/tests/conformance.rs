//! The shared conformance suite, and the memory backend's own behaviour.

use std::sync::Arc;
use std::time::Duration;

use state_core::{ErrorKind, StateBackend, StateResult};
use state_memory::MemoryStateBackend;
use state_testkit::BackendFactory;

struct MemoryFactory;

#[async_trait::async_trait]
impl BackendFactory for MemoryFactory {
    async fn open(&self, _namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        Ok(Arc::new(MemoryStateBackend::new(None)))
    }
}

mod conformance {
    state_testkit::conformance_suite!(super::MemoryFactory);
}

/// With a default TTL, a plain put applies it (it does not clear it).
#[tokio::test]
async fn default_ttl_applies_to_plain_puts() {
    let b = MemoryStateBackend::new(Some(Duration::from_millis(150)));
    b.put(b"k", b"v").await.unwrap();
    let left = b.ttl(b"k").await.unwrap().expect("default ttl applied");
    assert!(left <= Duration::from_millis(150));
    assert!(b.set_if_not_exists(b"n", b"v", None).await.unwrap());
    assert!(b.ttl(b"n").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.get(b"k").await.unwrap(), None);
    assert_eq!(b.count().await.unwrap(), 0);
}

/// The sweeper returns the memory of expired entries without any read touching them.
#[tokio::test]
async fn sweeper_removes_expired_entries_in_the_background() {
    let b = MemoryStateBackend::builder()
        .cleanup_interval(Duration::from_millis(20))
        .build();
    for i in 0..100u32 {
        b.put_with_ttl(&i.to_le_bytes(), b"v", Duration::from_millis(30))
            .await
            .unwrap();
    }
    b.put(b"keep", b"v").await.unwrap();
    assert!(b.sweeper_running());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let usage = b.memory_usage().await.unwrap();
    assert_eq!(usage, (4 + 1 + state_memory::ENTRY_OVERHEAD) as u64);
}

/// Dropping the backend stops its sweeper task: no task and no map outlive it.
#[tokio::test]
async fn dropping_the_backend_stops_the_sweeper() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let b = MemoryStateBackend::builder()
        .cleanup_interval(Duration::from_millis(10))
        .build();
    b.put_with_ttl(b"k", b"v", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(metrics.num_alive_tasks(), before + 1);
    let weak_probe = b.clone();
    drop(b);
    assert!(weak_probe.sweeper_running(), "a clone keeps it alive");
    drop(weak_probe);
    for _ in 0..50 {
        if metrics.num_alive_tasks() == before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the sweeper task outlived the backend");
}

/// Outside a tokio runtime the backend still works; expired entries are purged on demand.
#[test]
fn works_without_a_runtime_for_construction() {
    let b = MemoryStateBackend::new(Some(Duration::from_millis(1)));
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(b.purge_expired(), 0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        b.put(b"k", b"v").await.unwrap();
    });
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(b.purge_expired(), 1);
}

/// A full bounded backend refuses new keys with CapacityExceeded and keeps what it has.
#[tokio::test]
async fn bounded_backend_refuses_writes_when_full() {
    let b = MemoryStateBackend::builder().max_entries(3).build();
    for k in [b"a", b"b", b"c"] {
        b.put(k, b"v").await.unwrap();
    }
    let err = b.put(b"d", b"v").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CapacityExceeded);
    assert!(!err.is_retryable());
    assert_eq!(b.count().await.unwrap(), 3);
    b.put(b"a", b"updated").await.unwrap();
    assert!(!b.set_if_not_exists(b"a", b"x", None).await.unwrap());
    assert_eq!(
        b.set_if_not_exists(b"e", b"x", None)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::CapacityExceeded
    );
    b.delete(b"b").await.unwrap();
    b.put(b"d", b"v").await.unwrap();
    assert_eq!(b.count().await.unwrap(), 3);
}

/// Expired entries are swept before a bounded backend refuses a write.
#[tokio::test]
async fn bounded_backend_sweeps_expired_before_refusing() {
    let b = MemoryStateBackend::builder().max_entries(2).build();
    b.put_with_ttl(b"a", b"v", Duration::from_millis(20))
        .await
        .unwrap();
    b.put_with_ttl(b"b", b"v", Duration::from_millis(20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.put(b"c", b"v").await.unwrap();
    b.put(b"d", b"v").await.unwrap();
    assert_eq!(
        b.put(b"e", b"v").await.unwrap_err().kind(),
        ErrorKind::CapacityExceeded
    );
}

/// A byte bound counts keys, values and the per-entry overhead.
#[tokio::test]
async fn byte_bound_refuses_oversized_growth() {
    let budget = 2 * (1 + 100 + state_memory::ENTRY_OVERHEAD);
    let b = MemoryStateBackend::builder().max_bytes(budget).build();
    b.put(b"a", &[0; 100]).await.unwrap();
    b.put(b"b", &[0; 100]).await.unwrap();
    assert_eq!(
        b.put(b"a", &[0; 101]).await.unwrap_err().kind(),
        ErrorKind::CapacityExceeded
    );
    assert_eq!(b.get(b"a").await.unwrap().unwrap().len(), 100);
    b.put(b"a", &[0; 50]).await.unwrap();
    b.put(b"a", &[0; 100]).await.unwrap();
}

/// Counters of concurrent tasks add up (striped counters lose nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_from_concurrent_tasks_add_up() {
    let b = Arc::new(MemoryStateBackend::new(None));
    b.put(b"k", b"v").await.unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move {
                for _ in 0..1000 {
                    b.get(b"k").await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = b.stats().await;
    assert_eq!(stats.gets, 4000);
    assert_eq!(stats.hits, 4000);
    assert!(stats.latency_samples > 0 && stats.avg_latency_us > 0.0);
}
