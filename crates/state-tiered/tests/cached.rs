//! `CachedStateBackend` behaviour: one load per cold key, TTLs, racing writers, and
//! coherence between instances over real Redis and PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use state_core::{StateBackend, StateResult};
use state_memory::MemoryStateBackend;
use state_postgres::PostgresStateBackend;
use state_redis::{RedisConfig, RedisStateBackend};
use state_tiered::{CachedStateBackend, InvalidationBus, WritePolicy};

mod common;
use common::Slow;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name}: run `cargo xtask test`"))
}

/// 100 concurrent gets of one cold key make exactly one inner load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn herd_of_100_gets_makes_one_load() {
    let slow = Slow::new(Duration::from_millis(50));
    slow.inner.put(b"cold", b"v").await.unwrap();
    let cache = Arc::new(CachedStateBackend::new(slow.clone(), 100, None));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.get(b"cold").await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Some(Bytes::from_static(b"v")));
    }
    assert_eq!(slow.loads.load(Ordering::SeqCst), 1);
    let stats = cache.stats().await;
    assert_eq!(stats.gets, 100);
    assert!((stats.details["l1_loads"] - 1.0).abs() < f64::EPSILON);
}

/// A cached copy never outlives the inner key's TTL, whoever wrote it.
#[tokio::test]
async fn cached_copy_never_outlives_inner_ttl() {
    let inner = Arc::new(MemoryStateBackend::new(None));
    let cache = CachedStateBackend::new(inner.clone(), 100, Some(Duration::from_secs(60)));
    // Written behind the cache's back, then loaded: the load carries the TTL.
    inner
        .put_with_ttl(b"a", b"1", Duration::from_millis(200))
        .await
        .unwrap();
    assert!(cache.get(b"a").await.unwrap().is_some());
    // Written through the cache with a TTL.
    cache
        .put_with_ttl(b"b", b"2", Duration::from_millis(200))
        .await
        .unwrap();
    assert!(cache.get(b"b").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cache.get(b"a").await.unwrap(), None);
    assert_eq!(cache.get(b"b").await.unwrap(), None);
    // An inner default TTL bounds write-through copies of plain puts.
    let inner = Arc::new(MemoryStateBackend::new(Some(Duration::from_millis(200))));
    let cache = CachedStateBackend::new(inner, 100, Some(Duration::from_secs(60)));
    cache.put(b"c", b"3").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cache.get(b"c").await.unwrap(), None);
}

/// A write-through copy's lifetime counts from when the write was sent, not from when its
/// slow acknowledgement arrived: a 300 ms key acknowledged after 150 ms is not served at
/// 350 ms (issue 12 point 6: it was served at 400 ms).
#[tokio::test]
async fn write_through_copy_expires_with_the_key_despite_a_slow_write() {
    let inner = common::Slow::new(Duration::from_millis(150));
    let cache = CachedStateBackend::new(inner.clone(), 100, Some(Duration::from_secs(60)));
    let sent = std::time::Instant::now();
    cache
        .put_with_ttl(b"k", b"v", Duration::from_millis(300))
        .await
        .unwrap();
    assert!(sent.elapsed() >= Duration::from_millis(150));
    tokio::time::sleep_until((sent + Duration::from_millis(350)).into()).await;
    assert_eq!(
        inner.inner.get(b"k").await.unwrap(),
        None,
        "the key expired"
    );
    assert_eq!(cache.get(b"k").await.unwrap(), None, "and so did its copy");
}

/// Racing writers and readers on a few keys through a slow inner backend: once they stop,
/// every cached answer equals the inner backend's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_leave_no_stale_copy() {
    for policy in [WritePolicy::WriteThrough, WritePolicy::WriteAround] {
        let slow = Slow::new(Duration::from_millis(1));
        let cache = Arc::new(
            CachedStateBackend::builder(slow.clone())
                .max_items(100)
                .write_policy(policy)
                .build()
                .await
                .unwrap(),
        );
        let mut tasks = Vec::new();
        for t in 0..8u32 {
            let cache = Arc::clone(&cache);
            tasks.push(tokio::spawn(async move {
                for i in 0..100u32 {
                    let key = [b'k', (i % 3) as u8];
                    if (i + t) % 2 == 0 {
                        cache
                            .put(&key, &(t * 1000 + i).to_le_bytes())
                            .await
                            .unwrap();
                    } else {
                        cache.get(&key).await.unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for k in 0..3u8 {
            let key = [b'k', k];
            assert_eq!(
                cache.get(&key).await.unwrap(),
                slow.inner.get(&key).await.unwrap(),
                "{policy:?} key {k}"
            );
        }
    }
}

/// Atomic operations, deletes, batches and clear keep L1 right.
#[tokio::test]
async fn every_write_path_keeps_l1_right() {
    let inner = Arc::new(MemoryStateBackend::new(None));
    let cache = CachedStateBackend::new(inner.clone(), 100, None);
    cache.put(b"k", b"1").await.unwrap();
    assert!(
        cache
            .compare_and_swap(b"k", Some(b"1"), Some(b"2"))
            .await
            .unwrap()
    );
    assert_eq!(
        cache.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"2"))
    );
    assert_eq!(
        cache.get_and_delete(b"k").await.unwrap(),
        Some(Bytes::from_static(b"2"))
    );
    assert_eq!(cache.get(b"k").await.unwrap(), None);
    assert!(cache.set_if_not_exists(b"k", b"3", None).await.unwrap());
    assert_eq!(
        cache.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"3"))
    );
    cache
        .batch_put(&[(b"k", b"4"), (b"j", b"5")])
        .await
        .unwrap();
    assert_eq!(
        cache.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"4"))
    );
    assert_eq!(cache.batch_delete(&[b"k"]).await.unwrap(), 1);
    assert_eq!(cache.get(b"k").await.unwrap(), None);
    assert_eq!(
        cache.get(b"j").await.unwrap(),
        Some(Bytes::from_static(b"5"))
    );
    assert_eq!(cache.delete_prefix(b"j").await.unwrap(), 1);
    assert_eq!(cache.get(b"j").await.unwrap(), None);
    cache.put(b"x", b"6").await.unwrap();
    cache.clear().await.unwrap();
    assert_eq!(cache.get(b"x").await.unwrap(), None);
    assert_eq!(inner.count().await.unwrap(), 0);
}

/// Negative caching is off by default: a key written behind the cache's back is seen at
/// once; with it on, the miss is remembered for its TTL only.
#[tokio::test]
async fn negative_caching_is_opt_in_and_bounded() {
    let inner = Arc::new(MemoryStateBackend::new(None));
    let plain = CachedStateBackend::new(inner.clone(), 100, None);
    assert_eq!(plain.get(b"k").await.unwrap(), None);
    inner.put(b"k", b"v").await.unwrap();
    assert!(plain.get(b"k").await.unwrap().is_some());

    let inner = Arc::new(MemoryStateBackend::new(None));
    let negative = CachedStateBackend::builder(inner.clone())
        .negative_caching(Duration::from_millis(150))
        .build()
        .await
        .unwrap();
    assert_eq!(negative.get(b"k").await.unwrap(), None);
    inner.put(b"k", b"v").await.unwrap();
    assert_eq!(
        negative.get(b"k").await.unwrap(),
        None,
        "the miss is cached"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(negative.get(b"k").await.unwrap().is_some());
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Two instances share one backend and one bus: instance B reads a key (caching it), A
/// writes it, and B polls until it sees the new value. Returns the sorted stale windows.
async fn stale_windows(
    a: &CachedStateBackend,
    b: &CachedStateBackend,
    rounds: u32,
) -> Vec<Duration> {
    let mut windows = Vec::new();
    for round in 0..rounds {
        let key = format!("coherence:{}", round % 16);
        a.put(key.as_bytes(), b"old").await.unwrap();
        // Wait until B has the old value cached (A's own write reached B as well).
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.get(key.as_bytes()).await.unwrap().as_deref() != Some(&b"old"[..]) {
            assert!(Instant::now() < deadline, "B never saw the first write");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let new = format!("new{round}");
        let written = Instant::now();
        a.put(key.as_bytes(), new.as_bytes()).await.unwrap();
        let acked = Instant::now();
        loop {
            if b.get(key.as_bytes()).await.unwrap().as_deref() == Some(new.as_bytes()) {
                // The stale window: from A's write being acknowledged to B serving it.
                windows.push(acked.elapsed());
                break;
            }
            assert!(written.elapsed() < Duration::from_secs(5), "B stayed stale");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    windows.sort();
    windows
}

/// Documented bound for the stale-read window on loopback (p99).
const STALE_BOUND: Duration = Duration::from_millis(50);
/// Documented bound for the single worst window: a busy 2-core machine (CI running the
/// other suites beside this one) showed a 97 ms outlier once while p99 stayed under 54 ms.
const STALE_MAX: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_redis_stay_within_the_stale_bound() {
    let prefix = format!("coh-{}:", state_testkit::unique_namespace());
    let open = || async {
        let redis = Arc::new(
            RedisStateBackend::new(
                RedisConfig::builder()
                    .url(env("STATE_REDIS_URL"))
                    .key_prefix(prefix.clone())
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap(),
        );
        CachedStateBackend::builder(redis.clone())
            .ttl(Duration::from_secs(300))
            .invalidation(redis)
            .build()
            .await
            .unwrap()
    };
    let (a, b) = (open().await, open().await);
    let w = stale_windows(&a, &b, 200).await;
    let (p50, p99, max) = (percentile(&w, 0.5), percentile(&w, 0.99), w[w.len() - 1]);
    eprintln!(
        "redis bus: stale window p50 {p50:?} p99 {p99:?} max {max:?} over {} writes",
        w.len()
    );
    assert!(p99 < STALE_BOUND, "p99 stale window {p99:?}");
    assert!(max < STALE_MAX, "max stale window {max:?}");
    assert!(b.stats().await.details["invalidations_received"] >= 200.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_postgres_stay_within_the_stale_bound() {
    let table = format!("coh_{}", state_testkit::unique_namespace());
    let open = || async {
        let pg = Arc::new(
            PostgresStateBackend::new(env("STATE_POSTGRES_URL"), table.as_str())
                .await
                .unwrap(),
        );
        CachedStateBackend::builder(pg.clone())
            .ttl(Duration::from_secs(300))
            .invalidation(pg)
            .build()
            .await
            .unwrap()
    };
    let (a, b) = (open().await, open().await);
    let w = stale_windows(&a, &b, 100).await;
    let (p50, p99, max) = (percentile(&w, 0.5), percentile(&w, 0.99), w[w.len() - 1]);
    eprintln!(
        "postgres bus: stale window p50 {p50:?} p99 {p99:?} max {max:?} over {} writes",
        w.len()
    );
    assert!(p99 < STALE_BOUND, "p99 stale window {p99:?}");
    assert!(max < STALE_MAX, "max stale window {max:?}");
}

/// A bus that can be cut: while down, publishes fail and delivered messages are dropped
/// (what a lost pub/sub connection looks like).
#[derive(Debug)]
struct Cuttable {
    inner: Arc<RedisStateBackend>,
    down: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl InvalidationBus for Cuttable {
    async fn publish(&self, message: &[u8]) -> StateResult<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(state_core::StateError::connection("bus cut by the test"));
        }
        InvalidationBus::publish(&*self.inner, message).await
    }
    fn max_message(&self) -> usize {
        InvalidationBus::max_message(&*self.inner)
    }
    async fn subscribe(&self) -> StateResult<BoxStream<'static, StateResult<Bytes>>> {
        let down = Arc::clone(&self.down);
        let stream = InvalidationBus::subscribe(&*self.inner).await?;
        Ok(stream
            .filter(move |_| {
                let keep = !down.load(Ordering::SeqCst);
                async move { keep }
            })
            .boxed())
    }
}

/// Losing the bus: the cache notices within a few heartbeats, says so in stats, caches for
/// the short degraded TTL only (so a write it never heard of shows up within it), and
/// recovers when the bus is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_bus_falls_back_to_short_ttl_and_recovers() {
    let prefix = format!("cut-{}:", state_testkit::unique_namespace());
    let redis = Arc::new(
        RedisStateBackend::new(
            RedisConfig::builder()
                .url(env("STATE_REDIS_URL"))
                .key_prefix(prefix)
                .build()
                .unwrap(),
        )
        .await
        .unwrap(),
    );
    let down = Arc::new(AtomicBool::new(false));
    let bus = Arc::new(Cuttable {
        inner: redis.clone(),
        down: Arc::clone(&down),
    });
    let cache = CachedStateBackend::builder(redis.clone())
        .ttl(Duration::from_secs(300))
        .degraded(Duration::from_millis(300), Duration::from_millis(100))
        .invalidation(bus)
        .build()
        .await
        .unwrap();
    assert!(cache.is_coherent());
    down.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    while cache.is_coherent() {
        assert!(cut.elapsed() < Duration::from_secs(2), "loss not detected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("bus loss detected after {:?}", cut.elapsed());
    let stats = cache.stats().await;
    assert!((stats.details["coherent"] - 0.0).abs() < f64::EPSILON);
    assert!(stats.details["degraded_periods"] >= 1.0);
    // Cached now, then changed by someone the cache cannot hear: visible within the
    // degraded TTL.
    cache.put(b"k", b"old").await.unwrap();
    assert_eq!(
        cache.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"old"))
    );
    redis.put(b"k", b"new").await.unwrap();
    let changed = Instant::now();
    while cache.get(b"k").await.unwrap() != Some(Bytes::from_static(b"new")) {
        assert!(
            changed.elapsed() < Duration::from_millis(600),
            "stale beyond the degraded TTL"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    down.store(false, Ordering::SeqCst);
    let back = Instant::now();
    while !cache.is_coherent() {
        assert!(back.elapsed() < Duration::from_secs(2), "no recovery");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!((cache.stats().await.details["coherent"] - 1.0).abs() < f64::EPSILON);
}

/// Sends `signal` to `pid` and to its children (a PostgreSQL postmaster's backends).
fn signal_tree(pid: u32, signal: &str) {
    let _ = std::process::Command::new("pkill")
        .args([&format!("-{signal}"), "-P", &pid.to_string()])
        .status();
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Two caches over one inner backend, coherent through `bus_a` / `bus_b`: after `fail()`
/// (the bus's server hung or killed), a write on A is served stale by B for at most about
/// 3.5 heartbeats. Returns the longest stale window seen over `rounds` writes.
async fn stale_window_after_bus_failure(
    bus_a: Arc<dyn InvalidationBus>,
    bus_b: Arc<dyn InvalidationBus>,
    heartbeat: Duration,
    fail: impl FnOnce(),
) -> Duration {
    let inner = Arc::new(MemoryStateBackend::new(None));
    let build = |bus: Arc<dyn InvalidationBus>| {
        CachedStateBackend::builder(inner.clone())
            .ttl(Duration::from_secs(300))
            .degraded(Duration::from_millis(200), heartbeat)
            .invalidation(bus)
            .build()
    };
    let a = build(bus_a).await.unwrap();
    let b = build(bus_b).await.unwrap();
    a.put(b"k", b"v0").await.unwrap();
    assert_eq!(b.get(b"k").await.unwrap().as_deref(), Some(&b"v0"[..]));
    assert!(b.is_coherent());
    fail();
    let mut longest = Duration::ZERO;
    for round in 1..=5u32 {
        // B holds a copy (cached before the failure, or during it for the degraded TTL).
        let _ = b.get(b"k").await.unwrap();
        let value = format!("v{round}");
        a.put(b"k", value.as_bytes()).await.unwrap();
        let written = Instant::now();
        while b.get(b"k").await.unwrap().as_deref() != Some(value.as_bytes()) {
            assert!(
                written.elapsed() < Duration::from_secs(5),
                "B served a replaced value for 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        longest = longest.max(written.elapsed());
    }
    assert!(
        !b.is_coherent(),
        "B says it is coherent while the bus is down"
    );
    longest
}

/// The bound the docs give, with room for scheduling on a loaded 2-core machine.
fn bound(heartbeat: Duration) -> Duration {
    heartbeat * 7 / 2 + Duration::from_millis(250)
}

/// A Redis bus whose server hangs (SIGSTOP) or dies (SIGKILL): the other instance notices
/// within the bound and serves no replaced value longer (issue 11 point 6: 5.1 s while
/// `is_coherent()` said true).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_or_dead_bus_bounds_stale_reads_redis() {
    let heartbeat = Duration::from_millis(100);
    for signal in ["STOP", "KILL"] {
        let port = state_test_servers::free_port().unwrap();
        let server = KillOnDrop(
            std::process::Command::new(env("STATE_REDIS_SERVER_BIN"))
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .args(["--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let bus = || async {
            Arc::new(
                RedisStateBackend::new(
                    RedisConfig::builder()
                        .url(format!("redis://127.0.0.1:{port}"))
                        .build()
                        .unwrap(),
                )
                .await
                .unwrap(),
            ) as Arc<dyn InvalidationBus>
        };
        let pid = server.0.id();
        let longest = stale_window_after_bus_failure(bus().await, bus().await, heartbeat, || {
            signal_tree(pid, signal);
        })
        .await;
        eprintln!("redis bus SIG{signal}: longest stale read {longest:?}");
        assert!(longest < bound(heartbeat), "SIG{signal}: {longest:?}");
        if signal == "STOP" {
            signal_tree(pid, "CONT");
        }
        drop(server);
    }
}

/// A child process killed (after a SIGCONT, in case it was stopped) when dropped, also when
/// the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.id().to_string()])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same with the PostgreSQL (LISTEN/NOTIFY) bus: the postmaster and its backends hung,
/// then killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_or_dead_bus_bounds_stale_reads_postgres() {
    let heartbeat = Duration::from_millis(100);
    for signal in ["STOP", "KILL"] {
        let mut server = tokio::task::spawn_blocking(|| {
            state_test_servers::postgres::PostgresServer::temp("bus")
        })
        .await
        .unwrap()
        .expect("a throwaway PostgreSQL");
        let url = server.url();
        let table = format!("bus_{}", state_testkit::unique_namespace());
        let bus = || async {
            Arc::new(
                state_postgres::PostgresStateBackend::with_config(
                    state_postgres::PostgresConfig::builder()
                        .url(&url)
                        .table(table.as_str())
                        .command_timeout(Duration::from_secs(5))
                        .build()
                        .unwrap(),
                )
                .await
                .unwrap(),
            ) as Arc<dyn InvalidationBus>
        };
        let pid = server.pid().expect("running");
        let longest = stale_window_after_bus_failure(bus().await, bus().await, heartbeat, || {
            signal_tree(pid, signal);
        })
        .await;
        eprintln!("postgres bus SIG{signal}: longest stale read {longest:?}");
        assert!(longest < bound(heartbeat), "SIG{signal}: {longest:?}");
        if signal == "STOP" {
            signal_tree(pid, "CONT");
        }
        server.kill();
    }
}

/// `memory_usage` counts L1's copies on top of the inner backend's figure (issue 14).
#[tokio::test]
async fn memory_usage_counts_l1_copies_and_the_inner_backend() {
    let inner = Arc::new(MemoryStateBackend::new(None));
    let cache = CachedStateBackend::new(inner.clone(), 1000, Some(Duration::from_secs(60)));
    let value = vec![7u8; 10_000];
    for i in 0..100u32 {
        cache.put(format!("k{i}").as_bytes(), &value).await.unwrap();
        cache.get(format!("k{i}").as_bytes()).await.unwrap();
    }
    let inner_bytes = inner.memory_usage().await.unwrap();
    let total = cache.memory_usage().await.unwrap();
    assert!(inner_bytes >= 1_000_000, "{inner_bytes}");
    assert!(
        total >= inner_bytes + 1_000_000,
        "L1 holds 100 copies of 10 kB: {total} vs inner {inner_bytes}"
    );
}
